/*
 * qt_cnn_arch.c - convolutional architectures created with random
 * initialization: timm's layouts and parameter names, so that a network
 * written here loads with qt_cnn_load as the timm checkpoint of the same
 * name would, and initialization as timm draws it (see qt_finetune.h,
 * "Architectures qtune can create").
 *
 * The presets. Builder family (timm's EfficientNet builder): a 3x3 stride-2
 * stem, stages of blocks (ds: DepthwiseSeparableConv conv_dw, bn1, [se],
 * conv_pw, bn2; ir: InvertedResidual conv_pw, bn1, conv_dw, bn2, [se],
 * conv_pwl, bn3), a 1x1 conv_head, bn2, global pooling and the classifier.
 * Stage columns: block type, kernel k, expansion e, output channels c,
 * repeats r, stride s of the first block.
 *
 *   mobilenetv2_100 (ReLU6)    stem 32, head 1280, 3,504,872 parameters
 *     ds k3 e1 c16 r1 s1 | ir k3 e6 c24 r2 s2 | ir k3 e6 c32 r3 s2 |
 *     ir k3 e6 c64 r4 s2 | ir k3 e6 c96 r3 s1 | ir k3 e6 c160 r3 s2 |
 *     ir k3 e6 c320 r1 s1
 *   mobilenetv2_050 (ReLU6)    timm's channel_multiplier 0.5: every stage
 *     width and the stem go through round_channels (make_divisible(c * 0.5,
 *     8), never below 8, raised by 8 where it would fall under 90% of
 *     c * 0.5): stem 16; stages c8, c16, c16, c32, c48, c80, c160 with the
 *     mobilenetv2_100 kernels, expansions, repeats and strides; the head
 *     is max(1280, round_channels(1280 * 0.5)) = 1280 (timm's
 *     _gen_mobilenet_v2 with fix_stem_head False). 1,968,680 parameters.
 *   efficientnet_b0 (SiLU)     stem 32, head 1280, 5,288,548 parameters;
 *     SE in every block with rd = round(0.25 * block input channels)
 *     (timm's se_ratio 0.25 divided by the expansion, on the expanded
 *     width)
 *     ds k3 e1 c16 r1 s1 | ir k3 e6 c24 r2 s2 | ir k5 e6 c40 r2 s2 |
 *     ir k3 e6 c80 r3 s2 | ir k5 e6 c112 r3 s1 | ir k5 e6 c192 r4 s2 |
 *     ir k3 e6 c320 r1 s1
 *   mobilenetv2_tiny (ReLU6)   stem 16, head 256; stage_strides 1,2,2,2,1:
 *     32 px -> 16 (stem) -> 16 -> 8 -> 4 -> 2 -> 2 (64 px ends at 4x4)
 *     ds k3 e1 c8 r1 s1 | ir k3 e6 c16 r2 s2 | ir k3 e6 c24 r2 s2 |
 *     ir k3 e6 c32 r2 s2 | ir k3 e6 c64 r1 s1
 *     86,282 parameters with 10 classes
 *   efficientnet_tiny (SiLU)   the same stages with efficientnet_b0's
 *     kernels (3, 3, 5, 3, 5) and SE (rd = round(0.25 * block input)),
 *     stem 16, head 256, stage_strides 1,2,2,2,1;
 *     105,620 parameters with 10 classes
 *
 * ResNet family (timm's / torchvision's ResNet v1.5: stride on the 3x3
 * convolution; conv1, bn1, ReLU, 3x3 stride-2 max pool, layer1..4 with
 * stride 2 on the first block of layers 2-4, downsample.{0,1} (1x1
 * convolution with the stride, batch norm) where the stride is not 1 or
 * the channels change, fc). Columns: blocks per layer, widths (a
 * Bottleneck's output is 4x its width).
 *
 *   resnet18   conv1 7x7 64   BasicBlock  2,2,2,2  64,128,256,512  11,689,512
 *   resnet34   conv1 7x7 64   BasicBlock  3,4,6,3  64,128,256,512  21,797,672
 *   resnet50   conv1 7x7 64   Bottleneck  3,4,6,3  64,128,256,512  25,557,032
 *   resnet_tiny conv1 3x3 16  BasicBlock  1,1,1,1  16,32,64,128    308,826
 *     (10 classes): 32 px -> 16 (conv1) -> 8 (max pool) -> 8 -> 4 -> 2 -> 1
 *
 * Parameter counts exclude the batch norm running statistics and are for
 * 1000 classes unless noted. qt_cnn_load fixes the ResNet strides (stem 2,
 * pool 2, layers 1, 2, 2, 2) and takes kernel sizes from the tensors, so
 * resnet_tiny needs no metadata; the builder presets carry
 * "stage_strides" (timm's default for the timm presets, written anyway).
 *
 * Initialization (one function, init_values, used by the writer and by
 * qt_cnn_reinit):
 *   builder family, timm's _init_weight_goog: convolutions normal(0,
 *     sqrt(2 / fan_out)), fan_out = k * k * out / groups (a depthwise
 *     conv_dw has groups = out, so fan_out = k * k); their biases (the SE
 *     convolutions') 0; batch norm weight 1, bias 0; Linear (classifier,
 *     head_mlp) uniform(+-1 / sqrt(out)), bias 0.
 *   ResNet family: convolutions kaiming_normal(mode fan_out, relu), i.e.
 *     normal(0, sqrt(2 / (out * k * k))); batch norm 1 / 0; fc as
 *     torch.nn.Linear's reset_parameters: weight and bias uniform(+-1 /
 *     sqrt(in)). timm's ResNet.init_weights also zeroes the last batch norm
 *     weight of every block by default (zero_init_last); the header's rule
 *     (batch norm 1 / 0, torchvision's default zero_init_residual False) is
 *     what is done here.
 *   Running statistics: mean 0, variance 1 (PyTorch's BatchNorm2d).
 * Values are drawn tensor by tensor in the order of the layout below, each
 * tensor row-major, from one qt_rng_t seeded with the caller's seed.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune.h"

/* ------------------------------------------------------------------------- */
/* Preset tables                                                              */
/* ------------------------------------------------------------------------- */

#define MAX_BUILDER_STAGES 7

/* One stage of timm's EfficientNet builder (one arch_def row). */
typedef struct builder_stage {
  int separable; /* 1: DepthwiseSeparableConv ('ds'), 0: InvertedResidual ('ir') */
  int kernel;    /* depthwise kernel side */
  int expansion; /* ir only: mid = make_divisible(in * expansion) */
  int channels;  /* output channels before the multiplier */
  int repeats;
  int stride; /* of the stage's first block */
} builder_stage;

typedef struct arch_def {
  const char *name;
  qt_model_family family;
  /* Builder family (mobilenetv2, efficientnet). */
  double multiplier; /* timm's channel_multiplier (round_channels) */
  int stem, head;    /* before the multiplier */
  int head_at_least; /* 1: head = max(head, round(head * m)) (mobilenetv2) */
  int se;            /* squeeze-and-excitation, se_ratio 0.25 */
  size_t n_stages;
  builder_stage stages[MAX_BUILDER_STAGES];
  /* ResNet family. */
  int bottleneck;    /* 0: BasicBlock (expansion 1), 1: Bottleneck (4) */
  int stem_kernel;   /* conv1's side */
  int stem_channels; /* conv1's output channels */
  int depths[4];     /* blocks per layer */
  int widths[4];     /* planes per layer */
} arch_def;

#define DS(k, c) \
  { 1, k, 1, c, 1, 1 }
#define IR(k, e, c, r, s) \
  { 0, k, e, c, r, s }

/* timm's mobilenetv2 stages (before the channel multiplier). */
#define MOBILENETV2_STAGES                                                                     \
  {                                                                                            \
    DS(3, 16), IR(3, 6, 24, 2, 2), IR(3, 6, 32, 3, 2), IR(3, 6, 64, 4, 2), IR(3, 6, 96, 3, 1), \
        IR(3, 6, 160, 3, 2), IR(3, 6, 320, 1, 1)                                               \
  }

static const arch_def ARCHS[] = {
    {.name = "mobilenetv2_100",
     .family = QT_MODEL_FAMILY_MOBILENETV2,
     .multiplier = 1.0,
     .stem = 32,
     .head = 1280,
     .head_at_least = 1,
     .n_stages = 7,
     .stages = MOBILENETV2_STAGES},
    {.name = "mobilenetv2_050",
     .family = QT_MODEL_FAMILY_MOBILENETV2,
     .multiplier = 0.5,
     .stem = 32,
     .head = 1280,
     .head_at_least = 1,
     .n_stages = 7,
     .stages = MOBILENETV2_STAGES},
    {.name = "efficientnet_b0",
     .family = QT_MODEL_FAMILY_EFFICIENTNET,
     .multiplier = 1.0,
     .stem = 32,
     .head = 1280,
     .se = 1,
     .n_stages = 7,
     .stages = {DS(3, 16), IR(3, 6, 24, 2, 2), IR(5, 6, 40, 2, 2), IR(3, 6, 80, 3, 2),
                IR(5, 6, 112, 3, 1), IR(5, 6, 192, 4, 2), IR(3, 6, 320, 1, 1)}},
    {.name = "resnet18",
     .family = QT_MODEL_FAMILY_RESNET,
     .stem_kernel = 7,
     .stem_channels = 64,
     .depths = {2, 2, 2, 2},
     .widths = {64, 128, 256, 512}},
    {.name = "resnet34",
     .family = QT_MODEL_FAMILY_RESNET,
     .stem_kernel = 7,
     .stem_channels = 64,
     .depths = {3, 4, 6, 3},
     .widths = {64, 128, 256, 512}},
    {.name = "resnet50",
     .family = QT_MODEL_FAMILY_RESNET,
     .bottleneck = 1,
     .stem_kernel = 7,
     .stem_channels = 64,
     .depths = {3, 4, 6, 3},
     .widths = {64, 128, 256, 512}},
    {.name = "mobilenetv2_tiny",
     .family = QT_MODEL_FAMILY_MOBILENETV2,
     .multiplier = 1.0,
     .stem = 16,
     .head = 256,
     .head_at_least = 1,
     .n_stages = 5,
     .stages = {DS(3, 8), IR(3, 6, 16, 2, 2), IR(3, 6, 24, 2, 2), IR(3, 6, 32, 2, 2),
                IR(3, 6, 64, 1, 1)}},
    {.name = "efficientnet_tiny",
     .family = QT_MODEL_FAMILY_EFFICIENTNET,
     .multiplier = 1.0,
     .stem = 16,
     .head = 256,
     .se = 1,
     .n_stages = 5,
     .stages = {DS(3, 8), IR(3, 6, 16, 2, 2), IR(5, 6, 24, 2, 2), IR(3, 6, 32, 2, 2),
                IR(5, 6, 64, 1, 1)}},
    {.name = "resnet_tiny",
     .family = QT_MODEL_FAMILY_RESNET,
     .stem_kernel = 3,
     .stem_channels = 16,
     .depths = {1, 1, 1, 1},
     .widths = {16, 32, 64, 128}},
};

#undef DS
#undef IR

#define N_ARCHS (sizeof ARCHS / sizeof ARCHS[0])

static const arch_def *find_arch(const char *name) {
  if (!name) return NULL;
  for (size_t i = 0; i < N_ARCHS; i++)
    if (strcmp(ARCHS[i].name, name) == 0) return &ARCHS[i];
  return NULL;
}

/* QT_EINVAL naming the architecture and listing the known ones. */
static int unknown_arch(const char *name, qt_err *err) {
  char list[512] = "";
  size_t used = 0;
  for (size_t i = 0; i < N_ARCHS && used < sizeof list; i++)
    used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", ARCHS[i].name);
  return qt_err_set(err, QT_EINVAL, "unknown architecture '%s' (known: %s)", name ? name : "(null)",
                    list);
}

int qt_cnn_arch_family(const char *arch, qt_model_family *family, qt_err *err) {
  const arch_def *a = find_arch(arch);
  if (!a) return unknown_arch(arch, err);
  if (family) *family = a->family;
  return 0;
}

/* timm's make_divisible(v, divisor 8): the nearest multiple of 8 (halves
 * up), at least 8, plus 8 when that loses more than 10% of v. */
static int make_divisible(double v) {
  const int divisor = 8;
  int rounded = (int)(v + divisor / 2.0) / divisor * divisor;
  if (rounded < divisor) rounded = divisor;
  if (rounded < 0.9 * v) rounded += divisor;
  return rounded;
}

/* ------------------------------------------------------------------------- */
/* Layout: the tensors of a preset, in timm's state_dict order                 */
/* ------------------------------------------------------------------------- */

typedef struct tensor_spec {
  char name[128];
  size_t ndim;
  size_t shape[4];
} tensor_spec;

typedef struct layout {
  tensor_spec *items; /* (n) grown by doubling */
  size_t n, cap;
  int failed; /* out of memory */
} layout;

static void push(layout *l, const char *name, size_t ndim, size_t d0, size_t d1, size_t d2,
                 size_t d3) {
  if (l->failed) return;
  if (l->n == l->cap) {
    size_t cap = l->cap ? 2 * l->cap : 64;
    tensor_spec *grown = realloc(l->items, cap * sizeof *grown);
    if (!grown) {
      l->failed = 1;
      return;
    }
    l->items = grown;
    l->cap = cap;
  }
  tensor_spec *t = &l->items[l->n++];
  size_t len = strlen(name); /* the tables' own names, which fit */
  QT_ASSERT(len < sizeof t->name);
  memcpy(t->name, name, len + 1);
  t->ndim = ndim;
  size_t dims[4] = {d0, d1, d2, d3};
  for (size_t i = 0; i < 4; i++) t->shape[i] = i < ndim ? dims[i] : 0;
}

/* A convolution "<prefix>.weight" (out, in / groups, k, k), no bias. */
static void push_conv(layout *l, const char *prefix, size_t out, size_t in_per_group, size_t k) {
  char name[192];
  snprintf(name, sizeof name, "%s.weight", prefix);
  push(l, name, 4, out, in_per_group, k, k);
}

static void push_bn(layout *l, const char *prefix, size_t c) {
  static const char *suffix[4] = {"weight", "bias", "running_mean", "running_var"};
  char name[192];
  for (int i = 0; i < 4; i++) {
    snprintf(name, sizeof name, "%s.%s", prefix, suffix[i]);
    push(l, name, 1, c, 0, 0, 0);
  }
}

static void push_linear(layout *l, const char *prefix, size_t out, size_t in) {
  char name[192];
  snprintf(name, sizeof name, "%s.weight", prefix);
  push(l, name, 2, out, in, 0, 0);
  snprintf(name, sizeof name, "%s.bias", prefix);
  push(l, name, 1, out, 0, 0, 0);
}

/* timm's SqueezeExcite: conv_reduce (rd, c) and conv_expand (c, rd), both
 * with a bias. */
static void push_se(layout *l, const char *block, size_t c, size_t rd) {
  char name[192];
  snprintf(name, sizeof name, "%s.se.conv_reduce.weight", block);
  push(l, name, 4, rd, c, 1, 1);
  snprintf(name, sizeof name, "%s.se.conv_reduce.bias", block);
  push(l, name, 1, rd, 0, 0, 0);
  snprintf(name, sizeof name, "%s.se.conv_expand.weight", block);
  push(l, name, 4, c, rd, 1, 1);
  snprintf(name, sizeof name, "%s.se.conv_expand.bias", block);
  push(l, name, 1, c, 0, 0, 0);
}

/* The SE width of timm's builder: se_ratio 0.25 divided by the block's
 * expansion, times the width SE sees (the expanded one), rounded as
 * Python's round (halves to even, nearbyint's default mode). */
static size_t se_reduced(size_t mid, int expansion) {
  double rd = nearbyint((double)mid * (0.25 / (double)expansion));
  return rd < 1.0 ? 1 : (size_t)rd;
}

static void builder_layout(const arch_def *a, long classes, layout *l, char *strides,
                           size_t strides_size) {
  char prefix[64], name[128];
  double m = a->multiplier;
  size_t stem = (size_t)make_divisible(a->stem * m);
  size_t head = (size_t)make_divisible(a->head * m);
  if (a->head_at_least && head < (size_t)a->head) head = (size_t)a->head;
  push_conv(l, "conv_stem", stem, 3, 3);
  push_bn(l, "bn1", stem);
  size_t in = stem, used = 0;
  strides[0] = '\0';
  for (size_t s = 0; s < a->n_stages; s++) {
    const builder_stage *st = &a->stages[s];
    size_t out = (size_t)make_divisible(st->channels * m), k = (size_t)st->kernel;
    used += (size_t)snprintf(strides + used, strides_size - used, "%s%d", s ? "," : "", st->stride);
    for (int j = 0; j < st->repeats; j++) {
      snprintf(prefix, sizeof prefix, "blocks.%zu.%d", s, j);
      if (st->separable) {
        snprintf(name, sizeof name, "%s.conv_dw", prefix);
        push_conv(l, name, in, 1, k);
        snprintf(name, sizeof name, "%s.bn1", prefix);
        push_bn(l, name, in);
        if (a->se) push_se(l, prefix, in, se_reduced(in, 1));
        snprintf(name, sizeof name, "%s.conv_pw", prefix);
        push_conv(l, name, out, in, 1);
        snprintf(name, sizeof name, "%s.bn2", prefix);
        push_bn(l, name, out);
      } else {
        size_t mid = (size_t)make_divisible((double)in * st->expansion);
        snprintf(name, sizeof name, "%s.conv_pw", prefix);
        push_conv(l, name, mid, in, 1);
        snprintf(name, sizeof name, "%s.bn1", prefix);
        push_bn(l, name, mid);
        snprintf(name, sizeof name, "%s.conv_dw", prefix);
        push_conv(l, name, mid, 1, k);
        snprintf(name, sizeof name, "%s.bn2", prefix);
        push_bn(l, name, mid);
        if (a->se) push_se(l, prefix, mid, se_reduced(mid, st->expansion));
        snprintf(name, sizeof name, "%s.conv_pwl", prefix);
        push_conv(l, name, out, mid, 1);
        snprintf(name, sizeof name, "%s.bn3", prefix);
        push_bn(l, name, out);
      }
      in = out;
    }
  }
  push_conv(l, "conv_head", head, in, 1);
  push_bn(l, "bn2", head);
  push_linear(l, "classifier", (size_t)classes, head);
}

static void resnet_layout(const arch_def *a, long classes, layout *l) {
  char prefix[64], name[128];
  size_t expansion = a->bottleneck ? 4 : 1, in = (size_t)a->stem_channels;
  push_conv(l, "conv1", in, 3, (size_t)a->stem_kernel);
  push_bn(l, "bn1", in);
  for (int layer = 0; layer < 4; layer++) {
    size_t planes = (size_t)a->widths[layer], out = planes * expansion;
    for (int j = 0; j < a->depths[layer]; j++) {
      size_t stride = (j == 0 && layer > 0) ? 2 : 1;
      snprintf(prefix, sizeof prefix, "layer%d.%d", layer + 1, j);
      if (a->bottleneck) {
        snprintf(name, sizeof name, "%s.conv1", prefix);
        push_conv(l, name, planes, in, 1);
        snprintf(name, sizeof name, "%s.bn1", prefix);
        push_bn(l, name, planes);
        snprintf(name, sizeof name, "%s.conv2", prefix);
        push_conv(l, name, planes, planes, 3);
        snprintf(name, sizeof name, "%s.bn2", prefix);
        push_bn(l, name, planes);
        snprintf(name, sizeof name, "%s.conv3", prefix);
        push_conv(l, name, out, planes, 1);
        snprintf(name, sizeof name, "%s.bn3", prefix);
        push_bn(l, name, out);
      } else {
        snprintf(name, sizeof name, "%s.conv1", prefix);
        push_conv(l, name, planes, in, 3);
        snprintf(name, sizeof name, "%s.bn1", prefix);
        push_bn(l, name, planes);
        snprintf(name, sizeof name, "%s.conv2", prefix);
        push_conv(l, name, planes, planes, 3);
        snprintf(name, sizeof name, "%s.bn2", prefix);
        push_bn(l, name, planes);
      }
      if (stride != 1 || in != out) {
        snprintf(name, sizeof name, "%s.downsample.0", prefix);
        push_conv(l, name, out, in, 1);
        snprintf(name, sizeof name, "%s.downsample.1", prefix);
        push_bn(l, name, out);
      }
      in = out;
    }
  }
  push_linear(l, "fc", (size_t)classes, in);
}

/* ------------------------------------------------------------------------- */
/* Initialization of one tensor                                               */
/* ------------------------------------------------------------------------- */

typedef enum init_style {
  INIT_GOOG,  /* timm's _init_weight_goog (EfficientNet builder family) */
  INIT_RESNET /* kaiming_normal fan_out for convolutions, torch Linear for fc */
} init_style;

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

/*
 * Draws one tensor's values. style is the model's (its convolutions'); a
 * linear named "fc.*" follows torch.nn.Linear and any other (classifier,
 * head_mlp) _init_weight_goog. linear_in is, for the bias of a linear, the
 * in-features of its weight (torch's bias bound needs them), else 0.
 */
static void init_values(init_style style, const char *name, size_t ndim, const size_t *shape,
                        size_t linear_in, float *data, qt_rng_t *rng) {
  size_t numel = 1;
  for (size_t i = 0; i < ndim; i++) numel *= shape[i];
  int torch_linear = strncmp(name, "fc.", 3) == 0;
  if (ends_with(name, ".running_mean") || ends_with(name, ".running_var")) {
    float v = ends_with(name, ".running_var") ? 1.0f : 0.0f;
    for (size_t i = 0; i < numel; i++) data[i] = v;
  } else if (ndim == 4) {
    /* Convolutions. _init_weight_goog divides the fan-out by the groups
     * (fix_group_fanout); torch's kaiming_normal_ does not, and no ResNet
     * convolution here is grouped. Depthwise means groups = out. */
    size_t fan_out = shape[0] * shape[2] * shape[3];
    if (style == INIT_GOOG && strstr(name, "conv_dw")) fan_out /= shape[0];
    double std = sqrt(2.0 / (double)fan_out);
    for (size_t i = 0; i < numel; i++) data[i] = (float)qt_rng_gaussian(rng, std);
  } else if (ndim == 2) {
    /* Linear (out, in). */
    double bound = torch_linear ? 1.0 / sqrt((double)shape[1]) : 1.0 / sqrt((double)shape[0]);
    for (size_t i = 0; i < numel; i++) data[i] = (float)(bound * (2.0 * qt_rng_uniform(rng) - 1.0));
  } else if (linear_in > 0 && torch_linear) {
    /* torch.nn.Linear's bias: uniform(+-1/sqrt(in)). */
    double bound = 1.0 / sqrt((double)linear_in);
    for (size_t i = 0; i < numel; i++) data[i] = (float)(bound * (2.0 * qt_rng_uniform(rng) - 1.0));
  } else {
    /* Batch norm weight 1; batch norm, convolution and goog linear biases
     * 0. */
    float v = ends_with(name, ".weight") ? 1.0f : 0.0f;
    for (size_t i = 0; i < numel; i++) data[i] = v;
  }
}

/* The in-features of the linear whose bias is `name` ("X.bias" with a 2-d
 * "X.weight" in the list), else 0. */
static size_t layout_linear_in(const layout *l, const char *name) {
  if (!ends_with(name, ".bias")) return 0;
  char weight[160];
  snprintf(weight, sizeof weight, "%.*s.weight", (int)(strlen(name) - 5), name);
  for (size_t i = 0; i < l->n; i++)
    if (strcmp(l->items[i].name, weight) == 0)
      return l->items[i].ndim == 2 ? l->items[i].shape[1] : 0;
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Writing a checkpoint                                                       */
/* ------------------------------------------------------------------------- */

int qt_cnn_write_init(const char *arch, long num_classes, uint64_t seed, const char *path,
                      qt_err *err) {
  const arch_def *a = find_arch(arch);
  if (!a) return unknown_arch(arch, err);
  if (num_classes < 1 || num_classes > 1000000)
    return qt_err_set(err, QT_EINVAL, "qt_cnn_write_init: num_classes %ld outside [1, 1000000]",
                      num_classes);
  if (!path || !*path) return qt_err_set(err, QT_EINVAL, "qt_cnn_write_init: no path");
  layout l = {0};
  char strides[64] = "";
  init_style style = a->family == QT_MODEL_FAMILY_RESNET ? INIT_RESNET : INIT_GOOG;
  if (style == INIT_RESNET)
    resnet_layout(a, num_classes, &l);
  else
    builder_layout(a, num_classes, &l, strides, sizeof strides);
  float *values = NULL;               /* (total) every tensor, one after another */
  qt_safetensors_tensor *list = NULL; /* (l.n) */
  qt_rng_t *rng = NULL;
  int rc = 0;
  size_t total = 0;
  for (size_t i = 0; i < l.n; i++) {
    size_t numel = 1;
    for (size_t d = 0; d < l.items[i].ndim; d++) numel *= l.items[i].shape[d];
    total += numel;
  }
  if (!l.failed) {
    values = malloc(total * sizeof *values);
    list = calloc(l.n, sizeof *list);
  }
  if (l.failed || !values || !list) {
    rc = qt_err_set(err, QT_ENOMEM, "qt_cnn_write_init: out of memory for %s", a->name);
    goto done;
  }
  if ((rc = qt_rng_init(&rng, seed, err)) != 0) goto done;
  size_t offset = 0;
  for (size_t i = 0; i < l.n; i++) {
    const tensor_spec *t = &l.items[i];
    size_t numel = 1;
    for (size_t d = 0; d < t->ndim; d++) numel *= t->shape[d];
    init_values(style, t->name, t->ndim, t->shape, layout_linear_in(&l, t->name), values + offset,
                rng);
    list[i] =
        (qt_safetensors_tensor){t->name, QT_DTYPE_F32, t->ndim, t->shape, values + offset, NULL};
    offset += numel;
  }
  qt_safetensors_pair meta[3];
  size_t n_meta = 0;
  meta[n_meta++] = (qt_safetensors_pair){"format", "pt"};
  meta[n_meta++] = (qt_safetensors_pair){"arch", a->name};
  if (style == INIT_GOOG) meta[n_meta++] = (qt_safetensors_pair){"stage_strides", strides};
  rc = qt_safetensors_write(path, list, l.n, meta, n_meta, err);
done:
  qt_rng_free(rng);
  free(list);
  free(values);
  free(l.items);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Re-initializing a loaded model                                             */
/* ------------------------------------------------------------------------- */

void qt_cnn_reinit(qt_cnn_t *cnn, qt_rng_t *rng) {
  /* The family from the names: the builder family's stem is conv_stem,
   * ResNet's conv1. */
  qt_cnn_tensor probe;
  init_style style =
      qt_cnn_find_tensor(cnn, "conv_stem.weight", &probe) == 0 ? INIT_GOOG : INIT_RESNET;
  size_t n = qt_cnn_tensor_count(cnn);
  for (size_t i = 0; i < n; i++) {
    qt_cnn_tensor t;
    qt_cnn_tensor_at(cnn, i, &t);
    size_t linear_in = 0;
    if (ends_with(t.name, ".bias")) {
      char weight[256];
      qt_cnn_tensor w;
      snprintf(weight, sizeof weight, "%.*s.weight", (int)(strlen(t.name) - 5), t.name);
      if (qt_cnn_find_tensor(cnn, weight, &w) == 0 && w.ndim == 2) linear_in = w.shape[1];
    }
    init_values(style, t.name, t.ndim, t.shape, linear_in, t.data, rng);
  }
}

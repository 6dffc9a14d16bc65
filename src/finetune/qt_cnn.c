/*
 * qt_cnn.c - convolutional models (MobileNetV2, EfficientNet, ResNet) from
 * timm-named checkpoints: a flat list of ops over an activation arena, run
 * forward and backward by the layer ops of the backend's op table (qt__ops:
 * the CPU references of cpu/ or the CUDA ops of cuda/). The parameters,
 * gradients, activations and every buffer the passes touch live in the
 * backend's memory; a model is loaded on the CPU and moved with
 * qt_cnn_to_backend. See qt_finetune.h.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune_internal.h"

/* ------------------------------------------------------------------------- */
/* Structures                                                                 */
/* ------------------------------------------------------------------------- */

#define MAX_TENSORS 1024
#define MAX_OPS 512
#define MAX_STAGES 16

typedef struct tensor {
  char *name;
  size_t ndim;
  size_t shape[4];
  size_t numel;
  size_t offset; /* into params / grads */
  int trainable;
  int fresh; /* 1: not from the checkpoint (a new head) */
  long unit; /* freezing unit (qt_cnn_units) */
  int head;  /* 1: part of the head (always trainable) */
} tensor;

typedef enum op_kind {
  OP_CONV,
  OP_BN,
  OP_RELU6,
  OP_RELU,
  OP_ADD,
  OP_POOL,
  OP_MAXPOOL,
  OP_LINEAR,
  OP_SILU,
  OP_SE,
  OP_DROPOUT /* head dropout (identity while off) */
} op_kind;

typedef struct op {
  op_kind kind;
  int in, in2, out;         /* activation indices (in2: OP_ADD only) */
  int weight, bias, rm, rv; /* tensor indices, -1 when absent */
  qt_conv2d_shape conv;     /* OP_CONV, OP_MAXPOOL; batch set per call */
  size_t argmax;            /* OP_MAXPOOL: offset into argmax, per image */
  int se_we, se_be;         /* OP_SE: conv_expand weight and bias (weight,
                               bias: conv_reduce) */
  size_t rd;                /* OP_SE: reduced channels */
  size_t se_saved;          /* OP_SE: offset into se_saved, per image */
  size_t c, hw;             /* OP_BN, OP_POOL: channels, plane */
  size_t in_f, out_f;       /* OP_LINEAR */
  size_t stats;             /* OP_BN: offset into mean / rstd */
  long unit;                /* freezing unit */
  int head;                 /* 1: part of the head */
  qt_batchnorm_mode mode;   /* OP_BN: the mode of the last forward */
  int stoch;                /* OP_BN: 1 when the last forward was StochNorm */
} op;

typedef struct activation {
  size_t per_image; /* floats per image */
  float *data;      /* (max_batch, per_image), in the arena */
  float *grad;      /* (max_batch, per_image), in the arena, shared (plan_grads);
                       NULL for the images */
  size_t grad_at;   /* grad's offset in the arena's gradient part, floats */
  int written;      /* in a backward pass: grad holds this pass's values */
} activation;

/* Everything the passes read or write, in the memory of one backend
 * (allocated together, so that a move builds a whole new set before it
 * releases the old one). Sizes in elements; a size of 0 leaves NULL. */
typedef struct cnn_memory {
  float *params;         /* (n_params) values and running statistics */
  float *grads;          /* (n_params) */
  float *arena;          /* every activation and its gradient */
  float *scratch;        /* (scratch_n) the convolutions' column matrices */
  size_t scratch_n;      /* the backend's conv2d_scratch_size, over every conv */
  int32_t *argmax;       /* (max_batch, argmax_n) max pooling winners */
  float *se_saved;       /* (max_batch, se_n) SE pooled / hidden / gate values */
  float *se_scratch;     /* (max_batch, se_scratch_n) SE backward scratch */
  float *mean, *rstd;    /* (stats_n) batch norm statistics of the last forward */
  unsigned char *select; /* (stats_n) StochNorm's draws of the last forward */
  float *probs;          /* (max_batch, classes) */
  float *losses;         /* (max_batch) */
  int *labels;           /* (max_batch) labels of the last loss */
  float *soft;           /* (max_batch, classes) soft targets of the last loss */
  float *dloss;          /* (1) the loss gradient of every row, 1 / batch */
  float *drop_mask;      /* (max_batch, features) head dropout's mask, off the
                            CPU only (the CPU reads the hooks' own) */
  float *feat_grad;      /* (max_batch, features) the feature hook's gradient
                            moved up, off the CPU only */
  /* Host copies of what callers read, off the CPU only (else NULL). */
  float *host_logits;   /* (max_batch, classes) */
  float *host_losses;   /* (max_batch) */
  float *host_features; /* (max_batch, features) the feature hook's */
} cnn_memory;

struct qt_cnn {
  tensor tensors[MAX_TENSORS];
  size_t n_tensors;
  op ops[MAX_OPS];
  size_t n_ops;
  activation acts[MAX_OPS + 1];
  size_t n_acts;
  size_t n_params;
  const qt__ops *backend; /* the backend every array of mem lives on */
  cnn_memory mem;
  size_t arena_n;      /* floats: the activations, then the gradient buffers */
  size_t data_n;       /* floats of the activations' values */
  size_t se_n;         /* SE values per image */
  size_t se_scratch_n; /* SE backward scratch per image */
  size_t argmax_n;     /* max pooling winners per image */
  size_t stats_n;      /* batch norm channels */
  int labels_set;
  int soft_set;    /* 1: the last loss used soft targets (soft), else labels */
  float smoothing; /* of the last loss */
  size_t batch, max_batch;
  long image_size, classes;
  float bn_eps, bn_momentum;
  int tf_same;
  /* A failure of qt_cnn_zero_grad (which returns nothing) to queue its
   * work on a device, reported by the next backward; 0 when none. */
  int zero_grad_rc;
  qt_err zero_grad_err;
  long units;           /* blocks (qt_cnn_units) */
  long train_from;      /* qt_cnn_set_trainable_from */
  int pool_op;          /* the global pooling op: its output are the features */
  qt__head_hooks hooks; /* head dropout and the feature hook's gradient */
  /* StochNorm (qt_cnn_set_stoch_norm). */
  double stoch_p;
  qt_rng_t *stoch_rng;
  unsigned char *host_select; /* (stats_n) the draws on the host, then uploaded */
  /* Metadata carried to qt_cnn_save. */
  char *meta_bn_eps, *meta_padding, *meta_strides, *meta_arch;
};

/* ------------------------------------------------------------------------- */
/* Building                                                                   */
/* ------------------------------------------------------------------------- */

typedef struct builder {
  qt_cnn_t *m;
  const qt_safetensors_t *st;
  qt_err *err;
  int rc;
  long unit; /* the freezing unit of what is being added */
  int head;  /* 1 while the head is being added */
} builder;

static int add_tensor(builder *b, const char *name, size_t ndim, const size_t *shape,
                      int trainable) {
  qt_cnn_t *m = b->m;
  if (m->n_tensors == MAX_TENSORS) {
    b->rc = qt_err_set(b->err, QT_EFORMAT, "too many tensors (over %d)", MAX_TENSORS);
    return -1;
  }
  tensor *t = &m->tensors[m->n_tensors];
  t->name = strdup(name);
  if (!t->name) {
    b->rc = qt_err_set(b->err, QT_ENOMEM, "out of memory");
    return -1;
  }
  t->ndim = ndim;
  t->numel = 1;
  for (size_t i = 0; i < ndim; i++) {
    t->shape[i] = shape[i];
    t->numel *= shape[i];
  }
  t->offset = m->n_params;
  t->trainable = trainable;
  t->fresh = 0;
  t->unit = b->unit;
  t->head = b->head;
  m->n_params += t->numel;
  return (int)m->n_tensors++;
}

/* Adds the checkpoint tensor `name` with the expected shape (-1 entries:
 * any) and returns its index, or -1 with b->rc set. */
static int take(builder *b, const char *name, size_t ndim, const long *want, int trainable) {
  if (b->rc) return -1;
  qt_safetensors_info info;
  if (qt_safetensors_find(b->st, name, NULL) != 0) {
    b->rc =
        qt_err_set(b->err, QT_EFORMAT, "%s: missing tensor '%s'", qt_safetensors_path(b->st), name);
    return -1;
  }
  size_t index;
  qt_safetensors_find(b->st, name, &index);
  qt_safetensors_info_at(b->st, index, &info);
  int ok = info.ndim == ndim;
  for (size_t i = 0; ok && i < ndim; i++) ok = want[i] < 0 || (size_t)want[i] == info.shape[i];
  if (!ok) {
    b->rc = qt_err_set(b->err, QT_EFORMAT, "%s: tensor '%s' has an unexpected shape",
                       qt_safetensors_path(b->st), name);
    return -1;
  }
  return add_tensor(b, name, ndim, info.shape, trainable);
}

static int has(builder *b, const char *prefix, const char *suffix) {
  char name[256];
  snprintf(name, sizeof name, "%s.%s", prefix, suffix);
  return qt_safetensors_find(b->st, name, NULL) == 0;
}

static int new_act(builder *b, size_t per_image) {
  qt_cnn_t *m = b->m;
  QT_ASSERT(m->n_acts < MAX_OPS + 1);
  m->acts[m->n_acts].per_image = per_image;
  return (int)m->n_acts++;
}

static op *new_op(builder *b, op_kind kind, int in) {
  qt_cnn_t *m = b->m;
  if (m->n_ops == MAX_OPS) {
    if (!b->rc) b->rc = qt_err_set(b->err, QT_EFORMAT, "too many layers (over %d)", MAX_OPS);
    return NULL;
  }
  op *o = &m->ops[m->n_ops++];
  memset(o, 0, sizeof *o);
  o->kind = kind;
  o->in = in;
  o->unit = b->unit;
  o->head = b->head;
  o->in2 = o->weight = o->bias = o->rm = o->rv = o->se_we = o->se_be = -1;
  return o;
}

/* A feature map being built: its activation, channels and side. */
typedef struct fmap {
  int act;
  size_t c, h, w;
} fmap;

static fmap conv(builder *b, fmap x, const char *name, size_t stride, int depthwise) {
  fmap y = x;
  if (b->rc) return y;
  long want[4] = {-1, depthwise ? 1 : (long)x.c, -1, -1};
  int wi = take(b, name, 4, want, 1);
  if (wi < 0) return y;
  const tensor *t = &b->m->tensors[wi];
  if (depthwise && t->shape[2] * t->shape[3] > 64) {
    /* qt_cpu_conv2d's depthwise loops keep a kernel's gradient on the
     * stack, up to 8x8 (timm's largest is 7x7). */
    b->rc = qt_err_set(b->err, QT_EFORMAT, "tensor '%s': depthwise kernels up to 8x8", name);
    return y;
  }
  if (t->shape[2] != t->shape[3]) {
    b->rc = qt_err_set(b->err, QT_EFORMAT, "tensor '%s': only square kernels", name);
    return y;
  }
  op *o = new_op(b, OP_CONV, x.act);
  if (!o) return y;
  o->weight = wi;
  size_t k = t->shape[2], groups = depthwise ? x.c : 1;
  int rc = b->m->tf_same ? qt_conv2d_shape_init_same(&o->conv, 1, x.c, x.h, x.w, t->shape[0], k,
                                                     stride, groups, b->err)
                         : qt_conv2d_shape_init(&o->conv, 1, x.c, x.h, x.w, t->shape[0], k, stride,
                                                k / 2, groups, b->err);
  if (rc) {
    b->rc = rc;
    return y;
  }
  y.c = o->conv.out_c;
  y.h = o->conv.out_h;
  y.w = o->conv.out_w;
  y.act = o->out = new_act(b, y.c * y.h * y.w);
  return y;
}

static fmap batchnorm(builder *b, fmap x, const char *prefix) {
  fmap y = x;
  if (b->rc) return y;
  char name[256];
  long want[1] = {(long)x.c};
  op *o = new_op(b, OP_BN, x.act);
  if (!o) return y;
  snprintf(name, sizeof name, "%s.weight", prefix);
  o->weight = take(b, name, 1, want, 1);
  snprintf(name, sizeof name, "%s.bias", prefix);
  o->bias = take(b, name, 1, want, 1);
  snprintf(name, sizeof name, "%s.running_mean", prefix);
  o->rm = take(b, name, 1, want, 0);
  snprintf(name, sizeof name, "%s.running_var", prefix);
  o->rv = take(b, name, 1, want, 0);
  o->c = x.c;
  o->hw = x.h * x.w;
  o->stats = b->m->stats_n;
  b->m->stats_n += x.c;
  y.act = o->out = new_act(b, x.c * x.h * x.w);
  return y;
}

static fmap elementwise(builder *b, fmap x, op_kind kind) {
  fmap y = x;
  if (b->rc) return y;
  op *o = new_op(b, kind, x.act);
  if (!o) return y;
  o->c = x.c;
  o->hw = x.h * x.w;
  y.act = o->out = new_act(b, x.c * x.h * x.w);
  return y;
}

static fmap add(builder *b, fmap x, fmap shortcut) {
  fmap y = x;
  if (b->rc) return y;
  op *o = new_op(b, OP_ADD, x.act);
  if (!o) return y;
  o->in2 = shortcut.act;
  o->c = x.c;
  o->hw = x.h * x.w;
  y.act = o->out = new_act(b, x.c * x.h * x.w);
  return y;
}

static fmap linear(builder *b, fmap x, const char *prefix) {
  fmap y = x;
  if (b->rc) return y;
  char name[256];
  op *o = new_op(b, OP_LINEAR, x.act);
  if (!o) return y;
  long want_w[2] = {-1, (long)x.c};
  snprintf(name, sizeof name, "%s.weight", prefix);
  o->weight = take(b, name, 2, want_w, 1);
  if (o->weight < 0) return y;
  size_t out_f = b->m->tensors[o->weight].shape[0];
  long want_b[1] = {(long)out_f};
  snprintf(name, sizeof name, "%s.bias", prefix);
  o->bias = take(b, name, 1, want_b, 1);
  o->in_f = x.c;
  o->out_f = out_f;
  y.c = out_f;
  y.h = y.w = 1;
  y.act = o->out = new_act(b, out_f);
  return y;
}

/* timm's SqueezeExcite of the EfficientNet blocks, on `channels`:
 * se.conv_reduce (rd, C, 1, 1) + bias, SiLU, se.conv_expand (C, rd, 1, 1) +
 * bias, sigmoid gate. */
static fmap squeeze_excite(builder *b, fmap x, const char *prefix) {
  fmap y = x;
  if (b->rc) return y;
  char name[256];
  op *o = new_op(b, OP_SE, x.act);
  if (!o) return y;
  long want_r[4] = {-1, (long)x.c, 1, 1};
  snprintf(name, sizeof name, "%s.se.conv_reduce.weight", prefix);
  o->weight = take(b, name, 4, want_r, 1);
  if (o->weight < 0) return y;
  size_t rd = b->m->tensors[o->weight].shape[0];
  long want_rb[1] = {(long)rd}, want_e[4] = {(long)x.c, (long)rd, 1, 1}, want_eb[1] = {(long)x.c};
  snprintf(name, sizeof name, "%s.se.conv_reduce.bias", prefix);
  o->bias = take(b, name, 1, want_rb, 1);
  snprintf(name, sizeof name, "%s.se.conv_expand.weight", prefix);
  o->se_we = take(b, name, 4, want_e, 1);
  snprintf(name, sizeof name, "%s.se.conv_expand.bias", prefix);
  o->se_be = take(b, name, 1, want_eb, 1);
  o->c = x.c;
  o->hw = x.h * x.w;
  o->rd = rd;
  o->se_saved = b->m->se_n;
  b->m->se_n += 2 * x.c + 2 * rd;
  if (2 * x.c + 2 * rd > b->m->se_scratch_n) b->m->se_scratch_n = 2 * x.c + 2 * rd;
  y.act = o->out = new_act(b, x.c * x.h * x.w);
  return y;
}

static void parse_strides(const char *text, size_t *strides, size_t n) {
  static const size_t timm[7] = {1, 2, 2, 2, 1, 2, 1};
  for (size_t i = 0; i < n; i++) strides[i] = i < 7 ? timm[i] : 1;
  if (!text) return;
  for (size_t i = 0; i < n && *text; i++) {
    char *end;
    long v = strtol(text, &end, 10);
    if (end == text) break;
    strides[i] = v > 0 ? (size_t)v : 1;
    text = *end == ',' ? end + 1 : end;
  }
}

/* Global average pooling, the optional head MLP, and the classifier (the
 * checkpoint's, or a new one for another class count). */
static int build_head(builder *b, const qt_cnn_load_params *p, fmap x, const char *classifier) {
  qt_cnn_t *m = b->m;
  char prefix[128], weight_name[160], bias_name[160];
  if (b->rc) return b->rc;
  b->head = 1;
  op *pool = new_op(b, OP_POOL, x.act);
  if (!pool) return b->rc;
  m->pool_op = (int)(pool - m->ops);
  pool->c = x.c;
  pool->hw = x.h * x.w;
  x.h = x.w = 1;
  x.act = pool->out = new_act(b, x.c);
  x = elementwise(b, x, OP_DROPOUT);
  for (int k = 0; !b->rc; k++) {
    snprintf(prefix, sizeof prefix, "head_mlp.%d", k);
    if (!has(b, prefix, "weight")) break;
    x = elementwise(b, linear(b, x, prefix), OP_RELU);
  }
  if (b->rc) return b->rc;
  /* The classifier: the checkpoint's, or a new one for another class
   * count. */
  snprintf(weight_name, sizeof weight_name, "%s.weight", classifier);
  snprintf(bias_name, sizeof bias_name, "%s.bias", classifier);
  int keep = p->num_classes == 0;
  if (!keep && qt_safetensors_find(b->st, weight_name, NULL) == 0) {
    size_t index;
    qt_safetensors_info info;
    qt_safetensors_find(b->st, weight_name, &index);
    qt_safetensors_info_at(b->st, index, &info);
    keep = info.ndim == 2 && (long)info.shape[0] == p->num_classes;
  }
  if (keep) {
    x = linear(b, x, classifier);
  } else {
    op *o = new_op(b, OP_LINEAR, x.act);
    if (!o) return b->rc;
    size_t ws[2] = {(size_t)p->num_classes, x.c}, bs[1] = {(size_t)p->num_classes};
    o->weight = add_tensor(b, weight_name, 2, ws, 1);
    o->bias = add_tensor(b, bias_name, 1, bs, 1);
    if (o->weight < 0 || o->bias < 0) return b->rc;
    m->tensors[o->weight].fresh = m->tensors[o->bias].fresh = 1;
    o->in_f = x.c;
    o->out_f = (size_t)p->num_classes;
    x.c = o->out_f;
    x.act = o->out = new_act(b, x.c);
  }
  m->classes = (long)x.c;
  return b->rc;
}

/* timm's EfficientNet builder family: MobileNetV2 (ReLU6, no SE) and
 * EfficientNet (SiLU, squeeze-and-excitation where the checkpoint has it). */
static int build_efficientnet_family(builder *b, const qt_cnn_load_params *p, op_kind act) {
  size_t strides[MAX_STAGES];
  parse_strides(qt_safetensors_metadata_get(b->st, "stage_strides"), strides, MAX_STAGES);
  fmap x = {new_act(b, 3 * (size_t)p->image_size * (size_t)p->image_size), 3, (size_t)p->image_size,
            (size_t)p->image_size};
  x = conv(b, x, "conv_stem.weight", 2, 0);
  x = batchnorm(b, x, "bn1");
  x = elementwise(b, x, act);
  char prefix[128], name[192];
  for (size_t s = 0; s < MAX_STAGES && !b->rc; s++) {
    snprintf(prefix, sizeof prefix, "blocks.%zu.0", s);
    if (!has(b, prefix, "conv_dw.weight")) break;
    for (size_t j = 0; !b->rc; j++) {
      snprintf(prefix, sizeof prefix, "blocks.%zu.%zu", s, j);
      if (!has(b, prefix, "conv_dw.weight")) break;
      b->unit++;
      size_t stride = j == 0 ? strides[s] : 1;
      fmap in = x;
      if (has(b, prefix, "conv_pwl.weight")) {
        /* timm's InvertedResidual: expand, depthwise, project. */
        snprintf(name, sizeof name, "%s.conv_pw.weight", prefix);
        x = conv(b, x, name, 1, 0);
        snprintf(name, sizeof name, "%s.bn1", prefix);
        x = elementwise(b, batchnorm(b, x, name), act);
        snprintf(name, sizeof name, "%s.conv_dw.weight", prefix);
        x = conv(b, x, name, stride, 1);
        snprintf(name, sizeof name, "%s.bn2", prefix);
        x = elementwise(b, batchnorm(b, x, name), act);
        if (has(b, prefix, "se.conv_reduce.weight")) x = squeeze_excite(b, x, prefix);
        snprintf(name, sizeof name, "%s.conv_pwl.weight", prefix);
        x = conv(b, x, name, 1, 0);
        snprintf(name, sizeof name, "%s.bn3", prefix);
        x = batchnorm(b, x, name);
      } else {
        /* timm's DepthwiseSeparableConv: depthwise, pointwise (no
         * activation after it in MobileNetV2). */
        snprintf(name, sizeof name, "%s.conv_dw.weight", prefix);
        x = conv(b, x, name, stride, 1);
        snprintf(name, sizeof name, "%s.bn1", prefix);
        x = elementwise(b, batchnorm(b, x, name), act);
        if (has(b, prefix, "se.conv_reduce.weight")) x = squeeze_excite(b, x, prefix);
        snprintf(name, sizeof name, "%s.conv_pw.weight", prefix);
        x = conv(b, x, name, 1, 0);
        snprintf(name, sizeof name, "%s.bn2", prefix);
        x = batchnorm(b, x, name);
      }
      if (!b->rc && stride == 1 && in.c == x.c) x = add(b, x, in);
    }
  }
  x = conv(b, x, "conv_head.weight", 1, 0);
  x = elementwise(b, batchnorm(b, x, "bn2"), act);
  return build_head(b, p, x, "classifier");
}

/* torchvision's / timm's ResNet stem pool: 3x3, stride 2, padding 1. */
static fmap maxpool(builder *b, fmap x) {
  fmap y = x;
  if (b->rc) return y;
  op *o = new_op(b, OP_MAXPOOL, x.act);
  if (!o) return y;
  int rc = qt_conv2d_shape_init(&o->conv, 1, x.c, x.h, x.w, x.c, 3, 2, 1, x.c, b->err);
  if (rc) {
    b->rc = rc;
    return y;
  }
  y.h = o->conv.out_h;
  y.w = o->conv.out_w;
  o->argmax = b->m->argmax_n;
  b->m->argmax_n += x.c * y.h * y.w;
  y.act = o->out = new_act(b, x.c * y.h * y.w);
  return y;
}

/* timm's ResNet (resnet18/34 BasicBlock, resnet50 Bottleneck): conv1 7x7
 * stride 2, bn1, ReLU, max pool, layer1..4 (stride 2 on the first block of
 * layers 2 to 4, on the 3x3 convolution: conv1 in a BasicBlock, conv2 in a
 * Bottleneck), a downsample (1x1 convolution with the stride, batch norm)
 * where the checkpoint has one, ReLU after the addition, then fc. */
static int build_resnet(builder *b, const qt_cnn_load_params *p) {
  fmap x = {new_act(b, 3 * (size_t)p->image_size * (size_t)p->image_size), 3, (size_t)p->image_size,
            (size_t)p->image_size};
  x = conv(b, x, "conv1.weight", 2, 0);
  x = elementwise(b, batchnorm(b, x, "bn1"), OP_RELU);
  x = maxpool(b, x);
  int bottleneck = has(b, "layer1.0", "conv3.weight");
  int convs = bottleneck ? 3 : 2;
  char prefix[64], name[128];
  for (int layer = 1; layer <= 4 && !b->rc; layer++) {
    for (int j = 0; !b->rc; j++) {
      snprintf(prefix, sizeof prefix, "layer%d.%d", layer, j);
      if (!has(b, prefix, "conv1.weight")) {
        if (j == 0)
          b->rc = qt_err_set(b->err, QT_EFORMAT, "%s: missing tensor '%s.conv1.weight'",
                             qt_safetensors_path(b->st), prefix);
        break;
      }
      b->unit++;
      size_t stride = (j == 0 && layer > 1) ? 2 : 1;
      fmap in = x;
      for (int k = 1; k <= convs; k++) {
        int strided = bottleneck ? k == 2 : k == 1;
        snprintf(name, sizeof name, "%s.conv%d.weight", prefix, k);
        x = conv(b, x, name, strided ? stride : 1, 0);
        snprintf(name, sizeof name, "%s.bn%d", prefix, k);
        x = batchnorm(b, x, name);
        if (k < convs) x = elementwise(b, x, OP_RELU);
      }
      fmap shortcut = in;
      if (has(b, prefix, "downsample.0.weight")) {
        snprintf(name, sizeof name, "%s.downsample.0.weight", prefix);
        shortcut = conv(b, in, name, stride, 0);
        snprintf(name, sizeof name, "%s.downsample.1", prefix);
        shortcut = batchnorm(b, shortcut, name);
      }
      if (b->rc) break;
      if (shortcut.c != x.c || shortcut.h != x.h) {
        b->rc =
            qt_err_set(b->err, QT_EFORMAT, "%s: block %s changes the shape but has no downsample",
                       qt_safetensors_path(b->st), prefix);
        break;
      }
      x = elementwise(b, add(b, x, shortcut), OP_RELU);
    }
  }
  return build_head(b, p, x, "fc");
}

/* ------------------------------------------------------------------------- */
/* Load / free                                                                */
/* ------------------------------------------------------------------------- */

qt_cnn_load_params qt_cnn_default_load_params(void) {
  return (qt_cnn_load_params){.family = QT_MODEL_FAMILY_MOBILENETV2,
                              .image_size = 224,
                              .num_classes = 0,
                              .max_batch = 32,
                              .bn_momentum = 0.1f,
                              .rng = NULL};
}

/* Releases every array of mem (allocated on ops); NULLs are no-ops. */
static void memory_release(const qt__ops *ops, cnn_memory *mem) {
  ops->release(mem->params);
  ops->release(mem->grads);
  ops->release(mem->arena);
  ops->release(mem->scratch);
  ops->release(mem->argmax);
  ops->release(mem->se_saved);
  ops->release(mem->se_scratch);
  ops->release(mem->mean);
  ops->release(mem->rstd);
  ops->release(mem->select);
  ops->release(mem->probs);
  ops->release(mem->losses);
  ops->release(mem->labels);
  ops->release(mem->soft);
  ops->release(mem->dloss);
  ops->release(mem->drop_mask);
  ops->release(mem->feat_grad);
  free(mem->host_logits);
  free(mem->host_losses);
  free(mem->host_features);
  memset(mem, 0, sizeof *mem);
}

/* Allocates and zeroes (as calloc) a complete set of arrays for the model on
 * ops, with the backend's convolution scratch size. On failure nothing
 * stays allocated and *mem is all NULL. */
static int memory_alloc(const qt_cnn_t *m, const qt__ops *ops, cnn_memory *mem, qt_err *err) {
  memset(mem, 0, sizeof *mem);
  for (size_t i = 0; i < m->n_ops; i++) {
    if (m->ops[i].kind != OP_CONV) continue;
    qt_conv2d_shape full = m->ops[i].conv; /* a device's scratch may hold several images' */
    full.batch = m->max_batch;
    size_t need = ops->conv2d_scratch_size(&full);
    if (need > mem->scratch_n) mem->scratch_n = need;
  }
  size_t mb = m->max_batch, classes = (size_t)m->classes;
  struct {
    void **ptr;
    size_t bytes;
  } arrays[] = {
      {(void **)&mem->params, m->n_params * sizeof(float)},
      {(void **)&mem->grads, m->n_params * sizeof(float)},
      {(void **)&mem->arena, m->arena_n * sizeof(float)},
      {(void **)&mem->scratch, mem->scratch_n * sizeof(float)},
      {(void **)&mem->argmax, m->argmax_n * mb * sizeof(int32_t)},
      {(void **)&mem->se_saved, m->se_n * mb * sizeof(float)},
      {(void **)&mem->se_scratch, m->se_scratch_n * mb * sizeof(float)},
      {(void **)&mem->mean, m->stats_n * sizeof(float)},
      {(void **)&mem->rstd, m->stats_n * sizeof(float)},
      {(void **)&mem->select, m->stats_n},
      {(void **)&mem->probs, mb * classes * sizeof(float)},
      {(void **)&mem->losses, mb * sizeof(float)},
      {(void **)&mem->labels, mb * sizeof(int)},
      {(void **)&mem->soft, mb * classes * sizeof(float)},
      {(void **)&mem->dloss, sizeof(float)},
      {(void **)&mem->drop_mask, ops->host_memory ? 0 : mb * qt_cnn_feature_dim(m) * sizeof(float)},
      {(void **)&mem->feat_grad, ops->host_memory ? 0 : mb * qt_cnn_feature_dim(m) * sizeof(float)},
  };
  int rc = 0;
  for (size_t k = 0; k < sizeof arrays / sizeof arrays[0] && rc == 0; k++) {
    rc = ops->alloc(arrays[k].ptr, arrays[k].bytes, err);
    if (rc == 0 && arrays[k].bytes) rc = ops->zero(*arrays[k].ptr, arrays[k].bytes, err);
  }
  if (rc == 0 && !ops->host_memory) {
    mem->host_logits = calloc(mb * classes, sizeof(float));
    mem->host_losses = calloc(mb, sizeof(float));
    mem->host_features = calloc(mb * qt_cnn_feature_dim(m), sizeof(float));
    if (!mem->host_logits || !mem->host_losses || !mem->host_features)
      rc = qt_err_set(err, QT_ENOMEM, "CNN: out of host memory for the logits' copy");
  }
  if (rc < 0) memory_release(ops, mem);
  return rc;
}

/* Points the activations into the arena of m->mem. */
static void point_acts(qt_cnn_t *m) {
  float *cursor = m->mem.arena;
  for (size_t i = 0; i < m->n_acts; i++) {
    m->acts[i].data = cursor;
    cursor += m->acts[i].per_image * m->max_batch;
    m->acts[i].grad = i == 0 ? NULL : m->mem.arena + m->data_n + m->acts[i].grad_at;
  }
}

/* Plans the gradients' buffers and sizes the arena (m->data_n,
 * m->arena_n, every activation's grad_at). In a backward pass, activation
 * a's gradient lives from the first op that writes it, its last consumer
 * (the loss, for the logits), down to its producer, whose backward reads
 * it: over the ops [producer, last consumer]. Activations whose spans do
 * not meet share a buffer, as large as the largest of them. Taken in the
 * backward's order, each goes to a buffer whose last tenant's span has
 * ended, the smallest one that is large enough, else the largest (grown),
 * else a new one. The images need no gradient. A MobileNetV2 keeps a few
 * buffers instead of one per activation, about halving the arena. */
#define MAX_GRAD_BUFFERS (MAX_OPS + 1)

/* Whether a free buffer of `candidate` floats suits `need` better than one
 * of `current`: the smallest that is large enough, else the largest. */
static int fits_better(size_t candidate, size_t current, size_t need) {
  if (candidate >= need) return current < need || candidate < current;
  return current < need && candidate > current;
}

static void plan_grads(qt_cnn_t *m) {
  size_t n = m->n_acts;
  long first[MAX_OPS + 1], last[MAX_OPS + 1]; /* the span, in op indices */
  for (size_t a = 0; a < n; a++) first[a] = last[a] = -1;
  for (size_t i = 0; i < m->n_ops; i++) {
    const op *o = &m->ops[i];
    first[o->out] = (long)i;
    last[o->in] = (long)i;
    if (o->kind == OP_ADD) last[o->in2] = (long)i;
  }
  last[n - 1] = (long)m->n_ops; /* the loss writes the logits' gradient */
  for (size_t a = 1; a < n; a++)
    if (last[a] < first[a]) last[a] = first[a]; /* read by no op: started by its producer */
  size_t size[MAX_GRAD_BUFFERS], at[MAX_GRAD_BUFFERS];
  long free_below[MAX_GRAD_BUFFERS]; /* the last tenant's producer */
  size_t buffers = 0;
  int placed[MAX_OPS + 1] = {0};
  for (size_t step = 1; step < n; step++) {
    /* The unplaced activation whose gradient the backward starts first. */
    size_t a = 0;
    for (size_t b = 1; b < n; b++)
      if (!placed[b] && (a == 0 || last[b] > last[a])) a = b;
    placed[a] = 1;
    size_t need = m->acts[a].per_image * m->max_batch, pick = buffers;
    for (size_t k = 0; k < buffers; k++) {
      if (free_below[k] <= last[a]) continue; /* its tenant's span has not ended */
      if (pick == buffers || fits_better(size[k], size[pick], need)) pick = k;
    }
    if (pick == buffers) size[buffers++] = 0;
    if (size[pick] < need) size[pick] = need;
    free_below[pick] = first[a];
    m->acts[a].grad_at = pick; /* the buffer, for now */
  }
  size_t total = 0;
  for (size_t k = 0; k < buffers; k++) {
    at[k] = total;
    total += size[k];
  }
  m->data_n = 0;
  for (size_t a = 0; a < n; a++) {
    m->data_n += m->acts[a].per_image * m->max_batch;
    m->acts[a].grad_at = a == 0 ? 0 : at[m->acts[a].grad_at];
  }
  m->arena_n = m->data_n + total;
}

void qt_cnn_free(qt_cnn_t *m) {
  if (!m) return;
  for (size_t i = 0; i < m->n_tensors; i++) free(m->tensors[i].name);
  if (m->backend) memory_release(m->backend, &m->mem);
  free(m->host_select);
  qt__head_hooks_free(&m->hooks);
  free(m->meta_bn_eps);
  free(m->meta_padding);
  free(m->meta_strides);
  free(m->meta_arch);
  free(m);
}

int qt_cnn_load(const char *path, const qt_cnn_load_params *p, qt_cnn_t **out, qt_err *err) {
  *out = NULL;
  if (p->family != QT_MODEL_FAMILY_MOBILENETV2 && p->family != QT_MODEL_FAMILY_RESNET &&
      p->family != QT_MODEL_FAMILY_EFFICIENTNET)
    return qt_err_set(err, QT_EINVAL, "qt_cnn_load: family %s is not supported yet",
                      qt_model_family_name(p->family));
  if (p->image_size < 32 || p->max_batch == 0 || p->num_classes < 0)
    return qt_err_set(err, QT_EINVAL,
                      "qt_cnn_load: image_size %ld (>= 32), max_batch %zu (>= 1), "
                      "num_classes %ld (>= 0)",
                      p->image_size, p->max_batch, p->num_classes);
  qt_safetensors_t *st = NULL;
  int rc = qt_safetensors_open(path, &st, err);
  if (rc) return rc;
  qt_cnn_t *m = calloc(1, sizeof *m);
  if (!m) {
    qt_safetensors_free(st);
    return qt_err_set(err, QT_ENOMEM, "out of memory");
  }
  m->backend = qt__ops_cpu();
  m->max_batch = p->max_batch;
  m->image_size = p->image_size;
  m->bn_momentum = p->bn_momentum;
  m->bn_eps = 1e-5f;
  const char *eps = qt_safetensors_metadata_get(st, "bn_eps");
  if (eps) {
    char *end;
    double v = strtod(eps, &end);
    if (end == eps || !(v > 0.0 && v < 1.0)) {
      rc = qt_err_set(err, QT_EFORMAT, "%s: metadata bn_eps '%s' is not a number in (0, 1)", path,
                      eps);
      goto fail;
    }
    m->bn_eps = (float)v;
  }
  const char *padding = qt_safetensors_metadata_get(st, "padding");
  m->tf_same = padding && strcmp(padding, "same") == 0;
  builder b = {.m = m, .st = st, .err = err, .unit = 0, .head = 0};
  if (p->family == QT_MODEL_FAMILY_RESNET) {
    rc = build_resnet(&b, p);
  } else {
    rc = build_efficientnet_family(&b, p,
                                   p->family == QT_MODEL_FAMILY_EFFICIENTNET ? OP_SILU : OP_RELU6);
  }
  if (rc) goto fail;
  m->units = b.unit;
  const char *keys[4] = {"bn_eps", "padding", "stage_strides", "arch"};
  char **copies[4] = {&m->meta_bn_eps, &m->meta_padding, &m->meta_strides, &m->meta_arch};
  for (int k = 0; k < 4; k++) {
    const char *v = qt_safetensors_metadata_get(st, keys[k]);
    if (v && !(*copies[k] = strdup(v))) {
      rc = qt_err_set(err, QT_ENOMEM, "out of memory");
      goto fail;
    }
  }
  if (m->classes <= 0 || (size_t)m->classes > 1000000) {
    rc = qt_err_set(err, QT_EFORMAT, "%s: bad class count", path);
    goto fail;
  }
  /* Allocation on the CPU: parameters, activations, scratch, statistics
   * (zeroed, so that a new classifier's bias starts at 0). */
  plan_grads(m);
  if ((rc = memory_alloc(m, m->backend, &m->mem, err)) != 0) goto fail;
  m->host_select = calloc(m->stats_n ? m->stats_n : 1, 1);
  if (!m->host_select) {
    rc = qt_err_set(err, QT_ENOMEM, "%s: out of memory for the model", path);
    goto fail;
  }
  point_acts(m);
  for (size_t i = 0; i < m->n_tensors; i++) {
    tensor *t = &m->tensors[i];
    if (!t->fresh) {
      if ((rc = qt_safetensors_read_f32(st, t->name, m->mem.params + t->offset, t->numel, err)) !=
          0)
        goto fail;
    } else if (t->ndim == 2) {
      /* A new classifier, as timm's _init_weight_goog for nn.Linear. */
      if (!p->rng) {
        rc = qt_err_set(err, QT_EINVAL, "qt_cnn_load: a new head needs an rng");
        goto fail;
      }
      double range = 1.0 / sqrt((double)t->shape[0]);
      for (size_t k = 0; k < t->numel; k++)
        m->mem.params[t->offset + k] = (float)(range * (2.0 * qt_rng_uniform(p->rng) - 1.0));
    }
  }
  qt_safetensors_free(st);
  *out = m;
  return 0;
fail:
  qt_safetensors_free(st);
  qt_cnn_free(m);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Accessors                                                                  */
/* ------------------------------------------------------------------------- */

size_t qt_cnn_tensor_count(const qt_cnn_t *m) {
  return m->n_tensors;
}

void qt_cnn_tensor_at(const qt_cnn_t *m, size_t index, qt_cnn_tensor *out) {
  QT_ASSERT(index < m->n_tensors);
  const tensor *t = &m->tensors[index];
  *out = (qt_cnn_tensor){.name = t->name,
                         .ndim = t->ndim,
                         .shape = t->shape,
                         .numel = t->numel,
                         .data = m->mem.params + t->offset,
                         .grad = m->mem.grads + t->offset,
                         .trainable = t->trainable,
                         .decay = t->trainable && t->ndim >= 2,
                         .unit = t->unit,
                         .head = t->head};
}

int qt_cnn_find_tensor(const qt_cnn_t *m, const char *name, qt_cnn_tensor *out) {
  for (size_t i = 0; i < m->n_tensors; i++) {
    if (strcmp(m->tensors[i].name, name) == 0) {
      qt_cnn_tensor_at(m, i, out);
      return 0;
    }
  }
  return QT_ENOENT;
}

long qt_cnn_num_classes(const qt_cnn_t *m) {
  return m->classes;
}
float qt_cnn_bn_eps(const qt_cnn_t *m) {
  return m->bn_eps;
}
const float *qt_cnn_logits(const qt_cnn_t *m) {
  return m->mem.host_logits ? m->mem.host_logits : m->acts[m->n_acts - 1].data;
}

void qt_cnn_zero_grad(qt_cnn_t *m) {
  int rc = m->backend->zero(m->mem.grads, m->n_params * sizeof *m->mem.grads, &m->zero_grad_err);
  if (rc < 0 && m->zero_grad_rc == 0) m->zero_grad_rc = rc;
}

/* ------------------------------------------------------------------------- */
/* Forward / loss / backward                                                  */
/* ------------------------------------------------------------------------- */

/* Returns from the enclosing function when a backend call fails. */
#define CNN_TRY(call)                \
  do {                               \
    int cnn_rc_ = (call);            \
    if (cnn_rc_ < 0) return cnn_rc_; \
  } while (0)

static float *param(qt_cnn_t *m, int index) {
  return index < 0 ? NULL : m->mem.params + m->tensors[index].offset;
}

static float *grad(qt_cnn_t *m, int index) {
  return index < 0 ? NULL : m->mem.grads + m->tensors[index].offset;
}

/* 1 when op o belongs to a frozen unit (qt_cnn_set_trainable_from). */
static int frozen(const qt_cnn_t *m, const op *o) {
  return !o->head && o->unit < m->train_from;
}

/* Sets every batch norm's mode for a forward in `mode` and, where StochNorm
 * replaces the training mode, draws its channels' branches on the host (in
 * the order of the layers, so the stream is the CPU's on every backend) and
 * uploads them. */
static int prepare_batchnorms(qt_cnn_t *m, qt_batchnorm_mode mode, qt_err *err) {
  int any_stoch = 0;
  for (size_t i = 0; i < m->n_ops; i++) {
    op *o = &m->ops[i];
    if (o->kind != OP_BN) continue;
    /* Frozen units keep their statistics; StochNorm replaces the training
     * mode of the others. */
    o->mode = mode == QT_BATCHNORM_MODE_TRAIN && frozen(m, o) ? QT_BATCHNORM_MODE_FROZEN : mode;
    o->stoch = o->mode == QT_BATCHNORM_MODE_TRAIN && m->stoch_rng && m->stoch_p > 0.0;
    if (!o->stoch) continue;
    unsigned char *sel = m->host_select + o->stats;
    for (size_t ch = 0; ch < o->c; ch++) sel[ch] = qt_rng_uniform(m->stoch_rng) < m->stoch_p;
    any_stoch = 1;
  }
  if (any_stoch) CNN_TRY(m->backend->upload(m->mem.select, m->host_select, m->stats_n, err));
  return 0;
}

static int cnn_forward(qt_cnn_t *m, const float *images, int staged, size_t batch,
                       qt_batchnorm_mode mode, qt_err *err);

int qt_cnn_forward(qt_cnn_t *m, const float *images, size_t batch, qt_batchnorm_mode mode,
                   qt_err *err) {
  return cnn_forward(m, images, 0, batch, mode, err);
}

int qt__cnn_forward_staged(qt_cnn_t *m, const float *images, size_t batch, qt_batchnorm_mode mode,
                           qt_err *err) {
  return cnn_forward(m, images, 1, batch, mode, err);
}

/* The forward of images on the host, or (staged) already on the backend. */
static int cnn_forward(qt_cnn_t *m, const float *images, int staged, size_t batch,
                       qt_batchnorm_mode mode, qt_err *err) {
  if (!images || batch == 0 || batch > m->max_batch)
    return qt_err_set(err, QT_EINVAL, "qt_cnn_forward: batch %zu outside [1, %zu]", batch,
                      m->max_batch);
  const qt__ops *ops = m->backend;
  const size_t F = sizeof(float);
  m->batch = 0;
  m->labels_set = 0;
  m->hooks.dropped = 0;
  /* The images are copied into the arena on every backend (the stem's
   * backward reads them after the caller may have reused its buffer; a
   * run's staged buffer takes the next batch's images during it). */
  size_t image_bytes = batch * m->acts[0].per_image * F;
  if (staged)
    CNN_TRY(ops->copy(m->acts[0].data, images, image_bytes, err));
  else
    CNN_TRY(ops->upload(m->acts[0].data, images, image_bytes, err));
  CNN_TRY(prepare_batchnorms(m, mode, err));
  for (size_t i = 0; i < m->n_ops; i++) {
    op *o = &m->ops[i];
    const float *x = m->acts[o->in].data;
    float *y = m->acts[o->out].data;
    size_t n = batch * m->acts[o->out].per_image;
    switch (o->kind) {
      case OP_CONV:
        o->conv.batch = batch;
        CNN_TRY(ops->conv2d_forward(y, m->mem.scratch, x, param(m, o->weight), param(m, o->bias),
                                    &o->conv, err));
        break;
      case OP_BN:
        if (o->stoch) {
          CNN_TRY(ops->stochnorm_forward(y, m->mem.mean + o->stats, m->mem.rstd + o->stats,
                                         param(m, o->rm), param(m, o->rv), x, param(m, o->weight),
                                         param(m, o->bias), m->mem.select + o->stats, batch, o->c,
                                         o->hw, m->bn_eps, m->bn_momentum, err));
        } else {
          CNN_TRY(ops->batchnorm_forward(y, m->mem.mean + o->stats, m->mem.rstd + o->stats,
                                         param(m, o->rm), param(m, o->rv), x, param(m, o->weight),
                                         param(m, o->bias), batch, o->c, o->hw, m->bn_eps,
                                         m->bn_momentum, o->mode, err));
        }
        break;
      case OP_DROPOUT:
        /* The features before the mask are the feature hook's (a host copy
         * off the CPU); the mask is drawn on the host (the same draws on
         * every backend) and applied by the backend. */
        if (m->hooks.dfeat) {
          memset(m->hooks.dfeat, 0, n * F);
          if (m->mem.host_features) CNN_TRY(ops->download(m->mem.host_features, x, n * F, err));
        }
        if (qt__head_hooks_draw(&m->hooks, n)) {
          const float *mask = m->hooks.drop_mask;
          if (!ops->host_memory) {
            CNN_TRY(ops->upload(m->mem.drop_mask, mask, n * F, err));
            mask = m->mem.drop_mask;
          }
          CNN_TRY(ops->mul(y, x, mask, n, err));
        } else {
          CNN_TRY(ops->copy(y, x, n * F, err));
        }
        break;
      case OP_RELU6:
        CNN_TRY(ops->relu6_forward(y, x, n, err));
        break;
      case OP_RELU:
        CNN_TRY(ops->relu_forward(y, x, n, err));
        break;
      case OP_SILU:
        CNN_TRY(ops->silu_forward(y, x, n, err));
        break;
      case OP_SE: {
        float *saved = m->mem.se_saved + o->se_saved * m->max_batch;
        size_t mb = m->max_batch;
        CNN_TRY(ops->se_forward(y, saved, saved + mb * o->c, saved + mb * (o->c + o->rd),
                                saved + mb * (o->c + 2 * o->rd), x, param(m, o->weight),
                                param(m, o->bias), param(m, o->se_we), param(m, o->se_be), batch,
                                o->c, o->hw, o->rd, QT_SE_ACT_SILU, err));
        break;
      }
      case OP_ADD:
        /* y = x + x2: a residual connection without layer scale. */
        CNN_TRY(ops->residual_forward(y, x, m->acts[o->in2].data, NULL, n, 1, err));
        break;
      case OP_POOL:
        CNN_TRY(ops->global_avgpool_forward(y, x, batch, o->c, o->hw, err));
        break;
      case OP_MAXPOOL:
        o->conv.batch = batch;
        CNN_TRY(ops->maxpool2d_forward(y, m->mem.argmax + o->argmax * batch, x, &o->conv, err));
        break;
      case OP_LINEAR:
        CNN_TRY(ops->linear_forward(y, x, param(m, o->weight), param(m, o->bias), batch, o->in_f,
                                    o->out_f, err));
        break;
    }
  }
  if (m->mem.host_logits)
    CNN_TRY(ops->download(m->mem.host_logits, m->acts[m->n_acts - 1].data,
                          batch * (size_t)m->classes * F, err));
  m->batch = batch;
  return 0;
}

int qt_cnn_loss(qt_cnn_t *m, const int *labels, const float *soft_targets, double label_smoothing,
                double *loss, qt_err *err) {
  if (m->batch == 0) return qt_err_set(err, QT_EINVAL, "qt_cnn_loss: no forward before");
  if (!labels && !soft_targets)
    return qt_err_set(err, QT_EINVAL, "qt_cnn_loss: neither labels nor soft targets");
  if (!(label_smoothing >= 0.0 && label_smoothing < 1.0))
    return qt_err_set(err, QT_EINVAL, "qt_cnn_loss: label smoothing %g outside [0, 1)",
                      label_smoothing);
  const qt__ops *ops = m->backend;
  size_t classes = (size_t)m->classes;
  m->labels_set = 0;
  if (labels) {
    for (size_t i = 0; i < m->batch; i++) {
      if (labels[i] < 0 || labels[i] >= m->classes)
        return qt_err_set(err, QT_EINVAL, "qt_cnn_loss: label %d of image %zu outside [0, %ld)",
                          labels[i], i, m->classes);
    }
    CNN_TRY(ops->upload(m->mem.labels, labels, m->batch * sizeof *labels, err));
    m->soft_set = 0;
  } else {
    CNN_TRY(ops->upload(m->mem.soft, soft_targets, m->batch * classes * sizeof *soft_targets, err));
    m->soft_set = 1;
  }
  m->smoothing = (float)label_smoothing;
  CNN_TRY(ops->cross_entropy_forward(
      m->mem.losses, m->mem.probs, m->acts[m->n_acts - 1].data, m->soft_set ? NULL : m->mem.labels,
      m->soft_set ? m->mem.soft : NULL, m->smoothing, m->batch, classes, err));
  const float *losses = m->mem.losses;
  if (m->mem.host_losses) {
    CNN_TRY(ops->download(m->mem.host_losses, m->mem.losses, m->batch * sizeof(float), err));
    losses = m->mem.host_losses;
  }
  double sum = 0.0;
  for (size_t i = 0; i < m->batch; i++) sum += losses[i];
  if (loss) *loss = sum / (double)m->batch;
  m->labels_set = 1;
  return 0;
}

/* Backward: makes activation i's gradient hold this pass's values before
 * an op adds to it, zeroing it when no op has written it yet. */
static int grad_started(qt_cnn_t *m, size_t i, qt_err *err) {
  activation *a = &m->acts[i];
  if (a->written) return 0;
  a->written = 1;
  return m->backend->zero(a->grad, m->batch * a->per_image * sizeof *a->grad, err);
}

/* The ops whose backward can write dx instead of adding to it. */
static int takes_set(op_kind kind) {
  return kind == OP_CONV || kind == OP_BN || kind == OP_RELU6 || kind == OP_RELU ||
         kind == OP_SILU || kind == OP_LINEAR;
}

int qt_cnn_backward(qt_cnn_t *m, qt_err *err) {
  if (m->zero_grad_rc < 0) {
    int rc = m->zero_grad_rc;
    m->zero_grad_rc = 0;
    return qt_err_set(err, rc, "qt_cnn_zero_grad: %s", m->zero_grad_err.msg);
  }
  if (!m->labels_set)
    return qt_err_set(err, QT_EINVAL, "qt_cnn_backward: no loss since the last forward");
  const qt__ops *ops = m->backend;
  const size_t F = sizeof(float);
  size_t batch = m->batch;
  m->labels_set = 0;
  for (size_t i = 0; i < m->n_acts; i++) m->acts[i].written = 0;
  /* The loss adds its gradient to the logits'. */
  CNN_TRY(grad_started(m, m->n_acts - 1, err));
  float dloss = 1.0f / (float)batch;
  CNN_TRY(ops->upload(m->mem.dloss, &dloss, sizeof dloss, err));
  CNN_TRY(ops->cross_entropy_backward(m->acts[m->n_acts - 1].grad, m->mem.probs,
                                      m->soft_set ? NULL : m->mem.labels,
                                      m->soft_set ? m->mem.soft : NULL, m->smoothing, m->mem.dloss,
                                      0, batch, (size_t)m->classes, err));
  for (size_t i = m->n_ops; i-- > 0;) {
    op *o = &m->ops[i];
    if (frozen(m, o)) break; /* units below get no gradients */
    const float *x = m->acts[o->in].data;
    /* The images need no gradient. */
    float *dx = o->in == 0 ? NULL : m->acts[o->in].grad;
    /* dy holds what the op's consumers (before it here) wrote. */
    CNN_TRY(grad_started(m, o->out, err));
    const float *dy = m->acts[o->out].grad;
    size_t n = batch * m->acts[o->out].per_image;
    /* The first op to reach dx writes it (set) where it can; the others
     * add, to a gradient zeroed first if it is the first. */
    int set = dx && !m->acts[o->in].written;
    if (dx && !takes_set(o->kind)) CNN_TRY(grad_started(m, o->in, err));
    switch (o->kind) {
      case OP_CONV:
        o->conv.batch = batch;
        CNN_TRY(ops->conv2d_backward(dx, grad(m, o->weight), grad(m, o->bias), m->mem.scratch, dy,
                                     x, param(m, o->weight), &o->conv, set, err));
        break;
      case OP_BN:
        if (o->stoch)
          CNN_TRY(ops->stochnorm_backward(dx, grad(m, o->weight), grad(m, o->bias), dy, x,
                                          param(m, o->weight), m->mem.mean + o->stats,
                                          m->mem.rstd + o->stats, m->mem.select + o->stats, batch,
                                          o->c, o->hw, set, err));
        else
          CNN_TRY(ops->batchnorm_backward(dx, grad(m, o->weight), grad(m, o->bias), dy, x,
                                          param(m, o->weight), m->mem.mean + o->stats,
                                          m->mem.rstd + o->stats, batch, o->c, o->hw, o->mode, set,
                                          err));
        break;
      case OP_DROPOUT:
        if (m->hooks.dropped) {
          const float *mask = ops->host_memory ? m->hooks.drop_mask : m->mem.drop_mask;
          CNN_TRY(ops->mul_add(dx, dy, mask, n, err));
        } else {
          /* dx += dy */
          CNN_TRY(ops->residual_backward(dx, NULL, NULL, dy, NULL, NULL, n, 1, err));
        }
        if (m->hooks.dfeat) {
          /* dx += the feature hook's gradient */
          const float *dfeat = m->hooks.dfeat;
          if (!ops->host_memory) {
            CNN_TRY(ops->upload(m->mem.feat_grad, dfeat, n * F, err));
            dfeat = m->mem.feat_grad;
          }
          CNN_TRY(ops->residual_backward(dx, NULL, NULL, dfeat, NULL, NULL, n, 1, err));
        }
        break;
      case OP_RELU6:
        CNN_TRY(ops->relu6_backward(dx, dy, x, n, set, err));
        break;
      case OP_RELU:
        CNN_TRY(ops->relu_backward(dx, dy, x, n, set, err));
        break;
      case OP_SILU:
        CNN_TRY(ops->silu_backward(dx, dy, x, n, set, err));
        break;
      case OP_SE: {
        const float *saved = m->mem.se_saved + o->se_saved * m->max_batch;
        size_t mb = m->max_batch;
        CNN_TRY(ops->se_backward(
            dx, grad(m, o->weight), grad(m, o->bias), grad(m, o->se_we), grad(m, o->se_be),
            m->mem.se_scratch, dy, x, saved, saved + mb * o->c, saved + mb * (o->c + o->rd),
            saved + mb * (o->c + 2 * o->rd), param(m, o->weight), param(m, o->se_we), batch, o->c,
            o->hw, o->rd, QT_SE_ACT_SILU, err));
        break;
      }
      case OP_ADD:
        /* dx += dy, dx2 += dy. */
        CNN_TRY(grad_started(m, o->in2, err));
        CNN_TRY(ops->residual_backward(dx, m->acts[o->in2].grad, NULL, dy, NULL, NULL, n, 1, err));
        break;
      case OP_POOL:
        CNN_TRY(ops->global_avgpool_backward(dx, dy, batch, o->c, o->hw, err));
        break;
      case OP_MAXPOOL:
        o->conv.batch = batch;
        CNN_TRY(ops->maxpool2d_backward(dx, dy, m->mem.argmax + o->argmax * batch, &o->conv, err));
        break;
      case OP_LINEAR:
        CNN_TRY(ops->linear_backward(dx, grad(m, o->weight), grad(m, o->bias), dy, x,
                                     param(m, o->weight), batch, o->in_f, o->out_f, set, err));
        break;
    }
    if (dx) m->acts[o->in].written = 1;
  }
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Run hooks: freezing, dropout, features, StochNorm, save                    */
/* ------------------------------------------------------------------------- */

long qt_cnn_image_size(const qt_cnn_t *m) {
  return m->image_size;
}

long qt_cnn_units(const qt_cnn_t *m) {
  return m->units;
}

void qt_cnn_set_trainable_from(qt_cnn_t *m, long unit) {
  m->train_from = unit < 0 ? 0 : unit;
}

size_t qt_cnn_feature_dim(const qt_cnn_t *m) {
  return m->acts[m->ops[m->pool_op].out].per_image;
}

int qt_cnn_set_head_dropout(qt_cnn_t *m, double rate, qt_rng_t *rng, qt_err *err) {
  return qt__head_hooks_set_dropout(&m->hooks, m->max_batch * qt_cnn_feature_dim(m), rate, rng,
                                    "CNN", err);
}

int qt_cnn_set_feature_hook(qt_cnn_t *m, int on, qt_err *err) {
  return qt__head_hooks_set_feature_grad(&m->hooks, m->max_batch * qt_cnn_feature_dim(m), on, "CNN",
                                         err);
}

const float *qt_cnn_features(const qt_cnn_t *m, size_t *batch) {
  if (!m->hooks.dfeat || m->batch == 0) return NULL;
  if (batch) *batch = m->batch;
  return m->mem.host_features ? m->mem.host_features : m->acts[m->ops[m->pool_op].out].data;
}

float *qt_cnn_feature_grad(qt_cnn_t *m) {
  return m->hooks.dfeat;
}

int qt_cnn_set_stoch_norm(qt_cnn_t *m, double p, qt_rng_t *rng, qt_err *err) {
  if (!(p >= 0.0 && p <= 1.0))
    return qt_err_set(err, QT_EINVAL, "StochNorm probability %g is not in [0, 1]", p);
  m->stoch_p = p;
  m->stoch_rng = rng;
  return 0;
}

int qt_cnn_save(const qt_cnn_t *m, const char *path, qt_err *err) {
  /* Off the CPU, the values are written from a host copy. */
  float *values = m->mem.params;
  if (!m->backend->host_memory) {
    if (!(values = malloc(m->n_params * sizeof *values)))
      return qt_err_set(err, QT_ENOMEM, "qt_cnn_save: out of memory for a host copy");
    int rc = m->backend->download(values, m->mem.params, m->n_params * sizeof *values, err);
    if (rc < 0) {
      free(values);
      return rc;
    }
  }
  qt_safetensors_tensor *list = calloc(m->n_tensors ? m->n_tensors : 1, sizeof *list);
  if (!list) {
    if (values != m->mem.params) free(values);
    return qt_err_set(err, QT_ENOMEM, "qt_cnn_save: out of memory");
  }
  for (size_t i = 0; i < m->n_tensors; i++) {
    const tensor *t = &m->tensors[i];
    list[i] =
        (qt_safetensors_tensor){t->name, QT_DTYPE_F32, t->ndim, t->shape, values + t->offset, NULL};
  }
  qt_safetensors_pair meta[5];
  size_t nm = 0;
  meta[nm++] = (qt_safetensors_pair){"format", "pt"};
  const char *keys[4] = {"bn_eps", "padding", "stage_strides", "arch"};
  const char *meta_values[4] = {m->meta_bn_eps, m->meta_padding, m->meta_strides, m->meta_arch};
  for (int k = 0; k < 4; k++) {
    if (meta_values[k]) meta[nm++] = (qt_safetensors_pair){keys[k], meta_values[k]};
  }
  int rc = qt_safetensors_write(path, list, m->n_tensors, meta, nm, err);
  free(list);
  if (values != m->mem.params) free(values);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Moving between backends                                                    */
/* ------------------------------------------------------------------------- */

int qt__cnn_set_ops(qt_cnn_t *m, const qt__ops *ops, qt_err *err) {
  if (!m || !ops) return qt_err_set(err, QT_EINVAL, "qt_cnn_to_backend: NULL argument");
  const qt__ops *from = m->backend;
  if (ops == from) return 0;

  /* Everything is allocated and copied before anything is released, so a
   * failure (out of device memory, most likely) leaves the model as it was.
   * The parameters (running statistics included) and gradients move; the
   * rest is the next forward's to fill. */
  size_t bytes = m->n_params * sizeof(float);
  cnn_memory fresh;
  int rc = memory_alloc(m, ops, &fresh, err);
  if (rc == 0) {
    void *const dst[2] = {fresh.params, fresh.grads};
    const void *const src[2] = {m->mem.params, m->mem.grads};
    rc = qt__ops_move_arrays(from, ops, dst, src, 2, bytes, "CNN", err);
  }
  if (rc < 0) {
    memory_release(ops, &fresh);
    return rc;
  }
  memory_release(from, &m->mem);
  m->mem = fresh;
  m->backend = ops;
  point_acts(m);
  m->batch = 0;
  m->labels_set = 0;
  return 0;
}

int qt_cnn_to_backend(qt_cnn_t *m, qt_backend_kind kind, qt_err *err) {
  if (!m) return qt_err_set(err, QT_EINVAL, "qt_cnn_to_backend: NULL model");
  int rc = qt_backend_kind_check(kind, err);
  if (rc < 0) return rc;
  return qt__cnn_set_ops(m, qt__ops_for(kind), err);
}

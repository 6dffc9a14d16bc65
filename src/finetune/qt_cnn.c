/*
 * qt_cnn.c - convolutional models (MobileNetV2 today) from timm-named
 * checkpoints: a flat list of ops over an activation arena, run forward and
 * backward by the CPU ops of cpu/. See qt_finetune.h.
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
  float *data;      /* (max_batch, per_image) */
  float *grad;      /* (max_batch, per_image) */
} activation;

struct qt_cnn {
  tensor tensors[MAX_TENSORS];
  size_t n_tensors;
  op ops[MAX_OPS];
  size_t n_ops;
  activation acts[MAX_OPS + 1];
  size_t n_acts;
  float *params; /* (n_params) */
  float *grads;  /* (n_params) */
  size_t n_params;
  float *arena;   /* every activation and its gradient */
  float *scratch; /* (scratch_n) im2col */
  size_t scratch_n;
  int32_t *argmax; /* (max_batch, argmax_n) max pooling winners */
  float *se_saved; /* (max_batch, se_n) SE pooled / hidden / gate values */
  size_t se_n;
  float *se_scratch; /* (max_batch * se_scratch_n) SE backward scratch */
  size_t se_scratch_n;
  size_t argmax_n;
  float *mean, *rstd; /* (stats_n) batch norm statistics of the last forward */
  size_t stats_n;
  float *probs, *losses; /* (max_batch, classes), (max_batch) */
  int labels_set;
  int soft_set;    /* 1: the last loss used soft targets (soft), else labels */
  float *soft;     /* (max_batch, classes) */
  float smoothing; /* of the last loss */
  size_t batch, max_batch;
  long image_size, classes;
  float bn_eps, bn_momentum;
  int tf_same;
  int *labels;          /* (max_batch) */
  long units;           /* blocks (qt_cnn_units) */
  long train_from;      /* qt_cnn_set_trainable_from */
  int pool_op;          /* the global pooling op: its output are the features */
  qt__head_hooks hooks; /* head dropout and the feature hook's gradient */
  /* StochNorm (qt_cnn_set_stoch_norm). */
  double stoch_p;
  qt_rng_t *stoch_rng;
  unsigned char *select; /* (stats_n) the channels' draws of the last forward */
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
  size_t need = qt_cpu_conv2d_scratch_size(&o->conv);
  if (need > b->m->scratch_n) b->m->scratch_n = need;
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

void qt_cnn_free(qt_cnn_t *m) {
  if (!m) return;
  for (size_t i = 0; i < m->n_tensors; i++) free(m->tensors[i].name);
  free(m->params);
  free(m->grads);
  free(m->arena);
  free(m->scratch);
  free(m->argmax);
  free(m->se_saved);
  free(m->se_scratch);
  free(m->mean);
  free(m->rstd);
  free(m->probs);
  free(m->losses);
  free(m->labels);
  free(m->soft);
  free(m->select);
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
  /* Allocation: parameters, activations, scratch, statistics. */
  size_t arena_n = 0;
  for (size_t i = 0; i < m->n_acts; i++) arena_n += 2 * m->acts[i].per_image * m->max_batch;
  m->params = calloc(m->n_params, sizeof(float));
  m->grads = calloc(m->n_params, sizeof(float));
  m->arena = calloc(arena_n, sizeof(float));
  m->scratch = calloc(m->scratch_n ? m->scratch_n : 1, sizeof(float));
  m->argmax = calloc(m->argmax_n ? m->argmax_n * m->max_batch : 1, sizeof(int32_t));
  m->se_saved = calloc(m->se_n ? m->se_n * m->max_batch : 1, sizeof(float));
  m->se_scratch = calloc(m->se_scratch_n ? m->se_scratch_n * m->max_batch : 1, sizeof(float));
  m->mean = calloc(m->stats_n ? m->stats_n : 1, sizeof(float));
  m->rstd = calloc(m->stats_n ? m->stats_n : 1, sizeof(float));
  m->probs = calloc(m->max_batch * (size_t)m->classes, sizeof(float));
  m->losses = calloc(m->max_batch, sizeof(float));
  m->labels = calloc(m->max_batch, sizeof(int));
  m->soft = calloc(m->max_batch * (size_t)m->classes, sizeof(float));
  m->select = calloc(m->stats_n ? m->stats_n : 1, 1);
  if (!m->params || !m->grads || !m->arena || !m->scratch || !m->argmax || !m->se_saved ||
      !m->se_scratch || !m->mean || !m->rstd || !m->probs || !m->losses || !m->labels || !m->soft ||
      !m->select) {
    rc = qt_err_set(err, QT_ENOMEM, "%s: out of memory for the model", path);
    goto fail;
  }
  float *cursor = m->arena;
  for (size_t i = 0; i < m->n_acts; i++) {
    m->acts[i].data = cursor;
    cursor += m->acts[i].per_image * m->max_batch;
    m->acts[i].grad = cursor;
    cursor += m->acts[i].per_image * m->max_batch;
  }
  for (size_t i = 0; i < m->n_tensors; i++) {
    tensor *t = &m->tensors[i];
    if (!t->fresh) {
      if ((rc = qt_safetensors_read_f32(st, t->name, m->params + t->offset, t->numel, err)) != 0)
        goto fail;
    } else if (t->ndim == 2) {
      /* A new classifier, as timm's _init_weight_goog for nn.Linear. */
      if (!p->rng) {
        rc = qt_err_set(err, QT_EINVAL, "qt_cnn_load: a new head needs an rng");
        goto fail;
      }
      double range = 1.0 / sqrt((double)t->shape[0]);
      for (size_t k = 0; k < t->numel; k++)
        m->params[t->offset + k] = (float)(range * (2.0 * qt_rng_uniform(p->rng) - 1.0));
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
                         .data = m->params + t->offset,
                         .grad = m->grads + t->offset,
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
  return m->acts[m->n_acts - 1].data;
}

void qt_cnn_zero_grad(qt_cnn_t *m) {
  memset(m->grads, 0, m->n_params * sizeof *m->grads);
}

/* ------------------------------------------------------------------------- */
/* Forward / loss / backward                                                  */
/* ------------------------------------------------------------------------- */

static float *param(qt_cnn_t *m, int index) {
  return index < 0 ? NULL : m->params + m->tensors[index].offset;
}

static float *grad(qt_cnn_t *m, int index) {
  return index < 0 ? NULL : m->grads + m->tensors[index].offset;
}

/* 1 when op o belongs to a frozen unit (qt_cnn_set_trainable_from). */
static int frozen(const qt_cnn_t *m, const op *o) {
  return !o->head && o->unit < m->train_from;
}

int qt_cnn_forward(qt_cnn_t *m, const float *images, size_t batch, qt_batchnorm_mode mode,
                   qt_err *err) {
  if (!images || batch == 0 || batch > m->max_batch)
    return qt_err_set(err, QT_EINVAL, "qt_cnn_forward: batch %zu outside [1, %zu]", batch,
                      m->max_batch);
  m->batch = batch;
  m->labels_set = 0;
  m->hooks.dropped = 0;
  memcpy(m->acts[0].data, images, batch * m->acts[0].per_image * sizeof(float));
  for (size_t i = 0; i < m->n_ops; i++) {
    op *o = &m->ops[i];
    const float *x = m->acts[o->in].data;
    float *y = m->acts[o->out].data;
    size_t n = batch * m->acts[o->out].per_image;
    switch (o->kind) {
      case OP_CONV:
        o->conv.batch = batch;
        qt_cpu_conv2d_forward(y, m->scratch, x, param(m, o->weight), param(m, o->bias), &o->conv);
        break;
      case OP_BN:
        /* Frozen units keep their statistics; StochNorm replaces the
         * training mode of the others. */
        o->mode = mode == QT_BATCHNORM_MODE_TRAIN && frozen(m, o) ? QT_BATCHNORM_MODE_FROZEN : mode;
        o->stoch = o->mode == QT_BATCHNORM_MODE_TRAIN && m->stoch_rng && m->stoch_p > 0.0;
        if (o->stoch) {
          unsigned char *sel = m->select + o->stats;
          for (size_t ch = 0; ch < o->c; ch++) sel[ch] = qt_rng_uniform(m->stoch_rng) < m->stoch_p;
          qt_cpu_stochnorm_forward(y, m->mean + o->stats, m->rstd + o->stats, param(m, o->rm),
                                   param(m, o->rv), x, param(m, o->weight), param(m, o->bias), sel,
                                   batch, o->c, o->hw, m->bn_eps, m->bn_momentum);
        } else {
          qt_cpu_batchnorm_forward(y, m->mean + o->stats, m->rstd + o->stats, param(m, o->rm),
                                   param(m, o->rv), x, param(m, o->weight), param(m, o->bias),
                                   batch, o->c, o->hw, m->bn_eps, m->bn_momentum, o->mode);
        }
        break;
      case OP_DROPOUT:
        /* The features before the mask are the hook's. */
        qt__head_hooks_forward(&m->hooks, y, x, n);
        break;
      case OP_RELU6:
        qt_cpu_relu6_forward(y, x, n);
        break;
      case OP_RELU:
        qt_cpu_relu_forward(y, x, n);
        break;
      case OP_SILU:
        qt_cpu_silu_forward(y, x, n);
        break;
      case OP_SE: {
        float *saved = m->se_saved + o->se_saved * m->max_batch;
        size_t mb = m->max_batch;
        qt_cpu_se_forward(y, saved, saved + mb * o->c, saved + mb * (o->c + o->rd),
                          saved + mb * (o->c + 2 * o->rd), x, param(m, o->weight),
                          param(m, o->bias), param(m, o->se_we), param(m, o->se_be), batch, o->c,
                          o->hw, o->rd, QT_SE_ACT_SILU);
        break;
      }
      case OP_ADD: {
        const float *x2 = m->acts[o->in2].data;
        for (size_t k = 0; k < n; k++) y[k] = x[k] + x2[k];
        break;
      }
      case OP_POOL:
        qt_cpu_global_avgpool_forward(y, x, batch, o->c, o->hw);
        break;
      case OP_MAXPOOL:
        o->conv.batch = batch;
        qt_cpu_maxpool2d_forward(y, m->argmax + o->argmax * batch, x, &o->conv);
        break;
      case OP_LINEAR:
        qt_cpu_linear_forward(y, x, param(m, o->weight), param(m, o->bias), batch, o->in_f,
                              o->out_f);
        break;
    }
  }
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
  size_t classes = (size_t)m->classes;
  if (labels) {
    for (size_t i = 0; i < m->batch; i++) {
      if (labels[i] < 0 || labels[i] >= m->classes)
        return qt_err_set(err, QT_EINVAL, "qt_cnn_loss: label %d of image %zu outside [0, %ld)",
                          labels[i], i, m->classes);
      m->labels[i] = labels[i];
    }
    m->soft_set = 0;
  } else {
    memcpy(m->soft, soft_targets, m->batch * classes * sizeof *m->soft);
    m->soft_set = 1;
  }
  m->smoothing = (float)label_smoothing;
  qt_cpu_cross_entropy_forward(m->losses, m->probs, qt_cnn_logits(m),
                               m->soft_set ? NULL : m->labels, m->soft_set ? m->soft : NULL,
                               m->smoothing, m->batch, classes);
  double sum = 0.0;
  for (size_t i = 0; i < m->batch; i++) sum += m->losses[i];
  if (loss) *loss = sum / (double)m->batch;
  m->labels_set = 1;
  return 0;
}

int qt_cnn_backward(qt_cnn_t *m, qt_err *err) {
  if (!m->labels_set)
    return qt_err_set(err, QT_EINVAL, "qt_cnn_backward: no loss since the last forward");
  size_t batch = m->batch;
  for (size_t i = 0; i < m->n_acts; i++)
    memset(m->acts[i].grad, 0, batch * m->acts[i].per_image * sizeof(float));
  float dloss = 1.0f / (float)batch;
  qt_cpu_cross_entropy_backward(m->acts[m->n_acts - 1].grad, m->probs,
                                m->soft_set ? NULL : m->labels, m->soft_set ? m->soft : NULL,
                                m->smoothing, &dloss, 0, batch, (size_t)m->classes);
  for (size_t i = m->n_ops; i-- > 0;) {
    op *o = &m->ops[i];
    if (frozen(m, o)) break; /* units below get no gradients */
    const float *x = m->acts[o->in].data;
    /* The images need no gradient. */
    float *dx = o->in == 0 ? NULL : m->acts[o->in].grad;
    const float *dy = m->acts[o->out].grad;
    size_t n = batch * m->acts[o->out].per_image;
    switch (o->kind) {
      case OP_CONV:
        o->conv.batch = batch;
        qt_cpu_conv2d_backward(dx, grad(m, o->weight), grad(m, o->bias), m->scratch, dy, x,
                               param(m, o->weight), &o->conv);
        break;
      case OP_BN:
        if (o->stoch)
          qt_cpu_stochnorm_backward(dx, grad(m, o->weight), grad(m, o->bias), dy, x,
                                    param(m, o->weight), m->mean + o->stats, m->rstd + o->stats,
                                    m->select + o->stats, batch, o->c, o->hw);
        else
          qt_cpu_batchnorm_backward(dx, grad(m, o->weight), grad(m, o->bias), dy, x,
                                    param(m, o->weight), m->mean + o->stats, m->rstd + o->stats,
                                    batch, o->c, o->hw, o->mode);
        break;
      case OP_DROPOUT:
        for (size_t k = 0; k < n; k++)
          dx[k] += m->hooks.dropped ? dy[k] * m->hooks.drop_mask[k] : dy[k];
        if (m->hooks.dfeat) {
          for (size_t k = 0; k < n; k++) dx[k] += m->hooks.dfeat[k];
        }
        break;
      case OP_RELU6:
        qt_cpu_relu6_backward(dx, dy, x, n);
        break;
      case OP_RELU:
        qt_cpu_relu_backward(dx, dy, x, n);
        break;
      case OP_SILU:
        qt_cpu_silu_backward(dx, dy, x, n);
        break;
      case OP_SE: {
        const float *saved = m->se_saved + o->se_saved * m->max_batch;
        size_t mb = m->max_batch;
        qt_cpu_se_backward(dx, grad(m, o->weight), grad(m, o->bias), grad(m, o->se_we),
                           grad(m, o->se_be), m->se_scratch, dy, x, saved, saved + mb * o->c,
                           saved + mb * (o->c + o->rd), saved + mb * (o->c + 2 * o->rd),
                           param(m, o->weight), param(m, o->se_we), batch, o->c, o->hw, o->rd,
                           QT_SE_ACT_SILU);
        break;
      }
      case OP_ADD: {
        float *dx2 = m->acts[o->in2].grad;
        for (size_t k = 0; k < n; k++) {
          dx[k] += dy[k];
          dx2[k] += dy[k];
        }
        break;
      }
      case OP_POOL:
        qt_cpu_global_avgpool_backward(dx, dy, batch, o->c, o->hw);
        break;
      case OP_MAXPOOL:
        o->conv.batch = batch;
        qt_cpu_maxpool2d_backward(dx, dy, m->argmax + o->argmax * batch, &o->conv);
        break;
      case OP_LINEAR:
        qt_cpu_linear_backward(dx, grad(m, o->weight), grad(m, o->bias), dy, x, param(m, o->weight),
                               batch, o->in_f, o->out_f);
        break;
    }
  }
  m->labels_set = 0;
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
  return m->acts[m->ops[m->pool_op].out].data;
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
  qt_safetensors_tensor *list = calloc(m->n_tensors ? m->n_tensors : 1, sizeof *list);
  if (!list) return qt_err_set(err, QT_ENOMEM, "qt_cnn_save: out of memory");
  for (size_t i = 0; i < m->n_tensors; i++) {
    const tensor *t = &m->tensors[i];
    list[i] = (qt_safetensors_tensor){t->name,  QT_DTYPE_F32,          t->ndim,
                                      t->shape, m->params + t->offset, NULL};
  }
  qt_safetensors_pair meta[5];
  size_t nm = 0;
  meta[nm++] = (qt_safetensors_pair){"format", "pt"};
  const char *keys[4] = {"bn_eps", "padding", "stage_strides", "arch"};
  const char *values[4] = {m->meta_bn_eps, m->meta_padding, m->meta_strides, m->meta_arch};
  for (int k = 0; k < 4; k++) {
    if (values[k]) meta[nm++] = (qt_safetensors_pair){keys[k], values[k]};
  }
  int rc = qt_safetensors_write(path, list, m->n_tensors, meta, nm, err);
  free(list);
  return rc;
}

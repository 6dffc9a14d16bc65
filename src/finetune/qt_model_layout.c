/*
 * qt_model_layout.c - the timm layouts of the model families: which tensors a
 * checkpoint of each family holds, under which names and shapes, and what
 * its shapes say about the model (depth, width, patch and image size,
 * classes). qt_model_inspect() checks a safetensors checkpoint against its
 * family's layout and against what the caller expects (the plain fields of a
 * hub entry); the engine's model loaders read the same names.
 *
 * The layouts are documented in qt_finetune.h ("Model families and their
 * checkpoint layouts").
 */
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune.h"

/* ------------------------------------------------------------------------- */
/* Families                                                                   */
/* ------------------------------------------------------------------------- */

static const char *const family_names[] = {"vit",          "deit",   "deit3", "mobilenetv2",
                                           "efficientnet", "resnet", "mlp"};
#define FAMILY_COUNT (sizeof family_names / sizeof family_names[0])

const char *qt_model_family_name(qt_model_family family) {
  return (unsigned)family < FAMILY_COUNT ? family_names[family] : "unknown";
}

int qt_model_family_parse(const char *text, qt_model_family *out) {
  if (!text || !out) return QT_EINVAL;
  for (size_t f = 0; f < FAMILY_COUNT; f++) {
    if (strcmp(text, family_names[f]) == 0) {
      *out = (qt_model_family)f;
      return 0;
    }
  }
  return QT_EINVAL;
}

int qt_model_family_is_vit(qt_model_family family) {
  return family == QT_MODEL_FAMILY_VIT || family == QT_MODEL_FAMILY_DEIT ||
         family == QT_MODEL_FAMILY_DEIT3;
}

int qt_model_family_is_cnn(qt_model_family family) {
  return family == QT_MODEL_FAMILY_MOBILENETV2 || family == QT_MODEL_FAMILY_EFFICIENTNET ||
         family == QT_MODEL_FAMILY_RESNET;
}

qt_model_expect qt_model_expect_any(void) {
  qt_model_expect expect;
  memset(&expect, 0, sizeof expect);
  expect.num_classes = -1;
  return expect;
}

/* ------------------------------------------------------------------------- */
/* Checking a checkpoint: the toolkit                                         */
/* ------------------------------------------------------------------------- */

/* The state of one check: the open file, which of its tensors a family's
 * layout has claimed, and where errors go. */
typedef struct checker {
  const char *path;              /* the checkpoint, for messages */
  qt_model_family family;        /* the layout to check */
  const qt_model_expect *expect; /* what the caller (a hub entry) says */
  const qt_safetensors_t *st;
  unsigned char *used; /* (tensor count) 1 when the layout expects the tensor */
  qt_model_summary *summary;
  qt_err *err;
} checker;

static int mismatch(checker *c, const char *fmt, ...) QT_PRINTF(2, 3);

/* Records "checkpoint path: <message>". */
static int mismatch(checker *c, const char *fmt, ...) {
  char message[700];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  return qt_err_set(c->err, QT_ESCHEMA, "checkpoint %s: %s", c->path, message);
}

static void format_shape(const size_t *shape, size_t ndim, char *buf, size_t size) {
  size_t used = (size_t)snprintf(buf, size, "[");
  for (size_t d = 0; d < ndim && used < size; d++)
    used += (size_t)snprintf(buf + used, size - used, "%s%zu", d ? ", " : "", shape[d]);
  if (used < size) snprintf(buf + used, size - used, "]");
}

static void format_want(const long *want, size_t ndim, char *buf, size_t size) {
  size_t used = (size_t)snprintf(buf, size, "[");
  for (size_t d = 0; d < ndim && used < size; d++) {
    if (want[d] < 0)
      used += (size_t)snprintf(buf + used, size - used, "%s*", d ? ", " : "");
    else
      used += (size_t)snprintf(buf + used, size - used, "%s%ld", d ? ", " : "", want[d]);
  }
  if (used < size) snprintf(buf + used, size - used, "]");
}

static int has_tensor(checker *c, const char *name) {
  return qt_safetensors_find(c->st, name, NULL) == 0;
}

/* Looks up a tensor (the name is printf-formatted) and claims it. Returns 1
 * when found, 0 when absent and optional, or an error when absent and
 * required. */
static int get_tensor(checker *c, int required, qt_safetensors_info *info, const char *fmt, ...)
    QT_PRINTF(4, 5);

static int get_tensor(checker *c, int required, qt_safetensors_info *info, const char *fmt, ...) {
  char name[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  size_t index;
  if (qt_safetensors_find(c->st, name, &index) != 0) {
    if (!required) return 0;
    return mismatch(c, "missing tensor '%s' (family %s)", name, qt_model_family_name(c->family));
  }
  qt_safetensors_info_at(c->st, index, info);
  c->used[index] = 1;
  return 1;
}

/* Checks a shape; want[d] < 0 accepts any size in dimension d. */
static int check_shape(checker *c, const qt_safetensors_info *info, const long *want, size_t ndim) {
  int ok = info->ndim == ndim;
  for (size_t d = 0; ok && d < ndim; d++) ok = want[d] < 0 || (size_t)want[d] == info->shape[d];
  if (ok) return 0;
  char have[128], expected[128];
  format_shape(info->shape, info->ndim, have, sizeof have);
  format_want(want, ndim, expected, sizeof expected);
  return mismatch(c, "tensor '%s' has shape %s, expected %s", info->name, have, expected);
}

#define SHAPE(...) (const long[]){__VA_ARGS__}, sizeof((const long[]){__VA_ARGS__}) / sizeof(long)

/* A required tensor of a given shape. */
static int need(checker *c, const long *want, size_t ndim, const char *fmt, ...) QT_PRINTF(4, 5);

static int need(checker *c, const long *want, size_t ndim, const char *fmt, ...) {
  char name[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  qt_safetensors_info info;
  int rc = get_tensor(c, 1, &info, "%s", name);
  return rc < 0 ? rc : check_shape(c, &info, want, ndim);
}

/* An optional tensor of a given shape: 1 present, 0 absent, or an error. */
static int maybe(checker *c, const long *want, size_t ndim, const char *fmt, ...) QT_PRINTF(4, 5);

static int maybe(checker *c, const long *want, size_t ndim, const char *fmt, ...) {
  char name[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  qt_safetensors_info info;
  int rc = get_tensor(c, 0, &info, "%s", name);
  if (rc <= 0) return rc;
  rc = check_shape(c, &info, want, ndim);
  return rc < 0 ? rc : 1;
}

/* prefix.{weight, bias} of a layer norm or an affine vector of size n. */
static int need_norm(checker *c, long n, const char *prefix) {
  int rc = need(c, SHAPE(n), "%s.weight", prefix);
  return rc < 0 ? rc : need(c, SHAPE(n), "%s.bias", prefix);
}

/* A batch norm of n channels: weight, bias, running statistics, and an
 * optional step counter (a scalar or one element). */
static int need_batch_norm(checker *c, long n, const char *prefix) {
  static const char *const parts[] = {"weight", "bias", "running_mean", "running_var"};
  for (size_t k = 0; k < 4; k++) {
    int rc = need(c, SHAPE(n), "%s.%s", prefix, parts[k]);
    if (rc < 0) return rc;
  }
  qt_safetensors_info info;
  int rc = get_tensor(c, 0, &info, "%s.num_batches_tracked", prefix);
  if (rc > 0 && info.numel != 1)
    return mismatch(c, "tensor '%s' should hold one counter", info.name);
  return rc < 0 ? rc : 0;
}

/* A convolution weight [out, in, k, k]: reads out and k when they are
 * negative on entry, checks them otherwise. */
static int need_conv(checker *c, long *out, long in, long *kernel, const char *fmt, ...)
    QT_PRINTF(5, 6);

static int need_conv(checker *c, long *out, long in, long *kernel, const char *fmt, ...) {
  char name[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  qt_safetensors_info info;
  int rc = get_tensor(c, 1, &info, "%s", name);
  if (rc < 0) return rc;
  rc = check_shape(c, &info, SHAPE(*out, in, *kernel, *kernel));
  if (rc < 0) return rc;
  if (info.shape[2] != info.shape[3])
    return mismatch(c, "tensor '%s' has a %zux%zu kernel; only square kernels are supported", name,
                    info.shape[2], info.shape[3]);
  *out = (long)info.shape[0];
  *kernel = (long)info.shape[2];
  return 0;
}

/* The classifier: prefix.weight [num_classes, width], prefix.bias; absent
 * when the entry says num_classes 0. */
static int check_head(checker *c, const char *prefix, long width) {
  long want = c->expect->num_classes;
  qt_safetensors_info info;
  int rc = get_tensor(c, 0, &info, "%s.weight", prefix);
  if (rc < 0) return rc;
  if (rc == 0) {
    if (want > 0)
      return mismatch(c, "missing tensor '%s.weight': the hub says num_classes %ld", prefix, want);
    return 0;
  }
  if ((rc = check_shape(c, &info, SHAPE(-1, width))) < 0) return rc;
  long classes = (long)info.shape[0];
  c->summary->num_classes = classes;
  if (want >= 0 && want != classes)
    return mismatch(c, "the head '%s.weight' has %ld classes but the hub says num_classes %ld",
                    prefix, classes, want);
  return need(c, SHAPE(classes), "%s.bias", prefix);
}

/* Number of consecutive indices i = 0, 1, ... for which the tensor
 * "<prefix><i><suffix>" exists. */
static long count_indexed(checker *c, const char *prefix, const char *suffix) {
  char name[300];
  long n = 0;
  for (;; n++) {
    snprintf(name, sizeof name, "%s%ld%s", prefix, n, suffix);
    if (!has_tensor(c, name)) return n;
  }
}

/* Any tensor whose name starts with prefix and has an index beyond n, i.e.
 * a block that breaks the sequence 0..n-1. */
static int check_no_stray_index(checker *c, const char *prefix, long n) {
  size_t length = strlen(prefix);
  for (size_t i = 0; i < qt_safetensors_count(c->st); i++) {
    const char *name = qt_safetensors_name(c->st, i);
    if (strncmp(name, prefix, length) != 0 || !isdigit((unsigned char)name[length])) continue;
    long index = strtol(name + length, NULL, 10);
    if (index >= n)
      return mismatch(c, "tensor '%s' does not follow %s0 .. %s%ld without a gap", name, prefix,
                      prefix, n - 1);
  }
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Checking: ViT, DeiT, DeiT III                                              */
/* ------------------------------------------------------------------------- */

static int check_vit(checker *c) {
  const qt_model_expect *e = c->expect;
  qt_model_summary *s = c->summary;
  qt_safetensors_info info;
  int rc = get_tensor(c, 1, &info, "patch_embed.proj.weight");
  if (rc < 0) return rc;
  if ((rc = check_shape(c, &info, SHAPE(-1, 3, -1, -1))) < 0) return rc;
  long width = (long)info.shape[0], patch = (long)info.shape[2];
  if (info.shape[2] != info.shape[3])
    return mismatch(c,
                    "patch_embed.proj.weight has %zux%zu patches; only square ones are supported",
                    info.shape[2], info.shape[3]);
  s->width = width;
  s->patch_size = patch;
  if (e->patch_size && e->patch_size != patch)
    return mismatch(c, "patch size %ld (patch_embed.proj.weight) but the hub says patch_size %ld",
                    patch, e->patch_size);
  int patch_bias = maybe(c, SHAPE(width), "patch_embed.proj.bias");
  if (patch_bias < 0) return patch_bias;
  s->patch_bias = patch_bias;
  if ((rc = need(c, SHAPE(1, 1, width), "cls_token")) < 0) return rc;
  int distilled = maybe(c, SHAPE(1, 1, width), "dist_token");
  if (distilled < 0) return distilled;
  s->distilled = distilled;

  /* The position embedding holds one entry per patch of the pretraining
   * image, plus the class (and distillation) tokens unless they carry none
   * (timm's no_embed_class, as in DeiT III). A grid g x g of patches with
   * or without the tokens is never ambiguous: squares differ by 3 or more. */
  if ((rc = get_tensor(c, 1, &info, "pos_embed")) < 0) return rc;
  if ((rc = check_shape(c, &info, SHAPE(1, -1, width))) < 0) return rc;
  long positions = (long)info.shape[1], tokens = 1 + distilled;
  long grid = -1;
  for (long g = 1; g * g <= positions; g++) {
    if (g * g == positions || g * g == positions - tokens) grid = g;
  }
  if (grid > 0) {
    s->image_size = grid * patch;
    s->no_embed_class = grid * grid == positions;
  }
  if (e->image_size > 0) {
    if (e->image_size % patch != 0)
      return mismatch(c, "image_size %ld is not a multiple of the patch size %ld", e->image_size,
                      patch);
    long want_grid = e->image_size / patch;
    if (grid > 0 && grid != want_grid)
      return mismatch(
          c,
          "pos_embed holds a %ldx%ld grid of %ld-pixel patches (image_size %ld) but the "
          "hub says image_size %ld",
          grid, grid, patch, grid * patch, e->image_size);
  }
  if (grid < 0)
    return mismatch(c, "pos_embed has %ld positions, which is no square grid (+%ld tokens)",
                    positions, tokens);

  long depth = count_indexed(c, "blocks.", ".attn.qkv.weight");
  if (depth == 0)
    return mismatch(c, "missing tensor 'blocks.0.attn.qkv.weight' (family %s)",
                    qt_model_family_name(c->family));
  s->depth = depth;
  if ((rc = check_no_stray_index(c, "blocks.", depth)) < 0) return rc;
  long hidden = -1;
  int layer_scale = has_tensor(c, "blocks.0.ls1.gamma");
  if (c->family == QT_MODEL_FAMILY_DEIT3 && !layer_scale)
    return mismatch(c, "missing tensor 'blocks.0.ls1.gamma' (deit3 blocks have layer scale)");
  s->layer_scale = layer_scale;
  int qkv_bias = has_tensor(c, "blocks.0.attn.qkv.bias");
  s->qkv_bias = qkv_bias;
  for (long b = 0; b < depth; b++) {
    char prefix[128];
    snprintf(prefix, sizeof prefix, "blocks.%ld.norm1", b);
    if ((rc = need_norm(c, width, prefix)) < 0) return rc;
    if ((rc = need(c, SHAPE(3 * width, width), "blocks.%ld.attn.qkv.weight", b)) < 0) return rc;
    int present = maybe(c, SHAPE(3 * width), "blocks.%ld.attn.qkv.bias", b);
    if (present < 0) return present;
    if (present != qkv_bias)
      return mismatch(c,
                      "the qkv bias (blocks.N.attn.qkv.bias) must be in every block or none; "
                      "block %ld differs",
                      b);
    if ((rc = need(c, SHAPE(width, width), "blocks.%ld.attn.proj.weight", b)) < 0) return rc;
    if ((rc = need(c, SHAPE(width), "blocks.%ld.attn.proj.bias", b)) < 0) return rc;
    snprintf(prefix, sizeof prefix, "blocks.%ld.norm2", b);
    if ((rc = need_norm(c, width, prefix)) < 0) return rc;
    if ((rc = get_tensor(c, 1, &info, "blocks.%ld.mlp.fc1.weight", b)) < 0) return rc;
    if ((rc = check_shape(c, &info, SHAPE(hidden, width))) < 0) return rc;
    hidden = (long)info.shape[0];
    if ((rc = need(c, SHAPE(hidden), "blocks.%ld.mlp.fc1.bias", b)) < 0) return rc;
    if ((rc = need(c, SHAPE(width, hidden), "blocks.%ld.mlp.fc2.weight", b)) < 0) return rc;
    if ((rc = need(c, SHAPE(width), "blocks.%ld.mlp.fc2.bias", b)) < 0) return rc;
    for (int k = 1; k <= 2; k++) {
      present = maybe(c, SHAPE(width), "blocks.%ld.ls%d.gamma", b, k);
      if (present < 0) return present;
      if (present != layer_scale)
        return mismatch(c,
                        "layer scale (blocks.N.ls1.gamma, ls2.gamma) must be in every block or "
                        "none; block %ld differs",
                        b);
    }
  }
  s->mlp_hidden = hidden;
  if ((rc = need_norm(c, width, "norm")) < 0) return rc;
  if ((rc = check_head(c, "head", width)) < 0) return rc;
  if (distilled && (rc = check_head(c, "head_dist", width)) < 0) return rc;
  if (e->heads && width % e->heads != 0)
    return mismatch(c, "%ld heads do not divide the width %ld", e->heads, width);
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Checking: ResNet                                                           */
/* ------------------------------------------------------------------------- */

static int check_resnet(checker *c) {
  long channels = -1, kernel = -1;
  int rc = need_conv(c, &channels, 3, &kernel, "conv1.weight");
  if (rc == 0) rc = need_batch_norm(c, channels, "bn1");
  if (rc < 0) return rc;
  int bottleneck = has_tensor(c, "layer1.0.conv3.weight");
  int convs = bottleneck ? 3 : 2;
  long blocks_total = 0;
  for (int layer = 1; layer <= 4; layer++) {
    char prefix[128];
    snprintf(prefix, sizeof prefix, "layer%d.", layer);
    long blocks = count_indexed(c, prefix, ".conv1.weight");
    if (blocks == 0)
      return mismatch(c, "missing tensor 'layer%d.0.conv1.weight' (family resnet)", layer);
    if ((rc = check_no_stray_index(c, prefix, blocks)) < 0) return rc;
    for (long b = 0; b < blocks; b++) {
      long in = channels, out = -1;
      for (int k = 1; k <= convs; k++) {
        long conv_out = -1, conv_kernel = -1;
        if ((rc = need_conv(c, &conv_out, out < 0 ? in : out, &conv_kernel,
                            "layer%d.%ld.conv%d.weight", layer, b, k)) < 0)
          return rc;
        char bn[128];
        snprintf(bn, sizeof bn, "layer%d.%ld.bn%d", layer, b, k);
        if ((rc = need_batch_norm(c, conv_out, bn)) < 0) return rc;
        out = conv_out;
      }
      /* A shortcut with a 1x1 convolution where the channels change (and
       * wherever the checkpoint has one: a stride also needs it). */
      long down = out, one = 1;
      char name[128];
      snprintf(name, sizeof name, "layer%d.%ld.downsample.0.weight", layer, b);
      if (has_tensor(c, name)) {
        if ((rc = need_conv(c, &down, in, &one, "%s", name)) < 0) return rc;
        snprintf(name, sizeof name, "layer%d.%ld.downsample.1", layer, b);
        if ((rc = need_batch_norm(c, out, name)) < 0) return rc;
      } else if (in != out) {
        return mismatch(
            c, "block layer%d.%ld turns %ld channels into %ld but has no downsample.0.weight",
            layer, b, in, out);
      }
      channels = out;
    }
    blocks_total += blocks;
  }
  c->summary->depth = 2 + blocks_total * convs;
  c->summary->width = channels;
  return check_head(c, "fc", channels);
}

/* ------------------------------------------------------------------------- */
/* Checking: MobileNetV2 and EfficientNet (timm's EfficientNet builder)      */
/* ------------------------------------------------------------------------- */

/* Optional squeeze-and-excitation on `channels`: se.conv_reduce [r, C, 1, 1]
 * + bias, se.conv_expand [C, r, 1, 1] + bias. Returns 1 when present. */
static int check_se(checker *c, long stage, long block, long channels) {
  qt_safetensors_info info;
  int rc = get_tensor(c, 0, &info, "blocks.%ld.%ld.se.conv_reduce.weight", stage, block);
  if (rc <= 0) return rc;
  if (c->family == QT_MODEL_FAMILY_MOBILENETV2)
    return mismatch(c, "tensor '%s': mobilenetv2 has no squeeze-and-excitation (efficientnet?)",
                    info.name);
  if ((rc = check_shape(c, &info, SHAPE(-1, channels, 1, 1))) < 0) return rc;
  long reduced = (long)info.shape[0];
  if ((rc = need(c, SHAPE(reduced), "blocks.%ld.%ld.se.conv_reduce.bias", stage, block)) < 0)
    return rc;
  if ((rc = need(c, SHAPE(channels, reduced, 1, 1), "blocks.%ld.%ld.se.conv_expand.weight", stage,
                 block)) < 0)
    return rc;
  if ((rc = need(c, SHAPE(channels), "blocks.%ld.%ld.se.conv_expand.bias", stage, block)) < 0)
    return rc;
  return 1;
}

static int check_efficientnet(checker *c) {
  long channels = -1, kernel = -1;
  int rc = need_conv(c, &channels, 3, &kernel, "conv_stem.weight");
  if (rc == 0) rc = need_batch_norm(c, channels, "bn1");
  if (rc < 0) return rc;
  long stages = 0, blocks_total = 0;
  for (;; stages++) {
    char first[128];
    snprintf(first, sizeof first, "blocks.%ld.0.", stages);
    int found = 0;
    for (size_t i = 0; i < qt_safetensors_count(c->st) && !found; i++)
      found = strncmp(qt_safetensors_name(c->st, i), first, strlen(first)) == 0;
    if (!found) break;
  }
  if (stages == 0)
    return mismatch(c, "no tensors 'blocks.0.0.*' (family %s)", qt_model_family_name(c->family));
  if ((rc = check_no_stray_index(c, "blocks.", stages)) < 0) return rc;
  for (long s = 0; s < stages; s++) {
    /* A block exists when its depthwise convolution does. */
    char prefix[128];
    snprintf(prefix, sizeof prefix, "blocks.%ld.", s);
    long blocks = count_indexed(c, prefix, ".conv_dw.weight");
    if (blocks == 0) return mismatch(c, "missing tensor 'blocks.%ld.0.conv_dw.weight'", s);
    if ((rc = check_no_stray_index(c, prefix, blocks)) < 0) return rc;
    for (long b = 0; b < blocks; b++) {
      char bn[128];
      long mid = channels, out = -1, dw_kernel = -1, one = 1;
      char pwl[128];
      snprintf(pwl, sizeof pwl, "blocks.%ld.%ld.conv_pwl.weight", s, b);
      if (has_tensor(c, pwl)) {
        /* Inverted residual: expand 1x1, depthwise, SE, project 1x1. */
        mid = -1;
        if ((rc = need_conv(c, &mid, channels, &one, "blocks.%ld.%ld.conv_pw.weight", s, b)) < 0)
          return rc;
        snprintf(bn, sizeof bn, "blocks.%ld.%ld.bn1", s, b);
        if ((rc = need_batch_norm(c, mid, bn)) < 0) return rc;
        if ((rc = need_conv(c, &mid, 1, &dw_kernel, "blocks.%ld.%ld.conv_dw.weight", s, b)) < 0)
          return rc;
        snprintf(bn, sizeof bn, "blocks.%ld.%ld.bn2", s, b);
        if ((rc = need_batch_norm(c, mid, bn)) < 0) return rc;
        if ((rc = check_se(c, s, b, mid)) < 0) return rc;
        one = 1;
        if ((rc = need_conv(c, &out, mid, &one, "%s", pwl)) < 0) return rc;
        snprintf(bn, sizeof bn, "blocks.%ld.%ld.bn3", s, b);
        if ((rc = need_batch_norm(c, out, bn)) < 0) return rc;
      } else {
        /* Depthwise separable: depthwise, SE, pointwise 1x1. */
        if ((rc = need_conv(c, &mid, 1, &dw_kernel, "blocks.%ld.%ld.conv_dw.weight", s, b)) < 0)
          return rc;
        snprintf(bn, sizeof bn, "blocks.%ld.%ld.bn1", s, b);
        if ((rc = need_batch_norm(c, mid, bn)) < 0) return rc;
        if ((rc = check_se(c, s, b, mid)) < 0) return rc;
        if ((rc = need_conv(c, &out, mid, &one, "blocks.%ld.%ld.conv_pw.weight", s, b)) < 0)
          return rc;
        snprintf(bn, sizeof bn, "blocks.%ld.%ld.bn2", s, b);
        if ((rc = need_batch_norm(c, out, bn)) < 0) return rc;
      }
      channels = out;
    }
    blocks_total += blocks;
  }
  long features = -1, one = 1;
  if ((rc = need_conv(c, &features, channels, &one, "conv_head.weight")) < 0) return rc;
  if ((rc = need_batch_norm(c, features, "bn2")) < 0) return rc;
  c->summary->depth = blocks_total;
  /* An optional MLP between the pooling and the classifier,
   * head_mlp.k.{weight,bias} each followed by ReLU: the head of Keras
   * models imported by tools/import-tfjs (nsfwjs: 1280 -> 256 -> 128). */
  long hidden_layers = count_indexed(c, "head_mlp.", ".weight");
  if ((rc = check_no_stray_index(c, "head_mlp.", hidden_layers)) < 0) return rc;
  for (long k = 0; k < hidden_layers; k++) {
    qt_safetensors_info info;
    if ((rc = get_tensor(c, 1, &info, "head_mlp.%ld.weight", k)) < 0) return rc;
    if ((rc = check_shape(c, &info, SHAPE(-1, features))) < 0) return rc;
    features = (long)info.shape[0];
    if ((rc = need(c, SHAPE(features), "head_mlp.%ld.bias", k)) < 0) return rc;
  }
  c->summary->width = features;
  return check_head(c, "classifier", features);
}

/* ------------------------------------------------------------------------- */
/* Checking: MLP (qtune's layout)                                             */
/* ------------------------------------------------------------------------- */

static int check_mlp(checker *c) {
  long depth = count_indexed(c, "blocks.", ".fc.weight");
  if (depth == 0) return mismatch(c, "missing tensor 'blocks.0.fc.weight' (family mlp)");
  int rc = check_no_stray_index(c, "blocks.", depth);
  if (rc < 0) return rc;
  long width = -1;
  for (long b = 0; b < depth; b++) {
    qt_safetensors_info info;
    if ((rc = get_tensor(c, 1, &info, "blocks.%ld.fc.weight", b)) < 0) return rc;
    if ((rc = check_shape(c, &info, SHAPE(-1, width))) < 0) return rc;
    width = (long)info.shape[0];
    if ((rc = need(c, SHAPE(width), "blocks.%ld.fc.bias", b)) < 0) return rc;
    char norm[128];
    snprintf(norm, sizeof norm, "blocks.%ld.norm.weight", b);
    if (has_tensor(c, norm)) {
      snprintf(norm, sizeof norm, "blocks.%ld.norm", b);
      if ((rc = need_norm(c, width, norm)) < 0) return rc;
    }
  }
  c->summary->depth = depth;
  c->summary->width = width;
  return check_head(c, "head", width);
}

/* ------------------------------------------------------------------------- */
/* Checking: the entry point                                                  */
/* ------------------------------------------------------------------------- */

static int is_statistic(const char *name) {
  static const char *const suffixes[] = {".running_mean", ".running_var", ".num_batches_tracked"};
  size_t length = strlen(name);
  for (size_t k = 0; k < 3; k++) {
    size_t n = strlen(suffixes[k]);
    if (length >= n && strcmp(name + length - n, suffixes[k]) == 0) return 1;
  }
  return 0;
}

/* Descriptors the hub gives must agree with the checkpoint. */
static int check_descriptors(checker *c) {
  const qt_model_expect *e = c->expect;
  const qt_model_summary *s = c->summary;
  if (e->depth && e->depth != s->depth)
    return mismatch(c, "depth %ld but the hub's descriptors say %ld", s->depth, e->depth);
  if (e->width && e->width != s->width)
    return mismatch(c, "width %ld but the hub's descriptors say %ld", s->width, e->width);
  if (e->parameters > 0 && fabs(s->parameters - e->parameters) > 0.05 * e->parameters)
    return mismatch(c, "%.0f parameters but the hub's descriptors say %.0f (more than 5%% off)",
                    s->parameters, e->parameters);
  return 0;
}

static int check_open(checker *c) {
  size_t count = qt_safetensors_count(c->st);
  qt_model_summary *s = c->summary;
  s->tensors = count;
  for (size_t i = 0; i < count; i++) {
    qt_safetensors_info info;
    qt_safetensors_info_at(c->st, i, &info);
    if (!is_statistic(info.name)) s->parameters += (double)info.numel;
  }
  int rc;
  switch (c->family) {
    case QT_MODEL_FAMILY_VIT:
    case QT_MODEL_FAMILY_DEIT:
    case QT_MODEL_FAMILY_DEIT3:
      rc = check_vit(c);
      break;
    case QT_MODEL_FAMILY_RESNET:
      rc = check_resnet(c);
      break;
    case QT_MODEL_FAMILY_MOBILENETV2:
    case QT_MODEL_FAMILY_EFFICIENTNET:
      rc = check_efficientnet(c);
      break;
    case QT_MODEL_FAMILY_MLP:
      rc = check_mlp(c);
      break;
    default:
      rc = mismatch(c, "unknown family %d", (int)c->family);
      break;
  }
  if (rc < 0) return rc;
  /* Tensors the layout does not know would be silently ignored by the
   * engine, which then computes another model than the checkpoint's. */
  size_t unexpected = 0, first = 0;
  for (size_t i = 0; i < count; i++) {
    if (!c->used[i] && unexpected++ == 0) first = i;
  }
  if (unexpected)
    return mismatch(c, "unexpected tensor '%s'%s for family %s", qt_safetensors_name(c->st, first),
                    unexpected > 1 ? " (and others)" : "", qt_model_family_name(c->family));
  return check_descriptors(c);
}

int qt_model_inspect_open(const qt_safetensors_t *st, qt_model_family family,
                          const qt_model_expect *expect, qt_model_summary *summary, qt_err *err) {
  if (!st) return qt_err_set(err, QT_EINVAL, "qt_model_inspect_open: file is NULL");
  qt_model_expect any = qt_model_expect_any();
  qt_model_summary local;
  if (!summary) summary = &local;
  memset(summary, 0, sizeof *summary);
  size_t count = qt_safetensors_count(st);
  checker c = {qt_safetensors_path(st),
               family,
               expect ? expect : &any,
               st,
               calloc(count ? count : 1, 1),
               summary,
               err};
  if (!c.used) return qt_err_set(err, QT_ENOMEM, "checkpoint %s: out of memory", c.path);
  int rc = check_open(&c);
  free(c.used);
  return rc;
}

int qt_model_inspect(const char *checkpoint_path, qt_model_family family,
                     const qt_model_expect *expect, qt_model_summary *summary, qt_err *err) {
  if (summary) memset(summary, 0, sizeof *summary);
  if (!checkpoint_path) return qt_err_set(err, QT_EINVAL, "qt_model_inspect: path is NULL");
  qt_safetensors_t *st = NULL;
  qt_err open_err;
  qt_err_clear(&open_err);
  int rc = qt_safetensors_open(checkpoint_path, &st, &open_err);
  if (rc != 0) {
    if (rc == QT_ENOENT)
      return qt_err_set(err, QT_ENOENT, "checkpoint %s does not exist (not fetched yet?)",
                        checkpoint_path);
    return qt_err_set(err, rc, "checkpoint %s", qt_err_message(&open_err));
  }
  rc = qt_model_inspect_open(st, family, expect, summary, err);
  qt_safetensors_free(st);
  return rc;
}

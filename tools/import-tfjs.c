/*
 * import-tfjs - converts a TensorFlow.js layers model of a Keras
 * MobileNetV2 (keras.applications names: Conv1, bn_Conv1,
 * expanded_conv_*, block_k_*, Conv_1, Conv_1_bn, then Dense layers) into a
 * safetensors checkpoint with timm's mobilenetv2_100 names, which
 * qt_cnn_load and the hub read.
 *
 *   import-tfjs MODEL.json OUT.safetensors [--source TEXT]
 *
 * MODEL.json is the layers format: {"modelTopology": ..., "weightsManifest":
 * [{"paths": [...], "weights": [{"name", "shape", "dtype", "quantization":
 * {"min", "scale", "dtype"}}]}]}. Each shard path is read, relative to the
 * folder of MODEL.json, as raw bytes when the file exists, or else from
 * PATH.min.js / PATH.js, JavaScript files whose one long string literal is
 * the shard in base64 (how the npm package nsfwjs ships its weights). The
 * shards of one group concatenate into one buffer, the weights following
 * each other in manifest order. Quantized weights dequantize as
 * min + scale * q (uint8 or uint16).
 *
 * Layout changes: Conv2D kernels HWIO -> PyTorch OIHW; depthwise kernels
 * (H, W, C, multiplier) -> (C * multiplier, 1, H, W); Dense kernels
 * (in, out) -> (out, in). Batch norm gamma, beta, moving mean and variance
 * become weight, bias, running_mean, running_var. Keras's batch norm
 * epsilon (1e-3, against timm's 1e-5) is written to the metadata as
 * "bn_eps", and "padding": "same" records TensorFlow's asymmetric padding
 * (Keras pads stride-2 convolutions at the bottom / right only); qt_cnn
 * honors both. Dense layers before the last become head_mlp.k (ReLU after
 * each), the last one classifier. Keras's block_k inverted residuals are
 * grouped into timm's stages by their output channels, so any width and
 * depth of the Keras architecture maps (stage strides are timm's unless
 * the checkpoint says otherwise, see qt_cnn).
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune.h"

#define MAX_WEIGHTS 1024

typedef struct weight {
  char name[160]; /* Keras name, "block_1_expand/kernel" */
  size_t ndim;
  size_t shape[4];
  size_t numel;
  float *values; /* (numel) dequantized, Keras layout */
} weight;

typedef struct out_tensor {
  char name[160];
  size_t ndim;
  size_t shape[4];
  float *values;
} out_tensor;

static weight weights[MAX_WEIGHTS];
static size_t n_weights;
static out_tensor outs[MAX_WEIGHTS];
static size_t n_outs;

static void die(const char *fmt, const char *a, const char *b) QT_NORETURN;
static void die(const char *fmt, const char *a, const char *b) {
  fprintf(stderr, "import-tfjs: ");
  fprintf(stderr, "%s", fmt);
  if (a) fprintf(stderr, " %s", a);
  if (b) fprintf(stderr, " %s", b);
  fprintf(stderr, "\n");
  exit(1);
}

/* ------------------------------------------------------------------------- */
/* Shards                                                                     */
/* ------------------------------------------------------------------------- */

static unsigned char *read_file(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 1 << 20, n = 0;
  unsigned char *buf = malloc(cap);
  for (;;) {
    if (n == cap) {
      cap *= 2;
      unsigned char *grown = realloc(buf, cap);
      if (!grown) die("out of memory reading", path, NULL);
      buf = grown;
    }
    size_t got = fread(buf + n, 1, cap - n, f);
    n += got;
    if (got == 0) break;
  }
  fclose(f);
  *size = n;
  return buf;
}

static int base64_value(int ch) {
  if (ch >= 'A' && ch <= 'Z') return ch - 'A';
  if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
  if (ch >= '0' && ch <= '9') return ch - '0' + 52;
  if (ch == '+' || ch == '-') return 62;
  if (ch == '/' || ch == '_') return 63;
  return -1;
}

/* Decodes the longest double-quoted string literal of a JavaScript file
 * (the base64 shard) in place; returns the byte count. */
static size_t decode_js_shard(unsigned char *text, size_t size, const char *path) {
  size_t best_start = 0, best_len = 0;
  for (size_t i = 0; i < size; i++) {
    if (text[i] != '"') continue;
    size_t j = i + 1;
    while (j < size && text[j] != '"' && text[j] != '\\') j++;
    if (j < size && text[j] == '"' && j - i - 1 > best_len) {
      best_start = i + 1;
      best_len = j - i - 1;
    }
    i = j;
  }
  if (best_len < 4) die("no base64 string literal in", path, NULL);
  size_t out = 0;
  unsigned acc = 0;
  int bits = 0;
  for (size_t i = 0; i < best_len; i++) {
    int ch = text[best_start + i];
    if (ch == '=') break;
    int v = base64_value(ch);
    if (v < 0) die("a character outside base64 in", path, NULL);
    acc = (acc << 6) | (unsigned)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      text[out++] = (unsigned char)((acc >> bits) & 0xFF);
    }
  }
  return out;
}

static unsigned char *read_shard(const char *dir, const char *name, size_t *size) {
  char path[4096];
  if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >= sizeof path)
    die("path too long:", name, NULL);
  unsigned char *data = read_file(path, size);
  if (data) return data;
  static const char *const wrappers[] = {".min.js", ".js"};
  for (size_t k = 0; k < 2; k++) {
    if ((size_t)snprintf(path, sizeof path, "%s/%s%s", dir, name, wrappers[k]) >= sizeof path)
      die("path too long:", name, NULL);
    data = read_file(path, size);
    if (data) {
      *size = decode_js_shard(data, *size, path);
      return data;
    }
  }
  die("cannot read the shard", path, "(nor .min.js / .js)");
  return NULL;
}

/* ------------------------------------------------------------------------- */
/* Manifest                                                                   */
/* ------------------------------------------------------------------------- */

static void read_group(const char *dir, json_t *group) {
  json_t *paths = json_object_get(group, "paths");
  json_t *list = json_object_get(group, "weights");
  if (!json_is_array(paths) || !json_is_array(list))
    die("a weightsManifest group lacks paths or weights", NULL, NULL);
  unsigned char *buf = NULL;
  size_t total = 0;
  for (size_t i = 0; i < json_array_size(paths); i++) {
    const char *p = json_string_value(json_array_get(paths, i));
    if (!p) die("a shard path is not a string", NULL, NULL);
    size_t n = 0;
    unsigned char *shard = read_shard(dir, p, &n);
    unsigned char *grown = realloc(buf, total + n + 1);
    if (!grown) die("out of memory", NULL, NULL);
    buf = grown;
    memcpy(buf + total, shard, n);
    total += n;
    free(shard);
  }
  size_t at = 0;
  for (size_t i = 0; i < json_array_size(list); i++) {
    json_t *w = json_array_get(list, i);
    const char *name = json_string_value(json_object_get(w, "name"));
    const char *dtype = json_string_value(json_object_get(w, "dtype"));
    json_t *shape = json_object_get(w, "shape");
    if (!name || !dtype || !json_is_array(shape) || json_array_size(shape) > 4)
      die("a weight entry lacks name, dtype or shape (at most 4-d)", name, NULL);
    if (strcmp(dtype, "float32") != 0) die("unsupported weight dtype", dtype, name);
    if (n_weights == MAX_WEIGHTS) die("too many weights", NULL, NULL);
    weight *dst = &weights[n_weights++];
    snprintf(dst->name, sizeof dst->name, "%s", name);
    dst->ndim = json_array_size(shape);
    dst->numel = 1;
    for (size_t d = 0; d < dst->ndim; d++) {
      json_int_t v = json_integer_value(json_array_get(shape, d));
      if (v <= 0) die("a non-positive dimension in", name, NULL);
      dst->shape[d] = (size_t)v;
      dst->numel *= (size_t)v;
    }
    dst->values = malloc(dst->numel * sizeof(float));
    if (!dst->values) die("out of memory", NULL, NULL);
    json_t *q = json_object_get(w, "quantization");
    if (q) {
      const char *qtype = json_string_value(json_object_get(q, "dtype"));
      double min = json_number_value(json_object_get(q, "min"));
      double scale = json_number_value(json_object_get(q, "scale"));
      size_t width = qtype && strcmp(qtype, "uint8") == 0    ? 1
                     : qtype && strcmp(qtype, "uint16") == 0 ? 2
                                                             : 0;
      if (!width || !json_object_get(q, "min") || !json_object_get(q, "scale"))
        die("unsupported quantization (uint8 / uint16 with min and scale) of", name, NULL);
      if (at + dst->numel * width > total) die("the shards end inside", name, NULL);
      for (size_t k = 0; k < dst->numel; k++) {
        unsigned v = width == 1 ? buf[at + k]
                                : (unsigned)buf[at + 2 * k] | (unsigned)buf[at + 2 * k + 1] << 8;
        /* As TensorFlow.js's decodeWeights: v * scale + min in double,
         * stored in a Float32Array. */
        dst->values[k] = (float)((double)v * scale + min);
      }
      at += dst->numel * width;
    } else {
      if (at + dst->numel * 4 > total) die("the shards end inside", name, NULL);
      memcpy(dst->values, buf + at, dst->numel * 4);
      at += dst->numel * 4;
    }
  }
  if (at != total)
    fprintf(stderr, "import-tfjs: note: %zu bytes of the shards unused\n", total - at);
  free(buf);
}

static weight *find_weight(const char *name) {
  for (size_t i = 0; i < n_weights; i++)
    if (strcmp(weights[i].name, name) == 0) return &weights[i];
  die("missing weight", name, NULL);
  return NULL;
}

/* ------------------------------------------------------------------------- */
/* Mapping                                                                    */
/* ------------------------------------------------------------------------- */

static out_tensor *new_out(const char *name, size_t ndim, const size_t *shape, size_t numel) {
  if (n_outs == MAX_WEIGHTS) die("too many tensors", NULL, NULL);
  out_tensor *t = &outs[n_outs++];
  size_t len = strlen(name);
  if (len >= sizeof t->name) die("tensor name too long", name, NULL);
  memcpy(t->name, name, len + 1);
  t->ndim = ndim;
  memcpy(t->shape, shape, ndim * sizeof *shape);
  t->values = malloc(numel * sizeof(float));
  if (!t->values) die("out of memory", NULL, NULL);
  return t;
}

/* Conv2D kernel (H, W, I, O) -> (O, I, H, W). */
static void map_conv(const char *keras, const char *timm) {
  char key[200];
  snprintf(key, sizeof key, "%s/kernel", keras);
  weight *w = find_weight(key);
  if (w->ndim != 4) die("not a 4-d kernel:", key, NULL);
  size_t h = w->shape[0], wd = w->shape[1], in = w->shape[2], o = w->shape[3];
  size_t shape[4] = {o, in, h, wd};
  out_tensor *t = new_out(timm, 4, shape, w->numel);
  for (size_t a = 0; a < h; a++)
    for (size_t b = 0; b < wd; b++)
      for (size_t i = 0; i < in; i++)
        for (size_t k = 0; k < o; k++)
          t->values[((k * in + i) * h + a) * wd + b] = w->values[((a * wd + b) * in + i) * o + k];
}

/* DepthwiseConv2D kernel (H, W, C, M) -> (C * M, 1, H, W), output channel
 * c * M + m as Keras orders them. */
static void map_depthwise(const char *keras, const char *timm) {
  char key[200];
  snprintf(key, sizeof key, "%s/depthwise_kernel", keras);
  weight *w = find_weight(key);
  if (w->ndim != 4) die("not a 4-d kernel:", key, NULL);
  size_t h = w->shape[0], wd = w->shape[1], c = w->shape[2], m = w->shape[3];
  size_t shape[4] = {c * m, 1, h, wd};
  out_tensor *t = new_out(timm, 4, shape, w->numel);
  for (size_t a = 0; a < h; a++)
    for (size_t b = 0; b < wd; b++)
      for (size_t i = 0; i < c; i++)
        for (size_t k = 0; k < m; k++)
          t->values[((i * m + k) * h + a) * wd + b] = w->values[((a * wd + b) * c + i) * m + k];
}

static void copy_vector(const char *keras_key, const char *timm) {
  weight *w = find_weight(keras_key);
  size_t shape[1] = {w->numel};
  out_tensor *t = new_out(timm, 1, shape, w->numel);
  memcpy(t->values, w->values, w->numel * sizeof(float));
}

static void map_bn(const char *keras, const char *timm) {
  static const char *const from[4] = {"gamma", "beta", "moving_mean", "moving_variance"};
  static const char *const to[4] = {"weight", "bias", "running_mean", "running_var"};
  for (size_t k = 0; k < 4; k++) {
    char a[200], b[200];
    snprintf(a, sizeof a, "%s/%s", keras, from[k]);
    snprintf(b, sizeof b, "%s.%s", timm, to[k]);
    copy_vector(a, b);
  }
}

/* Dense kernel (in, out) -> (out, in), and the bias. */
static void map_dense(const char *keras, const char *timm) {
  char key[200], name[200];
  snprintf(key, sizeof key, "%s/kernel", keras);
  weight *w = find_weight(key);
  if (w->ndim != 2) die("not a 2-d kernel:", key, NULL);
  size_t in = w->shape[0], o = w->shape[1];
  size_t shape[2] = {o, in};
  snprintf(name, sizeof name, "%s.weight", timm);
  out_tensor *t = new_out(name, 2, shape, w->numel);
  for (size_t i = 0; i < in; i++)
    for (size_t k = 0; k < o; k++) t->values[k * in + i] = w->values[i * o + k];
  snprintf(key, sizeof key, "%s/bias", keras);
  snprintf(name, sizeof name, "%s.bias", timm);
  copy_vector(key, name);
}

/* Keras numbers the inverted residuals block_1, block_2, ... without
 * stages; timm groups them into stages of equal output channels (the first
 * block of a stage changes them). Returns the number of blocks. */
static int map_keras_blocks(void) {
  char key[200];
  size_t previous_out = 0;
  int stage = 0, in_stage = 0, k = 1;
  for (;; k++) {
    snprintf(key, sizeof key, "block_%d_project/kernel", k);
    weight *w = NULL;
    for (size_t i = 0; i < n_weights; i++)
      if (strcmp(weights[i].name, key) == 0) w = &weights[i];
    if (!w) break;
    if (w->ndim != 4) die("not a 4-d kernel:", key, NULL);
    size_t out = w->shape[3];
    if (out != previous_out) {
      stage++;
      in_stage = 0;
    }
    previous_out = out;
    char kk[96], tt[96], t[64];
    snprintf(t, sizeof t, "blocks.%d.%d", stage, in_stage++);
    snprintf(kk, sizeof kk, "block_%d_expand", k);
    snprintf(tt, sizeof tt, "%s.conv_pw.weight", t);
    map_conv(kk, tt);
    snprintf(kk, sizeof kk, "block_%d_expand_BN", k);
    snprintf(tt, sizeof tt, "%s.bn1", t);
    map_bn(kk, tt);
    snprintf(kk, sizeof kk, "block_%d_depthwise", k);
    snprintf(tt, sizeof tt, "%s.conv_dw.weight", t);
    map_depthwise(kk, tt);
    snprintf(kk, sizeof kk, "block_%d_depthwise_BN", k);
    snprintf(tt, sizeof tt, "%s.bn2", t);
    map_bn(kk, tt);
    snprintf(kk, sizeof kk, "block_%d_project", k);
    snprintf(tt, sizeof tt, "%s.conv_pwl.weight", t);
    map_conv(kk, tt);
    snprintf(kk, sizeof kk, "block_%d_project_BN", k);
    snprintf(tt, sizeof tt, "%s.bn3", t);
    map_bn(kk, tt);
  }
  return k - 1;
}

static void map_mobilenetv2(json_t *layers, double *eps) {
  map_conv("Conv1", "conv_stem.weight");
  map_bn("bn_Conv1", "bn1");
  map_depthwise("expanded_conv_depthwise", "blocks.0.0.conv_dw.weight");
  map_bn("expanded_conv_depthwise_BN", "blocks.0.0.bn1");
  map_conv("expanded_conv_project", "blocks.0.0.conv_pw.weight");
  map_bn("expanded_conv_project_BN", "blocks.0.0.bn2");
  if (map_keras_blocks() == 0)
    die("no block_1_project/kernel: not a Keras MobileNetV2", NULL, NULL);
  map_conv("Conv_1", "conv_head.weight");
  map_bn("Conv_1_bn", "bn2");
  /* The head: Dense layers in topology order; every epsilon of the batch
   * norms must agree. */
  const char *dense[16];
  size_t n_dense = 0;
  *eps = -1.0;
  for (size_t i = 0; i < json_array_size(layers); i++) {
    json_t *layer = json_array_get(layers, i);
    const char *cls = json_string_value(json_object_get(layer, "class_name"));
    json_t *config = json_object_get(layer, "config");
    const char *name = json_string_value(json_object_get(config, "name"));
    if (!cls || !name) continue;
    if (strcmp(cls, "BatchNormalization") == 0) {
      double e = json_number_value(json_object_get(config, "epsilon"));
      if (*eps < 0) *eps = e;
      if (e != *eps) die("batch norms with different epsilons, e.g.", name, NULL);
    } else if (strcmp(cls, "Dense") == 0) {
      if (n_dense == 16) die("too many Dense layers", NULL, NULL);
      const char *act = json_string_value(json_object_get(config, "activation"));
      dense[n_dense++] = name;
      (void)act;
    } else if (strcmp(cls, "ReLU") == 0) {
      double max = json_number_value(json_object_get(config, "max_value"));
      if (max != 6.0) die("a ReLU that is not ReLU6:", name, NULL);
    }
  }
  if (n_dense == 0) die("no Dense layer (classifier) in the topology", NULL, NULL);
  for (size_t k = 0; k + 1 < n_dense; k++) {
    json_t *layer = NULL;
    for (size_t i = 0; i < json_array_size(layers); i++) {
      json_t *l = json_array_get(layers, i);
      const char *n = json_string_value(json_object_get(json_object_get(l, "config"), "name"));
      if (n && strcmp(n, dense[k]) == 0) layer = l;
    }
    const char *act =
        json_string_value(json_object_get(json_object_get(layer, "config"), "activation"));
    if (!act || strcmp(act, "relu") != 0) die("a hidden Dense layer without relu:", dense[k], NULL);
    char t[64];
    snprintf(t, sizeof t, "head_mlp.%zu", k);
    map_dense(dense[k], t);
  }
  map_dense(dense[n_dense - 1], "classifier");
  if (*eps <= 0) die("no batch norm epsilon in the topology", NULL, NULL);
}

int main(int argc, char **argv) {
  if (argc != 3 && !(argc == 5 && strcmp(argv[3], "--source") == 0)) {
    fprintf(stderr, "usage: import-tfjs MODEL.json OUT.safetensors [--source TEXT]\n");
    return 2;
  }
  const char *model_path = argv[1], *out_path = argv[2];
  json_error_t jerr;
  json_t *root = json_load_file(model_path, 0, &jerr);
  if (!root) {
    fprintf(stderr, "import-tfjs: %s:%d:%d: %s\n", model_path, jerr.line, jerr.column, jerr.text);
    return 1;
  }
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", model_path);
  char *slash = strrchr(dir, '/');
  if (slash)
    *slash = '\0';
  else
    snprintf(dir, sizeof dir, ".");
  json_t *manifest = json_object_get(root, "weightsManifest");
  json_t *topology = json_object_get(root, "modelTopology");
  json_t *config = json_object_get(json_object_get(topology, "model_config"), "config");
  json_t *layers = json_object_get(config, "layers");
  if (!json_is_array(manifest) || !json_is_array(layers))
    die("not a TensorFlow.js layers model (no weightsManifest / modelTopology layers):", model_path,
        NULL);
  for (size_t g = 0; g < json_array_size(manifest); g++)
    read_group(dir, json_array_get(manifest, g));
  double eps = 0;
  map_mobilenetv2(layers, &eps);

  qt_safetensors_tensor *list = calloc(n_outs, sizeof *list);
  if (!list) die("out of memory", NULL, NULL);
  for (size_t i = 0; i < n_outs; i++)
    list[i] = (qt_safetensors_tensor){.name = outs[i].name,
                                      .dtype = QT_DTYPE_F32,
                                      .ndim = outs[i].ndim,
                                      .shape = outs[i].shape,
                                      .data = outs[i].values};
  char eps_text[32];
  snprintf(eps_text, sizeof eps_text, "%.9g", eps);
  qt_safetensors_pair meta[5] = {{"format", "pt"},
                                 {"bn_eps", eps_text},
                                 {"padding", "same"},
                                 {"architecture", "mobilenetv2_100"},
                                 {"source", argc == 5 ? argv[4] : model_path}};
  qt_err err;
  qt_err_clear(&err);
  if (qt_safetensors_write(out_path, list, n_outs, meta, 5, &err) != 0) {
    fprintf(stderr, "import-tfjs: %s\n", err.msg);
    return 1;
  }
  size_t params = 0;
  for (size_t i = 0; i < n_outs; i++) {
    size_t n = 1;
    for (size_t d = 0; d < outs[i].ndim; d++) n *= outs[i].shape[d];
    if (!strstr(outs[i].name, "running_")) params += n;
  }
  printf("import-tfjs: %zu of %zu weights -> %zu tensors (%zu parameters), bn_eps %s, %s\n",
         n_weights, n_weights, n_outs, params, eps_text, out_path);
  for (size_t i = 0; i < n_outs; i++) free(outs[i].values);
  for (size_t i = 0; i < n_weights; i++) free(weights[i].values);
  free(list);
  json_decref(root);
  return 0;
}

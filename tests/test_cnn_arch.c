/*
 * test_cnn_arch.c - convolutional networks created with random
 * initialization (qt_cnn_arch.c): every preset writes a checkpoint that
 * qt_cnn_load reads back with timm's parameter count, the tiny presets run
 * at 32 px, the initial values follow timm's rules, the same seed gives the
 * same bytes, and qt_cnn_reinit redraws a loaded model.
 *
 * Why the tolerances. The init checks compare the sample standard deviation
 * of a tensor of n >= 400 draws with the rule's: its relative sampling
 * error is about 1 / sqrt(2 n) <= 3.5%, so 10% is three standard errors or
 * more, while the mistakes they guard against (fan-in for fan-out, the
 * depthwise groups not divided out, a wrong bound) move it by a factor of
 * 2 or more. Values the rule fixes (batch norm 1 / 0, running statistics)
 * are compared exactly.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune.h"
#include "qt_test.h"

/* ------------------------------------------------------------------------- */
/* Helpers                                                                    */
/* ------------------------------------------------------------------------- */

typedef struct preset {
  const char *name;
  qt_model_family family;
  long classes;
  size_t params; /* excluding running statistics; timm's for the timm presets */
} preset;

static const preset PRESETS[] = {
    {"mobilenetv2_100", QT_MODEL_FAMILY_MOBILENETV2, 1000, 3504872},
    {"mobilenetv2_050", QT_MODEL_FAMILY_MOBILENETV2, 1000, 1968680},
    {"efficientnet_b0", QT_MODEL_FAMILY_EFFICIENTNET, 1000, 5288548},
    {"resnet18", QT_MODEL_FAMILY_RESNET, 1000, 11689512},
    {"resnet34", QT_MODEL_FAMILY_RESNET, 1000, 21797672},
    {"resnet50", QT_MODEL_FAMILY_RESNET, 1000, 25557032},
    /* The small presets' counts, as documented in qt_cnn_arch.c. */
    {"mobilenetv2_tiny", QT_MODEL_FAMILY_MOBILENETV2, 10, 86282},
    {"efficientnet_tiny", QT_MODEL_FAMILY_EFFICIENTNET, 10, 105620},
    {"resnet_tiny", QT_MODEL_FAMILY_RESNET, 10, 308826},
};
#define N_PRESETS (sizeof PRESETS / sizeof PRESETS[0])

/* Writes `arch` to a temporary file (path in buf) and returns 0. */
static int write_arch(const char *arch, long classes, uint64_t seed, char *buf, size_t size) {
  char file[128];
  snprintf(file, sizeof file, "%s-%llu.safetensors", arch, (unsigned long long)seed);
  qt_test_temp_path(file, buf, size);
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_cnn_write_init(arch, classes, seed, buf, &err);
  if (rc) fprintf(stderr, "qt_cnn_write_init(%s): %s\n", arch, qt_err_message(&err));
  return rc;
}

static qt_cnn_t *load_arch(const char *path, const char *arch, long image_size, size_t max_batch) {
  qt_err err;
  qt_err_clear(&err);
  qt_cnn_load_params p = qt_cnn_default_load_params();
  if (qt_cnn_arch_family(arch, &p.family, &err) != 0) return NULL;
  p.image_size = image_size;
  p.max_batch = max_batch;
  qt_cnn_t *cnn = NULL;
  if (qt_cnn_load(path, &p, &cnn, &err) != 0)
    fprintf(stderr, "qt_cnn_load(%s): %s\n", path, qt_err_message(&err));
  return cnn;
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

static size_t trainable_count(const qt_cnn_t *cnn) {
  size_t total = 0;
  for (size_t i = 0; i < qt_cnn_tensor_count(cnn); i++) {
    qt_cnn_tensor t;
    qt_cnn_tensor_at(cnn, i, &t);
    if (t.trainable) total += t.numel;
  }
  return total;
}

/* Sample mean and standard deviation of a tensor. */
static void moments(const qt_cnn_tensor *t, double *mean, double *std) {
  double sum = 0.0, sum2 = 0.0;
  for (size_t i = 0; i < t->numel; i++) sum += t->data[i];
  double m = sum / (double)t->numel;
  for (size_t i = 0; i < t->numel; i++) sum2 += (t->data[i] - m) * (t->data[i] - m);
  *mean = m;
  *std = sqrt(sum2 / (double)(t->numel - 1));
}

/* Checks a tensor drawn from normal(0, std). */
static void check_normal(const qt_cnn_t *cnn, const char *name, double want_std) {
  qt_cnn_tensor t;
  CU_ASSERT_EQUAL_FATAL(qt_cnn_find_tensor(cnn, name, &t), 0);
  CU_ASSERT_FATAL(t.numel >= 400);
  double mean, std;
  moments(&t, &mean, &std);
  if (fabs(std / want_std - 1.0) >= 0.10 || fabs(mean) >= 0.2 * want_std)
    fprintf(stderr, "%s: mean %g std %g, want 0 and %g\n", name, mean, std, want_std);
  CU_ASSERT(fabs(std / want_std - 1.0) < 0.10);
  CU_ASSERT(fabs(mean) < 0.2 * want_std);
}

/* Checks a tensor drawn from uniform(+-bound): inside it and with the
 * uniform's standard deviation bound / sqrt(3). */
static void check_uniform(const qt_cnn_t *cnn, const char *name, double bound) {
  qt_cnn_tensor t;
  CU_ASSERT_EQUAL_FATAL(qt_cnn_find_tensor(cnn, name, &t), 0);
  double mean, std, largest = 0.0;
  moments(&t, &mean, &std);
  for (size_t i = 0; i < t.numel; i++)
    if (fabs(t.data[i]) > largest) largest = fabs(t.data[i]);
  CU_ASSERT(largest <= bound);
  CU_ASSERT(largest > 0.5 * bound);
  if (t.numel >= 400) CU_ASSERT(fabs(std / (bound / sqrt(3.0)) - 1.0) < 0.10);
}

/* Every element of every tensor whose name ends with suffix equals value;
 * returns how many tensors matched. */
static size_t check_constant(const qt_cnn_t *cnn, const char *suffix, float value) {
  size_t matched = 0, wrong = 0;
  for (size_t i = 0; i < qt_cnn_tensor_count(cnn); i++) {
    qt_cnn_tensor t;
    qt_cnn_tensor_at(cnn, i, &t);
    if (!ends_with(t.name, suffix)) continue;
    matched++;
    for (size_t k = 0; k < t.numel; k++) wrong += t.data[k] != value;
  }
  CU_ASSERT_EQUAL(wrong, 0);
  return matched;
}

static void check_batchnorms_fresh(const qt_cnn_t *cnn) {
  size_t n = check_constant(cnn, ".running_mean", 0.0f);
  CU_ASSERT(n > 0);
  CU_ASSERT_EQUAL(check_constant(cnn, ".running_var", 1.0f), n);
  /* Batch norm weights 1 and biases 0: the tensors beside each
   * running_mean. */
  size_t wrong = 0;
  for (size_t i = 0; i < qt_cnn_tensor_count(cnn); i++) {
    qt_cnn_tensor t, w, b;
    qt_cnn_tensor_at(cnn, i, &t);
    if (!ends_with(t.name, ".running_mean")) continue;
    char name[256];
    size_t stem = strlen(t.name) - strlen(".running_mean");
    snprintf(name, sizeof name, "%.*s.weight", (int)stem, t.name);
    CU_ASSERT_EQUAL_FATAL(qt_cnn_find_tensor(cnn, name, &w), 0);
    snprintf(name, sizeof name, "%.*s.bias", (int)stem, t.name);
    CU_ASSERT_EQUAL_FATAL(qt_cnn_find_tensor(cnn, name, &b), 0);
    for (size_t k = 0; k < w.numel; k++) wrong += w.data[k] != 1.0f || b.data[k] != 0.0f;
  }
  CU_ASSERT_EQUAL(wrong, 0);
}

/* The whole file's bytes (caller frees), size in *size. */
static unsigned char *read_bytes(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *buf = malloc(n > 0 ? (size_t)n : 1);
  if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  *size = (size_t)n;
  return buf;
}

/* ------------------------------------------------------------------------- */
/* Tests                                                                      */
/* ------------------------------------------------------------------------- */

static void test_arch_family_and_bad_input(void) {
  for (size_t i = 0; i < N_PRESETS; i++) {
    qt_model_family family = QT_MODEL_FAMILY_VIT;
    CU_ASSERT_EQUAL(qt_cnn_arch_family(PRESETS[i].name, &family, NULL), 0);
    CU_ASSERT_EQUAL(family, PRESETS[i].family);
  }
  qt_err err;
  qt_err_clear(&err);
  qt_model_family family;
  CU_ASSERT_EQUAL(qt_cnn_arch_family("resnet19", &family, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(qt_err_message(&err), "resnet19"));
  CU_ASSERT_PTR_NOT_NULL(strstr(qt_err_message(&err), "mobilenetv2_100"));
  CU_ASSERT_EQUAL(qt_cnn_arch_family(NULL, &family, NULL), QT_EINVAL);
  /* The writer refuses the same names, a class count below 1 and no path,
   * and leaves no file behind. */
  char path[512];
  qt_test_temp_path("refused.safetensors", path, sizeof path);
  qt_err_clear(&err);
  CU_ASSERT_EQUAL(qt_cnn_write_init("vgg16", 10, 0, path, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(qt_err_message(&err), "vgg16"));
  CU_ASSERT_EQUAL(qt_cnn_write_init("resnet_tiny", 0, 0, path, NULL), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cnn_write_init("resnet_tiny", 10, 0, NULL, NULL), QT_EINVAL);
  CU_ASSERT_NOT_EQUAL(access(path, F_OK), 0);
}

/* Every preset: written, read back by qt_cnn_load at 32 px (family from
 * qt_cnn_arch_family), timm's parameter count, "arch" in the metadata,
 * fresh batch norms. The large files are removed as soon as checked. */
static void test_presets_load_with_timm_counts(void) {
  for (size_t i = 0; i < N_PRESETS; i++) {
    const preset *p = &PRESETS[i];
    char path[512];
    CU_ASSERT_EQUAL_FATAL(write_arch(p->name, p->classes, 1, path, sizeof path), 0);
    qt_safetensors_t *st = NULL;
    CU_ASSERT_EQUAL_FATAL(qt_safetensors_open(path, &st, NULL), 0);
    const char *arch = qt_safetensors_metadata_get(st, "arch");
    CU_ASSERT(arch && strcmp(arch, p->name) == 0);
    if (p->family != QT_MODEL_FAMILY_RESNET)
      CU_ASSERT_PTR_NOT_NULL(qt_safetensors_metadata_get(st, "stage_strides"));
    qt_safetensors_free(st);
    qt_cnn_t *cnn = load_arch(path, p->name, 32, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cnn);
    size_t count = trainable_count(cnn);
    if (count != p->params)
      fprintf(stderr, "%s: %zu parameters, want %zu\n", p->name, count, p->params);
    CU_ASSERT_EQUAL(count, p->params);
    CU_ASSERT_EQUAL(qt_cnn_num_classes(cnn), p->classes);
    check_batchnorms_fresh(cnn);
    qt_cnn_free(cnn);
    remove(path);
  }
}

/* The tiny presets at 32 px (and 64 px): finite logits that differ between
 * images in TRAIN and EVAL mode, a finite loss near log(classes), finite
 * gradients that reach the stem. */
static void test_tiny_forward_backward(void) {
  static const char *tiny[3] = {"mobilenetv2_tiny", "efficientnet_tiny", "resnet_tiny"};
  static const char *stem[3] = {"conv_stem.weight", "conv_stem.weight", "conv1.weight"};
  for (int a = 0; a < 3; a++) {
    for (long size = 32; size <= 64; size += 32) {
      char path[512];
      CU_ASSERT_EQUAL_FATAL(write_arch(tiny[a], 10, 3, path, sizeof path), 0);
      const size_t batch = 4;
      qt_cnn_t *cnn = load_arch(path, tiny[a], size, batch);
      CU_ASSERT_PTR_NOT_NULL_FATAL(cnn);
      size_t pixels = 3 * (size_t)size * (size_t)size;
      float *images = malloc(batch * pixels * sizeof *images);
      CU_ASSERT_PTR_NOT_NULL_FATAL(images);
      qt_rng_t *rng = NULL;
      CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, 11, NULL), 0);
      for (size_t i = 0; i < batch * pixels; i++) images[i] = (float)qt_rng_gaussian(rng, 1.0);
      int labels[4] = {0, 3, 7, 9};
      qt_batchnorm_mode modes[2] = {QT_BATCHNORM_MODE_EVAL, QT_BATCHNORM_MODE_TRAIN};
      for (int m = 0; m < 2; m++) {
        qt_err err;
        qt_err_clear(&err);
        CU_ASSERT_EQUAL_FATAL(qt_cnn_forward(cnn, images, batch, modes[m], &err), 0);
        const float *logits = qt_cnn_logits(cnn);
        size_t finite = 0, differ = 0;
        for (size_t i = 0; i < batch * 10; i++) {
          finite += isfinite(logits[i]) != 0;
          differ += logits[i] != logits[i % 10];
        }
        CU_ASSERT_EQUAL(finite, batch * 10);
        CU_ASSERT(differ > 0);
      }
      double loss = 0.0;
      CU_ASSERT_EQUAL_FATAL(qt_cnn_loss(cnn, labels, NULL, 0.0, &loss, NULL), 0);
      CU_ASSERT(isfinite(loss) && loss > 0.5 && loss < 10.0);
      qt_cnn_zero_grad(cnn);
      CU_ASSERT_EQUAL_FATAL(qt_cnn_backward(cnn, NULL), 0);
      qt_cnn_tensor t;
      CU_ASSERT_EQUAL_FATAL(qt_cnn_find_tensor(cnn, stem[a], &t), 0);
      double norm = 0.0;
      for (size_t i = 0; i < t.numel; i++) norm += (double)t.grad[i] * t.grad[i];
      CU_ASSERT(isfinite(norm) && norm > 0.0);
      free(images);
      qt_rng_free(rng);
      qt_cnn_free(cnn);
      remove(path);
    }
  }
}

/* The drawn values follow the header's rules. */
static void check_goog_init(const qt_cnn_t *cnn, long classes, int dw_kernel) {
  /* conv_head (256, 64, 1, 1): fan_out 256. */
  check_normal(cnn, "conv_head.weight", sqrt(2.0 / 256.0));
  /* A depthwise k x k of 6 * 32 = 192 channels: fan_out k * k * 192 / 192
   * (k 3 in mobilenetv2_tiny, 5 in efficientnet_tiny). */
  check_normal(cnn, "blocks.4.0.conv_dw.weight", sqrt(2.0 / (dw_kernel * dw_kernel)));
  /* An expansion 1x1 (192, 32): fan_out 192. */
  check_normal(cnn, "blocks.4.0.conv_pw.weight", sqrt(2.0 / 192.0));
  /* The stem (16, 3, 3, 3): fan_out 144 (432 draws). */
  check_normal(cnn, "conv_stem.weight", sqrt(2.0 / 144.0));
  check_uniform(cnn, "classifier.weight", 1.0 / sqrt((double)classes));
  check_constant(cnn, "classifier.bias", 0.0f);
  check_batchnorms_fresh(cnn);
}

static void check_resnet_init(const qt_cnn_t *cnn) {
  /* kaiming_normal fan_out: out * k * k. */
  check_normal(cnn, "layer4.0.conv2.weight", sqrt(2.0 / (128.0 * 9.0)));
  check_normal(cnn, "layer3.0.downsample.0.weight", sqrt(2.0 / 64.0));
  check_normal(cnn, "conv1.weight", sqrt(2.0 / (16.0 * 9.0)));
  /* torch.nn.Linear: weight and bias uniform(+-1/sqrt(in)), in = 128. */
  check_uniform(cnn, "fc.weight", 1.0 / sqrt(128.0));
  check_uniform(cnn, "fc.bias", 1.0 / sqrt(128.0));
  check_batchnorms_fresh(cnn);
}

static void test_init_statistics(void) {
  char path[512];
  CU_ASSERT_EQUAL_FATAL(write_arch("efficientnet_tiny", 10, 5, path, sizeof path), 0);
  qt_cnn_t *cnn = load_arch(path, "efficientnet_tiny", 32, 1);
  CU_ASSERT_PTR_NOT_NULL_FATAL(cnn);
  check_goog_init(cnn, 10, 5);
  /* SE of blocks.4.0 (mid 192, rd round(0.25 * 32) = 8): conv_reduce
   * fan_out 8, conv_expand fan_out 192; biases 0. */
  check_normal(cnn, "blocks.4.0.se.conv_reduce.weight", sqrt(2.0 / 8.0));
  check_normal(cnn, "blocks.4.0.se.conv_expand.weight", sqrt(2.0 / 192.0));
  CU_ASSERT(check_constant(cnn, ".se.conv_reduce.bias", 0.0f) > 0);
  CU_ASSERT(check_constant(cnn, ".se.conv_expand.bias", 0.0f) > 0);
  qt_cnn_free(cnn);
  CU_ASSERT_EQUAL_FATAL(write_arch("mobilenetv2_tiny", 10, 5, path, sizeof path), 0);
  cnn = load_arch(path, "mobilenetv2_tiny", 32, 1);
  CU_ASSERT_PTR_NOT_NULL_FATAL(cnn);
  check_goog_init(cnn, 10, 3);
  qt_cnn_free(cnn);
  CU_ASSERT_EQUAL_FATAL(write_arch("resnet_tiny", 10, 5, path, sizeof path), 0);
  cnn = load_arch(path, "resnet_tiny", 32, 1);
  CU_ASSERT_PTR_NOT_NULL_FATAL(cnn);
  check_resnet_init(cnn);
  qt_cnn_free(cnn);
}

static void test_same_seed_same_bytes(void) {
  char a[512], b[512], c[512];
  CU_ASSERT_EQUAL_FATAL(write_arch("efficientnet_tiny", 10, 7, a, sizeof a), 0);
  /* A second file of the same seed: written under another name. */
  qt_test_temp_path("again.safetensors", b, sizeof b);
  CU_ASSERT_EQUAL_FATAL(qt_cnn_write_init("efficientnet_tiny", 10, 7, b, NULL), 0);
  CU_ASSERT_EQUAL_FATAL(write_arch("efficientnet_tiny", 10, 8, c, sizeof c), 0);
  size_t na = 0, nb = 0, nc = 0;
  unsigned char *ba = read_bytes(a, &na), *bb = read_bytes(b, &nb), *bc = read_bytes(c, &nc);
  CU_ASSERT_PTR_NOT_NULL_FATAL(ba);
  CU_ASSERT_PTR_NOT_NULL_FATAL(bb);
  CU_ASSERT_PTR_NOT_NULL_FATAL(bc);
  CU_ASSERT(na > 100000);
  CU_ASSERT(na == nb && memcmp(ba, bb, na) == 0);
  /* Another seed: the same header, other values. */
  CU_ASSERT(na == nc && memcmp(ba, bc, na) != 0);
  free(ba);
  free(bb);
  free(bc);
}

/* qt_cnn_reinit on a loaded model whose running statistics a TRAIN forward
 * has moved: new weights with the same rules, running statistics reset. */
static void check_reinit(const char *arch) {
  char path[512];
  CU_ASSERT_EQUAL_FATAL(write_arch(arch, 10, 21, path, sizeof path), 0);
  qt_cnn_t *cnn = load_arch(path, arch, 32, 2);
  CU_ASSERT_PTR_NOT_NULL_FATAL(cnn);
  float images[2 * 3 * 32 * 32];
  for (size_t i = 0; i < sizeof images / sizeof images[0]; i++)
    images[i] = (float)((i * 37) % 101) / 50.0f - 1.0f + 0.5f;
  CU_ASSERT_EQUAL_FATAL(qt_cnn_forward(cnn, images, 2, QT_BATCHNORM_MODE_TRAIN, NULL), 0);
  const char *conv =
      strcmp(arch, "resnet_tiny") == 0 ? "layer4.0.conv2.weight" : "conv_head.weight";
  qt_cnn_tensor t, rm;
  CU_ASSERT_EQUAL_FATAL(qt_cnn_find_tensor(cnn, conv, &t), 0);
  CU_ASSERT_EQUAL_FATAL(qt_cnn_find_tensor(cnn, "bn1.running_mean", &rm), 0);
  size_t moved = 0;
  for (size_t i = 0; i < rm.numel; i++) moved += rm.data[i] != 0.0f;
  CU_ASSERT(moved > 0); /* the forward did update them */
  float *before = malloc(t.numel * sizeof *before);
  CU_ASSERT_PTR_NOT_NULL_FATAL(before);
  memcpy(before, t.data, t.numel * sizeof *before);
  qt_rng_t *rng = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, 99, NULL), 0);
  qt_cnn_reinit(cnn, rng);
  size_t changed = 0;
  for (size_t i = 0; i < t.numel; i++) changed += t.data[i] != before[i];
  CU_ASSERT(changed > t.numel * 9 / 10);
  if (strcmp(arch, "resnet_tiny") == 0)
    check_resnet_init(cnn);
  else
    check_goog_init(cnn, 10, 5);
  free(before);
  qt_rng_free(rng);
  qt_cnn_free(cnn);
}

static void test_reinit(void) {
  check_reinit("efficientnet_tiny");
  check_reinit("resnet_tiny");
}

static const qt_test_case cases[] = {
    {"arch family and bad input", test_arch_family_and_bad_input},
    {"presets load with timm counts", test_presets_load_with_timm_counts},
    {"tiny forward and backward", test_tiny_forward_backward},
    {"init statistics", test_init_statistics},
    {"same seed same bytes", test_same_seed_same_bytes},
    {"reinit", test_reinit},
    {NULL, NULL}};

QT_TEST_MAIN("cnn_arch", cases)

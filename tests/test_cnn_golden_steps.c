/*
 * test_cnn_golden_steps.c - a few optimizer steps of the convolutional
 * networks against PyTorch: from the tiny MobileNetV2 and ResNet
 * checkpoints of tools/make-cnn-fixture.py, 3 training steps on one fixed
 * batch of 8 images (batch norm in TRAIN mode, mean cross-entropy), with
 *   sgd        torch.optim.SGD, lr 0.01, momentum 0.9 (dampening 0, no
 *              Nesterov), coupled weight decay 1e-4;
 *   sgd_decay  the same with weight decay 0.05 (1e-4 moves a weight by
 *              about 6e-6 of its value in 3 steps, a twentieth of the
 *              tolerance, so sgd alone cannot tell where it applied);
 *   adamw      torch.optim.AdamW, lr 1e-3, betas 0.9 / 0.999, eps 1e-8,
 *              decoupled weight decay 0.05;
 * weight decay only on tensors of 2 or more dimensions (timm's
 * param_groups_weight_decay). The hyperparameters are read from the
 * fixture's metadata. The fixture (tests/fixtures/cnn/<name>_steps.
 * safetensors) holds the batch, the loss of each step and every parameter
 * and running statistic after the last step, computed by PyTorch in
 * double, and per tensor how far PyTorch's own float32 run of the same
 * steps ends from that (f32_error).
 *
 * Here the same steps run through qt_cnn_forward (TRAIN) / qt_cnn_loss /
 * qt_cnn_zero_grad / qt_cnn_backward and qt_optim_tensor_step on every
 * trainable tensor with its qt_cnn_tensor.decay flag, in float.
 *
 * Tolerances: each step's loss within 1e-4 relative; every value v within
 * 1e-5 + 1e-4 |t| + 3 f32_error of torch's t. The first two terms are those
 * of the single-step golden tests; the third admits float rounding where
 * float32 PyTorch meets it too. It is negligible (below a tenth of the
 * rest) everywhere except MobileNetV2 under AdamW, on the batch norm biases
 * whose exact gradient is 0 and the running means right after them (see
 * make_steps_case in the script: Adam turns their rounding-noise gradients
 * into steps of up to lr either way; the engine's noise there is 1 to 2
 * times PyTorch's). Measured errors are printed in units of the bound.
 * The steps move weights by up to 3e-3 (AdamW) and 6e-2 (SGD), so a wrong
 * momentum, bias correction, coupled-versus-decoupled decay or decay set
 * lands 20 to 500 times outside the bound (checked by changing each once);
 * the decay flags are also checked against timm's rule directly.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune.h"
#include "qt_test.h"

#define STEPS 3
#define BATCH 8
#define CLASSES 5
#define IMAGE 48
#define ABS_TOL 1e-5
#define REL_TOL 1e-4
#define NOISE_FACTOR 3.0

static float *read_expected(const qt_safetensors_t *st, const char *name, size_t n) {
  float *v = calloc(n ? n : 1, sizeof(float));
  qt_err err;
  qt_err_clear(&err);
  if (qt_safetensors_read_f32(st, name, v, n, &err) != 0) {
    fprintf(stderr, "%s\n", err.msg);
    CU_FAIL("expected tensor missing");
  }
  return v;
}

/* A number from the fixture's metadata (NaN, and a failed assertion, when
 * it is missing). */
static double metadata_number(const qt_safetensors_t *st, const char *key) {
  const char *value = qt_safetensors_metadata_get(st, key);
  if (!value) {
    fprintf(stderr, "fixture metadata lacks %s\n", key);
    CU_FAIL("fixture metadata missing");
    return NAN;
  }
  return strtod(value, NULL);
}

/* The optimizer of the fixture's run `prefix`, in the run API's terms:
 * "<prefix>_lr" and the others from its metadata. */
static qt_optim_params fixture_optim(const qt_safetensors_t *st, qt_optim_kind kind,
                                     const char *prefix) {
  char key[128];
  qt_optim_params p = qt_optim_default_params();
  p.kind = kind;
  p.decay = QT_DECAY_KIND_WEIGHT_DECAY;
#define FIXTURE_NUMBER(field, name) \
  (snprintf(key, sizeof key, "%s_%s", prefix, name), p.field = metadata_number(st, key))
  FIXTURE_NUMBER(lr, "lr");
  FIXTURE_NUMBER(weight_decay, "weight_decay");
  if (kind == QT_OPTIM_KIND_MOMENTUM) {
    FIXTURE_NUMBER(momentum, "momentum");
  } else {
    FIXTURE_NUMBER(beta1, "beta1");
    FIXTURE_NUMBER(beta2, "beta2");
    FIXTURE_NUMBER(eps, "eps");
  }
#undef FIXTURE_NUMBER
  return p;
}

/* Runs STEPS steps of `kind` on the checkpoint `name` and compares with the
 * fixture entries "<prefix>.<tensor>" and "<prefix>_loss". */
static void run_steps_case(const char *name, qt_model_family family, qt_optim_kind kind,
                           const char *prefix) {
  char path[512], expected_path[512];
  snprintf(path, sizeof path, "%s/tests/fixtures/cnn/%s.safetensors", QT_SOURCE_DIR, name);
  snprintf(expected_path, sizeof expected_path, "%s/tests/fixtures/cnn/%s_steps.safetensors",
           QT_SOURCE_DIR, name);
  qt_err err;
  qt_err_clear(&err);
  qt_cnn_load_params lp = qt_cnn_default_load_params();
  lp.family = family;
  lp.image_size = IMAGE;
  lp.max_batch = BATCH;
  lp.bn_momentum = 0.1f;
  qt_cnn_t *cnn = NULL;
  int rc = qt_cnn_load(path, &lp, &cnn, &err);
  if (rc) fprintf(stderr, "%s\n", err.msg);
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT_EQUAL(qt_cnn_num_classes(cnn), CLASSES);
  qt_safetensors_t *st = NULL;
  rc = qt_safetensors_open(expected_path, &st, &err);
  if (rc) fprintf(stderr, "%s\n", err.msg);
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  float *images = read_expected(st, "images", (size_t)BATCH * 3 * IMAGE * IMAGE);
  float *labels_f = read_expected(st, "labels", BATCH);
  int labels[BATCH];
  for (size_t i = 0; i < BATCH; i++) labels[i] = (int)labels_f[i];
  char key[256];
  snprintf(key, sizeof key, "%s_loss", prefix);
  float *want_loss = read_expected(st, key, STEPS);

  /* One optimizer state pair per tensor (zero before the first step), and
   * the starting values, to show how far the steps moved. */
  size_t count = qt_cnn_tensor_count(cnn);
  float **state1 = calloc(count, sizeof(float *)), **state2 = calloc(count, sizeof(float *));
  float **start = calloc(count, sizeof(float *));
  for (size_t i = 0; i < count; i++) {
    qt_cnn_tensor t;
    qt_cnn_tensor_at(cnn, i, &t);
    state1[i] = calloc(t.numel, sizeof(float));
    state2[i] = calloc(t.numel, sizeof(float));
    start[i] = malloc(t.numel * sizeof(float));
    memcpy(start[i], t.data, t.numel * sizeof(float));
  }
  CU_ASSERT_EQUAL(metadata_number(st, "steps"), STEPS);
  CU_ASSERT_EQUAL(metadata_number(st, "batch"), BATCH);
  qt_optim_params op = fixture_optim(st, kind, prefix);
  CU_ASSERT_EQUAL_FATAL(qt_optim_params_check(&op, &err), 0);
  fprintf(stderr, "\n%s, %s\n", name, prefix);
  for (long step = 1; step <= STEPS; step++) {
    CU_ASSERT_EQUAL_FATAL(qt_cnn_forward(cnn, images, BATCH, QT_BATCHNORM_MODE_TRAIN, &err), 0);
    double loss = 0.0;
    CU_ASSERT_EQUAL_FATAL(qt_cnn_loss(cnn, labels, NULL, 0.0, &loss, &err), 0);
    double loss_error = fabs(loss - want_loss[step - 1]) / fabs(want_loss[step - 1]);
    fprintf(stderr, "  step %ld loss %.7f (torch %.7f, relative error %.2e)\n", step, loss,
            (double)want_loss[step - 1], loss_error);
    CU_ASSERT(loss_error < REL_TOL);
    qt_cnn_zero_grad(cnn);
    CU_ASSERT_EQUAL_FATAL(qt_cnn_backward(cnn, &err), 0);
    for (size_t i = 0; i < count; i++) {
      qt_cnn_tensor t;
      qt_cnn_tensor_at(cnn, i, &t);
      if (!t.trainable) continue;
      qt_optim_tensor_step(&op, op.lr, t.decay, step, t.data, t.grad, state1[i], state2[i],
                           t.numel);
    }
  }

  /* Every element within ABS_TOL + REL_TOL |torch| + NOISE_FACTOR times
   * the tensor's float32 error; the largest ratio of an error to its bound
   * (1 is the limit) is reported, and how much of the bound the float32
   * term made. */
  double worst_ratio = 0.0, worst_abs = 0.0, worst_stat_ratio = 0.0, moved = 0.0;
  double worst_plain = 0.0; /* the largest error over ABS_TOL + REL_TOL |torch| alone */
  const char *worst_name = "", *worst_plain_name = "";
  size_t params = 0, stats = 0, decayed = 0, wrong_decay = 0;
  for (size_t i = 0; i < count; i++) {
    qt_cnn_tensor t;
    qt_cnn_tensor_at(cnn, i, &t);
    snprintf(key, sizeof key, "%s.%s", prefix, t.name);
    float *want = read_expected(st, key, t.numel);
    snprintf(key, sizeof key, "%s_f32_error.%s", prefix, t.name);
    float *noise = read_expected(st, key, 1);
    double ratio = 0.0, plain = 0.0;
    for (size_t j = 0; j < t.numel; j++) {
      double d = fabs((double)t.data[j] - want[j]);
      double base = ABS_TOL + REL_TOL * fabs(want[j]);
      double r = d / (base + NOISE_FACTOR * noise[0]);
      if (r > ratio) ratio = r;
      if (d / base > plain) plain = d / base;
      if (t.trainable && d > worst_abs) worst_abs = d;
      double m = fabs((double)want[j] - start[i][j]);
      if (t.trainable && m > moved) moved = m;
    }
    if (ratio > 1.0)
      fprintf(stderr, "  %s: error %.2f x the bound (float32 torch error %.2e)\n", t.name, ratio,
              (double)noise[0]);
    if (plain > worst_plain) {
      worst_plain = plain;
      worst_plain_name = t.name;
    }
    if (t.trainable) {
      params++;
      decayed += t.decay != 0;
      wrong_decay += (t.decay != 0) != (t.ndim >= 2);
      if (ratio > worst_ratio) {
        worst_ratio = ratio;
        worst_name = t.name;
      }
    } else {
      stats++;
      if (ratio > worst_stat_ratio) worst_stat_ratio = ratio;
    }
    free(want);
    free(noise);
  }
  fprintf(stderr,
          "  %zu parameters (%zu with decay): max abs error %.2e, worst %.3f x bound (%s); "
          "%zu running stats: worst %.3f x bound\n"
          "  without the float32 term: worst %.3f x (%s); largest parameter move %.2e\n",
          params, decayed, worst_abs, worst_ratio, worst_name, stats, worst_stat_ratio, worst_plain,
          worst_plain_name, moved);
  CU_ASSERT(worst_ratio <= 1.0);
  CU_ASSERT(worst_stat_ratio <= 1.0);
  /* The steps must move the weights far beyond the tolerance, or the
   * comparison would say nothing about the optimizer. */
  CU_ASSERT(moved > 100 * ABS_TOL);
  /* timm's rule: decay on tensors of 2 or more dimensions only. */
  CU_ASSERT_EQUAL(wrong_decay, 0);
  CU_ASSERT(params > 0 && stats > 0 && decayed > 0 && decayed < params);

  for (size_t i = 0; i < count; i++) {
    free(state1[i]);
    free(state2[i]);
    free(start[i]);
  }
  free(state1);
  free(state2);
  free(start);
  free(want_loss);
  free(images);
  free(labels_f);
  qt_safetensors_free(st);
  qt_cnn_free(cnn);
}

static void test_mobilenetv2_sgd(void) {
  run_steps_case("mobilenetv2_tiny", QT_MODEL_FAMILY_MOBILENETV2, QT_OPTIM_KIND_MOMENTUM, "sgd");
}

static void test_mobilenetv2_sgd_decay(void) {
  run_steps_case("mobilenetv2_tiny", QT_MODEL_FAMILY_MOBILENETV2, QT_OPTIM_KIND_MOMENTUM,
                 "sgd_decay");
}

static void test_mobilenetv2_adamw(void) {
  run_steps_case("mobilenetv2_tiny", QT_MODEL_FAMILY_MOBILENETV2, QT_OPTIM_KIND_ADAMW, "adamw");
}

static void test_resnet_sgd(void) {
  run_steps_case("resnet_tiny", QT_MODEL_FAMILY_RESNET, QT_OPTIM_KIND_MOMENTUM, "sgd");
}

static void test_resnet_sgd_decay(void) {
  run_steps_case("resnet_tiny", QT_MODEL_FAMILY_RESNET, QT_OPTIM_KIND_MOMENTUM, "sgd_decay");
}

static void test_resnet_adamw(void) {
  run_steps_case("resnet_tiny", QT_MODEL_FAMILY_RESNET, QT_OPTIM_KIND_ADAMW, "adamw");
}

static const qt_test_case cases[] = {
    {"mobilenetv2_tiny, 3 SGD momentum steps", test_mobilenetv2_sgd},
    {"mobilenetv2_tiny, 3 SGD steps, weight decay 0.05", test_mobilenetv2_sgd_decay},
    {"mobilenetv2_tiny, 3 AdamW steps", test_mobilenetv2_adamw},
    {"resnet_tiny, 3 SGD momentum steps", test_resnet_sgd},
    {"resnet_tiny, 3 SGD steps, weight decay 0.05", test_resnet_sgd_decay},
    {"resnet_tiny, 3 AdamW steps", test_resnet_adamw},
    {NULL, NULL},
};

QT_TEST_MAIN("cnn_golden_steps", cases)

/*
 * test_run_cnn.c - convolutional models in the epoch-step run API
 * (qt_model.c, the run hooks of qt_cnn.c, qt_run.c): training, save and
 * resume equal to an uninterrupted run bit for bit (running statistics
 * included), per-block freezing and linear probing, StochNorm, head dropout,
 * the feature hook's gradient, and checkpoints that carry their metadata.
 *
 * Models: the tiny MobileNetV2 and ResNet of tests/fixtures/cnn (written by
 * tools/make-cnn-fixture.py), at 32 px; data: 8x8 patterns of three
 * classes, upscaled by the run's preprocessing.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune.h"
#include "qt_test.h"
#include "qt_test_patterns.h"

#define FIXTURES QT_SOURCE_DIR "/tests/fixtures/cnn/"
#define MOBILENET FIXTURES "mobilenetv2_tiny.safetensors"
#define RESNET FIXTURES "resnet_tiny.safetensors"

/* ------------------------------------------------------------------------- */
/* Fixtures                                                                   */
/* ------------------------------------------------------------------------- */

static qt_data_splits splits;

static qt_run_spec base_spec(const char *checkpoint, qt_model_family family) {
  if (!splits.train) {
    qt_dataset *all = qt_test_patterns(8, 7);
    CU_ASSERT_FATAL(qt_dataset_split(all, 0.25, 0.0, 3, &splits.train, &splits.val, NULL, NULL) ==
                    0);
    qt_dataset_free(all);
  }
  qt_run_spec s = qt_run_default_spec();
  s.checkpoint = checkpoint;
  s.family = family;
  s.image_size = 32;
  for (int c = 0; c < 3; c++) s.mean[c] = s.std[c] = 0.5;
  s.data = &splits;
  s.epochs = 4;
  s.batch_size = 6;
  s.seed = 5;
  s.optim.lr = 3e-3;
  return s;
}

static qt_run_t *run_epochs(const qt_run_spec *s, long epochs) {
  qt_run_t *run = NULL;
  qt_err err = {0};
  int rc = qt_run_init(s, &run, &err);
  if (rc != 0) fprintf(stderr, "qt_run_init: %s\n", err.msg);
  CU_ASSERT_FATAL(rc == 0);
  for (long e = 0; e < epochs; e++) {
    qt_run_epoch_result r;
    CU_ASSERT_FATAL(qt_run_epoch(run, &r, &err) == 0);
    CU_ASSERT_EQUAL(r.status, QT_RUN_STATUS_OK);
    CU_ASSERT(isfinite(r.score) && isfinite(r.train_loss));
  }
  return run;
}

/* 1 when every tensor (running statistics included) of a and b is equal
 * bit for bit. */
static int same_model(qt_model_t *a, qt_model_t *b) {
  size_t n = qt_model_tensor_count(a);
  if (n != qt_model_tensor_count(b)) return 0;
  for (size_t i = 0; i < n; i++) {
    qt_model_tensor ta, tb;
    qt_model_tensor_at(a, i, &ta);
    qt_model_tensor_at(b, i, &tb);
    if (ta.numel != tb.numel || memcmp(ta.data, tb.data, ta.numel * sizeof(float)) != 0) return 0;
  }
  return 1;
}

/* ------------------------------------------------------------------------- */
/* Tests                                                                      */
/* ------------------------------------------------------------------------- */

static void check_resume(const qt_run_spec *s) {
  qt_err err = {0};
  char path[512];
  qt_test_temp_path("cnn-run.safetensors", path, sizeof path);
  qt_run_t *straight = run_epochs(s, 2);
  qt_run_t *first = run_epochs(s, 1);
  CU_ASSERT_FATAL(qt_run_save(first, path, &err) == 0);
  qt_run_free(first);
  qt_run_t *resumed = NULL;
  CU_ASSERT_FATAL(qt_run_load(path, s, &resumed, &err) == 0);
  qt_run_epoch_result r;
  CU_ASSERT_FATAL(qt_run_epoch(resumed, &r, &err) == 0);
  CU_ASSERT(same_model(qt_run_model(straight), qt_run_model(resumed)));
  CU_ASSERT_EQUAL(qt_run_best_score(straight), qt_run_best_score(resumed));
  qt_run_free(straight);
  qt_run_free(resumed);
  remove(path);
}

static void test_resume_mobilenet(void) {
  qt_run_spec s = base_spec(MOBILENET, QT_MODEL_FAMILY_MOBILENETV2);
  check_resume(&s);
}

static void test_resume_resnet_momentum(void) {
  qt_run_spec s = base_spec(RESNET, QT_MODEL_FAMILY_RESNET);
  s.optim.kind = QT_OPTIM_KIND_MOMENTUM;
  s.optim.layer_decay = 0.75;
  s.drop = 0.2;
  check_resume(&s);
}

static void test_resume_stoch_norm(void) {
  qt_run_spec s = base_spec(MOBILENET, QT_MODEL_FAMILY_MOBILENETV2);
  s.stoch_norm = 1;
  check_resume(&s);
  /* StochNorm changes the training. */
  qt_run_spec plain = s;
  plain.stoch_norm = 0;
  qt_run_t *a = run_epochs(&s, 1), *b = run_epochs(&plain, 1);
  CU_ASSERT(!same_model(qt_run_model(a), qt_run_model(b)));
  qt_run_free(a);
  qt_run_free(b);
}

/* pct_to_freeze: units k with k / n <= pct keep their pretrained values,
 * running statistics included, and stay out of the checkpoint; the others
 * train. */
static void test_freezing(void) {
  qt_err err = {0};
  qt_run_spec s = base_spec(MOBILENET, QT_MODEL_FAMILY_MOBILENETV2);
  s.pct_to_freeze = 0.5;
  qt_run_t *run = run_epochs(&s, 1);
  qt_model_load_params lp = qt_model_default_load_params();
  lp.family = s.family;
  lp.image_size = 32;
  qt_model_t *pre = NULL;
  CU_ASSERT_FATAL(qt_model_load(MOBILENET, &lp, &pre, &err) == 0);
  qt_model_t *m = qt_run_model(run);
  long n = qt_model_units(m);
  CU_ASSERT_FATAL(n >= 2);
  char path[512];
  qt_test_temp_path("cnn-frozen.safetensors", path, sizeof path);
  CU_ASSERT_FATAL(qt_run_save(run, path, &err) == 0);
  qt_safetensors_t *st = NULL;
  CU_ASSERT_FATAL(qt_safetensors_open(path, &st, &err) == 0);
  size_t frozen = 0, moved = 0, trainable_convs = 0;
  for (size_t i = 0; i < qt_model_tensor_count(m); i++) {
    qt_model_tensor t, t0;
    qt_model_tensor_at(m, i, &t);
    if (t.head) continue;
    CU_ASSERT_FATAL(qt_model_find_tensor(pre, t.name, &t0) == 0);
    int same = memcmp(t.data, t0.data, t.numel * sizeof(float)) == 0;
    int in_file = qt_safetensors_find(st, t.name, NULL) == 0;
    if ((double)t.unit / (double)n <= s.pct_to_freeze) {
      CU_ASSERT(same);
      CU_ASSERT(!in_file);
      frozen++;
    } else {
      CU_ASSERT(in_file);
      if (t.ndim == 4) {
        trainable_convs++;
        moved += !same;
      }
    }
  }
  CU_ASSERT(frozen > 0);
  CU_ASSERT(trainable_convs > 0);
  CU_ASSERT_EQUAL(moved, trainable_convs);
  qt_safetensors_free(st);
  qt_model_free(pre);
  qt_run_free(run);
  remove(path);
}

/* Linear probing: the first half trains the head alone; the batch norms
 * keep their running statistics. */
static void test_linear_probing(void) {
  qt_err err = {0};
  qt_run_spec s = base_spec(RESNET, QT_MODEL_FAMILY_RESNET);
  s.linear_probing = 1;
  qt_run_t *run = run_epochs(&s, 1);
  qt_model_load_params lp = qt_model_default_load_params();
  lp.family = s.family;
  lp.image_size = 32;
  qt_model_t *pre = NULL;
  CU_ASSERT_FATAL(qt_model_load(RESNET, &lp, &pre, &err) == 0);
  qt_model_t *m = qt_run_model(run);
  size_t heads = 0;
  for (size_t i = 0; i < qt_model_tensor_count(m); i++) {
    qt_model_tensor t, t0;
    qt_model_tensor_at(m, i, &t);
    if (t.head) {
      heads++;
      continue;
    }
    CU_ASSERT_FATAL(qt_model_find_tensor(pre, t.name, &t0) == 0);
    CU_ASSERT(memcmp(t.data, t0.data, t.numel * sizeof(float)) == 0);
  }
  CU_ASSERT_EQUAL(heads, 2);
  qt_model_free(pre);
  qt_run_free(run);
}

/* The regularizers that read the pooled features, and what does not apply
 * to convolutional models yet. */
static void test_methods(void) {
  qt_err err = {0};
  qt_run_spec s = base_spec(MOBILENET, QT_MODEL_FAMILY_MOBILENETV2);
  s.bss_reg = 0.01;
  s.delta_reg = 0.01;
  s.optim.decay = QT_DECAY_KIND_SPD;
  qt_run_t *run = run_epochs(&s, 1);
  qt_run_free(run);
  s = base_spec(MOBILENET, QT_MODEL_FAMILY_MOBILENETV2);
  s.goodfit = 1;
  run = run_epochs(&s, 1);
  qt_run_free(run);
  s = base_spec(MOBILENET, QT_MODEL_FAMILY_MOBILENETV2);
  CU_ASSERT_EQUAL(qt_run_spec_supported(&s, &err), 0);
  s.adapter = QT_ADAPTER_KIND_LORA;
  /* Refused before any loading (a search drops such configurations). */
  CU_ASSERT_EQUAL(qt_run_spec_supported(&s, &err), QT_ENOTIMPL);
  CU_ASSERT_EQUAL(qt_run_init(&s, &run, &err), QT_ENOTIMPL);
  CU_ASSERT_PTR_NULL(run);
  s = base_spec(MOBILENET, QT_MODEL_FAMILY_MOBILENETV2);
  s.image_size = 0;
  CU_ASSERT_EQUAL(qt_run_init(&s, &run, &err), QT_EINVAL);
}

/* qt_cnn_set_trainable_from: frozen units get no gradient and keep their
 * running statistics in a training forward; the others get both. */
static void test_trainable_from(void) {
  qt_err err = {0};
  qt_cnn_load_params lp = qt_cnn_default_load_params();
  lp.image_size = 32;
  lp.max_batch = 4;
  qt_cnn_t *cnn = NULL;
  CU_ASSERT_FATAL(qt_cnn_load(MOBILENET, &lp, &cnn, &err) == 0);
  size_t n_t = qt_cnn_tensor_count(cnn);
  float **before = calloc(n_t, sizeof *before);
  for (size_t i = 0; i < n_t; i++) {
    qt_cnn_tensor t;
    qt_cnn_tensor_at(cnn, i, &t);
    before[i] = malloc(t.numel * sizeof(float));
    memcpy(before[i], t.data, t.numel * sizeof(float));
  }
  float images[4 * 3 * 32 * 32];
  qt_rng_t *rng = NULL;
  qt_rng_init(&rng, 3, NULL);
  for (size_t i = 0; i < sizeof images / sizeof *images; i++)
    images[i] = (float)(qt_rng_uniform(rng) - 0.5);
  int labels[4] = {0, 1, 2, 3};
  long from = 2;
  qt_cnn_set_trainable_from(cnn, from);
  qt_cnn_zero_grad(cnn);
  CU_ASSERT_FATAL(qt_cnn_forward(cnn, images, 4, QT_BATCHNORM_MODE_TRAIN, &err) == 0);
  CU_ASSERT_FATAL(qt_cnn_loss(cnn, labels, NULL, 0.0, NULL, &err) == 0);
  CU_ASSERT_FATAL(qt_cnn_backward(cnn, &err) == 0);
  for (size_t i = 0; i < n_t; i++) {
    qt_cnn_tensor t;
    qt_cnn_tensor_at(cnn, i, &t);
    int frozen = !t.head && t.unit < from;
    double g = 0.0;
    for (size_t k = 0; k < t.numel; k++) g += fabs(t.grad[k]);
    int stats_same = memcmp(t.data, before[i], t.numel * sizeof(float)) == 0;
    if (frozen) {
      CU_ASSERT_EQUAL(g, 0.0);
      CU_ASSERT(stats_same);
    } else if (t.trainable) {
      CU_ASSERT(g > 0.0);
    } else if (strstr(t.name, "running_mean")) {
      CU_ASSERT(!stats_same);
    }
    free(before[i]);
  }
  free(before);
  qt_rng_free(rng);
  qt_cnn_free(cnn);
}

/* The feature hook: with r added to the features' gradient, the backward
 * gives the gradient of loss + <r, F> (central differences, evaluation
 * mode so that the function is smooth and deterministic). */
static double hooked_loss(qt_cnn_t *cnn, const float *images, const int *labels, const float *r,
                          size_t b) {
  double loss;
  qt_cnn_forward(cnn, images, b, QT_BATCHNORM_MODE_EVAL, NULL);
  qt_cnn_loss(cnn, labels, NULL, 0.0, &loss, NULL);
  size_t nb;
  const float *f = qt_cnn_features(cnn, &nb);
  for (size_t i = 0; i < nb * qt_cnn_feature_dim(cnn); i++) loss += (double)r[i] * f[i];
  return loss;
}

static void test_feature_hook_gradient(void) {
  qt_err err = {0};
  qt_cnn_load_params lp = qt_cnn_default_load_params();
  lp.image_size = 32;
  lp.max_batch = 2;
  lp.family = QT_MODEL_FAMILY_RESNET;
  qt_cnn_t *cnn = NULL;
  CU_ASSERT_FATAL(qt_cnn_load(RESNET, &lp, &cnn, &err) == 0);
  CU_ASSERT_FATAL(qt_cnn_set_feature_hook(cnn, 1, &err) == 0);
  size_t d = qt_cnn_feature_dim(cnn);
  float images[2 * 3 * 32 * 32], *r = malloc(2 * d * sizeof *r);
  qt_rng_t *rng = NULL;
  qt_rng_init(&rng, 9, NULL);
  for (size_t i = 0; i < sizeof images / sizeof *images; i++)
    images[i] = (float)(qt_rng_uniform(rng) - 0.5);
  for (size_t i = 0; i < 2 * d; i++) r[i] = (float)(qt_rng_uniform(rng) - 0.5);
  int labels[2] = {1, 2};
  qt_cnn_zero_grad(cnn);
  CU_ASSERT_FATAL(qt_cnn_forward(cnn, images, 2, QT_BATCHNORM_MODE_EVAL, &err) == 0);
  CU_ASSERT_FATAL(qt_cnn_loss(cnn, labels, NULL, 0.0, NULL, &err) == 0);
  memcpy(qt_cnn_feature_grad(cnn), r, 2 * d * sizeof *r);
  CU_ASSERT_FATAL(qt_cnn_backward(cnn, &err) == 0);
  /* The largest gradient entries of the first convolution and of fc. */
  const char *names[2] = {"conv1.weight", "fc.weight"};
  for (int k = 0; k < 2; k++) {
    qt_cnn_tensor t;
    CU_ASSERT_FATAL(qt_cnn_find_tensor(cnn, names[k], &t) == 0);
    size_t best = 0;
    for (size_t j = 0; j < t.numel; j++) {
      if (fabsf(t.grad[j]) > fabsf(t.grad[best])) best = j;
    }
    double analytic = t.grad[best];
    float keep = t.data[best], h = 1e-2f;
    t.data[best] = keep + h;
    double up = hooked_loss(cnn, images, labels, r, 2);
    t.data[best] = keep - h;
    double down = hooked_loss(cnn, images, labels, r, 2);
    t.data[best] = keep;
    double numeric = (up - down) / (2.0 * h);
    CU_ASSERT(fabs(numeric - analytic) <= 2e-2 * fabs(analytic) + 1e-4);
  }
  free(r);
  qt_rng_free(rng);
  qt_cnn_free(cnn);
}

/* qt_cnn_save keeps every tensor and the metadata the loader needs. */
static void test_save_round_trip(void) {
  qt_err err = {0};
  qt_cnn_load_params lp = qt_cnn_default_load_params();
  lp.image_size = 32;
  qt_cnn_t *a = NULL, *b = NULL;
  CU_ASSERT_FATAL(qt_cnn_load(FIXTURES "mobilenetv2_tf.safetensors", &lp, &a, &err) == 0);
  char path[512];
  qt_test_temp_path("cnn-save.safetensors", path, sizeof path);
  CU_ASSERT_FATAL(qt_cnn_save(a, path, &err) == 0);
  CU_ASSERT_FATAL(qt_cnn_load(path, &lp, &b, &err) == 0);
  CU_ASSERT_EQUAL(qt_cnn_bn_eps(b), qt_cnn_bn_eps(a));
  CU_ASSERT(fabsf(qt_cnn_bn_eps(b) - 1e-3f) < 1e-9f);
  CU_ASSERT_EQUAL(qt_cnn_tensor_count(a), qt_cnn_tensor_count(b));
  float images[3 * 32 * 32];
  for (size_t i = 0; i < sizeof images / sizeof *images; i++) images[i] = (float)(i % 7) * 0.1f;
  CU_ASSERT_FATAL(qt_cnn_forward(a, images, 1, QT_BATCHNORM_MODE_EVAL, &err) == 0);
  CU_ASSERT_FATAL(qt_cnn_forward(b, images, 1, QT_BATCHNORM_MODE_EVAL, &err) == 0);
  CU_ASSERT(memcmp(qt_cnn_logits(a), qt_cnn_logits(b),
                   (size_t)qt_cnn_num_classes(a) * sizeof(float)) == 0);
  qt_cnn_free(a);
  qt_cnn_free(b);
  remove(path);
}

static void test_cleanup(void) {
  qt_data_splits_free(&splits);
}

static const qt_test_case cases[] = {{"resume_mobilenet", test_resume_mobilenet},
                                     {"resume_resnet_momentum", test_resume_resnet_momentum},
                                     {"resume_stoch_norm", test_resume_stoch_norm},
                                     {"freezing", test_freezing},
                                     {"linear_probing", test_linear_probing},
                                     {"methods", test_methods},
                                     {"trainable_from", test_trainable_from},
                                     {"feature_hook_gradient", test_feature_hook_gradient},
                                     {"save_round_trip", test_save_round_trip},
                                     {"cleanup", test_cleanup},
                                     {NULL, NULL}};

QT_TEST_MAIN("run_cnn", cases)

/*
 * test_cotuning.c - Co-Tuning (qt_methods_cotuning.c and its wiring in
 * qt_run.c): the relationship R against a hand computation (rows sum to 1,
 * a class without samples is uniform), the penalty against a double
 * reference and its gradients w.r.t. the features, W_src and b_src against
 * central differences (hard labels and mixed target weights), and runs: a
 * tiny ViT (test_run.c's fixture pattern) and the tiny MobileNetV2 of
 * tests/fixtures/cnn at 32 px train with cotuning_reg > 0, differ from
 * cotuning_reg 0, move the source head, and save / load / continue equals
 * an uninterrupted run bit for bit; a checkpoint without a head, GOODFIT
 * and a negative coefficient are refused.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune.h"
#include "qt_test.h"
#include "qt_test_patterns.h"

#define MOBILENET QT_SOURCE_DIR "/tests/fixtures/cnn/mobilenetv2_tiny.safetensors"

/* ------------------------------------------------------------------------- */
/* Relationship                                                               */
/* ------------------------------------------------------------------------- */

static void softmax_ref(const double *z, size_t n, double *p) {
  double m = z[0], sum = 0.0;
  for (size_t s = 1; s < n; s++) m = fmax(m, z[s]);
  for (size_t s = 0; s < n; s++) sum += p[s] = exp(z[s] - m);
  for (size_t s = 0; s < n; s++) p[s] /= sum;
}

static void test_relationship_hand(void) {
  enum { S = 3, T = 3, B = 4 };
  const float logits[B * S] = {1.0f,  2.0f, 3.0f, 0.0f, 0.0f,  0.0f,
                               -1.0f, 4.0f, 0.5f, 2.0f, -2.0f, 1.0f};
  const int32_t labels[B] = {0, 1, 0, 1}; /* class 2 has no samples */
  double sum[T * S] = {0}, count[T] = {0};
  float r[T * S];
  qt_err err;
  /* Two calls: accumulation over batches. */
  CU_ASSERT_EQUAL_FATAL(
      qt_cotuning_relationship_accumulate(logits, labels, 2, S, T, sum, count, &err), 0);
  CU_ASSERT_EQUAL_FATAL(
      qt_cotuning_relationship_accumulate(logits + 2 * S, labels + 2, 2, S, T, sum, count, &err),
      0);
  qt_cotuning_relationship_finalize(sum, count, T, S, r);
  /* By hand: row 0 = (softmax(1,2,3) + softmax(-1,4,0.5)) / 2, row 1 =
   * (uniform + softmax(2,-2,1)) / 2, row 2 uniform. */
  double a[S], b[S], c[S], z0[S] = {1, 2, 3}, z2[S] = {-1, 4, 0.5}, z3[S] = {2, -2, 1};
  softmax_ref(z0, S, a);
  softmax_ref(z2, S, b);
  softmax_ref(z3, S, c);
  for (int s = 0; s < S; s++) {
    QT_ASSERT_CLOSE(r[s], 0.5 * (a[s] + b[s]), 1e-7);
    QT_ASSERT_CLOSE(r[S + s], 0.5 * (1.0 / 3.0 + c[s]), 1e-7);
    QT_ASSERT_CLOSE(r[2 * S + s], 1.0 / 3.0, 1e-7);
  }
  QT_ASSERT_CLOSE(count[0], 2.0, 0.0);
  QT_ASSERT_CLOSE(count[1], 2.0, 0.0);
  QT_ASSERT_CLOSE(count[2], 0.0, 0.0);
  for (int t = 0; t < T; t++) {
    double row = 0.0;
    for (int s = 0; s < S; s++) row += r[t * S + s];
    QT_ASSERT_CLOSE(row, 1.0, 1e-6);
  }
  /* Bad labels and logits. */
  const int32_t bad[1] = {3};
  CU_ASSERT_EQUAL(qt_cotuning_relationship_accumulate(logits, bad, 1, S, T, sum, count, &err),
                  QT_EINVAL);
  float nan_logits[S] = {0.0f, NAN, 1.0f};
  CU_ASSERT_EQUAL(
      qt_cotuning_relationship_accumulate(nan_logits, labels, 1, S, T, sum, count, &err),
      QT_EINVAL);
  QT_ASSERT_CLOSE(count[0], 2.0, 0.0); /* nothing of a refused row is added */
  CU_ASSERT_EQUAL(qt_cotuning_relationship_accumulate(NULL, labels, 1, S, T, sum, count, &err),
                  QT_EINVAL);
}

static void test_source_logits(void) {
  const float f[2 * 2] = {1.0f, 2.0f, -1.0f, 0.5f};
  const float w[3 * 2] = {1.0f, 0.0f, 0.0f, 1.0f, 2.0f, -1.0f}, b[3] = {0.5f, 0.0f, -1.0f};
  float z[2 * 3];
  qt_cotuning_source_logits(f, 2, 2, w, b, 3, z);
  const float want[6] = {1.5f, 2.0f, -1.0f, -0.5f, 0.5f, -3.5f};
  for (int i = 0; i < 6; i++) QT_ASSERT_CLOSE(z[i], want[i], 1e-7);
}

/* ------------------------------------------------------------------------- */
/* Penalty                                                                    */
/* ------------------------------------------------------------------------- */

enum { PB = 4, PD = 5, PS = 6, PT = 3 };

/* lambda mean_b [-sum_s q_b log softmax(F W^T + b)], in double. */
static double penalty_ref(const double *f, const double *w, const double *b, const double *r,
                          const double *weights, double lambda) {
  double total = 0.0;
  for (int i = 0; i < PB; i++) {
    double z[PS], p[PS], q[PS] = {0};
    for (int s = 0; s < PS; s++) {
      z[s] = b[s];
      for (int d = 0; d < PD; d++) z[s] += f[i * PD + d] * w[s * PD + d];
    }
    softmax_ref(z, PS, p);
    for (int c = 0; c < PT; c++)
      for (int s = 0; s < PS; s++) q[s] += weights[i * PT + c] * r[c * PS + s];
    for (int s = 0; s < PS; s++) total -= q[s] * log(p[s]);
  }
  return lambda * total / PB;
}

typedef struct penalty_case {
  float f[PB * PD], w[PS * PD], b[PS], r[PT * PS], weights[PB * PT];
  double fd[PB * PD], wd[PS * PD], bd[PS], rd[PT * PS], weightsd[PB * PT];
  int32_t labels[PB];
} penalty_case;

static void make_case(penalty_case *pc, int mixed) {
  qt_rng_t *rng = NULL;
  CU_ASSERT_FATAL(qt_rng_init(&rng, 31, NULL) == 0);
  for (int i = 0; i < PB * PD; i++) pc->fd[i] = pc->f[i] = (float)(2.0 * qt_rng_uniform(rng) - 1.0);
  for (int i = 0; i < PS * PD; i++) pc->wd[i] = pc->w[i] = (float)(qt_rng_uniform(rng) - 0.5);
  for (int i = 0; i < PS; i++) pc->bd[i] = pc->b[i] = (float)(0.2 * qt_rng_uniform(rng));
  for (int c = 0; c < PT; c++) {
    double row = 0.0, v[PS];
    for (int s = 0; s < PS; s++) row += v[s] = qt_rng_uniform(rng) + 0.1;
    for (int s = 0; s < PS; s++) pc->r[c * PS + s] = (float)(v[s] / row);
  }
  for (int i = 0; i < PT * PS; i++) pc->rd[i] = pc->r[i];
  qt_rng_free(rng);
  memset(pc->weights, 0, sizeof pc->weights);
  for (int i = 0; i < PB; i++) {
    pc->labels[i] = i % PT;
    pc->weights[i * PT + pc->labels[i]] = 1.0f;
  }
  if (mixed) {
    /* Mixup pairs (b, B - 1 - b) with lambda 0.75. */
    for (int i = 0; i < PB; i++) {
      for (int c = 0; c < PT; c++) pc->weights[i * PT + c] = 0.0f;
      pc->weights[i * PT + pc->labels[i]] += 0.75f;
      pc->weights[i * PT + pc->labels[PB - 1 - i]] += 0.25f;
    }
  }
  for (int i = 0; i < PB * PT; i++) pc->weightsd[i] = pc->weights[i];
}

/* Central differences of the double reference against the analytic
 * gradients (added to 0.25, to show they are added), every coordinate. */
static void check_gradients(int mixed) {
  penalty_case pc;
  make_case(&pc, mixed);
  const double lambda = 1.7, h = 1e-6;
  float gf[PB * PD], gw[PS * PD], gb[PS];
  for (int i = 0; i < PB * PD; i++) gf[i] = 0.25f;
  for (int i = 0; i < PS * PD; i++) gw[i] = 0.25f;
  for (int i = 0; i < PS; i++) gb[i] = 0.25f;
  qt_err err;
  double pen = 0.0;
  int rc = qt_cotuning_penalty(pc.f, PB, PD, pc.w, pc.b, PS, pc.r, PT, mixed ? NULL : pc.labels,
                               mixed ? pc.weights : NULL, lambda, &pen, gf, gw, gb, &err);
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  QT_ASSERT_CLOSE(pen, penalty_ref(pc.fd, pc.wd, pc.bd, pc.rd, pc.weightsd, lambda), 1e-9);
  double worst = 0.0;
  struct {
    double *x;
    float *g;
    int n;
  } parts[3] = {{pc.fd, gf, PB * PD}, {pc.wd, gw, PS * PD}, {pc.bd, gb, PS}};
  for (int k = 0; k < 3; k++) {
    for (int i = 0; i < parts[k].n; i++) {
      double keep = parts[k].x[i];
      parts[k].x[i] = keep + h;
      double up = penalty_ref(pc.fd, pc.wd, pc.bd, pc.rd, pc.weightsd, lambda);
      parts[k].x[i] = keep - h;
      double down = penalty_ref(pc.fd, pc.wd, pc.bd, pc.rd, pc.weightsd, lambda);
      parts[k].x[i] = keep;
      double num = (up - down) / (2.0 * h);
      worst = fmax(worst, fabs(((double)parts[k].g[i] - 0.25) - num));
    }
  }
  CU_ASSERT(worst < 1e-5);
  if (worst >= 1e-5) fprintf(stderr, "\n  Co-Tuning gradient off by %g\n", worst);
}

static void test_penalty_finite_differences(void) {
  check_gradients(0);
}
static void test_penalty_finite_differences_mixed(void) {
  check_gradients(1);
}

/* Hand value, labels = one-hot weights, NULL gradients, lambda 0, errors. */
static void test_penalty_values(void) {
  qt_err err;
  /* One sample, z = (0, log 3): p = (1/4, 3/4); q = (0.5, 0.5):
   * CE = -0.5 log(1/4) - 0.5 log(3/4). */
  const float f[1] = {1.0f}, w[2] = {0.0f, (float)log(3.0)}, b[2] = {0.0f, 0.0f};
  const float r[2 * 2] = {0.5f, 0.5f, 1.0f, 0.0f};
  const int32_t label[1] = {0};
  double pen = 0.0;
  CU_ASSERT_EQUAL(
      qt_cotuning_penalty(f, 1, 1, w, b, 2, r, 2, label, NULL, 2.0, &pen, NULL, NULL, NULL, &err),
      0);
  QT_ASSERT_CLOSE(pen, 2.0 * (-0.5 * log(0.25) - 0.5 * log(0.75)), 1e-7);
  float dz_b[2] = {0.0f, 0.0f};
  CU_ASSERT_EQUAL(
      qt_cotuning_penalty(f, 1, 1, w, b, 2, r, 2, label, NULL, 2.0, &pen, NULL, NULL, dz_b, &err),
      0);
  /* db = lambda (p - q) = 2 ((1/4, 3/4) - (1/2, 1/2)). */
  QT_ASSERT_CLOSE(dz_b[0], -0.5, 1e-6);
  QT_ASSERT_CLOSE(dz_b[1], 0.5, 1e-6);

  penalty_case pc;
  make_case(&pc, 0);
  double p1 = 0.0, p2 = 0.0;
  CU_ASSERT_EQUAL(qt_cotuning_penalty(pc.f, PB, PD, pc.w, pc.b, PS, pc.r, PT, pc.labels, NULL, 0.3,
                                      &p1, NULL, NULL, NULL, &err),
                  0);
  CU_ASSERT_EQUAL(qt_cotuning_penalty(pc.f, PB, PD, pc.w, pc.b, PS, pc.r, PT, NULL, pc.weights, 0.3,
                                      &p2, NULL, NULL, NULL, &err),
                  0);
  CU_ASSERT(p1 > 0.0);
  QT_ASSERT_CLOSE(p1, p2, 1e-15);
  CU_ASSERT_EQUAL(qt_cotuning_penalty(pc.f, PB, PD, pc.w, pc.b, PS, pc.r, PT, pc.labels, NULL, 0.0,
                                      &p1, NULL, NULL, NULL, &err),
                  0);
  QT_ASSERT_CLOSE(p1, 0.0, 0.0);
  CU_ASSERT_EQUAL(qt_cotuning_penalty(pc.f, PB, PD, pc.w, pc.b, PS, pc.r, PT, pc.labels, NULL, -1.0,
                                      &p1, NULL, NULL, NULL, &err),
                  QT_EINVAL);
  pc.labels[2] = PT;
  CU_ASSERT_EQUAL(qt_cotuning_penalty(pc.f, PB, PD, pc.w, pc.b, PS, pc.r, PT, pc.labels, NULL, 1.0,
                                      &p1, NULL, NULL, NULL, &err),
                  QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cotuning_penalty(pc.f, PB, PD, pc.w, pc.b, PS, pc.r, PT, NULL, NULL, 1.0, &p1,
                                      NULL, NULL, NULL, &err),
                  QT_EINVAL);
}

/* ------------------------------------------------------------------------- */
/* Runs                                                                       */
/* ------------------------------------------------------------------------- */

static qt_data_splits splits;
static char vit_path[512], headless_path[512];

static void make_fixtures(void) {
  if (splits.train) return;
  qt_dataset *all = qt_test_patterns(8, 7);
  CU_ASSERT_FATAL(qt_dataset_split(all, 0.25, 0.0, 3, &splits.train, &splits.val, NULL, NULL) == 0);
  qt_dataset_free(all);
  qt_vit_config c = qt_vit_default_config();
  c.image_size = 8;
  c.patch_size = 4;
  c.width = 8;
  c.depth = 2;
  c.heads = 2;
  c.mlp_hidden = 16;
  c.num_classes = 5; /* the source head: 5 classes, the task has 3 */
  qt_rng_t *rng = NULL;
  qt_rng_init(&rng, 11, NULL);
  qt_vit_t *vit = NULL;
  CU_ASSERT_FATAL(qt_vit_init(&c, 4, rng, &vit, NULL) == 0);
  qt_rng_free(rng);
  qt_test_temp_path("cotuning-vit.safetensors", vit_path, sizeof vit_path);
  CU_ASSERT_FATAL(qt_vit_save(vit, vit_path, NULL) == 0);
  qt_vit_free(vit);
  /* The same checkpoint without head.weight and head.bias. */
  qt_safetensors_t *st = NULL;
  CU_ASSERT_FATAL(qt_safetensors_open(vit_path, &st, NULL) == 0);
  size_t n = qt_safetensors_count(st), m = 0;
  qt_safetensors_tensor *ts = calloc(n, sizeof *ts);
  float **bufs = calloc(n, sizeof *bufs);
  qt_safetensors_info *infos = calloc(n, sizeof *infos);
  for (size_t i = 0; i < n; i++) {
    const char *name = qt_safetensors_name(st, i);
    if (strncmp(name, "head.", 5) == 0) continue;
    qt_safetensors_info_at(st, i, &infos[i]);
    bufs[i] = malloc((infos[i].numel ? infos[i].numel : 1) * sizeof(float));
    CU_ASSERT_FATAL(qt_safetensors_read_f32(st, name, bufs[i], infos[i].numel, NULL) == 0);
    ts[m++] =
        (qt_safetensors_tensor){name, QT_DTYPE_F32, infos[i].ndim, infos[i].shape, bufs[i], NULL};
  }
  CU_ASSERT_EQUAL_FATAL(m, n - 2);
  qt_test_temp_path("cotuning-headless.safetensors", headless_path, sizeof headless_path);
  CU_ASSERT_FATAL(qt_safetensors_write(headless_path, ts, m, NULL, 0, NULL) == 0);
  for (size_t i = 0; i < n; i++) free(bufs[i]);
  free(bufs);
  free(infos);
  free(ts);
  qt_safetensors_free(st);
}

static qt_run_spec vit_spec(void) {
  make_fixtures();
  qt_run_spec s = qt_run_default_spec();
  s.checkpoint = vit_path;
  s.family = QT_MODEL_FAMILY_VIT;
  s.heads = 2;
  for (int c = 0; c < 3; c++) s.mean[c] = s.std[c] = 0.5;
  s.data = &splits;
  s.epochs = 4;
  s.batch_size = 6;
  s.seed = 5;
  s.optim.lr = 3e-3;
  return s;
}

static qt_run_spec cnn_spec(void) {
  make_fixtures();
  qt_run_spec s = qt_run_default_spec();
  s.checkpoint = MOBILENET;
  s.family = QT_MODEL_FAMILY_MOBILENETV2;
  s.image_size = 32;
  for (int c = 0; c < 3; c++) s.mean[c] = s.std[c] = 0.5;
  s.data = &splits;
  s.epochs = 4;
  s.batch_size = 6;
  s.seed = 5;
  s.optim.lr = 3e-3;
  return s;
}

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

/* Tensor `name` of a safetensors file (malloc'd), its size in *n. */
static float *read_tensor(const char *path, const char *name, size_t *n) {
  qt_safetensors_t *st = NULL;
  CU_ASSERT_FATAL(qt_safetensors_open(path, &st, NULL) == 0);
  qt_safetensors_info info;
  CU_ASSERT_FATAL(qt_safetensors_lookup(st, name, &info, NULL) == 0);
  float *v = malloc(info.numel * sizeof *v);
  CU_ASSERT_FATAL(qt_safetensors_read_f32(st, name, v, info.numel, NULL) == 0);
  qt_safetensors_free(st);
  *n = info.numel;
  return v;
}

static int same_file_tensor(const char *a, const char *b, const char *name) {
  size_t na, nb;
  float *va = read_tensor(a, name, &na), *vb = read_tensor(b, name, &nb);
  int same = na == nb && memcmp(va, vb, na * sizeof *va) == 0;
  free(va);
  free(vb);
  return same;
}

/* cotuning_reg 1 trains and changes the run, the source head moves away
 * from the checkpoint's classifier, 3 epochs straight equal 3 epochs with
 * a save and load after each (weights, results and the source head with
 * its state), and the fingerprint covers cotuning_reg. */
static void check_run(qt_run_spec s, const char *classifier) {
  qt_err err = {0};
  qt_run_spec plain = s;
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "cotuning_reg", "1", &err), 0);
  qt_run_t *full = NULL, *base = NULL, *part = NULL;
  int rc = qt_run_init(&s, &full, &err);
  if (rc) fprintf(stderr, "init: %s\n", err.msg);
  CU_ASSERT_FATAL(rc == 0);
  CU_ASSERT_FATAL(qt_run_init(&plain, &base, &err) == 0);
  qt_run_epoch_result want[3], got, r;
  for (int e = 0; e < 3; e++) {
    CU_ASSERT_FATAL(qt_run_epoch(full, &want[e], &err) == 0);
    CU_ASSERT_EQUAL(want[e].status, QT_RUN_STATUS_OK);
    CU_ASSERT(isfinite(want[e].score) && isfinite(want[e].train_loss));
    CU_ASSERT_FATAL(qt_run_epoch(base, &r, &err) == 0);
    if (e == 0) CU_ASSERT(r.train_loss != want[0].train_loss || r.score != want[0].score);
  }
  CU_ASSERT(!same_model(qt_run_model(full), qt_run_model(base))); /* Co-Tuning changes the run */

  char path[512], full_path[512];
  qt_test_temp_path("cotuning-run.safetensors", path, sizeof path);
  qt_test_temp_path("cotuning-full.safetensors", full_path, sizeof full_path);
  CU_ASSERT_FATAL(qt_run_init(&s, &part, &err) == 0);
  for (int e = 0; e < 3; e++) {
    CU_ASSERT_FATAL(qt_run_epoch(part, &got, &err) == 0);
    CU_ASSERT(got.score == want[e].score && got.train_loss == want[e].train_loss &&
              got.val_loss == want[e].val_loss);
    if (e == 2) break;
    CU_ASSERT_FATAL(qt_run_save(part, path, &err) == 0);
    qt_run_free(part);
    part = NULL;
    rc = qt_run_load(path, &s, &part, &err);
    if (rc) fprintf(stderr, "load: %s\n", err.msg);
    CU_ASSERT_FATAL(rc == 0);
  }
  CU_ASSERT(same_model(qt_run_model(full), qt_run_model(part)));
  CU_ASSERT_FATAL(qt_run_save(part, path, &err) == 0);
  CU_ASSERT_FATAL(qt_run_save(full, full_path, &err) == 0);
  CU_ASSERT(same_file_tensor(path, full_path, "cotuning.source_head.weight"));
  CU_ASSERT(same_file_tensor(path, full_path, "cotuning.source_head.bias"));
  CU_ASSERT(same_file_tensor(path, full_path, "optim.exp_avg_sq.cotuning.source_head.weight"));
  /* The source head moved from the checkpoint's classifier. */
  char wname[64];
  snprintf(wname, sizeof wname, "%s.weight", classifier);
  size_t n0 = 0, n1 = 0;
  float *w0 = read_tensor(s.checkpoint, wname, &n0);
  float *w1 = read_tensor(path, "cotuning.source_head.weight", &n1);
  CU_ASSERT_EQUAL(n0, n1);
  double moved = 0.0;
  for (size_t i = 0; i < n0 && n0 == n1; i++) moved = fmax(moved, fabs((double)w1[i] - w0[i]));
  CU_ASSERT(moved > 1e-4);
  free(w0);
  free(w1);
  /* Another coefficient is another configuration. */
  qt_run_t *other = NULL;
  CU_ASSERT_EQUAL(qt_run_load(path, &plain, &other, &err), QT_ESCHEMA);
  qt_run_free(full);
  qt_run_free(base);
  qt_run_free(part);
  remove(path);
  remove(full_path);
}

static void test_vit_run(void) {
  check_run(vit_spec(), "head");
}

/* Mixup and CutMix: the mixed target weights; resume still exact. */
static void test_vit_run_mixed(void) {
  qt_run_spec s = vit_spec();
  s.mixup = 0.8;
  s.cutmix = 1.0;
  check_run(s, "head");
}

static void test_cnn_run(void) {
  check_run(cnn_spec(), "classifier");
}

static void test_refused(void) {
  qt_err err = {0};
  qt_run_t *run = NULL;
  /* No head in the checkpoint: Co-Tuning cannot have a source head. */
  qt_run_spec s = vit_spec();
  s.checkpoint = headless_path;
  s.cotuning_reg = 0.5;
  CU_ASSERT_EQUAL(qt_run_init(&s, &run, &err), QT_EINVAL);
  CU_ASSERT(strstr(err.msg, "head") != NULL);
  CU_ASSERT_PTR_NULL(run);
  s.cotuning_reg = 0.0; /* off: the head-less checkpoint is fine */
  CU_ASSERT_EQUAL(qt_run_init(&s, &run, &err), 0);
  qt_run_free(run);
  run = NULL;
  s = vit_spec();
  s.cotuning_reg = -1.0;
  CU_ASSERT_EQUAL(qt_run_init(&s, &run, &err), QT_EINVAL);
  s.cotuning_reg = NAN;
  CU_ASSERT_EQUAL(qt_run_init(&s, &run, &err), QT_EINVAL);
  s.cotuning_reg = 1.0;
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "opt", "goodfit", &err), 0);
  CU_ASSERT_EQUAL(qt_run_spec_supported(&s, &err), QT_ENOTIMPL);
  CU_ASSERT_EQUAL(qt_run_init(&s, &run, &err), QT_ENOTIMPL);
  CU_ASSERT_PTR_NULL(run);
  /* A classifier behind a head MLP (the nsfwjs import's layout): refused as
   * not implemented from the checkpoint's header alone, so searches drop it. */
  char mlp_path[512];
  qt_test_temp_path("cotuning-head-mlp.safetensors", mlp_path, sizeof mlp_path);
  float values[4] = {0};
  size_t shape[2] = {2, 2};
  qt_safetensors_tensor t[2] = {{"head_mlp.0.weight", QT_DTYPE_F32, 2, shape, values, NULL},
                                {"classifier.weight", QT_DTYPE_F32, 2, shape, values, NULL}};
  CU_ASSERT_EQUAL_FATAL(qt_safetensors_write(mlp_path, t, 2, NULL, 0, &err), 0);
  qt_run_spec m = cnn_spec();
  m.checkpoint = mlp_path;
  CU_ASSERT_EQUAL(qt_run_cotuning_supported(&m, &err), 0); /* Co-Tuning off */
  m.cotuning_reg = 1.0;
  CU_ASSERT_EQUAL(qt_run_cotuning_supported(&m, &err), QT_ENOTIMPL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "head MLP"));
  m.checkpoint = MOBILENET;
  CU_ASSERT_EQUAL(qt_run_cotuning_supported(&m, &err), 0);
  remove(mlp_path);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "cotuning_reg", "2", &err), 0);
  QT_ASSERT_CLOSE(s.cotuning_reg, 2.0, 0.0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "cotuning_reg", "x", &err), QT_EINVAL);
}

static void test_cleanup(void) {
  qt_dataset_free(splits.train);
  qt_dataset_free(splits.val);
  splits.train = splits.val = NULL;
  remove(vit_path);
  remove(headless_path);
}

static const qt_test_case cases[] = {
    {"relationship_hand", test_relationship_hand},
    {"source_logits", test_source_logits},
    {"penalty_values", test_penalty_values},
    {"penalty_finite_differences", test_penalty_finite_differences},
    {"penalty_finite_differences_mixed", test_penalty_finite_differences_mixed},
    {"vit_run", test_vit_run},
    {"vit_run_mixed", test_vit_run_mixed},
    {"cnn_run", test_cnn_run},
    {"refused", test_refused},
    {"cleanup", test_cleanup},
    {NULL, NULL}};

QT_TEST_MAIN("cotuning", cases)

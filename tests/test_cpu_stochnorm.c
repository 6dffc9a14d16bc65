/*
 * test_cpu_stochnorm.c - StochNorm's batch norm (qt_cpu_stochnorm_forward /
 * _backward, specs/algorithms.md section 6): per channel, select 1 is batch
 * norm in TRAIN mode and select 0 is EVAL mode (running statistics from
 * before the step), while the running statistics update as in TRAIN for
 * every channel.
 *
 * The checks:
 *   - select all 1 equals qt_cpu_batchnorm_* in TRAIN mode bit for bit
 *     (output, saved statistics, running statistics, all three gradients);
 *   - select all 0 equals EVAL mode bit for bit (output, gradients), and
 *     its running statistics equal TRAIN's;
 *   - a mixed select equals, channel by channel, the mode it picked;
 *   - by hand: a select-0 channel normalizes with the running statistics
 *     from before the update, then updates them;
 *   - the float backward of a mixed select equals central finite
 *     differences of a double reference of the loss sum(out * R), as the
 *     batch norm tests of test_finetune_cnn.c: step 1e-6, error scaled by
 *     1 + |g| below 1e-4 (the reference is exact to about 1e-9; what is left
 *     is float rounding over a few dozen terms, below 1e-5).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune.h"
#include "qt_test.h"

#define BACKWARD_TOL 1e-4
#define FORWARD_TOL 1e-5
#define FD_STEP 1e-6

/* xorshift64*, so the suite needs no RNG state from the library. */
static unsigned long long rng_state = 0x2545F4914F6CDD1Dull;

static double uniform(double lo, double hi) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  unsigned long long r = rng_state * 2685821657736338717ull;
  return lo + (hi - lo) * (double)(r >> 11) / 9007199254740992.0;
}

static float *uniform_floats(size_t n, double lo, double hi) {
  float *v = calloc(n ? n : 1, sizeof(float));
  for (size_t i = 0; i < n; i++) v[i] = (float)uniform(lo, hi);
  return v;
}

/* ------------------------------------------------------------------------- */
/* Against batch norm, channel by channel                                     */
/* ------------------------------------------------------------------------- */

enum { BATCH = 3, CHANNELS = 5, HW = 7, N = BATCH * CHANNELS * HW };

/* One problem and the results of one forward + backward on it. */
typedef struct bn_inputs {
  float *x, *w, *b, *dy, *rm, *rv; /* x, dy (BATCH, CHANNELS, HW); the rest (CHANNELS) */
} bn_inputs;

typedef struct bn_results {
  float out[N], mean[CHANNELS], rstd[CHANNELS], rm[CHANNELS], rv[CHANNELS];
  float dx[N], dw[CHANNELS], db[CHANNELS];
} bn_results;

static bn_inputs inputs_new(void) {
  bn_inputs in;
  in.x = uniform_floats(N, -2, 3);
  in.w = uniform_floats(CHANNELS, 0.5, 1.5);
  in.b = uniform_floats(CHANNELS, -1, 1);
  in.dy = uniform_floats(N, -1, 1);
  in.rm = uniform_floats(CHANNELS, -0.5, 0.5);
  in.rv = uniform_floats(CHANNELS, 0.5, 2.0);
  return in;
}

static void inputs_free(bn_inputs *in) {
  free(in->x);
  free(in->w);
  free(in->b);
  free(in->dy);
  free(in->rm);
  free(in->rv);
}

/* select NULL: qt_cpu_batchnorm_* in `mode`; else qt_cpu_stochnorm_*. The
 * gradients start from a nonzero value to check that the ops add. */
static void run_op(const bn_inputs *in, const unsigned char *select, qt_batchnorm_mode mode,
                   bn_results *r) {
  memcpy(r->rm, in->rm, sizeof r->rm);
  memcpy(r->rv, in->rv, sizeof r->rv);
  for (size_t i = 0; i < N; i++) r->dx[i] = 0.25f;
  for (size_t i = 0; i < CHANNELS; i++) r->dw[i] = r->db[i] = -0.5f;
  if (select) {
    qt_cpu_stochnorm_forward(r->out, r->mean, r->rstd, r->rm, r->rv, in->x, in->w, in->b, select,
                             BATCH, CHANNELS, HW, 1e-5f, 0.1f);
    qt_cpu_stochnorm_backward(r->dx, r->dw, r->db, in->dy, in->x, in->w, r->mean, r->rstd, select,
                              BATCH, CHANNELS, HW);
  } else {
    qt_cpu_batchnorm_forward(r->out, r->mean, r->rstd, r->rm, r->rv, in->x, in->w, in->b, BATCH,
                             CHANNELS, HW, 1e-5f, 0.1f, mode);
    qt_cpu_batchnorm_backward(r->dx, r->dw, r->db, in->dy, in->x, in->w, r->mean, r->rstd, BATCH,
                              CHANNELS, HW, mode);
  }
}

/* Counts the channels ch where a and b differ in any per-channel value of
 * the forward (out, mean, rstd) and backward (dx, dw, db) (exact
 * comparison), and separately in the running statistics. */
static void compare_channel(const bn_results *a, const bn_results *b, size_t ch, int *forward_diff,
                            int *running_diff) {
  int differ = a->mean[ch] != b->mean[ch] || a->rstd[ch] != b->rstd[ch] || a->dw[ch] != b->dw[ch] ||
               a->db[ch] != b->db[ch];
  for (size_t n = 0; n < BATCH; n++)
    for (size_t p = 0; p < HW; p++) {
      size_t i = (n * CHANNELS + ch) * HW + p;
      if (a->out[i] != b->out[i] || a->dx[i] != b->dx[i]) differ = 1;
    }
  *forward_diff += differ;
  *running_diff += a->rm[ch] != b->rm[ch] || a->rv[ch] != b->rv[ch];
}

static void test_select_all_one_is_train(void) {
  bn_inputs in = inputs_new();
  unsigned char ones[CHANNELS];
  memset(ones, 1, sizeof ones);
  bn_results *s = malloc(sizeof *s), *t = malloc(sizeof *t);
  run_op(&in, ones, QT_BATCHNORM_MODE_TRAIN, s);
  run_op(&in, NULL, QT_BATCHNORM_MODE_TRAIN, t);
  int forward_diff = 0, running_diff = 0;
  for (size_t ch = 0; ch < CHANNELS; ch++) compare_channel(s, t, ch, &forward_diff, &running_diff);
  CU_ASSERT_EQUAL(forward_diff, 0);
  CU_ASSERT_EQUAL(running_diff, 0);
  /* The running statistics did move (else the check above says nothing). */
  CU_ASSERT(s->rm[0] != in.rm[0] && s->rv[0] != in.rv[0]);
  free(s);
  free(t);
  inputs_free(&in);
}

static void test_select_all_zero_is_eval(void) {
  bn_inputs in = inputs_new();
  unsigned char zeros[CHANNELS] = {0};
  bn_results *s = malloc(sizeof *s), *e = malloc(sizeof *e), *t = malloc(sizeof *t);
  run_op(&in, zeros, QT_BATCHNORM_MODE_TRAIN, s);
  run_op(&in, NULL, QT_BATCHNORM_MODE_EVAL, e);
  run_op(&in, NULL, QT_BATCHNORM_MODE_TRAIN, t);
  int eval_forward = 0, eval_running = 0, train_forward = 0, train_running = 0;
  for (size_t ch = 0; ch < CHANNELS; ch++) {
    compare_channel(s, e, ch, &eval_forward, &eval_running);
    compare_channel(s, t, ch, &train_forward, &train_running);
  }
  /* Output and gradients as EVAL, running statistics as TRAIN. */
  CU_ASSERT_EQUAL(eval_forward, 0);
  CU_ASSERT_EQUAL(train_running, 0);
  /* And neither mode alone explains it. */
  CU_ASSERT_EQUAL(eval_running, CHANNELS);
  CU_ASSERT_EQUAL(train_forward, CHANNELS);
  free(s);
  free(e);
  free(t);
  inputs_free(&in);
}

static void test_mixed_select_per_channel(void) {
  bn_inputs in = inputs_new();
  unsigned char select[CHANNELS] = {1, 0, 0, 1, 0};
  bn_results *s = malloc(sizeof *s), *e = malloc(sizeof *e), *t = malloc(sizeof *t);
  run_op(&in, select, QT_BATCHNORM_MODE_TRAIN, s);
  run_op(&in, NULL, QT_BATCHNORM_MODE_EVAL, e);
  run_op(&in, NULL, QT_BATCHNORM_MODE_TRAIN, t);
  for (size_t ch = 0; ch < CHANNELS; ch++) {
    int forward_diff = 0, running_diff = 0, ignored = 0;
    compare_channel(s, select[ch] ? t : e, ch, &forward_diff, &ignored);
    compare_channel(s, t, ch, &ignored, &running_diff);
    if (forward_diff) fprintf(stderr, "channel %zu differs from its mode\n", ch);
    CU_ASSERT_EQUAL(forward_diff, 0);
    CU_ASSERT_EQUAL(running_diff, 0);
  }
  free(s);
  free(e);
  free(t);
  inputs_free(&in);
}

/* One channel of 1, 2, 3, 4 (batch 2, hw 2), running mean 0 and variance
 * 1, momentum 0.1, select 0: the output uses the running statistics from
 * before the update, x / sqrt(1 + 1e-5); they then update as PyTorch's
 * train mode: mean 0.1 * 2.5 = 0.25, variance 0.9 + 0.1 * 5/3 (unbiased).
 * The backward is the affine map: dx = w dy / sqrt(1 + 1e-5), dw = sum(dy
 * xhat), db = sum(dy). */
static void test_running_branch_by_hand(void) {
  float x[4] = {1, 2, 3, 4}, out[4], mean, rstd, rm = 0.0f, rv = 1.0f, w = 2.0f, b = 0.5f;
  unsigned char select = 0;
  qt_cpu_stochnorm_forward(out, &mean, &rstd, &rm, &rv, x, &w, &b, &select, 2, 1, 2, 1e-5f, 0.1f);
  double r = 1.0 / sqrt(1.0 + 1e-5);
  for (int i = 0; i < 4; i++) CU_ASSERT_DOUBLE_EQUAL(out[i], x[i] * r * 2.0 + 0.5, 1e-6);
  CU_ASSERT_DOUBLE_EQUAL(mean, 0.0, 0.0);
  CU_ASSERT_DOUBLE_EQUAL(rstd, r, 1e-7);
  CU_ASSERT_DOUBLE_EQUAL(rm, 0.25, 1e-7);
  CU_ASSERT_DOUBLE_EQUAL(rv, 0.9 + 0.1 * 5.0 / 3.0, 1e-6);
  float dy[4] = {1, -1, 2, 0.5f}, dx[4] = {0}, dw = 0.0f, db = 0.0f;
  qt_cpu_stochnorm_backward(dx, &dw, &db, dy, x, &w, &mean, &rstd, &select, 2, 1, 2);
  for (int i = 0; i < 4; i++) CU_ASSERT_DOUBLE_EQUAL(dx[i], 2.0 * r * dy[i], 1e-6);
  CU_ASSERT_DOUBLE_EQUAL(dw, (1 * 1 - 2 + 3 * 2 + 4 * 0.5) * r, 1e-6);
  CU_ASSERT_DOUBLE_EQUAL(db, 2.5, 1e-6);
  /* Select 1 on the same input: batch mean 2.5, biased variance 1.25. */
  select = 1;
  rm = 0.0f;
  rv = 1.0f;
  qt_cpu_stochnorm_forward(out, &mean, &rstd, &rm, &rv, x, &w, &b, &select, 2, 1, 2, 1e-5f, 0.1f);
  CU_ASSERT_DOUBLE_EQUAL(out[0], -1.5 / sqrt(1.25 + 1e-5) * 2.0 + 0.5, 1e-6);
  CU_ASSERT_DOUBLE_EQUAL(rm, 0.25, 1e-7);
  CU_ASSERT_DOUBLE_EQUAL(rv, 0.9 + 0.1 * 5.0 / 3.0, 1e-6);
}

/* ------------------------------------------------------------------------- */
/* Finite differences on a mixed select                                       */
/* ------------------------------------------------------------------------- */

typedef struct fd_ctx {
  size_t batch, c, hw;
  const unsigned char *select;
  double eps;
  double *x, *w, *b, *r, *rm, *rv; /* doubles of the float inputs */
  double *out;
} fd_ctx;

/* The definition in double: batch statistics (biased variance) where
 * select is 1, the running ones where it is 0; returns sum(out * R). */
static double fd_loss(void *ctx) {
  fd_ctx *k = ctx;
  size_t count = k->batch * k->hw;
  double loss = 0.0;
  for (size_t ch = 0; ch < k->c; ch++) {
    double m = k->rm[ch], var = k->rv[ch];
    if (k->select[ch]) {
      double sum = 0.0, sq = 0.0;
      for (size_t n = 0; n < k->batch; n++)
        for (size_t p = 0; p < k->hw; p++) sum += k->x[(n * k->c + ch) * k->hw + p];
      m = sum / (double)count;
      for (size_t n = 0; n < k->batch; n++)
        for (size_t p = 0; p < k->hw; p++) {
          double d = k->x[(n * k->c + ch) * k->hw + p] - m;
          sq += d * d;
        }
      var = sq / (double)count;
    }
    for (size_t n = 0; n < k->batch; n++)
      for (size_t p = 0; p < k->hw; p++) {
        size_t i = (n * k->c + ch) * k->hw + p;
        k->out[i] = (k->x[i] - m) / sqrt(var + k->eps) * k->w[ch] + k->b[ch];
        loss += k->out[i] * k->r[i];
      }
  }
  return loss;
}

static double *to_double(const float *v, size_t n) {
  double *d = malloc((n ? n : 1) * sizeof(double));
  for (size_t i = 0; i < n; i++) d[i] = v[i];
  return d;
}

/* Central differences of fd_loss over the n doubles at param against the
 * float analytic gradient; returns the largest error scaled by 1 + |g|. */
static double check_gradient(const char *name, fd_ctx *k, double *param, size_t n,
                             const float *analytic) {
  double worst = 0.0;
  for (size_t i = 0; i < n; i++) {
    double saved = param[i];
    param[i] = saved + FD_STEP;
    double up = fd_loss(k);
    param[i] = saved - FD_STEP;
    double down = fd_loss(k);
    param[i] = saved;
    double numeric = (up - down) / (2.0 * FD_STEP);
    double error = fabs(analytic[i] - numeric) / (1.0 + fabs(numeric));
    if (error > worst) worst = error;
    if (error > BACKWARD_TOL)
      fprintf(stderr, "%s[%zu]: analytic %.9g, finite differences %.9g\n", name, i,
              (double)analytic[i], numeric);
  }
  fprintf(stderr, "  %-16s max scaled error %.2e over %zu values\n", name, worst, n);
  CU_ASSERT(worst <= BACKWARD_TOL);
  return worst;
}

static void test_mixed_select_finite_differences(void) {
  enum { B = 2, C = 6, P = 9, M = B * C * P };
  unsigned char select[C] = {0, 1, 1, 0, 1, 0};
  float *x = uniform_floats(M, -2, 3), *w = uniform_floats(C, 0.5, 1.5);
  float *b = uniform_floats(C, -1, 1), *r = uniform_floats(M, -1, 1);
  float *rm = uniform_floats(C, -0.5, 0.5), *rv = uniform_floats(C, 0.5, 2.0);
  fd_ctx k = {.batch = B, .c = C, .hw = P, .select = select, .eps = 1e-5};
  k.x = to_double(x, M);
  k.w = to_double(w, C);
  k.b = to_double(b, C);
  k.r = to_double(r, M);
  k.rm = to_double(rm, C);
  k.rv = to_double(rv, C);
  k.out = calloc(M, sizeof(double));
  float out[M], mean[C], rstd[C], dx[M] = {0}, dw[C] = {0}, db[C] = {0};
  qt_cpu_stochnorm_forward(out, mean, rstd, rm, rv, x, w, b, select, B, C, P, 1e-5f, 0.1f);
  qt_cpu_stochnorm_backward(dx, dw, db, r, x, w, mean, rstd, select, B, C, P);
  fprintf(stderr, "\nstochnorm, select 0 1 1 0 1 0\n");
  /* The forward against the reference (which uses the running statistics
   * from before the update, kept in k.rm / k.rv). */
  fd_loss(&k);
  double worst = 0.0;
  for (size_t i = 0; i < M; i++) {
    double e = fabs(out[i] - k.out[i]) / (1.0 + fabs(k.out[i]));
    if (e > worst) worst = e;
  }
  fprintf(stderr, "  %-16s max scaled error %.2e\n", "forward", worst);
  CU_ASSERT(worst <= FORWARD_TOL);
  check_gradient("dinp", &k, k.x, M, dx);
  check_gradient("dweight", &k, k.w, C, dw);
  check_gradient("dbias", &k, k.b, C, db);
  free(x);
  free(w);
  free(b);
  free(r);
  free(rm);
  free(rv);
  free(k.x);
  free(k.w);
  free(k.b);
  free(k.r);
  free(k.rm);
  free(k.rv);
  free(k.out);
}

/* dinp, dweight and dbias may each be NULL, as for batch norm. */
static void test_null_gradients(void) {
  bn_inputs in = inputs_new();
  unsigned char select[CHANNELS] = {1, 0, 1, 0, 1};
  bn_results *s = malloc(sizeof *s);
  run_op(&in, select, QT_BATCHNORM_MODE_TRAIN, s);
  float dx[N];
  memset(dx, 0, sizeof dx);
  qt_cpu_stochnorm_backward(dx, NULL, NULL, in.dy, in.x, in.w, s->mean, s->rstd, select, BATCH,
                            CHANNELS, HW);
  /* run_op started dx at 0.25: the same gradient plus that offset. */
  for (size_t i = 0; i < N; i++) CU_ASSERT_DOUBLE_EQUAL(dx[i] + 0.25f, s->dx[i], 1e-6);
  float dw[CHANNELS] = {0};
  qt_cpu_stochnorm_backward(NULL, dw, NULL, in.dy, in.x, in.w, s->mean, s->rstd, select, BATCH,
                            CHANNELS, HW);
  for (size_t i = 0; i < CHANNELS; i++) CU_ASSERT_DOUBLE_EQUAL(dw[i] - 0.5f, s->dw[i], 1e-6);
  free(s);
  inputs_free(&in);
}

static const qt_test_case cases[] = {
    {"select all 1 equals batch norm TRAIN", test_select_all_one_is_train},
    {"select all 0 equals EVAL, running stats as TRAIN", test_select_all_zero_is_eval},
    {"mixed select equals each channel's mode", test_mixed_select_per_channel},
    {"running branch by hand", test_running_branch_by_hand},
    {"mixed select finite differences", test_mixed_select_finite_differences},
    {"NULL gradients", test_null_gradients},
    {NULL, NULL},
};

QT_TEST_MAIN("cpu_stochnorm", cases)

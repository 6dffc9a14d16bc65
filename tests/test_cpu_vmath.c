/*
 * test_cpu_vmath.c - the vectorizable e^x and normal CDF of
 * src/finetune/cpu/qt_cpu_vmath.h, against libm in double:
 *   - qt_vexpf over every 7th float from -110 to 90 (320 million, the
 *     subnormal results included): within 2 ulp of exp rounded to float
 *     where that is normal, within 2 of the smallest subnormal's steps
 *     below; NaN, the infinities, the edges of overflow and underflow,
 *     and the zeros by hand;
 *   - qt_vphif over every 7th float from -16 to 10: within 1.5e-7
 *     absolute everywhere, within 1e-6 relative where Phi >= 1e-30;
 *   - the loops that use them, which the compiler vectorizes (the CPU's
 *     GELU forward and backward in qt_cpu_gelu.c, SiLU's in qt_cpu_act.c,
 *     the softmax forward and backward of qt_cpu_vmath.c, with their row
 *     sums in qt_cpu_sums.h's order; the linear's and layer scale's
 *     column sums), give, bit for bit, what the same
 *     formulas give one value at a time through a function pointer (never
 *     vectorized): vector and scalar code compute the same floats, in
 *     whichever copy (AVX-512, AVX2, SSE2) this processor runs.
 * The maxima measured are printed.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/cpu/qt_cpu_sums.h"
#include "finetune/cpu/qt_cpu_vmath.h"
#include "finetune/qt_finetune.h"
#include "qt_test.h"

#define STRIDE 7

static int32_t bits_of(float f) {
  int32_t i;
  memcpy(&i, &f, sizeof i);
  return i;
}

/* Distance in representable floats between two finite non-negative
 * floats. */
static int64_t ulps_apart(float a, float b) {
  return llabs((int64_t)bits_of(a) - (int64_t)bits_of(b));
}

/* Calls through a volatile pointer are never inlined into a loop, so the
 * loops below that use them run one value at a time. */
static float vexpf_one(float x) {
  return qt_vexpf(x);
}
static float vphif_one(float x) {
  return qt_vphif(x);
}
static float (*volatile exp_one)(float) = vexpf_one;
static float (*volatile phi_one)(float) = vphif_one;

/* The same bits, or both NaN: which operand's NaN an operation passes on
 * (its sign included) is the compiler's choice of operand order, so it
 * differs between builds (seen: a Debug build's SiLU step). */
static int same_value(float a, float b) {
  return memcmp(&a, &b, sizeof a) == 0 || (isnan(a) && isnan(b));
}

/* Calls visit(x, ctx) for every STRIDE-th float by magnitude (bit
 * pattern) from 0 down to -below and up to above; returns how many. */
static long sweep(float below, float above, void (*visit)(float x, void *ctx), void *ctx) {
  long count = 0;
  for (int side = 0; side < 2; side++) {
    int32_t last = bits_of(side == 0 ? below : above);
    for (int32_t b = 0; b <= last; b += STRIDE, count++)
      visit(side == 0 ? -qt__float_bits(b) : qt__float_bits(b), ctx);
  }
  return count;
}

typedef struct exp_errors {
  int64_t normal, sub; /* ulp, and subnormal steps */
  float at_normal, at_sub;
  int overflow_wrong;
} exp_errors;

static void visit_exp(float x, void *ctx) {
  exp_errors *e = ctx;
  float got = exp_one(x), want = (float)exp((double)x);
  if (isinf(want)) {
    e->overflow_wrong += !(isinf(got) && got > 0);
    return;
  }
  int64_t d = ulps_apart(got, want);
  if (want >= FLT_MIN && d > e->normal) e->normal = d, e->at_normal = x;
  if (want < FLT_MIN && d > e->sub) e->sub = d, e->at_sub = x;
}

static void test_exp_accuracy(void) {
  exp_errors e = {0};
  long checked = sweep(110.0f, 90.0f, visit_exp, &e);
  printf(
      "\n    e^x: %ld floats, at most %lld ulp (x = %.9g) for normal results, %lld steps "
      "(x = %.9g) for subnormal ones\n",
      checked, (long long)e.normal, e.at_normal, (long long)e.sub, e.at_sub);
  CU_ASSERT(e.normal <= 2);
  CU_ASSERT(e.sub <= 2);
  CU_ASSERT_EQUAL(e.overflow_wrong, 0);
}

static void test_exp_special_values(void) {
  CU_ASSERT(isnan(qt_vexpf(NAN)));
  CU_ASSERT(isinf(qt_vexpf(INFINITY)) && qt_vexpf(INFINITY) > 0);
  CU_ASSERT(qt_vexpf(-INFINITY) == 0.0f);
  CU_ASSERT(qt_vexpf(0.0f) == 1.0f);
  CU_ASSERT(qt_vexpf(-0.0f) == 1.0f);
  CU_ASSERT(qt_vexpf(-104.5f) == 0.0f);
  CU_ASSERT(qt_vexpf(-1000.0f) == 0.0f);
  CU_ASSERT(isinf(qt_vexpf(88.8f)));
  CU_ASSERT(isinf(qt_vexpf(1000.0f)));
  /* The largest finite result, and the smallest subnormal's neighbourhood. */
  CU_ASSERT(isfinite(qt_vexpf(88.72f)) && qt_vexpf(88.72f) > 3.3e38f);
  CU_ASSERT(qt_vexpf(-103.0f) > 0.0f && qt_vexpf(-103.0f) < 1e-44f);
  CU_ASSERT(qt_vexpf(1.0f) == (float)M_E);
}

typedef struct phi_errors {
  double abs, rel;
  float at_abs, at_rel;
} phi_errors;

static void visit_phi(float x, void *ctx) {
  phi_errors *e = ctx;
  double got = phi_one(x), want = 0.5 * erfc(-(double)x / sqrt(2.0));
  double d = fabs(got - want);
  if (d > e->abs) e->abs = d, e->at_abs = x;
  if (want >= 1e-30 && d / want > e->rel) e->rel = d / want, e->at_rel = x;
}

static void test_phi_accuracy(void) {
  phi_errors e = {0};
  long checked = sweep(16.0f, 10.0f, visit_phi, &e);
  printf("\n    Phi: %ld floats, at most %.3g absolute (x = %.9g), %.3g relative (x = %.9g)\n",
         checked, e.abs, e.at_abs, e.rel, e.at_rel);
  CU_ASSERT(e.abs <= 1.5e-7);
  CU_ASSERT(e.rel <= 1e-6);
}

static void test_phi_special_values(void) {
  CU_ASSERT(isnan(qt_vphif(NAN)));
  CU_ASSERT(qt_vphif(INFINITY) == 1.0f);
  CU_ASSERT(qt_vphif(-INFINITY) == 0.0f);
  CU_ASSERT(fabsf(qt_vphif(0.0f) - 0.5f) <= 6e-8f);
  CU_ASSERT(fabsf(qt_vphif(-0.0f) - 0.5f) <= 6e-8f);
  CU_ASSERT(qt_vphif(-20.0f) == 0.0f);
  CU_ASSERT(qt_vphif(20.0f) == 1.0f);
  /* The lower tail keeps its relative accuracy: Phi(-5) = 2.8665157e-7. */
  CU_ASSERT(fabs(qt_vphif(-5.0f) / 2.866515718791939e-7 - 1.0) < 1e-6);
}

/* The GELU loops, vectorized in the library, against the same formulas
 * one value at a time: the same bits, over values that cover the tails,
 * zeros, and non-finite inputs. */
static void test_gelu_vector_equals_scalar(void) {
  enum { N = 4099 };
  float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y), *dy = malloc(N * sizeof *dy);
  float *dx = malloc(N * sizeof *dx);
  CU_ASSERT_PTR_NOT_NULL_FATAL(x && y && dy && dx);
  for (int i = 0; i < N; i++) {
    x[i] = -20.0f + 40.0f * (float)i / (N - 1) + 1e-3f * (float)(i % 7);
    dy[i] = 0.25f + (float)(i % 5);
    dx[i] = (float)(i % 3);
  }
  x[0] = NAN, x[1] = INFINITY, x[2] = -INFINITY, x[3] = 0.0f, x[4] = -0.0f, x[5] = 1e-30f;
  qt_cpu_gelu_forward(y, x, N);
  qt_cpu_gelu_backward(dx, dy, x, N);
  int same_out = 1, same_grad = 1;
  for (int i = 0; i < N; i++) {
    float cdf = phi_one(x[i]);
    float want_y = x[i] * cdf;
    float pdf = 0.39894228040143267794f * exp_one(-0.5f * x[i] * x[i]);
    float want_dx = (float)(i % 3) + dy[i] * (cdf + x[i] * pdf);
    if (!same_value(want_y, y[i])) {
      if (same_out) printf("\n    GELU(%.9g): %.9g, one at a time %.9g\n", x[i], y[i], want_y);
      same_out = 0;
    }
    if (!same_value(want_dx, dx[i])) {
      if (same_grad)
        printf("\n    GELU'(%.9g) step: %.9g, one at a time %.9g\n", x[i], dx[i], want_dx);
      same_grad = 0;
    }
  }
  CU_ASSERT(same_out);
  CU_ASSERT(same_grad);
  /* GELU(0) = 0 with its sign, GELU(-inf) = -inf * 0: NaN, as 0.5 x (1 + erf) gives. */
  CU_ASSERT(y[3] == 0.0f && isnan(y[0]) && isinf(y[1]) && isnan(y[2]));
  free(x);
  free(y);
  free(dy);
  free(dx);
}

/* SiLU, x / (1 + e^-x), forward and backward, against one value at a
 * time. */
static void test_silu_vector_equals_scalar(void) {
  enum { N = 2053 };
  float x[N], y[N], dy[N], dx[N];
  for (int i = 0; i < N; i++) {
    x[i] = -100.0f + 200.0f * (float)i / (N - 1) + 1e-3f * (float)(i % 5);
    dy[i] = 0.5f - (float)(i % 3);
    dx[i] = (float)(i % 4);
  }
  x[0] = NAN, x[1] = INFINITY, x[2] = -INFINITY, x[3] = 0.0f, x[4] = -0.0f;
  qt_cpu_silu_forward(y, x, N);
  qt_cpu_silu_backward(dx, dy, x, N);
  int same = 1;
  for (int i = 0; i < N; i++) {
    float sig = 1.0f / (1.0f + exp_one(-x[i]));
    float want_y = x[i] / (1.0f + exp_one(-x[i]));
    float want_dx = (float)(i % 4) + dy[i] * sig * (1.0f + x[i] * (1.0f - sig));
    if (!same_value(want_y, y[i]) || !same_value(want_dx, dx[i])) {
      if (same)
        printf("\n    SiLU(%.9g): %.9g, one at a time %.9g; step %.9g, one at a time %.9g\n", x[i],
               y[i], want_y, dx[i], want_dx);
      same = 0;
    }
  }
  CU_ASSERT(same);
  /* SiLU(-inf) = -inf / inf: NaN, as x / (1 + expf(-x)) gives. */
  CU_ASSERT(isnan(y[0]) && isinf(y[1]) && isnan(y[2]) && y[3] == 0.0f);
}

/* sum of x[0, n) in double one value at a time, in the order qt_cpu_sums.h
 * defines: QT_SUM_LANES parts of every QT_SUM_LANES-th value, added in
 * turn, then the values past the last whole group. With b, the products
 * a b. */
static double lane_order_sum(const float *a, const float *b, size_t n) {
  double part[QT_SUM_LANES] = {0.0}, sum = 0.0;
  size_t whole = n - n % QT_SUM_LANES;
  for (size_t i = 0; i < whole; i++) part[i % QT_SUM_LANES] += b ? (double)a[i] * b[i] : a[i];
  for (int l = 0; l < QT_SUM_LANES; l++) sum += part[l];
  for (size_t i = whole; i < n; i++) sum += b ? (double)a[i] * b[i] : a[i];
  return sum;
}

/* The softmax forward and backward (qt__cpu_softmax_rows and
 * qt__cpu_softmax_backward_rows, the attention's), against one value at a
 * time: rows as long as ViT-B/16's 197 tokens, one shorter than the
 * lanes, one of a single score, a row with -inf (its e^x is 0) and one
 * with a NaN (all NaN). The forward also against the softmax in double. */
static void test_softmax_vector_equals_scalar(void) {
  enum { ROWS = 4, T = 197 };
  static const size_t lengths[] = {T, 5, 1};
  float a[ROWS * T], da[ROWS * T], want[ROWS * T], want_da[ROWS * T];
  int same = 1, same_grad = 1;
  double worst = 0.0;
  for (size_t k = 0; k < sizeof lengths / sizeof lengths[0]; k++) {
    size_t n = lengths[k];
    for (size_t i = 0; i < ROWS * n; i++) {
      a[i] = 9.0f * sinf(0.37f * (float)i) + 0.01f * (float)(i % 13);
      da[i] = cosf(0.11f * (float)i) - 0.25f;
    }
    if (n > 2) a[2 * n + 1] = -INFINITY, a[3 * n + n / 2] = NAN;
    for (size_t r = 0; r < ROWS; r++) {
      const float *x = a + r * n;
      float *w = want + r * n;
      float max = x[0];
      for (size_t j = 1; j < n; j++) max = x[j] > max ? x[j] : max;
      for (size_t j = 0; j < n; j++) w[j] = exp_one(x[j] - max);
      float inv = (float)(1.0 / lane_order_sum(w, NULL, n));
      double exact_sum = 0.0;
      for (size_t j = 0; j < n; j++) exact_sum += exp((double)x[j] - max);
      for (size_t j = 0; j < n; j++) {
        w[j] *= inv;
        double exact = exp((double)x[j] - max) / exact_sum;
        if (isfinite(exact)) worst = fmax(worst, fabs(w[j] - exact) / (exact + 1e-30));
      }
      float dot = (float)lane_order_sum(w, da + r * n, n);
      for (size_t j = 0; j < n; j++) want_da[r * n + j] = w[j] * (da[r * n + j] - dot);
    }
    qt__cpu_softmax_rows(a, ROWS, n);
    qt__cpu_softmax_backward_rows(da, a, ROWS, n);
    for (size_t i = 0; i < ROWS * n; i++) {
      same &= same_value(a[i], want[i]);
      same_grad &= same_value(da[i], want_da[i]);
    }
    if (n == 1) CU_ASSERT(a[0] == 1.0f && da[0] == 0.0f);
    if (n > 2) {
      CU_ASSERT(a[2 * n + 1] == 0.0f && isnan(a[3 * n]) && isnan(da[3 * n]));
      CU_ASSERT(isfinite(a[2 * n]) && isfinite(da[2 * n]));
    }
  }
  printf("\n    softmax: at most %.3g relative to the softmax in double\n", worst);
  CU_ASSERT(same);
  CU_ASSERT(same_grad);
  /* x - max is rounded to float first, as every float softmax does: an
   * error of up to |x - max| 2^-24 in the exponent, about 1.1e-6 relative
   * where the scores span 18, as here; e^x, the sum's reciprocal and the
   * product add a few ulp. */
  CU_ASSERT(worst < 2e-6);
}

/* The linear's bias gradient and the layer scale's (qt__add_column_sums),
 * walked QT_COLUMN_BLOCK columns at a time, against one column at a time:
 * the same sums, bit for bit. 150 columns: two whole blocks and part of
 * a third. */
static void test_column_sums_equal_one_column_at_a_time(void) {
  enum { N = 37, C = 150 };
  static float dout[N * C], branch[N * C];
  float dbias[C], dgamma[C], want_bias[C], want_gamma[C];
  for (int i = 0; i < N * C; i++) {
    dout[i] = sinf(0.7f * (float)i) * (1.0f + (float)(i % 17));
    branch[i] = cosf(0.3f * (float)i);
  }
  for (int j = 0; j < C; j++) {
    dbias[j] = want_bias[j] = 0.5f * (float)(j % 3);
    dgamma[j] = want_gamma[j] = -0.25f * (float)(j % 5);
    double sum = 0.0, sum_product = 0.0;
    for (int i = 0; i < N; i++) {
      sum += dout[i * C + j];
      sum_product += (double)dout[i * C + j] * branch[i * C + j];
    }
    want_bias[j] += (float)sum;
    want_gamma[j] += (float)sum_product;
  }
  qt_cpu_linear_backward(NULL, NULL, dbias, dout, NULL, NULL, N, 0, C);
  qt_cpu_residual_backward(NULL, NULL, dgamma, dout, branch, NULL, N, C);
  CU_ASSERT(memcmp(dbias, want_bias, sizeof dbias) == 0);
  CU_ASSERT(memcmp(dgamma, want_gamma, sizeof dgamma) == 0);
}

static const qt_test_case cases[] = {
    {"exp_accuracy", test_exp_accuracy},
    {"exp_special_values", test_exp_special_values},
    {"phi_accuracy", test_phi_accuracy},
    {"phi_special_values", test_phi_special_values},
    {"gelu_vector_equals_scalar", test_gelu_vector_equals_scalar},
    {"softmax_vector_equals_scalar", test_softmax_vector_equals_scalar},
    {"silu_vector_equals_scalar", test_silu_vector_equals_scalar},
    {"column_sums_equal_one_column_at_a_time", test_column_sums_equal_one_column_at_a_time},
    {NULL, NULL},
};

QT_TEST_MAIN("cpu_vmath", cases)

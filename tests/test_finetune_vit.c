/*
 * test_finetune_vit.c - the CPU layer ops and the ViT model of the engine.
 *
 * Layers. Each op's backward is checked against central finite differences
 * of a double-precision reference of its forward, written here as plain
 * loops (libgp's way): the float forward must match the double reference
 * within float rounding, and the float backward must match the finite
 * differences of the double reference. Differencing in double (step 1e-6)
 * leaves a truncation and rounding error near 1e-9, so what the tolerance
 * absorbs is only the float rounding of the op itself: errors are measured
 * as max |analytic - numeric| / max |numeric| over a tensor and must stay
 * below 1e-5 (float epsilon is 6e-8; the ops sum at most a few dozen terms).
 *
 * Model. Golden numbers from PyTorch (tools/make-vit-fixture.py, fixtures in
 * tests/fixtures/vit/): logits, loss, every parameter gradient, and every
 * parameter after three AdamW steps, for a ViT checkpoint at its own image
 * size and a DeiT III checkpoint (layer scale, no_embed_class, no qkv bias)
 * fine-tuned at another image size (position embedding resampled). The
 * measured differences are printed; tolerances are stated at each check.
 */
#include "finetune/qt_finetune.h"
#include "qt_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FIXTURES QT_SOURCE_DIR "/tests/fixtures/vit/"

/* ------------------------------------------------------------------------- */
/* Helpers                                                                    */
/* ------------------------------------------------------------------------- */

/* A fixed pseudo-random sequence (xorshift), so the tests need no RNG. */
static unsigned long long rng_state = 88172645463325252ull;

static double next_uniform(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (double)(rng_state >> 11) / 9007199254740992.0;
}

/* n values in [-scale, scale], as float and as the same values in double. */
static void random_fill(float *f, double *d, size_t n, double scale) {
  for (size_t i = 0; i < n; i++) {
    f[i] = (float)((2.0 * next_uniform() - 1.0) * scale);
    if (d) d[i] = f[i];
  }
}

static double max_abs(const double *x, size_t n) {
  double m = 0.0;
  for (size_t i = 0; i < n; i++) m = fmax(m, fabs(x[i]));
  return m;
}

/* max |a - b| / max |b| (b the reference); 0 when both are all zeros. */
static double rel_error_fd(const float *a, const double *b, size_t n) {
  double diff = 0.0, scale = max_abs(b, n);
  for (size_t i = 0; i < n; i++) diff = fmax(diff, fabs((double)a[i] - b[i]));
  return scale > 0 ? diff / scale : diff;
}

static double rel_error_ff(const float *a, const float *b, size_t n) {
  double diff = 0.0, scale = 0.0;
  for (size_t i = 0; i < n; i++) {
    diff = fmax(diff, fabs((double)a[i] - b[i]));
    scale = fmax(scale, fabs((double)b[i]));
  }
  return scale > 0 ? diff / scale : diff;
}

static void report(const char *what, double error, double tolerance) {
  printf("\n    %-44s %.2e (tolerance %.0e)", what, error, tolerance);
  if (!(error <= tolerance)) CU_FAIL(what);
}

/* The scalar a layer's gradient check differentiates: sum_i R_i y_i of the
 * double reference's outputs y, recomputed by `eval` from the double inputs
 * (which the checker perturbs in place). */
typedef double (*eval_fn)(void *ctx);

/* Central differences of eval with respect to x[0..n), step h (relative to
 * the value, at least h). */
static void numeric_grad(double *x, size_t n, eval_fn eval, void *ctx, double *out) {
  for (size_t i = 0; i < n; i++) {
    double saved = x[i], h = 1e-6 * fmax(1.0, fabs(saved));
    x[i] = saved + h;
    double plus = eval(ctx);
    x[i] = saved - h;
    double minus = eval(ctx);
    x[i] = saved;
    out[i] = (plus - minus) / (2.0 * h);
  }
}

/* Checks analytic (float, n) against the finite differences of eval with
 * respect to x. */
static void check_grad(const char *what, double *x, size_t n, const float *analytic, eval_fn eval,
                       void *ctx) {
  double *numeric = malloc(n * sizeof *numeric);
  CU_ASSERT_PTR_NOT_NULL_FATAL(numeric);
  numeric_grad(x, n, eval, ctx, numeric);
  report(what, rel_error_fd(analytic, numeric, n), 1e-5);
  free(numeric);
}

static double weighted_sum(const double *y, const float *r, size_t n) {
  double s = 0.0;
  for (size_t i = 0; i < n; i++) s += y[i] * r[i];
  return s;
}

/* ------------------------------------------------------------------------- */
/* Linear                                                                     */
/* ------------------------------------------------------------------------- */

enum { LN_N = 5, LN_IN = 7, LN_OUT = 6 };

typedef struct linear_ctx {
  double x[LN_N * LN_IN], w[LN_OUT * LN_IN], b[LN_OUT];
  float r[LN_N * LN_OUT];
} linear_ctx;

static void linear_ref(const linear_ctx *c, double *y) {
  for (size_t i = 0; i < LN_N; i++)
    for (size_t o = 0; o < LN_OUT; o++) {
      double s = c->b[o];
      for (size_t k = 0; k < LN_IN; k++) s += c->x[i * LN_IN + k] * c->w[o * LN_IN + k];
      y[i * LN_OUT + o] = s;
    }
}

static double linear_eval(void *ctx) {
  double y[LN_N * LN_OUT];
  linear_ref(ctx, y);
  return weighted_sum(y, ((linear_ctx *)ctx)->r, LN_N * LN_OUT);
}

static void test_linear(void) {
  linear_ctx c;
  float x[LN_N * LN_IN], w[LN_OUT * LN_IN], b[LN_OUT], y[LN_N * LN_OUT];
  random_fill(x, c.x, LN_N * LN_IN, 1.0);
  random_fill(w, c.w, LN_OUT * LN_IN, 1.0);
  random_fill(b, c.b, LN_OUT, 1.0);
  random_fill(c.r, NULL, LN_N * LN_OUT, 1.0);
  qt_cpu_linear_forward(y, x, w, b, LN_N, LN_IN, LN_OUT);
  double ref[LN_N * LN_OUT];
  linear_ref(&c, ref);
  report("linear forward", rel_error_fd(y, ref, LN_N * LN_OUT), 1e-6);

  /* Gradients accumulate: start from known values and subtract them. */
  float dx[LN_N * LN_IN], dw[LN_OUT * LN_IN], db[LN_OUT];
  for (size_t i = 0; i < LN_N * LN_IN; i++) dx[i] = 1.0f;
  memset(dw, 0, sizeof dw);
  memset(db, 0, sizeof db);
  qt_cpu_linear_backward(dx, dw, db, c.r, x, w, LN_N, LN_IN, LN_OUT);
  for (size_t i = 0; i < LN_N * LN_IN; i++) dx[i] -= 1.0f;
  check_grad("linear d input", c.x, LN_N * LN_IN, dx, linear_eval, &c);
  check_grad("linear d weight", c.w, LN_OUT * LN_IN, dw, linear_eval, &c);
  check_grad("linear d bias", c.b, LN_OUT, db, linear_eval, &c);

  /* Without a bias the output is the bare product; NULL gradients skip. */
  float y0[LN_N * LN_OUT];
  qt_cpu_linear_forward(y0, x, w, NULL, LN_N, LN_IN, LN_OUT);
  for (size_t i = 0; i < LN_N; i++)
    for (size_t o = 0; o < LN_OUT; o++)
      CU_ASSERT_DOUBLE_EQUAL(y0[i * LN_OUT + o] + b[o], y[i * LN_OUT + o], 1e-5);
  float dw2[LN_OUT * LN_IN] = {0};
  qt_cpu_linear_backward(NULL, dw2, NULL, c.r, x, w, LN_N, LN_IN, LN_OUT);
  CU_ASSERT_EQUAL(memcmp(dw, dw2, sizeof dw), 0);
}

/* ------------------------------------------------------------------------- */
/* Layer norm                                                                 */
/* ------------------------------------------------------------------------- */

enum { NORM_N = 4, NORM_C = 9 };

typedef struct norm_ctx {
  double x[NORM_N * NORM_C], w[NORM_C], b[NORM_C];
  float r[NORM_N * NORM_C];
} norm_ctx;

static void norm_ref(const norm_ctx *c, double *y) {
  for (size_t i = 0; i < NORM_N; i++) {
    const double *x = c->x + i * NORM_C;
    double m = 0, v = 0;
    for (size_t j = 0; j < NORM_C; j++) m += x[j] / NORM_C;
    for (size_t j = 0; j < NORM_C; j++) v += (x[j] - m) * (x[j] - m) / NORM_C;
    for (size_t j = 0; j < NORM_C; j++)
      y[i * NORM_C + j] = (x[j] - m) / sqrt(v + 1e-6) * c->w[j] + c->b[j];
  }
}

static double norm_eval(void *ctx) {
  double y[NORM_N * NORM_C];
  norm_ref(ctx, y);
  return weighted_sum(y, ((norm_ctx *)ctx)->r, NORM_N * NORM_C);
}

static void test_layernorm(void) {
  norm_ctx c;
  float x[NORM_N * NORM_C], w[NORM_C], b[NORM_C], y[NORM_N * NORM_C], mean[NORM_N], rstd[NORM_N];
  random_fill(x, c.x, NORM_N * NORM_C, 2.0);
  /* An offset row: the variance must not cancel against a large mean. */
  for (size_t j = 0; j < NORM_C; j++) {
    x[j] += 100.0f;
    c.x[j] = x[j];
  }
  random_fill(w, c.w, NORM_C, 1.0);
  random_fill(b, c.b, NORM_C, 1.0);
  random_fill(c.r, NULL, NORM_N * NORM_C, 1.0);
  qt_cpu_layernorm_forward(y, mean, rstd, x, w, b, NORM_N, NORM_C, 1e-6f);
  double ref[NORM_N * NORM_C];
  norm_ref(&c, ref);
  report("layernorm forward", rel_error_fd(y, ref, NORM_N * NORM_C), 1e-5);
  float dx[NORM_N * NORM_C] = {0}, dw[NORM_C] = {0}, db[NORM_C] = {0};
  qt_cpu_layernorm_backward(dx, dw, db, c.r, x, w, mean, rstd, NORM_N, NORM_C);
  check_grad("layernorm d input", c.x, NORM_N * NORM_C, dx, norm_eval, &c);
  check_grad("layernorm d weight", c.w, NORM_C, dw, norm_eval, &c);
  check_grad("layernorm d bias", c.b, NORM_C, db, norm_eval, &c);
}

/* ------------------------------------------------------------------------- */
/* GELU                                                                       */
/* ------------------------------------------------------------------------- */

enum { GELU_N = 41 };

typedef struct gelu_ctx {
  double x[GELU_N];
  float r[GELU_N];
} gelu_ctx;

static double gelu_eval(void *ctx) {
  gelu_ctx *c = ctx;
  double s = 0.0;
  for (size_t i = 0; i < GELU_N; i++)
    s += c->r[i] * 0.5 * c->x[i] * (1.0 + erf(c->x[i] / sqrt(2.0)));
  return s;
}

static void test_gelu(void) {
  gelu_ctx c;
  float x[GELU_N], y[GELU_N], dx[GELU_N] = {0};
  /* -5 .. 5 in steps of 0.25: both tails and the bend. */
  for (size_t i = 0; i < GELU_N; i++) {
    x[i] = -5.0f + 0.25f * (float)i;
    c.x[i] = x[i];
  }
  random_fill(c.r, NULL, GELU_N, 1.0);
  qt_cpu_gelu_forward(y, x, GELU_N);
  /* Hand-checked values: GELU(0) = 0, GELU(1) = Phi(1) = 0.841344746. */
  CU_ASSERT_DOUBLE_EQUAL(y[20], 0.0, 1e-12);
  CU_ASSERT_DOUBLE_EQUAL(y[24], 0.8413447460685429, 1e-6);
  double err = 0.0;
  for (size_t i = 0; i < GELU_N; i++)
    err = fmax(err, fabs(y[i] - 0.5 * c.x[i] * (1.0 + erf(c.x[i] / sqrt(2.0)))));
  report("gelu forward (absolute)", err, 1e-6);
  qt_cpu_gelu_backward(dx, c.r, x, GELU_N);
  check_grad("gelu d input", c.x, GELU_N, dx, gelu_eval, &c);
  /* In place: out may be the input. */
  qt_cpu_gelu_forward(x, x, GELU_N);
  CU_ASSERT_EQUAL(memcmp(x, y, sizeof y), 0);
}

/* ------------------------------------------------------------------------- */
/* Attention                                                                  */
/* ------------------------------------------------------------------------- */

enum { AT_B = 2, AT_T = 5, AT_C = 8, AT_H = 2 };

typedef struct attention_ctx {
  double qkv[AT_B * AT_T * 3 * AT_C];
  float r[AT_B * AT_T * AT_C];
} attention_ctx;

static void attention_ref(const double *qkv, double *y) {
  size_t hs = AT_C / AT_H;
  for (size_t b = 0; b < AT_B; b++)
    for (size_t h = 0; h < AT_H; h++)
      for (size_t i = 0; i < AT_T; i++) {
        double s[AT_T], max = -INFINITY, sum = 0.0;
        for (size_t j = 0; j < AT_T; j++) {
          double dot = 0.0;
          for (size_t d = 0; d < hs; d++)
            dot += qkv[(b * AT_T + i) * 3 * AT_C + h * hs + d] *
                   qkv[(b * AT_T + j) * 3 * AT_C + AT_C + h * hs + d];
          s[j] = dot / sqrt((double)hs);
          max = fmax(max, s[j]);
        }
        for (size_t j = 0; j < AT_T; j++) sum += (s[j] = exp(s[j] - max));
        for (size_t d = 0; d < hs; d++) {
          double acc = 0.0;
          for (size_t j = 0; j < AT_T; j++)
            acc += s[j] / sum * qkv[(b * AT_T + j) * 3 * AT_C + 2 * AT_C + h * hs + d];
          y[(b * AT_T + i) * AT_C + h * hs + d] = acc;
        }
      }
}

static double attention_eval(void *ctx) {
  attention_ctx *c = ctx;
  double y[AT_B * AT_T * AT_C];
  attention_ref(c->qkv, y);
  return weighted_sum(y, c->r, AT_B * AT_T * AT_C);
}

static void test_attention(void) {
  attention_ctx c;
  float qkv[AT_B * AT_T * 3 * AT_C], y[AT_B * AT_T * AT_C], att[AT_B * AT_H * AT_T * AT_T];
  random_fill(qkv, c.qkv, AT_B * AT_T * 3 * AT_C, 1.5);
  random_fill(c.r, NULL, AT_B * AT_T * AT_C, 1.0);
  qt_cpu_attention_forward(y, att, qkv, AT_B, AT_T, AT_C, AT_H);
  double ref[AT_B * AT_T * AT_C];
  attention_ref(c.qkv, ref);
  report("attention forward", rel_error_fd(y, ref, AT_B * AT_T * AT_C), 1e-5);
  /* Each attention row is a distribution. */
  for (size_t row = 0; row < AT_B * AT_H * AT_T; row++) {
    double sum = 0.0;
    for (size_t j = 0; j < AT_T; j++) sum += att[row * AT_T + j];
    CU_ASSERT_DOUBLE_EQUAL(sum, 1.0, 1e-6);
  }
  float dqkv[AT_B * AT_T * 3 * AT_C] = {0}, scratch[AT_T * AT_T];
  qt_cpu_attention_backward(dqkv, scratch, c.r, qkv, att, AT_B, AT_T, AT_C, AT_H);
  check_grad("attention d qkv", c.qkv, AT_B * AT_T * 3 * AT_C, dqkv, attention_eval, &c);
}

/* ------------------------------------------------------------------------- */
/* Residual with layer scale, tokens, patches                                 */
/* ------------------------------------------------------------------------- */

enum { RS_N = 3, RS_C = 5 };

typedef struct residual_ctx {
  double res[RS_N * RS_C], branch[RS_N * RS_C], gamma[RS_C];
  float r[RS_N * RS_C];
} residual_ctx;

static double residual_eval(void *ctx) {
  residual_ctx *c = ctx;
  double s = 0.0;
  for (size_t i = 0; i < RS_N; i++)
    for (size_t j = 0; j < RS_C; j++)
      s += c->r[i * RS_C + j] * (c->res[i * RS_C + j] + c->gamma[j] * c->branch[i * RS_C + j]);
  return s;
}

static void test_residual(void) {
  residual_ctx c;
  float res[RS_N * RS_C], branch[RS_N * RS_C], gamma[RS_C], out[RS_N * RS_C];
  random_fill(res, c.res, RS_N * RS_C, 1.0);
  random_fill(branch, c.branch, RS_N * RS_C, 1.0);
  random_fill(gamma, c.gamma, RS_C, 1.0);
  random_fill(c.r, NULL, RS_N * RS_C, 1.0);
  qt_cpu_residual_forward(out, res, branch, gamma, RS_N, RS_C);
  for (size_t i = 0; i < RS_N * RS_C; i++)
    CU_ASSERT_EQUAL(out[i], res[i] + gamma[i % RS_C] * branch[i]);
  float dres[RS_N * RS_C] = {0}, dbranch[RS_N * RS_C] = {0}, dgamma[RS_C] = {0};
  qt_cpu_residual_backward(dres, dbranch, dgamma, c.r, branch, gamma, RS_N, RS_C);
  check_grad("residual d res", c.res, RS_N * RS_C, dres, residual_eval, &c);
  check_grad("residual d branch", c.branch, RS_N * RS_C, dbranch, residual_eval, &c);
  check_grad("residual d gamma", c.gamma, RS_C, dgamma, residual_eval, &c);
  /* Without layer scale the branch passes as it is. */
  qt_cpu_residual_forward(out, res, branch, NULL, RS_N, RS_C);
  for (size_t i = 0; i < RS_N * RS_C; i++) CU_ASSERT_EQUAL(out[i], res[i] + branch[i]);
}

enum { TK_B = 2, TK_N = 4, TK_C = 3 };

typedef struct tokens_ctx {
  double patches[TK_B * TK_N * TK_C], cls[TK_C], pos[(TK_N + 1) * TK_C];
  int class_in_pos;
  float r[TK_B * (TK_N + 1) * TK_C];
} tokens_ctx;

static double tokens_eval(void *ctx) {
  tokens_ctx *c = ctx;
  double s = 0.0;
  size_t shift = c->class_in_pos ? TK_C : 0;
  for (size_t b = 0; b < TK_B; b++)
    for (size_t t = 0; t <= TK_N; t++)
      for (size_t j = 0; j < TK_C; j++) {
        double v =
            t == 0 ? c->cls[j] + (c->class_in_pos ? c->pos[j] : 0.0)
                   : c->patches[(b * TK_N + t - 1) * TK_C + j] + c->pos[shift + (t - 1) * TK_C + j];
        s += c->r[(b * (TK_N + 1) + t) * TK_C + j] * v;
      }
  return s;
}

static void test_tokens(void) {
  for (int class_in_pos = 0; class_in_pos <= 1; class_in_pos++) {
    tokens_ctx c;
    c.class_in_pos = class_in_pos;
    size_t pos_n = (TK_N + (size_t)class_in_pos) * TK_C;
    float patches[TK_B * TK_N * TK_C], cls[TK_C], pos[(TK_N + 1) * TK_C];
    float x[TK_B * (TK_N + 1) * TK_C];
    random_fill(patches, c.patches, TK_B * TK_N * TK_C, 1.0);
    random_fill(cls, c.cls, TK_C, 1.0);
    random_fill(pos, c.pos, pos_n, 1.0);
    random_fill(c.r, NULL, TK_B * (TK_N + 1) * TK_C, 1.0);
    qt_cpu_tokens_forward(x, patches, cls, pos, class_in_pos, TK_B, TK_N, TK_C);
    /* Token 0 of image 1 is the class token (+ its position), token 3 is
     * patch 2 plus its position. */
    size_t shift = class_in_pos ? TK_C : 0;
    CU_ASSERT_EQUAL(x[(TK_N + 1) * TK_C + 1], cls[1] + (class_in_pos ? pos[1] : 0.0f));
    CU_ASSERT_EQUAL(x[((TK_N + 1) + 3) * TK_C + 2],
                    patches[(TK_N + 2) * TK_C + 2] + pos[shift + 2 * TK_C + 2]);
    float dpatches[TK_B * TK_N * TK_C] = {0}, dcls[TK_C] = {0}, dpos[(TK_N + 1) * TK_C] = {0};
    qt_cpu_tokens_backward(dpatches, dcls, dpos, c.r, class_in_pos, TK_B, TK_N, TK_C);
    check_grad(class_in_pos ? "tokens d patches" : "tokens d patches (no_embed_class)", c.patches,
               TK_B * TK_N * TK_C, dpatches, tokens_eval, &c);
    check_grad(class_in_pos ? "tokens d cls_token" : "tokens d cls_token (no_embed_class)", c.cls,
               TK_C, dcls, tokens_eval, &c);
    check_grad(class_in_pos ? "tokens d pos_embed" : "tokens d pos_embed (no_embed_class)", c.pos,
               pos_n, dpos, tokens_eval, &c);
  }
}

/* Patchify is a permutation: check it element by element against the
 * convolution's indexing. */
static void test_patchify(void) {
  enum { B = 2, CH = 3, S = 6, P = 3, G = S / P };
  float images[B * CH * S * S], patches[B * G * G * CH * P * P];
  for (size_t i = 0; i < B * CH * S * S; i++) images[i] = (float)i;
  qt_cpu_patchify(patches, images, B, CH, S, P);
  int ok = 1;
  for (size_t b = 0; b < B; b++)
    for (size_t gy = 0; gy < G; gy++)
      for (size_t gx = 0; gx < G; gx++)
        for (size_t ch = 0; ch < CH; ch++)
          for (size_t i = 0; i < P; i++)
            for (size_t j = 0; j < P; j++) {
              float want = images[((b * CH + ch) * S + gy * P + i) * S + gx * P + j];
              float got = patches[((b * G + gy) * G + gx) * CH * P * P + (ch * P + i) * P + j];
              ok &= want == got;
            }
  CU_ASSERT(ok);
}

/* ------------------------------------------------------------------------- */
/* Cross-entropy                                                              */
/* ------------------------------------------------------------------------- */

enum { CE_B = 4, CE_K = 5 };

typedef struct ce_ctx {
  double z[CE_B * CE_K];
  const int *labels;
  const float *soft;
  double smoothing;
  float w[CE_B]; /* per-row weights: the gradient of each row's loss */
} ce_ctx;

static double ce_ref_row(const ce_ctx *c, size_t b) {
  const double *z = c->z + b * CE_K;
  double max = z[0], sum = 0.0, loss = 0.0;
  for (size_t k = 1; k < CE_K; k++) max = fmax(max, z[k]);
  for (size_t k = 0; k < CE_K; k++) sum += exp(z[k] - max);
  for (size_t k = 0; k < CE_K; k++) {
    double t = c->soft ? c->soft[b * CE_K + k]
                       : c->smoothing / CE_K + ((size_t)c->labels[b] == k ? 1.0 - c->smoothing : 0);
    loss -= t * (z[k] - max - log(sum));
  }
  return loss;
}

static double ce_eval(void *ctx) {
  ce_ctx *c = ctx;
  double s = 0.0;
  for (size_t b = 0; b < CE_B; b++) s += c->w[b] * ce_ref_row(c, b);
  return s;
}

static void test_cross_entropy(void) {
  static const int labels[CE_B] = {0, 4, 2, 2};
  float soft[CE_B * CE_K];
  for (size_t b = 0; b < CE_B; b++) {
    /* Mixup-like targets: two classes mixed 0.7 / 0.3. */
    memset(soft + b * CE_K, 0, CE_K * sizeof *soft);
    soft[b * CE_K + b % CE_K] += 0.7f;
    soft[b * CE_K + (b + 2) % CE_K] += 0.3f;
  }
  for (int mode = 0; mode < 3; mode++) {
    ce_ctx c;
    float z[CE_B * CE_K], losses[CE_B], probs[CE_B * CE_K], dz[CE_B * CE_K] = {0};
    random_fill(z, c.z, CE_B * CE_K, 3.0);
    random_fill(c.w, NULL, CE_B, 1.0);
    c.labels = labels;
    c.soft = mode == 2 ? soft : NULL;
    c.smoothing = mode == 1 ? 0.1 : 0.0;
    qt_cpu_cross_entropy_forward(losses, probs, z, labels, c.soft, (float)c.smoothing, CE_B, CE_K);
    double err = 0.0;
    for (size_t b = 0; b < CE_B; b++) err = fmax(err, fabs(losses[b] - ce_ref_row(&c, b)));
    const char *names[][2] = {
        {"cross-entropy loss (absolute)", "cross-entropy d logits"},
        {"smoothed cross-entropy loss (absolute)", "smoothed cross-entropy d logits"},
        {"soft-target cross-entropy loss (absolute)", "soft-target cross-entropy d logits"}};
    report(names[mode][0], err, 1e-6);
    qt_cpu_cross_entropy_backward(dz, probs, labels, c.soft, (float)c.smoothing, c.w, 1, CE_B,
                                  CE_K);
    check_grad(names[mode][1], c.z, CE_B * CE_K, dz, ce_eval, &c);
  }
  /* A hand-computed value: two equal logits, label 0, smoothing 0.2 ->
   * loss = log 2 (every target mass sees probability 1/2). */
  float z2[2] = {1.5f, 1.5f}, loss, p[2];
  int label = 0;
  qt_cpu_cross_entropy_forward(&loss, p, z2, &label, NULL, 0.2f, 1, 2);
  CU_ASSERT_DOUBLE_EQUAL(loss, log(2.0), 1e-7);
  CU_ASSERT_DOUBLE_EQUAL(p[1], 0.5, 1e-7);
}

/* ------------------------------------------------------------------------- */
/* Golden fixtures                                                            */
/* ------------------------------------------------------------------------- */

/* Reads a whole F32 tensor of an open file into a new array. */
static float *read_tensor(const qt_safetensors_t *st, const char *name, size_t *n) {
  qt_safetensors_info info;
  qt_err err;
  if (qt_safetensors_lookup(st, name, &info, &err) != 0) {
    fprintf(stderr, "\n  %s\n", err.msg);
    return NULL;
  }
  float *data = malloc((info.numel ? info.numel : 1) * sizeof *data);
  if (!data || qt_safetensors_read_f32(st, name, data, info.numel, &err) != 0) {
    free(data);
    return NULL;
  }
  if (n) *n = info.numel;
  return data;
}

static double metadata_number(const qt_safetensors_t *st, const char *key) {
  const char *value = qt_safetensors_metadata_get(st, key);
  CU_ASSERT_PTR_NOT_NULL_FATAL(value);
  return atof(value);
}

/* The key third of an attention's qkv bias has a zero gradient in exact
 * arithmetic (adding a constant to every key shifts each row of scores by
 * a constant, which the softmax ignores), so both PyTorch and qtune see
 * only rounding noise there, and Adam, which divides by the gradient's own
 * scale, turns that noise into steps of about lr in either direction. After
 * optimizer steps those elements are compared with a bound in units of lr
 * instead; *key_error receives their largest difference. */
static int is_key_bias(const char *name, size_t i, size_t numel) {
  size_t length = strlen(name), suffix = strlen("attn.qkv.bias");
  return length >= suffix && strcmp(name + length - suffix, "attn.qkv.bias") == 0 &&
         i >= numel / 3 && i < 2 * numel / 3;
}

/* Compares every model tensor with "<prefix><name>" of the expected file;
 * returns the largest relative error (max |a - e| / max |e| per tensor),
 * key biases apart when key_error is not NULL. */
static double compare_tensors(const qt_vit_t *vit, const qt_safetensors_t *expected,
                              const char *prefix, int grads, const char **worst,
                              double *key_error) {
  double largest = 0.0;
  for (size_t i = 0; i < qt_vit_tensor_count(vit); i++) {
    qt_vit_tensor t;
    qt_vit_tensor_at(vit, i, &t);
    char name[128];
    snprintf(name, sizeof name, "%s%s", prefix, t.name);
    size_t n = 0;
    float *want = read_tensor(expected, name, &n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(want);
    CU_ASSERT_EQUAL_FATAL(n, t.numel);
    const float *got = grads ? t.grad : t.data;
    double diff = 0.0, scale = 0.0;
    for (size_t k = 0; k < n; k++) {
      double d = fabs((double)got[k] - want[k]);
      scale = fmax(scale, fabs((double)want[k]));
      if (key_error && is_key_bias(t.name, k, n))
        *key_error = fmax(*key_error, d);
      else
        diff = fmax(diff, d);
    }
    double e = scale > 0 ? diff / scale : diff;
    if (e > largest) {
      largest = e;
      if (worst) *worst = t.name;
    }
    free(want);
  }
  return largest;
}

/* Loads `name`.safetensors for fine-tuning at the expected file's image
 * size, checks logits, loss and gradients of batch 0, then three AdamW
 * steps. */
static void golden_case(const char *name, qt_model_family family) {
  char ckpt[512], exp_path[512];
  snprintf(ckpt, sizeof ckpt, FIXTURES "%s.safetensors", name);
  snprintf(exp_path, sizeof exp_path, FIXTURES "%s_expected.safetensors", name);
  qt_err err;
  qt_safetensors_t *expected = NULL;
  int rc = qt_safetensors_open(exp_path, &expected, &err);
  if (rc != 0) fprintf(stderr, "\n  %s\n", err.msg);
  CU_ASSERT_EQUAL_FATAL(rc, 0);

  size_t batch = (size_t)metadata_number(expected, "batch");
  qt_vit_load_params lp = qt_vit_default_load_params();
  lp.family = family;
  lp.heads = (long)metadata_number(expected, "heads");
  lp.image_size = (long)metadata_number(expected, "image_size");
  lp.max_batch = batch;
  qt_vit_t *vit = NULL;
  rc = qt_vit_load(ckpt, &lp, &vit, &err);
  if (rc != 0) fprintf(stderr, "\n  %s\n", err.msg);
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  const qt_vit_config *cf = qt_vit_get_config(vit);
  size_t classes = (size_t)cf->num_classes;
  char what[128];

  /* A resampled position embedding matches timm's. */
  if (qt_safetensors_find(expected, "pos_embed.resampled", NULL) == 0) {
    size_t n;
    float *want = read_tensor(expected, "pos_embed.resampled", &n);
    qt_vit_tensor pos;
    CU_ASSERT_EQUAL_FATAL(qt_vit_find_tensor(vit, "pos_embed", &pos), 0);
    CU_ASSERT_EQUAL_FATAL(pos.numel, n);
    snprintf(what, sizeof what, "%s: pos_embed resampled", name);
    report(what, rel_error_ff(pos.data, want, n), 1e-6);
    free(want);
  }

  qt_adamw_params hp = qt_adamw_default_params();
  hp.lr = metadata_number(expected, "lr");
  hp.weight_decay = metadata_number(expected, "weight_decay");
  hp.beta1 = metadata_number(expected, "beta1");
  hp.beta2 = metadata_number(expected, "beta2");
  hp.eps = metadata_number(expected, "eps");
  double smoothing = metadata_number(expected, "label_smoothing");

  for (int step = 0; step < 3; step++) {
    char key[32];
    size_t n;
    snprintf(key, sizeof key, "images.%d", step);
    float *images = read_tensor(expected, key, &n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(images);
    CU_ASSERT_EQUAL_FATAL(n, batch * 3 * (size_t)(cf->image_size * cf->image_size));
    snprintf(key, sizeof key, "labels.%d", step);
    float *label_values = read_tensor(expected, key, &n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(label_values);
    int labels[16];
    for (size_t b = 0; b < batch; b++) labels[b] = (int)label_values[b];

    double loss = 0.0;
    CU_ASSERT_EQUAL_FATAL(qt_vit_forward(vit, images, batch, &err), 0);
    CU_ASSERT_EQUAL_FATAL(qt_vit_loss(vit, labels, NULL, smoothing, &loss, &err), 0);
    qt_vit_zero_grad(vit);
    CU_ASSERT_EQUAL_FATAL(qt_vit_backward(vit, &err), 0);
    if (step == 0) {
      float *logits = read_tensor(expected, "logits", &n);
      CU_ASSERT_EQUAL_FATAL(n, batch * classes);
      snprintf(what, sizeof what, "%s: logits", name);
      report(what, rel_error_ff(qt_vit_logits(vit), logits, n), 1e-5);
      float *want_loss = read_tensor(expected, "loss", &n);
      snprintf(what, sizeof what, "%s: loss (relative)", name);
      report(what, fabs(loss - want_loss[0]) / fabs(want_loss[0]), 1e-6);
      const char *worst = "";
      double e = compare_tensors(vit, expected, "grad.", 1, &worst, NULL);
      snprintf(what, sizeof what, "%s: gradients (worst %s)", name, worst);
      report(what, e, 1e-5);
      free(logits);
      free(want_loss);
    }
    CU_ASSERT_EQUAL_FATAL(qt_vit_adamw_step(vit, &hp, &err), 0);
    free(images);
    free(label_values);
  }
  CU_ASSERT_EQUAL(qt_vit_step(vit), 3);
  const char *worst = "";
  double key_error = 0.0;
  double e = compare_tensors(vit, expected, "step3.", 0, &worst, &key_error);
  snprintf(what, sizeof what, "%s: after 3 AdamW steps (worst %s)", name, worst);
  report(what, e, 1e-5);
  /* Three steps of at most about lr each, in opposite directions. */
  snprintf(what, sizeof what, "%s: key biases after 3 steps, in lr", name);
  report(what, key_error / hp.lr, 6.0);
  qt_vit_free(vit);
  qt_safetensors_free(expected);
}

static void test_golden_vit(void) {
  golden_case("vit", QT_MODEL_FAMILY_VIT);
}

static void test_golden_deit3(void) {
  golden_case("deit3", QT_MODEL_FAMILY_DEIT3);
}

/* The resampling on its own, against F.interpolate on three grids. */
static void test_resample(void) {
  qt_err err;
  qt_safetensors_t *st = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_safetensors_open(FIXTURES "resample.safetensors", &st, &err), 0);
  const char *cases[] = {"up", "down", "mixed"};
  for (size_t i = 0; i < 3; i++) {
    char name[64];
    qt_safetensors_info in_info, out_info;
    snprintf(name, sizeof name, "%s.in", cases[i]);
    CU_ASSERT_EQUAL_FATAL(qt_safetensors_lookup(st, name, &in_info, &err), 0);
    float *in = read_tensor(st, name, NULL);
    snprintf(name, sizeof name, "%s.out", cases[i]);
    CU_ASSERT_EQUAL_FATAL(qt_safetensors_lookup(st, name, &out_info, &err), 0);
    float *want = read_tensor(st, name, NULL);
    size_t h = in_info.shape[0], w = in_info.shape[1], c = in_info.shape[2];
    size_t nh = out_info.shape[0], nw = out_info.shape[1];
    float *got = malloc(nh * nw * c * sizeof *got);
    float *scratch = malloc(h * nw * c * sizeof *scratch);
    qt_cpu_resample_bicubic(got, scratch, in, h, w, nh, nw, c);
    char what[64];
    snprintf(what, sizeof what, "resample %s (%zux%zu -> %zux%zu)", cases[i], h, w, nh, nw);
    report(what, rel_error_ff(got, want, nh * nw * c), 1e-6);
    free(in);
    free(want);
    free(got);
    free(scratch);
  }
  qt_safetensors_free(st);
}

/* ------------------------------------------------------------------------- */
/* The model object                                                           */
/* ------------------------------------------------------------------------- */

static qt_vit_config tiny_config(void) {
  qt_vit_config c = qt_vit_default_config();
  c.image_size = 8;
  c.patch_size = 4;
  c.width = 16;
  c.depth = 2;
  c.heads = 2;
  c.mlp_hidden = 64;
  c.num_classes = 3;
  return c;
}

/* Parameter count by hand, timm's initialization, and the table. */
static void test_init(void) {
  qt_rng_t *rng = NULL;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, 7, &err), 0);
  qt_vit_config c = tiny_config();
  qt_vit_t *vit = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_vit_init(&c, 4, rng, &vit, &err), 0);
  /* patch 16*48+16, cls 16, pos 5*16, per block 2*16 + 48*16+48 + 16*16+16
   * + 2*16 + 64*16+64 + 16*64+16 = 3280, norm 32, head 3*16+3: 7523, the
   * count PyTorch reports for the same model (tools/make-vit-fixture.py). */
  size_t want = 784 + 16 + 80 + 2 * 3280 + 32 + 51;
  CU_ASSERT_EQUAL(qt_vit_parameter_count(vit), want);
  CU_ASSERT_EQUAL(qt_vit_tensor_count(vit), 4 + 2 * 12 + 4);
  CU_ASSERT_EQUAL(qt_vit_max_batch(vit), 4);
  CU_ASSERT(qt_vit_activation_bytes(vit) > 0);
  qt_vit_tensor t;
  CU_ASSERT_EQUAL_FATAL(qt_vit_find_tensor(vit, "blocks.1.mlp.fc1.weight", &t), 0);
  CU_ASSERT_EQUAL(t.ndim, 2);
  CU_ASSERT_EQUAL(t.shape[0], 64);
  CU_ASSERT_EQUAL(t.shape[1], 16);
  CU_ASSERT_EQUAL(t.decay, 1);
  double sum = 0, sq = 0;
  for (size_t i = 0; i < t.numel; i++) {
    sum += t.data[i];
    sq += t.data[i] * t.data[i];
  }
  CU_ASSERT_DOUBLE_EQUAL(sqrt(sq / t.numel), 0.02, 0.002); /* trunc normal, std 0.02 */
  CU_ASSERT_DOUBLE_EQUAL(sum / t.numel, 0.0, 0.002);
  CU_ASSERT_EQUAL_FATAL(qt_vit_find_tensor(vit, "blocks.0.norm2.weight", &t), 0);
  CU_ASSERT_EQUAL(t.data[3], 1.0f);
  CU_ASSERT_EQUAL(t.decay, 0);
  CU_ASSERT_EQUAL_FATAL(qt_vit_find_tensor(vit, "pos_embed", &t), 0);
  CU_ASSERT_EQUAL(t.decay, 0);
  CU_ASSERT_EQUAL(t.shape[1], 5);
  CU_ASSERT_EQUAL_FATAL(qt_vit_find_tensor(vit, "head.bias", &t), 0);
  CU_ASSERT_EQUAL(t.data[0], 0.0f);
  CU_ASSERT_EQUAL(qt_vit_find_tensor(vit, "blocks.2.norm1.weight", &t), QT_ENOENT);
  CU_ASSERT_EQUAL(qt_vit_find_tensor(vit, "blocks.0.ls1.gamma", &t), QT_ENOENT);
  qt_vit_free(vit);

  /* Layer scale and no_embed_class change the table. */
  c.layer_scale = 1;
  c.no_embed_class = 1;
  c.layer_scale_init = 0.1;
  CU_ASSERT_EQUAL_FATAL(qt_vit_init(&c, 1, rng, &vit, &err), 0);
  CU_ASSERT_EQUAL(qt_vit_parameter_count(vit), want - 16 + 4 * 16);
  CU_ASSERT_EQUAL_FATAL(qt_vit_find_tensor(vit, "blocks.1.ls2.gamma", &t), 0);
  CU_ASSERT_DOUBLE_EQUAL(t.data[5], 0.1, 1e-7);
  qt_vit_free(vit);
  qt_vit_free(NULL);

  /* Configs that do not fit together. */
  const struct {
    long image, patch, width, heads;
    const char *message;
  } bad[] = {
      {8, 3, 16, 2, "image_size 8 is not a multiple of patch_size 3"},
      {8, 4, 16, 3, "3 heads do not divide the width 16"},
      {8, 4, 0, 2, "must all be >= 1"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    c = tiny_config();
    c.image_size = bad[i].image;
    c.patch_size = bad[i].patch;
    c.width = bad[i].width;
    c.heads = bad[i].heads;
    vit = (qt_vit_t *)&vit;
    CU_ASSERT_EQUAL(qt_vit_init(&c, 1, rng, &vit, &err), QT_EINVAL);
    CU_ASSERT_PTR_NULL(vit);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, bad[i].message));
  }
  c = tiny_config();
  CU_ASSERT_EQUAL(qt_vit_init(&c, 0, rng, &vit, &err), QT_EINVAL);
  c.image_size = 1l << 30;
  c.patch_size = 1;
  CU_ASSERT_EQUAL(qt_vit_init(&c, 1, rng, &vit, &err), QT_ENOMEM);
  qt_rng_free(rng);
}

/* Misuse is an error, not a crash. */
static void test_errors(void) {
  qt_rng_t *rng = NULL;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, 1, &err), 0);
  qt_vit_config c = tiny_config();
  qt_vit_t *vit = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_vit_init(&c, 2, rng, &vit, &err), 0);
  float images[3 * 3 * 8 * 8] = {0};
  int labels[2] = {0, 3};
  CU_ASSERT_EQUAL(qt_vit_loss(vit, labels, NULL, 0.0, NULL, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "no forward pass"));
  CU_ASSERT_EQUAL(qt_vit_backward(vit, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_vit_forward(vit, images, 3, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "batch 3 is not in [1, 2]"));
  CU_ASSERT_EQUAL(qt_vit_forward(vit, NULL, 1, &err), QT_EINVAL);
  CU_ASSERT_EQUAL_FATAL(qt_vit_forward(vit, images, 2, &err), 0);
  CU_ASSERT_EQUAL(qt_vit_loss(vit, labels, NULL, 0.0, NULL, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "label 3 of image 1 is not in [0, 3)"));
  labels[1] = 2;
  CU_ASSERT_EQUAL(qt_vit_loss(vit, labels, NULL, 1.0, NULL, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_vit_loss(vit, NULL, NULL, 0.0, NULL, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_vit_backward(vit, &err), QT_EINVAL);
  double loss;
  CU_ASSERT_EQUAL(qt_vit_loss(vit, labels, NULL, 0.0, &loss, &err), 0);
  /* All-zero images give equal logits up to the head: the loss is finite. */
  CU_ASSERT(isfinite(loss));
  CU_ASSERT_EQUAL(qt_vit_backward(vit, &err), 0);
  /* A bad learning rate changes nothing. */
  qt_adamw_params hp = qt_adamw_default_params();
  hp.lr = -1.0;
  CU_ASSERT_EQUAL(qt_vit_adamw_step(vit, &hp, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_vit_step(vit), 0);
  qt_vit_free(vit);

  qt_vit_load_params lp = qt_vit_default_load_params();
  CU_ASSERT_EQUAL(qt_vit_load(FIXTURES "vit.safetensors", &lp, &vit, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "the number of heads must be given"));
  lp.heads = 3;
  CU_ASSERT_EQUAL(qt_vit_load(FIXTURES "vit.safetensors", &lp, &vit, &err), QT_ESCHEMA);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "3 heads do not divide the width 16"));
  lp.heads = 2;
  lp.family = QT_MODEL_FAMILY_DEIT3;
  CU_ASSERT_EQUAL(qt_vit_load(FIXTURES "vit.safetensors", &lp, &vit, &err), QT_ESCHEMA);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "deit3 blocks have layer scale"));
  lp.family = QT_MODEL_FAMILY_RESNET;
  CU_ASSERT_EQUAL(qt_vit_load(FIXTURES "vit.safetensors", &lp, &vit, &err), QT_EINVAL);
  lp.family = QT_MODEL_FAMILY_VIT;
  lp.image_size = 10;
  CU_ASSERT_EQUAL(qt_vit_load(FIXTURES "vit.safetensors", &lp, &vit, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "image size 10 is not a multiple of its patch size 4"));
  lp.image_size = 0;
  lp.num_classes = 5; /* a new head needs an rng */
  CU_ASSERT_EQUAL(qt_vit_load(FIXTURES "vit.safetensors", &lp, &vit, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "needs an rng"));
  CU_ASSERT_EQUAL(qt_vit_load(FIXTURES "missing.safetensors", &lp, &vit, &err), QT_ENOENT);
  CU_ASSERT_PTR_NULL(vit);
  qt_rng_free(rng);
}

/* A new head for another class count: drawn as timm draws it, everything
 * else as in the checkpoint; save and load again gives the same model. */
static void test_new_head_and_save(void) {
  qt_rng_t *rng = NULL;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, 3, &err), 0);
  qt_vit_load_params lp = qt_vit_default_load_params();
  lp.heads = 2;
  lp.max_batch = 2;
  qt_vit_t *base = NULL, *vit = NULL, *again = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_vit_load(FIXTURES "vit.safetensors", &lp, &base, &err), 0);
  lp.num_classes = 10;
  lp.rng = rng;
  CU_ASSERT_EQUAL_FATAL(qt_vit_load(FIXTURES "vit.safetensors", &lp, &vit, &err), 0);
  CU_ASSERT_EQUAL(qt_vit_get_config(vit)->num_classes, 10);
  qt_vit_tensor a, b;
  CU_ASSERT_EQUAL_FATAL(qt_vit_find_tensor(vit, "head.weight", &a), 0);
  CU_ASSERT_EQUAL(a.shape[0], 10);
  double sq = 0;
  for (size_t i = 0; i < a.numel; i++) sq += a.data[i] * a.data[i];
  CU_ASSERT_DOUBLE_EQUAL(sqrt(sq / a.numel), 0.02, 0.006);
  CU_ASSERT_EQUAL_FATAL(qt_vit_find_tensor(vit, "head.bias", &a), 0);
  CU_ASSERT_EQUAL(a.data[9], 0.0f);
  CU_ASSERT_EQUAL_FATAL(qt_vit_find_tensor(vit, "blocks.1.attn.qkv.weight", &a), 0);
  CU_ASSERT_EQUAL_FATAL(qt_vit_find_tensor(base, "blocks.1.attn.qkv.weight", &b), 0);
  CU_ASSERT_EQUAL(memcmp(a.data, b.data, a.numel * sizeof *a.data), 0);

  char path[] = "/tmp/qt_test_vit_XXXXXX";
  int fd = mkstemp(path);
  CU_ASSERT_FATAL(fd >= 0);
  close(fd);
  CU_ASSERT_EQUAL_FATAL(qt_vit_save(vit, path, &err), 0);
  /* What was saved is a valid timm checkpoint of the ViT layout. */
  qt_model_summary s;
  CU_ASSERT_EQUAL(qt_model_inspect(path, QT_MODEL_FAMILY_VIT, NULL, &s, &err), 0);
  CU_ASSERT_EQUAL(s.num_classes, 10);
  CU_ASSERT_EQUAL(s.parameters, (double)qt_vit_parameter_count(vit));
  lp.num_classes = 0;
  lp.rng = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_vit_load(path, &lp, &again, &err), 0);
  unlink(path);
  CU_ASSERT_EQUAL(qt_vit_parameter_count(again), qt_vit_parameter_count(vit));
  for (size_t i = 0; i < qt_vit_tensor_count(vit); i++) {
    qt_vit_tensor_at(vit, i, &a);
    qt_vit_tensor_at(again, i, &b);
    CU_ASSERT_STRING_EQUAL(a.name, b.name);
    CU_ASSERT_EQUAL(memcmp(a.data, b.data, a.numel * sizeof *a.data), 0);
  }
  qt_vit_free(base);
  qt_vit_free(vit);
  qt_vit_free(again);
  qt_rng_free(rng);
}

/* The whole model's gradient against finite differences of its float loss,
 * at a few coordinates of every kind of tensor (layer scale and
 * no_embed_class included). Float forward passes limit this check to about
 * 1e-2 relative; the golden fixtures check the same numbers tightly. */
static void test_model_gradient(void) {
  qt_rng_t *rng = NULL;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, 11, &err), 0);
  qt_vit_config c = tiny_config();
  c.layer_scale = 1;
  c.no_embed_class = 1;
  c.layer_scale_init = 0.5;
  qt_vit_t *vit = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_vit_init(&c, 2, rng, &vit, &err), 0);
  /* Larger weights than timm's 0.02, so every path carries signal. */
  for (size_t i = 0; i < qt_vit_tensor_count(vit); i++) {
    qt_vit_tensor t;
    qt_vit_tensor_at(vit, i, &t);
    for (size_t k = 0; k < t.numel; k++) t.data[k] += (float)qt_rng_gaussian(rng, 0.3);
  }
  float images[2 * 3 * 8 * 8];
  random_fill(images, NULL, 2 * 3 * 8 * 8, 1.0);
  int labels[2] = {2, 0};
  double loss;
  CU_ASSERT_EQUAL_FATAL(qt_vit_forward(vit, images, 2, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_vit_loss(vit, labels, NULL, 0.1, &loss, &err), 0);
  qt_vit_zero_grad(vit);
  CU_ASSERT_EQUAL_FATAL(qt_vit_backward(vit, &err), 0);
  const char *names[] = {"patch_embed.proj.weight",
                         "patch_embed.proj.bias",
                         "cls_token",
                         "pos_embed",
                         "blocks.0.attn.qkv.weight",
                         "blocks.0.ls1.gamma",
                         "blocks.1.mlp.fc1.bias",
                         "blocks.1.norm2.weight",
                         "norm.bias",
                         "head.weight"};
  double worst = 0.0;
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    qt_vit_tensor t;
    CU_ASSERT_EQUAL_FATAL(qt_vit_find_tensor(vit, names[i], &t), 0);
    size_t k = (size_t)(next_uniform() * (double)t.numel);
    float saved = t.data[k], h = 1e-2f;
    double plus, minus;
    t.data[k] = saved + h;
    qt_vit_forward(vit, images, 2, &err);
    qt_vit_loss(vit, labels, NULL, 0.1, &plus, &err);
    t.data[k] = saved - h;
    qt_vit_forward(vit, images, 2, &err);
    qt_vit_loss(vit, labels, NULL, 0.1, &minus, &err);
    t.data[k] = saved;
    double numeric = (plus - minus) / (2.0 * h);
    double e = fabs(numeric - t.grad[k]) / fmax(fabs(numeric), 1e-2);
    worst = fmax(worst, e);
    if (e > 2e-2) fprintf(stderr, "\n  %s[%zu]: %g vs %g", names[i], k, t.grad[k], numeric);
  }
  report("model gradient vs float differences", worst, 2e-2);
  qt_vit_free(vit);
  qt_rng_free(rng);
}

static const qt_test_case cases[] = {
    {"linear forward and backward", test_linear},
    {"layer norm forward and backward", test_layernorm},
    {"GELU (erf) forward and backward", test_gelu},
    {"attention forward and backward", test_attention},
    {"residual with layer scale", test_residual},
    {"class token and position embedding", test_tokens},
    {"patch extraction", test_patchify},
    {"cross-entropy: labels, smoothing, soft targets", test_cross_entropy},
    {"bicubic resampling matches torch", test_resample},
    {"ViT: init, parameter table", test_init},
    {"ViT: misuse is an error", test_errors},
    {"ViT: new head, save and load", test_new_head_and_save},
    {"ViT: model gradient vs finite differences", test_model_gradient},
    {"ViT golden: logits, loss, gradients, 3 AdamW steps", test_golden_vit},
    {"DeiT III golden at another image size", test_golden_deit3},
    {NULL, NULL}};

QT_TEST_MAIN("finetune_vit", cases)

/*
 * test_surrogate.c - the exact Gaussian process (surrogate/qt_gp.c).
 *
 * Expected values come from two references that share no code with the
 * library: a straightforward C implementation in this file (kernels written
 * from their textbook formulas in r, an explicit Gauss-Jordan inverse and
 * determinant) and, for one case, numbers computed by the pure-Python script
 * quoted above test_closed_form_python. Gradients are checked against central
 * finite differences of the library's own loss.
 */
#include "surrogate/qt_surrogate.h"
#include "qt_test.h"

#include <math.h>
#include <string.h>

/* ------------------------------------------------------------------------- */
/* An independent reference implementation                                    */
/* ------------------------------------------------------------------------- */

#define REF_MAX 8 /* largest n of the reference */

static double ref_softplus(double x) {
  return x > 20.0 ? x : log(1.0 + exp(x));
}

/* k(a, b) from the formulas in r = ||a - b|| / l. */
static double ref_kernel(qt_gp_kernel kernel, const double *raw, const double *a, const double *b,
                         size_t d) {
  double s = ref_softplus(raw[QT_GP_HYPER_RAW_OUTPUTSCALE]);
  double l = ref_softplus(raw[QT_GP_HYPER_RAW_LENGTHSCALE]);
  double d2 = 0.0;
  for (size_t k = 0; k < d; k++) d2 += (a[k] - b[k]) * (a[k] - b[k]);
  double r = sqrt(d2) / l;
  if (kernel == QT_GP_KERNEL_RBF) return s * exp(-0.5 * r * r);
  return s * (1.0 + sqrt(5.0) * r + 5.0 * r * r / 3.0) * exp(-sqrt(5.0) * r);
}

/* Inverts the n x n matrix a (row-major, REF_MAX columns wide) by Gauss-Jordan
 * elimination with partial pivoting; returns the determinant. */
static double ref_inverse(size_t n, double a[REF_MAX][REF_MAX], double inv[REF_MAX][REF_MAX]) {
  double m[REF_MAX][2 * REF_MAX];
  for (size_t i = 0; i < n; i++) {
    for (size_t j = 0; j < n; j++) {
      m[i][j] = a[i][j];
      m[i][n + j] = (i == j) ? 1.0 : 0.0;
    }
  }
  double det = 1.0;
  for (size_t c = 0; c < n; c++) {
    size_t p = c;
    for (size_t r = c + 1; r < n; r++) {
      if (fabs(m[r][c]) > fabs(m[p][c])) p = r;
    }
    if (p != c) {
      for (size_t j = 0; j < 2 * n; j++) {
        double t = m[c][j];
        m[c][j] = m[p][j];
        m[p][j] = t;
      }
      det = -det;
    }
    double pivot = m[c][c];
    det *= pivot;
    for (size_t j = 0; j < 2 * n; j++) m[c][j] /= pivot;
    for (size_t r = 0; r < n; r++) {
      if (r == c) continue;
      double f = m[r][c];
      for (size_t j = 0; j < 2 * n; j++) m[r][j] -= f * m[c][j];
    }
  }
  for (size_t i = 0; i < n; i++) {
    for (size_t j = 0; j < n; j++) inv[i][j] = m[i][n + j];
  }
  return det;
}

/* The loss and the predictions of the closed form, for m test points. */
static void ref_gp(qt_gp_kernel kernel, const double *raw, const double *X, const double *y,
                   size_t n, size_t d, const double *X_test, size_t m, double *nll, double *mean,
                   double *var_predictive, double *var_latent) {
  double noise = ref_softplus(raw[QT_GP_HYPER_RAW_NOISE]) + 1e-4;
  double s = ref_softplus(raw[QT_GP_HYPER_RAW_OUTPUTSCALE]);
  double c0 = raw[QT_GP_HYPER_MEAN];
  double A[REF_MAX][REF_MAX], Ainv[REF_MAX][REF_MAX] = {{0.0}}, alpha[REF_MAX];
  for (size_t i = 0; i < n; i++) {
    for (size_t j = 0; j < n; j++) {
      A[i][j] = ref_kernel(kernel, raw, X + i * d, X + j * d, d) + (i == j ? noise : 0.0);
    }
  }
  double det = ref_inverse(n, A, Ainv);
  double quad = 0.0;
  for (size_t i = 0; i < n; i++) {
    alpha[i] = 0.0;
    for (size_t j = 0; j < n; j++) alpha[i] += Ainv[i][j] * (y[j] - c0);
    quad += (y[i] - c0) * alpha[i];
  }
  *nll = (0.5 * quad + 0.5 * log(det) + 0.5 * (double)n * log(2.0 * M_PI)) / (double)n;
  for (size_t t = 0; t < m; t++) {
    double ks[REF_MAX];
    for (size_t i = 0; i < n; i++) ks[i] = ref_kernel(kernel, raw, X + i * d, X_test + t * d, d);
    double mu = c0, explained = 0.0;
    for (size_t i = 0; i < n; i++) {
      mu += ks[i] * alpha[i];
      for (size_t j = 0; j < n; j++) explained += ks[i] * Ainv[i][j] * ks[j];
    }
    mean[t] = mu;
    var_latent[t] = s - explained;
    var_predictive[t] = s - explained + noise;
  }
}

/* ------------------------------------------------------------------------- */
/* Helpers                                                                    */
/* ------------------------------------------------------------------------- */

static qt_gp_t *make_gp(qt_gp_kernel kernel, size_t dim) {
  qt_gp_t *gp = NULL;
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_gp_init(&gp, kernel, dim, &err);
  if (rc != 0) fprintf(stderr, "qt_gp_init: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  return gp;
}

/* Conditions gp on (X, y) with the given raw hyperparameters; asserts success. */
static void setup(qt_gp_t *gp, const double *raw, const double *X, const double *y, size_t n) {
  qt_err err;
  qt_err_clear(&err);
  CU_ASSERT_EQUAL_FATAL(qt_gp_set_hypers(gp, raw, &err), 0);
  int rc = qt_gp_condition(gp, X, y, n, &err);
  if (rc != 0) fprintf(stderr, "qt_gp_condition: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
}

static double nll_of(qt_gp_t *gp) {
  qt_err err;
  qt_err_clear(&err);
  double loss = NAN;
  int rc = qt_gp_nll(gp, &loss, &err);
  if (rc != 0) fprintf(stderr, "qt_gp_nll: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL(rc, 0);
  return loss;
}

static void predict(qt_gp_t *gp, const double *X_test, size_t m, double *mean, double *var,
                    qt_gp_variance kind) {
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_gp_predict(gp, X_test, m, mean, var, kind, &err);
  if (rc != 0) fprintf(stderr, "qt_gp_predict: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
}

/* |a - b| relative to the larger magnitude (absolute below 1e-12). */
static double rel_error(double a, double b) {
  double scale = fmax(fmax(fabs(a), fabs(b)), 1e-12);
  return fabs(a - b) / scale;
}

/* ------------------------------------------------------------------------- */
/* Defaults                                                                   */
/* ------------------------------------------------------------------------- */

static void test_defaults(void) {
  qt_gp_t *gp = make_gp(QT_GP_KERNEL_RBF, 2);
  CU_ASSERT_EQUAL(qt_gp_hyper_count(gp), 4);
  CU_ASSERT_EQUAL(qt_gp_dim(gp), 2);
  CU_ASSERT_EQUAL(qt_gp_size(gp), 0);
  CU_ASSERT_EQUAL(qt_gp_kernel_of(gp), QT_GP_KERNEL_RBF);
  double raw[4] = {1, 1, 1, 1};
  qt_gp_get_hypers(gp, raw);
  for (int h = 0; h < 4; h++) CU_ASSERT_EQUAL(raw[h], 0.0);
  /* gpytorch's initial values: softplus(0) = ln 2, noise ln 2 + 1e-4. */
  QT_ASSERT_CLOSE(qt_gp_outputscale(gp), log(2.0), 1e-15);
  QT_ASSERT_CLOSE(qt_gp_lengthscale(gp), log(2.0), 1e-15);
  QT_ASSERT_CLOSE(qt_gp_noise(gp), log(2.0) + 1e-4, 1e-15);
  CU_ASSERT_EQUAL(qt_gp_mean_constant(gp), 0.0);
  CU_ASSERT_STRING_EQUAL(qt_gp_kernel_name(QT_GP_KERNEL_MATERN52), "matern52");
  CU_ASSERT_STRING_EQUAL(qt_gp_kernel_name(QT_GP_KERNEL_RBF), "rbf");
  qt_gp_params params = qt_gp_default_params();
  CU_ASSERT_EQUAL(params.iterations, 100);
  QT_ASSERT_CLOSE(params.learning_rate, 0.1, 0.0);
  qt_gp_free(gp);
  qt_gp_free(NULL);
}

/* ------------------------------------------------------------------------- */
/* Closed form on five 1-D points                                             */
/* ------------------------------------------------------------------------- */

static const double X5[5] = {0.0, 0.3, 0.7, 1.2, 2.0};
static const double Y5[5] = {0.1, 0.5, 0.4, -0.2, 0.3};
static const double RAW5[4] = {0.25, 0.4, -2.0, -0.5}; /* c0, raw s, raw noise, raw l */

static void check_closed_form(qt_gp_kernel kernel) {
  qt_gp_t *gp = make_gp(kernel, 1);
  setup(gp, RAW5, X5, Y5, 5);
  const double X_test[6] = {-0.5, 0.0, 0.5, 1.0, 1.7, 2.5};
  double mean[6], var[6], latent[6];
  double ref_nll, ref_mean[6], ref_var[6], ref_latent[6];
  ref_gp(kernel, RAW5, X5, Y5, 5, 1, X_test, 6, &ref_nll, ref_mean, ref_var, ref_latent);

  CU_ASSERT(rel_error(nll_of(gp), ref_nll) < 1e-12);
  CU_ASSERT_EQUAL(qt_gp_jitter(gp), 0.0);
  predict(gp, X_test, 6, mean, var, QT_GP_VARIANCE_PREDICTIVE);
  predict(gp, X_test, 6, NULL, latent, QT_GP_VARIANCE_LATENT);
  for (int t = 0; t < 6; t++) {
    QT_ASSERT_CLOSE(mean[t], ref_mean[t], 1e-12);
    QT_ASSERT_CLOSE(var[t], ref_var[t], 1e-12);
    QT_ASSERT_CLOSE(latent[t], ref_latent[t], 1e-12);
    QT_ASSERT_CLOSE(var[t] - latent[t], qt_gp_noise(gp), 1e-15);
  }
  qt_gp_free(gp);
}

static void test_closed_form_rbf(void) {
  check_closed_form(QT_GP_KERNEL_RBF);
}
static void test_closed_form_matern52(void) {
  check_closed_form(QT_GP_KERNEL_MATERN52);
}

/*
 * Golden numbers for the RBF case, from this pure-Python script (no numpy):
 *
 *   import math
 *   def softplus(x): return x if x > 20 else math.log1p(math.exp(x))
 *   def inverse(a):  # Gauss-Jordan with partial pivoting; returns (inverse, det)
 *       n = len(a); m = [row[:] + [1.0 if i == j else 0.0 for j in range(n)]
 *                        for i, row in enumerate(a)]
 *       det = 1.0
 *       for c in range(n):
 *           p = max(range(c, n), key=lambda r: abs(m[r][c]))
 *           if p != c: m[c], m[p] = m[p], m[c]; det = -det
 *           det *= m[c][c]; piv = m[c][c]
 *           m[c] = [v / piv for v in m[c]]
 *           for r in range(n):
 *               if r != c:
 *                   f = m[r][c]; m[r] = [vr - f * vc for vr, vc in zip(m[r], m[c])]
 *       return [row[n:] for row in m], det
 *   X = [0.0, 0.3, 0.7, 1.2, 2.0]; y = [0.1, 0.5, 0.4, -0.2, 0.3]
 *   c0, rs, rn, rl = 0.25, 0.4, -2.0, -0.5
 *   s, l, noise = softplus(rs), softplus(rl), softplus(rn) + 1e-4
 *   k = lambda a, b: s * math.exp(-0.5 * (a - b) ** 2 / l ** 2)
 *   A = [[k(a, b) + (noise if i == j else 0.0) for j, b in enumerate(X)]
 *        for i, a in enumerate(X)]
 *   Ai, det = inverse(A)
 *   r = [v - c0 for v in y]
 *   alpha = [sum(Ai[i][j] * r[j] for j in range(5)) for i in range(5)]
 *   nll = (0.5 * sum(ri * ai for ri, ai in zip(r, alpha)) + 0.5 * math.log(det)
 *          + 2.5 * math.log(2 * math.pi)) / 5
 *   print(repr(nll))
 *   for xs in [-0.5, 1.0, 2.5]:
 *       ks = [k(a, xs) for a in X]
 *       mu = c0 + sum(ki * ai for ki, ai in zip(ks, alpha))
 *       var = s - sum(ks[i] * Ai[i][j] * ks[j] for i in range(5) for j in range(5)) + noise
 *       print(repr(xs), repr(mu), repr(var))
 */
static void test_closed_form_python(void) {
  qt_gp_t *gp = make_gp(QT_GP_KERNEL_RBF, 1);
  setup(gp, RAW5, X5, Y5, 5);
  const double X_test[3] = {-0.5, 1.0, 2.5};
  const double golden_mean[3] = {0.05242021447059342, 0.041611727370161194, 0.33321331205316884};
  const double golden_var[3] = {0.7274271717256595, 0.2257225620378839, 0.7663992525676181};
  double mean[3], var[3];
  CU_ASSERT(rel_error(nll_of(gp), 0.8317607151467146) < 1e-12);
  predict(gp, X_test, 3, mean, var, QT_GP_VARIANCE_PREDICTIVE);
  for (int t = 0; t < 3; t++) {
    QT_ASSERT_CLOSE(mean[t], golden_mean[t], 1e-12);
    QT_ASSERT_CLOSE(var[t], golden_var[t], 1e-12);
  }
  qt_gp_free(gp);
}

/* ------------------------------------------------------------------------- */
/* Gradients against finite differences                                       */
/* ------------------------------------------------------------------------- */

#define FD_N 7
#define FD_D 3
#define FD_STEP 1e-5

/* Central difference of the loss in one entry of the hyperparameters (hyper
 * >= 0) or of X (hyper < 0, entry index). */
static double fd_loss(qt_gp_t *gp, double *raw, double *X, const double *y, int hyper,
                      size_t entry) {
  double *target = hyper >= 0 ? &raw[hyper] : &X[entry];
  double saved = *target;
  *target = saved + FD_STEP;
  setup(gp, raw, X, y, FD_N);
  double plus = nll_of(gp);
  *target = saved - FD_STEP;
  setup(gp, raw, X, y, FD_N);
  double minus = nll_of(gp);
  *target = saved;
  return (plus - minus) / (2.0 * FD_STEP);
}

static void check_gradients(qt_gp_kernel kernel, double *worst_hyper, double *worst_input) {
  qt_rng_t *rng = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, 20240601u + (uint64_t)kernel, NULL), 0);
  double X[FD_N * FD_D], y[FD_N];
  for (size_t i = 0; i < FD_N * FD_D; i++) X[i] = 2.0 * qt_rng_uniform(rng) - 1.0;
  for (size_t i = 0; i < FD_N; i++) {
    y[i] = sin(3.0 * X[i * FD_D]) + X[i * FD_D + 1] * X[i * FD_D + 2] +
           0.1 * qt_rng_gaussian(rng, 1.0);
  }
  /* Hyperparameters away from 0, so that no term vanishes by symmetry. */
  double raw[4] = {0.3, 0.45, -1.7, 0.2};

  qt_gp_t *gp = make_gp(kernel, FD_D);
  setup(gp, raw, X, y, FD_N);
  double loss = 0.0, grad_hypers[4], grad_X[FD_N * FD_D];
  qt_err err;
  qt_err_clear(&err);
  CU_ASSERT_EQUAL_FATAL(qt_gp_nll_grad(gp, &loss, grad_hypers, grad_X, &err), 0);
  CU_ASSERT(rel_error(loss, nll_of(gp)) < 1e-15);

  *worst_hyper = 0.0;
  for (int h = 0; h < 4; h++) {
    double fd = fd_loss(gp, raw, X, y, h, 0);
    double e = rel_error(grad_hypers[h], fd);
    if (e > *worst_hyper) *worst_hyper = e;
    if (e >= 1e-6) {
      fprintf(stderr, "\n%s hyper %d: analytic %.12g fd %.12g\n", qt_gp_kernel_name(kernel), h,
              grad_hypers[h], fd);
    }
    CU_ASSERT(e < 1e-6);
  }
  *worst_input = 0.0;
  for (size_t i = 0; i < FD_N * FD_D; i++) {
    double fd = fd_loss(gp, raw, X, y, -1, i);
    double e = rel_error(grad_X[i], fd);
    if (e > *worst_input) *worst_input = e;
    if (e >= 1e-6) {
      fprintf(stderr, "\n%s X[%zu]: analytic %.12g fd %.12g\n", qt_gp_kernel_name(kernel), i,
              grad_X[i], fd);
    }
    CU_ASSERT(e < 1e-6);
  }
  printf("\n    %s: worst relative error %.2e (hyperparameters), %.2e (inputs) ",
         qt_gp_kernel_name(kernel), *worst_hyper, *worst_input);

  /* The partial outputs: NULL gradients are allowed and change nothing. */
  setup(gp, raw, X, y, FD_N);
  double only_hypers[4];
  CU_ASSERT_EQUAL(qt_gp_nll_grad(gp, NULL, only_hypers, NULL, NULL), 0);
  for (int h = 0; h < 4; h++) CU_ASSERT_EQUAL(only_hypers[h], grad_hypers[h]);
  qt_gp_free(gp);
  qt_rng_free(rng);
}

static void test_gradients_rbf(void) {
  double worst_hyper, worst_input;
  check_gradients(QT_GP_KERNEL_RBF, &worst_hyper, &worst_input);
}

static void test_gradients_matern52(void) {
  double worst_hyper, worst_input;
  check_gradients(QT_GP_KERNEL_MATERN52, &worst_hyper, &worst_input);
}

/* Two coincident inputs: the input gradient must stay finite (the Matern
 * slope at distance 0 is finite) and match finite differences there too. */
static void test_gradient_coincident_inputs(void) {
  for (int kernel = 0; kernel <= 1; kernel++) {
    const double X[3] = {0.2, 0.2, 0.9};
    const double y[3] = {0.1, 0.4, -0.3};
    const double raw[4] = {0.0, 0.0, -1.0, 0.0};
    qt_gp_t *gp = make_gp((qt_gp_kernel)kernel, 1);
    setup(gp, raw, X, y, 3);
    double grad_X[3];
    CU_ASSERT_EQUAL_FATAL(qt_gp_nll_grad(gp, NULL, NULL, grad_X, NULL), 0);
    double Xs[3];
    for (int i = 0; i < 3; i++) {
      memcpy(Xs, X, sizeof Xs);
      Xs[i] += FD_STEP;
      setup(gp, raw, Xs, y, 3);
      double plus = nll_of(gp);
      Xs[i] -= 2.0 * FD_STEP;
      setup(gp, raw, Xs, y, 3);
      double minus = nll_of(gp);
      double fd = (plus - minus) / (2.0 * FD_STEP);
      CU_ASSERT(isfinite(grad_X[i]));
      CU_ASSERT(fabs(grad_X[i] - fd) < 1e-6 * fmax(1.0, fabs(fd)));
    }
    qt_gp_free(gp);
  }
}

/* ------------------------------------------------------------------------- */
/* Jitter and numerical failure                                               */
/* ------------------------------------------------------------------------- */

/* The noise floor (1e-4) keeps K + noise I regular for any ordinary
 * outputscale, so the singular case needs a huge outputscale: with s = 1e14
 * the noise is below half an ulp of s, two coincident inputs give two equal
 * rows, and the second Cholesky pivot is exactly 0. The first jitter,
 * 1e-8 * mean diagonal, must rescue it. */
static void test_jitter_on_duplicated_points(void) {
  const double X[4] = {0.5, 0.5, 1.5, 3.0};
  const double y[4] = {1.0, 1.0, 0.0, 2.0};
  const double raw[4] = {0.0, 1e14, -50.0, 0.0}; /* s = 1e14 (softplus is x above 20) */
  for (int kernel = 0; kernel <= 1; kernel++) {
    qt_gp_t *gp = make_gp((qt_gp_kernel)kernel, 1);
    setup(gp, raw, X, y, 4);
    double loss = nll_of(gp);
    CU_ASSERT(isfinite(loss));
    double mean_diag = qt_gp_outputscale(gp) + qt_gp_noise(gp);
    CU_ASSERT(qt_gp_jitter(gp) > 0.0);
    QT_ASSERT_CLOSE(qt_gp_jitter(gp), 1e-8 * mean_diag, 1e-8 * mean_diag * 1e-12);
    double mean[2], var[2];
    const double X_test[2] = {0.5, 2.0};
    predict(gp, X_test, 2, mean, var, QT_GP_VARIANCE_PREDICTIVE);
    CU_ASSERT(isfinite(mean[0]) && isfinite(mean[1]) && var[0] >= 0.0 && var[1] >= 0.0);

    /* The same GP on distinct points needs no jitter, and says so. */
    const double distinct[4] = {0.5, 1.0, 1.5, 3.0};
    const double ordinary[4] = {0.0, 0.0, -1.0, 0.0};
    setup(gp, ordinary, distinct, y, 4);
    nll_of(gp);
    CU_ASSERT_EQUAL(qt_gp_jitter(gp), 0.0);
    qt_gp_free(gp);
  }
}

/* A lengthscale that underflows (raw -400: softplus = 1.9e-174, whose square
 * is 0) cannot give a kernel: the query is QT_ENUMERIC with a message that
 * names it, and the GP recovers when given sane hyperparameters again. With a
 * representable lengthscale the factorization itself cannot fail all its
 * jitter tries (the jitter reaches 1e-3 of the diagonal), so this is the
 * numerical failure a fit can actually run into. */
static void test_numeric_failure(void) {
  const double X[3] = {0.0, 0.4, 1.0};
  const double y[3] = {0.0, 1.0, 0.5};
  const double tiny[4] = {0.0, 0.0, 0.0, -400.0};
  for (int kernel = 0; kernel <= 1; kernel++) {
    qt_gp_t *gp = make_gp((qt_gp_kernel)kernel, 1);
    setup(gp, tiny, X, y, 3);
    qt_err err;
    qt_err_clear(&err);
    double loss = 0.0;
    CU_ASSERT_EQUAL(qt_gp_nll(gp, &loss, &err), QT_ENUMERIC);
    CU_ASSERT(strstr(err.msg, "lengthscale") != NULL);
    double mean = 0.0;
    CU_ASSERT_EQUAL(qt_gp_predict(gp, X, 1, &mean, NULL, QT_GP_VARIANCE_LATENT, NULL), QT_ENUMERIC);
    double grad[4];
    CU_ASSERT_EQUAL(qt_gp_nll_grad(gp, &loss, grad, NULL, NULL), QT_ENUMERIC);

    const double sane[4] = {0.0, 0.0, 0.0, 0.0};
    CU_ASSERT_EQUAL(qt_gp_set_hypers(gp, sane, NULL), 0);
    CU_ASSERT(isfinite(nll_of(gp)));
    qt_gp_free(gp);
  }
}

/* Inputs so far apart that the squared distance overflows to infinity: the
 * kernel is 0 there (not the NaN of inf * 0), and the GP still works. */
static void test_far_apart_inputs(void) {
  const double X[3] = {0.0, 1e160, -1e160};
  const double y[3] = {0.0, 1.0, 0.5};
  const double raw[4] = {0.0, 0.0, 0.0, 0.0};
  for (int kernel = 0; kernel <= 1; kernel++) {
    qt_gp_t *gp = make_gp((qt_gp_kernel)kernel, 1);
    setup(gp, raw, X, y, 3);
    double grad[4], grad_X[3], loss = 0.0;
    CU_ASSERT_EQUAL(qt_gp_nll_grad(gp, &loss, grad, grad_X, NULL), 0);
    CU_ASSERT(isfinite(loss));
    for (int h = 0; h < 4; h++) CU_ASSERT(isfinite(grad[h]));
    for (int i = 0; i < 3; i++) CU_ASSERT(isfinite(grad_X[i]));
    double mean = 0.0, var = 0.0;
    predict(gp, X + 1, 1, &mean, &var, QT_GP_VARIANCE_LATENT);
    QT_ASSERT_CLOSE(mean, 1.0 - qt_gp_noise(gp) / (qt_gp_outputscale(gp) + qt_gp_noise(gp)), 1e-12);
    qt_gp_free(gp);
  }
}

/* ------------------------------------------------------------------------- */
/* Interpolation, blocks, reuse                                               */
/* ------------------------------------------------------------------------- */

/* With the smallest noise gpytorch allows (1e-4), the posterior mean passes
 * through the training targets and the latent variance there vanishes. */
static void test_interpolates_with_tiny_noise(void) {
  double X[8], y[8];
  for (int i = 0; i < 8; i++) {
    X[i] = 0.25 * i;
    y[i] = sin(2.0 * X[i]) + 0.3;
  }
  const double raw[4] = {0.3, 1.0, -30.0, -1.0}; /* noise = 1e-4 + 9e-14 */
  for (int kernel = 0; kernel <= 1; kernel++) {
    qt_gp_t *gp = make_gp((qt_gp_kernel)kernel, 1);
    setup(gp, raw, X, y, 8);
    double mean[8], latent[8], predictive[8];
    predict(gp, X, 8, mean, latent, QT_GP_VARIANCE_LATENT);
    predict(gp, X, 8, NULL, predictive, QT_GP_VARIANCE_PREDICTIVE);
    for (int i = 0; i < 8; i++) {
      QT_ASSERT_CLOSE(mean[i], y[i], 1e-3);
      CU_ASSERT(latent[i] >= 0.0 && latent[i] < 1.1e-4);
      QT_ASSERT_CLOSE(predictive[i], latent[i] + qt_gp_noise(gp), 1e-15);
    }
    /* Far from the data the latent variance returns to the prior s. */
    const double far = 50.0;
    double far_mean, far_var;
    predict(gp, &far, 1, &far_mean, &far_var, QT_GP_VARIANCE_LATENT);
    QT_ASSERT_CLOSE(far_var, qt_gp_outputscale(gp), 1e-12);
    QT_ASSERT_CLOSE(far_mean, qt_gp_mean_constant(gp), 1e-12);
    qt_gp_free(gp);
  }
}

/* More test points than one block (64): the blocked prediction equals
 * point-by-point prediction. */
static void test_predict_blocks(void) {
  qt_rng_t *rng = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, 7, NULL), 0);
  double X[10 * 2], y[10], X_test[150 * 2];
  for (int i = 0; i < 20; i++) X[i] = qt_rng_uniform(rng);
  for (int i = 0; i < 10; i++) y[i] = qt_rng_gaussian(rng, 1.0);
  for (int i = 0; i < 300; i++) X_test[i] = 1.5 * qt_rng_uniform(rng) - 0.25;
  const double raw[4] = {0.1, 0.2, -2.0, -0.7};
  qt_gp_t *gp = make_gp(QT_GP_KERNEL_MATERN52, 2);
  setup(gp, raw, X, y, 10);
  double mean[150], var[150];
  predict(gp, X_test, 150, mean, var, QT_GP_VARIANCE_PREDICTIVE);
  for (int t = 0; t < 150; t++) {
    double one_mean, one_var;
    predict(gp, X_test + 2 * t, 1, &one_mean, &one_var, QT_GP_VARIANCE_PREDICTIVE);
    QT_ASSERT_CLOSE(mean[t], one_mean, 1e-13);
    QT_ASSERT_CLOSE(var[t], one_var, 1e-13);
  }
  CU_ASSERT_EQUAL(qt_gp_predict(gp, X_test, 0, mean, var, QT_GP_VARIANCE_LATENT, NULL), 0);
  qt_gp_free(gp);
  qt_rng_free(rng);
}

/* One GP conditioned on 5, then 20, then 7 points gives the same numbers as
 * a fresh GP on the 7: the workspace keeps no stale state. Setting new
 * hyperparameters refactorizes. */
static void test_workspace_reuse(void) {
  qt_rng_t *rng = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, 11, NULL), 0);
  double X[20 * 3], y[20];
  for (int i = 0; i < 60; i++) X[i] = qt_rng_uniform(rng);
  for (int i = 0; i < 20; i++) y[i] = qt_rng_gaussian(rng, 1.0);
  const double raw[4] = {0.2, -0.1, -1.0, 0.3};
  const double other[4] = {-0.2, 0.5, -2.0, -0.4};

  qt_gp_t *reused = make_gp(QT_GP_KERNEL_RBF, 3);
  qt_gp_t *fresh = make_gp(QT_GP_KERNEL_RBF, 3);
  setup(reused, raw, X + 30, y + 10, 5);
  nll_of(reused);
  setup(reused, raw, X, y, 20);
  nll_of(reused);
  setup(reused, raw, X + 3, y + 1, 7);
  setup(fresh, raw, X + 3, y + 1, 7);
  CU_ASSERT_EQUAL(qt_gp_size(reused), 7);
  double g1[4], g2[4], gx1[21], gx2[21], l1, l2;
  CU_ASSERT_EQUAL(qt_gp_nll_grad(reused, &l1, g1, gx1, NULL), 0);
  CU_ASSERT_EQUAL(qt_gp_nll_grad(fresh, &l2, g2, gx2, NULL), 0);
  CU_ASSERT_EQUAL(l1, l2);
  for (int h = 0; h < 4; h++) CU_ASSERT_EQUAL(g1[h], g2[h]);
  for (int i = 0; i < 21; i++) CU_ASSERT_EQUAL(gx1[i], gx2[i]);

  /* New hyperparameters without new data: the loss follows them. */
  CU_ASSERT_EQUAL(qt_gp_set_hypers(reused, other, NULL), 0);
  double ref_nll, unused_mean, unused_var, unused_latent;
  ref_gp(QT_GP_KERNEL_RBF, other, X + 3, y + 1, 7, 3, X, 1, &ref_nll, &unused_mean, &unused_var,
         &unused_latent);
  CU_ASSERT(rel_error(nll_of(reused), ref_nll) < 1e-12);
  qt_gp_free(reused);
  qt_gp_free(fresh);
  qt_rng_free(rng);
}

/* ------------------------------------------------------------------------- */
/* Fitting                                                                    */
/* ------------------------------------------------------------------------- */

static void test_fit_lowers_nll(void) {
  double X[20], y[20];
  for (int i = 0; i < 20; i++) {
    X[i] = 2.0 * i / 19.0;
    y[i] = sin(3.0 * X[i]) + 0.5 * X[i];
  }
  const double start[4] = {0.0, 0.0, 0.0, 0.0};
  for (int kernel = 0; kernel <= 1; kernel++) {
    qt_gp_t *gp = make_gp((qt_gp_kernel)kernel, 1);
    setup(gp, start, X, y, 20);
    double before = nll_of(gp);
    qt_gp_params params = qt_gp_default_params();
    qt_gp_fit_report report;
    qt_err err;
    qt_err_clear(&err);
    int rc = qt_gp_fit(gp, &params, &report, &err);
    if (rc != 0) fprintf(stderr, "qt_gp_fit: %s\n", qt_err_message(&err));
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    double after = nll_of(gp);
    printf("\n    %s: loss %.4f -> %.4f, noise %.2e, lengthscale %.3f ", qt_gp_kernel_name(kernel),
           before, after, qt_gp_noise(gp), qt_gp_lengthscale(gp));
    CU_ASSERT_EQUAL(report.steps, params.iterations);
    CU_ASSERT_EQUAL(report.initial_loss, before);
    CU_ASSERT_EQUAL(report.final_loss, after);
    /* A smooth noiseless function: the fit must explain it with a small noise
     * and lower the loss by a wide margin. */
    CU_ASSERT(after < before - 0.5);
    CU_ASSERT(qt_gp_noise(gp) < 0.1);
    qt_gp_free(gp);
  }
}

/* Targets that alternate between neighbours ask for a short lengthscale; a
 * learning rate of 1000 makes the first Adam step (about lr in each raw
 * entry) drive raw_l to about -1000, where the lengthscale underflows. The fit
 * must report QT_ENUMERIC and leave the last good hyperparameters (the
 * starting ones) in the GP, ready for queries. */
static void test_fit_recovers_from_failure(void) {
  double X[6], y[6];
  for (int i = 0; i < 6; i++) {
    X[i] = 0.1 * i;
    y[i] = (i % 2) ? 1.0 : -1.0;
  }
  const double start[4] = {0.0, 0.0, -6.0, -1.0}; /* small noise: only a short l explains y */
  qt_gp_t *gp = make_gp(QT_GP_KERNEL_RBF, 1);
  setup(gp, start, X, y, 6);
  double grad[4];
  CU_ASSERT_EQUAL_FATAL(qt_gp_nll_grad(gp, NULL, grad, NULL, NULL), 0);
  CU_ASSERT_FATAL(grad[QT_GP_HYPER_RAW_LENGTHSCALE] > 0.0); /* the premise of this test */
  qt_gp_params params = qt_gp_default_params();
  params.learning_rate = 1000.0;
  qt_gp_fit_report report;
  qt_err err;
  qt_err_clear(&err);
  CU_ASSERT_EQUAL(qt_gp_fit(gp, &params, &report, &err), QT_ENUMERIC);
  CU_ASSERT(strstr(err.msg, "qt_gp_fit: after 1 of 100 steps") != NULL);
  CU_ASSERT(strstr(err.msg, "lengthscale") != NULL);
  CU_ASSERT_EQUAL(report.steps, 0);
  double raw[4];
  qt_gp_get_hypers(gp, raw);
  for (int h = 0; h < 4; h++) CU_ASSERT_EQUAL(raw[h], start[h]);
  CU_ASSERT_EQUAL(report.final_loss, report.initial_loss);
  CU_ASSERT_EQUAL(nll_of(gp), report.initial_loss);
  qt_gp_free(gp);
}

static void test_fit_rejects_bad_params(void) {
  const double X[2] = {0.0, 1.0}, y[2] = {0.0, 1.0};
  const double raw[4] = {0, 0, 0, 0};
  qt_gp_t *gp = make_gp(QT_GP_KERNEL_RBF, 1);
  qt_gp_params params = qt_gp_default_params();
  CU_ASSERT_EQUAL(qt_gp_fit(gp, &params, NULL, NULL), QT_EINVAL); /* no data yet */
  setup(gp, raw, X, y, 2);
  params.learning_rate = 0.0;
  CU_ASSERT_EQUAL(qt_gp_fit(gp, &params, NULL, NULL), QT_EINVAL);
  params = qt_gp_default_params();
  params.beta2 = 1.0;
  CU_ASSERT_EQUAL(qt_gp_fit(gp, &params, NULL, NULL), QT_EINVAL);
  params = qt_gp_default_params();
  params.iterations = 0;
  qt_gp_fit_report report;
  CU_ASSERT_EQUAL(qt_gp_fit(gp, &params, &report, NULL), 0);
  CU_ASSERT_EQUAL(report.steps, 0);
  CU_ASSERT_EQUAL(report.initial_loss, report.final_loss);
  qt_gp_free(gp);
}

/* ------------------------------------------------------------------------- */
/* Bad input                                                                  */
/* ------------------------------------------------------------------------- */

static void test_bad_input(void) {
  qt_gp_t *gp = NULL;
  qt_err err;
  qt_err_clear(&err);
  CU_ASSERT_EQUAL(qt_gp_init(&gp, QT_GP_KERNEL_RBF, 0, &err), QT_EINVAL);
  CU_ASSERT_PTR_NULL(gp);
  CU_ASSERT_EQUAL(qt_gp_init(&gp, (qt_gp_kernel)7, 1, &err), QT_EINVAL);

  gp = make_gp(QT_GP_KERNEL_RBF, 2);
  double mean = 0.0, loss = 0.0;
  const double x[2] = {0.0, 0.0};
  qt_err_clear(&err);
  CU_ASSERT_EQUAL(qt_gp_predict(gp, x, 1, &mean, NULL, QT_GP_VARIANCE_LATENT, &err), QT_EINVAL);
  CU_ASSERT(strstr(err.msg, "qt_gp_condition") != NULL);
  CU_ASSERT_EQUAL(qt_gp_nll(gp, &loss, NULL), QT_EINVAL);

  const double X[4] = {0.0, 1.0, NAN, 2.0};
  const double y[2] = {0.0, 1.0};
  qt_err_clear(&err);
  CU_ASSERT_EQUAL(qt_gp_condition(gp, X, y, 2, &err), QT_EINVAL);
  CU_ASSERT(strstr(err.msg, "row 1") != NULL);
  CU_ASSERT_EQUAL(qt_gp_condition(gp, X, y, 0, NULL), QT_EINVAL);
  const double bad_y[2] = {0.0, INFINITY};
  CU_ASSERT_EQUAL(qt_gp_condition(gp, x, bad_y, 1, NULL), 0); /* only the first target is used */
  CU_ASSERT_EQUAL(qt_gp_condition(gp, X, bad_y, 2, NULL), QT_EINVAL);

  double raw[4] = {0.0, NAN, 0.0, 0.0};
  CU_ASSERT_EQUAL(qt_gp_set_hypers(gp, raw, NULL), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_gp_outputscale(gp), log(2.0)); /* unchanged */

  /* The one point conditioned above still predicts; a NaN test point does not. */
  const double nan_point[2] = {NAN, 0.0};
  CU_ASSERT_EQUAL(qt_gp_predict(gp, x, 1, &mean, NULL, QT_GP_VARIANCE_LATENT, NULL), 0);
  CU_ASSERT_EQUAL(qt_gp_predict(gp, nan_point, 1, &mean, NULL, QT_GP_VARIANCE_LATENT, NULL),
                  QT_EINVAL);
  CU_ASSERT_EQUAL(qt_gp_predict(gp, x, 1, &mean, NULL, (qt_gp_variance)5, NULL), QT_EINVAL);
  qt_gp_free(gp);
}

static const qt_test_case cases[] = {
    {"defaults match gpytorch's initial values", test_defaults},
    {"RBF posterior and NLL equal the closed form", test_closed_form_rbf},
    {"Matern-5/2 posterior and NLL equal the closed form", test_closed_form_matern52},
    {"RBF posterior and NLL equal the Python golden numbers", test_closed_form_python},
    {"RBF gradients (hyperparameters and inputs) match finite differences", test_gradients_rbf},
    {"Matern-5/2 gradients match finite differences", test_gradients_matern52},
    {"input gradient at coincident inputs", test_gradient_coincident_inputs},
    {"jitter rescues a singular kernel and is reported", test_jitter_on_duplicated_points},
    {"an underflowing lengthscale is QT_ENUMERIC", test_numeric_failure},
    {"inputs too far apart for a finite distance", test_far_apart_inputs},
    {"tiny noise interpolates the training points", test_interpolates_with_tiny_noise},
    {"blocked prediction equals point-wise prediction", test_predict_blocks},
    {"the workspace is reused without stale state", test_workspace_reuse},
    {"Adam fit lowers the NLL on a smooth function", test_fit_lowers_nll},
    {"a failing fit restores the last good hyperparameters", test_fit_recovers_from_failure},
    {"fit parameters are validated", test_fit_rejects_bad_params},
    {"bad input is an error, not a crash", test_bad_input},
    {NULL, NULL},
};

QT_TEST_MAIN("surrogate", cases)

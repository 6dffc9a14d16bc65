/*
 * qt_gp.c - the exact Gaussian process: kernels, Cholesky factorization with
 * escalating jitter, the marginal-likelihood loss and its gradients with
 * respect to the raw hyperparameters and the inputs, prediction, and an Adam
 * fit of the hyperparameters. The model and its conventions are documented in
 * qt_surrogate.h.
 *
 * Notation used in the comments: A = K + (noise + jitter) I is the n x n
 * training covariance, L its lower Cholesky factor (A = L L^T), r = y - c0 the
 * centred targets and alpha = A^-1 r.
 *
 * Storage. Every matrix is row-major with leading dimension n (the current
 * number of points), so an n x n matrix is contiguous whatever the capacity.
 * LAPACK is called in column-major order on the *upper* triangle: the lower
 * triangle of a symmetric matrix stored row-major is, byte for byte, its upper
 * triangle stored column-major, and the column-major factor U (A = U^T U) is
 * L stored row-major. This spares LAPACKE the transposing copy (an O(n^2)
 * allocation on every call) that its row-major entry points make.
 */
#include "surrogate/qt_surrogate.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Test points per block in qt_gp_predict: bounds the workspace at n x 64. */
#define GP_PREDICT_BLOCK 64
/* Entries of the raw hyperparameter vector (one shared lengthscale). */
#define GP_HYPER_COUNT 4
/* torch.nn.functional.softplus returns x unchanged above this threshold. */
#define GP_SOFTPLUS_THRESHOLD 20.0
/* Smallest usable lengthscale: its square stays a normal double. */
#define GP_MIN_LENGTHSCALE 1e-150

struct qt_gp {
  qt_gp_kernel kernel;
  size_t dim;                 /* d, the input dimension */
  double raw[GP_HYPER_COUNT]; /* raw hyperparameters, ordered as qt_gp_hyper */

  size_t n;        /* training points of the last qt_gp_condition */
  size_t capacity; /* points the workspace below is sized for (>= n) */
  double *X;       /* (capacity, d) training inputs; the first n rows are used */
  double *y;       /* (capacity) training targets */
  double *alpha;   /* (capacity) A^-1 (y - c0) while factored */
  double *rowsum;  /* (capacity) row sums of M in the input gradient */
  double *factor;  /* (n, n) lower Cholesky factor L of A, row-major; capacity^2 allocated */
  double *scratch; /* (n, n) A before factorization, then A^-1 and M in the gradient */
  double *block;   /* (n, GP_PREDICT_BLOCK) kernel columns of a block of test points */

  int factored;   /* 1 when factor, alpha and the terms below match data and hypers */
  double jitter;  /* jitter added to the diagonal of A by the last factorization */
  double quad;    /* r^T A^-1 r */
  double log_det; /* log |A| */
};

/* ------------------------------------------------------------------------- */
/* Transforms and kernels                                                     */
/* ------------------------------------------------------------------------- */

/* gpytorch's Positive() constraint: torch's softplus, with its threshold. */
static double softplus(double x) {
  return x > GP_SOFTPLUS_THRESHOLD ? x : log1p(exp(x));
}

/* d softplus / dx: the logistic sigmoid, 1 above the threshold (as torch). */
static double softplus_slope(double x) {
  return x > GP_SOFTPLUS_THRESHOLD ? 1.0 : 1.0 / (1.0 + exp(-x));
}

static double dist2(const double *a, const double *b, size_t d) {
  double sum = 0.0;
  for (size_t k = 0; k < d; k++) {
    double diff = a[k] - b[k];
    sum += diff * diff;
  }
  return sum;
}

/* The kernel constants of the current hyperparameters. */
typedef struct gp_kernel_args {
  qt_gp_kernel kernel;
  double outputscale; /* s */
  double lengthscale; /* l */
} gp_kernel_args;

static gp_kernel_args kernel_args(const qt_gp_t *gp) {
  gp_kernel_args args = {gp->kernel, qt_gp_outputscale(gp), qt_gp_lengthscale(gp)};
  return args;
}

/* The unit kernel kappa = k / s at squared distance d2, and (when slope is
 * not NULL) dkappa/d(d2). Both gradients follow from the slope: a pair's
 * dependence on its inputs is dk/dx_i = 2 s slope (x_i - x_j), and on the
 * lengthscale (k depends on d2 / l^2 only) dk/dl = -2 (d2 / l) s slope. The
 * Matern slope is smooth at d2 = 0. */
static double kernel_unit(const gp_kernel_args *args, double d2, double *slope) {
  double l2 = args->lengthscale * args->lengthscale;
  if (args->kernel == QT_GP_KERNEL_RBF) {
    double kappa = exp(-0.5 * d2 / l2);
    if (slope) *slope = -0.5 * kappa / l2;
    return kappa;
  }
  /* Matern 5/2: kappa(r) = (1 + sqrt5 r + 5 r^2/3) e^{-sqrt5 r}, r = sqrt(d2)/l,
   * dkappa/dr = -(5/3) r (1 + sqrt5 r) e^{-sqrt5 r}, dr/d(d2) = 1 / (2 l^2 r). */
  double sqrt5_r = sqrt(5.0 * d2 / l2);
  double e = exp(-sqrt5_r);
  if (e == 0.0) {
    /* Far apart (r > 300): 0, not the inf * 0 of the formula. */
    if (slope) *slope = 0.0;
    return 0.0;
  }
  if (slope) *slope = -(5.0 / (6.0 * l2)) * (1.0 + sqrt5_r) * e;
  return (1.0 + sqrt5_r + sqrt5_r * sqrt5_r / 3.0) * e;
}

/* ------------------------------------------------------------------------- */
/* Life cycle, workspace and hyperparameters                                 */
/* ------------------------------------------------------------------------- */

const char *qt_gp_kernel_name(qt_gp_kernel kernel) {
  switch (kernel) {
    case QT_GP_KERNEL_RBF:
      return "rbf";
    case QT_GP_KERNEL_MATERN52:
      return "matern52";
  }
  return "unknown";
}

int qt_gp_init(qt_gp_t **out, qt_gp_kernel kernel, size_t dim, qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_gp_init: out is NULL");
  *out = NULL;
  if (kernel != QT_GP_KERNEL_RBF && kernel != QT_GP_KERNEL_MATERN52) {
    return qt_err_set(err, QT_EINVAL, "qt_gp_init: unknown kernel %d", (int)kernel);
  }
  if (dim == 0) return qt_err_set(err, QT_EINVAL, "qt_gp_init: the input dimension is 0");
  qt_gp_t *gp = calloc(1, sizeof *gp);
  if (!gp) return qt_err_set(err, QT_ENOMEM, "qt_gp_init: out of memory");
  gp->kernel = kernel;
  gp->dim = dim;
  *out = gp;
  return 0;
}

void qt_gp_free(qt_gp_t *gp) {
  if (!gp) return;
  free(gp->X);
  free(gp->y);
  free(gp->alpha);
  free(gp->rowsum);
  free(gp->factor);
  free(gp->scratch);
  free(gp->block);
  free(gp);
}

qt_gp_kernel qt_gp_kernel_of(const qt_gp_t *gp) {
  return gp->kernel;
}
size_t qt_gp_dim(const qt_gp_t *gp) {
  return gp->dim;
}
size_t qt_gp_size(const qt_gp_t *gp) {
  return gp->n;
}
double qt_gp_jitter(const qt_gp_t *gp) {
  return gp->jitter;
}

/* Grows one buffer to count doubles, keeping its contents. On failure the old
 * buffer stays valid and in place. */
static int grow_buffer(double **buffer, size_t count) {
  double *grown = realloc(*buffer, count * sizeof *grown);
  if (!grown) return QT_ENOMEM;
  *buffer = grown;
  return 0;
}

int qt_gp_reserve(qt_gp_t *gp, size_t n, qt_err *err) {
  if (n <= gp->capacity) return 0;
  /* Grow by at least a quarter, so that a BO loop adding one point at a time
   * reallocates O(log n) times, not n times. */
  size_t capacity = gp->capacity + gp->capacity / 4;
  if (capacity < n) capacity = n;
  size_t d = gp->dim;
  if (capacity > SIZE_MAX / sizeof(double) / capacity || capacity > SIZE_MAX / sizeof(double) / d ||
      capacity > SIZE_MAX / sizeof(double) / GP_PREDICT_BLOCK) {
    return qt_err_set(err, QT_ENOMEM, "qt_gp_reserve: %zu points overflow the workspace size", n);
  }
  /* Each buffer either grows or stays as it was, and capacity changes only
   * when all have grown, so a failure leaves a consistent GP. */
  if (grow_buffer(&gp->X, capacity * d) || grow_buffer(&gp->y, capacity) ||
      grow_buffer(&gp->alpha, capacity) || grow_buffer(&gp->rowsum, capacity) ||
      grow_buffer(&gp->factor, capacity * capacity) ||
      grow_buffer(&gp->scratch, capacity * capacity) ||
      grow_buffer(&gp->block, capacity * GP_PREDICT_BLOCK)) {
    return qt_err_set(err, QT_ENOMEM, "qt_gp_reserve: out of memory for %zu points", capacity);
  }
  gp->capacity = capacity;
  return 0;
}

size_t qt_gp_hyper_count(const qt_gp_t *gp) {
  return GP_HYPER_COUNT;
}

void qt_gp_get_hypers(const qt_gp_t *gp, double *raw) {
  memcpy(raw, gp->raw, sizeof gp->raw);
}

int qt_gp_set_hypers(qt_gp_t *gp, const double *raw, qt_err *err) {
  for (size_t h = 0; h < GP_HYPER_COUNT; h++) {
    if (!isfinite(raw[h])) {
      return qt_err_set(err, QT_EINVAL, "qt_gp_set_hypers: raw hyperparameter %zu is %g", h,
                        raw[h]);
    }
  }
  memcpy(gp->raw, raw, sizeof gp->raw);
  gp->factored = 0;
  return 0;
}

double qt_gp_mean_constant(const qt_gp_t *gp) {
  return gp->raw[QT_GP_HYPER_MEAN];
}
double qt_gp_outputscale(const qt_gp_t *gp) {
  return softplus(gp->raw[QT_GP_HYPER_RAW_OUTPUTSCALE]);
}
double qt_gp_lengthscale(const qt_gp_t *gp) {
  return softplus(gp->raw[QT_GP_HYPER_RAW_LENGTHSCALE]);
}
double qt_gp_noise(const qt_gp_t *gp) {
  return softplus(gp->raw[QT_GP_HYPER_RAW_NOISE]) + QT_GP_NOISE_FLOOR;
}

/* ------------------------------------------------------------------------- */
/* Conditioning and factorization                                             */
/* ------------------------------------------------------------------------- */

/* The first row of X (rows, d) with a non-finite entry, or rows when none. */
static size_t first_nonfinite_row(const double *X, size_t rows, size_t d) {
  for (size_t i = 0; i < rows; i++) {
    for (size_t k = 0; k < d; k++) {
      if (!isfinite(X[i * d + k])) return i;
    }
  }
  return rows;
}

int qt_gp_condition(qt_gp_t *gp, const double *X, const double *y, size_t n, qt_err *err) {
  size_t d = gp->dim;
  if (n == 0) return qt_err_set(err, QT_EINVAL, "qt_gp_condition: no training points");
  size_t bad = first_nonfinite_row(X, n, d);
  if (bad < n)
    return qt_err_set(err, QT_EINVAL, "qt_gp_condition: input row %zu is not finite", bad);
  bad = first_nonfinite_row(y, n, 1);
  if (bad < n) {
    return qt_err_set(err, QT_EINVAL, "qt_gp_condition: target %zu is %g", bad, y[bad]);
  }
  int rc = qt_gp_reserve(gp, n, err);
  if (rc != 0) return rc;
  memcpy(gp->X, X, n * d * sizeof *X);
  memcpy(gp->y, y, n * sizeof *y);
  gp->n = n;
  gp->factored = 0;
  return 0;
}

/* Factorizes A = K + noise I, adding jitter while dpotrf fails, then solves
 * for alpha and records the two terms of the loss. */
static int gp_factorize(qt_gp_t *gp, qt_err *err) {
  size_t n = gp->n, d = gp->dim;
  gp_kernel_args args = kernel_args(gp);
  double noise = qt_gp_noise(gp);
  double c0 = qt_gp_mean_constant(gp);
  gp->jitter = 0.0;
  /* A lengthscale whose square underflows makes every d2 / l^2 meaningless
   * (0/0 on the diagonal); it happens when a fit drives raw_l below -345. */
  if (!(args.lengthscale >= GP_MIN_LENGTHSCALE)) {
    return qt_err_set(err, QT_ENUMERIC,
                      "GP lengthscale %g (raw %g) is below %g: the kernel is not computable",
                      args.lengthscale, gp->raw[QT_GP_HYPER_RAW_LENGTHSCALE], GP_MIN_LENGTHSCALE);
  }

  /* The lower triangle of A, kept in scratch so that each retry starts from
   * it (dpotrf overwrites its input). */
  for (size_t i = 0; i < n; i++) {
    for (size_t j = 0; j <= i; j++) {
      gp->scratch[i * n + j] =
          args.outputscale * kernel_unit(&args, dist2(gp->X + i * d, gp->X + j * d, d), NULL);
    }
    gp->scratch[i * n + i] += noise;
  }

  double mean_diag = args.outputscale + noise; /* every diagonal entry is s + noise */
  double jitter = 0.0;
  lapack_int info = 0;
  for (int attempt = 0; attempt <= QT_GP_JITTER_TRIES; attempt++) {
    if (attempt == 1) jitter = QT_GP_JITTER_RELATIVE * mean_diag;
    if (attempt > 1) jitter *= 10.0;
    memcpy(gp->factor, gp->scratch, n * n * sizeof *gp->factor);
    for (size_t i = 0; i < n; i++) gp->factor[i * n + i] += jitter;
    info = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'U', (lapack_int)n, gp->factor, (lapack_int)n);
    if (info <= 0) break; /* success, or a bad argument (non-finite entries) */
  }
  gp->jitter = jitter;
  if (info != 0) {
    gp->factored = 0;
    return qt_err_set(err, QT_ENUMERIC,
                      "Cholesky factorization of K + noise*I failed (%s kernel, n=%zu, "
                      "outputscale %g, lengthscale %g, noise %g): %s%d%s, last jitter %g "
                      "after %d jittered tries",
                      qt_gp_kernel_name(gp->kernel), n, args.outputscale, args.lengthscale, noise,
                      info > 0 ? "the leading minor of order " : "LAPACK info ", (int)info,
                      info > 0 ? " is not positive definite" : "", jitter, QT_GP_JITTER_TRIES);
  }
  if (jitter > 0.0) {
    QT_LOG_DEBUG("gp: Cholesky needed jitter %g (n=%zu, mean diagonal %g)", jitter, n, mean_diag);
  }

  for (size_t i = 0; i < n; i++) gp->alpha[i] = gp->y[i] - c0;
  LAPACKE_dpotrs(LAPACK_COL_MAJOR, 'U', (lapack_int)n, 1, gp->factor, (lapack_int)n, gp->alpha,
                 (lapack_int)n);
  double quad = 0.0, log_det = 0.0;
  for (size_t i = 0; i < n; i++) {
    quad += (gp->y[i] - c0) * gp->alpha[i];
    log_det += 2.0 * log(gp->factor[i * n + i]);
  }
  if (!isfinite(quad) || !isfinite(log_det)) {
    return qt_err_set(err, QT_ENUMERIC,
                      "GP loss is not finite (quadratic term %g, log-determinant %g, n=%zu)", quad,
                      log_det, n);
  }
  gp->quad = quad;
  gp->log_det = log_det;
  gp->factored = 1;
  return 0;
}

/* Makes sure the factorization matches the data and hyperparameters. */
static int gp_ready(qt_gp_t *gp, const char *caller, qt_err *err) {
  if (gp->n == 0) {
    return qt_err_set(err, QT_EINVAL, "%s: the GP has no training data (call qt_gp_condition)",
                      caller);
  }
  if (gp->factored) return 0;
  return gp_factorize(gp, err);
}

static double gp_loss(const qt_gp_t *gp) {
  double n = (double)gp->n;
  return (0.5 * gp->quad + 0.5 * gp->log_det + 0.5 * n * log(2.0 * M_PI)) / n;
}

/* ------------------------------------------------------------------------- */
/* Loss and gradients                                                         */
/* ------------------------------------------------------------------------- */

int qt_gp_nll(qt_gp_t *gp, double *loss, qt_err *err) {
  int rc = gp_ready(gp, "qt_gp_nll", err);
  if (rc != 0) return rc;
  if (loss) *loss = gp_loss(gp);
  return 0;
}

/*
 * The gradient. For a symmetric perturbation dA, the loss changes by
 * sum_ij G_ij dA_ij with
 *
 *   G = dL/dA = (1 / 2n) (A^-1 - alpha alpha^T)        (symmetric),
 *
 * from d log|A| = tr(A^-1 dA) and d(r^T A^-1 r) = -alpha^T dA alpha. Every
 * hyperparameter and input enters through A (the mean through r):
 *
 *   dL/dc0    = -(1/n) sum_i alpha_i
 *   dL/dnoise = sum_i G_ii
 *   dL/ds     = sum_ij G_ij kappa_ij
 *   dL/dl     = sum_ij G_ij s S_ij (-2 D_ij / l)
 *   dL/dx_a   = 4 s sum_j G_aj S_aj (x_a - x_j)
 *             = 4 [ (sum_j M_aj) x_a - (M X)_a ],   M = s G o S (elementwise),
 *
 * where D_ij = ||x_i - x_j||^2, kappa_ij = K_ij / s and S_ij = dkappa/dD at
 * D_ij (kernel_unit's slope). The input gradient counts each pair twice,
 * because x_a appears in row a and in column a of A: dL/dx_a = sum_j G_aj
 * dK_aj/dx_a + sum_i G_ia dK_ia/dx_a = 2 sum_j G_aj dK_aj/dx_a, with dK_aj/dx_a
 * = 2 s S_aj (x_a - x_j). The diagonal K_aa = s does not depend on x_a. The
 * raw gradients follow by the chain rule through softplus.
 */
int qt_gp_nll_grad(qt_gp_t *gp, double *loss, double *grad_hypers, double *grad_X, qt_err *err) {
  int rc = gp_ready(gp, "qt_gp_nll_grad", err);
  if (rc != 0) return rc;
  if (loss) *loss = gp_loss(gp);
  if (!grad_hypers && !grad_X) return 0;

  size_t n = gp->n, d = gp->dim;
  gp_kernel_args args = kernel_args(gp);
  double inv_2n = 0.5 / (double)n;

  /* A^-1 from the factor: its lower triangle (row-major) lands in scratch. */
  double *M = gp->scratch;
  memcpy(M, gp->factor, n * n * sizeof *M);
  lapack_int info = LAPACKE_dpotri(LAPACK_COL_MAJOR, 'U', (lapack_int)n, M, (lapack_int)n);
  if (info != 0) {
    return qt_err_set(err, QT_ENUMERIC, "qt_gp_nll_grad: inverting K + noise*I failed (info %d)",
                      (int)info);
  }

  /* One pass over the lower triangle: accumulate the hyperparameter sums and
   * overwrite A^-1 with the full symmetric M (entry (i, j) is read before it
   * or its mirror is written). */
  double sum_dl_ds = 0.0, sum_dl_dnoise = 0.0, sum_dl_dl = 0.0;
  for (size_t i = 0; i < n; i++) {
    for (size_t j = 0; j <= i; j++) {
      double g = inv_2n * (M[i * n + j] - gp->alpha[i] * gp->alpha[j]);
      double d2 = dist2(gp->X + i * d, gp->X + j * d, d);
      double slope = 0.0;
      double kappa = kernel_unit(&args, d2, &slope);
      double pair = (i == j) ? 1.0 : 2.0; /* off-diagonal entries stand for (i,j) and (j,i) */
      sum_dl_ds += pair * g * kappa;
      /* A zero slope skips the term, so that an infinite d2 adds 0, not NaN. */
      if (slope != 0.0)
        sum_dl_dl += pair * g * args.outputscale * slope * (-2.0 * d2 / args.lengthscale);
      if (i == j) sum_dl_dnoise += g;
      M[i * n + j] = args.outputscale * g * slope;
      M[j * n + i] = args.outputscale * g * slope;
    }
  }

  if (grad_hypers) {
    double alpha_sum = 0.0;
    for (size_t i = 0; i < n; i++) alpha_sum += gp->alpha[i];
    grad_hypers[QT_GP_HYPER_MEAN] = -alpha_sum / (double)n;
    grad_hypers[QT_GP_HYPER_RAW_OUTPUTSCALE] =
        sum_dl_ds * softplus_slope(gp->raw[QT_GP_HYPER_RAW_OUTPUTSCALE]);
    grad_hypers[QT_GP_HYPER_RAW_NOISE] =
        sum_dl_dnoise * softplus_slope(gp->raw[QT_GP_HYPER_RAW_NOISE]);
    grad_hypers[QT_GP_HYPER_RAW_LENGTHSCALE] =
        sum_dl_dl * softplus_slope(gp->raw[QT_GP_HYPER_RAW_LENGTHSCALE]);
  }

  if (grad_X) {
    /* grad_X = 4 (diag(M 1) X - M X); M X is the O(n^2 d) part, on BLAS. The
     * two terms cancel for inputs with a large common offset, which costs
     * about log10(offset / spread) of the 16 digits of a double. */
    for (size_t i = 0; i < n; i++) {
      double sum = 0.0;
      for (size_t j = 0; j < n; j++) sum += M[i * n + j];
      gp->rowsum[i] = sum;
    }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)d, (int)n, -4.0, M, (int)n,
                gp->X, (int)d, 0.0, grad_X, (int)d);
    for (size_t i = 0; i < n; i++) {
      for (size_t k = 0; k < d; k++) grad_X[i * d + k] += 4.0 * gp->rowsum[i] * gp->X[i * d + k];
    }
  }
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Prediction                                                                 */
/* ------------------------------------------------------------------------- */

int qt_gp_predict(qt_gp_t *gp, const double *X_test, size_t m, double *mean, double *variance,
                  qt_gp_variance kind, qt_err *err) {
  if (kind != QT_GP_VARIANCE_PREDICTIVE && kind != QT_GP_VARIANCE_LATENT) {
    return qt_err_set(err, QT_EINVAL, "qt_gp_predict: unknown variance kind %d", (int)kind);
  }
  int rc = gp_ready(gp, "qt_gp_predict", err);
  if (rc != 0) return rc;
  size_t n = gp->n, d = gp->dim;
  size_t bad = first_nonfinite_row(X_test, m, d);
  if (bad < m) return qt_err_set(err, QT_EINVAL, "qt_gp_predict: test row %zu is not finite", bad);

  gp_kernel_args args = kernel_args(gp);
  double c0 = qt_gp_mean_constant(gp);
  double noise = (kind == QT_GP_VARIANCE_PREDICTIVE) ? qt_gp_noise(gp) : 0.0;

  for (size_t start = 0; start < m; start += GP_PREDICT_BLOCK) {
    size_t count = m - start < GP_PREDICT_BLOCK ? m - start : GP_PREDICT_BLOCK;
    /* B (n, count): column t holds k* = k(X, x*_t). */
    double *B = gp->block;
    for (size_t i = 0; i < n; i++) {
      for (size_t t = 0; t < count; t++) {
        B[i * count + t] =
            args.outputscale *
            kernel_unit(&args, dist2(gp->X + i * d, X_test + (start + t) * d, d), NULL);
      }
    }
    if (mean) {
      /* mean* = c0 + B^T alpha */
      cblas_dgemv(CblasRowMajor, CblasTrans, (int)n, (int)count, 1.0, B, (int)count, gp->alpha, 1,
                  0.0, mean + start, 1);
      for (size_t t = 0; t < count; t++) mean[start + t] += c0;
    }
    if (variance) {
      /* V = L^-1 B, so that k*^T A^-1 k* = ||column t of V||^2. */
      cblas_dtrsm(CblasRowMajor, CblasLeft, CblasLower, CblasNoTrans, CblasNonUnit, (int)n,
                  (int)count, 1.0, gp->factor, (int)n, B, (int)count);
      for (size_t t = 0; t < count; t++) {
        double explained = 0.0;
        for (size_t i = 0; i < n; i++) explained += B[i * count + t] * B[i * count + t];
        double latent = args.outputscale - explained;
        variance[start + t] = (latent > 0.0 ? latent : 0.0) + noise;
      }
    }
  }
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Fitting the hyperparameters                                                */
/* ------------------------------------------------------------------------- */

qt_gp_params qt_gp_default_params(void) {
  qt_gp_params params;
  params.iterations = 100;
  params.learning_rate = 0.1;
  params.beta1 = 0.9;
  params.beta2 = 0.999;
  params.epsilon = 1e-8;
  return params;
}

static int check_params(const qt_gp_params *p, qt_err *err) {
  if (p->iterations < 0)
    return qt_err_set(err, QT_EINVAL, "qt_gp_fit: iterations %d < 0", p->iterations);
  if (!(p->learning_rate > 0.0) || !isfinite(p->learning_rate)) {
    return qt_err_set(err, QT_EINVAL, "qt_gp_fit: learning rate %g is not positive",
                      p->learning_rate);
  }
  if (!(p->beta1 >= 0.0 && p->beta1 < 1.0) || !(p->beta2 >= 0.0 && p->beta2 < 1.0)) {
    return qt_err_set(err, QT_EINVAL, "qt_gp_fit: betas (%g, %g) must lie in [0, 1)", p->beta1,
                      p->beta2);
  }
  if (!(p->epsilon > 0.0))
    return qt_err_set(err, QT_EINVAL, "qt_gp_fit: epsilon %g is not positive", p->epsilon);
  return 0;
}

int qt_gp_fit(qt_gp_t *gp, const qt_gp_params *params, qt_gp_fit_report *report, qt_err *err) {
  qt_gp_params defaults = qt_gp_default_params();
  if (!params) params = &defaults;
  int rc = check_params(params, err);
  if (rc != 0) return rc;

  double initial_loss = 0.0;
  rc = qt_gp_nll(gp, &initial_loss, err);
  if (rc != 0) return qt_err_prefix(err, rc, "qt_gp_fit: at the starting hyperparameters");

  /* good: the last hyperparameters whose loss was evaluated, after good_steps
   * updates; the fit falls back to them when a factorization fails. */
  double good[GP_HYPER_COUNT], grad[GP_HYPER_COUNT];
  double m1[GP_HYPER_COUNT] = {0}, m2[GP_HYPER_COUNT] = {0};
  double loss = initial_loss;
  int good_steps = 0;
  memcpy(good, gp->raw, sizeof good);
  for (int step = 1; step <= params->iterations; step++) {
    rc = qt_gp_nll_grad(gp, &loss, grad, NULL, err);
    if (rc != 0) break;
    memcpy(good, gp->raw, sizeof good);
    good_steps = step - 1;
    /* torch.optim.Adam: bias-corrected moments, eps added to sqrt(v_hat). */
    double correction1 = 1.0 - pow(params->beta1, step);
    double correction2 = 1.0 - pow(params->beta2, step);
    for (size_t h = 0; h < GP_HYPER_COUNT; h++) {
      m1[h] = params->beta1 * m1[h] + (1.0 - params->beta1) * grad[h];
      m2[h] = params->beta2 * m2[h] + (1.0 - params->beta2) * grad[h] * grad[h];
      double denom = sqrt(m2[h]) / sqrt(correction2) + params->epsilon;
      gp->raw[h] -= params->learning_rate / correction1 * m1[h] / denom;
    }
    gp->factored = 0;
  }
  int steps = params->iterations;
  if (rc == 0) rc = qt_gp_nll(gp, &loss, err);
  if (rc != 0) {
    qt_err_prefix(err, rc, "qt_gp_fit: after %d of %d steps", good_steps + 1, params->iterations);
    memcpy(gp->raw, good, sizeof good);
    gp->factored = 0;
    steps = good_steps;
    /* These hyperparameters factorized before, so this succeeds; should it
     * not, the GP stays unfactored and the next query reports why. */
    if (qt_gp_nll(gp, &loss, NULL) != 0) loss = NAN;
  }
  if (report) {
    report->initial_loss = initial_loss;
    report->final_loss = loss;
    report->steps = steps;
  }
  return rc;
}

/*
 * qt_surrogate.h - the surrogate models of qtune.
 *
 * What this module implements (so far): the exact Gaussian process that every
 * later surrogate builds on. The deep-kernel GP of Quick-Tune (specs/
 * algorithms.md section 1.3) is this GP evaluated on the features phi(x) of a
 * feature extractor: it conditions the GP on the features of a batch, asks for
 * the loss and its gradient with respect to the GP hyperparameters *and* the
 * inputs (here: the features), and backpropagates the latter into the
 * extractor. The GP therefore treats its inputs as plain numbers and offers
 * dL/dX.
 *
 * The model (gpytorch's ExactGP with ConstantMean, ScaleKernel(RBFKernel or
 * MaternKernel(nu=2.5)) and GaussianLikelihood):
 *
 *   y = f(x) + e,   f ~ GP(c0, k),   e ~ N(0, noise)
 *   k(x, x') = s * kappa(r),   r = ||x - x'|| / l     (one shared lengthscale)
 *   RBF:        kappa(r) = exp(-r^2 / 2)
 *   Matern-5/2: kappa(r) = (1 + sqrt(5) r + 5 r^2 / 3) exp(-sqrt(5) r)
 *
 * Hyperparameters live in unconstrained "raw" form with gpytorch's default
 * constraints, so that raw values from a gpytorch checkpoint can be used as
 * they are:
 *
 *   s     = softplus(raw_outputscale)
 *   l     = softplus(raw_lengthscale)
 *   noise = softplus(raw_noise) + 1e-4
 *   c0    = the constant mean, unconstrained
 *
 * softplus(x) = log(1 + exp(x)), and x itself for x > 20 (torch's threshold).
 * A new GP starts from raw values 0: s = l = ln 2, noise = ln 2 + 1e-4, c0 = 0.
 * Only this softplus parameterization exists (no log-space option), so that
 * numbers and checkpoints stay comparable with gpytorch.
 *
 * The raw hyperparameters form one flat vector (qt_gp_hyper_count() entries)
 * in the order of qt_gp_hyper: mean, outputscale, noise, then the lengthscale.
 * The lengthscale comes last so that an ARD variant (one lengthscale per input
 * dimension) can extend the vector without moving the other entries.
 *
 * Training loss (gpytorch's -ExactMarginalLogLikelihood, divided by n):
 *
 *   loss = (1/n) [ 1/2 r^T A^-1 r + 1/2 log|A| + n/2 log(2 pi) ],
 *   A = K + (noise + jitter) I,  r = y - c0.
 *
 * A is factorized by Cholesky (LAPACK dpotrf). When that fails, a jitter of
 * 1e-8 * mean(diag A) is added to the diagonal and multiplied by 10 on each
 * further failure, at most QT_GP_JITTER_TRIES times; qt_gp_jitter() reports
 * the jitter used (0 when none was needed). After the last try the call fails
 * with QT_ENUMERIC. The jitter is a constant of each factorization: gradients
 * do not differentiate through it.
 *
 * Predictions at test points x* (gpytorch's likelihood(model(x*))):
 *
 *   mean*     = c0 + k*^T A^-1 r
 *   variance* = s - k*^T A^-1 k* + noise     (QT_GP_VARIANCE_PREDICTIVE)
 *   variance* = s - k*^T A^-1 k*             (QT_GP_VARIANCE_LATENT)
 *
 * The latent variance is clamped at 0 against rounding.
 *
 * Memory ownership. qt_gp_t is opaque and owned by the caller (qt_gp_init /
 * qt_gp_free). It copies the training data given to qt_gp_condition and keeps
 * one workspace sized for the largest n seen so far (2 n^2 + (d + 67) n
 * doubles); it grows only when n grows, so a training loop that conditions on
 * batches of the same size allocates nothing per step. Arrays passed in are
 * read during the call only; output arrays are caller-owned.
 *
 * Shapes. All matrices are row-major doubles: training inputs X (n, d),
 * targets y (n), test inputs (m, d), and the input gradient (n, d), laid out
 * like X. d is fixed when the GP is created.
 *
 * State. After qt_gp_condition, the GP factorizes A lazily: the first query
 * (loss, gradient, prediction) after new data or new hyperparameters
 * factorizes, later queries reuse the factor. A query that needs a
 * factorization can therefore fail with QT_ENUMERIC. A qt_gp_t is not
 * thread-safe: use one per thread.
 *
 * Errors follow qt_core.h: 0 or a negative QT_E* code, detail in *err.
 */
#ifndef QT_SURROGATE_H
#define QT_SURROGATE_H

#include <stddef.h>

#include "core/qt_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ========================================================================= */
/* Exact Gaussian process                                                     */
/* ========================================================================= */

typedef enum qt_gp_kernel {
  QT_GP_KERNEL_RBF = 0,     /* squared exponential */
  QT_GP_KERNEL_MATERN52 = 1 /* Matern with nu = 5/2 */
} qt_gp_kernel;

/* "rbf" or "matern52"; "unknown" outside the enum. Never NULL. */
const char *qt_gp_kernel_name(qt_gp_kernel kernel);

/* Positions in the raw hyperparameter vector. */
typedef enum qt_gp_hyper {
  QT_GP_HYPER_MEAN = 0,            /* c0, the constant mean */
  QT_GP_HYPER_RAW_OUTPUTSCALE = 1, /* s = softplus(raw) */
  QT_GP_HYPER_RAW_NOISE = 2,       /* noise = softplus(raw) + 1e-4 */
  QT_GP_HYPER_RAW_LENGTHSCALE = 3  /* l = softplus(raw); first of the lengthscales */
} qt_gp_hyper;

/* The lower bound gpytorch's GaussianLikelihood puts on the noise variance. */
#define QT_GP_NOISE_FLOOR 1e-4
/* Cholesky retries with growing jitter before a factorization fails. */
#define QT_GP_JITTER_TRIES 6
/* The first jitter, relative to the mean of the diagonal of A. */
#define QT_GP_JITTER_RELATIVE 1e-8

typedef struct qt_gp qt_gp_t;

/* Creates a GP with the given kernel on inputs of dim >= 1 dimensions, with
 * all raw hyperparameters 0 and no data. */
int qt_gp_init(qt_gp_t **out, qt_gp_kernel kernel, size_t dim, qt_err *err);
void qt_gp_free(qt_gp_t *gp);

qt_gp_kernel qt_gp_kernel_of(const qt_gp_t *gp);
size_t qt_gp_dim(const qt_gp_t *gp);
/* Number of training points of the last qt_gp_condition (0 before). */
size_t qt_gp_size(const qt_gp_t *gp);

/* Grows the workspace for n training points now, so that later calls with up
 * to n points allocate nothing. Optional: qt_gp_condition grows it too. */
int qt_gp_reserve(qt_gp_t *gp, size_t n, qt_err *err);

/* --- Hyperparameters ---------------------------------------------------- */

/* Length of the raw hyperparameter vector (4: one shared lengthscale). */
size_t qt_gp_hyper_count(const qt_gp_t *gp);
/* Copies the raw vector out (qt_gp_hyper_count entries). */
void qt_gp_get_hypers(const qt_gp_t *gp, double *raw);
/* Replaces the raw vector; the next query refactorizes. Non-finite values are
 * QT_EINVAL naming the entry, and leave the GP unchanged. */
int qt_gp_set_hypers(qt_gp_t *gp, const double *raw, qt_err *err);

/* The constrained values the raw vector stands for. */
double qt_gp_mean_constant(const qt_gp_t *gp);
double qt_gp_outputscale(const qt_gp_t *gp);
double qt_gp_lengthscale(const qt_gp_t *gp);
double qt_gp_noise(const qt_gp_t *gp);

/* --- Data, loss and gradients ------------------------------------------- */

/* Conditions the GP on n >= 1 training points: copies X (n, d) and y (n).
 * Non-finite inputs or targets are QT_EINVAL naming the row, and leave the
 * previous data in place. */
int qt_gp_condition(qt_gp_t *gp, const double *X, const double *y, size_t n, qt_err *err);

/* The loss (negative log marginal likelihood divided by n) of the training
 * data under the current hyperparameters. */
int qt_gp_nll(qt_gp_t *gp, double *loss, qt_err *err);

/* The loss and its gradient: grad_hypers (qt_gp_hyper_count) with respect to
 * the raw hyperparameters, grad_X (n, d) with respect to the training inputs.
 * Any of loss, grad_hypers and grad_X may be NULL. Costs one extra O(n^3)
 * inverse over qt_gp_nll. */
int qt_gp_nll_grad(qt_gp_t *gp, double *loss, double *grad_hypers, double *grad_X, qt_err *err);

/* The jitter added to the diagonal by the last factorization (0 when none
 * was needed). */
double qt_gp_jitter(const qt_gp_t *gp);

/* --- Prediction ---------------------------------------------------------- */

typedef enum qt_gp_variance {
  QT_GP_VARIANCE_PREDICTIVE = 0, /* of a new observation y*: includes the noise */
  QT_GP_VARIANCE_LATENT = 1      /* of f(x*): without the noise */
} qt_gp_variance;

/* Posterior mean (m) and variance (m) at m test points X_test (m, d). Either
 * output may be NULL; without variance the O(m n^2) solve is skipped. m may
 * be 0. Needs data (QT_EINVAL before the first qt_gp_condition). */
int qt_gp_predict(qt_gp_t *gp, const double *X_test, size_t m, double *mean, double *variance,
                  qt_gp_variance kind, qt_err *err);

/* --- Fitting the hyperparameters ----------------------------------------- */

/* Adam on the raw hyperparameters of a plain GP (torch.optim.Adam, no weight
 * decay), minimizing qt_gp_nll on the conditioned data. */
typedef struct qt_gp_params {
  int iterations;       /* Adam steps (100) */
  double learning_rate; /* (0.1) */
  double beta1;         /* (0.9) */
  double beta2;         /* (0.999) */
  double epsilon;       /* (1e-8) */
} qt_gp_params;

qt_gp_params qt_gp_default_params(void);

typedef struct qt_gp_fit_report {
  double initial_loss; /* loss at the hyperparameters the fit started from */
  double final_loss;   /* loss at the hyperparameters the fit leaves in the GP */
  int steps;           /* Adam steps taken */
} qt_gp_fit_report;

/* Runs params->iterations Adam steps from the current hyperparameters, with
 * fresh moments. A factorization that fails mid-way restores the
 * hyperparameters of the last good step and returns QT_ENUMERIC (the report
 * then describes the restored state). report may be NULL. Invalid params are
 * QT_EINVAL; no data is QT_EINVAL. */
int qt_gp_fit(qt_gp_t *gp, const qt_gp_params *params, qt_gp_fit_report *report, qt_err *err);

#ifdef __cplusplus
}
#endif

#endif /* QT_SURROGATE_H */

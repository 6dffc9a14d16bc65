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

/* ========================================================================= */
/* Deep-kernel GP and cost predictor (Quick-Tune, specs §1.3 and §1.6)        */
/* ========================================================================= */

/*
 * One "row" is what the surrogates see of (configuration, next epoch):
 *
 *   x       (hp_dim)    the configuration's encoding (qt_space_encode)
 *   budget  scalar      the epoch to predict, divided by the fidelity maximum
 *   curve   (curve_len) the scores of the epochs before it, zero-padded
 *   meta    (meta_dim)  dataset meta-features, already scaled (see below)
 *   y       scalar      the target: the score of that epoch (training rows)
 *   cost    scalar      the seconds of that epoch (cost-predictor training)
 *
 * Meta-features are scaled by the caller with one rule everywhere
 * (QT_SURROGATE_META_SCALE); Quick-Tune's code divides by 1000 when
 * meta-training and by 10000 at search time, an inconsistency this project
 * does not copy (specs §1.5) [RECON: the single scale].
 */
#define QT_SURROGATE_META_SCALE 1.0e-4

typedef struct qt_rows {
  size_t n;
  const double *x;      /* (n, hp_dim) */
  const double *budget; /* (n) */
  const double *curve;  /* (n, curve_len) */
  const double *meta;   /* (n, meta_dim), or NULL when meta_dim is 0 */
  const double *y;      /* (n) targets, or NULL for queries */
  const double *cost;   /* (n) epoch seconds, or NULL */
} qt_rows;

/* Shapes of the feature extractor. The hyperparameter encoding is split into
 * two encoders: columns [model_begin, model_end) (the model one-hots) and the
 * rest; model_begin == model_end means a single encoder over all of x.
 * Defaults (qt_dkl_default_config) follow the Quick-Tune checkpoints: hidden
 * 32, output 32, curve encoder output 16, meta embedding 4, curve_len 50,
 * RBF kernel, dropout 0.25. */
typedef struct qt_dkl_config {
  size_t hp_dim;
  size_t model_begin, model_end;
  size_t curve_len;
  size_t meta_dim;
  size_t hidden_dim;
  size_t output_dim;
  size_t curve_out_dim;
  size_t meta_out_dim;
  double dropout;
  qt_gp_kernel kernel;
} qt_dkl_config;

qt_dkl_config qt_dkl_default_config(size_t hp_dim, size_t meta_dim);

/* The deep-kernel GP: feature extractor phi (specs §1.3) followed by the
 * exact GP above on phi. */
typedef struct qt_dkl qt_dkl_t;

/* Initializes the weights as PyTorch does (U(-1/sqrt(fan_in), 1/sqrt(fan_in)))
 * from rng, and the GP hyperparameters at raw 0. */
int qt_dkl_init(qt_dkl_t **out, const qt_dkl_config *config, qt_rng_t *rng, qt_err *err);
void qt_dkl_free(qt_dkl_t *dkl);
const qt_dkl_config *qt_dkl_get_config(const qt_dkl_t *dkl);
/* All trainable numbers (extractor weights, then GP raw hyperparameters) as
 * one flat vector: for restarts from a meta-trained state and for files. */
size_t qt_dkl_param_count(const qt_dkl_t *dkl);
void qt_dkl_get_params(const qt_dkl_t *dkl, double *params);
int qt_dkl_set_params(qt_dkl_t *dkl, const double *params, qt_err *err);

/* `steps` Adam steps (lr, betas 0.9/0.999, eps 1e-8, fresh Adam state per
 * call) on -MLL/n of the GP conditioned on the features of `rows` in train
 * mode (dropout on, drawn from rng). Skips when rows->n < 2. *loss (may be
 * NULL) receives the last loss. A numerical failure restores the parameters
 * from before the call and returns QT_ENUMERIC. */
int qt_dkl_train(qt_dkl_t *dkl, const qt_rows *rows, int steps, double lr, qt_rng_t *rng,
                 double *loss, qt_err *err);
/* Conditions the GP on rows (features in eval mode) and predicts mean and
 * predictive variance (noise included) at the query rows. */
int qt_dkl_predict(qt_dkl_t *dkl, const qt_rows *train, const qt_rows *query, double *mean,
                   double *variance, qt_err *err);

/* The cost predictor (specs §1.6): its own extractor without model encoders,
 * [x, budget, Linear(meta), ConvNet(curve)] -> Linear -> LeakyReLU -> Linear
 * -> ReLU -> Linear(1) -> ReLU. It predicts an epoch's seconds, in the units of
 * rows->cost; like Quick-Tune it learns seconds / 100 internally. */
typedef struct qt_costnet qt_costnet_t;

int qt_costnet_init(qt_costnet_t **out, const qt_dkl_config *config, qt_rng_t *rng, qt_err *err);
void qt_costnet_free(qt_costnet_t *net);
size_t qt_costnet_param_count(const qt_costnet_t *net);
void qt_costnet_get_params(const qt_costnet_t *net, double *params);
int qt_costnet_set_params(qt_costnet_t *net, const double *params, qt_err *err);
/* `steps` Adam steps on the mean squared error against rows->cost. */
int qt_costnet_train(qt_costnet_t *net, const qt_rows *rows, int steps, double lr, qt_rng_t *rng,
                     double *loss, qt_err *err);
/* Predicted seconds (>= 0) of each query row's epoch. */
int qt_costnet_predict(qt_costnet_t *net, const qt_rows *query, double *seconds, qt_err *err);

#ifdef __cplusplus
}
#endif

#endif /* QT_SURROGATE_H */

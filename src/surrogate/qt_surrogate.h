/*
 * qt_surrogate.h - the surrogate models of qtune.
 *
 * What this module implements:
 *   - the exact Gaussian process (this section) that every surrogate builds on;
 *   - the deep-kernel GP of Quick-Tune (specs/algorithms.md section 1.3): this
 *     GP evaluated on the features phi of a feature extractor. It conditions
 *     the GP on the features of a batch, asks for the loss and its gradient
 *     with respect to the GP hyperparameters *and* the inputs (the features),
 *     and backpropagates the latter into the extractor by hand. The GP
 *     therefore treats its inputs as plain numbers and offers dL/dX;
 *   - the cost predictor (section 1.6), a network that predicts an epoch's
 *     seconds;
 *   - meta-training of both on a meta-dataset (section 1.5) and the surrogate
 *     file that stores them with the space they were trained for.
 * qt_surrogate_internal.h holds the network shared by both models; the
 * sections below document each part.
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
#include <stdint.h>

#include "core/qt_core.h"
#include "metadata/qt_metadata.h"

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
 *   x       (hp_dim)    the configuration's encoding (qt_surrogate_encode:
 *                       qt_space_encode, or model descriptors)
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

/* The default configuration for a search space: hp_dim is the space's
 * encoded width, and when the space has a categorical hyperparameter named
 * "model", [model_begin, model_end) is exactly its one-hot block (its value
 * columns, without a ":active" column). Quick-Tune splits its 69-column
 * layout at (0, 23) and (23, 69), which sends the 24th model column to the
 * second encoder; that off-by-one belongs to their layout and is not copied
 * [RECON]. A space without such a hyperparameter gets one encoder.
 *
 * Network details shared by both models: each encoder is Linear(in ->
 * hidden_dim) -> ReLU -> Linear(hidden_dim -> hidden_dim); the meta-feature
 * embedding is absent when meta_dim is 0; MaxPool1d(2) floors odd curve
 * lengths (curve_len >= 2); dropout acts in training only. */
qt_dkl_config qt_dkl_space_config(const qt_space_t *space, size_t meta_dim);

/* The deep-kernel GP: feature extractor phi (specs §1.3) followed by the
 * exact GP above on phi.
 *
 * Memory: qt_dkl_t and qt_costnet_t are opaque and caller-owned (init/free).
 * Each keeps one workspace sized for the largest batch it has seen (the
 * extractor's activations and gradients, the GP's matrices); it grows only
 * when a batch is larger, so training on batches of a stable size allocates
 * nothing per step. Predictions run the queries in blocks of 256 rows. Not
 * thread-safe: one model per thread.
 *
 * The parameter vector (qt_dkl_get_params) is every extractor weight and
 * bias, tensor after tensor (encoders, meta embedding, convolutions, curve
 * Linear, trunk), then the GP's raw hyperparameters in qt_gp_hyper order;
 * its layout depends only on the config. The trunk's output bias cannot
 * change the loss (the kernel sees differences of features) and keeps its
 * initial value. */
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
 * mode (dropout on, drawn from rng). Skips when rows->n < 2 (then *loss is
 * NaN). *loss (may be NULL) receives the loss of the last step, computed
 * before its update. A numerical failure restores the parameters from before
 * the call and returns QT_ENUMERIC. Rows with a missing y, a missing meta
 * (meta_dim > 0) or a non-finite number are QT_EINVAL naming the row. */
int qt_dkl_train(qt_dkl_t *dkl, const qt_rows *rows, int steps, double lr, qt_rng_t *rng,
                 double *loss, qt_err *err);
/* Conditions the GP on rows (features in eval mode) and predicts mean and
 * predictive variance (noise included) at the query rows. mean and variance
 * are (query->n), either may be NULL. With train->n == 0 it returns the
 * prior: mean c0, variance outputscale + noise. Queries are processed in
 * blocks, so a large candidate pool needs no large workspace. */
int qt_dkl_predict(qt_dkl_t *dkl, const qt_rows *train, const qt_rows *query, double *mean,
                   double *variance, qt_err *err);

/* The cost predictor (specs §1.6): its own extractor without model encoders,
 * [x, budget, Linear(meta), ConvNet(curve)] -> Linear -> LeakyReLU -> Linear
 * -> ReLU -> Linear(1) -> ReLU. It predicts an epoch's seconds, in the units of
 * rows->cost; like Quick-Tune it learns seconds / 100 internally. */
typedef struct qt_costnet qt_costnet_t;

int qt_costnet_init(qt_costnet_t **out, const qt_dkl_config *config, qt_rng_t *rng, qt_err *err);
void qt_costnet_free(qt_costnet_t *net);
const qt_dkl_config *qt_costnet_get_config(const qt_costnet_t *net);
size_t qt_costnet_param_count(const qt_costnet_t *net);
void qt_costnet_get_params(const qt_costnet_t *net, double *params);
int qt_costnet_set_params(qt_costnet_t *net, const double *params, qt_err *err);
/* `steps` Adam steps on the mean squared error against rows->cost. */
int qt_costnet_train(qt_costnet_t *net, const qt_rows *rows, int steps, double lr, qt_rng_t *rng,
                     double *loss, qt_err *err);
/* Predicted seconds (>= 0) of each query row's epoch. */
int qt_costnet_predict(qt_costnet_t *net, const qt_rows *query, double *seconds, qt_err *err);
/* A data-dependent start: shifts the output bias so that the mean
 * pre-activation of the output on rows (with costs, eval mode) equals their
 * mean cost / 100. PyTorch's initialization often leaves the final ReLU
 * closed for every row, and a closed ReLU passes no gradient, so that the
 * net would predict 0 forever; meta-training calibrates on one batch before
 * its first step [RECON: Quick-Tune does not]. */
int qt_costnet_calibrate(qt_costnet_t *net, const qt_rows *rows, qt_err *err);

/* ========================================================================= */
/* Model encoding: one-hot or model descriptors (issue 10)                    */
/* ========================================================================= */

/*
 * The surrogates see a configuration's model either as the space's one-hot
 * block (QT_MODEL_ENCODING_ONEHOT, Quick-Tune's encoding and the default) or
 * as a fixed block of model descriptors (QT_MODEL_ENCODING_DESCRIPTORS), so
 * that a model the meta-dataset never saw still gets an encoding that says
 * what kind of model it is.
 *
 * Descriptor encoding. The space must have an unconditional categorical
 * hyperparameter "model". The encoded vector is the space's encoding with
 * the model's one-hot columns cut out and these QT_DESCRIPTOR_COLUMNS (15)
 * columns put in their place, in this order:
 *
 *   desc:family=transformer         family one-hot (1 of 5, or all 0 for a
 *   desc:family=efficient_convnet   family outside the list); see
 *   desc:family=residual_convnet    qt_descriptor_family_name
 *   desc:family=hybrid
 *   desc:family=mlp
 *   desc:log10_parameters           then, for each of 5 numeric descriptors,
 *   desc:log10_parameters:known     its z-scored value (0 when unknown) and a
 *   desc:log2_image_size            0/1 "known" column
 *   desc:log2_image_size:known
 *   desc:log2_depth, desc:log2_depth:known
 *   desc:log2_width, desc:log2_width:known
 *   desc:pretrain_top1, desc:pretrain_top1:known   (top-1 as a fraction)
 *
 * The z-score uses the mean and standard deviation (population; 1 when it is
 * 0 or fewer than two models know the value) of the transformed values over
 * the models of the descriptor table the surrogate was trained with; the
 * surrogate file stores the table and these statistics, so that a model
 * added later (from a hub, qt_surrogate_add_hub_descriptors) is scaled the
 * same way. The deep-kernel GP's first encoder reads exactly the 15
 * descriptor columns ([model_begin, model_end) of its config).
 *
 * The encoding hash of a descriptors surrogate covers the names of the
 * columns above and of every non-model column, not the model choices: a
 * search whose space lists other models (a hub's) fits the surrogate as long
 * as every model has descriptors.
 *
 * Descriptor tables come from a YAML file (configs/model-descriptors/):
 *
 *   version: 1
 *   name: quicktune
 *   description: free text                optional
 *   models:
 *     - name: beit_base_patch16_384       required, unique
 *       family: transformer               required: a descriptor family
 *       parameters: 86.7e6                optional, > 0
 *       image_size: 384                   optional, pixels, > 0
 *       depth: 12                         optional, blocks, > 0
 *       width: 768                        optional, features entering the head, > 0
 *       pretrain_top1: 0.874              optional, fraction in [0, 1]
 *       note: free text                   optional
 *
 * or from a model hub (its descriptors; families map vit, deit, deit3 ->
 * transformer, mobilenetv2, efficientnet -> efficient_convnet, resnet ->
 * residual_convnet, mlp -> mlp; unknown counts of 0 and a NaN top-1 are
 * unknown; image_size 0 is unknown).
 */
typedef enum qt_model_encoding {
  QT_MODEL_ENCODING_ONEHOT = 0,
  QT_MODEL_ENCODING_DESCRIPTORS = 1
} qt_model_encoding;

#define QT_DESCRIPTOR_FAMILY_COUNT 5
#define QT_DESCRIPTOR_NUMERIC_COUNT 5
#define QT_DESCRIPTOR_COLUMNS (QT_DESCRIPTOR_FAMILY_COUNT + 2 * QT_DESCRIPTOR_NUMERIC_COUNT)
#define QT_DESCRIPTOR_TABLE_VERSION 1
/* A family index meaning "none of the list" (all family columns 0). */
#define QT_DESCRIPTOR_FAMILY_OTHER ((size_t)QT_DESCRIPTOR_FAMILY_COUNT)

/* Indices of qt_model_descriptor.values: raw values, NaN when unknown. */
enum {
  QT_DESCRIPTOR_PARAMETERS = 0,   /* count */
  QT_DESCRIPTOR_IMAGE_SIZE = 1,   /* pixels */
  QT_DESCRIPTOR_DEPTH = 2,        /* blocks */
  QT_DESCRIPTOR_WIDTH = 3,        /* features entering the head */
  QT_DESCRIPTOR_PRETRAIN_TOP1 = 4 /* fraction */
};

/* "onehot" or "descriptors" ("unknown" outside the enum). */
const char *qt_model_encoding_name(qt_model_encoding encoding);
/* Parses "onehot" or "descriptors"; QT_EINVAL naming both otherwise. */
int qt_model_encoding_parse(const char *text, qt_model_encoding *out, qt_err *err);
/* "transformer", "efficient_convnet", "residual_convnet", "hybrid", "mlp"
 * for 0..4, "other" for QT_DESCRIPTOR_FAMILY_OTHER. */
const char *qt_descriptor_family_name(size_t family);
/* A family by name ("other" included); QT_ENOENT otherwise. */
int qt_descriptor_family_find(const char *name, size_t *family);
/* The descriptor family of a hub family (other for an unknown one). */
size_t qt_descriptor_family_of_hub(const char *hub_family);
/* The name of descriptor column k < QT_DESCRIPTOR_COLUMNS. */
const char *qt_descriptor_column_name(size_t column);

/* One model's descriptors. */
typedef struct qt_model_descriptor {
  const char *name;
  size_t family; /* < QT_DESCRIPTOR_FAMILY_COUNT, or QT_DESCRIPTOR_FAMILY_OTHER */
  double values[QT_DESCRIPTOR_NUMERIC_COUNT]; /* raw, NaN when unknown */
} qt_model_descriptor;

/* A table of model descriptors; opaque, caller-owned, owns its strings. */
typedef struct qt_descriptor_table qt_descriptor_table_t;

int qt_descriptor_table_create(qt_descriptor_table_t **out, qt_err *err);
void qt_descriptor_table_free(qt_descriptor_table_t *table);
/* Adds a copy of d; QT_EEXIST for a name already there, QT_EINVAL for an
 * empty name, a bad family or a value out of range (non-positive counts and
 * sizes, a top-1 outside [0, 1], infinities). */
int qt_descriptor_table_add(qt_descriptor_table_t *table, const qt_model_descriptor *d,
                            qt_err *err);
/* Adds the models of a descriptor YAML file (format above); QT_EPARSE,
 * QT_EVERSION or QT_ESCHEMA with "file:line:column: ..."; a model already in
 * the table is QT_EEXIST. */
int qt_descriptor_table_load_file(qt_descriptor_table_t *table, const char *path, qt_err *err);
/* Adds the hub's models that the table does not hold yet; *added (may be
 * NULL) receives their number. */
int qt_descriptor_table_add_hub(qt_descriptor_table_t *table, const qt_hub_t *hub, size_t *added,
                                qt_err *err);
size_t qt_descriptor_table_count(const qt_descriptor_table_t *table);
/* Entry i < count (asserted); owned by the table. */
const qt_model_descriptor *qt_descriptor_table_at(const qt_descriptor_table_t *table, size_t i);
/* 0 and *index, or QT_ENOENT. */
int qt_descriptor_table_find(const qt_descriptor_table_t *table, const char *name, size_t *index);

/* A model codec: the encoding mode and, for descriptors, a copy of the table
 * and the z-score statistics. NULL stands for the one-hot encoding wherever
 * a codec is taken. Opaque, caller-owned. */
typedef struct qt_model_codec qt_model_codec_t;

/* A codec for mode; descriptors need a table with at least one model (it is
 * copied and the statistics are computed from it). */
int qt_model_codec_create(qt_model_encoding mode, const qt_descriptor_table_t *table,
                          qt_model_codec_t **out, qt_err *err);
/* A codec with the given table and statistics (mean, std: transformed
 * values, QT_DESCRIPTOR_NUMERIC_COUNT each; std > 0), as a file stores it. */
int qt_model_codec_create_with_stats(const qt_descriptor_table_t *table, const double *mean,
                                     const double *std, qt_model_codec_t **out, qt_err *err);
int qt_model_codec_copy(const qt_model_codec_t *codec, qt_model_codec_t **out, qt_err *err);
void qt_model_codec_free(qt_model_codec_t *codec);
/* The mode (onehot for NULL). */
qt_model_encoding qt_model_codec_mode(const qt_model_codec_t *codec);
/* The table (NULL for one-hot) and statistics (mean, std may be NULL). */
const qt_descriptor_table_t *qt_model_codec_table(const qt_model_codec_t *codec);
void qt_model_codec_stats(const qt_model_codec_t *codec, double *mean, double *std);
/* Adds the hub's models the table lacks (statistics unchanged); a no-op for
 * one-hot. */
int qt_model_codec_add_hub(qt_model_codec_t *codec, const qt_hub_t *hub, size_t *added,
                           qt_err *err);
/* The encoded width for space: the space's, or with descriptors the space's
 * minus the model's one-hot width plus QT_DESCRIPTOR_COLUMNS (0 when the
 * space has no usable "model"). */
size_t qt_model_encoded_dim(qt_model_encoding mode, const qt_space_t *space);
/* The encoding hash (see above); for one-hot qt_surrogate_space_hash. */
uint64_t qt_model_encoding_hash(qt_model_encoding mode, const qt_space_t *space);
/* 0 when space can be encoded in mode, else QT_ESCHEMA saying why. */
int qt_model_encoding_check_space(qt_model_encoding mode, const qt_space_t *space, qt_err *err);
/* The deep-kernel GP's default config for the codec's encoding of space
 * (qt_dkl_space_config for one-hot; the model encoder reads the descriptor
 * block for descriptors). */
qt_dkl_config qt_model_codec_dkl_config(const qt_model_codec_t *codec, const qt_space_t *space,
                                        size_t meta_dim);
/* The QT_DESCRIPTOR_COLUMNS descriptor columns of model `name`; QT_ENOENT
 * (naming it) when the table does not hold it. QT_EINVAL for one-hot. */
int qt_model_codec_descriptor_vector(const qt_model_codec_t *codec, const char *name, double *out,
                                     qt_err *err);
/* A codec for mode from files: the descriptor file (may be NULL), then the
 * hub's models it lacks (hub_path may be NULL); descriptors need at least
 * one of them. One-hot ignores both. */
int qt_model_codec_load(qt_model_encoding mode, const char *descriptors_path, const char *hub_path,
                        qt_model_codec_t **out, qt_err *err);
/* 0 when every model choice of space that some run of md uses has
 * descriptors in codec (always 0 for one-hot); else QT_ENOENT naming the
 * first model without. */
int qt_model_codec_check_metadataset(const qt_model_codec_t *codec, const qt_metadataset_t *md,
                                     qt_err *err);
/* Encodes config (valid for space) into out (qt_model_encoded_dim doubles).
 * With descriptors, QT_ENOENT when its model has none. */
int qt_model_codec_encode(const qt_model_codec_t *codec, const qt_space_t *space,
                          const qt_config *config, double *out, qt_err *err);

/* ========================================================================= */
/* Surrogate files                                                            */
/* ========================================================================= */

/*
 * A surrogate file holds a meta-trained deep-kernel GP and cost predictor,
 * tied to the search space and encoding they were trained for:
 *
 *   "QTSURROG"  8 bytes of magic
 *   version     u32 (QT_SURROGATE_FILE_VERSION)
 *   size        u64, bytes of the payload
 *   payload     the fields of qt_surrogate_info, the qt_dkl_config and both
 *               parameter vectors (integers u32/u64, doubles as IEEE-754
 *               bits, strings as u32 length + bytes; all little-endian)
 *   crc         u32, CRC-32 (IEEE) of the payload
 *
 * The space is identified by its name and by qt_surrogate_space_hash, a
 * hash of the encoding's column names in order: loading a file for a space
 * whose encoding differs is QT_ESCHEMA ("surrogate was trained for space X
 * (hash ...), this search uses Y (hash ...)"), as is another fidelity
 * maximum (the budget scale). A short file, a size mismatch or a wrong CRC is
 * QT_EFORMAT saying the file is truncated or corrupt; another magic is
 * QT_EFORMAT, another version QT_EVERSION. Saving writes a temporary file
 * beside the target and renames it into place.
 *
 * Model encoding. A one-hot surrogate is written as version 1, exactly as
 * before issue 10, so that files of either age read the same. A surrogate
 * with model descriptors is version 2: the version-1 payload followed by
 * u32 mode (1), u32 model count, per model name, u32 family and
 * QT_DESCRIPTOR_NUMERIC_COUNT raw values, then the means and the standard
 * deviations (QT_DESCRIPTOR_NUMERIC_COUNT each); its space hash is
 * qt_model_encoding_hash. Both versions are read.
 *
 * Memory: qt_surrogate_t is opaque and owns every string and array that
 * qt_surrogate_get_info and the accessors return.
 */
#define QT_SURROGATE_FILE_VERSION 2
/* The version written for one-hot surrogates (read as well). */
#define QT_SURROGATE_FILE_VERSION_ONEHOT 1

typedef struct qt_surrogate qt_surrogate_t;

/* What a surrogate was trained for and how. */
typedef struct qt_surrogate_info {
  /* The space (set from the space by qt_surrogate_create). */
  const char *space_name;
  uint64_t space_hash; /* qt_surrogate_space_hash */
  size_t hp_dim;       /* encoded columns */
  long fidelity_max;   /* rows' budget = epoch / fidelity_max */
  double meta_scale;   /* meta-features were multiplied by this (QT_SURROGATE_META_SCALE) */
  /* Provenance (copied by qt_surrogate_create). */
  size_t meta_feature_count;
  const char *const *meta_features; /* (meta_feature_count) names, in rows' meta order */
  const char *meta_dataset;         /* name of the meta-dataset it was trained on */
  size_t train_count;
  const char *const *train_datasets;
  size_t validation_count;
  const char *const *validation_datasets;
  size_t excluded_count;
  const char *const *excluded_datasets; /* held out of meta-training */
  long iterations;                      /* meta-training iterations run */
  long best_iteration;                  /* the iteration whose parameters were kept */
  double validation_mse;                /* of the kept parameters (NaN: no validation) */
  double untrained_validation_mse;      /* of the initial parameters */
  uint64_t seed;
  const char *created_by; /* "qtune 0.1.0" */
  /* How the model is encoded (set by qt_surrogate_create_encoded). */
  qt_model_encoding model_encoding;
} qt_surrogate_info;

/* FNV-1a (64 bits) over the space's encoded column names, each followed by
 * a newline. */
uint64_t qt_surrogate_space_hash(const qt_space_t *space);

/* A surrogate from trained models (their parameters are copied; both must
 * have the same qt_dkl_config, and its hp_dim must be the space's encoded
 * width). Provenance fields of info are copied; its space fields are ignored
 * and taken from space; info may be NULL. */
int qt_surrogate_create(const qt_space_t *space, const qt_dkl_t *dkl, const qt_costnet_t *cost,
                        const qt_surrogate_info *info, qt_surrogate_t **out, qt_err *err);
/* The same for a model codec (NULL: one-hot, as qt_surrogate_create): the
 * models' hp_dim must be qt_model_encoded_dim for the codec's mode; the
 * codec is copied. */
int qt_surrogate_create_encoded(const qt_space_t *space, const qt_model_codec_t *codec,
                                const qt_dkl_t *dkl, const qt_costnet_t *cost,
                                const qt_surrogate_info *info, qt_surrogate_t **out, qt_err *err);
void qt_surrogate_free(qt_surrogate_t *surrogate);
/* The surrogate's model codec: NULL for one-hot. */
const qt_model_codec_t *qt_surrogate_codec(const qt_surrogate_t *surrogate);
/* 0 when the surrogate uses model encoding `mode`, else QT_ESCHEMA saying
 * which encoding it was meta-trained with and which one was asked for. */
int qt_surrogate_check_encoding(const qt_surrogate_t *surrogate, qt_model_encoding mode,
                                qt_err *err);
/* Gives a descriptors surrogate the descriptors of the hub's models that
 * its table lacks (a search over a hub whose models the meta-dataset never
 * saw); a no-op for one-hot. *added may be NULL. */
int qt_surrogate_add_hub_descriptors(qt_surrogate_t *surrogate, const qt_hub_t *hub, size_t *added,
                                     qt_err *err);
/* Encodes config (valid for space, which passed qt_surrogate_check_space)
 * the way the surrogate reads it: qt_space_encode for one-hot, the
 * descriptor encoding otherwise (QT_ENOENT for a model without
 * descriptors). out holds qt_surrogate_config(s)->hp_dim doubles. */
int qt_surrogate_encode(const qt_surrogate_t *surrogate, const qt_space_t *space,
                        const qt_config *config, double *out, qt_err *err);
const qt_surrogate_info *qt_surrogate_get_info(const qt_surrogate_t *surrogate);
const qt_dkl_config *qt_surrogate_config(const qt_surrogate_t *surrogate);
/* The stored parameter vectors (owned by the surrogate). */
const double *qt_surrogate_dkl_params(const qt_surrogate_t *surrogate, size_t *count);
const double *qt_surrogate_costnet_params(const qt_surrogate_t *surrogate, size_t *count);
/* New models holding the stored parameters (owned by the caller). */
int qt_surrogate_make_dkl(const qt_surrogate_t *surrogate, qt_dkl_t **out, qt_err *err);
int qt_surrogate_make_costnet(const qt_surrogate_t *surrogate, qt_costnet_t **out, qt_err *err);
/* 0 when the surrogate fits space (same encoding hash, in the surrogate's
 * model encoding, and fidelity max), else QT_ESCHEMA with both spaces named
 * in err. */
int qt_surrogate_check_space(const qt_surrogate_t *surrogate, const qt_space_t *space, qt_err *err);

int qt_surrogate_save(const qt_surrogate_t *surrogate, const char *path, qt_err *err);
/* Loads path; when space is not NULL, also qt_surrogate_check_space. */
int qt_surrogate_load(const char *path, const qt_space_t *space, qt_surrogate_t **out, qt_err *err);

/* ========================================================================= */
/* Meta-training (specs §1.5)                                                 */
/* ========================================================================= */

/*
 * Meta-training fits both surrogates to a meta-dataset's learning curves.
 *
 * Datasets. Each dataset with runs has a role: training, validation (model
 * selection) or held out (never seen). By default the datasets named in
 * `exclude` are held out and, of the others, a shuffled validation_fraction
 * (rounded, at least one when two or more remain) validates; `roles` sets
 * them explicitly instead (Quick-Tune's folds: specs §1.5).
 *
 * Rows. Every run's configuration is encoded once (qt_model_codec_encode with params->codec). A
 * batch is batch_size rows from ONE dataset: a run uniform among its runs,
 * a budget b uniform in {1 .. max_epochs - 1} (the meta-dataset's maximum;
 * {1} when it is 1), truncated to the run's length; the row is x, budget =
 * b / fidelity max of the space, curve = the scores of epochs 1 .. b-1
 * zero-padded (or cut) to curve_len, meta = the dataset's features times
 * QT_SURROGATE_META_SCALE, y = the score of epoch b, cost = its seconds.
 *
 * Iterations. Each iteration draws a training dataset uniformly and one
 * batch from it, takes one Adam step of the deep-kernel GP on -MLL/n
 * (learning_rate, cosine-annealed to min_learning_rate over the iterations
 * when cosine is set) and one Adam step of the cost predictor on its MSE
 * (cost_learning_rate, constant) on the same batch [RECON: Quick-Tune's
 * cost net draws its own batches and does not truncate the budget]. A step
 * whose factorization fails is skipped and counted.
 *
 * Validation. validation_batches pairs (context, query) of batches from one
 * validation dataset each, drawn once from a stream of the seed; every
 * validation_every iterations (and after the last) the GP is conditioned on
 * each context and predicts its query; the mean squared error of the means,
 * averaged over pairs, selects the parameters kept. The untrained (initial)
 * parameters are scored the same way, and held-out datasets, when any, get
 * both scores too (the acceptance number: it should drop with training).
 */
typedef enum qt_metatrain_role {
  QT_METATRAIN_TRAIN = 0,
  QT_METATRAIN_VALIDATION = 1,
  QT_METATRAIN_HELD_OUT = 2
} qt_metatrain_role;

/* Passed to the progress callback every progress_every iterations and
 * after the last. */
typedef struct qt_metatrain_progress {
  long iteration;             /* iterations done */
  long iterations;            /* total */
  double learning_rate;       /* of the last step */
  double train_loss;          /* mean -MLL/n of the steps since the last report */
  double cost_loss;           /* mean cost MSE (on seconds / 100) of those steps */
  double validation_mse;      /* the latest validation (NaN before the first) */
  double best_validation_mse; /* the best so far (NaN before the first) */
  double seconds;             /* since the start */
} qt_metatrain_progress;

typedef struct qt_metatrain_params {
  long iterations;            /* (10000) */
  size_t batch_size;          /* rows per batch (32) */
  double learning_rate;       /* GP and extractor (1e-4) */
  double min_learning_rate;   /* cosine floor (1e-7) */
  int cosine;                 /* anneal (1) */
  double cost_learning_rate;  /* (1e-4) */
  long validation_every;      /* iterations (20) */
  size_t validation_batches;  /* context/query pairs (50) */
  double validation_fraction; /* of the non-excluded datasets (0.25) */
  uint64_t seed;              /* (0) initial weights, batches, dropout, splits */
  const char *const *exclude; /* (exclude_count) dataset names held out */
  size_t exclude_count;
  const qt_metatrain_role *roles; /* (dataset count) or NULL: overrides exclude */
  const qt_dkl_config *config;    /* NULL: qt_model_codec_dkl_config(codec, space, features) */
  /* How the model is encoded: NULL for one-hot (the default), or a codec
   * with a descriptor table that holds every model of the meta-dataset's
   * runs (not copied; must outlive the call). */
  const qt_model_codec_t *codec;
  long progress_every; /* iterations between callbacks (500) */
  void (*progress)(const qt_metatrain_progress *progress, void *user);
  void *user;
} qt_metatrain_params;

qt_metatrain_params qt_metatrain_default_params(void);

typedef struct qt_metatrain_report {
  size_t train_datasets, validation_datasets, held_out_datasets;
  long iterations;                 /* run */
  long best_iteration;             /* kept (the last one without validation) */
  long failed_steps;               /* skipped after a numerical failure */
  double final_train_loss;         /* mean -MLL/n of the last progress window */
  double validation_mse;           /* kept parameters (NaN without validation datasets) */
  double untrained_validation_mse; /* initial parameters */
  double held_out_mse;             /* kept parameters on held-out datasets (NaN: none) */
  double untrained_held_out_mse;
  double cost_rmse_seconds;           /* cost predictor on validation queries (NaN: none) */
  double untrained_cost_rmse_seconds; /* initial weights after qt_costnet_calibrate */
  double seconds;                     /* wall clock */
} qt_metatrain_report;

/* Meta-trains both surrogates on md and returns them as one surrogate
 * (*out, owned by the caller) with its provenance; report may be NULL.
 * QT_EINVAL for bad params, an unknown excluded dataset (named) or fewer
 * than one training dataset with runs. */
int qt_metatrain(const qt_metadataset_t *md, const qt_metatrain_params *params,
                 qt_surrogate_t **out, qt_metatrain_report *report, qt_err *err);

/* The validation procedure on the given datasets with a trained surrogate:
 * params->validation_batches context/query pairs of params->batch_size rows
 * drawn from the stream of params->seed that qt_metatrain uses for its
 * held-out score (so the held-out datasets and the same params give the
 * report's held_out_mse). *mse: the mean squared error of the predicted
 * means; *cost_rmse (may be NULL): the cost predictor's root mean squared
 * error in seconds on the same queries (cost may be NULL: then NaN). */
int qt_metatrain_evaluate(const qt_metadataset_t *md, const size_t *datasets, size_t count,
                          qt_dkl_t *dkl, qt_costnet_t *cost, const qt_metatrain_params *params,
                          double *mse, double *cost_rmse, qt_err *err);

#ifdef __cplusplus
}
#endif

#endif /* QT_SURROGATE_H */

/*
 * qt_dkl.c - the deep-kernel GP of Quick-Tune (specs §1.3): the feature
 * extractor of qt_surrogate_net.c followed by the exact GP of qt_gp.c, trained
 * jointly on the GP's -MLL/n by Adam. Also the helpers both models share:
 * configurations, row checks and row slices.
 *
 * One training step:
 *
 *   phi = extractor(rows; dropout mask)             (n, output_dim)
 *   GP conditioned on (phi, y)  ->  loss = -MLL / n
 *   qt_gp_nll_grad  ->  dL/d(raw hypers), dL/dphi    (n, output_dim)
 *   backward through the extractor  ->  dL/d(weights)
 *   Adam over [weights, raw hypers] with one learning rate
 *
 * The parameter vector is the extractor's (net.tensors order) followed by
 * the GP's raw hyperparameters (qt_gp_hyper order).
 */
#include "surrogate/qt_surrogate_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Query rows per block in qt_dkl_predict: bounds the workspace. */
#define DKL_PREDICT_BLOCK 256

struct qt_dkl {
  qt_dkl_config config;
  qt__net net;
  qt_gp_t *gp;
  size_t extractor_count; /* extractor parameters; the GP's follow */
  size_t param_count;
  double *params; /* (param_count) */
  double *grad;   /* (param_count) */
  double *backup; /* (param_count) parameters before a qt_dkl_train call */
  qt__adam adam;
  qt__tensor tensors[QT__MAX_TENSORS + 1]; /* the net's, then "gp.raw_hypers" */
  size_t tensor_count;
};

/* ------------------------------------------------------------------------- */
/* Configurations and rows (shared with the cost predictor)                   */
/* ------------------------------------------------------------------------- */

qt_dkl_config qt_dkl_default_config(size_t hp_dim, size_t meta_dim) {
  qt_dkl_config config;
  memset(&config, 0, sizeof config);
  config.hp_dim = hp_dim;
  config.model_begin = 0;
  config.model_end = 0;
  config.curve_len = 50;
  config.meta_dim = meta_dim;
  config.hidden_dim = 32;
  config.output_dim = 32;
  config.curve_out_dim = 16;
  config.meta_out_dim = 4;
  config.dropout = 0.25;
  config.kernel = QT_GP_KERNEL_RBF;
  return config;
}

qt_dkl_config qt_dkl_space_config(const qt_space_t *space, size_t meta_dim) {
  qt_dkl_config config = qt_dkl_default_config(qt_space_encoded_dim(space), meta_dim);
  size_t hp;
  if (qt_space_find(space, "model", &hp) == 0 &&
      qt_space_hp_type(space, hp) == QT_HP_TYPE_CATEGORICAL) {
    size_t begin = qt_space_encoded_offset(space, hp, NULL);
    size_t width = qt_space_hp_choice_count(space, hp);
    /* A block that is the whole encoding leaves nothing for the second
     * encoder: one encoder then. */
    if (width < config.hp_dim) {
      config.model_begin = begin;
      config.model_end = begin + width;
    }
  }
  return config;
}

int qt__dkl_config_check(const qt_dkl_config *c, const char *caller, qt_err *err) {
  if (!c) return qt_err_set(err, QT_EINVAL, "%s: config is NULL", caller);
  if (c->hp_dim == 0 || c->curve_len < 2 || c->hidden_dim == 0 || c->output_dim == 0 ||
      c->curve_out_dim == 0 || (c->meta_dim > 0 && c->meta_out_dim == 0)) {
    return qt_err_set(err, QT_EINVAL,
                      "%s: bad shapes (hp_dim %zu, curve_len %zu (>= 2), hidden %zu, output %zu, "
                      "curve_out %zu, meta %zu -> %zu)",
                      caller, c->hp_dim, c->curve_len, c->hidden_dim, c->output_dim,
                      c->curve_out_dim, c->meta_dim, c->meta_out_dim);
  }
  if (c->model_begin > c->model_end || c->model_end > c->hp_dim ||
      (c->model_end > c->model_begin && c->model_end - c->model_begin == c->hp_dim)) {
    return qt_err_set(err, QT_EINVAL,
                      "%s: model block [%zu, %zu) must lie inside and be smaller than the %zu "
                      "encoded columns (an empty block means one encoder)",
                      caller, c->model_begin, c->model_end, c->hp_dim);
  }
  if (!(c->dropout >= 0.0 && c->dropout < 1.0))
    return qt_err_set(err, QT_EINVAL, "%s: dropout %g is not in [0, 1)", caller, c->dropout);
  if (c->kernel != QT_GP_KERNEL_RBF && c->kernel != QT_GP_KERNEL_MATERN52)
    return qt_err_set(err, QT_EINVAL, "%s: unknown kernel %d", caller, (int)c->kernel);
  return 0;
}

qt__net_shape qt__dkl_shape(const qt_dkl_config *config) {
  qt__net_shape shape;
  memset(&shape, 0, sizeof shape);
  shape.hp_dim = config->hp_dim;
  shape.encoders = config->model_end > config->model_begin ? 2 : 1;
  shape.model_begin = config->model_begin;
  shape.model_end = config->model_end;
  shape.encoder_dim = config->hidden_dim;
  shape.curve_len = config->curve_len;
  shape.curve_out = config->curve_out_dim;
  shape.meta_dim = config->meta_dim;
  shape.meta_out = config->meta_out_dim;
  shape.dropout = config->dropout;
  /* fc1 -> LeakyReLU -> fc3 (Quick-Tune's unused fc2 is left out). */
  shape.head_count = 2;
  shape.head_out[0] = config->hidden_dim;
  shape.head_act[0] = QT__ACT_LEAKY_RELU;
  shape.head_out[1] = config->output_dim;
  shape.head_act[1] = QT__ACT_NONE;
  return shape;
}

static size_t first_nonfinite(const double *values, size_t rows, size_t width) {
  for (size_t i = 0; i < rows; i++) {
    for (size_t k = 0; k < width; k++) {
      if (!isfinite(values[i * width + k])) return i;
    }
  }
  return rows;
}

int qt__rows_check(const qt_rows *rows, const qt_dkl_config *config, int need_y, int need_cost,
                   const char *caller, qt_err *err) {
  if (!rows) return qt_err_set(err, QT_EINVAL, "%s: rows is NULL", caller);
  if (rows->n == 0) return 0;
  if (!rows->x || !rows->budget || !rows->curve || (config->meta_dim > 0 && !rows->meta) ||
      (need_y && !rows->y) || (need_cost && !rows->cost)) {
    return qt_err_set(err, QT_EINVAL, "%s: rows lack %s", caller,
                      !rows->x                     ? "x"
                      : !rows->budget              ? "budget"
                      : !rows->curve               ? "curve"
                      : (need_y && !rows->y)       ? "targets y"
                      : (need_cost && !rows->cost) ? "costs"
                                                   : "meta-features (meta_dim > 0)");
  }
  struct {
    const char *name;
    const double *values;
    size_t width;
  } fields[] = {{"x", rows->x, config->hp_dim},
                {"budget", rows->budget, 1},
                {"curve", rows->curve, config->curve_len},
                {"meta", config->meta_dim > 0 ? rows->meta : NULL, config->meta_dim},
                {"y", need_y ? rows->y : NULL, 1},
                {"cost", need_cost ? rows->cost : NULL, 1}};
  for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
    if (!fields[f].values) continue;
    size_t bad = first_nonfinite(fields[f].values, rows->n, fields[f].width);
    if (bad < rows->n)
      return qt_err_set(err, QT_EINVAL, "%s: row %zu has a non-finite %s", caller, bad,
                        fields[f].name);
  }
  return 0;
}

int qt__numeric_failure(qt_err *err, const char *context) {
  qt_err_prefix(err, QT_ENUMERIC, "%s", context);
  if (err) err->code = QT_ENUMERIC;
  return QT_ENUMERIC;
}

qt_rows qt__rows_slice(const qt_rows *rows, const qt_dkl_config *config, size_t begin,
                       size_t count) {
  qt_rows slice;
  slice.n = count;
  slice.x = rows->x + begin * config->hp_dim;
  slice.budget = rows->budget + begin;
  slice.curve = rows->curve + begin * config->curve_len;
  slice.meta = rows->meta ? rows->meta + begin * config->meta_dim : NULL;
  slice.y = rows->y ? rows->y + begin : NULL;
  slice.cost = rows->cost ? rows->cost + begin : NULL;
  return slice;
}

/* ------------------------------------------------------------------------- */
/* Life cycle and parameters                                                  */
/* ------------------------------------------------------------------------- */

int qt_dkl_init(qt_dkl_t **out, const qt_dkl_config *config, qt_rng_t *rng, qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_dkl_init: out is NULL");
  *out = NULL;
  int rc = qt__dkl_config_check(config, "qt_dkl_init", err);
  if (rc != 0) return rc;
  if (!rng) return qt_err_set(err, QT_EINVAL, "qt_dkl_init: rng is NULL");
  qt_dkl_t *dkl = calloc(1, sizeof *dkl);
  if (!dkl) return qt_err_set(err, QT_ENOMEM, "qt_dkl_init: out of memory");
  dkl->config = *config;
  qt__net_shape shape = qt__dkl_shape(config);
  rc = qt__net_init(&dkl->net, &shape, err);
  if (rc == 0) rc = qt_gp_init(&dkl->gp, config->kernel, config->output_dim, err);
  if (rc == 0) {
    size_t hypers = qt_gp_hyper_count(dkl->gp);
    dkl->extractor_count = dkl->net.param_count;
    dkl->param_count = dkl->extractor_count + hypers;
    dkl->params = calloc(dkl->param_count, sizeof *dkl->params);
    dkl->grad = calloc(dkl->param_count, sizeof *dkl->grad);
    dkl->backup = calloc(dkl->param_count, sizeof *dkl->backup);
    if (!dkl->params || !dkl->grad || !dkl->backup)
      rc = qt_err_set(err, QT_ENOMEM, "qt_dkl_init: out of memory");
  }
  if (rc == 0) rc = qt__adam_init(&dkl->adam, dkl->param_count, err);
  if (rc != 0) {
    qt_dkl_free(dkl);
    return rc;
  }
  memcpy(dkl->tensors, dkl->net.tensors, dkl->net.tensor_count * sizeof *dkl->tensors);
  dkl->tensors[dkl->net.tensor_count].name = "gp.raw_hypers";
  dkl->tensors[dkl->net.tensor_count].offset = dkl->extractor_count;
  dkl->tensors[dkl->net.tensor_count].size = dkl->param_count - dkl->extractor_count;
  dkl->tensor_count = dkl->net.tensor_count + 1;
  /* Weights as PyTorch initializes them; raw hypers 0 (calloc). */
  qt__net_init_params(&dkl->net, dkl->params, rng);
  *out = dkl;
  return 0;
}

void qt_dkl_free(qt_dkl_t *dkl) {
  if (!dkl) return;
  qt__net_free(&dkl->net);
  qt_gp_free(dkl->gp);
  qt__adam_free(&dkl->adam);
  free(dkl->params);
  free(dkl->grad);
  free(dkl->backup);
  free(dkl);
}

const qt_dkl_config *qt_dkl_get_config(const qt_dkl_t *dkl) {
  return &dkl->config;
}

size_t qt_dkl_param_count(const qt_dkl_t *dkl) {
  return dkl->param_count;
}

void qt_dkl_get_params(const qt_dkl_t *dkl, double *params) {
  memcpy(params, dkl->params, dkl->param_count * sizeof *params);
}

int qt_dkl_set_params(qt_dkl_t *dkl, const double *params, qt_err *err) {
  size_t bad = first_nonfinite(params, dkl->param_count, 1);
  if (bad < dkl->param_count)
    return qt_err_set(err, QT_EINVAL, "qt_dkl_set_params: parameter %zu is %g", bad, params[bad]);
  memcpy(dkl->params, params, dkl->param_count * sizeof *params);
  return 0;
}

const qt__tensor *qt__dkl_tensors(const qt_dkl_t *dkl, size_t *count) {
  *count = dkl->tensor_count;
  return dkl->tensors;
}

void qt__dkl_adam_reset(qt_dkl_t *dkl) {
  qt__adam_reset(&dkl->adam);
}

/* ------------------------------------------------------------------------- */
/* Loss, gradient and training                                                */
/* ------------------------------------------------------------------------- */

/* Passes the raw hyperparameters from the parameter vector to the GP. */
static int sync_hypers(qt_dkl_t *dkl, qt_err *err) {
  return qt_gp_set_hypers(dkl->gp, dkl->params + dkl->extractor_count, err);
}

int qt__dkl_objective(qt_dkl_t *dkl, const qt_rows *rows, const double *mask, double *loss,
                      double *grad, qt_err *err) {
  size_t n = rows->n;
  int rc = qt__net_reserve(&dkl->net, n, err);
  if (rc != 0) return rc;
  const double *phi = qt__net_forward(&dkl->net, dkl->params, rows, mask); /* (n, output_dim) */
  rc = sync_hypers(dkl, err);
  if (rc == 0) rc = qt_gp_condition(dkl->gp, phi, rows->y, n, err);
  if (rc == 0) {
    /* dL/dphi lands where the extractor's backward pass reads it. */
    rc = qt_gp_nll_grad(dkl->gp, loss, grad ? grad + dkl->extractor_count : NULL,
                        grad ? dkl->net.grad_out : NULL, err);
  }
  if (rc != 0) return rc;
  if (grad) {
    memset(grad, 0, dkl->extractor_count * sizeof *grad);
    qt__net_backward(&dkl->net, dkl->params, rows, mask, grad);
  }
  return 0;
}

int qt__dkl_train_step(qt_dkl_t *dkl, const qt_rows *rows, double lr, qt_rng_t *rng, double *loss,
                       qt_err *err) {
  int rc = qt__net_reserve(&dkl->net, rows->n, err);
  if (rc != 0) return rc;
  qt__net_draw_mask(&dkl->net, rows->n, rng, dkl->net.mask);
  double value = NAN;
  rc = qt__dkl_objective(dkl, rows, dkl->net.mask, &value, dkl->grad, err);
  if (rc == QT_ENOMEM) return rc;
  /* Features that are not finite (qt_gp_condition's QT_EINVAL) come from
   * the parameters, not from the rows, which were checked: numerical. */
  if (rc != 0) return qt__numeric_failure(err, "deep-kernel GP step");
  if (!isfinite(value))
    return qt_err_set(err, QT_ENUMERIC, "deep-kernel GP step: the loss is %g", value);
  if (qt__adam_step(&dkl->adam, dkl->params, dkl->grad, lr) != 0)
    return qt_err_set(err, QT_ENUMERIC, "deep-kernel GP step: the gradient is not finite");
  if (loss) *loss = value;
  return 0;
}

int qt_dkl_train(qt_dkl_t *dkl, const qt_rows *rows, int steps, double lr, qt_rng_t *rng,
                 double *loss, qt_err *err) {
  if (loss) *loss = NAN;
  int rc = qt__rows_check(rows, &dkl->config, 1, 0, "qt_dkl_train", err);
  if (rc != 0) return rc;
  if (steps < 0 || !(lr > 0.0) || !isfinite(lr) || !rng) {
    return qt_err_set(err, QT_EINVAL, "qt_dkl_train: need steps >= 0, lr > 0 and an rng (%d, %g)",
                      steps, lr);
  }
  if (rows->n < 2) return 0;
  memcpy(dkl->backup, dkl->params, dkl->param_count * sizeof *dkl->params);
  qt__adam_reset(&dkl->adam);
  for (int step = 0; step < steps; step++) {
    rc = qt__dkl_train_step(dkl, rows, lr, rng, loss, err);
    if (rc != 0) {
      memcpy(dkl->params, dkl->backup, dkl->param_count * sizeof *dkl->params);
      if (loss) *loss = NAN;
      return qt_err_prefix(err, rc, "qt_dkl_train: step %d of %d (parameters restored)", step + 1,
                           steps);
    }
  }
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Prediction                                                                 */
/* ------------------------------------------------------------------------- */

int qt__dkl_features(qt_dkl_t *dkl, const qt_rows *rows, const double *mask, double *phi,
                     qt_err *err) {
  int rc = qt__net_reserve(&dkl->net, rows->n, err);
  if (rc != 0) return rc;
  const double *out = qt__net_forward(&dkl->net, dkl->params, rows, mask);
  memcpy(phi, out, rows->n * dkl->config.output_dim * sizeof *phi);
  return 0;
}

int qt_dkl_predict(qt_dkl_t *dkl, const qt_rows *train, const qt_rows *query, double *mean,
                   double *variance, qt_err *err) {
  int rc = qt__rows_check(train, &dkl->config, 1, 0, "qt_dkl_predict (training rows)", err);
  if (rc == 0) rc = qt__rows_check(query, &dkl->config, 0, 0, "qt_dkl_predict (query rows)", err);
  if (rc == 0) rc = sync_hypers(dkl, err);
  if (rc != 0) return rc;

  if (train->n == 0) {
    /* No data: the prior, as an unconditioned GP would give it. */
    double prior_var = qt_gp_outputscale(dkl->gp) + qt_gp_noise(dkl->gp);
    for (size_t t = 0; t < query->n; t++) {
      if (mean) mean[t] = qt_gp_mean_constant(dkl->gp);
      if (variance) variance[t] = prior_var;
    }
    return 0;
  }

  rc = qt__net_reserve(&dkl->net, train->n, err);
  if (rc != 0) return rc;
  const double *phi = qt__net_forward(&dkl->net, dkl->params, train, NULL);
  rc = qt_gp_condition(dkl->gp, phi, train->y, train->n, err);
  if (rc != 0) return qt__numeric_failure(err, "qt_dkl_predict: training features");

  for (size_t begin = 0; begin < query->n; begin += DKL_PREDICT_BLOCK) {
    size_t count = query->n - begin < DKL_PREDICT_BLOCK ? query->n - begin : DKL_PREDICT_BLOCK;
    qt_rows block = qt__rows_slice(query, &dkl->config, begin, count);
    rc = qt__net_reserve(&dkl->net, count, err);
    if (rc != 0) return rc;
    const double *phi_query = qt__net_forward(&dkl->net, dkl->params, &block, NULL);
    rc = qt_gp_predict(dkl->gp, phi_query, count, mean ? mean + begin : NULL,
                       variance ? variance + begin : NULL, QT_GP_VARIANCE_PREDICTIVE, err);
    if (rc != 0) return qt_err_prefix(err, rc, "qt_dkl_predict");
  }
  return 0;
}

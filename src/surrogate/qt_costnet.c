/*
 * qt_costnet.c - Quick-Tune's cost predictor (specs §1.6): its own feature
 * network without hyperparameter encoders,
 *
 *   [x, budget, Linear(meta), ConvNet(curve)] -> Linear(-> hidden) -> LeakyReLU
 *   -> Linear(hidden -> hidden) -> ReLU -> Linear(hidden -> 1) -> ReLU,
 *
 * trained by Adam on the mean squared error against an epoch's seconds /
 * 100. The final ReLU keeps predictions >= 0.
 */
#include "surrogate/qt_surrogate_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Query rows per block in qt_costnet_predict. */
#define COST_PREDICT_BLOCK 256

struct qt_costnet {
  qt_dkl_config config;
  qt__net net;
  size_t param_count;
  double *params; /* (param_count) */
  double *grad;   /* (param_count) */
  double *backup; /* (param_count) parameters before a qt_costnet_train call */
  qt__adam adam;
};

qt__net_shape qt__costnet_shape(const qt_dkl_config *config) {
  qt__net_shape shape = qt__dkl_shape(config);
  shape.encoders = 0;
  shape.model_begin = shape.model_end = 0;
  shape.head_count = 3;
  shape.head_out[0] = config->hidden_dim;
  shape.head_act[0] = QT__ACT_LEAKY_RELU;
  shape.head_out[1] = config->hidden_dim;
  shape.head_act[1] = QT__ACT_RELU;
  shape.head_out[2] = 1;
  shape.head_act[2] = QT__ACT_RELU;
  return shape;
}

int qt_costnet_init(qt_costnet_t **out, const qt_dkl_config *config, qt_rng_t *rng, qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_costnet_init: out is NULL");
  *out = NULL;
  int rc = qt__dkl_config_check(config, "qt_costnet_init", err);
  if (rc != 0) return rc;
  if (!rng) return qt_err_set(err, QT_EINVAL, "qt_costnet_init: rng is NULL");
  qt_costnet_t *net = calloc(1, sizeof *net);
  if (!net) return qt_err_set(err, QT_ENOMEM, "qt_costnet_init: out of memory");
  net->config = *config;
  qt__net_shape shape = qt__costnet_shape(config);
  rc = qt__net_init(&net->net, &shape, err);
  if (rc == 0) {
    net->param_count = net->net.param_count;
    net->params = calloc(net->param_count, sizeof *net->params);
    net->grad = calloc(net->param_count, sizeof *net->grad);
    net->backup = calloc(net->param_count, sizeof *net->backup);
    if (!net->params || !net->grad || !net->backup)
      rc = qt_err_set(err, QT_ENOMEM, "qt_costnet_init: out of memory");
  }
  if (rc == 0) rc = qt__adam_init(&net->adam, net->param_count, err);
  if (rc != 0) {
    qt_costnet_free(net);
    return rc;
  }
  qt__net_init_params(&net->net, net->params, rng);
  *out = net;
  return 0;
}

void qt_costnet_free(qt_costnet_t *net) {
  if (!net) return;
  qt__net_free(&net->net);
  qt__adam_free(&net->adam);
  free(net->params);
  free(net->grad);
  free(net->backup);
  free(net);
}

const qt_dkl_config *qt_costnet_get_config(const qt_costnet_t *net) {
  return &net->config;
}

size_t qt_costnet_param_count(const qt_costnet_t *net) {
  return net->param_count;
}

void qt_costnet_get_params(const qt_costnet_t *net, double *params) {
  memcpy(params, net->params, net->param_count * sizeof *params);
}

int qt_costnet_set_params(qt_costnet_t *net, const double *params, qt_err *err) {
  for (size_t i = 0; i < net->param_count; i++) {
    if (!isfinite(params[i]))
      return qt_err_set(err, QT_EINVAL, "qt_costnet_set_params: parameter %zu is %g", i, params[i]);
  }
  memcpy(net->params, params, net->param_count * sizeof *params);
  return 0;
}

const qt__tensor *qt__costnet_tensors(const qt_costnet_t *net, size_t *count) {
  *count = net->net.tensor_count;
  return net->net.tensors;
}

void qt__costnet_adam_reset(qt_costnet_t *net) {
  qt__adam_reset(&net->adam);
}

/* loss = (1/n) sum_i (out_i - cost_i / 100)^2, dL/dout_i = (2/n)(out_i - cost_i / 100). */
int qt__costnet_objective(qt_costnet_t *net, const qt_rows *rows, const double *mask, double *loss,
                          double *grad, qt_err *err) {
  size_t n = rows->n;
  if (n == 0) return qt_err_set(err, QT_EINVAL, "cost predictor: no rows");
  int rc = qt__net_reserve(&net->net, n, err);
  if (rc != 0) return rc;
  const double *out = qt__net_forward(&net->net, net->params, rows, mask); /* (n, 1) */
  double sum = 0.0;
  for (size_t i = 0; i < n; i++) {
    double residual = out[i] - rows->cost[i] / QT__COST_SCALE;
    sum += residual * residual;
    net->net.grad_out[i] = 2.0 * residual / (double)n;
  }
  if (loss) *loss = sum / (double)n;
  if (grad) {
    memset(grad, 0, net->param_count * sizeof *grad);
    qt__net_backward(&net->net, net->params, rows, mask, grad);
  }
  return 0;
}

int qt__costnet_train_step(qt_costnet_t *net, const qt_rows *rows, double lr, qt_rng_t *rng,
                           double *loss, qt_err *err) {
  int rc = qt__net_reserve(&net->net, rows->n, err);
  if (rc != 0) return rc;
  qt__net_draw_mask(&net->net, rows->n, rng, net->net.mask);
  double value = NAN;
  rc = qt__costnet_objective(net, rows, net->net.mask, &value, net->grad, err);
  if (rc != 0) return rc;
  if (!isfinite(value) || qt__adam_step(&net->adam, net->params, net->grad, lr) != 0)
    return qt_err_set(err, QT_ENUMERIC,
                      "cost predictor step: loss %g or its gradient is not finite", value);
  if (loss) *loss = value;
  return 0;
}

int qt_costnet_train(qt_costnet_t *net, const qt_rows *rows, int steps, double lr, qt_rng_t *rng,
                     double *loss, qt_err *err) {
  if (loss) *loss = NAN;
  int rc = qt__rows_check(rows, &net->config, 0, 1, "qt_costnet_train", err);
  if (rc != 0) return rc;
  if (steps < 0 || !(lr > 0.0) || !isfinite(lr) || !rng) {
    return qt_err_set(err, QT_EINVAL,
                      "qt_costnet_train: need steps >= 0, lr > 0 and an rng (%d, %g)", steps, lr);
  }
  if (rows->n == 0) return 0;
  memcpy(net->backup, net->params, net->param_count * sizeof *net->params);
  qt__adam_reset(&net->adam);
  for (int step = 0; step < steps; step++) {
    rc = qt__costnet_train_step(net, rows, lr, rng, loss, err);
    if (rc != 0) {
      memcpy(net->params, net->backup, net->param_count * sizeof *net->params);
      if (loss) *loss = NAN;
      return qt_err_prefix(err, rc, "qt_costnet_train: step %d of %d (parameters restored)",
                           step + 1, steps);
    }
  }
  return 0;
}

/* The output layer is pre = h W^T + b on the last hidden activations h:
 * shifting b by (target mean - mean pre) makes the mean pre-activation equal
 * the mean target, so the final ReLU starts open for most rows. */
int qt_costnet_calibrate(qt_costnet_t *net, const qt_rows *rows, qt_err *err) {
  int rc = qt__rows_check(rows, &net->config, 0, 1, "qt_costnet_calibrate", err);
  if (rc != 0) return rc;
  if (rows->n == 0) return 0;
  rc = qt__net_reserve(&net->net, rows->n, err);
  if (rc != 0) return rc;
  qt__net_forward(&net->net, net->params, rows, NULL);
  const qt__linear *out = &net->net.head[net->net.shape.head_count - 1];
  const double *hidden = net->net.head_out[net->net.shape.head_count - 2]; /* (n, in) */
  const double *W = net->params + out->weight;                             /* (1, in) */
  double *b = net->params + out->bias;
  double pre = 0.0, target = 0.0;
  for (size_t i = 0; i < rows->n; i++) {
    pre += *b;
    for (size_t j = 0; j < out->in; j++) pre += W[j] * hidden[i * out->in + j];
    target += rows->cost[i] / QT__COST_SCALE;
  }
  *b += (target - pre) / (double)rows->n;
  return 0;
}

int qt_costnet_predict(qt_costnet_t *net, const qt_rows *query, double *seconds, qt_err *err) {
  int rc = qt__rows_check(query, &net->config, 0, 0, "qt_costnet_predict", err);
  if (rc != 0) return rc;
  for (size_t begin = 0; begin < query->n; begin += COST_PREDICT_BLOCK) {
    size_t count = query->n - begin < COST_PREDICT_BLOCK ? query->n - begin : COST_PREDICT_BLOCK;
    qt_rows block = qt__rows_slice(query, &net->config, begin, count);
    rc = qt__net_reserve(&net->net, count, err);
    if (rc != 0) return rc;
    const double *out = qt__net_forward(&net->net, net->params, &block, NULL);
    for (size_t t = 0; t < count; t++) seconds[begin + t] = QT__COST_SCALE * out[t];
  }
  return 0;
}

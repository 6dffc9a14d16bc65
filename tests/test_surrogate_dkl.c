/*
 * test_surrogate_dkl.c - the deep-kernel GP and the cost predictor
 * (surrogate/qt_dkl.c, qt_costnet.c, qt_surrogate_net.c).
 *
 * The hand-written backward passes are checked against central finite
 * differences of the models' own losses, entry by entry for every parameter
 * tensor, with a fixed dropout mask so that the loss is a deterministic
 * function of the parameters. The rest checks behaviour: training lowers the
 * loss, predictions equal the exact GP's on the extractor's features, the
 * parameter vector round-trips, the cost predictor never predicts a negative
 * time, and a numerical failure restores the parameters.
 */
#include "surrogate/qt_surrogate_internal.h"
#include "qt_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------- */
/* Fixtures                                                                   */
/* ------------------------------------------------------------------------- */

/* A small network with every part present: two encoders (model block
 * [1, 4) of 7 columns), meta-features, an odd curve length (pooling floors
 * it) and a dropout that drops channels. */
static qt_dkl_config small_config(void) {
  qt_dkl_config config = qt_dkl_default_config(7, 3);
  config.model_begin = 1;
  config.model_end = 4;
  config.curve_len = 9;
  config.hidden_dim = 5;
  config.output_dim = 4;
  config.curve_out_dim = 3;
  config.meta_out_dim = 2;
  config.dropout = 0.5;
  return config;
}

/* Rows whose arrays live in one malloc'd block. */
typedef struct test_rows {
  qt_rows rows;
  double *block;
} test_rows;

/* n rows of random inputs: x in [0, 1], budgets, curves of a random length
 * zero-padded like real ones, meta-features; y a smooth function of x and
 * the last curve value; cost a positive function of x. */
static test_rows make_rows(const qt_dkl_config *c, size_t n, qt_rng_t *rng) {
  test_rows t;
  size_t per_row = c->hp_dim + 1 + c->curve_len + c->meta_dim + 2;
  t.block = calloc(n * per_row, sizeof *t.block);
  double *x = t.block, *budget = x + n * c->hp_dim, *curve = budget + n;
  double *meta = curve + n * c->curve_len, *y = meta + n * c->meta_dim, *cost = y + n;
  for (size_t i = 0; i < n; i++) {
    for (size_t k = 0; k < c->hp_dim; k++) x[i * c->hp_dim + k] = qt_rng_uniform(rng);
    size_t length = (size_t)qt_rng_uniform_int(rng, c->curve_len + 1);
    double last = 0.0;
    for (size_t e = 0; e < length; e++) {
      last = 0.2 + 0.6 * (1.0 - exp(-0.3 * (double)(e + 1))) * x[i * c->hp_dim];
      curve[i * c->curve_len + e] = last + 0.05 * qt_rng_uniform(rng);
    }
    budget[i] = (double)(length + 1) / (double)(c->curve_len + 1);
    for (size_t k = 0; k < c->meta_dim; k++) meta[i * c->meta_dim + k] = qt_rng_uniform(rng);
    y[i] = 0.3 + 0.5 * x[i * c->hp_dim] * x[i * c->hp_dim + 1] + 0.2 * last;
    cost[i] = 20.0 + 80.0 * x[i * c->hp_dim + 2] + 30.0 * budget[i];
  }
  t.rows.n = n;
  t.rows.x = x;
  t.rows.budget = budget;
  t.rows.curve = curve;
  t.rows.meta = c->meta_dim ? meta : NULL;
  t.rows.y = y;
  t.rows.cost = cost;
  return t;
}

static qt_rng_t *make_rng(uint64_t seed) {
  qt_rng_t *rng = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, seed, NULL), 0);
  return rng;
}

/* A dropout mask (n, 8) for a network of the given shape. */
static void draw_mask(const qt__net_shape *shape, size_t n, qt_rng_t *rng, double *mask) {
  qt__net net;
  CU_ASSERT_EQUAL_FATAL(qt__net_init(&net, shape, NULL), 0);
  qt__net_draw_mask(&net, n, rng, mask);
  qt__net_free(&net);
}

/* ------------------------------------------------------------------------- */
/* Finite differences                                                         */
/* ------------------------------------------------------------------------- */

/* Which model a gradient check runs on. */
typedef struct fd_model {
  qt_dkl_t *dkl;      /* either this */
  qt_costnet_t *cost; /* or this */
} fd_model;

static size_t fd_count(const fd_model *m) {
  return m->dkl ? qt_dkl_param_count(m->dkl) : qt_costnet_param_count(m->cost);
}

static void fd_store(const fd_model *m, const double *params) {
  int rc = m->dkl ? qt_dkl_set_params(m->dkl, params, NULL)
                  : qt_costnet_set_params(m->cost, params, NULL);
  CU_ASSERT_EQUAL(rc, 0);
}

static double fd_loss(const fd_model *m, const qt_rows *rows, const double *mask, double *grad) {
  double loss = NAN;
  qt_err err;
  int rc = m->dkl ? qt__dkl_objective(m->dkl, rows, mask, &loss, grad, &err)
                  : qt__costnet_objective(m->cost, rows, mask, &loss, grad, &err);
  if (rc != 0) fprintf(stderr, "objective failed: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL(rc, 0);
  return loss;
}

/* Compares the analytic gradient with central differences for every entry
 * of every tensor. The error of a tensor is ||analytic - numeric|| /
 * ||numeric|| over its entries; returns the worst, printing each. The
 * tensor named `invariant` (may be NULL) cannot change the loss: both of its
 * gradients must vanish instead. */
static double fd_check(const char *label, const fd_model *m, const qt__tensor *tensors,
                       size_t tensor_count, const qt_rows *rows, const double *mask,
                       const char *invariant) {
  size_t count = fd_count(m);
  double *params = malloc(count * sizeof *params);
  double *probe = malloc(count * sizeof *probe);
  double *grad = malloc(count * sizeof *grad);
  if (m->dkl)
    qt_dkl_get_params(m->dkl, params);
  else
    qt_costnet_get_params(m->cost, params);
  fd_loss(m, rows, mask, grad);
  const double h = 1e-6;
  double worst = 0.0;
  size_t covered = 0;
  for (size_t t = 0; t < tensor_count; t++) {
    double diff2 = 0.0, norm2 = 0.0, analytic2 = 0.0;
    for (size_t i = tensors[t].offset; i < tensors[t].offset + tensors[t].size; i++) {
      memcpy(probe, params, count * sizeof *probe);
      probe[i] = params[i] + h;
      fd_store(m, probe);
      double up = fd_loss(m, rows, mask, NULL);
      probe[i] = params[i] - h;
      fd_store(m, probe);
      double down = fd_loss(m, rows, mask, NULL);
      double numeric = (up - down) / (2.0 * h);
      diff2 += (grad[i] - numeric) * (grad[i] - numeric);
      norm2 += numeric * numeric;
      analytic2 += grad[i] * grad[i];
    }
    covered += tensors[t].size;
    if (invariant && strcmp(tensors[t].name, invariant) == 0) {
      printf("\n  %s %-22s %5zu entries  |grad| %.3e, finite differences %.3e (invariant)", label,
             tensors[t].name, tensors[t].size, sqrt(analytic2), sqrt(norm2));
      CU_ASSERT(sqrt(analytic2) < 1e-12 && sqrt(norm2) < 1e-12);
      continue;
    }
    double error = sqrt(diff2) / (sqrt(norm2) > 1e-300 ? sqrt(norm2) : 1e-300);
    printf("\n  %s %-22s %5zu entries  |grad| %.3e  relative error %.2e", label, tensors[t].name,
           tensors[t].size, sqrt(norm2), error);
    /* A tensor whose gradient vanishes would pass any check: none may. */
    CU_ASSERT(norm2 > 0.0);
    if (error > worst) worst = error;
  }
  CU_ASSERT_EQUAL(covered, count); /* every parameter belongs to a checked tensor */
  fd_store(m, params);
  free(params);
  free(probe);
  free(grad);
  printf("\n  %s worst relative error %.2e\n", label, worst);
  return worst;
}

static void test_dkl_gradients(void) {
  qt_dkl_config config = small_config();
  qt_rng_t *rng = make_rng(11);
  qt_dkl_t *dkl = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_dkl_init(&dkl, &config, rng, NULL), 0);
  /* Raw hypers away from 0, so that every hyperparameter's gradient is
   * generic; the mean away from the targets' mean. */
  size_t count = qt_dkl_param_count(dkl);
  double *params = malloc(count * sizeof *params);
  qt_dkl_get_params(dkl, params);
  size_t hypers = count - 4;
  /* The RBF kernel sees only differences of features, so a bias shifts
   * every row's features alike and changes nothing, except where a
   * rectifier between it and the output treats the rows differently. Larger
   * weights spread the rows' pre-activations across 0, so that every bias
   * but the output's (head1.bias, checked to have none) has a gradient. */
  for (size_t i = 0; i < hypers; i++) params[i] *= 3.0;
  params[hypers + QT_GP_HYPER_MEAN] = 0.1;
  params[hypers + QT_GP_HYPER_RAW_OUTPUTSCALE] = 0.3;
  params[hypers + QT_GP_HYPER_RAW_NOISE] = -2.0;
  params[hypers + QT_GP_HYPER_RAW_LENGTHSCALE] = -0.4;
  CU_ASSERT_EQUAL(qt_dkl_set_params(dkl, params, NULL), 0);
  free(params);

  test_rows rows = make_rows(&config, 7, rng);
  size_t tensor_count;
  const qt__tensor *tensors = qt__dkl_tensors(dkl, &tensor_count);
  CU_ASSERT_EQUAL(tensor_count, 21); /* 2 x 4 encoder, 2 meta, 4 conv, 2 curve, 2 x 2 head, gp */
  fd_model model = {dkl, NULL};

  /* With dropout: one mask, drawn once and reused by every evaluation. */
  double mask[7 * QT__CONV_CHANNELS];
  qt__net_shape shape = qt__dkl_shape(&config);
  draw_mask(&shape, 7, rng, mask);
  int dropped = 0;
  for (size_t i = 0; i < 7 * QT__CONV_CHANNELS; i++) dropped += mask[i] == 0.0;
  CU_ASSERT(dropped > 0 && dropped < 7 * QT__CONV_CHANNELS);
  CU_ASSERT(fd_check("dkl (train mask)", &model, tensors, tensor_count, &rows.rows, mask,
                     "head1.bias") < 1e-4);
  /* Eval mode, no dropout. */
  CU_ASSERT(fd_check("dkl (eval)", &model, tensors, tensor_count, &rows.rows, NULL, "head1.bias") <
            1e-4);

  free(rows.block);
  qt_dkl_free(dkl);
  qt_rng_free(rng);
}

static void test_costnet_gradients(void) {
  qt_dkl_config config = small_config();
  qt_rng_t *rng = make_rng(5);
  qt_costnet_t *net = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_costnet_init(&net, &config, rng, NULL), 0);
  /* A positive output bias keeps the final ReLU open for most rows, so that
   * every tensor has a gradient to check. */
  size_t count = qt_costnet_param_count(net);
  double *params = malloc(count * sizeof *params);
  qt_costnet_get_params(net, params);
  params[count - 1] = 0.5;
  CU_ASSERT_EQUAL(qt_costnet_set_params(net, params, NULL), 0);
  free(params);

  test_rows rows = make_rows(&config, 7, rng);
  size_t tensor_count;
  const qt__tensor *tensors = qt__costnet_tensors(net, &tensor_count);
  CU_ASSERT_EQUAL(tensor_count, 14); /* meta 2, conv 4, curve 2, head 3 x 2 */
  fd_model model = {NULL, net};
  double mask[7 * QT__CONV_CHANNELS];
  qt__net_shape shape = qt__costnet_shape(&config);
  draw_mask(&shape, 7, rng, mask);
  CU_ASSERT(fd_check("cost (train mask)", &model, tensors, tensor_count, &rows.rows, mask, NULL) <
            1e-4);
  CU_ASSERT(fd_check("cost (eval)", &model, tensors, tensor_count, &rows.rows, NULL, NULL) < 1e-4);
  free(rows.block);
  qt_costnet_free(net);
  qt_rng_free(rng);
}

/* ------------------------------------------------------------------------- */
/* Behaviour                                                                  */
/* ------------------------------------------------------------------------- */

/* The default configuration (Quick-Tune's shapes, curve_len 50) learns a
 * synthetic task: the eval-mode loss falls well below its start. */
static void test_dkl_training_lowers_loss(void) {
  qt_dkl_config config = qt_dkl_default_config(6, 2);
  config.model_begin = 0;
  config.model_end = 3;
  qt_rng_t *rng = make_rng(3);
  qt_dkl_t *dkl = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_dkl_init(&dkl, &config, rng, NULL), 0);
  test_rows rows = make_rows(&config, 48, rng);
  double before = NAN, after = NAN, last = NAN;
  CU_ASSERT_EQUAL(qt__dkl_objective(dkl, &rows.rows, NULL, &before, NULL, NULL), 0);
  qt_err err;
  int rc = qt_dkl_train(dkl, &rows.rows, 300, 1e-2, rng, &last, &err);
  if (rc != 0) fprintf(stderr, "%s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL(rc, 0);
  CU_ASSERT(isfinite(last));
  CU_ASSERT_EQUAL(qt__dkl_objective(dkl, &rows.rows, NULL, &after, NULL, NULL), 0);
  printf("\n  -MLL/n before %.4f, after 300 steps %.4f (last train-mode loss %.4f)\n", before,
         after, last);
  CU_ASSERT(after < before - 0.5);

  /* Fewer than two rows: nothing to learn from, nothing changes. */
  size_t count = qt_dkl_param_count(dkl);
  double *p0 = malloc(count * sizeof *p0), *p1 = malloc(count * sizeof *p1);
  qt_dkl_get_params(dkl, p0);
  qt_rows one = qt__rows_slice(&rows.rows, &config, 0, 1);
  CU_ASSERT_EQUAL(qt_dkl_train(dkl, &one, 10, 1e-2, rng, &last, NULL), 0);
  CU_ASSERT(isnan(last));
  qt_dkl_get_params(dkl, p1);
  CU_ASSERT_EQUAL(memcmp(p0, p1, count * sizeof *p0), 0);
  free(p0);
  free(p1);
  free(rows.block);
  qt_dkl_free(dkl);
  qt_rng_free(rng);
}

/* qt_dkl_predict equals the exact GP with the same hyperparameters,
 * conditioned on the extractor's eval-mode features. */
static void test_dkl_predict_matches_gp(void) {
  qt_dkl_config config = small_config();
  qt_rng_t *rng = make_rng(21);
  qt_dkl_t *dkl = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_dkl_init(&dkl, &config, rng, NULL), 0);
  test_rows train = make_rows(&config, 12, rng), query = make_rows(&config, 300, rng);
  CU_ASSERT_EQUAL(qt_dkl_train(dkl, &train.rows, 20, 1e-2, rng, NULL, NULL), 0);

  size_t o = config.output_dim;
  double *phi_train = malloc(12 * o * sizeof *phi_train);
  double *phi_query = malloc(300 * o * sizeof *phi_query);
  CU_ASSERT_EQUAL(qt__dkl_features(dkl, &train.rows, NULL, phi_train, NULL), 0);
  CU_ASSERT_EQUAL(qt__dkl_features(dkl, &query.rows, NULL, phi_query, NULL), 0);
  size_t count = qt_dkl_param_count(dkl);
  double *params = malloc(count * sizeof *params);
  qt_dkl_get_params(dkl, params);

  qt_gp_t *gp = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_gp_init(&gp, config.kernel, o, NULL), 0);
  CU_ASSERT_EQUAL(qt_gp_set_hypers(gp, params + count - 4, NULL), 0);
  CU_ASSERT_EQUAL(qt_gp_condition(gp, phi_train, train.rows.y, 12, NULL), 0);
  double mean_gp[300], var_gp[300], mean[300], var[300];
  CU_ASSERT_EQUAL(
      qt_gp_predict(gp, phi_query, 300, mean_gp, var_gp, QT_GP_VARIANCE_PREDICTIVE, NULL), 0);
  /* 300 queries cross the 256-row block boundary of qt_dkl_predict. */
  CU_ASSERT_EQUAL(qt_dkl_predict(dkl, &train.rows, &query.rows, mean, var, NULL), 0);
  double worst = 0.0;
  for (size_t t = 0; t < 300; t++) {
    worst = fmax(worst, fabs(mean[t] - mean_gp[t]) + fabs(var[t] - var_gp[t]));
    CU_ASSERT(var[t] >= qt_gp_noise(gp)); /* predictive: noise included */
  }
  CU_ASSERT(worst < 1e-12);

  /* No training rows: the prior. */
  qt_rows empty = {0};
  CU_ASSERT_EQUAL(qt_dkl_predict(dkl, &empty, &query.rows, mean, var, NULL), 0);
  QT_ASSERT_CLOSE(mean[0], qt_gp_mean_constant(gp), 1e-15);
  QT_ASSERT_CLOSE(var[5], qt_gp_outputscale(gp) + qt_gp_noise(gp), 1e-15);

  /* Bad rows are named. */
  qt_err err;
  qt_rows no_y = train.rows;
  no_y.y = NULL;
  CU_ASSERT_EQUAL(qt_dkl_predict(dkl, &no_y, &query.rows, mean, var, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "targets y"));
  ((double *)train.rows.curve)[3 * config.curve_len + 2] = NAN;
  CU_ASSERT_EQUAL(qt_dkl_predict(dkl, &train.rows, &query.rows, mean, var, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "row 3 has a non-finite curve"));

  qt_gp_free(gp);
  free(params);
  free(phi_train);
  free(phi_query);
  free(train.block);
  free(query.block);
  qt_dkl_free(dkl);
  qt_rng_free(rng);
}

/* get_params -> set_params moves a model: a second DKL with other initial
 * weights predicts the same numbers once it holds the first one's vector. */
static void test_dkl_params_round_trip(void) {
  qt_dkl_config config = small_config();
  qt_rng_t *rng = make_rng(8), *other_rng = make_rng(9);
  qt_dkl_t *a = NULL, *b = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_dkl_init(&a, &config, rng, NULL), 0);
  CU_ASSERT_EQUAL_FATAL(qt_dkl_init(&b, &config, other_rng, NULL), 0);
  test_rows train = make_rows(&config, 10, rng), query = make_rows(&config, 5, rng);
  CU_ASSERT_EQUAL(qt_dkl_train(a, &train.rows, 15, 1e-2, rng, NULL, NULL), 0);
  size_t count = qt_dkl_param_count(a);
  CU_ASSERT_EQUAL(count, qt_dkl_param_count(b));
  double *pa = malloc(count * sizeof *pa), *pb = malloc(count * sizeof *pb);
  qt_dkl_get_params(a, pa);
  qt_dkl_get_params(b, pb);
  CU_ASSERT_NOT_EQUAL(memcmp(pa, pb, count * sizeof *pa), 0);
  CU_ASSERT_EQUAL(qt_dkl_set_params(b, pa, NULL), 0);
  qt_dkl_get_params(b, pb);
  CU_ASSERT_EQUAL(memcmp(pa, pb, count * sizeof *pa), 0);
  double ma[5], va[5], mb[5], vb[5];
  CU_ASSERT_EQUAL(qt_dkl_predict(a, &train.rows, &query.rows, ma, va, NULL), 0);
  CU_ASSERT_EQUAL(qt_dkl_predict(b, &train.rows, &query.rows, mb, vb, NULL), 0);
  CU_ASSERT_EQUAL(memcmp(ma, mb, sizeof ma), 0);
  CU_ASSERT_EQUAL(memcmp(va, vb, sizeof va), 0);
  /* A non-finite entry is refused and changes nothing. */
  qt_err err;
  pa[3] = NAN;
  CU_ASSERT_EQUAL(qt_dkl_set_params(b, pa, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "parameter 3"));
  qt_dkl_get_params(b, pa);
  CU_ASSERT_EQUAL(memcmp(pa, pb, count * sizeof *pa), 0);
  free(pa);
  free(pb);
  free(train.block);
  free(query.block);
  qt_dkl_free(a);
  qt_dkl_free(b);
  qt_rng_free(rng);
  qt_rng_free(other_rng);
}

/* A factorization that cannot succeed (a lengthscale of 0) fails the call
 * with QT_ENUMERIC and leaves the parameters as they were. */
static void test_dkl_failure_restores(void) {
  qt_dkl_config config = small_config();
  qt_rng_t *rng = make_rng(4);
  qt_dkl_t *dkl = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_dkl_init(&dkl, &config, rng, NULL), 0);
  size_t count = qt_dkl_param_count(dkl);
  double *p0 = malloc(count * sizeof *p0), *p1 = malloc(count * sizeof *p1);
  qt_dkl_get_params(dkl, p0);
  p0[count - 4 + QT_GP_HYPER_RAW_LENGTHSCALE] = -800.0;
  CU_ASSERT_EQUAL(qt_dkl_set_params(dkl, p0, NULL), 0);
  test_rows rows = make_rows(&config, 6, rng);
  qt_err err;
  double loss = 0.0;
  CU_ASSERT_EQUAL(qt_dkl_train(dkl, &rows.rows, 5, 1e-2, rng, &loss, &err), QT_ENUMERIC);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "parameters restored"));
  CU_ASSERT(isnan(loss));
  qt_dkl_get_params(dkl, p1);
  CU_ASSERT_EQUAL(memcmp(p0, p1, count * sizeof *p0), 0);
  free(p0);
  free(p1);
  free(rows.block);
  qt_dkl_free(dkl);
  qt_rng_free(rng);
}

/* The cost predictor's output is never negative, even from weights that
 * push it below zero, training brings it close to the costs, and the
 * calibration reopens a closed output. */
static void test_costnet(void) {
  qt_dkl_config config = qt_dkl_default_config(6, 2);
  qt_rng_t *rng = make_rng(13);
  qt_costnet_t *net = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_costnet_init(&net, &config, rng, NULL), 0);
  test_rows rows = make_rows(&config, 64, rng);
  size_t count = qt_costnet_param_count(net);
  double *params = malloc(count * sizeof *params);
  qt_costnet_get_params(net, params);
  params[count - 1] = -0.3; /* the output bias: most rows now hit the ReLU */
  CU_ASSERT_EQUAL(qt_costnet_set_params(net, params, NULL), 0);
  double seconds[64];
  CU_ASSERT_EQUAL(qt_costnet_predict(net, &rows.rows, seconds, NULL), 0);
  for (size_t i = 0; i < 64; i++) CU_ASSERT(seconds[i] >= 0.0);

  params[count - 1] = 0.2;
  CU_ASSERT_EQUAL(qt_costnet_set_params(net, params, NULL), 0);
  double before = NAN, after = NAN, last = NAN;
  CU_ASSERT_EQUAL(qt__costnet_objective(net, &rows.rows, NULL, &before, NULL, NULL), 0);
  CU_ASSERT_EQUAL(qt_costnet_train(net, &rows.rows, 400, 3e-3, rng, &last, NULL), 0);
  CU_ASSERT_EQUAL(qt__costnet_objective(net, &rows.rows, NULL, &after, NULL, NULL), 0);
  printf("\n  cost MSE (on seconds/100) before %.4f, after 400 steps %.4f\n", before, after);
  CU_ASSERT(after < 0.25 * before);
  CU_ASSERT_EQUAL(qt_costnet_predict(net, &rows.rows, seconds, NULL), 0);
  double sq = 0.0;
  for (size_t i = 0; i < 64; i++) {
    CU_ASSERT(seconds[i] >= 0.0);
    sq += (seconds[i] - rows.rows.cost[i]) * (seconds[i] - rows.rows.cost[i]);
  }
  QT_ASSERT_CLOSE(sq / 64.0 / (QT__COST_SCALE * QT__COST_SCALE), after, 1e-9);

  /* A closed output ReLU (every row below 0) passes no gradient; the
   * calibration opens it at the mean cost. */
  params[count - 1] = -5.0;
  CU_ASSERT_EQUAL(qt_costnet_set_params(net, params, NULL), 0);
  CU_ASSERT_EQUAL(qt_costnet_predict(net, &rows.rows, seconds, NULL), 0);
  for (size_t i = 0; i < 64; i++) CU_ASSERT_EQUAL(seconds[i], 0.0);
  CU_ASSERT_EQUAL(qt_costnet_calibrate(net, &rows.rows, NULL), 0);
  CU_ASSERT_EQUAL(qt_costnet_predict(net, &rows.rows, seconds, NULL), 0);
  double predicted = 0.0, actual = 0.0;
  int open = 1;
  for (size_t i = 0; i < 64; i++) {
    open &= seconds[i] > 0.0;
    predicted += seconds[i] / 64.0;
    actual += rows.rows.cost[i] / 64.0;
  }
  CU_ASSERT(open);
  QT_ASSERT_CLOSE(predicted, actual, 1e-9 * actual);

  qt_rows no_cost = rows.rows;
  no_cost.cost = NULL;
  qt_err err;
  CU_ASSERT_EQUAL(qt_costnet_train(net, &no_cost, 1, 1e-3, rng, NULL, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "costs"));
  free(params);
  free(rows.block);
  qt_costnet_free(net);
  qt_rng_free(rng);
}

/* The model block of a space with a "model" hyperparameter is its one-hot
 * block exactly; configurations that cannot work are refused. */
static void test_configs(void) {
  qt_space_t *space = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_space_load_file("configs/spaces/quicktune-v1.yaml", &space, NULL), 0);
  qt_dkl_config config = qt_dkl_space_config(space, 4);
  size_t hp;
  CU_ASSERT_EQUAL(qt_space_find(space, "model", &hp), 0);
  CU_ASSERT_EQUAL(config.hp_dim, qt_space_encoded_dim(space));
  CU_ASSERT_EQUAL(config.model_begin, qt_space_encoded_offset(space, hp, NULL));
  CU_ASSERT_EQUAL(config.model_end - config.model_begin, qt_space_hp_choice_count(space, hp));
  CU_ASSERT_EQUAL(config.meta_dim, 4);
  qt_space_free(space);

  qt_rng_t *rng = make_rng(1);
  qt_dkl_t *dkl = NULL;
  qt_err err;
  qt_dkl_config bad = qt_dkl_default_config(5, 0);
  bad.model_begin = 0;
  bad.model_end = 5; /* the whole encoding: nothing left for the second encoder */
  CU_ASSERT_EQUAL(qt_dkl_init(&dkl, &bad, rng, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "model block"));
  bad = qt_dkl_default_config(5, 0);
  bad.curve_len = 1;
  CU_ASSERT_EQUAL(qt_dkl_init(&dkl, &bad, rng, &err), QT_EINVAL);
  bad = qt_dkl_default_config(5, 0);
  bad.dropout = 1.0;
  CU_ASSERT_EQUAL(qt_dkl_init(&dkl, &bad, rng, &err), QT_EINVAL);
  CU_ASSERT_PTR_NULL(dkl);
  /* Without meta-features and with one encoder, the model works too. */
  qt_dkl_config plain = qt_dkl_default_config(5, 0);
  CU_ASSERT_EQUAL_FATAL(qt_dkl_init(&dkl, &plain, rng, NULL), 0);
  test_rows rows = make_rows(&plain, 8, rng);
  double mean[8];
  CU_ASSERT_EQUAL(qt_dkl_train(dkl, &rows.rows, 3, 1e-3, rng, NULL, NULL), 0);
  CU_ASSERT_EQUAL(qt_dkl_predict(dkl, &rows.rows, &rows.rows, mean, NULL, NULL), 0);
  free(rows.block);
  qt_dkl_free(dkl);
  qt_rng_free(rng);
}

/* The curve encoder's convolutions are written for the vectorizer; they
 * must give, to the bit, what the formula's loop over one output at a time
 * gives (bias, then input channel, then tap), for the shortest curve, an
 * odd one and the default 50 epochs. */
static void test_curve_convolutions_exact(void) {
  enum { CH = QT__CONV_CHANNELS, TAPS = QT__CONV_KERNEL };
  static const size_t lengths[] = {2, 9, 50};
  qt_rng_t *rng = make_rng(11);
  for (size_t li = 0; li < sizeof lengths / sizeof *lengths; li++) {
    qt_dkl_config config = small_config();
    config.curve_len = lengths[li];
    qt__net_shape shape = qt__dkl_shape(&config);
    qt__net net;
    CU_ASSERT_EQUAL_FATAL(qt__net_init(&net, &shape, NULL), 0);
    size_t n = 6, L = config.curve_len;
    CU_ASSERT_EQUAL_FATAL(qt__net_reserve(&net, n, NULL), 0);
    double *params = malloc(net.param_count * sizeof *params);
    CU_ASSERT_PTR_NOT_NULL_FATAL(params);
    for (size_t i = 0; i < net.param_count; i++) params[i] = 2.0 * qt_rng_uniform(rng) - 1.0;
    test_rows rows = make_rows(&config, n, rng);
    qt__net_forward(&net, params, &rows.rows, NULL);

    const double *W1 = params + net.conv1_weight, *b1 = params + net.conv1_bias;
    const double *W2 = params + net.conv2_weight, *b2 = params + net.conv2_bias;
    size_t mismatches = 0;
    double h1[CH * 50];
    for (size_t i = 0; i < n; i++) {
      const double *c = rows.rows.curve + i * L;
      for (size_t o = 0; o < CH; o++) {
        for (size_t t = 0; t < L; t++) {
          double sum = b1[o];
          for (size_t k = 0; k < TAPS; k++) {
            if (t + k >= 1 && t + k - 1 < L) sum += W1[o * TAPS + k] * c[t + k - 1];
          }
          h1[o * L + t] = sum > 0.0 ? sum : 0.0;
          mismatches +=
              memcmp(&h1[o * L + t], &net.conv1_out[(i * CH + o) * L + t], sizeof sum) != 0;
        }
      }
      for (size_t o = 0; o < CH; o++) {
        for (size_t t = 0; t < L; t++) {
          double sum = b2[o];
          for (size_t ci = 0; ci < CH; ci++) {
            for (size_t k = 0; k < TAPS; k++) {
              if (t + k >= 1 && t + k - 1 < L)
                sum += W2[(o * CH + ci) * TAPS + k] * h1[ci * L + t + k - 1];
            }
          }
          mismatches += memcmp(&sum, &net.conv2_out[(i * CH + o) * L + t], sizeof sum) != 0;
        }
      }
    }
    CU_ASSERT_EQUAL(mismatches, 0);
    free(rows.block);
    free(params);
    qt__net_free(&net);
  }
  qt_rng_free(rng);
}

static const qt_test_case cases[] = {
    {"deep-kernel GP gradients (finite differences, every tensor)", test_dkl_gradients},
    {"cost predictor gradients (finite differences, every tensor)", test_costnet_gradients},
    {"training lowers the loss", test_dkl_training_lowers_loss},
    {"predict equals the exact GP on the features", test_dkl_predict_matches_gp},
    {"parameters round trip", test_dkl_params_round_trip},
    {"a numerical failure restores the parameters", test_dkl_failure_restores},
    {"cost predictor: non-negative, learns", test_costnet},
    {"configurations", test_configs},
    {"curve convolutions equal the formula to the bit", test_curve_convolutions_exact},
    {NULL, NULL}};

QT_TEST_MAIN("surrogate_dkl", cases)

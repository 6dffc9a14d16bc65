/*
 * test_quicktune.c - the Quick-Tune optimizers (src/bo/qt_opt_quicktune.c)
 * and the meta-training fold protocol of the benchmark
 * (src/bo/qt_bench_folds.c).
 *
 * The acquisition is checked against values worked out by hand from Phi and
 * phi; the incumbent rule, the refit schedule and the ablation flags through
 * the counters the optimizer exposes to its test suite; the seam's promises
 * (pending and ended candidates) by driving the optimizers like a worker
 * would. Most tests shorten the schedule (restart_steps, refine_steps) so
 * that a network trains in milliseconds: the schedule's counting does not
 * depend on these numbers. The end-to-end test runs the real schedule.
 */
#include "bo/qt_bo.h"
#include "bo/qt_bo_internal.h"
#include "qt_test.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define COUNT_OF(array) (sizeof(array) / sizeof((array)[0]))
#define MAX_POOL 64

/* ------------------------------------------------------------------------- */
/* Fixtures                                                                   */
/* ------------------------------------------------------------------------- */

/* A pool over a 1-D space (x in [0, 1]) with max_epochs epochs and two
 * meta-features. */
typedef struct fixture {
  qt_space_t *space;
  qt_config configs[MAX_POOL];
  size_t count;
  qt_pool pool;
} fixture;

static void fixture_init(fixture *f, size_t count, long max_epochs) {
  CU_ASSERT_FATAL(count <= MAX_POOL);
  memset(f, 0, sizeof *f);
  char text[512];
  snprintf(text, sizeof text,
           "version: 1\nname: line\nfidelity: {name: epochs, min: 1, max: %ld}\n"
           "hyperparameters:\n  x: {type: float, range: [0.0, 1.0]}\n",
           max_epochs);
  qt_err err;
  qt_err_clear(&err);
  CU_ASSERT_EQUAL_FATAL(qt_space_load_string(text, strlen(text), "line.yaml", &f->space, &err), 0);
  f->count = count;
  for (size_t i = 0; i < count; i++) {
    CU_ASSERT_EQUAL_FATAL(qt_config_init(&f->configs[i], f->space, &err), 0);
    CU_ASSERT_EQUAL_FATAL(
        qt_config_set_number(&f->configs[i], 0, ((double)i + 0.5) / (double)count, &err), 0);
  }
  CU_ASSERT_EQUAL_FATAL(qt_pool_init(&f->pool, f->space, f->configs, count, &err), 0);
  const double features[2] = {5000.0, 10.0};
  CU_ASSERT_EQUAL_FATAL(qt_pool_set_meta(&f->pool, features, 2, &err), 0);
}

static void fixture_free(fixture *f) {
  qt_pool_free(&f->pool);
  for (size_t i = 0; i < f->count; i++) qt_config_free(&f->configs[i]);
  qt_space_free(f->space);
}

/* A surrogate for the fixture's space made from freshly initialized models
 * (seeded): what the file holds does not matter to the flag tests, only
 * which parts a variant takes from it. */
static qt_surrogate_t *fixture_surrogate(const fixture *f, uint64_t seed) {
  qt_err err;
  qt_err_clear(&err);
  qt_dkl_config config = qt_dkl_space_config(f->space, f->pool.meta_dim);
  qt_rng_t *rng = NULL;
  qt_dkl_t *dkl = NULL;
  qt_costnet_t *cost = NULL;
  qt_surrogate_t *surrogate = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, seed, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_dkl_init(&dkl, &config, rng, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_costnet_init(&cost, &config, rng, &err), 0);
  int rc = qt_surrogate_create(f->space, dkl, cost, NULL, &surrogate, &err);
  if (rc != 0) fprintf(stderr, "surrogate: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  qt_dkl_free(dkl);
  qt_costnet_free(cost);
  qt_rng_free(rng);
  return surrogate;
}

/* Short schedules for tests that count, not learn. */
static qt_optimizer_params short_params(const qt_surrogate_t *surrogate, uint64_t seed) {
  qt_optimizer_params p = qt_optimizer_default_params();
  p.seed = seed;
  p.surrogate = surrogate;
  p.quicktune.restart_steps = 3;
  p.quicktune.refine_steps = 2;
  return p;
}

static qt_optimizer_t *create(const char *name, const qt_pool *pool,
                              const qt_optimizer_params *params) {
  qt_optimizer_t *opt = NULL;
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_optimizer_create(name, pool, params, &opt, &err);
  if (rc != 0) fprintf(stderr, "create %s: %s\n", name, qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  return opt;
}

static void observe(qt_optimizer_t *opt, size_t c, long epoch, qt_obs_status status,
                    double score) {
  qt_observation obs = {status, status == QT_OBS_STATUS_OK ? score : NAN, 1.0, NAN, NAN};
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_optimizer_observe(opt, c, epoch, &obs, &err);
  if (rc != 0) fprintf(stderr, "observe: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
}

static qt_suggest_status suggest(qt_optimizer_t *opt, qt_suggestion *s) {
  qt_suggest_status status;
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_optimizer_suggest(opt, s, &status, &err);
  if (rc != 0) fprintf(stderr, "suggest: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  return status;
}

static qt_metadataset_t *synthetic_md(size_t datasets, size_t runs, size_t epochs, uint64_t seed) {
  qt_metadataset_synth_params sp = qt_metadataset_synth_default_params();
  sp.n_datasets = datasets;
  sp.runs_per_dataset = runs;
  sp.min_epochs = epochs;
  sp.max_epochs = epochs;
  sp.seed = seed;
  qt_metadataset_t *md = NULL;
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_metadataset_synthesize("tests/fixtures/spaces/synthetic.yaml", &sp, &md, &err);
  if (rc != 0) fprintf(stderr, "synthesize: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  return md;
}

/* ------------------------------------------------------------------------- */
/* Acquisition                                                                */
/* ------------------------------------------------------------------------- */

/* EI = (mu - y* - xi) Phi(z) + sd phi(z), z = (mu - y* - xi) / sd, with
 * Phi(1) = 0.8413447460685429, phi(1) = 0.24197072451914337,
 * phi(0) = 0.3989422804014327, Phi(-2) = 0.022750131948179195,
 * phi(2) = 0.05399096651318806. */
static void test_ei_hand_values(void) {
  /* z = 1: 0.1 * 0.84134... + 0.1 * 0.24197... */
  QT_ASSERT_CLOSE(qt__quicktune_ei(0.6, 0.1, 0.5, 0.0), 0.10833154705876723, 1e-14);
  /* z = 0: sd * phi(0) */
  QT_ASSERT_CLOSE(qt__quicktune_ei(0.5, 0.2, 0.5, 0.0), 0.07978845608028654, 1e-14);
  /* z = -1: -0.1 * (1 - 0.84134...) + 0.1 * 0.24197... */
  QT_ASSERT_CLOSE(qt__quicktune_ei(0.4, 0.1, 0.5, 0.0), 0.008331547058768, 1e-14);
  /* z = -2: -0.1 * 0.02275... + 0.05 * 0.05399... */
  QT_ASSERT_CLOSE(qt__quicktune_ei(0.5, 0.05, 0.6, 0.0), 0.0004245351308414835, 1e-15);
  /* xi shifts the incumbent: z = (0.6 - 0.5 - 0.1) / 0.1 = 0. */
  QT_ASSERT_CLOSE(qt__quicktune_ei(0.6, 0.1, 0.5, 0.1), 0.03989422804014327, 1e-14);
  /* No uncertainty, no improvement expected (Quick-Tune returns 0). */
  CU_ASSERT_EQUAL(qt__quicktune_ei(0.9, 0.0, 0.5, 0.0), 0.0);
  /* Against -inf (no observation yet) every candidate is infinitely good. */
  CU_ASSERT(isinf(qt__quicktune_ei(0.5, 0.1, -INFINITY, 0.0)));
}

/* specs §1.7: y*(t) is the best score at epoch t among the candidates that
 * reached t; when none did, the best score of any candidate at any epoch. */
static void test_per_fidelity_incumbent(void) {
  fixture f;
  fixture_init(&f, 6, 10);
  qt_optimizer_params p = short_params(NULL, 0);
  qt_optimizer_t *opt = create("quicktune-MC", &f.pool, &p);
  CU_ASSERT(isinf(qt__quicktune_incumbent(opt, 1)) && qt__quicktune_incumbent(opt, 1) < 0);
  /* Candidate 0: 0.2, 0.5, 0.4; candidate 1: 0.3; candidate 2: 0.1, 0.6. */
  observe(opt, 0, 1, QT_OBS_STATUS_OK, 0.2);
  observe(opt, 0, 2, QT_OBS_STATUS_OK, 0.5);
  observe(opt, 0, 3, QT_OBS_STATUS_OK, 0.4);
  observe(opt, 1, 1, QT_OBS_STATUS_OK, 0.3);
  observe(opt, 2, 1, QT_OBS_STATUS_OK, 0.1);
  observe(opt, 2, 2, QT_OBS_STATUS_OK, 0.6);
  QT_ASSERT_CLOSE(qt__quicktune_incumbent(opt, 1), 0.3, 0.0);
  QT_ASSERT_CLOSE(qt__quicktune_incumbent(opt, 2), 0.6, 0.0);
  /* Only candidate 0 reached epoch 3: its 0.4, not the better 0.6. */
  QT_ASSERT_CLOSE(qt__quicktune_incumbent(opt, 3), 0.4, 0.0);
  /* Nobody reached 4 or 10: the best of everything. */
  QT_ASSERT_CLOSE(qt__quicktune_incumbent(opt, 4), 0.6, 0.0);
  QT_ASSERT_CLOSE(qt__quicktune_incumbent(opt, 10), 0.6, 0.0);
  /* A diverged candidate's earlier scores still count (Quick-Tune keeps
   * them in its history); the divergence itself adds nothing. */
  observe(opt, 0, 4, QT_OBS_STATUS_OK, 0.7);
  observe(opt, 0, 5, QT_OBS_STATUS_DIVERGED, NAN);
  QT_ASSERT_CLOSE(qt__quicktune_incumbent(opt, 4), 0.7, 0.0);
  QT_ASSERT_CLOSE(qt__quicktune_incumbent(opt, 5), 0.7, 0.0);
  QT_ASSERT_CLOSE(qt__quicktune_incumbent(opt, 2), 0.6, 0.0);
  qt_optimizer_free(opt);
  fixture_free(&f);
}

/* The choice: the first index of the strictly largest EI / cost; costs in
 * Quick-Tune's units (seconds / 100), 1e-4 when the prediction is 0. */
static void test_selection_ties_and_costs(void) {
  fixture f;
  fixture_init(&f, 6, 10);
  qt_optimizer_params p = short_params(NULL, 0);
  qt_optimizer_t *opt = create("quicktune-MC", &f.pool, &p);
  observe(opt, 0, 1, QT_OBS_STATUS_OK, 0.5); /* y*(t) = 0.5 for every t */
  const long epochs[4] = {1, 1, 2, 3};
  const double mean[4] = {0.6, 0.6, 0.6, 0.6};
  const double variance[4] = {0.01, 0.01, 0.01, 0.01};
  const double ei = 0.10833154705876723; /* z = 1, as above */
  double a[4];

  /* Equal EI and no costs: the first index. */
  CU_ASSERT_EQUAL(qt__quicktune_select(opt, 4, epochs, mean, variance, NULL, a), 0);
  for (int i = 0; i < 4; i++) QT_ASSERT_CLOSE(a[i], ei, 1e-14);
  /* Equal EI, cost-aware: the cheapest, the first of equally cheap ones. */
  const double seconds[4] = {200.0, 50.0, 50.0, 100.0};
  CU_ASSERT_EQUAL(qt__quicktune_select(opt, 4, epochs, mean, variance, seconds, a), 1);
  QT_ASSERT_CLOSE(a[0], ei / 2.0, 1e-14);
  QT_ASSERT_CLOSE(a[1], ei / 0.5, 1e-14);
  QT_ASSERT_CLOSE(a[3], ei / 1.0, 1e-14);
  /* More EI loses to a lower cost when the ratio says so, and wins
   * otherwise: candidate 0 has 3x the improvement at 4x the cost. */
  const double mean2[2] = {0.5 + 3.0 * 0.3, 0.5 + 0.3};
  const double variance2[2] = {1e-30, 1e-30}; /* sd ~ 0: EI = mean - y* */
  const double seconds2[2] = {400.0, 100.0};
  CU_ASSERT_EQUAL(qt__quicktune_select(opt, 2, epochs, mean2, variance2, seconds2, a), 1);
  const double seconds3[2] = {200.0, 100.0};
  CU_ASSERT_EQUAL(qt__quicktune_select(opt, 2, epochs, mean2, variance2, seconds3, a), 0);
  /* A predicted cost of 0 divides by 1e-4 units (0.01 s): 0.005 s beats it. */
  const double seconds4[2] = {0.0, 0.005};
  const double mean4[2] = {0.6, 0.6};
  CU_ASSERT_EQUAL(qt__quicktune_select(opt, 2, epochs, mean4, variance, seconds4, a), 1);
  QT_ASSERT_CLOSE(a[0], ei / 1e-4, 1e-9);
  QT_ASSERT_CLOSE(a[1], ei / 5e-5, 1e-9);
  /* NaN never wins (a certain prediction has EI 0, which does); with
   * nothing above -inf the first index is taken. */
  const double mean5[3] = {NAN, 0.55, 0.7};
  const double variance5[3] = {0.01, 0.0, 0.0};
  CU_ASSERT_EQUAL(qt__quicktune_select(opt, 3, epochs, mean5, variance5, NULL, a), 1);
  CU_ASSERT(isnan(a[0]));
  CU_ASSERT_EQUAL(a[1], 0.0);
  CU_ASSERT_EQUAL(a[2], 0.0);
  const double mean6[2] = {NAN, NAN};
  CU_ASSERT_EQUAL(qt__quicktune_select(opt, 2, epochs, mean6, variance, NULL, a), 0);
  qt_optimizer_free(opt);
  fixture_free(&f);
}

/* ------------------------------------------------------------------------- */
/* The refit schedule                                                         */
/* ------------------------------------------------------------------------- */

static void expect_training(qt_optimizer_t *opt, long trainings, int restarted, int steps,
                            size_t rows) {
  qt__quicktune_info info;
  qt__quicktune_get_info(opt, &info);
  if (info.trainings != trainings || info.last_restarted != restarted ||
      info.last_steps != steps || info.last_rows != rows)
    fprintf(stderr, "training %ld: restarted %d steps %d rows %zu; expected %ld %d %d %zu\n",
            info.trainings, info.last_restarted, info.last_steps, info.last_rows, trainings,
            restarted, steps, rows);
  CU_ASSERT_EQUAL(info.trainings, trainings);
  CU_ASSERT_EQUAL(info.last_restarted, restarted);
  CU_ASSERT_EQUAL(info.last_steps, steps);
  CU_ASSERT_EQUAL(info.last_rows, rows);
}

/* specs §1.4: the first 10 trainings start over (restart_steps), later ones
 * refine (refine_steps); floor(1.2 * 50) = 60 consecutive observations
 * without a better score make the next training start over, once per
 * streak. With the default numbers (1000, 50) on the first trainings too. */
static void test_refit_schedule(void) {
  fixture f;
  fixture_init(&f, 40, 50);
  qt_optimizer_params p = short_params(NULL, 1);
  p.quicktune.restart_steps = 7;
  p.quicktune.refine_steps = 2;
  qt_optimizer_t *opt = create("quicktune-MC", &f.pool, &p);
  qt__quicktune_info info;
  qt__quicktune_get_info(opt, &info);
  CU_ASSERT_EQUAL(info.patience, 60);
  CU_ASSERT_EQUAL(info.trainings, 0);
  CU_ASSERT_EQUAL(info.restart_pending, 1);

  /* 12 improving observations of candidate 0. */
  size_t rows = 0;
  for (long e = 1; e <= 12; e++) {
    observe(opt, 0, e, QT_OBS_STATUS_OK, 0.01 * (double)e);
    rows++;
    expect_training(opt, e, e <= 10, e <= 10 ? 7 : 2, rows);
  }
  /* 59 observations that do not improve (0.12 is the best): refinements. */
  long trainings = 12;
  for (int k = 0; k < 59; k++) {
    size_t c = 1 + (size_t)k / 2;
    long e = 1 + k % 2;
    observe(opt, c, e, QT_OBS_STATUS_OK, 0.05);
    rows++;
    expect_training(opt, ++trainings, 0, 2, rows);
  }
  qt__quicktune_get_info(opt, &info);
  CU_ASSERT_EQUAL(info.no_improvement, 59);
  /* The 60th (equal to the best is no improvement) starts over; the 61st
   * refines again (Quick-Tune tests ==). */
  observe(opt, 30, 2, QT_OBS_STATUS_OK, 0.12);
  expect_training(opt, ++trainings, 1, 7, ++rows);
  observe(opt, 31, 1, QT_OBS_STATUS_OK, 0.05);
  expect_training(opt, ++trainings, 0, 2, ++rows);
  qt__quicktune_get_info(opt, &info);
  CU_ASSERT_EQUAL(info.restarts, 11);
  CU_ASSERT_EQUAL(info.no_improvement, 61);
  /* A better score resets the streak; ended candidates train nothing. */
  observe(opt, 32, 1, QT_OBS_STATUS_OK, 0.5);
  expect_training(opt, ++trainings, 0, 2, ++rows);
  qt__quicktune_get_info(opt, &info);
  CU_ASSERT_EQUAL(info.no_improvement, 0);
  observe(opt, 32, 2, QT_OBS_STATUS_DIVERGED, NAN);
  observe(opt, 33, 1, QT_OBS_STATUS_EXHAUSTED, NAN);
  expect_training(opt, trainings, 0, 2, rows);
  qt_optimizer_free(opt);

  /* The default schedule: 1000 steps at the start, then 50. */
  p.quicktune = qt_quicktune_default_params();
  opt = create("quicktune-MC", &f.pool, &p);
  for (long e = 1; e <= 11; e++) observe(opt, 0, e, QT_OBS_STATUS_OK, 0.01 * (double)e);
  qt__quicktune_get_info(opt, &info);
  CU_ASSERT_EQUAL(info.trainings, 11);
  CU_ASSERT_EQUAL(info.restarts, 10);
  CU_ASSERT_EQUAL(info.last_steps, 50);
  CU_ASSERT_EQUAL(info.last_restarted, 0);
  qt_optimizer_free(opt);
  fixture_free(&f);
}

/* A numerical failure restores the parameters from before the training and
 * makes the next training start over; it is not an error of the search. An
 * absurd learning rate makes the first Adam step blow the network up. */
static void test_numerical_failure_restarts(void) {
  fixture f;
  fixture_init(&f, 8, 10);
  qt_optimizer_params p = short_params(NULL, 2);
  p.quicktune.initial_restarts = 1;
  qt_optimizer_t *opt = create("quicktune-MC", &f.pool, &p);
  observe(opt, 0, 1, QT_OBS_STATUS_OK, 0.3);
  observe(opt, 0, 2, QT_OBS_STATUS_OK, 0.4);
  observe(opt, 1, 1, QT_OBS_STATUS_OK, 0.2);
  qt__quicktune_info info;
  qt__quicktune_get_info(opt, &info);
  CU_ASSERT_EQUAL(info.failures, 0);
  CU_ASSERT_EQUAL(info.restart_pending, 0);
  qt_optimizer_free(opt);

  p.quicktune.learning_rate = 1e300;
  opt = create("quicktune-MC", &f.pool, &p);
  observe(opt, 0, 1, QT_OBS_STATUS_OK, 0.3); /* one row: no step */
  observe(opt, 0, 2, QT_OBS_STATUS_OK, 0.4); /* the first step blows up */
  qt__quicktune_get_info(opt, &info);
  CU_ASSERT_EQUAL(info.failures, 1);
  CU_ASSERT_EQUAL(info.restart_pending, 1);
  /* Restored to the state before that training (the initial one), and the
   * search goes on. */
  CU_ASSERT(memcmp(info.current, info.initial, info.param_count * sizeof *info.current) == 0);
  qt_suggestion s;
  CU_ASSERT_EQUAL(suggest(opt, &s), QT_SUGGEST_STATUS_OK);
  qt_optimizer_free(opt);
  fixture_free(&f);
}

/* ------------------------------------------------------------------------- */
/* Ablations                                                                  */
/* ------------------------------------------------------------------------- */

/* Each name changes exactly its flags: meta (restart state and learning
 * rate) and cost (the cost predictor). */
static void test_ablation_flags(void) {
  fixture f;
  fixture_init(&f, 8, 10);
  qt_surrogate_t *surrogate = fixture_surrogate(&f, 11);
  size_t count = 0;
  const double *trained = qt_surrogate_dkl_params(surrogate, &count);
  static const struct {
    const char *name;
    int meta, cost;
    double lr;
  } cases[] = {{"quicktune", 1, 1, 1e-4},
               {"quicktune-M", 0, 1, 1e-3},
               {"quicktune-C", 1, 0, 1e-4},
               {"quicktune-MC", 0, 0, 1e-3}};
  double *fresh = NULL;
  for (size_t k = 0; k < COUNT_OF(cases); k++) {
    qt_optimizer_params p = short_params(surrogate, 5);
    qt_optimizer_t *opt = create(cases[k].name, &f.pool, &p);
    CU_ASSERT_STRING_EQUAL(qt_optimizer_name(opt), cases[k].name);
    qt__quicktune_info info;
    qt__quicktune_get_info(opt, &info);
    CU_ASSERT_EQUAL(info.meta, cases[k].meta);
    CU_ASSERT_EQUAL(info.cost_aware, cases[k].cost);
    QT_ASSERT_CLOSE(info.learning_rate, cases[k].lr, 0.0);
    CU_ASSERT_EQUAL_FATAL(info.param_count, count);
    int same = memcmp(info.initial, trained, count * sizeof *trained) == 0;
    CU_ASSERT_EQUAL(same, cases[k].meta);
    /* Without meta-training the restart state is the same fresh draw for
     * the same seed, whatever the cost flag. */
    if (!cases[k].meta) {
      if (!fresh) {
        fresh = malloc(count * sizeof *fresh);
        CU_ASSERT_PTR_NOT_NULL_FATAL(fresh);
        memcpy(fresh, info.initial, count * sizeof *fresh);
      } else {
        CU_ASSERT(memcmp(fresh, info.initial, count * sizeof *fresh) == 0);
      }
    }
    qt_optimizer_free(opt);
  }
  free(fresh);

  /* Only quicktune-MC runs without a surrogate; the others say how to get one. */
  for (size_t k = 0; k < COUNT_OF(cases); k++) {
    qt_optimizer_params p = short_params(NULL, 5);
    qt_optimizer_t *opt = NULL;
    qt_err err;
    qt_err_clear(&err);
    int rc = qt_optimizer_create(cases[k].name, &f.pool, &p, &opt, &err);
    if (cases[k].meta || cases[k].cost) {
      CU_ASSERT_EQUAL(rc, QT_EINVAL);
      CU_ASSERT_PTR_NULL(opt);
      CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "qtune meta train"));
    } else {
      CU_ASSERT_EQUAL(rc, 0);
    }
    qt_optimizer_free(opt);
  }
  CU_ASSERT_EQUAL(qt_optimizer_uses_surrogate("quicktune"), 1);
  CU_ASSERT_EQUAL(qt_optimizer_uses_surrogate("quicktune-M"), 1);
  CU_ASSERT_EQUAL(qt_optimizer_uses_surrogate("quicktune-C"), 1);
  CU_ASSERT_EQUAL(qt_optimizer_uses_surrogate("quicktune-MC"), 0);
  CU_ASSERT_EQUAL(qt_optimizer_uses_surrogate("asha"), 0);

  /* A surrogate of another space is refused, naming the problem. */
  fixture other;
  fixture_init(&other, 8, 20); /* another fidelity maximum */
  qt_optimizer_params p = short_params(surrogate, 5);
  qt_optimizer_t *opt = NULL;
  qt_err err;
  qt_err_clear(&err);
  CU_ASSERT_NOT_EQUAL(qt_optimizer_create("quicktune", &other.pool, &p, &opt, &err), 0);
  CU_ASSERT_PTR_NULL(opt);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "quicktune"));
  fixture_free(&other);
  qt_surrogate_free(surrogate);
  fixture_free(&f);
}

/* ------------------------------------------------------------------------- */
/* The seam                                                                   */
/* ------------------------------------------------------------------------- */

/* One random candidate at epoch 1, then one epoch at a time; pending
 * candidates are never suggested twice, ended ones never again; WAIT while
 * only pending ones remain, DONE when nothing is left. */
static void test_seam_pending_and_ended(void) {
  fixture f;
  fixture_init(&f, 4, 3);
  qt_surrogate_t *surrogate = fixture_surrogate(&f, 3);
  const char *names[] = {"quicktune", "quicktune-M", "quicktune-C", "quicktune-MC"};
  for (size_t k = 0; k < COUNT_OF(names); k++) {
    qt_optimizer_params p = short_params(surrogate, 9);
    qt_optimizer_t *opt = create(names[k], &f.pool, &p);
    /* The initial design is the seeded permutation's first candidate, as
     * for random search with the same seed. */
    qt_optimizer_t *random = create("random", &f.pool, &p);
    qt_suggestion s[4], r;
    CU_ASSERT_EQUAL(suggest(random, &r), QT_SUGGEST_STATUS_OK);
    CU_ASSERT_EQUAL(suggest(opt, &s[0]), QT_SUGGEST_STATUS_OK);
    CU_ASSERT_EQUAL(s[0].candidate, r.candidate);
    CU_ASSERT_EQUAL(s[0].epoch, 1);
    qt_optimizer_free(random);
    /* Four workers: all four candidates go out at epoch 1, then WAIT. */
    int used[4] = {0, 0, 0, 0};
    used[s[0].candidate] = 1;
    for (int i = 1; i < 4; i++) {
      CU_ASSERT_EQUAL(suggest(opt, &s[i]), QT_SUGGEST_STATUS_OK);
      CU_ASSERT_EQUAL(s[i].epoch, 1);
      CU_ASSERT(!used[s[i].candidate]);
      used[s[i].candidate] = 1;
    }
    qt_suggestion w;
    CU_ASSERT_EQUAL(suggest(opt, &w), QT_SUGGEST_STATUS_WAIT);
    /* One scores, one diverges: only the scored one can go on. */
    observe(opt, s[0].candidate, 1, QT_OBS_STATUS_OK, 0.4);
    observe(opt, s[1].candidate, 1, QT_OBS_STATUS_DIVERGED, NAN);
    CU_ASSERT_EQUAL(suggest(opt, &w), QT_SUGGEST_STATUS_OK);
    CU_ASSERT_EQUAL(w.candidate, s[0].candidate);
    CU_ASSERT_EQUAL(w.epoch, 2);
    CU_ASSERT_EQUAL(suggest(opt, &w), QT_SUGGEST_STATUS_WAIT);
    /* Everything else finishes; candidate s[0] runs to max_epochs. */
    observe(opt, s[0].candidate, 2, QT_OBS_STATUS_OK, 0.5);
    observe(opt, s[2].candidate, 1, QT_OBS_STATUS_OK, 0.1);
    observe(opt, s[3].candidate, 1, QT_OBS_STATUS_EXHAUSTED, NAN);
    int guard = 0;
    while (suggest(opt, &w) == QT_SUGGEST_STATUS_OK && guard++ < 10) {
      CU_ASSERT(w.candidate == s[0].candidate || w.candidate == s[2].candidate);
      observe(opt, w.candidate, w.epoch, QT_OBS_STATUS_OK, 0.3);
    }
    CU_ASSERT_EQUAL(suggest(opt, &w), QT_SUGGEST_STATUS_DONE);
    CU_ASSERT(guard <= 3); /* 1 more epoch of s[0] and 2 of s[2] */
    qt_optimizer_free(opt);
  }
  qt_surrogate_free(surrogate);
  fixture_free(&f);
}

/* The row cap keeps each candidate's latest epoch first, then the most
 * recent rows, and never more than the cap. */
static void test_row_cap(void) {
  fixture f;
  fixture_init(&f, 10, 20);
  qt_optimizer_params p = short_params(NULL, 4);
  p.quicktune.max_train_rows = 6;
  qt_optimizer_t *opt = create("quicktune-MC", &f.pool, &p);
  size_t rows = 0;
  for (size_t c = 0; c < 3; c++)
    for (long e = 1; e <= 3; e++) {
      observe(opt, c, e, QT_OBS_STATUS_OK, 0.1 * (double)e);
      rows++;
      qt__quicktune_info info;
      qt__quicktune_get_info(opt, &info);
      CU_ASSERT_EQUAL(info.last_rows, rows < 6 ? rows : 6);
    }
  qt_optimizer_free(opt);
  fixture_free(&f);
}

/* ------------------------------------------------------------------------- */
/* Runs on replayed curves                                                    */
/* ------------------------------------------------------------------------- */

static int same_trajectory(const qt_bench_trajectory *a, const qt_bench_trajectory *b) {
  if (a->count != b->count) return 0;
  for (size_t i = 0; i < a->count; i++)
    if (a->points[i].candidate != b->points[i].candidate || a->points[i].epoch != b->points[i].epoch)
      return 0;
  return 1;
}

static void test_same_seed_same_suggestions(void) {
  qt_metadataset_t *md = synthetic_md(2, 20, 8, 3);
  qt_bench_params p = qt_bench_default_params();
  p.budget = 2500.0;
  p.charge_overhead = 0;
  p.optimizer.quicktune.restart_steps = 20;
  p.optimizer.quicktune.refine_steps = 5;
  qt_bench_trajectory a, b, c;
  qt_err err;
  qt_err_clear(&err);
  p.optimizer.seed = 3;
  CU_ASSERT_EQUAL_FATAL(qt_bench_run(md, 0, "quicktune-MC", &p, &a, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_bench_run(md, 0, "quicktune-MC", &p, &b, &err), 0);
  p.optimizer.seed = 4;
  CU_ASSERT_EQUAL_FATAL(qt_bench_run(md, 0, "quicktune-MC", &p, &c, &err), 0);
  CU_ASSERT(a.count > 10);
  CU_ASSERT(same_trajectory(&a, &b));
  CU_ASSERT(!same_trajectory(&a, &c));
  qt_bench_trajectory_free(&a);
  qt_bench_trajectory_free(&b);
  qt_bench_trajectory_free(&c);
  qt_metadataset_free(md);
}

/* Mean normalized regret over the log grid of the budget (the area under
 * the regret curve, as the plots show it). */
static double mean_regret(const qt_bench_trajectory *t) {
  double sum = 0.0;
  const int points = 50;
  for (int g = 0; g < points; g++)
    sum += qt_bench_regret_at(t, t->budget * pow(10.0, -2.0 + 2.0 * g / (points - 1.0)));
  return sum / points;
}

/* End to end with the real schedule: a surrogate meta-trained on three
 * synthetic datasets guides quicktune on a fourth it never saw; over five
 * seeds its mean regret beats random search's (which trains each
 * configuration to its last epoch, so it sees few within the budget). */
static void test_end_to_end_beats_random(void) {
  qt_metadataset_t *md = synthetic_md(4, 40, 12, 21);
  qt_metatrain_params mp = qt_metatrain_default_params();
  mp.iterations = 2000; /* 400 do not move the held-out MSE; 2000 halve it */
  mp.validation_every = 100;
  mp.validation_batches = 10;
  mp.seed = 1;
  const char *held_out[] = {"synthetic-0"};
  const qt_md_dataset *d0 = qt_metadataset_dataset(md, 0);
  held_out[0] = d0->name;
  mp.exclude = held_out;
  mp.exclude_count = 1;
  qt_surrogate_t *surrogate = NULL;
  qt_metatrain_report report;
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_metatrain(md, &mp, &surrogate, &report, &err);
  if (rc != 0) fprintf(stderr, "metatrain: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT(report.held_out_mse < report.untrained_held_out_mse);

  qt_bench_params p = qt_bench_default_params();
  p.budget = 4000.0;
  p.charge_overhead = 0;
  p.optimizer.surrogate = surrogate;
  const char *names[] = {"random", "quicktune"};
  double mean[2] = {0.0, 0.0}, final[2] = {0.0, 0.0};
  const int seeds = 5;
  for (int o = 0; o < 2; o++) {
    for (int seed = 0; seed < seeds; seed++) {
      qt_bench_trajectory t;
      p.optimizer.seed = (uint64_t)seed;
      rc = qt_bench_run(md, 0, names[o], &p, &t, &err);
      if (rc != 0) fprintf(stderr, "%s: %s\n", names[o], qt_err_message(&err));
      CU_ASSERT_EQUAL_FATAL(rc, 0);
      mean[o] += mean_regret(&t) / seeds;
      final[o] += qt_bench_regret_at(&t, p.budget) / seeds;
      qt_bench_trajectory_free(&t);
    }
  }
  fprintf(stderr, "\n  end to end (mean regret over the log grid / at the budget): random %.3f / "
                  "%.3f, quicktune %.3f / %.3f\n",
          mean[0], final[0], mean[1], final[1]);
  CU_ASSERT(mean[1] < mean[0]);
  CU_ASSERT(final[1] <= final[0]);
  qt_surrogate_free(surrogate);
  qt_metadataset_free(md);
}

/* ------------------------------------------------------------------------- */
/* The fold protocol                                                          */
/* ------------------------------------------------------------------------- */

static void test_fold_assignment(void) {
  qt_metadataset_t *md = synthetic_md(7, 2, 2, 0);
  size_t fold_of[7], again[7], count[3] = {0, 0, 0};
  qt_err err;
  qt_err_clear(&err);
  CU_ASSERT_EQUAL_FATAL(qt_bench_folds_assign(md, 3, 42, fold_of, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_bench_folds_assign(md, 3, 42, again, &err), 0);
  for (size_t d = 0; d < 7; d++) {
    CU_ASSERT_FATAL(fold_of[d] < 3);
    count[fold_of[d]]++;
    CU_ASSERT_EQUAL(fold_of[d], again[d]);
  }
  /* Dealt round-robin: sizes 3, 2, 2. */
  CU_ASSERT_EQUAL(count[0], 3);
  CU_ASSERT_EQUAL(count[1], 2);
  CU_ASSERT_EQUAL(count[2], 2);
  CU_ASSERT_EQUAL(qt_bench_folds_assign(md, 1, 42, fold_of, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_bench_folds_assign(md, 8, 42, fold_of, &err), QT_EINVAL);
  qt_metadataset_free(md);
}

/* Every fold's surrogate holds out exactly its fold and validates on the
 * next; the suite runs each dataset with the surrogate that never saw it. */
static void test_fold_protocol(void) {
  qt_metadataset_t *md = synthetic_md(6, 8, 4, 5);
  char dir[] = "/tmp/qt-test-folds-XXXXXX";
  CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
  qt_bench_suite_params params = qt_bench_suite_default_params();
  const char *optimizers[] = {"random", "quicktune"};
  size_t datasets[6] = {0, 1, 2, 3, 4, 5};
  uint64_t seeds[1] = {0};
  params.optimizers = optimizers;
  params.optimizer_count = 2;
  params.datasets = datasets;
  params.dataset_count = 6;
  params.seeds = seeds;
  params.seed_count = 1;
  params.run.budget = 500.0;
  params.run.charge_overhead = 0;
  params.run.optimizer.quicktune.restart_steps = 5;
  params.run.optimizer.quicktune.refine_steps = 2;
  params.threads = 2;
  params.out_dir = dir;
  qt_bench_folds_params folds = qt_bench_folds_default_params();
  folds.folds = 3;
  folds.metatrain.iterations = 20;
  folds.metatrain.validation_every = 10;
  folds.metatrain.validation_batches = 2;
  qt_bench_summary summaries[2];
  qt_bench_fold_report reports[3];
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_bench_suite_run_folds(md, &params, &folds, summaries, reports, &err);
  if (rc != 0) fprintf(stderr, "folds: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  size_t fold_of[6];
  CU_ASSERT_EQUAL_FATAL(qt_bench_folds_assign(md, 3, 42, fold_of, &err), 0);
  for (size_t f = 0; f < 3; f++) {
    CU_ASSERT_EQUAL(reports[f].test_datasets, 2);
    CU_ASSERT_EQUAL(reports[f].report.held_out_datasets, 2);
    CU_ASSERT_EQUAL(reports[f].report.validation_datasets, 2);
    CU_ASSERT_EQUAL(reports[f].report.train_datasets, 2);
    /* The saved surrogate names its held-out datasets: exactly fold f. */
    char path[512];
    snprintf(path, sizeof path, "%s/surrogates/fold%zu.qts", dir, f);
    qt_surrogate_t *s = NULL;
    CU_ASSERT_EQUAL_FATAL(qt_surrogate_load(path, qt_metadataset_space(md), &s, &err), 0);
    const qt_surrogate_info *info = qt_surrogate_get_info(s);
    CU_ASSERT_EQUAL(info->excluded_count, 2);
    for (size_t k = 0; k < info->excluded_count; k++) {
      size_t d;
      CU_ASSERT_EQUAL_FATAL(qt_metadataset_find_dataset(md, info->excluded_datasets[k], &d), 0);
      CU_ASSERT_EQUAL(fold_of[d], f);
    }
    for (size_t k = 0; k < info->train_count; k++) {
      size_t d;
      CU_ASSERT_EQUAL_FATAL(qt_metadataset_find_dataset(md, info->train_datasets[k], &d), 0);
      CU_ASSERT(fold_of[d] != f && fold_of[d] != (f + 1) % 3);
    }
    for (size_t k = 0; k < info->validation_count; k++) {
      size_t d;
      CU_ASSERT_EQUAL_FATAL(qt_metadataset_find_dataset(md, info->validation_datasets[k], &d), 0);
      CU_ASSERT_EQUAL(fold_of[d], (f + 1) % 3);
    }
    qt_surrogate_free(s);
  }
  CU_ASSERT(summaries[1].epochs > 0);
  char command[600];
  snprintf(command, sizeof command,
           "test -s %s/folds.csv && test -s %s/metatrain.csv && test -s %s/summary.csv && "
           "rm -rf %s",
           dir, dir, dir, dir);
  CU_ASSERT_EQUAL(system(command), 0);
  qt_metadataset_free(md);
}

static const qt_test_case cases[] = {
    {"EI matches hand values", test_ei_hand_values},
    {"per-fidelity incumbent", test_per_fidelity_incumbent},
    {"selection: ties and costs", test_selection_ties_and_costs},
    {"refit schedule", test_refit_schedule},
    {"numerical failure restarts", test_numerical_failure_restarts},
    {"ablation flags", test_ablation_flags},
    {"seam: pending and ended candidates", test_seam_pending_and_ended},
    {"row cap", test_row_cap},
    {"same seed, same suggestions", test_same_seed_same_suggestions},
    {"fold assignment", test_fold_assignment},
    {"fold protocol", test_fold_protocol},
    {"end to end: beats random search", test_end_to_end_beats_random},
    {NULL, NULL}};

QT_TEST_MAIN("quicktune", cases)

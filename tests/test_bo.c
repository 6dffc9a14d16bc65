/*
 * test_bo.c - observations, candidate pools, objectives and the ask/tell
 * optimizers of bo/ (qt_observation.c, qt_pool.c, qt_objective.c,
 * qt_optimizer.c, qt_opt_*.c).
 *
 * Most tests drive optimizers with a synthetic objective over a 1-D pool
 * (one float hyperparameter x in [0, 1]): candidate i has a learning curve
 * q_i * (1 - 0.5 exp(-e / 3)), the same shape for every candidate, so the
 * ranking at any epoch is the ranking of the qualities q_i, and a curve may
 * be cut short (EXHAUSTED after `length` epochs) or diverge at an epoch.
 * Expected schedules (Hyperband's table, SH's promotion counts, ASHA's
 * decisions) were worked out by hand from the papers' rules, not copied from
 * the library's output.
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
#define MAX_POOL 512
#define MAX_STEPS 4096

/* ------------------------------------------------------------------------- */
/* A 1-D pool                                                                 */
/* ------------------------------------------------------------------------- */

typedef struct fixture {
  qt_space_t *space;
  qt_config configs[MAX_POOL];
  size_t count;
  qt_pool pool;
} fixture;

static qt_space_t *load_space(long max_epochs) {
  char text[512];
  snprintf(text, sizeof text,
           "version: 1\n"
           "name: line\n"
           "fidelity: {name: epochs, min: 1, max: %ld}\n"
           "hyperparameters:\n"
           "  x: {type: float, range: [0.0, 1.0]}\n",
           max_epochs);
  qt_space_t *space = NULL;
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_space_load_string(text, strlen(text), "line.yaml", &space, &err);
  if (rc != 0) fprintf(stderr, "space: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  return space;
}

/* count candidates at x = (i + 0.5) / count, fidelity 1..max_epochs. */
static void fixture_init(fixture *f, size_t count, long max_epochs) {
  CU_ASSERT_FATAL(count <= MAX_POOL);
  memset(f, 0, sizeof *f);
  f->space = load_space(max_epochs);
  f->count = count;
  qt_err err;
  qt_err_clear(&err);
  for (size_t i = 0; i < count; i++) {
    CU_ASSERT_EQUAL_FATAL(qt_config_init(&f->configs[i], f->space, &err), 0);
    CU_ASSERT_EQUAL_FATAL(qt_config_set_number(&f->configs[i], 0, ((double)i + 0.5) / (double)count, &err), 0);
  }
  int rc = qt_pool_init(&f->pool, f->space, f->configs, count, &err);
  if (rc != 0) fprintf(stderr, "pool: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
}

static void fixture_free(fixture *f) {
  qt_pool_free(&f->pool);
  for (size_t i = 0; i < f->count; i++) qt_config_free(&f->configs[i]);
  qt_space_free(f->space);
}

/* The seam tests below run every baseline; the Quick-Tune optimizers need a
 * surrogate and train a network per observation, so test_quicktune.c runs
 * the same checks on them with short schedules. */
static int is_baseline(const char *name) { return strncmp(name, "quicktune", 9) != 0; }

static double fixture_x(const fixture *f, size_t candidate) {
  return f->pool.encoded[candidate * f->pool.dim];
}

/* ------------------------------------------------------------------------- */
/* A synthetic objective                                                      */
/* ------------------------------------------------------------------------- */

typedef struct synth_objective {
  qt_objective_t base;
  double quality[MAX_POOL];  /* final level of each curve, in [0, 1] */
  long length[MAX_POOL];     /* recorded epochs; 0: as many as asked */
  long diverge_at[MAX_POOL]; /* the epoch that diverges; 0: never */
  long steps;                /* epochs stepped, for the tests */
} synth_objective;

static double synth_score(const synth_objective *s, size_t c, long epoch) {
  return s->quality[c] * (1.0 - 0.5 * exp(-(double)epoch / 3.0));
}

static int synth_step(qt_objective_t *objective, size_t candidate, long epoch, qt_observation *out,
                      qt_err *err) {
  synth_objective *s = (synth_objective *)objective;
  (void)err;
  s->steps++;
  out->train_loss = NAN;
  out->val_loss = NAN;
  out->cost = 1.0;
  out->score = NAN;
  if (s->length[candidate] > 0 && epoch > s->length[candidate]) {
    out->status = QT_OBS_STATUS_EXHAUSTED;
    out->cost = 0.0;
  } else if (s->diverge_at[candidate] > 0 && epoch >= s->diverge_at[candidate]) {
    out->status = QT_OBS_STATUS_DIVERGED;
  } else {
    out->status = QT_OBS_STATUS_OK;
    out->score = synth_score(s, candidate, epoch);
  }
  return 0;
}

static void synth_free(qt_objective_t *objective) { (void)objective; }

static const qt_objective_vtable synth_vtable = {"synthetic", synth_step, synth_free};

static void synth_init(synth_objective *s) {
  memset(s, 0, sizeof *s);
  s->base.vtable = &synth_vtable;
}

/* ------------------------------------------------------------------------- */
/* Driving an optimizer with one worker                                      */
/* ------------------------------------------------------------------------- */

typedef struct step_record {
  size_t candidate;
  long epoch;
  int fresh; /* first suggestion of this candidate */
} step_record;

typedef struct drive_log {
  step_record steps[MAX_STEPS];
  size_t count;
  qt_suggest_status final_status;
  long last[MAX_POOL];   /* last epoch stepped per candidate */
  int ended[MAX_POOL];   /* the candidate ended (exhausted, diverged, failed) */
  int seen[MAX_POOL];    /* suggested at least once */
  int violations;        /* suggestions of ended candidates or of no later epoch */
} drive_log;

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

static void observe_ok(qt_optimizer_t *opt, size_t c, long epoch, double score) {
  qt_observation obs = {QT_OBS_STATUS_OK, score, 1.0, NAN, NAN};
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_optimizer_observe(opt, c, epoch, &obs, &err);
  if (rc != 0) fprintf(stderr, "observe: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
}

/* Steps the suggestion epoch by epoch, telling the optimizer each result;
 * stops at the first non-OK epoch. */
static void advance(qt_optimizer_t *opt, synth_objective *obj, drive_log *log,
                    const qt_suggestion *s) {
  qt_err err;
  qt_err_clear(&err);
  for (long e = log->last[s->candidate] + 1; e <= s->epoch; e++) {
    qt_observation obs;
    CU_ASSERT_EQUAL_FATAL(qt_objective_step(&obj->base, s->candidate, e, &obs, &err), 0);
    int rc = qt_optimizer_observe(opt, s->candidate, e, &obs, &err);
    if (rc != 0) fprintf(stderr, "observe: %s\n", qt_err_message(&err));
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    if (obs.status != QT_OBS_STATUS_OK) {
      log->ended[s->candidate] = 1;
      break;
    }
    log->last[s->candidate] = e;
  }
}

/* Runs up to max_steps suggestions (or until DONE/WAIT). When fail_every is
 * > 0, every fail_every-th fresh suggestion is reported as a worker failure
 * instead of being stepped. */
static void drive(qt_optimizer_t *opt, synth_objective *obj, drive_log *log, size_t max_steps,
                  size_t fail_every) {
  memset(log, 0, sizeof *log);
  qt_err err;
  qt_err_clear(&err);
  size_t fresh_count = 0;
  log->final_status = QT_SUGGEST_STATUS_OK;
  while (log->count < max_steps && log->count < MAX_STEPS) {
    qt_suggestion s;
    qt_suggest_status status;
    CU_ASSERT_EQUAL_FATAL(qt_optimizer_suggest(opt, &s, &status, &err), 0);
    if (status != QT_SUGGEST_STATUS_OK) {
      log->final_status = status;
      return;
    }
    CU_ASSERT_FATAL(s.candidate < MAX_POOL);
    if (log->ended[s.candidate] || s.epoch <= log->last[s.candidate]) log->violations++;
    step_record *r = &log->steps[log->count++];
    r->candidate = s.candidate;
    r->epoch = s.epoch;
    r->fresh = !log->seen[s.candidate];
    log->seen[s.candidate] = 1;
    if (r->fresh && fail_every > 0 && ++fresh_count % fail_every == 0) {
      CU_ASSERT_EQUAL_FATAL(qt_optimizer_fail(opt, s.candidate, "test: worker lost", &err), 0);
      log->ended[s.candidate] = 1;
      continue;
    }
    advance(opt, obj, log, &s);
  }
}

static qt_suggestion suggest_ok(qt_optimizer_t *opt) {
  qt_suggestion s = {0, 0};
  qt_suggest_status status;
  qt_err err;
  qt_err_clear(&err);
  CU_ASSERT_EQUAL_FATAL(qt_optimizer_suggest(opt, &s, &status, &err), 0);
  CU_ASSERT_EQUAL_FATAL(status, QT_SUGGEST_STATUS_OK);
  return s;
}

static qt_suggest_status suggest_status(qt_optimizer_t *opt) {
  qt_suggestion s;
  qt_suggest_status status;
  qt_err err;
  qt_err_clear(&err);
  CU_ASSERT_EQUAL_FATAL(qt_optimizer_suggest(opt, &s, &status, &err), 0);
  return status;
}

/* Distinct qualities: a fixed permutation of 0.05 .. 0.95 over the pool, so
 * that the best candidates are not the first ones drawn. */
static void spread_qualities(synth_objective *obj, size_t count) {
  for (size_t i = 0; i < count; i++) {
    size_t rank = (i * 37 + 11) % count; /* 37 is coprime with the pool sizes used */
    obj->quality[i] = 0.05 + 0.9 * (double)rank / (double)count;
  }
}

/* ------------------------------------------------------------------------- */
/* Observations and pools                                                    */
/* ------------------------------------------------------------------------- */

static void test_status_names(void) {
  CU_ASSERT_STRING_EQUAL(qt_obs_status_name(QT_OBS_STATUS_OK), "ok");
  CU_ASSERT_STRING_EQUAL(qt_obs_status_name(QT_OBS_STATUS_DIVERGED), "diverged");
  CU_ASSERT_STRING_EQUAL(qt_obs_status_name(QT_OBS_STATUS_FAILED), "failed");
  CU_ASSERT_STRING_EQUAL(qt_obs_status_name(QT_OBS_STATUS_EXHAUSTED), "exhausted");
  CU_ASSERT_STRING_EQUAL(qt_obs_status_name((qt_obs_status)42), "unknown");
}

static void test_pool_encodes_candidates(void) {
  fixture f;
  fixture_init(&f, 8, 27);
  CU_ASSERT_EQUAL(f.pool.count, 8);
  CU_ASSERT_EQUAL(f.pool.dim, 1);
  CU_ASSERT_EQUAL(f.pool.max_epochs, 27);
  CU_ASSERT_PTR_EQUAL(f.pool.configs, f.configs);
  for (size_t i = 0; i < 8; i++) QT_ASSERT_CLOSE(fixture_x(&f, i), (i + 0.5) / 8.0, 1e-12);

  /* A configuration of another space is refused. */
  qt_space_t *other = load_space(27);
  qt_config mixed[2];
  qt_err err;
  qt_err_clear(&err);
  mixed[0] = f.configs[0];
  CU_ASSERT_EQUAL_FATAL(qt_config_init(&mixed[1], other, &err), 0);
  CU_ASSERT_EQUAL(qt_config_set_number(&mixed[1], 0, 0.5, &err), 0);
  qt_pool bad;
  CU_ASSERT_EQUAL(qt_pool_init(&bad, f.space, mixed, 2, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_pool_init(&bad, f.space, f.configs, 0, &err), QT_EINVAL);
  qt_pool_free(&bad); /* zeroed by the failed init: a no-op */
  qt_pool_free(NULL);
  qt_config_free(&mixed[1]);
  qt_space_free(other);
  fixture_free(&f);
}

/* ------------------------------------------------------------------------- */
/* Registry and parameters                                                    */
/* ------------------------------------------------------------------------- */

static void test_registry(void) {
  static const char *expected[] = {"random",      "sh",          "hyperband",
                                   "asha",        "bohb",        "quicktune",
                                   "quicktune-M", "quicktune-C", "quicktune-MC"};
  const char *const *names = qt_optimizer_names();
  size_t n = 0;
  while (names[n]) n++;
  CU_ASSERT_EQUAL(n, COUNT_OF(expected));
  fixture f;
  fixture_init(&f, 10, 27);
  for (size_t i = 0; i < n && i < COUNT_OF(expected); i++) {
    CU_ASSERT_STRING_EQUAL(names[i], expected[i]);
    if (!is_baseline(names[i])) continue; /* test_quicktune.c */
    qt_optimizer_t *opt = create(names[i], &f.pool, NULL);
    CU_ASSERT_STRING_EQUAL(qt_optimizer_name(opt), expected[i]);
    qt_optimizer_free(opt);
  }
  qt_optimizer_free(NULL);

  qt_optimizer_t *opt = NULL;
  qt_err err;
  qt_err_clear(&err);
  CU_ASSERT_EQUAL(qt_optimizer_create("quicktune-x", &f.pool, NULL, &opt, &err), QT_ENOENT);
  CU_ASSERT_PTR_NULL(opt);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "quicktune-x"));
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "hyperband"));
  fixture_free(&f);
}

static void test_params_are_checked(void) {
  fixture f;
  fixture_init(&f, 10, 27);
  qt_optimizer_params defaults = qt_optimizer_default_params();
  CU_ASSERT_EQUAL(defaults.seed, 0);
  CU_ASSERT_EQUAL(defaults.min_epochs, 1);
  CU_ASSERT_EQUAL(defaults.max_epochs, 0);
  QT_ASSERT_CLOSE(defaults.eta, 3.0, 0.0);

  qt_optimizer_t *opt = NULL;
  qt_err err;
  qt_err_clear(&err);
  qt_optimizer_params p = defaults;
  p.max_epochs = 28; /* beyond the pool's fidelity */
  CU_ASSERT_EQUAL(qt_optimizer_create("sh", &f.pool, &p, &opt, &err), QT_EINVAL);
  p = defaults;
  p.min_epochs = 0;
  CU_ASSERT_EQUAL(qt_optimizer_create("asha", &f.pool, &p, &opt, &err), QT_EINVAL);
  p = defaults;
  p.min_epochs = 10;
  p.max_epochs = 9;
  CU_ASSERT_EQUAL(qt_optimizer_create("hyperband", &f.pool, &p, &opt, &err), QT_EINVAL);
  p = defaults;
  p.eta = 1.5;
  CU_ASSERT_EQUAL(qt_optimizer_create("bohb", &f.pool, &p, &opt, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_optimizer_create("asha", &f.pool, &p, &opt, &err), QT_EINVAL);
  /* Random search has no use for eta. */
  CU_ASSERT_EQUAL(qt_optimizer_create("random", &f.pool, &p, &opt, &err), 0);
  qt_optimizer_free(opt);
  fixture_free(&f);
}

static void test_observe_checks_input(void) {
  fixture f;
  fixture_init(&f, 4, 27);
  qt_optimizer_t *opt = create("random", &f.pool, NULL);
  qt_err err;
  qt_err_clear(&err);
  qt_observation ok = {QT_OBS_STATUS_OK, 0.5, 1.0, NAN, NAN};
  qt_observation nan_ok = {QT_OBS_STATUS_OK, NAN, 1.0, NAN, NAN};
  qt_observation exhausted = {QT_OBS_STATUS_EXHAUSTED, NAN, 0.0, NAN, NAN};
  CU_ASSERT_EQUAL(qt_optimizer_observe(opt, 4, 1, &ok, &err), QT_EINVAL);    /* not in the pool */
  CU_ASSERT_EQUAL(qt_optimizer_observe(opt, 0, 2, &ok, &err), QT_EINVAL);    /* skips epoch 1 */
  CU_ASSERT_EQUAL(qt_optimizer_observe(opt, 0, 1, &nan_ok, &err), QT_EINVAL); /* OK needs a score */
  CU_ASSERT_EQUAL(qt_optimizer_observe(opt, 0, 1, &ok, &err), 0);
  CU_ASSERT_EQUAL(qt_optimizer_observe(opt, 0, 1, &ok, &err), QT_EINVAL); /* epoch 1 again */
  CU_ASSERT_EQUAL(qt_optimizer_observe(opt, 0, 2, &exhausted, &err), 0);
  CU_ASSERT_EQUAL(qt_optimizer_observe(opt, 0, 2, &ok, &err), QT_EINVAL); /* after its end */
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "ended"));
  CU_ASSERT_EQUAL(qt_optimizer_fail(opt, 7, "x", &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_optimizer_fail(opt, 0, "again", &err), 0); /* already ended: no-op */
  /* Candidate 0 is never suggested: the other three come, then DONE. */
  for (int i = 0; i < 3; i++) {
    qt_suggestion s = suggest_ok(opt);
    CU_ASSERT_NOT_EQUAL(s.candidate, 0);
    CU_ASSERT_EQUAL(qt_optimizer_fail(opt, s.candidate, "test", &err), 0);
  }
  CU_ASSERT_EQUAL(suggest_status(opt), QT_SUGGEST_STATUS_DONE);
  qt_optimizer_free(opt);
  fixture_free(&f);
}

/* ------------------------------------------------------------------------- */
/* Schedules                                                                  */
/* ------------------------------------------------------------------------- */

/* Li et al. (2018), Table 1 for R = 27 (here r = 1), eta = 3. */
static void test_hyperband_table(void) {
  static const size_t n[4][4] = {{4}, {6, 2}, {12, 4, 1}, {27, 9, 3, 1}};
  static const long r[4][4] = {{27}, {9, 27}, {3, 9, 27}, {1, 3, 9, 27}};
  int s_max = qt__schedule_s_max(1, 27, 3.0);
  CU_ASSERT_EQUAL_FATAL(s_max, 3);
  for (int s = 0; s <= 3; s++) {
    for (int i = 0; i <= s; i++) {
      CU_ASSERT_EQUAL(qt__schedule_rung_size(3, s, 3.0, i), n[s][i]);
      CU_ASSERT_EQUAL(qt__schedule_rung_epoch(27, 3.0, 3, s, i), r[s][i]);
    }
  }
  CU_ASSERT_EQUAL(qt__schedule_bracket_n(3, 2, 3.0), 12); /* ceil(4/3 * 9) */
  CU_ASSERT_EQUAL(qt__schedule_bracket_n(4, 3, 3.0), 34); /* ceil(5/4 * 27) = ceil(33.75) */
  CU_ASSERT_EQUAL(qt__schedule_bracket_n(4, 1, 3.0), 8);  /* ceil(5/2 * 3) = ceil(7.5) */
  /* s_max at and around exact powers. */
  CU_ASSERT_EQUAL(qt__schedule_s_max(1, 81, 3.0), 4);
  CU_ASSERT_EQUAL(qt__schedule_s_max(1, 80, 3.0), 3);
  CU_ASSERT_EQUAL(qt__schedule_s_max(3, 27, 3.0), 2);
  CU_ASSERT_EQUAL(qt__schedule_s_max(5, 5, 3.0), 0);
  CU_ASSERT_EQUAL(qt__schedule_s_max(1, 8, 2.0), 3);
  /* R = 50 (Quick-Tune's curves): R * 3^-j rounded = 2, 6, 17, 50. */
  static const long ladder50[4] = {2, 6, 17, 50};
  for (int j = 0; j <= 3; j++) CU_ASSERT_EQUAL(qt__schedule_ladder_epoch(50, 3.0, 3, j), ladder50[j]);
  /* floor(n / eta) */
  CU_ASSERT_EQUAL(qt__schedule_promotions(8, 3.0), 2);
  CU_ASSERT_EQUAL(qt__schedule_promotions(9, 3.0), 3);
  CU_ASSERT_EQUAL(qt__schedule_promotions(2, 3.0), 0);
}

/* Consecutive suggestions grouped by (target epoch, fresh or promoted). */
typedef struct group {
  long epoch;
  int fresh;
  size_t count;
} group;

static size_t group_steps(const drive_log *log, group *groups, size_t max_groups) {
  size_t n = 0;
  for (size_t i = 0; i < log->count; i++) {
    const step_record *r = &log->steps[i];
    if (n > 0 && groups[n - 1].epoch == r->epoch && groups[n - 1].fresh == r->fresh) {
      groups[n - 1].count++;
    } else if (n < max_groups) {
      groups[n++] = (group){r->epoch, r->fresh, 1};
    } else {
      break;
    }
  }
  return n;
}

static void test_hyperband_brackets(void) {
  fixture f;
  fixture_init(&f, 200, 27);
  synth_objective obj;
  synth_init(&obj);
  spread_qualities(&obj, 200);
  qt_optimizer_t *opt = create("hyperband", &f.pool, NULL);
  static drive_log log;
  /* One cycle: 40 + 17 + 8 + 4 suggestions, then the next s = 3 bracket. */
  drive(opt, &obj, &log, 69 + 27, 0);
  CU_ASSERT_EQUAL(log.violations, 0);
  static const group expected[] = {
      {1, 1, 27}, {3, 0, 9}, {9, 0, 3}, {27, 0, 1}, /* s = 3 */
      {3, 1, 12}, {9, 0, 4}, {27, 0, 1},            /* s = 2 */
      {9, 1, 6},  {27, 0, 2},                       /* s = 1 */
      {27, 1, 4},                                   /* s = 0 */
      {1, 1, 27},                                   /* s = 3 again */
  };
  group groups[16];
  size_t n = group_steps(&log, groups, 16);
  CU_ASSERT_EQUAL_FATAL(n, COUNT_OF(expected));
  for (size_t i = 0; i < n; i++) {
    CU_ASSERT_EQUAL(groups[i].epoch, expected[i].epoch);
    CU_ASSERT_EQUAL(groups[i].fresh, expected[i].fresh);
    CU_ASSERT_EQUAL(groups[i].count, expected[i].count);
  }
  qt_optimizer_free(opt);
  fixture_free(&f);
}

/* 1 when the promoted candidates are exactly the `k` best (by quality) of
 * the rung's candidates. */
static int are_top(const synth_objective *obj, const size_t *rung, size_t n, const size_t *promoted,
                   size_t k) {
  for (size_t i = 0; i < k; i++) {
    size_t better = 0; /* rung members better than promoted[i] */
    for (size_t j = 0; j < n; j++)
      if (obj->quality[rung[j]] > obj->quality[promoted[i]]) better++;
    if (better >= k) return 0;
  }
  return 1;
}

static void check_sh_bracket(long min_epochs, long max_epochs, double eta, const size_t *sizes,
                             const long *epochs, size_t rungs) {
  fixture f;
  fixture_init(&f, 100, max_epochs);
  synth_objective obj;
  synth_init(&obj);
  spread_qualities(&obj, 100);
  qt_optimizer_params p = qt_optimizer_default_params();
  p.min_epochs = min_epochs;
  p.eta = eta;
  p.seed = 3;
  qt_optimizer_t *opt = create("sh", &f.pool, &p);
  size_t total = 0;
  for (size_t i = 0; i < rungs; i++) total += sizes[i];
  static drive_log log;
  drive(opt, &obj, &log, total + 1, 0);
  CU_ASSERT_EQUAL(log.violations, 0);
  CU_ASSERT_EQUAL_FATAL(log.count, total + 1);
  size_t at = 0, previous[MAX_POOL], current[MAX_POOL];
  for (size_t i = 0; i < rungs; i++) {
    for (size_t j = 0; j < sizes[i]; j++) {
      const step_record *r = &log.steps[at + j];
      CU_ASSERT_EQUAL(r->epoch, epochs[i]);
      CU_ASSERT_EQUAL(r->fresh, i == 0);
      current[j] = r->candidate;
    }
    if (i > 0) CU_ASSERT(are_top(&obj, previous, sizes[i - 1], current, sizes[i]));
    memcpy(previous, current, sizes[i] * sizeof *current);
    at += sizes[i];
  }
  /* The bracket is over: a new one starts with a fresh candidate. */
  CU_ASSERT_EQUAL(log.steps[total].epoch, epochs[0]);
  CU_ASSERT_EQUAL(log.steps[total].fresh, 1);
  qt_optimizer_free(opt);
  fixture_free(&f);
}

static void test_sh_promotions(void) {
  static const size_t sizes3[] = {27, 9, 3, 1};
  static const long epochs3[] = {1, 3, 9, 27};
  check_sh_bracket(1, 27, 3.0, sizes3, epochs3, 4);
  static const size_t sizes2[] = {8, 4, 2, 1};
  static const long epochs2[] = {1, 2, 4, 8};
  check_sh_bracket(1, 8, 2.0, sizes2, epochs2, 4);
  /* r = 3: s_max = 2, the bracket starts at 3 epochs. */
  static const size_t sizes_r3[] = {9, 3, 1};
  static const long epochs_r3[] = {3, 9, 27};
  check_sh_bracket(3, 27, 3.0, sizes_r3, epochs_r3, 3);
}

/* An EXHAUSTED candidate ranks by its last score and is not promoted; its
 * place is not handed to the next one. A DIVERGED one ranks last. */
static void test_sh_exhausted_rule(void) {
  fixture f;
  fixture_init(&f, 27, 27);
  synth_objective obj;
  synth_init(&obj);
  for (size_t i = 0; i < 27; i++) obj.quality[i] = 0.2 + 0.01 * (double)i; /* 26 is the best */
  obj.quality[5] = 1.0;  /* far ahead of the rest, but its run stops at epoch 2 */
  obj.length[5] = 2;
  obj.quality[7] = 0.99; /* second best at epoch 1, diverges at epoch 2 */
  obj.diverge_at[7] = 2;
  qt_optimizer_t *opt = create("sh", &f.pool, NULL);
  static drive_log log;
  drive(opt, &obj, &log, MAX_STEPS, 0);
  CU_ASSERT_EQUAL(log.violations, 0);
  CU_ASSERT_EQUAL(log.final_status, QT_SUGGEST_STATUS_DONE); /* one bracket used the pool */
  group groups[8];
  size_t n = group_steps(&log, groups, 8);
  /* Rung 1 (9 at epoch 3): 5 exhausts at 3, 7 diverges at 2. Rung 2: the top
   * 3 at epoch 3 are 5 (last score), 26, 25: 5 cannot advance, so two go on.
   * Rung 3: floor(3 / 3) = 1 of them. */
  CU_ASSERT_EQUAL_FATAL(n, 4);
  CU_ASSERT_EQUAL(groups[0].count, 27);
  CU_ASSERT_EQUAL(groups[1].count, 9);
  CU_ASSERT_EQUAL(groups[2].count, 2);
  CU_ASSERT_EQUAL(groups[2].epoch, 9);
  CU_ASSERT_EQUAL(groups[3].count, 1);
  CU_ASSERT_EQUAL(log.steps[27 + 9].candidate, 26);
  CU_ASSERT_EQUAL(log.steps[27 + 9 + 1].candidate, 25);
  CU_ASSERT_EQUAL(log.steps[27 + 9 + 2].candidate, 26);
  CU_ASSERT_EQUAL(log.steps[27 + 9 + 2].epoch, 27);
  CU_ASSERT(log.ended[5] && log.ended[7]);
  qt_optimizer_free(opt);
  fixture_free(&f);
}

/* The set of target epochs an optimizer uses on a 50-epoch pool. */
static void check_targets(const char *name, const long *expected, size_t n) {
  fixture f;
  fixture_init(&f, 120, 50);
  synth_objective obj;
  synth_init(&obj);
  spread_qualities(&obj, 120);
  qt_optimizer_t *opt = create(name, &f.pool, NULL);
  static drive_log log;
  drive(opt, &obj, &log, MAX_STEPS, 0);
  int used[51] = {0};
  for (size_t i = 0; i < log.count; i++) used[log.steps[i].epoch] = 1;
  size_t distinct = 0;
  for (long e = 1; e <= 50; e++) distinct += (size_t)used[e];
  CU_ASSERT_EQUAL(distinct, n);
  for (size_t i = 0; i < n; i++) CU_ASSERT(used[expected[i]]);
  qt_optimizer_free(opt);
  fixture_free(&f);
}

static void test_rungs_when_R_is_not_a_power(void) {
  /* R = 50, r = 1, eta = 3: Hyperband's ladder is 50 * 3^-j rounded; ASHA's
   * rungs are 3^k, plus 50 as the final rung. */
  static const long ladder[] = {2, 6, 17, 50};
  static const long asha[] = {1, 3, 9, 27, 50};
  check_targets("sh", ladder, 4);
  check_targets("hyperband", ladder, 4);
  check_targets("bohb", ladder, 4);
  check_targets("asha", asha, 5);
  static const long full[] = {50};
  check_targets("random", full, 1);
}

/* ------------------------------------------------------------------------- */
/* WAIT and DONE                                                              */
/* ------------------------------------------------------------------------- */

static void test_sh_waits_for_its_rung(void) {
  fixture f;
  fixture_init(&f, 30, 27);
  qt_optimizer_t *opt = create("sh", &f.pool, NULL);
  size_t rung[27];
  for (size_t i = 0; i < 27; i++) {
    qt_suggestion s = suggest_ok(opt);
    CU_ASSERT_EQUAL(s.epoch, 1);
    rung[i] = s.candidate;
  }
  /* 27 pending at rung 0: synchronous SH has nothing else to do. */
  CU_ASSERT_EQUAL(suggest_status(opt), QT_SUGGEST_STATUS_WAIT);
  for (size_t i = 0; i < 26; i++) observe_ok(opt, rung[i], 1, (double)i / 100.0);
  CU_ASSERT_EQUAL(suggest_status(opt), QT_SUGGEST_STATUS_WAIT);
  observe_ok(opt, rung[26], 1, 0.9);
  /* Complete: the best (rung[26]) is promoted first, then 25, 24, ... */
  qt_suggestion s = suggest_ok(opt);
  CU_ASSERT_EQUAL(s.candidate, rung[26]);
  CU_ASSERT_EQUAL(s.epoch, 3);
  s = suggest_ok(opt);
  CU_ASSERT_EQUAL(s.candidate, rung[25]);
  qt_optimizer_free(opt);
  fixture_free(&f);
}

static void test_done_when_pool_is_used(void) {
  /* Every optimizer over a pool of 5 ends with DONE, having tried all. */
  const char *const *names = qt_optimizer_names();
  for (size_t k = 0; names[k]; k++) {
    if (!is_baseline(names[k])) continue;
    fixture f;
    fixture_init(&f, 5, 27);
    synth_objective obj;
    synth_init(&obj);
    spread_qualities(&obj, 5);
    qt_optimizer_t *opt = create(names[k], &f.pool, NULL);
    static drive_log log;
    drive(opt, &obj, &log, MAX_STEPS, 0);
    CU_ASSERT_EQUAL(log.final_status, QT_SUGGEST_STATUS_DONE);
    CU_ASSERT_EQUAL(log.violations, 0);
    for (size_t i = 0; i < 5; i++) CU_ASSERT(log.seen[i]);
    /* DONE stays DONE. */
    CU_ASSERT_EQUAL(suggest_status(opt), QT_SUGGEST_STATUS_DONE);
    qt_optimizer_free(opt);
    fixture_free(&f);
  }
}

static void test_wait_with_pending_trials(void) {
  /* With every candidate pending, each optimizer waits; once they are
   * observed it goes on or is done. */
  const char *const *names = qt_optimizer_names();
  for (size_t k = 0; names[k]; k++) {
    if (!is_baseline(names[k])) continue;
    fixture f;
    fixture_init(&f, 3, 27);
    qt_optimizer_t *opt = create(names[k], &f.pool, NULL);
    qt_suggestion pending[3];
    size_t n = 0;
    for (;;) {
      qt_suggestion s;
      qt_suggest_status status;
      CU_ASSERT_EQUAL_FATAL(qt_optimizer_suggest(opt, &s, &status, NULL), 0);
      if (status != QT_SUGGEST_STATUS_OK) {
        CU_ASSERT_EQUAL(status, QT_SUGGEST_STATUS_WAIT);
        break;
      }
      CU_ASSERT_FATAL(n < 3);
      pending[n++] = s;
    }
    CU_ASSERT_EQUAL(n, 3); /* a new candidate is handed out while others are pending */
    for (size_t i = 0; i < n; i++) {
      for (long e = 1; e <= pending[i].epoch; e++)
        observe_ok(opt, pending[i].candidate, e, 0.1 * (double)(i + 1));
    }
    CU_ASSERT_NOT_EQUAL(suggest_status(opt), QT_SUGGEST_STATUS_WAIT);
    qt_optimizer_free(opt);
    fixture_free(&f);
  }
}

/* ------------------------------------------------------------------------- */
/* ASHA                                                                       */
/* ------------------------------------------------------------------------- */

static size_t expect_fresh(qt_optimizer_t *opt, int *used, long epoch) {
  qt_suggestion s = suggest_ok(opt);
  CU_ASSERT_EQUAL(s.epoch, epoch);
  CU_ASSERT_FATAL(s.candidate < MAX_POOL);
  CU_ASSERT(!used[s.candidate]);
  used[s.candidate] = 1;
  return s.candidate;
}

static void expect_promotion(qt_optimizer_t *opt, size_t candidate, long epoch) {
  qt_suggestion s = suggest_ok(opt);
  CU_ASSERT_EQUAL(s.candidate, candidate);
  CU_ASSERT_EQUAL(s.epoch, epoch);
}

static void observe_range(qt_optimizer_t *opt, size_t c, long from, long to, double score) {
  for (long e = from; e <= to; e++) observe_ok(opt, c, e, score);
}

static void test_asha_rule(void) {
  /* Rungs at 1, 3, 9, 27. Scores are chosen so that each decision is
   * forced by the rule: promote the best not-yet-promoted member of the top
   * floor(n_k / 3) of the highest rung that has one, else start a new one. */
  fixture f;
  fixture_init(&f, 10, 27);
  qt_optimizer_t *opt = create("asha", &f.pool, NULL);
  int used[MAX_POOL] = {0};
  size_t a = expect_fresh(opt, used, 1);
  observe_ok(opt, a, 1, 0.50);
  size_t b = expect_fresh(opt, used, 1);
  observe_ok(opt, b, 1, 0.90);
  size_t c = expect_fresh(opt, used, 1);
  observe_ok(opt, c, 1, 0.10);
  /* Rung 0 has 3: its top 1 is b. */
  expect_promotion(opt, b, 3);
  observe_range(opt, b, 2, 3, 0.92);
  /* Rung 1 has 1 (top 0); rung 0's top 1 (b) is promoted: a new one. */
  size_t d = expect_fresh(opt, used, 1);
  observe_ok(opt, d, 1, 0.95);
  expect_promotion(opt, d, 3); /* rung 0: 4 members, top 1 is d */
  observe_range(opt, d, 2, 3, 0.96);
  size_t e = expect_fresh(opt, used, 1);
  observe_ok(opt, e, 1, 0.20);
  size_t g = expect_fresh(opt, used, 1); /* rung 0: 6, top 2 = d, b: promoted */
  observe_ok(opt, g, 1, 0.30);
  size_t h = expect_fresh(opt, used, 1); /* 7 members, top 2 = d, b */
  observe_ok(opt, h, 1, 0.80);
  /* Two workers: i and j start while nothing is promotable. */
  size_t i = expect_fresh(opt, used, 1);
  size_t j = expect_fresh(opt, used, 1);
  observe_ok(opt, i, 1, 0.85); /* 8 members, top 2 = d, b */
  observe_ok(opt, j, 1, 0.97); /* 9 members, top 3 = j, d, b: j is promotable */
  expect_promotion(opt, j, 3);
  /* j pending at rung 1; rung 0's top 3 are all promoted: a new one. */
  size_t k = expect_fresh(opt, used, 1);
  observe_range(opt, j, 2, 3, 0.99); /* rung 1 = j .99, d .96, b .92: top 1 = j */
  observe_ok(opt, k, 1, 0.98);       /* rung 0 = 10: top 3 = k, j, d: k promotable */
  /* Both rungs have a promotable member: the higher rung goes first. */
  expect_promotion(opt, j, 9);
  expect_promotion(opt, k, 3);
  /* The pool (10) is used up and j, k are pending. */
  CU_ASSERT_EQUAL(suggest_status(opt), QT_SUGGEST_STATUS_WAIT);
  observe_range(opt, j, 4, 9, 0.99);
  observe_range(opt, k, 2, 3, 0.50); /* rung 1 = 4 members: top 1 = j, promoted */
  CU_ASSERT_EQUAL(suggest_status(opt), QT_SUGGEST_STATUS_DONE);
  (void)a, (void)c, (void)e, (void)g, (void)h, (void)i;
  qt_optimizer_free(opt);
  fixture_free(&f);
}

static void test_asha_exhausted_is_not_promoted(void) {
  /* A candidate that ends on its way to a rung enters that rung with its
   * last score: it counts toward n_k but is never promoted. */
  fixture f;
  fixture_init(&f, 10, 27);
  qt_optimizer_t *opt = create("asha", &f.pool, NULL);
  int used[MAX_POOL] = {0};
  size_t a = expect_fresh(opt, used, 1);
  observe_ok(opt, a, 1, 0.9);
  size_t b = expect_fresh(opt, used, 1);
  observe_ok(opt, b, 1, 0.5);
  size_t c = expect_fresh(opt, used, 1);
  observe_ok(opt, c, 1, 0.1);
  expect_promotion(opt, a, 3);
  observe_ok(opt, a, 2, 0.05);
  qt_observation exhausted = {QT_OBS_STATUS_EXHAUSTED, NAN, 0.0, NAN, NAN};
  CU_ASSERT_EQUAL(qt_optimizer_observe(opt, a, 3, &exhausted, NULL), 0);
  /* Rung 1 = a .05 (ended). Rung 0's top 1 is a, promoted: new ones. */
  size_t d = expect_fresh(opt, used, 1);
  observe_ok(opt, d, 1, 0.6);
  size_t e = expect_fresh(opt, used, 1);
  observe_ok(opt, e, 1, 0.2);
  size_t g = expect_fresh(opt, used, 1);
  observe_ok(opt, g, 1, 0.15);
  /* Rung 0 = a .9, d .6, b .5, e .2, g .15, c .1: top 2 = a (promoted), d. */
  expect_promotion(opt, d, 3);
  observe_range(opt, d, 2, 3, 0.7);
  /* Rung 1 = d .7, a .05: top 0. Rung 0's top 2 are promoted. */
  size_t h = expect_fresh(opt, used, 1);
  CU_ASSERT_NOT_EQUAL(h, a);
  observe_ok(opt, h, 1, 0.95); /* rung 0 = 7: top 2 = h, a */
  expect_promotion(opt, h, 3);
  observe_range(opt, h, 2, 3, 0.8);
  /* Rung 1 = h .8, d .7, a .05: n = 3 because a counts, so its top 1 (h)
   * goes on to rung 2. */
  expect_promotion(opt, h, 9);
  (void)b, (void)c, (void)e, (void)g;
  qt_optimizer_free(opt);
  fixture_free(&f);
}

/* ------------------------------------------------------------------------- */
/* Random search                                                              */
/* ------------------------------------------------------------------------- */

static void test_random_trains_full_curves(void) {
  fixture f;
  fixture_init(&f, 12, 27);
  synth_objective obj;
  synth_init(&obj);
  spread_qualities(&obj, 12);
  obj.length[3] = 5;     /* exhausted at epoch 6 */
  obj.diverge_at[8] = 4; /* diverges at epoch 4 */
  qt_optimizer_t *opt = create("random", &f.pool, NULL);
  static drive_log log;
  drive(opt, &obj, &log, MAX_STEPS, 0);
  CU_ASSERT_EQUAL(log.final_status, QT_SUGGEST_STATUS_DONE);
  CU_ASSERT_EQUAL(log.violations, 0);
  /* One suggestion per candidate, each to max_epochs, each fresh. */
  CU_ASSERT_EQUAL(log.count, 12);
  for (size_t i = 0; i < log.count; i++) {
    CU_ASSERT_EQUAL(log.steps[i].epoch, 27);
    CU_ASSERT(log.steps[i].fresh);
  }
  for (size_t i = 0; i < 12; i++) {
    if (i == 3) {
      CU_ASSERT(log.ended[3]);
      CU_ASSERT_EQUAL(log.last[3], 5);
    } else if (i == 8) {
      CU_ASSERT(log.ended[8]);
      CU_ASSERT_EQUAL(log.last[8], 3);
    } else {
      CU_ASSERT_EQUAL(log.last[i], 27);
    }
  }
  /* 10 full curves, 5 + 1 exhausted epochs, 3 + 1 diverged epochs. */
  CU_ASSERT_EQUAL(obj.steps, 10 * 27 + 6 + 4);
  /* The order is a permutation of the pool, not the pool order. */
  int in_order = 1;
  for (size_t i = 0; i < 12; i++) in_order &= log.steps[i].candidate == i;
  CU_ASSERT(!in_order);
  qt_optimizer_free(opt);
  fixture_free(&f);
}

/* ------------------------------------------------------------------------- */
/* Properties of every optimizer                                              */
/* ------------------------------------------------------------------------- */

static void mixed_objective(synth_objective *obj, size_t count) {
  synth_init(obj);
  spread_qualities(obj, count);
  for (size_t i = 0; i < count; i++) {
    if (i % 5 == 1) obj->length[i] = 1 + (long)(i % 7);  /* short runs */
    if (i % 11 == 3) obj->diverge_at[i] = 2 + (long)(i % 4);
  }
}

static void test_same_seed_same_suggestions(void) {
  const char *const *names = qt_optimizer_names();
  for (size_t k = 0; names[k]; k++) {
    if (!is_baseline(names[k])) continue;
    fixture f;
    fixture_init(&f, 60, 27);
    synth_objective obj;
    static drive_log first, second, other;
    qt_optimizer_params p = qt_optimizer_default_params();
    p.seed = 7;
    mixed_objective(&obj, 60);
    qt_optimizer_t *opt = create(names[k], &f.pool, &p);
    drive(opt, &obj, &first, 150, 0);
    qt_optimizer_free(opt);
    mixed_objective(&obj, 60);
    opt = create(names[k], &f.pool, &p);
    drive(opt, &obj, &second, 150, 0);
    qt_optimizer_free(opt);
    p.seed = 8;
    mixed_objective(&obj, 60);
    opt = create(names[k], &f.pool, &p);
    drive(opt, &obj, &other, 150, 0);
    qt_optimizer_free(opt);

    CU_ASSERT(first.count > 10);
    CU_ASSERT_EQUAL(first.count, second.count);
    int same = first.count == second.count, same_other = first.count == other.count;
    for (size_t i = 0; i < first.count && i < second.count; i++) {
      same &= first.steps[i].candidate == second.steps[i].candidate &&
              first.steps[i].epoch == second.steps[i].epoch;
      if (i < other.count) same_other &= first.steps[i].candidate == other.steps[i].candidate;
    }
    if (!same) fprintf(stderr, "%s: same seed, different suggestions\n", names[k]);
    CU_ASSERT(same);
    CU_ASSERT(!same_other);
    fixture_free(&f);
  }
}

static void test_never_suggests_ended(void) {
  const char *const *names = qt_optimizer_names();
  for (size_t k = 0; names[k]; k++) {
    if (!is_baseline(names[k])) continue;
    for (uint64_t seed = 0; seed < 3; seed++) {
      fixture f;
      fixture_init(&f, 90, 27);
      synth_objective obj;
      mixed_objective(&obj, 90);
      qt_optimizer_params p = qt_optimizer_default_params();
      p.seed = seed;
      qt_optimizer_t *opt = create(names[k], &f.pool, &p);
      static drive_log log;
      drive(opt, &obj, &log, MAX_STEPS, 7); /* every 7th new candidate's worker fails */
      if (log.violations) fprintf(stderr, "%s: %d bad suggestions\n", names[k], log.violations);
      CU_ASSERT_EQUAL(log.violations, 0);
      CU_ASSERT_EQUAL(log.final_status, QT_SUGGEST_STATUS_DONE);
      qt_optimizer_free(opt);
      fixture_free(&f);
    }
  }
}

/* ------------------------------------------------------------------------- */
/* BOHB                                                                       */
/* ------------------------------------------------------------------------- */

/* The best region is x near 0.8. */
static void peaked_objective(synth_objective *obj, const fixture *f) {
  synth_init(obj);
  for (size_t i = 0; i < f->count; i++) {
    double z = (fixture_x(f, i) - 0.8) / 0.08;
    obj->quality[i] = 0.05 + 0.9 * exp(-z * z);
  }
}

/* Fraction of the new candidates number from..to-1 (in order of first
 * suggestion) that lie within 0.1 of the peak. */
static double near_peak_fraction(const drive_log *log, const fixture *f, size_t from, size_t to) {
  size_t fresh = 0, near = 0;
  for (size_t i = 0; i < log->count && fresh < to; i++) {
    if (!log->steps[i].fresh) continue;
    if (fresh >= from && fabs(fixture_x(f, log->steps[i].candidate) - 0.8) <= 0.1) near++;
    fresh++;
  }
  return fresh > from ? (double)near / (double)(fresh - from) : 0.0;
}

static void test_bohb_random_then_model(void) {
  fixture f;
  fixture_init(&f, 243, 27);
  synth_objective obj;
  double bohb_near = 0.0, hyperband_near = 0.0;
  int fifth_differs = 0;
  const int seeds = 6;
  for (int seed = 0; seed < seeds; seed++) {
    qt_optimizer_params p = qt_optimizer_default_params();
    p.seed = (uint64_t)seed;
    static drive_log bohb_log, hb_log;
    peaked_objective(&obj, &f);
    qt_optimizer_t *opt = create("bohb", &f.pool, &p);
    drive(opt, &obj, &bohb_log, 69, 0); /* one Hyperband cycle */
    qt_optimizer_free(opt);
    peaked_objective(&obj, &f);
    opt = create("hyperband", &f.pool, &p);
    drive(opt, &obj, &hb_log, 69, 0);
    qt_optimizer_free(opt);
    CU_ASSERT_EQUAL(bohb_log.violations, 0);

    /* With one hyperparameter a model needs 4 results at a budget (2 good,
     * 2 bad): the first 4 new configurations are Hyperband's random draws. */
    for (size_t i = 0; i < 4; i++) {
      CU_ASSERT_EQUAL(bohb_log.steps[i].candidate, hb_log.steps[i].candidate);
      CU_ASSERT_EQUAL(bohb_log.steps[i].epoch, hb_log.steps[i].epoch);
    }
    /* ... and from the 5th on, the model proposes with probability 2/3 (a
     * model-based pick is not the permutation's next candidate). */
    if (bohb_log.steps[4].candidate != hb_log.steps[4].candidate) fifth_differs++;
    /* The schedule is Hyperband's whatever the proposals. */
    group gb[16], gh[16];
    size_t nb = group_steps(&bohb_log, gb, 16), nh = group_steps(&hb_log, gh, 16);
    CU_ASSERT_EQUAL(nb, nh);
    for (size_t i = 0; i < nb && i < nh; i++) CU_ASSERT_EQUAL(gb[i].count, gh[i].count);

    /* After that, new configurations crowd around the peak (20% of the pool
     * lies within 0.1 of it). */
    bohb_near += near_peak_fraction(&bohb_log, &f, 4, 49) / seeds;
    hyperband_near += near_peak_fraction(&hb_log, &f, 4, 49) / seeds;
  }
  fprintf(stderr, "\n  new configurations near the peak: bohb %.2f, hyperband %.2f\n", bohb_near,
          hyperband_near);
  CU_ASSERT(fifth_differs >= 2);
  CU_ASSERT(bohb_near > 0.5);
  CU_ASSERT(hyperband_near < 0.35);
  fixture_free(&f);
}

/* ------------------------------------------------------------------------- */
/* The tabular objective                                                      */
/* ------------------------------------------------------------------------- */

static void test_tabular_objective(void) {
  char space_path[1024];
  snprintf(space_path, sizeof space_path, "%s/configs/spaces/default.yaml", QT_SOURCE_DIR);
  qt_err err;
  qt_err_clear(&err);
  qt_metadataset_params params = qt_metadataset_default_params();
  params.name = "tabular-test";
  qt_metadataset_t *md = NULL;
  int rc = qt_metadataset_create(space_path, &params, &md, &err);
  if (rc != 0) fprintf(stderr, "create: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  const qt_space_t *space = qt_metadataset_space(md);
  size_t d0 = 0, d1 = 0;
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_add_dataset(md, "d0", NULL, &d0, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_add_dataset(md, "d1", NULL, &d1, &err), 0);
  qt_config config;
  CU_ASSERT_EQUAL_FATAL(qt_config_init(&config, space, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_space_default_config(space, &config, &err), 0);
  const float score_a[3] = {0.1f, 0.2f, 0.3f}, cost_a[3] = {10.f, 11.f, 12.f};
  const float score_b[5] = {0.5f, 0.6f, 0.7f, 0.65f, 0.8f}, cost_b[5] = {1.f, 2.f, 3.f, 4.f, 5.f};
  const float score_c[1] = {0.4f}, cost_c[1] = {7.f};
  qt_md_run a = {.id = "a", .dataset = d0, .config = &config, .epochs = 3, .score = score_a,
                 .cost = cost_a};
  qt_md_run c = {.id = "c", .dataset = d1, .config = &config, .epochs = 1, .score = score_c,
                 .cost = cost_c};
  qt_md_run b = {.id = "b", .dataset = d0, .config = &config, .epochs = 5, .score = score_b,
                 .cost = cost_b};
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_add_run(md, &a, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_add_run(md, &c, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_add_run(md, &b, &err), 0);

  /* Dataset d0's candidates are its runs in order: a, b. */
  qt_pool pool;
  rc = qt_tabular_pool_init(&pool, md, d0, &err);
  if (rc != 0) fprintf(stderr, "pool: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT_EQUAL(pool.count, 2);
  CU_ASSERT_EQUAL(pool.max_epochs, qt_metadataset_max_epochs(md));
  CU_ASSERT(qt_config_equal(&pool.configs[1], &config));
  qt_objective_t *objective = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_tabular_objective_init(md, d0, &objective, &err), 0);
  qt_observation obs;
  CU_ASSERT_EQUAL(qt_objective_step(objective, 1, 4, &obs, &err), 0);
  CU_ASSERT_EQUAL(obs.status, QT_OBS_STATUS_OK);
  QT_ASSERT_CLOSE(obs.score, 0.65, 1e-6);
  QT_ASSERT_CLOSE(obs.cost, 4.0, 0.0);
  CU_ASSERT(isnan(obs.train_loss));
  CU_ASSERT_EQUAL(qt_objective_step(objective, 0, 3, &obs, &err), 0);
  QT_ASSERT_CLOSE(obs.score, 0.3, 1e-6);
  QT_ASSERT_CLOSE(obs.cost, 12.0, 0.0);
  /* Past the recorded epochs: EXHAUSTED and free. */
  CU_ASSERT_EQUAL(qt_objective_step(objective, 0, 4, &obs, &err), 0);
  CU_ASSERT_EQUAL(obs.status, QT_OBS_STATUS_EXHAUSTED);
  QT_ASSERT_CLOSE(obs.cost, 0.0, 0.0);
  CU_ASSERT(isnan(obs.score));
  CU_ASSERT_EQUAL(qt_objective_step(objective, 1, 6, &obs, &err), 0);
  CU_ASSERT_EQUAL(obs.status, QT_OBS_STATUS_EXHAUSTED);
  /* Run c belongs to d1: d0 has only two candidates. */
  CU_ASSERT_EQUAL(qt_objective_step(objective, 2, 1, &obs, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_objective_step(objective, 0, 0, &obs, &err), QT_EINVAL);

  /* Random search replays both runs to their ends. */
  qt_optimizer_t *opt = create("random", &pool, NULL);
  long stepped = 0;
  for (;;) {
    qt_suggestion s;
    qt_suggest_status status;
    CU_ASSERT_EQUAL_FATAL(qt_optimizer_suggest(opt, &s, &status, &err), 0);
    if (status != QT_SUGGEST_STATUS_OK) {
      CU_ASSERT_EQUAL(status, QT_SUGGEST_STATUS_DONE);
      break;
    }
    for (long e = 1; e <= s.epoch; e++) {
      CU_ASSERT_EQUAL_FATAL(qt_objective_step(objective, s.candidate, e, &obs, &err), 0);
      CU_ASSERT_EQUAL_FATAL(qt_optimizer_observe(opt, s.candidate, e, &obs, &err), 0);
      stepped++;
      if (obs.status != QT_OBS_STATUS_OK) break;
    }
  }
  CU_ASSERT_EQUAL(stepped, 3 + 1 + 5 + 1);
  qt_optimizer_free(opt);

  qt_objective_free(objective);
  CU_ASSERT_EQUAL(qt_tabular_objective_init(md, 9, &objective, &err), QT_EINVAL);
  CU_ASSERT_PTR_NULL(objective);
  qt_pool bad;
  CU_ASSERT_EQUAL(qt_tabular_pool_init(&bad, md, 9, &err), QT_EINVAL);
  qt_objective_free(NULL);
  qt_pool_free(&pool);
  qt_config_free(&config);
  qt_metadataset_free(md);
}

/* ------------------------------------------------------------------------- */

static const qt_test_case cases[] = {
    {"observation status names", test_status_names},
    {"pool encodes its candidates", test_pool_encodes_candidates},
    {"registry lists and creates optimizers", test_registry},
    {"optimizer params are checked", test_params_are_checked},
    {"observe and fail check their input", test_observe_checks_input},
    {"Hyperband bracket table (eta 3, R 27)", test_hyperband_table},
    {"Hyperband runs its brackets in order", test_hyperband_brackets},
    {"SH promotes the top 1/eta per rung", test_sh_promotions},
    {"SH: exhausted candidates rank by last score, are not promoted", test_sh_exhausted_rule},
    {"rung epochs when R is not a power of eta", test_rungs_when_R_is_not_a_power},
    {"SH waits for its rung", test_sh_waits_for_its_rung},
    {"every optimizer is DONE when the pool is used", test_done_when_pool_is_used},
    {"every optimizer waits only when all is pending", test_wait_with_pending_trials},
    {"ASHA follows its promotion rule", test_asha_rule},
    {"ASHA never promotes an exhausted candidate", test_asha_exhausted_is_not_promoted},
    {"random search trains full curves", test_random_trains_full_curves},
    {"same seed, same suggestions", test_same_seed_same_suggestions},
    {"no optimizer suggests an ended candidate", test_never_suggests_ended},
    {"BOHB: random first, then near good configurations", test_bohb_random_then_model},
    {"tabular objective replays and exhausts", test_tabular_objective},
    {NULL, NULL},
};

QT_TEST_MAIN("bo", cases)

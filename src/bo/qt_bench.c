/*
 * qt_bench.c - one benchmark run on replayed learning curves, and the
 * regret, mean/interval and rank arithmetic the reports are built from.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bo/qt_bo.h"

/* ------------------------------------------------------------------------- */
/* Trajectories                                                               */
/* ------------------------------------------------------------------------- */

void qt_bench_trajectory_free(qt_bench_trajectory *trajectory) {
  if (!trajectory) return;
  free(trajectory->points);
  memset(trajectory, 0, sizeof *trajectory);
}

static int trajectory_push(qt_bench_trajectory *trajectory, const qt_bench_point *point,
                           qt_err *err) {
  if (trajectory->count == trajectory->capacity) {
    size_t capacity = trajectory->capacity ? 2 * trajectory->capacity : 256;
    qt_bench_point *points = realloc(trajectory->points, capacity * sizeof *points);
    if (!points) return qt_err_set(err, QT_ENOMEM, "out of memory for a trajectory");
    trajectory->points = points;
    trajectory->capacity = capacity;
  }
  trajectory->points[trajectory->count++] = *point;
  return 0;
}

/* The best and worst score over all runs and epochs of a dataset: the ends
 * of the normalized regret scale (specs §1.10). */
static void dataset_score_range(const qt_metadataset_t *md, size_t dataset, double *best,
                                double *worst) {
  const qt_md_dataset *d = qt_metadataset_dataset(md, dataset);
  *best = -INFINITY;
  *worst = INFINITY;
  for (size_t r = d->first_run; r < d->first_run + d->run_count; r++) {
    const qt_md_run *run = qt_metadataset_run(md, r);
    for (size_t e = 0; e < run->epochs; e++) {
      if (!isfinite(run->score[e])) continue;
      if (run->score[e] > *best) *best = run->score[e];
      if (run->score[e] < *worst) *worst = run->score[e];
    }
  }
  if (*best < *worst) *best = *worst = 0.0; /* no finite score at all */
}

/* ------------------------------------------------------------------------- */
/* One run                                                                    */
/* ------------------------------------------------------------------------- */

qt_bench_params qt_bench_default_params(void) {
  qt_bench_params params;
  memset(&params, 0, sizeof params);
  params.optimizer = qt_optimizer_default_params();
  params.budget = 3600.0;
  params.charge_overhead = 1;
  params.overhead_cpu = 0;
  return params;
}

/* The clock the optimizer's overhead is measured with (seconds). */
static double overhead_clock(const qt_bench_params *params) {
  if (!params->overhead_cpu) return qt_time_now();
  struct timespec now;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

/* The state of one run, so that the epoch loop reads as the algorithm. */
typedef struct bench_run {
  const qt_bench_params *params;
  qt_objective_t *objective;
  qt_optimizer_t *optimizer;
  long *last_epoch; /* (pool size) last epoch stepped per candidate */
  double clock;     /* simulated seconds */
  double incumbent;
  qt_bench_trajectory *out;
} bench_run;

/* Steps candidate s.candidate from its last epoch to s.epoch, one epoch at
 * a time, telling the optimizer each result. The optimizer time not charged
 * yet (`overhead`) goes to the first epoch. Stops early when the budget is
 * spent or the candidate ends (diverged, failed, exhausted). */
static int advance(bench_run *run, const qt_suggestion *s, double overhead, qt_err *err) {
  for (long epoch = run->last_epoch[s->candidate] + 1; epoch <= s->epoch; epoch++) {
    qt_observation obs;
    int rc = qt_objective_step(run->objective, s->candidate, epoch, &obs, err);
    if (rc != 0) return rc;
    double start = overhead_clock(run->params);
    rc = qt_optimizer_observe(run->optimizer, s->candidate, epoch, &obs, err);
    if (rc != 0) return rc;
    overhead += overhead_clock(run->params) - start;
    run->last_epoch[s->candidate] = epoch;
    run->clock += obs.cost + (run->params->charge_overhead ? overhead : 0.0);
    if (obs.status == QT_OBS_STATUS_OK && obs.score > run->incumbent) run->incumbent = obs.score;
    qt_bench_point point = {run->clock, obs.status == QT_OBS_STATUS_OK ? obs.score : NAN,
                            run->incumbent, overhead, s->candidate, epoch, obs.status};
    rc = trajectory_push(run->out, &point, err);
    if (rc != 0) return rc;
    overhead = 0.0;
    if (obs.status != QT_OBS_STATUS_OK || run->clock >= run->params->budget) break;
  }
  return 0;
}

int qt_bench_run(const qt_metadataset_t *md, size_t dataset, const char *name,
                 const qt_bench_params *params, qt_bench_trajectory *out, qt_err *err) {
  memset(out, 0, sizeof *out);
  out->budget = params->budget;
  out->dataset = dataset;
  out->seed = params->optimizer.seed;
  dataset_score_range(md, dataset, &out->y_best, &out->y_worst);

  qt_pool pool = {0};
  bench_run run = {params, NULL, NULL, NULL, 0.0, 0.0, out};
  int rc = qt_tabular_pool_init(&pool, md, dataset, err);
  if (rc == 0) rc = qt_tabular_objective_init(md, dataset, &run.objective, err);
  if (rc == 0) rc = qt_optimizer_create(name, &pool, &params->optimizer, &run.optimizer, err);
  if (rc == 0) {
    run.last_epoch = calloc(pool.count ? pool.count : 1, sizeof *run.last_epoch);
    if (!run.last_epoch) rc = qt_err_set(err, QT_ENOMEM, "out of memory");
  }
  while (rc == 0 && run.clock < params->budget) {
    qt_suggestion s;
    qt_suggest_status status;
    double start = overhead_clock(params);
    rc = qt_optimizer_suggest(run.optimizer, &s, &status, err);
    double overhead = overhead_clock(params) - start;
    if (rc != 0 || status == QT_SUGGEST_STATUS_DONE) break;
    if (status == QT_SUGGEST_STATUS_WAIT) {
      /* One worker observes every suggestion before asking again, so nothing
       * is pending: waiting here would wait forever. */
      rc = qt_err_set(err, QT_EINVAL, "optimizer %s waits although no trial is pending", name);
      break;
    }
    if (s.candidate >= pool.count || s.epoch <= run.last_epoch[s.candidate]) {
      rc = qt_err_set(err, QT_EINVAL,
                      "optimizer %s suggested candidate %zu to epoch %ld, which is not ahead of "
                      "its last epoch",
                      name, s.candidate, s.epoch);
      break;
    }
    rc = advance(&run, &s, overhead, err);
  }
  free(run.last_epoch);
  qt_optimizer_free(run.optimizer);
  qt_objective_free(run.objective);
  qt_pool_free(&pool);
  if (rc != 0) qt_bench_trajectory_free(out);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Regret, intervals and ranks                                                */
/* ------------------------------------------------------------------------- */

double qt_bench_incumbent_at(const qt_bench_trajectory *trajectory, double t) {
  /* Binary search for the last point with time <= t. */
  size_t lo = 0, hi = trajectory->count;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (trajectory->points[mid].time <= t)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo == 0 ? 0.0 : trajectory->points[lo - 1].incumbent;
}

double qt_bench_regret_at(const qt_bench_trajectory *trajectory, double t) {
  double range = trajectory->y_best - trajectory->y_worst;
  if (range <= 0.0) return 0.0;
  return (trajectory->y_best - qt_bench_incumbent_at(trajectory, t)) / range;
}

void qt_bench_mean_ci(const double *values, size_t n, double *mean, double *half_width) {
  double sum = 0.0;
  for (size_t i = 0; i < n; i++) sum += values[i];
  *mean = n ? sum / (double)n : NAN;
  double squares = 0.0;
  for (size_t i = 0; i < n; i++) squares += (values[i] - *mean) * (values[i] - *mean);
  *half_width = n > 1 ? 1.96 * sqrt(squares / (double)(n - 1)) / sqrt((double)n) : 0.0;
}

void qt_bench_rank(const double *values, size_t k, double *ranks) {
  /* k is the number of optimizers: small, so the quadratic count is clearer
   * than sorting. Rank = 1 + #smaller + (#equal - 1) / 2. */
  for (size_t i = 0; i < k; i++) {
    size_t smaller = 0, equal = 0;
    for (size_t j = 0; j < k; j++) {
      if (values[j] < values[i]) smaller++;
      if (values[j] == values[i]) equal++;
    }
    ranks[i] = 1.0 + (double)smaller + (double)(equal - 1) / 2.0;
  }
}

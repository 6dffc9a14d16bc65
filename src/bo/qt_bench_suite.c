/*
 * qt_bench_suite.c - many benchmark runs (optimizers x datasets x seeds) on a
 * pool of threads, aggregated into normalized regret and rank over time, and
 * written as CSV for tools/plot-regret.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bo/qt_bo.h"

qt_bench_suite_params qt_bench_suite_default_params(void) {
  qt_bench_suite_params params;
  memset(&params, 0, sizeof params);
  params.run = qt_bench_default_params();
  params.grid_points = 200;
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  params.threads = cores > 0 ? (int)cores : 1;
  return params;
}

/* ------------------------------------------------------------------------- */
/* Seeds                                                                      */
/* ------------------------------------------------------------------------- */

int qt_bench_parse_seeds(const char *text, uint64_t **seeds, size_t *count, qt_err *err) {
  *seeds = NULL;
  *count = 0;
  size_t capacity = 0;
  const char *p = text;
  while (*p) {
    char *end;
    errno = 0;
    unsigned long long first = strtoull(p, &end, 10);
    unsigned long long last = first;
    if (end == p || errno != 0 || *p == '-') goto bad;
    if (*end == '-') {
      const char *q = end + 1;
      last = strtoull(q, &end, 10);
      if (end == q || errno != 0 || *q == '-' || last < first || last - first > 100000) goto bad;
    }
    for (unsigned long long s = first; s <= last; s++) {
      if (*count == capacity) {
        capacity = capacity ? 2 * capacity : 8;
        uint64_t *grown = realloc(*seeds, capacity * sizeof *grown);
        if (!grown) {
          free(*seeds);
          *seeds = NULL;
          return qt_err_set(err, QT_ENOMEM, "out of memory");
        }
        *seeds = grown;
      }
      (*seeds)[(*count)++] = (uint64_t)s;
    }
    if (*end == ',' && end[1] != '\0')
      p = end + 1;
    else if (*end == '\0')
      p = end;
    else
      goto bad;
  }
  if (*count > 0) return 0;
bad:
  free(*seeds);
  *seeds = NULL;
  *count = 0;
  return qt_err_set(err, QT_EPARSE, "seeds '%s': expected a list like 0-4, 0,3,7 or 1,5-7", text);
}

/* ------------------------------------------------------------------------- */
/* Running the jobs                                                           */
/* ------------------------------------------------------------------------- */

/* Job j is optimizer j / (D*S), dataset (j / S) % D, seed j % S. */
typedef struct suite_state {
  const qt_metadataset_t *md;
  const qt_bench_suite_params *params;
  qt_bench_trajectory *trajectories; /* (jobs) */
  size_t jobs;
  size_t next; /* next job to start, under lock */
  size_t done;
  double start, last_report; /* qt_time_now() of the start and of the last progress line */
  int rc;      /* first failure */
  qt_err err;
  pthread_mutex_t lock;
} suite_state;

static void job_indices(const suite_state *state, size_t job, size_t *o, size_t *d, size_t *s) {
  size_t D = state->params->dataset_count, S = state->params->seed_count;
  *o = job / (D * S);
  *d = (job / S) % D;
  *s = job % S;
}

static void *suite_worker(void *arg) {
  suite_state *state = arg;
  for (;;) {
    pthread_mutex_lock(&state->lock);
    size_t job = state->next++;
    int stop = job >= state->jobs || state->rc != 0;
    pthread_mutex_unlock(&state->lock);
    if (stop) return NULL;

    size_t o, d, s;
    job_indices(state, job, &o, &d, &s);
    qt_bench_params run = state->params->run;
    run.optimizer.seed = state->params->seeds[s];
    if (state->params->surrogates) run.optimizer.surrogate = state->params->surrogates[d];
    qt_err err;
    qt_err_clear(&err);
    int rc = qt_bench_run(state->md, state->params->datasets[d], state->params->optimizers[o], &run,
                          &state->trajectories[job], &err);

    pthread_mutex_lock(&state->lock);
    state->done++;
    if (rc != 0 && state->rc == 0) {
      state->rc = rc;
      state->err = err;
    }
    if (rc == 0)
      QT_LOG_DEBUG("bench: %zu/%zu %s on %s seed %llu: %zu epochs", state->done, state->jobs,
                   state->params->optimizers[o],
                   qt_metadataset_dataset(state->md, state->params->datasets[d])->name,
                   (unsigned long long)state->params->seeds[s], state->trajectories[job].count);
    /* Long suites (the Quick-Tune optimizers train a network per epoch)
     * say how far they are, at most once a minute. */
    double now = qt_time_now();
    if (rc == 0 && now - state->last_report >= 60.0) {
      state->last_report = now;
      QT_LOG_INFO("bench: %zu/%zu runs done after %.0f s (last: %s on %s)", state->done,
                  state->jobs, now - state->start, state->params->optimizers[o],
                  qt_metadataset_dataset(state->md, state->params->datasets[d])->name);
    }
    pthread_mutex_unlock(&state->lock);
  }
}

/* ------------------------------------------------------------------------- */
/* Aggregation and files                                                      */
/* ------------------------------------------------------------------------- */

static FILE *open_output(const char *dir, const char *name, qt_err *err) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *file = fopen(path, "w");
  if (!file) qt_err_set(err, QT_EIO, "%s: %s", path, strerror(errno));
  return file;
}

static int close_output(FILE *file, const char *dir, const char *name, qt_err *err) {
  int failed = ferror(file);
  failed |= fclose(file) != 0;
  if (failed) return qt_err_set(err, QT_EIO, "%s/%s: write failed: %s", dir, name, strerror(errno));
  return 0;
}

static int write_trajectory(const suite_state *state, size_t job, qt_err *err) {
  size_t o, d, s;
  job_indices(state, job, &o, &d, &s);
  const qt_bench_suite_params *p = state->params;
  const qt_md_dataset *dataset = qt_metadataset_dataset(state->md, p->datasets[d]);
  char dir[4096], name[512];
  snprintf(dir, sizeof dir, "%s/trajectories/%s", p->out_dir, p->optimizers[o]);
  int rc = qt_mkdir_p(dir, err);
  if (rc != 0) return rc;
  snprintf(name, sizeof name, "%s-seed%llu.csv", dataset->name, (unsigned long long)p->seeds[s]);
  FILE *file = open_output(dir, name, err);
  if (!file) return err ? err->code : QT_EIO;
  const qt_bench_trajectory *t = &state->trajectories[job];
  fprintf(file, "time_s,score,incumbent,regret,overhead_s,run,epoch,status\n");
  for (size_t i = 0; i < t->count; i++) {
    const qt_bench_point *pt = &t->points[i];
    const qt_md_run *run = qt_metadataset_run(state->md, dataset->first_run + pt->candidate);
    double range = t->y_best - t->y_worst;
    fprintf(file, "%.6f,%.6f,%.6f,%.6f,%.6f,%s,%ld,%s\n", pt->time, pt->score, pt->incumbent,
            range > 0 ? (t->y_best - pt->incumbent) / range : 0.0, pt->overhead, run->id, pt->epoch,
            qt_obs_status_name(pt->status));
  }
  return close_output(file, dir, name, err);
}

/* Fills summaries and, when out_dir is set, regret.csv, rank.csv and
 * summary.csv. Rank at a time: per (dataset, seed), the optimizers' regrets
 * are ranked, then averaged over (dataset, seed). */
static int aggregate(const suite_state *state, qt_bench_summary *summaries, qt_err *err) {
  const qt_bench_suite_params *p = state->params;
  size_t O = p->optimizer_count, D = p->dataset_count, S = p->seed_count, G = p->grid_points;
  size_t n = D * S;
  double budget = p->run.budget;
  /* Times: the log grid, then the three report fractions. */
  size_t T = G + 3;
  double *times = malloc(T * sizeof *times);
  double *regret = malloc(O * n * sizeof *regret);  /* (O, n) at one time */
  double *mean_rank = calloc(O, sizeof *mean_rank); /* (O) at one time */
  double *values = malloc(O * sizeof *values), *ranks = malloc(O * sizeof *ranks);
  FILE *regret_csv = NULL, *rank_csv = NULL;
  int rc = 0;
  if (!times || !regret || !mean_rank || !values || !ranks) {
    rc = qt_err_set(err, QT_ENOMEM, "out of memory");
    goto done;
  }
  for (size_t g = 0; g < G; g++)
    times[g] = G > 1 ? budget * pow(10.0, -3.0 + 3.0 * (double)g / (double)(G - 1)) : budget;
  times[G] = 0.1 * budget;
  times[G + 1] = 0.5 * budget;
  times[G + 2] = budget;

  if (p->out_dir) {
    regret_csv = open_output(p->out_dir, "regret.csv", err);
    rank_csv = regret_csv ? open_output(p->out_dir, "rank.csv", err) : NULL;
    if (!regret_csv || !rank_csv) {
      rc = err ? err->code : QT_EIO;
      goto done;
    }
    fprintf(regret_csv, "optimizer,time_s,fraction,mean,ci_low,ci_high,n\n");
    fprintf(rank_csv, "optimizer,time_s,fraction,mean_rank\n");
  }

  for (size_t ti = 0; ti < T; ti++) {
    for (size_t o = 0; o < O; o++)
      for (size_t k = 0; k < n; k++)
        regret[o * n + k] = qt_bench_regret_at(&state->trajectories[o * n + k], times[ti]);
    memset(mean_rank, 0, O * sizeof *mean_rank);
    for (size_t k = 0; k < n; k++) {
      for (size_t o = 0; o < O; o++) values[o] = regret[o * n + k];
      qt_bench_rank(values, O, ranks);
      for (size_t o = 0; o < O; o++) mean_rank[o] += ranks[o] / (double)n;
    }
    for (size_t o = 0; o < O; o++) {
      double mean, half;
      qt_bench_mean_ci(&regret[o * n], n, &mean, &half);
      if (ti < G && regret_csv) {
        fprintf(regret_csv, "%s,%.6f,%.6f,%.6f,%.6f,%.6f,%zu\n", p->optimizers[o], times[ti],
                times[ti] / budget, mean, mean - half, mean + half, n);
        fprintf(rank_csv, "%s,%.6f,%.6f,%.6f\n", p->optimizers[o], times[ti], times[ti] / budget,
                mean_rank[o]);
      }
      if (ti >= G && summaries) {
        summaries[o].regret[ti - G] = mean;
        summaries[o].regret_ci[ti - G] = half;
        if (ti == G + 2) summaries[o].final_rank = mean_rank[o];
      }
    }
  }
  for (size_t o = 0; summaries && o < O; o++) {
    double epochs = 0.0, overhead = 0.0;
    for (size_t k = 0; k < n; k++) {
      const qt_bench_trajectory *t = &state->trajectories[o * n + k];
      epochs += (double)t->count / (double)n;
      for (size_t i = 0; i < t->count; i++) overhead += t->points[i].overhead / (double)n;
    }
    summaries[o].epochs = epochs;
    summaries[o].overhead = overhead;
    summaries[o].overhead_share = budget > 0 ? overhead / budget : 0.0;
  }
done:
  if (regret_csv && rc == 0) rc = close_output(regret_csv, p->out_dir, "regret.csv", err);
  else if (regret_csv) fclose(regret_csv);
  if (rank_csv && rc == 0) rc = close_output(rank_csv, p->out_dir, "rank.csv", err);
  else if (rank_csv) fclose(rank_csv);
  free(times);
  free(regret);
  free(mean_rank);
  free(values);
  free(ranks);
  return rc;
}

static int write_summary(const qt_bench_suite_params *p, const qt_bench_summary *summaries,
                         qt_err *err) {
  FILE *file = open_output(p->out_dir, "summary.csv", err);
  if (!file) return err ? err->code : QT_EIO;
  fprintf(file, "optimizer,budget_s,runs,regret_10,ci_10,regret_50,ci_50,regret_100,ci_100,"
                "final_rank,epochs,overhead_s,overhead_share\n");
  for (size_t o = 0; o < p->optimizer_count; o++) {
    const qt_bench_summary *s = &summaries[o];
    fprintf(file, "%s,%.0f,%zu,%.6f,%.6f,%.6f,%.6f,%.6f,%.6f,%.4f,%.1f,%.3e,%.3e\n",
            p->optimizers[o], p->run.budget, p->dataset_count * p->seed_count, s->regret[0],
            s->regret_ci[0], s->regret[1], s->regret_ci[1], s->regret[2], s->regret_ci[2],
            s->final_rank, s->epochs, s->overhead, s->overhead_share);
  }
  return close_output(file, p->out_dir, "summary.csv", err);
}

/* ------------------------------------------------------------------------- */
/* The suite                                                                  */
/* ------------------------------------------------------------------------- */

int qt_bench_suite_run(const qt_metadataset_t *md, const qt_bench_suite_params *params,
                       qt_bench_summary *summaries, qt_err *err) {
  if (params->optimizer_count == 0 || params->dataset_count == 0 || params->seed_count == 0 ||
      params->grid_points == 0 || !(params->run.budget > 0))
    return qt_err_set(err, QT_EINVAL, "bench: need optimizers, datasets, seeds, a grid and a budget");
  for (size_t d = 0; d < params->dataset_count; d++)
    if (params->datasets[d] >= qt_metadataset_dataset_count(md))
      return qt_err_set(err, QT_EINVAL, "bench: dataset index %zu out of range", params->datasets[d]);

  suite_state state;
  memset(&state, 0, sizeof state);
  state.md = md;
  state.params = params;
  state.jobs = params->optimizer_count * params->dataset_count * params->seed_count;
  state.trajectories = calloc(state.jobs, sizeof *state.trajectories);
  qt_bench_summary *owned = summaries ? NULL : calloc(params->optimizer_count, sizeof *owned);
  if (!state.trajectories || (!summaries && !owned)) {
    free(state.trajectories);
    free(owned);
    return qt_err_set(err, QT_ENOMEM, "out of memory");
  }
  if (!summaries) summaries = owned;
  pthread_mutex_init(&state.lock, NULL);
  state.start = state.last_report = qt_time_now();

  int threads = params->threads > 0 ? params->threads : 1;
  if ((size_t)threads > state.jobs) threads = (int)state.jobs;
  pthread_t *workers = calloc((size_t)threads, sizeof *workers);
  int started = 0;
  if (workers) {
    for (; started < threads; started++)
      if (pthread_create(&workers[started], NULL, suite_worker, &state) != 0) break;
  }
  if (started == 0) suite_worker(&state); /* no thread could start: run here */
  for (int i = 0; i < started; i++) pthread_join(workers[i], NULL);
  free(workers);

  int rc = state.rc;
  if (rc != 0 && err) *err = state.err;
  if (rc == 0 && params->out_dir) rc = qt_mkdir_p(params->out_dir, err);
  for (size_t job = 0; rc == 0 && params->out_dir && job < state.jobs; job++)
    rc = write_trajectory(&state, job, err);
  if (rc == 0) rc = aggregate(&state, summaries, err);
  if (rc == 0 && params->out_dir) rc = write_summary(params, summaries, err);

  for (size_t job = 0; job < state.jobs; job++) qt_bench_trajectory_free(&state.trajectories[job]);
  free(state.trajectories);
  free(owned);
  pthread_mutex_destroy(&state.lock);
  return rc;
}

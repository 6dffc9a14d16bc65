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

/* Job j is optimizer j / (D*S), dataset (j / S) % D, seed j % S: the index of
 * its trajectory. The jobs run in another order (suite_state.order). */
typedef struct suite_state {
  const qt_metadataset_t *md;
  const qt_bench_suite_params *params;
  qt_bench_trajectory *trajectories; /* (jobs) */
  size_t *order;                     /* (jobs) job indices in the order they run */
  unsigned char *resumed;            /* (jobs) 1: read back from its file, not run */
  size_t jobs;
  size_t next;   /* next position in order to start, under lock */
  size_t done;   /* jobs run so far */
  size_t to_run; /* jobs not read back */
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

/* The Quick-Tune optimizers train a network after every epoch: hours where
 * the baselines take seconds. */
static int is_expensive(const char *optimizer) { return strncmp(optimizer, "quicktune", 9) == 0; }

/* The order the jobs run in: first every cheap job (optimizer by optimizer),
 * then the expensive ones seed by seed, each seed over every dataset and, per
 * dataset, every expensive optimizer. A suite stopped early (and resumed
 * later) has then finished whole seeds of the expensive optimizers on all
 * datasets rather than one optimizer on all seeds. */
static void job_order(const suite_state *state) {
  const qt_bench_suite_params *p = state->params;
  size_t D = p->dataset_count, S = p->seed_count, k = 0;
  for (size_t o = 0; o < p->optimizer_count; o++)
    if (!is_expensive(p->optimizers[o]))
      for (size_t j = o * D * S; j < (o + 1) * D * S; j++) state->order[k++] = j;
  for (size_t s = 0; s < S; s++)
    for (size_t d = 0; d < D; d++)
      for (size_t o = 0; o < p->optimizer_count; o++)
        if (is_expensive(p->optimizers[o])) state->order[k++] = (o * D + d) * S + s;
}

static int write_trajectory(const suite_state *state, size_t job, qt_err *err);

static void *suite_worker(void *arg) {
  suite_state *state = arg;
  for (;;) {
    pthread_mutex_lock(&state->lock);
    size_t position = state->next++;
    while (position < state->jobs && state->resumed[state->order[position]])
      position = state->next++;
    int stop = position >= state->jobs || state->rc != 0;
    pthread_mutex_unlock(&state->lock);
    if (stop) return NULL;

    size_t job = state->order[position];
    size_t o, d, s;
    job_indices(state, job, &o, &d, &s);
    qt_bench_params run = state->params->run;
    run.optimizer.seed = state->params->seeds[s];
    if (state->params->surrogates) run.optimizer.surrogate = state->params->surrogates[d];
    qt_err err;
    qt_err_clear(&err);
    int rc = qt_bench_run(state->md, state->params->datasets[d], state->params->optimizers[o], &run,
                          &state->trajectories[job], &err);
    /* Written at once, so that a suite killed later keeps this job. */
    if (rc == 0 && state->params->out_dir) rc = write_trajectory(state, job, &err);

    pthread_mutex_lock(&state->lock);
    state->done++;
    if (rc != 0 && state->rc == 0) {
      state->rc = rc;
      state->err = err;
    }
    if (rc == 0)
      QT_LOG_DEBUG("bench: %zu/%zu %s on %s seed %llu: %zu epochs", state->done, state->to_run,
                   state->params->optimizers[o],
                   qt_metadataset_dataset(state->md, state->params->datasets[d])->name,
                   (unsigned long long)state->params->seeds[s], state->trajectories[job].count);
    /* Long suites (the Quick-Tune optimizers train a network per epoch)
     * say how far they are, at most once a minute. */
    double now = qt_time_now();
    if (rc == 0 && now - state->last_report >= 60.0) {
      state->last_report = now;
      QT_LOG_INFO("bench: %zu/%zu runs done after %.0f s (last: %s on %s seed %llu)", state->done,
                  state->to_run, now - state->start, state->params->optimizers[o],
                  qt_metadataset_dataset(state->md, state->params->datasets[d])->name,
                  (unsigned long long)state->params->seeds[s]);
    }
    pthread_mutex_unlock(&state->lock);
  }
}

/* ------------------------------------------------------------------------- */
/* Trajectory files                                                           */
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

/* FNV-1a (64 bits), continued from h. */
static uint64_t fnv1a(uint64_t h, const void *data, size_t length) {
  const unsigned char *bytes = data;
  for (size_t i = 0; i < length; i++) {
    h ^= bytes[i];
    h *= 1099511628211ULL;
  }
  return h;
}

static uint64_t fnv1a_text(uint64_t h, const char *text) {
  return fnv1a(h, text ? text : "", text ? strlen(text) + 1 : 1);
}

static uint64_t fnv1a_names(uint64_t h, const char *const *names, size_t count) {
  h = fnv1a(h, &count, sizeof count);
  for (size_t i = 0; i < count; i++) h = fnv1a_text(h, names[i]);
  return h;
}

/* What identifies a meta-trained surrogate for resuming: its provenance
 * (space, meta-dataset, the datasets it was trained, validated and held out
 * on, iterations, seed, the kept iteration and its validation error). 0 for
 * none. */
static uint64_t surrogate_fingerprint(const qt_surrogate_t *surrogate) {
  if (!surrogate) return 0;
  const qt_surrogate_info *info = qt_surrogate_get_info(surrogate);
  uint64_t h = 14695981039346656037ULL;
  h = fnv1a(h, &info->space_hash, sizeof info->space_hash);
  h = fnv1a_text(h, info->meta_dataset);
  h = fnv1a_names(h, info->train_datasets, info->train_count);
  h = fnv1a_names(h, info->validation_datasets, info->validation_count);
  h = fnv1a_names(h, info->excluded_datasets, info->excluded_count);
  h = fnv1a(h, &info->iterations, sizeof info->iterations);
  h = fnv1a(h, &info->best_iteration, sizeof info->best_iteration);
  h = fnv1a(h, &info->seed, sizeof info->seed);
  char mse[64];
  snprintf(mse, sizeof mse, "%.17g", info->validation_mse);
  return fnv1a_text(h, mse);
}

/* The completion line of a trajectory file, up to its counts: every
 * parameter the job's run depends on. A file is read back only when its last
 * line starts with exactly this key. */
static void trajectory_key(const suite_state *state, size_t job, char *key, size_t size) {
  size_t o, d, s;
  job_indices(state, job, &o, &d, &s);
  const qt_bench_suite_params *p = state->params;
  const qt_md_dataset *dataset = qt_metadataset_dataset(state->md, p->datasets[d]);
  const qt_optimizer_params *op = &p->run.optimizer;
  const qt_quicktune_params *qt = &op->quicktune;
  const qt_surrogate_t *surrogate = p->surrogates ? p->surrogates[d] : op->surrogate;
  const char *name = p->optimizers[o];
  uint64_t fingerprint = qt_optimizer_uses_surrogate(name) ? surrogate_fingerprint(surrogate) : 0;
  snprintf(key, size,
           "# qtune bench trajectory v1: optimizer=%s meta_dataset=%s dataset=%s runs=%zu "
           "seed=%llu budget_s=%.17g charge_overhead=%d overhead_cpu=%d min_epochs=%ld "
           "max_epochs=%ld eta=%.17g quicktune=%d,%d,%d,%ld,%.17g,%.17g max_train_rows=%zu "
           "surrogate=%016llx",
           name, qt_metadataset_name(state->md), dataset->name, dataset->run_count,
           (unsigned long long)p->seeds[s], p->run.budget, p->run.charge_overhead,
           p->run.overhead_cpu, op->min_epochs, op->max_epochs, op->eta, qt->restart_steps,
           qt->refine_steps, qt->initial_restarts, qt->patience, qt->learning_rate, qt->explore,
           qt->max_train_rows, (unsigned long long)fingerprint);
}

static void trajectory_path(const suite_state *state, size_t job, char *path, size_t size) {
  size_t o, d, s;
  job_indices(state, job, &o, &d, &s);
  const qt_bench_suite_params *p = state->params;
  snprintf(path, size, "%s/trajectories/%s/%s-seed%llu.csv", p->out_dir, p->optimizers[o],
           qt_metadataset_dataset(state->md, p->datasets[d])->name,
           (unsigned long long)p->seeds[s]);
}

/* Writes a job's trajectory to a temporary file beside its path and renames
 * it into place. Times, scores and overheads have 17 significant digits, so
 * that a trajectory read back aggregates to the same bytes. */
static int write_trajectory(const suite_state *state, size_t job, qt_err *err) {
  size_t o, d, s;
  job_indices(state, job, &o, &d, &s);
  const qt_bench_suite_params *p = state->params;
  const qt_md_dataset *dataset = qt_metadataset_dataset(state->md, p->datasets[d]);
  char path[4096], tmp[4200], key[2048];
  trajectory_path(state, job, path, sizeof path);
  snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid());
  trajectory_key(state, job, key, sizeof key);
  FILE *file = fopen(tmp, "w");
  if (!file) return qt_err_set(err, QT_EIO, "%s: %s", tmp, strerror(errno));
  const qt_bench_trajectory *t = &state->trajectories[job];
  fprintf(file, "time_s,score,incumbent,regret,overhead_s,run,epoch,status\n");
  for (size_t i = 0; i < t->count; i++) {
    const qt_bench_point *pt = &t->points[i];
    const qt_md_run *run = qt_metadataset_run(state->md, dataset->first_run + pt->candidate);
    double range = t->y_best - t->y_worst;
    fprintf(file, "%.17g,%.17g,%.17g,%.6f,%.17g,%s,%ld,%s\n", pt->time, pt->score, pt->incumbent,
            range > 0 ? (t->y_best - pt->incumbent) / range : 0.0, pt->overhead, run->id, pt->epoch,
            qt_obs_status_name(pt->status));
  }
  fprintf(file, "%s y_best=%.17g y_worst=%.17g points=%zu\n", key, t->y_best, t->y_worst,
          t->count);
  int failed = ferror(file);
  failed |= fflush(file) != 0;
  failed |= fsync(fileno(file)) != 0;
  failed |= fclose(file) != 0;
  if (failed) {
    unlink(tmp);
    return qt_err_set(err, QT_EIO, "%s: write failed: %s", tmp, strerror(errno));
  }
  if (rename(tmp, path) != 0) {
    int saved = errno;
    unlink(tmp);
    return qt_err_set(err, QT_EIO, "%s: rename to %s: %s", tmp, path, strerror(saved));
  }
  return 0;
}

/* The pool index of the run called id among the dataset's runs (hint first:
 * consecutive rows often name the same run). */
static int find_candidate(const qt_metadataset_t *md, const qt_md_dataset *dataset, const char *id,
                          size_t hint, size_t *candidate) {
  if (hint < dataset->run_count &&
      strcmp(qt_metadataset_run(md, dataset->first_run + hint)->id, id) == 0) {
    *candidate = hint;
    return 0;
  }
  for (size_t r = 0; r < dataset->run_count; r++)
    if (strcmp(qt_metadataset_run(md, dataset->first_run + r)->id, id) == 0) {
      *candidate = r;
      return 0;
    }
  return -1;
}

/* Parses the rows of a trajectory file (text after its header, the
 * completion line cut off) into t, which has room for `points`. Returns NULL
 * or what is wrong with the rows. */
static const char *parse_rows(const qt_metadataset_t *md, const qt_md_dataset *dataset, char *rows,
                              size_t points, qt_bench_trajectory *t) {
  size_t hint = 0;
  char *line = rows;
  while (line && *line && t->count < points) {
    char *next = strchr(line, '\n');
    if (next) *next++ = '\0';
    char *field[8], *cursor = line;
    size_t n = 0;
    for (; n < 8 && cursor; n++) {
      field[n] = cursor;
      cursor = strchr(cursor, ',');
      if (cursor) *cursor++ = '\0';
    }
    if (n != 8 || cursor) return "a row without 8 fields";
    qt_bench_point *pt = &t->points[t->count];
    char *end;
    double *numbers[4] = {&pt->time, &pt->score, &pt->incumbent, &pt->overhead};
    const int columns[4] = {0, 1, 2, 4};
    for (int k = 0; k < 4; k++) {
      *numbers[k] = strtod(field[columns[k]], &end);
      if (end == field[columns[k]] || *end) return "a number that does not parse";
    }
    pt->epoch = strtol(field[6], &end, 10);
    if (end == field[6] || *end) return "an epoch that does not parse";
    if (find_candidate(md, dataset, field[5], hint, &pt->candidate) != 0)
      return "a run that is not in the meta-dataset";
    hint = pt->candidate;
    int known = 0;
    for (int k = QT_OBS_STATUS_OK; k <= QT_OBS_STATUS_EXHAUSTED; k++)
      if (strcmp(field[7], qt_obs_status_name((qt_obs_status)k)) == 0) {
        pt->status = (qt_obs_status)k;
        known = 1;
      }
    if (!known) return "an unknown status";
    t->count++;
    line = next;
  }
  return t->count == points ? NULL : "fewer rows than its completion line says";
}

/* Reads a job's trajectory file back into state->trajectories[job]. 1: read;
 * 0: absent, incomplete (no completion line: the writer was killed), written
 * for other parameters or damaged, so that the job runs again (the log says
 * why); negative: out of memory. */
static int read_trajectory(suite_state *state, size_t job, qt_err *err) {
  size_t o, d, s;
  job_indices(state, job, &o, &d, &s);
  const qt_bench_suite_params *p = state->params;
  const qt_md_dataset *dataset = qt_metadataset_dataset(state->md, p->datasets[d]);
  char path[4096], key[2048];
  trajectory_path(state, job, path, sizeof path);
  trajectory_key(state, job, key, sizeof key);
  char *text = NULL;
  size_t length = 0;
  qt_err ignored;
  if (qt_file_read(path, &text, &length, &ignored) != 0) return 0;
  const char *why = NULL;
  size_t key_length = strlen(key);
  double y_best = 0.0, y_worst = 0.0;
  size_t points = 0;
  /* The completion line is the last one. */
  char *last = NULL, *header_end = NULL;
  if (length > 0 && text[length - 1] == '\n') {
    text[length - 1] = '\0';
    last = strrchr(text, '\n');
    header_end = strchr(text, '\n');
  }
  if (!last || strncmp(last + 1, "# qtune bench trajectory", 24) != 0)
    why = "incomplete";
  else if (strncmp(last + 1, key, key_length) != 0 || last[1 + key_length] != ' ')
    why = "written with other parameters";
  else if (sscanf(last + 1 + key_length, " y_best=%lf y_worst=%lf points=%zu", &y_best, &y_worst,
                  &points) != 3)
    why = "damaged (bad completion line)";

  qt_bench_trajectory t;
  memset(&t, 0, sizeof t);
  if (!why) {
    *last = '\0';
    t.points = calloc(points ? points : 1, sizeof *t.points);
    if (!t.points) {
      free(text);
      return qt_err_set(err, QT_ENOMEM, "out of memory reading %s", path);
    }
    t.capacity = points;
    t.budget = p->run.budget;
    t.y_best = y_best;
    t.y_worst = y_worst;
    t.dataset = p->datasets[d];
    t.seed = p->seeds[s];
    why = parse_rows(state->md, dataset, header_end == last ? last : header_end + 1, points, &t);
  }
  free(text);
  if (why) {
    QT_LOG_INFO("bench: resume: %s is %s; running it again", path, why);
    free(t.points);
    return 0;
  }
  state->trajectories[job] = t;
  return 1;
}

/* ------------------------------------------------------------------------- */
/* Aggregation and files                                                      */
/* ------------------------------------------------------------------------- */

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
  state.order = calloc(state.jobs, sizeof *state.order);
  state.resumed = calloc(state.jobs, 1);
  qt_bench_summary *owned = summaries ? NULL : calloc(params->optimizer_count, sizeof *owned);
  if (!state.trajectories || !state.order || !state.resumed || (!summaries && !owned)) {
    free(state.trajectories);
    free(state.order);
    free(state.resumed);
    free(owned);
    return qt_err_set(err, QT_ENOMEM, "out of memory");
  }
  if (!summaries) summaries = owned;
  job_order(&state);

  /* The optimizers' folders first (the workers only write files), then the
   * jobs a previous run of the same suite finished. */
  int rc = 0;
  char dir[4096];
  for (size_t o = 0; rc == 0 && params->out_dir && o < params->optimizer_count; o++) {
    snprintf(dir, sizeof dir, "%s/trajectories/%s", params->out_dir, params->optimizers[o]);
    rc = qt_mkdir_p(dir, err);
  }
  size_t resumed = 0;
  for (size_t job = 0; rc == 0 && params->resume && params->out_dir && job < state.jobs; job++) {
    int read = read_trajectory(&state, job, err);
    if (read < 0) rc = read;
    state.resumed[job] = read == 1;
    resumed += read == 1;
  }
  if (rc != 0) {
    free(state.trajectories);
    free(state.order);
    free(state.resumed);
    free(owned);
    return rc;
  }
  state.to_run = state.jobs - resumed;
  if (params->resume)
    QT_LOG_INFO("bench: resume: %zu of %zu runs read back from %s, %zu to run", resumed,
                state.jobs, params->out_dir ? params->out_dir : "(no --out)", state.to_run);
  pthread_mutex_init(&state.lock, NULL);
  state.start = state.last_report = qt_time_now();

  int threads = params->threads > 0 ? params->threads : 1;
  if ((size_t)threads > state.to_run) threads = state.to_run > 0 ? (int)state.to_run : 1;
  pthread_t *workers = calloc((size_t)threads, sizeof *workers);
  int started = 0;
  if (workers) {
    for (; started < threads; started++)
      if (pthread_create(&workers[started], NULL, suite_worker, &state) != 0) break;
  }
  if (started == 0) suite_worker(&state); /* no thread could start: run here */
  for (int i = 0; i < started; i++) pthread_join(workers[i], NULL);
  free(workers);

  rc = state.rc;
  if (rc != 0 && err) *err = state.err;
  if (rc == 0) rc = aggregate(&state, summaries, err);
  if (rc == 0 && params->out_dir) rc = write_summary(params, summaries, err);

  for (size_t job = 0; job < state.jobs; job++) qt_bench_trajectory_free(&state.trajectories[job]);
  free(state.trajectories);
  free(state.order);
  free(state.resumed);
  free(owned);
  pthread_mutex_destroy(&state.lock);
  return rc;
}

/*
 * qt_bench_folds.c - the meta-training protocol of Quick-Tune's benchmark
 * (specs §1.5): datasets dealt into folds, one surrogate meta-trained per
 * fold without that fold's datasets, each dataset benchmarked with the
 * surrogate that never saw it. qt_bo.h documents the protocol and its files.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bo/qt_bo.h"

qt_bench_folds_params qt_bench_folds_default_params(void) {
  qt_bench_folds_params params;
  memset(&params, 0, sizeof params);
  params.folds = 5;
  params.split_seed = 42;
  params.metatrain = qt_metatrain_default_params();
  return params;
}

int qt_bench_folds_assign(const qt_metadataset_t *md, size_t folds, uint64_t split_seed,
                          size_t *fold_of, qt_err *err) {
  size_t n = qt_metadataset_dataset_count(md);
  if (folds < 2 || folds > n)
    return qt_err_set(err, QT_EINVAL,
                      "meta-training folds: %zu folds for %zu datasets (need 2 <= K <= %zu)",
                      folds, n, n);
  size_t *order = malloc(n * sizeof *order);
  if (!order) return qt_err_set(err, QT_ENOMEM, "out of memory");
  for (size_t i = 0; i < n; i++) order[i] = i;
  qt_rng_t *rng = NULL;
  int rc = qt_rng_init(&rng, split_seed, err);
  if (rc == 0) {
    /* [RECON] Fisher-Yates on the GSL stream: the same idea as Quick-Tune's
     * numpy shuffle with seed 42, not the same permutation. */
    for (size_t i = n; i > 1; i--) {
      size_t j = (size_t)qt_rng_uniform_int(rng, i);
      size_t tmp = order[i - 1];
      order[i - 1] = order[j];
      order[j] = tmp;
    }
    for (size_t i = 0; i < n; i++) fold_of[order[i]] = i % folds;
  }
  qt_rng_free(rng);
  free(order);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Meta-training the folds on threads                                         */
/* ------------------------------------------------------------------------- */

typedef struct folds_state {
  const qt_metadataset_t *md;
  const qt_bench_folds_params *folds;
  const char *out_dir;              /* NULL: no files */
  const size_t *fold_of;            /* (datasets) */
  size_t *todo;                     /* (todo_count) folds to meta-train */
  size_t todo_count;
  size_t next;                      /* under lock */
  qt_surrogate_t **surrogates;      /* (folds) */
  qt_metatrain_report *reports;     /* (folds) */
  int rc;                           /* first failure */
  qt_err err;
  pthread_mutex_t lock;
} folds_state;

/* FNV-1a over every model's name, family and descriptor values. */
static uint64_t descriptor_digest(const qt_descriptor_table_t *table) {
  uint64_t h = 1469598103934665603ull;
  char text[512];
  for (size_t i = 0; i < qt_descriptor_table_count(table); i++) {
    const qt_model_descriptor *d = qt_descriptor_table_at(table, i);
    int n = snprintf(text, sizeof text, "%s %zu", d->name, d->family);
    for (size_t v = 0; v < QT_DESCRIPTOR_NUMERIC_COUNT && n > 0 && (size_t)n < sizeof text; v++)
      n += snprintf(text + n, sizeof text - (size_t)n, " %.17g", d->values[v]);
    for (const char *c = text; *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211ull;
    h = (h ^ '\n') * 1099511628211ull;
  }
  return h;
}

/* The first line of surrogates/fold<f>.csv: everything the fold's
 * meta-training depends on. A fold is reused on resume only when this line
 * matches; a custom network configuration (params.config) is never reused. */
static void fold_key(const folds_state *state, size_t fold, char *key, size_t size) {
  const qt_metatrain_params *m = &state->folds->metatrain;
  size_t used = (size_t)snprintf(
      key, size,
      "# qtune bench fold v1: fold=%zu folds=%zu split_seed=%llu meta_dataset=%s iterations=%ld "
      "batch_size=%zu learning_rate=%.17g min_learning_rate=%.17g cosine=%d "
      "cost_learning_rate=%.17g validation_every=%ld validation_batches=%zu "
      "validation_fraction=%.17g seed=%llu config=%s held_out=",
      fold, state->folds->folds, (unsigned long long)state->folds->split_seed,
      qt_metadataset_name(state->md), m->iterations, m->batch_size, m->learning_rate,
      m->min_learning_rate, m->cosine, m->cost_learning_rate, m->validation_every,
      m->validation_batches, m->validation_fraction, (unsigned long long)m->seed,
      m->config ? "custom" : "default");
  for (size_t d = 0; d < qt_metadataset_dataset_count(state->md) && used < size; d++)
    if (state->fold_of[d] == fold)
      used += (size_t)snprintf(key + used, size - used, "%s,",
                               qt_metadataset_dataset(state->md, d)->name);
  /* Model descriptors: their digest (one-hot keys stay as they were). */
  if (qt_model_codec_mode(m->codec) == QT_MODEL_ENCODING_DESCRIPTORS && used < size)
    snprintf(key + used, size - used, " model_encoding=descriptors:%016llx",
             (unsigned long long)descriptor_digest(qt_model_codec_table(m->codec)));
}

/* Saves a freshly meta-trained fold: surrogates/fold<f>.qts, then
 * surrogates/fold<f>.csv (its key and report), each through a temporary file
 * and a rename, so that the report exists only beside a complete surrogate. */
static int save_fold(const folds_state *state, size_t fold, qt_err *err) {
  char path[4096], tmp[4200], key[4096];
  snprintf(path, sizeof path, "%s/surrogates", state->out_dir);
  int rc = qt_mkdir_p(path, err);
  if (rc != 0) return rc;
  snprintf(path, sizeof path, "%s/surrogates/fold%zu.qts", state->out_dir, fold);
  rc = qt_surrogate_save(state->surrogates[fold], path, err);
  if (rc != 0) return rc;
  snprintf(path, sizeof path, "%s/surrogates/fold%zu.csv", state->out_dir, fold);
  snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid());
  fold_key(state, fold, key, sizeof key);
  FILE *file = fopen(tmp, "w");
  if (!file) return qt_err_set(err, QT_EIO, "%s: %s", tmp, strerror(errno));
  const qt_metatrain_report *r = &state->reports[fold];
  fprintf(file, "%s\n%zu %zu %zu %ld %ld %ld %.17g %.17g %.17g %.17g %.17g %.17g %.17g %.17g\n",
          key, r->train_datasets, r->validation_datasets, r->held_out_datasets, r->iterations,
          r->best_iteration, r->failed_steps, r->final_train_loss, r->validation_mse,
          r->untrained_validation_mse, r->held_out_mse, r->untrained_held_out_mse,
          r->cost_rmse_seconds, r->untrained_cost_rmse_seconds, r->seconds);
  int failed = ferror(file);
  failed |= fflush(file) != 0;
  failed |= fsync(fileno(file)) != 0;
  failed |= fclose(file) != 0;
  if (failed || rename(tmp, path) != 0) {
    int saved = errno;
    unlink(tmp);
    return qt_err_set(err, QT_EIO, "%s: write failed: %s", path, strerror(saved));
  }
  return 0;
}

/* Loads a fold meta-trained by an earlier run of the same protocol. 1:
 * loaded into state->surrogates[fold] and state->reports[fold]; 0: absent,
 * for other parameters or unreadable (the log says why), so it is
 * meta-trained again (same seed, same surrogate). */
static int load_fold(folds_state *state, size_t fold) {
  char path[4096], key[4096];
  snprintf(path, sizeof path, "%s/surrogates/fold%zu.csv", state->out_dir, fold);
  fold_key(state, fold, key, sizeof key);
  char *text = NULL;
  qt_err err;
  qt_err_clear(&err);
  if (qt_file_read(path, &text, NULL, &err) != 0) return 0;
  size_t key_length = strlen(key);
  const char *why = NULL;
  qt_metatrain_report r;
  memset(&r, 0, sizeof r);
  if (strncmp(text, key, key_length) != 0 || text[key_length] != '\n')
    why = "written with other parameters";
  else if (sscanf(text + key_length + 1, "%zu %zu %zu %ld %ld %ld %lf %lf %lf %lf %lf %lf %lf %lf",
                  &r.train_datasets, &r.validation_datasets, &r.held_out_datasets, &r.iterations,
                  &r.best_iteration, &r.failed_steps, &r.final_train_loss, &r.validation_mse,
                  &r.untrained_validation_mse, &r.held_out_mse, &r.untrained_held_out_mse,
                  &r.cost_rmse_seconds, &r.untrained_cost_rmse_seconds, &r.seconds) != 14)
    why = "damaged";
  free(text);
  qt_surrogate_t *surrogate = NULL;
  if (!why) {
    snprintf(path, sizeof path, "%s/surrogates/fold%zu.qts", state->out_dir, fold);
    if (qt_surrogate_load(path, qt_metadataset_space(state->md), &surrogate, &err) != 0) {
      why = qt_err_message(&err);
    } else {
      const qt_surrogate_info *info = qt_surrogate_get_info(surrogate);
      if (info->seed != state->folds->metatrain.seed || info->iterations != r.iterations ||
          info->best_iteration != r.best_iteration)
        why = "not the surrogate its report describes";
    }
  }
  if (why) {
    QT_LOG_INFO("bench: resume: fold %zu in %s/surrogates is %s; meta-training it again", fold,
                state->out_dir, why);
    qt_surrogate_free(surrogate);
    return 0;
  }
  state->surrogates[fold] = surrogate;
  state->reports[fold] = r;
  QT_LOG_INFO("bench: resume: fold %zu's meta-trained surrogate read back from %s", fold, path);
  return 1;
}

static int metatrain_fold(folds_state *state, size_t fold, qt_err *err) {
  size_t n = qt_metadataset_dataset_count(state->md);
  size_t K = state->folds->folds;
  qt_metatrain_role *roles = malloc(n * sizeof *roles);
  if (!roles) return qt_err_set(err, QT_ENOMEM, "out of memory");
  size_t validation = (fold + 1) % K;
  for (size_t d = 0; d < n; d++) {
    size_t f = state->fold_of[d];
    roles[d] = f == fold                  ? QT_METATRAIN_HELD_OUT
               : K > 2 && f == validation ? QT_METATRAIN_VALIDATION
                                          : QT_METATRAIN_TRAIN;
  }
  qt_metatrain_params params = state->folds->metatrain;
  params.roles = roles;
  params.exclude = NULL;
  params.exclude_count = 0;
  /* The callback would run on several threads at once: progress is logged
   * per fold instead. */
  params.progress = NULL;
  params.user = NULL;
  int rc = qt_metatrain(state->md, &params, &state->surrogates[fold], &state->reports[fold], err);
  free(roles);
  if (rc != 0) return qt_err_prefix(err, rc, "meta-training fold %zu", fold);
  /* Saved at once, so that a suite killed later keeps this fold. */
  if (state->out_dir) {
    rc = save_fold(state, fold, err);
    if (rc != 0) return rc;
  }
  const qt_metatrain_report *r = &state->reports[fold];
  QT_LOG_DEBUG("bench: fold %zu meta-trained on %zu datasets (%zu validating) in %.1f s; held-out "
              "next-epoch MSE %.5f untrained, %.5f meta-trained",
              fold, r->train_datasets, r->validation_datasets, r->seconds,
              r->untrained_held_out_mse, r->held_out_mse);
  return 0;
}

static void *folds_worker(void *arg) {
  folds_state *state = arg;
  for (;;) {
    pthread_mutex_lock(&state->lock);
    size_t job = state->next++;
    int stop = job >= state->todo_count || state->rc != 0;
    pthread_mutex_unlock(&state->lock);
    if (stop) return NULL;
    qt_err err;
    qt_err_clear(&err);
    int rc = metatrain_fold(state, state->todo[job], &err);
    if (rc != 0) {
      pthread_mutex_lock(&state->lock);
      if (state->rc == 0) {
        state->rc = rc;
        state->err = err;
      }
      pthread_mutex_unlock(&state->lock);
    }
  }
}

/* ------------------------------------------------------------------------- */
/* Files                                                                      */
/* ------------------------------------------------------------------------- */

/* folds.csv and metatrain.csv (the surrogates were saved as they were
 * meta-trained). */
static int write_fold_files(const qt_metadataset_t *md, const qt_bench_suite_params *params,
                            const qt_bench_folds_params *folds, const size_t *fold_of,
                            const qt_bench_fold_report *reports, qt_err *err) {
  const char *dir = params->out_dir;
  char path[4096];
  int rc = qt_mkdir_p(dir, err);
  if (rc != 0) return rc;
  snprintf(path, sizeof path, "%s/folds.csv", dir);
  FILE *file = fopen(path, "w");
  if (!file) return qt_err_set(err, QT_EIO, "%s: %s", path, strerror(errno));
  fprintf(file, "dataset,fold\n");
  for (size_t d = 0; d < qt_metadataset_dataset_count(md); d++)
    fprintf(file, "%s,%zu\n", qt_metadataset_dataset(md, d)->name, fold_of[d]);
  int failed = ferror(file);
  failed |= fclose(file) != 0;
  if (failed) return qt_err_set(err, QT_EIO, "%s: write failed", path);

  snprintf(path, sizeof path, "%s/metatrain.csv", dir);
  file = fopen(path, "w");
  if (!file) return qt_err_set(err, QT_EIO, "%s: %s", path, strerror(errno));
  fprintf(file, "fold,test_datasets,train_datasets,validation_datasets,held_out_datasets,"
                "iterations,best_iteration,failed_steps,validation_mse,untrained_validation_mse,"
                "held_out_mse,untrained_held_out_mse,cost_rmse_s,untrained_cost_rmse_s,seconds\n");
  for (size_t f = 0; f < folds->folds; f++) {
    const qt_bench_fold_report *fr = &reports[f];
    if (fr->test_datasets == 0) continue;
    const qt_metatrain_report *r = &fr->report;
    fprintf(file, "%zu,%zu,%zu,%zu,%zu,%ld,%ld,%ld,%.6f,%.6f,%.6f,%.6f,%.3f,%.3f,%.1f\n", f,
            fr->test_datasets, r->train_datasets, r->validation_datasets, r->held_out_datasets,
            r->iterations, r->best_iteration, r->failed_steps, r->validation_mse,
            r->untrained_validation_mse, r->held_out_mse, r->untrained_held_out_mse,
            r->cost_rmse_seconds, r->untrained_cost_rmse_seconds, r->seconds);
  }
  failed = ferror(file);
  failed |= fclose(file) != 0;
  if (failed) return qt_err_set(err, QT_EIO, "%s: write failed", path);
  return 0;
}

/* ------------------------------------------------------------------------- */
/* The protocol                                                               */
/* ------------------------------------------------------------------------- */

int qt_bench_suite_run_folds(const qt_metadataset_t *md, const qt_bench_suite_params *params,
                             const qt_bench_folds_params *folds, qt_bench_summary *summaries,
                             qt_bench_fold_report *fold_reports, qt_err *err) {
  if (!md || !params || !folds)
    return qt_err_set(err, QT_EINVAL, "qt_bench_suite_run_folds: NULL argument");
  size_t n = qt_metadataset_dataset_count(md), K = folds->folds;
  /* The suite's own checks, before minutes of meta-training. */
  if (params->optimizer_count == 0 || params->dataset_count == 0 || params->seed_count == 0 ||
      params->grid_points == 0 || !(params->run.budget > 0))
    return qt_err_set(err, QT_EINVAL, "bench: need optimizers, datasets, seeds, a grid and a budget");
  for (size_t d = 0; d < params->dataset_count; d++)
    if (params->datasets[d] >= n)
      return qt_err_set(err, QT_EINVAL, "bench: dataset index %zu out of range", params->datasets[d]);

  folds_state state;
  memset(&state, 0, sizeof state);
  state.md = md;
  state.folds = folds;
  state.out_dir = params->out_dir;
  size_t *fold_of = malloc((n ? n : 1) * sizeof *fold_of);
  size_t *todo = malloc((K ? K : 1) * sizeof *todo);
  qt_surrogate_t **surrogates = calloc(K ? K : 1, sizeof *surrogates);
  qt_metatrain_report *reports = calloc(K ? K : 1, sizeof *reports);
  qt_bench_fold_report *own_reports = calloc(K ? K : 1, sizeof *own_reports);
  const qt_surrogate_t **per_dataset = calloc(params->dataset_count ? params->dataset_count : 1,
                                              sizeof *per_dataset);
  int rc = 0;
  if (!fold_of || !todo || !surrogates || !reports || !own_reports || !per_dataset) {
    rc = qt_err_set(err, QT_ENOMEM, "out of memory");
    goto done;
  }
  rc = qt_bench_folds_assign(md, K, folds->split_seed, fold_of, err);
  if (rc != 0) goto done;

  /* The folds that hold a dataset of the suite. */
  for (size_t f = 0; f < K; f++) own_reports[f].fold = f;
  for (size_t d = 0; d < params->dataset_count; d++) own_reports[fold_of[params->datasets[d]]].test_datasets++;
  state.fold_of = fold_of;
  state.surrogates = surrogates;
  state.reports = reports;
  /* Meta-training is deterministic (same seed, same surrogate file), so a
   * fold saved by an earlier run with the same key is reused on resume. */
  for (size_t f = 0; f < K; f++)
    if (own_reports[f].test_datasets > 0 &&
        !(params->resume && params->out_dir && load_fold(&state, f)))
      todo[state.todo_count++] = f;
  state.todo = todo;
  pthread_mutex_init(&state.lock, NULL);
  int threads = params->threads > 0 ? params->threads : 1;
  if ((size_t)threads > state.todo_count) threads = (int)state.todo_count;
  pthread_t *workers = calloc((size_t)(threads > 0 ? threads : 1), sizeof *workers);
  int started = 0;
  if (workers)
    for (; started < threads; started++)
      if (pthread_create(&workers[started], NULL, folds_worker, &state) != 0) break;
  if (started == 0) folds_worker(&state);
  for (int i = 0; i < started; i++) pthread_join(workers[i], NULL);
  free(workers);
  pthread_mutex_destroy(&state.lock);
  rc = state.rc;
  if (rc != 0) {
    if (err) *err = state.err;
    goto done;
  }
  for (size_t f = 0; f < K; f++)
    if (own_reports[f].test_datasets > 0) own_reports[f].report = reports[f];

  if (params->out_dir) {
    rc = write_fold_files(md, params, folds, fold_of, own_reports, err);
    if (rc != 0) goto done;
  }
  for (size_t d = 0; d < params->dataset_count; d++)
    per_dataset[d] = surrogates[fold_of[params->datasets[d]]];
  qt_bench_suite_params run = *params;
  run.surrogates = per_dataset;
  rc = qt_bench_suite_run(md, &run, summaries, err);

done:
  if (fold_reports && own_reports)
    for (size_t f = 0; f < K; f++) fold_reports[f] = own_reports[f];
  for (size_t f = 0; surrogates && f < K; f++) qt_surrogate_free(surrogates[f]);
  free(fold_of);
  free(todo);
  free(surrogates);
  free(reports);
  free(own_reports);
  free(per_dataset);
  return rc;
}

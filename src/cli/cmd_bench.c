/*
 * cmd_bench.c - `qtune bench`: optimizers compared on replayed learning
 * curves of a meta-dataset (the benchmark of the Quick-Tune paper).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bo/qt_bo.h"
#include "cli/qt_cli.h"
#include "surrogate/qt_surrogate.h"

#define MAX_LIST 64

/* Splits a comma-separated list in place into at most MAX_LIST words. */
static size_t split_list(char *text, char **words) {
  size_t count = 0;
  for (char *word = strtok(text, ","); word && count < MAX_LIST; word = strtok(NULL, ","))
    words[count++] = word;
  return count;
}

/* The dataset indices named by --datasets, or all of them. */
static int resolve_datasets(const qt_cli_args *args, const qt_metadataset_t *md, size_t **out,
                            size_t *count) {
  size_t total = qt_metadataset_dataset_count(md);
  const char *list = qt_cli_get(args, "datasets");
  char buf[4096], *words[MAX_LIST];
  snprintf(buf, sizeof buf, "%s", list ? list : "");
  *count = list ? split_list(buf, words) : total;
  *out = calloc(*count ? *count : 1, sizeof **out);
  if (!*out) return QT_CLI_EXIT_FAILURE;
  for (size_t i = 0; i < *count; i++) {
    if (!list)
      (*out)[i] = i;
    else if (qt_metadataset_find_dataset(md, words[i], &(*out)[i]) != 0)
      return qt_cli_usage_error(args->command, "--datasets: no dataset '%s' in the meta-dataset",
                                words[i]);
  }
  return 0;
}

/* A surrogate from elsewhere may have seen some of the benchmark's datasets
 * in meta-training; their results would then be optimistic. Says so. */
static void warn_seen_datasets(const qt_surrogate_t *surrogate, const char *path,
                               const qt_metadataset_t *md, const size_t *datasets, size_t count) {
  const qt_surrogate_info *info = qt_surrogate_get_info(surrogate);
  for (size_t i = 0; i < count; i++) {
    const char *name = qt_metadataset_dataset(md, datasets[i])->name;
    int seen = 0;
    for (size_t k = 0; k < info->train_count; k++) seen |= strcmp(info->train_datasets[k], name) == 0;
    for (size_t k = 0; k < info->validation_count; k++)
      seen |= strcmp(info->validation_datasets[k], name) == 0;
    if (seen)
      fprintf(stderr,
              "qtune bench: warning: %s was meta-trained on dataset %s (of meta-dataset \"%s\"); "
              "its results there are optimistic (meta train --exclude-datasets %s)\n",
              path, name, info->meta_dataset ? info->meta_dataset : "?", name);
  }
}

int qt_cli_bench(const qt_cli_args *args) {
  const char *dir = qt_cli_get(args, "meta-dataset");
  const char *list = qt_cli_get(args, "optimizers");
  const char *budget_text = qt_cli_get(args, "budget");
  if (!dir || !list || !budget_text)
    return qt_cli_usage_error(args->command, "--meta-dataset, --optimizers and --budget are required");
  const char *folds_text = qt_cli_get(args, "meta-train-folds");
  const char *surrogate_path = qt_cli_get(args, "surrogate");
  if (folds_text && surrogate_path)
    return qt_cli_usage_error(args->command,
                              "--meta-train-folds and --surrogate exclude each other: meta-train "
                              "per fold, or test one surrogate trained elsewhere");

  qt_err err;
  qt_bench_folds_params folds = qt_bench_folds_default_params();
  long value;
  if (folds_text) {
    if (qt_parse_long(folds_text, &value) != 0 || value < 2 || value > 1000)
      return qt_cli_usage_error(args->command, "--meta-train-folds wants a number >= 2, not '%s'",
                                folds_text);
    folds.folds = (size_t)value;
  }
  const char *iterations = qt_cli_get(args, "meta-train-iterations");
  if (iterations) {
    if (!folds_text)
      return qt_cli_usage_error(args->command, "--meta-train-iterations needs --meta-train-folds");
    if (qt_parse_long(iterations, &value) != 0 || value < 1)
      return qt_cli_usage_error(args->command,
                                "--meta-train-iterations wants a number >= 1, not '%s'", iterations);
    folds.metatrain.iterations = value;
  }
  qt_bench_suite_params params = qt_bench_suite_default_params();
  if (qt_duration_parse(budget_text, &params.run.budget, &err) != 0)
    return qt_cli_usage_error(args->command, "--budget: %s", qt_err_message(&err));
  /* measured: wall-clock seconds; cpu: the optimizer thread's CPU seconds
   * (not inflated by other processes on a shared machine); ignore: none. */
  const char *overhead = qt_cli_get(args, "overhead");
  if (overhead && strcmp(overhead, "measured") != 0 && strcmp(overhead, "cpu") != 0 &&
      strcmp(overhead, "ignore") != 0)
    return qt_cli_usage_error(args->command, "--overhead is measured, cpu or ignore, not '%s'",
                              overhead);
  params.run.charge_overhead = !overhead || strcmp(overhead, "ignore") != 0;
  params.run.overhead_cpu = overhead && strcmp(overhead, "cpu") == 0;
  /* Quick-Tune's training rows: all (default, as Quick-Tune) or a cap. */
  const char *max_rows = qt_cli_get(args, "max-train-rows");
  if (max_rows) {
    if (qt_parse_long(max_rows, &value) != 0 || value < 0)
      return qt_cli_usage_error(args->command, "--max-train-rows wants a number >= 0, not '%s'",
                                max_rows);
    params.run.optimizer.quicktune.max_train_rows = (size_t)value;
  }
  /* Quick-Tune's refit: Adam steps of a restart and of a warm start. */
  const char *refit = qt_cli_get(args, "refit-steps");
  if (refit) {
    char *end = NULL;
    long restart = strtol(refit, &end, 10), refine = -1;
    if (end != refit && *end == ',') {
      const char *second = end + 1;
      refine = strtol(second, &end, 10);
      if (end == second || *end) refine = -1;
    }
    if (restart < 1 || restart > 1000000 || refine < 1 || refine > 1000000)
      return qt_cli_usage_error(args->command,
                                "--refit-steps wants RESTART,REFINE (two numbers >= 1), not '%s'",
                                refit);
    params.run.optimizer.quicktune.restart_steps = (int)restart;
    params.run.optimizer.quicktune.refine_steps = (int)refine;
  }
  const char *threads = qt_cli_get(args, "threads");
  if (threads) {
    if (qt_parse_long(threads, &value) != 0 || value < 1 || value > 256)
      return qt_cli_usage_error(args->command, "--threads wants 1..256, not '%s'", threads);
    params.threads = (int)value;
  }

  char names_buf[4096], *names[MAX_LIST];
  snprintf(names_buf, sizeof names_buf, "%s", list);
  params.optimizer_count = split_list(names_buf, names);
  params.optimizers = (const char *const *)names;
  for (size_t o = 0; o < params.optimizer_count; o++) {
    int known = 0;
    for (const char *const *n = qt_optimizer_names(); *n; n++) known |= strcmp(*n, names[o]) == 0;
    if (!known) return qt_cli_usage_error(args->command, "unknown optimizer '%s'", names[o]);
  }
  int uses_surrogate = 0;
  for (size_t o = 0; o < params.optimizer_count; o++)
    uses_surrogate |= qt_optimizer_uses_surrogate(names[o]);
  if (uses_surrogate && !folds_text && !surrogate_path)
    return qt_cli_usage_error(args->command,
                              "quicktune, quicktune-M and quicktune-C need a meta-trained "
                              "surrogate: --meta-train-folds K (meta-train one per fold here) or "
                              "--surrogate FILE (made by `qtune meta train --meta-dataset DIR "
                              "--out FILE --exclude-datasets ...`); quicktune-MC needs none");

  uint64_t *seeds = NULL;
  if (qt_bench_parse_seeds(qt_cli_get(args, "seeds") ? qt_cli_get(args, "seeds") : "0", &seeds,
                           &params.seed_count, &err) != 0)
    return qt_cli_usage_error(args->command, "--seeds: %s", qt_err_message(&err));
  params.seeds = seeds;
  params.out_dir = qt_cli_get(args, "out");
  /* --resume: jobs (and folds) finished by an earlier run with the same
   * parameters are read back from --out instead of run again. */
  params.resume = qt_cli_get(args, "resume") != NULL;
  if (params.resume && !params.out_dir) {
    free(seeds);
    return qt_cli_usage_error(args->command, "--resume needs --out DIR (the folder to continue)");
  }

  qt_metadataset_t *md = NULL;
  qt_model_codec_t *codec = NULL;
  qt_surrogate_t *surrogate = NULL;
  size_t *datasets = NULL;
  qt_bench_summary summaries[MAX_LIST];
  qt_bench_fold_report *fold_reports = NULL;
  int status = QT_CLI_EXIT_OK;
  if (qt_metadataset_load(dir, &md, &err) != 0) {
    status = qt_cli_fail(args->command, &err);
    goto done;
  }
  status = resolve_datasets(args, md, &datasets, &params.dataset_count);
  if (status != 0) goto done;
  params.datasets = datasets;
  if (qt_cli_get(args, "model-encoding") && !folds_text) {
    status = qt_cli_usage_error(args->command,
                                "--model-encoding needs --meta-train-folds (a surrogate file "
                                "brings its own encoding)");
    goto done;
  }
  if (folds_text) {
    status = qt_cli_model_codec(args, md, &codec);
    if (status != 0) goto done;
    /* One-hot is meta-training's default: no codec, the same fold files. */
    if (qt_model_codec_mode(codec) == QT_MODEL_ENCODING_DESCRIPTORS) folds.metatrain.codec = codec;
  }
  if (folds_text && folds.folds > qt_metadataset_dataset_count(md)) {
    status = qt_cli_usage_error(args->command, "--meta-train-folds %zu: the meta-dataset has %zu "
                                "datasets", folds.folds, qt_metadataset_dataset_count(md));
    goto done;
  }
  if (surrogate_path) {
    if (qt_surrogate_load(surrogate_path, qt_metadataset_space(md), &surrogate, &err) != 0) {
      status = qt_cli_fail(args->command, &err);
      goto done;
    }
    params.run.optimizer.surrogate = surrogate;
    warn_seen_datasets(surrogate, surrogate_path, md, datasets, params.dataset_count);
  }

  char budget_buf[32];
  qt_duration_format(params.run.budget, budget_buf, sizeof budget_buf);
  printf("bench: %zu optimizers x %zu datasets x %zu seeds on %s, budget %s, %d threads%s\n",
         params.optimizer_count, params.dataset_count, params.seed_count, qt_metadataset_name(md),
         budget_buf, params.threads, params.resume ? ", resuming" : "");
  double start = qt_time_now();
  int rc;
  if (folds_text && uses_surrogate) {
    printf("bench: meta-training one surrogate per fold (%zu folds, %ld iterations each, model "
           "encoding %s) ...\n",
           folds.folds, folds.metatrain.iterations,
           qt_model_encoding_name(qt_model_codec_mode(folds.metatrain.codec)));
    fflush(stdout);
    fold_reports = calloc(folds.folds, sizeof *fold_reports);
    if (!fold_reports) {
      status = QT_CLI_EXIT_FAILURE;
      goto done;
    }
    rc = qt_bench_suite_run_folds(md, &params, &folds, summaries, fold_reports, &err);
  } else {
    if (folds_text)
      printf("bench: no optimizer of the list uses a surrogate; nothing to meta-train\n");
    rc = qt_bench_suite_run(md, &params, summaries, &err);
  }
  if (rc != 0) {
    status = qt_cli_fail(args->command, &err);
    goto done;
  }
  for (size_t f = 0; fold_reports && f < folds.folds; f++) {
    const qt_bench_fold_report *fr = &fold_reports[f];
    if (fr->test_datasets == 0) continue;
    printf("fold %zu: %zu test datasets; meta-trained on %zu (+%zu validating) in %.0f s; "
           "held-out next-epoch MSE %.5f untrained -> %.5f meta-trained\n",
           f, fr->test_datasets, fr->report.train_datasets, fr->report.validation_datasets,
           fr->report.seconds, fr->report.untrained_held_out_mse, fr->report.held_out_mse);
  }
  printf("\nmean normalized regret (95%% half-width) at 10%%, 50%%, 100%% of %s; final mean rank\n",
         budget_buf);
  printf("%-14s %-17s %-17s %-17s %6s %8s %10s\n", "optimizer", "10%", "50%", "100%", "rank",
         "epochs", "overhead");
  for (size_t o = 0; o < params.optimizer_count; o++) {
    const qt_bench_summary *s = &summaries[o];
    printf("%-14s %.4f (%.4f)   %.4f (%.4f)   %.4f (%.4f)   %6.2f %8.1f %9.2e%%\n", names[o],
           s->regret[0], s->regret_ci[0], s->regret[1], s->regret_ci[1], s->regret[2],
           s->regret_ci[2], s->final_rank, s->epochs, 100.0 * s->overhead_share);
  }
  printf("\nbench: done in %.1f s", qt_time_now() - start);
  if (params.out_dir)
    printf("; results in %s (plot them with tools/plot-regret %s)", params.out_dir, params.out_dir);
  printf("\n");
done:
  free(fold_reports);
  free(datasets);
  free(seeds);
  qt_surrogate_free(surrogate);
  qt_model_codec_free(codec);
  qt_metadataset_free(md);
  return status;
}

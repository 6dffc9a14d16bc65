/*
 * cmd_bench.c - `qtune bench`: optimizers compared on replayed learning
 * curves of a meta-dataset (the benchmark of the Quick-Tune paper).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bo/qt_bo.h"
#include "cli/qt_cli.h"

#define MAX_LIST 64

/* Splits a comma-separated list in place into at most MAX_LIST words. */
static size_t split_list(char *text, char **words) {
  size_t count = 0;
  for (char *word = strtok(text, ","); word && count < MAX_LIST; word = strtok(NULL, ","))
    words[count++] = word;
  return count;
}

static int resolve_datasets(const qt_cli_args *args, const qt_metadataset_t *md, size_t **out,
                            size_t *count) {
  size_t total = qt_metadataset_dataset_count(md);
  *out = calloc(total ? total : 1, sizeof **out);
  if (!*out) return QT_CLI_EXIT_FAILURE;
  const char *list = qt_cli_get(args, "datasets");
  if (!list) {
    for (size_t d = 0; d < total; d++) (*out)[d] = d;
    *count = total;
    return 0;
  }
  char buf[4096], *words[MAX_LIST];
  snprintf(buf, sizeof buf, "%s", list);
  *count = split_list(buf, words);
  for (size_t i = 0; i < *count; i++) {
    if (i >= total || qt_metadataset_find_dataset(md, words[i], &(*out)[i]) != 0)
      return qt_cli_usage_error(args->command, "--datasets: no dataset '%s' in the meta-dataset",
                                words[i]);
  }
  return 0;
}

int qt_cli_bench(const qt_cli_args *args) {
  const char *dir = qt_cli_get(args, "meta-dataset");
  const char *list = qt_cli_get(args, "optimizers");
  const char *budget_text = qt_cli_get(args, "budget");
  if (!dir || !list || !budget_text)
    return qt_cli_usage_error(args->command, "--meta-dataset, --optimizers and --budget are required");
  if (qt_cli_get(args, "meta-train-folds") || qt_cli_get(args, "surrogate")) {
    fprintf(stderr, "qtune bench: --meta-train-folds and --surrogate belong to the quicktune "
                    "optimizer, which is not implemented yet.\n");
    return QT_CLI_EXIT_NOT_IMPLEMENTED;
  }

  qt_err err;
  qt_bench_suite_params params = qt_bench_suite_default_params();
  if (qt_duration_parse(budget_text, &params.run.budget, &err) != 0)
    return qt_cli_usage_error(args->command, "--budget: %s", qt_err_message(&err));
  const char *overhead = qt_cli_get(args, "overhead");
  if (overhead && strcmp(overhead, "measured") != 0 && strcmp(overhead, "ignore") != 0)
    return qt_cli_usage_error(args->command, "--overhead is measured or ignore, not '%s'", overhead);
  params.run.charge_overhead = !overhead || strcmp(overhead, "measured") == 0;
  const char *threads = qt_cli_get(args, "threads");
  long value;
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

  uint64_t *seeds = NULL;
  if (qt_bench_parse_seeds(qt_cli_get(args, "seeds") ? qt_cli_get(args, "seeds") : "0", &seeds,
                           &params.seed_count, &err) != 0)
    return qt_cli_usage_error(args->command, "--seeds: %s", qt_err_message(&err));
  params.seeds = seeds;
  params.out_dir = qt_cli_get(args, "out");

  qt_metadataset_t *md = NULL;
  size_t *datasets = NULL;
  qt_bench_summary summaries[MAX_LIST];
  int status = QT_CLI_EXIT_OK;
  if (qt_metadataset_load(dir, &md, &err) != 0) {
    status = qt_cli_fail(args->command, &err);
    goto done;
  }
  status = resolve_datasets(args, md, &datasets, &params.dataset_count);
  if (status != 0) goto done;
  params.datasets = datasets;

  char budget_buf[32];
  qt_duration_format(params.run.budget, budget_buf, sizeof budget_buf);
  printf("bench: %zu optimizers x %zu datasets x %zu seeds on %s, budget %s, %d threads\n",
         params.optimizer_count, params.dataset_count, params.seed_count, qt_metadataset_name(md),
         budget_buf, params.threads);
  double start = qt_time_now();
  if (qt_bench_suite_run(md, &params, summaries, &err) != 0) {
    status = qt_cli_fail(args->command, &err);
    goto done;
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
  free(datasets);
  free(seeds);
  qt_metadataset_free(md);
  return status;
}

/*
 * cmd_meta.c - `qtune meta ...`: meta-datasets from the command line:
 * `meta import`, which converts Quick-Tune's layout to the native folder, and
 * `meta train`, which meta-trains the surrogates and writes a surrogate file.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/qt_cli.h"
#include "metadata/qt_metadata.h"
#include "surrogate/qt_surrogate.h"

/* ------------------------------------------------------------------------- */
/* meta import                                                                */
/* ------------------------------------------------------------------------- */

#define QT_DEFAULT_IMPORT_SPACE "configs/spaces/quicktune-v1.yaml"

/* The space Quick-Tune's runs were sampled from: the shipped file, found
 * from the working directory (a clone) or else from the source tree this
 * binary was built from. */
static const char *default_space(char *buf, size_t size) {
  if (access(QT_DEFAULT_IMPORT_SPACE, R_OK) == 0) return QT_DEFAULT_IMPORT_SPACE;
  snprintf(buf, size, "%s/%s", QT_SOURCE_DIR, QT_DEFAULT_IMPORT_SPACE);
  return buf;
}

int qt_cli_meta_import(const qt_cli_args *args) {
  const qt_cli_command *command = args->command;
  const char *format = qt_cli_get(args, "format");
  const char *out_dir = qt_cli_get(args, "out");
  const char *space = qt_cli_get(args, "space");
  const char *src = args->positional[0];
  if (!format) return qt_cli_usage_error(command, "--format is required (quicktune)");
  if (strcmp(format, "quicktune") != 0)
    return qt_cli_usage_error(command, "unknown --format '%s' (known: quicktune)", format);
  if (!out_dir) return qt_cli_usage_error(command, "--out DIR is required");
  char space_buf[4096];
  if (!space) space = default_space(space_buf, sizeof space_buf);

  qt_err err;
  qt_err_clear(&err);
  qt_metadataset_t *md = NULL, *reloaded = NULL;
  int status = QT_CLI_EXIT_OK;
  if (qt_metadataset_import_quicktune(src, space, &md, &err) < 0) return qt_cli_fail(command, &err);
  printf("imported %s (Quick-Tune layout) as \"%s\", search space \"%s\"\n", src,
         qt_metadataset_name(md), qt_space_name(qt_metadataset_space(md)));
  printf("  %zu datasets, %zu runs, %zu points; every configuration is valid for the space\n",
         qt_metadataset_dataset_count(md), qt_metadataset_run_count(md),
         qt_metadataset_point_count(md));

  /* The written folder is read back and compared, so that a successful
   * import guarantees a folder that loads with the same content. */
  if (qt_metadataset_save(md, out_dir, &err) < 0 ||
      qt_metadataset_load(out_dir, &reloaded, &err) < 0 ||
      qt_metadataset_compare(md, reloaded, &err) < 0) {
    status = qt_cli_fail(command, &err);
  } else {
    printf(
        "wrote %s (metadataset.yaml, space.yaml, datasets.csv, runs.csv, curves.csv); it "
        "loads back identical\n",
        out_dir);
  }
  qt_metadataset_free(reloaded);
  qt_metadataset_free(md);
  return status;
}

/* ------------------------------------------------------------------------- */
/* meta train                                                                 */
/* ------------------------------------------------------------------------- */

#define MAX_EXCLUDED 256

static void print_progress(const qt_metatrain_progress *p, void *user) {
  (void)user;
  printf(
      "  iteration %6ld/%ld  lr %.2e  train -MLL/n %8.4f  cost MSE %.5f  val MSE %.5f "
      "(best %.5f)  %6.1fs\n",
      p->iteration, p->iterations, p->learning_rate, p->train_loss, p->cost_loss, p->validation_mse,
      p->best_validation_mse, p->seconds);
  fflush(stdout);
}

/* "a, b, c" for a list of names, or "(none)". */
static void print_names(const char *label, const char *const *names, size_t count) {
  printf("  %-11s %zu:", label, count);
  if (count == 0) printf(" (none)");
  for (size_t i = 0; i < count; i++) printf("%s %s", i ? "," : "", names[i]);
  printf("\n");
}

int qt_cli_meta_train(const qt_cli_args *args) {
  const qt_cli_command *command = args->command;
  const char *dir = qt_cli_get(args, "meta-dataset");
  const char *out_path = qt_cli_get(args, "out");
  const char *exclude = qt_cli_get(args, "exclude-datasets");
  const char *iterations_text = qt_cli_get(args, "iterations");
  const char *seed_text = qt_cli_get(args, "seed");
  if (!dir) return qt_cli_usage_error(command, "--meta-dataset DIR is required");
  if (!out_path) return qt_cli_usage_error(command, "--out FILE is required");

  qt_metatrain_params params = qt_metatrain_default_params();
  long value = 0;
  if (iterations_text &&
      (qt_parse_long(iterations_text, &value) != 0 || value < 1 || value > 100000000))
    return qt_cli_usage_error(command, "--iterations must be a whole number >= 1, not '%s'",
                              iterations_text);
  if (iterations_text) params.iterations = value;
  const char *rate_text = qt_cli_get(args, "learning-rate");
  double rate = 0.0;
  if (rate_text && (qt_parse_double(rate_text, &rate) != 0 || !(rate > 0.0) || rate > 1.0))
    return qt_cli_usage_error(command, "--learning-rate must be a number in (0, 1], not '%s'",
                              rate_text);
  if (rate_text) params.learning_rate = rate;
  if (params.min_learning_rate > params.learning_rate)
    params.min_learning_rate = params.learning_rate;
  if (seed_text && (qt_parse_long(seed_text, &value) != 0 || value < 0))
    return qt_cli_usage_error(command, "--seed must be a whole number >= 0, not '%s'", seed_text);
  if (seed_text) params.seed = (uint64_t)value;
  char exclude_buf[8192];
  const char *excluded[MAX_EXCLUDED];
  if (exclude) {
    snprintf(exclude_buf, sizeof exclude_buf, "%s", exclude);
    for (char *word = strtok(exclude_buf, ","); word; word = strtok(NULL, ",")) {
      if (params.exclude_count == MAX_EXCLUDED)
        return qt_cli_usage_error(command, "--exclude-datasets names more than %d datasets",
                                  MAX_EXCLUDED);
      excluded[params.exclude_count++] = word;
    }
    params.exclude = excluded;
  }
  /* About 10 progress lines, at most every 500 iterations. */
  params.progress_every = params.iterations >= 5000 ? 500 : (params.iterations + 9) / 10;
  params.progress = print_progress;

  qt_err err;
  qt_err_clear(&err);
  qt_metadataset_t *md = NULL;
  if (qt_metadataset_load(dir, &md, &err) != 0) return qt_cli_fail(command, &err);
  for (size_t i = 0; i < params.exclude_count; i++) {
    size_t index;
    if (qt_metadataset_find_dataset(md, excluded[i], &index) != 0) {
      qt_metadataset_free(md);
      return qt_cli_usage_error(command, "--exclude-datasets: no dataset '%s' in %s", excluded[i],
                                dir);
    }
  }
  const qt_space_t *space = qt_metadataset_space(md);
  printf(
      "meta-training on \"%s\" (%zu datasets, %zu runs), space \"%s\" (%zu encoded columns), "
      "%ld iterations, learning rate %g, seed %llu\n",
      qt_metadataset_name(md), qt_metadataset_dataset_count(md), qt_metadataset_run_count(md),
      qt_space_name(space), qt_space_encoded_dim(space), params.iterations, params.learning_rate,
      (unsigned long long)params.seed);
  fflush(stdout);

  qt_surrogate_t *surrogate = NULL;
  qt_metatrain_report report;
  int status = QT_CLI_EXIT_OK;
  if (qt_metatrain(md, &params, &surrogate, &report, &err) != 0 ||
      qt_surrogate_save(surrogate, out_path, &err) != 0) {
    status = qt_cli_fail(command, &err);
  } else {
    const qt_surrogate_info *info = qt_surrogate_get_info(surrogate);
    printf("datasets\n");
    print_names("training", info->train_datasets, info->train_count);
    print_names("validation", info->validation_datasets, info->validation_count);
    print_names("held out", info->excluded_datasets, info->excluded_count);
    printf(
        "next-epoch score MSE (GP conditioned on 32 rows, predicting 32 others of the same "
        "dataset)\n");
    printf("  validation  untrained %.5f  meta-trained %.5f  (kept iteration %ld of %ld)\n",
           report.untrained_validation_mse, report.validation_mse, report.best_iteration,
           report.iterations);
    if (report.held_out_datasets > 0)
      printf("  held out    untrained %.5f  meta-trained %.5f\n", report.untrained_held_out_mse,
             report.held_out_mse);
    printf("next-epoch cost RMSE on validation queries: untrained %.1fs, meta-trained %.1fs\n",
           report.untrained_cost_rmse_seconds, report.cost_rmse_seconds);
    printf("%ld iterations in %.1fs (%.0f iterations/s incl. validation)%s\n", report.iterations,
           report.seconds, report.seconds > 0.0 ? (double)report.iterations / report.seconds : 0.0,
           report.failed_steps ? "" : ", no failed steps");
    if (report.failed_steps)
      printf("  %ld steps were skipped after a numerical failure\n", report.failed_steps);
    printf("wrote %s (surrogate for space \"%s\", encoding hash %016llx)\n", out_path,
           info->space_name, (unsigned long long)info->space_hash);
  }
  qt_surrogate_free(surrogate);
  qt_metadataset_free(md);
  return status;
}

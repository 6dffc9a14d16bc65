/*
 * cmd_meta.c - `qtune meta ...`: meta-datasets from the command line:
 * `meta import`, which converts Quick-Tune's layout to the native folder, and
 * `meta train`, which meta-trains the surrogates and writes a surrogate file,
 * and `meta collect`, which fine-tunes sampled configurations on a task
 * family and writes a meta-dataset (src/bo/qt_collect.c).
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bo/qt_bo.h"
#include "cli/qt_cli.h"
#include "finetune/qt_finetune.h"
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

/* --model-encoding, --descriptors and --hub (meta train, bench): the codec
 * that encodes the models of md's runs, checked to know every one of them.
 * 0, or the exit status of a usage error or a failure (printed). */
int qt_cli_model_codec(const qt_cli_args *args, const qt_metadataset_t *md,
                       qt_model_codec_t **out) {
  const qt_cli_command *command = args->command;
  const char *encoding_text = qt_cli_get(args, "model-encoding");
  const char *descriptors = qt_cli_get(args, "descriptors");
  const char *hub = qt_cli_get(args, "hub");
  qt_model_encoding encoding = QT_MODEL_ENCODING_ONEHOT;
  *out = NULL;
  if (encoding_text && qt_model_encoding_parse(encoding_text, &encoding, NULL) != 0)
    return qt_cli_usage_error(command, "--model-encoding must be onehot or descriptors, not '%s'",
                              encoding_text);
  if (encoding == QT_MODEL_ENCODING_ONEHOT && (descriptors || hub))
    return qt_cli_usage_error(command, "--descriptors and --hub need --model-encoding descriptors");
  if (encoding == QT_MODEL_ENCODING_DESCRIPTORS && !descriptors && !hub)
    return qt_cli_usage_error(command,
                              "--model-encoding descriptors needs --descriptors FILE (e.g. "
                              "configs/model-descriptors/quicktune.yaml) or --hub FILE");
  qt_err err;
  qt_err_clear(&err);
  if (qt_model_codec_load(encoding, descriptors, hub, out, &err) != 0 ||
      qt_model_codec_check_metadataset(*out, md, &err) != 0) {
    qt_model_codec_free(*out);
    *out = NULL;
    return qt_cli_fail(command, &err);
  }
  return 0;
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
  qt_model_codec_t *codec = NULL;
  if (qt_metadataset_load(dir, &md, &err) != 0) return qt_cli_fail(command, &err);
  int status = qt_cli_model_codec(args, md, &codec);
  if (status != 0) {
    qt_metadataset_free(md);
    return status;
  }
  qt_model_encoding encoding = qt_model_codec_mode(codec);
  params.codec = codec;
  for (size_t i = 0; i < params.exclude_count; i++) {
    size_t index;
    if (qt_metadataset_find_dataset(md, excluded[i], &index) != 0) {
      qt_model_codec_free(codec);
      qt_metadataset_free(md);
      return qt_cli_usage_error(command, "--exclude-datasets: no dataset '%s' in %s", excluded[i],
                                dir);
    }
  }
  const qt_space_t *space = qt_metadataset_space(md);
  printf(
      "meta-training on \"%s\" (%zu datasets, %zu runs), space \"%s\" (%zu encoded columns, "
      "model encoding %s), %ld iterations, learning rate %g, seed %llu\n",
      qt_metadataset_name(md), qt_metadataset_dataset_count(md), qt_metadataset_run_count(md),
      qt_space_name(space), qt_model_encoded_dim(encoding, space), qt_model_encoding_name(encoding),
      params.iterations, params.learning_rate, (unsigned long long)params.seed);
  fflush(stdout);

  qt_surrogate_t *surrogate = NULL;
  qt_metatrain_report report;
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
    printf("wrote %s (surrogate for space \"%s\", model encoding %s, encoding hash %016llx)\n",
           out_path, info->space_name, qt_model_encoding_name(info->model_encoding),
           (unsigned long long)info->space_hash);
  }
  qt_surrogate_free(surrogate);
  qt_model_codec_free(codec);
  qt_metadataset_free(md);
  return status;
}

/* ------------------------------------------------------------------------- */
/* meta collect                                                               */
/* ------------------------------------------------------------------------- */

/* A shipped file (configs/...) from the working directory, else from the
 * source tree this binary was built from. */
static const char *shipped(const char *relative, char *buf, size_t size) {
  if (access(relative, R_OK) == 0) return relative;
  snprintf(buf, size, "%s/%s", QT_SOURCE_DIR, relative);
  return buf;
}

static int compare_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int ends_with(const char *text, const char *suffix) {
  size_t n = strlen(text), m = strlen(suffix);
  return n >= m && strcmp(text + n - m, suffix) == 0;
}

/* The task files of --tasks: a folder's *.yaml in name order, or a
 * comma-separated list of files. *out (and each string) is malloc'ed. */
static int task_files(const char *spec, char ***out, size_t *count, qt_err *err) {
  *out = NULL;
  *count = 0;
  size_t cap = 16;
  char **files = malloc(cap * sizeof *files);
  if (!files) return qt_err_set(err, QT_ENOMEM, "out of memory");
  DIR *dir = opendir(spec);
  if (dir) {
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
      if (e->d_name[0] == '.' || !ends_with(e->d_name, ".yaml")) continue;
      if (*count == cap) {
        char **bigger = realloc(files, 2 * cap * sizeof *files);
        if (!bigger) break;
        files = bigger;
        cap *= 2;
      }
      size_t len = strlen(spec) + strlen(e->d_name) + 2;
      files[*count] = malloc(len);
      if (!files[*count]) break;
      snprintf(files[*count], len, "%s/%s", spec, e->d_name);
      (*count)++;
    }
    closedir(dir);
    qsort(files, *count, sizeof *files, compare_names);
  } else {
    const char *p = spec;
    while (*p) {
      const char *comma = strchr(p, ',');
      size_t len = comma ? (size_t)(comma - p) : strlen(p);
      if (len > 0) {
        if (*count == cap) {
          char **bigger = realloc(files, 2 * cap * sizeof *files);
          if (!bigger) break;
          files = bigger;
          cap *= 2;
        }
        files[*count] = malloc(len + 1);
        if (!files[*count]) break;
        memcpy(files[*count], p, len);
        files[*count][len] = '\0';
        (*count)++;
      }
      p = comma ? comma + 1 : p + len;
    }
  }
  *out = files;
  if (*count == 0)
    return qt_err_set(err, QT_ENOENT, "--tasks %s: no task file (*.yaml) found", spec);
  return 0;
}

static int parse_positive(const qt_cli_command *command, const char *flag, const char *text,
                          long *out) {
  long v = 0;
  if (qt_parse_long(text, &v) != 0 || v < 1)
    return qt_cli_usage_error(command, "--%s must be a whole number >= 1, got '%s'", flag, text);
  *out = v;
  return 0;
}

int qt_cli_meta_collect(const qt_cli_args *args) {
  const qt_cli_command *command = args->command;
  qt_collect_params p = qt_collect_default_params();
  char hub_buf[4096], space_buf[4096];
  const char *text;
  p.hub = qt_cli_get(args, "hub");
  if (!p.hub) p.hub = shipped("configs/hubs/default.yaml", hub_buf, sizeof hub_buf);
  p.space = qt_cli_get(args, "space");
  if (!p.space) p.space = shipped("configs/spaces/default.yaml", space_buf, sizeof space_buf);
  p.out_dir = qt_cli_get(args, "out");
  p.name = qt_cli_get(args, "name");
  const char *tasks = qt_cli_get(args, "tasks");
  if (!tasks) return qt_cli_usage_error(command, "--tasks DIR|FILES is required");
  if (!p.out_dir) return qt_cli_usage_error(command, "--out DIR is required");
  if (!(text = qt_cli_get(args, "runs-per-task")))
    return qt_cli_usage_error(command, "--runs-per-task N is required");
  if (parse_positive(command, "runs-per-task", text, &p.runs_per_task)) return QT_CLI_EXIT_USAGE;
  if (!(text = qt_cli_get(args, "max-epochs")))
    return qt_cli_usage_error(command, "--max-epochs N is required");
  if (parse_positive(command, "max-epochs", text, &p.max_epochs)) return QT_CLI_EXIT_USAGE;
  long v = 0;
  if ((text = qt_cli_get(args, "jobs"))) {
    if (parse_positive(command, "jobs", text, &v)) return QT_CLI_EXIT_USAGE;
    p.jobs = (int)(v > 256 ? 256 : v);
  }
  if ((text = qt_cli_get(args, "threads"))) {
    if (parse_positive(command, "threads", text, &v)) return QT_CLI_EXIT_USAGE;
    p.threads = (int)(v > 64 ? 64 : v);
  }
  if ((text = qt_cli_get(args, "seed"))) {
    char *end = NULL;
    errno = 0;
    unsigned long long seed = strtoull(text, &end, 10);
    if (end == text || *end != '\0' || text[0] == '-' || errno == ERANGE)
      return qt_cli_usage_error(command, "--seed must be a whole number >= 0, got '%s'", text);
    p.seed = seed;
  }
  p.assemble_only = qt_cli_get(args, "assemble-only") != NULL;
  qt_err err;
  qt_err_clear(&err);
  /* cpu unless asked: a meta-dataset's costs are one device's seconds. */
  const char *device = qt_cli_get(args, "device");
  qt_cli_device dev;
  int dev_status = qt_cli_device_option(command, device ? device : "cpu", &dev);
  if (dev_status != 0) return dev_status;
  p.cuda = dev.cuda || (dev.is_auto && qt_backend_kind_check(QT_BACKEND_KIND_CUDA, NULL) == 0);
  char **files = NULL;
  size_t n_files = 0;
  int status = QT_CLI_EXIT_OK;
  if (task_files(tasks, &files, &n_files, &err) < 0) {
    status = qt_cli_fail(command, &err);
    goto done;
  }
  p.tasks = (const char *const *)files;
  p.task_count = n_files;
  if (p.assemble_only)
    printf("assembling %zu tasks x %ld runs x %ld epochs in %s from the runs collected\n",
           n_files, p.runs_per_task, p.max_epochs, p.out_dir);
  else
    printf("collecting %zu tasks x %ld runs x %ld epochs into %s (%d job%s)\n", n_files,
           p.runs_per_task, p.max_epochs, p.out_dir, p.jobs, p.jobs == 1 ? "" : "s");
  fflush(stdout);
  qt_collect_result r;
  if (qt_collect_run(&p, &r, &err) < 0) {
    status = qt_cli_fail(command, &err);
    goto done;
  }
  printf("runs: %ld in all, %ld computed now, %ld from earlier parts", r.runs_total,
         r.runs_computed, r.runs_reused);
  if (p.assemble_only) printf(", %ld not collected yet", r.runs_missing);
  printf("\n");
  printf(
      "kept %ld runs (%zu points; %ld cut at a diverged epoch); left out %ld failed and %ld "
      "diverged in epoch 1\n",
      r.runs_kept, r.points, r.runs_diverged, r.runs_failed, r.runs_empty);
  printf("wrote %s\n", p.out_dir);
done:
  for (size_t i = 0; i < n_files; i++) free(files[i]);
  free(files);
  return status;
}

/*
 * cmd_finetune.c - `qtune finetune`: fine-tune one hub model with one
 * pipeline configuration for a number of epochs on the engine's run API
 * (qt_run_*), printing one line per epoch and writing the learning curve
 * and the final weights.
 *
 * The pipeline configuration is a YAML mapping of hyperparameter values of
 * a search space (default configs/spaces/default.yaml), e.g.
 *
 *   opt: momentum
 *   momentum: 0.9
 *   lr: 0.001
 *
 * Hyperparameters it leaves out take the space's defaults; each value is
 * checked by the space (qt_config_set_string), and an unknown name, a bad
 * value or a value for a hyperparameter whose condition does not hold is an
 * error at its line:column. `model` names the hub model when --model is not
 * given (the space's model choices are placeholders for a hub's entries).
 *
 * A `qtune:` mapping, as `qtune export` writes it into
 * summary/best_config.yaml, reproduces the search's epoch:
 *
 *   qtune: {run: DIR, trial: 7, epochs: 12, schedule_epochs: 50, seed: 8,
 *           data_seed: 0, score: 0.93, cost_s: 123.4}
 *
 * epochs is the default of --epochs, schedule_epochs the run's planned
 * epochs (the cosine horizon and the linear-probing switch: the search
 * plans every trial for its maximum epochs), seed the run's seed and
 * data_seed the seed of the train/validation split; --epochs and --seed
 * override. The other keys are informative. With the same hub and data the
 * last epoch's validation score is the search's, bit for bit (CPU).
 *
 * Exit codes: 0 done, 1 usage, 3 a bad file, a failed or diverged run.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bo/qt_bo.h"
#include "cli/qt_cli.h"
#include "finetune/qt_finetune.h"
#include "metadata/qt_metadata.h"

#define QT_DEFAULT_SPACE "configs/spaces/default.yaml"

/* The `qtune:` block of an exported configuration (-1: absent). */
typedef struct qtune_block {
  long epochs, schedule_epochs, seed, data_seed;
} qtune_block;

static int read_qtune_block(const qt_yaml_doc_t *doc, qt_yaml_node node, qtune_block *out,
                            qt_err *err) {
  static const char *const keys[] = {
      "run", "trial", "epochs", "schedule_epochs", "seed", "data_seed", "score", "cost_s", NULL};
  int rc = qt_yaml_check_keys(doc, node, keys, err);
  if (rc < 0) return rc;
  struct {
    const char *name;
    long *field;
    long min;
  } ints[] = {{"epochs", &out->epochs, 1},
              {"schedule_epochs", &out->schedule_epochs, 1},
              {"seed", &out->seed, 0},
              {"data_seed", &out->data_seed, 0}};
  for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
    qt_yaml_node v = qt_yaml_get(doc, node, ints[i].name);
    if (!v || qt_yaml_is_null(doc, v)) continue;
    if ((rc = qt_yaml_to_int(doc, v, ints[i].field, err)) < 0) return rc;
    if (*ints[i].field < ints[i].min)
      return qt_yaml_error(err, QT_ESCHEMA, doc, v, "qtune.%s must be >= %ld", ints[i].name,
                           ints[i].min);
  }
  return 0;
}

/* Reads the pipeline YAML into config (defaults first), the model name
 * it may carry into *model (owned by doc) and its qtune: block. */
static int read_pipeline(const char *path, const qt_space_t *space, qt_config *config,
                         qt_yaml_doc_t **doc_out, const char **model, qtune_block *block,
                         qt_err *err) {
  qt_yaml_doc_t *doc = NULL;
  int rc = qt_yaml_load_file(path, &doc, err);
  if (rc < 0) return rc;
  *doc_out = doc;
  qt_yaml_node root = qt_yaml_root(doc);
  if (!root || qt_yaml_kind_of(doc, root) != QT_YAML_KIND_MAPPING)
    return qt_yaml_error(err, QT_ESCHEMA, doc, root,
                         "a pipeline configuration is a mapping of hyperparameter values");
  rc = qt_space_default_config(space, config, err);
  if (rc < 0) return rc;
  size_t n = qt_yaml_length(doc, root);
  unsigned char *given = calloc(config->count ? config->count : 1, 1);
  qt_yaml_node *where = calloc(config->count ? config->count : 1, sizeof *where);
  if (!given || !where) {
    free(given);
    free(where);
    return qt_err_set(err, QT_ENOMEM, "out of memory");
  }
  for (size_t i = 0; i < n && rc == 0; i++) {
    qt_yaml_node key = qt_yaml_pair_key(doc, root, i);
    qt_yaml_node value = qt_yaml_pair_value(doc, root, i);
    const char *name = qt_yaml_scalar(doc, key);
    if (!name) {
      rc = qt_yaml_error(err, QT_ESCHEMA, doc, key, "keys must be hyperparameter names");
      break;
    }
    if (strcmp(name, "version") == 0) continue;
    if (strcmp(name, "qtune") == 0) {
      rc = read_qtune_block(doc, value, block, err);
      if (rc < 0) break;
      continue;
    }
    const char *text = qt_yaml_scalar(doc, value);
    if (!text) {
      rc = qt_yaml_error(err, QT_ESCHEMA, doc, value, "'%s': the value must be a scalar", name);
      break;
    }
    if (strcmp(name, "model") == 0) {
      *model = text;
      continue;
    }
    size_t hp;
    if (qt_space_find(space, name, &hp) != 0) {
      rc = qt_yaml_error(err, QT_ESCHEMA, doc, key, "unknown hyperparameter '%s' (space %s)", name,
                         qt_space_name(space));
      break;
    }
    qt_err inner;
    qt_err_clear(&inner);
    int set = qt_config_set_string(config, name, text, &inner);
    if (set < 0) {
      rc = qt_yaml_error(err, QT_ESCHEMA, doc, value, "%s", qt_err_message(&inner));
      break;
    }
    given[hp] = 1;
    where[hp] = key;
  }
  /* Conditional hyperparameters: those switched on by the values take
   * their defaults, values given for inactive ones are errors. */
  for (size_t pass = 0; pass <= config->count && rc == 0; pass++) {
    int changed = 0;
    for (size_t hp = 0; hp < config->count && rc == 0; hp++) {
      int holds = qt_config_conditions_hold(config, hp);
      if (!holds && given[hp]) {
        rc =
            qt_yaml_error(err, QT_ESCHEMA, doc, where[hp],
                          "'%s' does not apply to this configuration (its condition does not hold)",
                          qt_space_hp_name(space, hp));
      } else if (holds && !qt_config_is_active(config, hp)) {
        /* The space's default, else the first choice or the minimum. */
        double value, lo, hi;
        if (qt_space_hp_default(space, hp, &value) != 1) {
          qt_space_hp_range(space, hp, &lo, &hi);
          value = lo;
        }
        config->slots[hp].active = 1;
        config->slots[hp].value = value;
        changed = 1;
      }
    }
    if (!changed) break;
  }
  free(given);
  free(where);
  if (rc < 0) return rc;
  qt_config_prune(config);
  rc = qt_config_validate(config, err);
  if (rc < 0) return qt_err_prefix(err, rc, "%s", path);
  return 0;
}

static int print_fail(const qt_cli_args *args, const char *what, qt_err *err) {
  if (what) qt_err_prefix(err, err->code ? err->code : QT_EINVAL, "%s", what);
  return qt_cli_fail(args->command, err);
}

int qt_cli_finetune(const qt_cli_args *args) {
  const char *hub_path = qt_cli_get(args, "hub");
  const char *model_name = qt_cli_get(args, "model");
  const char *data_path = qt_cli_get(args, "data");
  const char *config_path = qt_cli_get(args, "config");
  const char *epochs_text = qt_cli_get(args, "epochs");
  const char *out_dir = qt_cli_get(args, "out");
  const char *seed_text = qt_cli_get(args, "seed");
  const char *device = qt_cli_get(args, "device");
  const char *space_path = qt_cli_get(args, "space");
  if (!hub_path) return qt_cli_usage_error(args->command, "--hub FILE is required");
  if (!data_path) return qt_cli_usage_error(args->command, "--data DIR is required");
  if (!config_path) return qt_cli_usage_error(args->command, "--config FILE is required");
  /* --epochs may come from the config's qtune: block, which needs a file. */
  if (!epochs_text && access(config_path, R_OK) != 0)
    return qt_cli_usage_error(args->command,
                              "--epochs N is required (or qtune.epochs in --config)");
  char *end = NULL;
  long epochs = 0;
  if (epochs_text) {
    epochs = strtol(epochs_text, &end, 10);
    if (*end != '\0' || epochs < 1 || epochs > 100000)
      return qt_cli_usage_error(args->command, "--epochs must be a whole number >= 1, got '%s'",
                                epochs_text);
  }
  unsigned long long seed = 0;
  if (seed_text) {
    seed = strtoull(seed_text, &end, 10);
    if (*end != '\0' || seed_text[0] == '-')
      return qt_cli_usage_error(args->command, "--seed must be a whole number >= 0, got '%s'",
                                seed_text);
  }
  qt_err err;
  qt_err_clear(&err);
  /* auto: the GPU when there is one. */
  qt_cli_device dev;
  int dev_status = qt_cli_device_option(args->command, device, &dev);
  if (dev_status != 0) return dev_status;
  int device_auto = dev.is_auto;
  qt_backend_kind kind = dev.cuda ? QT_BACKEND_KIND_CUDA : QT_BACKEND_KIND_CPU;

  int status = QT_CLI_EXIT_FAILURE;
  qt_space_t *space = NULL;
  qt_config config = {0};
  qt_yaml_doc_t *doc = NULL;
  qt_hub_t *hub = NULL;
  qt_data_splits splits = {0};
  qt_run_t *run = NULL;
  FILE *curve = NULL;
  const char *config_model = NULL;
  qtune_block block = {-1, -1, -1, -1};

  if (qt_space_load_file(space_path ? space_path : QT_DEFAULT_SPACE, &space, &err) != 0 ||
      qt_config_init(&config, space, &err) != 0) {
    status = qt_cli_fail(args->command, &err);
    goto done;
  }
  if (read_pipeline(config_path, space, &config, &doc, &config_model, &block, &err) != 0) {
    status = qt_cli_fail(args->command, &err);
    goto done;
  }
  if (!epochs_text) {
    if (block.epochs < 1) {
      status = qt_cli_usage_error(args->command,
                                  "--epochs N is required (or qtune.epochs in "
                                  "--config)");
      goto done;
    }
    epochs = block.epochs;
  }
  /* The run's seed and the split's: the flag, else the block's. */
  uint64_t run_seed = seed_text ? (uint64_t)seed : block.seed >= 0 ? (uint64_t)block.seed : 0;
  uint64_t data_seed = block.data_seed >= 0 ? (uint64_t)block.data_seed : run_seed;
  long schedule_epochs = block.schedule_epochs > 0 ? block.schedule_epochs : epochs;
  if (!model_name) model_name = config_model;
  if (!model_name) {
    status = qt_cli_usage_error(args->command, "--model NAME is required (or model: in --config)");
    goto done;
  }
  if (qt_hub_load_file(hub_path, &hub, &err) != 0) {
    status = qt_cli_fail(args->command, &err);
    goto done;
  }
  size_t index;
  if (qt_hub_find(hub, model_name, &index) != 0) {
    qt_err_set(&err, QT_ENOENT, "%s: no model '%s' in the hub", hub_path, model_name);
    status = qt_cli_fail(args->command, &err);
    goto done;
  }
  const qt_hub_model *m = qt_hub_model_at(hub, index);

  qt_run_spec spec;
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  int threads = cpus < 1 ? 1 : (cpus > 8 ? 8 : (int)cpus);
  if (qt_search_spec_from_config(m, space, &config, schedule_epochs, run_seed, threads, &spec,
                                 &err) != 0) {
    status = print_fail(args, config_path, &err);
    goto done;
  }

  qt_data_params dp = qt_data_default_params();
  dp.seed = data_seed;
  if (qt_data_load(data_path, &dp, &splits, &err) != 0) {
    status = qt_cli_fail(args->command, &err);
    goto done;
  }
  spec.data = &splits;
  spec.device = kind;
  if (device_auto && qt_backend_kind_check(QT_BACKEND_KIND_CUDA, NULL) == 0)
    spec.device = QT_BACKEND_KIND_CUDA;
  if (spec.device == QT_BACKEND_KIND_CUDA) {
    QT_LOG_INFO("training on the GPU (cuda:%d)%s", dev.index,
                spec.amp ? ", BF16 matrix products (amp)" : ", in FP32");
    if (qt_model_family_is_cnn(spec.family)) {
      char path[512];
      qt_cuda_describe_convolutions(spec.amp ? QT_MATMUL_BF16 : QT_MATMUL_FP32, path, sizeof path);
      QT_LOG_INFO("convolutions: %s", path);
    }
  } else if (spec.amp)
    QT_LOG_INFO("amp: no effect on the CPU, which computes in FP32");
  if (qt_run_init(&spec, &run, &err) != 0) {
    status = qt_cli_fail(args->command, &err);
    goto done;
  }

  char path[4096];
  if (out_dir) {
    if (mkdir(out_dir, 0777) != 0 && access(out_dir, W_OK) != 0) {
      qt_err_set(&err, QT_EIO, "cannot create or write %s", out_dir);
      status = qt_cli_fail(args->command, &err);
      goto done;
    }
    snprintf(path, sizeof path, "%s/curve.csv", out_dir);
    curve = fopen(path, "w");
    if (!curve) {
      qt_err_set(&err, QT_EIO, "cannot write %s", path);
      status = qt_cli_fail(args->command, &err);
      goto done;
    }
    fprintf(curve, "epoch,train_loss,val_loss,val_top1,seconds,images_per_s\n");
  }
  const char *unit = splits.train->kind == QT_DATASET_KIND_TABULAR ? "samples" : "images";
  printf("fine-tuning %s on %s: %zu train, %zu val %s, %zu classes, %ld epochs\n", m->name,
         data_path, splits.train->n, splits.val->n, unit, splits.train->n_classes, epochs);
  int diverged = 0;
  for (long e = 0; e < epochs; e++) {
    qt_run_epoch_result r;
    if (qt_run_epoch(run, &r, &err) != 0) {
      status = qt_cli_fail(args->command, &err);
      goto done;
    }
    if (r.status == QT_RUN_STATUS_DIVERGED) {
      printf("epoch %ld  diverged (training loss %g)\n", r.epoch, r.train_loss);
      diverged = 1;
      break;
    }
    printf("epoch %ld  train_loss %.4f  val_top1 %.4f  %.2fs  %.1f %s/s  %zu trainable\n", r.epoch,
           r.train_loss, r.score, r.seconds, r.images_per_s, unit, r.trainable);
    fflush(stdout);
    if (curve) {
      fprintf(curve, "%ld,%.9g,%.9g,%.9g,%.6g,%.6g\n", r.epoch, r.train_loss, r.val_loss, r.score,
              r.seconds, r.images_per_s);
      fflush(curve);
    }
  }
  if (curve) {
    int bad = ferror(curve);
    if (fclose(curve) != 0 || bad) {
      curve = NULL;
      qt_err_set(&err, QT_EIO, "writing %s/curve.csv failed", out_dir);
      status = qt_cli_fail(args->command, &err);
      goto done;
    }
    curve = NULL;
  }
  if (diverged) {
    qt_err_set(&err, QT_ENUMERIC, "the run diverged (non-finite loss); no weights written");
    status = qt_cli_fail(args->command, &err);
    goto done;
  }
  if (splits.test && splits.test->n > 0) {
    double top1, top5, loss;
    if (qt_run_evaluate_test(run, &top1, &top5, &loss, &err) != 0) {
      status = qt_cli_fail(args->command, &err);
      goto done;
    }
    printf("test  loss %.4f  top1 %.4f", loss, top1);
    if (!isnan(top5)) printf("  top5 %.4f", top5);
    printf("  (%zu %s)\n", splits.test->n, unit);
  }
  if (out_dir) {
    snprintf(path, sizeof path, "%s/final.safetensors", out_dir);
    if (qt_run_save_weights(run, path, &err) != 0) {
      status = qt_cli_fail(args->command, &err);
      goto done;
    }
    printf("wrote %s/curve.csv and %s\n", out_dir, path);
  }
  status = QT_CLI_EXIT_OK;

done:
  if (curve) fclose(curve);
  qt_run_free(run);
  qt_data_splits_free(&splits);
  qt_hub_free(hub);
  qt_yaml_free(doc);
  qt_config_free(&config);
  qt_space_free(space);
  return status;
}

/*
 * qt_collect.c - `qtune meta collect`: builds a native meta-dataset
 * (meta-dataset/README.md) by fine-tuning sampled configurations on a
 * family of tasks with the engine's run API.
 *
 * Tasks. Each task is a YAML file (configs/tasks/README.md): version 1, a
 * name, how make-task cut it (source, classes, per_class, test_per_class,
 * transform, seed; read by tools/make-tasks, ignored here) and optionally
 * `data:`, the task's data folder (relative to the YAML's folder). Without
 * it the data are <data_root>/tasks/<name>, data_root being $QTUNE_DATA or
 * ~/.cache/qtune/data. A task's meta-features are those of the search's
 * pool (qt_search.c, qt_pool_set_meta): n_samples (the training split after
 * qt_data_load carves validation from it), n_classes, image_size (the
 * data's native height) and channels.
 *
 * Models and configurations. The hub's usable models and the space over
 * them come from qt_search_models_load, as in `qtune search`. Run r of task
 * t draws its configuration uniformly (qt_space_sample) from a stream of
 * the seed forked by a hash of the task's name and by r; a draw the engine
 * cannot run yet (QT_ENOTIMPL from qt_search_config_runnable or from
 * qt_run_init, e.g. GOODFIT with adapters) is replaced by the next draw of
 * the same stream, up to 200 draws. So a run's
 * configuration depends on the seed, the task's name and r only: not on the
 * other tasks, the number of jobs or an interruption. Each draw also draws
 * the run's engine seed from the same stream. Every run trains max_epochs epochs with a
 * cosine horizon of max_epochs (the learning curve a meta-dataset records
 * is that of a run planned for its full length, as in Quick-Tune's).
 *
 * Parts. A finished run is written to out_dir/parts/<task>/<run>.csv (a
 * temporary file renamed into place, so a part is either complete or
 * absent): one row per recorded epoch with the columns epoch, score,
 * cost_s, train_loss, val_loss, status, reason, then one column per
 * hyperparameter of the space (the configuration's text, empty when
 * inactive, repeated on every row). status is ok, diverged (the curve ends
 * before the first epoch whose loss was not finite, as the Quick-Tune
 * importer cuts NaN curves) or failed (the engine refused the run: one row
 * with epoch 0 and the message in reason). A run that diverged in its first
 * epoch has no curve either (one row, epoch 0). A part that exists is never
 * recomputed; a collection killed at any time continues where it stopped.
 * out_dir/parts/space.yaml is the space over the hub's models (written by
 * the first call) and out_dir/parts/collect.txt the settings that change
 * the parts (max_epochs, seed, a CUDA device): a later call with another
 * hub, space, epochs, seed or device is refused, naming what differs.
 *
 * Jobs. With jobs > 1 the parent forks that many workers; worker j runs
 * the (task, run) items j, j + jobs, ... in order, each loading a task's
 * data once. The parent waits for all of them, then assembles. With cuda
 * every run trains on the GPU (one job), and the device's name goes into
 * parts/collect.txt and the provenance.
 *
 * Assembly. Every part of the requested tasks and runs is read back in
 * task order and run order; failed runs and runs without a curve are left
 * out and counted. With assemble_only nothing runs: the parts present are
 * assembled and the runs without one counted (a collection stopped in the
 * middle of a round, published as it is). The meta-dataset (metric top1,
 * max_epochs, the space over the hub's models as space.yaml) is saved in
 * out_dir.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bo/qt_bo.h"
#include "finetune/qt_finetune.h"

#define RESAMPLE_TRIES 200
#define STREAM_COLLECT 0x636f6c6cu /* "coll" */
#define PART_FIXED_COLUMNS 7

qt_collect_params qt_collect_default_params(void) {
  qt_collect_params p;
  memset(&p, 0, sizeof p);
  p.runs_per_task = 10;
  p.max_epochs = 5;
  p.jobs = 1;
  p.threads = 1;
  return p;
}

/* ------------------------------------------------------------------------- */
/* Tasks                                                                      */
/* ------------------------------------------------------------------------- */

typedef struct collect_task {
  char name[128];
  char data[4096];
} collect_task;

static int name_ok(const char *name) {
  if (!*name || name[0] == '.') return 0;
  for (const char *p = name; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
          *p == '-' || *p == '_' || *p == '.'))
      return 0;
  return 1;
}

static int task_load(const char *path, const char *data_root, collect_task *task, qt_err *err) {
  static const char *const keys[] = {"version",    "name",           "description", "source",
                                     "classes",    "per_class",      "test_per_class",
                                     "transform",  "seed",           "data",        NULL};
  qt_yaml_doc_t *doc = NULL;
  int rc = qt_yaml_load_file(path, &doc, err);
  if (rc < 0) return rc;
  qt_yaml_node root = qt_yaml_root(doc);
  if (!root || qt_yaml_kind_of(doc, root) != QT_YAML_KIND_MAPPING) {
    rc = qt_yaml_error(err, QT_ESCHEMA, doc, root, "a task file is a mapping");
    goto done;
  }
  if ((rc = qt_yaml_check_keys(doc, root, keys, err)) < 0) goto done;
  qt_yaml_node node = qt_yaml_get(doc, root, "version");
  long version = 0;
  if (!node) {
    rc = qt_yaml_error(err, QT_ESCHEMA, doc, root, "missing key \"version\"");
    goto done;
  }
  if ((rc = qt_yaml_to_int(doc, node, &version, err)) < 0) goto done;
  if (version != 1) {
    rc = qt_yaml_error(err, QT_EVERSION, doc, node, "task version %ld (this qtune reads 1)",
                       version);
    goto done;
  }
  node = qt_yaml_get(doc, root, "name");
  const char *name = node && qt_yaml_kind_of(doc, node) == QT_YAML_KIND_SCALAR
                         ? qt_yaml_scalar(doc, node) : NULL;
  if (!name || !name_ok(name) || strlen(name) >= sizeof task->name) {
    rc = qt_yaml_error(err, QT_ESCHEMA, doc, node ? node : root,
                       "\"name\" must be a non-empty name of letters, digits, '-', '_', '.'");
    goto done;
  }
  snprintf(task->name, sizeof task->name, "%s", name);
  node = qt_yaml_get(doc, root, "data");
  if (node) {
    const char *data = qt_yaml_kind_of(doc, node) == QT_YAML_KIND_SCALAR ? qt_yaml_scalar(doc, node)
                                                                  : NULL;
    if (!data || !*data) {
      rc = qt_yaml_error(err, QT_ESCHEMA, doc, node, "\"data\" must be a path");
      goto done;
    }
    const char *slash = strrchr(path, '/');
    if (data[0] == '/' || !slash)
      snprintf(task->data, sizeof task->data, "%s", data);
    else
      snprintf(task->data, sizeof task->data, "%.*s/%s", (int)(slash - path), path, data);
  } else {
    int len = snprintf(task->data, sizeof task->data, "%s/tasks/%s", data_root, task->name);
    if (len < 0 || (size_t)len >= sizeof task->data) {
      rc = qt_err_set(err, QT_EINVAL, "%s: the data path is too long", path);
      goto done;
    }
  }
done:
  qt_yaml_free(doc);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* The space over the hub's models, as YAML                                   */
/* ------------------------------------------------------------------------- */

static void put_quoted(FILE *f, const char *text) {
  fputc('"', f);
  for (const char *p = text; *p; p++) {
    if (*p == '"' || *p == '\\') fputc('\\', f);
    fputc(*p, f);
  }
  fputc('"', f);
}

/* A choice as YAML: ordinal choices and boolean spellings as written,
 * categorical ones quoted (so "10" stays a string choice). */
static void put_choice(FILE *f, const qt_space_t *space, size_t hp, size_t choice) {
  qt_hp_type type = qt_space_hp_type(space, hp);
  const char *text = qt_space_hp_choice(space, hp, choice);
  if (type == QT_HP_TYPE_CATEGORICAL) put_quoted(f, text);
  else fputs(text, f);
}

static void put_number(FILE *f, double x) {
  char buf[64];
  qt_format_double(x, buf, sizeof buf);
  fputs(buf, f);
}

/* Writes space (a space loaded from YAML, possibly with replaced choices)
 * as a space file that loads back to the same hyperparameters, choices,
 * ranges, scales, defaults and conditions (descriptions are left out). */
static int space_write(const qt_space_t *space, const char *path, qt_err *err) {
  FILE *f = fopen(path, "w");
  if (!f) return qt_err_set(err, QT_EIO, "cannot write %s: %s", path, strerror(errno));
  const char *fid_name;
  long fid_min, fid_max;
  qt_space_fidelity(space, &fid_name, &fid_min, &fid_max);
  fprintf(f, "# Written by qtune meta collect from %s.\nversion: 1\nname: ", qt_space_source(space));
  put_quoted(f, qt_space_name(space));
  fprintf(f, "\nfidelity: {name: %s, min: %ld, max: %ld}\nhyperparameters:\n", fid_name, fid_min,
          fid_max);
  for (size_t hp = 0; hp < qt_space_count(space); hp++) {
    qt_hp_type type = qt_space_hp_type(space, hp);
    fprintf(f, "  %s:\n    type: %s\n", qt_space_hp_name(space, hp), qt_hp_type_name(type));
    if (type == QT_HP_TYPE_CATEGORICAL || type == QT_HP_TYPE_ORDINAL) {
      fputs("    choices: [", f);
      for (size_t c = 0; c < qt_space_hp_choice_count(space, hp); c++) {
        if (c) fputs(", ", f);
        put_choice(f, space, hp, c);
      }
      fputs("]\n", f);
    }
    if (type == QT_HP_TYPE_INTEGER || type == QT_HP_TYPE_FLOAT) {
      double lo, hi;
      qt_space_hp_range(space, hp, &lo, &hi);
      fputs("    range: [", f);
      put_number(f, lo);
      fputs(", ", f);
      put_number(f, hi);
      fputs("]\n", f);
    }
    if (type != QT_HP_TYPE_CATEGORICAL && type != QT_HP_TYPE_BOOLEAN && qt_space_hp_log(space, hp))
      fputs("    log: true\n", f);
    double value;
    if (qt_space_hp_default(space, hp, &value)) {
      fputs("    default: ", f);
      if (type == QT_HP_TYPE_INTEGER || type == QT_HP_TYPE_FLOAT) put_number(f, value);
      else put_choice(f, space, hp, (size_t)value);
      fputc('\n', f);
    }
    size_t n_cond = qt_space_hp_condition_count(space, hp);
    if (n_cond) {
      fputs("    active_when: {", f);
      for (size_t k = 0; k < n_cond; k++) {
        qt_space_condition c;
        qt_space_hp_condition(space, hp, k, &c);
        fprintf(f, "%s%s: [", k ? ", " : "", qt_space_hp_name(space, c.parent));
        for (size_t v = 0; v < c.value_count; v++) {
          if (v) fputs(", ", f);
          put_choice(f, space, c.parent, c.values[v]);
        }
        fputc(']', f);
      }
      fputs("}\n", f);
    }
  }
  if (fclose(f) != 0) return qt_err_set(err, QT_EIO, "writing %s failed", path);
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Parts                                                                      */
/* ------------------------------------------------------------------------- */

typedef struct part_epoch {
  double score, cost, train_loss, val_loss;
} part_epoch;

static void part_path(const char *out_dir, const char *task, long run, char *buf, size_t size) {
  snprintf(buf, size, "%s/parts/%s/%ld.csv", out_dir, task, run);
}

static void put_field_number(FILE *f, double x) {
  char buf[64];
  qt_format_double(x, buf, sizeof buf);
  fputs(buf, f);
}

/* Writes a part atomically: n epochs (n may be 0 for a run without curve). */
static int part_write(const char *path, const qt_space_t *space, const qt_config *config,
                      const part_epoch *epochs, long n, const char *status, const char *reason,
                      qt_err *err) {
  char tmp[4600];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  FILE *f = fopen(tmp, "w");
  if (!f) return qt_err_set(err, QT_EIO, "cannot write %s: %s", tmp, strerror(errno));
  fputs("epoch,score,cost_s,train_loss,val_loss,status,reason", f);
  for (size_t hp = 0; hp < qt_space_count(space); hp++) {
    fputc(',', f);
    qt_csv_write_field(f, qt_space_hp_name(space, hp));
  }
  fputc('\n', f);
  for (long e = 0; e < (n > 0 ? n : 1); e++) {
    if (n > 0) {
      fprintf(f, "%ld,", e + 1);
      put_field_number(f, epochs[e].score);
      fputc(',', f);
      put_field_number(f, epochs[e].cost);
      fputc(',', f);
      put_field_number(f, epochs[e].train_loss);
      fputc(',', f);
      put_field_number(f, epochs[e].val_loss);
    } else {
      fputs("0,,,,", f);
    }
    fprintf(f, ",%s,", status);
    qt_csv_write_field(f, reason ? reason : "");
    for (size_t hp = 0; hp < qt_space_count(space); hp++) {
      fputc(',', f);
      if (!qt_config_is_active(config, hp)) continue;
      char text[256];
      qt_config_get_string(config, hp, text, sizeof text);
      qt_csv_write_field(f, text);
    }
    fputc('\n', f);
  }
  int ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
  if (fclose(f) != 0) ok = 0;
  if (!ok || rename(tmp, path) != 0) {
    unlink(tmp);
    return qt_err_set(err, QT_EIO, "writing %s failed: %s", path, strerror(errno));
  }
  return 0;
}

/* A part read back: its status, its configuration (for md's space) and its
 * curve. */
typedef struct part {
  char status[16];
  long epochs;
  float *score, *cost, *train_loss, *val_loss; /* (epochs) each */
} part;

static void part_free(part *p) {
  free(p->score);
  free(p->cost);
  free(p->train_loss);
  free(p->val_loss);
  memset(p, 0, sizeof *p);
}

static int part_number(const char *path, int line, const char *text, double *out, qt_err *err) {
  if (!*text) {
    *out = NAN;
    return 0;
  }
  if (qt_parse_double(text, out) != 0)
    return qt_err_set(err, QT_ESCHEMA, "%s:%d: \"%s\" is not a number", path, line, text);
  return 0;
}

static int part_read(const char *path, const qt_space_t *space, long max_epochs, part *p,
                     qt_config *config, qt_err *err) {
  memset(p, 0, sizeof *p);
  qt_csv_t *csv = NULL;
  int rc = qt_csv_open(path, &csv, err);
  if (rc < 0) return rc;
  size_t n_hp = qt_space_count(space);
  if ((rc = qt_csv_next(csv, err)) <= 0 ||
      qt_csv_field_count(csv) != PART_FIXED_COLUMNS + n_hp) {
    if (rc >= 0)
      rc = qt_err_set(err, QT_ESCHEMA,
                      "%s: not a part of this collection (expected %d columns + one per "
                      "hyperparameter of the space); delete it to recompute the run",
                      path, PART_FIXED_COLUMNS);
    goto done;
  }
  for (size_t hp = 0; hp < n_hp; hp++) {
    if (strcmp(qt_csv_field(csv, PART_FIXED_COLUMNS + hp), qt_space_hp_name(space, hp)) != 0) {
      rc = qt_err_set(err, QT_ESCHEMA, "%s:1: column %zu is \"%s\", the space has \"%s\"", path,
                      PART_FIXED_COLUMNS + hp + 1, qt_csv_field(csv, PART_FIXED_COLUMNS + hp),
                      qt_space_hp_name(space, hp));
      goto done;
    }
  }
  p->score = malloc((size_t)max_epochs * sizeof *p->score);
  p->cost = malloc((size_t)max_epochs * sizeof *p->cost);
  p->train_loss = malloc((size_t)max_epochs * sizeof *p->train_loss);
  p->val_loss = malloc((size_t)max_epochs * sizeof *p->val_loss);
  if (!p->score || !p->cost || !p->train_loss || !p->val_loss) {
    rc = qt_err_set(err, QT_ENOMEM, "out of memory");
    goto done;
  }
  int rows = 0;
  while ((rc = qt_csv_next(csv, err)) == 1) {
    int line = qt_csv_line(csv);
    if (qt_csv_field_count(csv) != PART_FIXED_COLUMNS + n_hp) {
      rc = qt_err_set(err, QT_ESCHEMA, "%s:%d: wrong number of fields", path, line);
      goto done;
    }
    long epoch;
    int epoch_ok = qt_parse_long(qt_csv_field(csv, 0), &epoch) == 0 && epoch <= max_epochs &&
                   (rows == 0 ? (epoch == 0 || epoch == 1) : (p->epochs > 0 && epoch == p->epochs + 1));
    if (!epoch_ok) {
      rc = qt_err_set(err, QT_ESCHEMA, "%s:%d: bad epoch \"%s\"", path, line,
                      qt_csv_field(csv, 0));
      goto done;
    }
    if (rows == 0) {
      snprintf(p->status, sizeof p->status, "%s", qt_csv_field(csv, 5));
      for (size_t hp = 0; hp < n_hp; hp++) {
        const char *text = qt_csv_field(csv, PART_FIXED_COLUMNS + hp);
        if (*text && (rc = qt_config_set_string(config, qt_space_hp_name(space, hp), text, err)) < 0)
          goto done;
      }
    }
    rows++;
    if (epoch == 0) continue;
    double v[4];
    for (int k = 0; k < 4; k++)
      if ((rc = part_number(path, line, qt_csv_field(csv, 1 + (size_t)k), &v[k], err)) < 0)
        goto done;
    p->score[p->epochs] = (float)v[0];
    p->cost[p->epochs] = (float)v[1];
    p->train_loss[p->epochs] = (float)v[2];
    p->val_loss[p->epochs] = (float)v[3];
    p->epochs++;
  }
  if (rc < 0) goto done;
  if (rows == 0) {
    rc = qt_err_set(err, QT_ESCHEMA, "%s: no rows; delete it to recompute the run", path);
    goto done;
  }
  rc = 0;
done:
  qt_csv_free(csv);
  if (rc < 0) part_free(p);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Running one (task, run)                                                    */
/* ------------------------------------------------------------------------- */

typedef struct collector {
  const qt_collect_params *params;
  qt_search_models models;
  collect_task *tasks; /* (task_count) */
  long computed;
  char device[256]; /* the CUDA device's name (params->cuda) */
} collector;

static uint64_t fnv_name(const char *text) {
  uint64_t h = 1469598103934665603ull;
  for (const char *p = text; *p; p++) {
    h ^= (unsigned char)*p;
    h *= 1099511628211ull;
  }
  return h;
}

/* The stream of run `run` of task (see the top). */
static int run_stream(const collector *C, const collect_task *task, long run, qt_rng_t **out,
                      qt_err *err) {
  qt_rng_t *root = NULL, *by_task = NULL;
  *out = NULL;
  int rc = qt_rng_init(&root, C->params->seed, err);
  if (rc == 0) rc = qt_rng_fork(root, STREAM_COLLECT ^ fnv_name(task->name), &by_task, err);
  if (rc == 0) rc = qt_rng_fork(by_task, (uint64_t)run, out, err);
  qt_rng_free(by_task);
  qt_rng_free(root);
  return rc;
}

/* Draws configurations from rng until one the engine can start: its run
 * spec and qt_run_init must not say QT_ENOTIMPL (a method not built yet,
 * such as GOODFIT with adapters, is only found by qt_run_init). On success
 * *engine is the initialized run (NULL when the run failed for another
 * reason, with the message in *inner). A negative return is an error of the
 * collection itself. */
static int start_run(collector *C, const qt_data_splits *data, qt_rng_t *rng, qt_config *config,
                     qt_run_t **engine, qt_err *inner, qt_err *err) {
  const qt_collect_params *p = C->params;
  char reason[1024] = "";
  *engine = NULL;
  for (int tries = 0; tries < RESAMPLE_TRIES; tries++) {
    int rc = qt_space_sample(C->models.space, rng, config, err);
    if (rc < 0) return rc;
    uint64_t run_seed = qt_rng_uniform_int(rng, (uint64_t)1 << 62);
    if (!qt_search_config_runnable(&C->models, config, p->max_epochs, reason, sizeof reason))
      continue;
    qt_run_spec spec;
    qt_err_clear(inner);
    size_t model = (size_t)qt_config_index(config, C->models.model_hp);
    rc = qt_search_spec_from_config(C->models.models[model], C->models.space, config,
                                    p->max_epochs, run_seed, p->threads, &spec, inner);
    if (rc == 0) {
      spec.data = data;
      if (p->cuda) spec.device = QT_BACKEND_KIND_CUDA;
      rc = qt_run_init(&spec, engine, inner);
    }
    if (rc == QT_ENOTIMPL) {
      snprintf(reason, sizeof reason, "%s", qt_err_message(inner));
      continue;
    }
    return 0; /* started, or failed for a reason a redraw would not avoid */
  }
  return qt_err_set(err, QT_ENOTIMPL,
                    "no configuration of the space that the engine can run was found in %d "
                    "draws (%s)",
                    RESAMPLE_TRIES, reason);
}

/* Fine-tunes one run and writes its part. Engine failures become a failed
 * part; only an error writing the part (or drawing the configuration) is
 * returned. */
static int collect_one(collector *C, const collect_task *task, const qt_data_splits *data,
                       long run, const char *path, qt_err *err) {
  const qt_collect_params *p = C->params;
  qt_config config;
  int rc = qt_config_init(&config, C->models.space, err);
  if (rc < 0) return rc;
  qt_rng_t *rng = NULL;
  qt_run_t *engine = NULL;
  part_epoch *epochs = calloc((size_t)p->max_epochs, sizeof *epochs);
  if (!epochs) {
    qt_config_free(&config);
    return qt_err_set(err, QT_ENOMEM, "out of memory");
  }
  qt_err inner;
  qt_err_clear(&inner);
  if ((rc = run_stream(C, task, run, &rng, err)) < 0) goto done;
  if ((rc = start_run(C, data, rng, &config, &engine, &inner, err)) < 0) goto done;

  long n = 0;
  const char *status = "ok";
  char reason[1024] = "";
  int irc = engine ? 0 : -1;
  for (long e = 0; irc == 0 && e < p->max_epochs; e++) {
    qt_run_epoch_result r;
    irc = qt_run_epoch(engine, &r, &inner);
    if (irc < 0) break;
    if (r.status != QT_RUN_STATUS_OK || !isfinite(r.score)) {
      status = "diverged";
      snprintf(reason, sizeof reason, "epoch %ld diverged (training loss %g)", e + 1,
               r.train_loss);
      break;
    }
    epochs[n].score = r.score < 0 ? 0 : r.score > 1 ? 1 : r.score;
    epochs[n].cost = isfinite(r.seconds) && r.seconds >= 0 ? r.seconds : 0;
    epochs[n].train_loss = r.train_loss;
    epochs[n].val_loss = r.val_loss;
    n++;
  }
  if (irc < 0) {
    /* A failure mid-run keeps nothing: its epochs were not a full curve of
     * what was asked. */
    status = "failed";
    n = 0;
    snprintf(reason, sizeof reason, "%s", qt_err_message(&inner));
  }
  QT_LOG_INFO("collect: %s run %ld: %s, %ld epochs%s%s", task->name, run, status, n,
              *reason ? ": " : "", reason);
  rc = part_write(path, C->models.space, &config, epochs, n, status, reason, err);
  if (rc == 0) C->computed++;
done:
  qt_run_free(engine);
  qt_rng_free(rng);
  free(epochs);
  qt_config_free(&config);
  return rc;
}

/* Runs the items worker, worker + jobs, ... whose part is missing. */
static int collect_items(collector *C, int worker, int jobs, qt_err *err) {
  const qt_collect_params *p = C->params;
  long total = (long)p->task_count * p->runs_per_task;
  size_t loaded = SIZE_MAX;
  qt_data_splits data;
  memset(&data, 0, sizeof data);
  int rc = 0;
  for (long item = worker; item < total && rc == 0; item += jobs) {
    size_t t = (size_t)(item / p->runs_per_task);
    long run = item % p->runs_per_task;
    char path[4400];
    part_path(p->out_dir, C->tasks[t].name, run, path, sizeof path);
    if (access(path, F_OK) == 0) continue;
    if (loaded != t) {
      qt_data_splits_free(&data);
      loaded = SIZE_MAX;
      qt_data_params dp = qt_data_default_params();
      dp.seed = p->seed;
      if ((rc = qt_data_load(C->tasks[t].data, &dp, &data, err)) < 0) {
        qt_err_prefix(err, rc, "task %s", C->tasks[t].name);
        break;
      }
      loaded = t;
    }
    rc = collect_one(C, &C->tasks[t], &data, run, path, err);
  }
  qt_data_splits_free(&data);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Setup, resume checks and assembly                                          */
/* ------------------------------------------------------------------------- */

/* Writes or compares out_dir/parts/space.yaml and collect.txt. */
static int check_settings(collector *C, qt_err *err) {
  const qt_collect_params *p = C->params;
  char dir[4200], path[4400], tmp[4500];
  snprintf(dir, sizeof dir, "%s/parts", p->out_dir);
  int rc = qt_mkdir_p(dir, err);
  if (rc < 0) return rc;
  for (size_t t = 0; t < p->task_count; t++) {
    snprintf(path, sizeof path, "%s/%s", dir, C->tasks[t].name);
    if ((rc = qt_mkdir_p(path, err)) < 0) return rc;
  }
  /* The space over the hub's models. */
  snprintf(path, sizeof path, "%s/space.yaml", dir);
  snprintf(tmp, sizeof tmp, "%s/space.yaml.tmp.%ld", dir, (long)getpid());
  if ((rc = space_write(C->models.space, tmp, err)) < 0) return rc;
  char settings[512];
  int len = snprintf(settings, sizeof settings, "max_epochs: %ld\nseed: %llu\n", p->max_epochs,
                     (unsigned long long)p->seed);
  /* The device enters only for CUDA, so CPU collections keep their file. */
  if (p->cuda)
    snprintf(settings + len, sizeof settings - (size_t)len, "device: cuda %s\n", C->device);
  char *old = NULL, *now = NULL;
  if (access(path, F_OK) == 0) {
    qt_err ignore;
    if (qt_file_read(path, &old, NULL, err) < 0 || qt_file_read(tmp, &now, NULL, &ignore) < 0) {
      unlink(tmp);
      free(old);
      return QT_EIO;
    }
    int same = strcmp(old, now) == 0;
    free(old);
    free(now);
    unlink(tmp);
    if (!same)
      return qt_err_set(err, QT_EINVAL,
                        "%s was collected over another space or hub (its parts/space.yaml "
                        "differs): use another --out, or delete its parts to start over",
                        p->out_dir);
  } else if (rename(tmp, path) != 0) {
    return qt_err_set(err, QT_EIO, "cannot write %s: %s", path, strerror(errno));
  }
  snprintf(path, sizeof path, "%s/collect.txt", dir);
  if (access(path, F_OK) == 0) {
    if ((rc = qt_file_read(path, &old, NULL, err)) < 0) return rc;
    int same = strcmp(old, settings) == 0;
    free(old);
    if (!same)
      return qt_err_set(err, QT_EINVAL,
                        "%s was collected with other settings (parts/collect.txt: max_epochs, "
                        "seed and the device must match; this call: %ld epochs, seed %llu, %s%s)",
                        p->out_dir, p->max_epochs, (unsigned long long)p->seed,
                        p->cuda ? "cuda " : "cpu", p->cuda ? C->device : "");
    return 0;
  }
  FILE *f = fopen(path, "w");
  if (!f) return qt_err_set(err, QT_EIO, "cannot write %s: %s", path, strerror(errno));
  fputs(settings, f);
  if (fclose(f) != 0) return qt_err_set(err, QT_EIO, "writing %s failed", path);
  return 0;
}

static int assemble(collector *C, qt_collect_result *res, qt_err *err) {
  const qt_collect_params *p = C->params;
  static const char *const features[] = {"n_samples", "n_classes", "image_size", "channels"};
  char space_path[4300];
  snprintf(space_path, sizeof space_path, "%s/parts/space.yaml", p->out_dir);
  qt_metadataset_params mp = qt_metadataset_default_params();
  mp.name = p->name ? p->name : "qtune-collect";
  mp.metric = "top1";
  mp.max_epochs = p->max_epochs;
  char provenance[512];
  snprintf(provenance, sizeof provenance,
           "qtune meta collect (validation top-1 of the engine's runs; cost_s: seconds of each "
           "epoch, train + eval%s%s)",
           p->cuda ? ", on CUDA device " : "", p->cuda ? C->device : "");
  mp.provenance = provenance;
  mp.feature_count = 4;
  mp.feature_names = features;
  qt_metadataset_t *md = NULL;
  int rc = qt_metadataset_create(space_path, &mp, &md, err);
  if (rc < 0) return rc;
  const qt_space_t *space = qt_metadataset_space(md);
  qt_data_params dp = qt_data_default_params();
  dp.seed = p->seed;
  for (size_t t = 0; t < p->task_count && rc == 0; t++) {
    qt_data_splits data;
    if ((rc = qt_data_load(C->tasks[t].data, &dp, &data, err)) < 0) break;
    const qt_dataset *train = data.train;
    double meta[4] = {(double)train->n, (double)train->n_classes, (double)train->height,
                      (double)train->channels};
    qt_data_splits_free(&data);
    size_t index;
    if ((rc = qt_metadataset_add_dataset(md, C->tasks[t].name, meta, &index, err)) < 0) break;
    for (long run = 0; run < p->runs_per_task && rc == 0; run++) {
      char path[4400], id[200];
      part_path(p->out_dir, C->tasks[t].name, run, path, sizeof path);
      if (p->assemble_only && access(path, F_OK) != 0) {
        res->runs_missing++;
        continue;
      }
      qt_config config;
      if ((rc = qt_config_init(&config, space, err)) < 0) break;
      part pt;
      rc = part_read(path, space, p->max_epochs, &pt, &config, err);
      int read_ok = rc == 0;
      if (rc == 0 && strcmp(pt.status, "failed") == 0) res->runs_failed++;
      else if (rc == 0 && pt.epochs == 0) res->runs_empty++;
      else if (rc == 0) {
        if (strcmp(pt.status, "diverged") == 0) res->runs_diverged++;
        snprintf(id, sizeof id, "%s-%ld", C->tasks[t].name, run);
        qt_md_run r = {.id = id, .dataset = index, .config = &config, .epochs = (size_t)pt.epochs,
                       .score = pt.score, .cost = pt.cost, .train_loss = pt.train_loss,
                       .val_loss = pt.val_loss};
        rc = qt_metadataset_add_run(md, &r, err);
        if (rc < 0) qt_err_prefix(err, rc, "%s", path);
        res->runs_kept++;
        res->points += (size_t)pt.epochs;
      }
      if (read_ok) part_free(&pt);
      qt_config_free(&config);
    }
  }
  if (rc == 0) rc = qt_metadataset_save(md, p->out_dir, err);
  qt_metadataset_free(md);
  return rc;
}

int qt_collect_run(const qt_collect_params *params, qt_collect_result *out, qt_err *err) {
  if (!params || !params->hub || !params->space || !params->out_dir ||
      (params->task_count && !params->tasks))
    return qt_err_set(err, QT_EINVAL, "collect: hub, space, tasks and out_dir are required");
  if (params->task_count == 0) return qt_err_set(err, QT_EINVAL, "collect: no task given");
  if (params->runs_per_task < 1 || params->max_epochs < 1)
    return qt_err_set(err, QT_EINVAL, "collect: runs per task and max epochs must be >= 1");
  qt_collect_result res;
  memset(&res, 0, sizeof res);
  collector C;
  memset(&C, 0, sizeof C);
  C.params = params;
  if (params->cuda) {
    /* One process per GPU: forked workers cannot share the parent's CUDA. */
    if (params->jobs > 1)
      return qt_err_set(err, QT_EINVAL,
                        "collect: a collection on CUDA runs one job (one process per GPU)");
    qt_cuda_info info;
    int rc = qt_backend_kind_check(QT_BACKEND_KIND_CUDA, err);
    if (rc == 0) rc = qt_cuda_device_info(&info, err);
    if (rc < 0) return rc;
    snprintf(C.device, sizeof C.device, "%s", info.name);
  }
  qt_space_t *base = NULL;
  int rc = qt_space_load_file(params->space, &base, err);
  if (rc < 0) return rc;
  long fid_min, fid_max;
  qt_space_fidelity(base, NULL, &fid_min, &fid_max);
  if (params->max_epochs < fid_min || params->max_epochs > fid_max) {
    rc = qt_err_set(err, QT_EINVAL, "max_epochs %ld is outside the space's fidelity [%ld, %ld]",
                    params->max_epochs, fid_min, fid_max);
    goto done;
  }
  if ((rc = qt_search_models_load(params->hub, base, &C.models, err)) < 0) goto done;

  char root_buf[4096];
  const char *root = params->data_root;
  if (!root) root = getenv("QTUNE_DATA");
  if (!root || !*root) {
    const char *home = getenv("HOME");
    snprintf(root_buf, sizeof root_buf, "%s/.cache/qtune/data", home ? home : ".");
    root = root_buf;
  }
  C.tasks = calloc(params->task_count, sizeof *C.tasks);
  if (!C.tasks) {
    rc = qt_err_set(err, QT_ENOMEM, "out of memory");
    goto done;
  }
  for (size_t t = 0; t < params->task_count && rc == 0; t++) {
    rc = task_load(params->tasks[t], root, &C.tasks[t], err);
    for (size_t u = 0; rc == 0 && u < t; u++)
      if (strcmp(C.tasks[u].name, C.tasks[t].name) == 0)
        rc = qt_err_set(err, QT_EINVAL, "tasks %s and %s have the same name \"%s\"",
                        params->tasks[u], params->tasks[t], C.tasks[t].name);
  }
  if (rc < 0) goto done;
  if ((rc = check_settings(&C, err)) < 0) goto done;

  res.runs_total = (long)params->task_count * params->runs_per_task;
  for (size_t t = 0; t < params->task_count; t++)
    for (long run = 0; run < params->runs_per_task; run++) {
      char path[4400];
      part_path(params->out_dir, C.tasks[t].name, run, path, sizeof path);
      if (access(path, F_OK) == 0) res.runs_reused++;
    }

  int jobs = params->jobs < 1 ? 1 : params->jobs;
  if (params->assemble_only) {
    /* nothing to run */
  } else if (jobs == 1) {
    rc = collect_items(&C, 0, 1, err);
  } else {
    fflush(NULL);
    pid_t *pids = calloc((size_t)jobs, sizeof *pids);
    if (!pids) {
      rc = qt_err_set(err, QT_ENOMEM, "out of memory");
      goto done;
    }
    int started = 0;
    for (int j = 0; j < jobs; j++) {
      pid_t pid = fork();
      if (pid == 0) {
        qt_err child_err;
        qt_err_clear(&child_err);
        int crc = collect_items(&C, j, jobs, &child_err);
        if (crc < 0) fprintf(stderr, "qtune meta collect: worker %d: %s\n", j,
                             qt_err_message(&child_err));
        fflush(NULL);
        _exit(crc < 0 ? 1 : 0);
      }
      if (pid < 0) {
        rc = qt_err_set(err, QT_EIO, "fork failed: %s", strerror(errno));
        break;
      }
      pids[started++] = pid;
    }
    int failed = 0;
    for (int j = 0; j < started; j++) {
      int status = 0;
      while (waitpid(pids[j], &status, 0) < 0 && errno == EINTR) {
      }
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) failed++;
    }
    free(pids);
    if (rc == 0 && failed)
      rc = qt_err_set(err, QT_EIO, "%d of %d collect workers failed (see above); run the same "
                      "command again to continue", failed, jobs);
  }
  if (rc < 0) goto done;
  /* Count what this call computed from the parts (workers are processes). */
  long present = 0;
  for (size_t t = 0; t < params->task_count; t++)
    for (long run = 0; run < params->runs_per_task; run++) {
      char path[4400];
      part_path(params->out_dir, C.tasks[t].name, run, path, sizeof path);
      if (access(path, F_OK) == 0) present++;
    }
  res.runs_computed = present - res.runs_reused;
  rc = assemble(&C, &res, err);
done:
  if (out) *out = res;
  free(C.tasks);
  qt_search_models_free(&C.models);
  qt_space_free(base);
  return rc;
}

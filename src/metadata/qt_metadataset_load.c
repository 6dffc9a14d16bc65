/*
 * qt_metadataset_load.c - loading and validating a native meta-dataset
 * folder (metadataset.yaml, the search space, datasets.csv, runs.csv,
 * curves.csv; meta-dataset/README.md describes them).
 *
 * Speed matters here: a meta-dataset of a million curve points must load in
 * well under two seconds. The CSV reader splits the files in place, the
 * curves go into one float arena per quantity that grows by doubling, run
 * ids are found through a hash map (and a curve row of the same run as the
 * row before does not even need that), so nothing is allocated per row.
 *
 * Every problem is reported as "path:line: ..." (metadataset.yaml:
 * "path:line:column: ...") and stops the load: a meta-dataset with one bad
 * row is a meta-dataset someone should look at, not one to half-use.
 */
#include "metadata/qt_metadataset_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ------------------------------------------------------------------------- */
/* Loader state and messages                                                  */
/* ------------------------------------------------------------------------- */

typedef struct loader {
  const char *dir;
  qt_err *err;
  qt_metadataset_t *md; /* NULL until the space and the features are known */
  double score_scale;   /* metadataset.yaml score_scale */
  int higher_is_better; /* metadataset.yaml higher_is_better */
  char path[4096];      /* the file being read */
} loader;

/* Records "path:line: <message>" and returns code. */
static int row_error(loader *ld, int line, int code, const char *fmt, ...) QT_PRINTF(4, 5);
static int row_error(loader *ld, int line, int code, const char *fmt, ...) {
  char message[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  return qt_err_set(ld->err, code, "%s:%d: %s", ld->path, line, message);
}

static void set_path(loader *ld, const char *name) {
  snprintf(ld->path, sizeof ld->path, "%s/%s", ld->dir, name);
}

/* Opens ld->path and reads its header row. */
static int open_csv(loader *ld, qt_csv_t **csv, const char *expected) {
  int rc = qt_csv_open(ld->path, csv, ld->err);
  if (rc < 0) return rc;
  rc = qt_csv_next(*csv, ld->err);
  if (rc < 0) return rc;
  if (rc == 0)
    return row_error(ld, 1, QT_ESCHEMA, "the file is empty; expected a header row (%s)", expected);
  return 0;
}

/* Reads the next record and checks its field count against the header's. */
static int next_row(loader *ld, qt_csv_t *csv, size_t columns) {
  int rc = qt_csv_next(csv, ld->err);
  if (rc <= 0) return rc;
  if (qt_csv_field_count(csv) != columns) {
    return row_error(ld, qt_csv_line(csv), QT_ESCHEMA, "%zu fields, but the header has %zu columns",
                     qt_csv_field_count(csv), columns);
  }
  return 1;
}

/* ------------------------------------------------------------------------- */
/* metadataset.yaml and the search space                                      */
/* ------------------------------------------------------------------------- */

/* What metadataset.yaml says, and the search space it names. */
typedef struct header {
  char *name, *metric, *provenance, *space;
  long max_epochs;
  qt_yaml_node max_epochs_node;
  qt_space_t *space_loaded; /* owned until handed to the meta-dataset */
  char *space_text;         /* the space file's text, likewise */
  size_t space_length;
} header;

static void header_free(header *h) {
  free(h->name);
  free(h->metric);
  free(h->provenance);
  free(h->space);
  qt_space_free(h->space_loaded);
  free(h->space_text);
}

/* Copies the scalar at node into *out; non-scalars and (unless allow_empty)
 * empty strings are errors at the node. */
static int yaml_string(const qt_yaml_doc_t *doc, qt_yaml_node node, const char *key,
                       int allow_empty, char **out, qt_err *err) {
  const char *text = qt_yaml_scalar(doc, node);
  if (!text) return qt_yaml_error(err, QT_ESCHEMA, doc, node, "%s must be a string", key);
  if (!allow_empty && !text[0])
    return qt_yaml_error(err, QT_ESCHEMA, doc, node, "%s must not be empty", key);
  size_t length = strlen(text);
  *out = malloc(length + 1);
  if (!*out) return qt_err_set(err, QT_ENOMEM, "out of memory");
  memcpy(*out, text, length + 1);
  return 0;
}

static int read_header(loader *ld, header *h) {
  static const char *const keys[] = {"version",     "name",       "metric", "higher_is_better",
                                     "score_scale", "max_epochs", "space",  "provenance",
                                     NULL};
  static const char *const required[] = {"name", "metric", "max_epochs", "space", NULL};
  set_path(ld, "metadataset.yaml");
  qt_yaml_doc_t *doc;
  int rc = qt_yaml_load_file(ld->path, &doc, ld->err);
  if (rc < 0) return rc;
  qt_yaml_node root = qt_yaml_root(doc);
  if (qt_yaml_kind_of(doc, root) != QT_YAML_KIND_MAPPING) {
    rc = qt_yaml_error(ld->err, QT_ESCHEMA, doc, root,
                       "a meta-dataset description must be a mapping (version, name, metric, "
                       "max_epochs, space, ...)");
    goto done;
  }
  /* The version first, so that a newer file says so instead of naming a key
   * this version does not know. */
  qt_yaml_node version = qt_yaml_get(doc, root, "version");
  long number = 0;
  if (!version) {
    rc = qt_yaml_error(ld->err, QT_ESCHEMA, doc, root,
                       "missing required key \"version\" (this qtune reads version %d)",
                       QT_METADATASET_VERSION);
    goto done;
  }
  if ((rc = qt_yaml_to_int(doc, version, &number, ld->err)) < 0) goto done;
  if (number != QT_METADATASET_VERSION) {
    rc = qt_yaml_error(ld->err, QT_EVERSION, doc, version,
                       "unsupported meta-dataset version %ld (this qtune reads version %d; a "
                       "newer qtune wrote this folder)",
                       number, QT_METADATASET_VERSION);
    goto done;
  }
  if ((rc = qt_yaml_check_keys(doc, root, keys, ld->err)) < 0) goto done;
  for (size_t k = 0; required[k]; k++) {
    if (!qt_yaml_get(doc, root, required[k])) {
      rc =
          qt_yaml_error(ld->err, QT_ESCHEMA, doc, root, "missing required key \"%s\"", required[k]);
      goto done;
    }
  }
  static const char *const string_keys[] = {"name", "metric", "space"};
  char **strings[] = {&h->name, &h->metric, &h->space};
  for (size_t k = 0; k < 3; k++) {
    rc = yaml_string(doc, qt_yaml_get(doc, root, string_keys[k]), string_keys[k], 0, strings[k],
                     ld->err);
    if (rc < 0) goto done;
  }
  qt_yaml_node node = qt_yaml_get(doc, root, "provenance");
  if (node && !qt_yaml_is_null(doc, node)) {
    rc = yaml_string(doc, node, "provenance", 1, &h->provenance, ld->err);
  } else if (!(h->provenance = calloc(1, 1))) {
    rc = qt_err_set(ld->err, QT_ENOMEM, "out of memory");
  }
  if (rc < 0) goto done;
  h->max_epochs_node = qt_yaml_get(doc, root, "max_epochs");
  if ((rc = qt_yaml_to_int(doc, h->max_epochs_node, &h->max_epochs, ld->err)) < 0) goto done;
  if (h->max_epochs < 1) {
    rc = qt_yaml_error(ld->err, QT_ESCHEMA, doc, h->max_epochs_node,
                       "max_epochs must be at least 1, got %ld", h->max_epochs);
    goto done;
  }
  ld->higher_is_better = 1;
  if ((node = qt_yaml_get(doc, root, "higher_is_better")) &&
      (rc = qt_yaml_to_bool(doc, node, &ld->higher_is_better, ld->err)) < 0)
    goto done;
  ld->score_scale = 1.0;
  if ((node = qt_yaml_get(doc, root, "score_scale"))) {
    if ((rc = qt_yaml_to_double(doc, node, &ld->score_scale, ld->err)) < 0) goto done;
    if (!(ld->score_scale > 0) || !isfinite(ld->score_scale)) {
      rc = qt_yaml_error(ld->err, QT_ESCHEMA, doc, node,
                         "score_scale must be a positive number (0.01 for percentages)");
      goto done;
    }
  }
  /* The space is loaded here so that max_epochs can be checked against its
   * fidelity where the line of max_epochs is known. */
  char space_path[4096];
  if (h->space[0] == '/')
    snprintf(space_path, sizeof space_path, "%s", h->space);
  else
    snprintf(space_path, sizeof space_path, "%s/%s", ld->dir, h->space);
  rc = qt_file_read(space_path, &h->space_text, &h->space_length, ld->err);
  if (rc < 0) {
    qt_err_prefix(ld->err, rc, "%s: the search space named by \"space\"", ld->path);
    goto done;
  }
  rc = qt_space_load_string(h->space_text, h->space_length, space_path, &h->space_loaded, ld->err);
  if (rc < 0) goto done;
  long fidelity_max;
  qt_space_fidelity(h->space_loaded, NULL, NULL, &fidelity_max);
  if (h->max_epochs > fidelity_max) {
    rc = qt_yaml_error(ld->err, QT_ESCHEMA, doc, h->max_epochs_node,
                       "max_epochs %ld is above the fidelity max %ld of search space \"%s\"",
                       h->max_epochs, fidelity_max, qt_space_name(h->space_loaded));
  }
done:
  qt_yaml_free(doc);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* datasets.csv                                                               */
/* ------------------------------------------------------------------------- */

/* Reads the header of datasets.csv, creates the meta-dataset (which needs
 * the feature names) and reads the datasets. */
static int read_datasets(loader *ld, header *h) {
  set_path(ld, "datasets.csv");
  qt_csv_t *csv = NULL;
  int rc = open_csv(ld, &csv, "dataset,<feature>,...");
  if (rc < 0) goto done;
  size_t columns = qt_csv_field_count(csv);
  if (strcmp(qt_csv_field(csv, 0), "dataset") != 0) {
    rc = row_error(ld, 1, QT_ESCHEMA, "the first column must be \"dataset\", not \"%s\"",
                   qt_csv_field(csv, 0));
    goto done;
  }
  /* The feature names point into the CSV buffer, which stays put until the
   * next record is read: the meta-dataset copies them before that. */
  const char *names[256];
  if (columns - 1 > sizeof names / sizeof names[0]) {
    rc = row_error(ld, 1, QT_ESCHEMA, "%zu features; at most %zu are supported", columns - 1,
                   sizeof names / sizeof names[0]);
    goto done;
  }
  for (size_t c = 1; c < columns; c++) {
    names[c - 1] = qt_csv_field(csv, c);
    if (!names[c - 1][0] || strcmp(names[c - 1], "dataset") == 0) {
      rc = row_error(ld, 1, QT_ESCHEMA, "column %zu: \"%s\" is not a feature name", c + 1,
                     names[c - 1]);
      goto done;
    }
    for (size_t b = 1; b < c; b++) {
      if (strcmp(names[b - 1], names[c - 1]) == 0) {
        rc = row_error(ld, 1, QT_ESCHEMA, "duplicate column \"%s\"", names[c - 1]);
        goto done;
      }
    }
  }
  qt_metadataset_params params = qt_metadataset_default_params();
  params.name = h->name;
  params.metric = h->metric;
  params.provenance = h->provenance;
  params.max_epochs = h->max_epochs;
  params.feature_count = columns - 1;
  params.feature_names = names;
  rc = qt__metadataset_new(h->space_loaded, h->space_text, h->space_length, &params, &ld->md,
                           ld->err);
  h->space_loaded = NULL; /* taken over, also on failure */
  h->space_text = NULL;
  if (rc < 0) goto done;

  double features[256];
  while ((rc = next_row(ld, csv, columns)) == 1) {
    int line = qt_csv_line(csv);
    const char *name = qt_csv_field(csv, 0);
    for (size_t c = 1; c < columns; c++) {
      if (qt_parse_double(qt_csv_field(csv, c), &features[c - 1]) < 0) {
        rc =
            row_error(ld, line, QT_ESCHEMA, "dataset %s: feature %s is \"%s\", not a finite number",
                      name, ld->md->feature_names[c - 1], qt_csv_field(csv, c));
        goto done;
      }
    }
    if (qt_metadataset_find_dataset(ld->md, name, NULL) == 0) {
      rc = row_error(ld, line, QT_ESCHEMA, "duplicate dataset \"%s\"", name);
      goto done;
    }
    if ((rc = qt_metadataset_add_dataset(ld->md, name, features, NULL, ld->err)) < 0) {
      qt_err_prefix(ld->err, rc, "%s:%d", ld->path, line);
      goto done;
    }
  }
done:
  qt_csv_free(csv);
  return rc < 0 ? rc : 0;
}

/* ------------------------------------------------------------------------- */
/* runs.csv                                                                   */
/* ------------------------------------------------------------------------- */

/* A column of runs.csv: the run id, the dataset, or hyperparameter hp. */
enum { RUNS_COLUMN_RUN = -1, RUNS_COLUMN_DATASET = -2, RUNS_COLUMN_NONE = -3 };

static int read_runs_header(loader *ld, qt_csv_t *csv, long *kinds, size_t *run_column,
                            size_t *dataset_column) {
  const qt_space_t *space = ld->md->space;
  size_t columns = qt_csv_field_count(csv), hp_count = qt_space_count(space);
  size_t seen_hps = 0;
  *run_column = *dataset_column = SIZE_MAX;
  for (size_t c = 0; c < columns; c++) {
    const char *name = qt_csv_field(csv, c);
    size_t hp;
    kinds[c] = RUNS_COLUMN_NONE;
    if (strcmp(name, "run") == 0) {
      kinds[c] = RUNS_COLUMN_RUN;
    } else if (strcmp(name, "dataset") == 0) {
      kinds[c] = RUNS_COLUMN_DATASET;
    } else if (qt_space_find(space, name, &hp) == 0) {
      kinds[c] = (long)hp;
    } else {
      return row_error(ld, 1, QT_ESCHEMA,
                       "unknown column \"%s\" (runs.csv has run, dataset and one column per "
                       "hyperparameter of search space \"%s\")",
                       name, qt_space_name(space));
    }
    for (size_t b = 0; b < c; b++) {
      if (kinds[b] == kinds[c])
        return row_error(ld, 1, QT_ESCHEMA, "duplicate column \"%s\"", name);
    }
    if (kinds[c] == RUNS_COLUMN_RUN) *run_column = c;
    if (kinds[c] == RUNS_COLUMN_DATASET) *dataset_column = c;
    if (kinds[c] >= 0) seen_hps++;
  }
  if (*run_column == SIZE_MAX) return row_error(ld, 1, QT_ESCHEMA, "missing column \"run\"");
  if (*dataset_column == SIZE_MAX)
    return row_error(ld, 1, QT_ESCHEMA, "missing column \"dataset\"");
  if (seen_hps < hp_count) {
    for (size_t hp = 0; hp < hp_count; hp++) {
      int found = 0;
      for (size_t c = 0; c < columns && !found; c++) found = kinds[c] == (long)hp;
      if (!found)
        return row_error(ld, 1, QT_ESCHEMA,
                         "missing column \"%s\" (one column per hyperparameter of search space "
                         "\"%s\"; empty cells for inactive ones)",
                         qt_space_hp_name(space, hp), qt_space_name(space));
    }
  }
  return 0;
}

static int read_runs(loader *ld) {
  qt_metadataset_t *md = ld->md;
  set_path(ld, "runs.csv");
  qt_csv_t *csv = NULL;
  long *kinds = NULL;
  qt_config config = {0};
  int rc = open_csv(ld, &csv, "run,dataset,<hyperparameter>,...");
  if (rc < 0) goto done;
  size_t columns = qt_csv_field_count(csv), run_column, dataset_column;
  size_t hp_count = qt_space_count(md->space);
  kinds = malloc(columns * sizeof *kinds);
  if (!kinds) {
    rc = qt_err_set(ld->err, QT_ENOMEM, "out of memory");
    goto done;
  }
  if ((rc = read_runs_header(ld, csv, kinds, &run_column, &dataset_column)) < 0) goto done;
  if ((rc = qt_config_init(&config, md->space, ld->err)) < 0) goto done;

  while ((rc = next_row(ld, csv, columns)) == 1) {
    int line = qt_csv_line(csv);
    const char *id = qt_csv_field(csv, run_column);
    const char *dataset_name = qt_csv_field(csv, dataset_column);
    size_t dataset, i = md->run_count;
    if (!id[0]) {
      rc = row_error(ld, line, QT_ESCHEMA, "empty run id");
      goto done;
    }
    if (qt_metadataset_find_dataset(md, dataset_name, &dataset) < 0) {
      rc = row_error(ld, line, QT_ESCHEMA, "run %s: unknown dataset \"%s\" (not in datasets.csv)",
                     id, dataset_name);
      goto done;
    }
    qt_config_clear(&config);
    for (size_t c = 0; c < columns; c++) {
      const char *text = qt_csv_field(csv, c);
      if (kinds[c] < 0 || !text[0]) continue;
      qt_err detail;
      int set = qt_config_set_string(&config, qt_space_hp_name(md->space, (size_t)kinds[c]), text,
                                     &detail);
      if (set < 0) {
        rc = row_error(ld, line, QT_ESCHEMA, "run %s: %s", id, qt_err_message(&detail));
        goto done;
      }
    }
    qt_err detail;
    if (qt_config_validate(&config, &detail) < 0) {
      rc = row_error(ld, line, QT_ESCHEMA, "run %s: invalid configuration: %s", id,
                     qt_err_message(&detail));
      goto done;
    }
    if ((rc = qt__metadataset_reserve(md, 0, i + 1, 0, ld->err)) < 0) goto done;
    /* The public pointers are linked once, after curves.csv. */
    size_t offset, first;
    if (qt__pool_add(&md->strings, id, strlen(id), &offset) < 0) {
      rc = qt_err_set(ld->err, QT_ENOMEM, "out of memory");
      goto done;
    }
    rc = qt__strmap_insert(&md->run_map, &md->strings, offset, i, &first);
    if (rc < 0) {
      rc = qt_err_set(ld->err, QT_ENOMEM, "out of memory");
      goto done;
    }
    if (rc == 1) {
      rc = row_error(ld, line, QT_ESCHEMA, "duplicate run id \"%s\" (first on line %d)", id,
                     md->records[first].line);
      goto done;
    }
    memcpy(md->slots + i * hp_count, config.slots, hp_count * sizeof *config.slots);
    qt__md_record record = {offset, 0, 0, 0, line};
    md->records[i] = record;
    md->runs[i].dataset = dataset;
    md->runs[i].epochs = 0;
    md->run_count++;
  }
done:
  qt_config_free(&config);
  free(kinds);
  qt_csv_free(csv);
  return rc < 0 ? rc : 0;
}

/* ------------------------------------------------------------------------- */
/* curves.csv                                                                 */
/* ------------------------------------------------------------------------- */

enum { CURVE_RUN, CURVE_EPOCH, CURVE_SCORE, CURVE_COST, CURVE_TRAIN, CURVE_VAL, CURVE_COLUMNS };

static int read_curves_header(loader *ld, qt_csv_t *csv, size_t *where) {
  static const char *const names[CURVE_COLUMNS] = {"run",    "epoch",      "score",
                                                   "cost_s", "train_loss", "val_loss"};
  for (int k = 0; k < CURVE_COLUMNS; k++) where[k] = SIZE_MAX;
  for (size_t c = 0; c < qt_csv_field_count(csv); c++) {
    const char *name = qt_csv_field(csv, c);
    int k = 0;
    while (k < CURVE_COLUMNS && strcmp(names[k], name) != 0) k++;
    if (k == CURVE_COLUMNS)
      return row_error(ld, 1, QT_ESCHEMA,
                       "unknown column \"%s\" (curves.csv has run, epoch, score, cost_s and "
                       "optionally train_loss, val_loss)",
                       name);
    if (where[k] != SIZE_MAX) return row_error(ld, 1, QT_ESCHEMA, "duplicate column \"%s\"", name);
    where[k] = c;
  }
  for (int k = 0; k <= CURVE_COST; k++) {
    if (where[k] == SIZE_MAX)
      return row_error(ld, 1, QT_ESCHEMA,
                       "missing column \"%s\" (curves.csv needs run, epoch, score, cost_s)",
                       names[k]);
  }
  return 0;
}

/* Reads a loss cell: empty is missing (NaN), anything else a finite number. */
static int read_loss(loader *ld, int line, const char *id, const char *column, const char *text,
                     float *out, int *has) {
  if (!text[0]) {
    *out = NAN;
    return 0;
  }
  double value;
  if (qt_parse_double(text, &value) < 0)
    return row_error(ld, line, QT_ESCHEMA, "run %s: %s \"%s\" is not a finite number", id, column,
                     text);
  *out = (float)value;
  *has = 1;
  return 0;
}

static int read_curves(loader *ld) {
  qt_metadataset_t *md = ld->md;
  set_path(ld, "curves.csv");
  qt_csv_t *csv = NULL;
  int rc = open_csv(ld, &csv, "run,epoch,score,cost_s[,train_loss][,val_loss]");
  if (rc < 0) goto done;
  size_t columns = qt_csv_field_count(csv), where[CURVE_COLUMNS];
  if ((rc = read_curves_header(ld, csv, where)) < 0) goto done;
  int train = where[CURVE_TRAIN] != SIZE_MAX, val = where[CURVE_VAL] != SIZE_MAX;

  /* A guess at the number of points from the file size (rows are 40 to 60
   * bytes in practice), so that the arenas grow once or twice at most. */
  struct stat info;
  size_t guess = stat(ld->path, &info) == 0 ? (size_t)info.st_size / 32 + 16 : 1024;
  if ((rc = qt__metadataset_reserve(md, 0, 0, guess, ld->err)) < 0) goto done;
  if ((train || val) && (rc = qt__metadataset_enable_losses(md, train, val, ld->err)) < 0)
    goto done;

  size_t current = SIZE_MAX; /* insertion index of the run of the previous row */
  const char *current_id = "";
  size_t max_epochs = (size_t)md->max_epochs;
  while ((rc = next_row(ld, csv, columns)) == 1) {
    int line = qt_csv_line(csv);
    const char *id = qt_csv_field(csv, where[CURVE_RUN]);
    /* Rows of one run are contiguous: most rows need no hash lookup. */
    if (current == SIZE_MAX || strcmp(id, current_id) != 0) {
      size_t i = qt__strmap_find(&md->run_map, &md->strings, id);
      if (i == SIZE_MAX) {
        rc = row_error(ld, line, QT_ESCHEMA, "unknown run \"%s\" (not in runs.csv)", id);
        goto done;
      }
      if (md->runs[i].epochs > 0) {
        rc = row_error(ld, line, QT_ESCHEMA,
                       "run %s: rows of this run appear again after rows of other runs (the "
                       "rows of a run must be contiguous, epochs 1, 2, ..., n)",
                       id);
        goto done;
      }
      current = i;
      current_id = md->strings.data + md->records[i].id;
      md->records[i].points = md->point_count;
    }
    qt_md_run *run = &md->runs[current];
    qt__md_record *record = &md->records[current];

    long epoch;
    const char *epoch_text = qt_csv_field(csv, where[CURVE_EPOCH]);
    if (qt_parse_long(epoch_text, &epoch) < 0) {
      rc = row_error(ld, line, QT_ESCHEMA, "run %s: epoch \"%s\" is not a whole number", id,
                     epoch_text);
      goto done;
    }
    if (epoch != (long)run->epochs + 1) {
      if (run->epochs == 0)
        rc = row_error(ld, line, QT_ESCHEMA, "run %s: the first row has epoch %ld, not 1", id,
                       epoch);
      else
        rc = row_error(ld, line, QT_ESCHEMA,
                       "run %s: epoch %ld follows epoch %zu (epochs must be 1, 2, ..., n in "
                       "order)",
                       id, epoch, run->epochs);
      goto done;
    }
    if ((size_t)epoch > max_epochs) {
      rc = row_error(ld, line, QT_ESCHEMA, "run %s: epoch %ld is above max_epochs %zu", id, epoch,
                     max_epochs);
      goto done;
    }

    double score, cost;
    const char *score_text = qt_csv_field(csv, where[CURVE_SCORE]);
    const char *cost_text = qt_csv_field(csv, where[CURVE_COST]);
    if (qt_parse_double(score_text, &score) < 0) {
      rc = row_error(ld, line, QT_ESCHEMA, "run %s, epoch %ld: score \"%s\" is not a finite number",
                     id, epoch, score_text);
      goto done;
    }
    double scaled = score * ld->score_scale;
    if (!ld->higher_is_better) scaled = 1.0 - scaled;
    /* Scaling percentages can land a rounding error outside [0, 1]. */
    if (scaled < 0.0 && scaled > -1e-6) scaled = 0.0;
    if (scaled > 1.0 && scaled < 1.0 + 1e-6) scaled = 1.0;
    if (!(scaled >= 0.0 && scaled <= 1.0)) {
      rc = row_error(ld, line, QT_ESCHEMA,
                     "run %s, epoch %ld: score %s is outside [0, 1] after score_scale %g%s", id,
                     epoch, score_text, ld->score_scale,
                     ld->higher_is_better ? "" : " and higher_is_better: false");
      goto done;
    }
    if (qt_parse_double(cost_text, &cost) < 0 || cost < 0.0) {
      rc = row_error(ld, line, QT_ESCHEMA,
                     "run %s, epoch %ld: cost_s \"%s\" is not a finite number >= 0", id, epoch,
                     cost_text);
      goto done;
    }

    size_t p = md->point_count;
    if (p >= md->point_capacity) {
      if ((rc = qt__metadataset_reserve(md, 0, 0, p + 1, ld->err)) < 0) goto done;
      current_id = md->strings.data + record->id;
    }
    md->score[p] = (float)scaled;
    md->cost[p] = (float)cost;
    if (train && (rc = read_loss(ld, line, id, "train_loss", qt_csv_field(csv, where[CURVE_TRAIN]),
                                 &md->train_loss[p], &record->has_train_loss)) < 0)
      goto done;
    if (val && (rc = read_loss(ld, line, id, "val_loss", qt_csv_field(csv, where[CURVE_VAL]),
                               &md->val_loss[p], &record->has_val_loss)) < 0)
      goto done;
    run->epochs++;
    md->point_count++;
  }
done:
  qt_csv_free(csv);
  return rc < 0 ? rc : 0;
}

/* ------------------------------------------------------------------------- */
/* The folder                                                                 */
/* ------------------------------------------------------------------------- */

int qt_metadataset_load(const char *dir, qt_metadataset_t **out, qt_err *err) {
  if (!dir || !out) return qt_err_set(err, QT_EINVAL, "qt_metadataset_load: NULL argument");
  *out = NULL;
  loader ld;
  memset(&ld, 0, sizeof ld);
  ld.dir = dir;
  ld.err = err;
  header h;
  memset(&h, 0, sizeof h);
  int rc = read_header(&ld, &h);
  if (rc == 0) rc = read_datasets(&ld, &h);
  if (rc == 0) rc = read_runs(&ld);
  if (rc == 0) rc = read_curves(&ld);
  if (rc == 0) {
    /* Every run needs a curve: an optimizer replaying this meta-dataset
     * cannot ask a run with no epochs anything. */
    qt_metadataset_t *md = ld.md;
    set_path(&ld, "runs.csv");
    for (size_t i = 0; i < md->run_count && rc == 0; i++) {
      if (md->runs[i].epochs == 0)
        rc = row_error(&ld, md->records[i].line, QT_ESCHEMA, "run %s has no rows in curves.csv",
                       md->strings.data + md->records[i].id);
    }
  }
  header_free(&h);
  if (rc < 0) {
    qt_metadataset_free(ld.md);
    return rc;
  }
  qt__metadataset_group(ld.md);
  qt__metadataset_link(ld.md);
  *out = ld.md;
  return 0;
}

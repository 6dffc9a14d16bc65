/*
 * qt_import_quicktune.c - importing Quick-Tune's meta-dataset layout
 * (perf.json, cost.json, table.csv, descriptors.json) into a meta-dataset.
 *
 * The hard part is table.csv: Quick-Tune stores each run's configuration
 * pre-encoded for its surrogate, with one-hot columns `cat:<hp>:<value>` for
 * categorical hyperparameters and raw numbers for the rest, including filler
 * values for hyperparameters that were inactive. The rules that turn a row
 * back into a configuration are documented in qt_metadata.h (importers) and
 * at the top of configs/spaces/quicktune-v1.yaml; this file is their only
 * implementation (tests/test_space.c checks the v1 mapping through it).
 *
 * Diverged runs. Quick-Tune's collection wrote NaN for epochs whose loss
 * diverged, and Python's json module writes NaN, Infinity and -Infinity as
 * bare tokens that are not JSON. They are rewritten before parsing into
 * marker strings of the same width (so that jansson's line:column positions
 * stay exact), and a curve ends before its first non-finite or null entry:
 * the run diverged there, and an optimizer replaying it cannot continue it.
 */
#include "metadata/qt_metadataset_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------- */
/* JSON files with Python's non-standard numbers                              */
/* ------------------------------------------------------------------------- */

/* The same-width replacements of NaN, Infinity and -Infinity. */
static const struct {
  const char *token, *marker, *text;
} python_numbers[] = {
    {"-Infinity", "\"-I\"     ", "-I"},
    {"Infinity", "\"I\"     ", "I"},
    {"NaN", "\"N\"", "N"},
};

static int is_word_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* Rewrites the Python tokens outside strings; returns how many it rewrote. */
static size_t rewrite_python_numbers(char *text, size_t length) {
  size_t rewritten = 0;
  int in_string = 0;
  for (size_t i = 0; i < length; i++) {
    char c = text[i];
    if (in_string) {
      if (c == '\\')
        i++;
      else if (c == '"')
        in_string = 0;
      continue;
    }
    if (c == '"') {
      in_string = 1;
      continue;
    }
    if (c != 'N' && c != 'I' && c != '-') continue;
    if (i > 0 && is_word_char(text[i - 1])) continue;
    for (size_t k = 0; k < sizeof python_numbers / sizeof python_numbers[0]; k++) {
      size_t n = strlen(python_numbers[k].token);
      if (n <= length - i && memcmp(text + i, python_numbers[k].token, n) == 0 &&
          (i + n == length || !is_word_char(text[i + n]))) {
        memcpy(text + i, python_numbers[k].marker, n);
        rewritten++;
        i += n - 1;
        break;
      }
    }
  }
  return rewritten;
}

typedef struct json_file {
  char path[4096];
  json_t *root;
  int has_markers; /* 1 when Python tokens were rewritten into marker strings */
} json_file;

static int load_json(const char *dir, const char *name, json_file *file, qt_err *err) {
  snprintf(file->path, sizeof file->path, "%s/%s", dir, name);
  char *text;
  size_t length;
  int rc = qt_file_read(file->path, &text, &length, err);
  if (rc < 0) return rc;
  file->has_markers = rewrite_python_numbers(text, length) > 0;
  rc = qt_json_load_string(text, length, file->path, &file->root, err);
  free(text);
  if (rc == 0 && !json_is_object(file->root)) {
    json_decref(file->root);
    file->root = NULL;
    rc = qt_err_set(err, QT_ESCHEMA, "%s: expected a JSON object at the top level", file->path);
  }
  return rc;
}

/* What a curve entry is: a finite number, a diverged marker (null, NaN,
 * +-Infinity) or something that has no business in a curve. */
enum { ENTRY_NUMBER, ENTRY_DIVERGED, ENTRY_INVALID };

static int classify_entry(const json_file *file, const json_t *value, double *number) {
  if (json_is_number(value)) {
    *number = json_number_value(value);
    return isfinite(*number) ? ENTRY_NUMBER : ENTRY_DIVERGED;
  }
  if (json_is_null(value)) return ENTRY_DIVERGED;
  if (file->has_markers && json_is_string(value)) {
    for (size_t k = 0; k < sizeof python_numbers / sizeof python_numbers[0]; k++) {
      if (strcmp(json_string_value(value), python_numbers[k].text) == 0) return ENTRY_DIVERGED;
    }
  }
  return ENTRY_INVALID;
}

static const char *json_kind(const json_t *value) {
  switch (json_typeof(value)) {
    case JSON_OBJECT:
      return "an object";
    case JSON_ARRAY:
      return "an array";
    case JSON_STRING:
      return "a string";
    case JSON_INTEGER:
    case JSON_REAL:
      return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
      return "a boolean";
    case JSON_NULL:
      return "null";
  }
  return "something else";
}

/* ------------------------------------------------------------------------- */
/* table.csv: columns                                                         */
/* ------------------------------------------------------------------------- */

enum { COLUMN_ONEHOT, COLUMN_NUMERIC };

typedef struct table_column {
  int kind;      /* COLUMN_ONEHOT or COLUMN_NUMERIC */
  size_t hp;     /* the hyperparameter the column sets */
  size_t choice; /* one-hot: the choice index, or SIZE_MAX for a filler value */
  size_t name;   /* offset of the header text in the table's pool */
} table_column;

/* The configurations of table.csv, by row. */
typedef struct table {
  char path[4096];
  const qt_space_t *space;
  qt__pool strings; /* run ids and column names */
  qt__strmap rows;  /* run id -> row */
  size_t row_count, row_capacity;
  qt_config_slot *slots; /* (row_capacity, hp_count) the valid configuration of each row */
  table_column *columns; /* (column_count); column 0, the run id, is unused */
  size_t column_count;
  size_t *none_choice;  /* (hp_count) index of the "None" choice, or SIZE_MAX */
  int *none_when_unset; /* (hp_count) 1: a one-hot group with no column set means None */
} table;

static void table_free(table *t) {
  qt__pool_free(&t->strings);
  qt__strmap_free(&t->rows);
  free(t->slots);
  free(t->columns);
  free(t->none_choice);
  free(t->none_when_unset);
}

static const char *column_name(const table *t, size_t c) {
  return t->strings.data + t->columns[c].name;
}

/* Maps the header of table.csv onto the space (see the rules in
 * qt_metadata.h). scratch is a configuration of the space. */
static int read_table_header(table *t, qt_csv_t *csv, qt_config *scratch, qt_err *err) {
  const qt_space_t *space = t->space;
  size_t hp_count = qt_space_count(space);
  t->column_count = qt_csv_field_count(csv);
  t->columns = calloc(t->column_count, sizeof *t->columns);
  t->none_choice = malloc(hp_count * sizeof *t->none_choice);
  t->none_when_unset = calloc(hp_count, sizeof *t->none_when_unset);
  int *onehot = calloc(hp_count, sizeof *onehot), *numeric = calloc(hp_count, sizeof *numeric);
  int *none_column = calloc(hp_count, sizeof *none_column);
  int rc = 0;
  if (!t->columns || !t->none_choice || !t->none_when_unset || !onehot || !numeric ||
      !none_column) {
    rc = qt_err_set(err, QT_ENOMEM, "out of memory");
    goto done;
  }
  for (size_t hp = 0; hp < hp_count; hp++) {
    t->none_choice[hp] = SIZE_MAX;
    if (qt_space_hp_type(space, hp) != QT_HP_TYPE_CATEGORICAL) continue;
    for (size_t k = 0; k < qt_space_hp_choice_count(space, hp); k++) {
      if (strcmp(qt_space_hp_choice(space, hp, k), "None") == 0) t->none_choice[hp] = k;
    }
  }
  for (size_t c = 1; c < t->column_count; c++) {
    const char *name = qt_csv_field(csv, c);
    table_column *column = &t->columns[c];
    if (qt__pool_add(&t->strings, name, strlen(name), &column->name) < 0) {
      rc = qt_err_set(err, QT_ENOMEM, "out of memory");
      goto done;
    }
    if (strncmp(name, "cat:", 4) == 0) {
      const char *colon = strchr(name + 4, ':');
      char hp_name[256];
      if (!colon || colon == name + 4 || (size_t)(colon - name - 4) >= sizeof hp_name) {
        rc = qt_err_set(err, QT_ESCHEMA, "%s:1: column \"%s\" is not cat:<hyperparameter>:<value>",
                        t->path, name);
        goto done;
      }
      snprintf(hp_name, sizeof hp_name, "%.*s", (int)(colon - name - 4), name + 4);
      column->kind = COLUMN_ONEHOT;
      if (qt_space_find(space, hp_name, &column->hp) < 0) {
        rc = qt_err_set(err, QT_ESCHEMA,
                        "%s:1: unknown one-hot column \"%s\": search space \"%s\" has no "
                        "hyperparameter \"%s\"",
                        t->path, name, qt_space_name(space), hp_name);
        goto done;
      }
      if (qt_space_hp_choice_count(space, column->hp) == 0) {
        rc = qt_err_set(
            err, QT_ESCHEMA, "%s:1: one-hot column \"%s\": %s is %s, it has no choices to encode",
            t->path, name, hp_name, qt_hp_type_name(qt_space_hp_type(space, column->hp)));
        goto done;
      }
      qt_err detail;
      if (qt_config_set_string(scratch, hp_name, colon + 1, &detail) == 0) {
        column->choice = (size_t)qt_config_index(scratch, column->hp);
        if (column->choice == t->none_choice[column->hp]) none_column[column->hp] = 1;
      } else if (qt_space_hp_condition_count(space, column->hp) > 0) {
        /* Quick-Tune's filler for an inactive hyperparameter
         * (cat:opt_betas:None): legal only while the hyperparameter is
         * inactive, which the row check enforces. */
        column->choice = SIZE_MAX;
      } else {
        rc = qt_err_set(err, QT_ESCHEMA, "%s:1: unknown one-hot column \"%s\": %s", t->path, name,
                        qt_err_message(&detail));
        goto done;
      }
      for (size_t b = 1; b < c; b++) {
        if (t->columns[b].kind == COLUMN_ONEHOT && t->columns[b].hp == column->hp &&
            t->columns[b].choice == column->choice) {
          rc = qt_err_set(err, QT_ESCHEMA, "%s:1: columns \"%s\" and \"%s\" set the same value",
                          t->path, column_name(t, b), name);
          goto done;
        }
      }
      onehot[column->hp] = 1;
    } else {
      column->kind = COLUMN_NUMERIC;
      column->choice = SIZE_MAX;
      if (qt_space_find(space, name, &column->hp) < 0) {
        rc = qt_err_set(err, QT_ESCHEMA,
                        "%s:1: unknown column \"%s\": not a hyperparameter of search space \"%s\" "
                        "and not a one-hot column cat:<hyperparameter>:<value>",
                        t->path, name, qt_space_name(space));
        goto done;
      }
      if (numeric[column->hp]) {
        rc = qt_err_set(err, QT_ESCHEMA, "%s:1: duplicate column \"%s\"", t->path, name);
        goto done;
      }
      numeric[column->hp] = 1;
    }
  }
  for (size_t hp = 0; hp < hp_count; hp++) {
    const char *name = qt_space_hp_name(space, hp);
    if (onehot[hp] && numeric[hp]) {
      rc = qt_err_set(err, QT_ESCHEMA, "%s:1: %s has both a column and one-hot columns cat:%s:*",
                      t->path, name, name);
      goto done;
    }
    if (!onehot[hp] && !numeric[hp]) {
      rc = qt_err_set(err, QT_ESCHEMA,
                      "%s:1: no column sets hyperparameter \"%s\" of search space \"%s\" "
                      "(expected a column %s or one-hot columns cat:%s:<value>)",
                      t->path, name, qt_space_name(space), name, name);
      goto done;
    }
    /* Quick-Tune has no cat:sched:None column: no sched column set means
     * sched=None. */
    t->none_when_unset[hp] = onehot[hp] && t->none_choice[hp] != SIZE_MAX && !none_column[hp];
  }
done:
  free(onehot);
  free(numeric);
  free(none_column);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* table.csv: rows                                                            */
/* ------------------------------------------------------------------------- */

/* Per-row scratch: which column set or offered a value for each hp. */
typedef struct row_state {
  size_t *set_by;   /* (hp_count) one-hot column that was 1, or SIZE_MAX */
  size_t *rejected; /* (hp_count) column whose value was not a choice, or SIZE_MAX */
} row_state;

/* Turns the current row into a valid configuration in config. */
static int read_table_row(table *t, qt_csv_t *csv, row_state *state, qt_config *config,
                          qt_err *err) {
  const qt_space_t *space = t->space;
  size_t hp_count = qt_space_count(space);
  int line = qt_csv_line(csv);
  const char *id = qt_csv_field(csv, 0);
  qt_config_clear(config);
  for (size_t hp = 0; hp < hp_count; hp++) state->set_by[hp] = state->rejected[hp] = SIZE_MAX;

  for (size_t c = 1; c < t->column_count; c++) {
    const table_column *column = &t->columns[c];
    const char *text = qt_csv_field(csv, c);
    double value;
    if (qt_parse_double(text, &value) < 0) {
      return qt_err_set(err, QT_ESCHEMA, "%s:%d: run %s: column \"%s\" holds \"%s\", not a number",
                        t->path, line, id, column_name(t, c), text);
    }
    if (column->kind == COLUMN_ONEHOT) {
      if (value != 0.0 && value != 1.0) {
        return qt_err_set(err, QT_ESCHEMA,
                          "%s:%d: run %s: one-hot column \"%s\" holds %s, not 0 or 1", t->path,
                          line, id, column_name(t, c), text);
      }
      if (value == 0.0) continue;
      if (state->set_by[column->hp] != SIZE_MAX) {
        return qt_err_set(err, QT_ESCHEMA,
                          "%s:%d: run %s: two columns of the one-hot group of %s are 1 (\"%s\" "
                          "and \"%s\")",
                          t->path, line, id, qt_space_hp_name(space, column->hp),
                          column_name(t, state->set_by[column->hp]), column_name(t, c));
      }
      state->set_by[column->hp] = c;
      if (column->choice == SIZE_MAX)
        state->rejected[column->hp] = c;
      else
        qt_config_set_index(config, column->hp, column->choice, NULL);
      continue;
    }
    /* Quick-Tune writes a None of a numeric-looking categorical (clip_grad,
     * layer_decay) as -1. */
    if (value == -1.0 && t->none_choice[column->hp] != SIZE_MAX) {
      qt_config_set_index(config, column->hp, t->none_choice[column->hp], NULL);
      continue;
    }
    qt_err detail;
    if (qt_config_set_number(config, column->hp, value, &detail) == 0) continue;
    if (qt_space_hp_condition_count(space, column->hp) == 0) {
      return qt_err_set(err, QT_ESCHEMA, "%s:%d: run %s: column \"%s\": %s", t->path, line, id,
                        column_name(t, c), qt_err_message(&detail));
    }
    state->rejected[column->hp] = c; /* a filler, unless the hp turns out active */
  }

  for (size_t hp = 0; hp < hp_count; hp++) {
    if (t->none_when_unset[hp] && state->set_by[hp] == SIZE_MAX)
      qt_config_set_index(config, hp, t->none_choice[hp], NULL);
  }
  qt_config_prune(config);
  for (size_t hp = 0; hp < hp_count; hp++) {
    size_t c = state->rejected[hp];
    if (c == SIZE_MAX || qt_config_is_active(config, hp) || !qt_config_conditions_hold(config, hp))
      continue;
    /* A filler is only a filler while its hyperparameter is inactive. */
    const char *shown = t->columns[c].kind == COLUMN_ONEHOT ? "1" : qt_csv_field(csv, c);
    return qt_err_set(err, QT_ESCHEMA,
                      "%s:%d: run %s: column \"%s\" holds %s, which is not a value of %s, but %s "
                      "is active in this configuration",
                      t->path, line, id, column_name(t, c), shown, qt_space_hp_name(space, hp),
                      qt_space_hp_name(space, hp));
  }
  qt_err detail;
  if (qt_config_validate(config, &detail) < 0) {
    return qt_err_set(err, QT_ESCHEMA, "%s:%d: run %s: the row is not a valid configuration: %s",
                      t->path, line, id, qt_err_message(&detail));
  }
  return 0;
}

static int read_table(const char *dir, const qt_space_t *space, table *t, qt_err *err) {
  snprintf(t->path, sizeof t->path, "%s/table.csv", dir);
  t->space = space;
  size_t hp_count = qt_space_count(space);
  qt_csv_t *csv = NULL;
  qt_config config = {0};
  row_state state = {malloc(hp_count * sizeof(size_t)), malloc(hp_count * sizeof(size_t))};
  int rc = qt_config_init(&config, space, err);
  if (rc == 0 && (!state.set_by || !state.rejected))
    rc = qt_err_set(err, QT_ENOMEM, "out of memory");
  if (rc == 0) rc = qt_csv_open(t->path, &csv, err);
  if (rc == 0 && (rc = qt_csv_next(csv, err)) == 0)
    rc = qt_err_set(err, QT_ESCHEMA, "%s:1: the file is empty; expected a header row", t->path);
  if (rc == 1) rc = read_table_header(t, csv, &config, err);
  while (rc == 0 && (rc = qt_csv_next(csv, err)) == 1) {
    int line = qt_csv_line(csv);
    if (qt_csv_field_count(csv) != t->column_count) {
      rc = qt_err_set(err, QT_ESCHEMA, "%s:%d: %zu fields, but the header has %zu columns", t->path,
                      line, qt_csv_field_count(csv), t->column_count);
      break;
    }
    const char *id = qt_csv_field(csv, 0);
    if (!id[0]) {
      rc = qt_err_set(err, QT_ESCHEMA, "%s:%d: empty run id", t->path, line);
      break;
    }
    if ((rc = read_table_row(t, csv, &state, &config, err)) < 0) break;
    if (t->row_count == t->row_capacity) {
      size_t capacity = t->row_capacity ? 2 * t->row_capacity : 1024;
      qt_config_slot *slots = realloc(t->slots, capacity * hp_count * sizeof *slots);
      if (!slots) {
        rc = qt_err_set(err, QT_ENOMEM, "out of memory");
        break;
      }
      t->slots = slots;
      t->row_capacity = capacity;
    }
    size_t offset;
    if (qt__pool_add(&t->strings, id, strlen(id), &offset) < 0 ||
        (rc = qt__strmap_insert(&t->rows, &t->strings, offset, t->row_count, NULL)) < 0) {
      rc = qt_err_set(err, QT_ENOMEM, "out of memory");
      break;
    }
    if (rc == 1) {
      rc = qt_err_set(err, QT_ESCHEMA, "%s:%d: duplicate run id \"%s\"", t->path, line, id);
      break;
    }
    memcpy(t->slots + t->row_count * hp_count, config.slots, hp_count * sizeof *config.slots);
    t->row_count++;
  }
  free(state.set_by);
  free(state.rejected);
  qt_config_free(&config);
  qt_csv_free(csv);
  return rc < 0 ? rc : 0;
}

/* ------------------------------------------------------------------------- */
/* Curves                                                                     */
/* ------------------------------------------------------------------------- */

/* Converts one run's perf and cost arrays into score[] and cost[] (at most
 * max_epochs entries each). *epochs receives the length of the finite
 * prefix of perf (0 when the first epoch diverged). */
static int read_curve(const json_file *perf, const json_file *cost, const char *dataset,
                      const char *id, const json_t *perf_curve, const json_t *cost_curve,
                      size_t max_epochs, float *score, float *seconds, size_t *epochs,
                      qt_err *err) {
  if (!json_is_array(perf_curve))
    return qt_err_set(err, QT_ESCHEMA, "%s: dataset %s, run %s: expected an array, got %s",
                      perf->path, dataset, id, json_kind(perf_curve));
  if (!json_is_array(cost_curve))
    return qt_err_set(err, QT_ESCHEMA, "%s: dataset %s, run %s: expected an array, got %s",
                      cost->path, dataset, id, json_kind(cost_curve));
  size_t length = json_array_size(perf_curve);
  if (json_array_size(cost_curve) != length)
    return qt_err_set(err, QT_ESCHEMA, "dataset %s, run %s: %s has %zu epochs but %s has %zu",
                      dataset, id, perf->path, length, cost->path, json_array_size(cost_curve));
  if (length == 0)
    return qt_err_set(err, QT_ESCHEMA, "%s: dataset %s, run %s: the curve is empty", perf->path,
                      dataset, id);
  if (length > max_epochs)
    return qt_err_set(err, QT_ESCHEMA,
                      "%s: dataset %s, run %s: %zu epochs, above the search space's fidelity max "
                      "%zu",
                      perf->path, dataset, id, length, max_epochs);
  *epochs = length;
  for (size_t e = 0; e < length; e++) {
    double accuracy = 0.0, time = 0.0;
    int kind = classify_entry(perf, json_array_get(perf_curve, e), &accuracy);
    if (kind == ENTRY_INVALID)
      return qt_err_set(err, QT_ESCHEMA,
                        "%s: dataset %s, run %s, epoch %zu: expected a number, got %s", perf->path,
                        dataset, id, e + 1, json_kind(json_array_get(perf_curve, e)));
    int cost_kind = classify_entry(cost, json_array_get(cost_curve, e), &time);
    if (cost_kind == ENTRY_INVALID)
      return qt_err_set(err, QT_ESCHEMA,
                        "%s: dataset %s, run %s, epoch %zu: expected a number, got %s", cost->path,
                        dataset, id, e + 1, json_kind(json_array_get(cost_curve, e)));
    if (kind == ENTRY_DIVERGED && *epochs == length) *epochs = e;
    if (e >= *epochs) continue; /* after divergence only the types are checked */
    if (accuracy < 0.0 || accuracy > 100.0)
      return qt_err_set(err, QT_ESCHEMA,
                        "%s: dataset %s, run %s, epoch %zu: accuracy %g%% is outside [0, 100]",
                        perf->path, dataset, id, e + 1, accuracy);
    if (cost_kind != ENTRY_NUMBER || time < 0.0)
      return qt_err_set(err, QT_ESCHEMA,
                        "%s: dataset %s, run %s, epoch %zu: the cost must be seconds >= 0, got %s",
                        cost->path, dataset, id, e + 1,
                        cost_kind == ENTRY_NUMBER ? "a negative number" : "a missing value");
    score[e] = (float)(accuracy / 100.0);
    seconds[e] = (float)time;
  }
  return 0;
}

/* ------------------------------------------------------------------------- */
/* The import                                                                 */
/* ------------------------------------------------------------------------- */

/* Checks that cost.json has nothing perf.json lacks. */
static int check_cost_extra(const json_file *perf, const json_file *cost, qt_err *err) {
  const char *dataset;
  json_t *runs;
  json_object_foreach(cost->root, dataset, runs) {
    if (strcmp(dataset, "info") == 0) continue; /* a description, as in perf.json */
    json_t *perf_runs = json_object_get(perf->root, dataset);
    if (!perf_runs)
      return qt_err_set(err, QT_ESCHEMA, "%s: dataset %s is not in %s", cost->path, dataset,
                        perf->path);
    if (!json_is_object(runs))
      return qt_err_set(err, QT_ESCHEMA, "%s: dataset %s: expected an object of runs, got %s",
                        cost->path, dataset, json_kind(runs));
    const char *id;
    json_t *curve;
    json_object_foreach(runs, id, curve) {
      if (!json_object_get(perf_runs, id))
        return qt_err_set(err, QT_ESCHEMA, "%s: run %s of dataset %s is not in %s", cost->path, id,
                          dataset, perf->path);
    }
  }
  return 0;
}

/* Reads descriptors.json's four numbers for dataset. */
static int read_descriptors(const json_file *descriptors, const char *dataset, double *features,
                            const json_file *perf, qt_err *err) {
  json_t *value = json_object_get(descriptors->root, dataset);
  if (!value)
    return qt_err_set(err, QT_ESCHEMA, "%s: no descriptors for dataset %s (it is in %s)",
                      descriptors->path, dataset, perf->path);
  if (!json_is_array(value) || json_array_size(value) != 4)
    return qt_err_set(err, QT_ESCHEMA,
                      "%s: dataset %s: expected [n_samples, n_classes, image_size, channels]",
                      descriptors->path, dataset);
  for (size_t k = 0; k < 4; k++) {
    json_t *item = json_array_get(value, k);
    if (!json_is_number(item) || json_number_value(item) < 0)
      return qt_err_set(err, QT_ESCHEMA, "%s: dataset %s: descriptor %zu is %s, not a number >= 0",
                        descriptors->path, dataset, k + 1, json_kind(item));
    features[k] = json_number_value(item);
  }
  return 0;
}

/* Adds every dataset and run of perf.json to md. */
static int import_runs(qt_metadataset_t *md, const table *t, const json_file *perf,
                       const json_file *cost, const json_file *descriptors, size_t *diverged,
                       qt_err *err) {
  size_t max_epochs = (size_t)qt_metadataset_max_epochs(md);
  size_t hp_count = qt_space_count(qt_metadataset_space(md));
  qt_config config = {0};
  float *curves = malloc(2 * max_epochs * sizeof *curves); /* (2, max_epochs) score, cost */
  int rc = qt_config_init(&config, qt_metadataset_space(md), err);
  if (rc == 0 && !curves) rc = qt_err_set(err, QT_ENOMEM, "out of memory");
  const char *dataset_name;
  json_t *runs;
  json_object_foreach(perf->root, dataset_name, runs) {
    if (rc < 0) break;
    if (strcmp(dataset_name, "info") == 0) continue; /* the collection's description */
    if (!json_is_object(runs)) {
      rc = qt_err_set(err, QT_ESCHEMA, "%s: dataset %s: expected an object of runs, got %s",
                      perf->path, dataset_name, json_kind(runs));
      break;
    }
    json_t *cost_runs = json_object_get(cost->root, dataset_name);
    if (!cost_runs) {
      rc = qt_err_set(err, QT_ESCHEMA, "%s: dataset %s is in %s but not here", cost->path,
                      dataset_name, perf->path);
      break;
    }
    double features[4];
    size_t dataset;
    if ((rc = read_descriptors(descriptors, dataset_name, features, perf, err)) < 0) break;
    if ((rc = qt_metadataset_add_dataset(md, dataset_name, features, &dataset, err)) < 0) break;
    const char *id;
    json_t *perf_curve;
    json_object_foreach(runs, id, perf_curve) {
      size_t row = qt__strmap_find(&t->rows, &t->strings, id);
      if (row == SIZE_MAX) {
        rc = qt_err_set(err, QT_ESCHEMA, "%s: run %s of dataset %s is not in %s", perf->path, id,
                        dataset_name, t->path);
        break;
      }
      json_t *cost_curve = json_object_get(cost_runs, id);
      if (!cost_curve) {
        rc = qt_err_set(err, QT_ESCHEMA, "%s: run %s of dataset %s is in %s but not here",
                        cost->path, id, dataset_name, perf->path);
        break;
      }
      size_t epochs = 0;
      rc = read_curve(perf, cost, dataset_name, id, perf_curve, cost_curve, max_epochs, curves,
                      curves + max_epochs, &epochs, err);
      if (rc < 0) break;
      if (epochs == 0) {
        (*diverged)++;
        QT_LOG_DEBUG("%s: dataset %s, run %s diverged in its first epoch; left out", perf->path,
                     dataset_name, id);
        continue;
      }
      memcpy(config.slots, t->slots + row * hp_count, hp_count * sizeof *config.slots);
      qt_md_run run = {id, dataset, &config, epochs, curves, curves + max_epochs, NULL, NULL};
      if ((rc = qt_metadataset_add_run(md, &run, err)) < 0) {
        qt_err_prefix(err, rc, "%s: dataset %s", perf->path, dataset_name);
        break;
      }
    }
  }
  free(curves);
  qt_config_free(&config);
  return rc;
}

int qt_metadataset_import_quicktune(const char *src_dir, const char *space_path,
                                    qt_metadataset_t **out, qt_err *err) {
  if (!src_dir || !space_path || !out)
    return qt_err_set(err, QT_EINVAL, "qt_metadataset_import_quicktune: NULL argument");
  *out = NULL;
  static const char *const features[] = {"n_samples", "n_classes", "image_size", "channels"};
  json_file perf = {{0}, NULL, 0}, cost = {{0}, NULL, 0}, descriptors = {{0}, NULL, 0};
  table t;
  memset(&t, 0, sizeof t);
  qt_metadataset_t *md = NULL;
  char name[256], provenance[2048];

  int rc = load_json(src_dir, "perf.json", &perf, err);
  if (rc == 0) rc = load_json(src_dir, "cost.json", &cost, err);
  if (rc == 0) rc = load_json(src_dir, "descriptors.json", &descriptors, err);
  if (rc == 0) {
    /* The name and provenance come from perf.json's "info" when present. */
    json_t *info = json_object_get(perf.root, "info");
    const char *version = json_string_value(json_object_get(info, "version"));
    const char *description = json_string_value(json_object_get(info, "description"));
    snprintf(name, sizeof name, "quicktune-%s", version ? version : "imported");
    snprintf(provenance, sizeof provenance,
             "Quick-Tune meta-dataset (perf.json, cost.json, table.csv, descriptors.json) "
             "imported from %s by qtune %s. Scores are validation top-1 accuracy / 100; costs "
             "are seconds per epoch (train + eval); curves end before their first NaN or null "
             "entry (a diverged run).%s%s",
             src_dir, QT_VERSION_STRING, description ? " Source: " : "",
             description ? description : "");
    qt_metadataset_params params = qt_metadataset_default_params();
    params.name = name;
    params.metric = "top1";
    params.provenance = provenance;
    params.feature_count = 4;
    params.feature_names = features;
    rc = qt_metadataset_create(space_path, &params, &md, err);
  }
  if (rc == 0) rc = read_table(src_dir, qt_metadataset_space(md), &t, err);
  if (rc == 0) rc = check_cost_extra(&perf, &cost, err);
  size_t diverged = 0;
  if (rc == 0) rc = import_runs(md, &t, &perf, &cost, &descriptors, &diverged, err);
  if (rc == 0 && diverged > 0)
    QT_LOG_WARN("%s: %zu run%s diverged in the first epoch and %s left out", perf.path, diverged,
                diverged == 1 ? "" : "s", diverged == 1 ? "was" : "were");
  table_free(&t);
  json_decref(perf.root);
  json_decref(cost.root);
  json_decref(descriptors.root);
  if (rc < 0) {
    qt_metadataset_free(md);
    return rc;
  }
  *out = md;
  return 0;
}

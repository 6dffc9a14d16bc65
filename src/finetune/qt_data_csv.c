/*
 * qt_data_csv.c - tabular datasets from CSV (qt_csv_* of the core module):
 * one header row, a label column chosen by name, every other column a
 * numeric feature.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_data_internal.h"

static int cmp_label_text(const void *a, const void *b) {
  const char *x = *(char *const *)a, *y = *(char *const *)b;
  return strcmp(x, y);
}

static int cmp_label_number(const void *a, const void *b) {
  long x = 0, y = 0;
  qt_parse_long(*(char *const *)a, &x);
  qt_parse_long(*(char *const *)b, &y);
  return (x > y) - (x < y);
}

/* Index of text in the sorted names (binary search with the same order);
 * -1 when absent. */
static long find_name(char **names, size_t n, const char *text, int numeric) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = numeric ? cmp_label_number(&names[mid], &text) : cmp_label_text(&names[mid], &text);
    if (c == 0) return (long)mid;
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return -1;
}

int qt_dataset_load_csv(const char *path, const char *label_column, const char *const *class_names,
                        size_t n_class_names, qt_dataset **out, qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_dataset_load_csv: out is NULL");
  *out = NULL;
  if (!path) return qt_err_set(err, QT_EINVAL, "qt_dataset_load_csv: path is NULL");
  const char *label_name = label_column ? label_column : "label";

  qt_csv_t *csv = NULL;
  qt_dataset *ds = NULL;
  char **row_labels = NULL; /* (rows) label text of each row */
  char **distinct = NULL;   /* (n_distinct) sorted distinct labels */
  size_t n_distinct = 0;
  size_t rows = 0, row_cap = 0, feat_cap = 0;
  int rc = qt_csv_open(path, &csv, err);
  if (rc < 0) return rc;
  if ((rc = qt__dataset_new(QT_DATASET_KIND_TABULAR, path, &ds, err)) < 0) goto done;

  rc = qt_csv_next(csv, err);
  if (rc <= 0) {
    if (rc == 0)
      rc = qt_err_set(err, QT_ESCHEMA, "%s: empty file (a header row is required)", path);
    goto done;
  }
  size_t columns = qt_csv_field_count(csv);
  size_t label_index = columns;
  for (size_t j = 0; j < columns; j++) {
    for (size_t i = 0; i < j; i++) {
      if (strcmp(qt_csv_field(csv, i), qt_csv_field(csv, j)) == 0) {
        rc = qt_err_set(err, QT_ESCHEMA, "%s:%d: column '%s' appears twice", path, qt_csv_line(csv),
                        qt_csv_field(csv, j));
        goto done;
      }
    }
    if (strcmp(qt_csv_field(csv, j), label_name) == 0) label_index = j;
  }
  if (label_index == columns) {
    char list[512] = "";
    size_t used = 0;
    for (size_t j = 0; j < columns && used < sizeof list; j++)
      used += (size_t)snprintf(list + used, sizeof list - used, "%s'%s'", j ? ", " : "",
                               qt_csv_field(csv, j));
    rc = qt_err_set(err, QT_ESCHEMA, "%s:%d: no label column '%s' (columns: %s)", path,
                    qt_csv_line(csv), label_name, list);
    goto done;
  }
  if (columns < 2) {
    rc = qt_err_set(err, QT_ESCHEMA, "%s:%d: no feature column besides the label '%s'", path,
                    qt_csv_line(csv), label_name);
    goto done;
  }
  size_t n_features = columns - 1;
  ds->feature_names = calloc(n_features, sizeof *ds->feature_names);
  if (!ds->feature_names) {
    rc = qt_err_set(err, QT_ENOMEM, "out of memory");
    goto done;
  }
  ds->n_features = n_features;
  for (size_t j = 0, f = 0; j < columns; j++) {
    if (j == label_index) continue;
    if ((rc = qt__strdup(qt_csv_field(csv, j), &ds->feature_names[f++], err)) < 0) goto done;
  }

  while ((rc = qt_csv_next(csv, err)) == 1) {
    int line = qt_csv_line(csv);
    if (qt_csv_field_count(csv) != columns) {
      rc = qt_err_set(err, QT_ESCHEMA, "%s:%d: %zu fields, the header has %zu", path, line,
                      qt_csv_field_count(csv), columns);
      goto done;
    }
    if (rows == row_cap) {
      size_t cap = row_cap ? 2 * row_cap : 1024;
      char **labels = realloc(row_labels, cap * sizeof *labels);
      if (!labels) {
        rc = qt_err_set(err, QT_ENOMEM, "out of memory");
        goto done;
      }
      row_labels = labels;
      row_cap = cap;
    }
    if (rows * n_features + n_features > feat_cap) {
      size_t cap = feat_cap ? 2 * feat_cap : 1024 * n_features;
      float *features = realloc(ds->features, cap * sizeof *features);
      if (!features) {
        rc = qt_err_set(err, QT_ENOMEM, "out of memory");
        goto done;
      }
      ds->features = features;
      feat_cap = cap;
    }
    float *x = ds->features + rows * n_features;
    for (size_t j = 0, f = 0; j < columns; j++) {
      if (j == label_index) continue;
      const char *text = qt_csv_field(csv, j);
      double v;
      if (qt_parse_double(text, &v) != 0) {
        rc = qt_err_set(err, QT_ESCHEMA, "%s:%d: column '%s': '%s' is not a number%s", path, line,
                        ds->feature_names[f], text,
                        text[0] ? "" : " (missing values are not supported)");
        goto done;
      }
      x[f++] = (float)v;
    }
    const char *label = qt_csv_field(csv, label_index);
    if (!label[0]) {
      rc = qt_err_set(err, QT_ESCHEMA, "%s:%d: empty label", path, line);
      goto done;
    }
    if ((rc = qt__strdup(label, &row_labels[rows], err)) < 0) goto done;
    rows++;
  }
  if (rc < 0) goto done;
  rc = 0;

  /* Classes: the fixed list, or the distinct labels sorted. */
  int numeric = 1;
  if (class_names) {
    for (size_t k = 0; k < n_class_names && numeric; k++) {
      long v;
      numeric = qt_parse_long(class_names[k], &v) == 0;
    }
    if ((rc = qt__dataset_set_classes(ds, class_names, n_class_names, err)) < 0) goto done;
  } else {
    for (size_t i = 0; i < rows && numeric; i++) {
      long v;
      numeric = qt_parse_long(row_labels[i], &v) == 0;
    }
    distinct = malloc((rows ? rows : 1) * sizeof *distinct);
    if (!distinct) {
      rc = qt_err_set(err, QT_ENOMEM, "out of memory");
      goto done;
    }
    memcpy(distinct, row_labels, rows * sizeof *distinct);
    qsort(distinct, rows, sizeof *distinct, numeric ? cmp_label_number : cmp_label_text);
    for (size_t i = 0; i < rows; i++) {
      int same = n_distinct > 0 &&
                 (numeric ? cmp_label_number(&distinct[n_distinct - 1], &distinct[i])
                          : cmp_label_text(&distinct[n_distinct - 1], &distinct[i])) == 0;
      if (!same) distinct[n_distinct++] = distinct[i];
    }
    if ((rc = qt__dataset_set_classes(ds, (const char *const *)distinct, n_distinct, err)) < 0)
      goto done;
  }
  /* Labels: a binary search in the sorted distinct labels, or a linear one
   * in a fixed list (which may be in any order). */
  ds->labels = malloc((rows ? rows : 1) * sizeof *ds->labels);
  if (!ds->labels) {
    rc = qt_err_set(err, QT_ENOMEM, "out of memory");
    goto done;
  }
  for (size_t i = 0; i < rows; i++) {
    long k = -1;
    if (class_names) {
      for (size_t c = 0; c < n_class_names; c++) {
        long a, b;
        int match = numeric && qt_parse_long(row_labels[i], &a) == 0 &&
                            qt_parse_long(class_names[c], &b) == 0
                        ? a == b
                        : strcmp(row_labels[i], class_names[c]) == 0;
        if (match) {
          k = (long)c;
          break;
        }
      }
      if (k < 0) {
        rc = qt_err_set(err, QT_ESCHEMA,
                        "%s: data row %zu: label '%s' is not a class of the training set", path,
                        i + 1, row_labels[i]);
        goto done;
      }
    } else {
      k = find_name(ds->class_names, ds->n_classes, row_labels[i], numeric);
    }
    ds->labels[i] = (int32_t)k;
  }
  ds->n = rows;
  if (rows == 0) {
    free(ds->features);
    ds->features = NULL;
  }
  if (!class_names) rc = qt__dataset_check_classes(ds, err);

done:
  if (row_labels)
    for (size_t i = 0; i < rows; i++) free(row_labels[i]);
  free(row_labels);
  free(distinct);
  qt_csv_free(csv);
  if (rc < 0) {
    qt_dataset_free(ds);
    ds = NULL;
  }
  *out = ds;
  return rc;
}

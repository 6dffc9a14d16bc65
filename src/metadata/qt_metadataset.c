/*
 * qt_metadataset.c - the meta-dataset store in memory: building it (create,
 * add_dataset, add_run), reading it (the accessors), writing it as a native
 * folder (save) and comparing two of them.
 *
 * The loader (qt_metadataset_load.c) fills the same structure in bulk; the
 * checks of add_run are the loader's checks, so that anything built here
 * saves to a folder that loads back. The layout is described in
 * qt_metadataset_internal.h, the file format in meta-dataset/README.md.
 */
#include "metadata/qt_metadataset_internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------- */
/* Lifetime                                                                   */
/* ------------------------------------------------------------------------- */

static char *dup_string(const char *text) {
  size_t length = strlen(text);
  char *copy = malloc(length + 1);
  if (copy) memcpy(copy, text, length + 1);
  return copy;
}

qt_metadataset_params qt_metadataset_default_params(void) {
  qt_metadataset_params params;
  memset(&params, 0, sizeof params);
  params.metric = "score";
  params.provenance = "";
  return params;
}

void qt_metadataset_free(qt_metadataset_t *md) {
  if (!md) return;
  free(md->name);
  free(md->metric);
  free(md->provenance);
  qt_space_free(md->space);
  free(md->space_text);
  for (size_t f = 0; md->feature_names && f < md->feature_count; f++) free(md->feature_names[f]);
  free(md->feature_names);
  qt__pool_free(&md->strings);
  free(md->datasets);
  free(md->dataset_names);
  free(md->features);
  qt__strmap_free(&md->dataset_map);
  free(md->runs);
  free(md->records);
  free(md->configs);
  free(md->slots);
  free(md->order);
  free(md->position);
  qt__strmap_free(&md->run_map);
  free(md->score);
  free(md->cost);
  free(md->train_loss);
  free(md->val_loss);
  free(md);
}

/* Checks params against the space (see qt_metadataset_params). */
static int check_params(const qt_space_t *space, const qt_metadataset_params *params,
                        long *max_epochs, qt_err *err) {
  if (!params->name || !params->name[0])
    return qt_err_set(err, QT_EINVAL, "a meta-dataset needs a non-empty name");
  if (params->metric && !params->metric[0])
    return qt_err_set(err, QT_EINVAL, "the metric of meta-dataset \"%s\" is empty", params->name);
  long fidelity_max;
  qt_space_fidelity(space, NULL, NULL, &fidelity_max);
  *max_epochs = params->max_epochs == 0 ? fidelity_max : params->max_epochs;
  if (*max_epochs < 1 || *max_epochs > fidelity_max) {
    return qt_err_set(err, QT_EINVAL,
                      "max_epochs %ld of meta-dataset \"%s\" is outside 1..%ld (the fidelity "
                      "range of search space \"%s\")",
                      params->max_epochs, params->name, fidelity_max, qt_space_name(space));
  }
  if (params->feature_count > 0 && !params->feature_names)
    return qt_err_set(err, QT_EINVAL, "feature_count is %zu but feature_names is NULL",
                      params->feature_count);
  for (size_t f = 0; f < params->feature_count; f++) {
    const char *name = params->feature_names[f];
    if (!name || !name[0]) return qt_err_set(err, QT_EINVAL, "feature %zu has no name", f);
    /* "dataset" is the name of the first column of datasets.csv. */
    if (strcmp(name, "dataset") == 0)
      return qt_err_set(err, QT_EINVAL, "a feature cannot be called \"dataset\"");
    for (size_t g = 0; g < f; g++) {
      if (strcmp(params->feature_names[g], name) == 0)
        return qt_err_set(err, QT_EINVAL, "duplicate feature name \"%s\"", name);
    }
  }
  return 0;
}

int qt__metadataset_new(qt_space_t *space, char *space_text, size_t space_length,
                        const qt_metadataset_params *params, qt_metadataset_t **out, qt_err *err) {
  *out = NULL;
  long max_epochs = 0;
  int rc = check_params(space, params, &max_epochs, err);
  qt_metadataset_t *md = rc == 0 ? calloc(1, sizeof *md) : NULL;
  if (rc == 0 && !md) rc = qt_err_set(err, QT_ENOMEM, "out of memory");
  if (rc < 0) {
    qt_space_free(space);
    free(space_text);
    return rc;
  }
  md->space = space;
  md->space_text = space_text;
  md->space_length = space_length;
  md->max_epochs = max_epochs;
  md->name = dup_string(params->name);
  md->metric = dup_string(params->metric ? params->metric : "score");
  md->provenance = dup_string(params->provenance ? params->provenance : "");
  md->feature_count = params->feature_count;
  md->feature_names = calloc(params->feature_count + 1, sizeof *md->feature_names);
  int ok = md->name && md->metric && md->provenance && md->feature_names;
  for (size_t f = 0; ok && f < params->feature_count; f++)
    ok = (md->feature_names[f] = dup_string(params->feature_names[f])) != NULL;
  if (!ok) {
    qt_metadataset_free(md);
    return qt_err_set(err, QT_ENOMEM, "out of memory");
  }
  *out = md;
  return 0;
}

int qt_metadataset_create(const char *space_path, const qt_metadataset_params *params,
                          qt_metadataset_t **out, qt_err *err) {
  if (!out || !space_path || !params)
    return qt_err_set(err, QT_EINVAL, "qt_metadataset_create: NULL argument");
  *out = NULL;
  /* The text is read once and parsed from memory, so that the space.yaml a
   * save writes is exactly the file the configurations were checked against. */
  char *text;
  size_t length;
  int rc = qt_file_read(space_path, &text, &length, err);
  if (rc < 0) return rc;
  qt_space_t *space;
  rc = qt_space_load_string(text, length, space_path, &space, err);
  if (rc < 0) {
    free(text);
    return rc;
  }
  return qt__metadataset_new(space, text, length, params, out, err);
}

/* ------------------------------------------------------------------------- */
/* Growth and the public pointers                                             */
/* ------------------------------------------------------------------------- */

/* realloc for capacity elements of size bytes, with an overflow check; NULL
 * on failure (the old block is then still valid). */
static void *resized(void *array, size_t capacity, size_t size) {
  if (size && capacity > SIZE_MAX / size) return NULL;
  size_t bytes = capacity * size;
  return realloc(array, bytes > 0 ? bytes : 1);
}

/* Grows md->field to capacity elements or jumps to `fail`. */
#define QT__GROW(field, capacity, size)                    \
  do {                                                     \
    void *grown_ = resized(md->field, (capacity), (size)); \
    if (!grown_) goto fail;                                \
    md->field = grown_;                                    \
  } while (0)

/* The next capacity for `need` elements: at least double the current one, so
 * that a sequence of single adds costs amortized constant time. */
static size_t next_capacity(size_t current, size_t need, size_t minimum) {
  size_t capacity = current > SIZE_MAX / 2 ? SIZE_MAX : 2 * current;
  if (capacity < minimum) capacity = minimum;
  if (capacity < need) capacity = need;
  return capacity;
}

/* Returns 1 when the arenas grew (and may have moved), 0 when they had room. */
static int grow_points(qt_metadataset_t *md, size_t points) {
  if (points <= md->point_capacity) return 0;
  size_t capacity = next_capacity(md->point_capacity, points, 1024);
  QT__GROW(score, capacity, sizeof(float));
  QT__GROW(cost, capacity, sizeof(float));
  if (md->train_loss) QT__GROW(train_loss, capacity, sizeof(float));
  if (md->val_loss) QT__GROW(val_loss, capacity, sizeof(float));
  md->point_capacity = capacity;
  return 1;
fail:
  return QT_ENOMEM;
}

int qt__metadataset_reserve(qt_metadataset_t *md, size_t datasets, size_t runs, size_t points,
                            qt_err *err) {
  size_t hp_count = qt_space_count(md->space);
  size_t capacity = 0;
  int grew = 0, rc = 0;
  if (datasets > md->dataset_capacity) {
    grew = 1;
    capacity = next_capacity(md->dataset_capacity, datasets, 16);
    QT__GROW(datasets, capacity, sizeof *md->datasets);
    QT__GROW(dataset_names, capacity, sizeof *md->dataset_names);
    if (md->feature_count && capacity > SIZE_MAX / md->feature_count) goto fail;
    QT__GROW(features, capacity * md->feature_count, sizeof *md->features);
    md->dataset_capacity = capacity;
  }
  if (runs > md->run_capacity) {
    grew = 1;
    capacity = next_capacity(md->run_capacity, runs, 64);
    if (capacity > SIZE_MAX / (hp_count + 1)) goto fail;
    QT__GROW(runs, capacity, sizeof *md->runs);
    QT__GROW(records, capacity, sizeof *md->records);
    QT__GROW(configs, capacity, sizeof *md->configs);
    QT__GROW(slots, capacity * hp_count, sizeof *md->slots);
    QT__GROW(order, capacity, sizeof *md->order);
    QT__GROW(position, capacity, sizeof *md->position);
    md->run_capacity = capacity;
  }
  capacity = points;
  rc = grow_points(md, points);
  if (rc < 0) goto fail;
  /* Relinking is linear in the runs, but capacities double, so it runs a
   * logarithmic number of times over a whole build. */
  if (grew || rc == 1) qt__metadataset_link(md);
  return 0;
fail:
  /* Arrays grown before the failure stay grown; the capacities say only what
   * every array of a group has, so the structure stays consistent. */
  qt__metadataset_link(md);
  return qt_err_set(err, QT_ENOMEM, "out of memory growing the meta-dataset to %zu elements",
                    capacity);
}

int qt__metadataset_enable_losses(qt_metadataset_t *md, int train, int val, qt_err *err) {
  float **arenas[2] = {train ? &md->train_loss : NULL, val ? &md->val_loss : NULL};
  int allocated = 0;
  for (int a = 0; a < 2; a++) {
    if (!arenas[a] || *arenas[a]) continue;
    size_t capacity = md->point_capacity ? md->point_capacity : 1;
    /* No fill: runs added before the first loss have has_*_loss = 0 and a
     * NULL loss pointer, so their part of the arena is never read. */
    float *arena = malloc(capacity * sizeof *arena);
    if (!arena) return qt_err_set(err, QT_ENOMEM, "out of memory for the loss curves");
    *arenas[a] = arena;
    allocated = 1;
  }
  if (allocated) qt__metadataset_link(md);
  return 0;
}

static void link_dataset(qt_metadataset_t *md, size_t d) {
  md->datasets[d].name = md->strings.data + md->dataset_names[d];
  md->datasets[d].features = md->feature_count ? md->features + d * md->feature_count : NULL;
}

static void link_run(qt_metadataset_t *md, size_t i) {
  size_t hp_count = qt_space_count(md->space);
  const qt__md_record *record = &md->records[i];
  qt_config *config = &md->configs[i];
  config->space = md->space;
  config->count = hp_count;
  config->slots = md->slots + i * hp_count;
  qt_md_run *run = &md->runs[i];
  run->id = md->strings.data + record->id;
  run->config = config;
  run->score = md->score + record->points;
  run->cost = md->cost + record->points;
  run->train_loss =
      record->has_train_loss && md->train_loss ? md->train_loss + record->points : NULL;
  run->val_loss = record->has_val_loss && md->val_loss ? md->val_loss + record->points : NULL;
}

void qt__metadataset_link(qt_metadataset_t *md) {
  for (size_t d = 0; d < md->dataset_count; d++) link_dataset(md, d);
  for (size_t i = 0; i < md->run_count; i++) link_run(md, i);
}

void qt__metadataset_group(qt_metadataset_t *md) {
  /* A counting sort: stable, so runs keep their file order within a dataset. */
  for (size_t d = 0; d < md->dataset_count; d++) md->datasets[d].run_count = 0;
  for (size_t i = 0; i < md->run_count; i++) md->datasets[md->runs[i].dataset].run_count++;
  size_t first = 0;
  for (size_t d = 0; d < md->dataset_count; d++) {
    md->datasets[d].first_run = first;
    first += md->datasets[d].run_count;
    md->datasets[d].run_count = 0;
  }
  for (size_t i = 0; i < md->run_count; i++) {
    qt_md_dataset *dataset = &md->datasets[md->runs[i].dataset];
    size_t g = dataset->first_run + dataset->run_count++;
    md->order[g] = i;
    md->position[i] = g;
  }
}

/* ------------------------------------------------------------------------- */
/* Building                                                                   */
/* ------------------------------------------------------------------------- */

/* Appends a string to the pool; the pool may move, so the caller relinks. */
static int add_string(qt_metadataset_t *md, const char *text, size_t *offset, qt_err *err) {
  char *before = md->strings.data;
  if (qt__pool_add(&md->strings, text, strlen(text), offset) < 0)
    return qt_err_set(err, QT_ENOMEM, "out of memory for the string \"%.64s\"", text);
  if (md->strings.data != before) qt__metadataset_link(md);
  return 0;
}

int qt_metadataset_add_dataset(qt_metadataset_t *md, const char *name, const double *features,
                               size_t *index, qt_err *err) {
  if (!md || !name) return qt_err_set(err, QT_EINVAL, "qt_metadataset_add_dataset: NULL argument");
  if (!name[0]) return qt_err_set(err, QT_EINVAL, "a dataset needs a non-empty name");
  if (md->feature_count > 0 && !features)
    return qt_err_set(err, QT_EINVAL, "dataset \"%s\": %zu features expected, got NULL", name,
                      md->feature_count);
  for (size_t f = 0; f < md->feature_count; f++) {
    if (!isfinite(features[f]))
      return qt_err_set(err, QT_EINVAL, "dataset \"%s\": feature %s is not a finite number", name,
                        md->feature_names[f]);
  }
  if (qt__strmap_find(&md->dataset_map, &md->strings, name) != SIZE_MAX)
    return qt_err_set(err, QT_EEXIST, "duplicate dataset \"%s\"", name);

  int rc = qt__metadataset_reserve(md, md->dataset_count + 1, 0, 0, err);
  size_t offset = 0, d = md->dataset_count;
  if (rc == 0) rc = add_string(md, name, &offset, err);
  if (rc == 0 && qt__strmap_insert(&md->dataset_map, &md->strings, offset, d, NULL) < 0)
    rc = qt_err_set(err, QT_ENOMEM, "out of memory");
  if (rc < 0) return rc;
  md->dataset_names[d] = offset;
  if (md->feature_count)
    memcpy(md->features + d * md->feature_count, features, md->feature_count * sizeof *features);
  /* A new dataset comes last in the grouped order: every existing run
   * belongs to an earlier dataset. */
  md->datasets[d].first_run = md->run_count;
  md->datasets[d].run_count = 0;
  md->dataset_count++;
  link_dataset(md, d);
  if (index) *index = d;
  return 0;
}

/* Checks run as the loader checks a run of a folder. */
static int check_run(const qt_metadataset_t *md, const qt_md_run *run, qt_err *err) {
  if (!run->id || !run->id[0]) return qt_err_set(err, QT_EINVAL, "a run needs a non-empty id");
  const char *id = run->id;
  if (run->dataset >= md->dataset_count)
    return qt_err_set(err, QT_EINVAL, "run %s: dataset index %zu, but there are %zu datasets", id,
                      run->dataset, md->dataset_count);
  if (!run->config || run->config->space != md->space)
    return qt_err_set(err, QT_EINVAL,
                      "run %s: the configuration must be initialized for the meta-dataset's "
                      "space (qt_metadataset_space)",
                      id);
  int rc = qt_config_validate(run->config, err);
  if (rc < 0) return qt_err_prefix(err, rc, "run %s", id);
  if (run->epochs < 1 || run->epochs > (size_t)md->max_epochs)
    return qt_err_set(err, QT_ERANGE, "run %s: %zu epochs, outside 1..%ld (max_epochs)", id,
                      run->epochs, md->max_epochs);
  if (!run->score || !run->cost)
    return qt_err_set(err, QT_EINVAL, "run %s: score and cost are required", id);
  for (size_t e = 0; e < run->epochs; e++) {
    float score = run->score[e], cost = run->cost[e];
    if (!(score >= 0.0f && score <= 1.0f))
      return qt_err_set(err, QT_ERANGE, "run %s, epoch %zu: score %g is outside [0, 1]", id, e + 1,
                        (double)score);
    if (!(cost >= 0.0f) || !isfinite(cost))
      return qt_err_set(err, QT_ERANGE, "run %s, epoch %zu: cost %g s is not a finite number >= 0",
                        id, e + 1, (double)cost);
  }
  return 0;
}

/* 1 when some value of a loss curve is finite. */
static int any_finite(const float *values, size_t count) {
  for (size_t e = 0; values && e < count; e++) {
    if (isfinite(values[e])) return 1;
  }
  return 0;
}

/* Copies a loss curve, non-finite values as NaN (missing). */
static void copy_loss(float *dst, const float *src, size_t count) {
  for (size_t e = 0; e < count; e++) dst[e] = isfinite(src[e]) ? src[e] : NAN;
}

int qt_metadataset_add_run(qt_metadataset_t *md, const qt_md_run *run, qt_err *err) {
  if (!md || !run) return qt_err_set(err, QT_EINVAL, "qt_metadataset_add_run: NULL argument");
  int rc = check_run(md, run, err);
  if (rc < 0) return rc;
  if (qt__strmap_find(&md->run_map, &md->strings, run->id) != SIZE_MAX)
    return qt_err_set(err, QT_EEXIST, "duplicate run id \"%s\"", run->id);

  int train = any_finite(run->train_loss, run->epochs);
  int val = any_finite(run->val_loss, run->epochs);
  size_t i = md->run_count, points = md->point_count;
  rc = qt__metadataset_reserve(md, 0, i + 1, points + run->epochs, err);
  if (rc == 0 && (train || val)) rc = qt__metadataset_enable_losses(md, train, val, err);
  size_t id = 0;
  if (rc == 0) rc = add_string(md, run->id, &id, err);
  if (rc == 0 && qt__strmap_insert(&md->run_map, &md->strings, id, i, NULL) < 0)
    rc = qt_err_set(err, QT_ENOMEM, "out of memory");
  if (rc < 0) return rc;

  memcpy(md->score + points, run->score, run->epochs * sizeof(float));
  memcpy(md->cost + points, run->cost, run->epochs * sizeof(float));
  if (train) copy_loss(md->train_loss + points, run->train_loss, run->epochs);
  if (val) copy_loss(md->val_loss + points, run->val_loss, run->epochs);
  size_t hp_count = qt_space_count(md->space);
  memcpy(md->slots + i * hp_count, run->config->slots, hp_count * sizeof *md->slots);
  qt__md_record record = {id, points, train, val, 0};
  md->records[i] = record;
  md->runs[i].dataset = run->dataset;
  md->runs[i].epochs = run->epochs;
  md->run_count++;
  md->point_count += run->epochs;
  link_run(md, i);

  /* Insert the run at the end of its dataset's group; runs of later
   * datasets move down by one. Importers and collectors add runs dataset by
   * dataset, so this is usually an append. */
  qt_md_dataset *dataset = &md->datasets[run->dataset];
  size_t g = dataset->first_run + dataset->run_count;
  memmove(md->order + g + 1, md->order + g, (i - g) * sizeof *md->order);
  md->order[g] = i;
  for (size_t k = g; k <= i; k++) md->position[md->order[k]] = k;
  dataset->run_count++;
  for (size_t d = run->dataset + 1; d < md->dataset_count; d++) md->datasets[d].first_run++;
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Accessors                                                                  */
/* ------------------------------------------------------------------------- */

const char *qt_metadataset_name(const qt_metadataset_t *md) {
  return md->name;
}
const char *qt_metadataset_metric(const qt_metadataset_t *md) {
  return md->metric;
}
const char *qt_metadataset_provenance(const qt_metadataset_t *md) {
  return md->provenance;
}
long qt_metadataset_max_epochs(const qt_metadataset_t *md) {
  return md->max_epochs;
}
const qt_space_t *qt_metadataset_space(const qt_metadataset_t *md) {
  return md->space;
}
size_t qt_metadataset_feature_count(const qt_metadataset_t *md) {
  return md->feature_count;
}
const char *qt_metadataset_feature_name(const qt_metadataset_t *md, size_t feature) {
  QT_ASSERT(feature < md->feature_count);
  return md->feature_names[feature];
}
size_t qt_metadataset_dataset_count(const qt_metadataset_t *md) {
  return md->dataset_count;
}
const qt_md_dataset *qt_metadataset_dataset(const qt_metadataset_t *md, size_t dataset) {
  QT_ASSERT(dataset < md->dataset_count);
  return &md->datasets[dataset];
}
size_t qt_metadataset_run_count(const qt_metadataset_t *md) {
  return md->run_count;
}
const qt_md_run *qt_metadataset_run(const qt_metadataset_t *md, size_t run) {
  QT_ASSERT(run < md->run_count);
  return &md->runs[md->order[run]];
}
size_t qt_metadataset_point_count(const qt_metadataset_t *md) {
  return md->point_count;
}

int qt_metadataset_find_dataset(const qt_metadataset_t *md, const char *name, size_t *dataset) {
  if (!md || !name) return QT_ENOENT;
  size_t d = qt__strmap_find(&md->dataset_map, &md->strings, name);
  if (d == SIZE_MAX) return QT_ENOENT;
  if (dataset) *dataset = d;
  return 0;
}

int qt_metadataset_find_run(const qt_metadataset_t *md, const char *id, size_t *run) {
  if (!md || !id) return QT_ENOENT;
  size_t i = qt__strmap_find(&md->run_map, &md->strings, id);
  if (i == SIZE_MAX) return QT_ENOENT;
  if (run) *run = md->position[i];
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Saving                                                                     */
/* ------------------------------------------------------------------------- */

/* One output file: written under a temporary name, renamed when complete. */
typedef struct out_file {
  FILE *file;
  char path[4096];
  char temporary[4200];
} out_file;

static int out_open(out_file *out, const char *dir, const char *name, qt_err *err) {
  snprintf(out->path, sizeof out->path, "%s/%s", dir, name);
  snprintf(out->temporary, sizeof out->temporary, "%s.tmp", out->path);
  out->file = fopen(out->temporary, "wb");
  if (!out->file) return qt_err_set(err, QT_EIO, "%s: %s", out->temporary, strerror(errno));
  /* Large buffers: curves.csv of a big meta-dataset has a million lines. */
  setvbuf(out->file, NULL, _IOFBF, 1 << 20);
  return 0;
}

/* Closes the file and renames it into place; on an earlier failure (rc < 0)
 * or a write error, removes the temporary file instead. */
static int out_close(out_file *out, int rc, qt_err *err) {
  if (!out->file) return rc;
  int write_failed = ferror(out->file);
  int close_failed = fclose(out->file) != 0;
  out->file = NULL;
  if (rc == 0 && (write_failed || close_failed))
    rc = qt_err_set(err, QT_EIO, "%s: write failed: %s", out->temporary, strerror(errno));
  if (rc == 0 && rename(out->temporary, out->path) != 0)
    rc = qt_err_set(err, QT_EIO, "%s: cannot rename into place: %s", out->path, strerror(errno));
  if (rc < 0) remove(out->temporary);
  return rc;
}

/* Writes a YAML double-quoted scalar (any text round-trips through it). */
static void put_yaml_string(FILE *file, const char *text) {
  fputc('"', file);
  for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
    if (*p == '"' || *p == '\\') {
      fputc('\\', file);
      fputc(*p, file);
    } else if (*p == '\n') {
      fputs("\\n", file);
    } else if (*p == '\t') {
      fputs("\\t", file);
    } else if (*p < 0x20 || *p == 0x7F) {
      fprintf(file, "\\x%02X", *p);
    } else {
      fputc(*p, file);
    }
  }
  fputc('"', file);
}

/* The shortest text that reads back as exactly x. */
static void put_double(FILE *file, double x) {
  char text[64];
  for (int precision = 1; precision <= 17; precision++) {
    snprintf(text, sizeof text, "%.*g", precision, x);
    if (strtod(text, NULL) == x) break;
  }
  fputs(text, file);
}

/* A float with 9 significant digits, which always reads back as the same
 * float; NaN (a missing loss) is an empty cell. */
static void put_float(FILE *file, float x) {
  if (isnan(x)) return;
  fprintf(file, "%.9g", (double)x);
}

static int write_metadataset_yaml(const qt_metadataset_t *md, const char *dir, qt_err *err) {
  out_file out;
  int rc = out_open(&out, dir, "metadataset.yaml", err);
  if (rc < 0) return rc;
  FILE *f = out.file;
  fprintf(f, "# A qtune meta-dataset (format: meta-dataset/README.md of qtune).\n");
  fprintf(f, "version: %d\nname: ", QT_METADATASET_VERSION);
  put_yaml_string(f, md->name);
  fprintf(f, "\nmetric: ");
  put_yaml_string(f, md->metric);
  fprintf(f, "\nhigher_is_better: true\nscore_scale: 1\nmax_epochs: %ld\n", md->max_epochs);
  fprintf(f, "space: space.yaml\nprovenance: ");
  put_yaml_string(f, md->provenance);
  fputc('\n', f);
  return out_close(&out, 0, err);
}

static int write_space(const qt_metadataset_t *md, const char *dir, qt_err *err) {
  out_file out;
  int rc = out_open(&out, dir, "space.yaml", err);
  if (rc < 0) return rc;
  fwrite(md->space_text, 1, md->space_length, out.file);
  return out_close(&out, 0, err);
}

static int write_datasets(const qt_metadataset_t *md, const char *dir, qt_err *err) {
  out_file out;
  int rc = out_open(&out, dir, "datasets.csv", err);
  if (rc < 0) return rc;
  FILE *f = out.file;
  fputs("dataset", f);
  for (size_t k = 0; k < md->feature_count; k++) {
    fputc(',', f);
    qt_csv_write_field(f, md->feature_names[k]);
  }
  fputc('\n', f);
  for (size_t d = 0; d < md->dataset_count; d++) {
    qt_csv_write_field(f, md->datasets[d].name);
    for (size_t k = 0; k < md->feature_count; k++) {
      fputc(',', f);
      put_double(f, md->datasets[d].features[k]);
    }
    fputc('\n', f);
  }
  return out_close(&out, 0, err);
}

static int write_runs(const qt_metadataset_t *md, const char *dir, qt_err *err) {
  out_file out;
  int rc = out_open(&out, dir, "runs.csv", err);
  if (rc < 0) return rc;
  FILE *f = out.file;
  size_t hp_count = qt_space_count(md->space);
  fputs("run,dataset", f);
  for (size_t h = 0; h < hp_count; h++) {
    fputc(',', f);
    qt_csv_write_field(f, qt_space_hp_name(md->space, h));
  }
  fputc('\n', f);
  for (size_t g = 0; rc == 0 && g < md->run_count; g++) {
    const qt_md_run *run = qt_metadataset_run(md, g);
    qt_csv_write_field(f, run->id);
    fputc(',', f);
    qt_csv_write_field(f, md->datasets[run->dataset].name);
    for (size_t h = 0; h < hp_count; h++) {
      char value[512];
      if (qt_config_get_string(run->config, h, value, sizeof value) < 0) {
        rc = qt_err_set(err, QT_ERANGE, "run %s: the value of %s does not fit in %zu bytes",
                        run->id, qt_space_hp_name(md->space, h), sizeof value);
        break;
      }
      fputc(',', f);
      qt_csv_write_field(f, value);
    }
    fputc('\n', f);
  }
  return out_close(&out, rc, err);
}

static int write_curves(const qt_metadataset_t *md, const char *dir, qt_err *err) {
  out_file out;
  int rc = out_open(&out, dir, "curves.csv", err);
  if (rc < 0) return rc;
  FILE *f = out.file;
  int train = md->train_loss != NULL, val = md->val_loss != NULL;
  fprintf(f, "run,epoch,score,cost_s%s%s\n", train ? ",train_loss" : "", val ? ",val_loss" : "");
  for (size_t g = 0; g < md->run_count; g++) {
    const qt_md_run *run = qt_metadataset_run(md, g);
    for (size_t e = 0; e < run->epochs; e++) {
      qt_csv_write_field(f, run->id);
      fprintf(f, ",%zu,", e + 1);
      put_float(f, run->score[e]);
      fputc(',', f);
      put_float(f, run->cost[e]);
      if (train) {
        fputc(',', f);
        if (run->train_loss) put_float(f, run->train_loss[e]);
      }
      if (val) {
        fputc(',', f);
        if (run->val_loss) put_float(f, run->val_loss[e]);
      }
      fputc('\n', f);
    }
  }
  return out_close(&out, 0, err);
}

int qt_metadataset_save(const qt_metadataset_t *md, const char *dir, qt_err *err) {
  if (!md || !dir) return qt_err_set(err, QT_EINVAL, "qt_metadataset_save: NULL argument");
  int rc = qt_mkdir_p(dir, err);
  /* metadataset.yaml last: a folder is only complete once it names itself. */
  if (rc == 0) rc = write_space(md, dir, err);
  if (rc == 0) rc = write_datasets(md, dir, err);
  if (rc == 0) rc = write_runs(md, dir, err);
  if (rc == 0) rc = write_curves(md, dir, err);
  if (rc == 0) rc = write_metadataset_yaml(md, dir, err);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Comparing                                                                  */
/* ------------------------------------------------------------------------- */

/* 1 when two float curves are equal bit for bit, NaN equal to NaN (NULL
 * equals NULL only). */
static int same_curve(const float *a, const float *b, size_t count, size_t *where) {
  if (!a || !b) {
    *where = 0;
    return a == b;
  }
  for (size_t e = 0; e < count; e++) {
    if (a[e] == b[e] || (isnan(a[e]) && isnan(b[e]))) continue;
    *where = e;
    return 0;
  }
  return 1;
}

static int same_text(const char *a, const char *b) {
  return strcmp(a, b) == 0;
}

int qt_metadataset_compare(const qt_metadataset_t *a, const qt_metadataset_t *b, qt_err *err) {
  if (!a || !b) return qt_err_set(err, QT_EINVAL, "qt_metadataset_compare: NULL argument");
  if (!same_text(a->name, b->name))
    return qt_err_set(err, QT_ESCHEMA, "name \"%s\" != \"%s\"", a->name, b->name);
  if (!same_text(a->metric, b->metric))
    return qt_err_set(err, QT_ESCHEMA, "metric \"%s\" != \"%s\"", a->metric, b->metric);
  if (!same_text(a->provenance, b->provenance))
    return qt_err_set(err, QT_ESCHEMA, "the provenance texts differ");
  if (a->max_epochs != b->max_epochs)
    return qt_err_set(err, QT_ESCHEMA, "max_epochs %ld != %ld", a->max_epochs, b->max_epochs);
  if (a->space_length != b->space_length || memcmp(a->space_text, b->space_text, a->space_length))
    return qt_err_set(err, QT_ESCHEMA, "the search-space files differ");
  if (a->feature_count != b->feature_count)
    return qt_err_set(err, QT_ESCHEMA, "%zu != %zu features", a->feature_count, b->feature_count);
  for (size_t k = 0; k < a->feature_count; k++) {
    if (!same_text(a->feature_names[k], b->feature_names[k]))
      return qt_err_set(err, QT_ESCHEMA, "feature %zu: \"%s\" != \"%s\"", k, a->feature_names[k],
                        b->feature_names[k]);
  }
  if (a->dataset_count != b->dataset_count)
    return qt_err_set(err, QT_ESCHEMA, "%zu != %zu datasets", a->dataset_count, b->dataset_count);
  for (size_t d = 0; d < a->dataset_count; d++) {
    const qt_md_dataset *x = &a->datasets[d], *y = &b->datasets[d];
    if (!same_text(x->name, y->name) || x->run_count != y->run_count)
      return qt_err_set(err, QT_ESCHEMA,
                        "dataset %zu: \"%s\" with %zu runs != \"%s\" with %zu runs", d, x->name,
                        x->run_count, y->name, y->run_count);
    for (size_t k = 0; k < a->feature_count; k++) {
      if (x->features[k] != y->features[k])
        return qt_err_set(err, QT_ESCHEMA, "dataset %s: feature %s %.17g != %.17g", x->name,
                          a->feature_names[k], x->features[k], y->features[k]);
    }
  }
  if (a->run_count != b->run_count || a->point_count != b->point_count)
    return qt_err_set(err, QT_ESCHEMA, "%zu runs, %zu points != %zu runs, %zu points", a->run_count,
                      a->point_count, b->run_count, b->point_count);
  size_t hp_count = qt_space_count(a->space);
  for (size_t g = 0; g < a->run_count; g++) {
    const qt_md_run *x = qt_metadataset_run(a, g), *y = qt_metadataset_run(b, g);
    if (!same_text(x->id, y->id) || x->dataset != y->dataset || x->epochs != y->epochs)
      return qt_err_set(err, QT_ESCHEMA,
                        "run %zu: %s (dataset %zu, %zu epochs) != %s (dataset "
                        "%zu, %zu epochs)",
                        g, x->id, x->dataset, x->epochs, y->id, y->dataset, y->epochs);
    /* The spaces are separate objects parsed from the same text, so the
     * slots are compared rather than the configurations. */
    for (size_t h = 0; h < hp_count; h++) {
      const qt_config_slot *s = &x->config->slots[h], *t = &y->config->slots[h];
      if (s->active != t->active || (s->active && s->value != t->value))
        return qt_err_set(err, QT_ESCHEMA, "run %s: hyperparameter %s differs", x->id,
                          qt_space_hp_name(a->space, h));
    }
    static const char *const names[] = {"score", "cost", "train_loss", "val_loss"};
    const float *curves_x[] = {x->score, x->cost, x->train_loss, x->val_loss};
    const float *curves_y[] = {y->score, y->cost, y->train_loss, y->val_loss};
    for (int c = 0; c < 4; c++) {
      size_t e = 0;
      if (!same_curve(curves_x[c], curves_y[c], x->epochs, &e)) {
        if (!curves_x[c] || !curves_y[c])
          return qt_err_set(err, QT_ESCHEMA, "run %s: %s recorded in one only", x->id, names[c]);
        return qt_err_set(err, QT_ESCHEMA, "run %s, epoch %zu: %s %.9g != %.9g", x->id, e + 1,
                          names[c], (double)curves_x[c][e], (double)curves_y[c][e]);
      }
    }
  }
  return 0;
}

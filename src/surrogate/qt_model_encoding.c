/*
 * qt_model_encoding.c - how the surrogates see a configuration's model: the
 * space's one-hot block, or a fixed block of model descriptors (family,
 * size, input resolution, depth, width, pretraining top-1) so that a model
 * absent from the meta-dataset still gets an informed encoding (issue 10).
 * qt_surrogate.h, "Model encoding", documents the columns and the file.
 */
#include "surrogate/qt_surrogate_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const FAMILY_NAMES[QT_DESCRIPTOR_FAMILY_COUNT] = {
    "transformer", "efficient_convnet", "residual_convnet", "hybrid", "mlp"};

static const char *const COLUMN_NAMES[QT_DESCRIPTOR_COLUMNS] = {"desc:family=transformer",
                                                                "desc:family=efficient_convnet",
                                                                "desc:family=residual_convnet",
                                                                "desc:family=hybrid",
                                                                "desc:family=mlp",
                                                                "desc:log10_parameters",
                                                                "desc:log10_parameters:known",
                                                                "desc:log2_image_size",
                                                                "desc:log2_image_size:known",
                                                                "desc:log2_depth",
                                                                "desc:log2_depth:known",
                                                                "desc:log2_width",
                                                                "desc:log2_width:known",
                                                                "desc:pretrain_top1",
                                                                "desc:pretrain_top1:known"};

/* The YAML keys of the numeric descriptors, in values[] order. */
static const char *const VALUE_KEYS[QT_DESCRIPTOR_NUMERIC_COUNT] = {
    "parameters", "image_size", "depth", "width", "pretrain_top1"};

const char *qt_model_encoding_name(qt_model_encoding encoding) {
  switch (encoding) {
    case QT_MODEL_ENCODING_ONEHOT:
      return "onehot";
    case QT_MODEL_ENCODING_DESCRIPTORS:
      return "descriptors";
  }
  return "unknown";
}

int qt_model_encoding_parse(const char *text, qt_model_encoding *out, qt_err *err) {
  if (text && strcmp(text, "onehot") == 0) {
    *out = QT_MODEL_ENCODING_ONEHOT;
    return 0;
  }
  if (text && strcmp(text, "descriptors") == 0) {
    *out = QT_MODEL_ENCODING_DESCRIPTORS;
    return 0;
  }
  return qt_err_set(err, QT_EINVAL, "unknown model encoding '%s' (known: onehot, descriptors)",
                    text ? text : "(null)");
}

const char *qt_descriptor_family_name(size_t family) {
  return family < QT_DESCRIPTOR_FAMILY_COUNT ? FAMILY_NAMES[family] : "other";
}

int qt_descriptor_family_find(const char *name, size_t *family) {
  for (size_t f = 0; name && f < QT_DESCRIPTOR_FAMILY_COUNT; f++) {
    if (strcmp(name, FAMILY_NAMES[f]) == 0) {
      *family = f;
      return 0;
    }
  }
  if (name && strcmp(name, "other") == 0) {
    *family = QT_DESCRIPTOR_FAMILY_OTHER;
    return 0;
  }
  return QT_ENOENT;
}

size_t qt_descriptor_family_of_hub(const char *hub_family) {
  if (!hub_family) return QT_DESCRIPTOR_FAMILY_OTHER;
  if (qt_hub_family_is_vit(hub_family)) return 0;
  if (strcmp(hub_family, "mobilenetv2") == 0 || strcmp(hub_family, "efficientnet") == 0) return 1;
  if (strcmp(hub_family, "resnet") == 0) return 2;
  if (strcmp(hub_family, "mlp") == 0) return 4;
  return QT_DESCRIPTOR_FAMILY_OTHER;
}

const char *qt_descriptor_column_name(size_t column) {
  QT_ASSERT(column < QT_DESCRIPTOR_COLUMNS);
  return COLUMN_NAMES[column];
}

/* The transformed value the z-score applies to (NaN when unknown). */
static double transformed(size_t k, double raw) {
  if (!isfinite(raw)) return NAN;
  switch (k) {
    case QT_DESCRIPTOR_PARAMETERS:
      return log10(raw);
    case QT_DESCRIPTOR_IMAGE_SIZE:
    case QT_DESCRIPTOR_DEPTH:
    case QT_DESCRIPTOR_WIDTH:
      return log2(raw);
    default:
      return raw;
  }
}

/* ------------------------------------------------------------------------- */
/* Descriptor tables                                                          */
/* ------------------------------------------------------------------------- */

struct qt_descriptor_table {
  size_t count, capacity;
  qt_model_descriptor *items; /* names owned */
};

int qt_descriptor_table_create(qt_descriptor_table_t **out, qt_err *err) {
  *out = calloc(1, sizeof **out);
  return *out ? 0 : qt_err_set(err, QT_ENOMEM, "descriptor table: out of memory");
}

void qt_descriptor_table_free(qt_descriptor_table_t *t) {
  if (!t) return;
  for (size_t i = 0; i < t->count; i++) free((char *)t->items[i].name);
  free(t->items);
  free(t);
}

size_t qt_descriptor_table_count(const qt_descriptor_table_t *t) {
  return t ? t->count : 0;
}

const qt_model_descriptor *qt_descriptor_table_at(const qt_descriptor_table_t *t, size_t i) {
  QT_ASSERT(t && i < t->count);
  return &t->items[i];
}

int qt_descriptor_table_find(const qt_descriptor_table_t *t, const char *name, size_t *index) {
  for (size_t i = 0; t && name && i < t->count; i++) {
    if (strcmp(t->items[i].name, name) == 0) {
      if (index) *index = i;
      return 0;
    }
  }
  return QT_ENOENT;
}

int qt_descriptor_table_add(qt_descriptor_table_t *t, const qt_model_descriptor *d, qt_err *err) {
  if (!t || !d || !d->name || !d->name[0])
    return qt_err_set(err, QT_EINVAL, "descriptor table: a model needs a name");
  if (d->family > QT_DESCRIPTOR_FAMILY_OTHER)
    return qt_err_set(err, QT_EINVAL, "descriptor table: model '%s': bad family %zu", d->name,
                      d->family);
  for (size_t k = 0; k < QT_DESCRIPTOR_NUMERIC_COUNT; k++) {
    double v = d->values[k];
    if (isnan(v)) continue;
    int bad = !isfinite(v) || (k == QT_DESCRIPTOR_PRETRAIN_TOP1 ? (v < 0.0 || v > 1.0) : v <= 0.0);
    if (bad)
      return qt_err_set(err, QT_EINVAL, "descriptor table: model '%s': %s %g is out of range",
                        d->name, VALUE_KEYS[k], v);
  }
  if (qt_descriptor_table_find(t, d->name, NULL) == 0)
    return qt_err_set(err, QT_EEXIST, "descriptor table: model '%s' is listed twice", d->name);
  if (t->count == t->capacity) {
    size_t capacity = t->capacity ? 2 * t->capacity : 16;
    qt_model_descriptor *grown = realloc(t->items, capacity * sizeof *grown);
    if (!grown) return qt_err_set(err, QT_ENOMEM, "descriptor table: out of memory");
    t->items = grown;
    t->capacity = capacity;
  }
  size_t length = strlen(d->name);
  char *name = malloc(length + 1);
  if (!name) return qt_err_set(err, QT_ENOMEM, "descriptor table: out of memory");
  memcpy(name, d->name, length + 1);
  t->items[t->count] = *d;
  t->items[t->count].name = name;
  t->count++;
  return 0;
}

/* One `models:` entry of a descriptor file. */
static int load_entry(qt_descriptor_table_t *t, const qt_yaml_doc_t *doc, qt_yaml_node node,
                      qt_err *err) {
  static const char *const keys[] = {"name",  "family",        "parameters", "image_size", "depth",
                                     "width", "pretrain_top1", "note",       NULL};
  int rc = qt_yaml_check_keys(doc, node, keys, err);
  if (rc != 0) return rc;
  qt_yaml_node name = qt_yaml_get(doc, node, "name");
  qt_yaml_node family = qt_yaml_get(doc, node, "family");
  if (!name || !qt_yaml_scalar(doc, name) || !qt_yaml_scalar(doc, name)[0])
    return qt_yaml_error(err, QT_ESCHEMA, doc, node, "a model needs a non-empty `name`");
  qt_model_descriptor d;
  d.name = qt_yaml_scalar(doc, name);
  if (!family || !qt_yaml_scalar(doc, family) ||
      qt_descriptor_family_find(qt_yaml_scalar(doc, family), &d.family) != 0)
    return qt_yaml_error(err, QT_ESCHEMA, doc, family ? family : node,
                         "model '%s': `family` must be one of transformer, efficient_convnet, "
                         "residual_convnet, hybrid, mlp, other",
                         d.name);
  for (size_t k = 0; k < QT_DESCRIPTOR_NUMERIC_COUNT; k++) {
    d.values[k] = NAN;
    qt_yaml_node value = qt_yaml_get(doc, node, VALUE_KEYS[k]);
    if (!value || qt_yaml_is_null(doc, value)) continue;
    rc = qt_yaml_to_double(doc, value, &d.values[k], err);
    if (rc != 0) return rc;
  }
  qt_err inner;
  rc = qt_descriptor_table_add(t, &d, &inner);
  if (rc != 0) return qt_yaml_error(err, rc, doc, node, "%s", qt_err_message(&inner));
  return 0;
}

int qt_descriptor_table_load_file(qt_descriptor_table_t *t, const char *path, qt_err *err) {
  qt_yaml_doc_t *doc = NULL;
  int rc = qt_yaml_load_file(path, &doc, err);
  if (rc != 0) return rc;
  qt_yaml_node root = qt_yaml_root(doc);
  static const char *const keys[] = {"version", "name", "description", "models", NULL};
  rc = qt_yaml_check_keys(doc, root, keys, err);
  long version = 0;
  qt_yaml_node v = rc == 0 ? qt_yaml_get(doc, root, "version") : 0;
  if (rc == 0 && !v)
    rc = qt_yaml_error(err, QT_ESCHEMA, doc, root, "`version: %d` is required",
                       QT_DESCRIPTOR_TABLE_VERSION);
  if (rc == 0) rc = qt_yaml_to_int(doc, v, &version, err);
  if (rc == 0 && version != QT_DESCRIPTOR_TABLE_VERSION)
    rc = qt_yaml_error(err, QT_EVERSION, doc, v, "descriptor file version %ld, this qtune reads %d",
                       version, QT_DESCRIPTOR_TABLE_VERSION);
  qt_yaml_node models = rc == 0 ? qt_yaml_get(doc, root, "models") : 0;
  if (rc == 0 && (!models || qt_yaml_kind_of(doc, models) != QT_YAML_KIND_SEQUENCE ||
                  qt_yaml_length(doc, models) == 0))
    rc = qt_yaml_error(err, QT_ESCHEMA, doc, models ? models : root,
                       "`models` must be a non-empty list");
  for (size_t i = 0; rc == 0 && i < qt_yaml_length(doc, models); i++)
    rc = load_entry(t, doc, qt_yaml_item(doc, models, i), err);
  qt_yaml_free(doc);
  return rc;
}

int qt_descriptor_table_add_hub(qt_descriptor_table_t *t, const qt_hub_t *hub, size_t *added,
                                qt_err *err) {
  if (added) *added = 0;
  for (size_t i = 0; i < qt_hub_count(hub); i++) {
    const qt_hub_model *m = qt_hub_model_at(hub, i);
    if (qt_descriptor_table_find(t, m->name, NULL) == 0) continue;
    qt_model_descriptor d;
    d.name = m->name;
    d.family = qt_descriptor_family_of_hub(m->family);
    d.values[QT_DESCRIPTOR_PARAMETERS] = m->parameters > 0.0 ? m->parameters : NAN;
    d.values[QT_DESCRIPTOR_IMAGE_SIZE] = m->image_size > 0 ? (double)m->image_size : NAN;
    d.values[QT_DESCRIPTOR_DEPTH] = m->depth > 0 ? (double)m->depth : NAN;
    d.values[QT_DESCRIPTOR_WIDTH] = m->width > 0 ? (double)m->width : NAN;
    d.values[QT_DESCRIPTOR_PRETRAIN_TOP1] = m->pretrain_top1;
    int rc = qt_descriptor_table_add(t, &d, err);
    if (rc != 0) return qt_err_prefix(err, rc, "%s", qt_hub_source(hub));
    if (added) (*added)++;
  }
  return 0;
}

static int table_copy(const qt_descriptor_table_t *src, qt_descriptor_table_t **out, qt_err *err) {
  int rc = qt_descriptor_table_create(out, err);
  for (size_t i = 0; rc == 0 && i < qt_descriptor_table_count(src); i++)
    rc = qt_descriptor_table_add(*out, &src->items[i], err);
  if (rc != 0) {
    qt_descriptor_table_free(*out);
    *out = NULL;
  }
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Codecs                                                                     */
/* ------------------------------------------------------------------------- */

struct qt_model_codec {
  qt_model_encoding mode;
  qt_descriptor_table_t *table; /* descriptors only */
  double mean[QT_DESCRIPTOR_NUMERIC_COUNT];
  double std[QT_DESCRIPTOR_NUMERIC_COUNT];
};

int qt_model_codec_create_with_stats(const qt_descriptor_table_t *table, const double *mean,
                                     const double *std, qt_model_codec_t **out, qt_err *err) {
  *out = NULL;
  if (!table || qt_descriptor_table_count(table) == 0)
    return qt_err_set(err, QT_EINVAL,
                      "model descriptors: the descriptor table is empty (give --descriptors FILE "
                      "or a hub with the meta-dataset's models)");
  for (size_t k = 0; k < QT_DESCRIPTOR_NUMERIC_COUNT; k++) {
    if (!isfinite(mean[k]) || !(std[k] > 0.0) || !isfinite(std[k]))
      return qt_err_set(err, QT_EINVAL, "model descriptors: bad statistics for %s (%g, %g)",
                        VALUE_KEYS[k], mean[k], std[k]);
  }
  qt_model_codec_t *c = calloc(1, sizeof *c);
  if (!c) return qt_err_set(err, QT_ENOMEM, "model descriptors: out of memory");
  c->mode = QT_MODEL_ENCODING_DESCRIPTORS;
  memcpy(c->mean, mean, sizeof c->mean);
  memcpy(c->std, std, sizeof c->std);
  int rc = table_copy(table, &c->table, err);
  if (rc != 0) {
    free(c);
    return rc;
  }
  *out = c;
  return 0;
}

int qt_model_codec_create(qt_model_encoding mode, const qt_descriptor_table_t *table,
                          qt_model_codec_t **out, qt_err *err) {
  *out = NULL;
  if (mode == QT_MODEL_ENCODING_ONEHOT) {
    *out = calloc(1, sizeof **out);
    return *out ? 0 : qt_err_set(err, QT_ENOMEM, "model codec: out of memory");
  }
  if (mode != QT_MODEL_ENCODING_DESCRIPTORS)
    return qt_err_set(err, QT_EINVAL, "model codec: unknown mode %d", (int)mode);
  double mean[QT_DESCRIPTOR_NUMERIC_COUNT], std[QT_DESCRIPTOR_NUMERIC_COUNT];
  size_t n = qt_descriptor_table_count(table);
  for (size_t k = 0; k < QT_DESCRIPTOR_NUMERIC_COUNT; k++) {
    double sum = 0.0, sum2 = 0.0;
    size_t known = 0;
    for (size_t i = 0; i < n; i++) {
      double v = transformed(k, table->items[i].values[k]);
      if (isnan(v)) continue;
      sum += v;
      known++;
    }
    mean[k] = known ? sum / (double)known : 0.0;
    for (size_t i = 0; i < n; i++) {
      double v = transformed(k, table->items[i].values[k]);
      if (!isnan(v)) sum2 += (v - mean[k]) * (v - mean[k]);
    }
    double sd = known >= 2 ? sqrt(sum2 / (double)known) : 0.0;
    std[k] = sd > 1e-12 ? sd : 1.0;
  }
  return qt_model_codec_create_with_stats(table, mean, std, out, err);
}

int qt_model_codec_copy(const qt_model_codec_t *codec, qt_model_codec_t **out, qt_err *err) {
  if (!codec || codec->mode == QT_MODEL_ENCODING_ONEHOT)
    return qt_model_codec_create(QT_MODEL_ENCODING_ONEHOT, NULL, out, err);
  return qt_model_codec_create_with_stats(codec->table, codec->mean, codec->std, out, err);
}

void qt_model_codec_free(qt_model_codec_t *codec) {
  if (!codec) return;
  qt_descriptor_table_free(codec->table);
  free(codec);
}

qt_model_encoding qt_model_codec_mode(const qt_model_codec_t *codec) {
  return codec ? codec->mode : QT_MODEL_ENCODING_ONEHOT;
}

const qt_descriptor_table_t *qt_model_codec_table(const qt_model_codec_t *codec) {
  return codec ? codec->table : NULL;
}

void qt_model_codec_stats(const qt_model_codec_t *codec, double *mean, double *std) {
  for (size_t k = 0; k < QT_DESCRIPTOR_NUMERIC_COUNT; k++) {
    if (mean) mean[k] = codec ? codec->mean[k] : 0.0;
    if (std) std[k] = codec && codec->std[k] > 0.0 ? codec->std[k] : 1.0;
  }
}

int qt_model_codec_add_hub(qt_model_codec_t *codec, const qt_hub_t *hub, size_t *added,
                           qt_err *err) {
  if (added) *added = 0;
  if (!codec || codec->mode != QT_MODEL_ENCODING_DESCRIPTORS || !hub) return 0;
  return qt_descriptor_table_add_hub(codec->table, hub, added, err);
}

/* The space's model hyperparameter when it can carry descriptors. */
static int model_hp(const qt_space_t *space, size_t *hp) {
  return qt_space_find(space, "model", hp) == 0 &&
                 qt_space_hp_type(space, *hp) == QT_HP_TYPE_CATEGORICAL &&
                 qt_space_hp_condition_count(space, *hp) == 0
             ? 0
             : QT_ENOENT;
}

int qt_model_encoding_check_space(qt_model_encoding mode, const qt_space_t *space, qt_err *err) {
  size_t hp;
  if (mode == QT_MODEL_ENCODING_DESCRIPTORS && model_hp(space, &hp) != 0)
    return qt_err_set(err, QT_ESCHEMA,
                      "space '%s' has no unconditional categorical hyperparameter 'model': it "
                      "cannot use model descriptors",
                      qt_space_name(space));
  return 0;
}

size_t qt_model_encoded_dim(qt_model_encoding mode, const qt_space_t *space) {
  size_t dim = qt_space_encoded_dim(space), hp, width = 0;
  if (mode == QT_MODEL_ENCODING_ONEHOT) return dim;
  if (model_hp(space, &hp) != 0) return 0;
  qt_space_encoded_offset(space, hp, &width);
  return dim - width + QT_DESCRIPTOR_COLUMNS;
}

static void hash_text(uint64_t *hash, const char *text) {
  for (const char *c = text;; c++) {
    *hash ^= (unsigned char)(*c ? *c : '\n');
    *hash *= 1099511628211ull; /* FNV prime */
    if (!*c) break;
  }
}

uint64_t qt_model_encoding_hash(qt_model_encoding mode, const qt_space_t *space) {
  size_t hp, width = 0, begin = 0;
  if (mode == QT_MODEL_ENCODING_ONEHOT || model_hp(space, &hp) != 0)
    return qt_surrogate_space_hash(space);
  begin = qt_space_encoded_offset(space, hp, &width);
  uint64_t hash = 1469598103934665603ull; /* FNV-1a offset basis */
  size_t dim = qt_space_encoded_dim(space);
  for (size_t column = 0; column < dim; column++) {
    if (column == begin) {
      for (size_t k = 0; k < QT_DESCRIPTOR_COLUMNS; k++) hash_text(&hash, COLUMN_NAMES[k]);
    }
    if (column >= begin && column < begin + width) continue;
    char name[1024];
    if (qt_space_encoded_name(space, column, name, sizeof name) != 0) name[0] = '\0';
    hash_text(&hash, name);
  }
  return hash;
}

qt_dkl_config qt_model_codec_dkl_config(const qt_model_codec_t *codec, const qt_space_t *space,
                                        size_t meta_dim) {
  qt_model_encoding mode = qt_model_codec_mode(codec);
  size_t hp;
  if (mode == QT_MODEL_ENCODING_ONEHOT || model_hp(space, &hp) != 0)
    return qt_dkl_space_config(space, meta_dim);
  qt_dkl_config config = qt_dkl_default_config(qt_model_encoded_dim(mode, space), meta_dim);
  config.model_begin = qt_space_encoded_offset(space, hp, NULL);
  config.model_end = config.model_begin + QT_DESCRIPTOR_COLUMNS;
  if (QT_DESCRIPTOR_COLUMNS >= config.hp_dim) config.model_begin = config.model_end = 0;
  return config;
}

int qt_model_codec_descriptor_vector(const qt_model_codec_t *codec, const char *name, double *out,
                                     qt_err *err) {
  if (qt_model_codec_mode(codec) != QT_MODEL_ENCODING_DESCRIPTORS)
    return qt_err_set(err, QT_EINVAL, "model codec: one-hot encoding has no descriptors");
  size_t index;
  if (qt_descriptor_table_find(codec->table, name, &index) != 0)
    return qt_err_set(err, QT_ENOENT,
                      "model '%s' has no descriptors: add it to the descriptor file or give the "
                      "hub that lists it",
                      name ? name : "(null)");
  const qt_model_descriptor *d = &codec->table->items[index];
  for (size_t f = 0; f < QT_DESCRIPTOR_FAMILY_COUNT; f++) out[f] = d->family == f ? 1.0 : 0.0;
  for (size_t k = 0; k < QT_DESCRIPTOR_NUMERIC_COUNT; k++) {
    double v = transformed(k, d->values[k]);
    double *slot = out + QT_DESCRIPTOR_FAMILY_COUNT + 2 * k;
    slot[0] = isnan(v) ? 0.0 : (v - codec->mean[k]) / codec->std[k];
    slot[1] = isnan(v) ? 0.0 : 1.0;
  }
  return 0;
}

int qt_model_codec_encode(const qt_model_codec_t *codec, const qt_space_t *space,
                          const qt_config *config, double *out, qt_err *err) {
  if (qt_model_codec_mode(codec) == QT_MODEL_ENCODING_ONEHOT)
    return qt_space_encode(space, config, out, err);
  size_t hp, width = 0;
  int rc = qt_model_encoding_check_space(QT_MODEL_ENCODING_DESCRIPTORS, space, err);
  if (rc != 0) return rc;
  model_hp(space, &hp);
  size_t dim = qt_space_encoded_dim(space);
  size_t begin = qt_space_encoded_offset(space, hp, &width);
  double stack[256];
  double *vec = dim <= 256 ? stack : malloc(dim * sizeof *vec);
  if (!vec) return qt_err_set(err, QT_ENOMEM, "model codec: out of memory");
  rc = qt_space_encode(space, config, vec, err);
  long choice = rc == 0 ? qt_config_index(config, hp) : -1;
  if (rc == 0 && choice < 0)
    rc = qt_err_set(err, QT_EINVAL, "model codec: the configuration has no model");
  if (rc == 0) {
    memcpy(out, vec, begin * sizeof *out);
    rc = qt_model_codec_descriptor_vector(codec, qt_space_hp_choice(space, hp, (size_t)choice),
                                          out + begin, err);
    memcpy(out + begin + QT_DESCRIPTOR_COLUMNS, vec + begin + width,
           (dim - begin - width) * sizeof *out);
  }
  if (vec != stack) free(vec);
  return rc;
}

int qt_model_codec_load(qt_model_encoding mode, const char *descriptors_path, const char *hub_path,
                        qt_model_codec_t **out, qt_err *err) {
  *out = NULL;
  if (mode == QT_MODEL_ENCODING_ONEHOT) return qt_model_codec_create(mode, NULL, out, err);
  if (!descriptors_path && !hub_path)
    return qt_err_set(err, QT_EINVAL,
                      "model descriptors need a descriptor file (--descriptors FILE) or a hub "
                      "(--hub FILE)");
  qt_descriptor_table_t *table = NULL;
  qt_hub_t *hub = NULL;
  int rc = qt_descriptor_table_create(&table, err);
  if (rc == 0 && descriptors_path) rc = qt_descriptor_table_load_file(table, descriptors_path, err);
  if (rc == 0 && hub_path) rc = qt_hub_load_file(hub_path, &hub, err);
  if (rc == 0 && hub) rc = qt_descriptor_table_add_hub(table, hub, NULL, err);
  if (rc == 0) rc = qt_model_codec_create(mode, table, out, err);
  qt_hub_free(hub);
  qt_descriptor_table_free(table);
  return rc;
}

int qt_model_codec_check_metadataset(const qt_model_codec_t *codec, const qt_metadataset_t *md,
                                     qt_err *err) {
  if (qt_model_codec_mode(codec) == QT_MODEL_ENCODING_ONEHOT) return 0;
  const qt_space_t *space = qt_metadataset_space(md);
  int rc = qt_model_encoding_check_space(QT_MODEL_ENCODING_DESCRIPTORS, space, err);
  if (rc != 0) return rc;
  size_t hp;
  model_hp(space, &hp);
  for (size_t r = 0; r < qt_metadataset_run_count(md); r++) {
    long choice = qt_config_index(qt_metadataset_run(md, r)->config, hp);
    if (choice < 0) continue;
    const char *name = qt_space_hp_choice(space, hp, (size_t)choice);
    if (qt_descriptor_table_find(codec->table, name, NULL) != 0)
      return qt_err_set(err, QT_ENOENT,
                        "model '%s' (run '%s') has no descriptors: add it to the descriptor file "
                        "or give the hub that lists it",
                        name, qt_metadataset_run(md, r)->id);
  }
  return 0;
}

/*
 * qt_hub.c - model hubs: loading and validating hub YAML files (configs/hubs/,
 * version 1). The schema is documented in qt_metadata.h ("Model hub").
 *
 * Checking a checkpoint against its family's layout is the engine's job
 * (qt_model_inspect in finetune/); this file never opens a checkpoint. The
 * family names below are the ones whose layouts the engine knows; the test
 * suites check that the two lists agree.
 */
#include "metadata/qt_metadata.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------- */
/* Families                                                                   */
/* ------------------------------------------------------------------------- */

static const char *const family_names[] = {"vit",          "deit",   "deit3", "mobilenetv2",
                                           "efficientnet", "resnet", "mlp"};
#define FAMILY_COUNT (sizeof family_names / sizeof family_names[0])

int qt_hub_family_known(const char *family) {
  for (size_t f = 0; family && f < FAMILY_COUNT; f++) {
    if (strcmp(family, family_names[f]) == 0) return 1;
  }
  return 0;
}

int qt_hub_family_is_vit(const char *family) {
  return family && (strcmp(family, "vit") == 0 || strcmp(family, "deit") == 0 ||
                    strcmp(family, "deit3") == 0);
}

static int is_mlp(const char *family) {
  return strcmp(family, "mlp") == 0;
}

/* ------------------------------------------------------------------------- */
/* The hub                                                                    */
/* ------------------------------------------------------------------------- */

struct qt_hub {
  char *source;
  char *name;
  char *description;
  qt_hub_model *models; /* (count) in file order */
  size_t count;
  char **strings; /* every string the models point to, freed with the hub */
  size_t string_count, string_capacity;
};

void qt_hub_free(qt_hub_t *hub) {
  if (!hub) return;
  for (size_t i = 0; i < hub->string_count; i++) free(hub->strings[i]);
  free(hub->strings);
  free(hub->models);
  free(hub->source);
  free(hub->name);
  free(hub->description);
  free(hub);
}

const char *qt_hub_name(const qt_hub_t *hub) {
  return hub->name;
}
const char *qt_hub_description(const qt_hub_t *hub) {
  return hub->description;
}
const char *qt_hub_source(const qt_hub_t *hub) {
  return hub->source;
}
size_t qt_hub_count(const qt_hub_t *hub) {
  return hub->count;
}

const qt_hub_model *qt_hub_model_at(const qt_hub_t *hub, size_t index) {
  QT_ASSERT(index < hub->count);
  return &hub->models[index];
}

int qt_hub_find(const qt_hub_t *hub, const char *name, size_t *index) {
  if (!hub || !name) return QT_EINVAL;
  for (size_t i = 0; i < hub->count; i++) {
    if (strcmp(hub->models[i].name, name) == 0) {
      if (index) *index = i;
      return 0;
    }
  }
  return QT_ENOENT;
}

/* ------------------------------------------------------------------------- */
/* Loading: helpers                                                           */
/* ------------------------------------------------------------------------- */

typedef struct loader {
  const qt_yaml_doc_t *doc;
  qt_err *err;
  qt_hub_t *hub;
} loader;

static int out_of_memory(loader *ld) {
  return qt_err_set(ld->err, QT_ENOMEM, "%s: out of memory", qt_yaml_name(ld->doc));
}

/* Keeps a malloc'ed string in the hub; returns it, or NULL (and frees it)
 * when out of memory. */
static char *keep(qt_hub_t *hub, char *text) {
  if (!text) return NULL;
  if (hub->string_count == hub->string_capacity) {
    size_t capacity = hub->string_capacity ? 2 * hub->string_capacity : 32;
    char **grown = realloc(hub->strings, capacity * sizeof *grown);
    if (!grown) {
      free(text);
      return NULL;
    }
    hub->strings = grown;
    hub->string_capacity = capacity;
  }
  hub->strings[hub->string_count++] = text;
  return text;
}

static int read_string(loader *ld, qt_yaml_node node, const char *what, int allow_empty,
                       const char **out) {
  const char *text = qt_yaml_scalar(ld->doc, node);
  if (!text) return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node, "%s must be a string", what);
  if (!allow_empty && !text[0])
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node, "%s must not be empty", what);
  *out = keep(ld->hub, strdup(text));
  return *out ? 0 : out_of_memory(ld);
}

static int read_count(loader *ld, qt_yaml_node node, const char *what, long min, long *out) {
  int rc = qt_yaml_to_int(ld->doc, node, out, ld->err);
  if (rc < 0) return rc;
  if (*out < min)
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node, "%s must be at least %ld, not %ld",
                         what, min, *out);
  return 0;
}

/* A list of exactly three numbers; std values must be > 0. */
static int read_triple(loader *ld, qt_yaml_node node, const char *what, int positive, double *out) {
  if (qt_yaml_kind_of(ld->doc, node) != QT_YAML_KIND_SEQUENCE || qt_yaml_length(ld->doc, node) != 3)
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node,
                         "%s must be a list of 3 numbers (red, green, blue)", what);
  for (size_t c = 0; c < 3; c++) {
    qt_yaml_node item = qt_yaml_item(ld->doc, node, c);
    int rc = qt_yaml_to_double(ld->doc, item, &out[c], ld->err);
    if (rc < 0) return rc;
    if (positive && !(out[c] > 0))
      return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, item, "%s values must be > 0", what);
  }
  return 0;
}

static int valid_model_name(const char *name) {
  if (!name[0]) return 0;
  for (const char *c = name; *c; c++) {
    if (!isalnum((unsigned char)*c) && *c != '_' && *c != '.' && *c != '-') return 0;
  }
  return 1;
}

/* ------------------------------------------------------------------------- */
/* Checkpoint paths: ${NAME} and ${NAME:-fallback}                            */
/* ------------------------------------------------------------------------- */

typedef struct text_buffer {
  char *data;
  size_t length, capacity;
} text_buffer;

static int append(text_buffer *b, const char *text, size_t length) {
  if (b->length + length + 1 > b->capacity) {
    size_t capacity = (b->length + length + 1) * 2;
    char *grown = realloc(b->data, capacity);
    if (!grown) return QT_ENOMEM;
    b->data = grown;
    b->capacity = capacity;
  }
  memcpy(b->data + b->length, text, length);
  b->length += length;
  b->data[b->length] = '\0';
  return 0;
}

/* Expands text[0..length) into out. depth bounds nested fallbacks. */
static int expand(loader *ld, qt_yaml_node node, const char *text, size_t length, int depth,
                  text_buffer *out) {
  if (depth > 8)
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node, "variables nested too deeply");
  size_t i = 0;
  while (i < length) {
    if (!(text[i] == '$' && i + 1 < length && text[i + 1] == '{')) {
      if (append(out, text + i, 1) != 0) return out_of_memory(ld);
      i++;
      continue;
    }
    /* Find the matching brace, counting nested ${ ... }. */
    size_t start = i + 2, end = start;
    int level = 1;
    while (end < length && level > 0) {
      if (text[end] == '$' && end + 1 < length && text[end + 1] == '{') {
        level++;
        end += 2;
        continue;
      }
      if (text[end] == '}') level--;
      if (level > 0) end++;
    }
    if (level != 0)
      return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node, "unclosed \"${\" in \"%.*s\"",
                           (int)length, text);
    /* text[start..end) is NAME or NAME:-fallback. */
    size_t name_end = start;
    while (name_end < end && (isalnum((unsigned char)text[name_end]) || text[name_end] == '_'))
      name_end++;
    int has_fallback = name_end + 1 < end && text[name_end] == ':' && text[name_end + 1] == '-';
    if (name_end == start || (name_end != end && !has_fallback))
      return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node,
                           "bad variable \"${%.*s}\" (write ${NAME} or ${NAME:-fallback})",
                           (int)(end - start), text + start);
    char name[256];
    snprintf(name, sizeof name, "%.*s", (int)(name_end - start), text + start);
    const char *value = getenv(name);
    if (value && value[0]) {
      if (append(out, value, strlen(value)) != 0) return out_of_memory(ld);
    } else if (has_fallback) {
      int rc = expand(ld, node, text + name_end + 2, end - name_end - 2, depth + 1, out);
      if (rc != 0) return rc;
    } else {
      return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node,
                           "environment variable %s is not set (set it, or write ${%s:-fallback})",
                           name, name);
    }
    i = end + 1;
  }
  return 0;
}

/* The path to open: expanded, and relative to the hub's folder. */
static int resolve_checkpoint(loader *ld, qt_yaml_node node, const char *text, const char **out) {
  text_buffer expanded = {NULL, 0, 0};
  int rc = append(&expanded, "", 0) == 0 ? 0 : out_of_memory(ld);
  if (rc == 0) rc = expand(ld, node, text, strlen(text), 0, &expanded);
  if (rc == 0 && expanded.length == 0)
    rc = qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node, "checkpoint \"%s\" expands to nothing",
                       text);
  if (rc != 0) {
    free(expanded.data);
    return rc;
  }
  const char *source = ld->hub->source;
  const char *slash = strrchr(source, '/');
  char *path;
  if (expanded.data[0] == '/' || !slash) {
    path = expanded.data;
  } else {
    size_t dir_length = (size_t)(slash - source) + 1;
    path = malloc(dir_length + expanded.length + 1);
    if (path) {
      memcpy(path, source, dir_length);
      memcpy(path + dir_length, expanded.data, expanded.length + 1);
    }
    free(expanded.data);
  }
  *out = keep(ld->hub, path);
  return *out ? 0 : out_of_memory(ld);
}

/* ------------------------------------------------------------------------- */
/* Loading: one model                                                         */
/* ------------------------------------------------------------------------- */

static int parse_descriptors(loader *ld, qt_yaml_node node, qt_hub_model *model) {
  static const char *const keys[] = {"parameters",       "depth",         "width",
                                     "pretrain_dataset", "pretrain_top1", NULL};
  int rc = qt_yaml_check_keys(ld->doc, node, keys, ld->err);
  qt_yaml_node value;
  if (rc == 0 && (value = qt_yaml_get(ld->doc, node, "parameters"))) {
    rc = qt_yaml_to_double(ld->doc, value, &model->parameters, ld->err);
    if (rc == 0 && !(model->parameters >= 1))
      rc = qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, value, "parameters must be a count >= 1");
  }
  if (rc == 0 && (value = qt_yaml_get(ld->doc, node, "depth")))
    rc = read_count(ld, value, "depth", 1, &model->depth);
  if (rc == 0 && (value = qt_yaml_get(ld->doc, node, "width")))
    rc = read_count(ld, value, "width", 1, &model->width);
  if (rc == 0 && (value = qt_yaml_get(ld->doc, node, "pretrain_dataset")))
    rc = read_string(ld, value, "pretrain_dataset", 0, &model->pretrain_dataset);
  if (rc == 0 && (value = qt_yaml_get(ld->doc, node, "pretrain_top1"))) {
    rc = qt_yaml_to_double(ld->doc, value, &model->pretrain_top1, ld->err);
    if (rc == 0 && !(model->pretrain_top1 >= 0 && model->pretrain_top1 <= 1))
      rc = qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, value,
                         "pretrain_top1 is a fraction in [0, 1] (75.5%% is 0.755), not %g",
                         model->pretrain_top1);
  }
  return rc;
}

static int parse_model(loader *ld, qt_yaml_node node, qt_hub_model *model) {
  static const char *const keys[] = {"name",  "family",      "checkpoint",  "image_size",
                                     "mean",  "std",         "num_classes", "patch_size",
                                     "heads", "descriptors", "description", NULL};
  const qt_yaml_doc_t *doc = ld->doc;
  memset(model, 0, sizeof *model);
  model->pretrain_top1 = NAN;
  model->pretrain_dataset = "";
  model->description = "";
  model->std[0] = model->std[1] = model->std[2] = 1.0;
  qt_yaml_mark(doc, node, &model->line, &model->column);
  if (qt_yaml_kind_of(doc, node) != QT_YAML_KIND_MAPPING)
    return qt_yaml_error(ld->err, QT_ESCHEMA, doc, node,
                         "a model must be a mapping with name, family, checkpoint, ...");
  int rc = qt_yaml_check_keys(doc, node, keys, ld->err);
  if (rc < 0) return rc;

  static const char *const required[] = {"name", "family", "checkpoint", "num_classes"};
  for (size_t k = 0; k < sizeof required / sizeof required[0]; k++) {
    if (!qt_yaml_get(doc, node, required[k]))
      return qt_yaml_error(ld->err, QT_ESCHEMA, doc, node, "missing required key \"%s\"",
                           required[k]);
  }
  qt_yaml_node value = qt_yaml_get(doc, node, "name");
  rc = read_string(ld, value, "the model's name", 0, &model->name);
  if (rc == 0 && !valid_model_name(model->name))
    rc = qt_yaml_error(ld->err, QT_ESCHEMA, doc, value,
                       "model name \"%s\" may hold only letters, digits, '_', '.' and '-'",
                       model->name);
  if (rc < 0) return rc;

  value = qt_yaml_get(doc, node, "family");
  const char *family = qt_yaml_scalar(doc, value);
  if (!family || !qt_hub_family_known(family))
    return qt_yaml_error(ld->err, QT_ESCHEMA, doc, value,
                         "unknown family \"%s\" (expected vit, deit, deit3, mobilenetv2, "
                         "efficientnet, resnet or mlp)",
                         family ? family : "");
  model->family = keep(ld->hub, strdup(family));
  if (!model->family) return out_of_memory(ld);

  value = qt_yaml_get(doc, node, "checkpoint");
  rc = read_string(ld, value, "checkpoint", 0, &model->checkpoint_text);
  if (rc == 0) rc = resolve_checkpoint(ld, value, model->checkpoint_text, &model->checkpoint);
  if (rc == 0)
    rc = read_count(ld, qt_yaml_get(doc, node, "num_classes"), "num_classes", 0,
                    &model->num_classes);
  if (rc < 0) return rc;

  /* Image inputs: required for image families, refused for the MLP. */
  static const char *const image_keys[] = {"image_size", "mean", "std"};
  for (size_t k = 0; k < 3; k++) {
    value = qt_yaml_get(doc, node, image_keys[k]);
    if (is_mlp(model->family) && value)
      return qt_yaml_error(ld->err, QT_ESCHEMA, doc, value,
                           "%s does not apply to an mlp model (tabular input)", image_keys[k]);
    if (!is_mlp(model->family) && !value)
      return qt_yaml_error(ld->err, QT_ESCHEMA, doc, node,
                           "missing required key \"%s\" (family %s takes images)", image_keys[k],
                           family);
  }
  if (!is_mlp(model->family)) {
    rc = read_count(ld, qt_yaml_get(doc, node, "image_size"), "image_size", 1, &model->image_size);
    if (rc == 0) rc = read_triple(ld, qt_yaml_get(doc, node, "mean"), "mean", 0, model->mean);
    if (rc == 0) rc = read_triple(ld, qt_yaml_get(doc, node, "std"), "std", 1, model->std);
    if (rc < 0) return rc;
  }

  static const char *const vit_keys[] = {"patch_size", "heads"};
  long *vit_values[] = {&model->patch_size, &model->heads};
  for (size_t k = 0; k < 2; k++) {
    value = qt_yaml_get(doc, node, vit_keys[k]);
    if (!value) continue;
    if (!qt_hub_family_is_vit(model->family))
      return qt_yaml_error(ld->err, QT_ESCHEMA, doc, value,
                           "%s applies to the ViT families (vit, deit, deit3), not %s", vit_keys[k],
                           family);
    rc = read_count(ld, value, vit_keys[k], 1, vit_values[k]);
    if (rc < 0) return rc;
  }
  if (model->patch_size && model->image_size % model->patch_size != 0)
    return qt_yaml_error(ld->err, QT_ESCHEMA, doc, qt_yaml_get(doc, node, "patch_size"),
                         "image_size %ld is not a multiple of patch_size %ld", model->image_size,
                         model->patch_size);

  value = qt_yaml_get(doc, node, "descriptors");
  if (value && (rc = parse_descriptors(ld, value, model)) < 0) return rc;
  if (model->heads && model->width && model->width % model->heads != 0)
    return qt_yaml_error(ld->err, QT_ESCHEMA, doc, qt_yaml_get(doc, node, "heads"),
                         "%ld heads do not divide the width %ld", model->heads, model->width);
  value = qt_yaml_get(doc, node, "description");
  if (value && (rc = read_string(ld, value, "description", 1, &model->description)) < 0) return rc;
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Loading: the file                                                          */
/* ------------------------------------------------------------------------- */

static int hub_from_doc(const qt_yaml_doc_t *doc, const char *source, qt_hub_t **out, qt_err *err) {
  static const char *const keys[] = {"version", "name", "description", "models", NULL};
  qt_yaml_node root = qt_yaml_root(doc);
  if (qt_yaml_kind_of(doc, root) != QT_YAML_KIND_MAPPING)
    return qt_yaml_error(err, QT_ESCHEMA, doc, root,
                         "a model hub must be a mapping with version, name and models");
  qt_yaml_node version = qt_yaml_get(doc, root, "version");
  if (!version)
    return qt_yaml_error(err, QT_ESCHEMA, doc, root,
                         "missing required key \"version\" (this qtune reads version %d)",
                         QT_HUB_VERSION);
  long number;
  int rc = qt_yaml_to_int(doc, version, &number, err);
  if (rc < 0) return rc;
  if (number != QT_HUB_VERSION)
    return qt_yaml_error(err, QT_EVERSION, doc, version,
                         "unsupported hub version %ld (this qtune reads version %d)", number,
                         QT_HUB_VERSION);
  if ((rc = qt_yaml_check_keys(doc, root, keys, err)) < 0) return rc;
  qt_yaml_node name = qt_yaml_get(doc, root, "name");
  qt_yaml_node models = qt_yaml_get(doc, root, "models");
  if (!name) return qt_yaml_error(err, QT_ESCHEMA, doc, root, "missing required key \"name\"");
  if (!models) return qt_yaml_error(err, QT_ESCHEMA, doc, root, "missing required key \"models\"");
  if (qt_yaml_kind_of(doc, models) != QT_YAML_KIND_SEQUENCE || qt_yaml_length(doc, models) == 0)
    return qt_yaml_error(err, QT_ESCHEMA, doc, models, "models must be a non-empty list");

  qt_hub_t *hub = calloc(1, sizeof *hub);
  loader ld = {doc, err, hub};
  if (!hub) return out_of_memory(&ld);
  hub->source = strdup(source);
  size_t count = qt_yaml_length(doc, models);
  hub->models = calloc(count, sizeof *hub->models);
  if (!hub->source || !hub->models) rc = out_of_memory(&ld);
  const char *text = NULL;
  if (rc == 0 && (rc = read_string(&ld, name, "the hub's name", 0, &text)) == 0)
    hub->name = strdup(text);
  qt_yaml_node description = qt_yaml_get(doc, root, "description");
  text = "";
  if (rc == 0 && description) rc = read_string(&ld, description, "description", 1, &text);
  if (rc == 0) hub->description = strdup(text);
  if (rc == 0 && (!hub->name || !hub->description)) rc = out_of_memory(&ld);

  for (size_t i = 0; rc == 0 && i < count; i++) {
    qt_yaml_node node = qt_yaml_item(doc, models, i);
    rc = parse_model(&ld, node, &hub->models[i]);
    for (size_t j = 0; rc == 0 && j < i; j++) {
      if (strcmp(hub->models[j].name, hub->models[i].name) == 0)
        rc = qt_yaml_error(err, QT_ESCHEMA, doc, qt_yaml_get(doc, node, "name"),
                           "duplicate model name \"%s\" (first at line %d, column %d)",
                           hub->models[i].name, hub->models[j].line, hub->models[j].column);
    }
    hub->count = i + 1;
  }
  if (rc < 0) {
    qt_hub_free(hub);
    return rc;
  }
  *out = hub;
  return 0;
}

int qt_hub_load_string(const char *text, size_t length, const char *name, qt_hub_t **out,
                       qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_hub_load_string: out is NULL");
  *out = NULL;
  if (!name) name = "<string>";
  qt_yaml_doc_t *doc;
  int rc = qt_yaml_load_string(text, length, name, &doc, err);
  if (rc < 0) return rc;
  rc = hub_from_doc(doc, name, out, err);
  qt_yaml_free(doc);
  return rc;
}

int qt_hub_load_file(const char *path, qt_hub_t **out, qt_err *err) {
  if (!out || !path) return qt_err_set(err, QT_EINVAL, "qt_hub_load_file: NULL argument");
  *out = NULL;
  qt_yaml_doc_t *doc;
  int rc = qt_yaml_load_file(path, &doc, err);
  if (rc < 0) return rc;
  rc = hub_from_doc(doc, path, out, err);
  qt_yaml_free(doc);
  return rc;
}

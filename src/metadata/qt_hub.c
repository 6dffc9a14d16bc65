/*
 * qt_hub.c - model hubs: loading hub YAML files (configs/hubs/, version 1) and checking
 * a model's checkpoint against its entry and its family's timm layout. The
 * schema and the checks are documented in qt_metadata.h ("Model hub").
 *
 * The checkpoint check reads safetensors headers through finetune/'s reader
 * (an edge from metadata/ to finetune/ that ARCHITECTURE.md does not draw:
 * the family layouts belong with the engine's model code once it exists,
 * and can move there with qt_hub_inspect_model as their caller).
 */
#include "metadata/qt_metadata.h"

#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune.h"

/* ------------------------------------------------------------------------- */
/* Families                                                                   */
/* ------------------------------------------------------------------------- */

static const char *const family_names[] = {"vit",          "deit",   "deit3", "mobilenetv2",
                                           "efficientnet", "resnet", "mlp"};
#define FAMILY_COUNT (sizeof family_names / sizeof family_names[0])

const char *qt_model_family_name(qt_model_family family) {
  return (unsigned)family < FAMILY_COUNT ? family_names[family] : "unknown";
}

int qt_model_family_parse(const char *text, qt_model_family *out) {
  if (!text || !out) return QT_EINVAL;
  for (size_t f = 0; f < FAMILY_COUNT; f++) {
    if (strcmp(text, family_names[f]) == 0) {
      *out = (qt_model_family)f;
      return 0;
    }
  }
  return QT_EINVAL;
}

static int is_vit_family(qt_model_family family) {
  return family == QT_MODEL_FAMILY_VIT || family == QT_MODEL_FAMILY_DEIT ||
         family == QT_MODEL_FAMILY_DEIT3;
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
  if (!family || qt_model_family_parse(family, &model->family) != 0)
    return qt_yaml_error(ld->err, QT_ESCHEMA, doc, value,
                         "unknown family \"%s\" (expected vit, deit, deit3, mobilenetv2, "
                         "efficientnet, resnet or mlp)",
                         family ? family : "");

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
    if (model->family == QT_MODEL_FAMILY_MLP && value)
      return qt_yaml_error(ld->err, QT_ESCHEMA, doc, value,
                           "%s does not apply to an mlp model (tabular input)", image_keys[k]);
    if (model->family != QT_MODEL_FAMILY_MLP && !value)
      return qt_yaml_error(ld->err, QT_ESCHEMA, doc, node,
                           "missing required key \"%s\" (family %s takes images)", image_keys[k],
                           family);
  }
  if (model->family != QT_MODEL_FAMILY_MLP) {
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
    if (!is_vit_family(model->family))
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

/* ------------------------------------------------------------------------- */
/* Checking a checkpoint: the toolkit                                         */
/* ------------------------------------------------------------------------- */

/* The state of one check: the open file, which of its tensors a family's
 * layout has claimed, and where errors go. */
typedef struct checker {
  const qt_hub_t *hub;
  const qt_hub_model *model;
  const qt_safetensors_t *st;
  unsigned char *used; /* (tensor count) 1 when the layout expects the tensor */
  qt_hub_checkpoint_summary *summary;
  qt_err *err;
} checker;

static int mismatch(checker *c, const char *fmt, ...) QT_PRINTF(2, 3);

/* Records "hub:line:col: model 'name': checkpoint path: <message>". */
static int mismatch(checker *c, const char *fmt, ...) {
  char message[700];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  return qt_err_set(c->err, QT_ESCHEMA, "%s:%d:%d: model '%s': checkpoint %s: %s", c->hub->source,
                    c->model->line, c->model->column, c->model->name, c->model->checkpoint,
                    message);
}

static void format_shape(const size_t *shape, size_t ndim, char *buf, size_t size) {
  size_t used = (size_t)snprintf(buf, size, "[");
  for (size_t d = 0; d < ndim && used < size; d++)
    used += (size_t)snprintf(buf + used, size - used, "%s%zu", d ? ", " : "", shape[d]);
  if (used < size) snprintf(buf + used, size - used, "]");
}

static void format_want(const long *want, size_t ndim, char *buf, size_t size) {
  size_t used = (size_t)snprintf(buf, size, "[");
  for (size_t d = 0; d < ndim && used < size; d++) {
    if (want[d] < 0)
      used += (size_t)snprintf(buf + used, size - used, "%s*", d ? ", " : "");
    else
      used += (size_t)snprintf(buf + used, size - used, "%s%ld", d ? ", " : "", want[d]);
  }
  if (used < size) snprintf(buf + used, size - used, "]");
}

static int has_tensor(checker *c, const char *name) {
  return qt_safetensors_find(c->st, name, NULL) == 0;
}

/* Looks up a tensor (the name is printf-formatted) and claims it. Returns 1
 * when found, 0 when absent and optional, or an error when absent and
 * required. */
static int get_tensor(checker *c, int required, qt_safetensors_info *info, const char *fmt, ...)
    QT_PRINTF(4, 5);

static int get_tensor(checker *c, int required, qt_safetensors_info *info, const char *fmt, ...) {
  char name[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  size_t index;
  if (qt_safetensors_find(c->st, name, &index) != 0) {
    if (!required) return 0;
    return mismatch(c, "missing tensor '%s' (family %s)", name,
                    qt_model_family_name(c->model->family));
  }
  qt_safetensors_info_at(c->st, index, info);
  c->used[index] = 1;
  return 1;
}

/* Checks a shape; want[d] < 0 accepts any size in dimension d. */
static int check_shape(checker *c, const qt_safetensors_info *info, const long *want, size_t ndim) {
  int ok = info->ndim == ndim;
  for (size_t d = 0; ok && d < ndim; d++) ok = want[d] < 0 || (size_t)want[d] == info->shape[d];
  if (ok) return 0;
  char have[128], expected[128];
  format_shape(info->shape, info->ndim, have, sizeof have);
  format_want(want, ndim, expected, sizeof expected);
  return mismatch(c, "tensor '%s' has shape %s, expected %s", info->name, have, expected);
}

#define SHAPE(...) (const long[]){__VA_ARGS__}, sizeof((const long[]){__VA_ARGS__}) / sizeof(long)

/* A required tensor of a given shape. */
static int need(checker *c, const long *want, size_t ndim, const char *fmt, ...) QT_PRINTF(4, 5);

static int need(checker *c, const long *want, size_t ndim, const char *fmt, ...) {
  char name[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  qt_safetensors_info info;
  int rc = get_tensor(c, 1, &info, "%s", name);
  return rc < 0 ? rc : check_shape(c, &info, want, ndim);
}

/* An optional tensor of a given shape: 1 present, 0 absent, or an error. */
static int maybe(checker *c, const long *want, size_t ndim, const char *fmt, ...) QT_PRINTF(4, 5);

static int maybe(checker *c, const long *want, size_t ndim, const char *fmt, ...) {
  char name[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  qt_safetensors_info info;
  int rc = get_tensor(c, 0, &info, "%s", name);
  if (rc <= 0) return rc;
  rc = check_shape(c, &info, want, ndim);
  return rc < 0 ? rc : 1;
}

/* prefix.{weight, bias} of a layer norm or an affine vector of size n. */
static int need_norm(checker *c, long n, const char *prefix) {
  int rc = need(c, SHAPE(n), "%s.weight", prefix);
  return rc < 0 ? rc : need(c, SHAPE(n), "%s.bias", prefix);
}

/* A batch norm of n channels: weight, bias, running statistics, and an
 * optional step counter (a scalar or one element). */
static int need_batch_norm(checker *c, long n, const char *prefix) {
  static const char *const parts[] = {"weight", "bias", "running_mean", "running_var"};
  for (size_t k = 0; k < 4; k++) {
    int rc = need(c, SHAPE(n), "%s.%s", prefix, parts[k]);
    if (rc < 0) return rc;
  }
  qt_safetensors_info info;
  int rc = get_tensor(c, 0, &info, "%s.num_batches_tracked", prefix);
  if (rc > 0 && info.numel != 1)
    return mismatch(c, "tensor '%s' should hold one counter", info.name);
  return rc < 0 ? rc : 0;
}

/* A convolution weight [out, in, k, k]: reads out and k when they are
 * negative on entry, checks them otherwise. */
static int need_conv(checker *c, long *out, long in, long *kernel, const char *fmt, ...)
    QT_PRINTF(5, 6);

static int need_conv(checker *c, long *out, long in, long *kernel, const char *fmt, ...) {
  char name[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  qt_safetensors_info info;
  int rc = get_tensor(c, 1, &info, "%s", name);
  if (rc < 0) return rc;
  rc = check_shape(c, &info, SHAPE(*out, in, *kernel, *kernel));
  if (rc < 0) return rc;
  if (info.shape[2] != info.shape[3])
    return mismatch(c, "tensor '%s' has a %zux%zu kernel; only square kernels are supported", name,
                    info.shape[2], info.shape[3]);
  *out = (long)info.shape[0];
  *kernel = (long)info.shape[2];
  return 0;
}

/* The classifier: prefix.weight [num_classes, width], prefix.bias; absent
 * when the entry says num_classes 0. */
static int check_head(checker *c, const char *prefix, long width) {
  qt_safetensors_info info;
  int rc = get_tensor(c, 0, &info, "%s.weight", prefix);
  if (rc < 0) return rc;
  if (rc == 0) {
    if (c->model->num_classes > 0)
      return mismatch(c, "missing tensor '%s.weight': the hub says num_classes %ld", prefix,
                      c->model->num_classes);
    return 0;
  }
  if ((rc = check_shape(c, &info, SHAPE(-1, width))) < 0) return rc;
  c->summary->num_classes = (long)info.shape[0];
  if (c->model->num_classes != (long)info.shape[0])
    return mismatch(c, "the head '%s.weight' has %zu classes but the hub says num_classes %ld",
                    prefix, info.shape[0], c->model->num_classes);
  return need(c, SHAPE(c->model->num_classes), "%s.bias", prefix);
}

/* Number of consecutive indices i = 0, 1, ... for which the tensor
 * "<prefix><i><suffix>" exists. */
static long count_indexed(checker *c, const char *prefix, const char *suffix) {
  char name[300];
  long n = 0;
  for (;; n++) {
    snprintf(name, sizeof name, "%s%ld%s", prefix, n, suffix);
    if (!has_tensor(c, name)) return n;
  }
}

/* Any tensor whose name starts with prefix and has an index beyond n, i.e.
 * a block that breaks the sequence 0..n-1. */
static int check_no_stray_index(checker *c, const char *prefix, long n) {
  size_t length = strlen(prefix);
  for (size_t i = 0; i < qt_safetensors_count(c->st); i++) {
    const char *name = qt_safetensors_name(c->st, i);
    if (strncmp(name, prefix, length) != 0 || !isdigit((unsigned char)name[length])) continue;
    long index = strtol(name + length, NULL, 10);
    if (index >= n)
      return mismatch(c, "tensor '%s' does not follow %s0 .. %s%ld without a gap", name, prefix,
                      prefix, n - 1);
  }
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Checking: ViT, DeiT, DeiT III                                              */
/* ------------------------------------------------------------------------- */

static int check_vit(checker *c) {
  const qt_hub_model *m = c->model;
  qt_safetensors_info info;
  int rc = get_tensor(c, 1, &info, "patch_embed.proj.weight");
  if (rc < 0) return rc;
  if ((rc = check_shape(c, &info, SHAPE(-1, 3, -1, -1))) < 0) return rc;
  long width = (long)info.shape[0], patch = (long)info.shape[2];
  if (info.shape[2] != info.shape[3])
    return mismatch(c,
                    "patch_embed.proj.weight has %zux%zu patches; only square ones are supported",
                    info.shape[2], info.shape[3]);
  c->summary->width = width;
  c->summary->patch_size = patch;
  if (m->patch_size && m->patch_size != patch)
    return mismatch(c, "patch size %ld (patch_embed.proj.weight) but the hub says patch_size %ld",
                    patch, m->patch_size);
  if ((rc = maybe(c, SHAPE(width), "patch_embed.proj.bias")) < 0) return rc;
  if ((rc = need(c, SHAPE(1, 1, width), "cls_token")) < 0) return rc;
  int distilled = maybe(c, SHAPE(1, 1, width), "dist_token");
  if (distilled < 0) return distilled;
  c->summary->distilled = distilled;

  /* The position embedding holds one entry per patch of the pretraining
   * image, plus the class (and distillation) tokens unless they carry none
   * (timm's no_embed_class, as in DeiT III). */
  if ((rc = get_tensor(c, 1, &info, "pos_embed")) < 0) return rc;
  if ((rc = check_shape(c, &info, SHAPE(1, -1, width))) < 0) return rc;
  long positions = (long)info.shape[1], tokens = 1 + distilled;
  long grid = -1;
  for (long g = 1; g * g <= positions; g++) {
    if (g * g == positions || g * g == positions - tokens) grid = g;
  }
  if (grid > 0) c->summary->image_size = grid * patch;
  if (m->image_size % patch != 0)
    return mismatch(c, "image_size %ld is not a multiple of the patch size %ld", m->image_size,
                    patch);
  long want_grid = m->image_size / patch;
  if (positions != want_grid * want_grid && positions != want_grid * want_grid + tokens) {
    if (grid > 0)
      return mismatch(
          c,
          "pos_embed holds a %ldx%ld grid of %ld-pixel patches (image_size %ld) but the "
          "hub says image_size %ld",
          grid, grid, patch, grid * patch, m->image_size);
    return mismatch(c, "pos_embed has %ld positions, which is no square grid (+%ld tokens)",
                    positions, tokens);
  }
  c->summary->image_size = m->image_size;

  long depth = count_indexed(c, "blocks.", ".attn.qkv.weight");
  if (depth == 0)
    return mismatch(c, "missing tensor 'blocks.0.attn.qkv.weight' (family %s)",
                    qt_model_family_name(m->family));
  c->summary->depth = depth;
  if ((rc = check_no_stray_index(c, "blocks.", depth)) < 0) return rc;
  long hidden = -1;
  int layer_scale = has_tensor(c, "blocks.0.ls1.gamma");
  if (m->family == QT_MODEL_FAMILY_DEIT3 && !layer_scale)
    return mismatch(c, "missing tensor 'blocks.0.ls1.gamma' (deit3 blocks have layer scale)");
  c->summary->layer_scale = layer_scale;
  for (long b = 0; b < depth; b++) {
    char prefix[128];
    snprintf(prefix, sizeof prefix, "blocks.%ld.norm1", b);
    if ((rc = need_norm(c, width, prefix)) < 0) return rc;
    if ((rc = need(c, SHAPE(3 * width, width), "blocks.%ld.attn.qkv.weight", b)) < 0) return rc;
    if ((rc = maybe(c, SHAPE(3 * width), "blocks.%ld.attn.qkv.bias", b)) < 0) return rc;
    if ((rc = need(c, SHAPE(width, width), "blocks.%ld.attn.proj.weight", b)) < 0) return rc;
    if ((rc = need(c, SHAPE(width), "blocks.%ld.attn.proj.bias", b)) < 0) return rc;
    snprintf(prefix, sizeof prefix, "blocks.%ld.norm2", b);
    if ((rc = need_norm(c, width, prefix)) < 0) return rc;
    if ((rc = get_tensor(c, 1, &info, "blocks.%ld.mlp.fc1.weight", b)) < 0) return rc;
    if ((rc = check_shape(c, &info, SHAPE(hidden, width))) < 0) return rc;
    hidden = (long)info.shape[0];
    if ((rc = need(c, SHAPE(hidden), "blocks.%ld.mlp.fc1.bias", b)) < 0) return rc;
    if ((rc = need(c, SHAPE(width, hidden), "blocks.%ld.mlp.fc2.weight", b)) < 0) return rc;
    if ((rc = need(c, SHAPE(width), "blocks.%ld.mlp.fc2.bias", b)) < 0) return rc;
    for (int k = 1; k <= 2; k++) {
      int present = maybe(c, SHAPE(width), "blocks.%ld.ls%d.gamma", b, k);
      if (present < 0) return present;
      if (present != layer_scale)
        return mismatch(c,
                        "layer scale (blocks.N.ls1.gamma, ls2.gamma) must be in every block or "
                        "none; block %ld differs",
                        b);
    }
  }
  if ((rc = need_norm(c, width, "norm")) < 0) return rc;
  if ((rc = check_head(c, "head", width)) < 0) return rc;
  if (distilled && (rc = check_head(c, "head_dist", width)) < 0) return rc;
  if (m->heads && width % m->heads != 0)
    return mismatch(c, "%ld heads do not divide the width %ld", m->heads, width);
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Checking: ResNet                                                           */
/* ------------------------------------------------------------------------- */

static int check_resnet(checker *c) {
  long channels = -1, kernel = -1;
  int rc = need_conv(c, &channels, 3, &kernel, "conv1.weight");
  if (rc == 0) rc = need_batch_norm(c, channels, "bn1");
  if (rc < 0) return rc;
  int bottleneck = has_tensor(c, "layer1.0.conv3.weight");
  int convs = bottleneck ? 3 : 2;
  long blocks_total = 0;
  for (int layer = 1; layer <= 4; layer++) {
    char prefix[128];
    snprintf(prefix, sizeof prefix, "layer%d.", layer);
    long blocks = count_indexed(c, prefix, ".conv1.weight");
    if (blocks == 0)
      return mismatch(c, "missing tensor 'layer%d.0.conv1.weight' (family resnet)", layer);
    if ((rc = check_no_stray_index(c, prefix, blocks)) < 0) return rc;
    for (long b = 0; b < blocks; b++) {
      long in = channels, out = -1;
      for (int k = 1; k <= convs; k++) {
        long conv_out = -1, conv_kernel = -1;
        if ((rc = need_conv(c, &conv_out, out < 0 ? in : out, &conv_kernel,
                            "layer%d.%ld.conv%d.weight", layer, b, k)) < 0)
          return rc;
        char bn[128];
        snprintf(bn, sizeof bn, "layer%d.%ld.bn%d", layer, b, k);
        if ((rc = need_batch_norm(c, conv_out, bn)) < 0) return rc;
        out = conv_out;
      }
      /* A shortcut with a 1x1 convolution where the channels change (and
       * wherever the checkpoint has one: a stride also needs it). */
      long down = out, one = 1;
      char name[128];
      snprintf(name, sizeof name, "layer%d.%ld.downsample.0.weight", layer, b);
      if (has_tensor(c, name)) {
        if ((rc = need_conv(c, &down, in, &one, "%s", name)) < 0) return rc;
        snprintf(name, sizeof name, "layer%d.%ld.downsample.1", layer, b);
        if ((rc = need_batch_norm(c, out, name)) < 0) return rc;
      } else if (in != out) {
        return mismatch(
            c, "block layer%d.%ld turns %ld channels into %ld but has no downsample.0.weight",
            layer, b, in, out);
      }
      channels = out;
    }
    blocks_total += blocks;
  }
  c->summary->depth = 2 + blocks_total * convs;
  c->summary->width = channels;
  return check_head(c, "fc", channels);
}

/* ------------------------------------------------------------------------- */
/* Checking: MobileNetV2 and EfficientNet (timm's EfficientNet builder)      */
/* ------------------------------------------------------------------------- */

/* Optional squeeze-and-excitation on `channels`: se.conv_reduce [r, C, 1, 1]
 * + bias, se.conv_expand [C, r, 1, 1] + bias. Returns 1 when present. */
static int check_se(checker *c, long stage, long block, long channels) {
  qt_safetensors_info info;
  int rc = get_tensor(c, 0, &info, "blocks.%ld.%ld.se.conv_reduce.weight", stage, block);
  if (rc <= 0) return rc;
  if (c->model->family == QT_MODEL_FAMILY_MOBILENETV2)
    return mismatch(c, "tensor '%s': mobilenetv2 has no squeeze-and-excitation (efficientnet?)",
                    info.name);
  if ((rc = check_shape(c, &info, SHAPE(-1, channels, 1, 1))) < 0) return rc;
  long reduced = (long)info.shape[0];
  if ((rc = need(c, SHAPE(reduced), "blocks.%ld.%ld.se.conv_reduce.bias", stage, block)) < 0)
    return rc;
  if ((rc = need(c, SHAPE(channels, reduced, 1, 1), "blocks.%ld.%ld.se.conv_expand.weight", stage,
                 block)) < 0)
    return rc;
  if ((rc = need(c, SHAPE(channels), "blocks.%ld.%ld.se.conv_expand.bias", stage, block)) < 0)
    return rc;
  return 1;
}

static int check_efficientnet(checker *c) {
  long channels = -1, kernel = -1;
  int rc = need_conv(c, &channels, 3, &kernel, "conv_stem.weight");
  if (rc == 0) rc = need_batch_norm(c, channels, "bn1");
  if (rc < 0) return rc;
  long stages = 0, blocks_total = 0;
  for (;; stages++) {
    char first[128];
    snprintf(first, sizeof first, "blocks.%ld.0.", stages);
    int found = 0;
    for (size_t i = 0; i < qt_safetensors_count(c->st) && !found; i++)
      found = strncmp(qt_safetensors_name(c->st, i), first, strlen(first)) == 0;
    if (!found) break;
  }
  if (stages == 0)
    return mismatch(c, "no tensors 'blocks.0.0.*' (family %s)",
                    qt_model_family_name(c->model->family));
  if ((rc = check_no_stray_index(c, "blocks.", stages)) < 0) return rc;
  for (long s = 0; s < stages; s++) {
    /* A block exists when its depthwise convolution does. */
    char prefix[128];
    snprintf(prefix, sizeof prefix, "blocks.%ld.", s);
    long blocks = count_indexed(c, prefix, ".conv_dw.weight");
    if (blocks == 0) return mismatch(c, "missing tensor 'blocks.%ld.0.conv_dw.weight'", s);
    if ((rc = check_no_stray_index(c, prefix, blocks)) < 0) return rc;
    for (long b = 0; b < blocks; b++) {
      char bn[128];
      long mid = channels, out = -1, dw_kernel = -1, one = 1;
      char pwl[128];
      snprintf(pwl, sizeof pwl, "blocks.%ld.%ld.conv_pwl.weight", s, b);
      if (has_tensor(c, pwl)) {
        /* Inverted residual: expand 1x1, depthwise, SE, project 1x1. */
        mid = -1;
        if ((rc = need_conv(c, &mid, channels, &one, "blocks.%ld.%ld.conv_pw.weight", s, b)) < 0)
          return rc;
        snprintf(bn, sizeof bn, "blocks.%ld.%ld.bn1", s, b);
        if ((rc = need_batch_norm(c, mid, bn)) < 0) return rc;
        if ((rc = need_conv(c, &mid, 1, &dw_kernel, "blocks.%ld.%ld.conv_dw.weight", s, b)) < 0)
          return rc;
        snprintf(bn, sizeof bn, "blocks.%ld.%ld.bn2", s, b);
        if ((rc = need_batch_norm(c, mid, bn)) < 0) return rc;
        if ((rc = check_se(c, s, b, mid)) < 0) return rc;
        one = 1;
        if ((rc = need_conv(c, &out, mid, &one, "%s", pwl)) < 0) return rc;
        snprintf(bn, sizeof bn, "blocks.%ld.%ld.bn3", s, b);
        if ((rc = need_batch_norm(c, out, bn)) < 0) return rc;
      } else {
        /* Depthwise separable: depthwise, SE, pointwise 1x1. */
        if ((rc = need_conv(c, &mid, 1, &dw_kernel, "blocks.%ld.%ld.conv_dw.weight", s, b)) < 0)
          return rc;
        snprintf(bn, sizeof bn, "blocks.%ld.%ld.bn1", s, b);
        if ((rc = need_batch_norm(c, mid, bn)) < 0) return rc;
        if ((rc = check_se(c, s, b, mid)) < 0) return rc;
        if ((rc = need_conv(c, &out, mid, &one, "blocks.%ld.%ld.conv_pw.weight", s, b)) < 0)
          return rc;
        snprintf(bn, sizeof bn, "blocks.%ld.%ld.bn2", s, b);
        if ((rc = need_batch_norm(c, out, bn)) < 0) return rc;
      }
      channels = out;
    }
    blocks_total += blocks;
  }
  long features = -1, one = 1;
  if ((rc = need_conv(c, &features, channels, &one, "conv_head.weight")) < 0) return rc;
  if ((rc = need_batch_norm(c, features, "bn2")) < 0) return rc;
  c->summary->depth = blocks_total;
  c->summary->width = features;
  return check_head(c, "classifier", features);
}

/* ------------------------------------------------------------------------- */
/* Checking: MLP (qtune's layout)                                             */
/* ------------------------------------------------------------------------- */

static int check_mlp(checker *c) {
  long depth = count_indexed(c, "blocks.", ".fc.weight");
  if (depth == 0) return mismatch(c, "missing tensor 'blocks.0.fc.weight' (family mlp)");
  int rc = check_no_stray_index(c, "blocks.", depth);
  if (rc < 0) return rc;
  long width = -1;
  for (long b = 0; b < depth; b++) {
    qt_safetensors_info info;
    if ((rc = get_tensor(c, 1, &info, "blocks.%ld.fc.weight", b)) < 0) return rc;
    if ((rc = check_shape(c, &info, SHAPE(-1, width))) < 0) return rc;
    width = (long)info.shape[0];
    if ((rc = need(c, SHAPE(width), "blocks.%ld.fc.bias", b)) < 0) return rc;
    char norm[128];
    snprintf(norm, sizeof norm, "blocks.%ld.norm.weight", b);
    if (has_tensor(c, norm)) {
      snprintf(norm, sizeof norm, "blocks.%ld.norm", b);
      if ((rc = need_norm(c, width, norm)) < 0) return rc;
    }
  }
  c->summary->depth = depth;
  c->summary->width = width;
  return check_head(c, "head", width);
}

/* ------------------------------------------------------------------------- */
/* Checking: the entry point                                                  */
/* ------------------------------------------------------------------------- */

static int is_statistic(const char *name) {
  static const char *const suffixes[] = {".running_mean", ".running_var", ".num_batches_tracked"};
  size_t length = strlen(name);
  for (size_t k = 0; k < 3; k++) {
    size_t n = strlen(suffixes[k]);
    if (length >= n && strcmp(name + length - n, suffixes[k]) == 0) return 1;
  }
  return 0;
}

/* Descriptors the hub gives must agree with the checkpoint. */
static int check_descriptors(checker *c) {
  const qt_hub_model *m = c->model;
  const qt_hub_checkpoint_summary *s = c->summary;
  if (m->depth && m->depth != s->depth)
    return mismatch(c, "depth %ld but the hub's descriptors say %ld", s->depth, m->depth);
  if (m->width && m->width != s->width)
    return mismatch(c, "width %ld but the hub's descriptors say %ld", s->width, m->width);
  if (m->parameters > 0 && fabs(s->parameters - m->parameters) > 0.05 * m->parameters)
    return mismatch(c, "%.0f parameters but the hub's descriptors say %.0f (more than 5%% off)",
                    s->parameters, m->parameters);
  return 0;
}

int qt_hub_inspect_model(const qt_hub_t *hub, size_t index, qt_hub_checkpoint_summary *summary,
                         qt_err *err) {
  if (!hub) return qt_err_set(err, QT_EINVAL, "qt_hub_inspect_model: hub is NULL");
  const qt_hub_model *model = qt_hub_model_at(hub, index);
  qt_hub_checkpoint_summary local;
  if (!summary) summary = &local;
  memset(summary, 0, sizeof *summary);

  qt_safetensors_t *st = NULL;
  qt_err open_err;
  qt_err_clear(&open_err);
  int rc = qt_safetensors_open(model->checkpoint, &st, &open_err);
  if (rc != 0) {
    if (rc == QT_ENOENT)
      return qt_err_set(err, QT_ENOENT,
                        "%s:%d:%d: model '%s': checkpoint %s does not exist (not "
                        "fetched yet?)",
                        hub->source, model->line, model->column, model->name, model->checkpoint);
    return qt_err_set(err, rc, "%s:%d:%d: model '%s': checkpoint %s", hub->source, model->line,
                      model->column, model->name, qt_err_message(&open_err));
  }
  size_t count = qt_safetensors_count(st);
  checker c = {hub, model, st, calloc(count ? count : 1, 1), summary, err};
  if (!c.used) {
    qt_safetensors_free(st);
    return qt_err_set(err, QT_ENOMEM, "out of memory");
  }
  summary->tensors = count;
  for (size_t i = 0; i < count; i++) {
    qt_safetensors_info info;
    qt_safetensors_info_at(st, i, &info);
    if (!is_statistic(info.name)) summary->parameters += (double)info.numel;
  }
  switch (model->family) {
    case QT_MODEL_FAMILY_VIT:
    case QT_MODEL_FAMILY_DEIT:
    case QT_MODEL_FAMILY_DEIT3:
      rc = check_vit(&c);
      break;
    case QT_MODEL_FAMILY_RESNET:
      rc = check_resnet(&c);
      break;
    case QT_MODEL_FAMILY_MOBILENETV2:
    case QT_MODEL_FAMILY_EFFICIENTNET:
      rc = check_efficientnet(&c);
      break;
    case QT_MODEL_FAMILY_MLP:
      rc = check_mlp(&c);
      break;
    default:
      rc = mismatch(&c, "unknown family");
      break;
  }
  /* Tensors the layout does not know would be silently ignored by the
   * engine, which then computes another model than the checkpoint's. */
  size_t unexpected = 0, first = 0;
  for (size_t i = 0; rc == 0 && i < count; i++) {
    if (!c.used[i] && unexpected++ == 0) first = i;
  }
  if (rc == 0 && unexpected)
    rc = mismatch(&c, "unexpected tensor '%s'%s for family %s", qt_safetensors_name(st, first),
                  unexpected > 1 ? " (and others)" : "", qt_model_family_name(model->family));
  if (rc == 0) rc = check_descriptors(&c);
  free(c.used);
  qt_safetensors_free(st);
  return rc;
}

int qt_hub_check_model(const qt_hub_t *hub, size_t index, qt_err *err) {
  return qt_hub_inspect_model(hub, index, NULL, err);
}

/*
 * qt_space.c - loading a search space from YAML (version 1) and describing it.
 *
 * Loading runs in passes over the parsed document, so that every check can
 * name the line and column of the offending text:
 *   1. the top level (version first, so that a newer file says "unsupported
 *      version" rather than "unknown key"), the fidelity, and every
 *      hyperparameter on its own (type, choices or range, log, default);
 *   2. conditions, which need the names and choices of every hyperparameter;
 *   3. a depth-first walk over the condition graph that rejects cycles and
 *      records a topological order (parents before children);
 *   4. the layout of the numeric encoding.
 * The schema is documented in qt_metadata.h and docs/search-space.md.
 */
#include "metadata/qt_space_internal.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ------------------------------------------------------------------------- */
/* Small helpers shared by the search-space files                             */
/* ------------------------------------------------------------------------- */

int qt__close(double a, double b, double rtol) {
  if (a == b) return 1;
  return fabs(a - b) <= rtol * fmax(fabs(a), fabs(b));
}

void qt__format_double(double x, char *buf, size_t size) {
  if (size == 0) return;
  for (int precision = 1; precision <= 17; precision++) {
    snprintf(buf, size, "%.*g", precision, x);
    if (strtod(buf, NULL) == x) return;
  }
}

int qt__parse_bool(const char *text, int *out) {
  static const char *const truths[] = {"true", "yes", "on", "1"};
  static const char *const falsehoods[] = {"false", "no", "off", "0"};
  if (!text) return QT_EINVAL;
  for (size_t i = 0; i < sizeof truths / sizeof truths[0]; i++) {
    if (strcasecmp(text, truths[i]) == 0) {
      *out = 1;
      return 0;
    }
    if (strcasecmp(text, falsehoods[i]) == 0) {
      *out = 0;
      return 0;
    }
  }
  return QT_EINVAL;
}

int qt__hp_match_number(const qt__hp *hp, double value, size_t *index) {
  if (!isfinite(value)) return QT_EINVAL;
  switch (hp->type) {
    case QT_HP_TYPE_BOOLEAN:
      if (value != 0.0 && value != 1.0) return QT_ERANGE;
      *index = value == 1.0;
      return 0;
    case QT_HP_TYPE_CATEGORICAL:
    case QT_HP_TYPE_ORDINAL:
      for (size_t j = 0; j < hp->choice_count; j++) {
        if (!isnan(hp->numbers[j]) && qt__close(hp->numbers[j], value, QT__CHOICE_RTOL)) {
          *index = j;
          return 0;
        }
      }
      return QT_ERANGE;
    default:
      return QT_EINVAL;
  }
}

int qt__hp_match_text(const qt__hp *hp, const char *text, size_t *index) {
  if (!text) return QT_EINVAL;
  double value;
  switch (hp->type) {
    case QT_HP_TYPE_BOOLEAN: {
      int truth;
      if (qt__parse_bool(text, &truth) < 0) return QT_EINVAL;
      *index = (size_t)truth;
      return 0;
    }
    case QT_HP_TYPE_CATEGORICAL:
      /* The exact spelling wins; a number only matches a numeric-looking
       * choice, so "10.0" finds "10" but "None" never matches a number. */
      for (size_t j = 0; j < hp->choice_count; j++) {
        if (strcmp(hp->choices[j], text) == 0) {
          *index = j;
          return 0;
        }
      }
      if (qt_parse_double(text, &value) == 0) return qt__hp_match_number(hp, value, index);
      return QT_ERANGE;
    case QT_HP_TYPE_ORDINAL:
      if (qt_parse_double(text, &value) < 0) return QT_EINVAL;
      return qt__hp_match_number(hp, value, index);
    default:
      return QT_EINVAL;
  }
}

int qt__hp_value_ok(const qt__hp *hp, double v) {
  if (!isfinite(v)) return 0;
  switch (hp->type) {
    case QT_HP_TYPE_CATEGORICAL:
    case QT_HP_TYPE_ORDINAL:
    case QT_HP_TYPE_BOOLEAN:
      return v >= 0 && v < (double)hp->choice_count && v == floor(v);
    case QT_HP_TYPE_INTEGER:
      return v >= hp->min && v <= hp->max && v == floor(v);
    case QT_HP_TYPE_FLOAT:
      return v >= hp->min && v <= hp->max;
  }
  return 0;
}

void qt__format_choices(const qt__hp *hp, char *buf, size_t size) {
  size_t used = 0;
  if (size < 8) {
    if (size) buf[0] = '\0';
    return;
  }
  used += (size_t)snprintf(buf, size, "[");
  for (size_t j = 0; j < hp->choice_count; j++) {
    size_t need = strlen(hp->choices[j]) + 2;
    /* Keep room for ", ...]" so that a long list stays readable. */
    if (used + need + 7 >= size) {
      snprintf(buf + used, size - used, "%s...", j ? ", " : "");
      used = strlen(buf);
      break;
    }
    used += (size_t)snprintf(buf + used, size - used, "%s%s", j ? ", " : "", hp->choices[j]);
  }
  snprintf(buf + used, size - used, "]");
}

/* ------------------------------------------------------------------------- */
/* Freeing                                                                    */
/* ------------------------------------------------------------------------- */

static void hp_free(qt__hp *hp) {
  free(hp->name);
  free(hp->description);
  for (size_t j = 0; hp->choices && j < hp->choice_count; j++) free(hp->choices[j]);
  free(hp->choices);
  free(hp->numbers);
  free(hp->positions);
  for (size_t k = 0; hp->conditions && k < hp->condition_count; k++) {
    free(hp->conditions[k].values);
  }
  free(hp->conditions);
}

void qt_space_free(qt_space_t *space) {
  if (!space) return;
  for (size_t i = 0; space->hps && i < space->count; i++) hp_free(&space->hps[i]);
  free(space->hps);
  free(space->order);
  free(space->name);
  free(space->description);
  free(space->source);
  free(space->fidelity_name);
  free(space);
}

/* ------------------------------------------------------------------------- */
/* Loading: helpers                                                           */
/* ------------------------------------------------------------------------- */

/* The state of one load: the document and where errors go. */
typedef struct loader {
  const qt_yaml_doc_t *doc;
  qt_err *err;
} loader;

static int out_of_memory(loader *ld) {
  return qt_err_set(ld->err, QT_ENOMEM, "%s: out of memory", qt_yaml_name(ld->doc));
}

static char *dup_string(const char *text) {
  size_t n = strlen(text) + 1;
  char *copy = malloc(n);
  if (copy) memcpy(copy, text, n);
  return copy;
}

static int is_identifier(const char *text) {
  if (!(isalpha((unsigned char)text[0]) || text[0] == '_')) return 0;
  for (const char *c = text + 1; *c; c++) {
    if (!(isalnum((unsigned char)*c) || *c == '_')) return 0;
  }
  return 1;
}

/* Reads a scalar as a string into *out (a new copy). `what` names it in
 * messages ("the space's name"). Empty strings are refused when
 * allow_empty is 0. */
static int read_string(loader *ld, qt_yaml_node node, const char *what, int allow_empty,
                       char **out) {
  const char *text = qt_yaml_scalar(ld->doc, node);
  if (!text) {
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node, "%s must be a single string", what);
  }
  if (!allow_empty && text[0] == '\0') {
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node, "%s must not be empty", what);
  }
  *out = dup_string(text);
  return *out ? 0 : out_of_memory(ld);
}

static int missing_key(loader *ld, qt_yaml_node where, const char *key, const char *context) {
  return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, where, "missing required key \"%s\"%s", key,
                       context);
}

static const char *const type_names[] = {"categorical", "ordinal", "integer", "float", "boolean"};

const char *qt_hp_type_name(qt_hp_type type) {
  if ((unsigned)type >= sizeof type_names / sizeof type_names[0]) return "unknown";
  return type_names[type];
}

/* ------------------------------------------------------------------------- */
/* Loading: fidelity                                                          */
/* ------------------------------------------------------------------------- */

static int parse_fidelity(loader *ld, qt_yaml_node key, qt_yaml_node node, qt_space_t *space) {
  static const char *const keys[] = {"name", "min", "max", NULL};
  int rc = qt_yaml_check_keys(ld->doc, node, keys, ld->err);
  if (rc < 0) return rc;

  qt_yaml_node name = qt_yaml_get(ld->doc, node, "name");
  qt_yaml_node min = qt_yaml_get(ld->doc, node, "min");
  qt_yaml_node max = qt_yaml_get(ld->doc, node, "max");
  const char *context = " in the fidelity (e.g. {name: epochs, min: 1, max: 50})";
  if (!name) return missing_key(ld, key, "name", context);
  if (!min) return missing_key(ld, key, "min", context);
  if (!max) return missing_key(ld, key, "max", context);

  if ((rc = read_string(ld, name, "the fidelity's name", 0, &space->fidelity_name)) < 0) return rc;
  if (!is_identifier(space->fidelity_name)) {
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, name,
                         "fidelity name \"%s\" is not a name (letters, digits and _, not "
                         "starting with a digit)",
                         space->fidelity_name);
  }
  if ((rc = qt_yaml_to_int(ld->doc, min, &space->fidelity_min, ld->err)) < 0) return rc;
  if ((rc = qt_yaml_to_int(ld->doc, max, &space->fidelity_max, ld->err)) < 0) return rc;
  if (space->fidelity_min < 1) {
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, min,
                         "fidelity min must be at least 1, got %ld", space->fidelity_min);
  }
  if (space->fidelity_max < space->fidelity_min) {
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, max, "fidelity max %ld is below its min %ld",
                         space->fidelity_max, space->fidelity_min);
  }
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Loading: one hyperparameter (pass 1)                                       */
/* ------------------------------------------------------------------------- */

static int allocate_choices(loader *ld, qt__hp *hp, size_t count) {
  hp->choices = calloc(count, sizeof *hp->choices);
  hp->numbers = calloc(count, sizeof *hp->numbers);
  if (!hp->choices || !hp->numbers) return out_of_memory(ld);
  hp->choice_count = count;
  return 0;
}

static int parse_choices(loader *ld, qt_yaml_node key, qt_yaml_node spec, qt__hp *hp) {
  qt_yaml_node node = qt_yaml_get(ld->doc, spec, "choices");
  if (!node) {
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, key,
                         "%s hyperparameter \"%s\" needs choices, e.g. choices: [a, b]",
                         qt_hp_type_name(hp->type), hp->name);
  }
  if (qt_yaml_kind_of(ld->doc, node) != QT_YAML_KIND_SEQUENCE) {
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node,
                         "choices of \"%s\" must be a list, e.g. [a, b]", hp->name);
  }
  size_t count = qt_yaml_length(ld->doc, node);
  if (count == 0) {
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node, "choices of \"%s\" must not be empty",
                         hp->name);
  }
  int rc = allocate_choices(ld, hp, count);
  if (rc < 0) return rc;

  for (size_t j = 0; j < count; j++) {
    qt_yaml_node item = qt_yaml_item(ld->doc, node, j);
    const char *text = qt_yaml_scalar(ld->doc, item);
    if (!text) {
      return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, item,
                           "a choice must be a single value, not a list or a mapping");
    }
    if (hp->type == QT_HP_TYPE_ORDINAL) {
      if ((rc = qt_yaml_to_double(ld->doc, item, &hp->numbers[j], ld->err)) < 0) return rc;
    } else {
      if (!qt_yaml_scalar_is_quoted(ld->doc, item) && qt_yaml_is_null(ld->doc, item)) {
        return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, item,
                             "a null choice is ambiguous; write the value as a string, "
                             "e.g. None");
      }
      if (text[0] == '\0') {
        return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, item, "a choice must not be empty");
      }
      if (qt_parse_double(text, &hp->numbers[j]) < 0) hp->numbers[j] = NAN;
    }
    hp->choices[j] = dup_string(text);
    if (!hp->choices[j]) return out_of_memory(ld);

    /* Two choices that match the same text would make set-by-string
     * ambiguous, so numeric twins ("1" and "1.0") count as duplicates. */
    for (size_t e = 0; e < j; e++) {
      int same = strcmp(hp->choices[e], text) == 0 ||
                 (!isnan(hp->numbers[e]) && !isnan(hp->numbers[j]) &&
                  qt__close(hp->numbers[e], hp->numbers[j], QT__CHOICE_RTOL));
      if (same) {
        return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, item,
                             "duplicate choice \"%s\" of \"%s\" (same as choice %zu, \"%s\")", text,
                             hp->name, e + 1, hp->choices[e]);
      }
    }
  }
  return 0;
}

static int parse_range(loader *ld, qt_yaml_node key, qt_yaml_node spec, qt__hp *hp) {
  qt_yaml_node node = qt_yaml_get(ld->doc, spec, "range");
  if (!node) {
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, key,
                         "%s hyperparameter \"%s\" needs a range, e.g. range: [0, 1]",
                         qt_hp_type_name(hp->type), hp->name);
  }
  if (qt_yaml_kind_of(ld->doc, node) != QT_YAML_KIND_SEQUENCE ||
      qt_yaml_length(ld->doc, node) != 2) {
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node,
                         "range of \"%s\" must be a list of two numbers [min, max]", hp->name);
  }
  double bounds[2];
  for (size_t j = 0; j < 2; j++) {
    qt_yaml_node item = qt_yaml_item(ld->doc, node, j);
    int rc = qt_yaml_to_double(ld->doc, item, &bounds[j], ld->err);
    if (rc < 0) return rc;
    /* 2^53: beyond it doubles no longer hold every whole number. */
    if (hp->type == QT_HP_TYPE_INTEGER &&
        (bounds[j] != floor(bounds[j]) || fabs(bounds[j]) > 9007199254740992.0)) {
      return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, item,
                           "integer range bounds must be whole numbers, got %s",
                           qt_yaml_scalar(ld->doc, item));
    }
  }
  if (!(bounds[0] < bounds[1])) {
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node,
                         "range of \"%s\" is empty: min %s must be less than max %s", hp->name,
                         qt_yaml_scalar(ld->doc, qt_yaml_item(ld->doc, node, 0)),
                         qt_yaml_scalar(ld->doc, qt_yaml_item(ld->doc, node, 1)));
  }
  hp->min = bounds[0];
  hp->max = bounds[1];
  return 0;
}

static int parse_log(loader *ld, qt_yaml_node spec, qt__hp *hp) {
  qt_yaml_node node = qt_yaml_get(ld->doc, spec, "log");
  if (!node) return 0;
  int rc = qt_yaml_to_bool(ld->doc, node, &hp->log, ld->err);
  if (rc < 0 || !hp->log) return rc;
  if (hp->min <= 0) {
    char text[64];
    qt__format_double(hp->min, text, sizeof text);
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node,
                         "a log scale needs positive values, but \"%s\" %s %s", hp->name,
                         hp->type == QT_HP_TYPE_ORDINAL ? "has the choice" : "starts at", text);
  }
  return 0;
}

/* The encoded position of every ordinal choice (see qt_metadata.h). */
static int ordinal_positions(loader *ld, qt__hp *hp) {
  size_t k = hp->choice_count;
  hp->positions = calloc(k, sizeof *hp->positions);
  if (!hp->positions) return out_of_memory(ld);
  for (size_t j = 0; j < k; j++) {
    if (k == 1) {
      hp->positions[j] = 0.0;
    } else if (hp->log) {
      hp->positions[j] = (log(hp->numbers[j]) - log(hp->min)) / (log(hp->max) - log(hp->min));
    } else {
      size_t rank = 0;
      for (size_t e = 0; e < k; e++) rank += hp->numbers[e] < hp->numbers[j];
      hp->positions[j] = (double)rank / (double)(k - 1);
    }
  }
  return 0;
}

static int parse_default(loader *ld, qt_yaml_node spec, qt__hp *hp) {
  qt_yaml_node node = qt_yaml_get(ld->doc, spec, "default");
  if (!node) return 0;
  const char *text = qt_yaml_scalar(ld->doc, node);
  if (!text) {
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node,
                         "default of \"%s\" must be a single value", hp->name);
  }
  int rc;
  size_t index;
  char list[512];
  switch (hp->type) {
    case QT_HP_TYPE_BOOLEAN: {
      int truth;
      if ((rc = qt_yaml_to_bool(ld->doc, node, &truth, ld->err)) < 0) return rc;
      hp->default_value = truth;
      break;
    }
    case QT_HP_TYPE_CATEGORICAL:
    case QT_HP_TYPE_ORDINAL:
      if (hp->type == QT_HP_TYPE_ORDINAL) {
        double value;
        if ((rc = qt_yaml_to_double(ld->doc, node, &value, ld->err)) < 0) return rc;
      }
      if (qt__hp_match_text(hp, text, &index) < 0) {
        qt__format_choices(hp, list, sizeof list);
        return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node,
                             "default \"%s\" of \"%s\" is not one of the choices %s", text,
                             hp->name, list);
      }
      hp->default_value = (double)index;
      break;
    case QT_HP_TYPE_INTEGER:
    case QT_HP_TYPE_FLOAT: {
      double value;
      if ((rc = qt_yaml_to_double(ld->doc, node, &value, ld->err)) < 0) return rc;
      if (hp->type == QT_HP_TYPE_INTEGER && value != floor(value)) {
        return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node,
                             "default of integer \"%s\" must be a whole number, got %s", hp->name,
                             text);
      }
      if (value < hp->min || value > hp->max) {
        char lo[64], hi[64];
        qt__format_double(hp->min, lo, sizeof lo);
        qt__format_double(hp->max, hi, sizeof hi);
        return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node,
                             "default %s of \"%s\" is outside the range [%s, %s]", text, hp->name,
                             lo, hi);
      }
      hp->default_value = value;
      break;
    }
  }
  hp->has_default = 1;
  return 0;
}

static int parse_type(loader *ld, qt_yaml_node key, qt_yaml_node spec, qt__hp *hp) {
  qt_yaml_node node = qt_yaml_get(ld->doc, spec, "type");
  if (!node) {
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, key,
                         "hyperparameter \"%s\" has no type (one of categorical, ordinal, "
                         "integer, float, boolean)",
                         hp->name);
  }
  const char *text = qt_yaml_scalar(ld->doc, node);
  for (size_t t = 0; text && t < sizeof type_names / sizeof type_names[0]; t++) {
    if (strcmp(text, type_names[t]) == 0) {
      hp->type = (qt_hp_type)t;
      return 0;
    }
  }
  return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node,
                       "unknown type \"%s\" of \"%s\" (one of categorical, ordinal, integer, "
                       "float, boolean)",
                       text ? text : "", hp->name);
}

static int parse_hp(loader *ld, qt_yaml_node key, qt_yaml_node spec, qt__hp *hp) {
  static const char *const categorical_keys[] = {"type",        "choices",     "default",
                                                 "active_when", "description", NULL};
  static const char *const ordinal_keys[] = {"type",        "choices",     "log", "default",
                                             "active_when", "description", NULL};
  static const char *const numeric_keys[] = {"type",        "range",       "log", "default",
                                             "active_when", "description", NULL};
  static const char *const boolean_keys[] = {"type", "default", "active_when", "description", NULL};
  if (qt_yaml_kind_of(ld->doc, spec) != QT_YAML_KIND_MAPPING) {
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, spec,
                         "hyperparameter \"%s\" must be a mapping, e.g. {type: float, range: "
                         "[0, 1]}",
                         hp->name);
  }
  int rc = parse_type(ld, key, spec, hp);
  if (rc < 0) return rc;

  const char *const *allowed = numeric_keys;
  if (hp->type == QT_HP_TYPE_CATEGORICAL) allowed = categorical_keys;
  if (hp->type == QT_HP_TYPE_ORDINAL) allowed = ordinal_keys;
  if (hp->type == QT_HP_TYPE_BOOLEAN) allowed = boolean_keys;
  if ((rc = qt_yaml_check_keys(ld->doc, spec, allowed, ld->err)) < 0) return rc;

  switch (hp->type) {
    case QT_HP_TYPE_CATEGORICAL:
      rc = parse_choices(ld, key, spec, hp);
      break;
    case QT_HP_TYPE_ORDINAL:
      rc = parse_choices(ld, key, spec, hp);
      if (rc == 0) {
        hp->min = hp->max = hp->numbers[0];
        for (size_t j = 1; j < hp->choice_count; j++) {
          hp->min = fmin(hp->min, hp->numbers[j]);
          hp->max = fmax(hp->max, hp->numbers[j]);
        }
        rc = parse_log(ld, spec, hp);
      }
      if (rc == 0) rc = ordinal_positions(ld, hp);
      break;
    case QT_HP_TYPE_INTEGER:
    case QT_HP_TYPE_FLOAT:
      rc = parse_range(ld, key, spec, hp);
      if (rc == 0) rc = parse_log(ld, spec, hp);
      break;
    case QT_HP_TYPE_BOOLEAN:
      rc = allocate_choices(ld, hp, 2);
      if (rc == 0) {
        hp->choices[0] = dup_string("false");
        hp->choices[1] = dup_string("true");
        if (!hp->choices[0] || !hp->choices[1]) rc = out_of_memory(ld);
        hp->numbers[0] = 0.0;
        hp->numbers[1] = 1.0;
        hp->max = 1.0;
      }
      break;
  }
  if (rc < 0) return rc;
  if (hp->type == QT_HP_TYPE_CATEGORICAL) hp->max = (double)(hp->choice_count - 1);

  if ((rc = parse_default(ld, spec, hp)) < 0) return rc;
  qt_yaml_node description = qt_yaml_get(ld->doc, spec, "description");
  if (description) return read_string(ld, description, "a description", 1, &hp->description);
  hp->description = dup_string("");
  return hp->description ? 0 : out_of_memory(ld);
}

/* ------------------------------------------------------------------------- */
/* Loading: conditions (pass 2) and their order (pass 3)                      */
/* ------------------------------------------------------------------------- */

static int parse_condition_values(loader *ld, qt_space_t *space, qt__hp *hp, qt__condition *c,
                                  qt_yaml_node values) {
  const qt__hp *parent = &space->hps[c->parent];
  int single = qt_yaml_kind_of(ld->doc, values) == QT_YAML_KIND_SCALAR;
  if (!single && qt_yaml_kind_of(ld->doc, values) != QT_YAML_KIND_SEQUENCE) {
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, values,
                         "condition on \"%s\" must list values of \"%s\", e.g. [a, b]",
                         parent->name, parent->name);
  }
  size_t count = single ? 1 : qt_yaml_length(ld->doc, values);
  if (count == 0) {
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, values,
                         "condition on \"%s\" lists no values, so \"%s\" could never be active",
                         parent->name, hp->name);
  }
  c->values = calloc(count, sizeof *c->values);
  if (!c->values) return out_of_memory(ld);

  for (size_t v = 0; v < count; v++) {
    qt_yaml_node item = single ? values : qt_yaml_item(ld->doc, values, v);
    const char *text = qt_yaml_scalar(ld->doc, item);
    if (!text) {
      return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, item,
                           "a condition value must be a single value");
    }
    size_t index;
    if (qt__hp_match_text(parent, text, &index) < 0) {
      char list[512];
      qt__format_choices(parent, list, sizeof list);
      return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, item,
                           "\"%s\" is not a choice of \"%s\" %s", text, parent->name, list);
    }
    for (size_t e = 0; e < c->value_count; e++) {
      if (c->values[e] == index) {
        return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, item,
                             "value \"%s\" of \"%s\" is listed twice in the condition", text,
                             parent->name);
      }
    }
    c->values[c->value_count++] = index;
  }
  return 0;
}

static int parse_conditions(loader *ld, qt_space_t *space, size_t i, qt_yaml_node spec) {
  qt__hp *hp = &space->hps[i];
  qt_yaml_node node = qt_yaml_get(ld->doc, spec, "active_when");
  if (!node) return 0;
  if (qt_yaml_kind_of(ld->doc, node) != QT_YAML_KIND_MAPPING) {
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node,
                         "active_when of \"%s\" must be a mapping {parent: [values]}", hp->name);
  }
  size_t count = qt_yaml_length(ld->doc, node);
  if (count == 0) {
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node,
                         "active_when of \"%s\" names no parent; leave it out instead", hp->name);
  }
  int rc = qt_yaml_check_keys(ld->doc, node, NULL, ld->err);
  if (rc < 0) return rc;
  hp->conditions = calloc(count, sizeof *hp->conditions);
  if (!hp->conditions) return out_of_memory(ld);
  hp->condition_count = count;

  for (size_t k = 0; k < count; k++) {
    qt_yaml_node key = qt_yaml_pair_key(ld->doc, node, k);
    const char *name = qt_yaml_scalar(ld->doc, key);
    size_t parent;
    if (qt_space_find(space, name, &parent) < 0) {
      return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, key,
                           "condition of \"%s\" names unknown hyperparameter \"%s\"", hp->name,
                           name);
    }
    if (parent == i) {
      return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, key,
                           "hyperparameter \"%s\" cannot be conditioned on itself", hp->name);
    }
    qt_hp_type type = space->hps[parent].type;
    if (type != QT_HP_TYPE_CATEGORICAL && type != QT_HP_TYPE_ORDINAL &&
        type != QT_HP_TYPE_BOOLEAN) {
      return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, key,
                           "condition parent \"%s\" is a %s hyperparameter; only categorical, "
                           "ordinal and boolean ones can be parents",
                           name, qt_hp_type_name(type));
    }
    hp->conditions[k].parent = parent;
    rc = parse_condition_values(ld, space, hp, &hp->conditions[k],
                                qt_yaml_pair_value(ld->doc, node, k));
    if (rc < 0) return rc;
  }
  return 0;
}

/* Depth-first walk from hyperparameter i along "is conditioned on" edges.
 * state: 0 unvisited, 1 on the current path, 2 done. path holds the current
 * path (depth entries); finished hyperparameters are appended to order. */
static int visit(loader *ld, qt_space_t *space, const qt_yaml_node *specs, size_t i,
                 unsigned char *state, size_t *path, size_t depth, size_t *ordered) {
  state[i] = 1;
  path[depth] = i;
  const qt__hp *hp = &space->hps[i];
  for (size_t k = 0; k < hp->condition_count; k++) {
    size_t parent = hp->conditions[k].parent;
    if (state[parent] == 1) {
      /* The cycle is the path from parent to i, closed by i -> parent. */
      char cycle[512];
      size_t used = 0, start = depth;
      while (path[start] != parent) start--;
      cycle[0] = '\0';
      for (size_t d = start; d <= depth && used < sizeof cycle; d++) {
        used +=
            (size_t)snprintf(cycle + used, sizeof cycle - used, "%s -> ", space->hps[path[d]].name);
      }
      if (used < sizeof cycle) {
        snprintf(cycle + used, sizeof cycle - used, "%s", space->hps[parent].name);
      }
      qt_yaml_node active_when = qt_yaml_get(ld->doc, specs[i], "active_when");
      return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, qt_yaml_pair_key(ld->doc, active_when, k),
                           "conditions form a cycle: %s (read \"a -> b\" as \"a is active "
                           "when b ...\")",
                           cycle);
    }
    if (state[parent] == 0) {
      int rc = visit(ld, space, specs, parent, state, path, depth + 1, ordered);
      if (rc < 0) return rc;
    }
  }
  state[i] = 2;
  space->order[(*ordered)++] = i;
  return 0;
}

static int order_conditions(loader *ld, qt_space_t *space, const qt_yaml_node *specs) {
  unsigned char *state = calloc(space->count, 1);
  size_t *path = calloc(space->count, sizeof *path);
  space->order = calloc(space->count, sizeof *space->order);
  int rc = 0;
  if (!state || !path || !space->order) rc = out_of_memory(ld);
  size_t ordered = 0;
  for (size_t i = 0; rc == 0 && i < space->count; i++) {
    if (state[i] == 0) rc = visit(ld, space, specs, i, state, path, 0, &ordered);
  }
  free(state);
  free(path);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Loading: the whole document                                                */
/* ------------------------------------------------------------------------- */

static void layout_encoding(qt_space_t *space) {
  size_t column = 0;
  for (size_t i = 0; i < space->count; i++) {
    qt__hp *hp = &space->hps[i];
    hp->encoded_offset = column;
    hp->encoded_values = hp->type == QT_HP_TYPE_CATEGORICAL ? hp->choice_count : 1;
    hp->has_active_column = hp->condition_count > 0;
    column += hp->encoded_values + (size_t)hp->has_active_column;
  }
  space->encoded_dim = column;
}

static int parse_hyperparameters(loader *ld, qt_yaml_node key, qt_yaml_node node,
                                 qt_space_t *space) {
  if (qt_yaml_kind_of(ld->doc, node) != QT_YAML_KIND_MAPPING) {
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, node,
                         "hyperparameters must be a mapping from names to specifications");
  }
  size_t count = qt_yaml_length(ld->doc, node);
  if (count == 0) {
    return qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, key, "hyperparameters must not be empty");
  }
  int rc = qt_yaml_check_keys(ld->doc, node, NULL, ld->err);
  if (rc < 0) return rc;

  space->hps = calloc(count, sizeof *space->hps);
  qt_yaml_node *specs = calloc(count, sizeof *specs);
  if (!space->hps || !specs) {
    free(specs);
    return out_of_memory(ld);
  }
  space->count = count;

  for (size_t i = 0; rc == 0 && i < count; i++) {
    qt_yaml_node name = qt_yaml_pair_key(ld->doc, node, i);
    specs[i] = qt_yaml_pair_value(ld->doc, node, i);
    rc = read_string(ld, name, "a hyperparameter name", 0, &space->hps[i].name);
    if (rc < 0) break;
    if (!is_identifier(space->hps[i].name)) {
      rc = qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, name,
                         "hyperparameter name \"%s\" is not a name (letters, digits and _, not "
                         "starting with a digit)",
                         space->hps[i].name);
    } else if (strcmp(space->hps[i].name, space->fidelity_name) == 0) {
      rc = qt_yaml_error(ld->err, QT_ESCHEMA, ld->doc, name,
                         "\"%s\" is the fidelity; it cannot also be a hyperparameter",
                         space->hps[i].name);
    } else {
      rc = parse_hp(ld, name, specs[i], &space->hps[i]);
    }
  }
  for (size_t i = 0; rc == 0 && i < count; i++) rc = parse_conditions(ld, space, i, specs[i]);
  if (rc == 0) rc = order_conditions(ld, space, specs);
  if (rc == 0) layout_encoding(space);
  free(specs);
  return rc;
}

static int space_from_doc(const qt_yaml_doc_t *doc, const char *source, qt_space_t **out,
                          qt_err *err) {
  static const char *const keys[] = {"version",         "name", "description", "fidelity",
                                     "hyperparameters", NULL};
  loader ld = {doc, err};
  qt_yaml_node root = qt_yaml_root(doc);
  if (qt_yaml_kind_of(doc, root) != QT_YAML_KIND_MAPPING) {
    return qt_yaml_error(err, QT_ESCHEMA, doc, root,
                         "a search space must be a mapping with version, name, fidelity and "
                         "hyperparameters");
  }
  qt_yaml_node version = qt_yaml_get(doc, root, "version");
  if (!version) return missing_key(&ld, root, "version", " (this qtune reads version 1)");
  long number;
  int rc = qt_yaml_to_int(doc, version, &number, err);
  if (rc < 0) return rc;
  if (number != QT_SPACE_VERSION) {
    return qt_yaml_error(err, QT_EVERSION, doc, version,
                         "unsupported search-space version %ld (this qtune reads version %d)",
                         number, QT_SPACE_VERSION);
  }
  if ((rc = qt_yaml_check_keys(doc, root, keys, err)) < 0) return rc;

  qt_yaml_node name = qt_yaml_get(doc, root, "name");
  qt_yaml_node fidelity = qt_yaml_get(doc, root, "fidelity");
  qt_yaml_node hyperparameters = qt_yaml_get(doc, root, "hyperparameters");
  if (!name) return missing_key(&ld, root, "name", "");
  if (!fidelity)
    return missing_key(&ld, root, "fidelity", " (e.g. {name: epochs, min: 1, max: 50})");
  if (!hyperparameters) return missing_key(&ld, root, "hyperparameters", "");

  qt_space_t *space = calloc(1, sizeof *space);
  if (!space) return out_of_memory(&ld);
  space->source = dup_string(source);
  if (!space->source) rc = out_of_memory(&ld);
  if (rc == 0) rc = read_string(&ld, name, "the space's name", 0, &space->name);
  if (rc == 0) {
    qt_yaml_node description = qt_yaml_get(doc, root, "description");
    if (description) {
      rc = read_string(&ld, description, "the description", 1, &space->description);
    } else if (!(space->description = dup_string(""))) {
      rc = out_of_memory(&ld);
    }
  }
  /* The keys themselves are where "missing ..." errors inside point to. */
  qt_yaml_node fidelity_key = 0, hyperparameters_key = 0;
  for (size_t i = 0; i < qt_yaml_length(doc, root); i++) {
    const char *key = qt_yaml_scalar(doc, qt_yaml_pair_key(doc, root, i));
    if (strcmp(key, "fidelity") == 0) fidelity_key = qt_yaml_pair_key(doc, root, i);
    if (strcmp(key, "hyperparameters") == 0) hyperparameters_key = qt_yaml_pair_key(doc, root, i);
  }
  if (rc == 0) rc = parse_fidelity(&ld, fidelity_key, fidelity, space);
  if (rc == 0) rc = parse_hyperparameters(&ld, hyperparameters_key, hyperparameters, space);
  if (rc < 0) {
    qt_space_free(space);
    return rc;
  }
  *out = space;
  return 0;
}

int qt_space_load_string(const char *text, size_t length, const char *name, qt_space_t **out,
                         qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_space_load_string: out is NULL");
  *out = NULL;
  if (!name) name = "<string>";
  qt_yaml_doc_t *doc;
  int rc = qt_yaml_load_string(text, length, name, &doc, err);
  if (rc < 0) return rc;
  rc = space_from_doc(doc, name, out, err);
  qt_yaml_free(doc);
  return rc;
}

int qt_space_load_file(const char *path, qt_space_t **out, qt_err *err) {
  if (!out || !path) return qt_err_set(err, QT_EINVAL, "qt_space_load_file: NULL argument");
  *out = NULL;
  qt_yaml_doc_t *doc;
  int rc = qt_yaml_load_file(path, &doc, err);
  if (rc < 0) return rc;
  rc = space_from_doc(doc, path, out, err);
  qt_yaml_free(doc);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Accessors                                                                  */
/* ------------------------------------------------------------------------- */

const char *qt_space_name(const qt_space_t *space) {
  return space->name;
}
const char *qt_space_description(const qt_space_t *space) {
  return space->description;
}
const char *qt_space_source(const qt_space_t *space) {
  return space->source;
}
size_t qt_space_count(const qt_space_t *space) {
  return space->count;
}

void qt_space_fidelity(const qt_space_t *space, const char **name, long *min, long *max) {
  if (name) *name = space->fidelity_name;
  if (min) *min = space->fidelity_min;
  if (max) *max = space->fidelity_max;
}

int qt_space_find(const qt_space_t *space, const char *name, size_t *index) {
  if (!space || !name) return QT_ENOENT;
  for (size_t i = 0; i < space->count; i++) {
    if (space->hps[i].name && strcmp(space->hps[i].name, name) == 0) {
      if (index) *index = i;
      return 0;
    }
  }
  return QT_ENOENT;
}

static const qt__hp *hp_at(const qt_space_t *space, size_t hp) {
  QT_ASSERT(space && hp < space->count);
  return &space->hps[hp];
}

const char *qt_space_hp_name(const qt_space_t *space, size_t hp) {
  return hp_at(space, hp)->name;
}

const char *qt_space_hp_description(const qt_space_t *space, size_t hp) {
  return hp_at(space, hp)->description;
}

qt_hp_type qt_space_hp_type(const qt_space_t *space, size_t hp) {
  return hp_at(space, hp)->type;
}
int qt_space_hp_log(const qt_space_t *space, size_t hp) {
  return hp_at(space, hp)->log;
}

size_t qt_space_hp_choice_count(const qt_space_t *space, size_t hp) {
  return hp_at(space, hp)->choice_count;
}

const char *qt_space_hp_choice(const qt_space_t *space, size_t hp, size_t choice) {
  const qt__hp *h = hp_at(space, hp);
  QT_ASSERT(choice < h->choice_count);
  return h->choices[choice];
}

double qt_space_hp_choice_number(const qt_space_t *space, size_t hp, size_t choice) {
  const qt__hp *h = hp_at(space, hp);
  QT_ASSERT(choice < h->choice_count);
  return h->numbers[choice];
}

void qt_space_hp_range(const qt_space_t *space, size_t hp, double *min, double *max) {
  const qt__hp *h = hp_at(space, hp);
  if (min) *min = h->min;
  if (max) *max = h->max;
}

int qt_space_hp_default(const qt_space_t *space, size_t hp, double *value) {
  const qt__hp *h = hp_at(space, hp);
  if (h->has_default && value) *value = h->default_value;
  return h->has_default;
}

size_t qt_space_hp_condition_count(const qt_space_t *space, size_t hp) {
  return hp_at(space, hp)->condition_count;
}

void qt_space_hp_condition(const qt_space_t *space, size_t hp, size_t k, qt_space_condition *out) {
  const qt__hp *h = hp_at(space, hp);
  QT_ASSERT(k < h->condition_count && out);
  out->parent = h->conditions[k].parent;
  out->value_count = h->conditions[k].value_count;
  out->values = h->conditions[k].values;
}

/*
 * qt_config.c - configurations of a search space: setting and reading values,
 * conditions, validation, equality, hashing and the default configuration.
 *
 * A slot holds a choice index for categorical, ordinal and boolean
 * hyperparameters and the value itself for integer and float ones (see
 * qt_config_slot in qt_metadata.h), so that every check here is a comparison
 * of numbers.
 */
#include "metadata/qt_space_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------- */
/* Lifetime                                                                   */
/* ------------------------------------------------------------------------- */

int qt_config_init(qt_config *config, const qt_space_t *space, qt_err *err) {
  if (!config || !space) return qt_err_set(err, QT_EINVAL, "qt_config_init: NULL argument");
  memset(config, 0, sizeof *config);
  config->slots = calloc(space->count, sizeof *config->slots);
  if (!config->slots) return qt_err_set(err, QT_ENOMEM, "qt_config_init: out of memory");
  config->space = space;
  config->count = space->count;
  return 0;
}

void qt_config_free(qt_config *config) {
  if (!config) return;
  free(config->slots);
  memset(config, 0, sizeof *config);
}

int qt__config_check(const qt_space_t *space, const qt_config *config, const char *who,
                     qt_err *err) {
  if (!space || !config || !config->slots) {
    return qt_err_set(err, QT_EINVAL, "%s: NULL or uninitialized argument", who);
  }
  if (config->space != space || config->count != space->count) {
    return qt_err_set(err, QT_EINVAL,
                      "%s: the configuration belongs to another search space (initialize it "
                      "with qt_config_init for \"%s\")",
                      who, space->name);
  }
  return 0;
}

int qt_config_copy(qt_config *dst, const qt_config *src, qt_err *err) {
  if (!src || !src->space)
    return qt_err_set(err, QT_EINVAL, "qt_config_copy: src is not initialized");
  int rc = qt__config_check(src->space, dst, "qt_config_copy", err);
  if (rc < 0) return rc;
  if (dst != src) memcpy(dst->slots, src->slots, src->count * sizeof *src->slots);
  return 0;
}

void qt_config_clear(qt_config *config) {
  for (size_t i = 0; i < config->count; i++) {
    config->slots[i].active = 0;
    config->slots[i].value = 0.0;
  }
}

/* ------------------------------------------------------------------------- */
/* Setting values                                                             */
/* ------------------------------------------------------------------------- */

static const qt__hp *config_hp(const qt_config *config, size_t hp) {
  QT_ASSERT(config && config->space && hp < config->count);
  return &config->space->hps[hp];
}

static int set_slot(qt_config *config, size_t hp, double value) {
  config->slots[hp].active = 1;
  config->slots[hp].value = value;
  return 0;
}

static int not_a_choice(const qt__hp *h, const char *text, qt_err *err) {
  char list[512];
  qt__format_choices(h, list, sizeof list);
  return qt_err_set(err, QT_ERANGE, "\"%s\" is not one of the choices of \"%s\" %s", text, h->name,
                    list);
}

static int out_of_range(const qt__hp *h, const char *text, qt_err *err) {
  char lo[64], hi[64];
  qt__format_double(h->min, lo, sizeof lo);
  qt__format_double(h->max, hi, sizeof hi);
  return qt_err_set(err, QT_ERANGE, "value %s of \"%s\" is outside the range [%s, %s]", text,
                    h->name, lo, hi);
}

/* Sets an integer or float hyperparameter from a number. text is the
 * caller's spelling, for messages. */
static int set_numeric(qt_config *config, size_t hp, double value, const char *text, qt_err *err) {
  const qt__hp *h = config_hp(config, hp);
  if (!isfinite(value)) {
    return qt_err_set(err, QT_EINVAL, "value %s of \"%s\" is not a finite number", text, h->name);
  }
  if (h->type == QT_HP_TYPE_INTEGER) {
    /* Tables often store whole numbers as "32.0" or with rounding noise. */
    double whole = round(value);
    if (fabs(value - whole) > 1e-9 * fmax(1.0, fabs(value))) {
      return qt_err_set(err, QT_EINVAL, "value %s of integer \"%s\" is not a whole number", text,
                        h->name);
    }
    value = whole;
  }
  if (value < h->min || value > h->max) return out_of_range(h, text, err);
  return set_slot(config, hp, value);
}

int qt_config_set_string(qt_config *config, const char *name, const char *text, qt_err *err) {
  if (!config || !config->space || !name || !text) {
    return qt_err_set(err, QT_EINVAL, "qt_config_set_string: NULL argument");
  }
  size_t hp;
  if (qt_space_find(config->space, name, &hp) < 0) {
    return qt_err_set(err, QT_ENOENT, "search space \"%s\" has no hyperparameter \"%s\"",
                      config->space->name, name);
  }
  const qt__hp *h = config_hp(config, hp);
  if (h->type == QT_HP_TYPE_INTEGER || h->type == QT_HP_TYPE_FLOAT) {
    double value;
    if (qt_parse_double(text, &value) < 0) {
      return qt_err_set(err, QT_EINVAL, "\"%s\" is not a number (hyperparameter \"%s\" is %s)",
                        text, h->name, qt_hp_type_name(h->type));
    }
    return set_numeric(config, hp, value, text, err);
  }
  size_t index;
  int rc = qt__hp_match_text(h, text, &index);
  if (rc == QT_EINVAL) {
    return qt_err_set(err, QT_EINVAL, "\"%s\" is not a %s value (hyperparameter \"%s\")", text,
                      h->type == QT_HP_TYPE_BOOLEAN ? "boolean" : "numeric", h->name);
  }
  if (rc < 0) return not_a_choice(h, text, err);
  return set_slot(config, hp, (double)index);
}

int qt_config_set_index(qt_config *config, size_t hp, size_t choice, qt_err *err) {
  const qt__hp *h = config_hp(config, hp);
  if (h->choice_count == 0) {
    return qt_err_set(err, QT_EINVAL, "\"%s\" is %s; it has no choices", h->name,
                      qt_hp_type_name(h->type));
  }
  if (choice >= h->choice_count) {
    return qt_err_set(err, QT_ERANGE, "choice %zu of \"%s\" is out of range (it has %zu)", choice,
                      h->name, h->choice_count);
  }
  return set_slot(config, hp, (double)choice);
}

int qt_config_set_number(qt_config *config, size_t hp, double value, qt_err *err) {
  const qt__hp *h = config_hp(config, hp);
  char text[64];
  qt__format_double(value, text, sizeof text);
  if (h->type == QT_HP_TYPE_INTEGER || h->type == QT_HP_TYPE_FLOAT) {
    return set_numeric(config, hp, value, text, err);
  }
  size_t index;
  int rc = qt__hp_match_number(h, value, &index);
  if (rc < 0) return not_a_choice(h, text, err);
  return set_slot(config, hp, (double)index);
}

void qt_config_unset(qt_config *config, size_t hp) {
  config_hp(config, hp);
  config->slots[hp].active = 0;
  config->slots[hp].value = 0.0;
}

/* ------------------------------------------------------------------------- */
/* Reading values                                                             */
/* ------------------------------------------------------------------------- */

int qt_config_is_active(const qt_config *config, size_t hp) {
  config_hp(config, hp);
  return config->slots[hp].active;
}

long qt_config_index(const qt_config *config, size_t hp) {
  const qt__hp *h = config_hp(config, hp);
  const qt_config_slot *slot = &config->slots[hp];
  if (!slot->active || h->choice_count == 0 || !qt__hp_value_ok(h, slot->value)) return -1;
  return (long)slot->value;
}

double qt_config_number(const qt_config *config, size_t hp) {
  const qt__hp *h = config_hp(config, hp);
  const qt_config_slot *slot = &config->slots[hp];
  if (!slot->active || !qt__hp_value_ok(h, slot->value)) return NAN;
  if (h->choice_count == 0) return slot->value;
  return h->numbers[(size_t)slot->value];
}

int qt_config_get_string(const qt_config *config, size_t hp, char *buf, size_t size) {
  const qt__hp *h = config_hp(config, hp);
  const qt_config_slot *slot = &config->slots[hp];
  if (!buf || size == 0) return QT_ERANGE;
  buf[0] = '\0';
  if (!slot->active) return 0;
  if (!qt__hp_value_ok(h, slot->value)) {
    snprintf(buf, size, "?");
    return QT_EINVAL;
  }
  char number[64];
  const char *text = number;
  if (h->choice_count > 0) {
    text = h->choices[(size_t)slot->value];
  } else if (h->type == QT_HP_TYPE_INTEGER) {
    snprintf(number, sizeof number, "%.0f", slot->value);
  } else {
    qt__format_double(slot->value, number, sizeof number);
  }
  int n = snprintf(buf, size, "%s", text);
  return (n < 0 || (size_t)n >= size) ? QT_ERANGE : 0;
}

int qt_config_format(const qt_config *config, char *buf, size_t size) {
  if (!buf || size == 0) return QT_ERANGE;
  buf[0] = '\0';
  size_t used = 0;
  int status = 0;
  for (size_t i = 0; i < config->count; i++) {
    if (!config->slots[i].active) continue;
    char value[256];
    int rc = qt_config_get_string(config, i, value, sizeof value);
    if (rc == QT_EINVAL) status = rc;
    int n = snprintf(buf + used, size - used, "%s%s=%s", used ? " " : "",
                     config->space->hps[i].name, value);
    if (n < 0 || (size_t)n >= size - used) return QT_ERANGE;
    used += (size_t)n;
  }
  return status;
}

/* ------------------------------------------------------------------------- */
/* Conditions and validation                                                  */
/* ------------------------------------------------------------------------- */

/* 1 when condition c holds in config. */
static int condition_holds(const qt_config *config, const qt__condition *c) {
  const qt_config_slot *parent = &config->slots[c->parent];
  if (!parent->active) return 0;
  for (size_t v = 0; v < c->value_count; v++) {
    if (parent->value == (double)c->values[v]) return 1;
  }
  return 0;
}

int qt_config_conditions_hold(const qt_config *config, size_t hp) {
  const qt__hp *h = config_hp(config, hp);
  for (size_t k = 0; k < h->condition_count; k++) {
    if (!condition_holds(config, &h->conditions[k])) return 0;
  }
  return 1;
}

void qt_config_prune(qt_config *config) {
  const qt_space_t *space = config->space;
  for (size_t o = 0; o < space->count; o++) {
    size_t i = space->order[o];
    if (config->slots[i].active && !qt_config_conditions_hold(config, i)) {
      qt_config_unset(config, i);
    }
  }
}

/* Describes why the first failing condition of h fails, e.g.
 * "opt=adam, not one of [momentum]" or "opt is inactive". */
static void describe_failure(const qt_config *config, const qt__hp *h, char *buf, size_t size) {
  for (size_t k = 0; k < h->condition_count; k++) {
    const qt__condition *c = &h->conditions[k];
    if (condition_holds(config, c)) continue;
    const qt__hp *parent = &config->space->hps[c->parent];
    if (!config->slots[c->parent].active) {
      snprintf(buf, size, "its parent \"%s\" is inactive", parent->name);
      return;
    }
    char value[256], wanted[512];
    size_t used = 0;
    qt_config_get_string(config, c->parent, value, sizeof value);
    wanted[0] = '\0';
    for (size_t v = 0; v < c->value_count && used < sizeof wanted; v++) {
      used += (size_t)snprintf(wanted + used, sizeof wanted - used, "%s%s", v ? ", " : "",
                               parent->choices[c->values[v]]);
    }
    snprintf(buf, size, "%s=%s, not one of [%s]", parent->name, value, wanted);
    return;
  }
  snprintf(buf, size, "its conditions hold");
}

int qt_config_validate(const qt_config *config, qt_err *err) {
  if (!config || !config->space || !config->slots) {
    return qt_err_set(err, QT_EINVAL, "qt_config_validate: configuration is not initialized");
  }
  const qt_space_t *space = config->space;
  /* Parents first, so that a child is judged against parents already known
   * to be right. */
  for (size_t o = 0; o < space->count; o++) {
    size_t i = space->order[o];
    const qt__hp *h = &space->hps[i];
    const qt_config_slot *slot = &config->slots[i];
    int hold = qt_config_conditions_hold(config, i);
    if (slot->active && !qt__hp_value_ok(h, slot->value)) {
      char text[64];
      qt__format_double(slot->value, text, sizeof text);
      if (h->choice_count > 0) {
        return qt_err_set(err, QT_ERANGE, "\"%s\" holds %s, which is not a choice index (0..%zu)",
                          h->name, text, h->choice_count - 1);
      }
      if (h->type == QT_HP_TYPE_INTEGER && isfinite(slot->value) &&
          slot->value != floor(slot->value)) {
        return qt_err_set(err, QT_ERANGE, "integer \"%s\" holds %s, which is not a whole number",
                          h->name, text);
      }
      return out_of_range(h, text, err);
    }
    if (slot->active && !hold) {
      char why[768];
      describe_failure(config, h, why, sizeof why);
      return qt_err_set(err, QT_ESCHEMA, "\"%s\" has a value but is inactive: %s", h->name, why);
    }
    if (!slot->active && hold) {
      return qt_err_set(err, QT_ESCHEMA, "\"%s\" is active%s but has no value", h->name,
                        h->condition_count ? " (its conditions hold)" : "");
    }
  }
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Equality and hashing                                                       */
/* ------------------------------------------------------------------------- */

int qt_config_equal(const qt_config *a, const qt_config *b) {
  if (!a || !b || a->space != b->space || a->count != b->count) return 0;
  for (size_t i = 0; i < a->count; i++) {
    const qt_config_slot *x = &a->slots[i], *y = &b->slots[i];
    if (x->active != y->active) return 0;
    if (!x->active) continue;
    if (a->space->hps[i].type == QT_HP_TYPE_FLOAT) {
      if (!qt__close(x->value, y->value, 1e-9)) return 0;
    } else if (x->value != y->value) {
      return 0;
    }
  }
  return 1;
}

uint64_t qt_config_hash(const qt_config *config) {
  /* FNV-1a over (active, value) words; float values are left out so that
   * configurations equal within tolerance hash alike. */
  uint64_t h = UINT64_C(14695981039346656037);
  for (size_t i = 0; i < config->count; i++) {
    const qt_config_slot *slot = &config->slots[i];
    uint64_t word = (uint64_t)slot->active;
    if (slot->active && config->space->hps[i].type != QT_HP_TYPE_FLOAT) {
      word ^= (uint64_t)(int64_t)slot->value << 1;
    }
    for (int byte = 0; byte < 8; byte++) {
      h ^= (word >> (8 * byte)) & 0xFF;
      h *= UINT64_C(1099511628211);
    }
  }
  return h;
}

/* ------------------------------------------------------------------------- */
/* The default configuration                                                  */
/* ------------------------------------------------------------------------- */

int qt_space_default_config(const qt_space_t *space, qt_config *config, qt_err *err) {
  int rc = qt__config_check(space, config, "qt_space_default_config", err);
  if (rc < 0) return rc;
  for (size_t i = 0; i < space->count; i++) {
    const qt__hp *h = &space->hps[i];
    double value = 0.0; /* the first choice; false */
    if (h->has_default) {
      value = h->default_value;
    } else if (h->type == QT_HP_TYPE_INTEGER || h->type == QT_HP_TYPE_FLOAT) {
      value = h->log ? exp(0.5 * (log(h->min) + log(h->max))) : 0.5 * (h->min + h->max);
      if (h->type == QT_HP_TYPE_INTEGER) value = fmin(h->max, fmax(h->min, round(value)));
    }
    set_slot(config, i, value);
  }
  qt_config_prune(config);
  return 0;
}

/*
 * qt_space_choices.c - qt_space_with_choices: a deep copy of a search space
 * in which one categorical hyperparameter takes a new list of choices (a
 * search over a hub puts the hub's model names into the placeholder
 * "model").
 *
 * The copy is built field by field with the allocations qt_space_free
 * expects. Conditions of other hyperparameters on the replaced one are
 * mapped by choice spelling: a listed parent value that is not among the
 * new choices is dropped. When none is left, the dependent hyperparameter
 * can never be active (its condition lists no value); it keeps its encoding
 * columns, which then always read as inactive.
 */
#include "metadata/qt_space_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *dup_text(const char *text) {
  if (!text) return NULL;
  size_t n = strlen(text) + 1;
  char *copy = malloc(n);
  if (copy) memcpy(copy, text, n);
  return copy;
}

static int copy_doubles(double **dst, const double *src, size_t n) {
  *dst = NULL;
  if (!src || n == 0) return 0;
  *dst = malloc(n * sizeof **dst);
  if (!*dst) return QT_ENOMEM;
  memcpy(*dst, src, n * sizeof **dst);
  return 0;
}

/* Copies hp (all but its choices when skip_choices) into dst, zeroed. */
static int copy_hp(qt__hp *dst, const qt__hp *src, int skip_choices) {
  *dst = *src;
  dst->name = NULL;
  dst->description = NULL;
  dst->choices = NULL;
  dst->numbers = NULL;
  dst->positions = NULL;
  dst->conditions = NULL;
  dst->choice_count = 0;
  dst->condition_count = 0;
  dst->name = dup_text(src->name);
  dst->description = dup_text(src->description);
  if (!dst->name || !dst->description) return QT_ENOMEM;
  if (!skip_choices && src->choice_count > 0) {
    dst->choices = calloc(src->choice_count, sizeof *dst->choices);
    if (!dst->choices) return QT_ENOMEM;
    dst->choice_count = src->choice_count;
    for (size_t j = 0; j < src->choice_count; j++) {
      dst->choices[j] = dup_text(src->choices[j]);
      if (!dst->choices[j]) return QT_ENOMEM;
    }
    if (copy_doubles(&dst->numbers, src->numbers, src->choice_count) < 0) return QT_ENOMEM;
    if (copy_doubles(&dst->positions, src->positions, src->choice_count) < 0) return QT_ENOMEM;
  }
  if (src->condition_count > 0) {
    dst->conditions = calloc(src->condition_count, sizeof *dst->conditions);
    if (!dst->conditions) return QT_ENOMEM;
    dst->condition_count = src->condition_count;
    for (size_t k = 0; k < src->condition_count; k++) {
      const qt__condition *c = &src->conditions[k];
      dst->conditions[k].parent = c->parent;
      dst->conditions[k].value_count = c->value_count;
      dst->conditions[k].values = malloc((c->value_count ? c->value_count : 1) * sizeof(size_t));
      if (!dst->conditions[k].values) return QT_ENOMEM;
      if (c->value_count) memcpy(dst->conditions[k].values, c->values, c->value_count * sizeof(size_t));
    }
  }
  return 0;
}

int qt_space_with_choices(const qt_space_t *space, const char *name, const char *const *choices,
                          size_t n, qt_space_t **out, qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_space_with_choices: out is NULL");
  *out = NULL;
  if (!space || !name || (n > 0 && !choices))
    return qt_err_set(err, QT_EINVAL, "qt_space_with_choices: NULL argument");
  size_t target;
  if (qt_space_find(space, name, &target) != 0)
    return qt_err_set(err, QT_ENOENT, "search space %s has no hyperparameter '%s'",
                      qt_space_source(space), name);
  const qt__hp *old = &space->hps[target];
  if (old->type != QT_HP_TYPE_CATEGORICAL)
    return qt_err_set(err, QT_EINVAL, "hyperparameter '%s' of %s is %s, not categorical", name,
                      qt_space_source(space), qt_hp_type_name(old->type));
  if (n == 0) return qt_err_set(err, QT_EINVAL, "no choices for '%s'", name);
  for (size_t j = 0; j < n; j++) {
    if (!choices[j] || !choices[j][0])
      return qt_err_set(err, QT_EINVAL, "choice %zu of '%s' is empty", j + 1, name);
    for (size_t e = 0; e < j; e++)
      if (strcmp(choices[e], choices[j]) == 0)
        return qt_err_set(err, QT_EINVAL, "choice '%s' of '%s' is repeated", choices[j], name);
  }

  qt_space_t *copy = calloc(1, sizeof *copy);
  if (!copy) return qt_err_set(err, QT_ENOMEM, "out of memory copying a search space");
  int rc = 0;
  copy->name = dup_text(space->name);
  copy->description = dup_text(space->description);
  copy->fidelity_name = dup_text(space->fidelity_name);
  size_t source_len = strlen(space->source) + strlen(name) + 2;
  copy->source = malloc(source_len);
  if (copy->source) snprintf(copy->source, source_len, "%s+%s", space->source, name);
  copy->fidelity_min = space->fidelity_min;
  copy->fidelity_max = space->fidelity_max;
  copy->hps = calloc(space->count, sizeof *copy->hps);
  copy->order = malloc(space->count * sizeof *copy->order);
  if (!copy->name || !copy->description || !copy->fidelity_name || !copy->source || !copy->hps ||
      !copy->order) {
    rc = QT_ENOMEM;
    goto done;
  }
  copy->count = space->count;
  memcpy(copy->order, space->order, space->count * sizeof *copy->order);
  for (size_t i = 0; i < space->count && rc == 0; i++)
    rc = copy_hp(&copy->hps[i], &space->hps[i], i == target);
  if (rc < 0) goto done;

  /* The new choices: strings, numbers as the loader reads them. */
  qt__hp *hp = &copy->hps[target];
  hp->choices = calloc(n, sizeof *hp->choices);
  hp->numbers = malloc(n * sizeof *hp->numbers);
  if (!hp->choices || !hp->numbers) {
    rc = QT_ENOMEM;
    goto done;
  }
  hp->choice_count = n;
  for (size_t j = 0; j < n; j++) {
    hp->choices[j] = dup_text(choices[j]);
    if (!hp->choices[j]) {
      rc = QT_ENOMEM;
      goto done;
    }
    if (qt_parse_double(choices[j], &hp->numbers[j]) < 0) hp->numbers[j] = NAN;
  }
  hp->min = 0.0;
  hp->max = (double)(n - 1);
  /* The default stays when it is a new choice, else the first. */
  if (old->has_default) {
    const char *was = old->choices[(size_t)old->default_value];
    hp->default_value = 0.0;
    for (size_t j = 0; j < n; j++)
      if (strcmp(choices[j], was) == 0) hp->default_value = (double)j;
  }

  /* Conditions on the replaced hyperparameter, mapped by spelling. */
  for (size_t i = 0; i < copy->count; i++) {
    qt__hp *child = &copy->hps[i];
    for (size_t k = 0; k < child->condition_count; k++) {
      qt__condition *c = &child->conditions[k];
      if (c->parent != target) continue;
      size_t kept = 0;
      for (size_t v = 0; v < c->value_count; v++) {
        const char *spelling = old->choices[c->values[v]];
        for (size_t j = 0; j < n; j++) {
          if (strcmp(choices[j], spelling) == 0) c->values[kept++] = j;
        }
      }
      c->value_count = kept;
    }
  }

  /* The encoding of a space written with these choices. */
  size_t column = 0;
  for (size_t i = 0; i < copy->count; i++) {
    qt__hp *h = &copy->hps[i];
    h->encoded_offset = column;
    h->encoded_values = h->type == QT_HP_TYPE_CATEGORICAL ? h->choice_count : 1;
    h->has_active_column = h->condition_count > 0;
    column += h->encoded_values + (size_t)h->has_active_column;
  }
  copy->encoded_dim = column;

done:
  if (rc < 0) {
    qt_space_free(copy);
    return qt_err_set(err, rc, "out of memory copying search space %s", qt_space_source(space));
  }
  *out = copy;
  return 0;
}

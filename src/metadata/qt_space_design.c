/*
 * qt_space_design.c - drawing configurations (uniform sampling, the Sobol
 * initial design) and the numeric encoding used by the surrogates.
 *
 * Sampling and the initial design share one map from a coordinate u in
 * [0, 1) to a hyperparameter's domain (unit_to_value), so that a Sobol point
 * and a uniform draw mean the same thing. The encoding's layout is computed
 * once at load time (qt_space.c) and documented in qt_metadata.h.
 */
#include "metadata/qt_space_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <gsl/gsl_qrng.h>

/* The largest dimension of GSL's reverse-Halton generator (its table of
 * primes). */
#define QT__HALTON_MAX_DIM 1229

/* ------------------------------------------------------------------------- */
/* From [0, 1) to a hyperparameter's domain                                   */
/* ------------------------------------------------------------------------- */

/* Maps u in [0, 1) to a slot value of h: choice floor(u k); integers
 * uniformly over {min..max}, or log-uniformly over [min, max + 1) and rounded
 * down; floats uniformly on the declared scale. Results are clamped, so
 * rounding at the ends never leaves the domain. */
static double unit_to_value(const qt__hp *h, double u) {
  double x;
  switch (h->type) {
    case QT_HP_TYPE_CATEGORICAL:
    case QT_HP_TYPE_ORDINAL:
    case QT_HP_TYPE_BOOLEAN:
      x = floor(u * (double)h->choice_count);
      return fmin(fmax(x, 0.0), (double)(h->choice_count - 1));
    case QT_HP_TYPE_INTEGER:
      if (h->log) {
        x = floor(exp(log(h->min) + u * (log(h->max + 1.0) - log(h->min))));
      } else {
        x = h->min + floor(u * (h->max - h->min + 1.0));
      }
      return fmin(fmax(x, h->min), h->max);
    case QT_HP_TYPE_FLOAT:
      if (h->log) {
        x = exp(log(h->min) + u * (log(h->max) - log(h->min)));
      } else {
        x = h->min + u * (h->max - h->min);
      }
      return fmin(fmax(x, h->min), h->max);
  }
  return 0.0;
}

/* ------------------------------------------------------------------------- */
/* Uniform sampling                                                           */
/* ------------------------------------------------------------------------- */

int qt_space_sample(const qt_space_t *space, qt_rng_t *rng, qt_config *config, qt_err *err) {
  int rc = qt__config_check(space, config, "qt_space_sample", err);
  if (rc < 0) return rc;
  if (!rng) return qt_err_set(err, QT_EINVAL, "qt_space_sample: rng is NULL");
  for (size_t i = 0; i < space->count; i++) {
    config->slots[i].active = 1;
    config->slots[i].value = unit_to_value(&space->hps[i], qt_rng_uniform(rng));
  }
  qt_config_prune(config);
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Initial design                                                             */
/* ------------------------------------------------------------------------- */

int qt_space_sobol(const qt_space_t *space, size_t n, size_t skip, qt_config *configs,
                   qt_err *err) {
  if (!space || (n > 0 && !configs))
    return qt_err_set(err, QT_EINVAL, "qt_space_sobol: NULL argument");
  for (size_t c = 0; c < n; c++) {
    int rc = qt__config_check(space, &configs[c], "qt_space_sobol", err);
    if (rc < 0) return rc;
  }
  size_t dim = space->count;
  if (dim > QT__HALTON_MAX_DIM) {
    return qt_err_set(err, QT_ERANGE,
                      "qt_space_sobol: %zu hyperparameters is more than the %d dimensions of "
                      "GSL's quasi-random generators",
                      dim, QT__HALTON_MAX_DIM);
  }
  const gsl_qrng_type *type =
      dim <= QT_SPACE_SOBOL_MAX_DIM ? gsl_qrng_sobol : gsl_qrng_reversehalton;
  gsl_qrng *q = gsl_qrng_alloc(type, (unsigned)dim);
  double *point = malloc(dim * sizeof *point); /* (dim) one quasi-random point */
  if (!q || !point) {
    if (q) gsl_qrng_free(q);
    free(point);
    return qt_err_set(err, QT_ENOMEM, "qt_space_sobol: out of memory");
  }

  int rc = 0;
  for (size_t s = 0; s < skip + n && rc == 0; s++) {
    /* GSL's Sobol generator stops after 2^30 points and says so. */
    if (gsl_qrng_get(q, point) != 0) {
      rc = qt_err_set(err, QT_ERANGE, "qt_space_sobol: the %s sequence has no point %zu",
                      gsl_qrng_name(q), s);
      break;
    }
    if (s < skip) continue;
    qt_config *config = &configs[s - skip];
    for (size_t i = 0; i < dim; i++) {
      config->slots[i].active = 1;
      config->slots[i].value = unit_to_value(&space->hps[i], point[i]);
    }
    qt_config_prune(config);
  }
  gsl_qrng_free(q);
  free(point);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Encoding                                                                   */
/* ------------------------------------------------------------------------- */

size_t qt_space_encoded_dim(const qt_space_t *space) {
  return space->encoded_dim;
}

size_t qt_space_encoded_offset(const qt_space_t *space, size_t hp, size_t *width) {
  QT_ASSERT(space && hp < space->count);
  const qt__hp *h = &space->hps[hp];
  if (width) *width = h->encoded_values + (size_t)h->has_active_column;
  return h->encoded_offset;
}

int qt_space_encoded_name(const qt_space_t *space, size_t column, char *buf, size_t size) {
  if (!space || !buf || size == 0 || column >= space->encoded_dim) return QT_ERANGE;
  buf[0] = '\0';
  for (size_t i = 0; i < space->count; i++) {
    const qt__hp *h = &space->hps[i];
    size_t width = h->encoded_values + (size_t)h->has_active_column;
    if (column >= h->encoded_offset + width) continue;
    size_t k = column - h->encoded_offset;
    int n;
    if (k == h->encoded_values) {
      n = snprintf(buf, size, "%s:active", h->name);
    } else if (h->type == QT_HP_TYPE_CATEGORICAL) {
      n = snprintf(buf, size, "%s=%s", h->name, h->choices[k]);
    } else {
      n = snprintf(buf, size, "%s", h->name);
    }
    return (n < 0 || (size_t)n >= size) ? QT_ERANGE : 0;
  }
  return QT_ERANGE;
}

/* The position in [0, 1] of an integer or float value on h's scale. */
static double scale_to_unit(const qt__hp *h, double x) {
  double t = h->log ? (log(x) - log(h->min)) / (log(h->max) - log(h->min))
                    : (x - h->min) / (h->max - h->min);
  return fmin(fmax(t, 0.0), 1.0);
}

/* The inverse of scale_to_unit. */
static double unit_to_scale(const qt__hp *h, double t) {
  double x =
      h->log ? exp(log(h->min) + t * (log(h->max) - log(h->min))) : h->min + t * (h->max - h->min);
  return fmin(fmax(x, h->min), h->max);
}

int qt_space_encode(const qt_space_t *space, const qt_config *config, double *vec, qt_err *err) {
  int rc = qt__config_check(space, config, "qt_space_encode", err);
  if (rc < 0) return rc;
  if (!vec) return qt_err_set(err, QT_EINVAL, "qt_space_encode: vec is NULL");
  for (size_t i = 0; i < space->count; i++) {
    const qt__hp *h = &space->hps[i];
    const qt_config_slot *slot = &config->slots[i];
    double *block = vec + h->encoded_offset;
    if (slot->active && !qt__hp_value_ok(h, slot->value)) {
      char text[64];
      qt__format_double(slot->value, text, sizeof text);
      return qt_err_set(err, QT_EINVAL, "qt_space_encode: \"%s\" holds the impossible value %s",
                        h->name, text);
    }
    if (h->type == QT_HP_TYPE_CATEGORICAL) {
      for (size_t j = 0; j < h->choice_count; j++) block[j] = 0.0;
      if (slot->active) block[(size_t)slot->value] = 1.0;
    } else if (!slot->active) {
      block[0] = QT_SPACE_INACTIVE_VALUE;
    } else if (h->type == QT_HP_TYPE_BOOLEAN) {
      block[0] = slot->value;
    } else if (h->type == QT_HP_TYPE_ORDINAL) {
      block[0] = h->positions[(size_t)slot->value];
    } else {
      block[0] = scale_to_unit(h, slot->value);
    }
    if (h->has_active_column) block[h->encoded_values] = slot->active ? 1.0 : 0.0;
  }
  return 0;
}

/* A column value clamped to [0, 1], NaN read as 0. */
static double unit_column(double v) {
  if (isnan(v)) return 0.0;
  return fmin(fmax(v, 0.0), 1.0);
}

int qt_space_decode(const qt_space_t *space, const double *vec, qt_config *config, qt_err *err) {
  int rc = qt__config_check(space, config, "qt_space_decode", err);
  if (rc < 0) return rc;
  if (!vec) return qt_err_set(err, QT_EINVAL, "qt_space_decode: vec is NULL");
  for (size_t i = 0; i < space->count; i++) {
    const qt__hp *h = &space->hps[i];
    const double *block = vec + h->encoded_offset;
    double value = 0.0;
    if (h->type == QT_HP_TYPE_CATEGORICAL) {
      size_t best = 0;
      /* NaN never wins: comparisons with it are false. */
      for (size_t j = 1; j < h->choice_count; j++) {
        if (block[j] > block[best] || (isnan(block[best]) && !isnan(block[j]))) best = j;
      }
      value = (double)best;
    } else {
      double t = unit_column(block[0]);
      if (h->type == QT_HP_TYPE_BOOLEAN) {
        value = t >= 0.5 ? 1.0 : 0.0;
      } else if (h->type == QT_HP_TYPE_ORDINAL) {
        size_t best = 0;
        for (size_t j = 1; j < h->choice_count; j++) {
          if (fabs(h->positions[j] - t) < fabs(h->positions[best] - t)) best = j;
        }
        value = (double)best;
      } else {
        value = unit_to_scale(h, t);
        if (h->type == QT_HP_TYPE_INTEGER) value = fmin(fmax(round(value), h->min), h->max);
      }
    }
    config->slots[i].active = 1;
    config->slots[i].value = value;
  }
  qt_config_prune(config);
  return 0;
}

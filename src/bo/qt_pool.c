/*
 * qt_pool.c - the candidate pool: the configurations an optimizer chooses
 * from, with their encodings computed once.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bo/qt_bo.h"
#include "surrogate/qt_surrogate.h"

int qt_pool_init(qt_pool *pool, const qt_space_t *space, const qt_config *configs, size_t count,
                 qt_err *err) {
  if (!pool) return qt_err_set(err, QT_EINVAL, "qt_pool_init: pool is NULL");
  memset(pool, 0, sizeof *pool);
  if (!space) return qt_err_set(err, QT_EINVAL, "qt_pool_init: space is NULL");
  if (count == 0 || !configs)
    return qt_err_set(err, QT_EINVAL, "qt_pool_init: a pool needs at least one configuration");

  size_t dim = qt_space_encoded_dim(space);
  /* The encodings are one (count, dim) block; dim >= 1 for any valid space. */
  double *encoded = malloc(count * (dim ? dim : 1) * sizeof *encoded);
  if (!encoded)
    return qt_err_set(err, QT_ENOMEM, "out of memory for the encodings of %zu candidates", count);
  for (size_t i = 0; i < count; i++) {
    if (configs[i].space != space) {
      free(encoded);
      return qt_err_set(err, QT_EINVAL, "candidate %zu belongs to another search space", i);
    }
    int rc = qt_space_encode(space, &configs[i], encoded + i * dim, err);
    if (rc != 0) {
      free(encoded);
      return qt_err_prefix(err, rc, "encoding candidate %zu", i);
    }
  }
  long min_epochs = 0, max_epochs = 0;
  qt_space_fidelity(space, NULL, &min_epochs, &max_epochs);

  pool->space = space;
  pool->count = count;
  pool->configs = configs;
  pool->encoded = encoded;
  pool->dim = dim;
  pool->max_epochs = max_epochs;
  pool->owned_configs = NULL;
  pool->meta = NULL;
  pool->meta_dim = 0;
  return 0;
}

int qt_pool_set_meta(qt_pool *pool, const double *features, size_t count, qt_err *err) {
  if (!pool || (count > 0 && !features))
    return qt_err_set(err, QT_EINVAL, "qt_pool_set_meta: NULL argument");
  for (size_t i = 0; i < count; i++)
    if (!isfinite(features[i]))
      return qt_err_set(err, QT_EINVAL, "pool meta-feature %zu is %g, not a finite number", i,
                        features[i]);
  double *meta = NULL;
  if (count > 0) {
    meta = malloc(count * sizeof *meta);
    if (!meta) return qt_err_set(err, QT_ENOMEM, "out of memory for %zu meta-features", count);
    for (size_t i = 0; i < count; i++) meta[i] = features[i] * QT_SURROGATE_META_SCALE;
  }
  free(pool->meta);
  pool->meta = meta;
  pool->meta_dim = count;
  return 0;
}

void qt_pool_free(qt_pool *pool) {
  if (!pool) return;
  free(pool->encoded);
  free(pool->owned_configs);
  free(pool->meta);
  memset(pool, 0, sizeof *pool);
}

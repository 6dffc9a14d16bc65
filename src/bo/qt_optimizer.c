/*
 * qt_optimizer.c - the optimizer registry, the ask/tell dispatch, the trial
 * bookkeeping every optimizer shares, and the schedule arithmetic of
 * successive halving and Hyperband.
 *
 * The bookkeeping is the single source of truth about candidates: the last
 * observed epoch, the scores of every observed epoch, the pending target and
 * whether the candidate ended. Optimizers decide; the dispatch checks each
 * decision against this table (an ended or pending candidate, or a target
 * that is not ahead of the last epoch, is a bug of the optimizer and stops
 * the program) so that no optimizer can break the seam's promises.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bo/qt_bo_internal.h"

/* ========================================================================= */
/* Registry                                                                   */
/* ========================================================================= */

static const char *const optimizer_names[] = {"random",      "sh",          "hyperband",
                                              "asha",        "bohb",        "quicktune",
                                              "quicktune-M", "quicktune-C", "quicktune-MC",
                                              NULL};

static const qt__optimizer_create_fn optimizer_creators[] = {
    qt__random_create,      qt__sh_create,          qt__hyperband_create,
    qt__asha_create,        qt__bohb_create,        qt__quicktune_create,
    qt__quicktune_m_create, qt__quicktune_c_create, qt__quicktune_mc_create};

const char *const *qt_optimizer_names(void) { return optimizer_names; }

int qt_optimizer_uses_surrogate(const char *name) {
  return name && (strcmp(name, "quicktune") == 0 || strcmp(name, "quicktune-M") == 0 ||
                  strcmp(name, "quicktune-C") == 0);
}

qt_optimizer_params qt_optimizer_default_params(void) {
  qt_optimizer_params params;
  params.seed = 0;
  params.min_epochs = 1;
  params.max_epochs = 0;
  params.eta = 3.0;
  params.surrogate = NULL;
  params.quicktune = qt_quicktune_default_params();
  return params;
}

int qt_optimizer_create(const char *name, const qt_pool *pool, const qt_optimizer_params *params,
                        qt_optimizer_t **out, qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_optimizer_create: out is NULL");
  *out = NULL;
  if (!name) return qt_err_set(err, QT_EINVAL, "qt_optimizer_create: name is NULL");
  if (!pool || pool->count == 0 || !pool->encoded)
    return qt_err_set(err, QT_EINVAL, "qt_optimizer_create: the pool is empty or not initialized");
  for (size_t i = 0; optimizer_names[i]; i++) {
    if (strcmp(name, optimizer_names[i]) == 0) return optimizer_creators[i](pool, params, out, err);
  }
  char known[256] = "";
  size_t used = 0;
  for (size_t i = 0; optimizer_names[i] && used < sizeof known; i++)
    used += (size_t)snprintf(known + used, sizeof known - used, "%s%s", i ? ", " : "",
                             optimizer_names[i]);
  return qt_err_set(err, QT_ENOENT, "unknown optimizer '%s' (known: %s)", name, known);
}

void qt_optimizer_free(qt_optimizer_t *optimizer) {
  if (!optimizer) return;
  optimizer->vtable->free(optimizer);
}

const char *qt_optimizer_name(const qt_optimizer_t *optimizer) {
  return optimizer ? optimizer->vtable->name : NULL;
}

/* ========================================================================= */
/* Parameters and the base                                                    */
/* ========================================================================= */

int qt__optimizer_params_resolve(const qt_pool *pool, const qt_optimizer_params *params,
                                 qt_optimizer_params *out, qt_err *err) {
  *out = params ? *params : qt_optimizer_default_params();
  if (out->max_epochs == 0) out->max_epochs = pool->max_epochs;
  if (out->min_epochs < 1)
    return qt_err_set(err, QT_EINVAL, "optimizer: min_epochs %ld < 1", out->min_epochs);
  if (out->max_epochs < out->min_epochs)
    return qt_err_set(err, QT_EINVAL, "optimizer: max_epochs %ld < min_epochs %ld",
                      out->max_epochs, out->min_epochs);
  if (out->max_epochs > pool->max_epochs)
    return qt_err_set(err, QT_EINVAL, "optimizer: max_epochs %ld exceeds the pool's maximum %ld",
                      out->max_epochs, pool->max_epochs);
  return 0;
}

int qt__optimizer_check_eta(double eta, qt_err *err) {
  if (!(eta >= 2.0) || !isfinite(eta))
    return qt_err_set(err, QT_EINVAL, "optimizer: eta %g must be a finite number >= 2", eta);
  return 0;
}

int qt__optimizer_base_init(qt_optimizer_t *optimizer, const qt__optimizer_vtable *vtable,
                            const qt_pool *pool, const qt_optimizer_params *params, qt_err *err) {
  optimizer->vtable = vtable;
  optimizer->pool = pool;
  int rc = qt__optimizer_params_resolve(pool, params, &optimizer->params, err);
  if (rc != 0) return rc;

  size_t count = pool->count;
  optimizer->trials = malloc(count * sizeof *optimizer->trials);
  optimizer->order = malloc(count * sizeof *optimizer->order);
  if (!optimizer->trials || !optimizer->order)
    return qt_err_set(err, QT_ENOMEM, "out of memory for an optimizer over %zu candidates", count);
  for (size_t i = 0; i < count; i++) {
    optimizer->trials[i] = (qt__trial){0, 0, 0, QT_OBS_STATUS_OK, SIZE_MAX};
    optimizer->order[i] = i;
  }

  qt_rng_t *root = NULL, *order_rng = NULL;
  rc = qt_rng_init(&root, optimizer->params.seed, err);
  if (rc == 0) rc = qt_rng_fork(root, QT__STREAM_ORDER, &order_rng, err);
  if (rc == 0) rc = qt_rng_fork(root, QT__STREAM_OPTIMIZER, &optimizer->rng, err);
  if (rc == 0) {
    /* Fisher-Yates: the fresh candidates come in this order, the same for
     * every optimizer given the same seed (common random numbers). */
    for (size_t i = count; i > 1; i--) {
      size_t j = (size_t)qt_rng_uniform_int(order_rng, i);
      size_t tmp = optimizer->order[i - 1];
      optimizer->order[i - 1] = optimizer->order[j];
      optimizer->order[j] = tmp;
    }
  }
  qt_rng_free(order_rng);
  qt_rng_free(root);
  return rc;
}

void qt__optimizer_base_free(qt_optimizer_t *optimizer) {
  if (!optimizer) return;
  free(optimizer->trials);
  free(optimizer->curves);
  free(optimizer->order);
  qt_rng_free(optimizer->rng);
  optimizer->trials = NULL;
  optimizer->curves = NULL;
  optimizer->order = NULL;
  optimizer->rng = NULL;
}

/* ========================================================================= */
/* Trial bookkeeping                                                          */
/* ========================================================================= */

int qt__trial_can_advance(const qt_optimizer_t *optimizer, size_t candidate) {
  const qt__trial *t = &optimizer->trials[candidate];
  return t->end == QT_OBS_STATUS_OK && t->last_epoch < optimizer->params.max_epochs;
}

int qt__trial_is_fresh(const qt_optimizer_t *optimizer, size_t candidate) {
  const qt__trial *t = &optimizer->trials[candidate];
  return t->last_epoch == 0 && t->target == 0 && t->end == QT_OBS_STATUS_OK;
}

double qt__trial_score(const qt_optimizer_t *optimizer, size_t candidate, long epoch) {
  const qt__trial *t = &optimizer->trials[candidate];
  QT_ASSERT(epoch >= 1 && epoch <= t->last_epoch && t->row != SIZE_MAX);
  return optimizer->curves[t->row * (size_t)optimizer->params.max_epochs + (size_t)(epoch - 1)];
}

double qt__trial_rung_score(const qt_optimizer_t *optimizer, size_t candidate, long epoch) {
  const qt__trial *t = &optimizer->trials[candidate];
  if (t->last_epoch >= epoch) return qt__trial_score(optimizer, candidate, epoch);
  if (t->end == QT_OBS_STATUS_EXHAUSTED && t->last_epoch > 0)
    return qt__trial_score(optimizer, candidate, t->last_epoch);
  return -INFINITY;
}

int qt__draw_fresh(qt_optimizer_t *optimizer, size_t *candidate) {
  size_t count = optimizer->pool->count;
  while (optimizer->order_next < count) {
    size_t c = optimizer->order[optimizer->order_next++];
    if (qt__trial_is_fresh(optimizer, c)) {
      *candidate = c;
      return 1;
    }
  }
  return 0;
}

/* Gives candidate a curve row (NaN-filled) on its first score. */
static int ensure_row(qt_optimizer_t *optimizer, size_t candidate, qt_err *err) {
  qt__trial *t = &optimizer->trials[candidate];
  if (t->row != SIZE_MAX) return 0;
  size_t width = (size_t)optimizer->params.max_epochs;
  if (optimizer->curve_count == optimizer->curve_capacity) {
    size_t capacity = optimizer->curve_capacity ? 2 * optimizer->curve_capacity : 16;
    if (capacity > optimizer->pool->count) capacity = optimizer->pool->count;
    double *curves = realloc(optimizer->curves, capacity * width * sizeof *curves);
    if (!curves) return qt_err_set(err, QT_ENOMEM, "out of memory for %zu learning curves", capacity);
    optimizer->curves = curves;
    optimizer->curve_capacity = capacity;
  }
  t->row = optimizer->curve_count++;
  double *row = optimizer->curves + t->row * width;
  for (size_t e = 0; e < width; e++) row[e] = NAN;
  return 0;
}

static void settle_pending(qt_optimizer_t *optimizer, size_t candidate) {
  qt__trial *t = &optimizer->trials[candidate];
  if (t->pending && (t->end != QT_OBS_STATUS_OK || t->last_epoch >= t->target)) {
    t->pending = 0;
    optimizer->pending_count--;
  }
}

/* ========================================================================= */
/* Ask / tell                                                                 */
/* ========================================================================= */

int qt_optimizer_suggest(qt_optimizer_t *optimizer, qt_suggestion *out, qt_suggest_status *status,
                         qt_err *err) {
  if (!optimizer || !out || !status)
    return qt_err_set(err, QT_EINVAL, "qt_optimizer_suggest: NULL argument");
  *status = QT_SUGGEST_STATUS_DONE;
  int rc = optimizer->vtable->suggest(optimizer, out, status, err);
  if (rc != 0 || *status != QT_SUGGEST_STATUS_OK) return rc;
  /* The seam's promises: a live, idle candidate, advanced to a later epoch
   * within the budget. Breaking them is a bug of the optimizer. */
  QT_ASSERT(out->candidate < optimizer->pool->count);
  qt__trial *t = &optimizer->trials[out->candidate];
  QT_ASSERT(t->end == QT_OBS_STATUS_OK && !t->pending);
  QT_ASSERT(out->epoch > t->last_epoch && out->epoch <= optimizer->params.max_epochs);
  t->target = out->epoch;
  t->pending = 1;
  optimizer->pending_count++;
  return 0;
}

int qt_optimizer_observe(qt_optimizer_t *optimizer, size_t candidate, long epoch,
                         const qt_observation *observation, qt_err *err) {
  if (!optimizer || !observation)
    return qt_err_set(err, QT_EINVAL, "qt_optimizer_observe: NULL argument");
  const char *name = optimizer->vtable->name;
  if (candidate >= optimizer->pool->count)
    return qt_err_set(err, QT_EINVAL, "%s: candidate %zu is not in the pool of %zu", name,
                      candidate, optimizer->pool->count);
  qt__trial *t = &optimizer->trials[candidate];
  if (t->end != QT_OBS_STATUS_OK)
    return qt_err_set(err, QT_EINVAL, "%s: candidate %zu already ended (%s)", name, candidate,
                      qt_obs_status_name(t->end));
  if (epoch != t->last_epoch + 1)
    return qt_err_set(err, QT_EINVAL, "%s: epoch %ld of candidate %zu observed after epoch %ld",
                      name, epoch, candidate, t->last_epoch);
  if (epoch > optimizer->params.max_epochs)
    return qt_err_set(err, QT_EINVAL, "%s: epoch %ld of candidate %zu is past max_epochs %ld",
                      name, epoch, candidate, optimizer->params.max_epochs);
  switch (observation->status) {
    case QT_OBS_STATUS_OK:
      if (!isfinite(observation->score))
        return qt_err_set(err, QT_EINVAL, "%s: epoch %ld of candidate %zu is OK with score %g",
                          name, epoch, candidate, observation->score);
      {
        int rc = ensure_row(optimizer, candidate, err);
        if (rc != 0) return rc;
      }
      optimizer->curves[t->row * (size_t)optimizer->params.max_epochs + (size_t)(epoch - 1)] =
          observation->score;
      t->last_epoch = epoch;
      break;
    case QT_OBS_STATUS_DIVERGED:
    case QT_OBS_STATUS_FAILED:
    case QT_OBS_STATUS_EXHAUSTED:
      t->end = observation->status;
      break;
    default:
      return qt_err_set(err, QT_EINVAL, "%s: unknown observation status %d", name,
                        (int)observation->status);
  }
  int rc = 0;
  if (optimizer->vtable->observe)
    rc = optimizer->vtable->observe(optimizer, candidate, epoch, observation, err);
  settle_pending(optimizer, candidate);
  return rc;
}

int qt_optimizer_fail(qt_optimizer_t *optimizer, size_t candidate, const char *reason, qt_err *err) {
  if (!optimizer) return qt_err_set(err, QT_EINVAL, "qt_optimizer_fail: optimizer is NULL");
  if (candidate >= optimizer->pool->count)
    return qt_err_set(err, QT_EINVAL, "%s: candidate %zu is not in the pool of %zu",
                      optimizer->vtable->name, candidate, optimizer->pool->count);
  qt__trial *t = &optimizer->trials[candidate];
  /* A second report about an ended candidate changes nothing. */
  if (t->end != QT_OBS_STATUS_OK) return 0;
  QT_LOG_DEBUG("%s: candidate %zu failed: %s", optimizer->vtable->name, candidate,
               reason ? reason : "(no reason given)");
  t->end = QT_OBS_STATUS_FAILED;
  int rc = 0;
  if (optimizer->vtable->fail) rc = optimizer->vtable->fail(optimizer, candidate, err);
  settle_pending(optimizer, candidate);
  return rc;
}

/* ========================================================================= */
/* Schedules                                                                  */
/* ========================================================================= */

/* Relative slack for floor and ceil of products of eta, so that a value that
 * is a whole number in exact arithmetic but lands a rounding error above or
 * below it in doubles (possible with a non-integer eta) is taken as that
 * whole number. */
#define SCHEDULE_SLACK 1e-9

int qt__schedule_s_max(long min_epochs, long max_epochs, double eta) {
  int s = 0;
  double budget = (double)min_epochs;
  while (budget * eta <= (double)max_epochs * (1.0 + SCHEDULE_SLACK)) {
    budget *= eta;
    s++;
  }
  return s;
}

long qt__schedule_ladder_epoch(long max_epochs, double eta, int s_max, int level) {
  QT_ASSERT(level >= 0 && level <= s_max);
  long epoch = lround((double)max_epochs / pow(eta, (double)(s_max - level)));
  return epoch < 1 ? 1 : epoch;
}

size_t qt__schedule_bracket_n(int s_max, int s, double eta) {
  QT_ASSERT(s >= 0 && s <= s_max);
  double n = (double)(s_max + 1) / (double)(s + 1) * pow(eta, (double)s);
  return (size_t)ceil(n * (1.0 - SCHEDULE_SLACK));
}

size_t qt__schedule_rung_size(int s_max, int s, double eta, int rung) {
  QT_ASSERT(rung >= 0 && rung <= s);
  double n = (double)qt__schedule_bracket_n(s_max, s, eta) / pow(eta, (double)rung);
  return (size_t)floor(n * (1.0 + SCHEDULE_SLACK));
}

long qt__schedule_rung_epoch(long max_epochs, double eta, int s_max, int s, int rung) {
  QT_ASSERT(rung >= 0 && rung <= s && s <= s_max);
  return qt__schedule_ladder_epoch(max_epochs, eta, s_max, s_max - s + rung);
}

size_t qt__schedule_promotions(size_t n, double eta) {
  return (size_t)floor((double)n / eta * (1.0 + SCHEDULE_SLACK));
}

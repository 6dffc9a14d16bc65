/*
 * qt_objective.c - the objective dispatch and the tabular objective, which
 * replays the recorded learning curves of one dataset of a meta-dataset.
 *
 * Tabular semantics: candidate i is run first_run + i of the dataset (the
 * runs in meta-dataset order). Stepping epoch e of a run with n recorded
 * epochs gives the recorded score and cost for e <= n, and EXHAUSTED with
 * cost 0 for e > n: the run ended earlier than the fidelity's maximum, so a
 * replay has nothing more to show and charges nothing for asking. A recorded
 * score that is not finite (the loader refuses these, a hand-built store
 * might not) replays as DIVERGED, as Quick-Tune's benchmark marks curves
 * with NaN (specs §1.8).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bo/qt_bo.h"

/* ------------------------------------------------------------------------- */
/* Dispatch                                                                   */
/* ------------------------------------------------------------------------- */

int qt_objective_step(qt_objective_t *objective, size_t candidate, long epoch, qt_observation *out,
                      qt_err *err) {
  if (!objective || !out) return qt_err_set(err, QT_EINVAL, "qt_objective_step: NULL argument");
  if (epoch < 1) return qt_err_set(err, QT_EINVAL, "qt_objective_step: epoch %ld < 1", epoch);
  return objective->vtable->step(objective, candidate, epoch, out, err);
}

void qt_objective_free(qt_objective_t *objective) {
  if (!objective) return;
  objective->vtable->free(objective);
}

/* ------------------------------------------------------------------------- */
/* Tabular objective                                                          */
/* ------------------------------------------------------------------------- */

typedef struct tabular_objective {
  qt_objective_t base; /* first member */
  const qt_metadataset_t *md;
  size_t dataset;
  size_t first_run;
  size_t run_count;
} tabular_objective;

static int tabular_step(qt_objective_t *objective, size_t candidate, long epoch,
                        qt_observation *out, qt_err *err) {
  const tabular_objective *tab = (const tabular_objective *)objective;
  if (candidate >= tab->run_count)
    return qt_err_set(err, QT_EINVAL, "tabular objective: candidate %zu, but dataset %zu has %zu runs",
                      candidate, tab->dataset, tab->run_count);
  const qt_md_run *run = qt_metadataset_run(tab->md, tab->first_run + candidate);
  out->train_loss = NAN;
  out->val_loss = NAN;
  if ((size_t)epoch > run->epochs) {
    out->status = QT_OBS_STATUS_EXHAUSTED;
    out->score = NAN;
    out->cost = 0.0;
    return 0;
  }
  size_t e = (size_t)epoch - 1;
  double score = run->score[e];
  out->cost = run->cost[e];
  if (run->train_loss) out->train_loss = run->train_loss[e];
  if (run->val_loss) out->val_loss = run->val_loss[e];
  if (isfinite(score)) {
    out->status = QT_OBS_STATUS_OK;
    out->score = score;
  } else {
    out->status = QT_OBS_STATUS_DIVERGED;
    out->score = NAN;
  }
  return 0;
}

static void tabular_free(qt_objective_t *objective) { free(objective); }

static const qt_objective_vtable tabular_vtable = {"tabular", tabular_step, tabular_free};

static int check_dataset(const qt_metadataset_t *md, size_t dataset, qt_err *err) {
  if (!md) return qt_err_set(err, QT_EINVAL, "tabular objective: meta-dataset is NULL");
  size_t count = qt_metadataset_dataset_count(md);
  if (dataset >= count)
    return qt_err_set(err, QT_EINVAL, "tabular objective: dataset %zu, but the meta-dataset has %zu",
                      dataset, count);
  if (qt_metadataset_dataset(md, dataset)->run_count == 0)
    return qt_err_set(err, QT_EINVAL, "tabular objective: dataset %s has no runs",
                      qt_metadataset_dataset(md, dataset)->name);
  return 0;
}

int qt_tabular_objective_init(const qt_metadataset_t *md, size_t dataset, qt_objective_t **out,
                              qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_tabular_objective_init: out is NULL");
  *out = NULL;
  int rc = check_dataset(md, dataset, err);
  if (rc != 0) return rc;
  tabular_objective *tab = calloc(1, sizeof *tab);
  if (!tab) return qt_err_set(err, QT_ENOMEM, "out of memory for a tabular objective");
  const qt_md_dataset *d = qt_metadataset_dataset(md, dataset);
  tab->base.vtable = &tabular_vtable;
  tab->md = md;
  tab->dataset = dataset;
  tab->first_run = d->first_run;
  tab->run_count = d->run_count;
  *out = &tab->base;
  return 0;
}

int qt_tabular_pool_init(qt_pool *pool, const qt_metadataset_t *md, size_t dataset, qt_err *err) {
  if (!pool) return qt_err_set(err, QT_EINVAL, "qt_tabular_pool_init: pool is NULL");
  memset(pool, 0, sizeof *pool);
  int rc = check_dataset(md, dataset, err);
  if (rc != 0) return rc;
  const qt_md_dataset *d = qt_metadataset_dataset(md, dataset);
  /* The runs' configurations need not be contiguous in the store, and the
   * pool takes an array: shallow copies share the store's slots. */
  qt_config *configs = malloc(d->run_count * sizeof *configs);
  if (!configs)
    return qt_err_set(err, QT_ENOMEM, "out of memory for a pool of %zu runs", d->run_count);
  for (size_t i = 0; i < d->run_count; i++)
    configs[i] = *qt_metadataset_run(md, d->first_run + i)->config;
  rc = qt_pool_init(pool, qt_metadataset_space(md), configs, d->run_count, err);
  if (rc != 0) {
    free(configs);
    return qt_err_prefix(err, rc, "pool of dataset %s", d->name);
  }
  pool->owned_configs = configs;
  long max_epochs = qt_metadataset_max_epochs(md);
  if (max_epochs > 0) pool->max_epochs = max_epochs;
  rc = qt_pool_set_meta(pool, d->features, qt_metadataset_feature_count(md), err);
  if (rc != 0) {
    qt_pool_free(pool);
    return qt_err_prefix(err, rc, "pool of dataset %s", d->name);
  }
  return 0;
}

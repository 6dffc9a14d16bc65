/*
 * qt_bo.h - the optimization side of qtune: observations, objectives,
 * optimizers behind one ask/tell interface, and the benchmark runner.
 *
 * The seams (see ARCHITECTURE.md; keep them stable):
 *
 *   Candidate pool   the configurations an optimizer may choose from, each
 *                    with its encoded vector. On benchmarks the pool is the
 *                    set of runs recorded for the test dataset; in a real
 *                    search it is a sample of the search space.
 *   Observation      one epoch of one trial: score in [0, 1] (higher is
 *                    better), cost in seconds of that epoch alone, optional
 *                    losses, and a status.
 *   Objective        step(candidate, epoch) -> observation. It owns whatever
 *                    is needed to continue a trial from its last epoch.
 *   Optimizer        suggest -> (candidate, target epoch); observe(candidate,
 *                    epoch, observation); fail(candidate, reason). Several
 *                    suggestions may be pending at once (asynchronous
 *                    workers), so an optimizer never assumes that its last
 *                    suggestion is the next one observed.
 *
 * A trial is identified by its candidate index: a configuration is trained
 * as one continuing run, epoch after epoch (freeze-thaw), so "advance
 * candidate i to epoch t" resumes it from its last observed epoch. The caller
 * steps the objective one epoch at a time from the candidate's last epoch + 1
 * to the target and reports each observation.
 *
 * Memory: the pool borrows its configurations and space from the caller;
 * objectives and optimizers are opaque, created and freed in pairs, and keep
 * their own copies of anything else they need.
 *
 * Units: epochs are whole numbers from 1; costs and budgets are seconds.
 */
#ifndef QT_BO_H
#define QT_BO_H

#include <stddef.h>
#include <stdint.h>

#include "core/qt_core.h"
#include "metadata/qt_metadata.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ========================================================================= */
/* Observations                                                               */
/* ========================================================================= */

typedef enum qt_obs_status {
  QT_OBS_STATUS_OK = 0,        /* the epoch ran; score and cost are valid */
  QT_OBS_STATUS_DIVERGED = 1,  /* the loss became NaN or infinite: no further epoch */
  QT_OBS_STATUS_FAILED = 2,    /* the trial failed (bad input, out of memory, ...) */
  QT_OBS_STATUS_EXHAUSTED = 3  /* no such epoch exists (a replayed run ended earlier) */
} qt_obs_status;

typedef struct qt_observation {
  qt_obs_status status;
  double score;      /* in [0, 1], higher is better; NaN unless status is OK */
  double cost;       /* seconds of this epoch alone (train + eval), >= 0 */
  double train_loss; /* NaN when unknown */
  double val_loss;   /* NaN when unknown */
} qt_observation;

/* "ok", "diverged", "failed", "exhausted". */
const char *qt_obs_status_name(qt_obs_status status);

/* ========================================================================= */
/* Candidate pool                                                             */
/* ========================================================================= */

typedef struct qt_pool {
  const qt_space_t *space;  /* not owned */
  size_t count;             /* number of candidates */
  const qt_config *configs; /* (count) not owned; valid for space */
  double *encoded;          /* (count, dim) row-major encodings, owned by the pool */
  size_t dim;               /* qt_space_encoded_dim(space) */
  long max_epochs;          /* the fidelity's maximum */
} qt_pool;

/* Encodes every configuration; configs must outlive the pool. */
int qt_pool_init(qt_pool *pool, const qt_space_t *space, const qt_config *configs, size_t count,
                 qt_err *err);
void qt_pool_free(qt_pool *pool);

/* ========================================================================= */
/* Objectives                                                                 */
/* ========================================================================= */

/* An objective computes one epoch of one candidate. Implementations: the
 * tabular objective below (replays a meta-dataset), the fine-tuning objective
 * (later). */
typedef struct qt_objective qt_objective_t;

typedef struct qt_objective_vtable {
  const char *name;
  /* Runs epoch `epoch` of candidate `candidate` (epochs are stepped in order
   * per candidate, each at most once). Returns 0 with *out filled, also for
   * diverged, failed and exhausted epochs; a negative code only for errors of
   * the objective itself (its files, its memory). */
  int (*step)(qt_objective_t *objective, size_t candidate, long epoch, qt_observation *out,
              qt_err *err);
  void (*free)(qt_objective_t *objective);
} qt_objective_vtable;

struct qt_objective {
  const qt_objective_vtable *vtable;
};

int qt_objective_step(qt_objective_t *objective, size_t candidate, long epoch, qt_observation *out,
                      qt_err *err);
void qt_objective_free(qt_objective_t *objective);

/* The tabular objective replays dataset `dataset` of a meta-dataset: the
 * candidates are that dataset's runs in meta-dataset order (candidate i is run
 * first_run + i), step() returns the recorded score and cost of the epoch, and
 * an epoch past the run's last recorded one is EXHAUSTED (cost 0). The
 * meta-dataset must outlive the objective. */
int qt_tabular_objective_init(const qt_metadataset_t *md, size_t dataset, qt_objective_t **out,
                              qt_err *err);
/* The candidate pool of that dataset (its runs' configurations). */
int qt_tabular_pool_init(qt_pool *pool, const qt_metadataset_t *md, size_t dataset, qt_err *err);

/* ========================================================================= */
/* Optimizers (ask/tell)                                                      */
/* ========================================================================= */

typedef struct qt_optimizer qt_optimizer_t;

typedef struct qt_optimizer_params {
  uint64_t seed;     /* random stream of the optimizer (default 0) */
  long min_epochs;   /* smallest budget of successive halving and friends (default 1) */
  long max_epochs;   /* largest budget (default: the pool's max_epochs) */
  double eta;        /* reduction factor of SH, Hyperband, ASHA, BOHB (default 3) */
} qt_optimizer_params;

qt_optimizer_params qt_optimizer_default_params(void);

typedef enum qt_suggest_status {
  QT_SUGGEST_STATUS_OK = 0,  /* *out holds a suggestion */
  QT_SUGGEST_STATUS_WAIT = 1, /* nothing to do until pending trials are observed */
  QT_SUGGEST_STATUS_DONE = 2  /* the optimizer has nothing left to try */
} qt_suggest_status;

typedef struct qt_suggestion {
  size_t candidate; /* pool index */
  long epoch;       /* target epoch: advance the candidate up to this epoch */
} qt_suggestion;

/* Names of the registered optimizers, NULL-terminated ("random", "sh",
 * "hyperband", "asha", "bohb", ...). */
const char *const *qt_optimizer_names(void);
/* Creates the optimizer called name over pool (which must outlive it).
 * QT_ENOENT for an unknown name, listing the known ones. */
int qt_optimizer_create(const char *name, const qt_pool *pool, const qt_optimizer_params *params,
                        qt_optimizer_t **out, qt_err *err);
void qt_optimizer_free(qt_optimizer_t *optimizer);
const char *qt_optimizer_name(const qt_optimizer_t *optimizer);

/* Asks for the next (candidate, target epoch); *status says whether there is
 * one. The suggestion is pending until its epochs are observed or failed. */
int qt_optimizer_suggest(qt_optimizer_t *optimizer, qt_suggestion *out, qt_suggest_status *status,
                         qt_err *err);
/* Tells the result of epoch `epoch` of candidate. An EXHAUSTED, DIVERGED or
 * FAILED observation ends that candidate: it is never suggested again. */
int qt_optimizer_observe(qt_optimizer_t *optimizer, size_t candidate, long epoch,
                         const qt_observation *observation, qt_err *err);
/* Tells that a pending candidate failed outside the objective (a crash of a
 * worker, ...): it is never suggested again. */
int qt_optimizer_fail(qt_optimizer_t *optimizer, size_t candidate, const char *reason, qt_err *err);

#ifdef __cplusplus
}
#endif

#endif /* QT_BO_H */

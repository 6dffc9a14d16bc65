/*
 * qt_bo_internal.h - what the optimizers of bo/ share and nothing outside
 * bo/ (and its test suite) may use: the optimizer vtable, the per-candidate
 * trial bookkeeping every optimizer reads, the schedule arithmetic of
 * successive halving and Hyperband, and the synchronous bracket engine that
 * SH, Hyperband and BOHB are built on.
 *
 * An optimizer is a struct whose first member is `qt_optimizer_t` (the base
 * below), so a qt_optimizer_t * converts to the concrete type. The dispatch
 * in qt_optimizer.c keeps the shared bookkeeping and calls the vtable:
 *
 *   suggest   the optimizer's decision; the base then checks it (never an
 *             ended or pending candidate, always ahead of its last epoch) and
 *             marks the candidate pending up to the target epoch;
 *   observe   called after the base recorded the epoch (score, last epoch,
 *             end status) and before it clears the pending mark, so the hook
 *             still sees the target the candidate was heading to;
 *   fail      called after the base marked the candidate FAILED;
 *   free      releases what the optimizer allocated beyond the base.
 *
 * Memory: the base owns its trial table, curve rows, draw order and random
 * stream; qt__optimizer_base_free releases them. Concrete optimizers own
 * their extra arrays.
 */
#ifndef QT_BO_INTERNAL_H
#define QT_BO_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "bo/qt_bo.h"

/* ========================================================================= */
/* The optimizer base                                                         */
/* ========================================================================= */

typedef struct qt__optimizer_vtable {
  const char *name;
  int (*suggest)(qt_optimizer_t *optimizer, qt_suggestion *out, qt_suggest_status *status,
                 qt_err *err);
  /* May be NULL when the optimizer reads everything from the trial table. */
  int (*observe)(qt_optimizer_t *optimizer, size_t candidate, long epoch,
                 const qt_observation *observation, qt_err *err);
  /* May be NULL. */
  int (*fail)(qt_optimizer_t *optimizer, size_t candidate, qt_err *err);
  /* Releases the optimizer's own fields and the base (through
   * qt__optimizer_base_free) and the struct itself. */
  void (*free)(qt_optimizer_t *optimizer);
} qt__optimizer_vtable;

/* What the optimizer knows about one candidate. */
typedef struct qt__trial {
  long last_epoch;       /* last observed OK epoch, 0 before the first */
  long target;           /* target epoch of the latest suggestion, 0 when never suggested */
  int pending;           /* 1 while the latest suggestion is neither reached nor ended */
  qt_obs_status end;     /* OK while the candidate may continue; else what ended it */
  size_t row;            /* its row in qt_optimizer.curves; SIZE_MAX before the first score */
} qt__trial;

struct qt_optimizer {
  const qt__optimizer_vtable *vtable;
  const qt_pool *pool;          /* not owned */
  qt_optimizer_params params;   /* resolved: max_epochs is set, min_epochs <= max_epochs */
  qt__trial *trials;            /* (pool->count) */
  double *curves;               /* (curve_capacity, params.max_epochs) scores of epochs 1..,
                                   one row per candidate with at least one OK epoch */
  size_t curve_count;           /* rows in use */
  size_t curve_capacity;        /* rows allocated */
  size_t *order;                /* (pool->count) random permutation: the order of fresh draws */
  size_t order_next;            /* positions before it hold only touched candidates */
  size_t pending_count;         /* candidates with pending == 1 */
  qt_rng_t *rng;                /* the optimizer's stream (seeded from params.seed) */
};

/* Stream labels forked from params.seed, so that adding draws to one use
 * never shifts another. */
#define QT__STREAM_ORDER 1u    /* the permutation of fresh draws */
#define QT__STREAM_OPTIMIZER 2u /* the optimizer's own draws (qt_optimizer.rng) */

/* Resolves params against the pool (NULL: defaults; max_epochs 0: the pool's
 * maximum) and checks them: 1 <= min_epochs <= max_epochs <= pool max.
 * QT_EINVAL with the offending value otherwise. */
int qt__optimizer_params_resolve(const qt_pool *pool, const qt_optimizer_params *params,
                                 qt_optimizer_params *out, qt_err *err);
/* Checks eta for the schedules: finite and >= 2 (smaller factors make
 * rounded rung epochs collide). */
int qt__optimizer_check_eta(double eta, qt_err *err);

/* Initializes the base of a freshly allocated (zeroed) optimizer: resolved
 * params, the trial table, the random stream and the draw permutation. */
int qt__optimizer_base_init(qt_optimizer_t *optimizer, const qt__optimizer_vtable *vtable,
                            const qt_pool *pool, const qt_optimizer_params *params, qt_err *err);
void qt__optimizer_base_free(qt_optimizer_t *optimizer);

/* 1 when the candidate may be advanced (not ended, below max_epochs). */
int qt__trial_can_advance(const qt_optimizer_t *optimizer, size_t candidate);
/* 1 when the candidate was never observed, suggested, failed or ended. */
int qt__trial_is_fresh(const qt_optimizer_t *optimizer, size_t candidate);
/* The recorded score of epoch `epoch` (1-based, <= last_epoch). */
double qt__trial_score(const qt_optimizer_t *optimizer, size_t candidate, long epoch);
/*
 * The score a rung at epoch `epoch` ranks the candidate by:
 *   - the recorded score of that epoch when the candidate reached it;
 *   - otherwise, when the candidate ended EXHAUSTED (its run has no further
 *     epoch), its last recorded score (-inf when it has none);
 *   - otherwise (DIVERGED, FAILED, or simply not there yet) -inf.
 */
double qt__trial_rung_score(const qt_optimizer_t *optimizer, size_t candidate, long epoch);

/* Draws the next fresh candidate of the seeded permutation into *candidate.
 * Returns 1, or 0 when no fresh candidate is left. Amortized O(1). */
int qt__draw_fresh(qt_optimizer_t *optimizer, size_t *candidate);

/* ========================================================================= */
/* Schedules                                                                  */
/* ========================================================================= */

/* s_max = floor(log_eta(max_epochs / min_epochs)), computed without
 * floating-point surprises at exact powers. */
int qt__schedule_s_max(long min_epochs, long max_epochs, double eta);
/* The Hyperband budget ladder: level j (0..s_max) is R * eta^(j - s_max)
 * rounded to the nearest epoch, so level s_max is R exactly. Bracket s uses
 * levels s_max - s .. s_max. [RECON] Epochs are whole, so Li et al.'s real
 * budgets are rounded. */
long qt__schedule_ladder_epoch(long max_epochs, double eta, int s_max, int level);
/* Hyperband's bracket s: n = ceil((s_max + 1) / (s + 1) * eta^s) configurations
 * at rung 0; rung i (0..s) holds n_i = floor(n * eta^-i) configurations
 * trained to r_i = R * eta^(i - s) epochs (rounded). */
size_t qt__schedule_bracket_n(int s_max, int s, double eta);
size_t qt__schedule_rung_size(int s_max, int s, double eta, int rung);
long qt__schedule_rung_epoch(long max_epochs, double eta, int s_max, int s, int rung);
/* floor(n / eta), the number promoted out of a rung of n (SH and ASHA). */
size_t qt__schedule_promotions(size_t n, double eta);

/* ========================================================================= */
/* Synchronous brackets (qt_opt_sh.c): SH, Hyperband and BOHB                 */
/* ========================================================================= */

typedef struct qt__bracket_optimizer qt__bracket_optimizer;

/* Where a bracket's new configurations come from: 1 with *candidate set, or
 * 0 when the pool has no fresh candidate left. */
typedef int (*qt__bracket_draw_fn)(qt__bracket_optimizer *bracket, size_t *candidate,
                                   qt_err *err);

/* One entry of the ranking buffer used at promotions. */
typedef struct qt__ranked {
  double score;
  size_t position; /* position in the rung, the tie-break */
  size_t candidate;
} qt__ranked;

struct qt__bracket_optimizer {
  qt_optimizer_t base;   /* first member */
  int hyperband;         /* 0: every bracket is s = s_max (SH); 1: s cycles s_max..0 */
  int s_max;
  double eta;
  qt__bracket_draw_fn draw; /* new configurations; qt__draw_fresh for SH and Hyperband */
  /* The current bracket. */
  int active;            /* 0 before the first bracket and between brackets */
  long brackets_done;    /* brackets started before the current one */
  int s;                 /* the bracket's index (rungs s+1) */
  int rung;              /* the current rung, 0..s */
  int filling;           /* rung 0 still draws new configurations */
  size_t planned;        /* n_i of the current rung (Li et al.'s schedule) */
  size_t *members;       /* (capacity) candidates of the current rung, in arrival order */
  size_t member_count;
  size_t capacity;       /* min(largest n, pool size) */
  qt__ranked *ranked;    /* (capacity) promotion buffer */
};

/* Initializes the bracket engine inside a zeroed struct (BOHB embeds it as
 * its first member). draw NULL means qt__draw_fresh. */
int qt__bracket_init(qt__bracket_optimizer *bracket, const qt__optimizer_vtable *vtable,
                     const qt_pool *pool, const qt_optimizer_params *params, int hyperband,
                     qt__bracket_draw_fn draw, qt_err *err);
int qt__bracket_suggest(qt_optimizer_t *optimizer, qt_suggestion *out, qt_suggest_status *status,
                        qt_err *err);
/* Releases the engine's arrays and the base (not the struct). */
void qt__bracket_release(qt__bracket_optimizer *bracket);

/* ========================================================================= */
/* Constructors of the registered optimizers                                  */
/* ========================================================================= */

typedef int (*qt__optimizer_create_fn)(const qt_pool *pool, const qt_optimizer_params *params,
                                       qt_optimizer_t **out, qt_err *err);

int qt__random_create(const qt_pool *pool, const qt_optimizer_params *params,
                      qt_optimizer_t **out, qt_err *err);
int qt__sh_create(const qt_pool *pool, const qt_optimizer_params *params, qt_optimizer_t **out,
                  qt_err *err);
int qt__hyperband_create(const qt_pool *pool, const qt_optimizer_params *params,
                         qt_optimizer_t **out, qt_err *err);
int qt__asha_create(const qt_pool *pool, const qt_optimizer_params *params, qt_optimizer_t **out,
                    qt_err *err);
int qt__bohb_create(const qt_pool *pool, const qt_optimizer_params *params, qt_optimizer_t **out,
                    qt_err *err);
int qt__quicktune_create(const qt_pool *pool, const qt_optimizer_params *params,
                         qt_optimizer_t **out, qt_err *err);
int qt__quicktune_m_create(const qt_pool *pool, const qt_optimizer_params *params,
                           qt_optimizer_t **out, qt_err *err);
int qt__quicktune_c_create(const qt_pool *pool, const qt_optimizer_params *params,
                           qt_optimizer_t **out, qt_err *err);
int qt__quicktune_mc_create(const qt_pool *pool, const qt_optimizer_params *params,
                            qt_optimizer_t **out, qt_err *err);

/* ========================================================================= */
/* Quick-Tune internals (qt_opt_quicktune.c), reachable by its test suite     */
/* ========================================================================= */

/* Expected improvement of a prediction N(mean, sd^2) over incumbent with
 * offset xi (Quick-Tune's acq 'ei'): 0 when sd == 0, else
 * (mean - incumbent - xi) Phi(z) + sd phi(z), z = (mean - incumbent - xi) / sd. */
double qt__quicktune_ei(double mean, double sd, double incumbent, double xi);

/* The per-fidelity incumbent y*(epoch) of specs §1.7: the best score at
 * `epoch` among the candidates that reached it; when none did, the best
 * score of any epoch of any observed candidate; -inf before any observation.
 * optimizer must be a Quick-Tune optimizer. */
double qt__quicktune_incumbent(const qt_optimizer_t *optimizer, long epoch);

/* The acquisition and choice of one suggestion over n candidates advancing
 * to epochs[i], with predictive means and variances and, when cost_seconds is
 * not NULL, predicted seconds of that epoch: a_i = EI_i / c_i with c_i the
 * predicted seconds / 100 (Quick-Tune's cost units; 1e-4 when c_i == 0), or
 * a_i = EI_i without costs. Writes a (n) when not NULL and returns the first
 * index of the strictly largest a_i (0 when no a_i is a number above -inf). */
size_t qt__quicktune_select(const qt_optimizer_t *optimizer, size_t n, const long *epochs,
                            const double *mean, const double *variance,
                            const double *cost_seconds, double *a);

/* What a Quick-Tune optimizer is and has done, for tests. */
typedef struct qt__quicktune_info {
  int meta;               /* 1: restarts load the meta-trained deep-kernel GP */
  int cost_aware;         /* 1: EI is divided by the meta-trained cost predictor's seconds */
  double learning_rate;   /* of every training */
  long patience;          /* resolved restart patience */
  long trainings;         /* surrogate trainings so far (Quick-Tune's `iterations`) */
  long restarts;          /* trainings that started over from the initial state */
  long failures;          /* numerical failures (parameters restored, next training restarts) */
  int last_steps;         /* Adam steps asked of the latest training */
  int last_restarted;     /* 1 when the latest training started over */
  size_t last_rows;       /* rows of the latest training */
  long no_improvement;    /* consecutive observations without a better score */
  int restart_pending;    /* 1 when the next training will start over */
  const double *initial;  /* (param_count) the state a restart loads */
  const double *current;  /* (param_count) the deep-kernel GP's parameters now */
  size_t param_count;
} qt__quicktune_info;

/* Fills info; the pointers stay valid until the next call on optimizer. */
void qt__quicktune_get_info(qt_optimizer_t *optimizer, qt__quicktune_info *info);

#endif /* QT_BO_INTERNAL_H */

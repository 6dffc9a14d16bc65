/*
 * qt_opt_quicktune.c - Quick-Tune (Arango et al., "Quick-Tune: Quickly
 * Learning Which Pretrained Model to Finetune and How", ICLR 2024) and its
 * ablations, as Quick-Tune's code runs them (specs/algorithms.md §1.4, §1.7).
 *
 * Registered names and what each changes (one code path, two flags):
 *
 *   quicktune      meta = 1, cost = 1   the full method
 *   quicktune-M    meta = 0, cost = 1   the deep-kernel GP starts from a fresh
 *                                       initialization with lr 1e-3; the cost
 *                                       predictor is still the meta-trained one
 *                                       (Quick-Tune's code meta-trains the cost
 *                                       predictor whenever cost_aware is set,
 *                                       independent of meta_train)
 *   quicktune-C    meta = 1, cost = 0   EI is not divided by a cost (c = 1)
 *   quicktune-MC   meta = 0, cost = 0   both: DyHPO with Quick-Tune's network
 *
 * quicktune, quicktune-M and quicktune-C need a meta-trained surrogate
 * (qt_optimizer_params.surrogate, made by `qtune meta train`); quicktune-MC
 * needs none.
 *
 * One suggestion (§1.7):
 *   - Initial design: while no candidate has a scored epoch, a fresh
 *     candidate of the seeded permutation (the same first candidate as every
 *     other optimizer with that seed) at epoch 1.
 *   - Otherwise every candidate that is neither ended, pending nor at
 *     max_epochs is scored at its next epoch t' = t_x + 1 (t' = 1 when new):
 *     the deep-kernel GP conditioned on the training rows predicts mean and
 *     predictive variance, EI uses the per-fidelity incumbent y*(t') with
 *     xi = 0, and is divided by the predicted cost of that epoch in
 *     Quick-Tune's units (seconds / 100; 1e-4 when the prediction is 0). The
 *     first candidate (pool order) with the strictly largest value is
 *     advanced by exactly one epoch.
 *
 * Training rows (§1.4): for every candidate with scored epochs 1..t_x and
 * every one of its epochs t, one row (x, t / T, scores of epochs 1..t-1
 * zero-padded to curve_len, meta-features; target the score of epoch t),
 * with T the search space's fidelity maximum (the scale the surrogate was
 * meta-trained with). Rows are ordered by the candidates' first
 * observation, epochs ascending.
 *
 * Refit schedule (§1.4), after every scored observation:
 *   - a training "starts over" while the restart flag is set: it loads the
 *     initial state (the meta-trained parameters, or the fresh initialization
 *     drawn once when the optimizer was made, as DyHPO keeps its
 *     original_feature_extractor) and runs restart_steps (1000) Adam steps;
 *     the flag is cleared once initial_restarts (10) trainings have happened;
 *   - otherwise refine_steps (50) steps warm-started from the current state;
 *   - the flag is set again when `patience` (floor(1.2 max_epochs), 60 at 50) consecutive
 *     scored observations did not improve the best score (Quick-Tune tests
 *     equality, so it fires once per such streak), and on a numerical
 *     failure, which also restores the parameters from before the training.
 *   Learning rate: 1e-4 from a meta-trained state (the scripts'
 *   meta_learning_rate), 1e-3 from a fresh one (DyHPO's). Quick-Tune's code
 *   keeps 1e-3 for later test datasets of one process even when meta-trained
 *   (specs §1.4 quirk); this project does not copy that.
 *
 * Divergence [RECON]: a DIVERGED (or FAILED, or EXHAUSTED) observation ends
 * the candidate and it is never suggested again. Quick-Tune marks a diverged
 * configuration but keeps it among the candidates, so its code may pick it
 * again (and observe NaN again); the ask/tell seam of this project ends such
 * a trial instead. Its earlier scored epochs stay in the training rows and
 * count for the incumbent, as in Quick-Tune. Such observations train nothing
 * and do not count toward the patience.
 *
 * Numerical failure at prediction time [RECON]: the surrogate starts over at
 * once (one extra training) and predicts again; if that fails too, the
 * suggestion is a uniformly random live candidate.
 *
 * Several workers: pending candidates are not scored (never suggested
 * twice); while the initial design waits for its first score, further
 * suggestions are further fresh candidates at epoch 1. With one worker this
 * is exactly the algorithm above.
 *
 * Row cap [RECON]: the exact GP refit is cubic in the rows and every observed
 * epoch adds one. qt_quicktune_params.max_train_rows = N > 0 keeps at most N
 * rows: the latest epoch of each candidate (most recently observed candidates
 * first), then the most recent other rows; 0 (default) keeps all.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bo/qt_bo_internal.h"
#include "surrogate/qt_surrogate.h"

/* The restart patience is Quick-Tune's int(T + 0.2 T). */
#define PATIENCE_FACTOR 1.2
/* Quick-Tune divides EI by the cost when it is not 0, else by 1e-4. */
#define COST_GUARD 1e-4
/* The cost predictor's unit in Quick-Tune: seconds / 100. */
#define COST_UNIT_SECONDS 100.0
#define LR_META 1e-4
#define LR_FRESH 1e-3

/* Streams forked from the optimizer's random stream. */
enum { STREAM_INIT = 1, STREAM_TRAIN = 2, STREAM_FALLBACK = 3 };

qt_quicktune_params qt_quicktune_default_params(void) {
  qt_quicktune_params params;
  memset(&params, 0, sizeof params);
  params.restart_steps = 1000;
  params.refine_steps = 50;
  params.initial_restarts = 10;
  params.patience = 0;
  params.learning_rate = 0.0;
  params.explore = 0.0;
  params.max_train_rows = 0;
  return params;
}

/* One scored observation, in the order they came. */
typedef struct qt_log_entry {
  size_t candidate;
  long epoch;
} qt_log_entry;

/* Row storage: the qt_rows arrays with a capacity. */
typedef struct row_buffer {
  size_t capacity;
  double *x;      /* (capacity, hp_dim) */
  double *budget; /* (capacity) */
  double *curve;  /* (capacity, curve_len) */
  double *meta;   /* (capacity, meta_dim), NULL when meta_dim is 0 */
  double *y;      /* (capacity) targets (training rows only) */
} row_buffer;

typedef struct quicktune_optimizer {
  qt_optimizer_t base;        /* first member */
  int meta;                   /* restarts load the meta-trained state */
  int cost_aware;             /* EI / predicted cost */
  qt_quicktune_params params; /* resolved: no zero left */
  double learning_rate;
  qt_dkl_config config;
  long fidelity_max; /* T: budgets are epoch / T (the space's fidelity maximum) */

  qt_dkl_t *dkl; /* the deep-kernel GP being trained */
  size_t param_count;
  double *initial;        /* (param_count) the state a restart loads */
  double *saved;          /* (param_count) the state before the current training */
  double *current;        /* (param_count) scratch for qt__quicktune_get_info */
  qt_costnet_t *costnet;  /* the meta-trained cost predictor; NULL without costs */
  qt_rng_t *train_rng;    /* dropout draws */
  qt_rng_t *fallback_rng; /* the random suggestion after a failed prediction */

  /* History. */
  qt_log_entry *log;     /* (log_capacity) scored observations in order */
  unsigned char *chosen; /* (log_capacity) row selection under the cap */
  size_t log_count, log_capacity;
  size_t *seen; /* (pool count) candidates in order of their first score */
  size_t seen_count;
  size_t *mark; /* (pool count) generation marks for the row cap */
  size_t generation;

  row_buffer train; /* training rows */
  size_t train_count;
  row_buffer query;        /* one row per scorable candidate, (pool count) */
  size_t *query_candidate; /* (pool count) */
  long *query_epoch;       /* (pool count) */
  double *mean;            /* (pool count) */
  double *variance;        /* (pool count) */
  double *seconds;         /* (pool count) predicted seconds, cost-aware only */
  double *incumbents;      /* (T + 1) y*(t) by epoch, filled per suggestion */
  /* The candidates as the surrogate reads them: the pool's encodings
   * (one-hot), or (pool count, hp_dim) owned rows when the surrogate uses
   * model descriptors (qt_surrogate_encode). */
  const double *encoded;
  double *owned_encoded;

  /* Schedule state (Quick-Tune's restart, iterations, patience). */
  int restart;
  long trainings, restarts, failures;
  int last_steps, last_restarted;
  size_t last_rows;
  double best;
  long no_improvement;
} quicktune_optimizer;

/* ========================================================================= */
/* Acquisition                                                                */
/* ========================================================================= */

double qt__quicktune_ei(double mean, double sd, double incumbent, double xi) {
  if (sd == 0.0) return 0.0;
  double improvement = mean - incumbent - xi;
  double z = improvement / sd;
  double cdf = 0.5 * erfc(-z / sqrt(2.0));
  double pdf = exp(-0.5 * z * z) / sqrt(2.0 * M_PI);
  return improvement * cdf + sd * pdf;
}

/* Fills qt->incumbents[1..T] with y*(t) in one pass over the curves. */
static void compute_incumbents(quicktune_optimizer *qt) {
  const qt_optimizer_t *base = &qt->base;
  long T = base->params.max_epochs;
  double overall = -INFINITY;
  for (long t = 0; t <= T; t++) qt->incumbents[t] = -INFINITY;
  for (size_t i = 0; i < qt->seen_count; i++) {
    size_t c = qt->seen[i];
    long last = base->trials[c].last_epoch;
    for (long t = 1; t <= last; t++) {
      double y = qt__trial_score(base, c, t);
      if (y > qt->incumbents[t]) qt->incumbents[t] = y;
      if (y > overall) overall = y;
    }
  }
  /* An epoch no candidate reached falls back to the best of any epoch. */
  for (long t = 1; t <= T; t++)
    if (qt->incumbents[t] == -INFINITY) qt->incumbents[t] = overall;
}

double qt__quicktune_incumbent(const qt_optimizer_t *optimizer, long epoch) {
  quicktune_optimizer *qt = (quicktune_optimizer *)optimizer;
  QT_ASSERT(epoch >= 1 && epoch <= optimizer->params.max_epochs);
  compute_incumbents(qt);
  return qt->incumbents[epoch];
}

size_t qt__quicktune_select(const qt_optimizer_t *optimizer, size_t n, const long *epochs,
                            const double *mean, const double *variance, const double *cost_seconds,
                            double *a) {
  quicktune_optimizer *qt = (quicktune_optimizer *)optimizer;
  compute_incumbents(qt);
  size_t best = 0;
  double best_value = -INFINITY;
  for (size_t i = 0; i < n; i++) {
    QT_ASSERT(epochs[i] >= 1 && epochs[i] <= optimizer->params.max_epochs);
    double sd = variance[i] > 0.0 ? sqrt(variance[i]) : 0.0;
    double value = qt__quicktune_ei(mean[i], sd, qt->incumbents[epochs[i]], qt->params.explore);
    if (cost_seconds) {
      double cost = cost_seconds[i] / COST_UNIT_SECONDS;
      value = cost != 0.0 ? value / cost : value / COST_GUARD;
    }
    if (a) a[i] = value;
    /* Strictly larger: ties keep the first index; NaN never wins. */
    if (value > best_value) {
      best_value = value;
      best = i;
    }
  }
  return best;
}

/* ========================================================================= */
/* Rows                                                                       */
/* ========================================================================= */

static void row_buffer_free(row_buffer *b) {
  free(b->x);
  free(b->budget);
  free(b->curve);
  free(b->meta);
  free(b->y);
  memset(b, 0, sizeof *b);
}

/* Grows b to hold n rows (doubling), keeping nothing: rows are rebuilt. */
static int row_buffer_reserve(row_buffer *b, const qt_dkl_config *config, size_t n, qt_err *err) {
  if (n <= b->capacity) return 0;
  size_t capacity = b->capacity ? b->capacity : 64;
  while (capacity < n) capacity *= 2;
  row_buffer grown = {capacity, NULL, NULL, NULL, NULL, NULL};
  grown.x = malloc(capacity * config->hp_dim * sizeof *grown.x);
  grown.budget = malloc(capacity * sizeof *grown.budget);
  grown.curve = malloc(capacity * config->curve_len * sizeof *grown.curve);
  grown.meta = config->meta_dim ? malloc(capacity * config->meta_dim * sizeof *grown.meta) : NULL;
  grown.y = malloc(capacity * sizeof *grown.y);
  if (!grown.x || !grown.budget || !grown.curve || (config->meta_dim && !grown.meta) || !grown.y) {
    row_buffer_free(&grown);
    return qt_err_set(err, QT_ENOMEM, "quicktune: out of memory for %zu surrogate rows", capacity);
  }
  row_buffer_free(b);
  *b = grown;
  return 0;
}

/* Writes row r of b: candidate c predicting epoch t from its epochs
 * 1..t-1; y is its score at t when t <= last epoch. */
static void fill_row(quicktune_optimizer *qt, row_buffer *b, size_t r, size_t c, long t) {
  const qt_optimizer_t *base = &qt->base;
  const qt_dkl_config *cfg = &qt->config;
  memcpy(b->x + r * cfg->hp_dim, qt->encoded + c * cfg->hp_dim, cfg->hp_dim * sizeof *b->x);
  b->budget[r] = (double)t / (double)qt->fidelity_max;
  double *curve = b->curve + r * cfg->curve_len;
  size_t known = (size_t)(t - 1) < cfg->curve_len ? (size_t)(t - 1) : cfg->curve_len;
  for (size_t e = 0; e < known; e++) curve[e] = qt__trial_score(base, c, (long)e + 1);
  for (size_t e = known; e < cfg->curve_len; e++) curve[e] = 0.0;
  if (cfg->meta_dim)
    memcpy(b->meta + r * cfg->meta_dim, base->pool->meta, cfg->meta_dim * sizeof *b->meta);
  b->y[r] = t <= base->trials[c].last_epoch ? qt__trial_score(base, c, t) : 0.0;
}

static qt_rows rows_view(const quicktune_optimizer *qt, const row_buffer *b, size_t n, int with_y) {
  qt_rows rows;
  memset(&rows, 0, sizeof rows);
  rows.n = n;
  rows.x = b->x;
  rows.budget = b->budget;
  rows.curve = b->curve;
  rows.meta = qt->config.meta_dim ? b->meta : NULL;
  rows.y = with_y ? b->y : NULL;
  rows.cost = NULL;
  return rows;
}

/* Chooses the rows under the cap: marks chosen[k] for log entries k. */
static void choose_capped_rows(quicktune_optimizer *qt, size_t limit) {
  memset(qt->chosen, 0, qt->log_count);
  qt->generation++;
  size_t taken = 0;
  /* Each candidate's latest epoch, most recently observed candidates first. */
  for (size_t k = qt->log_count; k-- > 0 && taken < limit;) {
    size_t c = qt->log[k].candidate;
    if (qt->mark[c] == qt->generation) continue;
    qt->mark[c] = qt->generation;
    qt->chosen[k] = 1;
    taken++;
  }
  /* Then the most recent other rows. */
  for (size_t k = qt->log_count; k-- > 0 && taken < limit;) {
    if (qt->chosen[k]) continue;
    qt->chosen[k] = 1;
    taken++;
  }
}

/* Rebuilds the training rows from the history (§1.4). */
static int build_training_rows(quicktune_optimizer *qt, qt_err *err) {
  size_t total = qt->log_count;
  size_t limit = qt->params.max_train_rows;
  size_t n = limit > 0 && total > limit ? limit : total;
  int rc = row_buffer_reserve(&qt->train, &qt->config, n ? n : 1, err);
  if (rc != 0) return rc;
  size_t r = 0;
  if (n == total) {
    for (size_t i = 0; i < qt->seen_count; i++) {
      size_t c = qt->seen[i];
      for (long t = 1; t <= qt->base.trials[c].last_epoch; t++) fill_row(qt, &qt->train, r++, c, t);
    }
  } else {
    choose_capped_rows(qt, n);
    for (size_t k = 0; k < total; k++)
      if (qt->chosen[k]) fill_row(qt, &qt->train, r++, qt->log[k].candidate, qt->log[k].epoch);
  }
  QT_ASSERT(r == n);
  qt->train_count = n;
  return 0;
}

/* ========================================================================= */
/* Training                                                                   */
/* ========================================================================= */

/* One surrogate training after an observation: Quick-Tune's train_pipeline. */
static int train_surrogate(quicktune_optimizer *qt, qt_err *err) {
  int rc = build_training_rows(qt, err);
  if (rc != 0) return rc;
  qt->trainings++;
  qt_dkl_get_params(qt->dkl, qt->saved);
  int steps = qt->params.refine_steps;
  qt->last_restarted = 0;
  if (qt->restart) {
    rc = qt_dkl_set_params(qt->dkl, qt->initial, err);
    if (rc != 0) return rc;
    steps = qt->params.restart_steps;
    qt->restarts++;
    qt->last_restarted = 1;
    if (qt->trainings >= qt->params.initial_restarts) qt->restart = 0;
  }
  qt->last_steps = steps;
  qt->last_rows = qt->train_count;
  qt_rows rows = rows_view(qt, &qt->train, qt->train_count, 1);
  qt_err local;
  qt_err_clear(&local);
  rc = qt_dkl_train(qt->dkl, &rows, steps, qt->learning_rate, qt->train_rng, NULL, &local);
  if (rc == QT_ENUMERIC) {
    /* Quick-Tune restores the state from before this training and starts
     * over at the next one; a failure is not an error of the search. */
    QT_LOG_DEBUG("%s: surrogate training failed (%s); restoring and restarting",
                 qt->base.vtable->name, qt_err_message(&local));
    qt->failures++;
    qt->restart = 1;
    return qt_dkl_set_params(qt->dkl, qt->saved, err);
  }
  if (rc != 0 && err) *err = local;
  return rc;
}

static int grow_log(quicktune_optimizer *qt, qt_err *err) {
  if (qt->log_count < qt->log_capacity) return 0;
  size_t capacity = qt->log_capacity ? 2 * qt->log_capacity : 256;
  qt_log_entry *log = realloc(qt->log, capacity * sizeof *log);
  if (!log) return qt_err_set(err, QT_ENOMEM, "quicktune: out of memory for the history");
  qt->log = log;
  unsigned char *chosen = realloc(qt->chosen, capacity);
  if (!chosen) return qt_err_set(err, QT_ENOMEM, "quicktune: out of memory for the history");
  qt->chosen = chosen;
  qt->log_capacity = capacity;
  return 0;
}

static int quicktune_observe(qt_optimizer_t *optimizer, size_t candidate, long epoch,
                             const qt_observation *observation, qt_err *err) {
  quicktune_optimizer *qt = (quicktune_optimizer *)optimizer;
  /* Ended candidates bring no score: nothing to learn (see the top). */
  if (observation->status != QT_OBS_STATUS_OK) return 0;
  int rc = grow_log(qt, err);
  if (rc != 0) return rc;
  qt->log[qt->log_count++] = (qt_log_entry){candidate, epoch};
  if (epoch == 1) qt->seen[qt->seen_count++] = candidate;

  if (observation->score > qt->best) {
    qt->best = observation->score;
    qt->no_improvement = 0;
  } else {
    qt->no_improvement++;
  }
  if (qt->no_improvement == qt->params.patience) qt->restart = 1;
  return train_surrogate(qt, err);
}

/* ========================================================================= */
/* Suggestion                                                                 */
/* ========================================================================= */

/* The candidates that may be advanced now, at their next epoch. */
static size_t build_queries(quicktune_optimizer *qt) {
  const qt_optimizer_t *base = &qt->base;
  size_t n = 0;
  for (size_t c = 0; c < base->pool->count; c++) {
    const qt__trial *t = &base->trials[c];
    if (t->pending || !qt__trial_can_advance(base, c)) continue;
    qt->query_candidate[n] = c;
    qt->query_epoch[n] = t->last_epoch + 1;
    fill_row(qt, &qt->query, n, c, t->last_epoch + 1);
    n++;
  }
  return n;
}

/* Mean, variance and (cost-aware) seconds of the n query rows. */
static int predict(quicktune_optimizer *qt, size_t n, qt_err *err) {
  int rc = build_training_rows(qt, err);
  if (rc != 0) return rc;
  qt_rows train = rows_view(qt, &qt->train, qt->train_count, 1);
  qt_rows query = rows_view(qt, &qt->query, n, 0);
  rc = qt_dkl_predict(qt->dkl, &train, &query, qt->mean, qt->variance, err);
  if (rc == 0 && qt->cost_aware) rc = qt_costnet_predict(qt->costnet, &query, qt->seconds, err);
  return rc;
}

static int quicktune_suggest(qt_optimizer_t *optimizer, qt_suggestion *out,
                             qt_suggest_status *status, qt_err *err) {
  quicktune_optimizer *qt = (quicktune_optimizer *)optimizer;
  if (qt->seen_count == 0) {
    /* The initial design: one random candidate at epoch 1. */
    size_t c;
    if (qt__draw_fresh(optimizer, &c)) {
      out->candidate = c;
      out->epoch = 1;
      *status = QT_SUGGEST_STATUS_OK;
      return 0;
    }
    *status = optimizer->pending_count > 0 ? QT_SUGGEST_STATUS_WAIT : QT_SUGGEST_STATUS_DONE;
    return 0;
  }
  size_t n = build_queries(qt);
  if (n == 0) {
    *status = optimizer->pending_count > 0 ? QT_SUGGEST_STATUS_WAIT : QT_SUGGEST_STATUS_DONE;
    return 0;
  }
  qt_err local;
  qt_err_clear(&local);
  int rc = predict(qt, n, &local);
  if (rc == QT_ENUMERIC) {
    QT_LOG_DEBUG("%s: prediction failed (%s); restarting the surrogate", optimizer->vtable->name,
                 qt_err_message(&local));
    qt->failures++;
    qt->restart = 1;
    rc = train_surrogate(qt, err);
    if (rc != 0) return rc;
    qt_err_clear(&local);
    rc = predict(qt, n, &local);
    if (rc == QT_ENUMERIC) {
      qt->failures++;
      size_t pick = (size_t)qt_rng_uniform_int(qt->fallback_rng, n);
      out->candidate = qt->query_candidate[pick];
      out->epoch = qt->query_epoch[pick];
      *status = QT_SUGGEST_STATUS_OK;
      return 0;
    }
  }
  if (rc != 0) {
    if (err) *err = local;
    return rc;
  }
  size_t pick = qt__quicktune_select(optimizer, n, qt->query_epoch, qt->mean, qt->variance,
                                     qt->cost_aware ? qt->seconds : NULL, NULL);
  out->candidate = qt->query_candidate[pick];
  out->epoch = qt->query_epoch[pick];
  *status = QT_SUGGEST_STATUS_OK;
  return 0;
}

/* ========================================================================= */
/* Life cycle                                                                 */
/* ========================================================================= */

static void quicktune_free(qt_optimizer_t *optimizer) {
  quicktune_optimizer *qt = (quicktune_optimizer *)optimizer;
  qt_dkl_free(qt->dkl);
  qt_costnet_free(qt->costnet);
  qt_rng_free(qt->train_rng);
  qt_rng_free(qt->fallback_rng);
  free(qt->initial);
  free(qt->saved);
  free(qt->current);
  free(qt->log);
  free(qt->chosen);
  free(qt->seen);
  free(qt->mark);
  row_buffer_free(&qt->train);
  row_buffer_free(&qt->query);
  free(qt->query_candidate);
  free(qt->query_epoch);
  free(qt->mean);
  free(qt->variance);
  free(qt->seconds);
  free(qt->incumbents);
  free(qt->owned_encoded);
  qt__optimizer_base_free(optimizer);
  free(qt);
}

void qt__quicktune_get_info(qt_optimizer_t *optimizer, qt__quicktune_info *info) {
  quicktune_optimizer *qt = (quicktune_optimizer *)optimizer;
  qt_dkl_get_params(qt->dkl, qt->current);
  info->meta = qt->meta;
  info->cost_aware = qt->cost_aware;
  info->learning_rate = qt->learning_rate;
  info->patience = qt->params.patience;
  info->trainings = qt->trainings;
  info->restarts = qt->restarts;
  info->failures = qt->failures;
  info->last_steps = qt->last_steps;
  info->last_restarted = qt->last_restarted;
  info->last_rows = qt->last_rows;
  info->no_improvement = qt->no_improvement;
  info->restart_pending = qt->restart;
  info->initial = qt->initial;
  info->current = qt->current;
  info->param_count = qt->param_count;
}

static const qt__optimizer_vtable quicktune_vtables[4] = {
    {"quicktune", quicktune_suggest, quicktune_observe, NULL, quicktune_free},
    {"quicktune-M", quicktune_suggest, quicktune_observe, NULL, quicktune_free},
    {"quicktune-C", quicktune_suggest, quicktune_observe, NULL, quicktune_free},
    {"quicktune-MC", quicktune_suggest, quicktune_observe, NULL, quicktune_free}};

/* Fills zeros with defaults and checks the rest. */
static int resolve_params(const qt_quicktune_params *in, long fidelity_max, const char *name,
                          qt_quicktune_params *out, qt_err *err) {
  qt_quicktune_params defaults = qt_quicktune_default_params();
  *out = *in;
  if (out->restart_steps == 0) out->restart_steps = defaults.restart_steps;
  if (out->refine_steps == 0) out->refine_steps = defaults.refine_steps;
  if (out->initial_restarts == 0) out->initial_restarts = defaults.initial_restarts;
  if (out->patience == 0) out->patience = (long)floor(PATIENCE_FACTOR * (double)fidelity_max);
  if (out->restart_steps < 0 || out->refine_steps < 0 || out->initial_restarts < 0 ||
      out->patience < 1)
    return qt_err_set(err, QT_EINVAL,
                      "%s: steps, initial restarts and patience must not be negative (got %d, %d, "
                      "%d, %ld)",
                      name, out->restart_steps, out->refine_steps, out->initial_restarts,
                      out->patience);
  if (!(out->learning_rate >= 0.0) || !isfinite(out->learning_rate) || !isfinite(out->explore))
    return qt_err_set(err, QT_EINVAL, "%s: learning rate %g and xi %g must be finite, lr >= 0",
                      name, out->learning_rate, out->explore);
  return 0;
}

static int quicktune_create(const qt_pool *pool, const qt_optimizer_params *params, int meta,
                            int cost_aware, qt_optimizer_t **out, qt_err *err) {
  const qt__optimizer_vtable *vtable = &quicktune_vtables[(meta ? 0 : 1) + (cost_aware ? 0 : 2)];
  const char *name = vtable->name;
  qt_optimizer_params defaults = qt_optimizer_default_params();
  if (!params) params = &defaults;
  const qt_surrogate_t *surrogate = params->surrogate;
  if ((meta || cost_aware) && !surrogate)
    return qt_err_set(err, QT_EINVAL,
                      "%s needs a meta-trained surrogate file: make one with `qtune meta train "
                      "--meta-dataset DIR --out FILE` and pass it (qtune bench --surrogate FILE), "
                      "or let `qtune bench --meta-train-folds K` meta-train one per fold "
                      "(quicktune-MC needs none)",
                      name);

  quicktune_optimizer *qt = calloc(1, sizeof *qt);
  if (!qt) return qt_err_set(err, QT_ENOMEM, "out of memory for %s", name);
  qt_optimizer_t *base = &qt->base;
  int rc = qt__optimizer_base_init(base, vtable, pool, params, err);
  if (rc != 0) goto fail;
  qt->meta = meta;
  qt->cost_aware = cost_aware;
  rc = resolve_params(&params->quicktune, base->params.max_epochs, name, &qt->params, err);
  if (rc != 0) goto fail;
  qt->learning_rate = qt->params.learning_rate > 0.0 ? qt->params.learning_rate
                      : meta                         ? LR_META
                                                     : LR_FRESH;
  qt->best = -INFINITY;
  qt->restart = 1;

  /* The network's shape: the surrogate's, or the space's when there is
   * none. Budgets are epochs over the space's fidelity maximum, the scale
   * the surrogate was meta-trained with (its file checks it). */
  long fidelity_min = 0;
  qt_space_fidelity(pool->space, NULL, &fidelity_min, &qt->fidelity_max);
  if (surrogate) {
    rc = qt_surrogate_check_space(surrogate, pool->space, err);
    if (rc != 0) goto fail_prefix;
    qt->config = *qt_surrogate_config(surrogate);
    if (qt->config.meta_dim != pool->meta_dim) {
      rc = qt_err_set(err, QT_EINVAL,
                      "%s: the surrogate reads %zu dataset meta-features, the pool has %zu", name,
                      qt->config.meta_dim, pool->meta_dim);
      goto fail;
    }
  } else {
    qt->config = qt_dkl_space_config(pool->space, pool->meta_dim);
  }
  /* A surrogate with model descriptors reads its own encoding of the
   * candidates; a model it has no descriptors for is an error here. */
  qt->encoded = pool->encoded;
  if (surrogate && qt_surrogate_codec(surrogate)) {
    qt->owned_encoded =
        malloc((pool->count ? pool->count : 1) * qt->config.hp_dim * sizeof *qt->owned_encoded);
    if (!qt->owned_encoded) {
      rc = qt_err_set(err, QT_ENOMEM, "out of memory for %s", name);
      goto fail;
    }
    for (size_t c = 0; c < pool->count; c++) {
      rc = qt_surrogate_encode(surrogate, pool->space, &pool->configs[c],
                               qt->owned_encoded + c * qt->config.hp_dim, err);
      if (rc != 0) goto fail_prefix;
    }
    qt->encoded = qt->owned_encoded;
  }

  qt_rng_t *init_rng = NULL;
  rc = qt_rng_fork(base->rng, STREAM_INIT, &init_rng, err);
  if (rc == 0) rc = qt_rng_fork(base->rng, STREAM_TRAIN, &qt->train_rng, err);
  if (rc == 0) rc = qt_rng_fork(base->rng, STREAM_FALLBACK, &qt->fallback_rng, err);
  if (rc == 0) rc = qt_dkl_init(&qt->dkl, &qt->config, init_rng, err);
  if (rc == 0 && cost_aware) rc = qt_costnet_init(&qt->costnet, &qt->config, init_rng, err);
  qt_rng_free(init_rng);
  if (rc != 0) goto fail;
  qt->param_count = qt_dkl_param_count(qt->dkl);
  qt->initial = malloc(qt->param_count * sizeof *qt->initial);
  qt->saved = malloc(qt->param_count * sizeof *qt->saved);
  qt->current = malloc(qt->param_count * sizeof *qt->current);
  if (!qt->initial || !qt->saved || !qt->current) {
    rc = qt_err_set(err, QT_ENOMEM, "out of memory for %s", name);
    goto fail;
  }
  /* The restart state: the meta-trained parameters, or this fresh draw. */
  if (meta) {
    size_t count = 0;
    const double *trained = qt_surrogate_dkl_params(surrogate, &count);
    QT_ASSERT(count == qt->param_count);
    memcpy(qt->initial, trained, count * sizeof *qt->initial);
    rc = qt_dkl_set_params(qt->dkl, qt->initial, err);
  } else {
    qt_dkl_get_params(qt->dkl, qt->initial);
  }
  if (rc == 0 && cost_aware) {
    size_t count = 0;
    const double *trained = qt_surrogate_costnet_params(surrogate, &count);
    QT_ASSERT(count == qt_costnet_param_count(qt->costnet));
    rc = qt_costnet_set_params(qt->costnet, trained, err);
  }
  if (rc != 0) goto fail;

  size_t count = pool->count;
  long T = base->params.max_epochs;
  qt->seen = malloc(count * sizeof *qt->seen);
  qt->mark = calloc(count, sizeof *qt->mark);
  qt->query_candidate = malloc(count * sizeof *qt->query_candidate);
  qt->query_epoch = malloc(count * sizeof *qt->query_epoch);
  qt->mean = malloc(count * sizeof *qt->mean);
  qt->variance = malloc(count * sizeof *qt->variance);
  qt->seconds = malloc(count * sizeof *qt->seconds);
  qt->incumbents = malloc((size_t)(T + 1) * sizeof *qt->incumbents);
  if (!qt->seen || !qt->mark || !qt->query_candidate || !qt->query_epoch || !qt->mean ||
      !qt->variance || !qt->seconds || !qt->incumbents) {
    rc = qt_err_set(err, QT_ENOMEM, "out of memory for %s over %zu candidates", name, count);
    goto fail;
  }
  rc = row_buffer_reserve(&qt->query, &qt->config, count, err);
  if (rc != 0) goto fail;
  *out = base;
  return 0;

fail_prefix:
  rc = qt_err_prefix(err, rc, "%s", name);
fail:
  quicktune_free(base);
  return rc;
}

int qt__quicktune_create(const qt_pool *pool, const qt_optimizer_params *params,
                         qt_optimizer_t **out, qt_err *err) {
  return quicktune_create(pool, params, 1, 1, out, err);
}

int qt__quicktune_m_create(const qt_pool *pool, const qt_optimizer_params *params,
                           qt_optimizer_t **out, qt_err *err) {
  return quicktune_create(pool, params, 0, 1, out, err);
}

int qt__quicktune_c_create(const qt_pool *pool, const qt_optimizer_params *params,
                           qt_optimizer_t **out, qt_err *err) {
  return quicktune_create(pool, params, 1, 0, out, err);
}

int qt__quicktune_mc_create(const qt_pool *pool, const qt_optimizer_params *params,
                            qt_optimizer_t **out, qt_err *err) {
  return quicktune_create(pool, params, 0, 0, out, err);
}

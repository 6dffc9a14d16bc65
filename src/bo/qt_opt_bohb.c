/*
 * qt_opt_bohb.c - BOHB (Falkner, Klein & Hutter, ICML 2018): Hyperband's
 * brackets (the engine of qt_opt_sh.c, cycling s = s_max..0), with the new
 * configurations of each bracket proposed by a TPE-style density-ratio model
 * instead of drawn at random.
 *
 * Data. Every result at a budget of the Hyperband ladder (the rung epochs
 * R * eta^-j) is kept per budget as (candidate, loss), loss = -score.
 * [RECON] Curves are observed epoch by epoch, so a candidate that passes a
 * ladder epoch on its way up (a fresh start in a bracket s < s_max) adds a
 * result at that budget too; hpbandster only sees the budget a job was run
 * at. A candidate that ends before the epoch it was sent to adds a result at
 * that epoch: its last score when EXHAUSTED (as the rungs rank it), loss
 * +inf when it diverged or failed (hpbandster's rule for failed jobs).
 *
 * Model (hpbandster's CG_BOHB defaults): min_points_in_model = d + 1 with d
 * the number of hyperparameters, top_n_percent = 15, random_fraction = 1/3,
 * min_bandwidth = 1e-3. At budget b with N results sorted by loss,
 * n_good = max(d + 1, floor(15 N / 100)) best ones form the good set and the
 * next n_bad = max(d + 1, floor(85 N / 100)) the bad set; a model exists at
 * b when N >= d + 1 and both sets have more than d points. The model used
 * is the one of the largest budget that has one.
 *
 * Densities: product kernels over the hyperparameters, bandwidths by
 * statsmodels' normal_reference rule 1.06 * sd * m^(-1 / (4 + d)) (sd with
 * ddof 0, m the set's size), clipped below at 1e-3:
 *   - categorical and boolean hyperparameters: Aitchison-Aitken kernel on
 *     the choice index (1 - lambda on a match, lambda / (k - 1) otherwise),
 *     [RECON] with lambda also capped at (k - 1) / k, where the kernel is
 *     uniform; a conditional one has one more category, "inactive";
 *   - ordinal, integer and float: Gaussian kernel on the encoded value
 *     column (the position in [0, 1]; the -1 sentinel when inactive, where
 *     hpbandster imputes a value instead). [RECON] hpbandster uses an
 *     ordered (Wang-van Ryzin) kernel for ordinals; this uses the Gaussian.
 *
 * Proposal. For each new configuration of a bracket: with no model, or with
 * probability random_fraction, the next fresh candidate of the seeded
 * permutation (the same draw Hyperband makes); otherwise, since candidates
 * must come from the pool, every untried candidate is scored by
 * log l(x) - log g(x) (l: good density, g: bad density) and the best is
 * taken (ties: the earlier one in the permutation). hpbandster instead
 * samples 64 points around good configurations and keeps the best ratio;
 * scoring the whole pool is the pool-based equivalent. The ratio is taken in
 * log space, which orders the candidates as hpbandster's
 * max(l, 1e-32) / max(g, 1e-32) does wherever that does not underflow.
 *
 * Cost: a model is refit only when its budget gains a result (O(N log N +
 * P N d) for P untried candidates); each draw is then O(P).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bo/qt_bo_internal.h"

#define BOHB_TOP_N_PERCENT 15
#define BOHB_RANDOM_FRACTION (1.0 / 3.0)
#define BOHB_MIN_BANDWIDTH 1e-3

typedef struct bohb_result {
  double loss;
  size_t position; /* arrival order, the tie-break of the sort */
  size_t candidate;
} bohb_result;

typedef struct bohb_budget {
  long epoch;
  bohb_result *results; /* (count) in arrival order */
  size_t count, capacity;
} bohb_budget;

typedef struct bohb_optimizer {
  qt__bracket_optimizer bracket; /* first member */
  size_t n_vars;                 /* d: the number of hyperparameters */
  size_t *levels;                /* (d) 0: Gaussian variable; k >= 1: k categories */
  double *values;                /* (pool count, d) each candidate's kernel coordinates */
  size_t min_points;             /* d + 1 */
  bohb_budget *budgets;          /* (s_max + 1) one per ladder level */
  /* The fitted model, reused while its budget gains no result. */
  int model_level;               /* -1 when none is fitted */
  size_t model_points;           /* results it was fitted on */
  double *log_ratio;             /* (pool count) log l - log g of untried candidates */
  bohb_result *sorted;           /* (pool count) scratch: a budget's results by loss */
  double *bandwidth_good;        /* (d) */
  double *bandwidth_bad;         /* (d) */
} bohb_optimizer;

/* ------------------------------------------------------------------------- */
/* Results per budget                                                         */
/* ------------------------------------------------------------------------- */

static int budget_level(const bohb_optimizer *opt, long epoch) {
  for (int j = 0; j <= opt->bracket.s_max; j++) {
    if (opt->budgets[j].epoch == epoch) return j;
  }
  return -1;
}

static int budget_add(bohb_budget *budget, size_t candidate, double loss, qt_err *err) {
  if (budget->count == budget->capacity) {
    size_t capacity = budget->capacity ? 2 * budget->capacity : 32;
    bohb_result *results = realloc(budget->results, capacity * sizeof *results);
    if (!results) return qt_err_set(err, QT_ENOMEM, "out of memory for BOHB results");
    budget->results = results;
    budget->capacity = capacity;
  }
  budget->results[budget->count] = (bohb_result){loss, budget->count, candidate};
  budget->count++;
  return 0;
}

static size_t good_count(const bohb_optimizer *opt, size_t n) {
  size_t top = (BOHB_TOP_N_PERCENT * n) / 100;
  return top > opt->min_points ? top : opt->min_points;
}

static size_t bad_count(const bohb_optimizer *opt, size_t n) {
  size_t rest = ((100 - BOHB_TOP_N_PERCENT) * n) / 100;
  return rest > opt->min_points ? rest : opt->min_points;
}

/* hpbandster's conditions for fitting a model on n results (sizes of the
 * good and bad sets must exceed the dimension). */
static int budget_has_model(const bohb_optimizer *opt, size_t n) {
  if (n < opt->min_points) return 0;
  size_t good = good_count(opt, n);
  if (good > n) good = n;
  size_t bad = bad_count(opt, n);
  if (bad > n - good) bad = n - good;
  return good > opt->n_vars && bad > opt->n_vars;
}

/* ------------------------------------------------------------------------- */
/* Kernel density estimates                                                   */
/* ------------------------------------------------------------------------- */

static int compare_results(const void *pa, const void *pb) {
  const bohb_result *a = pa, *b = pb;
  if (a->loss < b->loss) return -1;
  if (a->loss > b->loss) return 1;
  return (a->position > b->position) - (a->position < b->position);
}

/* Bandwidths of the set rows[0..m) (normal_reference, clipped). */
static void fit_bandwidths(const bohb_optimizer *opt, const bohb_result *rows, size_t m,
                           double *bandwidth) {
  size_t d = opt->n_vars;
  double factor = 1.06 * pow((double)m, -1.0 / (4.0 + (double)d));
  for (size_t j = 0; j < d; j++) {
    double mean = 0.0;
    for (size_t i = 0; i < m; i++) mean += opt->values[rows[i].candidate * d + j];
    mean /= (double)m;
    double var = 0.0;
    for (size_t i = 0; i < m; i++) {
      double dx = opt->values[rows[i].candidate * d + j] - mean;
      var += dx * dx;
    }
    double bw = factor * sqrt(var / (double)m);
    if (bw < BOHB_MIN_BANDWIDTH) bw = BOHB_MIN_BANDWIDTH;
    size_t k = opt->levels[j];
    if (k >= 2 && bw > (double)(k - 1) / (double)k) bw = (double)(k - 1) / (double)k;
    bandwidth[j] = bw;
  }
}

/* log of the density of the set rows[0..m) at candidate c's coordinates. */
static double log_density(const bohb_optimizer *opt, const bohb_result *rows, size_t m,
                          const double *bandwidth, size_t c) {
  static const double half_log_2pi = 0.91893853320467274178;
  size_t d = opt->n_vars;
  const double *x = opt->values + c * d;
  /* Log-sum-exp over the kernel centers, in one pass with a running max. */
  double max_term = -INFINITY, sum = 0.0;
  for (size_t i = 0; i < m; i++) {
    const double *y = opt->values + rows[i].candidate * d;
    double term = 0.0;
    for (size_t j = 0; j < d; j++) {
      size_t k = opt->levels[j];
      double h = bandwidth[j];
      if (k == 0) {
        double z = (x[j] - y[j]) / h;
        term += -0.5 * z * z - log(h) - half_log_2pi;
      } else if (k >= 2) {
        term += x[j] == y[j] ? log(1.0 - h) : log(h / (double)(k - 1));
      }
    }
    if (term > max_term) {
      sum = sum * exp(max_term - term) + 1.0;
      max_term = term;
    } else {
      sum += exp(term - max_term);
    }
  }
  return max_term + log(sum) - log((double)m);
}

/* Fits the good and bad densities on budget `level` and scores every
 * untried candidate. */
static void fit_model(bohb_optimizer *opt, int level) {
  const qt_optimizer_t *base = &opt->bracket.base;
  const bohb_budget *budget = &opt->budgets[level];
  size_t n = budget->count;
  memcpy(opt->sorted, budget->results, n * sizeof *opt->sorted);
  qsort(opt->sorted, n, sizeof *opt->sorted, compare_results);
  size_t good = good_count(opt, n);
  if (good > n) good = n;
  size_t bad = bad_count(opt, n);
  if (bad > n - good) bad = n - good;
  const bohb_result *good_rows = opt->sorted, *bad_rows = opt->sorted + good;
  fit_bandwidths(opt, good_rows, good, opt->bandwidth_good);
  fit_bandwidths(opt, bad_rows, bad, opt->bandwidth_bad);
  for (size_t c = 0; c < base->pool->count; c++) {
    if (!qt__trial_is_fresh(base, c)) {
      opt->log_ratio[c] = -INFINITY;
      continue;
    }
    opt->log_ratio[c] = log_density(opt, good_rows, good, opt->bandwidth_good, c) -
                        log_density(opt, bad_rows, bad, opt->bandwidth_bad, c);
  }
  opt->model_level = level;
  opt->model_points = n;
}

/* ------------------------------------------------------------------------- */
/* The bracket's source of new configurations                                 */
/* ------------------------------------------------------------------------- */

static int bohb_draw(qt__bracket_optimizer *bracket, size_t *candidate, qt_err *err) {
  bohb_optimizer *opt = (bohb_optimizer *)bracket;
  qt_optimizer_t *base = &bracket->base;
  (void)err;
  int level = -1;
  for (int j = bracket->s_max; j >= 0; j--) {
    if (budget_has_model(opt, opt->budgets[j].count)) {
      level = j;
      break;
    }
  }
  if (level < 0 || qt_rng_uniform(base->rng) < BOHB_RANDOM_FRACTION)
    return qt__draw_fresh(base, candidate);
  if (opt->model_level != level || opt->model_points != opt->budgets[level].count)
    fit_model(opt, level);

  /* The best ratio among untried candidates, in permutation order so that
   * ties fall to the seeded order. Every untried one sits at or after
   * order_next. */
  int found = 0;
  double best = -INFINITY;
  for (size_t p = base->order_next; p < base->pool->count; p++) {
    size_t c = base->order[p];
    if (!qt__trial_is_fresh(base, c)) continue;
    if (!found || opt->log_ratio[c] > best) {
      best = opt->log_ratio[c];
      *candidate = c;
      found = 1;
    }
  }
  return found;
}

/* ------------------------------------------------------------------------- */
/* Recording results                                                          */
/* ------------------------------------------------------------------------- */

/* A candidate ended before its target epoch: a result at that budget. */
static int record_end(bohb_optimizer *opt, size_t candidate, qt_err *err) {
  const qt_optimizer_t *base = &opt->bracket.base;
  const qt__trial *t = &base->trials[candidate];
  if (t->target == 0 || t->last_epoch >= t->target) return 0;
  int level = budget_level(opt, t->target);
  if (level < 0) return 0;
  double score = qt__trial_rung_score(base, candidate, t->target);
  return budget_add(&opt->budgets[level], candidate, isfinite(score) ? -score : INFINITY, err);
}

static int bohb_observe(qt_optimizer_t *optimizer, size_t candidate, long epoch,
                        const qt_observation *observation, qt_err *err) {
  bohb_optimizer *opt = (bohb_optimizer *)optimizer;
  if (observation->status != QT_OBS_STATUS_OK) return record_end(opt, candidate, err);
  int level = budget_level(opt, epoch);
  if (level < 0) return 0;
  return budget_add(&opt->budgets[level], candidate, -observation->score, err);
}

static int bohb_fail(qt_optimizer_t *optimizer, size_t candidate, qt_err *err) {
  return record_end((bohb_optimizer *)optimizer, candidate, err);
}

/* ------------------------------------------------------------------------- */
/* Creation                                                                   */
/* ------------------------------------------------------------------------- */

static void bohb_free(qt_optimizer_t *optimizer) {
  bohb_optimizer *opt = (bohb_optimizer *)optimizer;
  if (opt->budgets) {
    for (int j = 0; j <= opt->bracket.s_max; j++) free(opt->budgets[j].results);
    free(opt->budgets);
  }
  free(opt->levels);
  free(opt->values);
  free(opt->log_ratio);
  free(opt->sorted);
  free(opt->bandwidth_good);
  free(opt->bandwidth_bad);
  qt__bracket_release(&opt->bracket);
  free(opt);
}

static const qt__optimizer_vtable bohb_vtable = {"bohb", qt__bracket_suggest, bohb_observe,
                                                 bohb_fail, bohb_free};

/* The kernel coordinates of every candidate: a choice index (with the last
 * category for "inactive") or the encoded value column. */
static void fill_values(bohb_optimizer *opt, const qt_pool *pool) {
  const qt_space_t *space = pool->space;
  size_t d = opt->n_vars;
  for (size_t j = 0; j < d; j++) {
    qt_hp_type type = qt_space_hp_type(space, j);
    int categorical = type == QT_HP_TYPE_CATEGORICAL || type == QT_HP_TYPE_BOOLEAN;
    size_t offset = qt_space_encoded_offset(space, j, NULL);
    if (categorical) {
      size_t k = type == QT_HP_TYPE_BOOLEAN ? 2 : qt_space_hp_choice_count(space, j);
      if (qt_space_hp_condition_count(space, j) > 0) k++;
      opt->levels[j] = k;
    } else {
      opt->levels[j] = 0;
    }
    for (size_t c = 0; c < pool->count; c++) {
      double v;
      if (categorical) {
        long index = qt_config_index(&pool->configs[c], j);
        v = index >= 0 ? (double)index : (double)(opt->levels[j] - 1);
      } else {
        v = pool->encoded[c * pool->dim + offset];
      }
      opt->values[c * d + j] = v;
    }
  }
}

int qt__bohb_create(const qt_pool *pool, const qt_optimizer_params *params, qt_optimizer_t **out,
                    qt_err *err) {
  bohb_optimizer *opt = calloc(1, sizeof *opt);
  if (!opt) return qt_err_set(err, QT_ENOMEM, "out of memory for BOHB");
  int rc = qt__bracket_init(&opt->bracket, &bohb_vtable, pool, params, 1, bohb_draw, err);
  if (rc == 0) {
    size_t d = qt_space_count(pool->space);
    int s_max = opt->bracket.s_max;
    opt->n_vars = d;
    opt->min_points = d + 1;
    opt->model_level = -1;
    opt->levels = calloc(d ? d : 1, sizeof *opt->levels);
    opt->values = malloc(pool->count * (d ? d : 1) * sizeof *opt->values);
    opt->budgets = calloc((size_t)s_max + 1, sizeof *opt->budgets);
    opt->log_ratio = malloc(pool->count * sizeof *opt->log_ratio);
    opt->sorted = malloc(pool->count * sizeof *opt->sorted);
    opt->bandwidth_good = malloc((d ? d : 1) * sizeof *opt->bandwidth_good);
    opt->bandwidth_bad = malloc((d ? d : 1) * sizeof *opt->bandwidth_bad);
    if (!opt->levels || !opt->values || !opt->budgets || !opt->log_ratio || !opt->sorted ||
        !opt->bandwidth_good || !opt->bandwidth_bad) {
      rc = qt_err_set(err, QT_ENOMEM, "out of memory for BOHB over %zu candidates", pool->count);
    } else {
      for (int j = 0; j <= s_max; j++)
        opt->budgets[j].epoch =
            qt__schedule_ladder_epoch(opt->bracket.base.params.max_epochs, opt->bracket.eta,
                                      s_max, j);
      fill_values(opt, pool);
    }
  }
  if (rc != 0) {
    bohb_free(&opt->bracket.base);
    return rc;
  }
  *out = &opt->bracket.base;
  return 0;
}

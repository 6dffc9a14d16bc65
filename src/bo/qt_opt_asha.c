/*
 * qt_opt_asha.c - asynchronous successive halving (ASHA; Li et al.,
 * "A System for Massively Parallel Hyperparameter Tuning", MLSys 2020,
 * Algorithm 2 with early-stopping rate s = 0).
 *
 * Rungs k = 0..K sit at r * eta^k epochs (r = min_epochs, rounded to the
 * nearest epoch), K = floor(log_eta(R / r)). [RECON] When r * eta^K < R,
 * R is added as one more, final rung (syne-tune's convention, which
 * Quick-Tune's ASHA baseline ran with), so the best configurations are
 * trained to the full budget; when R / r is a power of eta the rungs are
 * exactly the paper's.
 *
 * A candidate enters rung k when it reaches rung k's epoch (its score there
 * is recorded). suggest applies the paper's rule exactly:
 *   for k = K_top - 1 down to 0: among the top floor(n_k / eta) of rung k
 *   (n_k = its size now; ranked by score, ties to the earlier entry), take
 *   the best one not yet promoted and promote it: advance it to rung k+1's
 *   epoch. If no rung has one, start a fresh random candidate at rung 0.
 * With no fresh candidate left: WAIT while trials are pending (their
 * results may allow a promotion), else DONE.
 *
 * Ended candidates: a candidate that ends before reaching the rung it was
 * sent to (EXHAUSTED, DIVERGED, FAILED) still enters that rung, with the
 * rung score of qt__trial_rung_score (its last score when EXHAUSTED, -inf
 * otherwise), and counts toward n_k, but it is never promoted; a top-ranked
 * one therefore uses up a promotion, as in synchronous SH (qt_opt_sh.c).
 * A rung member that cannot be advanced for any other reason is skipped by
 * the same test.
 *
 * Each rung is kept sorted (insertion in O(n_k)), so suggest reads only the
 * top floor(n_k / eta) entries of each rung.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bo/qt_bo_internal.h"

typedef struct asha_entry {
  double score;
  size_t candidate;
  int promoted; /* 1 once promoted, or when it can never be */
} asha_entry;

typedef struct asha_rung {
  long epoch;
  asha_entry *entries; /* (count) sorted by descending score, ties by entry order */
  size_t count, capacity;
} asha_rung;

typedef struct asha_optimizer {
  qt_optimizer_t base; /* first member */
  double eta;
  asha_rung *rungs;  /* (rung_count) */
  int rung_count;
  int *target_rung;  /* (pool count) the rung each candidate was last sent to; -1 none */
  int *entered;      /* (pool count) highest rung entered; -1 none */
} asha_optimizer;

static int rung_insert(asha_rung *rung, double score, size_t candidate, int promoted, qt_err *err) {
  if (rung->count == rung->capacity) {
    size_t capacity = rung->capacity ? 2 * rung->capacity : 16;
    asha_entry *entries = realloc(rung->entries, capacity * sizeof *entries);
    if (!entries) return qt_err_set(err, QT_ENOMEM, "out of memory for an ASHA rung");
    rung->entries = entries;
    rung->capacity = capacity;
  }
  /* After every entry with a score >= this one: ties keep entry order. */
  size_t at = rung->count;
  while (at > 0 && !(rung->entries[at - 1].score >= score)) at--;
  memmove(rung->entries + at + 1, rung->entries + at, (rung->count - at) * sizeof *rung->entries);
  rung->entries[at] = (asha_entry){score, candidate, promoted};
  rung->count++;
  return 0;
}

static int enter_rung(asha_optimizer *opt, size_t candidate, int k, int promotable, qt_err *err) {
  if (opt->entered[candidate] >= k) return 0;
  opt->entered[candidate] = k;
  double score = qt__trial_rung_score(&opt->base, candidate, opt->rungs[k].epoch);
  return rung_insert(&opt->rungs[k], score, candidate, !promotable, err);
}

static int asha_suggest(qt_optimizer_t *optimizer, qt_suggestion *out, qt_suggest_status *status,
                        qt_err *err) {
  asha_optimizer *opt = (asha_optimizer *)optimizer;
  (void)err;
  for (int k = opt->rung_count - 2; k >= 0; k--) {
    asha_rung *rung = &opt->rungs[k];
    size_t top = qt__schedule_promotions(rung->count, opt->eta);
    for (size_t i = 0; i < top; i++) {
      asha_entry *e = &rung->entries[i];
      if (e->promoted) continue;
      const qt__trial *t = &optimizer->trials[e->candidate];
      if (!qt__trial_can_advance(optimizer, e->candidate) || t->pending) {
        /* Ended (or failed from outside) after entering: never promotable.
         * A pending member cannot exist (it entered by reaching the rung and
         * was not sent further), but is skipped the same way. */
        if (!t->pending) e->promoted = 1;
        continue;
      }
      if (t->last_epoch >= opt->rungs[k + 1].epoch) {
        /* Observed beyond the next rung from outside: it entered that rung
         * on its own. */
        e->promoted = 1;
        continue;
      }
      e->promoted = 1;
      opt->target_rung[e->candidate] = k + 1;
      out->candidate = e->candidate;
      out->epoch = opt->rungs[k + 1].epoch;
      *status = QT_SUGGEST_STATUS_OK;
      return 0;
    }
  }
  size_t c;
  if (qt__draw_fresh(optimizer, &c)) {
    opt->target_rung[c] = 0;
    out->candidate = c;
    out->epoch = opt->rungs[0].epoch;
    *status = QT_SUGGEST_STATUS_OK;
    return 0;
  }
  *status = optimizer->pending_count > 0 ? QT_SUGGEST_STATUS_WAIT : QT_SUGGEST_STATUS_DONE;
  return 0;
}

static int asha_observe(qt_optimizer_t *optimizer, size_t candidate, long epoch,
                        const qt_observation *observation, qt_err *err) {
  asha_optimizer *opt = (asha_optimizer *)optimizer;
  if (observation->status == QT_OBS_STATUS_OK) {
    for (int k = 0; k < opt->rung_count; k++) {
      if (opt->rungs[k].epoch == epoch) return enter_rung(opt, candidate, k, 1, err);
    }
    return 0;
  }
  /* Ended on the way to its target rung: it enters that rung, unpromotable. */
  int k = opt->target_rung[candidate];
  if (k >= 0 && optimizer->trials[candidate].last_epoch < opt->rungs[k].epoch)
    return enter_rung(opt, candidate, k, 0, err);
  return 0;
}

static int asha_fail(qt_optimizer_t *optimizer, size_t candidate, qt_err *err) {
  asha_optimizer *opt = (asha_optimizer *)optimizer;
  int k = opt->target_rung[candidate];
  if (k >= 0 && optimizer->trials[candidate].last_epoch < opt->rungs[k].epoch)
    return enter_rung(opt, candidate, k, 0, err);
  return 0;
}

static void asha_free(qt_optimizer_t *optimizer) {
  asha_optimizer *opt = (asha_optimizer *)optimizer;
  if (opt->rungs) {
    for (int k = 0; k < opt->rung_count; k++) free(opt->rungs[k].entries);
    free(opt->rungs);
  }
  free(opt->target_rung);
  free(opt->entered);
  qt__optimizer_base_free(optimizer);
  free(opt);
}

static const qt__optimizer_vtable asha_vtable = {"asha", asha_suggest, asha_observe, asha_fail,
                                                 asha_free};

int qt__asha_create(const qt_pool *pool, const qt_optimizer_params *params, qt_optimizer_t **out,
                    qt_err *err) {
  asha_optimizer *opt = calloc(1, sizeof *opt);
  if (!opt) return qt_err_set(err, QT_ENOMEM, "out of memory for ASHA");
  int rc = qt__optimizer_base_init(&opt->base, &asha_vtable, pool, params, err);
  if (rc == 0) rc = qt__optimizer_check_eta(opt->base.params.eta, err);
  if (rc == 0) {
    const qt_optimizer_params *p = &opt->base.params;
    opt->eta = p->eta;
    int top = qt__schedule_s_max(p->min_epochs, p->max_epochs, p->eta);
    long top_epoch = lround((double)p->min_epochs * pow(p->eta, (double)top));
    if (top_epoch > p->max_epochs) top_epoch = p->max_epochs;
    opt->rung_count = top + 1 + (top_epoch < p->max_epochs ? 1 : 0);
    opt->rungs = calloc((size_t)opt->rung_count, sizeof *opt->rungs);
    opt->target_rung = malloc(pool->count * sizeof *opt->target_rung);
    opt->entered = malloc(pool->count * sizeof *opt->entered);
    if (!opt->rungs || !opt->target_rung || !opt->entered) {
      rc = qt_err_set(err, QT_ENOMEM, "out of memory for ASHA");
    } else {
      for (int k = 0; k <= top; k++) {
        long epoch = lround((double)p->min_epochs * pow(p->eta, (double)k));
        opt->rungs[k].epoch = epoch > p->max_epochs ? p->max_epochs : epoch;
      }
      if (opt->rung_count > top + 1) opt->rungs[top + 1].epoch = p->max_epochs;
      for (size_t i = 0; i < pool->count; i++) opt->target_rung[i] = opt->entered[i] = -1;
    }
  }
  if (rc != 0) {
    asha_free(&opt->base);
    return rc;
  }
  *out = &opt->base;
  return 0;
}

/*
 * qt_opt_sh.c - synchronous successive halving (Jamieson & Talwalkar 2016,
 * as one bracket of Li et al.'s Hyperband, 2018) and the bracket engine that
 * Hyperband (qt_opt_hyperband.c) and BOHB (qt_opt_bohb.c) reuse.
 *
 * Schedule (r = min_epochs, R = max_epochs): s_max = floor(log_eta(R / r)).
 * Bracket s starts n = ceil((s_max + 1) / (s + 1) * eta^s) configurations;
 * rung i = 0..s holds n_i = floor(n * eta^-i) of them, trained to
 * r_i = R * eta^(i - s) epochs, rounded to the nearest epoch. SH runs bracket
 * s = s_max over and over: n = eta^s_max configurations at the lowest rung.
 * [RECON] When R / r is not a power of eta the lowest rung is
 * round(R * eta^-s_max) >= r epochs (Li et al.'s and hpbandster's budgets,
 * rounded), not r itself.
 *
 * Each rung: every member is advanced to the rung's epoch (in arrival order;
 * rung 0 draws its members lazily, one per suggestion). When every member
 * has reached the epoch or ended, the top floor(n_i / eta) members by their
 * score at that epoch are promoted (ties: the earlier arrival first). The
 * rung score of a member that ended before the epoch is its last recorded
 * score when it ended EXHAUSTED (its run simply has no more epochs), -inf
 * when it DIVERGED or FAILED. A selected member that cannot be advanced
 * (ended, or already at R) is not promoted and its place is not given to the
 * next one: SH's schedule fixes how many survive, and a run that has no more
 * epochs has finished, not lost. The counts n_i are the schedule's even when
 * the pool ran short at rung 0 (Li et al.'s pseudocode), so a short rung
 * promotes up to n_{i+1} of what it has.
 *
 * After rung s the bracket ends and the next one starts with new
 * configurations, so the optimizer keeps working until the budget runs out.
 * suggest answers WAIT when the current rung cannot finish because members
 * are pending (brackets are synchronous), and DONE when a bracket cannot draw
 * a single new configuration (the pool is used up) and nothing is pending.
 */
#include <math.h>
#include <stdlib.h>

#include "bo/qt_bo_internal.h"

/* ------------------------------------------------------------------------- */
/* The bracket engine                                                         */
/* ------------------------------------------------------------------------- */

static int default_draw(qt__bracket_optimizer *bracket, size_t *candidate, qt_err *err) {
  (void)err;
  return qt__draw_fresh(&bracket->base, candidate);
}

int qt__bracket_init(qt__bracket_optimizer *bracket, const qt__optimizer_vtable *vtable,
                     const qt_pool *pool, const qt_optimizer_params *params, int hyperband,
                     qt__bracket_draw_fn draw, qt_err *err) {
  int rc = qt__optimizer_base_init(&bracket->base, vtable, pool, params, err);
  if (rc != 0) return rc;
  const qt_optimizer_params *p = &bracket->base.params;
  rc = qt__optimizer_check_eta(p->eta, err);
  if (rc != 0) return rc;
  bracket->hyperband = hyperband;
  bracket->eta = p->eta;
  bracket->s_max = qt__schedule_s_max(p->min_epochs, p->max_epochs, p->eta);
  bracket->draw = draw ? draw : default_draw;

  /* No rung holds more than the largest bracket's n or the pool. */
  size_t capacity = 0;
  for (int s = 0; s <= bracket->s_max; s++) {
    size_t n = qt__schedule_bracket_n(bracket->s_max, s, bracket->eta);
    if (n > capacity) capacity = n;
  }
  if (capacity > pool->count) capacity = pool->count;
  bracket->capacity = capacity;
  bracket->members = malloc(capacity * sizeof *bracket->members);
  bracket->ranked = malloc(capacity * sizeof *bracket->ranked);
  if (!bracket->members || !bracket->ranked)
    return qt_err_set(err, QT_ENOMEM, "out of memory for brackets of %zu configurations", capacity);
  return 0;
}

void qt__bracket_release(qt__bracket_optimizer *bracket) {
  free(bracket->members);
  free(bracket->ranked);
  bracket->members = NULL;
  bracket->ranked = NULL;
  qt__optimizer_base_free(&bracket->base);
}

static void bracket_start(qt__bracket_optimizer *b) {
  int s = b->s_max;
  if (b->hyperband) s = b->s_max - (int)(b->brackets_done % (long)(b->s_max + 1));
  b->s = s;
  b->rung = 0;
  b->filling = 1;
  b->planned = qt__schedule_rung_size(b->s_max, s, b->eta, 0);
  if (b->planned > b->capacity) b->planned = b->capacity;
  b->member_count = 0;
  b->active = 1;
}

static void bracket_end(qt__bracket_optimizer *b) {
  b->active = 0;
  b->brackets_done++;
}

/* Descending score, then ascending position (the earlier arrival wins). */
static int compare_ranked(const void *pa, const void *pb) {
  const qt__ranked *a = pa, *b = pb;
  if (a->score > b->score) return -1;
  if (a->score < b->score) return 1;
  return (a->position > b->position) - (a->position < b->position);
}

/* Keeps the top floor(n_i / eta) members that can still be advanced. */
static void bracket_promote(qt__bracket_optimizer *b, long epoch) {
  const qt_optimizer_t *opt = &b->base;
  size_t planned = qt__schedule_rung_size(b->s_max, b->s, b->eta, b->rung);
  size_t keep = qt__schedule_promotions(planned, b->eta);
  for (size_t i = 0; i < b->member_count; i++) {
    size_t c = b->members[i];
    b->ranked[i] = (qt__ranked){qt__trial_rung_score(opt, c, epoch), i, c};
  }
  qsort(b->ranked, b->member_count, sizeof *b->ranked, compare_ranked);
  if (keep > b->member_count) keep = b->member_count;
  size_t count = 0;
  for (size_t i = 0; i < keep; i++) {
    size_t c = b->ranked[i].candidate;
    if (qt__trial_can_advance(opt, c)) b->members[count++] = c;
  }
  b->member_count = count;
  b->rung++;
  b->planned = qt__schedule_rung_size(b->s_max, b->s, b->eta, b->rung);
}

int qt__bracket_suggest(qt_optimizer_t *optimizer, qt_suggestion *out, qt_suggest_status *status,
                        qt_err *err) {
  qt__bracket_optimizer *b = (qt__bracket_optimizer *)optimizer;
  const qt__trial *trials = optimizer->trials;
  for (;;) {
    if (!b->active) bracket_start(b);
    long epoch = qt__schedule_rung_epoch(optimizer->params.max_epochs, b->eta, b->s_max, b->s,
                                         b->rung);

    /* A member below the rung's epoch that is alive and idle goes next. */
    int waiting = 0;
    for (size_t i = 0; i < b->member_count; i++) {
      size_t c = b->members[i];
      const qt__trial *t = &trials[c];
      if (t->pending) {
        waiting = 1;
        continue;
      }
      if (t->end == QT_OBS_STATUS_OK && t->last_epoch < epoch) {
        out->candidate = c;
        out->epoch = epoch;
        *status = QT_SUGGEST_STATUS_OK;
        return 0;
      }
    }

    /* Rung 0 draws its members one suggestion at a time. */
    if (b->rung == 0 && b->filling && b->member_count < b->planned) {
      size_t c;
      int drawn = b->draw(b, &c, err);
      if (drawn < 0) return drawn;
      if (drawn) {
        b->members[b->member_count++] = c;
        out->candidate = c;
        out->epoch = epoch;
        *status = QT_SUGGEST_STATUS_OK;
        return 0;
      }
      b->filling = 0; /* the pool ran dry: the rung is what it has */
    }
    if (waiting) {
      *status = QT_SUGGEST_STATUS_WAIT;
      return 0;
    }

    /* The rung is complete. */
    if (b->member_count == 0) {
      /* Only a bracket that could not draw anything gets here at rung 0. */
      bracket_end(b);
      *status = optimizer->pending_count > 0 ? QT_SUGGEST_STATUS_WAIT : QT_SUGGEST_STATUS_DONE;
      return 0;
    }
    if (b->rung == b->s) {
      bracket_end(b);
      continue;
    }
    bracket_promote(b, epoch);
    if (b->member_count == 0) bracket_end(b);
  }
}

/* ------------------------------------------------------------------------- */
/* Successive halving                                                         */
/* ------------------------------------------------------------------------- */

static void sh_free(qt_optimizer_t *optimizer) {
  qt__bracket_release((qt__bracket_optimizer *)optimizer);
  free(optimizer);
}

static const qt__optimizer_vtable sh_vtable = {"sh", qt__bracket_suggest, NULL, NULL, sh_free};

int qt__sh_create(const qt_pool *pool, const qt_optimizer_params *params, qt_optimizer_t **out,
                  qt_err *err) {
  qt__bracket_optimizer *b = calloc(1, sizeof *b);
  if (!b) return qt_err_set(err, QT_ENOMEM, "out of memory for successive halving");
  int rc = qt__bracket_init(b, &sh_vtable, pool, params, 0, NULL, err);
  if (rc != 0) {
    sh_free(&b->base);
    return rc;
  }
  *out = &b->base;
  return 0;
}

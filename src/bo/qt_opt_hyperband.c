/*
 * qt_opt_hyperband.c - Hyperband (Li et al., JMLR 2018): the brackets
 * s = s_max, s_max - 1, ..., 0 of successive halving, run one after another
 * and repeated from s_max until the budget or the pool runs out. Bracket s
 * starts n = ceil((s_max + 1) / (s + 1) * eta^s) configurations at
 * R * eta^-s epochs; the rungs, promotions and the EXHAUSTED rule are the
 * engine's (qt_opt_sh.c). For eta = 3, R = 27, r = 1:
 *
 *   s = 3: 27 @ 1, 9 @ 3, 3 @ 9, 1 @ 27     s = 1: 6 @ 9, 2 @ 27
 *   s = 2: 12 @ 3, 4 @ 9, 1 @ 27            s = 0: 4 @ 27
 *
 * [RECON] Brackets run sequentially (one at a time), as in the paper's
 * pseudocode; with several workers a rung that waits for pending trials
 * makes suggest answer WAIT rather than opening the next bracket early.
 */
#include <stdlib.h>

#include "bo/qt_bo_internal.h"

static void hyperband_free(qt_optimizer_t *optimizer) {
  qt__bracket_release((qt__bracket_optimizer *)optimizer);
  free(optimizer);
}

static const qt__optimizer_vtable hyperband_vtable = {"hyperband", qt__bracket_suggest, NULL, NULL,
                                                      hyperband_free};

int qt__hyperband_create(const qt_pool *pool, const qt_optimizer_params *params,
                         qt_optimizer_t **out, qt_err *err) {
  qt__bracket_optimizer *b = calloc(1, sizeof *b);
  if (!b) return qt_err_set(err, QT_ENOMEM, "out of memory for Hyperband");
  int rc = qt__bracket_init(b, &hyperband_vtable, pool, params, 1, NULL, err);
  if (rc != 0) {
    hyperband_free(&b->base);
    return rc;
  }
  *out = &b->base;
  return 0;
}

/*
 * qt_opt_random.c - random search as in Quick-Tune's benchmark
 * (specs §1.10, random_search.py): a configuration drawn uniformly from the
 * untried candidates is trained on its full curve, to max_epochs or until
 * its run ends (EXHAUSTED, DIVERGED, FAILED), then the next one.
 *
 * suggest returns the next fresh candidate of the seeded permutation with
 * target max_epochs. A suggestion stays pending until the candidate reaches
 * max_epochs or ends, so with several workers the pending ones are simply
 * passed over and each worker gets a new candidate. When no fresh candidate
 * is left: WAIT while any is pending, else DONE.
 */
#include <stdlib.h>

#include "bo/qt_bo_internal.h"

static int random_suggest(qt_optimizer_t *optimizer, qt_suggestion *out, qt_suggest_status *status,
                          qt_err *err) {
  (void)err;
  size_t c;
  if (qt__draw_fresh(optimizer, &c)) {
    out->candidate = c;
    out->epoch = optimizer->params.max_epochs;
    *status = QT_SUGGEST_STATUS_OK;
    return 0;
  }
  *status = optimizer->pending_count > 0 ? QT_SUGGEST_STATUS_WAIT : QT_SUGGEST_STATUS_DONE;
  return 0;
}

static void random_free(qt_optimizer_t *optimizer) {
  qt__optimizer_base_free(optimizer);
  free(optimizer);
}

static const qt__optimizer_vtable random_vtable = {"random", random_suggest, NULL, NULL,
                                                   random_free};

int qt__random_create(const qt_pool *pool, const qt_optimizer_params *params,
                      qt_optimizer_t **out, qt_err *err) {
  qt_optimizer_t *opt = calloc(1, sizeof *opt);
  if (!opt) return qt_err_set(err, QT_ENOMEM, "out of memory for the random optimizer");
  int rc = qt__optimizer_base_init(opt, &random_vtable, pool, params, err);
  if (rc != 0) {
    random_free(opt);
    return rc;
  }
  *out = opt;
  return 0;
}

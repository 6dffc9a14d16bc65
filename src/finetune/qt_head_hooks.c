/*
 * qt_head_hooks.c - head dropout and the feature hook's gradient buffer,
 * shared by the model families (see qt_finetune_internal.h).
 */
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune_internal.h"

int qt__head_hooks_set_dropout(qt__head_hooks *h, size_t cap, double rate, qt_rng_t *rng,
                               const char *family, qt_err *err) {
  if (!(rate >= 0.0 && rate < 1.0))
    return qt_err_set(err, QT_EINVAL, "head dropout rate %g is not in [0, 1)", rate);
  if (rate > 0.0 && !h->drop_mask) {
    h->drop_mask = malloc((cap ? cap : 1) * sizeof *h->drop_mask);
    if (!h->drop_mask) return qt_err_set(err, QT_ENOMEM, "%s: out of memory for dropout", family);
  }
  h->drop_rate = rate;
  h->drop_rng = rng;
  return 0;
}

int qt__head_hooks_set_feature_grad(qt__head_hooks *h, size_t cap, int on, const char *family,
                                    qt_err *err) {
  if (!on) {
    free(h->dfeat);
    h->dfeat = NULL;
    return 0;
  }
  if (h->dfeat) return 0;
  h->dfeat = calloc(cap ? cap : 1, sizeof *h->dfeat);
  if (!h->dfeat)
    return qt_err_set(err, QT_ENOMEM, "%s: out of memory for the feature hook", family);
  return 0;
}

int qt__head_hooks_draw(qt__head_hooks *h, size_t n) {
  h->dropped = h->drop_rate > 0.0 && h->drop_rng != NULL;
  if (h->dropped) {
    float keep_scale = (float)(1.0 / (1.0 - h->drop_rate));
    for (size_t k = 0; k < n; k++)
      h->drop_mask[k] = qt_rng_uniform(h->drop_rng) < h->drop_rate ? 0.0f : keep_scale;
  }
  return h->dropped;
}

void qt__head_hooks_free(qt__head_hooks *h) {
  free(h->drop_mask);
  free(h->dfeat);
  memset(h, 0, sizeof *h);
}

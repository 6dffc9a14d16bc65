/*
 * qt_finetune_internal.h - helpers shared by the CPU and CUDA halves of the
 * finetune module. Not part of the public API: nothing outside src/finetune/
 * includes this header. Included from C and from CUDA C++ (.cu) files.
 */
#ifndef QT_FINETUNE_INTERNAL_H
#define QT_FINETUNE_INTERNAL_H

#include <stddef.h>

#include "finetune/qt_finetune.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------- */
/* AdamW                                                                      */
/* ------------------------------------------------------------------------- */

/* The scalars of one AdamW step, computed once in double and rounded to
 * float, so that the CPU reference and the CUDA kernel multiply by exactly
 * the same numbers and differ only in per-element rounding. */
typedef struct qt__adamw_coefficients {
  float beta1;                 /* beta1 */
  float one_minus_beta1;       /* 1 - beta1 */
  float beta2;                 /* beta2 */
  float one_minus_beta2;       /* 1 - beta2 */
  float eps;                   /* eps */
  float decay;                 /* lr * weight_decay */
  float step_size;             /* lr / (1 - beta1^t) */
  float bias_correction2_sqrt; /* sqrt(1 - beta2^t) */
} qt__adamw_coefficients;

/* Checks the arguments of an AdamW step (see qt_cpu_adamw_step) and fills
 * *out. Returns 0 or QT_EINVAL naming the offending argument; `who` (the
 * public function's name) starts the message. */
int qt__adamw_prepare(const char *who, const float *params, const float *grads, const float *m,
                      const float *v, size_t n, const qt_adamw_params *hp, long step,
                      qt__adamw_coefficients *out, qt_err *err);

/* ------------------------------------------------------------------------- */
/* Head dropout and the feature hook (qt_head_hooks.c)                        */
/* ------------------------------------------------------------------------- */

/* What every model family (qt_vit.c, qt_cnn.c, qt_mlp.c) keeps for the
 * features entering its head: timm's head dropout and the gradient buffer
 * of the feature hook (see qt_vit_set_head_dropout and
 * qt_vit_set_feature_hook for the semantics). cap is max_batch * features.
 * Zero-initialized means both off. */
typedef struct qt__head_hooks {
  double drop_rate;
  qt_rng_t *drop_rng; /* borrowed */
  float *drop_mask;   /* (cap) 0 or 1 / (1 - rate); NULL until dropout was on */
  int dropped;        /* 1: the last forward applied a mask */
  float *dfeat;       /* (cap) the hook's gradient; NULL while the hook is off */
} qt__head_hooks;

/* Sets the dropout rate ([0, 1), else QT_EINVAL) and stream; `family`
 * names the model in messages. */
int qt__head_hooks_set_dropout(qt__head_hooks *h, size_t cap, double rate, qt_rng_t *rng,
                               const char *family, qt_err *err);
/* Turns the hook's gradient buffer on (calloc of cap floats) or off. */
int qt__head_hooks_set_feature_grad(qt__head_hooks *h, size_t cap, int on, const char *family,
                                    qt_err *err);
/* One forward over n feature values: zeroes the hook's gradient, then,
 * while dropout is on, draws the mask element by element (row-major) and
 * writes out = in * mask; else copies in to out. out may equal in. */
void qt__head_hooks_forward(qt__head_hooks *h, float *out, const float *in, size_t n);
void qt__head_hooks_free(qt__head_hooks *h);

#ifdef __cplusplus
}
#endif

#endif /* QT_FINETUNE_INTERNAL_H */

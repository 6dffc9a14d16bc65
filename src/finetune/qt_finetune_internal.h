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

#ifdef __cplusplus
}
#endif

#endif /* QT_FINETUNE_INTERNAL_H */

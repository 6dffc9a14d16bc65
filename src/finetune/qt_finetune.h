/*
 * qt_finetune.h - the fine-tuning engine of qtune.
 *
 * What this module implements (and will grow into): tensors and their kernels
 * behind one backend interface, with a plain CPU reference in finetune/cpu/
 * and a fast CUDA path in finetune/cuda/; later the model families, data
 * loading, optimizers and regularizers, and the epoch-step run API with
 * checkpoint/resume (see ARCHITECTURE.md). Today it holds:
 *   - the backend selector (CPU or CUDA) and the CUDA device query;
 *   - the first op, the fused AdamW parameter update, in a CPU reference and
 *     a CUDA version that a parity test (label `gpu`) checks against it.
 *
 * Backends. Every op exists as qt_cpu_<op>() and qt_cuda_<op>(). The CPU
 * version is the reference: a readable loop whose numbers the CUDA version
 * must reproduce within float rounding. When qtune is built without CUDA
 * (QT_CUDA=OFF or no toolkit), the qt_cuda_* functions still exist and return
 * QT_ENODEV, and qt_cuda_device_count() reports 0 devices, so callers and
 * tests need no #ifdef.
 *
 * Memory. The caller owns every array passed to an op. qt_cpu_* functions
 * take host pointers. qt_cuda_<op>() takes device pointers (memory from
 * cudaMalloc) and launches asynchronously on the default stream;
 * qt_cuda_<op>_host() takes host pointers, copies them to the device, runs the
 * op, copies the results back and frees its device memory before returning
 * (for tests and one-off use, not for the training loop).
 *
 * Shapes and units. Parameters, gradients and optimizer moments are flat
 * float32 arrays of n elements. Optimizer steps are counted from 1.
 *
 * Errors follow qt_core.h: 0 or a negative QT_E* code, detail in *err.
 */
#ifndef QT_FINETUNE_H
#define QT_FINETUNE_H

#include <stddef.h>

#include "core/qt_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------- */
/* Backends                                                                   */
/* ------------------------------------------------------------------------- */

/* Where the engine computes. */
typedef enum qt_backend_kind {
  QT_BACKEND_KIND_CPU = 0, /* the reference: plain C loops and OpenBLAS */
  QT_BACKEND_KIND_CUDA = 1 /* one CUDA device */
} qt_backend_kind;

/* "cpu" or "cuda"; "unknown" for a value outside the enum. Never NULL. */
const char *qt_backend_kind_name(qt_backend_kind kind);

/* Parses "cpu" or "cuda" (any case). Anything else is QT_EINVAL with a
 * message that quotes the text and lists the accepted names. */
int qt_backend_kind_parse(const char *text, qt_backend_kind *out, qt_err *err);

/* Returns 0 when the backend can run here: always for CPU; for CUDA when
 * qtune was built with CUDA and at least one device is visible. Otherwise
 * QT_ENODEV with a message that says why (no CUDA build, or no device). */
int qt_backend_kind_check(qt_backend_kind kind, qt_err *err);

/* ------------------------------------------------------------------------- */
/* CUDA devices                                                               */
/* ------------------------------------------------------------------------- */

/* Stores the number of visible CUDA devices in *count. A machine without a
 * GPU, without a driver, or a build without CUDA is not an error: *count is 0
 * and the reason is logged at debug level. Returns QT_EINVAL only when count
 * is NULL. */
int qt_cuda_device_count(int *count, qt_err *err);

/* ------------------------------------------------------------------------- */
/* Optimizer op: AdamW                                                        */
/* ------------------------------------------------------------------------- */

/* Hyperparameters of AdamW (Loshchilov and Hutter, "Decoupled Weight Decay
 * Regularization", ICLR 2019), in the form of torch.optim.AdamW: weight decay
 * is scaled by the learning rate and applied to the parameters directly, not
 * through the gradient, so it never enters the moments. */
typedef struct qt_adamw_params {
  double lr;           /* learning rate, >= 0 */
  double beta1;        /* decay of the first moment, in [0, 1) */
  double beta2;        /* decay of the second moment, in [0, 1) */
  double eps;          /* added to sqrt of the bias-corrected second moment, > 0 */
  double weight_decay; /* decoupled weight decay coefficient, >= 0 */
} qt_adamw_params;

/* lr 1e-3, beta1 0.9, beta2 0.999, eps 1e-8, weight_decay 0.01 (PyTorch's). */
qt_adamw_params qt_adamw_default_params(void);

/* One AdamW step over n elements, in place. With g = grads[i] and step t:
 *
 *   m[i]      = beta1 * m[i] + (1 - beta1) * g
 *   v[i]      = beta2 * v[i] + (1 - beta2) * g * g
 *   params[i] = params[i] - lr * weight_decay * params[i]
 *               - lr / (1 - beta1^t) * m[i] / (sqrt(v[i] / (1 - beta2^t)) + eps)
 *
 * The decay and the Adam update both read the parameters from before the
 * step. m and v start at zero before step 1; t counts calls from 1 and
 * drives the bias correction. The scalars lr * weight_decay, lr / (1 -
 * beta1^t) and sqrt(1 - beta2^t) are computed in double, the per-element
 * arithmetic in float.
 *
 * Arguments: params, m, v (n floats each) are updated; grads (n floats) is
 * read. n == 0 is a no-op. A NULL array with n > 0, step < 1 or a
 * hyperparameter outside the ranges above (or not finite) is QT_EINVAL. */
int qt_cpu_adamw_step(float *params, const float *grads, float *m, float *v, size_t n,
                      const qt_adamw_params *hp, long step, qt_err *err);

/* The same step on the CUDA device, with device pointers. The kernel is
 * launched on the default stream and may still run when this returns; a
 * launch failure is reported here, a later execution failure by the next
 * synchronizing call. Arguments are checked as in qt_cpu_adamw_step. CUDA
 * failures map to QT_ENOMEM (out of device memory), QT_EINVAL (the runtime
 * rejected an argument, e.g. a host pointer) or QT_ENODEV (no usable device,
 * or the device failed), with CUDA's error text in the message. */
int qt_cuda_adamw_step(float *params, const float *grads, float *m, float *v, size_t n,
                       const qt_adamw_params *hp, long step, qt_err *err);

/* qt_cuda_adamw_step on host arrays: allocates device memory for the four
 * arrays, copies them in, runs the step, waits for it, copies params, m and v
 * back and frees the device memory. For parity tests and one-off use. */
int qt_cuda_adamw_step_host(float *params, const float *grads, float *m, float *v, size_t n,
                            const qt_adamw_params *hp, long step, qt_err *err);

#ifdef __cplusplus
}
#endif

#endif /* QT_FINETUNE_H */

/*
 * qt_cpu_adamw.c - the CPU reference of the fused AdamW step (see
 * qt_finetune.h for the formula). It is deliberately a plain loop: the CUDA
 * kernel in cuda/qt_cuda_adamw.cu repeats the same float expressions in the
 * same order, and the parity test (tests/test_gpu_adamw.c) compares the two.
 * Ranges of parameters go to the worker threads (qt_cpu_parallel.h).
 */
#include <math.h>

#include "finetune/cpu/qt_cpu_parallel.h"
#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"

typedef struct adamw_job {
  float *params, *m, *v;
  const float *grads;
  qt__adamw_coefficients c;
} adamw_job;

static void step_range(void *job, size_t begin, size_t end, void *scratch) {
  (void)scratch;
  const adamw_job *A = job;
  float *params = A->params, *m = A->m, *v = A->v;
  const float *grads = A->grads;
  qt__adamw_coefficients c = A->c;
  for (size_t i = begin; i < end; i++) {
    float p = params[i];
    float g = grads[i];
    float m_new = c.beta1 * m[i] + c.one_minus_beta1 * g;
    float v_new = c.beta2 * v[i] + c.one_minus_beta2 * (g * g);
    m[i] = m_new;
    v[i] = v_new;
    /* sqrt(v / bc2) is computed as sqrt(v) / sqrt(bc2), as PyTorch does. */
    float denom = sqrtf(v_new) / c.bias_correction2_sqrt + c.eps;
    /* Decoupled weight decay: it shrinks the parameter from before the step
     * and never passes through m or v. */
    params[i] = p - c.decay * p - c.step_size * (m_new / denom);
  }
}

int qt_cpu_adamw_step(float *params, const float *grads, float *m, float *v, size_t n,
                      const qt_adamw_params *hp, long step, qt_err *err) {
  qt__adamw_coefficients c;
  int rc = qt__adamw_prepare("qt_cpu_adamw_step", params, grads, m, v, n, hp, step, &c, err);
  if (rc < 0) return rc;

  adamw_job job = {.params = params, .m = m, .v = v, .grads = grads, .c = c};
  qt__cpu_parallel_for(n, QT_CPU_VALUES_GRAIN, 0, 0, step_range, &job);
  return 0;
}

/*
 * qt_cuda_optim.cu - a fine-tuning run's per-tensor optimizer arithmetic on
 * a CUDA device, the twins of qt_optim.c: the optimizer step (SGD,
 * momentum, Adam, AdamW), the sum of squares behind gradient clipping, the
 * scaling of a clipped gradient, L2-SP's gradient, SFA's average,
 * Selective Projection Decay's statistics and projection, and GOODFIT's
 * reference steps (axpy) and projection. The
 * kernels evaluate the CPU's float expressions in its order with
 * round-to-nearest intrinsics (__fmul_rn, __fadd_rn, ...), which nvcc never
 * contracts into FMAs, so each element is bit-identical to the CPU's; the
 * sums (of squares, SPD's) are reduced in double in another order than
 * the CPU's.
 * tests/test_gpu_optim.c checks them against qt_optim.c.
 */
#include <math.h>
#include <stdio.h>

#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "finetune/cuda/qt_cuda_internal.h"

/* Blocks for n elements, grid-stride beyond QT_CUDA_MAX_BLOCKS. */
static unsigned grid_for(size_t n) {
  size_t blocks = (n + QT_CUDA_THREADS - 1) / QT_CUDA_THREADS;
  return (unsigned)(blocks > QT_CUDA_MAX_BLOCKS ? QT_CUDA_MAX_BLOCKS : blocks);
}

#define GRID_STRIDE(i, n)                                                 \
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
       i += (size_t)gridDim.x * blockDim.x)

/* ------------------------------------------------------------------------- */
/* Kernels                                                                    */
/* ------------------------------------------------------------------------- */

/* SGD: g = grad + wd * x; x -= lr * g. */
static __global__ void sgd_kernel(float *__restrict__ x, const float *__restrict__ grad, float lr,
                                  float wd, size_t n) {
  GRID_STRIDE(i, n) {
    float g = __fadd_rn(grad[i], __fmul_rn(wd, x[i]));
    x[i] = __fsub_rn(x[i], __fmul_rn(lr, g));
  }
}

/* Momentum (torch.optim.SGD, dampening 0): b = mom * b + g; x -= lr * b. */
static __global__ void momentum_kernel(float *__restrict__ x, const float *__restrict__ grad,
                                       float *__restrict__ buf, float lr, float wd, float mom,
                                       size_t n) {
  GRID_STRIDE(i, n) {
    float g = __fadd_rn(grad[i], __fmul_rn(wd, x[i]));
    float b = __fadd_rn(__fmul_rn(mom, buf[i]), g);
    buf[i] = b;
    x[i] = __fsub_rn(x[i], __fmul_rn(lr, b));
  }
}

/* Adam (coupled decay through the gradient) and AdamW (decoupled decay in
 * c.decay), as qt_optim_tensor_step. */
static __global__ void adam_kernel(float *__restrict__ x, const float *__restrict__ grad,
                                   float *__restrict__ m, float *__restrict__ v, float coupled,
                                   qt__adamw_coefficients c, size_t n) {
  GRID_STRIDE(i, n) {
    float p = x[i];
    float g = __fadd_rn(grad[i], __fmul_rn(coupled, p));
    float m_new = __fadd_rn(__fmul_rn(c.beta1, m[i]), __fmul_rn(c.one_minus_beta1, g));
    float v_new =
        __fadd_rn(__fmul_rn(c.beta2, v[i]), __fmul_rn(c.one_minus_beta2, __fmul_rn(g, g)));
    m[i] = m_new;
    v[i] = v_new;
    float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v_new), c.bias_correction2_sqrt), c.eps);
    x[i] = __fsub_rn(__fsub_rn(p, __fmul_rn(c.decay, p)),
                     __fmul_rn(c.step_size, __fdiv_rn(m_new, denom)));
  }
}

/* The sums of the reductions, per element in double: x^2 (clipping);
 * with d = x - ref (ref NULL: x), y d and d^2 (SPD's statistics, x the
 * parameters and y the gradients). */
enum { SUM_SQUARES = 0, SUM_INNER = 1, SUM_DEVIATION = 2 };

template <int kind>
static __device__ __forceinline__ double term(const float *x, const float *y, const float *ref,
                                              size_t i) {
  if (kind == SUM_SQUARES) return (double)x[i] * (double)x[i];
  double d = (double)x[i] - (ref ? (double)ref[i] : 0.0);
  return kind == SUM_INNER ? (double)y[i] * d : d * d;
}

/* One partial sum per block, in double. */
template <int kind>
static __global__ void reduce_kernel(const float *__restrict__ x, const float *__restrict__ y,
                                     const float *__restrict__ ref, size_t n,
                                     double *__restrict__ partial) {
  __shared__ double shared[32];
  double s = 0.0;
  GRID_STRIDE(i, n) s += term<kind>(x, y, ref, i);
  s = qt__block_sum(s, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

/* The partial sums of the blocks, added by one block: their total added
 * to *acc (add) or stored there. */
static __global__ void sum_partials_kernel(const double *__restrict__ partial, unsigned count,
                                           double *__restrict__ acc, int add) {
  __shared__ double shared[32];
  double s = 0.0;
  for (unsigned i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
  s = qt__block_sum(s, shared);
  if (threadIdx.x == 0) *acc = add ? *acc + s : s;
}

static __global__ void axpy_kernel(float *__restrict__ x, float a, const float *__restrict__ y,
                                   size_t n) {
  GRID_STRIDE(i, n) x[i] = __fadd_rn(x[i], __fmul_rn(a, y[i]));
}

/* GOODFIT's projection from stats[0] = <g, delta>, stats[1] = ||delta||^2,
 * in the CPU's double arithmetic. */
static __global__ void goodfit_project_kernel(float *__restrict__ g,
                                              const float *__restrict__ delta, size_t n,
                                              const double *__restrict__ stats) {
  double inner = stats[0];
  if (!(inner < 0.0)) return;
  double coef = inner / (stats[1] + 1e-12);
  GRID_STRIDE(i, n) g[i] = (float)__dsub_rn((double)g[i], __dmul_rn(coef, (double)delta[i]));
}

/* SPD's projection from the statistics on the device (stats[0] <g, d>,
 * stats[1] ||d||^2 before the step, stats[2] after it), with the CPU's
 * double arithmetic for r and its float operations per element. */
static __global__ void spd_project_kernel(float *__restrict__ x, const float *__restrict__ ref,
                                          size_t n, double lambda,
                                          const double *__restrict__ stats) {
  double condition = -stats[0];
  if (!(condition < 0.0) || !(lambda > 0.0)) return;
  double gamma_new = sqrt(stats[2]), gamma = sqrt(stats[1]);
  if (!(gamma_new > 0.0)) return;
  double r = (gamma_new - gamma) / gamma_new;
  if (r < 0.0) r = 0.0;
  if (r > 1.0) r = 1.0;
  if (r == 0.0) return;
  float f = (float)(lambda * r);
  GRID_STRIDE(i, n) {
    x[i] = ref ? __fsub_rn(x[i], __fmul_rn(f, __fsub_rn(x[i], ref[i])))
               : __fsub_rn(x[i], __fmul_rn(f, x[i]));
  }
}

static __global__ void scale_kernel(float *__restrict__ x, float c, size_t n) {
  GRID_STRIDE(i, n) x[i] = __fmul_rn(x[i], c);
}

/* L2-SP: grad += 2c (x - ref), or 2c x without a reference. */
static __global__ void l2sp_kernel(float *__restrict__ grad, const float *__restrict__ x,
                                   const float *__restrict__ ref, float two_c, size_t n) {
  GRID_STRIDE(i, n) {
    float d = ref ? __fsub_rn(x[i], ref[i]) : x[i];
    grad[i] = __fadd_rn(grad[i], __fmul_rn(two_c, d));
  }
}

/* SFA: x = keep x + pull ref, or keep x without a reference. */
static __global__ void sfa_kernel(float *__restrict__ x, const float *__restrict__ ref, float keep,
                                  float pull, size_t n) {
  GRID_STRIDE(i, n) {
    x[i] = ref ? __fadd_rn(__fmul_rn(keep, x[i]), __fmul_rn(pull, ref[i])) : __fmul_rn(keep, x[i]);
  }
}

static __global__ void mul_kernel(float *out, const float *a, const float *__restrict__ b,
                                  size_t n) {
  GRID_STRIDE(i, n) out[i] = __fmul_rn(a[i], b[i]);
}

static __global__ void mul_add_kernel(float *__restrict__ acc, const float *__restrict__ a,
                                      const float *__restrict__ b, size_t n) {
  GRID_STRIDE(i, n) acc[i] = __fadd_rn(acc[i], __fmul_rn(a[i], b[i]));
}

/* ------------------------------------------------------------------------- */
/* Entry points                                                               */
/* ------------------------------------------------------------------------- */

static int launched(const char *who, const char *kernel, qt_err *err) {
  cudaError_t status = cudaGetLastError();
  if (status == cudaSuccess) return 0;
  char what[128];
  snprintf(what, sizeof what, "%s: launching %s", who, kernel);
  return qt__cuda_error(err, status, what);
}

extern "C" int qt_cuda_optim_tensor_step(const qt_optim_params *p, double lr, int decay, long step,
                                         float *params, const float *grads, float *state1,
                                         float *state2, size_t n, qt_err *err) {
  const char *who = "qt_cuda_optim_tensor_step";
  if (!p) return qt_err_set(err, QT_EINVAL, "%s: NULL parameters", who);
  if (n == 0) return 0;
  if (!params || !grads) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  double wd = decay ? qt_optim_zero_decay(p) : 0.0;
  switch (p->kind) {
    case QT_OPTIM_KIND_SGD:
      sgd_kernel<<<grid_for(n), QT_CUDA_THREADS>>>(params, grads, (float)lr, (float)wd, n);
      return launched(who, "the SGD kernel", err);
    case QT_OPTIM_KIND_MOMENTUM:
      if (!state1) return qt_err_set(err, QT_EINVAL, "%s: momentum needs its buffer", who);
      momentum_kernel<<<grid_for(n), QT_CUDA_THREADS>>>(params, grads, state1, (float)lr, (float)wd,
                                                        (float)p->momentum, n);
      return launched(who, "the momentum kernel", err);
    case QT_OPTIM_KIND_ADAM:
    case QT_OPTIM_KIND_ADAMW: {
      if (!state1 || !state2) return qt_err_set(err, QT_EINVAL, "%s: Adam needs its moments", who);
      qt__adamw_coefficients c;
      float coupled;
      int rc = qt__optim_adam_prepare(who, p, lr, wd, step, params, grads, state1, state2, n, &c,
                                      &coupled, err);
      if (rc < 0) return rc;
      adam_kernel<<<grid_for(n), QT_CUDA_THREADS>>>(params, grads, state1, state2, coupled, c, n);
      return launched(who, "the Adam kernel", err);
    }
  }
  return qt_err_set(err, QT_EINVAL, "%s: unknown optimizer kind %d", who, (int)p->kind);
}

/* Sums term<kind> over n elements into *acc (add: += , else =), queued:
 * one partial per block, in the device's sums scratch
 * (qt__cuda_sums_scratch_lock, kept between calls, so that clipping
 * allocates nothing per step), then one block adds them. */
template <int kind>
static int reduce(const float *x, const float *y, const float *ref, size_t n, double *acc, int add,
                  const char *who, qt_err *err) {
  if (!acc) return qt_err_set(err, QT_EINVAL, "%s: the accumulator is NULL", who);
  if (n == 0) {
    if (add) return 0;
    cudaError_t status = cudaMemsetAsync(acc, 0, sizeof *acc, 0);
    return status == cudaSuccess ? 0 : qt__cuda_error(err, status, who);
  }
  if (!x || (kind == SUM_INNER && !y)) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  unsigned blocks = grid_for(n);
  double *partial = NULL;
  int rc = qt__cuda_sums_scratch_lock(blocks, &partial, who, err);
  if (rc < 0) return rc;
  reduce_kernel<kind><<<blocks, QT_CUDA_THREADS>>>(x, y, ref, n, partial);
  rc = launched(who, "the reduction kernel", err);
  if (rc == 0) {
    sum_partials_kernel<<<1, QT_CUDA_THREADS>>>(partial, blocks, acc, add);
    rc = launched(who, "the kernel adding the partial sums", err);
  }
  qt__cuda_sums_scratch_unlock();
  return rc;
}

extern "C" int qt_cuda_sum_squares(const float *x, size_t n, double *acc, qt_err *err) {
  return reduce<SUM_SQUARES>(x, NULL, NULL, n, acc, 1, "qt_cuda_sum_squares", err);
}

extern "C" int qt_cuda_axpy(float *x, float a, const float *y, size_t n, qt_err *err) {
  if (n == 0) return 0;
  if (!x || !y) return qt_err_set(err, QT_EINVAL, "qt_cuda_axpy: NULL array");
  axpy_kernel<<<grid_for(n), QT_CUDA_THREADS>>>(x, a, y, n);
  return launched("qt_cuda_axpy", "the axpy kernel", err);
}

extern "C" int qt_cuda_goodfit_project(float *grads, const float *delta, size_t n, double *stats,
                                       qt_err *err) {
  const char *who = "qt_cuda_goodfit_project";
  if (!stats) return qt_err_set(err, QT_EINVAL, "%s: stats is NULL", who);
  if (n == 0) return 0;
  if (!grads || !delta) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  /* <g, delta>: the SPD inner product's term with no reference. */
  int rc = reduce<SUM_INNER>(delta, grads, NULL, n, stats, 0, who, err);
  if (rc == 0) rc = reduce<SUM_SQUARES>(delta, NULL, NULL, n, stats + 1, 0, who, err);
  if (rc < 0) return rc;
  goodfit_project_kernel<<<grid_for(n), QT_CUDA_THREADS>>>(grads, delta, n, stats);
  return launched(who, "the GOODFIT projection kernel", err);
}

extern "C" int qt_cuda_spd_stats(const float *params, const float *grads, const float *ref,
                                 size_t n, double *stats, qt_err *err) {
  const char *who = "qt_cuda_spd_stats";
  if (!stats) return qt_err_set(err, QT_EINVAL, "%s: stats is NULL", who);
  int rc = reduce<SUM_INNER>(params, grads, ref, n, stats, 0, who, err);
  return rc < 0 ? rc : reduce<SUM_DEVIATION>(params, NULL, ref, n, stats + 1, 0, who, err);
}

extern "C" int qt_cuda_spd_project(float *params, const float *ref, size_t n, double lambda,
                                   double *stats, qt_err *err) {
  const char *who = "qt_cuda_spd_project";
  if (!stats) return qt_err_set(err, QT_EINVAL, "%s: stats is NULL", who);
  int rc = reduce<SUM_DEVIATION>(params, NULL, ref, n, stats + 2, 0, who, err);
  if (rc < 0 || n == 0) return rc;
  spd_project_kernel<<<grid_for(n), QT_CUDA_THREADS>>>(params, ref, n, lambda, stats);
  return launched(who, "the SPD projection kernel", err);
}

extern "C" int qt_cuda_scale(float *x, float c, size_t n, qt_err *err) {
  if (n == 0) return 0;
  if (!x) return qt_err_set(err, QT_EINVAL, "qt_cuda_scale: NULL array");
  scale_kernel<<<grid_for(n), QT_CUDA_THREADS>>>(x, c, n);
  return launched("qt_cuda_scale", "the scaling kernel", err);
}

extern "C" int qt_cuda_l2sp_gradient(float *grads, const float *params, const float *ref, size_t n,
                                     double c, qt_err *err) {
  if (n == 0) return 0;
  if (!grads || !params) return qt_err_set(err, QT_EINVAL, "qt_cuda_l2sp_gradient: NULL array");
  l2sp_kernel<<<grid_for(n), QT_CUDA_THREADS>>>(grads, params, ref, (float)(2.0 * c), n);
  return launched("qt_cuda_l2sp_gradient", "the L2-SP kernel", err);
}

extern "C" int qt_cuda_sfa_average(float *params, const float *ref, size_t n, double beta,
                                   qt_err *err) {
  if (n == 0) return 0;
  if (!params) return qt_err_set(err, QT_EINVAL, "qt_cuda_sfa_average: NULL array");
  sfa_kernel<<<grid_for(n), QT_CUDA_THREADS>>>(params, ref, (float)(1.0 - beta), (float)beta, n);
  return launched("qt_cuda_sfa_average", "the SFA kernel", err);
}

extern "C" int qt_cuda_mul(float *out, const float *a, const float *b, size_t n, qt_err *err) {
  if (n == 0) return 0;
  if (!out || !a || !b) return qt_err_set(err, QT_EINVAL, "qt_cuda_mul: NULL array");
  mul_kernel<<<grid_for(n), QT_CUDA_THREADS>>>(out, a, b, n);
  return launched("qt_cuda_mul", "the product kernel", err);
}

extern "C" int qt_cuda_mul_add(float *acc, const float *a, const float *b, size_t n, qt_err *err) {
  if (n == 0) return 0;
  if (!acc || !a || !b) return qt_err_set(err, QT_EINVAL, "qt_cuda_mul_add: NULL array");
  mul_add_kernel<<<grid_for(n), QT_CUDA_THREADS>>>(acc, a, b, n);
  return launched("qt_cuda_mul_add", "the multiply-accumulate kernel", err);
}

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
#include "finetune/cuda/qt_cuda_optim.cuh"

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
 * c.decay), as qt_optim_tensor_step: one tensor (qt_cuda_optim.cuh). */
static __global__ void adam_kernel(const qt__adam_job a) {
  GRID_STRIDE(i, a.n) qt_optim::adam_element(a, i);
}

/* The same for the tensors of a launch's jobs. */
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    adam_jobs_kernel(const qt__adam_jobs jobs) {
  qt_optim::adam_jobs_block(jobs, blockIdx.x, threadIdx.x, blockDim.x);
}
static_assert(sizeof(qt__adam_jobs) <= 4096, "a launch's jobs must fit CUDA's 4 KB of arguments");

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
      sgd_kernel<<<grid_for(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(params, grads, (float)lr,
                                                                         (float)wd, n);
      return launched(who, "the SGD kernel", err);
    case QT_OPTIM_KIND_MOMENTUM:
      if (!state1) return qt_err_set(err, QT_EINVAL, "%s: momentum needs its buffer", who);
      momentum_kernel<<<grid_for(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
          params, grads, state1, (float)lr, (float)wd, (float)p->momentum, n);
      return launched(who, "the momentum kernel", err);
    case QT_OPTIM_KIND_ADAM:
    case QT_OPTIM_KIND_ADAMW: {
      if (!state1 || !state2) return qt_err_set(err, QT_EINVAL, "%s: Adam needs its moments", who);
      qt__adam_job a = {params, grads, state1, state2, n, {}, 0.0f};
      int rc = qt__optim_adam_prepare(who, p, lr, wd, step, params, grads, state1, state2, n, &a.c,
                                      &a.coupled, err);
      if (rc < 0) return rc;
      adam_kernel<<<grid_for(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(a);
      return launched(who, "the Adam kernel", err);
    }
  }
  return qt_err_set(err, QT_EINVAL, "%s: unknown optimizer kind %d", who, (int)p->kind);
}

/* A slice's Adam job, checked (qt__optim_adam_prepare). */
static int adam_job(const qt_optim_params *p, const qt__optim_slice *s, qt__adam_job *a,
                    const char *who, qt_err *err) {
  if (!s->params || !s->grads) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  if (!s->state1 || !s->state2)
    return qt_err_set(err, QT_EINVAL, "%s: Adam needs its moments", who);
  double wd = s->decay ? qt_optim_zero_decay(p) : 0.0;
  *a = {s->params, s->grads, s->state1, s->state2, s->n, {}, 0.0f};
  return qt__optim_adam_prepare(who, p, s->lr, wd, s->step, s->params, s->grads, s->state1,
                                s->state2, s->n, &a->c, &a->coupled, err);
}

static int launch_jobs(const qt__adam_jobs &jobs, const char *who, qt_err *err) {
  if (jobs.count == 0) return 0;
  adam_jobs_kernel<<<jobs.first_block[jobs.count], QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(jobs);
  return launched(who, "the Adam kernel for several tensors", err);
}

/* 1: Adam's tensors share launches, unless QT_CUDA_ADAM_JOBS=0 (one
 * launch per tensor, to measure the two: tools/gpu-check's adam1: row);
 * -1 until the environment has been read. */
static int adam_jobs = -1;

extern "C" int qt__cuda_optim_steps(const qt_optim_params *p, const qt__optim_slice *slices,
                                    size_t count, qt_err *err) {
  const char *who = "qt__cuda_optim_steps";
  if (!p) return qt_err_set(err, QT_EINVAL, "%s: NULL parameters", who);
  if (count && !slices) return qt_err_set(err, QT_EINVAL, "%s: NULL slices", who);
  if ((p->kind != QT_OPTIM_KIND_ADAM && p->kind != QT_OPTIM_KIND_ADAMW) ||
      !qt__cuda_switch_on("QT_CUDA_ADAM_JOBS", &adam_jobs)) {
    for (size_t i = 0; i < count; i++) {
      const qt__optim_slice *s = &slices[i];
      int rc = qt_cuda_optim_tensor_step(p, s->lr, s->decay, s->step, s->params, s->grads,
                                         s->state1, s->state2, s->n, err);
      if (rc < 0) return rc;
    }
    return 0;
  }
  /* Every slice checked before the first launch: a bad one changes nothing. */
  for (size_t i = 0; i < count; i++) {
    qt__adam_job a;
    int rc = slices[i].n ? adam_job(p, &slices[i], &a, who, err) : 0;
    if (rc < 0) return rc;
    if (qt_optim::blocks_of(slices[i].n) > QT_ADAM_MAX_BLOCKS)
      return qt_err_set(err, QT_EINVAL, "%s: a tensor of %zu elements is too large", who,
                        slices[i].n);
  }
  qt__adam_jobs jobs;
  jobs.count = 0;
  jobs.first_block[0] = 0;
  for (size_t i = 0; i < count; i++) {
    qt__adam_job a;
    if (slices[i].n == 0) continue;
    adam_job(p, &slices[i], &a, who, err); /* checked above */
    if (!qt_optim::add_job(jobs, a)) {
      int rc = launch_jobs(jobs, who, err);
      if (rc < 0) return rc;
      jobs.count = 0;
      qt_optim::add_job(jobs, a);
    }
  }
  return launch_jobs(jobs, who, err);
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
    cudaError_t status = cudaMemsetAsync(acc, 0, sizeof *acc, qt__cuda_stream());
    return status == cudaSuccess ? 0 : qt__cuda_error(err, status, who);
  }
  if (!x || (kind == SUM_INNER && !y)) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  unsigned blocks = grid_for(n);
  double *partial = NULL;
  int rc = qt__cuda_sums_scratch_lock(blocks, &partial, who, err);
  if (rc < 0) return rc;
  reduce_kernel<kind><<<blocks, QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(x, y, ref, n, partial);
  rc = launched(who, "the reduction kernel", err);
  if (rc == 0) {
    sum_partials_kernel<<<1, QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(partial, blocks, acc, add);
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
  axpy_kernel<<<grid_for(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(x, a, y, n);
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
  goodfit_project_kernel<<<grid_for(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(grads, delta, n,
                                                                                 stats);
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
  spd_project_kernel<<<grid_for(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(params, ref, n, lambda,
                                                                             stats);
  return launched(who, "the SPD projection kernel", err);
}

extern "C" int qt_cuda_scale(float *x, float c, size_t n, qt_err *err) {
  if (n == 0) return 0;
  if (!x) return qt_err_set(err, QT_EINVAL, "qt_cuda_scale: NULL array");
  scale_kernel<<<grid_for(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(x, c, n);
  return launched("qt_cuda_scale", "the scaling kernel", err);
}

extern "C" int qt_cuda_l2sp_gradient(float *grads, const float *params, const float *ref, size_t n,
                                     double c, qt_err *err) {
  if (n == 0) return 0;
  if (!grads || !params) return qt_err_set(err, QT_EINVAL, "qt_cuda_l2sp_gradient: NULL array");
  l2sp_kernel<<<grid_for(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(grads, params, ref,
                                                                      (float)(2.0 * c), n);
  return launched("qt_cuda_l2sp_gradient", "the L2-SP kernel", err);
}

extern "C" int qt_cuda_sfa_average(float *params, const float *ref, size_t n, double beta,
                                   qt_err *err) {
  if (n == 0) return 0;
  if (!params) return qt_err_set(err, QT_EINVAL, "qt_cuda_sfa_average: NULL array");
  sfa_kernel<<<grid_for(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
      params, ref, (float)(1.0 - beta), (float)beta, n);
  return launched("qt_cuda_sfa_average", "the SFA kernel", err);
}

extern "C" int qt_cuda_mul(float *out, const float *a, const float *b, size_t n, qt_err *err) {
  if (n == 0) return 0;
  if (!out || !a || !b) return qt_err_set(err, QT_EINVAL, "qt_cuda_mul: NULL array");
  mul_kernel<<<grid_for(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(out, a, b, n);
  return launched("qt_cuda_mul", "the product kernel", err);
}

extern "C" int qt_cuda_mul_add(float *acc, const float *a, const float *b, size_t n, qt_err *err) {
  if (n == 0) return 0;
  if (!acc || !a || !b) return qt_err_set(err, QT_EINVAL, "qt_cuda_mul_add: NULL array");
  mul_add_kernel<<<grid_for(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(acc, a, b, n);
  return launched("qt_cuda_mul_add", "the multiply-accumulate kernel", err);
}

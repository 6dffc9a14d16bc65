/*
 * qt_cuda_optim.cuh - the body of the Adam and AdamW kernels of
 * qt_cuda_optim.cu: one tensor's step (qt_cuda_optim_tensor_step), or the
 * steps of up to QT_ADAM_JOBS tensors in one launch (the op table's
 * optim_steps, a run's whole step in a few launches where one per tensor
 * took 152 for a ViT-B/16).
 *
 * Each element is the CPU's float expressions in its order
 * (qt_optim_tensor_step) with round-to-nearest intrinsics, which nvcc
 * never contracts into FMAs, so it is bit-identical to the CPU's.
 *
 * This file holds only __device__ functions over the primitives that CUDA
 * C++ provides (threadIdx-free: each body takes its block and thread as
 * arguments), so that a host emulation can include it with stand-ins
 * (tests/qt_cuda_emulation.h: __fmul_rn, __fadd_rn, __fsub_rn, __fdiv_rn,
 * __fsqrt_rn); the includer provides qt__adamw_coefficients
 * (qt_finetune_internal.h).
 */
#ifndef QT_CUDA_OPTIM_CUH
#define QT_CUDA_OPTIM_CUH

/* One tensor's Adam step: its arrays (not aliasing each other), n
 * elements, and the coefficients that qt__optim_adam_prepare gives for
 * its learning rate, decay and step count. */
struct qt__adam_job {
  float *x;
  const float *grad;
  float *m, *v;
  size_t n;
  qt__adamw_coefficients c;
  float coupled; /* Adam's decay through the gradient; 0 for AdamW */
};

/* Jobs per launch: the launch's argument (qt__adam_jobs, by value) stays
 * within the 4 KB that every CUDA version takes. */
#define QT_ADAM_JOBS 40
/* Elements per block: a tensor of n elements takes ceil(n / 4096) blocks. */
#define QT_ADAM_CHUNK 4096

/* A launch's jobs: job j takes blocks first_block[j] .. first_block[j +
 * 1] - 1 (first_block[0] = 0, first_block[count] the grid). */
struct qt__adam_jobs {
  int count;
  unsigned first_block[QT_ADAM_JOBS + 1];
  qt__adam_job job[QT_ADAM_JOBS];
};

/* Blocks of one launch at most (a grid's first dimension takes 2^31 - 1). */
#define QT_ADAM_MAX_BLOCKS (1u << 30)

namespace qt_optim {

/* Blocks of a job of n elements. */
inline size_t blocks_of(size_t n) {
  return (n + QT_ADAM_CHUNK - 1) / QT_ADAM_CHUNK;
}

/* Appends job a (n > 0, at most QT_ADAM_MAX_BLOCKS blocks) to a launch's
 * jobs (count 0 and first_block[0] 0 when empty); false, leaving them
 * alone, when they are full: the caller launches them, empties them and
 * appends again. On the host. */
inline bool add_job(qt__adam_jobs &jobs, const qt__adam_job &a) {
  unsigned blocks = (unsigned)blocks_of(a.n);
  if (jobs.count == QT_ADAM_JOBS || jobs.first_block[jobs.count] + blocks > QT_ADAM_MAX_BLOCKS)
    return false;
  jobs.job[jobs.count] = a;
  jobs.first_block[jobs.count + 1] = jobs.first_block[jobs.count] + blocks;
  jobs.count++;
  return true;
}

/* One element's values, as loaded. */
struct adam_values {
  float x, grad, m, v;
};

__device__ inline adam_values adam_load(const qt__adam_job &a, size_t i) {
  return adam_values{a.x[i], a.grad[i], a.m[i], a.v[i]};
}

/* Element i of a job from its values: the moments, then the parameter. */
__device__ inline void adam_store(const qt__adam_job &a, size_t i, const adam_values &e) {
  const qt__adamw_coefficients &c = a.c;
  float p = e.x;
  float g = __fadd_rn(e.grad, __fmul_rn(a.coupled, p));
  float m_new = __fadd_rn(__fmul_rn(c.beta1, e.m), __fmul_rn(c.one_minus_beta1, g));
  float v_new = __fadd_rn(__fmul_rn(c.beta2, e.v), __fmul_rn(c.one_minus_beta2, __fmul_rn(g, g)));
  a.m[i] = m_new;
  a.v[i] = v_new;
  float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v_new), c.bias_correction2_sqrt), c.eps);
  a.x[i] = __fsub_rn(__fsub_rn(p, __fmul_rn(c.decay, p)),
                     __fmul_rn(c.step_size, __fdiv_rn(m_new, denom)));
}

__device__ inline void adam_element(const qt__adam_job &a, size_t i) {
  adam_store(a, i, adam_load(a, i));
}

/* Elements per thread whose loads are issued before any of their stores:
 * the compiler cannot tell a store from the next element's loads apart,
 * so one element at a time would keep only its 4 loads in flight. */
#define QT_ADAM_UNROLL 4

/* Block `block` of a launch over `jobs`, thread tid of `threads`: its
 * job's elements [QT_ADAM_CHUNK k, QT_ADAM_CHUNK (k + 1)) for the job's
 * k-th block, strided by the threads. */
__device__ inline void adam_jobs_block(const qt__adam_jobs &jobs, unsigned block, unsigned tid,
                                       unsigned threads) {
  int j = 0;
  while (j + 1 < jobs.count && block >= jobs.first_block[j + 1]) j++;
  const qt__adam_job &a = jobs.job[j];
  size_t first = (size_t)(block - jobs.first_block[j]) * QT_ADAM_CHUNK;
  size_t end = first + QT_ADAM_CHUNK < a.n ? first + QT_ADAM_CHUNK : a.n;
  for (size_t i0 = first + tid; i0 < end; i0 += QT_ADAM_UNROLL * (size_t)threads) {
    adam_values e[QT_ADAM_UNROLL];
#pragma unroll
    for (int u = 0; u < QT_ADAM_UNROLL; u++) {
      size_t i = i0 + (size_t)u * threads;
      if (i < end) e[u] = adam_load(a, i);
    }
#pragma unroll
    for (int u = 0; u < QT_ADAM_UNROLL; u++) {
      size_t i = i0 + (size_t)u * threads;
      if (i < end) adam_store(a, i, e[u]);
    }
  }
}

} /* namespace qt_optim */

#endif /* QT_CUDA_OPTIM_CUH */

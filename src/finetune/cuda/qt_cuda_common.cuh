/*
 * qt_cuda_common.cuh - device code that the kernels of finetune/cuda/ share
 * and that the host emulation of their bodies (tests/qt_cuda_emulation.h)
 * can include too: the warp's double sum, the float-or-BF16 load and store, exact
 * GELU and its gradient, and the loop of the elementwise kernels. Included
 * by qt_cuda_internal.h, and by the .cuh files of kernel bodies. The
 * includer provides cuda_bf16.h (or the emulation's stand-ins),
 * __shfl_xor_sync, __fmul_rn, __fadd_rn, erff and expf.
 *
 * The elementwise loop: each thread takes QT_CUDA_UNROLL elements (U)
 * a block apart per turn and issues all their loads before it stores any. With
 * one element at a time, a thread's next load waits for its store (the
 * compiler cannot tell that they do not alias), and the 64 warps of a
 * multiprocessor keep about 8 KB in flight, too little to fill a large
 * device's memory bandwidth: GELU's forward ran at about 1.9 TB/s on an
 * H100 that way. An element is loaded and stored by the same thread, so a
 * kernel may write where it reads (in place). A kernel whose element reads
 * only 2 bytes (GELU's forward from BF16) takes U = 8, so that a thread
 * still has 16 bytes of loads in flight (at 4, Nsight Compute had that
 * kernel at 1.95 TB/s, 79 us a call for ViT-B at batch 64, 481738e; at 8
 * it takes 40 registers, six blocks a multiprocessor: 24 KB in flight
 * where there were 16; bounded to eight blocks it spills).
 */
#ifndef QT_CUDA_COMMON_CUH
#define QT_CUDA_COMMON_CUH

#define QT_CUDA_UNROLL 4 /* elements per thread and turn */

/* Sum over the 32 lanes of a full warp; every lane gets the total. */
__device__ inline double qt__warp_sum(double v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

/* A float, or a BF16 value widened (exactly), from an array that its
 * producer wrote in BF16 for BF16 products (qt__store below). */
__device__ inline float qt__load(const float *in) {
  return *in;
}
__device__ inline float qt__load(const __nv_bfloat16 *in) {
  return __bfloat162float(*in);
}

/* Stores v as float, or rounded to BF16 (to nearest even) for a kernel
 * whose output feeds BF16 products only. */
__device__ inline void qt__store(float *out, float v) {
  *out = v;
}
__device__ inline void qt__store(__nv_bfloat16 *out, float v) {
  *out = __float2bfloat16_rn(v);
}

/* Exact (erf) GELU and the gradient it passes back at its input x for
 * dout at its output, dout (cdf(x) + x pdf(x)): cpu/qt_cpu_gelu.c's float
 * expressions with CUDA's erff and expf (qt_cuda_gelu.cu, and the GELU
 * before a linear layer's column sums, qt_cuda_colsum.cuh). */
#define QT_GELU_SQRT1_2 0.70710678118654752440f      /* 1 / sqrt(2) */
#define QT_GELU_INV_SQRT_2PI 0.39894228040143267794f /* 1 / sqrt(2 pi) */

__device__ inline float qt__gelu(float x) {
  return __fmul_rn(__fmul_rn(0.5f, x), 1.0f + erff(__fmul_rn(x, QT_GELU_SQRT1_2)));
}

__device__ inline float qt__gelu_grad(float dout, float x) {
  float cdf = __fmul_rn(0.5f, 1.0f + erff(__fmul_rn(x, QT_GELU_SQRT1_2)));
  float pdf = __fmul_rn(QT_GELU_INV_SQRT_2PI, expf(__fmul_rn(__fmul_rn(-0.5f, x), x)));
  return __fmul_rn(dout, __fadd_rn(cdf, __fmul_rn(x, pdf)));
}

/* For every element i < n: store(i, load(i)), by thread `thread` of
 * `threads` in block `block` of `blocks`; I is the index type (unsigned
 * where the kernel's index arithmetic allows it, see
 * qt__cuda_int_indices). Load returns a value (a struct for several
 * arrays), Store takes it back. */
template <int U = QT_CUDA_UNROLL, typename I, class Load, class Store>
__device__ inline void qt__elementwise(I n, unsigned block, unsigned blocks, unsigned thread,
                                       unsigned threads, Load load, Store store) {
  I tile = (I)threads * U, stride = (I)blocks * tile;
  for (I base = (I)block * tile + thread; base < n; base += stride) {
    decltype(load(base)) v[U] = {};
#pragma unroll
    for (int u = 0; u < U; u++) {
      I i = base + (I)u * threads;
      if (i < n) v[u] = load(i);
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      I i = base + (I)u * threads;
      if (i < n) store(i, v[u]);
    }
  }
}

#endif /* QT_CUDA_COMMON_CUH */

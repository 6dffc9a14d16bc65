/*
 * qt_cuda_gelu.cu - exact (erf) GELU on a CUDA device, the twin of
 * cpu/qt_cpu_gelu.c: the same float expressions, with CUDA's erff and expf
 * (both within 2 units in the last place, like glibc's). See qt_finetune.h.
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "finetune/cuda/qt_cuda_internal.h"

#define QT_SQRT1_2 0.70710678118654752440f /* 1 / sqrt(2) */

static __device__ __forceinline__ float gelu(float x) {
  return __fmul_rn(__fmul_rn(0.5f, x), 1.0f + erff(__fmul_rn(x, QT_SQRT1_2)));
}

/* Each thread takes QT_GELU_UNROLL elements a block apart and issues their
 * loads before it computes and stores any: with one load in flight per
 * thread, a multiprocessor's warps keep too few bytes in flight to fill the
 * memory's bandwidth (the forward ran at about 1.9 TB/s on an H100, ViT-B's
 * 38.7 M values per call). An element is read and written by one thread,
 * so out may be inp. */
#define QT_GELU_UNROLL 4

static unsigned gelu_blocks(size_t n) {
  return qt__cuda_blocks((n + QT_GELU_UNROLL - 1) / QT_GELU_UNROLL);
}

/* Out is float, or BF16 for the next linear layer of a BF16 run. */
template <typename T>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    gelu_forward_kernel(T *out, const float *inp, size_t n) {
  size_t tile = (size_t)blockDim.x * QT_GELU_UNROLL, stride = (size_t)gridDim.x * tile;
  for (size_t base = (size_t)blockIdx.x * tile + threadIdx.x; base < n; base += stride) {
    float x[QT_GELU_UNROLL];
#pragma unroll
    for (int u = 0; u < QT_GELU_UNROLL; u++) {
      size_t i = base + (size_t)u * blockDim.x;
      x[u] = i < n ? inp[i] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < QT_GELU_UNROLL; u++) {
      size_t i = base + (size_t)u * blockDim.x;
      if (i < n) qt__store(out + i, gelu(x[u]));
    }
  }
}

/* set: dinp starts from 0 (0 + g, as the CPU's zeroed array) instead of
 * its old values. dinp may be dout. */
template <bool set>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    gelu_backward_kernel(float *dinp, const float *dout, const float *__restrict__ inp, size_t n) {
  size_t tile = (size_t)blockDim.x * QT_GELU_UNROLL, stride = (size_t)gridDim.x * tile;
  for (size_t base = (size_t)blockIdx.x * tile + threadIdx.x; base < n; base += stride) {
    float x[QT_GELU_UNROLL], dy[QT_GELU_UNROLL], old[QT_GELU_UNROLL];
#pragma unroll
    for (int u = 0; u < QT_GELU_UNROLL; u++) {
      size_t i = base + (size_t)u * blockDim.x;
      x[u] = i < n ? inp[i] : 0.0f;
      dy[u] = i < n ? dout[i] : 0.0f;
      old[u] = !set && i < n ? dinp[i] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < QT_GELU_UNROLL; u++) {
      size_t i = base + (size_t)u * blockDim.x;
      if (i < n) dinp[i] = __fadd_rn(old[u], qt__gelu_grad(dy[u], x[u]));
    }
  }
}

extern "C" int qt_cuda_gelu_forward(float *out, const float *inp, size_t n, qt_err *err) {
  if (n == 0) return 0;
  if (!out || !inp) return qt_err_set(err, QT_EINVAL, "qt_cuda_gelu_forward: NULL array");
  gelu_forward_kernel<<<gelu_blocks(n), QT_CUDA_THREADS>>>(out, inp, n);
  return qt__cuda_check_launch(err, "qt_cuda_gelu_forward", "the GELU kernel");
}

extern "C" int qt__cuda_gelu_forward_h(void *out, const float *inp, size_t n, qt_err *err) {
  if (n == 0) return 0;
  if (!out || !inp) return qt_err_set(err, QT_EINVAL, "qt_cuda_gelu_forward (BF16): NULL array");
  gelu_forward_kernel<<<gelu_blocks(n), QT_CUDA_THREADS>>>((__nv_bfloat16 *)out, inp, n);
  return qt__cuda_check_launch(err, "qt_cuda_gelu_forward (BF16)", "the GELU kernel");
}

extern "C" int qt__cuda_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n,
                                      int set, qt_err *err) {
  if (n == 0) return 0;
  if (!dinp || !dout || !inp) {
    return qt_err_set(err, QT_EINVAL, "qt_cuda_gelu_backward: NULL array");
  }
  if (set)
    gelu_backward_kernel<true><<<gelu_blocks(n), QT_CUDA_THREADS>>>(dinp, dout, inp, n);
  else
    gelu_backward_kernel<false><<<gelu_blocks(n), QT_CUDA_THREADS>>>(dinp, dout, inp, n);
  return qt__cuda_check_launch(err, "qt_cuda_gelu_backward", "the GELU backward kernel");
}

extern "C" int qt_cuda_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n,
                                     qt_err *err) {
  return qt__cuda_gelu_backward(dinp, dout, inp, n, 0, err);
}

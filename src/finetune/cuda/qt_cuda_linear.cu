/*
 * qt_cuda_linear.cu - the linear layer on a CUDA device, the twin of
 * cpu/qt_cpu_linear.c: matrix products by cuBLAS (in the precision of
 * qt_cuda_set_matmul_precision), the bias broadcast by a kernel and the bias
 * gradient by qt__cuda_column_sums. See qt_finetune.h.
 */
#include <limits.h>

#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "finetune/cuda/qt_cuda_internal.h"

/* out (n, out_c) = bias broadcast to every row; the index arithmetic in
 * I (unsigned where qt__cuda_int_indices allows: one division per
 * element). */
template <typename I>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    bias_broadcast_kernel(float *__restrict__ out, const float *__restrict__ bias, I total,
                          I out_c) {
  I stride = (I)gridDim.x * blockDim.x;
  for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    out[i] = bias[i % out_c];
  }
}

extern "C" int qt_cuda_linear_forward(float *out, const float *inp, const float *weight,
                                      const float *bias, size_t n, size_t in_c, size_t out_c,
                                      qt_err *err) {
  const char *who = "qt_cuda_linear_forward";
  if (n > INT_MAX || in_c > INT_MAX || out_c > INT_MAX) {
    return qt_err_set(err, QT_EINVAL, "%s: shape (%zu, %zu) -> %zu does not fit an int", who, n,
                      in_c, out_c);
  }
  if (n == 0 || out_c == 0) return 0;
  if (!out || (in_c > 0 && (!inp || !weight))) {
    return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  }
  if (bias && in_c > 0 && qt__cuda_linear_bias_lt(out, inp, weight, bias, n, in_c, out_c, who) == 0)
    return 0;
  if (bias) {
    if (qt__cuda_int_indices(n * out_c))
      bias_broadcast_kernel<unsigned><<<qt__cuda_blocks(n * out_c), QT_CUDA_THREADS>>>(
          out, bias, (unsigned)(n * out_c), (unsigned)out_c);
    else
      bias_broadcast_kernel<size_t>
          <<<qt__cuda_blocks(n * out_c), QT_CUDA_THREADS>>>(out, bias, n * out_c, out_c);
    int rc = qt__cuda_check_launch(err, who, "the bias broadcast");
    if (rc < 0) return rc;
  }
  if (in_c == 0) {
    if (!bias) {
      cudaError_t status = cudaMemsetAsync(out, 0, n * out_c * sizeof *out, 0);
      if (status != cudaSuccess)
        return qt__cuda_error(err, status, "qt_cuda_linear_forward: memset");
    }
    return 0;
  }
  /* out (n, out_c) = inp (n, in_c) . weight^T (+ out, which holds the bias) */
  return qt__cuda_gemm(0, 1, n, out_c, in_c, 1.0f, inp, in_c, 0, weight, in_c, 0,
                       bias ? 1.0f : 0.0f, out, out_c, 0, 1, who, err);
}

extern "C" int qt__cuda_linear_backward(float *dinp, float *dweight, float *dbias,
                                        const float *dout, const float *inp, const float *weight,
                                        size_t n, size_t in_c, size_t out_c, int set, qt_err *err) {
  const char *who = "qt_cuda_linear_backward";
  if (n > INT_MAX || in_c > INT_MAX || out_c > INT_MAX) {
    return qt_err_set(err, QT_EINVAL, "%s: shape (%zu, %zu) -> %zu does not fit an int", who, n,
                      in_c, out_c);
  }
  if (set && dinp && n * in_c > 0 && out_c == 0) {
    /* No product to write dinp: as zeroed. */
    cudaError_t status = cudaMemsetAsync(dinp, 0, n * in_c * sizeof *dinp, 0);
    if (status != cudaSuccess)
      return qt__cuda_error(err, status, "qt_cuda_linear_backward: memset");
  }
  if (n == 0 || out_c == 0) return 0;
  if (!dout || (dinp && in_c > 0 && !weight) || (dweight && in_c > 0 && !inp)) {
    return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  }
  /* Both products read dout: one call rounds it once under BF16. */
  qt__cuda_product products[2];
  size_t count = 0;
  if (dinp && in_c > 0) {
    /* dinp (n, in_c) (+)= dout (n, out_c) . weight (out_c, in_c) */
    products[count++] = {.m = n,
                         .n = in_c,
                         .k = out_c,
                         .a = dout,
                         .lda = out_c,
                         .b = weight,
                         .ldb = in_c,
                         .beta = set ? 0.0f : 1.0f,
                         .c = dinp,
                         .ldc = in_c};
  }
  if (dweight && in_c > 0) {
    /* dweight (out_c, in_c) += dout^T (out_c, n) . inp (n, in_c) */
    products[count++] = {.trans_a = 1,
                         .m = out_c,
                         .n = in_c,
                         .k = n,
                         .a = dout,
                         .lda = out_c,
                         .b = inp,
                         .ldb = in_c,
                         .beta = 1.0f,
                         .c = dweight,
                         .ldc = in_c};
  }
  int rc = qt__cuda_gemms(products, count, who, err);
  if (rc < 0) return rc;
  if (dbias)
    rc = qt__cuda_column_sums(QT__COLSUM_PLAIN, dbias, NULL, dout, NULL, NULL, NULL, n, out_c, who,
                              err);
  return rc;
}

extern "C" int qt_cuda_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                       const float *inp, const float *weight, size_t n, size_t in_c,
                                       size_t out_c, qt_err *err) {
  return qt__cuda_linear_backward(dinp, dweight, dbias, dout, inp, weight, n, in_c, out_c, 0, err);
}

/*
 * qt_cuda_residual.cu - the residual connection with optional layer scale on
 * a CUDA device, the twin of cpu/qt_cpu_residual.c. The layer-scale
 * gradient is a column sum in double, as on the CPU. See qt_finetune.h.
 */
#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/cuda/qt_cuda_internal.h"

/* out may equal res: each element is read, then written, by one thread. */
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    residual_forward_kernel(float *out, const float *res, const float *__restrict__ branch,
                            const float *__restrict__ gamma, size_t n, size_t c) {
  size_t total = n * c, stride = (size_t)gridDim.x * blockDim.x;
  for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < total; k += stride) {
    float b = branch[k];
    out[k] = __fadd_rn(res[k], gamma ? __fmul_rn(gamma[k % c], b) : b);
  }
}

static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    residual_backward_kernel(float *dres, float *dbranch, /* may alias */
                             const float *__restrict__ dout, const float *__restrict__ gamma,
                             size_t n, size_t c) {
  size_t total = n * c, stride = (size_t)gridDim.x * blockDim.x;
  for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < total; k += stride) {
    float d = dout[k];
    if (dres) dres[k] += d;
    if (dbranch) dbranch[k] = __fadd_rn(dbranch[k], gamma ? __fmul_rn(gamma[k % c], d) : d);
  }
}

extern "C" int qt_cuda_residual_forward(float *out, const float *res, const float *branch,
                                        const float *gamma, size_t n, size_t c, qt_err *err) {
  if (n == 0 || c == 0) return 0;
  if (!out || !res || !branch) {
    return qt_err_set(err, QT_EINVAL, "qt_cuda_residual_forward: NULL array");
  }
  residual_forward_kernel<<<qt__cuda_blocks(n * c), QT_CUDA_THREADS>>>(out, res, branch, gamma, n,
                                                                       c);
  return qt__cuda_check_launch(err, "qt_cuda_residual_forward", "the residual kernel");
}

extern "C" int qt_cuda_residual_backward(float *dres, float *dbranch, float *dgamma,
                                         const float *dout, const float *branch, const float *gamma,
                                         size_t n, size_t c, qt_err *err) {
  const char *who = "qt_cuda_residual_backward";
  if (n == 0 || c == 0) return 0;
  if (!dout || (dgamma && !branch)) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  if (dres || dbranch) {
    residual_backward_kernel<<<qt__cuda_blocks(n * c), QT_CUDA_THREADS>>>(dres, dbranch, dout,
                                                                          gamma, n, c);
    int rc = qt__cuda_check_launch(err, who, "the residual backward kernel");
    if (rc < 0) return rc;
  }
  /* dgamma (c) += column sums of dout * branch in double. */
  return qt__cuda_column_sums(QT__COLSUM_PRODUCT, dgamma, NULL, dout, branch, NULL, NULL, n, c, who,
                              err);
}

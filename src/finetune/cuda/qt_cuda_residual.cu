/*
 * qt_cuda_residual.cu - the residual connection with optional layer scale on
 * a CUDA device, the twin of cpu/qt_cpu_residual.c. The layer-scale
 * gradient is a column sum in double, as on the CPU. See qt_finetune.h.
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/cuda/qt_cuda_internal.h"

/* What an element reads, its column's layer scale too (1 without): read
 * in qt__elementwise's loads, where the stores would make it wait. */
struct residual_in {
  float res, branch, gamma;
};

/* out = res + gamma branch (gamma NULL: 1; branch (B) float or BF16); out
 * may be res. I: the index type (unsigned where qt__cuda_int_indices
 * allows, for the column's k % c). */
template <typename I, typename B>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    residual_forward_kernel(float *out, const float *res, const B *__restrict__ branch,
                            const float *__restrict__ gamma, I total, I c) {
  qt__elementwise(
      total, blockIdx.x, gridDim.x, threadIdx.x, blockDim.x,
      [=](I k) {
        return residual_in{res[k], qt__load(branch + k), gamma ? gamma[k % c] : 1.0f};
      },
      [=](I k, residual_in v) {
        out[k] = __fadd_rn(v.res, gamma ? __fmul_rn(v.gamma, v.branch) : v.branch);
      });
}

struct residual_grad_in {
  float dout, dres, dbranch, gamma;
};

/* dres += dout, dbranch += gamma dout (either NULL: skipped; they may be
 * the same array). */
template <typename I>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    residual_backward_kernel(float *dres, float *dbranch, const float *__restrict__ dout,
                             const float *__restrict__ gamma, I total, I c) {
  qt__elementwise(
      total, blockIdx.x, gridDim.x, threadIdx.x, blockDim.x,
      [=](I k) {
        return residual_grad_in{dout[k], dres ? dres[k] : 0.0f, dbranch ? dbranch[k] : 0.0f,
                                gamma ? gamma[k % c] : 1.0f};
      },
      [=](I k, residual_grad_in v) {
        if (dres) dres[k] = v.dres + v.dout;
        if (dbranch)
          dbranch[k] = __fadd_rn(dres == dbranch ? dres[k] : v.dbranch,
                                 gamma ? __fmul_rn(v.gamma, v.dout) : v.dout);
      });
}

template <typename B>
static int forward(float *out, const float *res, const B *branch, const float *gamma, size_t n,
                   size_t c, qt_err *err) {
  if (n == 0 || c == 0) return 0;
  if (!out || !res || !branch) {
    return qt_err_set(err, QT_EINVAL, "qt_cuda_residual_forward: NULL array");
  }
  if (qt__cuda_int_indices(n * c))
    residual_forward_kernel<unsigned>
        <<<qt__cuda_elementwise_blocks(n * c), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
            out, res, branch, gamma, (unsigned)(n * c), (unsigned)c);
  else
    residual_forward_kernel<size_t>
        <<<qt__cuda_elementwise_blocks(n * c), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
            out, res, branch, gamma, n * c, c);
  return qt__cuda_check_launch(err, "qt_cuda_residual_forward", "the residual kernel");
}

extern "C" int qt_cuda_residual_forward(float *out, const float *res, const float *branch,
                                        const float *gamma, size_t n, size_t c, qt_err *err) {
  return forward(out, res, branch, gamma, n, c, err);
}

extern "C" int qt__cuda_residual_forward_any(float *out, const float *res, const void *branch,
                                             int branch_bf16, const float *gamma, size_t n,
                                             size_t c, qt_err *err) {
  if (branch_bf16) return forward(out, res, (const __nv_bfloat16 *)branch, gamma, n, c, err);
  return forward(out, res, (const float *)branch, gamma, n, c, err);
}

extern "C" int qt_cuda_residual_backward(float *dres, float *dbranch, float *dgamma,
                                         const float *dout, const float *branch, const float *gamma,
                                         size_t n, size_t c, qt_err *err) {
  const char *who = "qt_cuda_residual_backward";
  if (n == 0 || c == 0) return 0;
  if (!dout || (dgamma && !branch)) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  if (dres || dbranch) {
    if (qt__cuda_int_indices(n * c))
      residual_backward_kernel<unsigned>
          <<<qt__cuda_elementwise_blocks(n * c), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
              dres, dbranch, dout, gamma, (unsigned)(n * c), (unsigned)c);
    else
      residual_backward_kernel<size_t>
          <<<qt__cuda_elementwise_blocks(n * c), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
              dres, dbranch, dout, gamma, n * c, c);
    int rc = qt__cuda_check_launch(err, who, "the residual backward kernel");
    if (rc < 0) return rc;
  }
  /* dgamma (c) += column sums of dout * branch in double. */
  return qt__cuda_column_sums(QT__COLSUM_PRODUCT, dgamma, NULL, dout, branch, NULL, NULL, n, c, who,
                              err);
}

/*
 * qt_cuda_layernorm.cu - layer norm on a CUDA device, the twin of
 * cpu/qt_cpu_layernorm.c. One warp per row; the row statistics are reduced
 * in double exactly as the CPU does (two passes: mean, then the biased
 * variance around it), so mean and rstd agree with the CPU's to the last
 * float bit or one unit of it. The weight and bias gradients are column
 * sums over the rows, also in double (the CPU adds them row by row in
 * float, so there the GPU is the more accurate side). See qt_finetune.h.
 */
#include <limits.h>

#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "finetune/cuda/qt_cuda_internal.h"

/* One warp per row (QT_CUDA_WARP_ROWS per block): a ViT-B step at batch
 * 64 normalizes 12,608 rows of 768 features per call. */

/* Out is float, or BF16 for the next linear layer of a BF16 run. */
template <typename T>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    layernorm_forward_kernel(T *__restrict__ out, float *__restrict__ mean,
                             float *__restrict__ rstd, const float *__restrict__ inp,
                             const float *__restrict__ weight, const float *__restrict__ bias,
                             size_t n, size_t c, float eps) {
  size_t row = (size_t)blockIdx.x * QT_CUDA_WARP_ROWS + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= n) return; /* the whole warp */
  const float *x = inp + row * c;
  T *y = out + row * c;
  double sum = 0.0;
  for (size_t j = lane; j < c; j += 32) sum += x[j];
  double m = qt__warp_sum(sum) / (double)c;
  double sq = 0.0;
  for (size_t j = lane; j < c; j += 32) {
    double d = x[j] - m;
    sq += d * d;
  }
  sq = qt__warp_sum(sq);
  double r = 1.0 / sqrt(sq / (double)c + (double)eps);
  float mf = (float)m, rf = (float)r;
  for (size_t j = lane; j < c; j += 32) {
    float normalized = __fmul_rn(x[j] - mf, rf);
    qt__store(y + j,
              __fadd_rn(__fmul_rn(normalized, weight ? weight[j] : 1.0f), bias ? bias[j] : 0.0f));
  }
  if (lane == 0) {
    mean[row] = mf;
    rstd[row] = rf;
  }
}

/* dinp of one row per warp: dx = rstd * (g - mean(g) - xhat * mean(g xhat))
 * with g = weight * dy. */
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    layernorm_backward_input_kernel(float *__restrict__ dinp, const float *__restrict__ dout,
                                    const float *__restrict__ inp, const float *__restrict__ weight,
                                    const float *__restrict__ mean, const float *__restrict__ rstd,
                                    size_t n, size_t c) {
  size_t row = (size_t)blockIdx.x * QT_CUDA_WARP_ROWS + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= n) return; /* the whole warp */
  const float *x = inp + row * c;
  const float *dy = dout + row * c;
  float m = mean[row], r = rstd[row];
  double g_sum = 0.0, g_xhat_sum = 0.0;
  for (size_t j = lane; j < c; j += 32) {
    float xhat = __fmul_rn(x[j] - m, r);
    float g = __fmul_rn(weight ? weight[j] : 1.0f, dy[j]);
    g_sum += g;
    g_xhat_sum += (double)g * xhat;
  }
  g_sum = qt__warp_sum(g_sum);
  g_xhat_sum = qt__warp_sum(g_xhat_sum);
  float g_mean = (float)(g_sum / (double)c);
  float g_xhat_mean = (float)(g_xhat_sum / (double)c);
  for (size_t j = lane; j < c; j += 32) {
    float xhat = __fmul_rn(x[j] - m, r);
    float g = __fmul_rn(weight ? weight[j] : 1.0f, dy[j]);
    float d = __fmul_rn(g - g_mean - __fmul_rn(xhat, g_xhat_mean), r);
    dinp[row * c + j] += d;
  }
}

template <typename T>
static int forward(T *out, float *mean, float *rstd, const float *inp, const float *weight,
                   const float *bias, size_t n, size_t c, float eps, const char *who, qt_err *err) {
  if (n > INT_MAX) return qt_err_set(err, QT_EINVAL, "%s: %zu rows do not fit an int", who, n);
  if (n == 0) return 0;
  if (c == 0 || !out || !mean || !rstd || !inp) {
    return qt_err_set(err, QT_EINVAL, "%s: NULL array or no features (c = %zu)", who, c);
  }
  layernorm_forward_kernel<<<qt__cuda_row_blocks(n), QT_CUDA_THREADS>>>(out, mean, rstd, inp,
                                                                        weight, bias, n, c, eps);
  return qt__cuda_check_launch(err, who, "the layer norm kernel");
}

extern "C" int qt_cuda_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                         const float *weight, const float *bias, size_t n, size_t c,
                                         float eps, qt_err *err) {
  return forward(out, mean, rstd, inp, weight, bias, n, c, eps, "qt_cuda_layernorm_forward", err);
}

extern "C" int qt__cuda_layernorm_forward_h(void *out, float *mean, float *rstd, const float *inp,
                                            const float *weight, const float *bias, size_t n,
                                            size_t c, float eps, qt_err *err) {
  return forward((__nv_bfloat16 *)out, mean, rstd, inp, weight, bias, n, c, eps,
                 "qt_cuda_layernorm_forward (BF16)", err);
}

extern "C" int qt_cuda_layernorm_backward(float *dinp, float *dweight, float *dbias,
                                          const float *dout, const float *inp, const float *weight,
                                          const float *mean, const float *rstd, size_t n, size_t c,
                                          qt_err *err) {
  const char *who = "qt_cuda_layernorm_backward";
  if (n > INT_MAX) return qt_err_set(err, QT_EINVAL, "%s: %zu rows do not fit an int", who, n);
  if (n == 0 || c == 0) return 0;
  if (!dout || !inp || !mean || !rstd) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  if (dinp) {
    layernorm_backward_input_kernel<<<qt__cuda_row_blocks(n), QT_CUDA_THREADS>>>(
        dinp, dout, inp, weight, mean, rstd, n, c);
    int rc = qt__cuda_check_launch(err, who, "the layer norm input gradient");
    if (rc < 0) return rc;
  }
  /* dweight (c) += column sums of dy * xhat, dbias (c) += those of dy. */
  return qt__cuda_column_sums(QT__COLSUM_LAYERNORM, dweight, dbias, dout, inp, mean, rstd, n, c,
                              who, err);
}

/*
 * qt_cuda_attention.cu - the core of multi-head self-attention on a CUDA
 * device, the twin of cpu/qt_cpu_attention.c. Correctness first: for each
 * image, the heads' matrix products are one strided-batched cuBLAS call
 * each (q, k and v are read in place through the qkv row stride; head h
 * starts h * head_size floats into a row), and the softmax and its backward
 * are one block per row of scores, with the row sums in double as on the
 * CPU. See qt_finetune.h.
 */
#include <limits.h>
#include <math.h>

#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/cuda/qt_cuda_internal.h"

/* Row-wise softmax in place over rows of `tokens` scores, one block per
 * row: shifted by the row maximum, exponentials in float, their sum in
 * double, then scaled by the float reciprocal (the CPU's steps). */
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    softmax_rows_kernel(float *att, size_t tokens) {
  __shared__ double shared[32];
  __shared__ float shared_max[32];
  float *row = att + (size_t)blockIdx.x * tokens;
  float max = -INFINITY;
  for (size_t j = threadIdx.x; j < tokens; j += blockDim.x) max = fmaxf(max, row[j]);
  max = qt__block_max(max, shared_max);
  double sum = 0.0;
  for (size_t j = threadIdx.x; j < tokens; j += blockDim.x) {
    float e = expf(row[j] - max);
    row[j] = e;
    sum += e;
  }
  float inv = (float)(1.0 / qt__block_sum(sum, shared));
  for (size_t j = threadIdx.x; j < tokens; j += blockDim.x) row[j] = __fmul_rn(row[j], inv);
}

/* Through the softmax, in place, one block per row: da = a * (da - sum_j a
 * da), the dot product in double. */
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    softmax_backward_rows_kernel(float *__restrict__ da, const float *__restrict__ att,
                                 size_t tokens) {
  __shared__ double shared[32];
  const float *arow = att + (size_t)blockIdx.x * tokens;
  float *drow = da + (size_t)blockIdx.x * tokens;
  double dot = 0.0;
  for (size_t j = threadIdx.x; j < tokens; j += blockDim.x) dot += (double)arow[j] * drow[j];
  float dotf = (float)qt__block_sum(dot, shared);
  for (size_t j = threadIdx.x; j < tokens; j += blockDim.x) {
    drow[j] = __fmul_rn(arow[j], drow[j] - dotf);
  }
}

/* The shape checks shared by forward and backward. */
static int check_shape(size_t batch, size_t tokens, size_t c, size_t heads, const char *who,
                       qt_err *err) {
  if (heads == 0 || c % heads != 0) {
    return qt_err_set(err, QT_EINVAL, "%s: %zu heads do not divide %zu features", who, heads, c);
  }
  if (3 * c > INT_MAX || tokens > INT_MAX || batch > INT_MAX ||
      (tokens > 0 && heads * tokens > INT_MAX / tokens) ||
      (batch > 0 && heads * tokens > INT_MAX / batch)) {
    return qt_err_set(err, QT_EINVAL,
                      "%s: batch %zu, %zu tokens, %zu features, %zu heads is too large", who, batch,
                      tokens, c, heads);
  }
  return 0;
}

extern "C" size_t qt_cuda_attention_scratch_size(size_t tokens, size_t heads) {
  return heads * tokens * tokens;
}

extern "C" int qt_cuda_attention_forward(float *out, float *att, const float *qkv, size_t batch,
                                         size_t tokens, size_t c, size_t heads, qt_err *err) {
  const char *who = "qt_cuda_attention_forward";
  int rc = check_shape(batch, tokens, c, heads, who, err);
  if (rc < 0) return rc;
  if (batch == 0 || tokens == 0 || c == 0) return 0;
  if (!out || !att || !qkv) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  size_t hs = c / heads, tt = tokens * tokens;
  float scale = (float)(1.0 / sqrt((double)hs));
  for (size_t b = 0; b < batch && rc == 0; b++) {
    const float *q = qkv + b * tokens * 3 * c, *k = q + c;
    /* att[b, h] (T, T) = scale * q_h (T, hs) . k_h^T, for every head h */
    rc = qt__cuda_gemm(0, 1, tokens, tokens, hs, scale, q, 3 * c, (long long)hs, k, 3 * c,
                       (long long)hs, 0.0f, att + b * heads * tt, tokens, (long long)tt, heads, who,
                       err);
  }
  if (rc < 0) return rc;
  softmax_rows_kernel<<<(unsigned)(batch * heads * tokens), QT_CUDA_THREADS>>>(att, tokens);
  rc = qt__cuda_check_launch(err, who, "the softmax kernel");
  for (size_t b = 0; b < batch && rc == 0; b++) {
    const float *v = qkv + b * tokens * 3 * c + 2 * c;
    /* out[b] (T, hs) at column h * hs = att[b, h] (T, T) . v_h (T, hs) */
    rc = qt__cuda_gemm(0, 0, tokens, hs, tokens, 1.0f, att + b * heads * tt, tokens, (long long)tt,
                       v, 3 * c, (long long)hs, 0.0f, out + b * tokens * c, c, (long long)hs, heads,
                       who, err);
  }
  return rc;
}

extern "C" int qt_cuda_attention_backward(float *dqkv, float *scratch, const float *dout,
                                          const float *qkv, const float *att, size_t batch,
                                          size_t tokens, size_t c, size_t heads, qt_err *err) {
  const char *who = "qt_cuda_attention_backward";
  int rc = check_shape(batch, tokens, c, heads, who, err);
  if (rc < 0) return rc;
  if (batch == 0 || tokens == 0 || c == 0) return 0;
  if (!dqkv || !scratch || !dout || !qkv || !att) {
    return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  }
  size_t hs = c / heads, tt = tokens * tokens;
  float scale = (float)(1.0 / sqrt((double)hs));
  long long s_hs = (long long)hs, s_tt = (long long)tt;
  /* The images run one after the other on the stream: scratch (heads, T, T)
   * is reused. */
  for (size_t b = 0; b < batch && rc == 0; b++) {
    size_t offset = b * tokens * 3 * c;
    const float *q = qkv + offset, *k = q + c, *v = q + 2 * c;
    float *dq = dqkv + offset, *dk = dq + c, *dv = dq + 2 * c;
    const float *a = att + b * heads * tt;
    const float *dy = dout + b * tokens * c;
    float *da = scratch;
    /* da_h = dy_h (T, hs) . v_h^T */
    rc = qt__cuda_gemm(0, 1, tokens, tokens, hs, 1.0f, dy, c, s_hs, v, 3 * c, s_hs, 0.0f, da,
                       tokens, s_tt, heads, who, err);
    /* dv_h += a_h^T . dy_h */
    if (rc == 0) {
      rc = qt__cuda_gemm(1, 0, tokens, hs, tokens, 1.0f, a, tokens, s_tt, dy, c, s_hs, 1.0f, dv,
                         3 * c, s_hs, heads, who, err);
    }
    if (rc == 0) {
      softmax_backward_rows_kernel<<<(unsigned)(heads * tokens), QT_CUDA_THREADS>>>(da, a, tokens);
      rc = qt__cuda_check_launch(err, who, "the softmax backward kernel");
    }
    /* dq_h += scale ds_h . k_h; dk_h += scale ds_h^T . q_h */
    if (rc == 0) {
      rc = qt__cuda_gemm(0, 0, tokens, hs, tokens, scale, da, tokens, s_tt, k, 3 * c, s_hs, 1.0f,
                         dq, 3 * c, s_hs, heads, who, err);
    }
    if (rc == 0) {
      rc = qt__cuda_gemm(1, 0, tokens, hs, tokens, scale, da, tokens, s_tt, q, 3 * c, s_hs, 1.0f,
                         dk, 3 * c, s_hs, heads, who, err);
    }
  }
  return rc;
}

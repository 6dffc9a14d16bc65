/*
 * qt_cuda_attention.cu - the core of multi-head self-attention on a CUDA
 * device, the twin of cpu/qt_cpu_attention.c. Each of the four matrix
 * products is one strided-batched cuBLAS call per image over its heads, or
 * per head over the images, whichever makes fewer calls (q, k and v are read
 * in place through the qkv row stride; head h starts h * head_size floats
 * into a row). The softmax and its backward are one warp per row of
 * scores, with the row sums in double as on the CPU. See qt_finetune.h.
 */
#include <limits.h>
#include <math.h>

#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "finetune/cuda/qt_cuda_internal.h"

/* The softmax and its backward run one warp per row of scores
 * (QT_CUDA_WARP_ROWS per block): a ViT-B step at batch 64 has 151,296 rows
 * of 197 scores per block of the network. */

/* Row-wise softmax in place over `rows` rows of `tokens` scores: shifted by
 * the row maximum, exponentials in float, their sum in double, then scaled
 * by the float reciprocal (the CPU's steps). */
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    softmax_rows_kernel(float *att, size_t rows, size_t tokens) {
  size_t r = (size_t)blockIdx.x * QT_CUDA_WARP_ROWS + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (r >= rows) return; /* the whole warp */
  float *row = att + r * tokens;
  float max = -INFINITY;
  for (size_t j = lane; j < tokens; j += 32) max = fmaxf(max, row[j]);
  max = qt__warp_max(max);
  double sum = 0.0;
  for (size_t j = lane; j < tokens; j += 32) {
    float e = expf(row[j] - max);
    row[j] = e;
    sum += e;
  }
  float inv = (float)(1.0 / qt__warp_sum(sum));
  for (size_t j = lane; j < tokens; j += 32) row[j] = __fmul_rn(row[j], inv);
}

/* Through the softmax, in place, over `rows` rows: da = a * (da - sum_j a
 * da), the dot product in double. da holds rows of `tokens` one after the
 * other; a holds the same rows as matrices of `tokens` rows, a_stride floats
 * apart (da's matrix i, row j is a's matrix i, row j). */
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    softmax_backward_rows_kernel(float *__restrict__ da, const float *__restrict__ att, size_t rows,
                                 size_t tokens, size_t a_stride) {
  size_t r = (size_t)blockIdx.x * QT_CUDA_WARP_ROWS + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (r >= rows) return; /* the whole warp */
  size_t matrix = r / tokens;
  const float *arow = att + matrix * a_stride + (r - matrix * tokens) * tokens;
  float *drow = da + r * tokens;
  double dot = 0.0;
  for (size_t j = lane; j < tokens; j += 32) dot += (double)arow[j] * drow[j];
  float dotf = (float)qt__warp_sum(dot);
  for (size_t j = lane; j < tokens; j += 32) drow[j] = __fmul_rn(arow[j], drow[j] - dotf);
}

/* How the (image, head) score matrices are walked: an outer loop of
 * `outer` steps, each one strided-batched cuBLAS call over `inner`
 * matrices. The loop runs over the smaller of the images and the heads (a
 * ViT-B step at batch 64: 12 calls per product, not 64). The strides, in
 * floats, of the head's q (k, v and the gradients alike: row stride 3 c),
 * of its score matrix and of its columns of the output (row stride c), per
 * outer step (_o) and per matrix within a call (_i). */
typedef struct walk {
  size_t outer, inner;
  long long qkv_o, qkv_i, att_o, att_i, out_o, out_i;
} walk;

static walk walk_of(size_t batch, size_t tokens, size_t c, size_t heads) {
  long long hs = (long long)(c / heads), tt = (long long)(tokens * tokens);
  long long image_qkv = (long long)(tokens * 3 * c), image_out = (long long)(tokens * c);
  long long image_att = (long long)heads * tt;
  walk w;
  if (batch <= heads) { /* per image, its heads in one call */
    w = (walk){batch, heads, image_qkv, hs, image_att, tt, image_out, hs};
  } else { /* per head, the images in one call */
    w = (walk){heads, batch, hs, image_qkv, tt, image_att, hs, image_out};
  }
  return w;
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

/* One call's gradients of the scores, `inner` matrices of (T, T), or the
 * fused backward's row sums D, (batch, heads, T). */
extern "C" size_t qt_cuda_attention_scratch_size(size_t batch, size_t tokens, size_t heads) {
  size_t scores = (batch > heads ? batch : heads) * tokens * tokens;
  return scores > batch * heads * tokens ? scores : batch * heads * tokens;
}

extern "C" int qt_cuda_attention_forward(float *out, float *att, const float *qkv, size_t batch,
                                         size_t tokens, size_t c, size_t heads, qt_err *err) {
  const char *who = "qt_cuda_attention_forward";
  int rc = check_shape(batch, tokens, c, heads, who, err);
  if (rc < 0) return rc;
  if (batch == 0 || tokens == 0 || c == 0) return 0;
  if (!out || !att || !qkv) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  size_t hs = c / heads;
  float scale = (float)(1.0 / sqrt((double)hs));
  walk w = walk_of(batch, tokens, c, heads);
  for (size_t o = 0; o < w.outer && rc == 0; o++) {
    const float *q = qkv + o * w.qkv_o, *k = q + c;
    /* att[b, h] (T, T) = scale * q_h (T, hs) . k_h^T */
    rc =
        qt__cuda_gemm_convert(0, 1, tokens, tokens, hs, scale, q, 3 * c, w.qkv_i, k, 3 * c, w.qkv_i,
                              0.0f, att + o * w.att_o, tokens, w.att_i, w.inner, who, err);
  }
  if (rc < 0) return rc;
  size_t rows = batch * heads * tokens;
  softmax_rows_kernel<<<qt__cuda_row_blocks(rows), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
      att, rows, tokens);
  rc = qt__cuda_check_launch(err, who, "the softmax kernel");
  for (size_t o = 0; o < w.outer && rc == 0; o++) {
    const float *v = qkv + o * w.qkv_o + 2 * c;
    /* out[b] (T, hs) at column h * hs = att[b, h] (T, T) . v_h (T, hs) */
    rc = qt__cuda_gemm_convert(0, 0, tokens, hs, tokens, 1.0f, att + o * w.att_o, tokens, w.att_i,
                               v, 3 * c, w.qkv_i, 0.0f, out + o * w.out_o, c, w.out_i, w.inner, who,
                               err);
  }
  return rc;
}

extern "C" int qt__cuda_attention_backward(float *dqkv, float *scratch, const float *dout,
                                           const float *qkv, const float *att, size_t batch,
                                           size_t tokens, size_t c, size_t heads, int set,
                                           qt_err *err) {
  const char *who = "qt_cuda_attention_backward";
  int rc = check_shape(batch, tokens, c, heads, who, err);
  if (rc < 0) return rc;
  if (batch == 0 || tokens == 0 || c == 0) return 0;
  if (!dqkv || !scratch || !dout || !qkv || !att) {
    return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  }
  size_t hs = c / heads;
  float scale = (float)(1.0 / sqrt((double)hs));
  walk w = walk_of(batch, tokens, c, heads);
  long long tt = (long long)(tokens * tokens);
  /* Each element of dqkv is the result of one of the products below. */
  float beta = set ? 0.0f : 1.0f;
  /* The outer steps run one after the other on the stream: the scratch,
   * (inner, T, T), is reused. */
  for (size_t o = 0; o < w.outer && rc == 0; o++) {
    const float *q = qkv + o * w.qkv_o, *k = q + c, *v = q + 2 * c;
    float *dq = dqkv + o * w.qkv_o, *dk = dq + c, *dv = dq + 2 * c;
    const float *a = att + o * w.att_o;
    const float *dy = dout + o * w.out_o;
    float *da = scratch;
    /* da = dy_h (T, hs) . v_h^T */
    rc = qt__cuda_gemm_convert(0, 1, tokens, tokens, hs, 1.0f, dy, c, w.out_i, v, 3 * c, w.qkv_i,
                               0.0f, da, tokens, tt, w.inner, who, err);
    /* dv_h += a^T . dy_h */
    if (rc == 0) {
      rc = qt__cuda_gemm_convert(1, 0, tokens, hs, tokens, 1.0f, a, tokens, w.att_i, dy, c, w.out_i,
                                 beta, dv, 3 * c, w.qkv_i, w.inner, who, err);
    }
    if (rc == 0) {
      size_t rows = w.inner * tokens;
      softmax_backward_rows_kernel<<<qt__cuda_row_blocks(rows), QT_CUDA_THREADS, 0,
                                     qt__cuda_stream()>>>(da, a, rows, tokens, (size_t)w.att_i);
      rc = qt__cuda_check_launch(err, who, "the softmax backward kernel");
    }
    /* dq_h += scale ds . k_h; dk_h += scale ds^T . q_h */
    if (rc == 0) {
      rc = qt__cuda_gemm_convert(0, 0, tokens, hs, tokens, scale, da, tokens, tt, k, 3 * c, w.qkv_i,
                                 beta, dq, 3 * c, w.qkv_i, w.inner, who, err);
    }
    if (rc == 0) {
      rc = qt__cuda_gemm_convert(1, 0, tokens, hs, tokens, scale, da, tokens, tt, q, 3 * c, w.qkv_i,
                                 beta, dk, 3 * c, w.qkv_i, w.inner, who, err);
    }
  }
  return rc;
}

extern "C" int qt_cuda_attention_backward(float *dqkv, float *scratch, const float *dout,
                                          const float *qkv, const float *att, size_t batch,
                                          size_t tokens, size_t c, size_t heads, qt_err *err) {
  return qt__cuda_attention_backward(dqkv, scratch, dout, qkv, att, batch, tokens, c, heads, 0,
                                     err);
}

/*
 * qt_cpu_attention.c - the core of multi-head self-attention (scaled dot
 * products, softmax, weighted sum of values) between timm's qkv and proj
 * linears. Each (image, head) pair is three small matrix products that read
 * q, k and v in place through BLAS strides: no copies, no transposes.
 * See qt_finetune.h for the layout.
 */
#include <cblas.h>
#include <limits.h>
#include <math.h>

#include "finetune/cpu/qt_cpu_vmath.h"
#include "finetune/qt_finetune.h"

void qt_cpu_attention_forward(float *out, float *att, const float *qkv, size_t batch, size_t tokens,
                              size_t c, size_t heads) {
  QT_ASSERT(heads > 0 && c % heads == 0);
  QT_ASSERT(3 * c <= INT_MAX && tokens <= INT_MAX);
  size_t hs = c / heads;
  int T = (int)tokens, HS = (int)hs, ld_qkv = (int)(3 * c), ld_out = (int)c;
  /* timm scales q before the product; in exact arithmetic the same. */
  float scale = (float)(1.0 / sqrt((double)hs));
  for (size_t b = 0; b < batch; b++) {
    for (size_t h = 0; h < heads; h++) {
      const float *q = qkv + b * tokens * 3 * c + h * hs;
      const float *k = q + c;
      const float *v = q + 2 * c;
      float *a = att + (b * heads + h) * tokens * tokens;
      /* a (T, T) = scale * q (T, hs) . k^T */
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, HS, scale, q, ld_qkv, k, ld_qkv,
                  0.0f, a, T);
      /* Row-wise softmax, shifted by the row maximum. */
      qt__cpu_softmax_rows(a, tokens, tokens);
      /* out (T, hs) at column h * hs = a (T, T) . v (T, hs) */
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, HS, T, 1.0f, a, T, v, ld_qkv, 0.0f,
                  out + b * tokens * c + h * hs, ld_out);
    }
  }
}

void qt_cpu_attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                               const float *att, size_t batch, size_t tokens, size_t c,
                               size_t heads) {
  QT_ASSERT(heads > 0 && c % heads == 0);
  QT_ASSERT(3 * c <= INT_MAX && tokens <= INT_MAX);
  size_t hs = c / heads;
  int T = (int)tokens, HS = (int)hs, ld_qkv = (int)(3 * c), ld_out = (int)c;
  float scale = (float)(1.0 / sqrt((double)hs));
  for (size_t b = 0; b < batch; b++) {
    for (size_t h = 0; h < heads; h++) {
      size_t offset = b * tokens * 3 * c + h * hs;
      const float *q = qkv + offset, *k = q + c, *v = q + 2 * c;
      float *dq = dqkv + offset, *dk = dq + c, *dv = dq + 2 * c;
      const float *a = att + (b * heads + h) * tokens * tokens;
      const float *dy = dout + b * tokens * c + h * hs;
      float *da = scratch; /* (T, T) */
      /* da = dy (T, hs) . v^T; dv += a^T . dy */
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, HS, 1.0f, dy, ld_out, v, ld_qkv,
                  0.0f, da, T);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, HS, T, 1.0f, a, T, dy, ld_out, 1.0f,
                  dv, ld_qkv);
      /* Through the softmax, in place: ds = a * (da - sum_j a da). */
      qt__cpu_softmax_backward_rows(da, a, tokens, tokens);
      /* The scores were scale * q k^T: dq += scale ds . k, dk += scale ds^T . q */
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, HS, T, scale, da, T, k, ld_qkv,
                  1.0f, dq, ld_qkv);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, HS, T, scale, da, T, q, ld_qkv, 1.0f,
                  dk, ld_qkv);
    }
  }
}

/*
 * qt_cpu_attention.c - the core of multi-head self-attention (scaled dot
 * products, softmax, weighted sum of values) between timm's qkv and proj
 * linears. Each (image, head) pair is three small matrix products that read
 * q, k and v in place through BLAS strides: no copies, no transposes.
 * The pairs go to the worker threads (qt_cpu_parallel.h), OpenBLAS taking
 * one thread a product meanwhile: a 197 x 197 x 64 product is too small
 * for OpenBLAS's threads to pay (on two processors, the attention took
 * longer with two of them than with one). Each pair writes its own parts
 * of out, att and dqkv. See qt_finetune.h for the layout.
 */
#include <cblas.h>
#include <limits.h>
#include <math.h>

#include "finetune/cpu/qt_cpu_parallel.h"
#include "finetune/cpu/qt_cpu_vmath.h"
#include "finetune/qt_finetune.h"

typedef struct attention_job {
  float *out, *att;  /* forward */
  float *dqkv, *da;  /* backward; da: the caller's (tokens, tokens) scratch */
  const float *dout; /* backward */
  const float *qkv;
  const float *saved; /* backward: the forward's att */
  size_t tokens, c, heads;
} attention_job;

/* The pairs [begin, end) of (image, head) = (pair / heads, pair % heads). */
static void forward_pairs(void *job, size_t begin, size_t end, void *scratch) {
  (void)scratch;
  const attention_job *A = job;
  size_t tokens = A->tokens, c = A->c, hs = c / A->heads;
  int T = (int)tokens, HS = (int)hs, ld_qkv = (int)(3 * c), ld_out = (int)c;
  /* timm scales q before the product; in exact arithmetic the same. */
  float scale = (float)(1.0 / sqrt((double)hs));
  for (size_t pair = begin; pair < end; pair++) {
    size_t b = pair / A->heads, h = pair % A->heads;
    const float *q = A->qkv + b * tokens * 3 * c + h * hs;
    const float *k = q + c;
    const float *v = q + 2 * c;
    float *a = A->att + pair * tokens * tokens;
    /* a (T, T) = scale * q (T, hs) . k^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, HS, scale, q, ld_qkv, k, ld_qkv,
                0.0f, a, T);
    /* Row-wise softmax, shifted by the row maximum. */
    qt__cpu_softmax_rows(a, tokens, tokens);
    /* out (T, hs) at column h * hs = a (T, T) . v (T, hs) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, HS, T, 1.0f, a, T, v, ld_qkv, 0.0f,
                A->out + b * tokens * c + h * hs, ld_out);
  }
}

void qt_cpu_attention_forward(float *out, float *att, const float *qkv, size_t batch, size_t tokens,
                              size_t c, size_t heads) {
  QT_ASSERT(heads > 0 && c % heads == 0);
  QT_ASSERT(3 * c <= INT_MAX && tokens <= INT_MAX);
  attention_job job = {
      .out = out, .att = att, .qkv = qkv, .tokens = tokens, .c = c, .heads = heads};
  qt__cpu_parallel_for(batch * heads, 1, 0, QT_CPU_PARALLEL_BLAS, forward_pairs, &job);
}

static void backward_pairs(void *job, size_t begin, size_t end, void *scratch) {
  const attention_job *A = job;
  size_t tokens = A->tokens, c = A->c, hs = c / A->heads;
  int T = (int)tokens, HS = (int)hs, ld_qkv = (int)(3 * c), ld_out = (int)c;
  float scale = (float)(1.0 / sqrt((double)hs));
  float *da = scratch ? scratch : A->da; /* (T, T) */
  for (size_t pair = begin; pair < end; pair++) {
    size_t b = pair / A->heads, h = pair % A->heads;
    size_t offset = b * tokens * 3 * c + h * hs;
    const float *q = A->qkv + offset, *k = q + c, *v = q + 2 * c;
    float *dq = A->dqkv + offset, *dk = dq + c, *dv = dq + 2 * c;
    const float *a = A->saved + pair * tokens * tokens;
    const float *dy = A->dout + b * tokens * c + h * hs;
    /* da = dy (T, hs) . v^T; dv += a^T . dy */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, HS, 1.0f, dy, ld_out, v, ld_qkv,
                0.0f, da, T);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, HS, T, 1.0f, a, T, dy, ld_out, 1.0f, dv,
                ld_qkv);
    /* Through the softmax, in place: ds = a * (da - sum_j a da). */
    qt__cpu_softmax_backward_rows(da, a, tokens, tokens);
    /* The scores were scale * q k^T: dq += scale ds . k, dk += scale ds^T . q */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, HS, T, scale, da, T, k, ld_qkv, 1.0f,
                dq, ld_qkv);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, HS, T, scale, da, T, q, ld_qkv, 1.0f,
                dk, ld_qkv);
  }
}

void qt_cpu_attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                               const float *att, size_t batch, size_t tokens, size_t c,
                               size_t heads) {
  QT_ASSERT(heads > 0 && c % heads == 0);
  QT_ASSERT(3 * c <= INT_MAX && tokens <= INT_MAX);
  attention_job job = {.dqkv = dqkv,
                       .da = scratch,
                       .dout = dout,
                       .qkv = qkv,
                       .saved = att,
                       .tokens = tokens,
                       .c = c,
                       .heads = heads};
  /* A worker's own da: the caller's scratch is the calling thread's. */
  qt__cpu_parallel_for(batch * heads, 1, tokens * tokens * sizeof *scratch, QT_CPU_PARALLEL_BLAS,
                       backward_pairs, &job);
}

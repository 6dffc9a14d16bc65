/*
 * qt_methods_lora.c - the arithmetic of LoRA and ROSA adapters on a linear
 * layer stored as timm stores it, W (out, in) with y = x W^T + b: the
 * merged weight W = base + scale B A with A (rank, in) and B (out, rank),
 * the gradients of A and B from the gradient of the merged weight, LoRA's
 * initialization (A as torch's kaiming_uniform_(a = sqrt(5)), B zero), and
 * ROSA's resample (SVD of the merged weight, a window of r singular
 * triplets trainable, the rest fixed). See "LoRA adapters" in
 * qt_finetune.h; the run (qt_run.c) keeps W merged, so the model's forward
 * and backward passes need no change.
 */
#include <cblas.h>
#include <lapacke.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/cpu/qt_cpu_parallel.h"
#include "finetune/qt_finetune.h"

double qt_lora_scale(double alpha, long rank) {
  if (rank < 1) return 0.0;
  return (alpha > 0.0 ? alpha : (double)rank) / (double)rank;
}

void qt_lora_init(float *a, float *b, size_t out, size_t in, size_t rank, qt_rng_t *rng) {
  /* kaiming_uniform_(a = sqrt(5)) on a (rank, in) tensor: the bound is
   * sqrt(6 / ((1 + 5) fan_in)) = 1 / sqrt(in), as peft's LoRA layers. */
  double bound = 1.0 / sqrt((double)(in ? in : 1));
  for (size_t i = 0; i < rank * in; i++)
    a[i] = (float)(bound * (2.0 * qt_rng_uniform(rng) - 1.0));
  memset(b, 0, out * rank * sizeof *b);
}

void qt_lora_merge(float *w, const float *w0, const float *a, const float *b, size_t out,
                   size_t in, size_t rank, double scale) {
  QT_ASSERT(out <= INT_MAX && in <= INT_MAX && rank <= INT_MAX);
  memcpy(w, w0, out * in * sizeof *w);
  /* W (out, in) += scale B (out, rank) A (rank, in). */
  qt__cpu_sgemm(CblasNoTrans, CblasNoTrans, (int)out, (int)in, (int)rank, (float)scale, b,
                (int)rank, a, (int)in, 1.0f, w, (int)in);
}

void qt_lora_gradients(const float *dw, const float *a, const float *b, size_t out, size_t in,
                       size_t rank, double scale, float *ga, float *gb) {
  QT_ASSERT(out <= INT_MAX && in <= INT_MAX && rank <= INT_MAX);
  /* dL/dA = scale B^T dW: (rank, in). */
  qt__cpu_sgemm(CblasTrans, CblasNoTrans, (int)rank, (int)in, (int)out, (float)scale, b, (int)rank,
                dw, (int)in, 0.0f, ga, (int)in);
  /* dL/dB = scale dW A^T: (out, rank). */
  qt__cpu_sgemm(CblasNoTrans, CblasTrans, (int)out, (int)rank, (int)in, (float)scale, dw, (int)in,
                a, (int)in, 0.0f, gb, (int)rank);
}

/* ------------------------------------------------------------------------- */
/* ROSA                                                                       */
/* ------------------------------------------------------------------------- */

size_t qt_rosa_window_start(size_t n, size_t rank, qt_rng_t *rng) {
  /* torch.randint(0, n - r): {0, ..., n - r - 1}; the last window is never
   * drawn, as in the reference code. */
  if (rank >= n || n - rank < 1) return 0;
  return (size_t)qt_rng_uniform_int(rng, (uint64_t)(n - rank));
}

int qt_rosa_factorize(const float *w, size_t out, size_t in, size_t rank, size_t start,
                      float *fixed, float *a, float *b, qt_err *err) {
  if (!w || !fixed || !a || !b || out == 0 || in == 0 || rank == 0)
    return qt_err_set(err, QT_EINVAL, "qt_rosa_factorize: bad arguments");
  if (out > INT_MAX || in > INT_MAX)
    return qt_err_set(err, QT_EINVAL, "qt_rosa_factorize: matrix too large");
  size_t n = out < in ? out : in;
  size_t used = rank < n ? rank : n;
  if (start + used > n)
    return qt_err_set(err, QT_EINVAL, "qt_rosa_factorize: window %zu + %zu outside %zu", start,
                      used, n);
  /* One block: the copy LAPACK destroys, U (out, n), S (n), V^T (n, in)
   * and gesvd's superb (n - 1). Allocated per call: a resample happens once
   * per layer and epoch. */
  size_t total = out * in + out * n + n + n * in + n;
  float *block = malloc(total * sizeof *block);
  if (!block) return qt_err_set(err, QT_ENOMEM, "qt_rosa_factorize: out of memory");
  float *copy = block, *u = copy + out * in, *s = u + out * n, *vt = s + n, *superb = vt + n * in;
  memcpy(copy, w, out * in * sizeof *copy);
  lapack_int info = LAPACKE_sgesvd(LAPACK_ROW_MAJOR, 'S', 'S', (lapack_int)out, (lapack_int)in,
                                   copy, (lapack_int)in, s, u, (lapack_int)n, vt, (lapack_int)in,
                                   superb);
  if (info != 0) {
    free(block);
    return qt_err_set(err, QT_EIO, "qt_rosa_factorize: the SVD failed (LAPACK info %d)",
                      (int)info);
  }
  /* The window's triplets: B = U_I (out, r), A = S_I V^T_I (r, in); the
   * singular values go into A, the factor next to the input, as ROSA's
   * code puts them into its input-side factor. Rows/columns past n stay
   * zero (a rank above min(out, in) trains all triplets). */
  memset(a, 0, rank * in * sizeof *a);
  memset(b, 0, out * rank * sizeof *b);
  for (size_t j = 0; j < used; j++) {
    size_t c = start + j;
    for (size_t o = 0; o < out; o++) b[o * rank + j] = u[o * n + c];
    for (size_t i = 0; i < in; i++) a[j * in + i] = s[c] * vt[c * in + i];
  }
  /* W_fixed = the other triplets: U diag(s with the window zeroed) V^T. */
  for (size_t o = 0; o < out; o++) {
    for (size_t c = 0; c < n; c++) u[o * n + c] *= (c >= start && c < start + used) ? 0.0f : s[c];
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)out, (int)in, (int)n, 1.0f, u,
              (int)n, vt, (int)in, 0.0f, fixed, (int)in);
  free(block);
  return 0;
}

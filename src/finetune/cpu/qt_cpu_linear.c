/*
 * qt_cpu_linear.c - the linear layer (torch.nn.Linear) on the CPU: matrix
 * products by OpenBLAS (qt__cpu_sgemm: in blocks on the worker threads),
 * bias loops by hand (the bias gradient's column
 * sums in qt_cpu_sums.h). See qt_finetune.h for shapes.
 */
#include <cblas.h>
#include <limits.h>
#include <string.h>

#include "finetune/cpu/qt_cpu_parallel.h"
#include "finetune/cpu/qt_cpu_sums.h"
#include "finetune/qt_finetune.h"

void qt_cpu_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                           size_t n, size_t in_c, size_t out_c) {
  QT_ASSERT(n <= INT_MAX && in_c <= INT_MAX && out_c <= INT_MAX);
  if (n == 0 || out_c == 0) return;
  /* Start from the bias and let sgemm add the product (beta = 1), which
   * saves a second pass over out. */
  if (bias) {
    for (size_t i = 0; i < n; i++) memcpy(out + i * out_c, bias, out_c * sizeof *out);
  }
  if (in_c == 0) {
    if (!bias) memset(out, 0, n * out_c * sizeof *out);
    return;
  }
  qt__cpu_sgemm(CblasNoTrans, CblasTrans, (int)n, (int)out_c, (int)in_c, 1.0f, inp, (int)in_c,
                weight, (int)in_c, bias ? 1.0f : 0.0f, out, (int)out_c);
}

void qt_cpu_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, size_t n, size_t in_c,
                            size_t out_c) {
  QT_ASSERT(n <= INT_MAX && in_c <= INT_MAX && out_c <= INT_MAX);
  if (n == 0 || out_c == 0) return;
  if (dinp && in_c > 0) {
    /* dinp (n, in_c) += dout (n, out_c) . weight (out_c, in_c) */
    qt__cpu_sgemm(CblasNoTrans, CblasNoTrans, (int)n, (int)in_c, (int)out_c, 1.0f, dout, (int)out_c,
                  weight, (int)in_c, 1.0f, dinp, (int)in_c);
  }
  if (dweight && in_c > 0) {
    /* dweight (out_c, in_c) += dout^T (out_c, n) . inp (n, in_c) */
    qt__cpu_sgemm(CblasTrans, CblasNoTrans, (int)out_c, (int)in_c, (int)n, 1.0f, dout, (int)out_c,
                  inp, (int)in_c, 1.0f, dweight, (int)in_c);
  }
  /* Column sums in double: a bias collects n terms (batch * tokens). */
  if (dbias) qt__add_column_sums(dbias, dout, NULL, n, out_c);
}

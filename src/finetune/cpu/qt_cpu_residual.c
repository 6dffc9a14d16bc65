/*
 * qt_cpu_residual.c - a residual connection with optional layer scale
 * (timm's LayerScale, DeiT III). See qt_finetune.h.
 */
#include "finetune/cpu/qt_cpu_sums.h"
#include "finetune/qt_finetune.h"

void qt_cpu_residual_forward(float *out, const float *res, const float *branch, const float *gamma,
                             size_t n, size_t c) {
  for (size_t i = 0; i < n; i++) {
    for (size_t j = 0; j < c; j++) {
      size_t k = i * c + j;
      out[k] = res[k] + (gamma ? gamma[j] * branch[k] : branch[k]);
    }
  }
}

void qt_cpu_residual_backward(float *dres, float *dbranch, float *dgamma, const float *dout,
                              const float *branch, const float *gamma, size_t n, size_t c) {
  for (size_t i = 0; i < n; i++) {
    for (size_t j = 0; j < c; j++) {
      size_t k = i * c + j;
      if (dres) dres[k] += dout[k];
      if (dbranch) dbranch[k] += gamma ? gamma[j] * dout[k] : dout[k];
    }
  }
  if (dgamma) qt__add_column_sums(dgamma, dout, branch, n, c);
}

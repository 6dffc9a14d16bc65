/*
 * qt_cpu_gelu.c - GELU in its exact (erf) form, as torch.nn.GELU() and
 * therefore timm's ViT MLPs compute it. See qt_finetune.h.
 */
#include <math.h>

#include "finetune/qt_finetune.h"

#define QT_SQRT1_2 0.70710678118654752440f      /* 1 / sqrt(2) */
#define QT_INV_SQRT_2PI 0.39894228040143267794f /* 1 / sqrt(2 pi) */

void qt_cpu_gelu_forward(float *out, const float *inp, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float x = inp[i];
    out[i] = 0.5f * x * (1.0f + erff(x * QT_SQRT1_2));
  }
}

void qt_cpu_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float x = inp[i];
    float cdf = 0.5f * (1.0f + erff(x * QT_SQRT1_2));
    float pdf = QT_INV_SQRT_2PI * expf(-0.5f * x * x);
    dinp[i] += dout[i] * (cdf + x * pdf);
  }
}

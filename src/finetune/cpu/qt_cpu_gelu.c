/*
 * qt_cpu_gelu.c - GELU in its exact (erf) form, as torch.nn.GELU() and
 * therefore timm's ViT MLPs compute it: x Phi(x), Phi the standard normal
 * CDF (1 + erf(x / sqrt 2)) / 2, here qt_vphif, which the compiler
 * vectorizes (qt_cpu_vmath.h: within 1.5e-7 of Phi, and accurate in the
 * lower tail, where 1 + erff(x / sqrt 2) is a difference of two numbers
 * near 1). Ranges of values on the worker threads (qt_cpu_parallel.h).
 * See qt_finetune.h.
 */
#include "finetune/cpu/qt_cpu_parallel.h"
#include "finetune/cpu/qt_cpu_vmath.h"
#include "finetune/qt_finetune.h"

#define QT_INV_SQRT_2PI 0.39894228040143267794f /* 1 / sqrt(2 pi) */

static QT_VECTOR_CLONES void forward_values(float *out, const float *inp, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float x = inp[i];
    out[i] = x * qt_vphif(x);
  }
}

/* d/dx x Phi(x) = Phi(x) + x phi(x), phi the standard normal density. */
static QT_VECTOR_CLONES void backward_values(float *dinp, const float *dout, const float *inp,
                                             size_t n) {
  for (size_t i = 0; i < n; i++) {
    float x = inp[i];
    float pdf = QT_INV_SQRT_2PI * qt_vexpf(-0.5f * x * x);
    dinp[i] += dout[i] * (qt_vphif(x) + x * pdf);
  }
}

void qt_cpu_gelu_forward(float *out, const float *inp, size_t n) {
  qt__cpu_parallel_values(forward_values, out, inp, n);
}

void qt_cpu_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
  qt__cpu_parallel_gradients(backward_values, dinp, dout, inp, n);
}

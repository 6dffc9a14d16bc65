/*
 * qt_cpu_act.c - the activations of the convolutional families on the CPU:
 * ReLU, ReLU6 (MobileNetV2) and SiLU (EfficientNet), forward and backward.
 * See qt_finetune.h.
 */
#include <math.h>

#include "finetune/qt_finetune.h"

void qt_cpu_relu_forward(float *out, const float *inp, size_t n) {
  for (size_t i = 0; i < n; i++) out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}

void qt_cpu_relu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (inp[i] > 0.0f) dinp[i] += dout[i];
  }
}

void qt_cpu_relu6_forward(float *out, const float *inp, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float x = inp[i];
    out[i] = x > 0.0f ? (x < 6.0f ? x : 6.0f) : 0.0f;
  }
}

void qt_cpu_relu6_backward(float *dinp, const float *dout, const float *inp, size_t n) {
  /* PyTorch's hardtanh_backward: the gradient passes strictly inside. */
  for (size_t i = 0; i < n; i++) {
    if (inp[i] > 0.0f && inp[i] < 6.0f) dinp[i] += dout[i];
  }
}

void qt_cpu_silu_forward(float *out, const float *inp, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float x = inp[i];
    out[i] = x / (1.0f + expf(-x));
  }
}

void qt_cpu_silu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
  /* d/dx x s(x) = s(x) (1 + x (1 - s(x))). */
  for (size_t i = 0; i < n; i++) {
    float x = inp[i];
    float sig = 1.0f / (1.0f + expf(-x));
    dinp[i] += dout[i] * sig * (1.0f + x * (1.0f - sig));
  }
}

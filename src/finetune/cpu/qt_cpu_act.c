/*
 * qt_cpu_act.c - the activations of the convolutional families on the CPU:
 * ReLU, ReLU6 (MobileNetV2) and SiLU (EfficientNet), forward and backward.
 * SiLU's e^-x is qt_vexpf (qt_cpu_vmath.h), which vectorizes. Ranges of
 * values go to the worker threads (qt_cpu_parallel.h). See qt_finetune.h.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "finetune/cpu/qt_cpu_parallel.h"
#include "finetune/cpu/qt_cpu_vmath.h"
#include "finetune/qt_finetune.h"

static void relu_forward_values(float *out, const float *inp, size_t n) {
  for (size_t i = 0; i < n; i++) out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}

/* a where pass is 1, else b, chosen on the bits: no branch, and no
 * floating-point operation that GCC must keep behind one (it assumes
 * arithmetic may trap), so the loops below vectorize (at -O3, see
 * CMakeLists.txt). The backward passes compute every sum and keep it or
 * the old value: the same values as adding only where the gradient
 * passes, a -0 included. */
static inline float pick(int pass, float a, float b) {
  uint32_t ua, ub, mask = 0u - (uint32_t)pass;
  memcpy(&ua, &a, sizeof ua);
  memcpy(&ub, &b, sizeof ub);
  ua = (ua & mask) | (ub & ~mask);
  memcpy(&a, &ua, sizeof a);
  return a;
}

static void relu_backward_values(float *dinp, const float *dout, const float *inp, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float d = dinp[i];
    dinp[i] = pick(inp[i] > 0.0f, d + dout[i], d);
  }
}

static void relu6_forward_values(float *out, const float *inp, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float x = inp[i];
    out[i] = x > 0.0f ? (x < 6.0f ? x : 6.0f) : 0.0f;
  }
}

static void relu6_backward_values(float *dinp, const float *dout, const float *inp, size_t n) {
  /* PyTorch's hardtanh_backward: the gradient passes strictly inside. */
  for (size_t i = 0; i < n; i++) {
    float x = inp[i], d = dinp[i];
    dinp[i] = pick((x > 0.0f) & (x < 6.0f), d + dout[i], d);
  }
}

static QT_VECTOR_CLONES void silu_forward_values(float *out, const float *inp, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float x = inp[i];
    out[i] = x / (1.0f + qt_vexpf(-x));
  }
}

static QT_VECTOR_CLONES void silu_backward_values(float *dinp, const float *dout, const float *inp,
                                                  size_t n) {
  /* d/dx x s(x) = s(x) (1 + x (1 - s(x))). */
  for (size_t i = 0; i < n; i++) {
    float x = inp[i];
    float sig = 1.0f / (1.0f + qt_vexpf(-x));
    dinp[i] += dout[i] * sig * (1.0f + x * (1.0f - sig));
  }
}

void qt_cpu_relu_forward(float *out, const float *inp, size_t n) {
  qt__cpu_parallel_values(relu_forward_values, out, inp, n);
}

void qt_cpu_relu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
  qt__cpu_parallel_gradients(relu_backward_values, dinp, dout, inp, n);
}

void qt_cpu_relu6_forward(float *out, const float *inp, size_t n) {
  qt__cpu_parallel_values(relu6_forward_values, out, inp, n);
}

void qt_cpu_relu6_backward(float *dinp, const float *dout, const float *inp, size_t n) {
  qt__cpu_parallel_gradients(relu6_backward_values, dinp, dout, inp, n);
}

void qt_cpu_silu_forward(float *out, const float *inp, size_t n) {
  qt__cpu_parallel_values(silu_forward_values, out, inp, n);
}

void qt_cpu_silu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
  qt__cpu_parallel_gradients(silu_backward_values, dinp, dout, inp, n);
}

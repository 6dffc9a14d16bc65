/*
 * qt_cpu_pool.c - pooling of NCHW images on the CPU: global average
 * pooling (the head of every convolutional family) and max pooling (the
 * ResNet stem), forward and backward. See qt_finetune.h.
 */
#include <math.h>
#include <stdint.h>

#include "finetune/qt_finetune.h"

void qt_cpu_global_avgpool_forward(float *out, const float *inp, size_t batch, size_t c,
                                   size_t hw) {
  for (size_t i = 0; i < batch * c; i++) {
    const float *x = inp + i * hw;
    double sum = 0.0;
    for (size_t p = 0; p < hw; p++) sum += x[p];
    out[i] = (float)(sum / (double)hw);
  }
}

void qt_cpu_global_avgpool_backward(float *dinp, const float *dout, size_t batch, size_t c,
                                    size_t hw) {
  float inv = 1.0f / (float)hw;
  for (size_t i = 0; i < batch * c; i++) {
    float g = dout[i] * inv;
    float *dx = dinp + i * hw;
    for (size_t p = 0; p < hw; p++) dx[p] += g;
  }
}

/* Max pooling (torch.nn.MaxPool2d): the geometry of a depthwise
 * convolution without weights, padding reads as -infinity. argmax keeps,
 * per output, the index of the winner inside its input plane; ties go to
 * the first in scan order, and a NaN in the window wins (the last one in
 * scan order, if several), as in PyTorch's kernels: a NaN activation
 * reaches the loss instead of vanishing here. */
/* The kernel rows (or columns) [*lo, *hi) that land in the image for an
 * output whose window starts at `start` (negative in the padding). */
static void window(long start, size_t kernel, size_t extent, size_t *lo, size_t *hi) {
  *lo = start < 0 ? (size_t)-start : 0;
  long end = start + (long)kernel;
  *hi = end > (long)extent ? (size_t)((long)extent - start) : kernel;
}

void qt_cpu_maxpool2d_forward(float *out, int32_t *argmax, const float *inp,
                              const qt_conv2d_shape *s) {
  size_t in_plane = s->in_h * s->in_w, out_plane = s->out_h * s->out_w;
  for (size_t plane = 0; plane < s->batch * s->in_c; plane++) {
    const float *x = inp + plane * in_plane;
    float *y = out + plane * out_plane;
    int32_t *arg = argmax + plane * out_plane;
    for (size_t oy = 0; oy < s->out_h; oy++) {
      long y0 = (long)(oy * s->stride_h) - (long)s->pad_top;
      size_t ky_lo, ky_hi;
      window(y0, s->kernel_h, s->in_h, &ky_lo, &ky_hi);
      for (size_t ox = 0; ox < s->out_w; ox++) {
        long x0 = (long)(ox * s->stride_w) - (long)s->pad_left;
        size_t kx_lo, kx_hi;
        window(x0, s->kernel_w, s->in_w, &kx_lo, &kx_hi);
        /* The kernel always overlaps the image (padding < kernel). */
        QT_ASSERT(ky_lo < ky_hi && kx_lo < kx_hi);
        /* The first value in scan order, then each later one that is
         * larger, and the last NaN, chosen without a branch: on random
         * signs a branch mispredicts a few times per window (the NaN
         * apart, the maximum compiles to maxss and a cmov). */
        long best_at = (y0 + (long)ky_lo) * (long)s->in_w + x0 + (long)kx_lo, nan_at = -1;
        float best = x[best_at];
        for (size_t ky = ky_lo; ky < ky_hi; ky++) {
          long row = (y0 + (long)ky) * (long)s->in_w + x0;
          for (size_t kx = kx_lo; kx < kx_hi; kx++) {
            long at = row + (long)kx;
            float v = x[at];
            int larger = v > best;
            best = larger ? v : best;
            best_at = larger ? at : best_at;
            nan_at = v != v ? at : nan_at;
          }
        }
        if (nan_at >= 0) {
          best = x[nan_at];
          best_at = nan_at;
        }
        y[oy * s->out_w + ox] = best;
        arg[oy * s->out_w + ox] = (int32_t)best_at;
      }
    }
  }
}

void qt_cpu_maxpool2d_backward(float *dinp, const float *dout, const int32_t *argmax,
                               const qt_conv2d_shape *s) {
  size_t in_plane = s->in_h * s->in_w, out_plane = s->out_h * s->out_w;
  for (size_t plane = 0; plane < s->batch * s->in_c; plane++) {
    float *dx = dinp + plane * in_plane;
    const float *dy = dout + plane * out_plane;
    const int32_t *arg = argmax + plane * out_plane;
    for (size_t p = 0; p < out_plane; p++) dx[arg[p]] += dy[p];
  }
}

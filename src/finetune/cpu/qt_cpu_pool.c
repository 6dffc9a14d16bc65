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
 * the first in scan order, as PyTorch's CPU kernel does. */
void qt_cpu_maxpool2d_forward(float *out, int32_t *argmax, const float *inp,
                              const qt_conv2d_shape *s) {
  size_t in_plane = s->in_h * s->in_w, out_plane = s->out_h * s->out_w;
  for (size_t plane = 0; plane < s->batch * s->in_c; plane++) {
    const float *x = inp + plane * in_plane;
    float *y = out + plane * out_plane;
    int32_t *arg = argmax + plane * out_plane;
    for (size_t oy = 0; oy < s->out_h; oy++) {
      for (size_t ox = 0; ox < s->out_w; ox++) {
        float best = -INFINITY;
        long best_at = -1;
        for (size_t ky = 0; ky < s->kernel_h; ky++) {
          long iy = (long)(oy * s->stride_h + ky) - (long)s->pad_top;
          if (iy < 0 || iy >= (long)s->in_h) continue;
          for (size_t kx = 0; kx < s->kernel_w; kx++) {
            long ix = (long)(ox * s->stride_w + kx) - (long)s->pad_left;
            if (ix < 0 || ix >= (long)s->in_w) continue;
            long at = iy * (long)s->in_w + ix;
            if (best_at < 0 || x[at] > best) {
              best = x[at];
              best_at = at;
            }
          }
        }
        /* The kernel always overlaps the image (padding < kernel). */
        QT_ASSERT(best_at >= 0);
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

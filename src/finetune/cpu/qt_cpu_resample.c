/*
 * qt_cpu_resample.c - antialiased bicubic resizing of a grid of vectors, as
 * PyTorch's F.interpolate(mode='bicubic', antialias=True,
 * align_corners=False) computes it (aten/src/ATen/native/cpu/
 * UpSampleKernel.cpp, the "aa" path, which follows Pillow): timm resamples
 * a ViT's position embedding with it when the image size changes.
 *
 * For each output index i along one axis, with scale = in / out:
 *   center  = scale * (i + 0.5)
 *   support = 2 * max(scale, 1)             (Keys' cubic spans 2 on each side)
 *   taps    = [max(trunc(center - support + 0.5), 0),
 *              min(trunc(center + support + 0.5), in))
 *   w_j     = cubic((j - center + 0.5) / max(scale, 1)), normalized to sum 1
 * with Keys' cubic for a = -0.5. The weights are computed in float, as
 * PyTorch does for float tensors; columns are resized first, then rows.
 */
#include <math.h>
#include <string.h>

#include "finetune/qt_finetune.h"

/* Keys' cubic convolution kernel with a = -0.5. */
static float cubic(float x) {
  const float a = -0.5f;
  x = fabsf(x);
  if (x < 1.0f) return ((a + 2.0f) * x - (a + 3.0f)) * x * x + 1.0f;
  if (x < 2.0f) return (((x - 5.0f) * x + 8.0f) * x - 4.0f) * a;
  return 0.0f;
}

/* Weights of output index i: first tap and count, weights in w (at most
 * 4 * max(scale, 1) + 2 of them; the caller's array holds `capacity`). */
static void taps(size_t i, size_t in, float scale, float *w, size_t capacity, size_t *first,
                 size_t *count) {
  float support = scale >= 1.0f ? 2.0f * scale : 2.0f;
  float invscale = scale >= 1.0f ? 1.0f / scale : 1.0f;
  float center = scale * ((float)i + 0.5f);
  long lo = (long)(center - support + 0.5f); /* truncation, as int64_t() */
  long hi = (long)(center + support + 0.5f);
  if (lo < 0) lo = 0;
  if (hi > (long)in) hi = (long)in;
  size_t n = hi > lo ? (size_t)(hi - lo) : 0;
  QT_ASSERT(n <= capacity);
  float total = 0.0f;
  for (size_t j = 0; j < n; j++) {
    w[j] = cubic(((float)j + (float)lo - center + 0.5f) * invscale);
    total += w[j];
  }
  if (total != 0.0f) {
    for (size_t j = 0; j < n; j++) w[j] /= total;
  }
  *first = (size_t)lo;
  *count = n;
}

/* Resizes `lines` lines of `in` elements (stride in_stride between
 * consecutive elements of a line, line_stride between lines, each element a
 * vector of c floats) to `out` elements. */
static void resize_axis(float *dst, const float *src, size_t lines, size_t in, size_t out,
                        size_t src_elem_stride, size_t src_line_stride, size_t dst_elem_stride,
                        size_t dst_line_stride, size_t c) {
  float scale = (float)in / (float)out;
  float w[64];
  size_t capacity = sizeof w / sizeof w[0];
  for (size_t i = 0; i < out; i++) {
    size_t first, count;
    taps(i, in, scale, w, capacity, &first, &count);
    for (size_t l = 0; l < lines; l++) {
      float *d = dst + l * dst_line_stride + i * dst_elem_stride;
      const float *s = src + l * src_line_stride + first * src_elem_stride;
      for (size_t k = 0; k < c; k++) {
        float acc = 0.0f;
        for (size_t j = 0; j < count; j++) acc += s[j * src_elem_stride + k] * w[j];
        d[k] = acc;
      }
    }
  }
}

void qt_cpu_resample_bicubic(float *out, float *scratch, const float *inp, size_t old_h,
                             size_t old_w, size_t new_h, size_t new_w, size_t c) {
  QT_ASSERT(old_h > 0 && old_w > 0 && new_h > 0 && new_w > 0);
  /* The kernel's reach bounds the taps: 4 * scale + 2 must fit in 64. */
  QT_ASSERT(old_h <= 15 * new_h && old_w <= 15 * new_w);
  /* Columns: (old_h, old_w, c) -> scratch (old_h, new_w, c). */
  resize_axis(scratch, inp, old_h, old_w, new_w, c, old_w * c, c, new_w * c, c);
  /* Rows: scratch (old_h, new_w, c) -> out (new_h, new_w, c); a "line" is a
   * column of the grid, an element one row's vector. */
  resize_axis(out, scratch, new_w, old_h, new_h, new_w * c, c, new_w * c, c, c);
}

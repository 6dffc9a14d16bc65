/*
 * qt_data_transform.c - deterministic image preprocessing on uint8 HWC
 * images: PIL's resampling (the method torchvision uses for PIL images),
 * torchvision's crops, and the conversion to normalized float32 CHW.
 *
 * The resize is a transcription of Pillow's src/libImaging/Resample.c
 * (ImagingResampleInner with the 8-bit paths): for each output sample the
 * filter is centered on the sample's center mapped to the input, stretched
 * by the downscaling factor (this is the antialiasing), evaluated at the
 * input sample centers within its support, normalized, and converted to
 * fixed point with PRECISION_BITS = 22 fractional bits; the sum starts at
 * half a unit and is shifted back and clipped to 0..255. The horizontal pass
 * runs first, over the rows the vertical pass needs, into a uint8
 * intermediate image. Same numbers as PIL, bit for bit.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_data_internal.h"

/* ------------------------------------------------------------------------- */
/* Workspace                                                                  */
/* ------------------------------------------------------------------------- */

void qt__image_work_init(qt__image_work *w) {
  memset(w, 0, sizeof *w);
}

void qt__image_work_free(qt__image_work *w) {
  if (!w) return;
  free(w->image[0]);
  free(w->image[1]);
  free(w->temp);
  free(w->coeffs);
  free(w->weights);
  free(w->bounds);
  memset(w, 0, sizeof *w);
}

/* ------------------------------------------------------------------------- */
/* PIL resampling                                                             */
/* ------------------------------------------------------------------------- */

#define PRECISION_BITS (32 - 8 - 2)

static double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return 1.0 - x;
  return 0.0;
}

static double bicubic_filter(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

typedef struct resample_filter {
  double (*fn)(double);
  double support;
} resample_filter;

static const resample_filter filters[2] = {{bilinear_filter, 1.0}, {bicubic_filter, 2.0}};

static inline uint8_t clip8(int64_t v) {
  v >>= PRECISION_BITS;
  return v < 0 ? 0 : (v > 255 ? 255 : (uint8_t)v);
}

/* Number of coefficients per output sample (Pillow's ksize). */
static int coeff_count(size_t in_size, size_t out_size, const resample_filter *f) {
  double scale = (double)in_size / (double)out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  return (int)ceil(f->support * filterscale) * 2 + 1;
}

/* Pillow's precompute_coeffs and normalize_coeffs_8bpc: bounds (out_size, 2)
 * get (first input index, count); kk (out_size, ksize) the fixed-point
 * weights; pre (ksize) is scratch. */
static void precompute_coeffs(size_t in_size, size_t out_size, const resample_filter *f, int ksize,
                              int *bounds, int32_t *kk, double *pre) {
  double scale = (double)in_size / (double)out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = f->support * filterscale;
  double ss = 1.0 / filterscale;
  for (size_t xx = 0; xx < out_size; xx++) {
    double center = ((double)xx + 0.5) * scale;
    double ww = 0.0;
    /* (int) truncates toward zero, as in Pillow. */
    int xmin = (int)(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = (int)(center + support + 0.5);
    if (xmax > (int)in_size) xmax = (int)in_size;
    xmax -= xmin;
    int x;
    for (x = 0; x < xmax; x++) {
      double w = f->fn(((double)x + xmin - center + 0.5) * ss);
      pre[x] = w;
      ww += w;
    }
    for (x = 0; x < xmax; x++)
      if (ww != 0.0) pre[x] /= ww;
    for (; x < ksize; x++) pre[x] = 0;
    int32_t *k = kk + xx * (size_t)ksize;
    for (x = 0; x < ksize; x++)
      k[x] = pre[x] < 0 ? (int32_t)(-0.5 + pre[x] * (1 << PRECISION_BITS))
                        : (int32_t)(0.5 + pre[x] * (1 << PRECISION_BITS));
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
  }
}

int qt__image_resize_window(qt__image_work *w, const uint8_t *src, size_t src_stride,
                            size_t src_height, size_t src_width, size_t channels, uint8_t *dst,
                            size_t dst_height, size_t dst_width, qt_interpolation interpolation,
                            qt_err *err) {
  if (!src || !dst || channels < 1 || channels > 4 || src_height == 0 || src_width == 0 ||
      dst_height == 0 || dst_width == 0)
    return qt_err_set(err, QT_EINVAL, "resize: bad arguments (%zux%zu -> %zux%zu, %zu channels)",
                      src_height, src_width, dst_height, dst_width, channels);
  if (src_height > QT_IMAGE_MAX_SIDE || src_width > QT_IMAGE_MAX_SIDE ||
      dst_height > QT_IMAGE_MAX_SIDE || dst_width > QT_IMAGE_MAX_SIDE)
    return qt_err_set(err, QT_EINVAL, "resize: a side is over %u", QT_IMAGE_MAX_SIDE);
  if ((unsigned)interpolation > QT_INTERPOLATION_BICUBIC)
    return qt_err_set(err, QT_EINVAL, "resize: unknown interpolation %d", (int)interpolation);
  size_t row = dst_width * channels;
  if (src_height == dst_height && src_width == dst_width) {
    for (size_t y = 0; y < dst_height; y++) memcpy(dst + y * row, src + y * src_stride, row);
    return 0;
  }
  const resample_filter *f = &filters[interpolation];
  int kh = coeff_count(src_width, dst_width, f);
  int kv = coeff_count(src_height, dst_height, f);
  size_t n_coeffs = dst_width * (size_t)kh + dst_height * (size_t)kv;
  size_t n_bounds = 2 * (dst_width + dst_height);
  size_t n_pre = (size_t)(kh > kv ? kh : kv);
  int rc;
  if ((rc = qt__grow((void **)&w->coeffs, &w->coeffs_cap, n_coeffs * sizeof(int32_t), err)) < 0 ||
      (rc = qt__grow((void **)&w->bounds, &w->bounds_cap, n_bounds * sizeof(int), err)) < 0 ||
      (rc = qt__grow((void **)&w->weights, &w->weights_cap, n_pre * sizeof(double), err)) < 0)
    return rc;
  int32_t *kk_h = w->coeffs, *kk_v = w->coeffs + dst_width * (size_t)kh;
  int *bounds_h = w->bounds, *bounds_v = w->bounds + 2 * dst_width;
  precompute_coeffs(src_width, dst_width, f, kh, bounds_h, kk_h, w->weights);
  precompute_coeffs(src_height, dst_height, f, kv, bounds_v, kk_v, w->weights);

  /* Rows of the input the vertical pass reads. */
  size_t y_first = (size_t)bounds_v[0];
  size_t y_last = (size_t)(bounds_v[2 * dst_height - 2] + bounds_v[2 * dst_height - 1]);
  int need_h = src_width != dst_width;
  int need_v = src_height != dst_height;

  /* Horizontal pass into temp (rows y_first..y_last), or straight to dst. */
  const uint8_t *mid = src;
  size_t mid_stride = src_stride;
  if (need_h) {
    size_t rows = need_v ? y_last - y_first : dst_height;
    size_t first = need_v ? y_first : 0;
    uint8_t *out = dst;
    if (need_v) {
      if ((rc = qt__grow((void **)&w->temp, &w->temp_cap, rows * row, err)) < 0) return rc;
      out = w->temp;
    }
    for (size_t y = 0; y < rows; y++) {
      const uint8_t *in = src + (first + y) * src_stride;
      uint8_t *o = out + y * row;
      for (size_t xx = 0; xx < dst_width; xx++) {
        int xmin = bounds_h[2 * xx], xmax = bounds_h[2 * xx + 1];
        const int32_t *k = kk_h + xx * (size_t)kh;
        for (size_t c = 0; c < channels; c++) {
          int64_t ss = 1 << (PRECISION_BITS - 1);
          for (int x = 0; x < xmax; x++)
            ss += (int64_t)in[(size_t)(x + xmin) * channels + c] * k[x];
          o[xx * channels + c] = clip8(ss);
        }
      }
    }
    if (!need_v) return 0;
    mid = w->temp;
    mid_stride = row;
    /* The vertical bounds now count from y_first. */
    for (size_t yy = 0; yy < dst_height; yy++) bounds_v[2 * yy] -= (int)y_first;
  }
  /* Vertical pass. */
  for (size_t yy = 0; yy < dst_height; yy++) {
    int ymin = bounds_v[2 * yy], ymax = bounds_v[2 * yy + 1];
    const int32_t *k = kk_v + yy * (size_t)kv;
    uint8_t *o = dst + yy * row;
    for (size_t xc = 0; xc < row; xc++) {
      int64_t ss = 1 << (PRECISION_BITS - 1);
      for (int y = 0; y < ymax; y++)
        ss += (int64_t)mid[(size_t)(y + ymin) * mid_stride + xc] * k[y];
      o[xc] = clip8(ss);
    }
  }
  return 0;
}

int qt_image_resize(const uint8_t *src, size_t src_height, size_t src_width, size_t channels,
                    uint8_t *dst, size_t dst_height, size_t dst_width,
                    qt_interpolation interpolation, qt_err *err) {
  if (src && dst) {
    const uint8_t *src_end = src + src_height * src_width * channels;
    const uint8_t *dst_end = dst + dst_height * dst_width * channels;
    if (src < dst_end && dst < src_end)
      return qt_err_set(err, QT_EINVAL, "qt_image_resize: src and dst overlap");
  }
  qt__image_work w;
  qt__image_work_init(&w);
  int rc = qt__image_resize_window(&w, src, src_width * channels, src_height, src_width, channels,
                                   dst, dst_height, dst_width, interpolation, err);
  qt__image_work_free(&w);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Crops                                                                      */
/* ------------------------------------------------------------------------- */

void qt_image_resize_shorter_size(size_t height, size_t width, size_t size, size_t *out_height,
                                  size_t *out_width) {
  /* torchvision's _compute_resized_output_size for an int size. */
  if (width <= height) {
    *out_width = size;
    *out_height = (size_t)((double)size * (double)height / (double)width);
  } else {
    *out_height = size;
    *out_width = (size_t)((double)size * (double)width / (double)height);
  }
}

static long center_offset(size_t size, size_t crop) {
  if (crop > size) return -(long)((crop - size) / 2);
  return qt__round_half_even((double)(size - crop) / 2.0);
}

void qt_image_center_crop_box(size_t height, size_t width, size_t crop_height, size_t crop_width,
                              long *top, long *left) {
  *top = center_offset(height, crop_height);
  *left = center_offset(width, crop_width);
}

void qt_image_crop(const uint8_t *src, size_t height, size_t width, size_t channels, long top,
                   long left, uint8_t *dst, size_t crop_height, size_t crop_width) {
  size_t row = crop_width * channels;
  for (size_t y = 0; y < crop_height; y++) {
    long sy = top + (long)y;
    uint8_t *o = dst + y * row;
    if (sy < 0 || sy >= (long)height) {
      memset(o, 0, row);
      continue;
    }
    /* The columns of the window inside the image. */
    long x0 = left < 0 ? -left : 0;
    long x1 = (long)width - left;
    if (x1 > (long)crop_width) x1 = (long)crop_width;
    if (x1 < x0) x1 = x0;
    if (x0 > 0) memset(o, 0, (size_t)x0 * channels);
    if (x1 > x0)
      memcpy(o + (size_t)x0 * channels, src + ((size_t)sy * width + (size_t)(left + x0)) * channels,
             (size_t)(x1 - x0) * channels);
    if ((size_t)x1 < crop_width)
      memset(o + (size_t)x1 * channels, 0, (crop_width - (size_t)x1) * channels);
  }
}

void qt_image_center_crop(const uint8_t *src, size_t height, size_t width, size_t channels,
                          uint8_t *dst, size_t crop_height, size_t crop_width) {
  long top, left;
  qt_image_center_crop_box(height, width, crop_height, crop_width, &top, &left);
  qt_image_crop(src, height, width, channels, top, left, dst, crop_height, crop_width);
}

int qt__image_cover_crop(qt__image_work *w, const uint8_t *src, size_t src_height, size_t src_width,
                         size_t channels, uint8_t *dst, size_t height, size_t width,
                         qt_interpolation interpolation, qt_err *err) {
  double sy = (double)height / (double)src_height, sx = (double)width / (double)src_width;
  double s = sy > sx ? sy : sx;
  size_t rh = (size_t)qt__round_half_even((double)src_height * s);
  size_t rw = (size_t)qt__round_half_even((double)src_width * s);
  if (rh < height) rh = height;
  if (rw < width) rw = width;
  if (rh == height && rw == width)
    return qt__image_resize_window(w, src, src_width * channels, src_height, src_width, channels,
                                   dst, height, width, interpolation, err);
  int rc = qt__grow((void **)&w->image[1], &w->image_cap[1], rh * rw * channels, err);
  if (rc < 0) return rc;
  rc = qt__image_resize_window(w, src, src_width * channels, src_height, src_width, channels,
                               w->image[1], rh, rw, interpolation, err);
  if (rc < 0) return rc;
  qt_image_center_crop(w->image[1], rh, rw, channels, dst, height, width);
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Float conversion                                                           */
/* ------------------------------------------------------------------------- */

int qt_image_to_float(const uint8_t *src, size_t height, size_t width, size_t channels,
                      size_t out_channels, const double *mean, const double *std, float *dst,
                      qt_err *err) {
  if (!src || !dst || !mean || !std)
    return qt_err_set(err, QT_EINVAL, "qt_image_to_float: NULL argument");
  if ((channels != 1 && channels != 3) || (out_channels != 1 && out_channels != 3))
    return qt_err_set(err, QT_EINVAL, "qt_image_to_float: channels %zu -> %zu (1 or 3)", channels,
                      out_channels);
  for (size_t c = 0; c < out_channels; c++)
    if (!(std[c] > 0.0) || !isfinite(mean[c]))
      return qt_err_set(err, QT_EINVAL, "qt_image_to_float: channel %zu: mean %g, std %g", c,
                        mean[c], std[c]);
  size_t plane = height * width;
  for (size_t c = 0; c < out_channels; c++) {
    /* ToTensor divides by 255 in float32, Normalize subtracts and divides by
     * float32 mean and std: one table per channel gives the same floats. */
    float lut[256];
    float m = (float)mean[c], s = (float)std[c];
    for (int v = 0; v < 256; v++) lut[v] = ((float)v / 255.0f - m) / s;
    float *o = dst + c * plane;
    if (channels == out_channels) {
      for (size_t i = 0; i < plane; i++) o[i] = lut[src[i * channels + c]];
    } else if (channels == 1) {
      for (size_t i = 0; i < plane; i++) o[i] = lut[src[i]];
    } else {
      for (size_t i = 0; i < plane; i++)
        o[i] = lut[qt__luma(src[3 * i], src[3 * i + 1], src[3 * i + 2])];
    }
  }
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Evaluation transform                                                       */
/* ------------------------------------------------------------------------- */

qt_preprocess_params qt_preprocess_default_params(void) {
  qt_preprocess_params p;
  memset(&p, 0, sizeof p);
  p.image_size = 224;
  p.channels = 3;
  p.mean[0] = 0.485;
  p.mean[1] = 0.456;
  p.mean[2] = 0.406;
  p.std[0] = 0.229;
  p.std[1] = 0.224;
  p.std[2] = 0.225;
  p.crop_pct = 0.875;
  p.interpolation = QT_INTERPOLATION_BILINEAR;
  return p;
}

int qt__image_eval_crop(qt__image_work *w, const uint8_t *src, size_t height, size_t width,
                        size_t channels, size_t size, double crop_pct,
                        qt_interpolation interpolation, uint8_t *dst, qt_err *err) {
  if (!(crop_pct > 0.0 && crop_pct <= 1.0))
    return qt_err_set(err, QT_EINVAL, "crop_pct must be in (0, 1] (got %g)", crop_pct);
  size_t scale_size = (size_t)floor((double)size / crop_pct);
  size_t rh, rw;
  qt_image_resize_shorter_size(height, width, scale_size, &rh, &rw);
  if (rh == 0) rh = 1;
  if (rw == 0) rw = 1;
  const uint8_t *resized = src;
  if (rh != height || rw != width) {
    int rc = qt__grow((void **)&w->image[1], &w->image_cap[1], rh * rw * channels, err);
    if (rc < 0) return rc;
    rc = qt__image_resize_window(w, src, width * channels, height, width, channels, w->image[1], rh,
                                 rw, interpolation, err);
    if (rc < 0) return rc;
    resized = w->image[1];
  }
  qt_image_center_crop(resized, rh, rw, channels, dst, size, size);
  return 0;
}

int qt_image_eval_transform(const qt_preprocess_params *p, const uint8_t *src, size_t height,
                            size_t width, size_t channels, float *dst, qt_err *err) {
  if (!p || !src || !dst)
    return qt_err_set(err, QT_EINVAL, "qt_image_eval_transform: NULL argument");
  if (p->image_size == 0 || p->image_size > QT_IMAGE_MAX_SIDE)
    return qt_err_set(err, QT_EINVAL, "image_size %zu out of range", p->image_size);
  qt__image_work w;
  qt__image_work_init(&w);
  uint8_t *crop = malloc(p->image_size * p->image_size * channels);
  int rc = crop ? 0 : qt_err_set(err, QT_ENOMEM, "out of memory");
  if (rc == 0)
    rc = qt__image_eval_crop(&w, src, height, width, channels, p->image_size, p->crop_pct,
                             p->interpolation, crop, err);
  if (rc == 0)
    rc = qt_image_to_float(crop, p->image_size, p->image_size, channels, p->channels, p->mean,
                           p->std, dst, err);
  free(crop);
  qt__image_work_free(&w);
  return rc;
}

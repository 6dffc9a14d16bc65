/*
 * qt_data_augment.c - random augmentation on uint8 HWC images, and the
 * batch-level Mixup / CutMix / label smoothing of soft targets.
 *
 * References: torchvision.transforms (RandomResizedCrop.get_params,
 * RandomHorizontalFlip, TrivialAugmentWide, RandAugment, and the
 * functional_tensor ops they call on uint8 tensors) and timm.data.mixup
 * (Mixup with mode 'batch', mixup_target, rand_bbox,
 * cutmix_bbox_and_lam with correct_lam). Where torchvision's tensor and PIL
 * paths differ in rounding, the tensor definitions are followed (they are
 * plain arithmetic), so results can differ slightly from torchvision on PIL
 * images (e.g. PIL's Contrast uses a rounded integer mean).
 *
 * Deviations, by design:
 *   - random numbers come from qt_rng_t (GSL's MT19937), not torch's
 *     generator, so a given seed gives other draws than PyTorch;
 *   - RandomResizedCrop draws its area and log-ratio in double (torch: float32);
 *   - Contrast takes the mean of the gray image in double, rounded to float
 *     (torch sums in float32 with its own order; equal on the golden tests);
 *   - an odd batch is mixed (timm asserts an even one).
 * Everything else, geometric ops included, reproduces torchvision's numbers
 * exactly on the golden cases of tools/make-data-golden.py.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <gsl/gsl_randist.h>

#include "finetune/qt_data_internal.h"

#define PI 3.14159265358979323846

/* ------------------------------------------------------------------------- */
/* Parameters and names                                                       */
/* ------------------------------------------------------------------------- */

qt_augment_params qt_augment_default_params(void) {
  qt_augment_params p;
  memset(&p, 0, sizeof p);
  p.random_resized_crop = 1;
  p.scale[0] = 0.08;
  p.scale[1] = 1.0;
  p.ratio[0] = 3.0 / 4.0;
  p.ratio[1] = 4.0 / 3.0;
  p.hflip_prob = 0.5;
  p.auto_augment = QT_AUTO_AUGMENT_NONE;
  p.rand_num_ops = 2;
  p.rand_magnitude = 9;
  p.num_magnitude_bins = 31;
  p.mixup_alpha = 0.0;
  p.cutmix_alpha = 0.0;
  p.mix_prob = 1.0;
  p.switch_prob = 0.5;
  p.label_smoothing = 0.0;
  return p;
}

int qt_auto_augment_parse(const char *text, qt_auto_augment *out, qt_err *err) {
  if (!text || !out) return qt_err_set(err, QT_EINVAL, "qt_auto_augment_parse: NULL argument");
  if (strcmp(text, "none") == 0 || strcmp(text, "None") == 0) {
    *out = QT_AUTO_AUGMENT_NONE;
  } else if (strcmp(text, "trivial_augment") == 0) {
    *out = QT_AUTO_AUGMENT_TRIVIAL;
  } else if (strcmp(text, "random_augment") == 0) {
    *out = QT_AUTO_AUGMENT_RAND;
  } else if (strcmp(text, "auto_augment") == 0) {
    return qt_err_set(err, QT_ENOTIMPL,
                      "data augmentation 'auto_augment' (AutoAugment policies) "
                      "is not implemented yet");
  } else {
    return qt_err_set(err, QT_EINVAL,
                      "unknown data augmentation '%s' (none, trivial_augment, random_augment)",
                      text);
  }
  return 0;
}

static const char *const op_names[QT_AUGMENT_OP_COUNT] = {
    "Identity", "ShearX",   "ShearY",    "TranslateX", "TranslateY", "Rotate",       "Brightness",
    "Color",    "Contrast", "Sharpness", "Posterize",  "Solarize",   "AutoContrast", "Equalize"};

const char *qt_augment_op_name(qt_augment_op op) {
  return (unsigned)op < QT_AUGMENT_OP_COUNT ? op_names[op] : "unknown";
}

int qt_augment_op_signed(qt_augment_op op) {
  switch (op) {
    case QT_AUGMENT_OP_SHEAR_X:
    case QT_AUGMENT_OP_SHEAR_Y:
    case QT_AUGMENT_OP_TRANSLATE_X:
    case QT_AUGMENT_OP_TRANSLATE_Y:
    case QT_AUGMENT_OP_ROTATE:
    case QT_AUGMENT_OP_BRIGHTNESS:
    case QT_AUGMENT_OP_COLOR:
    case QT_AUGMENT_OP_CONTRAST:
    case QT_AUGMENT_OP_SHARPNESS:
      return 1;
    default:
      return 0;
  }
}

/* torch.linspace(start, end, steps)[i] in float32 by the formula of its
 * scalar CPU kernel: the first half counts up from start, the second half
 * down from end. (Its vectorized kernel, used for most elements, computes
 * some values one bit off from this, depending on the CPU; the golden test
 * allows that and checks exactly what the ops consume.) */
static float linspace_f32(float start, float end, int steps, int i) {
  if (steps == 1) return start;
  float step = (end - start) / (float)(steps - 1);
  if (i < steps / 2) return start + step * (float)i;
  return end - step * (float)(steps - i - 1);
}

double qt_augment_op_magnitude(qt_auto_augment policy, qt_augment_op op, int bin, int num_bins,
                               size_t height, size_t width) {
  if (num_bins < 1 || bin < 0 || bin >= num_bins) return 0.0;
  int wide = policy == QT_AUTO_AUGMENT_TRIVIAL;
  switch (op) {
    case QT_AUGMENT_OP_SHEAR_X:
    case QT_AUGMENT_OP_SHEAR_Y:
      return linspace_f32(0.0f, wide ? 0.99f : 0.3f, num_bins, bin);
    case QT_AUGMENT_OP_TRANSLATE_X:
      return linspace_f32(0.0f, wide ? 32.0f : (float)(150.0 / 331.0 * (double)width), num_bins,
                          bin);
    case QT_AUGMENT_OP_TRANSLATE_Y:
      return linspace_f32(0.0f, wide ? 32.0f : (float)(150.0 / 331.0 * (double)height), num_bins,
                          bin);
    case QT_AUGMENT_OP_ROTATE:
      return linspace_f32(0.0f, wide ? 135.0f : 30.0f, num_bins, bin);
    case QT_AUGMENT_OP_BRIGHTNESS:
    case QT_AUGMENT_OP_COLOR:
    case QT_AUGMENT_OP_CONTRAST:
    case QT_AUGMENT_OP_SHARPNESS:
      return linspace_f32(0.0f, wide ? 0.99f : 0.9f, num_bins, bin);
    case QT_AUGMENT_OP_POSTERIZE: {
      /* 8 - round(arange(num_bins) / ((num_bins - 1) / levels)), levels 6 or 4. */
      if (num_bins == 1) return 8.0;
      float denom = (float)((double)(num_bins - 1) / (wide ? 6.0 : 4.0));
      return 8.0 - (double)nearbyintf((float)bin / denom);
    }
    case QT_AUGMENT_OP_SOLARIZE:
      return linspace_f32(255.0f, 0.0f, num_bins, bin);
    default:
      return 0.0;
  }
}

/* ------------------------------------------------------------------------- */
/* Pixel operations                                                           */
/* ------------------------------------------------------------------------- */

/* torchvision's _blend: ratio * a + (1 - ratio) * b in float32, clamped,
 * truncated to uint8. */
static inline uint8_t blend(float ratio, float one_minus, float a, float b) {
  float first = ratio * a;
  float second = one_minus * b;
  float v = first + second;
  if (v < 0.0f) v = 0.0f;
  if (v > 255.0f) v = 255.0f;
  return (uint8_t)v;
}

/* torchvision's rgb_to_grayscale on uint8: float32 sum, truncated. */
static inline uint8_t gray_f32(const uint8_t *p) {
  float r = 0.2989f * (float)p[0];
  float g = 0.587f * (float)p[1];
  float b = 0.114f * (float)p[2];
  return (uint8_t)((r + g) + b);
}

static void op_brightness(const uint8_t *src, uint8_t *dst, size_t count, double factor) {
  float r = (float)factor, o = (float)(1.0 - factor);
  for (size_t i = 0; i < count; i++) dst[i] = blend(r, o, (float)src[i], 0.0f);
}

static void op_color(const uint8_t *src, uint8_t *dst, size_t pixels, size_t channels,
                     double factor) {
  if (channels == 1) {
    memcpy(dst, src, pixels);
    return;
  }
  float r = (float)factor, o = (float)(1.0 - factor);
  for (size_t i = 0; i < pixels; i++) {
    float gray = (float)gray_f32(src + 3 * i);
    for (size_t c = 0; c < 3; c++) dst[3 * i + c] = blend(r, o, (float)src[3 * i + c], gray);
  }
}

static void op_contrast(const uint8_t *src, uint8_t *dst, size_t pixels, size_t channels,
                        double factor) {
  double sum = 0.0;
  for (size_t i = 0; i < pixels; i++) sum += channels == 3 ? gray_f32(src + 3 * i) : src[i];
  float mean = (float)(sum / (double)pixels);
  float r = (float)factor, o = (float)(1.0 - factor);
  for (size_t i = 0; i < pixels * channels; i++) dst[i] = blend(r, o, (float)src[i], mean);
}

static void op_sharpness(const uint8_t *src, uint8_t *dst, size_t height, size_t width,
                         size_t channels, double factor) {
  size_t count = height * width * channels;
  if (height <= 2 || width <= 2) {
    memcpy(dst, src, count);
    return;
  }
  float r = (float)factor, o = (float)(1.0 - factor);
  size_t row = width * channels;
  for (size_t y = 0; y < height; y++) {
    for (size_t x = 0; x < width; x++) {
      for (size_t c = 0; c < channels; c++) {
        size_t i = y * row + x * channels + c;
        float degenerate = (float)src[i];
        if (y > 0 && y + 1 < height && x > 0 && x + 1 < width) {
          /* The smoothing kernel [[1,1,1],[1,5,1],[1,1,1]] / 13, rounded:
           * the exact sum / 13 is never a tie (13 is odd), so double
           * arithmetic rounds as torch's float32 convolution. */
          int s = 4 * src[i];
          for (int dy = -1; dy <= 1; dy++)
            for (int dx = -1; dx <= 1; dx++)
              s += src[i + (size_t)((long)dy * (long)row + (long)dx * (long)channels)];
          degenerate = (float)nearbyint((double)s / 13.0);
        }
        dst[i] = blend(r, o, (float)src[i], degenerate);
      }
    }
  }
}

static void op_posterize(const uint8_t *src, uint8_t *dst, size_t count, int bits) {
  uint8_t mask = (uint8_t)(0xFF00u >> bits);
  for (size_t i = 0; i < count; i++) dst[i] = src[i] & mask;
}

static void op_solarize(const uint8_t *src, uint8_t *dst, size_t count, double threshold) {
  for (size_t i = 0; i < count; i++)
    dst[i] = (double)src[i] >= threshold ? (uint8_t)(255 - src[i]) : src[i];
}

static void op_autocontrast(const uint8_t *src, uint8_t *dst, size_t pixels, size_t channels) {
  for (size_t c = 0; c < channels; c++) {
    uint8_t lo = 255, hi = 0;
    for (size_t i = 0; i < pixels; i++) {
      uint8_t v = src[i * channels + c];
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    /* A flat channel keeps its values (scale 1, minimum 0). */
    /* torch evaluates 255.0 / (max - min) as reciprocal(max - min) * 255. */
    float minimum = hi > lo ? (float)lo : 0.0f;
    float scale = hi > lo ? (1.0f / (float)(hi - lo)) * 255.0f : 1.0f;
    for (size_t i = 0; i < pixels; i++) {
      float v = ((float)src[i * channels + c] - minimum) * scale;
      if (v < 0.0f) v = 0.0f;
      if (v > 255.0f) v = 255.0f;
      dst[i * channels + c] = (uint8_t)v;
    }
  }
}

static void op_equalize(const uint8_t *src, uint8_t *dst, size_t pixels, size_t channels) {
  for (size_t c = 0; c < channels; c++) {
    size_t hist[256] = {0};
    for (size_t i = 0; i < pixels; i++) hist[src[i * channels + c]]++;
    /* step = floor(sum of the nonzero bins except the last nonzero one / 255). */
    int last = 255;
    while (last > 0 && hist[last] == 0) last--;
    size_t total = 0;
    for (int v = 0; v < last; v++) total += hist[v];
    size_t step = total / 255;
    if (step == 0) {
      for (size_t i = 0; i < pixels; i++) dst[i * channels + c] = src[i * channels + c];
      continue;
    }
    uint8_t lut[256];
    size_t cumulative = 0;
    lut[0] = 0;
    for (int v = 0; v < 255; v++) {
      cumulative += hist[v];
      size_t value = (cumulative + step / 2) / step;
      lut[v + 1] = (uint8_t)(value > 255 ? 255 : value);
    }
    for (size_t i = 0; i < pixels; i++) dst[i * channels + c] = lut[src[i * channels + c]];
  }
}

/* ------------------------------------------------------------------------- */
/* Geometric operations                                                       */
/* ------------------------------------------------------------------------- */

/* torchvision's _get_inverse_affine_matrix (inverted): the map from output
 * to input coordinates, both relative to the image center, for a rotation
 * by angle degrees (clockwise in F.affine's convention), translation and
 * shear (degrees) about center (also relative to the image center). */
static void inverse_affine(double cx, double cy, double angle, double tx, double ty, double shear_x,
                           double shear_y, double m[6]) {
  double rot = angle * PI / 180.0;
  double sx = shear_x * PI / 180.0;
  double sy = shear_y * PI / 180.0;
  double a = cos(rot - sy) / cos(sy);
  double b = -cos(rot - sy) * tan(sx) / cos(sy) - sin(rot);
  double c = sin(rot - sy) / cos(sy);
  double d = -sin(rot - sy) * tan(sx) / cos(sy) + cos(rot);
  m[0] = d;
  m[1] = -b;
  m[2] = 0.0;
  m[3] = -c;
  m[4] = a;
  m[5] = 0.0;
  m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty);
  m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty);
  m[2] += cx;
  m[5] += cy;
}

/* F_t.affine with nearest interpolation and zero fill: each output pixel
 * center, relative to the image center, goes through m; the result,
 * converted back to a pixel index as grid_sample(align_corners=False) does,
 * is rounded to the nearest pixel (ties to even, as nearbyint). */
static void warp_nearest(const uint8_t *src, uint8_t *dst, size_t height, size_t width,
                         size_t channels, const double m[6]) {
  /* torchvision's _gen_affine_grid and grid_sample, in float32 as torch:
   * theta rounded to float32 and divided by (w / 2, h / 2); the base grid
   * holds pixel centers relative to the image center; the grid is
   * base @ theta^T, which torch computes with a BLAS sgemm that accumulates
   * with fused multiply-adds (fmaf here; without it, half-pixel ties such as
   * ShearY(-0.2) on a 12-wide image round the other way); grid_sample
   * unnormalizes with ((g + 1) * size - 1) / 2 and takes the nearest pixel
   * (nearbyint: ties to even). tests/fixtures/data/torchvision-golden.json
   * checks this pixel for pixel. */
  float half_w = 0.5f * (float)width, half_h = 0.5f * (float)height;
  float t00 = (float)m[0] / half_w, t01 = (float)m[1] / half_w, t02 = (float)m[2] / half_w;
  float t10 = (float)m[3] / half_h, t11 = (float)m[4] / half_h, t12 = (float)m[5] / half_h;
  float fw = (float)width, fh = (float)height;
  for (size_t y = 0; y < height; y++) {
    float yb = (float)y + 0.5f - half_h;
    for (size_t x = 0; x < width; x++) {
      float xb = (float)x + 0.5f - half_w;
      float gx = fmaf(1.0f, t02, fmaf(yb, t01, xb * t00));
      float gy = fmaf(1.0f, t12, fmaf(yb, t11, xb * t10));
      float ux = ((gx + 1.0f) * fw - 1.0f) / 2.0f;
      float uy = ((gy + 1.0f) * fh - 1.0f) / 2.0f;
      float ix = nearbyintf(ux), iy = nearbyintf(uy);
      uint8_t *o = dst + (y * width + x) * channels;
      if (ix >= 0.0f && iy >= 0.0f && ix < fw && iy < fh) {
        memcpy(o, src + ((size_t)iy * width + (size_t)ix) * channels, channels);
      } else {
        memset(o, 0, channels);
      }
    }
  }
}

/* ------------------------------------------------------------------------- */
/* One operation                                                              */
/* ------------------------------------------------------------------------- */

int qt_augment_apply_op(const uint8_t *src, uint8_t *dst, size_t height, size_t width,
                        size_t channels, qt_augment_op op, double magnitude, qt_err *err) {
  if (!src || !dst || height == 0 || width == 0 || (channels != 1 && channels != 3))
    return qt_err_set(err, QT_EINVAL, "augment: bad image (%zux%zu, %zu channels)", height, width,
                      channels);
  if (!isfinite(magnitude))
    return qt_err_set(err, QT_EINVAL, "augment: %s magnitude is not finite",
                      qt_augment_op_name(op));
  size_t pixels = height * width, count = pixels * channels;
  if (src < dst + count && dst < src + count)
    return qt_err_set(err, QT_EINVAL, "augment: src and dst overlap");
  double m[6];
  /* F.affine's tensor path: center=[0, 0] (the top-left corner, for the
   * shears) is -size/2 relative to the image center; None is the center. */
  double corner_x = -0.5 * (double)width, corner_y = -0.5 * (double)height;
  switch (op) {
    case QT_AUGMENT_OP_IDENTITY:
      memcpy(dst, src, count);
      return 0;
    case QT_AUGMENT_OP_SHEAR_X:
      inverse_affine(corner_x, corner_y, 0.0, 0.0, 0.0, atan(magnitude) * 180.0 / PI, 0.0, m);
      warp_nearest(src, dst, height, width, channels, m);
      return 0;
    case QT_AUGMENT_OP_SHEAR_Y:
      inverse_affine(corner_x, corner_y, 0.0, 0.0, 0.0, 0.0, atan(magnitude) * 180.0 / PI, m);
      warp_nearest(src, dst, height, width, channels, m);
      return 0;
    case QT_AUGMENT_OP_TRANSLATE_X:
      inverse_affine(0.0, 0.0, 0.0, trunc(magnitude), 0.0, 0.0, 0.0, m);
      warp_nearest(src, dst, height, width, channels, m);
      return 0;
    case QT_AUGMENT_OP_TRANSLATE_Y:
      inverse_affine(0.0, 0.0, 0.0, 0.0, trunc(magnitude), 0.0, 0.0, m);
      warp_nearest(src, dst, height, width, channels, m);
      return 0;
    case QT_AUGMENT_OP_ROTATE:
      /* F.rotate's angle is counter-clockwise; it passes -angle to the matrix. */
      inverse_affine(0.0, 0.0, -magnitude, 0.0, 0.0, 0.0, 0.0, m);
      warp_nearest(src, dst, height, width, channels, m);
      return 0;
    case QT_AUGMENT_OP_BRIGHTNESS:
      op_brightness(src, dst, count, 1.0 + magnitude);
      return 0;
    case QT_AUGMENT_OP_COLOR:
      op_color(src, dst, pixels, channels, 1.0 + magnitude);
      return 0;
    case QT_AUGMENT_OP_CONTRAST:
      op_contrast(src, dst, pixels, channels, 1.0 + magnitude);
      return 0;
    case QT_AUGMENT_OP_SHARPNESS:
      op_sharpness(src, dst, height, width, channels, 1.0 + magnitude);
      return 0;
    case QT_AUGMENT_OP_POSTERIZE: {
      double bits = trunc(magnitude);
      if (bits < 0.0 || bits > 8.0)
        return qt_err_set(err, QT_EINVAL, "augment: posterize bits %g outside 0..8", magnitude);
      op_posterize(src, dst, count, (int)bits);
      return 0;
    }
    case QT_AUGMENT_OP_SOLARIZE:
      op_solarize(src, dst, count, magnitude);
      return 0;
    case QT_AUGMENT_OP_AUTOCONTRAST:
      op_autocontrast(src, dst, pixels, channels);
      return 0;
    case QT_AUGMENT_OP_EQUALIZE:
      op_equalize(src, dst, pixels, channels);
      return 0;
    default:
      return qt_err_set(err, QT_EINVAL, "augment: unknown operation %d", (int)op);
  }
}

/* ------------------------------------------------------------------------- */
/* Policies                                                                   */
/* ------------------------------------------------------------------------- */

/* Draws and applies one op of a policy; bin < 0 draws the bin (TrivialAugment). */
static int apply_random_op(const uint8_t *src, uint8_t *dst, size_t height, size_t width,
                           size_t channels, qt_auto_augment policy, int bin, int num_bins,
                           qt_rng_t *rng, qt_err *err) {
  qt_augment_op op = (qt_augment_op)qt_rng_uniform_int(rng, QT_AUGMENT_OP_COUNT);
  int has_bins = op != QT_AUGMENT_OP_IDENTITY && op != QT_AUGMENT_OP_AUTOCONTRAST &&
                 op != QT_AUGMENT_OP_EQUALIZE;
  double magnitude = 0.0;
  if (has_bins) {
    if (bin < 0) bin = (int)qt_rng_uniform_int(rng, (uint64_t)num_bins);
    magnitude = qt_augment_op_magnitude(policy, op, bin, num_bins, height, width);
  }
  if (qt_augment_op_signed(op) && qt_rng_uniform_int(rng, 2)) magnitude = -magnitude;
  return qt_augment_apply_op(src, dst, height, width, channels, op, magnitude, err);
}

int qt__image_auto_augment(qt__image_work *w, uint8_t *image, size_t height, size_t width,
                           size_t channels, const qt_augment_params *p, qt_rng_t *rng,
                           qt_err *err) {
  if (p->auto_augment == QT_AUTO_AUGMENT_NONE) return 0;
  if (p->num_magnitude_bins < 1)
    return qt_err_set(err, QT_EINVAL, "augment: num_magnitude_bins must be >= 1");
  size_t count = height * width * channels;
  int rc = qt__grow((void **)&w->image[0], &w->image_cap[0], count, err);
  if (rc < 0) return rc;
  if (p->auto_augment == QT_AUTO_AUGMENT_TRIVIAL) {
    rc = apply_random_op(image, w->image[0], height, width, channels, QT_AUTO_AUGMENT_TRIVIAL, -1,
                         p->num_magnitude_bins, rng, err);
    if (rc == 0) memcpy(image, w->image[0], count);
    return rc;
  }
  if (p->auto_augment != QT_AUTO_AUGMENT_RAND)
    return qt_err_set(err, QT_EINVAL, "augment: unknown policy %d", (int)p->auto_augment);
  if (p->rand_num_ops < 0 || p->rand_magnitude < 0 || p->rand_magnitude >= p->num_magnitude_bins)
    return qt_err_set(err, QT_EINVAL, "RandAugment: num_ops %d, magnitude %d of %d bins",
                      p->rand_num_ops, p->rand_magnitude, p->num_magnitude_bins);
  for (int i = 0; i < p->rand_num_ops; i++) {
    rc = apply_random_op(image, w->image[0], height, width, channels, QT_AUTO_AUGMENT_RAND,
                         p->rand_magnitude, p->num_magnitude_bins, rng, err);
    if (rc < 0) return rc;
    memcpy(image, w->image[0], count);
  }
  return 0;
}

int qt_image_trivial_augment(const uint8_t *src, uint8_t *dst, size_t height, size_t width,
                             size_t channels, int num_bins, qt_rng_t *rng, qt_err *err) {
  if (!rng || num_bins < 1) return qt_err_set(err, QT_EINVAL, "TrivialAugment: bad arguments");
  return apply_random_op(src, dst, height, width, channels, QT_AUTO_AUGMENT_TRIVIAL, -1, num_bins,
                         rng, err);
}

int qt_image_rand_augment(const uint8_t *src, uint8_t *dst, size_t height, size_t width,
                          size_t channels, int num_ops, int magnitude, int num_bins, qt_rng_t *rng,
                          qt_err *err) {
  if (!src || !dst || !rng) return qt_err_set(err, QT_EINVAL, "RandAugment: NULL argument");
  size_t count = height * width * channels;
  if (src < dst + count && dst < src + count)
    return qt_err_set(err, QT_EINVAL, "RandAugment: src and dst overlap");
  memcpy(dst, src, count);
  qt_augment_params p = qt_augment_default_params();
  p.auto_augment = QT_AUTO_AUGMENT_RAND;
  p.rand_num_ops = num_ops;
  p.rand_magnitude = magnitude;
  p.num_magnitude_bins = num_bins;
  qt__image_work w;
  qt__image_work_init(&w);
  int rc = qt__image_auto_augment(&w, dst, height, width, channels, &p, rng, err);
  qt__image_work_free(&w);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Random resized crop and flip                                               */
/* ------------------------------------------------------------------------- */

void qt_random_resized_crop_box(size_t height, size_t width, const double scale[2],
                                const double ratio[2], qt_rng_t *rng, size_t *top, size_t *left,
                                size_t *crop_height, size_t *crop_width) {
  double area = (double)height * (double)width;
  double log_lo = log(ratio[0]), log_hi = log(ratio[1]);
  for (int attempt = 0; attempt < 10; attempt++) {
    double target_area = area * (scale[0] + (scale[1] - scale[0]) * qt_rng_uniform(rng));
    double aspect = exp(log_lo + (log_hi - log_lo) * qt_rng_uniform(rng));
    long w = qt__round_half_even(sqrt(target_area * aspect));
    long h = qt__round_half_even(sqrt(target_area / aspect));
    if (w > 0 && (size_t)w <= width && h > 0 && (size_t)h <= height) {
      *top = (size_t)qt_rng_uniform_int(rng, height - (size_t)h + 1);
      *left = (size_t)qt_rng_uniform_int(rng, width - (size_t)w + 1);
      *crop_height = (size_t)h;
      *crop_width = (size_t)w;
      return;
    }
  }
  /* Fallback: the whole image, clamped to the ratio range, centered. */
  double in_ratio = (double)width / (double)height;
  double lo = ratio[0] < ratio[1] ? ratio[0] : ratio[1];
  double hi = ratio[0] < ratio[1] ? ratio[1] : ratio[0];
  size_t w = width, h = height;
  if (in_ratio < lo) {
    h = (size_t)qt__round_half_even((double)w / lo);
  } else if (in_ratio > hi) {
    w = (size_t)qt__round_half_even((double)h * hi);
  }
  if (h < 1) h = 1;
  if (w < 1) w = 1;
  *top = (height - h) / 2;
  *left = (width - w) / 2;
  *crop_height = h;
  *crop_width = w;
}

int qt__image_random_resized_crop(qt__image_work *w, const uint8_t *src, size_t height,
                                  size_t width, size_t channels, const double scale[2],
                                  const double ratio[2], size_t size,
                                  qt_interpolation interpolation, qt_rng_t *rng, uint8_t *dst,
                                  qt_err *err) {
  if (!(scale[0] > 0.0 && scale[0] <= scale[1]) || !(ratio[0] > 0.0 && ratio[0] <= ratio[1]))
    return qt_err_set(err, QT_EINVAL,
                      "RandomResizedCrop: scale (%g, %g) and ratio (%g, %g) must be positive, "
                      "low <= high",
                      scale[0], scale[1], ratio[0], ratio[1]);
  size_t top, left, ch, cw;
  qt_random_resized_crop_box(height, width, scale, ratio, rng, &top, &left, &ch, &cw);
  return qt__image_resize_window(w, src + (top * width + left) * channels, width * channels, ch, cw,
                                 channels, dst, size, size, interpolation, err);
}

int qt_image_random_resized_crop(const uint8_t *src, size_t height, size_t width, size_t channels,
                                 const double scale[2], const double ratio[2], size_t size,
                                 qt_interpolation interpolation, qt_rng_t *rng, uint8_t *dst,
                                 qt_err *err) {
  if (!src || !dst || !rng || !scale || !ratio || size == 0)
    return qt_err_set(err, QT_EINVAL, "qt_image_random_resized_crop: bad arguments");
  qt__image_work w;
  qt__image_work_init(&w);
  int rc = qt__image_random_resized_crop(&w, src, height, width, channels, scale, ratio, size,
                                         interpolation, rng, dst, err);
  qt__image_work_free(&w);
  return rc;
}

void qt_image_hflip(uint8_t *image, size_t height, size_t width, size_t channels) {
  for (size_t y = 0; y < height; y++) {
    uint8_t *row = image + y * width * channels;
    for (size_t x = 0; x < width / 2; x++) {
      uint8_t *a = row + x * channels, *b = row + (width - 1 - x) * channels;
      for (size_t c = 0; c < channels; c++) {
        uint8_t t = a[c];
        a[c] = b[c];
        b[c] = t;
      }
    }
  }
}

/* ------------------------------------------------------------------------- */
/* Targets: smoothing, Mixup, CutMix                                          */
/* ------------------------------------------------------------------------- */

void qt_targets_smooth(const int32_t *labels, size_t n, size_t n_classes, double smoothing,
                       float *targets) {
  double off = smoothing / (double)n_classes;
  double on = 1.0 - smoothing + off;
  for (size_t i = 0; i < n; i++) {
    float *t = targets + i * n_classes;
    for (size_t k = 0; k < n_classes; k++) t[k] = (float)off;
    t[labels[i]] = (float)on;
  }
}

int qt_mix_batch(float *inputs, const int32_t *labels, size_t n, size_t channels, size_t height,
                 size_t width, size_t n_classes, const qt_augment_params *params, qt_rng_t *rng,
                 float *targets, double *lambda, int *cutmix, qt_err *err) {
  if (!inputs || !labels || !params || !rng || !targets || n_classes == 0)
    return qt_err_set(err, QT_EINVAL, "qt_mix_batch: NULL argument");
  const qt_augment_params *p = params;
  if (!(p->mixup_alpha >= 0.0) || !(p->cutmix_alpha >= 0.0) || !(p->mix_prob >= 0.0) ||
      !(p->switch_prob >= 0.0) || !(p->label_smoothing >= 0.0 && p->label_smoothing < 1.0))
    return qt_err_set(err, QT_EINVAL,
                      "Mixup/CutMix: alphas, probabilities and smoothing out of range "
                      "(mixup %g, cutmix %g, prob %g, switch %g, smoothing %g)",
                      p->mixup_alpha, p->cutmix_alpha, p->mix_prob, p->switch_prob,
                      p->label_smoothing);
  for (size_t i = 0; i < n; i++)
    if (labels[i] < 0 || (size_t)labels[i] >= n_classes)
      return qt_err_set(err, QT_EINVAL, "qt_mix_batch: label %d out of range", (int)labels[i]);

  /* timm's _params_per_batch. */
  double lam = 1.0;
  int use_cutmix = 0;
  int enabled = p->mixup_alpha > 0.0 || p->cutmix_alpha > 0.0;
  if (enabled && qt_rng_uniform(rng) < p->mix_prob) {
    gsl_rng *g = qt_rng_gsl(rng);
    if (p->mixup_alpha > 0.0 && p->cutmix_alpha > 0.0) {
      use_cutmix = qt_rng_uniform(rng) < p->switch_prob;
      double alpha = use_cutmix ? p->cutmix_alpha : p->mixup_alpha;
      lam = gsl_ran_beta(g, alpha, alpha);
    } else if (p->mixup_alpha > 0.0) {
      lam = gsl_ran_beta(g, p->mixup_alpha, p->mixup_alpha);
    } else {
      use_cutmix = 1;
      lam = gsl_ran_beta(g, p->cutmix_alpha, p->cutmix_alpha);
    }
  }

  size_t plane = height * width, sample = channels * plane;
  if (lam != 1.0) {
    if (use_cutmix) {
      /* rand_bbox, then the corrected lambda. */
      double cut = sqrt(1.0 - lam);
      long cut_h = (long)((double)height * cut), cut_w = (long)((double)width * cut);
      long cy = (long)qt_rng_uniform_int(rng, height), cx = (long)qt_rng_uniform_int(rng, width);
      long yl = cy - cut_h / 2, yh = cy + cut_h / 2, xl = cx - cut_w / 2, xh = cx + cut_w / 2;
      yl = yl < 0 ? 0 : (yl > (long)height ? (long)height : yl);
      yh = yh < 0 ? 0 : (yh > (long)height ? (long)height : yh);
      xl = xl < 0 ? 0 : (xl > (long)width ? (long)width : xl);
      xh = xh < 0 ? 0 : (xh > (long)width ? (long)width : xh);
      /* x[:, :, yl:yh, xl:xh] = x.flip(0)[:, :, yl:yh, xl:xh]: pairs are
       * swapped in place, both halves at once (the middle of an odd batch
       * keeps itself). */
      for (size_t i = 0; i < n / 2; i++) {
        float *a = inputs + i * sample, *b = inputs + (n - 1 - i) * sample;
        for (size_t c = 0; c < channels; c++)
          for (long y = yl; y < yh; y++)
            for (long x = xl; x < xh; x++) {
              size_t k = c * plane + (size_t)y * width + (size_t)x;
              float t = a[k];
              a[k] = b[k];
              b[k] = t;
            }
      }
      lam = 1.0 - (double)((yh - yl) * (xh - xl)) / (double)(height * width);
    } else {
      /* x = lam x + (1 - lam) x.flip(0), in float32 as torch. */
      float l = (float)lam, o = (float)(1.0 - lam);
      for (size_t i = 0; i < n / 2; i++) {
        float *a = inputs + i * sample, *b = inputs + (n - 1 - i) * sample;
        for (size_t k = 0; k < sample; k++) {
          float xa = a[k], xb = b[k];
          float fa = l * xa, fb = o * xb;
          float ga = l * xb, gb = o * xa;
          a[k] = fa + fb;
          b[k] = ga + gb;
        }
      }
    }
  }

  /* mixup_target: lam * y_i + (1 - lam) * y_{n-1-i}. */
  double off = p->label_smoothing / (double)n_classes;
  double on = 1.0 - p->label_smoothing + off;
  for (size_t i = 0; i < n; i++) {
    float *t = targets + i * n_classes;
    int32_t y1 = labels[i], y2 = labels[n - 1 - i];
    for (size_t k = 0; k < n_classes; k++) {
      double v1 = (size_t)y1 == k ? on : off, v2 = (size_t)y2 == k ? on : off;
      t[k] = (float)(v1 * lam + v2 * (1.0 - lam));
    }
  }
  if (lambda) *lambda = lam;
  if (cutmix) *cutmix = use_cutmix && lam != 1.0 ? 1 : 0;
  return 0;
}

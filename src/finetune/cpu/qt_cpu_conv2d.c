/*
 * qt_cpu_conv2d.c - 2-D convolution (torch.nn.Conv2d, with TensorFlow's
 * asymmetric 'same' padding as an option) on the CPU, forward and backward.
 * Dense and grouped convolutions lower to im2col + a matrix product per
 * group (qt__cpu_sgemm, on the worker threads), over one image or, where an
 * image's output plane is narrow, several side by side
 * (images_per_product); pointwise ones (1x1, stride 1, no padding) skip the
 * im2col when one image is enough, since the image already is the column
 * matrix; convolutions with one input channel per group (depthwise) run as
 * direct loops, where a matrix product would have a single row. The
 * im2col, col2im, depthwise loops and bias gradients split by channels on
 * the worker threads. See qt_finetune.h for shapes.
 */
#include <cblas.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/cpu/qt_cpu_parallel.h"
#include "finetune/cpu/qt_cpu_sums.h"
#include "finetune/cpu/qt_cpu_vmath.h"
#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"

/* ------------------------------------------------------------------------- */
/* Shapes                                                                     */
/* ------------------------------------------------------------------------- */

static int check_common(const char *who, size_t batch, size_t in_c, size_t in_h, size_t in_w,
                        size_t out_c, size_t kernel, size_t stride, size_t groups, qt_err *err) {
  if (batch == 0 || in_c == 0 || in_h == 0 || in_w == 0 || out_c == 0 || kernel == 0)
    return qt_err_set(err, QT_EINVAL,
                      "%s: zero size (batch %zu, in_c %zu, %zux%zu, out_c %zu, kernel %zu)", who,
                      batch, in_c, in_h, in_w, out_c, kernel);
  if (stride == 0) return qt_err_set(err, QT_EINVAL, "%s: stride 0", who);
  if (groups == 0 || in_c % groups != 0 || out_c % groups != 0)
    return qt_err_set(err, QT_EINVAL, "%s: groups %zu does not divide in_c %zu and out_c %zu", who,
                      groups, in_c, out_c);
  return 0;
}

int qt_conv2d_shape_init(qt_conv2d_shape *shape, size_t batch, size_t in_c, size_t in_h,
                         size_t in_w, size_t out_c, size_t kernel, size_t stride, size_t pad,
                         size_t groups, qt_err *err) {
  int rc = check_common("qt_conv2d_shape_init", batch, in_c, in_h, in_w, out_c, kernel, stride,
                        groups, err);
  if (rc) return rc;
  if (in_h + 2 * pad < kernel || in_w + 2 * pad < kernel)
    return qt_err_set(err, QT_EINVAL,
                      "qt_conv2d_shape_init: kernel %zu larger than the padded %zux%zu input",
                      kernel, in_h + 2 * pad, in_w + 2 * pad);
  *shape = (qt_conv2d_shape){.batch = batch,
                             .in_c = in_c,
                             .in_h = in_h,
                             .in_w = in_w,
                             .out_c = out_c,
                             .kernel_h = kernel,
                             .kernel_w = kernel,
                             .stride_h = stride,
                             .stride_w = stride,
                             .pad_top = pad,
                             .pad_left = pad,
                             .groups = groups};
  shape->out_h = (in_h + 2 * pad - kernel) / stride + 1;
  shape->out_w = (in_w + 2 * pad - kernel) / stride + 1;
  return 0;
}

int qt_conv2d_shape_init_same(qt_conv2d_shape *shape, size_t batch, size_t in_c, size_t in_h,
                              size_t in_w, size_t out_c, size_t kernel, size_t stride,
                              size_t groups, qt_err *err) {
  int rc = check_common("qt_conv2d_shape_init_same", batch, in_c, in_h, in_w, out_c, kernel, stride,
                        groups, err);
  if (rc) return rc;
  *shape = (qt_conv2d_shape){.batch = batch,
                             .in_c = in_c,
                             .in_h = in_h,
                             .in_w = in_w,
                             .out_c = out_c,
                             .kernel_h = kernel,
                             .kernel_w = kernel,
                             .stride_h = stride,
                             .stride_w = stride,
                             .groups = groups};
  shape->out_h = (in_h + stride - 1) / stride;
  shape->out_w = (in_w + stride - 1) / stride;
  size_t need_h = (shape->out_h - 1) * stride + kernel;
  size_t need_w = (shape->out_w - 1) * stride + kernel;
  shape->pad_top = need_h > in_h ? (need_h - in_h) / 2 : 0;
  shape->pad_left = need_w > in_w ? (need_w - in_w) / 2 : 0;
  return 0;
}

static int is_depthwise(const qt_conv2d_shape *s) {
  return s->in_c == s->groups;
}

static int is_pointwise(const qt_conv2d_shape *s) {
  return s->kernel_h == 1 && s->kernel_w == 1 && s->stride_h == 1 && s->stride_w == 1 &&
         s->pad_top == 0 && s->pad_left == 0 && s->out_h == s->in_h && s->out_w == s->in_w;
}

/* The columns a matrix product should have at least. One image's column
 * matrix is out_h * out_w columns wide, 49 at ResNet-18's last stage at
 * 224 px (16 at 112 px), where each product's threads meet for little
 * work; side by side ResNet-18 trained 1.22x faster at 112 px and 1.10x
 * at 224 px on two threads (tools/bench-conv-columns,
 * docs/benchmarks/README.md). Wider planes (784 at its second stage at
 * 224 px) go one image at a time: two side by side ran a few percent
 * slower, their column matrix twice as large. */
#define CONV_COLUMNS 512

/* QT_CPU_CONV_COLUMNS in the environment (1: one image per product, to
 * measure one way against the other), else CONV_COLUMNS; read once. */
static size_t columns_setting; /* 0: not read yet */

static size_t conv_columns(void) {
  size_t columns = __atomic_load_n(&columns_setting, __ATOMIC_RELAXED);
  if (columns == 0) {
    const char *env = getenv("QT_CPU_CONV_COLUMNS");
    long v = env ? strtol(env, NULL, 10) : 0;
    columns = v >= 1 ? (size_t)v : CONV_COLUMNS;
    __atomic_store_n(&columns_setting, columns, __ATOMIC_RELAXED);
  }
  return columns;
}

size_t qt__cpu_set_conv_columns(size_t columns) {
  size_t was = conv_columns();
  __atomic_store_n(&columns_setting, columns >= 1 ? columns : CONV_COLUMNS, __ATOMIC_RELAXED);
  return was;
}

/* Images whose column matrices one product takes side by side: enough for
 * conv_columns() columns, at most the batch. It depends on the shape (and
 * the setting) alone, so the sums' order, and with it every result, does
 * too. */
static size_t images_per_product(const qt_conv2d_shape *s) {
  size_t p_count = s->out_h * s->out_w, columns = conv_columns();
  size_t images = p_count >= columns ? 1 : (columns + p_count - 1) / p_count;
  return images < s->batch ? images : s->batch;
}

/* One image: its column matrix (none when pointwise). Several: their column
 * matrices and, after them, the product's (out_c / groups) rows of output
 * or output gradient, which the images' planes are copied from or into. */
size_t qt_cpu_conv2d_scratch_size(const qt_conv2d_shape *s) {
  if (is_depthwise(s)) return 0;
  size_t kdim = (s->in_c / s->groups) * s->kernel_h * s->kernel_w;
  size_t p_count = s->out_h * s->out_w, images = images_per_product(s);
  if (images == 1) return is_pointwise(s) ? 0 : kdim * p_count;
  return (kdim + s->out_c / s->groups) * images * p_count;
}

/* ------------------------------------------------------------------------- */
/* im2col / col2im                                                            */
/* ------------------------------------------------------------------------- */

/* An im2col's or col2im's arrays, for its pieces: channels of one image. */
typedef struct columns_job {
  float *col;       /* im2col: written */
  float *img;       /* col2im: added to */
  const float *src; /* im2col: the image; col2im: the columns */
  size_t ld;
  const qt_conv2d_shape *s;
} columns_job;

/* The channels [c_begin, c_end): their rows of col. */
static void im2col_channels(void *job, size_t c_begin, size_t c_end, void *scratch) {
  (void)scratch;
  const columns_job *J = job;
  float *col = J->col;
  const float *img = J->src;
  size_t ld = J->ld;
  const qt_conv2d_shape *s = J->s;
  for (size_t ci = c_begin; ci < c_end; ci++) {
    const float *plane = img + ci * s->in_h * s->in_w;
    for (size_t ky = 0; ky < s->kernel_h; ky++) {
      for (size_t kx = 0; kx < s->kernel_w; kx++) {
        float *row = col + ((ci * s->kernel_h + ky) * s->kernel_w + kx) * ld;
        for (size_t oy = 0; oy < s->out_h; oy++) {
          /* iy = oy * stride + ky - pad_top, done in signed arithmetic. */
          long iy = (long)(oy * s->stride_h + ky) - (long)s->pad_top;
          float *dst = row + oy * s->out_w;
          if (iy < 0 || iy >= (long)s->in_h) {
            memset(dst, 0, s->out_w * sizeof *dst);
            continue;
          }
          const float *src = plane + (size_t)iy * s->in_w;
          for (size_t ox = 0; ox < s->out_w; ox++) {
            long ix = (long)(ox * s->stride_w + kx) - (long)s->pad_left;
            dst[ox] = (ix < 0 || ix >= (long)s->in_w) ? 0.0f : src[ix];
          }
        }
      }
    }
  }
}

/* The channels [c_begin, c_end): each its own plane, its terms in the
 * order of one channel at a time. */
static void col2im_channels(void *job, size_t c_begin, size_t c_end, void *scratch) {
  (void)scratch;
  const columns_job *J = job;
  float *img = J->img;
  const float *col = J->src;
  size_t ld = J->ld;
  const qt_conv2d_shape *s = J->s;
  for (size_t ci = c_begin; ci < c_end; ci++) {
    float *plane = img + ci * s->in_h * s->in_w;
    for (size_t ky = 0; ky < s->kernel_h; ky++) {
      for (size_t kx = 0; kx < s->kernel_w; kx++) {
        const float *row = col + ((ci * s->kernel_h + ky) * s->kernel_w + kx) * ld;
        for (size_t oy = 0; oy < s->out_h; oy++) {
          long iy = (long)(oy * s->stride_h + ky) - (long)s->pad_top;
          if (iy < 0 || iy >= (long)s->in_h) continue;
          const float *src = row + oy * s->out_w;
          float *dst = plane + (size_t)iy * s->in_w;
          for (size_t ox = 0; ox < s->out_w; ox++) {
            long ix = (long)(ox * s->stride_w + kx) - (long)s->pad_left;
            if (ix >= 0 && ix < (long)s->in_w) dst[ix] += src[ox];
          }
        }
      }
    }
  }
}

/* col (cg * kh * kw, out_h * out_w; rows ld apart) from the cg channels of
 * one image that start at img (cg, in_h, in_w); positions in the padding
 * read 0. Channels on the worker threads. */
static void im2col(float *col, size_t ld, const float *img, size_t cg, const qt_conv2d_shape *s) {
  columns_job job = {.col = col, .src = img, .ld = ld, .s = s};
  size_t per_channel = s->kernel_h * s->kernel_w * s->out_h * s->out_w; /* values of col */
  qt__cpu_parallel_for(cg, qt__cpu_items_grain(per_channel), 0, 0, im2col_channels, &job);
}

/* The adjoint of im2col: img (cg, in_h, in_w) += the entries of col (rows
 * ld apart) at the positions they were read from. */
static void col2im_add(float *img, const float *col, size_t ld, size_t cg,
                       const qt_conv2d_shape *s) {
  columns_job job = {.img = img, .src = col, .ld = ld, .s = s};
  size_t per_channel = s->kernel_h * s->kernel_w * s->out_h * s->out_w; /* values of col */
  qt__cpu_parallel_for(cg, qt__cpu_items_grain(per_channel), 0, 0, col2im_channels, &job);
}

/* ------------------------------------------------------------------------- */
/* Depthwise: direct loops                                                    */
/* ------------------------------------------------------------------------- */

/* One input channel per group; output channel o reads input channel
 * o / multiplier (PyTorch's grouping with in_c / groups = 1).
 *
 * The loops run along output rows: for each output row, kernel row ky and
 * column kx, one weight times a run of the input row, over the outputs
 * ox in [lo[kx], hi[kx]) whose tap kx falls inside the image (the padding
 * is left out, not added as 0 * w). That inner run is a vector loop. Each
 * output still takes its bias and then its taps in (ky, kx) order, and
 * each input gradient its terms in raster order of the outputs, so the
 * values are those of one pixel at a time (the CUDA kernels' too:
 * test_emulated_depthwise compares them bit for bit). */

/* The outputs [*lo, *hi) of a row whose tap k (of stride `stride`, after
 * `pad` columns of padding) reads inside the `in` columns of the input. */
static void tap_range(size_t k, size_t stride, size_t pad, size_t in, size_t out, size_t *lo,
                      size_t *hi) {
  size_t first = pad > k ? (pad - k + stride - 1) / stride : 0;
  size_t end = in + pad > k ? (in - 1 + pad - k) / stride + 1 : 0;
  *lo = first < out ? first : out;
  *hi = end < out ? end : out;
  if (*hi < *lo) *hi = *lo;
}

/* Runs along a row: output ox meets the input column ox stride + shift of
 * `row` (shift = kx - pad_left, negative where the padding is on the
 * left), for ox in [lo, hi), where that column is inside the row. */

/* y[ox] += w row[ox stride + shift] */
static inline void add_scaled_run(float *y, const float *row, ptrdiff_t shift, float w, size_t lo,
                                  size_t hi, size_t stride) {
  if (stride == 1)
    for (size_t ox = lo; ox < hi; ox++) y[ox] += w * row[(ptrdiff_t)ox + shift];
  else if (stride == 2)
    for (size_t ox = lo; ox < hi; ox++) y[ox] += w * row[(ptrdiff_t)(2 * ox) + shift];
  else
    for (size_t ox = lo; ox < hi; ox++) y[ox] += w * row[(ptrdiff_t)(ox * stride) + shift];
}

/* row[ox stride + shift] += dy[ox] w */
static inline void scatter_scaled_run(float *row, ptrdiff_t shift, const float *dy, float w,
                                      size_t lo, size_t hi, size_t stride) {
  if (stride == 1)
    for (size_t ox = lo; ox < hi; ox++) row[(ptrdiff_t)ox + shift] += dy[ox] * w;
  else if (stride == 2)
    for (size_t ox = lo; ox < hi; ox++) row[(ptrdiff_t)(2 * ox) + shift] += dy[ox] * w;
  else
    for (size_t ox = lo; ox < hi; ox++) row[(ptrdiff_t)(ox * stride) + shift] += dy[ox] * w;
}

/* The sum of dy[ox] row[ox stride + shift], in double, in QT_SUM_LANES
 * parts (qt_cpu_sums.h). */
static inline double dot_run(const float *dy, const float *row, ptrdiff_t shift, size_t lo,
                             size_t hi, size_t stride) {
  if (stride == 1) return qt__dot(dy + lo, row + ((ptrdiff_t)lo + shift), hi - lo);
  double part[QT_SUM_LANES] = {0.0}, dot = 0.0;
  size_t ox = lo;
  for (; ox + QT_SUM_LANES <= hi; ox += QT_SUM_LANES)
    for (int l = 0; l < QT_SUM_LANES; l++)
      part[l] += (double)dy[ox + l] * row[(ptrdiff_t)((ox + l) * stride) + shift];
  for (int l = 0; l < QT_SUM_LANES; l++) dot += part[l];
  for (; ox < hi; ox++) dot += (double)dy[ox] * row[(ptrdiff_t)(ox * stride) + shift];
  return dot;
}

/* Kernels up to 64 taps (8x8; timm's largest depthwise kernel is 7x7). */
enum { MAX_TAPS = 64 };

/* A convolution's arrays, for the pieces of its direct loops (depthwise,
 * bias gradient). */
typedef struct conv_job {
  float *out, *dinp, *dweight, *dbias;
  const float *inp, *dout, *weight, *bias;
  const qt_conv2d_shape *s;
} conv_job;

/* The output channels [o_begin, o_end) of every image. */
QT_VECTOR_CLONES static void depthwise_forward(const conv_job *J, size_t o_begin, size_t o_end) {
  float *out = J->out;
  const float *inp = J->inp, *weight = J->weight, *bias = J->bias;
  const qt_conv2d_shape *s = J->s;
  size_t mult = s->out_c / s->in_c, kh = s->kernel_h, kw = s->kernel_w;
  size_t in_plane = s->in_h * s->in_w, out_plane = s->out_h * s->out_w;
  QT_ASSERT(kh * kw <= MAX_TAPS);
  size_t lo[MAX_TAPS], hi[MAX_TAPS];
  for (size_t kx = 0; kx < kw; kx++)
    tap_range(kx, s->stride_w, s->pad_left, s->in_w, s->out_w, &lo[kx], &hi[kx]);
  for (size_t b = 0; b < s->batch; b++) {
    for (size_t o = o_begin; o < o_end; o++) {
      const float *x = inp + (b * s->in_c + o / mult) * in_plane;
      const float *w = weight + o * kh * kw;
      float *y = out + (b * s->out_c + o) * out_plane;
      float b0 = bias ? bias[o] : 0.0f;
      for (size_t oy = 0; oy < s->out_h; oy++) {
        float *yrow = y + oy * s->out_w;
        for (size_t ox = 0; ox < s->out_w; ox++) yrow[ox] = b0;
        for (size_t ky = 0; ky < kh; ky++) {
          size_t iy = oy * s->stride_h + ky;
          if (iy < s->pad_top || iy - s->pad_top >= s->in_h) continue;
          const float *xrow = x + (iy - s->pad_top) * s->in_w;
          for (size_t kx = 0; kx < kw; kx++)
            add_scaled_run(yrow, xrow, (ptrdiff_t)kx - (ptrdiff_t)s->pad_left, w[ky * kw + kx],
                           lo[kx], hi[kx], s->stride_w);
        }
      }
    }
  }
}

/* The input channels [c_begin, c_end): the output channels of each, in
 * order, so that an input pixel takes its terms as over all of them. */
QT_VECTOR_CLONES static void depthwise_backward(const conv_job *J, size_t c_begin, size_t c_end) {
  float *dinp = J->dinp, *dweight = J->dweight;
  const float *dout = J->dout, *inp = J->inp, *weight = J->weight;
  const qt_conv2d_shape *s = J->s;
  size_t mult = s->out_c / s->in_c, kh = s->kernel_h, kw = s->kernel_w;
  size_t in_plane = s->in_h * s->in_w, out_plane = s->out_h * s->out_w;
  QT_ASSERT(kh * kw <= MAX_TAPS);
  size_t lo[MAX_TAPS], hi[MAX_TAPS];
  for (size_t kx = 0; kx < kw; kx++)
    tap_range(kx, s->stride_w, s->pad_left, s->in_w, s->out_w, &lo[kx], &hi[kx]);
  for (size_t o = c_begin * mult; o < c_end * mult; o++) {
    const float *w = weight + o * kh * kw;
    /* Weight gradients collect batch * out_h * out_w terms: double. */
    double dw[MAX_TAPS] = {0.0};
    for (size_t b = 0; b < s->batch; b++) {
      const float *x = inp + (b * s->in_c + o / mult) * in_plane;
      float *dx = dinp ? dinp + (b * s->in_c + o / mult) * in_plane : NULL;
      const float *dy = dout + (b * s->out_c + o) * out_plane;
      for (size_t oy = 0; oy < s->out_h; oy++) {
        const float *dyrow = dy + oy * s->out_w;
        for (size_t ky = 0; ky < kh; ky++) {
          size_t iy = oy * s->stride_h + ky;
          if (iy < s->pad_top || iy - s->pad_top >= s->in_h) continue;
          size_t row = (iy - s->pad_top) * s->in_w;
          /* kx from the last: an input pixel takes the terms of one output
           * row in the order of its outputs, whose kx falls as ox rises. */
          for (size_t kx = kw; kx-- > 0;) {
            ptrdiff_t shift = (ptrdiff_t)kx - (ptrdiff_t)s->pad_left;
            if (dx)
              scatter_scaled_run(dx + row, shift, dyrow, w[ky * kw + kx], lo[kx], hi[kx],
                                 s->stride_w);
            if (dweight)
              dw[ky * kw + kx] += dot_run(dyrow, x + row, shift, lo[kx], hi[kx], s->stride_w);
          }
        }
      }
    }
    if (dweight) {
      for (size_t k = 0; k < kh * kw; k++) dweight[o * kh * kw + k] += (float)dw[k];
    }
  }
}

static void depthwise_forward_piece(void *job, size_t begin, size_t end, void *scratch) {
  (void)scratch;
  depthwise_forward(job, begin, end);
}

static void depthwise_backward_piece(void *job, size_t begin, size_t end, void *scratch) {
  (void)scratch;
  depthwise_backward(job, begin, end);
}

/* ------------------------------------------------------------------------- */
/* Forward and backward                                                       */
/* ------------------------------------------------------------------------- */

/* The output channels [o_begin, o_end) of dbias += the sums of dout's
 * planes. */
static void bias_gradient_channels(void *job, size_t o_begin, size_t o_end, void *scratch) {
  (void)scratch;
  const conv_job *J = job;
  float *dbias = J->dbias;
  const float *dout = J->dout;
  const qt_conv2d_shape *s = J->s;
  size_t plane = s->out_h * s->out_w;
  for (size_t o = o_begin; o < o_end; o++) {
    double sum = 0.0;
    for (size_t b = 0; b < s->batch; b++) {
      const float *dy = dout + (b * s->out_c + o) * plane;
      for (size_t p = 0; p < plane; p++) sum += dy[p];
    }
    dbias[o] += (float)sum;
  }
}

/* The column matrices of images b0 .. b0 + n - 1, group g, side by side:
 * col (cg kh kw, n P), image j's in columns j P to (j + 1) P - 1. */
static void columns(float *col, const float *inp, size_t b0, size_t n, size_t g,
                    const qt_conv2d_shape *s) {
  size_t cg = s->in_c / s->groups, p_count = s->out_h * s->out_w;
  for (size_t j = 0; j < n; j++)
    im2col(col + j * p_count, n * p_count, inp + ((b0 + j) * s->in_c + g * cg) * s->in_h * s->in_w,
           cg, s);
}

void qt_cpu_conv2d_forward(float *out, float *scratch, const float *inp, const float *weight,
                           const float *bias, const qt_conv2d_shape *s) {
  if (is_depthwise(s)) {
    conv_job job = {.out = out, .inp = inp, .weight = weight, .bias = bias, .s = s};
    size_t planes = s->batch * s->out_h * s->out_w; /* output values a channel */
    qt__cpu_parallel_for(s->out_c, qt__cpu_items_grain(planes), 0, 0, depthwise_forward_piece,
                         &job);
    return;
  }
  size_t cg = s->in_c / s->groups, og = s->out_c / s->groups;
  size_t kdim = cg * s->kernel_h * s->kernel_w, p_count = s->out_h * s->out_w;
  size_t images = images_per_product(s);
  QT_ASSERT(kdim <= INT_MAX && images * p_count <= INT_MAX && og <= INT_MAX);
  int pointwise = is_pointwise(s);
  QT_ASSERT((pointwise && images == 1) || scratch);
  for (size_t b0 = 0; b0 < s->batch; b0 += images) {
    size_t n = s->batch - b0 < images ? s->batch - b0 : images, cols = n * p_count;
    for (size_t g = 0; g < s->groups; g++) {
      const float *w = weight + g * og * kdim;
      if (images == 1) {
        /* y (og, P) = W_g (og, kdim) . col (kdim, P), in the image's planes */
        const float *col = inp + (b0 * s->in_c + g * cg) * s->in_h * s->in_w;
        if (!pointwise) {
          columns(scratch, inp, b0, 1, g, s);
          col = scratch;
        }
        float *y = out + (b0 * s->out_c + g * og) * p_count;
        if (bias) {
          for (size_t o = 0; o < og; o++) {
            float v = bias[g * og + o];
            for (size_t p = 0; p < p_count; p++) y[o * p_count + p] = v;
          }
        }
        qt__cpu_sgemm(CblasNoTrans, CblasNoTrans, (int)og, (int)p_count, (int)kdim, 1.0f, w,
                      (int)kdim, col, (int)p_count, bias ? 1.0f : 0.0f, y, (int)p_count);
        continue;
      }
      /* y (og, n P) = W_g (og, kdim) . col (kdim, n P), then each image's
       * planes (+ the bias) copied out of it */
      float *col = scratch, *y = scratch + kdim * images * p_count;
      columns(col, inp, b0, n, g, s);
      qt__cpu_sgemm(CblasNoTrans, CblasNoTrans, (int)og, (int)cols, (int)kdim, 1.0f, w, (int)kdim,
                    col, (int)cols, 0.0f, y, (int)cols);
      for (size_t j = 0; j < n; j++) {
        for (size_t o = 0; o < og; o++) {
          float *dst = out + ((b0 + j) * s->out_c + g * og + o) * p_count;
          const float *src = y + o * cols + j * p_count;
          if (bias) {
            float v = bias[g * og + o];
            for (size_t p = 0; p < p_count; p++) dst[p] = src[p] + v;
          } else {
            memcpy(dst, src, p_count * sizeof *dst);
          }
        }
      }
    }
  }
}

void qt_cpu_conv2d_backward(float *dinp, float *dweight, float *dbias, float *scratch,
                            const float *dout, const float *inp, const float *weight,
                            const qt_conv2d_shape *s) {
  conv_job job = {.dinp = dinp,
                  .dweight = dweight,
                  .dbias = dbias,
                  .inp = inp,
                  .dout = dout,
                  .weight = weight,
                  .s = s};
  size_t planes = s->batch * s->out_h * s->out_w; /* output values a channel */
  if (dbias)
    qt__cpu_parallel_for(s->out_c, qt__cpu_items_grain(planes), 0, 0, bias_gradient_channels, &job);
  if (is_depthwise(s)) {
    if (dinp || dweight)
      qt__cpu_parallel_for(s->in_c, qt__cpu_items_grain(planes * (s->out_c / s->in_c)), 0, 0,
                           depthwise_backward_piece, &job);
    return;
  }
  size_t cg = s->in_c / s->groups, og = s->out_c / s->groups;
  size_t kdim = cg * s->kernel_h * s->kernel_w, p_count = s->out_h * s->out_w;
  size_t images = images_per_product(s), in_plane = s->in_h * s->in_w;
  QT_ASSERT(kdim <= INT_MAX && images * p_count <= INT_MAX && og <= INT_MAX);
  int pointwise = is_pointwise(s);
  QT_ASSERT((pointwise && images == 1) || scratch);
  for (size_t b0 = 0; b0 < s->batch; b0 += images) {
    size_t n = s->batch - b0 < images ? s->batch - b0 : images, cols = n * p_count;
    for (size_t g = 0; g < s->groups; g++) {
      const float *w = weight + g * og * kdim;
      /* dy (og, n P): the images' output gradient planes, as they are for
       * one image, else copied side by side after the column matrices. */
      const float *dy = dout + (b0 * s->out_c + g * og) * p_count;
      float *col = scratch;
      if (images > 1) {
        float *rows = scratch + kdim * images * p_count;
        for (size_t j = 0; j < n; j++)
          for (size_t o = 0; o < og; o++)
            memcpy(rows + o * cols + j * p_count,
                   dout + ((b0 + j) * s->out_c + g * og + o) * p_count, p_count * sizeof *rows);
        dy = rows;
      }
      if (dweight) {
        const float *x = col;
        if (pointwise && images == 1)
          x = inp + (b0 * s->in_c + g * cg) * in_plane;
        else
          columns(col, inp, b0, n, g, s);
        /* dW_g (og, kdim) += dy (og, n P) . col^T (n P, kdim) */
        qt__cpu_sgemm(CblasNoTrans, CblasTrans, (int)og, (int)kdim, (int)cols, 1.0f, dy, (int)cols,
                      x, (int)cols, 1.0f, dweight + g * og * kdim, (int)kdim);
      }
      if (!dinp) continue;
      /* dcol (kdim, n P) = W_g^T (kdim, og) . dy (og, n P), added into each
       * image's planes; one pointwise image takes it straight. */
      if (pointwise && images == 1) {
        float *dimg = dinp + (b0 * s->in_c + g * cg) * in_plane;
        qt__cpu_sgemm(CblasTrans, CblasNoTrans, (int)kdim, (int)p_count, (int)og, 1.0f, w,
                      (int)kdim, dy, (int)p_count, 1.0f, dimg, (int)p_count);
        continue;
      }
      qt__cpu_sgemm(CblasTrans, CblasNoTrans, (int)kdim, (int)cols, (int)og, 1.0f, w, (int)kdim, dy,
                    (int)cols, 0.0f, col, (int)cols);
      for (size_t j = 0; j < n; j++)
        col2im_add(dinp + ((b0 + j) * s->in_c + g * cg) * in_plane, col + j * p_count, cols, cg, s);
    }
  }
}

/*
 * qt_cuda_conv.cu - 2-D convolution on a CUDA device, the twin of
 * cpu/qt_cpu_conv2d.c. Dense convolutions lower to an im2col kernel over
 * as many images as the scratch holds and one strided-batched cuBLAS GEMM
 * over those images; grouped ones, image by image, to an im2col over all
 * groups and one GEMM over the groups; pointwise ones (1x1, stride 1, no
 * padding) multiply the images directly. Weight gradients without groups
 * are one batched GEMM of per-image terms and their column sums. The input
 * gradient goes through column matrices and a col2im kernel that gathers,
 * for each input pixel, the entries it was read into (no atomics; the
 * CPU's order of additions). Depthwise convolutions (one input channel per
 * group, any multiplier) run as direct kernels: one thread per output
 * (forward) or input pixel (input gradient), and for the weight gradient
 * blocks over a channel's taps and a chunk of its terms, summed in double
 * as on the CPU (qt_cuda_depthwise.cuh). Where the machine has cuDNN,
 * it runs the dense and grouped convolutions of FP32 and TF32 products
 * instead (qt_cuda_cudnn.cu says which). See qt_finetune.h.
 */
#include <limits.h>

#include <type_traits>

#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "finetune/cuda/qt_cuda_internal.h"
#include "finetune/cuda/qt_cuda_depthwise.cuh"

/* ------------------------------------------------------------------------- */
/* Geometry                                                                   */
/* ------------------------------------------------------------------------- */

/* The shape as kernel arguments (passed by value), in the kernels' index
 * type: int where qt__cuda_int_indices allows, else long. */
template <typename I>
struct geometry {
  I in_c, in_h, in_w;
  I out_c, out_h, out_w;
  I kernel_h, kernel_w;
  I stride_h, stride_w;
  I pad_top, pad_left;
  I groups;
};
typedef geometry<long> conv_geometry;

/* The sizes of a shape (or of another geometry) in index type I;
 * check_shape bounds every one by INT_MAX. */
template <typename I, typename S>
static geometry<I> geometry_as(const S &s) {
  geometry<I> g;
  g.in_c = (I)s.in_c;
  g.in_h = (I)s.in_h;
  g.in_w = (I)s.in_w;
  g.out_c = (I)s.out_c;
  g.out_h = (I)s.out_h;
  g.out_w = (I)s.out_w;
  g.kernel_h = (I)s.kernel_h;
  g.kernel_w = (I)s.kernel_w;
  g.stride_h = (I)s.stride_h;
  g.stride_w = (I)s.stride_w;
  g.pad_top = (I)s.pad_top;
  g.pad_left = (I)s.pad_left;
  g.groups = (I)s.groups;
  return g;
}

static int is_depthwise(const qt_conv2d_shape *s) {
  return s->in_c == s->groups;
}

/* The CPU's definition (qt_cpu_conv2d.c): the image is its column matrix. */
static int is_pointwise(const qt_conv2d_shape *s) {
  return s->kernel_h == 1 && s->kernel_w == 1 && s->stride_h == 1 && s->stride_w == 1 &&
         s->pad_top == 0 && s->pad_left == 0 && s->out_h == s->in_h && s->out_w == s->in_w;
}

/* The images whose column matrices the scratch holds at once: as many as
 * fit CONV_COLUMNS floats (128 MiB), at least one, at most the batch; one
 * for grouped convolutions, whose products run over the groups image by
 * image. */
#define CONV_COLUMNS ((size_t)1 << 25)

static size_t column_images(const qt_conv2d_shape *s) {
  size_t col = s->in_c * s->kernel_h * s->kernel_w * s->out_h * s->out_w;
  if (s->groups != 1 || col == 0) return 1;
  size_t images = CONV_COLUMNS / col;
  if (images > s->batch) images = s->batch;
  return images < 1 ? 1 : images;
}

extern "C" size_t qt_cuda_conv2d_scratch_size(const qt_conv2d_shape *s) {
  if (is_depthwise(s) || is_pointwise(s)) return 0;
  return column_images(s) * s->in_c * s->kernel_h * s->kernel_w * s->out_h * s->out_w;
}

/* QT_EINVAL unless the shape has nonzero sizes and strides, groups
 * dividing both channel counts, and sizes that the kernels' long indices,
 * the int of cuBLAS and the launch grid hold. (Every kernel checks each
 * input index it reads against in_h and in_w, so output sizes that the
 * padded input does not produce read no memory out of bounds.) */
/* The convolutions' products (qt__cuda_gemm's arguments). Under
 * QT_MATMUL_BF16 cuBLAS converts their FP32 operands itself
 * (qt__cuda_gemm_convert) rather than having them rounded into scratch
 * first, a pass over every column matrix and activation less: MobileNetV2
 * trained 5% faster so on an H100 (--amp bf16-fast, docs/benchmarks/).
 * QT_CUDA_CONV_CONVERT=0 rounds them, to measure one against the other. */
static int conv_gemm(int trans_a, int trans_b, size_t m, size_t n, size_t k, float alpha,
                     const float *a, size_t lda, long long stride_a, const float *b, size_t ldb,
                     long long stride_b, float beta, float *c, size_t ldc, long long stride_c,
                     size_t batch, const char *who, qt_err *err) {
  static int convert = -1;
  if (qt__cuda_switch_on("QT_CUDA_CONV_CONVERT", &convert)) {
    return qt__cuda_gemm_convert(trans_a, trans_b, m, n, k, alpha, a, lda, stride_a, b, ldb,
                                 stride_b, beta, c, ldc, stride_c, batch, who, err);
  }
  return qt__cuda_gemm(trans_a, trans_b, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta,
                       c, ldc, stride_c, batch, who, err);
}

static int check_shape(const qt_conv2d_shape *s, const char *who, qt_err *err) {
  if (!s) return qt_err_set(err, QT_EINVAL, "%s: shape is NULL", who);
  if (s->batch == 0 || s->in_c == 0 || s->in_h == 0 || s->in_w == 0 || s->out_c == 0 ||
      s->out_h == 0 || s->out_w == 0 || s->kernel_h == 0 || s->kernel_w == 0 || s->stride_h == 0 ||
      s->stride_w == 0) {
    return qt_err_set(err, QT_EINVAL,
                      "%s: zero size in the shape (batch %zu, in %zux%zux%zu, out %zux%zux%zu, "
                      "kernel %zux%zu, stride %zux%zu)",
                      who, s->batch, s->in_c, s->in_h, s->in_w, s->out_c, s->out_h, s->out_w,
                      s->kernel_h, s->kernel_w, s->stride_h, s->stride_w);
  }
  if (s->groups == 0 || s->in_c % s->groups != 0 || s->out_c % s->groups != 0) {
    return qt_err_set(err, QT_EINVAL, "%s: groups %zu does not divide in_c %zu and out_c %zu", who,
                      s->groups, s->in_c, s->out_c);
  }
  /* Each size must fit an int, the element counts the kernels' long
   * indices, and the matrix sizes cuBLAS's int. */
  const size_t big = (size_t)INT_MAX;
  if (s->batch > big || s->in_c > big || s->in_h > big || s->in_w > big || s->out_c > big ||
      s->out_h > big || s->out_w > big || s->kernel_h > big || s->kernel_w > big ||
      s->stride_h > big || s->stride_w > big || s->pad_top > big || s->pad_left > big) {
    return qt_err_set(err, QT_EINVAL, "%s: a size of the shape does not fit an int", who);
  }
  size_t in_elems = s->batch * s->in_c * s->in_h * s->in_w;
  size_t out_elems = s->batch * s->out_c * s->out_h * s->out_w;
  size_t kdim = (s->in_c / s->groups) * s->kernel_h * s->kernel_w;
  size_t p_count = s->out_h * s->out_w;
  if (in_elems > (size_t)LONG_MAX / 2 || out_elems > (size_t)LONG_MAX / 2 || kdim > big ||
      p_count > big || s->in_c * s->kernel_h * s->kernel_w > big ||
      s->out_c * s->kernel_h * s->kernel_w > big) {
    return qt_err_set(err, QT_EINVAL, "%s: the convolution is too large for int sizes", who);
  }
  return 0;
}

/* ------------------------------------------------------------------------- */
/* im2col / col2im                                                            */
/* ------------------------------------------------------------------------- */

/* col (in_c * kh * kw, out_h * out_w) from one image img (in_c, in_h,
 * in_w): row (ci * kh + ky) * kw + kx, so that group g's (kdim, P) block
 * starts at row g * cg * kh * kw, as the CPU's per-group matrix. Padding
 * reads 0. `images` images in a row, their matrices one after the other.
 * One thread per entry, grid-stride. */
template <typename I>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    im2col_kernel(float *__restrict__ col, const float *__restrict__ img, geometry<I> g, I images) {
  I p_count = g.out_h * g.out_w;
  I per_image = g.in_c * g.kernel_h * g.kernel_w * p_count;
  I in_image = g.in_c * g.in_h * g.in_w;
  I total = images * per_image;
  I stride = (I)gridDim.x * blockDim.x;
  for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    I image = i / per_image, entry = i - image * per_image;
    I row = entry / p_count, p = entry - row * p_count;
    I oy = p / g.out_w, ox = p - oy * g.out_w;
    I ci = row / (g.kernel_w * g.kernel_h), tap = row - ci * (g.kernel_w * g.kernel_h);
    I ky = tap / g.kernel_w, kx = tap - ky * g.kernel_w;
    I iy = oy * g.stride_h + ky - g.pad_top;
    I ix = ox * g.stride_w + kx - g.pad_left;
    float v = 0.0f;
    if (iy >= 0 && iy < g.in_h && ix >= 0 && ix < g.in_w)
      v = img[image * in_image + (ci * g.in_h + iy) * g.in_w + ix];
    col[i] = v;
  }
}

/* img (in_c, in_h, in_w) += the entries of col (laid out as im2col's) that
 * were read from each pixel (set: img = 0 + them), for `images` images in
 * a row. One thread per
 * pixel gathers its entries in the CPU's order (ky, then kx ascending), so
 * no two threads write the same pixel. */
template <typename I>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    col2im_add_kernel(float *__restrict__ img, const float *__restrict__ col, geometry<I> g,
                      I images, int set) {
  I p_count = g.out_h * g.out_w;
  I in_image = g.in_c * g.in_h * g.in_w;
  I col_image = g.in_c * g.kernel_h * g.kernel_w * p_count;
  I total = images * in_image;
  I stride = (I)gridDim.x * blockDim.x;
  for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    I image = i / in_image, pixel = i - image * in_image;
    const float *cols = col + image * col_image;
    I plane = pixel / g.in_w, ix = pixel - plane * g.in_w;
    I ci = plane / g.in_h, iy = plane - ci * g.in_h;
    float acc = set ? 0.0f : img[i];
    /* The outputs whose window covers the pixel: oy * stride_h + ky -
     * pad_top = iy with 0 <= ky < kernel_h, so ky = ty - oy * stride_h
     * for ty = iy + pad_top; ky ascending is oy descending (and x alike). */
    I ty = iy + g.pad_top, tx = ix + g.pad_left;
    I oy_last = min(ty / g.stride_h, g.out_h - 1), ox_last = min(tx / g.stride_w, g.out_w - 1);
    I oy_first = qt_dw::first_output(ty, g.kernel_h, g.stride_h);
    I ox_first = qt_dw::first_output(tx, g.kernel_w, g.stride_w);
    for (I oy = oy_last; oy >= oy_first; oy--) {
      I ky = ty - oy * g.stride_h;
      for (I ox = ox_last; ox >= ox_first; ox--) {
        I kx = tx - ox * g.stride_w;
        I row = (ci * g.kernel_h + ky) * g.kernel_w + kx;
        acc = __fadd_rn(acc, cols[row * p_count + oy * g.out_w + ox]);
      }
    }
    img[i] = acc;
  }
}

/* ------------------------------------------------------------------------- */
/* Bias                                                                       */
/* ------------------------------------------------------------------------- */

/* out (batch, out_c, P) = bias[channel]. */
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    conv_bias_broadcast_kernel(float *__restrict__ out, const float *__restrict__ bias, long total,
                               long out_c, long p_count) {
  long stride = (long)gridDim.x * blockDim.x;
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    out[i] = bias[(i / p_count) % out_c];
  }
}

/* dbias[o] += the sum over the batch and the plane of dout, in double: one
 * block per output channel. */
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    conv_bias_grad_kernel(float *__restrict__ dbias, const float *__restrict__ dout, long batch,
                          long out_c, long p_count) {
  __shared__ double shared[32];
  long o = blockIdx.x;
  double sum = 0.0;
  for (long i = threadIdx.x; i < batch * p_count; i += blockDim.x) {
    long b = i / p_count, p = i % p_count;
    sum += dout[(b * out_c + o) * p_count + p];
  }
  sum = qt__block_sum(sum, shared);
  if (threadIdx.x == 0) dbias[o] += (float)sum;
}

/* ------------------------------------------------------------------------- */
/* Depthwise                                                                  */
/* ------------------------------------------------------------------------- */

/* qt_cuda_depthwise.cuh's forward and input gradient: blockIdx.x over the
 * planes (output planes for the forward, input planes for the input
 * gradient), blockIdx.y over tiles of QT_CUDA_THREADS of a plane's pixels;
 * both walk on where the grid is smaller. K: the kernel's size when
 * square and known at compile time, else 0. */
template <int K, typename I>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    depthwise_forward_kernel(float *__restrict__ out, const float *__restrict__ inp,
                             const float *__restrict__ weight, const float *__restrict__ bias,
                             qt_dw::dims<I> s) {
  I planes = s.batch * s.out_c, pixels = s.out_h * s.out_w;
  for (I plane = (I)blockIdx.x; plane < planes; plane += (I)gridDim.x) {
    for (I p = (I)blockIdx.y * blockDim.x + threadIdx.x; p < pixels; p += (I)gridDim.y * blockDim.x)
      qt_dw::forward_at<K>(out, inp, weight, bias, s, plane, p);
  }
}

template <int K, int S, typename I>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    depthwise_backward_input_kernel(float *__restrict__ dinp, const float *__restrict__ dout,
                                    const float *__restrict__ weight, qt_dw::dims<I> s, int set) {
  I planes = s.batch * s.in_c, pixels = s.in_h * s.in_w;
  for (I plane = (I)blockIdx.x; plane < planes; plane += (I)gridDim.x) {
    for (I p = (I)blockIdx.y * blockDim.x + threadIdx.x; p < pixels; p += (I)gridDim.y * blockDim.x)
      qt_dw::input_grad_at<K, S>(dinp, dout, weight, s, plane, p, set);
  }
}

/* The depthwise weight gradient: qt_cuda_depthwise.cuh's blocks of a
 * channel, up to QT_DW_TAPS of its weights and a chunk of its terms (U
 * terms' loads at a time), then (several chunks) the chunks' totals. */
template <typename C, int U>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    depthwise_backward_weight_kernel(float *__restrict__ dweight, double *__restrict__ partial,
                                     const float *__restrict__ dout, const float *__restrict__ inp,
                                     qt_dw::shape s, qt_dw::split sp) {
  __shared__ double shared[QT_DW_TAPS * QT_CUDA_THREADS / 32];
  qt_dw::weight_block<C, U>(shared, dweight, partial, dout, inp, s, sp, (long)blockIdx.x,
                            threadIdx.x, blockDim.x);
}

/* One term's loads at a time in the weight gradient (2.48 ms of
 * MobileNetV2's BF16 step on an H100 at e4fdf3e), or three in flight
 * (QT_CUDA_DW_WEIGHT_ONE_TERM=0: 3.07 ms at 481738e); the same sums. */
static int dw_weight_one_term = -1;

static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    depthwise_weight_total_kernel(float *__restrict__ dweight, const double *__restrict__ partial,
                                  long weights, long chunks) {
  long stride = (long)gridDim.x * blockDim.x;
  for (long w = (long)blockIdx.x * blockDim.x + threadIdx.x; w < weights; w += stride) {
    qt_dw::total(dweight, partial, weights, chunks, w);
  }
}

static int depthwise_weight_grad(float *dweight, const float *dout, const float *inp,
                                 const qt_conv2d_shape *s, const char *who, qt_err *err) {
  qt_dw::shape sh = qt_dw::dims_of<long>(*s);
  qt_dw::split sp = qt_dw::plan(sh);
  /* check_shape bounds out_c * kh * kw by INT_MAX: the blocks fit the grid. */
  size_t weights = s->out_c * s->kernel_h * s->kernel_w;
  size_t blocks = s->out_c * (size_t)sp.groups * (size_t)sp.chunks;
  double *partial = NULL;
  int rc = 0;
  if (sp.chunks > 1 &&
      (rc = qt__cuda_sums_scratch_lock((size_t)sp.chunks * weights, &partial, who, err)) < 0)
    return rc;
  bool one_term = qt__cuda_switch_on("QT_CUDA_DW_WEIGHT_ONE_TERM", &dw_weight_one_term);
  bool narrow = qt_dw::int_coordinates(sh);
  auto kernel = narrow ? (one_term ? depthwise_backward_weight_kernel<int, 1>
                                   : depthwise_backward_weight_kernel<int, 3>)
                       : (one_term ? depthwise_backward_weight_kernel<long, 1>
                                   : depthwise_backward_weight_kernel<long, 3>);
  kernel<<<(unsigned)blocks, QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(dweight, partial, dout, inp,
                                                                      sh, sp);
  rc = qt__cuda_check_launch(err, who, "the depthwise weight gradient");
  if (rc == 0 && sp.chunks > 1) {
    depthwise_weight_total_kernel<<<qt__cuda_blocks(weights), QT_CUDA_THREADS, 0,
                                    qt__cuda_stream()>>>(dweight, partial, (long)weights,
                                                         sp.chunks);
    rc = qt__cuda_check_launch(err, who, "the depthwise weight gradient's total");
  }
  if (sp.chunks > 1) qt__cuda_sums_scratch_unlock();
  return rc;
}

/* The weight gradient of `images` images of a convolution without groups,
 * dW (out_c, kdim) += sum over the images of dy_i (out_c, P) . x_i^T
 * (P, kdim), with x_i the image itself (pointwise) or its column matrix,
 * the images dy_stride and x_stride floats apart: one strided-batched
 * product writes each image's term into scratch, up to PW_PARTIALS floats
 * of them at a time, and qt__cuda_column_sums adds them up in double,
 * instead of one product per image (for MobileNetV2's pointwise layers,
 * some 2,200 launches per step at batch 64). One image at a time (one
 * image, or a term as large as the scratch) accumulates straight into dW. */
#define PW_PARTIALS ((size_t)1 << 25)

static int weight_grad(float *dweight, const float *dy, size_t dy_stride, const float *x,
                       size_t x_stride, size_t images, size_t out_c, size_t kdim, size_t p_count,
                       const char *who, qt_err *err) {
  size_t term = out_c * kdim, chunk = PW_PARTIALS / term;
  if (chunk > images) chunk = images;
  if (chunk <= 1) {
    for (size_t i = 0; i < images; i++) {
      int rc = conv_gemm(0, 1, out_c, kdim, p_count, 1.0f, dy + i * dy_stride, p_count, 0,
                         x + i * x_stride, p_count, 0, 1.0f, dweight, kdim, 0, 1, who, err);
      if (rc < 0) return rc;
    }
    return 0;
  }
  float *terms = NULL;
  int rc = qt__cuda_products_scratch_lock(chunk * term, &terms, who, err);
  if (rc < 0) return rc;
  for (size_t i = 0; i < images && rc == 0; i += chunk) {
    size_t count = images - i < chunk ? images - i : chunk;
    /* terms_j (out_c, kdim) = dy_j (out_c, P) . x_j^T (P, kdim) */
    rc = conv_gemm(0, 1, out_c, kdim, p_count, 1.0f, dy + i * dy_stride, p_count,
                   (long long)dy_stride, x + i * x_stride, p_count, (long long)x_stride, 0.0f,
                   terms, kdim, (long long)term, count, who, err);
    if (rc == 0)
      rc = qt__cuda_column_sums(QT__COLSUM_PLAIN, dweight, NULL, terms, NULL, NULL, NULL, count,
                                term, who, err);
  }
  qt__cuda_products_scratch_unlock();
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Launches, in int indices where the arrays allow                            */
/* ------------------------------------------------------------------------- */

static size_t larger(size_t a, size_t b) {
  return a > b ? a : b;
}

/* Whether the int kernels may run on arrays of up to `count` elements of
 * this geometry: besides the flat indices, the coordinates they compute
 * (oy * stride + ky, iy + pad, ...) must fit, which strides or padding
 * near 2^31 would break. */
static bool int_indices(size_t count, const conv_geometry &g) {
  return qt__cuda_int_indices(larger(count, (size_t)qt_dw::coordinate_extent(g)));
}

/* im2col of `images` images from img into col. */
static void im2col(float *col, const float *img, const conv_geometry &g, size_t images) {
  size_t cols = images * g.in_c * g.kernel_h * g.kernel_w * g.out_h * g.out_w;
  size_t pixels = images * g.in_c * g.in_h * g.in_w;
  if (int_indices(larger(cols, pixels), g))
    im2col_kernel<int><<<qt__cuda_blocks(cols), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
        col, img, geometry_as<int>(g), (int)images);
  else
    im2col_kernel<long><<<qt__cuda_blocks(cols), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
        col, img, g, (long)images);
}

/* img += col2im of `images` images' columns (set: img = it). */
static void col2im_add(float *img, const float *col, const conv_geometry &g, size_t images,
                       int set) {
  size_t cols = images * g.in_c * g.kernel_h * g.kernel_w * g.out_h * g.out_w;
  size_t pixels = images * g.in_c * g.in_h * g.in_w;
  if (int_indices(larger(cols, pixels), g))
    col2im_add_kernel<int><<<qt__cuda_blocks(pixels), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
        img, col, geometry_as<int>(g), (int)images, set);
  else
    col2im_add_kernel<long><<<qt__cuda_blocks(pixels), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
        img, col, g, (long)images, set);
}

/* The grid of the depthwise forward and input gradient over `planes`
 * planes of `pixels` pixels: at most 2^20 planes at a time (so that the
 * kernels' int indices step past the last without overflow, see
 * int_indices) and the grid's 65535 tiles in y. */
static dim3 depthwise_grid(size_t planes, size_t pixels) {
  size_t tiles = (pixels + QT_CUDA_THREADS - 1) / QT_CUDA_THREADS, most = (size_t)1 << 20;
  return dim3((unsigned)(planes < most ? planes : most), (unsigned)(tiles < 65535 ? tiles : 65535));
}

/* Calls launch(K, S, dims) with K the shape's kernel size as a
 * compile-time constant where the bodies unroll it (3x3, 5x5; else 0, the
 * shape's), S its stride where by_stride and both are 1 or 2 (else 0),
 * and dims in the index type that the sizes allow. */
template <bool by_stride, typename Launch>
static void depthwise_dispatch(const qt_conv2d_shape *s, const conv_geometry &g, Launch launch) {
  typedef std::integral_constant<int, 0> none;
  size_t outs = s->batch * s->out_c * s->out_h * s->out_w;
  size_t pixels = s->batch * s->in_c * s->in_h * s->in_w;
  if (!int_indices(larger(outs, pixels), g)) {
    launch(none(), none(), qt_dw::dims_of<long>(*s));
    return;
  }
  qt_dw::dims<int> d = qt_dw::dims_of<int>(*s);
  size_t stride = s->stride_h == s->stride_w ? s->stride_h : 0;
  auto by_k = [&](auto k) {
    if constexpr (by_stride) {
      if (stride == 1) return launch(k, std::integral_constant<int, 1>(), d);
      if (stride == 2) return launch(k, std::integral_constant<int, 2>(), d);
    }
    launch(k, none(), d);
  };
  size_t k = s->kernel_h == s->kernel_w ? s->kernel_h : 0;
  if (k == 3)
    by_k(std::integral_constant<int, 3>());
  else if (k == 5)
    by_k(std::integral_constant<int, 5>());
  else
    launch(none(), none(), d);
}

static void depthwise_forward(float *out, const float *inp, const float *weight, const float *bias,
                              const qt_conv2d_shape *s, const conv_geometry &g) {
  dim3 grid = depthwise_grid(s->batch * s->out_c, s->out_h * s->out_w);
  depthwise_dispatch<false>(s, g, [&](auto k, auto, auto d) {
    depthwise_forward_kernel<decltype(k)::value>
        <<<grid, QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(out, inp, weight, bias, d);
  });
}

static void depthwise_backward_input(float *dinp, const float *dout, const float *weight,
                                     const qt_conv2d_shape *s, const conv_geometry &g, int set) {
  dim3 grid = depthwise_grid(s->batch * s->in_c, s->in_h * s->in_w);
  depthwise_dispatch<true>(s, g, [&](auto k, auto st, auto d) {
    depthwise_backward_input_kernel<decltype(k)::value, decltype(st)::value>
        <<<grid, QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(dinp, dout, weight, d, set);
  });
}

/* ------------------------------------------------------------------------- */
/* Forward and backward                                                       */
/* ------------------------------------------------------------------------- */

extern "C" int qt_cuda_conv2d_forward(float *out, float *scratch, const float *inp,
                                      const float *weight, const float *bias,
                                      const qt_conv2d_shape *s, qt_err *err) {
  const char *who = "qt_cuda_conv2d_forward";
  int rc = check_shape(s, who, err);
  if (rc < 0) return rc;
  if (!out || !inp || !weight || (!scratch && qt_cuda_conv2d_scratch_size(s) > 0)) {
    return qt_err_set(err, QT_EINVAL, "%s: NULL array (scratch needs %zu floats)", who,
                      qt_cuda_conv2d_scratch_size(s));
  }
  conv_geometry g = geometry_as<long>(*s);
  size_t out_elems = s->batch * s->out_c * s->out_h * s->out_w;
  if (is_depthwise(s)) {
    depthwise_forward(out, inp, weight, bias, s, g);
    return qt__cuda_check_launch(err, who, "the depthwise convolution kernel");
  }
  size_t cg = s->in_c / s->groups, og = s->out_c / s->groups;
  size_t kdim = cg * s->kernel_h * s->kernel_w, p_count = s->out_h * s->out_w;
  int pointwise = is_pointwise(s);
  if (bias) {
    conv_bias_broadcast_kernel<<<qt__cuda_blocks(out_elems), QT_CUDA_THREADS, 0,
                                 qt__cuda_stream()>>>(out, bias, (long)out_elems, (long)s->out_c,
                                                      (long)p_count);
    rc = qt__cuda_check_launch(err, who, "the bias broadcast");
    if (rc < 0) return rc;
  }
  rc = qt__cuda_cudnn_conv(QT__CUDNN_FORWARD, out, inp, weight, bias ? 1.0f : 0.0f, scratch, s, who,
                           err);
  if (rc <= 0) return rc;
  size_t in_image = s->in_c * s->in_h * s->in_w;
  if (pointwise && s->groups == 1) {
    /* y_b (out_c, P) = W (out_c, in_c) . x_b (in_c, P), every image in one
     * call (the weight's batch stride is 0). */
    return conv_gemm(0, 0, og, p_count, kdim, 1.0f, weight, kdim, 0, inp, p_count,
                     (long long)in_image, bias ? 1.0f : 0.0f, out, p_count,
                     (long long)(s->out_c * p_count), s->batch, who, err);
  }
  /* Dense: the column matrices of `images` images at a time, and one
   * product over them (the weight's batch stride is 0). Grouped: image by
   * image, one product over the groups; pointwise, the image is its own
   * column matrix. */
  size_t images = pointwise ? 1 : column_images(s), col_image = s->groups * kdim * p_count;
  for (size_t b = 0; b < s->batch; b += images) {
    size_t count = s->batch - b < images ? s->batch - b : images;
    const float *col = inp + b * in_image;
    if (!pointwise) {
      im2col(scratch, col, g, count);
      rc = qt__cuda_check_launch(err, who, "im2col");
      if (rc < 0) return rc;
      col = scratch;
    }
    float *y = out + b * s->out_c * p_count;
    if (s->groups == 1) {
      /* y_i (out_c, P) = W (out_c, kdim) . col_i (kdim, P) for every image i. */
      rc = conv_gemm(0, 0, og, p_count, kdim, 1.0f, weight, kdim, 0, col, p_count,
                     (long long)col_image, bias ? 1.0f : 0.0f, y, p_count,
                     (long long)(s->out_c * p_count), count, who, err);
    } else {
      /* y_g (og, P) = W_g (og, kdim) . col_g (kdim, P) for every group g. */
      rc = conv_gemm(0, 0, og, p_count, kdim, 1.0f, weight, kdim, (long long)(og * kdim), col,
                     p_count, (long long)(kdim * p_count), bias ? 1.0f : 0.0f, y, p_count,
                     (long long)(og * p_count), s->groups, who, err);
    }
    if (rc < 0) return rc;
  }
  return 0;
}

extern "C" int qt__cuda_conv2d_backward(float *dinp, float *dweight, float *dbias, float *scratch,
                                        const float *dout, const float *inp, const float *weight,
                                        const qt_conv2d_shape *s, int set, qt_err *err) {
  const char *who = "qt_cuda_conv2d_backward";
  int rc = check_shape(s, who, err);
  if (rc < 0) return rc;
  if (!dout || (dweight && !inp) || (dinp && !weight) ||
      ((dinp || dweight) && !scratch && qt_cuda_conv2d_scratch_size(s) > 0)) {
    return qt_err_set(err, QT_EINVAL, "%s: NULL array (scratch needs %zu floats)", who,
                      qt_cuda_conv2d_scratch_size(s));
  }
  conv_geometry g = geometry_as<long>(*s);
  size_t p_count = s->out_h * s->out_w;
  if (dbias) {
    conv_bias_grad_kernel<<<(unsigned)s->out_c, QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
        dbias, dout, (long)s->batch, (long)s->out_c, (long)p_count);
    rc = qt__cuda_check_launch(err, who, "the bias gradient");
    if (rc < 0) return rc;
  }
  if (is_depthwise(s)) {
    if (dinp) {
      depthwise_backward_input(dinp, dout, weight, s, g, set);
      rc = qt__cuda_check_launch(err, who, "the depthwise input gradient");
      if (rc < 0) return rc;
    }
    if (dweight && (rc = depthwise_weight_grad(dweight, dout, inp, s, who, err)) < 0) return rc;
    return 0;
  }
  /* What cuDNN takes, the kernels below leave alone. */
  if (dweight) {
    rc = qt__cuda_cudnn_conv(QT__CUDNN_BACKWARD_FILTER, dweight, inp, dout, 1.0f, scratch, s, who,
                             err);
    if (rc < 0) return rc;
    if (rc == 0) dweight = NULL;
  }
  if (dinp) {
    rc = qt__cuda_cudnn_conv(QT__CUDNN_BACKWARD_DATA, dinp, weight, dout, set ? 0.0f : 1.0f,
                             scratch, s, who, err);
    if (rc < 0) return rc;
    if (rc == 0) dinp = NULL;
  }
  if (!dinp && !dweight) return 0;
  size_t cg = s->in_c / s->groups, og = s->out_c / s->groups;
  size_t kdim = cg * s->kernel_h * s->kernel_w;
  size_t in_image = s->in_c * s->in_h * s->in_w;
  int pointwise = is_pointwise(s);
  size_t out_image = s->out_c * p_count;
  /* A pointwise convolution without groups takes every image's input
   * gradient in one call, dx_b (in_c, P) += W^T . dy_b, and its weight
   * gradient in a few (weight_grad). */
  if (pointwise && s->groups == 1) {
    if (dinp) {
      rc = conv_gemm(1, 0, kdim, p_count, og, 1.0f, weight, kdim, 0, dout, p_count,
                     (long long)out_image, set ? 0.0f : 1.0f, dinp, p_count, (long long)in_image,
                     s->batch, who, err);
      if (rc < 0) return rc;
    }
    if (dweight)
      return weight_grad(dweight, dout, out_image, inp, in_image, s->batch, og, kdim, p_count, who,
                         err);
    return 0;
  }
  /* Otherwise as the forward: `images` column matrices at a time (dense),
   * or image by image over the groups. */
  size_t images = pointwise ? 1 : column_images(s), col_image = s->groups * kdim * p_count;
  for (size_t b = 0; b < s->batch; b += images) {
    size_t count = s->batch - b < images ? s->batch - b : images;
    const float *dy = dout + b * out_image;
    if (dweight) {
      const float *col = inp + b * in_image;
      if (!pointwise) {
        im2col(scratch, col, g, count);
        rc = qt__cuda_check_launch(err, who, "im2col");
        if (rc < 0) return rc;
        col = scratch;
      }
      if (s->groups == 1) {
        rc =
            weight_grad(dweight, dy, out_image, col, col_image, count, og, kdim, p_count, who, err);
      } else {
        /* dW_g (og, kdim) += dy_g (og, P) . col_g^T (P, kdim) */
        rc = conv_gemm(0, 1, og, kdim, p_count, 1.0f, dy, p_count, (long long)(og * p_count), col,
                       p_count, (long long)(kdim * p_count), 1.0f, dweight, kdim,
                       (long long)(og * kdim), s->groups, who, err);
      }
      if (rc < 0) return rc;
    }
    if (dinp) {
      float *dimg = dinp + b * in_image;
      /* The queue orders these products after the weight gradient's read
       * of the scratch. */
      if (s->groups == 1) {
        /* dcol_i (kdim, P) = W^T (kdim, out_c) . dy_i (out_c, P) for every image i. */
        rc = conv_gemm(1, 0, kdim, p_count, og, 1.0f, weight, kdim, 0, dy, p_count,
                       (long long)out_image, 0.0f, scratch, p_count, (long long)col_image, count,
                       who, err);
      } else {
        /* dcol_g (kdim, P) = W_g^T (kdim, og) . dy_g (og, P); a pointwise
         * convolution accumulates it straight into the image. */
        float *dcol = pointwise ? dimg : scratch;
        rc = conv_gemm(1, 0, kdim, p_count, og, 1.0f, weight, kdim, (long long)(og * kdim), dy,
                       p_count, (long long)(og * p_count), pointwise && !set ? 1.0f : 0.0f, dcol,
                       p_count, (long long)(kdim * p_count), s->groups, who, err);
      }
      if (rc < 0) return rc;
      if (!pointwise) {
        col2im_add(dimg, scratch, g, count, set);
        rc = qt__cuda_check_launch(err, who, "col2im");
        if (rc < 0) return rc;
      }
    }
  }
  return 0;
}

extern "C" int qt_cuda_conv2d_backward(float *dinp, float *dweight, float *dbias, float *scratch,
                                       const float *dout, const float *inp, const float *weight,
                                       const qt_conv2d_shape *s, qt_err *err) {
  return qt__cuda_conv2d_backward(dinp, dweight, dbias, scratch, dout, inp, weight, s, 0, err);
}

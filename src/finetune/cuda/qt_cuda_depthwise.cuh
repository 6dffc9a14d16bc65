/*
 * qt_cuda_depthwise.cuh - the bodies of the depthwise convolutions' kernels
 * (one input channel per group, any multiplier; qt_cuda_conv.cu launches
 * them).
 *
 * The forward and the input gradient take one thread per pixel of a plane
 * (an image's channel), the grid's x over the planes and its y over tiles
 * of a plane's pixels, so that a thread divides only its pixel's index by
 * the plane's width (the loops they replace divided a flat index by the
 * width, the height and the channels). With the kernel size known at
 * compile time (3x3, 5x5; 0: the shape's) a thread loads all its taps
 * before it adds any, so that the loads are in flight together. Both keep
 * the CPU's order and float
 * operations (qt_cpu_conv2d.c), so their results equal the CPU's bit for
 * bit:
 *   forward         out = bias, then += w * x over the taps inside the
 *                   image, ky then kx
 *   input gradient  dinp (+)= dout * w over the multiplier's output
 *                   channels and the outputs whose window covers the
 *                   pixel, in scan order (oy, then ox ascending)
 *
 * The weight gradient:
 *   dweight[o, ky, kx] += sum over the images b and the outputs (oy, ox) of
 *     dout[b, o, oy, ox] * inp[b, o / multiplier, oy sy + ky - pt, ox sx + kx - pl]
 * (terms whose input falls in the padding are left out), each product
 * and sum in double as on the CPU (qt_cpu_conv2d.c), rounded to float once.
 *
 * A block takes one output channel o, a group of up to QT_DW_TAPS of its
 * weights (a 3x3 kernel's 9 in one group) and a chunk of its batch *
 * out_h * out_w terms: each thread walks the chunk's terms `threads` apart,
 * U terms' loads at a time, reads each output gradient once
 * and adds it times the input under each of the group's taps to its own
 * sum per tap, in term order; the block then adds its
 * threads' sums, warp by warp in order. With one chunk the block adds its
 * sums to dweight; with several it writes them to partial, and total()
 * adds the chunks' in chunk order. The split (plan) depends only on the
 * shape, so the result does not change from run to run.
 *
 * Until this body a block took one weight, so each output gradient and
 * its input were read once per tap (9 times for 3x3), with a 64-bit
 * division and remainder per term: MobileNetV2's weight gradients took 7.9
 * of its 28.7 ms BF16 step on an H100 (docs/benchmarks/, 5e08e19), and
 * 2.5 of 23.2 with this body's first version (one term's loads at a time,
 * e4fdf3e), 3.1 with three terms' loads in flight (481738e, at 128
 * registers and two blocks per multiprocessor where one term took 79 and
 * three): qt_cuda_conv.cu takes U = 1, and 3 under
 * QT_CUDA_DW_WEIGHT_ONE_TERM=0, to measure the two again.
 *
 * Only __device__ functions over the block, thread and shared memory given
 * as arguments, so that tests/qt_cuda_emulation.h runs them on the CPU
 * (test_emulated_depthwise); the includer provides __shfl_xor_sync for
 * double and __syncthreads.
 */
#ifndef QT_CUDA_DEPTHWISE_CUH
#define QT_CUDA_DEPTHWISE_CUH

#define QT_DW_TAPS 9          /* weights per block */
#define QT_DW_TERMS 8192      /* terms per chunk, at least where blocks allow */
#define QT_DW_MAX_BLOCKS 2048 /* blocks per launch, at most (of chunks > 1) */

namespace qt_dw {

/* The convolution's sizes (qt_conv2d_shape, which check_shape bounds by
 * INT_MAX each), in the index type I of the kernel: int where every index
 * fits, else long. */
template <typename I>
struct dims {
  I batch, in_c, in_h, in_w, out_c, out_h, out_w;
  I kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left;
};
typedef dims<long> shape;

template <typename I, typename S>
__host__ __device__ inline dims<I> dims_of(const S &s) {
  return dims<I>{(I)s.batch,    (I)s.in_c,    (I)s.in_h,     (I)s.in_w,     (I)s.out_c,
                 (I)s.out_h,    (I)s.out_w,   (I)s.kernel_h, (I)s.kernel_w, (I)s.stride_h,
                 (I)s.stride_w, (I)s.pad_top, (I)s.pad_left};
}

/* The forward's output p (oy out_w + ox) of plane b out_c + o. */
template <int K, typename I>
__device__ inline void forward_at(float *out, const float *inp, const float *weight,
                                  const float *bias, const dims<I> &s, I plane, I p) {
  I b = plane / s.out_c, o = plane - b * s.out_c;
  I oy = p / s.out_w, ox = p - oy * s.out_w;
  const I kh = K ? K : s.kernel_h, kw = K ? K : s.kernel_w;
  const float *x = inp + (b * s.in_c + o / (s.out_c / s.in_c)) * s.in_h * s.in_w;
  const float *w = weight + o * kh * kw;
  I iy0 = oy * s.stride_h - s.pad_top, ix0 = ox * s.stride_w - s.pad_left;
  float acc = bias ? bias[o] : 0.0f;
  if constexpr (K > 0) {
    /* Every tap's loads first, then the products added in tap order,
     * those in the padding left out. */
    float xv[K * K], wv[K * K];
    unsigned inside = 0;
#pragma unroll
    for (int t = 0; t < K * K; t++) {
      I iy = iy0 + t / K, ix = ix0 + t % K;
      bool in = iy >= 0 && iy < s.in_h && ix >= 0 && ix < s.in_w;
      xv[t] = in ? x[iy * s.in_w + ix] : 0.0f;
      wv[t] = w[t];
      inside |= (unsigned)in << t;
    }
#pragma unroll
    for (int t = 0; t < K * K; t++)
      if (inside >> t & 1u) acc = __fadd_rn(acc, __fmul_rn(wv[t], xv[t]));
  } else {
    for (I ky = 0; ky < kh; ky++) {
      I iy = iy0 + ky;
      if (iy < 0 || iy >= s.in_h) continue;
      for (I kx = 0; kx < kw; kx++) {
        I ix = ix0 + kx;
        if (ix < 0 || ix >= s.in_w) continue;
        acc = __fadd_rn(acc, __fmul_rn(w[ky * kw + kx], x[iy * s.in_w + ix]));
      }
    }
  }
  out[plane * s.out_h * s.out_w + p] = acc;
}

/* The first output o whose window (o * stride .. o * stride + kernel - 1,
 * in padded coordinates) covers padded position t >= 0: the least o >= 0
 * with t - o * stride <= kernel - 1. qt_cuda_conv.cu's col2im uses it
 * too. */
template <typename I>
__device__ inline I first_output(I t, I kernel, I stride) {
  I over = t - (kernel - 1);
  return over <= 0 ? 0 : (over - 1) / stride + 1;
}

/* The input gradient at pixel p (iy in_w + ix) of plane b in_c + ci,
 * added to dinp, or written (set). S: both strides, where equal and known
 * at compile time (1, 2), else 0 (the shape's). At most (kernel - 1) /
 * stride + 1 rows and as many columns of outputs cover a pixel. With K
 * and S known, an output channel's loads of them all are issued first and
 * the terms added after, in order. (A loop that left at the window's edge
 * had each load wait for the one before, and this body was then no faster
 * than the flat loop it replaced: 3.85 against 3.73 ms a MobileNetV2 step
 * on an H100, e4fdf3e.) */
template <int K, int S, typename I>
__device__ inline void input_grad_at(float *dinp, const float *dout, const float *weight,
                                     const dims<I> &s, I plane, I p, int set) {
  I b = plane / s.in_c, ci = plane - b * s.in_c;
  I iy = p / s.in_w, ix = p - iy * s.in_w;
  const I kh = K ? K : s.kernel_h, kw = K ? K : s.kernel_w, mult = s.out_c / s.in_c;
  const I sh = S ? S : s.stride_h, sw = S ? S : s.stride_w;
  const I rows = (kh - 1) / sh + 1, cols = (kw - 1) / sw + 1;
  I ty = iy + s.pad_top, tx = ix + s.pad_left;
  I oy_first = first_output(ty, kh, sh), ox_first = first_output(tx, kw, sw);
  I oy_last = ty / sh < s.out_h - 1 ? ty / sh : s.out_h - 1;
  I ox_last = tx / sw < s.out_w - 1 ? tx / sw : s.out_w - 1;
  float *d = dinp + plane * s.in_h * s.in_w + p;
  float acc = set ? 0.0f : *d;
  for (I m = 0; m < mult; m++) {
    I o = ci * mult + m;
    const float *dy = dout + (b * s.out_c + o) * s.out_h * s.out_w;
    const float *w = weight + o * kh * kw;
    if constexpr (K > 0 && S > 0) {
      constexpr int R = (K - 1) / (S > 0 ? S : 1) + 1; /* rows, columns */
      float dv[R * R], wv[R * R];
      unsigned inside = 0;
#pragma unroll
      for (int t = 0; t < R * R; t++) {
        I oy = oy_first + t / R, ox = ox_first + t % R;
        bool in = oy <= oy_last && ox <= ox_last;
        dv[t] = in ? dy[oy * s.out_w + ox] : 0.0f;
        wv[t] = in ? w[(ty - oy * S) * K + tx - ox * S] : 0.0f;
        inside |= (unsigned)in << t;
      }
#pragma unroll
      for (int t = 0; t < R * R; t++)
        if (inside >> t & 1u) acc = __fadd_rn(acc, __fmul_rn(dv[t], wv[t]));
    } else {
      for (I j = 0; j < rows; j++) {
        I oy = oy_first + j, ky = ty - oy * sh;
        for (I l = 0; l < cols; l++) {
          I ox = ox_first + l, kx = tx - ox * sw;
          if (oy <= oy_last && ox <= ox_last)
            acc = __fadd_rn(acc, __fmul_rn(dy[oy * s.out_w + ox], w[ky * kw + kx]));
        }
      }
    }
  }
  *d = acc;
}

/* The grid: out_c * groups * chunks blocks, block number (chunk * out_c +
 * o) * groups + group; chunks of per_chunk terms (the last may be
 * shorter, none empty). */
struct split {
  long groups, chunks, per_chunk;
};

__host__ __device__ inline split plan(const shape &s) {
  split sp;
  long taps = s.kernel_h * s.kernel_w, count = s.batch * s.out_h * s.out_w;
  sp.groups = (taps + QT_DW_TAPS - 1) / QT_DW_TAPS;
  long chunks = (count + QT_DW_TERMS - 1) / QT_DW_TERMS;
  long most = QT_DW_MAX_BLOCKS / (s.out_c * sp.groups);
  if (chunks > most) chunks = most;
  if (chunks < 1) chunks = 1;
  sp.per_chunk = (count + chunks - 1) / chunks;
  sp.chunks = (count + sp.per_chunk - 1) / sp.per_chunk;
  return sp;
}

/* The largest coordinate a convolution's kernels form, plus one: every
 * input row and column a tap reaches, and the input's size with the
 * padding and stride added (check_shape bounds each size, not these
 * sums). S: a dims, or qt_cuda_conv.cu's geometry (the same fields). */
template <typename S>
__host__ __device__ inline long coordinate_extent(const S &s) {
  long h = (long)(s.out_h - 1) * s.stride_h + s.kernel_h,
       h2 = (long)s.in_h + s.pad_top + s.stride_h;
  long w = (long)(s.out_w - 1) * s.stride_w + s.kernel_w,
       w2 = (long)s.in_w + s.pad_left + s.stride_w;
  h = h > h2 ? h : h2;
  w = w > w2 ? w : w2;
  return h > w ? h : w;
}

/* Whether the weight gradient's coordinates fit an int. */
__host__ __device__ inline bool int_coordinates(const shape &s) {
  return coordinate_extent(s) <= 2147483647L;
}

/* Block `block` of the grid, thread tid of `threads` (a multiple of 32,
 * at most 1024); shared holds QT_DW_TAPS * threads / 32 doubles. C: the
 * type of a plane's coordinates, int where int_coordinates, else long; U:
 * a thread's terms whose loads are in flight together (the sums are the
 * same for any U). */
template <typename C, int U>
__device__ inline void weight_block(double *shared, float *dweight, double *partial,
                                    const float *dout, const float *inp, const shape s,
                                    const split sp, long block, int tid, int threads) {
  long group = block % sp.groups, rest = block / sp.groups;
  long o = rest % s.out_c, chunk = rest / s.out_c;
  long kk = s.kernel_h * s.kernel_w, k0 = group * QT_DW_TAPS;
  int taps = (int)(kk - k0 < QT_DW_TAPS ? kk - k0 : QT_DW_TAPS);
  C ky[QT_DW_TAPS], kx[QT_DW_TAPS];
#pragma unroll
  for (int j = 0; j < QT_DW_TAPS; j++) {
    long k = k0 + (j < taps ? j : 0);
    ky[j] = (C)(k / s.kernel_w);
    kx[j] = (C)(k % s.kernel_w);
  }
  C out_h = (C)s.out_h, out_w = (C)s.out_w, in_h = (C)s.in_h, in_w = (C)s.in_w;
  long p_count = s.out_h * s.out_w, count = s.batch * p_count;
  long end = (chunk + 1) * sp.per_chunk < count ? (chunk + 1) * sp.per_chunk : count;
  const float *x_channel = inp + (o / (s.out_c / s.in_c)) * s.in_h * s.in_w;
  const float *dy_channel = dout + o * p_count;
  long x_image = s.in_c * s.in_h * s.in_w, dy_image = s.out_c * p_count;
  /* The thread's first term (b, oy, ox), then steps of `threads` terms:
   * step_b images, step_y rows and step_x columns, carried. */
  long i = chunk * sp.per_chunk + tid;
  long b = i / p_count;
  C oy = (C)(i % p_count / out_w), ox = (C)(i % p_count % out_w);
  long step_b = threads / p_count;
  C step_y = (C)(threads % p_count / out_w), step_x = (C)(threads % p_count % out_w);
  double sum[QT_DW_TAPS];
#pragma unroll
  for (int j = 0; j < QT_DW_TAPS; j++) sum[j] = 0.0;
  /* The two loops carry (b, oy, ox) the same way; written out in each, as
   * a shared lambda cost the three-term body a spill (ptxas, sm_90). */
  if constexpr (U == 1) {
    /* One term at a time, each tap's product added as it is loaded. */
    for (; i < end; i += threads) {
      const float *plane = x_channel + b * x_image;
      double g = dy_channel[b * dy_image + (long)oy * out_w + ox];
      C iy0 = oy * (C)s.stride_h - (C)s.pad_top, ix0 = ox * (C)s.stride_w - (C)s.pad_left;
#pragma unroll
      for (int j = 0; j < QT_DW_TAPS; j++) {
        C iy = iy0 + ky[j], ix = ix0 + kx[j];
        if (j < taps && iy >= 0 && iy < in_h && ix >= 0 && ix < in_w)
          sum[j] += g * plane[(long)iy * in_w + ix];
      }
      ox += step_x;
      if (ox >= out_w) {
        ox -= out_w;
        oy++;
      }
      oy += step_y;
      if (oy >= out_h) {
        oy -= out_h;
        b++;
      }
      b += step_b;
    }
  } else {
    /* U terms' loads in flight, then their products added in term order,
     * as one term at a time. */
    for (; i < end; i += U * (long)threads) {
      float g[U], x[U][QT_DW_TAPS];
      unsigned inside[U]; /* bit j: tap j's input is in the image */
#pragma unroll
      for (int u = 0; u < U; u++) {
        bool term = i + u * (long)threads < end;
        const float *plane = x_channel + b * x_image;
        g[u] = term ? dy_channel[b * dy_image + (long)oy * out_w + ox] : 0.0f;
        inside[u] = 0;
        C iy0 = oy * (C)s.stride_h - (C)s.pad_top;
        C ix0 = ox * (C)s.stride_w - (C)s.pad_left;
#pragma unroll
        for (int j = 0; j < QT_DW_TAPS; j++) {
          C iy = iy0 + ky[j], ix = ix0 + kx[j];
          bool in = term && j < taps && iy >= 0 && iy < in_h && ix >= 0 && ix < in_w;
          x[u][j] = in ? plane[(long)iy * in_w + ix] : 0.0f;
          inside[u] |= (unsigned)in << j;
        }
        ox += step_x;
        if (ox >= out_w) {
          ox -= out_w;
          oy++;
        }
        oy += step_y;
        if (oy >= out_h) {
          oy -= out_h;
          b++;
        }
        b += step_b;
      }
#pragma unroll
      for (int u = 0; u < U; u++) {
#pragma unroll
        for (int j = 0; j < QT_DW_TAPS; j++)
          if (inside[u] >> j & 1u) sum[j] += (double)g[u] * x[u][j];
      }
    }
  }
  /* The warps' sums (each lane ends with its warp's), then the block's in
   * warp order. */
  int warps = threads / 32, warp = tid / 32, lane = tid % 32;
#pragma unroll
  for (int j = 0; j < QT_DW_TAPS; j++) {
    double v = sum[j];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0) shared[j * warps + warp] = v;
  }
  __syncthreads();
  if (tid >= taps) return;
  double total = 0.0;
  for (int w = 0; w < warps; w++) total += shared[tid * warps + w];
  long weight = o * kk + k0 + tid;
  if (sp.chunks == 1)
    dweight[weight] += (float)total;
  else
    partial[chunk * s.out_c * kk + weight] = total;
}

/* dweight[weight] += the chunks' partial sums of it, in chunk order. */
__device__ inline void total(float *dweight, const double *partial, long weights, long chunks,
                             long weight) {
  double sum = 0.0;
  for (long r = 0; r < chunks; r++) sum += partial[r * weights + weight];
  dweight[weight] += (float)sum;
}

} /* namespace qt_dw */

#endif /* QT_CUDA_DEPTHWISE_CUH */

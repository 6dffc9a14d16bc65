/*
 * qt_cuda_batchnorm.cu - batch norm over the channels of NCHW images on a
 * CUDA device, the twin of cpu/qt_cpu_batchnorm.c (train, eval and frozen
 * modes) and of cpu/qt_cpu_stochnorm.c (a per-channel choice between the
 * two, sharing the kernels). In TRAIN mode the batch statistics are reduced
 * in double in two passes (mean, then the biased variance around it) and
 * the running statistics updated with PyTorch's rule in double, as on the
 * CPU; the output, and the backward's input gradient, use the CPU's float
 * operations in its order (__fmul_rn / __fadd_rn, no FMA contraction). The
 * backward's two sums per channel are reduced in double. See
 * qt_finetune.h.
 *
 * A channel's values (batch runs of hw) are split into chunks of about
 * BN_CHUNK values, so that a stem's 32 channels of 64 x 112 x 112 values
 * keep the whole device busy instead of 32 blocks each walking 802,816
 * values: a block sums one chunk of one channel (bn_sums_kernel), one
 * thread per channel adds the chunks' sums in chunk order and finishes the
 * channel (bn_channel_kernel: the batch mean, then the statistics and the
 * running update, or the backward's affine gradients and means), and the
 * output or input gradient is an elementwise pass. The chunking depends
 * only on the shape, so results do not change from run to run.
 */
#include <limits.h>
#include <math.h>

#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "finetune/cuda/qt_cuda_internal.h"

/* Values per chunk aimed at, and the most blocks a pass splits channels
 * into chunks for. */
#define BN_CHUNK 4096
#define BN_MAX_BLOCKS 2048

/* What a pass sums per chunk, and what the channel kernel then does. */
enum {
  BN_MEAN,    /* sum of x; then stats[MEAN] = the batch mean */
  BN_FORWARD, /* sum of (x - mean)^2; then the statistics and running update */
  BN_BACKWARD /* sums of dy and dy * xhat; then the affine gradients and means */
};

/* Per-channel doubles of the scratch after the partial sums. */
enum { STAT_MEAN, STAT_A, STAT_B, STATS };

typedef struct bn_shape {
  size_t batch, c, hw, count; /* count = batch * hw values per channel */
  size_t chunks, per_chunk;   /* chunks per channel, values per chunk */
} bn_shape;

/* Grid: chunks * c blocks, block b summing chunk b / c of channel b % c
 * into partial[(o * chunks + chunk) * c + ch] for its output o (two for the
 * backward). A channel's value i is image i / hw, pixel i % hw: the block
 * walks its chunk in steps of the block's size, carrying (image, pixel)
 * along instead of dividing. */
template <int kind>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    bn_sums_kernel(double *__restrict__ partial, const double *__restrict__ stats,
                   const float *__restrict__ x, const float *__restrict__ dy,
                   const float *__restrict__ mean, const float *__restrict__ rstd, bn_shape s) {
  __shared__ double shared[32];
  size_t ch = blockIdx.x % s.c, chunk = blockIdx.x / s.c;
  size_t first = chunk * s.per_chunk;
  size_t end = first + s.per_chunk < s.count ? first + s.per_chunk : s.count;
  double m = kind == BN_FORWARD ? stats[STAT_MEAN * s.c + ch] : 0.0;
  float mf = kind == BN_BACKWARD ? mean[ch] : 0.0f, rf = kind == BN_BACKWARD ? rstd[ch] : 0.0f;
  double sum_a = 0.0, sum_b = 0.0;
  size_t i = first + threadIdx.x, image = i / s.hw, pixel = i % s.hw;
  size_t step_images = blockDim.x / s.hw, step_pixels = blockDim.x % s.hw;
  /* QT_CUDA_UNROLL values' loads in flight (see qt_cuda_common.cuh),
   * then their terms added in order, as one at a time. */
  for (; i < end; i += QT_CUDA_UNROLL * (size_t)blockDim.x) {
    float xv[QT_CUDA_UNROLL], gv[QT_CUDA_UNROLL];
#pragma unroll
    for (int u = 0; u < QT_CUDA_UNROLL; u++) {
      bool in = i + (size_t)u * blockDim.x < end;
      size_t at = (image * s.c + ch) * s.hw + pixel;
      xv[u] = in ? x[at] : 0.0f;
      gv[u] = in && kind == BN_BACKWARD ? dy[at] : 0.0f;
      image += step_images;
      pixel += step_pixels;
      if (pixel >= s.hw) {
        pixel -= s.hw;
        image++;
      }
    }
#pragma unroll
    for (int u = 0; u < QT_CUDA_UNROLL; u++) {
      if (i + (size_t)u * blockDim.x >= end) break;
      if (kind == BN_MEAN) {
        sum_a += xv[u];
      } else if (kind == BN_FORWARD) {
        double d = xv[u] - m;
        sum_a += d * d;
      } else {
        sum_a += gv[u];
        sum_b += (double)gv[u] * __fmul_rn(xv[u] - mf, rf);
      }
    }
  }
  sum_a = qt__block_sum(sum_a, shared);
  if (kind == BN_BACKWARD) sum_b = qt__block_sum(sum_b, shared);
  if (threadIdx.x == 0) {
    partial[chunk * s.c + ch] = sum_a;
    if (kind == BN_BACKWARD) partial[(s.chunks + chunk) * s.c + ch] = sum_b;
  }
}

/* What the channel kernel needs besides the sums. */
typedef struct bn_channel_args {
  /* BN_FORWARD */
  float *mean, *rstd, *running_mean, *running_var;
  const unsigned char *select; /* StochNorm; NULL for batch norm */
  float eps, momentum;
  int train; /* batch norm: TRAIN mode */
  /* BN_BACKWARD */
  float *dweight, *dbias;
  int learn_affine;
} bn_channel_args;

/* One thread per channel: the chunks' sums added in chunk order, then:
 *   BN_MEAN      stats[MEAN] = sum / count;
 *   BN_FORWARD   the running statistics read, then updated (every channel
 *                for StochNorm, TRAIN mode for batch norm; count 1 leaves
 *                the variance), and mean / rstd set from the batch
 *                statistics where they normalize (TRAIN, select[ch]), else
 *                from the running ones as they were;
 *   BN_BACKWARD  the affine gradients added (learn_affine), and stats[A],
 *                stats[B] = the means of dy and dy * xhat as floats (what
 *                TRAIN's input gradient uses).
 * Without sums (EVAL or FROZEN forward: chunks 0) BN_FORWARD only sets
 * mean / rstd from the running statistics. */
template <int kind>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    bn_channel_kernel(double *__restrict__ stats, const double *__restrict__ partial, bn_shape s,
                      bn_channel_args a) {
  size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t ch = (size_t)blockIdx.x * blockDim.x + threadIdx.x; ch < s.c; ch += stride) {
    double sum_a = 0.0, sum_b = 0.0;
    for (size_t r = 0; r < s.chunks; r++) {
      sum_a += partial[r * s.c + ch];
      if (kind == BN_BACKWARD) sum_b += partial[(s.chunks + r) * s.c + ch];
    }
    double count = (double)s.count;
    if (kind == BN_MEAN) {
      stats[STAT_MEAN * s.c + ch] = sum_a / count;
    } else if (kind == BN_FORWARD) {
      double m = a.running_mean[ch], var = a.running_var[ch];
      int update = a.train || a.select;
      int use_batch = a.select ? a.select[ch] != 0 : a.train;
      if (update) {
        double batch_mean = stats[STAT_MEAN * s.c + ch];
        if (use_batch) {
          m = batch_mean;
          var = sum_a / count;
        }
        /* PyTorch's update with the unbiased variance. */
        double mom = (double)a.momentum;
        a.running_mean[ch] = (float)((1.0 - mom) * a.running_mean[ch] + mom * batch_mean);
        if (s.count > 1) {
          double unbiased = sum_a / (count - 1.0);
          a.running_var[ch] = (float)((1.0 - mom) * a.running_var[ch] + mom * unbiased);
        }
      }
      a.mean[ch] = (float)m;
      a.rstd[ch] = (float)(1.0 / sqrt(var + (double)a.eps));
    } else {
      if (a.learn_affine) {
        if (a.dweight) a.dweight[ch] += (float)sum_b;
        if (a.dbias) a.dbias[ch] += (float)sum_a;
      }
      stats[STAT_A * s.c + ch] = (float)(sum_a / count);
      stats[STAT_B * s.c + ch] = (float)(sum_b / count);
    }
  }
}

/* What an output element reads: x, and its channel's mean, rstd * weight
 * and bias. The elementwise kernels read their channel's values in
 * qt__elementwise's loads, not in its stores: there each would wait for
 * the store before it (the compiler cannot tell the arrays apart). */
struct bn_norm_in {
  float x, mean, scale, bias;
};

/* out = (x - mean) * (rstd * weight) + bias, elementwise. The index
 * arithmetic in I: unsigned where qt__cuda_int_indices allows (the
 * channel of each element takes a division), else size_t. */
template <typename I>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    bn_normalize_kernel(float *__restrict__ out, const float *__restrict__ x,
                        const float *__restrict__ mean, const float *__restrict__ rstd,
                        const float *__restrict__ weight, const float *__restrict__ bias,
                        bn_shape s) {
  I hw = (I)s.hw, c = (I)s.c, total = (I)(s.batch * s.c * s.hw);
  qt__elementwise(
      total, blockIdx.x, gridDim.x, threadIdx.x, blockDim.x,
      [=](I at) {
        I ch = at / hw % c;
        return bn_norm_in{x[at], mean[ch], __fmul_rn(rstd[ch], weight ? weight[ch] : 1.0f),
                          bias ? bias[ch] : 0.0f};
      },
      [=](I at, bn_norm_in v) { out[at] = __fadd_rn(__fmul_rn(v.x - v.mean, v.scale), v.bias); });
}

/* What an element of the input gradient reads: x, dy, dinp's old value (0
 * with `set`), and its channel's rstd, weight * rstd, whether it went
 * through the batch statistics, and if so its mean and the means of dy and
 * dy * xhat. */
struct bn_grad_in {
  float x, dy, old, r, wr, mean, dy_mean, dy_xhat_mean;
  int batch;
};

/* dinp += the input gradient (set: dinp = 0 + it), elementwise: through
 * the batch statistics where they normalized (train, or select[ch] for
 * StochNorm), as the CPU's ((w r) ((dy - dy_mean) - xhat dy_xhat_mean)),
 * else w r dy. */
template <typename I, bool set>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    bn_input_grad_kernel(float *__restrict__ dinp, const float *__restrict__ dy,
                         const float *__restrict__ x, const float *__restrict__ weight,
                         const float *__restrict__ mean, const float *__restrict__ rstd,
                         const double *__restrict__ stats, const unsigned char *__restrict__ select,
                         int train, bn_shape s) {
  I hw = (I)s.hw, c = (I)s.c, total = (I)(s.batch * s.c * s.hw);
  qt__elementwise(
      total, blockIdx.x, gridDim.x, threadIdx.x, blockDim.x,
      [=](I at) {
        I ch = at / hw % c;
        bn_grad_in v = {x[at], dy[at], set ? 0.0f : dinp[at]};
        v.r = rstd[ch];
        v.wr = __fmul_rn(weight ? weight[ch] : 1.0f, v.r);
        v.batch = select ? select[ch] != 0 : train;
        if (v.batch) {
          v.mean = mean[ch];
          v.dy_mean = (float)stats[STAT_A * s.c + ch];
          v.dy_xhat_mean = (float)stats[STAT_B * s.c + ch];
        }
        return v;
      },
      [=](I at, bn_grad_in v) {
        if (v.batch) {
          float xhat = __fmul_rn(v.x - v.mean, v.r);
          float inner = (v.dy - v.dy_mean) - __fmul_rn(xhat, v.dy_xhat_mean);
          dinp[at] = __fadd_rn(v.old, __fmul_rn(v.wr, inner));
        } else {
          dinp[at] = __fadd_rn(v.old, __fmul_rn(v.wr, v.dy));
        }
      });
}

/* The chunking of (batch, c, hw): chunks of about BN_CHUNK values, as many
 * per channel as BN_MAX_BLOCKS blocks allow (at least one). */
static bn_shape bn_plan(size_t batch, size_t c, size_t hw) {
  bn_shape s = {batch, c, hw, batch * hw, 1, batch * hw};
  size_t chunks = (s.count + BN_CHUNK - 1) / BN_CHUNK, most = BN_MAX_BLOCKS / c;
  if (chunks > most) chunks = most;
  if (chunks < 1) chunks = 1;
  s.per_chunk = (s.count + chunks - 1) / chunks;
  s.chunks = (s.count + s.per_chunk - 1) / s.per_chunk; /* none empty */
  return s;
}

/* The forward of batch norm (select NULL; train: TRAIN mode) or StochNorm
 * (select set, train 1). */
static int bn_forward(float *out, float *mean, float *rstd, float *running_mean, float *running_var,
                      const float *inp, const float *weight, const float *bias,
                      const unsigned char *select, size_t batch, size_t c, size_t hw, float eps,
                      float momentum, int train, const char *who, qt_err *err) {
  bn_shape s = bn_plan(batch, c, hw);
  double *scratch = NULL;
  int rc = qt__cuda_sums_scratch_lock((s.chunks * 2 + STATS) * c, &scratch, who, err);
  if (rc < 0) return rc;
  double *partial = scratch, *stats = scratch + s.chunks * 2 * c;
  bn_channel_args a = {mean,     rstd,  running_mean, running_var, select, eps,
                       momentum, train, NULL,         NULL,        0};
  unsigned blocks = (unsigned)(s.chunks * c), channel_blocks = qt__cuda_blocks(c);
  if (train || select) {
    bn_sums_kernel<BN_MEAN><<<blocks, QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(partial, stats, inp,
                                                                               NULL, NULL, NULL, s);
    rc = qt__cuda_check_launch(err, who, "the batch sums");
    if (rc == 0) {
      bn_channel_kernel<BN_MEAN>
          <<<channel_blocks, QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(stats, partial, s, a);
      rc = qt__cuda_check_launch(err, who, "the batch means");
    }
    if (rc == 0) {
      bn_sums_kernel<BN_FORWARD><<<blocks, QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
          partial, stats, inp, NULL, NULL, NULL, s);
      rc = qt__cuda_check_launch(err, who, "the batch sums of squares");
    }
  } else {
    s.chunks = 0; /* the running statistics only */
  }
  if (rc == 0) {
    bn_channel_kernel<BN_FORWARD>
        <<<channel_blocks, QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(stats, partial, s, a);
    rc = qt__cuda_check_launch(err, who, "the statistics");
  }
  if (rc == 0) {
    size_t n = batch * c * hw;
    if (qt__cuda_int_indices(n))
      bn_normalize_kernel<unsigned>
          <<<qt__cuda_elementwise_blocks(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
              out, inp, mean, rstd, weight, bias, s);
    else
      bn_normalize_kernel<size_t>
          <<<qt__cuda_elementwise_blocks(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
              out, inp, mean, rstd, weight, bias, s);
    rc = qt__cuda_check_launch(err, who, "the normalization");
  }
  qt__cuda_sums_scratch_unlock();
  return rc;
}

/* The input gradient's launch, in the index type the size allows. */
template <bool set>
static void bn_input_grad(float *dinp, const float *dy, const float *x, const float *weight,
                          const float *mean, const float *rstd, const double *stats,
                          const unsigned char *select, int train, bn_shape s) {
  size_t n = s.batch * s.c * s.hw;
  if (qt__cuda_int_indices(n))
    bn_input_grad_kernel<unsigned, set>
        <<<qt__cuda_elementwise_blocks(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
            dinp, dy, x, weight, mean, rstd, stats, select, train, s);
  else
    bn_input_grad_kernel<size_t, set>
        <<<qt__cuda_elementwise_blocks(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
            dinp, dy, x, weight, mean, rstd, stats, select, train, s);
}

/* The backward of batch norm (select NULL; train: TRAIN mode) or StochNorm
 * (select set: train per channel); set: dinp written, not added to. */
static int bn_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                       const float *inp, const float *weight, const float *mean, const float *rstd,
                       const unsigned char *select, size_t batch, size_t c, size_t hw, int train,
                       int learn_affine, int set, const char *who, qt_err *err) {
  /* The sums are needed for the affine gradients and for TRAIN's input
   * gradient only. */
  int need_sums = (learn_affine && (dweight || dbias)) || ((train || select) && dinp);
  bn_shape s = bn_plan(batch, c, hw);
  double *scratch = NULL;
  int rc = qt__cuda_sums_scratch_lock((s.chunks * 2 + STATS) * c, &scratch, who, err);
  if (rc < 0) return rc;
  double *partial = scratch, *stats = scratch + s.chunks * 2 * c;
  bn_channel_args a = {NULL, NULL, NULL, NULL, NULL, 0.0f, 0.0f, 0, dweight, dbias, learn_affine};
  if (need_sums) {
    bn_sums_kernel<BN_BACKWARD>
        <<<(unsigned)(s.chunks * c), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(partial, stats, inp,
                                                                              dout, mean, rstd, s);
    rc = qt__cuda_check_launch(err, who, "the gradient sums");
    if (rc == 0) {
      bn_channel_kernel<BN_BACKWARD>
          <<<qt__cuda_blocks(c), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(stats, partial, s, a);
      rc = qt__cuda_check_launch(err, who, "the affine gradients");
    }
  }
  if (rc == 0 && dinp) {
    if (set)
      bn_input_grad<true>(dinp, dout, inp, weight, mean, rstd, stats, select, train, s);
    else
      bn_input_grad<false>(dinp, dout, inp, weight, mean, rstd, stats, select, train, s);
    rc = qt__cuda_check_launch(err, who, "the input gradient");
  }
  qt__cuda_sums_scratch_unlock();
  return rc;
}

static int check_mode(qt_batchnorm_mode mode, const char *who, qt_err *err) {
  if (mode != QT_BATCHNORM_MODE_TRAIN && mode != QT_BATCHNORM_MODE_EVAL &&
      mode != QT_BATCHNORM_MODE_FROZEN) {
    return qt_err_set(err, QT_EINVAL, "%s: unknown batch norm mode %d", who, (int)mode);
  }
  return 0;
}

extern "C" int qt_cuda_batchnorm_forward(float *out, float *mean, float *rstd, float *running_mean,
                                         float *running_var, const float *inp, const float *weight,
                                         const float *bias, size_t batch, size_t c, size_t hw,
                                         float eps, float momentum, qt_batchnorm_mode mode,
                                         qt_err *err) {
  const char *who = "qt_cuda_batchnorm_forward";
  int rc = check_mode(mode, who, err);
  if (rc < 0) return rc;
  if (c > INT_MAX) return qt_err_set(err, QT_EINVAL, "%s: %zu channels do not fit an int", who, c);
  if (c == 0) return 0;
  if (batch == 0 || hw == 0) {
    return qt_err_set(err, QT_EINVAL, "%s: empty batch (batch %zu, hw %zu)", who, batch, hw);
  }
  if (!out || !mean || !rstd || !running_mean || !running_var || !inp) {
    return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  }
  return bn_forward(out, mean, rstd, running_mean, running_var, inp, weight, bias, NULL, batch, c,
                    hw, eps, momentum, mode == QT_BATCHNORM_MODE_TRAIN, who, err);
}

extern "C" int qt__cuda_batchnorm_backward(float *dinp, float *dweight, float *dbias,
                                           const float *dout, const float *inp, const float *weight,
                                           const float *mean, const float *rstd, size_t batch,
                                           size_t c, size_t hw, qt_batchnorm_mode mode, int set,
                                           qt_err *err) {
  const char *who = "qt_cuda_batchnorm_backward";
  int rc = check_mode(mode, who, err);
  if (rc < 0) return rc;
  if (c > INT_MAX) return qt_err_set(err, QT_EINVAL, "%s: %zu channels do not fit an int", who, c);
  if (c == 0 || batch == 0 || hw == 0) return 0;
  if (!dout || !inp || !mean || !rstd) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  int learn_affine = mode != QT_BATCHNORM_MODE_FROZEN;
  if (!dinp && !(learn_affine && (dweight || dbias))) return 0;
  return bn_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, NULL, batch, c, hw,
                     mode == QT_BATCHNORM_MODE_TRAIN, learn_affine, set, who, err);
}

extern "C" int qt_cuda_batchnorm_backward(float *dinp, float *dweight, float *dbias,
                                          const float *dout, const float *inp, const float *weight,
                                          const float *mean, const float *rstd, size_t batch,
                                          size_t c, size_t hw, qt_batchnorm_mode mode,
                                          qt_err *err) {
  return qt__cuda_batchnorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, batch, c,
                                     hw, mode, 0, err);
}

/* ------------------------------------------------------------------------- */
/* StochNorm (cpu/qt_cpu_stochnorm.c)                                         */
/* ------------------------------------------------------------------------- */

extern "C" int qt_cuda_stochnorm_forward(float *out, float *mean, float *rstd, float *running_mean,
                                         float *running_var, const float *inp, const float *weight,
                                         const float *bias, const unsigned char *select,
                                         size_t batch, size_t c, size_t hw, float eps,
                                         float momentum, qt_err *err) {
  const char *who = "qt_cuda_stochnorm_forward";
  if (c > INT_MAX) return qt_err_set(err, QT_EINVAL, "%s: %zu channels do not fit an int", who, c);
  if (c == 0) return 0;
  if (batch == 0 || hw == 0) {
    return qt_err_set(err, QT_EINVAL, "%s: empty batch (batch %zu, hw %zu)", who, batch, hw);
  }
  if (!out || !mean || !rstd || !running_mean || !running_var || !inp || !select) {
    return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  }
  return bn_forward(out, mean, rstd, running_mean, running_var, inp, weight, bias, select, batch, c,
                    hw, eps, momentum, 1, who, err);
}

extern "C" int qt__cuda_stochnorm_backward(float *dinp, float *dweight, float *dbias,
                                           const float *dout, const float *inp, const float *weight,
                                           const float *mean, const float *rstd,
                                           const unsigned char *select, size_t batch, size_t c,
                                           size_t hw, int set, qt_err *err) {
  const char *who = "qt_cuda_stochnorm_backward";
  if (c > INT_MAX) return qt_err_set(err, QT_EINVAL, "%s: %zu channels do not fit an int", who, c);
  if (c == 0 || batch == 0 || hw == 0) return 0;
  if (!dout || !inp || !mean || !rstd || !select) {
    return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  }
  if (!dinp && !dweight && !dbias) return 0;
  return bn_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, select, batch, c, hw, 1,
                     1, set, who, err);
}

extern "C" int qt_cuda_stochnorm_backward(float *dinp, float *dweight, float *dbias,
                                          const float *dout, const float *inp, const float *weight,
                                          const float *mean, const float *rstd,
                                          const unsigned char *select, size_t batch, size_t c,
                                          size_t hw, qt_err *err) {
  return qt__cuda_stochnorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, select,
                                     batch, c, hw, 0, err);
}

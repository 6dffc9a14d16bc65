/*
 * qt_cuda_batchnorm.cu - batch norm over the channels of NCHW images on a
 * CUDA device, the twin of cpu/qt_cpu_batchnorm.c (train, eval and frozen
 * modes) and of cpu/qt_cpu_stochnorm.c (a per-channel choice between the
 * two, sharing the kernels). One block per channel: in TRAIN mode the batch statistics are
 * reduced in double in two passes (mean, then the biased variance around
 * it) and the running statistics updated with PyTorch's rule in double, as
 * on the CPU; the output, and the backward's input gradient, use the CPU's
 * float operations in its order (__fmul_rn / __fadd_rn, no FMA
 * contraction). The backward's two sums per channel are reduced in double.
 * See qt_finetune.h.
 *
 * One block per channel keeps each channel's reduction in one place; with
 * few channels and large images (a stem's 32 channels of 112 x 112 pixels)
 * the grid is small, which is correctness first, not speed.
 */
#include <limits.h>
#include <math.h>

#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/cuda/qt_cuda_internal.h"

/* One block per channel. train: the batch statistics normalize and the
 * running ones update (TRAIN mode). select (StochNorm; NULL for batch norm):
 * the batch statistics are computed and the running ones updated for every
 * channel, and select[ch] picks which of them normalize (the running ones
 * as they were before this step's update). */
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    batchnorm_forward_kernel(float *__restrict__ out, float *__restrict__ mean,
                             float *__restrict__ rstd, float *__restrict__ running_mean,
                             float *__restrict__ running_var, const float *__restrict__ inp,
                             const float *__restrict__ weight, const float *__restrict__ bias,
                             const unsigned char *__restrict__ select, size_t batch, size_t c,
                             size_t hw, float eps, float momentum, int train) {
  __shared__ double shared[32];
  size_t ch = blockIdx.x, count = batch * hw;
  /* Every thread reads the running statistics here, before the block sums
   * below synchronize the block and thread 0 updates them. */
  double m = running_mean[ch], var = running_var[ch];
  int update = train || select;
  int use_batch = select ? select[ch] != 0 : train;
  if (update) {
    double sum = 0.0;
    for (size_t i = threadIdx.x; i < count; i += blockDim.x) {
      sum += inp[((i / hw) * c + ch) * hw + i % hw];
    }
    double batch_mean = qt__block_sum(sum, shared) / (double)count;
    double sq = 0.0;
    for (size_t i = threadIdx.x; i < count; i += blockDim.x) {
      double d = inp[((i / hw) * c + ch) * hw + i % hw] - batch_mean;
      sq += d * d;
    }
    sq = qt__block_sum(sq, shared);
    if (use_batch) {
      m = batch_mean;
      var = sq / (double)count;
    }
    /* PyTorch's update with the unbiased variance; count 1 leaves the
     * variance as it was. */
    if (threadIdx.x == 0) {
      double mom = (double)momentum;
      running_mean[ch] = (float)((1.0 - mom) * running_mean[ch] + mom * batch_mean);
      if (count > 1) {
        double unbiased = sq / (double)(count - 1);
        running_var[ch] = (float)((1.0 - mom) * running_var[ch] + mom * unbiased);
      }
    }
  }
  float mf = (float)m, rf = (float)(1.0 / sqrt(var + (double)eps));
  if (threadIdx.x == 0) {
    mean[ch] = mf;
    rstd[ch] = rf;
  }
  float scale = __fmul_rn(rf, weight ? weight[ch] : 1.0f);
  float shift = bias ? bias[ch] : 0.0f;
  for (size_t i = threadIdx.x; i < count; i += blockDim.x) {
    size_t at = ((i / hw) * c + ch) * hw + i % hw;
    out[at] = __fadd_rn(__fmul_rn(inp[at] - mf, scale), shift);
  }
}

/* One block per channel: the affine gradients (learn_affine) and the input
 * gradient, through the batch statistics (train) or with the statistics as
 * constants. select (StochNorm; NULL for batch norm) sets train per
 * channel. */
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    batchnorm_backward_kernel(float *__restrict__ dinp, float *__restrict__ dweight,
                              float *__restrict__ dbias, const float *__restrict__ dout,
                              const float *__restrict__ inp, const float *__restrict__ weight,
                              const float *__restrict__ mean, const float *__restrict__ rstd,
                              const unsigned char *__restrict__ select, size_t batch, size_t c,
                              size_t hw, int train, int learn_affine) {
  __shared__ double shared[32];
  size_t ch = blockIdx.x, count = batch * hw;
  /* StochNorm: select[ch] says whether the batch statistics normalized. */
  if (select) train = select[ch] != 0;
  float m = mean[ch], r = rstd[ch], w = weight ? weight[ch] : 1.0f;
  double dy_sum = 0.0, dy_xhat_sum = 0.0;
  /* The sums are needed for the affine gradients and for TRAIN's input
   * gradient only. */
  int need_sums = (learn_affine && (dweight || dbias)) || (train && dinp);
  if (need_sums) {
    for (size_t i = threadIdx.x; i < count; i += blockDim.x) {
      size_t at = ((i / hw) * c + ch) * hw + i % hw;
      float dy = dout[at];
      dy_sum += dy;
      dy_xhat_sum += (double)dy * __fmul_rn(inp[at] - m, r);
    }
    dy_sum = qt__block_sum(dy_sum, shared);
    dy_xhat_sum = qt__block_sum(dy_xhat_sum, shared);
  }
  if (threadIdx.x == 0 && learn_affine) {
    if (dweight) dweight[ch] += (float)dy_xhat_sum;
    if (dbias) dbias[ch] += (float)dy_sum;
  }
  if (!dinp) return;
  if (train) {
    /* dx = w rstd (dy - mean(dy) - xhat mean(dy xhat)), evaluated as the
     * CPU's ((w r) ((dy - dy_mean) - xhat dy_xhat_mean)). */
    float dy_mean = (float)(dy_sum / (double)count);
    float dy_xhat_mean = (float)(dy_xhat_sum / (double)count);
    float wr = __fmul_rn(w, r);
    for (size_t i = threadIdx.x; i < count; i += blockDim.x) {
      size_t at = ((i / hw) * c + ch) * hw + i % hw;
      float xhat = __fmul_rn(inp[at] - m, r);
      float inner = (dout[at] - dy_mean) - __fmul_rn(xhat, dy_xhat_mean);
      dinp[at] = __fadd_rn(dinp[at], __fmul_rn(wr, inner));
    }
  } else {
    float scale = __fmul_rn(w, r);
    for (size_t i = threadIdx.x; i < count; i += blockDim.x) {
      size_t at = ((i / hw) * c + ch) * hw + i % hw;
      dinp[at] = __fadd_rn(dinp[at], __fmul_rn(scale, dout[at]));
    }
  }
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
  batchnorm_forward_kernel<<<(unsigned)c, QT_CUDA_THREADS>>>(
      out, mean, rstd, running_mean, running_var, inp, weight, bias, NULL, batch, c, hw, eps,
      momentum, mode == QT_BATCHNORM_MODE_TRAIN);
  return qt__cuda_check_launch(err, who, "the batch norm kernel");
}

extern "C" int qt_cuda_batchnorm_backward(float *dinp, float *dweight, float *dbias,
                                          const float *dout, const float *inp, const float *weight,
                                          const float *mean, const float *rstd, size_t batch,
                                          size_t c, size_t hw, qt_batchnorm_mode mode,
                                          qt_err *err) {
  const char *who = "qt_cuda_batchnorm_backward";
  int rc = check_mode(mode, who, err);
  if (rc < 0) return rc;
  if (c > INT_MAX) return qt_err_set(err, QT_EINVAL, "%s: %zu channels do not fit an int", who, c);
  if (c == 0 || batch == 0 || hw == 0) return 0;
  if (!dout || !inp || !mean || !rstd) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  int learn_affine = mode != QT_BATCHNORM_MODE_FROZEN;
  if (!dinp && !(learn_affine && (dweight || dbias))) return 0;
  batchnorm_backward_kernel<<<(unsigned)c, QT_CUDA_THREADS>>>(
      dinp, dweight, dbias, dout, inp, weight, mean, rstd, NULL, batch, c, hw,
      mode == QT_BATCHNORM_MODE_TRAIN, learn_affine);
  return qt__cuda_check_launch(err, who, "the batch norm backward kernel");
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
  batchnorm_forward_kernel<<<(unsigned)c, QT_CUDA_THREADS>>>(out, mean, rstd, running_mean,
                                                             running_var, inp, weight, bias, select,
                                                             batch, c, hw, eps, momentum, 1);
  return qt__cuda_check_launch(err, who, "the StochNorm kernel");
}

extern "C" int qt_cuda_stochnorm_backward(float *dinp, float *dweight, float *dbias,
                                          const float *dout, const float *inp, const float *weight,
                                          const float *mean, const float *rstd,
                                          const unsigned char *select, size_t batch, size_t c,
                                          size_t hw, qt_err *err) {
  const char *who = "qt_cuda_stochnorm_backward";
  if (c > INT_MAX) return qt_err_set(err, QT_EINVAL, "%s: %zu channels do not fit an int", who, c);
  if (c == 0 || batch == 0 || hw == 0) return 0;
  if (!dout || !inp || !mean || !rstd || !select) {
    return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  }
  if (!dinp && !dweight && !dbias) return 0;
  batchnorm_backward_kernel<<<(unsigned)c, QT_CUDA_THREADS>>>(
      dinp, dweight, dbias, dout, inp, weight, mean, rstd, select, batch, c, hw, 1, 1);
  return qt__cuda_check_launch(err, who, "the StochNorm backward kernel");
}

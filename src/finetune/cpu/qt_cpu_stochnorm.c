/*
 * qt_cpu_stochnorm.c - StochNorm's batch norm (Kou et al. 2020, Quick-Tune's
 * convert_to_stoch_norm) over the channels of NCHW images on the CPU: per
 * channel, a select flag picks the batch statistics (as TRAIN) or the
 * running ones (as EVAL), and the running statistics update as in TRAIN
 * either way. See qt_finetune.h and specs/algorithms.md section 6.
 *
 * The numerics are those of qt_cpu_batchnorm.c line for line (two-pass
 * double statistics, the same float expressions), so that a select of all
 * ones equals qt_cpu_batchnorm_* in TRAIN mode and all zeros equals EVAL
 * bit for bit; the tests check both.
 */
#include <math.h>

#include "finetune/qt_finetune.h"

void qt_cpu_stochnorm_forward(float *out, float *mean, float *rstd, float *running_mean,
                              float *running_var, const float *inp, const float *weight,
                              const float *bias, const unsigned char *select, size_t batch,
                              size_t c, size_t hw, float eps, float momentum) {
  size_t count = batch * hw;
  for (size_t ch = 0; ch < c; ch++) {
    /* The batch statistics are needed either way, for the running update:
     * two passes in double, mean, then the biased variance around it. */
    double sum = 0.0;
    for (size_t b = 0; b < batch; b++) {
      const float *x = inp + (b * c + ch) * hw;
      for (size_t p = 0; p < hw; p++) sum += x[p];
    }
    double batch_mean = sum / (double)count;
    double sq = 0.0;
    for (size_t b = 0; b < batch; b++) {
      const float *x = inp + (b * c + ch) * hw;
      for (size_t p = 0; p < hw; p++) {
        double d = x[p] - batch_mean;
        sq += d * d;
      }
    }
    double m, var;
    if (select[ch]) {
      m = batch_mean;
      var = sq / (double)count;
    } else {
      /* Quick-Tune's _StochNorm computes the running-statistics branch
       * first, so it normalizes with the values from before this step's
       * update. */
      m = running_mean[ch];
      var = running_var[ch];
    }
    /* PyTorch's update, unbiased variance; count 1 leaves the variance. */
    running_mean[ch] = (float)((1.0 - momentum) * running_mean[ch] + momentum * batch_mean);
    if (count > 1) {
      double unbiased = sq / (double)(count - 1);
      running_var[ch] = (float)((1.0 - momentum) * running_var[ch] + momentum * unbiased);
    }
    float mf = (float)m, rf = (float)(1.0 / sqrt(var + (double)eps));
    mean[ch] = mf;
    rstd[ch] = rf;
    float scale = rf * (weight ? weight[ch] : 1.0f);
    float shift = bias ? bias[ch] : 0.0f;
    for (size_t b = 0; b < batch; b++) {
      const float *x = inp + (b * c + ch) * hw;
      float *y = out + (b * c + ch) * hw;
      for (size_t p = 0; p < hw; p++) y[p] = (x[p] - mf) * scale + shift;
    }
  }
}

void qt_cpu_stochnorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, const float *mean,
                               const float *rstd, const unsigned char *select, size_t batch,
                               size_t c, size_t hw) {
  size_t count = batch * hw;
  for (size_t ch = 0; ch < c; ch++) {
    float m = mean[ch], r = rstd[ch], w = weight ? weight[ch] : 1.0f;
    double dy_sum = 0.0, dy_xhat_sum = 0.0;
    for (size_t b = 0; b < batch; b++) {
      const float *x = inp + (b * c + ch) * hw;
      const float *dy = dout + (b * c + ch) * hw;
      for (size_t p = 0; p < hw; p++) {
        dy_sum += dy[p];
        dy_xhat_sum += (double)dy[p] * ((x[p] - m) * r);
      }
    }
    /* The affine parameters learn on both branches. */
    if (dweight) dweight[ch] += (float)dy_xhat_sum;
    if (dbias) dbias[ch] += (float)dy_sum;
    if (!dinp) continue;
    if (select[ch]) {
      /* Batch statistics: dx = w rstd (dy - mean(dy) - xhat mean(dy xhat)). */
      float dy_mean = (float)(dy_sum / (double)count);
      float dy_xhat_mean = (float)(dy_xhat_sum / (double)count);
      for (size_t b = 0; b < batch; b++) {
        const float *x = inp + (b * c + ch) * hw;
        const float *dy = dout + (b * c + ch) * hw;
        float *dx = dinp + (b * c + ch) * hw;
        for (size_t p = 0; p < hw; p++) {
          float xhat = (x[p] - m) * r;
          dx[p] += w * r * (dy[p] - dy_mean - xhat * dy_xhat_mean);
        }
      }
    } else {
      /* Running statistics are constants: an affine map per channel. */
      float scale = w * r;
      for (size_t b = 0; b < batch; b++) {
        const float *dy = dout + (b * c + ch) * hw;
        float *dx = dinp + (b * c + ch) * hw;
        for (size_t p = 0; p < hw; p++) dx[p] += scale * dy[p];
      }
    }
  }
}

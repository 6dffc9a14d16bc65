/*
 * qt_cpu_batchnorm.c - batch norm over the channels of NCHW images
 * (torch.nn.BatchNorm2d) on the CPU: train statistics with PyTorch's
 * running-statistics update, eval mode and frozen mode. The channel sums
 * are in double, over every image's plane, in QT_SUM_LANES parts
 * (qt_cpu_sums.h). Channels go to the worker threads (qt_cpu_parallel.h):
 * each channel's sums, statistics and planes are its own. See
 * qt_finetune.h.
 */
#include <math.h>

#include "finetune/cpu/qt_cpu_parallel.h"
#include "finetune/cpu/qt_cpu_sums.h"
#include "finetune/qt_finetune.h"

typedef struct batchnorm_job {
  float *out, *mean, *rstd, *running_mean, *running_var; /* forward */
  float *dinp, *dweight, *dbias;                         /* backward */
  const float *inp, *dout, *weight, *bias;               /* dout: backward only */
  const float *saved_mean, *saved_rstd;                  /* backward: the forward's */
  size_t batch, c, hw;
  float eps, momentum;
  qt_batchnorm_mode mode;
} batchnorm_job;

static void forward_channels(void *job, size_t begin, size_t end, void *scratch) {
  (void)scratch;
  const batchnorm_job *J = job;
  float *out = J->out, *mean = J->mean, *rstd = J->rstd;
  float *running_mean = J->running_mean, *running_var = J->running_var;
  const float *inp = J->inp, *weight = J->weight, *bias = J->bias;
  size_t batch = J->batch, c = J->c, hw = J->hw, count = batch * hw;
  float eps = J->eps, momentum = J->momentum;
  qt_batchnorm_mode mode = J->mode;
  for (size_t ch = begin; ch < end; ch++) {
    double m, var;
    if (mode == QT_BATCHNORM_MODE_TRAIN) {
      /* Two passes in double, as the layer norm: mean, then the biased
       * variance around it. */
      double sum = 0.0;
      for (size_t b = 0; b < batch; b++) sum += qt__sum(inp + (b * c + ch) * hw, hw);
      m = sum / (double)count;
      double sq = 0.0;
      for (size_t b = 0; b < batch; b++) sq += qt__squares(inp + (b * c + ch) * hw, hw, m);
      var = sq / (double)count;
      /* PyTorch updates the running variance with the unbiased estimate. */
      running_mean[ch] = (float)((1.0 - momentum) * running_mean[ch] + momentum * m);
      if (count > 1) {
        double unbiased = sq / (double)(count - 1);
        running_var[ch] = (float)((1.0 - momentum) * running_var[ch] + momentum * unbiased);
      }
    } else {
      m = running_mean[ch];
      var = running_var[ch];
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

void qt_cpu_batchnorm_forward(float *out, float *mean, float *rstd, float *running_mean,
                              float *running_var, const float *inp, const float *weight,
                              const float *bias, size_t batch, size_t c, size_t hw, float eps,
                              float momentum, qt_batchnorm_mode mode) {
  batchnorm_job job = {.out = out,
                       .mean = mean,
                       .rstd = rstd,
                       .running_mean = running_mean,
                       .running_var = running_var,
                       .inp = inp,
                       .weight = weight,
                       .bias = bias,
                       .batch = batch,
                       .c = c,
                       .hw = hw,
                       .eps = eps,
                       .momentum = momentum,
                       .mode = mode};
  qt__cpu_parallel_for(c, qt__cpu_items_grain(batch * hw), 0, 0, forward_channels, &job);
}

static void backward_channels(void *job, size_t begin, size_t end, void *scratch) {
  (void)scratch;
  const batchnorm_job *J = job;
  float *dinp = J->dinp, *dweight = J->dweight, *dbias = J->dbias;
  const float *dout = J->dout, *inp = J->inp, *weight = J->weight;
  const float *mean = J->saved_mean, *rstd = J->saved_rstd;
  size_t batch = J->batch, c = J->c, hw = J->hw, count = batch * hw;
  qt_batchnorm_mode mode = J->mode;
  for (size_t ch = begin; ch < end; ch++) {
    float m = mean[ch], r = rstd[ch], w = weight ? weight[ch] : 1.0f;
    double dy_sum = 0.0, dy_xhat_sum = 0.0;
    for (size_t b = 0; b < batch; b++)
      qt__add_gradient_sums(inp + (b * c + ch) * hw, dout + (b * c + ch) * hw, NULL, hw, m, r,
                            &dy_sum, &dy_xhat_sum);
    if (mode != QT_BATCHNORM_MODE_FROZEN) {
      if (dweight) dweight[ch] += (float)dy_xhat_sum;
      if (dbias) dbias[ch] += (float)dy_sum;
    }
    if (!dinp) continue;
    if (mode == QT_BATCHNORM_MODE_TRAIN) {
      /* With xhat = (x - mean) rstd over the batch statistics:
       * dx = w rstd (dy - mean(dy) - xhat mean(dy xhat)). */
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
      /* The running statistics are constants: an affine map per channel. */
      float scale = w * r;
      for (size_t b = 0; b < batch; b++) {
        const float *dy = dout + (b * c + ch) * hw;
        float *dx = dinp + (b * c + ch) * hw;
        for (size_t p = 0; p < hw; p++) dx[p] += scale * dy[p];
      }
    }
  }
}

void qt_cpu_batchnorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, const float *mean,
                               const float *rstd, size_t batch, size_t c, size_t hw,
                               qt_batchnorm_mode mode) {
  batchnorm_job job = {.dinp = dinp,
                       .dweight = dweight,
                       .dbias = dbias,
                       .inp = inp,
                       .dout = dout,
                       .weight = weight,
                       .saved_mean = mean,
                       .saved_rstd = rstd,
                       .batch = batch,
                       .c = c,
                       .hw = hw,
                       .mode = mode};
  qt__cpu_parallel_for(c, qt__cpu_items_grain(batch * hw), 0, 0, backward_channels, &job);
}

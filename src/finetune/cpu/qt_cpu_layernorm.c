/*
 * qt_cpu_layernorm.c - layer norm over the features of each row
 * (torch.nn.LayerNorm), forward and backward. See qt_finetune.h.
 */
#include <math.h>

#include "finetune/qt_finetune.h"

void qt_cpu_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                              const float *weight, const float *bias, size_t n, size_t c,
                              float eps) {
  for (size_t i = 0; i < n; i++) {
    const float *x = inp + i * c;
    float *y = out + i * c;
    /* Two passes in double: the mean first, then the biased variance
     * around it, so that large means do not cancel the variance. */
    double sum = 0.0;
    for (size_t j = 0; j < c; j++) sum += x[j];
    double m = sum / (double)c;
    double sq = 0.0;
    for (size_t j = 0; j < c; j++) {
      double d = x[j] - m;
      sq += d * d;
    }
    double r = 1.0 / sqrt(sq / (double)c + (double)eps);
    float mf = (float)m, rf = (float)r;
    for (size_t j = 0; j < c; j++) {
      float normalized = (x[j] - mf) * rf;
      y[j] = normalized * (weight ? weight[j] : 1.0f) + (bias ? bias[j] : 0.0f);
    }
    mean[i] = mf;
    rstd[i] = rf;
  }
}

void qt_cpu_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, const float *mean,
                               const float *rstd, size_t n, size_t c) {
  for (size_t i = 0; i < n; i++) {
    const float *x = inp + i * c;
    const float *dy = dout + i * c;
    float m = mean[i], r = rstd[i];
    /* With xhat = (x - mean) * rstd and g = weight * dy:
     * dx = rstd * (g - mean(g) - xhat * mean(g * xhat)). */
    double g_sum = 0.0, g_xhat_sum = 0.0;
    for (size_t j = 0; j < c; j++) {
      float xhat = (x[j] - m) * r;
      float g = (weight ? weight[j] : 1.0f) * dy[j];
      g_sum += g;
      g_xhat_sum += (double)g * xhat;
    }
    float g_mean = (float)(g_sum / (double)c);
    float g_xhat_mean = (float)(g_xhat_sum / (double)c);
    for (size_t j = 0; j < c; j++) {
      float xhat = (x[j] - m) * r;
      float g = (weight ? weight[j] : 1.0f) * dy[j];
      if (dinp) dinp[i * c + j] += (g - g_mean - xhat * g_xhat_mean) * r;
      if (dweight) dweight[j] += dy[j] * xhat;
      if (dbias) dbias[j] += dy[j];
    }
  }
}

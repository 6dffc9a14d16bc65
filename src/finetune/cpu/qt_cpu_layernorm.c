/*
 * qt_cpu_layernorm.c - layer norm over the features of each row
 * (torch.nn.LayerNorm), forward and backward. See qt_finetune.h.
 */
#include <math.h>

#include "finetune/cpu/qt_cpu_sums.h"
#include "finetune/cpu/qt_cpu_vmath.h"
#include "finetune/qt_finetune.h"

QT_VECTOR_CLONES void qt_cpu_layernorm_forward(float *out, float *mean, float *rstd,
                                               const float *inp, const float *weight,
                                               const float *bias, size_t n, size_t c, float eps) {
  for (size_t i = 0; i < n; i++) {
    const float *x = inp + i * c;
    float *y = out + i * c;
    /* Two passes in double: the mean first, then the biased variance
     * around it, so that large means do not cancel the variance. */
    double m = qt__sum(x, c) / (double)c;
    double sq = qt__squares(x, c, m);
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

QT_VECTOR_CLONES void qt_cpu_layernorm_backward(float *dinp, float *dweight, float *dbias,
                                                const float *dout, const float *inp,
                                                const float *weight, const float *mean,
                                                const float *rstd, size_t n, size_t c) {
  for (size_t i = 0; i < n; i++) {
    const float *x = inp + i * c;
    const float *dy = dout + i * c;
    float m = mean[i], r = rstd[i];
    /* With xhat = (x - mean) * rstd and g = weight * dy:
     * dx = rstd * (g - mean(g) - xhat * mean(g * xhat)). */
    double g_sum = 0.0, g_xhat_sum = 0.0;
    qt__add_gradient_sums(x, dy, weight, c, m, r, &g_sum, &g_xhat_sum);
    float g_mean = (float)(g_sum / (double)c);
    float g_xhat_mean = (float)(g_xhat_sum / (double)c);
    /* One loop a gradient, so that each is a vector loop. */
    if (dinp) {
      float *dx = dinp + i * c;
      for (size_t j = 0; j < c; j++) {
        float g = (weight ? weight[j] : 1.0f) * dy[j];
        dx[j] += (g - g_mean - (x[j] - m) * r * g_xhat_mean) * r;
      }
    }
    if (dweight)
      for (size_t j = 0; j < c; j++) dweight[j] += dy[j] * ((x[j] - m) * r);
    if (dbias)
      for (size_t j = 0; j < c; j++) dbias[j] += dy[j];
  }
}

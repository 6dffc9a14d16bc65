/*
 * qt_cpu_se.c - squeeze-and-excitation as in timm's efficientnet blocks
 * (pool, 1x1 reduce, activation, 1x1 expand, sigmoid gate, scale) on the
 * CPU, forward and backward, composed from the pooling, linear and
 * activation ops. See qt_finetune.h.
 */
#include <math.h>
#include <string.h>

#include "finetune/qt_finetune.h"

void qt_cpu_se_forward(float *out, float *pooled, float *hidden_pre, float *hidden, float *gate,
                       const float *inp, const float *w_reduce, const float *b_reduce,
                       const float *w_expand, const float *b_expand, size_t batch, size_t c,
                       size_t hw, size_t rd, qt_se_act act) {
  qt_cpu_global_avgpool_forward(pooled, inp, batch, c, hw);
  qt_cpu_linear_forward(hidden_pre, pooled, w_reduce, b_reduce, batch, c, rd);
  if (act == QT_SE_ACT_SILU) {
    qt_cpu_silu_forward(hidden, hidden_pre, batch * rd);
  } else {
    qt_cpu_relu_forward(hidden, hidden_pre, batch * rd);
  }
  qt_cpu_linear_forward(gate, hidden, w_expand, b_expand, batch, rd, c);
  for (size_t i = 0; i < batch * c; i++) gate[i] = 1.0f / (1.0f + expf(-gate[i]));
  for (size_t i = 0; i < batch * c; i++) {
    const float *x = inp + i * hw;
    float *y = out + i * hw;
    float g = gate[i];
    for (size_t p = 0; p < hw; p++) y[p] = x[p] * g;
  }
}

void qt_cpu_se_backward(float *dinp, float *dw_reduce, float *db_reduce, float *dw_expand,
                        float *db_expand, float *scratch, const float *dout, const float *inp,
                        const float *pooled, const float *hidden_pre, const float *hidden,
                        const float *gate, const float *w_reduce, const float *w_expand,
                        size_t batch, size_t c, size_t hw, size_t rd, qt_se_act act) {
  float *dgate_pre = scratch;                /* (batch, c) */
  float *dpooled = dgate_pre + batch * c;    /* (batch, c) */
  float *dhidden = dpooled + batch * c;      /* (batch, rd) */
  float *dhidden_pre = dhidden + batch * rd; /* (batch, rd) */
  memset(scratch, 0, (2 * batch * c + 2 * batch * rd) * sizeof *scratch);
  /* out = x g: dx += dout g directly; dg = sum_hw dout x, then through the
   * sigmoid: dg_pre = dg g (1 - g). */
  for (size_t i = 0; i < batch * c; i++) {
    const float *x = inp + i * hw;
    const float *dy = dout + i * hw;
    float g = gate[i];
    double dg = 0.0;
    for (size_t p = 0; p < hw; p++) dg += (double)dy[p] * x[p];
    if (dinp) {
      float *dx = dinp + i * hw;
      for (size_t p = 0; p < hw; p++) dx[p] += dy[p] * g;
    }
    dgate_pre[i] = (float)dg * g * (1.0f - g);
  }
  qt_cpu_linear_backward(dhidden, dw_expand, db_expand, dgate_pre, hidden, w_expand, batch, rd, c);
  if (act == QT_SE_ACT_SILU) {
    qt_cpu_silu_backward(dhidden_pre, dhidden, hidden_pre, batch * rd);
  } else {
    qt_cpu_relu_backward(dhidden_pre, dhidden, hidden_pre, batch * rd);
  }
  qt_cpu_linear_backward(dpooled, dw_reduce, db_reduce, dhidden_pre, pooled, w_reduce, batch, c,
                         rd);
  if (dinp) qt_cpu_global_avgpool_backward(dinp, dpooled, batch, c, hw);
}

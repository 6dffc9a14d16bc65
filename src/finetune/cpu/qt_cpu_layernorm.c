/*
 * qt_cpu_layernorm.c - layer norm over the features of each row
 * (torch.nn.LayerNorm), forward and backward. See qt_finetune.h.
 *
 * Rows go to the worker threads (qt_cpu_parallel.h); the backward's weight
 * and bias gradients, sums down the columns, in a second pass by blocks of
 * columns, each column summed in row order as in one pass.
 */
#include <math.h>

#include "finetune/cpu/qt_cpu_parallel.h"
#include "finetune/cpu/qt_cpu_sums.h"
#include "finetune/cpu/qt_cpu_vmath.h"
#include "finetune/qt_finetune.h"

typedef struct layernorm_job {
  float *out, *mean, *rstd;                /* forward */
  float *dinp, *dweight, *dbias;           /* backward */
  const float *inp, *dout, *weight, *bias; /* dout: backward only */
  const float *saved_mean, *saved_rstd;    /* backward: the forward's */
  size_t n_rows, c;
  float eps;
} layernorm_job;

static QT_VECTOR_CLONES void forward_rows(const layernorm_job *L, size_t begin, size_t end) {
  size_t c = L->c;
  const float *weight = L->weight, *bias = L->bias;
  for (size_t i = begin; i < end; i++) {
    const float *x = L->inp + i * c;
    float *y = L->out + i * c;
    /* Two passes in double: the mean first, then the biased variance
     * around it, so that large means do not cancel the variance. */
    double m = qt__sum(x, c) / (double)c;
    double sq = qt__squares(x, c, m);
    double r = 1.0 / sqrt(sq / (double)c + (double)L->eps);
    float mf = (float)m, rf = (float)r;
    for (size_t j = 0; j < c; j++) {
      float normalized = (x[j] - mf) * rf;
      y[j] = normalized * (weight ? weight[j] : 1.0f) + (bias ? bias[j] : 0.0f);
    }
    L->mean[i] = mf;
    L->rstd[i] = rf;
  }
}

static void forward_piece(void *job, size_t begin, size_t end, void *scratch) {
  (void)scratch;
  forward_rows(job, begin, end);
}

void qt_cpu_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                              const float *weight, const float *bias, size_t n, size_t c,
                              float eps) {
  if (c == 0) return;
  layernorm_job job = {.out = out,
                       .mean = mean,
                       .rstd = rstd,
                       .inp = inp,
                       .weight = weight,
                       .bias = bias,
                       .c = c,
                       .eps = eps};
  qt__cpu_parallel_for(n, qt__cpu_items_grain(c), 0, 0, forward_piece, &job);
}

/* dinp's rows. With xhat = (x - mean) * rstd and g = weight * dy:
 * dx = rstd * (g - mean(g) - xhat * mean(g * xhat)). */
static QT_VECTOR_CLONES void input_gradient_rows(const layernorm_job *L, size_t begin, size_t end) {
  size_t c = L->c;
  const float *weight = L->weight;
  for (size_t i = begin; i < end; i++) {
    const float *x = L->inp + i * c;
    const float *dy = L->dout + i * c;
    float m = L->saved_mean[i], r = L->saved_rstd[i];
    double g_sum = 0.0, g_xhat_sum = 0.0;
    qt__add_gradient_sums(x, dy, weight, c, m, r, &g_sum, &g_xhat_sum);
    float g_mean = (float)(g_sum / (double)c);
    float g_xhat_mean = (float)(g_xhat_sum / (double)c);
    float *dx = L->dinp + i * c;
    for (size_t j = 0; j < c; j++) {
      float g = (weight ? weight[j] : 1.0f) * dy[j];
      dx[j] += (g - g_mean - (x[j] - m) * r * g_xhat_mean) * r;
    }
  }
}

static void input_gradient_piece(void *job, size_t begin, size_t end, void *scratch) {
  (void)scratch;
  input_gradient_rows(job, begin, end);
}

/* dweight += the column sums of dy xhat, dbias += those of dy, for the
 * columns [begin, end), QT_COLUMN_BLOCK at a time: each column's float
 * sum taken in row order, as row by row. */
static QT_VECTOR_CLONES void parameter_gradient_columns(const layernorm_job *L, size_t begin,
                                                        size_t end) {
  size_t c = L->c, n_rows = L->n_rows;
  for (size_t j0 = begin; j0 < end; j0 += QT_COLUMN_BLOCK) {
    size_t width = end - j0 < QT_COLUMN_BLOCK ? end - j0 : QT_COLUMN_BLOCK;
    float dw[QT_COLUMN_BLOCK], db[QT_COLUMN_BLOCK];
    for (size_t j = 0; j < width; j++) {
      dw[j] = L->dweight ? L->dweight[j0 + j] : 0.0f;
      db[j] = L->dbias ? L->dbias[j0 + j] : 0.0f;
    }
    for (size_t i = 0; i < n_rows; i++) {
      const float *x = L->inp + i * c + j0;
      const float *dy = L->dout + i * c + j0;
      float m = L->saved_mean[i], r = L->saved_rstd[i];
      for (size_t j = 0; j < width; j++) {
        dw[j] += dy[j] * ((x[j] - m) * r);
        db[j] += dy[j];
      }
    }
    for (size_t j = 0; j < width; j++) {
      if (L->dweight) L->dweight[j0 + j] = dw[j];
      if (L->dbias) L->dbias[j0 + j] = db[j];
    }
  }
}

static void parameter_gradient_piece(void *job, size_t begin, size_t end, void *scratch) {
  (void)scratch;
  parameter_gradient_columns(job, begin, end);
}

void qt_cpu_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, const float *mean,
                               const float *rstd, size_t n, size_t c) {
  if (c == 0 || n == 0) return;
  layernorm_job job = {.dinp = dinp,
                       .dweight = dweight,
                       .dbias = dbias,
                       .inp = inp,
                       .dout = dout,
                       .weight = weight,
                       .saved_mean = mean,
                       .saved_rstd = rstd,
                       .c = c,
                       .n_rows = n};
  if (dinp) qt__cpu_parallel_for(n, qt__cpu_items_grain(c), 0, 0, input_gradient_piece, &job);
  if (dweight || dbias) {
    /* Blocks of columns, each of n rows. */
    size_t blocks = qt__cpu_items_grain(n * QT_COLUMN_BLOCK);
    qt__cpu_parallel_for(c, blocks * QT_COLUMN_BLOCK, 0, 0, parameter_gradient_piece, &job);
  }
}

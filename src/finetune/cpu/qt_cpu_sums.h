/*
 * qt_cpu_sums.h - the CPU ops' reductions over a row or a plane (the batch
 * and layer norms' sums, forward and backward, the softmax's row maximum,
 * sum and dot product, the linear's bias gradient), written for the
 * vectorizer.
 *
 * A single running sum waits for each add before the next: a double add's
 * latency per value, and GCC may not reorder the adds without
 * -ffast-math. QT_SUM_LANES sums, of every QT_SUM_LANES-th value, added
 * together at the end, keep the adder busy and are vectors at -O3 (the
 * files that use them are compiled so, see CMakeLists.txt). The order of
 * the adds is fixed by n alone, so every vector width gives the same bits.
 * The sums are in double, as the single running sums they replace were.
 */
#ifndef QT_CPU_SUMS_H
#define QT_CPU_SUMS_H

#include <stddef.h>

#define QT_SUM_LANES 8

/* sum of x[0, n) */
static inline double qt__sum(const float *x, size_t n) {
  double part[QT_SUM_LANES] = {0.0};
  size_t i = 0;
  for (; i + QT_SUM_LANES <= n; i += QT_SUM_LANES)
    for (int l = 0; l < QT_SUM_LANES; l++) part[l] += x[i + l];
  double sum = 0.0;
  for (int l = 0; l < QT_SUM_LANES; l++) sum += part[l];
  for (; i < n; i++) sum += x[i];
  return sum;
}

/* sum of (x - m)^2 over x[0, n) */
static inline double qt__squares(const float *x, size_t n, double m) {
  double part[QT_SUM_LANES] = {0.0};
  size_t i = 0;
  for (; i + QT_SUM_LANES <= n; i += QT_SUM_LANES)
    for (int l = 0; l < QT_SUM_LANES; l++) {
      double d = x[i + l] - m;
      part[l] += d * d;
    }
  double sq = 0.0;
  for (int l = 0; l < QT_SUM_LANES; l++) sq += part[l];
  for (; i < n; i++) {
    double d = x[i] - m;
    sq += d * d;
  }
  return sq;
}

/* sum of a b over a[0, n), b[0, n) */
static inline double qt__dot(const float *a, const float *b, size_t n) {
  double part[QT_SUM_LANES] = {0.0};
  size_t i = 0;
  for (; i + QT_SUM_LANES <= n; i += QT_SUM_LANES)
    for (int l = 0; l < QT_SUM_LANES; l++) part[l] += (double)a[i + l] * b[i + l];
  double dot = 0.0;
  for (int l = 0; l < QT_SUM_LANES; l++) dot += part[l];
  for (; i < n; i++) dot += (double)a[i] * b[i];
  return dot;
}

/* The largest of x[0, n), n >= 1. The maximum does not depend on the
 * order (a NaN in x may or may not be it; its row's results are NaN
 * either way). */
static inline float qt__max(const float *x, size_t n) {
  float part[QT_SUM_LANES];
  for (int l = 0; l < QT_SUM_LANES; l++) part[l] = x[0];
  size_t i = 0;
  for (; i + QT_SUM_LANES <= n; i += QT_SUM_LANES)
    for (int l = 0; l < QT_SUM_LANES; l++) part[l] = x[i + l] > part[l] ? x[i + l] : part[l];
  float max = part[0];
  for (int l = 1; l < QT_SUM_LANES; l++) max = part[l] > max ? part[l] : max;
  for (; i < n; i++) max = x[i] > max ? x[i] : max;
  return max;
}

/* The norms' backward sums over a row or plane x[0, n) with its output
 * gradient dy: *g_sum += the sum of g and *g_xhat_sum += the sum of
 * g xhat, with g = w dy (w[i], or 1 where w is NULL) and xhat = (x - m) r
 * in float. */
static inline void qt__add_gradient_sums(const float *x, const float *dy, const float *w, size_t n,
                                         float m, float r, double *g_sum, double *g_xhat_sum) {
  double part[QT_SUM_LANES] = {0.0}, part_xhat[QT_SUM_LANES] = {0.0};
  size_t i = 0;
  for (; i + QT_SUM_LANES <= n; i += QT_SUM_LANES)
    for (int l = 0; l < QT_SUM_LANES; l++) {
      float g = (w ? w[i + l] : 1.0f) * dy[i + l];
      part[l] += g;
      part_xhat[l] += (double)g * ((x[i + l] - m) * r);
    }
  double sum = 0.0, sum_xhat = 0.0;
  for (int l = 0; l < QT_SUM_LANES; l++) {
    sum += part[l];
    sum_xhat += part_xhat[l];
  }
  for (; i < n; i++) {
    float g = (w ? w[i] : 1.0f) * dy[i];
    sum += g;
    sum_xhat += (double)g * ((x[i] - m) * r);
  }
  *g_sum += sum;
  *g_xhat_sum += sum_xhat;
}

/* Sums down the columns of row-major (n, c) arrays: out[j] += the sum over
 * rows i of x[i c + j], or of x[i c + j] y[i c + j] where y is not NULL;
 * in double, each column in row order. A column at a time would read one
 * float of each 64-byte line (a ViT-Ti fc1's gradient at batch 16 is
 * 3152 x 768 floats: read 768 times over, from memory); instead the rows
 * are walked QT_COLUMN_BLOCK columns at a time, whole lines, their adds a
 * vector. */
#define QT_COLUMN_BLOCK 64

static inline void qt__add_column_sums(float *out, const float *x, const float *y, size_t n,
                                       size_t c) {
  for (size_t j0 = 0; j0 < c; j0 += QT_COLUMN_BLOCK) {
    size_t width = c - j0 < QT_COLUMN_BLOCK ? c - j0 : QT_COLUMN_BLOCK;
    double sum[QT_COLUMN_BLOCK] = {0.0};
    for (size_t i = 0; i < n; i++) {
      const float *row = x + i * c + j0;
      if (y) {
        const float *row_y = y + i * c + j0;
        for (size_t j = 0; j < width; j++) sum[j] += (double)row[j] * row_y[j];
      } else {
        for (size_t j = 0; j < width; j++) sum[j] += row[j];
      }
    }
    for (size_t j = 0; j < width; j++) out[j0 + j] += (float)sum[j];
  }
}

#endif /* QT_CPU_SUMS_H */

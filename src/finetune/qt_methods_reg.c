/*
 * qt_methods_reg.c - regularizers on the pre-head features of a batch
 * (specs/algorithms.md section 6): Batch Spectral Shrinkage (BSS), the
 * penalty eta * sum of the k smallest squared singular values of the
 * feature matrix F (batch, width), and its gradient 2 eta U_k diag(s_k)
 * V_k^T, both from one LAPACK SVD computed in double; and DELTA's
 * feature distance to the frozen pretrained model, alpha ||F - F0||^2
 * with gradient 2 alpha (F - F0). See "BSS" and "DELTA" in
 * qt_finetune.h and docs/engine.md; the run (qt_run.c) adds the gradient
 * to the features' gradient through the ViT's feature hook
 * (qt_vit_feature_grad) before the backward pass.
 */
#include <lapacke.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune.h"

int qt_bss_penalty(const float *features, size_t batch, size_t width, long k, double eta,
                   double *penalty, float *grad, qt_err *err) {
  if (!features || !penalty)
    return qt_err_set(err, QT_EINVAL, "qt_bss_penalty: NULL argument");
  if (batch < 1 || width < 1 || batch > INT_MAX || width > INT_MAX)
    return qt_err_set(err, QT_EINVAL, "qt_bss_penalty: bad feature matrix %zu x %zu", batch,
                      width);
  if (k < 1) return qt_err_set(err, QT_EINVAL, "qt_bss_penalty: k must be >= 1, got %ld", k);
  if (!(eta >= 0.0) || !isfinite(eta))
    return qt_err_set(err, QT_EINVAL, "qt_bss_penalty: eta must be finite and >= 0, got %g", eta);
  size_t n = batch < width ? batch : width;
  size_t used = (size_t)k < n ? (size_t)k : n;
  /* One block: the copy LAPACK destroys, U (batch, n), s (n), V^T (n,
   * width), superb (n). Per call: one SVD of a small matrix per batch. */
  size_t total = batch * width + batch * n + n + n * width + n;
  double *block = malloc(total * sizeof *block);
  if (!block) return qt_err_set(err, QT_ENOMEM, "qt_bss_penalty: out of memory");
  double *copy = block, *u = copy + batch * width, *s = u + batch * n, *vt = s + n;
  double *superb = vt + n * width;
  for (size_t i = 0; i < batch * width; i++) copy[i] = (double)features[i];
  lapack_int info =
      LAPACKE_dgesvd(LAPACK_ROW_MAJOR, 'S', 'S', (lapack_int)batch, (lapack_int)width, copy,
                     (lapack_int)width, s, u, (lapack_int)n, vt, (lapack_int)width, superb);
  if (info != 0) {
    free(block);
    return qt_err_set(err, QT_EIO, "qt_bss_penalty: the SVD failed (LAPACK info %d)", (int)info);
  }
  /* gesvd sorts s in descending order: the k smallest are the last k. */
  double sum = 0.0;
  for (size_t j = n - used; j < n; j++) sum += s[j] * s[j];
  *penalty = eta * sum;
  if (grad) {
    for (size_t j = n - used; j < n; j++) {
      double c = 2.0 * eta * s[j];
      for (size_t b = 0; b < batch; b++) {
        double cu = c * u[b * n + j];
        const double *vj = vt + j * width;
        float *gb = grad + b * width;
        for (size_t d = 0; d < width; d++) gb[d] += (float)(cu * vj[d]);
      }
    }
  }
  free(block);
  return 0;
}

void qt_delta_penalty(const float *f, const float *f0, size_t n, double alpha, double *penalty,
                      float *grad) {
  double sum = 0.0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)f[i] - (double)f0[i];
    sum += d * d;
    if (grad) grad[i] += (float)(2.0 * alpha * d);
  }
  if (penalty) *penalty = alpha * sum;
}

/*
 * qt_methods_cotuning.c - Co-Tuning (You et al. 2020, the original method;
 * specs/algorithms.md section 6): the source head's logits, the category
 * relationship R (row c = mean over class c's training samples of the
 * source softmax) and the per-batch penalty lambda * mean_b CE(q_b,
 * softmax(z_b)) with q_b = sum_c w[b,c] R[c,:], with its gradients w.r.t.
 * the features, W_src and b_src. See "Co-Tuning" in qt_finetune.h and
 * docs/engine.md; the run (qt_run.c) wires it through the feature hook
 * like BSS and DELTA. Everything is accumulated in double.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune.h"

void qt_cotuning_source_logits(const float *features, size_t batch, size_t dim, const float *w,
                               const float *b, size_t n_src, float *logits) {
  for (size_t i = 0; i < batch; i++) {
    const float *f = features + i * dim;
    for (size_t s = 0; s < n_src; s++) {
      const float *ws = w + s * dim;
      double z = (double)b[s];
      for (size_t d = 0; d < dim; d++) z += (double)f[d] * (double)ws[d];
      logits[i * n_src + s] = (float)z;
    }
  }
}

/* p = softmax(z) over n values in double; returns log sum exp(z). */
static double softmax_row(const double *z, size_t n, double *p) {
  double m = z[0];
  for (size_t s = 1; s < n; s++) m = z[s] > m ? z[s] : m;
  double sum = 0.0;
  for (size_t s = 0; s < n; s++) sum += p[s] = exp(z[s] - m);
  for (size_t s = 0; s < n; s++) p[s] /= sum;
  return m + log(sum);
}

int qt_cotuning_relationship_accumulate(const float *logits, const int32_t *labels, size_t batch,
                                        size_t n_src, size_t n_target, double *sum, double *count,
                                        qt_err *err) {
  if (!logits || !labels || !sum || !count)
    return qt_err_set(err, QT_EINVAL, "qt_cotuning_relationship_accumulate: NULL argument");
  if (n_src < 1 || n_target < 1)
    return qt_err_set(err, QT_EINVAL,
                      "qt_cotuning_relationship_accumulate: %zu source and %zu "
                      "target classes",
                      n_src, n_target);
  double *z = malloc(2 * n_src * sizeof *z);
  if (!z) return qt_err_set(err, QT_ENOMEM, "qt_cotuning_relationship_accumulate: out of memory");
  double *p = z + n_src;
  int rc = 0;
  for (size_t i = 0; i < batch; i++) {
    int32_t c = labels[i];
    if (c < 0 || (size_t)c >= n_target) {
      rc = qt_err_set(err, QT_EINVAL,
                      "Co-Tuning relationship: label %d of sample %zu is not in "
                      "[0, %zu)",
                      (int)c, i, n_target);
      break;
    }
    int finite = 1;
    for (size_t s = 0; s < n_src; s++) {
      z[s] = (double)logits[i * n_src + s];
      finite &= isfinite(z[s]) != 0;
    }
    if (!finite) {
      rc = qt_err_set(err, QT_EINVAL,
                      "Co-Tuning relationship: the source logits of sample %zu "
                      "are not finite",
                      i);
      break;
    }
    softmax_row(z, n_src, p);
    double *row = sum + (size_t)c * n_src;
    for (size_t s = 0; s < n_src; s++) row[s] += p[s];
    count[c] += 1.0;
  }
  free(z);
  return rc;
}

void qt_cotuning_relationship_finalize(const double *sum, const double *count, size_t n_target,
                                       size_t n_src, float *r) {
  for (size_t c = 0; c < n_target; c++) {
    for (size_t s = 0; s < n_src; s++)
      r[c * n_src + s] =
          count[c] > 0.0 ? (float)(sum[c * n_src + s] / count[c]) : (float)(1.0 / (double)n_src);
  }
}

int qt_cotuning_penalty(const float *features, size_t batch, size_t dim, const float *w,
                        const float *b, size_t n_src, const float *r, size_t n_target,
                        const int32_t *labels, const float *weights, double lambda, double *penalty,
                        float *dfeat, float *dw, float *db, qt_err *err) {
  if (!features || !w || !b || !r || !penalty || (!labels && !weights))
    return qt_err_set(err, QT_EINVAL, "qt_cotuning_penalty: NULL argument");
  if (batch < 1 || dim < 1 || n_src < 1 || n_target < 1)
    return qt_err_set(err, QT_EINVAL,
                      "qt_cotuning_penalty: bad sizes (batch %zu, dim %zu, %zu source and %zu "
                      "target classes)",
                      batch, dim, n_src, n_target);
  if (!(lambda >= 0.0) || !isfinite(lambda))
    return qt_err_set(err, QT_EINVAL, "qt_cotuning_penalty: lambda must be finite and >= 0, got %g",
                      lambda);
  if (!weights) {
    for (size_t i = 0; i < batch; i++) {
      if (labels[i] < 0 || (size_t)labels[i] >= n_target)
        return qt_err_set(err, QT_EINVAL,
                          "qt_cotuning_penalty: label %d of sample %zu is not in "
                          "[0, %zu)",
                          (int)labels[i], i, n_target);
    }
  }
  double *z = malloc((3 * n_src + dim) * sizeof *z);
  if (!z) return qt_err_set(err, QT_ENOMEM, "qt_cotuning_penalty: out of memory");
  double *p = z + n_src, *q = p + n_src, *acc = q + n_src;
  double total = 0.0, scale = lambda / (double)batch;
  for (size_t i = 0; i < batch; i++) {
    const float *f = features + i * dim;
    for (size_t s = 0; s < n_src; s++) {
      const float *ws = w + s * dim;
      double zs = (double)b[s];
      for (size_t d = 0; d < dim; d++) zs += (double)f[d] * (double)ws[d];
      z[s] = zs;
    }
    double lse = softmax_row(z, n_src, p);
    /* The source target q = sum_c w[i,c] R[c,:]. */
    if (weights) {
      memset(q, 0, n_src * sizeof *q);
      for (size_t c = 0; c < n_target; c++) {
        double wc = (double)weights[i * n_target + c];
        if (wc == 0.0) continue;
        const float *rc = r + c * n_src;
        for (size_t s = 0; s < n_src; s++) q[s] += wc * (double)rc[s];
      }
    } else {
      const float *rc = r + (size_t)labels[i] * n_src;
      for (size_t s = 0; s < n_src; s++) q[s] = (double)rc[s];
    }
    double qsum = 0.0, ce = 0.0;
    for (size_t s = 0; s < n_src; s++) {
      qsum += q[s];
      ce -= q[s] * (z[s] - lse);
    }
    total += ce;
    /* dz = scale (qsum p - q), reusing z. */
    for (size_t s = 0; s < n_src; s++) z[s] = scale * (qsum * p[s] - q[s]);
    if (dfeat) {
      /* dF_i = dz W, row by row of W (contiguous). */
      memset(acc, 0, dim * sizeof *acc);
      for (size_t s = 0; s < n_src; s++) {
        const float *ws = w + s * dim;
        for (size_t d = 0; d < dim; d++) acc[d] += z[s] * (double)ws[d];
      }
      float *g = dfeat + i * dim;
      for (size_t d = 0; d < dim; d++) g[d] += (float)acc[d];
    }
    if (dw) {
      for (size_t s = 0; s < n_src; s++) {
        float *gs = dw + s * dim;
        for (size_t d = 0; d < dim; d++) gs[d] += (float)(z[s] * (double)f[d]);
      }
    }
    if (db) {
      for (size_t s = 0; s < n_src; s++) db[s] += (float)z[s];
    }
  }
  free(z);
  *penalty = scale * total;
  return 0;
}

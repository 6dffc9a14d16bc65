/*
 * qt_data_tabular.c - statistics for the per-feature standardization of
 * tabular datasets (see qt_dataset_feature_stats in qt_finetune.h); the
 * batch iterator applies them (qt_preprocess_params.feature_mean / std).
 */
#include <math.h>
#include <stdlib.h>

#include "finetune/qt_finetune.h"

int qt_dataset_feature_stats(const qt_dataset *ds, float *mean, float *std, qt_err *err) {
  if (!ds || !mean || !std)
    return qt_err_set(err, QT_EINVAL, "qt_dataset_feature_stats: NULL argument");
  if (ds->kind != QT_DATASET_KIND_TABULAR)
    return qt_err_set(err, QT_EINVAL, "%s: feature statistics need a tabular dataset",
                      ds->source ? ds->source : "dataset");
  if (ds->n == 0)
    return qt_err_set(err, QT_EINVAL, "%s: no samples to compute feature statistics on",
                      ds->source ? ds->source : "dataset");
  size_t f = ds->n_features;
  /* Two passes in double: the mean, then the squared deviations (stable
   * where the one-pass formula cancels). */
  for (size_t j = 0; j < f; j++) {
    double sum = 0.0;
    for (size_t i = 0; i < ds->n; i++) sum += ds->features[i * f + j];
    double m = sum / (double)ds->n, squares = 0.0;
    for (size_t i = 0; i < ds->n; i++) {
      double d = ds->features[i * f + j] - m;
      squares += d * d;
    }
    double s = sqrt(squares / (double)ds->n);
    mean[j] = (float)m;
    std[j] = s < 1e-12 * (1.0 + fabs(m)) ? 1.0f : (float)s;
  }
  return 0;
}

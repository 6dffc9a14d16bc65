/*
 * qt_cpu_cross_entropy.c - softmax cross-entropy with hard labels (optionally
 * smoothed) or soft targets. See qt_finetune.h.
 */
#include <math.h>

#include "finetune/qt_finetune.h"

/* Target probability of class k for row b. */
static inline float target(const int *labels, const float *soft_targets, float smoothing, size_t b,
                           size_t k, size_t classes) {
  if (soft_targets) return soft_targets[b * classes + k];
  float t = smoothing / (float)classes;
  if ((size_t)labels[b] == k) t += 1.0f - smoothing;
  return t;
}

void qt_cpu_cross_entropy_forward(float *losses, float *probs, const float *logits,
                                  const int *labels, const float *soft_targets, float smoothing,
                                  size_t batch, size_t classes) {
  for (size_t b = 0; b < batch; b++) {
    const float *z = logits + b * classes;
    float *p = probs + b * classes;
    if (!soft_targets) QT_ASSERT(labels[b] >= 0 && (size_t)labels[b] < classes);
    float max = z[0];
    for (size_t k = 1; k < classes; k++) max = z[k] > max ? z[k] : max;
    double sum = 0.0;
    for (size_t k = 0; k < classes; k++) sum += exp((double)z[k] - max);
    double log_sum = log(sum);
    /* loss = -sum_k t_k (z_k - max - log_sum); the log-probabilities are
     * formed in double, so no class underflows to -inf. */
    double loss = 0.0;
    for (size_t k = 0; k < classes; k++) {
      double log_p = (double)z[k] - max - log_sum;
      p[k] = (float)exp(log_p);
      loss -= target(labels, soft_targets, smoothing, b, k, classes) * log_p;
    }
    losses[b] = (float)loss;
  }
}

void qt_cpu_cross_entropy_backward(float *dlogits, const float *probs, const int *labels,
                                   const float *soft_targets, float smoothing, const float *dloss,
                                   int dloss_per_row, size_t batch, size_t classes) {
  for (size_t b = 0; b < batch; b++) {
    float scale = dloss_per_row ? dloss[b] : dloss[0];
    for (size_t k = 0; k < classes; k++) {
      float t = target(labels, soft_targets, smoothing, b, k, classes);
      dlogits[b * classes + k] += scale * (probs[b * classes + k] - t);
    }
  }
}

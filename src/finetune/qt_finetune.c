/*
 * qt_finetune.c - backend selection and the argument checks shared by the CPU
 * and CUDA versions of each op. Everything here is compiled in every build;
 * the CUDA-specific parts live in finetune/cuda/ (or its stub).
 */
#include <math.h>
#include <strings.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"

/* ------------------------------------------------------------------------- */
/* Backends                                                                   */
/* ------------------------------------------------------------------------- */

const char *qt_backend_kind_name(qt_backend_kind kind) {
  switch (kind) {
    case QT_BACKEND_KIND_CPU:
      return "cpu";
    case QT_BACKEND_KIND_CUDA:
      return "cuda";
  }
  return "unknown";
}

int qt_backend_kind_parse(const char *text, qt_backend_kind *out, qt_err *err) {
  if (!text || !out) return qt_err_set(err, QT_EINVAL, "qt_backend_kind_parse: NULL argument");
  if (strcasecmp(text, "cpu") == 0) {
    *out = QT_BACKEND_KIND_CPU;
    return 0;
  }
  if (strcasecmp(text, "cuda") == 0) {
    *out = QT_BACKEND_KIND_CUDA;
    return 0;
  }
  return qt_err_set(err, QT_EINVAL, "unknown backend '%s' (expected 'cpu' or 'cuda')", text);
}

int qt_backend_kind_check(qt_backend_kind kind, qt_err *err) {
  switch (kind) {
    case QT_BACKEND_KIND_CPU:
      return 0;
    case QT_BACKEND_KIND_CUDA: {
      if (!QT_HAVE_CUDA) {
        return qt_err_set(err, QT_ENODEV,
                          "backend 'cuda' is unavailable: qtune was built without CUDA "
                          "(QT_CUDA=OFF or no toolkit)");
      }
      int count = 0;
      int rc = qt_cuda_device_count(&count, err);
      if (rc < 0) return rc;
      if (count == 0) {
        return qt_err_set(err, QT_ENODEV,
                          "backend 'cuda' is unavailable: no CUDA device is visible "
                          "(check the driver and CUDA_VISIBLE_DEVICES)");
      }
      return 0;
    }
  }
  return qt_err_set(err, QT_EINVAL, "unknown backend kind %d", (int)kind);
}

/* ------------------------------------------------------------------------- */
/* AdamW                                                                      */
/* ------------------------------------------------------------------------- */

qt_adamw_params qt_adamw_default_params(void) {
  qt_adamw_params hp;
  hp.lr = 1e-3;
  hp.beta1 = 0.9;
  hp.beta2 = 0.999;
  hp.eps = 1e-8;
  hp.weight_decay = 0.01;
  return hp;
}

int qt__adamw_prepare(const char *who, const float *params, const float *grads, const float *m,
                      const float *v, size_t n, const qt_adamw_params *hp, long step,
                      qt__adamw_coefficients *out, qt_err *err) {
  if (!hp) return qt_err_set(err, QT_EINVAL, "%s: hyperparameters are NULL", who);
  if (n > 0 && (!params || !grads || !m || !v)) {
    return qt_err_set(
        err, QT_EINVAL, "%s: NULL array (params %p, grads %p, m %p, v %p) for n = %zu", who,
        (const void *)params, (const void *)grads, (const void *)m, (const void *)v, n);
  }
  if (step < 1) {
    return qt_err_set(err, QT_EINVAL, "%s: step must count from 1, got %ld", who, step);
  }
  if (!isfinite(hp->lr) || hp->lr < 0.0) {
    return qt_err_set(err, QT_EINVAL, "%s: lr must be finite and >= 0, got %g", who, hp->lr);
  }
  if (!isfinite(hp->beta1) || hp->beta1 < 0.0 || hp->beta1 >= 1.0) {
    return qt_err_set(err, QT_EINVAL, "%s: beta1 must be in [0, 1), got %g", who, hp->beta1);
  }
  if (!isfinite(hp->beta2) || hp->beta2 < 0.0 || hp->beta2 >= 1.0) {
    return qt_err_set(err, QT_EINVAL, "%s: beta2 must be in [0, 1), got %g", who, hp->beta2);
  }
  if (!isfinite(hp->eps) || !((float)hp->eps > 0.0f)) {
    return qt_err_set(err, QT_EINVAL, "%s: eps must be finite and > 0 in float, got %g", who,
                      hp->eps);
  }
  if (!isfinite(hp->weight_decay) || hp->weight_decay < 0.0) {
    return qt_err_set(err, QT_EINVAL, "%s: weight_decay must be finite and >= 0, got %g", who,
                      hp->weight_decay);
  }

  /* Bias corrections in double: in float, 1 - beta2^t loses most of its
   * digits for beta2 = 0.999 and small t. beta < 1 keeps both positive. */
  double bias_correction1 = 1.0 - pow(hp->beta1, (double)step);
  double bias_correction2 = 1.0 - pow(hp->beta2, (double)step);
  qt__adamw_coefficients c;
  c.beta1 = (float)hp->beta1;
  c.one_minus_beta1 = (float)(1.0 - hp->beta1);
  c.beta2 = (float)hp->beta2;
  c.one_minus_beta2 = (float)(1.0 - hp->beta2);
  c.eps = (float)hp->eps;
  c.decay = (float)(hp->lr * hp->weight_decay);
  c.step_size = (float)(hp->lr / bias_correction1);
  c.bias_correction2_sqrt = (float)sqrt(bias_correction2);
  if (!isfinite(c.decay) || !isfinite(c.step_size) || !(c.bias_correction2_sqrt > 0.0f)) {
    return qt_err_set(err, QT_EINVAL,
                      "%s: lr %g, weight_decay %g, beta2 %g at step %ld give a step size, decay "
                      "or bias correction that float cannot hold",
                      who, hp->lr, hp->weight_decay, hp->beta2, step);
  }
  if (out) *out = c;
  return 0;
}

/*
 * qt_optim.c - the optimizers of a fine-tuning run (SGD, momentum, Adam,
 * AdamW) on one parameter tensor at a time; see "Optimizers, schedules and
 * the epoch-step run API" in qt_finetune.h for the formulas. Adam and AdamW
 * share the coefficients of the fused AdamW op (qt__adamw_prepare), so the
 * two differ only in where the weight decay enters.
 */
#include <math.h>
#include <string.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"

static const char *const optim_names[] = {"sgd", "momentum", "adam", "adamw"};

const char *qt_optim_kind_name(qt_optim_kind kind) {
  if ((int)kind < 0 || (size_t)kind >= sizeof optim_names / sizeof optim_names[0])
    return "unknown";
  return optim_names[kind];
}

int qt_optim_kind_parse(const char *text, qt_optim_kind *out, qt_err *err) {
  if (!text || !out) return qt_err_set(err, QT_EINVAL, "qt_optim_kind_parse: NULL argument");
  for (size_t i = 0; i < sizeof optim_names / sizeof optim_names[0]; i++) {
    if (strcmp(text, optim_names[i]) == 0) {
      *out = (qt_optim_kind)i;
      return 0;
    }
  }
  if (strcmp(text, "goodfit") == 0 || strcmp(text, "adamp") == 0 || strcmp(text, "sgdp") == 0)
    return qt_err_set(err, QT_ENOTIMPL, "optimizer '%s' is not implemented yet", text);
  return qt_err_set(err, QT_EINVAL, "unknown optimizer '%s' (accepted: sgd, momentum, adam, adamw)",
                    text);
}

qt_optim_params qt_optim_default_params(void) {
  qt_optim_params p;
  p.kind = QT_OPTIM_KIND_ADAMW;
  p.lr = 1e-3;
  p.momentum = 0.9;
  p.beta1 = 0.9;
  p.beta2 = 0.999;
  p.eps = 1e-8;
  p.weight_decay = 0.01;
  p.clip_grad = 0.0;
  p.layer_decay = 1.0;
  return p;
}

int qt_optim_params_check(const qt_optim_params *p, qt_err *err) {
  if (!p) return qt_err_set(err, QT_EINVAL, "optimizer parameters are NULL");
  if ((int)p->kind < 0 || p->kind > QT_OPTIM_KIND_ADAMW)
    return qt_err_set(err, QT_EINVAL, "unknown optimizer kind %d", (int)p->kind);
  if (!isfinite(p->lr) || p->lr < 0.0)
    return qt_err_set(err, QT_EINVAL, "lr must be finite and >= 0, got %g", p->lr);
  if (!isfinite(p->momentum) || p->momentum < 0.0 || p->momentum >= 1.0)
    return qt_err_set(err, QT_EINVAL, "momentum must be in [0, 1), got %g", p->momentum);
  if (!isfinite(p->beta1) || p->beta1 < 0.0 || p->beta1 >= 1.0)
    return qt_err_set(err, QT_EINVAL, "beta1 must be in [0, 1), got %g", p->beta1);
  if (!isfinite(p->beta2) || p->beta2 < 0.0 || p->beta2 >= 1.0)
    return qt_err_set(err, QT_EINVAL, "beta2 must be in [0, 1), got %g", p->beta2);
  if (!isfinite(p->eps) || !((float)p->eps > 0.0f))
    return qt_err_set(err, QT_EINVAL, "eps must be > 0 in float, got %g", p->eps);
  if (!isfinite(p->weight_decay) || p->weight_decay < 0.0)
    return qt_err_set(err, QT_EINVAL, "weight_decay must be finite and >= 0, got %g",
                      p->weight_decay);
  if (!isfinite(p->clip_grad) || p->clip_grad < 0.0)
    return qt_err_set(err, QT_EINVAL, "clip_grad must be finite and >= 0 (0: off), got %g",
                      p->clip_grad);
  if (!isfinite(p->layer_decay) || p->layer_decay <= 0.0 || p->layer_decay > 1.0)
    return qt_err_set(err, QT_EINVAL, "layer_decay must be in (0, 1], got %g", p->layer_decay);
  return 0;
}

void qt_optim_tensor_step(const qt_optim_params *p, double lr, int decay, long step, float *params,
                          const float *grads, float *state1, float *state2, size_t n) {
  double wd = decay ? p->weight_decay : 0.0;
  switch (p->kind) {
  case QT_OPTIM_KIND_SGD: {
    float flr = (float)lr, fwd = (float)wd;
    for (size_t i = 0; i < n; i++) {
      float g = grads[i] + fwd * params[i];
      params[i] -= flr * g;
    }
    return;
  }
  case QT_OPTIM_KIND_MOMENTUM: {
    /* torch.optim.SGD with dampening 0: the buffer starts as the first
     * gradient, which is what momentum * 0 + g gives. */
    float flr = (float)lr, fwd = (float)wd, mom = (float)p->momentum;
    for (size_t i = 0; i < n; i++) {
      float g = grads[i] + fwd * params[i];
      float b = mom * state1[i] + g;
      state1[i] = b;
      params[i] -= flr * b;
    }
    return;
  }
  case QT_OPTIM_KIND_ADAM:
  case QT_OPTIM_KIND_ADAMW: {
    qt_adamw_params hp;
    hp.lr = lr;
    hp.beta1 = p->beta1;
    hp.beta2 = p->beta2;
    hp.eps = p->eps;
    hp.weight_decay = p->kind == QT_OPTIM_KIND_ADAMW ? wd : 0.0;
    qt__adamw_coefficients c;
    int rc = qt__adamw_prepare("qt_optim_tensor_step", params, grads, state1, state2, n, &hp,
                               step, &c, NULL);
    QT_ASSERT(rc == 0); /* the run checked the parameters */
    float coupled = p->kind == QT_OPTIM_KIND_ADAM ? (float)wd : 0.0f;
    for (size_t i = 0; i < n; i++) {
      float x = params[i];
      float g = grads[i] + coupled * x;
      float m_new = c.beta1 * state1[i] + c.one_minus_beta1 * g;
      float v_new = c.beta2 * state2[i] + c.one_minus_beta2 * (g * g);
      state1[i] = m_new;
      state2[i] = v_new;
      float denom = sqrtf(v_new) / c.bias_correction2_sqrt + c.eps;
      params[i] = x - c.decay * x - c.step_size * (m_new / denom);
    }
    return;
  }
  }
  QT_ASSERT(0 && "unknown optimizer kind");
}

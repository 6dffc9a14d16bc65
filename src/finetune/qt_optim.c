/*
 * qt_optim.c - the optimizers of a fine-tuning run (SGD, momentum, Adam,
 * AdamW) on one parameter tensor at a time, and the methods that pull the
 * weights toward a reference theta0: L2-SP, Selective Projection Decay and
 * SFA averaging; and GOODFIT's projection [RECON]. See "Optimizers, schedules and the epoch-step run API" in
 * qt_finetune.h for the formulas. Adam and AdamW share the coefficients of
 * the fused AdamW op (qt__adamw_prepare), so the two differ only in where
 * the weight decay enters.
 */
#include <math.h>
#include <string.h>

#include "finetune/cpu/qt_cpu_parallel.h"
#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"

static const char *const optim_names[] = {"sgd", "momentum", "adam", "adamw"};
static const char *const decay_names[] = {"weight_decay", "none", "l2sp", "spd"};

const char *qt_decay_kind_name(qt_decay_kind kind) {
  if ((int)kind < 0 || (size_t)kind >= sizeof decay_names / sizeof decay_names[0])
    return "unknown";
  return decay_names[kind];
}

int qt_decay_kind_parse(const char *text, qt_decay_kind *out, qt_err *err) {
  if (!text || !out) return qt_err_set(err, QT_EINVAL, "qt_decay_kind_parse: NULL argument");
  if (strcmp(text, "None") == 0) return *out = QT_DECAY_KIND_NONE, 0;
  for (size_t i = 0; i < sizeof decay_names / sizeof decay_names[0]; i++) {
    if (strcmp(text, decay_names[i]) == 0) {
      *out = (qt_decay_kind)i;
      return 0;
    }
  }
  return qt_err_set(err, QT_EINVAL,
                    "unknown decay '%s' (accepted: none, weight_decay, l2sp, spd)", text);
}

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
  if (strcmp(text, "goodfit") == 0)
    return qt_err_set(err, QT_EINVAL,
                      "goodfit wraps a main optimizer: it is the run spec's goodfit flag "
                      "(qt_run_spec_set opt goodfit), not an optimizer kind");
  if (strcmp(text, "adamp") == 0 || strcmp(text, "sgdp") == 0)
    return qt_err_set(err, QT_ENOTIMPL, "optimizer '%s' is not implemented yet", text);
  return qt_err_set(err, QT_EINVAL, "unknown optimizer '%s' (accepted: sgd, momentum, adam, adamw)",
                    text);
}

qt_optim_params qt_optim_default_params(void) {
  qt_optim_params p;
  p.kind = QT_OPTIM_KIND_ADAMW;
  p.decay = QT_DECAY_KIND_WEIGHT_DECAY;
  p.sp_reg = 0.0;
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
  if ((int)p->decay < 0 || p->decay > QT_DECAY_KIND_SPD)
    return qt_err_set(err, QT_EINVAL, "unknown decay kind %d", (int)p->decay);
  if (!isfinite(p->sp_reg) || p->sp_reg < 0.0)
    return qt_err_set(err, QT_EINVAL, "sp_reg must be finite and >= 0, got %g", p->sp_reg);
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

qt_optim_params qt__optim_params_adamw(const qt_adamw_params *hp) {
  qt_optim_params p = qt_optim_default_params(); /* AdamW, decay toward 0 */
  p.lr = hp->lr;
  p.beta1 = hp->beta1;
  p.beta2 = hp->beta2;
  p.eps = hp->eps;
  p.weight_decay = hp->weight_decay;
  return p;
}

int qt__optim_adam_prepare(const char *who, const qt_optim_params *p, double lr, double wd,
                           long step, const float *params, const float *grads, const float *m,
                           const float *v, size_t n, qt__adamw_coefficients *out,
                           float *coupled, qt_err *err) {
  qt_adamw_params hp;
  hp.lr = lr;
  hp.beta1 = p->beta1;
  hp.beta2 = p->beta2;
  hp.eps = p->eps;
  hp.weight_decay = p->kind == QT_OPTIM_KIND_ADAMW ? wd : 0.0;
  *coupled = p->kind == QT_OPTIM_KIND_ADAM ? (float)wd : 0.0f;
  return qt__adamw_prepare(who, params, grads, m, v, n, &hp, step, out, err);
}

/* Adam and AdamW over ranges of a tensor, on the worker threads
 * (qt_cpu_parallel.h). */
typedef struct adam_job {
  float *params, *m, *v;
  const float *grads;
  qt__adamw_coefficients c;
  float coupled;
} adam_job;

static void adam_range(void *job, size_t begin, size_t end, void *scratch) {
  (void)scratch;
  const adam_job *A = job;
  float *params = A->params, *m = A->m, *v = A->v;
  const float *grads = A->grads;
  qt__adamw_coefficients c = A->c;
  float coupled = A->coupled;
  for (size_t i = begin; i < end; i++) {
    float x = params[i];
    float g = grads[i] + coupled * x;
    float m_new = c.beta1 * m[i] + c.one_minus_beta1 * g;
    float v_new = c.beta2 * v[i] + c.one_minus_beta2 * (g * g);
    m[i] = m_new;
    v[i] = v_new;
    float denom = sqrtf(v_new) / c.bias_correction2_sqrt + c.eps;
    params[i] = x - c.decay * x - c.step_size * (m_new / denom);
  }
}

void qt_optim_tensor_step(const qt_optim_params *p, double lr, int decay, long step, float *params,
                          const float *grads, float *state1, float *state2, size_t n) {
  double wd = decay ? qt_optim_zero_decay(p) : 0.0;
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
    qt__adamw_coefficients c;
    float coupled;
    int rc = qt__optim_adam_prepare("qt_optim_tensor_step", p, lr, wd, step, params, grads,
                                    state1, state2, n, &c, &coupled, NULL);
    QT_ASSERT(rc == 0); /* the run checked the parameters */
    adam_job job = {.params = params,
                    .m = state1,
                    .v = state2,
                    .grads = grads,
                    .c = c,
                    .coupled = coupled};
    qt__cpu_parallel_for(n, QT_CPU_VALUES_GRAIN, 0, 0, adam_range, &job);
    return;
  }
  }
  QT_ASSERT(0 && "unknown optimizer kind");
}

double qt_optim_zero_decay(const qt_optim_params *p) {
  return p->decay == QT_DECAY_KIND_WEIGHT_DECAY ? p->weight_decay : 0.0;
}

double qt_optim_l2sp_coefficient(const qt_optim_params *p) {
  return p->sp_reg + (p->decay == QT_DECAY_KIND_L2SP ? p->weight_decay : 0.0);
}

/* ------------------------------------------------------------------------- */
/* L2-SP                                                                      */
/* ------------------------------------------------------------------------- */

double qt_optim_l2sp_penalty(const float *params, const float *ref, size_t n, double c) {
  double sum = 0.0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)params[i] - (ref ? (double)ref[i] : 0.0);
    sum += d * d;
  }
  return c * sum;
}

void qt_optim_l2sp_gradient(float *grads, const float *params, const float *ref, size_t n,
                            double c) {
  float two_c = (float)(2.0 * c);
  if (ref) {
    for (size_t i = 0; i < n; i++) grads[i] += two_c * (params[i] - ref[i]);
  } else {
    for (size_t i = 0; i < n; i++) grads[i] += two_c * params[i];
  }
}

/* ------------------------------------------------------------------------- */
/* Selective Projection Decay                                                 */
/* ------------------------------------------------------------------------- */

void qt_optim_spd_stats(const float *params, const float *grads, const float *ref, size_t n,
                        double stats[2]) {
  double inner = 0.0, gamma_sq = 0.0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)params[i] - (ref ? (double)ref[i] : 0.0);
    inner += (double)grads[i] * d;
    gamma_sq += d * d;
  }
  stats[0] = inner;
  stats[1] = gamma_sq;
}

double qt_optim_spd_project(float *params, const float *ref, size_t n, double lambda,
                            double stats[3]) {
  stats[2] = 0.0;
  double condition = -stats[0];
  if (!(condition < 0.0) || !(lambda > 0.0)) return 0.0;
  double new_sq = 0.0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)params[i] - (ref ? (double)ref[i] : 0.0);
    new_sq += d * d;
  }
  stats[2] = new_sq;
  double gamma_new = sqrt(new_sq), gamma = sqrt(stats[1]);
  /* gamma~ = 0: the step landed on theta0, there is no deviation to
   * project (the reference code would divide 0 by 0 here). */
  if (!(gamma_new > 0.0)) return 0.0;
  double r = (gamma_new - gamma) / gamma_new;
  if (r < 0.0) r = 0.0;
  if (r > 1.0) r = 1.0;
  if (r == 0.0) return 0.0;
  float f = (float)(lambda * r);
  if (ref) {
    for (size_t i = 0; i < n; i++) params[i] -= f * (params[i] - ref[i]);
  } else {
    for (size_t i = 0; i < n; i++) params[i] -= f * params[i];
  }
  return r;
}

double qt_optim_spd_step(const qt_optim_params *p, double lr, long step, float *params,
                         const float *grads, const float *ref, float *state1, float *state2,
                         size_t n) {
  /* The condition and the old radius use theta before the step. */
  double stats[3];
  qt_optim_spd_stats(params, grads, ref, n, stats);
  /* The plain step: SPD replaces every other form of weight decay. */
  qt_optim_params base = *p;
  base.weight_decay = 0.0;
  base.decay = QT_DECAY_KIND_NONE;
  qt_optim_tensor_step(&base, lr, 0, step, params, grads, state1, state2, n);
  return qt_optim_spd_project(params, ref, n, p->weight_decay, stats);
}

/* ------------------------------------------------------------------------- */
/* GOODFIT [RECON]                                                            */
/* ------------------------------------------------------------------------- */

double qt_goodfit_project(float *grads, const float *delta, size_t n) {
  double inner = 0.0, norm_sq = 0.0;
  for (size_t i = 0; i < n; i++) {
    inner += (double)grads[i] * (double)delta[i];
    norm_sq += (double)delta[i] * (double)delta[i];
  }
  if (!(inner < 0.0)) return 0.0;
  double coef = inner / (norm_sq + 1e-12);
  for (size_t i = 0; i < n; i++) grads[i] = (float)((double)grads[i] - coef * (double)delta[i]);
  return coef;
}

/* ------------------------------------------------------------------------- */
/* SFA averaging                                                              */
/* ------------------------------------------------------------------------- */

long qt_sfa_interval(double p, long total_steps) {
  long k = lround(p * (double)total_steps);
  return k < 1 ? 1 : k;
}

int qt_sfa_due(long interval, long total_steps, long step) {
  if (step < 1 || interval < 1) return 0;
  return step % interval == 0 || step == total_steps;
}

void qt_sfa_average(float *params, const float *ref, size_t n, double beta) {
  float keep = (float)(1.0 - beta), pull = (float)beta;
  if (ref) {
    for (size_t i = 0; i < n; i++) params[i] = keep * params[i] + pull * ref[i];
  } else {
    for (size_t i = 0; i < n; i++) params[i] = keep * params[i];
  }
}

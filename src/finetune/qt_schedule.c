/*
 * qt_schedule.c - per-epoch learning-rate schedules with linear warmup, as
 * timm's schedulers stepped once per epoch (see qt_finetune.h for the
 * formulas and the [RECON] choice for multistep milestones).
 */
#include <math.h>
#include <string.h>
#include <strings.h>

#include "finetune/qt_finetune.h"

static const char *const schedule_names[] = {"none",      "constant",  "cosine",
                                             "step",      "multistep", "plateau"};

const char *qt_schedule_kind_name(qt_schedule_kind kind) {
  if ((int)kind < 0 || (size_t)kind >= sizeof schedule_names / sizeof schedule_names[0])
    return "unknown";
  return schedule_names[kind];
}

int qt_schedule_kind_parse(const char *text, qt_schedule_kind *out, qt_err *err) {
  if (!text || !out) return qt_err_set(err, QT_EINVAL, "qt_schedule_kind_parse: NULL argument");
  if (strcmp(text, "None") == 0) {
    *out = QT_SCHEDULE_KIND_NONE;
    return 0;
  }
  for (size_t i = 0; i < sizeof schedule_names / sizeof schedule_names[0]; i++) {
    if (strcmp(text, schedule_names[i]) == 0) {
      *out = (qt_schedule_kind)i;
      return 0;
    }
  }
  return qt_err_set(err, QT_EINVAL,
                    "unknown schedule '%s' (accepted: none, constant, cosine, step, multistep, "
                    "plateau)",
                    text);
}

qt_schedule_params qt_schedule_default_params(void) {
  qt_schedule_params p;
  memset(&p, 0, sizeof p);
  p.kind = QT_SCHEDULE_KIND_COSINE;
  p.epochs = 50;
  p.min_lr = 0.0;
  p.warmup_epochs = 0;
  p.warmup_lr = 0.0;
  p.decay_rate = 0.1;
  p.decay_epochs = 10;
  p.n_milestones = 0;
  p.patience_epochs = 2;
  return p;
}

int qt_schedule_params_check(const qt_schedule_params *p, qt_err *err) {
  if (!p) return qt_err_set(err, QT_EINVAL, "schedule parameters are NULL");
  if ((int)p->kind < 0 || p->kind > QT_SCHEDULE_KIND_PLATEAU)
    return qt_err_set(err, QT_EINVAL, "unknown schedule kind %d", (int)p->kind);
  if (p->epochs < 1) return qt_err_set(err, QT_EINVAL, "epochs must be >= 1, got %ld", p->epochs);
  if (!isfinite(p->min_lr) || p->min_lr < 0.0)
    return qt_err_set(err, QT_EINVAL, "min_lr must be finite and >= 0, got %g", p->min_lr);
  if (p->warmup_epochs < 0)
    return qt_err_set(err, QT_EINVAL, "warmup_epochs must be >= 0, got %ld", p->warmup_epochs);
  if (!isfinite(p->warmup_lr) || p->warmup_lr < 0.0)
    return qt_err_set(err, QT_EINVAL, "warmup_lr must be finite and >= 0, got %g", p->warmup_lr);
  if (!isfinite(p->decay_rate) || p->decay_rate <= 0.0 || p->decay_rate > 1.0)
    return qt_err_set(err, QT_EINVAL, "decay_rate must be in (0, 1], got %g", p->decay_rate);
  if (p->decay_epochs < 1)
    return qt_err_set(err, QT_EINVAL, "decay_epochs must be >= 1, got %ld", p->decay_epochs);
  if (p->n_milestones > QT_SCHEDULE_MAX_MILESTONES)
    return qt_err_set(err, QT_EINVAL, "at most %d milestones", QT_SCHEDULE_MAX_MILESTONES);
  for (size_t i = 0; i < p->n_milestones; i++) {
    if (p->milestones[i] < 1 || (i > 0 && p->milestones[i] <= p->milestones[i - 1]))
      return qt_err_set(err, QT_EINVAL, "milestones must be increasing and >= 1");
  }
  if (p->patience_epochs < 0)
    return qt_err_set(err, QT_EINVAL, "patience_epochs must be >= 0, got %ld",
                      p->patience_epochs);
  return 0;
}

void qt_schedule_plateau_init(qt_schedule_plateau *state) {
  state->best = -INFINITY;
  state->bad = 0;
  state->factor = 1.0;
}

void qt_schedule_plateau_update(const qt_schedule_params *p, qt_schedule_plateau *state,
                                long epoch, double score) {
  if (p->kind != QT_SCHEDULE_KIND_PLATEAU || epoch < p->warmup_epochs) return;
  /* torch's ReduceLROnPlateau, mode max, threshold_mode rel, 1e-4. */
  if (isfinite(score) && (state->best == -INFINITY || score > state->best * (1.0 + 1e-4))) {
    state->best = score;
    state->bad = 0;
    return;
  }
  state->bad++;
  if (state->bad > p->patience_epochs) {
    state->factor *= p->decay_rate;
    state->bad = 0;
  }
}

double qt_schedule_lr(const qt_schedule_params *p, double lr, long epoch,
                      const qt_schedule_plateau *state) {
  if (epoch < p->warmup_epochs) {
    return p->warmup_lr + (double)epoch * (lr - p->warmup_lr) / (double)p->warmup_epochs;
  }
  long t = epoch;
  switch (p->kind) {
  case QT_SCHEDULE_KIND_NONE:
  case QT_SCHEDULE_KIND_CONSTANT:
    return lr;
  case QT_SCHEDULE_KIND_COSINE:
    if (t >= p->epochs) return p->min_lr;
    return p->min_lr + 0.5 * (lr - p->min_lr) * (1.0 + cos(M_PI * (double)t / (double)p->epochs));
  case QT_SCHEDULE_KIND_STEP:
    return lr * pow(p->decay_rate, (double)(t / p->decay_epochs));
  case QT_SCHEDULE_KIND_MULTISTEP: {
    long passed = 0;
    if (p->n_milestones == 0) {
      passed = t >= p->decay_epochs;
    } else {
      for (size_t i = 0; i < p->n_milestones; i++) passed += t >= p->milestones[i];
    }
    return lr * pow(p->decay_rate, (double)passed);
  }
  case QT_SCHEDULE_KIND_PLATEAU: {
    double value = lr * (state ? state->factor : 1.0);
    return value < p->min_lr ? p->min_lr : value;
  }
  }
  return lr;
}

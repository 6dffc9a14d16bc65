/*
 * qt_run.c - the epoch-step run API of the engine: one model, one pipeline
 * configuration, advanced one epoch per call, with checkpoint and resume
 * (see "Optimizers, schedules and the epoch-step run API" in
 * qt_finetune.h for the semantics; this file holds the bookkeeping).
 *
 * Determinism. Everything random in an epoch comes from streams derived
 * from (seed, epoch, position) by the batch iterator, the new head from
 * the seed alone, so the state to save is the parameters, the optimizer
 * state, the step counters, the plateau state and the epoch counter.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "finetune/qt_finetune.h"

#define RUN_FORMAT "qtune-run"
#define RUN_VERSION "1"

/* Where a tensor sits in the layer structure of a ViT. */
typedef struct run_tensor {
  int layer;  /* layer-decay id: 0 stem, i + 1 for blocks.i, depth + 1 norm and head */
  int unit;   /* freezing unit: 0 stem, i + 1 for blocks.i, depth for the final norm */
  int head;   /* 1 for head.weight / head.bias: always trainable */
  long reach; /* the qt_vit_set_backward_from value its gradient needs:
                 0 stem, i for blocks.i, depth for the final norm and head */
  float *s1;  /* (numel) momentum buffer or Adam's first moment; NULL until trained */
  float *s2;  /* (numel) Adam's second moment; NULL until trained or for (momentum) SGD */
  long steps; /* optimizer steps taken on this tensor */
} run_tensor;

struct qt_run {
  qt_run_spec spec;         /* copy; spec.checkpoint points at checkpoint below */
  char *checkpoint;         /* owned copy of the checkpoint path */
  qt_vit_t *vit;
  size_t n_tensors;
  run_tensor *tensors;      /* (n_tensors) in qt_vit_tensor_at order */
  unsigned char *trainable; /* (n_tensors) the mask of the current / last epoch */
  long depth;
  qt_preprocess_params pre;
  qt_augment_params aug;
  qt_batch_iter_t *train_it;
  qt_batch_iter_t *val_it;
  qt_batch_iter_t *test_it; /* NULL when the test split is absent or empty */
  long done;                /* epochs completed */
  double best;              /* best validation score, NaN before the first epoch */
  qt_schedule_plateau plateau;
  int diverged;
  qt_rng_t *root_rng;       /* the seed's stream: parent of the per-epoch dropout streams */
  char fingerprint[17];     /* hex FNV-1a of the training values */
};

/* ------------------------------------------------------------------------- */
/* Spec                                                                       */
/* ------------------------------------------------------------------------- */

qt_run_spec qt_run_default_spec(void) {
  qt_run_spec s;
  memset(&s, 0, sizeof s);
  s.checkpoint = NULL;
  s.family = QT_MODEL_FAMILY_VIT;
  s.heads = 0;
  s.image_size = 0;
  const double mean[3] = {0.485, 0.456, 0.406}, std[3] = {0.229, 0.224, 0.225};
  memcpy(s.mean, mean, sizeof mean);
  memcpy(s.std, std, sizeof std);
  s.data = NULL;
  s.epochs = 10;
  s.optim = qt_optim_default_params();
  s.schedule = qt_schedule_default_params();
  s.batch_size = 32;
  s.pct_to_freeze = 0.0;
  s.linear_probing = 0;
  s.data_augmentation = QT_AUTO_AUGMENT_TRIVIAL;
  s.ra_num_ops = 2;
  s.ra_magnitude = 9;
  s.mixup = 0.0;
  s.cutmix = 0.0;
  s.mixup_prob = 1.0;
  s.smoothing = 0.1;
  s.drop = 0.0;
  s.seed = 0;
  s.threads = 1;
  return s;
}

static int parse_number(const char *name, const char *text, double *out, qt_err *err) {
  char *end = NULL;
  errno = 0;
  double v = strtod(text, &end);
  if (end == text || *end != '\0' || errno == ERANGE || !isfinite(v))
    return qt_err_set(err, QT_EINVAL, "%s: '%s' is not a finite number", name, text);
  *out = v;
  return 0;
}

static int parse_whole(const char *name, const char *text, long *out, qt_err *err) {
  double v;
  int rc = parse_number(name, text, &v, err);
  if (rc < 0) return rc;
  if (v != floor(v) || fabs(v) > 1e12)
    return qt_err_set(err, QT_EINVAL, "%s: '%s' is not a whole number", name, text);
  *out = (long)v;
  return 0;
}

static int parse_bool(const char *name, const char *text, int *out, qt_err *err) {
  static const char *const yes[] = {"true", "True", "yes", "on", "1"};
  static const char *const no[] = {"false", "False", "no", "off", "0"};
  for (size_t i = 0; i < 5; i++) {
    if (strcmp(text, yes[i]) == 0) return *out = 1, 0;
    if (strcmp(text, no[i]) == 0) return *out = 0, 0;
  }
  return qt_err_set(err, QT_EINVAL, "%s: '%s' is not a boolean", name, text);
}

static int is_none(const char *text) {
  return strcmp(text, "none") == 0 || strcmp(text, "None") == 0;
}

int qt_run_spec_set(qt_run_spec *spec, const char *name, const char *value, qt_err *err) {
  if (!spec || !name || !value) return qt_err_set(err, QT_EINVAL, "qt_run_spec_set: NULL argument");
  double x = 0.0;
  long k = 0;
  int b = 0, rc = 0;
#define NUMBER(field)                                                                            \
  do {                                                                                           \
    if ((rc = parse_number(name, value, &x, err)) < 0) return rc;                                \
    field = x;                                                                                   \
    return 0;                                                                                    \
  } while (0)
#define WHOLE(field)                                                                             \
  do {                                                                                           \
    if ((rc = parse_whole(name, value, &k, err)) < 0) return rc;                                 \
    field = k;                                                                                   \
    return 0;                                                                                    \
  } while (0)

  if (strcmp(name, "model") == 0) return 0;
  if (strcmp(name, "opt") == 0) return qt_optim_kind_parse(value, &spec->optim.kind, err);
  if (strcmp(name, "lr") == 0) NUMBER(spec->optim.lr);
  if (strcmp(name, "momentum") == 0) NUMBER(spec->optim.momentum);
  if (strcmp(name, "eps") == 0 || strcmp(name, "opt_eps") == 0) NUMBER(spec->optim.eps);
  if (strcmp(name, "weight_decay") == 0 || strcmp(name, "decay_strength") == 0)
    NUMBER(spec->optim.weight_decay);
  if (strcmp(name, "clip_grad") == 0) {
    if (is_none(value)) return spec->optim.clip_grad = 0.0, 0;
    NUMBER(spec->optim.clip_grad);
  }
  if (strcmp(name, "layer_decay") == 0) {
    if (is_none(value)) return spec->optim.layer_decay = 1.0, 0;
    NUMBER(spec->optim.layer_decay);
  }
  if (strcmp(name, "opt_betas") == 0) {
    double b1, b2;
    char tail;
    if (sscanf(value, " [ %lf , %lf ] %c", &b1, &b2, &tail) != 2 &&
        sscanf(value, " %lf %lf %c", &b1, &b2, &tail) != 2)
      return qt_err_set(err, QT_EINVAL, "opt_betas: '%s' is not '[beta1, beta2]'", value);
    spec->optim.beta1 = b1;
    spec->optim.beta2 = b2;
    return 0;
  }
  if (strcmp(name, "decay") == 0) {
    if (is_none(value)) return spec->optim.weight_decay = 0.0, 0;
    if (strcmp(value, "weight_decay") == 0) return 0;
    if (strcmp(value, "l2sp") == 0 || strcmp(value, "spd") == 0)
      return qt_err_set(err, QT_ENOTIMPL, "decay '%s' is not implemented yet", value);
    return qt_err_set(err, QT_EINVAL, "decay: unknown value '%s'", value);
  }
  if (strcmp(name, "sched") == 0) return qt_schedule_kind_parse(value, &spec->schedule.kind, err);
  if (strcmp(name, "warmup_epochs") == 0) WHOLE(spec->schedule.warmup_epochs);
  if (strcmp(name, "warmup_lr") == 0) NUMBER(spec->schedule.warmup_lr);
  if (strcmp(name, "min_lr") == 0) NUMBER(spec->schedule.min_lr);
  if (strcmp(name, "decay_rate") == 0) NUMBER(spec->schedule.decay_rate);
  if (strcmp(name, "decay_epochs") == 0) WHOLE(spec->schedule.decay_epochs);
  if (strcmp(name, "patience_epochs") == 0) WHOLE(spec->schedule.patience_epochs);
  if (strcmp(name, "epochs") == 0) WHOLE(spec->epochs);
  if (strcmp(name, "batch_size") == 0) {
    if ((rc = parse_whole(name, value, &k, err)) < 0) return rc;
    if (k < 1) return qt_err_set(err, QT_EINVAL, "batch_size must be >= 1, got %ld", k);
    spec->batch_size = (size_t)k;
    return 0;
  }
  if (strcmp(name, "pct_to_freeze") == 0) NUMBER(spec->pct_to_freeze);
  if (strcmp(name, "linear_probing") == 0) {
    if ((rc = parse_bool(name, value, &b, err)) < 0) return rc;
    spec->linear_probing = b;
    return 0;
  }
  if (strcmp(name, "data_augmentation") == 0)
    return qt_auto_augment_parse(value, &spec->data_augmentation, err);
  if (strcmp(name, "ra_num_ops") == 0) {
    if ((rc = parse_whole(name, value, &k, err)) < 0) return rc;
    spec->ra_num_ops = (int)k;
    return 0;
  }
  if (strcmp(name, "ra_magnitude") == 0) {
    if ((rc = parse_whole(name, value, &k, err)) < 0) return rc;
    spec->ra_magnitude = (int)k;
    return 0;
  }
  if (strcmp(name, "mixup") == 0) NUMBER(spec->mixup);
  if (strcmp(name, "cutmix") == 0) NUMBER(spec->cutmix);
  if (strcmp(name, "mixup_prob") == 0) NUMBER(spec->mixup_prob);
  if (strcmp(name, "smoothing") == 0) NUMBER(spec->smoothing);
  if (strcmp(name, "drop") == 0) NUMBER(spec->drop);
  if (strcmp(name, "sfa") == 0) {
    if ((rc = parse_bool(name, value, &b, err)) < 0) return rc;
    if (b) return qt_err_set(err, QT_ENOTIMPL, "sfa (averaging) is not implemented yet");
    return 0;
  }
  if (strcmp(name, "adapter") == 0) {
    if (is_none(value)) return 0;
    return qt_err_set(err, QT_ENOTIMPL, "adapter '%s' is not implemented yet", value);
  }
  /* Quick-Tune's space: mixed precision does not apply (float32 always);
   * its regularizers are accepted at 0 only. */
  if (strcmp(name, "amp") == 0) return parse_bool(name, value, &b, err);
  if (strcmp(name, "stoch_norm") == 0) {
    if ((rc = parse_bool(name, value, &b, err)) < 0) return rc;
    if (b) return qt_err_set(err, QT_ENOTIMPL, "stoch_norm is not implemented yet");
    return 0;
  }
  if (strcmp(name, "bss_reg") == 0 || strcmp(name, "sp_reg") == 0 ||
      strcmp(name, "delta_reg") == 0 || strcmp(name, "cotuning_reg") == 0) {
    if ((rc = parse_number(name, value, &x, err)) < 0) return rc;
    if (x != 0.0) return qt_err_set(err, QT_ENOTIMPL, "%s = %s is not implemented yet", name, value);
    return 0;
  }
  if (strcmp(name, "auto_augment") == 0) {
    if (is_none(value)) return 0;
    return qt_err_set(err, QT_ENOTIMPL, "AutoAugment policy '%s' is not implemented yet", value);
  }
  if (strncmp(name, "goodfit_", 8) == 0 || strncmp(name, "sfa_", 4) == 0 ||
      strcmp(name, "adapter_rank") == 0)
    return 0;
#undef NUMBER
#undef WHOLE
  return qt_err_set(err, QT_ENOENT, "unknown pipeline hyperparameter '%s'", name);
}

static int check_spec(const qt_run_spec *s, qt_err *err) {
  if (!s->checkpoint) return qt_err_set(err, QT_EINVAL, "run spec: no checkpoint");
  if (!qt_model_family_is_vit(s->family))
    return qt_err_set(err, QT_ENOTIMPL, "run spec: family '%s' is not supported by runs yet",
                      qt_model_family_name(s->family));
  if (s->heads < 1) return qt_err_set(err, QT_EINVAL, "run spec: heads must be set");
  if (!s->data || !s->data->train || !s->data->val)
    return qt_err_set(err, QT_EINVAL, "run spec: no data");
  if (s->data->train->kind != QT_DATASET_KIND_IMAGE)
    return qt_err_set(err, QT_ENOTIMPL, "run spec: tabular data needs the MLP family (not yet)");
  if (s->data->train->n == 0) return qt_err_set(err, QT_ESCHEMA, "run spec: empty training set");
  if (s->data->val->n == 0)
    return qt_err_set(err, QT_ESCHEMA, "run spec: empty validation set (the score needs one)");
  if (s->epochs < 1) return qt_err_set(err, QT_EINVAL, "run spec: epochs must be >= 1");
  if (s->batch_size < 1) return qt_err_set(err, QT_EINVAL, "run spec: batch_size must be >= 1");
  if (!(s->pct_to_freeze >= 0.0 && s->pct_to_freeze <= 1.0))
    return qt_err_set(err, QT_EINVAL, "run spec: pct_to_freeze must be in [0, 1], got %g",
                      s->pct_to_freeze);
  if (!(s->smoothing >= 0.0 && s->smoothing < 1.0))
    return qt_err_set(err, QT_EINVAL, "run spec: smoothing must be in [0, 1), got %g",
                      s->smoothing);
  if (!(s->mixup >= 0.0) || !(s->cutmix >= 0.0) || !(s->mixup_prob >= 0.0 && s->mixup_prob <= 1.0))
    return qt_err_set(err, QT_EINVAL, "run spec: mixup and cutmix must be >= 0, mixup_prob in "
                                      "[0, 1]");
  if (!(s->drop >= 0.0 && s->drop < 1.0))
    return qt_err_set(err, QT_EINVAL, "run spec: drop must be in [0, 1), got %g", s->drop);
  for (int c = 0; c < 3; c++) {
    if (!(s->std[c] > 0.0) || !isfinite(s->mean[c]))
      return qt_err_set(err, QT_EINVAL, "run spec: bad mean/std of channel %d", c);
  }
  int rc = qt_optim_params_check(&s->optim, err);
  if (rc < 0) return qt_err_prefix(err, rc, "run spec");
  qt_schedule_params sp = s->schedule;
  sp.epochs = s->epochs;
  rc = qt_schedule_params_check(&sp, err);
  if (rc < 0) return qt_err_prefix(err, rc, "run spec");
  return 0;
}

/* FNV-1a over the text of every value that changes the numbers. */
static void spec_fingerprint(const qt_run_spec *s, long num_classes, char out[17]) {
  char text[2048];
  const qt_optim_params *o = &s->optim;
  const qt_schedule_params *p = &s->schedule;
  int len = snprintf(
      text, sizeof text,
      "fam=%d heads=%ld img=%ld mean=%.17g,%.17g,%.17g std=%.17g,%.17g,%.17g classes=%ld "
      "ntrain=%zu nval=%zu epochs=%ld opt=%d lr=%.17g mom=%.17g b=%.17g,%.17g eps=%.17g "
      "wd=%.17g clip=%.17g ld=%.17g sched=%d min=%.17g wu=%ld wlr=%.17g dr=%.17g de=%ld "
      "pat=%ld bs=%zu pct=%.17g lp=%d aa=%d ra=%d,%d mix=%.17g,%.17g,%.17g sm=%.17g drop=%.17g "
      "seed=%llu",
      (int)s->family, s->heads, s->image_size, s->mean[0], s->mean[1], s->mean[2], s->std[0],
      s->std[1], s->std[2], num_classes, s->data->train->n, s->data->val->n, s->epochs,
      (int)o->kind, o->lr, o->momentum, o->beta1, o->beta2, o->eps, o->weight_decay,
      o->clip_grad, o->layer_decay, (int)p->kind, p->min_lr, p->warmup_epochs, p->warmup_lr,
      p->decay_rate, p->decay_epochs, p->patience_epochs, s->batch_size, s->pct_to_freeze,
      s->linear_probing, (int)s->data_augmentation, s->ra_num_ops, s->ra_magnitude, s->mixup,
      s->cutmix, s->mixup_prob, s->smoothing, s->drop, (unsigned long long)s->seed);
  size_t n = len < 0 ? 0 : ((size_t)len < sizeof text ? (size_t)len : sizeof text - 1);
  for (size_t i = 0; i < p->n_milestones && n + 24 < sizeof text; i++)
    n += (size_t)snprintf(text + n, sizeof text - n, " ms=%ld", p->milestones[i]);
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)text[i];
    h *= 1099511628211ull;
  }
  snprintf(out, 17, "%016llx", (unsigned long long)h);
}

/* ------------------------------------------------------------------------- */
/* Init and free                                                              */
/* ------------------------------------------------------------------------- */

static void classify(const char *name, long depth, run_tensor *t) {
  int block = -1;
  if (strncmp(name, "blocks.", 7) == 0) block = atoi(name + 7);
  t->head = strncmp(name, "head.", 5) == 0;
  if (block >= 0) {
    t->layer = block + 1;
    t->unit = block + 1;
    t->reach = block;
  } else if (t->head || strncmp(name, "norm.", 5) == 0) {
    t->layer = (int)depth + 1;
    t->unit = (int)depth;
    t->reach = depth;
  } else {
    /* patch_embed, cls_token, pos_embed: the stem. */
    t->layer = 0;
    t->unit = 0;
    t->reach = 0;
  }
}

void qt_run_free(qt_run_t *run) {
  if (!run) return;
  qt_batch_iter_free(run->train_it);
  qt_batch_iter_free(run->val_it);
  qt_batch_iter_free(run->test_it);
  if (run->tensors) {
    for (size_t i = 0; i < run->n_tensors; i++) {
      free(run->tensors[i].s1);
      free(run->tensors[i].s2);
    }
  }
  free(run->tensors);
  free(run->trainable);
  qt_vit_free(run->vit);
  qt_rng_free(run->root_rng);
  free(run->checkpoint);
  free(run);
}

int qt_run_init(const qt_run_spec *spec, qt_run_t **out, qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_run_init: out is NULL");
  *out = NULL;
  if (!spec) return qt_err_set(err, QT_EINVAL, "qt_run_init: spec is NULL");
  int rc = check_spec(spec, err);
  if (rc < 0) return rc;

  qt_run_t *run = calloc(1, sizeof *run);
  if (!run) return qt_err_set(err, QT_ENOMEM, "out of memory for a run");
  run->spec = *spec;
  run->spec.schedule.epochs = spec->epochs;
  run->checkpoint = strdup(spec->checkpoint);
  if (!run->checkpoint) {
    qt_run_free(run);
    return qt_err_set(err, QT_ENOMEM, "out of memory for a run");
  }
  run->spec.checkpoint = run->checkpoint;
  run->best = NAN;
  qt_schedule_plateau_init(&run->plateau);

  /* The new head draws from its own stream of the seed. */
  qt_rng_t *root = NULL, *head_rng = NULL;
  rc = qt_rng_init(&root, spec->seed, err);
  if (rc == 0) rc = qt_rng_fork(root, 0x68656164u /* "head" */, &head_rng, err);
  if (rc == 0) {
    qt_vit_load_params lp = qt_vit_default_load_params();
    lp.family = spec->family;
    lp.heads = spec->heads;
    lp.image_size = spec->image_size;
    lp.num_classes = (long)spec->data->train->n_classes;
    lp.max_batch = spec->batch_size;
    lp.rng = head_rng;
    rc = qt_vit_load(spec->checkpoint, &lp, &run->vit, err);
  }
  qt_rng_free(head_rng);
  run->root_rng = root;
  if (rc < 0) {
    qt_run_free(run);
    return rc;
  }

  const qt_vit_config *vc = qt_vit_get_config(run->vit);
  run->depth = vc->depth;
  run->n_tensors = qt_vit_tensor_count(run->vit);
  run->tensors = calloc(run->n_tensors, sizeof *run->tensors);
  run->trainable = calloc(run->n_tensors, 1);
  if (!run->tensors || !run->trainable) {
    qt_run_free(run);
    return qt_err_set(err, QT_ENOMEM, "out of memory for a run");
  }
  for (size_t i = 0; i < run->n_tensors; i++) {
    qt_vit_tensor t;
    qt_vit_tensor_at(run->vit, i, &t);
    classify(t.name, run->depth, &run->tensors[i]);
  }

  run->pre = qt_preprocess_default_params();
  run->pre.image_size = (size_t)vc->image_size;
  run->pre.channels = 3;
  run->pre.interpolation = QT_INTERPOLATION_BICUBIC;
  memcpy(run->pre.mean, spec->mean, sizeof run->pre.mean);
  memcpy(run->pre.std, spec->std, sizeof run->pre.std);

  run->aug = qt_augment_default_params();
  run->aug.auto_augment = spec->data_augmentation;
  run->aug.rand_num_ops = spec->ra_num_ops;
  run->aug.rand_magnitude = spec->ra_magnitude;
  run->aug.mixup_alpha = spec->mixup;
  run->aug.cutmix_alpha = spec->cutmix;
  run->aug.mix_prob = spec->mixup_prob;
  run->aug.label_smoothing = spec->smoothing;

  qt_batch_params bp = qt_batch_default_params();
  bp.batch_size = spec->batch_size;
  bp.shuffle = 1;
  bp.drop_last = 0;
  bp.augment = 1;
  bp.seed = spec->seed;
  bp.threads = spec->threads < 1 ? 1 : spec->threads;
  rc = qt_batch_iter_init(spec->data->train, &run->pre, &run->aug, &bp, &run->train_it, err);
  if (rc == 0) {
    bp.shuffle = 0;
    bp.augment = 0;
    rc = qt_batch_iter_init(spec->data->val, &run->pre, &run->aug, &bp, &run->val_it, err);
  }
  if (rc == 0 && spec->data->test && spec->data->test->n > 0)
    rc = qt_batch_iter_init(spec->data->test, &run->pre, &run->aug, &bp, &run->test_it, err);
  if (rc < 0) {
    qt_run_free(run);
    return qt_err_prefix(err, rc, "run data");
  }
  spec_fingerprint(&run->spec, (long)spec->data->train->n_classes, run->fingerprint);
  *out = run;
  return 0;
}

long qt_run_epochs_done(const qt_run_t *run) { return run ? run->done : 0; }
double qt_run_best_score(const qt_run_t *run) { return run ? run->best : NAN; }
qt_vit_t *qt_run_model(qt_run_t *run) { return run ? run->vit : NULL; }

/* ------------------------------------------------------------------------- */
/* One epoch                                                                  */
/* ------------------------------------------------------------------------- */

/* The trainable mask of epoch `epoch` (from 0) into mask (n_tensors);
 * returns the number of trainable parameters. */
static size_t trainable_mask(const qt_run_t *run, long epoch, unsigned char *mask) {
  double pct = run->spec.pct_to_freeze;
  if (run->spec.linear_probing && epoch < run->spec.epochs / 2) pct = 1.0;
  size_t count = 0;
  for (size_t i = 0; i < run->n_tensors; i++) {
    const run_tensor *t = &run->tensors[i];
    int on = t->head || pct <= 0.0 || (double)t->unit / (double)run->depth > pct;
    mask[i] = (unsigned char)on;
    if (on) {
      qt_vit_tensor vt;
      qt_vit_tensor_at(run->vit, i, &vt);
      count += vt.numel;
    }
  }
  return count;
}

static int ensure_state(qt_run_t *run, size_t i, size_t numel, qt_err *err) {
  run_tensor *t = &run->tensors[i];
  qt_optim_kind kind = run->spec.optim.kind;
  if (kind != QT_OPTIM_KIND_SGD && !t->s1) {
    t->s1 = calloc(numel ? numel : 1, sizeof *t->s1);
    if (!t->s1) return qt_err_set(err, QT_ENOMEM, "out of memory for optimizer state");
  }
  if ((kind == QT_OPTIM_KIND_ADAM || kind == QT_OPTIM_KIND_ADAMW) && !t->s2) {
    t->s2 = calloc(numel ? numel : 1, sizeof *t->s2);
    if (!t->s2) return qt_err_set(err, QT_ENOMEM, "out of memory for optimizer state");
  }
  return 0;
}

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int optimizer_step(qt_run_t *run, double lr) {
  const qt_optim_params *o = &run->spec.optim;
  double clip = 1.0;
  if (o->clip_grad > 0.0) {
    double sum = 0.0;
    for (size_t i = 0; i < run->n_tensors; i++) {
      if (!run->trainable[i]) continue;
      qt_vit_tensor vt;
      qt_vit_tensor_at(run->vit, i, &vt);
      for (size_t j = 0; j < vt.numel; j++) sum += (double)vt.grad[j] * (double)vt.grad[j];
    }
    double norm = sqrt(sum);
    double coef = o->clip_grad / (norm + 1e-6);
    if (coef < 1.0) clip = coef;
  }
  for (size_t i = 0; i < run->n_tensors; i++) {
    if (!run->trainable[i]) continue;
    run_tensor *t = &run->tensors[i];
    qt_vit_tensor vt;
    qt_vit_tensor_at(run->vit, i, &vt);
    if (clip < 1.0) {
      float c = (float)clip;
      for (size_t j = 0; j < vt.numel; j++) vt.grad[j] *= c;
    }
    double scale = pow(o->layer_decay, (double)(run->depth + 1 - t->layer));
    t->steps++;
    qt_optim_tensor_step(o, lr * scale, vt.decay, t->steps, vt.data, vt.grad, t->s1, t->s2,
                         vt.numel);
  }
  return 0;
}

static int evaluate(qt_run_t *run, qt_batch_iter_t *it, double *top1, double *top5, double *loss,
                    qt_err *err) {
  int rc = qt_batch_iter_start(it, 0, 0, err);
  if (rc < 0) return rc;
  size_t n = 0, hit1 = 0, hit5 = 0;
  double loss_sum = 0.0;
  qt_batch batch;
  while ((rc = qt_batch_iter_next(it, &batch, err)) == 1) {
    rc = qt_vit_forward(run->vit, batch.inputs, batch.size, err);
    if (rc < 0) return rc;
    double l;
    rc = qt_vit_loss(run->vit, (const int *)batch.labels, NULL, 0.0, &l, err);
    if (rc < 0) return rc;
    loss_sum += l * (double)batch.size;
    const float *logits = qt_vit_logits(run->vit);
    for (size_t b = 0; b < batch.size; b++) {
      const float *row = logits + b * batch.n_classes;
      float mine = row[batch.labels[b]];
      size_t above = 0;
      for (size_t c = 0; c < batch.n_classes; c++) {
        if (row[c] > mine || (row[c] == mine && c < (size_t)batch.labels[b])) above++;
      }
      hit1 += above < 1;
      hit5 += above < 5;
    }
    n += batch.size;
  }
  if (rc < 0) return rc;
  *top1 = n ? (double)hit1 / (double)n : NAN;
  *top5 = (n && run->spec.data->train->n_classes >= 5) ? (double)hit5 / (double)n : NAN;
  *loss = n ? loss_sum / (double)n : NAN;
  return 0;
}

static int train_epoch(qt_run_t *run, long e, qt_run_epoch_result *out, double t0, qt_err *err);

int qt_run_evaluate_test(qt_run_t *run, double *top1, double *top5, double *loss, qt_err *err) {
  if (!run || !top1 || !top5 || !loss)
    return qt_err_set(err, QT_EINVAL, "qt_run_evaluate_test: NULL argument");
  *top1 = *top5 = *loss = NAN;
  if (!run->test_it) return 0;
  return evaluate(run, run->test_it, top1, top5, loss, err);
}

int qt_run_epoch(qt_run_t *run, qt_run_epoch_result *out, qt_err *err) {
  if (!run || !out) return qt_err_set(err, QT_EINVAL, "qt_run_epoch: NULL argument");
  if (run->diverged)
    return qt_err_set(err, QT_EINVAL, "qt_run_epoch: the run diverged; it cannot continue");
  memset(out, 0, sizeof *out);
  long e = run->done;
  out->epoch = e + 1;
  out->status = QT_RUN_STATUS_OK;
  out->score = out->top5 = out->val_loss = NAN;
  double t0 = now_seconds();

  out->trainable = trainable_mask(run, e, run->trainable);
  for (size_t i = 0; i < run->n_tensors; i++) {
    if (!run->trainable[i]) continue;
    qt_vit_tensor vt;
    qt_vit_tensor_at(run->vit, i, &vt);
    int rc = ensure_state(run, i, vt.numel, err);
    if (rc < 0) return rc;
  }
  /* The backward pass stops at the lowest trainable block. */
  long lowest = run->depth;
  for (size_t i = 0; i < run->n_tensors; i++) {
    if (run->trainable[i] && run->tensors[i].reach < lowest) lowest = run->tensors[i].reach;
  }
  qt_vit_set_backward_from(run->vit, lowest);
  double lr = qt_schedule_lr(&run->spec.schedule, run->spec.optim.lr, e, &run->plateau);
  out->lr = lr;

  /* Head dropout draws from a stream of (seed, epoch), so a resumed epoch
   * draws the same masks. */
  qt_rng_t *drop_rng = NULL;
  int rc = 0;
  if (run->spec.drop > 0.0) {
    rc = qt_rng_fork(run->root_rng, 0x64726f7000000000ull + (uint64_t)e, &drop_rng, err);
    if (rc == 0) rc = qt_vit_set_head_dropout(run->vit, run->spec.drop, drop_rng, err);
    if (rc < 0) {
      qt_rng_free(drop_rng);
      return rc;
    }
  }
  rc = train_epoch(run, e, out, t0, err);
  qt_vit_set_head_dropout(run->vit, 0.0, NULL, NULL);
  qt_rng_free(drop_rng);
  if (rc < 0 || out->status == QT_RUN_STATUS_DIVERGED) return rc;

  rc = evaluate(run, run->val_it, &out->score, &out->top5, &out->val_loss, err);
  if (rc < 0) return rc;
  out->seconds = now_seconds() - t0;
  if (!isfinite(out->val_loss)) {
    /* Finite training losses but non-finite logits on validation: the
     * parameters blew up in the last step. */
    run->diverged = 1;
    out->status = QT_RUN_STATUS_DIVERGED;
    return 0;
  }
  qt_schedule_plateau_update(&run->spec.schedule, &run->plateau, e, out->score);
  if (isnan(run->best) || out->score > run->best) run->best = out->score;
  run->done = e + 1;
  return 0;
}

/* The training half of an epoch: every batch forward, loss, backward, step. */
static int train_epoch(qt_run_t *run, long e, qt_run_epoch_result *out, double t0, qt_err *err) {
  double lr = out->lr;
  int rc = qt_batch_iter_start(run->train_it, (uint64_t)e, 0, err);
  if (rc < 0) return rc;
  size_t images = 0;
  double loss_sum = 0.0;
  qt_batch batch;
  while ((rc = qt_batch_iter_next(run->train_it, &batch, err)) == 1) {
    rc = qt_vit_forward(run->vit, batch.inputs, batch.size, err);
    if (rc < 0) return rc;
    double loss;
    rc = qt_vit_loss(run->vit, NULL, batch.targets, 0.0, &loss, err);
    if (rc < 0) return rc;
    if (!isfinite(loss)) {
      run->diverged = 1;
      out->status = QT_RUN_STATUS_DIVERGED;
      out->train_loss = loss;
      out->seconds = now_seconds() - t0;
      QT_LOG_WARN("epoch %ld: training loss is %g after %zu images: the run diverged", e + 1,
                  loss, images);
      return 0;
    }
    qt_vit_zero_grad(run->vit);
    rc = qt_vit_backward(run->vit, err);
    if (rc < 0) return rc;
    optimizer_step(run, lr);
    loss_sum += loss * (double)batch.size;
    images += batch.size;
  }
  if (rc < 0) return rc;
  double t_train = now_seconds() - t0;
  out->train_loss = images ? loss_sum / (double)images : NAN;
  out->images_per_s = t_train > 0.0 ? (double)images / t_train : 0.0;
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Save and load                                                              */
/* ------------------------------------------------------------------------- */

/* Optimizer state tensors carry torch's state names: the momentum buffer,
 * or Adam's exp_avg and exp_avg_sq. */
static const char *state_prefix(qt_optim_kind kind, int which) {
  if (which == 1) return "optim.exp_avg_sq.";
  return kind == QT_OPTIM_KIND_MOMENTUM ? "optim.momentum_buffer." : "optim.exp_avg.";
}
#define STEP_PREFIX "optim.step."

int qt_run_save(const qt_run_t *run, const char *path, qt_err *err) {
  if (!run || !path) return qt_err_set(err, QT_EINVAL, "qt_run_save: NULL argument");
  if (run->diverged)
    return qt_err_set(err, QT_EINVAL, "qt_run_save: the run diverged; not overwriting %s", path);
  /* The tensors trained in the last epoch (the first epoch's before any):
   * every other tensor still equals the pretrained checkpoint. */
  unsigned char *mask = malloc(run->n_tensors ? run->n_tensors : 1);
  if (!mask) return qt_err_set(err, QT_ENOMEM, "qt_run_save: out of memory");
  trainable_mask(run, run->done > 0 ? run->done - 1 : 0, mask);

  size_t cap = 3 * run->n_tensors, n = 0, nm = 0;
  qt_safetensors_tensor *tensors = calloc(cap, sizeof *tensors);
  qt_safetensors_pair *meta = calloc(run->n_tensors + 16, sizeof *meta);
  char *names = calloc(3 * run->n_tensors, 256);
  char *values = calloc(run->n_tensors + 16, 64);
  if (!tensors || !meta || !names || !values) {
    free(mask);
    free(tensors);
    free(meta);
    free(names);
    free(values);
    return qt_err_set(err, QT_ENOMEM, "qt_run_save: out of memory");
  }
  size_t name_used = 0, value_used = 0;
#define ADD_META(k, ...)                                                                          \
  do {                                                                                            \
    char *v_ = values + 64 * value_used++;                                                        \
    snprintf(v_, 64, __VA_ARGS__);                                                                \
    meta[nm].key = (k);                                                                           \
    meta[nm].value = v_;                                                                          \
    nm++;                                                                                         \
  } while (0)
  meta[nm].key = "format";
  meta[nm++].value = RUN_FORMAT;
  meta[nm].key = "version";
  meta[nm++].value = RUN_VERSION;
  meta[nm].key = "fingerprint";
  meta[nm++].value = run->fingerprint;
  ADD_META("epoch", "%ld", run->done);
  ADD_META("seed", "%llu", (unsigned long long)run->spec.seed);
  ADD_META("best_score", "%.17g", run->best);
  ADD_META("plateau_best", "%.17g", run->plateau.best);
  ADD_META("plateau_bad", "%ld", run->plateau.bad);
  ADD_META("plateau_factor", "%.17g", run->plateau.factor);
  for (size_t i = 0; i < run->n_tensors; i++) {
    if (!mask[i]) continue;
    const run_tensor *t = &run->tensors[i];
    qt_vit_tensor vt;
    qt_vit_tensor_at(run->vit, i, &vt);
    tensors[n++] = (qt_safetensors_tensor){vt.name, QT_DTYPE_F32, vt.ndim, vt.shape, vt.data, NULL};
    const float *states[2] = {t->s1, t->s2};
    const char *prefixes[2] = {state_prefix(run->spec.optim.kind, 0),
                                state_prefix(run->spec.optim.kind, 1)};
    for (int s = 0; s < 2; s++) {
      if (!states[s] || t->steps == 0) continue;
      char *nm_ = names + 256 * name_used++;
      snprintf(nm_, 256, "%s%s", prefixes[s], vt.name);
      tensors[n++] = (qt_safetensors_tensor){nm_, QT_DTYPE_F32, vt.ndim, vt.shape, states[s], NULL};
    }
    char *key = names + 256 * name_used++;
    snprintf(key, 256, "%s%s", STEP_PREFIX, vt.name);
    ADD_META(key, "%ld", t->steps);
  }
#undef ADD_META
  int rc = qt_safetensors_write(path, tensors, n, meta, nm, err);
  free(mask);
  free(tensors);
  free(meta);
  free(names);
  free(values);
  return rc;
}

static int meta_number(const qt_safetensors_t *st, const char *key, double *out, qt_err *err) {
  const char *v = qt_safetensors_metadata_get(st, key);
  char *end = NULL;
  if (!v) return qt_err_set(err, QT_ESCHEMA, "%s: no metadata '%s'", qt_safetensors_path(st), key);
  double x = strtod(v, &end);
  if (end == v || *end != '\0')
    return qt_err_set(err, QT_ESCHEMA, "%s: metadata '%s' = '%s' is not a number",
                      qt_safetensors_path(st), key, v);
  *out = x;
  return 0;
}

int qt_run_load(const char *path, const qt_run_spec *spec, qt_run_t **out, qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_run_load: out is NULL");
  *out = NULL;
  if (!path || !spec) return qt_err_set(err, QT_EINVAL, "qt_run_load: NULL argument");
  /* Validate the file before the (expensive) model load. */
  qt_safetensors_t *st = NULL;
  int rc = qt_safetensors_open(path, &st, err);
  if (rc < 0) return rc;
  const char *format = qt_safetensors_metadata_get(st, "format");
  const char *version = qt_safetensors_metadata_get(st, "version");
  if (!format || strcmp(format, RUN_FORMAT) != 0 || !version || strcmp(version, RUN_VERSION) != 0) {
    rc = qt_err_set(err, QT_EVERSION,
                    "%s: not a qtune run checkpoint of version " RUN_VERSION
                    " (format '%s', version '%s'); start the run again",
                    path, format ? format : "", version ? version : "");
    qt_safetensors_free(st);
    return rc;
  }
  qt_run_t *run = NULL;
  rc = qt_run_init(spec, &run, err);
  if (rc < 0) {
    qt_safetensors_free(st);
    return rc;
  }
  const char *fp = qt_safetensors_metadata_get(st, "fingerprint");
  if (!fp || strcmp(fp, run->fingerprint) != 0) {
    rc = qt_err_set(err, QT_ESCHEMA,
                    "%s: the checkpoint belongs to another configuration or dataset "
                    "(fingerprint %s, this run %s)",
                    path, fp ? fp : "none", run->fingerprint);
    goto fail;
  }
  double epoch, best, pbest, pbad, pfactor;
  if ((rc = meta_number(st, "epoch", &epoch, err)) < 0 ||
      (rc = meta_number(st, "best_score", &best, err)) < 0 ||
      (rc = meta_number(st, "plateau_best", &pbest, err)) < 0 ||
      (rc = meta_number(st, "plateau_bad", &pbad, err)) < 0 ||
      (rc = meta_number(st, "plateau_factor", &pfactor, err)) < 0)
    goto fail;
  if (epoch < 0 || epoch != floor(epoch)) {
    rc = qt_err_set(err, QT_ESCHEMA, "%s: bad epoch %g", path, epoch);
    goto fail;
  }
  run->done = (long)epoch;
  trainable_mask(run, run->done > 0 ? run->done - 1 : 0, run->trainable);
  size_t expected = 0;
  for (size_t i = 0; i < run->n_tensors; i++) {
    if (!run->trainable[i]) continue;
    run_tensor *t = &run->tensors[i];
    qt_vit_tensor vt;
    qt_vit_tensor_at(run->vit, i, &vt);
    rc = qt_safetensors_read_f32(st, vt.name, vt.data, vt.numel, err);
    if (rc < 0) goto schema;
    expected++;
    char key[256];
    snprintf(key, sizeof key, "%s%s", STEP_PREFIX, vt.name);
    double steps;
    if ((rc = meta_number(st, key, &steps, err)) < 0) goto fail;
    t->steps = (long)steps;
    if (t->steps > 0) {
      if ((rc = ensure_state(run, i, vt.numel, err)) < 0) goto fail;
      float *states[2] = {t->s1, t->s2};
      const char *prefixes[2] = {state_prefix(run->spec.optim.kind, 0),
                                state_prefix(run->spec.optim.kind, 1)};
      for (int s = 0; s < 2; s++) {
        if (!states[s]) continue;
        snprintf(key, sizeof key, "%s%s", prefixes[s], vt.name);
        rc = qt_safetensors_read_f32(st, key, states[s], vt.numel, err);
        if (rc < 0) goto schema;
        expected++;
      }
    }
  }
  if (expected != qt_safetensors_count(st)) {
    rc = qt_err_set(err, QT_ESCHEMA, "%s: %zu tensors, expected %zu for this configuration", path,
                    qt_safetensors_count(st), expected);
    goto fail;
  }
  run->best = best;
  run->plateau.best = pbest;
  run->plateau.bad = (long)pbad;
  run->plateau.factor = pfactor;
  qt_safetensors_free(st);
  *out = run;
  return 0;
schema:
  /* A missing tensor or one of another shape: the file does not fit this
   * configuration. Read failures keep their code. */
  if (rc != QT_EIO && rc != QT_ENOMEM) {
    qt_err_prefix(err, rc, "%s", path);
    if (err) err->code = QT_ESCHEMA;
    rc = QT_ESCHEMA;
  }
fail:
  qt_safetensors_free(st);
  qt_run_free(run);
  return rc;
}

int qt_run_save_weights(const qt_run_t *run, const char *path, qt_err *err) {
  if (!run || !path) return qt_err_set(err, QT_EINVAL, "qt_run_save_weights: NULL argument");
  return qt_vit_save(run->vit, path, err);
}

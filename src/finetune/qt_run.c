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
#include "finetune/qt_finetune_internal.h"

#define RUN_FORMAT "qtune-run"
/* Values of the trainable mask: the optimizer steps the tensor, or it is a
 * buffer of a training unit (kept in checkpoints, never stepped). */
#define MASK_OFF 0
#define MASK_STEP 1
#define MASK_KEEP 2
#define RUN_VERSION "1"

/* What the run keeps per model tensor. */
typedef struct run_tensor {
  long layer; /* layer-decay id (qt_model_tensor.layer) */
  long unit;  /* freezing unit (qt_model_tensor.unit) */
  int head;   /* 1: always trainable */
  int buffer; /* 1: batch norm running statistics, saved while their unit trains, never stepped */
  float *s1;  /* (numel) momentum buffer or Adam's first moment; NULL until trained */
  float *s2;  /* (numel) Adam's second moment; NULL until trained or for (momentum) SGD */
  float *ref; /* (numel) theta0, the value when the tensor first became trainable (the
                 pretrained weights, the seeded new head), for L2-SP, SPD and SFA;
                 NULL until then or when no method needs it. Never saved: it is
                 rebuilt from the pretrained checkpoint and the seed. */
  long steps; /* optimizer steps taken on this tensor */
  /* LoRA (adapter runs, adapted linear weights only; see qt_finetune.h). The
   * tensor's data is then the merged W = ref + scale B A, s1 and s2 are A's
   * optimizer state and b1, b2 B's. */
  int adapted;                   /* 1: this weight carries adapters */
  size_t rows, cols;             /* W's (out, in) */
  size_t shape_a[2], shape_b[2]; /* (rank, in) and (out, rank), for checkpoints */
  float *lora_a;                 /* (rank, in) */
  float *lora_b;                 /* (out, rank) */
  float *grad_a;                 /* (rank, in) this step's gradient of A */
  float *grad_b;                 /* (out, rank) this step's gradient of B */
  float *b1, *b2;                /* (out, rank) B's optimizer state, as s1 and s2 */
  float *goodfit_ref;            /* (numel) GOODFIT's theta_ref of the current cycle, on the run's
                                    backend; NULL otherwise */
  float *rosa_fixed;             /* (out, in) ROSA's W_fixed, the merge's base; NULL otherwise */
} run_tensor;

/* Co-Tuning's source head (cotuning_reg > 0): the checkpoint's classifier,
 * trained by the run's optimizer like the new head. */
typedef struct cot_param {
  const char *name;   /* run-checkpoint name */
  size_t ndim;        /* 2 (weight) or 1 (bias) */
  size_t shape[2];    /* (n_src, dim) or (n_src) */
  size_t n;           /* elements */
  int decay;          /* weight decay applies (the weight, not the bias) */
  float *data, *grad; /* (n) */
  float *s1, *s2;     /* (n) optimizer state as run_tensor's; NULL when unused */
} cot_param;

typedef struct cotuning_state {
  size_t n_src, dim, n_target;
  cot_param p[2];      /* the source head's weight and bias */
  long steps;          /* optimizer steps taken on it */
  float *relationship; /* (n_target, n_src) R, from the pretrained model at init */
  float *weights;      /* (batch_size, n_target) this batch's target weights */
} cotuning_state;

struct qt_run {
  qt_run_spec spec; /* copy; spec.checkpoint points at checkpoint below */
  char *checkpoint; /* owned copy of the checkpoint path */
  /* The backend of the model, of each run_tensor's arrays (tensor_arrays)
   * and of scalars; Co-Tuning's source head and the data are host memory. */
  const qt__ops *ops;
  void *stream; /* the run's own stream on a backend with streams (run_move), else NULL */
  qt_model_t *model;
  qt_model_t *source;                /* DELTA's frozen pretrained copy (delta_reg > 0), else NULL */
  cotuning_state *cot;               /* Co-Tuning (cotuning_reg > 0), else NULL */
  float *feature_mean, *feature_std; /* tabular data: (n_features) of the training split */
  size_t n_tensors;
  run_tensor *tensors;      /* (n_tensors) in qt_model_tensor_at order */
  unsigned char *trainable; /* (n_tensors) the mask of the current / last epoch: MASK_* */
  long units;               /* qt_model_units */
  qt_preprocess_params pre;
  qt_augment_params aug;
  qt_batch_iter_t *train_it;
  qt_batch_iter_t *val_it;
  qt_batch_iter_t *test_it; /* NULL when the test split is absent or empty */
  void *pinned[3][2];       /* the iterators' input arrays that ops->pin page-locked */
  /* On a backend with upload_async, for image models: a training batch's
   * images, uploaded while the device works on the batch before (NULL:
   * each batch is uploaded by its forward). */
  float *staged;
  long done;   /* epochs completed */
  double best; /* best validation score, NaN before the first epoch */
  qt_schedule_plateau plateau;
  int diverged;
  qt_rng_t *root_rng;      /* the seed's stream: parent of the per-epoch dropout streams */
  char fingerprint[17];    /* hex FNV-1a of the training values */
  long global_step;        /* optimizer steps of the whole run (SFA's s), set per epoch */
  long goodfit_phase;      /* batches done in the current GOODFIT cycle, 0..n_ref */
  int (*stop)(void *user); /* the stop hook (qt_run_set_stop), NULL: none */
  void *stop_user;
  int stopped;             /* 1 after an epoch was abandoned by the stop hook */
  double *scalars;         /* (4) doubles of the backend's memory, allocated at the first step that
                              needs them: clipping's sum of squares, SPD's three statistics */
  qt__optim_slice *slices; /* (2 n_tensors): an optimizer step's tensors, for optim_steps */
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
  s.crop_scale = 0.08;
  s.hflip = 0.5;
  s.goodfit = 0;
  s.goodfit_main = QT_OPTIM_KIND_ADAMW; /* [RECON] */
  s.goodfit_n_ref = 1;
  s.goodfit_lr_ref_ratio = 1.0;
  s.adapter = QT_ADAPTER_KIND_NONE;
  s.adapter_rank = 8;
  s.adapter_alpha = 0.0; /* alpha = rank [RECON] */
  s.adapter_attention_only = 0;
  s.sfa = 0;
  s.sfa_p = 0.25;   /* [RECON] specs/algorithms.md section 5 */
  s.sfa_beta = 0.5; /* [RECON] */
  s.bss_reg = 0.0;
  s.bss_k = 1;
  s.delta_reg = 0.0;
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
  double v = 0.0;
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
#define NUMBER(field)                                             \
  do {                                                            \
    if ((rc = parse_number(name, value, &x, err)) < 0) return rc; \
    field = x;                                                    \
    return 0;                                                     \
  } while (0)
#define WHOLE(field)                                             \
  do {                                                           \
    if ((rc = parse_whole(name, value, &k, err)) < 0) return rc; \
    field = k;                                                   \
    return 0;                                                    \
  } while (0)

  if (strcmp(name, "model") == 0) return 0;
  if (strcmp(name, "opt") == 0) {
    /* GOODFIT wraps a main optimizer (goodfit_main), so it is a flag. */
    if (strcmp(value, "goodfit") == 0) return spec->goodfit = 1, 0;
    if ((rc = qt_optim_kind_parse(value, &spec->optim.kind, err)) < 0) return rc;
    spec->goodfit = 0;
    return 0;
  }
  if (strcmp(name, "goodfit_main") == 0) {
    if ((rc = qt_optim_kind_parse(value, &spec->goodfit_main, err)) < 0)
      return qt_err_prefix(err, rc, "goodfit_main");
    return 0;
  }
  if (strcmp(name, "goodfit_n_ref") == 0) WHOLE(spec->goodfit_n_ref);
  if (strcmp(name, "goodfit_lr_ref_ratio") == 0) NUMBER(spec->goodfit_lr_ref_ratio);
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
    /* The kind says what decay_strength pulls toward, so the two can come
     * in either order. */
    if ((rc = qt_decay_kind_parse(value, &spec->optim.decay, err)) < 0)
      return qt_err_prefix(err, rc, "decay");
    return 0;
  }
  if (strcmp(name, "sp_reg") == 0) NUMBER(spec->optim.sp_reg);
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
  if (strcmp(name, "crop_scale") == 0) NUMBER(spec->crop_scale);
  if (strcmp(name, "hflip") == 0) NUMBER(spec->hflip);
  if (strcmp(name, "sfa") == 0) {
    if ((rc = parse_bool(name, value, &b, err)) < 0) return rc;
    spec->sfa = b;
    return 0;
  }
  if (strcmp(name, "sfa_p") == 0) NUMBER(spec->sfa_p);
  if (strcmp(name, "sfa_beta") == 0) NUMBER(spec->sfa_beta);
  if (strcmp(name, "adapter") == 0) {
    if (is_none(value)) return spec->adapter = QT_ADAPTER_KIND_NONE, 0;
    if (strcmp(value, "lora") == 0) return spec->adapter = QT_ADAPTER_KIND_LORA, 0;
    if (strcmp(value, "rosa") == 0) return spec->adapter = QT_ADAPTER_KIND_ROSA, 0;
    return qt_err_set(err, QT_EINVAL, "adapter: unknown value '%s' (accepted: none, lora, rosa)",
                      value);
  }
  if (strcmp(name, "adapter_rank") == 0) WHOLE(spec->adapter_rank);
  if (strcmp(name, "adapter_alpha") == 0) NUMBER(spec->adapter_alpha);
  if (strcmp(name, "adapter_layers") == 0) {
    if (strcmp(value, "attention") == 0) return spec->adapter_attention_only = 1, 0;
    if (strcmp(value, "all") == 0) return spec->adapter_attention_only = 0, 0;
    return qt_err_set(err, QT_EINVAL, "adapter_layers: '%s' is not 'attention' or 'all'", value);
  }
  if (strcmp(name, "amp") == 0) return parse_bool(name, value, &spec->amp, err);
  if (strcmp(name, "stoch_norm") == 0) return parse_bool(name, value, &spec->stoch_norm, err);
  if (strcmp(name, "bss_reg") == 0) NUMBER(spec->bss_reg);
  if (strcmp(name, "bss_k") == 0) WHOLE(spec->bss_k);
  if (strcmp(name, "delta_reg") == 0) NUMBER(spec->delta_reg);
  if (strcmp(name, "cotuning_reg") == 0) NUMBER(spec->cotuning_reg);
  if (strcmp(name, "auto_augment") == 0) {
    if (is_none(value)) return 0;
    return qt_err_set(err, QT_ENOTIMPL, "AutoAugment policy '%s' is not implemented yet", value);
  }
#undef NUMBER
#undef WHOLE
  return qt_err_set(err, QT_ENOENT, "unknown pipeline hyperparameter '%s'", name);
}

int qt_run_spec_supported(const qt_run_spec *s, qt_err *err) {
  if (!qt_model_family_is_vit(s->family) && !qt_model_family_is_cnn(s->family) &&
      !qt_model_family_is_mlp(s->family))
    return qt_err_set(err, QT_ENOTIMPL, "run spec: family '%s' is not supported by runs yet",
                      qt_model_family_name(s->family));
  if (s->goodfit && s->adapter != QT_ADAPTER_KIND_NONE)
    return qt_err_set(err, QT_ENOTIMPL, "run spec: GOODFIT with adapters is not implemented yet");
  if (s->goodfit && s->cotuning_reg > 0.0)
    return qt_err_set(err, QT_ENOTIMPL, "run spec: Co-Tuning with GOODFIT is not implemented yet");
  if (s->adapter != QT_ADAPTER_KIND_NONE && !qt_model_family_is_vit(s->family))
    return qt_err_set(err, QT_ENOTIMPL,
                      "run spec: adapters (LoRA, ROSA) on the family '%s' are not implemented "
                      "yet: the ViT families only",
                      qt_model_family_name(s->family));
  return 0;
}

static int check_spec(const qt_run_spec *s, qt_err *err) {
  if (!s->checkpoint) return qt_err_set(err, QT_EINVAL, "run spec: no checkpoint");
  int rc = qt_run_spec_supported(s, err);
  if (rc < 0) return rc;
  if (qt_model_family_is_vit(s->family) && s->heads < 1)
    return qt_err_set(err, QT_EINVAL, "run spec: heads must be set");
  if (!s->data || !s->data->train || !s->data->val)
    return qt_err_set(err, QT_EINVAL, "run spec: no data");
  if ((s->data->train->kind == QT_DATASET_KIND_TABULAR) != qt_model_family_is_mlp(s->family))
    return qt_err_set(err, QT_EINVAL,
                      "run spec: family '%s' with %s data: tabular data needs the family mlp, "
                      "and mlp needs tabular data",
                      qt_model_family_name(s->family),
                      s->data->train->kind == QT_DATASET_KIND_TABULAR ? "tabular" : "image");
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
    return qt_err_set(err, QT_EINVAL,
                      "run spec: mixup and cutmix must be >= 0, mixup_prob in "
                      "[0, 1]");
  if (!(s->crop_scale > 0.0 && s->crop_scale <= 1.0) || !(s->hflip >= 0.0 && s->hflip <= 1.0))
    return qt_err_set(err, QT_EINVAL,
                      "run spec: crop_scale must be in (0, 1] and hflip in [0, 1], got %g and %g",
                      s->crop_scale, s->hflip);
  if (!(s->drop >= 0.0 && s->drop < 1.0))
    return qt_err_set(err, QT_EINVAL, "run spec: drop must be in [0, 1), got %g", s->drop);
  for (int c = 0; c < 3; c++) {
    if (!(s->std[c] > 0.0) || !isfinite(s->mean[c]))
      return qt_err_set(err, QT_EINVAL, "run spec: bad mean/std of channel %d", c);
  }
  if (s->goodfit) {
    if (s->goodfit_n_ref < 1 || s->goodfit_n_ref > 64)
      return qt_err_set(err, QT_EINVAL, "run spec: goodfit_n_ref must be in [1, 64], got %ld",
                        s->goodfit_n_ref);
    if (!(s->goodfit_lr_ref_ratio > 0.0) || !isfinite(s->goodfit_lr_ref_ratio))
      return qt_err_set(err, QT_EINVAL, "run spec: goodfit_lr_ref_ratio must be > 0, got %g",
                        s->goodfit_lr_ref_ratio);
    if ((int)s->goodfit_main < 0 || s->goodfit_main > QT_OPTIM_KIND_ADAMW)
      return qt_err_set(err, QT_EINVAL, "run spec: unknown goodfit_main %d", (int)s->goodfit_main);
  }
  if ((int)s->adapter < 0 || s->adapter > QT_ADAPTER_KIND_ROSA)
    return qt_err_set(err, QT_EINVAL, "run spec: unknown adapter kind %d", (int)s->adapter);
  if (s->adapter != QT_ADAPTER_KIND_NONE && (s->adapter_rank < 1 || s->adapter_rank > 65536))
    return qt_err_set(err, QT_EINVAL, "run spec: adapter_rank must be in [1, 65536], got %ld",
                      s->adapter_rank);
  if (s->adapter != QT_ADAPTER_KIND_NONE && !isfinite(s->adapter_alpha))
    return qt_err_set(err, QT_EINVAL, "run spec: adapter_alpha must be finite");
  if (s->sfa && !(s->sfa_p > 0.0 && s->sfa_p <= 1.0))
    return qt_err_set(err, QT_EINVAL, "run spec: sfa_p must be in (0, 1], got %g", s->sfa_p);
  if (s->sfa && !(s->sfa_beta >= 0.0 && s->sfa_beta <= 1.0))
    return qt_err_set(err, QT_EINVAL, "run spec: sfa_beta must be in [0, 1], got %g", s->sfa_beta);
  if (!(s->bss_reg >= 0.0) || !isfinite(s->bss_reg))
    return qt_err_set(err, QT_EINVAL, "run spec: bss_reg must be finite and >= 0, got %g",
                      s->bss_reg);
  if (!(s->delta_reg >= 0.0) || !isfinite(s->delta_reg))
    return qt_err_set(err, QT_EINVAL, "run spec: delta_reg must be finite and >= 0, got %g",
                      s->delta_reg);
  if (s->bss_k < 1)
    return qt_err_set(err, QT_EINVAL, "run spec: bss_k must be >= 1, got %ld", s->bss_k);
  if (!(s->cotuning_reg >= 0.0) || !isfinite(s->cotuning_reg))
    return qt_err_set(err, QT_EINVAL, "run spec: cotuning_reg must be finite and >= 0, got %g",
                      s->cotuning_reg);
  rc = qt_optim_params_check(&s->optim, err);
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
      (int)o->kind, o->lr, o->momentum, o->beta1, o->beta2, o->eps, o->weight_decay, o->clip_grad,
      o->layer_decay, (int)p->kind, p->min_lr, p->warmup_epochs, p->warmup_lr, p->decay_rate,
      p->decay_epochs, p->patience_epochs, s->batch_size, s->pct_to_freeze, s->linear_probing,
      (int)s->data_augmentation, s->ra_num_ops, s->ra_magnitude, s->mixup, s->cutmix, s->mixup_prob,
      s->smoothing, s->drop, (unsigned long long)s->seed);
  size_t n = len < 0 ? 0 : ((size_t)len < sizeof text ? (size_t)len : sizeof text - 1);
  for (size_t i = 0; i < p->n_milestones && n + 24 < sizeof text; i++)
    n += (size_t)snprintf(text + n, sizeof text - n, " ms=%ld", p->milestones[i]);
  /* The methods toward theta0 enter only when on, so that the checkpoints
   * of plain runs keep the fingerprint they had before these existed. */
  if ((o->decay != QT_DECAY_KIND_WEIGHT_DECAY || o->sp_reg != 0.0) && n + 64 < sizeof text)
    n +=
        (size_t)snprintf(text + n, sizeof text - n, " decay=%d sp=%.17g", (int)o->decay, o->sp_reg);
  if (s->goodfit && n + 80 < sizeof text)
    n += (size_t)snprintf(text + n, sizeof text - n, " goodfit=%ld,%.17g", s->goodfit_n_ref,
                          s->goodfit_lr_ref_ratio);
  if (s->adapter != QT_ADAPTER_KIND_NONE && n + 80 < sizeof text)
    n += (size_t)snprintf(text + n, sizeof text - n, " adapter=%d,%ld,%.17g,%d", (int)s->adapter,
                          s->adapter_rank, s->adapter_alpha, s->adapter_attention_only);
  if (s->sfa && n + 64 < sizeof text)
    n += (size_t)snprintf(text + n, sizeof text - n, " sfa=%.17g,%.17g", s->sfa_p, s->sfa_beta);
  /* The training transform enters only when not timm's default, so that
   * checkpoints made before these existed keep their fingerprint. */
  if ((s->crop_scale != 0.08 || s->hflip != 0.5) && n + 64 < sizeof text)
    n += (size_t)snprintf(text + n, sizeof text - n, " crop=%.17g flip=%.17g", s->crop_scale,
                          s->hflip);
  if (s->stoch_norm && n + 16 < sizeof text)
    n += (size_t)snprintf(text + n, sizeof text - n, " stochnorm");
  if (s->bss_reg != 0.0 && n + 64 < sizeof text)
    n += (size_t)snprintf(text + n, sizeof text - n, " bss=%.17g,%ld", s->bss_reg, s->bss_k);
  if (s->delta_reg != 0.0 && n + 40 < sizeof text)
    n += (size_t)snprintf(text + n, sizeof text - n, " delta=%.17g", s->delta_reg);
  if (s->cotuning_reg != 0.0 && n + 40 < sizeof text)
    n += (size_t)snprintf(text + n, sizeof text - n, " cotuning=%.17g", s->cotuning_reg);
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)text[i];
    h *= 1099511628211ull;
  }
  snprintf(out, 17, "%016llx", (unsigned long long)h);
}

/* ------------------------------------------------------------------------- */
/* Co-Tuning                                                                  */
/* ------------------------------------------------------------------------- */

static void cotuning_free(cotuning_state *cot) {
  if (!cot) return;
  for (int k = 0; k < 2; k++) {
    free(cot->p[k].data);
    free(cot->p[k].grad);
    free(cot->p[k].s1);
    free(cot->p[k].s2);
  }
  free(cot->relationship);
  free(cot->weights);
  free(cot);
}

/* The checkpoint's classifier of a family: timm's names. */
static const char *cotuning_classifier(qt_model_family family) {
  if (qt_model_family_is_vit(family) || qt_model_family_is_mlp(family)) return "head";
  if (family == QT_MODEL_FAMILY_RESNET) return "fc";
  return "classifier"; /* mobilenetv2, efficientnet */
}

/* QT_ENOTIMPL when st holds a head MLP in front of the classifier. */
static int cotuning_head_mlp(const qt_safetensors_t *st, const char *checkpoint, qt_err *err) {
  size_t index;
  if (qt_safetensors_find(st, "head_mlp.0.weight", &index) < 0) return 0;
  return qt_err_set(err, QT_ENOTIMPL,
                    "Co-Tuning: the classifier of %s sits behind a head MLP (head_mlp.*); a "
                    "source head on the pooled features is needed, other heads are not "
                    "implemented yet",
                    checkpoint);
}

int qt_run_cotuning_supported(const qt_run_spec *spec, qt_err *err) {
  if (!spec) return qt_err_set(err, QT_EINVAL, "qt_run_cotuning_supported: NULL argument");
  if (!(spec->cotuning_reg > 0.0)) return 0;
  if (!spec->checkpoint) return qt_err_set(err, QT_EINVAL, "run spec: no checkpoint");
  qt_safetensors_t *st = NULL;
  int rc = qt_safetensors_open(spec->checkpoint, &st, err);
  if (rc == 0) rc = cotuning_head_mlp(st, spec->checkpoint, err);
  qt_safetensors_free(st);
  return rc;
}

/* Reads the source head from the pretrained checkpoint into cot (weight
 * and bias allocated here). */
static int cotuning_read_head(qt_run_t *run, cotuning_state *cot, qt_err *err) {
  const char *prefix = cotuning_classifier(run->spec.family);
  char wname[64], bname[64];
  snprintf(wname, sizeof wname, "%s.weight", prefix);
  snprintf(bname, sizeof bname, "%s.bias", prefix);
  qt_safetensors_t *st = NULL;
  int rc = qt_safetensors_open(run->spec.checkpoint, &st, err);
  if (rc < 0) return rc;
  if ((rc = cotuning_head_mlp(st, run->spec.checkpoint, err)) < 0) {
    qt_safetensors_free(st);
    return rc;
  }
  size_t wi = 0, bi = 0;
  if (qt_safetensors_find(st, wname, &wi) < 0 || qt_safetensors_find(st, bname, &bi) < 0) {
    rc = qt_err_set(err, QT_EINVAL,
                    "Co-Tuning (cotuning_reg = %g) needs the pretrained classifier, but %s has "
                    "no '%s' and '%s' (a checkpoint without a head); set cotuning_reg to 0",
                    run->spec.cotuning_reg, run->spec.checkpoint, wname, bname);
    qt_safetensors_free(st);
    return rc;
  }
  qt_safetensors_info w, b;
  qt_safetensors_info_at(st, wi, &w);
  qt_safetensors_info_at(st, bi, &b);
  if (w.ndim != 2 || w.shape[0] < 1 || w.shape[1] != cot->dim || b.ndim != 1 ||
      b.shape[0] != w.shape[0]) {
    rc = qt_err_set(err, QT_EINVAL,
                    "Co-Tuning: the classifier '%s' of %s does not take the %zu pre-head "
                    "features (weight %zu-d, %zu x %zu; bias %zu-d, %zu)",
                    wname, run->spec.checkpoint, cot->dim, w.ndim, w.ndim > 0 ? w.shape[0] : 0,
                    w.ndim > 1 ? w.shape[1] : 0, b.ndim, b.ndim > 0 ? b.shape[0] : 0);
    qt_safetensors_free(st);
    return rc;
  }
  cot->n_src = w.shape[0];
  static const char *const names[2] = {"cotuning.source_head.weight", "cotuning.source_head.bias"};
  for (int k = 0; k < 2; k++) {
    cot_param *q = &cot->p[k];
    q->name = names[k];
    q->ndim = k == 0 ? 2 : 1;
    q->shape[0] = cot->n_src;
    q->shape[1] = k == 0 ? cot->dim : 0;
    q->n = k == 0 ? cot->n_src * cot->dim : cot->n_src;
    q->decay = k == 0;
    q->data = malloc(q->n * sizeof *q->data);
    q->grad = calloc(q->n, sizeof *q->grad);
    if (!q->data || !q->grad) {
      qt_safetensors_free(st);
      return qt_err_set(err, QT_ENOMEM, "out of memory for Co-Tuning's source head");
    }
  }
  rc = qt_safetensors_read_f32(st, wname, cot->p[0].data, cot->p[0].n, err);
  if (rc == 0) rc = qt_safetensors_read_f32(st, bname, cot->p[1].data, cot->p[1].n, err);
  qt_safetensors_free(st);
  return rc;
}

/* R from the pretrained model: the training split once, in evaluation mode
 * (no augmentation, in order, CNN batch norms on running statistics),
 * through the source head. Call it before anything trains. */
static int cotuning_relationship(qt_run_t *run, cotuning_state *cot, qt_err *err) {
  const qt_run_spec *spec = &run->spec;
  qt_batch_params bp = qt_batch_default_params();
  bp.batch_size = spec->batch_size;
  bp.shuffle = 0;
  bp.drop_last = 0;
  bp.augment = 0;
  bp.seed = spec->seed;
  bp.threads = spec->threads < 1 ? 1 : spec->threads;
  qt_batch_iter_t *it = NULL;
  int rc = qt_batch_iter_init(spec->data->train, &run->pre, &run->aug, &bp, &it, err);
  if (rc < 0) return rc;
  double *sum = calloc(cot->n_target * cot->n_src, sizeof *sum);
  double *count = calloc(cot->n_target, sizeof *count);
  float *logits = malloc(spec->batch_size * cot->n_src * sizeof *logits);
  if (!sum || !count || !logits) rc = qt_err_set(err, QT_ENOMEM, "out of memory for Co-Tuning");
  if (rc == 0) rc = qt_batch_iter_start(it, 0, 0, err);
  qt_batch batch;
  while (rc == 0 && (rc = qt_batch_iter_next(it, &batch, err)) == 1) {
    rc = qt_model_forward(run->model, batch.inputs, batch.size, 0, err);
    if (rc < 0) break;
    size_t fb = 0;
    const float *feat = qt_model_features(run->model, &fb);
    qt_cotuning_source_logits(feat, fb, cot->dim, cot->p[0].data, cot->p[1].data, cot->n_src,
                              logits);
    rc = qt_cotuning_relationship_accumulate(logits, batch.labels, fb, cot->n_src, cot->n_target,
                                             sum, count, err);
  }
  if (rc == 0)
    qt_cotuning_relationship_finalize(sum, count, cot->n_target, cot->n_src, cot->relationship);
  free(sum);
  free(count);
  free(logits);
  qt_batch_iter_free(it);
  return rc;
}

/* Co-Tuning's state at run init (the feature hook is on, the iterators'
 * preprocessing is set): the source head and R. */
static int cotuning_init(qt_run_t *run, qt_err *err) {
  cotuning_state *cot = calloc(1, sizeof *cot);
  if (!cot) return qt_err_set(err, QT_ENOMEM, "out of memory for Co-Tuning");
  run->cot = cot;
  cot->dim = qt_model_feature_dim(run->model);
  cot->n_target = run->spec.data->train->n_classes;
  int rc = cotuning_read_head(run, cot, err);
  if (rc < 0) return rc;
  qt_optim_kind kind = run->spec.optim.kind;
  for (int k = 0; k < 2; k++) {
    cot_param *q = &cot->p[k];
    if (kind != QT_OPTIM_KIND_SGD && !(q->s1 = calloc(q->n, sizeof *q->s1)))
      return qt_err_set(err, QT_ENOMEM, "out of memory for Co-Tuning's optimizer state");
    if ((kind == QT_OPTIM_KIND_ADAM || kind == QT_OPTIM_KIND_ADAMW) &&
        !(q->s2 = calloc(q->n, sizeof *q->s2)))
      return qt_err_set(err, QT_ENOMEM, "out of memory for Co-Tuning's optimizer state");
  }
  cot->relationship = malloc(cot->n_target * cot->n_src * sizeof *cot->relationship);
  cot->weights = malloc(run->spec.batch_size * cot->n_target * sizeof *cot->weights);
  if (!cot->relationship || !cot->weights)
    return qt_err_set(err, QT_ENOMEM, "out of memory for Co-Tuning");
  return cotuning_relationship(run, cot, err);
}

/* One training batch: the penalty's gradient joins the features' (before
 * the backward pass) and becomes the source head's gradient. The target
 * weights are the hard label, or lambda and 1 - lambda on the Mixup/CutMix
 * pair (b, size - 1 - b) [RECON: the paper has no mixing; the smoothing of
 * the training targets is not applied to R's rows]. Returns the penalty. */
static int cotuning_batch(qt_run_t *run, const qt_batch *batch, double *penalty, qt_err *err) {
  cotuning_state *cot = run->cot;
  size_t n = batch->size, k = cot->n_target, fb = 0;
  float *w = cot->weights;
  memset(w, 0, n * k * sizeof *w);
  for (size_t b = 0; b < n; b++) {
    w[b * k + (size_t)batch->labels[b]] += (float)batch->lambda;
    w[b * k + (size_t)batch->labels[n - 1 - b]] += (float)(1.0 - batch->lambda);
  }
  for (int j = 0; j < 2; j++) memset(cot->p[j].grad, 0, cot->p[j].n * sizeof(float));
  const float *feat = qt_model_features(run->model, &fb);
  return qt_cotuning_penalty(feat, fb, cot->dim, cot->p[0].data, cot->p[1].data, cot->n_src,
                             cot->relationship, k, NULL, w, run->spec.cotuning_reg, penalty,
                             qt_model_feature_grad(run->model), cot->p[0].grad, cot->p[1].grad,
                             err);
}

/* The squared norm of the source head's gradient (for clipping). */
static double cotuning_grad_sq(const qt_run_t *run) {
  double sum = 0.0;
  for (int k = 0; run->cot && k < 2; k++) {
    const cot_param *q = &run->cot->p[k];
    for (size_t j = 0; j < q->n; j++) sum += (double)q->grad[j] * (double)q->grad[j];
  }
  return sum;
}

/* The source head's optimizer step: the head's learning rate (no layer
 * decay), weight decay on the weight only, clip the global clipping factor. */
static void cotuning_step(qt_run_t *run, double lr, double clip) {
  cotuning_state *cot = run->cot;
  if (!cot) return;
  cot->steps++;
  for (int k = 0; k < 2; k++) {
    cot_param *q = &cot->p[k];
    if (clip < 1.0) {
      float c = (float)clip;
      for (size_t j = 0; j < q->n; j++) q->grad[j] *= c;
    }
    qt_optim_tensor_step(&run->spec.optim, lr, q->decay, cot->steps, q->data, q->grad, q->s1, q->s2,
                         q->n);
  }
}

/* ROSA rebuilds the optimizer every epoch: the source head's too. */
static void cotuning_reset_state(qt_run_t *run) {
  cotuning_state *cot = run->cot;
  if (!cot) return;
  for (int k = 0; k < 2; k++) {
    if (cot->p[k].s1) memset(cot->p[k].s1, 0, cot->p[k].n * sizeof(float));
    if (cot->p[k].s2) memset(cot->p[k].s2, 0, cot->p[k].n * sizeof(float));
  }
  cot->steps = 0;
}

/* ------------------------------------------------------------------------- */
/* Init and free                                                              */
/* ------------------------------------------------------------------------- */

/* 1 when the ViT tensor `name` is a linear weight that gets adapters. */
static int adapter_target(const char *name, int attention_only) {
  if (strncmp(name, "blocks.", 7) != 0) return 0;
  const char *dot = strchr(name + 7, '.');
  if (!dot) return 0;
  if (strcmp(dot, ".attn.qkv.weight") == 0 || strcmp(dot, ".attn.proj.weight") == 0) return 1;
  return !attention_only &&
         (strcmp(dot, ".mlp.fc1.weight") == 0 || strcmp(dot, ".mlp.fc2.weight") == 0);
}

/* Marks the adapted weights and draws their A (B = 0) from the seed's
 * "lora" stream, tensor by tensor in model order, every adapted weight
 * whether or not its block trains, so the draw never depends on freezing. */
static int init_adapters(qt_run_t *run, qt_err *err) {
  size_t rank = (size_t)run->spec.adapter_rank;
  qt_rng_t *rng = NULL;
  int rc = qt_rng_fork(run->root_rng, 0x6c6f7261u /* "lora" */, &rng, err);
  if (rc < 0) return rc;
  for (size_t i = 0; i < run->n_tensors && rc == 0; i++) {
    run_tensor *t = &run->tensors[i];
    qt_model_tensor vt;
    qt_model_tensor_at(run->model, i, &vt);
    if (!adapter_target(vt.name, run->spec.adapter_attention_only) || vt.ndim != 2) continue;
    t->adapted = 1;
    t->rows = vt.shape[0];
    t->cols = vt.shape[1];
    t->shape_a[0] = rank;
    t->shape_a[1] = t->cols;
    t->shape_b[0] = t->rows;
    t->shape_b[1] = rank;
    t->lora_a = malloc(rank * t->cols * sizeof *t->lora_a);
    t->lora_b = malloc(t->rows * rank * sizeof *t->lora_b);
    t->grad_a = calloc(rank * t->cols, sizeof *t->grad_a);
    t->grad_b = calloc(t->rows * rank, sizeof *t->grad_b);
    if (run->spec.adapter == QT_ADAPTER_KIND_ROSA)
      t->rosa_fixed = malloc(t->rows * t->cols * sizeof *t->rosa_fixed);
    if (!t->lora_a || !t->lora_b || !t->grad_a || !t->grad_b ||
        (run->spec.adapter == QT_ADAPTER_KIND_ROSA && !t->rosa_fixed)) {
      rc = qt_err_set(err, QT_ENOMEM, "out of memory for the adapters of %s", vt.name);
      break;
    }
    qt_lora_init(t->lora_a, t->lora_b, t->rows, t->cols, rank, rng);
  }
  qt_rng_free(rng);
  return rc;
}

/* The arrays of tensor i that live on the run's backend (NULL slots are
 * unused) and their lengths in floats. */
#define RUN_ARRAYS 11
static void tensor_arrays(qt_run_t *run, size_t i, float **slots[RUN_ARRAYS],
                          size_t counts[RUN_ARRAYS]) {
  run_tensor *t = &run->tensors[i];
  qt_model_tensor vt;
  qt_model_tensor_at(run->model, i, &vt);
  size_t rank = (size_t)run->spec.adapter_rank;
  size_t na = t->adapted ? rank * t->cols : vt.numel, nb = t->rows * rank;
  float **s[RUN_ARRAYS] = {&t->s1,     &t->s2,     &t->ref,       &t->goodfit_ref,
                           &t->lora_a, &t->lora_b, &t->grad_a,    &t->grad_b,
                           &t->b1,     &t->b2,     &t->rosa_fixed};
  size_t c[RUN_ARRAYS] = {na, na, vt.numel, vt.numel, na, nb, na, nb, nb, nb, vt.numel};
  memcpy(slots, s, sizeof s);
  memcpy(counts, c, sizeof c);
}

void qt_run_free(qt_run_t *run) {
  if (!run) return;
  /* The stream first: it waits for its work, an upload of a batch that
   * the run did not get to included, before the batches' arrays go. */
  if (run->stream) run->ops->stream_destroy(run->stream);
  run->stream = NULL;
  for (int k = 0; k < 3; k++) {
    for (int slot = 0; slot < 2; slot++) {
      if (run->pinned[k][slot]) run->ops->unpin(run->pinned[k][slot]);
    }
  }
  qt_batch_iter_free(run->train_it);
  qt_batch_iter_free(run->val_it);
  qt_batch_iter_free(run->test_it);
  if (run->tensors) {
    const qt__ops *ops = run->ops ? run->ops : qt__ops_cpu();
    for (size_t i = 0; i < run->n_tensors; i++) {
      float **slots[RUN_ARRAYS];
      size_t counts[RUN_ARRAYS];
      tensor_arrays(run, i, slots, counts);
      for (int k = 0; k < RUN_ARRAYS; k++) ops->release(*slots[k]);
    }
  }
  (run->ops ? run->ops : qt__ops_cpu())->release(run->scalars);
  if (run->staged) run->ops->release(run->staged);
  free(run->tensors);
  free(run->trainable);
  free(run->slices);
  qt_model_free(run->model);
  qt_model_free(run->source);
  cotuning_free(run->cot);
  qt_rng_free(run->root_rng);
  free(run->checkpoint);
  free(run->feature_mean);
  free(run->feature_std);
  free(run);
}

/* The run's work between stream_enter and stream_leave is queued on its
 * own stream (nothing changes on a backend without streams); the thread's
 * previous stream comes back after. */
static void *stream_enter(const qt_run_t *run) {
  return run->stream ? run->ops->stream_use(run->stream) : NULL;
}

static void stream_leave(const qt_run_t *run, void *previous) {
  if (run->stream) run->ops->stream_use(previous);
}

/* A run on the CPU: the model loaded, the data and the methods set up. */
static int run_create(const qt_run_spec *spec, qt_run_t **out, qt_err *err) {
  *out = NULL;
  int rc = check_spec(spec, err);
  if (rc < 0) return rc;

  qt_run_t *run = calloc(1, sizeof *run);
  if (!run) return qt_err_set(err, QT_ENOMEM, "out of memory for a run");
  run->ops = qt__ops_cpu();
  run->spec = *spec;
  run->spec.schedule.epochs = spec->epochs;
  if (spec->goodfit) run->spec.optim.kind = spec->goodfit_main;
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
  qt_model_load_params lp = qt_model_default_load_params();
  lp.family = spec->family;
  lp.heads = spec->heads;
  lp.image_size = spec->image_size;
  lp.num_classes = (long)spec->data->train->n_classes;
  lp.max_batch = spec->batch_size;
  if (rc == 0) {
    lp.rng = head_rng;
    rc = qt_model_load(spec->checkpoint, &lp, &run->model, err);
  }
  qt_rng_free(head_rng);
  run->root_rng = root;
  qt_mlp_t *mlp = qt_model_mlp(run->model);
  if (rc == 0 && mlp && qt_mlp_num_features(mlp) != spec->data->train->n_features)
    rc = qt_err_set(err, QT_ESCHEMA, "%s: the checkpoint takes %zu features, the data has %zu",
                    spec->checkpoint, qt_mlp_num_features(mlp), spec->data->train->n_features);
  if (rc < 0) {
    qt_run_free(run);
    return rc;
  }

  run->units = qt_model_units(run->model);
  run->n_tensors = qt_model_tensor_count(run->model);
  run->tensors = calloc(run->n_tensors, sizeof *run->tensors);
  run->trainable = calloc(run->n_tensors, 1);
  run->slices = calloc(2 * run->n_tensors + 1, sizeof *run->slices);
  if (!run->tensors || !run->trainable || !run->slices) {
    qt_run_free(run);
    return qt_err_set(err, QT_ENOMEM, "out of memory for a run");
  }
  for (size_t i = 0; i < run->n_tensors; i++) {
    qt_model_tensor t;
    qt_model_tensor_at(run->model, i, &t);
    run->tensors[i] =
        (run_tensor){.layer = t.layer, .unit = t.unit, .head = t.head, .buffer = t.buffer};
  }
  if (spec->adapter != QT_ADAPTER_KIND_NONE && (rc = init_adapters(run, err)) < 0) {
    qt_run_free(run);
    return rc;
  }
  /* BSS reads the pre-head features and adds to their gradient. */
  if ((spec->bss_reg > 0.0 || spec->delta_reg > 0.0 || spec->cotuning_reg > 0.0) &&
      (rc = qt_model_set_feature_hook(run->model, 1, err)) < 0) {
    qt_run_free(run);
    return rc;
  }
  /* DELTA's source: the pretrained checkpoint again, frozen (never
   * stepped, never saved: a resumed run loads it the same way). Its head
   * (drawn from a stream of its own) is never used. */
  if (spec->delta_reg > 0.0) {
    qt_rng_t *src_rng = NULL;
    rc = qt_rng_init(&src_rng, spec->seed ^ 0x64656c7461ull /* "delta" */, err);
    if (rc == 0) {
      lp.rng = src_rng;
      rc = qt_model_load(spec->checkpoint, &lp, &run->source, err);
    }
    qt_rng_free(src_rng);
    if (rc == 0) rc = qt_model_set_feature_hook(run->source, 1, err);
    if (rc < 0) {
      qt_run_free(run);
      return qt_err_prefix(err, rc, "DELTA source model");
    }
  }

  run->pre = qt_preprocess_default_params();
  if (mlp) {
    /* Tabular features are standardized with the training split's
     * statistics (every split alike). */
    size_t nf = spec->data->train->n_features;
    run->feature_mean = malloc((nf ? nf : 1) * sizeof *run->feature_mean);
    run->feature_std = malloc((nf ? nf : 1) * sizeof *run->feature_std);
    rc =
        !run->feature_mean || !run->feature_std
            ? qt_err_set(err, QT_ENOMEM, "out of memory for feature statistics")
            : qt_dataset_feature_stats(spec->data->train, run->feature_mean, run->feature_std, err);
    if (rc < 0) {
      qt_run_free(run);
      return rc;
    }
    run->pre.feature_mean = run->feature_mean;
    run->pre.feature_std = run->feature_std;
  }
  run->pre.image_size = (size_t)qt_model_image_size(run->model);
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
  run->aug.scale[0] = spec->crop_scale;
  run->aug.hflip_prob = spec->hflip;

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
  /* Co-Tuning: the source head and R, from the pretrained weights (before
   * qt_run_load overwrites anything). */
  if (spec->cotuning_reg > 0.0 && (rc = cotuning_init(run, err)) < 0) {
    qt_run_free(run);
    return rc;
  }
  spec_fingerprint(&run->spec, (long)spec->data->train->n_classes, run->fingerprint);
  *out = run;
  return 0;
}

/* On a device, the iterators prepare the next batch while the device
 * trains on the current one (qt_batch_iter_set_prefetch), and their input
 * arrays are page-locked (ops->pin), so that every batch goes up by direct
 * DMA. Neither changes a value, and neither failing is an error: batches
 * are then built in turn, or uploaded through the driver's staging. */
static void overlap_batches(qt_run_t *run) {
  qt_batch_iter_t *its[3] = {run->train_it, run->val_it, run->test_it};
  for (int k = 0; k < 3; k++) {
    if (!its[k]) continue;
    qt_err err;
    qt_err_clear(&err);
    if (qt_batch_iter_set_prefetch(its[k], 1, &err) < 0)
      QT_LOG_DEBUG("run: batches built in turn (%s)", qt_err_message(&err));
    for (int slot = 0; slot < 2 && run->ops->pin; slot++) {
      size_t bytes = 0;
      void *inputs = qt_batch_iter_inputs_buffer(its[k], slot, &bytes);
      if (!inputs) continue;
      qt_err_clear(&err);
      if (run->ops->pin(inputs, bytes, &err) == 0)
        run->pinned[k][slot] = inputs;
      else
        QT_LOG_DEBUG("run: batches upload from pageable memory (%s)", qt_err_message(&err));
    }
  }
  /* Training batches of images go up while the device works on the
   * batch before (train_epoch); without the room, each in its forward. */
  size_t bytes = 0;
  if (!run->ops->upload_async || qt_model_family_is_mlp(qt_model_get_family(run->model)) ||
      !qt_batch_iter_inputs_buffer(run->train_it, 0, &bytes))
    return;
  qt_err err;
  qt_err_clear(&err);
  if (run->ops->alloc((void **)&run->staged, bytes, &err) < 0)
    QT_LOG_DEBUG("run: each batch uploads in its forward (%s)", qt_err_message(&err));
}

/* Moves a run made on the CPU to the backend of ops: the model, DELTA's
 * source model and every tensor's optimizer state, reference weights and
 * adapters (tensor_arrays).
 * On a failure (out of device memory, most likely) the run is only fit for
 * qt_run_free, which its callers then do: each model releases its own
 * memory wherever it is, and the state arrays are released here. */
static int run_move(qt_run_t *run, const qt__ops *ops, qt_err *err) {
  QT_ASSERT(run->ops->host_memory);
  size_t n = run->n_tensors;
  float **fresh = calloc(RUN_ARRAYS * (n ? n : 1), sizeof *fresh);
  if (!fresh) return qt_err_set(err, QT_ENOMEM, "out of memory to move a run");
  /* The stream first, so that the move's own copies are queued on it. */
  void *stream = NULL, *previous = NULL;
  int rc = ops->stream_create ? ops->stream_create(&stream, err) : 0;
  if (rc < 0) {
    free(fresh);
    return qt_err_prefix(err, rc, "moving the run to %s", ops->name);
  }
  if (stream) previous = ops->stream_use(stream);
  for (size_t i = 0; i < n && rc == 0; i++) {
    float **slots[RUN_ARRAYS];
    size_t counts[RUN_ARRAYS];
    tensor_arrays(run, i, slots, counts);
    for (int k = 0; k < RUN_ARRAYS && rc == 0; k++) {
      if (!*slots[k]) continue;
      size_t bytes = (counts[k] ? counts[k] : 1) * sizeof(float);
      rc = ops->alloc((void **)&fresh[RUN_ARRAYS * i + k], bytes, err);
      if (rc == 0) rc = ops->upload(fresh[RUN_ARRAYS * i + k], *slots[k], bytes, err);
    }
  }
  if (rc == 0) rc = qt__model_set_ops(run->model, ops, err);
  if (rc == 0 && run->source) rc = qt__model_set_ops(run->source, ops, err);
  if (stream) ops->stream_use(previous);
  if (rc < 0) {
    for (size_t k = 0; k < RUN_ARRAYS * n; k++) ops->release(fresh[k]);
    free(fresh);
    if (stream) ops->stream_destroy(stream); /* after its work, which it waits for */
    return qt_err_prefix(err, rc, "moving the run to %s", ops->name);
  }
  for (size_t i = 0; i < n; i++) {
    float **slots[RUN_ARRAYS];
    size_t counts[RUN_ARRAYS];
    tensor_arrays(run, i, slots, counts);
    for (int k = 0; k < RUN_ARRAYS; k++) {
      if (!*slots[k]) continue;
      run->ops->release(*slots[k]);
      *slots[k] = fresh[RUN_ARRAYS * i + k];
    }
  }
  free(fresh);
  run->ops->release(run->scalars);
  run->scalars = NULL;
  run->ops = ops;
  run->stream = stream;
  overlap_batches(run);
  return 0;
}

int qt__run_init_ops(const qt_run_spec *spec, const qt__ops *ops, qt_run_t **out, qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_run_init: out is NULL");
  *out = NULL;
  if (!spec || !ops) return qt_err_set(err, QT_EINVAL, "qt_run_init: NULL argument");
  qt_run_t *run = NULL;
  int rc = run_create(spec, &run, err);
  if (rc == 0 && !ops->host_memory) rc = run_move(run, ops, err);
  if (rc < 0) {
    qt_run_free(run);
    return rc;
  }
  *out = run;
  return 0;
}

int qt_run_init(const qt_run_spec *spec, qt_run_t **out, qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_run_init: out is NULL");
  *out = NULL;
  if (!spec) return qt_err_set(err, QT_EINVAL, "qt_run_init: spec is NULL");
  int rc = qt_backend_kind_check(spec->device, err);
  return rc < 0 ? rc : qt__run_init_ops(spec, qt__ops_for(spec->device), out, err);
}

void qt_run_set_stop(qt_run_t *run, int (*should_stop)(void *user), void *user) {
  if (!run) return;
  run->stop = should_stop;
  run->stop_user = user;
}

/* 1 when the stop hook asks to abandon the epoch. */
static int stop_requested(const qt_run_t *run) {
  return run->stop && run->stop(run->stop_user);
}

long qt_run_epochs_done(const qt_run_t *run) {
  return run ? run->done : 0;
}
double qt_run_best_score(const qt_run_t *run) {
  return run ? run->best : NAN;
}
qt_model_t *qt_run_model(qt_run_t *run) {
  return run ? run->model : NULL;
}

/* ------------------------------------------------------------------------- */
/* One epoch                                                                  */
/* ------------------------------------------------------------------------- */

/* The trainable mask of epoch `epoch` (from 0) into mask (n_tensors);
 * returns the number of trainable parameters. */
static size_t trainable_mask(const qt_run_t *run, long epoch, unsigned char *mask) {
  double pct = run->spec.pct_to_freeze;
  if (run->spec.linear_probing && epoch < run->spec.epochs / 2) pct = 1.0;
  size_t count = 0;
  int lora = run->spec.adapter != QT_ADAPTER_KIND_NONE;
  for (size_t i = 0; i < run->n_tensors; i++) {
    const run_tensor *t = &run->tensors[i];
    int block_on = pct <= 0.0 || (double)t->unit / (double)run->units > pct;
    /* In adapter runs only the adapters of trainable blocks and the head
     * train. */
    int on = t->head || (block_on && (!lora || t->adapted));
    if (t->buffer) {
      mask[i] = on ? MASK_KEEP : MASK_OFF;
      continue;
    }
    mask[i] = on ? MASK_STEP : MASK_OFF;
    if (on && t->adapted) {
      count += (size_t)run->spec.adapter_rank * (t->rows + t->cols);
    } else if (on) {
      qt_model_tensor vt;
      qt_model_tensor_at(run->model, i, &vt);
      count += vt.numel;
    }
  }
  return count;
}

/* n floats (at least one) of zeros on the run's backend, in *out. */
static int backend_zeros(const qt_run_t *run, float **out, size_t n, qt_err *err) {
  size_t bytes = (n ? n : 1) * sizeof **out;
  int rc = run->ops->alloc((void **)out, bytes, err);
  if (rc == 0) rc = run->ops->zero(*out, bytes, err);
  if (rc < 0) {
    run->ops->release(*out);
    *out = NULL;
    return qt_err_prefix(err, rc, "optimizer state");
  }
  return 0;
}

static int ensure_state(qt_run_t *run, size_t i, size_t numel, qt_err *err) {
  run_tensor *t = &run->tensors[i];
  qt_optim_kind kind = run->spec.optim.kind;
  /* An adapted weight's state is A's (s1, s2) and B's (b1, b2). */
  size_t rank = (size_t)run->spec.adapter_rank;
  size_t na = t->adapted ? rank * t->cols : numel, nb = t->adapted ? t->rows * rank : 0;
  int rc;
  if (kind != QT_OPTIM_KIND_SGD && !t->s1) {
    if ((rc = backend_zeros(run, &t->s1, na, err)) < 0) return rc;
    if (nb && (rc = backend_zeros(run, &t->b1, nb, err)) < 0) return rc;
  }
  if ((kind == QT_OPTIM_KIND_ADAM || kind == QT_OPTIM_KIND_ADAMW) && !t->s2) {
    if ((rc = backend_zeros(run, &t->s2, na, err)) < 0) return rc;
    if (nb && (rc = backend_zeros(run, &t->b2, nb, err)) < 0) return rc;
  }
  return 0;
}

/* Whether tensor i needs theta0: L2-SP and SFA for every tensor but the
 * new head (it has no pretrained value), SPD for every tensor. */
static int needs_reference(const qt_run_t *run, size_t i) {
  const qt_optim_params *o = &run->spec.optim;
  if (run->tensors[i].adapted) return 1; /* W0 of the merge */
  if (o->decay == QT_DECAY_KIND_SPD) return 1;
  if (run->tensors[i].head) return 0;
  return run->spec.sfa || qt_optim_l2sp_coefficient(o) > 0.0;
}

/* Takes theta0 of tensor i from its current values, once: call it when the
 * tensor first becomes trainable, before anything changes it (a frozen
 * tensor still equals the pretrained checkpoint, the head its seeded
 * draw), and in qt_run_load before the checkpoint overwrites it. */
static int ensure_reference(qt_run_t *run, size_t i, qt_err *err) {
  run_tensor *t = &run->tensors[i];
  if (t->ref || !needs_reference(run, i)) return 0;
  qt_model_tensor vt;
  qt_model_tensor_at(run->model, i, &vt);
  int rc = run->ops->alloc((void **)&t->ref, (vt.numel ? vt.numel : 1) * sizeof *t->ref, err);
  if (rc == 0) rc = run->ops->copy(t->ref, vt.data, vt.numel * sizeof *t->ref, err);
  if (rc < 0) {
    run->ops->release(t->ref);
    t->ref = NULL;
    return qt_err_prefix(err, rc, "the reference weights");
  }
  return 0;
}

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Optimizer steps per epoch: one per batch, or one per GOODFIT cycle of
 * n_ref + 1 batches (an incomplete cycle makes none). */
static long steps_per_epoch(const qt_run_t *run) {
  long batches = (long)qt_batch_iter_count(run->train_it);
  return run->spec.goodfit ? batches / (run->spec.goodfit_n_ref + 1) : batches;
}

/* The parameters a trainable tensor updates: itself, or the two adapter
 * matrices of an adapted weight (theta0 = 0 for both, SPD's adapter mode). */
typedef struct param_slice {
  float *data, *grad, *ref, *s1, *s2;
  size_t n;
  int decay; /* weight decay toward 0 applies */
} param_slice;

static size_t tensor_slices(run_tensor *t, const qt_model_tensor *vt, size_t rank,
                            param_slice out[2]) {
  if (t->adapted) {
    out[0] = (param_slice){t->lora_a, t->grad_a, NULL, t->s1, t->s2, rank * t->cols, 1};
    out[1] = (param_slice){t->lora_b, t->grad_b, NULL, t->b1, t->b2, t->rows * rank, 1};
    return 2;
  }
  out[0] = (param_slice){vt->data, vt->grad, t->ref, t->s1, t->s2, vt->numel, vt->decay};
  return 1;
}

/* The run's backend scalars (run->scalars), allocated on first use. */
static int run_scalars(qt_run_t *run, qt_err *err) {
  if (run->scalars) return 0;
  return run->ops->alloc((void **)&run->scalars, 4 * sizeof(double), err);
}

/* qt_optim_spd_step on the backend: the statistics before the plain step
 * (without any weight decay) and the projection after it, all where the
 * tensor is (the CPU's table runs qt_optim_spd_step's own halves). */
static int spd_step(qt_run_t *run, double lr, long step, const param_slice *q, qt_err *err) {
  const qt__ops *ops = run->ops;
  qt_optim_params base = run->spec.optim;
  base.weight_decay = 0.0;
  base.decay = QT_DECAY_KIND_NONE;
  int rc = run_scalars(run, err);
  double *stats = run->scalars + 1;
  qt__optim_slice one = {q->data, q->grad, q->s1, q->s2, q->n, lr, step, 0};
  if (rc == 0) rc = ops->spd_stats(q->data, q->grad, q->ref, q->n, stats, err);
  if (rc == 0) rc = ops->optim_steps(&base, &one, 1, err);
  if (rc == 0)
    rc = ops->spd_project(q->data, q->ref, q->n, run->spec.optim.weight_decay, stats, err);
  return rc;
}

/* One step of every trainable tensor: the adapters' gradients from dW, the
 * L2-SP gradient (a loss term, so before clipping, as Quick-Tune adds it
 * to the loss), clipping, the optimizer (or SPD) step, SFA's average when
 * this step is due, and the merge of adapted weights. The tensors' own
 * arithmetic goes through the backend's op table; Co-Tuning's source head
 * stays in host memory (its arithmetic on the features runs on the host). */
static int optimizer_step(qt_run_t *run, double lr, qt_err *err) {
  const qt__ops *ops = run->ops;
  const qt_optim_params *o = &run->spec.optim;
  size_t rank = (size_t)run->spec.adapter_rank;
  int rosa = run->spec.adapter == QT_ADAPTER_KIND_ROSA;
  double lora_scale = rosa ? 1.0 : qt_lora_scale(run->spec.adapter_alpha, run->spec.adapter_rank);
  double l2sp = qt_optim_l2sp_coefficient(o);
  param_slice sl[2];
  int rc;
#define RUN_TRY(call)                 \
  do {                                \
    if ((rc = (call)) < 0) return rc; \
  } while (0)
  for (size_t i = 0; i < run->n_tensors; i++) {
    run_tensor *t = &run->tensors[i];
    if (run->trainable[i] != MASK_STEP) continue;
    qt_model_tensor vt;
    qt_model_tensor_at(run->model, i, &vt);
    if (t->adapted)
      RUN_TRY(ops->lora_gradients(vt.grad, t->lora_a, t->lora_b, t->rows, t->cols, rank, lora_scale,
                                  t->grad_a, t->grad_b, err));
    if (l2sp > 0.0 && !t->head) {
      size_t ns = tensor_slices(t, &vt, rank, sl);
      for (size_t k = 0; k < ns; k++)
        RUN_TRY(ops->l2sp_gradient(sl[k].grad, sl[k].data, sl[k].ref, sl[k].n, l2sp, err));
    }
  }
  double clip = 1.0;
  if (o->clip_grad > 0.0) {
    /* Summed where the gradients are, downloaded once. */
    RUN_TRY(run_scalars(run, err));
    RUN_TRY(ops->zero(run->scalars, sizeof(double), err));
    for (size_t i = 0; i < run->n_tensors; i++) {
      if (run->trainable[i] != MASK_STEP) continue;
      qt_model_tensor vt;
      qt_model_tensor_at(run->model, i, &vt);
      size_t ns = tensor_slices(&run->tensors[i], &vt, rank, sl);
      for (size_t k = 0; k < ns; k++)
        RUN_TRY(ops->sum_squares(sl[k].grad, sl[k].n, run->scalars, err));
    }
    double sum = 0.0;
    RUN_TRY(ops->download(&sum, run->scalars, sizeof sum, err));
    sum += cotuning_grad_sq(run);
    double norm = sqrt(sum);
    double coef = o->clip_grad / (norm + 1e-6);
    if (coef < 1.0) clip = coef;
  }
  /* The plain steps of all tensors go to the backend in one call (the
   * CUDA table's Adam takes them in a few launches, not one per tensor);
   * SPD's statistics and projection wrap each tensor's step on its own. */
  size_t steps = 0;
  for (size_t i = 0; i < run->n_tensors; i++) {
    if (run->trainable[i] != MASK_STEP) continue;
    run_tensor *t = &run->tensors[i];
    qt_model_tensor vt;
    qt_model_tensor_at(run->model, i, &vt);
    double scale = pow(o->layer_decay, (double)(run->units + 1 - t->layer));
    t->steps++;
    size_t ns = tensor_slices(t, &vt, rank, sl);
    for (size_t k = 0; k < ns; k++) {
      param_slice *q = &sl[k];
      if (clip < 1.0) RUN_TRY(ops->scale(q->grad, (float)clip, q->n, err));
      if (o->decay == QT_DECAY_KIND_SPD)
        RUN_TRY(spd_step(run, lr * scale, t->steps, q, err));
      else
        run->slices[steps++] =
            (qt__optim_slice){q->data, q->grad, q->s1, q->s2, q->n, lr * scale, t->steps, q->decay};
    }
  }
  if (steps) RUN_TRY(ops->optim_steps(o, run->slices, steps, err));
  cotuning_step(run, lr, clip);
  run->global_step++;
  if (run->spec.sfa) {
    /* SFA [RECON]: T is the planned run (epochs x batches per epoch). For
     * adapters theta0 = 0 and only B is averaged, which is exactly
     * W <- (1 - beta) W + beta W0 for the merged weight. */
    long total = run->spec.epochs * steps_per_epoch(run);
    if (qt_sfa_due(qt_sfa_interval(run->spec.sfa_p, total), total, run->global_step)) {
      for (size_t i = 0; i < run->n_tensors; i++) {
        run_tensor *t = &run->tensors[i];
        if (run->trainable[i] != MASK_STEP || t->head) continue;
        qt_model_tensor vt;
        qt_model_tensor_at(run->model, i, &vt);
        if (t->adapted && rosa)
          RUN_TRY(
              ops->sfa_average(t->rosa_fixed, t->ref, t->rows * t->cols, run->spec.sfa_beta, err));
        if (t->adapted)
          RUN_TRY(ops->sfa_average(t->lora_b, NULL, t->rows * rank, run->spec.sfa_beta, err));
        else
          RUN_TRY(ops->sfa_average(vt.data, t->ref, vt.numel, run->spec.sfa_beta, err));
      }
    }
  }
#undef RUN_TRY
  for (size_t i = 0; i < run->n_tensors; i++) {
    run_tensor *t = &run->tensors[i];
    if (run->trainable[i] != MASK_STEP || !t->adapted) continue;
    qt_model_tensor vt;
    qt_model_tensor_at(run->model, i, &vt);
    rc = ops->lora_merge(vt.data, rosa ? t->rosa_fixed : t->ref, t->lora_a, t->lora_b, t->rows,
                         t->cols, rank, lora_scale, err);
    if (rc < 0) return rc;
  }
  return 0;
}

/* ROSA's resample at the start of epoch e: factorize every trainable
 * adapted weight from its merged value, merge again, and rebuild the
 * optimizer (every trainable tensor's state zeroed, step counts 0, as the
 * reference constructs a new optimizer). The windows come from a stream of
 * (seed, epoch). */
static int rosa_resample(qt_run_t *run, long e, qt_err *err) {
  size_t rank = (size_t)run->spec.adapter_rank;
  qt_rng_t *rng = NULL;
  int rc = qt_rng_fork(run->root_rng, 0x726f736100000000ull + (uint64_t)e, &rng, err);
  if (rc < 0) return rc;
  const qt__ops *ops = run->ops;
  /* On a device the factorization (LAPACK's SVD) runs on host copies. */
  float *stage = NULL;
  for (size_t i = 0; i < run->n_tensors && rc == 0; i++) {
    run_tensor *t = &run->tensors[i];
    if (run->trainable[i] != MASK_STEP) continue;
    qt_model_tensor vt;
    qt_model_tensor_at(run->model, i, &vt);
    if (t->adapted) {
      size_t n = t->rows < t->cols ? t->rows : t->cols;
      size_t start = qt_rosa_window_start(n, rank, rng);
      size_t nw = t->rows * t->cols, na = rank * t->cols, nb = t->rows * rank;
      float *w = vt.data, *fixed = t->rosa_fixed, *a = t->lora_a, *b = t->lora_b;
      if (!ops->host_memory) {
        float *grown = realloc(stage, (2 * nw + na + nb) * sizeof *stage);
        if (!grown) {
          rc = qt_err_set(err, QT_ENOMEM, "out of memory for ROSA's host copies");
          break;
        }
        stage = grown;
        w = stage;
        fixed = w + nw;
        a = fixed + nw;
        b = a + na;
        rc = ops->download(w, vt.data, nw * sizeof *w, err);
      }
      if (rc == 0) rc = qt_rosa_factorize(w, t->rows, t->cols, rank, start, fixed, a, b, err);
      if (rc == 0 && !ops->host_memory) {
        rc = ops->upload(t->rosa_fixed, fixed, nw * sizeof *fixed, err);
        if (rc == 0) rc = ops->upload(t->lora_a, a, na * sizeof *a, err);
        if (rc == 0) rc = ops->upload(t->lora_b, b, nb * sizeof *b, err);
      }
      if (rc == 0)
        rc = ops->lora_merge(vt.data, t->rosa_fixed, t->lora_a, t->lora_b, t->rows, t->cols, rank,
                             1.0, err);
      if (rc < 0) {
        qt_err_prefix(err, rc, "ROSA resample of %s", vt.name);
        break;
      }
    }
    float **slots[RUN_ARRAYS];
    size_t counts[RUN_ARRAYS];
    tensor_arrays(run, i, slots, counts);
    float *states[4] = {t->s1, t->s2, t->b1, t->b2};
    size_t sizes[4] = {counts[0], counts[1], counts[8], counts[9]};
    for (int k = 0; k < 4 && rc == 0; k++) {
      if (states[k]) rc = ops->zero(states[k], sizes[k] * sizeof(float), err);
    }
    t->steps = 0;
  }
  free(stage);
  qt_rng_free(rng);
  return rc;
}

/* One batch of a GOODFIT cycle [RECON] (see "GOODFIT in runs" in
 * qt_finetune.h): the gradient of the batch is in the model. The
 * arithmetic runs where the tensors are. */
static int goodfit_step(qt_run_t *run, double lr, qt_err *err) {
  const qt__ops *ops = run->ops;
  const qt_optim_params *o = &run->spec.optim;
  int rc = 0;
  if (run->goodfit_phase == 0) {
    for (size_t i = 0; i < run->n_tensors && rc == 0; i++) {
      if (run->trainable[i] != MASK_STEP) continue;
      qt_model_tensor vt;
      qt_model_tensor_at(run->model, i, &vt);
      rc = ops->copy(run->tensors[i].goodfit_ref, vt.data, vt.numel * sizeof(float), err);
    }
  }
  if (rc == 0 && run->goodfit_phase < run->spec.goodfit_n_ref) {
    /* A reference step: stateless SGD, no decay, no clipping. */
    for (size_t i = 0; i < run->n_tensors && rc == 0; i++) {
      if (run->trainable[i] != MASK_STEP) continue;
      qt_model_tensor vt;
      qt_model_tensor_at(run->model, i, &vt);
      double scale = pow(o->layer_decay, (double)(run->units + 1 - run->tensors[i].layer));
      float f = (float)(run->spec.goodfit_lr_ref_ratio * lr * scale);
      rc = ops->axpy(vt.data, -f, vt.grad, vt.numel, err); /* data -= f grad */
    }
    run->goodfit_phase++;
    return rc;
  }
  /* The gradient at the displaced point: back to theta_ref, project the
   * gradient against delta = theta - theta_ref, then the main step. */
  if (rc == 0) rc = run_scalars(run, err);
  for (size_t i = 0; i < run->n_tensors && rc == 0; i++) {
    if (run->trainable[i] != MASK_STEP) continue;
    qt_model_tensor vt;
    qt_model_tensor_at(run->model, i, &vt);
    const float *ref = run->tensors[i].goodfit_ref;
    rc = ops->axpy(vt.data, -1.0f, ref, vt.numel, err); /* data holds delta */
    if (rc == 0) rc = ops->goodfit_project(vt.grad, vt.data, vt.numel, run->scalars + 1, err);
    if (rc == 0) rc = ops->copy(vt.data, ref, vt.numel * sizeof(float), err);
  }
  if (rc < 0) return rc;
  run->goodfit_phase = 0;
  return optimizer_step(run, lr, err);
}

/* Drops a GOODFIT cycle left incomplete at the end of an epoch. */
static int goodfit_drop_cycle(qt_run_t *run, qt_err *err) {
  if (run->goodfit_phase == 0) return 0;
  int rc = 0;
  for (size_t i = 0; i < run->n_tensors && rc == 0; i++) {
    if (run->trainable[i] != MASK_STEP) continue;
    qt_model_tensor vt;
    qt_model_tensor_at(run->model, i, &vt);
    rc = run->ops->copy(vt.data, run->tensors[i].goodfit_ref, vt.numel * sizeof(float), err);
  }
  run->goodfit_phase = 0;
  return rc;
}

/* poll: 1 to honour the stop hook (validation inside an epoch); returns 1
 * when it stopped. */
static int evaluate(qt_run_t *run, qt_batch_iter_t *it, int poll, double *top1, double *top5,
                    double *loss, qt_err *err) {
  int rc = qt_batch_iter_start(it, 0, 0, err);
  if (rc < 0) return rc;
  size_t n = 0, hit1 = 0, hit5 = 0;
  double loss_sum = 0.0;
  qt_batch batch;
  while ((rc = qt_batch_iter_next(it, &batch, err)) == 1) {
    if (poll && stop_requested(run)) return 1;
    rc = qt_model_forward(run->model, batch.inputs, batch.size, 0, err);
    if (rc < 0) return rc;
    double l;
    rc = qt_model_loss(run->model, (const int *)batch.labels, NULL, 0.0, &l, err);
    if (rc < 0) return rc;
    loss_sum += l * (double)batch.size;
    const float *logits = qt_model_logits(run->model);
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

/* With amp, the matrix products of the run's work between amp_enter and
 * amp_leave are BF16 (on a CPU backend this changes nothing); without,
 * the process's setting stays as it is. */
static qt_matmul_precision amp_enter(const qt_run_t *run) {
  return run->spec.amp ? run->ops->set_matmul_precision(QT_MATMUL_BF16) : QT_MATMUL_FP32;
}

static void amp_leave(const qt_run_t *run, qt_matmul_precision previous) {
  if (run->spec.amp) run->ops->set_matmul_precision(previous);
}

int qt_run_evaluate_test(qt_run_t *run, double *top1, double *top5, double *loss, qt_err *err) {
  if (!run || !top1 || !top5 || !loss)
    return qt_err_set(err, QT_EINVAL, "qt_run_evaluate_test: NULL argument");
  *top1 = *top5 = *loss = NAN;
  if (!run->test_it) return 0;
  void *stream = stream_enter(run);
  qt_matmul_precision previous = amp_enter(run);
  int rc = evaluate(run, run->test_it, 0, top1, top5, loss, err);
  amp_leave(run, previous);
  stream_leave(run, stream);
  return rc;
}

static int run_epoch(qt_run_t *run, qt_run_epoch_result *out, qt_err *err);

int qt_run_epoch(qt_run_t *run, qt_run_epoch_result *out, qt_err *err) {
  if (!run || !out) return qt_err_set(err, QT_EINVAL, "qt_run_epoch: NULL argument");
  void *stream = stream_enter(run);
  qt_matmul_precision previous = amp_enter(run);
  int rc = run_epoch(run, out, err);
  amp_leave(run, previous);
  stream_leave(run, stream);
  return rc;
}

static int run_epoch(qt_run_t *run, qt_run_epoch_result *out, qt_err *err) {
  if (run->diverged || run->stopped)
    return qt_err_set(err, QT_EINVAL, "qt_run_epoch: the run %s; it cannot continue",
                      run->stopped ? "was stopped within an epoch" : "diverged");
  memset(out, 0, sizeof *out);
  long e = run->done;
  out->epoch = e + 1;
  out->status = QT_RUN_STATUS_OK;
  out->score = out->top5 = out->val_loss = NAN;
  double t0 = now_seconds();

  out->trainable = trainable_mask(run, e, run->trainable);
  for (size_t i = 0; i < run->n_tensors; i++) {
    if (run->trainable[i] != MASK_STEP) continue;
    qt_model_tensor vt;
    qt_model_tensor_at(run->model, i, &vt);
    int rc = ensure_state(run, i, vt.numel, err);
    if (rc == 0) rc = ensure_reference(run, i, err);
    if (rc == 0 && run->spec.goodfit && !run->tensors[i].goodfit_ref) {
      rc = run->ops->alloc((void **)&run->tensors[i].goodfit_ref,
                           (vt.numel ? vt.numel : 1) * sizeof(float), err);
      if (rc < 0) qt_err_prefix(err, rc, "GOODFIT's reference state");
    }
    if (rc < 0) return rc;
  }
  /* Every epoch has the same number of steps, so the run's step count
   * follows from the epoch: nothing to save for it. */
  run->global_step = e * steps_per_epoch(run);
  run->goodfit_phase = 0;
  if (run->spec.adapter == QT_ADAPTER_KIND_ROSA) {
    int rc = rosa_resample(run, e, err);
    if (rc < 0) return rc;
    cotuning_reset_state(run);
  }
  /* The backward pass stops at the lowest trainable unit. */
  long lowest = run->units + 1;
  for (size_t i = 0; i < run->n_tensors; i++) {
    const run_tensor *t = &run->tensors[i];
    if (run->trainable[i] == MASK_STEP && !t->head && t->unit < lowest) lowest = t->unit;
  }
  qt_model_set_trainable_from(run->model, lowest);
  double lr = qt_schedule_lr(&run->spec.schedule, run->spec.optim.lr, e, &run->plateau);
  out->lr = lr;

  /* Head dropout and StochNorm draw from streams of (seed, epoch), so a
   * resumed epoch draws the same masks. */
  qt_rng_t *drop_rng = NULL, *stoch_rng = NULL;
  int rc = 0;
  if (run->spec.drop > 0.0) {
    rc = qt_rng_fork(run->root_rng, 0x64726f7000000000ull + (uint64_t)e, &drop_rng, err);
    if (rc == 0) rc = qt_model_set_head_dropout(run->model, run->spec.drop, drop_rng, err);
  }
  if (rc == 0 && run->spec.stoch_norm) {
    rc = qt_rng_fork(run->root_rng, 0x73746f6300000000ull + (uint64_t)e, &stoch_rng, err);
    if (rc == 0) rc = qt_model_set_stoch_norm(run->model, 0.5, stoch_rng, err);
  }
  if (rc == 0) rc = train_epoch(run, e, out, t0, err);
  qt_model_set_head_dropout(run->model, 0.0, NULL, NULL);
  qt_model_set_stoch_norm(run->model, 0.0, NULL, NULL);
  qt_rng_free(drop_rng);
  qt_rng_free(stoch_rng);
  if (rc < 0 || out->status != QT_RUN_STATUS_OK) return rc;

  rc = evaluate(run, run->val_it, 1, &out->score, &out->top5, &out->val_loss, err);
  if (rc < 0) return rc;
  if (rc == 1) {
    run->stopped = 1;
    out->status = QT_RUN_STATUS_STOPPED;
    out->score = out->top5 = out->val_loss = NAN;
    out->seconds = now_seconds() - t0;
    return 0;
  }
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

/* Queues the upload of a training batch's images into run->staged. */
static int stage_batch(qt_run_t *run, const qt_batch *b, qt_err *err) {
  size_t bytes = b->size * b->channels * b->height * b->width * sizeof *b->inputs;
  return run->ops->upload_async(run->staged, b->inputs, bytes, err);
}

/* The training half of an epoch: every batch forward, loss, backward, step. */
static int train_epoch(qt_run_t *run, long e, qt_run_epoch_result *out, double t0, qt_err *err) {
  double lr = out->lr;
  int rc = qt_batch_iter_start(run->train_it, (uint64_t)e, 0, err);
  if (rc < 0) return rc;
  size_t images = 0;
  double loss_sum = 0.0;
  qt_batch batch;
  /* With run->staged, each batch after the first is fetched after the
   * loss of the one before (the host is then done with that one's arrays,
   * and the device with the staged images) and its images are queued for
   * upload there, so that the upload runs beside the backward pass and
   * the step; its forward waits for them. `staged`: the batch in `batch`
   * has its images in run->staged. */
  rc = qt_batch_iter_next(run->train_it, &batch, err);
  int staged = rc == 1 && run->staged;
  if (staged && (rc = stage_batch(run, &batch, err)) == 0) rc = 1;
  while (rc == 1) {
    if (stop_requested(run)) {
      run->stopped = 1;
      out->status = QT_RUN_STATUS_STOPPED;
      out->seconds = now_seconds() - t0;
      return 0;
    }
    if (staged) {
      rc = run->ops->upload_wait(err);
      if (rc == 0) rc = qt__model_forward_staged(run->model, run->staged, batch.size, 1, err);
    } else {
      rc = qt_model_forward(run->model, batch.inputs, batch.size, 1, err);
    }
    if (rc < 0) return rc;
    double loss;
    rc = qt_model_loss(run->model, NULL, batch.targets, 0.0, &loss, err);
    if (rc < 0) return rc;
    if (!isfinite(loss)) {
      run->diverged = 1;
      out->status = QT_RUN_STATUS_DIVERGED;
      out->train_loss = loss;
      out->seconds = now_seconds() - t0;
      QT_LOG_WARN("epoch %ld: training loss is %g after %zu images: the run diverged", e + 1, loss,
                  images);
      return 0;
    }
    if (run->spec.bss_reg > 0.0) {
      /* BSS: its gradient joins the features' before the backward pass;
       * the penalty is not part of the reported training loss. */
      size_t fb = 0;
      const float *feat = qt_model_features(run->model, &fb);
      double pen = 0.0;
      rc = qt_bss_penalty(feat, fb, qt_model_feature_dim(run->model), run->spec.bss_k,
                          run->spec.bss_reg, &pen, qt_model_feature_grad(run->model), err);
      if (rc < 0) return qt_err_prefix(err, rc, "BSS");
    }
    if (run->spec.delta_reg > 0.0) {
      /* DELTA: the frozen source's features of the same (augmented) batch. */
      rc = qt_model_forward(run->source, batch.inputs, batch.size, 0, err);
      if (rc < 0) return qt_err_prefix(err, rc, "DELTA source forward");
      size_t fb = 0, sb = 0;
      const float *feat = qt_model_features(run->model, &fb);
      const float *src = qt_model_features(run->source, &sb);
      double pen = 0.0;
      qt_delta_penalty(feat, src, fb * qt_model_feature_dim(run->model), run->spec.delta_reg, &pen,
                       qt_model_feature_grad(run->model));
    }
    if (run->cot) {
      /* Co-Tuning: the source head's gradient, and its part of the features'. */
      double pen = 0.0;
      rc = cotuning_batch(run, &batch, &pen, err);
      if (rc < 0) return qt_err_prefix(err, rc, "Co-Tuning");
      if (!isfinite(pen)) {
        run->diverged = 1;
        out->status = QT_RUN_STATUS_DIVERGED;
        out->train_loss = pen;
        out->seconds = now_seconds() - t0;
        QT_LOG_WARN("epoch %ld: the Co-Tuning penalty is %g after %zu images: the run diverged",
                    e + 1, pen, images);
        return 0;
      }
    }
    size_t size = batch.size;
    int next = 1;
    if (run->staged) {
      next = qt_batch_iter_next(run->train_it, &batch, err);
      if (next < 0) return next;
      staged = next == 1;
      if (staged && (rc = stage_batch(run, &batch, err)) < 0) return rc;
    }
    qt_model_zero_grad(run->model);
    rc = qt_model_backward(run->model, err);
    if (rc < 0) return rc;
    rc = run->spec.goodfit ? goodfit_step(run, lr, err) : optimizer_step(run, lr, err);
    if (rc < 0) return rc;
    loss_sum += loss * (double)size;
    images += size;
    rc = run->staged ? next : qt_batch_iter_next(run->train_it, &batch, err);
  }
  if (rc < 0) return rc;
  if (run->spec.goodfit && (rc = goodfit_drop_cycle(run, err)) < 0) return rc;
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

/* What a checkpoint stores for trainable tensor i: the tensor, or for an
 * adapted weight its two adapter matrices under peft's names
 * ("<module>.lora_A.weight", "<module>.lora_B.weight"); each with its
 * optimizer states (NULL before the first step). */
typedef struct saved_part {
  char name[256];
  size_t ndim;
  const size_t *shape;
  float *data, *s1, *s2;
  size_t n;
} saved_part;

/* dst (256 bytes) = a b; names of timm models are far shorter. */
static void join_name(char *dst, const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  QT_ASSERT(la + lb < 256);
  memcpy(dst, a, la);
  memcpy(dst + la, b, lb + 1);
}

static size_t saved_parts(const qt_run_t *run, size_t i, saved_part out[2]) {
  const run_tensor *t = &run->tensors[i];
  qt_model_tensor vt;
  qt_model_tensor_at(run->model, i, &vt);
  if (!t->adapted || run->spec.adapter == QT_ADAPTER_KIND_ROSA) {
    /* ROSA: the merged weight alone; the next epoch resamples from it and
     * rebuilds the adapters' state. */
    int rosa = t->adapted;
    snprintf(out[0].name, sizeof out[0].name, "%s", vt.name);
    out[0].ndim = vt.ndim;
    out[0].shape = vt.shape;
    out[0].data = vt.data;
    out[0].s1 = rosa ? NULL : t->s1;
    out[0].s2 = rosa ? NULL : t->s2;
    out[0].n = vt.numel;
    return 1;
  }
  size_t len = strlen(vt.name);
  int stem = (int)(len > 7 ? len - 7 : len); /* without ".weight" */
  snprintf(out[0].name, sizeof out[0].name, "%.*s.lora_A.weight", stem, vt.name);
  snprintf(out[1].name, sizeof out[1].name, "%.*s.lora_B.weight", stem, vt.name);
  out[0].ndim = out[1].ndim = 2;
  out[0].shape = t->shape_a;
  out[1].shape = t->shape_b;
  out[0].data = t->lora_a;
  out[1].data = t->lora_b;
  out[0].s1 = t->s1;
  out[0].s2 = t->s2;
  out[1].s1 = t->b1;
  out[1].s2 = t->b2;
  out[0].n = t->shape_a[0] * t->shape_a[1];
  out[1].n = t->shape_b[0] * t->shape_b[1];
  return 2;
}

/* The host copies a checkpoint of a run on a device is written from. */
typedef struct host_stage {
  float **copies; /* (cap) */
  size_t used, cap;
} host_stage;

/* p itself on the CPU; else a host copy of its n floats, kept in stage
 * (NULL with *rc set when the copy fails). */
static const float *host_view(const qt_run_t *run, const float *p, size_t n, host_stage *stage,
                              int *rc, qt_err *err) {
  if (!p || run->ops->host_memory || *rc < 0) return p;
  QT_ASSERT(stage->used < stage->cap);
  float *copy = malloc((n ? n : 1) * sizeof *copy);
  if (!copy) {
    *rc = qt_err_set(err, QT_ENOMEM, "qt_run_save: out of memory for a host copy");
    return NULL;
  }
  stage->copies[stage->used++] = copy;
  *rc = run->ops->download(copy, p, n * sizeof *copy, err);
  return copy;
}

static int run_save(const qt_run_t *run, const char *path, qt_err *err);

int qt_run_save(const qt_run_t *run, const char *path, qt_err *err) {
  if (!run || !path) return qt_err_set(err, QT_EINVAL, "qt_run_save: NULL argument");
  void *stream = stream_enter(run);
  int rc = run_save(run, path, err);
  stream_leave(run, stream);
  return rc;
}

static int run_save(const qt_run_t *run, const char *path, qt_err *err) {
  if (run->diverged || run->stopped)
    return qt_err_set(err, QT_EINVAL, "qt_run_save: the run %s; not overwriting %s",
                      run->stopped ? "was stopped within an epoch" : "diverged", path);
  /* The tensors trained in the last epoch (the first epoch's before any):
   * every other tensor still equals the pretrained checkpoint. */
  unsigned char *mask = malloc(run->n_tensors ? run->n_tensors : 1);
  if (!mask) return qt_err_set(err, QT_ENOMEM, "qt_run_save: out of memory");
  trainable_mask(run, run->done > 0 ? run->done - 1 : 0, mask);

  /* Per tensor at most two parts with two states each, and a step key;
   * Co-Tuning's source head: two tensors, their states and step keys. */
  size_t cap = 6 * run->n_tensors + 8, n = 0, nm = 0;
  qt_safetensors_tensor *tensors = calloc(cap, sizeof *tensors);
  qt_safetensors_pair *meta = calloc(run->n_tensors + 16, sizeof *meta);
  char *names = calloc(7 * run->n_tensors + 9, 256);
  char *values = calloc(run->n_tensors + 16, 64);
  host_stage stage = {calloc(cap, sizeof(float *)), 0, cap};
  if (!tensors || !meta || !names || !values || !stage.copies) {
    free(mask);
    free(tensors);
    free(meta);
    free(names);
    free(values);
    free(stage.copies);
    return qt_err_set(err, QT_ENOMEM, "qt_run_save: out of memory");
  }
  int rc = 0;
  size_t name_used = 0, value_used = 0;
#define ADD_META(k, ...)                   \
  do {                                     \
    char *v_ = values + 64 * value_used++; \
    snprintf(v_, 64, __VA_ARGS__);         \
    meta[nm].key = (k);                    \
    meta[nm].value = v_;                   \
    nm++;                                  \
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
    qt_model_tensor vt;
    qt_model_tensor_at(run->model, i, &vt);
    saved_part parts[2];
    size_t np = saved_parts(run, i, parts);
    const char *prefixes[2] = {state_prefix(run->spec.optim.kind, 0),
                               state_prefix(run->spec.optim.kind, 1)};
    for (size_t k = 0; k < np; k++) {
      char *pn = names + 256 * name_used++;
      join_name(pn, "", parts[k].name);
      tensors[n++] =
          (qt_safetensors_tensor){pn,
                                  QT_DTYPE_F32,
                                  parts[k].ndim,
                                  parts[k].shape,
                                  host_view(run, parts[k].data, parts[k].n, &stage, &rc, err),
                                  NULL};
      const float *states[2] = {parts[k].s1, parts[k].s2};
      for (int s = 0; s < 2; s++) {
        if (!states[s] || t->steps == 0) continue;
        char *nm_ = names + 256 * name_used++;
        join_name(nm_, prefixes[s], parts[k].name);
        tensors[n++] =
            (qt_safetensors_tensor){nm_,
                                    QT_DTYPE_F32,
                                    parts[k].ndim,
                                    parts[k].shape,
                                    host_view(run, states[s], parts[k].n, &stage, &rc, err),
                                    NULL};
      }
    }
    if (t->buffer) continue;
    char *key = names + 256 * name_used++;
    snprintf(key, 256, "%s%s", STEP_PREFIX, vt.name);
    ADD_META(key, "%ld", t->steps);
  }
  for (int k = 0; run->cot && k < 2; k++) {
    /* Co-Tuning's source head always trains. */
    const cot_param *q = &run->cot->p[k];
    tensors[n++] = (qt_safetensors_tensor){q->name, QT_DTYPE_F32, q->ndim, q->shape, q->data, NULL};
    const float *states[2] = {q->s1, q->s2};
    for (int j = 0; j < 2; j++) {
      if (!states[j] || run->cot->steps == 0) continue;
      char *sn = names + 256 * name_used++;
      join_name(sn, state_prefix(run->spec.optim.kind, j), q->name);
      tensors[n++] = (qt_safetensors_tensor){sn, QT_DTYPE_F32, q->ndim, q->shape, states[j], NULL};
    }
    char *key = names + 256 * name_used++;
    join_name(key, STEP_PREFIX, q->name);
    ADD_META(key, "%ld", run->cot->steps);
  }
#undef ADD_META
  if (rc == 0) rc = qt_safetensors_write(path, tensors, n, meta, nm, err);
  for (size_t k = 0; k < stage.used; k++) free(stage.copies[k]);
  free(stage.copies);
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
  int rc = qt_backend_kind_check(spec->device, err);
  return rc < 0 ? rc : qt__run_load_ops(path, spec, qt__ops_for(spec->device), out, err);
}

/* The checkpoint is read on the CPU; the run moves to ops at the end. */
int qt__run_load_ops(const char *path, const qt_run_spec *spec, const qt__ops *ops, qt_run_t **out,
                     qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_run_load: out is NULL");
  *out = NULL;
  if (!path || !spec || !ops) return qt_err_set(err, QT_EINVAL, "qt_run_load: NULL argument");
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
  rc = run_create(spec, &run, err);
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
    if (run->trainable[i] == MASK_OFF) continue;
    run_tensor *t = &run->tensors[i];
    qt_model_tensor vt;
    qt_model_tensor_at(run->model, i, &vt);
    char key[256];
    if (t->buffer) {
      rc = qt_safetensors_read_f32(st, vt.name, vt.data, vt.numel, err);
      if (rc < 0) goto schema;
      expected++;
      continue;
    }
    /* theta0 is the value before the checkpoint overwrites it. */
    if ((rc = ensure_reference(run, i, err)) < 0) goto fail;
    snprintf(key, sizeof key, "%s%s", STEP_PREFIX, vt.name);
    double steps;
    if ((rc = meta_number(st, key, &steps, err)) < 0) goto fail;
    t->steps = (long)steps;
    if (t->steps > 0 && (rc = ensure_state(run, i, vt.numel, err)) < 0) goto fail;
    saved_part parts[2];
    size_t np = saved_parts(run, i, parts);
    const char *prefixes[2] = {state_prefix(run->spec.optim.kind, 0),
                               state_prefix(run->spec.optim.kind, 1)};
    for (size_t k = 0; k < np; k++) {
      rc = qt_safetensors_read_f32(st, parts[k].name, parts[k].data, parts[k].n, err);
      if (rc < 0) goto schema;
      expected++;
      float *states[2] = {parts[k].s1, parts[k].s2};
      for (int s = 0; s < 2 && t->steps > 0; s++) {
        if (!states[s]) continue;
        join_name(key, prefixes[s], parts[k].name);
        rc = qt_safetensors_read_f32(st, key, states[s], parts[k].n, err);
        if (rc < 0) goto schema;
        expected++;
      }
    }
    /* An adapted weight is stored as its adapters: merge them. */
    if (t->adapted && run->spec.adapter == QT_ADAPTER_KIND_LORA)
      qt_lora_merge(vt.data, t->ref, t->lora_a, t->lora_b, t->rows, t->cols,
                    (size_t)run->spec.adapter_rank,
                    qt_lora_scale(run->spec.adapter_alpha, run->spec.adapter_rank));
  }
  for (int k = 0; run->cot && k < 2; k++) {
    /* Co-Tuning's source head and its optimizer state (R was recomputed
     * from the pretrained weights by qt_run_init). */
    cot_param *q = &run->cot->p[k];
    char key[256];
    double steps;
    join_name(key, STEP_PREFIX, q->name);
    if ((rc = meta_number(st, key, &steps, err)) < 0) goto fail;
    if (steps < 0 || steps != floor(steps)) {
      rc = qt_err_set(err, QT_ESCHEMA, "%s: bad step count %g of %s", path, steps, q->name);
      goto fail;
    }
    run->cot->steps = (long)steps;
    rc = qt_safetensors_read_f32(st, q->name, q->data, q->n, err);
    if (rc < 0) goto schema;
    expected++;
    float *states[2] = {q->s1, q->s2};
    for (int j = 0; j < 2 && run->cot->steps > 0; j++) {
      if (!states[j]) continue;
      join_name(key, state_prefix(run->spec.optim.kind, j), q->name);
      rc = qt_safetensors_read_f32(st, key, states[j], q->n, err);
      if (rc < 0) goto schema;
      expected++;
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
  st = NULL;
  if (!ops->host_memory && (rc = run_move(run, ops, err)) < 0) goto fail;
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
  void *stream = stream_enter(run);
  int rc = qt_model_save(run->model, path, err);
  stream_leave(run, stream);
  return rc;
}

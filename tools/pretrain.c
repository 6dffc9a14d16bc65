/*
 * pretrain - trains a small Vision Transformer or convolutional network
 * from random initialization with qtune's own engine, for the models of the
 * default hub (configs/hubs/default.yaml) and for the random-initialization
 * baselines of docs/pretrain-transfer.md and docs/cnn-transfer.md.
 *
 *   pretrain --data DIR --out FILE.safetensors
 *            [--arch PRESET] [--image-size PX] [--patch PX] [--width W]
 *            [--depth D] [--heads H] [--mlp-ratio R]
 *            [--epochs N] [--subset N_PER_CLASS] [--val-per-class N]
 *            [--test-per-class N] [--batch-size B] [--lr LR]
 *            [--weight-decay WD] [--warmup-epochs N] [--smoothing S]
 *            [--augment none|trivial_augment|random_augment]
 *            [--crop-scale F] [--hflip P]
 *            [--init CHECKPOINT [--family F] [--reinit]]
 *            [--mean M --std S] [--seed S] [--threads T]
 *            [--curve FILE.csv] [--name NAME]
 *
 * Presets (--arch; flags given after or before override their fields):
 *
 *   vit_tiny_28       28 px, patch 4, width 64, depth 4, heads 2
 *   vit_tiny_p7_28    28 px, patch 7, width 64, depth 4, heads 2
 *   vit_small_p7_28   28 px, patch 7, width 96, depth 6, heads 3
 *   vit_small_28      28 px, patch 4, width 96, depth 6, heads 3 (about 3x
 *                     slower than vit_small_p7_28 per image)
 *
 * and every convolutional architecture of qt_cnn_write_init
 * (mobilenetv2_tiny, resnet_tiny, efficientnet_tiny, resnet18, ...; see
 * qt_cnn_arch.c), at --image-size (default 32, the smallest a CNN takes:
 * 28 px data are upscaled).
 *
 * What it does:
 *   1. loads DIR with qt_data_load (MNIST-style IDX files, an ImageFolder,
 *      ...): the test split of the layout (t10k-* for IDX) is the test set;
 *      validation (--val-per-class images of each class, default 100) and
 *      training (--subset images of each class, default the rest) are
 *      drawn from the training split, disjoint, by a stream of the seed;
 *   2. draws the model with timm's initialization (qt_vit_init,
 *      qt_cnn_write_init) with one head row per class of the data (from
 *      the seed only, so the same seed and architecture give the same
 *      initial weights whatever the data);
 *   3. trains every tensor with the engine's pieces (batch iterator, model
 *      forward / backward, AdamW step, schedule; see train_model for why
 *      not qt_run_epoch): AdamW, a cosine schedule after a linear warmup,
 *      label smoothing, RandomResizedCrop with area scale (--crop-scale
 *      default 0.35, 1), a horizontal flip (--hflip, default 0.5),
 *      optionally TrivialAugment or RandAugment; one line per epoch;
 *   4. evaluates on the test set and writes the final weights to --out as
 *      a timm checkpoint (F32, timm's names) whose metadata records the
 *      architecture, the data, the command and the test top-1
 *      ("qtune.test_top1"): the value of the hub's pretrain_top1.
 *
 * --epochs 0 stops after step 2 and writes the random initialization to
 * --out (the baseline "same architecture from random initialization").
 * --init FILE starts from a timm checkpoint instead of random weights
 * (--family names its family, default vit; ViT heads from --heads or
 * --arch; a new head when the classes differ): the
 * same training loop as a fine-tuner with its own augmentation settings,
 * which docs/pretrain-transfer.md used to probe what the run API's fixed
 * training transform costs at 28 pixels. --reinit (convolutional families)
 * re-draws every weight of the --init checkpoint with timm's
 * initialization from the seed (qt_cnn_reinit): the same architecture,
 * metadata included, from random initialization; with --epochs 0 that is
 * the baseline of docs/cnn-transfer.md.
 *
 * Determinism: the subset, the initialization, the batch order and the
 * augmentation all derive from --seed, and the engine's results do not
 * depend on the number of threads, so the same command gives the same
 * checkpoint on the same machine.
 *
 * Exit codes: 0 done, 1 bad usage, 3 a failure (message on stderr).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "finetune/qt_finetune.h"

#define EXIT_USAGE 1
#define EXIT_FAIL 3

/* ------------------------------------------------------------------------- */
/* Options                                                                    */
/* ------------------------------------------------------------------------- */

typedef struct preset {
  const char *name;
  long image_size, patch, width, depth, heads;
} preset;

static const preset presets[] = {
    {"vit_tiny_28", 28, 4, 64, 4, 2},
    {"vit_tiny_p7_28", 28, 7, 64, 4, 2},
    {"vit_small_p7_28", 28, 7, 96, 6, 3},
    {"vit_small_28", 28, 4, 96, 6, 3},
};
#define N_PRESETS (sizeof presets / sizeof presets[0])

typedef struct options {
  const char *data, *out, *curve, *name, *arch;
  const char *init;   /* start from this timm checkpoint instead of random weights */
  const char *family; /* of --init */
  int cnn;            /* 1: a convolutional --arch or --family */
  int image_size_set; /* 1: --image-size was given */
  int reinit;         /* 1: --reinit */
  long image_size, patch, width, depth, heads;
  double mlp_ratio;
  long epochs;
  long subset;         /* training images per class; 0: all that remain */
  long val_per_class;  /* validation images per class, >= 1 */
  long test_per_class; /* test images per class; 0: the whole test split */
  long batch_size;
  double lr, weight_decay, smoothing, mean, std;
  double crop_scale; /* smallest area fraction of RandomResizedCrop */
  double hflip;      /* probability of a horizontal flip */
  long warmup_epochs;
  const char *augment;
  unsigned long long seed;
  int threads;
} options;

static void usage(FILE *f) {
  fprintf(f,
          "usage: pretrain --data DIR --out FILE.safetensors [--arch PRESET]\n"
          "                [--image-size PX] [--patch PX] [--width W] [--depth D] [--heads H]\n"
          "                [--mlp-ratio R] [--epochs N] [--subset N_PER_CLASS]\n"
          "                [--val-per-class N] [--test-per-class N] [--batch-size B] [--lr LR]\n"
          "                [--weight-decay WD] [--warmup-epochs N] [--smoothing S]\n"
          "                [--augment none|trivial_augment|random_augment] [--crop-scale F]\n"
          "                [--hflip P] [--init CHECKPOINT [--family F] [--reinit]]\n"
          "                [--mean M --std S]\n"
          "                [--seed S] [--threads T] [--curve FILE.csv] [--name NAME]\n"
          "presets:");
  for (size_t i = 0; i < N_PRESETS; i++) fprintf(f, " %s", presets[i].name);
  fprintf(f, ", and the convolutional architectures of make-cnn\n");
}

static int parse_long(const char *flag, const char *text, long lo, long hi, long *out) {
  char *end = NULL;
  long v = strtol(text, &end, 10);
  if (end == text || *end != '\0' || v < lo || v > hi) {
    fprintf(stderr, "pretrain: %s must be a whole number in [%ld, %ld], got '%s'\n", flag, lo, hi,
            text);
    return -1;
  }
  *out = v;
  return 0;
}

static int parse_double(const char *flag, const char *text, double lo, double hi, double *out) {
  char *end = NULL;
  double v = strtod(text, &end);
  if (end == text || *end != '\0' || !isfinite(v) || v < lo || v > hi) {
    fprintf(stderr, "pretrain: %s must be a number in [%g, %g], got '%s'\n", flag, lo, hi, text);
    return -1;
  }
  *out = v;
  return 0;
}

static int apply_preset(options *o, const char *name) {
  for (size_t i = 0; i < N_PRESETS; i++) {
    if (strcmp(presets[i].name, name) == 0) {
      o->arch = presets[i].name;
      o->image_size = presets[i].image_size;
      o->patch = presets[i].patch;
      o->width = presets[i].width;
      o->depth = presets[i].depth;
      o->heads = presets[i].heads;
      return 0;
    }
  }
  qt_model_family family;
  if (qt_cnn_arch_family(name, &family, NULL) == 0) {
    o->arch = name;
    o->cnn = 1;
    if (!o->image_size_set) o->image_size = 32;
    return 0;
  }
  fprintf(stderr, "pretrain: unknown --arch '%s'; presets:", name);
  for (size_t i = 0; i < N_PRESETS; i++) fprintf(stderr, " %s", presets[i].name);
  fprintf(stderr, " and the convolutional architectures of make-cnn\n");
  return -1;
}

/* Parses argv into *o; returns 0, or -1 after printing the problem. A
 * preset applies first wherever it is written, so explicit size flags
 * override it. */
static int parse_options(int argc, char **argv, options *o) {
  memset(o, 0, sizeof *o);
  o->arch = "custom";
  o->family = "vit";
  o->image_size = 28;
  o->patch = 4;
  o->width = 64;
  o->depth = 4;
  o->heads = 2;
  o->mlp_ratio = 4.0;
  o->epochs = 10;
  o->val_per_class = 100;
  o->batch_size = 64;
  o->lr = 1e-3;
  o->weight_decay = 0.05;
  o->warmup_epochs = 1; /* at a tenth of --lr */
  o->smoothing = 0.1;
  o->augment = "none";
  o->crop_scale = 0.35;
  o->hflip = 0.5;
  o->mean = 0.2860; /* Fashion-MNIST's pixel mean and std on [0, 1] */
  o->std = 0.3530;
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  o->threads = cpus < 1 ? 1 : (cpus > 8 ? 8 : (int)cpus);
  for (int i = 1; i + 1 < argc; i++) {
    if (strcmp(argv[i], "--image-size") == 0) o->image_size_set = 1;
  }
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--arch") == 0) {
      if (i + 1 >= argc) break;
      if (apply_preset(o, argv[i + 1]) < 0) return -1;
    }
  }
  for (int i = 1; i < argc; i++) {
    const char *flag = argv[i];
    if (strcmp(flag, "--help") == 0 || strcmp(flag, "-h") == 0) {
      usage(stdout);
      exit(0);
    }
    if (strcmp(flag, "--reinit") == 0) {
      o->reinit = 1;
      continue;
    }
    if (strncmp(flag, "--", 2) != 0 || i + 1 >= argc) {
      fprintf(stderr, "pretrain: %s: expected a flag with a value\n", flag);
      return -1;
    }
    const char *v = argv[++i];
    long x = 0;
    int rc = 0;
    if (strcmp(flag, "--arch") == 0)
      continue;
    else if (strcmp(flag, "--data") == 0)
      o->data = v;
    else if (strcmp(flag, "--out") == 0)
      o->out = v;
    else if (strcmp(flag, "--curve") == 0)
      o->curve = v;
    else if (strcmp(flag, "--init") == 0)
      o->init = v;
    else if (strcmp(flag, "--family") == 0)
      o->family = v;
    else if (strcmp(flag, "--name") == 0)
      o->name = v;
    else if (strcmp(flag, "--augment") == 0)
      o->augment = v;
    else if (strcmp(flag, "--image-size") == 0)
      rc = parse_long(flag, v, 1, 4096, &o->image_size);
    else if (strcmp(flag, "--patch") == 0)
      rc = parse_long(flag, v, 1, 4096, &o->patch);
    else if (strcmp(flag, "--width") == 0)
      rc = parse_long(flag, v, 1, 65536, &o->width);
    else if (strcmp(flag, "--depth") == 0)
      rc = parse_long(flag, v, 1, 1024, &o->depth);
    else if (strcmp(flag, "--heads") == 0)
      rc = parse_long(flag, v, 1, 1024, &o->heads);
    else if (strcmp(flag, "--mlp-ratio") == 0)
      rc = parse_double(flag, v, 0.01, 64, &o->mlp_ratio);
    else if (strcmp(flag, "--epochs") == 0)
      rc = parse_long(flag, v, 0, 100000, &o->epochs);
    else if (strcmp(flag, "--subset") == 0)
      rc = parse_long(flag, v, 1, 100000000, &o->subset);
    else if (strcmp(flag, "--val-per-class") == 0)
      rc = parse_long(flag, v, 1, 100000000, &o->val_per_class);
    else if (strcmp(flag, "--test-per-class") == 0)
      rc = parse_long(flag, v, 0, 100000000, &o->test_per_class);
    else if (strcmp(flag, "--batch-size") == 0)
      rc = parse_long(flag, v, 1, 65536, &o->batch_size);
    else if (strcmp(flag, "--lr") == 0)
      rc = parse_double(flag, v, 0, 10, &o->lr);
    else if (strcmp(flag, "--weight-decay") == 0)
      rc = parse_double(flag, v, 0, 10, &o->weight_decay);
    else if (strcmp(flag, "--warmup-epochs") == 0)
      rc = parse_long(flag, v, 0, 100000, &o->warmup_epochs);
    else if (strcmp(flag, "--crop-scale") == 0)
      rc = parse_double(flag, v, 0.01, 1, &o->crop_scale);
    else if (strcmp(flag, "--hflip") == 0)
      rc = parse_double(flag, v, 0, 1, &o->hflip);
    else if (strcmp(flag, "--smoothing") == 0)
      rc = parse_double(flag, v, 0, 0.99, &o->smoothing);
    else if (strcmp(flag, "--mean") == 0)
      rc = parse_double(flag, v, -10, 10, &o->mean);
    else if (strcmp(flag, "--std") == 0)
      rc = parse_double(flag, v, 1e-6, 10, &o->std);
    else if (strcmp(flag, "--seed") == 0) {
      char *end = NULL;
      o->seed = strtoull(v, &end, 10);
      if (end == v || *end != '\0' || v[0] == '-') {
        fprintf(stderr, "pretrain: --seed must be a whole number >= 0, got '%s'\n", v);
        return -1;
      }
    } else if (strcmp(flag, "--threads") == 0) {
      rc = parse_long(flag, v, 1, 256, &x);
      o->threads = (int)x;
    } else {
      fprintf(stderr, "pretrain: unknown flag %s\n", flag);
      return -1;
    }
    if (rc < 0) return -1;
  }
  if (!o->data || !o->out) {
    fprintf(stderr, "pretrain: --data DIR and --out FILE are required\n");
    return -1;
  }
  qt_model_family family;
  if (qt_model_family_parse(o->family, &family) != 0 ||
      !(qt_model_family_is_vit(family) || qt_model_family_is_cnn(family))) {
    fprintf(stderr, "pretrain: --family '%s' is not a ViT or convolutional family\n", o->family);
    return -1;
  }
  if (o->init && qt_model_family_is_cnn(family)) {
    o->cnn = 1;
    if (!o->image_size_set) o->image_size = 32;
  }
  if (o->reinit && !(o->init && o->cnn)) {
    fprintf(stderr, "pretrain: --reinit needs --init with a convolutional --family\n");
    return -1;
  }
  if (!o->cnn && (o->image_size % o->patch != 0 || o->width % o->heads != 0)) {
    fprintf(stderr,
            "pretrain: the patch (%ld) must divide the image size (%ld) and the heads (%ld) "
            "the width (%ld)\n",
            o->patch, o->image_size, o->heads, o->width);
    return -1;
  }
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Data                                                                       */
/* ------------------------------------------------------------------------- */

/* Draws up to `per_class[0]` samples of each class of ds into first and,
 * from the samples left, up to `per_class[1]` (0: all the rest) into
 * second, with a per-class shuffle by rng. Either output may be NULL when
 * its count is unused; each keeps the dataset's order. */
static int draw_per_class(const qt_dataset *ds, size_t first_per_class, size_t second_per_class,
                          int second_all, qt_rng_t *rng, qt_dataset **first, qt_dataset **second,
                          qt_err *err) {
  size_t n = ds->n;
  size_t *members = malloc((n ? n : 1) * sizeof *members); /* (n) indices of one class */
  unsigned char *which = calloc(n ? n : 1, 1);             /* (n) 0 none, 1 first, 2 second */
  size_t *chosen = malloc((n ? n : 1) * sizeof *chosen);   /* (n) indices of one output */
  int rc = 0;
  if (!members || !which || !chosen) {
    rc = qt_err_set(err, QT_ENOMEM, "out of memory drawing a subset of %zu samples", n);
    goto done;
  }
  for (size_t c = 0; c < ds->n_classes; c++) {
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
      if ((size_t)ds->labels[i] == c) members[m++] = i;
    /* Fisher-Yates shuffle of the class's indices. */
    for (size_t i = m; i > 1; i--) {
      size_t j = (size_t)qt_rng_uniform_int(rng, i);
      size_t t = members[i - 1];
      members[i - 1] = members[j];
      members[j] = t;
    }
    size_t a = first_per_class < m ? first_per_class : m;
    size_t b = second_all ? m - a : (second_per_class < m - a ? second_per_class : m - a);
    for (size_t i = 0; i < a; i++) which[members[i]] = 1;
    for (size_t i = a; i < a + b; i++) which[members[i]] = 2;
  }
  qt_dataset **outs[2] = {first, second};
  for (int s = 0; s < 2; s++) {
    if (!outs[s]) continue;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
      if (which[i] == s + 1) chosen[k++] = i;
    if ((rc = qt_dataset_subset(ds, chosen, k, outs[s], err)) < 0) goto done;
  }
done:
  free(members);
  free(which);
  free(chosen);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Output                                                                     */
/* ------------------------------------------------------------------------- */

/* Writes the model's tensors (running statistics included) to path as a
 * timm checkpoint with `format` "pt" and the given extra metadata. */
static int save_checkpoint(const qt_model_t *model, const char *path,
                           const qt_safetensors_pair *extra, size_t n_extra, qt_err *err) {
  size_t n = qt_model_tensor_count(model);
  qt_safetensors_tensor *tensors = calloc(n, sizeof *tensors);
  qt_safetensors_pair *meta = calloc(n_extra + 1, sizeof *meta);
  if (!tensors || !meta) {
    free(tensors);
    free(meta);
    return qt_err_set(err, QT_ENOMEM, "out of memory writing %s", path);
  }
  for (size_t i = 0; i < n; i++) {
    qt_model_tensor t;
    qt_model_tensor_at(model, i, &t);
    tensors[i].name = t.name;
    tensors[i].dtype = QT_DTYPE_F32;
    tensors[i].ndim = t.ndim;
    tensors[i].shape = t.shape;
    tensors[i].data = t.data;
  }
  meta[0].key = "format";
  meta[0].value = "pt";
  for (size_t i = 0; i < n_extra; i++) meta[i + 1] = extra[i];
  int rc = qt_safetensors_write(path, tensors, n, meta, n_extra + 1, err);
  free(tensors);
  free(meta);
  return rc;
}

/* CPU seconds used by this process so far (all threads, user + system):
 * on a shared machine a fairer measure of the work than wall time. */
static double cpu_seconds(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return NAN;
  return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec +
         (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
}

/* The command line as one string (arguments joined by spaces). */
static char *join_command(int argc, char **argv) {
  size_t len = 1;
  for (int i = 0; i < argc; i++) len += strlen(argv[i]) + 1;
  char *s = malloc(len);
  if (!s) return NULL;
  s[0] = '\0';
  for (int i = 0; i < argc; i++) {
    if (i) strcat(s, " ");
    strcat(s, i == 0 ? "pretrain" : argv[i]);
  }
  return s;
}

/* ------------------------------------------------------------------------- */
/* Training                                                                   */
/* ------------------------------------------------------------------------- */

/* The model's input, as the run API prepares it for a hub entry with these
 * values (qt_run.c): 3 channels (gray replicated), bicubic resizing,
 * timm's crop_pct 0.875 for evaluation, the given mean and std. */
static qt_preprocess_params preprocess_params(const options *o) {
  qt_preprocess_params pre = qt_preprocess_default_params();
  pre.image_size = (size_t)o->image_size;
  pre.channels = 3;
  pre.interpolation = QT_INTERPOLATION_BICUBIC;
  for (int c = 0; c < 3; c++) {
    pre.mean[c] = o->mean;
    pre.std[c] = o->std;
  }
  return pre;
}

static qt_batch_params batch_params(const options *o, int train) {
  qt_batch_params bp = qt_batch_default_params();
  bp.batch_size = (size_t)o->batch_size;
  bp.shuffle = train;
  bp.drop_last = 0;
  bp.augment = train;
  bp.seed = o->seed;
  bp.threads = o->threads;
  return bp;
}

/* Top-1 and mean cross-entropy of the model over the batches of it. */
static int evaluate(qt_model_t *model, qt_batch_iter_t *it, double *top1, double *loss,
                    qt_err *err) {
  int rc = qt_batch_iter_start(it, 0, 0, err);
  if (rc < 0) return rc;
  size_t n = 0, hits = 0;
  double loss_sum = 0.0;
  qt_batch batch;
  while ((rc = qt_batch_iter_next(it, &batch, err)) == 1) {
    double l;
    if ((rc = qt_model_forward(model, batch.inputs, batch.size, 0, err)) < 0) return rc;
    if ((rc = qt_model_loss(model, (const int *)batch.labels, NULL, 0.0, &l, err)) < 0) return rc;
    loss_sum += l * (double)batch.size;
    const float *logits = qt_model_logits(model);
    for (size_t b = 0; b < batch.size; b++) {
      const float *row = logits + b * batch.n_classes;
      size_t best = 0;
      for (size_t c = 1; c < batch.n_classes; c++)
        if (row[c] > row[best]) best = c;
      hits += best == (size_t)batch.labels[b];
    }
    n += batch.size;
  }
  if (rc < 0) return rc;
  *top1 = n ? (double)hits / (double)n : NAN;
  *loss = n ? loss_sum / (double)n : NAN;
  return 0;
}

/*
 * Trains the model on splits->train for o->epochs epochs, evaluating on
 * splits->val after each: AdamW (timm's weight-decay groups), the learning
 * rate of qt_schedule_lr (cosine to lr / 100 after o->warmup_epochs epochs
 * of linear warmup from lr / 10), label smoothing, and a milder version of
 * the run API's training transform: RandomResizedCrop with area scale
 * (o->crop_scale, 1) instead of timm's (0.08, 1), which at 28 pixels
 * leaves crops of 8 pixels a side, a horizontal flip with probability
 * o->hflip, and the --augment policy. The run API does not expose those
 * two values, which is why this loop is here and not qt_run_epoch; the
 * preprocessing (resize, crop_pct, normalization) is the run API's, so
 * fine-tuning sees inputs prepared the same way.
 */
/* AdamW over every parameter tensor (buffers excluded), with decay where
 * qt_model_tensor.decay is set: qt_vit_adamw_step for any model. */
typedef struct adamw_state {
  size_t n;
  float **m, **v; /* (n) moments per tensor; NULL for buffers */
  long step;
} adamw_state;

static void adamw_free(adamw_state *a) {
  for (size_t i = 0; i < a->n; i++) {
    if (a->m) free(a->m[i]);
    if (a->v) free(a->v[i]);
  }
  free(a->m);
  free(a->v);
}

static int adamw_init(adamw_state *a, const qt_model_t *model, qt_err *err) {
  memset(a, 0, sizeof *a);
  a->n = qt_model_tensor_count(model);
  a->m = calloc(a->n, sizeof *a->m);
  a->v = calloc(a->n, sizeof *a->v);
  if (!a->m || !a->v) return qt_err_set(err, QT_ENOMEM, "out of memory for AdamW");
  for (size_t i = 0; i < a->n; i++) {
    qt_model_tensor t;
    qt_model_tensor_at(model, i, &t);
    if (t.buffer) continue;
    a->m[i] = calloc(t.numel ? t.numel : 1, sizeof(float));
    a->v[i] = calloc(t.numel ? t.numel : 1, sizeof(float));
    if (!a->m[i] || !a->v[i]) return qt_err_set(err, QT_ENOMEM, "out of memory for AdamW");
  }
  return 0;
}

static int adamw_step(adamw_state *a, qt_model_t *model, const qt_adamw_params *hp, qt_err *err) {
  qt_adamw_params no_decay = *hp;
  no_decay.weight_decay = 0.0;
  a->step++;
  for (size_t i = 0; i < a->n; i++) {
    qt_model_tensor t;
    qt_model_tensor_at(model, i, &t);
    if (t.buffer) continue;
    int rc = qt_cpu_adamw_step(t.data, t.grad, a->m[i], a->v[i], t.numel, t.decay ? hp : &no_decay,
                               a->step, err);
    if (rc < 0) return rc;
  }
  return 0;
}

static int train_model(const options *o, qt_model_t *model, const qt_data_splits *splits,
                       qt_err *err) {
  qt_preprocess_params pre = preprocess_params(o);
  qt_augment_params aug = qt_augment_default_params();
  aug.scale[0] = o->crop_scale;
  aug.scale[1] = 1.0;
  aug.hflip_prob = o->hflip;
  aug.label_smoothing = o->smoothing;
  int rc = qt_auto_augment_parse(o->augment, &aug.auto_augment, err);
  if (rc < 0) return rc;
  qt_schedule_params sched = qt_schedule_default_params();
  sched.kind = QT_SCHEDULE_KIND_COSINE;
  sched.epochs = o->epochs;
  sched.warmup_epochs = o->warmup_epochs < o->epochs ? o->warmup_epochs : o->epochs - 1;
  sched.warmup_lr = o->lr * 0.1;
  sched.min_lr = o->lr * 0.01;
  if ((rc = qt_schedule_params_check(&sched, err)) < 0) return rc;

  qt_batch_iter_t *train_it = NULL, *val_it = NULL;
  FILE *curve = NULL;
  adamw_state opt;
  qt_batch_params bp = batch_params(o, 1);
  rc = adamw_init(&opt, model, err);
  if (rc == 0) rc = qt_batch_iter_init(splits->train, &pre, &aug, &bp, &train_it, err);
  if (rc == 0) {
    bp = batch_params(o, 0);
    rc = qt_batch_iter_init(splits->val, &pre, NULL, &bp, &val_it, err);
  }
  if (rc == 0 && o->curve) {
    curve = fopen(o->curve, "w");
    if (!curve)
      rc = qt_err_set(err, QT_EIO, "cannot write %s", o->curve);
    else
      fprintf(curve, "epoch,train_loss,val_loss,val_top1,lr,seconds,images_per_s\n");
  }
  for (long e = 0; e < o->epochs && rc == 0; e++) {
    double t0 = qt_time_now();
    qt_adamw_params hp = qt_adamw_default_params();
    hp.lr = qt_schedule_lr(&sched, o->lr, e, NULL);
    hp.weight_decay = o->weight_decay;
    if ((rc = qt_batch_iter_start(train_it, (uint64_t)e, 0, err)) < 0) break;
    size_t images = 0;
    double loss_sum = 0.0;
    qt_batch batch;
    while ((rc = qt_batch_iter_next(train_it, &batch, err)) == 1) {
      double loss;
      if ((rc = qt_model_forward(model, batch.inputs, batch.size, 1, err)) < 0) break;
      if ((rc = qt_model_loss(model, NULL, batch.targets, 0.0, &loss, err)) < 0) break;
      if (!isfinite(loss)) {
        rc = qt_err_set(err, QT_ENUMERIC,
                        "epoch %ld: the training loss is %g after %zu images (diverged; try a "
                        "smaller --lr); nothing written",
                        e + 1, loss, images);
        break;
      }
      qt_model_zero_grad(model);
      if ((rc = qt_model_backward(model, err)) < 0) break;
      if ((rc = adamw_step(&opt, model, &hp, err)) < 0) break;
      loss_sum += loss * (double)batch.size;
      images += batch.size;
    }
    if (rc < 0) break;
    double t_train = qt_time_now() - t0;
    double top1 = NAN, val_loss = NAN;
    if ((rc = evaluate(model, val_it, &top1, &val_loss, err)) < 0) break;
    double seconds = qt_time_now() - t0;
    double train_loss = images ? loss_sum / (double)images : NAN;
    double speed = t_train > 0.0 ? (double)images / t_train : 0.0;
    printf(
        "epoch %ld  lr %.2e  train_loss %.4f  val_loss %.4f  val_top1 %.4f  %.1fs  %.0f "
        "images/s\n",
        e + 1, hp.lr, train_loss, val_loss, top1, seconds, speed);
    fflush(stdout);
    if (curve) {
      fprintf(curve, "%ld,%.9g,%.9g,%.9g,%.9g,%.6g,%.6g\n", e + 1, train_loss, val_loss, top1,
              hp.lr, seconds, speed);
      fflush(curve);
    }
  }
  if (curve && (fclose(curve) != 0) && rc == 0)
    rc = qt_err_set(err, QT_EIO, "writing %s failed", o->curve);
  qt_batch_iter_free(train_it);
  qt_batch_iter_free(val_it);
  adamw_free(&opt);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Models                                                                     */
/* ------------------------------------------------------------------------- */

/* A ViT: --init's checkpoint (its architecture wins over the size flags;
 * the heads must be given; a new head when the data has another number of
 * classes, as fine-tuning does), or timm's initialization of the size
 * flags from rng. */
static int make_vit(const options *o, long n_classes, qt_rng_t *rng, qt_model_t **out,
                    qt_err *err) {
  qt_model_load_params lp = qt_model_default_load_params();
  if (o->init) {
    if (qt_model_family_parse(o->family, &lp.family) != 0) lp.family = QT_MODEL_FAMILY_VIT;
    lp.heads = o->heads;
    lp.image_size = o->image_size;
    lp.num_classes = n_classes;
    lp.max_batch = (size_t)o->batch_size;
    lp.rng = rng;
    return qt_model_load(o->init, &lp, out, err);
  }
  qt_vit_config vc = qt_vit_default_config();
  vc.image_size = o->image_size;
  vc.patch_size = o->patch;
  vc.width = o->width;
  vc.depth = o->depth;
  vc.heads = o->heads;
  vc.mlp_hidden = (long)floor(o->mlp_ratio * (double)o->width + 0.5);
  vc.num_classes = n_classes;
  qt_vit_t *vit = NULL;
  int rc = qt_vit_init(&vc, (size_t)o->batch_size, rng, &vit, err);
  if (rc == 0 && (rc = qt_model_wrap_vit(vit, QT_MODEL_FAMILY_VIT, out, err)) < 0) qt_vit_free(vit);
  return rc;
}

/* A CNN: --init's checkpoint, or qt_cnn_write_init of --arch with the
 * seed, through a temporary file beside --out. The loader's metadata of
 * the checkpoint (stage_strides, bn_eps, padding, arch) is copied into
 * values and appended to meta, so the pretrained checkpoint loads alike. */
static int make_cnn(const options *o, long n_classes, qt_model_t **out, char values[4][256],
                    qt_safetensors_pair *meta, size_t *n_meta, qt_err *err) {
  char tmp[4096];
  const char *path = o->init;
  qt_model_load_params lp = qt_model_default_load_params();
  int rc = 0;
  if (o->init) {
    if (qt_model_family_parse(o->family, &lp.family) != 0)
      return qt_err_set(err, QT_EINVAL, "--family '%s'", o->family);
  } else {
    if ((rc = qt_cnn_arch_family(o->arch, &lp.family, err)) < 0) return rc;
    snprintf(tmp, sizeof tmp, "%s.init", o->out);
    if ((rc = qt_cnn_write_init(o->arch, n_classes, o->seed, tmp, err)) < 0) return rc;
    path = tmp;
  }
  lp.image_size = o->image_size;
  lp.num_classes = n_classes;
  lp.max_batch = (size_t)o->batch_size;
  qt_rng_t *rng = NULL;
  rc = qt_rng_init(&rng, o->seed ^ 0x68656164u /* "head" */, err);
  lp.rng = rng;
  if (rc == 0) rc = qt_model_load(path, &lp, out, err);
  if (rc == 0 && o->reinit) qt_cnn_reinit(qt_model_cnn(*out), rng);
  qt_rng_free(rng);
  qt_safetensors_t *st = NULL;
  if (rc == 0) rc = qt_safetensors_open(path, &st, err);
  static const char *keys[4] = {"stage_strides", "bn_eps", "padding", "arch"};
  for (int k = 0; rc == 0 && k < 4; k++) {
    const char *v = qt_safetensors_metadata_get(st, keys[k]);
    if (!v) continue;
    snprintf(values[k], 256, "%s", v);
    meta[(*n_meta)++] = (qt_safetensors_pair){keys[k], values[k]};
  }
  qt_safetensors_free(st);
  if (!o->init) remove(tmp);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Main                                                                       */
/* ------------------------------------------------------------------------- */

int main(int argc, char **argv) {
  options o;
  if (parse_options(argc, argv, &o) < 0) {
    usage(stderr);
    return EXIT_USAGE;
  }
  qt_err err;
  qt_err_clear(&err);
  int status = EXIT_FAIL;
  qt_data_splits loaded = {0};
  qt_dataset *train = NULL, *val = NULL, *test = NULL;
  qt_rng_t *root = NULL, *subset_rng = NULL, *init_rng = NULL;
  qt_model_t *model = NULL;
  char *command = join_command(argc, argv);
  int rc = 0;
  double t_start = qt_time_now();

  /* Data: the layout's train and test splits, validation drawn here. */
  qt_data_params dp = qt_data_default_params();
  dp.val_fraction = 0.0;
  dp.test_fraction = 0.0;
  dp.seed = o.seed;
  rc = qt_data_load(o.data, &dp, &loaded, &err);
  if (rc == 0) rc = qt_rng_init(&root, o.seed, &err);
  if (rc == 0) rc = qt_rng_fork(root, 0x73756273u /* "subs" */, &subset_rng, &err);
  if (rc == 0) rc = qt_rng_fork(root, 0x696e6974u /* "init" */, &init_rng, &err);
  if (rc == 0)
    rc = draw_per_class(loaded.train, (size_t)o.val_per_class, (size_t)o.subset, o.subset == 0,
                        subset_rng, &val, &train, &err);
  if (rc == 0 && loaded.test && loaded.test->n > 0 && o.test_per_class > 0)
    rc = draw_per_class(loaded.test, (size_t)o.test_per_class, 0, 0, subset_rng, &test, NULL, &err);
  if (rc < 0) goto fail;
  if (!test) { /* the whole test split (possibly empty) */
    test = loaded.test;
    loaded.test = NULL;
  }
  if (train->n == 0 && o.epochs > 0) {
    qt_err_set(&err, QT_ESCHEMA, "%s: no training images left after %ld per class for validation",
               o.data, o.val_per_class);
    goto fail;
  }
  size_t n_classes = loaded.train->n_classes;
  printf("pretrain: %s on %s: %zu train, %zu val, %zu test images, %zu classes\n",
         o.name ? o.name : o.arch, o.data, train->n, val->n, test ? test->n : 0, n_classes);

  /* The initial weights: random, or the --init checkpoint. */
  char text[8][64], loader_meta[4][256];
  qt_safetensors_pair meta[16] = {{"qtune.tool", "pretrain"}, {"qtune.arch", o.arch}};
  size_t n_meta = 2;
  if (o.cnn)
    rc = make_cnn(&o, (long)n_classes, &model, loader_meta, meta, &n_meta, &err);
  else
    rc = make_vit(&o, (long)n_classes, init_rng, &model, &err);
  if (rc < 0) goto fail;
  size_t parameters = 0;
  for (size_t i = 0; i < qt_model_tensor_count(model); i++) {
    qt_model_tensor t;
    qt_model_tensor_at(model, i, &t);
    if (!t.buffer) parameters += t.numel;
  }
  if (o.cnn) {
    printf("pretrain: %s (%s) %ld px: %zu parameters\n", o.arch,
           qt_model_family_name(qt_model_get_family(model)), o.image_size, parameters);
    snprintf(text[0], sizeof text[0], "%s", qt_model_family_name(qt_model_get_family(model)));
    meta[n_meta++] = (qt_safetensors_pair){"qtune.family", text[0]};
  } else {
    const qt_vit_config *vc = qt_vit_get_config(qt_model_vit(model));
    printf(
        "pretrain: ViT %ld px, patch %ld, width %ld, depth %ld, heads %ld, mlp %ld: %zu "
        "parameters\n",
        vc->image_size, vc->patch_size, vc->width, vc->depth, vc->heads, vc->mlp_hidden,
        parameters);
    snprintf(text[0], sizeof text[0], "%ld", vc->patch_size);
    snprintf(text[1], sizeof text[1], "%ld", vc->width);
    snprintf(text[2], sizeof text[2], "%ld", vc->depth);
    snprintf(text[3], sizeof text[3], "%ld", vc->heads);
    meta[n_meta++] = (qt_safetensors_pair){"qtune.patch_size", text[0]};
    meta[n_meta++] = (qt_safetensors_pair){"qtune.width", text[1]};
    meta[n_meta++] = (qt_safetensors_pair){"qtune.depth", text[2]};
    meta[n_meta++] = (qt_safetensors_pair){"qtune.heads", text[3]};
  }
  snprintf(text[4], sizeof text[4], "%ld", qt_model_image_size(model));
  snprintf(text[5], sizeof text[5], "%zu", parameters);
  snprintf(text[6], sizeof text[6], "%ld", o.epochs);
  meta[n_meta++] = (qt_safetensors_pair){"qtune.image_size", text[4]};
  meta[n_meta++] = (qt_safetensors_pair){"qtune.parameters", text[5]};
  meta[n_meta++] = (qt_safetensors_pair){"qtune.epochs", text[6]};
  meta[n_meta++] = (qt_safetensors_pair){"qtune.data", o.data};
  meta[n_meta++] = (qt_safetensors_pair){"qtune.command", command ? command : ""};

  if (o.epochs == 0) {
    if ((rc = save_checkpoint(model, o.out, meta, n_meta, &err)) < 0) goto fail;
    printf("pretrain: wrote the random initialization to %s\n", o.out);
    status = 0;
    goto done;
  }
  /* Training. */
  qt_data_splits splits = {train, val, test, 0};
  rc = train_model(&o, model, &splits, &err);
  if (rc < 0) goto fail;
  double top1 = NAN, loss = NAN;
  if (test && test->n > 0) {
    qt_batch_iter_t *it = NULL;
    qt_preprocess_params pre = preprocess_params(&o);
    qt_batch_params bp = batch_params(&o, 0);
    rc = qt_batch_iter_init(test, &pre, NULL, &bp, &it, &err);
    if (rc == 0) rc = evaluate(model, it, &top1, &loss, &err);
    qt_batch_iter_free(it);
    if (rc < 0) goto fail;
  }
  snprintf(text[7], sizeof text[7], "%.4f", top1);
  meta[n_meta].key = "qtune.test_top1";
  meta[n_meta].value = text[7];
  n_meta++;
  if ((rc = save_checkpoint(model, o.out, meta, n_meta, &err)) < 0) goto fail;
  printf("test  loss %.4f  top1 %.4f  (%zu images)\n", loss, top1, test ? test->n : 0);
  printf("pretrain: wrote %s (%zu parameters, test top-1 %.4f, %.1f s wall, %.1f s CPU)\n", o.out,
         parameters, top1, qt_time_now() - t_start, cpu_seconds());
  status = 0;
  goto done;

fail:
  fprintf(stderr, "pretrain: %s\n", qt_err_message(&err));
  status = EXIT_FAIL;
done:
  qt_model_free(model);
  qt_rng_free(init_rng);
  qt_rng_free(subset_rng);
  qt_rng_free(root);
  qt_dataset_free(train);
  qt_dataset_free(val);
  qt_dataset_free(test);
  qt_data_splits_free(&loaded);
  free(command);
  return status;
}

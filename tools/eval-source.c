/*
 * eval-source - how much of the source task a fine-tuned ViT still knows:
 * the top-1 of its backbone under the ORIGINAL pretrained head on the
 * source task's test images (the forgetting measure of docs/methods.md).
 *
 *   eval-source --model FINETUNED.safetensors --source PRETRAINED.safetensors
 *               --data DIR --heads H [--mean M] [--std S] [--image-size N]
 *               [--batch B]
 *
 * FINETUNED is a timm checkpoint as `qtune finetune --out` writes it
 * (final.safetensors: every weight, adapters merged). Its head is replaced
 * by head.weight and head.bias of PRETRAINED (which must have as many
 * classes as DIR's task), and the model is evaluated on DIR's test split
 * (t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte, read by qt_data_load)
 * with the run API's evaluation transform: qt_preprocess_default_params
 * with the model's image size, 3 channels, bicubic, the given mean and std
 * (crop_pct 0.875), and qt_batch_iter with augment 0, as qt_run_init builds
 * its validation and test iterators. Top-1 ties go to the lower class, as
 * qt_run_evaluate_test counts them. Passing the pretrained file as both
 * --model and --source gives the pretrained model's own source top-1, the
 * baseline.
 *
 * Prints one line: "source top1 T (N images)". Exit codes: 0 done, 1 bad
 * usage, 3 a failure.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune.h"

#define EXIT_USAGE 1
#define EXIT_FAIL 3

typedef struct options {
  const char *model, *source, *data;
  long heads, image_size, batch;
  double mean, std;
} options;

static void usage(FILE *f) {
  fprintf(f, "usage: eval-source --model FINETUNED.safetensors --source PRETRAINED.safetensors "
             "--data DIR --heads H [--mean M] [--std S] [--image-size N] [--batch B]\n");
}

static int parse_long(const char *flag, const char *text, long lo, long *out) {
  char *end = NULL;
  errno = 0;
  long v = strtol(text, &end, 10);
  if (end == text || *end != '\0' || errno == ERANGE || v < lo || v > 100000) {
    fprintf(stderr, "eval-source: %s must be a whole number >= %ld, got '%s'\n", flag, lo, text);
    return -1;
  }
  *out = v;
  return 0;
}

static int parse_double(const char *flag, const char *text, double *out) {
  char *end = NULL;
  errno = 0;
  double v = strtod(text, &end);
  if (end == text || *end != '\0' || errno == ERANGE || !isfinite(v)) {
    fprintf(stderr, "eval-source: %s must be a number, got '%s'\n", flag, text);
    return -1;
  }
  *out = v;
  return 0;
}

static int parse_options(int argc, char **argv, options *o) {
  memset(o, 0, sizeof *o);
  o->mean = 0.2860; /* Fashion-MNIST, as configs/hubs/default.yaml */
  o->std = 0.3530;
  o->batch = 100;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      exit(0);
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "eval-source: %s needs a value\n", a);
      return -1;
    }
    const char *v = argv[++i];
    if (strcmp(a, "--model") == 0) o->model = v;
    else if (strcmp(a, "--source") == 0) o->source = v;
    else if (strcmp(a, "--data") == 0) o->data = v;
    else if (strcmp(a, "--heads") == 0) {
      if (parse_long(a, v, 1, &o->heads) != 0) return -1;
    } else if (strcmp(a, "--image-size") == 0) {
      if (parse_long(a, v, 0, &o->image_size) != 0) return -1;
    } else if (strcmp(a, "--batch") == 0) {
      if (parse_long(a, v, 1, &o->batch) != 0) return -1;
    } else if (strcmp(a, "--mean") == 0) {
      if (parse_double(a, v, &o->mean) != 0) return -1;
    } else if (strcmp(a, "--std") == 0) {
      if (parse_double(a, v, &o->std) != 0) return -1;
      if (o->std <= 0) {
        fprintf(stderr, "eval-source: --std must be > 0\n");
        return -1;
      }
    } else {
      fprintf(stderr, "eval-source: unknown option '%s'\n", a);
      return -1;
    }
  }
  if (!o->model || !o->source || !o->data || o->heads == 0) {
    fprintf(stderr, "eval-source: --model, --source, --data and --heads are required\n");
    return -1;
  }
  return 0;
}

/* Copies the source model's head into the fine-tuned one. */
static int copy_head(qt_vit_t *dst, const qt_vit_t *src, qt_err *err) {
  static const char *const names[] = {"head.weight", "head.bias"};
  for (size_t k = 0; k < 2; k++) {
    qt_vit_tensor a, b;
    if (qt_vit_find_tensor(dst, names[k], &a) != 0 || qt_vit_find_tensor(src, names[k], &b) != 0)
      return qt_err_set(err, QT_ESCHEMA, "%s is missing from a checkpoint", names[k]);
    if (a.numel != b.numel)
      return qt_err_set(err, QT_ESCHEMA,
                        "%s has %zu values in the fine-tuned model but %zu in the source model; "
                        "the two tasks must have as many classes",
                        names[k], a.numel, b.numel);
    memcpy(a.data, b.data, a.numel * sizeof(float));
  }
  return 0;
}

/* Top-1 of vit over the batches of it (ties to the lower class). */
static int evaluate(qt_vit_t *vit, qt_batch_iter_t *it, double *top1, size_t *n_out, qt_err *err) {
  int rc = qt_batch_iter_start(it, 0, 0, err);
  if (rc < 0) return rc;
  size_t n = 0, hits = 0;
  qt_batch batch;
  while ((rc = qt_batch_iter_next(it, &batch, err)) == 1) {
    if ((rc = qt_vit_forward(vit, batch.inputs, batch.size, err)) < 0) return rc;
    const float *logits = qt_vit_logits(vit);
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
  *n_out = n;
  return 0;
}

int main(int argc, char **argv) {
  options o;
  if (parse_options(argc, argv, &o) != 0) {
    usage(stderr);
    return EXIT_USAGE;
  }
  qt_err err;
  qt_err_clear(&err);
  qt_vit_t *model = NULL, *source = NULL;
  qt_batch_iter_t *it = NULL;
  qt_data_splits splits;
  memset(&splits, 0, sizeof splits);
  int rc = 0;

  qt_vit_load_params lp = qt_vit_default_load_params();
  lp.heads = o.heads;
  lp.image_size = o.image_size;
  lp.max_batch = (size_t)o.batch;
  rc = qt_vit_load(o.model, &lp, &model, &err);
  if (rc == 0) {
    lp.max_batch = 1;
    rc = qt_vit_load(o.source, &lp, &source, &err);
  }
  if (rc == 0) rc = copy_head(model, source, &err);
  qt_data_params dp = qt_data_default_params();
  if (rc == 0) rc = qt_data_load(o.data, &dp, &splits, &err);
  if (rc == 0 && !(splits.given & QT_DATA_SPLIT_TEST))
    rc = qt_err_set(&err, QT_ESCHEMA, "%s has no test split (t10k-* files)", o.data);
  if (rc == 0) {
    const qt_vit_config *vc = qt_vit_get_config(model);
    if ((long)splits.test->n_classes != vc->num_classes)
      rc = qt_err_set(&err, QT_ESCHEMA, "%s has %zu classes but the head has %ld", o.data,
                      splits.test->n_classes, vc->num_classes);
  }
  if (rc == 0) {
    /* The run API's evaluation transform (qt_run_init). */
    qt_preprocess_params pre = qt_preprocess_default_params();
    pre.image_size = (size_t)qt_vit_get_config(model)->image_size;
    pre.channels = 3;
    pre.interpolation = QT_INTERPOLATION_BICUBIC;
    for (int c = 0; c < 3; c++) {
      pre.mean[c] = o.mean;
      pre.std[c] = o.std;
    }
    qt_augment_params aug = qt_augment_default_params();
    qt_batch_params bp = qt_batch_default_params();
    bp.batch_size = (size_t)o.batch;
    bp.shuffle = 0;
    bp.drop_last = 0;
    bp.augment = 0;
    rc = qt_batch_iter_init(splits.test, &pre, &aug, &bp, &it, &err);
  }
  double top1 = NAN;
  size_t n = 0;
  if (rc == 0) rc = evaluate(model, it, &top1, &n, &err);
  if (rc == 0) printf("source top1 %.4f (%zu images)\n", top1, n);
  else fprintf(stderr, "eval-source: %s (%s)\n", err.msg, qt_strerror(rc));

  qt_batch_iter_free(it);
  qt_data_splits_free(&splits);
  qt_vit_free(source);
  qt_vit_free(model);
  return rc == 0 ? 0 : EXIT_FAIL;
}

/*
 * make-task - cuts a small image classification task out of MNIST-style
 * IDX data, for `qtune finetune`, `qtune search` and the demo.
 *
 *   make-task --data DIR --per-class N [--classes 0,1,...]
 *             [--test-per-class M] [--seed S]
 *             [--transform none|rot90|rot180|invert|noise:SIGMA] --out DIR
 *
 * DIR holds train-images-idx3-ubyte and train-labels-idx1-ubyte, and
 * optionally t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte, each
 * gzip-compressed (.gz) or not; they are read with the engine's IDX loader
 * (qt_dataset_load_idx). The task keeps the listed classes (default all),
 * relabelled 0, 1, ... in the order given, draws N training images of each
 * class (all when a class has fewer) and M test images of each class (no
 * --test-per-class: every test image of the kept classes; 0: no test
 * files), each by a per-class shuffle from a stream of the seed, kept in
 * their order in the source. It writes uncompressed IDX files into --out
 * (created when missing): train-images-idx3-ubyte, train-labels-idx1-ubyte
 * and, with test images, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte,
 * which qt_data_load reads as they are (validation is carved from train
 * there), plus task.txt with the command, the source and the counts.
 *
 * --transform changes every written image (train and test alike): rot90
 * turns it a quarter turn clockwise (square images only), rot180 a half
 * turn, invert maps a pixel p to 255 - p, and noise:SIGMA adds Gaussian
 * noise of standard deviation SIGMA grey levels (0 < SIGMA <= 255), rounded
 * and clipped to [0, 255], drawn from a stream of the seed of its own (so
 * the same command gives the same noisy files).
 *
 * Note: qt_data_load names the classes after Fashion-MNIST's when the
 * path contains "fashion"; a task with fewer than 10 classes in such a
 * folder would then have empty classes, so make-task refuses that.
 *
 * The same command gives the same files (the draws depend on the seed
 * only). Exit codes: 0 done, 1 bad usage, 3 a failure.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "finetune/qt_finetune.h"

#define EXIT_USAGE 1
#define EXIT_FAIL 3
#define MAX_CLASSES 256

typedef struct options {
  const char *data, *out;
  long per_class;
  long test_per_class; /* -1: all */
  int classes[MAX_CLASSES];
  size_t n_classes; /* 0: all of the source's */
  unsigned long long seed;
  int transform;       /* TRANSFORM_* */
  double noise_sigma;  /* grey levels, TRANSFORM_NOISE only */
} options;

enum { TRANSFORM_NONE = 0, TRANSFORM_ROT90, TRANSFORM_ROT180, TRANSFORM_INVERT, TRANSFORM_NOISE };

static void usage(FILE *f) {
  fprintf(f, "usage: make-task --data DIR --per-class N [--classes 0,1,...] "
             "[--test-per-class M] [--seed S] "
             "[--transform none|rot90|rot180|invert|noise:SIGMA] --out DIR\n");
}

static int parse_count(const char *flag, const char *text, long *out) {
  char *end = NULL;
  errno = 0;
  long v = strtol(text, &end, 10);
  if (end == text || *end != '\0' || errno == ERANGE || v < 0 || v > 100000000) {
    fprintf(stderr, "make-task: %s must be a whole number >= 0, got '%s'\n", flag, text);
    return -1;
  }
  *out = v;
  return 0;
}

static int parse_classes(const char *text, options *o) {
  const char *p = text;
  o->n_classes = 0;
  while (*p) {
    char *end = NULL;
    long v = strtol(p, &end, 10);
    if (end == p || v < 0 || v >= MAX_CLASSES || (*end != ',' && *end != '\0')) {
      fprintf(stderr, "make-task: --classes must be a comma-separated list of labels, got '%s'\n",
              text);
      return -1;
    }
    for (size_t i = 0; i < o->n_classes; i++) {
      if (o->classes[i] == (int)v) {
        fprintf(stderr, "make-task: --classes lists %ld twice\n", v);
        return -1;
      }
    }
    if (o->n_classes == MAX_CLASSES) {
      fprintf(stderr, "make-task: --classes lists more than %d classes\n", MAX_CLASSES);
      return -1;
    }
    o->classes[o->n_classes++] = (int)v;
    p = *end == ',' ? end + 1 : end;
  }
  if (o->n_classes < 2) {
    fprintf(stderr, "make-task: --classes needs at least 2 classes, got '%s'\n", text);
    return -1;
  }
  return 0;
}

static int parse_transform(const char *text, options *o) {
  o->noise_sigma = 0.0;
  if (strcmp(text, "none") == 0) o->transform = TRANSFORM_NONE;
  else if (strcmp(text, "rot90") == 0) o->transform = TRANSFORM_ROT90;
  else if (strcmp(text, "rot180") == 0) o->transform = TRANSFORM_ROT180;
  else if (strcmp(text, "invert") == 0) o->transform = TRANSFORM_INVERT;
  else if (strncmp(text, "noise:", 6) == 0) {
    char *end = NULL;
    errno = 0;
    double sigma = strtod(text + 6, &end);
    if (end == text + 6 || *end != '\0' || errno == ERANGE || !(sigma > 0.0 && sigma <= 255.0)) {
      fprintf(stderr, "make-task: --transform noise:SIGMA needs 0 < SIGMA <= 255, got '%s'\n",
              text);
      return -1;
    }
    o->transform = TRANSFORM_NOISE;
    o->noise_sigma = sigma;
  } else {
    fprintf(stderr,
            "make-task: --transform must be none, rot90, rot180, invert or noise:SIGMA, got '%s'\n",
            text);
    return -1;
  }
  return 0;
}

static int parse_options(int argc, char **argv, options *o) {
  memset(o, 0, sizeof *o);
  o->per_class = -1;
  o->test_per_class = -1;
  for (int i = 1; i < argc; i++) {
    const char *flag = argv[i];
    if (strcmp(flag, "--help") == 0 || strcmp(flag, "-h") == 0) {
      usage(stdout);
      exit(0);
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "make-task: %s needs a value\n", flag);
      return -1;
    }
    const char *v = argv[++i];
    int rc = 0;
    if (strcmp(flag, "--data") == 0) o->data = v;
    else if (strcmp(flag, "--out") == 0) o->out = v;
    else if (strcmp(flag, "--per-class") == 0) rc = parse_count(flag, v, &o->per_class);
    else if (strcmp(flag, "--test-per-class") == 0) rc = parse_count(flag, v, &o->test_per_class);
    else if (strcmp(flag, "--classes") == 0) rc = parse_classes(v, o);
    else if (strcmp(flag, "--transform") == 0) rc = parse_transform(v, o);
    else if (strcmp(flag, "--seed") == 0) {
      char *end = NULL;
      o->seed = strtoull(v, &end, 10);
      if (end == v || *end != '\0' || v[0] == '-') {
        fprintf(stderr, "make-task: --seed must be a whole number >= 0, got '%s'\n", v);
        return -1;
      }
    } else {
      fprintf(stderr, "make-task: unknown flag %s\n", flag);
      return -1;
    }
    if (rc < 0) return -1;
  }
  if (!o->data || !o->out || o->per_class < 1) {
    fprintf(stderr, "make-task: --data DIR, --per-class N (>= 1) and --out DIR are required\n");
    return -1;
  }
  return 0;
}

/* path of `name` in dir, with or without .gz; 1 when found. */
static int find_idx(const char *dir, const char *name, char *buf, size_t size) {
  snprintf(buf, size, "%s/%s", dir, name);
  if (access(buf, R_OK) == 0) return 1;
  snprintf(buf, size, "%s/%s.gz", dir, name);
  return access(buf, R_OK) == 0;
}

static void put_be32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24);
  p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8);
  p[3] = (unsigned char)v;
}

/* One grayscale image (height, width) of src, transformed as o says, into
 * dst; noise draws from rng. */
static void transform_image(const unsigned char *src, size_t height, size_t width,
                            const options *o, qt_rng_t *rng, unsigned char *dst) {
  size_t n = height * width;
  switch (o->transform) {
  case TRANSFORM_ROT90: /* clockwise: dst(y, x) = src(h - 1 - x, y), square images */
    for (size_t y = 0; y < height; y++)
      for (size_t x = 0; x < width; x++) dst[y * width + x] = src[(height - 1 - x) * width + y];
    break;
  case TRANSFORM_ROT180:
    for (size_t i = 0; i < n; i++) dst[i] = src[n - 1 - i];
    break;
  case TRANSFORM_INVERT:
    for (size_t i = 0; i < n; i++) dst[i] = (unsigned char)(255 - src[i]);
    break;
  case TRANSFORM_NOISE:
    for (size_t i = 0; i < n; i++) {
      double v = floor((double)src[i] + qt_rng_gaussian(rng, o->noise_sigma) + 0.5);
      dst[i] = (unsigned char)(v < 0.0 ? 0.0 : v > 255.0 ? 255.0 : v);
    }
    break;
  default:
    memcpy(dst, src, n);
  }
}

/* Writes the images (n, height, width) and labels (n) of the chosen
 * samples as IDX files "<prefix>-images-idx3-ubyte" and
 * "<prefix>-labels-idx1-ubyte" in dir. */
static int write_idx(const char *dir, const char *prefix, const qt_dataset *ds,
                     const size_t *chosen, const int32_t *new_labels, size_t n,
                     const options *o, qt_rng_t *noise, qt_err *err) {
  char path[4096];
  size_t pixels = ds->height * ds->width * ds->channels;
  unsigned char *image = malloc(pixels); /* (height, width) one transformed image */
  if (!image) return qt_err_set(err, QT_ENOMEM, "out of memory");
  unsigned char header[16];
  snprintf(path, sizeof path, "%s/%s-images-idx3-ubyte", dir, prefix);
  FILE *f = fopen(path, "wb");
  if (!f) {
    free(image);
    return qt_err_set(err, QT_EIO, "cannot write %s: %s", path, strerror(errno));
  }
  put_be32(header, 0x00000803u);
  put_be32(header + 4, (uint32_t)n);
  put_be32(header + 8, (uint32_t)ds->height);
  put_be32(header + 12, (uint32_t)ds->width);
  int ok = fwrite(header, 1, 16, f) == 16;
  for (size_t i = 0; i < n && ok; i++) {
    transform_image(ds->images + chosen[i] * pixels, ds->height, ds->width, o, noise, image);
    ok = fwrite(image, 1, pixels, f) == pixels;
  }
  free(image);
  if (fclose(f) != 0) ok = 0;
  if (!ok) return qt_err_set(err, QT_EIO, "writing %s failed", path);

  snprintf(path, sizeof path, "%s/%s-labels-idx1-ubyte", dir, prefix);
  f = fopen(path, "wb");
  if (!f) return qt_err_set(err, QT_EIO, "cannot write %s: %s", path, strerror(errno));
  put_be32(header, 0x00000801u);
  put_be32(header + 4, (uint32_t)n);
  ok = fwrite(header, 1, 8, f) == 8;
  for (size_t i = 0; i < n && ok; i++) {
    unsigned char label = (unsigned char)new_labels[chosen[i]];
    ok = fputc(label, f) != EOF;
  }
  if (fclose(f) != 0) ok = 0;
  if (!ok) return qt_err_set(err, QT_EIO, "writing %s failed", path);
  return 0;
}

/* Chooses up to per_class samples (per_class < 0: all) of each kept class
 * of ds, by a per-class shuffle drawn from rng; writes their indices in
 * dataset order to chosen (n entries) and returns the count. new_labels
 * (ds->n) maps each sample to its task label, -1 when its class is not
 * kept. */
static size_t choose(const qt_dataset *ds, const int32_t *new_labels, size_t n_task_classes,
                     long per_class, qt_rng_t *rng, size_t *members, unsigned char *mark,
                     size_t *chosen) {
  memset(mark, 0, ds->n);
  for (size_t c = 0; c < n_task_classes; c++) {
    size_t m = 0;
    for (size_t i = 0; i < ds->n; i++)
      if (new_labels[i] == (int32_t)c) members[m++] = i;
    for (size_t i = m; i > 1; i--) {
      size_t j = (size_t)qt_rng_uniform_int(rng, i);
      size_t t = members[i - 1];
      members[i - 1] = members[j];
      members[j] = t;
    }
    size_t take = per_class < 0 || (size_t)per_class > m ? m : (size_t)per_class;
    for (size_t i = 0; i < take; i++)
      mark[members[i]] = 1;
  }
  size_t k = 0;
  for (size_t i = 0; i < ds->n; i++)
    if (mark[i]) chosen[k++] = i;
  return k;
}

/* new_labels (ds->n): the task label of each sample of ds or -1, for the
 * classes of a source with source_classes classes (train's). Returns the
 * number of task classes, or -1 when a listed class is not in the source. */
static long map_labels(const qt_dataset *ds, size_t source_classes, const options *o,
                       int32_t *new_labels) {
  size_t k = o->n_classes ? o->n_classes : source_classes;
  int32_t map[MAX_CLASSES];
  for (size_t c = 0; c < MAX_CLASSES; c++)
    map[c] = -1;
  for (size_t c = 0; c < k; c++) {
    int source = o->n_classes ? o->classes[c] : (int)c;
    if ((size_t)source >= source_classes || source >= MAX_CLASSES) return -1;
    map[source] = (int32_t)c;
  }
  for (size_t i = 0; i < ds->n; i++)
    new_labels[i] = ds->labels[i] < MAX_CLASSES ? map[ds->labels[i]] : -1;
  return (long)k;
}

static int contains_fashion(const char *path) {
  static const char word[] = "fashion";
  for (const char *p = path; *p; p++) {
    size_t i = 0;
    while (word[i] && p[i] && tolower((unsigned char)p[i]) == word[i]) i++;
    if (!word[i]) return 1;
  }
  return 0;
}

int main(int argc, char **argv) {
  options o;
  if (parse_options(argc, argv, &o) < 0) {
    usage(stderr);
    return EXIT_USAGE;
  }
  qt_err err;
  qt_err_clear(&err);
  int status = EXIT_FAIL;
  qt_dataset *split[2] = {NULL, NULL}; /* train, test */
  qt_rng_t *root = NULL, *rng = NULL, *noise = NULL;
  size_t *members = NULL, *chosen = NULL;
  unsigned char *mark = NULL;
  int32_t *new_labels = NULL;
  size_t counts[2] = {0, 0};
  long k = 0;
  static const char *const prefixes[2] = {"train", "t10k"};

  char images[4096], labels[4096];
  if (!find_idx(o.data, "train-images-idx3-ubyte", images, sizeof images) ||
      !find_idx(o.data, "train-labels-idx1-ubyte", labels, sizeof labels)) {
    qt_err_set(&err, QT_ENOENT, "%s: no train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]",
               o.data);
    goto fail;
  }
  if (qt_dataset_load_idx(images, labels, NULL, 0, &split[0], &err) < 0) goto fail;
  int want_test = o.test_per_class != 0;
  if (want_test && find_idx(o.data, "t10k-images-idx3-ubyte", images, sizeof images) &&
      find_idx(o.data, "t10k-labels-idx1-ubyte", labels, sizeof labels)) {
    if (qt_dataset_load_idx(images, labels, NULL, 0, &split[1], &err) < 0) goto fail;
  }
  if (contains_fashion(o.out) && o.n_classes && o.n_classes != 10) {
    qt_err_set(&err, QT_EINVAL,
               "%s: qt_data_load gives folders named *fashion* Fashion-MNIST's 10 classes; "
               "a task of %zu classes needs another name",
               o.out, o.n_classes);
    goto fail;
  }
  if (mkdir(o.out, 0777) != 0 && errno != EEXIST) {
    qt_err_set(&err, QT_EIO, "cannot create %s: %s", o.out, strerror(errno));
    goto fail;
  }
  if (qt_rng_init(&root, o.seed, &err) < 0) goto fail;
  for (int s = 0; s < 2; s++) {
    const qt_dataset *ds = split[s];
    if (!ds) continue;
    if (ds->channels != 1) {
      qt_err_set(&err, QT_EFORMAT, "%s: expected grayscale IDX images", ds->source);
      goto fail;
    }
    if (o.transform == TRANSFORM_ROT90 && ds->height != ds->width) {
      qt_err_set(&err, QT_EINVAL, "%s: --transform rot90 needs square images, these are %zux%zu",
                 ds->source, ds->height, ds->width);
      goto fail;
    }
    free(members);
    free(chosen);
    free(mark);
    free(new_labels);
    members = malloc(ds->n * sizeof *members);
    chosen = malloc(ds->n * sizeof *chosen);
    mark = malloc(ds->n);
    new_labels = malloc(ds->n * sizeof *new_labels);
    if (!members || !chosen || !mark || !new_labels) {
      qt_err_set(&err, QT_ENOMEM, "out of memory for %zu samples", ds->n);
      goto fail;
    }
    k = map_labels(ds, split[0]->n_classes, &o, new_labels);
    if (k < 0) {
      qt_err_set(&err, QT_EINVAL, "--classes: the source has classes 0..%zu only",
                 split[0]->n_classes - 1);
      goto fail;
    }
    qt_rng_free(rng);
    rng = NULL;
    if (qt_rng_fork(root, (uint64_t)s + 1, &rng, &err) < 0) goto fail;
    long per_class = s == 0 ? o.per_class : o.test_per_class;
    counts[s] = choose(ds, new_labels, (size_t)k, per_class, rng, members, mark, chosen);
    if (counts[s] == 0) continue;
    qt_rng_free(noise);
    noise = NULL;
    if (qt_rng_fork(root, (uint64_t)s + 3, &noise, &err) < 0) goto fail;
    if (write_idx(o.out, prefixes[s], ds, chosen, new_labels, counts[s], &o, noise, &err) < 0)
      goto fail;
  }
  /* A test split from an earlier run with other flags must not linger. */
  if (counts[1] == 0) {
    char path[4096];
    snprintf(path, sizeof path, "%s/t10k-images-idx3-ubyte", o.out);
    unlink(path);
    snprintf(path, sizeof path, "%s/t10k-labels-idx1-ubyte", o.out);
    unlink(path);
  }

  char path[4096];
  snprintf(path, sizeof path, "%s/task.txt", o.out);
  FILE *f = fopen(path, "w");
  if (!f) {
    qt_err_set(&err, QT_EIO, "cannot write %s", path);
    goto fail;
  }
  fprintf(f, "command:");
  for (int i = 0; i < argc; i++)
    fprintf(f, " %s", i == 0 ? "make-task" : argv[i]);
  fprintf(f, "\nsource: %s\nclasses: %ld\ntrain: %zu\ntest: %zu\n", o.data, k, counts[0],
          counts[1]);
  if (fclose(f) != 0) {
    qt_err_set(&err, QT_EIO, "writing %s failed", path);
    goto fail;
  }
  printf("make-task: %s: %ld classes, %zu train and %zu test images\n", o.out, k, counts[0],
         counts[1]);
  status = 0;
  goto done;

fail:
  fprintf(stderr, "make-task: %s\n", qt_err_message(&err));
done:
  qt_rng_free(noise);
  qt_rng_free(rng);
  qt_rng_free(root);
  free(members);
  free(chosen);
  free(mark);
  free(new_labels);
  qt_dataset_free(split[0]);
  qt_dataset_free(split[1]);
  return status;
}

/*
 * qt_data.c - datasets in memory: creation, subsets, the stratified split,
 * and qt_data_load, which recognizes the layout of a data path (CSV, IDX,
 * image folder, train/val/test subfolders). The loaders themselves are in
 * qt_data_idx.c, qt_data_image.c and qt_data_csv.c; the contract is in
 * qt_finetune.h ("Data").
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <gsl/gsl_rng.h>

#include "finetune/qt_data_internal.h"

/* ------------------------------------------------------------------------- */
/* Small helpers                                                              */
/* ------------------------------------------------------------------------- */

int qt__strdup(const char *text, char **out, qt_err *err) {
  *out = strdup(text ? text : "");
  if (!*out) return qt_err_set(err, QT_ENOMEM, "out of memory copying a string");
  return 0;
}

long qt__round_half_even(double x) {
  double r = floor(x + 0.5);
  /* An exact tie rounds to the even neighbour, as Python's round(). */
  if (r - x == 0.5 && fmod(r, 2.0) != 0.0) r -= 1.0;
  return (long)r;
}

int qt__grow(void **buf, size_t *cap, size_t bytes, qt_err *err) {
  if (bytes <= *cap && *buf) return 0;
  void *p = realloc(*buf, bytes ? bytes : 1);
  if (!p) return qt_err_set(err, QT_ENOMEM, "out of memory (%zu bytes)", bytes);
  *buf = p;
  *cap = bytes;
  return 0;
}

/* splitmix64, the mixer qt_rng uses for its seeds. */
static uint64_t mix64(uint64_t x) {
  x += UINT64_C(0x9E3779B97F4A7C15);
  x = (x ^ (x >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
  x = (x ^ (x >> 27)) * UINT64_C(0x94D049BB133111EB);
  return x ^ (x >> 31);
}

void qt__rng_reseed(qt_rng_t *rng, uint64_t a, uint64_t b, uint64_t c) {
  uint64_t h = mix64(mix64(mix64(a) ^ b) ^ c);
  /* MT19937 takes a 32-bit seed; 0 is replaced by GSL's default seed, so
   * it is avoided. */
  unsigned long s = (unsigned long)((h ^ (h >> 32)) & UINT64_C(0xFFFFFFFF));
  if (s == 0) s = 1;
  gsl_rng_set((gsl_rng *)qt_rng_gsl(rng), s);
}

/* ------------------------------------------------------------------------- */
/* Datasets                                                                   */
/* ------------------------------------------------------------------------- */

int qt__dataset_new(qt_dataset_kind kind, const char *source, qt_dataset **out, qt_err *err) {
  *out = NULL;
  qt_dataset *ds = calloc(1, sizeof *ds);
  if (!ds) return qt_err_set(err, QT_ENOMEM, "out of memory for a dataset");
  ds->kind = kind;
  int rc = qt__strdup(source, &ds->source, err);
  if (rc < 0) {
    free(ds);
    return rc;
  }
  *out = ds;
  return 0;
}

static void free_names(char **names, size_t n) {
  if (!names) return;
  for (size_t i = 0; i < n; i++) free(names[i]);
  free(names);
}

static int copy_names(const char *const *names, size_t n, char ***out, qt_err *err) {
  *out = NULL;
  if (n == 0) return 0;
  char **copy = calloc(n, sizeof *copy);
  if (!copy) return qt_err_set(err, QT_ENOMEM, "out of memory for %zu names", n);
  for (size_t i = 0; i < n; i++) {
    int rc = qt__strdup(names[i], &copy[i], err);
    if (rc < 0) {
      free_names(copy, n);
      return rc;
    }
  }
  *out = copy;
  return 0;
}

int qt__dataset_set_classes(qt_dataset *ds, const char *const *names, size_t n, qt_err *err) {
  free_names(ds->class_names, ds->n_classes);
  ds->class_names = NULL;
  ds->n_classes = 0;
  int rc = copy_names(names, n, &ds->class_names, err);
  if (rc < 0) return rc;
  ds->n_classes = n;
  return 0;
}

void qt_dataset_free(qt_dataset *ds) {
  if (!ds) return;
  free(ds->images);
  free(ds->features);
  free_names(ds->feature_names, ds->n_features);
  free(ds->labels);
  free_names(ds->class_names, ds->n_classes);
  free(ds->source);
  free(ds);
}

void qt_dataset_class_counts(const qt_dataset *ds, size_t *counts) {
  for (size_t k = 0; k < ds->n_classes; k++) counts[k] = 0;
  for (size_t i = 0; i < ds->n; i++) {
    int32_t y = ds->labels[i];
    if (y >= 0 && (size_t)y < ds->n_classes) counts[y]++;
  }
}

int qt__dataset_check_classes(const qt_dataset *ds, qt_err *err) {
  if (ds->n_classes < 2)
    return qt_err_set(err, QT_ESCHEMA, "%s: %zu class%s; a classification dataset needs at least 2",
                      ds->source, ds->n_classes, ds->n_classes == 1 ? "" : "es");
  size_t *counts = calloc(ds->n_classes, sizeof *counts);
  if (!counts) return qt_err_set(err, QT_ENOMEM, "out of memory");
  qt_dataset_class_counts(ds, counts);
  int rc = 0;
  for (size_t k = 0; k < ds->n_classes; k++) {
    if (counts[k] == 0) {
      rc = qt_err_set(err, QT_ESCHEMA, "%s: class '%s' (label %zu) has no samples", ds->source,
                      ds->class_names[k], k);
      break;
    }
  }
  free(counts);
  return rc;
}

/* Bytes of one image, or floats of one feature row. */
static size_t sample_elements(const qt_dataset *ds) {
  return ds->kind == QT_DATASET_KIND_IMAGE ? ds->height * ds->width * ds->channels : ds->n_features;
}

int qt_dataset_subset(const qt_dataset *ds, const size_t *indices, size_t n, qt_dataset **out,
                      qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_dataset_subset: out is NULL");
  *out = NULL;
  if (!ds || (n > 0 && !indices))
    return qt_err_set(err, QT_EINVAL, "qt_dataset_subset: NULL dataset or indices");
  for (size_t i = 0; i < n; i++) {
    if (indices[i] >= ds->n)
      return qt_err_set(err, QT_EINVAL, "qt_dataset_subset: index %zu out of range (%zu samples)",
                        indices[i], ds->n);
  }
  qt_dataset *sub;
  int rc = qt__dataset_new(ds->kind, ds->source, &sub, err);
  if (rc < 0) return rc;
  sub->height = ds->height;
  sub->width = ds->width;
  sub->channels = ds->channels;
  sub->n_features = ds->n_features;
  sub->n_skipped = ds->n_skipped;
  size_t elements = sample_elements(ds);
  if ((rc = qt__dataset_set_classes(sub, (const char *const *)ds->class_names, ds->n_classes,
                                    err)) < 0)
    goto fail;
  if (ds->feature_names && (rc = copy_names((const char *const *)ds->feature_names, ds->n_features,
                                            &sub->feature_names, err)) < 0)
    goto fail;
  if (n > 0) {
    sub->labels = malloc(n * sizeof *sub->labels);
    if (ds->kind == QT_DATASET_KIND_IMAGE)
      sub->images = malloc(n * elements);
    else
      sub->features = malloc(n * elements * sizeof(float));
    if (!sub->labels || (!sub->images && !sub->features)) {
      rc = qt_err_set(err, QT_ENOMEM, "out of memory for a subset of %zu samples", n);
      goto fail;
    }
    for (size_t i = 0; i < n; i++) {
      size_t j = indices[i];
      sub->labels[i] = ds->labels[j];
      if (sub->images)
        memcpy(sub->images + i * elements, ds->images + j * elements, elements);
      else
        memcpy(sub->features + i * elements, ds->features + j * elements, elements * sizeof(float));
    }
  }
  sub->n = n;
  *out = sub;
  return 0;
fail:
  qt_dataset_free(sub);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Stratified split                                                           */
/* ------------------------------------------------------------------------- */

static int cmp_size(const void *a, const void *b) {
  size_t x = *(const size_t *)a, y = *(const size_t *)b;
  return (x > y) - (x < y);
}

int qt_dataset_split(const qt_dataset *ds, double val_fraction, double test_fraction, uint64_t seed,
                     qt_dataset **train, qt_dataset **val, qt_dataset **test, qt_err *err) {
  if (!ds || !train) return qt_err_set(err, QT_EINVAL, "qt_dataset_split: NULL argument");
  *train = NULL;
  if (val) *val = NULL;
  if (test) *test = NULL;
  if (!(val_fraction >= 0.0) || !(test_fraction >= 0.0) || !(val_fraction + test_fraction < 1.0))
    return qt_err_set(err, QT_EINVAL,
                      "split fractions must be >= 0 with a sum below 1 (validation %g, test %g)",
                      val_fraction, test_fraction);
  if ((val_fraction > 0.0 && !val) || (test_fraction > 0.0 && !test))
    return qt_err_set(err, QT_EINVAL,
                      "qt_dataset_split: a split with a fraction > 0 has no output");

  size_t n = ds->n, k_classes = ds->n_classes;
  size_t *by_class = malloc((n ? n : 1) * sizeof *by_class); /* (n) indices grouped by class */
  size_t *start = calloc(k_classes + 1, sizeof *start);      /* (K + 1) group offsets */
  size_t *idx[3] = {malloc((n ? n : 1) * sizeof(size_t)), malloc((n ? n : 1) * sizeof(size_t)),
                    malloc((n ? n : 1) * sizeof(size_t))}; /* train, val, test members */
  size_t count[3] = {0, 0, 0};
  qt_rng_t *rng = NULL;
  int rc = 0;
  if (!by_class || !start || !idx[0] || !idx[1] || !idx[2]) {
    rc = qt_err_set(err, QT_ENOMEM, "out of memory splitting %zu samples", n);
    goto done;
  }
  if ((rc = qt_rng_init(&rng, seed, err)) < 0) goto done;

  /* Counting sort by class keeps the dataset order within each class. */
  for (size_t i = 0; i < n; i++) start[ds->labels[i] + 1]++;
  for (size_t k = 0; k < k_classes; k++) start[k + 1] += start[k];
  {
    size_t *fill = calloc(k_classes ? k_classes : 1, sizeof *fill);
    if (!fill) {
      rc = qt_err_set(err, QT_ENOMEM, "out of memory");
      goto done;
    }
    for (size_t i = 0; i < n; i++) {
      size_t y = (size_t)ds->labels[i];
      by_class[start[y] + fill[y]++] = i;
    }
    free(fill);
  }

  for (size_t k = 0; k < k_classes; k++) {
    size_t m = start[k + 1] - start[k];
    size_t *members = by_class + start[k];
    size_t n_val = (size_t)floor((double)m * val_fraction + 0.5);
    size_t n_test = (size_t)floor((double)m * test_fraction + 0.5);
    while (n_val + n_test >= m && n_val + n_test > 0) {
      if (n_test > 0)
        n_test--;
      else
        n_val--;
    }
    /* Fisher-Yates over the class's members. */
    for (size_t i = m; i > 1; i--) {
      size_t j = (size_t)qt_rng_uniform_int(rng, i);
      size_t t = members[i - 1];
      members[i - 1] = members[j];
      members[j] = t;
    }
    for (size_t i = 0; i < m; i++) {
      int which = i < n_val ? 1 : (i < n_val + n_test ? 2 : 0);
      idx[which][count[which]++] = members[i];
    }
  }

  qt_dataset **outs[3] = {train, val, test};
  for (int s = 0; s < 3; s++) {
    if (!outs[s]) continue;
    qsort(idx[s], count[s], sizeof(size_t), cmp_size);
    if ((rc = qt_dataset_subset(ds, idx[s], count[s], outs[s], err)) < 0) goto done;
  }

done:
  if (rc < 0) {
    qt_dataset_free(*train);
    *train = NULL;
    if (val) {
      qt_dataset_free(*val);
      *val = NULL;
    }
    if (test) {
      qt_dataset_free(*test);
      *test = NULL;
    }
  }
  qt_rng_free(rng);
  free(by_class);
  free(start);
  for (int s = 0; s < 3; s++) free(idx[s]);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Layouts                                                                    */
/* ------------------------------------------------------------------------- */

qt_data_params qt_data_default_params(void) {
  qt_data_params p;
  memset(&p, 0, sizeof p);
  p.images = qt_image_folder_default_params();
  p.label_column = "label";
  p.val_fraction = 0.1;
  p.test_fraction = 0.1;
  p.seed = 0;
  return p;
}

void qt_data_splits_free(qt_data_splits *splits) {
  if (!splits) return;
  qt_dataset_free(splits->train);
  qt_dataset_free(splits->val);
  qt_dataset_free(splits->test);
  memset(splits, 0, sizeof *splits);
}

static const char *const fashion_mnist_classes[10] = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

const char *const *qt_data_fashion_mnist_class_names(void) {
  return fashion_mnist_classes;
}

static int is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* path/name into buf; QT_EINVAL when it does not fit. */
static int join(char *buf, size_t size, const char *dir, const char *name, qt_err *err) {
  int len = snprintf(buf, size, "%s/%s", dir, name);
  if (len < 0 || (size_t)len >= size)
    return qt_err_set(err, QT_EINVAL, "path too long: %s/%s", dir, name);
  return 0;
}

/* Finds dir/name or dir/name.gz; returns 1 with the path in buf. */
static int find_idx(const char *dir, const char *name, char *buf, size_t size) {
  if (snprintf(buf, size, "%s/%s", dir, name) < (int)size && is_file(buf)) return 1;
  if (snprintf(buf, size, "%s/%s.gz", dir, name) < (int)size && is_file(buf)) return 1;
  return 0;
}

static int contains_fashion(const char *path) {
  const char *word = "fashion";
  for (const char *p = path; *p; p++) {
    size_t i = 0;
    while (word[i] && p[i] && tolower((unsigned char)p[i]) == word[i]) i++;
    if (!word[i]) return 1;
  }
  return 0;
}

static int ends_with_csv(const char *path) {
  size_t n = strlen(path);
  return n >= 4 && (strcmp(path + n - 4, ".csv") == 0 || strcmp(path + n - 4, ".CSV") == 0);
}

/* The split folders of a train/val/test layout: 1 when root has a train
 * subfolder and every other subfolder is a split name; the paths of the val
 * and test folders (or "") are written to val and test. */
static int split_layout(const char *root, char *val, char *test, size_t size) {
  val[0] = test[0] = '\0';
  DIR *d = opendir(root);
  if (!d) return 0;
  int has_train = 0, other = 0;
  struct dirent *e;
  char path[4096];
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    if (snprintf(path, sizeof path, "%s/%s", root, e->d_name) >= (int)sizeof path) continue;
    if (!is_dir(path)) continue;
    if (strcmp(e->d_name, "train") == 0)
      has_train = 1;
    else if (strcmp(e->d_name, "val") == 0 || strcmp(e->d_name, "valid") == 0 ||
             strcmp(e->d_name, "validation") == 0) {
      if (!val[0] || strcmp(e->d_name, "val") == 0) snprintf(val, size, "%s", path);
    } else if (strcmp(e->d_name, "test") == 0)
      snprintf(test, size, "%s", path);
    else
      other = 1;
  }
  closedir(d);
  return has_train && !other;
}

/* Carves the splits missing from the layout out of train. */
static int carve_missing(qt_data_splits *s, const qt_data_params *p, qt_err *err) {
  double vf = s->val ? 0.0 : p->val_fraction;
  double tf = s->test ? 0.0 : p->test_fraction;
  qt_dataset *train = NULL, *val = NULL, *test = NULL;
  int rc = qt_dataset_split(s->train, vf, tf, p->seed, &train, &val, &test, err);
  if (rc < 0) return rc;
  qt_dataset_free(s->train);
  s->train = train;
  if (!s->val) {
    s->val = val;
  } else {
    qt_dataset_free(val);
  }
  if (!s->test) {
    s->test = test;
  } else {
    qt_dataset_free(test);
  }
  return qt__dataset_check_classes(s->train, err);
}

/* Loads a split of a layout with train's classes. */
static int load_split_images(const char *dir, const qt_data_params *p, const qt_dataset *train,
                             qt_dataset **out, qt_err *err) {
  qt_image_folder_params ip = p->images;
  ip.class_names = (const char *const *)train->class_names;
  ip.n_class_names = train->n_classes;
  ip.height = train->height;
  ip.width = train->width;
  ip.channels = train->channels;
  return qt_dataset_load_image_folder(dir, &ip, out, err);
}

static int load_split_csv(const char *path, const qt_data_params *p, const qt_dataset *train,
                          qt_dataset **out, qt_err *err) {
  int rc = qt_dataset_load_csv(path, p->label_column, (const char *const *)train->class_names,
                               train->n_classes, out, err);
  if (rc < 0) return rc;
  int same = (*out)->n_features == train->n_features;
  for (size_t j = 0; same && j < train->n_features; j++)
    same = strcmp((*out)->feature_names[j], train->feature_names[j]) == 0;
  if (!same) {
    qt_dataset_free(*out);
    *out = NULL;
    return qt_err_set(err, QT_ESCHEMA, "%s: the feature columns differ from those of %s", path,
                      train->source);
  }
  return 0;
}

int qt_data_load(const char *path, const qt_data_params *params, qt_data_splits *out, qt_err *err) {
  if (!path || !out) return qt_err_set(err, QT_EINVAL, "qt_data_load: NULL argument");
  memset(out, 0, sizeof *out);
  qt_data_params defaults = qt_data_default_params();
  const qt_data_params *p = params ? params : &defaults;
  struct stat st;
  if (stat(path, &st) != 0)
    return qt_err_set(err, errno == ENOENT ? QT_ENOENT : QT_EIO, "%s: %s", path, strerror(errno));

  char a[4096], b[4096];
  int rc = 0;
  if (S_ISREG(st.st_mode)) {
    if (!ends_with_csv(path))
      return qt_err_set(err, QT_EFORMAT,
                        "%s: a data file must be a .csv (or give a folder of images or IDX files)",
                        path);
    rc = qt_dataset_load_csv(path, p->label_column, NULL, 0, &out->train, err);
    out->given = QT_DATA_SPLIT_TRAIN;
  } else if (!S_ISDIR(st.st_mode)) {
    return qt_err_set(err, QT_EFORMAT, "%s: neither a file nor a folder", path);
  } else if (join(a, sizeof a, path, "train.csv", NULL) == 0 && is_file(a)) {
    rc = qt_dataset_load_csv(a, p->label_column, NULL, 0, &out->train, err);
    out->given = QT_DATA_SPLIT_TRAIN;
    if (rc == 0 && join(b, sizeof b, path, "val.csv", NULL) == 0 && is_file(b)) {
      rc = load_split_csv(b, p, out->train, &out->val, err);
      out->given |= QT_DATA_SPLIT_VAL;
    }
    if (rc == 0 && join(b, sizeof b, path, "test.csv", NULL) == 0 && is_file(b)) {
      rc = load_split_csv(b, p, out->train, &out->test, err);
      out->given |= QT_DATA_SPLIT_TEST;
    }
  } else if (find_idx(path, "train-images-idx3-ubyte", a, sizeof a) &&
             find_idx(path, "train-labels-idx1-ubyte", b, sizeof b)) {
    const char *const *names = contains_fashion(path) ? fashion_mnist_classes : NULL;
    size_t n_names = names ? 10 : 0;
    rc = qt_dataset_load_idx(a, b, names, n_names, &out->train, err);
    out->given = QT_DATA_SPLIT_TRAIN;
    if (rc == 0 && find_idx(path, "t10k-images-idx3-ubyte", a, sizeof a) &&
        find_idx(path, "t10k-labels-idx1-ubyte", b, sizeof b)) {
      /* The test set takes train's class names, so that labels mean the same. */
      rc = qt_dataset_load_idx(a, b, (const char *const *)out->train->class_names,
                               out->train->n_classes, &out->test, err);
      out->given |= QT_DATA_SPLIT_TEST;
    }
  } else if (split_layout(path, a, b, sizeof a)) {
    char train_dir[4096];
    if ((rc = join(train_dir, sizeof train_dir, path, "train", err)) == 0)
      rc = qt_dataset_load_image_folder(train_dir, &p->images, &out->train, err);
    out->given = QT_DATA_SPLIT_TRAIN;
    if (rc == 0 && a[0]) {
      rc = load_split_images(a, p, out->train, &out->val, err);
      out->given |= QT_DATA_SPLIT_VAL;
    }
    if (rc == 0 && b[0]) {
      rc = load_split_images(b, p, out->train, &out->test, err);
      out->given |= QT_DATA_SPLIT_TEST;
    }
  } else {
    rc = qt_dataset_load_image_folder(path, &p->images, &out->train, err);
    out->given = QT_DATA_SPLIT_TRAIN;
  }
  if (rc == 0) rc = carve_missing(out, p, err);
  if (rc < 0) qt_data_splits_free(out);
  return rc;
}

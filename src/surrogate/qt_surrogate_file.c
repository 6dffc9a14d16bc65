/*
 * qt_surrogate_file.c - a meta-trained surrogate in memory (qt_surrogate_t)
 * and on disk: the binary format documented in qt_surrogate.h, written
 * atomically (temporary file, fsync, rename) and read with bounds checks on
 * every field, so that a truncated or corrupt file is a clear error and
 * never a crash.
 */
#include "surrogate/qt_surrogate_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char SURROGATE_MAGIC[8] = {'Q', 'T', 'S', 'U', 'R', 'R', 'O', 'G'};
/* magic, version (u32), payload size (u64) */
#define HEADER_BYTES 20
/* the CRC after the payload */
#define TRAILER_BYTES 4
/* A sanity bound on counts read from a file, so that a corrupt count fails
 * with a message instead of a huge allocation. */
#define MAX_FILE_COUNT (1u << 28)

/* A list of owned strings. */
typedef struct string_list {
  size_t count;
  char **items; /* (count) */
} string_list;

struct qt_surrogate {
  qt_surrogate_info info; /* its pointers point into the fields below */
  qt_dkl_config config;
  size_t dkl_count, cost_count;
  double *dkl_params;  /* (dkl_count) */
  double *cost_params; /* (cost_count) */
  char *space_name, *meta_dataset, *created_by;
  string_list meta_features, train, validation, excluded;
  qt_model_codec_t *codec; /* NULL: one-hot */
};

/* ------------------------------------------------------------------------- */
/* In memory                                                                  */
/* ------------------------------------------------------------------------- */

uint64_t qt_surrogate_space_hash(const qt_space_t *space) {
  uint64_t hash = 1469598103934665603ull; /* FNV-1a offset basis */
  size_t dim = qt_space_encoded_dim(space);
  for (size_t column = 0; column < dim; column++) {
    char name[1024];
    if (qt_space_encoded_name(space, column, name, sizeof name) != 0) name[0] = '\0';
    for (const char *c = name;; c++) {
      hash ^= (unsigned char)(*c ? *c : '\n');
      hash *= 1099511628211ull; /* FNV prime */
      if (!*c) break;
    }
  }
  return hash;
}

static void list_free(string_list *list) {
  for (size_t i = 0; i < list->count; i++) free(list->items[i]);
  free(list->items);
  list->count = 0;
  list->items = NULL;
}

static char *copy_string(const char *text) {
  if (!text) text = "";
  size_t length = strlen(text);
  char *copy = malloc(length + 1);
  if (copy) memcpy(copy, text, length + 1);
  return copy;
}

static int list_copy(string_list *list, const char *const *items, size_t count) {
  list->count = 0;
  list->items = calloc(count ? count : 1, sizeof *list->items);
  if (!list->items) return QT_ENOMEM;
  for (size_t i = 0; i < count; i++) {
    list->items[i] = copy_string(items[i]);
    if (!list->items[i]) return QT_ENOMEM;
    list->count++;
  }
  return 0;
}

static int list_numbered(string_list *list, const char *prefix, size_t count) {
  list->count = 0;
  list->items = calloc(count ? count : 1, sizeof *list->items);
  if (!list->items) return QT_ENOMEM;
  for (size_t i = 0; i < count; i++) {
    char name[64];
    snprintf(name, sizeof name, "%s%zu", prefix, i);
    list->items[i] = copy_string(name);
    if (!list->items[i]) return QT_ENOMEM;
    list->count++;
  }
  return 0;
}

/* Points the public info at the owned fields. */
static void link_info(qt_surrogate_t *s) {
  s->info.space_name = s->space_name;
  s->info.meta_dataset = s->meta_dataset;
  s->info.created_by = s->created_by;
  s->info.meta_feature_count = s->meta_features.count;
  s->info.meta_features = (const char *const *)s->meta_features.items;
  s->info.train_count = s->train.count;
  s->info.train_datasets = (const char *const *)s->train.items;
  s->info.validation_count = s->validation.count;
  s->info.validation_datasets = (const char *const *)s->validation.items;
  s->info.excluded_count = s->excluded.count;
  s->info.excluded_datasets = (const char *const *)s->excluded.items;
}

void qt_surrogate_free(qt_surrogate_t *s) {
  if (!s) return;
  free(s->dkl_params);
  free(s->cost_params);
  free(s->space_name);
  free(s->meta_dataset);
  free(s->created_by);
  list_free(&s->meta_features);
  list_free(&s->train);
  list_free(&s->validation);
  list_free(&s->excluded);
  qt_model_codec_free(s->codec);
  free(s);
}

static int same_config(const qt_dkl_config *a, const qt_dkl_config *b) {
  return a->hp_dim == b->hp_dim && a->model_begin == b->model_begin &&
         a->model_end == b->model_end && a->curve_len == b->curve_len &&
         a->meta_dim == b->meta_dim && a->hidden_dim == b->hidden_dim &&
         a->output_dim == b->output_dim && a->curve_out_dim == b->curve_out_dim &&
         a->meta_out_dim == b->meta_out_dim && a->dropout == b->dropout && a->kernel == b->kernel;
}

int qt_surrogate_create(const qt_space_t *space, const qt_dkl_t *dkl, const qt_costnet_t *cost,
                        const qt_surrogate_info *info, qt_surrogate_t **out, qt_err *err) {
  return qt_surrogate_create_encoded(space, NULL, dkl, cost, info, out, err);
}

int qt_surrogate_create_encoded(const qt_space_t *space, const qt_model_codec_t *codec,
                                const qt_dkl_t *dkl, const qt_costnet_t *cost,
                                const qt_surrogate_info *info, qt_surrogate_t **out, qt_err *err) {
  if (!out || !space || !dkl || !cost)
    return qt_err_set(err, QT_EINVAL, "qt_surrogate_create: NULL argument");
  *out = NULL;
  qt_model_encoding mode = qt_model_codec_mode(codec);
  int crc = qt_model_encoding_check_space(mode, space, err);
  if (crc != 0) return crc;
  const qt_dkl_config *config = qt_dkl_get_config(dkl);
  qt_surrogate_info empty;
  memset(&empty, 0, sizeof empty);
  empty.validation_mse = NAN;
  empty.untrained_validation_mse = NAN;
  if (!info) info = &empty;
  if (config->hp_dim != qt_model_encoded_dim(mode, space)) {
    return qt_err_set(
        err, QT_EINVAL,
        "qt_surrogate_create: the models take %zu encoded columns, space '%s' has %zu (%s)",
        config->hp_dim, qt_space_name(space), qt_model_encoded_dim(mode, space),
        qt_model_encoding_name(mode));
  }
  if (!same_config(config, qt_costnet_get_config(cost))) {
    return qt_err_set(err, QT_EINVAL,
                      "qt_surrogate_create: the GP and the cost predictor have different configs");
  }
  if (info->meta_feature_count != 0 && info->meta_feature_count != config->meta_dim) {
    return qt_err_set(err, QT_EINVAL,
                      "qt_surrogate_create: %zu meta-feature names for meta_dim %zu",
                      info->meta_feature_count, config->meta_dim);
  }
  qt_surrogate_t *s = calloc(1, sizeof *s);
  if (!s) return qt_err_set(err, QT_ENOMEM, "qt_surrogate_create: out of memory");
  s->info = *info;
  s->config = *config;
  s->dkl_count = qt_dkl_param_count(dkl);
  s->cost_count = qt_costnet_param_count(cost);
  s->dkl_params = malloc(s->dkl_count * sizeof *s->dkl_params);
  s->cost_params = malloc(s->cost_count * sizeof *s->cost_params);
  s->space_name = copy_string(qt_space_name(space));
  s->meta_dataset = copy_string(info->meta_dataset);
  s->created_by = copy_string("qtune " QT_VERSION_STRING);
  int rc =
      (!s->dkl_params || !s->cost_params || !s->space_name || !s->meta_dataset || !s->created_by)
          ? QT_ENOMEM
          : 0;
  if (rc == 0 && info->meta_feature_count == 0) {
    /* No names given: "feature0", "feature1", ..., so that the count still
     * matches the network. */
    rc = list_numbered(&s->meta_features, "feature", config->meta_dim);
  } else if (rc == 0) {
    rc = list_copy(&s->meta_features, info->meta_features, info->meta_feature_count);
  }
  if (rc == 0) rc = list_copy(&s->train, info->train_datasets, info->train_count);
  if (rc == 0) rc = list_copy(&s->validation, info->validation_datasets, info->validation_count);
  if (rc == 0) rc = list_copy(&s->excluded, info->excluded_datasets, info->excluded_count);
  if (rc == 0 && mode == QT_MODEL_ENCODING_DESCRIPTORS)
    rc = qt_model_codec_copy(codec, &s->codec, NULL) == 0 ? 0 : QT_ENOMEM;
  if (rc != 0) {
    qt_surrogate_free(s);
    return qt_err_set(err, QT_ENOMEM, "qt_surrogate_create: out of memory");
  }
  qt_dkl_get_params(dkl, s->dkl_params);
  qt_costnet_get_params(cost, s->cost_params);
  s->info.space_hash = qt_model_encoding_hash(mode, space);
  s->info.model_encoding = mode;
  s->info.hp_dim = config->hp_dim;
  qt_space_fidelity(space, NULL, NULL, &s->info.fidelity_max);
  s->info.meta_scale = QT_SURROGATE_META_SCALE;
  link_info(s);
  *out = s;
  return 0;
}

const qt_surrogate_info *qt_surrogate_get_info(const qt_surrogate_t *s) {
  return &s->info;
}

const qt_dkl_config *qt_surrogate_config(const qt_surrogate_t *s) {
  return &s->config;
}

const double *qt_surrogate_dkl_params(const qt_surrogate_t *s, size_t *count) {
  if (count) *count = s->dkl_count;
  return s->dkl_params;
}

const double *qt_surrogate_costnet_params(const qt_surrogate_t *s, size_t *count) {
  if (count) *count = s->cost_count;
  return s->cost_params;
}

/* Models are built with throwaway weights from a fixed stream, then take
 * the stored vector. */
int qt_surrogate_make_dkl(const qt_surrogate_t *s, qt_dkl_t **out, qt_err *err) {
  qt_rng_t *rng = NULL;
  int rc = qt_rng_init(&rng, 0, err);
  if (rc == 0) rc = qt_dkl_init(out, &s->config, rng, err);
  qt_rng_free(rng);
  if (rc != 0) return rc;
  if (qt_dkl_param_count(*out) != s->dkl_count) {
    size_t expected = qt_dkl_param_count(*out);
    qt_dkl_free(*out);
    *out = NULL;
    return qt_err_set(err, QT_ESCHEMA, "surrogate: %zu stored GP parameters, the model has %zu",
                      s->dkl_count, expected);
  }
  rc = qt_dkl_set_params(*out, s->dkl_params, err);
  if (rc != 0) {
    qt_dkl_free(*out);
    *out = NULL;
  }
  return rc;
}

int qt_surrogate_make_costnet(const qt_surrogate_t *s, qt_costnet_t **out, qt_err *err) {
  qt_rng_t *rng = NULL;
  int rc = qt_rng_init(&rng, 0, err);
  if (rc == 0) rc = qt_costnet_init(out, &s->config, rng, err);
  qt_rng_free(rng);
  if (rc != 0) return rc;
  if (qt_costnet_param_count(*out) != s->cost_count) {
    size_t expected = qt_costnet_param_count(*out);
    qt_costnet_free(*out);
    *out = NULL;
    return qt_err_set(err, QT_ESCHEMA, "surrogate: %zu stored cost parameters, the model has %zu",
                      s->cost_count, expected);
  }
  rc = qt_costnet_set_params(*out, s->cost_params, err);
  if (rc != 0) {
    qt_costnet_free(*out);
    *out = NULL;
  }
  return rc;
}

const qt_model_codec_t *qt_surrogate_codec(const qt_surrogate_t *s) {
  return s->codec;
}

int qt_surrogate_check_encoding(const qt_surrogate_t *s, qt_model_encoding mode, qt_err *err) {
  if (s->info.model_encoding == mode) return 0;
  return qt_err_set(err, QT_ESCHEMA,
                    "surrogate was meta-trained with model encoding '%s', this request asks for "
                    "'%s'; meta-train one with `qtune meta train --model-encoding %s`",
                    qt_model_encoding_name(s->info.model_encoding), qt_model_encoding_name(mode),
                    qt_model_encoding_name(mode));
}

int qt_surrogate_add_hub_descriptors(qt_surrogate_t *s, const qt_hub_t *hub, size_t *added,
                                     qt_err *err) {
  if (added) *added = 0;
  return qt_model_codec_add_hub(s->codec, hub, added, err);
}

int qt_surrogate_encode(const qt_surrogate_t *s, const qt_space_t *space, const qt_config *config,
                        double *out, qt_err *err) {
  return qt_model_codec_encode(s->codec, space, config, out, err);
}

int qt_surrogate_check_space(const qt_surrogate_t *s, const qt_space_t *space, qt_err *err) {
  qt_model_encoding mode = s->info.model_encoding;
  uint64_t hash = qt_model_encoding_hash(mode, space);
  size_t dim = qt_model_encoded_dim(mode, space);
  long fidelity_max = 0;
  qt_space_fidelity(space, NULL, NULL, &fidelity_max);
  if (hash != s->info.space_hash || dim != s->info.hp_dim) {
    return qt_err_set(err, QT_ESCHEMA,
                      "surrogate was trained for space '%s' (%s encoding hash %016llx, %zu "
                      "columns), this search uses '%s' (hash %016llx, %zu columns); meta-train one "
                      "for this space with `qtune meta train`",
                      s->info.space_name, qt_model_encoding_name(mode),
                      (unsigned long long)s->info.space_hash, s->info.hp_dim, qt_space_name(space),
                      (unsigned long long)hash, dim);
  }
  if (fidelity_max != s->info.fidelity_max) {
    return qt_err_set(err, QT_ESCHEMA,
                      "surrogate was trained for space '%s' with at most %ld epochs (its budget "
                      "scale), this search's space '%s' allows %ld",
                      s->info.space_name, s->info.fidelity_max, qt_space_name(space), fidelity_max);
  }
  return 0;
}

/* ------------------------------------------------------------------------- */
/* CRC-32 (IEEE 802.3, reflected, as zlib's crc32)                            */
/* ------------------------------------------------------------------------- */

static uint32_t crc32_of(const unsigned char *data, size_t length) {
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < length; i++) {
    crc ^= data[i];
    for (int bit = 0; bit < 8; bit++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

/* ------------------------------------------------------------------------- */
/* Writing                                                                    */
/* ------------------------------------------------------------------------- */

/* A growing byte buffer; `failed` sticks after an allocation failure. */
typedef struct writer {
  unsigned char *data;
  size_t length, capacity;
  int failed;
} writer;

static void put_bytes(writer *w, const void *bytes, size_t count) {
  if (w->failed) return;
  if (w->length + count > w->capacity) {
    size_t capacity = w->capacity ? 2 * w->capacity : 4096;
    while (capacity < w->length + count) capacity *= 2;
    unsigned char *grown = realloc(w->data, capacity);
    if (!grown) {
      w->failed = 1;
      return;
    }
    w->data = grown;
    w->capacity = capacity;
  }
  memcpy(w->data + w->length, bytes, count);
  w->length += count;
}

static void put_u32(writer *w, uint32_t value) {
  unsigned char bytes[4];
  for (int i = 0; i < 4; i++) bytes[i] = (unsigned char)(value >> (8 * i));
  put_bytes(w, bytes, 4);
}

static void put_u64(writer *w, uint64_t value) {
  unsigned char bytes[8];
  for (int i = 0; i < 8; i++) bytes[i] = (unsigned char)(value >> (8 * i));
  put_bytes(w, bytes, 8);
}

static void put_f64(writer *w, double value) {
  uint64_t bits;
  memcpy(&bits, &value, sizeof bits);
  put_u64(w, bits);
}

static void put_string(writer *w, const char *text) {
  size_t length = strlen(text);
  put_u32(w, (uint32_t)length);
  put_bytes(w, text, length);
}

static void put_list(writer *w, const string_list *list) {
  put_u32(w, (uint32_t)list->count);
  for (size_t i = 0; i < list->count; i++) put_string(w, list->items[i]);
}

static void put_doubles(writer *w, const double *values, size_t count) {
  put_u64(w, count);
  for (size_t i = 0; i < count; i++) put_f64(w, values[i]);
}

/* The payload, field by field; read_payload reads it in the same order. */
static void write_payload(writer *w, const qt_surrogate_t *s) {
  const qt_surrogate_info *info = &s->info;
  const qt_dkl_config *c = &s->config;
  put_string(w, s->space_name);
  put_u64(w, info->space_hash);
  put_u64(w, info->hp_dim);
  put_u64(w, (uint64_t)info->fidelity_max);
  put_f64(w, info->meta_scale);
  put_list(w, &s->meta_features);
  /* The network shapes. */
  put_u64(w, c->hp_dim);
  put_u64(w, c->model_begin);
  put_u64(w, c->model_end);
  put_u64(w, c->curve_len);
  put_u64(w, c->meta_dim);
  put_u64(w, c->hidden_dim);
  put_u64(w, c->output_dim);
  put_u64(w, c->curve_out_dim);
  put_u64(w, c->meta_out_dim);
  put_f64(w, c->dropout);
  put_u32(w, (uint32_t)c->kernel);
  put_doubles(w, s->dkl_params, s->dkl_count);
  put_doubles(w, s->cost_params, s->cost_count);
  /* Provenance. */
  put_string(w, s->meta_dataset);
  put_list(w, &s->train);
  put_list(w, &s->validation);
  put_list(w, &s->excluded);
  put_u64(w, (uint64_t)info->iterations);
  put_u64(w, (uint64_t)info->best_iteration);
  put_f64(w, info->validation_mse);
  put_f64(w, info->untrained_validation_mse);
  put_u64(w, info->seed);
  put_string(w, s->created_by);
  if (s->codec) { /* version 2: the model descriptors */
    const qt_descriptor_table_t *table = qt_model_codec_table(s->codec);
    double mean[QT_DESCRIPTOR_NUMERIC_COUNT], std[QT_DESCRIPTOR_NUMERIC_COUNT];
    qt_model_codec_stats(s->codec, mean, std);
    put_u32(w, (uint32_t)QT_MODEL_ENCODING_DESCRIPTORS);
    put_u32(w, (uint32_t)qt_descriptor_table_count(table));
    for (size_t i = 0; i < qt_descriptor_table_count(table); i++) {
      const qt_model_descriptor *d = qt_descriptor_table_at(table, i);
      put_string(w, d->name);
      put_u32(w, (uint32_t)d->family);
      for (size_t k = 0; k < QT_DESCRIPTOR_NUMERIC_COUNT; k++) put_f64(w, d->values[k]);
    }
    for (size_t k = 0; k < QT_DESCRIPTOR_NUMERIC_COUNT; k++) put_f64(w, mean[k]);
    for (size_t k = 0; k < QT_DESCRIPTOR_NUMERIC_COUNT; k++) put_f64(w, std[k]);
  }
}

/* Writes all of data to fd, retrying after interruptions and short writes. */
static int write_all(int fd, const unsigned char *data, size_t length) {
  while (length > 0) {
    ssize_t done = write(fd, data, length);
    if (done < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    data += done;
    length -= (size_t)done;
  }
  return 0;
}

int qt_surrogate_save(const qt_surrogate_t *s, const char *path, qt_err *err) {
  if (!s || !path) return qt_err_set(err, QT_EINVAL, "qt_surrogate_save: NULL argument");
  writer payload = {0}, file = {0};
  write_payload(&payload, s);
  put_bytes(&file, SURROGATE_MAGIC, sizeof SURROGATE_MAGIC);
  put_u32(&file, s->codec ? QT_SURROGATE_FILE_VERSION : QT_SURROGATE_FILE_VERSION_ONEHOT);
  put_u64(&file, payload.length);
  put_bytes(&file, payload.data, payload.length);
  put_u32(&file, payload.failed ? 0 : crc32_of(payload.data, payload.length));
  int failed = payload.failed || file.failed;
  free(payload.data);
  if (failed) {
    free(file.data);
    return qt_err_set(err, QT_ENOMEM, "%s: out of memory while encoding the surrogate", path);
  }

  /* Temporary file beside the target, then rename: a crash leaves either
   * the old file or the new one, never half of one. */
  size_t tmp_size = strlen(path) + 32;
  char *tmp = malloc(tmp_size);
  if (!tmp) {
    free(file.data);
    return qt_err_set(err, QT_ENOMEM, "%s: out of memory", path);
  }
  snprintf(tmp, tmp_size, "%s.tmp.%ld", path, (long)getpid());
  int rc = 0;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) {
    rc = qt_err_set(err, QT_EIO, "%s: %s", tmp, strerror(errno));
  } else {
    int bad = write_all(fd, file.data, file.length) != 0 || fsync(fd) != 0;
    int saved = errno;
    if (close(fd) != 0 && !bad) {
      bad = 1;
      saved = errno;
    }
    if (bad) {
      rc = qt_err_set(err, saved == ENOSPC ? QT_ENOSPC : QT_EIO, "%s: %s", tmp, strerror(saved));
    } else if (rename(tmp, path) != 0) {
      rc = qt_err_set(err, QT_EIO, "%s: renaming %s into place: %s", path, tmp, strerror(errno));
    }
    if (rc != 0) unlink(tmp);
  }
  free(tmp);
  free(file.data);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Reading                                                                    */
/* ------------------------------------------------------------------------- */

/* A cursor over the payload; `failed` sticks at the first read past its
 * end or the first impossible value. */
typedef struct reader {
  const unsigned char *data;
  size_t length, at;
  int failed;
} reader;

static const unsigned char *take(reader *r, size_t count) {
  if (r->failed || count > r->length - r->at) {
    r->failed = 1;
    return NULL;
  }
  const unsigned char *bytes = r->data + r->at;
  r->at += count;
  return bytes;
}

static uint32_t get_u32(reader *r) {
  const unsigned char *b = take(r, 4);
  if (!b) return 0;
  uint32_t value = 0;
  for (int i = 0; i < 4; i++) value |= (uint32_t)b[i] << (8 * i);
  return value;
}

static uint64_t get_u64(reader *r) {
  const unsigned char *b = take(r, 8);
  if (!b) return 0;
  uint64_t value = 0;
  for (int i = 0; i < 8; i++) value |= (uint64_t)b[i] << (8 * i);
  return value;
}

static double get_f64(reader *r) {
  uint64_t bits = get_u64(r);
  double value;
  memcpy(&value, &bits, sizeof value);
  return value;
}

static size_t get_size(reader *r) {
  uint64_t value = get_u64(r);
  if (value > MAX_FILE_COUNT) r->failed = 1;
  return r->failed ? 0 : (size_t)value;
}

static char *get_string(reader *r) {
  uint32_t length = get_u32(r);
  const unsigned char *bytes = take(r, length);
  if (!bytes) return NULL;
  char *text = malloc((size_t)length + 1);
  if (!text) {
    r->failed = 1;
    return NULL;
  }
  memcpy(text, bytes, length);
  text[length] = '\0';
  return text;
}

static void get_list(reader *r, string_list *list) {
  uint32_t count = get_u32(r);
  if (r->failed || count > r->length - r->at) { /* each item takes >= 4 bytes */
    r->failed = 1;
    return;
  }
  list->items = calloc(count ? count : 1, sizeof *list->items);
  if (!list->items) {
    r->failed = 1;
    return;
  }
  for (uint32_t i = 0; i < count && !r->failed; i++) {
    list->items[i] = get_string(r);
    if (list->items[i]) list->count++;
  }
}

static double *get_doubles(reader *r, size_t *count) {
  *count = get_size(r);
  if (r->failed || *count > (r->length - r->at) / 8) {
    r->failed = 1;
    return NULL;
  }
  double *values = malloc((*count ? *count : 1) * sizeof *values);
  if (!values) {
    r->failed = 1;
    return NULL;
  }
  for (size_t i = 0; i < *count; i++) values[i] = get_f64(r);
  return values;
}

/* The version-2 section: the descriptor table and statistics. */
static void read_codec(reader *r, qt_surrogate_t *s) {
  uint32_t mode = get_u32(r);
  uint32_t count = get_u32(r);
  if (r->failed || mode != QT_MODEL_ENCODING_DESCRIPTORS || count == 0 ||
      count > r->length - r->at) {
    r->failed = 1;
    return;
  }
  qt_descriptor_table_t *table = NULL;
  if (qt_descriptor_table_create(&table, NULL) != 0) {
    r->failed = 1;
    return;
  }
  for (uint32_t i = 0; i < count && !r->failed; i++) {
    qt_model_descriptor d;
    char *name = get_string(r);
    d.name = name;
    d.family = get_u32(r);
    for (size_t k = 0; k < QT_DESCRIPTOR_NUMERIC_COUNT; k++) d.values[k] = get_f64(r);
    if (!r->failed && qt_descriptor_table_add(table, &d, NULL) != 0) r->failed = 1;
    free(name);
  }
  double mean[QT_DESCRIPTOR_NUMERIC_COUNT], std[QT_DESCRIPTOR_NUMERIC_COUNT];
  for (size_t k = 0; k < QT_DESCRIPTOR_NUMERIC_COUNT; k++) mean[k] = get_f64(r);
  for (size_t k = 0; k < QT_DESCRIPTOR_NUMERIC_COUNT; k++) std[k] = get_f64(r);
  if (!r->failed && qt_model_codec_create_with_stats(table, mean, std, &s->codec, NULL) != 0)
    r->failed = 1;
  qt_descriptor_table_free(table);
  if (!r->failed) s->info.model_encoding = QT_MODEL_ENCODING_DESCRIPTORS;
}

static void read_payload(reader *r, qt_surrogate_t *s) {
  qt_surrogate_info *info = &s->info;
  qt_dkl_config *c = &s->config;
  s->space_name = get_string(r);
  info->space_hash = get_u64(r);
  info->hp_dim = get_size(r);
  info->fidelity_max = (long)get_u64(r);
  info->meta_scale = get_f64(r);
  get_list(r, &s->meta_features);
  c->hp_dim = get_size(r);
  c->model_begin = get_size(r);
  c->model_end = get_size(r);
  c->curve_len = get_size(r);
  c->meta_dim = get_size(r);
  c->hidden_dim = get_size(r);
  c->output_dim = get_size(r);
  c->curve_out_dim = get_size(r);
  c->meta_out_dim = get_size(r);
  c->dropout = get_f64(r);
  c->kernel = (qt_gp_kernel)get_u32(r);
  s->dkl_params = get_doubles(r, &s->dkl_count);
  s->cost_params = get_doubles(r, &s->cost_count);
  s->meta_dataset = get_string(r);
  get_list(r, &s->train);
  get_list(r, &s->validation);
  get_list(r, &s->excluded);
  info->iterations = (long)get_u64(r);
  info->best_iteration = (long)get_u64(r);
  info->validation_mse = get_f64(r);
  info->untrained_validation_mse = get_f64(r);
  info->seed = get_u64(r);
  s->created_by = get_string(r);
}

int qt_surrogate_load(const char *path, const qt_space_t *space, qt_surrogate_t **out,
                      qt_err *err) {
  if (!path || !out) return qt_err_set(err, QT_EINVAL, "qt_surrogate_load: NULL argument");
  *out = NULL;
  char *data = NULL;
  size_t length = 0;
  int rc = qt_file_read(path, &data, &length, err);
  if (rc != 0) return rc;
  const unsigned char *bytes = (const unsigned char *)data;

  if (length < sizeof SURROGATE_MAGIC || memcmp(bytes, SURROGATE_MAGIC, sizeof SURROGATE_MAGIC)) {
    /* A file that is a beginning of the magic was cut short. */
    int cut = length < sizeof SURROGATE_MAGIC && length > 0 &&
              memcmp(bytes, SURROGATE_MAGIC, length) == 0;
    free(data);
    if (cut)
      return qt_err_set(err, QT_EFORMAT, "%s: truncated surrogate file (%zu bytes)", path, length);
    return qt_err_set(err, QT_EFORMAT,
                      "%s: not a qtune surrogate file (no QTSURROG magic); make one with "
                      "`qtune meta train`",
                      path);
  }
  reader header = {bytes, length, sizeof SURROGATE_MAGIC, 0};
  uint32_t version = get_u32(&header);
  uint64_t payload_size = get_u64(&header);
  if (header.failed) {
    free(data);
    return qt_err_set(err, QT_EFORMAT,
                      "%s: truncated surrogate file (%zu bytes, header alone is %d)", path, length,
                      HEADER_BYTES);
  }
  if (version != QT_SURROGATE_FILE_VERSION && version != QT_SURROGATE_FILE_VERSION_ONEHOT) {
    free(data);
    return qt_err_set(err, QT_EVERSION,
                      "%s: surrogate file version %u, this qtune reads versions %d and %d; "
                      "meta-train it again with this qtune (`qtune meta train`)",
                      path, version, QT_SURROGATE_FILE_VERSION_ONEHOT, QT_SURROGATE_FILE_VERSION);
  }
  uint64_t expected = (uint64_t)HEADER_BYTES + payload_size + TRAILER_BYTES;
  if (payload_size > length || expected != length) {
    free(data);
    return qt_err_set(err, QT_EFORMAT,
                      "%s: %s surrogate file: the header announces %llu bytes, the file has %zu",
                      path, expected > length ? "truncated" : "corrupt (trailing bytes)",
                      (unsigned long long)expected, length);
  }
  const unsigned char *payload = bytes + HEADER_BYTES;
  reader trailer = {bytes, length, HEADER_BYTES + (size_t)payload_size, 0};
  uint32_t stored_crc = get_u32(&trailer);
  if (stored_crc != crc32_of(payload, (size_t)payload_size)) {
    free(data);
    return qt_err_set(err, QT_EFORMAT, "%s: corrupt surrogate file (CRC mismatch)", path);
  }

  qt_surrogate_t *s = calloc(1, sizeof *s);
  if (!s) {
    free(data);
    return qt_err_set(err, QT_ENOMEM, "%s: out of memory", path);
  }
  reader r = {payload, (size_t)payload_size, 0, 0};
  read_payload(&r, s);
  if (version == QT_SURROGATE_FILE_VERSION) read_codec(&r, s);
  free(data);
  if (r.failed || r.at != r.length) {
    qt_surrogate_free(s);
    return qt_err_set(err, QT_EFORMAT, "%s: corrupt surrogate file (fields do not fit the payload)",
                      path);
  }
  link_info(s);

  /* The stored shapes must build models with exactly the stored vectors. */
  qt_dkl_t *dkl = NULL;
  qt_costnet_t *cost = NULL;
  qt_err inner;
  rc = qt_surrogate_make_dkl(s, &dkl, &inner);
  if (rc == 0) rc = qt_surrogate_make_costnet(s, &cost, &inner);
  qt_dkl_free(dkl);
  qt_costnet_free(cost);
  if (rc == 0 &&
      (s->config.hp_dim != s->info.hp_dim || s->meta_features.count != s->config.meta_dim)) {
    rc = qt_err_set(&inner, QT_ESCHEMA, "the shapes disagree with the stored space");
  }
  if (rc != 0) {
    qt_surrogate_free(s);
    return qt_err_set(err, rc == QT_ENOMEM ? QT_ENOMEM : QT_EFORMAT, "%s: corrupt surrogate: %s",
                      path, qt_err_message(&inner));
  }
  if (space) {
    rc = qt_surrogate_check_space(s, space, err);
    if (rc != 0) {
      qt_err_prefix(err, rc, "%s", path);
      qt_surrogate_free(s);
      return rc;
    }
  }
  *out = s;
  return 0;
}

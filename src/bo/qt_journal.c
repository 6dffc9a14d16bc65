/*
 * qt_journal.c - the run directory's journal (journal.jsonl) and lock.
 *
 * The journal is the search's memory: one JSON object per line, appended
 * with one write() and made durable with fsync() before the search acts on
 * it, so that a process killed at any instant leaves at most one torn line
 * at the end. Readers ignore such a line; the next writer cuts it off.
 *
 * Writing: a record's set fields (integers >= 0, finite numbers, non-NULL
 * strings) are written in a fixed key order, whatever the type, so the
 * writer needs no per-type table. Numbers are written with the fewest
 * significant digits (15, 16 or 17) that read back to the same double:
 * the search replays journaled scores and costs and must get the very same
 * numbers back.
 *
 * Reading: each line becomes a qt_journal_record whose strings live in the
 * log's arena. The type and "t" are required, and so are the fields the
 * summary and the search cannot do without (the trial of trial records,
 * the score of epoch_end and incumbent, ...). Unknown keys are skipped, so
 * that a newer qtune's journal still reads.
 *
 * The lock is flock() on run_dir/lock: the kernel drops it when the holder
 * dies, so a killed search never leaves a stale lock behind; the pid written
 * in the file is only there to name the holder in the error message.
 */
#include "bo/qt_bo.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------- */
/* Record types                                                               */
/* ------------------------------------------------------------------------- */

static const char *const type_names[] = {"run_start",   "suggest",   "trial_created",
                                         "epoch_begin", "epoch_end", "trial_failed",
                                         "incumbent",   "run_end"};
#define N_TYPES (sizeof type_names / sizeof type_names[0])

const char *qt_journal_type_name(qt_journal_type type) {
  if ((unsigned)type >= N_TYPES) return "unknown";
  return type_names[type];
}

static int type_parse(const char *text, qt_journal_type *out) {
  for (size_t i = 0; i < N_TYPES; i++) {
    if (strcmp(text, type_names[i]) == 0) {
      *out = (qt_journal_type)i;
      return 0;
    }
  }
  return -1;
}

qt_journal_record qt_journal_record_init(qt_journal_type type) {
  qt_journal_record r;
  memset(&r, 0, sizeof r);
  r.type = type;
  r.t = NAN;
  r.trial = r.epoch = r.target = -1;
  r.score = r.top5 = r.train_loss = r.val_loss = r.cost_s = r.images_per_s = NAN;
  r.predicted_cost_s = r.optimizer_s = NAN;
  r.seed = r.session = r.pool = r.max_epochs = -1;
  r.budget_s = r.used_s = r.overshoot_s = NAN;
  return r;
}

/* ------------------------------------------------------------------------- */
/* Formatting a line                                                          */
/* ------------------------------------------------------------------------- */

/* A growing text buffer; `failed` is sticky so that callers check once. */
typedef struct line_buf {
  char *data;
  size_t length, capacity;
  int failed;
} line_buf;

static void buf_put(line_buf *b, const char *text, size_t n) {
  if (b->failed) return;
  if (b->length + n + 1 > b->capacity) {
    size_t capacity = b->capacity ? b->capacity : 256;
    while (b->length + n + 1 > capacity) capacity *= 2;
    char *data = realloc(b->data, capacity);
    if (!data) {
      b->failed = 1;
      return;
    }
    b->data = data;
    b->capacity = capacity;
  }
  memcpy(b->data + b->length, text, n);
  b->length += n;
  b->data[b->length] = '\0';
}

static void buf_puts(line_buf *b, const char *text) {
  buf_put(b, text, strlen(text));
}

/* The length of the valid UTF-8 sequence at p, or 0 when it is not one
 * (overlong forms, surrogates and code points past U+10FFFF included). */
static size_t utf8_sequence_length(const unsigned char *p) {
  unsigned lead = p[0], minimum;
  size_t n;
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) {
    n = 2;
    minimum = 0x80;
  } else if ((lead & 0xF0) == 0xE0) {
    n = 3;
    minimum = 0x800;
  } else if ((lead & 0xF8) == 0xF0) {
    n = 4;
    minimum = 0x10000;
  } else {
    return 0;
  }
  unsigned code = lead & (0x7Fu >> n);
  for (size_t i = 1; i < n; i++) {
    if ((p[i] & 0xC0) != 0x80) return 0; /* also stops at the NUL */
    code = (code << 6) | (p[i] & 0x3F);
  }
  if (code < minimum || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return 0;
  return n;
}

/* A JSON string literal (jansson does the escaping). Bytes that are not
 * UTF-8 (a failure reason quoting a file name in another encoding, say)
 * become '?': JSON holds only UTF-8, and losing a record over one byte of
 * a message would be worse. */
static void buf_string(line_buf *b, const char *text) {
  char *repaired = NULL;
  json_t *string = json_string(text);
  if (!string) {
    repaired = malloc(strlen(text) + 1);
    if (!repaired) {
      b->failed = 1;
      return;
    }
    const unsigned char *p = (const unsigned char *)text;
    char *q = repaired;
    while (*p) {
      size_t n = utf8_sequence_length(p);
      if (n == 0) {
        *q++ = '?';
        p++;
      } else {
        memcpy(q, p, n);
        q += n;
        p += n;
      }
    }
    *q = '\0';
    string = json_string(repaired);
  }
  char *encoded = string ? json_dumps(string, JSON_ENCODE_ANY) : NULL;
  json_decref(string);
  free(repaired);
  if (!encoded) {
    b->failed = 1;
    return;
  }
  buf_puts(b, encoded);
  free(encoded);
}

static void buf_key(line_buf *b, const char *key) {
  buf_puts(b, b->length > 1 ? ",\"" : "\"");
  buf_puts(b, key);
  buf_puts(b, "\":");
}

static void put_double(line_buf *b, const char *key, double value) {
  if (!isfinite(value)) return;
  char text[40];
  qt_format_double(value, text, sizeof text);
  buf_key(b, key);
  buf_puts(b, text);
}

static void put_long(line_buf *b, const char *key, long value) {
  if (value < 0) return;
  char text[32];
  snprintf(text, sizeof text, "%ld", value);
  buf_key(b, key);
  buf_puts(b, text);
}

static void put_string(line_buf *b, const char *key, const char *value) {
  if (!value) return;
  buf_key(b, key);
  buf_string(b, value);
}

/* The record as one line of JSON with its final '\n'. */
static int format_record(const qt_journal_record *r, line_buf *b, qt_err *err) {
  if ((unsigned)r->type >= N_TYPES)
    return qt_err_set(err, QT_EINVAL, "journal record of unknown type %d", (int)r->type);
  if (!isfinite(r->t) || r->t < 0)
    return qt_err_set(err, QT_EINVAL, "journal record %s: the clock t is not set",
                      qt_journal_type_name(r->type));
  buf_puts(b, "{");
  put_string(b, "type", qt_journal_type_name(r->type));
  put_double(b, "t", r->t);
  put_long(b, "session", r->session);
  put_string(b, "time", r->time);
  put_string(b, "hash", r->hash);
  put_long(b, "trial", r->trial);
  put_long(b, "target", r->target);
  put_long(b, "epoch", r->epoch);
  put_string(b, "model", r->model);
  if (r->n_values > 0) {
    buf_key(b, "config");
    buf_puts(b, "{");
    for (size_t i = 0; i < r->n_values; i++) {
      if (!r->names || !r->values || !r->names[i] || !r->values[i])
        return qt_err_set(err, QT_EINVAL, "journal record %s: config entry %zu is NULL",
                          qt_journal_type_name(r->type), i);
      if (i > 0) buf_puts(b, ",");
      buf_string(b, r->names[i]);
      buf_puts(b, ":");
      buf_string(b, r->values[i]);
    }
    buf_puts(b, "}");
  }
  put_long(b, "seed", r->seed);
  put_string(b, "status", r->status);
  put_double(b, "score", r->score);
  put_double(b, "top5", r->top5);
  put_double(b, "train_loss", r->train_loss);
  put_double(b, "val_loss", r->val_loss);
  put_double(b, "cost_s", r->cost_s);
  put_double(b, "images_per_s", r->images_per_s);
  put_double(b, "predicted_cost_s", r->predicted_cost_s);
  put_double(b, "optimizer_s", r->optimizer_s);
  put_string(b, "reason", r->reason);
  put_double(b, "budget_s", r->budget_s);
  put_double(b, "used_s", r->used_s);
  put_double(b, "overshoot_s", r->overshoot_s);
  put_string(b, "optimizer", r->optimizer);
  put_long(b, "pool", r->pool);
  put_long(b, "max_epochs", r->max_epochs);
  put_string(b, "dataset", r->dataset);
  put_string(b, "hub", r->hub);
  put_string(b, "space", r->space);
  buf_puts(b, "}\n");
  if (b->failed)
    return qt_err_set(err, QT_EINVAL, "journal record %s: out of memory",
                      qt_journal_type_name(r->type));
  return 0;
}

/* ------------------------------------------------------------------------- */
/* The writer                                                                 */
/* ------------------------------------------------------------------------- */

struct qt_journal {
  int fd;
  off_t size; /* bytes of complete records: where the next one starts */
  char *path;
  line_buf line;
};

static int is_disk_full(int error) {
  return error == ENOSPC || error == EFBIG
#ifdef EDQUOT
         || error == EDQUOT
#endif
      ;
}

/* The length of the file up to and including its last '\n' (0 if none). */
static int complete_length(int fd, off_t size, off_t *out) {
  char chunk[4096];
  off_t end = size;
  while (end > 0) {
    off_t start = end > (off_t)sizeof chunk ? end - (off_t)sizeof chunk : 0;
    size_t n = (size_t)(end - start);
    ssize_t got = pread(fd, chunk, n, start);
    if (got != (ssize_t)n) return -1;
    for (size_t i = n; i-- > 0;) {
      if (chunk[i] == '\n') {
        *out = start + (off_t)i + 1;
        return 0;
      }
    }
    end = start;
  }
  *out = 0;
  return 0;
}

int qt_journal_open(const char *path, qt_journal_t **out, qt_err *err) {
  if (!path || !out) return qt_err_set(err, QT_EINVAL, "qt_journal_open: NULL argument");
  *out = NULL;
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0)
    return qt_err_set(err, errno == ENOENT ? QT_ENOENT : QT_EIO, "%s: %s", path, strerror(errno));
  struct stat info;
  off_t keep = 0;
  if (fstat(fd, &info) != 0 || complete_length(fd, info.st_size, &keep) != 0) {
    int rc = qt_err_set(err, QT_EIO, "%s: %s", path, strerror(errno));
    close(fd);
    return rc;
  }
  if (keep < info.st_size) {
    /* A torn last line: the previous writer died inside its write(). */
    QT_LOG_WARN("%s: cutting off a torn last line (%lld bytes)", path,
                (long long)(info.st_size - keep));
    if (ftruncate(fd, keep) != 0 || fsync(fd) != 0) {
      int rc =
          qt_err_set(err, QT_EIO, "%s: cannot cut the torn last line: %s", path, strerror(errno));
      close(fd);
      return rc;
    }
  }
  qt_journal_t *journal = calloc(1, sizeof *journal);
  char *copy = journal ? strdup(path) : NULL;
  if (!copy) {
    free(journal);
    close(fd);
    return qt_err_set(err, QT_ENOMEM, "out of memory");
  }
  journal->fd = fd;
  journal->size = keep;
  journal->path = copy;
  *out = journal;
  return 0;
}

/* Cuts the file back to its last complete record after a failed append. */
static void cut_back(qt_journal_t *journal) {
  if (ftruncate(journal->fd, journal->size) == 0) (void)fsync(journal->fd);
}

int qt_journal_append(qt_journal_t *journal, const qt_journal_record *record, qt_err *err) {
  if (!journal || !record) return qt_err_set(err, QT_EINVAL, "qt_journal_append: NULL argument");
  journal->line.length = 0;
  journal->line.failed = 0;
  int rc = format_record(record, &journal->line, err);
  if (rc < 0) return rc;
  const char *data = journal->line.data;
  size_t left = journal->line.length;
  off_t at = journal->size;
  /* One write() in the normal case; the loop only continues after a
   * short write (a signal or a nearly full disk). */
  while (left > 0) {
    ssize_t n = pwrite(journal->fd, data, left, at);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int error = n < 0 ? errno : ENOSPC;
      cut_back(journal);
      return qt_err_set(err, is_disk_full(error) ? QT_ENOSPC : QT_EIO,
                        "%s: cannot append a %s record: %s", journal->path,
                        qt_journal_type_name(record->type), strerror(error));
    }
    data += n;
    left -= (size_t)n;
    at += n;
  }
  if (fsync(journal->fd) != 0) {
    int error = errno;
    cut_back(journal);
    return qt_err_set(err, is_disk_full(error) ? QT_ENOSPC : QT_EIO,
                      "%s: cannot sync a %s record: %s", journal->path,
                      qt_journal_type_name(record->type), strerror(error));
  }
  journal->size = at;
  return 0;
}

void qt_journal_close(qt_journal_t *journal) {
  if (!journal) return;
  close(journal->fd);
  free(journal->path);
  free(journal->line.data);
  free(journal);
}

/* ------------------------------------------------------------------------- */
/* The reader                                                                 */
/* ------------------------------------------------------------------------- */

/* Strings and arrays of a log: blocks chained from the newest. */
typedef struct arena_block {
  struct arena_block *next;
  size_t used, capacity;
  _Alignas(16) char data[];
} arena_block;

static void *arena_alloc(void **arena, size_t size) {
  size = (size + 15) & ~(size_t)15;
  arena_block *block = *arena;
  if (!block || block->used + size > block->capacity) {
    size_t capacity = size > 65536 ? size : 65536;
    arena_block *fresh = malloc(sizeof *fresh + capacity);
    if (!fresh) return NULL;
    fresh->next = block;
    fresh->used = 0;
    fresh->capacity = capacity;
    *arena = block = fresh;
  }
  void *p = block->data + block->used;
  block->used += size;
  return p;
}

static char *arena_strdup(void **arena, const char *text) {
  size_t n = strlen(text) + 1;
  char *copy = arena_alloc(arena, n);
  if (copy) memcpy(copy, text, n);
  return copy;
}

static void arena_free(void *arena) {
  arena_block *block = arena;
  while (block) {
    arena_block *next = block->next;
    free(block);
    block = next;
  }
}

/* Context for the messages of one line. */
typedef struct line_ctx {
  const char *path;
  size_t line;
  qt_err *err;
  void **arena;
} line_ctx;

static int bad(const line_ctx *c, const char *key, const char *what) {
  return qt_err_set(c->err, QT_EFORMAT, "%s:%zu: \"%s\" %s", c->path, c->line, key, what);
}

static int get_long(const line_ctx *c, json_t *object, const char *key, long *out) {
  json_t *v = json_object_get(object, key);
  if (!v) return 0;
  if (json_is_integer(v)) {
    json_int_t x = json_integer_value(v);
    if (x < 0 || x > (json_int_t)LONG_MAX) return bad(c, key, "is out of range");
    *out = (long)x;
    return 0;
  }
  if (json_is_real(v)) {
    double x = json_real_value(v);
    if (x >= 0 && x < 9e18 && x == floor(x)) {
      *out = (long)x;
      return 0;
    }
  }
  return bad(c, key, "is not a non-negative integer");
}

static int get_double(const line_ctx *c, json_t *object, const char *key, double *out) {
  json_t *v = json_object_get(object, key);
  if (!v) return 0;
  if (!json_is_number(v)) return bad(c, key, "is not a number");
  *out = json_number_value(v);
  return 0;
}

static int get_string(const line_ctx *c, json_t *object, const char *key, const char **out) {
  json_t *v = json_object_get(object, key);
  if (!v) return 0;
  if (!json_is_string(v)) return bad(c, key, "is not a string");
  *out = arena_strdup(c->arena, json_string_value(v));
  if (!*out) return qt_err_set(c->err, QT_ENOMEM, "out of memory");
  return 0;
}

/* A config value as text: strings as they are, numbers and booleans as
 * JSON writes them (a hand-edited journal may hold those). */
static const char *value_text(const line_ctx *c, json_t *v) {
  if (json_is_string(v)) return arena_strdup(c->arena, json_string_value(v));
  char text[40];
  if (json_is_integer(v)) {
    snprintf(text, sizeof text, "%lld", (long long)json_integer_value(v));
  } else if (json_is_real(v)) {
    qt_format_double(json_real_value(v), text, sizeof text);
  } else if (json_is_boolean(v)) {
    snprintf(text, sizeof text, "%s", json_is_true(v) ? "true" : "false");
  } else {
    return NULL;
  }
  return arena_strdup(c->arena, text);
}

static int get_config(const line_ctx *c, json_t *object, qt_journal_record *r) {
  json_t *config = json_object_get(object, "config");
  if (!config) return 0;
  if (!json_is_object(config)) return bad(c, "config", "is not an object");
  size_t n = json_object_size(config);
  const char **names = arena_alloc(c->arena, (n ? n : 1) * sizeof *names);
  const char **values = arena_alloc(c->arena, (n ? n : 1) * sizeof *values);
  if (!names || !values) return qt_err_set(c->err, QT_ENOMEM, "out of memory");
  size_t i = 0;
  const char *key;
  json_t *v;
  json_object_foreach(config, key, v) {
    if (!json_is_string(v) && !json_is_number(v) && !json_is_boolean(v))
      return qt_err_set(c->err, QT_EFORMAT, "%s:%zu: config value of \"%s\" is not a scalar",
                        c->path, c->line, key);
    names[i] = arena_strdup(c->arena, key);
    values[i] = value_text(c, v);
    if (!names[i] || !values[i]) return qt_err_set(c->err, QT_ENOMEM, "out of memory");
    i++;
  }
  r->n_values = n;
  r->names = names;
  r->values = values;
  return 0;
}

/* The fields a record cannot do without, by type. */
static int check_required(const line_ctx *c, const qt_journal_record *r) {
  const char *missing = NULL;
  switch (r->type) {
    case QT_JOURNAL_RUN_START:
      if (r->session < 0) missing = "session";
      break;
    case QT_JOURNAL_SUGGEST:
      if (r->trial < 0) missing = "trial";
      break;
    case QT_JOURNAL_TRIAL_CREATED:
      if (r->trial < 0)
        missing = "trial";
      else if (!r->model)
        missing = "model";
      break;
    case QT_JOURNAL_EPOCH_BEGIN:
      if (r->trial < 0)
        missing = "trial";
      else if (r->epoch < 0)
        missing = "epoch";
      break;
    case QT_JOURNAL_EPOCH_END:
    case QT_JOURNAL_INCUMBENT:
      if (r->trial < 0)
        missing = "trial";
      else if (r->epoch < 0)
        missing = "epoch";
      else if (isnan(r->score))
        missing = "score";
      break;
    case QT_JOURNAL_TRIAL_FAILED:
      if (r->trial < 0) missing = "trial";
      break;
    case QT_JOURNAL_RUN_END:
      if (!r->reason) missing = "reason";
      break;
  }
  if (missing)
    return qt_err_set(c->err, QT_EFORMAT, "%s:%zu: %s record without \"%s\"", c->path, c->line,
                      qt_journal_type_name(r->type), missing);
  return 0;
}

static int parse_line(const line_ctx *c, const char *text, size_t length, qt_journal_record *r) {
  json_error_t error;
  json_t *object = json_loadb(text, length, JSON_REJECT_DUPLICATES, &error);
  if (!object)
    return qt_err_set(c->err, QT_EFORMAT, "%s:%zu: not a JSON record: %s (column %d)", c->path,
                      c->line, error.text, error.column);
  int rc = 0;
  json_t *type = json_object_get(object, "type");
  if (!json_is_object(object)) {
    rc = qt_err_set(c->err, QT_EFORMAT, "%s:%zu: not a JSON object", c->path, c->line);
  } else if (!json_is_string(type)) {
    rc = qt_err_set(c->err, QT_EFORMAT, "%s:%zu: record without a \"type\"", c->path, c->line);
  } else {
    qt_journal_type t;
    if (type_parse(json_string_value(type), &t) != 0) {
      rc = qt_err_set(c->err, QT_EFORMAT, "%s:%zu: unknown record type '%s'", c->path, c->line,
                      json_string_value(type));
    } else {
      *r = qt_journal_record_init(t);
    }
  }
  if (rc == 0 && !json_object_get(object, "t"))
    rc = qt_err_set(c->err, QT_EFORMAT, "%s:%zu: %s record without \"t\"", c->path, c->line,
                    qt_journal_type_name(r->type));
  if (rc == 0) rc = get_double(c, object, "t", &r->t);
  if (rc == 0) rc = get_long(c, object, "session", &r->session);
  if (rc == 0) rc = get_string(c, object, "time", &r->time);
  if (rc == 0) rc = get_string(c, object, "hash", &r->hash);
  if (rc == 0) rc = get_long(c, object, "trial", &r->trial);
  if (rc == 0) rc = get_long(c, object, "target", &r->target);
  if (rc == 0) rc = get_long(c, object, "epoch", &r->epoch);
  if (rc == 0) rc = get_string(c, object, "model", &r->model);
  if (rc == 0) rc = get_config(c, object, r);
  if (rc == 0) rc = get_long(c, object, "seed", &r->seed);
  if (rc == 0) rc = get_string(c, object, "status", &r->status);
  if (rc == 0) rc = get_double(c, object, "score", &r->score);
  if (rc == 0) rc = get_double(c, object, "top5", &r->top5);
  if (rc == 0) rc = get_double(c, object, "train_loss", &r->train_loss);
  if (rc == 0) rc = get_double(c, object, "val_loss", &r->val_loss);
  if (rc == 0) rc = get_double(c, object, "cost_s", &r->cost_s);
  if (rc == 0) rc = get_double(c, object, "images_per_s", &r->images_per_s);
  if (rc == 0) rc = get_double(c, object, "predicted_cost_s", &r->predicted_cost_s);
  if (rc == 0) rc = get_double(c, object, "optimizer_s", &r->optimizer_s);
  if (rc == 0) rc = get_string(c, object, "reason", &r->reason);
  if (rc == 0) rc = get_double(c, object, "budget_s", &r->budget_s);
  if (rc == 0) rc = get_double(c, object, "used_s", &r->used_s);
  if (rc == 0) rc = get_double(c, object, "overshoot_s", &r->overshoot_s);
  if (rc == 0) rc = get_string(c, object, "optimizer", &r->optimizer);
  if (rc == 0) rc = get_long(c, object, "pool", &r->pool);
  if (rc == 0) rc = get_long(c, object, "max_epochs", &r->max_epochs);
  if (rc == 0) rc = get_string(c, object, "dataset", &r->dataset);
  if (rc == 0) rc = get_string(c, object, "hub", &r->hub);
  if (rc == 0) rc = get_string(c, object, "space", &r->space);
  if (rc == 0) rc = check_required(c, r);
  json_decref(object);
  return rc;
}

int qt_journal_read(const char *path, qt_journal_log *out, qt_err *err) {
  if (!path || !out) return qt_err_set(err, QT_EINVAL, "qt_journal_read: NULL argument");
  memset(out, 0, sizeof *out);
  char *text;
  size_t length;
  int rc = qt_file_read(path, &text, &length, err);
  if (rc < 0) return rc;
  size_t lines = 0;
  for (size_t i = 0; i < length; i++) lines += text[i] == '\n';
  out->records = calloc(lines ? lines : 1, sizeof *out->records);
  if (!out->records) {
    free(text);
    return qt_err_set(err, QT_ENOMEM, "out of memory");
  }
  line_ctx c = {path, 0, err, &out->arena};
  size_t start = 0;
  while (start < length && rc == 0) {
    c.line++;
    const char *line = text + start;
    const char *newline = memchr(line, '\n', length - start);
    if (!newline) {
      /* Torn: the writer was killed inside its write(). */
      out->torn = 1;
      break;
    }
    size_t n = (size_t)(newline - line);
    rc = parse_line(&c, line, n, &out->records[out->count]);
    if (rc == 0) out->count++;
    start += n + 1;
  }
  free(text);
  if (rc < 0) qt_journal_log_free(out);
  return rc;
}

void qt_journal_log_free(qt_journal_log *log) {
  if (!log) return;
  free(log->records);
  arena_free(log->arena);
  memset(log, 0, sizeof *log);
}

/* ------------------------------------------------------------------------- */
/* The lock                                                                   */
/* ------------------------------------------------------------------------- */

int qt_rundir_lock(const char *dir, int *fd_out, qt_err *err) {
  if (!dir || !fd_out) return qt_err_set(err, QT_EINVAL, "qt_rundir_lock: NULL argument");
  *fd_out = -1;
  char path[4096];
  if ((size_t)snprintf(path, sizeof path, "%s/lock", dir) >= sizeof path)
    return qt_err_set(err, QT_EINVAL, "%s: path too long", dir);
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0)
    return qt_err_set(err, errno == ENOENT ? QT_ENOENT : QT_EIO, "%s: %s", path, strerror(errno));
  while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EINTR) continue;
    int error = errno;
    int rc;
    if (error == EWOULDBLOCK) {
      char holder[32] = "";
      ssize_t n = pread(fd, holder, sizeof holder - 1, 0);
      holder[n > 0 ? n : 0] = '\0';
      long pid = 0;
      char *end = NULL;
      pid = strtol(holder, &end, 10);
      if (pid > 0 && end != holder)
        rc = qt_err_set(err, QT_EBUSY, "run directory %s is in use by process %ld", dir, pid);
      else
        rc = qt_err_set(err, QT_EBUSY, "run directory %s is in use by another process", dir);
    } else {
      rc = qt_err_set(err, QT_EIO, "%s: cannot lock: %s", path, strerror(error));
    }
    close(fd);
    return rc;
  }
  char pid[32];
  int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n) {
    int rc = qt_err_set(err, QT_EIO, "%s: cannot write the pid: %s", path, strerror(errno));
    close(fd);
    return rc;
  }
  *fd_out = fd;
  return 0;
}

void qt_rundir_unlock(int fd) {
  if (fd < 0) return;
  /* Clear the pid first, so that nobody names a finished process. */
  if (ftruncate(fd, 0) != 0) {
    /* Nothing useful to do: the lock is released by close() below. */
  }
  close(fd);
}

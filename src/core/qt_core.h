/*
 * qt_core.h - the foundation every other module of qtune builds on.
 *
 * What this module implements:
 *   - error codes from one X-macro table, qt_strerror(), and qt_err, a small
 *     caller-owned struct that carries the code plus a readable detail message
 *     (path, line:column, offending value);
 *   - logging with levels through one replaceable callback;
 *   - explicit random-number state on GSL (qt_rng_t), forked per component;
 *   - duration parsing and formatting ("90s", "45m", "4h", "1h30m", "1d",
 *     "HH:MM:SS", bare seconds);
 *   - thin wrappers over libyaml (a parsed document with line:column marks on
 *     every node), jansson (load with line:column errors) and a CSV reader
 *     (RFC 4180 quoting: quoted fields, embedded commas, doubled quotes,
 *     embedded newlines, CRLF).
 *
 * Conventions used by every qtune module:
 *   - Library functions return int: 0 on success or a negative QT_E* code.
 *     Functions that can fail take a `qt_err *err` as their last argument; it
 *     may be NULL when the caller does not want the detail. Only the CLI exits.
 *   - Objects come in init/free pairs (or load/free); free(NULL) is a no-op.
 *   - Units: seconds for durations, 1-based line and column numbers.
 *
 * Memory: every object returned through an out-pointer is owned by the caller
 * and released with the matching *_free(). Strings returned by accessors
 * (qt_yaml_scalar, qt_csv_field) are owned by their object and stay valid until
 * it is freed (CSV fields: until the next qt_csv_next call).
 */
#ifndef QT_CORE_H
#define QT_CORE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QT_VERSION_MAJOR 0
#define QT_VERSION_MINOR 1
#define QT_VERSION_PATCH 0
#define QT_VERSION_STRING "0.1.0"

#if defined(__GNUC__)
#define QT_PRINTF(fmt_index, first_arg) __attribute__((format(printf, fmt_index, first_arg)))
#else
#define QT_PRINTF(fmt_index, first_arg)
#endif

#if defined(__GNUC__)
#define QT_NORETURN __attribute__((noreturn))
#else
#define QT_NORETURN
#endif

/* ------------------------------------------------------------------------- */
/* Errors                                                                     */
/* ------------------------------------------------------------------------- */

/* X(name, value, message). Values are negative and never reused. */
#define QT_ERROR_TABLE(X)                                                        \
  X(QT_EINVAL, -1, "invalid argument")                                          \
  X(QT_ENOMEM, -2, "out of memory")                                             \
  X(QT_EIO, -3, "input/output error")                                           \
  X(QT_ENOENT, -4, "no such file or directory")                                 \
  X(QT_EPARSE, -5, "syntax error")                                              \
  X(QT_ESCHEMA, -6, "invalid content")                                          \
  X(QT_ERANGE, -7, "value out of range")                                        \
  X(QT_EFORMAT, -8, "unrecognized file format")                                 \
  X(QT_EVERSION, -9, "unsupported version")                                     \
  X(QT_ENOTIMPL, -10, "not implemented yet")                                    \
  X(QT_ENODEV, -11, "no such device")                                           \
  X(QT_ENUMERIC, -12, "numerical failure")                                      \
  X(QT_EBUSY, -13, "resource busy")                                             \
  X(QT_ENOSPC, -14, "no space left on device")                                  \
  X(QT_EEXIST, -15, "already exists")                                           \
  X(QT_EINTERRUPTED, -16, "interrupted")

typedef enum qt_error_code {
#define QT__ERROR_ENUM(name, value, message) name = (value),
  QT_ERROR_TABLE(QT__ERROR_ENUM)
#undef QT__ERROR_ENUM
  QT_OK = 0
} qt_error_code;

/* Returns the fixed sentence for a code; "unknown error" for a code that is
 * not in the table, "success" for 0. Never NULL. */
const char *qt_strerror(int code);

/* Returns the symbolic name of a code ("QT_EPARSE"), or "QT_UNKNOWN". */
const char *qt_strerror_name(int code);

/* The detail of one failure, owned by the caller (usually on its stack). */
typedef struct qt_err {
  int code;       /* 0 or a QT_E* code */
  char msg[1024]; /* "path:line:col: what went wrong" or similar; "" when none */
} qt_err;

/* Clears err (code 0, empty message). err may be NULL. */
void qt_err_clear(qt_err *err);

/* Records code and a printf-style message in err (err may be NULL) and
 * returns code, so that `return qt_err_set(err, QT_EINVAL, "...")` reads well. */
int qt_err_set(qt_err *err, int code, const char *fmt, ...) QT_PRINTF(3, 4);
int qt_err_setv(qt_err *err, int code, const char *fmt, va_list ap) QT_PRINTF(3, 0);

/* Prefixes the existing message with more context: fmt gives the context
 * and ": " joins it to the message ("loading hub" -> "loading hub: msg"; an
 * empty message stands for qt_strerror(err->code)). err->code is kept, or
 * set to code when it was 0. Returns err->code (or code when err is NULL). */
int qt_err_prefix(qt_err *err, int code, const char *fmt, ...) QT_PRINTF(3, 4);

/* The message when set, else qt_strerror(err->code). */
const char *qt_err_message(const qt_err *err);

/* ------------------------------------------------------------------------- */
/* Logging                                                                    */
/* ------------------------------------------------------------------------- */

typedef enum qt_log_level {
  QT_LOG_LEVEL_DEBUG = 0,
  QT_LOG_LEVEL_INFO = 1,
  QT_LOG_LEVEL_WARN = 2,
  QT_LOG_LEVEL_ERROR = 3,
  QT_LOG_LEVEL_SILENT = 4
} qt_log_level;

typedef void (*qt_log_callback)(qt_log_level level, const char *message, void *user);

/* Logging is process-wide: one callback and one threshold. The default
 * callback writes "qtune: warning: ..." lines to stderr; messages below the
 * threshold (default INFO) are dropped before formatting. */
void qt_log_set_callback(qt_log_callback callback, void *user);
void qt_log_set_level(qt_log_level level);
qt_log_level qt_log_get_level(void);
/* Parses "debug", "info", "warn", "error", "silent". */
int qt_log_level_parse(const char *text, qt_log_level *out, qt_err *err);
void qt_log(qt_log_level level, const char *fmt, ...) QT_PRINTF(2, 3);

#define QT_LOG_DEBUG(...) qt_log(QT_LOG_LEVEL_DEBUG, __VA_ARGS__)
#define QT_LOG_INFO(...) qt_log(QT_LOG_LEVEL_INFO, __VA_ARGS__)
#define QT_LOG_WARN(...) qt_log(QT_LOG_LEVEL_WARN, __VA_ARGS__)
#define QT_LOG_ERROR(...) qt_log(QT_LOG_LEVEL_ERROR, __VA_ARGS__)

/* For impossible states only, never for bad input (see STYLE.md). */
#define QT_ASSERT(cond)                                                          \
  do {                                                                         \
    if (!(cond)) qt__assert_fail(#cond, __FILE__, __LINE__);                   \
  } while (0)
void qt__assert_fail(const char *cond, const char *file, int line) QT_NORETURN;

/* ------------------------------------------------------------------------- */
/* Random numbers                                                             */
/* ------------------------------------------------------------------------- */

/* An explicit random stream (GSL's MT19937). There is no global generator:
 * components receive their own stream, forked from a parent with a label, so
 * adding draws in one component never shifts the numbers of another. */
typedef struct qt_rng qt_rng_t;

int qt_rng_init(qt_rng_t **out, uint64_t seed, qt_err *err);
void qt_rng_free(qt_rng_t *rng);
/* A new stream whose seed is a hash of the parent's seed and `stream`; does
 * not advance the parent, so forks are stable under reordering. */
int qt_rng_fork(const qt_rng_t *parent, uint64_t stream, qt_rng_t **out, qt_err *err);
uint64_t qt_rng_seed(const qt_rng_t *rng);
double qt_rng_uniform(qt_rng_t *rng);                  /* [0, 1) */
double qt_rng_uniform_pos(qt_rng_t *rng);              /* (0, 1) */
uint64_t qt_rng_uniform_int(qt_rng_t *rng, uint64_t n); /* {0..n-1}, n >= 1 (asserted) */
double qt_rng_gaussian(qt_rng_t *rng, double sigma);   /* N(0, sigma^2) */
/* The underlying gsl_rng, for GSL routines that take one (opaque here). */
void *qt_rng_gsl(qt_rng_t *rng);

/* ------------------------------------------------------------------------- */
/* Durations                                                                  */
/* ------------------------------------------------------------------------- */

/* Parses a duration into seconds. Accepted forms:
 *   bare seconds            "90", "2.5"
 *   unit sequences          "90s", "45m", "4h", "1d", "1h30m", "1d2h3m4s", "1.5h"
 *                           (units d, h, m, s, each at most once, in that order)
 *   clock                   "HH:MM:SS" or "MM:SS" (minutes/seconds < 60 after
 *                           the leading field)
 * Surrounding whitespace is ignored. Empty strings, negative values, unknown
 * units, repeated or out-of-order units, NaN/inf and overflow are QT_EPARSE
 * with a message that quotes the input. */
int qt_duration_parse(const char *text, double *seconds, qt_err *err);

/* Writes a compact human form ("1h30m", "45m", "12.3s", "2d4h") into buf. */
void qt_duration_format(double seconds, char *buf, size_t size);

/* Monotonic clock in seconds, for measuring elapsed time. */
double qt_time_now(void);

/* ------------------------------------------------------------------------- */
/* YAML (libyaml document API)                                                */
/* ------------------------------------------------------------------------- */

/* A parsed YAML document. Nodes are addressed by a small integer handle
 * (qt_yaml_node); 0 means "no node". Every node keeps its 1-based line and
 * column so that validation errors can point at the offending text. */
typedef struct qt_yaml_doc qt_yaml_doc_t;
typedef int qt_yaml_node;

typedef enum qt_yaml_kind {
  QT_YAML_KIND_NONE = 0,
  QT_YAML_KIND_SCALAR,
  QT_YAML_KIND_SEQUENCE,
  QT_YAML_KIND_MAPPING
} qt_yaml_kind;

/* Syntax errors are QT_EPARSE with "name:line:column: problem (context)".
 * An empty document, or a second document in the stream, is QT_ESCHEMA.
 * A file that cannot be read is QT_ENOENT or QT_EIO (see qt_file_read).
 * `name` is used in messages only. */
int qt_yaml_load_file(const char *path, qt_yaml_doc_t **out, qt_err *err);
int qt_yaml_load_string(const char *text, size_t length, const char *name,
                        qt_yaml_doc_t **out, qt_err *err);
void qt_yaml_free(qt_yaml_doc_t *doc);

const char *qt_yaml_name(const qt_yaml_doc_t *doc);
qt_yaml_node qt_yaml_root(const qt_yaml_doc_t *doc);
qt_yaml_kind qt_yaml_kind_of(const qt_yaml_doc_t *doc, qt_yaml_node node);
/* The scalar text, or NULL when node is not a scalar. */
const char *qt_yaml_scalar(const qt_yaml_doc_t *doc, qt_yaml_node node);
/* 1 when the scalar was quoted ('x' or "x"): quoted scalars are strings. */
int qt_yaml_scalar_is_quoted(const qt_yaml_doc_t *doc, qt_yaml_node node);
/* Number of items of a sequence or pairs of a mapping (0 otherwise). */
size_t qt_yaml_length(const qt_yaml_doc_t *doc, qt_yaml_node node);
qt_yaml_node qt_yaml_item(const qt_yaml_doc_t *doc, qt_yaml_node seq, size_t index);
qt_yaml_node qt_yaml_pair_key(const qt_yaml_doc_t *doc, qt_yaml_node map, size_t index);
qt_yaml_node qt_yaml_pair_value(const qt_yaml_doc_t *doc, qt_yaml_node map, size_t index);
/* Value of the first pair whose key is the scalar `key`, or 0. */
qt_yaml_node qt_yaml_get(const qt_yaml_doc_t *doc, qt_yaml_node map, const char *key);
/* 1-based position of the node's first character. */
void qt_yaml_mark(const qt_yaml_doc_t *doc, qt_yaml_node node, int *line, int *column);

/* Records "name:line:col: <message>" for node in err and returns code. */
int qt_yaml_error(qt_err *err, int code, const qt_yaml_doc_t *doc, qt_yaml_node node,
                  const char *fmt, ...) QT_PRINTF(5, 6);

/* Typed scalar reads; a node of the wrong kind or text that does not parse
 * fully is QT_ESCHEMA at the node's line:column. Booleans accept
 * true/false/yes/no/on/off (any case); null accepts null, ~ and "". */
int qt_yaml_to_double(const qt_yaml_doc_t *doc, qt_yaml_node node, double *out, qt_err *err);
int qt_yaml_to_int(const qt_yaml_doc_t *doc, qt_yaml_node node, long *out, qt_err *err);
int qt_yaml_to_bool(const qt_yaml_doc_t *doc, qt_yaml_node node, int *out, qt_err *err);
int qt_yaml_is_null(const qt_yaml_doc_t *doc, qt_yaml_node node);
/* Checks that every key of `map` is one of the NULL-terminated `allowed`;
 * an unknown or duplicated key is QT_ESCHEMA at that key, naming the allowed
 * ones. A node that is not a mapping is QT_ESCHEMA too. allowed == NULL
 * checks only for duplicates. */
int qt_yaml_check_keys(const qt_yaml_doc_t *doc, qt_yaml_node map, const char *const *allowed,
                       qt_err *err);

/* ------------------------------------------------------------------------- */
/* JSON (jansson)                                                             */
/* ------------------------------------------------------------------------- */

/* Loads a JSON file; syntax errors are QT_EPARSE "path:line:column: text".
 * The caller releases the result with json_decref(). */
int qt_json_load_file(const char *path, json_t **out, qt_err *err);
int qt_json_load_string(const char *text, size_t length, const char *name, json_t **out,
                        qt_err *err);

/* ------------------------------------------------------------------------- */
/* CSV                                                                        */
/* ------------------------------------------------------------------------- */

/* A CSV reader over a whole file read into memory (fast for large files).
 * Fields follow RFC 4180: a field in double quotes may contain commas,
 * newlines and doubled quotes (""). Both LF and CRLF line ends are accepted.
 * An unterminated quote, or text after a closing quote, is QT_EPARSE naming
 * path:line:column. Empty lines are skipped. */
typedef struct qt_csv qt_csv_t;

int qt_csv_open(const char *path, qt_csv_t **out, qt_err *err);
int qt_csv_open_string(const char *text, size_t length, const char *name, qt_csv_t **out,
                       qt_err *err);
void qt_csv_free(qt_csv_t *csv);
/* Reads the next record. Returns 1 when a record was read, 0 at end of input,
 * or a negative code. */
int qt_csv_next(qt_csv_t *csv, qt_err *err);
size_t qt_csv_field_count(const qt_csv_t *csv);
/* Field i of the current record (unquoted, NUL-terminated), or NULL when
 * i >= qt_csv_field_count. */
const char *qt_csv_field(const qt_csv_t *csv, size_t index);
/* 1-based line on which the current record starts. */
int qt_csv_line(const qt_csv_t *csv);
const char *qt_csv_name(const qt_csv_t *csv);

/* ------------------------------------------------------------------------- */
/* Small string and file helpers                                              */
/* ------------------------------------------------------------------------- */

/* Reads a whole file; *data is NUL-terminated and owned by the caller (free()).
 * A missing path is QT_ENOENT, any other failure to open or read QT_EIO, both
 * with "path: strerror(errno)". length may be NULL. */
int qt_file_read(const char *path, char **data, size_t *length, qt_err *err);
/* Strict number parsing of a whole string (leading/trailing spaces allowed):
 * decimal only, no hexadecimal, inf or nan. Returns 0 or QT_EPARSE
 * (qt_parse_long: QT_ERANGE when the integer does not fit a long). */
int qt_parse_double(const char *text, double *out);
int qt_parse_long(const char *text, long *out);
/* Creates a directory and its missing parents (mode 0777 before umask); an
 * existing directory is fine. QT_EIO with "path: strerror" otherwise. */
int qt_mkdir_p(const char *path, qt_err *err);
/* rm -r: removes path and, for a directory, everything below it (links are
 * removed, not followed). Best effort: what cannot be removed stays. */
void qt_remove_tree(const char *path);
/* Writes value with the fewest of 15, 16 or 17 significant digits that
 * read back as the same double (%.*g); "" for NaN and infinities. */
void qt_format_double(double value, char *buf, size_t size);
/* Writes one CSV field (RFC 4180): as is, or quoted with doubled quotes
 * when it holds a comma, a quote or a line end. */
void qt_csv_write_field(FILE *file, const char *text);

#ifdef __cplusplus
}
#endif

#endif /* QT_CORE_H */

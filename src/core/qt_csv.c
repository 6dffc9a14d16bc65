/*
 * qt_csv.c - an RFC 4180 CSV reader that parses in place.
 *
 * The whole input lives in one buffer owned by the reader. Records are split
 * inside that buffer: each field is NUL-terminated where its delimiter was,
 * and quoted fields are unquoted by sliding their text left over the quotes.
 * The field pointers of the current record live in one growable array reused
 * for every record, so reading a million rows allocates nothing per row.
 *
 * Leniency, where RFC 4180 leaves room: a quote in the middle of an unquoted
 * field is kept as text (a"b stays a"b), a bare CR ends a line like LF or
 * CRLF, and a UTF-8 byte-order mark at the start is skipped. Columns in
 * messages count bytes from 1.
 */
#include "core/qt_core.h"

#include <stdlib.h>
#include <string.h>

struct qt_csv {
  char *name;        /* path or caller-given name, for messages */
  char *data;        /* (length + 1) bytes: the input, split in place; data[length] = '\0' */
  size_t length;     /* bytes of input */
  size_t position;   /* offset of the first byte not yet read */
  int line;          /* 1-based line of data[position] */
  size_t line_start; /* offset of the first byte of that line, for columns */

  int record_line; /* line on which the current record starts */
  char **fields;   /* (capacity) pointers into data; the first count are the record */
  size_t count;
  size_t capacity;

  /* The reader stops at the first error, and every later qt_csv_next returns
   * the same error rather than resynchronising on a guess. */
  qt_err failure;
};

/* ------------------------------------------------------------------------- */
/* Opening                                                                    */
/* ------------------------------------------------------------------------- */

/* Takes ownership of data (length + 1 bytes, NUL-terminated) in every case. */
static int csv_create(char *data, size_t length, const char *name, qt_csv_t **out, qt_err *err) {
  qt_csv_t *csv = calloc(1, sizeof *csv);
  char *name_copy = strdup(name);
  char **fields = malloc(16 * sizeof *fields);
  if (!csv || !name_copy || !fields) {
    free(csv);
    free(name_copy);
    free(fields);
    free(data);
    return qt_err_set(err, QT_ENOMEM, "%s: out of memory", name);
  }
  csv->name = name_copy;
  csv->data = data;
  csv->length = length;
  csv->line = 1;
  csv->fields = fields;
  csv->capacity = 16;

  /* Spreadsheet programs often start UTF-8 files with a byte-order mark;
   * left in place it would become part of the first column's name. */
  if (length >= 3 && memcmp(data, "\xEF\xBB\xBF", 3) == 0) {
    csv->position = 3;
    csv->line_start = 3;
  }
  *out = csv;
  return 0;
}

int qt_csv_open_string(const char *text, size_t length, const char *name, qt_csv_t **out,
                       qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_csv_open_string: out is NULL");
  *out = NULL;
  if (!name) name = "<string>";
  if (!text && length > 0) return qt_err_set(err, QT_EINVAL, "%s: text is NULL", name);
  char *data = malloc(length + 1);
  if (!data) return qt_err_set(err, QT_ENOMEM, "%s: out of memory", name);
  if (length) memcpy(data, text, length);
  data[length] = '\0';
  return csv_create(data, length, name, out, err);
}

int qt_csv_open(const char *path, qt_csv_t **out, qt_err *err) {
  if (!out || !path) return qt_err_set(err, QT_EINVAL, "qt_csv_open: NULL argument");
  *out = NULL;
  char *data;
  size_t length;
  int status = qt_file_read(path, &data, &length, err);
  if (status < 0) return status;
  return csv_create(data, length, path, out, err);
}

void qt_csv_free(qt_csv_t *csv) {
  if (!csv) return;
  free(csv->name);
  free(csv->data);
  free(csv->fields);
  free(csv);
}

/* ------------------------------------------------------------------------- */
/* Reading records                                                            */
/* ------------------------------------------------------------------------- */

/* Records "name:line:col: message" at offset p, makes it sticky, returns it. */
static int csv_fail(qt_csv_t *csv, int line, const char *p, const char *message, qt_err *err) {
  int column = (int)((size_t)(p - csv->data) - csv->line_start) + 1;
  qt_err_set(&csv->failure, QT_EPARSE, "%s:%d:%d: %s", csv->name, line, column, message);
  csv->count = 0;
  if (err) *err = csv->failure;
  return QT_EPARSE;
}

/* Makes room for one more field pointer. */
static int csv_reserve_field(qt_csv_t *csv, qt_err *err) {
  if (csv->count < csv->capacity) return 0;
  char **grown = realloc(csv->fields, 2 * csv->capacity * sizeof *grown);
  if (!grown) {
    qt_err_set(&csv->failure, QT_ENOMEM, "%s:%d: out of memory for %zu fields", csv->name,
               csv->record_line, 2 * csv->capacity);
    if (err) *err = csv->failure;
    return QT_ENOMEM;
  }
  csv->fields = grown;
  csv->capacity *= 2;
  return 0;
}

static int is_field_end(char c) {
  return c == ',' || c == '\n' || c == '\r';
}

int qt_csv_next(qt_csv_t *csv, qt_err *err) {
  if (csv->failure.code < 0) {
    if (err) *err = csv->failure;
    return csv->failure.code;
  }
  char *p = csv->data + csv->position;
  char *end = csv->data + csv->length;
  csv->count = 0;

  /* Empty lines carry no record. */
  while (p < end && (*p == '\n' || *p == '\r')) {
    if (*p == '\r' && p + 1 < end && p[1] == '\n') p++;
    p++;
    csv->line++;
    csv->line_start = (size_t)(p - csv->data);
  }
  if (p >= end) {
    csv->position = csv->length;
    return 0;
  }

  csv->record_line = csv->line;
  for (;;) {
    int status = csv_reserve_field(csv, err);
    if (status < 0) return status;

    if (*p == '"') {
      /* Quoted field: copy left over the quotes, turning "" into ". The
       * write cursor never passes the read cursor, so this is safe in place. */
      const char *opening = p;
      int opening_line = csv->line;
      size_t opening_line_start = csv->line_start;
      char *write = ++p;
      csv->fields[csv->count++] = write;
      for (;;) {
        if (p >= end) {
          csv->line = opening_line;
          csv->line_start = opening_line_start;
          return csv_fail(csv, opening_line, opening, "unterminated quoted field", err);
        }
        char c = *p;
        if (c == '"') {
          if (p + 1 < end && p[1] == '"') {
            *write++ = '"';
            p += 2;
            continue;
          }
          p++;
          break;
        }
        if (c == '\n') {
          csv->line++;
          csv->line_start = (size_t)(p + 1 - csv->data);
        }
        *write++ = c;
        p++;
      }
      *write = '\0';
      if (p < end && !is_field_end(*p)) {
        return csv_fail(csv, csv->line, p,
                        "unexpected text after a closing quote (a quote inside a quoted "
                        "field must be doubled)",
                        err);
      }
    } else {
      csv->fields[csv->count++] = p;
      while (p < end && !is_field_end(*p)) p++;
    }

    /* p is at a delimiter, a line end, or the end of the input (where
     * data[length] is already the terminating NUL). */
    if (p >= end) break;
    char delimiter = *p;
    *p++ = '\0';
    if (delimiter == ',') continue;
    if (delimiter == '\r' && p < end && *p == '\n') p++;
    csv->line++;
    csv->line_start = (size_t)(p - csv->data);
    break;
  }
  csv->position = (size_t)(p - csv->data);
  return 1;
}

/* ------------------------------------------------------------------------- */
/* Accessors                                                                  */
/* ------------------------------------------------------------------------- */

size_t qt_csv_field_count(const qt_csv_t *csv) {
  return csv->count;
}

const char *qt_csv_field(const qt_csv_t *csv, size_t index) {
  return index < csv->count ? csv->fields[index] : NULL;
}

int qt_csv_line(const qt_csv_t *csv) {
  return csv->record_line;
}

const char *qt_csv_name(const qt_csv_t *csv) {
  return csv->name;
}

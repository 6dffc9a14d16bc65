/*
 * qt_json.c - loading JSON with jansson, errors as name:line:column.
 *
 * Duplicate object keys are rejected (JSON_REJECT_DUPLICATES): a file that
 * says the same thing twice is a mistake whichever value would win. The top
 * level must be an object or an array, jansson's default.
 */
#include "core/qt_core.h"

#include <stdlib.h>

int qt_json_load_string(const char *text, size_t length, const char *name, json_t **out,
                        qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_json_load_string: out is NULL");
  *out = NULL;
  if (!name) name = "<string>";
  if (!text && length > 0) return qt_err_set(err, QT_EINVAL, "%s: text is NULL", name);

  json_error_t error;
  json_t *root = json_loadb(text ? text : "", length, JSON_REJECT_DUPLICATES, &error);
  if (!root) {
    /* jansson reports line -1 for errors that have no position (memory). */
    if (error.line < 1) return qt_err_set(err, QT_EPARSE, "%s: %s", name, error.text);
    /* jansson's column is that of the last character it read, 0 when it
     * read none on that line (an empty file); columns here start at 1. */
    int column = error.column < 1 ? 1 : error.column;
    return qt_err_set(err, QT_EPARSE, "%s:%d:%d: %s", name, error.line, column, error.text);
  }
  *out = root;
  return 0;
}

int qt_json_load_file(const char *path, json_t **out, qt_err *err) {
  if (!out || !path) return qt_err_set(err, QT_EINVAL, "qt_json_load_file: NULL argument");
  *out = NULL;
  /* qt_file_read rather than json_load_file: open errors then carry the
   * same codes (QT_ENOENT, QT_EIO) and wording as every other loader. */
  char *text;
  size_t length;
  int status = qt_file_read(path, &text, &length, err);
  if (status < 0) return status;
  status = qt_json_load_string(text, length, path, out, err);
  free(text);
  return status;
}

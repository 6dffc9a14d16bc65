/*
 * qt_error.c - the error table, qt_strerror() and the qt_err detail struct.
 *
 * Every message and name comes from QT_ERROR_TABLE in qt_core.h, so adding a
 * code there is the only change needed to make it printable.
 */
#include "core/qt_core.h"

#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------------------- */
/* Code to text                                                               */
/* ------------------------------------------------------------------------- */

const char *qt_strerror(int code) {
  switch (code) {
#define QT__ERROR_MESSAGE(name, value, message) \
  case value:                                   \
    return message;
    QT_ERROR_TABLE(QT__ERROR_MESSAGE)
#undef QT__ERROR_MESSAGE
    case 0:
      return "success";
    default:
      return "unknown error";
  }
}

const char *qt_strerror_name(int code) {
  switch (code) {
#define QT__ERROR_NAME(name, value, message) \
  case value:                                \
    return #name;
    QT_ERROR_TABLE(QT__ERROR_NAME)
#undef QT__ERROR_NAME
    case 0:
      return "QT_OK";
    default:
      return "QT_UNKNOWN";
  }
}

/* ------------------------------------------------------------------------- */
/* The detail struct                                                          */
/* ------------------------------------------------------------------------- */

void qt_err_clear(qt_err *err) {
  if (!err) return;
  err->code = 0;
  err->msg[0] = '\0';
}

int qt_err_setv(qt_err *err, int code, const char *fmt, va_list ap) {
  if (!err) return code;
  err->code = code;
  /* A message longer than the buffer is cut rather than lost: the start
   * (path and position) is the part a reader needs most. */
  vsnprintf(err->msg, sizeof err->msg, fmt, ap);
  return code;
}

int qt_err_set(qt_err *err, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  qt_err_setv(err, code, fmt, ap);
  va_end(ap);
  return code;
}

int qt_err_prefix(qt_err *err, int code, const char *fmt, ...) {
  if (!err) return code;
  /* The callee usually set the code already; `code` fills it in when it did
   * not, so that a prefixed error is never mistaken for success. */
  if (err->code == 0) err->code = code;

  char context[sizeof err->msg];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(context, sizeof context, fmt, ap);
  va_end(ap);

  /* The existing message is copied first because context and message are
   * joined into err->msg itself. An empty message stands for the code's
   * sentence, which keeps "context: what went wrong" readable. */
  char existing[sizeof err->msg];
  snprintf(existing, sizeof existing, "%s", err->msg[0] ? err->msg : qt_strerror(err->code));
  return qt_err_set(err, err->code, "%s: %s", context, existing);
}

const char *qt_err_message(const qt_err *err) {
  if (!err) return qt_strerror(0);
  return err->msg[0] ? err->msg : qt_strerror(err->code);
}

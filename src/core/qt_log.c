/*
 * qt_log.c - leveled logging through one replaceable callback.
 *
 * The logger is the one piece of process-wide state in qtune (STYLE.md rule
 * 4): a program has one place its messages go. The setters are meant to be
 * called at startup, before threads exist; qt_log itself only reads the
 * state and may be called from any thread.
 */
#include "core/qt_core.h"

#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

static void default_callback(qt_log_level level, const char *message, void *user);

static qt_log_callback log_callback = default_callback;
static void *log_user = NULL;
static qt_log_level log_threshold = QT_LOG_LEVEL_INFO;

/* ------------------------------------------------------------------------- */
/* Settings                                                                   */
/* ------------------------------------------------------------------------- */

static const char *level_word(qt_log_level level) {
  switch (level) {
    case QT_LOG_LEVEL_DEBUG:
      return "debug";
    case QT_LOG_LEVEL_INFO:
      return "info";
    case QT_LOG_LEVEL_WARN:
      return "warning";
    case QT_LOG_LEVEL_ERROR:
      return "error";
    default:
      return "log";
  }
}

static void default_callback(qt_log_level level, const char *message, void *user) {
  fprintf(stderr, "qtune: %s: %s\n", level_word(level), message);
}

void qt_log_set_callback(qt_log_callback callback, void *user) {
  log_callback = callback ? callback : default_callback;
  log_user = callback ? user : NULL;
}

void qt_log_set_level(qt_log_level level) {
  log_threshold = level;
}

qt_log_level qt_log_get_level(void) {
  return log_threshold;
}

int qt_log_level_parse(const char *text, qt_log_level *out, qt_err *err) {
  static const struct {
    const char *word;
    qt_log_level level;
  } words[] = {
      {"debug", QT_LOG_LEVEL_DEBUG}, {"info", QT_LOG_LEVEL_INFO},
      {"warn", QT_LOG_LEVEL_WARN},   {"warning", QT_LOG_LEVEL_WARN},
      {"error", QT_LOG_LEVEL_ERROR}, {"silent", QT_LOG_LEVEL_SILENT},
  };
  for (size_t i = 0; text && i < sizeof words / sizeof words[0]; i++) {
    if (strcasecmp(text, words[i].word) == 0) {
      if (out) *out = words[i].level;
      return 0;
    }
  }
  return qt_err_set(err, QT_EINVAL,
                    "unknown log level \"%s\" (expected debug, info, warn, error or silent)",
                    text ? text : "(null)");
}

/* ------------------------------------------------------------------------- */
/* Emitting                                                                   */
/* ------------------------------------------------------------------------- */

void qt_log(qt_log_level level, const char *fmt, ...) {
  /* SILENT is a threshold, not a level a message can have. */
  if (level < log_threshold || level >= QT_LOG_LEVEL_SILENT) return;

  char stack_buffer[1024];
  va_list ap;
  va_start(ap, fmt);
  va_list measure;
  va_copy(measure, ap);
  int needed = vsnprintf(stack_buffer, sizeof stack_buffer, fmt, measure);
  va_end(measure);

  /* Long messages (a list of a thousand trials, say) get a heap buffer
   * rather than being cut; if even that fails, the cut one is still sent. */
  char *message = stack_buffer;
  if (needed >= (int)sizeof stack_buffer) {
    char *heap_buffer = malloc((size_t)needed + 1);
    if (heap_buffer) {
      vsnprintf(heap_buffer, (size_t)needed + 1, fmt, ap);
      message = heap_buffer;
    }
  } else if (needed < 0) {
    stack_buffer[0] = '\0';
  }
  va_end(ap);

  log_callback(level, message, log_user);
  if (message != stack_buffer) free(message);
}

void qt__assert_fail(const char *cond, const char *file, int line) {
  fprintf(stderr, "qtune: %s:%d: internal error: assertion `%s' failed\n", file, line, cond);
  fflush(stderr);
  abort();
}

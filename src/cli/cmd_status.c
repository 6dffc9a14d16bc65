/*
 * cmd_status.c - `qtune status RUN_DIR [--format table|json|yaml]
 * [--watch S]`: the state of a search from its journal.
 *
 * It reads run_dir/journal.jsonl and nothing else, and never takes the run
 * directory's lock, so it is safe while a search writes: the writer appends
 * whole lines with one write() each, and a line caught half-written is the
 * torn last line every reader skips.
 *
 * --watch S reprints every S seconds until the run_end of the last session
 * is in the journal (on a terminal the screen is cleared first, ANSI);
 * Ctrl-C ends it early.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bo/qt_bo.h"
#include "cli/qt_cli.h"

static void sleep_seconds(double seconds) {
  struct timespec ts;
  ts.tv_sec = (time_t)floor(seconds);
  ts.tv_nsec = (long)((seconds - floor(seconds)) * 1e9);
  while (nanosleep(&ts, &ts) != 0) {
    /* Interrupted by a signal that did not end us: sleep the rest. */
  }
}

int qt_cli_status(const qt_cli_args *args) {
  const char *run_dir = args->positional[0];
  const char *format = qt_cli_get(args, "format");
  if (!format) format = "table";
  if (strcmp(format, "table") != 0 && strcmp(format, "json") != 0 && strcmp(format, "yaml") != 0)
    return qt_cli_usage_error(args->command, "--format: '%s' is not table, json or yaml", format);
  const char *watch_text = qt_cli_get(args, "watch");
  double watch = 0;
  if (watch_text && (qt_parse_double(watch_text, &watch) != 0 || !(watch > 0) || watch > 86400))
    return qt_cli_usage_error(args->command,
                              "--watch: '%s' is not a number of seconds in (0, 86400]", watch_text);
  char journal[4096];
  if ((size_t)snprintf(journal, sizeof journal, "%s/journal.jsonl", run_dir) >= sizeof journal)
    return qt_cli_usage_error(args->command, "RUN_DIR is too long");
  int terminal = isatty(STDOUT_FILENO);
  for (;;) {
    qt_search_summary_t *summary = NULL;
    qt_err err;
    qt_err_clear(&err);
    int rc = qt_search_summary_load(journal, &summary, &err);
    if (rc == QT_ENOENT)
      qt_err_prefix(&err, rc, "%s is not a run directory (no journal.jsonl)", run_dir);
    if (rc < 0) return qt_cli_fail(args->command, &err);
    if (watch_text && terminal) fputs("\033[H\033[2J", stdout);
    rc = qt_search_summary_print(summary, format, 0, stdout, &err);
    int ended = qt_search_summary_run_end(summary) != NULL;
    qt_search_summary_free(summary);
    if (rc < 0) return qt_cli_fail(args->command, &err);
    fflush(stdout);
    if (!watch_text || ended) return QT_CLI_EXIT_OK;
    if (!terminal) fputc('\n', stdout);
    sleep_seconds(watch);
  }
}

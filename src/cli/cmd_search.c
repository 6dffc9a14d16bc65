/*
 * cmd_search.c - `qtune search`: flag parsing, Ctrl-C and progress around
 * qt_search_run (src/bo/qt_search.c holds the logic).
 *
 * Progress: when stdout is not a terminal, one grep-friendly line per ended
 * or failed epoch, e.g.
 *   epoch trial=3 model=vit_s epoch=2 score=0.8123 best=0.8400 cost=1.23s clock=0:01:23/0:05:00
 *   failed trial=5 model=vit_s epoch=1 status=diverged reason="..."
 * On a terminal the table of qt_search_summary_print is redrawn (at most
 * twice a second). The final line says why the search ended, the budget,
 * the time used and the overshoot, the trials and epochs and the best one.
 *
 * Ctrl-C: the first SIGINT asks the search to stop at a clean point (the
 * epoch in progress is abandoned, run_end "interrupted" is journaled, the
 * run directory stays resumable); a second one kills the process.
 *
 * Exit codes: 0 the search ended (budget, done, limits, target), 1 usage,
 * 3 failure, 130 interrupted by Ctrl-C.
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bo/qt_bo.h"
#include "cli/qt_cli.h"

#define DEFAULT_HUB "configs/hubs/default.yaml"
/* Meta-trained on the default hub's meta-dataset; used when it fits. */
#define DEFAULT_SURROGATE "meta-dataset/surrogate.qts"
#define EXIT_INTERRUPTED 130

static volatile sig_atomic_t interrupted = 0;

static void on_sigint(int sig) {
  (void)sig;
  interrupted = 1;
  /* A second Ctrl-C takes the default action. */
  signal(SIGINT, SIG_DFL);
}

static int should_stop(void *user) {
  (void)user;
  return interrupted != 0;
}

/* "1:02:03" */
static void format_clock(double seconds, char *buf, size_t size) {
  if (!isfinite(seconds) || seconds < 0) seconds = 0;
  long s = (long)floor(seconds + 0.5);
  snprintf(buf, size, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
}

typedef struct progress {
  int tty;
  double last_draw;
} progress;

static const qt_search_trial_info *find_trial(const qt_search_summary_t *summary, long trial) {
  size_t n = qt_search_summary_trial_count(summary);
  for (size_t i = 0; i < n; i++) {
    const qt_search_trial_info *t = qt_search_summary_trial_at(summary, i);
    if (t->trial == trial) return t;
  }
  return NULL;
}

static void on_record(const qt_journal_record *r, const qt_search_summary_t *summary, void *user) {
  progress *p = user;
  if (p->tty) {
    double now = qt_time_now();
    if (r->type != QT_JOURNAL_RUN_END && now - p->last_draw < 0.5) return;
    if (r->type != QT_JOURNAL_EPOCH_END && r->type != QT_JOURNAL_TRIAL_FAILED &&
        r->type != QT_JOURNAL_RUN_END && r->type != QT_JOURNAL_EPOCH_BEGIN)
      return;
    p->last_draw = now;
    qt_err err;
    fputs("\033[H\033[2J", stdout);
    if (qt_search_summary_print(summary, "table", 20, stdout, &err) < 0)
      fprintf(stdout, "(progress: %s)\n", qt_err_message(&err));
    fflush(stdout);
    return;
  }
  if (r->type != QT_JOURNAL_EPOCH_END && r->type != QT_JOURNAL_TRIAL_FAILED) return;
  const qt_search_trial_info *t = find_trial(summary, r->trial);
  const char *model = t && t->model ? t->model : "?";
  if (r->type == QT_JOURNAL_TRIAL_FAILED) {
    printf("failed trial=%ld model=%s epoch=%ld status=%s reason=\"%s\"\n", r->trial, model,
           r->epoch, r->status ? r->status : "failed", r->reason ? r->reason : "");
    fflush(stdout);
    return;
  }
  long bt, be;
  double best = NAN;
  qt_search_summary_incumbent(summary, &bt, &be, &best);
  const qt_journal_record *start = qt_search_summary_run_start(summary);
  char clock[32], budget[32];
  format_clock(r->t, clock, sizeof clock);
  format_clock(start ? start->budget_s : NAN, budget, sizeof budget);
  printf("epoch trial=%ld model=%s epoch=%ld score=%.4f best=%.4f cost=%.2fs clock=%s/%s\n",
         r->trial, model, r->epoch, r->score, best, r->cost_s, clock, budget);
  fflush(stdout);
}

/* "2G", "500M", "64k", "1.5G", "1000" (bytes, powers of 1024). */
static int parse_size(const char *text, size_t *out) {
  char *end = NULL;
  double v = strtod(text, &end);
  if (end == text || !(v >= 0) || !isfinite(v)) return -1;
  double scale = 1.0;
  if (*end) {
    switch (*end) {
      case 'k': case 'K': scale = 1024.0; break;
      case 'm': case 'M': scale = 1024.0 * 1024.0; break;
      case 'g': case 'G': scale = 1024.0 * 1024.0 * 1024.0; break;
      case 't': case 'T': scale = 1024.0 * 1024.0 * 1024.0 * 1024.0; break;
      default: return -1;
    }
    end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end) return -1;
  }
  double bytes = v * scale;
  if (bytes > 1e18) return -1;
  *out = (size_t)bytes;
  return 0;
}

static int parse_count(const char *text, long *out) {
  char *end = NULL;
  long v = strtol(text, &end, 10);
  if (end == text || *end || v < 0) return -1;
  *out = v;
  return 0;
}

int qt_cli_search(const qt_cli_args *args) {
  const qt_cli_command *cmd = args->command;
  qt_search_params p = qt_search_default_params();
  p.data = qt_cli_get(args, "data");
  p.hub = qt_cli_get(args, "hub");
  p.space = qt_cli_get(args, "space");
  p.optimizer = qt_cli_get(args, "optimizer");
  p.surrogate = qt_cli_get(args, "surrogate");
  if (!p.surrogate)
    p.default_surrogate = DEFAULT_SURROGATE;
  else if (strcmp(p.surrogate, "none") == 0)
    p.surrogate = NULL;
  if (!p.hub) p.hub = DEFAULT_HUB;
  if (!p.data) return qt_cli_usage_error(cmd, "--data DIR is required");
  qt_err err;
  qt_err_clear(&err);

  const char *text;
  if ((text = qt_cli_get(args, "budget")) && qt_duration_parse(text, &p.budget_s, &err) != 0)
    return qt_cli_usage_error(cmd, "--budget: %s", qt_err_message(&err));
  if ((text = qt_cli_get(args, "extend")) && qt_duration_parse(text, &p.extend_s, &err) != 0)
    return qt_cli_usage_error(cmd, "--extend: %s", qt_err_message(&err));
  long n;
  if ((text = qt_cli_get(args, "max-trials"))) {
    if (parse_count(text, &n) != 0) return qt_cli_usage_error(cmd, "--max-trials: '%s'", text);
    p.max_trials = n;
  }
  if ((text = qt_cli_get(args, "max-epochs-total"))) {
    if (parse_count(text, &n) != 0)
      return qt_cli_usage_error(cmd, "--max-epochs-total: '%s'", text);
    p.max_epochs_total = n;
  }
  if ((text = qt_cli_get(args, "max-epochs"))) {
    if (parse_count(text, &n) != 0 || n < 1)
      return qt_cli_usage_error(cmd, "--max-epochs: '%s' (a whole number >= 1)", text);
    p.max_epochs = n;
  }
  if ((text = qt_cli_get(args, "pool"))) {
    if (parse_count(text, &n) != 0 || n < 1)
      return qt_cli_usage_error(cmd, "--pool: '%s' (a whole number >= 1)", text);
    p.pool_size = (size_t)n;
  }
  if ((text = qt_cli_get(args, "threads"))) {
    if (parse_count(text, &n) != 0 || n > 256)
      return qt_cli_usage_error(cmd, "--threads: '%s'", text);
    p.threads = (int)n;
  }
  if ((text = qt_cli_get(args, "seed"))) {
    char *end = NULL;
    unsigned long long seed = strtoull(text, &end, 10);
    if (end == text || *end || text[0] == '-')
      return qt_cli_usage_error(cmd, "--seed must be a whole number >= 0, got '%s'", text);
    p.seed = seed;
  }
  if ((text = qt_cli_get(args, "target"))) {
    char *end = NULL;
    p.target = strtod(text, &end);
    if (end == text || *end || !(p.target >= 0.0 && p.target <= 1.0))
      return qt_cli_usage_error(cmd, "--target must be a score in [0, 1], got '%s'", text);
  }
  if ((text = qt_cli_get(args, "max-disk")) && parse_size(text, &p.max_disk) != 0)
    return qt_cli_usage_error(cmd, "--max-disk: '%s' is not a size (e.g. 500M, 2G)", text);
  if (qt_cli_get(args, "overwrite")) p.mode = QT_SEARCH_MODE_OVERWRITE;
  qt_cli_device dev;
  int dev_status = qt_cli_device_option(cmd, qt_cli_get(args, "device"), &dev);
  if (dev_status != 0) return dev_status;
  p.device = dev.is_auto ? QT_SEARCH_DEVICE_AUTO
             : dev.cuda  ? QT_SEARCH_DEVICE_CUDA
                         : QT_SEARCH_DEVICE_CPU;

  char run_dir[512];
  p.run_dir = qt_cli_get(args, "run-dir");
  if (!p.run_dir) {
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(run_dir, sizeof run_dir, "runs/%Y%m%d-%H%M%S", &tm);
    p.run_dir = run_dir;
  }
  if (!(p.budget_s > 0.0)) {
    char journal[4200];
    snprintf(journal, sizeof journal, "%s/journal.jsonl", p.run_dir);
    if (p.mode == QT_SEARCH_MODE_OVERWRITE || access(journal, R_OK) != 0)
      return qt_cli_usage_error(cmd, "--budget DURATION is required (e.g. 30m, 4h)");
  }

  progress prog = {isatty(fileno(stdout)), 0.0};
  p.on_record = on_record;
  p.should_stop = should_stop;
  p.user = &prog;
  signal(SIGINT, on_sigint);
  printf("search: run directory %s\n", p.run_dir);
  fflush(stdout);

  qt_search_result result;
  int rc = qt_search_run(&p, &result, &err);
  signal(SIGINT, SIG_DFL);
  if (rc < 0) {
    fprintf(stderr, "qtune search: %s\n", qt_err_message(&err));
    fprintf(stderr, "qtune search: run directory %s (%s)\n", p.run_dir,
            rc == QT_EBUSY ? "locked by another search" : "resume it with the same command");
    return QT_CLI_EXIT_FAILURE;
  }
  char budget[32], used[32];
  format_clock(result.budget_s, budget, sizeof budget);
  format_clock(result.used_s, used, sizeof used);
  printf("search: %s; budget %s, used %s, overshoot %.0fs; %ld trials, %ld epochs; ",
         result.end_reason, budget, used, result.overshoot_s, result.trials, result.epochs);
  if (result.best_trial >= 0)
    printf("best trial %ld epoch %ld score %.4f\n", result.best_trial, result.best_epoch,
           result.best_score);
  else
    printf("no epoch ended\n");
  printf("search: run directory %s (qtune status / qtune export %s)\n", p.run_dir, p.run_dir);
  return strcmp(result.end_reason, "interrupted") == 0 ? EXIT_INTERRUPTED : QT_CLI_EXIT_OK;
}

/*
 * qt_search_export.c - `qtune export` without the weights: the incumbent's
 * configuration, the CSVs and the plots of a run directory, all from its
 * journal (journal.jsonl), which is the only file of the run it reads, so
 * that exporting a running search is safe.
 *
 * Files written to run_dir/summary/ (or another folder), each under a
 * temporary name and renamed into place when complete:
 *
 * best_config.yaml - the incumbent (the best ended epoch of any trial, the
 *   earliest on ties), as `qtune finetune --config` reads it:
 *     version          1 (the format of this file)
 *     model            the hub model of the incumbent trial
 *     <name>: <value>  every hyperparameter of the trial's configuration as
 *                      journaled in trial_created (the active ones but
 *                      model), values as text; strings YAML would misread
 *                      (null, y, n, ~, leading indicators, ": ") quoted
 *     qtune:           where the configuration came from:
 *       run              the run directory
 *       trial            the incumbent trial's id
 *       epochs           the incumbent epoch: fine-tune this many epochs
 *       schedule_epochs  run_start's max_epochs, the horizon the trial's
 *                        learning-rate schedule was laid out for
 *       seed             the trial's seed (trial_created)
 *       data_seed        the search's seed (run_start)
 *       score            the incumbent's validation score
 *       cost_s           seconds of the trial's epochs 1..epochs
 *
 * incumbent.csv - one row per change of the incumbent, in search order:
 *     time_s   the search clock (seconds of all sessions) at the epoch's end
 *     trial    the trial id of the new incumbent
 *     epoch    its epoch
 *     score    its validation score (higher is better)
 *
 * trials.csv - one row per ended epoch and per failure, in journal order:
 *     trial       the trial id (the candidate's index in the pool)
 *     model       the hub model of the trial
 *     epoch       the epoch that ended (ok) or failed
 *     status      ok (epoch_end), diverged or failed (trial_failed)
 *     score       validation score (top-1 accuracy in [0, 1]); empty when failed
 *     top5        validation top-5 accuracy; empty when unknown
 *     train_loss  mean training loss of the epoch; empty when unknown
 *     val_loss    validation loss; empty when unknown
 *     cost_s      seconds the epoch took (training and validation)
 *     time_s      the search clock when the record was written
 *     <name>...   one column per hyperparameter name of any trial, in order
 *                 of first appearance, holding the trial's value as text;
 *                 empty when the hyperparameter is inactive for the trial
 *   Numbers are written with the fewest digits that read back exactly.
 *
 * incumbent.png|svg - the incumbent score (a step line) over the search
 *   clock; curves.png|svg - validation score against epoch, one line per
 *   trial for the 20 trials with the best scores. Drawn by the gnuplot
 *   program (data passed inline as datablocks, nothing left in /tmp); when
 *   it is not on PATH, or fails, a warning says so and export goes on.
 */
#include "bo/qt_bo.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_CURVES 20

/* ------------------------------------------------------------------------- */
/* Output files, written under a temporary name                               */
/* ------------------------------------------------------------------------- */

typedef struct out_file {
  FILE *file;
  char path[4096];
  char temporary[4200];
} out_file;

static int out_open(out_file *out, const char *dir, const char *name, qt_err *err) {
  if ((size_t)snprintf(out->path, sizeof out->path, "%s/%s", dir, name) >= sizeof out->path)
    return qt_err_set(err, QT_EINVAL, "%s: path too long", dir);
  snprintf(out->temporary, sizeof out->temporary, "%s.tmp", out->path);
  out->file = fopen(out->temporary, "wb");
  if (!out->file) return qt_err_set(err, QT_EIO, "%s: %s", out->temporary, strerror(errno));
  return 0;
}

/* Closes and renames into place; on an earlier failure (rc < 0) or a write
 * error, removes the temporary file instead. */
static int out_close(out_file *out, int rc, qt_err *err) {
  if (!out->file) return rc;
  int write_failed = ferror(out->file);
  int close_failed = fclose(out->file) != 0;
  out->file = NULL;
  if (rc == 0 && (write_failed || close_failed))
    rc = qt_err_set(err, errno == ENOSPC ? QT_ENOSPC : QT_EIO, "%s: write failed: %s",
                    out->temporary, strerror(errno));
  if (rc == 0 && rename(out->temporary, out->path) != 0)
    rc = qt_err_set(err, QT_EIO, "%s: cannot rename into place: %s", out->path, strerror(errno));
  if (rc < 0) remove(out->temporary);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Text helpers                                                               */
/* ------------------------------------------------------------------------- */

/* The fewest of 15, 16, 17 significant digits that read back exactly;
 * "" for NaN (an unknown value). */
static const char *number_text(double value, char *buf, size_t size) {
  qt_format_double(value, buf, size);
  return buf;
}

/* 1 when a plain YAML scalar would not read back as this text (see the
 * file comment). Numbers stay plain: the space reads them as numbers. */
static int yaml_needs_quotes(const char *text) {
  if (!text[0]) return 1;
  if (strchr("-?:,[]{}#&*!|>'\"%@` \t", text[0]) &&
      !(text[0] == '-' && text[1] >= '0' && text[1] <= '9'))
    return 1;
  size_t n = strlen(text);
  if (text[n - 1] == ' ' || text[n - 1] == '\t' || text[n - 1] == ':') return 1;
  if (strstr(text, ": ") || strstr(text, " #") || strpbrk(text, "\n\r\"\\")) return 1;
  static const char *const words[] = {"null", "Null", "NULL", "~", "y", "Y", "n", "N", NULL};
  for (const char *const *w = words; *w; w++)
    if (strcmp(text, *w) == 0) return 1;
  return 0;
}

static void yaml_value(FILE *file, const char *text) {
  if (!yaml_needs_quotes(text)) {
    fputs(text, file);
    return;
  }
  /* A JSON string literal is a valid double-quoted YAML scalar. */
  json_t *string = json_string(text);
  char *quoted = string ? json_dumps(string, JSON_ENCODE_ANY) : NULL;
  fputs(quoted ? quoted : "\"\"", file);
  free(quoted);
  json_decref(string);
}

/* ------------------------------------------------------------------------- */
/* best_config.yaml                                                           */
/* ------------------------------------------------------------------------- */

static int write_best_config(const char *run_dir, const char *out_dir, const qt_journal_log *log,
                             const qt_search_summary_t *summary, qt_err *err) {
  long trial, epoch;
  double score;
  if (qt_search_summary_incumbent(summary, &trial, &epoch, &score) != 0)
    return qt_err_set(err, QT_ENOENT,
                      "%s: no epoch has ended yet, so there is no best configuration "
                      "(trials.csv and incumbent.csv were written)",
                      run_dir);
  const qt_search_trial_info *info = NULL;
  for (size_t i = 0; i < qt_search_summary_trial_count(summary); i++) {
    const qt_search_trial_info *t = qt_search_summary_trial_at(summary, i);
    if (t->trial == trial) info = t;
  }
  if (!info)
    return qt_err_set(err, QT_EFORMAT, "%s: the incumbent trial %ld was never created", run_dir,
                      trial);
  /* Seconds of epochs 1..epoch; the schedule horizon and the data seed of
   * the last run_start (sessions of one run share their settings). */
  double cost_s = 0;
  long schedule_epochs = -1, data_seed = -1;
  for (size_t i = 0; i < log->count; i++) {
    const qt_journal_record *r = &log->records[i];
    if (r->type == QT_JOURNAL_EPOCH_END && r->trial == trial && r->epoch <= epoch &&
        isfinite(r->cost_s))
      cost_s += r->cost_s;
    if (r->type == QT_JOURNAL_RUN_START) {
      schedule_epochs = r->max_epochs;
      data_seed = r->seed;
    }
  }
  out_file f = {0};
  int rc = out_open(&f, out_dir, "best_config.yaml", err);
  if (rc < 0) return rc;
  char number[40];
  fprintf(f.file, "version: 1\nmodel: ");
  yaml_value(f.file, info->model);
  fputc('\n', f.file);
  for (size_t i = 0; i < info->n_values; i++) {
    yaml_value(f.file, info->names[i]);
    fputs(": ", f.file);
    yaml_value(f.file, info->values[i]);
    fputc('\n', f.file);
  }
  fprintf(f.file, "qtune:\n  run: ");
  yaml_value(f.file, run_dir);
  fprintf(f.file, "\n  trial: %ld\n  epochs: %ld\n", trial, epoch);
  if (schedule_epochs >= 0) fprintf(f.file, "  schedule_epochs: %ld\n", schedule_epochs);
  if (info->seed >= 0) fprintf(f.file, "  seed: %ld\n", info->seed);
  if (data_seed >= 0) fprintf(f.file, "  data_seed: %ld\n", data_seed);
  fprintf(f.file, "  score: %s\n", number_text(score, number, sizeof number));
  fprintf(f.file, "  cost_s: %s\n", number_text(cost_s, number, sizeof number));
  return out_close(&f, 0, err);
}

/* ------------------------------------------------------------------------- */
/* CSVs                                                                       */
/* ------------------------------------------------------------------------- */

static int write_incumbent_csv(const char *out_dir, const qt_journal_log *log, qt_err *err) {
  out_file f = {0};
  int rc = out_open(&f, out_dir, "incumbent.csv", err);
  if (rc < 0) return rc;
  fputs("time_s,trial,epoch,score\n", f.file);
  double best = NAN;
  char t[40], s[40];
  for (size_t i = 0; i < log->count; i++) {
    const qt_journal_record *r = &log->records[i];
    if (r->type != QT_JOURNAL_EPOCH_END || !(isnan(best) || r->score > best)) continue;
    best = r->score;
    fprintf(f.file, "%s,%ld,%ld,%s\n", number_text(r->t, t, sizeof t), r->trial, r->epoch,
            number_text(r->score, s, sizeof s));
  }
  return out_close(&f, 0, err);
}

/* The union of the trials' hyperparameter names in order of first
 * appearance (pointers into the summary; malloc'ed array). */
static int collect_names(const qt_search_summary_t *summary, const char ***out, size_t *count,
                         qt_err *err) {
  size_t capacity = 0, n = 0;
  const char **names = NULL;
  for (size_t i = 0; i < qt_search_summary_trial_count(summary); i++) {
    const qt_search_trial_info *t = qt_search_summary_trial_at(summary, i);
    for (size_t v = 0; v < t->n_values; v++) {
      size_t k = 0;
      while (k < n && strcmp(names[k], t->names[v]) != 0) k++;
      if (k < n) continue;
      if (n == capacity) {
        capacity = capacity ? 2 * capacity : 32;
        const char **grown = realloc(names, capacity * sizeof *grown);
        if (!grown) {
          free(names);
          return qt_err_set(err, QT_ENOMEM, "out of memory");
        }
        names = grown;
      }
      names[n++] = t->names[v];
    }
  }
  *out = names;
  *count = n;
  return 0;
}

static const qt_search_trial_info *trial_info(const qt_search_summary_t *summary, long trial) {
  for (size_t i = 0; i < qt_search_summary_trial_count(summary); i++) {
    const qt_search_trial_info *t = qt_search_summary_trial_at(summary, i);
    if (t->trial == trial) return t;
  }
  return NULL;
}

static int write_trials_csv(const char *out_dir, const qt_journal_log *log,
                            const qt_search_summary_t *summary, qt_err *err) {
  const char **names = NULL;
  size_t n_names = 0;
  int rc = collect_names(summary, &names, &n_names, err);
  if (rc < 0) return rc;
  out_file f = {0};
  rc = out_open(&f, out_dir, "trials.csv", err);
  if (rc < 0) {
    free(names);
    return rc;
  }
  fputs("trial,model,epoch,status,score,top5,train_loss,val_loss,cost_s,time_s", f.file);
  for (size_t k = 0; k < n_names; k++) {
    fputc(',', f.file);
    qt_csv_write_field(f.file, names[k]);
  }
  fputc('\n', f.file);
  char a[40], b[40], c[40], d[40], e[40], g[40];
  for (size_t i = 0; i < log->count; i++) {
    const qt_journal_record *r = &log->records[i];
    if (r->type != QT_JOURNAL_EPOCH_END && r->type != QT_JOURNAL_TRIAL_FAILED) continue;
    const qt_search_trial_info *t = trial_info(summary, r->trial);
    const char *status =
        r->type == QT_JOURNAL_EPOCH_END
            ? "ok"
            : (r->status && strcmp(r->status, "diverged") == 0 ? "diverged" : "failed");
    fprintf(f.file, "%ld,", r->trial);
    qt_csv_write_field(f.file, t && t->model ? t->model : "");
    fputc(',', f.file);
    if (r->epoch >= 0) fprintf(f.file, "%ld", r->epoch);
    fprintf(f.file, ",%s,%s,%s,%s,%s,%s,%s", status, number_text(r->score, a, sizeof a),
            number_text(r->top5, b, sizeof b), number_text(r->train_loss, c, sizeof c),
            number_text(r->val_loss, d, sizeof d), number_text(r->cost_s, e, sizeof e),
            number_text(r->t, g, sizeof g));
    for (size_t k = 0; k < n_names; k++) {
      fputc(',', f.file);
      for (size_t v = 0; t && v < t->n_values; v++) {
        if (strcmp(t->names[v], names[k]) == 0) {
          qt_csv_write_field(f.file, t->values[v]);
          break;
        }
      }
    }
    fputc('\n', f.file);
  }
  free(names);
  return out_close(&f, 0, err);
}

/* ------------------------------------------------------------------------- */
/* Plots                                                                      */
/* ------------------------------------------------------------------------- */

/* 1 when an executable `name` is on PATH. */
static int on_path(const char *name) {
  const char *path = getenv("PATH");
  if (!path) return 0;
  char candidate[4096];
  while (*path) {
    const char *colon = strchr(path, ':');
    size_t n = colon ? (size_t)(colon - path) : strlen(path);
    if (n > 0 &&
        snprintf(candidate, sizeof candidate, "%.*s/%s", (int)n, path, name) <
            (int)sizeof candidate &&
        access(candidate, X_OK) == 0)
      return 1;
    path += n;
    if (*path == ':') path++;
  }
  return 0;
}

/* A gnuplot single-quoted string: quotes doubled. */
static void gnuplot_string(FILE *file, const char *text) {
  fputc('\'', file);
  for (const char *p = text; *p; p++) {
    if (*p == '\'') fputc('\'', file);
    fputc(*p, file);
  }
  fputc('\'', file);
}

/* The data of both plots as gnuplot datablocks: $incumbent (time score,
 * with a last point at the clock so the step reaches the end) and
 * $curves (one block per trial, separated by two blank lines). */
static void write_datablocks(FILE *g, const qt_journal_log *log, const qt_search_summary_t *summary,
                             const qt_search_trial_info *const *curves, size_t n_curves) {
  char a[40], b[40];
  double best = NAN;
  fputs("$incumbent << EOD\n", g);
  for (size_t i = 0; i < log->count; i++) {
    const qt_journal_record *r = &log->records[i];
    if (r->type != QT_JOURNAL_EPOCH_END || !(isnan(best) || r->score > best)) continue;
    best = r->score;
    fprintf(g, "%s %s\n", number_text(r->t, a, sizeof a), number_text(r->score, b, sizeof b));
  }
  if (!isnan(best))
    fprintf(g, "%s %s\n", number_text(qt_search_summary_clock(summary), a, sizeof a),
            number_text(best, b, sizeof b));
  fputs("EOD\n$curves << EOD\n", g);
  for (size_t c = 0; c < n_curves; c++) {
    if (c > 0) fputs("\n\n", g);
    for (size_t i = 0; i < log->count; i++) {
      const qt_journal_record *r = &log->records[i];
      if (r->type == QT_JOURNAL_EPOCH_END && r->trial == curves[c]->trial)
        fprintf(g, "%ld %s\n", r->epoch, number_text(r->score, b, sizeof b));
    }
  }
  fputs("EOD\n", g);
}

static int compare_best(const void *a, const void *b) {
  const qt_search_trial_info *x = *(const qt_search_trial_info *const *)a;
  const qt_search_trial_info *y = *(const qt_search_trial_info *const *)b;
  if (x->best_score != y->best_score) return x->best_score > y->best_score ? -1 : 1;
  return x < y ? -1 : x > y;
}

/* The scored trials, best first, at most MAX_CURVES (malloc'ed). */
static const qt_search_trial_info *const *curve_trials(const qt_search_summary_t *summary,
                                                       size_t *count) {
  size_t total = qt_search_summary_trial_count(summary), n = 0;
  const qt_search_trial_info **list = malloc((total ? total : 1) * sizeof *list);
  if (!list) return NULL;
  for (size_t i = 0; i < total; i++) {
    const qt_search_trial_info *t = qt_search_summary_trial_at(summary, i);
    if (!isnan(t->best_score)) list[n++] = t;
  }
  qsort(list, n, sizeof *list, compare_best);
  *count = n < MAX_CURVES ? n : MAX_CURVES;
  return list;
}

/* Runs gnuplot on one script for one terminal; 0 when it exited 0. */
static int run_gnuplot(const char *out_dir, const char *term, const qt_journal_log *log,
                       const qt_search_summary_t *summary,
                       const qt_search_trial_info *const *curves, size_t n_curves) {
  FILE *g = popen("gnuplot", "w");
  if (!g) return -1;
  char path[4200];
  if (strcmp(term, "png") == 0)
    fputs("set terminal pngcairo size 1000,640 font ',11' noenhanced\n", g);
  else
    fputs("set terminal svg size 1000,640 font 'sans,11' dynamic noenhanced\n", g);
  write_datablocks(g, log, summary, curves, n_curves);
  fputs("set grid\nset key outside right\n", g);
  snprintf(path, sizeof path, "%s/incumbent.%s.tmp", out_dir, term);
  fputs("set output ", g);
  gnuplot_string(g, path);
  fputs(
      "\nset xrange [0:*]\nset title 'Incumbent validation score over search time'\n"
      "set xlabel 'Search time (s)'\nset ylabel 'Validation score'\n",
      g);
  fputs(n_curves ? "plot $incumbent using 1:2 with steps lw 2 title 'incumbent'\n"
                 : "set xrange [0:1]\nset yrange [0:1]\nplot 2 notitle\n",
        g);
  snprintf(path, sizeof path, "%s/curves.%s.tmp", out_dir, term);
  fputs("set output ", g);
  gnuplot_string(g, path);
  fputs(
      "\nset title 'Validation score per trial (best trials)'\n"
      "set xlabel 'Epoch'\nset ylabel 'Validation score'\nset autoscale\n",
      g);
  /* Whole epochs on the axis while they are few enough to label each. */
  long max_epoch = 0;
  for (size_t c = 0; c < n_curves; c++)
    if (curves[c]->epochs > max_epoch) max_epoch = curves[c]->epochs;
  if (max_epoch <= 20) fputs("set xtics 1\n", g);
  if (n_curves == 0) {
    fputs("set xrange [0:1]\nset yrange [0:1]\nplot 2 notitle\n", g);
  } else {
    fputs("plot ", g);
    for (size_t c = 0; c < n_curves; c++) {
      char title[512];
      snprintf(title, sizeof title, "trial %ld (%s)", curves[c]->trial,
               curves[c]->model ? curves[c]->model : "?");
      fprintf(g, "%s$curves index %zu using 1:2 with linespoints lw 2 title ", c ? ", " : "", c);
      gnuplot_string(g, title);
    }
    fputc('\n', g);
  }
  fputs("set output\n", g);
  int status = pclose(g);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

static void write_plots(const char *out_dir, const qt_journal_log *log,
                        const qt_search_summary_t *summary) {
  if (!on_path("gnuplot")) {
    QT_LOG_WARN("gnuplot is not installed (apt-get install gnuplot-nox): no plots in %s", out_dir);
    return;
  }
  size_t n_curves = 0;
  const qt_search_trial_info *const *curves = curve_trials(summary, &n_curves);
  if (!curves) {
    QT_LOG_WARN("out of memory: no plots in %s", out_dir);
    return;
  }
  const char *terms[] = {"png", "svg"};
  const char *plots[] = {"incumbent", "curves"};
  for (int i = 0; i < 2; i++) {
    int ok = run_gnuplot(out_dir, terms[i], log, summary, curves, n_curves) == 0;
    for (int p = 0; p < 2; p++) {
      char tmp[4300], final[4200];
      snprintf(final, sizeof final, "%s/%s.%s", out_dir, plots[p], terms[i]);
      snprintf(tmp, sizeof tmp, "%s.tmp", final);
      struct stat info;
      if (ok && stat(tmp, &info) == 0 && info.st_size > 0 && rename(tmp, final) == 0) continue;
      remove(tmp);
      QT_LOG_WARN("gnuplot failed: no %s", final);
    }
  }
  free((void *)curves);
}

/* ------------------------------------------------------------------------- */
/* Export                                                                     */
/* ------------------------------------------------------------------------- */

int qt_search_export_to(const char *run_dir, const char *out_dir, int plots, qt_err *err) {
  if (!run_dir) return qt_err_set(err, QT_EINVAL, "qt_search_export: run_dir is NULL");
  char journal_path[4096], summary_dir[4096];
  if ((size_t)snprintf(journal_path, sizeof journal_path, "%s/journal.jsonl", run_dir) >=
      sizeof journal_path)
    return qt_err_set(err, QT_EINVAL, "%s: path too long", run_dir);
  if (!out_dir) {
    snprintf(summary_dir, sizeof summary_dir, "%s/summary", run_dir);
    out_dir = summary_dir;
  }
  qt_journal_log log;
  int rc = qt_journal_read(journal_path, &log, err);
  if (rc < 0) {
    if (rc == QT_ENOENT) qt_err_prefix(err, rc, "%s is not a run directory (no journal)", run_dir);
    return rc;
  }
  qt_search_summary_t *summary = NULL;
  rc = qt_search_summary_new(&summary, err);
  for (size_t i = 0; i < log.count && rc == 0; i++) {
    rc = qt_search_summary_apply(summary, &log.records[i], err);
    if (rc < 0) qt_err_prefix(err, rc, "%s:%zu", journal_path, i + 1);
  }
  if (rc == 0) rc = qt_mkdir_p(out_dir, err);
  if (rc == 0) rc = write_incumbent_csv(out_dir, &log, err);
  if (rc == 0) rc = write_trials_csv(out_dir, &log, summary, err);
  if (rc == 0 && plots) write_plots(out_dir, &log, summary);
  if (rc == 0) rc = write_best_config(run_dir, out_dir, &log, summary, err);
  qt_search_summary_free(summary);
  qt_journal_log_free(&log);
  return rc;
}

int qt_search_export(const char *run_dir, qt_err *err) {
  return qt_search_export_to(run_dir, NULL, 1, err);
}

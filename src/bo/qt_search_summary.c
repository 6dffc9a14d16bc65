/*
 * qt_search_summary.c - the state of a search folded from its journal:
 * what `qtune status` prints, what the search's progress display redraws
 * and what `qtune export` starts from.
 *
 * Trial states follow the records: "new" after trial_created, "running"
 * after an epoch_begin whose epoch_end has not come yet, "paused" after an
 * epoch_end, "diverged" or "failed" after trial_failed (its status). A
 * run_start or run_end turns a "running" trial into "paused": its epoch did
 * not end in that session and will be run again from the last checkpoint.
 *
 * The incumbent is the best score over all ended epochs, the earliest one
 * on ties; it is computed from the epoch_end records, so the incumbent
 * records of the journal are informational here. The clock is the t of the
 * last record: seconds of all sessions so far.
 */
#include "bo/qt_bo.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------- */
/* Strings owned by the summary                                               */
/* ------------------------------------------------------------------------- */

/* Each string is one malloc'ed block kept in a growing list. */
typedef struct string_pool {
  char **items;
  size_t count, capacity;
} string_pool;

static const char *pool_strdup(string_pool *pool, const char *text) {
  if (!text) return NULL;
  if (pool->count == pool->capacity) {
    size_t capacity = pool->capacity ? 2 * pool->capacity : 64;
    char **items = realloc(pool->items, capacity * sizeof *items);
    if (!items) return NULL;
    pool->items = items;
    pool->capacity = capacity;
  }
  char *copy = strdup(text);
  if (copy) pool->items[pool->count++] = copy;
  return copy;
}

static void pool_free(string_pool *pool) {
  for (size_t i = 0; i < pool->count; i++) free(pool->items[i]);
  free(pool->items);
}

/* ------------------------------------------------------------------------- */
/* The summary                                                                */
/* ------------------------------------------------------------------------- */

struct qt_search_summary {
  qt_search_trial_info *trials; /* (n_trials) in creation order */
  size_t n_trials, capacity;
  long *slot_of_id; /* (n_slots) index into trials by trial id, -1 when absent */
  size_t n_slots;
  string_pool strings;
  char *run_dir; /* the journal's folder when loaded from a file, else NULL */
  qt_journal_record run_start, run_end;
  int has_run_start, has_run_end;
  long best_trial, best_epoch;
  double best_score;
  double clock, optimizer_s;
  long epochs;
  long suggested_trial; /* the last suggest, for a trial not created yet */
  double suggested_cost_s;
};

int qt_search_summary_new(qt_search_summary_t **out, qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_search_summary_new: out is NULL");
  qt_search_summary_t *s = calloc(1, sizeof *s);
  if (!s) return qt_err_set(err, QT_ENOMEM, "out of memory");
  s->best_trial = s->best_epoch = -1;
  s->best_score = NAN;
  s->suggested_trial = -1;
  s->suggested_cost_s = NAN;
  *out = s;
  return 0;
}

void qt_search_summary_free(qt_search_summary_t *summary) {
  if (!summary) return;
  for (size_t i = 0; i < summary->n_trials; i++) {
    free((void *)summary->trials[i].names);
    free((void *)summary->trials[i].values);
  }
  free(summary->trials);
  free(summary->slot_of_id);
  free(summary->run_dir);
  pool_free(&summary->strings);
  free(summary);
}

static qt_search_trial_info *find_trial(qt_search_summary_t *s, long trial) {
  if (trial < 0 || (size_t)trial >= s->n_slots || s->slot_of_id[trial] < 0) return NULL;
  return &s->trials[s->slot_of_id[trial]];
}

/* A copy of a run_start or run_end record with its strings in the pool. */
static int copy_run_record(qt_search_summary_t *s, const qt_journal_record *r,
                           qt_journal_record *out, qt_err *err) {
  *out = *r;
  out->names = out->values = NULL;
  out->n_values = 0;
  out->model = out->status = NULL;
  const char **fields[] = {&out->reason,  &out->time, &out->hash, &out->optimizer,
                           &out->dataset, &out->hub,  &out->space};
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    if (*fields[i] && !(*fields[i] = pool_strdup(&s->strings, *fields[i])))
      return qt_err_set(err, QT_ENOMEM, "out of memory");
  }
  return 0;
}

static void pause_running(qt_search_summary_t *s) {
  for (size_t i = 0; i < s->n_trials; i++)
    if (strcmp(s->trials[i].state, "running") == 0) s->trials[i].state = "paused";
}

static int add_trial(qt_search_summary_t *s, const qt_journal_record *r, qt_err *err) {
  if (find_trial(s, r->trial)) return 0; /* created before: keep the first */
  if ((size_t)r->trial >= s->n_slots) {
    size_t n = (size_t)r->trial + 1 > 2 * s->n_slots ? (size_t)r->trial + 1 : 2 * s->n_slots;
    long *slots = realloc(s->slot_of_id, n * sizeof *slots);
    if (!slots) return qt_err_set(err, QT_ENOMEM, "out of memory");
    for (size_t i = s->n_slots; i < n; i++) slots[i] = -1;
    s->slot_of_id = slots;
    s->n_slots = n;
  }
  if (s->n_trials == s->capacity) {
    size_t capacity = s->capacity ? 2 * s->capacity : 32;
    qt_search_trial_info *trials = realloc(s->trials, capacity * sizeof *trials);
    if (!trials) return qt_err_set(err, QT_ENOMEM, "out of memory");
    s->trials = trials;
    s->capacity = capacity;
  }
  qt_search_trial_info info;
  memset(&info, 0, sizeof info);
  info.trial = r->trial;
  info.model = pool_strdup(&s->strings, r->model);
  const char **names = calloc(r->n_values ? r->n_values : 1, sizeof *names);
  const char **values = calloc(r->n_values ? r->n_values : 1, sizeof *values);
  int failed = !info.model || !names || !values;
  for (size_t i = 0; i < r->n_values && !failed; i++) {
    names[i] = pool_strdup(&s->strings, r->names[i]);
    values[i] = pool_strdup(&s->strings, r->values[i]);
    failed = !names[i] || !values[i];
  }
  if (failed) {
    free(names);
    free(values);
    return qt_err_set(err, QT_ENOMEM, "out of memory");
  }
  info.n_values = r->n_values;
  info.names = names;
  info.values = values;
  info.seed = r->seed;
  info.epochs = 0;
  info.last_score = info.best_score = NAN;
  info.best_epoch = 0;
  info.cost_s = 0;
  info.predicted_cost_s = s->suggested_trial == r->trial ? s->suggested_cost_s : NAN;
  info.state = "new";
  info.reason = NULL;
  s->slot_of_id[r->trial] = (long)s->n_trials;
  s->trials[s->n_trials++] = info;
  return 0;
}

int qt_search_summary_apply(qt_search_summary_t *s, const qt_journal_record *r, qt_err *err) {
  if (!s || !r) return qt_err_set(err, QT_EINVAL, "qt_search_summary_apply: NULL argument");
  qt_search_trial_info *trial = NULL;
  int needs_trial = r->type == QT_JOURNAL_EPOCH_BEGIN || r->type == QT_JOURNAL_EPOCH_END ||
                    r->type == QT_JOURNAL_TRIAL_FAILED;
  if (needs_trial) {
    trial = find_trial(s, r->trial);
    if (!trial)
      return qt_err_set(err, QT_EFORMAT, "%s record of trial %ld before its trial_created",
                        qt_journal_type_name(r->type), r->trial);
  }
  if (isfinite(r->t)) s->clock = r->t;
  switch (r->type) {
    case QT_JOURNAL_RUN_START:
      pause_running(s);
      if (copy_run_record(s, r, &s->run_start, err) < 0) return QT_ENOMEM;
      s->has_run_start = 1;
      s->has_run_end = 0;
      break;
    case QT_JOURNAL_SUGGEST: {
      if (isfinite(r->optimizer_s)) s->optimizer_s += r->optimizer_s;
      qt_search_trial_info *suggested = find_trial(s, r->trial);
      if (suggested) {
        suggested->predicted_cost_s = r->predicted_cost_s;
      } else {
        s->suggested_trial = r->trial;
        s->suggested_cost_s = r->predicted_cost_s;
      }
      break;
    }
    case QT_JOURNAL_TRIAL_CREATED:
      if (r->trial < 0 || !r->model)
        return qt_err_set(err, QT_EFORMAT, "trial_created record without trial or model");
      return add_trial(s, r, err);
    case QT_JOURNAL_EPOCH_BEGIN:
      trial->state = "running";
      trial->predicted_cost_s = r->predicted_cost_s;
      break;
    case QT_JOURNAL_EPOCH_END:
      if (!isfinite(r->score))
        return qt_err_set(err, QT_EFORMAT, "epoch_end record of trial %ld without a score",
                          r->trial);
      trial->state = "paused";
      if (r->epoch > trial->epochs) trial->epochs = r->epoch;
      trial->last_score = r->score;
      if (isnan(trial->best_score) || r->score > trial->best_score) {
        trial->best_score = r->score;
        trial->best_epoch = r->epoch;
      }
      if (isfinite(r->cost_s)) trial->cost_s += r->cost_s;
      trial->predicted_cost_s = NAN;
      s->epochs++;
      if (isnan(s->best_score) || r->score > s->best_score) {
        s->best_score = r->score;
        s->best_trial = r->trial;
        s->best_epoch = r->epoch;
      }
      break;
    case QT_JOURNAL_TRIAL_FAILED:
      trial->state = r->status && strcmp(r->status, "diverged") == 0 ? "diverged" : "failed";
      trial->reason = r->reason ? pool_strdup(&s->strings, r->reason) : NULL;
      if (r->reason && !trial->reason) return qt_err_set(err, QT_ENOMEM, "out of memory");
      trial->predicted_cost_s = NAN;
      break;
    case QT_JOURNAL_INCUMBENT:
      break;
    case QT_JOURNAL_RUN_END:
      pause_running(s);
      if (copy_run_record(s, r, &s->run_end, err) < 0) return QT_ENOMEM;
      s->has_run_end = 1;
      break;
  }
  return 0;
}

int qt_search_summary_load(const char *journal_path, qt_search_summary_t **out, qt_err *err) {
  if (!journal_path || !out)
    return qt_err_set(err, QT_EINVAL, "qt_search_summary_load: NULL argument");
  *out = NULL;
  qt_journal_log log;
  int rc = qt_journal_read(journal_path, &log, err);
  if (rc < 0) return rc;
  qt_search_summary_t *s = NULL;
  rc = qt_search_summary_new(&s, err);
  for (size_t i = 0; i < log.count && rc == 0; i++) {
    rc = qt_search_summary_apply(s, &log.records[i], err);
    /* Records are one per line: record i is on line i + 1. */
    if (rc < 0) qt_err_prefix(err, rc, "%s:%zu", journal_path, i + 1);
  }
  qt_journal_log_free(&log);
  if (rc == 0) {
    const char *slash = strrchr(journal_path, '/');
    size_t n = slash ? (size_t)(slash - journal_path) : 1;
    s->run_dir = malloc(n + 1);
    if (!s->run_dir) {
      rc = qt_err_set(err, QT_ENOMEM, "out of memory");
    } else {
      memcpy(s->run_dir, slash ? journal_path : ".", n);
      s->run_dir[n] = '\0';
      if (slash == journal_path) strcpy(s->run_dir, "/");
    }
  }
  if (rc < 0) {
    qt_search_summary_free(s);
    return rc;
  }
  *out = s;
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Accessors                                                                  */
/* ------------------------------------------------------------------------- */

size_t qt_search_summary_trial_count(const qt_search_summary_t *summary) {
  return summary ? summary->n_trials : 0;
}

const qt_search_trial_info *qt_search_summary_trial_at(const qt_search_summary_t *summary,
                                                       size_t index) {
  if (!summary || index >= summary->n_trials) return NULL;
  return &summary->trials[index];
}

const qt_journal_record *qt_search_summary_run_start(const qt_search_summary_t *summary) {
  return summary && summary->has_run_start ? &summary->run_start : NULL;
}

const qt_journal_record *qt_search_summary_run_end(const qt_search_summary_t *summary) {
  return summary && summary->has_run_end ? &summary->run_end : NULL;
}

int qt_search_summary_incumbent(const qt_search_summary_t *summary, long *trial, long *epoch,
                                double *score) {
  if (!summary || summary->best_trial < 0) return QT_ENOENT;
  if (trial) *trial = summary->best_trial;
  if (epoch) *epoch = summary->best_epoch;
  if (score) *score = summary->best_score;
  return 0;
}

double qt_search_summary_clock(const qt_search_summary_t *summary) {
  return summary ? summary->clock : 0;
}

long qt_search_summary_epochs(const qt_search_summary_t *summary) {
  return summary ? summary->epochs : 0;
}

double qt_search_summary_optimizer_s(const qt_search_summary_t *summary) {
  return summary ? summary->optimizer_s : 0;
}

/* ------------------------------------------------------------------------- */
/* Printing                                                                   */
/* ------------------------------------------------------------------------- */

/* Trials best first: by best score (higher first), trials without a score
 * after those with one, then by creation order (the trials array is in
 * creation order, so addresses order them). */
static int compare_best_first(const void *a, const void *b) {
  const qt_search_trial_info *x = *(const qt_search_trial_info *const *)a;
  const qt_search_trial_info *y = *(const qt_search_trial_info *const *)b;
  int x_scored = !isnan(x->best_score), y_scored = !isnan(y->best_score);
  if (x_scored != y_scored) return y_scored - x_scored;
  if (x_scored && x->best_score != y->best_score) return x->best_score > y->best_score ? -1 : 1;
  return x < y ? -1 : x > y;
}

/* The trials best first (malloc'ed, n_trials entries). */
static const qt_search_trial_info **best_first_order(const qt_search_summary_t *s) {
  const qt_search_trial_info **order = malloc((s->n_trials ? s->n_trials : 1) * sizeof *order);
  if (!order) return NULL;
  for (size_t i = 0; i < s->n_trials; i++) order[i] = &s->trials[i];
  qsort(order, s->n_trials, sizeof *order, compare_best_first);
  return order;
}

/* "h:mm:ss"; "-" for an unknown value. */
static void format_hms(double seconds, char *buf, size_t size) {
  if (!isfinite(seconds) || seconds < 0) {
    snprintf(buf, size, "-");
    return;
  }
  long total = (long)floor(seconds + 0.5);
  snprintf(buf, size, "%ld:%02ld:%02ld", total / 3600, total / 60 % 60, total % 60);
}

static long count_failed(const qt_search_summary_t *s) {
  long failed = 0;
  for (size_t i = 0; i < s->n_trials; i++)
    failed +=
        strcmp(s->trials[i].state, "diverged") == 0 || strcmp(s->trials[i].state, "failed") == 0;
  return failed;
}

/* The hyperparameters worth a glance in a table row, in this order. */
static const char *const key_hyperparameters[] = {"opt",           "lr",      "batch_size",
                                                  "pct_to_freeze", "adapter", NULL};

static void format_key_values(const qt_search_trial_info *t, char *buf, size_t size) {
  size_t used = 0;
  buf[0] = '\0';
  for (const char *const *key = key_hyperparameters; *key; key++) {
    for (size_t i = 0; i < t->n_values; i++) {
      if (strcmp(t->names[i], *key) != 0) continue;
      /* Numbers with 3 significant digits: a row is for a glance. */
      char short_value[32];
      const char *value = t->values[i];
      double number;
      if (qt_parse_double(value, &number) == 0 && number != floor(number)) {
        snprintf(short_value, sizeof short_value, "%.3g", number);
        value = short_value;
      }
      int n = snprintf(buf + used, size - used, "%s%s=%s", used ? " " : "", t->names[i], value);
      if (n < 0 || (size_t)n >= size - used) return;
      used += (size_t)n;
    }
  }
}

static void format_score(double score, char *buf, size_t size) {
  if (isnan(score))
    snprintf(buf, size, "-");
  else
    snprintf(buf, size, "%.4f", score);
}

static void format_seconds(double seconds, char *buf, size_t size) {
  if (!isfinite(seconds))
    snprintf(buf, size, "-");
  else
    snprintf(buf, size, "%.1f", seconds);
}

static int print_table(const qt_search_summary_t *s, size_t max_rows, FILE *out, qt_err *err) {
  const qt_journal_record *start = qt_search_summary_run_start(s);
  const qt_journal_record *end = qt_search_summary_run_end(s);
  char used[32], total[32], optimizer[32];
  format_hms(s->clock, used, sizeof used);
  format_hms(start ? start->budget_s : NAN, total, sizeof total);
  format_hms(s->optimizer_s, optimizer, sizeof optimizer);
  if (s->run_dir) fprintf(out, "run        %s\n", s->run_dir);
  if (start) {
    fprintf(out, "session    %ld, optimizer %s, %s%s\n", start->session,
            start->optimizer ? start->optimizer : "-", end ? "ended: " : "running",
            end ? end->reason : "");
  } else {
    fprintf(out, "session    - (no run_start yet)\n");
  }
  if (start && isfinite(start->budget_s) && start->budget_s > 0)
    fprintf(out, "budget     %s / %s used (%.0f%%)\n", used, total,
            100.0 * s->clock / start->budget_s);
  else
    fprintf(out, "budget     %s / %s used\n", used, total);
  fprintf(out, "trials     %zu (%ld failed), %ld epochs, optimizer %s\n", s->n_trials,
          count_failed(s), s->epochs, optimizer);
  if (s->best_trial >= 0) {
    const qt_search_trial_info *best = find_trial((qt_search_summary_t *)s, s->best_trial);
    fprintf(out, "incumbent  trial %ld, epoch %ld, score %.4f (%s)\n", s->best_trial, s->best_epoch,
            s->best_score, best && best->model ? best->model : "?");
  } else {
    fprintf(out, "incumbent  - (no epoch ended yet)\n");
  }
  const qt_search_trial_info **order = best_first_order(s);
  if (!order) return qt_err_set(err, QT_ENOMEM, "out of memory");
  size_t rows = max_rows && max_rows < s->n_trials ? max_rows : s->n_trials;
  /* The model column is as wide as the widest model shown. */
  int model_width = 5;
  for (size_t r = 0; r < rows; r++) {
    const char *model = order[r]->model;
    int n = model ? (int)strlen(model) : 1;
    if (n > model_width) model_width = n;
  }
  if (model_width > 40) model_width = 40;
  fprintf(out, "\n%6s  %-*s  %-8s  %5s  %7s  %7s  %8s  %8s  %s\n", "trial", model_width, "model",
          "state", "epoch", "score", "best", "cost_s", "next_s", "hyperparameters");
  for (size_t r = 0; r < rows; r++) {
    const qt_search_trial_info *t = order[r];
    char last[16], best[16], cost[24], next[24], keys[256];
    format_score(t->last_score, last, sizeof last);
    format_score(t->best_score, best, sizeof best);
    format_seconds(t->cost_s, cost, sizeof cost);
    format_seconds(t->predicted_cost_s, next, sizeof next);
    format_key_values(t, keys, sizeof keys);
    /* A failure's reason, cut to a glance (json and yaml have it whole). */
    const char *reason = t->reason ? t->reason : "";
    int long_reason = strlen(reason) > 60;
    fprintf(out, "%6ld  %-*.*s  %-8s  %5ld  %7s  %7s  %8s  %8s  %s%s%.60s%s%s\n", t->trial,
            model_width, model_width, t->model ? t->model : "-", t->state, t->epochs, last, best,
            cost, next, keys, t->reason ? " (" : "", reason, long_reason ? "..." : "",
            t->reason ? ")" : "");
  }
  if (rows < s->n_trials) fprintf(out, "(%zu more trials)\n", s->n_trials - rows);
  free((void *)order);
  return 0;
}

/* ---- json and yaml: one jansson tree, printed either way ---------------- */

static json_t *number_or_null(double value) {
  return isfinite(value) ? json_real(value) : json_null();
}

static json_t *integer_or_null(long value) {
  return value >= 0 ? json_integer(value) : json_null();
}

static json_t *string_or_null(const char *value) {
  return value ? json_string(value) : json_null();
}

static json_t *build_tree(const qt_search_summary_t *s, size_t max_rows) {
  const qt_journal_record *start = qt_search_summary_run_start(s);
  const qt_journal_record *end = qt_search_summary_run_end(s);
  json_t *root = json_object();
  if (!root) return NULL;
  int failed = 0;
#define SET(object, key, value) failed |= json_object_set_new(object, key, value) != 0
  SET(root, "run_dir", string_or_null(s->run_dir));
  SET(root, "session", integer_or_null(start ? start->session : -1));
  SET(root, "state", json_string(!start ? "new" : end ? "ended" : "running"));
  SET(root, "end_reason", string_or_null(end ? end->reason : NULL));
  SET(root, "optimizer", string_or_null(start ? start->optimizer : NULL));
  SET(root, "budget_s", number_or_null(start ? start->budget_s : NAN));
  SET(root, "used_s", json_real(s->clock));
  SET(root, "n_trials", json_integer((json_int_t)s->n_trials));
  SET(root, "n_failed", json_integer(count_failed(s)));
  SET(root, "epochs", json_integer(s->epochs));
  SET(root, "optimizer_s", json_real(s->optimizer_s));
  if (s->best_trial >= 0) {
    const qt_search_trial_info *best = find_trial((qt_search_summary_t *)s, s->best_trial);
    json_t *incumbent = json_object();
    if (incumbent) {
      SET(incumbent, "trial", json_integer(s->best_trial));
      SET(incumbent, "epoch", json_integer(s->best_epoch));
      SET(incumbent, "score", json_real(s->best_score));
      SET(incumbent, "model", string_or_null(best ? best->model : NULL));
    }
    SET(root, "incumbent", incumbent ? incumbent : json_null());
  } else {
    SET(root, "incumbent", json_null());
  }
  json_t *trials = json_array();
  const qt_search_trial_info **order = best_first_order(s);
  if (!trials || !order) failed = 1;
  size_t rows = max_rows && max_rows < s->n_trials ? max_rows : s->n_trials;
  for (size_t r = 0; r < rows && !failed; r++) {
    const qt_search_trial_info *t = order[r];
    json_t *row = json_object();
    json_t *config = json_object();
    if (!row || !config) {
      json_decref(row);
      json_decref(config);
      failed = 1;
      break;
    }
    SET(row, "trial", json_integer(t->trial));
    SET(row, "model", string_or_null(t->model));
    SET(row, "state", json_string(t->state));
    SET(row, "epochs", json_integer(t->epochs));
    SET(row, "last_score", number_or_null(t->last_score));
    SET(row, "best_score", number_or_null(t->best_score));
    SET(row, "best_epoch", json_integer(t->best_epoch));
    SET(row, "cost_s", json_real(t->cost_s));
    SET(row, "predicted_cost_s", number_or_null(t->predicted_cost_s));
    SET(row, "seed", integer_or_null(t->seed));
    SET(row, "reason", string_or_null(t->reason));
    for (size_t i = 0; i < t->n_values; i++) SET(config, t->names[i], json_string(t->values[i]));
    SET(row, "config", config);
    failed |= json_array_append_new(trials, row) != 0;
  }
#undef SET
  free((void *)order);
  if (trials) failed |= json_object_set_new(root, "trials", trials) != 0;
  if (failed) {
    json_decref(root);
    return NULL;
  }
  return root;
}

/* 1 when a plain scalar would not read back as this string: empty, leading
 * or trailing space, YAML indicators, ": " or " #", or a word YAML 1.1 reads
 * as null or a boolean. Numbers stay plain (they are meant as numbers). */
static int yaml_needs_quotes(const char *text) {
  if (!text[0]) return 1;
  if (strchr("-?:,[]{}#&*!|>'\"%@` \t", text[0]) &&
      !(text[0] == '-' && (text[1] >= '0' && text[1] <= '9')))
    return 1;
  size_t n = strlen(text);
  if (text[n - 1] == ' ' || text[n - 1] == '\t' || text[n - 1] == ':') return 1;
  if (strstr(text, ": ") || strstr(text, " #") || strpbrk(text, "\n\r\"\\")) return 1;
  static const char *const words[] = {"null", "Null", "NULL", "~", "y", "Y", "n", "N", NULL};
  for (const char *const *w = words; *w; w++)
    if (strcmp(text, *w) == 0) return 1;
  return 0;
}

static void yaml_scalar(json_t *value, FILE *out) {
  char text[40];
  switch (json_typeof(value)) {
    case JSON_NULL:
      fputs("null", out);
      break;
    case JSON_TRUE:
      fputs("true", out);
      break;
    case JSON_FALSE:
      fputs("false", out);
      break;
    case JSON_INTEGER:
      fprintf(out, "%lld", (long long)json_integer_value(value));
      break;
    case JSON_REAL:
      snprintf(text, sizeof text, "%.15g", json_real_value(value));
      if (strtod(text, NULL) != json_real_value(value))
        snprintf(text, sizeof text, "%.17g", json_real_value(value));
      fputs(text, out);
      break;
    case JSON_STRING: {
      const char *s = json_string_value(value);
      if (!yaml_needs_quotes(s)) {
        fputs(s, out);
      } else {
        /* A JSON string literal is a valid double-quoted YAML scalar. */
        char *quoted = json_dumps(value, JSON_ENCODE_ANY);
        fputs(quoted ? quoted : "\"\"", out);
        free(quoted);
      }
      break;
    }
    default:
      break;
  }
}

static int is_empty_collection(json_t *value) {
  return (json_is_object(value) && json_object_size(value) == 0) ||
         (json_is_array(value) && json_array_size(value) == 0);
}

/* Block-style YAML: `indent` spaces before every line but the first when
 * `inline_first` (the first key follows a "- " already printed). */
static void yaml_node(json_t *node, int indent, int inline_first, FILE *out) {
  if (json_is_object(node)) {
    const char *key;
    json_t *value;
    int first = 1;
    json_object_foreach(node, key, value) {
      if (!(first && inline_first)) fprintf(out, "%*s", indent, "");
      first = 0;
      json_t *key_string = json_string(key);
      yaml_scalar(key_string, out);
      json_decref(key_string);
      fputc(':', out);
      if (is_empty_collection(value)) {
        fputs(json_is_object(value) ? " {}\n" : " []\n", out);
      } else if (json_is_object(value) || json_is_array(value)) {
        fputc('\n', out);
        yaml_node(value, indent + 2, 0, out);
      } else {
        fputc(' ', out);
        yaml_scalar(value, out);
        fputc('\n', out);
      }
    }
  } else if (json_is_array(node)) {
    size_t i;
    json_t *item;
    json_array_foreach(node, i, item) {
      if (!(i == 0 && inline_first)) fprintf(out, "%*s", indent, "");
      fputs("- ", out);
      if (is_empty_collection(item)) {
        fputs(json_is_object(item) ? "{}\n" : "[]\n", out);
      } else if (json_is_object(item) || json_is_array(item)) {
        yaml_node(item, indent + 2, 1, out);
      } else {
        yaml_scalar(item, out);
        fputc('\n', out);
      }
    }
  }
}

int qt_search_summary_print(const qt_search_summary_t *summary, const char *format, size_t max_rows,
                            FILE *out, qt_err *err) {
  if (!summary || !format || !out)
    return qt_err_set(err, QT_EINVAL, "qt_search_summary_print: NULL argument");
  int is_json = strcmp(format, "json") == 0, is_yaml = strcmp(format, "yaml") == 0;
  if (strcmp(format, "table") == 0) return print_table(summary, max_rows, out, err);
  if (!is_json && !is_yaml)
    return qt_err_set(err, QT_EINVAL, "unknown format '%s' (table, json or yaml)", format);
  json_t *tree = build_tree(summary, max_rows);
  if (!tree) return qt_err_set(err, QT_ENOMEM, "out of memory");
  if (is_json) {
    if (json_dumpf(tree, out, JSON_INDENT(2) | JSON_REAL_PRECISION(15)) != 0) {
      json_decref(tree);
      return qt_err_set(err, QT_EIO, "cannot write the summary");
    }
    fputc('\n', out);
  } else {
    yaml_node(tree, 0, 0, out);
  }
  json_decref(tree);
  if (ferror(out)) return qt_err_set(err, QT_EIO, "cannot write the summary");
  return 0;
}

/*
 * test_search.c - `qtune search` end to end on a tiny synthetic setup
 * (src/bo/qt_search.c, qt_objective_finetune.c, the run API's stop hook,
 * qt_space_with_choices, src/cli/cmd_search.c):
 *
 *   - a search runs, journals every epoch, keeps the incumbent's weights,
 *     and a hub model with a corrupt checkpoint fails its trials without
 *     stopping the search, as do diverging learning rates; configurations
 *     the engine cannot run yet are replaced in the pool;
 *   - --max-disk evicts checkpoints; an evicted trial fails when continued;
 *   - a journal that does not match the optimizer is refused (QT_ESCHEMA);
 *   - resuming a finished run with a larger limit replays the journal and
 *     continues exactly as an uninterrupted run of the same seed; --extend
 *     adds budget; other settings are refused, naming what differs;
 *   - kill -9 at random times of the qtune binary, then resume: the
 *     (trial, epoch, score) sequence equals an uninterrupted run's;
 *   - a second writer on a locked run directory is QT_EBUSY;
 *   - a budget stop overshoots by less than one epoch's predicted cost plus
 *     one batch, and Ctrl-C (should_stop) ends with "interrupted";
 *   - qtune finetune --config summary/best_config.yaml reproduces the best
 *     epoch's validation score;
 *   - the command prints one line per epoch and the final budget line.
 *
 * Fixtures (made in a temporary folder): 8x8 grayscale IDX images of three
 * patterns, a random tiny ViT (patch 4, width 16, depth 1, 2 heads) saved
 * as a timm checkpoint, a hub with two copies of it, a corrupt one and a
 * MobileNetV2 entry (left out), and a small search space.
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bo/qt_bo.h"
#include "finetune/qt_finetune.h"
#include "qt_test.h"
#include "qt_test_tiny.h"

/* ------------------------------------------------------------------------- */
/* Fixtures                                                                   */
/* ------------------------------------------------------------------------- */

static char data_dir[512], hub_path[512], space_path[512];

/* After the two tiny ViTs of qt_tiny_write_hub. */
static const char *hub_more =
    "  - {name: broken, family: vit, checkpoint: broken.safetensors, image_size: 8,\n"
    "     mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5], num_classes: 5, patch_size: 4, heads: 2}\n"
    "  - {name: cnn, family: mobilenetv2, checkpoint: missing.safetensors, image_size: 8,\n"
    "     mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5], num_classes: 5}\n";

static const char *space_text =
    "version: 1\n"
    "name: tiny\n"
    "fidelity: {name: epochs, min: 1, max: 4}\n"
    "hyperparameters:\n"
    "  model: {type: categorical, choices: [placeholder]}\n"
    "  opt: {type: categorical, choices: [sgd, momentum, adamw, adamp], default: adamw}\n"
    "  lr: {type: float, range: [1.0e-3, 3.0e-2], log: true}\n"
    "  batch_size: {type: ordinal, choices: [8, 16]}\n"
    "  drop: {type: ordinal, choices: [0, 0.1]}\n"
    "  data_augmentation: {type: categorical, choices: [none]}\n"
    "  smoothing: {type: float, range: [0, 0.2]}\n";

static void make_fixtures(void) {
  if (data_dir[0]) return;
  qt_log_set_level(QT_LOG_LEVEL_ERROR);
  char path[1024];
  qt_test_temp_path("data", data_dir, sizeof data_dir);
  CU_ASSERT_FATAL(qt_mkdir_p(data_dir, NULL) == 0);
  qt_tiny_write_idx(data_dir, 120, 8, 99);
  qt_tiny_write_hub(qt_test_temp_path("hub", path, sizeof path), hub_more, hub_path,
                    sizeof hub_path);
  qt_test_temp_path("hub/broken.safetensors", path, sizeof path);
  qt_tiny_write_file(path, "not a safetensors file at all, just text", 40);
  qt_test_temp_path("space.yaml", space_path, sizeof space_path);
  qt_tiny_write_file(space_path, space_text, strlen(space_text));
}

static qt_search_params base_params(const char *run_name, char *run_dir, size_t size) {
  make_fixtures();
  qt_test_temp_path(run_name, run_dir, size);
  qt_search_params p = qt_tiny_search_params(run_dir, data_dir, hub_path, space_path);
  p.pool_size = 12;
  p.seed = 3;
  return p;
}

/* The journal's records of one type, as "trial epoch score" lines. */
static char *epoch_sequence(const char *run_dir) {
  char path[1024];
  snprintf(path, sizeof path, "%s/journal.jsonl", run_dir);
  qt_journal_log log;
  if (qt_journal_read(path, &log, NULL) != 0) return strdup("(no journal)");
  size_t cap = 64 + log.count * 64, used = 0;
  char *text = malloc(cap);
  text[0] = '\0';
  for (size_t i = 0; i < log.count; i++) {
    const qt_journal_record *r = &log.records[i];
    if (r->type == QT_JOURNAL_EPOCH_END)
      used += (size_t)snprintf(text + used, cap - used, "%ld %ld %.17g\n", r->trial, r->epoch,
                               r->score);
    else if (r->type == QT_JOURNAL_TRIAL_FAILED)
      used +=
          (size_t)snprintf(text + used, cap - used, "%ld %ld %s\n", r->trial, r->epoch, r->status);
  }
  qt_journal_log_free(&log);
  return text;
}

static size_t count_type(const char *run_dir, qt_journal_type type) {
  char path[1024];
  snprintf(path, sizeof path, "%s/journal.jsonl", run_dir);
  qt_journal_log log;
  if (qt_journal_read(path, &log, NULL) != 0) return 0;
  size_t n = 0;
  for (size_t i = 0; i < log.count; i++) n += log.records[i].type == type;
  qt_journal_log_free(&log);
  return n;
}

/* ------------------------------------------------------------------------- */
/* qt_space_with_choices                                                      */
/* ------------------------------------------------------------------------- */

static void test_space_with_choices(void) {
  const char *text =
      "version: 1\nname: s\nfidelity: {name: epochs, min: 1, max: 5}\n"
      "hyperparameters:\n"
      "  model: {type: categorical, choices: [m1, m2, m3], default: m2}\n"
      "  lr: {type: float, range: [0.001, 0.1], log: true}\n"
      "  depth_hint: {type: integer, range: [1, 4], active_when: {model: [m1, m3]}}\n";
  qt_space_t *space = NULL, *copy = NULL;
  CU_ASSERT_FATAL(qt_space_load_string(text, strlen(text), "s.yaml", &space, NULL) == 0);
  const char *choices[] = {"x", "m3", "y", "z"};
  qt_err err;
  CU_ASSERT_FATAL(qt_space_with_choices(space, "model", choices, 4, &copy, &err) == 0);
  size_t hp;
  CU_ASSERT_FATAL(qt_space_find(copy, "model", &hp) == 0);
  CU_ASSERT_EQUAL(qt_space_hp_choice_count(copy, hp), 4);
  CU_ASSERT_STRING_EQUAL(qt_space_hp_choice(copy, hp, 2), "y");
  CU_ASSERT_STRING_EQUAL(qt_space_source(copy), "s.yaml+model");
  /* 4 one-hot + lr + depth_hint + its active column. */
  CU_ASSERT_EQUAL(qt_space_encoded_dim(copy), 7);
  double def;
  CU_ASSERT_EQUAL(qt_space_hp_default(copy, hp, &def), 1);
  CU_ASSERT_EQUAL(def, 0.0); /* m2 is gone: the first choice */
  /* depth_hint stays conditional on m3 (now choice 1) only. */
  size_t child;
  CU_ASSERT_FATAL(qt_space_find(copy, "depth_hint", &child) == 0);
  qt_space_condition c;
  qt_space_hp_condition(copy, child, 0, &c);
  CU_ASSERT_EQUAL(c.value_count, 1);
  CU_ASSERT_EQUAL(c.values[0], 1);
  qt_config config;
  CU_ASSERT_FATAL(qt_config_init(&config, copy, NULL) == 0);
  CU_ASSERT_EQUAL(qt_config_set_string(&config, "model", "z", NULL), 0);
  CU_ASSERT_EQUAL(qt_config_set_string(&config, "model", "m1", NULL), QT_ERANGE);
  qt_config_free(&config);
  qt_space_free(copy);
  /* The original is untouched. */
  CU_ASSERT_EQUAL(qt_space_hp_choice_count(space, hp), 3);
  const char *dup[] = {"a", "a"};
  CU_ASSERT_EQUAL(qt_space_with_choices(space, "model", dup, 2, &copy, NULL), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_space_with_choices(space, "lr", choices, 2, &copy, NULL), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_space_with_choices(space, "nope", choices, 2, &copy, NULL), QT_ENOENT);
  CU_ASSERT_PTR_NULL(copy);
  qt_space_free(space);
}

/* ------------------------------------------------------------------------- */
/* A search, failure isolation, export                                        */
/* ------------------------------------------------------------------------- */

static void test_search_runs_and_isolates_failures(void) {
  char run_dir[512];
  qt_search_params p = base_params("run-basic", run_dir, sizeof run_dir);
  p.max_epochs_total = 10;
  qt_search_result r;
  qt_err err;
  int rc = qt_search_run(&p, &r, &err);
  if (rc != 0) fprintf(stderr, "search: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT_STRING_EQUAL(r.end_reason, "max-epochs");
  CU_ASSERT_EQUAL(r.epochs, 10);
  CU_ASSERT(r.best_trial >= 0);
  CU_ASSERT(r.best_score >= 0.0 && r.best_score <= 1.0);
  CU_ASSERT_EQUAL(r.overshoot_s, 0.0);
  /* The corrupt checkpoint's trials failed, and the search went on. */
  size_t failed = count_type(run_dir, QT_JOURNAL_TRIAL_FAILED);
  CU_ASSERT(failed >= 1);
  CU_ASSERT_EQUAL(count_type(run_dir, QT_JOURNAL_EPOCH_END), 10);
  CU_ASSERT_EQUAL(count_type(run_dir, QT_JOURNAL_RUN_END), 1);
  char path[1024];
  snprintf(path, sizeof path, "%s/incumbent.safetensors", run_dir);
  CU_ASSERT_EQUAL(access(path, R_OK), 0);
  snprintf(path, sizeof path, "%s/run.yaml", run_dir);
  CU_ASSERT_EQUAL(access(path, R_OK), 0);
  snprintf(path, sizeof path, "%s/trials/%ld/curve.csv", run_dir, r.best_trial);
  CU_ASSERT_EQUAL(access(path, R_OK), 0);
  /* The weights of the incumbent epoch. */
  snprintf(path, sizeof path, "%s/best.safetensors", run_dir);
  rc = qt_search_export_weights(run_dir, path, &err);
  if (rc != 0) fprintf(stderr, "export: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL(rc, 0);
  qt_safetensors_t *st = NULL;
  CU_ASSERT_EQUAL(qt_safetensors_open(path, &st, NULL), 0);
  size_t index;
  if (st) CU_ASSERT_EQUAL(qt_safetensors_find(st, "head.weight", &index), 0);
  qt_safetensors_free(st);
  /* Configurations the engine cannot run yet were replaced in the pool. */
  qt_run_spec probe = qt_run_default_spec();
  if (qt_run_spec_set(&probe, "opt", "adamp", NULL) == QT_ENOTIMPL) {
    char journal[1024];
    snprintf(journal, sizeof journal, "%s/journal.jsonl", run_dir);
    qt_journal_log log;
    CU_ASSERT_FATAL(qt_journal_read(journal, &log, NULL) == 0);
    size_t created = 0;
    for (size_t i = 0; i < log.count; i++) {
      const qt_journal_record *rec = &log.records[i];
      if (rec->type != QT_JOURNAL_TRIAL_CREATED) continue;
      created++;
      for (size_t k = 0; k < rec->n_values; k++)
        if (strcmp(rec->names[k], "opt") == 0) CU_ASSERT_STRING_NOT_EQUAL(rec->values[k], "adamp");
    }
    CU_ASSERT(created >= 3);
    qt_journal_log_free(&log);
  }
  /* At most one checkpoint per trial is kept. */
  for (size_t t = 0; t < p.pool_size; t++) {
    int kept = 0;
    for (long e = 1; e <= p.max_epochs; e++) {
      snprintf(path, sizeof path, "%s/trials/%zu/checkpoint-e%ld.safetensors", run_dir, t, e);
      kept += access(path, R_OK) == 0;
    }
    CU_ASSERT(kept <= 1);
  }
}

/* ------------------------------------------------------------------------- */
/* Resume                                                                     */
/* ------------------------------------------------------------------------- */

static void test_resume_replays_and_continues(void) {
  char dir_a[512], dir_b[512];
  qt_search_params a = base_params("run-resume", dir_a, sizeof dir_a);
  qt_search_params b = base_params("run-straight", dir_b, sizeof dir_b);
  a.optimizer = b.optimizer = "asha";
  a.pool_size = b.pool_size = 20;
  a.max_epochs_total = 6;
  b.max_epochs_total = 14;
  qt_search_result r;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_search_run(&a, &r, &err), 0);
  CU_ASSERT_EQUAL(r.epochs, 6);
  /* The same command with a larger limit and an extension resumes. */
  a.max_epochs_total = 14;
  a.extend_s = 600;
  a.budget_s = 1; /* ignored on resume: the journal's budget counts */
  int rc = qt_search_run(&a, &r, &err);
  if (rc != 0) fprintf(stderr, "resume: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT_EQUAL(r.epochs, 14);
  CU_ASSERT_EQUAL(r.budget_s, 3600 + 600);
  CU_ASSERT_EQUAL(count_type(dir_a, QT_JOURNAL_RUN_START), 2);
  CU_ASSERT_EQUAL_FATAL(qt_search_run(&b, &r, &err), 0);
  char *seq_a = epoch_sequence(dir_a), *seq_b = epoch_sequence(dir_b);
  CU_ASSERT_STRING_EQUAL(seq_a, seq_b);
  CU_ASSERT(strlen(seq_a) > 20);
  free(seq_a);
  free(seq_b);

  /* Other settings are refused, naming what differs. */
  a.seed = 4;
  rc = qt_search_run(&a, &r, &err);
  CU_ASSERT_EQUAL(rc, QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "seed"));
  a.seed = 3;
  a.pool_size = 21;
  CU_ASSERT_EQUAL(qt_search_run(&a, &r, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "pool_size"));
  /* --overwrite starts over. */
  a.mode = QT_SEARCH_MODE_OVERWRITE;
  a.max_epochs_total = 3;
  a.budget_s = 3600;
  CU_ASSERT_EQUAL(qt_search_run(&a, &r, &err), 0);
  CU_ASSERT_EQUAL(r.epochs, 3);
  CU_ASSERT_EQUAL(count_type(dir_a, QT_JOURNAL_RUN_START), 1);
}

/* Learning rates far too large make every trial diverge: each is recorded
 * as diverged and the search goes on to the end of the pool. */
static void test_diverging_trials_are_recorded(void) {
  char dir[512], space[512];
  qt_search_params p = base_params("run-diverge", dir, sizeof dir);
  const char *text =
      "version: 1\nname: hot\nfidelity: {name: epochs, min: 1, max: 2}\n"
      "hyperparameters:\n"
      "  model: {type: categorical, choices: [placeholder]}\n"
      "  opt: {type: categorical, choices: [sgd]}\n"
      "  lr: {type: float, range: [1.0e+6, 1.0e+8], log: true}\n"
      "  smoothing: {type: float, range: [0, 0.1]}\n";
  qt_test_temp_path("space-hot.yaml", space, sizeof space);
  qt_tiny_write_file(space, text, strlen(text));
  p.space = space;
  p.pool_size = 6;
  p.max_epochs = 2;
  qt_search_result r;
  qt_err err;
  int rc = qt_search_run(&p, &r, &err);
  if (rc != 0) fprintf(stderr, "search: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT_STRING_EQUAL(r.end_reason, "done");
  CU_ASSERT_EQUAL(r.trials, 6);
  char journal[1024];
  snprintf(journal, sizeof journal, "%s/journal.jsonl", dir);
  qt_journal_log log;
  CU_ASSERT_FATAL(qt_journal_read(journal, &log, NULL) == 0);
  size_t diverged = 0, failed = 0;
  for (size_t i = 0; i < log.count; i++) {
    if (log.records[i].type != QT_JOURNAL_TRIAL_FAILED) continue;
    failed++;
    diverged += strcmp(log.records[i].status, "diverged") == 0;
  }
  qt_journal_log_free(&log);
  CU_ASSERT_EQUAL(failed, 6 - (size_t)r.epochs / 2);
  CU_ASSERT(diverged >= 1);
}

/* A journal that does not match the optimizer's suggestions is refused. */
static void test_diverging_journal_is_refused(void) {
  char dir[512];
  qt_search_params p = base_params("run-tampered", dir, sizeof dir);
  p.max_epochs_total = 3;
  qt_search_result r;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_search_run(&p, &r, &err), 0);
  char path[1024];
  snprintf(path, sizeof path, "%s/journal.jsonl", dir);
  char *text = NULL;
  size_t length = 0;
  CU_ASSERT_FATAL(qt_file_read(path, &text, &length, NULL) == 0);
  char *suggest = strstr(text, "\"type\":\"suggest\"");
  CU_ASSERT_FATAL(suggest != NULL);
  char *trial = strstr(suggest, "\"trial\":");
  CU_ASSERT_FATAL(trial != NULL);
  trial[8] = trial[8] == '9' ? '8' : '9'; /* another candidate */
  FILE *f = fopen(path, "wb");
  CU_ASSERT_FATAL(f != NULL);
  fwrite(text, 1, length, f);
  fclose(f);
  free(text);
  p.max_epochs_total = 6;
  CU_ASSERT_EQUAL(qt_search_run(&p, &r, &err), QT_ESCHEMA);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "diverges from the optimizer at line 2"));
}

/* Occurrences of "epoch_end" records in run_dir's journal. */
static int journal_epochs(const char *run_dir) {
  char path[1024];
  snprintf(path, sizeof path, "%s/journal.jsonl", run_dir);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  int n = 0;
  char line[8192];
  while (fgets(line, sizeof line, f)) n += strstr(line, "\"epoch_end\"") != NULL;
  fclose(f);
  return n;
}

/* Runs the qtune binary on run_dir. kill_at_epochs > 0: once its journal
 * holds that many epoch_end records, waits extra_ms and kills it with
 * SIGKILL. Returns the exit status, or -1 when killed. */
static int run_binary(const char *run_dir, const char *optimizer, int kill_at_epochs,
                      int extra_ms) {
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open("/dev/null", O_WRONLY);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execl(QT_QTUNE_BINARY, "qtune", "search", "--data", data_dir, "--hub", hub_path, "--space",
          space_path, "--budget", "1h", "--run-dir", run_dir, "--optimizer", optimizer, "--seed",
          "3", "--pool", "12", "--max-epochs", "3", "--max-epochs-total", "12", "--threads", "1",
          "--log-level", "error", (char *)NULL);
    _exit(127);
  }
  int status = 0;
  if (kill_at_epochs > 0) {
    struct timespec poll = {0, 1000000L};
    for (;;) {
      if (waitpid(pid, &status, WNOHANG) == pid)
        return WIFSIGNALED(status) ? -1 : WEXITSTATUS(status);
      if (journal_epochs(run_dir) >= kill_at_epochs) break;
      nanosleep(&poll, NULL);
    }
    struct timespec ts = {extra_ms / 1000, (long)(extra_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
  }
  waitpid(pid, &status, 0);
  if (WIFSIGNALED(status)) return -1;
  return WEXITSTATUS(status);
}

/* Kills the binary at random points of up to `attempts` sessions (each a
 * few epochs further than the journal holds, plus a random delay within an
 * epoch's bookkeeping), then lets one finish; the epochs must be those of
 * an uninterrupted run. */
static void kill_and_resume(const char *optimizer, const char *name, int attempts) {
  make_fixtures();
  char ref[512], dir[512];
  snprintf(ref, sizeof ref, "%s/ref-%s", qt_test_temp_dir(), name);
  snprintf(dir, sizeof dir, "%s/killed-%s", qt_test_temp_dir(), name);
  CU_ASSERT_EQUAL_FATAL(run_binary(ref, optimizer, 0, 0), 0);
  char *expected = epoch_sequence(ref);
  srand(12345);
  int kills = 0, status = -1;
  for (int attempt = 0; attempt <= attempts && status != 0; attempt++) {
    int at = attempt < attempts ? journal_epochs(dir) + 1 + rand() % 3 : 0;
    status = run_binary(dir, optimizer, at, rand() % 15);
    if (status == -1) kills++;
    CU_ASSERT(status == 0 || status == -1);
  }
  CU_ASSERT_EQUAL(status, 0);
  CU_ASSERT(kills >= 1);
  CU_ASSERT(count_type(dir, QT_JOURNAL_RUN_START) >= 2);
  char *got = epoch_sequence(dir);
  CU_ASSERT_STRING_EQUAL(got, expected);
  if (strcmp(got, expected) != 0) fprintf(stderr, "expected:\n%s\ngot:\n%s\n", expected, got);
  fprintf(stderr, "  (%s: %d kills, %zu sessions)\n", optimizer, kills,
          count_type(dir, QT_JOURNAL_RUN_START));
  free(got);
  free(expected);
}

static void test_kill_and_resume_random(void) {
  kill_and_resume("random", "random", 4);
}
static void test_kill_and_resume_asha(void) {
  kill_and_resume("asha", "asha", 4);
}
static void test_kill_and_resume_quicktune(void) {
  kill_and_resume("quicktune-MC", "qt", 2);
}

/* ------------------------------------------------------------------------- */
/* Lock, budget, Ctrl-C                                                       */
/* ------------------------------------------------------------------------- */

static void test_lock_refuses_second_writer(void) {
  char dir[512];
  qt_search_params p = base_params("run-locked", dir, sizeof dir);
  CU_ASSERT_FATAL(qt_mkdir_p(dir, NULL) == 0);
  int fd = -1;
  CU_ASSERT_EQUAL_FATAL(qt_rundir_lock(dir, &fd, NULL), 0);
  qt_search_result r;
  qt_err err;
  CU_ASSERT_EQUAL(qt_search_run(&p, &r, &err), QT_EBUSY);
  qt_rundir_unlock(fd);
  p.max_epochs_total = 1;
  CU_ASSERT_EQUAL(qt_search_run(&p, &r, &err), 0);
}

/* The largest clock seconds one epoch took: from its epoch_begin to the
 * next epoch_begin, suggest or run_end (so with its bookkeeping). */
static double max_epoch_clock(const char *run_dir) {
  char path[1024];
  snprintf(path, sizeof path, "%s/journal.jsonl", run_dir);
  qt_journal_log log;
  if (qt_journal_read(path, &log, NULL) != 0) return NAN;
  double worst = 0.0, begin = NAN;
  for (size_t i = 0; i < log.count; i++) {
    const qt_journal_record *r = &log.records[i];
    int next = r->type == QT_JOURNAL_EPOCH_BEGIN || r->type == QT_JOURNAL_SUGGEST ||
               r->type == QT_JOURNAL_RUN_END;
    if (next && isfinite(begin) && r->t - begin > worst) worst = r->t - begin;
    if (next) begin = NAN;
    if (r->type == QT_JOURNAL_EPOCH_BEGIN) begin = r->t;
  }
  qt_journal_log_free(&log);
  return worst;
}

static void test_budget_stop_overshoot(void) {
  char dir[512];
  qt_search_params p = base_params("run-budget", dir, sizeof dir);
  char mid[512];
  qt_test_temp_path("data-mid", mid, sizeof mid);
  CU_ASSERT_FATAL(qt_mkdir_p(mid, NULL) == 0);
  qt_tiny_write_idx(mid, 900, 8, 99);
  p.data = mid;
  p.pool_size = 20;
  p.max_epochs = 4;
  p.budget_s = 0.4;
  qt_search_result r;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_search_run(&p, &r, &err), 0);
  CU_ASSERT_STRING_EQUAL(r.end_reason, "budget");
  CU_ASSERT(r.epochs >= 1);
  double epoch = max_epoch_clock(dir);
  fprintf(stderr, "  (budget %.2fs used %.3fs overshoot %.4fs, longest epoch %.4fs, %ld epochs)\n",
          r.budget_s, r.used_s, r.overshoot_s, epoch, r.epochs);
  /* Under one epoch's cost (the prediction is the last such cost) plus
   * slack for one batch and the final fsync. */
  CU_ASSERT(r.overshoot_s <= epoch + 0.02);
  CU_ASSERT(r.used_s >= r.budget_s - 2.0 * epoch - 0.05);
}

/* An epoch longer than the budget is cut by the engine's stop hook within
 * one batch; the epoch stays begun and not ended, and --extend resumes it. */
static void test_budget_stops_inside_epoch(void) {
  make_fixtures();
  char big[512], dir[512];
  qt_test_temp_path("data-big", big, sizeof big);
  CU_ASSERT_FATAL(qt_mkdir_p(big, NULL) == 0);
  qt_tiny_write_idx(big, 20000, 8, 99);
  qt_search_params p = base_params("run-cut", dir, sizeof dir);
  p.data = big;
  p.mode = QT_SEARCH_MODE_OVERWRITE;
  qt_search_result r;
  qt_err err;
  /* The smallest budget that lets the first epoch begin (setting up takes
   * longer on a loaded machine or under a sanitizer), far below the epoch. */
  for (p.budget_s = 0.03; p.budget_s < 3.0; p.budget_s *= 3.0) {
    CU_ASSERT_EQUAL_FATAL(qt_search_run(&p, &r, &err), 0);
    if (count_type(dir, QT_JOURNAL_EPOCH_BEGIN) > 0) break;
  }
  p.mode = QT_SEARCH_MODE_AUTO;
  fprintf(stderr, "  (budget %.2fs used %.4fs overshoot %.4fs, %ld epochs)\n", r.budget_s, r.used_s,
          r.overshoot_s, r.epochs);
  CU_ASSERT_STRING_EQUAL(r.end_reason, "budget");
  CU_ASSERT_EQUAL(r.epochs, 0);
  CU_ASSERT(r.overshoot_s < 0.02);
  CU_ASSERT_EQUAL(count_type(dir, QT_JOURNAL_EPOCH_BEGIN), 1);
  CU_ASSERT_EQUAL(count_type(dir, QT_JOURNAL_EPOCH_END), 0);
  p.extend_s = 60;
  p.max_epochs_total = 2;
  CU_ASSERT_EQUAL(qt_search_run(&p, &r, &err), 0);
  CU_ASSERT_STRING_EQUAL(r.end_reason, "max-epochs");
  CU_ASSERT_EQUAL(r.epochs, 2);
}

/* --max-disk: checkpoints are evicted, an evicted trial fails when it is
 * continued, and the search goes on. */
static void test_max_disk_evicts(void) {
  char dir[512];
  qt_search_params p = base_params("run-disk", dir, sizeof dir);
  p.optimizer = "asha";
  p.pool_size = 20;
  p.max_disk = 1; /* nothing fits: keep only what must be kept */
  qt_search_result r;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_search_run(&p, &r, &err), 0);
  CU_ASSERT_STRING_EQUAL(r.end_reason, "done");
  CU_ASSERT(r.epochs >= 14);
  char path[1024];
  snprintf(path, sizeof path, "%s/journal.jsonl", dir);
  qt_journal_log log;
  CU_ASSERT_FATAL(qt_journal_read(path, &log, NULL) == 0);
  size_t evicted = 0;
  for (size_t i = 0; i < log.count; i++)
    if (log.records[i].type == QT_JOURNAL_TRIAL_FAILED && log.records[i].reason &&
        strcmp(log.records[i].reason, "checkpoint evicted") == 0)
      evicted++;
  qt_journal_log_free(&log);
  CU_ASSERT(evicted >= 1);
  /* Checkpoints left: the incumbent's trial and the last one stepped. */
  size_t kept = 0;
  for (size_t t = 0; t < p.pool_size; t++)
    for (long e = 1; e <= p.max_epochs; e++) {
      snprintf(path, sizeof path, "%s/trials/%zu/checkpoint-e%ld.safetensors", dir, t, e);
      kept += access(path, R_OK) == 0;
    }
  CU_ASSERT(kept <= 2);
  snprintf(path, sizeof path, "%s/incumbent.safetensors", dir);
  CU_ASSERT_EQUAL(access(path, R_OK), 0);
}

static int stop_after_calls(void *user) {
  int *calls = user;
  return ++*calls > 40;
}

static void test_interrupt_is_clean_and_resumable(void) {
  char dir[512];
  qt_search_params p = base_params("run-interrupt", dir, sizeof dir);
  int calls = 0;
  p.should_stop = stop_after_calls;
  p.user = &calls;
  qt_search_result r;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_search_run(&p, &r, &err), 0);
  CU_ASSERT_STRING_EQUAL(r.end_reason, "interrupted");
  CU_ASSERT_EQUAL(count_type(dir, QT_JOURNAL_RUN_END), 1);
  p.should_stop = NULL;
  p.max_epochs_total = r.epochs + 2;
  long before = r.epochs;
  CU_ASSERT_EQUAL(qt_search_run(&p, &r, &err), 0);
  CU_ASSERT_EQUAL(r.epochs, before + 2);
}

/* ------------------------------------------------------------------------- */
/* The exported configuration reproduces the score                           */
/* ------------------------------------------------------------------------- */

static void test_finetune_reproduces_best(void) {
  char dir[512];
  qt_search_params p = base_params("run-export", dir, sizeof dir);
  p.max_epochs_total = 8;
  qt_search_result r;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_search_run(&p, &r, &err), 0);
  int rc = qt_search_export(dir, &err);
  if (rc != 0) fprintf(stderr, "export: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  char cmd[4096], out_dir[600];
  snprintf(out_dir, sizeof out_dir, "%s/refit", dir);
  snprintf(cmd, sizeof cmd,
           "%s finetune --config %s/summary/best_config.yaml --hub %s --data %s --space %s "
           "--out %s > %s/finetune.log 2>&1",
           QT_QTUNE_BINARY, dir, hub_path, data_dir, space_path, out_dir, dir);
  rc = system(cmd);
  CU_ASSERT_EQUAL(rc, 0);
  if (rc != 0) {
    snprintf(cmd, sizeof cmd, "cat %s/finetune.log %s/summary/best_config.yaml >&2", dir, dir);
    if (system(cmd) != 0) fprintf(stderr, "cat failed\n");
    return;
  }
  /* The last row of curve.csv is the best epoch's. */
  char path[1024], line[512], last[512] = "";
  snprintf(path, sizeof path, "%s/curve.csv", out_dir);
  FILE *f = fopen(path, "r");
  CU_ASSERT_FATAL(f != NULL);
  while (fgets(line, sizeof line, f)) snprintf(last, sizeof last, "%s", line);
  fclose(f);
  long epoch = 0;
  double train_loss, val_loss, top1;
  CU_ASSERT_EQUAL(sscanf(last, "%ld,%lf,%lf,%lf", &epoch, &train_loss, &val_loss, &top1), 4);
  CU_ASSERT_EQUAL(epoch, r.best_epoch);
  QT_ASSERT_CLOSE(top1, r.best_score, 1e-8);
}

/* The command line: one grep-friendly line per epoch off a terminal, and
 * the final line with budget, time used and overshoot. */
static void test_cli_progress_lines(void) {
  make_fixtures();
  char dir[512], cmd[4096], line[1024];
  qt_test_temp_path("run-cli", dir, sizeof dir);
  snprintf(cmd, sizeof cmd,
           "%s search --data %s --hub %s --space %s --budget 10m --run-dir %s --optimizer random "
           "--pool 6 --max-epochs 2 --max-epochs-total 4 --threads 1 --log-level error 2>&1",
           QT_QTUNE_BINARY, data_dir, hub_path, space_path, dir);
  FILE *f = popen(cmd, "r");
  CU_ASSERT_FATAL(f != NULL);
  int epochs = 0, final = 0;
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, "epoch trial=", 12) == 0 && strstr(line, " score=") &&
        strstr(line, " best=") && strstr(line, " clock=0:00:0") && strstr(line, "/0:10:00"))
      epochs++;
    const char *head = "search: max-epochs; budget 0:10:00, used 0:00:0";
    if (strncmp(line, head, strlen(head)) == 0 && strstr(line, "overshoot 0s; ") &&
        strstr(line, ", 4 epochs; best trial "))
      final++;
  }
  CU_ASSERT_EQUAL(pclose(f), 0);
  CU_ASSERT_EQUAL(epochs, 4);
  CU_ASSERT_EQUAL(final, 1);
  /* Without --budget on a new run directory: a usage error. */
  snprintf(cmd, sizeof cmd, "%s search --data %s --hub %s --run-dir %s/new > /dev/null 2>&1",
           QT_QTUNE_BINARY, data_dir, hub_path, dir);
  int status = system(cmd);
  CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 1);
  /* --device: an unknown name is a usage error, another GPU than the
   * first not implemented, cpu searches as before; cuda without a GPU
   * fails at the start saying so. */
  const struct {
    const char *device;
    int code;
  } devices[] = {{"tpu", 1}, {"cuda:1", 3}, {"cpu", 0}, {"cuda", 3}};
  int gpus = 0;
  qt_cuda_device_count(&gpus, NULL);
  for (size_t k = 0; k < sizeof devices / sizeof devices[0]; k++) {
    if (gpus > 0 && strcmp(devices[k].device, "cuda") == 0) continue;
    snprintf(cmd, sizeof cmd,
             "%s search --data %s --hub %s --space %s --budget 10m --run-dir %s/device-%zu "
             "--optimizer random --pool 4 --max-epochs 1 --max-epochs-total 1 --threads 1 "
             "--device %s --log-level error > %s/device-%zu.txt 2>&1",
             QT_QTUNE_BINARY, data_dir, hub_path, space_path, dir, k, devices[k].device, dir, k);
    status = system(cmd);
    CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == devices[k].code);
  }
}

/* ------------------------------------------------------------------------- */
/* The default surrogate                                                      */
/* ------------------------------------------------------------------------- */

/* A surrogate (untrained, seeded) for the search over hub's usable models,
 * or, with only_model, over a space whose model is that one alone. */
static void write_surrogate(const char *path, const char *only_model) {
  qt_err err;
  qt_err_clear(&err);
  qt_space_t *base = NULL, *space = NULL;
  qt_search_models m;
  memset(&m, 0, sizeof m);
  CU_ASSERT_EQUAL_FATAL(qt_space_load_file(space_path, &base, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_search_models_load(hub_path, base, &m, &err), 0);
  const char *one[] = {only_model};
  if (only_model)
    CU_ASSERT_EQUAL_FATAL(qt_space_with_choices(base, "model", one, 1, &space, &err), 0);
  const qt_space_t *target = only_model ? space : m.space;
  qt_dkl_config config = qt_dkl_space_config(target, 4);
  qt_rng_t *rng = NULL;
  qt_dkl_t *dkl = NULL;
  qt_costnet_t *cost = NULL;
  qt_surrogate_t *surrogate = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, 5, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_dkl_init(&dkl, &config, rng, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_costnet_init(&cost, &config, rng, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_surrogate_create(target, dkl, cost, NULL, &surrogate, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_surrogate_save(surrogate, path, &err), 0);
  qt_surrogate_free(surrogate);
  qt_costnet_free(cost);
  qt_dkl_free(dkl);
  qt_rng_free(rng);
  qt_space_free(space);
  qt_search_models_free(&m);
  qt_space_free(base);
}

/* run.yaml's value of key (static buffer; "" when absent). */
static const char *run_setting(const char *run_dir, const char *key) {
  static char value[1024];
  char path[1024];
  snprintf(path, sizeof path, "%s/run.yaml", run_dir);
  value[0] = '\0';
  qt_yaml_doc_t *doc = NULL;
  if (qt_yaml_load_file(path, &doc, NULL) != 0) return value;
  const char *text = qt_yaml_scalar(doc, qt_yaml_get(doc, qt_yaml_root(doc), key));
  snprintf(value, sizeof value, "%s", text ? text : "");
  qt_yaml_free(doc);
  return value;
}

/* The shipped surrogate is used when it fits the space and the hub's
 * models, skipped when it does not, an error when damaged, and a resumed
 * search keeps the choice it started with. */
static void test_default_surrogate(void) {
  char fits[1024], other[1024], damaged[1024], run_dir[512];
  qt_search_params p = base_params("run-default-fits", run_dir, sizeof run_dir);
  qt_test_temp_path("default-fits.qts", fits, sizeof fits);
  qt_test_temp_path("default-other.qts", other, sizeof other);
  qt_test_temp_path("default-damaged.qts", damaged, sizeof damaged);
  write_surrogate(fits, NULL);
  write_surrogate(other, "tiny_a");
  qt_tiny_write_file(damaged, "QTSURROG and then nothing useful", 32);
  qt_search_result r;
  qt_err err;
  qt_err_clear(&err);

  p.optimizer = NULL;
  p.default_surrogate = fits;
  p.max_epochs_total = 2;
  int rc = qt_search_run(&p, &r, &err);
  if (rc != 0) fprintf(stderr, "search: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT_STRING_EQUAL(run_setting(run_dir, "optimizer"), "quicktune");
  CU_ASSERT_PTR_NOT_NULL(strstr(run_setting(run_dir, "surrogate"), "default-fits.qts"));

  /* An optimizer that reads no surrogate does not take it. */
  p = base_params("run-default-random", run_dir, sizeof run_dir);
  p.default_surrogate = fits;
  p.max_epochs_total = 1;
  rc = qt_search_run(&p, &r, &err);
  CU_ASSERT_EQUAL(rc, 0);
  CU_ASSERT_STRING_EQUAL(run_setting(run_dir, "optimizer"), "random");
  CU_ASSERT_STRING_EQUAL(run_setting(run_dir, "surrogate"), "");

  p = base_params("run-default-other", run_dir, sizeof run_dir);
  p.optimizer = NULL;
  p.default_surrogate = other;
  p.max_epochs_total = 2;
  rc = qt_search_run(&p, &r, &err);
  if (rc != 0) fprintf(stderr, "search: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT_STRING_EQUAL(run_setting(run_dir, "optimizer"), "quicktune-MC");
  CU_ASSERT_STRING_EQUAL(run_setting(run_dir, "surrogate"), "");
  /* Resumed with a default that would fit: the search keeps going without. */
  p.default_surrogate = fits;
  p.max_epochs_total = 3;
  rc = qt_search_run(&p, &r, &err);
  if (rc != 0) fprintf(stderr, "resume: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL(rc, 0);
  CU_ASSERT_STRING_EQUAL(run_setting(run_dir, "optimizer"), "quicktune-MC");

  p = base_params("run-default-damaged", run_dir, sizeof run_dir);
  p.optimizer = NULL;
  p.default_surrogate = damaged;
  rc = qt_search_run(&p, &r, &err);
  CU_ASSERT(rc < 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(qt_err_message(&err), "--surrogate none"));
}

/* ------------------------------------------------------------------------- */
/* The pool keeps the design's models                                         */
/* ------------------------------------------------------------------------- */

/* A design point the engine cannot run (here LoRA on a CNN) is redrawn with
 * its model kept: every trial's model is its Sobol point's model. */
static void test_pool_keeps_models(void) {
  make_fixtures();
  char path[1024], hub[1024], space[1024], run_dir[512];
  qt_err err;
  qt_err_clear(&err);
  qt_test_temp_path("hub/resnet.safetensors", path, sizeof path);
  CU_ASSERT_EQUAL_FATAL(qt_cnn_write_init("resnet_tiny", 5, 3, path, &err), 0);
  static const char *hub_cnn =
      "version: 1\n"
      "name: mixed\n"
      "models:\n"
      "  - {name: tiny_a, family: vit, checkpoint: a.safetensors, image_size: 8,\n"
      "     mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5], num_classes: 5, patch_size: 4, heads: 2}\n"
      "  - {name: small_cnn, family: resnet, checkpoint: resnet.safetensors, image_size: 8,\n"
      "     mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5], num_classes: 5}\n";
  static const char *space_lora =
      "version: 1\n"
      "name: lora\n"
      "fidelity: {name: epochs, min: 1, max: 4}\n"
      "hyperparameters:\n"
      "  model: {type: categorical, choices: [placeholder]}\n"
      "  lr: {type: float, range: [1.0e-3, 3.0e-2], log: true}\n"
      "  batch_size: {type: ordinal, choices: [16]}\n"
      "  adapter: {type: categorical, choices: [none, lora]}\n"
      "  adapter_rank: {type: ordinal, choices: [2, 4], active_when: {adapter: [lora]}}\n";
  qt_test_temp_path("hub/mixed.yaml", hub, sizeof hub);
  qt_tiny_write_file(hub, hub_cnn, strlen(hub_cnn));
  qt_test_temp_path("space-lora.yaml", space, sizeof space);
  qt_tiny_write_file(space, space_lora, strlen(space_lora));

  qt_search_params p = base_params("run-pool-models", run_dir, sizeof run_dir);
  p.hub = hub;
  p.space = space;
  p.pool_size = 16;
  p.max_epochs = 1;
  p.max_epochs_total = 16;
  qt_search_result r;
  int rc = qt_search_run(&p, &r, &err);
  if (rc != 0) fprintf(stderr, "search: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);

  /* The design, as the search draws it. */
  qt_space_t *base = NULL;
  qt_search_models m;
  CU_ASSERT_EQUAL_FATAL(qt_space_load_file(space, &base, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_search_models_load(hub, base, &m, &err), 0);
  qt_config design[16];
  for (size_t i = 0; i < 16; i++)
    CU_ASSERT_EQUAL_FATAL(qt_config_init(&design[i], m.space, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_space_sobol(m.space, 16, 0, design, &err), 0);
  size_t replaced_cnn = 0;
  for (size_t i = 0; i < 16; i++) {
    char model[64], adapter[64];
    qt_config_get_string(&design[i], m.model_hp, model, sizeof model);
    size_t hp;
    CU_ASSERT_EQUAL_FATAL(qt_space_find(m.space, "adapter", &hp), 0);
    qt_config_get_string(&design[i], hp, adapter, sizeof adapter);
    replaced_cnn += strcmp(model, "small_cnn") == 0 && strcmp(adapter, "lora") == 0;
  }
  CU_ASSERT(replaced_cnn >= 2); /* the test means something */

  snprintf(path, sizeof path, "%s/journal.jsonl", run_dir);
  qt_journal_log log;
  CU_ASSERT_EQUAL_FATAL(qt_journal_read(path, &log, NULL), 0);
  size_t created = 0;
  for (size_t i = 0; i < log.count; i++) {
    const qt_journal_record *rec = &log.records[i];
    if (rec->type != QT_JOURNAL_TRIAL_CREATED) continue;
    created++;
    CU_ASSERT_FATAL(rec->trial >= 0 && rec->trial < 16);
    char want[64];
    qt_config_get_string(&design[rec->trial], m.model_hp, want, sizeof want);
    for (size_t k = 0; k < rec->n_values; k++) {
      if (strcmp(rec->names[k], "model") == 0) CU_ASSERT_STRING_EQUAL(rec->values[k], want);
      /* and no CNN trial has an adapter */
      if (strcmp(rec->names[k], "adapter") == 0 && strcmp(want, "small_cnn") == 0)
        CU_ASSERT_STRING_EQUAL(rec->values[k], "none");
    }
  }
  CU_ASSERT_EQUAL(created, 16);
  qt_journal_log_free(&log);
  for (size_t i = 0; i < 16; i++) qt_config_free(&design[i]);
  qt_search_models_free(&m);
  qt_space_free(base);
}

static const qt_test_case cases[] = {
    {"space_with_choices", test_space_with_choices},
    {"search_runs_and_isolates_failures", test_search_runs_and_isolates_failures},
    {"resume_replays_and_continues", test_resume_replays_and_continues},
    {"diverging_trials_are_recorded", test_diverging_trials_are_recorded},
    {"diverging_journal_is_refused", test_diverging_journal_is_refused},
    {"kill_and_resume_random", test_kill_and_resume_random},
    {"kill_and_resume_asha", test_kill_and_resume_asha},
    {"kill_and_resume_quicktune", test_kill_and_resume_quicktune},
    {"lock_refuses_second_writer", test_lock_refuses_second_writer},
    {"budget_stop_overshoot", test_budget_stop_overshoot},
    {"budget_stops_inside_epoch", test_budget_stops_inside_epoch},
    {"max_disk_evicts", test_max_disk_evicts},
    {"interrupt_is_clean_and_resumable", test_interrupt_is_clean_and_resumable},
    {"finetune_reproduces_best", test_finetune_reproduces_best},
    {"cli_progress_lines", test_cli_progress_lines},
    {"default_surrogate", test_default_surrogate},
    {"pool_keeps_models", test_pool_keeps_models},
    {NULL, NULL}};

QT_TEST_MAIN("search", cases)

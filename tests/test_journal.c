/*
 * test_journal.c - the run directory's journal, lock, the search summary,
 * `qtune status` and `qtune export` (without weights).
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bo/qt_bo.h"
#include "core/qt_core.h"
#include "qt_test.h"

/* ------------------------------------------------------------------------- */
/* Helpers                                                                    */
/* ------------------------------------------------------------------------- */

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "wb");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  fputs(text, f);
  fclose(f);
}

static char *read_text(const char *path) {
  char *data = NULL;
  if (qt_file_read(path, &data, NULL, NULL) != 0) return NULL;
  return data;
}

static long file_size(const char *path) {
  struct stat info;
  return stat(path, &info) == 0 ? (long)info.st_size : -1;
}

/* A fresh folder under the test's temporary folder. */
static const char *fresh_dir(const char *name, char *buf, size_t size) {
  qt_test_temp_path(name, buf, size);
  qt_test_remove_tree(buf);
  CU_ASSERT_EQUAL_FATAL(qt_mkdir_p(buf, NULL), 0);
  return buf;
}

/* Runs qtune with the given arguments; returns its exit code and keeps what
 * it printed (stdout and stderr together) in `output`. */
static int run_qtune(char *output, size_t size, const char *args) {
  char command[4096];
  snprintf(command, sizeof command, "'%s' %s 2>&1", QT_QTUNE_BINARY, args);
  FILE *pipe = popen(command, "r");
  if (!pipe) return -1;
  size_t used = fread(output, 1, size - 1, pipe);
  output[used] = '\0';
  int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static char out[1 << 22];

static const char *const config_names[] = {"opt", "lr", "batch_size"};
static const char *const config_values[] = {"adamw", "0.001", "32"};

/* One record of every type, every field a type uses set to a value that
 * needs all of its digits. */
static size_t every_record(qt_journal_record *r) {
  size_t n = 0;
  r[n] = qt_journal_record_init(QT_JOURNAL_RUN_START);
  r[n].t = 0;
  r[n].session = 1;
  r[n].time = "2026-11-25T21:00:00Z";
  r[n].hash = "abc123";
  r[n].budget_s = 3600;
  r[n].optimizer = "quicktune";
  r[n].seed = 7;
  r[n].pool = 128;
  r[n].max_epochs = 50;
  r[n].dataset = "data/with \"quotes\" and \\ and ünïcode";
  r[n].hub = "configs/hubs/default.yaml";
  r[n].space = "configs/spaces/default.yaml";
  n++;
  r[n] = qt_journal_record_init(QT_JOURNAL_SUGGEST);
  r[n].t = 0.1 + 0.2;
  r[n].trial = 3;
  r[n].target = 1;
  r[n].optimizer_s = 1.0 / 3.0;
  r[n].predicted_cost_s = 12.345678901234567;
  n++;
  r[n] = qt_journal_record_init(QT_JOURNAL_TRIAL_CREATED);
  r[n].t = 0.5;
  r[n].trial = 3;
  r[n].model = "vit_tiny_28.fashion_mnist";
  r[n].n_values = 3;
  r[n].names = config_names;
  r[n].values = config_values;
  r[n].seed = 7;
  n++;
  r[n] = qt_journal_record_init(QT_JOURNAL_EPOCH_BEGIN);
  r[n].t = 0.6;
  r[n].trial = 3;
  r[n].epoch = 1;
  r[n].predicted_cost_s = 11.5;
  n++;
  r[n] = qt_journal_record_init(QT_JOURNAL_EPOCH_END);
  r[n].t = 13.000000000000002;
  r[n].trial = 3;
  r[n].epoch = 1;
  r[n].status = "ok";
  r[n].score = 0.8123456789012345;
  r[n].top5 = 0.99;
  r[n].train_loss = 1e-300;
  r[n].val_loss = 2.5e10;
  r[n].cost_s = 12.4;
  r[n].images_per_s = 1234.5;
  n++;
  r[n] = qt_journal_record_init(QT_JOURNAL_TRIAL_FAILED);
  r[n].t = 14;
  r[n].trial = 3;
  r[n].epoch = 2;
  r[n].status = "diverged";
  r[n].reason = "loss is NaN at step 17";
  n++;
  r[n] = qt_journal_record_init(QT_JOURNAL_INCUMBENT);
  r[n].t = 13.000000000000002;
  r[n].trial = 3;
  r[n].epoch = 1;
  r[n].score = 0.8123456789012345;
  n++;
  r[n] = qt_journal_record_init(QT_JOURNAL_RUN_END);
  r[n].t = 3600.25;
  r[n].reason = "budget";
  r[n].budget_s = 3600;
  r[n].used_s = 3600.25;
  r[n].overshoot_s = 0.25;
  n++;
  return n;
}

static int same_string(const char *a, const char *b) {
  return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Bit-equal doubles, NaN equal to NaN. */
static int same_double(double a, double b) {
  return (isnan(a) && isnan(b)) || a == b;
}

static void check_same_record(const qt_journal_record *a, const qt_journal_record *b) {
  CU_ASSERT_EQUAL(a->type, b->type);
  CU_ASSERT(same_double(a->t, b->t));
  CU_ASSERT_EQUAL(a->trial, b->trial);
  CU_ASSERT_EQUAL(a->epoch, b->epoch);
  CU_ASSERT_EQUAL(a->target, b->target);
  CU_ASSERT(same_string(a->status, b->status));
  CU_ASSERT(same_string(a->reason, b->reason));
  CU_ASSERT(same_double(a->score, b->score));
  CU_ASSERT(same_double(a->top5, b->top5));
  CU_ASSERT(same_double(a->train_loss, b->train_loss));
  CU_ASSERT(same_double(a->val_loss, b->val_loss));
  CU_ASSERT(same_double(a->cost_s, b->cost_s));
  CU_ASSERT(same_double(a->images_per_s, b->images_per_s));
  CU_ASSERT(same_double(a->predicted_cost_s, b->predicted_cost_s));
  CU_ASSERT(same_double(a->optimizer_s, b->optimizer_s));
  CU_ASSERT(same_string(a->model, b->model));
  CU_ASSERT_EQUAL(a->n_values, b->n_values);
  for (size_t i = 0; i < a->n_values && i < b->n_values; i++) {
    CU_ASSERT(same_string(a->names[i], b->names[i]));
    CU_ASSERT(same_string(a->values[i], b->values[i]));
  }
  CU_ASSERT_EQUAL(a->seed, b->seed);
  CU_ASSERT_EQUAL(a->session, b->session);
  CU_ASSERT(same_string(a->time, b->time));
  CU_ASSERT(same_string(a->hash, b->hash));
  CU_ASSERT(same_string(a->optimizer, b->optimizer));
  CU_ASSERT(same_string(a->dataset, b->dataset));
  CU_ASSERT(same_string(a->hub, b->hub));
  CU_ASSERT(same_string(a->space, b->space));
  CU_ASSERT(same_double(a->budget_s, b->budget_s));
  CU_ASSERT(same_double(a->used_s, b->used_s));
  CU_ASSERT(same_double(a->overshoot_s, b->overshoot_s));
  CU_ASSERT_EQUAL(a->pool, b->pool);
  CU_ASSERT_EQUAL(a->max_epochs, b->max_epochs);
}

/* Appends records[0..n) to path through the writer. */
static void append_all(const char *path, const qt_journal_record *records, size_t n) {
  qt_journal_t *journal = NULL;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_journal_open(path, &journal, &err), 0);
  for (size_t i = 0; i < n; i++) CU_ASSERT_EQUAL(qt_journal_append(journal, &records[i], &err), 0);
  qt_journal_close(journal);
}

/* ------------------------------------------------------------------------- */
/* Journal                                                                    */
/* ------------------------------------------------------------------------- */

static void test_type_names(void) {
  const char *names[] = {"run_start", "suggest",      "trial_created", "epoch_begin",
                         "epoch_end", "trial_failed", "incumbent",     "run_end"};
  for (int i = 0; i < 8; i++)
    CU_ASSERT_STRING_EQUAL(qt_journal_type_name((qt_journal_type)i), names[i]);
  qt_journal_record r = qt_journal_record_init(QT_JOURNAL_EPOCH_END);
  CU_ASSERT_EQUAL(r.type, QT_JOURNAL_EPOCH_END);
  CU_ASSERT_EQUAL(r.trial, -1);
  CU_ASSERT_EQUAL(r.seed, -1);
  CU_ASSERT(isnan(r.score) && isnan(r.t) && isnan(r.budget_s));
  CU_ASSERT_PTR_NULL(r.model);
  CU_ASSERT_EQUAL(r.n_values, 0);
}

/* Every record type written and read back field for field, doubles bit for
 * bit; a second open appends after the first session's records. */
static void test_round_trip(void) {
  char path[512];
  qt_test_temp_path("roundtrip.jsonl", path, sizeof path);
  unlink(path);
  qt_journal_record records[16];
  size_t n = every_record(records);
  append_all(path, records, 3);
  append_all(path, records + 3, n - 3);
  qt_journal_log log;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_journal_read(path, &log, &err), 0);
  CU_ASSERT_EQUAL(log.count, n);
  CU_ASSERT_EQUAL(log.torn, 0);
  for (size_t i = 0; i < n && i < log.count; i++) check_same_record(&records[i], &log.records[i]);
  qt_journal_log_free(&log);
  /* One line per record, unset fields absent, NaN never written. */
  char *text = read_text(path);
  CU_ASSERT_PTR_NOT_NULL_FATAL(text);
  size_t lines = 0;
  for (char *p = text; *p; p++) lines += *p == '\n';
  CU_ASSERT_EQUAL(lines, n);
  CU_ASSERT_PTR_NULL(strstr(text, ":NaN"));
  CU_ASSERT_PTR_NULL(strstr(text, ":nan"));
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "{\"type\":\"suggest\",\"t\":0.30000000000000004,"));
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "\"lr\":\"0.001\""));
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "\"cost_s\":12.4,"));
  free(text);
  /* Bytes that are not UTF-8 become '?' rather than losing the record. */
  qt_journal_t *journal = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_journal_open(path, &journal, &err), 0);
  qt_journal_record odd = records[5];
  odd.reason = "bad file caf\xe9.png \xed\xa0\x80 ok \xc3\xa9";
  CU_ASSERT_EQUAL(qt_journal_append(journal, &odd, &err), 0);
  qt_journal_close(journal);
  CU_ASSERT_EQUAL_FATAL(qt_journal_read(path, &log, &err), 0);
  CU_ASSERT_EQUAL_FATAL(log.count, n + 1);
  CU_ASSERT_STRING_EQUAL(log.records[n].reason, "bad file caf?.png ??? ok \xc3\xa9");
  qt_journal_log_free(&log);
  /* A record without its clock is refused before anything is written. */
  CU_ASSERT_EQUAL_FATAL(qt_journal_open(path, &journal, &err), 0);
  qt_journal_record bad = qt_journal_record_init(QT_JOURNAL_INCUMBENT);
  CU_ASSERT_EQUAL(qt_journal_append(journal, &bad, &err), QT_EINVAL);
  qt_journal_close(journal);
  CU_ASSERT_EQUAL(qt_journal_read(path, &log, &err), 0);
  CU_ASSERT_EQUAL(log.count, n + 1);
  qt_journal_log_free(&log);
  CU_ASSERT_EQUAL(qt_journal_read("/no/such/journal.jsonl", &log, &err), QT_ENOENT);
}

/* A torn last line is skipped by readers and cut by the next writer. */
static void test_torn_last_line(void) {
  char path[512];
  qt_test_temp_path("torn.jsonl", path, sizeof path);
  unlink(path);
  qt_journal_record records[16];
  size_t n = every_record(records);
  append_all(path, records, 4);
  long complete = file_size(path);
  FILE *f = fopen(path, "ab");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  fputs("{\"type\":\"epoch_end\",\"t\":13,\"tri", f);
  fclose(f);
  qt_journal_log log;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_journal_read(path, &log, &err), 0);
  CU_ASSERT_EQUAL(log.count, 4);
  CU_ASSERT_EQUAL(log.torn, 1);
  qt_journal_log_free(&log);
  /* Opening cuts the torn line; appending continues at the boundary. */
  qt_journal_t *journal = NULL;
  qt_log_level level = qt_log_get_level();
  qt_log_set_level(QT_LOG_LEVEL_ERROR);
  CU_ASSERT_EQUAL_FATAL(qt_journal_open(path, &journal, &err), 0);
  qt_log_set_level(level);
  CU_ASSERT_EQUAL(file_size(path), complete);
  for (size_t i = 4; i < n; i++) CU_ASSERT_EQUAL(qt_journal_append(journal, &records[i], &err), 0);
  qt_journal_close(journal);
  CU_ASSERT_EQUAL_FATAL(qt_journal_read(path, &log, &err), 0);
  CU_ASSERT_EQUAL(log.count, n);
  CU_ASSERT_EQUAL(log.torn, 0);
  for (size_t i = 0; i < n && i < log.count; i++) check_same_record(&records[i], &log.records[i]);
  qt_journal_log_free(&log);
  /* A file that is nothing but a torn line reads as empty and is emptied. */
  write_text(path, "{\"type\":\"run_st");
  CU_ASSERT_EQUAL(qt_journal_read(path, &log, &err), 0);
  CU_ASSERT_EQUAL(log.count, 0);
  CU_ASSERT_EQUAL(log.torn, 1);
  qt_journal_log_free(&log);
  qt_log_set_level(QT_LOG_LEVEL_ERROR);
  CU_ASSERT_EQUAL(qt_journal_open(path, &journal, &err), 0);
  qt_log_set_level(level);
  qt_journal_close(journal);
  CU_ASSERT_EQUAL(file_size(path), 0);
}

/* A bad line that is not the last is an error naming path:line. */
static void test_bad_lines(void) {
  char path[512];
  qt_test_temp_path("bad.jsonl", path, sizeof path);
  const struct {
    const char *text, *expect;
  } cases[] = {{"{\"type\":\"run_start\",\"t\":0,\"session\":1}\n{\"type\":\"suggest\",\"t\":1,\n"
                "{\"type\":\"run_end\",\"t\":2,\"reason\":\"done\"}\n",
                ":2: not a JSON record"},
               {"{\"type\":\"run_start\",\"t\":0,\"session\":1}\n{\"type\":\"teleport\",\"t\":1}\n",
                ":2: unknown record type 'teleport'"},
               {"{\"type\":\"run_start\",\"t\":0,\"session\":1}\n\n", ":2: not a JSON record"},
               {"{\"type\":\"epoch_end\",\"t\":0,\"trial\":1,\"epoch\":1}\n",
                ":1: epoch_end record without \"score\""},
               {"{\"type\":\"suggest\",\"t\":0,\"trial\":\"x\"}\n", ":1: \"trial\" is not a"},
               {"{\"type\":\"suggest\",\"trial\":1}\n", ":1: suggest record without \"t\""},
               {"[1,2]\n", ":1: not a JSON object"},
               {NULL, NULL}};
  for (int i = 0; cases[i].text; i++) {
    write_text(path, cases[i].text);
    qt_journal_log log;
    qt_err err;
    qt_err_clear(&err);
    CU_ASSERT_EQUAL(qt_journal_read(path, &log, &err), QT_EFORMAT);
    if (!strstr(err.msg, path) || !strstr(err.msg, cases[i].expect)) {
      fprintf(stderr, "case %d: '%s' lacks '%s'\n", i, err.msg, cases[i].expect);
      CU_FAIL("message");
    }
    CU_ASSERT_PTR_NULL(log.records);
  }
  /* Unknown keys are fine (a newer writer), and so are numbers as config
   * values (a hand-edited journal). */
  write_text(path,
             "{\"type\":\"trial_created\",\"t\":1,\"trial\":2,\"model\":\"m\","
             "\"config\":{\"lr\":0.001,\"amp\":true,\"opt\":\"sgd\"},\"novel\":[1]}\n");
  qt_journal_log log;
  CU_ASSERT_EQUAL_FATAL(qt_journal_read(path, &log, NULL), 0);
  CU_ASSERT_EQUAL_FATAL(log.count, 1);
  CU_ASSERT_EQUAL_FATAL(log.records[0].n_values, 3);
  CU_ASSERT_STRING_EQUAL(log.records[0].values[0], "0.001");
  CU_ASSERT_STRING_EQUAL(log.records[0].values[1], "true");
  CU_ASSERT_STRING_EQUAL(log.records[0].values[2], "sgd");
  qt_journal_log_free(&log);
}

/* A full disk (here: RLIMIT_FSIZE, which makes write() fail with EFBIG) is
 * QT_ENOSPC and leaves the file at the last record boundary. The limit is
 * set in a child process so that the test program keeps its own. */
static void test_full_disk(void) {
  char path[512];
  qt_test_temp_path("full.jsonl", path, sizeof path);
  unlink(path);
  qt_journal_record records[16];
  size_t n = every_record(records);
  append_all(path, records, 2);
  long before = file_size(path);
  pid_t child = fork();
  CU_ASSERT_FATAL(child >= 0);
  if (child == 0) {
    signal(SIGXFSZ, SIG_IGN);
    /* Room for a few more bytes, not for the next record. */
    struct rlimit limit;
    if (getrlimit(RLIMIT_FSIZE, &limit) != 0) _exit(10);
    limit.rlim_cur = (rlim_t)before + 20;
    if (setrlimit(RLIMIT_FSIZE, &limit) != 0) _exit(10);
    qt_journal_t *journal = NULL;
    if (qt_journal_open(path, &journal, NULL) != 0) _exit(11);
    qt_err err;
    int rc = qt_journal_append(journal, &records[2], &err);
    qt_journal_close(journal);
    _exit(rc == QT_ENOSPC && strstr(err.msg, "trial_created") ? 0 : 12);
  }
  int status = 0;
  waitpid(child, &status, 0);
  CU_ASSERT(WIFEXITED(status));
  CU_ASSERT_EQUAL(WEXITSTATUS(status), 0);
  CU_ASSERT_EQUAL(file_size(path), before);
  qt_journal_log log;
  CU_ASSERT_EQUAL_FATAL(qt_journal_read(path, &log, NULL), 0);
  CU_ASSERT_EQUAL(log.count, 2);
  CU_ASSERT_EQUAL(log.torn, 0);
  qt_journal_log_free(&log);
  (void)n;
}

/* A second locker is refused with the holder's pid; the lock goes with
 * unlock and with the holder's death. */
static void test_lock(void) {
  char dir[512];
  fresh_dir("lockdir", dir, sizeof dir);
  int ready[2], release[2];
  CU_ASSERT_EQUAL_FATAL(pipe(ready), 0);
  CU_ASSERT_EQUAL_FATAL(pipe(release), 0);
  pid_t child = fork();
  CU_ASSERT_FATAL(child >= 0);
  if (child == 0) {
    int fd = -1;
    char c = qt_rundir_lock(dir, &fd, NULL) == 0 ? 'y' : 'n';
    if (write(ready[1], &c, 1) != 1) _exit(1);
    if (read(release[0], &c, 1) < 0) _exit(1);
    _exit(0); /* dies holding the lock: the kernel releases it */
  }
  char c = 0;
  CU_ASSERT_EQUAL(read(ready[0], &c, 1), 1);
  CU_ASSERT_EQUAL(c, 'y');
  int fd = -1;
  qt_err err;
  qt_err_clear(&err);
  CU_ASSERT_EQUAL(qt_rundir_lock(dir, &fd, &err), QT_EBUSY);
  CU_ASSERT_EQUAL(fd, -1);
  char expect[600];
  snprintf(expect, sizeof expect, "run directory %s is in use by process %ld", dir, (long)child);
  if (!strstr(err.msg, expect)) {
    fprintf(stderr, "'%s' lacks '%s'\n", err.msg, expect);
    CU_FAIL("lock message");
  }
  c = 'x';
  CU_ASSERT_EQUAL(write(release[1], &c, 1), 1);
  int status;
  waitpid(child, &status, 0);
  close(ready[0]);
  close(ready[1]);
  close(release[0]);
  close(release[1]);
  /* The holder is gone: the lock is free, and ours names our pid. */
  CU_ASSERT_EQUAL_FATAL(qt_rundir_lock(dir, &fd, &err), 0);
  char path[600];
  snprintf(path, sizeof path, "%s/lock", dir);
  char *text = read_text(path);
  CU_ASSERT_PTR_NOT_NULL_FATAL(text);
  CU_ASSERT_EQUAL(strtol(text, NULL, 10), (long)getpid());
  free(text);
  /* Released by unlock: locking again works. */
  qt_rundir_unlock(fd);
  CU_ASSERT_EQUAL(qt_rundir_lock(dir, &fd, &err), 0);
  qt_rundir_unlock(fd);
  qt_rundir_unlock(-1);
  CU_ASSERT_EQUAL(qt_rundir_lock("/no/such/dir", &fd, &err), QT_ENOENT);
}

/* ------------------------------------------------------------------------- */
/* A hand-written journal of two sessions                                     */
/* ------------------------------------------------------------------------- */

/* Trials: 4 (vit, 3 epochs, best 0.85 at epoch 2), 9 (resnet, diverged at
 * epoch 2 after 0.6 at epoch 1), 2 (vit, 1 epoch scored 0.85 later: a tie
 * the earlier trial 4 keeps), 5 (created, never run), 6 (began an epoch in
 * session 1 that never ended, then paused by session 2's start and running
 * again at the end). */
static const char *const hand_journal =
    "{\"type\":\"run_start\",\"t\":0,\"session\":1,\"time\":\"2026-11-25T20:00:00Z\","
    "\"hash\":\"h1\",\"budget_s\":3600,\"optimizer\":\"quicktune\",\"seed\":3,\"pool\":16,"
    "\"max_epochs\":50,\"dataset\":\"data/fm\",\"hub\":\"hub.yaml\",\"space\":\"space.yaml\"}\n"
    "{\"type\":\"suggest\",\"t\":1,\"trial\":4,\"target\":1,\"optimizer_s\":0.5,"
    "\"predicted_cost_s\":10}\n"
    "{\"type\":\"trial_created\",\"t\":1,\"trial\":4,\"model\":\"vit_tiny_28.fashion_mnist\","
    "\"config\":{\"opt\":\"adamw\",\"lr\":\"0.001\",\"batch_size\":\"32\",\"sched\":\"cosine\"},"
    "\"seed\":3}\n"
    "{\"type\":\"epoch_begin\",\"t\":1,\"trial\":4,\"epoch\":1,\"predicted_cost_s\":10}\n"
    "{\"type\":\"epoch_end\",\"t\":11,\"trial\":4,\"epoch\":1,\"status\":\"ok\",\"score\":0.7,"
    "\"top5\":0.95,\"train_loss\":1.2,\"val_loss\":0.9,\"cost_s\":10,\"images_per_s\":100}\n"
    "{\"type\":\"incumbent\",\"t\":11,\"trial\":4,\"epoch\":1,\"score\":0.7}\n"
    "{\"type\":\"suggest\",\"t\":11.5,\"trial\":9,\"target\":1,\"optimizer_s\":0.5,"
    "\"predicted_cost_s\":20}\n"
    "{\"type\":\"trial_created\",\"t\":11.5,\"trial\":9,\"model\":\"resnet18.a1_in1k\","
    "\"config\":{\"opt\":\"sgd\",\"lr\":\"0.01\",\"momentum\":\"0.9\"},\"seed\":3}\n"
    "{\"type\":\"epoch_begin\",\"t\":11.5,\"trial\":9,\"epoch\":1,\"predicted_cost_s\":20}\n"
    "{\"type\":\"epoch_end\",\"t\":31.5,\"trial\":9,\"epoch\":1,\"status\":\"ok\",\"score\":0.6,"
    "\"cost_s\":20}\n"
    "{\"type\":\"suggest\",\"t\":32,\"trial\":4,\"target\":2,\"optimizer_s\":0.5,"
    "\"predicted_cost_s\":10}\n"
    "{\"type\":\"epoch_begin\",\"t\":32,\"trial\":4,\"epoch\":2,\"predicted_cost_s\":10}\n"
    "{\"type\":\"epoch_end\",\"t\":42,\"trial\":4,\"epoch\":2,\"status\":\"ok\",\"score\":0.85,"
    "\"cost_s\":10.5}\n"
    "{\"type\":\"incumbent\",\"t\":42,\"trial\":4,\"epoch\":2,\"score\":0.85}\n"
    "{\"type\":\"suggest\",\"t\":42.5,\"trial\":9,\"target\":2,\"optimizer_s\":0.5}\n"
    "{\"type\":\"epoch_begin\",\"t\":42.5,\"trial\":9,\"epoch\":2,\"predicted_cost_s\":20}\n"
    "{\"type\":\"trial_failed\",\"t\":50,\"trial\":9,\"epoch\":2,\"status\":\"diverged\","
    "\"reason\":\"loss is NaN\"}\n"
    "{\"type\":\"suggest\",\"t\":51,\"trial\":6,\"target\":1,\"optimizer_s\":1}\n"
    "{\"type\":\"trial_created\",\"t\":51,\"trial\":6,\"model\":\"vit_tiny_28.fashion_mnist\","
    "\"config\":{\"opt\":\"sgd\",\"lr\":\"0.05\"},\"seed\":3}\n"
    "{\"type\":\"epoch_begin\",\"t\":51,\"trial\":6,\"epoch\":1,\"predicted_cost_s\":9}\n"
    "{\"type\":\"run_start\",\"t\":55,\"session\":2,\"time\":\"2026-11-25T21:00:00Z\","
    "\"hash\":\"h1\",\"budget_s\":3600,\"optimizer\":\"quicktune\",\"seed\":3,\"pool\":16,"
    "\"max_epochs\":50,\"dataset\":\"data/fm\",\"hub\":\"hub.yaml\",\"space\":\"space.yaml\"}\n"
    "{\"type\":\"suggest\",\"t\":56,\"trial\":2,\"target\":1,\"optimizer_s\":0.25,"
    "\"predicted_cost_s\":8}\n"
    "{\"type\":\"trial_created\",\"t\":56,\"trial\":2,\"model\":\"vit_tiny_28.fashion_mnist\","
    "\"config\":{\"opt\":\"adamw\",\"lr\":\"3e-4\",\"sched\":\"null\"},\"seed\":3}\n"
    "{\"type\":\"epoch_begin\",\"t\":56,\"trial\":2,\"epoch\":1,\"predicted_cost_s\":8}\n"
    "{\"type\":\"epoch_end\",\"t\":64,\"trial\":2,\"epoch\":1,\"status\":\"ok\",\"score\":0.85,"
    "\"cost_s\":8}\n"
    "{\"type\":\"suggest\",\"t\":65,\"trial\":5,\"target\":1,\"optimizer_s\":0.25,"
    "\"predicted_cost_s\":30}\n"
    "{\"type\":\"trial_created\",\"t\":65,\"trial\":5,\"model\":\"resnet18.a1_in1k\","
    "\"config\":{\"opt\":\"sgd\",\"lr\":\"0.1\"},\"seed\":3}\n"
    "{\"type\":\"suggest\",\"t\":66,\"trial\":4,\"target\":3,\"optimizer_s\":0.25}\n"
    "{\"type\":\"epoch_begin\",\"t\":66,\"trial\":4,\"epoch\":3,\"predicted_cost_s\":11}\n"
    "{\"type\":\"epoch_end\",\"t\":77,\"trial\":4,\"epoch\":3,\"status\":\"ok\",\"score\":0.8,"
    "\"cost_s\":11}\n"
    "{\"type\":\"suggest\",\"t\":78,\"trial\":6,\"target\":1,\"optimizer_s\":0.25}\n"
    "{\"type\":\"epoch_begin\",\"t\":78,\"trial\":6,\"epoch\":1,\"predicted_cost_s\":9}\n";

static const char *const hand_journal_end =
    "{\"type\":\"epoch_end\",\"t\":86,\"trial\":6,\"epoch\":1,\"status\":\"ok\",\"score\":0.5,"
    "\"cost_s\":8}\n"
    "{\"type\":\"run_end\",\"t\":90,\"reason\":\"max-trials\",\"budget_s\":3600,\"used_s\":90,"
    "\"overshoot_s\":0}\n";

/* run_dir/journal.jsonl = the hand journal, ended or not. */
static void write_hand_run(const char *dir, int ended) {
  char path[600];
  snprintf(path, sizeof path, "%s/journal.jsonl", dir);
  FILE *f = fopen(path, "wb");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  fputs(hand_journal, f);
  if (ended) fputs(hand_journal_end, f);
  fclose(f);
}

static const qt_search_trial_info *trial_by_id(const qt_search_summary_t *s, long id) {
  for (size_t i = 0; i < qt_search_summary_trial_count(s); i++)
    if (qt_search_summary_trial_at(s, i)->trial == id) return qt_search_summary_trial_at(s, i);
  return NULL;
}

static void test_summary(void) {
  char dir[512], path[600];
  fresh_dir("summary-run", dir, sizeof dir);
  write_hand_run(dir, 0);
  snprintf(path, sizeof path, "%s/journal.jsonl", dir);
  qt_search_summary_t *s = NULL;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_search_summary_load(path, &s, &err), 0);
  CU_ASSERT_EQUAL(qt_search_summary_trial_count(s), 5);
  const long created[] = {4, 9, 6, 2, 5};
  for (size_t i = 0; i < 5; i++)
    CU_ASSERT_EQUAL(qt_search_summary_trial_at(s, i)->trial, created[i]);
  CU_ASSERT_PTR_NULL(qt_search_summary_trial_at(s, 5));
  const qt_search_trial_info *t4 = trial_by_id(s, 4), *t9 = trial_by_id(s, 9),
                             *t6 = trial_by_id(s, 6), *t2 = trial_by_id(s, 2),
                             *t5 = trial_by_id(s, 5);
  CU_ASSERT_FATAL(t4 && t9 && t6 && t2 && t5);
  CU_ASSERT_STRING_EQUAL(t4->state, "paused");
  CU_ASSERT_EQUAL(t4->epochs, 3);
  CU_ASSERT_DOUBLE_EQUAL(t4->last_score, 0.8, 0);
  CU_ASSERT_DOUBLE_EQUAL(t4->best_score, 0.85, 0);
  CU_ASSERT_EQUAL(t4->best_epoch, 2);
  CU_ASSERT_DOUBLE_EQUAL(t4->cost_s, 31.5, 1e-12);
  CU_ASSERT(isnan(t4->predicted_cost_s));
  CU_ASSERT_EQUAL(t4->n_values, 4);
  CU_ASSERT_STRING_EQUAL(t4->names[1], "lr");
  CU_ASSERT_STRING_EQUAL(t4->values[1], "0.001");
  CU_ASSERT_STRING_EQUAL(t4->model, "vit_tiny_28.fashion_mnist");
  CU_ASSERT_EQUAL(t4->seed, 3);
  CU_ASSERT_STRING_EQUAL(t9->state, "diverged");
  CU_ASSERT_STRING_EQUAL(t9->reason, "loss is NaN");
  CU_ASSERT_EQUAL(t9->epochs, 1);
  CU_ASSERT_STRING_EQUAL(t6->state, "running");
  CU_ASSERT_EQUAL(t6->epochs, 0);
  CU_ASSERT_DOUBLE_EQUAL(t6->predicted_cost_s, 9, 0);
  CU_ASSERT(isnan(t6->last_score));
  CU_ASSERT_STRING_EQUAL(t2->state, "paused");
  CU_ASSERT_STRING_EQUAL(t5->state, "new");
  CU_ASSERT_DOUBLE_EQUAL(t5->predicted_cost_s, 30, 0);
  CU_ASSERT_EQUAL(t5->best_epoch, 0);
  long trial, epoch;
  double score;
  CU_ASSERT_EQUAL(qt_search_summary_incumbent(s, &trial, &epoch, &score), 0);
  CU_ASSERT_EQUAL(trial, 4); /* trial 2 ties at 0.85 later */
  CU_ASSERT_EQUAL(epoch, 2);
  CU_ASSERT_DOUBLE_EQUAL(score, 0.85, 0);
  CU_ASSERT_DOUBLE_EQUAL(qt_search_summary_clock(s), 78, 0);
  CU_ASSERT_EQUAL(qt_search_summary_epochs(s), 5);
  CU_ASSERT_DOUBLE_EQUAL(qt_search_summary_optimizer_s(s), 4, 1e-12);
  const qt_journal_record *start = qt_search_summary_run_start(s);
  CU_ASSERT_PTR_NOT_NULL_FATAL(start);
  CU_ASSERT_EQUAL(start->session, 2);
  CU_ASSERT_STRING_EQUAL(start->time, "2026-11-25T21:00:00Z");
  CU_ASSERT_PTR_NULL(qt_search_summary_run_end(s));
  /* Printing: best first, every format; an unknown one is QT_EINVAL. */
  char *text = NULL;
  size_t size = 0;
  FILE *mem = open_memstream(&text, &size);
  CU_ASSERT_EQUAL(qt_search_summary_print(s, "table", 0, mem, &err), 0);
  fclose(mem);
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "session    2"));
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "0:01:18 / 1:00:00"));
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "5 (1 failed), 5 epochs"));
  CU_ASSERT_PTR_NOT_NULL(
      strstr(text, "trial 4, epoch 2, score 0.8500 (vit_tiny_28.fashion_mnist)"));
  char *row4 = strstr(text, "\n     4  "), *row2 = strstr(text, "\n     2  "),
       *row9 = strstr(text, "\n     9  "), *row5 = strstr(text, "\n     5  ");
  CU_ASSERT(row4 && row2 && row9 && row5 && row4 < row2 && row2 < row9 && row9 < row5);
  free(text);
  mem = open_memstream(&text, &size);
  CU_ASSERT_EQUAL(qt_search_summary_print(s, "table", 2, mem, &err), 0);
  fclose(mem);
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "(3 more trials)"));
  CU_ASSERT_PTR_NULL(strstr(text, "\n     9  "));
  free(text);
  mem = open_memstream(&text, &size);
  CU_ASSERT_EQUAL(qt_search_summary_print(s, "json", 0, mem, &err), 0);
  fclose(mem);
  json_t *json = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_json_load_string(text, size, "status.json", &json, &err), 0);
  CU_ASSERT_EQUAL(json_integer_value(json_object_get(json, "n_trials")), 5);
  CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(json, "incumbent"), "trial")),
                  4);
  CU_ASSERT_EQUAL(json_array_size(json_object_get(json, "trials")), 5);
  CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json, "state")), "running");
  json_decref(json);
  free(text);
  mem = open_memstream(&text, &size);
  CU_ASSERT_EQUAL(qt_search_summary_print(s, "yaml", 0, mem, &err), 0);
  fclose(mem);
  qt_yaml_doc_t *doc = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_yaml_load_string(text, size, "status.yaml", &doc, &err), 0);
  qt_yaml_node root = qt_yaml_root(doc);
  CU_ASSERT_STRING_EQUAL(qt_yaml_scalar(doc, qt_yaml_get(doc, root, "n_trials")), "5");
  qt_yaml_node trials = qt_yaml_get(doc, root, "trials");
  CU_ASSERT_EQUAL(qt_yaml_length(doc, trials), 5);
  qt_yaml_node first = qt_yaml_item(doc, trials, 0);
  CU_ASSERT_STRING_EQUAL(qt_yaml_scalar(doc, qt_yaml_get(doc, first, "trial")), "4");
  /* trial 2's "null" value must stay a string. */
  qt_yaml_node second = qt_yaml_item(doc, trials, 1);
  qt_yaml_node sched = qt_yaml_get(doc, qt_yaml_get(doc, second, "config"), "sched");
  CU_ASSERT(sched && qt_yaml_scalar_is_quoted(doc, sched));
  qt_yaml_free(doc);
  free(text);
  mem = open_memstream(&text, &size);
  CU_ASSERT_EQUAL(qt_search_summary_print(s, "xml", 0, mem, &err), QT_EINVAL);
  fclose(mem);
  free(text);
  qt_search_summary_free(s);
  qt_search_summary_free(NULL);

  /* The ended run: run_end, the running trial paused, the clock at 90. */
  write_hand_run(dir, 1);
  CU_ASSERT_EQUAL_FATAL(qt_search_summary_load(path, &s, &err), 0);
  CU_ASSERT_PTR_NOT_NULL_FATAL(qt_search_summary_run_end(s));
  CU_ASSERT_STRING_EQUAL(qt_search_summary_run_end(s)->reason, "max-trials");
  CU_ASSERT_STRING_EQUAL(trial_by_id(s, 6)->state, "paused");
  CU_ASSERT_DOUBLE_EQUAL(qt_search_summary_clock(s), 90, 0);
  CU_ASSERT_EQUAL(qt_search_summary_epochs(s), 6);
  qt_search_summary_free(s);

  /* An epoch of a trial never created is an error naming the line. */
  write_text(path,
             "{\"type\":\"run_start\",\"t\":0,\"session\":1}\n"
             "{\"type\":\"epoch_begin\",\"t\":1,\"trial\":3,\"epoch\":1}\n");
  qt_err_clear(&err);
  CU_ASSERT_EQUAL(qt_search_summary_load(path, &s, &err), QT_EFORMAT);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "journal.jsonl:2"));
  /* Built record by record, as the search does: same answers. */
  qt_search_summary_t *live = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_search_summary_new(&live, &err), 0);
  CU_ASSERT_EQUAL(qt_search_summary_incumbent(live, &trial, &epoch, &score), QT_ENOENT);
  qt_journal_record records[16];
  size_t n = every_record(records);
  for (size_t i = 0; i < n; i++)
    CU_ASSERT_EQUAL(qt_search_summary_apply(live, &records[i], &err), 0);
  CU_ASSERT_EQUAL(qt_search_summary_incumbent(live, &trial, &epoch, &score), 0);
  CU_ASSERT_EQUAL(trial, 3);
  CU_ASSERT_EQUAL(score, 0.8123456789012345);
  CU_ASSERT_STRING_EQUAL(qt_search_summary_trial_at(live, 0)->state, "diverged");
  qt_search_summary_free(live);
}

/* ------------------------------------------------------------------------- */
/* Export                                                                     */
/* ------------------------------------------------------------------------- */

static int has_gnuplot(void) {
  return system("command -v gnuplot >/dev/null 2>&1") == 0;
}

static void test_export(void) {
  char dir[512], path[700];
  fresh_dir("export-run", dir, sizeof dir);
  write_hand_run(dir, 1);
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_search_export(dir, &err);
  if (rc != 0) fprintf(stderr, "export: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);

  snprintf(path, sizeof path, "%s/summary/best_config.yaml", dir);
  qt_yaml_doc_t *doc = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_yaml_load_file(path, &doc, &err), 0);
  qt_yaml_node root = qt_yaml_root(doc);
  CU_ASSERT_STRING_EQUAL(qt_yaml_scalar(doc, qt_yaml_get(doc, root, "version")), "1");
  CU_ASSERT_STRING_EQUAL(qt_yaml_scalar(doc, qt_yaml_get(doc, root, "model")),
                         "vit_tiny_28.fashion_mnist");
  CU_ASSERT_STRING_EQUAL(qt_yaml_scalar(doc, qt_yaml_get(doc, root, "opt")), "adamw");
  CU_ASSERT_STRING_EQUAL(qt_yaml_scalar(doc, qt_yaml_get(doc, root, "lr")), "0.001");
  CU_ASSERT_FALSE(qt_yaml_scalar_is_quoted(doc, qt_yaml_get(doc, root, "lr")));
  CU_ASSERT_STRING_EQUAL(qt_yaml_scalar(doc, qt_yaml_get(doc, root, "batch_size")), "32");
  CU_ASSERT_STRING_EQUAL(qt_yaml_scalar(doc, qt_yaml_get(doc, root, "sched")), "cosine");
  CU_ASSERT_EQUAL(qt_yaml_length(doc, root), 7); /* version, model, 4 values, qtune */
  qt_yaml_node block = qt_yaml_get(doc, root, "qtune");
  CU_ASSERT_EQUAL_FATAL(qt_yaml_kind_of(doc, block), QT_YAML_KIND_MAPPING);
  const struct {
    const char *key, *value;
  } expect[] = {{"run", dir},  {"trial", "4"},     {"epochs", "2"},   {"schedule_epochs", "50"},
                {"seed", "3"}, {"data_seed", "3"}, {"score", "0.85"}, {"cost_s", "20.5"},
                {NULL, NULL}};
  for (int i = 0; expect[i].key; i++) {
    const char *value = qt_yaml_scalar(doc, qt_yaml_get(doc, block, expect[i].key));
    if (!value || strcmp(value, expect[i].value) != 0) {
      fprintf(stderr, "qtune.%s: '%s', expected '%s'\n", expect[i].key, value ? value : "(none)",
              expect[i].value);
      CU_FAIL("qtune block");
    }
  }
  qt_yaml_free(doc);

  snprintf(path, sizeof path, "%s/summary/incumbent.csv", dir);
  char *text = read_text(path);
  CU_ASSERT_PTR_NOT_NULL_FATAL(text);
  CU_ASSERT_STRING_EQUAL(text, "time_s,trial,epoch,score\n11,4,1,0.7\n42,4,2,0.85\n");
  free(text);

  snprintf(path, sizeof path, "%s/summary/trials.csv", dir);
  qt_csv_t *csv = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_csv_open(path, &csv, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_csv_next(csv, &err), 1);
  const char *header[] = {"trial",      "model",    "epoch",    "status", "score", "top5",
                          "train_loss", "val_loss", "cost_s",   "time_s", "opt",   "lr",
                          "batch_size", "sched",    "momentum", NULL};
  for (size_t i = 0; header[i]; i++) {
    const char *field = qt_csv_field(csv, i);
    CU_ASSERT(field && strcmp(field, header[i]) == 0);
  }
  CU_ASSERT_EQUAL(qt_csv_field_count(csv), 15);
  /* 6 ended epochs + 1 failure. */
  size_t rows = 0;
  int saw_failure = 0, saw_first = 0;
  while (qt_csv_next(csv, &err) == 1) {
    rows++;
    if (strcmp(qt_csv_field(csv, 3), "diverged") == 0) {
      saw_failure =
          strcmp(qt_csv_field(csv, 0), "9") == 0 && strcmp(qt_csv_field(csv, 2), "2") == 0;
    }
    if (strcmp(qt_csv_field(csv, 0), "4") == 0 && strcmp(qt_csv_field(csv, 2), "1") == 0) {
      saw_first =
          strcmp(qt_csv_field(csv, 4), "0.7") == 0 && strcmp(qt_csv_field(csv, 5), "0.95") == 0 &&
          strcmp(qt_csv_field(csv, 9), "11") == 0 && strcmp(qt_csv_field(csv, 10), "adamw") == 0 &&
          strcmp(qt_csv_field(csv, 14), "") == 0;
    }
  }
  CU_ASSERT_EQUAL(rows, 7);
  CU_ASSERT(saw_failure);
  CU_ASSERT(saw_first);
  qt_csv_free(csv);

  const char *plots[] = {"incumbent.png", "incumbent.svg", "curves.png", "curves.svg", NULL};
  for (int i = 0; plots[i]; i++) {
    snprintf(path, sizeof path, "%s/summary/%s", dir, plots[i]);
    if (has_gnuplot()) {
      CU_ASSERT(file_size(path) > 100);
    } else {
      CU_ASSERT_EQUAL(file_size(path), -1);
    }
  }
  snprintf(path, sizeof path, "%s/summary/curves.svg", dir);
  text = read_text(path);
  if (text) {
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "trial 4"));
    free(text);
  }

  /* No journal: QT_ENOENT; no ended epoch: QT_ENOENT, CSVs still written. */
  char empty[512];
  fresh_dir("export-empty", empty, sizeof empty);
  CU_ASSERT_EQUAL(qt_search_export(empty, &err), QT_ENOENT);
  snprintf(path, sizeof path, "%s/journal.jsonl", empty);
  write_text(path, "{\"type\":\"run_start\",\"t\":0,\"session\":1}\n");
  CU_ASSERT_EQUAL(qt_search_export(empty, &err), QT_ENOENT);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "no epoch"));
  snprintf(path, sizeof path, "%s/summary/trials.csv", empty);
  CU_ASSERT(file_size(path) > 0);
}

/* ------------------------------------------------------------------------- */
/* The CLI                                                                    */
/* ------------------------------------------------------------------------- */

static void test_status_and_export_cli(void) {
  char dir[512], args[1200];
  fresh_dir("cli-run", dir, sizeof dir);
  write_hand_run(dir, 1);
  snprintf(args, sizeof args, "status '%s'", dir);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "ended: max-trials"));
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "trial 4, epoch 2, score 0.8500"));
  snprintf(args, sizeof args, "status '%s' --format json", dir);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 0);
  json_t *json = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_json_load_string(out, strlen(out), "status", &json, NULL), 0);
  CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json, "end_reason")), "max-trials");
  json_decref(json);
  snprintf(args, sizeof args, "status '%s' --format yaml", dir);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "n_trials: 5\n"));
  /* --watch on an ended run prints once and returns. */
  snprintf(args, sizeof args, "status '%s' --watch 0.1", dir);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "ended: max-trials"));
  snprintf(args, sizeof args, "status '%s' --format xml", dir);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 1);
  snprintf(args, sizeof args, "status '%s' --watch soon", dir);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 1);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "status /no/such/run"), 3);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "/no/such/run"));

  snprintf(args, sizeof args, "export '%s' --no-plots", dir);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "best_config.yaml"));
  char path[700];
  snprintf(path, sizeof path, "%s/summary/best_config.yaml", dir);
  CU_ASSERT(file_size(path) > 0);
  snprintf(path, sizeof path, "%s/summary/curves.png", dir);
  CU_ASSERT_EQUAL(file_size(path), -1);
  char other[512];
  qt_test_temp_path("cli-export-out", other, sizeof other);
  snprintf(args, sizeof args, "export '%s' --no-plots --out '%s'", dir, other);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 0);
  snprintf(path, sizeof path, "%s/trials.csv", other);
  CU_ASSERT(file_size(path) > 0);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "export /no/such/run"), 3);
  /* Without gnuplot: a warning, the files, no plots, success. */
  char command[2400];
  qt_test_temp_path("cli-export-noplot", other, sizeof other);
  snprintf(command, sizeof command, "PATH=/nonexistent '%s' export '%s' --out '%s' 2>&1",
           QT_QTUNE_BINARY, dir, other);
  FILE *pipe = popen(command, "r");
  CU_ASSERT_PTR_NOT_NULL_FATAL(pipe);
  size_t used = fread(out, 1, sizeof out - 1, pipe);
  out[used] = '\0';
  int status = pclose(pipe);
  CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "gnuplot is not installed"));
  snprintf(path, sizeof path, "%s/best_config.yaml", other);
  CU_ASSERT(file_size(path) > 0);
  snprintf(path, sizeof path, "%s/incumbent.png", other);
  CU_ASSERT_EQUAL(file_size(path), -1);
}

/* Status on a live run: a child appends records (as the search does, through
 * the writer) while the parent reads the journal over and over; every read
 * succeeds and sees a prefix of the records. */
static void test_status_on_live_run(void) {
  char dir[512], path[700], args[1200];
  fresh_dir("live-run", dir, sizeof dir);
  snprintf(path, sizeof path, "%s/journal.jsonl", dir);
  qt_journal_record records[16];
  size_t n = every_record(records);
  const size_t rounds = 300;
  pid_t child = fork();
  CU_ASSERT_FATAL(child >= 0);
  if (child == 0) {
    qt_journal_t *journal = NULL;
    int fd = -1;
    if (qt_rundir_lock(dir, &fd, NULL) != 0 || qt_journal_open(path, &journal, NULL) != 0) _exit(1);
    if (qt_journal_append(journal, &records[0], NULL) != 0) _exit(2);
    for (size_t round = 0; round < rounds; round++) {
      /* Trial ids per round, so the summary sees new trials each time. */
      for (size_t i = 1; i < n - 1; i++) {
        qt_journal_record r = records[i];
        r.trial = (long)round;
        if (qt_journal_append(journal, &r, NULL) != 0) _exit(2);
      }
    }
    if (qt_journal_append(journal, &records[n - 1], NULL) != 0) _exit(3);
    qt_journal_close(journal);
    qt_rundir_unlock(fd);
    _exit(0);
  }
  int reads = 0, failures = 0, status = 0;
  size_t last_count = 0;
  for (;;) {
    int done = waitpid(child, &status, WNOHANG) == child;
    qt_search_summary_t *s = NULL;
    qt_err err;
    int rc = qt_search_summary_load(path, &s, &err);
    if (rc == QT_ENOENT && !done) continue; /* not created yet */
    if (rc != 0) {
      fprintf(stderr, "live read: %s\n", qt_err_message(&err));
      failures++;
    } else {
      size_t count = qt_search_summary_trial_count(s);
      if (count < last_count) failures++;
      last_count = count;
      reads++;
    }
    qt_search_summary_free(s);
    if (done) break;
  }
  CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CU_ASSERT_EQUAL(failures, 0);
  CU_ASSERT(reads > 1);
  CU_ASSERT_EQUAL(last_count, rounds);
  /* The CLI on the finished journal, and while another writer holds the
   * lock (status never takes it). */
  int fd = -1;
  CU_ASSERT_EQUAL(qt_rundir_lock(dir, &fd, NULL), 0);
  snprintf(args, sizeof args, "status '%s' --format json", dir);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 0);
  qt_rundir_unlock(fd);
}

/* The CLI reading while a child writes. */
static void test_status_cli_on_live_run(void) {
  char dir[512], path[700], args[1200];
  fresh_dir("live-cli", dir, sizeof dir);
  snprintf(path, sizeof path, "%s/journal.jsonl", dir);
  qt_journal_record records[16];
  size_t n = every_record(records);
  append_all(path, records, 1);
  int go[2];
  CU_ASSERT_EQUAL_FATAL(pipe(go), 0);
  pid_t child = fork();
  CU_ASSERT_FATAL(child >= 0);
  if (child == 0) {
    close(go[1]);
    qt_journal_t *journal = NULL;
    if (qt_journal_open(path, &journal, NULL) != 0) _exit(1);
    char c;
    for (long round = 0;; round++) {
      for (size_t i = 1; i < n - 1; i++) {
        qt_journal_record r = records[i];
        r.trial = round;
        if (qt_journal_append(journal, &r, NULL) != 0) _exit(2);
      }
      usleep(2000);
      /* The parent closes the pipe when it is done reading. */
      struct timeval none = {0, 0};
      fd_set set;
      FD_ZERO(&set);
      FD_SET(go[0], &set);
      if (select(go[0] + 1, &set, NULL, NULL, &none) > 0 && read(go[0], &c, 1) <= 0) break;
    }
    qt_journal_append(journal, &records[n - 1], NULL);
    qt_journal_close(journal);
    _exit(0);
  }
  close(go[0]);
  snprintf(args, sizeof args, "status '%s' --format json", dir);
  int failures = 0;
  for (int i = 0; i < 10; i++) {
    if (run_qtune(out, sizeof out, args) != 0) {
      fprintf(stderr, "status on a live run: %s\n", out);
      failures++;
    }
  }
  close(go[1]);
  int status;
  waitpid(child, &status, 0);
  CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CU_ASSERT_EQUAL(failures, 0);
  /* --watch ends by itself once the run_end is there. */
  snprintf(args, sizeof args, "status '%s' --watch 0.05", dir);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 0);
}

/* --watch keeps printing while the run goes on and returns when a run_end
 * arrives (a new session's run_start makes it wait again). The writer goes
 * in lockstep with the prints: a record after each of the first three, then
 * the run_end, so the test does not depend on how fast the machine is. */
static void test_status_watch_until_run_end(void) {
  char dir[512], path[700], command[1400];
  fresh_dir("watch-run", dir, sizeof dir);
  snprintf(path, sizeof path, "%s/journal.jsonl", dir);
  qt_journal_record records[16];
  size_t n = every_record(records);
  append_all(path, records, n); /* session 1 ended */
  append_all(path, records, 1); /* session 2 started */
  int go[2];
  CU_ASSERT_FATAL(pipe(go) == 0);
  pid_t child = fork();
  CU_ASSERT_FATAL(child >= 0);
  if (child == 0) {
    close(go[1]);
    qt_journal_t *journal = NULL;
    if (qt_journal_open(path, &journal, NULL) != 0) _exit(1);
    char byte;
    for (long round = 0; round < 3 && read(go[0], &byte, 1) == 1; round++) {
      qt_journal_record r = records[1];
      r.trial = round;
      if (qt_journal_append(journal, &r, NULL) != 0) _exit(2);
    }
    if (qt_journal_append(journal, &records[n - 1], NULL) != 0) _exit(3);
    qt_journal_close(journal);
    _exit(0);
  }
  close(go[0]);
  snprintf(command, sizeof command, "timeout 30 '%s' status '%s' --watch 0.05 --format json",
           QT_QTUNE_BINARY, dir);
  FILE *pipe_in = popen(command, "r");
  CU_ASSERT_PTR_NOT_NULL_FATAL(pipe_in);
  size_t used = 0, prints = 0;
  char line[4096];
  while (fgets(line, sizeof line, pipe_in)) {
    size_t len = strlen(line);
    if (used + len < sizeof out) {
      memcpy(out + used, line, len);
      used += len;
    }
    if (strstr(line, "\"n_trials\"") && ++prints <= 3) CU_ASSERT(write(go[1], "g", 1) == 1);
  }
  out[used] = '\0';
  close(go[1]);
  int status = pclose(pipe_in);
  CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  int child_status = 0;
  waitpid(child, &child_status, 0);
  CU_ASSERT(WIFEXITED(child_status) && WEXITSTATUS(child_status) == 0);
  CU_ASSERT(prints >= 4); /* three while the run went on, one of its end */
  /* The last print is of the ended run. */
  const char *last = out, *p;
  while ((p = strstr(last + 1, "\"run_dir\"")) != NULL) last = p;
  CU_ASSERT_PTR_NOT_NULL(strstr(last, "\"end_reason\": \"budget\""));
}

static const qt_test_case cases[] = {
    {"type names and record init", test_type_names},
    {"round trip of every record type", test_round_trip},
    {"torn last line: read and cut on open", test_torn_last_line},
    {"bad lines name path:line", test_bad_lines},
    {"full disk leaves a record boundary", test_full_disk},
    {"lock refusal and release", test_lock},
    {"summary of a hand-written journal", test_summary},
    {"export of a hand-written journal", test_export},
    {"status and export commands", test_status_and_export_cli},
    {"status on a live run", test_status_on_live_run},
    {"status command on a live run", test_status_cli_on_live_run},
    {"status --watch until the run ends", test_status_watch_until_run_end},
    {NULL, NULL}};

QT_TEST_MAIN("journal", cases)

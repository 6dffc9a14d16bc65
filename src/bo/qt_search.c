/*
 * qt_search.c - `qtune search`: the search loop over a real dataset, with a
 * run directory, a journal, resume, a wall-clock budget and failure
 * isolation (ARCHITECTURE.md "Data flow of qtune search").
 *
 * Setting up (every session, fresh or resumed):
 *   1. The pool of models: the hub's entries whose family the run API can
 *      fine-tune (today vit, deit, deit3) and whose checkpoint exists; each
 *      one left out is logged with the reason. The space's categorical
 *      "model" gets these names (qt_space_with_choices).
 *   2. The data are loaded once (qt_data_load, split seed = search seed) and
 *      shared by all trials. Pool meta-features: n_samples (train), n_classes,
 *      image_size (the data's native height), channels - the columns of a
 *      meta-dataset's datasets.csv.
 *   3. The candidate pool: pool_size points of the space's Sobol design
 *      (skip 0). A point the engine cannot run yet (qt_run_spec_set says
 *      QT_ENOTIMPL, e.g. adapters on a CNN) is replaced by a uniform sample
 *      of a stream of the seed with the point's model kept, up to 200
 *      draws per slot, so that every model keeps its share of the design
 *      (redrawing the model too would favour the models that support the
 *      most methods); how many were replaced and why is logged and written
 *      to run.yaml.
 *   4. The optimizer: params->optimizer, else "quicktune" with a surrogate
 *      and "quicktune-MC" without one (the only Quick-Tune variant that
 *      needs no meta-trained file; quicktune-M still reads the surrogate's
 *      cost predictor). Seed = the search seed. The surrogate is
 *      params->surrogate, else params->default_surrogate when it fits the
 *      space and the hub's models (pick_default_surrogate).
 *
 * The loop: suggest (trial = candidate, target epoch) -> trial_created for
 * a new trial -> for each epoch up to the target: epoch_begin, one epoch of
 * the fine-tuning objective (qt_objective_finetune.c), then epoch_end (or
 * trial_failed, which ends the trial; the search goes on), an incumbent
 * record when the epoch is the best so far (its checkpoint is hard-linked
 * to incumbent.safetensors), and observe. Every record is appended to
 * journal.jsonl (fsync'ed) before the search acts on it.
 *
 * Run directory (qt_bo.h describes the files): run.yaml holds the resolved
 * settings and a hash over those that change results (data, hub, space,
 * their contents, optimizer, surrogate, seed, pool_size, max_epochs,
 * max_disk); budget, extend, max_trials, max_epochs_total, target and
 * threads are not hashed. The lock (qt_rundir_lock) refuses a second
 * writer.
 *
 * Resume (mode AUTO, when journal.jsonl exists): a hash that differs from
 * run.yaml's is QT_EINVAL naming the settings that differ. Otherwise the
 * pool and the optimizer are rebuilt and the journal is replayed: each
 * suggest of the fresh optimizer must equal the journal's next suggest
 * record (else QT_ESCHEMA "journal diverges from the optimizer at line N"),
 * and the journaled epoch_end / trial_failed records are fed to observe.
 * When the journal runs out the search continues live; an epoch that began
 * and did not end is run again from the trial's last checkpoint. The
 * budget is the journal's (the last run_start's budget_s) plus extend_s;
 * the clock continues from the journal's last record. Mode OVERWRITE
 * deletes what qtune wrote in the directory and starts over. Nothing ever
 * prompts.
 *
 * Budget. The clock is the journal's clock at the session's start plus the
 * session's monotonic seconds. Before each epoch the predicted cost (the
 * trial's last epoch, else the mean first epoch of trials of the same
 * model, else of all trials, else unknown) must fit: clock + predicted <=
 * budget, else the search ends with "budget". An epoch's cost here is the
 * clock seconds it took with its bookkeeping (loading the run, saving the
 * checkpoint, the journal's fsyncs), not only the engine's cost_s. Within an epoch the engine's
 * stop hook ends the epoch as soon as the clock passes the budget or
 * should_stop() returns non-zero (Ctrl-C); that epoch stays journaled as
 * begun and not ended, and the trial keeps its previous checkpoint. So the
 * overshoot is at most one batch. The optimizer's own time (observe refits
 * Quick-Tune's surrogate, suggest scores the pool) cannot be interrupted:
 * after an epoch the search ends before observe when the clock plus the
 * seconds of the last observe-and-suggest cycle would pass the budget (the
 * observation is in the journal, and a resumed run replays it).
 * run_end reasons: budget, done (the optimizer has nothing left),
 * max-trials, max-epochs (max_epochs_total), target, interrupted, error.
 *
 * --max-disk [choice]: after each epoch, while the trials' checkpoints
 * exceed max_disk bytes, the checkpoint of the trial least likely to be
 * continued is deleted (trials at max_epochs first, then the lowest best
 * score; never the incumbent's trial nor the trial just stepped), with a
 * log line. Such a trial, when suggested again, fails with "checkpoint
 * evicted" rather than restarting from epoch 1 (a restart would show the
 * optimizer a learning curve that is not the one it asked to continue).
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bo/qt_search_internal.h"
#include "surrogate/qt_surrogate.h"

#define DEFAULT_SPACE "configs/spaces/default.yaml"
#define DEFAULT_POOL 128
#define RESAMPLE_TRIES 200
#define STREAM_POOL 0x706f6f6cu /* "pool" */
#define RUN_YAML_VERSION 1

qt_search_params qt_search_default_params(void) {
  qt_search_params p;
  memset(&p, 0, sizeof p);
  p.target = NAN;
  p.pool_size = DEFAULT_POOL;
  p.mode = QT_SEARCH_MODE_AUTO;
  return p;
}

/* ------------------------------------------------------------------------- */
/* Small helpers                                                              */
/* ------------------------------------------------------------------------- */

static uint64_t fnv_text(uint64_t h, const char *text, size_t n) {
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)text[i];
    h *= 1099511628211ull;
  }
  return h;
}

#define FNV_START 1469598103934665603ull

/* FNV-1a of a file's bytes as 16 hex digits; "absent" when unreadable. */
static void file_digest(const char *path, char out[32]) {
  char *data = NULL;
  size_t length = 0;
  if (!path || qt_file_read(path, &data, &length, NULL) != 0) {
    snprintf(out, 32, "absent");
    return;
  }
  snprintf(out, 32, "%016llx", (unsigned long long)fnv_text(FNV_START, data, length));
  free(data);
}

/* An absolute spelling of path when it exists, else a copy. */
static char *resolve_path(const char *path) {
  if (!path) return NULL;
  char buf[PATH_MAX];
  if (realpath(path, buf)) return strdup(buf);
  return strdup(path);
}

/* Writes text to path atomically (a temporary name, then rename). */
static int write_atomic(const char *path, const char *text, qt_err *err) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  if (!f) return qt_err_set(err, QT_EIO, "%s: %s", tmp, strerror(errno));
  size_t n = strlen(text);
  int bad = fwrite(text, 1, n, f) != n;
  bad |= fflush(f) != 0;
  bad |= fsync(fileno(f)) != 0;
  bad |= fclose(f) != 0;
  if (bad || rename(tmp, path) != 0) {
    int code = errno == ENOSPC ? QT_ENOSPC : QT_EIO;
    unlink(tmp);
    return qt_err_set(err, code, "writing %s: %s", path, strerror(errno));
  }
  return 0;
}

/* A YAML double-quoted scalar. */
static void yaml_quote(const char *text, char *buf, size_t size) {
  size_t used = 0;
  if (size < 3) return;
  buf[used++] = '"';
  for (const char *c = text ? text : ""; *c && used + 4 < size; c++) {
    if (*c == '"' || *c == '\\') buf[used++] = '\\';
    buf[used++] = *c;
  }
  buf[used++] = '"';
  buf[used] = '\0';
}

/* ------------------------------------------------------------------------- */
/* Settings and run.yaml                                                      */
/* ------------------------------------------------------------------------- */

/* The settings hashed into run.yaml's hash, in file order. */
enum {
  KEY_DATA,
  KEY_HUB,
  KEY_HUB_DIGEST,
  KEY_SPACE,
  KEY_SPACE_DIGEST,
  KEY_OPTIMIZER,
  KEY_SURROGATE,
  KEY_SEED,
  KEY_POOL,
  KEY_MAX_EPOCHS,
  KEY_MAX_DISK,
  KEY_COUNT
};
static const char *const key_names[KEY_COUNT] = {
    "data",      "hub",  "hub_digest", "space",      "space_digest", "optimizer",
    "surrogate", "seed", "pool_size",  "max_epochs", "max_disk"};

typedef struct settings {
  char *values[KEY_COUNT]; /* text of each hashed setting */
  char hash[17];
} settings;

static void settings_free(settings *s) {
  for (int k = 0; k < KEY_COUNT; k++) free(s->values[k]);
  memset(s, 0, sizeof *s);
}

static int settings_set(settings *s, int key, const char *fmt, ...) QT_PRINTF(3, 4);
static int settings_set(settings *s, int key, const char *fmt, ...) {
  char buf[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  free(s->values[key]);
  s->values[key] = strdup(buf);
  return s->values[key] ? 0 : QT_ENOMEM;
}

static void settings_hash(settings *s) {
  uint64_t h = FNV_START;
  for (int k = 0; k < KEY_COUNT; k++) {
    h = fnv_text(h, key_names[k], strlen(key_names[k]));
    h = fnv_text(h, "=", 1);
    h = fnv_text(h, s->values[k], strlen(s->values[k]));
    h = fnv_text(h, "\n", 1);
  }
  snprintf(s->hash, sizeof s->hash, "%016llx", (unsigned long long)h);
}

/* The names of the settings whose values differ from run.yaml's, or
 * "unknown (run.yaml is missing or unreadable)". */
static void settings_diff(const settings *s, const char *run_yaml, char *buf, size_t size) {
  qt_yaml_doc_t *doc = NULL;
  buf[0] = '\0';
  if (qt_yaml_load_file(run_yaml, &doc, NULL) != 0) {
    snprintf(buf, size, "unknown (%.1000s is missing or unreadable)", run_yaml);
    return;
  }
  size_t used = 0;
  qt_yaml_node root = qt_yaml_root(doc);
  for (int k = 0; k < KEY_COUNT; k++) {
    const char *old = qt_yaml_scalar(doc, qt_yaml_get(doc, root, key_names[k]));
    if (old && strcmp(old, s->values[k]) == 0) continue;
    /* Long values (paths) are cut to keep the message readable. */
    int n = snprintf(buf + used, size - used, "%s%s (was '%.300s', now '%.300s')", used ? ", " : "",
                     key_names[k], old ? old : "absent", s->values[k]);
    if (n < 0 || (size_t)n >= size - used) break;
    used += (size_t)n;
  }
  if (!used) snprintf(buf, size, "the hash only (run.yaml was edited?)");
  qt_yaml_free(doc);
}

/* ------------------------------------------------------------------------- */
/* The search state                                                           */
/* ------------------------------------------------------------------------- */

typedef struct curve_row {
  long epoch;
  double score, top5, train_loss, val_loss, cost_s, images_per_s;
} curve_row;

typedef struct trial_state {
  int created;
  int ended;         /* failed or diverged */
  long last_epoch;   /* last ended epoch */
  double best_score; /* NaN before the first */
  double first_cost; /* NaN before the first */
  double last_cost;  /* NaN before the first */
  double first_wall; /* clock seconds of its first epoch with the bookkeeping around it
                        (loading, checkpoint, journal); NaN when unknown */
  double last_wall;  /* the same for its last epoch */
  curve_row *rows;   /* (row_count) its ended epochs */
  size_t row_count, row_capacity;
} trial_state;

typedef struct search {
  const qt_search_params *params;
  char *run_dir;
  char path_journal[4096], path_yaml[4096];
  settings set;
  int lock_fd;
  /* Inputs. */
  qt_hub_t *hub;
  qt_space_t *base_space, *space;
  const qt_hub_model **models; /* (n_models) by choice of "model" */
  size_t n_models;
  size_t model_hp;
  qt_data_splits data;
  qt_config *configs; /* (pool_size) */
  size_t n_configs;
  qt_pool pool;
  int pool_ready;
  qt_surrogate_t *surrogate;
  qt_optimizer_t *optimizer;
  const char *optimizer_name;
  qt_objective_t *objective;
  long max_epochs;
  int threads;
  size_t dropped; /* Sobol points replaced (QT_ENOTIMPL) */
  char drop_reasons[1024];
  /* Journal. */
  qt_journal_t *journal;
  qt_journal_log log;
  int have_log;
  size_t pos; /* replay cursor into log */
  int replaying;
  qt_search_summary_t *summary;
  long session;
  /* Clock. */
  double clock0; /* journal clock at the session's start */
  double t0;     /* qt_time_now() at the session's start */
  double budget;
  /* Trials. */
  trial_state *trials; /* (pool count) */
  long n_created;
  long total_epochs;
  long best_trial, best_epoch;
  double best_score;
  long inc_trial, inc_epoch; /* what incumbent.safetensors holds (journal) */
  size_t live_trial;         /* the trial stepped last, SIZE_MAX: none */
  double observe_s;          /* seconds of the last observe (the surrogate's refit) */
  double optimizer_s;        /* seconds of the last observe and the suggest after it */
} search;

static double search_clock(const search *S) {
  return S->clock0 + (qt_time_now() - S->t0);
}

/* The engine's stop hook: the budget, or the caller's Ctrl-C. */
static int stop_hook(void *user) {
  const search *S = user;
  if (search_clock(S) > S->budget) return 1;
  return S->params->should_stop && S->params->should_stop(S->params->user);
}

static int emit(search *S, qt_journal_record *rec, qt_err *err) {
  rec->t = search_clock(S);
  int rc = qt_journal_append(S->journal, rec, err);
  if (rc < 0) return qt_err_prefix(err, rc, "%s", S->path_journal);
  qt_err ignored;
  if (qt_search_summary_apply(S->summary, rec, &ignored) < 0)
    QT_LOG_DEBUG("summary: %s", qt_err_message(&ignored));
  if (S->params->on_record) S->params->on_record(rec, S->summary, S->params->user);
  return 0;
}

static int add_row(trial_state *t, const curve_row *row) {
  if (t->row_count == t->row_capacity) {
    size_t cap = t->row_capacity ? 2 * t->row_capacity : 8;
    curve_row *rows = realloc(t->rows, cap * sizeof *rows);
    if (!rows) return QT_ENOMEM;
    t->rows = rows;
    t->row_capacity = cap;
  }
  t->rows[t->row_count++] = *row;
  return 0;
}

static void fmt_num(double x, char *buf, size_t size) {
  if (isfinite(x))
    snprintf(buf, size, "%.9g", x);
  else
    buf[0] = '\0';
}

/* trials/<id>/curve.csv from the trial's rows. */
static int write_curve(search *S, size_t trial, qt_err *err) {
  const trial_state *t = &S->trials[trial];
  if (t->row_count == 0) return 0;
  char dir[4200], path[4300];
  snprintf(dir, sizeof dir, "%s/trials/%zu", S->run_dir, trial);
  int rc = qt_mkdir_p(dir, err);
  if (rc < 0) return rc;
  size_t cap = 128 + t->row_count * 160;
  char *text = malloc(cap);
  if (!text) return qt_err_set(err, QT_ENOMEM, "out of memory");
  size_t used =
      (size_t)snprintf(text, cap, "epoch,score,top5,train_loss,val_loss,cost_s,images_per_s\n");
  for (size_t i = 0; i < t->row_count; i++) {
    const curve_row *r = &t->rows[i];
    char v[6][32];
    fmt_num(r->score, v[0], 32);
    fmt_num(r->top5, v[1], 32);
    fmt_num(r->train_loss, v[2], 32);
    fmt_num(r->val_loss, v[3], 32);
    fmt_num(r->cost_s, v[4], 32);
    fmt_num(r->images_per_s, v[5], 32);
    used += (size_t)snprintf(text + used, cap - used, "%ld,%s,%s,%s,%s,%s,%s\n", r->epoch, v[0],
                             v[1], v[2], v[3], v[4], v[5]);
  }
  snprintf(path, sizeof path, "%s/curve.csv", dir);
  rc = write_atomic(path, text, err);
  free(text);
  return rc;
}

/* Model choice index of a candidate. */
static size_t trial_model(const search *S, size_t trial) {
  return (size_t)qt_config_index(&S->configs[trial], S->model_hp);
}

/* The clock seconds an epoch of the trial took (with its bookkeeping), or
 * its engine seconds when that is unknown. */
static double epoch_clock(double wall, double cost) {
  return isfinite(wall) ? wall : cost;
}

/* The predicted clock seconds of the trial's next epoch (NaN: unknown). */
static double predict_cost(const search *S, size_t trial) {
  const trial_state *t = &S->trials[trial];
  double last = epoch_clock(t->last_wall, t->last_cost);
  if (isfinite(last)) return last;
  size_t model = trial_model(S, trial);
  double sum_model = 0.0, sum_all = 0.0;
  size_t n_model = 0, n_all = 0;
  for (size_t i = 0; i < S->pool.count; i++) {
    double first = epoch_clock(S->trials[i].first_wall, S->trials[i].first_cost);
    if (!isfinite(first)) continue;
    sum_all += first;
    n_all++;
    if (trial_model(S, i) == model) {
      sum_model += first;
      n_model++;
    }
  }
  if (n_model) return sum_model / (double)n_model;
  if (n_all) return sum_all / (double)n_all;
  return NAN;
}

/* Books an ended epoch (live or replayed) into the trial's state; wall is
 * the clock seconds it took (NaN: unknown). */
static int book_epoch(search *S, size_t trial, const qt_journal_record *r, double wall) {
  trial_state *t = &S->trials[trial];
  t->last_epoch = r->epoch;
  if (r->epoch == 1) {
    t->first_cost = r->cost_s;
    t->first_wall = wall;
  }
  t->last_cost = r->cost_s;
  t->last_wall = wall;
  if (isnan(t->best_score) || r->score > t->best_score) t->best_score = r->score;
  S->total_epochs++;
  if (S->best_trial < 0 || r->score > S->best_score) {
    S->best_trial = (long)trial;
    S->best_epoch = r->epoch;
    S->best_score = r->score;
  }
  curve_row row = {r->epoch,    r->score,  r->top5,        r->train_loss,
                   r->val_loss, r->cost_s, r->images_per_s};
  return add_row(t, &row) < 0 ? QT_ENOMEM : 0;
}

static qt_observation observation_of(const qt_journal_record *r) {
  qt_observation o;
  o.status = QT_OBS_STATUS_OK;
  o.score = r->score;
  o.cost = isfinite(r->cost_s) ? r->cost_s : 0.0;
  o.train_loss = r->train_loss;
  o.val_loss = r->val_loss;
  return o;
}

static qt_observation failure_of(const char *status) {
  qt_observation o;
  o.status =
      status && strcmp(status, "diverged") == 0 ? QT_OBS_STATUS_DIVERGED : QT_OBS_STATUS_FAILED;
  o.score = NAN;
  o.cost = 0.0;
  o.train_loss = o.val_loss = NAN;
  return o;
}

/* ------------------------------------------------------------------------- */
/* Incumbent and disk                                                         */
/* ------------------------------------------------------------------------- */

/* incumbent.safetensors <- the trial's checkpoint of epoch (hard link to a
 * temporary name, then rename; a copy where links are refused). */
static int link_incumbent(search *S, size_t trial, long epoch, qt_err *err) {
  char src[4096], tmp[4200], dst[4200];
  qt__finetune_checkpoint_path(S->run_dir, trial, epoch, src, sizeof src);
  snprintf(tmp, sizeof tmp, "%s/incumbent.safetensors.tmp", S->run_dir);
  snprintf(dst, sizeof dst, "%s/incumbent.safetensors", S->run_dir);
  unlink(tmp);
  if (link(src, tmp) != 0) {
    char *data = NULL;
    size_t length = 0;
    int rc = qt_file_read(src, &data, &length, err);
    if (rc < 0) return rc;
    FILE *f = fopen(tmp, "wb");
    int bad = !f || fwrite(data, 1, length, f) != length;
    if (f) bad |= fclose(f) != 0;
    free(data);
    if (bad) return qt_err_set(err, QT_EIO, "writing %s: %s", tmp, strerror(errno));
  }
  if (rename(tmp, dst) != 0) return qt_err_set(err, QT_EIO, "%s: %s", dst, strerror(errno));
  return 0;
}

static int set_incumbent(search *S, size_t trial, long epoch, double score, qt_err *err) {
  int rc = link_incumbent(S, trial, epoch, err);
  if (rc < 0) return rc;
  qt_journal_record rec = qt_journal_record_init(QT_JOURNAL_INCUMBENT);
  rec.trial = (long)trial;
  rec.epoch = epoch;
  rec.score = score;
  rc = emit(S, &rec, err);
  if (rc == 0) {
    S->inc_trial = (long)trial;
    S->inc_epoch = epoch;
  }
  return rc;
}

/* --max-disk: evicts checkpoints until the total fits (see the top). */
static void enforce_disk(search *S) {
  if (S->params->max_disk == 0) return;
  for (;;) {
    size_t total = 0;
    for (size_t i = 0; i < S->pool.count; i++)
      total += qt__finetune_checkpoint_bytes(S->objective, i);
    if (total <= S->params->max_disk) return;
    size_t victim = SIZE_MAX;
    int victim_done = 0;
    double victim_score = INFINITY;
    for (size_t i = 0; i < S->pool.count; i++) {
      if (qt__finetune_checkpoint_bytes(S->objective, i) == 0) continue;
      if ((long)i == S->inc_trial || (long)i == S->best_trial || i == S->live_trial) continue;
      int done = S->trials[i].ended || S->trials[i].last_epoch >= S->max_epochs;
      double score = S->trials[i].best_score;
      if (isnan(score)) score = -INFINITY;
      if (victim == SIZE_MAX || done > victim_done ||
          (done == victim_done && score < victim_score)) {
        victim = i;
        victim_done = done;
        victim_score = score;
      }
    }
    if (victim == SIZE_MAX) {
      QT_LOG_WARN("checkpoints use %zu bytes, over --max-disk %zu, and none can be evicted", total,
                  S->params->max_disk);
      return;
    }
    QT_LOG_INFO(
        "max-disk: evicting the checkpoint of trial %zu (epoch %ld, best %.4f): %zu bytes "
        "in all, cap %zu",
        victim, S->trials[victim].last_epoch, S->trials[victim].best_score, total,
        S->params->max_disk);
    qt__finetune_evict(S->objective, victim);
  }
}

/* ------------------------------------------------------------------------- */
/* Setting up                                                                 */
/* ------------------------------------------------------------------------- */

/* The hub's usable models and the space over them (qt_search_models_load);
 * the search takes ownership of what it loaded. */
static int load_models(search *S, qt_err *err) {
  qt_search_models m;
  int rc = qt_search_models_load(S->params->hub, S->base_space, &m, err);
  if (rc < 0) return rc;
  S->hub = m.hub;
  S->models = m.models;
  S->n_models = m.count;
  S->space = m.space;
  S->model_hp = m.model_hp;
  return 0;
}

/* 1 when the engine can run config (no QT_ENOTIMPL); reason gets why not. */
static int runnable(search *S, const qt_config *config, char *reason, size_t size) {
  qt_run_spec spec;
  qt_err err;
  qt_err_clear(&err);
  size_t model = (size_t)qt_config_index(config, S->model_hp);
  int rc = qt_search_spec_from_config(S->models[model], S->space, config, S->max_epochs, 0, 1,
                                      &spec, &err);
  if (rc == QT_ENOTIMPL) {
    snprintf(reason, size, "%s", qt_err_message(&err));
    return 0;
  }
  return 1;
}

static void count_reason(search *S, const char *reason) {
  if (strstr(S->drop_reasons, reason)) return;
  size_t used = strlen(S->drop_reasons);
  if (used + strlen(reason) + 4 < sizeof S->drop_reasons)
    snprintf(S->drop_reasons + used, sizeof S->drop_reasons - used, "%s%s", used ? "; " : "",
             reason);
}

static int build_pool(search *S, qt_err *err) {
  size_t n = S->params->pool_size ? S->params->pool_size : DEFAULT_POOL;
  S->configs = calloc(n, sizeof *S->configs);
  if (!S->configs) return qt_err_set(err, QT_ENOMEM, "out of memory for %zu candidates", n);
  S->n_configs = n;
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++) rc = qt_config_init(&S->configs[i], S->space, err);
  if (rc < 0) return rc;
  rc = qt_space_sobol(S->space, n, 0, S->configs, err);
  if (rc < 0) return rc;
  qt_rng_t *root = NULL, *rng = NULL;
  rc = qt_rng_init(&root, S->params->seed, err);
  if (rc == 0) rc = qt_rng_fork(root, STREAM_POOL, &rng, err);
  qt_rng_free(root);
  char reason[1024];
  for (size_t i = 0; i < n && rc == 0; i++) {
    int tries = 0;
    size_t model = (size_t)qt_config_index(&S->configs[i], S->model_hp);
    while (!runnable(S, &S->configs[i], reason, sizeof reason)) {
      if (tries == 0) S->dropped++;
      count_reason(S, reason);
      if (++tries > RESAMPLE_TRIES) {
        rc = qt_err_set(err, QT_ENOTIMPL,
                        "no configuration of the space that the engine can run was found in "
                        "%d draws (%s)",
                        RESAMPLE_TRIES, S->drop_reasons);
        break;
      }
      rc = qt_space_sample(S->space, rng, &S->configs[i], err);
      if (rc == 0) rc = qt_config_set_index(&S->configs[i], S->model_hp, model, err);
      if (rc < 0) break;
    }
  }
  qt_rng_free(rng);
  if (rc < 0) return rc;
  if (S->dropped)
    QT_LOG_INFO(
        "pool: %zu of %zu design points replaced by random ones the engine can run "
        "(not implemented yet: %s)",
        S->dropped, n, S->drop_reasons);
  rc = qt_pool_init(&S->pool, S->space, S->configs, n, err);
  if (rc < 0) return rc;
  S->pool_ready = 1;
  S->pool.max_epochs = S->max_epochs;
  const qt_dataset *train = S->data.train;
  double meta[4] = {(double)train->n, (double)train->n_classes, (double)train->height,
                    (double)train->channels};
  return qt_pool_set_meta(&S->pool, meta, 4, err);
}

static int write_run_yaml(search *S, qt_err *err) {
  char text[16384], q[4200];
  size_t used = 0;
  used += (size_t)snprintf(text + used, sizeof text - used,
                           "# Resolved settings of a qtune search (written by qtune search).\n"
                           "# hash covers data..max_disk; the journal is the record of the run.\n"
                           "version: %d\n",
                           RUN_YAML_VERSION);
  for (int k = 0; k < KEY_COUNT; k++) {
    yaml_quote(S->set.values[k], q, sizeof q);
    used += (size_t)snprintf(text + used, sizeof text - used, "%s: %s\n", key_names[k], q);
  }
  yaml_quote(S->drop_reasons, q, sizeof q);
  used += (size_t)snprintf(text + used, sizeof text - used,
                           "hash: \"%s\"\nthreads: %d\nbudget_s: %.17g\npool_replaced: %zu\n"
                           "pool_replaced_why: %s\n",
                           S->set.hash, S->threads, S->budget, S->dropped, q);
  return write_atomic(S->path_yaml, text, err);
}

static int overwrite_dir(search *S) {
  static const char *const ours[] = {"run.yaml",
                                     "run.yaml.tmp",
                                     "journal.jsonl",
                                     "trials",
                                     "incumbent.safetensors",
                                     "incumbent.safetensors.tmp",
                                     "summary",
                                     NULL};
  char path[4200];
  for (size_t i = 0; ours[i]; i++) {
    snprintf(path, sizeof path, "%s/%s", S->run_dir, ours[i]);
    qt_remove_tree(path);
  }
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Replay                                                                     */
/* ------------------------------------------------------------------------- */

/* The next record of the log that replay consumes (suggest, trial_created,
 * epoch_begin, epoch_end, trial_failed), or NULL at its end. The others
 * are skipped; incumbent records tell what incumbent.safetensors holds. */
static const qt_journal_record *peek(search *S) {
  if (!S->replaying) return NULL;
  while (S->pos < S->log.count) {
    const qt_journal_record *r = &S->log.records[S->pos];
    if (r->type == QT_JOURNAL_RUN_START || r->type == QT_JOURNAL_RUN_END) {
      S->pos++;
      continue;
    }
    if (r->type == QT_JOURNAL_INCUMBENT) {
      S->inc_trial = r->trial;
      S->inc_epoch = r->epoch;
      S->pos++;
      continue;
    }
    return r;
  }
  return NULL;
}

static int diverges(search *S, const char *what, qt_err *err) {
  return qt_err_set(err, QT_ESCHEMA,
                    "%s: the journal diverges from the optimizer at line %zu (%s); the run "
                    "cannot be resumed (start over with --overwrite)",
                    S->path_journal, S->pos + 1, what);
}

/* Leaves replay: the checkpoints are tidied, the curves rewritten and the
 * incumbent file made to match the journal. */
static int go_live(search *S, qt_err *err) {
  if (!S->replaying) return 0;
  S->replaying = 0;
  qt__finetune_cleanup(S->objective);
  enforce_disk(S);
  for (size_t i = 0; i < S->pool.count; i++) {
    int rc = write_curve(S, i, err);
    if (rc < 0) return rc;
  }
  if (S->best_trial >= 0 && (S->inc_trial != S->best_trial || S->inc_epoch != S->best_epoch) &&
      qt__finetune_checkpoint_epoch(S->objective, (size_t)S->best_trial) == S->best_epoch &&
      !qt__finetune_evicted(S->objective, (size_t)S->best_trial))
    return set_incumbent(S, (size_t)S->best_trial, S->best_epoch, S->best_score, err);
  return 0;
}

/* ------------------------------------------------------------------------- */
/* The loop                                                                   */
/* ------------------------------------------------------------------------- */

/* The reason to end before the next epoch of trial (NULL: go on). */
static const char *limit_before_epoch(search *S, size_t trial, double *predicted) {
  const qt_search_params *p = S->params;
  *predicted = predict_cost(S, trial);
  if (p->should_stop && p->should_stop(p->user)) return "interrupted";
  if (p->max_epochs_total > 0 && S->total_epochs >= p->max_epochs_total) return "max-epochs";
  double clock = search_clock(S);
  if (clock >= S->budget) return "budget";
  if (isfinite(*predicted) && clock + *predicted > S->budget) return "budget";
  return NULL;
}

/* After an epoch: the reason to end before the optimizer sees it (and
 * refits its surrogate, which may take long): a limit is reached, Ctrl-C,
 * or the optimizer's last cycle (observe + suggest) would not fit in the
 * budget any more. A resumed run replays the observation. NULL: go on. */
static const char *end_before_observe(search *S) {
  const qt_search_params *p = S->params;
  if (isfinite(p->target) && S->best_trial >= 0 && S->best_score >= p->target) return "target";
  if (p->max_epochs_total > 0 && S->total_epochs >= p->max_epochs_total) return "max-epochs";
  if (p->should_stop && p->should_stop(p->user)) return "interrupted";
  double clock = search_clock(S);
  if (clock >= S->budget || clock + S->optimizer_s > S->budget) return "budget";
  return NULL;
}

static int journal_failure(search *S, size_t trial, long epoch, const char *status,
                           const char *reason, qt_err *err) {
  qt_journal_record rec = qt_journal_record_init(QT_JOURNAL_TRIAL_FAILED);
  rec.trial = (long)trial;
  rec.epoch = epoch;
  rec.status = status;
  rec.reason = reason;
  return emit(S, &rec, err);
}

/* Runs epoch e of trial live. *reason is set when the search must end. */
static int live_epoch(search *S, size_t trial, long epoch, double predicted, int *trial_over,
                      const char **reason, qt_err *err) {
  double clock_begin = search_clock(S);
  qt_journal_record rec = qt_journal_record_init(QT_JOURNAL_EPOCH_BEGIN);
  rec.trial = (long)trial;
  rec.epoch = epoch;
  rec.predicted_cost_s = predicted;
  int rc = emit(S, &rec, err);
  if (rc < 0) return rc;
  qt_observation obs;
  S->live_trial = trial;
  rc = qt_objective_step(S->objective, trial, epoch, &obs, err);
  if (rc < 0) return rc;
  const qt__finetune_step *step = qt__finetune_last_step(S->objective);
  if (step->stopped) {
    *reason = search_clock(S) > S->budget ? "budget" : "interrupted";
    return 0;
  }
  if (obs.status != QT_OBS_STATUS_OK) {
    const char *status = obs.status == QT_OBS_STATUS_DIVERGED ? "diverged" : "failed";
    QT_LOG_WARN("trial %zu epoch %ld %s: %s", trial, epoch, status, step->reason);
    rc = journal_failure(S, trial, epoch, status, step->reason, err);
    if (rc < 0) return rc;
    S->trials[trial].ended = 1;
    qt__finetune_evict(S->objective, trial);
    qt_observation o = failure_of(status);
    *trial_over = 1;
    if ((*reason = end_before_observe(S))) return 0;
    double t_observe = qt_time_now();
    rc = qt_optimizer_observe(S->optimizer, trial, epoch, &o, err);
    S->observe_s = qt_time_now() - t_observe;
    return rc;
  }
  const qt_run_epoch_result *r = &step->result;
  rec = qt_journal_record_init(QT_JOURNAL_EPOCH_END);
  rec.trial = (long)trial;
  rec.epoch = epoch;
  rec.status = "ok";
  rec.score = r->score;
  rec.top5 = r->top5;
  rec.train_loss = r->train_loss;
  rec.val_loss = r->val_loss;
  rec.cost_s = r->seconds;
  rec.images_per_s = r->images_per_s;
  rc = emit(S, &rec, err);
  if (rc < 0) return rc;
  if ((rc = qt__finetune_commit(S->objective, trial, epoch, err)) < 0) return rc;
  long best_before = S->best_trial;
  double best_score_before = S->best_score;
  if ((rc = book_epoch(S, trial, &rec, NAN)) < 0)
    return qt_err_set(err, rc, "out of memory for the curve of trial %zu", trial);
  if ((rc = write_curve(S, trial, err)) < 0) return rc;
  if (best_before < 0 || rec.score > best_score_before) {
    rc = set_incumbent(S, trial, epoch, rec.score, err);
    if (rc < 0) return rc;
  }
  /* What the epoch cost the clock, bookkeeping included, predicts the next. */
  double wall = search_clock(S) - clock_begin;
  S->trials[trial].last_wall = wall;
  if (epoch == 1) S->trials[trial].first_wall = wall;
  enforce_disk(S);
  if ((*reason = end_before_observe(S))) return 0;
  qt_observation o = observation_of(&rec);
  double t_observe = qt_time_now();
  rc = qt_optimizer_observe(S->optimizer, trial, epoch, &o, err);
  S->observe_s = qt_time_now() - t_observe;
  return rc;
}

/* Replays the records of epoch `epoch` of trial. *done: 1 when the journal
 * held its result (then *trial_over tells whether it ended the trial). */
static int replay_epoch(search *S, size_t trial, long epoch, int *done, int *trial_over,
                        qt_err *err) {
  *done = 0;
  const qt_journal_record *r = peek(S);
  if (!r) return 0;
  if (r->type != QT_JOURNAL_EPOCH_BEGIN || r->trial != (long)trial || r->epoch != epoch) {
    char what[160];
    snprintf(what, sizeof what, "expected epoch_begin of trial %zu epoch %ld, found %s", trial,
             epoch, qt_journal_type_name(r->type));
    return diverges(S, what, err);
  }
  double t_begin = r->t;
  S->pos++;
  for (;;) {
    r = peek(S);
    if (!r) return 0; /* begun, never ended: run it again live */
    if (r->type == QT_JOURNAL_EPOCH_BEGIN && r->trial == (long)trial && r->epoch == epoch) {
      t_begin = r->t;
      S->pos++; /* a retry after a kill */
      continue;
    }
    break;
  }
  if (r->trial != (long)trial || r->epoch != epoch ||
      (r->type != QT_JOURNAL_EPOCH_END && r->type != QT_JOURNAL_TRIAL_FAILED)) {
    char what[160];
    snprintf(what, sizeof what, "expected the end of trial %zu epoch %ld, found %s", trial, epoch,
             qt_journal_type_name(r->type));
    return diverges(S, what, err);
  }
  S->pos++;
  *done = 1;
  if (r->type == QT_JOURNAL_TRIAL_FAILED) {
    S->trials[trial].ended = 1;
    *trial_over = 1;
    qt_observation o = failure_of(r->status);
    return qt_optimizer_observe(S->optimizer, trial, epoch, &o, err);
  }
  S->live_trial = trial; /* as the uninterrupted run had it (--max-disk) */
  int rc = book_epoch(S, trial, r, r->t - t_begin);
  if (rc < 0) return qt_err_set(err, rc, "out of memory replaying the journal");
  qt__finetune_set_checkpoint(S->objective, trial, epoch);
  qt_observation o = observation_of(r);
  return qt_optimizer_observe(S->optimizer, trial, epoch, &o, err);
}

static int journal_trial_created(search *S, size_t trial, qt_err *err) {
  const qt_config *config = &S->configs[trial];
  size_t n = config->count;
  const char **names = calloc(n, sizeof *names);
  char **values = calloc(n, sizeof *values);
  int rc = 0;
  size_t k = 0;
  if (!names || !values) rc = qt_err_set(err, QT_ENOMEM, "out of memory");
  for (size_t hp = 0; hp < n && rc == 0; hp++) {
    if (hp == S->model_hp || !qt_config_is_active(config, hp)) continue;
    values[k] = malloc(256);
    if (!values[k]) {
      rc = qt_err_set(err, QT_ENOMEM, "out of memory");
      break;
    }
    qt_config_get_string(config, hp, values[k], 256);
    names[k++] = qt_space_hp_name(S->space, hp);
  }
  if (rc == 0) {
    qt_journal_record rec = qt_journal_record_init(QT_JOURNAL_TRIAL_CREATED);
    rec.trial = (long)trial;
    rec.model = S->models[trial_model(S, trial)]->name;
    rec.n_values = k;
    rec.names = names;
    rec.values = (const char *const *)values;
    rec.seed = (long)(S->params->seed + (uint64_t)trial);
    rc = emit(S, &rec, err);
  }
  for (size_t i = 0; values && i < n; i++) free(values[i]);
  free(values);
  free(names);
  return rc;
}

/* The loop; returns the end reason in *reason. */
static int search_loop(search *S, const char **reason, qt_err *err) {
  const qt_search_params *p = S->params;
  int rc = 0;
  for (;;) {
    if (!S->replaying) {
      if (p->should_stop && p->should_stop(p->user)) return *reason = "interrupted", 0;
      if (p->max_epochs_total > 0 && S->total_epochs >= p->max_epochs_total)
        return *reason = "max-epochs", 0;
      if (search_clock(S) >= S->budget) return *reason = "budget", 0;
    }
    qt_suggestion sg;
    qt_suggest_status status;
    double t_opt = qt_time_now();
    rc = qt_optimizer_suggest(S->optimizer, &sg, &status, err);
    t_opt = qt_time_now() - t_opt;
    if (rc < 0) return rc;
    S->optimizer_s = S->observe_s + t_opt;
    S->observe_s = 0.0;
    const qt_journal_record *r = peek(S);
    if (status != QT_SUGGEST_STATUS_OK) {
      if (r) return diverges(S, "the optimizer has nothing left to suggest", err);
      if ((rc = go_live(S, err)) < 0) return rc;
      return *reason = "done", 0;
    }
    size_t trial = sg.candidate;
    trial_state *t = &S->trials[trial];
    if (r) {
      if (r->type != QT_JOURNAL_SUGGEST || r->trial != (long)trial || r->target != sg.epoch) {
        char what[200];
        snprintf(what, sizeof what, "optimizer: trial %zu to epoch %ld; journal: %s", trial,
                 sg.epoch, qt_journal_type_name(r->type));
        return diverges(S, what, err);
      }
      S->pos++;
      r = peek(S);
      if (!t->created) {
        if (r && (r->type != QT_JOURNAL_TRIAL_CREATED || r->trial != (long)trial))
          return diverges(S, "expected trial_created", err);
        if (r) {
          S->pos++;
          t->created = 1;
          S->n_created++;
        }
      }
    } else {
      if ((rc = go_live(S, err)) < 0) return rc;
      if (!t->created && p->max_trials > 0 && S->n_created >= p->max_trials)
        return *reason = "max-trials", 0;
      double predicted = predict_cost(S, trial);
      if (!t->created) {
        /* A new trial must fit its first epoch before it is suggested. */
        double clock = search_clock(S);
        if (isfinite(predicted) && clock + predicted > S->budget) return *reason = "budget", 0;
      }
      qt_journal_record rec = qt_journal_record_init(QT_JOURNAL_SUGGEST);
      rec.trial = (long)trial;
      rec.target = sg.epoch;
      rec.optimizer_s = t_opt;
      rec.predicted_cost_s = predicted;
      if ((rc = emit(S, &rec, err)) < 0) return rc;
    }
    if (!t->created) {
      if ((rc = go_live(S, err)) < 0) return rc;
      if ((rc = journal_trial_created(S, trial, err)) < 0) return rc;
      t->created = 1;
      S->n_created++;
    }
    int trial_over = 0;
    for (long e = t->last_epoch + 1; e <= sg.epoch && !trial_over; e++) {
      if (S->replaying) {
        int done = 0;
        if ((rc = replay_epoch(S, trial, e, &done, &trial_over, err)) < 0) return rc;
        if (done) continue;
        if ((rc = go_live(S, err)) < 0) return rc;
      }
      double predicted;
      const char *stop = limit_before_epoch(S, trial, &predicted);
      if (stop) return *reason = stop, 0;
      rc = live_epoch(S, trial, e, predicted, &trial_over, reason, err);
      if (rc < 0) return rc;
      if (*reason) return 0;
    }
  }
}

/* ------------------------------------------------------------------------- */
/* Entry point                                                                */
/* ------------------------------------------------------------------------- */

static void search_free(search *S) {
  qt_objective_free(S->objective);
  qt_optimizer_free(S->optimizer);
  qt_surrogate_free(S->surrogate);
  if (S->pool_ready) qt_pool_free(&S->pool);
  for (size_t i = 0; S->configs && i < S->n_configs; i++) qt_config_free(&S->configs[i]);
  free(S->configs);
  if (S->trials)
    for (size_t i = 0; i < S->n_configs; i++) free(S->trials[i].rows);
  free(S->trials);
  qt_data_splits_free(&S->data);
  free(S->models);
  qt_space_free(S->space);
  qt_space_free(S->base_space);
  qt_hub_free(S->hub);
  qt_journal_close(S->journal);
  if (S->have_log) qt_journal_log_free(&S->log);
  qt_search_summary_free(S->summary);
  settings_free(&S->set);
  if (S->lock_fd >= 0) qt_rundir_unlock(S->lock_fd);
  free(S->run_dir);
}

/* Settings, run.yaml and the journal's state: fresh or resumed. */
static int open_run(search *S, qt_err *err) {
  const qt_search_params *p = S->params;
  int rc = qt_mkdir_p(p->run_dir, err);
  if (rc < 0) return rc;
  S->run_dir = strdup(p->run_dir);
  if (!S->run_dir) return qt_err_set(err, QT_ENOMEM, "out of memory");
  snprintf(S->path_journal, sizeof S->path_journal, "%s/journal.jsonl", S->run_dir);
  snprintf(S->path_yaml, sizeof S->path_yaml, "%s/run.yaml", S->run_dir);
  rc = qt_rundir_lock(S->run_dir, &S->lock_fd, err);
  if (rc < 0) return rc;
  if (p->mode == QT_SEARCH_MODE_OVERWRITE) overwrite_dir(S);

  char *data = resolve_path(p->data), *hub = resolve_path(p->hub);
  char *space = resolve_path(p->space ? p->space : DEFAULT_SPACE);
  char *surrogate = resolve_path(p->surrogate);
  char hub_digest[32], space_digest[32];
  file_digest(hub, hub_digest);
  file_digest(space, space_digest);
  rc = settings_set(&S->set, KEY_DATA, "%s", data ? data : "");
  rc |= settings_set(&S->set, KEY_HUB, "%s", hub ? hub : "");
  rc |= settings_set(&S->set, KEY_HUB_DIGEST, "%s", hub_digest);
  rc |= settings_set(&S->set, KEY_SPACE, "%s", space ? space : "");
  rc |= settings_set(&S->set, KEY_SPACE_DIGEST, "%s", space_digest);
  rc |= settings_set(&S->set, KEY_OPTIMIZER, "%s", S->optimizer_name);
  rc |= settings_set(&S->set, KEY_SURROGATE, "%s", surrogate ? surrogate : "");
  rc |= settings_set(&S->set, KEY_SEED, "%llu", (unsigned long long)p->seed);
  rc |= settings_set(&S->set, KEY_POOL, "%zu", p->pool_size ? p->pool_size : DEFAULT_POOL);
  rc |= settings_set(&S->set, KEY_MAX_EPOCHS, "%ld", p->max_epochs);
  rc |= settings_set(&S->set, KEY_MAX_DISK, "%zu", p->max_disk);
  free(data);
  free(hub);
  free(space);
  free(surrogate);
  if (rc != 0) return qt_err_set(err, QT_ENOMEM, "out of memory");
  settings_hash(&S->set);

  /* A journal with records means a resume. */
  qt_err inner;
  qt_err_clear(&inner);
  rc = qt_journal_read(S->path_journal, &S->log, &inner);
  if (rc == QT_ENOENT) return 0;
  if (rc < 0) {
    *err = inner;
    return rc;
  }
  S->have_log = 1;
  const qt_journal_record *start = NULL;
  for (size_t i = 0; i < S->log.count; i++) {
    const qt_journal_record *r = &S->log.records[i];
    if (r->type == QT_JOURNAL_RUN_START) {
      start = r;
      S->session = r->session > S->session ? r->session : S->session;
    }
    S->clock0 = r->t > S->clock0 ? r->t : S->clock0;
  }
  if (!start) return 0; /* nothing journaled yet: a fresh start */
  if (!start->hash || strcmp(start->hash, S->set.hash) != 0) {
    char diff[3000];
    settings_diff(&S->set, S->path_yaml, diff, sizeof diff);
    return qt_err_set(err, QT_EINVAL,
                      "%s holds a search with other settings: %s. Use the same settings to "
                      "resume it, --overwrite to start over, or another --run-dir",
                      S->run_dir, diff);
  }
  S->budget = start->budget_s + p->extend_s;
  S->replaying = 1;
  return 0;
}

/* params->default_surrogate, when params->surrogate is NULL, the optimizer
 * is unset or one that reads a surrogate, and the file fits this search:
 * 1 (use it), 0 (not), < 0 on error. A resumed search
 * (run.yaml exists, mode AUTO) keeps what run.yaml records; a fresh one
 * loads the space and the hub's models as the search will and tries the
 * file: another space or other models (QT_ESCHEMA) is an info line and 0,
 * a damaged file an error that says how to go on without it. */
static int pick_default_surrogate(const qt_search_params *p, qt_err *err) {
  const char *path = p->default_surrogate;
  if (p->surrogate || !path || access(path, F_OK) != 0) return 0;
  if (p->optimizer && !qt_optimizer_uses_surrogate(p->optimizer)) return 0;
  char *resolved = resolve_path(path);
  if (!resolved) return qt_err_set(err, QT_ENOMEM, "out of memory");
  char run_yaml[4200];
  snprintf(run_yaml, sizeof run_yaml, "%s/run.yaml", p->run_dir);
  qt_yaml_doc_t *doc = NULL;
  if (p->mode == QT_SEARCH_MODE_AUTO && qt_yaml_load_file(run_yaml, &doc, NULL) == 0) {
    const char *recorded = qt_yaml_scalar(doc, qt_yaml_get(doc, qt_yaml_root(doc), "surrogate"));
    int use = recorded && strcmp(recorded, resolved) == 0;
    qt_yaml_free(doc);
    free(resolved);
    return use;
  }
  free(resolved);
  qt_space_t *base = NULL;
  qt_search_models m;
  memset(&m, 0, sizeof m);
  qt_surrogate_t *surrogate = NULL;
  qt_err why;
  qt_err_clear(&why);
  int rc = qt_space_load_file(p->space ? p->space : DEFAULT_SPACE, &base, err);
  if (rc == 0) rc = qt_search_models_load(p->hub, base, &m, err);
  int use = 0;
  if (rc == 0) {
    int loaded = qt_surrogate_load(path, m.space, &surrogate, &why);
    if (loaded == 0) {
      const qt_surrogate_info *info = qt_surrogate_get_info(surrogate);
      QT_LOG_INFO("search: quicktune with the surrogate %s (meta-trained on \"%s\"; --surrogate "
                  "none: without it)",
                  path, info->meta_dataset ? info->meta_dataset : "?");
      use = 1;
    } else if (loaded == QT_ESCHEMA) {
      QT_LOG_INFO("search: the surrogate %s does not fit this search (%s); quicktune-MC needs "
                  "none", path, qt_err_message(&why));
    } else {
      rc = qt_err_set(err, loaded, "%s (the default surrogate; --surrogate none searches "
                      "without it)", qt_err_message(&why));
    }
  }
  qt_surrogate_free(surrogate);
  qt_search_models_free(&m);
  qt_space_free(base);
  return rc < 0 ? rc : use;
}

int qt_search_run(const qt_search_params *caller_params, qt_search_result *out, qt_err *err) {
  if (!caller_params || !out) return qt_err_set(err, QT_EINVAL, "qt_search_run: NULL argument");
  qt_search_params with_default = *caller_params;
  const qt_search_params *params = &with_default;
  memset(out, 0, sizeof *out);
  out->best_trial = out->best_epoch = -1;
  out->best_score = NAN;
  out->end_reason = "error";
  if (!params->run_dir || !params->data || !params->hub)
    return qt_err_set(err, QT_EINVAL, "qt_search_run: run_dir, data and hub are required");
  if (!(params->extend_s >= 0.0)) return qt_err_set(err, QT_EINVAL, "extend must be >= 0 seconds");
  int use_default = pick_default_surrogate(params, err);
  if (use_default < 0) return use_default;
  if (use_default) with_default.surrogate = params->default_surrogate;

  search S;
  memset(&S, 0, sizeof S);
  S.params = params;
  S.lock_fd = -1;
  S.best_trial = S.best_epoch = S.inc_trial = S.inc_epoch = -1;
  S.best_score = NAN;
  S.live_trial = SIZE_MAX;
  S.optimizer_name =
      params->optimizer ? params->optimizer : (params->surrogate ? "quicktune" : "quicktune-MC");
  S.threads = params->threads;
  if (S.threads <= 0) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    S.threads = cpus < 1 ? 1 : (cpus > 8 ? 8 : (int)cpus);
  }
  S.t0 = qt_time_now();
  const char *reason = NULL;

  int rc = open_run(&S, err);
  if (rc < 0) goto done;
  if (!S.replaying) {
    if (!(params->budget_s > 0.0)) {
      rc = qt_err_set(err, QT_EINVAL, "the budget must be > 0 seconds");
      goto done;
    }
    S.budget = params->budget_s + params->extend_s;
  }

  /* Inputs. */
  rc = qt_space_load_file(params->space ? params->space : DEFAULT_SPACE, &S.base_space, err);
  if (rc < 0) goto done;
  long fid_min, fid_max;
  qt_space_fidelity(S.base_space, NULL, &fid_min, &fid_max);
  S.max_epochs = params->max_epochs > 0 ? params->max_epochs : fid_max;
  if (S.max_epochs < fid_min || S.max_epochs > fid_max) {
    rc = qt_err_set(err, QT_EINVAL, "max_epochs %ld is outside the space's fidelity [%ld, %ld]",
                    S.max_epochs, fid_min, fid_max);
    goto done;
  }
  if ((rc = load_models(&S, err)) < 0) goto done;
  qt_data_params dp = qt_data_default_params();
  dp.seed = params->seed;
  if ((rc = qt_data_load(params->data, &dp, &S.data, err)) < 0) goto done;
  if ((rc = build_pool(&S, err)) < 0) goto done;
  S.trials = calloc(S.pool.count, sizeof *S.trials);
  if (!S.trials) {
    rc = qt_err_set(err, QT_ENOMEM, "out of memory");
    goto done;
  }
  for (size_t i = 0; i < S.pool.count; i++)
    S.trials[i].best_score = S.trials[i].first_cost = S.trials[i].last_cost =
        S.trials[i].first_wall = S.trials[i].last_wall = NAN;
  if (params->surrogate &&
      (rc = qt_surrogate_load(params->surrogate, S.space, &S.surrogate, err)) < 0)
    goto done;
  /* A surrogate with model descriptors learns those of hub models it never
   * saw from the hub (a no-op for one-hot surrogates). */
  if (S.surrogate && (rc = qt_surrogate_add_hub_descriptors(S.surrogate, S.hub, NULL, err)) < 0)
    goto done;
  qt_optimizer_params op = qt_optimizer_default_params();
  op.seed = params->seed;
  op.max_epochs = S.max_epochs;
  op.surrogate = S.surrogate;
  if ((rc = qt_optimizer_create(S.optimizer_name, &S.pool, &op, &S.optimizer, err)) < 0) goto done;
  /* The device: a GPU if asked for (or, with auto, present). */
  int gpu = 0;
  if (params->device != QT_SEARCH_DEVICE_CPU) {
    qt_err why;
    gpu = qt_backend_kind_check(QT_BACKEND_KIND_CUDA, &why) == 0;
    if (!gpu && params->device == QT_SEARCH_DEVICE_CUDA) {
      rc = qt_err_set(err, QT_ENODEV, "--device cuda: %s", qt_err_message(&why));
      goto done;
    }
    if (gpu) {
      QT_LOG_INFO("trials train on the GPU (cuda:0)");
      int cnn = 0;
      for (size_t i = 0; i < S.n_models && !cnn; i++) {
        qt_model_family family;
        cnn = qt_model_family_parse(S.models[i]->family, &family) == 0 &&
              qt_model_family_is_cnn(family);
      }
      if (cnn) {
        char path[512];
        qt_cuda_describe_convolutions(QT_MATMUL_FP32, path, sizeof path);
        QT_LOG_INFO("CNN trials' convolutions in FP32: %s; under amp: im2col and cuBLAS", path);
      }
    }
  }
  qt__finetune_setup setup = {S.run_dir, &S.pool,      S.model_hp,   S.models,
                              &S.data,   S.max_epochs, params->seed, S.threads, gpu};
  if ((rc = qt__finetune_objective_init(&setup, &S.objective, err)) < 0) goto done;
  qt__finetune_set_stop(S.objective, stop_hook, &S);

  /* The journal: settings first, then run_start. */
  if (!S.replaying && (rc = write_run_yaml(&S, err)) < 0) goto done;
  if ((rc = qt_search_summary_new(&S.summary, err)) < 0) goto done;
  for (size_t i = 0; S.have_log && i < S.log.count; i++)
    qt_search_summary_apply(S.summary, &S.log.records[i], NULL);
  if ((rc = qt_journal_open(S.path_journal, &S.journal, err)) < 0) goto done;
  /* The session's clock starts where the journal ends. */
  S.t0 = qt_time_now();
  {
    char when[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    qt_journal_record rec = qt_journal_record_init(QT_JOURNAL_RUN_START);
    rec.session = S.session + 1;
    rec.time = when;
    rec.hash = S.set.hash;
    rec.budget_s = S.budget;
    rec.optimizer = S.optimizer_name;
    rec.seed = (long)params->seed;
    rec.pool = (long)S.pool.count;
    rec.max_epochs = S.max_epochs;
    rec.dataset = S.set.values[KEY_DATA];
    rec.hub = S.set.values[KEY_HUB];
    rec.space = S.set.values[KEY_SPACE];
    if ((rc = emit(&S, &rec, err)) < 0) goto done;
  }
  if (S.replaying)
    QT_LOG_INFO("resuming %s: session %ld, %.0fs of %.0fs used, replaying %zu records", S.run_dir,
                S.session + 1, S.clock0, S.budget, S.log.count);

  rc = search_loop(&S, &reason, err);
  if (rc == 0 && S.replaying) rc = go_live(&S, err);
  qt__finetune_release(S.objective);
  {
    double used = search_clock(&S);
    qt_journal_record rec = qt_journal_record_init(QT_JOURNAL_RUN_END);
    rec.reason = rc < 0 ? "error" : reason;
    rec.budget_s = S.budget;
    rec.used_s = used;
    rec.overshoot_s = used > S.budget ? used - S.budget : 0.0;
    qt_err end_err;
    qt_err_clear(&end_err);
    int rc_end = emit(&S, &rec, rc < 0 ? &end_err : err);
    if (rc == 0) rc = rc_end;
    out->end_reason = rc < 0 ? "error" : reason;
    out->budget_s = S.budget;
    out->used_s = used;
    out->overshoot_s = rec.overshoot_s;
  }

done:
  if (rc < 0) out->end_reason = "error";
  out->trials = S.n_created;
  out->epochs = S.total_epochs;
  out->best_trial = S.best_trial;
  out->best_epoch = S.best_epoch;
  out->best_score = S.best_score;
  search_free(&S);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Exporting the incumbent's weights                                          */
/* ------------------------------------------------------------------------- */

int qt_search_export_weights(const char *run_dir, const char *path, qt_err *err) {
  if (!run_dir || !path)
    return qt_err_set(err, QT_EINVAL, "qt_search_export_weights: NULL argument");
  char journal_path[4200], incumbent[4200];
  snprintf(journal_path, sizeof journal_path, "%s/journal.jsonl", run_dir);
  snprintf(incumbent, sizeof incumbent, "%s/incumbent.safetensors", run_dir);
  qt_journal_log log;
  int rc = qt_journal_read(journal_path, &log, err);
  if (rc < 0) return rc;
  /* The incumbent file holds the last incumbent record's epoch. */
  const qt_journal_record *start = NULL, *inc = NULL, *created = NULL;
  for (size_t i = 0; i < log.count; i++) {
    const qt_journal_record *r = &log.records[i];
    if (r->type == QT_JOURNAL_RUN_START) start = r;
    if (r->type == QT_JOURNAL_INCUMBENT) inc = r;
  }
  for (size_t i = 0; inc && i < log.count; i++) {
    const qt_journal_record *r = &log.records[i];
    if (r->type == QT_JOURNAL_TRIAL_CREATED && r->trial == inc->trial) created = r;
  }
  qt_hub_t *hub = NULL;
  qt_data_splits data = {0};
  qt_run_t *run = NULL;
  if (!start || !inc || !created) {
    rc = qt_err_set(err, QT_ENOENT, "%s: no epoch has ended yet; nothing to export", journal_path);
    goto done;
  }
  if ((rc = qt_hub_load_file(start->hub, &hub, err)) < 0) goto done;
  size_t index;
  if (qt_hub_find(hub, created->model, &index) != 0) {
    rc = qt_err_set(err, QT_ENOENT, "%s: no model '%s' (trial %ld) any more", start->hub,
                    created->model, created->trial);
    goto done;
  }
  qt_run_spec spec;
  if ((rc = qt__search_spec_from_values(qt_hub_model_at(hub, index), created->names,
                                        created->values, created->n_values, start->max_epochs,
                                        (uint64_t)created->seed, 1, &spec, err)) < 0)
    goto done;
  qt_data_params dp = qt_data_default_params();
  dp.seed = (uint64_t)start->seed;
  if ((rc = qt_data_load(start->dataset, &dp, &data, err)) < 0) goto done;
  spec.data = &data;
  if ((rc = qt_run_load(incumbent, &spec, &run, err)) < 0) goto done;
  rc = qt_run_save_weights(run, path, err);
done:
  qt_run_free(run);
  qt_data_splits_free(&data);
  qt_hub_free(hub);
  qt_journal_log_free(&log);
  return rc;
}

/*
 * qt_bo.h - the optimization side of qtune: observations, objectives,
 * optimizers behind one ask/tell interface, and the benchmark runner.
 *
 * The seams (see ARCHITECTURE.md; keep them stable):
 *
 *   Candidate pool   the configurations an optimizer may choose from, each
 *                    with its encoded vector. On benchmarks the pool is the
 *                    set of runs recorded for the test dataset; in a real
 *                    search it is a sample of the search space.
 *   Observation      one epoch of one trial: score in [0, 1] (higher is
 *                    better), cost in seconds of that epoch alone, optional
 *                    losses, and a status.
 *   Objective        step(candidate, epoch) -> observation. It owns whatever
 *                    is needed to continue a trial from its last epoch.
 *   Optimizer        suggest -> (candidate, target epoch); observe(candidate,
 *                    epoch, observation); fail(candidate, reason). Several
 *                    suggestions may be pending at once (asynchronous
 *                    workers), so an optimizer never assumes that its last
 *                    suggestion is the next one observed.
 *
 * A trial is identified by its candidate index: a configuration is trained
 * as one continuing run, epoch after epoch (freeze-thaw), so "advance
 * candidate i to epoch t" resumes it from its last observed epoch. The caller
 * steps the objective one epoch at a time from the candidate's last epoch + 1
 * to the target and reports each observation.
 *
 * Memory: the pool borrows its configurations and space from the caller;
 * objectives and optimizers are opaque, created and freed in pairs, and keep
 * their own copies of anything else they need.
 *
 * Units: epochs are whole numbers from 1; costs and budgets are seconds.
 */
#ifndef QT_BO_H
#define QT_BO_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/qt_core.h"
#include "metadata/qt_metadata.h"
#include "surrogate/qt_surrogate.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ========================================================================= */
/* Observations                                                               */
/* ========================================================================= */

typedef enum qt_obs_status {
  QT_OBS_STATUS_OK = 0,        /* the epoch ran; score and cost are valid */
  QT_OBS_STATUS_DIVERGED = 1,  /* the loss became NaN or infinite: no further epoch */
  QT_OBS_STATUS_FAILED = 2,    /* the trial failed (bad input, out of memory, ...) */
  QT_OBS_STATUS_EXHAUSTED = 3  /* no such epoch exists (a replayed run ended earlier) */
} qt_obs_status;

typedef struct qt_observation {
  qt_obs_status status;
  double score;      /* in [0, 1], higher is better; NaN unless status is OK */
  double cost;       /* seconds of this epoch alone (train + eval), >= 0 */
  double train_loss; /* NaN when unknown */
  double val_loss;   /* NaN when unknown */
} qt_observation;

/* "ok", "diverged", "failed", "exhausted". */
const char *qt_obs_status_name(qt_obs_status status);

/* ========================================================================= */
/* Candidate pool                                                             */
/* ========================================================================= */

typedef struct qt_pool {
  const qt_space_t *space;  /* not owned */
  size_t count;             /* number of candidates */
  const qt_config *configs; /* (count) not owned; valid for space */
  double *encoded;          /* (count, dim) row-major encodings, owned by the pool */
  size_t dim;               /* qt_space_encoded_dim(space) */
  long max_epochs;          /* the fidelity's maximum */
  qt_config *owned_configs; /* (count) tabular pools only: shallow copies of the runs'
                               configurations (slots owned by the meta-dataset); NULL otherwise */
  double *meta;             /* (meta_dim) meta-features of the dataset the pool is searched
                               for, already multiplied by QT_SURROGATE_META_SCALE (the
                               surrogates' single scale); owned; NULL when meta_dim is 0 */
  size_t meta_dim;
} qt_pool;

/* Encodes every configuration; configs must outlive the pool. The pool has no
 * meta-features (meta_dim 0) until qt_pool_set_meta. */
int qt_pool_init(qt_pool *pool, const qt_space_t *space, const qt_config *configs, size_t count,
                 qt_err *err);
/* Gives the pool the dataset's raw meta-features (count values, e.g.
 * n_samples, n_classes, image_size, channels as in datasets.csv): they are
 * copied and multiplied by QT_SURROGATE_META_SCALE, replacing any earlier
 * ones. Non-finite values are QT_EINVAL. */
int qt_pool_set_meta(qt_pool *pool, const double *features, size_t count, qt_err *err);
void qt_pool_free(qt_pool *pool);

/* ========================================================================= */
/* Objectives                                                                 */
/* ========================================================================= */

/* An objective computes one epoch of one candidate. Implementations: the
 * tabular objective below (replays a meta-dataset), the fine-tuning objective
 * (later). */
typedef struct qt_objective qt_objective_t;

typedef struct qt_objective_vtable {
  const char *name;
  /* Runs epoch `epoch` of candidate `candidate` (epochs are stepped in order
   * per candidate, each at most once). Returns 0 with *out filled, also for
   * diverged, failed and exhausted epochs; a negative code only for errors of
   * the objective itself (its files, its memory). */
  int (*step)(qt_objective_t *objective, size_t candidate, long epoch, qt_observation *out,
              qt_err *err);
  void (*free)(qt_objective_t *objective);
} qt_objective_vtable;

struct qt_objective {
  const qt_objective_vtable *vtable;
};

int qt_objective_step(qt_objective_t *objective, size_t candidate, long epoch, qt_observation *out,
                      qt_err *err);
void qt_objective_free(qt_objective_t *objective);

/* The tabular objective replays dataset `dataset` of a meta-dataset: the
 * candidates are that dataset's runs in meta-dataset order (candidate i is run
 * first_run + i), step() returns the recorded score and cost of the epoch, and
 * an epoch past the run's last recorded one is EXHAUSTED (cost 0). The
 * meta-dataset must outlive the objective. */
int qt_tabular_objective_init(const qt_metadataset_t *md, size_t dataset, qt_objective_t **out,
                              qt_err *err);
/* The candidate pool of that dataset (its runs' configurations), with the
 * dataset's meta-features (qt_pool_set_meta). */
int qt_tabular_pool_init(qt_pool *pool, const qt_metadataset_t *md, size_t dataset, qt_err *err);

/* ========================================================================= */
/* Optimizers (ask/tell)                                                      */
/* ========================================================================= */

typedef struct qt_optimizer qt_optimizer_t;

/*
 * Knobs of the Quick-Tune optimizers (quicktune, quicktune-M, quicktune-C,
 * quicktune-MC; src/bo/qt_opt_quicktune.c documents the algorithm). The
 * defaults are the values of Quick-Tune's code (specs §1.4, §1.7); 0 in any
 * field means its default, so a zeroed struct is the faithful setting.
 */
typedef struct qt_quicktune_params {
  int restart_steps;     /* Adam steps of a training that starts over from the initial state
                            (meta-trained or fresh) (1000) */
  int refine_steps;      /* Adam steps of a warm-started training (50) */
  int initial_restarts;  /* the first this many trainings all start over (10) */
  long patience;         /* start over after this many consecutive observations that did not
                            improve the best score; 0: floor(1.2 * max_epochs), 60 at 50 epochs */
  double learning_rate;  /* 0: 1e-4 from a meta-trained state, 1e-3 from a fresh one */
  double explore;        /* the offset xi of expected improvement (0) */
  size_t max_train_rows; /* 0: train on every observed epoch, as Quick-Tune does; N > 0: at most
                            N rows (each candidate's latest epoch first, then the most recent
                            ones) so that a refit costs O(N^3) however long the search [RECON] */
} qt_quicktune_params;

qt_quicktune_params qt_quicktune_default_params(void);

typedef struct qt_optimizer_params {
  uint64_t seed;     /* random stream of the optimizer (default 0) */
  long min_epochs;   /* smallest budget of successive halving and friends (default 1) */
  long max_epochs;   /* largest budget (default: the pool's max_epochs) */
  double eta;        /* reduction factor of SH, Hyperband, ASHA, BOHB (default 3) */
  /* Quick-Tune only: the meta-trained surrogates (not owned; only read, so
   * optimizers on several threads may share one). NULL: none, which only
   * quicktune-MC accepts. */
  const qt_surrogate_t *surrogate;
  qt_quicktune_params quicktune;
} qt_optimizer_params;

qt_optimizer_params qt_optimizer_default_params(void);

typedef enum qt_suggest_status {
  QT_SUGGEST_STATUS_OK = 0,  /* *out holds a suggestion */
  QT_SUGGEST_STATUS_WAIT = 1, /* nothing to do until pending trials are observed */
  QT_SUGGEST_STATUS_DONE = 2  /* the optimizer has nothing left to try */
} qt_suggest_status;

typedef struct qt_suggestion {
  size_t candidate; /* pool index */
  long epoch;       /* target epoch: advance the candidate up to this epoch */
} qt_suggestion;

/* Names of the registered optimizers, NULL-terminated ("random", "sh",
 * "hyperband", "asha", "bohb", ...). The exact rules of each (schedules,
 * promotions, how an EXHAUSTED candidate ranks) are documented at the top of
 * src/bo/qt_opt_<name>.c; "sh", "hyperband" and "bohb" share the bracket
 * engine of qt_opt_sh.c. Every optimizer draws its new candidates from one seeded
 * permutation of the pool (stream 1 of params.seed), so optimizers given the
 * same seed start from the same candidates; same seed, same suggestions. */
const char *const *qt_optimizer_names(void);
/* Creates the optimizer called name over pool (which must outlive it).
 * QT_ENOENT for an unknown name, listing the known ones. */
int qt_optimizer_create(const char *name, const qt_pool *pool, const qt_optimizer_params *params,
                        qt_optimizer_t **out, qt_err *err);
void qt_optimizer_free(qt_optimizer_t *optimizer);
const char *qt_optimizer_name(const qt_optimizer_t *optimizer);

/* Asks for the next (candidate, target epoch); *status says whether there is
 * one. The suggestion is pending until its epochs are observed or failed. */
int qt_optimizer_suggest(qt_optimizer_t *optimizer, qt_suggestion *out, qt_suggest_status *status,
                         qt_err *err);
/* Tells the result of epoch `epoch` of candidate. An EXHAUSTED, DIVERGED or
 * FAILED observation ends that candidate: it is never suggested again.
 * Epochs come in order: QT_EINVAL unless epoch is the candidate's last OK
 * epoch + 1 (and <= max_epochs), for an ended candidate, or for an OK
 * observation whose score is not finite. */
int qt_optimizer_observe(qt_optimizer_t *optimizer, size_t candidate, long epoch,
                         const qt_observation *observation, qt_err *err);
/* Tells that a pending candidate failed outside the objective (a crash of a
 * worker, ...): it is never suggested again. */
int qt_optimizer_fail(qt_optimizer_t *optimizer, size_t candidate, const char *reason, qt_err *err);

/* ========================================================================= */
/* Benchmark runner (replayed learning curves)                                */
/* ========================================================================= */

/*
 * One benchmark run replays one dataset of a meta-dataset with one optimizer
 * and one seed, as Quick-Tune's benchmark does (specs §1.8): the simulated
 * wall clock is the sum of the replayed epoch costs plus the optimizer's own
 * overhead, measured in real seconds around suggest and observe and charged
 * to the epoch it produced. The run stops when the clock reaches the budget
 * or the optimizer is done.
 *
 * The trajectory is one point per observed epoch. The incumbent is the best
 * score seen at any epoch of any candidate so far; before the first epoch
 * ends it is 0, as in Quick-Tune's perf_traj.
 */

typedef struct qt_bench_point {
  double time;      /* simulated seconds at the end of this epoch */
  double score;     /* score of this epoch (NaN unless status OK) */
  double incumbent; /* best score so far */
  double overhead;  /* real seconds the optimizer spent for this epoch */
  size_t candidate; /* pool index */
  long epoch;
  qt_obs_status status;
} qt_bench_point;

typedef struct qt_bench_trajectory {
  qt_bench_point *points; /* (count) in time order, owned */
  size_t count, capacity;
  double budget;          /* seconds */
  double y_best, y_worst; /* of the dataset: max and min score over all its runs and epochs */
  size_t dataset;
  uint64_t seed;
} qt_bench_trajectory;

void qt_bench_trajectory_free(qt_bench_trajectory *trajectory);

typedef struct qt_bench_params {
  qt_optimizer_params optimizer;
  double budget;       /* simulated seconds (default 3600) */
  int charge_overhead; /* 1 (default): the optimizer's measured seconds advance the clock,
                          as in the paper; 0: only replayed costs do, so that a run is
                          reproducible bit for bit (tests) */
  int overhead_cpu;    /* 0 (default): the overhead is wall-clock seconds; 1: CPU seconds of
                          the thread that runs the optimizer, which other processes on a
                          shared machine do not inflate (with single-threaded BLAS the two
                          agree on an idle machine) */
} qt_bench_params;

qt_bench_params qt_bench_default_params(void);

/* Runs optimizer `name` on dataset `dataset` of md until the simulated clock
 * reaches params->budget or the optimizer is done. */
int qt_bench_run(const qt_metadataset_t *md, size_t dataset, const char *name,
                 const qt_bench_params *params, qt_bench_trajectory *out, qt_err *err);

/* The incumbent at time t (a step function: the last point with time <= t;
 * 0 before the first point). */
double qt_bench_incumbent_at(const qt_bench_trajectory *trajectory, double t);
/* Normalized regret at time t: (y_best - incumbent(t)) / (y_best - y_worst),
 * 0 when y_best == y_worst. */
double qt_bench_regret_at(const qt_bench_trajectory *trajectory, double t);

/* Mean, 95% half-width (1.96 * sd / sqrt(n), sd with n - 1) of n values. */
void qt_bench_mean_ci(const double *values, size_t n, double *mean, double *half_width);
/* Ranks of k values (1 = lowest), ties sharing their average rank. */
void qt_bench_rank(const double *values, size_t k, double *ranks);

/* A benchmark suite: every optimizer x dataset x seed, run on a pool of
 * threads, aggregated into regret and rank over time. Files written under
 * out_dir (every column is documented in docs/benchmarks/README.md):
 *   trajectories/<optimizer>/<dataset>-seed<k>.csv  one row per epoch, written
 *                (temporary file + rename) as soon as the job ends; its last
 *                line "# qtune bench trajectory v1 ..." holds the parameters
 *                the run depends on and marks it complete (resume)
 *   regret.csv   optimizer,time_s,fraction,mean,ci_low,ci_high,n
 *   rank.csv     optimizer,time_s,fraction,mean_rank
 *   summary.csv  one row per optimizer: regret at 10%, 50% and 100% of the
 *                budget with 95% half-widths, final rank, epochs, overhead
 * The time grid has grid_points log-spaced times from budget/1000 to budget. */
typedef struct qt_bench_suite_params {
  const char *const *optimizers; /* (optimizer_count) names */
  size_t optimizer_count;
  const size_t *datasets; /* (dataset_count) dataset indices of the meta-dataset */
  size_t dataset_count;
  const uint64_t *seeds; /* (seed_count) */
  size_t seed_count;
  qt_bench_params run;  /* budget, overhead rule, optimizer params (seed set per run) */
  const qt_surrogate_t *const *surrogates; /* (dataset_count) the meta-trained surrogate the
                                              runs on each dataset get (the fold protocol
                                              below), or NULL: run.optimizer.surrogate */
  size_t grid_points;   /* default 200 */
  int threads;          /* default: the number of online cores */
  const char *out_dir;  /* NULL: write nothing, only fill the summaries */
  int resume;           /* 1: read back every job whose complete trajectory file with the
                           same parameters is in out_dir instead of running it (and, in
                           qt_bench_suite_run_folds, reuse matching fold surrogates) */
} qt_bench_suite_params;

qt_bench_suite_params qt_bench_suite_default_params(void);

typedef struct qt_bench_summary {
  double regret[3];      /* mean normalized regret at 10%, 50%, 100% of the budget */
  double regret_ci[3];   /* 95% half-widths */
  double final_rank;     /* mean rank at the budget (1 = best) */
  double epochs;         /* mean epochs observed per run */
  double overhead;       /* mean optimizer seconds per run */
  double overhead_share; /* overhead / budget */
} qt_bench_summary;

/* Runs the suite; summaries (optimizer_count entries) may be NULL. Progress
 * goes to the log at INFO level. The jobs run cheap first: every baseline,
 * then the Quick-Tune optimizers (names starting with "quicktune") seed by
 * seed, each seed over all datasets, so that a suite stopped early holds
 * whole seeds. The aggregation does not depend on that order. */
int qt_bench_suite_run(const qt_metadataset_t *md, const qt_bench_suite_params *params,
                       qt_bench_summary *summaries, qt_err *err);

/*
 * The meta-training protocol of Quick-Tune's benchmark (specs §1.5): no
 * dataset is ever seen in the meta-training of the surrogate it is tested
 * with. All datasets of the meta-dataset are shuffled (seed split_seed) and
 * dealt into K folds: the dataset at shuffled position i goes to fold i mod K.
 * For each fold f that holds a dataset of the suite, one surrogate is
 * meta-trained (qt_metatrain) with fold f held out, fold (f + 1) mod K
 * validating (it picks the parameters kept) and the other folds training;
 * with K = 2 there is no validation fold and the last parameters are kept.
 * For K = 5 these are exactly Quick-Tune's SPLITS, up to the fold labels.
 * The suite then runs every dataset with its fold's surrogate (optimizers
 * that use none ignore it). The folds are meta-trained on the suite's
 * threads, one fold per thread.
 *
 * Files, when the suite has an out_dir: folds.csv (dataset,fold),
 * metatrain.csv (one row per meta-trained fold: the qt_metatrain_report
 * numbers, among them the held-out datasets' next-epoch MSE of the untrained
 * and the meta-trained surrogate), and surrogates/fold<f>.qts with
 * surrogates/fold<f>.csv (the parameters of its meta-training and its report),
 * both saved as soon as the fold is meta-trained. With params->resume, a fold
 * whose two files match the parameters is loaded instead of meta-trained
 * again (meta-training is deterministic: same seed, same file).
 */
typedef struct qt_bench_folds_params {
  size_t folds;                  /* K >= 2 (default 5) */
  uint64_t split_seed;           /* shuffle of the datasets (default 42, Quick-Tune's) */
  qt_metatrain_params metatrain; /* iterations, rates, seed...; roles are set per fold */
} qt_bench_folds_params;

qt_bench_folds_params qt_bench_folds_default_params(void);

/* The fold of every dataset of md (fold_of: qt_metadataset_dataset_count
 * entries). QT_EINVAL unless 2 <= folds <= the number of datasets. */
int qt_bench_folds_assign(const qt_metadataset_t *md, size_t folds, uint64_t split_seed,
                          size_t *fold_of, qt_err *err);

/* One fold's meta-training, as reported to the caller. */
typedef struct qt_bench_fold_report {
  size_t fold;
  size_t test_datasets;       /* datasets of the suite in this fold */
  qt_metatrain_report report; /* of its meta-training */
} qt_bench_fold_report;

/* Meta-trains one surrogate per fold that holds a suite dataset, then runs
 * the suite with params->surrogates set from them (params->surrogates and
 * run.optimizer.surrogate are ignored). fold_reports (folds->folds entries,
 * may be NULL) receives each fold's meta-training; a fold without test
 * datasets has test_datasets 0 and an untouched report. */
int qt_bench_suite_run_folds(const qt_metadataset_t *md, const qt_bench_suite_params *params,
                             const qt_bench_folds_params *folds, qt_bench_summary *summaries,
                             qt_bench_fold_report *fold_reports, qt_err *err);

/* 1 when optimizer `name` reads a meta-trained surrogate (quicktune,
 * quicktune-M, quicktune-C), else 0. */
int qt_optimizer_uses_surrogate(const char *name);

/* Parses "0-4", "0,3,7" or "1,5-7" into a malloc'ed array. */
int qt_bench_parse_seeds(const char *text, uint64_t **seeds, size_t *count, qt_err *err);

/* ========================================================================= */
/* Run directory and journal                                                  */
/* ========================================================================= */

/*
 * A search keeps everything in one run directory (ARCHITECTURE.md):
 *
 *   run.yaml            the resolved settings and their hash (qt_search_run)
 *   journal.jsonl       append-only, one JSON object per line, fsync per record
 *   lock                held (flock) by the one process writing the directory
 *   trials/<id>/        checkpoint-e<N>.safetensors of the trial's last ended
 *                       epoch N (trainable state only), curve.csv
 *   incumbent.safetensors  the checkpoint of the best epoch so far
 *   summary/            qtune export's files
 *
 * Journal records (one line each; keys absent when the value is unknown;
 * numbers are JSON numbers, NaN is never written). Every record has "type"
 * and "t", the search's clock in seconds when it was written: wall-clock
 * seconds of all sessions of the run so far (a resumed run continues the
 * clock where the journal ends), the same clock the budget is charged on.
 *
 *   run_start      session (1, 2, ... for resumes), time (ISO 8601 UTC),
 *                  hash (of the settings), budget_s, optimizer, seed, pool
 *                  (candidates), max_epochs, dataset (path), hub, space
 *   suggest        trial, target (epoch), optimizer_s (seconds suggest took:
 *                  the surrogate's refit and the acquisition), predicted_cost_s
 *   trial_created  trial, model, config (object: name -> value as text, the
 *                  active hyperparameters but model), seed (of the run)
 *   epoch_begin    trial, epoch, predicted_cost_s
 *   epoch_end      trial, epoch, status (ok), score, top5, train_loss,
 *                  val_loss, cost_s (seconds of this epoch), images_per_s
 *   trial_failed   trial, epoch, status (diverged | failed), reason
 *   incumbent      trial, epoch, score
 *   run_end        reason (budget | done | max-trials | max-epochs | target |
 *                  interrupted | error), budget_s, used_s, overshoot_s
 *
 * A torn last line (no final newline: the writer was killed mid-record) is
 * ignored by readers and cut off by the next writer; any other bad line is
 * QT_EFORMAT naming path:line.
 */

typedef enum qt_journal_type {
  QT_JOURNAL_RUN_START = 0,
  QT_JOURNAL_SUGGEST,
  QT_JOURNAL_TRIAL_CREATED,
  QT_JOURNAL_EPOCH_BEGIN,
  QT_JOURNAL_EPOCH_END,
  QT_JOURNAL_TRIAL_FAILED,
  QT_JOURNAL_INCUMBENT,
  QT_JOURNAL_RUN_END
} qt_journal_type;

/* "run_start", "suggest", ... as in the records above. */
const char *qt_journal_type_name(qt_journal_type type);

/* One record. Fields a type does not use are -1 (integers), NaN (numbers)
 * or NULL (strings) and are not written. */
typedef struct qt_journal_record {
  qt_journal_type type;
  double t;                 /* search clock, seconds */
  long trial;               /* trial id (the candidate's pool index) */
  long epoch;               /* epoch_begin/end, trial_failed, incumbent */
  long target;              /* suggest */
  const char *status;       /* epoch_end "ok"; trial_failed "diverged" | "failed" */
  const char *reason;       /* trial_failed, run_end */
  double score, top5, train_loss, val_loss, cost_s, images_per_s;
  double predicted_cost_s;  /* suggest, epoch_begin */
  double optimizer_s;       /* suggest */
  /* trial_created */
  const char *model;
  size_t n_values;
  const char *const *names; /* (n_values) */
  const char *const *values;
  long seed;                /* trial_created: the run's seed; run_start: the search's */
  /* run_start, run_end */
  long session;
  const char *time, *hash, *optimizer, *dataset, *hub, *space;
  double budget_s, used_s, overshoot_s;
  long pool, max_epochs;
} qt_journal_record;

/* A record of `type` with every field unset (-1, NaN, NULL, 0 values). */
qt_journal_record qt_journal_record_init(qt_journal_type type);

/* The writer. open creates the file or appends to it, cutting off a torn
 * last line first. append writes one line and fsyncs it: when it returns
 * 0 the record is on disk; a full disk is QT_ENOSPC and the file keeps the
 * records before (a partial line is cut off again). */
typedef struct qt_journal qt_journal_t;
int qt_journal_open(const char *path, qt_journal_t **out, qt_err *err);
int qt_journal_append(qt_journal_t *journal, const qt_journal_record *record, qt_err *err);
void qt_journal_close(qt_journal_t *journal);

/* The reader: every record of a journal, strings owned by the log. */
typedef struct qt_journal_log {
  qt_journal_record *records; /* (count) in file order */
  size_t count;
  int torn;                   /* 1 when a torn last line was ignored */
  void *arena;                /* the strings (private) */
} qt_journal_log;

/* A missing file is QT_ENOENT; see above for bad lines. */
int qt_journal_read(const char *path, qt_journal_log *out, qt_err *err);
void qt_journal_log_free(qt_journal_log *log);

/* The lock of a run directory: flock(LOCK_EX | LOCK_NB) on dir/lock, which
 * it creates, with the holder's pid written in it. A directory locked by a
 * live process is QT_EBUSY naming that pid. The lock ends with
 * qt_rundir_unlock or with the process (a killed writer leaves no stale
 * lock). */
int qt_rundir_lock(const char *dir, int *fd, qt_err *err);
void qt_rundir_unlock(int fd);

/* ========================================================================= */
/* Search state from a journal (qtune status, progress, export)               */
/* ========================================================================= */

/* What the journal says about one trial. Strings belong to the summary. */
typedef struct qt_search_trial_info {
  long trial;
  const char *model;
  size_t n_values;
  const char *const *names; /* (n_values) the configuration, as in trial_created */
  const char *const *values;
  long seed;
  long epochs;          /* epochs ended */
  double last_score;    /* NaN before the first */
  double best_score;    /* NaN before the first */
  long best_epoch;      /* 0 before the first */
  double cost_s;        /* seconds of all its ended epochs */
  double predicted_cost_s; /* of its next epoch, from its last suggest/epoch_begin; NaN */
  const char *state;    /* "new", "running" (an epoch began and has not ended),
                           "paused", "diverged", "failed" */
  const char *reason;   /* of a failure; NULL */
} qt_search_trial_info;

typedef struct qt_search_summary qt_search_summary_t;

int qt_search_summary_new(qt_search_summary_t **out, qt_err *err);
void qt_search_summary_free(qt_search_summary_t *summary);
/* Folds one record into the summary (records in journal order). */
int qt_search_summary_apply(qt_search_summary_t *summary, const qt_journal_record *record,
                            qt_err *err);
/* Reads a journal (qt_journal_read) and applies all of it. */
int qt_search_summary_load(const char *journal_path, qt_search_summary_t **out, qt_err *err);

size_t qt_search_summary_trial_count(const qt_search_summary_t *summary);
/* Trials in the order they were created. */
const qt_search_trial_info *qt_search_summary_trial_at(const qt_search_summary_t *summary,
                                                       size_t index);
/* The last run_start record (NULL before one) and the run_end after it
 * (NULL while the session runs or when it was killed). */
const qt_journal_record *qt_search_summary_run_start(const qt_search_summary_t *summary);
const qt_journal_record *qt_search_summary_run_end(const qt_search_summary_t *summary);
/* The incumbent (best epoch of any trial): 0 and *trial, *epoch, *score, or
 * QT_ENOENT before the first ended epoch. */
int qt_search_summary_incumbent(const qt_search_summary_t *summary, long *trial, long *epoch,
                                double *score);
/* Clock of the last record, epochs ended in all, optimizer seconds in all. */
double qt_search_summary_clock(const qt_search_summary_t *summary);
long qt_search_summary_epochs(const qt_search_summary_t *summary);
double qt_search_summary_optimizer_s(const qt_search_summary_t *summary);

/* Prints the state as "table" (a header with budget used, trials and the
 * incumbent over one row per trial: id, model, key hyperparameters, epoch,
 * score, best, cost, predicted next; at most max_rows rows, best first, 0
 * for all), "json" or "yaml". Other formats are QT_EINVAL. */
int qt_search_summary_print(const qt_search_summary_t *summary, const char *format,
                            size_t max_rows, FILE *out, qt_err *err);

/* qtune export without the weights: reads run_dir/journal.jsonl (and
 * nothing else that a running search writes) and writes run_dir/summary/:
 *   best_config.yaml  the incumbent's model and hyperparameters with a
 *                     qtune: block (run, trial, epochs, schedule_epochs,
 *                     seed, data_seed, score, cost_s) that qtune finetune
 *                     --config reads
 *   incumbent.csv     time_s,trial,epoch,score (one row per incumbent change)
 *   trials.csv        trial,model,epoch,status,score,top5,train_loss,
 *                     val_loss,cost_s,time_s,<hyperparameters...>
 *   incumbent.png|svg, curves.png|svg  plots by gnuplot (skipped with a
 *                     warning, not an error, when gnuplot is absent)
 * Files are written atomically. */
int qt_search_export(const char *run_dir, qt_err *err);
/* As qt_search_export, into out_dir (NULL: run_dir/summary), drawing the
 * plots only when `plots` is non-zero (qtune export --out, --no-plots). */
int qt_search_export_to(const char *run_dir, const char *out_dir, int plots, qt_err *err);

/* ========================================================================= */
/* Search (qtune search)                                                      */
/* ========================================================================= */

/*
 * The search loop (src/bo/qt_search.c documents it): the candidate pool is
 * a seeded sample of the space over the hub's usable models, the optimizer
 * suggests (trial, target epoch), the fine-tuning objective advances the
 * trial one epoch at a time through the engine's run API, and every step is
 * journaled first. Resuming replays the journal through a fresh optimizer
 * (suggest, then the journaled observations) and continues; an epoch that
 * began and did not end is run again from the trial's last checkpoint.
 */
typedef enum qt_search_mode {
  QT_SEARCH_MODE_AUTO = 0,  /* resume when run_dir has a journal with the same hash */
  QT_SEARCH_MODE_OVERWRITE  /* delete run_dir's contents and start over */
} qt_search_mode;

/* Where a search's trials train. With a GPU, every trial trains on it; the
 * observed costs are then the GPU's seconds. */
typedef enum qt_search_device {
  QT_SEARCH_DEVICE_AUTO = 0, /* the first GPU when one is present, else the CPU */
  QT_SEARCH_DEVICE_CPU = 1,  /* the CPU only */
  QT_SEARCH_DEVICE_CUDA = 2  /* the thread's CUDA device (the first unless the caller chose
                                another, qt_cuda_select_device); QT_ENODEV at the start
                                without one */
} qt_search_device;

typedef struct qt_search_params {
  const char *run_dir;        /* required */
  const char *data;           /* dataset path (qt_data_load) */
  const char *hub;            /* hub YAML */
  const char *space;          /* space YAML; its "model" choices become the hub's models */
  const char *optimizer;      /* NULL: "quicktune" with a surrogate, else "quicktune-MC" */
  const char *surrogate;      /* meta-trained surrogate file, or NULL */
  /* Used as surrogate when surrogate is NULL, optimizer is NULL or reads a
   * surrogate, the file exists and it was
   * meta-trained for this search's space and hub models (the shipped
   * meta-dataset/surrogate.qts); otherwise skipped with an info line. A
   * damaged file is an error. A resumed search keeps the choice its run.yaml
   * records. NULL: none. */
  const char *default_surrogate;
  double budget_s;            /* total wall clock incl. the optimizer; > 0 */
  double extend_s;            /* added to the journal's budget on resume */
  long max_trials;            /* 0: no limit */
  long max_epochs_total;      /* 0: no limit */
  double target;              /* stop once the incumbent reaches it; NaN: none */
  size_t pool_size;           /* candidates (default 128) */
  long max_epochs;            /* per trial; 0: the space's fidelity maximum */
  size_t max_disk;            /* bytes of trial checkpoints kept; 0: no limit */
  uint64_t seed;
  qt_search_mode mode;
  int threads;                /* engine threads; 0: the online cores (at most 8) */
  qt_search_device device;    /* where the trials train (default auto) */
  /* Called after each record is journaled (progress display); may be NULL. */
  void (*on_record)(const qt_journal_record *record, const qt_search_summary_t *summary,
                    void *user);
  void *user;
  /* Polled between batches and between epochs; a non-zero return stops the
   * search at a clean point with run_end "interrupted" (Ctrl-C). May be NULL. */
  int (*should_stop)(void *user);
} qt_search_params;

qt_search_params qt_search_default_params(void);

typedef struct qt_search_result {
  const char *end_reason; /* static string: as in run_end */
  double budget_s, used_s, overshoot_s;
  long trials, epochs;
  long best_trial, best_epoch; /* -1 when no epoch ended */
  double best_score;
} qt_search_result;

int qt_search_run(const qt_search_params *params, qt_search_result *out, qt_err *err);

/* Writes the full weights (timm names, adapters merged) of the incumbent
 * epoch of run_dir to path, from incumbent.safetensors. */
int qt_search_export_weights(const char *run_dir, const char *path, qt_err *err);

/* The engine's run spec (finetune/qt_finetune.h) of hub model `model` with
 * configuration `config` of `space` (its "model" value is ignored: model
 * picks the checkpoint): the model's checkpoint, family, heads, image size,
 * mean and std, schedule_epochs as spec->epochs (the cosine horizon and the
 * linear-probing switch; the epochs actually run are the caller's), seed,
 * threads, then every active hyperparameter through qt_run_spec_set. No
 * data is set. A family the run API cannot fine-tune, or a method not
 * implemented yet, is QT_ENOTIMPL (qt_run_spec_supported, and
 * qt_run_cotuning_supported, which reads the checkpoint's header when
 * Co-Tuning is on); a bad value QT_EINVAL. */
struct qt_run_spec;
int qt_search_spec_from_config(const qt_hub_model *model, const qt_space_t *space,
                               const qt_config *config, long schedule_epochs, uint64_t seed,
                               int threads, struct qt_run_spec *spec, qt_err *err);

/* ========================================================================= */
/* Search models (shared by qtune search and qtune meta collect)              */
/* ========================================================================= */

/*
 * The models a search or a collection draws from: the hub's entries whose
 * family the run API can fine-tune (vit, deit, deit3) and whose checkpoint
 * exists (each one left out is logged with the reason), and a copy of the
 * base space whose categorical "model" has these names as its choices, in
 * the hub's order (qt_space_with_choices). Everything is owned by the
 * struct; qt_search_models_free releases it (a zeroed struct is fine).
 */
typedef struct qt_search_models {
  qt_hub_t *hub;                /* the loaded hub */
  const qt_hub_model **models;  /* (count) the usable entries, by choice of "model" */
  size_t count;
  qt_space_t *space;            /* the base space with the models as "model" choices */
  size_t model_hp;              /* index of "model" in space */
} qt_search_models;

/* Loads hub_path and fills *out. QT_ENOENT when no model is usable; the
 * hub's and the space's errors otherwise. */
int qt_search_models_load(const char *hub_path, const qt_space_t *base_space,
                          qt_search_models *out, qt_err *err);
void qt_search_models_free(qt_search_models *models);
/* 1 when the engine can run config (a configuration of models->space);
 * 0 when the run spec is QT_ENOTIMPL (a method not built yet), with the
 * engine's message in reason. Bad values are left to the run itself. */
int qt_search_config_runnable(const qt_search_models *models, const qt_config *config,
                              long schedule_epochs, char *reason, size_t size);

/* ========================================================================= */
/* Meta-dataset collection (qtune meta collect)                               */
/* ========================================================================= */

/*
 * qt_collect_run (src/bo/qt_collect.c documents it): for every task (a
 * task YAML of configs/tasks/, its data the folder named by its `data:` key
 * or $QTUNE_DATA/tasks/<name>), runs_per_task configurations drawn from
 * the space over the hub's usable models are fine-tuned for max_epochs
 * epochs each by the engine's run API; each finished (task, run) is kept in
 * out_dir/parts/<task>/<run>.csv and skipped when collecting again; at the
 * end every part is assembled into the native meta-dataset in out_dir.
 */
typedef struct qt_collect_params {
  const char *hub;               /* hub YAML (required) */
  const char *space;             /* space YAML (required) */
  const char *const *tasks;      /* (task_count) task YAML files */
  size_t task_count;
  const char *data_root;         /* NULL: $QTUNE_DATA, else ~/.cache/qtune/data */
  long runs_per_task;            /* >= 1 */
  long max_epochs;               /* >= 1, within the space's fidelity */
  const char *out_dir;           /* required */
  const char *name;              /* meta-dataset name; NULL: "qtune-collect" */
  uint64_t seed;
  int jobs;                      /* worker processes (fork); < 1: 1 */
  int threads;                   /* engine threads per run; < 1: 1 */
  int assemble_only;             /* run nothing: assemble the parts present (a run without a
                                    part is counted in runs_missing) */
  int cuda;                      /* 1: every run trains on the calling thread's CUDA device
                                    (with jobs 1), else on the CPU, so that cost_s is one
                                    device's seconds; recorded in parts/collect.txt */
} qt_collect_params;

qt_collect_params qt_collect_default_params(void);

typedef struct qt_collect_result {
  long runs_total;      /* tasks x runs_per_task */
  long runs_computed;   /* run by this call */
  long runs_reused;     /* parts already present (a resumed collection) */
  long runs_kept;       /* runs in the written meta-dataset */
  long runs_failed;     /* the engine refused or failed the run: left out */
  long runs_diverged;   /* runs whose curve was cut at a diverged epoch */
  long runs_empty;      /* diverged in their first epoch: left out */
  long runs_missing;    /* assemble_only: runs without a part yet */
  size_t points;        /* (run, epoch) points written */
} qt_collect_result;

int qt_collect_run(const qt_collect_params *params, qt_collect_result *out, qt_err *err);

#ifdef __cplusplus
}
#endif

#endif /* QT_BO_H */

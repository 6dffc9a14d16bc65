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
 *   trajectories/<optimizer>/<dataset>-seed<k>.csv  one row per epoch
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
 * goes to the log at INFO level. */
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
 * and the meta-trained surrogate), and surrogates/fold<f>.qts.
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

#ifdef __cplusplus
}
#endif

#endif /* QT_BO_H */

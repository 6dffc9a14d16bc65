/*
 * test_bench.c - the benchmark runner: simulated clock, regret, intervals,
 * ranks, reproducibility and the files of a suite.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bo/qt_bo.h"
#include "qt_test.h"

static const char *const all_optimizers[] = {"random", "sh", "hyperband", "asha", "bohb"};
#define N_OPTIMIZERS (sizeof all_optimizers / sizeof all_optimizers[0])

/* A meta-dataset with two datasets and hand-made curves:
 *   d0: run a  scores 0.1 0.2 0.3        costs 10 11 12
 *       run b  scores 0.5 0.6 0.7 0.65 0.8 costs 1 2 3 4 5
 *   d1: run c  scores 0.4                 cost 7 */
static qt_metadataset_t *hand_made(qt_config *config) {
  char space_path[1024];
  snprintf(space_path, sizeof space_path, "%s/configs/spaces/default.yaml", QT_SOURCE_DIR);
  qt_err err;
  qt_metadataset_params params = qt_metadataset_default_params();
  params.name = "bench-test";
  qt_metadataset_t *md = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_create(space_path, &params, &md, &err), 0);
  const qt_space_t *space = qt_metadataset_space(md);
  size_t d0, d1;
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_add_dataset(md, "d0", NULL, &d0, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_add_dataset(md, "d1", NULL, &d1, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_config_init(config, space, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_space_default_config(space, config, &err), 0);
  static const float score_a[3] = {0.1f, 0.2f, 0.3f}, cost_a[3] = {10.f, 11.f, 12.f};
  static const float score_b[5] = {0.5f, 0.6f, 0.7f, 0.65f, 0.8f};
  static const float cost_b[5] = {1.f, 2.f, 3.f, 4.f, 5.f};
  static const float score_c[1] = {0.4f}, cost_c[1] = {7.f};
  qt_md_run a = {.id = "a", .dataset = d0, .config = config, .epochs = 3, .score = score_a,
                 .cost = cost_a};
  qt_md_run b = {.id = "b", .dataset = d0, .config = config, .epochs = 5, .score = score_b,
                 .cost = cost_b};
  qt_md_run c = {.id = "c", .dataset = d1, .config = config, .epochs = 1, .score = score_c,
                 .cost = cost_c};
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_add_run(md, &a, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_add_run(md, &b, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_add_run(md, &c, &err), 0);
  return md;
}

static qt_metadataset_t *synthetic_with(size_t n_datasets) {
  char space_path[1024];
  snprintf(space_path, sizeof space_path, "%s/configs/spaces/default.yaml", QT_SOURCE_DIR);
  qt_metadataset_synth_params params = qt_metadataset_synth_default_params();
  params.n_datasets = n_datasets;
  params.runs_per_dataset = 40;
  params.max_epochs = 20;
  qt_metadataset_t *md = NULL;
  qt_err err;
  int rc = qt_metadataset_synthesize(space_path, &params, &md, &err);
  if (rc != 0) fprintf(stderr, "synthesize: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  return md;
}

static qt_metadataset_t *synthetic(void) { return synthetic_with(3); }

/* ------------------------------------------------------------------------- */

/* Regret of a trajectory built by hand: y_best 0.9, y_worst 0.1. */
static void test_regret_by_hand(void) {
  qt_bench_point points[3] = {
      {10.0, 0.3, 0.3, 0.0, 0, 1, QT_OBS_STATUS_OK},
      {25.0, 0.2, 0.3, 0.0, 0, 2, QT_OBS_STATUS_OK},
      {40.0, 0.7, 0.7, 0.0, 1, 1, QT_OBS_STATUS_OK},
  };
  qt_bench_trajectory t = {points, 3, 3, 100.0, 0.9, 0.1, 0, 0};
  /* Before the first epoch the incumbent is 0: regret (0.9 - 0) / 0.8. */
  QT_ASSERT_CLOSE(qt_bench_incumbent_at(&t, 5.0), 0.0, 0.0);
  QT_ASSERT_CLOSE(qt_bench_regret_at(&t, 5.0), 1.125, 1e-12);
  QT_ASSERT_CLOSE(qt_bench_regret_at(&t, 10.0), 0.75, 1e-12);
  QT_ASSERT_CLOSE(qt_bench_regret_at(&t, 39.999), 0.75, 1e-12);
  QT_ASSERT_CLOSE(qt_bench_regret_at(&t, 40.0), 0.25, 1e-12);
  QT_ASSERT_CLOSE(qt_bench_regret_at(&t, 1e9), 0.25, 1e-12);
  /* A dataset whose runs all score the same has no regret scale. */
  t.y_best = t.y_worst = 0.5;
  QT_ASSERT_CLOSE(qt_bench_regret_at(&t, 50.0), 0.0, 0.0);
}

static void test_mean_ci_and_ranks(void) {
  const double values[4] = {1.0, 2.0, 3.0, 6.0};
  double mean, half;
  qt_bench_mean_ci(values, 4, &mean, &half);
  QT_ASSERT_CLOSE(mean, 3.0, 1e-12);
  /* sd = sqrt(14 / 3); half = 1.96 * sd / 2. */
  QT_ASSERT_CLOSE(half, 1.96 * sqrt(14.0 / 3.0) / 2.0, 1e-12);
  qt_bench_mean_ci(values, 1, &mean, &half);
  QT_ASSERT_CLOSE(half, 0.0, 0.0);

  const double regrets[5] = {0.3, 0.1, 0.3, 0.5, 0.1};
  double ranks[5];
  qt_bench_rank(regrets, 5, ranks);
  const double expected[5] = {3.5, 1.5, 3.5, 5.0, 1.5};
  for (int i = 0; i < 5; i++) QT_ASSERT_CLOSE(ranks[i], expected[i], 1e-12);
}

static void test_seed_lists(void) {
  uint64_t *seeds;
  size_t n;
  qt_err err;
  CU_ASSERT_EQUAL(qt_bench_parse_seeds("0-4", &seeds, &n, &err), 0);
  CU_ASSERT_EQUAL(n, 5);
  CU_ASSERT_EQUAL(seeds[4], 4);
  free(seeds);
  CU_ASSERT_EQUAL(qt_bench_parse_seeds("1,5-7,3", &seeds, &n, &err), 0);
  CU_ASSERT_EQUAL(n, 5);
  CU_ASSERT(seeds[0] == 1 && seeds[1] == 5 && seeds[3] == 7 && seeds[4] == 3);
  free(seeds);
  const char *bad[] = {"", "a", "4-2", "1,", ",1", "1-", "-3", "1;2", "1 2", NULL};
  for (int i = 0; bad[i]; i++) {
    CU_ASSERT_EQUAL(qt_bench_parse_seeds(bad[i], &seeds, &n, &err), QT_EPARSE);
    CU_ASSERT_PTR_NULL(seeds);
  }
}

/* Random search on d0 with overhead ignored: the clock is the running sum of
 * the replayed costs, the incumbent the running maximum, and the budget is
 * checked after every epoch. */
static void test_run_replays_costs(void) {
  qt_config config;
  qt_metadataset_t *md = hand_made(&config);
  qt_bench_params params = qt_bench_default_params();
  params.charge_overhead = 0;
  params.budget = 1000.0;
  qt_bench_trajectory t;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_bench_run(md, 0, "random", &params, &t, &err), 0);
  /* Both runs to their ends, plus one EXHAUSTED probe each (free). */
  size_t ok = 0;
  double clock = 0.0, best = 0.0;
  for (size_t i = 0; i < t.count; i++) {
    const qt_bench_point *p = &t.points[i];
    const qt_md_run *run = qt_metadataset_run(md, p->candidate);
    if (p->status == QT_OBS_STATUS_OK) {
      ok++;
      clock += run->cost[p->epoch - 1];
      if (run->score[p->epoch - 1] > best) best = run->score[p->epoch - 1];
      QT_ASSERT_CLOSE(p->score, run->score[p->epoch - 1], 1e-7);
    }
    QT_ASSERT_CLOSE(p->time, clock, 1e-9);
    QT_ASSERT_CLOSE(p->incumbent, best, 1e-7);
  }
  CU_ASSERT_EQUAL(ok, 8);
  QT_ASSERT_CLOSE(clock, 48.0, 1e-9);
  QT_ASSERT_CLOSE(t.y_best, 0.8, 1e-7);
  QT_ASSERT_CLOSE(t.y_worst, 0.1, 1e-7);
  qt_bench_trajectory_free(&t);

  /* A budget of 15 s ends the run at the first epoch that reaches it. */
  params.budget = 15.0;
  CU_ASSERT_EQUAL_FATAL(qt_bench_run(md, 0, "random", &params, &t, &err), 0);
  CU_ASSERT(t.count >= 1);
  CU_ASSERT(t.points[t.count - 1].time >= 15.0);
  if (t.count >= 2) CU_ASSERT(t.points[t.count - 2].time < 15.0);
  qt_bench_trajectory_free(&t);

  CU_ASSERT_EQUAL(qt_bench_run(md, 0, "no-such-optimizer", &params, &t, &err), QT_ENOENT);
  qt_config_free(&config);
  qt_metadataset_free(md);
}

static int same_trajectory(const qt_bench_trajectory *a, const qt_bench_trajectory *b) {
  if (a->count != b->count) return 0;
  for (size_t i = 0; i < a->count; i++) {
    const qt_bench_point *p = &a->points[i], *q = &b->points[i];
    if (p->time != q->time || p->candidate != q->candidate || p->epoch != q->epoch ||
        p->incumbent != q->incumbent || p->status != q->status)
      return 0;
  }
  return 1;
}

static void test_same_seed_same_trajectory(void) {
  qt_metadataset_t *md = synthetic();
  qt_bench_params params = qt_bench_default_params();
  params.charge_overhead = 0;
  params.budget = 400.0;
  qt_err err;
  for (size_t o = 0; o < N_OPTIMIZERS; o++) {
    qt_bench_trajectory a, b, c;
    params.optimizer.seed = 11;
    CU_ASSERT_EQUAL_FATAL(qt_bench_run(md, 1, all_optimizers[o], &params, &a, &err), 0);
    CU_ASSERT_EQUAL_FATAL(qt_bench_run(md, 1, all_optimizers[o], &params, &b, &err), 0);
    params.optimizer.seed = 12;
    CU_ASSERT_EQUAL_FATAL(qt_bench_run(md, 1, all_optimizers[o], &params, &c, &err), 0);
    CU_ASSERT(a.count > 3);
    CU_ASSERT(same_trajectory(&a, &b));
    CU_ASSERT(!same_trajectory(&a, &c));
    qt_bench_trajectory_free(&a);
    qt_bench_trajectory_free(&b);
    qt_bench_trajectory_free(&c);
  }
  qt_metadataset_free(md);
}

/* The suite's summary equals the regret of the individual runs, and its
 * files have one row per optimizer and grid time. */
static void test_suite_files_and_summary(void) {
  qt_metadataset_t *md = synthetic();
  char dir[] = "/tmp/qt-test-bench-XXXXXX";
  CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
  const size_t datasets[3] = {0, 1, 2};
  const uint64_t seeds[2] = {0, 1};
  qt_bench_suite_params params = qt_bench_suite_default_params();
  params.optimizers = all_optimizers;
  params.optimizer_count = N_OPTIMIZERS;
  params.datasets = datasets;
  params.dataset_count = 3;
  params.seeds = seeds;
  params.seed_count = 2;
  params.run.budget = 300.0;
  params.run.charge_overhead = 0;
  params.grid_points = 20;
  params.threads = 2;
  params.out_dir = dir;
  qt_bench_summary summaries[N_OPTIMIZERS];
  qt_err err;
  int rc = qt_bench_suite_run(md, &params, summaries, &err);
  if (rc != 0) fprintf(stderr, "suite: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);

  for (size_t o = 0; o < N_OPTIMIZERS; o++) {
    double regret_end[6];
    size_t k = 0;
    for (size_t d = 0; d < 3; d++) {
      for (size_t s = 0; s < 2; s++) {
        qt_bench_params run = params.run;
        run.optimizer.seed = seeds[s];
        qt_bench_trajectory t;
        CU_ASSERT_EQUAL_FATAL(qt_bench_run(md, d, all_optimizers[o], &run, &t, &err), 0);
        regret_end[k++] = qt_bench_regret_at(&t, run.budget);
        qt_bench_trajectory_free(&t);
      }
    }
    double mean, half;
    qt_bench_mean_ci(regret_end, 6, &mean, &half);
    QT_ASSERT_CLOSE(summaries[o].regret[2], mean, 1e-12);
    QT_ASSERT_CLOSE(summaries[o].regret_ci[2], half, 1e-12);
    CU_ASSERT(summaries[o].final_rank >= 1.0 && summaries[o].final_rank <= N_OPTIMIZERS);
  }
  double rank_sum = 0.0;
  for (size_t o = 0; o < N_OPTIMIZERS; o++) rank_sum += summaries[o].final_rank;
  QT_ASSERT_CLOSE(rank_sum, N_OPTIMIZERS * (N_OPTIMIZERS + 1) / 2.0, 1e-9);

  char path[1024], line[512];
  const char *files[] = {"regret.csv", "rank.csv", "summary.csv"};
  const size_t rows[] = {N_OPTIMIZERS * 20, N_OPTIMIZERS * 20, N_OPTIMIZERS};
  for (int f = 0; f < 3; f++) {
    snprintf(path, sizeof path, "%s/%s", dir, files[f]);
    FILE *file = fopen(path, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(file);
    size_t count = 0;
    while (fgets(line, sizeof line, file)) count++;
    fclose(file);
    CU_ASSERT_EQUAL(count, rows[f] + 1);
    unlink(path);
  }
  for (size_t o = 0; o < N_OPTIMIZERS; o++) {
    for (size_t d = 0; d < 3; d++) {
      for (size_t s = 0; s < 2; s++) {
        snprintf(path, sizeof path, "%s/trajectories/%s/%s-seed%zu.csv", dir, all_optimizers[o],
                 qt_metadataset_dataset(md, d)->name, s);
        CU_ASSERT_EQUAL(access(path, R_OK), 0);
        unlink(path);
      }
    }
    snprintf(path, sizeof path, "%s/trajectories/%s", dir, all_optimizers[o]);
    rmdir(path);
  }
  snprintf(path, sizeof path, "%s/trajectories", dir);
  rmdir(path);
  CU_ASSERT_EQUAL(rmdir(dir), 0); /* nothing else was written */
  qt_metadataset_free(md);
}

/* ------------------------------------------------------------------------- */
/* Resuming a suite                                                           */
/* ------------------------------------------------------------------------- */

/* The whole file, or NULL. */
static char *slurp(const char *dir, const char *name) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  char *text = NULL;
  qt_err err;
  return qt_file_read(path, &text, NULL, &err) == 0 ? text : NULL;
}

/* 1 when both files exist and hold the same bytes. */
static int same_file(const char *dir_a, const char *dir_b, const char *name) {
  char *a = slurp(dir_a, name), *b = slurp(dir_b, name);
  int same = a && b && strcmp(a, b) == 0;
  free(a);
  free(b);
  return same;
}

/* 1 when both files exist and agree in the first `columns` columns of every
 * line (the later ones hold measured seconds). */
static int same_columns(const char *dir_a, const char *dir_b, const char *name, int columns) {
  char *a = slurp(dir_a, name), *b = slurp(dir_b, name);
  int same = a && b;
  for (char *p = a, *q = b; same && *p && *q;) {
    int column = 0;
    while (*p && *p == *q && *p != '\n') {
      if (*p == ',' && ++column == columns) break;
      p++, q++;
    }
    if (*p != *q && column < columns) same = 0;
    p = strchr(p, '\n'), q = strchr(q, '\n');
    if (!p || !q) {
      same = !p && !q;
      break;
    }
    p++, q++;
  }
  free(a);
  free(b);
  return same;
}

static void write_text(const char *dir, const char *name, const char *text) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *file = fopen(path, "w");
  CU_ASSERT_PTR_NOT_NULL_FATAL(file);
  fputs(text, file);
  fclose(file);
}

static void copy_tree(const char *from, const char *to) {
  char command[2100];
  snprintf(command, sizeof command, "rm -rf %s && cp -a %s %s", to, from, to);
  CU_ASSERT_EQUAL_FATAL(system(command), 0);
}

/* A suite stopped half-way (half the trajectory files gone, one cut before
 * its completion line, one written for another budget, a stray temporary
 * file) and resumed writes the same regret.csv and rank.csv bytes as the
 * uninterrupted suite, and the same summary.csv up to the measured overhead
 * columns; resumed over a complete folder it reruns nothing, so even the
 * overhead columns are the same bytes (17 significant digits round-trip). */
static void test_suite_resume(void) {
  qt_metadataset_t *md = synthetic();
  char whole[] = "/tmp/qt-test-resume-XXXXXX";
  CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(whole));
  char part[sizeof whole + 8];
  snprintf(part, sizeof part, "%s-part", whole);
  const size_t datasets[3] = {0, 1, 2};
  const uint64_t seeds[2] = {0, 1};
  qt_bench_suite_params params = qt_bench_suite_default_params();
  params.optimizers = all_optimizers;
  params.optimizer_count = N_OPTIMIZERS;
  params.datasets = datasets;
  params.dataset_count = 3;
  params.seeds = seeds;
  params.seed_count = 2;
  params.run.budget = 300.0;
  params.run.charge_overhead = 0;
  params.grid_points = 20;
  params.threads = 2;
  params.out_dir = whole;
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_bench_suite_run(md, &params, NULL, &err);
  if (rc != 0) fprintf(stderr, "suite: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);

  char *original = slurp(whole, "summary.csv");

  /* Every trajectory file ends with its completion line. */
  char *traj = slurp(whole, "trajectories/asha/synth-001-seed1.csv");
  CU_ASSERT_PTR_NOT_NULL_FATAL(traj);
  CU_ASSERT_PTR_NOT_NULL(strstr(traj, "\n# qtune bench trajectory v1: optimizer=asha "));
  CU_ASSERT_PTR_NOT_NULL(strstr(traj, " budget_s=300 "));
  free(traj);

  /* The stopped suite. */
  copy_tree(whole, part);
  char name[256];
  for (size_t o = 0; o < N_OPTIMIZERS; o++)
    for (size_t d = 0; d < 3; d++)
      for (size_t s = 0; s < 2; s++) {
        if ((o + d + s) % 2 == 0) continue;
        snprintf(name, sizeof name, "%s/trajectories/%s/synth-%03zu-seed%zu.csv", part,
                 all_optimizers[o], d, s);
        CU_ASSERT_EQUAL(unlink(name), 0);
      }
  /* random/synth-000-seed0 without its completion line, as if cut off. */
  traj = slurp(part, "trajectories/random/synth-000-seed0.csv");
  CU_ASSERT_PTR_NOT_NULL_FATAL(traj);
  char *last = strstr(traj, "# qtune bench trajectory");
  CU_ASSERT_PTR_NOT_NULL_FATAL(last);
  *last = '\0';
  write_text(part, "trajectories/random/synth-000-seed0.csv", traj);
  free(traj);
  /* sh/synth-001-seed0 claims another budget (and its rows are nonsense). */
  traj = slurp(part, "trajectories/sh/synth-001-seed0.csv");
  CU_ASSERT_PTR_NOT_NULL_FATAL(traj);
  char *budget = strstr(traj, " budget_s=300 ");
  CU_ASSERT_PTR_NOT_NULL_FATAL(budget);
  memcpy(budget, " budget_s=301 ", 14);
  char *rows = strchr(traj, '\n') + 1;
  memset(rows, '9', 4);
  write_text(part, "trajectories/sh/synth-001-seed0.csv", traj);
  free(traj);
  write_text(part, "trajectories/bohb/synth-000-seed0.csv.tmp999", "time_s,score\n1,");
  const char *tables[3] = {"regret.csv", "rank.csv", "summary.csv"};
  for (int f = 0; f < 3; f++) {
    snprintf(name, sizeof name, "%s/%s", part, tables[f]);
    unlink(name);
  }

  params.out_dir = part;
  params.resume = 1;
  rc = qt_bench_suite_run(md, &params, NULL, &err);
  if (rc != 0) fprintf(stderr, "resume: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT(same_file(whole, part, "regret.csv"));
  CU_ASSERT(same_file(whole, part, "rank.csv"));
  CU_ASSERT(same_columns(whole, part, "summary.csv", 11));
  /* The doctored files were run again. */
  CU_ASSERT(same_columns(whole, part, "trajectories/random/synth-000-seed0.csv", 4));
  CU_ASSERT(same_columns(whole, part, "trajectories/sh/synth-001-seed0.csv", 4));
  traj = slurp(part, "trajectories/sh/synth-001-seed0.csv");
  CU_ASSERT(traj && strstr(traj, " budget_s=300 ") && !strstr(traj, "budget_s=301"));
  free(traj);

  /* Nothing left to run: every number is read back, the measured overheads
   * too, so summary.csv is the same to the last byte. */
  params.out_dir = whole;
  rc = qt_bench_suite_run(md, &params, NULL, &err);
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  char *again = slurp(whole, "summary.csv");
  CU_ASSERT(original && again && strcmp(original, again) == 0);
  free(original);
  free(again);

  /* Another budget reuses nothing. */
  params.out_dir = part;
  params.run.budget = 200.0;
  rc = qt_bench_suite_run(md, &params, NULL, &err);
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  traj = slurp(part, "trajectories/hyperband/synth-002-seed1.csv");
  CU_ASSERT(traj && strstr(traj, " budget_s=200 "));
  free(traj);
  CU_ASSERT(!same_columns(whole, part, "regret.csv", 2));

  qt_remove_tree(whole);
  qt_remove_tree(part);
  qt_metadataset_free(md);
}

/* The fold protocol resumed: a fold whose surrogate is gone is meta-trained
 * again to the same bytes (meta-training is deterministic), the others are
 * loaded, and the suite's regret and rank are those of an uninterrupted run.
 * Other meta-training parameters retrain every fold and rerun the runs that
 * use a surrogate, not the others. */
static void test_folds_resume(void) {
  qt_metadataset_t *md = synthetic_with(6);
  char whole[] = "/tmp/qt-test-resume-folds-XXXXXX";
  CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(whole));
  char part[sizeof whole + 8];
  snprintf(part, sizeof part, "%s-part", whole);
  const char *optimizers[] = {"random", "quicktune"};
  size_t datasets[6] = {0, 1, 2, 3, 4, 5};
  uint64_t seeds[1] = {0};
  qt_bench_suite_params params = qt_bench_suite_default_params();
  params.optimizers = optimizers;
  params.optimizer_count = 2;
  params.datasets = datasets;
  params.dataset_count = 6;
  params.seeds = seeds;
  params.seed_count = 1;
  params.run.budget = 300.0;
  params.run.charge_overhead = 0;
  params.run.optimizer.quicktune.restart_steps = 5;
  params.run.optimizer.quicktune.refine_steps = 2;
  params.grid_points = 20;
  params.threads = 2;
  params.out_dir = whole;
  qt_bench_folds_params folds = qt_bench_folds_default_params();
  folds.folds = 3;
  folds.metatrain.iterations = 20;
  folds.metatrain.validation_every = 10;
  folds.metatrain.validation_batches = 2;
  qt_bench_fold_report reports[3];
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_bench_suite_run_folds(md, &params, &folds, NULL, reports, &err);
  if (rc != 0) fprintf(stderr, "folds: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);

  copy_tree(whole, part);
  char name[512];
  snprintf(name, sizeof name, "%s/surrogates/fold1.qts", part);
  CU_ASSERT_EQUAL(unlink(name), 0);
  for (size_t d = 0; d < 6; d += 2) {
    snprintf(name, sizeof name, "%s/trajectories/quicktune/%s-seed0.csv", part,
             qt_metadataset_dataset(md, d)->name);
    CU_ASSERT_EQUAL(unlink(name), 0);
  }
  params.out_dir = part;
  params.resume = 1;
  qt_bench_fold_report resumed[3];
  rc = qt_bench_suite_run_folds(md, &params, &folds, NULL, resumed, &err);
  if (rc != 0) fprintf(stderr, "folds resumed: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT(same_file(whole, part, "surrogates/fold1.qts"));
  CU_ASSERT(same_file(whole, part, "regret.csv"));
  CU_ASSERT(same_file(whole, part, "rank.csv"));
  CU_ASSERT(same_file(whole, part, "folds.csv"));
  /* The loaded folds' reports, their wall-clock seconds included. */
  QT_ASSERT_CLOSE(resumed[0].report.seconds, reports[0].report.seconds, 0.0);
  QT_ASSERT_CLOSE(resumed[2].report.held_out_mse, reports[2].report.held_out_mse, 0.0);
  CU_ASSERT(same_columns(whole, part, "metatrain.csv", 14));

  folds.metatrain.iterations = 21;
  rc = qt_bench_suite_run_folds(md, &params, &folds, NULL, resumed, &err);
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  qt_surrogate_t *s = NULL;
  snprintf(name, sizeof name, "%s/surrogates/fold0.qts", part);
  CU_ASSERT_EQUAL_FATAL(qt_surrogate_load(name, qt_metadataset_space(md), &s, &err), 0);
  CU_ASSERT_EQUAL(qt_surrogate_get_info(s)->iterations, 21);
  qt_surrogate_free(s);
  snprintf(name, sizeof name, "trajectories/quicktune/%s-seed0.csv",
           qt_metadataset_dataset(md, 1)->name);
  CU_ASSERT(!same_file(whole, part, name));
  snprintf(name, sizeof name, "trajectories/random/%s-seed0.csv",
           qt_metadataset_dataset(md, 1)->name);
  CU_ASSERT(same_file(whole, part, name)); /* measured overheads: not run again */

  qt_remove_tree(whole);
  qt_remove_tree(part);
  qt_metadataset_free(md);
}

static const qt_test_case cases[] = {
    {"regret of a hand-made trajectory", test_regret_by_hand},
    {"mean, 95% interval and ranks with ties", test_mean_ci_and_ranks},
    {"seed lists", test_seed_lists},
    {"a run replays costs and stops at the budget", test_run_replays_costs},
    {"same seed, same trajectory", test_same_seed_same_trajectory},
    {"suite files and summary", test_suite_files_and_summary},
    {"a stopped suite resumes to the same files", test_suite_resume},
    {"the fold protocol resumes", test_folds_resume},
    {NULL, NULL}};

QT_TEST_MAIN("bench", cases)

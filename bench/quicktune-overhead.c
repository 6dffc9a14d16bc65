/*
 * quicktune-overhead.c - what one Quick-Tune iteration costs as the history
 * grows (issue 4's acceptance: median seconds per suggest + refit at 100,
 * 500 and 2,000 observed epochs, and its share of a 4h budget).
 *
 * One iteration of the optimizer (src/bo/qt_opt_quicktune.c) after an
 * observation is: a refit of the deep-kernel GP (refine_steps = 50 Adam
 * steps on one row per observed epoch), then a suggestion (the GP
 * conditioned on those rows predicts every live candidate's next epoch, the
 * cost predictor prices it, EI / cost picks one). This program does exactly
 * that work with the library's models on the rows of a real history: the
 * curves of one dataset of a meta-dataset, run after run, epoch after epoch,
 * until n rows. The candidates are that dataset's runs. It also times a
 * restart (restart_steps = 1000 steps), and the same iteration with the row
 * cap max_train_rows = CAP (rows beyond it are not trained on).
 *
 *   usage: quicktune-overhead META_DATASET_DIR [DATASET [CAP [REPEATS]]]
 *          (defaults: the first dataset, CAP 256, 5 repeats)
 *
 * Times are CPU seconds of this thread (single-threaded BLAS assumed:
 * OPENBLAS_NUM_THREADS=1), so that other processes on a shared machine do
 * not inflate them; the median of REPEATS is printed. The share of a budget
 * is o / (c + o) for an iteration of o seconds next to an epoch of c
 * seconds: the fraction of the wall clock the optimizer takes when every
 * epoch costs c, printed for the dataset's mean epoch cost and the cheapest
 * dataset's. Weights are freshly initialized: the cost does not depend on
 * their values.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bo/qt_bo.h"

static double cpu_now(void) {
  struct timespec now;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

static int compare_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Rows of a history: x (n, hp), budget, curve (n, L), meta (n, m), y. */
typedef struct rows_store {
  double *x, *budget, *curve, *meta, *y;
} rows_store;

static void fill(rows_store *r, size_t i, const qt_pool *pool, size_t candidate, const float *score,
                 long epoch, long fidelity_max, const qt_dkl_config *cfg) {
  memcpy(r->x + i * cfg->hp_dim, pool->encoded + candidate * pool->dim, cfg->hp_dim * sizeof(double));
  r->budget[i] = (double)epoch / (double)fidelity_max;
  for (size_t e = 0; e < cfg->curve_len; e++)
    r->curve[i * cfg->curve_len + e] = (long)e < epoch - 1 ? score[e] : 0.0;
  if (cfg->meta_dim) memcpy(r->meta + i * cfg->meta_dim, pool->meta, cfg->meta_dim * sizeof(double));
  r->y[i] = score[epoch - 1];
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s META_DATASET_DIR [DATASET [CAP [REPEATS]]]\n", argv[0]);
    return 1;
  }
  qt_err err;
  qt_err_clear(&err);
  qt_metadataset_t *md = NULL;
  if (qt_metadataset_load(argv[1], &md, &err) != 0) {
    fprintf(stderr, "%s\n", qt_err_message(&err));
    return 1;
  }
  size_t dataset = 0;
  if (argc > 2 && qt_metadataset_find_dataset(md, argv[2], &dataset) != 0) {
    fprintf(stderr, "no dataset %s\n", argv[2]);
    return 1;
  }
  size_t cap = argc > 3 ? (size_t)strtoul(argv[3], NULL, 10) : 256;
  int repeats = argc > 4 ? atoi(argv[4]) : 5;
  if (repeats < 1) repeats = 1;

  qt_pool pool;
  if (qt_tabular_pool_init(&pool, md, dataset, &err) != 0) {
    fprintf(stderr, "%s\n", qt_err_message(&err));
    return 1;
  }
  const qt_md_dataset *d = qt_metadataset_dataset(md, dataset);
  long fidelity_min = 0, fidelity_max = 0;
  qt_space_fidelity(pool.space, NULL, &fidelity_min, &fidelity_max);
  qt_dkl_config cfg = qt_dkl_space_config(pool.space, pool.meta_dim);

  /* The history: every recorded epoch of the dataset, run after run. */
  size_t total = 0;
  double cost_sum = 0.0;
  for (size_t r = 0; r < d->run_count; r++) {
    const qt_md_run *run = qt_metadataset_run(md, d->first_run + r);
    total += run->epochs;
    for (size_t e = 0; e < run->epochs; e++) cost_sum += run->cost[e];
  }
  double mean_cost = cost_sum / (double)total;
  double cheapest = INFINITY;
  for (size_t k = 0; k < qt_metadataset_dataset_count(md); k++) {
    const qt_md_dataset *dk = qt_metadataset_dataset(md, k);
    double sum = 0.0;
    size_t count = 0;
    for (size_t r = 0; r < dk->run_count; r++) {
      const qt_md_run *run = qt_metadataset_run(md, dk->first_run + r);
      for (size_t e = 0; e < run->epochs; e++) sum += run->cost[e];
      count += run->epochs;
    }
    if (count && sum / (double)count < cheapest) cheapest = sum / (double)count;
  }
  rows_store rows = {malloc(total * cfg.hp_dim * sizeof(double)), malloc(total * sizeof(double)),
                     malloc(total * cfg.curve_len * sizeof(double)),
                     malloc(total * (cfg.meta_dim ? cfg.meta_dim : 1) * sizeof(double)),
                     malloc(total * sizeof(double))};
  size_t m = pool.count;
  rows_store query = {malloc(m * cfg.hp_dim * sizeof(double)), malloc(m * sizeof(double)),
                      malloc(m * cfg.curve_len * sizeof(double)),
                      malloc(m * (cfg.meta_dim ? cfg.meta_dim : 1) * sizeof(double)),
                      malloc(m * sizeof(double))};
  double *mean = malloc(m * sizeof *mean), *variance = malloc(m * sizeof *variance);
  double *seconds = malloc(m * sizeof *seconds);
  if (!rows.x || !rows.budget || !rows.curve || !rows.meta || !rows.y || !query.x ||
      !query.budget || !query.curve || !query.meta || !query.y || !mean || !variance || !seconds) {
    fprintf(stderr, "out of memory\n");
    return 1;
  }
  size_t i = 0;
  for (size_t r = 0; r < d->run_count; r++) {
    const qt_md_run *run = qt_metadataset_run(md, d->first_run + r);
    for (long e = 1; e <= (long)run->epochs; e++)
      fill(&rows, i++, &pool, r, run->score, e, fidelity_max, &cfg);
    /* Each candidate's query: its second epoch (the curve is its first). */
    fill(&query, r, &pool, r, run->score, run->epochs > 1 ? 2 : 1, fidelity_max, &cfg);
  }

  qt_rng_t *rng = NULL;
  qt_dkl_t *dkl = NULL;
  qt_costnet_t *cost = NULL;
  if (qt_rng_init(&rng, 1, &err) != 0 || qt_dkl_init(&dkl, &cfg, rng, &err) != 0 ||
      qt_costnet_init(&cost, &cfg, rng, &err) != 0) {
    fprintf(stderr, "%s\n", qt_err_message(&err));
    return 1;
  }
  qt_quicktune_params qp = qt_quicktune_default_params();
  printf("quicktune-overhead: dataset %s of %s (%zu candidates, %zu recorded epochs), mean epoch "
         "%.1f s, cheapest dataset's mean epoch %.1f s; CPU seconds, median of %d\n",
         d->name, qt_metadataset_name(md), m, total, mean_cost, cheapest, repeats);
  printf("%-9s %-6s %12s %12s %12s %14s %14s\n", "observed", "rows", "refit (s)", "suggest (s)",
         "iteration(s)", "share@mean", "share@cheapest");

  const size_t sizes[] = {100, 500, 2000};
  double *times = malloc((size_t)repeats * sizeof *times);
  double *refits = malloc((size_t)repeats * sizeof *refits);
  for (int capped = 0; capped < 2; capped++) {
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
      size_t observed = sizes[s];
      if (observed > total) continue;
      size_t n = capped && cap > 0 && observed > cap ? cap : observed;
      if (capped && n == observed) continue;
      /* The most recent n rows of the history. */
      size_t first = observed - n;
      qt_rows train = {n,
                       rows.x + first * cfg.hp_dim,
                       rows.budget + first,
                       rows.curve + first * cfg.curve_len,
                       cfg.meta_dim ? rows.meta + first * cfg.meta_dim : NULL,
                       rows.y + first,
                       NULL};
      qt_rows q = {m, query.x, query.budget, query.curve, cfg.meta_dim ? query.meta : NULL, NULL,
                   NULL};
      for (int k = 0; k < repeats; k++) {
        double t0 = cpu_now();
        int rc = qt_dkl_train(dkl, &train, qp.refine_steps, 1e-4, rng, NULL, &err);
        double t1 = cpu_now();
        if (rc == 0) rc = qt_dkl_predict(dkl, &train, &q, mean, variance, &err);
        if (rc == 0) rc = qt_costnet_predict(cost, &q, seconds, &err);
        double best = -INFINITY;
        for (size_t c = 0; rc == 0 && c < m; c++) {
          double sd = sqrt(variance[c]);
          double z = (mean[c] - 0.5) / sd;
          double a = ((mean[c] - 0.5) * 0.5 * erfc(-z / sqrt(2.0)) + sd * exp(-0.5 * z * z) /
                      sqrt(2.0 * M_PI)) / (seconds[c] > 0 ? seconds[c] / 100.0 : 1e-4);
          if (a > best) best = a;
        }
        double t2 = cpu_now();
        if (rc != 0) {
          fprintf(stderr, "%s\n", qt_err_message(&err));
          return 1;
        }
        refits[k] = t1 - t0;
        times[k] = t2 - t0;
      }
      qsort(times, (size_t)repeats, sizeof *times, compare_double);
      qsort(refits, (size_t)repeats, sizeof *refits, compare_double);
      double o = times[repeats / 2], refit = refits[repeats / 2];
      printf("%-9zu %-6zu %12.3f %12.3f %12.3f %13.2f%% %13.2f%%\n", observed, n, refit, o - refit,
             o, 100.0 * o / (mean_cost + o), 100.0 * o / (cheapest + o));
    }
  }
  /* A restart: restart_steps from the initial state, at each size. */
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    size_t n = sizes[s];
    if (n > total) continue;
    qt_rows train = {n, rows.x, rows.budget, rows.curve, cfg.meta_dim ? rows.meta : NULL, rows.y,
                     NULL};
    int steps = n > 500 ? qp.restart_steps / 10 : qp.restart_steps;
    double t0 = cpu_now();
    if (qt_dkl_train(dkl, &train, steps, 1e-4, rng, NULL, &err) != 0) {
      fprintf(stderr, "%s\n", qt_err_message(&err));
      return 1;
    }
    double t = (cpu_now() - t0) * (double)qp.restart_steps / (double)steps;
    printf("restart (%d steps) on %zu rows: %.2f s%s\n", qp.restart_steps, n, t,
           steps < qp.restart_steps ? " (extrapolated from 100 steps)" : "");
  }
  free(times);
  free(refits);
  rows_store *stores[2] = {&rows, &query};
  for (int k = 0; k < 2; k++) {
    free(stores[k]->x);
    free(stores[k]->budget);
    free(stores[k]->curve);
    free(stores[k]->meta);
    free(stores[k]->y);
  }
  free(mean);
  free(variance);
  free(seconds);
  qt_dkl_free(dkl);
  qt_costnet_free(cost);
  qt_rng_free(rng);
  qt_pool_free(&pool);
  qt_metadataset_free(md);
  return 0;
}

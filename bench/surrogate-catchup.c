/*
 * surrogate-catchup.c - does meta-training still help Quick-Tune's surrogate
 * once the search has its own observations? (issue 4: the 4h table finds
 * quicktune level with quicktune-M, which contradicts the paper.)
 *
 * For every dataset of a finished `qtune bench --meta-train-folds` folder,
 * this replays one Quick-Tune search's observations (the quicktune
 * trajectory of one seed, in its order) into two optimizers made with the
 * dataset's fold surrogate, both refit after every observation by their own
 * schedule (src/bo/qt_opt_quicktune.c):
 *   meta    quicktune: restarts from the meta-trained deep-kernel GP, lr 1e-4
 *   fresh   quicktune-M: restarts from a fresh initialization, lr 1e-3
 * and, third, the meta-trained GP as it is, conditioned on the same rows but
 * never refit:
 *   frozen  the meta-trained parameters
 * After n observations (n = 1, 3, 10, 30, 100) each predicts the next
 * epoch of every candidate that can advance (epoch 1 for the unseen ones),
 * against the score the meta-dataset recorded for it: the mean squared error
 * and Spearman's rank correlation over those candidates (the ranking is what
 * expected improvement acts on), and the regret of a greedy pick (best true
 * next score minus that of the candidate with the highest predicted mean).
 * The GP is conditioned on every observed epoch, as the optimizer's (whose
 * 256-row cap, the bench's, does not bind up to n = 100).
 *
 *   usage: surrogate-catchup BENCH_DIR META_DATASET_DIR [SEEDS]
 *     BENCH_DIR  a `qtune bench --meta-train-folds K --out BENCH_DIR` folder
 *                with trajectories/quicktune/ (folds.csv, surrogates/)
 *     SEEDS      N or N-M: the trajectories' seeds, also the optimizers'
 *                (default 0)
 *
 * Example (the 4h work folder of tools/bench-quicktune-full):
 *   build/bench/surrogate-catchup $W/quicktune-extended-4h $W/quicktune-extended
 * Prints one line per dataset, seed and n, then per metric the means over
 * the (dataset, seed) pairs with 95% half-widths, and the paired differences
 * meta - fresh and frozen - meta.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bo/qt_bo.h"
#include "bo/qt_bo_internal.h"
#include "surrogate/qt_surrogate.h"

#define ROW_CAP 256 /* the optimizers' max_train_rows, as tools/bench-quicktune-full */
static const size_t checkpoints[] = {1, 3, 10, 30, 100};
#define N_CHECKPOINTS (sizeof checkpoints / sizeof checkpoints[0])
enum { META, FRESH, FROZEN, N_VARIANTS };
static const char *variant_names[N_VARIANTS] = {"meta", "fresh", "frozen"};

typedef struct metrics {
  double mse, spearman, pick_regret;
  size_t count;
} metrics;

typedef struct observation {
  size_t candidate;
  long epoch;
  qt_obs_status status;
  double score;
  double time; /* simulated seconds when it came */
} observation;

static void die(const char *what, const qt_err *err) {
  fprintf(stderr, "surrogate-catchup: %s%s%s\n", what, err ? ": " : "",
          err ? qt_err_message(err) : "");
  exit(1);
}

/* Average ranks (ties share the mean rank) of v (n) into rank (n). */
static const double *sort_keys;
static int by_key(const void *a, const void *b) {
  double x = sort_keys[*(const size_t *)a], y = sort_keys[*(const size_t *)b];
  return (x > y) - (x < y);
}
static void ranks(const double *v, size_t n, size_t *order, double *rank) {
  for (size_t i = 0; i < n; i++) order[i] = i;
  sort_keys = v;
  qsort(order, n, sizeof *order, by_key);
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j + 1 < n && v[order[j + 1]] == v[order[i]]) j++;
    for (size_t k = i; k <= j; k++) rank[order[k]] = 0.5 * (double)(i + j);
    i = j + 1;
  }
}

static double pearson(const double *a, const double *b, size_t n) {
  double ma = 0, mb = 0;
  for (size_t i = 0; i < n; i++) ma += a[i], mb += b[i];
  ma /= (double)n;
  mb /= (double)n;
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < n; i++) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
  }
  return saa > 0 && sbb > 0 ? sab / sqrt(saa * sbb) : 0.0;
}

/* The replay of one dataset: the pool, its encodings under the surrogate,
 * the candidates' progress, and row buffers. */
typedef struct replay {
  const qt_metadataset_t *md;
  const qt_md_dataset *d;
  qt_pool pool;
  const qt_dkl_config *cfg;
  double *encoded; /* (count, hp_dim) */
  long fidelity_max;
  long *last; /* (count) last observed epoch */
  int *ended; /* (count) */
  /* rows: x, budget, curve, meta, y; the training rows then the queries */
  double *x, *budget, *curve, *meta, *y;
} replay;

static void put_row(replay *r, size_t i, size_t c, long t) {
  const qt_md_run *run = qt_metadataset_run(r->md, r->d->first_run + c);
  const qt_dkl_config *cfg = r->cfg;
  memcpy(r->x + i * cfg->hp_dim, r->encoded + c * cfg->hp_dim, cfg->hp_dim * sizeof(double));
  r->budget[i] = (double)t / (double)r->fidelity_max;
  for (size_t e = 0; e < cfg->curve_len; e++)
    r->curve[i * cfg->curve_len + e] = (long)e < t - 1 ? run->score[e] : 0.0;
  if (cfg->meta_dim)
    memcpy(r->meta + i * cfg->meta_dim, r->pool.meta, cfg->meta_dim * sizeof(double));
  r->y[i] = (size_t)t <= run->epochs ? run->score[t - 1] : NAN;
}

static qt_rows rows_at(const replay *r, size_t first, size_t n, int with_y) {
  const qt_dkl_config *cfg = r->cfg;
  qt_rows rows = {n,
                  r->x + first * cfg->hp_dim,
                  r->budget + first,
                  r->curve + first * cfg->curve_len,
                  cfg->meta_dim ? r->meta + first * cfg->meta_dim : NULL,
                  with_y ? r->y + first : NULL,
                  NULL};
  return rows;
}

/* The metrics of dkl's predictions after the first n_obs observations:
 * training rows are every OK one (n_obs <= ROW_CAP), queries every candidate
 * that can advance. */
static metrics evaluate(replay *r, qt_dkl_t *dkl, const observation *obs, size_t n_obs) {
  size_t n_train = 0;
  for (size_t k = 0; k < n_obs; k++)
    if (obs[k].status == QT_OBS_STATUS_OK) put_row(r, n_train++, obs[k].candidate, obs[k].epoch);
  size_t n_query = 0;
  for (size_t c = 0; c < r->pool.count; c++) {
    long t = r->last[c] + 1;
    const qt_md_run *run = qt_metadataset_run(r->md, r->d->first_run + c);
    if (r->ended[c] || t > r->fidelity_max || (size_t)t > run->epochs) continue;
    put_row(r, n_train + n_query, c, t);
    n_query++;
  }
  metrics m = {0, 0, 0, n_query};
  double *mean = malloc((n_query + 1) * sizeof *mean);
  double *rank_a = malloc((n_query + 1) * sizeof *rank_a),
         *rank_b = malloc((n_query + 1) * sizeof *rank_b);
  size_t *order = malloc((n_query + 1) * sizeof *order);
  qt_rows train = rows_at(r, 0, n_train, 1), query = rows_at(r, n_train, n_query, 0);
  qt_err err;
  qt_err_clear(&err);
  if (qt_dkl_predict(dkl, &train, &query, mean, NULL, &err) != 0) die("predict", &err);
  const double *truth = r->y + n_train;
  size_t best_pred = 0, best_true = 0;
  for (size_t q = 0; q < n_query; q++) {
    m.mse += (mean[q] - truth[q]) * (mean[q] - truth[q]);
    if (mean[q] > mean[best_pred]) best_pred = q;
    if (truth[q] > truth[best_true]) best_true = q;
  }
  if (n_query) {
    m.mse /= (double)n_query;
    ranks(mean, n_query, order, rank_a);
    ranks(truth, n_query, order, rank_b);
    m.spearman = pearson(rank_a, rank_b, n_query);
    m.pick_regret = truth[best_true] - truth[best_pred];
  }
  free(mean);
  free(rank_a);
  free(rank_b);
  free(order);
  return m;
}

/* Reads trajectories/quicktune/<name>-seed<seed>.csv: the observations in
 * order, and the budget from its key line. Returns their count. */
static size_t read_trajectory(const char *dir, const replay *r, unsigned long seed,
                              observation **out, double *budget) {
  char path[4096];
  snprintf(path, sizeof path, "%s/trajectories/quicktune/%s-seed%lu.csv", dir, r->d->name, seed);
  FILE *f = fopen(path, "r");
  if (!f) die(path, NULL);
  char line[1024];
  size_t n = 0, cap = 256;
  observation *obs = malloc(cap * sizeof *obs);
  if (!fgets(line, sizeof line, f)) die(path, NULL);
  *budget = NAN;
  while (fgets(line, sizeof line, f)) {
    /* time_s,score,incumbent,regret,overhead_s,run,epoch,status; the last
     * line is the file's key. */
    const char *key = strstr(line, " budget_s=");
    if (line[0] == '#' && key) {
      *budget = strtod(key + strlen(" budget_s="), NULL);
      continue;
    }
    char *field[8];
    size_t k = 0;
    for (char *p = strtok(line, ",\n"); p && k < 8; p = strtok(NULL, ",\n")) field[k++] = p;
    if (k < 8) continue;
    size_t c = r->pool.count;
    for (size_t j = 0; j < r->d->run_count; j++) {
      if (!strcmp(qt_metadataset_run(r->md, r->d->first_run + j)->id, field[5])) {
        c = j;
        break;
      }
    }
    if (c == r->pool.count) die("a trajectory names a run the meta-dataset lacks", NULL);
    if (n == cap) obs = realloc(obs, (cap *= 2) * sizeof *obs);
    qt_obs_status status = !strcmp(field[7], "ok")         ? QT_OBS_STATUS_OK
                           : !strcmp(field[7], "diverged") ? QT_OBS_STATUS_DIVERGED
                           : !strcmp(field[7], "failed")   ? QT_OBS_STATUS_FAILED
                                                           : QT_OBS_STATUS_EXHAUSTED;
    obs[n++] = (observation){c, strtol(field[6], NULL, 10), status, strtod(field[1], NULL),
                             strtod(field[0], NULL)};
  }
  fclose(f);
  *out = obs;
  return n;
}

/* Every (dataset, seed) pair's metrics, by checkpoint and variant. */
#define MAX_PAIRS 4096
typedef struct results {
  metrics at[N_CHECKPOINTS][N_VARIANTS][MAX_PAIRS];
  size_t pairs[N_CHECKPOINTS];
  double observed[2][MAX_PAIRS]; /* OK observations by 10% and 50% of the budget */
  size_t runs;
} results;

/* Replays seed `seed`'s quicktune trajectory of r's dataset into the
 * variants; prints a line and records the metrics at each checkpoint. */
static void replay_seed(replay *r, const qt_surrogate_t *surrogate, const char *dir,
                        unsigned long seed, results *res) {
  qt_err err;
  qt_err_clear(&err);
  const char *name = r->d->name;
  memset(r->last, 0, r->pool.count * sizeof *r->last);
  memset(r->ended, 0, r->pool.count * sizeof *r->ended);
  observation *obs = NULL;
  double budget = NAN;
  size_t n_obs = read_trajectory(dir, r, seed, &obs, &budget);
  if (!(budget > 0)) die("a trajectory without budget_s in its key line", NULL);
  QT_ASSERT(res->runs < MAX_PAIRS);
  for (int f = 0; f < 2; f++) {
    double by = (f == 0 ? 0.1 : 0.5) * budget, count = 0;
    for (size_t k = 0; k < n_obs; k++)
      count += obs[k].status == QT_OBS_STATUS_OK && obs[k].time <= by;
    res->observed[f][res->runs] = count;
  }
  res->runs++;
  /* The two refit optimizers (the bench's parameters), and the frozen GP. */
  qt_optimizer_params params = qt_optimizer_default_params();
  params.seed = seed;
  params.surrogate = surrogate;
  params.quicktune.max_train_rows = ROW_CAP;
  qt_optimizer_t *opt[2] = {NULL, NULL};
  if (qt_optimizer_create("quicktune", &r->pool, &params, &opt[META], &err) != 0 ||
      qt_optimizer_create("quicktune-M", &r->pool, &params, &opt[FRESH], &err) != 0)
    die(name, &err);
  qt_dkl_t *dkl = NULL;
  if (qt_surrogate_make_dkl(surrogate, &dkl, &err) != 0) die(name, &err);
  size_t done = 0, ok = 0;
  for (size_t k = 0; k < N_CHECKPOINTS; k++) {
    while (ok < checkpoints[k] && done < n_obs) {
      const observation *o = &obs[done++];
      qt_observation ob = {0};
      ob.status = o->status;
      ob.score = o->status == QT_OBS_STATUS_OK ? o->score : NAN;
      for (int v = 0; v < 2; v++)
        if (qt_optimizer_observe(opt[v], o->candidate, o->epoch, &ob, &err) != 0) die(name, &err);
      if (o->status == QT_OBS_STATUS_OK) {
        ok++;
        r->last[o->candidate] = o->epoch;
      } else {
        r->ended[o->candidate] = 1;
      }
    }
    if (ok < checkpoints[k]) break;
    printf("%-10s %4lu %5zu", name, seed, checkpoints[k]);
    size_t pair = res->pairs[k]++;
    QT_ASSERT(pair < MAX_PAIRS);
    for (int v = 0; v < N_VARIANTS; v++) {
      const double *state;
      if (v == FROZEN) {
        size_t n_params = 0;
        state = qt_surrogate_dkl_params(surrogate, &n_params);
      } else {
        qt__quicktune_info info;
        qt__quicktune_get_info(opt[v], &info);
        state = info.current;
      }
      if (qt_dkl_set_params(dkl, state, &err) != 0) die(name, &err);
      metrics m = evaluate(r, dkl, obs, done);
      if (v == 0) printf(" %6zu ", m.count);
      printf(" %8.4f %6.3f %7.4f     ", m.mse, m.spearman, m.pick_regret);
      res->at[k][v][pair] = m;
    }
    printf("\n");
  }
  qt_dkl_free(dkl);
  for (int v = 0; v < 2; v++) qt_optimizer_free(opt[v]);
  free(obs);
  fflush(stdout);
}

static int compare_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double field(const metrics *m, size_t f) {
  return f == 0 ? m->mse : f == 1 ? m->spearman : m->pick_regret;
}

/* Mean and 95% half-width (normal) of field f over the pairs of variant a,
 * less variant b's when b >= 0 (paired). */
static void mean_hw(const results *res, size_t k, int a, int b, size_t f, double *mean,
                    double *hw) {
  size_t n = res->pairs[k];
  double sum = 0.0, sq = 0.0;
  for (size_t i = 0; i < n; i++) {
    double x = field(&res->at[k][a][i], f);
    if (b >= 0) x -= field(&res->at[k][b][i], f);
    sum += x;
    sq += x * x;
  }
  *mean = n ? sum / (double)n : NAN;
  double var = n > 1 ? (sq - (double)n * *mean * *mean) / (double)(n - 1) : 0.0;
  *hw = n > 1 ? 1.96 * sqrt(var > 0 ? var : 0.0) / sqrt((double)n) : NAN;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s BENCH_DIR META_DATASET_DIR [SEEDS]\n", argv[0]);
    return 1;
  }
  const char *dir = argv[1];
  unsigned long first_seed = 0, last_seed = 0;
  if (argc > 3) {
    char *end = NULL;
    first_seed = last_seed = strtoul(argv[3], &end, 10);
    if (*end == '-') last_seed = strtoul(end + 1, &end, 10);
    if (*end || last_seed < first_seed) die("SEEDS: expected N or N-M", NULL);
  }
  qt_err err;
  qt_err_clear(&err);
  qt_metadataset_t *md = NULL;
  if (qt_metadataset_load(argv[2], &md, &err) != 0) die(argv[2], &err);
  char path[4096];
  snprintf(path, sizeof path, "%s/folds.csv", dir);
  FILE *folds = fopen(path, "r");
  if (!folds) die(path, NULL);

  printf(
      "surrogate-catchup: %s, quicktune's observations (seeds %lu-%lu) replayed; next-epoch "
      "predictions of the candidates that can advance\n",
      dir, first_seed, last_seed);
  printf("%-10s %4s %5s %6s  %-27s %-27s %-27s\n", "dataset", "seed", "n", "cands",
         "meta: mse rho regret", "fresh: mse rho regret", "frozen: mse rho regret");
  results *res = calloc(1, sizeof *res);
  if (!res) die("out of memory", NULL);
  char line[512];
  if (!fgets(line, sizeof line, folds)) die(path, NULL);
  while (fgets(line, sizeof line, folds)) {
    char name[256];
    int fold = -1;
    if (sscanf(line, "%255[^,],%d", name, &fold) != 2) continue;
    replay r;
    memset(&r, 0, sizeof r);
    r.md = md;
    size_t index = 0;
    if (qt_metadataset_find_dataset(md, name, &index) != 0) die(name, NULL);
    r.d = qt_metadataset_dataset(md, index);
    if (qt_tabular_pool_init(&r.pool, md, index, &err) != 0) die(name, &err);
    snprintf(path, sizeof path, "%s/surrogates/fold%d.qts", dir, fold);
    qt_surrogate_t *surrogate = NULL;
    if (qt_surrogate_load(path, r.pool.space, &surrogate, &err) != 0) die(path, &err);
    r.cfg = qt_surrogate_config(surrogate);
    long fidelity_min = 0;
    qt_space_fidelity(r.pool.space, NULL, &fidelity_min, &r.fidelity_max);
    size_t count = r.pool.count, hp = r.cfg->hp_dim, rows = ROW_CAP + count;
    r.encoded = malloc(count * hp * sizeof *r.encoded);
    r.x = malloc(rows * hp * sizeof *r.x);
    r.budget = malloc(rows * sizeof *r.budget);
    r.curve = malloc(rows * r.cfg->curve_len * sizeof *r.curve);
    r.meta = malloc(rows * (r.cfg->meta_dim ? r.cfg->meta_dim : 1) * sizeof *r.meta);
    r.y = malloc(rows * sizeof *r.y);
    r.last = calloc(count, sizeof *r.last);
    r.ended = calloc(count, sizeof *r.ended);
    if (!r.encoded || !r.x || !r.budget || !r.curve || !r.meta || !r.y || !r.last || !r.ended)
      die("out of memory", NULL);
    for (size_t c = 0; c < count; c++)
      if (qt_surrogate_encode(surrogate, r.pool.space, &r.pool.configs[c], r.encoded + c * hp,
                              &err) != 0)
        die(name, &err);
    for (unsigned long seed = first_seed; seed <= last_seed; seed++)
      replay_seed(&r, surrogate, dir, seed, res);
    double *owned[] = {r.encoded, r.x, r.budget, r.curve, r.meta, r.y};
    for (size_t i = 0; i < sizeof owned / sizeof *owned; i++) free(owned[i]);
    free(r.last);
    free(r.ended);
    qt_surrogate_free(surrogate);
    qt_pool_free(&r.pool);
  }
  fclose(folds);

  static const char *fields[3] = {"next-epoch MSE", "Spearman rho", "greedy pick's regret"};
  for (size_t f = 0; f < 3; f++) {
    printf("\n%s: mean (95%% half-width) over the (dataset, seed) pairs\n", fields[f]);
    printf("%5s %6s  %-17s %-17s %-17s %-17s %-17s\n", "n", "pairs", "meta", "fresh", "frozen",
           "meta - fresh", "frozen - meta");
    for (size_t k = 0; k < N_CHECKPOINTS; k++) {
      if (!res->pairs[k]) continue;
      printf("%5zu %6zu ", checkpoints[k], res->pairs[k]);
      const int a[5] = {META, FRESH, FROZEN, META, FROZEN}, b[5] = {-1, -1, -1, FRESH, META};
      for (int j = 0; j < 5; j++) {
        double mean, hw;
        mean_hw(res, k, a[j], b[j], f, &mean, &hw);
        printf(" %+7.4f (%.4f)", mean, hw);
      }
      printf("\n");
    }
  }
  for (int f = 0; f < 2; f++) {
    double *v = res->observed[f];
    qsort(v, res->runs, sizeof *v, compare_double);
    printf(
        "%squicktune's observations by %d%% of the budget (%zu runs): median %g, quartiles "
        "%g-%g\n",
        f == 0 ? "\n" : "", f == 0 ? 10 : 50, res->runs, v[res->runs / 2], v[res->runs / 4],
        v[3 * res->runs / 4]);
  }
  printf(
      "\n(%s: the refit meta-trained GP; %s: the refit fresh one; %s: the meta-trained one "
      "conditioned on the rows, not refit)\n",
      variant_names[META], variant_names[FRESH], variant_names[FROZEN]);
  free(res);
  qt_metadataset_free(md);
  return 0;
}

/*
 * lomo.c - leave-one-model-out comparison of model encodings (issue 10).
 *
 *   build/tools/lomo (--meta-dataset DIR | --quicktune SRC) --models M1,M2,...
 *                    [--encodings onehot,descriptors] [--descriptors FILE] [--hub FILE]
 *                    [--iterations N] [--seed S] [--pairs P] [--space FILE] [--csv FILE]
 *
 * For each held-out model M and each encoding, meta-trains the surrogates
 * (qt_metatrain, same seed and iterations for every encoding) on every run
 * whose model is not M, then scores next-epoch predictions on M's runs:
 *
 *   ctx=others  P pairs; each takes a dataset (uniform among those where M has
 *               runs), conditions the GP on 32 rows of OTHER models' runs on
 *               that dataset and predicts 32 rows of M's runs there (the
 *               situation of a model the meta-dataset never saw, when the
 *               search has observed other models): MSE of the means and
 *               Spearman rank correlation (mean over pairs).
 *   ctx=same    qt_metatrain_evaluate on M's runs alone: context and query
 *               both from M's runs of one dataset (after a few observations
 *               of the new model).
 *
 * Rows are drawn as meta-training draws them (a run uniform, a budget b
 * uniform in 1 .. max_epochs - 1 cut to the run's length, the scores of
 * epochs 1 .. b-1 as the curve, the score of epoch b as the target), from a
 * stream of the seed that does not depend on the encoding, so both encodings
 * see the same pairs. A naive reference is printed too: the query's last
 * observed score (epoch b-1), or the context mean for b = 1.
 *
 * The held-out model's one-hot column exists in the space but is never set
 * during its meta-training: the one-hot surrogate meets an untrained column,
 * the descriptor surrogate meets a known kind of model.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metadata/qt_metadata.h"
#include "surrogate/qt_surrogate.h"

#define MAX_MODELS 64
#define BATCH 32

typedef struct options {
  const char *meta_dataset, *quicktune, *space, *descriptors, *hub, *csv;
  char models_buf[4096], encodings_buf[256];
  const char *models[MAX_MODELS];
  size_t model_count;
  qt_model_encoding encodings[2];
  size_t encoding_count;
  long iterations;
  uint64_t seed;
  size_t pairs;
} options;

static int usage(const char *message) {
  if (message) fprintf(stderr, "lomo: %s\n", message);
  fprintf(stderr,
          "usage: lomo (--meta-dataset DIR | --quicktune SRC) --models M1,M2,... "
          "[--encodings onehot,descriptors] [--descriptors FILE] [--hub FILE] [--iterations N] "
          "[--seed S] [--pairs P] [--space FILE] [--csv FILE]\n");
  return 2;
}

/* The model hyperparameter's choice of run r, or NULL. */
static const char *run_model(const qt_metadataset_t *md, size_t hp, size_t r) {
  long choice = qt_config_index(qt_metadataset_run(md, r)->config, hp);
  return choice < 0 ? NULL : qt_space_hp_choice(qt_metadataset_space(md), hp, (size_t)choice);
}

/* A copy of md with the runs whose model is (keep_model: is not) `model`. */
static int filtered(const qt_metadataset_t *md, const char *space_path, size_t hp,
                    const char *model, int keep_model, qt_metadataset_t **out, qt_err *err) {
  qt_metadataset_params p = qt_metadataset_default_params();
  char name[256];
  snprintf(name, sizeof name, "%s-%s-%s", qt_metadataset_name(md), keep_model ? "only" : "without",
           model);
  p.name = name;
  p.metric = qt_metadataset_metric(md);
  p.max_epochs = qt_metadataset_max_epochs(md);
  p.feature_count = qt_metadataset_feature_count(md);
  const char *features[64];
  if (p.feature_count > 64) return qt_err_set(err, QT_EINVAL, "too many meta-features");
  for (size_t k = 0; k < p.feature_count; k++) features[k] = qt_metadataset_feature_name(md, k);
  p.feature_names = features;
  int rc = qt_metadataset_create(space_path, &p, out, err);
  if (rc != 0) return rc;
  const qt_space_t *space = qt_metadataset_space(*out);
  for (size_t d = 0; rc == 0 && d < qt_metadataset_dataset_count(md); d++) {
    const qt_md_dataset *ds = qt_metadataset_dataset(md, d);
    size_t index = 0;
    rc = qt_metadataset_add_dataset(*out, ds->name, ds->features, &index, err);
    for (size_t r = ds->first_run; rc == 0 && r < ds->first_run + ds->run_count; r++) {
      const char *m = run_model(md, hp, r);
      int is_model = m && strcmp(m, model) == 0;
      if (is_model != keep_model) continue;
      qt_md_run run = *qt_metadataset_run(md, r);
      qt_config config;
      rc = qt_config_init(&config, space, err);
      if (rc != 0) break;
      for (size_t h = 0; h < config.count; h++) config.slots[h] = run.config->slots[h];
      run.dataset = index;
      run.config = &config;
      rc = qt_metadataset_add_run(*out, &run, err);
      qt_config_free(&config);
    }
  }
  if (rc != 0) {
    qt_metadataset_free(*out);
    *out = NULL;
  }
  return rc;
}

/* Row arrays for BATCH rows. */
typedef struct rows_buf {
  double *x, *budget, *curve, *meta, *y, *last;
  qt_rows rows;
} rows_buf;

static int rows_init(rows_buf *b, const qt_dkl_config *c) {
  memset(b, 0, sizeof *b);
  b->x = calloc(BATCH * c->hp_dim, sizeof *b->x);
  b->budget = calloc(BATCH, sizeof *b->budget);
  b->curve = calloc(BATCH * c->curve_len, sizeof *b->curve);
  b->meta = calloc(BATCH * (c->meta_dim ? c->meta_dim : 1), sizeof *b->meta);
  b->y = calloc(BATCH, sizeof *b->y);
  b->last = calloc(BATCH, sizeof *b->last);
  b->rows.n = BATCH;
  b->rows.x = b->x;
  b->rows.budget = b->budget;
  b->rows.curve = b->curve;
  b->rows.meta = c->meta_dim ? b->meta : NULL;
  b->rows.y = b->y;
  return b->x && b->budget && b->curve && b->meta && b->y && b->last ? 0 : QT_ENOMEM;
}

static void rows_free(rows_buf *b) {
  free(b->x);
  free(b->budget);
  free(b->curve);
  free(b->meta);
  free(b->y);
  free(b->last);
}

/* Fills b with BATCH rows drawn from the runs listed in `runs`. */
static int fill(rows_buf *b, const qt_surrogate_t *s, const qt_metadataset_t *md,
                const size_t *runs, size_t count, qt_rng_t *rng, qt_err *err) {
  const qt_dkl_config *c = qt_surrogate_config(s);
  const qt_space_t *space = qt_metadataset_space(md);
  long fidelity_max = 0;
  qt_space_fidelity(space, NULL, NULL, &fidelity_max);
  long max_epochs = qt_metadataset_max_epochs(md);
  long max_budget = max_epochs > 1 ? max_epochs - 1 : 1;
  for (size_t i = 0; i < BATCH; i++) {
    const qt_md_run *run = qt_metadataset_run(md, runs[qt_rng_uniform_int(rng, count)]);
    long b_epoch = 1 + (long)qt_rng_uniform_int(rng, (uint64_t)max_budget);
    if (b_epoch > (long)run->epochs) b_epoch = (long)run->epochs;
    int rc = qt_surrogate_encode(s, space, run->config, b->x + i * c->hp_dim, err);
    if (rc != 0) return rc;
    b->budget[i] = (double)b_epoch / (double)fidelity_max;
    double *curve = b->curve + i * c->curve_len;
    for (size_t e = 0; e < c->curve_len; e++)
      curve[e] = (long)e < b_epoch - 1 ? (double)run->score[e] : 0.0;
    const double *features = qt_metadataset_dataset(md, run->dataset)->features;
    for (size_t k = 0; k < c->meta_dim; k++)
      b->meta[i * c->meta_dim + k] = features[k] * QT_SURROGATE_META_SCALE;
    b->y[i] = run->score[b_epoch - 1];
    b->last[i] = b_epoch > 1 ? run->score[b_epoch - 2] : NAN;
  }
  return 0;
}

/* Average ranks (ties share the mean rank). */
static void ranks(const double *v, size_t n, double *out) {
  for (size_t i = 0; i < n; i++) {
    double less = 0.0, equal = 0.0;
    for (size_t j = 0; j < n; j++) {
      if (v[j] < v[i])
        less += 1.0;
      else if (v[j] == v[i])
        equal += 1.0;
    }
    out[i] = less + (equal + 1.0) / 2.0;
  }
}

/* Spearman's rho (NaN when either side is constant). */
static double spearman(const double *a, const double *b, size_t n) {
  double ra[BATCH], rb[BATCH], ma = 0.0, mb = 0.0;
  ranks(a, n, ra);
  ranks(b, n, rb);
  for (size_t i = 0; i < n; i++) {
    ma += ra[i] / (double)n;
    mb += rb[i] / (double)n;
  }
  double sab = 0.0, saa = 0.0, sbb = 0.0;
  for (size_t i = 0; i < n; i++) {
    sab += (ra[i] - ma) * (rb[i] - mb);
    saa += (ra[i] - ma) * (ra[i] - ma);
    sbb += (rb[i] - mb) * (rb[i] - mb);
  }
  return saa > 0.0 && sbb > 0.0 ? sab / sqrt(saa * sbb) : NAN;
}

typedef struct scores {
  double mse, rho, naive_mse, same_mse, untrained_mse;
  size_t datasets, runs;
} scores;

/* ctx=others scores of surrogate s (and of its untrained twin, when given)
 * on model `model`. */
static int score_others(const qt_metadataset_t *md, size_t hp, const char *model,
                        const qt_surrogate_t *s, const options *o, scores *out, qt_err *err) {
  size_t runs = qt_metadataset_run_count(md);
  size_t *own = malloc(runs * sizeof *own), *other = malloc(runs * sizeof *other);
  size_t *eligible = malloc(qt_metadataset_dataset_count(md) * sizeof *eligible);
  rows_buf ctx, query;
  qt_dkl_t *dkl = NULL;
  qt_rng_t *root = NULL, *rng = NULL;
  int rc = own && other && eligible ? 0 : qt_err_set(err, QT_ENOMEM, "out of memory");
  if (rc == 0)
    rc = rows_init(&ctx, qt_surrogate_config(s)) | rows_init(&query, qt_surrogate_config(s));
  if (rc == 0) rc = qt_surrogate_make_dkl(s, &dkl, err);
  if (rc == 0) rc = qt_rng_init(&root, o->seed, err);
  if (rc == 0) rc = qt_rng_fork(root, 77, &rng, err);
  size_t n_eligible = 0;
  out->runs = 0;
  for (size_t d = 0; rc == 0 && d < qt_metadataset_dataset_count(md); d++) {
    const qt_md_dataset *ds = qt_metadataset_dataset(md, d);
    size_t n_own = 0, n_other = 0;
    for (size_t r = ds->first_run; r < ds->first_run + ds->run_count; r++) {
      const char *m = run_model(md, hp, r);
      if (m && strcmp(m, model) == 0)
        n_own++;
      else
        n_other++;
    }
    out->runs += n_own;
    if (n_own > 0 && n_other > 0) eligible[n_eligible++] = d;
  }
  out->datasets = n_eligible;
  double sum = 0.0, sum_naive = 0.0, sum_rho = 0.0;
  size_t n_rho = 0;
  double mean[BATCH];
  for (size_t p = 0; rc == 0 && n_eligible > 0 && p < o->pairs; p++) {
    const qt_md_dataset *ds =
        qt_metadataset_dataset(md, eligible[qt_rng_uniform_int(rng, n_eligible)]);
    size_t n_own = 0, n_other = 0;
    for (size_t r = ds->first_run; r < ds->first_run + ds->run_count; r++) {
      const char *m = run_model(md, hp, r);
      if (m && strcmp(m, model) == 0)
        own[n_own++] = r;
      else
        other[n_other++] = r;
    }
    rc = fill(&ctx, s, md, other, n_other, rng, err);
    if (rc == 0) rc = fill(&query, s, md, own, n_own, rng, err);
    if (rc == 0) {
      qt_rows q = query.rows;
      q.y = NULL;
      rc = qt_dkl_predict(dkl, &ctx.rows, &q, mean, NULL, err);
    }
    if (rc != 0) break;
    double ctx_mean = 0.0, se = 0.0, se_naive = 0.0;
    for (size_t i = 0; i < BATCH; i++) ctx_mean += ctx.y[i] / BATCH;
    for (size_t i = 0; i < BATCH; i++) {
      double naive = isnan(query.last[i]) ? ctx_mean : query.last[i];
      se += (mean[i] - query.y[i]) * (mean[i] - query.y[i]);
      se_naive += (naive - query.y[i]) * (naive - query.y[i]);
    }
    sum += se / BATCH;
    sum_naive += se_naive / BATCH;
    double rho = spearman(mean, query.y, BATCH);
    if (!isnan(rho)) {
      sum_rho += rho;
      n_rho++;
    }
  }
  out->mse = n_eligible ? sum / (double)o->pairs : NAN;
  out->naive_mse = n_eligible ? sum_naive / (double)o->pairs : NAN;
  out->rho = n_rho ? sum_rho / (double)n_rho : NAN;
  qt_rng_free(rng);
  qt_rng_free(root);
  qt_dkl_free(dkl);
  rows_free(&ctx);
  rows_free(&query);
  free(own);
  free(other);
  free(eligible);
  return rc;
}

static int parse_options(int argc, char **argv, options *o) {
  memset(o, 0, sizeof *o);
  o->iterations = 2000;
  o->pairs = 200;
  snprintf(o->encodings_buf, sizeof o->encodings_buf, "onehot,descriptors");
  const char *models = NULL, *encodings = NULL;
  for (int i = 1; i < argc; i++) {
    const char *flag = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
    if (!value) return usage("every flag takes a value");
    i++;
    if (strcmp(flag, "--meta-dataset") == 0)
      o->meta_dataset = value;
    else if (strcmp(flag, "--quicktune") == 0)
      o->quicktune = value;
    else if (strcmp(flag, "--space") == 0)
      o->space = value;
    else if (strcmp(flag, "--descriptors") == 0)
      o->descriptors = value;
    else if (strcmp(flag, "--hub") == 0)
      o->hub = value;
    else if (strcmp(flag, "--csv") == 0)
      o->csv = value;
    else if (strcmp(flag, "--models") == 0)
      models = value;
    else if (strcmp(flag, "--encodings") == 0)
      encodings = value;
    else if (strcmp(flag, "--iterations") == 0)
      o->iterations = atol(value);
    else if (strcmp(flag, "--seed") == 0)
      o->seed = (uint64_t)atoll(value);
    else if (strcmp(flag, "--pairs") == 0)
      o->pairs = (size_t)atol(value);
    else
      return usage("unknown flag");
  }
  if (!o->meta_dataset == !o->quicktune) return usage("give --meta-dataset DIR or --quicktune SRC");
  if (!models) return usage("--models is required");
  if (o->iterations < 1 || o->pairs < 1) return usage("--iterations and --pairs must be >= 1");
  snprintf(o->models_buf, sizeof o->models_buf, "%s", models);
  for (char *w = strtok(o->models_buf, ","); w && o->model_count < MAX_MODELS;
       w = strtok(NULL, ","))
    o->models[o->model_count++] = w;
  if (encodings) snprintf(o->encodings_buf, sizeof o->encodings_buf, "%s", encodings);
  for (char *w = strtok(o->encodings_buf, ","); w; w = strtok(NULL, ",")) {
    if (o->encoding_count == 2 ||
        qt_model_encoding_parse(w, &o->encodings[o->encoding_count++], NULL) != 0)
      return usage("--encodings: onehot and/or descriptors");
  }
  return 0;
}

int main(int argc, char **argv) {
  options o;
  int status = parse_options(argc, argv, &o);
  if (status != 0) return status;
  qt_err err;
  qt_err_clear(&err);
  qt_metadataset_t *md = NULL;
  char space_buf[4096];
  const char *space_path = o.space;
  int rc;
  if (o.quicktune) {
    if (!space_path) {
      snprintf(space_buf, sizeof space_buf, "%s/configs/spaces/quicktune-v1.yaml", QT_SOURCE_DIR);
      space_path = space_buf;
    }
    rc = qt_metadataset_import_quicktune(o.quicktune, space_path, &md, &err);
  } else {
    rc = qt_metadataset_load(o.meta_dataset, &md, &err);
    if (rc == 0 && !space_path) {
      snprintf(space_buf, sizeof space_buf, "%s/space.yaml", o.meta_dataset);
      space_path = space_buf;
    }
  }
  if (rc != 0) {
    fprintf(stderr, "lomo: %s\n", qt_err_message(&err));
    return 1;
  }
  const qt_space_t *space = qt_metadataset_space(md);
  size_t hp;
  if (qt_space_find(space, "model", &hp) != 0) {
    fprintf(stderr, "lomo: the space has no hyperparameter 'model'\n");
    qt_metadataset_free(md);
    return 1;
  }
  qt_model_codec_t *codecs[2] = {NULL, NULL};
  for (size_t e = 0; e < o.encoding_count; e++) {
    rc = qt_model_codec_load(o.encodings[e], o.descriptors, o.hub, &codecs[e], &err);
    if (rc == 0) rc = qt_model_codec_check_metadataset(codecs[e], md, &err);
    if (rc != 0) {
      fprintf(stderr, "lomo: %s\n", qt_err_message(&err));
      return 1;
    }
  }
  FILE *csv = o.csv ? fopen(o.csv, "w") : NULL;
  if (csv)
    fprintf(csv,
            "model,encoding,iterations,seed,runs,datasets,mse_others,spearman_others,"
            "naive_mse_others,untrained_mse_others,mse_same,seconds\n");
  printf(
      "leave-one-model-out on \"%s\" (%zu runs), %ld meta-training iterations, seed %llu, "
      "%zu pairs of %d rows\n",
      qt_metadataset_name(md), qt_metadataset_run_count(md), o.iterations,
      (unsigned long long)o.seed, o.pairs, BATCH);
  printf("%-42s %-11s %5s %4s %10s %8s %10s %10s %10s %7s\n", "held-out model", "encoding", "runs",
         "dsets", "MSE(oth)", "rho(oth)", "naive(oth)", "untr(oth)", "MSE(same)", "secs");
  fflush(stdout);
  for (size_t m = 0; rc == 0 && m < o.model_count; m++) {
    qt_metadataset_t *train = NULL, *only = NULL;
    rc = filtered(md, space_path, hp, o.models[m], 0, &train, &err);
    if (rc == 0) rc = filtered(md, space_path, hp, o.models[m], 1, &only, &err);
    if (rc == 0 && qt_metadataset_run_count(only) == 0)
      rc = qt_err_set(&err, QT_ENOENT, "no runs of model '%s'", o.models[m]);
    for (size_t e = 0; rc == 0 && e < o.encoding_count; e++) {
      double start = qt_time_now();
      qt_metatrain_params p = qt_metatrain_default_params();
      p.iterations = o.iterations;
      p.seed = o.seed;
      p.codec = codecs[e];
      qt_surrogate_t *s = NULL, *untrained = NULL;
      rc = qt_metatrain(train, &p, &s, NULL, &err);
      qt_metatrain_params p0 = p;
      p0.iterations = 0;
      if (rc == 0) rc = qt_metatrain(train, &p0, &untrained, NULL, &err);
      scores sc, sc0;
      memset(&sc, 0, sizeof sc);
      memset(&sc0, 0, sizeof sc0);
      if (rc == 0) rc = score_others(md, hp, o.models[m], s, &o, &sc, &err);
      if (rc == 0) rc = score_others(md, hp, o.models[m], untrained, &o, &sc0, &err);
      /* ctx=same: context and query from the held-out model's runs. */
      size_t *datasets = NULL, n = 0;
      if (rc == 0) {
        datasets = malloc(qt_metadataset_dataset_count(only) * sizeof *datasets);
        for (size_t d = 0; datasets && d < qt_metadataset_dataset_count(only); d++)
          if (qt_metadataset_dataset(only, d)->run_count > 0) datasets[n++] = d;
        qt_dkl_t *dkl = NULL;
        p.validation_batches = o.pairs;
        rc = qt_surrogate_make_dkl(s, &dkl, &err);
        if (rc == 0)
          rc = qt_metatrain_evaluate(only, datasets, n, dkl, NULL, &p, &sc.same_mse, NULL, &err);
        qt_dkl_free(dkl);
      }
      free(datasets);
      double seconds = qt_time_now() - start;
      if (rc == 0) {
        printf("%-42s %-11s %5zu %4zu %10.5f %8.3f %10.5f %10.5f %10.5f %7.1f\n", o.models[m],
               qt_model_encoding_name(o.encodings[e]), sc.runs, sc.datasets, sc.mse, sc.rho,
               sc.naive_mse, sc0.mse, sc.same_mse, seconds);
        fflush(stdout);
        if (csv) {
          fprintf(csv, "%s,%s,%ld,%llu,%zu,%zu,%.6g,%.6g,%.6g,%.6g,%.6g,%.1f\n", o.models[m],
                  qt_model_encoding_name(o.encodings[e]), o.iterations, (unsigned long long)o.seed,
                  sc.runs, sc.datasets, sc.mse, sc.rho, sc.naive_mse, sc0.mse, sc.same_mse,
                  seconds);
          fflush(csv);
        }
      }
      qt_surrogate_free(s);
      qt_surrogate_free(untrained);
    }
    qt_metadataset_free(train);
    qt_metadataset_free(only);
  }
  if (rc != 0) fprintf(stderr, "lomo: %s\n", qt_err_message(&err));
  if (csv) fclose(csv);
  for (size_t e = 0; e < 2; e++) qt_model_codec_free(codecs[e]);
  qt_metadataset_free(md);
  return rc == 0 ? 0 : 1;
}

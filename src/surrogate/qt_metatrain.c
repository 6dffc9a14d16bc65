/*
 * qt_metatrain.c - meta-training of the deep-kernel GP and the cost
 * predictor on a meta-dataset (specs §1.5, §1.6), and the validation score
 * that selects the parameters kept. qt_surrogate.h documents the procedure;
 * this file follows it in three parts: rows drawn from the meta-dataset
 * (sampler, batches), scoring on context/query pairs, and the training loop.
 */
#include "surrogate/qt_surrogate_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Streams forked off the seed, one per component (core/ RNG convention). */
enum {
  STREAM_INIT_DKL = 1,
  STREAM_INIT_COST = 2,
  STREAM_SPLIT = 3,
  STREAM_BATCHES = 4,
  STREAM_DROPOUT = 5,
  STREAM_VALIDATION = 6,
  STREAM_HELD_OUT = 7,
  STREAM_CALIBRATION = 8
};

/* Consecutive failed steps after which meta-training gives up. */
#define MAX_CONSECUTIVE_FAILURES 100

qt_metatrain_params qt_metatrain_default_params(void) {
  qt_metatrain_params p;
  memset(&p, 0, sizeof p);
  p.iterations = 10000;
  p.batch_size = 32;
  p.learning_rate = 1e-4;
  p.min_learning_rate = 1e-7;
  p.cosine = 1;
  p.cost_learning_rate = 1e-4;
  p.validation_every = 20;
  p.validation_batches = 50;
  p.validation_fraction = 0.25;
  p.seed = 0;
  p.progress_every = 500;
  return p;
}

/* ------------------------------------------------------------------------- */
/* Rows from the meta-dataset                                                 */
/* ------------------------------------------------------------------------- */

typedef struct sampler {
  const qt_metadataset_t *md;
  qt_dkl_config config;
  long fidelity_max; /* budget = epoch / fidelity_max */
  long max_budget;   /* budgets are drawn from 1 .. max_budget */
  double *encoded;   /* (runs, hp_dim) every run's configuration, encoded once */
  double *meta;      /* (datasets, meta_dim) scaled meta-features */
} sampler;

static void sampler_free(sampler *s) {
  free(s->encoded);
  free(s->meta);
  memset(s, 0, sizeof *s);
}

static int sampler_init(sampler *s, const qt_metadataset_t *md, const qt_dkl_config *config,
                        const qt_model_codec_t *codec, qt_err *err) {
  memset(s, 0, sizeof *s);
  s->md = md;
  s->config = *config;
  const qt_space_t *space = qt_metadataset_space(md);
  qt_space_fidelity(space, NULL, NULL, &s->fidelity_max);
  long max_epochs = qt_metadataset_max_epochs(md);
  s->max_budget = max_epochs > 1 ? max_epochs - 1 : 1;
  size_t runs = qt_metadataset_run_count(md), datasets = qt_metadataset_dataset_count(md);
  size_t hp = config->hp_dim, md_dim = config->meta_dim;
  s->encoded = malloc((runs ? runs : 1) * hp * sizeof *s->encoded);
  s->meta = malloc((datasets ? datasets : 1) * (md_dim ? md_dim : 1) * sizeof *s->meta);
  if (!s->encoded || !s->meta) {
    sampler_free(s);
    return qt_err_set(err, QT_ENOMEM, "meta-training: out of memory for %zu runs", runs);
  }
  for (size_t r = 0; r < runs; r++) {
    int rc = qt_model_codec_encode(codec, space, qt_metadataset_run(md, r)->config,
                                   s->encoded + r * hp, err);
    if (rc != 0) {
      sampler_free(s);
      return qt_err_prefix(err, rc, "meta-training: encoding run '%s'",
                           qt_metadataset_run(md, r)->id);
    }
  }
  for (size_t d = 0; d < datasets; d++) {
    const double *features = qt_metadataset_dataset(md, d)->features;
    for (size_t k = 0; k < md_dim; k++)
      s->meta[d * md_dim + k] = features[k] * QT_SURROGATE_META_SCALE;
  }
  return 0;
}

/* A batch of rows with its own storage. */
typedef struct batch {
  double *x;      /* (n, hp_dim) */
  double *budget; /* (n) */
  double *curve;  /* (n, curve_len) */
  double *meta;   /* (n, meta_dim) */
  double *y;      /* (n) */
  double *cost;   /* (n) */
  qt_rows rows;   /* views of the arrays above */
} batch;

static void batch_free(batch *b) {
  free(b->x); /* one block holds every array */
  memset(b, 0, sizeof *b);
}

static int batch_init(batch *b, const qt_dkl_config *c, size_t n) {
  memset(b, 0, sizeof *b);
  size_t per_row = c->hp_dim + 1 + c->curve_len + c->meta_dim + 2;
  b->x = calloc(n * per_row, sizeof *b->x);
  if (!b->x) return QT_ENOMEM;
  b->budget = b->x + n * c->hp_dim;
  b->curve = b->budget + n;
  b->meta = b->curve + n * c->curve_len;
  b->y = b->meta + n * c->meta_dim;
  b->cost = b->y + n;
  b->rows.n = n;
  b->rows.x = b->x;
  b->rows.budget = b->budget;
  b->rows.curve = b->curve;
  b->rows.meta = c->meta_dim ? b->meta : NULL;
  b->rows.y = b->y;
  b->rows.cost = b->cost;
  return 0;
}

/* Fills b with rows of one dataset (specs §1.5): a run uniform among its
 * runs, a budget uniform in 1 .. max_budget truncated to the run's length,
 * the scores before it as the curve, its score and seconds as targets. */
static void sample_batch(const sampler *s, size_t dataset, qt_rng_t *rng, batch *b) {
  const qt_dkl_config *c = &s->config;
  const qt_md_dataset *d = qt_metadataset_dataset(s->md, dataset);
  for (size_t i = 0; i < b->rows.n; i++) {
    size_t run_index = d->first_run + (size_t)qt_rng_uniform_int(rng, d->run_count);
    const qt_md_run *run = qt_metadataset_run(s->md, run_index);
    size_t epoch = 1 + (size_t)qt_rng_uniform_int(rng, (uint64_t)s->max_budget);
    if (epoch > run->epochs) epoch = run->epochs;
    memcpy(b->x + i * c->hp_dim, s->encoded + run_index * c->hp_dim, c->hp_dim * sizeof *b->x);
    b->budget[i] = (double)epoch / (double)s->fidelity_max;
    /* Epochs 1 .. epoch-1 at positions 0 .. epoch-2, zeros after; a longer
     * history than curve_len keeps its first curve_len epochs. */
    double *curve = b->curve + i * c->curve_len;
    size_t known = epoch - 1 < c->curve_len ? epoch - 1 : c->curve_len;
    for (size_t e = 0; e < c->curve_len; e++) curve[e] = e < known ? (double)run->score[e] : 0.0;
    if (c->meta_dim > 0)
      memcpy(b->meta + i * c->meta_dim, s->meta + dataset * c->meta_dim,
             c->meta_dim * sizeof *b->meta);
    b->y[i] = (double)run->score[epoch - 1];
    b->cost[i] = (double)run->cost[epoch - 1];
  }
}

/* ------------------------------------------------------------------------- */
/* Scoring on context/query pairs                                             */
/* ------------------------------------------------------------------------- */

typedef struct pair_set {
  size_t count;
  batch *context; /* (count) */
  batch *query;   /* (count) */
} pair_set;

static void pairs_free(pair_set *p) {
  for (size_t i = 0; i < p->count; i++) {
    batch_free(&p->context[i]);
    batch_free(&p->query[i]);
  }
  free(p->context);
  free(p->query);
  memset(p, 0, sizeof *p);
}

/* count pairs, each from one dataset drawn uniformly from datasets. */
static int pairs_draw(pair_set *p, const sampler *s, const size_t *datasets, size_t dataset_count,
                      size_t count, size_t batch_size, qt_rng_t *rng, qt_err *err) {
  memset(p, 0, sizeof *p);
  if (dataset_count == 0) return 0;
  p->context = calloc(count ? count : 1, sizeof *p->context);
  p->query = calloc(count ? count : 1, sizeof *p->query);
  if (!p->context || !p->query) {
    pairs_free(p);
    return qt_err_set(err, QT_ENOMEM, "meta-training: out of memory for validation batches");
  }
  for (size_t i = 0; i < count; i++) {
    size_t dataset = datasets[qt_rng_uniform_int(rng, dataset_count)];
    if (batch_init(&p->context[i], &s->config, batch_size) != 0 ||
        batch_init(&p->query[i], &s->config, batch_size) != 0) {
      p->count = i + 1;
      pairs_free(p);
      return qt_err_set(err, QT_ENOMEM, "meta-training: out of memory for validation batches");
    }
    p->count = i + 1;
    sample_batch(s, dataset, rng, &p->context[i]);
    sample_batch(s, dataset, rng, &p->query[i]);
  }
  return 0;
}

/* The mean over pairs of the query MSE of the GP conditioned on the context
 * (eval mode), and the cost predictor's RMSE in seconds over all queries.
 * A pair whose prediction fails numerically makes the score +inf. */
static int pairs_score(const pair_set *p, qt_dkl_t *dkl, qt_costnet_t *cost, double *mse,
                       double *cost_rmse, double *scratch, qt_err *err) {
  *mse = NAN;
  if (cost_rmse) *cost_rmse = NAN;
  if (p->count == 0) return 0;
  double sum = 0.0, cost_sq = 0.0;
  size_t cost_rows = 0;
  for (size_t i = 0; i < p->count; i++) {
    const qt_rows *query = &p->query[i].rows;
    int rc = qt_dkl_predict(dkl, &p->context[i].rows, query, scratch, NULL, err);
    if (rc == QT_ENUMERIC) {
      sum = INFINITY;
    } else if (rc != 0) {
      return rc;
    } else {
      double pair = 0.0;
      for (size_t t = 0; t < query->n; t++)
        pair += (scratch[t] - query->y[t]) * (scratch[t] - query->y[t]);
      sum += pair / (double)query->n;
    }
    if (cost && cost_rmse) {
      rc = qt_costnet_predict(cost, query, scratch, err);
      if (rc != 0) return rc;
      for (size_t t = 0; t < query->n; t++)
        cost_sq += (scratch[t] - query->cost[t]) * (scratch[t] - query->cost[t]);
      cost_rows += query->n;
    }
  }
  *mse = sum / (double)p->count;
  if (cost && cost_rmse && cost_rows > 0) *cost_rmse = sqrt(cost_sq / (double)cost_rows);
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Roles of the datasets                                                      */
/* ------------------------------------------------------------------------- */

typedef struct split {
  size_t *train, *validation, *held_out; /* dataset indices */
  size_t train_count, validation_count, held_out_count;
} split;

static void split_free(split *s) {
  free(s->train);
  free(s->validation);
  free(s->held_out);
  memset(s, 0, sizeof *s);
}

static int split_datasets(const qt_metadataset_t *md, const qt_metatrain_params *p, split *out,
                          qt_err *err) {
  memset(out, 0, sizeof *out);
  size_t n = qt_metadataset_dataset_count(md);
  qt_metatrain_role *roles = malloc((n ? n : 1) * sizeof *roles);
  size_t *order = malloc((n ? n : 1) * sizeof *order);
  out->train = malloc((n ? n : 1) * sizeof *out->train);
  out->validation = malloc((n ? n : 1) * sizeof *out->validation);
  out->held_out = malloc((n ? n : 1) * sizeof *out->held_out);
  int rc = 0;
  if (!roles || !order || !out->train || !out->validation || !out->held_out)
    rc = qt_err_set(err, QT_ENOMEM, "meta-training: out of memory");

  if (rc == 0 && p->roles) {
    for (size_t d = 0; d < n; d++) {
      if (p->roles[d] != QT_METATRAIN_TRAIN && p->roles[d] != QT_METATRAIN_VALIDATION &&
          p->roles[d] != QT_METATRAIN_HELD_OUT) {
        rc = qt_err_set(err, QT_EINVAL, "meta-training: dataset %zu has an unknown role %d", d,
                        (int)p->roles[d]);
        break;
      }
      roles[d] = p->roles[d];
    }
  } else if (rc == 0) {
    for (size_t d = 0; d < n; d++) roles[d] = QT_METATRAIN_TRAIN;
    for (size_t e = 0; e < p->exclude_count && rc == 0; e++) {
      size_t d;
      if (!p->exclude[e] || qt_metadataset_find_dataset(md, p->exclude[e], &d) != 0) {
        rc = qt_err_set(err, QT_EINVAL,
                        "meta-training: excluded dataset '%s' is not in meta-dataset '%s'",
                        p->exclude[e] ? p->exclude[e] : "(null)", qt_metadataset_name(md));
      } else {
        roles[d] = QT_METATRAIN_HELD_OUT;
      }
    }
    /* A shuffled share of the remaining datasets with runs validates. */
    size_t remaining = 0;
    for (size_t d = 0; rc == 0 && d < n; d++) {
      if (roles[d] == QT_METATRAIN_TRAIN && qt_metadataset_dataset(md, d)->run_count > 0)
        order[remaining++] = d;
    }
    qt_rng_t *root = NULL, *rng = NULL;
    if (rc == 0) rc = qt_rng_init(&root, p->seed, err);
    if (rc == 0) rc = qt_rng_fork(root, STREAM_SPLIT, &rng, err);
    for (size_t i = remaining; rc == 0 && i > 1; i--) { /* Fisher-Yates */
      size_t j = (size_t)qt_rng_uniform_int(rng, i);
      size_t t = order[i - 1];
      order[i - 1] = order[j];
      order[j] = t;
    }
    size_t n_val = 0;
    if (remaining >= 2 && p->validation_fraction > 0.0) {
      n_val = (size_t)floor(p->validation_fraction * (double)remaining + 0.5);
      if (n_val < 1) n_val = 1;
      if (n_val > remaining - 1) n_val = remaining - 1;
    }
    for (size_t i = 0; rc == 0 && i < n_val; i++) roles[order[i]] = QT_METATRAIN_VALIDATION;
    qt_rng_free(rng);
    qt_rng_free(root);
  }

  /* Datasets without runs can give no rows: they take no part. */
  for (size_t d = 0; rc == 0 && d < n; d++) {
    if (qt_metadataset_dataset(md, d)->run_count == 0) continue;
    if (roles[d] == QT_METATRAIN_TRAIN) out->train[out->train_count++] = d;
    if (roles[d] == QT_METATRAIN_VALIDATION) out->validation[out->validation_count++] = d;
    if (roles[d] == QT_METATRAIN_HELD_OUT) out->held_out[out->held_out_count++] = d;
  }
  if (rc == 0 && out->train_count == 0) {
    rc = qt_err_set(err, QT_EINVAL,
                    "meta-training: no training dataset with runs is left in '%s' (%zu datasets, "
                    "%zu held out, %zu validating)",
                    qt_metadataset_name(md), n, out->held_out_count, out->validation_count);
  }
  free(roles);
  free(order);
  if (rc != 0) split_free(out);
  return rc;
}

/* Dataset names of an index list, for the surrogate's provenance. */
static const char **dataset_names(const qt_metadataset_t *md, const size_t *indices, size_t count) {
  const char **names = malloc((count ? count : 1) * sizeof *names);
  if (!names) return NULL;
  for (size_t i = 0; i < count; i++) names[i] = qt_metadataset_dataset(md, indices[i])->name;
  return names;
}

/* ------------------------------------------------------------------------- */
/* Parameters and configuration                                               */
/* ------------------------------------------------------------------------- */

static int check_params(const qt_metadataset_t *md, const qt_metatrain_params *p,
                        qt_dkl_config *config, qt_err *err) {
  if (!(p->iterations >= 0) || p->batch_size < 2 || !(p->learning_rate > 0.0) ||
      !(p->min_learning_rate >= 0.0) || p->min_learning_rate > p->learning_rate ||
      !(p->cost_learning_rate > 0.0) || p->validation_every < 1 ||
      !(p->validation_fraction >= 0.0 && p->validation_fraction < 1.0) ||
      (p->progress && p->progress_every < 1)) {
    return qt_err_set(err, QT_EINVAL,
                      "meta-training: bad params (iterations %ld >= 0, batch size %zu >= 2, "
                      "learning rates %g >= %g >= 0 and %g > 0, validation every %ld >= 1, "
                      "validation fraction %g in [0, 1))",
                      p->iterations, p->batch_size, p->learning_rate, p->min_learning_rate,
                      p->cost_learning_rate, p->validation_every, p->validation_fraction);
  }
  const qt_space_t *space = qt_metadataset_space(md);
  size_t features = qt_metadataset_feature_count(md);
  qt_model_encoding mode = qt_model_codec_mode(p->codec);
  int rc = qt_model_encoding_check_space(mode, space, err);
  if (rc != 0) return qt_err_prefix(err, rc, "meta-training");
  *config = p->config ? *p->config : qt_model_codec_dkl_config(p->codec, space, features);
  if (config->hp_dim != qt_model_encoded_dim(mode, space) || config->meta_dim != features) {
    return qt_err_set(err, QT_EINVAL,
                      "meta-training: the config takes %zu encoded columns and %zu meta-features, "
                      "the meta-dataset has %zu (%s encoding) and %zu",
                      config->hp_dim, config->meta_dim, qt_model_encoded_dim(mode, space),
                      qt_model_encoding_name(mode), features);
  }
  return qt__dkl_config_check(config, "meta-training", err);
}

/* ------------------------------------------------------------------------- */
/* Evaluation on given datasets                                               */
/* ------------------------------------------------------------------------- */

/* Draws the pairs of stream `stream` on datasets and scores the models. */
static int evaluate_on(const sampler *s, const size_t *datasets, size_t count,
                       const qt_metatrain_params *p, uint64_t stream, qt_dkl_t *dkl,
                       qt_costnet_t *cost, double *mse, double *cost_rmse, qt_err *err) {
  *mse = NAN;
  if (cost_rmse) *cost_rmse = NAN;
  if (count == 0) return 0;
  qt_rng_t *root = NULL, *rng = NULL;
  pair_set pairs = {0};
  double *scratch = malloc(p->batch_size * sizeof *scratch);
  int rc = scratch ? 0 : qt_err_set(err, QT_ENOMEM, "meta-training: out of memory");
  if (rc == 0) rc = qt_rng_init(&root, p->seed, err);
  if (rc == 0) rc = qt_rng_fork(root, stream, &rng, err);
  if (rc == 0)
    rc = pairs_draw(&pairs, s, datasets, count, p->validation_batches, p->batch_size, rng, err);
  if (rc == 0) rc = pairs_score(&pairs, dkl, cost, mse, cost_rmse, scratch, err);
  pairs_free(&pairs);
  qt_rng_free(rng);
  qt_rng_free(root);
  free(scratch);
  return rc;
}

int qt_metatrain_evaluate(const qt_metadataset_t *md, const size_t *datasets, size_t count,
                          qt_dkl_t *dkl, qt_costnet_t *cost, const qt_metatrain_params *params,
                          double *mse, double *cost_rmse, qt_err *err) {
  if (!md || !dkl || !params || !mse || (count > 0 && !datasets))
    return qt_err_set(err, QT_EINVAL, "qt_metatrain_evaluate: NULL argument");
  qt_dkl_config config;
  qt_metatrain_params p = *params;
  p.config = qt_dkl_get_config(dkl);
  int rc = check_params(md, &p, &config, err);
  if (rc != 0) return rc;
  for (size_t i = 0; i < count; i++) {
    if (datasets[i] >= qt_metadataset_dataset_count(md) ||
        qt_metadataset_dataset(md, datasets[i])->run_count == 0) {
      return qt_err_set(err, QT_EINVAL,
                        "qt_metatrain_evaluate: dataset %zu does not exist or "
                        "has no runs",
                        datasets[i]);
    }
  }
  sampler s;
  rc = sampler_init(&s, md, &config, p.codec, err);
  if (rc != 0) return rc;
  rc = evaluate_on(&s, datasets, count, &p, STREAM_HELD_OUT, dkl, cost, mse, cost_rmse, err);
  sampler_free(&s);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* The training loop                                                          */
/* ------------------------------------------------------------------------- */

/* torch's CosineAnnealingLR at step t of T. */
static double cosine_rate(const qt_metatrain_params *p, long t) {
  if (!p->cosine || p->iterations == 0) return p->learning_rate;
  double phase = M_PI * (double)t / (double)p->iterations;
  return p->min_learning_rate +
         (p->learning_rate - p->min_learning_rate) * 0.5 * (1.0 + cos(phase));
}

/* Everything one meta-training run holds, freed in one place. */
typedef struct run_state {
  sampler s;
  split roles;
  pair_set validation;
  batch train;
  qt_rng_t *root, *init_dkl, *init_cost, *batches, *dropout;
  qt_dkl_t *dkl;
  qt_costnet_t *cost;
  double *best;      /* (dkl params) the parameters with the best validation score */
  double *untrained; /* (dkl params) the initial parameters */
  double *scratch;   /* (batch_size) predictions */
  const char **train_names, **validation_names, **held_out_names;
} run_state;

static void run_free(run_state *r) {
  sampler_free(&r->s);
  split_free(&r->roles);
  pairs_free(&r->validation);
  batch_free(&r->train);
  qt_rng_free(r->root);
  qt_rng_free(r->init_dkl);
  qt_rng_free(r->init_cost);
  qt_rng_free(r->batches);
  qt_rng_free(r->dropout);
  qt_dkl_free(r->dkl);
  qt_costnet_free(r->cost);
  free(r->best);
  free(r->untrained);
  free(r->scratch);
  free(r->train_names);
  free(r->validation_names);
  free(r->held_out_names);
}

static int run_setup(run_state *r, const qt_metadataset_t *md, const qt_metatrain_params *p,
                     const qt_dkl_config *config, qt_err *err) {
  int rc = split_datasets(md, p, &r->roles, err);
  if (rc == 0) rc = sampler_init(&r->s, md, config, p->codec, err);
  if (rc == 0) rc = qt_rng_init(&r->root, p->seed, err);
  if (rc == 0) rc = qt_rng_fork(r->root, STREAM_INIT_DKL, &r->init_dkl, err);
  if (rc == 0) rc = qt_rng_fork(r->root, STREAM_INIT_COST, &r->init_cost, err);
  if (rc == 0) rc = qt_rng_fork(r->root, STREAM_BATCHES, &r->batches, err);
  if (rc == 0) rc = qt_rng_fork(r->root, STREAM_DROPOUT, &r->dropout, err);
  if (rc == 0) rc = qt_dkl_init(&r->dkl, config, r->init_dkl, err);
  if (rc == 0) rc = qt_costnet_init(&r->cost, config, r->init_cost, err);
  if (rc != 0) return rc;
  size_t count = qt_dkl_param_count(r->dkl);
  r->best = malloc(count * sizeof *r->best);
  r->untrained = malloc(count * sizeof *r->untrained);
  r->scratch = malloc(p->batch_size * sizeof *r->scratch);
  r->train_names = dataset_names(md, r->roles.train, r->roles.train_count);
  r->validation_names = dataset_names(md, r->roles.validation, r->roles.validation_count);
  r->held_out_names = dataset_names(md, r->roles.held_out, r->roles.held_out_count);
  if (!r->best || !r->untrained || !r->scratch || !r->train_names || !r->validation_names ||
      !r->held_out_names || batch_init(&r->train, config, p->batch_size) != 0)
    return qt_err_set(err, QT_ENOMEM, "meta-training: out of memory");
  qt_dkl_get_params(r->dkl, r->untrained);
  memcpy(r->best, r->untrained, count * sizeof *r->best);
  /* The validation pairs are drawn once (Quick-Tune resets its validation
   * stream before every validation: the same pairs each time). */
  qt_rng_t *rng = NULL;
  rc = qt_rng_fork(r->root, STREAM_VALIDATION, &rng, err);
  if (rc == 0)
    rc = pairs_draw(&r->validation, &r->s, r->roles.validation, r->roles.validation_count,
                    p->validation_batches, p->batch_size, rng, err);
  qt_rng_free(rng);
  return rc;
}

int qt_metatrain(const qt_metadataset_t *md, const qt_metatrain_params *params,
                 qt_surrogate_t **out, qt_metatrain_report *report, qt_err *err) {
  if (!md || !out) return qt_err_set(err, QT_EINVAL, "qt_metatrain: NULL argument");
  *out = NULL;
  qt_metatrain_params defaults = qt_metatrain_default_params();
  const qt_metatrain_params *p = params ? params : &defaults;
  qt_dkl_config config;
  int rc = check_params(md, p, &config, err);
  if (rc != 0) return rc;

  double start = qt_time_now();
  run_state r;
  memset(&r, 0, sizeof r);
  qt_metatrain_report rep;
  memset(&rep, 0, sizeof rep);
  rc = run_setup(&r, md, p, &config, err);
  if (rc != 0) {
    run_free(&r);
    return rc;
  }
  rep.train_datasets = r.roles.train_count;
  rep.validation_datasets = r.roles.validation_count;
  rep.held_out_datasets = r.roles.held_out_count;

  /* The cost predictor starts from a calibrated output (see
   * qt_costnet_calibrate), on a batch of its own stream, before the
   * untrained scores, which describe the starting point of training. */
  qt_rng_t *calibration = NULL;
  if (rc == 0) rc = qt_rng_fork(r.root, STREAM_CALIBRATION, &calibration, err);
  if (rc == 0) {
    size_t dataset = r.roles.train[qt_rng_uniform_int(calibration, r.roles.train_count)];
    sample_batch(&r.s, dataset, calibration, &r.train);
    rc = qt_costnet_calibrate(r.cost, &r.train.rows, err);
  }
  qt_rng_free(calibration);

  /* The untrained scores: the baseline every trained number is read against. */
  if (rc == 0)
    rc = pairs_score(&r.validation, r.dkl, r.cost, &rep.untrained_validation_mse,
                     &rep.untrained_cost_rmse_seconds, r.scratch, err);
  if (rc == 0)
    rc = evaluate_on(&r.s, r.roles.held_out, r.roles.held_out_count, p, STREAM_HELD_OUT, r.dkl,
                     NULL, &rep.untrained_held_out_mse, NULL, err);

  double best_mse = INFINITY, latest_mse = NAN;
  double window_loss = 0.0, window_cost = 0.0, lr = p->learning_rate;
  long window_steps = 0, window_cost_steps = 0, consecutive_failures = 0;
  rep.final_train_loss = NAN;
  rep.best_iteration = 0;
  for (long it = 0; rc == 0 && it < p->iterations; it++) {
    lr = cosine_rate(p, it);
    size_t dataset = r.roles.train[qt_rng_uniform_int(r.batches, r.roles.train_count)];
    sample_batch(&r.s, dataset, r.batches, &r.train);

    double loss = NAN, cost_loss = NAN;
    qt_err step_err;
    int step = qt__dkl_train_step(r.dkl, &r.train.rows, lr, r.dropout, &loss, &step_err);
    if (step == QT_ENOMEM) {
      rc = qt_err_set(err, step, "%s", qt_err_message(&step_err));
      break;
    }
    if (step != 0) {
      rep.failed_steps++;
      if (++consecutive_failures >= MAX_CONSECUTIVE_FAILURES) {
        rc = qt_err_set(err, QT_ENUMERIC,
                        "meta-training: %d steps in a row failed at iteration %ld; the last: %s",
                        MAX_CONSECUTIVE_FAILURES, it + 1, qt_err_message(&step_err));
        break;
      }
      QT_LOG_DEBUG("meta-training: iteration %ld skipped: %s", it + 1, qt_err_message(&step_err));
    } else {
      consecutive_failures = 0;
      window_loss += loss;
      window_steps++;
    }
    if (qt__costnet_train_step(r.cost, &r.train.rows, p->cost_learning_rate, r.dropout, &cost_loss,
                               &step_err) == 0) {
      window_cost += cost_loss;
      window_cost_steps++;
    }

    long done = it + 1;
    if (r.validation.count > 0 && (done % p->validation_every == 0 || done == p->iterations)) {
      rc = pairs_score(&r.validation, r.dkl, NULL, &latest_mse, NULL, r.scratch, err);
      if (rc == 0 && latest_mse < best_mse) {
        best_mse = latest_mse;
        rep.best_iteration = done;
        qt_dkl_get_params(r.dkl, r.best);
      }
    }
    if (window_steps > 0) rep.final_train_loss = window_loss / (double)window_steps;
    if (p->progress && (done % p->progress_every == 0 || done == p->iterations)) {
      qt_metatrain_progress progress;
      progress.iteration = done;
      progress.iterations = p->iterations;
      progress.learning_rate = lr;
      progress.train_loss = window_steps ? window_loss / (double)window_steps : NAN;
      progress.cost_loss = window_cost_steps ? window_cost / (double)window_cost_steps : NAN;
      progress.validation_mse = latest_mse;
      progress.best_validation_mse = isfinite(best_mse) ? best_mse : NAN;
      progress.seconds = qt_time_now() - start;
      p->progress(&progress, p->user);
      window_loss = window_cost = 0.0;
      window_steps = window_cost_steps = 0;
    }
  }
  rep.iterations = p->iterations;

  /* Keep the best validated parameters; without validation, the last. */
  if (rc == 0 && r.validation.count > 0 && rep.best_iteration > 0) {
    rc = qt_dkl_set_params(r.dkl, r.best, err);
  } else if (rc == 0) {
    rep.best_iteration = p->iterations;
  }
  if (rc == 0) {
    rc = pairs_score(&r.validation, r.dkl, r.cost, &rep.validation_mse, &rep.cost_rmse_seconds,
                     r.scratch, err);
  }
  if (rc == 0) {
    rc = evaluate_on(&r.s, r.roles.held_out, r.roles.held_out_count, p, STREAM_HELD_OUT, r.dkl,
                     NULL, &rep.held_out_mse, NULL, err);
  }

  if (rc == 0) {
    qt_surrogate_info info;
    memset(&info, 0, sizeof info);
    info.meta_feature_count = qt_metadataset_feature_count(md);
    const char **features =
        malloc((info.meta_feature_count ? info.meta_feature_count : 1) * sizeof *features);
    if (!features) {
      rc = qt_err_set(err, QT_ENOMEM, "meta-training: out of memory");
    } else {
      for (size_t k = 0; k < info.meta_feature_count; k++)
        features[k] = qt_metadataset_feature_name(md, k);
      info.meta_features = features;
      info.meta_dataset = qt_metadataset_name(md);
      info.train_count = r.roles.train_count;
      info.train_datasets = r.train_names;
      info.validation_count = r.roles.validation_count;
      info.validation_datasets = r.validation_names;
      info.excluded_count = r.roles.held_out_count;
      info.excluded_datasets = r.held_out_names;
      info.iterations = p->iterations;
      info.best_iteration = rep.best_iteration;
      info.validation_mse = rep.validation_mse;
      info.untrained_validation_mse = rep.untrained_validation_mse;
      info.seed = p->seed;
      rc = qt_surrogate_create_encoded(qt_metadataset_space(md), p->codec, r.dkl, r.cost, &info,
                                       out, err);
      free(features);
    }
  }
  rep.seconds = qt_time_now() - start;
  if (report) *report = rep;
  run_free(&r);
  return rc;
}

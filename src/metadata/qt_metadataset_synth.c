/*
 * qt_metadataset_synth.c - synthetic meta-datasets for tests and benchmarks.
 *
 * The curves are not meant to teach a surrogate anything true; they are
 * meant to look like real ones to the code that stores, loads and replays
 * them: scores that rise and saturate with noise, per-epoch costs that
 * scatter around a per-run base, losses that fall, runs of different
 * lengths, and some runs without losses. Everything is drawn from streams
 * forked off one seed, so the same parameters give the same meta-dataset.
 */
#include "metadata/qt_metadataset_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

qt_metadataset_synth_params qt_metadataset_synth_default_params(void) {
  qt_metadataset_synth_params params;
  memset(&params, 0, sizeof params);
  params.n_datasets = 4;
  params.runs_per_dataset = 16;
  params.min_epochs = 1;
  params.max_epochs = 10;
  params.with_losses = 1;
  params.seed = 0;
  return params;
}

/* Stream labels for qt_rng_fork, one per component. */
enum { STREAM_FEATURES = 1, STREAM_CONFIGS = 2, STREAM_CURVES = 3 };

static float clamp01(double x) {
  return (float)(x < 0.0 ? 0.0 : x > 1.0 ? 1.0 : x);
}

/* Fills one run's curves (epochs values each). */
static void draw_curves(qt_rng_t *rng, size_t epochs, float *score, float *cost, float *train_loss,
                        float *val_loss) {
  double asymptote = 0.3 + 0.65 * qt_rng_uniform(rng);
  double start = asymptote * 0.3 * qt_rng_uniform(rng);
  double rate = 0.05 + 0.45 * qt_rng_uniform(rng);
  double base_cost = 2.0 + 120.0 * qt_rng_uniform(rng);
  double overfit = 0.02 * qt_rng_uniform(rng);
  for (size_t e = 0; e < epochs; e++) {
    double t = (double)(e + 1);
    double progress = 1.0 - exp(-rate * t);
    score[e] = clamp01(start + (asymptote - start) * progress + qt_rng_gaussian(rng, 0.01));
    double seconds = base_cost * (1.0 + qt_rng_gaussian(rng, 0.05));
    cost[e] = (float)(seconds > 0.0 ? seconds : 0.0);
    double train = 0.1 + 2.5 * exp(-rate * t);
    train_loss[e] = (float)train;
    val_loss[e] = (float)(train + 0.05 + overfit * t + fabs(qt_rng_gaussian(rng, 0.02)));
  }
}

int qt_metadataset_synthesize(const char *space_path, const qt_metadataset_synth_params *params,
                              qt_metadataset_t **out, qt_err *err) {
  if (!space_path || !params || !out)
    return qt_err_set(err, QT_EINVAL, "qt_metadataset_synthesize: NULL argument");
  *out = NULL;
  if (params->n_datasets == 0 || params->runs_per_dataset == 0 || params->min_epochs < 1 ||
      params->max_epochs < params->min_epochs)
    return qt_err_set(err, QT_EINVAL,
                      "synthetic meta-dataset: need n_datasets, runs_per_dataset >= 1 and "
                      "1 <= min_epochs <= max_epochs (got %zu, %zu, %zu, %zu)",
                      params->n_datasets, params->runs_per_dataset, params->min_epochs,
                      params->max_epochs);

  static const char *const features[] = {"n_samples", "n_classes", "image_size", "channels"};
  char provenance[256];
  snprintf(provenance, sizeof provenance,
           "synthetic (qt_metadataset_synthesize: %zu datasets x %zu runs, %zu..%zu epochs, "
           "seed %llu)",
           params->n_datasets, params->runs_per_dataset, params->min_epochs, params->max_epochs,
           (unsigned long long)params->seed);
  qt_metadataset_params md_params = qt_metadataset_default_params();
  md_params.name = "synthetic";
  md_params.metric = "score";
  md_params.max_epochs = (long)params->max_epochs;
  md_params.provenance = provenance;
  md_params.feature_count = 4;
  md_params.feature_names = features;

  qt_metadataset_t *md = NULL;
  qt_rng_t *root = NULL, *feature_rng = NULL, *config_rng = NULL, *curve_rng = NULL;
  qt_config config = {0};
  float *curves = NULL;
  int rc = qt_metadataset_create(space_path, &md_params, &md, err);
  if (rc == 0) rc = qt_rng_init(&root, params->seed, err);
  if (rc == 0) rc = qt_rng_fork(root, STREAM_FEATURES, &feature_rng, err);
  if (rc == 0) rc = qt_rng_fork(root, STREAM_CONFIGS, &config_rng, err);
  if (rc == 0) rc = qt_rng_fork(root, STREAM_CURVES, &curve_rng, err);
  if (rc == 0) rc = qt_config_init(&config, qt_metadataset_space(md), err);
  /* One scratch block for the four curves of a run: (4, max_epochs). */
  if (rc == 0 && !(curves = malloc(4 * params->max_epochs * sizeof *curves)))
    rc = qt_err_set(err, QT_ENOMEM, "out of memory");
  size_t total_runs = params->n_datasets * params->runs_per_dataset;
  if (rc == 0)
    rc = qt__metadataset_reserve(md, params->n_datasets, total_runs,
                                 total_runs * (params->min_epochs + params->max_epochs) / 2 + 1,
                                 err);

  for (size_t d = 0; rc == 0 && d < params->n_datasets; d++) {
    char name[64];
    snprintf(name, sizeof name, "synth-%03zu", d);
    double values[4] = {
        floor(500.0 * exp(5.0 * qt_rng_uniform(feature_rng))), /* 500 .. ~74,000 images */
        (double)(2 + qt_rng_uniform_int(feature_rng, 199)),    /* 2 .. 200 classes */
        qt_rng_uniform(feature_rng) < 0.5 ? 128.0 : 224.0,
        qt_rng_uniform(feature_rng) < 0.9 ? 3.0 : 1.0};
    size_t dataset;
    rc = qt_metadataset_add_dataset(md, name, values, &dataset, err);
    for (size_t r = 0; rc == 0 && r < params->runs_per_dataset; r++) {
      char id[96];
      snprintf(id, sizeof id, "%s-%06zu", name, r);
      rc = qt_space_sample(qt_metadataset_space(md), config_rng, &config, err);
      if (rc < 0) break;
      size_t span = params->max_epochs - params->min_epochs + 1;
      size_t epochs = params->min_epochs + (size_t)qt_rng_uniform_int(curve_rng, span);
      float *score = curves, *cost = curves + params->max_epochs;
      float *train = curves + 2 * params->max_epochs, *val = curves + 3 * params->max_epochs;
      draw_curves(curve_rng, epochs, score, cost, train, val);
      /* Every third run records no losses, as collectors that do not log
       * them produce. */
      int losses = params->with_losses && r % 3 != 2;
      qt_md_run run = {
          id, dataset, &config, epochs, score, cost, losses ? train : NULL, losses ? val : NULL};
      rc = qt_metadataset_add_run(md, &run, err);
    }
  }
  free(curves);
  qt_config_free(&config);
  qt_rng_free(curve_rng);
  qt_rng_free(config_rng);
  qt_rng_free(feature_rng);
  qt_rng_free(root);
  if (rc < 0) {
    qt_metadataset_free(md);
    return rc;
  }
  *out = md;
  return 0;
}

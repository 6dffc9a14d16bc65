/*
 * test_surrogate_metatrain.c - meta-training and surrogate files
 * (surrogate/qt_metatrain.c, qt_surrogate_file.c).
 *
 * The acceptance check of issue 4: on a synthetic meta-dataset, a surrogate
 * meta-trained on some datasets predicts the next-epoch scores of datasets
 * it never saw better (lower MSE) than the same network untrained. Then the
 * file: a round trip keeps every number, loading it for another space or
 * from a truncated or damaged file is a clear error.
 */
#include "surrogate/qt_surrogate.h"
#include "qt_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define QUICKTUNE_SPACE "configs/spaces/quicktune-v1.yaml"

/* One meta-trained surrogate shared by the tests (they run in order). */
static qt_metadataset_t *md;
static qt_surrogate_t *trained;
static qt_metatrain_report trained_report;
static char tmp_dir[] = "/tmp/qt-test-metatrain-XXXXXX";

static const char *const held_out[] = {"synth-006", "synth-007"};

/* A small meta-dataset: 8 datasets of 24 runs, curves of 3 to 20 epochs. */
static void make_metadataset(void) {
  if (md) return;
  qt_metadataset_synth_params sp = qt_metadataset_synth_default_params();
  sp.n_datasets = 8;
  sp.runs_per_dataset = 24;
  sp.min_epochs = 3;
  sp.max_epochs = 20;
  sp.seed = 1;
  qt_err err;
  int rc = qt_metadataset_synthesize(QUICKTUNE_SPACE, &sp, &md, &err);
  if (rc != 0) fprintf(stderr, "%s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
}

/* The short schedule of the tests: 500 iterations (Quick-Tune: 10000) at a
 * ten times larger learning rate, validated every 40 on 20 pairs. Seeds 0
 * to 5 all give a held-out MSE between 0.50 and 0.75 of the untrained one. */
static qt_metatrain_params test_params(void) {
  qt_metatrain_params p = qt_metatrain_default_params();
  p.iterations = 500;
  p.learning_rate = 1e-3;
  p.cost_learning_rate = 1e-3;
  p.validation_every = 40;
  p.validation_batches = 20;
  p.seed = 0;
  p.exclude = held_out;
  p.exclude_count = 2;
  return p;
}

static size_t progress_calls;
static void count_progress(const qt_metatrain_progress *progress, void *user) {
  (void)user;
  progress_calls++;
  CU_ASSERT(progress->iteration % 100 == 0);
  CU_ASSERT(isfinite(progress->train_loss));
}

/* ------------------------------------------------------------------------- */
/* Meta-training                                                              */
/* ------------------------------------------------------------------------- */

static void test_metatrain_beats_untrained(void) {
  make_metadataset();
  qt_metatrain_params p = test_params();
  p.progress = count_progress;
  p.progress_every = 100;
  qt_err err;
  double start = qt_time_now();
  int rc = qt_metatrain(md, &p, &trained, &trained_report, &err);
  if (rc != 0) fprintf(stderr, "%s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  const qt_metatrain_report *r = &trained_report;
  printf(
      "\n  %ld iterations in %.2fs; datasets: %zu train, %zu validation, %zu held out"
      "\n  validation MSE: untrained %.5f, meta-trained %.5f (iteration %ld)"
      "\n  held-out MSE:   untrained %.5f, meta-trained %.5f"
      "\n  cost RMSE:      untrained %.1fs, meta-trained %.1fs\n",
      r->iterations, qt_time_now() - start, r->train_datasets, r->validation_datasets,
      r->held_out_datasets, r->untrained_validation_mse, r->validation_mse, r->best_iteration,
      r->untrained_held_out_mse, r->held_out_mse, r->untrained_cost_rmse_seconds,
      r->cost_rmse_seconds);
  CU_ASSERT_EQUAL(progress_calls, 5);
  CU_ASSERT_EQUAL(r->held_out_datasets, 2);
  CU_ASSERT_EQUAL(r->validation_datasets, 2); /* 0.25 of the 6 others, rounded */
  CU_ASSERT_EQUAL(r->train_datasets, 4);
  CU_ASSERT_EQUAL(r->failed_steps, 0);
  /* The acceptance: better on datasets never seen in training. */
  CU_ASSERT(r->held_out_mse < 0.8 * r->untrained_held_out_mse);
  CU_ASSERT(r->validation_mse < r->untrained_validation_mse);
  /* The synthetic costs scatter around a random per-run base that nothing
   * in a row reveals: there is nothing to learn, only a sane scale to keep. */
  CU_ASSERT(r->cost_rmse_seconds < 2.0 * r->untrained_cost_rmse_seconds);

  /* The provenance names the roles; held-out datasets are never trained on. */
  const qt_surrogate_info *info = qt_surrogate_get_info(trained);
  CU_ASSERT_STRING_EQUAL(info->space_name, "quicktune-v1");
  CU_ASSERT_STRING_EQUAL(info->meta_dataset, "synthetic");
  CU_ASSERT_EQUAL(info->excluded_count, 2);
  CU_ASSERT_STRING_EQUAL(info->excluded_datasets[0], "synth-006");
  for (size_t i = 0; i < info->train_count; i++) {
    CU_ASSERT(strcmp(info->train_datasets[i], "synth-006") != 0);
    CU_ASSERT(strcmp(info->train_datasets[i], "synth-007") != 0);
  }
  CU_ASSERT_EQUAL(info->meta_feature_count, 4);
  CU_ASSERT_STRING_EQUAL(info->meta_features[0], "n_samples");
  CU_ASSERT_EQUAL(info->iterations, 500);
  CU_ASSERT_EQUAL(info->seed, 0);
  QT_ASSERT_CLOSE(info->validation_mse, r->validation_mse, 0.0);
  CU_ASSERT_EQUAL(info->fidelity_max, 50);

  /* The model block is the model one-hot of the space. */
  const qt_dkl_config *config = qt_surrogate_config(trained);
  CU_ASSERT_EQUAL(config->model_end - config->model_begin, 24);
  CU_ASSERT_EQUAL(config->meta_dim, 4);

  /* The public evaluation gives the report's held-out number with the kept
   * parameters, from a model rebuilt from the surrogate. */
  qt_dkl_t *dkl = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_surrogate_make_dkl(trained, &dkl, NULL), 0);
  size_t datasets[2];
  CU_ASSERT_EQUAL(qt_metadataset_find_dataset(md, "synth-006", &datasets[0]), 0);
  CU_ASSERT_EQUAL(qt_metadataset_find_dataset(md, "synth-007", &datasets[1]), 0);
  double mse = NAN;
  CU_ASSERT_EQUAL(qt_metatrain_evaluate(md, datasets, 2, dkl, NULL, &p, &mse, NULL, NULL), 0);
  QT_ASSERT_CLOSE(mse, r->held_out_mse, 1e-15);
  qt_dkl_free(dkl);
}

/* Same seed, same surrogate; explicit roles replace the exclude list. */
static void test_metatrain_deterministic_and_roles(void) {
  make_metadataset();
  qt_metatrain_params p = test_params();
  p.iterations = 30;
  p.validation_every = 10;
  p.validation_batches = 4;
  qt_surrogate_t *a = NULL, *b = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_metatrain(md, &p, &a, NULL, NULL), 0);
  CU_ASSERT_EQUAL_FATAL(qt_metatrain(md, &p, &b, NULL, NULL), 0);
  size_t na, nb;
  const double *pa = qt_surrogate_dkl_params(a, &na), *pb = qt_surrogate_dkl_params(b, &nb);
  CU_ASSERT_EQUAL(na, nb);
  CU_ASSERT_EQUAL(memcmp(pa, pb, na * sizeof *pa), 0);
  qt_surrogate_free(a);
  qt_surrogate_free(b);

  qt_metatrain_role roles[8] = {
      QT_METATRAIN_TRAIN,    QT_METATRAIN_TRAIN,    QT_METATRAIN_TRAIN,    QT_METATRAIN_VALIDATION,
      QT_METATRAIN_HELD_OUT, QT_METATRAIN_HELD_OUT, QT_METATRAIN_HELD_OUT, QT_METATRAIN_TRAIN};
  p.roles = roles;
  qt_metatrain_report report;
  CU_ASSERT_EQUAL_FATAL(qt_metatrain(md, &p, &a, &report, NULL), 0);
  CU_ASSERT_EQUAL(report.train_datasets, 4);
  CU_ASSERT_EQUAL(report.validation_datasets, 1);
  CU_ASSERT_EQUAL(report.held_out_datasets, 3);
  const qt_surrogate_info *info = qt_surrogate_get_info(a);
  CU_ASSERT_STRING_EQUAL(info->validation_datasets[0], "synth-003");
  CU_ASSERT_STRING_EQUAL(info->train_datasets[3], "synth-007");
  qt_surrogate_free(a);

  /* Bad requests are named. */
  qt_err err;
  const char *unknown[] = {"no-such-dataset"};
  p = test_params();
  p.exclude = unknown;
  p.exclude_count = 1;
  CU_ASSERT_EQUAL(qt_metatrain(md, &p, &a, NULL, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "'no-such-dataset'"));
  for (size_t i = 0; i < 8; i++) roles[i] = QT_METATRAIN_HELD_OUT;
  p = test_params();
  p.roles = roles;
  CU_ASSERT_EQUAL(qt_metatrain(md, &p, &a, NULL, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "no training dataset"));
  p = test_params();
  p.batch_size = 1;
  CU_ASSERT_EQUAL(qt_metatrain(md, &p, &a, NULL, &err), QT_EINVAL);
  CU_ASSERT_PTR_NULL(a);
}

/* ------------------------------------------------------------------------- */
/* Files                                                                      */
/* ------------------------------------------------------------------------- */

static void path_in_tmp(char *buf, size_t size, const char *name) {
  static int made;
  if (!made) {
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(tmp_dir));
    made = 1;
  }
  snprintf(buf, size, "%s/%s", tmp_dir, name);
}

static void test_file_round_trip(void) {
  CU_ASSERT_PTR_NOT_NULL_FATAL(trained);
  char path[512];
  path_in_tmp(path, sizeof path, "surrogate.qts");
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_surrogate_save(trained, path, &err), 0);
  /* No temporary file is left beside it. */
  char tmp[600];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  CU_ASSERT_NOT_EQUAL(access(tmp, F_OK), 0);

  qt_surrogate_t *loaded = NULL;
  int rc = qt_surrogate_load(path, qt_metadataset_space(md), &loaded, &err);
  if (rc != 0) fprintf(stderr, "%s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  size_t n1, n2;
  const double *p1 = qt_surrogate_dkl_params(trained, &n1),
               *p2 = qt_surrogate_dkl_params(loaded, &n2);
  CU_ASSERT_EQUAL(n1, n2);
  CU_ASSERT_EQUAL(memcmp(p1, p2, n1 * sizeof *p1), 0);
  p1 = qt_surrogate_costnet_params(trained, &n1);
  p2 = qt_surrogate_costnet_params(loaded, &n2);
  CU_ASSERT_EQUAL(n1, n2);
  CU_ASSERT_EQUAL(memcmp(p1, p2, n1 * sizeof *p1), 0);
  /* Field by field: memcmp would compare the struct's padding too. */
  const qt_dkl_config *ca = qt_surrogate_config(trained), *cb = qt_surrogate_config(loaded);
  CU_ASSERT(ca->hp_dim == cb->hp_dim && ca->model_begin == cb->model_begin &&
            ca->model_end == cb->model_end && ca->curve_len == cb->curve_len &&
            ca->meta_dim == cb->meta_dim && ca->hidden_dim == cb->hidden_dim &&
            ca->output_dim == cb->output_dim && ca->curve_out_dim == cb->curve_out_dim &&
            ca->meta_out_dim == cb->meta_out_dim && ca->dropout == cb->dropout &&
            ca->kernel == cb->kernel);

  const qt_surrogate_info *a = qt_surrogate_get_info(trained), *b = qt_surrogate_get_info(loaded);
  CU_ASSERT_STRING_EQUAL(a->space_name, b->space_name);
  CU_ASSERT_EQUAL(a->space_hash, b->space_hash);
  CU_ASSERT_EQUAL(a->hp_dim, b->hp_dim);
  CU_ASSERT_EQUAL(a->fidelity_max, b->fidelity_max);
  CU_ASSERT_EQUAL(a->meta_scale, b->meta_scale);
  CU_ASSERT_STRING_EQUAL(a->meta_dataset, b->meta_dataset);
  CU_ASSERT_EQUAL(a->train_count, b->train_count);
  CU_ASSERT_EQUAL(a->validation_count, b->validation_count);
  CU_ASSERT_EQUAL(a->excluded_count, b->excluded_count);
  for (size_t i = 0; i < a->excluded_count; i++)
    CU_ASSERT_STRING_EQUAL(a->excluded_datasets[i], b->excluded_datasets[i]);
  for (size_t i = 0; i < a->meta_feature_count; i++)
    CU_ASSERT_STRING_EQUAL(a->meta_features[i], b->meta_features[i]);
  CU_ASSERT_EQUAL(a->iterations, b->iterations);
  CU_ASSERT_EQUAL(a->best_iteration, b->best_iteration);
  CU_ASSERT_EQUAL(a->validation_mse, b->validation_mse);
  CU_ASSERT_EQUAL(a->untrained_validation_mse, b->untrained_validation_mse);
  CU_ASSERT_EQUAL(a->seed, b->seed);
  CU_ASSERT_STRING_EQUAL(b->created_by, "qtune " QT_VERSION_STRING);

  /* The cost predictor rebuilt from the file predicts non-negative seconds. */
  qt_costnet_t *cost = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_surrogate_make_costnet(loaded, &cost, NULL), 0);
  qt_dkl_t *dkl = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_surrogate_make_dkl(loaded, &dkl, NULL), 0);
  size_t datasets[1] = {6};
  double mse, rmse;
  qt_metatrain_params p = test_params();
  CU_ASSERT_EQUAL(qt_metatrain_evaluate(md, datasets, 1, dkl, cost, &p, &mse, &rmse, NULL), 0);
  CU_ASSERT(isfinite(mse) && isfinite(rmse));
  qt_dkl_free(dkl);
  qt_costnet_free(cost);

  /* Saving over an existing file replaces it. */
  CU_ASSERT_EQUAL(qt_surrogate_save(loaded, path, &err), 0);
  qt_surrogate_free(loaded);
}

static void test_file_wrong_space(void) {
  CU_ASSERT_PTR_NOT_NULL_FATAL(trained);
  char path[512];
  path_in_tmp(path, sizeof path, "surrogate.qts");
  qt_space_t *other = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_space_load_file("configs/spaces/default.yaml", &other, NULL), 0);
  qt_surrogate_t *loaded = NULL;
  qt_err err;
  CU_ASSERT_EQUAL(qt_surrogate_load(path, other, &loaded, &err), QT_ESCHEMA);
  CU_ASSERT_PTR_NULL(loaded);
  printf("\n  %s\n", err.msg);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "surrogate was trained for space 'quicktune-v1'"));
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "this search uses 'default'"));
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, path));
  qt_space_free(other);
  /* Without a space to check against, the file loads. */
  CU_ASSERT_EQUAL(qt_surrogate_load(path, NULL, &loaded, &err), 0);
  qt_surrogate_free(loaded);
}

static void write_bytes(const char *path, const char *data, size_t length) {
  FILE *f = fopen(path, "wb");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  CU_ASSERT_EQUAL(fwrite(data, 1, length, f), length);
  fclose(f);
}

/* Every damage is a clear error: a file cut at any of a range of lengths, a
 * flipped byte, another version, not a surrogate at all, a missing file. */
static void test_file_damaged(void) {
  CU_ASSERT_PTR_NOT_NULL_FATAL(trained);
  char path[512], bad[512];
  path_in_tmp(path, sizeof path, "surrogate.qts");
  path_in_tmp(bad, sizeof bad, "damaged.qts");
  char *data = NULL;
  size_t length = 0;
  CU_ASSERT_EQUAL_FATAL(qt_file_read(path, &data, &length, NULL), 0);
  CU_ASSERT(length > 1000);
  qt_surrogate_t *loaded = NULL;
  qt_err err;

  size_t cuts[] = {0, 5, 8, 15, 20, 100, length / 2, length - 5, length - 1};
  for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
    write_bytes(bad, data, cuts[i]);
    CU_ASSERT_EQUAL(qt_surrogate_load(bad, NULL, &loaded, &err), QT_EFORMAT);
    CU_ASSERT_PTR_NULL(loaded);
    if (cuts[i] > 0 && !strstr(err.msg, "truncated")) {
      fprintf(stderr, "cut at %zu: %s\n", cuts[i], err.msg);
      CU_FAIL("a truncated file says so");
    }
  }
  write_bytes(bad, data, length - 1);
  CU_ASSERT_EQUAL(qt_surrogate_load(bad, NULL, &loaded, &err), QT_EFORMAT);
  printf("\n  %s\n", err.msg);

  data[length / 2] ^= 0x5a;
  write_bytes(bad, data, length);
  CU_ASSERT_EQUAL(qt_surrogate_load(bad, NULL, &loaded, &err), QT_EFORMAT);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "CRC"));
  data[length / 2] ^= 0x5a;

  data[8] = 9; /* the version's low byte */
  write_bytes(bad, data, length);
  CU_ASSERT_EQUAL(qt_surrogate_load(bad, NULL, &loaded, &err), QT_EVERSION);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "version 9"));
  data[8] = 1;

  write_bytes(bad, "safetensors, not a surrogate", 28);
  CU_ASSERT_EQUAL(qt_surrogate_load(bad, NULL, &loaded, &err), QT_EFORMAT);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "not a qtune surrogate file"));

  path_in_tmp(bad, sizeof bad, "missing.qts");
  CU_ASSERT_EQUAL(qt_surrogate_load(bad, NULL, &loaded, &err), QT_ENOENT);

  /* The undamaged bytes still load. */
  path_in_tmp(bad, sizeof bad, "damaged.qts");
  write_bytes(bad, data, length);
  CU_ASSERT_EQUAL(qt_surrogate_load(bad, NULL, &loaded, &err), 0);
  qt_surrogate_free(loaded);
  free(data);
}

/* A save into a folder that does not exist fails with the path. */
static void test_file_save_errors(void) {
  CU_ASSERT_PTR_NOT_NULL_FATAL(trained);
  qt_err err;
  CU_ASSERT_EQUAL(qt_surrogate_save(trained, "/no/such/dir/s.qts", &err), QT_EIO);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "/no/such/dir/s.qts"));
}

static void test_cleanup(void) {
  char path[512];
  const char *names[] = {"surrogate.qts", "damaged.qts", NULL};
  for (int i = 0; names[i]; i++) {
    path_in_tmp(path, sizeof path, names[i]);
    unlink(path);
  }
  rmdir(tmp_dir);
  qt_surrogate_free(trained);
  trained = NULL;
  qt_metadataset_free(md);
  md = NULL;
}

static const qt_test_case cases[] = {
    {"meta-trained beats untrained on held-out datasets", test_metatrain_beats_untrained},
    {"deterministic; explicit roles; bad requests", test_metatrain_deterministic_and_roles},
    {"file round trip", test_file_round_trip},
    {"file for another space is a clear error", test_file_wrong_space},
    {"truncated or damaged files are clear errors", test_file_damaged},
    {"save errors name the path", test_file_save_errors},
    {"cleanup", test_cleanup},
    {NULL, NULL}};

QT_TEST_MAIN("surrogate_metatrain", cases)

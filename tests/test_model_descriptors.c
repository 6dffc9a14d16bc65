/*
 * test_model_descriptors.c - the model-descriptor encoding of the surrogates
 * (surrogate/qt_model_encoding.c, issue 10 item 4): the encoded vector of a
 * configuration against a hand-built one, the encoding checks between
 * one-hot and descriptor surrogates, the file round trip (version 2) next to
 * today's one-hot files (version 1), and a model the meta-dataset never saw
 * getting finite predictions from its hub descriptors, through the
 * quicktune optimizer as a search would use it.
 */
#include "bo/qt_bo.h"
#include "surrogate/qt_surrogate.h"
#include "qt_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define QUICKTUNE_SPACE "configs/spaces/quicktune-v1.yaml"
#define QUICKTUNE_DESCRIPTORS "configs/model-descriptors/quicktune.yaml"
#define DEFAULT_HUB "configs/hubs/default.yaml"

static qt_metadataset_t *md;
static qt_surrogate_t *onehot, *described;
static qt_model_codec_t *codec;
static char tmp_dir[] = "/tmp/qt-test-descriptors-XXXXXX";

/* A small synthetic meta-dataset over Quick-Tune's space and two short
 * meta-trainings, one per encoding, shared by the tests. */
static void setup(void) {
  if (md) return;
  qt_metadataset_synth_params sp = qt_metadataset_synth_default_params();
  sp.n_datasets = 3;
  sp.runs_per_dataset = 16;
  sp.min_epochs = 2;
  sp.max_epochs = 8;
  sp.seed = 3;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_synthesize(QUICKTUNE_SPACE, &sp, &md, &err), 0);
  int rc =
      qt_model_codec_load(QT_MODEL_ENCODING_DESCRIPTORS, QUICKTUNE_DESCRIPTORS, NULL, &codec, &err);
  if (rc != 0) fprintf(stderr, "%s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT_EQUAL_FATAL(qt_model_codec_check_metadataset(codec, md, &err), 0);
  qt_metatrain_params p = qt_metatrain_default_params();
  p.iterations = 30;
  p.validation_every = 10;
  p.validation_batches = 4;
  p.learning_rate = 1e-3;
  CU_ASSERT_EQUAL_FATAL(qt_metatrain(md, &p, &onehot, NULL, &err), 0);
  p.codec = codec;
  rc = qt_metatrain(md, &p, &described, NULL, &err);
  if (rc != 0) fprintf(stderr, "%s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(tmp_dir));
}

/* ------------------------------------------------------------------------- */
/* The encoding                                                               */
/* ------------------------------------------------------------------------- */

static void test_descriptor_vector_is_hand_built(void) {
  setup();
  const qt_space_t *space = qt_metadataset_space(md);
  qt_err err;
  /* Three models with round numbers: log10 parameters 6, 7, 8 (mean 7,
   * std sqrt(2/3)); log2 image size 8 and 10 (mean 9, std 1), the third
   * unknown; depth known once (std 1, z 0); log2 width 7 and 9; top-1 known
   * once. */
  qt_descriptor_table_t *table = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_descriptor_table_create(&table, &err), 0);
  qt_model_descriptor a = {"beit_base_patch16_384", 0, {1e6, 256, 12, 128, 0.8}};
  qt_model_descriptor b = {"tf_efficientnet_b4_ns", 1, {1e7, 1024, NAN, 512, NAN}};
  qt_model_descriptor c = {"dla46x_c", QT_DESCRIPTOR_FAMILY_OTHER, {1e8, NAN, NAN, NAN, NAN}};
  CU_ASSERT_EQUAL(qt_descriptor_table_add(table, &a, &err), 0);
  CU_ASSERT_EQUAL(qt_descriptor_table_add(table, &b, &err), 0);
  CU_ASSERT_EQUAL(qt_descriptor_table_add(table, &c, &err), 0);
  CU_ASSERT_EQUAL(qt_descriptor_table_add(table, &c, &err), QT_EEXIST);
  qt_model_descriptor bad = {"x", 0, {-5, NAN, NAN, NAN, NAN}};
  CU_ASSERT_EQUAL(qt_descriptor_table_add(table, &bad, &err), QT_EINVAL);
  qt_model_codec_t *small = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_model_codec_create(QT_MODEL_ENCODING_DESCRIPTORS, table, &small, &err),
                        0);

  const double z = -sqrt(1.5);
  const double want_a[QT_DESCRIPTOR_COLUMNS] = {1, 0, 0, 0, 0, z, 1, -1, 1, 0, 1, -1, 1, 0, 1};
  const double want_b[QT_DESCRIPTOR_COLUMNS] = {0, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 0, 0};
  const double want_c[QT_DESCRIPTOR_COLUMNS] = {0, 0, 0, 0, 0, -z, 1, 0, 0, 0, 0, 0, 0, 0, 0};
  const double *want[3] = {want_a, want_b, want_c};
  const char *names[3] = {a.name, b.name, c.name};

  size_t hp;
  CU_ASSERT_EQUAL_FATAL(qt_space_find(space, "model", &hp), 0);
  size_t width = 0, begin = qt_space_encoded_offset(space, hp, &width);
  size_t dim = qt_space_encoded_dim(space);
  size_t enc_dim = qt_model_encoded_dim(QT_MODEL_ENCODING_DESCRIPTORS, space);
  CU_ASSERT_EQUAL(enc_dim, dim - width + QT_DESCRIPTOR_COLUMNS);
  CU_ASSERT_EQUAL(width, 24);
  double *onehot_vec = malloc(dim * sizeof *onehot_vec);
  double *vec = malloc(enc_dim * sizeof *vec);
  qt_config config;
  CU_ASSERT_EQUAL_FATAL(qt_config_init(&config, space, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_space_default_config(space, &config, &err), 0);
  for (int m = 0; m < 3; m++) {
    CU_ASSERT_EQUAL_FATAL(qt_config_set_string(&config, "model", names[m], &err), 0);
    CU_ASSERT_EQUAL_FATAL(qt_space_encode(space, &config, onehot_vec, &err), 0);
    CU_ASSERT_EQUAL_FATAL(qt_model_codec_encode(small, space, &config, vec, &err), 0);
    for (size_t k = 0; k < begin; k++) CU_ASSERT_EQUAL(vec[k], onehot_vec[k]);
    for (size_t k = 0; k < QT_DESCRIPTOR_COLUMNS; k++)
      QT_ASSERT_CLOSE(vec[begin + k], want[m][k], 1e-12);
    for (size_t k = begin + width; k < dim; k++)
      CU_ASSERT_EQUAL(vec[k - width + QT_DESCRIPTOR_COLUMNS], onehot_vec[k]);
  }
  /* A model of the space without descriptors is a clear error. */
  CU_ASSERT_EQUAL(qt_config_set_string(&config, "model", "volo_d1_384", &err), 0);
  CU_ASSERT_EQUAL(qt_model_codec_encode(small, space, &config, vec, &err), QT_ENOENT);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "volo_d1_384"));
  /* The network reads the descriptor block with its model encoder. */
  qt_dkl_config dc = qt_model_codec_dkl_config(small, space, 4);
  CU_ASSERT_EQUAL(dc.hp_dim, enc_dim);
  CU_ASSERT_EQUAL(dc.model_begin, begin);
  CU_ASSERT_EQUAL(dc.model_end, begin + QT_DESCRIPTOR_COLUMNS);
  CU_ASSERT_STRING_EQUAL(qt_descriptor_column_name(5), "desc:log10_parameters");
  qt_config_free(&config);
  free(onehot_vec);
  free(vec);
  qt_model_codec_free(small);
  qt_descriptor_table_free(table);
}

static void test_descriptor_file_errors(void) {
  setup();
  char path[512];
  snprintf(path, sizeof path, "%s/bad.yaml", tmp_dir);
  FILE *f = fopen(path, "w");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  fputs("version: 1\nname: t\nmodels:\n  - {name: a, family: spaceship}\n", f);
  fclose(f);
  qt_descriptor_table_t *table = NULL;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_descriptor_table_create(&table, &err), 0);
  CU_ASSERT_EQUAL(qt_descriptor_table_load_file(table, path, &err), QT_ESCHEMA);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "bad.yaml:4:"));
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "family"));
  /* The shipped Quick-Tune file covers the 24 models of the space. */
  CU_ASSERT_EQUAL(qt_descriptor_table_load_file(table, QUICKTUNE_DESCRIPTORS, &err), 0);
  CU_ASSERT_EQUAL(qt_descriptor_table_count(table), 24);
  qt_descriptor_table_free(table);
  qt_model_codec_t *c = NULL;
  CU_ASSERT_EQUAL(qt_model_codec_load(QT_MODEL_ENCODING_DESCRIPTORS, NULL, NULL, &c, &err),
                  QT_EINVAL);
  qt_model_encoding mode;
  CU_ASSERT_EQUAL(qt_model_encoding_parse("onehot", &mode, &err), 0);
  CU_ASSERT_EQUAL(mode, QT_MODEL_ENCODING_ONEHOT);
  CU_ASSERT_EQUAL(qt_model_encoding_parse("both", &mode, &err), QT_EINVAL);
}

/* ------------------------------------------------------------------------- */
/* Checks and files                                                           */
/* ------------------------------------------------------------------------- */

static void test_encoding_checks(void) {
  setup();
  qt_err err;
  const qt_space_t *space = qt_metadataset_space(md);
  CU_ASSERT_EQUAL(qt_surrogate_get_info(onehot)->model_encoding, QT_MODEL_ENCODING_ONEHOT);
  CU_ASSERT_EQUAL(qt_surrogate_get_info(described)->model_encoding, QT_MODEL_ENCODING_DESCRIPTORS);
  CU_ASSERT_EQUAL(qt_surrogate_check_space(onehot, space, &err), 0);
  CU_ASSERT_EQUAL(qt_surrogate_check_space(described, space, &err), 0);
  CU_ASSERT_EQUAL(qt_surrogate_check_encoding(onehot, QT_MODEL_ENCODING_ONEHOT, &err), 0);
  CU_ASSERT_EQUAL(qt_surrogate_check_encoding(onehot, QT_MODEL_ENCODING_DESCRIPTORS, &err),
                  QT_ESCHEMA);
  printf("\n  %s\n", err.msg);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "'onehot'"));
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "'descriptors'"));
  CU_ASSERT_EQUAL(qt_surrogate_check_encoding(described, QT_MODEL_ENCODING_ONEHOT, &err),
                  QT_ESCHEMA);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "meta-trained with model encoding 'descriptors'"));
  CU_ASSERT_NOT_EQUAL(qt_surrogate_get_info(onehot)->space_hash,
                      qt_surrogate_get_info(described)->space_hash);
  /* Evaluating a descriptor network with one-hot rows is refused. */
  qt_dkl_t *dkl = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_surrogate_make_dkl(described, &dkl, &err), 0);
  qt_metatrain_params p = qt_metatrain_default_params();
  size_t datasets[1] = {0};
  double mse = 0.0;
  CU_ASSERT_EQUAL(qt_metatrain_evaluate(md, datasets, 1, dkl, NULL, &p, &mse, NULL, &err),
                  QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "onehot"));
  p.codec = codec;
  CU_ASSERT_EQUAL(qt_metatrain_evaluate(md, datasets, 1, dkl, NULL, &p, &mse, NULL, &err), 0);
  CU_ASSERT(isfinite(mse));
  qt_dkl_free(dkl);

  /* A space over other models (a hub's): the one-hot surrogate no longer
   * fits, the descriptor one does. */
  const char *models[] = {"vit_tiny_28.fashion_mnist", "beit_base_patch16_384"};
  qt_space_t *hub_space = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_space_with_choices(space, "model", models, 2, &hub_space, &err), 0);
  CU_ASSERT_EQUAL(qt_surrogate_check_space(onehot, hub_space, &err), QT_ESCHEMA);
  CU_ASSERT_EQUAL(qt_surrogate_check_space(described, hub_space, &err), 0);
  qt_space_free(hub_space);
}

static uint32_t file_version(const char *path) {
  unsigned char header[12] = {0};
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  size_t got = fread(header, 1, sizeof header, f);
  fclose(f);
  if (got != sizeof header) return 0;
  return (uint32_t)header[8] | (uint32_t)header[9] << 8 | (uint32_t)header[10] << 16 |
         (uint32_t)header[11] << 24;
}

static void test_round_trip(void) {
  setup();
  qt_err err;
  char path[512], path1[512];
  snprintf(path, sizeof path, "%s/descriptors.qts", tmp_dir);
  snprintf(path1, sizeof path1, "%s/onehot.qts", tmp_dir);
  CU_ASSERT_EQUAL_FATAL(qt_surrogate_save(described, path, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_surrogate_save(onehot, path1, &err), 0);
  CU_ASSERT_EQUAL(file_version(path), 2);
  CU_ASSERT_EQUAL(file_version(path1), 1); /* today's format, unchanged */

  qt_surrogate_t *loaded = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_surrogate_load(path, qt_metadataset_space(md), &loaded, &err), 0);
  const qt_surrogate_info *a = qt_surrogate_get_info(described), *b = qt_surrogate_get_info(loaded);
  CU_ASSERT_EQUAL(b->model_encoding, QT_MODEL_ENCODING_DESCRIPTORS);
  CU_ASSERT_EQUAL(a->space_hash, b->space_hash);
  CU_ASSERT_EQUAL(a->hp_dim, b->hp_dim);
  size_t na = 0, nb = 0;
  const double *pa = qt_surrogate_dkl_params(described, &na);
  const double *pb = qt_surrogate_dkl_params(loaded, &nb);
  CU_ASSERT_EQUAL_FATAL(na, nb);
  CU_ASSERT(memcmp(pa, pb, na * sizeof *pa) == 0);
  const qt_model_codec_t *ca = qt_surrogate_codec(described), *cb = qt_surrogate_codec(loaded);
  CU_ASSERT_PTR_NOT_NULL_FATAL(cb);
  const qt_descriptor_table_t *ta = qt_model_codec_table(ca), *tb = qt_model_codec_table(cb);
  CU_ASSERT_EQUAL_FATAL(qt_descriptor_table_count(ta), qt_descriptor_table_count(tb));
  for (size_t i = 0; i < qt_descriptor_table_count(ta); i++) {
    const qt_model_descriptor *da = qt_descriptor_table_at(ta, i);
    const qt_model_descriptor *db = qt_descriptor_table_at(tb, i);
    CU_ASSERT_STRING_EQUAL(da->name, db->name);
    CU_ASSERT_EQUAL(da->family, db->family);
    for (size_t k = 0; k < QT_DESCRIPTOR_NUMERIC_COUNT; k++)
      CU_ASSERT(da->values[k] == db->values[k] || (isnan(da->values[k]) && isnan(db->values[k])));
  }
  double ma[QT_DESCRIPTOR_NUMERIC_COUNT], sa[QT_DESCRIPTOR_NUMERIC_COUNT];
  double mb[QT_DESCRIPTOR_NUMERIC_COUNT], sb[QT_DESCRIPTOR_NUMERIC_COUNT];
  qt_model_codec_stats(ca, ma, sa);
  qt_model_codec_stats(cb, mb, sb);
  CU_ASSERT(memcmp(ma, mb, sizeof ma) == 0 && memcmp(sa, sb, sizeof sa) == 0);
  /* Same encoding of a run through both. */
  size_t dim = qt_surrogate_config(loaded)->hp_dim;
  double *va = malloc(dim * sizeof *va), *vb = malloc(dim * sizeof *vb);
  const qt_config *run = qt_metadataset_run(md, 0)->config;
  CU_ASSERT_EQUAL(qt_surrogate_encode(described, qt_metadataset_space(md), run, va, &err), 0);
  CU_ASSERT_EQUAL(qt_surrogate_encode(loaded, qt_metadataset_space(md), run, vb, &err), 0);
  CU_ASSERT(memcmp(va, vb, dim * sizeof *va) == 0);
  free(va);
  free(vb);
  qt_surrogate_free(loaded);

  /* The one-hot file loads as one-hot, as before. */
  CU_ASSERT_EQUAL_FATAL(qt_surrogate_load(path1, qt_metadataset_space(md), &loaded, &err), 0);
  CU_ASSERT_EQUAL(qt_surrogate_get_info(loaded)->model_encoding, QT_MODEL_ENCODING_ONEHOT);
  CU_ASSERT_PTR_NULL(qt_surrogate_codec(loaded));
  CU_ASSERT_EQUAL(qt_surrogate_get_info(loaded)->space_hash,
                  qt_surrogate_space_hash(qt_metadataset_space(md)));
  qt_surrogate_free(loaded);
  unlink(path);
  unlink(path1);
}

/* Surrogate files written before issue 10 (tests/fixtures, when any) still
 * load as one-hot surrogates. */
static void test_old_fixtures_load(void) {
  const char *dirs[] = {"tests/fixtures", "tests/fixtures/surrogate"};
  size_t found = 0;
  for (size_t d = 0; d < 2; d++) {
    DIR *dir = opendir(dirs[d]);
    if (!dir) continue;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
      size_t n = strlen(e->d_name);
      if (n < 4 || strcmp(e->d_name + n - 4, ".qts") != 0) continue;
      char path[1024];
      snprintf(path, sizeof path, "%s/%s", dirs[d], e->d_name);
      qt_surrogate_t *s = NULL;
      qt_err err;
      CU_ASSERT_EQUAL(qt_surrogate_load(path, NULL, &s, &err), 0);
      if (s) CU_ASSERT_EQUAL(qt_surrogate_get_info(s)->model_encoding, QT_MODEL_ENCODING_ONEHOT);
      qt_surrogate_free(s);
      found++;
    }
    closedir(dir);
  }
  if (found == 0)
    printf("\n  no surrogate fixtures in tests/fixtures (test_round_trip checks v1)\n");
}

/* ------------------------------------------------------------------------- */
/* A model the meta-dataset never saw                                         */
/* ------------------------------------------------------------------------- */

static void test_unseen_model_gets_finite_predictions(void) {
  setup();
  qt_err err;
  const qt_space_t *space = qt_metadataset_space(md);
  /* A search over the project's hub plus one Quick-Tune model. */
  const char *models[] = {"vit_tiny_28.fashion_mnist", "vit_small_p7_28.fashion_mnist",
                          "beit_base_patch16_384"};
  qt_space_t *hub_space = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_space_with_choices(space, "model", models, 3, &hub_space, &err), 0);
  qt_config configs[6];
  qt_rng_t *rng = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, 5, &err), 0);
  for (int i = 0; i < 6; i++) {
    CU_ASSERT_EQUAL_FATAL(qt_config_init(&configs[i], hub_space, &err), 0);
    CU_ASSERT_EQUAL_FATAL(qt_space_sample(hub_space, rng, &configs[i], &err), 0);
    CU_ASSERT_EQUAL_FATAL(qt_config_set_string(&configs[i], "model", models[i % 3], &err), 0);
  }
  qt_rng_free(rng);
  qt_pool pool;
  CU_ASSERT_EQUAL_FATAL(qt_pool_init(&pool, hub_space, configs, 6, &err), 0);
  const double features[4] = {1000, 10, 28, 1};
  CU_ASSERT_EQUAL_FATAL(qt_pool_set_meta(&pool, features, 4, &err), 0);

  /* Copy the surrogate (save and load) so the shared one stays as trained. */
  char path[512];
  snprintf(path, sizeof path, "%s/unseen.qts", tmp_dir);
  CU_ASSERT_EQUAL_FATAL(qt_surrogate_save(described, path, &err), 0);
  qt_surrogate_t *s = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_surrogate_load(path, hub_space, &s, &err), 0);
  unlink(path);

  /* Without the hub, the new models have no descriptors: a clear error. */
  qt_optimizer_params op = qt_optimizer_default_params();
  op.surrogate = s;
  op.max_epochs = 8;
  qt_optimizer_t *opt = NULL;
  CU_ASSERT_EQUAL(qt_optimizer_create("quicktune", &pool, &op, &opt, &err), QT_ENOENT);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "vit_tiny_28.fashion_mnist"));
  qt_optimizer_free(opt);
  opt = NULL;

  qt_hub_t *hub = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_hub_load_file(DEFAULT_HUB, &hub, &err), 0);
  size_t added = 0;
  CU_ASSERT_EQUAL_FATAL(qt_surrogate_add_hub_descriptors(s, hub, &added, &err), 0);
  CU_ASSERT_EQUAL(added, qt_hub_count(hub));
  qt_hub_free(hub);

  /* Direct prediction: condition on two rows of one model, predict all. */
  const qt_dkl_config *c = qt_surrogate_config(s);
  size_t n = 6, dim = c->hp_dim;
  double *x = calloc(n * dim, sizeof *x), *curve = calloc(n * c->curve_len, sizeof *curve);
  double budget[6], meta[6 * 4], y[6] = {0.3, 0.5, 0.4, 0.6, 0.2, 0.7}, mean[6], var[6];
  for (size_t i = 0; i < n; i++) {
    CU_ASSERT_EQUAL_FATAL(qt_surrogate_encode(s, hub_space, &configs[i], x + i * dim, &err), 0);
    budget[i] = (double)(1 + i % 3) / 8.0;
    for (size_t k = 0; k < 4; k++) meta[i * 4 + k] = features[k] * QT_SURROGATE_META_SCALE;
  }
  /* The two ViTs differ in their descriptors. */
  CU_ASSERT(memcmp(x, x + dim, dim * sizeof *x) != 0);
  qt_dkl_t *dkl = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_surrogate_make_dkl(s, &dkl, &err), 0);
  qt_rows train = {2, x + 3 * dim, budget + 3, curve, meta, y + 3, NULL};
  qt_rows query = {n, x, budget, curve, meta, NULL, NULL};
  CU_ASSERT_EQUAL(qt_dkl_predict(dkl, &train, &query, mean, var, &err), 0);
  for (size_t i = 0; i < n; i++) CU_ASSERT(isfinite(mean[i]) && isfinite(var[i]) && var[i] > 0.0);
  qt_dkl_free(dkl);
  free(x);
  free(curve);

  /* Through the optimizer, as qtune search uses it. */
  int rc = qt_optimizer_create("quicktune", &pool, &op, &opt, &err);
  if (rc != 0) fprintf(stderr, "%s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL(rc, 0);
  qt_optimizer_free(opt);

  qt_surrogate_free(s);
  qt_pool_free(&pool);
  for (int i = 0; i < 6; i++) qt_config_free(&configs[i]);
  qt_space_free(hub_space);
}

static void test_cleanup(void) {
  qt_surrogate_free(onehot);
  qt_surrogate_free(described);
  qt_model_codec_free(codec);
  qt_metadataset_free(md);
  onehot = described = NULL;
  codec = NULL;
  md = NULL;
  rmdir(tmp_dir);
}

static const qt_test_case cases[] = {
    {"descriptor vector is hand-built", test_descriptor_vector_is_hand_built},
    {"descriptor file errors", test_descriptor_file_errors},
    {"one-hot and descriptor checks", test_encoding_checks},
    {"descriptor surrogate round trip", test_round_trip},
    {"old surrogate fixtures load", test_old_fixtures_load},
    {"unseen model gets finite predictions", test_unseen_model_gets_finite_predictions},
    {"cleanup", test_cleanup},
    {NULL, NULL}};

QT_TEST_MAIN("model_descriptors", cases)

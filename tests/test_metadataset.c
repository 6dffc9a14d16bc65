/*
 * test_metadataset.c - the meta-dataset store (metadata/qt_metadataset*.c)
 * and the Quick-Tune importer (metadata/qt_import_quicktune.c).
 *
 * The spot checks against the shared Quick-Tune copy read perf.json and
 * cost.json independently with jansson, and the expected configuration of
 * run 165586024208328972 was read off table.csv by hand (its one-hot columns
 * and numeric cells). Expected line:column positions in the corruption tests
 * were counted from the inputs written here (first character = column 1).
 */
#include "metadata/qt_metadata.h"
#include "qt_test.h"

#include <dirent.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------------- */
/* Helpers                                                                    */
/* ------------------------------------------------------------------------- */

#define COUNT_OF(array) (sizeof(array) / sizeof((array)[0]))
#define QUICKTUNE "benchmarks/quicktune-extended"

static void make_temp_dir(char *dir, size_t size) {
  snprintf(dir, size, "/tmp/qt-test-metadataset-XXXXXX");
  CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
}

/* Removes dir and the files in it (and one level of sub-folders). */
static void remove_dir(const char *dir) {
  DIR *handle = opendir(dir);
  if (!handle) return;
  struct dirent *entry;
  while ((entry = readdir(handle))) {
    if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0) continue;
    char path[2048];
    snprintf(path, sizeof path, "%s/%s", dir, entry->d_name);
    if (unlink(path) != 0) remove_dir(path);
  }
  closedir(handle);
  rmdir(dir);
}

static void write_text(const char *dir, const char *name, const char *text) {
  char path[2048];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *file = fopen(path, "wb");
  CU_ASSERT_PTR_NOT_NULL_FATAL(file);
  fputs(text, file);
  fclose(file);
}

static void space_path(const char *name, char *buf, size_t size) {
  snprintf(buf, size, "%s/configs/spaces/%s", QT_SOURCE_DIR, name);
}

/* The value of hyperparameter `name` in config as text ("" when inactive). */
static const char *value_of(const qt_config *config, const char *name) {
  static char buf[256];
  size_t hp = 0;
  CU_ASSERT_EQUAL_FATAL(qt_space_find(config->space, name, &hp), 0);
  qt_config_get_string(config, hp, buf, sizeof buf);
  return buf;
}

/* Asserts that rc is `code` and that the message holds `where` and `part`. */
static void expect_error(const char *label, int rc, const qt_err *err, int code, const char *where,
                         const char *part) {
  int ok = rc == code && strstr(err->msg, where) && strstr(err->msg, part);
  if (!ok) {
    fprintf(stderr, "\n%s: got %s \"%s\"\n  expected %s with \"%s\" and \"%s\"\n", label,
            qt_strerror_name(rc), err->msg, qt_strerror_name(code), where, part);
  }
  CU_ASSERT_TRUE(ok);
}

/* Imports the shared Quick-Tune copy, or returns NULL (with a note) when the
 * shared folder is absent. */
static qt_metadataset_t *import_shared(void) {
  char probe[1024], src[1024], space[1024];
  if (!qt_test_shared_path(QUICKTUNE "/perf.json", probe, sizeof probe)) return NULL;
  snprintf(src, sizeof src, "%s/%s", QT_SHARED_DIR, QUICKTUNE);
  space_path("quicktune-v1.yaml", space, sizeof space);
  qt_metadataset_t *md = NULL;
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_metadataset_import_quicktune(src, space, &md, &err);
  if (rc != 0) fprintf(stderr, "\nimport: %s\n", err.msg);
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  return md;
}

/* ------------------------------------------------------------------------- */
/* The Quick-Tune importer on the shared copy                                 */
/* ------------------------------------------------------------------------- */

static void test_import_counts(void) {
  qt_metadataset_t *md = import_shared();
  if (!md) return;
  CU_ASSERT_EQUAL(qt_metadataset_dataset_count(md), 18);
  CU_ASSERT_EQUAL(qt_metadataset_run_count(md), 3239);
  CU_ASSERT_EQUAL(qt_metadataset_point_count(md), 97388);
  CU_ASSERT_STRING_EQUAL(qt_metadataset_name(md), "quicktune-extended");
  CU_ASSERT_EQUAL(qt_metadataset_max_epochs(md), 50);
  CU_ASSERT_EQUAL(qt_metadataset_feature_count(md), 4);
  CU_ASSERT_STRING_EQUAL(qt_metadataset_feature_name(md, 0), "n_samples");
  CU_ASSERT_STRING_EQUAL(qt_metadataset_feature_name(md, 3), "channels");

  /* Every configuration validates, the runs are grouped by dataset, and the
   * points add up. */
  size_t invalid = 0, misgrouped = 0, points = 0, runs = 0;
  qt_err err;
  for (size_t d = 0; d < qt_metadataset_dataset_count(md); d++) {
    const qt_md_dataset *dataset = qt_metadataset_dataset(md, d);
    CU_ASSERT_EQUAL(dataset->first_run, runs);
    runs += dataset->run_count;
    for (size_t r = dataset->first_run; r < dataset->first_run + dataset->run_count; r++) {
      const qt_md_run *run = qt_metadataset_run(md, r);
      misgrouped += run->dataset != d;
      points += run->epochs;
      if (qt_config_validate(run->config, &err) != 0 && invalid++ == 0)
        fprintf(stderr, "\nrun %s: %s\n", run->id, err.msg);
      CU_ASSERT_PTR_NULL(run->train_loss);
    }
  }
  CU_ASSERT_EQUAL(invalid, 0);
  CU_ASSERT_EQUAL(misgrouped, 0);
  CU_ASSERT_EQUAL(runs, 3239);
  CU_ASSERT_EQUAL(points, 97388);

  /* descriptors.json: "BCT": [2436, 33, 128, 3]. */
  size_t bct;
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_find_dataset(md, "BCT", &bct), 0);
  const double *features = qt_metadataset_dataset(md, bct)->features;
  CU_ASSERT_EQUAL(features[0], 2436.0);
  CU_ASSERT_EQUAL(features[1], 33.0);
  CU_ASSERT_EQUAL(features[2], 128.0);
  CU_ASSERT_EQUAL(features[3], 3.0);
  CU_ASSERT_EQUAL(qt_metadataset_find_dataset(md, "NOPE", NULL), QT_ENOENT);
  qt_metadataset_free(md);
}

/* Scores and costs of several runs against perf.json and cost.json, read
 * here with jansson, and one configuration against table.csv. */
static void test_import_spot_check(void) {
  qt_metadataset_t *md = import_shared();
  if (!md) return;
  char path[1024];
  json_error_t error;
  snprintf(path, sizeof path, "%s/%s/perf.json", QT_SHARED_DIR, QUICKTUNE);
  json_t *perf = json_load_file(path, 0, &error);
  snprintf(path, sizeof path, "%s/%s/cost.json", QT_SHARED_DIR, QUICKTUNE);
  json_t *cost = json_load_file(path, 0, &error);
  CU_ASSERT_PTR_NOT_NULL_FATAL(perf);
  CU_ASSERT_PTR_NOT_NULL_FATAL(cost);

  static const struct {
    const char *dataset, *run;
    size_t epoch; /* 1-based */
  } spots[] = {
      {"BCT", "165586024208328972", 7},
      {"BCT", "18325372658686632", 2},
      {"BCT", "15314844028951064", 1},
      {"ACT_410", "3536357709206502", 50},
      {"PLK", NULL, 1},
      {"TEX_ALOT", NULL, 3},
  };
  for (size_t s = 0; s < COUNT_OF(spots); s++) {
    const char *id = spots[s].run;
    json_t *runs = json_object_get(perf, spots[s].dataset);
    CU_ASSERT_PTR_NOT_NULL_FATAL(runs);
    if (!id) id = json_object_iter_key(json_object_iter(runs)); /* its first run */
    json_t *p = json_object_get(runs, id);
    json_t *c = json_object_get(json_object_get(cost, spots[s].dataset), id);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    size_t epoch = spots[s].epoch <= json_array_size(p) ? spots[s].epoch : json_array_size(p);

    size_t r;
    CU_ASSERT_EQUAL_FATAL(qt_metadataset_find_run(md, id, &r), 0);
    const qt_md_run *run = qt_metadataset_run(md, r);
    CU_ASSERT_STRING_EQUAL(run->id, id);
    CU_ASSERT_STRING_EQUAL(qt_metadataset_dataset(md, run->dataset)->name, spots[s].dataset);
    CU_ASSERT_EQUAL(run->epochs, json_array_size(p));
    float score = (float)(json_number_value(json_array_get(p, epoch - 1)) / 100.0);
    float seconds = (float)json_number_value(json_array_get(c, epoch - 1));
    CU_ASSERT_EQUAL(run->score[epoch - 1], score);
    CU_ASSERT_EQUAL(run->cost[epoch - 1], seconds);
  }
  /* Hand-checked values of two of them. */
  size_t r;
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_find_run(md, "165586024208328972", &r), 0);
  const qt_md_run *run = qt_metadataset_run(md, r);
  QT_ASSERT_CLOSE(run->score[6], 0.2561576354679803, 1e-7);
  QT_ASSERT_CLOSE(run->cost[6], 9.204606056213379, 1e-5);

  /* table.csv row 165586024208328972: cat:model:dla46x_c, cat:opt:momentum,
   * momentum 0.8, lr 0.005, batch_size 16, cat:sched:plateau, patience 5,
   * decay_epochs 90.0 (a filler: sched is not step), clip_grad and
   * layer_decay -1.0 (None), cat:opt_betas:None (a filler),
   * cat:data_augmentation:auto_augment, ra_num_ops 2 (a filler). */
  const qt_config *config = run->config;
  CU_ASSERT_STRING_EQUAL(value_of(config, "model"), "dla46x_c");
  CU_ASSERT_STRING_EQUAL(value_of(config, "opt"), "momentum");
  CU_ASSERT_STRING_EQUAL(value_of(config, "momentum"), "0.8");
  CU_ASSERT_STRING_EQUAL(value_of(config, "lr"), "0.005");
  CU_ASSERT_STRING_EQUAL(value_of(config, "batch_size"), "16");
  CU_ASSERT_STRING_EQUAL(value_of(config, "sched"), "plateau");
  CU_ASSERT_STRING_EQUAL(value_of(config, "patience_epochs"), "5");
  CU_ASSERT_STRING_EQUAL(value_of(config, "decay_epochs"), "");
  CU_ASSERT_STRING_EQUAL(value_of(config, "clip_grad"), "None");
  CU_ASSERT_STRING_EQUAL(value_of(config, "layer_decay"), "None");
  CU_ASSERT_STRING_EQUAL(value_of(config, "opt_betas"), "");
  CU_ASSERT_STRING_EQUAL(value_of(config, "data_augmentation"), "auto_augment");
  CU_ASSERT_STRING_EQUAL(value_of(config, "auto_augment"), "original");
  CU_ASSERT_STRING_EQUAL(value_of(config, "ra_num_ops"), "");
  json_decref(perf);
  json_decref(cost);
  qt_metadataset_free(md);
}

static void test_import_round_trip(void) {
  qt_metadataset_t *md = import_shared();
  if (!md) return;
  char dir[256];
  make_temp_dir(dir, sizeof dir);
  qt_err err;
  qt_metadataset_t *loaded = NULL;
  CU_ASSERT_EQUAL(qt_metadataset_save(md, dir, &err), 0);
  int rc = qt_metadataset_load(dir, &loaded, &err);
  if (rc != 0) fprintf(stderr, "\nload: %s\n", err.msg);
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  rc = qt_metadataset_compare(md, loaded, &err);
  if (rc != 0) fprintf(stderr, "\ncompare: %s\n", err.msg);
  CU_ASSERT_EQUAL(rc, 0);
  CU_ASSERT_EQUAL(qt_metadataset_point_count(loaded), 97388);
  qt_metadataset_free(loaded);
  qt_metadataset_free(md);
  remove_dir(dir);
}

/* ------------------------------------------------------------------------- */
/* Building, saving, loading                                                  */
/* ------------------------------------------------------------------------- */

static const char *const tiny_space =
    "version: 1\n"
    "name: tiny\n"
    "fidelity: {name: epochs, min: 1, max: 5}\n"
    "hyperparameters:\n"
    "  opt: {type: categorical, choices: [sgd, adam]}\n"
    "  lr: {type: float, range: [1.0e-4, 1.0], log: true}\n"
    "  beta: {type: ordinal, choices: [0.9, 0.99], active_when: {opt: [adam]}}\n";

/* Names with commas, quotes and a line break, runs added out of dataset
 * order, loss curves with gaps and without: save and load give it back. */
static void test_build_save_load(void) {
  char dir[256], space[512], out[512];
  make_temp_dir(dir, sizeof dir);
  write_text(dir, "tiny.yaml", tiny_space);
  snprintf(space, sizeof space, "%s/tiny.yaml", dir);
  snprintf(out, sizeof out, "%s/nested/folder", dir);

  static const char *const features[] = {"n_samples", "odd, \"name\""};
  qt_metadataset_params params = qt_metadataset_default_params();
  params.name = "tricky \"name\"";
  params.metric = "acc: top-1";
  params.provenance = "line one\nline two, with \"quotes\" and a \\ backslash";
  params.max_epochs = 4;
  params.feature_count = 2;
  params.feature_names = features;
  qt_metadataset_t *md = NULL;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_create(space, &params, &md, &err), 0);
  double f1[] = {100, 0.1}, f2[] = {2e6, -3.25};
  size_t d1, d2;
  CU_ASSERT_EQUAL(qt_metadataset_add_dataset(md, "first, one", f1, &d1, &err), 0);
  CU_ASSERT_EQUAL(qt_metadataset_add_dataset(md, "second \"two\"", f2, &d2, &err), 0);
  CU_ASSERT_EQUAL(qt_metadataset_add_dataset(md, "first, one", f1, NULL, &err), QT_EEXIST);

  qt_config config;
  CU_ASSERT_EQUAL_FATAL(qt_config_init(&config, qt_metadataset_space(md), NULL), 0);
  CU_ASSERT_EQUAL(qt_config_set_string(&config, "opt", "adam", NULL), 0);
  CU_ASSERT_EQUAL(qt_config_set_string(&config, "lr", "0.0123456789", NULL), 0);
  CU_ASSERT_EQUAL(qt_config_set_string(&config, "beta", "0.99", NULL), 0);
  float score[] = {0.1f, 0.25f, 1.0f / 3.0f, 1.0f}, cost[] = {1.5f, 0.0f, 3.0e-7f, 1e6f};
  float train[] = {2.0f, NAN, INFINITY, 0.5f}, none[] = {NAN, NAN, NAN, NAN};
  /* Added d2, d1, d2: grouped as d1 (r-b), d2 (r,a; r-c). */
  qt_md_run a = {"r,a", d2, &config, 3, score, cost, train, NULL};
  qt_md_run b = {"r-b", d1, &config, 4, score, cost, NULL, none};
  qt_md_run c = {"r-c", d2, &config, 1, score + 3, cost + 3, NULL, NULL};
  CU_ASSERT_EQUAL(qt_metadataset_add_run(md, &a, &err), 0);
  CU_ASSERT_EQUAL(qt_metadataset_add_run(md, &b, &err), 0);
  CU_ASSERT_EQUAL(qt_metadataset_add_run(md, &c, &err), 0);
  CU_ASSERT_EQUAL(qt_metadataset_run_count(md), 3);
  CU_ASSERT_EQUAL(qt_metadataset_point_count(md), 8);
  CU_ASSERT_STRING_EQUAL(qt_metadataset_run(md, 0)->id, "r-b");
  CU_ASSERT_STRING_EQUAL(qt_metadataset_run(md, 1)->id, "r,a");
  CU_ASSERT_STRING_EQUAL(qt_metadataset_run(md, 2)->id, "r-c");
  CU_ASSERT_EQUAL(qt_metadataset_dataset(md, d2)->first_run, 1);
  CU_ASSERT_EQUAL(qt_metadataset_dataset(md, d2)->run_count, 2);
  size_t found;
  CU_ASSERT_EQUAL(qt_metadataset_find_run(md, "r-c", &found), 0);
  CU_ASSERT_EQUAL(found, 2);
  CU_ASSERT_EQUAL(qt_metadataset_find_run(md, "r-z", &found), QT_ENOENT);
  /* Non-finite losses are missing; a loss curve with nothing finite is NULL. */
  const qt_md_run *ra = qt_metadataset_run(md, 1);
  CU_ASSERT_PTR_NOT_NULL_FATAL(ra->train_loss);
  CU_ASSERT_EQUAL(ra->train_loss[0], 2.0f);
  CU_ASSERT_TRUE(isnan(ra->train_loss[1]) && isnan(ra->train_loss[2]));
  CU_ASSERT_PTR_NULL(qt_metadataset_run(md, 0)->val_loss);

  CU_ASSERT_EQUAL(qt_metadataset_save(md, out, &err), 0);
  qt_metadataset_t *loaded = NULL;
  int rc = qt_metadataset_load(out, &loaded, &err);
  if (rc != 0) fprintf(stderr, "\nload: %s\n", err.msg);
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  rc = qt_metadataset_compare(md, loaded, &err);
  if (rc != 0) fprintf(stderr, "\ncompare: %s\n", err.msg);
  CU_ASSERT_EQUAL(rc, 0);
  CU_ASSERT_STRING_EQUAL(qt_metadataset_provenance(loaded), params.provenance);
  CU_ASSERT_STRING_EQUAL(qt_metadataset_feature_name(loaded, 1), "odd, \"name\"");

  /* compare notices a difference. */
  qt_metadataset_t *other = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_create(space, &params, &other, &err), 0);
  CU_ASSERT_EQUAL(qt_metadataset_compare(md, other, &err), QT_ESCHEMA);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "datasets"));
  qt_metadataset_free(other);
  qt_metadataset_free(loaded);
  qt_config_free(&config);
  qt_metadataset_free(md);
  remove_dir(dir);
}

/* Every check of add_run and create refuses bad input with a message. */
static void test_builder_checks(void) {
  char dir[256], space[512];
  make_temp_dir(dir, sizeof dir);
  write_text(dir, "tiny.yaml", tiny_space);
  snprintf(space, sizeof space, "%s/tiny.yaml", dir);
  qt_metadataset_params params = qt_metadataset_default_params();
  qt_metadataset_t *md = NULL;
  qt_err err;
  CU_ASSERT_EQUAL(qt_metadataset_create(space, &params, &md, &err), QT_EINVAL); /* no name */
  params.name = "t";
  params.max_epochs = 6;
  CU_ASSERT_EQUAL(qt_metadataset_create(space, &params, &md, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "outside 1..5"));
  CU_ASSERT_EQUAL(qt_metadataset_create("no/such/space.yaml", &params, &md, &err), QT_ENOENT);
  params.max_epochs = 2;
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_create(space, &params, &md, &err), 0);
  CU_ASSERT_EQUAL(qt_metadataset_max_epochs(md), 2);
  CU_ASSERT_STRING_EQUAL(qt_metadataset_metric(md), "score");
  size_t d;
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_add_dataset(md, "d", NULL, &d, &err), 0);
  CU_ASSERT_EQUAL(qt_metadataset_add_dataset(md, "", NULL, NULL, &err), QT_EINVAL);

  qt_config config, foreign;
  qt_space_t *other_space = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_space_load_file(space, &other_space, NULL), 0);
  CU_ASSERT_EQUAL_FATAL(qt_config_init(&config, qt_metadataset_space(md), NULL), 0);
  CU_ASSERT_EQUAL_FATAL(qt_config_init(&foreign, other_space, NULL), 0);
  qt_config_set_string(&config, "opt", "sgd", NULL);
  qt_config_set_string(&config, "lr", "0.1", NULL);
  float score[] = {0.5f, 0.6f, 0.7f}, cost[] = {1.0f, 1.0f, 1.0f};
  float bad_score[] = {0.5f, 1.5f}, nan_score[] = {NAN}, bad_cost[] = {1.0f, -1.0f};
  qt_md_run ok = {"r1", d, &config, 2, score, cost, NULL, NULL};
  CU_ASSERT_EQUAL(qt_metadataset_add_run(md, &ok, &err), 0);

  struct {
    qt_md_run run;
    int code;
    const char *part;
  } cases[] = {
      {{"r1", d, &config, 2, score, cost, NULL, NULL}, QT_EEXIST, "duplicate run id \"r1\""},
      {{"", d, &config, 2, score, cost, NULL, NULL}, QT_EINVAL, "non-empty id"},
      {{"r2", 7, &config, 2, score, cost, NULL, NULL}, QT_EINVAL, "dataset index 7"},
      {{"r2", d, &foreign, 2, score, cost, NULL, NULL}, QT_EINVAL, "meta-dataset's space"},
      {{"r2", d, &config, 3, score, cost, NULL, NULL}, QT_ERANGE, "3 epochs, outside 1..2"},
      {{"r2", d, &config, 0, score, cost, NULL, NULL}, QT_ERANGE, "0 epochs"},
      {{"r2", d, &config, 2, bad_score, cost, NULL, NULL}, QT_ERANGE, "epoch 2: score 1.5"},
      {{"r2", d, &config, 1, nan_score, cost, NULL, NULL}, QT_ERANGE, "epoch 1: score nan"},
      {{"r2", d, &config, 2, score, bad_cost, NULL, NULL}, QT_ERANGE, "epoch 2: cost -1"},
      {{"r2", d, &config, 2, NULL, cost, NULL, NULL}, QT_EINVAL, "score and cost"},
  };
  for (size_t k = 0; k < COUNT_OF(cases); k++) {
    char label[32];
    snprintf(label, sizeof label, "add_run case %zu", k);
    int rc = qt_metadataset_add_run(md, &cases[k].run, &err);
    expect_error(label, rc, &err, cases[k].code, "", cases[k].part);
  }
  /* An invalid configuration (beta while opt=sgd). */
  qt_config_set_string(&config, "beta", "0.9", NULL);
  qt_md_run invalid = {"r3", d, &config, 2, score, cost, NULL, NULL};
  expect_error("invalid config", qt_metadataset_add_run(md, &invalid, &err), &err, QT_ESCHEMA,
               "run r3", "\"beta\" has a value but is inactive");
  CU_ASSERT_EQUAL(qt_metadataset_run_count(md), 1);
  CU_ASSERT_EQUAL(qt_metadataset_point_count(md), 2);
  qt_config_free(&config);
  qt_config_free(&foreign);
  qt_space_free(other_space);
  qt_metadataset_free(md);
  remove_dir(dir);
}

/* ------------------------------------------------------------------------- */
/* The native loader: a valid folder and every kind of corruption             */
/* ------------------------------------------------------------------------- */

enum { F_YAML, F_SPACE, F_DATASETS, F_RUNS, F_CURVES, F_COUNT };
static const char *const file_names[F_COUNT] = {"metadataset.yaml", "space.yaml", "datasets.csv",
                                                "runs.csv", "curves.csv"};
static const char *const valid_files[F_COUNT] = {
    "version: 1\nname: tiny\nmetric: acc\nmax_epochs: 3\nspace: space.yaml\n",
    NULL, /* tiny_space */
    "dataset,n_samples\nd1,100\nd2,200\n",
    "run,dataset,opt,lr,beta\nr1,d1,sgd,0.1,\nr2,d2,adam,0.01,0.99\n",
    "run,epoch,score,cost_s\nr1,1,0.5,1.5\nr1,2,0.6,1.5\nr2,1,0.4,2\n",
};

/* Writes the valid folder into dir, with file `which` replaced by text
 * (NULL: left out; which = F_COUNT: no replacement). */
static void write_folder(const char *dir, int which, const char *text) {
  for (int f = 0; f < F_COUNT; f++) {
    char path[2048];
    snprintf(path, sizeof path, "%s/%s", dir, file_names[f]);
    unlink(path);
    const char *content = f == F_SPACE ? tiny_space : valid_files[f];
    if (f == which) content = text;
    if (content) write_text(dir, file_names[f], content);
  }
}

static void test_load_valid_folder(void) {
  char dir[256];
  make_temp_dir(dir, sizeof dir);
  write_folder(dir, F_COUNT, NULL);
  qt_metadataset_t *md = NULL;
  qt_err err;
  int rc = qt_metadataset_load(dir, &md, &err);
  if (rc != 0) fprintf(stderr, "\n%s\n", err.msg);
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT_STRING_EQUAL(qt_metadataset_name(md), "tiny");
  CU_ASSERT_STRING_EQUAL(qt_metadataset_metric(md), "acc");
  CU_ASSERT_STRING_EQUAL(qt_metadataset_provenance(md), "");
  CU_ASSERT_EQUAL(qt_metadataset_max_epochs(md), 3);
  CU_ASSERT_EQUAL(qt_metadataset_dataset_count(md), 2);
  CU_ASSERT_EQUAL(qt_metadataset_run_count(md), 2);
  CU_ASSERT_EQUAL(qt_metadataset_point_count(md), 3);
  CU_ASSERT_EQUAL(qt_metadataset_dataset(md, 1)->features[0], 200.0);
  const qt_md_run *r1 = qt_metadataset_run(md, 0), *r2 = qt_metadataset_run(md, 1);
  CU_ASSERT_STRING_EQUAL(r1->id, "r1");
  CU_ASSERT_EQUAL(r1->epochs, 2);
  CU_ASSERT_EQUAL(r1->score[1], 0.6f);
  CU_ASSERT_EQUAL(r1->cost[0], 1.5f);
  CU_ASSERT_PTR_NULL(r1->train_loss);
  CU_ASSERT_STRING_EQUAL(value_of(r1->config, "opt"), "sgd");
  CU_ASSERT_STRING_EQUAL(value_of(r1->config, "beta"), "");
  CU_ASSERT_STRING_EQUAL(value_of(r2->config, "beta"), "0.99");
  CU_ASSERT_EQUAL(r2->dataset, 1);
  qt_metadataset_free(md);

  /* Scaled and inverted scores, losses with gaps, columns in another order. */
  write_folder(dir, F_YAML,
               "version: 1\nname: tiny\nmetric: error\nmax_epochs: 3\nspace: space.yaml\n"
               "score_scale: 0.01\nhigher_is_better: false\nprovenance: made by hand\n");
  write_text(dir, "curves.csv",
             "epoch,run,cost_s,score,val_loss,train_loss\n1,r1,1.5,50,0.7,\n2,r1,1.5,25,,\n"
             "1,r2,2,100,,\n");
  rc = qt_metadataset_load(dir, &md, &err);
  if (rc != 0) fprintf(stderr, "\n%s\n", err.msg);
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  r1 = qt_metadataset_run(md, 0);
  r2 = qt_metadataset_run(md, 1);
  CU_ASSERT_EQUAL(r1->score[0], 0.5f);
  CU_ASSERT_EQUAL(r1->score[1], 0.75f);
  CU_ASSERT_EQUAL(r2->score[0], 0.0f);
  CU_ASSERT_PTR_NULL(r1->train_loss);
  CU_ASSERT_PTR_NOT_NULL_FATAL(r1->val_loss);
  CU_ASSERT_EQUAL(r1->val_loss[0], 0.7f);
  CU_ASSERT_TRUE(isnan(r1->val_loss[1]));
  CU_ASSERT_PTR_NULL(r2->val_loss);
  CU_ASSERT_STRING_EQUAL(qt_metadataset_provenance(md), "made by hand");
  qt_metadataset_free(md);
  remove_dir(dir);
}

typedef struct bad_folder {
  int file;         /* which file is replaced (F_*) */
  const char *text; /* its content; NULL: the file is missing */
  int code;
  const char *where; /* "file:line:" or "file:line:column:" */
  const char *part;  /* a part of the message */
} bad_folder;

#define YAML_HEAD "version: 1\nname: tiny\nmetric: acc\n"
#define RUNS_HEAD "run,dataset,opt,lr,beta\n"
#define CURVES_HEAD "run,epoch,score,cost_s\n"

static const bad_folder bad_folders[] = {
    /* metadataset.yaml */
    {F_YAML, YAML_HEAD "max_epochs: 3\nspace: space.yaml\ncolour: red\n", QT_ESCHEMA,
     "metadataset.yaml:6:1:", "unknown key \"colour\""},
    {F_YAML, "version: 2\nname: tiny\n", QT_EVERSION,
     "metadataset.yaml:1:10:", "unsupported meta-dataset version 2"},
    {F_YAML, "version: 1\nname: tiny\nmax_epochs: 3\nspace: space.yaml\n", QT_ESCHEMA,
     "metadataset.yaml:1:1:", "missing required key \"metric\""},
    {F_YAML, YAML_HEAD "max_epochs: 9\nspace: space.yaml\n", QT_ESCHEMA,
     "metadataset.yaml:4:13:", "above the fidelity max 5"},
    {F_YAML, YAML_HEAD "max_epochs: 3\nspace: space.yaml\nscore_scale: 0\n", QT_ESCHEMA,
     "metadataset.yaml:6:14:", "score_scale must be a positive number"},
    {F_YAML, YAML_HEAD "max_epochs: 3\nspace: [a]\n", QT_ESCHEMA,
     "metadataset.yaml:5:8:", "space must be a string"},
    {F_YAML, YAML_HEAD "max_epochs: 3\nspace: nowhere.yaml\n", QT_ENOENT, "nowhere.yaml",
     "the search space named by \"space\""},
    {F_YAML, YAML_HEAD "max_epochs: [3\n", QT_EPARSE, "metadataset.yaml:", ""},
    {F_YAML, NULL, QT_ENOENT, "metadataset.yaml", ""},
    /* datasets.csv */
    {F_DATASETS, "dataset,n_samples\nd1,100\nd1,200\n", QT_ESCHEMA,
     "datasets.csv:3:", "duplicate dataset \"d1\""},
    {F_DATASETS, "dataset,n_samples\nd1,100\nd2,many\n", QT_ESCHEMA,
     "datasets.csv:3:", "feature n_samples is \"many\""},
    {F_DATASETS, "name,n_samples\nd1,100\n", QT_ESCHEMA,
     "datasets.csv:1:", "the first column must be \"dataset\""},
    {F_DATASETS, "dataset,n_samples\nd1,100,7\n", QT_ESCHEMA,
     "datasets.csv:2:", "3 fields, but the header has 2 columns"},
    /* runs.csv */
    {F_RUNS, RUNS_HEAD "r1,d9,sgd,0.1,\nr2,d2,adam,0.01,0.99\n", QT_ESCHEMA,
     "runs.csv:2:", "unknown dataset \"d9\""},
    {F_RUNS, RUNS_HEAD "r1,d1,sgd,0.1,\nr1,d2,adam,0.01,0.99\n", QT_ESCHEMA,
     "runs.csv:3:", "duplicate run id \"r1\" (first on line 2)"},
    {F_RUNS, RUNS_HEAD "r1,d1,sgd,0.1,0.9\nr2,d2,adam,0.01,0.99\n", QT_ESCHEMA,
     "runs.csv:2:", "\"beta\" has a value but is inactive"},
    {F_RUNS, RUNS_HEAD "r1,d1,sgd,5,\nr2,d2,adam,0.01,0.99\n", QT_ESCHEMA,
     "runs.csv:2:", "run r1: value 5 of \"lr\" is outside the range"},
    {F_RUNS, RUNS_HEAD "r1,d1,rmsprop,0.1,\nr2,d2,adam,0.01,0.99\n", QT_ESCHEMA,
     "runs.csv:2:", "\"rmsprop\" is not one of the choices of \"opt\""},
    {F_RUNS, RUNS_HEAD "r1,d1,sgd,0.1,\nr2,d2,adam,0.01,\n", QT_ESCHEMA,
     "runs.csv:3:", "\"beta\" is active (its conditions hold) but has no value"},
    {F_RUNS, "run,dataset,opt,beta\nr1,d1,sgd,\n", QT_ESCHEMA,
     "runs.csv:1:", "missing column \"lr\""},
    {F_RUNS, "run,opt,lr,beta\nr1,sgd,0.1,\n", QT_ESCHEMA,
     "runs.csv:1:", "missing column \"dataset\""},
    {F_RUNS, RUNS_HEAD "r1,d1,sgd,0.1\n", QT_ESCHEMA,
     "runs.csv:2:", "4 fields, but the header has 5 columns"},
    {F_RUNS, "run,dataset,opt,lr,beta,gamma\n", QT_ESCHEMA,
     "runs.csv:1:", "unknown column \"gamma\""},
    {F_RUNS, RUNS_HEAD "\"r1,d1,sgd,0.1,\n", QT_EPARSE,
     "runs.csv:2:1:", "unterminated quoted field"},
    {F_RUNS, RUNS_HEAD "r1,d1,sgd,0.1,\nr2,d2,adam,0.01,0.99\nr3,d2,adam,0.01,0.9\n", QT_ESCHEMA,
     "runs.csv:4:", "run r3 has no rows in curves.csv"},
    {F_RUNS, "", QT_ESCHEMA, "runs.csv:1:", "the file is empty"},
    /* curves.csv */
    {F_CURVES, CURVES_HEAD "r1,1,0.5,1.5\nr9,1,0.6,1.5\n", QT_ESCHEMA,
     "curves.csv:3:", "unknown run \"r9\""},
    {F_CURVES, CURVES_HEAD "r1,1,0.5,1.5\nr1,3,0.6,1.5\nr2,1,0.4,2\n", QT_ESCHEMA,
     "curves.csv:3:", "epoch 3 follows epoch 1"},
    {F_CURVES, CURVES_HEAD "r1,2,0.5,1.5\nr2,1,0.4,2\n", QT_ESCHEMA,
     "curves.csv:2:", "the first row has epoch 2, not 1"},
    {F_CURVES, CURVES_HEAD "r1,1,0.5,1.5\nr2,1,0.4,2\nr1,2,0.6,1.5\n", QT_ESCHEMA,
     "curves.csv:4:", "appear again after rows of other runs"},
    {F_CURVES, CURVES_HEAD "r1,1,0.5,1.5\nr1,2,0.6,1.5\nr1,3,0.6,1.5\nr1,4,0.6,1.5\n", QT_ESCHEMA,
     "curves.csv:5:", "epoch 4 is above max_epochs 3"},
    {F_CURVES, CURVES_HEAD "r1,1,0.5,-1.5\n", QT_ESCHEMA,
     "curves.csv:2:", "cost_s \"-1.5\" is not a finite number >= 0"},
    {F_CURVES, CURVES_HEAD "r1,1,0.5,inf\n", QT_ESCHEMA,
     "curves.csv:2:", "cost_s \"inf\" is not a finite number >= 0"},
    {F_CURVES, CURVES_HEAD "r1,1,0.5,nan\n", QT_ESCHEMA,
     "curves.csv:2:", "cost_s \"nan\" is not a finite number"},
    {F_CURVES, CURVES_HEAD "r1,1,1.5,1\n", QT_ESCHEMA,
     "curves.csv:2:", "score 1.5 is outside [0, 1]"},
    {F_CURVES, CURVES_HEAD "r1,1,-0.1,1\n", QT_ESCHEMA,
     "curves.csv:2:", "score -0.1 is outside [0, 1]"},
    {F_CURVES, CURVES_HEAD "r1,1,NaN,1\n", QT_ESCHEMA,
     "curves.csv:2:", "score \"NaN\" is not a finite number"},
    {F_CURVES, CURVES_HEAD "r1,one,0.5,1\n", QT_ESCHEMA,
     "curves.csv:2:", "epoch \"one\" is not a whole number"},
    {F_CURVES, "run,epoch,score\nr1,1,0.5\n", QT_ESCHEMA,
     "curves.csv:1:", "missing column \"cost_s\""},
    {F_CURVES, "run,epoch,score,cost_s,lr\n", QT_ESCHEMA, "curves.csv:1:", "unknown column \"lr\""},
    {F_CURVES, "run,epoch,score,cost_s,score\n", QT_ESCHEMA,
     "curves.csv:1:", "duplicate column \"score\""},
    {F_CURVES, CURVES_HEAD "r1,1,0.5\n", QT_ESCHEMA,
     "curves.csv:2:", "3 fields, but the header has 4 columns"},
    {F_CURVES, "run,epoch,score,cost_s,train_loss\nr1,1,0.5,1,low\n", QT_ESCHEMA,
     "curves.csv:2:", "train_loss \"low\" is not a finite number"},
    {F_CURVES, CURVES_HEAD "r1,1,0.5,1.5\nr1,2,0.6,1.5\n", QT_ESCHEMA,
     "runs.csv:3:", "run r2 has no rows in curves.csv"},
    {F_CURVES, NULL, QT_ENOENT, "curves.csv", ""},
    /* the search space itself */
    {F_SPACE, "version: 1\nname: tiny\n", QT_ESCHEMA,
     "space.yaml:1:1:", "missing required key \"fidelity\""},
};

static void test_load_corruptions(void) {
  char dir[256];
  make_temp_dir(dir, sizeof dir);
  for (size_t k = 0; k < COUNT_OF(bad_folders); k++) {
    const bad_folder *bad = &bad_folders[k];
    write_folder(dir, bad->file, bad->text);
    /* A non-NULL start: the loader must set *out to NULL on failure. */
    static int sentinel;
    qt_metadataset_t *md = (qt_metadataset_t *)(void *)&sentinel;
    qt_err err;
    qt_err_clear(&err);
    int rc = qt_metadataset_load(dir, &md, &err);
    char label[64];
    snprintf(label, sizeof label, "corrupt folder %zu (%s)", k, file_names[bad->file]);
    expect_error(label, rc, &err, bad->code, bad->where, bad->part);
    CU_ASSERT_PTR_NULL(md);
    if (rc == 0) qt_metadataset_free(md);
  }
  remove_dir(dir);
}

/* ------------------------------------------------------------------------- */
/* Synthetic meta-datasets                                                    */
/* ------------------------------------------------------------------------- */

static void test_synthesize_load(void) {
  char space[1024], dir[256];
  space_path("quicktune-v1.yaml", space, sizeof space);
  qt_metadataset_synth_params params = qt_metadataset_synth_default_params();
  params.n_datasets = 3;
  params.runs_per_dataset = 20;
  params.min_epochs = 1;
  params.max_epochs = 12;
  params.seed = 42;
  qt_metadataset_t *md = NULL, *again = NULL, *other = NULL, *loaded = NULL;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_synthesize(space, &params, &md, &err), 0);
  CU_ASSERT_EQUAL(qt_metadataset_dataset_count(md), 3);
  CU_ASSERT_EQUAL(qt_metadataset_run_count(md), 60);
  size_t points = 0, with_losses = 0, lengths_seen[13] = {0}, invalid = 0;
  for (size_t r = 0; r < qt_metadataset_run_count(md); r++) {
    const qt_md_run *run = qt_metadataset_run(md, r);
    points += run->epochs;
    with_losses += run->train_loss != NULL;
    lengths_seen[run->epochs]++;
    invalid += qt_config_validate(run->config, NULL) != 0;
    for (size_t e = 0; e < run->epochs; e++) {
      CU_ASSERT(run->score[e] >= 0.0f && run->score[e] <= 1.0f);
      CU_ASSERT(run->cost[e] >= 0.0f);
    }
  }
  CU_ASSERT_EQUAL(points, qt_metadataset_point_count(md));
  CU_ASSERT_EQUAL(with_losses, 42); /* every third run (r % 3 == 2) has none: 14 of 20 */
  CU_ASSERT_EQUAL(invalid, 0);
  size_t distinct_lengths = 0;
  for (size_t e = 1; e <= 12; e++) distinct_lengths += lengths_seen[e] > 0;
  CU_ASSERT(distinct_lengths >= 6);

  /* Same params, same content; another seed, other content. */
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_synthesize(space, &params, &again, &err), 0);
  CU_ASSERT_EQUAL(qt_metadataset_compare(md, again, &err), 0);
  params.seed = 43;
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_synthesize(space, &params, &other, &err), 0);
  CU_ASSERT_EQUAL(qt_metadataset_compare(md, other, &err), QT_ESCHEMA);

  make_temp_dir(dir, sizeof dir);
  CU_ASSERT_EQUAL(qt_metadataset_save(md, dir, &err), 0);
  int rc = qt_metadataset_load(dir, &loaded, &err);
  if (rc != 0) fprintf(stderr, "\nload: %s\n", err.msg);
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  rc = qt_metadataset_compare(md, loaded, &err);
  if (rc != 0) fprintf(stderr, "\ncompare: %s\n", err.msg);
  CU_ASSERT_EQUAL(rc, 0);

  qt_metadataset_t *refused = NULL;
  params.max_epochs = 60; /* above the fidelity max 50 of quicktune-v1 */
  CU_ASSERT_EQUAL(qt_metadataset_synthesize(space, &params, &refused, &err), QT_EINVAL);
  params.max_epochs = 12;
  params.min_epochs = 0;
  CU_ASSERT_EQUAL(qt_metadataset_synthesize(space, &params, &refused, &err), QT_EINVAL);
  CU_ASSERT_PTR_NULL(refused);
  qt_metadataset_free(md);
  qt_metadataset_free(again);
  qt_metadataset_free(other);
  qt_metadataset_free(loaded);
  remove_dir(dir);
}

/* ------------------------------------------------------------------------- */
/* The importer on hand-made folders                                          */
/* ------------------------------------------------------------------------- */

static const char *const qt_tiny_space =
    "version: 1\n"
    "name: tinyqt\n"
    "fidelity: {name: epochs, min: 1, max: 5}\n"
    "hyperparameters:\n"
    "  opt: {type: categorical, choices: [sgd, adam]}\n"
    "  betas:\n"
    "    type: categorical\n"
    "    choices: [\"[0.9, 0.999]\", \"[0.0, 0.99]\"]\n"
    "    active_when: {opt: [adam]}\n"
    "  sched: {type: categorical, choices: [None, cosine, step]}\n"
    "  decay_epochs: {type: ordinal, choices: [10, 20], active_when: {sched: [step]}}\n"
    "  clip_grad: {type: categorical, choices: [None, 1, 10]}\n"
    "  lr: {type: ordinal, choices: [0.01, 0.001]}\n";

enum { Q_PERF, Q_COST, Q_TABLE, Q_DESCRIPTORS, Q_COUNT };
static const char *const qt_file_names[Q_COUNT] = {"perf.json", "cost.json", "table.csv",
                                                   "descriptors.json"};
#define TABLE_HEAD                                                                     \
  ",cat:betas:None,\"cat:betas:[0.0, 0.99]\",\"cat:betas:[0.9, 0.999]\",cat:opt:adam," \
  "cat:opt:sgd,cat:sched:cosine,cat:sched:step,clip_grad,decay_epochs,lr\n"
#define ROW_101 "101,1,0,0,0,1,0,0,-1.0,90.0,0.01\n"
#define ROW_102 "102,0,1,0,1,0,0,1,10.0,20.0,0.001\n"
#define ROW_103 "103,0,0,1,1,0,1,0,1.0,90.0,0.001\n"
#define ROW_104 "104,1,0,0,0,1,0,0,-1.0,90.0,0.01\n"
static const char *const qt_valid_files[Q_COUNT] = {
    "{\"D1\": {\"101\": [50.0, 60.0], \"102\": [10, NaN, 30], \"104\": [NaN]},\n"
    " \"D2\": {\"103\": [70.5, 71.25, 72.0]},\n"
    " \"info\": {\"version\": \"tiny\", \"description\": \"hand-made\"}}\n",
    "{\"D1\": {\"101\": [1.5, 1.5], \"102\": [2, 2, 2], \"104\": [3]},\n"
    " \"D2\": {\"103\": [4, 4.5, 5]}}\n",
    TABLE_HEAD ROW_101 ROW_102 ROW_103 ROW_104,
    "{\"D1\": [100, 10, 32, 3], \"D2\": [200, 20, 64, 1], \"D3\": [1, 1, 1, 1]}\n",
};

static void write_quicktune_folder(const char *dir, int which, const char *text) {
  write_text(dir, "space.yaml", qt_tiny_space);
  for (int f = 0; f < Q_COUNT; f++) {
    char path[2048];
    snprintf(path, sizeof path, "%s/%s", dir, qt_file_names[f]);
    unlink(path);
    const char *content = f == which ? text : qt_valid_files[f];
    if (content) write_text(dir, qt_file_names[f], content);
  }
}

static int import_folder(const char *dir, qt_metadataset_t **md, qt_err *err) {
  char space[512];
  snprintf(space, sizeof space, "%s/space.yaml", dir);
  qt_err_clear(err);
  return qt_metadataset_import_quicktune(dir, space, md, err);
}

static void test_import_hand_made(void) {
  char dir[256];
  make_temp_dir(dir, sizeof dir);
  write_quicktune_folder(dir, Q_COUNT, NULL);
  qt_metadataset_t *md = NULL;
  qt_err err;
  int rc = import_folder(dir, &md, &err);
  if (rc != 0) fprintf(stderr, "\nimport: %s\n", err.msg);
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT_STRING_EQUAL(qt_metadataset_name(md), "quicktune-tiny");
  CU_ASSERT_EQUAL(qt_metadataset_max_epochs(md), 5);
  /* D3 has descriptors but no runs: not imported. Run 104 diverged in its
   * first epoch: left out. Run 102 diverged in its second: one epoch. */
  CU_ASSERT_EQUAL(qt_metadataset_dataset_count(md), 2);
  CU_ASSERT_EQUAL(qt_metadataset_run_count(md), 3);
  CU_ASSERT_EQUAL(qt_metadataset_point_count(md), 6);
  CU_ASSERT_EQUAL(qt_metadataset_find_run(md, "104", NULL), QT_ENOENT);
  CU_ASSERT_EQUAL(qt_metadataset_dataset(md, 1)->features[2], 64.0);

  size_t r;
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_find_run(md, "101", &r), 0);
  const qt_md_run *run = qt_metadataset_run(md, r);
  CU_ASSERT_EQUAL(run->epochs, 2);
  CU_ASSERT_EQUAL(run->score[0], 0.5f);
  CU_ASSERT_EQUAL(run->score[1], 0.6f);
  CU_ASSERT_EQUAL(run->cost[1], 1.5f);
  /* cat:betas:None is a filler, no sched column means None, -1.0 is None,
   * decay_epochs 90.0 is a filler pruned with sched=None. */
  CU_ASSERT_STRING_EQUAL(value_of(run->config, "opt"), "sgd");
  CU_ASSERT_STRING_EQUAL(value_of(run->config, "betas"), "");
  CU_ASSERT_STRING_EQUAL(value_of(run->config, "sched"), "None");
  CU_ASSERT_STRING_EQUAL(value_of(run->config, "decay_epochs"), "");
  CU_ASSERT_STRING_EQUAL(value_of(run->config, "clip_grad"), "None");
  CU_ASSERT_STRING_EQUAL(value_of(run->config, "lr"), "0.01");

  CU_ASSERT_EQUAL_FATAL(qt_metadataset_find_run(md, "102", &r), 0);
  run = qt_metadataset_run(md, r);
  CU_ASSERT_EQUAL(run->epochs, 1);
  CU_ASSERT_EQUAL(run->score[0], 0.1f);
  CU_ASSERT_EQUAL(run->cost[0], 2.0f);
  CU_ASSERT_STRING_EQUAL(value_of(run->config, "opt"), "adam");
  CU_ASSERT_STRING_EQUAL(value_of(run->config, "betas"), "[0.0, 0.99]");
  CU_ASSERT_STRING_EQUAL(value_of(run->config, "sched"), "step");
  CU_ASSERT_STRING_EQUAL(value_of(run->config, "decay_epochs"), "20");
  CU_ASSERT_STRING_EQUAL(value_of(run->config, "clip_grad"), "10");
  CU_ASSERT_STRING_EQUAL(value_of(run->config, "lr"), "0.001");

  CU_ASSERT_EQUAL_FATAL(qt_metadataset_find_run(md, "103", &r), 0);
  run = qt_metadataset_run(md, r);
  CU_ASSERT_EQUAL(run->dataset, 1);
  CU_ASSERT_EQUAL(run->epochs, 3);
  CU_ASSERT_EQUAL(run->score[1], (float)(71.25 / 100.0));
  CU_ASSERT_EQUAL(run->cost[1], 4.5f);
  CU_ASSERT_STRING_EQUAL(value_of(run->config, "betas"), "[0.9, 0.999]");
  CU_ASSERT_STRING_EQUAL(value_of(run->config, "sched"), "cosine");
  CU_ASSERT_STRING_EQUAL(value_of(run->config, "clip_grad"), "1");
  qt_metadataset_free(md);
  remove_dir(dir);
}

#define PERF_TAIL " \"D2\": {\"103\": [70.5, 71.25, 72.0]}}\n"
/* The rest of D1 after a replaced run 101, so that only 101 changes. */
#define PERF_REST ", \"102\": [10, NaN, 30], \"104\": [NaN]},\n" PERF_TAIL
#define COST_TAIL " \"D2\": {\"103\": [4, 4.5, 5]}}\n"

typedef struct bad_import {
  int file;
  const char *text;
  int code;
  const char *where;
  const char *part;
} bad_import;

static const bad_import bad_imports[] = {
    {Q_PERF, NULL, QT_ENOENT, "perf.json", "No such file"},
    {Q_DESCRIPTORS, NULL, QT_ENOENT, "descriptors.json", ""},
    {Q_PERF, "{\"D1\": {\"101\": [50.0, 60.0}}\n", QT_EPARSE, "perf.json:1:", ""},
    {Q_COST, "[1, 2]\n", QT_ESCHEMA, "cost.json", "expected a JSON object"},
    {Q_PERF, "{\"D1\": {\"101\": [50.0, 60.0], \"999\": [1]" PERF_REST, QT_ESCHEMA,
     "perf.json: run 999 of dataset D1 is not in", "table.csv"},
    {Q_COST, "{\"D1\": {\"101\": [1.5, 1.5], \"102\": [2, 2, 2], \"104\": [3]},\n \"D2\": {}}\n",
     QT_ESCHEMA, "cost.json: run 103 of dataset D2 is in", "but not here"},
    {Q_COST, "{\"D1\": {\"101\": [1.5, 1.5], \"102\": [2, 2, 2], \"104\": [3]}}\n", QT_ESCHEMA,
     "cost.json: dataset D2 is in", "but not here"},
    {Q_COST, "{\"D1\": {\"101\": [1.5], \"102\": [2, 2, 2], \"104\": [3]},\n" COST_TAIL, QT_ESCHEMA,
     "dataset D1, run 101:", "has 2 epochs but"},
    {Q_COST,
     "{\"D1\": {\"101\": [1.5, 1.5], \"102\": [2, 2, 2], \"104\": [3], \"555\": [1]},\n" COST_TAIL,
     QT_ESCHEMA, "cost.json: run 555 of dataset D1 is not in", "perf.json"},
    {Q_PERF, "{\"D1\": {\"101\": [50.0, \"x\"]" PERF_REST, QT_ESCHEMA,
     "perf.json: dataset D1, run 101, epoch 2:", "expected a number, got a string"},
    {Q_PERF, "{\"D1\": {\"101\": [50.0, 160.0]" PERF_REST, QT_ESCHEMA,
     "perf.json: dataset D1, run 101, epoch 2:", "accuracy 160% is outside [0, 100]"},
    {Q_PERF, "{\"D1\": {\"101\": 50.0" PERF_REST, QT_ESCHEMA,
     "perf.json: dataset D1, run 101:", "expected an array, got a number"},
    {Q_COST, "{\"D1\": {\"101\": [1.5, -1.5], \"102\": [2, 2, 2], \"104\": [3]},\n" COST_TAIL,
     QT_ESCHEMA, "cost.json: dataset D1, run 101, epoch 2:", "the cost must be seconds >= 0"},
    {Q_COST, "{\"D1\": {\"101\": [1.5, null], \"102\": [2, 2, 2], \"104\": [3]},\n" COST_TAIL,
     QT_ESCHEMA, "cost.json: dataset D1, run 101, epoch 2:", "got a missing value"},
    {Q_DESCRIPTORS, "{\"D1\": [100, 10, 32, 3]}\n", QT_ESCHEMA,
     "descriptors.json:", "no descriptors for dataset D2"},
    {Q_DESCRIPTORS, "{\"D1\": [100, 10, 32], \"D2\": [200, 20, 64, 1]}\n", QT_ESCHEMA,
     "descriptors.json: dataset D1:", "expected [n_samples, n_classes, image_size, channels]"},
    {Q_TABLE, TABLE_HEAD "101,1,0,0,0,1,0,0,-1.0,90.0,abc\n" ROW_102 ROW_103 ROW_104, QT_ESCHEMA,
     "table.csv:2:", "run 101: column \"lr\" holds \"abc\", not a number"},
    {Q_TABLE, TABLE_HEAD "101,1,0,0,1,1,0,0,-1.0,90.0,0.01\n" ROW_102 ROW_103 ROW_104, QT_ESCHEMA,
     "table.csv:2:",
     "two columns of the one-hot group of opt are 1 (\"cat:opt:adam\" and "
     "\"cat:opt:sgd\")"},
    {Q_TABLE, TABLE_HEAD "101,1,0,0,0,1,0,0,-1.0,90.0,0.01\n102,0,1,0,1,0,0,1,10.0,90.0,0.001\n",
     QT_ESCHEMA, "table.csv:3:",
     "run 102: column \"decay_epochs\" holds 90.0, which is not a value of decay_epochs"},
    {Q_TABLE, TABLE_HEAD "101,1,0,0,0,1,0,0,-1.0,90.0,0.05\n", QT_ESCHEMA,
     "table.csv:2:", "column \"lr\": \"0.05\" is not one of the choices of \"lr\""},
    {Q_TABLE, TABLE_HEAD "101,1,0,0,0,2,0,0,-1.0,90.0,0.01\n", QT_ESCHEMA,
     "table.csv:2:", "one-hot column \"cat:opt:sgd\" holds 2, not 0 or 1"},
    {Q_TABLE, TABLE_HEAD "101,1,0,0,0,0,0,0,-1.0,90.0,0.01\n", QT_ESCHEMA,
     "table.csv:2:", "\"opt\" is active but has no value"},
    {Q_TABLE, TABLE_HEAD "101,1,0,0,0,1,0,0,-1.0,90.0\n", QT_ESCHEMA,
     "table.csv:2:", "10 fields, but the header has 11 columns"},
    {Q_TABLE, TABLE_HEAD ROW_101 ROW_101, QT_ESCHEMA, "table.csv:3:", "duplicate run id \"101\""},
    {Q_TABLE,
     ",cat:opt:rmsprop,cat:opt:sgd,cat:sched:step,clip_grad,decay_epochs,lr,cat:betas:None\n",
     QT_ESCHEMA, "table.csv:1:", "unknown one-hot column \"cat:opt:rmsprop\""},
    {Q_TABLE, ",cat:optimizer:sgd\n", QT_ESCHEMA,
     "table.csv:1:", "search space \"tinyqt\" has no hyperparameter \"optimizer\""},
    {Q_TABLE, ",cat:opt:sgd,foo\n", QT_ESCHEMA, "table.csv:1:", "unknown column \"foo\""},
    {Q_TABLE, ",cat:opt:sgd,cat:opt:adam,cat:sched:step,clip_grad,decay_epochs\n", QT_ESCHEMA,
     "table.csv:1:", "no column sets hyperparameter \"betas\""},
};

static void test_import_corruptions(void) {
  char dir[256];
  make_temp_dir(dir, sizeof dir);
  for (size_t k = 0; k < COUNT_OF(bad_imports); k++) {
    const bad_import *bad = &bad_imports[k];
    write_quicktune_folder(dir, bad->file, bad->text);
    qt_metadataset_t *md = NULL;
    qt_err err;
    int rc = import_folder(dir, &md, &err);
    char label[64];
    snprintf(label, sizeof label, "corrupt import %zu (%s)", k, qt_file_names[bad->file]);
    expect_error(label, rc, &err, bad->code, bad->where, bad->part);
    CU_ASSERT_PTR_NULL(md);
    if (rc == 0) qt_metadataset_free(md);
  }
  remove_dir(dir);
}

/* NaN is rewritten before parsing without moving any column: a syntax
 * error after a NaN is reported where jansson reports it with a number of
 * the same width in its place. */
static void test_import_nan_keeps_columns(void) {
  char dir[256];
  make_temp_dir(dir, sizeof dir);
  const char *with_nan = "{\"D1\": {\"101\": [NaN, -Infinity, 60.0 60]}}\n";
  const char *with_numbers = "{\"D1\": {\"101\": [1.0, -1.000000, 60.0 60]}}\n";
  write_quicktune_folder(dir, Q_PERF, with_nan);
  qt_metadataset_t *md = NULL;
  qt_err err, expected;
  CU_ASSERT_EQUAL(import_folder(dir, &md, &err), QT_EPARSE);
  char path[512];
  snprintf(path, sizeof path, "%s/perf.json", dir);
  json_t *root = NULL;
  CU_ASSERT_EQUAL(qt_json_load_string(with_numbers, strlen(with_numbers), path, &root, &expected),
                  QT_EPARSE);
  /* Compare "path:line:column:" only. */
  size_t prefix = strlen(path) + 1;
  const char *end = strchr(expected.msg + prefix, ' ');
  CU_ASSERT_PTR_NOT_NULL_FATAL(end);
  size_t length = (size_t)(end - expected.msg);
  if (strncmp(err.msg, expected.msg, length) != 0)
    fprintf(stderr, "\n%s\nvs\n%s\n", err.msg, expected.msg);
  CU_ASSERT_EQUAL(strncmp(err.msg, expected.msg, length), 0);
  remove_dir(dir);
}

/* ------------------------------------------------------------------------- */

static const qt_test_case cases[] = {
    {"import Quick-Tune: 18 datasets, 3239 runs, 97388 points", test_import_counts},
    {"import Quick-Tune: values against the JSON", test_import_spot_check},
    {"import Quick-Tune: save and load give the same content", test_import_round_trip},
    {"build, save, load: tricky names, grouping, losses", test_build_save_load},
    {"builder refuses bad runs", test_builder_checks},
    {"load a valid hand-made folder", test_load_valid_folder},
    {"load: every corruption names file:line", test_load_corruptions},
    {"synthesize, save, load", test_synthesize_load},
    {"import a hand-made Quick-Tune folder", test_import_hand_made},
    {"import: every corruption names the file", test_import_corruptions},
    {"import: NaN rewriting keeps JSON columns", test_import_nan_keeps_columns},
    {NULL, NULL},
};

QT_TEST_MAIN("metadataset", cases)

/*
 * test_collect.c - `qtune meta collect` (src/bo/qt_collect.c) on a tiny
 * synthetic setup:
 *
 *   - 2 tasks x 2 runs x 2 epochs give a meta-dataset that loads back with
 *     qt_metadataset_load: 2 datasets with the pool's meta-features, every
 *     run with 2 epochs, scores in [0, 1], costs >= 0, and no configuration
 *     the engine cannot run (opt adamp, refused by the run spec, and
 *     GOODFIT with LoRA, refused by qt_run_init, are replaced by other
 *     draws);
 *   - collecting again with every part present computes nothing and writes
 *     the same meta-dataset; a deleted part (a run killed before its part
 *     was renamed into place) is the only run computed again, with the same
 *     configuration and scores;
 *   - two worker processes give the same configurations and scores as one;
 *   - other settings on the same folder, and a bad task file, are refused.
 *
 * Fixtures (made in a temporary folder): 8x8 grayscale IDX images of three
 * patterns, a random tiny ViT (patch 4, width 16, depth 1, 2 heads) saved
 * as a timm checkpoint, a hub with two copies of it and a MobileNetV2
 * entry whose checkpoint is missing (left out), a small space with a conditional hyperparameter.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bo/qt_bo.h"
#include "finetune/qt_finetune.h"
#include "qt_test.h"
#include "qt_test_tiny.h"

/* ------------------------------------------------------------------------- */
/* Fixtures                                                                   */
/* ------------------------------------------------------------------------- */

static char hub_path[512], space_path[512], task_a[512], task_b[512];

/* After the two tiny ViTs of qt_tiny_write_hub. */
static const char *hub_more =
    "  - {name: cnn, family: mobilenetv2, checkpoint: missing.safetensors, image_size: 8,\n"
    "     mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5], num_classes: 5}\n";

static const char *space_text =
    "version: 1\n"
    "name: tiny\n"
    "fidelity: {name: epochs, min: 1, max: 4}\n"
    "hyperparameters:\n"
    "  model: {type: categorical, choices: [placeholder]}\n"
    "  opt: {type: categorical, choices: [sgd, momentum, adamw, goodfit, adamp], default: adamw}\n"
    "  adapter: {type: categorical, choices: [none, lora], default: none}\n"
    "  momentum: {type: ordinal, choices: [0.8, 0.9], active_when: {opt: momentum}}\n"
    "  lr: {type: float, range: [1.0e-3, 3.0e-2], log: true}\n"
    "  batch_size: {type: ordinal, choices: [8, 16]}\n"
    "  data_augmentation: {type: categorical, choices: [none]}\n"
    "  smoothing: {type: float, range: [0, 0.2]}\n";

static void make_fixtures(void) {
  if (hub_path[0]) return;
  qt_log_set_level(QT_LOG_LEVEL_ERROR);
  char path[1024];
  qt_test_temp_path("data-a", path, sizeof path);
  qt_tiny_write_idx(path, 60, 8, 1);
  qt_test_temp_path("data-b", path, sizeof path);
  qt_tiny_write_idx(path, 90, 8, 2);
  qt_tiny_write_hub(qt_test_temp_path("hub", path, sizeof path), hub_more, hub_path,
                    sizeof hub_path);
  qt_test_temp_path("space.yaml", space_path, sizeof space_path);
  qt_tiny_write_file(space_path, space_text, strlen(space_text));
  /* Task files with data: paths relative to their folder. */
  qt_test_temp_path("tasks", path, sizeof path);
  CU_ASSERT_FATAL(qt_mkdir_p(path, NULL) == 0);
  static const char *a =
      "version: 1\nname: patterns-60\nsource: synthetic\nper_class: 20\n"
      "seed: 1\ndata: ../data-a\n";
  static const char *b =
      "version: 1\nname: patterns-90\nsource: synthetic\nper_class: 30\n"
      "seed: 2\ndata: ../data-b\n";
  qt_test_temp_path("tasks/patterns-60.yaml", task_a, sizeof task_a);
  qt_tiny_write_file(task_a, a, strlen(a));
  qt_test_temp_path("tasks/patterns-90.yaml", task_b, sizeof task_b);
  qt_tiny_write_file(task_b, b, strlen(b));
}

static const char *task_files[2] = {task_a, task_b};

static qt_collect_params base_params(const char *name, char *out_dir, size_t size) {
  make_fixtures();
  qt_test_temp_path(name, out_dir, size);
  qt_collect_params p = qt_collect_default_params();
  p.hub = hub_path;
  p.space = space_path;
  p.tasks = task_files;
  p.task_count = 2;
  p.runs_per_task = 2;
  p.max_epochs = 2;
  p.out_dir = out_dir;
  p.seed = 7;
  return p;
}

/* The first collection of `name` (computed once, reused by the tests). */
static void collect_once(const char *name, int jobs, char *out_dir, size_t size,
                         qt_collect_result *r) {
  qt_collect_params p = base_params(name, out_dir, size);
  p.jobs = jobs;
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_collect_run(&p, r, &err);
  if (rc != 0) fprintf(stderr, "collect: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
}

/* ------------------------------------------------------------------------- */
/* Tests                                                                      */
/* ------------------------------------------------------------------------- */

static void test_collect_writes_metadataset(void) {
  char out[512];
  qt_collect_result r;
  collect_once("one", 1, out, sizeof out, &r);
  CU_ASSERT_EQUAL(r.runs_total, 4);
  CU_ASSERT_EQUAL(r.runs_computed, 4);
  CU_ASSERT_EQUAL(r.runs_reused, 0);
  CU_ASSERT_EQUAL(r.runs_kept + r.runs_failed + r.runs_empty, 4);
  CU_ASSERT_EQUAL(r.runs_failed, 0);
  CU_ASSERT(r.runs_kept >= 3);

  qt_metadataset_t *md = NULL;
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_metadataset_load(out, &md, &err);
  if (rc != 0) fprintf(stderr, "load: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT_EQUAL(qt_metadataset_dataset_count(md), 2);
  CU_ASSERT_EQUAL(qt_metadataset_run_count(md), (size_t)r.runs_kept);
  CU_ASSERT_EQUAL(qt_metadataset_max_epochs(md), 2);
  CU_ASSERT_EQUAL(qt_metadataset_point_count(md), r.points);
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_feature_count(md), 4);
  CU_ASSERT_STRING_EQUAL(qt_metadataset_feature_name(md, 0), "n_samples");
  CU_ASSERT_STRING_EQUAL(qt_metadataset_feature_name(md, 3), "channels");
  for (size_t d = 0; d < 2; d++) {
    const qt_md_dataset *ds = qt_metadataset_dataset(md, d);
    CU_ASSERT(ds->features[0] > 0 && ds->features[0] < (d == 0 ? 60 : 90)); /* validation carved */
    CU_ASSERT_EQUAL(ds->features[1], 3);
    CU_ASSERT_EQUAL(ds->features[2], 8);
    CU_ASSERT_EQUAL(ds->features[3], 1);
  }
  size_t dataset;
  CU_ASSERT_EQUAL(qt_metadataset_find_dataset(md, "patterns-90", &dataset), 0);
  const qt_space_t *space = qt_metadataset_space(md);
  size_t model_hp, opt_hp, adapter_hp;
  CU_ASSERT_EQUAL_FATAL(qt_space_find(space, "model", &model_hp), 0);
  CU_ASSERT_EQUAL_FATAL(qt_space_find(space, "opt", &opt_hp), 0);
  CU_ASSERT_EQUAL_FATAL(qt_space_find(space, "adapter", &adapter_hp), 0);
  /* The hub's usable models only. */
  CU_ASSERT_EQUAL(qt_space_hp_choice_count(space, model_hp), 2);
  for (size_t i = 0; i < qt_metadataset_run_count(md); i++) {
    const qt_md_run *run = qt_metadataset_run(md, i);
    CU_ASSERT(run->epochs >= 1 && run->epochs <= 2);
    for (size_t e = 0; e < run->epochs; e++) {
      CU_ASSERT(run->score[e] >= 0.0f && run->score[e] <= 1.0f);
      CU_ASSERT(run->cost[e] >= 0.0f && isfinite(run->cost[e]));
    }
    CU_ASSERT(run->train_loss != NULL);
    /* AdamP cannot run yet: such draws are replaced. */
    CU_ASSERT_NOT_EQUAL(qt_config_index(run->config, opt_hp), 4);
    /* Nor GOODFIT with adapters, which only qt_run_init refuses. */
    CU_ASSERT(!(qt_config_index(run->config, opt_hp) == 3 &&
                qt_config_index(run->config, adapter_hp) == 1));
  }
  qt_metadataset_free(md);
}

/* Reads one meta-dataset or fails the test. */
static qt_metadataset_t *load(const char *dir) {
  qt_metadataset_t *md = NULL;
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_metadataset_load(dir, &md, &err);
  if (rc != 0) fprintf(stderr, "load %s: %s\n", dir, qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  return md;
}

/* Same runs, configurations and scores (costs are wall-clock seconds). */
static void assert_same_runs(const qt_metadataset_t *a, const qt_metadataset_t *b) {
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_run_count(a), qt_metadataset_run_count(b));
  for (size_t i = 0; i < qt_metadataset_run_count(a); i++) {
    const qt_md_run *x = qt_metadataset_run(a, i), *y = qt_metadataset_run(b, i);
    CU_ASSERT_STRING_EQUAL(x->id, y->id);
    char cx[2048], cy[2048]; /* configurations of two spaces: compared as text */
    qt_config_format(x->config, cx, sizeof cx);
    qt_config_format(y->config, cy, sizeof cy);
    CU_ASSERT_STRING_EQUAL(cx, cy);
    CU_ASSERT_EQUAL_FATAL(x->epochs, y->epochs);
    for (size_t e = 0; e < x->epochs; e++) CU_ASSERT_EQUAL(x->score[e], y->score[e]);
  }
}

static void test_rerun_skips_finished_parts(void) {
  char out[512], path[1024];
  qt_collect_result r;
  collect_once("rerun", 1, out, sizeof out, &r);
  qt_metadataset_t *first = load(out);

  /* Everything present: nothing is computed, the same folder is written. */
  qt_collect_params p = base_params("rerun", out, sizeof out);
  qt_err err;
  qt_err_clear(&err);
  CU_ASSERT_EQUAL_FATAL(qt_collect_run(&p, &r, &err), 0);
  CU_ASSERT_EQUAL(r.runs_computed, 0);
  CU_ASSERT_EQUAL(r.runs_reused, 4);
  qt_metadataset_t *second = load(out);
  CU_ASSERT_EQUAL(qt_metadataset_compare(first, second, &err), 0);
  qt_metadataset_free(second);

  /* A run killed before its part was renamed into place: its temporary
   * file lingers and the part is missing. Only that run is computed again,
   * to the same configuration and scores. */
  snprintf(path, sizeof path, "%s/parts/patterns-90/1.csv", out);
  CU_ASSERT_EQUAL_FATAL(unlink(path), 0);
  snprintf(path, sizeof path, "%s/parts/patterns-90/1.csv.tmp.99999", out);
  qt_tiny_write_file(path, "epoch,sco", 9);
  CU_ASSERT_EQUAL_FATAL(qt_collect_run(&p, &r, &err), 0);
  CU_ASSERT_EQUAL(r.runs_computed, 1);
  CU_ASSERT_EQUAL(r.runs_reused, 3);
  second = load(out);
  assert_same_runs(first, second);
  qt_metadataset_free(second);
  qt_metadataset_free(first);
}

/* assemble_only runs nothing: a collection asked for more runs than it has
 * is written from the runs present, the rest counted as missing. */
static void test_assemble_only(void) {
  char out[512];
  qt_collect_result r;
  collect_once("assemble", 1, out, sizeof out, &r);
  qt_metadataset_t *first = load(out);
  qt_collect_params p = base_params("assemble", out, sizeof out);
  p.runs_per_task = 5;
  p.assemble_only = 1;
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_collect_run(&p, &r, &err);
  if (rc != 0) fprintf(stderr, "assemble: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT_EQUAL(r.runs_total, 10);
  CU_ASSERT_EQUAL(r.runs_computed, 0);
  CU_ASSERT_EQUAL(r.runs_reused, 4);
  CU_ASSERT_EQUAL(r.runs_missing, 6);
  char path[1024];
  snprintf(path, sizeof path, "%s/parts/patterns-60/2.csv", out);
  CU_ASSERT_NOT_EQUAL(access(path, F_OK), 0);
  qt_metadataset_t *second = load(out);
  assert_same_runs(first, second);
  qt_metadataset_free(second);
  qt_metadataset_free(first);
}

static void test_jobs_give_the_same_runs(void) {
  char one[512], two[512];
  qt_collect_result r1, r2;
  collect_once("jobs-1", 1, one, sizeof one, &r1);
  collect_once("jobs-2", 2, two, sizeof two, &r2);
  CU_ASSERT_EQUAL(r2.runs_computed, 4);
  qt_metadataset_t *a = load(one), *b = load(two);
  assert_same_runs(a, b);
  qt_metadataset_free(a);
  qt_metadataset_free(b);
}

static void test_other_settings_are_refused(void) {
  char out[512];
  qt_collect_result r;
  collect_once("settings", 1, out, sizeof out, &r);
  qt_collect_params p = base_params("settings", out, sizeof out);
  p.max_epochs = 3;
  qt_err err;
  qt_err_clear(&err);
  CU_ASSERT_EQUAL(qt_collect_run(&p, &r, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(qt_err_message(&err), "other settings"));
  p.max_epochs = 2;
  p.seed = 8;
  CU_ASSERT_EQUAL(qt_collect_run(&p, &r, &err), QT_EINVAL);
  /* A space over other models. */
  p.seed = 7;
  char hub2[1024], *text = NULL;
  size_t length = 0;
  CU_ASSERT_FATAL(qt_file_read(hub_path, &text, &length, NULL) == 0);
  qt_test_temp_path("hub/hub2.yaml", hub2, sizeof hub2);
  qt_tiny_write_file(hub2, text, (size_t)(strstr(text, "  - {name: tiny_b") - text));
  free(text);
  p.hub = hub2;
  CU_ASSERT_EQUAL(qt_collect_run(&p, &r, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(qt_err_message(&err), "another space or hub"));
  /* More epochs than the space allows. */
  p.hub = hub_path;
  p.max_epochs = 5;
  CU_ASSERT_EQUAL(qt_collect_run(&p, &r, &err), QT_EINVAL);
  /* CUDA: one job only; no device here, or (with one) a collection timed
   * on the CPU is not continued on it. */
  p.max_epochs = 2;
  p.cuda = 1;
  p.jobs = 2;
  CU_ASSERT_EQUAL(qt_collect_run(&p, &r, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(qt_err_message(&err), "one job"));
  p.jobs = 1;
  int gpus = 0;
  qt_cuda_device_count(&gpus, NULL);
  CU_ASSERT_EQUAL(qt_collect_run(&p, &r, &err), gpus ? QT_EINVAL : QT_ENODEV);
  if (gpus) CU_ASSERT_PTR_NOT_NULL(strstr(qt_err_message(&err), "the device must match"));
}

static void test_bad_task_file(void) {
  char out[512], path[1024];
  qt_collect_params p = base_params("bad-task", out, sizeof out);
  qt_test_temp_path("bad-task.yaml", path, sizeof path);
  static const char *text = "version: 1\nname: x\ncolour: red\n";
  qt_tiny_write_file(path, text, strlen(text));
  const char *files[1] = {path};
  p.tasks = files;
  p.task_count = 1;
  qt_collect_result r;
  qt_err err;
  qt_err_clear(&err);
  CU_ASSERT_EQUAL(qt_collect_run(&p, &r, &err), QT_ESCHEMA);
  CU_ASSERT_PTR_NOT_NULL(strstr(qt_err_message(&err), "colour"));
  static const char *v2 = "version: 2\nname: x\n";
  qt_tiny_write_file(path, v2, strlen(v2));
  CU_ASSERT_EQUAL(qt_collect_run(&p, &r, &err), QT_EVERSION);
  /* Two tasks with one name. */
  const char *same[2] = {task_a, task_a};
  p.tasks = same;
  p.task_count = 2;
  CU_ASSERT_EQUAL(qt_collect_run(&p, &r, &err), QT_EINVAL);
}

/* GOODFIT with LoRA passes the run spec and is refused by qt_run_init only
 * (QT_ENOTIMPL): such draws are replaced, never recorded as failed runs. */
static void test_unstartable_draws_are_redrawn(void) {
  char out[512], path[1024];
  qt_collect_params p = base_params("redraw", out, sizeof out);
  static const char *text =
      "version: 1\n"
      "name: goodfit\n"
      "fidelity: {name: epochs, min: 1, max: 4}\n"
      "hyperparameters:\n"
      "  model: {type: categorical, choices: [placeholder]}\n"
      "  opt: {type: categorical, choices: [goodfit]}\n"
      "  adapter: {type: categorical, choices: [none, lora]}\n"
      "  lr: {type: float, range: [1.0e-3, 3.0e-2], log: true}\n"
      "  batch_size: {type: ordinal, choices: [16]}\n"
      "  data_augmentation: {type: categorical, choices: [none]}\n";
  qt_test_temp_path("space-goodfit.yaml", path, sizeof path);
  qt_tiny_write_file(path, text, strlen(text));
  p.space = path;
  p.task_count = 1;
  p.runs_per_task = 6;
  p.max_epochs = 1;
  qt_collect_result r;
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_collect_run(&p, &r, &err);
  if (rc != 0) fprintf(stderr, "collect: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT_EQUAL(r.runs_failed, 0);
  qt_metadataset_t *md = load(out);
  size_t adapter_hp;
  CU_ASSERT_EQUAL_FATAL(qt_space_find(qt_metadataset_space(md), "adapter", &adapter_hp), 0);
  CU_ASSERT_EQUAL(qt_metadataset_run_count(md), (size_t)r.runs_kept);
  for (size_t i = 0; i < qt_metadataset_run_count(md); i++)
    CU_ASSERT_EQUAL(qt_config_index(qt_metadataset_run(md, i)->config, adapter_hp), 0);
  qt_metadataset_free(md);
}

static const qt_test_case cases[] = {
    {"collect_writes_metadataset", test_collect_writes_metadataset},
    {"rerun_skips_finished_parts", test_rerun_skips_finished_parts},
    {"jobs_give_the_same_runs", test_jobs_give_the_same_runs},
    {"assemble_only", test_assemble_only},
    {"other_settings_are_refused", test_other_settings_are_refused},
    {"bad_task_file", test_bad_task_file},
    {"unstartable_draws_are_redrawn", test_unstartable_draws_are_redrawn},
    {NULL, NULL}};

QT_TEST_MAIN("collect", cases)

/*
 * test_cli.c - the qtune binary's exit codes and help, run as a user would.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/qt_core.h"
#include "finetune/qt_finetune.h"
#include "metadata/qt_metadata.h"
#include "qt_test.h"
#include "surrogate/qt_surrogate.h"

/* Runs qtune with the given arguments; returns its exit code and keeps what
 * it printed (stdout and stderr together) in `output`. */
static int run_qtune(char *output, size_t size, const char *args) {
  char command[2048];
  int length = snprintf(command, sizeof command, "'%s' %s 2>&1", QT_QTUNE_BINARY, args);
  if (length < 0 || (size_t)length >= sizeof command) return -1; /* not a cut command */
  FILE *pipe = popen(command, "r");
  if (!pipe) return -1;
  size_t used = fread(output, 1, size - 1, pipe);
  output[used] = '\0';
  int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static char out[1 << 16];

/* run_qtune into `out` for a command that should succeed: its output goes
 * to stderr when it does not, so that a failing test shows why. */
static int run_qtune_ok(const char *args) {
  int code = run_qtune(out, sizeof out, args);
  if (code != 0) fprintf(stderr, "\nqtune %s: exit %d\n%s\n", args, code, out);
  return code;
}

static void test_no_arguments_is_usage(void) {
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, ""), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "usage: qtune <command>"));
}

static void test_help_and_version(void) {
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "--help"), 0);
  const char *commands[] = {"search", "status", "export", "meta", "bench", "finetune", "hub", NULL};
  for (int i = 0; commands[i]; i++) CU_ASSERT_PTR_NOT_NULL(strstr(out, commands[i]));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "--version"), 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "qtune " QT_VERSION_STRING));
}

static void test_unknown_command_and_flag(void) {
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "frobnicate"), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "unknown command 'frobnicate'"));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "search --no-such-flag"), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "unknown flag '--no-such-flag'"));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "meta frobnicate"), 1);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "search --budget"), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "needs a value"));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "status"), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "missing argument"));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "status a b"), 1);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "search -x"), 1);
}

/* Every declared command prints real help (its usage line and its flags)
 * and exits 0 with --help. */
static void test_every_command_has_help(void) {
  const struct {
    const char *path, *expect;
  } cases[] = {
      {"search", "--budget DURATION"},   {"status", "--format F"},
      {"export", "RUN_DIR"},             {"finetune", "--config FILE"},
      {"bench", "--optimizers LIST"},    {"meta", "import"},
      {"meta import", "--format NAME"},  {"meta train", "--exclude-datasets LIST"},
      {"meta collect", "--runs-per-task N"}, {"hub", "list"},
      {"hub list", "usage: qtune hub list"}, {"hub show", "MODEL"},
      {"space sample", "--sobol"},       {NULL, NULL}};
  for (int i = 0; cases[i].path; i++) {
    char args[256];
    snprintf(args, sizeof args, "%s --help", cases[i].path);
    int code = run_qtune(out, sizeof out, args);
    CU_ASSERT_EQUAL(code, 0);
    if (!strstr(out, cases[i].expect)) {
      fprintf(stderr, "qtune %s: help lacks '%s':\n%s\n", args, cases[i].expect, out);
      CU_FAIL("help text");
    }
  }
}

/* Declared but unbuilt commands say so in a sentence and exit 2. Every
 * command is built now (meta collect was the last); meta collect without
 * its required flags is a usage error. */
static void test_unimplemented_commands_exit_2(void) {
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "meta collect"), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "--tasks"));
  CU_ASSERT_PTR_NULL(strstr(out, "not implemented yet"));
}

static void test_space_commands(void) {
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "space check configs/spaces/quicktune-v1.yaml "
                                             "configs/spaces/default.yaml"), 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "quicktune-v1"));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "space check no/such/space.yaml"), 3);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "no/such/space.yaml"));

  /* Same seed, same configurations; another seed, others. */
  static char first[sizeof out];
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "space sample configs/spaces/default.yaml --n 4 --seed 7"), 0);
  memcpy(first, out, sizeof out);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "space sample configs/spaces/default.yaml --n 4 --seed 7"), 0);
  CU_ASSERT_STRING_EQUAL(first, out);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "space sample configs/spaces/default.yaml --n 4 --seed 8"), 0);
  CU_ASSERT_STRING_NOT_EQUAL(first, out);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "space sample configs/spaces/default.yaml --n zero"), 1);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "space encode configs/spaces/quicktune-v1.yaml --n 3"), 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "round trip ok"));
}

/* `meta import` converts the shared Quick-Tune copy into a native folder
 * that loads with the counts of the source; bad flags are usage errors and
 * a bad source a failure naming the file. */
static void test_meta_import(void) {
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "meta import --format csv src --out dst"), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "unknown --format 'csv'"));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "meta import --format quicktune src"), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "--out DIR is required"));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "meta import --out dst src"), 1);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out,
                            "meta import --format quicktune no/such/folder --out /tmp/x"), 3);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "no/such/folder/perf.json"));

  char probe[1024];
  if (!qt_test_shared_path("benchmarks/quicktune-extended/perf.json", probe, sizeof probe)) return;
  char dir[] = "/tmp/qt-test-cli-XXXXXX";
  CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
  char args[2048];
  snprintf(args, sizeof args,
           "meta import --format quicktune '%s/benchmarks/quicktune-extended' --out '%s/md'",
           QT_SHARED_DIR, dir);
  CU_ASSERT_EQUAL(run_qtune_ok(args), 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "18 datasets, 3239 runs, 97388 points"));
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "every configuration is valid"));
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "loads back identical"));

  /* The folder it wrote, read with the library. */
  char folder[512];
  snprintf(folder, sizeof folder, "%s/md", dir);
  qt_metadataset_t *md = NULL;
  qt_err err;
  CU_ASSERT_EQUAL(qt_metadataset_load(folder, &md, &err), 0);
  if (md) {
    CU_ASSERT_EQUAL(qt_metadataset_dataset_count(md), 18);
    CU_ASSERT_EQUAL(qt_metadataset_run_count(md), 3239);
    CU_ASSERT_EQUAL(qt_metadataset_point_count(md), 97388);
  }
  qt_metadataset_free(md);
  static const char *const files[] = {"metadataset.yaml", "space.yaml", "datasets.csv",
                                      "runs.csv", "curves.csv"};
  for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", folder, files[f]);
    CU_ASSERT_EQUAL(unlink(path), 0);
  }
  CU_ASSERT_EQUAL(rmdir(folder), 0);
  CU_ASSERT_EQUAL(rmdir(dir), 0);
}

/* A small synthetic meta-dataset in dir/name (datasets synth-000, ...). */
static void save_synthetic(const char *dir, const char *name, size_t datasets) {
  qt_metadataset_synth_params sp = qt_metadataset_synth_default_params();
  sp.n_datasets = datasets;
  sp.runs_per_dataset = 6;
  sp.max_epochs = 4;
  qt_metadataset_t *md = NULL;
  qt_err err;
  qt_err_clear(&err);
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_synthesize("configs/spaces/default.yaml", &sp, &md, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_save(md, path, &err), 0);
  qt_metadataset_free(md);
}

/* `bench --surrogate FILE` with a file from `meta train` (and a warning for
 * the datasets that file was meta-trained on), and `--meta-train-folds K`
 * meta-training one surrogate per fold, on synthetic meta-datasets. */
static void bench_with_surrogates(void) {
  char dir[] = "/tmp/qt-test-cli-qt-XXXXXX";
  CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
  save_synthetic(dir, "three", 3);
  char args[2048];
  snprintf(args, sizeof args,
           "meta train --meta-dataset '%s/three' --out '%s/s.qts' --iterations 40 "
           "--exclude-datasets synth-000",
           dir, dir);
  CU_ASSERT_EQUAL_FATAL(run_qtune_ok(args), 0);
  snprintf(args, sizeof args,
           "bench --meta-dataset '%s/three' --optimizers random,quicktune,quicktune-M,quicktune-C,"
           "quicktune-MC --budget 10m --surrogate '%s/s.qts' --datasets synth-000,synth-001 "
           "--overhead ignore",
           dir, dir);
  CU_ASSERT_EQUAL(run_qtune_ok(args), 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "5 optimizers x 2 datasets x 1 seeds"));
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "\nquicktune-MC "));
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "meta-trained on dataset synth-001"));
  CU_ASSERT_PTR_NULL(strstr(out, "meta-trained on dataset synth-000"));
  snprintf(args, sizeof args,
           "bench --meta-dataset '%s/three' --optimizers quicktune --budget 10m "
           "--surrogate '%s/no-such.qts'",
           dir, dir);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 3);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "no-such.qts"));
  /* --refit-steps reaches the optimizer: its trajectories' key says so. */
  snprintf(args, sizeof args,
           "bench --meta-dataset '%s/three' --optimizers quicktune --budget 10m "
           "--surrogate '%s/s.qts' --datasets synth-000 --overhead ignore --refit-steps 3,2 "
           "--out '%s/refit'",
           dir, dir, dir);
  CU_ASSERT_EQUAL(run_qtune_ok(args), 0);
  snprintf(args, sizeof args,
           "grep -q ' quicktune=3,2,' '%s/refit/trajectories/quicktune/synth-000-seed0.csv'", dir);
  CU_ASSERT_EQUAL(system(args), 0);
  snprintf(args, sizeof args,
           "bench --meta-dataset '%s/three' --optimizers quicktune --budget 10m "
           "--surrogate '%s/s.qts' --refit-steps 3",
           dir, dir);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "--refit-steps wants RESTART,REFINE"));

  /* Two folds of one dataset each: each is tested with the surrogate
   * meta-trained on the other. */
  save_synthetic(dir, "two", 2);
  snprintf(args, sizeof args,
           "bench --meta-dataset '%s/two' --optimizers random,quicktune --budget 10m "
           "--meta-train-folds 2 --threads 2 --out '%s/folds' --overhead cpu",
           dir, dir);
  CU_ASSERT_EQUAL(run_qtune_ok(args), 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "fold 0: 1 test datasets; meta-trained on 1 (+0 validating)"));
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "fold 1: 1 test datasets"));
  snprintf(args, sizeof args,
           "test -s '%s/folds/folds.csv' && test -s '%s/folds/metatrain.csv' && "
           "test -s '%s/folds/surrogates/fold0.qts' && test -s '%s/folds/surrogates/fold1.qts' && "
           "test -s '%s/folds/summary.csv'",
           dir, dir, dir, dir, dir);
  CU_ASSERT_EQUAL(system(args), 0);
  /* The same with model descriptors: the folds are meta-trained again, and
   * their files say with which descriptors. */
  snprintf(args, sizeof args,
           "printf '%%s\\n' 'version: 1' 'name: test' 'models:' "
           "'  - {name: mobilenetv2_100, family: efficient_convnet, parameters: 3.5e6}' "
           "'  - {name: resnet18, family: residual_convnet, parameters: 11.7e6}' "
           "'  - {name: vit_tiny_patch16_224, family: transformer, parameters: 5.7e6}' "
           "> '%s/descriptors.yaml'",
           dir);
  CU_ASSERT_EQUAL_FATAL(system(args), 0);
  snprintf(args, sizeof args,
           "bench --meta-dataset '%s/two' --optimizers random,quicktune --budget 10m "
           "--meta-train-folds 2 --meta-train-iterations 40 --model-encoding descriptors "
           "--descriptors '%s/descriptors.yaml' --out '%s/folds' --resume --overhead ignore",
           dir, dir, dir);
  CU_ASSERT_EQUAL(run_qtune_ok(args), 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "model encoding descriptors"));
  snprintf(args, sizeof args,
           "grep -q 'model_encoding=descriptors:' '%s/folds/surrogates/fold1.csv'", dir);
  CU_ASSERT_EQUAL(system(args), 0);
  snprintf(args, sizeof args,
           "bench --meta-dataset '%s/two' --optimizers quicktune --budget 10m "
           "--surrogate '%s/s.qts' --model-encoding descriptors",
           dir, dir);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "needs --meta-train-folds"));
  snprintf(args, sizeof args, "rm -rf '%s'", dir);
  CU_ASSERT_EQUAL(system(args), 0);
}

/* `bench` checks its flags, runs the Quick-Tune optimizers with a surrogate
 * file or per-fold meta-training, and on an imported copy of the shared data
 * it runs every baseline and prints the regret table. */
static void test_bench(void) {
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "bench --optimizers random --budget 1h"), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "are required"));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out,
                            "bench --meta-dataset x --optimizers simplex --budget 1h"), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "unknown optimizer 'simplex'"));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "bench --meta-dataset x --optimizers random --budget 4x"), 1);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out,
                            "bench --meta-dataset x --optimizers random --budget 1h --seeds 3-1"), 1);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "bench --meta-dataset no/such --optimizers random --budget 1h"), 3);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out,
                            "bench --meta-dataset x --optimizers random --budget 1h --overhead wall"), 1);
  /* The Quick-Tune optimizers that read a surrogate need one, and say how. */
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out,
                            "bench --meta-dataset x --optimizers random,quicktune-C --budget 1h"), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "qtune meta train"));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out,
                            "bench --meta-dataset x --optimizers quicktune --budget 1h "
                            "--surrogate s --meta-train-folds 3"), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "exclude each other"));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out,
                            "bench --meta-dataset x --optimizers quicktune --budget 1h "
                            "--meta-train-folds 1"), 1);
  bench_with_surrogates();

  char probe[1024];
  if (!qt_test_shared_path("benchmarks/quicktune-extended/perf.json", probe, sizeof probe)) return;
  char dir[] = "/tmp/qt-test-cli-bench-XXXXXX";
  CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
  char args[2048];
  snprintf(args, sizeof args,
           "meta import --format quicktune '%s/benchmarks/quicktune-extended' --out '%s/md'",
           QT_SHARED_DIR, dir);
  CU_ASSERT_EQUAL_FATAL(run_qtune(out, sizeof out, args), 0);
  snprintf(args, sizeof args,
           "bench --meta-dataset '%s/md' --optimizers random,sh,hyperband,asha,bohb --budget 1h "
           "--seeds 0-1 --datasets BCT,FLW",
           dir);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "5 optimizers x 2 datasets x 2 seeds"));
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "\nasha "));
  snprintf(args, sizeof args,
           "bench --meta-dataset '%s/md' --optimizers random --budget 1h --datasets NOPE", dir);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "no dataset 'NOPE'"));
  snprintf(args, sizeof args, "rm -rf '%s'", dir);
  CU_ASSERT_EQUAL(system(args), 0);
}

/* `meta train` on a small synthetic meta-dataset: it prints progress and
 * the summary, and writes a surrogate file that loads for the meta-dataset's
 * space and records the held-out dataset; bad flags are usage errors. */
static void test_meta_train(void) {
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "meta train --out x.qts"), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "--meta-dataset DIR is required"));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "meta train --meta-dataset x"), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "--out FILE is required"));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "meta train --meta-dataset x --out y --iterations 0"),
                  1);
  CU_ASSERT_EQUAL(
      run_qtune(out, sizeof out, "meta train --meta-dataset x --out y --learning-rate -1"), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "--learning-rate must be"));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "meta train --meta-dataset no/such --out y"), 3);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "no/such"));

  char dir[] = "/tmp/qt-test-cli-train-XXXXXX";
  CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
  qt_metadataset_synth_params sp = qt_metadataset_synth_default_params();
  sp.n_datasets = 5;
  sp.runs_per_dataset = 8;
  qt_metadataset_t *md = NULL;
  qt_err err;
  char folder[512], file[512], args[2048];
  snprintf(folder, sizeof folder, "%s/md", dir);
  snprintf(file, sizeof file, "%s/surrogate.qts", dir);
  CU_ASSERT_EQUAL_FATAL(
      qt_metadataset_synthesize("configs/spaces/quicktune-v1.yaml", &sp, &md, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_metadataset_save(md, folder, &err), 0);

  snprintf(args, sizeof args,
           "meta train --meta-dataset '%s' --out '%s' --iterations 60 --seed 2 "
           "--exclude-datasets synth-004,NOPE",
           folder, file);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "no dataset 'NOPE'"));
  snprintf(args, sizeof args,
           "meta train --meta-dataset '%s' --out '%s' --iterations 60 --seed 2 "
           "--exclude-datasets synth-004 --learning-rate 1e-3",
           folder, file);
  CU_ASSERT_EQUAL(run_qtune_ok(args), 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "60 iterations, learning rate 0.001, seed 2"));
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "iteration     60/60"));
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "held out    1: synth-004"));
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "validation  untrained"));
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "held out    untrained"));
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "wrote "));

  qt_surrogate_t *surrogate = NULL;
  CU_ASSERT_EQUAL(qt_surrogate_load(file, qt_metadataset_space(md), &surrogate, &err), 0);
  if (surrogate) {
    const qt_surrogate_info *info = qt_surrogate_get_info(surrogate);
    CU_ASSERT_EQUAL(info->excluded_count, 1);
    CU_ASSERT_STRING_EQUAL(info->excluded_datasets[0], "synth-004");
    CU_ASSERT_EQUAL(info->iterations, 60);
    CU_ASSERT_EQUAL(info->seed, 2);
  }
  qt_surrogate_free(surrogate);
  qt_metadataset_free(md);
  snprintf(args, sizeof args, "rm -rf '%s'", dir);
  CU_ASSERT_EQUAL(system(args), 0);
}

/* `hub list` and `hub show` on the fixture hub (every checkpoint fits:
 * exit 0), on the shipped hub (checkpoints not fetched yet: exit 3 with the
 * table) and on a hub whose entry contradicts its checkpoint (exit 3). */
static void test_hub_commands(void) {
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "hub list tests/fixtures/hubs/tiny.yaml"), 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "hub 'tiny', 1 model"));
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "vit_tiny_fixture"));
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "1 ok, 0 not fetched yet, 0 invalid"));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "hub show vit_tiny_fixture tests/fixtures/hubs/tiny.yaml"),
                  0);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "ok: 20 tensors, 1355 parameters, depth 1, width 8, 3 classes, "
                                     "patch 4, 8 px"));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "hub show other tests/fixtures/hubs/tiny.yaml"), 3);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "no model 'other'"));

  setenv("QTUNE_MODELS", "/nonexistent-qtune-models", 1);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "hub list"), 3);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "configs/hubs/default.yaml: hub 'default'"));
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "mobilenetv2_100.nsfwjs"));
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "not fetched yet (/nonexistent-qtune-models/"));
  CU_ASSERT_PTR_NULL(strstr(out, "invalid:"));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "hub show mobilenetv2_100.nsfwjs"), 3);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "not fetched yet"));
  unsetenv("QTUNE_MODELS");

  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "hub list a.yaml b.yaml"), 1);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "hub show"), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "missing argument"));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "hub list no/such/hub.yaml"), 3);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "no/such/hub.yaml"));

  /* The fixture's checkpoint under an entry that claims 5 classes. */
  char dir[] = "/tmp/qt-test-cli-hub-XXXXXX";
  CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
  char path[512], args[1024];
  snprintf(path, sizeof path, "%s/hub.yaml", dir);
  FILE *f = fopen(path, "w");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  fprintf(f, "version: 1\nname: wrong\nmodels:\n"
             "  - name: five_classes\n    family: vit\n"
             "    checkpoint: %s/tests/fixtures/safetensors/vit_tiny.safetensors\n"
             "    image_size: 8\n    mean: [0.5, 0.5, 0.5]\n    std: [0.5, 0.5, 0.5]\n"
             "    num_classes: 5\n", QT_SOURCE_DIR);
  fclose(f);
  snprintf(args, sizeof args, "hub list '%s'", path);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 3);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "invalid: "));
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "has 3 classes but the hub says num_classes 5"));
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "0 ok, 0 not fetched yet, 1 invalid"));
  CU_ASSERT_EQUAL(unlink(path), 0);
  CU_ASSERT_EQUAL(rmdir(dir), 0);
}


/* Writes an uncompressed IDX pair of n 8x8 gray images of 3 patterns
 * (horizontal stripes, vertical stripes, checkerboard) into dir. */
static void write_pattern_idx(const char *dir, size_t n) {
  char path[1024];
  snprintf(path, sizeof path, "%s/train-images-idx3-ubyte", dir);
  FILE *f = fopen(path, "wb");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  const unsigned char head[] = {0, 0, 8, 3, 0, 0, (unsigned char)(n >> 8), (unsigned char)n,
                                0, 0, 0, 8, 0, 0, 0, 8};
  fwrite(head, 1, sizeof head, f);
  for (size_t i = 0; i < n; i++) {
    int label = (int)(i % 3);
    for (int y = 0; y < 8; y++) {
      for (int x = 0; x < 8; x++) {
        int on = label == 0 ? y / 2 % 2 : label == 1 ? x / 2 % 2 : (x + y) % 2;
        fputc(on ? 200 + (int)((i * 7 + (size_t)x) % 30) : 40 + (int)((i * 3 + (size_t)y) % 30),
              f);
      }
    }
  }
  fclose(f);
  snprintf(path, sizeof path, "%s/train-labels-idx1-ubyte", dir);
  f = fopen(path, "wb");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  const unsigned char lhead[] = {0, 0, 8, 1, 0, 0, (unsigned char)(n >> 8), (unsigned char)n};
  fwrite(lhead, 1, sizeof lhead, f);
  for (size_t i = 0; i < n; i++) fputc((int)(i % 3), f);
  fclose(f);
}

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  fputs(text, f);
  fclose(f);
}

/* `finetune` on the tiny fixture hub: one line per epoch, curve.csv and
 * final.safetensors; bad configurations fail at their line:column. */
static void test_finetune(void) {
  char dir[] = "/tmp/qt-test-cli-ft-XXXXXX";
  CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
  char data[512], config[512], outdir[512], args[2048], path[600];
  snprintf(data, sizeof data, "%s/data", dir);
  CU_ASSERT_EQUAL_FATAL(mkdir(data, 0777), 0);
  write_pattern_idx(data, 60);
  snprintf(config, sizeof config, "%s/pipeline.yaml", dir);
  write_text(config, "opt: momentum\nmomentum: 0.9\nlr: 0.01\nsched: cosine\nbatch_size: 8\n"
                     "data_augmentation: none\nsmoothing: 0\n");
  snprintf(outdir, sizeof outdir, "%s/out", dir);
  snprintf(args, sizeof args,
           "finetune --hub tests/fixtures/hubs/tiny.yaml --model vit_tiny_fixture --data '%s' "
           "--config '%s' --epochs 2 --out '%s' --seed 3",
           data, config, outdir);
  CU_ASSERT_EQUAL(run_qtune_ok(args), 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "epoch 1  train_loss "));
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "epoch 2  train_loss "));
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "val_top1 "));
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "test  loss ")); /* 10% carved for test */
  snprintf(path, sizeof path, "%s/curve.csv", outdir);
  FILE *f = fopen(path, "r");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  char line[512];
  int lines = 0;
  CU_ASSERT_PTR_NOT_NULL(fgets(line, sizeof line, f));
  CU_ASSERT_STRING_EQUAL(line, "epoch,train_loss,val_loss,val_top1,seconds,images_per_s\n");
  while (fgets(line, sizeof line, f)) lines++;
  fclose(f);
  CU_ASSERT_EQUAL(lines, 2);
  snprintf(path, sizeof path, "%s/final.safetensors", outdir);
  f = fopen(path, "rb");
  CU_ASSERT_PTR_NOT_NULL(f);
  if (f) fclose(f);

  /* The same seed gives the same losses. */
  static char first[sizeof out];
  snprintf(args, sizeof args,
           "finetune --hub tests/fixtures/hubs/tiny.yaml --model vit_tiny_fixture --data '%s' "
           "--config '%s' --epochs 1 --seed 3",
           data, config);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 0);
  char *a = strstr(out, "train_loss");
  CU_ASSERT_PTR_NOT_NULL_FATAL(a);
  snprintf(first, sizeof first, "%.34s", a); /* losses and top-1, not seconds */
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, first));

  /* --device: cpu gives the same losses; a GPU the machine lacks (cuda:N,
   * N >= 1) fails saying how many it has; an unknown name is a usage
   * error; cuda without a device fails saying so (with a device it trains:
   * test_gpu_run_backend). */
  size_t base = strlen(args);
  snprintf(args + base, sizeof args - base, " --device cpu");
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, first));
  int gpus = 0;
  qt_cuda_device_count(&gpus, NULL);
  snprintf(args + base, sizeof args - base, " --device cuda:%d", gpus + 1);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 3);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "CUDA device"));
  snprintf(args + base, sizeof args - base, " --device tpu");
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 1);
  snprintf(args + base, sizeof args - base, " --device cuda:x");
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 1);
  if (gpus == 0) {
    snprintf(args + base, sizeof args - base, " --device cuda");
    CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 3);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "backend 'cuda' is unavailable"));
  }
  args[base] = '\0';

  /* Bad configurations: an unknown name, a bad value, an inactive one. */
  const struct {
    const char *text, *expect;
  } bad[] = {{"lr: 0.001\nbogus: 1\n", "pipeline.yaml:2:1: unknown hyperparameter 'bogus'"},
             {"opt: adamw\nlr: fast\n", "pipeline.yaml:2:5:"},
             {"opt: adamw\nmomentum: 0.9\n", "pipeline.yaml:2:1: 'momentum' does not apply"},
             {"opt: goodfit\nadapter: lora\n", "not implemented yet"},
             {NULL, NULL}};
  for (int i = 0; bad[i].text; i++) {
    write_text(config, bad[i].text);
    snprintf(args, sizeof args,
             "finetune --hub tests/fixtures/hubs/tiny.yaml --model vit_tiny_fixture --data '%s' "
             "--config '%s' --epochs 1",
             data, config);
    CU_ASSERT_EQUAL(run_qtune(out, sizeof out, args), 3);
    if (!strstr(out, bad[i].expect)) {
      fprintf(stderr, "expected '%s' in:\n%s\n", bad[i].expect, out);
      CU_FAIL("finetune error message");
    }
  }
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "finetune --hub x --data y --config z"), 1);
  qt_test_remove_tree(dir);
}

static const qt_test_case cases[] = {
    {"no arguments is a usage error", test_no_arguments_is_usage},
    {"--help and --version", test_help_and_version},
    {"unknown command or flag exits 1", test_unknown_command_and_flag},
    {"every command has real help", test_every_command_has_help},
    {"unimplemented commands exit 2", test_unimplemented_commands_exit_2},
    {"space check, sample, encode", test_space_commands},
    {"hub list and show", test_hub_commands},
    {"meta import", test_meta_import},
    {"meta train", test_meta_train},
    {"bench", test_bench},
    {"finetune", test_finetune},
    {NULL, NULL}};

QT_TEST_MAIN("cli", cases)

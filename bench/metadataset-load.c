/*
 * metadataset-load.c - how fast a native meta-dataset folder loads.
 *
 * Synthesizes a meta-dataset of 1,000,000 curve points (20 datasets x 1,000
 * runs x 50 epochs over Quick-Tune's search space, with losses on two runs
 * of three), saves it into a temporary folder, then times
 * qt_metadataset_load on it several times and prints the best and the mean
 * time, points per second, and the ratio to the 2 s target of issue 3.
 *
 *   usage: metadataset-load [RUNS_PER_DATASET [REPEATS]]
 *
 * The folder is removed at the end. Times are wall-clock (qt_time_now).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "metadata/qt_metadata.h"

#define TARGET_SECONDS 2.0

static long file_size(const char *dir, const char *name) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  struct stat info;
  return stat(path, &info) == 0 ? (long)info.st_size : -1;
}

static void remove_folder(const char *dir) {
  static const char *const files[] = {"metadataset.yaml", "space.yaml", "datasets.csv", "runs.csv",
                                      "curves.csv"};
  for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, files[f]);
    unlink(path);
  }
  rmdir(dir);
}

int main(int argc, char **argv) {
  qt_metadataset_synth_params params = qt_metadataset_synth_default_params();
  params.n_datasets = 20;
  params.runs_per_dataset = argc > 1 ? (size_t)strtoul(argv[1], NULL, 10) : 1000;
  params.min_epochs = params.max_epochs = 50;
  params.seed = 1;
  int repeats = argc > 2 ? atoi(argv[2]) : 5;
  if (params.runs_per_dataset == 0 || repeats < 1) {
    fprintf(stderr, "usage: %s [RUNS_PER_DATASET [REPEATS]]\n", argv[0]);
    return 1;
  }

  char space[4096];
  snprintf(space, sizeof space, "%s/configs/spaces/quicktune-v1.yaml", QT_SOURCE_DIR);
  char dir[] = "/tmp/qtune-bench-md-XXXXXX";
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }

  qt_err err;
  qt_err_clear(&err);
  qt_metadataset_t *md = NULL;
  double start = qt_time_now();
  if (qt_metadataset_synthesize(space, &params, &md, &err) < 0) {
    fprintf(stderr, "synthesize: %s\n", qt_err_message(&err));
    remove_folder(dir);
    return 1;
  }
  double synthesized = qt_time_now();
  if (qt_metadataset_save(md, dir, &err) < 0) {
    fprintf(stderr, "save: %s\n", qt_err_message(&err));
    qt_metadataset_free(md);
    remove_folder(dir);
    return 1;
  }
  double saved = qt_time_now();
  size_t points = qt_metadataset_point_count(md);
  printf("meta-dataset: %zu datasets, %zu runs, %zu points; curves.csv %.1f MB, runs.csv %.1f MB\n",
         qt_metadataset_dataset_count(md), qt_metadataset_run_count(md), points,
         (double)file_size(dir, "curves.csv") / 1e6, (double)file_size(dir, "runs.csv") / 1e6);
  printf("synthesize %.3f s, save %.3f s\n", synthesized - start, saved - synthesized);

  double best = 1e300, total = 0.0;
  int status = 0;
  for (int r = 0; r < repeats && status == 0; r++) {
    qt_metadataset_t *loaded = NULL;
    double t0 = qt_time_now();
    int rc = qt_metadataset_load(dir, &loaded, &err);
    double seconds = qt_time_now() - t0;
    if (rc < 0) {
      fprintf(stderr, "load: %s\n", qt_err_message(&err));
      status = 1;
    } else if (r == 0 && qt_metadataset_compare(md, loaded, &err) < 0) {
      fprintf(stderr, "the loaded meta-dataset differs: %s\n", qt_err_message(&err));
      status = 1;
    }
    qt_metadataset_free(loaded);
    if (seconds < best) best = seconds;
    total += seconds;
  }
  if (status == 0) {
    double mean = total / repeats;
    printf("load (%d runs): best %.3f s, mean %.3f s, %.2f M points/s (best)\n", repeats, best,
           mean, (double)points / best / 1e6);
    printf("best load / %.0f s target = %.3f (%s)\n", TARGET_SECONDS, best / TARGET_SECONDS,
           best < TARGET_SECONDS ? "within target" : "OVER TARGET");
  }
  qt_metadataset_free(md);
  remove_folder(dir);
  return status;
}

/*
 * test_gpu_search.c - `qtune search` with its trials on the GPU (label
 * gpu; skips with 77 without a device): the whole loop of
 * src/bo/qt_search.c (pool, optimizer, objective, journal, checkpoints,
 * incumbent), where test_gpu_run_backend covers the runs alone.
 *
 *   - the same random search on the GPU and on the CPU (seeded: random
 *     search's candidates and their order do not depend on the scores), in
 *     FP32: the same trials and epochs, each epoch's validation loss within
 *     1e-3 relative and its accuracy within one validation image of 12;
 *   - the GPU search stopped after 4 epochs, in the middle of a trial, and
 *     resumed on the CPU: it continues from the GPU's checkpoint, as the
 *     CPU's straight run of 8 epochs;
 *   - with amp (BF16 products) on the GPU: every epoch ok and finite, its
 *     validation loss within 10% of the CPU's (where amp changes nothing)
 *     and not the same to the bit;
 *   - Quick-Tune (quicktune-MC: the surrogate and the cost predictor fit the
 *     GPU's seconds): every epoch ok, and the incumbent's weights export.
 *
 * Fixtures (made in a temporary folder): 8x8 grayscale IDX images of three
 * patterns and two random tiny ViTs (patch 4, width 16, depth 1, 2 heads)
 * saved as timm checkpoints, as in test_search.c.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bo/qt_bo.h"
#include "finetune/qt_finetune.h"
#include "qt_test.h"
#include "qt_test_gpu.h"
#include "qt_test_tiny.h"

static char data_dir[512], hub_path[512], space_path[512], amp_space_path[512];

/* Learning rates that train the tiny ViTs without diverging, so that every
 * trial runs its three epochs on both devices. */
static const char *space_text =
    "version: 1\n"
    "name: tiny\n"
    "fidelity: {name: epochs, min: 1, max: 3}\n"
    "hyperparameters:\n"
    "  model: {type: categorical, choices: [placeholder]}\n"
    "  opt: {type: categorical, choices: [sgd, momentum, adamw], default: adamw}\n"
    "  lr: {type: float, range: [1.0e-3, 1.0e-2], log: true}\n"
    "  batch_size: {type: ordinal, choices: [8, 16]}\n"
    "  data_augmentation: {type: categorical, choices: [none]}\n"
    "  smoothing: {type: float, range: [0, 0.2]}\n";

static void make_fixtures(void) {
  if (data_dir[0]) return;
  qt_log_set_level(QT_LOG_LEVEL_ERROR);
  char path[1024];
  qt_test_temp_path("data", data_dir, sizeof data_dir);
  qt_tiny_write_idx(data_dir, 120, 8, 99);
  qt_tiny_write_hub(qt_test_temp_path("hub", path, sizeof path), "", hub_path, sizeof hub_path);
  qt_test_temp_path("space.yaml", space_path, sizeof space_path);
  qt_tiny_write_file(space_path, space_text, strlen(space_text));
  /* The same space with amp on in every configuration. */
  char amp_text[2048];
  snprintf(amp_text, sizeof amp_text, "%s  amp: {type: categorical, choices: [true]}\n",
           space_text);
  qt_test_temp_path("space-amp.yaml", amp_space_path, sizeof amp_space_path);
  qt_tiny_write_file(amp_space_path, amp_text, strlen(amp_text));
}

static qt_search_params params_for(const char *run_name, char *run_dir, size_t size,
                                   qt_search_device device) {
  make_fixtures();
  qt_test_temp_path(run_name, run_dir, size);
  qt_search_params p = qt_tiny_search_params(run_dir, data_dir, hub_path, space_path);
  p.pool_size = 6;
  p.max_epochs_total = 8;
  p.seed = 5;
  p.device = device;
  return p;
}

static void run_search(qt_search_params *p, long epochs) {
  qt_search_result r;
  qt_err err;
  int rc = qt_search_run(p, &r, &err);
  if (rc != 0) fprintf(stderr, "\n    search in %s: %s\n", p->run_dir, qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT_EQUAL(r.epochs, epochs);
}

/* The epoch_end records of a run's journal, in order. */
typedef struct epoch_row {
  long trial, epoch;
  int ok;
  double score, val_loss;
} epoch_row;

#define MAX_ROWS 64

static size_t read_epochs(const char *run_dir, epoch_row *rows) {
  char path[1024];
  snprintf(path, sizeof path, "%s/journal.jsonl", run_dir);
  qt_journal_log log;
  CU_ASSERT_FATAL(qt_journal_read(path, &log, NULL) == 0);
  size_t n = 0;
  for (size_t i = 0; i < log.count && n < MAX_ROWS; i++) {
    const qt_journal_record *r = &log.records[i];
    if (r->type != QT_JOURNAL_EPOCH_END) continue;
    rows[n++] = (epoch_row){r->trial, r->epoch, r->status && strcmp(r->status, "ok") == 0, r->score,
                            r->val_loss};
  }
  qt_journal_log_free(&log);
  return n;
}

/* Every epoch of run_dir (on the device under test) against the CPU's
 * run: the same trials and epochs, all ok and finite, the validation loss
 * within loss_tol relative and the accuracy within score_tol. Returns the
 * largest relative difference of the validation losses. */
static double expect_like_cpu(const char *what, const char *run_dir, const char *cpu_dir,
                              double loss_tol, double score_tol) {
  epoch_row got[MAX_ROWS], want[MAX_ROWS];
  size_t n = read_epochs(run_dir, got), m = read_epochs(cpu_dir, want);
  CU_ASSERT_EQUAL(n, m);
  double worst_loss = 0.0, worst_score = 0.0;
  for (size_t i = 0; i < n && i < m; i++) {
    CU_ASSERT_EQUAL(got[i].trial, want[i].trial);
    CU_ASSERT_EQUAL(got[i].epoch, want[i].epoch);
    CU_ASSERT(got[i].ok && want[i].ok);
    CU_ASSERT(isfinite(got[i].val_loss) && isfinite(got[i].score));
    double dl = fabs(got[i].val_loss - want[i].val_loss) / fmax(fabs(want[i].val_loss), 1e-6);
    double ds = fabs(got[i].score - want[i].score);
    if (!(dl <= loss_tol) || !(ds <= score_tol))
      printf("\n    %s: trial %ld epoch %ld: val_loss %.6g vs the CPU's %.6g, score %.4f vs %.4f",
             what, got[i].trial, got[i].epoch, got[i].val_loss, want[i].val_loss, got[i].score,
             want[i].score);
    worst_loss = fmax(worst_loss, dl);
    worst_score = fmax(worst_score, ds);
  }
  printf(
      "\n    %s: %zu epochs; against the CPU: validation loss within %.2g relative, "
      "accuracy within %.3g",
      what, n, worst_loss, worst_score);
  CU_ASSERT(worst_loss <= loss_tol);
  CU_ASSERT(worst_score <= score_tol);
  return worst_loss;
}

/* The CPU's straight run of 8 epochs, made once. */
static const char *cpu_run(void) {
  static char dir[512];
  if (dir[0]) return dir;
  qt_search_params p = params_for("cpu", dir, sizeof dir, QT_SEARCH_DEVICE_CPU);
  run_search(&p, 8);
  return dir;
}

/* One validation image of the tiny task's 12 (and a little for rounding):
 * with the losses this close, an image flips only at a near tie. */
#define SCORE_TOL 0.09

static void test_search_on_gpu_as_on_cpu(void) {
  char dir[512];
  qt_search_params p = params_for("gpu", dir, sizeof dir, QT_SEARCH_DEVICE_CUDA);
  run_search(&p, 8);
  expect_like_cpu("FP32 on the GPU", dir, cpu_run(), 1e-3, SCORE_TOL);
  char path[1024];
  snprintf(path, sizeof path, "%s/incumbent.safetensors", dir);
  CU_ASSERT_EQUAL(access(path, R_OK), 0);
}

/* Stopped after 4 epochs (trial two's first of three) on the GPU, resumed
 * on the CPU to 8: trial two continues from the checkpoint the GPU
 * wrote. */
static void test_gpu_search_resumes_on_cpu(void) {
  char dir[512];
  qt_search_params p = params_for("gpu-then-cpu", dir, sizeof dir, QT_SEARCH_DEVICE_CUDA);
  p.max_epochs_total = 4;
  run_search(&p, 4);
  p.device = QT_SEARCH_DEVICE_CPU;
  p.max_epochs_total = 8;
  run_search(&p, 8);
  expect_like_cpu("4 epochs on the GPU, resumed on the CPU", dir, cpu_run(), 1e-3, SCORE_TOL);
}

static void test_search_with_amp(void) {
  char dir[512];
  qt_search_params p = params_for("gpu-amp", dir, sizeof dir, QT_SEARCH_DEVICE_CUDA);
  p.space = amp_space_path;
  run_search(&p, 8);
  /* The CPU computes in FP32 with or without amp: its run is the FP32
   * search's, the same configurations but for amp. */
  char cpu_dir[512];
  qt_search_params q = params_for("cpu-amp", cpu_dir, sizeof cpu_dir, QT_SEARCH_DEVICE_CPU);
  q.space = amp_space_path;
  run_search(&q, 8);
  double worst = expect_like_cpu("BF16 products on the GPU", dir, cpu_dir, 0.1, 0.5);
  /* BF16 products change the numbers: a search the same to the bit as the
   * CPU's did not run them. */
  CU_ASSERT(worst > 0.0);
}

static void test_quicktune_on_gpu(void) {
  char dir[512];
  qt_search_params p = params_for("gpu-quicktune", dir, sizeof dir, QT_SEARCH_DEVICE_CUDA);
  p.optimizer = "quicktune-MC";
  run_search(&p, 8);
  epoch_row rows[MAX_ROWS];
  size_t n = read_epochs(dir, rows);
  CU_ASSERT_EQUAL(n, 8);
  for (size_t i = 0; i < n; i++) {
    CU_ASSERT(rows[i].ok);
    CU_ASSERT(rows[i].score >= 0.0 && rows[i].score <= 1.0);
    CU_ASSERT(isfinite(rows[i].val_loss));
  }
  char path[1024];
  snprintf(path, sizeof path, "%s/best.safetensors", dir);
  qt_err err;
  int rc = qt_search_export_weights(dir, path, &err);
  if (rc != 0) fprintf(stderr, "\n    export: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL(rc, 0);
  qt_safetensors_t *st = NULL;
  CU_ASSERT_EQUAL(qt_safetensors_open(path, &st, NULL), 0);
  size_t index;
  if (st) CU_ASSERT_EQUAL(qt_safetensors_find(st, "head.weight", &index), 0);
  qt_safetensors_free(st);
}

static const qt_test_case cases[] = {
    {"search_on_gpu_as_on_cpu", test_search_on_gpu_as_on_cpu},
    {"gpu_search_resumes_on_cpu", test_gpu_search_resumes_on_cpu},
    {"search_with_amp", test_search_with_amp},
    {"quicktune_on_gpu", test_quicktune_on_gpu},
    {NULL, NULL},
};

QT_GPU_TEST_MAIN("gpu_search", cases)

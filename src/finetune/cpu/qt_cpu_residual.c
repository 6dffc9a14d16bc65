/*
 * qt_cpu_residual.c - a residual connection with optional layer scale
 * (timm's LayerScale, DeiT III). Rows go to the worker threads
 * (qt_cpu_parallel.h). See qt_finetune.h.
 */
#include "finetune/cpu/qt_cpu_parallel.h"
#include "finetune/cpu/qt_cpu_sums.h"
#include "finetune/qt_finetune.h"

typedef struct residual_job {
  float *out;                  /* forward */
  float *dres, *dbranch;       /* backward */
  const float *res, *dout;     /* res: forward; dout: backward */
  const float *branch, *gamma; /* branch: forward */
  size_t c;
} residual_job;

static void forward_rows(void *job, size_t begin, size_t end, void *scratch) {
  (void)scratch;
  const residual_job *R = job;
  size_t c = R->c;
  for (size_t i = begin; i < end; i++) {
    for (size_t j = 0; j < c; j++) {
      size_t k = i * c + j;
      R->out[k] = R->res[k] + (R->gamma ? R->gamma[j] * R->branch[k] : R->branch[k]);
    }
  }
}

static void backward_rows(void *job, size_t begin, size_t end, void *scratch) {
  (void)scratch;
  const residual_job *R = job;
  size_t c = R->c;
  for (size_t i = begin; i < end; i++) {
    for (size_t j = 0; j < c; j++) {
      size_t k = i * c + j;
      if (R->dres) R->dres[k] += R->dout[k];
      if (R->dbranch) R->dbranch[k] += R->gamma ? R->gamma[j] * R->dout[k] : R->dout[k];
    }
  }
}

void qt_cpu_residual_forward(float *out, const float *res, const float *branch, const float *gamma,
                             size_t n, size_t c) {
  if (c == 0) return;
  residual_job job = {.out = out, .res = res, .branch = branch, .gamma = gamma, .c = c};
  qt__cpu_parallel_for(n, qt__cpu_items_grain(c), 0, 0, forward_rows, &job);
}

void qt_cpu_residual_backward(float *dres, float *dbranch, float *dgamma, const float *dout,
                              const float *branch, const float *gamma, size_t n, size_t c) {
  if (c == 0) return;
  residual_job job = {.dres = dres, .dbranch = dbranch, .dout = dout, .gamma = gamma, .c = c};
  if (dres || dbranch) qt__cpu_parallel_for(n, qt__cpu_items_grain(c), 0, 0, backward_rows, &job);
  if (dgamma) qt__add_column_sums(dgamma, dout, branch, n, c);
}

/*
 * test_gpu_adamw.c - parity of the CUDA AdamW step with the CPU reference
 * (label `gpu`). Without a CUDA device, or in a build without CUDA, the
 * program prints why and exits 77, which CTest reports as skipped.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune.h"
#include "qt_test.h"

/* Largest accepted error, relative to the magnitude of the terms that make
 * up each result (see parity_error). FP32 rounding differs between the two
 * sides (nvcc contracts multiply-adds into FMAs, the host does not), so the
 * results agree to a few units in the last place, far below this bound. */
#define PARITY_TOLERANCE 1e-5

/* ------------------------------------------------------------------------- */
/* Helpers                                                                    */
/* ------------------------------------------------------------------------- */

/* The state of one optimizer run: four arrays of n floats in one block. */
typedef struct adamw_state {
  size_t n;
  float *block;  /* (4, n): params, grads, m, v */
  float *params; /* (n) */
  float *grads;  /* (n) */
  float *m;      /* (n) first moment */
  float *v;      /* (n) second moment */
} adamw_state;

static int state_init(adamw_state *s, size_t n) {
  s->n = n;
  s->block = calloc(4 * n, sizeof(float));
  s->params = s->block;
  s->grads = s->block + n;
  s->m = s->block + 2 * n;
  s->v = s->block + 3 * n;
  return s->block ? 0 : -1;
}

static void state_copy(adamw_state *to, const adamw_state *from) {
  memcpy(to->block, from->block, 4 * from->n * sizeof(float));
}

/* |gpu - cpu| divided by `scale`, the sum of the magnitudes of the terms
 * that produced the value. A plain |cpu| denominator would flag legitimate
 * rounding differences wherever the terms cancel (m near 0 after a sign
 * change of the gradient, p near 0 after an update). */
static double parity_error(float gpu, float cpu, double scale) {
  if (!isfinite(gpu) || !isfinite(cpu)) return INFINITY;
  return fabs((double)gpu - (double)cpu) / fmax(scale, (double)FLT_MIN);
}

/* Runs `steps` AdamW steps on random data of size n on both backends and
 * returns the largest parity error seen. Before each step the CUDA side is
 * given the CPU's state, so that every step compares one step's rounding
 * from identical inputs rather than drift accumulated over earlier steps. */
static double run_parity(size_t n, int steps, const qt_adamw_params *hp, uint64_t seed) {
  qt_err err;
  qt_rng_t *rng = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, seed, &err), 0);
  adamw_state cpu, gpu, before;
  CU_ASSERT_EQUAL_FATAL(state_init(&cpu, n), 0);
  CU_ASSERT_EQUAL_FATAL(state_init(&gpu, n), 0);
  CU_ASSERT_EQUAL_FATAL(state_init(&before, n), 0);
  for (size_t i = 0; i < n; i++) cpu.params[i] = (float)qt_rng_gaussian(rng, 1.0);

  double worst = 0.0;
  for (int t = 1; t <= steps; t++) {
    /* Gradients over five decades, with a few exact zeros. */
    for (size_t i = 0; i < n; i++) {
      double magnitude = pow(10.0, -4.0 + 5.0 * qt_rng_uniform(rng));
      cpu.grads[i] = qt_rng_uniform(rng) < 0.02 ? 0.0f : (float)qt_rng_gaussian(rng, magnitude);
    }
    state_copy(&before, &cpu);
    state_copy(&gpu, &cpu);

    CU_ASSERT_EQUAL_FATAL(qt_cpu_adamw_step(cpu.params, cpu.grads, cpu.m, cpu.v, n, hp, t, &err),
                          0);
    qt_err_clear(&err);
    int rc = qt_cuda_adamw_step_host(gpu.params, gpu.grads, gpu.m, gpu.v, n, hp, t, &err);
    if (rc != 0) fprintf(stderr, "qt_cuda_adamw_step_host: %s\n", qt_err_message(&err));
    CU_ASSERT_EQUAL_FATAL(rc, 0);

    double step_size = hp->lr / (1.0 - pow(hp->beta1, t));
    double bias_correction2_sqrt = sqrt(1.0 - pow(hp->beta2, t));
    size_t worst_index = 0;
    double step_worst = 0.0;
    for (size_t i = 0; i < n; i++) {
      double g = before.grads[i];
      double scale_m = fabs(hp->beta1 * before.m[i]) + fabs((1.0 - hp->beta1) * g);
      double scale_v = fabs(hp->beta2 * before.v[i]) + (1.0 - hp->beta2) * g * g;
      double denom = sqrt(cpu.v[i]) / bias_correction2_sqrt + hp->eps;
      double p0 = fabs(before.params[i]);
      double scale_p = p0 + hp->lr * hp->weight_decay * p0 + step_size * scale_m / denom;
      double e = parity_error(gpu.m[i], cpu.m[i], scale_m);
      e = fmax(e, parity_error(gpu.v[i], cpu.v[i], scale_v));
      e = fmax(e, parity_error(gpu.params[i], cpu.params[i], scale_p));
      if (!(e <= step_worst)) {
        step_worst = e;
        worst_index = i;
      }
    }
    if (!(step_worst < PARITY_TOLERANCE)) {
      size_t i = worst_index;
      fprintf(
          stderr,
          "\nn = %zu, step %d, element %zu: error %.3g; params cpu %.9g gpu %.9g, m cpu %.9g gpu "
          "%.9g, v cpu %.9g gpu %.9g\n",
          n, t, i, step_worst, cpu.params[i], gpu.params[i], cpu.m[i], gpu.m[i], cpu.v[i],
          gpu.v[i]);
    }
    worst = fmax(worst, step_worst);
  }
  free(cpu.block);
  free(gpu.block);
  free(before.block);
  qt_rng_free(rng);
  return worst;
}

/* ------------------------------------------------------------------------- */
/* Tests                                                                      */
/* ------------------------------------------------------------------------- */

/* One element, a thousand (less than four blocks) and 2^20 + 7 (many blocks
 * and a partial last one), five steps each, with two hyperparameter sets. */
static void test_adamw_parity(void) {
  static const size_t sizes[] = {1, 1000, ((size_t)1 << 20) + 7};
  qt_adamw_params defaults = qt_adamw_default_params();
  qt_adamw_params other = {
      .lr = 3e-4, .beta1 = 0.8, .beta2 = 0.99, .eps = 1e-6, .weight_decay = 0.05};
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    double e1 = run_parity(sizes[k], 5, &defaults, 1000 + k);
    double e2 = run_parity(sizes[k], 5, &other, 2000 + k);
    printf("\n  n = %zu: worst relative error %.3g (defaults), %.3g (other)", sizes[k], e1, e2);
    CU_ASSERT(e1 < PARITY_TOLERANCE);
    CU_ASSERT(e2 < PARITY_TOLERANCE);
  }
}

/* The CUDA entry points check their arguments like the CPU reference. */
static void test_adamw_arguments(void) {
  qt_adamw_params hp = qt_adamw_default_params();
  float p[2] = {1, 2}, g[2] = {1, 1}, m[2] = {0}, v[2] = {0};
  qt_err err;
  CU_ASSERT_EQUAL(qt_cuda_adamw_step_host(p, g, m, v, 2, &hp, 0, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_adamw_step(p, g, m, v, 2, &hp, 0, &err), QT_EINVAL);
  hp.beta2 = 1.0;
  CU_ASSERT_EQUAL(qt_cuda_adamw_step_host(p, g, m, v, 2, &hp, 1, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_adamw_step_host(NULL, NULL, NULL, NULL, 0, &hp, 1, &err), QT_EINVAL);
  hp = qt_adamw_default_params();
  CU_ASSERT_EQUAL(qt_cuda_adamw_step_host(NULL, NULL, NULL, NULL, 0, &hp, 1, &err), 0);
  CU_ASSERT_EQUAL(qt_cuda_adamw_step(NULL, NULL, NULL, NULL, 0, &hp, 1, &err), 0);
  CU_ASSERT(p[0] == 1.0f && m[0] == 0.0f);
}

static const qt_test_case cases[] = {
    {"adamw_parity", test_adamw_parity},
    {"adamw_arguments", test_adamw_arguments},
    {NULL, NULL},
};

int main(void) {
  int count = 0;
  qt_err err;
  if (qt_cuda_device_count(&count, &err) != 0 || count == 0) {
    printf("no CUDA device: skipping\n");
    return QT_TEST_SKIP_CODE;
  }
  return qt_test_run("gpu_adamw", cases);
}

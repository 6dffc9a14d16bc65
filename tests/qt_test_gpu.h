/*
 * qt_test_gpu.h - helpers of the CUDA parity tests (test_gpu_*.c): device
 * arrays from host data, downloads, the parity measure
 *
 *   error = max_i |gpu_i - cpu_i| / max_i |cpu_i - init_i|
 *
 * (init = a gradient's starting values, NULL for a forward) checked against
 * a tolerance, gradients held on both sides, and a main that skips (77)
 * without a device. Include after qt_test.h and finetune/qt_finetune.h.
 */
#ifndef QT_TEST_GPU_H
#define QT_TEST_GPU_H

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* FP32 parity bound of every op. */
#define PARITY_TOLERANCE 1e-5
/* Standard deviation of the gradients' starting values. */
#define GRAD_INIT_SIGMA 1e-3

/* Fails the test with the error's message when rc is not 0. */
#define CHECK_RC(call)                                                                     \
  do {                                                                                     \
    qt_err check_err_;                                                                     \
    qt_err_clear(&check_err_);                                                             \
    int check_rc_ = (call);                                                                \
    if (check_rc_ != 0) fprintf(stderr, "\n%s: %s\n", #call, qt_err_message(&check_err_)); \
    CU_ASSERT_EQUAL_FATAL(check_rc_, 0);                                                   \
  } while (0)
/* The error argument that CHECK_RC's call passes. */
#define E (&check_err_)

static inline qt_rng_t *make_rng(uint64_t seed) {
  qt_err err;
  qt_rng_t *rng = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, seed, &err), 0);
  return rng;
}

/* n floats N(mean, sigma^2) on the host (never NULL, even for n = 0). */
static inline float *host_random(qt_rng_t *rng, size_t n, double mean, double sigma) {
  float *h = malloc((n ? n : 1) * sizeof *h);
  CU_ASSERT_PTR_NOT_NULL_FATAL(h);
  for (size_t i = 0; i < n; i++) h[i] = (float)(mean + qt_rng_gaussian(rng, sigma));
  return h;
}

static inline float *host_copy(const float *src, size_t n) {
  float *h = malloc((n ? n : 1) * sizeof *h);
  CU_ASSERT_PTR_NOT_NULL_FATAL(h);
  if (n) memcpy(h, src, n * sizeof *h);
  return h;
}

/* A device copy of n host values of `size` bytes each (NULL for n = 0). */
static inline void *device_copy(const void *h, size_t n, size_t size) {
  void *d = NULL;
  CHECK_RC(qt_cuda_malloc(&d, n * size, E));
  CHECK_RC(qt_cuda_copy_to_device(d, h, n * size, E));
  return d;
}

static inline float *device_floats(const float *h, size_t n) {
  return device_copy(h, n, sizeof(float));
}

/* Uninitialized device floats (NULL for n = 0). */
static inline float *device_alloc(size_t n) {
  void *d = NULL;
  CHECK_RC(qt_cuda_malloc(&d, n * sizeof(float), E));
  return d;
}

/* The device array's values in a new host array (after the queued work). */
static inline void *download_bytes(const void *d, size_t bytes) {
  CHECK_RC(qt_cuda_synchronize(E));
  void *h = malloc(bytes ? bytes : 1);
  CU_ASSERT_PTR_NOT_NULL_FATAL(h);
  CHECK_RC(qt_cuda_copy_to_host(h, d, bytes, E));
  return h;
}

static inline float *download(const float *d, size_t n) {
  return download_bytes(d, n * sizeof(float));
}

/* The measure above; init may be NULL (zeros). */
static inline double parity_error(const float *gpu, const float *cpu, const float *init, size_t n) {
  double diff = 0.0, scale = 0.0;
  for (size_t i = 0; i < n; i++) {
    if (!isfinite(gpu[i]) || !isfinite(cpu[i])) return INFINITY;
    diff = fmax(diff, fabs((double)gpu[i] - cpu[i]));
    scale = fmax(scale, fabs((double)cpu[i] - (init ? init[i] : 0.0f)));
  }
  if (scale == 0.0) return diff == 0.0 ? 0.0 : INFINITY;
  return diff / fmax(scale, (double)FLT_MIN);
}

/* A batch for whole training steps: images N(0, 1), labels uniform, and
 * soft targets (rows of a softmax), all drawn from rng in this order. */
typedef struct test_batch {
  float *images; /* (batch, 3, size, size) */
  int *labels;   /* (batch) */
  float *soft;   /* (batch, classes) */
} test_batch;

static inline test_batch test_batch_make(qt_rng_t *rng, size_t batch, size_t size, size_t classes) {
  size_t K = classes;
  test_batch b;
  b.images = host_random(rng, batch * 3 * size * size, 0.0, 1.0);
  b.labels = malloc(batch * sizeof *b.labels);
  b.soft = host_random(rng, batch * K, 0.0, 1.0);
  CU_ASSERT_PTR_NOT_NULL_FATAL(b.labels);
  for (size_t i = 0; i < batch; i++) {
    b.labels[i] = (int)(qt_rng_uniform(rng) * (double)K) % (int)K;
    double sum = 0.0;
    for (size_t k = 0; k < K; k++) sum += (b.soft[i * K + k] = expf(b.soft[i * K + k]));
    for (size_t k = 0; k < K; k++) b.soft[i * K + k] = (float)(b.soft[i * K + k] / sum);
  }
  return b;
}

static inline void test_batch_free(test_batch *b) {
  free(b->images);
  free(b->labels);
  free(b->soft);
}

/* Compares n host values with the CPU's: equal bit for bit when tolerance
 * is 0 (the first difference printed), else parity_error(got, want, init)
 * < tolerance. */
static inline void expect_values(const char *what, const float *got, const float *want,
                                 const float *init, size_t n, double tolerance) {
  if (tolerance == 0.0) {
    size_t i = 0;
    while (i < n && memcmp(&got[i], &want[i], sizeof *got) == 0) i++;
    if (i < n)
      fprintf(stderr, "\n%s: value %zu is %.9g, the CPU's %.9g\n", what, i, got[i], want[i]);
    CU_ASSERT(i == n);
    return;
  }
  double e = parity_error(got, want, init, n);
  if (!(e < tolerance)) fprintf(stderr, "\n%s: error %.3g >= %.3g\n", what, e, tolerance);
  CU_ASSERT(e < tolerance);
}

/* Downloads the device array d, compares it with cpu, prints and checks the
 * error against tolerance, frees the download; returns the error. */
static inline double expect_parity_tol(const char *what, const float *d, const float *cpu,
                                       const float *init, size_t n, double tolerance) {
  float *gpu = download(d, n);
  double e = parity_error(gpu, cpu, init, n);
  printf("\n    %-60s error %.3g", what, e);
  if (!(e < tolerance)) fprintf(stderr, "\n%s: error %.3g >= %.3g\n", what, e, tolerance);
  CU_ASSERT(e < tolerance);
  free(gpu);
  return e;
}

static inline double expect_parity(const char *what, const float *d, const float *cpu,
                                   const float *init, size_t n) {
  return expect_parity_tol(what, d, cpu, init, n, PARITY_TOLERANCE);
}

/* A gradient on both sides: random starting values on the host (init, kept
 * for the measure), the CPU's copy and the device's copy. */
typedef struct grad {
  size_t n;
  float *init;
  float *cpu;
  float *dev;
} grad;

static inline grad grad_make(qt_rng_t *rng, size_t n) {
  grad g;
  g.n = n;
  g.init = host_random(rng, n, 0.0, GRAD_INIT_SIGMA);
  g.cpu = host_copy(g.init, n);
  g.dev = device_floats(g.init, n);
  return g;
}

/* A gradient that an op writes (the op table's `set`): the device's starts
 * as NaN, which any read of the old values would carry into the result
 * (the parity error is then infinite); the CPU's and init as 0, so the
 * CPU's op, which adds, gives what the device must write. */
static inline grad grad_make_unset(size_t n) {
  grad g;
  g.n = n;
  g.init = calloc(n ? n : 1, sizeof *g.init);
  g.cpu = calloc(n ? n : 1, sizeof *g.cpu);
  float *nan = malloc((n ? n : 1) * sizeof *nan);
  CU_ASSERT_FATAL(g.init && g.cpu && nan);
  for (size_t i = 0; i < n; i++) nan[i] = NAN;
  g.dev = device_floats(nan, n);
  free(nan);
  return g;
}

static inline void grad_check(const char *what, const grad *g) {
  expect_parity(what, g->dev, g->cpu, g->init, g->n);
}

static inline void grad_free(grad *g) {
  free(g->init);
  free(g->cpu);
  qt_cuda_free(g->dev);
}

/* main() of a parity test: skips (77) without a CUDA device. */
#define QT_GPU_TEST_MAIN(suite_name, cases)                      \
  int main(void) {                                               \
    int count = 0;                                               \
    qt_err err;                                                  \
    if (qt_cuda_device_count(&count, &err) != 0 || count == 0) { \
      printf("no CUDA device: skipping\n");                      \
      return QT_TEST_SKIP_CODE;                                  \
    }                                                            \
    return qt_test_run(suite_name, cases);                       \
  }

#endif /* QT_TEST_GPU_H */

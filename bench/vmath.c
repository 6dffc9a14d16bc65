/*
 * bench/vmath.c - the CPU's GELU (qt_cpu_gelu.c over qt_cpu_vmath.h, loops
 * the compiler vectorizes) against the same op written with libm's erff
 * and expf one value at a time (how qt_cpu_gelu.c computed it before),
 * timed in the same run on the same arrays:
 *
 *   build/bench/vmath [--n 1210368] [--rounds 7] [--reps 20]
 *
 * n values (default: ViT-Ti's fc1 output for 8 images, 8 x 197 x 768),
 * standard normal (libm's erff takes longer from |x| = 0.84 on, so the
 * spread matters: about a third of these are there); each round times `reps` calls of each side,
 * the sides alternating; the medians of the rounds give nanoseconds per value and the ratio libm /
 * qtune (above 1: qtune's is faster). Also prints the largest difference between the two sides'
 * outputs, relative to 1 + |value|.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "finetune/qt_finetune.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void libm_forward(float *out, const float *inp, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float x = inp[i];
    out[i] = 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f));
  }
}

static void libm_backward(float *dinp, const float *dout, const float *inp, size_t n) {
  for (size_t i = 0; i < n; i++) {
    float x = inp[i];
    float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752440f));
    float pdf = 0.39894228040143267794f * expf(-0.5f * x * x);
    dinp[i] += dout[i] * (cdf + x * pdf);
  }
}

static int compare_doubles(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, compare_doubles);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static double largest_difference(const float *a, const float *b, size_t n) {
  double worst = 0.0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - b[i]) / (1.0 + fabs((double)b[i]));
    if (d > worst) worst = d;
  }
  return worst;
}

int main(int argc, char **argv) {
  size_t n = 8 * 197 * 768;
  int rounds = 7, reps = 20;
  for (int i = 1; i < argc; i++) {
    if (i + 1 < argc && strcmp(argv[i], "--n") == 0) {
      n = (size_t)strtoull(argv[++i], NULL, 10);
    } else if (i + 1 < argc && strcmp(argv[i], "--rounds") == 0) {
      rounds = atoi(argv[++i]);
    } else if (i + 1 < argc && strcmp(argv[i], "--reps") == 0) {
      reps = atoi(argv[++i]);
    } else {
      fprintf(stderr, "usage: %s [--n 1210368] [--rounds 7] [--reps 20]\n", argv[0]);
      return 2;
    }
  }
  if (n == 0 || rounds < 1 || rounds > 99 || reps < 1) {
    fprintf(stderr, "vmath: --n, --rounds (1 to 99) and --reps must be positive\n");
    return 2;
  }
  float *x = malloc(n * sizeof *x), *dy = malloc(n * sizeof *dy);
  float *out[2] = {malloc(n * sizeof(float)), malloc(n * sizeof(float))};
  float *dx[2] = {calloc(n, sizeof(float)), calloc(n, sizeof(float))};
  if (!x || !dy || !out[0] || !out[1] || !dx[0] || !dx[1]) {
    fprintf(stderr, "vmath: out of memory\n");
    return 1;
  }
  unsigned long long state = 0x9E3779B97F4A7C15ull;
  for (size_t i = 0; i < n; i++) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    double u1 = ((double)(state >> 40) + 1.0) / 16777217.0,
           u2 = (double)(state & 0xffffff) / 16777216.0;
    x[i] = (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2)); /* Box and Muller */
    dy[i] = (float)((state >> 24) & 0xffff) / 65536.0f - 0.5f;
  }
  double times[4][99];
  for (int r = 0; r < rounds; r++) {
    double t0 = now();
    for (int k = 0; k < reps; k++) qt_cpu_gelu_forward(out[0], x, n);
    double t1 = now();
    for (int k = 0; k < reps; k++) libm_forward(out[1], x, n);
    double t2 = now();
    for (int k = 0; k < reps; k++) qt_cpu_gelu_backward(dx[0], dy, x, n);
    double t3 = now();
    for (int k = 0; k < reps; k++) libm_backward(dx[1], dy, x, n);
    double t4 = now();
    times[0][r] = t1 - t0, times[1][r] = t2 - t1, times[2][r] = t3 - t2, times[3][r] = t4 - t3;
  }
  double per = 1e9 / ((double)n * reps);
  double f_q = median(times[0], rounds) * per, f_l = median(times[1], rounds) * per;
  double b_q = median(times[2], rounds) * per, b_l = median(times[3], rounds) * per;
  printf("GELU over %zu values, %d rounds of %d calls each (medians), ns per value:\n", n, rounds,
         reps);
  printf("                 qtune (vectorized)   libm erff/expf   libm / qtune\n");
  printf("forward          %10.3f           %10.3f       %6.2fx\n", f_q, f_l, f_l / f_q);
  printf("backward         %10.3f           %10.3f       %6.2fx\n", b_q, b_l, b_l / b_q);
  /* One call each from the same start, for the difference. */
  memset(dx[0], 0, n * sizeof(float));
  memset(dx[1], 0, n * sizeof(float));
  qt_cpu_gelu_backward(dx[0], dy, x, n);
  libm_backward(dx[1], dy, x, n);
  printf("largest difference, relative to 1 + |value|: forward %.2e, backward %.2e\n",
         largest_difference(out[0], out[1], n), largest_difference(dx[0], dx[1], n));
  free(x);
  free(dy);
  for (int k = 0; k < 2; k++) free(out[k]), free(dx[k]);
  return 0;
}

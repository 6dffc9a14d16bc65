/*
 * qt_cpu_vmath.h - e^x and the standard normal CDF in float for the CPU
 * ops' element-wise loops, written for the vectorizer: no calls, no
 * branches (selects only), no table lookups, so that GCC turns a loop over
 * arrays that uses them into vector instructions (libm's expf and erff are
 * calls, one value at a time: GELU's forward and backward took 15% of a
 * ViT-Ti training step on one thread with them). ISO C without
 * reassociation or contraction: the same values whether a loop runs
 * vectorized or not, on every x86-64 or other IEEE machine.
 *
 * Accuracy (tests/test_cpu_vmath.c measures it over every 7th float of
 * the range against the double-precision functions, and bounds it):
 *   qt_vexpf   within 1 ulp (the test's bound: 2), the subnormal results
 *              within 1 of their steps; 0 below -104, infinity above
 *              88.73, NaN for NaN.
 *   qt_vphif   Phi(x) = (1 + erf(x / sqrt 2)) / 2 within 8.3e-8 absolute
 *              (bound 1.5e-7) and, where Phi >= 1e-30, 4.2e-7 relative
 *              (bound 1e-6): also in the lower tail, where
 *              1 + erff(x / sqrt 2) has no relative accuracy left (at
 *              x = -5, 2.9e-7 as a difference of two numbers near 1, to
 *              the nearest 6e-8).
 */
#ifndef QT_CPU_VMATH_H
#define QT_CPU_VMATH_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* On x86-64 with GCC, a copy of a loop for AVX-512 and for AVX2, picked
 * when the program loads where the processor has them: 16 and 8 floats a
 * step instead of SSE2's 4, the same values (no FMA contraction in ISO
 * C). Not under ThreadSanitizer, which instruments the resolver that
 * picks the copy; it runs while the program is being relocated, before
 * the sanitizer's runtime is ready, and crashes it (make sanitize-thread). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
#define QT_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define QT_VECTOR_CLONES
#endif

/* The float whose bits are `bits`. */
static inline float qt__float_bits(int32_t bits) {
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

/* e^(hi + lo) = 2^k e^r, with k the integer nearest (hi + lo) / ln 2 and
 * r = hi - k ln 2 + lo in about [-ln2 / 2, ln2 / 2] (ln 2 in two parts,
 * Cody and Waite's, so that k ln 2 leaves hi without rounding; hi + lo is
 * never rounded to one float, so an argument far from 0 keeps the bits of
 * lo), e^r by its Taylor series to r^7 (the rest below 5.3e-9 relative),
 * and 2^k as two powers of two built in the exponent bits, so that results
 * down to the subnormals come out rounded once. */
static inline float qt__vexpf_sum(float hi, float lo) {
  float x = hi + lo;
  float c = x < -104.0f ? -104.0f : x; /* a NaN stays */
  c = c > 89.0f ? 89.0f : c;
  /* The nearest integer: adding 1.5 * 2^23 leaves no fraction bits. */
  float k = c * 1.44269504088896341f + 12582912.0f;
  k = k - 12582912.0f;
  float r = hi - k * 0.693359375f; /* k * 0.693359375 is exact: 8 and 9 bits */
  r = r + lo;
  r = r - k * -2.12194440e-4f;
  float p = 1.98412698e-4f; /* 1 / 7! */
  p = p * r + 1.38888889e-3f;
  p = p * r + 8.33333333e-3f;
  p = p * r + 4.16666667e-2f;
  p = p * r + 1.66666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  /* k in [-150, 129] (0 for a NaN, whose p is NaN anyway): two factors
   * 2^k1 2^k2, each a normal float. */
  int32_t ki = (int32_t)(k == k ? k : 0.0f);
  int32_t k1 = ki / 2, k2 = ki - k1;
  float y = p * qt__float_bits((k1 + 127) << 23) * qt__float_bits((k2 + 127) << 23);
  y = x > 89.0f ? INFINITY : y;
  return x < -104.0f ? 0.0f : y;
}

static inline float qt_vexpf(float x) {
  return qt__vexpf_sum(x, 0.0f);
}

/* Phi(x), the standard normal CDF, from its lower tail for y = |x|:
 *   Phi(-y) = t e^(-y^2 / 2 + g(t)),  t = 1 / (1 + y / (2 sqrt 2)),
 * with g a polynomial fitted by tools/fit-normal-cdf.py (degree 10 in
 * s = 2.3535534 t - 1.3535534, which maps the t of y in [0, 16] onto
 * [-1, 1]; its error in g, the relative error it adds to Phi(-y), is
 * below 1.1e-8); Phi(x) = 1 - Phi(-x) for x > 0. y^2 / 2 goes to the
 * exponential in two parts, yh^2 / 2 exactly (yh: y's first 12 bits) and
 * yl (y + yh) / 2 (yl = y - yh) with g: rounded to one float it would
 * lose up to 3.8e-6 of Phi's relative accuracy at y = 11. For |x| < 1,
 * where the tail is near 1/2 and its few roundings would add up to 4 ulp
 * of Phi, Phi is 1/2 + x / sqrt(2 pi) sum_n (-x^2 / 2)^n / (n! (2n + 1))
 * instead, the terms to n = 7 (the rest below 1e-8 relative). */
static inline float qt_vphif(float x) {
  float y = fabsf(x);
  float t = 1.0f / (1.0f + y * 0.353553391f);
  float s = t * 2.353553391f - 1.353553391f;
  float g = -2.567024463e-05f;
  g = g * s + 6.953809734e-05f;
  g = g * s + 1.354074901e-04f;
  g = g * s - 6.328469986e-04f;
  g = g * s - 2.223261531e-04f;
  g = g * s + 4.117663440e-03f;
  g = g * s - 1.528748582e-03f;
  g = g * s - 3.114653859e-02f;
  g = g * s + 1.818422888e-02f;
  g = g * s + 5.808931188e-01f;
  g = g * s - 1.262991002e+00f;
  int32_t bits;
  memcpy(&bits, &y, sizeof bits);
  float yh = qt__float_bits(bits & ~0xfff), yl = y - yh;
  float tail = t * qt__vexpf_sum(-0.5f * (yh * yh), g - 0.5f * yl * (y + yh));
  tail = y > 16.0f ? 0.0f : tail; /* Phi(-16) = 6e-58; also y infinite */
  float u = x * x, q = -4.122667415e-08f;
  q = q * u + 6.659693516e-07f;
  q = q * u - 9.444656260e-06f;
  q = q * u + 1.154346876e-04f;
  q = q * u - 1.187328215e-03f;
  q = q * u + 9.973557010e-03f;
  q = q * u - 6.649038007e-02f;
  q = q * u + 3.989422804e-01f;
  float near0 = 0.5f + x * q;
  float far = x > 0.0f ? 1.0f - tail : tail; /* a NaN: the tail's NaN */
  return y < 1.0f ? near0 : far;
}

/* The softmax of each of `rows` rows of n >= 1 floats at a, in place:
 * e^(x - the row's maximum) by qt_vexpf, over their sum (in double, by
 * qt__sum). Vectorized (AVX-512, AVX2 or SSE2, as the processor allows:
 * qt_cpu_vmath.c), the same bits in each. */
void qt__cpu_softmax_rows(float *a, size_t rows, size_t n);

/* Through the softmax backward, in place: each row of da becomes
 * a (da - sum_j a da), with a the softmax's output (the sum in double, by
 * qt__dot). Vectorized as qt__cpu_softmax_rows. */
void qt__cpu_softmax_backward_rows(float *da, const float *a, size_t rows, size_t n);

#endif /* QT_CPU_VMATH_H */

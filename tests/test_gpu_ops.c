/*
 * test_gpu_ops.c - parity of the CUDA layer ops of the ViT engine (linear,
 * layer norm, GELU, attention, residual, patchify and tokens, softmax
 * cross-entropy) with their CPU references, forward and backward (label
 * `gpu`); the layer norm through its row kernels and its loop kernels, the
 * residual add with the layer norm after it in one op, and the GELU's
 * backward with the linear layer before it in one op. Without a CUDA device, or in a build without
 * CUDA, the program prints why and exits 77, which CTest reports as skipped.
 *
 * The measure. Each output array (a forward's result, or what a backward
 * added to a gradient) is compared as a whole:
 *
 *   error = max_i |gpu_i - cpu_i| / max_i |cpu_i - init_i|
 *
 * with init the gradient's value before the backward (0 for a forward): the
 * largest difference relative to the largest value the op produced (the
 * infinity norm). Element-wise relative errors are meaningless for sums of
 * many terms of both signs (matrix products, column sums): where the terms
 * cancel, the result is small and both sides are exact only to the rounding
 * of the terms, which cuBLAS and OpenBLAS add in different orders. The
 * bound is 1e-5 in FP32 for every op (PARITY_TOLERANCE) and 1e-2 for the
 * TF32 check (TF32_TOLERANCE) and for the linear and attention cases rerun
 * with BF16 products (BF16_TOLERANCE, against the FP32 CPU); with operands
 * rounded to BF16 on the host first, the CPU's FP32 product must match the
 * BF16 one to 1e-5 (the device rounds the same way and accumulates in
 * FP32). Backward gradients start from small random
 * values, so that the tests also check that the ops accumulate (+=).
 */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "qt_test.h"
#include "qt_test_gpu.h"

#define TF32_TOLERANCE 1e-2
#define BF16_TOLERANCE 1e-2

/* The bound of the linear and attention cases: PARITY_TOLERANCE, or
 * BF16_TOLERANCE while they run with BF16 products. */
static double tolerance = PARITY_TOLERANCE;

static void check(const char *what, const float *d, const float *cpu, const float *init, size_t n) {
  expect_parity_tol(what, d, cpu, init, n, tolerance);
}

static void check_grad(const char *what, const grad *g) {
  check(what, g->dev, g->cpu, g->init, g->n);
}

/* ------------------------------------------------------------------------- */
/* Linear                                                                     */
/* ------------------------------------------------------------------------- */

static void linear_case(size_t n, size_t in_c, size_t out_c, int with_bias, uint64_t seed) {
  qt_rng_t *rng = make_rng(seed);
  char what[96];
  float *inp = host_random(rng, n * in_c, 0.0, 1.0);
  float *weight = host_random(rng, out_c * in_c, 0.0, 0.1);
  float *bias = with_bias ? host_random(rng, out_c, 0.0, 0.5) : NULL;
  float *dout = host_random(rng, n * out_c, 0.0, 1.0);
  float *d_inp = device_floats(inp, n * in_c), *d_weight = device_floats(weight, out_c * in_c);
  float *d_bias = with_bias ? device_floats(bias, out_c) : NULL;
  float *d_dout = device_floats(dout, n * out_c);

  float *out = host_random(rng, n * out_c, 0.0, 1.0); /* garbage: the forward overwrites */
  float *d_out = device_floats(out, n * out_c);
  qt_cpu_linear_forward(out, inp, weight, bias, n, in_c, out_c);
  CHECK_RC(qt_cuda_linear_forward(d_out, d_inp, d_weight, d_bias, n, in_c, out_c, E));
  snprintf(what, sizeof what, "linear (%zu, %zu) -> %zu%s: out", n, in_c, out_c,
           with_bias ? "" : " no bias");
  check(what, d_out, out, NULL, n * out_c);

  grad dinp = grad_make(rng, n * in_c), dweight = grad_make(rng, out_c * in_c);
  grad dbias = grad_make(rng, out_c);
  qt_cpu_linear_backward(dinp.cpu, dweight.cpu, dbias.cpu, dout, inp, weight, n, in_c, out_c);
  CHECK_RC(qt_cuda_linear_backward(dinp.dev, dweight.dev, dbias.dev, d_dout, d_inp, d_weight, n,
                                   in_c, out_c, E));
  snprintf(what, sizeof what, "linear (%zu, %zu) -> %zu: dinp", n, in_c, out_c);
  if (in_c > 0) check_grad(what, &dinp);
  snprintf(what, sizeof what, "linear (%zu, %zu) -> %zu: dweight", n, in_c, out_c);
  if (in_c > 0) check_grad(what, &dweight);
  snprintf(what, sizeof what, "linear (%zu, %zu) -> %zu: dbias", n, in_c, out_c);
  check_grad(what, &dbias);

  /* NULL gradients are skipped: only dweight this time. */
  qt_cpu_linear_backward(NULL, dweight.cpu, NULL, dout, inp, weight, n, in_c, out_c);
  CHECK_RC(
      qt_cuda_linear_backward(NULL, dweight.dev, NULL, d_dout, d_inp, d_weight, n, in_c, out_c, E));
  snprintf(what, sizeof what, "linear (%zu, %zu) -> %zu: dweight twice", n, in_c, out_c);
  if (in_c > 0) check_grad(what, &dweight);

  /* `set` (the op table's): dinp written, not added to; dweight adds. */
  grad fresh = grad_make_unset(n * in_c);
  qt_cpu_linear_backward(fresh.cpu, dweight.cpu, NULL, dout, inp, weight, n, in_c, out_c);
  CHECK_RC(qt__cuda_linear_backward(fresh.dev, dweight.dev, NULL, d_dout, d_inp, d_weight, n, in_c,
                                    out_c, 1, E));
  snprintf(what, sizeof what, "linear (%zu, %zu) -> %zu: dinp set", n, in_c, out_c);
  if (in_c > 0) check_grad(what, &fresh);
  snprintf(what, sizeof what, "linear (%zu, %zu) -> %zu: dweight with dinp set", n, in_c, out_c);
  if (in_c > 0) check_grad(what, &dweight);
  grad_free(&fresh);

  grad_free(&dinp);
  grad_free(&dweight);
  grad_free(&dbias);
  free(inp);
  free(weight);
  free(bias);
  free(dout);
  free(out);
  qt_cuda_free(d_inp);
  qt_cuda_free(d_weight);
  qt_cuda_free(d_bias);
  qt_cuda_free(d_dout);
  qt_cuda_free(d_out);
  qt_rng_free(rng);
}

static void test_linear(void) {
  linear_case(1, 1, 1, 1, 11);
  linear_case(37, 45, 29, 1, 12);
  linear_case(37, 45, 29, 0, 13);
  linear_case(394, 192, 576, 1, 14); /* ViT-Ti qkv on two images */
  linear_case(33, 768, 1000, 1, 15); /* a ViT-B head */
  linear_case(5, 0, 7, 1, 16);       /* no input features: out = bias */
  linear_case(5, 0, 7, 0, 17);       /* ... or 0 */
  /* The bias gradient's column sums: rows in 12 chunks (the last shorter),
   * and more column tiles than one grid takes chunks for. */
  linear_case(3000, 16, 40, 1, 18);
  linear_case(300, 2, 33000, 1, 19);
}

/* FP32 is the default; TF32 can be switched on and back off, and with it on
 * the products stay within the TF32 bound. */
static void test_linear_tf32(void) {
  CU_ASSERT_EQUAL(qt_cuda_set_matmul_precision(QT_MATMUL_TF32), QT_MATMUL_FP32);
  qt_rng_t *rng = make_rng(21);
  size_t n = 394, in_c = 192, out_c = 576;
  float *inp = host_random(rng, n * in_c, 0.0, 1.0);
  float *weight = host_random(rng, out_c * in_c, 0.0, 0.1);
  float *out = host_random(rng, n * out_c, 0.0, 1.0);
  float *d_inp = device_floats(inp, n * in_c), *d_weight = device_floats(weight, out_c * in_c);
  float *d_out = device_floats(out, n * out_c);
  qt_cpu_linear_forward(out, inp, weight, NULL, n, in_c, out_c);
  CHECK_RC(qt_cuda_linear_forward(d_out, d_inp, d_weight, NULL, n, in_c, out_c, E));
  expect_parity_tol("linear (394, 192) -> 576, TF32: out", d_out, out, NULL, n * out_c,
                    TF32_TOLERANCE);
  CU_ASSERT_EQUAL(qt_cuda_set_matmul_precision(QT_MATMUL_FP32), QT_MATMUL_TF32);
  free(inp);
  free(weight);
  free(out);
  qt_cuda_free(d_inp);
  qt_cuda_free(d_weight);
  qt_cuda_free(d_out);
  qt_rng_free(rng);
}

/* The float nearest to x among the BF16 values (ties to even), as
 * __float2bfloat16_rn rounds on the device. */
static float bf16_round(float x) {
  return qt_test_bf16_float(qt_test_bf16_bits(x));
}

static float *host_bf16(const float *x, size_t n) {
  float *r = host_copy(x, n);
  for (size_t i = 0; i < n; i++) r[i] = bf16_round(r[i]);
  return r;
}

/* Under BF16 the device's products are the FP32 products of the rounded
 * operands: the CPU on operands rounded on the host matches to 1e-5. */
static void linear_bf16_exact(size_t n, size_t in_c, size_t out_c, uint64_t seed) {
  qt_rng_t *rng = make_rng(seed);
  char what[96];
  float *inp = host_random(rng, n * in_c, 0.0, 1.0);
  float *weight = host_random(rng, out_c * in_c, 0.0, 0.1);
  float *dout = host_random(rng, n * out_c, 0.0, 1.0);
  float *r_inp = host_bf16(inp, n * in_c), *r_weight = host_bf16(weight, out_c * in_c);
  float *r_dout = host_bf16(dout, n * out_c);
  float *d_inp = device_floats(inp, n * in_c), *d_weight = device_floats(weight, out_c * in_c);
  float *d_dout = device_floats(dout, n * out_c), *d_out = device_alloc(n * out_c);
  float *out = malloc(n * out_c * sizeof *out);
  CU_ASSERT_PTR_NOT_NULL_FATAL(out);
  qt_cpu_linear_forward(out, r_inp, r_weight, NULL, n, in_c, out_c);
  CHECK_RC(qt_cuda_linear_forward(d_out, d_inp, d_weight, NULL, n, in_c, out_c, E));
  snprintf(what, sizeof what, "linear (%zu, %zu) -> %zu, BF16 operands: out", n, in_c, out_c);
  expect_parity(what, d_out, out, NULL, n * out_c);
  grad dinp = grad_make(rng, n * in_c), dweight = grad_make(rng, out_c * in_c);
  qt_cpu_linear_backward(dinp.cpu, dweight.cpu, NULL, r_dout, r_inp, r_weight, n, in_c, out_c);
  CHECK_RC(qt_cuda_linear_backward(dinp.dev, dweight.dev, NULL, d_dout, d_inp, d_weight, n, in_c,
                                   out_c, E));
  snprintf(what, sizeof what, "linear (%zu, %zu) -> %zu, BF16 operands: dinp", n, in_c, out_c);
  grad_check(what, &dinp);
  snprintf(what, sizeof what, "linear (%zu, %zu) -> %zu, BF16 operands: dweight", n, in_c, out_c);
  grad_check(what, &dweight);
  /* With a bias gradient, the pass that sums dout as given rounds it for
   * both products: the same products, and the sums of the FP32 dout. */
  grad dbias = grad_make(rng, out_c);
  qt_cpu_linear_backward(dinp.cpu, dweight.cpu, NULL, r_dout, r_inp, r_weight, n, in_c, out_c);
  qt_cpu_linear_backward(NULL, NULL, dbias.cpu, dout, inp, weight, n, in_c, out_c);
  CHECK_RC(qt_cuda_linear_backward(dinp.dev, dweight.dev, dbias.dev, d_dout, d_inp, d_weight, n,
                                   in_c, out_c, E));
  snprintf(what, sizeof what, "linear (%zu, %zu) -> %zu, BF16 operands with dbias: dinp", n, in_c,
           out_c);
  grad_check(what, &dinp);
  snprintf(what, sizeof what, "linear (%zu, %zu) -> %zu, BF16 operands with dbias: dweight", n,
           in_c, out_c);
  grad_check(what, &dweight);
  snprintf(what, sizeof what, "linear (%zu, %zu) -> %zu, BF16 operands: dbias", n, in_c, out_c);
  grad_check(what, &dbias);
  grad_free(&dinp);
  grad_free(&dweight);
  grad_free(&dbias);
  float *host[] = {inp, weight, dout, r_inp, r_weight, r_dout, out};
  for (size_t i = 0; i < sizeof host / sizeof *host; i++) free(host[i]);
  float *dev[] = {d_inp, d_weight, d_dout, d_out};
  for (size_t i = 0; i < sizeof dev / sizeof *dev; i++) qt_cuda_free(dev[i]);
  qt_rng_free(rng);
}

/* Whether the n floats at device addresses a and b are equal to the bit. */
static int device_equal(const float *a, const float *b, size_t n) {
  float *x = download(a, n), *y = download(b, n);
  int same = memcmp(x, y, n * sizeof *x) == 0;
  free(x);
  free(y);
  return same;
}

/* The MLP's GELU backward with the linear layer before it in one op
 * (qt__cuda_gelu_linear_backward_h) gives what the two ops give, bit for
 * bit: under BF16 products with a bias gradient in one pass that keeps
 * the GELU's gradient only in BF16, else through the two ops; and so does
 * the op with GELU's input in BF16 (QT__BF16_OUT; the input holds BF16
 * values), as does GELU's forward from it (QT__BF16_INP). With GELU's
 * output gradient in BF16 too (QT__BF16_DOUT), the op gives what it gives
 * on the FP32 gradient of the same values. */
static void gelu_linear_case(size_t n, size_t in_c, size_t out_c, int with_bias,
                             qt_matmul_precision precision, uint64_t seed) {
  qt_rng_t *rng = make_rng(seed);
  float *x = host_random(rng, n * in_c, 0.0, 1.0), *pre = host_random(rng, n * out_c, 0.0, 1.5);
  float *dout = host_random(rng, n * out_c, 0.0, 1.0);
  float *weight = host_random(rng, out_c * in_c, 0.0, 0.1);
  float *init_w = host_random(rng, out_c * in_c, 0.0, 0.01),
        *init_b = host_random(rng, out_c, 0, 1);
  uint16_t *x16 = malloc(n * in_c * sizeof *x16);
  CU_ASSERT_PTR_NOT_NULL_FATAL(x16);
  for (size_t i = 0; i < n * in_c; i++) x16[i] = qt_test_bf16_bits(x[i]);
  uint16_t *pre16 = malloc(n * out_c * sizeof *pre16);
  CU_ASSERT_PTR_NOT_NULL_FATAL(pre16);
  for (size_t i = 0; i < n * out_c; i++) {
    pre[i] = bf16_round(pre[i]);
    pre16[i] = qt_test_bf16_bits(pre[i]);
  }
  void *d_pre16 = device_copy(pre16, n * out_c, sizeof *pre16);
  void *d_x16 = NULL;
  CHECK_RC(qt_cuda_malloc(&d_x16, n * in_c * sizeof *x16, E));
  CHECK_RC(qt_cuda_copy_to_device(d_x16, x16, n * in_c * sizeof *x16, E));
  float *d_pre = device_floats(pre, n * out_c), *d_dout = device_floats(dout, n * out_c);
  float *d_weight = device_floats(weight, out_c * in_c);
  uint16_t *dout16 = malloc(n * out_c * sizeof *dout16);
  float *dout_r = malloc(n * out_c * sizeof *dout_r);
  CU_ASSERT_PTR_NOT_NULL_FATAL(dout16);
  CU_ASSERT_PTR_NOT_NULL_FATAL(dout_r);
  for (size_t i = 0; i < n * out_c; i++) {
    dout_r[i] = bf16_round(dout[i]);
    dout16[i] = qt_test_bf16_bits(dout_r[i]);
  }
  void *d_dout16 = device_copy(dout16, n * out_c, sizeof *dout16);
  float *d_dout_r = device_floats(dout_r, n * out_c);
  float *d_dinp[5], *d_dw[5], *d_db[5], *d_dpre[5];
  for (int k = 0; k < 5; k++) {
    d_dinp[k] = device_alloc(n * in_c);
    d_dw[k] = device_floats(init_w, out_c * in_c);
    d_db[k] = with_bias ? device_floats(init_b, out_c) : NULL;
    d_dpre[k] = device_alloc(n * out_c);
  }
  qt_matmul_precision before = qt_cuda_set_matmul_precision(precision);
  CHECK_RC(qt__cuda_gelu_linear_backward_bf16(d_dinp[0], d_dw[0], d_db[0], d_dpre[0], d_dout, d_pre,
                                              d_x16, d_weight, n, in_c, out_c, 1, QT__BF16_INP, E));
  CHECK_RC(qt__cuda_gelu_backward(d_dpre[1], d_dout, d_pre, n * out_c, 1, E));
  CHECK_RC(qt__cuda_linear_backward_bf16(d_dinp[1], d_dw[1], d_db[1], d_dpre[1], d_x16, d_weight, n,
                                         in_c, out_c, 1, QT__BF16_INP, E));
  CHECK_RC(qt__cuda_gelu_linear_backward_bf16(d_dinp[2], d_dw[2], d_db[2], d_dpre[2], d_dout,
                                              d_pre16, d_x16, d_weight, n, in_c, out_c, 1,
                                              QT__BF16_INP | QT__BF16_OUT, E));
  /* GELU's output gradient in BF16: what the FP32 one of the same values
   * gives. */
  CHECK_RC(qt__cuda_gelu_linear_backward_bf16(d_dinp[3], d_dw[3], d_db[3], d_dpre[3], d_dout_r,
                                              d_pre16, d_x16, d_weight, n, in_c, out_c, 1,
                                              QT__BF16_INP | QT__BF16_OUT, E));
  CHECK_RC(qt__cuda_gelu_linear_backward_bf16(d_dinp[4], d_dw[4], d_db[4], d_dpre[4], d_dout16,
                                              d_pre16, d_x16, d_weight, n, in_c, out_c, 1,
                                              QT__BF16_INP | QT__BF16_OUT | QT__BF16_DOUT, E));
  /* GELU's forward from the BF16 input: the FP32 input's, bit for bit. */
  void *d_gelu[2] = {NULL, NULL};
  for (int k = 0; k < 2; k++) CHECK_RC(qt_cuda_malloc(&d_gelu[k], n * out_c * sizeof *pre16, E));
  CHECK_RC(qt__cuda_gelu_forward_bf16(d_gelu[0], d_pre, n * out_c, QT__BF16_OUT, E));
  CHECK_RC(
      qt__cuda_gelu_forward_bf16(d_gelu[1], d_pre16, n * out_c, QT__BF16_INP | QT__BF16_OUT, E));
  qt_cuda_set_matmul_precision(before);
  for (int k = 1; k < 3; k++) {
    int same = device_equal(d_dinp[0], d_dinp[k], n * in_c) &&
               device_equal(d_dw[0], d_dw[k], out_c * in_c) &&
               (!with_bias || device_equal(d_db[0], d_db[k], out_c));
    if (!same)
      printf("gelu + linear (%zu, %zu) -> %zu%s, precision %d: not the %s gradients\n", n, in_c,
             out_c, with_bias ? " with bias" : "", (int)precision,
             k == 1 ? "two ops'" : "BF16 GELU input's");
    CU_ASSERT(same);
  }
  int same = device_equal(d_dinp[3], d_dinp[4], n * in_c) &&
             device_equal(d_dw[3], d_dw[4], out_c * in_c) &&
             (!with_bias || device_equal(d_db[3], d_db[4], out_c));
  if (!same)
    printf("gelu + linear (%zu, %zu) -> %zu%s, precision %d: not the BF16 dout's gradients\n", n,
           in_c, out_c, with_bias ? " with bias" : "", (int)precision);
  CU_ASSERT(same);
  uint16_t *gelu[2];
  for (int k = 0; k < 2; k++) gelu[k] = download_bytes(d_gelu[k], n * out_c * sizeof *pre16);
  CU_ASSERT(memcmp(gelu[0], gelu[1], n * out_c * sizeof *pre16) == 0);
  for (int k = 0; k < 2; k++) {
    free(gelu[k]);
    qt_cuda_free(d_gelu[k]);
  }
  free(pre16);
  qt_cuda_free(d_pre16);
  free(dout16);
  free(dout_r);
  qt_cuda_free(d_dout16);
  qt_cuda_free(d_dout_r);
  for (int k = 0; k < 5; k++) {
    qt_cuda_free(d_dinp[k]);
    qt_cuda_free(d_dw[k]);
    qt_cuda_free(d_db[k]);
    qt_cuda_free(d_dpre[k]);
  }
  float *host[] = {x, pre, dout, weight, init_w, init_b};
  for (size_t i = 0; i < sizeof host / sizeof *host; i++) free(host[i]);
  free(x16);
  qt_cuda_free(d_x16);
  qt_cuda_free(d_pre);
  qt_cuda_free(d_dout);
  qt_cuda_free(d_weight);
  qt_rng_free(rng);
}

static void test_gelu_linear_backward(void) {
  gelu_linear_case(394, 192, 768, 1, QT_MATMUL_BF16, 81); /* the one pass */
  gelu_linear_case(3000, 40, 100, 1, QT_MATMUL_BF16, 82); /* its sums in chunks */
  gelu_linear_case(394, 192, 768, 0, QT_MATMUL_BF16, 83); /* no bias: the two ops */
  gelu_linear_case(394, 192, 768, 1, QT_MATMUL_BF16_FAST, 84);
  /* Like the other BF16-input ops, it refuses FP32 products. */
  qt_err err;
  float *d = device_alloc(4);
  CU_ASSERT_EQUAL(
      qt__cuda_gelu_linear_backward_bf16(d, d, d, d, d, d, d, d, 1, 1, 1, 1, QT__BF16_INP, &err),
      QT_EINVAL);
  CU_ASSERT_EQUAL(qt__cuda_gelu_linear_backward_bf16(d, d, d, d, d, d, d, d, 1, 1, 1, 1,
                                                     QT__BF16_INP | QT__BF16_OUT, &err),
                  QT_EINVAL);
  qt_cuda_free(d);
}

/* How many of the n BF16 values h (uint16_t bits) differ from the FP32
 * values g (device memory both) rounded to nearest even on the host. */
static size_t bf16_mismatches(const void *d_h, const float *d_g, size_t n) {
  float *g = download(d_g, n);
  uint16_t *h = download_bytes(d_h, n * sizeof *h);
  size_t mismatches = 0;
  for (size_t i = 0; i < n; i++) mismatches += h[i] != qt_test_bf16_bits(g[i]);
  free(g);
  free(h);
  return mismatches;
}

/* The largest |h - g| over the n BF16 values h (uint16_t bits) and FP32
 * values g (device memory both), relative to the largest |g|. */
static double bf16_parity(const void *d_h, const float *d_g, size_t n) {
  float *g = download(d_g, n);
  uint16_t *h = download_bytes(d_h, n * sizeof *h);
  double diff = 0.0, scale = 0.0;
  for (size_t i = 0; i < n; i++) {
    diff = fmax(diff, fabs((double)qt_test_bf16_float(h[i]) - g[i]));
    scale = fmax(scale, fabs((double)g[i]));
  }
  free(g);
  free(h);
  return scale > 0.0 ? diff / scale : diff;
}

/* How many BF16 outputs with a bias test_bf16_inputs saw cuBLASLt's
 * epilogue write (linear_bias_epilogue). */
static long bf16_output_epilogues;

/* Linear layers whose input their producer writes in BF16 (the op table's
 * bf16_inputs path): layer norm's and GELU's BF16 outputs are their FP32
 * outputs rounded to nearest even, bit for bit, and under BF16 products
 * the linear layer on GELU's gives what it gives on the FP32 values, whose
 * products round them the same way (within 1e-6: the two calls may take
 * different cuBLAS algorithms); without BF16 products the BF16-input ops
 * refuse. */
static void test_bf16_inputs(void) {
  qt_rng_t *rng = make_rng(20);
  size_t n = 394, in_c = 192, out_c = 48, count = n * in_c;
  float *x = host_random(rng, count, 0.0, 2.0);
  float *d_x = device_floats(x, count), *d_g = NULL, *d_stats = NULL;
  void *d_h = NULL;
  CHECK_RC(qt_cuda_malloc((void **)&d_g, count * sizeof(float), E));
  CHECK_RC(qt_cuda_malloc(&d_h, count * sizeof(uint16_t), E));
  CHECK_RC(qt_cuda_malloc((void **)&d_stats, 2 * n * sizeof(float), E));
  float *norm_w = host_random(rng, in_c, 1.0, 0.1), *norm_b = host_random(rng, in_c, 0.0, 0.1);
  float *d_norm_w = device_floats(norm_w, in_c), *d_norm_b = device_floats(norm_b, in_c);
  /* Every BF16 array needs BF16 products (the refusals at the end). */
  qt_matmul_precision before = qt_cuda_set_matmul_precision(QT_MATMUL_BF16);
  CHECK_RC(qt_cuda_layernorm_forward(d_g, d_stats, d_stats + n, d_x, d_norm_w, d_norm_b, n, in_c,
                                     1e-6f, E));
  CHECK_RC(qt__cuda_layernorm_forward_bf16(d_h, d_stats, d_stats + n, d_x, d_norm_w, d_norm_b, n,
                                           in_c, 1e-6f, QT__BF16_OUT, E));
  CU_ASSERT_EQUAL(bf16_mismatches(d_h, d_g, count), 0);
  CHECK_RC(qt_cuda_gelu_forward(d_g, d_x, count, E));
  CHECK_RC(qt__cuda_gelu_forward_bf16(d_h, d_x, count, QT__BF16_OUT, E));
  CU_ASSERT_EQUAL(bf16_mismatches(d_h, d_g, count), 0);

  float *weight = host_random(rng, out_c * in_c, 0.0, 0.1), *bias = host_random(rng, out_c, 0.0, 1);
  float *dout = host_random(rng, n * out_c, 0.0, 1.0);
  float *d_w = device_floats(weight, out_c * in_c), *d_b = device_floats(bias, out_c);
  float *d_dout = device_floats(dout, n * out_c);
  float *d_out = device_floats(dout, n * out_c), *d_out_h = device_floats(dout, n * out_c);
  grad dinp = grad_make_unset(count), dinp_h = grad_make_unset(count);
  grad dw = grad_make(rng, out_c * in_c), db = grad_make(rng, out_c);
  float *d_dw_h = device_floats(dw.init, out_c * in_c), *d_db_h = device_floats(db.init, out_c);
  CHECK_RC(qt_cuda_linear_forward(d_out, d_g, d_w, d_b, n, in_c, out_c, E));
  CHECK_RC(qt__cuda_linear_forward_bf16(d_out_h, d_h, d_w, d_b, n, in_c, out_c, QT__BF16_INP, E));
  CHECK_RC(
      qt__cuda_linear_backward(dinp.dev, dw.dev, db.dev, d_dout, d_g, d_w, n, in_c, out_c, 1, E));
  CHECK_RC(qt__cuda_linear_backward_bf16(dinp_h.dev, d_dw_h, d_db_h, d_dout, d_h, d_w, n, in_c,
                                         out_c, 1, QT__BF16_INP, E));
  float *out = download(d_out, n * out_c), *want_dinp = download(dinp.dev, count);
  float *want_dw = download(dw.dev, out_c * in_c), *want_db = download(db.dev, out_c);
  expect_parity_tol("linear on BF16 GELU: out", d_out_h, out, NULL, n * out_c, 1e-6);
  expect_parity_tol("linear on BF16 GELU: dinp", dinp_h.dev, want_dinp, NULL, count, 1e-6);
  expect_parity_tol("linear on BF16 GELU: dweight", d_dw_h, want_dw, dw.init, out_c * in_c, 1e-6);
  expect_parity_tol("linear on BF16 GELU: dbias", d_db_h, want_db, db.init, out_c, 1e-6);
  /* The output in BF16 too (qkv's): the FP32 output rounded, give or take
   * the last bit where the two calls' algorithms add in another order:
   * within one BF16 rounding (2^-8 of the largest value), with the bias
   * and without. Where cuBLASLt's epilogue took it, the bias it added was
   * rounded to BF16 first, and so is the FP32 output's. */
  void *d_out16 = NULL;
  CHECK_RC(qt_cuda_malloc(&d_out16, n * out_c * sizeof(uint16_t), E));
  float *bias16 = host_bf16(bias, out_c), *d_b16 = device_floats(bias16, out_c);
  for (int with_bias = 1; with_bias >= 0; with_bias--) {
    const float *b = with_bias ? d_b : NULL;
    long taken = qt__cuda_linear_lt_count();
    CHECK_RC(qt__cuda_linear_forward_bf16(d_out16, d_h, d_w, b, n, in_c, out_c,
                                          QT__BF16_INP | QT__BF16_OUT, E));
    if (with_bias && qt__cuda_linear_lt_count() > taken) {
      b = d_b16;
      bf16_output_epilogues++;
    }
    CHECK_RC(qt__cuda_linear_forward_bf16(d_out_h, d_h, d_w, b, n, in_c, out_c, QT__BF16_INP, E));
    double error = bf16_parity(d_out16, d_out_h, n * out_c);
    if (!(error <= 1.0 / 256))
      printf("\n    BF16 output%s: off by %.3g", with_bias ? "" : " no bias", error);
    CU_ASSERT(error <= 1.0 / 256);
    CU_ASSERT(bf16_mismatches(d_out16, d_out_h, n * out_c) <= n * out_c / 100);
  }
  /* The output's gradient in BF16 too (qkv's, as the fused attention
   * writes it): what the BF16-input backward gives on the same values. */
  uint16_t *dout16 = malloc(n * out_c * sizeof *dout16);
  CU_ASSERT_PTR_NOT_NULL_FATAL(dout16);
  for (size_t i = 0; i < n * out_c; i++) {
    dout[i] = bf16_round(dout[i]);
    dout16[i] = qt_test_bf16_bits(dout[i]);
  }
  void *d_dout16 = device_copy(dout16, n * out_c, sizeof *dout16);
  float *d_rounded = device_floats(dout, n * out_c);
  float *d_w2[2], *d_b2[2], *d_in2[2];
  for (int k = 0; k < 2; k++) {
    d_w2[k] = device_floats(dw.init, out_c * in_c);
    d_b2[k] = device_floats(db.init, out_c);
    d_in2[k] = device_alloc(count);
  }
  CHECK_RC(qt__cuda_linear_backward_bf16(d_in2[0], d_w2[0], d_b2[0], d_rounded, d_h, d_w, n, in_c,
                                         out_c, 1, QT__BF16_INP, E));
  CHECK_RC(qt__cuda_linear_backward_bf16(d_in2[1], d_w2[1], d_b2[1], d_dout16, d_h, d_w, n, in_c,
                                         out_c, 1, QT__BF16_INP | QT__BF16_DOUT, E));
  float *want2[3] = {download(d_in2[0], count), download(d_w2[0], out_c * in_c),
                     download(d_b2[0], out_c)};
  expect_parity_tol("linear, BF16 dout: dinp", d_in2[1], want2[0], NULL, count, 1e-6);
  expect_parity_tol("linear, BF16 dout: dweight", d_w2[1], want2[1], dw.init, out_c * in_c, 1e-6);
  expect_parity_tol("linear, BF16 dout: dbias", d_b2[1], want2[2], db.init, out_c, 1e-6);
  /* The input's gradient written in BF16 (fc2's, GELU's output gradient):
   * the FP32 one rounded, give or take the last bit as the output above,
   * with and without the bias gradient's pass, under both BF16 precisions
   * (the converting one writes through scratch). */
  void *d_dinp16 = NULL;
  CHECK_RC(qt_cuda_malloc(&d_dinp16, count * sizeof(uint16_t), E));
  qt_matmul_precision bf16_kinds[2] = {QT_MATMUL_BF16, QT_MATMUL_BF16_FAST};
  for (int p = 0; p < 2; p++) {
    qt_cuda_set_matmul_precision(bf16_kinds[p]);
    for (int with_bias = 1; with_bias >= 0; with_bias--) {
      CHECK_RC(qt__cuda_linear_backward_bf16(d_in2[0], NULL, with_bias ? d_b2[0] : NULL, d_dout,
                                             d_h, d_w, n, in_c, out_c, 1, QT__BF16_INP, E));
      CHECK_RC(qt__cuda_linear_backward_bf16(d_dinp16, NULL, with_bias ? d_b2[1] : NULL, d_dout,
                                             d_h, d_w, n, in_c, out_c, 1,
                                             QT__BF16_INP | QT__BF16_DINP, E));
      double error = bf16_parity(d_dinp16, d_in2[0], count);
      if (!(error <= 1.0 / 256))
        printf("\n    BF16 dinp (precision %d%s): off by %.3g", (int)bf16_kinds[p],
               with_bias ? "" : ", no bias", error);
      CU_ASSERT(error <= 1.0 / 256);
      CU_ASSERT(bf16_mismatches(d_dinp16, d_in2[0], count) <= count / 100);
    }
  }
  qt_cuda_set_matmul_precision(QT_MATMUL_BF16);
  qt_err added;
  CU_ASSERT_EQUAL(qt__cuda_linear_backward_bf16(d_dinp16, NULL, NULL, d_dout, d_h, d_w, n, in_c,
                                                out_c, 0, QT__BF16_INP | QT__BF16_DINP, &added),
                  QT_EINVAL);
  qt_cuda_free(d_dinp16);
  for (int k = 0; k < 2; k++) {
    qt_cuda_free(d_w2[k]);
    qt_cuda_free(d_b2[k]);
    qt_cuda_free(d_in2[k]);
  }
  for (int k = 0; k < 3; k++) free(want2[k]);
  free(dout16);
  qt_cuda_free(d_dout16);
  qt_cuda_free(d_rounded);
  CU_ASSERT(qt__cuda_bf16_activations(n, 1, in_c, 1) & QT__KEEP_LINEAR_INPUTS);
  qt_err err;
  /* A BF16 array that the op does not take is refused. */
  CU_ASSERT_EQUAL(qt__cuda_layernorm_forward_bf16(d_h, d_stats, d_stats + n, d_h, d_norm_w,
                                                  d_norm_b, n, in_c, 1e-6f, QT__BF16_INP, &err),
                  QT_EINVAL);
  CU_ASSERT_EQUAL(
      qt__cuda_linear_forward_bf16(d_out_h, d_h, d_w, d_b, n, in_c, out_c, QT__BF16_DINP, &err),
      QT_EINVAL);
  qt_cuda_set_matmul_precision(QT_MATMUL_FP32);
  CU_ASSERT_EQUAL(qt__cuda_bf16_activations(n, 1, in_c, 1), 0u);
  CU_ASSERT_EQUAL(
      qt__cuda_linear_forward_bf16(d_out_h, d_h, d_w, d_b, n, in_c, out_c, QT__BF16_INP, &err),
      QT_EINVAL);
  CU_ASSERT_EQUAL(qt__cuda_linear_forward_bf16(d_out16, d_h, d_w, d_b, n, in_c, out_c,
                                               QT__BF16_INP | QT__BF16_OUT, &err),
                  QT_EINVAL);
  CU_ASSERT_EQUAL(qt__cuda_linear_backward_bf16(dinp_h.dev, d_dw_h, d_db_h, d_h, d_h, d_w, n, in_c,
                                                out_c, 1, QT__BF16_INP | QT__BF16_DOUT, &err),
                  QT_EINVAL);
  qt_cuda_free(d_out16);
  CU_ASSERT_EQUAL(qt__cuda_linear_backward_bf16(dinp_h.dev, d_dw_h, d_db_h, d_dout, d_h, d_w, n,
                                                in_c, out_c, 1, QT__BF16_INP, &err),
                  QT_EINVAL);
  qt_cuda_set_matmul_precision(before);

  grad_free(&dinp);
  grad_free(&dinp_h);
  grad_free(&dw);
  grad_free(&db);
  free(x);
  free(norm_w);
  free(norm_b);
  free(weight);
  free(bias);
  free(bias16);
  free(dout);
  free(out);
  free(want_dinp);
  free(want_dw);
  free(want_db);
  qt_cuda_free(d_x);
  qt_cuda_free(d_g);
  qt_cuda_free(d_h);
  qt_cuda_free(d_stats);
  qt_cuda_free(d_norm_w);
  qt_cuda_free(d_norm_b);
  qt_cuda_free(d_w);
  qt_cuda_free(d_b);
  qt_cuda_free(d_b16);
  qt_cuda_free(d_dout);
  qt_cuda_free(d_out);
  qt_cuda_free(d_out_h);
  qt_cuda_free(d_dw_h);
  qt_cuda_free(d_db_h);
  qt_rng_free(rng);
}

/* Mixed precision (amp: bf16): the linear cases within the BF16 bound of the
 * FP32 CPU, and exactly the rounded operands' products. */
static void test_linear_bf16(void) {
  CU_ASSERT_EQUAL(qt_cuda_set_matmul_precision(QT_MATMUL_BF16), QT_MATMUL_FP32);
  tolerance = BF16_TOLERANCE;
  test_linear();
  linear_bf16_exact(37, 45, 29, 18);
  linear_bf16_exact(394, 192, 576, 19);
  tolerance = PARITY_TOLERANCE;
  CU_ASSERT_EQUAL(qt_cuda_set_matmul_precision(QT_MATMUL_FP32), QT_MATMUL_BF16);
}

/* The same bound with cuBLAS converting the operands (QT_MATMUL_BF16_FAST,
 * bench/engine --amp bf16-fast); its rounding is cuBLAS's, so no exact
 * check. */
static void test_linear_bf16_fast(void) {
  CU_ASSERT_EQUAL(qt_cuda_set_matmul_precision(QT_MATMUL_BF16_FAST), QT_MATMUL_FP32);
  tolerance = BF16_TOLERANCE;
  test_linear();
  tolerance = PARITY_TOLERANCE;
  CU_ASSERT_EQUAL(qt_cuda_set_matmul_precision(QT_MATMUL_FP32), QT_MATMUL_BF16_FAST);
}

/* ------------------------------------------------------------------------- */
/* Layer norm                                                                 */
/* ------------------------------------------------------------------------- */

static void layernorm_case(size_t n, size_t c, int affine, uint64_t seed) {
  qt_rng_t *rng = make_rng(seed);
  char what[96];
  const float eps = 1e-6f;
  /* Rows with a large mean test the two-pass variance. */
  float *inp = host_random(rng, n * c, 3.0, 2.0);
  float *weight = affine ? host_random(rng, c, 1.0, 0.2) : NULL;
  float *bias = affine ? host_random(rng, c, 0.0, 0.2) : NULL;
  float *dout = host_random(rng, n * c, 0.0, 1.0);
  float *d_inp = device_floats(inp, n * c), *d_dout = device_floats(dout, n * c);
  float *d_weight = affine ? device_floats(weight, c) : NULL;
  float *d_bias = affine ? device_floats(bias, c) : NULL;

  float *out = host_random(rng, n * c, 0.0, 1.0), *mean = host_random(rng, n, 0.0, 1.0);
  float *rstd = host_random(rng, n, 0.0, 1.0);
  float *d_out = device_floats(out, n * c), *d_mean = device_floats(mean, n);
  float *d_rstd = device_floats(rstd, n);
  qt_cpu_layernorm_forward(out, mean, rstd, inp, weight, bias, n, c, eps);
  CHECK_RC(qt_cuda_layernorm_forward(d_out, d_mean, d_rstd, d_inp, d_weight, d_bias, n, c, eps, E));
  snprintf(what, sizeof what, "layernorm (%zu, %zu)%s: out", n, c, affine ? "" : " no affine");
  expect_parity(what, d_out, out, NULL, n * c);
  snprintf(what, sizeof what, "layernorm (%zu, %zu): mean", n, c);
  expect_parity(what, d_mean, mean, NULL, n);
  snprintf(what, sizeof what, "layernorm (%zu, %zu): rstd", n, c);
  expect_parity(what, d_rstd, rstd, NULL, n);

  /* The backward reads the CPU's statistics on both sides. */
  CHECK_RC(qt_cuda_copy_to_device(d_mean, mean, n * sizeof *mean, E));
  CHECK_RC(qt_cuda_copy_to_device(d_rstd, rstd, n * sizeof *rstd, E));
  grad dinp = grad_make(rng, n * c), dweight = grad_make(rng, c), dbias = grad_make(rng, c);
  qt_cpu_layernorm_backward(dinp.cpu, dweight.cpu, dbias.cpu, dout, inp, weight, mean, rstd, n, c);
  CHECK_RC(qt_cuda_layernorm_backward(dinp.dev, dweight.dev, dbias.dev, d_dout, d_inp, d_weight,
                                      d_mean, d_rstd, n, c, E));
  snprintf(what, sizeof what, "layernorm (%zu, %zu): dinp", n, c);
  grad_check(what, &dinp);
  snprintf(what, sizeof what, "layernorm (%zu, %zu): dweight", n, c);
  grad_check(what, &dweight);
  snprintf(what, sizeof what, "layernorm (%zu, %zu): dbias", n, c);
  grad_check(what, &dbias);

  /* The output's gradient in BF16 (QT__KEEP_NORM_GRAD; under BF16
   * products): what the FP32 gradient of the same values gives, bit for
   * bit. */
  uint16_t *dout16 = malloc(n * c * sizeof *dout16);
  CU_ASSERT_PTR_NOT_NULL_FATAL(dout16);
  for (size_t i = 0; i < n * c; i++) {
    dout[i] = bf16_round(dout[i]);
    dout16[i] = qt_test_bf16_bits(dout[i]);
  }
  void *d_dout16 = device_copy(dout16, n * c, sizeof *dout16);
  CHECK_RC(qt_cuda_copy_to_device(d_dout, dout, n * c * sizeof *dout, E));
  float *from[2][3];
  for (int k = 0; k < 2; k++) {
    from[k][0] = device_floats(dinp.init, n * c);
    from[k][1] = device_floats(dweight.init, c);
    from[k][2] = device_floats(dbias.init, c);
  }
  qt_matmul_precision before = qt_cuda_set_matmul_precision(QT_MATMUL_BF16);
  CHECK_RC(qt_cuda_layernorm_backward(from[0][0], from[0][1], from[0][2], d_dout, d_inp, d_weight,
                                      d_mean, d_rstd, n, c, E));
  CHECK_RC(qt__cuda_layernorm_backward_bf16(from[1][0], from[1][1], from[1][2], d_dout16, d_inp,
                                            d_weight, d_mean, d_rstd, n, c, QT__BF16_DOUT, E));
  qt_cuda_set_matmul_precision(before);
  int same = device_equal(from[0][0], from[1][0], n * c) &&
             device_equal(from[0][1], from[1][1], c) && device_equal(from[0][2], from[1][2], c);
  if (!same) printf("\n    layernorm (%zu, %zu): the BF16 output gradient's differ", n, c);
  CU_ASSERT(same);
  for (int k = 0; k < 2; k++)
    for (int j = 0; j < 3; j++) qt_cuda_free(from[k][j]);
  free(dout16);
  qt_cuda_free(d_dout16);

  grad_free(&dinp);
  grad_free(&dweight);
  grad_free(&dbias);
  free(inp);
  free(weight);
  free(bias);
  free(dout);
  free(out);
  free(mean);
  free(rstd);
  qt_cuda_free(d_inp);
  qt_cuda_free(d_dout);
  qt_cuda_free(d_weight);
  qt_cuda_free(d_bias);
  qt_cuda_free(d_out);
  qt_cuda_free(d_mean);
  qt_cuda_free(d_rstd);
  qt_rng_free(rng);
}

/* The row kernels (qt_cuda_layernorm.cuh) give the loop kernels' forward
 * (out, mean, rstd) and dinp to the bit: the same float expressions and
 * double sums in the same order. */
static void layernorm_paths_agree(size_t n, size_t c, uint64_t seed) {
  qt_rng_t *rng = make_rng(seed);
  float *inp = host_random(rng, n * c, 3.0, 2.0), *weight = host_random(rng, c, 1.0, 0.2);
  float *bias = host_random(rng, c, 0.0, 0.2), *dout = host_random(rng, n * c, 0.0, 1.0);
  float *dinp0 = host_random(rng, n * c, 0.0, 1.0);
  float *d_inp = device_floats(inp, n * c), *d_weight = device_floats(weight, c);
  float *d_bias = device_floats(bias, c), *d_dout = device_floats(dout, n * c);
  /* Per path: [out (n, c) | mean (n) | rstd (n)], and dinp. */
  size_t floats = n * c + 2 * n;
  float *out[2], *dinp[2];
  int was = qt__cuda_set_layernorm_rows(1);
  for (int rows = 1; rows >= 0; rows--) {
    qt__cuda_set_layernorm_rows(rows);
    float *stats = (out[rows] = device_alloc(floats)) + n * c;
    dinp[rows] = device_floats(dinp0, n * c);
    CHECK_RC(qt_cuda_layernorm_forward(out[rows], stats, stats + n, d_inp, d_weight, d_bias, n, c,
                                       1e-6f, E));
    CHECK_RC(qt_cuda_layernorm_backward(dinp[rows], NULL, NULL, d_dout, d_inp, d_weight, stats,
                                        stats + n, n, c, E));
  }
  qt__cuda_set_layernorm_rows(was);
  CU_ASSERT(device_equal(out[0], out[1], floats));
  CU_ASSERT(device_equal(dinp[0], dinp[1], n * c));
  float *host[] = {inp, weight, bias, dout, dinp0};
  for (size_t i = 0; i < sizeof host / sizeof *host; i++) free(host[i]);
  float *dev[] = {d_inp, d_weight, d_bias, d_dout, out[0], out[1], dinp[0], dinp[1]};
  for (size_t i = 0; i < sizeof dev / sizeof *dev; i++) qt_cuda_free(dev[i]);
  qt_rng_free(rng);
}

/* Every case through the row kernels (the default for rows of at most 1024
 * features), their backward's sums in shared memory (the default up to 768
 * features) and in registers, and through the loop kernels. */
static void test_layernorm(void) {
  int was = qt__cuda_set_layernorm_rows(1), was_shared = qt__cuda_set_layernorm_shared_sums(1);
  for (int path = 2; path >= 0; path--) {
    int rows = path > 0;
    qt__cuda_set_layernorm_rows(rows);
    qt__cuda_set_layernorm_shared_sums(path == 2);
    layernorm_case(1, 1, 1, 31);
    layernorm_case(5, 7, 1, 32);
    layernorm_case(5, 7, 0, 33);
    layernorm_case(394, 192, 1, 34);
    layernorm_case(3, 1000, 1, 35); /* more features than threads per block */
    layernorm_case(2, 768, 1, 36);
    layernorm_case(3000, 40, 1, 37);   /* the parameter gradients' rows in chunks */
    layernorm_case(12608, 768, 1, 38); /* ViT-B/16 at batch 64 */
    layernorm_case(60000, 24, 1, 39);  /* more rows than 1024 chunks of 48 */
    layernorm_case(4, 1025, 1, 40);    /* wider than the row kernels */
  }
  qt__cuda_set_layernorm_rows(was);
  qt__cuda_set_layernorm_shared_sums(was_shared);
  layernorm_paths_agree(12608, 768, 41);
  layernorm_paths_agree(37, 1000, 42);
}

/* ------------------------------------------------------------------------- */
/* GELU                                                                       */
/* ------------------------------------------------------------------------- */

static void test_gelu(void) {
  static const size_t sizes[] = {1, 1000, 100003};
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    size_t n = sizes[s];
    qt_rng_t *rng = make_rng(40 + s);
    char what[96];
    float *inp = host_random(rng, n, 0.0, 3.0), *dout = host_random(rng, n, 0.0, 1.0);
    float *d_inp = device_floats(inp, n), *d_dout = device_floats(dout, n);
    float *out = host_random(rng, n, 0.0, 1.0);
    float *d_out = device_floats(out, n);
    qt_cpu_gelu_forward(out, inp, n);
    CHECK_RC(qt_cuda_gelu_forward(d_out, d_inp, n, E));
    snprintf(what, sizeof what, "gelu (%zu): out", n);
    expect_parity(what, d_out, out, NULL, n);
    grad dinp = grad_make(rng, n);
    qt_cpu_gelu_backward(dinp.cpu, dout, inp, n);
    CHECK_RC(qt_cuda_gelu_backward(dinp.dev, d_dout, d_inp, n, E));
    snprintf(what, sizeof what, "gelu (%zu): dinp", n);
    grad_check(what, &dinp);
    grad fresh = grad_make_unset(n);
    qt_cpu_gelu_backward(fresh.cpu, dout, inp, n);
    CHECK_RC(qt__cuda_gelu_backward(fresh.dev, d_dout, d_inp, n, 1, E));
    snprintf(what, sizeof what, "gelu (%zu): dinp set", n);
    grad_check(what, &fresh);
    grad_free(&fresh);
    /* In place: out == inp. */
    CHECK_RC(qt_cuda_gelu_forward(d_inp, d_inp, n, E));
    snprintf(what, sizeof what, "gelu (%zu) in place: out", n);
    expect_parity(what, d_inp, out, NULL, n);
    grad_free(&dinp);
    free(inp);
    free(dout);
    free(out);
    qt_cuda_free(d_inp);
    qt_cuda_free(d_dout);
    qt_cuda_free(d_out);
    qt_rng_free(rng);
  }
}

/* ------------------------------------------------------------------------- */
/* Attention                                                                  */
/* ------------------------------------------------------------------------- */

/* Whether the attention cases round q, k, v and the output's gradient to
 * BF16 on the host first (while they run with BF16 products): the error
 * left is then that of the products' inner roundings (the probabilities,
 * the scores' gradient), not of the inputs'. With N(0, 1) inputs of 64
 * features, rounding q and k alone moves a score by about 4e-3, and the
 * parity error, a maximum over every element, comes near 1e-2 (host
 * emulation of the fused kernels, test_emulated_attention, inputs rounded:
 * up to 3.7e-3). */
static int round_attention_inputs = 0;

static void round_to_bf16(float *x, size_t n) {
  for (size_t i = 0; i < n; i++) x[i] = bf16_round(x[i]);
}

static void attention_case(size_t batch, size_t tokens, size_t c, size_t heads, uint64_t seed) {
  qt_rng_t *rng = make_rng(seed);
  char what[128];
  size_t n_qkv = batch * tokens * 3 * c, n_out = batch * tokens * c;
  size_t n_att = batch * heads * tokens * tokens;
  float *qkv = host_random(rng, n_qkv, 0.0, 1.0), *dout = host_random(rng, n_out, 0.0, 1.0);
  if (round_attention_inputs) {
    round_to_bf16(qkv, n_qkv);
    round_to_bf16(dout, n_out);
  }
  float *d_qkv = device_floats(qkv, n_qkv), *d_dout = device_floats(dout, n_out);
  float *out = host_random(rng, n_out, 0.0, 1.0), *att = host_random(rng, n_att, 0.0, 1.0);
  float *d_out = device_floats(out, n_out), *d_att = device_floats(att, n_att);
  qt_cpu_attention_forward(out, att, qkv, batch, tokens, c, heads);
  CHECK_RC(qt_cuda_attention_forward(d_out, d_att, d_qkv, batch, tokens, c, heads, E));
  snprintf(what, sizeof what, "attention b %zu, T %zu, c %zu, heads %zu: att", batch, tokens, c,
           heads);
  check(what, d_att, att, NULL, n_att);
  snprintf(what, sizeof what, "attention b %zu, T %zu, c %zu, heads %zu: out", batch, tokens, c,
           heads);
  check(what, d_out, out, NULL, n_out);

  /* The backward reads the CPU's probabilities on both sides. */
  CHECK_RC(qt_cuda_copy_to_device(d_att, att, n_att * sizeof *att, E));
  float *scratch = malloc(tokens * tokens * sizeof *scratch);
  CU_ASSERT_PTR_NOT_NULL_FATAL(scratch);
  float *d_scratch = NULL;
  CHECK_RC(qt_cuda_malloc((void **)&d_scratch,
                          qt_cuda_attention_scratch_size(batch, tokens, heads) * sizeof(float), E));
  grad dqkv = grad_make(rng, n_qkv);
  qt_cpu_attention_backward(dqkv.cpu, scratch, dout, qkv, att, batch, tokens, c, heads);
  CHECK_RC(qt_cuda_attention_backward(dqkv.dev, d_scratch, d_dout, d_qkv, d_att, batch, tokens, c,
                                      heads, E));
  snprintf(what, sizeof what, "attention b %zu, T %zu, c %zu, heads %zu: dqkv", batch, tokens, c,
           heads);
  check_grad(what, &dqkv);
  grad fresh = grad_make_unset(n_qkv);
  qt_cpu_attention_backward(fresh.cpu, scratch, dout, qkv, att, batch, tokens, c, heads);
  CHECK_RC(qt__cuda_attention_backward(fresh.dev, d_scratch, d_dout, d_qkv, d_att, batch, tokens, c,
                                       heads, 1, E));
  snprintf(what, sizeof what, "attention b %zu, T %zu, c %zu, heads %zu: dqkv set", batch, tokens,
           c, heads);
  check_grad(what, &fresh);
  grad_free(&fresh);

  grad_free(&dqkv);
  free(qkv);
  free(dout);
  free(out);
  free(att);
  free(scratch);
  qt_cuda_free(d_qkv);
  qt_cuda_free(d_dout);
  qt_cuda_free(d_out);
  qt_cuda_free(d_att);
  qt_cuda_free(d_scratch);
  qt_rng_free(rng);
}

static void test_attention(void) {
  attention_case(1, 1, 4, 1, 51);
  attention_case(1, 5, 8, 2, 52);
  attention_case(3, 33, 48, 4, 53);
  attention_case(2, 197, 192, 3, 54); /* ViT-Ti/16 at 224 px */
  attention_case(1, 50, 768, 12, 55); /* ViT-B width, 7x7 patches */
  attention_case(6, 17, 64, 4, 56);   /* more images than heads: one call per head */
}

/* Attention's four products in BF16 (converted by cuBLAS: the operands are
 * interleaved in qkv): within the BF16 bound of the CPU. */
static void test_attention_bf16(void) {
  qt_cuda_set_matmul_precision(QT_MATMUL_BF16);
  tolerance = BF16_TOLERANCE;
  round_attention_inputs = 1;
  test_attention();
  round_attention_inputs = 0;
  tolerance = PARITY_TOLERANCE;
  qt_cuda_set_matmul_precision(QT_MATMUL_FP32);
}

/* The log-sum-exp of each row of scaled scores, in double on the host:
 * lse (batch, heads, tokens). */
static void host_lse(double *lse, const float *qkv, size_t batch, size_t tokens, size_t c,
                     size_t heads) {
  size_t hs = c / heads;
  double *row = malloc(tokens * sizeof *row);
  CU_ASSERT_PTR_NOT_NULL_FATAL(row);
  for (size_t b = 0; b < batch; b++) {
    for (size_t h = 0; h < heads; h++) {
      for (size_t i = 0; i < tokens; i++) {
        const float *q = qkv + (b * tokens + i) * 3 * c + h * hs;
        double max = -INFINITY, sum = 0.0;
        for (size_t j = 0; j < tokens; j++) {
          const float *k = qkv + (b * tokens + j) * 3 * c + c + h * hs;
          double dot = 0.0;
          for (size_t f = 0; f < hs; f++) dot += (double)q[f] * k[f];
          row[j] = dot / sqrt((double)hs);
          max = fmax(max, row[j]);
        }
        for (size_t j = 0; j < tokens; j++) sum += exp(row[j] - max);
        lse[(b * heads + h) * tokens + i] = max + log(sum);
      }
    }
  }
  free(row);
}

/* The fused attention kernels (the op table's under BF16 products) on
 * inputs rounded to BF16: out and dqkv (added to, and written with `set`)
 * within the BF16 bound of the FP32 CPU, the stored log-sum-exps within
 * 1e-4 of the host's in double (their scores are exact products of the
 * rounded inputs), and the BF16 output for proj the FP32 output rounded,
 * bit for bit. Turned on (qt__cuda_set_fused_attention), the op table
 * takes them (the default), and writes BF16 for proj, under BF16 products
 * and not under FP32; turned off, not under BF16 either. */
static void attention_fused_case(size_t batch, size_t tokens, size_t heads, uint64_t seed) {
  size_t c = 64 * heads;
  char what[128], label[160];
  snprintf(what, sizeof what, "fused attention b %zu, T %zu, heads %zu", batch, tokens, heads);
  CU_ASSERT_FATAL(qt__cuda_attention_fused_fits(batch, tokens, c, heads));
  qt_rng_t *rng = make_rng(seed);
  size_t n_qkv = batch * tokens * 3 * c, n_out = batch * tokens * c;
  size_t n_att = batch * heads * tokens * tokens, n_lse = batch * heads * tokens;
  float *qkv = host_random(rng, n_qkv, 0.0, 1.0), *dout = host_random(rng, n_out, 0.0, 1.0);
  round_to_bf16(qkv, n_qkv);
  round_to_bf16(dout, n_out);
  float *out = malloc(n_out * sizeof *out), *att = malloc(n_att * sizeof *att);
  float *lse = malloc(n_lse * sizeof *lse), *scratch = malloc(tokens * tokens * sizeof *scratch);
  double *want_lse = malloc(n_lse * sizeof *want_lse);
  CU_ASSERT_FATAL(out && att && lse && scratch && want_lse);
  qt_cpu_attention_forward(out, att, qkv, batch, tokens, c, heads);
  host_lse(want_lse, qkv, batch, tokens, c, heads);

  float *d_qkv = device_floats(qkv, n_qkv), *d_dout = device_floats(dout, n_out);
  float *d_out = device_floats(out, n_out), *d_att = NULL, *d_scratch = NULL;
  CHECK_RC(qt_cuda_malloc((void **)&d_att, n_att * sizeof(float), E));
  CHECK_RC(qt_cuda_malloc((void **)&d_scratch,
                          qt_cuda_attention_scratch_size(batch, tokens, heads) * sizeof(float), E));
  CHECK_RC(qt_cuda_zero(d_out, n_out * sizeof(float), E));
  CHECK_RC(qt__cuda_attention_fused_forward(d_out, d_att, d_qkv, batch, tokens, c, heads, E));
  snprintf(label, sizeof label, "%s: out", what);
  expect_parity_tol(label, d_out, out, NULL, n_out, BF16_TOLERANCE);
  CHECK_RC(qt_cuda_copy_to_host(lse, d_att, n_lse * sizeof *lse, E));
  double lse_error = 0.0;
  for (size_t i = 0; i < n_lse; i++) lse_error = fmax(lse_error, fabs(lse[i] - want_lse[i]));
  if (!(lse_error < 1e-4)) printf("\n    %s: log-sum-exp off by %.3g", what, lse_error);
  CU_ASSERT(lse_error < 1e-4);
  /* The BF16 output for proj: the FP32 output rounded, bit for bit. */
  void *d_out16 = NULL;
  CHECK_RC(qt_cuda_malloc(&d_out16, n_out * sizeof(uint16_t), E));
  CHECK_RC(qt__cuda_attention_fused_forward_bf16(d_out16, d_att, d_qkv, batch, tokens, c, heads,
                                                 QT__BF16_OUT, E));
  CU_ASSERT_EQUAL(bf16_mismatches(d_out16, d_out, n_out), 0);

  grad added = grad_make(rng, n_qkv), fresh = grad_make_unset(n_qkv);
  qt_cpu_attention_backward(added.cpu, scratch, dout, qkv, att, batch, tokens, c, heads);
  qt_cpu_attention_backward(fresh.cpu, scratch, dout, qkv, att, batch, tokens, c, heads);
  CHECK_RC(qt__cuda_attention_fused_backward(added.dev, d_scratch, d_dout, d_qkv, d_att, d_out,
                                             batch, tokens, c, heads, 0, E));
  CHECK_RC(qt__cuda_attention_fused_backward(fresh.dev, d_scratch, d_dout, d_qkv, d_att, d_out,
                                             batch, tokens, c, heads, 1, E));
  snprintf(label, sizeof label, "%s: dqkv", what);
  expect_parity_tol(label, added.dev, added.cpu, added.init, n_qkv, BF16_TOLERANCE);
  snprintf(label, sizeof label, "%s: dqkv set", what);
  expect_parity_tol(label, fresh.dev, fresh.cpu, fresh.init, n_qkv, BF16_TOLERANCE);
  /* D from the BF16 output (the array proj reads, which the backward is
   * then handed): dqkv within the BF16 bound too. */
  grad fresh_y16 = grad_make_unset(n_qkv);
  CHECK_RC(qt__cuda_attention_fused_backward_bf16(fresh_y16.dev, d_scratch, d_dout, d_qkv, d_att,
                                                  d_out16, batch, tokens, c, heads, 1, QT__BF16_OUT,
                                                  E));
  snprintf(label, sizeof label, "%s: dqkv, BF16 out", what);
  expect_parity_tol(label, fresh_y16.dev, fresh.cpu, fresh_y16.init, n_qkv, BF16_TOLERANCE);

  /* qkv in BF16 (its values already are): the same att and BF16 output,
   * and dqkv in BF16 the FP32 one (D from the BF16 output) rounded, bit
   * for bit; from a 16-byte
   * boundary (K and V staged 8 values a load) and from 4 bytes past one
   * (by pairs). With dout in BF16 too (its values already are): the same
   * dqkv, bit for bit. */
  uint16_t *qkv16 = calloc(n_qkv + 2, sizeof *qkv16), *dout16 = calloc(n_out + 2, sizeof *dout16);
  CU_ASSERT_PTR_NOT_NULL_FATAL(qkv16);
  CU_ASSERT_PTR_NOT_NULL_FATAL(dout16);
  for (size_t i = 0; i < n_qkv; i++) qkv16[i] = qt_test_bf16_bits(qkv[i]);
  for (size_t i = 0; i < n_out; i++) dout16[i] = qt_test_bf16_bits(dout[i]);
  void *d_out16_h = NULL, *d_dqkv16 = NULL, *d_dqkv16_b = NULL;
  float *d_att_h = NULL;
  CHECK_RC(qt_cuda_malloc(&d_out16_h, n_out * sizeof(uint16_t), E));
  CHECK_RC(qt_cuda_malloc(&d_dqkv16, n_qkv * sizeof(uint16_t), E));
  CHECK_RC(qt_cuda_malloc(&d_dqkv16_b, n_qkv * sizeof(uint16_t), E));
  CHECK_RC(qt_cuda_malloc((void **)&d_att_h, n_att * sizeof(float), E));
  uint16_t *out16 = download_bytes(d_out16, n_out * sizeof *out16);
  float *kept = download(d_att, n_lse);
  for (int shift = 0; shift <= 2; shift += 2) {
    if (shift) memmove(qkv16 + shift, qkv16, n_qkv * sizeof *qkv16);
    if (shift) memmove(dout16 + shift, dout16, n_out * sizeof *dout16);
    uint16_t *d_qkv16 = device_copy(qkv16, n_qkv + 2, sizeof *qkv16);
    uint16_t *d_dout16 = device_copy(dout16, n_out + 2, sizeof *dout16);
    /* Staged whole, then by asynchronous copies (qt__cuda_set_fa_async;
     * on 16 bytes only, else by pairs again): the same bits. */
    for (int async = 0; async <= 1; async++) {
      int was_async = qt__cuda_set_fa_async(async);
      CHECK_RC(qt__cuda_attention_fused_forward_bf16(d_out16_h, d_att_h, d_qkv16 + shift, batch,
                                                     tokens, c, heads, QT__BF16_INP | QT__BF16_OUT,
                                                     E));
      CHECK_RC(qt__cuda_attention_fused_backward_bf16(
          d_dqkv16, d_scratch, d_dout, d_qkv16 + shift, d_att_h, d_out16_h, batch, tokens, c, heads,
          1, QT__BF16_INP | QT__BF16_OUT | QT__BF16_DINP, E));
      uint16_t *out16_h = download_bytes(d_out16_h, n_out * sizeof *out16_h);
      float *kept_h = download(d_att_h, n_lse);
      CU_ASSERT(memcmp(out16_h, out16, n_out * sizeof *out16) == 0);
      CU_ASSERT(memcmp(kept_h, kept, n_lse * sizeof *kept) == 0);
      CU_ASSERT_EQUAL(bf16_mismatches(d_dqkv16, fresh_y16.dev, n_qkv), 0);
      CHECK_RC(qt__cuda_attention_fused_backward_bf16(
          d_dqkv16_b, d_scratch, d_dout16 + shift, d_qkv16 + shift, d_att_h, d_out16_h, batch,
          tokens, c, heads, 1, QT__BF16_INP | QT__BF16_OUT | QT__BF16_DINP | QT__BF16_DOUT, E));
      uint16_t *dqkv16[2] = {download_bytes(d_dqkv16, n_qkv * sizeof(uint16_t)),
                             download_bytes(d_dqkv16_b, n_qkv * sizeof(uint16_t))};
      CU_ASSERT(memcmp(dqkv16[0], dqkv16[1], n_qkv * sizeof(uint16_t)) == 0);
      free(dqkv16[0]);
      free(dqkv16[1]);
      free(out16_h);
      free(kept_h);
      /* dQ from dS by cuBLAS (qt__cuda_set_fa_ds): dqkv within the BF16
       * bound of the CPU's, dK and dV the same bits. */
      int was_ds = qt__cuda_set_fa_ds(1);
      CHECK_RC(qt__cuda_attention_fused_backward_bf16(
          d_dqkv16_b, d_scratch, d_dout16 + shift, d_qkv16 + shift, d_att_h, d_out16_h, batch,
          tokens, c, heads, 1, QT__BF16_INP | QT__BF16_OUT | QT__BF16_DINP | QT__BF16_DOUT, E));
      qt__cuda_set_fa_ds(was_ds);
      uint16_t *by_ds = download_bytes(d_dqkv16_b, n_qkv * sizeof(uint16_t));
      uint16_t *by_dq = download_bytes(d_dqkv16, n_qkv * sizeof(uint16_t));
      float *by_ds_f = malloc(n_qkv * sizeof *by_ds_f);
      CU_ASSERT_PTR_NOT_NULL_FATAL(by_ds_f);
      size_t kv_off = 0;
      for (size_t i = 0; i < n_qkv; i++) {
        by_ds_f[i] = qt_test_bf16_float(by_ds[i]);
        kv_off += i % (3 * c) >= c && by_ds[i] != by_dq[i];
      }
      double e = parity_error(by_ds_f, fresh.cpu, NULL, n_qkv);
      snprintf(label, sizeof label, "%s: dqkv, dQ from dS%s", what, async ? ", async" : "");
      printf("\n    %-60s error %.3g, dK and dV %zu off", label, e, kv_off);
      CU_ASSERT(e < BF16_TOLERANCE);
      CU_ASSERT_EQUAL(kv_off, 0);
      free(by_ds);
      free(by_dq);
      free(by_ds_f);
      qt__cuda_set_fa_async(was_async);
    }
    qt_cuda_free(d_dout16);
    qt_cuda_free(d_qkv16);
  }
  free(out16);
  free(kept);
  void *d_qkv16 = device_copy(qkv16 + 2, n_qkv, sizeof *qkv16);
  free(qkv16);
  free(dout16);

  /* The op table, with the fused kernels turned on: under BF16 the fused
   * forward (att holds the same log-sum-exps), under FP32 the
   * probabilities. */
  int was_fused = qt__cuda_set_fused_attention(1);
  qt_matmul_precision before = qt_cuda_set_matmul_precision(QT_MATMUL_BF16);
  CHECK_RC(qt__cuda_attention_op_forward(d_out, d_att, d_qkv, batch, tokens, c, heads, E));
  float *again = malloc(n_lse * sizeof *again);
  CU_ASSERT_PTR_NOT_NULL_FATAL(again);
  CHECK_RC(qt_cuda_copy_to_host(again, d_att, n_lse * sizeof *again, E));
  CU_ASSERT(memcmp(again, lse, n_lse * sizeof *lse) == 0);
  unsigned attention_kept = QT__KEEP_ATTENTION_OUT | QT__KEEP_QKV;
  CU_ASSERT_EQUAL(qt__cuda_bf16_activations(batch, tokens, c, heads) & attention_kept,
                  attention_kept);
  CHECK_RC(qt__cuda_attention_op_forward_bf16(d_out16, d_att, d_qkv, batch, tokens, c, heads,
                                              QT__BF16_OUT, E));
  CU_ASSERT_EQUAL(bf16_mismatches(d_out16, d_out, n_out), 0);
  /* qkv in BF16 where the output is, unless switched off. */
  qt_err refused;
  CHECK_RC(qt__cuda_attention_op_forward_bf16(d_out16_h, d_att_h, d_qkv16, batch, tokens, c, heads,
                                              QT__BF16_INP | QT__BF16_OUT, E));
  CU_ASSERT_EQUAL(bf16_mismatches(d_out16_h, d_out, n_out), 0);
  CHECK_RC(qt__cuda_attention_op_backward_bf16(d_dqkv16, d_scratch, d_dout, d_qkv16, d_att_h,
                                               d_out16_h, batch, tokens, c, heads, 1,
                                               QT__BF16_INP | QT__BF16_OUT | QT__BF16_DINP, E));
  CU_ASSERT_EQUAL(bf16_mismatches(d_dqkv16, fresh_y16.dev, n_qkv), 0);
  /* A BF16 qkv with an FP32 output, and a BF16 dqkv added to, are not
   * implemented. */
  CU_ASSERT_EQUAL(qt__cuda_attention_op_forward_bf16(d_out, d_att_h, d_qkv16, batch, tokens, c,
                                                     heads, QT__BF16_INP, &refused),
                  QT_EINVAL);
  CU_ASSERT_EQUAL(qt__cuda_attention_op_backward_bf16(
                      d_dqkv16, d_scratch, d_dout, d_qkv16, d_att_h, d_out16_h, batch, tokens, c,
                      heads, 0, QT__BF16_INP | QT__BF16_OUT | QT__BF16_DINP, &refused),
                  QT_EINVAL);
  int was_bf16_qkv = qt__cuda_set_bf16_qkv(0);
  CU_ASSERT_EQUAL(qt__cuda_bf16_activations(batch, tokens, c, heads) & attention_kept,
                  QT__KEEP_ATTENTION_OUT);
  qt__cuda_set_bf16_qkv(was_bf16_qkv);
  qt_cuda_set_matmul_precision(QT_MATMUL_FP32);
  CU_ASSERT_EQUAL(qt__cuda_bf16_activations(batch, tokens, c, heads), 0u);
  CU_ASSERT_EQUAL(qt__cuda_attention_op_forward_bf16(d_out16, d_att, d_qkv, batch, tokens, c, heads,
                                                     QT__BF16_OUT, &refused),
                  QT_EINVAL);
  CHECK_RC(qt__cuda_attention_op_forward(d_out, d_att, d_qkv, batch, tokens, c, heads, E));
  snprintf(label, sizeof label, "%s: FP32 op table's probabilities", what);
  expect_parity(label, d_att, att, NULL, n_att);
  /* Turned off, BF16 takes the cuBLAS path: probabilities again. */
  qt__cuda_set_fused_attention(0);
  qt_cuda_set_matmul_precision(QT_MATMUL_BF16);
  CU_ASSERT_EQUAL(qt__cuda_bf16_activations(batch, tokens, c, heads) & attention_kept, 0u);
  CHECK_RC(qt__cuda_attention_op_forward(d_out, d_att, d_qkv, batch, tokens, c, heads, E));
  snprintf(label, sizeof label, "%s: BF16 unfused", what);
  expect_parity_tol(label, d_att, att, NULL, n_att, BF16_TOLERANCE);
  qt_cuda_set_matmul_precision(before);
  qt__cuda_set_fused_attention(was_fused);

  grad_free(&added);
  grad_free(&fresh);
  grad_free(&fresh_y16);
  free(qkv);
  free(dout);
  free(out);
  free(att);
  free(lse);
  free(again);
  free(scratch);
  free(want_lse);
  qt_cuda_free(d_qkv);
  qt_cuda_free(d_dout);
  qt_cuda_free(d_out);
  qt_cuda_free(d_att);
  qt_cuda_free(d_scratch);
  qt_cuda_free(d_out16);
  qt_cuda_free(d_qkv16);
  qt_cuda_free(d_out16_h);
  qt_cuda_free(d_dqkv16);
  qt_cuda_free(d_dqkv16_b);
  qt_cuda_free(d_att_h);
  qt_rng_free(rng);
}

static void test_attention_fused(void) {
  attention_fused_case(1, 1, 1, 61);
  attention_fused_case(2, 17, 2, 62); /* a partial tile of rows */
  attention_fused_case(3, 33, 2, 63);
  attention_fused_case(2, 197, 6, 64);  /* ViT-S/16 at 224 px */
  attention_fused_case(1, 197, 12, 65); /* ViT-B/16 at 224 px */
  attention_fused_case(1, 256, 1, 66);  /* the most tokens */
  /* What the fused kernels do not take: other head sizes, more tokens. */
  CU_ASSERT_FALSE(qt__cuda_attention_fused_fits(1, 197, 192, 4));
  CU_ASSERT_FALSE(qt__cuda_attention_fused_fits(1, 257, 64, 1));
  CU_ASSERT_FALSE(qt__cuda_attention_fused_fits(1, 10, 64, 0));
  qt_err err;
  CU_ASSERT_EQUAL(qt__cuda_attention_fused_forward(NULL, NULL, NULL, 1, 257, 64, 1, &err),
                  QT_EINVAL);
}

/* ------------------------------------------------------------------------- */
/* Residual                                                                   */
/* ------------------------------------------------------------------------- */

static void residual_case(size_t n, size_t c, int with_gamma, uint64_t seed) {
  qt_rng_t *rng = make_rng(seed);
  char what[96];
  float *res = host_random(rng, n * c, 0.0, 1.0), *branch = host_random(rng, n * c, 0.0, 1.0);
  float *gamma = with_gamma ? host_random(rng, c, 0.0, 0.1) : NULL;
  float *dout = host_random(rng, n * c, 0.0, 1.0);
  float *d_res = device_floats(res, n * c), *d_branch = device_floats(branch, n * c);
  float *d_gamma = with_gamma ? device_floats(gamma, c) : NULL;
  float *d_dout = device_floats(dout, n * c);
  float *out = host_random(rng, n * c, 0.0, 1.0);
  float *d_out = device_floats(out, n * c);
  qt_cpu_residual_forward(out, res, branch, gamma, n, c);
  CHECK_RC(qt_cuda_residual_forward(d_out, d_res, d_branch, d_gamma, n, c, E));
  snprintf(what, sizeof what, "residual (%zu, %zu)%s: out", n, c, with_gamma ? "" : " no gamma");
  expect_parity(what, d_out, out, NULL, n * c);
  /* In place: out == res. */
  CHECK_RC(qt_cuda_residual_forward(d_res, d_res, d_branch, d_gamma, n, c, E));
  snprintf(what, sizeof what, "residual (%zu, %zu) in place: out", n, c);
  expect_parity(what, d_res, out, NULL, n * c);

  grad dres = grad_make(rng, n * c), dbranch = grad_make(rng, n * c), dgamma = grad_make(rng, c);
  qt_cpu_residual_backward(dres.cpu, dbranch.cpu, with_gamma ? dgamma.cpu : NULL, dout, branch,
                           gamma, n, c);
  CHECK_RC(qt_cuda_residual_backward(dres.dev, dbranch.dev, with_gamma ? dgamma.dev : NULL, d_dout,
                                     d_branch, d_gamma, n, c, E));
  snprintf(what, sizeof what, "residual (%zu, %zu): dres", n, c);
  grad_check(what, &dres);
  snprintf(what, sizeof what, "residual (%zu, %zu): dbranch", n, c);
  grad_check(what, &dbranch);
  if (with_gamma) {
    snprintf(what, sizeof what, "residual (%zu, %zu): dgamma", n, c);
    grad_check(what, &dgamma);
  }
  /* dres NULL: only dbranch grows. */
  qt_cpu_residual_backward(NULL, dbranch.cpu, NULL, dout, branch, gamma, n, c);
  CHECK_RC(qt_cuda_residual_backward(NULL, dbranch.dev, NULL, d_dout, d_branch, d_gamma, n, c, E));
  snprintf(what, sizeof what, "residual (%zu, %zu): dbranch twice", n, c);
  grad_check(what, &dbranch);
  snprintf(what, sizeof what, "residual (%zu, %zu): dres untouched", n, c);
  grad_check(what, &dres);

  grad_free(&dres);
  grad_free(&dbranch);
  grad_free(&dgamma);
  free(res);
  free(branch);
  free(gamma);
  free(dout);
  free(out);
  qt_cuda_free(d_res);
  qt_cuda_free(d_branch);
  qt_cuda_free(d_gamma);
  qt_cuda_free(d_dout);
  qt_cuda_free(d_out);
  qt_rng_free(rng);
}

static void test_residual(void) {
  residual_case(1, 1, 1, 61);
  residual_case(37, 45, 1, 62);
  residual_case(37, 45, 0, 63);
  residual_case(394, 192, 1, 64);
  residual_case(3000, 40, 1, 65); /* the layer scale gradient's rows in 12 chunks */
}

/* The residual add and the layer norm after it in one op
 * (qt__cuda_residual_layernorm_forward) give what the two ops give, to the
 * bit: the sum, the normalized rows (FP32 or BF16), mean and rstd; with a
 * BF16 branch (its values BF16 already, under BF16 products), what they
 * give on its FP32 values. */
static void residual_layernorm_case(size_t n, size_t c, int with_gamma, int bf16, uint64_t seed) {
  qt_rng_t *rng = make_rng(seed);
  float *res = host_random(rng, n * c, 1.0, 1.0), *branch = host_random(rng, n * c, 0.0, 1.0);
  for (size_t i = 0; i < n * c; i++) branch[i] = bf16_round(branch[i]);
  float *gamma = host_random(rng, c, 0.0, 0.1), *weight = host_random(rng, c, 1.0, 0.2);
  float *bias = host_random(rng, c, 0.0, 0.2);
  float *d_res = device_floats(res, n * c), *d_branch = device_floats(branch, n * c);
  float *d_gamma = with_gamma ? device_floats(gamma, c) : NULL;
  float *d_weight = device_floats(weight, c), *d_bias = device_floats(bias, c);
  /* Per path: [sum (n, c) | norm (n, c; BF16 in its first half) | mean (n)
   * | rstd (n)], zeroed, so that the halves a BF16 norm leaves agree. */
  size_t floats = 2 * n * c + 2 * n;
  float *zeros = calloc(floats, sizeof *zeros);
  CU_ASSERT_PTR_NOT_NULL_FATAL(zeros);
  float *one = device_floats(zeros, floats), *two = device_floats(zeros, floats);
  float *norm[2] = {one + n * c, two + n * c}, *stats[2] = {one + 2 * n * c, two + 2 * n * c};
  uint16_t *branch16 = malloc(n * c * sizeof *branch16);
  CU_ASSERT_PTR_NOT_NULL_FATAL(branch16);
  for (size_t i = 0; i < n * c; i++) branch16[i] = qt_test_bf16_bits(branch[i]);
  void *d_branch16 = device_copy(branch16, n * c, sizeof *branch16);
  qt_matmul_precision before = qt_cuda_set_matmul_precision(QT_MATMUL_BF16);
  /* bf16: 0, 1 (the norm), 2 (the branch), 3 (both). */
  CHECK_RC(qt__cuda_residual_layernorm_forward(
      one, norm[0], stats[0], stats[0] + n, d_res, bf16 & 2 ? d_branch16 : (void *)d_branch,
      d_gamma, d_weight, d_bias, n, c, 1e-6f,
      (bf16 & 1 ? QT__BF16_OUT : 0u) | (bf16 & 2 ? QT__BF16_INP : 0u), E));
  CHECK_RC(qt_cuda_residual_forward(two, d_res, d_branch, d_gamma, n, c, E));
  CHECK_RC(qt__cuda_layernorm_forward_bf16(norm[1], stats[1], stats[1] + n, two, d_weight, d_bias,
                                           n, c, 1e-6f, bf16 & 1 ? QT__BF16_OUT : 0u, E));
  qt_cuda_set_matmul_precision(before);
  int same = device_equal(one, two, floats);
  if (!same)
    printf("residual + layernorm (%zu, %zu)%s, BF16 %d: not the two ops' results\n", n, c,
           with_gamma ? " layer scale" : "", bf16);
  CU_ASSERT(same);
  float *host[] = {res, branch, gamma, weight, bias, zeros};
  for (size_t i = 0; i < sizeof host / sizeof *host; i++) free(host[i]);
  float *dev[] = {d_res, d_branch, d_gamma, d_weight, d_bias, one, two};
  for (size_t i = 0; i < sizeof dev / sizeof *dev; i++) qt_cuda_free(dev[i]);
  free(branch16);
  qt_cuda_free(d_branch16);
  qt_rng_free(rng);
}

/* With the layer norm's row kernels and with the loop kernels (where the
 * op calls the two ops). */
static void test_residual_layernorm(void) {
  int was = qt__cuda_set_layernorm_rows(1);
  for (int rows = 1; rows >= 0; rows--) {
    qt__cuda_set_layernorm_rows(rows);
    for (int bf16 = 0; bf16 < 4; bf16++) {
      residual_layernorm_case(1, 1, 1, bf16, 71);
      residual_layernorm_case(37, 45, 0, bf16, 72);
      residual_layernorm_case(394, 192, 1, bf16, 73);
      residual_layernorm_case(12608, 768, 0, bf16, 74); /* ViT-B/16 at batch 64 */
      residual_layernorm_case(5, 1100, 1, bf16, 75);    /* wider than the row kernels */
    }
  }
  qt__cuda_set_layernorm_rows(was);
}

/* ------------------------------------------------------------------------- */
/* Patchify and tokens                                                        */
/* ------------------------------------------------------------------------- */

static void patchify_case(size_t batch, size_t channels, size_t size, size_t patch, uint64_t seed) {
  qt_rng_t *rng = make_rng(seed);
  char what[96];
  size_t n = batch * channels * size * size;
  float *images = host_random(rng, n, 0.0, 1.0), *patches = host_random(rng, n, 0.0, 1.0);
  float *d_images = device_floats(images, n), *d_patches = device_floats(patches, n);
  qt_cpu_patchify(patches, images, batch, channels, size, patch);
  CHECK_RC(qt_cuda_patchify(d_patches, d_images, batch, channels, size, patch, E));
  snprintf(what, sizeof what, "patchify (%zu, %zu, %zu) / %zu", batch, channels, size, patch);
  expect_parity(what, d_patches, patches, NULL, n);
  free(images);
  free(patches);
  qt_cuda_free(d_images);
  qt_cuda_free(d_patches);
  qt_rng_free(rng);
}

static void tokens_case(size_t batch, size_t patches, size_t c, int class_in_pos, uint64_t seed) {
  qt_rng_t *rng = make_rng(seed);
  char what[128];
  size_t tokens = patches + 1, n_x = batch * tokens * c, n_pt = batch * patches * c;
  size_t n_pos = (class_in_pos ? tokens : patches) * c;
  float *pt = host_random(rng, n_pt, 0.0, 1.0), *cls = host_random(rng, c, 0.0, 1.0);
  float *pos = host_random(rng, n_pos, 0.0, 1.0), *dx = host_random(rng, n_x, 0.0, 1.0);
  float *d_pt = device_floats(pt, n_pt), *d_cls = device_floats(cls, c);
  float *d_pos = device_floats(pos, n_pos), *d_dx = device_floats(dx, n_x);
  float *x = host_random(rng, n_x, 0.0, 1.0);
  float *d_x = device_floats(x, n_x);
  qt_cpu_tokens_forward(x, pt, cls, pos, class_in_pos, batch, patches, c);
  CHECK_RC(qt_cuda_tokens_forward(d_x, d_pt, d_cls, d_pos, class_in_pos, batch, patches, c, E));
  snprintf(what, sizeof what, "tokens b %zu, %zu patches, c %zu, class_in_pos %d: x", batch,
           patches, c, class_in_pos);
  expect_parity(what, d_x, x, NULL, n_x);

  grad dpt = grad_make(rng, n_pt), dcls = grad_make(rng, c), dpos = grad_make(rng, n_pos);
  qt_cpu_tokens_backward(dpt.cpu, dcls.cpu, dpos.cpu, dx, class_in_pos, batch, patches, c);
  CHECK_RC(qt_cuda_tokens_backward(dpt.dev, dcls.dev, dpos.dev, d_dx, class_in_pos, batch, patches,
                                   c, E));
  snprintf(what, sizeof what, "tokens b %zu, %zu patches, c %zu: dpatch_tokens", batch, patches, c);
  grad_check(what, &dpt);
  snprintf(what, sizeof what, "tokens b %zu, %zu patches, c %zu: dcls_token", batch, patches, c);
  grad_check(what, &dcls);
  snprintf(what, sizeof what, "tokens b %zu, %zu patches, c %zu: dpos", batch, patches, c);
  grad_check(what, &dpos);
  /* Only dpos this time. */
  qt_cpu_tokens_backward(NULL, NULL, dpos.cpu, dx, class_in_pos, batch, patches, c);
  CHECK_RC(qt_cuda_tokens_backward(NULL, NULL, dpos.dev, d_dx, class_in_pos, batch, patches, c, E));
  snprintf(what, sizeof what, "tokens b %zu, %zu patches, c %zu: dpos twice", batch, patches, c);
  grad_check(what, &dpos);

  grad_free(&dpt);
  grad_free(&dcls);
  grad_free(&dpos);
  free(pt);
  free(cls);
  free(pos);
  free(dx);
  free(x);
  qt_cuda_free(d_pt);
  qt_cuda_free(d_cls);
  qt_cuda_free(d_pos);
  qt_cuda_free(d_dx);
  qt_cuda_free(d_x);
  qt_rng_free(rng);
}

static void test_tokens(void) {
  patchify_case(1, 1, 5, 5, 71);
  patchify_case(2, 3, 32, 8, 72);
  patchify_case(3, 3, 48, 16, 73);
  tokens_case(1, 1, 1, 1, 74);
  tokens_case(2, 4, 5, 1, 75);
  tokens_case(2, 4, 5, 0, 76);
  tokens_case(3, 196, 192, 1, 77);
  tokens_case(3, 196, 192, 0, 78);
}

/* ------------------------------------------------------------------------- */
/* Cross-entropy                                                              */
/* ------------------------------------------------------------------------- */

/* soft: random soft targets (rows summing to 1); else labels with the given
 * smoothing. */
static void cross_entropy_case(size_t batch, size_t classes, int soft, float smoothing,
                               uint64_t seed) {
  qt_rng_t *rng = make_rng(seed);
  char what[128];
  size_t n = batch * classes;
  float *logits = host_random(rng, n, 0.0, 3.0);
  int *labels = malloc(batch * sizeof *labels);
  CU_ASSERT_PTR_NOT_NULL_FATAL(labels);
  for (size_t b = 0; b < batch; b++) labels[b] = (int)qt_rng_uniform_int(rng, classes);
  float *targets = NULL;
  if (soft) {
    targets = malloc(n * sizeof *targets);
    CU_ASSERT_PTR_NOT_NULL_FATAL(targets);
    for (size_t b = 0; b < batch; b++) {
      double sum = 0.0;
      float *row = targets + b * classes;
      for (size_t k = 0; k < classes; k++) {
        row[k] = (float)qt_rng_uniform_pos(rng);
        sum += row[k];
      }
      for (size_t k = 0; k < classes; k++) row[k] = (float)(row[k] / sum);
    }
  }
  float *d_logits = device_floats(logits, n);
  int *d_labels = soft ? NULL : device_copy(labels, batch, sizeof *labels);
  float *d_targets = soft ? device_floats(targets, n) : NULL;
  float *losses = host_random(rng, batch, 0.0, 1.0), *probs = host_random(rng, n, 0.0, 1.0);
  float *d_losses = device_floats(losses, batch), *d_probs = device_floats(probs, n);
  const int *cpu_labels = soft ? NULL : labels;

  qt_cpu_cross_entropy_forward(losses, probs, logits, cpu_labels, targets, smoothing, batch,
                               classes);
  CHECK_RC(qt_cuda_cross_entropy_forward(d_losses, d_probs, d_logits, d_labels, d_targets,
                                         smoothing, batch, classes, E));
  snprintf(what, sizeof what, "cross-entropy (%zu, %zu) %s %.2g: losses", batch, classes,
           soft ? "soft" : "labels", (double)smoothing);
  expect_parity(what, d_losses, losses, NULL, batch);
  snprintf(what, sizeof what, "cross-entropy (%zu, %zu): probs", batch, classes);
  expect_parity(what, d_probs, probs, NULL, n);

  /* Backward from the CPU's probabilities: once with a gradient per row,
   * once with the scalar 1 / batch of a mean. */
  CHECK_RC(qt_cuda_copy_to_device(d_probs, probs, n * sizeof *probs, E));
  float *dloss = host_random(rng, batch, 0.0, 1.0);
  float *d_dloss = device_floats(dloss, batch);
  float mean_scale = 1.0f / (float)batch;
  float *d_mean_scale = device_floats(&mean_scale, 1);
  grad dlogits = grad_make(rng, n);
  qt_cpu_cross_entropy_backward(dlogits.cpu, probs, cpu_labels, targets, smoothing, dloss, 1, batch,
                                classes);
  CHECK_RC(qt_cuda_cross_entropy_backward(dlogits.dev, d_probs, d_labels, d_targets, smoothing,
                                          d_dloss, 1, batch, classes, E));
  snprintf(what, sizeof what, "cross-entropy (%zu, %zu): dlogits per row", batch, classes);
  grad_check(what, &dlogits);
  qt_cpu_cross_entropy_backward(dlogits.cpu, probs, cpu_labels, targets, smoothing, &mean_scale, 0,
                                batch, classes);
  CHECK_RC(qt_cuda_cross_entropy_backward(dlogits.dev, d_probs, d_labels, d_targets, smoothing,
                                          d_mean_scale, 0, batch, classes, E));
  snprintf(what, sizeof what, "cross-entropy (%zu, %zu): dlogits mean", batch, classes);
  grad_check(what, &dlogits);

  grad_free(&dlogits);
  free(logits);
  free(labels);
  free(targets);
  free(losses);
  free(probs);
  free(dloss);
  qt_cuda_free(d_logits);
  qt_cuda_free(d_labels);
  qt_cuda_free(d_targets);
  qt_cuda_free(d_losses);
  qt_cuda_free(d_probs);
  qt_cuda_free(d_dloss);
  qt_cuda_free(d_mean_scale);
  qt_rng_free(rng);
}

static void test_cross_entropy(void) {
  cross_entropy_case(1, 1, 0, 0.0f, 81);
  cross_entropy_case(5, 10, 0, 0.0f, 82);
  cross_entropy_case(5, 10, 0, 0.1f, 83);
  cross_entropy_case(37, 1000, 0, 0.1f, 84);
  cross_entropy_case(37, 1000, 1, 0.0f, 85);
  cross_entropy_case(3, 333, 1, 0.0f, 86);
}

/* ------------------------------------------------------------------------- */
/* Arguments                                                                  */
/* ------------------------------------------------------------------------- */

/* Bad shapes and NULL arrays are QT_EINVAL; empty shapes are no-ops. */
static void test_arguments(void) {
  qt_err err;
  float *d = NULL;
  CHECK_RC(qt_cuda_malloc((void **)&d, 64 * sizeof *d, E));
  CU_ASSERT_EQUAL(qt_cuda_attention_forward(d, d, d, 1, 2, 6, 4, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_attention_backward(d, d, d, d, d, 1, 2, 6, 0, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_linear_forward(NULL, d, d, NULL, 2, 2, 2, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_layernorm_forward(d, NULL, d, d, NULL, NULL, 2, 2, 1e-6f, &err),
                  QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_gelu_forward(NULL, d, 3, &err), QT_EINVAL);
  /* GELU in place with a float and a BF16 array (under BF16 products, which
   * allow the BF16 arrays); with one type it runs. */
  qt_matmul_precision was = qt_cuda_set_matmul_precision(QT_MATMUL_BF16);
  CU_ASSERT_EQUAL(qt__cuda_gelu_forward_bf16(d, d, 3, QT__BF16_OUT, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt__cuda_gelu_forward_bf16(d, d, 3, QT__BF16_INP, &err), QT_EINVAL);
  CHECK_RC(qt__cuda_gelu_forward_bf16(d, d, 3, QT__BF16_INP | QT__BF16_OUT, E));
  qt_cuda_set_matmul_precision(was);
  CU_ASSERT_EQUAL(qt_cuda_patchify(d, d, 1, 1, 5, 2, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_cross_entropy_forward(d, d, d, NULL, NULL, 0.0f, 2, 2, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_linear_forward(NULL, NULL, NULL, NULL, 0, 3, 3, &err), 0);
  CU_ASSERT_EQUAL(qt_cuda_layernorm_forward(NULL, NULL, NULL, NULL, NULL, NULL, 0, 3, 1e-6f, &err),
                  0);
  CU_ASSERT_EQUAL(qt_cuda_gelu_backward(NULL, NULL, NULL, 0, &err), 0);
  CU_ASSERT_EQUAL(qt_cuda_attention_forward(NULL, NULL, NULL, 0, 3, 6, 2, &err), 0);
  CU_ASSERT_EQUAL(qt_cuda_residual_forward(NULL, NULL, NULL, NULL, 0, 3, &err), 0);
  CU_ASSERT_EQUAL(qt_cuda_cross_entropy_backward(NULL, NULL, NULL, NULL, 0.0f, NULL, 0, 0, 3, &err),
                  0);
  CU_ASSERT_EQUAL(qt_cuda_attention_scratch_size(8, 197, 12), (size_t)12 * 197 * 197);
  CU_ASSERT_EQUAL(qt_cuda_attention_scratch_size(64, 197, 12), (size_t)64 * 197 * 197);
  /* the fused backward's row sums, (batch, heads, tokens), when larger */
  CU_ASSERT_EQUAL(qt_cuda_attention_scratch_size(4, 1, 4), (size_t)16);
  CHECK_RC(qt_cuda_synchronize(E));
  qt_cuda_free(d);
}

/* Page-locked host memory: a round trip through the device is exact, a
 * second registration of the same array is an error that later work does
 * not see (a kernel launched after it succeeds), and the array is ordinary
 * host memory again after unregistering. */
static void test_host_register(void) {
  qt_rng_t *rng = make_rng(31);
  size_t n = 1000003;
  float *h = host_random(rng, n, 0.0, 1.0), *back = malloc(n * sizeof *back);
  CU_ASSERT_PTR_NOT_NULL_FATAL(back);
  CHECK_RC(qt_cuda_host_register(h, n * sizeof *h, E));
  qt_err err;
  CU_ASSERT_NOT_EQUAL(qt_cuda_host_register(h, n * sizeof *h, &err), 0);
  float *d = device_floats(h, n);
  CHECK_RC(qt_cuda_gelu_forward(d, d, 1, E)); /* a launch after the failed registration */
  CHECK_RC(qt_cuda_synchronize(E));
  CHECK_RC(qt_cuda_copy_to_device(d, h, n * sizeof *h, E));
  CHECK_RC(qt_cuda_copy_to_host(back, d, n * sizeof *h, E));
  CU_ASSERT(memcmp(back, h, n * sizeof *h) == 0);
  qt_cuda_host_unregister(h);
  CHECK_RC(qt_cuda_copy_to_host(back, d, n * sizeof *h, E));
  CU_ASSERT(memcmp(back, h, n * sizeof *h) == 0);
  qt_cuda_free(d);
  free(h);
  free(back);
  qt_rng_free(rng);
}

/* A failed call that is not a launch (here cudaMalloc out of memory, and
 * unregistering memory that was never registered) leaves no error for the
 * next launch's check: after a trial runs out of device memory, the next
 * one trains. */
static void test_failure_not_left_behind(void) {
  void *huge = NULL;
  qt_err err;
  CU_ASSERT_EQUAL(qt_cuda_malloc(&huge, (size_t)1 << 50, &err), QT_ENOMEM);
  CU_ASSERT_PTR_NULL(huge);
  float h = 0.5f, *d = device_floats(&h, 1);
  CHECK_RC(qt_cuda_gelu_forward(d, d, 1, E));
  qt_cuda_host_unregister(&h);
  CHECK_RC(qt_cuda_gelu_forward(d, d, 1, E));
  CHECK_RC(qt_cuda_synchronize(E));
  qt_cuda_free(d);
}

/* The linear forward adds its bias in cuBLASLt's epilogue (the default).
 * Every linear case (FP32, with BF16 products rounded or converted by
 * cuBLAS, and with its input already in BF16) holds, and cuBLASLt took at
 * least the FP32 products with a bias, one of the BF16 inputs' and the
 * BF16 output's (it may decline another combination: that one then
 * broadcasts, as in linear_bias_broadcast). The FP32 and BF16-input cases run twice: the
 * second time on the algorithms (and the declines) kept from the first,
 * with as many products taken, the same results and no new question to
 * cuBLASLt's heuristic. */
static void test_linear_bias_epilogue(void) {
  int was_on = qt__cuda_set_lt_bias(1);
  long before = qt__cuda_linear_lt_count();
  test_linear();
  long fp32 = qt__cuda_linear_lt_count() - before;
  long queries = qt__cuda_linear_lt_queries();
  test_linear();
  long kept = qt__cuda_linear_lt_count() - before - fp32;
  long fp32_queries = qt__cuda_linear_lt_queries() - queries;
  test_linear_bf16();
  test_linear_bf16_fast();
  long before_inputs = qt__cuda_linear_lt_count();
  bf16_output_epilogues = 0;
  test_bf16_inputs();
  long inputs = qt__cuda_linear_lt_count() - before_inputs;
  queries = qt__cuda_linear_lt_queries();
  test_bf16_inputs();
  long inputs_kept = qt__cuda_linear_lt_count() - before_inputs - inputs;
  long inputs_queries = qt__cuda_linear_lt_queries() - queries;
  qt__cuda_set_lt_bias(was_on);
  printf(
      "\n    cuBLASLt bias epilogue: %ld FP32 products (%ld on kept algorithms), %ld of the "
      "BF16 inputs' case (%ld kept; BF16 outputs %ld of 2), %ld in all; %ld heuristic queries "
      "in all, %ld and %ld on the second runs",
      fp32, kept, inputs, inputs_kept, bf16_output_epilogues, qt__cuda_linear_lt_count() - before,
      qt__cuda_linear_lt_queries(), fp32_queries, inputs_queries);
  CU_ASSERT(fp32 > 0);
  CU_ASSERT_EQUAL(kept, fp32);
  CU_ASSERT(inputs > 0);
  CU_ASSERT_EQUAL(inputs_kept, inputs);
  /* The BF16 output with its bias in BF16 is a combination cuBLASLt lists
   * (qkv's, fc1's and the branches' in a ViT under BF16 products). */
  CU_ASSERT_EQUAL(bf16_output_epilogues, 2);
  CU_ASSERT_EQUAL(fp32_queries, 0);
  CU_ASSERT_EQUAL(inputs_queries, 0);
}

/* The same cases with the epilogue off (QT_CUDA_LT_BIAS=0): the bias
 * broadcast into the output, then the product with beta 1; no product
 * takes the epilogue. */
static void test_linear_bias_broadcast(void) {
  int was_on = qt__cuda_set_lt_bias(0);
  long before = qt__cuda_linear_lt_count();
  test_linear();
  test_linear_bf16();
  test_linear_bf16_fast();
  test_bf16_inputs();
  qt__cuda_set_lt_bias(was_on);
  CU_ASSERT_EQUAL(qt__cuda_linear_lt_count(), before);
}

/* ------------------------------------------------------------------------- */
/* Streams                                                                    */
/* ------------------------------------------------------------------------- */

/* One thread's share of streams_concurrent: a linear backward with BF16
 * products (the BF16 operands' scratch, the bias gradient's column sums,
 * the cuBLAS handle) repeated on its inputs, on the thread's own stream or
 * (stream 0) the default one; the gradients come back in dweight, dbias. */
typedef struct stream_job {
  int stream;
  size_t n, in_c, out_c;
  const float *inp, *weight, *dout;
  float *dweight, *dbias; /* host, out_c * in_c and out_c */
  int rc;
  char message[256];
} stream_job;

#define STREAM_JOB_REPEATS 20

static void *stream_job_run(void *arg) {
  stream_job *j = arg;
  qt_err err;
  qt_cuda_stream_t *s = NULL, *previous = NULL;
  float *d[5] = {NULL, NULL, NULL, NULL, NULL}; /* inp, weight, dout, dweight, dbias */
  const float *h[3] = {j->inp, j->weight, j->dout};
  size_t sizes[5] = {j->n * j->in_c, j->out_c * j->in_c, j->n * j->out_c, j->out_c * j->in_c,
                     j->out_c};
  int rc = j->stream ? qt_cuda_stream_create(&s, &err) : 0;
  if (rc == 0) previous = qt_cuda_stream_use(s);
  for (int k = 0; k < 5 && rc == 0; k++) {
    rc = qt_cuda_malloc((void **)&d[k], sizes[k] * sizeof(float), &err);
    if (rc == 0 && k < 3) rc = qt_cuda_copy_to_device(d[k], h[k], sizes[k] * sizeof(float), &err);
  }
  /* Every repeat starts from zero: the last one's sums are the result. */
  for (int r = 0; r < STREAM_JOB_REPEATS && rc == 0; r++) {
    rc = qt_cuda_zero(d[3], sizes[3] * sizeof(float), &err);
    if (rc == 0) rc = qt_cuda_zero(d[4], sizes[4] * sizeof(float), &err);
    if (rc == 0)
      rc = qt_cuda_linear_backward(NULL, d[3], d[4], d[2], d[0], d[1], j->n, j->in_c, j->out_c,
                                   &err);
  }
  if (rc == 0) rc = qt_cuda_copy_to_host(j->dweight, d[3], sizes[3] * sizeof(float), &err);
  if (rc == 0) rc = qt_cuda_copy_to_host(j->dbias, d[4], sizes[4] * sizeof(float), &err);
  for (int k = 0; k < 5; k++) qt_cuda_free(d[k]);
  if (s) {
    qt_cuda_stream_use(previous);
    qt_cuda_stream_destroy(s);
  }
  j->rc = rc;
  if (rc < 0) snprintf(j->message, sizeof j->message, "%s", qt_err_message(&err));
  return NULL;
}

/* A stream of its own: the linear cases hold on it in FP32 and with BF16
 * products, the thread's stream is what qt_cuda_stream_use set, and
 * destroying the current stream leaves the default one current. */
static void test_streams(void) {
  qt_cuda_stream_t *s = NULL;
  CHECK_RC(qt_cuda_stream_create(&s, E));
  CU_ASSERT_PTR_NULL(qt_cuda_stream_use(s));
  test_linear();
  test_linear_bf16();
  CU_ASSERT_PTR_EQUAL(qt_cuda_stream_use(s), s);
  qt_cuda_stream_destroy(s);
  CU_ASSERT_PTR_NULL(qt_cuda_stream_use(NULL)); /* the destroyed stream is no longer current */
  test_linear();
}

/* Two threads at once, each on a stream of its own, each with its own
 * scratch: with BF16 products, each thread's gradients equal bit for bit
 * those of the same work done alone on the default stream (were the
 * scratch shared, one thread's operands rounded into it could be read by
 * the other's product). */
static void test_streams_concurrent(void) {
  enum { JOBS = 2 };
  size_t n = 4096, in_c = 512, out_c = 768;
  qt_rng_t *rng = make_rng(53);
  stream_job jobs[JOBS], alone[JOBS];
  float *arrays[JOBS][7];
  for (int i = 0; i < JOBS; i++) {
    arrays[i][0] = host_random(rng, n * in_c, 0.0, 1.0);
    arrays[i][1] = host_random(rng, out_c * in_c, 0.0, 0.1);
    arrays[i][2] = host_random(rng, n * out_c, 0.0, 1.0);
    for (int k = 3; k < 7; k++) {
      arrays[i][k] = malloc((k % 2 ? out_c * in_c : out_c) * sizeof(float));
      CU_ASSERT_PTR_NOT_NULL_FATAL(arrays[i][k]);
    }
    jobs[i] = (stream_job){
        1, n, in_c, out_c, arrays[i][0], arrays[i][1], arrays[i][2], arrays[i][3], arrays[i][4],
        0, ""};
    alone[i] = jobs[i];
    alone[i].stream = 0;
    alone[i].dweight = arrays[i][5];
    alone[i].dbias = arrays[i][6];
  }
  CU_ASSERT_EQUAL(qt_cuda_set_matmul_precision(QT_MATMUL_BF16), QT_MATMUL_FP32);
  for (int i = 0; i < JOBS; i++) stream_job_run(&alone[i]);
  pthread_t threads[JOBS];
  for (int i = 0; i < JOBS; i++)
    CU_ASSERT_FATAL(pthread_create(&threads[i], NULL, stream_job_run, &jobs[i]) == 0);
  for (int i = 0; i < JOBS; i++) pthread_join(threads[i], NULL);
  CU_ASSERT_EQUAL(qt_cuda_set_matmul_precision(QT_MATMUL_FP32), QT_MATMUL_BF16);
  for (int i = 0; i < JOBS; i++) {
    if (jobs[i].rc || alone[i].rc)
      fprintf(stderr, "\n  stream job %d: %s%s\n", i, jobs[i].message, alone[i].message);
    CU_ASSERT_EQUAL(jobs[i].rc, 0);
    CU_ASSERT_EQUAL(alone[i].rc, 0);
    CU_ASSERT(memcmp(jobs[i].dweight, alone[i].dweight, out_c * in_c * sizeof(float)) == 0);
    CU_ASSERT(memcmp(jobs[i].dbias, alone[i].dbias, out_c * sizeof(float)) == 0);
    for (int k = 0; k < 7; k++) free(arrays[i][k]);
  }
  qt_rng_free(rng);
}

/* One linear layer's forward, backward, forward again and GELU-linear
 * backward with BF16 input and output under BF16 products, the weight kept
 * for the backwards (QT__BF16_KEEP_WEIGHT, QT__BF16_KEPT_WEIGHT) or not:
 * what each wrote, as bytes, in out[0..5] (out16, dinp16, dweight, dbias,
 * the GELU-linear's dinp16, dweight). */
enum { KEPT_ARRAYS = 6 };
static void kept_sizes(size_t n, size_t in_c, size_t out_c, size_t sizes[KEPT_ARRAYS]) {
  size_t bytes[KEPT_ARRAYS] = {n * out_c * 2, n * in_c * 2, out_c * in_c * 4,
                               out_c * 4,     n * in_c * 2, out_c * in_c * 4};
  memcpy(sizes, bytes, sizeof bytes);
}
static void kept_weight_step(int keep, const void *d_h, const float *d_w, const float *d_b,
                             const float *d_dout, size_t n, size_t in_c, size_t out_c,
                             void *out[KEPT_ARRAYS]) {
  unsigned k_fwd = keep ? QT__BF16_KEEP_WEIGHT : 0, k_bwd = keep ? QT__BF16_KEPT_WEIGHT : 0;
  size_t sizes[KEPT_ARRAYS];
  kept_sizes(n, in_c, out_c, sizes);
  void *d[KEPT_ARRAYS];
  for (int i = 0; i < KEPT_ARRAYS; i++) {
    void *zeros = calloc(1, sizes[i]);
    CU_ASSERT_PTR_NOT_NULL_FATAL(zeros);
    d[i] = device_copy(zeros, sizes[i], 1);
    free(zeros);
  }
  float *d_dpre = device_alloc(n * out_c), *d_db2 = device_alloc(out_c);
  CHECK_RC(qt__cuda_linear_forward_bf16(d[0], d_h, d_w, d_b, n, in_c, out_c,
                                        QT__BF16_INP | QT__BF16_OUT | k_fwd, E));
  CHECK_RC(qt__cuda_linear_backward_bf16(d[1], d[2], d[3], d_dout, d_h, d_w, n, in_c, out_c, 1,
                                         QT__BF16_INP | QT__BF16_DINP | k_bwd, E));
  CHECK_RC(qt__cuda_linear_forward_bf16(d[0], d_h, d_w, d_b, n, in_c, out_c,
                                        QT__BF16_INP | QT__BF16_OUT | k_fwd, E));
  CHECK_RC(qt__cuda_gelu_linear_backward_bf16(
      d[4], d[5], d_db2, d_dpre, d_dout, d[0], d_h, d_w, n, in_c, out_c, 1,
      QT__BF16_INP | QT__BF16_OUT | QT__BF16_DINP | k_bwd, E));
  for (int i = 0; i < KEPT_ARRAYS; i++) {
    out[i] = download_bytes(d[i], sizes[i]);
    qt_cuda_free(d[i]);
  }
  qt_cuda_free(d_dpre);
  qt_cuda_free(d_db2);
}

/* The weight a linear forward keeps rounded for its backward: on a stream
 * of its own, the two backwards take the kept copies and every array is
 * the same bits as without them; on the default stream, and with
 * QT_CUDA_KEEP_WEIGHTS=0, nothing is kept and the bits are the same too. A
 * backward that asks again after the copy was taken, with the weight
 * changed since, rounds the new weight: the same bits as without asking. */
static void test_kept_weight(void) {
  qt_rng_t *rng = make_rng(61);
  size_t n = 197, in_c = 192, out_c = 96;
  float *x = host_random(rng, n * in_c, 0.0, 2.0), *w = host_random(rng, out_c * in_c, 0.0, 0.1);
  float *w2 = host_random(rng, out_c * in_c, 0.0, 0.1), *b = host_random(rng, out_c, 0.0, 1.0);
  float *dout = host_random(rng, n * out_c, 0.0, 1.0);
  float *d_x = device_floats(x, n * in_c), *d_w = device_floats(w, out_c * in_c);
  float *d_b = device_floats(b, out_c), *d_dout = device_floats(dout, n * out_c);
  void *d_h = NULL;
  CHECK_RC(qt_cuda_malloc(&d_h, n * in_c * sizeof(uint16_t), E));
  qt_matmul_precision before = qt_cuda_set_matmul_precision(QT_MATMUL_BF16);
  CHECK_RC(qt__cuda_gelu_forward_bf16(d_h, d_x, n * in_c, QT__BF16_OUT, E));
  size_t sizes[KEPT_ARRAYS];
  kept_sizes(n, in_c, out_c, sizes);
  void *want[KEPT_ARRAYS], *got[KEPT_ARRAYS];
  kept_weight_step(0, d_h, d_w, d_b, d_dout, n, in_c, out_c, want);
  qt_cuda_stream_t *s = NULL;
  CHECK_RC(qt_cuda_stream_create(&s, E));
  const char *paths[] = {"on a stream", "on the default stream", "switched off"};
  for (int path = 0; path < 3; path++) {
    qt_cuda_stream_t *previous = qt_cuda_stream_use(path == 1 ? NULL : s);
    int was_on = qt__cuda_set_keep_weights(path != 2);
    long taken = qt__cuda_kept_weight_count();
    kept_weight_step(1, d_h, d_w, d_b, d_dout, n, in_c, out_c, got);
    CU_ASSERT_EQUAL(qt__cuda_kept_weight_count() - taken, path == 0 ? 2 : 0);
    for (int i = 0; i < KEPT_ARRAYS; i++) {
      if (memcmp(got[i], want[i], sizes[i]) != 0) {
        printf("\n    kept weight %s: array %d differs", paths[path], i);
        CU_FAIL("a kept weight changed a result");
      }
      free(got[i]);
    }
    qt__cuda_set_keep_weights(was_on);
    qt_cuda_stream_use(previous);
  }
  /* Taken, then the weight changes: the backward rounds the new one. */
  qt_cuda_stream_t *previous = qt_cuda_stream_use(s);
  void *d_out16 = NULL;
  CHECK_RC(qt_cuda_malloc(&d_out16, n * out_c * sizeof(uint16_t), E));
  CHECK_RC(qt__cuda_linear_forward_bf16(d_out16, d_h, d_w, d_b, n, in_c, out_c,
                                        QT__BF16_INP | QT__BF16_OUT | QT__BF16_KEEP_WEIGHT, E));
  grad dinp[2] = {grad_make_unset(n * in_c), grad_make_unset(n * in_c)};
  float *d_dw = device_alloc(out_c * in_c), *d_db = device_alloc(out_c);
  long taken = qt__cuda_kept_weight_count();
  for (int k = 0; k < 2; k++) {
    CHECK_RC(qt__cuda_linear_backward_bf16(dinp[k].dev, d_dw, d_db, d_dout, d_h, d_w, n, in_c,
                                           out_c, 1, QT__BF16_INP | QT__BF16_KEPT_WEIGHT, E));
    if (k == 0) CHECK_RC(qt_cuda_copy_to_device(d_w, w2, out_c * in_c * sizeof(float), E));
  }
  CU_ASSERT_EQUAL(qt__cuda_kept_weight_count() - taken, 1);
  float *fresh = device_alloc(n * in_c);
  CHECK_RC(qt__cuda_linear_backward_bf16(fresh, d_dw, d_db, d_dout, d_h, d_w, n, in_c, out_c, 1,
                                         QT__BF16_INP, E));
  float *a = download(dinp[1].dev, n * in_c), *c = download(fresh, n * in_c);
  CU_ASSERT(memcmp(a, c, n * in_c * sizeof(float)) == 0);
  qt_cuda_stream_use(previous);
  qt_cuda_stream_destroy(s);
  qt_cuda_set_matmul_precision(before);
  for (int i = 0; i < KEPT_ARRAYS; i++) free(want[i]);
  free(a);
  free(c);
  float *hosts[] = {x, w, w2, b, dout};
  for (size_t i = 0; i < sizeof hosts / sizeof *hosts; i++) free(hosts[i]);
  void *devs[] = {d_x, d_w, d_b, d_dout, d_h, d_out16, d_dw, d_db, fresh};
  for (size_t i = 0; i < sizeof devs / sizeof *devs; i++) qt_cuda_free(devs[i]);
  grad_free(&dinp[0]);
  grad_free(&dinp[1]);
  qt_rng_free(rng);
}

/* The column sums' chunk totals added by the last block of each column
 * tile in the sums' launch (QT_CUDA_COLSUM_ONE_PASS) against a second
 * kernel: the same bias gradients, bit for bit, for a linear backward in
 * FP32 and GELU's with fc1's under BF16 products (whose pass also writes
 * the BF16 gradient the products read), twice each, on the default
 * stream and on one of its own. */
static void test_colsum_one_pass(void) {
  qt_rng_t *rng = make_rng(67);
  size_t n = 3000, in_c = 64, out_c = 768; /* 24 column tiles, 12 chunks */
  float *x = host_random(rng, n * in_c, 0.0, 1.0), *w = host_random(rng, out_c * in_c, 0.0, 0.1);
  float *dout = host_random(rng, n * out_c, 0.0, 1.0), *pre = host_random(rng, n * out_c, 0, 1);
  float *d_x = device_floats(x, n * in_c), *d_w = device_floats(w, out_c * in_c);
  float *d_dout = device_floats(dout, n * out_c), *d_pre = device_floats(pre, n * out_c);
  float *d_dinp = device_alloc(n * in_c), *d_dpre = device_alloc(n * out_c);
  float *d_dw = device_alloc(out_c * in_c), *d_db = device_alloc(out_c);
  float *zeros = calloc(out_c * in_c, sizeof(float));
  CU_ASSERT_PTR_NOT_NULL_FATAL(zeros);
  qt_cuda_stream_t *s = NULL;
  CHECK_RC(qt_cuda_stream_create(&s, E));
  int was_on = qt__cuda_set_colsum_one_pass(1);
  for (int bf16 = 0; bf16 < 2; bf16++) {
    qt_matmul_precision before =
        qt_cuda_set_matmul_precision(bf16 ? QT_MATMUL_BF16 : QT_MATMUL_FP32);
    float *got[2][2][2]; /* [stream][one pass][dbias, dinp] */
    for (int on_stream = 0; on_stream < 2; on_stream++) {
      qt_cuda_stream_t *previous = qt_cuda_stream_use(on_stream ? s : NULL);
      for (int one = 0; one < 2; one++) {
        qt__cuda_set_colsum_one_pass(one);
        CHECK_RC(qt_cuda_copy_to_device(d_db, zeros, out_c * sizeof(float), E));
        CHECK_RC(qt_cuda_copy_to_device(d_dw, zeros, out_c * in_c * sizeof(float), E));
        for (int twice = 0; twice < 2; twice++) {
          if (bf16)
            CHECK_RC(qt__cuda_gelu_linear_backward_bf16(d_dinp, d_dw, d_db, d_dpre, d_dout, d_pre,
                                                        d_x, d_w, n, in_c, out_c, 1, 0, E));
          else
            CHECK_RC(qt__cuda_linear_backward(d_dinp, d_dw, d_db, d_dout, d_x, d_w, n, in_c, out_c,
                                              1, E));
        }
        got[on_stream][one][0] = download(d_db, out_c);
        got[on_stream][one][1] = download(d_dinp, n * in_c);
      }
      qt_cuda_stream_use(previous);
    }
    qt_cuda_set_matmul_precision(before);
    for (int on_stream = 0; on_stream < 2; on_stream++)
      for (int k = 0; k < 2; k++) {
        size_t count = k ? n * in_c : out_c;
        if (memcmp(got[on_stream][1][k], got[on_stream][0][k], count * sizeof(float)) != 0) {
          printf("\n    colsum one pass (%s, %s): %s differs", bf16 ? "BF16" : "FP32",
                 on_stream ? "own stream" : "default stream", k ? "dinp" : "dbias");
          CU_FAIL("the one-pass column sums changed a result");
        }
        free(got[on_stream][0][k]);
        free(got[on_stream][1][k]);
      }
  }
  qt__cuda_set_colsum_one_pass(was_on);
  qt_cuda_stream_destroy(s);
  float *hosts[] = {x, w, dout, pre, zeros};
  for (size_t i = 0; i < sizeof hosts / sizeof *hosts; i++) free(hosts[i]);
  float *devs[] = {d_x, d_w, d_dout, d_pre, d_dinp, d_dpre, d_dw, d_db};
  for (size_t i = 0; i < sizeof devs / sizeof *devs; i++) qt_cuda_free(devs[i]);
  qt_rng_free(rng);
}

/* qt_cuda_upload_async and _wait: without a stream of its own, a plain
 * upload; on a stream, each of several uploads of changing page-locked
 * host values is what a copy queued on the stream after the wait reads,
 * bit for bit. */
static void test_upload_async(void) {
  qt_rng_t *rng = make_rng(59);
  size_t n = (size_t)1 << 22, bytes = n * sizeof(float);
  float *h = host_random(rng, n, 0.0, 1.0), *back = malloc(bytes);
  CU_ASSERT_PTR_NOT_NULL_FATAL(back);
  CHECK_RC(qt_cuda_host_register(h, bytes, E));
  float *d = device_alloc(n), *copy = device_alloc(n);
  CHECK_RC(qt_cuda_upload_async(d, h, bytes, E));
  CHECK_RC(qt_cuda_upload_wait(E));
  CHECK_RC(qt_cuda_copy_to_host(back, d, bytes, E));
  CU_ASSERT(memcmp(back, h, bytes) == 0);
  qt_cuda_stream_t *s = NULL;
  CHECK_RC(qt_cuda_stream_create(&s, E));
  qt_cuda_stream_t *previous = qt_cuda_stream_use(s);
  for (int round = 0; round < 4; round++) {
    for (size_t i = 0; i < n; i++) h[i] = (float)round + (float)i / (float)n;
    CHECK_RC(qt_cuda_upload_async(d, h, bytes, E));
    CHECK_RC(qt_cuda_upload_wait(E));
    CHECK_RC(qt_cuda_copy_on_device(copy, d, bytes, E));
    CHECK_RC(qt_cuda_copy_to_host(back, copy, bytes, E));
    CU_ASSERT(memcmp(back, h, bytes) == 0);
  }
  qt_cuda_stream_use(previous);
  qt_cuda_stream_destroy(s);
  qt_cuda_host_unregister(h);
  qt_cuda_free(d);
  qt_cuda_free(copy);
  free(h);
  free(back);
  qt_rng_free(rng);
}

static const qt_test_case cases[] = {
    {"linear", test_linear},
    {"linear_tf32", test_linear_tf32},
    {"linear_bf16", test_linear_bf16},
    {"linear_bf16_fast", test_linear_bf16_fast},
    {"bf16_inputs", test_bf16_inputs},
    {"attention_bf16", test_attention_bf16},
    {"attention_fused", test_attention_fused},
    {"layernorm", test_layernorm},
    {"gelu", test_gelu},
    {"attention", test_attention},
    {"residual", test_residual},
    {"residual_layernorm", test_residual_layernorm},
    {"gelu_linear_backward", test_gelu_linear_backward},
    {"tokens", test_tokens},
    {"cross_entropy", test_cross_entropy},
    {"arguments", test_arguments},
    {"host_register", test_host_register},
    {"failure_not_left_behind", test_failure_not_left_behind},
    {"linear_bias_epilogue", test_linear_bias_epilogue},
    {"linear_bias_broadcast", test_linear_bias_broadcast},
    {"streams", test_streams},
    {"streams_concurrent", test_streams_concurrent},
    {"upload_async", test_upload_async},
    {"kept_weight", test_kept_weight},
    {"colsum_one_pass", test_colsum_one_pass},
    {NULL, NULL},
};

QT_GPU_TEST_MAIN("gpu_ops", cases)

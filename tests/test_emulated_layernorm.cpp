/*
 * test_emulated_layernorm.cpp - the layer norm row kernels' bodies
 * (src/finetune/cuda/qt_cuda_layernorm.cuh) run on the CPU through
 * qt_cuda_emulation.h, against qt_cpu_layernorm_forward / _backward: out
 * in FP32 and in BF16 (the FP32 result rounded, bit for bit), mean, rstd,
 * dinp (added to its old values) and the weight's and bias's gradients
 * (added to theirs; with several chunks, their partial sums added here in
 * chunk order: test_emulated_colsum tests qt__cuda_column_partials_add's
 * body), within 1e-5 like the `gpu`
 * tests' FP32 ops, for feature counts around the instantiations' widths
 * (1, 7, 33, 256, 257, 384, 768, 1000, 1024) and row counts of one and of
 * several chunks, with and without the affine parameters and each
 * gradient alone, the backward's column sums in registers and in shared
 * memory (the latter, in the former's chunks, bit for bit the same); and
 * the residual add with the layer norm after it in one
 * body, against the CPU's two ops (the sum to the bit). It runs without a GPU; `test_gpu_ops` runs
 * the compiled kernels on a device.
 */
#include "qt_cuda_emulation.h"

#include <random>

#include "finetune/cuda/qt_cuda_layernorm.cuh"
#include "finetune/qt_finetune.h"

static const double TOLERANCE = 1e-5;
static int failures = 0, checks = 0;

static void check(const char *what, size_t n, size_t c, const std::vector<float> &got,
                  const std::vector<float> &want, const std::vector<float> *init) {
  double e = qt_emu_parity_error(got, want, init);
  checks++;
  if (!(e <= TOLERANCE)) {
    printf("FAIL layernorm (%zu, %zu) %s: relative error %.3g\n", n, c, what, e);
    failures++;
  }
}

template <int VEC>
static void forward_case(size_t n, size_t c, const std::vector<float> &x,
                         const std::vector<float> &w, const std::vector<float> &b, int affine) {
  const float *weight = affine ? w.data() : nullptr, *bias = affine ? b.data() : nullptr;
  std::vector<float> out(n * c), mean(n), rstd(n), want(n * c), want_mean(n), want_rstd(n);
  std::vector<__nv_bfloat16> out16(n * c);
  qt_cpu_layernorm_forward(want.data(), want_mean.data(), want_rstd.data(), x.data(), weight, bias,
                           n, c, 1e-6f);
  int blocks = (int)((n + QT_LN_WARPS - 1) / QT_LN_WARPS);
  qt_emu_launch(blocks, QT_LN_WARPS * 32, 0, [&](unsigned char *, int block, int tid, int) {
    size_t row = (size_t)block * QT_LN_WARPS + tid / 32;
    if (row >= n) return;
    qt_ln::forward_row<VEC>(out.data() + row * c, &mean[row], &rstd[row], x.data() + row * c,
                            weight, bias, c, 1e-6f, tid % 32);
    qt_ln::forward_row<VEC>(out16.data() + row * c, &mean[row], &rstd[row], x.data() + row * c,
                            weight, bias, c, 1e-6f, tid % 32);
  });
  check("out", n, c, out, want, nullptr);
  check("mean", n, c, mean, want_mean, nullptr);
  check("rstd", n, c, rstd, want_rstd, nullptr);
  size_t off = 0;
  for (size_t i = 0; i < n * c; i++) off += out16[i].x != __float2bfloat16_rn(out[i]).x;
  checks++;
  if (off) {
    printf("FAIL layernorm (%zu, %zu): %zu BF16 outputs are not the FP32 ones rounded\n", n, c,
           off);
    failures++;
  }
}

/* The residual add and the layer norm in one body against the CPU's
 * residual_forward, then layernorm_forward: out to the bit, the
 * normalized rows, mean and rstd within the tolerance, the BF16 rows as
 * the FP32 ones rounded; with and without the layer scale, out in place
 * of res or apart. */
template <int VEC>
static void residual_case(size_t n, size_t c, const std::vector<float> &x,
                          const std::vector<float> &w, const std::vector<float> &b, int with_gamma,
                          int in_place, std::mt19937 &rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> branch(n * c), gamma(c);
  for (float &v : branch) v = normal(rng);
  for (float &v : gamma) v = 0.1f * normal(rng);
  const float *g = with_gamma ? gamma.data() : nullptr;
  std::vector<float> want_out(n * c), want(n * c), want_mean(n), want_rstd(n);
  qt_cpu_residual_forward(want_out.data(), x.data(), branch.data(), g, n, c);
  qt_cpu_layernorm_forward(want.data(), want_mean.data(), want_rstd.data(), want_out.data(),
                           w.data(), b.data(), n, c, 1e-6f);
  std::vector<float> res = x, out(n * c), norm(n * c), mean(n), rstd(n);
  std::vector<__nv_bfloat16> norm16(n * c);
  float *dst = in_place ? res.data() : out.data();
  int blocks = (int)((n + QT_LN_WARPS - 1) / QT_LN_WARPS);
  qt_emu_launch(blocks, QT_LN_WARPS * 32, 0, [&](unsigned char *, int block, int tid, int) {
    size_t row = (size_t)block * QT_LN_WARPS + tid / 32;
    if (row >= n) return;
    qt_ln::residual_forward_row<VEC>(dst + row * c, norm.data() + row * c, &mean[row], &rstd[row],
                                     res.data() + row * c, branch.data() + row * c, g, w.data(),
                                     b.data(), c, 1e-6f, tid % 32);
  });
  /* The BF16 output from a second pass over the same sums (out is res
   * now when in place: add from x again). */
  std::vector<float> out2(n * c);
  qt_emu_launch(blocks, QT_LN_WARPS * 32, 0, [&](unsigned char *, int block, int tid, int) {
    size_t row = (size_t)block * QT_LN_WARPS + tid / 32;
    if (row >= n) return;
    qt_ln::residual_forward_row<VEC>(out2.data() + row * c, norm16.data() + row * c, &mean[row],
                                     &rstd[row], x.data() + row * c, branch.data() + row * c, g,
                                     w.data(), b.data(), c, 1e-6f, tid % 32);
  });
  size_t off = 0;
  for (size_t i = 0; i < n * c; i++) {
    off += memcmp(&dst[i], &want_out[i], sizeof(float)) != 0;
    off += memcmp(&out2[i], &want_out[i], sizeof(float)) != 0;
    off += norm16[i].x != __float2bfloat16_rn(norm[i]).x;
  }
  checks++;
  if (off) {
    printf("FAIL residual + layernorm (%zu, %zu)%s%s: %zu values are not the two ops'\n", n, c,
           with_gamma ? " layer scale" : "", in_place ? " in place" : "", off);
    failures++;
  }
  check("residual + layernorm: norm", n, c, norm, want, nullptr);
  check("residual + layernorm: mean", n, c, mean, want_mean, nullptr);
  check("residual + layernorm: rstd", n, c, rstd, want_rstd, nullptr);
  /* The branch in BF16 (proj's and fc2's outputs kept so, QT__KEEP_BRANCH):
   * the FP32 body's results on the same values, bit for bit. */
  std::vector<__nv_bfloat16> branch16(n * c);
  std::vector<float> wide(n * c), got[2][4];
  for (size_t i = 0; i < n * c; i++) {
    branch16[i] = __float2bfloat16_rn(branch[i]);
    wide[i] = qt_emu_float(branch16[i]);
  }
  for (int k = 0; k < 2; k++) {
    for (auto &v : got[k]) v.assign(n * c, 0.0f);
    qt_emu_launch(blocks, QT_LN_WARPS * 32, 0, [&](unsigned char *, int block, int tid, int) {
      size_t row = (size_t)block * QT_LN_WARPS + tid / 32;
      if (row >= n) return;
      float *o = got[k][0].data() + row * c, *y = got[k][1].data() + row * c;
      float *m = &got[k][2][row], *r = &got[k][3][row];
      if (k == 0)
        qt_ln::residual_forward_row<VEC>(o, y, m, r, x.data() + row * c, wide.data() + row * c, g,
                                         w.data(), b.data(), c, 1e-6f, tid % 32);
      else
        qt_ln::residual_forward_row<VEC>(o, y, m, r, x.data() + row * c, branch16.data() + row * c,
                                         g, w.data(), b.data(), c, 1e-6f, tid % 32);
    });
  }
  checks++;
  int same = 1;
  for (int j = 0; j < 4; j++)
    same &= memcmp(got[0][j].data(), got[1][j].data(), n * c * sizeof(float)) == 0;
  if (!same) {
    printf("FAIL residual + layernorm (%zu, %zu): a BF16 branch differs from its FP32 values\n", n,
           c);
    failures++;
  }
}

/* The emulated backward of dy (float or BF16) into gi, gw, gb (each
 * skipped when NULL), the sums in registers or (SHARED) in shared memory,
 * in the chunks of backward_plan(n, plan_shared), the partial sums of
 * several chunks added as qt__cuda_column_partials_add does; returns the
 * chunks. */
template <int VEC, bool SHARED, typename D>
static int emulated_backward(float *gi, float *gw, float *gb, const D *dy, const float *x,
                             const float *weight, const float *mean, const float *rstd, size_t n,
                             size_t c, bool plan_shared) {
  size_t rows_per_chunk;
  int chunks;
  qt_ln::backward_plan(n, plan_shared, &rows_per_chunk, &chunks);
  /* NaN: a partial sum the kernel should have written and did not. */
  std::vector<double> partial(2 * (size_t)chunks * c, NAN);
  qt_emu_launch(chunks, QT_LN_WARPS * 32, (SHARED ? 2 : 1) * QT_LN_WARPS * c * sizeof(float),
                [&](unsigned char *smem, int block, int tid, int threads) {
                  qt_ln::backward_block<VEC, SHARED>((float *)smem, gi, gw, gb, partial.data(), dy,
                                                     x, weight, mean, rstd, n, c, rows_per_chunk,
                                                     chunks, block, tid, threads);
                });
  if (chunks > 1) {
    for (size_t col = 0; col < c; col++) {
      double t0 = 0.0, t1 = 0.0;
      for (int r = 0; r < chunks; r++) {
        t0 += partial[(size_t)r * c + col];
        t1 += partial[((size_t)chunks + r) * c + col];
      }
      if (gw) gw[col] += (float)t0;
      if (gb) gb[col] += (float)t1;
    }
  }
  return chunks;
}

/* Two backwards' dinp, dweight and dbias, the same bits (else `what`). */
static void expect_same_grads(const std::vector<float> (&got)[2][3], size_t n, size_t c,
                              const char *what) {
  checks++;
  int same = 1;
  for (int k = 0; k < 3; k++)
    same &= memcmp(got[0][k].data(), got[1][k].data(), got[0][k].size() * sizeof(float)) == 0;
  if (!same) {
    printf("FAIL layernorm backward (%zu, %zu): %s\n", n, c, what);
    failures++;
  }
}

/* emulated_backward with the sums in shared memory and its chunks where
 * `shared` and the rows allow (QT_LN_SHARED_MAX_C), as the launcher; else
 * in registers. */
template <int VEC, typename D>
static int emulated_backward_as(bool shared, float *gi, float *gw, float *gb, const D *dy,
                                const float *x, const float *weight, const float *mean,
                                const float *rstd, size_t n, size_t c) {
  if (shared && c <= QT_LN_SHARED_MAX_C)
    return emulated_backward<VEC, VEC * 32 <= QT_LN_SHARED_MAX_C>(gi, gw, gb, dy, x, weight, mean,
                                                                  rstd, n, c, true);
  return emulated_backward<VEC, false>(gi, gw, gb, dy, x, weight, mean, rstd, n, c, false);
}

/* grads: which of dinp, dweight, dbias the call asks for (bits 1, 2, 4).
 * With all three, dy in BF16 too (the layer norms' output gradients that
 * the linear layers after them write so, QT__KEEP_NORM_GRAD): the FP32
 * body's results on the same values, bit for bit. */
template <int VEC>
static void backward_case(size_t n, size_t c, const std::vector<float> &x,
                          const std::vector<float> &w, int affine, int grads, bool shared,
                          std::mt19937 &rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> dy(n * c), mean(n), rstd(n), scratch(n * c);
  for (float &v : dy) v = normal(rng);
  const float *weight = affine ? w.data() : nullptr;
  qt_cpu_layernorm_forward(scratch.data(), mean.data(), rstd.data(), x.data(), weight, nullptr, n,
                           c, 1e-6f);
  std::vector<float> dinp0(n * c), dw0(c), db0(c);
  for (float &v : dinp0) v = normal(rng);
  for (float &v : dw0) v = normal(rng);
  for (float &v : db0) v = normal(rng);
  std::vector<float> dinp = dinp0, dw = dw0, db = db0;
  std::vector<float> want_dinp = dinp0, want_dw = dw0, want_db = db0;
  float *gi = grads & 1 ? dinp.data() : nullptr, *gw = grads & 2 ? dw.data() : nullptr;
  float *gb = grads & 4 ? db.data() : nullptr;
  qt_cpu_layernorm_backward(grads & 1 ? want_dinp.data() : nullptr,
                            grads & 2 ? want_dw.data() : nullptr,
                            grads & 4 ? want_db.data() : nullptr, dy.data(), x.data(), weight,
                            mean.data(), rstd.data(), n, c);
  int chunks = emulated_backward_as<VEC>(shared, gi, gw, gb, dy.data(), x.data(), weight,
                                         mean.data(), rstd.data(), n, c);
  const char *sums = shared && c <= QT_LN_SHARED_MAX_C ? "shared" : "registers";
  char what[96];
  snprintf(what, sizeof what, "dinp (grads %d, %d chunks, sums in %s)", grads, chunks, sums);
  check(what, n, c, dinp, want_dinp, &dinp0);
  snprintf(what, sizeof what, "dweight (grads %d, %d chunks, sums in %s)", grads, chunks, sums);
  check(what, n, c, dw, want_dw, &dw0);
  snprintf(what, sizeof what, "dbias (grads %d, %d chunks, sums in %s)", grads, chunks, sums);
  check(what, n, c, db, want_db, &db0);
  if (VEC * 32 <= QT_LN_SHARED_MAX_C && shared) {
    /* In the register body's chunks, the shared sums are its additions in
     * its order: the same bits. */
    std::vector<float> got[2][3] = {{dinp0, dw0, db0}, {dinp0, dw0, db0}};
    emulated_backward<VEC, false>(got[0][0].data(), got[0][1].data(), got[0][2].data(), dy.data(),
                                  x.data(), weight, mean.data(), rstd.data(), n, c, false);
    emulated_backward<VEC, VEC * 32 <= QT_LN_SHARED_MAX_C>(
        got[1][0].data(), got[1][1].data(), got[1][2].data(), dy.data(), x.data(), weight,
        mean.data(), rstd.data(), n, c, false);
    expect_same_grads(got, n, c, "shared sums differ from the registers'");
  }
  if (grads != 7) return;
  std::vector<__nv_bfloat16> dy16(n * c);
  std::vector<float> wide(n * c);
  for (size_t k = 0; k < n * c; k++) {
    dy16[k] = __float2bfloat16_rn(dy[k]);
    wide[k] = qt_emu_float(dy16[k]);
  }
  std::vector<float> got[2][3] = {{dinp0, dw0, db0}, {dinp0, dw0, db0}};
  emulated_backward_as<VEC>(shared, got[0][0].data(), got[0][1].data(), got[0][2].data(),
                            wide.data(), x.data(), weight, mean.data(), rstd.data(), n, c);
  emulated_backward_as<VEC>(shared, got[1][0].data(), got[1][1].data(), got[1][2].data(),
                            dy16.data(), x.data(), weight, mean.data(), rstd.data(), n, c);
  expect_same_grads(got, n, c, "BF16 dy differs from its FP32 values");
}

template <int VEC>
static void layernorm_case(size_t n, size_t c, int affine, unsigned seed) {
  if (qt_ln::vec_for(c) != VEC) {
    printf("FAIL layernorm (%zu, %zu): %d registers per lane, the case says %d\n", n, c,
           qt_ln::vec_for(c), VEC);
    failures++;
    return;
  }
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(n * c), w(c), b(c);
  /* An offset per row, so that the variance is taken around a mean. */
  for (size_t i = 0; i < n; i++) {
    float offset = 3.0f * normal(rng);
    for (size_t j = 0; j < c; j++) x[i * c + j] = offset + normal(rng);
  }
  for (float &v : w) v = 1.0f + 0.3f * normal(rng);
  for (float &v : b) v = normal(rng);
  forward_case<VEC>(n, c, x, w, b, affine);
  backward_case<VEC>(n, c, x, w, affine, 7, false, rng);
  backward_case<VEC>(n, c, x, w, affine, 7, true, rng);
  residual_case<VEC>(n, c, x, w, b, 0, 0, rng);
  residual_case<VEC>(n, c, x, w, b, 1, 1, rng);
}

int main(void) {
  layernorm_case<8>(1, 1, 1, 1);
  layernorm_case<8>(5, 7, 1, 2);
  layernorm_case<8>(5, 7, 0, 3);
  layernorm_case<8>(19, 33, 1, 4);
  layernorm_case<8>(9, 256, 1, 5);
  layernorm_case<16>(9, 257, 1, 6);
  layernorm_case<16>(130, 384, 1, 7); /* three chunks, the last shorter */
  layernorm_case<24>(50, 768, 1, 8);  /* two chunks */
  layernorm_case<32>(3, 1000, 0, 9);
  layernorm_case<32>(12, 1024, 1, 10);
  /* Each gradient alone, and dinp without the sums, over several chunks. */
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  size_t n = 100, c = 40;
  std::vector<float> x(n * c), w(c);
  for (float &v : x) v = normal(rng);
  for (float &v : w) v = normal(rng);
  for (int grads : {1, 2, 4, 3}) {
    backward_case<8>(n, c, x, w, 1, grads, false, rng);
    backward_case<8>(n, c, x, w, 1, grads, true, rng);
  }
  printf("%d checks, %d failed\n", checks, failures);
  return failures ? 1 : 0;
}

/*
 * test_emulated_attention.cpp - the fused attention kernels' bodies
 * (src/finetune/cuda/qt_cuda_attention_fused.cuh) run on the CPU through
 * qt_cuda_emulation.h, against qt_cpu_attention_forward / _backward: out,
 * the log-sum-exps (and nothing written past them), dqkv (added to, and
 * written with `set`), the forward's BF16 output (its FP32 output
 * rounded, bit for bit) and dqkv with D from that BF16 output, and all of
 * them again from qkv in BF16 up to 129 tokens, staged 8 values at a time,
 * by asynchronous copies (and those at 250 tokens) and by pairs (bit for
 * bit those from FP32; dqkv in BF16 the FP32 one rounded); the backward
 * with dQ from the dS that the dkv body writes, up to 129 tokens (D, dK
 * and dV the bits of the dq and dkv bodies, dQ within the bound), for token
 * counts around the tiles of 16 rows and the parts of 8 tiles (1, 5, 16,
 * 17, 33, 129, 197, 250, 256), several images and heads; and that the
 * kernels' shared memory at 256 tokens fits a block of sm_86 (99 KB).
 *
 * Built twice: test_emulated_attention rounds to BF16 as the device does
 * (inputs rounded on the host, so what is left is the kernels' own
 * rounding of the probabilities, the scores' gradient and, where the
 * output is BF16, D: within 1e-2, the
 * BF16 bound of the `gpu` tests); test_emulated_attention_exact keeps
 * every value in FP32 (QT_EMULATE_EXACT), within 1e-5 like the FP32 ops.
 * It runs without a GPU; it does not replace the `gpu` tests (the compiled
 * kernels, the real tensor cores, the launch), which run them on a device.
 */
#include "qt_cuda_emulation.h"

#include <random>

#include "finetune/cuda/qt_cuda_attention_fused.cuh"
#include "finetune/qt_finetune.h"

#ifdef QT_EMULATE_EXACT
static const double TOLERANCE = 1e-5;
#else
static const double TOLERANCE = 1e-2;
#endif
/* Shared memory per block, opt-in: sm_86, the smallest of sm_80 and on. */
static const size_t SM86_SHARED = 101376;

static int failures = 0;

static bool same_bits(float a, float b) {
  return memcmp(&a, &b, sizeof a) == 0;
}

/* Runs one kernel's body over the grid, as the launcher does. */
template <class Body>
static void launch(qt_fa::kernel k, const qt_fa::shape &sh, Body body) {
  qt_emu_launch(qt_fa::parts(sh) * sh.batch * sh.heads, QT_FA_WARPS * 32,
                qt_fa::shared_bytes(k, sh.padded), body);
}

/* qkv in BF16, as the qkv product writes it where the op table keeps it
 * so: the kernels' operands are the same (qkv holds BF16 values already),
 * so are their results, bit for bit. Staged 8 values at a time from
 * arrays on 16 bytes (`offset` 0) and by pairs otherwise (2). The values
 * that differ from those of the FP32 qkv (out, lse: att as the forward
 * left it, dqkv). */
template <bool ASYNC>
static size_t bf16_qkv_mismatches(const qt_fa::shape &sh, const std::vector<float> &qkv,
                                  const std::vector<float> &dout, const std::vector<float> &init,
                                  int set, const std::vector<float> &out,
                                  const std::vector<float> &lse, const std::vector<float> &dqkv,
                                  size_t offset) {
  size_t n_qkv = qkv.size(), n_out = out.size(), n_lse = (size_t)sh.batch * sh.heads * sh.tokens;
  std::vector<__nv_bfloat16> qkv16(n_qkv + offset);
  const __nv_bfloat16 *x = qkv16.data() + offset;
  if ((uintptr_t)qkv16.data() % 16 != 0) abort(); /* the allocator's, on x86-64 */
  for (size_t i = 0; i < n_qkv; i++) qkv16[offset + i] = __float2bfloat16_rn(qkv[i]);
  std::vector<float> out_h(n_out, NAN), lse_h(lse.size(), NAN), d_h(n_lse, NAN), dqkv_h(init);
  if (set) dqkv_h.assign(n_qkv, NAN);
  launch(qt_fa::FORWARD, sh, [&](unsigned char *smem, int block, int t, int threads) {
    qt_fa::forward_block<ASYNC>(smem, out_h.data(), lse_h.data(), x, sh, block, t, threads);
  });
  launch(qt_fa::BACKWARD_DQ, sh, [&](unsigned char *smem, int block, int t, int threads) {
    qt_fa::backward_dq_block<ASYNC>(smem, dqkv_h.data(), d_h.data(), dout.data(), out.data(), x,
                                    lse_h.data(), sh, set, block, t, threads);
  });
  launch(qt_fa::BACKWARD_DKV, sh, [&](unsigned char *smem, int block, int t, int threads) {
    qt_fa::backward_dkv_block<ASYNC>(smem, dqkv_h.data(), d_h.data(), dout.data(), x, lse_h.data(),
                                     sh, set, block, t, threads);
  });
  size_t mismatches = 0;
  for (size_t i = 0; i < n_out; i++) mismatches += !same_bits(out_h[i], out[i]);
  for (size_t i = 0; i < lse.size(); i++) mismatches += !same_bits(lse_h[i], lse[i]);
  for (size_t i = 0; i < n_qkv; i++) mismatches += !same_bits(dqkv_h[i], dqkv[i]);
  if (set) {
    /* dqkv written in BF16 (the op table's attention_backward_bf16): the
     * FP32 one rounded. */
    std::vector<__nv_bfloat16> dqkv16(n_qkv, __float2bfloat16_rn(NAN));
    launch(qt_fa::BACKWARD_DQ, sh, [&](unsigned char *smem, int block, int t, int threads) {
      qt_fa::backward_dq_block<ASYNC>(smem, dqkv16.data(), d_h.data(), dout.data(), out.data(), x,
                                      lse_h.data(), sh, 1, block, t, threads);
    });
    launch(qt_fa::BACKWARD_DKV, sh, [&](unsigned char *smem, int block, int t, int threads) {
      qt_fa::backward_dkv_block<ASYNC>(smem, dqkv16.data(), d_h.data(), dout.data(), x,
                                       lse_h.data(), sh, 1, block, t, threads);
    });
    for (size_t i = 0; i < n_qkv; i++) {
      float want = qt_emu_float(__float2bfloat16_rn(dqkv[i]));
      mismatches += !same_bits(qt_emu_float(dqkv16[i]), want);
    }
    /* dout in BF16 too (proj's backward writes it so where the op table
     * keeps the attention's output gradient in BF16; dout holds BF16
     * values): the same dqkv, bit for bit, staged as qkv is. */
    std::vector<__nv_bfloat16> dout16(n_out + offset), dqkv16b(n_qkv, __float2bfloat16_rn(NAN));
    const __nv_bfloat16 *dy = dout16.data() + offset;
    if ((uintptr_t)dout16.data() % 16 != 0) abort();
    for (size_t i = 0; i < n_out; i++) dout16[offset + i] = __float2bfloat16_rn(dout[i]);
    std::vector<float> d_b(n_lse, NAN);
    launch(qt_fa::BACKWARD_DQ, sh, [&](unsigned char *smem, int block, int t, int threads) {
      qt_fa::backward_dq_block<ASYNC>(smem, dqkv16b.data(), d_b.data(), dy, out.data(), x,
                                      lse_h.data(), sh, 1, block, t, threads);
    });
    launch(qt_fa::BACKWARD_DKV, sh, [&](unsigned char *smem, int block, int t, int threads) {
      qt_fa::backward_dkv_block<ASYNC>(smem, dqkv16b.data(), d_b.data(), dy, x, lse_h.data(), sh, 1,
                                       block, t, threads);
    });
    for (size_t i = 0; i < n_qkv; i++) mismatches += dqkv16b[i].x != dqkv16[i].x;
    for (size_t i = 0; i < n_lse; i++) mismatches += !same_bits(d_b[i], d_h[i]);
  }
  return mismatches;
}

/* The backward with dQ from dS (QT_CUDA_FA_DS): D by deltas_block, then
 * the dkv body writing dS, then dQ = scale dS K here in double, as
 * cuBLAS does on the device. D and dK, dV must be those of the dq and
 * dkv bodies (d, dqkv) to the bit; the returned dqkv is for the caller to
 * hold against the CPU's within the bound. */
static std::vector<float> ds_backward(const qt_fa::shape &sh, const std::vector<float> &qkv,
                                      const std::vector<float> &dout,
                                      const std::vector<float> &init, int set,
                                      const std::vector<float> &out, const std::vector<float> &lse,
                                      const std::vector<float> &d, const std::vector<float> &dqkv,
                                      size_t *mismatches) {
  size_t c = sh.c, ld = 3 * c, padded = (size_t)sh.padded;
  size_t per_head = (size_t)sh.batch * padded * padded;
  std::vector<float> d2(d.size(), NAN), dqkv2(init);
  if (set) dqkv2.assign(qkv.size(), NAN);
  std::vector<__nv_bfloat16> ds(per_head * sh.heads, __float2bfloat16_rn(NAN));
  launch(qt_fa::BACKWARD_DQ, sh, [&](unsigned char *, int block, int t, int) {
    qt_fa::deltas_block(d2.data(), dout.data(), out.data(), sh, block, t);
  });
  launch(qt_fa::BACKWARD_DKV, sh, [&](unsigned char *smem, int block, int t, int threads) {
    qt_fa::backward_dkv_block<false, true>(smem, dqkv2.data(), d2.data(), dout.data(), qkv.data(),
                                           lse.data(), sh, set, block, t, threads, ds.data());
  });
  for (size_t i = 0; i < d.size(); i++) *mismatches += !same_bits(d2[i], d[i]);
  for (size_t row = 0; row < qkv.size() / ld; row++) {
    for (size_t f = c; f < ld; f++)
      *mismatches += !same_bits(dqkv2[row * ld + f], dqkv[row * ld + f]);
  }
  for (int h = 0; h < sh.heads; h++) {
    for (int b = 0; b < sh.batch; b++) {
      const __nv_bfloat16 *dsh = &ds[(size_t)h * per_head + (size_t)b * padded * padded];
      for (int i = 0; i < sh.tokens; i++) {
        float *dq = &dqkv2[((size_t)b * sh.tokens + i) * ld + (size_t)h * QT_FA_HEAD];
        for (int f = 0; f < QT_FA_HEAD; f++) {
          double sum = 0.0;
          for (int j = 0; j < sh.tokens; j++) {
            const float *k = &qkv[((size_t)b * sh.tokens + j) * ld + c + (size_t)h * QT_FA_HEAD];
            sum += (double)qt_emu_float(dsh[(size_t)i * padded + j]) * k[f];
          }
          dq[f] = (float)(sh.scale * sum) + (set ? 0.0f : dq[f]);
        }
      }
    }
  }
  return dqkv2;
}

static void attention_case(int batch, int tokens, int heads, int set, unsigned seed) {
  size_t c = (size_t)heads * QT_FA_HEAD, n_qkv = (size_t)batch * tokens * 3 * c;
  size_t n_out = (size_t)batch * tokens * c, n_lse = (size_t)batch * heads * tokens;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> qkv(n_qkv), dout(n_out), init(n_qkv);
  for (float &x : qkv) x = qt_emu_float(__float2bfloat16_rn(normal(rng)));
  for (float &x : dout) x = qt_emu_float(__float2bfloat16_rn(normal(rng)));
  for (float &x : init) x = set ? 0.0f : 1e-3f * normal(rng);

  std::vector<float> want_out(n_out), att(n_lse * tokens), want_dqkv(init),
      scratch(tokens * tokens);
  qt_cpu_attention_forward(want_out.data(), att.data(), qkv.data(), batch, tokens, c, heads);
  qt_cpu_attention_backward(want_dqkv.data(), scratch.data(), dout.data(), qkv.data(), att.data(),
                            batch, tokens, c, heads);
  /* The log-sum-exps, in double. */
  std::vector<double> want_lse(n_lse);
  for (size_t row = 0; row < n_lse; row++) {
    size_t b = row / ((size_t)heads * tokens), h = row / tokens % heads, i = row % tokens;
    const float *q = &qkv[((size_t)b * tokens + i) * 3 * c + h * QT_FA_HEAD];
    std::vector<double> s(tokens);
    double max = -INFINITY, sum = 0.0;
    for (int j = 0; j < tokens; j++) {
      const float *k = &qkv[((size_t)b * tokens + j) * 3 * c + c + h * QT_FA_HEAD];
      double dot = 0.0;
      for (int f = 0; f < QT_FA_HEAD; f++) dot += (double)q[f] * k[f];
      s[j] = dot / 8.0;
      max = fmax(max, s[j]);
    }
    for (int j = 0; j < tokens; j++) sum += exp(s[j] - max);
    want_lse[row] = max + log(sum);
  }

  qt_fa::shape sh;
  sh.batch = batch;
  sh.tokens = tokens;
  sh.heads = heads;
  sh.padded = (tokens + 15) / 16 * 16;
  sh.c = c;
  sh.scale = 0.125f;
  sh.parts_adjacent = (int)(seed % 2); /* both block orders, each with shapes of two parts */
  /* lse: the forward's att, the (batch, heads, tokens) log-sum-exps,
   * and past them a guard of NaNs that the forward must leave alone (the
   * op table's att has no more room). */
  const size_t guard = 64;
  std::vector<float> out(n_out, NAN), lse(n_lse + guard, NAN), d(n_lse, NAN), dqkv(init);
  if (set) dqkv.assign(n_qkv, NAN); /* written, never read */
  launch(qt_fa::FORWARD, sh, [&](unsigned char *smem, int block, int t, int threads) {
    qt_fa::forward_block(smem, out.data(), lse.data(), qkv.data(), sh, block, t, threads);
  });
  size_t guard_written = 0;
  for (size_t i = n_lse; i < lse.size(); i++) guard_written += !std::isnan(lse[i]);
  launch(qt_fa::BACKWARD_DQ, sh, [&](unsigned char *smem, int block, int t, int threads) {
    qt_fa::backward_dq_block(smem, dqkv.data(), d.data(), dout.data(), out.data(), qkv.data(),
                             lse.data(), sh, set, block, t, threads);
  });
  launch(qt_fa::BACKWARD_DKV, sh, [&](unsigned char *smem, int block, int t, int threads) {
    qt_fa::backward_dkv_block(smem, dqkv.data(), d.data(), dout.data(), qkv.data(), lse.data(), sh,
                              set, block, t, threads);
  });

  /* dQ from dS (up to 129 tokens, two parts, to keep the test's time). */
  size_t ds_mismatches = 0;
  double dqkv_ds_error = 0.0;
  char ds_text[32] = "not run";
  if (tokens <= 129) {
    std::vector<float> dqkv_ds =
        ds_backward(sh, qkv, dout, init, set, out, lse, d, dqkv, &ds_mismatches);
    dqkv_ds_error = qt_emu_parity_error(dqkv_ds, want_dqkv, set ? nullptr : &init);
    snprintf(ds_text, sizeof ds_text, "%.2e", dqkv_ds_error);
  }

  /* The forward's BF16 output (for proj): its FP32 output rounded. */
  std::vector<__nv_bfloat16> out16(n_out);
  launch(qt_fa::FORWARD, sh, [&](unsigned char *smem, int block, int t, int threads) {
    qt_fa::forward_block(smem, out16.data(), lse.data(), qkv.data(), sh, block, t, threads);
  });
  size_t out16_mismatches = 0;
  for (size_t i = 0; i < n_out; i++) {
    out16_mismatches += qt_emu_float(out16[i]) != qt_emu_float(__float2bfloat16_rn(out[i]));
  }
  /* The backward with D from that BF16 output (proj reads the output in
   * BF16 where the op table keeps it so, and the backward is handed that
   * array): the same dqkv within the BF16 bound. */
  std::vector<float> dqkv_y16(init), d_y16(n_lse, NAN);
  if (set) dqkv_y16.assign(n_qkv, NAN);
  launch(qt_fa::BACKWARD_DQ, sh, [&](unsigned char *smem, int block, int t, int threads) {
    qt_fa::backward_dq_block(smem, dqkv_y16.data(), d_y16.data(), dout.data(), out16.data(),
                             qkv.data(), lse.data(), sh, set, block, t, threads);
  });
  launch(qt_fa::BACKWARD_DKV, sh, [&](unsigned char *smem, int block, int t, int threads) {
    qt_fa::backward_dkv_block(smem, dqkv_y16.data(), d_y16.data(), dout.data(), qkv.data(),
                              lse.data(), sh, set, block, t, threads);
  });

  /* qkv in BF16 (up to 129 tokens, two parts, to keep the test's time):
   * on 16 bytes staged whole and by asynchronous copies (the same values
   * in shared memory: the same results), else by pairs; and at 250
   * tokens (four groups of copies, a part with idle warps, dout in BF16
   * too) by the copies alone. */
  size_t qkv16_mismatches = 0;
  if (tokens <= 129) {
    for (size_t offset : {0, 2})
      qkv16_mismatches +=
          bf16_qkv_mismatches<false>(sh, qkv, dout, init, set, out, lse, dqkv, offset);
  }
  if (tokens <= 129 || tokens == 250)
    qkv16_mismatches += bf16_qkv_mismatches<true>(sh, qkv, dout, init, set, out, lse, dqkv, 0);

  double lse_error = 0.0;
  for (size_t i = 0; i < n_lse; i++) {
    double e = fabs(lse[i] - want_lse[i]);
    lse_error = std::isfinite(e) ? fmax(lse_error, e) : INFINITY;
  }
  double out_error = qt_emu_parity_error(out, want_out, nullptr);
  double dqkv_error = qt_emu_parity_error(dqkv, want_dqkv, set ? nullptr : &init);
  double dqkv_y16_error = qt_emu_parity_error(dqkv_y16, want_dqkv, set ? nullptr : &init);
  bool ok = out_error < TOLERANCE && dqkv_error < TOLERANCE && dqkv_y16_error < TOLERANCE &&
            lse_error < 1e-4 && guard_written == 0 && out16_mismatches == 0 &&
            qkv16_mismatches == 0 && dqkv_ds_error < TOLERANCE && ds_mismatches == 0;
  if (!ok) failures++;
  printf(
      "%s batch %d, %3d tokens, %d heads, set %d, parts adjacent %d: out %.2e, dqkv %.2e (from a "
      "BF16 out %.2e, dQ from dS %s), lse %.2e, %zu written past lse, BF16 out %zu off, BF16 "
      "qkv %zu off, D and dK, dV with dS %zu off\n",
      ok ? "ok  " : "FAIL", batch, tokens, heads, set, sh.parts_adjacent, out_error, dqkv_error,
      dqkv_y16_error, ds_text, lse_error, guard_written, out16_mismatches, qkv16_mismatches,
      ds_mismatches);
}

int main(void) {
  attention_case(1, 1, 1, 0, 1);
  attention_case(1, 5, 2, 1, 2);
  attention_case(2, 16, 1, 0, 3);
  attention_case(2, 17, 2, 1, 4);
  attention_case(3, 33, 2, 0, 5);
  attention_case(2, 129, 1, 0, 6); /* two parts, the second of one tile; two images */
  attention_case(2, 197, 2, 0, 7); /* ViT at 224 px: 13 tiles, parts of 8 and 5 */
  attention_case(1, 250, 1, 1, 8);
  attention_case(1, 256, 1, 0, 9); /* two full parts */
  size_t widest = qt_fa::shared_bytes(qt_fa::BACKWARD_DKV, QT_FA_MAX_TOKENS);
  widest = widest * 2 / sizeof(__nv_bfloat16); /* the device's BF16 */
  if (widest > SM86_SHARED) {
    printf("FAIL: %zu bytes of shared memory at %d tokens pass sm_86's %zu\n", widest,
           QT_FA_MAX_TOKENS, SM86_SHARED);
    failures++;
  }
  printf("%d of 10 checks failed\n", failures);
  return failures != 0;
}

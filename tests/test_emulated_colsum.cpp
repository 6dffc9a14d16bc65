/*
 * test_emulated_colsum.cpp - the column-sum kernels' bodies
 * (src/finetune/cuda/qt_cuda_colsum.cuh) run on the CPU through
 * qt_cuda_emulation.h: for each kind (a plain sum with its BF16 copy, a
 * product, a layer norm's two sums, GELU's gradient with its BF16 copy),
 * the split of qt_colsum::plan, the block sums and the chunks' total
 * added to gradients that start from random values, against the terms
 * added in row order in double on the host (GELU's gradient from the
 * device's own qt__gelu_grad on the host, whose parity with the CPU's
 * GELU test_gpu_ops checks; within 2e-7 of the largest sum: the order of
 * the additions differs), and the copies equal to the terms rounded, bit for
 * bit; a plain sum of BF16 values and GELU's with its input in BF16 as
 * with the same values in FP32, bit for bit. Shapes around the unrolled rows (1, 7, 31, 33, 63, 65,
 * 257 rows), several chunks (3000 rows), ten column tiles. With several
 * chunks, the one launch whose last block per tile adds the chunks'
 * totals (QT_CUDA_COLSUM_ONE_PASS), with the blocks in either order: the
 * same bits as the second kernel. It runs without a GPU; `test_gpu_ops`
 * runs the compiled kernels on a device.
 */
#include "qt_cuda_emulation.h"

#include <random>

#include "finetune/cuda/qt_cuda_colsum.cuh"
#include "finetune/qt_finetune.h"

static int failures = 0, checks = 0;

static void fail(const char *what, int kind, size_t n, size_t c, double e) {
  printf("FAIL kind %d (%zu, %zu) %s: %.3g\n", kind, n, c, what, e);
  failures++;
}

/* The emulated qt__cuda_column_partials_add: add_partials_block over the
 * column tiles. */
static void add_partials(float *dst0, float *dst1, const double *partial, size_t chunks, size_t c) {
  qt_emu_launch((int)((c + 31) / 32), 256, 2 * 8 * 33 * sizeof(double),
                [&](unsigned char *smem, int block, int tid, int) {
                  double(*shared0)[33] = (double(*)[33])smem;
                  qt_colsum::add_partials_block(shared0, shared0 + 8, dst0, dst1, partial, chunks,
                                                c, block, tid % 32, tid / 32);
                });
}

/* The colsum kernel's launch: block_sums over the grid, and with
 * counters (one pass) the last block of each tile adding the tile's
 * partials; the blocks run in chunk order, or from the last chunk to the
 * first (reversed), so that each chunk's block is the last in one order. */
template <int kind, typename A, typename B>
static void launch(float *dst0, float *dst1, double *partial, unsigned *counters, const A *a,
                   const B *b, const float *mean, const float *rstd, __nv_bfloat16 *copy, size_t n,
                   size_t c, bool reversed) {
  size_t rows_per_chunk, chunks, tiles = (c + 31) / 32;
  qt_colsum::plan(n, c, &rows_per_chunk, &chunks);
  size_t shared = 2 * 8 * 33 * sizeof(double);
  qt_emu_launch((int)(tiles * chunks), 256, shared + sizeof(int),
                [&](unsigned char *smem, int block, int tid, int) {
                  double(*shared0)[33] = (double(*)[33])smem;
                  double(*shared1)[33] = shared0 + 8;
                  int tile = (int)(block % tiles), chunk = (int)(block / tiles);
                  if (reversed) chunk = (int)chunks - 1 - chunk;
                  qt_colsum::block_sums<kind>(shared0, shared1, dst0, dst1, partial, a, b, mean,
                                              rstd, copy, n, c, rows_per_chunk, tile, chunk,
                                              (int)chunks, tid % 32, tid / 32);
                  if (counters && qt_colsum::last_of_tile(counters, chunks, tile, tid % 32,
                                                          tid / 32, (int *)(smem + shared)))
                    qt_colsum::add_partials_block<true>(shared0, shared1, dst0, dst1, partial,
                                                        chunks, c, tile, tid % 32, tid / 32);
                });
}

/* The emulated kernels: block_sums over the grid, then add_partials. With
 * several chunks, the one launch of QT_CUDA_COLSUM_ONE_PASS too, in both
 * orders of the blocks: the same bits, and every tile's count back at 0. */
template <int kind, typename A, typename B>
static void run(float *dst0, float *dst1, const A *a, const B *b, const float *mean,
                const float *rstd, __nv_bfloat16 *copy, size_t n, size_t c) {
  size_t rows_per_chunk, chunks, tiles = (c + 31) / 32;
  qt_colsum::plan(n, c, &rows_per_chunk, &chunks);
  std::vector<float> before0(dst0, dst0 + c), before1(dst1 ? dst1 : dst0, (dst1 ? dst1 : dst0) + c);
  /* NaN: a partial sum the kernel should have written and did not. */
  std::vector<double> partial(chunks > 1 ? 2 * chunks * c : 1, NAN);
  launch<kind>(dst0, dst1, chunks > 1 ? partial.data() : nullptr, nullptr, a, b, mean, rstd, copy,
               n, c, false);
  if (chunks == 1) return;
  add_partials(dst0, dst1, partial.data(), chunks, c);
  for (bool reversed : {false, true}) {
    std::vector<float> once0 = before0, once1 = before1;
    std::vector<double> fresh(2 * chunks * c, NAN);
    std::vector<unsigned> counters(tiles, 0u);
    launch<kind>(once0.data(), dst1 ? once1.data() : nullptr, fresh.data(), counters.data(), a, b,
                 mean, rstd, nullptr, n, c, reversed);
    checks++;
    if (memcmp(once0.data(), dst0, c * sizeof(float)) != 0 ||
        (dst1 && memcmp(once1.data(), dst1, c * sizeof(float)) != 0))
      fail(reversed ? "one pass, blocks reversed, differs" : "one pass differs", kind, n, c, 1.0);
    checks++;
    for (unsigned count : counters)
      if (count != 0) {
        fail("a tile's count left", kind, n, c, (double)count);
        break;
      }
  }
}

/* The chunks' total alone, for counts around its unrolled loop and the
 * layer norm backward's (263 chunks for a ViT's batch of 64, up to 1024):
 * against the partials added in chunk order on the host, within 3e-7 of
 * the largest result (the order of the additions differs, and the host
 * rounds once where the kernel rounds twice). outputs: which of dst0,
 * dst1 are given (bits 1, 2); the other's partials are NaN, which must not
 * reach anything. */
static void partials_case(size_t chunks, size_t c, int outputs, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> partial(2 * chunks * c, NAN);
  for (size_t o = 0; o < 2; o++)
    if (outputs & (1 << o))
      for (size_t k = o * chunks * c; k < (o + 1) * chunks * c; k++) partial[k] = normal(rng);
  std::vector<float> dst[2];
  std::vector<double> want[2];
  for (int o = 0; o < 2; o++) {
    dst[o].resize(c);
    want[o].resize(c);
    for (size_t col = 0; col < c; col++) {
      dst[o][col] = (float)normal(rng);
      double total = 0.0;
      for (size_t r = 0; r < chunks; r++) total += partial[(o * chunks + r) * c + col];
      want[o][col] =
          outputs & (1 << o) ? (double)(float)((double)dst[o][col] + total) : dst[o][col];
    }
  }
  add_partials(outputs & 1 ? dst[0].data() : nullptr, outputs & 2 ? dst[1].data() : nullptr,
               partial.data(), chunks, c);
  for (int o = 0; o < 2; o++) {
    double diff = 0.0, scale = 1.0;
    for (size_t col = 0; col < c; col++) {
      diff = fmax(diff, fabs(dst[o][col] - want[o][col]));
      scale = fmax(scale, fabs(want[o][col]));
    }
    checks++;
    if (!(diff <= 3e-7 * scale))
      fail(o ? "partials, output 1" : "partials, output 0", outputs, chunks, c, diff / scale);
  }
}

template <int kind>
static void colsum_case(size_t n, size_t c, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> a(n * c), b(n * c), mean(n), rstd(n), dst0(c), dst1(c);
  for (float &v : a) v = normal(rng);
  for (float &v : b) v = 1.0f + normal(rng);
  for (size_t i = 0; i < n; i++) {
    mean[i] = 0.5f * normal(rng);
    rstd[i] = 1.0f + 0.1f * normal(rng);
  }
  for (float &v : dst0) v = normal(rng);
  for (float &v : dst1) v = normal(rng);
  /* The reference, in row order: GELU's gradient as the GELU backward
   * writes it (0 + g), the others' terms written out here. */
  std::vector<float> gelu(n * c, 0.0f);
  if (kind == QT__COLSUM_GELU)
    for (size_t k = 0; k < n * c; k++) gelu[k] = 0.0f + qt__gelu_grad(a[k], b[k]);
  std::vector<double> want0(c), want1(c);
  std::vector<__nv_bfloat16> want_copy(n * c);
  for (size_t col = 0; col < c; col++) {
    double s0 = 0.0, s1 = 0.0;
    for (size_t i = 0; i < n; i++) {
      size_t k = i * c + col;
      float x = kind == QT__COLSUM_GELU ? gelu[k] : a[k];
      if (kind == QT__COLSUM_PRODUCT) {
        s0 += (double)x * b[k];
      } else if (kind == QT__COLSUM_LAYERNORM) {
        float xhat = (b[k] - mean[i]) * rstd[i];
        s0 += (double)(x * xhat);
        s1 += x;
      } else {
        s0 += x;
        want_copy[k] = __float2bfloat16_rn(x);
      }
    }
    want0[col] = dst0[col] + (double)(float)s0;
    want1[col] = dst1[col] + (double)(float)s1;
  }
  int copies = kind == QT__COLSUM_PLAIN || kind == QT__COLSUM_GELU;
  std::vector<__nv_bfloat16> copy(n * c, __float2bfloat16_rn(NAN));
  run<kind>(dst0.data(), kind == QT__COLSUM_LAYERNORM ? dst1.data() : nullptr, a.data(), b.data(),
            mean.data(), rstd.data(), copies ? copy.data() : nullptr, n, c);
  double diff = 0.0, scale = 0.0;
  for (size_t col = 0; col < c; col++) {
    diff = fmax(diff, fabs(dst0[col] - want0[col]));
    scale = fmax(scale, fabs(want0[col]));
    if (kind == QT__COLSUM_LAYERNORM) {
      diff = fmax(diff, fabs(dst1[col] - want1[col]));
      scale = fmax(scale, fabs(want1[col]));
    }
  }
  checks++;
  if (!(diff <= 2e-7 * scale)) fail("sums", kind, n, c, diff / scale);
  if (copies) {
    size_t off = 0;
    for (size_t k = 0; k < n * c; k++) off += memcmp(&copy[k], &want_copy[k], sizeof copy[k]) != 0;
    checks++;
    if (off) fail("copies off", kind, n, c, (double)off);
  }
  if (kind == QT__COLSUM_PLAIN) {
    /* A gradient in BF16 (qkv's, QT__BF16_DOUT): the sums of the FP32
     * body on the same values, bit for bit. */
    std::vector<__nv_bfloat16> a16(n * c);
    std::vector<float> wide(n * c), sums[2] = {dst0, dst0};
    for (size_t k = 0; k < n * c; k++) {
      a16[k] = __float2bfloat16_rn(a[k]);
      wide[k] = qt_emu_float(a16[k]);
    }
    run<kind>(sums[0].data(), nullptr, wide.data(), (const float *)nullptr, nullptr, nullptr,
              nullptr, n, c);
    run<kind>(sums[1].data(), nullptr, a16.data(), (const float *)nullptr, nullptr, nullptr,
              nullptr, n, c);
    checks++;
    if (memcmp(sums[0].data(), sums[1].data(), c * sizeof(float)) != 0)
      fail("BF16 gradient differs", kind, n, c, 1.0);
  }
  if (kind == QT__COLSUM_GELU) {
    /* GELU's input in BF16 (fc1's output, QT__KEEP_HIDDEN): the sums and
     * copies of the FP32 body on the same values, bit for bit. */
    std::vector<__nv_bfloat16> b16(n * c);
    std::vector<float> wide(n * c), sums[2] = {dst0, dst0};
    std::vector<__nv_bfloat16> copies16[2] = {copy, copy};
    for (size_t k = 0; k < n * c; k++) {
      b16[k] = __float2bfloat16_rn(b[k]);
      wide[k] = qt_emu_float(b16[k]);
    }
    run<kind>(sums[0].data(), nullptr, a.data(), wide.data(), nullptr, nullptr, copies16[0].data(),
              n, c);
    run<kind>(sums[1].data(), nullptr, a.data(), b16.data(), nullptr, nullptr, copies16[1].data(),
              n, c);
    checks++;
    if (memcmp(sums[0].data(), sums[1].data(), c * sizeof(float)) != 0 ||
        memcmp(copies16[0].data(), copies16[1].data(), n * c * sizeof copy[0]) != 0)
      fail("BF16 input differs", kind, n, c, 1.0);
    /* And GELU's output gradient in BF16 too (QT__KEEP_HIDDEN_GRAD). */
    std::vector<__nv_bfloat16> a16(n * c);
    std::vector<float> wide_a(n * c);
    for (size_t k = 0; k < n * c; k++) {
      a16[k] = __float2bfloat16_rn(a[k]);
      wide_a[k] = qt_emu_float(a16[k]);
    }
    sums[0] = sums[1] = dst0;
    copies16[0] = copies16[1] = copy;
    run<kind>(sums[0].data(), nullptr, wide_a.data(), wide.data(), nullptr, nullptr,
              copies16[0].data(), n, c);
    run<kind>(sums[1].data(), nullptr, a16.data(), b16.data(), nullptr, nullptr, copies16[1].data(),
              n, c);
    checks++;
    if (memcmp(sums[0].data(), sums[1].data(), c * sizeof(float)) != 0 ||
        memcmp(copies16[0].data(), copies16[1].data(), n * c * sizeof copy[0]) != 0)
      fail("BF16 output gradient differs", kind, n, c, 1.0);
  }
}

template <int kind>
static void kind_cases(unsigned seed) {
  size_t shapes[][2] = {{1, 1},   {7, 5},    {31, 33},   {33, 40}, {63, 33},
                        {65, 40}, {257, 33}, {3000, 40}, {40, 300}};
  for (auto &s : shapes) colsum_case<kind>(s[0], s[1], seed++);
}

int main(void) {
  kind_cases<QT__COLSUM_PLAIN>(1);
  kind_cases<QT__COLSUM_PRODUCT>(11);
  kind_cases<QT__COLSUM_LAYERNORM>(21);
  kind_cases<QT__COLSUM_GELU>(31);
  unsigned seed = 41;
  for (size_t chunks : {2, 9, 31, 33, 63, 64, 65, 80, 263, 1024})
    for (int outputs : {1, 2, 3}) partials_case(chunks, chunks == 263 ? 768 : 45, outputs, seed++);
  printf("%d checks, %d failed\n", checks, failures);
  return failures ? 1 : 0;
}

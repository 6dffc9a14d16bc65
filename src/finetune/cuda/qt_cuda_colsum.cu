/*
 * qt_cuda_colsum.cu - column sums in double over the rows of (n, c) arrays
 * for the gradients of per-feature parameters: a linear layer's bias, a
 * layer norm's weight and bias, a layer scale. See qt__cuda_column_sums in
 * qt_cuda_internal.h.
 *
 * The rows are split into chunks as well as the columns into tiles of 32,
 * so that a ViT's (12608, 768) gradient keeps the whole device busy: a grid
 * of column tiles alone would be 24 blocks of 8 warps, each walking all
 * 12608 rows, on a device of 132 multiprocessors. Each block sums its
 * chunk's rows of its 32 columns (its 8 rows of threads taking every 8th
 * row, then adding their 8 partial sums in order) and writes one partial sum
 * per column and output; the last block of each column tile to finish
 * (a count per tile, qt_colsum::last_of_tile) then adds the tile's partial
 * sums (qt_colsum::add_partials_block: 8 rows of threads each taking every
 * 8th chunk, then their 8 sums in order) and adds the total, rounded to
 * float, to the gradient: one launch instead of a second kernel for the
 * totals (QT_CUDA_COLSUM_ONE_PASS=0 keeps that kernel, the same sums in the
 * same order). Which block adds them changes from run to run, their order
 * does not: the split depends only on (n, c), so the result is the same
 * from run to run.
 * A single chunk (n of at most 256, or more than 512 column tiles) adds
 * its sums directly; at most 1024 blocks in all (a few per multiprocessor
 * of a large device), which bounds the partial sums to 1024 * 32 per
 * output. The kernels' bodies and the split are in qt_cuda_colsum.cuh
 * (included by qt_cuda_internal.h).
 */
#include <limits.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/cuda/qt_cuda_internal.h"

/* Grid (column tiles, chunks), blocks of (32, 8): qt_colsum::block_sums;
 * with counters (several chunks), the last block of each tile adds the
 * tile's partials too (qt_colsum::last_of_tile). */
template <int kind, typename A, typename B>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    colsum_kernel(float *__restrict__ dst0, float *__restrict__ dst1, double *__restrict__ partial,
                  unsigned *__restrict__ counters, const A *__restrict__ a, const B *__restrict__ b,
                  const float *__restrict__ mean, const float *__restrict__ rstd,
                  __nv_bfloat16 *__restrict__ copy, size_t n, size_t c, size_t rows_per_chunk) {
  __shared__ double shared0[8][33];
  __shared__ double shared1[8][33];
  __shared__ int last;
  qt_colsum::block_sums<kind, A, B>(shared0, shared1, dst0, dst1, partial, a, b, mean, rstd, copy,
                                    n, c, rows_per_chunk, blockIdx.x, blockIdx.y, gridDim.y,
                                    threadIdx.x, threadIdx.y);
  if (counters &&
      qt_colsum::last_of_tile(counters, gridDim.y, blockIdx.x, threadIdx.x, threadIdx.y, &last))
    qt_colsum::add_partials_block<true>(shared0, shared1, dst0, dst1, partial, gridDim.y, c,
                                        blockIdx.x, threadIdx.x, threadIdx.y);
}

/* Grid (column tiles), blocks of (32, 8): qt_colsum::add_partials_block. */
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    colsum_add_kernel(float *__restrict__ dst0, float *__restrict__ dst1,
                      const double *__restrict__ partial, size_t chunks, size_t c) {
  __shared__ double shared0[8][33];
  __shared__ double shared1[8][33];
  qt_colsum::add_partials_block(shared0, shared1, dst0, dst1, partial, chunks, c, blockIdx.x,
                                threadIdx.x, threadIdx.y);
}

/* The chunks' totals in the column sums' launch (QT_CUDA_COLSUM_ONE_PASS,
 * qt__cuda_set_colsum_one_pass); -1 until the environment is read. */
static int one_pass = -1;

extern "C" int qt__cuda_set_colsum_one_pass(int on) {
  return qt__cuda_set_switch("QT_CUDA_COLSUM_ONE_PASS", &one_pass, on);
}

template <int kind, typename A, typename B>
static int column_sums(float *dst0, float *dst1, const A *a, const B *b, const float *mean,
                       const float *rstd, __nv_bfloat16 *copy, size_t n, size_t c, const char *who,
                       qt_err *err) {
  size_t tiles = (c + 31) / 32, rows_per_chunk, chunks;
  qt_colsum::plan(n, c, &rows_per_chunk, &chunks);
  dim3 block(32, 8), grid((unsigned)tiles, (unsigned)chunks);
  if (chunks == 1) {
    colsum_kernel<kind, A, B><<<grid, block, 0, qt__cuda_stream()>>>(
        dst0, dst1, NULL, NULL, a, b, mean, rstd, copy, n, c, rows_per_chunk);
    return qt__cuda_check_launch(err, who, "the column sums");
  }
  double *partial = NULL;
  int rc = qt__cuda_sums_scratch_lock(2 * chunks * c, &partial, who, err);
  if (rc < 0) return rc;
  /* The chunks' totals in the same launch, else in a second kernel. */
  unsigned *counters = NULL;
  if (qt__cuda_switch_on("QT_CUDA_COLSUM_ONE_PASS", &one_pass))
    rc = qt__cuda_tile_counters(&counters, tiles, who, err);
  if (rc == 0) {
    colsum_kernel<kind, A, B><<<grid, block, 0, qt__cuda_stream()>>>(
        dst0, dst1, partial, counters, a, b, mean, rstd, copy, n, c, rows_per_chunk);
    rc = qt__cuda_check_launch(err, who, "the column sums");
  }
  if (rc == 0 && !counters)
    rc = qt__cuda_column_partials_add(dst0, dst1, partial, chunks, c, who, err);
  qt__cuda_sums_scratch_unlock();
  return rc;
}

extern "C" int qt__cuda_column_sums(int kind, float *dst0, float *dst1, const float *a,
                                    const float *b, const float *mean, const float *rstd, size_t n,
                                    size_t c, const char *who, qt_err *err) {
  if (n == 0 || c == 0 || (!dst0 && !dst1)) return 0;
  if ((c + 31) / 32 > INT_MAX)
    return qt_err_set(err, QT_EINVAL, "%s: %zu columns are too many", who, c);
  switch (kind) {
    case QT__COLSUM_PLAIN:
      return column_sums<QT__COLSUM_PLAIN, float, float>(dst0, NULL, a, NULL, NULL, NULL, NULL, n,
                                                         c, who, err);
    case QT__COLSUM_PRODUCT:
      return column_sums<QT__COLSUM_PRODUCT, float, float>(dst0, NULL, a, b, NULL, NULL, NULL, n, c,
                                                           who, err);
    case QT__COLSUM_LAYERNORM:
      return column_sums<QT__COLSUM_LAYERNORM, float, float>(dst0, dst1, a, b, mean, rstd, NULL, n,
                                                             c, who, err);
    default:
      return qt_err_set(err, QT_EINVAL, "%s: unknown column sum %d", who, kind);
  }
}

extern "C" int qt__cuda_column_partials_add(float *dst0, float *dst1, const double *partial,
                                            size_t chunks, size_t c, const char *who, qt_err *err) {
  if (chunks == 0 || c == 0 || (!dst0 && !dst1)) return 0;
  if ((c + 31) / 32 > INT_MAX)
    return qt_err_set(err, QT_EINVAL, "%s: %zu columns are too many", who, c);
  colsum_add_kernel<<<(unsigned)((c + 31) / 32), dim3(32, 8), 0, qt__cuda_stream()>>>(
      dst0, dst1, partial, chunks, c);
  return qt__cuda_check_launch(err, who, "the column sums' total");
}

extern "C" int qt__cuda_column_sums_rounding(float *dst, void *copy, const float *a, size_t n,
                                             size_t c, const char *who, qt_err *err) {
  if (n == 0 || c == 0) return 0;
  if (!dst || !copy || !a) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  if ((c + 31) / 32 > INT_MAX)
    return qt_err_set(err, QT_EINVAL, "%s: %zu columns are too many", who, c);
  return column_sums<QT__COLSUM_PLAIN, float, float>(dst, NULL, a, NULL, NULL, NULL,
                                                     (__nv_bfloat16 *)copy, n, c, who, err);
}

extern "C" int qt__cuda_column_sums_gelu_rounding(float *dst, void *copy, const void *dout,
                                                  int dout_bf16, const void *pre, int pre_bf16,
                                                  size_t n, size_t c, const char *who,
                                                  qt_err *err) {
  if (n == 0 || c == 0) return 0;
  if (!dst || !copy || !dout || !pre) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  if ((c + 31) / 32 > INT_MAX)
    return qt_err_set(err, QT_EINVAL, "%s: %zu columns are too many", who, c);
  typedef __nv_bfloat16 bf16_t;
  bf16_t *copy16 = (bf16_t *)copy;
  const int kind = QT__COLSUM_GELU;
  if (dout_bf16)
    return pre_bf16 ? column_sums<kind>(dst, NULL, (const bf16_t *)dout, (const bf16_t *)pre, NULL,
                                        NULL, copy16, n, c, who, err)
                    : column_sums<kind>(dst, NULL, (const bf16_t *)dout, (const float *)pre, NULL,
                                        NULL, copy16, n, c, who, err);
  return pre_bf16 ? column_sums<kind>(dst, NULL, (const float *)dout, (const bf16_t *)pre, NULL,
                                      NULL, copy16, n, c, who, err)
                  : column_sums<kind>(dst, NULL, (const float *)dout, (const float *)pre, NULL,
                                      NULL, copy16, n, c, who, err);
}

extern "C" int qt__cuda_column_sums_any(int kind, float *dst0, float *dst1, const void *a,
                                        int a_bf16, const float *b, const float *mean,
                                        const float *rstd, size_t n, size_t c, const char *who,
                                        qt_err *err) {
  if (!a_bf16)
    return qt__cuda_column_sums(kind, dst0, dst1, (const float *)a, b, mean, rstd, n, c, who, err);
  if (n == 0 || c == 0 || (!dst0 && !dst1)) return 0;
  if (!a) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  if ((c + 31) / 32 > INT_MAX)
    return qt_err_set(err, QT_EINVAL, "%s: %zu columns are too many", who, c);
  typedef __nv_bfloat16 bf16_t;
  const bf16_t *a16 = (const bf16_t *)a;
  switch (kind) {
    case QT__COLSUM_PLAIN:
      return column_sums<QT__COLSUM_PLAIN, bf16_t, float>(dst0, NULL, a16, NULL, NULL, NULL, NULL,
                                                          n, c, who, err);
    case QT__COLSUM_LAYERNORM:
      return column_sums<QT__COLSUM_LAYERNORM, bf16_t, float>(dst0, dst1, a16, b, mean, rstd, NULL,
                                                              n, c, who, err);
    default:
      return qt_err_set(err, QT_EINVAL, "%s: column sum %d of BF16 values is not implemented", who,
                        kind);
  }
}

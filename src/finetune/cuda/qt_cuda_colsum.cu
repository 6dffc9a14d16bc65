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
 * per column and output; a second kernel adds a column's partial sums in
 * chunk order and adds the total, rounded to float, to the gradient. The
 * split depends only on (n, c), so the result is the same from run to run.
 * A single chunk (n of at most COLSUM_ROWS, or more than
 * COLSUM_MAX_BLOCKS / 2 column tiles) adds its sums directly.
 */
#include <limits.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/cuda/qt_cuda_internal.h"

/* The most blocks a call splits rows for (a few per multiprocessor of a
 * large device), which bounds the partial sums to COLSUM_MAX_BLOCKS * 32 per
 * output, and the rows per chunk it aims at: ceil(n / COLSUM_ROWS) chunks
 * of equal size (the last shorter), as many as fit. */
#define COLSUM_MAX_BLOCKS 1024
#define COLSUM_ROWS 256

/* The term of row i, column col, for output 0 (and 1); a plain sum (and
 * GELU's) also writes the term rounded to BF16 into copy, when given. */
template <int kind>
static __device__ __forceinline__ void colsum_terms(const float *__restrict__ a,
                                                    const float *__restrict__ b,
                                                    const float *__restrict__ mean,
                                                    const float *__restrict__ rstd,
                                                    __nv_bfloat16 *__restrict__ copy, size_t i,
                                                    size_t c, size_t col, double *t0, double *t1) {
  float x = a[i * c + col];
  if (kind == QT__COLSUM_GELU) /* 0 + g, as the GELU backward writes it */
    x = __fadd_rn(0.0f, qt__gelu_grad(x, b[i * c + col]));
  if (kind == QT__COLSUM_PLAIN || kind == QT__COLSUM_GELU) {
    *t0 = x;
    if (copy) copy[i * c + col] = __float2bfloat16_rn(x);
  } else if (kind == QT__COLSUM_PRODUCT) {
    *t0 = (double)x * b[i * c + col];
  } else { /* QT__COLSUM_LAYERNORM: x is dy, b the layer norm's input */
    float xhat = __fmul_rn(b[i * c + col] - mean[i], rstd[i]);
    *t0 = (double)__fmul_rn(x, xhat);
    *t1 = x;
  }
}

/* Grid (column tiles, chunks), blocks of (32, 8). With one chunk the sums
 * go to dst0 / dst1 directly; else to partial[(o * chunks + chunk) * c +
 * col] for output o. */
template <int kind>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    colsum_kernel(float *__restrict__ dst0, float *__restrict__ dst1, double *__restrict__ partial,
                  const float *__restrict__ a, const float *__restrict__ b,
                  const float *__restrict__ mean, const float *__restrict__ rstd,
                  __nv_bfloat16 *__restrict__ copy, size_t n, size_t c, size_t rows_per_chunk) {
  __shared__ double shared0[8][33];
  __shared__ double shared1[8][33];
  size_t col = (size_t)blockIdx.x * 32 + threadIdx.x;
  size_t first = (size_t)blockIdx.y * rows_per_chunk;
  size_t end = first + rows_per_chunk < n ? first + rows_per_chunk : n;
  double sum0 = 0.0, sum1 = 0.0;
  if (col < c) {
    for (size_t i = first + threadIdx.y; i < end; i += 8) {
      double t0 = 0.0, t1 = 0.0;
      colsum_terms<kind>(a, b, mean, rstd, copy, i, c, col, &t0, &t1);
      sum0 += t0;
      sum1 += t1;
    }
  }
  shared0[threadIdx.y][threadIdx.x] = sum0;
  shared1[threadIdx.y][threadIdx.x] = sum1;
  __syncthreads();
  if (threadIdx.y != 0 || col >= c) return;
  double total0 = 0.0, total1 = 0.0;
  for (int r = 0; r < 8; r++) {
    total0 += shared0[r][threadIdx.x];
    total1 += shared1[r][threadIdx.x];
  }
  if (gridDim.y == 1) {
    if (dst0) dst0[col] += (float)total0;
    if (dst1) dst1[col] += (float)total1;
    return;
  }
  partial[(size_t)blockIdx.y * c + col] = total0;
  partial[((size_t)gridDim.y + blockIdx.y) * c + col] = total1;
}

/* dst_o[col] += the sum over chunks, in order, of output o's partials. */
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    colsum_add_kernel(float *__restrict__ dst0, float *__restrict__ dst1,
                      const double *__restrict__ partial, size_t chunks, size_t c) {
  size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t col = (size_t)blockIdx.x * blockDim.x + threadIdx.x; col < c; col += stride) {
    double total0 = 0.0, total1 = 0.0;
    for (size_t r = 0; r < chunks; r++) {
      total0 += partial[r * c + col];
      total1 += partial[(chunks + r) * c + col];
    }
    if (dst0) dst0[col] += (float)total0;
    if (dst1) dst1[col] += (float)total1;
  }
}

template <int kind>
static int column_sums(float *dst0, float *dst1, const float *a, const float *b, const float *mean,
                       const float *rstd, __nv_bfloat16 *copy, size_t n, size_t c, const char *who,
                       qt_err *err) {
  size_t tiles = (c + 31) / 32;
  size_t chunks = (n + COLSUM_ROWS - 1) / COLSUM_ROWS;
  size_t most = COLSUM_MAX_BLOCKS / tiles; /* 0 when the tiles alone fill the grid */
  if (chunks > most) chunks = most;
  if (chunks < 1) chunks = 1;
  size_t rows_per_chunk = (n + chunks - 1) / chunks;
  chunks = (n + rows_per_chunk - 1) / rows_per_chunk; /* none empty */
  dim3 block(32, 8), grid((unsigned)tiles, (unsigned)chunks);
  if (chunks == 1) {
    colsum_kernel<kind>
        <<<grid, block>>>(dst0, dst1, NULL, a, b, mean, rstd, copy, n, c, rows_per_chunk);
    return qt__cuda_check_launch(err, who, "the column sums");
  }
  double *partial = NULL;
  int rc = qt__cuda_sums_scratch_lock(2 * chunks * c, &partial, who, err);
  if (rc < 0) return rc;
  colsum_kernel<kind>
      <<<grid, block>>>(dst0, dst1, partial, a, b, mean, rstd, copy, n, c, rows_per_chunk);
  rc = qt__cuda_check_launch(err, who, "the column sums");
  if (rc == 0) rc = qt__cuda_column_partials_add(dst0, dst1, partial, chunks, c, who, err);
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
      return column_sums<QT__COLSUM_PLAIN>(dst0, NULL, a, NULL, NULL, NULL, NULL, n, c, who, err);
    case QT__COLSUM_PRODUCT:
      return column_sums<QT__COLSUM_PRODUCT>(dst0, NULL, a, b, NULL, NULL, NULL, n, c, who, err);
    case QT__COLSUM_LAYERNORM:
      return column_sums<QT__COLSUM_LAYERNORM>(dst0, dst1, a, b, mean, rstd, NULL, n, c, who, err);
    default:
      return qt_err_set(err, QT_EINVAL, "%s: unknown column sum %d", who, kind);
  }
}

extern "C" int qt__cuda_column_partials_add(float *dst0, float *dst1, const double *partial,
                                            size_t chunks, size_t c, const char *who,
                                            qt_err *err) {
  if (chunks == 0 || c == 0 || (!dst0 && !dst1)) return 0;
  colsum_add_kernel<<<qt__cuda_blocks(c), QT_CUDA_THREADS>>>(dst0, dst1, partial, chunks, c);
  return qt__cuda_check_launch(err, who, "the column sums' total");
}

extern "C" int qt__cuda_column_sums_rounding(float *dst, void *copy, const float *a, size_t n,
                                             size_t c, const char *who, qt_err *err) {
  if (n == 0 || c == 0) return 0;
  if (!dst || !copy || !a) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  if ((c + 31) / 32 > INT_MAX)
    return qt_err_set(err, QT_EINVAL, "%s: %zu columns are too many", who, c);
  return column_sums<QT__COLSUM_PLAIN>(dst, NULL, a, NULL, NULL, NULL, (__nv_bfloat16 *)copy, n, c,
                                       who, err);
}

extern "C" int qt__cuda_column_sums_gelu_rounding(float *dst, void *copy, const float *dout,
                                                  const float *pre, size_t n, size_t c,
                                                  const char *who, qt_err *err) {
  if (n == 0 || c == 0) return 0;
  if (!dst || !copy || !dout || !pre) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  if ((c + 31) / 32 > INT_MAX)
    return qt_err_set(err, QT_EINVAL, "%s: %zu columns are too many", who, c);
  return column_sums<QT__COLSUM_GELU>(dst, NULL, dout, pre, NULL, NULL, (__nv_bfloat16 *)copy, n, c,
                                      who, err);
}

/*
 * qt_cuda_layernorm.cuh - the bodies of the layer norm kernels for rows of
 * at most QT_LN_MAX_C features (qt_cuda_layernorm.cu launches them; wider
 * rows take its loop kernels). One warp per row, the row in registers:
 * lane l holds columns l + 32 k for k < VEC, a compile-time count, so that
 * the row is read from memory once and a lane's loads are all in flight
 * together (the loop kernels wait for each load in turn).
 *
 *   forward   mean and rstd in double, each lane adding its columns in
 *             turn and the warp adding the lanes' sums, as the loop kernel
 *             does: the same results to the bit. With a residual add
 *             before it (a transformer block's x + branch, then the next
 *             layer norm), the sum is written and normalized from the
 *             registers: 14 bytes of traffic per value with a BF16 output
 *             instead of the two kernels' 18.
 *   backward  dinp += rstd (g - mean(g) - xhat mean(g xhat)), g = weight
 *             dy, as the loop kernel; in the same pass over dy and the
 *             input, the column sums of dy xhat (the weight's gradient)
 *             and of dy (the bias's), which the loop kernels take in a
 *             second pass (qt__cuda_column_sums): 16 bytes of traffic per
 *             value instead of 24. A block takes a chunk of rows (see
 *             backward_plan), each warp every QT_LN_WARPS-th of them,
 *             adding its rows' terms per column in float; the block adds
 *             its warps' sums in order in double and writes them (one
 *             chunk: adds them to the gradient as a float), and the
 *             partial sums of several chunks are added in a fixed order by
 *             qt__cuda_column_partials_add. The split depends only on n,
 *             so the results are the same from run to run.
 *
 * This file holds only __device__ functions over the primitives that CUDA
 * C++ provides (threadIdx-free: each body takes its block, thread and
 * shared memory as arguments), so that a host emulation can include it
 * with stand-ins (tests/qt_cuda_emulation.h): the includer provides
 * __syncthreads and what qt_cuda_common.cuh needs.
 */
#ifndef QT_CUDA_LAYERNORM_CUH
#define QT_CUDA_LAYERNORM_CUH

#include "finetune/cuda/qt_cuda_common.cuh" /* qt__warp_sum, qt__store */

#define QT_LN_WARPS 8    /* warps per block */
#define QT_LN_MAX_C 1024 /* features per row: 32 per lane at most */
/* Rows per block of the backward, as long as there are at most
 * QT_LN_MAX_BLOCKS chunks: a ViT's 12,608 rows (batch 64) in 263 blocks,
 * two per multiprocessor of an H100; with the sums in shared memory
 * (backward_block's SHARED), in 394 blocks, three per multiprocessor. */
#define QT_LN_CHUNK_ROWS 48
#define QT_LN_SHARED_CHUNK_ROWS 32
#define QT_LN_MAX_BLOCKS 1024
/* The widest rows whose backward may keep its sums in shared memory: two
 * outputs' QT_LN_WARPS rows of them, 48 KB at 768 features. */
#define QT_LN_SHARED_MAX_C 768

namespace qt_ln {

/* The registers per lane for rows of c features (c <= QT_LN_MAX_C): 8,
 * 16, 24 or 32, the instantiations the launcher has. */
__host__ __device__ inline int vec_for(size_t c) {
  return c <= 256 ? 8 : c <= 512 ? 16 : c <= 768 ? 24 : 32;
}

/* The backward's chunks: at most QT_LN_MAX_BLOCKS of rows_per_chunk rows
 * (the last shorter), none empty; `shared`: for backward_block's SHARED. */
__host__ __device__ inline void backward_plan(size_t n, bool shared, size_t *rows_per_chunk,
                                              int *chunks) {
  size_t chunk_rows = shared ? QT_LN_SHARED_CHUNK_ROWS : QT_LN_CHUNK_ROWS;
  size_t count = (n + chunk_rows - 1) / chunk_rows;
  if (count > QT_LN_MAX_BLOCKS) count = QT_LN_MAX_BLOCKS;
  if (count < 1) count = 1;
  size_t rows = (n + count - 1) / count;
  if (rows < 1) rows = 1;
  *rows_per_chunk = rows;
  *chunks = (int)((n + rows - 1) / rows);
  if (*chunks < 1) *chunks = 1;
}

/* v[k] = src[lane + 32 k] (float or BF16), 0 at and past c. */
template <int VEC, typename S>
__device__ inline void load_row(float v[VEC], const S *src, size_t c, int lane) {
#pragma unroll
  for (int k = 0; k < VEC; k++) {
    size_t j = (size_t)lane + 32 * k;
    v[k] = j < c ? qt__load(src + j) : 0.0f;
  }
}

/* dst[lane + 32 k] = v[k] below c. The bodies store a row only after all
 * of its loads: the compiler keeps a load after a store it cannot prove
 * apart from it (and each guarded value is a basic block of its own), so
 * a loop that loads and stores value by value waits for each load. Until
 * the backward added to dinp that way, Nsight Compute had it at 100 us a
 * call for ViT-B/16's 12,608 rows at batch 64 (572ad8e), about 1.5 TB/s:
 * 24 round trips to memory per row and warp, one after another. */
template <int VEC, typename T>
__device__ inline void store_row(T *dst, const float v[VEC], size_t c, int lane) {
#pragma unroll
  for (int k = 0; k < VEC; k++) {
    size_t j = (size_t)lane + 32 * k;
    if (j < c) qt__store(dst + j, v[k]);
  }
}

/* One row by one warp: y (c, float or BF16), *mean and *rstd from the
 * row in v (this lane's columns; 0 at and past c), which it overwrites. */
template <int VEC, typename T>
__device__ inline void normalize_row(T *y, float *mean, float *rstd, float v[VEC],
                                     const float *weight, const float *bias, size_t c, float eps,
                                     int lane) {
  double sum = 0.0;
#pragma unroll
  for (int k = 0; k < VEC; k++) {
    if ((size_t)lane + 32 * k < c) sum += v[k];
  }
  double m = qt__warp_sum(sum) / (double)c;
  double sq = 0.0;
#pragma unroll
  for (int k = 0; k < VEC; k++) {
    if ((size_t)lane + 32 * k < c) {
      double d = v[k] - m;
      sq += d * d;
    }
  }
  sq = qt__warp_sum(sq);
  double r = 1.0 / sqrt(sq / (double)c + (double)eps);
  float mf = (float)m, rf = (float)r;
#pragma unroll
  for (int k = 0; k < VEC; k++) {
    size_t j = (size_t)lane + 32 * k;
    if (j >= c) continue;
    float normalized = __fmul_rn(v[k] - mf, rf);
    v[k] = __fadd_rn(__fmul_rn(normalized, weight ? weight[j] : 1.0f), bias ? bias[j] : 0.0f);
  }
  store_row<VEC>(y, v, c, lane);
  if (lane == 0) {
    *mean = mf;
    *rstd = rf;
  }
}

/* The layer norm of row x. */
template <int VEC, typename T>
__device__ inline void forward_row(T *y, float *mean, float *rstd, const float *x,
                                   const float *weight, const float *bias, size_t c, float eps,
                                   int lane) {
  float v[VEC];
  load_row<VEC>(v, x, c, lane);
  normalize_row<VEC>(y, mean, rstd, v, weight, bias, c, eps, lane);
}

/* out = res + gamma branch (the residual op's floats: gamma NULL is 1; out
 * may be res; branch (B) float or BF16), then the layer norm of out: the
 * residual op and the next layer norm of a transformer block in one pass,
 * as the two kernels would give them. */
template <int VEC, typename T, typename B>
__device__ inline void residual_forward_row(float *out, T *y, float *mean, float *rstd,
                                            const float *res, const B *branch, const float *gamma,
                                            const float *weight, const float *bias, size_t c,
                                            float eps, int lane) {
  float v[VEC], b[VEC];
  load_row<VEC>(v, res, c, lane);
  load_row<VEC>(b, branch, c, lane);
#pragma unroll
  for (int k = 0; k < VEC; k++) {
    size_t j = (size_t)lane + 32 * k;
    if (j < c) v[k] = __fadd_rn(v[k], gamma ? __fmul_rn(gamma[j], b[k]) : b[k]);
  }
  store_row<VEC>(out, v, c, lane);
  normalize_row<VEC>(y, mean, rstd, v, weight, bias, c, eps, lane);
}

/* The block's sums of one output, warp w's of column col at red[w * c +
 * col], added over the warps in order in double: added to dst as a float
 * with one chunk, else written to partial[(output * chunks + block) * c +
 * col]. */
__device__ inline void block_totals(const float *red, float *dst, double *partial, int output,
                                    int chunks, int block, size_t c, int tid, int threads) {
  for (size_t col = tid; col < c; col += threads) {
    double total = 0.0;
    for (int w = 0; w < QT_LN_WARPS; w++) total += red[w * c + col];
    if (chunks == 1)
      dst[col] += (float)total;
    else
      partial[((size_t)output * chunks + block) * c + col] = total;
  }
}

/* block_totals of sums held in registers (sums[k]: this lane's, of column
 * lane + 32 k over its warp's rows), through red (QT_LN_WARPS * c floats
 * of shared memory). Every thread of the block calls it. */
template <int VEC>
__device__ inline void block_sums(float *red, const float sums[VEC], float *dst, double *partial,
                                  int output, int chunks, int block, size_t c, int tid,
                                  int threads) {
  int warp = tid / 32, lane = tid % 32;
#pragma unroll
  for (int k = 0; k < VEC; k++) {
    size_t j = (size_t)lane + 32 * k;
    if (j < c) red[warp * c + j] = sums[k];
  }
  __syncthreads();
  block_totals(red, dst, partial, output, chunks, block, c, tid, threads);
  __syncthreads();
}

/* Chunk `block` of the backward (see backward_plan) by a block of
 * QT_LN_WARPS warps: dinp (when given) of its rows, and the sums of dy
 * xhat (output 0, for dweight) and of dy (output 1, dbias), those whose
 * gradient is given. dy (D) is float, or BF16 as the linear layer after
 * the norm wrote it.
 *
 * Each lane adds its columns' terms over its warp's rows in float, in row
 * order: in registers (red: QT_LN_WARPS * c floats of shared memory, for
 * the totals), or with SHARED (c at most QT_LN_SHARED_MAX_C) in the
 * warp's rows of red (2 * QT_LN_WARPS * c floats: output 0's rows, then
 * output 1's), the same additions in the same order. SHARED frees the 2 *
 * VEC registers of the sums: three blocks per multiprocessor instead of
 * two, and half as many rows' loads again in flight. */
template <int VEC, bool SHARED, typename D>
__device__ inline void backward_block(float *red, float *dinp, float *dweight, float *dbias,
                                      double *partial, const D *dout, const float *inp,
                                      const float *weight, const float *mean, const float *rstd,
                                      size_t n, size_t c, size_t rows_per_chunk, int chunks,
                                      int block, int tid, int threads) {
  int warp = tid / 32, lane = tid % 32;
  /* The weight is read at each row (from the cache): in registers too, it
   * would leave room for one block per multiprocessor instead of two. */
  float sum_w[SHARED ? 1 : VEC], sum_b[SHARED ? 1 : VEC];
  float *shared_w = red + (size_t)warp * c + lane;
  float *shared_b = red + (size_t)(QT_LN_WARPS + warp) * c + lane;
#pragma unroll
  for (int k = 0; k < VEC; k++) {
    if (SHARED) {
      if ((size_t)lane + 32 * k < c) shared_w[32 * k] = shared_b[32 * k] = 0.0f;
    } else {
      sum_w[k] = 0.0f;
      sum_b[k] = 0.0f;
    }
  }
  size_t first = (size_t)block * rows_per_chunk;
  size_t end = first + rows_per_chunk < n ? first + rows_per_chunk : n;
  for (size_t row = first + warp; row < end; row += QT_LN_WARPS) {
    float x[VEC], dy[VEC];
    load_row<VEC>(x, inp + row * c, c, lane);
    load_row<VEC>(dy, dout + row * c, c, lane);
    float m = mean[row], r = rstd[row];
    double g_sum = 0.0, g_xhat_sum = 0.0;
#pragma unroll
    for (int k = 0; k < VEC; k++) {
      if ((size_t)lane + 32 * k >= c) continue;
      x[k] = __fmul_rn(x[k] - m, r); /* xhat from here on */
      if (SHARED) {
        shared_w[32 * k] += __fmul_rn(dy[k], x[k]);
        shared_b[32 * k] += dy[k];
      } else {
        sum_w[k] += __fmul_rn(dy[k], x[k]);
        sum_b[k] += dy[k];
      }
      dy[k] = __fmul_rn(weight ? weight[lane + 32 * k] : 1.0f, dy[k]); /* g from here on */
      g_sum += dy[k];
      g_xhat_sum += (double)dy[k] * x[k];
    }
    float g_mean = (float)(qt__warp_sum(g_sum) / (double)c);
    float g_xhat_mean = (float)(qt__warp_sum(g_xhat_sum) / (double)c);
    /* dinp += the terms: the row's loads first (into x), then its stores. */
    if (!dinp) continue;
#pragma unroll
    for (int k = 0; k < VEC; k++)
      dy[k] = __fmul_rn(dy[k] - g_mean - __fmul_rn(x[k], g_xhat_mean), r);
    load_row<VEC>(x, dinp + row * c, c, lane);
#pragma unroll
    for (int k = 0; k < VEC; k++) x[k] += dy[k];
    store_row<VEC>(dinp + row * c, x, c, lane);
  }
  if (SHARED) {
    __syncthreads();
    if (dweight) block_totals(red, dweight, partial, 0, chunks, block, c, tid, threads);
    if (dbias)
      block_totals(red + QT_LN_WARPS * c, dbias, partial, 1, chunks, block, c, tid, threads);
    return;
  }
  if (dweight) block_sums<VEC>(red, sum_w, dweight, partial, 0, chunks, block, c, tid, threads);
  if (dbias) block_sums<VEC>(red, sum_b, dbias, partial, 1, chunks, block, c, tid, threads);
}

} /* namespace qt_ln */

#endif /* QT_CUDA_LAYERNORM_CUH */

/*
 * qt_cuda_colsum.cuh - the bodies of the column-sum kernels of
 * qt_cuda_colsum.cu (see qt__cuda_column_sums in qt_cuda_internal.h, which
 * includes this file): a block of (32, 8) threads sums its 32 columns over
 * a chunk of rows in double, thread (x, y) taking the chunk's rows y, y +
 * 8, ..., the block adding its 8 rows of partial sums in order. A thread
 * has QT_COLSUM_UNROLL rows' loads in flight before it adds their terms, in
 * row order as one at a time would: with one load at a time, the 64 warps
 * of a multiprocessor keep too few bytes in flight to fill the memory's
 * bandwidth, and these passes go over every linear layer's output
 * gradient.
 *
 * This file holds only __device__ functions over the primitives that CUDA
 * C++ provides (threadIdx-free: each body takes its block and thread as
 * arguments), so that a host emulation can include it with stand-ins
 * (tests/qt_cuda_emulation.h): the includer provides __syncthreads,
 * __threadfence, atomicAdd, __ldcg and what qt_cuda_common.cuh needs.
 */
#ifndef QT_CUDA_COLSUM_CUH
#define QT_CUDA_COLSUM_CUH

#include "finetune/cuda/qt_cuda_common.cuh" /* qt__gelu_grad */

/* The kinds of sums (qt__cuda_column_sums and its variants). */
#define QT__COLSUM_PLAIN 0     /* a, written rounded to BF16 into copy when given */
#define QT__COLSUM_PRODUCT 1   /* (double) a * b */
#define QT__COLSUM_LAYERNORM 2 /* (double) (a * xhat) and a, xhat from b, mean, rstd */
#define QT__COLSUM_GELU 3      /* the gradient GELU passes back from a at its input b, as PLAIN */
/* b is float, or BF16 for GELU's input where its producer wrote it so
 * (the B parameter of load and block_sums); a is float, or BF16 for a
 * plain sum of a gradient that its producer wrote in BF16 (A). */

/* Rows per thread in flight. A turn's loads wait for the stores of the
 * turn before (the BF16 copies, which the compiler cannot tell apart from
 * the inputs), so each turn is a round trip to memory: with 4, Nsight
 * Compute had the plain sums of ViT-B's (12608, 768) gradients at 1.7
 * TB/s and GELU's, which load twice the bytes a row, at 2.3 TB/s
 * (572ad8e). */
#define QT_COLSUM_UNROLL 8

namespace qt_colsum {

/* What one row's term of one column reads. */
struct values {
  float a, b, mean, rstd;
};

template <int kind, typename A, typename B>
__device__ inline values load(const A *a, const B *b, const float *mean, const float *rstd,
                              size_t i, size_t c, size_t col) {
  values v;
  v.a = qt__load(a + i * c + col);
  v.b = kind != QT__COLSUM_PLAIN ? qt__load(b + i * c + col) : 0.0f;
  v.mean = kind == QT__COLSUM_LAYERNORM ? mean[i] : 0.0f;
  v.rstd = kind == QT__COLSUM_LAYERNORM ? rstd[i] : 0.0f;
  return v;
}

/* The terms for output 0 (and 1) of the values at element `at`; a plain
 * sum (and GELU's) also writes its term rounded to BF16 into copy, when
 * given. */
template <int kind>
__device__ inline void terms(const values &v, __nv_bfloat16 *copy, size_t at, double *t0,
                             double *t1) {
  float x = v.a;
  if (kind == QT__COLSUM_GELU) /* 0 + g, as the GELU backward writes it */
    x = __fadd_rn(0.0f, qt__gelu_grad(x, v.b));
  if (kind == QT__COLSUM_PLAIN || kind == QT__COLSUM_GELU) {
    *t0 = x;
    if (copy) copy[at] = __float2bfloat16_rn(x);
  } else if (kind == QT__COLSUM_PRODUCT) {
    *t0 = (double)x * v.b;
  } else { /* QT__COLSUM_LAYERNORM: a is dy, b the layer norm's input */
    float xhat = __fmul_rn(v.b - v.mean, v.rstd);
    *t0 = (double)__fmul_rn(x, xhat);
    *t1 = x;
  }
}

/* The totals of a block of (32, 8) threads' sums of column tx (sum0,
 * sum1 of thread (tx, ty)), its 8 rows added in order through shared0,
 * shared1 ((8, 33) doubles). Every thread of the block calls it; true in
 * row 0's threads whose column is in range (`in`), which then have them. */
__device__ inline bool block_totals(double (*shared0)[33], double (*shared1)[33], double sum0,
                                    double sum1, int tx, int ty, bool in, double *total0,
                                    double *total1) {
  shared0[ty][tx] = sum0;
  shared1[ty][tx] = sum1;
  __syncthreads();
  if (ty != 0 || !in) return false;
  *total0 = *total1 = 0.0;
  for (int r = 0; r < 8; r++) {
    *total0 += shared0[r][tx];
    *total1 += shared1[r][tx];
  }
  return true;
}

/* Block (tile, chunk) of `chunks`, thread (tx, ty): the sums of columns
 * 32 tile .. over rows [chunk rows_per_chunk, ...) of n. With one chunk
 * they go to dst0 / dst1 (added, as floats) directly; else to
 * partial[(o * chunks + chunk) * c + col] for output o. shared0, shared1:
 * (8, 33) doubles of the block's shared memory. */
template <int kind, typename A, typename B>
__device__ inline void block_sums(double (*shared0)[33], double (*shared1)[33], float *dst0,
                                  float *dst1, double *partial, const A *a, const B *b,
                                  const float *mean, const float *rstd, __nv_bfloat16 *copy,
                                  size_t n, size_t c, size_t rows_per_chunk, int tile, int chunk,
                                  int chunks, int tx, int ty) {
  size_t col = (size_t)tile * 32 + tx;
  size_t first = (size_t)chunk * rows_per_chunk;
  size_t end = first + rows_per_chunk < n ? first + rows_per_chunk : n;
  double sum0 = 0.0, sum1 = 0.0;
  if (col < c) {
    size_t i = first + ty;
    for (; i + 8 * (QT_COLSUM_UNROLL - 1) < end; i += 8 * QT_COLSUM_UNROLL) {
      values v[QT_COLSUM_UNROLL];
#pragma unroll
      for (int u = 0; u < QT_COLSUM_UNROLL; u++)
        v[u] = load<kind, A, B>(a, b, mean, rstd, i + 8 * u, c, col);
#pragma unroll
      for (int u = 0; u < QT_COLSUM_UNROLL; u++) {
        double t0 = 0.0, t1 = 0.0;
        terms<kind>(v[u], copy, (i + 8 * u) * c + col, &t0, &t1);
        sum0 += t0;
        sum1 += t1;
      }
    }
    for (; i < end; i += 8) {
      double t0 = 0.0, t1 = 0.0;
      terms<kind>(load<kind, A, B>(a, b, mean, rstd, i, c, col), copy, i * c + col, &t0, &t1);
      sum0 += t0;
      sum1 += t1;
    }
  }
  double total0, total1;
  if (!block_totals(shared0, shared1, sum0, sum1, tx, ty, col < c, &total0, &total1)) return;
  if (chunks == 1) {
    if (dst0) dst0[col] += (float)total0;
    if (dst1) dst1[col] += (float)total1;
    return;
  }
  partial[(size_t)chunk * c + col] = total0;
  partial[((size_t)chunks + chunk) * c + col] = total1;
}

/* A partial sum, through L2 (__ldcg) where other blocks of the same
 * kernel wrote it (from_l2): this multiprocessor's L1 is not coherent
 * with their stores. */
template <bool from_l2>
__device__ inline double partial_at(const double *p) {
  if (from_l2) return __ldcg(p);
  return *p;
}

/* Block `tile` of (32, 8) threads, thread (tx, ty): dst_o[col] += the
 * sum of output o's partials over the chunks, for the tile's 32 columns (a
 * NULL dst skipped, its partials not read). Thread (tx, ty) adds chunks ty,
 * ty + 8, ... in order, QT_COLSUM_UNROLL chunks' loads in flight, and the
 * block adds its 8 rows of sums in order: a fixed order, that depends only
 * on (chunks, c). With one thread per column walking all the chunks in
 * turn, the layer norm row backward (263 chunks at ViT-B's batch 64)
 * measured slower than the loop kernels (3.4 against 3.1 ms a step at
 * ae479c0); this way the totals take about 5 us a call (572ad8e).
 * shared0, shared1: (8, 33) doubles of shared memory. from_l2: the
 * partials were written by other blocks of the same launch
 * (last_of_tile). */
template <bool from_l2 = false>
__device__ inline void add_partials_block(double (*shared0)[33], double (*shared1)[33], float *dst0,
                                          float *dst1, const double *partial, size_t chunks,
                                          size_t c, int tile, int tx, int ty) {
  size_t col = (size_t)tile * 32 + tx;
  const double *p0 = dst0 ? partial + col : NULL, *p1 = dst1 ? partial + chunks * c + col : NULL;
  double sum0 = 0.0, sum1 = 0.0;
  if (col < c) {
    size_t r = ty;
    for (; r + 8 * (QT_COLSUM_UNROLL - 1) < chunks; r += 8 * QT_COLSUM_UNROLL) {
      double v0[QT_COLSUM_UNROLL], v1[QT_COLSUM_UNROLL];
#pragma unroll
      for (int u = 0; u < QT_COLSUM_UNROLL; u++) {
        v0[u] = p0 ? partial_at<from_l2>(p0 + (r + 8 * u) * c) : 0.0;
        v1[u] = p1 ? partial_at<from_l2>(p1 + (r + 8 * u) * c) : 0.0;
      }
#pragma unroll
      for (int u = 0; u < QT_COLSUM_UNROLL; u++) {
        sum0 += v0[u];
        sum1 += v1[u];
      }
    }
    for (; r < chunks; r += 8) {
      if (p0) sum0 += partial_at<from_l2>(p0 + r * c);
      if (p1) sum1 += partial_at<from_l2>(p1 + r * c);
    }
  }
  double total0, total1;
  if (!block_totals(shared0, shared1, sum0, sum1, tx, ty, col < c, &total0, &total1)) return;
  if (dst0) dst0[col] += (float)total0;
  if (dst1) dst1[col] += (float)total1;
}

/* Whether this block, which has written its partial sums, is the last of
 * the `chunks` blocks of its column tile to do so: thread (0, 0) counts
 * the block in counters[tile], which the last one sets back to 0 for the
 * next call on the stream. That block then adds the tile's partials
 * (add_partials_block<true>: the same sums in the same order as the
 * second kernel, so the same bits) in the same launch. Every thread of the
 * block calls it; *last is an int of the block's shared memory. */
__device__ inline bool last_of_tile(unsigned *counters, size_t chunks, int tile, int tx, int ty,
                                    int *last) {
  __threadfence(); /* the partials this thread wrote, before the count */
  __syncthreads();
  if (tx == 0 && ty == 0) {
    *last = atomicAdd(&counters[tile], 1u) == (unsigned)(chunks - 1);
    if (*last) counters[tile] = 0;
  }
  __syncthreads();
  return *last != 0;
}

/* The split of n rows of c columns: chunks of rows_per_chunk rows (the
 * last shorter, none empty), ceil(n / 256) of them as long as the grid
 * of column tiles times chunks stays within 1024 blocks. The order of the
 * additions depends only on (n, c). */
__host__ __device__ inline void plan(size_t n, size_t c, size_t *rows_per_chunk, size_t *chunks) {
  size_t tiles = (c + 31) / 32;
  size_t count = (n + 255) / 256;
  size_t most = 1024 / tiles; /* 0 when the tiles alone fill the grid */
  if (count > most) count = most;
  if (count < 1) count = 1;
  *rows_per_chunk = (n + count - 1) / count;
  *chunks = (n + *rows_per_chunk - 1) / *rows_per_chunk;
}

} /* namespace qt_colsum */

#endif /* QT_CUDA_COLSUM_CUH */

/*
 * qt_cuda_attention_fused.cuh - the bodies of the fused attention kernels
 * (qt_cuda_attention_fused.cu launches them): multi-head self-attention for
 * heads of 64 features and at most 256 tokens, with BF16 tensor-core
 * products (WMMA 16x16x16, FP32 accumulators) and the score matrices kept
 * in shared memory, never in device memory.
 *
 * One block per (image, head). Its warps take tiles of 16 rows in turn;
 * every row of scores is whole in shared memory, so the softmax is exact
 * (no running maximum, unlike FlashAttention's tiles over the keys). The
 * forward keeps each row's log-sum-exp; the backward recomputes the
 * probabilities from it:
 *   forward   S = scale Q K^T, P = softmax(S) (BF16), O = P V,
 *             lse = log sum exp S
 *   backward  (kernel dq, per query tile) P again, dP = dO V^T,
 *             D = rowsum(P * dP), dS = P (dP - D) (BF16), dQ = scale dS K
 *             (kernel dkv, per key tile) P^T, dV = P^T dO,
 *             dP^T = V dO^T, dS^T, dK = scale dS^T Q
 * Operands are rounded to BF16 (to nearest even) as they are staged into
 * shared memory, like the operands of QT_MATMUL_BF16's products.
 *
 * This file holds only __device__ functions over the primitives that
 * CUDA C++ provides (threadIdx-free: each body takes its block, thread and
 * shared memory as arguments), so that a host emulation can include it with
 * stand-ins for WMMA, the warp shuffles and the barriers. The includer
 * provides cuda_bf16.h, mma.h and qt__warp_max / qt__warp_sum.
 */
#ifndef QT_CUDA_ATTENTION_FUSED_CUH
#define QT_CUDA_ATTENTION_FUSED_CUH

#define QT_FA_HEAD 64 /* features per head */
/* Row stride, in values, of the BF16 arrays of heads in shared memory:
 * 144 bytes, so that the eight rows of 16 bytes that one tensor-core load
 * reads fall on different banks (rows of 128 bytes would all start on the
 * same one). */
#define QT_FA_LD (QT_FA_HEAD + 8)
#define QT_FA_MAX_TOKENS 256 /* tokens per image */
#define QT_FA_MAX_WARPS 8    /* warps per block */
#define QT_FA_PER_LANE (QT_FA_MAX_TOKENS / 32)

namespace qt_fa {

typedef __nv_bfloat16 bf16;

/* One call's shape. qkv rows are 3 c floats: [q | k | v], head h at
 * h * 64 within each; out, dout rows are c floats. */
struct shape {
  int batch, tokens, heads;
  int padded; /* tokens rounded up to a multiple of 16 */
  size_t c;
  float scale; /* 1 / sqrt(64) */
};

/* Shared memory, in bytes; every region starts on a 128-byte boundary.
 * Each kernel holds two (padded, 64) BF16 arrays for the whole block (the
 * forward and dq: K and V; dkv: Q and dO, plus lse and D per query), then
 * per warp: one or two (16, 64) BF16 tiles of its own rows, a (16, padded)
 * FP32 block of scores (whose rows the BF16 probabilities or dS later
 * overwrite from the left) and a 16x16 FP32 staging tile. Rows of heads
 * are QT_FA_LD values apart, rows of scores score_stride floats. */
enum kernel { FORWARD, BACKWARD_DQ, BACKWARD_DKV };

/* padded + 4 floats: rows then lie 16 or 80 bytes (mod 128) apart, so the
 * eight rows of 16 bytes that one tensor-core load of BF16 probabilities
 * reads fall on different banks (padded + 8 would pair them up). */
__host__ __device__ inline int score_stride(int padded) {
  return padded + 4;
}

__host__ __device__ inline size_t shared_block_bytes(kernel k, int padded) {
  size_t bytes = (size_t)2 * padded * QT_FA_LD * sizeof(bf16);
  return k == BACKWARD_DKV ? bytes + (size_t)2 * padded * sizeof(float) : bytes;
}
__host__ __device__ inline size_t tile_bytes(void) {
  return 16 * QT_FA_LD * sizeof(bf16);
}
__host__ __device__ inline size_t warp_bytes(kernel k, int padded) {
  size_t tiles = k == FORWARD ? 1 : 2;
  size_t bytes = tiles * tile_bytes() + (size_t)16 * score_stride(padded) * sizeof(float) +
                 256 * sizeof(float);
  return k == BACKWARD_DQ ? bytes + 128 : bytes; /* dq: D of the warp's 16 rows */
}
__host__ __device__ inline size_t shared_bytes(kernel k, int padded, int warps) {
  return shared_block_bytes(k, padded) + (size_t)warps * warp_bytes(k, padded);
}

/* Warps per block for kernel k: one per tile of 16 rows, up to
 * QT_FA_MAX_WARPS, fewer when their shared memory would pass `limit` bytes
 * (the device's opt-in limit per block); 0 when even one does not fit. */
__host__ __device__ inline int warps_within(kernel k, int tokens, size_t limit) {
  int padded = (tokens + 15) / 16 * 16, warps = (tokens + 15) / 16;
  if (warps > QT_FA_MAX_WARPS) warps = QT_FA_MAX_WARPS;
  while (warps > 0 && shared_bytes(k, padded, warps) > limit) warps--;
  return warps;
}

/* BF16 WMMA exists from sm_80 on: a device pass for an older target
 * compiles none of the bodies below (the launcher traps instead). */
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800

namespace wmma = nvcuda::wmma;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> frag_a;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> frag_b;
/* B given by its transpose: element (k, n) at p[n * ldm + k]. */
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> frag_bt;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> frag_c;

/* The row stride, in BF16 values, of BF16 rows written over the FP32 rows
 * of a score block: twice its score_stride. */
__host__ __device__ inline int bf16_stride(int padded) {
  return (int)(sizeof(float) / sizeof(bf16)) * score_stride(padded);
}

/* Rows [row0, row0 + rows) of one head's 64 features (row r at src + r *
 * ld) into dst (rows, 64; row stride QT_FA_LD) as BF16; rows at or past
 * `tokens` are zero. Thread t of `count` threads. */
__device__ inline void stage(bf16 *dst, const float *src, size_t ld, int row0, int rows, int tokens,
                             int t, int count) {
  for (int i = t; i < rows * QT_FA_HEAD; i += count) {
    int r = i / QT_FA_HEAD, f = i % QT_FA_HEAD, row = row0 + r;
    dst[r * QT_FA_LD + f] = __float2bfloat16_rn(row < tokens ? src[(size_t)row * ld + f] : 0.0f);
  }
}

/* A (16, 64) tile of BF16 rows of heads as the A operand: four fragments,
 * loaded once for all the tiles of keys (or queries) it meets. */
struct head_rows {
  frag_a part[QT_FA_HEAD / 16];
};

__device__ inline void load_rows(head_rows &a, const bf16 *rows) {
  for (int k = 0; k < QT_FA_HEAD / 16; k++)
    wmma::load_matrix_sync(a.part[k], rows + 16 * k, QT_FA_LD);
}

/* acc (16, 16) = a (16, 64) . b (16, 64)^T, b BF16 rows of heads. */
__device__ inline void tile_abt(frag_c &acc, const head_rows &a, const bf16 *b) {
  wmma::fill_fragment(acc, 0.0f);
  for (int k = 0; k < QT_FA_HEAD / 16; k++) {
    frag_bt fb;
    wmma::load_matrix_sync(fb, b + 16 * k, QT_FA_LD);
    wmma::mma_sync(acc, a.part[k], fb, acc);
  }
}

/* s (16, padded) FP32 = a (16, 64) . b (padded, 64)^T. */
__device__ inline void scores(float *s, const bf16 *a, const bf16 *b, int padded) {
  head_rows rows;
  load_rows(rows, a);
  for (int j = 0; j < padded; j += 16) {
    frag_c acc;
    tile_abt(acc, rows, b + (size_t)j * QT_FA_LD);
    wmma::store_matrix_sync(s + j, acc, score_stride(padded), wmma::mem_row_major);
  }
}

/* acc[t] = columns 16 t.. of p (16, padded) . v (padded, 64): p BF16 over
 * the rows of a score block, v BF16 rows of heads. */
__device__ inline void times_head(frag_c acc[4], const bf16 *p, int padded, const bf16 *v) {
  for (int t = 0; t < 4; t++) wmma::fill_fragment(acc[t], 0.0f);
  for (int k = 0; k < padded; k += 16) {
    frag_a fa;
    wmma::load_matrix_sync(fa, p + k, bf16_stride(padded));
    for (int t = 0; t < 4; t++) {
      frag_b fb;
      wmma::load_matrix_sync(fb, v + (size_t)k * QT_FA_LD + 16 * t, QT_FA_LD);
      wmma::mma_sync(acc[t], fa, fb, acc[t]);
    }
  }
}

/* One value of a result: FP32 written when `set`, added otherwise; BF16
 * (the forward's output for a linear layer that reads BF16) written. */
__device__ inline void put(float *d, float v, int set) {
  *d = set ? v : *d + v;
}
__device__ inline void put(bf16 *d, float v, int) {
  *d = __float2bfloat16_rn(v);
}

/* Rows row0.. (those before `tokens`) of a head's 64 columns at dst (row
 * stride ld) receive scale * acc, as put() stores it. */
template <typename T>
__device__ inline void put_rows(T *dst, size_t ld, int row0, int tokens, frag_c acc[4], float scale,
                                int set, float *staging, int lane) {
  for (int t = 0; t < 4; t++) {
    wmma::store_matrix_sync(staging, acc[t], 16, wmma::mem_row_major);
    __syncwarp();
    for (int e = lane; e < 256; e += 32) {
      int row = row0 + e / 16;
      if (row >= tokens) continue;
      put(dst + (size_t)row * ld + 16 * t + e % 16, scale * staging[e], set);
    }
    __syncwarp();
  }
}

/* One of the 16 rows of a score block, kept in registers: lane
 * holds columns lane, lane + 32, ... */
struct row_values {
  float v[QT_FA_PER_LANE];
};

/* Overwrites row r of s from the left with its values as BF16 (columns
 * past `padded` are not stored). The caller's lanes have read the row. */
__device__ inline void store_bf16_row(float *s, int padded, int r, const row_values &x, int lane) {
  __syncwarp();
  bf16 *p = (bf16 *)s + (size_t)r * bf16_stride(padded);
#pragma unroll
  for (int i = 0; i < QT_FA_PER_LANE; i++) {
    int j = lane + 32 * i;
    if (j < padded) p[j] = __float2bfloat16_rn(x.v[i]);
  }
}

/* The forward's softmax of the warp's 16 rows of scores, over the first
 * `tokens` columns: P (BF16, 0 in the padding) over the rows of s, and
 * the log-sum-exp of the scaled scores of rows before `tokens` in
 * lse[row0 + r]. Exponentials in float, their sum in double (as the
 * unfused kernels). */
__device__ inline void softmax_rows(float *s, const shape &sh, int row0, float *lse, int lane) {
  for (int r = 0; r < 16; r++) {
    const float *row = s + (size_t)r * score_stride(sh.padded);
    row_values x;
    float max = -INFINITY;
#pragma unroll
    for (int i = 0; i < QT_FA_PER_LANE; i++) {
      int j = lane + 32 * i;
      x.v[i] = j < sh.tokens ? sh.scale * row[j] : -INFINITY;
      max = fmaxf(max, x.v[i]);
    }
    max = qt__warp_max(max);
    double sum = 0.0;
#pragma unroll
    for (int i = 0; i < QT_FA_PER_LANE; i++) {
      x.v[i] = lane + 32 * i < sh.tokens ? expf(x.v[i] - max) : 0.0f;
      sum += x.v[i];
    }
    sum = qt__warp_sum(sum);
    float inv = (float)(1.0 / sum);
#pragma unroll
    for (int i = 0; i < QT_FA_PER_LANE; i++) x.v[i] *= inv;
    store_bf16_row(s, sh.padded, r, x, lane);
    if (lane == 0 && row0 + r < sh.tokens) lse[row0 + r] = max + (float)log(sum);
  }
  __syncwarp();
}

/* P = exp(scale S - lse) in place over the warp's 16 rows of scores: the
 * query of row r is row0 + r, its lse lse[row0 + r] (rows past `tokens`
 * use 0: they are never written out). Columns past `tokens` get 0. */
__device__ inline void probabilities(float *s, const shape &sh, int row0, const float *lse,
                                     int lane) {
  for (int r = 0; r < 16; r++) {
    float *row = s + (size_t)r * score_stride(sh.padded);
    float l = row0 + r < sh.tokens ? lse[row0 + r] : 0.0f;
    for (int j = lane; j < sh.padded; j += 32) {
      row[j] = j < sh.tokens ? expf(sh.scale * row[j] - l) : 0.0f;
    }
  }
  __syncwarp();
}

/* The same for scores transposed (a row per key, a column per query):
 * column j's lse is lse[j]. */
__device__ inline void probabilities_t(float *s, const shape &sh, const float *lse, int lane) {
  for (int r = 0; r < 16; r++) {
    float *row = s + (size_t)r * score_stride(sh.padded);
    for (int j = lane; j < sh.padded; j += 32) {
      row[j] = j < sh.tokens ? expf(sh.scale * row[j] - lse[j]) : 0.0f;
    }
  }
  __syncwarp();
}

/* The lane's eight elements of a 16x16 staging tile: element e = lane +
 * 32 i is row e / 16 = lane / 16 + 2 i, column e % 16 = lane % 16. */
__device__ inline int tile_row(int lane, int i) {
  return lane / 16 + 2 * i;
}

/* dS = P (dP - D) over the warp's 16 rows: s holds P (FP32) and becomes
 * dS (BF16, from the left), tile by tile from the left, so a tile's BF16
 * values only overwrite P values already used. dP's tile (16, 16) is
 * a . b_rows^T with b_rows = b + j * 64 (the dq kernel: dO V^T; dkv: V
 * dO^T); D of row r is d_row[r] (d_col == NULL) or of column j d_col[j]. */
__device__ inline void gradient_scores(float *s, const bf16 *a, const bf16 *b, const float *d_row,
                                       const float *d_col, int padded, float *staging, int lane) {
  int col = lane % 16, stride = score_stride(padded);
  head_rows rows;
  load_rows(rows, a);
  for (int j = 0; j < padded; j += 16) {
    frag_c acc;
    tile_abt(acc, rows, b + (size_t)j * QT_FA_LD);
    wmma::store_matrix_sync(staging, acc, 16, wmma::mem_row_major);
    __syncwarp();
    float ds[8];
#pragma unroll
    for (int i = 0; i < 8; i++) {
      int r = tile_row(lane, i);
      float d = d_col ? d_col[j + col] : d_row[r];
      ds[i] = s[(size_t)r * stride + j + col] * (staging[lane + 32 * i] - d);
    }
    __syncwarp();
    bf16 *p = (bf16 *)s;
#pragma unroll
    for (int i = 0; i < 8; i++) {
      p[(size_t)tile_row(lane, i) * bf16_stride(padded) + j + col] = __float2bfloat16_rn(ds[i]);
    }
    __syncwarp();
  }
}

/* ------------------------------------------------------------------------- */
/* The three kernels' bodies: block = image * heads + head                    */
/* ------------------------------------------------------------------------- */

/* out (batch, tokens, c) = the heads' P V, in FP32 or BF16 (T); lse
 * (batch, heads, tokens). */
template <typename T>
__device__ inline void forward_block(unsigned char *smem, T *out, float *lse, const float *qkv,
                                     const shape sh, int block, int tid, int threads) {
  int b = block / sh.heads, h = block % sh.heads;
  int warp = tid / 32, lane = tid % 32, warps = threads / 32;
  size_t ld = 3 * sh.c;
  const float *q = qkv + (size_t)b * sh.tokens * ld + (size_t)h * QT_FA_HEAD;
  bf16 *k_all = (bf16 *)smem, *v_all = k_all + (size_t)sh.padded * QT_FA_LD;
  unsigned char *mine =
      smem + shared_block_bytes(FORWARD, sh.padded) + warp * warp_bytes(FORWARD, sh.padded);
  bf16 *q_tile = (bf16 *)mine;
  float *s = (float *)(mine + tile_bytes());
  float *staging = s + (size_t)16 * score_stride(sh.padded);
  stage(k_all, q + sh.c, ld, 0, sh.padded, sh.tokens, tid, threads);
  stage(v_all, q + 2 * sh.c, ld, 0, sh.padded, sh.tokens, tid, threads);
  __syncthreads();
  float *head_lse = lse + (size_t)block * sh.tokens;
  T *o = out + (size_t)b * sh.tokens * sh.c + (size_t)h * QT_FA_HEAD;
  for (int row0 = 16 * warp; row0 < sh.tokens; row0 += 16 * warps) {
    stage(q_tile, q, ld, row0, 16, sh.tokens, lane, 32);
    __syncwarp();
    scores(s, q_tile, k_all, sh.padded);
    __syncwarp();
    softmax_rows(s, sh, row0, head_lse, lane);
    frag_c acc[4];
    times_head(acc, (const bf16 *)s, sh.padded, v_all);
    put_rows(o, sh.c, row0, sh.tokens, acc, 1.0f, 1, staging, lane);
  }
}

/* dq of dqkv (written when `set`, else added) and D = rowsum(P dP) into
 * d (batch, heads, tokens), for the dkv kernel. */
__device__ inline void backward_dq_block(unsigned char *smem, float *dqkv, float *d,
                                         const float *dout, const float *qkv, const float *lse,
                                         const shape sh, int set, int block, int tid, int threads) {
  int b = block / sh.heads, h = block % sh.heads;
  int warp = tid / 32, lane = tid % 32, warps = threads / 32;
  size_t ld = 3 * sh.c, head = (size_t)h * QT_FA_HEAD;
  const float *q = qkv + (size_t)b * sh.tokens * ld + head;
  const float *dy = dout + (size_t)b * sh.tokens * sh.c + head;
  float *dq = dqkv + (size_t)b * sh.tokens * ld + head;
  bf16 *k_all = (bf16 *)smem, *v_all = k_all + (size_t)sh.padded * QT_FA_LD;
  unsigned char *mine =
      smem + shared_block_bytes(BACKWARD_DQ, sh.padded) + warp * warp_bytes(BACKWARD_DQ, sh.padded);
  bf16 *q_tile = (bf16 *)mine, *dy_tile = q_tile + 16 * QT_FA_LD;
  float *s = (float *)(mine + 2 * tile_bytes());
  float *staging = s + (size_t)16 * score_stride(sh.padded), *d_rows = staging + 256;
  stage(k_all, q + sh.c, ld, 0, sh.padded, sh.tokens, tid, threads);
  stage(v_all, q + 2 * sh.c, ld, 0, sh.padded, sh.tokens, tid, threads);
  __syncthreads();
  const float *head_lse = lse + (size_t)block * sh.tokens;
  float *head_d = d + (size_t)block * sh.tokens;
  int col = lane % 16, stride = score_stride(sh.padded);
  for (int row0 = 16 * warp; row0 < sh.tokens; row0 += 16 * warps) {
    stage(q_tile, q, ld, row0, 16, sh.tokens, lane, 32);
    stage(dy_tile, dy, sh.c, row0, 16, sh.tokens, lane, 32);
    __syncwarp();
    scores(s, q_tile, k_all, sh.padded);
    __syncwarp();
    probabilities(s, sh, row0, head_lse, lane);
    /* D = rowsum(P * dP), dP = dO V^T tile by tile; the 16 lanes of a
     * half warp share the rows tile_row(lane, i). */
    float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    head_rows dy_rows;
    load_rows(dy_rows, dy_tile);
    for (int j = 0; j < sh.padded; j += 16) {
      frag_c acc;
      tile_abt(acc, dy_rows, v_all + (size_t)j * QT_FA_LD);
      wmma::store_matrix_sync(staging, acc, 16, wmma::mem_row_major);
      __syncwarp();
#pragma unroll
      for (int i = 0; i < 8; i++) {
        part[i] += s[(size_t)tile_row(lane, i) * stride + j + col] * staging[lane + 32 * i];
      }
      __syncwarp();
    }
#pragma unroll
    for (int i = 0; i < 8; i++) {
      for (int offset = 8; offset > 0; offset >>= 1) {
        part[i] += __shfl_xor_sync(0xffffffffu, part[i], offset);
      }
      if (col == 0) d_rows[tile_row(lane, i)] = part[i];
    }
    __syncwarp();
    if (lane < 16 && row0 + lane < sh.tokens) head_d[row0 + lane] = d_rows[lane];
    gradient_scores(s, dy_tile, v_all, d_rows, NULL, sh.padded, staging, lane);
    frag_c acc[4];
    times_head(acc, (const bf16 *)s, sh.padded, k_all);
    put_rows(dq, ld, row0, sh.tokens, acc, sh.scale, set, staging, lane);
  }
}

/* dk and dv of dqkv (written when `set`, else added), from D of the dq
 * kernel. */
__device__ inline void backward_dkv_block(unsigned char *smem, float *dqkv, const float *d,
                                          const float *dout, const float *qkv, const float *lse,
                                          const shape sh, int set, int block, int tid,
                                          int threads) {
  int b = block / sh.heads, h = block % sh.heads;
  int warp = tid / 32, lane = tid % 32, warps = threads / 32;
  size_t ld = 3 * sh.c, head = (size_t)h * QT_FA_HEAD;
  const float *q = qkv + (size_t)b * sh.tokens * ld + head;
  const float *dy = dout + (size_t)b * sh.tokens * sh.c + head;
  float *dk = dqkv + (size_t)b * sh.tokens * ld + head + sh.c, *dv = dk + sh.c;
  bf16 *q_all = (bf16 *)smem, *dy_all = q_all + (size_t)sh.padded * QT_FA_LD;
  float *lse_all = (float *)(dy_all + (size_t)sh.padded * QT_FA_LD);
  float *d_all = lse_all + sh.padded;
  unsigned char *mine = smem + shared_block_bytes(BACKWARD_DKV, sh.padded) +
                        warp * warp_bytes(BACKWARD_DKV, sh.padded);
  bf16 *k_tile = (bf16 *)mine, *v_tile = k_tile + 16 * QT_FA_LD;
  float *s = (float *)(mine + 2 * tile_bytes());
  float *staging = s + (size_t)16 * score_stride(sh.padded);
  stage(q_all, q, ld, 0, sh.padded, sh.tokens, tid, threads);
  stage(dy_all, dy, sh.c, 0, sh.padded, sh.tokens, tid, threads);
  for (int j = tid; j < sh.padded; j += threads) {
    int in = j < sh.tokens;
    lse_all[j] = in ? lse[(size_t)block * sh.tokens + j] : 0.0f;
    d_all[j] = in ? d[(size_t)block * sh.tokens + j] : 0.0f;
  }
  __syncthreads();
  for (int row0 = 16 * warp; row0 < sh.tokens; row0 += 16 * warps) {
    stage(k_tile, q + sh.c, ld, row0, 16, sh.tokens, lane, 32);
    stage(v_tile, q + 2 * sh.c, ld, row0, 16, sh.tokens, lane, 32);
    __syncwarp();
    /* dV = P^T dO */
    scores(s, k_tile, q_all, sh.padded);
    __syncwarp();
    probabilities_t(s, sh, lse_all, lane);
    for (int r = 0; r < 16; r++) {
      row_values x;
#pragma unroll
      for (int i = 0; i < QT_FA_PER_LANE; i++) {
        int j = lane + 32 * i;
        x.v[i] = j < sh.padded ? s[(size_t)r * score_stride(sh.padded) + j] : 0.0f;
      }
      store_bf16_row(s, sh.padded, r, x, lane);
    }
    __syncwarp();
    frag_c acc[4];
    times_head(acc, (const bf16 *)s, sh.padded, dy_all);
    put_rows(dv, ld, row0, sh.tokens, acc, 1.0f, set, staging, lane);
    /* dK = scale dS^T Q, with P^T recomputed */
    scores(s, k_tile, q_all, sh.padded);
    __syncwarp();
    probabilities_t(s, sh, lse_all, lane);
    gradient_scores(s, v_tile, dy_all, NULL, d_all, sh.padded, staging, lane);
    times_head(acc, (const bf16 *)s, sh.padded, q_all);
    put_rows(dk, ld, row0, sh.tokens, acc, sh.scale, set, staging, lane);
  }
}

#endif /* sm_80 or newer */

} /* namespace qt_fa */

#endif /* QT_CUDA_ATTENTION_FUSED_CUH */

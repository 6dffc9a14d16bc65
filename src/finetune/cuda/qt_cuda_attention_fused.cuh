/*
 * qt_cuda_attention_fused.cuh - the bodies of the fused attention kernels
 * (qt_cuda_attention_fused.cu launches them): multi-head self-attention for
 * heads of 64 features and at most 256 tokens, in the manner of
 * FlashAttention-2: BF16 tensor-core products (mma m16n8k16, FP32
 * accumulators) whose scores stay in registers, never in memory.
 *
 * Each warp owns a tile of 16 rows (queries in the forward and the dq
 * kernel, keys in the dkv kernel) and walks the other side in blocks of
 * keys (queries), which its block staged once in shared memory as BF16:
 *   forward   S = scale Q K^T, online softmax over blocks of 64 keys
 *             (running maximum and sum per row), O = P V,
 *             lse = log sum exp S per row
 *   backward  (kernel dq, per query tile) D = rowsum(dO * O), O the
 *             forward's output as it wrote it, then P again,
 *             dP = dO V^T, dS = P (dP - D), dQ = scale dS K
 *             (kernel dkv, per key tile) P^T from lse, dV = P^T dO,
 *             dP^T = V dO^T, dS^T = P^T (dP^T - D), dK = scale dS^T Q
 * Operands are rounded to BF16 (to nearest even) as they are loaded, like
 * the operands of QT_MATMUL_BF16's products (qkv may come in BF16 already,
 * rounded by the product that wrote it: the same operands); P and dS are
 * rounded as they enter their products (as in FlashAttention), their sums
 * and D are FP32.
 * The forward keeps for the backward only the log-sum-exps, (batch,
 * heads, tokens) floats in att; the dq kernel takes D from the output
 * itself (FP32, or BF16 where proj reads it so: then D is that of the
 * rounded output, as in FlashAttention-2 and under PyTorch's autocast).
 * The two backward kernels write disjoint parts of dqkv, so every result is
 * written by one thread, without atomics: the results do not depend on the
 * schedule.
 *
 * The register layouts are those of PTX's mma.m16n8k16 with BF16 operands
 * (lane = 4 g + t):
 *   A (16 x 16, row): x[0] = A[g][2t, 2t+1], x[1] = A[g+8][2t, 2t+1],
 *                     x[2] = A[g][2t+8, 2t+9], x[3] = A[g+8][2t+8, 2t+9]
 *   B (16 x 8, col):  x[0] = B[2t, 2t+1][g], x[1] = B[2t+8, 2t+9][g]
 *   C (16 x 8):       x[0], x[1] = C[g][2t, 2t+1], x[2], x[3] = C[g+8][..]
 * so the accumulators of two neighbouring 8-column tiles of scores are, as
 * they stand, the A operand of the next product over those 16 columns.
 *
 * This file holds only __device__ functions over the primitives that CUDA
 * C++ provides (threadIdx-free: each body takes its block, thread and
 * shared memory as arguments), so that a host emulation can include it with
 * stand-ins. The includer provides cuda_bf16.h, __shfl_xor_sync,
 * qt__mma_bf16_16816(float d[4], const __nv_bfloat162 a[4], const
 * __nv_bfloat162 b[2]): d += A B in the layouts above (the device's is one
 * mma.sync in qt_cuda_attention_fused.cu), qt__ldmatrix_x4 and
 * qt__ldmatrix_x4_trans(__nv_bfloat162 r[4], const __nv_bfloat16 *row):
 * ldmatrix.m8n8.x4 (.trans) from shared memory (below), and
 * qt__copy16(T *dst, const T *src): *dst = *src for the 16 bytes of
 * eight BF16 values on 16 bytes, in one access on the device; and for the
 * staging by asynchronous copies (the bodies' ASYNC, below)
 * qt__cp_async16(bf16 *dst, const bf16 *src): cp.async of those 16 bytes
 * from device to shared memory, qt__cp_async_commit(): cp.async.
 * commit_group, and qt__cp_async_wait(int pending): cp.async.wait_group
 * for at most `pending` (0 to 3) of the thread's latest groups.
 */
#ifndef QT_CUDA_ATTENTION_FUSED_CUH
#define QT_CUDA_ATTENTION_FUSED_CUH

#include <type_traits>

#define QT_FA_HEAD 64 /* features per head */
/* Row stride, in values, of the BF16 rows of heads in shared memory: 144
 * bytes (36 words), so that the 32-bit loads of one operand (rows g, words
 * t) fall on 32 different banks, and so do the 16-bit loads down a column
 * (rows 2t, words g / 2). */
#define QT_FA_LD (QT_FA_HEAD + 8)
#define QT_FA_MAX_TOKENS 256 /* tokens per image */
/* A vector access of `values` elements at p, which the device does only
 * where p is on values * (element size) bytes: the includer may check it
 * (the host emulation aborts where the device would fault). */
#ifndef QT_FA_ALIGNED
#define QT_FA_ALIGNED(p, values) ((void)0)
#endif
#define QT_FA_WARPS 8 /* warps per block, a tile of 16 rows each */
/* Keys per step of the forward's online softmax, keys per step of the dq
 * kernel (fewer: it holds more accumulators), queries per step of the dkv
 * kernel (fewer still: its dK and dV take 64 registers, and 16 lets it
 * run two blocks per multiprocessor, see qt_cuda_attention_fused.cu; the
 * same products added in the same order as with 32). */
#define QT_FA_FORWARD_STEP 64
#define QT_FA_BACKWARD_STEP 32
#define QT_FA_DKV_STEP 16

namespace qt_fa {

typedef __nv_bfloat16 bf16;
typedef __nv_bfloat162 bf16x2;

/* One call's shape. qkv rows are 3 c floats: [q | k | v], head h at
 * h * 64 within each; out, dout rows are c values. */
struct shape {
  int batch, tokens, heads;
  int padded; /* tokens rounded up to a multiple of 16 */
  size_t c;
  float scale;        /* 1 / sqrt(64) */
  int parts_adjacent; /* the block order below */
};

/* The grid: a block per (image, head) and part, parts enough for the
 * tiles of 16 rows at QT_FA_WARPS per block. With parts_adjacent, block
 * number = (image * heads + head) * parts + part: the parts of one head
 * run side by side, and the second to stage the head's K and V (the dkv
 * kernel: Q and dO) finds them in L2, where in the other order, part *
 * (batch * heads) + image * heads + head, the second parts start after
 * every first part and read them from memory again (ViT-B at batch 64:
 * 58 MB of BF16 qkv a block of the network, past an H100's 50 MB of L2). */
__host__ __device__ inline int parts(const shape &sh) {
  return (sh.padded / 16 + QT_FA_WARPS - 1) / QT_FA_WARPS;
}

enum kernel { FORWARD, BACKWARD_DQ, BACKWARD_DKV };

/* Shared memory, in bytes: two (padded, 64) BF16 arrays (the forward and
 * dq: K and V; dkv: Q and dO), and for dkv the lse and D of every query. */
__host__ __device__ inline size_t shared_bytes(kernel k, int padded) {
  size_t bytes = (size_t)2 * padded * QT_FA_LD * sizeof(bf16);
  return k == BACKWARD_DKV ? bytes + (size_t)2 * padded * sizeof(float) : bytes;
}

/* BF16 mma exists from sm_80 on: a device pass for an older target
 * compiles none of the bodies below (the launcher traps instead). */
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800

struct frag_a {
  bf16x2 x[4];
};
struct frag_b {
  bf16x2 x[2];
};
struct frag_c {
  float x[4];
};

#define QT_FA_LOG2E 1.4426950408889634f
#define QT_FA_LN2 0.6931471805599453f

__device__ inline void mma(frag_c &d, const frag_a &a, const frag_b &b) {
  qt__mma_bf16_16816(d.x, a.x, b.x);
}

__device__ inline void zero(frag_c &c) {
  for (int e = 0; e < 4; e++) c.x[e] = 0.0f;
}

/* Global memory is read and written a float (or BF16 value) at a time:
 * the op table's arrays are only as aligned as their element type (an
 * arena of small batches places them 4 bytes apart, which vector accesses
 * fault on). qkv comes in FP32 or, where its product writes it so, in BF16
 * (the values these kernels would round it to: the same operands either
 * way); a BF16 pair is one 32-bit load (features 2i, 2i + 1 of a row whose
 * start is 4-byte aligned, as the launcher checks). */
__device__ inline void load_pair(float v[2], const float *x) {
  v[0] = x[0];
  v[1] = x[1];
}
__device__ inline void load_pair(float v[2], const bf16 *x) {
  QT_FA_ALIGNED(x, 2);
  bf16x2 p = *(const bf16x2 *)x;
  v[0] = __low2float(p);
  v[1] = __high2float(p);
}

/* Rows [0, rows) of two heads' 64 features (row r at src0 + r * ld0, src1 +
 * r * ld1) into dst0, dst1 (rows, 64; row stride QT_FA_LD) as BF16; rows
 * at or past `tokens` are zero. Thread t of `count` threads, two features
 * of each at a time. Each thread issues the loads of QT_FA_STAGE_PAIRS
 * pairs of both before it stores any (a store to shared memory could
 * alias the loads' addresses for all the compiler knows, and would
 * otherwise wait for every load in turn: the staging then dominated the
 * forward). */
#define QT_FA_STAGE_PAIRS 8
template <typename S0, typename S1>
__device__ inline void stage_heads(bf16 *dst0, const S0 *src0, size_t ld0, bf16 *dst1,
                                   const S1 *src1, size_t ld1, const shape &sh, int t, int count) {
  const int pairs = sh.padded * (QT_FA_HEAD / 2);
  for (int i0 = t; i0 < pairs; i0 += QT_FA_STAGE_PAIRS * count) {
    float v[2][QT_FA_STAGE_PAIRS][2];
#pragma unroll
    for (int j = 0; j < QT_FA_STAGE_PAIRS; j++) {
      int i = i0 + j * count, r = i / (QT_FA_HEAD / 2), f = 2 * (i % (QT_FA_HEAD / 2));
      if (i < pairs && r < sh.tokens) {
        load_pair(v[0][j], src0 + (size_t)r * ld0 + f);
        load_pair(v[1][j], src1 + (size_t)r * ld1 + f);
      } else {
        v[0][j][0] = v[0][j][1] = v[1][j][0] = v[1][j][1] = 0.0f;
      }
    }
#pragma unroll
    for (int j = 0; j < QT_FA_STAGE_PAIRS; j++) {
      int i = i0 + j * count, r = i / (QT_FA_HEAD / 2), f = 2 * (i % (QT_FA_HEAD / 2));
      if (i >= pairs) break;
      *(bf16x2 *)(dst0 + r * QT_FA_LD + f) = __floats2bfloat162_rn(v[0][j][0], v[0][j][1]);
      *(bf16x2 *)(dst1 + r * QT_FA_LD + f) = __floats2bfloat162_rn(v[1][j][0], v[1][j][1]);
    }
  }
}

/* stage_heads of two BF16 arrays (K and V of a BF16 qkv): where both
 * start on 16 bytes and their rows are a multiple of 16 bytes apart (a
 * ViT's qkv at any batch that keeps its arena's arrays on 16 bytes: 64
 * does), 8 values per load, QT_FA_STAGE_CHUNKS loads of each array in
 * flight per thread, so the staging takes half the turns (each a round
 * trip to memory) of the pairs' at the same registers; else the pairs'. */
#define QT_FA_STAGE_CHUNKS 4
struct alignas(16) chunk8 {
  bf16x2 p[4];
};

__device__ inline void stage_heads(bf16 *dst0, const bf16 *src0, size_t ld0, bf16 *dst1,
                                   const bf16 *src1, size_t ld1, const shape &sh, int t,
                                   int count) {
  const size_t bytes_ld = sizeof(bf16) * (ld0 | ld1);
  if (((uintptr_t)src0 | (uintptr_t)src1 | bytes_ld) % 16 != 0) {
    stage_heads<bf16, bf16>(dst0, src0, ld0, dst1, src1, ld1, sh, t, count);
    return;
  }
  const int per_row = QT_FA_HEAD / 8, chunks = sh.padded * per_row;
  chunk8 zero;
  for (int k = 0; k < 4; k++) zero.p[k] = __floats2bfloat162_rn(0.0f, 0.0f);
  for (int i0 = t; i0 < chunks; i0 += QT_FA_STAGE_CHUNKS * count) {
    chunk8 v[2][QT_FA_STAGE_CHUNKS];
#pragma unroll
    for (int j = 0; j < QT_FA_STAGE_CHUNKS; j++) {
      int i = i0 + j * count, r = i / per_row, f = 8 * (i % per_row);
      if (i < chunks && r < sh.tokens) {
        qt__copy16(&v[0][j], (const chunk8 *)(src0 + (size_t)r * ld0 + f));
        qt__copy16(&v[1][j], (const chunk8 *)(src1 + (size_t)r * ld1 + f));
      } else {
        qt__copy16(&v[0][j], &zero);
        qt__copy16(&v[1][j], &zero);
      }
    }
#pragma unroll
    for (int j = 0; j < QT_FA_STAGE_CHUNKS; j++) {
      int i = i0 + j * count, r = i / per_row, f = 8 * (i % per_row);
      if (i >= chunks) break;
      qt__copy16((chunk8 *)(dst0 + r * QT_FA_LD + f), &v[0][j]);
      qt__copy16((chunk8 *)(dst1 + r * QT_FA_LD + f), &v[1][j]);
    }
  }
}

/* The staging by asynchronous copies (the bodies' ASYNC, kernels of
 * their own; off unless QT_CUDA_FA_ASYNC=1, see
 * qt_cuda_attention_fused.cu): where stage_heads takes two BF16 arrays 8
 * values at a time, cp.async copies them straight into shared memory,
 * every copy of the block issued at once (no registers hold them), in
 * groups of QT_FA_ASYNC_ROWS rows; the loop over the staged rows waits
 * for a group only as it reaches its rows (await_rows), so that its first
 * steps run while the later rows arrive. Rows at or past `tokens` are
 * zeroed by plain stores. The same values in shared memory as
 * stage_heads', so the same results to the bit. */
#define QT_FA_ASYNC_ROWS 64
#define QT_FA_ASYNC_GROUPS (QT_FA_MAX_TOKENS / QT_FA_ASYNC_ROWS)
static_assert(QT_FA_ASYNC_GROUPS <= 4, "qt__cp_async_wait waits with 0 to 3 pending");
static_assert(QT_FA_ASYNC_ROWS % QT_FA_FORWARD_STEP == 0 &&
                  QT_FA_ASYNC_ROWS % QT_FA_BACKWARD_STEP == 0 &&
                  QT_FA_ASYNC_ROWS % QT_FA_DKV_STEP == 0,
              "a step's rows lie in one group");

/* Whether two BF16 arrays stage asynchronously: both on 16 bytes, rows a
 * multiple of 16 bytes apart (else stage_heads, by pairs). */
__device__ inline bool stage_async_fits(const bf16 *src0, size_t ld0, const bf16 *src1,
                                        size_t ld1) {
  return ((uintptr_t)src0 | (uintptr_t)src1 | (sizeof(bf16) * (ld0 | ld1))) % 16 == 0;
}

/* Issues the block's copies, a commit group per QT_FA_ASYNC_ROWS rows
 * (thread t of `count`); returns the number of groups. */
__device__ inline int stage_async(bf16 *dst0, const bf16 *src0, size_t ld0, bf16 *dst1,
                                  const bf16 *src1, size_t ld1, const shape &sh, int t, int count) {
  const int per_row = QT_FA_HEAD / 8;
  int groups = (sh.padded + QT_FA_ASYNC_ROWS - 1) / QT_FA_ASYNC_ROWS;
  for (int group = 0; group < groups; group++) {
    int first = group * QT_FA_ASYNC_ROWS;
    int rows = sh.padded - first < QT_FA_ASYNC_ROWS ? sh.padded - first : QT_FA_ASYNC_ROWS;
    for (int i = t; i < rows * per_row; i += count) {
      int r = first + i / per_row, f = 8 * (i % per_row);
      if (r < sh.tokens) {
        qt__cp_async16(dst0 + r * QT_FA_LD + f, src0 + (size_t)r * ld0 + f);
        qt__cp_async16(dst1 + r * QT_FA_LD + f, src1 + (size_t)r * ld1 + f);
      } else {
        for (int k = 0; k < 8; k += 2) {
          *(bf16x2 *)(dst0 + r * QT_FA_LD + f + k) = __floats2bfloat162_rn(0.0f, 0.0f);
          *(bf16x2 *)(dst1 + r * QT_FA_LD + f + k) = __floats2bfloat162_rn(0.0f, 0.0f);
        }
      }
    }
    qt__cp_async_commit();
  }
  return groups;
}

/* The block's staging: the groups issued and those the block has waited
 * for (0 and 0 when staged whole, by stage_heads, before a barrier). */
struct staging {
  int groups = 0, landed = 0;
};

/* Before a step reads the staged rows below `rows`: where they are still
 * in flight, every thread waits for its copies of their groups, then the
 * block meets (so every thread's copies are seen). Each thread makes the
 * same calls, in the same order: one barrier per group. */
__device__ inline void await_rows(staging &st, int rows) {
  int need = (rows + QT_FA_ASYNC_ROWS - 1) / QT_FA_ASYNC_ROWS;
  if (need > st.groups) need = st.groups;
  if (need <= st.landed) return;
  qt__cp_async_wait(st.groups - need);
  __syncthreads();
  st.landed = need;
}

/* The barriers of every group not yet awaited: a warp without rows of its
 * own meets the block at each, as the warps with rows do in their steps. */
__device__ inline void await_all(staging &st) {
  while (st.landed < st.groups) await_rows(st, (st.landed + 1) * QT_FA_ASYNC_ROWS);
}

/* Stages the two arrays as stage_heads does, asynchronously where ASYNC
 * and the arrays allow it (then the caller's other writes to shared
 * memory are seen after the first await_rows), else whole (the caller
 * meets the block after it, st.groups 0). Without ASYNC the staging's
 * waits compile to nothing. */
template <bool ASYNC, typename S0, typename S1>
__device__ inline staging stage(bf16 *dst0, const S0 *src0, size_t ld0, bf16 *dst1, const S1 *src1,
                                size_t ld1, const shape &sh, int t, int count) {
  staging st;
  /* FP32 arrays are rounded as they are staged. */
  if constexpr (ASYNC && std::is_same<S0, bf16>::value && std::is_same<S1, bf16>::value) {
    if (stage_async_fits(src0, ld0, src1, ld1)) {
      st.groups = stage_async(dst0, src0, ld0, dst1, src1, ld1, sh, t, count);
      return st;
    }
  }
  stage_heads(dst0, src0, ld0, dst1, src1, ld1, sh, t, count);
  return st;
}

/* A warp's 16 rows (row0..) of one head's 64 features from device memory
 * (row r at src + r * ld) as the A operand of four products over the
 * features; rows at or past `tokens` are zero. */
struct rows16 {
  frag_a k[QT_FA_HEAD / 16];
};

template <typename S>
__device__ inline bf16x2 pair_at(const S *src, size_t ld, int row, int tokens, int col) {
  if (row >= tokens) return __floats2bfloat162_rn(0.0f, 0.0f);
  float v[2];
  load_pair(v, src + (size_t)row * ld + col);
  return __floats2bfloat162_rn(v[0], v[1]);
}

template <typename S>
__device__ inline void load_rows(rows16 &a, const S *src, size_t ld, int row0, int tokens,
                                 int lane) {
  int g = lane / 4, t = lane % 4;
  for (int k = 0; k < QT_FA_HEAD / 16; k++) {
    int col = 16 * k + 2 * t;
    a.k[k].x[0] = pair_at(src, ld, row0 + g, tokens, col);
    a.k[k].x[1] = pair_at(src, ld, row0 + g + 8, tokens, col);
    a.k[k].x[2] = pair_at(src, ld, row0 + g, tokens, col + 8);
    a.k[k].x[3] = pair_at(src, ld, row0 + g + 8, tokens, col + 8);
  }
}

/* The B operands come from the staged arrays through ldmatrix (m8n8.x4:
 * lane 8 i + r gives the address of row r of 8 x 8 matrix i, 16-byte
 * aligned, and lane 4 g + t receives of each matrix the values 2t, 2t + 1
 * of its row g, or with .trans those of its column g at rows 2t, 2t + 1):
 * one instruction for four registers of operands, where 32-bit loads took
 * four and the 16-bit loads down a column sixteen. Rows of QT_FA_LD values
 * (144 bytes) put a matrix's 8 rows on 32 different banks. */

/* acc (16, 8) = a (16, 64) . X[n0 .. n0 + 8)^T, X a staged (rows, 64)
 * array: the scores of a warp's rows against 8 rows of the other side.
 * Matrix i of a load holds features 16 (2 p + i / 2) + 8 (i % 2) .. + 8 of
 * the 8 rows. */
__device__ inline void times_rows_t(frag_c &acc, const rows16 &a, const bf16 *x, int n0, int lane) {
  int i = lane / 8, r = lane % 8;
  const bf16 *row = x + (n0 + r) * QT_FA_LD + 16 * (i / 2) + 8 * (i % 2);
  zero(acc);
#pragma unroll
  for (int p = 0; p < QT_FA_HEAD / 32; p++) {
    bf16x2 v[4];
    qt__ldmatrix_x4(v, row + 32 * p);
    frag_b b0 = {{v[0], v[1]}}, b1 = {{v[2], v[3]}};
    mma(acc, a.k[2 * p], b0);
    mma(acc, a.k[2 * p + 1], b1);
  }
}

/* acc[n] (16, 8 features) += a (16, 16 rows of X) . X[k0 .. k0 + 16) for
 * the 8 tiles of 8 features: a staged array as the B operand, read down
 * its columns (ldmatrix .trans). Matrix i of a load holds rows k0 + 8 (i %
 * 2) .. + 8 of features 8 (n + i / 2) .. + 8. */
__device__ inline void times_rows(frag_c acc[8], const frag_a &a, const bf16 *x, int k0, int lane) {
  int i = lane / 8, r = lane % 8;
  const bf16 *row = x + (k0 + 8 * (i % 2) + r) * QT_FA_LD + 8 * (i / 2);
#pragma unroll
  for (int n = 0; n < 8; n += 2) {
    bf16x2 v[4];
    qt__ldmatrix_x4_trans(v, row + 8 * n);
    frag_b b0 = {{v[0], v[1]}}, b1 = {{v[2], v[3]}};
    mma(acc[n], a, b0);
    mma(acc[n + 1], a, b1);
  }
}

/* The A operand over columns 16 j .. 16 j + 16 of a block of FP32 values
 * held as accumulators (tiles 2 j and 2 j + 1), rounded to BF16. */
__device__ inline frag_a as_operand(const frag_c *tiles, int j) {
  const frag_c &l = tiles[2 * j], &r = tiles[2 * j + 1];
  frag_a a;
  a.x[0] = __floats2bfloat162_rn(l.x[0], l.x[1]);
  a.x[1] = __floats2bfloat162_rn(l.x[2], l.x[3]);
  a.x[2] = __floats2bfloat162_rn(r.x[0], r.x[1]);
  a.x[3] = __floats2bfloat162_rn(r.x[2], r.x[3]);
  return a;
}

/* Sum and maximum over the four lanes of a quad (the lanes of one row). */
__device__ inline float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ inline float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

/* One value of a result pair (columns col, col + 1 of a row): FP32
 * written when `set`, added otherwise; BF16 (the forward's output for a
 * linear layer that reads BF16) written. */
__device__ inline void put(float *d, float a, float b, int set) {
  d[0] = set ? a : d[0] + a;
  d[1] = set ? b : d[1] + b;
}
__device__ inline void put(bf16 *d, float a, float b, int) {
  d[0] = __float2bfloat16_rn(a);
  d[1] = __float2bfloat16_rn(b);
}

/* A warp's 16 rows (row0.., those before `tokens`) of a head's 64 columns
 * at dst (row stride ld) receive scale * acc, as put() stores them. */
template <typename T>
__device__ inline void put_rows(T *dst, size_t ld, int row0, int tokens, const frag_c acc[8],
                                float scale, int set, int lane) {
  int g = lane / 4, t = lane % 4;
  for (int half = 0; half < 2; half++) {
    int row = row0 + g + 8 * half;
    if (row >= tokens) continue;
    T *p = dst + (size_t)row * ld + 2 * t;
#pragma unroll
    for (int n = 0; n < 8; n++) {
      put(p + 8 * n, scale * acc[n].x[2 * half], scale * acc[n].x[2 * half + 1], set);
    }
  }
}

/* ------------------------------------------------------------------------- */
/* The three kernels' bodies                                                  */
/* ------------------------------------------------------------------------- */

/* The block's (image, head) and the first of its warps' tiles. */
struct place {
  int image, head, tile0;
};

__device__ inline place place_of(const shape &sh, int block) {
  int n = parts(sh), per_part = sh.batch * sh.heads;
  int bh = sh.parts_adjacent ? block / n : block % per_part;
  int part = sh.parts_adjacent ? block % n : block / per_part;
  return place{bh / sh.heads, bh % sh.heads, part * QT_FA_WARPS};
}

/* out (batch, tokens, c) = the heads' P V, in FP32 or BF16 (T); att: the
 * log-sum-exps (batch, heads, tokens). qkv in FP32 or BF16 (Q), as in the
 * two backward bodies. */
template <bool ASYNC = false, typename T, typename Q>
__device__ inline void forward_block(unsigned char *smem, T *out, float *att, const Q *qkv,
                                     const shape sh, int block, int tid, int threads) {
  place at = place_of(sh, block);
  int warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  size_t ld = 3 * sh.c;
  const Q *q = qkv + (size_t)at.image * sh.tokens * ld + (size_t)at.head * QT_FA_HEAD;
  bf16 *ks = (bf16 *)smem, *vs = ks + (size_t)sh.padded * QT_FA_LD;
  /* The warp's own rows first: their loads overlap the staging's. */
  int row0 = 16 * (at.tile0 + warp);
  rows16 qf;
  load_rows(qf, q, ld, row0, sh.tokens, lane);
  staging st = stage<ASYNC>(ks, q + sh.c, ld, vs, q + 2 * sh.c, ld, sh, tid, threads);
  if (!st.groups) __syncthreads();
  if (row0 >= sh.padded) {
    await_all(st);
    return;
  }
  /* Per row (g, g + 8): the running maximum of the scores (in units of
   * log2, as exp2 takes them) and this lane's part of the running sum. */
  float max[2] = {-INFINITY, -INFINITY}, sum[2] = {0.0f, 0.0f};
  frag_c o[8];
  for (int n = 0; n < 8; n++) zero(o[n]);
  const float s2 = sh.scale * QT_FA_LOG2E;
  for (int k0 = 0; k0 < sh.padded; k0 += QT_FA_FORWARD_STEP) {
    await_rows(st, k0 + QT_FA_FORWARD_STEP);
    frag_c s[QT_FA_FORWARD_STEP / 8];
    float step_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < QT_FA_FORWARD_STEP / 8; n++) {
      if (k0 + 8 * n >= sh.padded) break;
      times_rows_t(s[n], qf, ks, k0 + 8 * n, lane);
      for (int e = 0; e < 4; e++) {
        int key = k0 + 8 * n + 2 * t + e % 2;
        s[n].x[e] = key < sh.tokens ? s2 * s[n].x[e] : -INFINITY;
        step_max[e / 2] = fmaxf(step_max[e / 2], s[n].x[e]);
      }
    }
    float rescale[2];
    for (int h = 0; h < 2; h++) {
      /* Every step has a key before `tokens` (padded < tokens + 16): the
       * new maximum is finite. */
      float m = fmaxf(max[h], quad_max(step_max[h]));
      rescale[h] = exp2f(max[h] - m);
      max[h] = m;
      sum[h] *= rescale[h];
    }
    for (int n = 0; n < 8; n++) {
      for (int e = 0; e < 4; e++) o[n].x[e] *= rescale[e / 2];
    }
#pragma unroll
    for (int n = 0; n < QT_FA_FORWARD_STEP / 8; n++) {
      if (k0 + 8 * n >= sh.padded) break;
      for (int e = 0; e < 4; e++) {
        s[n].x[e] = exp2f(s[n].x[e] - max[e / 2]);
        sum[e / 2] += s[n].x[e];
      }
    }
#pragma unroll
    for (int j = 0; j < QT_FA_FORWARD_STEP / 16; j++) {
      if (k0 + 16 * j >= sh.padded) break;
      times_rows(o, as_operand(s, j), vs, k0 + 16 * j, lane);
    }
  }
  float inv[2];
  for (int h = 0; h < 2; h++) {
    sum[h] = quad_sum(sum[h]);
    inv[h] = 1.0f / sum[h];
  }
  for (int n = 0; n < 8; n++) {
    for (int e = 0; e < 4; e++) o[n].x[e] *= inv[e / 2];
  }
  T *dst = out + (size_t)at.image * sh.tokens * sh.c + (size_t)at.head * QT_FA_HEAD;
  put_rows(dst, sh.c, row0, sh.tokens, o, 1.0f, 1, lane);
  float *head_lse = att + ((size_t)at.image * sh.heads + at.head) * sh.tokens;
  for (int h = 0; h < 2; h++) {
    int row = row0 + g + 8 * h;
    if (t == 0 && row < sh.tokens) head_lse[row] = QT_FA_LN2 * (max[h] + log2f(sum[h]));
  }
}

/* The probabilities of a backward step's tile n (16, 8): P = exp(scale S
 * - lse), 0 where the column (key, or query) is at or past `tokens`. lse2
 * is lse in units of log2, per row (the tile's rows g and g + 8: lse2[0],
 * lse2[1]) or, BY_COLUMN, per column (every column's: lse2[col]). */
template <bool BY_COLUMN>
__device__ inline void probabilities(frag_c &s, const shape &sh, float s2, int col0,
                                     const float *lse2, int lane) {
  int t = lane % 4;
  for (int e = 0; e < 4; e++) {
    int col = col0 + 2 * t + e % 2;
    float l = BY_COLUMN ? lse2[col] : lse2[e / 2];
    s.x[e] = col < sh.tokens ? exp2f(s2 * s.x[e] - l) : 0.0f;
  }
}

/* D = rowsum(dO * O) of a warp's 16 rows (row0.., rows g and g + 8 in
 * dd) of one head (dy, o: its first row's features; row stride c), into
 * d (the head's, by row) too: lane t of a row's quad takes 16 of its
 * features. */
template <typename O, typename Y>
__device__ inline void row_deltas(float dd[2], float *d, const O *dy, const Y *o, const shape &sh,
                                  int row0, int lane) {
  int g = lane / 4, t = lane % 4;
  float dsum[2] = {0.0f, 0.0f};
  for (int h = 0; h < 2; h++) {
    int row = row0 + g + 8 * h;
    if (row >= sh.tokens) continue;
    const O *dyr = dy + (size_t)row * sh.c + 16 * t;
    const Y *orow = o + (size_t)row * sh.c + 16 * t;
#pragma unroll
    for (int f = 0; f < 16; f += 2) {
      float v[2], w[2];
      load_pair(v, dyr + f);
      load_pair(w, orow + f);
      dsum[h] += v[0] * w[0];
      dsum[h] += v[1] * w[1];
    }
  }
  for (int h = 0; h < 2; h++) {
    dd[h] = quad_sum(dsum[h]);
    int row = row0 + g + 8 * h;
    if (t == 0 && row < sh.tokens) d[row] = dd[h];
  }
}

/* D alone into d (batch, heads, tokens), the grid of the dq kernel's: for
 * the backward whose dkv kernel writes dS for cuBLAS's dQ (DS below). */
template <typename O, typename Y>
__device__ inline void deltas_block(float *d, const O *dout, const Y *out, const shape sh,
                                    int block, int tid) {
  place at = place_of(sh, block);
  int warp = tid / 32, lane = tid % 32, row0 = 16 * (at.tile0 + warp);
  if (row0 >= sh.padded) return;
  size_t head = (size_t)at.head * QT_FA_HEAD, image = (size_t)at.image * sh.tokens * sh.c;
  float dd[2];
  row_deltas(dd, d + ((size_t)at.image * sh.heads + at.head) * sh.tokens, dout + image + head,
             out + image + head, sh, row0, lane);
}

/* dq of dqkv (written when `set`, else added; in BF16, written, when D is
 * BF16) and D = rowsum(dO * O) into d (batch, heads, tokens), for the dkv
 * kernel. dout (O) is FP32, or BF16 as proj's backward wrote it (the
 * values the products round it to; D from them); out (Y), the forward's
 * output, FP32 or BF16 as it wrote it. */
template <bool ASYNC = false, typename Q, typename D, typename O, typename Y>
__device__ inline void backward_dq_block(unsigned char *smem, D *dqkv, float *d, const O *dout,
                                         const Y *out, const Q *qkv, const float *att,
                                         const shape sh, int set, int block, int tid, int threads) {
  place at = place_of(sh, block);
  int warp = tid / 32, lane = tid % 32, g = lane / 4;
  size_t ld = 3 * sh.c, head = (size_t)at.head * QT_FA_HEAD;
  const Q *q = qkv + (size_t)at.image * sh.tokens * ld + head;
  const O *dy = dout + (size_t)at.image * sh.tokens * sh.c + head;
  const Y *o = out + (size_t)at.image * sh.tokens * sh.c + head;
  bf16 *ks = (bf16 *)smem, *vs = ks + (size_t)sh.padded * QT_FA_LD;
  int row0 = 16 * (at.tile0 + warp);
  rows16 qf, dyf;
  load_rows(qf, q, ld, row0, sh.tokens, lane);
  load_rows(dyf, dy, sh.c, row0, sh.tokens, lane);
  staging st = stage<ASYNC>(ks, q + sh.c, ld, vs, q + 2 * sh.c, ld, sh, tid, threads);
  if (!st.groups) __syncthreads();
  if (row0 >= sh.padded) {
    await_all(st);
    return;
  }
  size_t rows = ((size_t)at.image * sh.heads + at.head) * sh.tokens;
  const float s2 = sh.scale * QT_FA_LOG2E;
  float lse2[2];
  for (int h = 0; h < 2; h++) {
    int row = row0 + g + 8 * h;
    lse2[h] = row < sh.tokens ? QT_FA_LOG2E * att[rows + row] : 0.0f;
  }
  float dd[2];
  row_deltas(dd, d + rows, dy, o, sh, row0, lane);
  /* dS = P (dP - D), dQ = scale dS K. */
  frag_c dq[8];
  for (int n = 0; n < 8; n++) zero(dq[n]);
  for (int k0 = 0; k0 < sh.padded; k0 += QT_FA_BACKWARD_STEP) {
    await_rows(st, k0 + QT_FA_BACKWARD_STEP);
    frag_c ds[QT_FA_BACKWARD_STEP / 8];
#pragma unroll
    for (int n = 0; n < QT_FA_BACKWARD_STEP / 8; n++) {
      if (k0 + 8 * n >= sh.padded) break;
      frag_c dp;
      times_rows_t(ds[n], qf, ks, k0 + 8 * n, lane);
      times_rows_t(dp, dyf, vs, k0 + 8 * n, lane);
      probabilities<false>(ds[n], sh, s2, k0 + 8 * n, lse2, lane);
      for (int e = 0; e < 4; e++) ds[n].x[e] *= dp.x[e] - dd[e / 2];
    }
#pragma unroll
    for (int j = 0; j < QT_FA_BACKWARD_STEP / 16; j++) {
      if (k0 + 16 * j >= sh.padded) break;
      times_rows(dq, as_operand(ds, j), ks, k0 + 16 * j, lane);
    }
  }
  put_rows(dqkv + (size_t)at.image * sh.tokens * ld + head, ld, row0, sh.tokens, dq, sh.scale, set,
           lane);
}

/* dk and dv of dqkv (written when `set`, else added; in BF16 as the dq
 * kernel's), from D of the dq kernel; dout as there. With DS, also dS
 * (BF16, as it enters the dK product) into ds: (heads, batch, padded,
 * padded), dS[query][key] of head h and image b at (h batch + b) padded
 * padded, every query and key below padded (0 past tokens), for dQ =
 * scale dS K as one product per head (qt_cuda_attention_fused.cu). */
template <bool ASYNC = false, bool DS = false, typename Q, typename D, typename O>
__device__ inline void backward_dkv_block(unsigned char *smem, D *dqkv, const float *d,
                                          const O *dout, const Q *qkv, const float *att,
                                          const shape sh, int set, int block, int tid, int threads,
                                          bf16 *ds_out = nullptr) {
  place at = place_of(sh, block);
  int warp = tid / 32, lane = tid % 32, t = lane % 4;
  size_t ld = 3 * sh.c, head = (size_t)at.head * QT_FA_HEAD;
  const Q *q = qkv + (size_t)at.image * sh.tokens * ld + head;
  const O *dy = dout + (size_t)at.image * sh.tokens * sh.c + head;
  bf16 *qs = (bf16 *)smem, *dys = qs + (size_t)sh.padded * QT_FA_LD;
  float *lse2 = (float *)(dys + (size_t)sh.padded * QT_FA_LD), *d_all = lse2 + sh.padded;
  int row0 = 16 * (at.tile0 + warp);
  rows16 kf, vf;
  load_rows(kf, q + sh.c, ld, row0, sh.tokens, lane);
  load_rows(vf, q + 2 * sh.c, ld, row0, sh.tokens, lane);
  staging st = stage<ASYNC>(qs, q, ld, dys, dy, sh.c, sh, tid, threads);
  size_t rows = ((size_t)at.image * sh.heads + at.head) * sh.tokens;
  for (int j = tid; j < sh.padded; j += threads) {
    int in = j < sh.tokens;
    lse2[j] = in ? QT_FA_LOG2E * att[rows + j] : 0.0f;
    d_all[j] = in ? d[rows + j] : 0.0f;
  }
  if (!st.groups) __syncthreads();
  if (row0 >= sh.padded) {
    await_all(st);
    return;
  }
  const float s2 = sh.scale * QT_FA_LOG2E;
  frag_c dk[8], dv[8];
  for (int n = 0; n < 8; n++) {
    zero(dk[n]);
    zero(dv[n]);
  }
  for (int q0 = 0; q0 < sh.padded; q0 += QT_FA_DKV_STEP) {
    await_rows(st, q0 + QT_FA_DKV_STEP);
    /* P^T and dS^T of the warp's keys against this step's queries. */
    frag_c p[QT_FA_DKV_STEP / 8], ds[QT_FA_DKV_STEP / 8];
#pragma unroll
    for (int n = 0; n < QT_FA_DKV_STEP / 8; n++) {
      if (q0 + 8 * n >= sh.padded) break;
      times_rows_t(p[n], kf, qs, q0 + 8 * n, lane);
      times_rows_t(ds[n], vf, dys, q0 + 8 * n, lane);
      probabilities<true>(p[n], sh, s2, q0 + 8 * n, lse2, lane);
      for (int e = 0; e < 4; e++) {
        ds[n].x[e] = p[n].x[e] * (ds[n].x[e] - d_all[q0 + 8 * n + 2 * t + e % 2]);
      }
      if constexpr (DS) {
        /* ds[n] is dS^T (keys row0 + g, + 8; queries q0 + 8 n + 2 t, + 1). */
        bf16 *head_ds = ds_out + ((size_t)at.head * sh.batch + at.image) * sh.padded * sh.padded;
        for (int e = 0; e < 4; e++) {
          int key = row0 + lane / 4 + 8 * (e / 2), query = q0 + 8 * n + 2 * t + e % 2;
          head_ds[(size_t)query * sh.padded + key] = __float2bfloat16_rn(ds[n].x[e]);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < QT_FA_DKV_STEP / 16; j++) {
      if (q0 + 16 * j >= sh.padded) break;
      times_rows(dv, as_operand(p, j), dys, q0 + 16 * j, lane);
      times_rows(dk, as_operand(ds, j), qs, q0 + 16 * j, lane);
    }
  }
  D *dk_rows = dqkv + (size_t)at.image * sh.tokens * ld + head + sh.c;
  put_rows(dk_rows, ld, row0, sh.tokens, dk, sh.scale, set, lane);
  put_rows(dk_rows + sh.c, ld, row0, sh.tokens, dv, 1.0f, set, lane);
}

#endif /* sm_80 or newer */

} /* namespace qt_fa */

#endif /* QT_CUDA_ATTENTION_FUSED_CUH */

/*
 * qt_cuda_emulation.h - host stand-ins for the CUDA C++ that the kernel
 * bodies in the .cuh files of src/finetune/cuda use, so that a test runs
 * those bodies on the CPU, in CI, without a GPU: the bodies' index arithmetic, masking,
 * padding and barriers are then checked against the CPU references, as the
 * `gpu` tests check the compiled kernels on a device.
 *
 *   - One host thread per CUDA thread; qt_emu_launch runs the blocks one
 *     after the other, the threads of a block at once (one team of
 *     threads for all the blocks).
 *   - __syncwarp and __syncthreads are barriers over the warp's 32 threads
 *     and over the block; __shfl_xor_sync (float and double) exchanges
 *     through the warp's slots between two barriers. A body whose lanes
 *     reach them unevenly hangs (the test's timeout reports it), as it
 *     would be undefined on a device. The barriers order memory, so ThreadSanitizer reports a lane
 *     that reads shared memory another lane wrote without a barrier between.
 *   - The tensor-core product qt__mma_bf16_16816 (mma.m16n8k16) with the
 *     device's register layouts, exchanged through the warp's matrices,
 *     and ldmatrix (qt__ldmatrix_x4, _trans) through the lanes' addresses.
 *   - __nv_bfloat16 rounds to nearest even, as __float2bfloat16_rn, unless
 *     QT_EMULATE_EXACT is defined: then it holds a whole float (twice the
 *     size; the kernels must size their BF16 arrays with sizeof), so the
 *     kernels' results must equal the FP32 references to float rounding,
 *     which checks their algebra apart from BF16's error.
 *   - Shared memory starts as 0xff bytes (NaN as floats and BF16): a body
 *     that reads what it never wrote gives NaN.
 *   - cp.async (qt__cp_async16, _commit, _wait) copies only when the
 *     thread's wait lets the group land.
 *
 * C++20 (std::barrier). Include before the kernel bodies' .cuh.
 */
#ifndef QT_CUDA_EMULATION_H
#define QT_CUDA_EMULATION_H

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define __device__
#define __host__

#ifdef QT_EMULATE_EXACT
struct __nv_bfloat16 {
  float x;
};
static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  return {f};
}
static inline float qt_emu_float(__nv_bfloat16 b) {
  return b.x;
}
#else
struct __nv_bfloat16 {
  uint16_t x;
};
static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {(uint16_t)((u >> 16) | 0x40u)}; /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u);
  return {(uint16_t)(u >> 16)};
}
static inline float qt_emu_float(__nv_bfloat16 b) {
  uint32_t u = (uint32_t)b.x << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}
#endif

/* The calling host thread's place in the emulated grid. */
struct qt_emu_warp {
  std::barrier<> barrier{32};
  double slots[32];
  float mma_a[16][16], mma_b[16][8]; /* qt__mma_bf16_16816's operands */
  const __nv_bfloat16 *rows[32];     /* qt__ldmatrix_x4's addresses */
};
inline thread_local int qt_emu_lane;
inline thread_local qt_emu_warp *qt_emu_my_warp;
inline thread_local std::barrier<> *qt_emu_my_block;

static inline void __syncwarp() {
  qt_emu_my_warp->barrier.arrive_and_wait();
}
static inline void __syncthreads() {
  qt_emu_my_block->arrive_and_wait();
}
/* Blocks run one after another, each block's threads at once between
 * barriers, which order their memory: a fence has nothing left to order
 * (and ThreadSanitizer does not model a bare one), an atomic is the
 * host's, and a load through L2 is a load. */
static inline void __threadfence() {}
static inline unsigned atomicAdd(unsigned *address, unsigned v) {
  return __atomic_fetch_add(address, v, __ATOMIC_SEQ_CST);
}
static inline double __ldcg(const double *p) {
  return *p;
}

/* The value of lane (this lane ^ offset). */
static inline double qt_emu_exchange(double v, int offset) {
  qt_emu_my_warp->slots[qt_emu_lane] = v;
  __syncwarp();
  double other = qt_emu_my_warp->slots[qt_emu_lane ^ offset];
  __syncwarp();
  return other;
}
static inline float __shfl_xor_sync(unsigned mask, float v, int offset) {
  if (mask != 0xffffffffu) abort(); /* the kernels shuffle over whole warps */
  return (float)qt_emu_exchange(v, offset);
}
static inline double __shfl_xor_sync(unsigned mask, double v, int offset) {
  if (mask != 0xffffffffu) abort();
  return qt_emu_exchange(v, offset);
}
/* CUDA's uncontracted float product and sum: the host's plain ones (x86-64
 * without -mfma contracts nothing). */
static inline float __fmul_rn(float a, float b) {
  return a * b;
}
static inline float __fadd_rn(float a, float b) {
  return a + b;
}
static inline float __fsub_rn(float a, float b) {
  return a - b;
}
static inline float __fdiv_rn(float a, float b) {
  return a / b;
}
static inline float __fsqrt_rn(float a) {
  return sqrtf(a);
}
/* CUDA's pair of BF16 values. */
struct __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
static inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
  return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)};
}
static inline float __bfloat162float(__nv_bfloat16 b) {
  return qt_emu_float(b);
}
static inline float __low2float(__nv_bfloat162 p) {
  return qt_emu_float(p.x);
}
static inline float __high2float(__nv_bfloat162 p) {
  return qt_emu_float(p.y);
}

/* mma.m16n8k16 with BF16 operands: d (16, 8) += a (16, 16) . b (16, 8) in
 * the PTX register layouts (lane = 4 g + t; a: [g][2t..], [g+8][2t..],
 * [g][2t+8..], [g+8][2t+8..]; b: [2t..][g], [2t+8..][g]; d: [g][2t..],
 * [g+8][2t..]). Every lane puts its parts of a and b in the warp's
 * matrices, then reads back what it needs: a kernel that mixes up the
 * layouts gets wrong numbers here as on the device. Products and sums in
 * float, k in order. */
static inline void qt__mma_bf16_16816(float d[4], const __nv_bfloat162 a[4],
                                      const __nv_bfloat162 b[2]) {
  qt_emu_warp *w = qt_emu_my_warp;
  int g = qt_emu_lane / 4, t = qt_emu_lane % 4;
  for (int i = 0; i < 4; i++) {
    int row = g + 8 * (i % 2), col = 2 * t + 8 * (i / 2);
    w->mma_a[row][col] = qt_emu_float(a[i].x);
    w->mma_a[row][col + 1] = qt_emu_float(a[i].y);
  }
  for (int i = 0; i < 2; i++) {
    w->mma_b[2 * t + 8 * i][g] = qt_emu_float(b[i].x);
    w->mma_b[2 * t + 8 * i + 1][g] = qt_emu_float(b[i].y);
  }
  __syncwarp();
  for (int e = 0; e < 4; e++) {
    int row = g + 8 * (e / 2), col = 2 * t + e % 2;
    float sum = d[e];
    for (int k = 0; k < 16; k++) sum += w->mma_a[row][k] * w->mma_b[k][col];
    d[e] = sum;
  }
  __syncwarp();
}

/* ldmatrix.sync.aligned.m8n8.x4 (.trans) .b16: lane 8 i + r gives the
 * address (16-byte aligned) of row r of 8 x 8 matrix i; lane 4 g + t
 * receives in r[i] that matrix's values 2t, 2t + 1 of row g, or with trans
 * those of column g at rows 2t, 2t + 1. */
static inline void qt_emu_ldmatrix_x4(__nv_bfloat162 r[4], const __nv_bfloat16 *row, bool trans) {
  qt_emu_warp *w = qt_emu_my_warp;
  if ((uintptr_t)row % 16 != 0) abort(); /* the device faults */
  w->rows[qt_emu_lane] = row;
  __syncwarp();
  int g = qt_emu_lane / 4, t = qt_emu_lane % 4;
  for (int i = 0; i < 4; i++) {
    if (trans)
      r[i] = {w->rows[8 * i + 2 * t][g], w->rows[8 * i + 2 * t + 1][g]};
    else
      r[i] = {w->rows[8 * i + g][2 * t], w->rows[8 * i + g][2 * t + 1]};
  }
  __syncwarp();
}
/* The device's 16-byte copy (eight BF16 values; 32 bytes under
 * QT_EMULATE_EXACT), on 16-byte boundaries or the device faults. */
template <typename T>
static inline void qt__copy16(T *dst, const T *src) {
  if ((uintptr_t)dst % 16 != 0 || (uintptr_t)src % 16 != 0) abort();
  *dst = *src;
}
/* A vector access of `values` elements at p (qt_cuda_attention_fused.cuh):
 * the device faults unless p is on values * (element size) bytes, here the
 * element's emulated size. */
#define QT_FA_ALIGNED(p, values) \
  ((uintptr_t)(p) % ((values) * sizeof *(p)) != 0 ? abort() : (void)0)
static inline void qt__ldmatrix_x4(__nv_bfloat162 r[4], const __nv_bfloat16 *row) {
  qt_emu_ldmatrix_x4(r, row, false);
}

/* cp.async of eight BF16 values (16 bytes on 16-byte boundaries, or the
 * device faults), held back until the thread's qt__cp_async_wait lets
 * their group land: a body that reads shared memory before it waits, or
 * before the barrier after it, reads the 0xff bytes (NaN) of a fresh
 * block, or what was there. A thread that leaves a block with copies in
 * flight aborts the test. */
struct qt_emu_copy {
  __nv_bfloat16 *dst;
  const __nv_bfloat16 *src;
};
static thread_local std::vector<qt_emu_copy> qt_emu_copies_open;
static thread_local std::vector<std::vector<qt_emu_copy>> qt_emu_copy_groups;
static inline void qt__cp_async16(__nv_bfloat16 *dst, const __nv_bfloat16 *src) {
  if ((uintptr_t)dst % 16 != 0 || (uintptr_t)src % 16 != 0) abort();
  qt_emu_copies_open.push_back({dst, src});
}
static inline void qt__cp_async_commit() {
  qt_emu_copy_groups.push_back(std::move(qt_emu_copies_open));
  qt_emu_copies_open.clear();
}
static inline void qt__cp_async_wait(int pending) {
  if (pending < 0 || pending > 3) abort(); /* the device's immediates */
  while (qt_emu_copy_groups.size() > (size_t)pending) {
    for (const qt_emu_copy &c : qt_emu_copy_groups.front()) memcpy(c.dst, c.src, 8 * sizeof *c.src);
    qt_emu_copy_groups.erase(qt_emu_copy_groups.begin());
  }
}
static inline void qt__ldmatrix_x4_trans(__nv_bfloat162 r[4], const __nv_bfloat16 *row) {
  qt_emu_ldmatrix_x4(r, row, true);
}

/* Runs body(smem, block, thread, threads) for every block in turn, with
 * `threads` (a multiple of 32) host threads and `smem_bytes` of fresh
 * "shared memory" (128-byte aligned, 0xff bytes) per block. One team of
 * threads runs all the blocks, meeting between them: creating a team per
 * block took most of these tests' time. */
template <class Body>
static void qt_emu_launch(int blocks, int threads, size_t smem_bytes, Body body) {
  size_t bytes = (smem_bytes + 127) / 128 * 128;
  unsigned char *smem = (unsigned char *)aligned_alloc(128, bytes ? bytes : 128);
  if (!smem || threads % 32 != 0) abort();
  std::barrier<> block_barrier(threads);
  std::vector<std::unique_ptr<qt_emu_warp>> warps;
  for (int w = 0; w < threads / 32; w++) warps.push_back(std::make_unique<qt_emu_warp>());
  /* The last thread to finish a block gives the next one fresh shared
   * memory, while the others wait. */
  auto fresh = [&]() noexcept { memset(smem, 0xff, bytes); };
  std::barrier<decltype(fresh)> next_block(threads, fresh);
  std::vector<std::thread> team;
  for (int t = 0; t < threads; t++) {
    team.emplace_back([&, t] {
      qt_emu_lane = t % 32;
      qt_emu_my_warp = warps[t / 32].get();
      qt_emu_my_block = &block_barrier;
      for (int block = 0; block < blocks; block++) {
        next_block.arrive_and_wait();
        body(smem, block, t, threads);
        if (!qt_emu_copies_open.empty() || !qt_emu_copy_groups.empty()) abort();
      }
    });
  }
  for (std::thread &thread : team) thread.join();
  free(smem);
}

/* The parity measure of the `gpu` tests (qt_test_gpu.h), for the tests
 * that compare an emulated body with a CPU reference: the largest
 * difference over the largest change from init (NULL: 0); INFINITY for a
 * value that is not finite. */
static inline double qt_emu_parity_error(const std::vector<float> &got,
                                         const std::vector<float> &want,
                                         const std::vector<float> *init) {
  double diff = 0.0, scale = 0.0;
  for (size_t i = 0; i < want.size(); i++) {
    if (!std::isfinite(got[i]) || !std::isfinite(want[i])) return INFINITY;
    diff = fmax(diff, fabs((double)got[i] - want[i]));
    scale = fmax(scale, fabs((double)want[i] - (init ? (*init)[i] : 0.0f)));
  }
  return scale == 0.0 ? (diff == 0.0 ? 0.0 : INFINITY) : diff / scale;
}

#endif /* QT_CUDA_EMULATION_H */

/*
 * qt_cuda_emulation.h - host stand-ins for the CUDA C++ that the kernel
 * bodies in the .cuh files of src/finetune/cuda use, so that a test runs
 * those bodies on the CPU, in CI, without a GPU: the bodies' index arithmetic, masking,
 * padding and barriers are then checked against the CPU references, as the
 * `gpu` tests check the compiled kernels on a device.
 *
 *   - One host thread per CUDA thread; qt_emu_launch runs the blocks one
 *     after the other, the threads of a block at once.
 *   - __syncwarp and __syncthreads are barriers over the warp's 32 threads
 *     and over the block; __shfl_xor_sync exchanges through the warp's
 *     slots between two barriers. A body whose lanes reach them unevenly
 *     hangs (the test's timeout reports it), as it would be undefined on a
 *     device. The barriers order memory, so ThreadSanitizer reports a lane
 *     that reads shared memory another lane wrote without a barrier between.
 *   - WMMA at the level of tiles: every lane's fragment holds the whole
 *     16x16 tile (the device spreads it over the lanes, in a layout the
 *     kernels never rely on), loads check the device's alignment rules
 *     (256-bit pointers, rows a multiple of 16 bytes), mma_sync multiplies
 *     in float, and only lane 0 stores, so a lane that reads a stored tile
 *     before the warp's next barrier reads the old values.
 *   - __nv_bfloat16 rounds to nearest even, as __float2bfloat16_rn, unless
 *     QT_EMULATE_EXACT is defined: then it holds a whole float (twice the
 *     size; the kernels must size their BF16 arrays with sizeof), so the
 *     kernels' results must equal the FP32 references to float rounding,
 *     which checks their algebra apart from BF16's error.
 *   - Shared memory starts as 0xff bytes (NaN as floats and BF16): a body
 *     that reads what it never wrote gives NaN.
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
#include <type_traits>
#include <vector>

#define __device__
#define __host__

#ifdef QT_EMULATE_EXACT
struct __nv_bfloat16 {
  float x;
};
static inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {f}; }
static inline float qt_emu_float(__nv_bfloat16 b) { return b.x; }
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
};
inline thread_local int qt_emu_lane;
inline thread_local qt_emu_warp *qt_emu_my_warp;
inline thread_local std::barrier<> *qt_emu_my_block;

static inline void __syncwarp() { qt_emu_my_warp->barrier.arrive_and_wait(); }
static inline void __syncthreads() { qt_emu_my_block->arrive_and_wait(); }

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
/* qt_cuda_internal.h's warp reductions. */
static inline float qt__warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, (float)qt_emu_exchange(v, offset));
  return v;
}
static inline double qt__warp_sum(double v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += qt_emu_exchange(v, offset);
  return v;
}

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulation has 16x16x16 tiles only");
  float x[16][16];
};

/* WMMA's rules: the pointer 256-bit aligned, ldm a multiple of 16 bytes. */
static inline void qt_emu_check(const void *p, unsigned ldm, size_t size) {
  if ((uintptr_t)p % 32 != 0 || ldm * size % 16 != 0) {
    fprintf(stderr, "wmma: pointer %p or ldm %u breaks the alignment rules\n", p, ldm);
    abort();
  }
}

template <class Use, class T, class L>
void fill_fragment(fragment<Use, 16, 16, 16, T, L> &f, float v) {
  for (auto &row : f.x)
    for (float &e : row) e = v;
}

/* A (i, k) and B (k, n), from row-major or column-major storage. */
template <class Use, class L>
void load_matrix_sync(fragment<Use, 16, 16, 16, __nv_bfloat16, L> &f, const __nv_bfloat16 *p,
                      unsigned ldm) {
  qt_emu_check(p, ldm, sizeof *p);
  bool row_major_storage = std::is_same<L, row_major>::value;
  for (int r = 0; r < 16; r++) {
    for (int c = 0; c < 16; c++) {
      f.x[r][c] = qt_emu_float(row_major_storage ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r]);
    }
  }
}

template <class LA, class LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float> &d,
              const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA> &a,
              const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB> &b,
              const fragment<accumulator, 16, 16, 16, float> &c) {
  fragment<accumulator, 16, 16, 16, float> r;
  for (int i = 0; i < 16; i++) {
    for (int n = 0; n < 16; n++) {
      float sum = c.x[i][n];
      for (int k = 0; k < 16; k++) sum += a.x[i][k] * b.x[k][n];
      r.x[i][n] = sum;
    }
  }
  d = r;
}

static inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f,
                                     unsigned ldm, layout_t layout) {
  qt_emu_check(p, ldm, sizeof *p);
  if (qt_emu_lane != 0) return;
  for (int i = 0; i < 16; i++) {
    for (int n = 0; n < 16; n++) {
      p[layout == mem_row_major ? (size_t)i * ldm + n : (size_t)n * ldm + i] = f.x[i][n];
    }
  }
}
} /* namespace wmma */
} /* namespace nvcuda */

/* Runs body(smem, block, thread, threads) for every block in turn, with
 * `threads` (a multiple of 32) host threads and `smem_bytes` of fresh
 * "shared memory" (128-byte aligned, 0xff bytes) per block. */
template <class Body>
static void qt_emu_launch(int blocks, int threads, size_t smem_bytes, Body body) {
  size_t bytes = (smem_bytes + 127) / 128 * 128;
  unsigned char *smem = (unsigned char *)aligned_alloc(128, bytes ? bytes : 128);
  if (!smem || threads % 32 != 0) abort();
  for (int block = 0; block < blocks; block++) {
    memset(smem, 0xff, bytes);
    std::barrier<> block_barrier(threads);
    std::vector<std::unique_ptr<qt_emu_warp>> warps;
    for (int w = 0; w < threads / 32; w++) warps.push_back(std::make_unique<qt_emu_warp>());
    std::vector<std::thread> team;
    for (int t = 0; t < threads; t++) {
      team.emplace_back([&, t] {
        qt_emu_lane = t % 32;
        qt_emu_my_warp = warps[t / 32].get();
        qt_emu_my_block = &block_barrier;
        body(smem, block, t, threads);
      });
    }
    for (std::thread &thread : team) thread.join();
  }
  free(smem);
}

#endif /* QT_CUDA_EMULATION_H */

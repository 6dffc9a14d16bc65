/*
 * test_emulated_elementwise.cpp - the loop of the elementwise kernels
 * (qt__elementwise, src/finetune/cuda/qt_cuda_common.cuh) run on the
 * CPU through qt_cuda_emulation.h: in place (store where it loads), every
 * element of n is loaded and stored exactly once and only those, for n
 * around a turn's tile (threads x its unroll, QT_CUDA_UNROLL or GELU's 8
 * from BF16) and beyond the grid (more turns than one), with size_t and
 * unsigned indices. The kernels
 * built on it (GELU, the CNN activations, residual, batch norm's
 * elementwise passes) run on a device in the `gpu` tests.
 */
#include "qt_cuda_emulation.h"

#include "finetune/cuda/qt_cuda_common.cuh"

static int failures = 0, checks = 0;

template <typename I, int U = QT_CUDA_UNROLL>
static void loop_case(size_t n, int blocks, int threads) {
  /* One guard element past n, which nothing may touch. */
  std::vector<float> x(n + 1);
  for (size_t i = 0; i <= n; i++) x[i] = (float)i;
  std::vector<int> loads(n + 1, 0);
  float *data = x.data();
  int *count = loads.data();
  qt_emu_launch(blocks, threads, 0, [&](unsigned char *, int block, int tid, int team) {
    qt__elementwise<U>((I)n, (unsigned)block, (unsigned)blocks, (unsigned)tid, (unsigned)team,
                       [=](I i) {
                         __atomic_fetch_add(&count[i], 1, __ATOMIC_RELAXED);
                         return data[i];
                       },
                       [=](I i, float v) { data[i] = v + 1.0f; });
  });
  size_t off = 0;
  for (size_t i = 0; i < n; i++) off += x[i] != (float)i + 1.0f || loads[i] != 1;
  off += x[n] != (float)n || loads[n] != 0;
  checks++;
  if (off) {
    printf("FAIL n %zu, %d blocks of %d (%zu-byte index, unroll %d): %zu elements wrong\n", n,
           blocks, threads, sizeof(I), U, off);
    failures++;
  }
}

int main(void) {
  size_t sizes[] = {0, 1, 31, 127, 128, 129, 3 * 128 + 5, 5000};
  for (size_t n : sizes) {
    loop_case<size_t>(n, 3, 32);
    loop_case<unsigned>(n, 3, 32);
    loop_case<size_t>(n, 1, 64);
    loop_case<unsigned, 8>(n, 3, 32);
    loop_case<size_t, 8>(n, 1, 64);
  }
  printf("%d checks, %d failed\n", checks, failures);
  return failures ? 1 : 0;
}

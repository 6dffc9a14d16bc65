/*
 * qt_cuda_elementwise.cuh - the loop of the elementwise kernels (included
 * by qt_cuda_internal.h): each thread takes QT_CUDA_UNROLL elements a
 * block apart per turn and issues all their loads before it stores any.
 * With one element at a time, a thread's next load waits for its store
 * (the compiler cannot tell that they do not alias), and the 64 warps of a
 * multiprocessor keep about 8 KB in flight, too little to fill a large
 * device's memory bandwidth: GELU's forward ran at about 1.9 TB/s on an
 * H100 that way. An element is loaded and stored by the same thread, so a
 * kernel may write where it reads (in place).
 *
 * This file holds only __device__ code over the primitives of CUDA C++
 * (threadIdx-free: the caller passes its block and thread), so that a host
 * emulation can include it (tests/qt_cuda_emulation.h).
 */
#ifndef QT_CUDA_ELEMENTWISE_CUH
#define QT_CUDA_ELEMENTWISE_CUH

#define QT_CUDA_UNROLL 4 /* elements per thread and turn */

/* For every element i < n: store(i, load(i)), by thread `thread` of
 * `threads` in block `block` of `blocks`; I is the index type (unsigned
 * where the kernel's index arithmetic allows it, see
 * qt__cuda_int_indices). Load returns a value (a struct for several
 * arrays), Store takes it back. */
template <typename I, class Load, class Store>
__device__ inline void qt__elementwise(I n, unsigned block, unsigned blocks, unsigned thread,
                                       unsigned threads, Load load, Store store) {
  I tile = (I)threads * QT_CUDA_UNROLL, stride = (I)blocks * tile;
  for (I base = (I)block * tile + thread; base < n; base += stride) {
    decltype(load(base)) v[QT_CUDA_UNROLL] = {};
#pragma unroll
    for (int u = 0; u < QT_CUDA_UNROLL; u++) {
      I i = base + (I)u * threads;
      if (i < n) v[u] = load(i);
    }
#pragma unroll
    for (int u = 0; u < QT_CUDA_UNROLL; u++) {
      I i = base + (I)u * threads;
      if (i < n) store(i, v[u]);
    }
  }
}

#endif /* QT_CUDA_ELEMENTWISE_CUH */

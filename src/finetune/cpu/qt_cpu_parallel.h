/*
 * qt_cpu_parallel.h - the CPU ops' worker threads: a loop over [0, n) cut
 * into pieces that the calling thread and the workers take in turn.
 *
 * OpenBLAS runs the products on its own threads; every other op of the
 * engine used to run on the calling thread alone. The ops that split
 * (element-wise ones by ranges of values, row-wise ones by rows, column
 * sums by columns, the attention by (image, head) pairs) write disjoint
 * parts of their outputs and sum nothing across pieces, so their results do
 * not depend on how many threads ran them, nor on which took which piece
 * (test_cpu_parallel compares them bit for bit at 1, 2 and 3 threads).
 *
 * The thread count is OpenBLAS's (openblas_get_num_threads: all processors
 * unless OPENBLAS_NUM_THREADS or openblas_set_num_threads says otherwise),
 * so that one setting governs every CPU op; the workers are started on
 * first use, at most QT_CPU_MAX_THREADS - 1 of them, and sleep between
 * jobs. One job runs at a time: a call made while another thread's job
 * runs, or from inside a piece, runs its loop on its own thread.
 */
#ifndef QT_CPU_PARALLEL_H
#define QT_CPU_PARALLEL_H

#include <cblas.h>
#include <stddef.h>

#define QT_CPU_MAX_THREADS 64

/* The fewest values of an element-wise op worth a piece of their own
 * (64 KiB of floats: some tens of microseconds of work, against a worker's
 * wake-up of a few to some tens), a multiple of 16, so that pieces of an
 * array that starts on a cache line do too. Row-wise ops take as many rows
 * as hold as many values. */
#define QT_CPU_VALUES_GRAIN 16384

/* Items (rows, channels, blocks of columns) per piece of an op whose items
 * hold `values` values each: as many as hold QT_CPU_VALUES_GRAIN, at least
 * one. */
static inline size_t qt__cpu_items_grain(size_t values) {
  return values >= QT_CPU_VALUES_GRAIN || values == 0 ? 1 : QT_CPU_VALUES_GRAIN / values;
}

/* One piece of a job: [begin, end) of its n items. scratch is NULL on the
 * calling thread (which uses what its caller gave it) and, on a worker,
 * the worker's own block of at least the job's scratch_bytes. */
typedef void (*qt__cpu_piece_fn)(void *job, size_t begin, size_t end, void *scratch);

/* Flags of a job. */
enum {
  /* The pieces call BLAS: while they run, OpenBLAS takes one thread a call
   * (the pieces are the threads), whether the job runs on several threads
   * or one. So OpenBLAS's own threads never wake for the engine's products
   * and do not spin beside the workers, and a product's bits do not depend
   * on the thread count (test_cpu_parallel). */
  QT_CPU_PARALLEL_BLAS = 1u << 0,
  /* Each piece is exactly grain items (the last one fewer), whatever the
   * thread count: for pieces whose results depend on their bounds. */
  QT_CPU_PARALLEL_EXACT = 1u << 1
};

/* Runs fn over [0, n) in pieces whose bounds are multiples of grain (at
 * least grain items each, the last one shorter; a few pieces a thread),
 * on up to the thread count threads, and returns when every piece has run. A worker that cannot get
 * scratch_bytes of scratch, or a thread that cannot be started, leaves its
 * share to the others: the loop always runs to its end. */
void qt__cpu_parallel_for(size_t n, size_t grain, size_t scratch_bytes, unsigned flags,
                          qt__cpu_piece_fn fn, void *job);

/* cblas_sgemm, row-major: C (m, n) = alpha op(A) op(B) + beta C, with C
 * cut into blocks of rows (of columns where C has more columns than rows),
 * each one OpenBLAS call on one thread, on the worker threads
 * (QT_CPU_PARALLEL_BLAS, QT_CPU_PARALLEL_EXACT). How OpenBLAS sums a value
 * of C depends on the call's shape (a block of fewer than about a million
 * multiply-adds takes its small-matrix kernels, whose order differs), so
 * the blocks depend on the shape alone, whatever the thread count: at most
 * QT_CPU_GEMM_BLOCKS of them, each a multiple of 64 rows and at least
 * QT_CPU_GEMM_MIN_BLOCK (the last one shorter). */
#define QT_CPU_GEMM_BLOCKS 32
#define QT_CPU_GEMM_MIN_BLOCK 128
void qt__cpu_sgemm(CBLAS_TRANSPOSE trans_a, CBLAS_TRANSPOSE trans_b, int m, int n, int k,
                   float alpha, const float *a, int lda, const float *b, int ldb, float beta,
                   float *c, int ldc);

/* An element-wise op's loop over n values: forward, out = f(inp); backward,
 * dinp += f'(inp) dout. qt__cpu_parallel_values and _gradients run it
 * over ranges of QT_CPU_VALUES_GRAIN values or more on the worker threads
 * (out may be inp). */
typedef void (*qt__cpu_values_fn)(float *out, const float *inp, size_t n);
typedef void (*qt__cpu_gradients_fn)(float *dinp, const float *dout, const float *inp, size_t n);
void qt__cpu_parallel_values(qt__cpu_values_fn fn, float *out, const float *inp, size_t n);
void qt__cpu_parallel_gradients(qt__cpu_gradients_fn fn, float *dinp, const float *dout,
                                const float *inp, size_t n);

/* The thread count a job started now would use (1 when it would run on the
 * calling thread alone). */
size_t qt__cpu_parallel_threads(void);

#endif /* QT_CPU_PARALLEL_H */

/*
 * qt_cuda_internal.h - helpers shared by the .cu files of finetune/cuda/.
 * Included only from CUDA C++ sources (it needs cuda_runtime.h); not part of
 * the public API.
 */
#ifndef QT_CUDA_INTERNAL_H
#define QT_CUDA_INTERNAL_H

#include <limits.h>
#include <math.h>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "core/qt_core.h"
#include "finetune/cuda/qt_cuda_colsum.cuh"
#include "finetune/cuda/qt_cuda_common.cuh"

extern "C" {

/* Maps a CUDA runtime status to a QT_E* code: cudaErrorMemoryAllocation is
 * QT_ENOMEM, cudaErrorInvalidValue QT_EINVAL, anything else QT_ENODEV (no
 * usable device, or the device failed). cudaSuccess is 0. */
int qt__cuda_code(cudaError_t status);

/* Records "<what>: <CUDA's sentence> (<CUDA's error name>)" in err under the
 * mapped code and returns that code. */
int qt__cuda_error(qt_err *err, cudaError_t status, const char *what);

/* Reports a failed kernel launch: checks cudaGetLastError() and, on failure,
 * records "<who>: launching <kernel>: <CUDA's text>" and returns the mapped
 * code; 0 when the launch succeeded. */
int qt__cuda_check_launch(qt_err *err, const char *who, const char *kernel);

/* The same mapping for cuBLAS statuses: CUBLAS_STATUS_ALLOC_FAILED is
 * QT_ENOMEM, CUBLAS_STATUS_INVALID_VALUE QT_EINVAL, anything else
 * QT_ENODEV. Records "<what>: <cuBLAS's name>" and returns the code. */
int qt__cublas_error(qt_err *err, cublasStatus_t status, const char *what);

/* The stream that the calling thread's work is queued on: the one
 * qt_cuda_stream_use made current, else 0, the legacy default stream.
 * Every launch, asynchronous copy and cuBLAS call of the ops takes it. */
cudaStream_t qt__cuda_stream(void);

/* The cuBLAS handle of the calling thread's stream (bound to it): a
 * created stream's own, else its device's default one, created on first
 * use and never destroyed. */
int qt__cublas_handle(cublasHandle_t *handle, const char *who, qt_err *err);

/* A switch that the environment variable `name` turns off with "0" (on
 * otherwise), read once into *state (-1 until then; a static of the
 * caller's), for choices of this code worth measuring both ways. */
int qt__cuda_switch_on(const char *name, int *state);

/* Sets such a switch on (1) or off (0), whatever the environment says;
 * returns its previous setting. */
int qt__cuda_set_switch(const char *name, int *state, int on);

/* The qt_matmul_precision that qt_cuda_set_matmul_precision set last. */
int qt__cuda_matmul_precision(void);

/* Row-major single-precision GEMM on the thread's stream:
 *   C (m, n) = alpha * op(A) (m, k) . op(B) (k, n) + beta * C
 * with op(X) = X or X^T (trans_a, trans_b nonzero), lda, ldb, ldc the row
 * strides of the matrices as stored, and `batch` matrices spaced
 * stride_a, stride_b, stride_c floats apart (batch 1: strides unused).
 * Computes in the precision of qt_cuda_set_matmul_precision (QT_MATMUL_BF16:
 * the operands' spans are rounded into device scratch first). m, n, k, the
 * leading dimensions and batch must fit an int (QT_EINVAL otherwise);
 * m, n or batch 0 is a no-op, k 0 scales C by beta. */
int qt__cuda_gemm(int trans_a, int trans_b, size_t m, size_t n, size_t k, float alpha,
                  const float *a, size_t lda, long long stride_a, const float *b, size_t ldb,
                  long long stride_b, float beta, float *c, size_t ldc, long long stride_c,
                  size_t batch, const char *who, qt_err *err);

/* One product of qt__cuda_gemm's, its arguments in that order; what a
 * designated initializer leaves out is 0, batch 1. */
typedef struct qt__cuda_product {
  int trans_a = 0, trans_b = 0;
  size_t m = 0, n = 0, k = 0;
  float alpha = 1.0f;
  const float *a = nullptr;
  size_t lda = 0;
  long long stride_a = 0;
  const float *b = nullptr;
  size_t ldb = 0;
  long long stride_b = 0;
  float beta = 0.0f;
  float *c = nullptr;
  size_t ldc = 0;
  long long stride_c = 0;
  size_t batch = 1;
  /* A or B already in BF16 (as stored, in place of a or b): such a
   * product runs with BF16 operands whatever the precision, rounding only
   * the other operand. */
  const void *a16 = nullptr, *b16 = nullptr;
  /* C written in BF16 (in place of c; its FP32 sums rounded to nearest
   * even), for a product with BF16 operands and beta 0 (QT_EINVAL
   * otherwise). */
  void *c16 = nullptr;
} qt__cuda_product;

/* qt__cuda_gemm of `count` products in order, all in the precision of the
 * call's start. Under QT_MATMUL_BF16 a product whose A is the previous
 * product's (the same array and span) is not rounded again, unless the
 * previous product wrote into it: for pairs such as the linear backward's,
 * whose two products both read the output's gradient. */
int qt__cuda_gemms(const qt__cuda_product *products, size_t count, const char *who, qt_err *err);

/* qt__cuda_gemm whose FP32 operands cuBLAS converts itself under
 * QT_MATMUL_BF16 (as QT_MATMUL_BF16_FAST), instead of their spans being
 * rounded into scratch first: for operands interleaved in a larger array,
 * such as attention's heads in the rows of qkv (rounding the spans they
 * occupy would copy most of that array at every call), and for the
 * convolutions' products (qt_cuda_conv.cu). Any other precision is
 * qt__cuda_gemm's. */
int qt__cuda_gemm_convert(int trans_a, int trans_b, size_t m, size_t n, size_t k, float alpha,
                          const float *a, size_t lda, long long stride_a, const float *b,
                          size_t ldb, long long stride_b, float beta, float *c, size_t ldc,
                          long long stride_c, size_t batch, const char *who, qt_err *err);

/* qt_cuda_linear_forward's product with the bias in cuBLASLt's epilogue,
 * unless switched off (qt__cuda_set_lt_bias, in qt_finetune_internal.h, with
 * qt__cuda_linear_lt_count, which counts them), its input in FP32 (inp) or
 * BF16 (inp16), its weight rounded here or given rounded (weight16, under
 * BF16 products), its output in FP32 or (out_bf16) BF16: 0 when queued, 1
 * when the caller must broadcast the bias and multiply instead. */
int qt__cuda_linear_bias_lt(void *out, int out_bf16, const float *inp, const void *inp16,
                            const float *weight, const void *weight16, const float *bias, size_t n,
                            size_t in_c, size_t out_c, const char *who);

/* A linear forward's weight rounded to BF16 (round to nearest even, as
 * the products round it) into a block of the thread's stream kept for
 * the weight's address, queued on the stream: its copy, valid until
 * qt__cuda_kept_weight takes it; NULL on the default stream, with
 * QT_CUDA_KEEP_WEIGHTS=0 (qt__cuda_set_keep_weights), or without room,
 * where the products round the weight as before. The op table's
 * QT__BF16_KEEP_WEIGHT. */
const void *qt__cuda_keep_weight(const float *weight, size_t elements);
/* The copy that qt__cuda_keep_weight kept for weight (of `elements`) on
 * the thread's stream, taken (the next call finds none until a forward
 * keeps it again); NULL where there is none. QT__BF16_KEPT_WEIGHT: the
 * caller promises that the weight has not changed since. */
const void *qt__cuda_kept_weight(const float *weight, size_t elements);

/* QT_EINVAL where bf16 (QT__BF16_*) names an array that the op does not
 * take in BF16 (not in `implemented`), or any BF16 array while the
 * products are not BF16; else 0. For the op table's _bf16 ops. */
int qt__cuda_check_bf16(unsigned bf16, unsigned implemented, const char *who, qt_err *err);

/* Whether the op table's attention takes the fused kernels for this
 * shape now: under BF16 products (either kind), unless turned off
 * (qt__cuda_set_fused_attention), where they fit the device. */
int qt__cuda_attention_fused_now(size_t batch, size_t tokens, size_t c, size_t heads);

/* qt_cuda_residual_forward with the branch in FP32 or (branch_bf16) BF16
 * (a branch output kept in BF16, QT__KEEP_BRANCH). */
int qt__cuda_residual_forward_any(float *out, const float *res, const void *branch, int branch_bf16,
                                  const float *gamma, size_t n, size_t c, qt_err *err);

/* qt__cuda_gelu_backward with its output gradient and its input each in
 * FP32 or (dout_bf16, inp_bf16) BF16: GELU's output gradient and fc1's
 * output kept in BF16 (QT__KEEP_HIDDEN_GRAD, QT__KEEP_HIDDEN). */
int qt__cuda_gelu_backward_any(float *dinp, const void *dout, int dout_bf16, const void *inp,
                               int inp_bf16, size_t n, int set, qt_err *err);

/* out (n BF16 values) = in (n floats) rounded to nearest even, queued. */
int qt__cuda_round_bf16(void *out, const float *in, size_t n, const char *who, qt_err *err);

/* The thread's stream's scratch for the partial sums of a reduction split
 * into chunks: at least `doubles` doubles in *out, locked for the caller's
 * passes (queued on that stream) until qt__cuda_sums_scratch_unlock.
 * On failure (out of memory, no device) nothing stays locked. */
int qt__cuda_sums_scratch_lock(size_t doubles, double **out, const char *who, qt_err *err);
void qt__cuda_sums_scratch_unlock(void);

/* The same for float partial products that are then summed, such as a
 * pointwise convolution's weight gradient image by image: at least `floats`
 * floats. The caller may take the sums scratch (qt__cuda_column_sums, say)
 * while it holds this one, not the reverse. */
int qt__cuda_products_scratch_lock(size_t floats, float **out, const char *who, qt_err *err);
void qt__cuda_products_scratch_unlock(void);

/* The same for a BF16 copy of an operand of qt__cuda_gemms (its a16 or
 * b16) that its producer rounds: at least `elements` BF16 values. The
 * caller may run products and column sums while it holds this one. */
int qt__cuda_rounded_scratch_lock(size_t elements, void **out, const char *who, qt_err *err);
void qt__cuda_rounded_scratch_unlock(void);

/* The thread's stream's cuDNN handle (*out, an opaque cudnnHandle_t),
 * made by `make` bound to the stream on first use and destroyed with the
 * stream (qt__cudnn_destroy), locked for the caller's calls until
 * qt__cuda_dnn_unlock (a handle takes one host thread at a time): 0.
 * Otherwise what `make` returned (a QT_E* code, or 1: no handle, no
 * error), nothing locked. */
int qt__cuda_dnn_lock(void **out, int (*make)(void **handle, cudaStream_t stream, qt_err *err),
                      const char *who, qt_err *err);
void qt__cuda_dnn_unlock(void);
void qt__cudnn_destroy(void *handle);

/* A pass of a convolution through cuDNN (qt_cuda_cudnn.cu), queued on the
 * thread's stream with the caller's scratch (qt_cuda_conv2d_scratch_size
 * floats) as its workspace:
 *   QT__CUDNN_FORWARD          out (y) = conv(a = x, b = w) + beta out
 *   QT__CUDNN_BACKWARD_DATA    out (dx) = the input gradient from
 *                              a = w, b = dy, + beta out
 *   QT__CUDNN_BACKWARD_FILTER  out (dw) = the weight gradient from
 *                              a = x, b = dy, + beta out
 * 0 when queued, 1 when the caller runs its own kernels (cuDNN absent or
 * switched off, a shape it does not take, BF16 products, no algorithm
 * that qualifies), or a QT_E* code. */
typedef enum qt__cudnn_pass {
  QT__CUDNN_FORWARD,
  QT__CUDNN_BACKWARD_DATA,
  QT__CUDNN_BACKWARD_FILTER
} qt__cudnn_pass;
int qt__cuda_cudnn_conv(qt__cudnn_pass pass, float *out, const float *a, const float *b, float beta,
                        float *scratch, const qt_conv2d_shape *s, const char *who, qt_err *err);

/* The thread's stream's counters of finished blocks per column tile (at
 * least `tiles`, each 0 between launches: the last block of a tile sets
 * it back, qt_colsum::last_of_tile), for a launch that holds the sums'
 * scratch (the lock orders the launches that use them). */
int qt__cuda_tile_counters(unsigned **out, size_t tiles, const char *who, qt_err *err);

/* Column sums in double over the n rows of (n, c) float arrays, each
 * column's total rounded to float and added to dst0[col] (and dst1[col]),
 * queued on the thread's stream (qt_cuda_colsum.cu). Kinds:
 *   QT__COLSUM_PLAIN      dst0 += sum of a (a bias gradient, a = dout)
 *   QT__COLSUM_PRODUCT    dst0 += sum of (double) a * b (a layer scale's)
 *   QT__COLSUM_LAYERNORM  dst0 += sum of (double) (dy * xhat) and dst1 +=
 *                         sum of dy, with a = dy, b the layer norm's input,
 *                         xhat = (b - mean[row]) * rstd[row] in float (its
 *                         weight and bias gradients)
 * A NULL dst is skipped. The order of the additions depends only on (n,
 * c): the rows are split into ceil(n / 256) chunks (fewer when the columns
 * alone need many blocks), summed per chunk and then over the chunks in
 * order. */
/* QT__COLSUM_PLAIN, _PRODUCT, _LAYERNORM: qt_cuda_colsum.cuh. */
int qt__cuda_column_sums(int kind, float *dst0, float *dst1, const float *a, const float *b,
                         const float *mean, const float *rstd, size_t n, size_t c, const char *who,
                         qt_err *err);
/* The same with a in FP32 or (a_bf16) BF16 values (a gradient its
 * producer wrote in BF16): QT__COLSUM_PLAIN and _LAYERNORM. */
int qt__cuda_column_sums_any(int kind, float *dst0, float *dst1, const void *a, int a_bf16,
                             const float *b, const float *mean, const float *rstd, size_t n,
                             size_t c, const char *who, qt_err *err);

/* dst_o[col] += the sum, in double over the chunks in a fixed order, of
 * partial[(o * chunks + chunk) * c + col], rounded to float (o = 0, 1; a
 * NULL dst is skipped): the last pass of column sums that a kernel of
 * another file split into chunks, as qt__cuda_column_sums does. */
int qt__cuda_column_partials_add(float *dst0, float *dst1, const double *partial, size_t chunks,
                                 size_t c, const char *who, qt_err *err);

/* QT__COLSUM_PLAIN's sums (dst += the column sums of a, as above) that
 * also write a rounded to BF16 (to nearest even) into copy (n, c), in the
 * same pass over a: the bias gradient and the BF16 dout of a linear
 * backward under BF16 products. */
int qt__cuda_column_sums_rounding(float *dst, void *copy, const float *a, size_t n, size_t c,
                                  const char *who, qt_err *err);

/* The same for the gradient g that GELU passes back (as
 * qt__cuda_gelu_backward writes it with `set`) from dout at its output
 * and its input pre (each FP32, or BF16 when dout_bf16, pre_bf16), both
 * (n, c), without writing g in FP32: dst += the column sums of g, copy =
 * g rounded to BF16. The MLP's GELU and the bias gradient of the linear
 * layer before it, under BF16 products. */
int qt__cuda_column_sums_gelu_rounding(float *dst, void *copy, const void *dout, int dout_bf16,
                                       const void *pre, int pre_bf16, size_t n, size_t c,
                                       const char *who, qt_err *err);

} /* extern "C" */

/* ------------------------------------------------------------------------- */
/* Device helpers (static inline: nothing is exported)                        */
/* ------------------------------------------------------------------------- */

/* Threads per block of the row kernels (one block per row) and of the
 * elementwise kernels. A multiple of 32: the reductions below rely on it. */
#define QT_CUDA_THREADS 256
/* The column-sum kernels run blocks of (32, 8) threads under the launch
 * bound QT_CUDA_THREADS. */
static_assert(32 * 8 == QT_CUDA_THREADS, "column-sum blocks are (32, 8) threads");
/* Cap on the grid of the grid-stride elementwise kernels. */
#define QT_CUDA_MAX_BLOCKS 65536

/* Whether a grid-stride kernel may do its index arithmetic in int for
 * arrays of up to `count` elements: every index and the loop's last step
 * (at most QT_CUDA_MAX_BLOCKS * QT_CUDA_THREADS * QT_CUDA_UNROLL = 2^26
 * past the end, in qt__elementwise) stay below INT_MAX. Kernels that split
 * a flat index into coordinates divide per element, and a 64-bit division
 * costs several times a 32-bit one. */
static inline bool qt__cuda_int_indices(size_t count) {
  return count <= (size_t)INT_MAX - (size_t)QT_CUDA_MAX_BLOCKS * QT_CUDA_THREADS * QT_CUDA_UNROLL;
}

/* Kernels with one warp per row (rows of a few hundred values, too few for
 * a block and its block-wide reductions) run this many rows per block. */
#define QT_CUDA_WARP_ROWS (QT_CUDA_THREADS / 32)

/* Blocks for `rows` rows, one warp each; rows must fit an int. */
static inline unsigned qt__cuda_row_blocks(size_t rows) {
  return (unsigned)((rows + QT_CUDA_WARP_ROWS - 1) / QT_CUDA_WARP_ROWS);
}

static __device__ __forceinline__ float qt__warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

/* Block-wide sum of one double per thread, for a one-dimensional block of a
 * multiple of 32 threads (at most 1024): every thread gets the total.
 * `shared` is 32 doubles of shared memory. All threads of the block must
 * call it; it synchronizes the block before it writes `shared` (so that a
 * previous call's readers are done) and before it returns, so it may be
 * called repeatedly with the same buffer. */
static __device__ __forceinline__ double qt__block_sum(double v, double *shared) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = qt__warp_sum(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    double w = lane < warps ? shared[lane] : 0.0;
    w = qt__warp_sum(w);
    if (lane == 0) shared[0] = w;
  }
  __syncthreads();
  return shared[0];
}

/* The same for the maximum of floats (NaN-free inputs). */
static __device__ __forceinline__ float qt__block_max(float v, float *shared) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = qt__warp_max(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float w = lane < warps ? shared[lane] : -INFINITY;
    w = qt__warp_max(w);
    if (lane == 0) shared[0] = w;
  }
  __syncthreads();
  return shared[0];
}

/* Blocks for a grid-stride loop over n elements. */
static inline unsigned qt__cuda_blocks(size_t n) {
  size_t blocks = (n + QT_CUDA_THREADS - 1) / QT_CUDA_THREADS;
  if (blocks > QT_CUDA_MAX_BLOCKS) blocks = QT_CUDA_MAX_BLOCKS;
  return blocks == 0 ? 1u : (unsigned)blocks;
}

/* Blocks for qt__elementwise over n elements (unroll per thread and
 * turn, its U). */
static inline unsigned qt__cuda_elementwise_blocks(size_t n, size_t unroll = QT_CUDA_UNROLL) {
  return qt__cuda_blocks((n + unroll - 1) / unroll);
}

#endif /* QT_CUDA_INTERNAL_H */

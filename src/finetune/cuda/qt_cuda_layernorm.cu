/*
 * qt_cuda_layernorm.cu - layer norm on a CUDA device, the twin of
 * cpu/qt_cpu_layernorm.c. One warp per row; the row statistics are reduced
 * in double exactly as the CPU does (two passes: mean, then the biased
 * variance around it), so mean and rstd agree with the CPU's to the last
 * float bit or one unit of it. The weight and bias gradients are column
 * sums over the rows, in float per warp and then in double (the CPU adds
 * them row by row in float, so there the GPU is the more accurate side).
 * See qt_finetune.h.
 *
 * Rows of at most QT_LN_MAX_C (1024) features take the kernels of
 * qt_cuda_layernorm.cuh, which hold a row in registers and take the
 * backward's column sums in the same pass; wider rows, and every row while
 * qt__cuda_set_layernorm_rows(0) (or QT_CUDA_LAYERNORM_ROWS=0) has them
 * off, the loop kernels below and qt__cuda_column_sums.
 */
#include <limits.h>
#include <math.h>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "finetune/cuda/qt_cuda_internal.h"

#include "finetune/cuda/qt_cuda_layernorm.cuh"

static_assert(QT_LN_WARPS * 32 == QT_CUDA_THREADS, "a block of the row kernels is 8 warps");

/* 1: rows of at most QT_LN_MAX_C features take the row kernels (unless
 * QT_CUDA_LAYERNORM_ROWS=0); -1 until the environment has been read. */
static int rows_switch = -1;

extern "C" int qt__cuda_set_layernorm_rows(int on) {
  return qt__cuda_set_switch("QT_CUDA_LAYERNORM_ROWS", &rows_switch, on);
}

static int rows_kernels(size_t c) {
  return c <= QT_LN_MAX_C && qt__cuda_switch_on("QT_CUDA_LAYERNORM_ROWS", &rows_switch);
}

/* 1: the row backward keeps its column sums in shared memory where the
 * rows allow (QT_LN_SHARED_MAX_C), unless QT_CUDA_LN_SHARED_SUMS=0; -1
 * until the environment has been read. */
static int shared_sums_switch = -1;

extern "C" int qt__cuda_set_layernorm_shared_sums(int on) {
  return qt__cuda_set_switch("QT_CUDA_LN_SHARED_SUMS", &shared_sums_switch, on);
}

static bool shared_sums(size_t c) {
  return c <= QT_LN_SHARED_MAX_C &&
         qt__cuda_switch_on("QT_CUDA_LN_SHARED_SUMS", &shared_sums_switch);
}

template <int VEC, typename T>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    layernorm_rows_forward_kernel(T *__restrict__ out, float *__restrict__ mean,
                                  float *__restrict__ rstd, const float *__restrict__ inp,
                                  const float *__restrict__ weight, const float *__restrict__ bias,
                                  size_t n, size_t c, float eps) {
  size_t row = (size_t)blockIdx.x * QT_LN_WARPS + threadIdx.x / 32;
  if (row >= n) return; /* the whole warp */
  qt_ln::forward_row<VEC>(out + row * c, mean + row, rstd + row, inp + row * c, weight, bias, c,
                          eps, threadIdx.x % 32);
}

template <int VEC, typename T, typename B>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    residual_layernorm_rows_kernel(float *out, T *__restrict__ norm, float *__restrict__ mean,
                                   float *__restrict__ rstd, const float *res,
                                   const B *__restrict__ branch, const float *__restrict__ gamma,
                                   const float *__restrict__ weight, const float *__restrict__ bias,
                                   size_t n, size_t c, float eps) {
  size_t row = (size_t)blockIdx.x * QT_LN_WARPS + threadIdx.x / 32;
  if (row >= n) return; /* the whole warp */
  qt_ln::residual_forward_row<VEC>(out + row * c, norm + row * c, mean + row, rstd + row,
                                   res + row * c, branch + row * c, gamma, weight, bias, c, eps,
                                   threadIdx.x % 32);
}

/* The row backward's blocks per multiprocessor. Sums in registers: two up
 * to 24 values per lane, so that ViT-B's 263 chunks run in one wave on an
 * H100: 128 registers (ptxas, sm_90: 28 bytes spilled; 156 registers
 * unbounded). With 32 (ViT-L) 255 registers and 152 bytes spilled either
 * way. Sums in shared memory (SHARED): three, 80 registers and 28 bytes
 * spilled at 24 values (28 and 44 with FP32 and BF16 dy in registers),
 * with 48 KB of shared memory a block; ViT-B's 394 chunks in one wave. */
static constexpr int backward_blocks(int vec, bool shared) {
  return shared ? 3 : vec <= 24 ? 2 : 1;
}

template <int VEC, bool SHARED, typename D>
static __global__ void __launch_bounds__(QT_CUDA_THREADS, backward_blocks(VEC, SHARED))
    layernorm_rows_backward_kernel(float *dinp, float *dweight, float *dbias, double *partial,
                                   const D *__restrict__ dout, const float *__restrict__ inp,
                                   const float *__restrict__ weight, const float *__restrict__ mean,
                                   const float *__restrict__ rstd, size_t n, size_t c,
                                   size_t rows_per_chunk, int chunks) {
  static_assert(!SHARED || VEC * 32 <= QT_LN_SHARED_MAX_C, "48 KB of shared sums at most");
  __shared__ float red[SHARED ? 2 * QT_LN_WARPS * 32 * VEC : QT_LN_WARPS * QT_LN_MAX_C];
  qt_ln::backward_block<VEC, SHARED>(red, dinp, dweight, dbias, partial, dout, inp, weight, mean,
                                     rstd, n, c, rows_per_chunk, chunks, blockIdx.x, threadIdx.x,
                                     blockDim.x);
}

template <typename T>
static void launch_rows_forward(T *out, float *mean, float *rstd, const float *inp,
                                const float *weight, const float *bias, size_t n, size_t c,
                                float eps) {
  unsigned blocks = (unsigned)((n + QT_LN_WARPS - 1) / QT_LN_WARPS);
  switch (qt_ln::vec_for(c)) {
#define QT_LN_FORWARD(VEC)                                                                 \
  case VEC:                                                                                \
    layernorm_rows_forward_kernel<VEC><<<blocks, QT_CUDA_THREADS, 0, qt__cuda_stream()>>>( \
        out, mean, rstd, inp, weight, bias, n, c, eps);                                    \
    break;
    QT_LN_FORWARD(8)
    QT_LN_FORWARD(16)
    QT_LN_FORWARD(24)
    QT_LN_FORWARD(32)
#undef QT_LN_FORWARD
  }
}

template <typename T, typename B>
static void launch_residual_rows(float *out, T *norm, float *mean, float *rstd, const float *res,
                                 const B *branch, const float *gamma, const float *weight,
                                 const float *bias, size_t n, size_t c, float eps) {
  unsigned blocks = (unsigned)((n + QT_LN_WARPS - 1) / QT_LN_WARPS);
  switch (qt_ln::vec_for(c)) {
#define QT_LN_RESIDUAL(VEC)                                                                 \
  case VEC:                                                                                 \
    residual_layernorm_rows_kernel<VEC><<<blocks, QT_CUDA_THREADS, 0, qt__cuda_stream()>>>( \
        out, norm, mean, rstd, res, branch, gamma, weight, bias, n, c, eps);                \
    break;
    QT_LN_RESIDUAL(8)
    QT_LN_RESIDUAL(16)
    QT_LN_RESIDUAL(24)
    QT_LN_RESIDUAL(32)
#undef QT_LN_RESIDUAL
  }
}

/* The row backward's kernel for rows of VEC values per lane, its sums in
 * shared memory where `shared` and VEC allow it. */
template <int VEC, typename D>
static void launch_backward(bool shared, int chunks, float *dinp, float *dweight, float *dbias,
                            double *partial, const D *dout, const float *inp, const float *weight,
                            const float *mean, const float *rstd, size_t n, size_t c,
                            size_t rows_per_chunk) {
  if constexpr (VEC * 32 <= QT_LN_SHARED_MAX_C) {
    if (shared) {
      layernorm_rows_backward_kernel<VEC, true><<<chunks, QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
          dinp, dweight, dbias, partial, dout, inp, weight, mean, rstd, n, c, rows_per_chunk,
          chunks);
      return;
    }
  }
  layernorm_rows_backward_kernel<VEC, false><<<chunks, QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
      dinp, dweight, dbias, partial, dout, inp, weight, mean, rstd, n, c, rows_per_chunk, chunks);
}

/* The row kernel's backward and, with several chunks, the partial sums'
 * total. */
template <typename D>
static int rows_backward(float *dinp, float *dweight, float *dbias, const D *dout, const float *inp,
                         const float *weight, const float *mean, const float *rstd, size_t n,
                         size_t c, const char *who, qt_err *err) {
  bool shared = shared_sums(c);
  size_t rows_per_chunk;
  int chunks;
  qt_ln::backward_plan(n, shared, &rows_per_chunk, &chunks);
  double *partial = NULL;
  int sums = (dweight || dbias) && chunks > 1;
  if (sums) {
    int rc = qt__cuda_sums_scratch_lock(2 * (size_t)chunks * c, &partial, who, err);
    if (rc < 0) return rc;
  }
  switch (qt_ln::vec_for(c)) {
#define QT_LN_BACKWARD(VEC)                                                                      \
  case VEC:                                                                                      \
    launch_backward<VEC>(shared, chunks, dinp, dweight, dbias, partial, dout, inp, weight, mean, \
                         rstd, n, c, rows_per_chunk);                                            \
    break;
    QT_LN_BACKWARD(8)
    QT_LN_BACKWARD(16)
    QT_LN_BACKWARD(24)
    QT_LN_BACKWARD(32)
#undef QT_LN_BACKWARD
  }
  int rc = qt__cuda_check_launch(err, who, "the layer norm backward");
  if (rc == 0 && sums)
    rc = qt__cuda_column_partials_add(dweight, dbias, partial, (size_t)chunks, c, who, err);
  if (sums) qt__cuda_sums_scratch_unlock();
  return rc;
}

/* The loop kernels: one warp per row (QT_CUDA_WARP_ROWS per block), any
 * number of features. */

/* Out is float, or BF16 for the next linear layer of a BF16 run. */
template <typename T>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    layernorm_forward_kernel(T *__restrict__ out, float *__restrict__ mean,
                             float *__restrict__ rstd, const float *__restrict__ inp,
                             const float *__restrict__ weight, const float *__restrict__ bias,
                             size_t n, size_t c, float eps) {
  size_t row = (size_t)blockIdx.x * QT_CUDA_WARP_ROWS + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= n) return; /* the whole warp */
  const float *x = inp + row * c;
  T *y = out + row * c;
  double sum = 0.0;
  for (size_t j = lane; j < c; j += 32) sum += x[j];
  double m = qt__warp_sum(sum) / (double)c;
  double sq = 0.0;
  for (size_t j = lane; j < c; j += 32) {
    double d = x[j] - m;
    sq += d * d;
  }
  sq = qt__warp_sum(sq);
  double r = 1.0 / sqrt(sq / (double)c + (double)eps);
  float mf = (float)m, rf = (float)r;
  for (size_t j = lane; j < c; j += 32) {
    float normalized = __fmul_rn(x[j] - mf, rf);
    qt__store(y + j,
              __fadd_rn(__fmul_rn(normalized, weight ? weight[j] : 1.0f), bias ? bias[j] : 0.0f));
  }
  if (lane == 0) {
    mean[row] = mf;
    rstd[row] = rf;
  }
}

/* dinp of one row per warp: dx = rstd * (g - mean(g) - xhat * mean(g xhat))
 * with g = weight * dy, dy float or BF16. */
template <typename D>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    layernorm_backward_input_kernel(float *__restrict__ dinp, const D *__restrict__ dout,
                                    const float *__restrict__ inp, const float *__restrict__ weight,
                                    const float *__restrict__ mean, const float *__restrict__ rstd,
                                    size_t n, size_t c) {
  size_t row = (size_t)blockIdx.x * QT_CUDA_WARP_ROWS + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= n) return; /* the whole warp */
  const float *x = inp + row * c;
  const D *dy = dout + row * c;
  float m = mean[row], r = rstd[row];
  double g_sum = 0.0, g_xhat_sum = 0.0;
  for (size_t j = lane; j < c; j += 32) {
    float xhat = __fmul_rn(x[j] - m, r);
    float g = __fmul_rn(weight ? weight[j] : 1.0f, qt__load(dy + j));
    g_sum += g;
    g_xhat_sum += (double)g * xhat;
  }
  g_sum = qt__warp_sum(g_sum);
  g_xhat_sum = qt__warp_sum(g_xhat_sum);
  float g_mean = (float)(g_sum / (double)c);
  float g_xhat_mean = (float)(g_xhat_sum / (double)c);
  for (size_t j = lane; j < c; j += 32) {
    float xhat = __fmul_rn(x[j] - m, r);
    float g = __fmul_rn(weight ? weight[j] : 1.0f, qt__load(dy + j));
    float d = __fmul_rn(g - g_mean - __fmul_rn(xhat, g_xhat_mean), r);
    dinp[row * c + j] += d;
  }
}

template <typename T>
static int forward(T *out, float *mean, float *rstd, const float *inp, const float *weight,
                   const float *bias, size_t n, size_t c, float eps, const char *who, qt_err *err) {
  if (n > INT_MAX) return qt_err_set(err, QT_EINVAL, "%s: %zu rows do not fit an int", who, n);
  if (n == 0) return 0;
  if (c == 0 || !out || !mean || !rstd || !inp) {
    return qt_err_set(err, QT_EINVAL, "%s: NULL array or no features (c = %zu)", who, c);
  }
  if (rows_kernels(c))
    launch_rows_forward(out, mean, rstd, inp, weight, bias, n, c, eps);
  else
    layernorm_forward_kernel<<<qt__cuda_row_blocks(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
        out, mean, rstd, inp, weight, bias, n, c, eps);
  return qt__cuda_check_launch(err, who, "the layer norm kernel");
}

extern "C" int qt_cuda_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                         const float *weight, const float *bias, size_t n, size_t c,
                                         float eps, qt_err *err) {
  return forward(out, mean, rstd, inp, weight, bias, n, c, eps, "qt_cuda_layernorm_forward", err);
}

/* The op table's layernorm_forward_bf16: out in BF16 (QT__BF16_OUT) or
 * float. */
extern "C" int qt__cuda_layernorm_forward_bf16(void *out, float *mean, float *rstd,
                                               const float *inp, const float *weight,
                                               const float *bias, size_t n, size_t c, float eps,
                                               unsigned bf16, qt_err *err) {
  const char *who = "qt_cuda_layernorm_forward (BF16 output)";
  int rc = qt__cuda_check_bf16(bf16, QT__BF16_OUT, who, err);
  if (rc < 0) return rc;
  if (bf16)
    return forward((__nv_bfloat16 *)out, mean, rstd, inp, weight, bias, n, c, eps, who, err);
  return forward((float *)out, mean, rstd, inp, weight, bias, n, c, eps, who, err);
}

/* The backward with dout float or (D) BF16. */
template <typename D>
static int backward(float *dinp, float *dweight, float *dbias, const D *dout, const float *inp,
                    const float *weight, const float *mean, const float *rstd, size_t n, size_t c,
                    const char *who, qt_err *err) {
  if (n > INT_MAX) return qt_err_set(err, QT_EINVAL, "%s: %zu rows do not fit an int", who, n);
  if (n == 0 || c == 0) return 0;
  if (!dout || !inp || !mean || !rstd) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  if (!dinp && !dweight && !dbias) return 0;
  if (rows_kernels(c))
    return rows_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, n, c, who, err);
  if (dinp) {
    layernorm_backward_input_kernel<<<qt__cuda_row_blocks(n), QT_CUDA_THREADS, 0,
                                      qt__cuda_stream()>>>(dinp, dout, inp, weight, mean, rstd, n,
                                                           c);
    int rc = qt__cuda_check_launch(err, who, "the layer norm input gradient");
    if (rc < 0) return rc;
  }
  /* dweight (c) += column sums of dy * xhat, dbias (c) += those of dy. */
  return qt__cuda_column_sums_any(QT__COLSUM_LAYERNORM, dweight, dbias, dout, sizeof *dout == 2,
                                  inp, mean, rstd, n, c, who, err);
}

extern "C" int qt_cuda_layernorm_backward(float *dinp, float *dweight, float *dbias,
                                          const float *dout, const float *inp, const float *weight,
                                          const float *mean, const float *rstd, size_t n, size_t c,
                                          qt_err *err) {
  return backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, n, c,
                  "qt_cuda_layernorm_backward", err);
}

/* The op table's layernorm_backward_bf16: dout in BF16 (QT__BF16_DOUT) or
 * float. */
extern "C" int qt__cuda_layernorm_backward_bf16(float *dinp, float *dweight, float *dbias,
                                                const void *dout, const float *inp,
                                                const float *weight, const float *mean,
                                                const float *rstd, size_t n, size_t c,
                                                unsigned bf16, qt_err *err) {
  const char *who = "qt_cuda_layernorm_backward (BF16 output gradient)";
  int rc = qt__cuda_check_bf16(bf16, QT__BF16_DOUT, who, err);
  if (rc < 0) return rc;
  if (bf16)
    return backward(dinp, dweight, dbias, (const __nv_bfloat16 *)dout, inp, weight, mean, rstd, n,
                    c, who, err);
  return backward(dinp, dweight, dbias, (const float *)dout, inp, weight, mean, rstd, n, c, who,
                  err);
}

/* The op table's residual_layernorm_forward: norm in BF16 where bf16 has
 * QT__BF16_OUT, branch where it has QT__BF16_INP (res, the residual
 * stream, and out are FP32). */
extern "C" int qt__cuda_residual_layernorm_forward(float *out, void *norm, float *mean, float *rstd,
                                                   const float *res, const void *branch,
                                                   const float *gamma, const float *weight,
                                                   const float *bias, size_t n, size_t c, float eps,
                                                   unsigned bf16, qt_err *err) {
  const char *who = "qt_cuda_residual_layernorm_forward";
  int rc = qt__cuda_check_bf16(bf16, QT__BF16_INP | QT__BF16_OUT, who, err);
  if (rc < 0) return rc;
  int branch_bf16 = (bf16 & QT__BF16_INP) != 0;
  if (!rows_kernels(c)) {
    rc = qt__cuda_residual_forward_any(out, res, branch, branch_bf16, gamma, n, c, err);
    if (rc < 0) return rc;
    return qt__cuda_layernorm_forward_bf16(norm, mean, rstd, out, weight, bias, n, c, eps,
                                           bf16 & QT__BF16_OUT, err);
  }
  if (n > INT_MAX) return qt_err_set(err, QT_EINVAL, "%s: %zu rows do not fit an int", who, n);
  if (n == 0) return 0;
  if (c == 0 || !out || !norm || !mean || !rstd || !res || !branch)
    return qt_err_set(err, QT_EINVAL, "%s: NULL array or no features (c = %zu)", who, c);
  typedef __nv_bfloat16 bf16_t;
  switch (bf16) {
    case 0:
      launch_residual_rows(out, (float *)norm, mean, rstd, res, (const float *)branch, gamma,
                           weight, bias, n, c, eps);
      break;
    case QT__BF16_OUT:
      launch_residual_rows(out, (bf16_t *)norm, mean, rstd, res, (const float *)branch, gamma,
                           weight, bias, n, c, eps);
      break;
    case QT__BF16_INP:
      launch_residual_rows(out, (float *)norm, mean, rstd, res, (const bf16_t *)branch, gamma,
                           weight, bias, n, c, eps);
      break;
    default:
      launch_residual_rows(out, (bf16_t *)norm, mean, rstd, res, (const bf16_t *)branch, gamma,
                           weight, bias, n, c, eps);
  }
  return qt__cuda_check_launch(err, who, "the residual and layer norm kernel");
}

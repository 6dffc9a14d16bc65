/*
 * qt_cuda_cnn_eltwise.cu - the smaller layers of the convolutional families
 * on a CUDA device, twins of cpu/qt_cpu_act.c (ReLU, ReLU6, SiLU),
 * cpu/qt_cpu_pool.c (global average pooling, max pooling) and
 * cpu/qt_cpu_se.c (squeeze-and-excitation). The elementwise kernels use the
 * CPU's float expressions in its order (__fmul_rn / __fadd_rn / __fdiv_rn,
 * no FMA contraction; CUDA's expf is within 2 units in the last place, like
 * glibc's). Row sums (pooling, the gate gradient of SE) are reduced in
 * double by one warp per row, as the CPU sums in double. The max-pooling
 * backward gathers per input pixel instead of scattering, so that windows
 * that overlap need no atomics, and adds in the CPU's order. SE composes
 * these with qt_cuda_linear_*. See qt_finetune.h.
 */
#include <limits.h>
#include <math.h>
#include <stdint.h>

#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "finetune/cuda/qt_cuda_internal.h"

/* ------------------------------------------------------------------------- */
/* Activations                                                                */
/* ------------------------------------------------------------------------- */

static __device__ __forceinline__ float sigmoid(float x) {
  return __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-x)));
}

static __device__ __forceinline__ float relu(float x) {
  return x > 0.0f ? x : 0.0f;
}

static __device__ __forceinline__ float relu6(float x) {
  return x > 0.0f ? (x < 6.0f ? x : 6.0f) : 0.0f;
}

static __device__ __forceinline__ float silu(float x) {
  return __fdiv_rn(x, __fadd_rn(1.0f, expf(-x)));
}

/* out = act(inp), qt__elementwise's loop; out may be inp. */
#define QT_ACT_FORWARD_KERNEL(kernel, act)                                                   \
  static __global__ void __launch_bounds__(QT_CUDA_THREADS)                                  \
      kernel(float *out, const float *inp, size_t n) {                                       \
    qt__elementwise(                                                                         \
        n, blockIdx.x, gridDim.x, threadIdx.x, blockDim.x, [=](size_t i) { return inp[i]; }, \
        [=](size_t i, float x) { out[i] = act(x); });                                        \
  }

QT_ACT_FORWARD_KERNEL(relu_forward_kernel, relu)
QT_ACT_FORWARD_KERNEL(relu6_forward_kernel, relu6)
QT_ACT_FORWARD_KERNEL(silu_forward_kernel, silu)

/* What a backward element reads: the input, the output's gradient and
 * dinp's old value (0 with `set`). */
struct act_in {
  float x, dout, old;
};

/* The gradients passed back at x for dout: ReLU's for x > 0; ReLU6's
 * strictly inside (0, 6), as PyTorch's hardtanh_backward; SiLU's d/dx x
 * s(x) = s(x) (1 + x (1 - s(x))), as the CPU's dout * sig * (1 + x * (1 -
 * sig)). Where the gradient does not pass, dinp keeps its old value (0
 * with `set`: the CPU's zeroed array). */
static __device__ __forceinline__ float relu_grad(const act_in &v) {
  return v.x > 0.0f ? __fadd_rn(v.old, v.dout) : v.old;
}

static __device__ __forceinline__ float relu6_grad(const act_in &v) {
  return v.x > 0.0f && v.x < 6.0f ? __fadd_rn(v.old, v.dout) : v.old;
}

static __device__ __forceinline__ float silu_grad(const act_in &v) {
  float sig = sigmoid(v.x);
  float slope = __fadd_rn(1.0f, __fmul_rn(v.x, __fadd_rn(1.0f, -sig)));
  return __fadd_rn(v.old, __fmul_rn(__fmul_rn(v.dout, sig), slope));
}

/* dinp = grad(inp, dout, its old value), qt__elementwise's loop: set
 * writes dinp as 0 + the gradient. */
#define QT_ACT_BACKWARD_KERNEL(kernel, grad)                               \
  template <bool set>                                                      \
  static __global__ void __launch_bounds__(QT_CUDA_THREADS)                \
      kernel(float *dinp, const float *dout, const float *inp, size_t n) { \
    qt__elementwise(                                                       \
        n, blockIdx.x, gridDim.x, threadIdx.x, blockDim.x,                 \
        [=](size_t i) {                                                    \
          return act_in{inp[i], dout[i], set ? 0.0f : dinp[i]};            \
        },                                                                 \
        [=](size_t i, act_in v) { dinp[i] = grad(v); });                   \
  }

QT_ACT_BACKWARD_KERNEL(relu_backward_kernel, relu_grad)
QT_ACT_BACKWARD_KERNEL(relu6_backward_kernel, relu6_grad)
QT_ACT_BACKWARD_KERNEL(silu_backward_kernel, silu_grad)

/* The launches of the activations: QT_EINVAL for a NULL array (n > 0). */
#define QT_ACT_FORWARD(name, kernel, label)                                                     \
  extern "C" int name(float *out, const float *inp, size_t n, qt_err *err) {                    \
    if (n == 0) return 0;                                                                       \
    if (!out || !inp) return qt_err_set(err, QT_EINVAL, #name ": NULL array");                  \
    kernel<<<qt__cuda_elementwise_blocks(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(out, inp, \
                                                                                      n);       \
    return qt__cuda_check_launch(err, #name, label);                                            \
  }
/* qt__cuda_<act>_backward with the op table's `set`, and the public
 * qt_cuda_<act>_backward, which adds. */
#define QT_ACT_BACKWARD(act, kernel, label)                                                     \
  extern "C" int qt__cuda_##act##_backward(float *dinp, const float *dout, const float *inp,    \
                                           size_t n, int set, qt_err *err) {                    \
    const char *who = "qt_cuda_" #act "_backward";                                              \
    if (n == 0) return 0;                                                                       \
    if (!dinp || !dout || !inp) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);       \
    if (set)                                                                                    \
      kernel<true><<<qt__cuda_elementwise_blocks(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(  \
          dinp, dout, inp, n);                                                                  \
    else                                                                                        \
      kernel<false><<<qt__cuda_elementwise_blocks(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>( \
          dinp, dout, inp, n);                                                                  \
    return qt__cuda_check_launch(err, who, label);                                              \
  }                                                                                             \
  extern "C" int qt_cuda_##act##_backward(float *dinp, const float *dout, const float *inp,     \
                                          size_t n, qt_err *err) {                              \
    return qt__cuda_##act##_backward(dinp, dout, inp, n, 0, err);                               \
  }

QT_ACT_FORWARD(qt_cuda_relu_forward, relu_forward_kernel, "the ReLU kernel")
QT_ACT_BACKWARD(relu, relu_backward_kernel, "the ReLU backward kernel")
QT_ACT_FORWARD(qt_cuda_relu6_forward, relu6_forward_kernel, "the ReLU6 kernel")
QT_ACT_BACKWARD(relu6, relu6_backward_kernel, "the ReLU6 backward kernel")
QT_ACT_FORWARD(qt_cuda_silu_forward, silu_forward_kernel, "the SiLU kernel")
QT_ACT_BACKWARD(silu, silu_backward_kernel, "the SiLU backward kernel")

/* ------------------------------------------------------------------------- */
/* Global average pooling                                                     */
/* ------------------------------------------------------------------------- */

/* out[row] = mean of inp's row (hw values), summed in double: one warp per
 * row. */
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    avgpool_forward_kernel(float *__restrict__ out, const float *__restrict__ inp, size_t rows,
                           size_t hw) {
  size_t row = (size_t)blockIdx.x * QT_CUDA_WARP_ROWS + threadIdx.x / 32;
  unsigned lane = threadIdx.x & 31;
  /* Whole warps leave together: the shuffle below needs all 32 lanes. */
  if (row >= rows) return;
  const float *x = inp + row * hw;
  double sum = 0.0;
  for (size_t p = lane; p < hw; p += 32) sum += x[p];
  sum = qt__warp_sum(sum);
  if (lane == 0) out[row] = (float)(sum / (double)hw);
}

/* dinp[row, p] += dout[row] * inv, inv = 1 / hw in float (the CPU's). */
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    avgpool_backward_kernel(float *__restrict__ dinp, const float *__restrict__ dout, size_t n,
                            size_t hw, float inv) {
  size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    dinp[i] = __fadd_rn(dinp[i], __fmul_rn(dout[i / hw], inv));
  }
}

/* Blocks of QT_CUDA_WARP_ROWS rows, or QT_EINVAL when they overflow the grid. */
static int row_blocks(size_t rows, unsigned *blocks, const char *who, qt_err *err) {
  size_t b = (rows + QT_CUDA_WARP_ROWS - 1) / QT_CUDA_WARP_ROWS;
  if (b > INT_MAX) return qt_err_set(err, QT_EINVAL, "%s: %zu rows are too many", who, rows);
  *blocks = (unsigned)b;
  return 0;
}

extern "C" int qt_cuda_global_avgpool_forward(float *out, const float *inp, size_t batch, size_t c,
                                              size_t hw, qt_err *err) {
  const char *who = "qt_cuda_global_avgpool_forward";
  size_t rows = batch * c;
  if (rows == 0) return 0;
  if (hw == 0) return qt_err_set(err, QT_EINVAL, "%s: no positions to average (hw 0)", who);
  if (!out || !inp) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  unsigned blocks = 0;
  int rc = row_blocks(rows, &blocks, who, err);
  if (rc < 0) return rc;
  avgpool_forward_kernel<<<blocks, QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(out, inp, rows, hw);
  return qt__cuda_check_launch(err, who, "the average pooling kernel");
}

extern "C" int qt_cuda_global_avgpool_backward(float *dinp, const float *dout, size_t batch,
                                               size_t c, size_t hw, qt_err *err) {
  const char *who = "qt_cuda_global_avgpool_backward";
  size_t n = batch * c * hw;
  if (n == 0) return 0;
  if (!dinp || !dout) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  avgpool_backward_kernel<<<qt__cuda_blocks(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
      dinp, dout, n, hw, 1.0f / (float)hw);
  return qt__cuda_check_launch(err, who, "the average pooling backward kernel");
}

/* ------------------------------------------------------------------------- */
/* Max pooling                                                                */
/* ------------------------------------------------------------------------- */

typedef struct pool_geometry {
  long in_h, in_w, out_h, out_w;
  long kernel_h, kernel_w, stride_h, stride_w, pad_top, pad_left;
} pool_geometry;

/* One thread per output: the CPU's scan (ky, then kx), the first maximum in
 * scan order wins (a NaN, the last NaN), padding never does. Windows that miss the image (which
 * PyTorch's padding rule excludes and the caller validates) give -infinity
 * and argmax 0, where the CPU asserts. */
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    maxpool_forward_kernel(float *__restrict__ out, int32_t *__restrict__ argmax,
                           const float *__restrict__ inp, size_t n, pool_geometry g) {
  size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    long ox = (long)(i % (size_t)g.out_w), oy = (long)((i / (size_t)g.out_w) % (size_t)g.out_h);
    size_t plane = i / (size_t)(g.out_w * g.out_h);
    const float *x = inp + plane * (size_t)(g.in_h * g.in_w);
    float best = -INFINITY;
    long best_at = -1;
    for (long ky = 0; ky < g.kernel_h; ky++) {
      long iy = oy * g.stride_h + ky - g.pad_top;
      if (iy < 0 || iy >= g.in_h) continue;
      for (long kx = 0; kx < g.kernel_w; kx++) {
        long ix = ox * g.stride_w + kx - g.pad_left;
        if (ix < 0 || ix >= g.in_w) continue;
        long at = iy * g.in_w + ix;
        if (best_at < 0 || x[at] > best || isnan(x[at])) {
          best = x[at];
          best_at = at;
        }
      }
    }
    out[i] = best;
    argmax[i] = (int32_t)(best_at < 0 ? 0 : best_at);
  }
}

/* dinp += dout routed to the argmax: one thread per input pixel gathers the
 * outputs whose window covers it and that chose it, in the CPU's order
 * (scan order of the outputs: ky and kx run downwards). */
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    maxpool_backward_kernel(float *__restrict__ dinp, const float *__restrict__ dout,
                            const int32_t *__restrict__ argmax, size_t n, pool_geometry g) {
  size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    long ix = (long)(i % (size_t)g.in_w), iy = (long)((i / (size_t)g.in_w) % (size_t)g.in_h);
    size_t plane = i / (size_t)(g.in_w * g.in_h);
    long at = iy * g.in_w + ix;
    const float *dy = dout + plane * (size_t)(g.out_h * g.out_w);
    const int32_t *arg = argmax + plane * (size_t)(g.out_h * g.out_w);
    float acc = dinp[i];
    for (long ky = g.kernel_h - 1; ky >= 0; ky--) {
      long ty = iy + g.pad_top - ky;
      if (ty < 0 || ty % g.stride_h != 0) continue;
      long oy = ty / g.stride_h;
      if (oy >= g.out_h) continue;
      for (long kx = g.kernel_w - 1; kx >= 0; kx--) {
        long tx = ix + g.pad_left - kx;
        if (tx < 0 || tx % g.stride_w != 0) continue;
        long ox = tx / g.stride_w;
        if (ox >= g.out_w) continue;
        long p = oy * g.out_w + ox;
        if (arg[p] == at) acc = __fadd_rn(acc, dy[p]);
      }
    }
    dinp[i] = acc;
  }
}

/* QT_EINVAL unless the geometry is a pooling one: nonzero sizes and strides,
 * every size within an int, in_c = out_c (= groups) planes. */
static int pool_check(const qt_conv2d_shape *s, pool_geometry *g, const char *who, qt_err *err) {
  if (!s) return qt_err_set(err, QT_EINVAL, "%s: shape is NULL", who);
  if (s->batch == 0 || s->in_c == 0 || s->in_h == 0 || s->in_w == 0 || s->out_h == 0 ||
      s->out_w == 0 || s->kernel_h == 0 || s->kernel_w == 0 || s->stride_h == 0 ||
      s->stride_w == 0 || s->out_c != s->in_c) {
    return qt_err_set(err, QT_EINVAL,
                      "%s: not a pooling shape (batch %zu, in %zux%zux%zu, out %zux%zux%zu, "
                      "kernel %zux%zu, stride %zux%zu)",
                      who, s->batch, s->in_c, s->in_h, s->in_w, s->out_c, s->out_h, s->out_w,
                      s->kernel_h, s->kernel_w, s->stride_h, s->stride_w);
  }
  const size_t big = (size_t)INT_MAX;
  if (s->in_h * s->in_w > big || s->out_h * s->out_w > big || s->kernel_h > big ||
      s->kernel_w > big || s->stride_h > big || s->stride_w > big || s->pad_top > big ||
      s->pad_left > big || s->in_h > big || s->in_w > big || s->out_h > big || s->out_w > big) {
    return qt_err_set(err, QT_EINVAL, "%s: a size does not fit an int", who);
  }
  g->in_h = (long)s->in_h;
  g->in_w = (long)s->in_w;
  g->out_h = (long)s->out_h;
  g->out_w = (long)s->out_w;
  g->kernel_h = (long)s->kernel_h;
  g->kernel_w = (long)s->kernel_w;
  g->stride_h = (long)s->stride_h;
  g->stride_w = (long)s->stride_w;
  g->pad_top = (long)s->pad_top;
  g->pad_left = (long)s->pad_left;
  return 0;
}

extern "C" int qt_cuda_maxpool2d_forward(float *out, int32_t *argmax, const float *inp,
                                         const qt_conv2d_shape *s, qt_err *err) {
  const char *who = "qt_cuda_maxpool2d_forward";
  pool_geometry g;
  int rc = pool_check(s, &g, who, err);
  if (rc < 0) return rc;
  if (!out || !argmax || !inp) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  size_t n = s->batch * s->in_c * s->out_h * s->out_w;
  maxpool_forward_kernel<<<qt__cuda_blocks(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(out, argmax,
                                                                                        inp, n, g);
  return qt__cuda_check_launch(err, who, "the max pooling kernel");
}

extern "C" int qt_cuda_maxpool2d_backward(float *dinp, const float *dout, const int32_t *argmax,
                                          const qt_conv2d_shape *s, qt_err *err) {
  const char *who = "qt_cuda_maxpool2d_backward";
  pool_geometry g;
  int rc = pool_check(s, &g, who, err);
  if (rc < 0) return rc;
  if (!dinp || !dout || !argmax) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  size_t n = s->batch * s->in_c * s->in_h * s->in_w;
  maxpool_backward_kernel<<<qt__cuda_blocks(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
      dinp, dout, argmax, n, g);
  return qt__cuda_check_launch(err, who, "the max pooling backward kernel");
}

/* ------------------------------------------------------------------------- */
/* Squeeze-and-excitation                                                     */
/* ------------------------------------------------------------------------- */

/* gate = sigmoid(gate) in place, then out[row, p] = inp[row, p] * gate[row].
 * Two kernels: every gate is final before any output reads it. */
static __global__ void __launch_bounds__(QT_CUDA_THREADS) sigmoid_kernel(float *gate, size_t n) {
  size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    gate[i] = sigmoid(gate[i]);
  }
}

static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    se_scale_kernel(float *__restrict__ out, const float *__restrict__ inp,
                    const float *__restrict__ gate, size_t n, size_t hw) {
  size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = __fmul_rn(inp[i], gate[i / hw]);
  }
}

/* Per row (b, ch), one warp: dg = sum_hw dout x in double, dinp += dout g
 * (when dinp), dgate_pre = (float) dg * g * (1 - g). */
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    se_gate_backward_kernel(float *__restrict__ dinp, float *__restrict__ dgate_pre,
                            const float *__restrict__ dout, const float *__restrict__ inp,
                            const float *__restrict__ gate, size_t rows, size_t hw) {
  size_t row = (size_t)blockIdx.x * QT_CUDA_WARP_ROWS + threadIdx.x / 32;
  unsigned lane = threadIdx.x & 31;
  if (row >= rows) return; /* whole warps leave together */
  const float *x = inp + row * hw;
  const float *dy = dout + row * hw;
  float g = gate[row];
  double dg = 0.0;
  for (size_t p = lane; p < hw; p += 32) {
    dg += (double)dy[p] * x[p];
    if (dinp) dinp[row * hw + p] = __fadd_rn(dinp[row * hw + p], __fmul_rn(dy[p], g));
  }
  dg = qt__warp_sum(dg);
  if (lane == 0) dgate_pre[row] = __fmul_rn(__fmul_rn((float)dg, g), __fadd_rn(1.0f, -g));
}

extern "C" int qt_cuda_se_forward(float *out, float *pooled, float *hidden_pre, float *hidden,
                                  float *gate, const float *inp, const float *w_reduce,
                                  const float *b_reduce, const float *w_expand,
                                  const float *b_expand, size_t batch, size_t c, size_t hw,
                                  size_t rd, qt_se_act act, qt_err *err) {
  const char *who = "qt_cuda_se_forward";
  if (act != QT_SE_ACT_RELU && act != QT_SE_ACT_SILU) {
    return qt_err_set(err, QT_EINVAL, "%s: unknown activation %d", who, (int)act);
  }
  if (batch == 0 || c == 0) return 0;
  if (hw == 0 || rd == 0) {
    return qt_err_set(err, QT_EINVAL, "%s: hw %zu or rd %zu is 0", who, hw, rd);
  }
  if (!out || !pooled || !hidden_pre || !hidden || !gate || !inp || !w_reduce || !w_expand) {
    return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  }
  int rc = qt_cuda_global_avgpool_forward(pooled, inp, batch, c, hw, err);
  if (rc < 0) return rc;
  rc = qt_cuda_linear_forward(hidden_pre, pooled, w_reduce, b_reduce, batch, c, rd, err);
  if (rc < 0) return rc;
  rc = act == QT_SE_ACT_SILU ? qt_cuda_silu_forward(hidden, hidden_pre, batch * rd, err)
                             : qt_cuda_relu_forward(hidden, hidden_pre, batch * rd, err);
  if (rc < 0) return rc;
  rc = qt_cuda_linear_forward(gate, hidden, w_expand, b_expand, batch, rd, c, err);
  if (rc < 0) return rc;
  sigmoid_kernel<<<qt__cuda_blocks(batch * c), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(gate,
                                                                                        batch * c);
  rc = qt__cuda_check_launch(err, who, "the gate's sigmoid");
  if (rc < 0) return rc;
  se_scale_kernel<<<qt__cuda_blocks(batch * c * hw), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
      out, inp, gate, batch * c * hw, hw);
  return qt__cuda_check_launch(err, who, "the gate's scaling");
}

extern "C" int qt_cuda_se_backward(float *dinp, float *dw_reduce, float *db_reduce,
                                   float *dw_expand, float *db_expand, float *scratch,
                                   const float *dout, const float *inp, const float *pooled,
                                   const float *hidden_pre, const float *hidden, const float *gate,
                                   const float *w_reduce, const float *w_expand, size_t batch,
                                   size_t c, size_t hw, size_t rd, qt_se_act act, qt_err *err) {
  const char *who = "qt_cuda_se_backward";
  if (act != QT_SE_ACT_RELU && act != QT_SE_ACT_SILU) {
    return qt_err_set(err, QT_EINVAL, "%s: unknown activation %d", who, (int)act);
  }
  if (batch == 0 || c == 0) return 0;
  if (hw == 0 || rd == 0) {
    return qt_err_set(err, QT_EINVAL, "%s: hw %zu or rd %zu is 0", who, hw, rd);
  }
  if (!scratch || !dout || !inp || !pooled || !hidden_pre || !hidden || !gate || !w_reduce ||
      !w_expand) {
    return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  }
  float *dgate_pre = scratch;                /* (batch, c) */
  float *dpooled = dgate_pre + batch * c;    /* (batch, c) */
  float *dhidden = dpooled + batch * c;      /* (batch, rd) */
  float *dhidden_pre = dhidden + batch * rd; /* (batch, rd) */
  cudaError_t status = cudaMemsetAsync(
      scratch, 0, (2 * batch * c + 2 * batch * rd) * sizeof *scratch, qt__cuda_stream());
  if (status != cudaSuccess) return qt__cuda_error(err, status, "qt_cuda_se_backward: memset");
  unsigned blocks = 0;
  int rc = row_blocks(batch * c, &blocks, who, err);
  if (rc < 0) return rc;
  se_gate_backward_kernel<<<blocks, QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
      dinp, dgate_pre, dout, inp, gate, batch * c, hw);
  rc = qt__cuda_check_launch(err, who, "the gate's backward");
  if (rc < 0) return rc;
  rc = qt_cuda_linear_backward(dhidden, dw_expand, db_expand, dgate_pre, hidden, w_expand, batch,
                               rd, c, err);
  if (rc < 0) return rc;
  rc = act == QT_SE_ACT_SILU
           ? qt_cuda_silu_backward(dhidden_pre, dhidden, hidden_pre, batch * rd, err)
           : qt_cuda_relu_backward(dhidden_pre, dhidden, hidden_pre, batch * rd, err);
  if (rc < 0) return rc;
  rc = qt_cuda_linear_backward(dpooled, dw_reduce, db_reduce, dhidden_pre, pooled, w_reduce, batch,
                               c, rd, err);
  if (rc < 0) return rc;
  if (dinp) return qt_cuda_global_avgpool_backward(dinp, dpooled, batch, c, hw, err);
  return 0;
}

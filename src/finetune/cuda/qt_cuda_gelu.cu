/*
 * qt_cuda_gelu.cu - exact (erf) GELU on a CUDA device, the twin of
 * cpu/qt_cpu_gelu.c: the same float expressions, with CUDA's erff and expf
 * (both within 2 units in the last place, like glibc's): qt__gelu and
 * qt__gelu_grad in qt_cuda_common.cuh. See qt_finetune.h.
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "finetune/cuda/qt_cuda_internal.h"

/* Elements per thread and turn of the forward: 8 from BF16 (see
 * qt__elementwise). */
template <typename S>
__host__ __device__ static constexpr int forward_unroll() {
  return sizeof(S) == 2 ? 8 : QT_CUDA_UNROLL;
}

/* Out is float, or BF16 for the next linear layer of a BF16 run; inp
 * (S) float, or BF16 as the linear layer before wrote it (fc1's output,
 * QT__KEEP_HIDDEN); out may be inp. */
template <typename T, typename S>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    gelu_forward_kernel(T *out, const S *inp, size_t n) {
  qt__elementwise<forward_unroll<S>()>(
      n, blockIdx.x, gridDim.x, threadIdx.x, blockDim.x,
      [=](size_t i) { return qt__load(inp + i); },
      [=](size_t i, float x) { qt__store(out + i, qt__gelu(x)); });
}

struct gelu_in {
  float x, dout, old;
};

/* set: dinp starts from 0 (0 + g, as the CPU's zeroed array) instead of
 * its old values. dout (D) and inp (S) each float or BF16. */
template <bool set, typename D, typename S>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    gelu_backward_kernel(float *dinp, const D *dout, const S *inp, size_t n) {
  qt__elementwise(
      n, blockIdx.x, gridDim.x, threadIdx.x, blockDim.x,
      [=](size_t i) {
        return gelu_in{qt__load(inp + i), qt__load(dout + i), set ? 0.0f : dinp[i]};
      },
      [=](size_t i, gelu_in v) { dinp[i] = __fadd_rn(v.old, qt__gelu_grad(v.dout, v.x)); });
}

extern "C" int qt_cuda_gelu_forward(float *out, const float *inp, size_t n, qt_err *err) {
  if (n == 0) return 0;
  if (!out || !inp) return qt_err_set(err, QT_EINVAL, "qt_cuda_gelu_forward: NULL array");
  gelu_forward_kernel<<<qt__cuda_elementwise_blocks(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
      out, inp, n);
  return qt__cuda_check_launch(err, "qt_cuda_gelu_forward", "the GELU kernel");
}

/* The op table's gelu_forward_bf16: inp (QT__BF16_INP) and out
 * (QT__BF16_OUT) each float or BF16; in place only where both are the
 * same type (a thread's store would land on values that others have not
 * read yet). */
extern "C" int qt__cuda_gelu_forward_bf16(void *out, const void *inp, size_t n, unsigned bf16,
                                          qt_err *err) {
  const char *who = "qt_cuda_gelu_forward (BF16 arrays)";
  int rc = qt__cuda_check_bf16(bf16, QT__BF16_INP | QT__BF16_OUT, who, err);
  if (rc < 0) return rc;
  if (n == 0) return 0;
  if (!out || !inp) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  if (out == inp && (bf16 == QT__BF16_INP || bf16 == QT__BF16_OUT))
    return qt_err_set(err, QT_EINVAL, "%s: in place with a float and a BF16 array", who);
  typedef __nv_bfloat16 bf16_t;
  unsigned blocks = qt__cuda_elementwise_blocks(
      n, bf16 & QT__BF16_INP ? forward_unroll<bf16_t>() : QT_CUDA_UNROLL);
  switch (bf16) {
    case 0:
      gelu_forward_kernel<<<blocks, QT_CUDA_THREADS, 0, qt__cuda_stream()>>>((float *)out,
                                                                             (const float *)inp, n);
      break;
    case QT__BF16_INP:
      gelu_forward_kernel<<<blocks, QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
          (float *)out, (const bf16_t *)inp, n);
      break;
    case QT__BF16_OUT:
      gelu_forward_kernel<<<blocks, QT_CUDA_THREADS, 0, qt__cuda_stream()>>>((bf16_t *)out,
                                                                             (const float *)inp, n);
      break;
    default:
      gelu_forward_kernel<<<blocks, QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
          (bf16_t *)out, (const bf16_t *)inp, n);
  }
  return qt__cuda_check_launch(err, who, "the GELU kernel");
}

template <typename D, typename S>
static int gelu_backward(float *dinp, const D *dout, const S *inp, size_t n, int set, qt_err *err) {
  if (n == 0) return 0;
  if (!dinp || !dout || !inp) {
    return qt_err_set(err, QT_EINVAL, "qt_cuda_gelu_backward: NULL array");
  }
  if (set)
    gelu_backward_kernel<true>
        <<<qt__cuda_elementwise_blocks(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(dinp, dout, inp,
                                                                                    n);
  else
    gelu_backward_kernel<false>
        <<<qt__cuda_elementwise_blocks(n), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(dinp, dout, inp,
                                                                                    n);
  return qt__cuda_check_launch(err, "qt_cuda_gelu_backward", "the GELU backward kernel");
}

extern "C" int qt__cuda_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n,
                                      int set, qt_err *err) {
  return gelu_backward(dinp, dout, inp, n, set, err);
}

extern "C" int qt__cuda_gelu_backward_any(float *dinp, const void *dout, int dout_bf16,
                                          const void *inp, int inp_bf16, size_t n, int set,
                                          qt_err *err) {
  typedef __nv_bfloat16 bf16_t;
  if (dout_bf16)
    return inp_bf16 ? gelu_backward(dinp, (const bf16_t *)dout, (const bf16_t *)inp, n, set, err)
                    : gelu_backward(dinp, (const bf16_t *)dout, (const float *)inp, n, set, err);
  return inp_bf16 ? gelu_backward(dinp, (const float *)dout, (const bf16_t *)inp, n, set, err)
                  : gelu_backward(dinp, (const float *)dout, (const float *)inp, n, set, err);
}

extern "C" int qt_cuda_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n,
                                     qt_err *err) {
  return qt__cuda_gelu_backward(dinp, dout, inp, n, 0, err);
}

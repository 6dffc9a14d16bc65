/*
 * qt_cuda_lora.cu - LoRA's merge and the gradients of its factors on a
 * CUDA device, the twins of qt_lora_merge and qt_lora_gradients
 * (qt_methods_lora.c): a copy and cuBLAS products on the thread's stream,
 * in the precision of qt_cuda_set_matmul_precision. See qt_finetune.h.
 */
#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/cuda/qt_cuda_internal.h"

extern "C" int qt_cuda_lora_merge(float *w, const float *w0, const float *a, const float *b,
                                  size_t out, size_t in, size_t rank, double scale, qt_err *err) {
  const char *who = "qt_cuda_lora_merge";
  if (out == 0 || in == 0) return 0;
  if (!w || !w0 || (rank > 0 && (!a || !b)))
    return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  int rc = qt_cuda_copy_on_device(w, w0, out * in * sizeof *w, err);
  if (rc < 0) return rc;
  /* W (out, in) += scale B (out, rank) A (rank, in). */
  return qt__cuda_gemm(0, 0, out, in, rank, (float)scale, b, rank, 0, a, in, 0, 1.0f, w, in, 0, 1,
                       who, err);
}

extern "C" int qt_cuda_lora_gradients(const float *dw, const float *a, const float *b, size_t out,
                                      size_t in, size_t rank, double scale, float *ga, float *gb,
                                      qt_err *err) {
  const char *who = "qt_cuda_lora_gradients";
  if (out == 0 || in == 0 || rank == 0) return 0;
  if (!dw || !a || !b || !ga || !gb) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  /* dL/dA (rank, in) = scale B^T dW; dL/dB (out, rank) = scale dW A^T. */
  int rc = qt__cuda_gemm(1, 0, rank, in, out, (float)scale, b, rank, 0, dw, in, 0, 0.0f, ga, in, 0,
                         1, who, err);
  if (rc < 0) return rc;
  return qt__cuda_gemm(0, 1, out, rank, in, (float)scale, dw, in, 0, a, in, 0, 0.0f, gb, rank, 0, 1,
                       who, err);
}

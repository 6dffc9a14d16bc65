/*
 * qt_cuda_cross_entropy.cu - softmax cross-entropy with hard (optionally
 * smoothed) labels or soft targets on a CUDA device, the twin of
 * cpu/qt_cpu_cross_entropy.c: one block per row, the log-sum-exp and the
 * loss in double as on the CPU. See qt_finetune.h.
 */
#include <limits.h>
#include <stdio.h>

#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/cuda/qt_cuda_internal.h"

/* Target probability of class k for row b (the CPU's float expression). */
static __device__ __forceinline__ float target(const int *labels, const float *soft_targets,
                                               float smoothing, size_t b, size_t k,
                                               size_t classes) {
  if (soft_targets) return soft_targets[b * classes + k];
  float t = smoothing / (float)classes;
  if ((size_t)labels[b] == k) t += 1.0f - smoothing;
  return t;
}

static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    cross_entropy_forward_kernel(float *__restrict__ losses, float *__restrict__ probs,
                                 const float *__restrict__ logits, const int *__restrict__ labels,
                                 const float *__restrict__ soft_targets, float smoothing,
                                 size_t classes) {
  __shared__ double shared[32];
  __shared__ float shared_max[32];
  size_t b = blockIdx.x;
  const float *z = logits + b * classes;
  float *p = probs + b * classes;
  float max = -INFINITY;
  for (size_t k = threadIdx.x; k < classes; k += blockDim.x) max = fmaxf(max, z[k]);
  max = qt__block_max(max, shared_max);
  double sum = 0.0;
  for (size_t k = threadIdx.x; k < classes; k += blockDim.x) sum += exp((double)z[k] - max);
  double log_sum = log(qt__block_sum(sum, shared));
  double loss = 0.0;
  for (size_t k = threadIdx.x; k < classes; k += blockDim.x) {
    double log_p = (double)z[k] - max - log_sum;
    p[k] = (float)exp(log_p);
    loss -= target(labels, soft_targets, smoothing, b, k, classes) * log_p;
  }
  loss = qt__block_sum(loss, shared);
  if (threadIdx.x == 0) losses[b] = (float)loss;
}

static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    cross_entropy_backward_kernel(float *__restrict__ dlogits, const float *__restrict__ probs,
                                  const int *__restrict__ labels,
                                  const float *__restrict__ soft_targets, float smoothing,
                                  const float *__restrict__ dloss, int dloss_per_row, size_t batch,
                                  size_t classes) {
  size_t total = batch * classes, stride = (size_t)gridDim.x * blockDim.x;
  for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
    size_t b = e / classes, k = e % classes;
    float scale = dloss_per_row ? dloss[b] : dloss[0];
    float t = target(labels, soft_targets, smoothing, b, k, classes);
    dlogits[e] = __fadd_rn(dlogits[e], __fmul_rn(scale, probs[e] - t));
  }
}

#ifndef NDEBUG
/* Every label in [0, classes)? One thread per row; *bad receives 1 + the
 * first offending row found (any, when several are). */
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    check_labels_kernel(int *bad, const int *labels, size_t batch, size_t classes) {
  size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t b = (size_t)blockIdx.x * blockDim.x + threadIdx.x; b < batch; b += stride) {
    if (labels[b] < 0 || (size_t)labels[b] >= classes) atomicCAS(bad, 0, (int)(b + 1));
  }
}
#endif

/* Labels live on the device: the CPU asserts on a bad one, here the check
 * costs a synchronization, so it runs only in debug builds (NDEBUG unset). */
static int check_labels(const int *labels, size_t batch, size_t classes, const char *who,
                        qt_err *err) {
#ifdef NDEBUG
  (void)labels;
  (void)batch;
  (void)classes;
  (void)who;
  (void)err;
  return 0;
#else
  int *bad = NULL;
  cudaError_t status = cudaMalloc((void **)&bad, sizeof *bad);
  cudaStream_t stream = qt__cuda_stream();
  if (status == cudaSuccess) status = cudaMemsetAsync(bad, 0, sizeof *bad, stream);
  if (status == cudaSuccess) {
    check_labels_kernel<<<qt__cuda_blocks(batch), QT_CUDA_THREADS, 0, stream>>>(bad, labels, batch,
                                                                                classes);
    status = cudaGetLastError();
  }
  int host_bad = 0;
  if (status == cudaSuccess)
    status = cudaMemcpyAsync(&host_bad, bad, sizeof host_bad, cudaMemcpyDeviceToHost, stream);
  if (status == cudaSuccess) status = cudaStreamSynchronize(stream);
  cudaFree(bad);
  if (status != cudaSuccess) {
    char what[128];
    snprintf(what, sizeof what, "%s: checking the labels", who);
    return qt__cuda_error(err, status, what);
  }
  if (host_bad) {
    return qt_err_set(err, QT_EINVAL, "%s: the label of row %d is outside [0, %zu)", who,
                      host_bad - 1, classes);
  }
  return 0;
#endif
}

extern "C" int qt_cuda_cross_entropy_forward(float *losses, float *probs, const float *logits,
                                             const int *labels, const float *soft_targets,
                                             float smoothing, size_t batch, size_t classes,
                                             qt_err *err) {
  const char *who = "qt_cuda_cross_entropy_forward";
  if (batch > INT_MAX) return qt_err_set(err, QT_EINVAL, "%s: batch %zu is too large", who, batch);
  if (batch == 0) return 0;
  if (classes == 0 || !losses || !probs || !logits || (!soft_targets && !labels)) {
    return qt_err_set(err, QT_EINVAL, "%s: NULL array or no classes", who);
  }
  if (!soft_targets) {
    int rc = check_labels(labels, batch, classes, who, err);
    if (rc < 0) return rc;
  }
  cross_entropy_forward_kernel<<<(unsigned)batch, QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
      losses, probs, logits, labels, soft_targets, smoothing, classes);
  return qt__cuda_check_launch(err, who, "the cross-entropy kernel");
}

extern "C" int qt_cuda_cross_entropy_backward(float *dlogits, const float *probs, const int *labels,
                                              const float *soft_targets, float smoothing,
                                              const float *dloss, int dloss_per_row, size_t batch,
                                              size_t classes, qt_err *err) {
  const char *who = "qt_cuda_cross_entropy_backward";
  size_t total = batch * classes;
  if (total == 0) return 0;
  if (!dlogits || !probs || !dloss || (!soft_targets && !labels)) {
    return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  }
  cross_entropy_backward_kernel<<<qt__cuda_blocks(total), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
      dlogits, probs, labels, soft_targets, smoothing, dloss, dloss_per_row, batch, classes);
  return qt__cuda_check_launch(err, who, "the cross-entropy backward kernel");
}

/*
 * qt_cuda_device.cu - CUDA device discovery and the mapping of CUDA runtime
 * errors to qtune's error codes.
 */
#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/cuda/qt_cuda_internal.h"

extern "C" int qt__cuda_code(cudaError_t status) {
  switch (status) {
    case cudaSuccess:
      return 0;
    case cudaErrorMemoryAllocation:
      return QT_ENOMEM;
    case cudaErrorInvalidValue:
      return QT_EINVAL;
    default:
      return QT_ENODEV;
  }
}

extern "C" int qt__cuda_error(qt_err *err, cudaError_t status, const char *what) {
  return qt_err_set(err, qt__cuda_code(status), "%s: %s (%s)", what, cudaGetErrorString(status),
                    cudaGetErrorName(status));
}

extern "C" int qt_cuda_device_count(int *count, qt_err *err) {
  if (!count) return qt_err_set(err, QT_EINVAL, "qt_cuda_device_count: count is NULL");
  *count = 0;
  int devices = 0;
  cudaError_t status = cudaGetDeviceCount(&devices);
  if (status != cudaSuccess) {
    /* No GPU, no driver, or a driver older than the runtime: the machine has
     * no usable device, which callers treat as "use the CPU", not a failure. */
    QT_LOG_DEBUG("no CUDA device: cudaGetDeviceCount: %s (%s)", cudaGetErrorString(status),
                 cudaGetErrorName(status));
    (void)cudaGetLastError(); /* leave no error behind for the next CUDA call */
    return 0;
  }
  *count = devices;
  return 0;
}

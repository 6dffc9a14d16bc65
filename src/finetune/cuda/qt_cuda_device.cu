/*
 * qt_cuda_device.cu - CUDA device discovery and the mapping of CUDA runtime
 * errors to qtune's error codes.
 */
#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>

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

/* The error is reported here, so it is also consumed: the runtime keeps the
 * last failure of any call (a cudaMalloc out of memory, say) for the next
 * cudaGetLastError, which would otherwise fail the next kernel launch's
 * check with it. A sticky error (a corrupted context) stays all the same. */
extern "C" int qt__cuda_error(qt_err *err, cudaError_t status, const char *what) {
  (void)cudaGetLastError();
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

extern "C" int qt_cuda_select_device(int index, qt_err *err) {
  int count = 0;
  qt_cuda_device_count(&count, NULL);
  if (index < 0 || index >= count)
    return qt_err_set(err, QT_ENODEV, "cuda:%d: this machine has %d CUDA device%s", index, count,
                      count == 1 ? "" : "s");
  cudaError_t status = cudaSetDevice(index);
  if (status != cudaSuccess) return qt__cuda_error(err, status, "qt_cuda_select_device");
  return 0;
}

extern "C" int qt_cuda_device_info(qt_cuda_info *info, qt_err *err) {
  if (!info) return qt_err_set(err, QT_EINVAL, "qt_cuda_device_info: info is NULL");
  memset(info, 0, sizeof *info);
  int device = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status != cudaSuccess)
    return qt__cuda_error(err, status, "qt_cuda_device_info: cudaGetDevice");
  cudaDeviceProp prop;
  status = cudaGetDeviceProperties(&prop, device);
  if (status != cudaSuccess)
    return qt__cuda_error(err, status, "qt_cuda_device_info: cudaGetDeviceProperties");
  snprintf(info->name, sizeof info->name, "%s", prop.name);
  info->major = prop.major;
  info->minor = prop.minor;
  info->multiprocessors = prop.multiProcessorCount;
  size_t free_bytes = 0, total_bytes = 0;
  status = cudaMemGetInfo(&free_bytes, &total_bytes);
  if (status != cudaSuccess)
    return qt__cuda_error(err, status, "qt_cuda_device_info: cudaMemGetInfo");
  info->memory_free = free_bytes;
  info->memory_total = total_bytes;
  return 0;
}

/*
 * qt_cuda_internal.h - helpers shared by the .cu files of finetune/cuda/.
 * Included only from CUDA C++ sources (it needs cuda_runtime.h); not part of
 * the public API.
 */
#ifndef QT_CUDA_INTERNAL_H
#define QT_CUDA_INTERNAL_H

#include <cuda_runtime.h>

#include "core/qt_core.h"

extern "C" {

/* Maps a CUDA runtime status to a QT_E* code: cudaErrorMemoryAllocation is
 * QT_ENOMEM, cudaErrorInvalidValue QT_EINVAL, anything else QT_ENODEV (no
 * usable device, or the device failed). cudaSuccess is 0. */
int qt__cuda_code(cudaError_t status);

/* Records "<what>: <CUDA's sentence> (<CUDA's error name>)" in err under the
 * mapped code and returns that code. */
int qt__cuda_error(qt_err *err, cudaError_t status, const char *what);

} /* extern "C" */

#endif /* QT_CUDA_INTERNAL_H */

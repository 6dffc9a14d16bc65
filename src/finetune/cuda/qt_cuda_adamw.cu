/*
 * qt_cuda_adamw.cu - the fused AdamW step on a CUDA device, the fast twin of
 * cpu/qt_cpu_adamw.c (formula in qt_finetune.h). The kernel evaluates the same
 * float expressions in the same order as the CPU reference, from the same
 * coefficients (qt__adamw_prepare, computed on the host in double); results
 * differ only by rounding, e.g. where nvcc contracts a multiply-add into an
 * FMA. tests/test_gpu_adamw.c checks the two against each other.
 */
#include <stdint.h>
#include <stdio.h>

#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "finetune/cuda/qt_cuda_internal.h"

/* Everything but the qt_ entry points is static. An anonymous namespace is
 * not enough under nvcc: its front end renames the namespace to a unique
 * named one (_GLOBAL__N__<hash>), so kernels, their host launch stubs and
 * helpers inside it would still be exported from libqtune.a. `static
 * __global__` gives the kernel and its stub internal linkage. */

static const int kThreadsPerBlock = 256;
/* Enough blocks to fill any current GPU; larger arrays are covered by the
 * grid-stride loop. */
static const size_t kMaxBlocks = 65536;

/* One thread per element, grid-stride. The arrays do not alias. */
static __global__ void adamw_step_kernel(float *__restrict__ params,
                                         const float *__restrict__ grads, float *__restrict__ m,
                                         float *__restrict__ v, size_t n,
                                         qt__adamw_coefficients c) {
  size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    float p = params[i];
    float g = grads[i];
    float m_new = c.beta1 * m[i] + c.one_minus_beta1 * g;
    float v_new = c.beta2 * v[i] + c.one_minus_beta2 * (g * g);
    m[i] = m_new;
    v[i] = v_new;
    float denom = sqrtf(v_new) / c.bias_correction2_sqrt + c.eps;
    params[i] = p - c.decay * p - c.step_size * (m_new / denom);
  }
}

/* Launches the kernel for already checked arguments; n > 0. */
static int launch_adamw_step(float *params, const float *grads, float *m, float *v, size_t n,
                             const qt__adamw_coefficients &c, const char *who, qt_err *err) {
  size_t blocks = (n + kThreadsPerBlock - 1) / kThreadsPerBlock;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  adamw_step_kernel<<<(unsigned)blocks, kThreadsPerBlock, 0, qt__cuda_stream()>>>(params, grads, m,
                                                                                  v, n, c);
  cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    char what[128];
    snprintf(what, sizeof what, "%s: launching the AdamW kernel (n = %zu)", who, n);
    return qt__cuda_error(err, status, what);
  }
  return 0;
}

extern "C" int qt_cuda_adamw_step(float *params, const float *grads, float *m, float *v, size_t n,
                                  const qt_adamw_params *hp, long step, qt_err *err) {
  const char *who = "qt_cuda_adamw_step";
  qt__adamw_coefficients c;
  int rc = qt__adamw_prepare(who, params, grads, m, v, n, hp, step, &c, err);
  if (rc < 0) return rc;
  if (n == 0) return 0;
  return launch_adamw_step(params, grads, m, v, n, c, who, err);
}

extern "C" int qt_cuda_adamw_step_host(float *params, const float *grads, float *m, float *v,
                                       size_t n, const qt_adamw_params *hp, long step,
                                       qt_err *err) {
  const char *who = "qt_cuda_adamw_step_host";
  qt__adamw_coefficients c;
  int rc = qt__adamw_prepare(who, params, grads, m, v, n, hp, step, &c, err);
  if (rc < 0) return rc;
  if (n == 0) return 0;
  if (n > SIZE_MAX / (4 * sizeof(float))) {
    return qt_err_set(err, QT_ENOMEM, "%s: n = %zu is too large to allocate", who, n);
  }

  /* One allocation holds the four arrays: params, grads, m, v (n floats each). */
  size_t bytes = n * sizeof(float);
  float *device = NULL; /* (4, n) */
  char what[160];
  cudaError_t status = cudaMalloc((void **)&device, 4 * bytes);
  if (status != cudaSuccess) {
    snprintf(what, sizeof what, "%s: cudaMalloc of %zu bytes", who, 4 * bytes);
    return qt__cuda_error(err, status, what);
  }
  float *d_params = device;
  float *d_grads = device + n;
  float *d_m = device + 2 * n;
  float *d_v = device + 3 * n;

  const char *stage = "copying the inputs to the device";
  status = cudaMemcpy(d_params, params, bytes, cudaMemcpyHostToDevice);
  if (status == cudaSuccess) status = cudaMemcpy(d_grads, grads, bytes, cudaMemcpyHostToDevice);
  if (status == cudaSuccess) status = cudaMemcpy(d_m, m, bytes, cudaMemcpyHostToDevice);
  if (status == cudaSuccess) status = cudaMemcpy(d_v, v, bytes, cudaMemcpyHostToDevice);
  if (status == cudaSuccess) {
    rc = launch_adamw_step(d_params, d_grads, d_m, d_v, n, c, who, err);
    if (rc < 0) {
      cudaFree(device);
      return rc;
    }
    stage = "running the AdamW kernel";
    status = cudaDeviceSynchronize();
  }
  if (status == cudaSuccess) {
    stage = "copying the results to the host";
    status = cudaMemcpy(params, d_params, bytes, cudaMemcpyDeviceToHost);
    if (status == cudaSuccess) status = cudaMemcpy(m, d_m, bytes, cudaMemcpyDeviceToHost);
    if (status == cudaSuccess) status = cudaMemcpy(v, d_v, bytes, cudaMemcpyDeviceToHost);
  }
  cudaFree(device);
  if (status != cudaSuccess) {
    snprintf(what, sizeof what, "%s: %s (n = %zu)", who, stage, n);
    return qt__cuda_error(err, status, what);
  }
  return 0;
}

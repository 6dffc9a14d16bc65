/*
 * qt_cuda_memory.cu - device memory helpers, the matrix-product precision
 * switch, the process's cuBLAS handles and the row-major GEMM that the CUDA
 * layer ops share.
 */
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <new>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "finetune/cuda/qt_cuda_internal.h"

/* ------------------------------------------------------------------------- */
/* Errors                                                                     */
/* ------------------------------------------------------------------------- */

extern "C" int qt__cuda_check_launch(qt_err *err, const char *who, const char *kernel) {
  cudaError_t status = cudaGetLastError();
  if (status == cudaSuccess) return 0;
  char what[160];
  snprintf(what, sizeof what, "%s: launching %s", who, kernel);
  return qt__cuda_error(err, status, what);
}

static const char *cublas_status_name(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    default:
      return "unknown cuBLAS status";
  }
}

extern "C" int qt__cublas_error(qt_err *err, cublasStatus_t status, const char *what) {
  int code = status == CUBLAS_STATUS_ALLOC_FAILED    ? QT_ENOMEM
             : status == CUBLAS_STATUS_INVALID_VALUE ? QT_EINVAL
                                                     : QT_ENODEV;
  return qt_err_set(err, code, "%s: %s (%d)", what, cublas_status_name(status), (int)status);
}

/* ------------------------------------------------------------------------- */
/* Device memory                                                              */
/* ------------------------------------------------------------------------- */

extern "C" int qt_cuda_malloc(void **ptr, size_t bytes, qt_err *err) {
  if (!ptr) return qt_err_set(err, QT_EINVAL, "qt_cuda_malloc: ptr is NULL");
  *ptr = NULL;
  if (bytes == 0) return 0;
  cudaError_t status = cudaMalloc(ptr, bytes);
  if (status != cudaSuccess) {
    *ptr = NULL;
    char what[96];
    snprintf(what, sizeof what, "qt_cuda_malloc: cudaMalloc of %zu bytes", bytes);
    return qt__cuda_error(err, status, what);
  }
  return 0;
}

/* Failures of the two below are dropped (a caller freeing cannot act on
 * them), and cleared so that no later launch check reports them. */
extern "C" void qt_cuda_free(void *ptr) {
  if (ptr && cudaFree(ptr) != cudaSuccess) (void)cudaGetLastError();
}

extern "C" int qt_cuda_copy_to_device(void *dst, const void *src, size_t bytes, qt_err *err) {
  if (bytes == 0) return 0;
  if (!dst || !src) return qt_err_set(err, QT_EINVAL, "qt_cuda_copy_to_device: NULL pointer");
  cudaStream_t stream = qt__cuda_stream();
  cudaError_t status = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream);
  if (status == cudaSuccess) status = cudaStreamSynchronize(stream);
  if (status != cudaSuccess) return qt__cuda_error(err, status, "qt_cuda_copy_to_device");
  return 0;
}

extern "C" int qt_cuda_copy_to_host(void *dst, const void *src, size_t bytes, qt_err *err) {
  if (bytes == 0) return 0;
  if (!dst || !src) return qt_err_set(err, QT_EINVAL, "qt_cuda_copy_to_host: NULL pointer");
  cudaStream_t stream = qt__cuda_stream();
  cudaError_t status = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream);
  if (status == cudaSuccess) status = cudaStreamSynchronize(stream);
  if (status != cudaSuccess) return qt__cuda_error(err, status, "qt_cuda_copy_to_host");
  return 0;
}

extern "C" int qt_cuda_zero(void *ptr, size_t bytes, qt_err *err) {
  if (bytes == 0) return 0;
  if (!ptr) return qt_err_set(err, QT_EINVAL, "qt_cuda_zero: NULL pointer");
  cudaError_t status = cudaMemsetAsync(ptr, 0, bytes, qt__cuda_stream());
  if (status != cudaSuccess) return qt__cuda_error(err, status, "qt_cuda_zero");
  return 0;
}

extern "C" int qt_cuda_copy_on_device(void *dst, const void *src, size_t bytes, qt_err *err) {
  if (bytes == 0) return 0;
  if (!dst || !src) return qt_err_set(err, QT_EINVAL, "qt_cuda_copy_on_device: NULL pointer");
  cudaError_t status =
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, qt__cuda_stream());
  if (status != cudaSuccess) return qt__cuda_error(err, status, "qt_cuda_copy_on_device");
  return 0;
}

extern "C" int qt_cuda_copy_rows(float *dst, size_t dst_stride, const float *src, size_t src_stride,
                                 size_t cols, size_t rows, qt_err *err) {
  if (cols == 0 || rows == 0) return 0;
  if (!dst || !src) return qt_err_set(err, QT_EINVAL, "qt_cuda_copy_rows: NULL pointer");
  if (cols > dst_stride || cols > src_stride)
    return qt_err_set(err, QT_EINVAL, "qt_cuda_copy_rows: %zu columns exceed a stride (%zu, %zu)",
                      cols, dst_stride, src_stride);
  cudaError_t status =
      cudaMemcpy2DAsync(dst, dst_stride * sizeof(float), src, src_stride * sizeof(float),
                        cols * sizeof(float), rows, cudaMemcpyDeviceToDevice, qt__cuda_stream());
  if (status != cudaSuccess) return qt__cuda_error(err, status, "qt_cuda_copy_rows");
  return 0;
}

extern "C" int qt_cuda_host_register(void *ptr, size_t bytes, qt_err *err) {
  if (bytes == 0) return 0;
  if (!ptr) return qt_err_set(err, QT_EINVAL, "qt_cuda_host_register: NULL pointer");
  cudaError_t status = cudaHostRegister(ptr, bytes, cudaHostRegisterDefault);
  if (status != cudaSuccess) {
    char what[96];
    snprintf(what, sizeof what, "qt_cuda_host_register: page-locking %zu bytes", bytes);
    return qt__cuda_error(err, status, what);
  }
  return 0;
}

extern "C" void qt_cuda_host_unregister(void *ptr) {
  if (ptr && cudaHostUnregister(ptr) != cudaSuccess) (void)cudaGetLastError();
}

extern "C" int qt_cuda_synchronize(qt_err *err) {
  cudaError_t status = cudaDeviceSynchronize();
  if (status != cudaSuccess) return qt__cuda_error(err, status, "qt_cuda_synchronize");
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Matrix-product precision and cuBLAS                                        */
/* ------------------------------------------------------------------------- */

/* A qt_matmul_precision; QT_MATMUL_FP32 by default. */
static int matmul_precision = QT_MATMUL_FP32;

extern "C" qt_matmul_precision qt_cuda_set_matmul_precision(qt_matmul_precision precision) {
  int p =
      precision == QT_MATMUL_TF32 || precision == QT_MATMUL_BF16 || precision == QT_MATMUL_BF16_FAST
          ? (int)precision
          : (int)QT_MATMUL_FP32;
  return (qt_matmul_precision)__atomic_exchange_n(&matmul_precision, p, __ATOMIC_SEQ_CST);
}

extern "C" int qt__cuda_switch_on(const char *name, int *state) {
  int on = __atomic_load_n(state, __ATOMIC_RELAXED);
  if (on < 0) {
    const char *value = getenv(name);
    on = !(value && strcmp(value, "0") == 0);
    /* A setter's value, stored meanwhile, wins over the environment's. */
    int unset = -1;
    __atomic_compare_exchange_n(state, &unset, on, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    on = __atomic_load_n(state, __ATOMIC_RELAXED);
  }
  return on;
}

extern "C" int qt__cuda_set_switch(const char *name, int *state, int on) {
  int previous = qt__cuda_switch_on(name, state);
  __atomic_store_n(state, on != 0, __ATOMIC_SEQ_CST);
  return previous;
}

extern "C" int qt__cuda_matmul_precision(void) {
  return __atomic_load_n(&matmul_precision, __ATOMIC_RELAXED);
}

/* The per-device state below (cuBLAS handles, scratch) is indexed by the
 * calling thread's device. */
#define QT_CUDA_MAX_DEVICES 64

static int current_device(int *device, const char *who, qt_err *err) {
  cudaError_t status = cudaGetDevice(device);
  if (status != cudaSuccess) {
    char what[128];
    snprintf(what, sizeof what, "%s: cudaGetDevice", who);
    return qt__cuda_error(err, status, what);
  }
  if (*device < 0 || *device >= QT_CUDA_MAX_DEVICES)
    return qt_err_set(err, QT_ENODEV, "%s: device %d is beyond the %d that qtune supports", who,
                      *device, QT_CUDA_MAX_DEVICES);
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Streams                                                                    */
/* ------------------------------------------------------------------------- */

/* A block of device memory, grown when a call needs more (cudaFree waits
 * for the work that may still read the old one) and kept while its stream
 * lives. Work on one stream is ordered, so one block serves every call
 * queued there; the lock keeps host threads that share the stream from
 * interleaving their passes. */
typedef struct scratch_block {
  void *block = nullptr;
  size_t bytes = 0;
  pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
} scratch_block;

/* A weight's BF16 copy, rounded by a linear forward (QT__BF16_KEEP_WEIGHT)
 * and valid until a backward takes it (QT__BF16_KEPT_WEIGHT); the block
 * stays with the slot, for the weight's next forward. */
typedef struct kept_weight {
  const float *weight; /* NULL: a slot never used */
  size_t elements;     /* of the copy now */
  __nv_bfloat16 *copy;
  size_t cap; /* elements the block holds */
  int valid;
} kept_weight;
/* A ViT-L has 96 linear layers in its blocks. */
#define QT_CUDA_KEPT_WEIGHTS 128

/* qt_cuda_stream_t: a stream and what the work queued on it uses. Each
 * device has a default one for the legacy default stream (stream 0), its
 * cuBLAS handle created on first use and its scratch kept for the
 * process. */
struct qt_cuda_stream {
  cudaStream_t stream = 0;
  cublasHandle_t blas = nullptr;
  /* qt_cuda_upload_async's copies (a non-blocking stream: ordered with
   * this one only through `copied`, recorded after each). None for a
   * default one. */
  cudaStream_t copy = 0;
  cudaEvent_t copied = nullptr;
  /* The partial sums of the reductions split into chunks, and the partial
   * products of qt__cuda_products_scratch_lock's callers (which may sum
   * them with the former while they hold the latter). */
  scratch_block sums, products;
  /* BF16 copies of an operand that its producer rounded, passed to the
   * products as a16 or b16 (a linear backward's dout, rounded as its bias
   * gradient is summed). The products round their other operands under
   * bf16_lock, which a holder of this one may take, not the reverse. */
  scratch_block rounded;
  /* cuBLASLt's workspace (lt_workspace_bytes). */
  scratch_block lt_workspace;
  /* qt__cuda_tile_counters': QT_CUDA_TILE_COUNTERS unsigned, zeroed when
   * made (under the sums' lock, which every launch that uses them holds). */
  unsigned *tile_counters = nullptr;
  /* BF16 operands: each GEMM under QT_MATMUL_BF16 rounds the spans of A
   * and B that it reads to BF16 (round to nearest even) into bf16[0] and
   * bf16[1], kept and grown as needed; bf16[2] holds the bias of a BF16
   * output's epilogue. The spans keep their layout, so the leading
   * dimensions and batch strides stay as they are. bf16_lock keeps host
   * threads from interleaving between a rounding and its product. */
  __nv_bfloat16 *bf16[3] = {nullptr, nullptr, nullptr};
  size_t bf16_cap[3] = {0, 0, 0}; /* elements */
  pthread_mutex_t bf16_lock = PTHREAD_MUTEX_INITIALIZER;
  /* The weights that linear forwards kept rounded for their backwards
   * (qt__cuda_keep_weight), by address; a created stream's only. */
  kept_weight kept[QT_CUDA_KEPT_WEIGHTS] = {};
  pthread_mutex_t kept_lock = PTHREAD_MUTEX_INITIALIZER;
  /* The cuDNN handle (qt__cuda_dnn_lock), bound to `stream`. */
  void *dnn = nullptr;
  pthread_mutex_t dnn_lock = PTHREAD_MUTEX_INITIALIZER;
};

static qt_cuda_stream default_streams[QT_CUDA_MAX_DEVICES];
static pthread_mutex_t handles_lock = PTHREAD_MUTEX_INITIALIZER;
/* The calling thread's stream (qt_cuda_stream_use); NULL: its device's
 * default. */
static thread_local qt_cuda_stream *current_stream;

extern "C" cudaStream_t qt__cuda_stream(void) {
  return current_stream ? current_stream->stream : 0;
}

/* The calling thread's stream: the current one, else the default one of
 * its device. */
static int thread_stream(qt_cuda_stream **out, const char *who, qt_err *err) {
  if (current_stream) {
    *out = current_stream;
    return 0;
  }
  int device = 0;
  int rc = current_device(&device, who, err);
  if (rc < 0) return rc;
  *out = &default_streams[device];
  return 0;
}

extern "C" int qt_cuda_stream_create(qt_cuda_stream_t **out, qt_err *err) {
  const char *who = "qt_cuda_stream_create";
  if (!out) return qt_err_set(err, QT_EINVAL, "%s: out is NULL", who);
  *out = NULL;
  int device = 0;
  int rc = current_device(&device, who, err);
  if (rc < 0) return rc;
  qt_cuda_stream *s = new (std::nothrow) qt_cuda_stream();
  if (!s) return qt_err_set(err, QT_ENOMEM, "%s: out of host memory", who);
  cudaError_t status = cudaStreamCreateWithFlags(&s->stream, cudaStreamDefault);
  if (status == cudaSuccess) status = cudaStreamCreateWithFlags(&s->copy, cudaStreamNonBlocking);
  if (status == cudaSuccess) status = cudaEventCreateWithFlags(&s->copied, cudaEventDisableTiming);
  cublasStatus_t blas = CUBLAS_STATUS_SUCCESS;
  if (status == cudaSuccess) blas = cublasCreate(&s->blas);
  if (status == cudaSuccess && blas == CUBLAS_STATUS_SUCCESS)
    blas = cublasSetStream(s->blas, s->stream);
  if (status == cudaSuccess && blas == CUBLAS_STATUS_SUCCESS) {
    *out = s;
    return 0;
  }
  /* What was made, unmade. */
  if (s->blas) cublasDestroy(s->blas);
  if (s->copied) cudaEventDestroy(s->copied);
  if (s->copy) cudaStreamDestroy(s->copy);
  if (s->stream) cudaStreamDestroy(s->stream);
  delete s;
  if (status != cudaSuccess) return qt__cuda_error(err, status, "qt_cuda_stream_create");
  return qt__cublas_error(err, blas, "qt_cuda_stream_create: cublasCreate");
}

/* Failures are dropped and cleared, as qt_cuda_free's. */
extern "C" void qt_cuda_stream_destroy(qt_cuda_stream_t *s) {
  if (!s) return;
  if (current_stream == s) current_stream = NULL;
  if (cudaStreamSynchronize(s->copy) != cudaSuccess) (void)cudaGetLastError();
  if (cudaStreamSynchronize(s->stream) != cudaSuccess) (void)cudaGetLastError();
  scratch_block *blocks[] = {&s->sums, &s->products, &s->rounded, &s->lt_workspace};
  for (scratch_block *b : blocks) {
    if (b->block && cudaFree(b->block) != cudaSuccess) (void)cudaGetLastError();
    pthread_mutex_destroy(&b->lock);
  }
  for (__nv_bfloat16 *b : s->bf16) {
    if (b && cudaFree(b) != cudaSuccess) (void)cudaGetLastError();
  }
  for (kept_weight &k : s->kept) {
    if (k.copy && cudaFree(k.copy) != cudaSuccess) (void)cudaGetLastError();
  }
  if (s->tile_counters && cudaFree(s->tile_counters) != cudaSuccess) (void)cudaGetLastError();
  pthread_mutex_destroy(&s->bf16_lock);
  pthread_mutex_destroy(&s->kept_lock);
  qt__cudnn_destroy(s->dnn);
  pthread_mutex_destroy(&s->dnn_lock);
  cublasDestroy(s->blas);
  cudaEventDestroy(s->copied);
  cudaStreamDestroy(s->copy);
  if (cudaStreamDestroy(s->stream) != cudaSuccess) (void)cudaGetLastError();
  delete s;
}

extern "C" int qt_cuda_upload_async(void *dst, const void *src, size_t bytes, qt_err *err) {
  qt_cuda_stream *s = current_stream;
  if (!s) return qt_cuda_copy_to_device(dst, src, bytes, err);
  if (bytes == 0) return 0;
  if (!dst || !src) return qt_err_set(err, QT_EINVAL, "qt_cuda_upload_async: NULL pointer");
  cudaError_t status = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s->copy);
  if (status == cudaSuccess) status = cudaEventRecord(s->copied, s->copy);
  if (status != cudaSuccess) return qt__cuda_error(err, status, "qt_cuda_upload_async");
  return 0;
}

extern "C" int qt_cuda_upload_wait(qt_err *err) {
  qt_cuda_stream *s = current_stream;
  if (!s) return 0;
  cudaError_t status = cudaStreamWaitEvent(s->stream, s->copied, 0);
  if (status != cudaSuccess) return qt__cuda_error(err, status, "qt_cuda_upload_wait");
  return 0;
}

extern "C" qt_cuda_stream_t *qt_cuda_stream_use(qt_cuda_stream_t *s) {
  qt_cuda_stream *previous = current_stream;
  current_stream = s;
  return previous;
}

extern "C" int qt__cublas_handle(cublasHandle_t *handle, const char *who, qt_err *err) {
  qt_cuda_stream *s = NULL;
  int rc = thread_stream(&s, who, err);
  if (rc < 0) return rc;
  /* A created stream made its handle; a default one makes it here. */
  pthread_mutex_lock(&handles_lock);
  cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
  if (!s->blas) {
    cublasHandle_t created = NULL;
    status = cublasCreate(&created);
    if (status == CUBLAS_STATUS_SUCCESS) s->blas = created;
  }
  *handle = s->blas;
  pthread_mutex_unlock(&handles_lock);
  if (status != CUBLAS_STATUS_SUCCESS) {
    char what[128];
    snprintf(what, sizeof what, "%s: cublasCreate", who);
    return qt__cublas_error(err, status, what);
  }
  return 0;
}

/* The stream whose cuDNN handle the calling thread holds. */
static thread_local qt_cuda_stream *dnn_held;

extern "C" int qt__cuda_dnn_lock(void **out,
                                 int (*make)(void **handle, cudaStream_t stream, qt_err *err),
                                 const char *who, qt_err *err) {
  qt_cuda_stream *s = NULL;
  int rc = thread_stream(&s, who, err);
  if (rc < 0) return rc;
  pthread_mutex_lock(&s->dnn_lock);
  if (!s->dnn && (rc = make(&s->dnn, s->stream, err)) != 0) {
    pthread_mutex_unlock(&s->dnn_lock);
    return rc;
  }
  *out = s->dnn;
  dnn_held = s;
  return 0;
}

extern "C" void qt__cuda_dnn_unlock(void) {
  qt_cuda_stream *s = dnn_held;
  dnn_held = NULL;
  if (s) pthread_mutex_unlock(&s->dnn_lock);
}

/* Locks the block `which` of the thread's stream, grown to at least
 * `bytes` (*out); *held records it for the unlock. */
static int scratch_lock(scratch_block qt_cuda_stream::*which, size_t bytes, void **out,
                        scratch_block **held, const char *who, qt_err *err) {
  qt_cuda_stream *s = NULL;
  int rc = thread_stream(&s, who, err);
  if (rc < 0) return rc;
  scratch_block *b = &(s->*which);
  pthread_mutex_lock(&b->lock);
  if (b->bytes < bytes) {
    if (b->block) cudaFree(b->block);
    b->block = NULL;
    b->bytes = 0;
    cudaError_t status = cudaMalloc(&b->block, bytes);
    if (status != cudaSuccess) {
      b->block = NULL;
      pthread_mutex_unlock(&b->lock);
      return qt__cuda_error(err, status, who);
    }
    b->bytes = bytes;
  }
  *out = b->block;
  *held = b;
  return 0;
}

/* The blocks this thread holds, one of each kind at a time. */
static thread_local scratch_block *held_sums, *held_products, *held_rounded;

extern "C" int qt__cuda_sums_scratch_lock(size_t doubles, double **out, const char *who,
                                          qt_err *err) {
  return scratch_lock(&qt_cuda_stream::sums, doubles * sizeof **out, (void **)out, &held_sums, who,
                      err);
}

extern "C" void qt__cuda_sums_scratch_unlock(void) {
  pthread_mutex_unlock(&held_sums->lock);
}

/* The column tiles a launch of the column sums counts at most: its grid
 * of tiles x chunks has at most 1024 blocks (qt_colsum::plan). */
#define QT_CUDA_TILE_COUNTERS 1024

extern "C" int qt__cuda_tile_counters(unsigned **out, size_t tiles, const char *who, qt_err *err) {
  if (tiles > QT_CUDA_TILE_COUNTERS)
    return qt_err_set(err, QT_EINVAL, "%s: %zu column tiles to count", who, tiles);
  qt_cuda_stream *s = NULL;
  int rc = thread_stream(&s, who, err);
  if (rc < 0) return rc;
  if (!s->tile_counters) {
    unsigned *made = NULL;
    cudaError_t status = cudaMalloc((void **)&made, QT_CUDA_TILE_COUNTERS * sizeof *made);
    if (status == cudaSuccess)
      status = cudaMemsetAsync(made, 0, QT_CUDA_TILE_COUNTERS * sizeof *made, s->stream);
    if (status != cudaSuccess) {
      if (made) cudaFree(made);
      return qt__cuda_error(err, status, who);
    }
    s->tile_counters = made;
  }
  *out = s->tile_counters;
  return 0;
}

extern "C" int qt__cuda_products_scratch_lock(size_t floats, float **out, const char *who,
                                              qt_err *err) {
  return scratch_lock(&qt_cuda_stream::products, floats * sizeof **out, (void **)out,
                      &held_products, who, err);
}

extern "C" void qt__cuda_products_scratch_unlock(void) {
  pthread_mutex_unlock(&held_products->lock);
}

extern "C" int qt__cuda_rounded_scratch_lock(size_t elements, void **out, const char *who,
                                             qt_err *err) {
  return scratch_lock(&qt_cuda_stream::rounded, elements * sizeof(__nv_bfloat16), out,
                      &held_rounded, who, err);
}

extern "C" void qt__cuda_rounded_scratch_unlock(void) {
  pthread_mutex_unlock(&held_rounded->lock);
}

static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    to_bf16_kernel(__nv_bfloat16 *__restrict__ out, const float *__restrict__ in, size_t n) {
  size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = __float2bfloat16_rn(in[i]);
}

/* The same four at a time, for an input on a 16-byte boundary (the output,
 * a block from cudaMalloc, is on a 256-byte one): one 16-byte load and one
 * 8-byte store per four values instead of four and four. The first
 * threads also round the n % 4 values after the last group of four. */
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    to_bf16_x4_kernel(__nv_bfloat16 *__restrict__ out, const float *__restrict__ in, size_t n) {
  size_t quads = n / 4, first = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  size_t stride = (size_t)gridDim.x * blockDim.x;
  const float4 *in4 = reinterpret_cast<const float4 *>(in);
  uint2 *out4 = reinterpret_cast<uint2 *>(out);
  for (size_t q = first; q < quads; q += stride) {
    float4 v = in4[q];
    __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
    uint2 packed;
    packed.x = *reinterpret_cast<const unsigned *>(&lo);
    packed.y = *reinterpret_cast<const unsigned *>(&hi);
    out4[q] = packed;
  }
  if (first < n - quads * 4) out[quads * 4 + first] = __float2bfloat16_rn(in[quads * 4 + first]);
}

/* Queues out = in rounded on `stream`, four at a time where the arrays'
 * places allow. */
static void round_on(cudaStream_t stream, __nv_bfloat16 *out, const float *in, size_t n) {
  if ((uintptr_t)in % 16 == 0 && (uintptr_t)out % 8 == 0)
    to_bf16_x4_kernel<<<qt__cuda_blocks(n / 4), QT_CUDA_THREADS, 0, stream>>>(out, in, n);
  else
    to_bf16_kernel<<<qt__cuda_blocks(n), QT_CUDA_THREADS, 0, stream>>>(out, in, n);
}

extern "C" int qt__cuda_round_bf16(void *out, const float *in, size_t n, const char *who,
                                   qt_err *err) {
  if (n == 0) return 0;
  round_on(qt__cuda_stream(), (__nv_bfloat16 *)out, in, n);
  return qt__cuda_check_launch(err, who, "the BF16 rounding");
}

/* Kept weights (QT__BF16_KEEP_WEIGHT): on unless QT_CUDA_KEEP_WEIGHTS=0;
 * how many backwards took one. */
static int keep_weights = -1;
static long kept_taken;

extern "C" int qt__cuda_set_keep_weights(int on) {
  return qt__cuda_set_switch("QT_CUDA_KEEP_WEIGHTS", &keep_weights, on);
}

extern "C" long qt__cuda_kept_weight_count(void) {
  return __atomic_load_n(&kept_taken, __ATOMIC_RELAXED);
}

extern "C" const void *qt__cuda_keep_weight(const float *weight, size_t elements) {
  qt_cuda_stream *s = current_stream;
  if (!s || !weight || elements == 0 || !qt__cuda_switch_on("QT_CUDA_KEEP_WEIGHTS", &keep_weights))
    return NULL;
  pthread_mutex_lock(&s->kept_lock);
  /* The weight's own slot, else one never used or already taken. */
  kept_weight *k = NULL, *spare = NULL;
  for (kept_weight &slot : s->kept) {
    if (slot.weight == weight) {
      k = &slot;
      break;
    }
    if (!spare && !slot.valid) spare = &slot;
  }
  if (!k) k = spare;
  const void *out = NULL;
  if (k) {
    k->valid = 0;
    k->weight = weight;
    if (k->cap < elements) {
      if (k->copy && cudaFree(k->copy) != cudaSuccess) (void)cudaGetLastError();
      k->copy = NULL;
      k->cap = 0;
      if (cudaMalloc((void **)&k->copy, elements * sizeof *k->copy) != cudaSuccess) {
        (void)cudaGetLastError(); /* no room: the products round the weight as before */
        k->copy = NULL;
      } else {
        k->cap = elements;
      }
    }
    if (k->copy) {
      round_on(s->stream, k->copy, weight, elements);
      if (cudaPeekAtLastError() == cudaSuccess) {
        k->elements = elements;
        k->valid = 1;
        out = k->copy;
      }
    }
  }
  pthread_mutex_unlock(&s->kept_lock);
  return out;
}

extern "C" const void *qt__cuda_kept_weight(const float *weight, size_t elements) {
  qt_cuda_stream *s = current_stream;
  if (!s || !weight) return NULL;
  const void *out = NULL;
  pthread_mutex_lock(&s->kept_lock);
  for (kept_weight &slot : s->kept) {
    if (slot.weight == weight && slot.valid && slot.elements == elements) {
      slot.valid = 0;
      out = slot.copy;
      __atomic_add_fetch(&kept_taken, 1, __ATOMIC_RELAXED);
      break;
    }
  }
  pthread_mutex_unlock(&s->kept_lock);
  return out;
}

/* Elements from the first to the last that a row-major (rows, cols) matrix
 * with row stride ld, `batch` times stride apart, occupies. */
static size_t matrix_span(size_t rows, size_t cols, size_t ld, long long stride, size_t batch) {
  return (batch - 1) * (size_t)stride + (rows - 1) * ld + cols;
}

/* A BF16 copy of the span elements at src in block i of s's BF16
 * operands (*out). Call under s->bf16_lock. */
static int round_into_block(qt_cuda_stream *s, int i, const float *src, size_t span,
                            const __nv_bfloat16 **out, const char *who, qt_err *err) {
  if (span > s->bf16_cap[i]) {
    if (s->bf16[i]) cudaFree(s->bf16[i]);
    s->bf16[i] = NULL;
    s->bf16_cap[i] = 0;
    cudaError_t status = cudaMalloc((void **)&s->bf16[i], span * sizeof(__nv_bfloat16));
    if (status != cudaSuccess) {
      s->bf16[i] = NULL;
      char what[160];
      snprintf(what, sizeof what, "%s: %zu BF16 operand elements", who, span);
      return qt__cuda_error(err, status, what);
    }
    s->bf16_cap[i] = span;
  }
  round_on(s->stream, s->bf16[i], src, span);
  *out = s->bf16[i];
  return qt__cuda_check_launch(err, who, "the BF16 rounding");
}

/* BF16 copies of the spans of a (span_a elements) and b (span_b) in s's
 * scratch: *out_a, *out_b. A NULL a keeps the scratch's A as the last call
 * left it (its span_a elements). Call under s->bf16_lock. */
static int to_bf16(qt_cuda_stream *s, const float *a, size_t span_a, const float *b, size_t span_b,
                   const __nv_bfloat16 **out_a, const __nv_bfloat16 **out_b, const char *who,
                   qt_err *err) {
  int rc = 0;
  *out_a = s->bf16[0];
  *out_b = s->bf16[1];
  if (a && (rc = round_into_block(s, 0, a, span_a, out_a, who, err)) < 0) return rc;
  if (b && (rc = round_into_block(s, 1, b, span_b, out_b, who, err)) < 0) return rc;
  return 0;
}

/* The elements of A and C that a product reads and writes, as stored:
 * op(A) (m, k) is A (k, m) when transposed. */
static size_t span_of_a(const qt__cuda_product *p) {
  return matrix_span(p->trans_a ? p->k : p->m, p->trans_a ? p->m : p->k, p->lda, p->stride_a,
                     p->batch);
}

static size_t span_of_c(const qt__cuda_product *p) {
  return matrix_span(p->m, p->n, p->ldc, p->stride_c, p->batch);
}

/* Whether product q writes into the span of A that product r reads. */
static int writes_a_of(const qt__cuda_product *q, const qt__cuda_product *r) {
  const char *c = q->c16 ? (const char *)q->c16 : (const char *)q->c;
  size_t c_bytes = span_of_c(q) * (q->c16 ? 2 : sizeof(float));
  const char *a = (const char *)r->a;
  return c < a + span_of_a(r) * sizeof(float) && a < c + c_bytes;
}

/* One product in `precision` (QT_MATMUL_BF16 here means: round the spans
 * of the operands not given in BF16 into scratch, under bf16_lock, which
 * the caller holds); keep_a: the scratch's A already holds this product's
 * A, rounded. */
static int gemm(qt_cuda_stream *s, const qt__cuda_product *p, int precision, int keep_a,
                const char *who, qt_err *err) {
  if (p->m > INT_MAX || p->n > INT_MAX || p->k > INT_MAX || p->lda > INT_MAX || p->ldb > INT_MAX ||
      p->ldc > INT_MAX || p->batch > INT_MAX) {
    return qt_err_set(err, QT_EINVAL,
                      "%s: matrix product of (%zu, %zu) x (%zu, %zu), %zu times, is too large "
                      "for cuBLAS's int sizes",
                      who, p->m, p->k, p->k, p->n, p->batch);
  }
  cublasHandle_t handle;
  int rc = qt__cublas_handle(&handle, who, err);
  if (rc < 0) return rc;
  /* cuBLAS is column-major: a row-major (rows, cols) matrix is its
   * transpose there. C^T (n, m) = op(B)^T . op(A)^T, so B comes first and
   * the transposition flags stay as they are. */
  cublasOperation_t op_a = p->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasOperation_t op_b = p->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasComputeType_t compute = precision == QT_MATMUL_TF32        ? CUBLAS_COMPUTE_32F_FAST_TF32
                                : precision == QT_MATMUL_BF16_FAST ? CUBLAS_COMPUTE_32F_FAST_16BF
                                                                   : CUBLAS_COMPUTE_32F;
  const void *a_data = p->a, *b_data = p->b;
  cudaDataType_t operand_type = CUDA_R_32F;
  if (precision == QT_MATMUL_BF16) {
    size_t span_b = matrix_span(p->trans_b ? p->n : p->k, p->trans_b ? p->k : p->n, p->ldb,
                                p->stride_b, p->batch);
    const __nv_bfloat16 *a16 = NULL, *b16 = NULL;
    rc = to_bf16(s, keep_a || p->a16 ? NULL : p->a, span_of_a(p), p->b16 ? NULL : p->b, span_b,
                 &a16, &b16, who, err);
    if (rc < 0) return rc;
    a_data = p->a16 ? p->a16 : a16;
    b_data = p->b16 ? p->b16 : b16;
    operand_type = CUDA_R_16BF;
  }
  if (p->c16 && (operand_type != CUDA_R_16BF || p->beta != 0.0f)) {
    return qt_err_set(err, QT_EINVAL,
                      "%s: a BF16 product is written only from BF16 operands with beta 0", who);
  }
  void *c_data = p->c16 ? p->c16 : (void *)p->c;
  cudaDataType_t c_type = p->c16 ? CUDA_R_16BF : CUDA_R_32F;
  int m = (int)p->m, n = (int)p->n, k = (int)p->k;
  cublasStatus_t status;
  if (p->batch == 1) {
    status = cublasGemmEx(handle, op_b, op_a, n, m, k, &p->alpha, b_data, operand_type, (int)p->ldb,
                          a_data, operand_type, (int)p->lda, &p->beta, c_data, c_type, (int)p->ldc,
                          compute, CUBLAS_GEMM_DEFAULT);
  } else {
    status = cublasGemmStridedBatchedEx(
        handle, op_b, op_a, n, m, k, &p->alpha, b_data, operand_type, (int)p->ldb, p->stride_b,
        a_data, operand_type, (int)p->lda, p->stride_a, &p->beta, c_data, c_type, (int)p->ldc,
        p->stride_c, (int)p->batch, compute, CUBLAS_GEMM_DEFAULT);
  }
  if (status != CUBLAS_STATUS_SUCCESS) {
    char what[192];
    snprintf(what, sizeof what, "%s: cuBLAS GEMM (%zu x %zu x %zu, batch %zu)", who, p->m, p->n,
             p->k, p->batch);
    return qt__cublas_error(err, status, what);
  }
  return 0;
}

/* The products of qt__cuda_gemm, qt__cuda_gemms and
 * qt__cuda_gemm_convert, in order, all in the precision of the call's
 * start. Under QT_MATMUL_BF16, round_spans says whether the operands' spans
 * are rounded into scratch (1) or left to cuBLAS's own conversion (0); a
 * product whose A is the previous product's (same array and span) reuses
 * its rounding unless the previous one wrote into it. */
static int products(const qt__cuda_product *p, size_t count, int round_spans, const char *who,
                    qt_err *err) {
  int precision = __atomic_load_n(&matmul_precision, __ATOMIC_RELAXED);
  if (precision == QT_MATMUL_BF16 && !round_spans) precision = QT_MATMUL_BF16_FAST;
  /* Products with an operand given in BF16 round the other one. */
  int rounding = precision == QT_MATMUL_BF16;
  for (size_t i = 0; i < count; i++) rounding |= p[i].a16 || p[i].b16;
  qt_cuda_stream *s = NULL;
  int rc = thread_stream(&s, who, err);
  if (rc < 0) return rc;
  if (rounding) pthread_mutex_lock(&s->bf16_lock);
  const qt__cuda_product *rounded = NULL; /* whose A the scratch holds */
  for (size_t i = 0; i < count && rc == 0; i++) {
    const qt__cuda_product *q = &p[i];
    if (q->m == 0 || q->n == 0 || q->batch == 0) continue;
    /* k 0: C = beta C, which cuBLAS does in any precision. */
    int in_bf16 = (precision == QT_MATMUL_BF16 || q->a16 || q->b16) && q->k > 0;
    int keep_a =
        in_bf16 && !q->a16 && rounded && rounded->a == q->a && span_of_a(rounded) == span_of_a(q);
    rc = gemm(s, q,
              in_bf16                       ? QT_MATMUL_BF16
              : precision == QT_MATMUL_BF16 ? QT_MATMUL_FP32
                                            : precision,
              keep_a, who, err);
    if (in_bf16 && !q->a16) rounded = q;
    /* A product that wrote into its A's span leaves the scratch stale. */
    if (rounded && writes_a_of(q, rounded)) rounded = NULL;
  }
  if (rounding) pthread_mutex_unlock(&s->bf16_lock);
  return rc;
}

extern "C" int qt__cuda_gemm(int trans_a, int trans_b, size_t m, size_t n, size_t k, float alpha,
                             const float *a, size_t lda, long long stride_a, const float *b,
                             size_t ldb, long long stride_b, float beta, float *c, size_t ldc,
                             long long stride_c, size_t batch, const char *who, qt_err *err) {
  qt__cuda_product p = {trans_a, trans_b, m,        n,    k, alpha, a,        lda,  stride_a,
                        b,       ldb,     stride_b, beta, c, ldc,   stride_c, batch};
  return products(&p, 1, 1, who, err);
}

extern "C" int qt__cuda_gemms(const qt__cuda_product *p, size_t count, const char *who,
                              qt_err *err) {
  return products(p, count, 1, who, err);
}

extern "C" int qt__cuda_gemm_convert(int trans_a, int trans_b, size_t m, size_t n, size_t k,
                                     float alpha, const float *a, size_t lda, long long stride_a,
                                     const float *b, size_t ldb, long long stride_b, float beta,
                                     float *c, size_t ldc, long long stride_c, size_t batch,
                                     const char *who, qt_err *err) {
  qt__cuda_product p = {trans_a, trans_b, m,        n,    k, alpha, a,        lda,  stride_a,
                        b,       ldb,     stride_b, beta, c, ldc,   stride_c, batch};
  return products(&p, 1, 0, who, err);
}

/* ------------------------------------------------------------------------- */
/* The linear forward with the bias in cuBLASLt's epilogue                     */
/* ------------------------------------------------------------------------- */

/* qt_cuda_linear_forward adds the bias in the product's epilogue
 * (CUBLASLT_EPILOGUE_BIAS) instead of broadcasting it into the output first
 * and multiplying with beta 1, which writes and reads the whole output once
 * more (ViT-B: about 0.7 GB per block and step at batch 64): 1.10x for
 * ViT-B/16 in BF16 on an H100 (docs/benchmarks/). On unless
 * QT_CUDA_LT_BIAS=0 or qt__cuda_set_lt_bias(0); test_gpu_ops
 * linear_bias_epilogue and linear_bias_broadcast check both paths,
 * tools/gpu-check's ViT-B run without it (bcast:) measures it. */
static int lt_bias = -1; /* the switch; -1 until the environment is read */
static cublasLtHandle_t lt_handles[QT_CUDA_MAX_DEVICES];
static long lt_products; /* products done by the epilogue path, for tests */
static long lt_queries;  /* calls of cuBLASLt's heuristic, for tests */

/* The size of cuBLASLt's workspace (one per stream): NVIDIA's recommended
 * size, 32 MiB from Hopper (sm_90) on and 4 MiB before (without one,
 * cuBLASLt may only choose among the algorithms that need none). */

static uint64_t lt_workspace_bytes(int device) {
  static uint64_t known[QT_CUDA_MAX_DEVICES]; /* 0 until asked: once per device */
  uint64_t bytes = __atomic_load_n(&known[device], __ATOMIC_RELAXED);
  if (bytes) return bytes;
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    cudaGetLastError();
    major = 0;
  }
  bytes = (uint64_t)(major >= 9 ? 32 : 4) << 20;
  __atomic_store_n(&known[device], bytes, __ATOMIC_RELAXED);
  return bytes;
}

extern "C" int qt__cuda_set_lt_bias(int on) {
  return qt__cuda_set_switch("QT_CUDA_LT_BIAS", &lt_bias, on);
}

extern "C" long qt__cuda_linear_lt_count(void) {
  return __atomic_load_n(&lt_products, __ATOMIC_RELAXED);
}

extern "C" long qt__cuda_linear_lt_queries(void) {
  return __atomic_load_n(&lt_queries, __ATOMIC_RELAXED);
}

/* cuBLASLt's choice of algorithm for a product, asked once per shape,
 * precision, alignments and device (a ViT asks for about six shapes) and
 * kept: the heuristic takes longer than queuing the product. A shape that
 * cuBLASLt declined is kept too (`declined`), so that its next calls go
 * to the broadcast path without asking again. A full table starts over. */
typedef struct lt_plan {
  int device, precision, out_bf16, declined;
  size_t n, in_c, out_c;
  uint32_t align[3];
  cublasLtMatmulAlgo_t algo;
} lt_plan;
#define LT_PLANS 64
static lt_plan lt_plans[LT_PLANS];
static size_t lt_plan_count;
static pthread_mutex_t lt_plans_lock = PTHREAD_MUTEX_INITIALIZER;

static int same_plan(const lt_plan *a, const lt_plan *b) {
  return a->device == b->device && a->precision == b->precision && a->out_bf16 == b->out_bf16 &&
         a->n == b->n && a->in_c == b->in_c && a->out_c == b->out_c && a->align[0] == b->align[0] &&
         a->align[1] == b->align[1] && a->align[2] == b->align[2];
}

/* 1 and plan->algo and plan->declined when a plan like *plan was kept. */
static int find_plan(lt_plan *plan) {
  int found = 0;
  pthread_mutex_lock(&lt_plans_lock);
  for (size_t i = 0; i < lt_plan_count && !found; i++) {
    if (same_plan(&lt_plans[i], plan)) {
      plan->algo = lt_plans[i].algo;
      plan->declined = lt_plans[i].declined;
      found = 1;
    }
  }
  pthread_mutex_unlock(&lt_plans_lock);
  return found;
}

static void keep_plan(const lt_plan *plan) {
  pthread_mutex_lock(&lt_plans_lock);
  if (lt_plan_count == LT_PLANS) lt_plan_count = 0;
  lt_plans[lt_plan_count++] = *plan;
  pthread_mutex_unlock(&lt_plans_lock);
}

/* The largest power of two up to 256 that divides the address and the row
 * stride in bytes: the alignment cuBLASLt may assume. */
static uint32_t alignment_of(const void *p, size_t ld_bytes) {
  uintptr_t bits = (uintptr_t)p | (uintptr_t)ld_bytes | 256u;
  return (uint32_t)(bits & (~bits + 1));
}

/* 0 when out (n, out_c) = inp (n, in_c) . weight^T + bias was queued by
 * cuBLASLt; 1 when the path is off or cuBLASLt declines or fails: the
 * caller then takes the broadcast path, which rewrites all of out whatever
 * a failed attempt left. out is FP32, or BF16 when out_bf16: the FP32 sums
 * rounded once by the epilogue, with the bias rounded to BF16 first, since
 * cuBLASLt takes a BF16 output's bias only in BF16 (cublasLt.h,
 * CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE), as PyTorch's autocast passes it. */
extern "C" int qt__cuda_linear_bias_lt(void *out, int out_bf16, const float *inp, const void *inp16,
                                       const float *weight, const void *weight16, const float *bias,
                                       size_t n, size_t in_c, size_t out_c, const char *who) {
  if (!qt__cuda_switch_on("QT_CUDA_LT_BIAS", &lt_bias) || !bias || in_c == 0 || (!inp && !inp16))
    return 1;
  /* cuBLASLt states no alignment for the bias, and other projects report
   * its epilogue faulting on biases off 16 bytes: those broadcast (a ViT's
   * are all on 16 bytes, so a plan chosen with one serves the others). A
   * BF16 output's bias is read from its BF16 copy, on 256 bytes. */
  if (!out_bf16 && (uintptr_t)bias % 16 != 0) return 1;
  if (n > INT_MAX || in_c > INT_MAX || out_c > INT_MAX) return 1;
  qt_err ignored;
  int device = 0;
  qt_cuda_stream *s = NULL;
  if (current_device(&device, who, &ignored) < 0 || thread_stream(&s, who, &ignored) < 0) return 1;
  pthread_mutex_lock(&handles_lock);
  if (!lt_handles[device] && cublasLtCreate(&lt_handles[device]) != CUBLAS_STATUS_SUCCESS)
    lt_handles[device] = NULL;
  cublasLtHandle_t lt = lt_handles[device];
  pthread_mutex_unlock(&handles_lock);
  if (!lt) return 1;

  int precision = __atomic_load_n(&matmul_precision, __ATOMIC_RELAXED);
  /* An input given in BF16 makes both operands BF16 (the weight rounded),
   * whichever BF16 precision is set. */
  if (inp16) precision = QT_MATMUL_BF16;
  cublasComputeType_t compute = precision == QT_MATMUL_TF32        ? CUBLAS_COMPUTE_32F_FAST_TF32
                                : precision == QT_MATMUL_BF16_FAST ? CUBLAS_COMPUTE_32F_FAST_16BF
                                                                   : CUBLAS_COMPUTE_32F;
  cudaDataType_t operand_type = precision == QT_MATMUL_BF16 ? CUDA_R_16BF : CUDA_R_32F;
  size_t operand_bytes = operand_type == CUDA_R_16BF ? 2 : 4;
  cudaDataType_t out_type = out_bf16 ? CUDA_R_16BF : CUDA_R_32F;
  size_t out_bytes = out_bf16 ? 2 : 4;
  /* Column-major: out^T (out_c, n) = weight (out_c, in_c) . inp^T (in_c, n),
   * weight stored as (in_c, out_c) and transposed, inp as (in_c, n). */
  cublasLtMatmulDesc_t op = NULL;
  cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
  cublasLtMatmulPreference_t pref = NULL;
  cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
  int32_t bias_type = out_bf16 ? CUDA_R_16BF : CUDA_R_32F;
  const void *bias_data = bias;
  uint64_t workspace = lt_workspace_bytes(device);
  void *workspace_block = NULL;
  scratch_block *held_workspace = NULL;
  int rc = 1, locked = 0, workspace_locked = 0, kept = 0;
  lt_plan plan;
  memset(&plan, 0, sizeof plan);
  plan.device = device;
  plan.precision = precision;
  plan.out_bf16 = out_bf16;
  plan.n = n;
  plan.in_c = in_c;
  plan.out_c = out_c;
  /* FP32 operands are read in place; BF16 ones from to_bf16's blocks
   * (cudaMalloc's, on 256 bytes), except an input given in BF16. */
  const void *a_data = weight, *b_data = inp16 ? inp16 : inp;
  plan.align[0] = alignment_of(operand_type == CUDA_R_16BF ? NULL : a_data, in_c * operand_bytes);
  plan.align[1] =
      alignment_of(operand_type == CUDA_R_16BF && !inp16 ? NULL : b_data, in_c * operand_bytes);
  plan.align[2] = alignment_of(out, out_c * out_bytes);
  kept = find_plan(&plan);
  if (kept && plan.declined) return 1;
  if (operand_type == CUDA_R_16BF || out_bf16) {
    pthread_mutex_lock(&s->bf16_lock);
    locked = 1;
  }
  if (operand_type == CUDA_R_16BF) {
    const __nv_bfloat16 *w16 = NULL, *x16 = NULL;
    if (to_bf16(s, weight16 ? NULL : weight, out_c * in_c, inp16 ? NULL : inp, n * in_c, &w16, &x16,
                who, &ignored) < 0)
      goto done;
    a_data = weight16 ? weight16 : w16;
    if (!inp16) b_data = x16;
  }
  if (out_bf16) {
    const __nv_bfloat16 *bias16 = NULL;
    if (round_into_block(s, 2, bias, out_c, &bias16, who, &ignored) < 0) goto done;
    bias_data = bias16;
  }
  if (scratch_lock(&qt_cuda_stream::lt_workspace, workspace, &workspace_block, &held_workspace, who,
                   &ignored) < 0)
    goto done;
  workspace_locked = 1;
  if (cublasLtMatmulDescCreate(&op, compute, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS ||
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof trans_a) !=
          CUBLAS_STATUS_SUCCESS ||
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof trans_b) !=
          CUBLAS_STATUS_SUCCESS ||
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                     sizeof epilogue) != CUBLAS_STATUS_SUCCESS ||
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_data,
                                     sizeof bias_data) != CUBLAS_STATUS_SUCCESS ||
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                     sizeof bias_type) != CUBLAS_STATUS_SUCCESS ||
      cublasLtMatrixLayoutCreate(&la, operand_type, in_c, out_c, (int64_t)in_c) !=
          CUBLAS_STATUS_SUCCESS ||
      cublasLtMatrixLayoutCreate(&lb, operand_type, in_c, n, (int64_t)in_c) !=
          CUBLAS_STATUS_SUCCESS ||
      cublasLtMatrixLayoutCreate(&lc, out_type, out_c, n, (int64_t)out_c) != CUBLAS_STATUS_SUCCESS)
    goto done;
  if (!kept) {
    if (cublasLtMatmulPreferenceCreate(&pref) != CUBLAS_STATUS_SUCCESS ||
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                             &workspace,
                                             sizeof workspace) != CUBLAS_STATUS_SUCCESS ||
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                             &plan.align[0],
                                             sizeof plan.align[0]) != CUBLAS_STATUS_SUCCESS ||
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                             &plan.align[1],
                                             sizeof plan.align[1]) != CUBLAS_STATUS_SUCCESS ||
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                             &plan.align[2],
                                             sizeof plan.align[2]) != CUBLAS_STATUS_SUCCESS ||
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                             &plan.align[2],
                                             sizeof plan.align[2]) != CUBLAS_STATUS_SUCCESS)
      goto done;
    cublasLtMatmulHeuristicResult_t result;
    int found = 0;
    __atomic_add_fetch(&lt_queries, 1, __ATOMIC_RELAXED);
    cublasStatus_t status =
        cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 1, &result, &found);
    if (status != CUBLAS_STATUS_SUCCESS || found < 1 || result.state != CUBLAS_STATUS_SUCCESS) {
      /* Declined, whatever the reason (NOT_SUPPORTED, no algorithm, or
       * INVALID_VALUE for a combination it does not take): kept, so that
       * the shape's next calls do not ask again. */
      QT_LOG_DEBUG(
          "%s: cuBLASLt declines the product with bias (%zu x %zu x %zu, %s output): "
          "status %d, %d found, broadcasting",
          who, n, out_c, in_c, out_bf16 ? "BF16" : "FP32", (int)status, found);
      plan.declined = 1;
      keep_plan(&plan);
      goto done;
    }
    plan.algo = result.algo;
    keep_plan(&plan);
  }
  {
    float alpha = 1.0f, beta = 0.0f;
    cublasStatus_t status =
        cublasLtMatmul(lt, op, &alpha, a_data, la, b_data, lb, &beta, out, lc, out, lc, &plan.algo,
                       workspace_block, workspace, s->stream);
    if (status != CUBLAS_STATUS_SUCCESS) {
      /* The broadcast path rewrites all of out, whatever this left. */
      QT_LOG_DEBUG("%s: cuBLASLt product with bias (%zu x %zu x %zu): status %d, broadcasting", who,
                   n, out_c, in_c, (int)status);
      goto done;
    }
    __atomic_add_fetch(&lt_products, 1, __ATOMIC_RELAXED);
    rc = 0;
  }
done:
  if (workspace_locked) pthread_mutex_unlock(&held_workspace->lock);
  if (locked) pthread_mutex_unlock(&s->bf16_lock);
  if (pref) cublasLtMatmulPreferenceDestroy(pref);
  if (lc) cublasLtMatrixLayoutDestroy(lc);
  if (lb) cublasLtMatrixLayoutDestroy(lb);
  if (la) cublasLtMatrixLayoutDestroy(la);
  if (op) cublasLtMatmulDescDestroy(op);
  return rc;
}

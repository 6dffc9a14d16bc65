/*
 * qt_cuda_attention_fused.cu - fused attention for BF16 runs: the kernels of
 * qt_cuda_attention_fused.cuh launched over (image, head) and parts of
 * QT_FA_WARPS tiles of 16 rows, and the op table's attention, which takes
 * them under BF16 products where they fit (heads of 64 features, at most
 * 256 tokens: every timm ViT at 224 px) and the cuBLAS path of
 * qt_cuda_attention.cu otherwise.
 *
 * The unfused BF16 path writes the (batch, heads, tokens, tokens) scores,
 * reads and writes them in the softmax and reads them again in the second
 * product, and its backward does the same with their gradient: about
 * 1.6 GB of memory traffic per block of ViT-B and step at batch 64, by
 * count. The fused kernels keep the scores in registers and store only a
 * log-sum-exp per row (and D per row in the backward, which takes it from
 * the forward's output).
 *
 * On by default; qt__cuda_set_fused_attention(0) (or
 * QT_CUDA_FUSED_ATTENTION=0 in the environment) turns them off, to measure
 * one path against the other (docs/benchmarks/README.md).
 */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "finetune/cuda/qt_cuda_internal.h"

/* d (16, 8) += a (16, 16) . b (16, 8), BF16 operands and FP32 accumulators
 * in the register layouts of qt_cuda_attention_fused.cuh: one tensor-core
 * instruction (sm_80 and newer). */
static __device__ __forceinline__ void qt__mma_bf16_16816(float d[4], const __nv_bfloat162 a[4],
                                                          const __nv_bfloat162 b[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned *A = reinterpret_cast<const unsigned *>(a);
  const unsigned *B = reinterpret_cast<const unsigned *>(b);
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(A[0]), "r"(A[1]), "r"(A[2]), "r"(A[3]), "r"(B[0]), "r"(B[1]));
#else
  (void)d, (void)a, (void)b;
#endif
}

/* r = four 8 x 8 BF16 matrices of shared memory, lane 8 i + r giving the
 * address of row r of matrix i: ldmatrix.sync.aligned.m8n8.x4 (.trans),
 * in the layouts of qt_cuda_attention_fused.cuh. */
static __device__ __forceinline__ void qt__ldmatrix_x4(__nv_bfloat162 r[4],
                                                       const __nv_bfloat16 *row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  unsigned *R = reinterpret_cast<unsigned *>(r);
  unsigned address = (unsigned)__cvta_generic_to_shared(row);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(R[0]), "=r"(R[1]), "=r"(R[2]), "=r"(R[3])
               : "r"(address));
#else
  (void)r, (void)row;
#endif
}
static __device__ __forceinline__ void qt__ldmatrix_x4_trans(__nv_bfloat162 r[4],
                                                             const __nv_bfloat16 *row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  unsigned *R = reinterpret_cast<unsigned *>(r);
  unsigned address = (unsigned)__cvta_generic_to_shared(row);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(R[0]), "=r"(R[1]), "=r"(R[2]), "=r"(R[3])
               : "r"(address));
#else
  (void)r, (void)row;
#endif
}

/* *dst = *src for 16 bytes on 16-byte boundaries: one 128-bit load or
 * store (a struct's copy would go member by member). */
template <typename T>
static __device__ __forceinline__ void qt__copy16(T *dst, const T *src) {
  static_assert(sizeof(T) == 16, "qt__copy16 copies 16 bytes");
  *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(src);
}

/* cp.async of 16 bytes (eight BF16 values) from device to shared memory,
 * bypassing L1 (.cg), its commit group and the wait for all but the
 * latest `pending` (0 to 3) groups: the staging of
 * qt_cuda_attention_fused.cuh's stage_async. */
static __device__ __forceinline__ void qt__cp_async16(__nv_bfloat16 *dst,
                                                      const __nv_bfloat16 *src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  unsigned address = (unsigned)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(address), "l"(src) : "memory");
#else
  (void)dst, (void)src;
#endif
}
static __device__ __forceinline__ void qt__cp_async_commit(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
static __device__ __forceinline__ void qt__cp_async_wait(int pending) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  switch (pending) {
    case 0:
      asm volatile("cp.async.wait_group 0;\n" ::: "memory");
      break;
    case 1:
      asm volatile("cp.async.wait_group 1;\n" ::: "memory");
      break;
    case 2:
      asm volatile("cp.async.wait_group 2;\n" ::: "memory");
      break;
    default:
      asm volatile("cp.async.wait_group 3;\n" ::: "memory");
      break;
  }
#else
  (void)pending;
#endif
}

#include "finetune/cuda/qt_cuda_attention_fused.cuh"

/* BF16 mma needs sm_80; a build for older devices traps in the kernels,
 * and qt__cuda_attention_fused_fits keeps them from being launched there. */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define QT_FA_BODY(call) __trap()
#else
#define QT_FA_BODY(call) call
#endif

/* The grid is one-dimensional: the bodies' block number. */
static __device__ __forceinline__ int block_index(void) {
  return (int)blockIdx.x;
}

/* Out is float, or BF16 for proj (QT__KEEP_ATTENTION_OUT); qkv (Q)
 * float, or BF16 as its product wrote it (QT__KEEP_QKV). */
template <bool A, typename T, typename Q>
static __global__ void __launch_bounds__(QT_FA_WARPS * 32)
    fused_forward_kernel(T *out, float *att, const Q *qkv, qt_fa::shape sh) {
  extern __shared__ __align__(128) unsigned char smem[];
  QT_FA_BODY(
      qt_fa::forward_block<A>(smem, out, att, qkv, sh, block_index(), threadIdx.x, blockDim.x));
}

/* dqkv (D) and dout (O) are float, or BF16 where qkv and the
 * attention's output gradient are kept so (QT__KEEP_QKV,
 * QT__KEEP_ATTENTION_GRAD); out (Y), the forward's output, float or BF16
 * as the forward wrote it (QT__KEEP_ATTENTION_OUT). */
template <bool A, typename Q, typename D, typename O, typename Y>
static __global__ void __launch_bounds__(QT_FA_WARPS * 32)
    fused_backward_dq_kernel(D *dqkv, float *d, const O *dout, const Y *out, const Q *qkv,
                             const float *att, qt_fa::shape sh, int set) {
  extern __shared__ __align__(128) unsigned char smem[];
  QT_FA_BODY(qt_fa::backward_dq_block<A>(smem, dqkv, d, dout, out, qkv, att, sh, set, block_index(),
                                         threadIdx.x, blockDim.x));
}

/* Two blocks per multiprocessor: 128 registers (166 unbounded, which left
 * one block of 8 warps per multiprocessor, 8 of its 64 warp slots; ptxas
 * spills 40 bytes on sm_90). */
template <bool A, typename Q, typename D, typename O>
static __global__ void __launch_bounds__(QT_FA_WARPS * 32, 2)
    fused_backward_dkv_kernel(D *dqkv, const float *d, const O *dout, const Q *qkv,
                              const float *att, qt_fa::shape sh, int set) {
  extern __shared__ __align__(128) unsigned char smem[];
  QT_FA_BODY(qt_fa::backward_dkv_block<A>(smem, dqkv, d, dout, qkv, att, sh, set, block_index(),
                                          threadIdx.x, blockDim.x));
}

/* The dkv kernel that also writes dS, for dQ = scale dS K by cuBLAS
 * (QT_CUDA_FA_DS), and the D it then needs first (no shared memory). */
template <bool A, typename Q, typename D, typename O>
static __global__ void __launch_bounds__(QT_FA_WARPS * 32, 2)
    fused_backward_dkv_ds_kernel(D *dqkv, const float *d, const O *dout, const Q *qkv,
                                 const float *att, qt_fa::shape sh, int set, __nv_bfloat16 *ds) {
  extern __shared__ __align__(128) unsigned char smem[];
  QT_FA_BODY((qt_fa::backward_dkv_block<A, true>(smem, dqkv, d, dout, qkv, att, sh, set,
                                                 block_index(), threadIdx.x, blockDim.x, ds)));
}

template <typename O, typename Y>
static __global__ void __launch_bounds__(QT_FA_WARPS * 32)
    fused_deltas_kernel(float *d, const O *dout, const Y *out, qt_fa::shape sh) {
  QT_FA_BODY(qt_fa::deltas_block(d, dout, out, sh, block_index(), threadIdx.x));
}

/* Both backward kernels of one instantiation allowed `bytes` of shared
 * memory. */
template <bool A, typename Q, typename D, typename O, typename Y>
static bool allow_backward(cudaFuncAttribute limit, int bytes) {
  return cudaFuncSetAttribute(fused_backward_dq_kernel<A, Q, D, O, Y>, limit, bytes) ==
             cudaSuccess &&
         cudaFuncSetAttribute(
             fused_backward_dkv_kernel < A && std::is_same<O, __nv_bfloat16>::value, Q, D, O >,
             limit, bytes) == cudaSuccess;
}

/* The shared memory a block of the fused kernels may take on `device`:
 * its opt-in limit per block, which every fused kernel is then allowed
 * (cudaFuncSetAttribute, once per device); 0 before sm_80 or when the
 * device cannot say. */
static int read_shared_limit(int device) {
  int major, optin;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
          cudaSuccess) {
    cudaGetLastError(); /* not sticky: leave no error for the next check */
    return 0;
  }
  if (major < 8) return 0;
  cudaFuncAttribute limit = cudaFuncAttributeMaxDynamicSharedMemorySize;
  typedef __nv_bfloat16 bf16;
  /* Every instance that fused_forward and fused_backward launch: those
   * with asynchronous staging where qkv is BF16. */
  if (cudaFuncSetAttribute(fused_forward_kernel<false, float, float>, limit, optin) !=
          cudaSuccess ||
      cudaFuncSetAttribute(fused_forward_kernel<false, bf16, float>, limit, optin) != cudaSuccess ||
      cudaFuncSetAttribute(fused_forward_kernel<false, bf16, bf16>, limit, optin) != cudaSuccess ||
      cudaFuncSetAttribute(fused_forward_kernel<true, bf16, bf16>, limit, optin) != cudaSuccess ||
      !allow_backward<false, float, float, float, float>(limit, optin) ||
      !allow_backward<false, float, float, float, bf16>(limit, optin) ||
      !allow_backward<false, bf16, bf16, float, bf16>(limit, optin) ||
      !allow_backward<false, bf16, bf16, bf16, bf16>(limit, optin) ||
      !allow_backward<true, bf16, bf16, float, bf16>(limit, optin) ||
      !allow_backward<true, bf16, bf16, bf16, bf16>(limit, optin) ||
      cudaFuncSetAttribute(fused_backward_dkv_ds_kernel<false, bf16, bf16, float>, limit, optin) !=
          cudaSuccess ||
      cudaFuncSetAttribute(fused_backward_dkv_ds_kernel<false, bf16, bf16, bf16>, limit, optin) !=
          cudaSuccess ||
      cudaFuncSetAttribute(fused_backward_dkv_ds_kernel<true, bf16, bf16, bf16>, limit, optin) !=
          cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return optin;
}

/* read_shared_limit for the current device, read once per device (the
 * op table asks at every attention call). */
#define QT_FA_MAX_DEVICES 64
static int shared_limit(void) {
  static int limits[QT_FA_MAX_DEVICES]; /* limit + 1; 0 until read */
  int device;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  if (device < 0 || device >= QT_FA_MAX_DEVICES) return read_shared_limit(device);
  int known = __atomic_load_n(&limits[device], __ATOMIC_RELAXED);
  if (known > 0) return known - 1;
  int limit = read_shared_limit(device);
  __atomic_store_n(&limits[device], limit + 1, __ATOMIC_RELAXED);
  return limit;
}

/* Whether kernel k's shared memory for `tokens` tokens fits the current
 * device (none before sm_80). */
static int shared_fits(qt_fa::kernel k, size_t tokens) {
  int limit = shared_limit();
  return limit > 0 && qt_fa::shared_bytes(k, (int)((tokens + 15) / 16 * 16)) <= (size_t)limit;
}

extern "C" int qt__cuda_attention_fused_fits(size_t batch, size_t tokens, size_t c, size_t heads) {
  /* Block numbers, at most 2 parts of batch * heads, fit an int. */
  if (heads == 0 || c != heads * QT_FA_HEAD || tokens == 0 || tokens > QT_FA_MAX_TOKENS ||
      batch == 0 || batch > INT_MAX / 2 / heads) {
    return 0;
  }
  return shared_fits(qt_fa::FORWARD, tokens) && shared_fits(qt_fa::BACKWARD_DQ, tokens) &&
         shared_fits(qt_fa::BACKWARD_DKV, tokens);
}

static int check_fits(size_t batch, size_t tokens, size_t c, size_t heads, const char *who,
                      qt_err *err) {
  if (qt__cuda_attention_fused_fits(batch, tokens, c, heads)) return 0;
  return qt_err_set(err, QT_EINVAL,
                    "%s: batch %zu, %zu tokens, %zu features, %zu heads do not fit the fused "
                    "kernels on this device",
                    who, batch, tokens, c, heads);
}

/* 1: the parts of a head in adjacent blocks (qt_fa::place_of), unless
 * QT_CUDA_FA_PARTS_ADJACENT=0 (tools/gpu-check's faparts: row measures
 * the other order); -1 until the environment has been read. */
static int parts_adjacent = -1;

/* Switches that are off unless their variable is 1 (qt__cuda_switch_on's
 * are on unless it is 0): the choices not yet measured on a device. -1
 * until the environment has been read; a setter's value wins over it. */
static int opt_in_on(const char *name, int *state) {
  int on = __atomic_load_n(state, __ATOMIC_RELAXED);
  if (on < 0) {
    const char *value = getenv(name);
    int unset = -1;
    __atomic_compare_exchange_n(state, &unset, value && strcmp(value, "1") == 0, 0,
                                __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    on = __atomic_load_n(state, __ATOMIC_RELAXED);
  }
  return on;
}

static int set_opt_in(const char *name, int *state, int on) {
  int previous = opt_in_on(name, state);
  __atomic_store_n(state, on != 0, __ATOMIC_SEQ_CST);
  return previous;
}

/* The staging by asynchronous copies (qt_fa::stage_async: QT_CUDA_FA_ASYNC,
 * tools/gpu-check's faasync: row) and the backward's dQ from dS by cuBLAS
 * (backward_by_ds: QT_CUDA_FA_DS, the fads: row). */
static int fa_async = -1, fa_ds = -1;

static int fa_async_on(void) {
  return opt_in_on("QT_CUDA_FA_ASYNC", &fa_async);
}

static int fa_ds_on(void) {
  return opt_in_on("QT_CUDA_FA_DS", &fa_ds);
}

extern "C" int qt__cuda_set_fa_async(int on) {
  return set_opt_in("QT_CUDA_FA_ASYNC", &fa_async, on);
}

extern "C" int qt__cuda_set_fa_ds(int on) {
  return set_opt_in("QT_CUDA_FA_DS", &fa_ds, on);
}

static qt_fa::shape shape_of(size_t batch, size_t tokens, size_t c, size_t heads) {
  qt_fa::shape sh;
  sh.batch = (int)batch;
  sh.tokens = (int)tokens;
  sh.heads = (int)heads;
  sh.padded = (int)((tokens + 15) / 16 * 16);
  sh.c = c;
  sh.scale = (float)(1.0 / sqrt((double)QT_FA_HEAD));
  sh.parts_adjacent = qt__cuda_switch_on("QT_CUDA_FA_PARTS_ADJACENT", &parts_adjacent);
  return sh;
}

/* Launches the kernel over batch * heads * parts blocks of QT_FA_WARPS
 * warps (shared_limit allowed the kernel the memory). */
template <typename Kernel, typename... Args>
static int launch(Kernel kernel, qt_fa::kernel k, const qt_fa::shape &sh, const char *who,
                  const char *name, qt_err *err, Args... args) {
  unsigned blocks = (unsigned)(sh.batch * sh.heads * qt_fa::parts(sh));
  kernel<<<blocks, QT_FA_WARPS * 32, qt_fa::shared_bytes(k, sh.padded), qt__cuda_stream()>>>(
      args...);
  return qt__cuda_check_launch(err, who, name);
}

/* A BF16 array that the kernels read in pairs of 32 bits (qkv, dout, the
 * backward's out: rows of 3 c or c values, the heads' offsets even) must
 * start on a 4-byte boundary. */
static int check_pairs(const void *a, size_t bytes, const char *name, const char *who,
                       qt_err *err) {
  if (bytes == sizeof(float) || (uintptr_t)a % 4 == 0) return 0;
  return qt_err_set(err, QT_EINVAL, "%s: a BF16 %s must start on a 4-byte boundary", who, name);
}

template <typename T, typename Q>
static int fused_forward(T *out, float *att, const Q *qkv, size_t batch, size_t tokens, size_t c,
                         size_t heads, const char *who, qt_err *err) {
  int rc = check_fits(batch, tokens, c, heads, who, err);
  if (rc < 0) return rc;
  if (!out || !att || !qkv) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  if ((rc = check_pairs(qkv, sizeof *qkv, "qkv", who, err)) < 0) return rc;
  qt_fa::shape sh = shape_of(batch, tokens, c, heads);
  const char *name = "the fused attention kernel";
  /* The staging by asynchronous copies takes K and V from a BF16 qkv. */
  if constexpr (std::is_same<Q, __nv_bfloat16>::value) {
    if (fa_async_on())
      return launch(fused_forward_kernel<true, T, Q>, qt_fa::FORWARD, sh, who, name, err, out, att,
                    qkv, sh);
  }
  return launch(fused_forward_kernel<false, T, Q>, qt_fa::FORWARD, sh, who, name, err, out, att,
                qkv, sh);
}

extern "C" int qt__cuda_attention_fused_forward(float *out, float *att, const float *qkv,
                                                size_t batch, size_t tokens, size_t c, size_t heads,
                                                qt_err *err) {
  return fused_forward(out, att, qkv, batch, tokens, c, heads, "qt__cuda_attention_fused_forward",
                       err);
}

extern "C" int qt__cuda_attention_fused_forward_bf16(void *out, float *att, const void *qkv,
                                                     size_t batch, size_t tokens, size_t c,
                                                     size_t heads, unsigned bf16, qt_err *err) {
  const char *who = "qt__cuda_attention_fused_forward (BF16 arrays)";
  typedef __nv_bfloat16 bf16_t;
  switch (bf16) {
    case 0:
      return fused_forward((float *)out, att, (const float *)qkv, batch, tokens, c, heads, who,
                           err);
    case QT__BF16_OUT:
      return fused_forward((bf16_t *)out, att, (const float *)qkv, batch, tokens, c, heads, who,
                           err);
    case QT__BF16_INP | QT__BF16_OUT:
      return fused_forward((bf16_t *)out, att, (const bf16_t *)qkv, batch, tokens, c, heads, who,
                           err);
    default:
      return qt_err_set(err, QT_EINVAL, "%s: BF16 arrays 0x%x are not implemented", who, bf16);
  }
}

/* The backward with dQ from dS (a BF16 qkv and dqkv): D by its own kernel
 * into d, then the dkv kernel, which writes dS (heads, batch, padded,
 * padded) into the stream's BF16 scratch as well as dK and dV, then for
 * each head one batched product over the images,
 *   dQ_h (tokens, 64) = scale dS_h (tokens, tokens) . K_h (tokens, 64),
 * written in BF16 (dqkv BF16 is always written, `set`). The dq kernel
 * computed dS again from Q, K, V and dO, two products more per tile; the
 * values are the dkv kernel's dS as it rounds it for dK (the dq kernel's
 * own could differ in the last bits of dP's FP32 sums), and cuBLAS sums
 * dQ in its own order. */
template <typename D, typename O, typename Y>
static int backward_by_ds(D *dqkv, float *d, const O *dout, const __nv_bfloat16 *qkv,
                          const float *att, const Y *out, const qt_fa::shape &sh, int set,
                          bool async, const char *who, qt_err *err) {
  static_assert(std::is_same<D, __nv_bfloat16>::value, "a BF16 qkv has a BF16 dqkv");
  size_t padded = (size_t)sh.padded, per_head = (size_t)sh.batch * padded * padded;
  void *ds = NULL;
  int rc = qt__cuda_rounded_scratch_lock(per_head * sh.heads, &ds, who, err);
  if (rc < 0) return rc;
  __nv_bfloat16 *ds16 = (__nv_bfloat16 *)ds;
  unsigned blocks = (unsigned)(sh.batch * sh.heads * qt_fa::parts(sh));
  fused_deltas_kernel<O, Y><<<blocks, QT_FA_WARPS * 32, 0, qt__cuda_stream()>>>(d, dout, out, sh);
  rc = qt__cuda_check_launch(err, who, "the fused attention's D kernel");
  const char *name = "the fused attention dk, dv, dS kernel";
  constexpr bool dkv_async = std::is_same<O, __nv_bfloat16>::value;
  if (rc == 0 && dkv_async && async)
    rc = launch(fused_backward_dkv_ds_kernel<dkv_async, __nv_bfloat16, D, O>, qt_fa::BACKWARD_DKV,
                sh, who, name, err, dqkv, (const float *)d, dout, qkv, att, sh, set, ds16);
  else if (rc == 0)
    rc = launch(fused_backward_dkv_ds_kernel<false, __nv_bfloat16, D, O>, qt_fa::BACKWARD_DKV, sh,
                who, name, err, dqkv, (const float *)d, dout, qkv, att, sh, set, ds16);
  size_t ld = 3 * sh.c, tokens = (size_t)sh.tokens;
  for (int h = 0; rc == 0 && h < sh.heads; h++) {
    qt__cuda_product p;
    p.m = tokens;
    p.n = QT_FA_HEAD;
    p.k = tokens;
    p.alpha = sh.scale;
    p.a16 = ds16 + (size_t)h * per_head;
    p.lda = padded;
    p.stride_a = (long long)(padded * padded);
    p.b16 = qkv + sh.c + (size_t)h * QT_FA_HEAD;
    p.ldb = ld;
    p.stride_b = (long long)(tokens * ld);
    p.beta = 0.0f;
    p.c16 = dqkv + (size_t)h * QT_FA_HEAD;
    p.ldc = ld;
    p.stride_c = (long long)(tokens * ld);
    p.batch = (size_t)sh.batch;
    rc = qt__cuda_gemms(&p, 1, who, err);
  }
  qt__cuda_rounded_scratch_unlock();
  (void)set; /* BF16 dqkv: always written */
  return rc;
}

template <typename Q, typename D, typename O, typename Y>
static int fused_backward(D *dqkv, float *scratch, const O *dout, const Q *qkv, const float *att,
                          const Y *out, size_t batch, size_t tokens, size_t c, size_t heads,
                          int set, const char *who, qt_err *err) {
  int rc = check_fits(batch, tokens, c, heads, who, err);
  if (rc < 0) return rc;
  if (!dqkv || !scratch || !dout || !qkv || !att || !out) {
    return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  }
  if ((rc = check_pairs(qkv, sizeof *qkv, "qkv", who, err)) < 0) return rc;
  if ((rc = check_pairs(dout, sizeof *dout, "dout", who, err)) < 0) return rc;
  if ((rc = check_pairs(out, sizeof *out, "out", who, err)) < 0) return rc;
  qt_fa::shape sh = shape_of(batch, tokens, c, heads);
  /* The staging by asynchronous copies: the dq kernel's K and V from a
   * BF16 qkv, the dkv kernel's Q and dO where both are BF16. */
  constexpr bool dq_async = std::is_same<Q, __nv_bfloat16>::value;
  constexpr bool dkv_async = dq_async && std::is_same<O, __nv_bfloat16>::value;
  bool async = fa_async_on();
  if constexpr (dq_async) {
    if (fa_ds_on())
      return backward_by_ds(dqkv, scratch, dout, qkv, att, out, sh, set, async, who, err);
  }
  const char *dq_name = "the fused attention dq kernel";
  if (dq_async && async)
    rc = launch(fused_backward_dq_kernel<dq_async, Q, D, O, Y>, qt_fa::BACKWARD_DQ, sh, who,
                dq_name, err, dqkv, scratch, dout, out, qkv, att, sh, set);
  else
    rc = launch(fused_backward_dq_kernel<false, Q, D, O, Y>, qt_fa::BACKWARD_DQ, sh, who, dq_name,
                err, dqkv, scratch, dout, out, qkv, att, sh, set);
  if (rc < 0) return rc;
  const char *dkv_name = "the fused attention dk, dv kernel";
  if (dkv_async && async)
    return launch(fused_backward_dkv_kernel<dkv_async, Q, D, O>, qt_fa::BACKWARD_DKV, sh, who,
                  dkv_name, err, dqkv, (const float *)scratch, dout, qkv, att, sh, set);
  return launch(fused_backward_dkv_kernel<false, Q, D, O>, qt_fa::BACKWARD_DKV, sh, who, dkv_name,
                err, dqkv, (const float *)scratch, dout, qkv, att, sh, set);
}

extern "C" int qt__cuda_attention_fused_backward(float *dqkv, float *scratch, const float *dout,
                                                 const float *qkv, const float *att,
                                                 const float *out, size_t batch, size_t tokens,
                                                 size_t c, size_t heads, int set, qt_err *err) {
  return fused_backward(dqkv, scratch, dout, qkv, att, out, batch, tokens, c, heads, set,
                        "qt__cuda_attention_fused_backward", err);
}

extern "C" int qt__cuda_attention_fused_backward_bf16(void *dqkv, float *scratch, const void *dout,
                                                      const void *qkv, const float *att,
                                                      const void *out, size_t batch, size_t tokens,
                                                      size_t c, size_t heads, int set,
                                                      unsigned bf16, qt_err *err) {
  const char *who = "qt__cuda_attention_fused_backward (BF16 arrays)";
  typedef __nv_bfloat16 bf16_t;
  const unsigned qkv16 = QT__BF16_INP | QT__BF16_DINP | QT__BF16_OUT;
  const float *out32 = (const float *)out;
  const bf16_t *out16 = (const bf16_t *)out;
  if (bf16 == 0)
    return fused_backward((float *)dqkv, scratch, (const float *)dout, (const float *)qkv, att,
                          out32, batch, tokens, c, heads, set, who, err);
  if (bf16 == QT__BF16_OUT)
    return fused_backward((float *)dqkv, scratch, (const float *)dout, (const float *)qkv, att,
                          out16, batch, tokens, c, heads, set, who, err);
  if (bf16 != qkv16 && bf16 != (qkv16 | QT__BF16_DOUT))
    return qt_err_set(err, QT_EINVAL, "%s: BF16 arrays 0x%x are not implemented", who, bf16);
  /* BF16 values cannot be added to: dqkv is written. */
  if (!set)
    return qt_err_set(err, QT_EINVAL, "%s: a BF16 dqkv is written (set), not added to", who);
  if (bf16 & QT__BF16_DOUT)
    return fused_backward((bf16_t *)dqkv, scratch, (const bf16_t *)dout, (const bf16_t *)qkv, att,
                          out16, batch, tokens, c, heads, 1, who, err);
  return fused_backward((bf16_t *)dqkv, scratch, (const float *)dout, (const bf16_t *)qkv, att,
                        out16, batch, tokens, c, heads, 1, who, err);
}

/* ------------------------------------------------------------------------- */
/* The op table's attention                                                   */
/* ------------------------------------------------------------------------- */

/* 1: the op table takes the fused kernels where they fit (unless
 * QT_CUDA_FUSED_ATTENTION=0); -1 until the environment has been read. */
static int fused_attention = -1;

static int fused_attention_on(void) {
  return qt__cuda_switch_on("QT_CUDA_FUSED_ATTENTION", &fused_attention);
}

extern "C" int qt__cuda_set_fused_attention(int on) {
  return qt__cuda_set_switch("QT_CUDA_FUSED_ATTENTION", &fused_attention, on);
}

/* The forward and the backward of one step decide alike, since the
 * precision and the switch are set for a whole epoch (qt_run_epoch) and
 * the rest depends on the shape and the device. */
extern "C" int qt__cuda_attention_fused_now(size_t batch, size_t tokens, size_t c, size_t heads) {
  int precision = qt__cuda_matmul_precision();
  return (precision == QT_MATMUL_BF16 || precision == QT_MATMUL_BF16_FAST) &&
         fused_attention_on() && qt__cuda_attention_fused_fits(batch, tokens, c, heads);
}

extern "C" int qt__cuda_attention_op_forward(float *out, float *att, const float *qkv, size_t batch,
                                             size_t tokens, size_t c, size_t heads, qt_err *err) {
  if (qt__cuda_attention_fused_now(batch, tokens, c, heads)) {
    return qt__cuda_attention_fused_forward(out, att, qkv, batch, tokens, c, heads, err);
  }
  return qt_cuda_attention_forward(out, att, qkv, batch, tokens, c, heads, err);
}

extern "C" size_t qt__cuda_attention_saved_size(size_t batch, size_t tokens, size_t c,
                                                size_t heads) {
  if (!qt__cuda_attention_fused_now(batch, tokens, c, heads))
    return batch * heads * tokens * tokens;
  return batch * heads * tokens;
}

/* The op table's attention with BF16 arrays: only the fused kernels read
 * or write them (QT_EINVAL where they do not run for the shape now). */
static int check_fused_bf16(unsigned bf16, size_t batch, size_t tokens, size_t c, size_t heads,
                            const char *who, qt_err *err) {
  if (!bf16 || qt__cuda_attention_fused_now(batch, tokens, c, heads)) return 0;
  return qt_err_set(err, QT_EINVAL,
                    "%s: only the fused kernels under BF16 products read or write BF16 arrays",
                    who);
}

extern "C" int qt__cuda_attention_op_forward_bf16(void *out, float *att, const void *qkv,
                                                  size_t batch, size_t tokens, size_t c,
                                                  size_t heads, unsigned bf16, qt_err *err) {
  const char *who = "qt_cuda_attention_forward (BF16 arrays)";
  int rc = qt__cuda_check_bf16(bf16, QT__BF16_INP | QT__BF16_OUT, who, err);
  if (rc == 0) rc = check_fused_bf16(bf16, batch, tokens, c, heads, who, err);
  if (rc < 0) return rc;
  if (!bf16)
    return qt__cuda_attention_op_forward((float *)out, att, (const float *)qkv, batch, tokens, c,
                                         heads, err);
  return qt__cuda_attention_fused_forward_bf16(out, att, qkv, batch, tokens, c, heads, bf16, err);
}

extern "C" int qt__cuda_attention_op_backward_bf16(void *dqkv, float *scratch, const void *dout,
                                                   const void *qkv, const float *att,
                                                   const void *out, size_t batch, size_t tokens,
                                                   size_t c, size_t heads, int set, unsigned bf16,
                                                   qt_err *err) {
  const char *who = "qt_cuda_attention_backward (BF16 arrays)";
  int rc = qt__cuda_check_bf16(bf16, QT__BF16_INP | QT__BF16_OUT | QT__BF16_DINP | QT__BF16_DOUT,
                               who, err);
  if (rc == 0) rc = check_fused_bf16(bf16, batch, tokens, c, heads, who, err);
  if (rc < 0) return rc;
  if (!bf16)
    return qt__cuda_attention_op_backward((float *)dqkv, scratch, (const float *)dout,
                                          (const float *)qkv, att, (const float *)out, batch,
                                          tokens, c, heads, set, err);
  return qt__cuda_attention_fused_backward_bf16(dqkv, scratch, dout, qkv, att, out, batch, tokens,
                                                c, heads, set, bf16, err);
}

extern "C" int qt__cuda_attention_op_backward(float *dqkv, float *scratch, const float *dout,
                                              const float *qkv, const float *att, const float *out,
                                              size_t batch, size_t tokens, size_t c, size_t heads,
                                              int set, qt_err *err) {
  if (qt__cuda_attention_fused_now(batch, tokens, c, heads)) {
    return qt__cuda_attention_fused_backward(dqkv, scratch, dout, qkv, att, out, batch, tokens, c,
                                             heads, set, err);
  }
  return qt__cuda_attention_backward(dqkv, scratch, dout, qkv, att, batch, tokens, c, heads, set,
                                     err);
}

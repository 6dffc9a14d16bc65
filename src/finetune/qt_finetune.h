/*
 * qt_finetune.h - the fine-tuning engine of qtune.
 *
 * What this module implements (and will grow into): tensors and their kernels
 * behind one backend interface, with a plain CPU reference in finetune/cpu/
 * and a fast CUDA path in finetune/cuda/; later the model families, data
 * loading, optimizers and regularizers, and the epoch-step run API with
 * checkpoint/resume (see ARCHITECTURE.md). Today it holds:
 *   - the backend selector (CPU or CUDA) and the CUDA device query;
 *   - the first op, the fused AdamW parameter update, in a CPU reference and
 *     a CUDA version that a parity test (label `gpu`) checks against it;
 *   - safetensors reading and writing with strict validation, and the
 *     float16 / bfloat16 conversions (qt_safetensors.c).
 *
 * Backends. Every op exists as qt_cpu_<op>() and qt_cuda_<op>(). The CPU
 * version is the reference: a readable loop whose numbers the CUDA version
 * must reproduce within float rounding. When qtune is built without CUDA
 * (QT_CUDA=OFF or no toolkit), the qt_cuda_* functions still exist and return
 * QT_ENODEV, and qt_cuda_device_count() reports 0 devices, so callers and
 * tests need no #ifdef.
 *
 * Memory. The caller owns every array passed to an op. qt_cpu_* functions
 * take host pointers. qt_cuda_<op>() takes device pointers (memory from
 * cudaMalloc) and launches asynchronously on the default stream;
 * qt_cuda_<op>_host() takes host pointers, copies them to the device, runs the
 * op, copies the results back and frees its device memory before returning
 * (for tests and one-off use, not for the training loop).
 *
 * Shapes and units. Parameters, gradients and optimizer moments are flat
 * float32 arrays of n elements. Optimizer steps are counted from 1.
 *
 * Errors follow qt_core.h: 0 or a negative QT_E* code, detail in *err.
 */
#ifndef QT_FINETUNE_H
#define QT_FINETUNE_H

#include <stddef.h>

#include "core/qt_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------- */
/* Backends                                                                   */
/* ------------------------------------------------------------------------- */

/* Where the engine computes. */
typedef enum qt_backend_kind {
  QT_BACKEND_KIND_CPU = 0, /* the reference: plain C loops and OpenBLAS */
  QT_BACKEND_KIND_CUDA = 1 /* one CUDA device */
} qt_backend_kind;

/* "cpu" or "cuda"; "unknown" for a value outside the enum. Never NULL. */
const char *qt_backend_kind_name(qt_backend_kind kind);

/* Parses "cpu" or "cuda" (any case). Anything else is QT_EINVAL with a
 * message that quotes the text and lists the accepted names. */
int qt_backend_kind_parse(const char *text, qt_backend_kind *out, qt_err *err);

/* Returns 0 when the backend can run here: always for CPU; for CUDA when
 * qtune was built with CUDA and at least one device is visible. Otherwise
 * QT_ENODEV with a message that says why (no CUDA build, or no device). */
int qt_backend_kind_check(qt_backend_kind kind, qt_err *err);

/* ------------------------------------------------------------------------- */
/* CUDA devices                                                               */
/* ------------------------------------------------------------------------- */

/* Stores the number of visible CUDA devices in *count. A machine without a
 * GPU, without a driver, or a build without CUDA is not an error: *count is 0
 * and the reason is logged at debug level. Returns QT_EINVAL only when count
 * is NULL. */
int qt_cuda_device_count(int *count, qt_err *err);

/* ------------------------------------------------------------------------- */
/* Optimizer op: AdamW                                                        */
/* ------------------------------------------------------------------------- */

/* Hyperparameters of AdamW (Loshchilov and Hutter, "Decoupled Weight Decay
 * Regularization", ICLR 2019), in the form of torch.optim.AdamW: weight decay
 * is scaled by the learning rate and applied to the parameters directly, not
 * through the gradient, so it never enters the moments. */
typedef struct qt_adamw_params {
  double lr;           /* learning rate, >= 0 */
  double beta1;        /* decay of the first moment, in [0, 1) */
  double beta2;        /* decay of the second moment, in [0, 1) */
  double eps;          /* added to sqrt of the bias-corrected second moment, > 0 */
  double weight_decay; /* decoupled weight decay coefficient, >= 0 */
} qt_adamw_params;

/* lr 1e-3, beta1 0.9, beta2 0.999, eps 1e-8, weight_decay 0.01 (PyTorch's). */
qt_adamw_params qt_adamw_default_params(void);

/* One AdamW step over n elements, in place. With g = grads[i] and step t:
 *
 *   m[i]      = beta1 * m[i] + (1 - beta1) * g
 *   v[i]      = beta2 * v[i] + (1 - beta2) * g * g
 *   params[i] = params[i] - lr * weight_decay * params[i]
 *               - lr / (1 - beta1^t) * m[i] / (sqrt(v[i] / (1 - beta2^t)) + eps)
 *
 * The decay and the Adam update both read the parameters from before the
 * step. m and v start at zero before step 1; t counts calls from 1 and
 * drives the bias correction. The scalars lr * weight_decay, lr / (1 -
 * beta1^t) and sqrt(1 - beta2^t) are computed in double, the per-element
 * arithmetic in float.
 *
 * Arguments: params, m, v (n floats each) are updated; grads (n floats) is
 * read. n == 0 is a no-op. A NULL array with n > 0, step < 1 or a
 * hyperparameter outside the ranges above (or not finite) is QT_EINVAL. */
int qt_cpu_adamw_step(float *params, const float *grads, float *m, float *v, size_t n,
                      const qt_adamw_params *hp, long step, qt_err *err);

/* The same step on the CUDA device, with device pointers. The kernel is
 * launched on the default stream and may still run when this returns; a
 * launch failure is reported here, a later execution failure by the next
 * synchronizing call. Arguments are checked as in qt_cpu_adamw_step. CUDA
 * failures map to QT_ENOMEM (out of device memory), QT_EINVAL (the runtime
 * rejected an argument, e.g. a host pointer) or QT_ENODEV (no usable device,
 * or the device failed), with CUDA's error text in the message. */
int qt_cuda_adamw_step(float *params, const float *grads, float *m, float *v, size_t n,
                       const qt_adamw_params *hp, long step, qt_err *err);

/* qt_cuda_adamw_step on host arrays: allocates device memory for the four
 * arrays, copies them in, runs the step, waits for it, copies params, m and v
 * back and frees the device memory. For parity tests and one-off use. */
int qt_cuda_adamw_step_host(float *params, const float *grads, float *m, float *v, size_t n,
                            const qt_adamw_params *hp, long step, qt_err *err);

/* ------------------------------------------------------------------------- */
/* safetensors                                                                */
/* ------------------------------------------------------------------------- */

/*
 * Model weights and checkpoints are stored in the safetensors format of
 * Hugging Face and timm (qt_safetensors.c):
 *
 *   8 bytes   N, the header length, an unsigned 64-bit little-endian integer
 *   N bytes   a JSON object, UTF-8:
 *               {"__metadata__": {"key": "value", ...},      optional, strings only
 *                "<tensor name>": {"dtype": "F32", "shape": [2, 3],
 *                                  "data_offsets": [begin, end]}, ...}
 *             padded with spaces to a multiple of 8 bytes
 *   the rest  the byte buffer; tensor data is little-endian, row-major (C
 *             order), at [begin, end) counted from the start of the buffer
 *
 * Reading validates the whole header before any tensor is touched; every
 * problem is QT_EFORMAT with the path and, where there is one, the tensor
 * name: a file shorter than 8 bytes; a header longer than the file or than
 * QT_SAFETENSORS_MAX_HEADER (100 MB, as in the reference implementation);
 * a header that is not JSON, not an object, or names a key twice; a tensor
 * entry with a missing or unknown key; an unknown dtype; a shape that is not
 * a list of whole numbers >= 0, has more than QT_SAFETENSORS_MAX_DIMS
 * dimensions, or more than QT_SAFETENSORS_MAX_ELEMENTS (2^40) elements;
 * data_offsets that are not two whole numbers with begin <= end; a byte
 * size other than elements * dtype size; tensors that overlap, leave a gap,
 * or do not end exactly at the end of the file (the format requires the
 * tensors to tile the buffer); "__metadata__" that is not an object of
 * strings. Nothing is allocated in proportion to what a header claims, only
 * to the header's real length and tensor count.
 *
 * Element types. Every dtype of the reference implementation is accepted
 * (a checkpoint may hold an I64 step counter beside its weights). The
 * floating-point ones (F64, F32, F16, BF16, F8_E5M2, F8_E4M3) and the
 * integer ones (I8..I64, U8..U64, BOOL) are converted to float32 by
 * qt_safetensors_read_f32; integers above 2^24 lose precision there, so
 * read those with qt_safetensors_read_raw, which copies the stored bytes.
 * Newer sub-byte dtypes (F4, F6_*, ...) are an unknown dtype.
 *
 * Conversions are exact where the target can hold the value (F16, BF16 and
 * F8 to float32, float32 to F64) and round to nearest, ties to even,
 * otherwise: float32 to BF16 and F16, with overflow to infinity, F16
 * subnormals, signed zeros and infinities kept; NaN stays NaN (quiet, sign
 * and the top payload bits kept).
 *
 * Writing (qt_safetensors_write) produces the bytes the reference
 * implementation writes for the same tensors and metadata: tensors ordered
 * by descending dtype alignment, then by name (byte order); the header as
 * compact JSON, "__metadata__" first (its keys sorted: the reference leaves
 * their order unspecified), then the tensors in that order, each as
 * {"dtype","shape","data_offsets"}; spaces up to a multiple of 8 bytes. The
 * file is written atomically: to a temporary file in the same folder, which
 * is fsync'ed and renamed over path, so a crash or a full disk never leaves
 * a half-written checkpoint under the final name; the old file, if any, stays
 * until the rename. A full disk (or quota) is QT_ENOSPC, other failures
 * QT_EIO, each naming the path.
 *
 * Memory. qt_safetensors_t is opaque and owns the open file, the parsed
 * header and every string its accessors return; they stay valid until
 * qt_safetensors_free(). Tensor data is read on demand with pread() into
 * caller-owned arrays, never mapped, so a file that changes under a reader
 * gives a read error, not a crash; several threads may read tensors of one
 * open file at the same time. Shapes are size_t arrays, outermost
 * dimension first; a shape of zero dimensions is a scalar of one element.
 */

#define QT_SAFETENSORS_MAX_HEADER 100000000ull
#define QT_SAFETENSORS_MAX_DIMS 16
#define QT_SAFETENSORS_MAX_ELEMENTS (1ull << 40)

/* The element types of stored tensors, with the names of the format. */
typedef enum qt_dtype {
  QT_DTYPE_BOOL = 0, /* "BOOL", 1 byte, 0 or 1 */
  QT_DTYPE_U8,       /* "U8" */
  QT_DTYPE_I8,       /* "I8" */
  QT_DTYPE_F8_E5M2,  /* "F8_E5M2", 1 byte: the top byte of an F16 */
  QT_DTYPE_F8_E4M3,  /* "F8_E4M3", 1 byte: 4-bit exponent (bias 7), 3-bit mantissa, no infinity */
  QT_DTYPE_I16,      /* "I16" */
  QT_DTYPE_U16,      /* "U16" */
  QT_DTYPE_F16,      /* "F16", IEEE 754 binary16 */
  QT_DTYPE_BF16,     /* "BF16", the top half of a float32 */
  QT_DTYPE_I32,      /* "I32" */
  QT_DTYPE_U32,      /* "U32" */
  QT_DTYPE_F32,      /* "F32", IEEE 754 binary32 */
  QT_DTYPE_F64,      /* "F64", IEEE 754 binary64 */
  QT_DTYPE_I64,      /* "I64" */
  QT_DTYPE_U64,      /* "U64" */
  QT_DTYPE_COUNT
} qt_dtype;
/* The order above is the reference implementation's: increasing alignment,
 * which the writer uses to order tensors. */

/* "F32", "BF16", ...; "unknown" outside the enum. Never NULL. */
const char *qt_dtype_name(qt_dtype dtype);
/* Bytes per element (1, 2, 4 or 8); 0 outside the enum. */
size_t qt_dtype_size(qt_dtype dtype);
/* Parses a dtype name as written in headers (exact case). QT_EINVAL when
 * the name is not one of the above. */
int qt_dtype_parse(const char *text, qt_dtype *out);

/* Scalar conversions, as described above. */
float qt_f16_to_f32(uint16_t bits);
uint16_t qt_f32_to_f16(float value);
float qt_bf16_to_f32(uint16_t bits);
uint16_t qt_f32_to_bf16(float value);

/* An open safetensors file. */
typedef struct qt_safetensors qt_safetensors_t;

/* What the header says about one tensor (pointers owned by the file). */
typedef struct qt_safetensors_info {
  const char *name;
  qt_dtype dtype;
  size_t ndim;         /* number of dimensions, 0..QT_SAFETENSORS_MAX_DIMS */
  const size_t *shape; /* (ndim) sizes, outermost first */
  size_t numel;        /* product of the shape (1 for a scalar) */
  uint64_t offset;     /* first byte in the data buffer */
  uint64_t nbytes;     /* numel * qt_dtype_size(dtype) */
} qt_safetensors_info;

/* Opens path and validates its header (see above). A missing file is
 * QT_ENOENT, an unreadable one QT_EIO, a malformed one QT_EFORMAT. */
int qt_safetensors_open(const char *path, qt_safetensors_t **out, qt_err *err);
/* Closes the file and releases everything. NULL is a no-op. */
void qt_safetensors_free(qt_safetensors_t *st);

const char *qt_safetensors_path(const qt_safetensors_t *st);
/* Number of tensors. Tensors are indexed 0..count-1 in name order (byte
 * order of the names), not in file order. */
size_t qt_safetensors_count(const qt_safetensors_t *st);
/* The name of tensor i; i must be < count (asserted). */
const char *qt_safetensors_name(const qt_safetensors_t *st, size_t index);
/* Header facts of tensor i; i must be < count (asserted). */
void qt_safetensors_info_at(const qt_safetensors_t *st, size_t index, qt_safetensors_info *info);
/* Finds a tensor by name (binary search). Returns 0 and sets *index (may be
 * NULL), or QT_ENOENT without touching err. */
int qt_safetensors_find(const qt_safetensors_t *st, const char *name, size_t *index);
/* Like find, but fills *info; QT_ENOENT with "path: no tensor 'name'". */
int qt_safetensors_lookup(const qt_safetensors_t *st, const char *name, qt_safetensors_info *info,
                          qt_err *err);

/* Copies tensor `name` into dst as float32, converting from its dtype.
 * n must equal the tensor's element count: a different n is QT_EINVAL
 * naming both (the caller's buffer and the file disagree on the shape). An
 * unknown name is QT_ENOENT, a read failure (the file shrank) QT_EIO. */
int qt_safetensors_read_f32(const qt_safetensors_t *st, const char *name, float *dst, size_t n,
                            qt_err *err);
/* Copies the stored bytes of tensor `name` (little-endian) into dst; nbytes
 * must equal the tensor's byte size. */
int qt_safetensors_read_raw(const qt_safetensors_t *st, const char *name, void *dst, size_t nbytes,
                            qt_err *err);

/* The "__metadata__" pairs, in key order. */
size_t qt_safetensors_metadata_count(const qt_safetensors_t *st);
/* Key and value of pair i (i < count, asserted); either pointer may be NULL. */
void qt_safetensors_metadata_at(const qt_safetensors_t *st, size_t index, const char **key,
                                const char **value);
/* The value of `key`, or NULL when the file has no such key. */
const char *qt_safetensors_metadata_get(const qt_safetensors_t *st, const char *key);

/* One tensor to write. Exactly one of data and raw is used:
 *   data  numel float32 values, converted to dtype, which must be F32, F16,
 *         BF16 or F64;
 *   raw   numel * qt_dtype_size(dtype) bytes in the file's little-endian
 *         layout, written as they are (any dtype), used when data is NULL.
 * Both may be NULL when numel is 0. */
typedef struct qt_safetensors_tensor {
  const char *name; /* non-empty, unique, not "__metadata__" */
  qt_dtype dtype;
  size_t ndim;         /* 0..QT_SAFETENSORS_MAX_DIMS */
  const size_t *shape; /* (ndim) sizes; may be NULL when ndim is 0 */
  const float *data;
  const void *raw;
} qt_safetensors_tensor;

/* One "__metadata__" entry. */
typedef struct qt_safetensors_pair {
  const char *key;
  const char *value;
} qt_safetensors_pair;

/* Writes n tensors and n_metadata metadata pairs (metadata may be NULL when
 * n_metadata is 0) to path, atomically (see above). Bad arguments (a
 * duplicate or empty name, a NULL data pointer for a non-empty tensor, a
 * shape over the limits, a conversion the writer does not do, a duplicate
 * metadata key) are QT_EINVAL before anything is written. */
int qt_safetensors_write(const char *path, const qt_safetensors_tensor *tensors, size_t n,
                         const qt_safetensors_pair *metadata, size_t n_metadata, qt_err *err);

/* The same bytes written to an open descriptor (a pipe, a socket, a file the
 * caller manages), from its current position, without fsync or atomicity.
 * `name` is used in messages only (NULL: "<stream>"). A full device is
 * QT_ENOSPC, another write failure QT_EIO. */
int qt_safetensors_write_fd(int fd, const char *name, const qt_safetensors_tensor *tensors,
                            size_t n, const qt_safetensors_pair *metadata, size_t n_metadata,
                            qt_err *err);

#ifdef __cplusplus
}
#endif

#endif /* QT_FINETUNE_H */

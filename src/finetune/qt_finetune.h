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
 *     float16 / bfloat16 conversions (qt_safetensors.c);
 *   - the timm checkpoint layouts of the model families and the check of a
 *     checkpoint against them (qt_model_layout.c);
 *   - the CPU layer ops with hand-written backward passes (cpu/) and the ViT
 *     family built from them: load a timm checkpoint, forward, loss,
 *     backward, AdamW step (qt_vit.c).
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
 * cudaMalloc) and launches asynchronously on the calling thread's stream
 * (qt_cuda_stream_use);
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

/* Makes device `index` (0-based, as nvidia-smi and CUDA_VISIBLE_DEVICES
 * number them) the calling thread's CUDA device: every model, op and
 * cuBLAS handle created on that thread afterwards lives there (the
 * engine's CUDA calls run on the thread that trains). QT_ENODEV, saying how
 * many devices there are, when there is no such device (always without
 * CUDA). */
int qt_cuda_select_device(int index, qt_err *err);

/* The current CUDA device: its name, compute capability, multiprocessors,
 * and its memory as cudaMemGetInfo sees it (free and total bytes, every
 * process's allocations counted). QT_ENODEV without a device (or built
 * without CUDA). */
typedef struct qt_cuda_info {
  char name[256]; /* e.g. "NVIDIA H100 80GB HBM3" */
  int major, minor;
  int multiprocessors;
  size_t memory_free, memory_total;
} qt_cuda_info;
int qt_cuda_device_info(qt_cuda_info *info, qt_err *err);

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
 * launched on the thread's stream and may still run when this returns; a
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

/* ------------------------------------------------------------------------- */
/* Model families and their checkpoint layouts                                */
/* ------------------------------------------------------------------------- */

/*
 * A pretrained model arrives as a safetensors file with timm's parameter
 * names (qt_model_layout.c). qt_model_inspect() checks that a file holds
 * exactly the tensors of its family's layout, with shapes that chain, and
 * infers the model's dimensions from them. Layouts (batch norms as
 * bnN.{weight, bias, running_mean, running_var[, num_batches_tracked]}):
 *
 *   vit, deit, deit3  patch_embed.proj.{weight [W,3,p,p], optional bias},
 *                     cls_token [1,1,W], optional dist_token (distilled DeiT,
 *                     with head_dist), pos_embed [1, g*g (+ tokens), W] for a
 *                     g x g grid of patches (without the tokens: timm's
 *                     no_embed_class, as in DeiT III), blocks.i.{norm1,
 *                     attn.qkv (bias optional, in all blocks or none),
 *                     attn.proj, norm2, mlp.fc1 [M,W], mlp.fc2 [W,M]}, layer
 *                     scale blocks.i.ls1.gamma / ls2.gamma (required for deit3,
 *                     all blocks or none), norm, head [classes, W].
 *   resnet            conv1, bn1, layer1..layer4 of basic (conv1-2) or
 *                     bottleneck (conv1-3) blocks with optional downsample.0/1,
 *                     fc.
 *   mobilenetv2, efficientnet
 *                     conv_stem, bn1, blocks.s.b (depthwise-separable: conv_dw,
 *                     bn1, conv_pw, bn2; inverted residual: conv_pw, bn1,
 *                     conv_dw, bn2, conv_pwl, bn3; squeeze-excitation se.conv_
 *                     reduce / se.conv_expand for efficientnet only), conv_head,
 *                     bn2, classifier.
 *   mlp               (qtune's own: timm has no tabular MLP) blocks.i.fc.{weight
 *                     [out, in], bias}, optional blocks.i.norm.{weight, bias},
 *                     head.
 * Input convolutions take 3 channels (RGB; grayscale data is replicated).
 * The head is optional everywhere (a checkpoint without a classifier).
 *
 * The expectations come from a hub entry (configs/hubs/, see qt_metadata.h),
 * passed as plain values, so messages call them "the hub". Problems, the
 * first one found:
 *   QT_ENOENT   the file does not exist: "checkpoint PATH does not exist
 *               (not fetched yet?)";
 *   QT_EFORMAT  it is not a valid safetensors file (see above);
 *   QT_ESCHEMA  "checkpoint PATH: ..." a missing or unexpected tensor, a
 *               shape that does not chain, a patch size, image size (from
 *               the position embedding), number of classes, depth, width or
 *               parameter count (more than 5% off) other than expected.
 * Callers that know where the expectation was written (a hub file's
 * line:column and the model's name) prefix the message with it.
 */

/* The families of the hub format. The ViT families share one layout. */
typedef enum qt_model_family {
  QT_MODEL_FAMILY_VIT = 0,
  QT_MODEL_FAMILY_DEIT = 1,
  QT_MODEL_FAMILY_DEIT3 = 2,
  QT_MODEL_FAMILY_MOBILENETV2 = 3,
  QT_MODEL_FAMILY_EFFICIENTNET = 4,
  QT_MODEL_FAMILY_RESNET = 5,
  QT_MODEL_FAMILY_MLP = 6
} qt_model_family;

/* "vit", "deit", ...; "unknown" outside the enum. Never NULL. */
const char *qt_model_family_name(qt_model_family family);
/* Parses a family name (exact, lower case); QT_EINVAL otherwise. */
int qt_model_family_parse(const char *text, qt_model_family *out);
/* 1 for vit, deit and deit3, else 0. */
int qt_model_family_is_vit(qt_model_family family);
/* 1 for mobilenetv2, efficientnet and resnet (qt_cnn), else 0. */
int qt_model_family_is_cnn(qt_model_family family);
/* 1 for mlp (qt_mlp), else 0 (defined in qt_model.c). */
int qt_model_family_is_mlp(qt_model_family family);

/* What the caller knows about the model; each field is checked only when
 * set (0, or -1 for num_classes, means "any"). */
typedef struct qt_model_expect {
  long image_size;   /* pixels per side (ViT families: with the patch size,
                        the grid of the position embedding) */
  long num_classes;  /* rows of the head; 0: the file has no head; -1: any */
  long patch_size;   /* ViT families */
  long heads;        /* ViT families: must divide the width */
  long depth;        /* as in qt_model_summary */
  long width;        /* features entering the head */
  double parameters; /* within 5% of qt_model_summary.parameters */
} qt_model_expect;

/* Expects nothing: every field "any". */
qt_model_expect qt_model_expect_any(void);

/* What a checkpoint says about its model. */
typedef struct qt_model_summary {
  size_t tensors;    /* tensors in the file */
  double parameters; /* elements of all tensors except batch-norm statistics */
  long depth;        /* ViT: blocks; ResNet: 2 + convolutions in blocks (18, 34,
                        50); EfficientNet family: blocks; MLP: hidden layers */
  long width;        /* features entering the head */
  long num_classes;  /* rows of the head; 0 without one */
  /* ViT families only (0 otherwise): */
  long patch_size;    /* pixels per side of a patch */
  long image_size;    /* pixels per side, from the position embedding's grid */
  long mlp_hidden;    /* rows of blocks.i.mlp.fc1.weight */
  int layer_scale;    /* 1 when blocks have ls1/ls2 */
  int distilled;      /* 1 with a distillation token */
  int no_embed_class; /* 1 when pos_embed has no entries for the tokens */
  int qkv_bias;       /* 1 when blocks have attn.qkv.bias */
  int patch_bias;     /* 1 when patch_embed.proj.bias exists */
} qt_model_summary;

/* Opens checkpoint_path and checks it against the family's layout and
 * *expect (NULL: expect nothing), see above. summary may be NULL; on
 * failure it holds what was learned before the problem. */
int qt_model_inspect(const char *checkpoint_path, qt_model_family family,
                     const qt_model_expect *expect, qt_model_summary *summary, qt_err *err);
/* The same check on a file the caller has opened. */
int qt_model_inspect_open(const qt_safetensors_t *st, qt_model_family family,
                          const qt_model_expect *expect, qt_model_summary *summary, qt_err *err);

/* ------------------------------------------------------------------------- */
/* CPU layer ops (the reference backend)                                      */
/* ------------------------------------------------------------------------- */

/*
 * The layers of the model families as forward / backward pairs on float32
 * arrays, in the style of llm.c: plain loops, matrix products by OpenBLAS
 * (cblas_sgemm), no allocation (scratch space is passed in). One op per file
 * in cpu/ (qt_cpu_<op>.c); a CUDA version of each will be checked against
 * these. The ops split their work over OpenBLAS's thread count
 * (openblas_set_num_threads, OPENBLAS_NUM_THREADS) on worker threads of
 * their own (cpu/qt_cpu_parallel.h), each product into blocks of one
 * OpenBLAS call on one thread: their results, bit for bit, do not depend on
 * the thread count. A worker holds the scratch an op needs for its share
 * (the attention backward: tokens * tokens floats), kept between calls.
 *
 * Conventions for every op below:
 *   - arrays are row-major and caller-owned; n is the number of rows (for a
 *     ViT: batch * tokens), c the features of a row;
 *   - a forward writes its outputs, never reads them;
 *   - a backward ACCUMULATES (+=) into every gradient it is given, so the
 *     caller zeroes gradients before the first contribution, and residual
 *     connections add up without copies; a NULL gradient pointer skips that
 *     gradient (e.g. the input images of the patch embedding);
 *   - shapes are trusted (the model object checked them); sizes that do not
 *     fit the int of BLAS are asserted.
 * Reductions (means, variances, log-sum-exp) are accumulated in double and
 * rounded to float once.
 */

/* Linear layer: out (n, out_c) = inp (n, in_c) . weight^T + bias, with
 * weight (out_c, in_c) as torch.nn.Linear stores it; bias (out_c) may be
 * NULL (no bias). */
void qt_cpu_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                           size_t n, size_t in_c, size_t out_c);
/* dinp (n, in_c) += dout . weight; dweight (out_c, in_c) += dout^T . inp;
 * dbias (out_c) += column sums of dout. Any of the three may be NULL. */
void qt_cpu_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, size_t n, size_t in_c,
                            size_t out_c);

/* Layer norm over the c features of each row (torch.nn.LayerNorm):
 * out = (inp - mean) * rstd * weight + bias, rstd = 1 / sqrt(var + eps) with
 * the biased variance. mean and rstd (n) are saved for the backward.
 * timm's ViTs use eps = 1e-6. */
void qt_cpu_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                              const float *weight, const float *bias, size_t n, size_t c,
                              float eps);
void qt_cpu_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, const float *mean,
                               const float *rstd, size_t n, size_t c);

/* GELU, the exact form of torch.nn.GELU() that timm's MLPs use:
 * out = 0.5 x (1 + erf(x / sqrt(2))) = x Phi(x), over n elements, Phi
 * within 1.5e-7 (cpu/qt_cpu_vmath.h). out may equal inp. */
void qt_cpu_gelu_forward(float *out, const float *inp, size_t n);
/* dinp += dout * (Phi(x) + x phi(x)), with inp the forward's input. */
void qt_cpu_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n);

/* Multi-head self-attention core, as timm's Attention between its qkv and
 * proj linears: qkv (batch, tokens, 3 c) holds per token [q | k | v], each
 * split into heads of c / heads features (head h at h * head_size);
 * att (batch, heads, tokens, tokens) receives softmax(q k^T / sqrt(head_size))
 * and out (batch, tokens, c) the heads' att . v side by side (timm's
 * transpose(1, 2).reshape). heads must divide c. */
void qt_cpu_attention_forward(float *out, float *att, const float *qkv, size_t batch, size_t tokens,
                              size_t c, size_t heads);
/* dqkv (batch, tokens, 3 c) += the gradient through the attention, from
 * dout (batch, tokens, c) and the forward's qkv and att; scratch holds
 * tokens * tokens floats. */
void qt_cpu_attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                               const float *att, size_t batch, size_t tokens, size_t c,
                               size_t heads);

/* Residual connection with optional layer scale (DeiT III):
 * out = res + gamma * branch, gamma (c) per feature, or 1 when NULL. out may
 * equal res. */
void qt_cpu_residual_forward(float *out, const float *res, const float *branch, const float *gamma,
                             size_t n, size_t c);
/* dres += dout (skipped when NULL: a caller that keeps one gradient buffer
 * for the residual stream passes NULL, since d res = d out); dbranch +=
 * gamma * dout; dgamma (c) += column sums of dout * branch. */
void qt_cpu_residual_backward(float *dres, float *dbranch, float *dgamma, const float *dout,
                              const float *branch, const float *gamma, size_t n, size_t c);

/* Patch extraction (the im2col of a convolution with stride = kernel =
 * patch): images (batch, channels, size, size) -> patches (batch, g * g,
 * channels * patch * patch) with g = size / patch, patches in row-major grid
 * order and each patch's values in the order of a convolution weight
 * (channel, row, column). A linear layer with the convolution's weight
 * (width, channels, patch, patch) read as (width, channels * patch * patch)
 * then computes timm's patch_embed.proj(x).flatten(2).transpose(1, 2). */
void qt_cpu_patchify(float *patches, const float *images, size_t batch, size_t channels,
                     size_t size, size_t patch);

/* Token sequence of a ViT (timm's _pos_embed with one class token):
 * x (batch, 1 + patches, c) gets x[b, 0] = cls_token and x[b, 1 + i] =
 * patch_tokens[b, i], plus the position embedding pos: with class_in_pos
 * (timm's default) pos has 1 + patches rows and is added to every token;
 * without (no_embed_class, DeiT III) it has `patches` rows and is added to
 * the patch tokens only. */
void qt_cpu_tokens_forward(float *x, const float *patch_tokens, const float *cls_token,
                           const float *pos, int class_in_pos, size_t batch, size_t patches,
                           size_t c);
void qt_cpu_tokens_backward(float *dpatch_tokens, float *dcls_token, float *dpos, const float *dx,
                            int class_in_pos, size_t batch, size_t patches, size_t c);

/* Softmax cross-entropy of logits (batch, classes), one loss per row:
 * loss[b] = -sum_k t[b, k] log softmax(logits[b])_k, with the targets t
 * either soft (soft_targets (batch, classes), rows summing to 1: mixup,
 * cutmix) or, when soft_targets is NULL, labels (batch) smoothed as in
 * torch's cross_entropy(label_smoothing = s) and timm's
 * LabelSmoothingCrossEntropy: t = (1 - s) one_hot(label) + s / classes.
 * probs (batch, classes) receives the softmax for the backward. Labels
 * must be in [0, classes) (asserted: the model object checks them). */
void qt_cpu_cross_entropy_forward(float *losses, float *probs, const float *logits,
                                  const int *labels, const float *soft_targets, float smoothing,
                                  size_t batch, size_t classes);
/* dlogits += dloss[b] * (probs - t), dloss (batch) the gradient of each
 * row's loss (1 / batch for a mean), or the scalar *dloss for every row
 * when dloss_per_row is 0. */
void qt_cpu_cross_entropy_backward(float *dlogits, const float *probs, const int *labels,
                                   const float *soft_targets, float smoothing, const float *dloss,
                                   int dloss_per_row, size_t batch, size_t classes);

/* Resizes a grid of vectors inp (old_h, old_w, c) to out (new_h, new_w, c)
 * with PyTorch's antialiased bicubic interpolation
 * (F.interpolate(mode='bicubic', antialias=True, align_corners=False)),
 * which is what timm's resample_abs_pos_embed uses when a ViT is fine-tuned
 * at another image size: Keys' cubic with a = -0.5, stretched by the scale
 * when shrinking, weights renormalized at the borders, columns first, then
 * rows. scratch holds old_h * new_w * c floats. */
void qt_cpu_resample_bicubic(float *out, float *scratch, const float *inp, size_t old_h,
                             size_t old_w, size_t new_h, size_t new_w, size_t c);

/* ------------------------------------------------------------------------- */
/* CUDA layer ops (finetune/cuda/, issue 8)                                   */
/* ------------------------------------------------------------------------- */

/*
 * The ViT layer ops above on a CUDA device: qt_cuda_<op>() has the
 * arguments of qt_cpu_<op>() with the same meaning, shapes and conventions
 * (a backward accumulates; a NULL gradient is skipped), except that
 *   - every array is device memory (qt_cuda_malloc, cudaMalloc);
 *   - the op returns 0 or a negative QT_E* code with qt_err as its last
 *     argument: QT_EINVAL for a NULL array the op needs or sizes beyond the
 *     int of cuBLAS and of the launch grid (where the CPU asserts), and the
 *     CUDA / cuBLAS failures of qt_cuda_adamw_step (QT_ENOMEM, QT_EINVAL,
 *     QT_ENODEV);
 *   - work is queued on the calling thread's stream (qt_cuda_stream_use;
 *     the legacy default stream unless one was made current) and may still
 *     run when the call returns (qt_cuda_synchronize waits; execution
 *     errors surface there);
 *   - qt_cuda_attention_backward's scratch holds
 *     qt_cuda_attention_scratch_size(batch, tokens, heads) =
 *     max(batch, heads) * tokens * tokens floats (the CPU's: tokens *
 *     tokens), one score matrix per image or per head, or batch * heads *
 *     tokens when that is more (the fused backward's row sums); batch is
 *     the largest batch the scratch serves.
 * Matrix products run on cuBLAS in the precision that
 * qt_cuda_set_matmul_precision chose (FP32 by default); reductions (row statistics, log-sum-exp,
 * column sums for bias, layer-norm and layer-scale gradients) accumulate in double as on the CPU.
 * tests/test_gpu_ops.c checks each op against its CPU twin (docs/cuda.md gives the tolerances).
 * Built without CUDA, every function here returns QT_ENODEV ("built without CUDA"); qt_cuda_free
 * does nothing.
 */

/* Device memory for tests and callers written in C: qt_cuda_malloc stores a
 * cudaMalloc'ed block of `bytes` in *ptr (NULL for 0 bytes), qt_cuda_free
 * releases it (NULL is a no-op), the copies are synchronous: each waits for
 * the work queued on the thread's stream before it, and returns when its
 * bytes have arrived. */
int qt_cuda_malloc(void **ptr, size_t bytes, qt_err *err);
void qt_cuda_free(void *ptr);
int qt_cuda_copy_to_device(void *dst, const void *src, size_t bytes, qt_err *err);
int qt_cuda_copy_to_host(void *dst, const void *src, size_t bytes, qt_err *err);
/* Waits for all queued device work; reports an execution failure. */
int qt_cuda_synchronize(qt_err *err);
/* Page-locks `bytes` bytes of ordinary host memory at ptr
 * (cudaHostRegister), so that copies between it and the device are direct
 * DMA transfers, without the driver's staging through pageable memory: for
 * arrays uploaded at every step, such as a batch's images. The memory
 * stays the caller's; qt_cuda_host_unregister(ptr) must run before it is
 * freed (NULL is a no-op). Registering costs about a millisecond per
 * hundred MB: done once per buffer, not per copy. */
int qt_cuda_host_register(void *ptr, size_t bytes, qt_err *err);
void qt_cuda_host_unregister(void *ptr);
/* A stream of device work and what that work uses: a CUDA stream of its
 * own (blocking: ordered with the legacy default stream, so that work
 * queued there by anyone, a cudaMemcpy say, still comes before or after
 * it), the cuBLAS handle bound to it, and its own scratch blocks for the
 * ops (partial sums, BF16 operands, cuBLASLt's workspace), so that work
 * on two streams never shares a block. A run trains on one of its own
 * (qt_run_t, through the op table). qt_cuda_stream_create makes one on
 * the calling thread's device (QT_ENOMEM, QT_ENODEV as CUDA reports);
 * qt_cuda_stream_destroy waits for its work and releases it (NULL is a
 * no-op; a thread that had it current falls back to the default).
 * qt_cuda_stream_use makes s the calling thread's stream (NULL: the legacy
 * default stream and the device's own scratch) for every qt_cuda_* call
 * after it, and returns the previous one, for the caller to restore; use
 * a stream only on the device it was made on. */
typedef struct qt_cuda_stream qt_cuda_stream_t;
int qt_cuda_stream_create(qt_cuda_stream_t **out, qt_err *err);
void qt_cuda_stream_destroy(qt_cuda_stream_t *s);
qt_cuda_stream_t *qt_cuda_stream_use(qt_cuda_stream_t *s);
/* An upload that overlaps the thread's stream's work: queued on a copy
 * stream of that stream's own, it may still be on its way when the call
 * returns. qt_cuda_upload_wait makes the work queued on the thread's
 * stream after it wait (on the device) for every upload_async before it.
 * Until the stream has run past that point (a download after it has
 * returned, say), src must stay as it is and dst be neither read nor
 * written; src page-locked (qt_cuda_host_register) for the copy to
 * overlap at all. Without a
 * created stream current, qt_cuda_upload_async is qt_cuda_copy_to_device
 * and qt_cuda_upload_wait does nothing. */
int qt_cuda_upload_async(void *dst, const void *src, size_t bytes, qt_err *err);
int qt_cuda_upload_wait(qt_err *err);
/* Queued on the thread's stream: qt_cuda_zero sets `bytes` bytes to 0,
 * qt_cuda_copy_on_device copies between two device blocks, and
 * qt_cuda_copy_rows copies `rows` rows of `cols` floats from rows
 * `src_stride` floats apart to rows `dst_stride` floats apart. */
int qt_cuda_zero(void *ptr, size_t bytes, qt_err *err);
int qt_cuda_copy_on_device(void *dst, const void *src, size_t bytes, qt_err *err);
int qt_cuda_copy_rows(float *dst, size_t dst_stride, const float *src, size_t src_stride,
                      size_t cols, size_t rows, qt_err *err);

/* How the CUDA ops compute their matrix products (every cuBLAS call: the
 * linear layers, attention's products, the convolutions' GEMMs). Storage
 * stays FP32 in every mode: parameters (the master weights), activations,
 * gradients and optimizer states. */
typedef enum qt_matmul_precision {
  QT_MATMUL_FP32 = 0, /* full FP32 (the default) */
  QT_MATMUL_TF32 = 1, /* TF32 tensor cores on the FP32 operands */
  /* Mixed precision (`amp: bf16` of a run): each product's operands are
   * rounded to BF16 (to nearest even), multiplied on BF16 tensor cores and
   * accumulated into FP32. BF16 has FP32's exponent range, so no loss
   * scaling is needed. Everything outside the products stays FP32.
   * Attention's products, whose operands are interleaved in the qkv rows,
   * are multiplied as QT_MATMUL_BF16_FAST. */
  QT_MATMUL_BF16 = 2,
  /* BF16 products where cuBLAS converts the FP32 operands itself
   * (CUBLAS_COMPUTE_32F_FAST_16BF): no rounding pass and no scratch, but a
   * rounding that cuBLAS does not document. Offered to be measured against
   * QT_MATMUL_BF16 (bench/engine --amp bf16-fast); runs use QT_MATMUL_BF16. */
  QT_MATMUL_BF16_FAST = 3
} qt_matmul_precision;

/* Sets the precision of the CUDA ops' matrix products, process-wide (an
 * unknown value means FP32); returns the previous one. Without CUDA it
 * only returns QT_MATMUL_FP32. */
qt_matmul_precision qt_cuda_set_matmul_precision(qt_matmul_precision precision);

/* For a log line: the path the CUDA convolutions take under products of
 * `precision`: cuDNN and its version where it takes the shape, else
 * im2col and cuBLAS, and why (written to out, always terminated). Loads
 * cuDNN where it could be used (FP32 or TF32, QT_CUDA_CUDNN not 0). */
void qt_cuda_describe_convolutions(qt_matmul_precision precision, char *out, size_t size);

int qt_cuda_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                           size_t n, size_t in_c, size_t out_c, qt_err *err);
int qt_cuda_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, size_t n, size_t in_c,
                            size_t out_c, qt_err *err);

int qt_cuda_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                              const float *weight, const float *bias, size_t n, size_t c, float eps,
                              qt_err *err);
int qt_cuda_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, const float *mean,
                               const float *rstd, size_t n, size_t c, qt_err *err);

int qt_cuda_gelu_forward(float *out, const float *inp, size_t n, qt_err *err);
int qt_cuda_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n, qt_err *err);

/* Floats of scratch that qt_cuda_attention_backward needs. */
size_t qt_cuda_attention_scratch_size(size_t batch, size_t tokens, size_t heads);
int qt_cuda_attention_forward(float *out, float *att, const float *qkv, size_t batch, size_t tokens,
                              size_t c, size_t heads, qt_err *err);
int qt_cuda_attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                               const float *att, size_t batch, size_t tokens, size_t c,
                               size_t heads, qt_err *err);

int qt_cuda_residual_forward(float *out, const float *res, const float *branch, const float *gamma,
                             size_t n, size_t c, qt_err *err);
int qt_cuda_residual_backward(float *dres, float *dbranch, float *dgamma, const float *dout,
                              const float *branch, const float *gamma, size_t n, size_t c,
                              qt_err *err);

int qt_cuda_patchify(float *patches, const float *images, size_t batch, size_t channels,
                     size_t size, size_t patch, qt_err *err);
int qt_cuda_tokens_forward(float *x, const float *patch_tokens, const float *cls_token,
                           const float *pos, int class_in_pos, size_t batch, size_t patches,
                           size_t c, qt_err *err);
int qt_cuda_tokens_backward(float *dpatch_tokens, float *dcls_token, float *dpos, const float *dx,
                            int class_in_pos, size_t batch, size_t patches, size_t c, qt_err *err);

/* Labels are device memory too; an out-of-range label is reported
 * (QT_EINVAL) only in builds without NDEBUG, since the check synchronizes. */
int qt_cuda_cross_entropy_forward(float *losses, float *probs, const float *logits,
                                  const int *labels, const float *soft_targets, float smoothing,
                                  size_t batch, size_t classes, qt_err *err);
int qt_cuda_cross_entropy_backward(float *dlogits, const float *probs, const int *labels,
                                   const float *soft_targets, float smoothing, const float *dloss,
                                   int dloss_per_row, size_t batch, size_t classes, qt_err *err);

/* ------------------------------------------------------------------------- */
/* ViT family (vit, deit, deit3)                                              */
/* ------------------------------------------------------------------------- */

/*
 * A Vision Transformer as timm's VisionTransformer builds it with one class
 * token and global_pool 'token' (qt_vit.c): patch embedding, class token and
 * position embedding, `depth` pre-norm blocks
 *   x = x + ls1 * attn.proj(attention(attn.qkv(norm1(x))))
 *   x = x + ls2 * mlp.fc2(gelu(mlp.fc1(norm2(x))))
 * (ls1, ls2 only with layer scale), the final norm of the class token and
 * the head. Layer norms use eps 1e-6. Dropout, drop path and distillation
 * tokens are not implemented yet (a distilled checkpoint is QT_ENOTIMPL).
 * Parameter names are timm's (see "Model families" above), so a timm
 * checkpoint loads as is and qt_vit_save writes one timm loads.
 *
 * Use: qt_vit_load (a checkpoint) or qt_vit_init (random weights), then per
 * step qt_vit_forward -> qt_vit_loss -> qt_vit_zero_grad -> qt_vit_backward
 * -> qt_vit_adamw_step. Images are (batch, 3, image_size, image_size)
 * floats, already normalized with the hub's mean and std.
 *
 * Memory. qt_vit_t owns four arrays of all parameters (values, gradients,
 * AdamW's two moments; qt_vit_parameter_count floats each) and one
 * activation arena sized at creation for max_batch images (see
 * qt_vit_activation_bytes); loss, backward and the optimizer step allocate
 * nothing, and neither does a forward unless the backend's settings
 * changed since the last one (on a GPU, BF16 products keep some
 * activations in BF16 and the fused attention keeps less than the
 * probabilities: the forward then lays the arena out anew, and fails with
 * QT_ENOMEM, parameters untouched, where that memory cannot be had). A
 * forward with batch <= max_batch uses a prefix of each of its arrays.
 * Pointers returned by accessors stay valid until qt_vit_free or
 * qt_vit_to_backend.
 *
 * Numbers. Everything is float32 (reductions in double, see the ops above);
 * the result matches PyTorch running the same model within float rounding
 * (tests/test_finetune_vit.c, fixtures by tools/make-vit-fixture.py).
 */

/* Architecture. */
typedef struct qt_vit_config {
  long image_size;         /* pixels per side of the input images */
  long patch_size;         /* pixels per side of a patch; divides image_size */
  long width;              /* features per token (timm's embed_dim) */
  long depth;              /* blocks */
  long heads;              /* attention heads; divides width */
  long mlp_hidden;         /* hidden features of the MLPs (timm: 4 * width) */
  long num_classes;        /* rows of the head, >= 1 */
  int layer_scale;         /* 1: blocks.i.ls1.gamma / ls2.gamma (DeiT III) */
  int no_embed_class;      /* 1: pos_embed covers the patches only (DeiT III) */
  int qkv_bias;            /* 1: attn.qkv has a bias (timm's default) */
  int patch_bias;          /* 1: patch_embed.proj has a bias (timm's default) */
  double layer_scale_init; /* qt_vit_init: initial gamma (timm's init_values) */
} qt_vit_config;

/* ViT-Ti/16 at 224 px (timm's vit_tiny_patch16_224): width 192, depth 12,
 * 3 heads, MLP 768, 1000 classes, biases, no layer scale (init 1e-6 when
 * enabled). */
qt_vit_config qt_vit_default_config(void);

typedef struct qt_vit qt_vit_t;

/* A ViT with timm's random initialization (init_weights_vit_timm):
 * linear weights and pos_embed truncated normal (std 0.02, cut at +-2 as
 * timm's trunc_normal_), biases 0, cls_token normal (std 1e-6), layer norms
 * 1 and 0, patch_embed.proj as torch's Conv2d default (uniform in
 * +-1/sqrt(fan_in), weight by kaiming_uniform(a = sqrt(5)), which is the
 * same bound), layer scale gamma = layer_scale_init. Draws from rng. A
 * config that does not fit together (non-positive sizes, patch not dividing
 * the image, heads not dividing the width) is QT_EINVAL, a too large model
 * QT_ENOMEM. */
int qt_vit_init(const qt_vit_config *config, size_t max_batch, qt_rng_t *rng, qt_vit_t **out,
                qt_err *err);

/* How to load a checkpoint for fine-tuning. */
typedef struct qt_vit_load_params {
  qt_model_family family; /* vit, deit or deit3 (the layout to check) */
  long heads;             /* required: the checkpoint cannot tell */
  long image_size;        /* fine-tuning images; 0: the checkpoint's. Another
                             size resamples pos_embed (see
                             qt_cpu_resample_bicubic), as timm does */
  long num_classes;       /* classes of the task; 0: keep the checkpoint's
                             head. A different count (or a checkpoint
                             without a head) gets a new head drawn as in
                             qt_vit_init: weight trunc normal std 0.02,
                             bias 0, as timm's create_model(num_classes=) */
  size_t max_batch;       /* images per forward, >= 1 */
  qt_rng_t *rng;          /* for a new head; may be NULL when none is drawn */
} qt_vit_load_params;

/* family vit, heads 0 (must be set), image_size 0, num_classes 0,
 * max_batch 32, rng NULL. */
qt_vit_load_params qt_vit_default_load_params(void);

/* Loads a timm checkpoint: checks it with qt_model_inspect (errors as
 * there), reads every tensor as float32 (F16 and BF16 files convert), then
 * resamples pos_embed and replaces the head as the params ask. heads that
 * do not divide the width, or an image size that the patch does not
 * divide, is QT_EINVAL. */
int qt_vit_load(const char *checkpoint_path, const qt_vit_load_params *params, qt_vit_t **out,
                qt_err *err);

/* Releases everything; NULL is a no-op. */
void qt_vit_free(qt_vit_t *vit);

const qt_vit_config *qt_vit_get_config(const qt_vit_t *vit);
size_t qt_vit_max_batch(const qt_vit_t *vit);
/* Floats in each of the parameter arrays (values, gradients, moments). */
size_t qt_vit_parameter_count(const qt_vit_t *vit);
/* Bytes of the activation arena. */
size_t qt_vit_activation_bytes(const qt_vit_t *vit);

/* One named parameter tensor, with pointers into the model's arrays. */
typedef struct qt_vit_tensor {
  const char *name;    /* timm's name, e.g. "blocks.0.attn.qkv.weight" */
  size_t ndim;         /* 1..4 */
  const size_t *shape; /* (ndim) as timm stores it */
  size_t numel;
  float *data; /* (numel) the values; device memory on a CUDA model */
  float *grad; /* (numel) the gradient of the last backward(s); ditto */
  int decay;   /* 1 when AdamW decays it: timm's rule, not biases, norms,
                  layer scales, 1-d tensors, pos_embed and cls_token */
} qt_vit_tensor;

size_t qt_vit_tensor_count(const qt_vit_t *vit);
/* Tensor i (i < count, asserted), in a fixed order: patch_embed, cls_token,
 * pos_embed, blocks in order, norm, head. */
void qt_vit_tensor_at(const qt_vit_t *vit, size_t index, qt_vit_tensor *out);
/* By timm's name; QT_ENOENT (err untouched) when there is none. */
int qt_vit_find_tensor(const qt_vit_t *vit, const char *name, qt_vit_tensor *out);

/* Forward pass of batch images (batch, 3, image_size, image_size) to the
 * logits (batch, num_classes), kept with every activation the backward
 * needs. batch 0 or over max_batch, or a NULL pointer, is QT_EINVAL. */
int qt_vit_forward(qt_vit_t *vit, const float *images, size_t batch, qt_err *err);
/* The logits of the last forward, (batch, num_classes), in host memory on
 * every backend (a CUDA model copies them back at the end of the forward). */
const float *qt_vit_logits(const qt_vit_t *vit);

/* The mean cross-entropy over the last forward's batch (see
 * qt_cpu_cross_entropy_forward): labels (batch) with label_smoothing in
 * [0, 1), or soft_targets (batch, num_classes) when labels is NULL. A label
 * outside [0, num_classes), a smoothing outside [0, 1) or no forward
 * before is QT_EINVAL. *loss may be NULL. */
int qt_vit_loss(qt_vit_t *vit, const int *labels, const float *soft_targets, double label_smoothing,
                double *loss, qt_err *err);

/* Sets every gradient to 0. */
void qt_vit_zero_grad(qt_vit_t *vit);
/* Backward pass of the last loss: ADDS d loss / d parameter to the
 * gradients (so several batches can accumulate). QT_EINVAL without a loss
 * since the last forward. */
int qt_vit_backward(qt_vit_t *vit, qt_err *err);

/* One AdamW step, a run's (qt_optim_tensor_step per tensor, the float
 * expressions of qt_cpu_adamw_step; through the op table's optim_steps,
 * on CUDA one launch per 40 tensors), weight decay only where
 * qt_vit_tensor.decay is set, as timm's param_groups_weight_decay. The
 * step counter starts at 1 and lives in the model. */
int qt_vit_adamw_step(qt_vit_t *vit, const qt_adamw_params *hp, qt_err *err);
/* Steps taken so far. */
long qt_vit_step(const qt_vit_t *vit);

/* Writes the parameters to path as a timm checkpoint (F32, timm's names,
 * metadata "format": "pt" as timm writes it), atomically; from any backend
 * (a CUDA model's values are copied to the host first). */
int qt_vit_save(const qt_vit_t *vit, const char *path, qt_err *err);

/* Moves the model to a backend: its parameters, gradients, AdamW moments
 * (the step counter stays) and a new activation arena, all in the
 * backend's memory; the next forward starts afresh. A model starts on the
 * CPU (qt_vit_init, qt_vit_load); qt_vit_to_backend(vit, QT_BACKEND_KIND_CPU)
 * brings it back. Images, labels and targets stay host arrays on every
 * backend (moved once per batch), and the loss and logits come back to the
 * host. On a CUDA model, qt_vit_tensor's data and grad point to device
 * memory. Errors: QT_ENODEV without a usable device (qt_backend_kind_check),
 * QT_ENOMEM when the device's memory is short (the model stays where and as
 * it was). Head dropout and the feature hook work on every backend: the
 * masks are drawn on the host, in the same order, and applied by the
 * backend; qt_vit_features is a host copy and qt_vit_feature_grad a host
 * array the backward moves up. */
int qt_vit_to_backend(qt_vit_t *vit, qt_backend_kind kind, qt_err *err);

/* ------------------------------------------------------------------------- */
/* Data: datasets, preprocessing, augmentation, batches (qt_data*.c)          */
/* ------------------------------------------------------------------------- */

/*
 * Datasets are held in memory, whole:
 *
 *   image datasets  uint8 pixels (n, height, width, channels), row-major
 *                   (HWC per image), channels 1 (gray) or 3 (RGB), one
 *                   common size for every image of the dataset;
 *   tabular         float32 features (n, n_features), row-major;
 *
 * each with int32 labels in [0, n_classes) and the class names. A loaded
 * dataset has at least 2 classes and no class without samples; a split
 * (validation, test) may have fewer samples, down to none.
 *
 * Sources (qt_data_load picks by what it finds at the path):
 *   - MNIST / Fashion-MNIST IDX files (qt_dataset_load_idx), gzip-compressed
 *     or not (zlib reads both);
 *   - an ImageFolder tree, as torchvision's ImageFolder: image files (.png,
 *     .jpg, .jpeg, any case) in root/<class>/ and its subfolders; class names
 *     are the subfolders sorted by byte order, labels their index (names
 *     starting with '.' and other extensions are ignored). PNG and JPEG
 *     are recognized by their first bytes, not their extension, and decoded
 *     by libpng and libjpeg; a file that fails to decode is skipped with one
 *     warning (qt_log) and counted in n_skipped.
 *     Images of different sizes are resized on load to one common size (see
 *     qt_image_folder_params): the engine trains on fixed-size batches, and
 *     keeping originals of arbitrary size would cost memory proportional to
 *     the photos, not to the model's input;
 *   - a CSV file for tabular data (qt_dataset_load_csv);
 *   - a root with train/ [val/ or valid/ or validation/] [test/] subfolders
 *     of one of the kinds above; missing splits are carved from train by a
 *     stratified split with a seed (qt_dataset_split).
 *
 * Preprocessing and augmentation work on uint8 pixels: resizing as Pillow
 * (what torchvision does to PIL images), the augmentation ops as
 * torchvision's definitions on uint8 tensors, both checked pixel for pixel
 * against the reference (tools/make-data-golden.py); then conversion to
 * float32 CHW with the model's mean and std;
 * Mixup, CutMix and label smoothing follow timm (mixup_mode 'batch') and give
 * soft targets. Every random choice draws from an explicit qt_rng_t; the batch
 * iterator derives each sample's stream from (seed, epoch, position), so an
 * epoch's order and augmentations are the same after a resume, and the same
 * with any number of threads. Deviations from torchvision are listed at each
 * function.
 *
 * Memory. Loaders return a qt_dataset the caller releases with
 * qt_dataset_free. The batch iterator borrows its dataset (which must outlive
 * it) and owns the batch arrays it hands out, valid until the next call.
 * Functions on single images write into caller-owned arrays.
 */

/* Limits on one decoded image: larger files are skipped as failed decodes. */
#define QT_IMAGE_MAX_SIDE 32768u
#define QT_IMAGE_MAX_PIXELS (1ull << 28)

typedef enum qt_interpolation {
  QT_INTERPOLATION_BILINEAR = 0, /* triangle filter, support 1 */
  QT_INTERPOLATION_BICUBIC = 1   /* cubic filter a = -0.5, support 2 (timm's ViT default) */
} qt_interpolation;

typedef enum qt_dataset_kind {
  QT_DATASET_KIND_IMAGE = 0,  /* uint8 images */
  QT_DATASET_KIND_TABULAR = 1 /* float features */
} qt_dataset_kind;

/* A dataset in memory (fields read-only for users; qt_dataset_free releases
 * every array and the struct). */
typedef struct qt_dataset {
  qt_dataset_kind kind;
  size_t n;                       /* number of samples */
  size_t height, width, channels; /* images: common size, channels 1 or 3; tabular: 0 */
  uint8_t *images;                /* (n, height, width, channels); NULL for tabular or n == 0 */
  size_t n_features;              /* tabular: features per sample; images: 0 */
  float *features;                /* (n, n_features); NULL for images or n == 0 */
  char **feature_names;           /* (n_features) CSV column names; NULL for images */
  int32_t *labels;                /* (n) in [0, n_classes) */
  size_t n_classes;               /* >= 2 */
  char **class_names;             /* (n_classes) */
  size_t n_skipped;               /* files left out because they failed to decode */
  char *source;                   /* the path it came from, for messages */
} qt_dataset;

/* Releases the dataset and its arrays. NULL is a no-op. */
void qt_dataset_free(qt_dataset *ds);

/* Number of samples of each class: counts (n_classes) is caller-owned. */
void qt_dataset_class_counts(const qt_dataset *ds, size_t *counts);

/* A new dataset with the samples indices[0..n) of ds, in that order, and the
 * same classes (an index may repeat). An index >= ds->n is QT_EINVAL. */
int qt_dataset_subset(const qt_dataset *ds, const size_t *indices, size_t n, qt_dataset **out,
                      qt_err *err);

/* --- IDX (MNIST, Fashion-MNIST) ------------------------------------------ */

/*
 * Loads an IDX image file (magic 0x00000803: unsigned bytes, 3 dimensions
 * n, height, width) and its IDX label file (magic 0x00000801: unsigned bytes,
 * 1 dimension n), each gzip-compressed or not. Checked, each a QT_EFORMAT
 * naming the path: a file shorter than its header, a magic number that is not
 * IDX, an element type other than unsigned byte, the wrong number of
 * dimensions, a zero or oversized dimension, a truncated body ("expected N
 * bytes, got M"), trailing bytes after the body, a corrupt gzip stream. Image
 * and label counts that differ, and a label >= n_class_names, are QT_ESCHEMA.
 * class_names (n_class_names entries, copied) name the classes; NULL gives
 * "0", "1", ... up to the largest label. Images have 1 channel.
 */
int qt_dataset_load_idx(const char *images_path, const char *labels_path,
                        const char *const *class_names, size_t n_class_names, qt_dataset **out,
                        qt_err *err);

/* The 10 class names of Fashion-MNIST, in label order ("T-shirt/top", ...). */
const char *const *qt_data_fashion_mnist_class_names(void);

/* --- ImageFolder ---------------------------------------------------------- */

typedef struct qt_image_folder_params {
  /* The common size. 0 and 0: the size that occurs most often among the
   * files (ties: the larger area, then the larger height). An image of
   * another size is resized, keeping its aspect ratio, to the smallest size
   * that covers (height, width), then center-cropped (qt_image_resize,
   * qt_image_center_crop): nothing is stretched, edges may be lost. */
  size_t height, width;
  /* 1 (gray), 3 (RGB) or 0: 1 when every file is grayscale, else 3. RGB to
   * gray uses PIL's ITU-R 601-2 luma (L = (19595 R + 38470 G + 7471 B +
   * 2^15) >> 16); gray to RGB repeats the value. */
  size_t channels;
  /* Interpolation of the resize on load. */
  qt_interpolation interpolation;
  /* A fixed class list (the validation or test folder of a split layout):
   * subfolders must be among these names and may be missing or empty. NULL:
   * the sorted subfolders, at least 2, none without images. */
  const char *const *class_names;
  size_t n_class_names;
  /* Decoding threads; 0: one per processor, at most 16. The result does not
   * depend on it. */
  size_t threads;
} qt_image_folder_params;

/* height 0, width 0, channels 0, bilinear, no fixed class list, threads 0. */
qt_image_folder_params qt_image_folder_default_params(void);

/*
 * Loads root/<class>/... (see above). Decoding: PNG of any color type and
 * bit depth (palette expanded, gray below 8 bits expanded, 16-bit scaled to 8
 * with rounding, alpha and tRNS transparency dropped as PIL's convert("RGB")
 * does, no gamma correction); JPEG gray, YCbCr, RGB and CMYK/YCCK (Adobe
 * inverted CMYK converted naively, as PIL), with libjpeg's defaults (islow
 * DCT, fancy upsampling). A truncated JPEG is a failed decode (as PIL without
 * LOAD_TRUNCATED_IMAGES); libjpeg's other warnings are logged at debug
 * level. Errors of libpng and libjpeg are caught (setjmp), never exit.
 * Failures to decode: one warning each, then a summary line; the dataset
 * records the count in n_skipped. A root that is missing or not a folder is
 * QT_ENOENT; fewer than 2 classes, or a class with no image left, QT_ESCHEMA
 * naming the folder.
 */
int qt_dataset_load_image_folder(const char *root, const qt_image_folder_params *params,
                                 qt_dataset **out, qt_err *err);

/* Decodes one PNG or JPEG file into *pixels (malloc'ed, (height, width,
 * channels), owned by the caller). channels: 1, 3, or 0 for the file's own
 * (1 for grayscale, 3 otherwise). A file that is neither format, or fails to
 * decode, is QT_EFORMAT with the path and the decoder's message. */
int qt_image_load(const char *path, size_t channels, uint8_t **pixels, size_t *height,
                  size_t *width, size_t *channels_out, qt_err *err);

/* --- CSV (tabular) -------------------------------------------------------- */

/*
 * Loads a CSV file with a header row (qt_csv_*): label_column names the
 * label column (NULL: "label"), every other column is a numeric feature.
 * Classes are the distinct label texts, sorted numerically when every label
 * is an integer, else by byte order. Errors name path:line and the column: a
 * missing label column (the message lists the columns), a row with another
 * number of fields, an empty or non-numeric feature (no missing values,
 * no NaN or infinity), no feature column, fewer than 2 classes (QT_ESCHEMA).
 * class_names (NULL for none) fixes the class list, as for image folders:
 * then a label outside it is QT_ESCHEMA.
 */
int qt_dataset_load_csv(const char *path, const char *label_column, const char *const *class_names,
                        size_t n_class_names, qt_dataset **out, qt_err *err);

/* Per-feature statistics of a tabular dataset for standardization (as
 * scikit-learn's StandardScaler): mean (n_features) and std (n_features)
 * the population standard deviation (ddof 0), accumulated in double; a
 * feature with std below 1e-12 times (1 + |mean|) (constant) gets std 1,
 * so it standardizes to 0 rather than dividing by nothing. An image
 * dataset or one without samples is QT_EINVAL. The batch iterator applies
 * them through qt_preprocess_params.feature_mean / feature_std
 * (qt_data_tabular.c). */
int qt_dataset_feature_stats(const qt_dataset *ds, float *mean, float *std, qt_err *err);

/* --- Splits and layouts --------------------------------------------------- */

/*
 * Stratified split of ds into train, validation and test. For each class
 * with m samples: n_val = floor(m * val_fraction + 0.5), n_test =
 * floor(m * test_fraction + 0.5), then, while train would have no sample and
 * test or validation has some, one is given back (test first); train gets
 * the rest. Which samples go where: the class's indices shuffled with a
 * stream seeded by seed (classes in label order), the first n_val to
 * validation, the next n_test to test. Each split keeps the samples in their
 * order in ds. Fractions must be >= 0 with a sum < 1 (QT_EINVAL otherwise).
 * val or test may be NULL when its fraction is 0.
 */
int qt_dataset_split(const qt_dataset *ds, double val_fraction, double test_fraction, uint64_t seed,
                     qt_dataset **train, qt_dataset **val, qt_dataset **test, qt_err *err);

typedef struct qt_data_params {
  qt_image_folder_params images; /* image folders (class_names is ignored) */
  const char *label_column;      /* CSV: the label column; NULL: "label" */
  double val_fraction;           /* carved from train when there is no val split */
  double test_fraction;          /* carved from train when there is no test split */
  uint64_t seed;                 /* of the stratified split */
} qt_data_params;

/* Image defaults, label column "label", val 0.1, test 0.1, seed 0. */
qt_data_params qt_data_default_params(void);

/* Which splits came from the files (bits of qt_data_splits.given). */
#define QT_DATA_SPLIT_TRAIN 1u
#define QT_DATA_SPLIT_VAL 2u
#define QT_DATA_SPLIT_TEST 4u

typedef struct qt_data_splits {
  qt_dataset *train, *val, *test; /* never NULL after a successful load; val, test may be empty */
  unsigned given;                 /* QT_DATA_SPLIT_* bits: splits found in the layout */
} qt_data_splits;

/*
 * Loads a dataset and its splits from path:
 *   a .csv file                          CSV, all three splits carved;
 *   a folder with train.csv              train.csv [val.csv] [test.csv];
 *   a folder with train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]
 *                                        IDX train, and t10k-* as test when
 *                                        present (class names of Fashion-MNIST
 *                                        when the path contains "fashion",
 *                                        any case; else "0".."9");
 *   a folder whose subfolders are train plus any of val, valid, validation,
 *   test                                 image folders; val and test take
 *                                        train's classes;
 *   any other folder                     one image folder, all splits carved.
 * Splits missing from the layout are carved from train with the fractions
 * and the seed (qt_dataset_split), validation and test with their own
 * fraction each (0 gives an empty split). A split of the layout with a class
 * unknown to train is QT_ESCHEMA. On failure *out is left empty.
 */
int qt_data_load(const char *path, const qt_data_params *params, qt_data_splits *out, qt_err *err);

/* Releases the three datasets and clears the struct. NULL is a no-op. */
void qt_data_splits_free(qt_data_splits *splits);

/* --- Preprocessing -------------------------------------------------------- */

/*
 * Resizes an image (src_height, src_width, channels), HWC uint8, into dst
 * (dst_height, dst_width, channels). The method is exactly PIL's
 * Image.resize (Pillow's Resample.c), which torchvision uses for PIL images:
 * separable, horizontal pass then vertical pass, each output sample the
 * filter-weighted mean of the input samples whose centers lie within
 * support * max(1, scale) of its center (scale = input / output size), so
 * downscaling is antialiased (the filter is stretched by the scale, a box of
 * the whole footprint); weights normalized to sum 1, converted to 22-bit
 * fixed point, the intermediate row rounded to uint8. Equal sizes copy.
 * Checked byte for byte against Pillow (tools/make-data-golden.py).
 * channels 1..4; sizes >= 1; src and dst must not overlap (QT_EINVAL).
 */
int qt_image_resize(const uint8_t *src, size_t src_height, size_t src_width, size_t channels,
                    uint8_t *dst, size_t dst_height, size_t dst_width,
                    qt_interpolation interpolation, qt_err *err);

/* The top-left corner of torchvision's center crop of (crop_height,
 * crop_width) from (height, width): round((height - crop_height) / 2) with
 * Python's round (half to even); when the crop is larger than the image the
 * corner is -((crop - size) // 2), the area outside filled with 0 by
 * qt_image_crop. */
void qt_image_center_crop_box(size_t height, size_t width, size_t crop_height, size_t crop_width,
                              long *top, long *left);

/* Copies the (crop_height, crop_width) window at (top, left) of src into
 * dst; pixels outside src are 0. */
void qt_image_crop(const uint8_t *src, size_t height, size_t width, size_t channels, long top,
                   long left, uint8_t *dst, size_t crop_height, size_t crop_width);

/* qt_image_center_crop_box then qt_image_crop. */
void qt_image_center_crop(const uint8_t *src, size_t height, size_t width, size_t channels,
                          uint8_t *dst, size_t crop_height, size_t crop_width);

/* The size torchvision's Resize(size) (an int: the shorter side) gives an
 * image of (height, width): shorter side = size, longer side =
 * floor(size * longer / shorter). */
void qt_image_resize_shorter_size(size_t height, size_t width, size_t size, size_t *out_height,
                                  size_t *out_width);

/* Converts an image (height, width, channels) to float32 CHW (out_channels,
 * height, width): value / 255, minus mean[c], divided by std[c], in float32
 * as ToTensor and Normalize do. Gray to 3 channels repeats the plane (then
 * each channel takes its own mean and std); RGB to 1 channel takes PIL's
 * luma first. out_channels 1 or 3; std > 0. */
int qt_image_to_float(const uint8_t *src, size_t height, size_t width, size_t channels,
                      size_t out_channels, const double *mean, const double *std, float *dst,
                      qt_err *err);

/* What a model expects of its input (from the hub entry). */
typedef struct qt_preprocess_params {
  size_t image_size;      /* input height = width */
  size_t channels;        /* 3 (RGB) or 1 */
  double mean[3], std[3]; /* per channel, on [0, 1] pixels */
  double crop_pct;        /* eval: resize shorter side to floor(image_size / crop_pct) */
  qt_interpolation interpolation;
  /* Tabular data: per-feature standardization (x - mean) / std, both
   * (n_features), borrowed (they must outlive the batch iterator); NULL
   * (the default): features as they are. Compute them on the training
   * split with qt_dataset_feature_stats and give the same arrays to every
   * split's iterator. Image data ignores them. */
  const float *feature_mean, *feature_std;
} qt_preprocess_params;

/* 224, 3 channels, ImageNet mean (0.485, 0.456, 0.406) and std (0.229,
 * 0.224, 0.225), crop_pct 0.875, bilinear, no feature standardization. */
qt_preprocess_params qt_preprocess_default_params(void);

/* timm's evaluation transform: resize the shorter side to
 * floor(image_size / crop_pct) (qt_image_resize_shorter_size), center crop
 * image_size, convert (qt_image_to_float). dst: (p->channels, image_size,
 * image_size). crop_pct in (0, 1]. */
int qt_image_eval_transform(const qt_preprocess_params *p, const uint8_t *src, size_t height,
                            size_t width, size_t channels, float *dst, qt_err *err);

/* --- Augmentation --------------------------------------------------------- */

typedef enum qt_auto_augment {
  QT_AUTO_AUGMENT_NONE = 0,
  QT_AUTO_AUGMENT_TRIVIAL = 1, /* torchvision's TrivialAugmentWide */
  QT_AUTO_AUGMENT_RAND = 2     /* torchvision's RandAugment */
} qt_auto_augment;

/* Parses "none" / "None", "trivial_augment", "random_augment" (the values of
 * the search spaces). "auto_augment" (AutoAugment policies) is QT_ENOTIMPL,
 * anything else QT_EINVAL listing the accepted names. */
int qt_auto_augment_parse(const char *text, qt_auto_augment *out, qt_err *err);

/* The operations of TrivialAugment and RandAugment, in the order of
 * torchvision's augmentation space (the draw picks an index in this order). */
typedef enum qt_augment_op {
  QT_AUGMENT_OP_IDENTITY = 0,
  QT_AUGMENT_OP_SHEAR_X,
  QT_AUGMENT_OP_SHEAR_Y,
  QT_AUGMENT_OP_TRANSLATE_X,
  QT_AUGMENT_OP_TRANSLATE_Y,
  QT_AUGMENT_OP_ROTATE,
  QT_AUGMENT_OP_BRIGHTNESS,
  QT_AUGMENT_OP_COLOR,
  QT_AUGMENT_OP_CONTRAST,
  QT_AUGMENT_OP_SHARPNESS,
  QT_AUGMENT_OP_POSTERIZE,
  QT_AUGMENT_OP_SOLARIZE,
  QT_AUGMENT_OP_AUTOCONTRAST,
  QT_AUGMENT_OP_EQUALIZE,
  QT_AUGMENT_OP_COUNT
} qt_augment_op;

/* "Identity", "ShearX", ... as torchvision names them; "unknown" outside. */
const char *qt_augment_op_name(qt_augment_op op);

/*
 * Applies one operation with a signed magnitude to src (height, width,
 * channels) and writes dst (same shape, not overlapping src), following
 * torchvision.transforms.functional on uint8 tensors:
 *   ShearX/Y     affine shear by atan(magnitude) about the top-left corner
 *   TranslateX/Y shift by int(magnitude) pixels (positive: right / down)
 *   Rotate       magnitude degrees counter-clockwise about the center
 *                (geometric ops: nearest neighbour at pixel centers, as
 *                affine_grid + grid_sample(align_corners=False) in float32,
 *                fill 0)
 *   Brightness   blend with black, factor 1 + magnitude
 *   Color        blend with the gray image (luma 0.2989, 0.587, 0.114,
 *                truncated), factor 1 + magnitude; gray images unchanged
 *   Contrast     blend with the mean of the gray image, factor 1 + magnitude
 *   Sharpness    blend with the image smoothed by [[1,1,1],[1,5,1],[1,1,1]]/13
 *                (rounded; border pixels kept), factor 1 + magnitude;
 *                images of side <= 2 unchanged
 *   Posterize    keep the top int(magnitude) bits (0..8)
 *   Solarize     invert the values >= magnitude
 *   AutoContrast stretch each channel's [min, max] to [0, 255]
 *   Equalize     per-channel histogram equalization (PIL's algorithm)
 * Blends compute ratio * a + (1 - ratio) * b in float32, clamp to [0, 255]
 * and truncate, as torchvision's _blend. The results equal torchvision's
 * _apply_op on uint8 tensors pixel for pixel on the golden cases of
 * tools/make-data-golden.py. A bad op or magnitude (posterize outside 0..8)
 * is QT_EINVAL.
 */
int qt_augment_apply_op(const uint8_t *src, uint8_t *dst, size_t height, size_t width,
                        size_t channels, qt_augment_op op, double magnitude, qt_err *err);

/* The unsigned magnitude of bin `bin` of num_bins for op under policy
 * (TRIVIAL or RAND), from torchvision's augmentation spaces (linspace in
 * float32 as torch.linspace; RandAugment's translation scales with the image:
 * 150/331 of the width or height). Ops without magnitude give 0. */
double qt_augment_op_magnitude(qt_auto_augment policy, qt_augment_op op, int bin, int num_bins,
                               size_t height, size_t width);

/* 1 when torchvision draws a random sign for op's magnitude. */
int qt_augment_op_signed(qt_augment_op op);

typedef struct qt_augment_params {
  int random_resized_crop; /* 1: RandomResizedCrop; 0: the eval transform's resize and crop */
  double scale[2];         /* RRC area fraction range */
  double ratio[2];         /* RRC aspect ratio range (width / height) */
  double hflip_prob;       /* probability of a horizontal flip */
  qt_auto_augment auto_augment;
  int rand_num_ops;       /* RandAugment: operations per image */
  int rand_magnitude;     /* RandAugment: magnitude bin, 0..num_magnitude_bins-1 */
  int num_magnitude_bins; /* both policies */
  double mixup_alpha;     /* Beta(alpha, alpha) for Mixup; 0 turns Mixup off */
  double cutmix_alpha;    /* Beta(alpha, alpha) for CutMix; 0 turns CutMix off */
  double mix_prob;        /* probability that a batch is mixed at all */
  double switch_prob;     /* with both on: probability of CutMix instead of Mixup */
  double label_smoothing; /* in [0, 1) */
} qt_augment_params;

/* RRC on with scale (0.08, 1) and ratio (3/4, 4/3), flip 0.5, no auto
 * augmentation (RandAugment fields at torchvision's 2, 9, 31 bins), Mixup
 * and CutMix off (mix_prob 1, switch_prob 0.5 as timm), no smoothing. */
qt_augment_params qt_augment_default_params(void);

/* torchvision's RandomResizedCrop.get_params: 10 tries of an area fraction
 * uniform in scale and a log-uniform aspect ratio, w = round(sqrt(area *
 * ratio)), h = round(sqrt(area / ratio)) (half to even), accepted when the
 * crop fits, its corner uniform; then the fallback, a center crop of the
 * whole image clamped to the ratio range. Computed in double, torchvision
 * draws in float32. */
void qt_random_resized_crop_box(size_t height, size_t width, const double scale[2],
                                const double ratio[2], qt_rng_t *rng, size_t *top, size_t *left,
                                size_t *crop_height, size_t *crop_width);

/* The crop (qt_random_resized_crop_box) resized to (size, size): dst is
 * (size, size, channels). Crop then resize, as torchvision's resized_crop. */
int qt_image_random_resized_crop(const uint8_t *src, size_t height, size_t width, size_t channels,
                                 const double scale[2], const double ratio[2], size_t size,
                                 qt_interpolation interpolation, qt_rng_t *rng, uint8_t *dst,
                                 qt_err *err);

/* Mirrors an image left-right, in place. */
void qt_image_hflip(uint8_t *image, size_t height, size_t width, size_t channels);

/* TrivialAugmentWide: one op uniform over the 14, a magnitude bin uniform
 * over num_bins, a sign uniform for signed ops; src to dst (no overlap). */
int qt_image_trivial_augment(const uint8_t *src, uint8_t *dst, size_t height, size_t width,
                             size_t channels, int num_bins, qt_rng_t *rng, qt_err *err);

/* RandAugment: num_ops ops, each uniform over the 14 with the fixed
 * magnitude bin and a uniform sign for signed ops; src to dst (no
 * overlap). */
int qt_image_rand_augment(const uint8_t *src, uint8_t *dst, size_t height, size_t width,
                          size_t channels, int num_ops, int magnitude, int num_bins, qt_rng_t *rng,
                          qt_err *err);

/* One-hot targets with label smoothing, as timm: off = smoothing / K,
 * on = 1 - smoothing + off. targets (n, n_classes). */
void qt_targets_smooth(const int32_t *labels, size_t n, size_t n_classes, double smoothing,
                       float *targets);

/*
 * timm's Mixup / CutMix in mode 'batch', in place on inputs (n, channels,
 * height, width), writing targets (n, n_classes). With probability
 * mix_prob the batch is mixed: when both alphas are > 0, CutMix with
 * probability switch_prob, else Mixup; lambda ~ Beta(alpha, alpha). Mixup:
 * x_i = lambda x_i + (1 - lambda) x_{n-1-i} (the batch mixed with its
 * reverse). CutMix: a box of cut ratio sqrt(1 - lambda) per side (sizes
 * truncated), centered at a uniform pixel, clipped to the image, is copied
 * from x_{n-1-i}; lambda becomes 1 - box area / image area. Targets:
 * lambda y_i + (1 - lambda) y_{n-1-i} with smoothed one-hot y. An unmixed
 * batch has lambda 1 (targets just smoothed). timm requires an even batch;
 * here an odd batch mixes its middle sample with itself. *lambda and
 * *cutmix (may be NULL) report what was done.
 */
int qt_mix_batch(float *inputs, const int32_t *labels, size_t n, size_t channels, size_t height,
                 size_t width, size_t n_classes, const qt_augment_params *params, qt_rng_t *rng,
                 float *targets, double *lambda, int *cutmix, qt_err *err);

/* --- Batches -------------------------------------------------------------- */

typedef struct qt_batch_params {
  size_t batch_size; /* samples per batch, >= 1 */
  int shuffle;       /* 1: a new permutation per epoch; 0: dataset order */
  int drop_last;     /* 1: leave out a last partial batch */
  int augment;       /* 1: training transform (qt_augment_params); 0: eval transform */
  uint64_t seed;     /* with the epoch, fixes order and augmentation */
  int threads;       /* worker threads for preprocessing; results do not depend on it */
} qt_batch_params;

/* batch 32, shuffle, keep the last batch, augment, seed 0, 1 thread. */
qt_batch_params qt_batch_default_params(void);

/* One batch. Arrays are owned by the iterator, valid until its next call. */
typedef struct qt_batch {
  size_t size;                    /* samples in this batch (the last may be short) */
  size_t channels, height, width; /* images: model input; tabular: 1, 1, n_features */
  size_t n_classes;
  float *inputs;         /* (size, channels, height, width) */
  float *targets;        /* (size, n_classes) soft targets, rows sum to 1 */
  const int32_t *labels; /* (size) hard labels (for accuracy) */
  const size_t *indices; /* (size) dataset indices */
  double lambda;         /* Mixup/CutMix lambda, 1 when not mixed */
  int cutmix;            /* 1 when CutMix was applied */
} qt_batch;

typedef struct qt_batch_iter qt_batch_iter_t;

/*
 * An iterator over ds in batches. Images: each sample goes through the
 * training transform when params->augment (RandomResizedCrop or the eval
 * resize and crop, flip, TrivialAugment or RandAugment, conversion) or the
 * eval transform otherwise, to (pre->channels, pre->image_size,
 * pre->image_size), then Mixup/CutMix (augment only) and smoothed targets.
 * Tabular: features as they are, or standardized with pre->feature_mean and
 * pre->feature_std when set (pre may be NULL: as they are), smoothed
 * targets; the image augmentations do not apply. aug may be NULL (defaults; only read
 * when augment). Randomness: the epoch's order is a permutation drawn from
 * a stream seeded by (seed, epoch); the sample at position p of the epoch
 * draws from a stream seeded by (seed, epoch, p) and the batch's mixing from
 * one seeded by (seed, epoch, batch); so batches are reproducible from
 * (seed, epoch, batch index) alone.
 */
int qt_batch_iter_init(const qt_dataset *ds, const qt_preprocess_params *pre,
                       const qt_augment_params *aug, const qt_batch_params *params,
                       qt_batch_iter_t **out, qt_err *err);
void qt_batch_iter_free(qt_batch_iter_t *it);

/* Batches per epoch. */
size_t qt_batch_iter_count(const qt_batch_iter_t *it);

/* Prefetching: with on = 1, while the caller uses a batch, a background
 * thread builds the next batch of the epoch (into a second set of arrays,
 * allocated here: QT_ENOMEM), so that preparing batches overlaps the
 * caller's work on a device. Batches are the same with or without it; a
 * failure building a batch is returned by the call that asks for it. */
int qt_batch_iter_set_prefetch(qt_batch_iter_t *it, int on, qt_err *err);

/* The arrays that batches' inputs are written to (batch->inputs is one of
 * them, reused from batch to batch): slot 0, and slot 1 once prefetching
 * has been turned on (else NULL), with their size in *bytes. A device
 * backend page-locks them once, for faster uploads. */
float *qt_batch_iter_inputs_buffer(qt_batch_iter_t *it, int slot, size_t *bytes);

/* Starts epoch `epoch` (counted from 0 or 1, as the caller likes) at batch
 * first_batch (0 for a whole epoch; a resumed epoch continues where it
 * stopped). first_batch > count is QT_EINVAL. */
int qt_batch_iter_start(qt_batch_iter_t *it, uint64_t epoch, size_t first_batch, qt_err *err);

/* Fills *batch with the next batch of the epoch: returns 1, or 0 at the end
 * of the epoch, or a negative code. Calling before qt_batch_iter_start is
 * QT_EINVAL. */
int qt_batch_iter_next(qt_batch_iter_t *it, qt_batch *batch, qt_err *err);

/* The current epoch's order: (ds->n) dataset indices; NULL before start. */
const size_t *qt_batch_iter_order(const qt_batch_iter_t *it);
/* end of data section */

/* ------------------------------------------------------------------------- */
/* CPU convolutional layer ops (issue 7)                                     */
/* ------------------------------------------------------------------------- */

/*
 * The layers of the convolutional families (MobileNetV2, EfficientNet,
 * ResNet) with the conventions of the CPU layer ops above (caller-owned
 * arrays, forwards write, backwards accumulate, NULL gradients skipped).
 * Images are NCHW: (batch, channels, height, width), row-major. Weights are
 * in PyTorch's layout: a convolution weight is (out_c, in_c / groups,
 * kernel_h, kernel_w), so a depthwise weight is (c, 1, kh, kw).
 */

/* The geometry of one 2-D convolution. Padding may be asymmetric: pad_top
 * and pad_left are given, and the bottom / right padding is whatever makes
 * out_h / out_w come out (TensorFlow's 'same' pads the extra pixel at the
 * bottom / right). Fill it with qt_conv2d_shape_init or
 * qt_conv2d_shape_init_same. */
typedef struct qt_conv2d_shape {
  size_t batch;
  size_t in_c, in_h, in_w;
  size_t out_c, out_h, out_w;
  size_t kernel_h, kernel_w;
  size_t stride_h, stride_w;
  size_t pad_top, pad_left;
  size_t groups; /* divides in_c and out_c; in_c = groups is depthwise */
} qt_conv2d_shape;

/* PyTorch's symmetric padding: out = (in + 2 pad - kernel) / stride + 1.
 * QT_EINVAL (with the offending value in err) when groups does not divide
 * both channel counts, a size is zero, or the kernel does not fit. */
int qt_conv2d_shape_init(qt_conv2d_shape *shape, size_t batch, size_t in_c, size_t in_h,
                         size_t in_w, size_t out_c, size_t kernel, size_t stride, size_t pad,
                         size_t groups, qt_err *err);
/* TensorFlow's padding='same': out = ceil(in / stride), total padding
 * max((out - 1) stride + kernel - in, 0), of which floor(total / 2) goes on
 * top / left and the rest at the bottom / right. */
int qt_conv2d_shape_init_same(qt_conv2d_shape *shape, size_t batch, size_t in_c, size_t in_h,
                              size_t in_w, size_t out_c, size_t kernel, size_t stride,
                              size_t groups, qt_err *err);

/* Depthwise kernels (one input channel per group) may be at most 8x8
 * (asserted; qt_cnn_load checks it). */
/* Floats of scratch space the forward and the backward need: the im2col
 * matrix of one group of one image, or, where output planes are narrow
 * (fewer than 512 positions), of several images side by side with room for
 * their product's output; 0 for depthwise convolutions and for pointwise
 * ones (1x1, stride 1, no padding) of wide planes. It grows with
 * shape->batch up to a bound: a scratch sized for a batch serves smaller
 * ones of the same shape. */
size_t qt_cpu_conv2d_scratch_size(const qt_conv2d_shape *shape);
/* out (batch, out_c, out_h, out_w) = conv(inp (batch, in_c, in_h, in_w),
 * weight) + bias (out_c, may be NULL). Dense and grouped convolutions go
 * through im2col and matrix products; one input channel per group (depthwise,
 * any multiplier) runs as direct loops. scratch holds
 * qt_cpu_conv2d_scratch_size floats (may be NULL when that is 0). */
void qt_cpu_conv2d_forward(float *out, float *scratch, const float *inp, const float *weight,
                           const float *bias, const qt_conv2d_shape *shape);
/* dinp += the gradient w.r.t. the input, dweight += w.r.t. the weight,
 * dbias += w.r.t. the bias (each may be NULL), from dout and the forward's
 * inp and weight. */
void qt_cpu_conv2d_backward(float *dinp, float *dweight, float *dbias, float *scratch,
                            const float *dout, const float *inp, const float *weight,
                            const qt_conv2d_shape *shape);

/* How a batch norm layer normalizes and what it learns. */
typedef enum qt_batchnorm_mode {
  /* Batch statistics (biased variance) normalize; the running statistics are
   * updated as PyTorch does: running = (1 - momentum) running + momentum
   * batch, with the unbiased variance. The backward goes through the batch
   * statistics. */
  QT_BATCHNORM_MODE_TRAIN = 0,
  /* The running statistics normalize and are left alone (model.eval()); the
   * backward treats them as constants, weight and bias still learn. */
  QT_BATCHNORM_MODE_EVAL = 1,
  /* As EVAL, and the affine parameters are frozen too: the backward leaves
   * dweight and dbias untouched (a frozen block of pct_to_freeze). */
  QT_BATCHNORM_MODE_FROZEN = 2
} qt_batchnorm_mode;

/* Batch norm over the channels of NCHW images (torch.nn.BatchNorm2d):
 * out = (inp - mean) * rstd * weight + bias per channel. mean and rstd (c)
 * receive the statistics used (batch or running), for the backward;
 * running_mean and running_var (c) are read, and in TRAIN mode updated with
 * `momentum` (PyTorch's default 0.1). eps is 1e-5 in timm's models and 1e-3
 * in Keras's (the importer records it in the checkpoint's metadata). TRAIN
 * with batch * hw = 1 leaves running_var as it was (PyTorch raises). */
void qt_cpu_batchnorm_forward(float *out, float *mean, float *rstd, float *running_mean,
                              float *running_var, const float *inp, const float *weight,
                              const float *bias, size_t batch, size_t c, size_t hw, float eps,
                              float momentum, qt_batchnorm_mode mode);
void qt_cpu_batchnorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, const float *mean,
                               const float *rstd, size_t batch, size_t c, size_t hw,
                               qt_batchnorm_mode mode);

/* Elementwise activations over n values; out may equal inp. The backwards
 * take the forward's input: dinp += dout * f'(inp). ReLU6 clips to [0, 6]
 * with zero gradient at and beyond both ends (as PyTorch's hardtanh); SiLU
 * is x sigmoid(x) (torch.nn.SiLU, EfficientNet's swish). */
void qt_cpu_relu_forward(float *out, const float *inp, size_t n);
void qt_cpu_relu_backward(float *dinp, const float *dout, const float *inp, size_t n);
void qt_cpu_relu6_forward(float *out, const float *inp, size_t n);
void qt_cpu_relu6_backward(float *dinp, const float *dout, const float *inp, size_t n);
void qt_cpu_silu_forward(float *out, const float *inp, size_t n);
void qt_cpu_silu_backward(float *dinp, const float *dout, const float *inp, size_t n);

/* Global average pooling: out (batch, c) = mean of inp (batch, c, hw) over
 * hw. The backward spreads dout / hw over the hw positions. */
void qt_cpu_global_avgpool_forward(float *out, const float *inp, size_t batch, size_t c, size_t hw);
void qt_cpu_global_avgpool_backward(float *dinp, const float *dout, size_t batch, size_t c,
                                    size_t hw);

/* Max pooling (torch.nn.MaxPool2d, ResNet's 3x3 stride-2 pad-1 stem pool)
 * over the geometry of a depthwise convolution (qt_conv2d_shape_init with
 * out_c = groups = in_c); padding never wins. argmax (batch, c, out_h,
 * out_w) receives each winner's index inside its input plane (first in scan
 * order on ties; a NaN wins, the last in scan order of several, as
 * PyTorch); the backward routes dout there. */
void qt_cpu_maxpool2d_forward(float *out, int32_t *argmax, const float *inp,
                              const qt_conv2d_shape *shape);
void qt_cpu_maxpool2d_backward(float *dinp, const float *dout, const int32_t *argmax,
                               const qt_conv2d_shape *shape);

/* The activation between the two 1x1 convolutions of squeeze-and-excitation
 * (timm: ReLU by default, SiLU in EfficientNet). */
typedef enum qt_se_act { QT_SE_ACT_RELU = 0, QT_SE_ACT_SILU = 1 } qt_se_act;

/* Squeeze-and-excitation as timm's efficientnet SqueezeExcite:
 *   s = mean_hw(x) (batch, c); h = act(s w_reduce^T + b_reduce) (batch, rd);
 *   g = sigmoid(h w_expand^T + b_expand) (batch, c); out = x * g.
 * w_reduce (rd, c) and w_expand (c, rd) are the 1x1 convolution weights
 * (rd, c, 1, 1) and (c, rd, 1, 1) read as matrices. The forward saves, for
 * the backward: pooled (batch, c), hidden_pre (batch, rd) before the
 * activation, hidden (batch, rd) after it, gate (batch, c). scratch for the
 * backward holds 2 * batch * c + 2 * batch * rd floats. out may not equal
 * inp. */
void qt_cpu_se_forward(float *out, float *pooled, float *hidden_pre, float *hidden, float *gate,
                       const float *inp, const float *w_reduce, const float *b_reduce,
                       const float *w_expand, const float *b_expand, size_t batch, size_t c,
                       size_t hw, size_t rd, qt_se_act act);
void qt_cpu_se_backward(float *dinp, float *dw_reduce, float *db_reduce, float *dw_expand,
                        float *db_expand, float *scratch, const float *dout, const float *inp,
                        const float *pooled, const float *hidden_pre, const float *hidden,
                        const float *gate, const float *w_reduce, const float *w_expand,
                        size_t batch, size_t c, size_t hw, size_t rd, qt_se_act act);

/* StochNorm's batch norm (see qt_cnn_set_stoch_norm): per channel ch,
 * select[ch] = 1 normalizes with the batch statistics and 0 with the
 * running ones; the running statistics are updated as in TRAIN mode
 * (qt_cpu_batchnorm_forward) for every channel. mean and rstd receive the
 * statistics used per channel. The backward goes through the batch
 * statistics of the select = 1 channels and treats the running ones of the
 * others as constants; weight and bias learn in both. */
void qt_cpu_stochnorm_forward(float *out, float *mean, float *rstd, float *running_mean,
                              float *running_var, const float *inp, const float *weight,
                              const float *bias, const unsigned char *select, size_t batch,
                              size_t c, size_t hw, float eps, float momentum);
void qt_cpu_stochnorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, const float *mean,
                               const float *rstd, const unsigned char *select, size_t batch,
                               size_t c, size_t hw);

/* ------------------------------------------------------------------------- */
/* CUDA convolutional layer ops (finetune/cuda/, issue 8)                    */
/* ------------------------------------------------------------------------- */

/*
 * The convolutional layer ops above on a CUDA device, with the conventions
 * of "CUDA layer ops" (device arrays, a QT_E* code and qt_err last, the
 * thread's stream, QT_EINVAL for a NULL array the op needs, a bad shape or
 * mode, or sizes beyond an int, where the CPU asserts). Differences from
 * the CPU twins:
 *   - qt_cuda_conv2d_*'s scratch holds qt_cuda_conv2d_scratch_size(shape)
 *     floats: the column matrices (in_c * kernel_h * kernel_w * out_h *
 *     out_w floats, every group's) of as many of the batch's images as fit
 *     2^25 floats, at least one, and of one image for grouped
 *     convolutions (the CPU's holds one group's of one image); 0 for
 *     pointwise and depthwise convolutions. It grows with shape->batch, so
 *     size it for the largest batch. Depthwise kernels have no 8x8 limit
 *     on the device;
 *   - qt_cuda_batchnorm_forward and qt_cuda_stochnorm_forward with batch
 *     or hw 0 are QT_EINVAL (the CPU would write NaN statistics);
 *   - a max-pooling window that misses the image (the CPU asserts) gives
 *     -infinity and argmax 0.
 * qt_cuda_se_backward's scratch holds the CPU's 2 batch c + 2 batch rd
 * floats. qt_cuda_stochnorm_*'s select (c) is device memory too.
 * tests/test_gpu_cnn_ops.c checks each op against its CPU twin
 * (docs/cuda.md).
 */
size_t qt_cuda_conv2d_scratch_size(const qt_conv2d_shape *shape);
int qt_cuda_conv2d_forward(float *out, float *scratch, const float *inp, const float *weight,
                           const float *bias, const qt_conv2d_shape *shape, qt_err *err);
int qt_cuda_conv2d_backward(float *dinp, float *dweight, float *dbias, float *scratch,
                            const float *dout, const float *inp, const float *weight,
                            const qt_conv2d_shape *shape, qt_err *err);

int qt_cuda_batchnorm_forward(float *out, float *mean, float *rstd, float *running_mean,
                              float *running_var, const float *inp, const float *weight,
                              const float *bias, size_t batch, size_t c, size_t hw, float eps,
                              float momentum, qt_batchnorm_mode mode, qt_err *err);
int qt_cuda_batchnorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, const float *mean,
                               const float *rstd, size_t batch, size_t c, size_t hw,
                               qt_batchnorm_mode mode, qt_err *err);

int qt_cuda_stochnorm_forward(float *out, float *mean, float *rstd, float *running_mean,
                              float *running_var, const float *inp, const float *weight,
                              const float *bias, const unsigned char *select, size_t batch,
                              size_t c, size_t hw, float eps, float momentum, qt_err *err);
int qt_cuda_stochnorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, const float *mean,
                               const float *rstd, const unsigned char *select, size_t batch,
                               size_t c, size_t hw, qt_err *err);

int qt_cuda_relu_forward(float *out, const float *inp, size_t n, qt_err *err);
int qt_cuda_relu_backward(float *dinp, const float *dout, const float *inp, size_t n, qt_err *err);
int qt_cuda_relu6_forward(float *out, const float *inp, size_t n, qt_err *err);
int qt_cuda_relu6_backward(float *dinp, const float *dout, const float *inp, size_t n, qt_err *err);
int qt_cuda_silu_forward(float *out, const float *inp, size_t n, qt_err *err);
int qt_cuda_silu_backward(float *dinp, const float *dout, const float *inp, size_t n, qt_err *err);

int qt_cuda_global_avgpool_forward(float *out, const float *inp, size_t batch, size_t c, size_t hw,
                                   qt_err *err);
int qt_cuda_global_avgpool_backward(float *dinp, const float *dout, size_t batch, size_t c,
                                    size_t hw, qt_err *err);

/* argmax is device memory too. */
int qt_cuda_maxpool2d_forward(float *out, int32_t *argmax, const float *inp,
                              const qt_conv2d_shape *shape, qt_err *err);
int qt_cuda_maxpool2d_backward(float *dinp, const float *dout, const int32_t *argmax,
                               const qt_conv2d_shape *shape, qt_err *err);

int qt_cuda_se_forward(float *out, float *pooled, float *hidden_pre, float *hidden, float *gate,
                       const float *inp, const float *w_reduce, const float *b_reduce,
                       const float *w_expand, const float *b_expand, size_t batch, size_t c,
                       size_t hw, size_t rd, qt_se_act act, qt_err *err);
int qt_cuda_se_backward(float *dinp, float *dw_reduce, float *db_reduce, float *dw_expand,
                        float *db_expand, float *scratch, const float *dout, const float *inp,
                        const float *pooled, const float *hidden_pre, const float *hidden,
                        const float *gate, const float *w_reduce, const float *w_expand,
                        size_t batch, size_t c, size_t hw, size_t rd, qt_se_act act, qt_err *err);
/* ------------------------------------------------------------------------- */
/* Convolutional models: MobileNetV2, EfficientNet, ResNet (qt_cnn.c)        */
/* ------------------------------------------------------------------------- */

/*
 * A convolutional network built from a timm-named checkpoint, run by the
 * layer ops of its backend (the CPU ops above, or the CUDA ones after
 * qt_cnn_to_backend): timm's mobilenetv2_* layout (conv_stem,
 * bn1, blocks.i.j with a depthwise-separable first block {conv_dw, bn1,
 * conv_pw, bn2} and inverted residuals {conv_pw, bn1, conv_dw, bn2,
 * conv_pwl, bn3}, conv_head, bn2, classifier), ReLU6 activations, residual
 * connections where stride is 1 and the channels do not change. Kernel
 * sizes and channels come from the tensors; stage strides are timm's
 * (1, 2, 2, 2, 1, 2, 1 after a stride-2 stem) unless the checkpoint's
 * metadata "stage_strides" lists others. An optional MLP before the
 * classifier, tensors head_mlp.k.{weight,bias} each followed by ReLU, holds
 * heads imported from Keras (tools/import-tfjs).
 *
 * Also timm's ResNet (resnet18/34 BasicBlock, resnet50 Bottleneck: conv1,
 * bn1, ReLU, 3x3 stride-2 max pool, layerL.j.{conv1,bn1,conv2,bn2[,conv3,
 * bn3]} with downsample.{0,1} where present, fc), and timm's EfficientNet
 * (family efficientnet: the MobileNetV2 layout with SiLU instead of ReLU6
 * and blocks.i.j.se.{conv_reduce,conv_expand} squeeze-and-excitation after
 * the depthwise convolution, SiLU inside; tf_efficientnet_* checkpoints
 * need "padding": "same" and "bn_eps": "0.001" in their metadata).
 *
 * Metadata honored: "bn_eps" (batch norm epsilon, default timm's 1e-5;
 * Keras models use 1e-3), "padding" ("same" for TensorFlow's asymmetric
 * padding, anything else PyTorch's symmetric kernel / 2).
 *
 * Memory: the model owns one parameter array (values, gradients) and an
 * activation arena sized for max_batch images, in its backend's memory;
 * pointers from accessors stay valid until qt_cnn_free or
 * qt_cnn_to_backend. Images are (batch, 3, size, size) floats, already
 * normalized, host memory on every backend.
 */
typedef struct qt_cnn qt_cnn_t;

typedef struct qt_cnn_load_params {
  qt_model_family family; /* mobilenetv2, efficientnet or resnet */
  long image_size;        /* pixels per side, >= 32 */
  long num_classes;       /* 0: keep the checkpoint's head; another count
                             draws a new classifier as timm's
                             _init_weight_goog: uniform(+-1/sqrt(classes)),
                             bias 0 */
  size_t max_batch;       /* images per forward, >= 1 */
  float bn_momentum;      /* running-statistics momentum (PyTorch 0.1) */
  qt_rng_t *rng;          /* for a new head; may be NULL when none is drawn */
} qt_cnn_load_params;

/* mobilenetv2, 224 px, keep the head, max_batch 32, momentum 0.1. */
qt_cnn_load_params qt_cnn_default_load_params(void);

/* Loads a checkpoint (F32/F16/BF16). A missing tensor or a shape that does
 * not fit the layout is QT_EFORMAT naming the tensor. */
int qt_cnn_load(const char *checkpoint_path, const qt_cnn_load_params *params, qt_cnn_t **out,
                qt_err *err);
/* NULL is a no-op. */
void qt_cnn_free(qt_cnn_t *cnn);

/* One named tensor: parameters and the batch norm running statistics
 * (trainable 0: their grad stays 0). data and grad are the backend's
 * memory: device pointers on a CUDA model (read and write them with the
 * backend's copies; host code such as qt_optim_tensor_step and
 * qt_cnn_reinit needs a CPU model). */
typedef struct qt_cnn_tensor {
  const char *name;
  size_t ndim;
  const size_t *shape;
  size_t numel;
  float *data;
  float *grad;
  int trainable;
  int decay; /* timm's rule: weights of 2 or more dimensions */
  long unit; /* freezing unit (see qt_cnn_units) */
  int head;  /* 1: head_mlp.* and the classifier (always trainable) */
} qt_cnn_tensor;

size_t qt_cnn_tensor_count(const qt_cnn_t *cnn);
void qt_cnn_tensor_at(const qt_cnn_t *cnn, size_t index, qt_cnn_tensor *out);
/* QT_ENOENT (err untouched) when there is no such tensor. */
int qt_cnn_find_tensor(const qt_cnn_t *cnn, const char *name, qt_cnn_tensor *out);
long qt_cnn_num_classes(const qt_cnn_t *cnn);
/* The batch norm epsilon in use. */
float qt_cnn_bn_eps(const qt_cnn_t *cnn);

/* Forward pass to the logits (batch, num_classes). mode TRAIN uses and
 * updates batch statistics; EVAL and FROZEN use the running ones. */
int qt_cnn_forward(qt_cnn_t *cnn, const float *images, size_t batch, qt_batchnorm_mode mode,
                   qt_err *err);
/* The logits of the last forward, host memory on every backend. */
const float *qt_cnn_logits(const qt_cnn_t *cnn);
/* The mean cross-entropy of the last forward, as qt_vit_loss: labels
 * (batch) with label_smoothing in [0, 1), or soft_targets (batch,
 * num_classes) when labels is NULL. *loss may be NULL. */
int qt_cnn_loss(qt_cnn_t *cnn, const int *labels, const float *soft_targets, double label_smoothing,
                double *loss, qt_err *err);
/* A device's failure to zero is reported by the next qt_cnn_backward. */
void qt_cnn_zero_grad(qt_cnn_t *cnn);
/* Adds d loss / d parameter to the gradients. */
int qt_cnn_backward(qt_cnn_t *cnn, qt_err *err);

/* Moves the model to a backend: its parameters (running statistics
 * included) and gradients, with a new activation arena and every buffer of
 * the passes, all in the backend's memory; the next forward starts afresh.
 * A model starts on the CPU (qt_cnn_load); qt_cnn_to_backend(cnn,
 * QT_BACKEND_KIND_CPU) brings it back. Images, labels and soft targets stay
 * host arrays on every backend (moved once per batch), the loss and logits
 * come back to the host, StochNorm draws on the host from its rng (the
 * CPU's stream) and uploads the draws. The model holds no optimizer state:
 * a caller stepping a CUDA model runs its optimizer on the device arrays of
 * qt_cnn_tensor (tests/qt_test_cnn_backend.h steps AdamW with the backend's
 * op). qt_cnn_save writes from a host copy. Errors: QT_ENODEV without a
 * usable device (qt_backend_kind_check), QT_ENOMEM when the device's memory
 * is short (the model stays where and as it was). Head dropout and the
 * feature hook work on every backend, as for the ViT. */
int qt_cnn_to_backend(qt_cnn_t *cnn, qt_backend_kind kind, qt_err *err);

/* Pixels per side of the input images. */
long qt_cnn_image_size(const qt_cnn_t *cnn);

/* Freezing units, for pct_to_freeze (see "Freezing" in the run section):
 * unit 0 is the stem (conv_stem and bn1; ResNet's conv1 and bn1), units
 * 1..n the blocks in order (blocks.i.j; ResNet's layerL.j), and the final
 * conv_head and bn2 count with unit n, as a ViT's final norm with its last
 * block. The head (head_mlp.*, the classifier or fc) is qt_cnn_tensor.head.
 * Returns n. */
long qt_cnn_units(const qt_cnn_t *cnn);

/* Units below `unit` are frozen: in a TRAIN forward their batch norms run
 * in FROZEN mode (running statistics, nothing updated), and the backward
 * pass stops before them (their tensors get no gradients and cost no
 * backward work). 0 (the default) trains everything; n + 1 or more only the
 * head. */
void qt_cnn_set_trainable_from(qt_cnn_t *cnn, long unit);

/* Head dropout, as timm's EfficientNet / ResNet drop_rate: while rng is set
 * and rate > 0, every forward multiplies the pooled features entering the
 * head by a mask of 0 (probability rate) or 1 / (1 - rate) drawn from rng
 * (element by element, row-major), and the backward applies the same mask.
 * rng NULL or rate 0 turns it off. A rate outside [0, 1) is QT_EINVAL. */
int qt_cnn_set_head_dropout(qt_cnn_t *cnn, double rate, qt_rng_t *rng, qt_err *err);

/* Feature hook, as qt_vit_set_feature_hook: the features are the globally
 * pooled activations entering the head (batch, qt_cnn_feature_dim), before
 * head dropout; what the caller adds to qt_cnn_feature_grad between
 * qt_cnn_loss and qt_cnn_backward joins their gradient. */
int qt_cnn_set_feature_hook(qt_cnn_t *cnn, int on, qt_err *err);
const float *qt_cnn_features(const qt_cnn_t *cnn, size_t *batch);
float *qt_cnn_feature_grad(qt_cnn_t *cnn);
size_t qt_cnn_feature_dim(const qt_cnn_t *cnn);

/* Writes every tensor (parameters and running statistics, timm's names) to
 * path as F32, atomically, with the metadata the loader honours (bn_eps,
 * padding, stage_strides) carried over from the loaded checkpoint. */
int qt_cnn_save(const qt_cnn_t *cnn, const char *path, qt_err *err);

/* StochNorm (Kou et al. 2020, Quick-Tune's convert_to_stoch_norm(p = 0.5);
 * specs/algorithms.md section 6): in a TRAIN forward, each batch norm of a
 * trainable unit draws per channel s ~ Bernoulli(p) from rng and outputs
 * BN(x; batch statistics) where s = 1, BN(x; running statistics) where
 * s = 0; the running statistics update as in TRAIN mode either way; the
 * backward follows the branch taken per channel (qt_cpu_stochnorm_*).
 * Evaluation is unchanged. rng NULL or p 0 turns it off; p outside [0, 1]
 * is QT_EINVAL. */
int qt_cnn_set_stoch_norm(qt_cnn_t *cnn, double p, qt_rng_t *rng, qt_err *err);

/* Architectures qtune can create with random initialization (qt_cnn_arch.c),
 * with timm's layouts and parameter names, so that a network pretrained by
 * qtune loads as the timm model of the same name would:
 *   mobilenetv2_100, mobilenetv2_050  timm's (stem 32 / 16, head 1280)
 *   efficientnet_b0                   timm's
 *   resnet18, resnet34, resnet50      timm's / torchvision's
 *   mobilenetv2_tiny, efficientnet_tiny, resnet_tiny  small variants for
 *                                     28-64 px images (qt_cnn_arch.c lists
 *                                     their stages)
 * Initialization as timm: EfficientNet builder models by _init_weight_goog
 * (convolutions normal(0, sqrt(2 / fan_out)), fan_out = k * k * out /
 * groups; batch norm weight 1, bias 0; classifier uniform(+-1/sqrt(classes)),
 * bias 0); ResNets by kaiming_normal(fan_out, relu) for convolutions, batch
 * norm 1 / 0, fc as torch.nn.Linear (uniform(+-1/sqrt(in)) for weight and
 * bias). Running statistics start at mean 0, variance 1. */
/* The family of a named architecture; an unknown name is QT_EINVAL
 * listing the names. */
int qt_cnn_arch_family(const char *arch, qt_model_family *family, qt_err *err);
/* Writes a randomly initialized checkpoint of `arch` with num_classes
 * classes (>= 1), drawn from seed, to path (F32, atomically; metadata
 * "arch" names it, plus what the loader needs, e.g. stage_strides). */
int qt_cnn_write_init(const char *arch, long num_classes, uint64_t seed, const char *path,
                      qt_err *err);
/* Re-draws every parameter of a loaded model with its family's
 * initialization above and resets the running statistics (mean 0, var 1):
 * the same architecture from random initialization. */
void qt_cnn_reinit(qt_cnn_t *cnn, qt_rng_t *rng);
/* end of convolutional section */

/* ------------------------------------------------------------------------- */
/* MLP for tabular data (qt_mlp.c)                                            */
/* ------------------------------------------------------------------------- */

/*
 * A multilayer perceptron over the features of a tabular dataset, run by the
 * layer ops of its backend (the CPU references above, or CUDA after
 * qt_mlp_to_backend). qtune's own layout (qt_model_inspect's family mlp):
 * depth >= 1 blocks, then a linear head. Block i (0-based) computes
 *
 *   z = x W_i^T + b_i           blocks.i.fc.weight (out, in), blocks.i.fc.bias
 *   n = LayerNorm(z)            blocks.i.norm.weight / .bias (out), optional
 *                               per block, eps 1e-5 (torch.nn.LayerNorm's)
 *   a = act(n)                  ReLU (default) or exact GELU, from the
 *                               checkpoint's metadata "activation"
 *
 * as the MLP baselines of tabular deep learning (Gorishniy et al. 2021,
 * "Revisiting deep learning models for tabular data": Linear, ReLU,
 * dropout; LayerNorm in the block as their ResNet's and Kadra et al.'s
 * regularization cocktails allow). The last block's output a (batch,
 * width of the last block) is the feature vector; head dropout (the only
 * dropout: a run's `drop`) applies to it, then logits = a head.weight^T +
 * head.bias (head.weight (classes, width)). Inputs are (batch, n_features)
 * floats, already standardized (see qt_dataset_feature_stats); n_features
 * is read from blocks.0.fc.weight. A batch from qt_batch_iter_next is
 * (size, 1, 1, n_features): the same floats.
 *
 * Freezing units (qt_mlp_units = depth n): unit k (1..n) is blocks.(k-1)
 * (its fc and norm); unit 0 is the input layer, which has no tensors. The
 * head (head.*) is qt_mlp_tensor.head and always trains.
 *
 * Memory: the model owns one parameter array (values, gradients) and its
 * activations for max_batch rows, in its backend's memory; pointers from
 * accessors stay valid until qt_mlp_free or a move to another backend.
 */
typedef struct qt_mlp qt_mlp_t;

/* The activation of every block. */
typedef enum qt_mlp_activation {
  QT_MLP_ACTIVATION_RELU = 0, /* metadata "activation": "relu" (or absent) */
  QT_MLP_ACTIVATION_GELU = 1  /* "gelu": torch.nn.GELU() (exact, erf) */
} qt_mlp_activation;

typedef struct qt_mlp_load_params {
  long num_classes; /* 0: keep the checkpoint's head; another count (or a
                       checkpoint without head.*) draws a new head as
                       torch.nn.Linear: weight and bias uniform(+-1 /
                       sqrt(width)) */
  size_t max_batch; /* rows per forward, >= 1 */
  qt_rng_t *rng;    /* for a new head; may be NULL when none is drawn */
} qt_mlp_load_params;

/* Keep the head, max_batch 32, no rng. */
qt_mlp_load_params qt_mlp_default_load_params(void);

/* Loads a checkpoint (F32/F16/BF16), checked first by qt_model_inspect
 * (family mlp: QT_ESCHEMA naming the tensor for a missing tensor, a shape
 * that does not chain, a stray tensor). An unknown "activation" is
 * QT_EFORMAT; a checkpoint without a head and num_classes 0 is QT_EINVAL. */
int qt_mlp_load(const char *checkpoint_path, const qt_mlp_load_params *params, qt_mlp_t **out,
                qt_err *err);
/* NULL is a no-op. */
void qt_mlp_free(qt_mlp_t *mlp);

/* One named tensor, as qt_cnn_tensor (an MLP has no buffers: every tensor
 * is trainable). */
typedef struct qt_mlp_tensor {
  const char *name;
  size_t ndim;
  const size_t *shape;
  size_t numel;
  float *data;
  float *grad;
  int trainable; /* always 1 */
  int decay;     /* timm's rule: weights of 2 dimensions (fc and head weights) */
  long unit;     /* freezing unit: block index + 1; the head's is n */
  int head;      /* 1: head.weight and head.bias */
} qt_mlp_tensor;

/* Tensors in model order: per block fc.weight, fc.bias, [norm.weight,
 * norm.bias], then head.weight, head.bias. */
size_t qt_mlp_tensor_count(const qt_mlp_t *mlp);
void qt_mlp_tensor_at(const qt_mlp_t *mlp, size_t index, qt_mlp_tensor *out);
/* QT_ENOENT (err untouched) when there is no such tensor. */
int qt_mlp_find_tensor(const qt_mlp_t *mlp, const char *name, qt_mlp_tensor *out);
long qt_mlp_num_classes(const qt_mlp_t *mlp);
/* Input features per row (columns of blocks.0.fc.weight). */
size_t qt_mlp_num_features(const qt_mlp_t *mlp);
qt_mlp_activation qt_mlp_get_activation(const qt_mlp_t *mlp);

/* Forward pass of inputs (batch, n_features) to the logits (batch,
 * num_classes). batch outside [1, max_batch] is QT_EINVAL. */
int qt_mlp_forward(qt_mlp_t *mlp, const float *inputs, size_t batch, qt_err *err);
const float *qt_mlp_logits(const qt_mlp_t *mlp);
/* The mean cross-entropy of the last forward, as qt_cnn_loss: labels
 * (batch) with label_smoothing in [0, 1), or soft_targets (batch,
 * num_classes) when labels is NULL. *loss may be NULL. */
int qt_mlp_loss(qt_mlp_t *mlp, const int *labels, const float *soft_targets, double label_smoothing,
                double *loss, qt_err *err);
void qt_mlp_zero_grad(qt_mlp_t *mlp);
/* Adds d loss / d parameter to the gradients (of the trainable units and
 * the head). QT_EINVAL without a loss since the last forward. */
int qt_mlp_backward(qt_mlp_t *mlp, qt_err *err);

/* The blocks, n (see the freezing units above). */
long qt_mlp_units(const qt_mlp_t *mlp);
/* Units below `unit` are frozen: the backward pass stops before them (no
 * gradients, no backward work, not even the input gradient of the lowest
 * trainable block). 0 or 1 (the default 0) trains everything; n + 1 or more
 * only the head. */
void qt_mlp_set_trainable_from(qt_mlp_t *mlp, long unit);

/* Head dropout, as qt_cnn_set_head_dropout: while rng is set and rate > 0,
 * every forward multiplies the features entering the head by a mask of 0
 * (probability rate) or 1 / (1 - rate) drawn from rng (element by element,
 * row-major); the backward applies the same mask. rng NULL or rate 0 turns
 * it off. A rate outside [0, 1) is QT_EINVAL. */
int qt_mlp_set_head_dropout(qt_mlp_t *mlp, double rate, qt_rng_t *rng, qt_err *err);

/* Feature hook, as qt_cnn_set_feature_hook: the features are the last
 * block's output entering the head (batch, qt_mlp_feature_dim), before head
 * dropout; what the caller adds to qt_mlp_feature_grad between qt_mlp_loss
 * and qt_mlp_backward joins their gradient (zeroed by each forward). */
int qt_mlp_set_feature_hook(qt_mlp_t *mlp, int on, qt_err *err);
const float *qt_mlp_features(const qt_mlp_t *mlp, size_t *batch);
float *qt_mlp_feature_grad(qt_mlp_t *mlp);
size_t qt_mlp_feature_dim(const qt_mlp_t *mlp);

/* Writes every tensor to path as F32, atomically, with the metadata "arch"
 * ("mlp") and "activation" (from a host copy off the CPU). */
int qt_mlp_save(const qt_mlp_t *mlp, const char *path, qt_err *err);

/* Moves the model to a backend, as qt_cnn_to_backend: parameters and
 * gradients, with a new activation arena and every buffer of the passes in
 * the backend's memory (qt_mlp_tensor's data and grad then point there);
 * inputs, labels and soft targets stay host arrays (moved once per batch),
 * the losses and logits come back to the host, head dropout draws its mask
 * on the host and the feature hook works on every backend. QT_ENODEV
 * without a usable device, QT_ENOMEM when its memory is short (the model
 * stays where and as it was). */
int qt_mlp_to_backend(qt_mlp_t *mlp, qt_backend_kind kind, qt_err *err);

/* The shape of a new MLP (qt_mlp_write_init). */
typedef struct qt_mlp_arch {
  size_t n_features; /* inputs per row, >= 1 */
  size_t width;      /* outputs of every block, >= 1 */
  size_t depth;      /* blocks, >= 1 */
  long num_classes;  /* head rows, >= 2 */
  int layer_norm;    /* 1: each block has blocks.i.norm */
  qt_mlp_activation activation;
} qt_mlp_arch;

/* 0 features (to be set), width 256, depth 3, 0 classes (to be set), layer
 * norm on, ReLU. */
qt_mlp_arch qt_mlp_default_arch(void);

/* Writes a randomly initialized MLP of `arch`, drawn from seed, to path
 * (F32, atomically; metadata "arch": "mlp" and "activation"), with
 * torch.nn's initialization: every Linear (fc and head) has weight and bias
 * uniform(+-1 / sqrt(in_features)) (kaiming_uniform(a = sqrt(5)) reduces
 * to that bound), LayerNorm weight 1 and bias 0. The same arguments give
 * the same bytes. A size out of range is QT_EINVAL. */
int qt_mlp_write_init(const qt_mlp_arch *arch, uint64_t seed, const char *path, qt_err *err);
/* end of MLP section */

/* ------------------------------------------------------------------------- */
/* Any model behind one interface (qt_model.c)                                */
/* ------------------------------------------------------------------------- */

/*
 * What the run API needs of a model, whatever its family: the ViT families
 * (qt_vit), the convolutional ones (qt_cnn) and the MLP for tabular data
 * (qt_mlp, whose "images" are rows of features). Each call forwards to the
 * family's function of the same name; the family sections above hold the
 * semantics. Tensors carry, beyond their values, where they sit for
 * freezing and layer-wise lr decay:
 *
 *   unit   freezing unit, 0 .. qt_model_units (n): 0 the stem (none in an
 *          MLP), k the k-th block from the input side, the final norm
 *          (ViT) or conv_head and bn2 (CNN) with block n; see "Freezing" in
 *          the run section;
 *   layer  layer-decay id: the unit for the stem and the blocks, n + 1 for
 *          the final norm / conv_head and the head (scale layer_decay^(n +
 *          1 - layer), timm's param_groups_layer_decay);
 *   head   1 for the head (always trainable);
 *   buffer 1 for state that is not a parameter (batch norm running
 *          statistics): never stepped, but it changes while its unit trains,
 *          so run checkpoints keep it then.
 */
typedef struct qt_model qt_model_t;

typedef struct qt_model_load_params {
  qt_model_family family;
  long heads;        /* ViT families: required (the checkpoint cannot tell) */
  long image_size;   /* ViT: 0 keeps the checkpoint's; CNN: required, >= 32;
                        MLP: ignored (features come from the checkpoint) */
  long num_classes;  /* 0: keep the checkpoint's head (see the family's load) */
  size_t max_batch;  /* >= 1 */
  float bn_momentum; /* CNN running statistics (PyTorch 0.1) */
  qt_rng_t *rng;     /* for a new head; may be NULL when none is drawn */
} qt_model_load_params;

/* family vit, heads 0, image_size 0, keep the head, max_batch 32, momentum 0.1. */
qt_model_load_params qt_model_default_load_params(void);

/* Loads a checkpoint of a ViT family (qt_vit_load), a convolutional one
 * (qt_cnn_load) or an MLP (qt_mlp_load); other families are QT_ENOTIMPL. */
int qt_model_load(const char *checkpoint_path, const qt_model_load_params *params, qt_model_t **out,
                  qt_err *err);
/* NULL is a no-op. */
void qt_model_free(qt_model_t *model);
/* Wraps a model built otherwise (qt_vit_init, qt_cnn_load), taking
 * ownership of it; QT_ENOMEM leaves it with the caller. */
int qt_model_wrap_vit(qt_vit_t *vit, qt_model_family family, qt_model_t **out, qt_err *err);

qt_model_family qt_model_get_family(const qt_model_t *model);
/* The underlying model, or NULL when the model is of the other kind. */
qt_vit_t *qt_model_vit(qt_model_t *model);
qt_cnn_t *qt_model_cnn(qt_model_t *model);
qt_mlp_t *qt_model_mlp(qt_model_t *model);

typedef struct qt_model_tensor {
  const char *name;
  size_t ndim;
  const size_t *shape;
  size_t numel;
  float *data;
  float *grad; /* (numel); unused for buffers */
  int decay;   /* weight decay applies (timm's rule) */
  int buffer;
  long unit;
  long layer;
  int head;
} qt_model_tensor;

size_t qt_model_tensor_count(const qt_model_t *model);
void qt_model_tensor_at(const qt_model_t *model, size_t index, qt_model_tensor *out);
/* QT_ENOENT (err untouched) when there is no such tensor. */
int qt_model_find_tensor(const qt_model_t *model, const char *name, qt_model_tensor *out);
/* n: a ViT's depth, a CNN's or an MLP's blocks. */
long qt_model_units(const qt_model_t *model);
/* Pixels per side of the input images; 0 for an MLP (its input is
 * qt_mlp_num_features floats per row). */
long qt_model_image_size(const qt_model_t *model);
long qt_model_num_classes(const qt_model_t *model);
/* Units below `unit` are frozen: no backward work for them, and a CNN's
 * batch norms there keep their statistics (qt_cnn_set_trainable_from).
 * n + 1 or more: the head alone trains. */
void qt_model_set_trainable_from(qt_model_t *model, long unit);
/* training 1: a training forward (CNN batch norms of trainable units use
 * and update batch statistics), 0: evaluation. ViTs and MLPs ignore it.
 * An MLP's images are rows (batch, n_features). */
int qt_model_forward(qt_model_t *model, const float *images, size_t batch, int training,
                     qt_err *err);
const float *qt_model_logits(const qt_model_t *model);
int qt_model_loss(qt_model_t *model, const int *labels, const float *soft_targets,
                  double label_smoothing, double *loss, qt_err *err);
void qt_model_zero_grad(qt_model_t *model);
int qt_model_backward(qt_model_t *model, qt_err *err);
int qt_model_set_head_dropout(qt_model_t *model, double rate, qt_rng_t *rng, qt_err *err);
int qt_model_set_feature_hook(qt_model_t *model, int on, qt_err *err);
const float *qt_model_features(const qt_model_t *model, size_t *batch);
float *qt_model_feature_grad(qt_model_t *model);
/* Features per image of the feature hook (a ViT's width, an MLP's last
 * block's width). */
size_t qt_model_feature_dim(const qt_model_t *model);
/* StochNorm (qt_cnn_set_stoch_norm); a model without batch norm (the ViT
 * families, the MLP) has nothing to convert, as Quick-Tune's convert_to_stoch_norm
 * leaves such a model unchanged: a no-op returning 0. */
int qt_model_set_stoch_norm(qt_model_t *model, double p, qt_rng_t *rng, qt_err *err);
/* Writes every tensor with timm's names (qt_vit_save / qt_cnn_save /
 * qt_mlp_save). */
int qt_model_save(const qt_model_t *model, const char *path, qt_err *err);
/* Moves the model to a backend (qt_vit_to_backend, qt_cnn_to_backend,
 * qt_mlp_to_backend). */
int qt_model_to_backend(qt_model_t *model, qt_backend_kind kind, qt_err *err);

/* ------------------------------------------------------------------------- */
/* Optimizers, schedules and the epoch-step run API (qt_optim.c,              */
/* qt_schedule.c, qt_run.c)                                                   */
/* ------------------------------------------------------------------------- */

/*
 * Training options of a fine-tuning run, in the form of timm's train.py
 * (the reference Quick-Tune used), and the run object that advances one
 * configuration by one epoch at a time with checkpoint and resume.
 *
 * Optimizers (qt_optim_tensor_step), per parameter tensor, as torch.optim:
 *   sgd       p -= lr * g
 *   momentum  b = momentum * b + g; p -= lr * b   (dampening 0, no Nesterov)
 *   adam      Adam with the bias corrections of qt_cpu_adamw_step
 *   adamw     the same with decoupled weight decay (qt_cpu_adamw_step)
 * Weight decay is coupled (g += weight_decay * p, torch's SGD and Adam) for
 * sgd, momentum and adam, decoupled (p -= lr * weight_decay * p) for adamw,
 * and applies only to tensors whose qt_vit_tensor.decay is set (timm's
 * param_groups_weight_decay: not to 1-d tensors, biases, norms, layer
 * scales, pos_embed, cls_token). Gradient clipping (clip_grad > 0) scales
 * all trainable gradients by clip_grad / (norm + 1e-6) when their global L2
 * norm exceeds clip_grad (torch's clip_grad_norm_), before weight decay.
 *
 * Decay toward a reference (qt_optim_params.decay; decay_strength, i.e.
 * weight_decay, is each kind's own coefficient; details and what is
 * [RECON] in docs/engine.md). theta0 is the tensor's value when it first
 * became trainable: the pretrained weights, or the seeded new head.
 *   weight_decay  toward 0, as above (the default)
 *   none          no decay; the coefficient is ignored
 *   l2sp          L2-SP as Quick-Tune's SPRegularization: the loss gains
 *                 c ||theta - theta0||^2 (no 1/2) summed over every
 *                 trainable tensor except the new head (biases and norms
 *                 included), so the gradient gains 2 c (theta - theta0)
 *                 before clipping (qt_optim_l2sp_gradient); the optimizer
 *                 itself then runs without weight decay. sp_reg (Quick-
 *                 Tune's name) adds the same term with its own coefficient
 *                 to any decay kind.
 *   spd           Selective Projection Decay (qt_optim_spd_step) on every
 *                 trainable tensor, head included (its theta0 is its
 *                 initial draw, as SPD's official usage deepcopies all
 *                 trainable parameters): the optimizer step without any
 *                 weight decay, then the projection with lambda = c.
 *
 * SFA averaging (qt_sfa_*, run spec fields sfa, sfa_p, sfa_beta): after
 * optimizer step s (counted from 1 over the whole run; T = epochs x
 * batches per epoch) with s % K == 0 or s == T, K = max(1, round(sfa_p T)),
 * every trainable tensor except the new head becomes (1 - beta) theta +
 * beta theta0 [RECON: the defaults, the head exclusion, rounding]. The
 * optimizer state is kept.
 *
 * Layer-wise learning-rate decay (layer_decay < 1), as timm's
 * param_groups_layer_decay for a ViT of depth d: patch_embed, cls_token and
 * pos_embed are layer 0, blocks.i layer i + 1, the final norm and the head
 * layer d + 1; a tensor of layer l trains with lr * layer_decay^(d + 1 - l).
 *
 * Schedules (qt_schedule_lr) give one learning rate per epoch, as timm's
 * schedulers stepped once per epoch (train.py's default): epoch e (counted
 * from 0) trains every step with lr(e). Warmup comes first: for e <
 * warmup_epochs, lr(e) = warmup_lr + e * (lr - warmup_lr) / warmup_epochs.
 * After it (t = e, timm's warmup_prefix off):
 *   none, constant  lr
 *   cosine          min_lr + (lr - min_lr) (1 + cos(pi t / epochs)) / 2,
 *                   min_lr once t >= epochs
 *   step            lr * decay_rate^floor(t / decay_epochs)
 *   multistep       lr * decay_rate^(milestones <= t); the milestones are
 *                   `milestones` when given, else decay_epochs alone [RECON:
 *                   Quick-Tune's space has one decay_epochs for both]
 *   plateau         lr * the plateau factor: after each epoch past warmup
 *                   the validation top-1 is compared with the best so far
 *                   (mode max, relative threshold 1e-4, as torch's
 *                   ReduceLROnPlateau); more than patience_epochs epochs
 *                   without improvement multiply the factor by decay_rate
 *                   and restart the count; never below min_lr.
 *
 * Families. A run fine-tunes the ViT families (vit, deit, deit3) and the
 * convolutional ones (mobilenetv2, efficientnet, resnet) through
 * qt_model; a convolutional run needs spec.image_size (the hub entry's).
 *
 * Freezing (pct_to_freeze in [0, 1]). The blocks of a model with n blocks
 * (a ViT's depth; a CNN's blocks.i.j or layerL.j, qt_cnn_units) are
 * counted k = 1..n from the input side; the stem (patch_embed, cls_token
 * and pos_embed; conv_stem or conv1 with bn1) counts as block 0 and the
 * final norm (conv_head with bn2) with block n. Block k is trainable iff
 * k / n > pct_to_freeze; the head is always trainable; pct_to_freeze 0
 * trains everything (the stem included), 1 the head only. Frozen tensors are
 * not updated, have no optimizer state and are not in run checkpoints (they
 * still equal the pretrained checkpoint); the backward pass stops at the
 * lowest trainable block (qt_model_set_trainable_from), so they get no
 * gradients and cost no backward work. The batch norms of frozen blocks
 * normalize with their running statistics and leave them alone
 * (QT_BATCHNORM_MODE_FROZEN): a frozen block is the pretrained function.
 * [Deviation: Quick-Tune's finetune.py sets requires_grad = False and keeps
 * the model in train mode, so its frozen batch norms still normalize with
 * batch statistics and move their running statistics.] The running
 * statistics of trainable blocks are buffers: never stepped, saved in run
 * checkpoints while their block trains.
 *
 * Linear probing (linear_probing = 1), as Quick-Tune's finetune.py: epochs
 * e < epochs / 2 (integer division) train the head only (pct_to_freeze 1),
 * later epochs use pct_to_freeze; tensors that become trainable start with
 * zero optimizer state.
 *
 * Dropout (drop): timm's head dropout on the features entering the head
 * (qt_vit_set_head_dropout, qt_cnn_set_head_dropout), masks drawn from a
 * stream of (seed, epoch) in training only. StochNorm (stoch_norm) on the
 * batch norms of trainable blocks of a CNN, channel draws from another
 * stream of (seed, epoch); a ViT has no batch norm, so it changes nothing
 * there, as in Quick-Tune. Not implemented yet: the dropout of timm < 0.9
 * inside the blocks (pos/proj/MLP), drop path, adapters on convolutional families and the MLP
 * family (QT_ENOTIMPL from qt_run_init).
 */

typedef enum qt_optim_kind {
  QT_OPTIM_KIND_SGD = 0,
  QT_OPTIM_KIND_MOMENTUM = 1,
  QT_OPTIM_KIND_ADAM = 2,
  QT_OPTIM_KIND_ADAMW = 3
} qt_optim_kind;

/* "sgd", "momentum", "adam", "adamw"; "unknown" outside the enum. */
const char *qt_optim_kind_name(qt_optim_kind kind);
/* Parses the names above (exact); "adamp" and "sgdp" are QT_ENOTIMPL,
 * anything else QT_EINVAL ("goodfit" too: it is qt_run_spec.goodfit, around
 * one of these). */
int qt_optim_kind_parse(const char *text, qt_optim_kind *out, qt_err *err);

/* What decay_strength (qt_optim_params.weight_decay) pulls toward; see
 * above. WEIGHT_DECAY is 0 so that zeroed parameters keep plain decay. */
typedef enum qt_decay_kind {
  QT_DECAY_KIND_WEIGHT_DECAY = 0,
  QT_DECAY_KIND_NONE = 1,
  QT_DECAY_KIND_L2SP = 2,
  QT_DECAY_KIND_SPD = 3
} qt_decay_kind;

/* "weight_decay", "none", "l2sp", "spd"; "unknown" outside the enum. */
const char *qt_decay_kind_name(qt_decay_kind kind);
/* Parses those names ("None" too); QT_EINVAL otherwise. */
int qt_decay_kind_parse(const char *text, qt_decay_kind *out, qt_err *err);

typedef struct qt_optim_params {
  qt_optim_kind kind;
  qt_decay_kind decay; /* what weight_decay pulls toward (default weight_decay) */
  double sp_reg;       /* Quick-Tune's L2-SP coefficient, >= 0, added to any decay */
  double lr;           /* base learning rate, >= 0 (the schedule scales it) */
  double momentum;     /* momentum: in [0, 1) */
  double beta1, beta2; /* adam, adamw: in [0, 1) */
  double eps;          /* adam, adamw: > 0 */
  double weight_decay; /* >= 0; coupled or decoupled, see above */
  double clip_grad;    /* global-norm clipping threshold; 0: off */
  double layer_decay;  /* in (0, 1]; 1: off */
} qt_optim_params;

/* adamw, lr 1e-3, momentum 0.9, betas 0.9 and 0.999, eps 1e-8, weight
 * decay 0.01 toward 0, sp_reg 0, no clipping, no layer decay. */
qt_optim_params qt_optim_default_params(void);
/* QT_EINVAL naming the first value outside its range. */
int qt_optim_params_check(const qt_optim_params *p, qt_err *err);

/* One optimizer step on one tensor of n elements, in place. lr is the
 * tensor's learning rate of this step (schedule and layer decay applied),
 * decay 1 when weight decay applies to it, step t >= 1 counts the steps of
 * this tensor (Adam's bias correction). state1 and state2 (n floats each,
 * zero before the first step) are the momentum buffer (state2 unused) or
 * Adam's two moments; NULL for sgd. grads are read, not changed (coupled
 * decay is added on the fly). */
void qt_optim_tensor_step(const qt_optim_params *p, double lr, int decay, long step, float *params,
                          const float *grads, float *state1, float *state2, size_t n);

/* The weight decay toward 0 that qt_optim_tensor_step applies: p's
 * weight_decay for decay kind weight_decay, else 0. */
double qt_optim_zero_decay(const qt_optim_params *p);
/* The L2-SP coefficient c of the loss term c ||theta - theta0||^2: sp_reg,
 * plus weight_decay for decay kind l2sp. */
double qt_optim_l2sp_coefficient(const qt_optim_params *p);

/* L2-SP on one tensor of n elements: the penalty c ||params - ref||^2
 * (double accumulation; ref NULL: 0, the mode for adapter weights) ... */
double qt_optim_l2sp_penalty(const float *params, const float *ref, size_t n, double c);
/* ... and its gradient added in place: grads += 2 c (params - ref). */
void qt_optim_l2sp_gradient(float *grads, const float *params, const float *ref, size_t n,
                            double c);

/*
 * One Selective Projection Decay step on one tensor (specs/algorithms.md
 * section 2, GT-RIPL's adamSPD.py generalized to p's optimizer kind): with
 * theta the tensor before the step, g = grads (raw, no decay added),
 * theta0 = ref (NULL: 0, the mode for adapter weights), lambda =
 * p->weight_decay:
 *   c = -<g, theta - theta0>                  (whole tensor, double)
 *   theta~ = the optimizer step of p's kind without any weight decay
 *   if c < 0 and lambda > 0:
 *     gamma = ||theta - theta0||,  gamma~ = ||theta~ - theta0||
 *     r = clamp((gamma~ - gamma) / gamma~, 0, 1)   (0 when gamma~ = 0)
 *     theta~ -= lambda r (theta~ - theta0)
 * With lambda = 1 the step ends on the sphere of the previous deviation
 * (||theta~ - theta0|| = gamma) whenever it left it outward. lr, step and
 * the states are as for qt_optim_tensor_step. Returns r (0 when no
 * projection happened).
 */
double qt_optim_spd_step(const qt_optim_params *p, double lr, long step, float *params,
                         const float *grads, const float *ref, float *state1, float *state2,
                         size_t n);
/* qt_optim_spd_step's two halves around the plain step, for a backend to
 * compose: qt_optim_spd_stats stores <g, theta - theta0> and ||theta -
 * theta0||^2 of the tensor before the step in stats[0] and stats[1];
 * qt_optim_spd_project, after the step, uses stats[2] as scratch (||theta~
 * - theta0||^2 where needed) and projects; returns r. */
void qt_optim_spd_stats(const float *params, const float *grads, const float *ref, size_t n,
                        double stats[2]);
double qt_optim_spd_project(float *params, const float *ref, size_t n, double lambda,
                            double stats[3]);

/* GOODFIT's projection [RECON] (specs/algorithms.md section 3.1) on one
 * tensor: when <g, delta> < 0, grads -= (<g, delta> / (||delta||^2 +
 * 1e-12)) delta, which leaves grads orthogonal to delta (up to the 1e-12);
 * otherwise grads are unchanged. Returns the coefficient subtracted (0
 * when unchanged). Sums in double. */
double qt_goodfit_project(float *grads, const float *delta, size_t n);

/* SFA's interval K = max(1, round(p * total_steps)) for p in (0, 1]
 * [RECON: the rounding], and whether step s (from 1) averages:
 * s % K == 0 or s == total_steps. */
long qt_sfa_interval(double p, long total_steps);
int qt_sfa_due(long interval, long total_steps, long step);
/* params = (1 - beta) params + beta ref, elementwise in float (beta 1
 * gives ref exactly, beta 0 params exactly); ref NULL: 0. */
void qt_sfa_average(float *params, const float *ref, size_t n, double beta);

/* The CUDA twins of the per-tensor arithmetic above (finetune/cuda/
 * qt_cuda_optim.cu), on device arrays, queued on the thread's stream, with a
 * QT_E* code and qt_err last: each element is computed with the CPU's float
 * operations in its order (bit-identical results). qt_cuda_sum_squares
 * adds sum_i x_i^2 to *acc, one double in device memory (in double, in
 * another order than a loop; queued like the rest, so that clipping sums
 * every tensor and downloads once), and qt_cuda_scale
 * multiplies by c (a clipped gradient). Built without CUDA: QT_ENODEV. */
int qt_cuda_optim_tensor_step(const qt_optim_params *p, double lr, int decay, long step,
                              float *params, const float *grads, float *state1, float *state2,
                              size_t n, qt_err *err);
int qt_cuda_sum_squares(const float *x, size_t n, double *acc, qt_err *err);
int qt_cuda_scale(float *x, float c, size_t n, qt_err *err);
int qt_cuda_l2sp_gradient(float *grads, const float *params, const float *ref, size_t n, double c,
                          qt_err *err);
int qt_cuda_sfa_average(float *params, const float *ref, size_t n, double beta, qt_err *err);
/* x += a * y elementwise with the CPU's float operations (a GOODFIT
 * reference step is a = -lr: bit-identical to x -= lr * y). */
int qt_cuda_axpy(float *x, float a, const float *y, size_t n, qt_err *err);
/* qt_goodfit_project on the device, with stats two doubles of device
 * memory as scratch: the sums in double (in another order), the
 * conditional update on the device (nothing waits). */
int qt_cuda_goodfit_project(float *grads, const float *delta, size_t n, double *stats, qt_err *err);
/* SPD's halves (qt_optim_spd_stats, qt_optim_spd_project) with stats three
 * doubles of device memory: the projection reads them on the device, so an
 * SPD step waits for nothing. Sums in double in another order than the
 * CPU's loops. */
int qt_cuda_spd_stats(const float *params, const float *grads, const float *ref, size_t n,
                      double *stats, qt_err *err);
int qt_cuda_spd_project(float *params, const float *ref, size_t n, double lambda, double *stats,
                        qt_err *err);
/* Elementwise out = a * b (out may be a) and acc += a * b (head dropout's
 * mask and its gradient), with the CPU's float operations. */
int qt_cuda_mul(float *out, const float *a, const float *b, size_t n, qt_err *err);
int qt_cuda_mul_add(float *acc, const float *a, const float *b, size_t n, qt_err *err);

/*
 * LoRA adapters (qt_methods_lora.c) on a linear weight W (out, in), timm's
 * layout (y = x W^T + b): W = W0 + scale B A with A (rank, in) and B (out,
 * rank), row-major, scale = alpha / rank. A run keeps W merged after every
 * step, so the model's passes are unchanged and the exported weights carry
 * no adapter; the gradient of the merged weight, dW, gives the adapters'.
 */
/* alpha / rank; alpha <= 0 means alpha = rank (scale 1) [RECON]. */
double qt_lora_scale(double alpha, long rank);
/* A ~ U(-1/sqrt(in), 1/sqrt(in)) (torch's kaiming_uniform_(a = sqrt(5)),
 * peft's LoRA init) drawn row-major from rng; B = 0, so W = W0 at first. */
void qt_lora_init(float *a, float *b, size_t out, size_t in, size_t rank, qt_rng_t *rng);
/* w = w0 + scale b a (w and w0 (out, in), distinct). */
void qt_lora_merge(float *w, const float *w0, const float *a, const float *b, size_t out, size_t in,
                   size_t rank, double scale);
/* From dw = dL/dW (out, in): ga = scale b^T dw (rank, in), gb = scale dw
 * a^T (out, rank). */
void qt_lora_gradients(const float *dw, const float *a, const float *b, size_t out, size_t in,
                       size_t rank, double scale, float *ga, float *gb);
/* The two above on a CUDA device (cuBLAS products, queued; device arrays),
 * for adapter runs on a GPU. QT_ENODEV without CUDA. */
int qt_cuda_lora_merge(float *w, const float *w0, const float *a, const float *b, size_t out,
                       size_t in, size_t rank, double scale, qt_err *err);
int qt_cuda_lora_gradients(const float *dw, const float *a, const float *b, size_t out, size_t in,
                           size_t rank, double scale, float *ga, float *gb, qt_err *err);

/* ROSA (specs/algorithms.md section 4, marawangamal/rosa's
 * PeftLinear.factorize with sample_method random, factorize_method equal):
 * the start of a random contiguous window of `rank` singular triplets out
 * of n, uniform on {0, ..., n - rank - 1} as torch.randint(0, n - rank)
 * (0 when rank >= n - 1) ... */
size_t qt_rosa_window_start(size_t n, size_t rank, qt_rng_t *rng);
/* ... and the factorization of w (out, in) = U diag(s) V^T (LAPACK
 * sgesvd, n = min(out, in)): b (out, rank) = U[:, I], a (rank, in) =
 * diag(s_I) V^T[I, :] for I = {start, ..., start + r - 1} (r = min(rank,
 * n); rows of a and columns of b past r are zero), fixed (out, in) = the
 * other triplets, so fixed + b a = w up to rounding. QT_EINVAL for a
 * window outside n, QT_EIO when the SVD fails, QT_ENOMEM. */
int qt_rosa_factorize(const float *w, size_t out, size_t in, size_t rank, size_t start,
                      float *fixed, float *a, float *b, qt_err *err);

typedef enum qt_schedule_kind {
  QT_SCHEDULE_KIND_NONE = 0,
  QT_SCHEDULE_KIND_CONSTANT = 1,
  QT_SCHEDULE_KIND_COSINE = 2,
  QT_SCHEDULE_KIND_STEP = 3,
  QT_SCHEDULE_KIND_MULTISTEP = 4,
  QT_SCHEDULE_KIND_PLATEAU = 5
} qt_schedule_kind;

/* "none", "constant", "cosine", "step", "multistep", "plateau". */
const char *qt_schedule_kind_name(qt_schedule_kind kind);
/* Parses those names ("None" too); QT_EINVAL otherwise. */
int qt_schedule_kind_parse(const char *text, qt_schedule_kind *out, qt_err *err);

#define QT_SCHEDULE_MAX_MILESTONES 8

typedef struct qt_schedule_params {
  qt_schedule_kind kind;
  long epochs;        /* cosine: the horizon t_initial (the run's planned epochs), >= 1 */
  double min_lr;      /* cosine, plateau: the floor */
  long warmup_epochs; /* >= 0 */
  double warmup_lr;   /* learning rate of epoch 0 when warming up */
  double decay_rate;  /* step, multistep, plateau: factor in (0, 1] */
  long decay_epochs;  /* step: period; multistep: the milestone without a list; >= 1 */
  long milestones[QT_SCHEDULE_MAX_MILESTONES]; /* multistep, increasing */
  size_t n_milestones;
  long patience_epochs; /* plateau, >= 0 */
} qt_schedule_params;

/* cosine, 50 epochs, min_lr 0, no warmup (warmup_lr 0), decay_rate 0.1,
 * decay_epochs 10, no milestones, patience 2. */
qt_schedule_params qt_schedule_default_params(void);
int qt_schedule_params_check(const qt_schedule_params *p, qt_err *err);

/* The plateau schedule's memory (zero-initialized by qt_schedule_plateau_init). */
typedef struct qt_schedule_plateau {
  double best;   /* best validation score so far; -inf before the first */
  long bad;      /* epochs since it improved */
  double factor; /* current multiplier of lr, starts at 1 */
} qt_schedule_plateau;

void qt_schedule_plateau_init(qt_schedule_plateau *state);
/* Records epoch `epoch`'s validation score (plateau only; a no-op for the
 * other kinds and during warmup). */
void qt_schedule_plateau_update(const qt_schedule_params *p, qt_schedule_plateau *state, long epoch,
                                double score);
/* The learning rate of epoch `epoch` (from 0) for base rate lr; state is
 * read by plateau only (may be NULL otherwise: factor 1). */
double qt_schedule_lr(const qt_schedule_params *p, double lr, long epoch,
                      const qt_schedule_plateau *state);

/* --- Runs ----------------------------------------------------------------- */

/*
 * A run fine-tunes one model with one pipeline configuration, an epoch per
 * qt_run_epoch call: train over the epoch's batches (qt_batch_iter, seeded
 * by (seed, epoch)), then evaluate on the validation split. The observation
 * of an epoch is its validation top-1 as the score in [0, 1], top-5 when
 * the task has >= 5 classes, mean train and validation losses (validation:
 * cross-entropy without smoothing), seconds (train + eval of this epoch
 * only) and training images per second.
 *
 * Checkpoints (qt_run_save / qt_run_load): ONE safetensors file holding the
 * trainable tensors under timm's names (adapted weights as their adapters,
 * see "LoRA adapters in runs"), the optimizer state of each that
 * has taken a step ("optim.exp_avg.<name>" and "optim.exp_avg_sq.<name>"
 * for Adam(W), "optim.momentum_buffer.<name>" for momentum, none for sgd;
 * each tensor's step count as metadata "optim.step.<name>"),
 * and in "__metadata__": "format" = "qtune-run", "version" = "1", the epoch,
 * the seed, the best score, the plateau state, and a fingerprint of the
 * spec's training values. Frozen tensors are not stored: loading reads them
 * from the spec's pretrained checkpoint. Nor is theta0 of L2-SP, SPD and
 * SFA: loading takes it from the tensors before the checkpoint overwrites
 * them (the pretrained file; the head as drawn from the seed), and the run
 * holds it only for tensors that are or were trainable, only when a
 * method needs it. The random state is fully given by
 * (seed, epoch) because every batch stream is derived from them, so a
 * resumed run computes the same numbers as an uninterrupted one, bit for
 * bit on the CPU, with any number of data threads. Files are written
 * atomically (qt_safetensors_write).
 *
 * A loss that is NaN or infinite stops the epoch before the step that
 * would apply it: the result has status QT_RUN_STATUS_DIVERGED, the run
 * refuses further epochs and saves (QT_EINVAL), and files saved before stay
 * as they are.
 *
 * Memory. The spec's strings and data are borrowed: the data splits must
 * outlive the run. The run owns its model, optimizer state and iterators.
 */

/*
 * LoRA adapters in runs (adapter = lora). Every linear weight of the
 * trainable blocks (blocks.i.attn.qkv, attn.proj, mlp.fc1, mlp.fc2; the
 * attention pair only with adapter_attention_only) gets A and B (see
 * qt_lora_*), drawn from a stream of the seed; those and the head are the
 * only trainable parameters (biases, norms, the stem stay frozen, as peft's
 * bias = "none"). pct_to_freeze and linear probing choose the blocks that
 * get adapters as they choose trainable blocks. Each step computes the
 * adapters' gradients from dW, clips over the adapters and the head,
 * steps A and B with their own optimizer state (weight_decay as for any
 * 2-d tensor; L2-SP, SPD and SFA take theta0 = 0 for A and B, SPD's
 * adapter mode, so SFA scales B by 1 - beta, which is exactly W <- (1 -
 * beta) W + beta W0) and merges W = W0 + scale B A. Memory: W0 of each
 * adapted weight (one copy), A, B, their gradients and states. Checkpoints
 * store A and B as "<module>.lora_A.weight" and "<module>.lora_B.weight"
 * (peft's names) with their optimizer states, not W; loading merges.
 */

/*
 * GOODFIT in runs (opt = goodfit) [RECON, specs/algorithms.md section 3.1;
 * no official code exists]. The batches of an epoch are taken in cycles of
 * n_ref + 1: at the start of a cycle theta_ref <- theta (the trainable
 * tensors); each of the first n_ref batches makes a reference step, plain
 * SGD theta -= goodfit_lr_ref_ratio * lr_tensor * g on its gradient (no
 * decay, no clipping); the last batch gives g at the displaced point, then
 * theta <- theta_ref, per tensor g is projected (qt_goodfit_project with
 * delta = displaced theta - theta_ref: only when <g, delta> < 0) and the
 * main optimizer (goodfit_main, default adamw, with clipping, layer decay
 * and the decay kind, SPD included) steps from theta_ref. So each update
 * costs n_ref + 1 forward/backward passes and an epoch of B batches makes
 * floor(B / (n_ref + 1)) updates; a cycle left incomplete at the end of an
 * epoch is dropped (theta <- theta_ref), so checkpoints never hold a
 * displaced state. The open choices: per-tensor projection, conditional,
 * gradient at the displaced point, stateless SGD reference optimizer, the
 * batch cycles, no warm-up. Not with adapters (QT_ENOTIMPL).
 */

/*
 * ROSA in runs (adapter = rosa) uses the same layers, masks, gradients and
 * steps as LoRA with scale 1 and base W_fixed instead of W0: at the start
 * of every epoch each trainable adapted weight is factorized from its
 * current merged value (qt_rosa_factorize, the window drawn by
 * qt_rosa_window_start from a stream of (seed, epoch), tensor by tensor in
 * model order), W is re-merged (W_fixed + B A, equal to W up to the SVD's
 * rounding) and the optimizer is rebuilt (every trainable tensor's state
 * zeroed, step counts 0), as the reference constructs a new optimizer
 * (the schedule's lr goes on). adapter_alpha is not
 * used. SFA: W_fixed <- (1 - beta) W_fixed + beta W0 and B <- (1 - beta) B,
 * exactly W <- (1 - beta) W + beta W0. Checkpoints store the merged W of
 * adapted weights under timm's names and no adapter state (the next epoch
 * resamples from W and rebuilds the state anyway): "only what changes".
 */

typedef enum qt_adapter_kind {
  QT_ADAPTER_KIND_NONE = 0,
  QT_ADAPTER_KIND_LORA = 1,
  QT_ADAPTER_KIND_ROSA = 2
} qt_adapter_kind;

/* What a run trains: every field a plain value (see qt_run_spec_set for the
 * hyperparameter names of configs/spaces/). */
typedef struct qt_run_spec {
  /* Model (from a hub entry). */
  const char *checkpoint; /* timm safetensors file */
  qt_model_family family; /* vit, deit or deit3 */
  long heads;             /* attention heads (the checkpoint cannot tell) */
  long image_size;        /* fine-tuning image size; 0: the checkpoint's */
  double mean[3], std[3]; /* normalization of the model's input */
  /* Data (borrowed): train and validation (non-empty) are used. */
  const qt_data_splits *data;
  /* Pipeline. */
  long epochs; /* planned epochs: cosine horizon, linear-probing switch */
  qt_optim_params optim;
  qt_schedule_params schedule; /* schedule.epochs is set from epochs */
  size_t batch_size;
  double pct_to_freeze; /* [0, 1] */
  int linear_probing;   /* 0 or 1 */
  qt_auto_augment data_augmentation;
  int ra_num_ops, ra_magnitude;
  double mixup, cutmix;        /* Beta alphas; 0: off */
  double mixup_prob;           /* probability a batch is mixed when an alpha > 0 */
  double smoothing;            /* label smoothing in [0, 1) */
  double drop;                 /* head dropout rate in [0, 1) */
  double crop_scale;           /* RandomResizedCrop's smallest area fraction, (0, 1] (timm 0.08) */
  double hflip;                /* probability of a horizontal flip, [0, 1] (timm 0.5) */
  qt_adapter_kind adapter;     /* none, lora or rosa (see "LoRA adapters in runs" above) */
  long adapter_rank;           /* r >= 1 */
  double adapter_alpha;        /* LoRA's alpha; <= 0: alpha = rank (scale 1) [RECON] */
  int adapter_attention_only;  /* 1: attn.qkv and attn.proj only; 0: also mlp.fc1, fc2 */
  int goodfit;                 /* 1: GOODFIT updates around goodfit_main (see "GOODFIT in runs") */
  qt_optim_kind goodfit_main;  /* GOODFIT's main optimizer (optim.kind is then ignored) */
  long goodfit_n_ref;          /* reference steps per update, >= 1 */
  double goodfit_lr_ref_ratio; /* reference-step lr as a multiple of the main lr, > 0 */
  int sfa;                     /* 1: SFA averaging toward theta0 (see the optimizers above) */
  double sfa_p;                /* averaging interval as a fraction of the run's steps, (0, 1] */
  double sfa_beta;             /* weight of theta0 in an average, [0, 1] */
  double bss_reg;              /* BSS coefficient eta >= 0; 0: off (see qt_bss_penalty) */
  long bss_k;                  /* BSS: how many of the smallest singular values, >= 1 (1) */
  double delta_reg;            /* DELTA coefficient >= 0; 0: off (see qt_delta_penalty) */
  double cotuning_reg;         /* Co-Tuning coefficient >= 0; 0: off (see qt_cotuning_penalty
                                  and qt_run_spec_set) */
  int stoch_norm;              /* 1: StochNorm (p = 0.5) on the batch norms of trainable units
                                  (qt_cnn_set_stoch_norm); no effect on the ViT families */
  /* Execution. */
  uint64_t seed;          /* fixes the new head, batch order and augmentation */
  int threads;            /* preprocessing threads (results do not depend on it) */
  qt_backend_kind device; /* where the model trains (default cpu) */
  int amp; /* 1: mixed precision on a device (QT_MATMUL_BF16 products during the run's epochs
              and evaluations, FP32 master weights); the CPU computes in FP32 regardless.
              Like device, not part of a checkpoint's fingerprint */
} qt_run_spec;

/* QT_ENOTIMPL (with the reason) when the spec asks for a combination the
 * engine cannot run yet (a family without runs, GOODFIT with adapters or
 * with Co-Tuning, adapters on a convolutional family), else 0; needs no data or checkpoint,
 * so a search can drop such configurations before it starts.
 * qt_run_init checks the same. */
int qt_run_spec_supported(const qt_run_spec *spec, qt_err *err);
/* With cotuning_reg > 0: QT_ENOTIMPL when the checkpoint's classifier sits
 * behind a head MLP (head_mlp.*, e.g. the nsfwjs import: Co-Tuning's source
 * head must take the pooled features), else 0 (also without Co-Tuning).
 * Reads only the checkpoint's header; its errors are returned as they are.
 * qt_run_init refuses the same. */
int qt_run_cotuning_supported(const qt_run_spec *spec, qt_err *err);
/* Every pipeline a run can train on the CPU trains on a device too
 * (spec.device cuda): each family, optimizer and method; ROSA's per-epoch
 * SVD runs on host copies, and BSS, DELTA and Co-Tuning compute on host
 * copies of the features. A run's checkpoint is the same file on every
 * backend: one saved on a device resumes on the CPU and the reverse. */

/* No checkpoint or data; family vit, image_size 0, ImageNet mean/std, 10
 * epochs, qt_optim_default_params, cosine, batch 32, pct_to_freeze 0, no
 * linear probing, trivial_augment (RandAugment 2 ops, magnitude 9), no
 * mixing (mixup_prob 1), smoothing 0.1, drop 0, crop_scale 0.08, hflip 0.5, no adapter (rank 8,
 * alpha = rank, all linear layers), no GOODFIT (adamw, n_ref 1, ratio 1),
 * no SFA (sfa_p 0.25, sfa_beta 0.5 [RECON]), seed 0, 1 thread. */
qt_run_spec qt_run_default_spec(void);

/*
 * Sets one pipeline hyperparameter from its text, with the names of
 * configs/spaces/default.yaml and Quick-Tune's space: opt, lr, momentum,
 * opt_betas ("[0.9, 0.999]"), eps, weight_decay, decay (none,
 * weight_decay, l2sp, spd) with decay_strength (= weight_decay, the
 * decay's coefficient; the order of the two does not matter), sp_reg,
 * sfa (boolean), sfa_p, sfa_beta, adapter (none, lora, rosa), adapter_rank,
 * adapter_alpha and adapter_layers (attention, all; these two are not in
 * configs/spaces/default.yaml yet), clip_grad, layer_decay, sched,
 * warmup_epochs, warmup_lr, min_lr, decay_rate, decay_epochs,
 * patience_epochs, batch_size, pct_to_freeze, linear_probing,
 * data_augmentation, ra_num_ops, ra_magnitude, mixup, cutmix, mixup_prob,
 * smoothing, drop, crop_scale, hflip, epochs. model is ignored (the caller picked the
 * checkpoint). amp (boolean, Quick-Tune's space) sets spec.amp: BF16
 * matrix products on a CUDA device, no effect on the CPU. Methods not
 * implemented yet are QT_ENOTIMPL (opt adamp, sgdp; an AutoAugment
 * policy). stoch_norm (boolean) turns on StochNorm (see
 * the run section's introduction). bss_reg (>= 0) turns on Batch Spectral Shrinkage
 * with bss_k (not in the space; default 1, Quick-Tune's k) smallest
 * singular values: every training batch adds bss_reg * sum of the bss_k
 * smallest squared singular values of the batch's pre-head features
 * (qt_bss_penalty, qt_vit_features) to the loss, its gradient joining the
 * features' gradient before the backward pass (before clipping); the
 * reported train_loss stays the cross-entropy alone. delta_reg (>= 0)
 * turns on DELTA: every training batch also runs a frozen copy of the
 * pretrained checkpoint (a second model in memory, one more forward pass
 * per batch) on the same inputs and adds delta_reg * ||F - F_source||^2
 * (qt_delta_penalty) the same way. cotuning_reg (>= 0) turns on Co-Tuning
 * (qt_cotuning_penalty): qt_run_init reads the checkpoint's classifier
 * ("head.*" for the ViT families, "classifier.*" for mobilenetv2 and
 * efficientnet, "fc.*" for resnet; a checkpoint without one is QT_EINVAL,
 * as is one whose classifier does not take the feature hook's width) as
 * the source head, runs the training split once through the pretrained
 * model (evaluation mode, no augmentation: one more pass over the training
 * data at every init and load) for R, and every training batch adds the
 * penalty's gradient to the features' (as BSS) and trains the source head
 * with the run's optimizer like the new head (always trainable, weight
 * decay on its weight only, no layer decay, L2-SP or SFA; inside gradient
 * clipping's global norm). Run checkpoints store it as
 * "cotuning.source_head.weight" and ".bias" with their optimizer state; R
 * is recomputed on load. With GOODFIT it is QT_ENOTIMPL. opt goodfit sets goodfit (another opt
 * clears it); goodfit_n_ref, goodfit_lr_ref_ratio and goodfit_main (sgd, momentum, adam, adamw; not
 * in the space yet) set its values. Other names are QT_ENOENT, bad values QT_EINVAL (ranges are
 * checked by qt_run_init).
 */
int qt_run_spec_set(qt_run_spec *spec, const char *name, const char *value, qt_err *err);

typedef enum qt_run_status {
  QT_RUN_STATUS_OK = 0,
  QT_RUN_STATUS_DIVERGED = 1, /* a non-finite training loss */
  QT_RUN_STATUS_STOPPED = 2   /* the stop hook asked to stop (qt_run_set_stop) */
} qt_run_status;

typedef struct qt_run_epoch_result {
  long epoch; /* 1-based number of the epoch just run */
  qt_run_status status;
  double score;        /* validation top-1 in [0, 1] (NaN when diverged) */
  double top5;         /* validation top-5, NaN with fewer than 5 classes */
  double train_loss;   /* mean over training samples of the epoch */
  double val_loss;     /* mean cross-entropy on validation */
  double lr;           /* base learning rate of the epoch (before layer decay) */
  double seconds;      /* wall time of this epoch, train + eval */
  double images_per_s; /* training images per second */
  size_t trainable;    /* trainable parameters in this epoch */
} qt_run_epoch_result;

typedef struct qt_run qt_run_t;

/* Loads the checkpoint (new head for the data's classes, drawn from the
 * seed), checks the spec (QT_EINVAL naming the value), builds the
 * iterators. */
int qt_run_init(const qt_run_spec *spec, qt_run_t **out, qt_err *err);
void qt_run_free(qt_run_t *run);

/* Runs the next epoch; see above. Errors other than divergence are
 * negative codes (the run is then unusable). */
int qt_run_epoch(qt_run_t *run, qt_run_epoch_result *out, qt_err *err);

/* Evaluates the current model on the test split as on validation: top-1,
 * top-5 (NaN with fewer than 5 classes) and cross-entropy. Without a test
 * split (absent or empty) all three are NaN and the call returns 0. */
int qt_run_evaluate_test(qt_run_t *run, double *top1, double *top5, double *loss, qt_err *err);

/* A stop hook, polled before every training batch and every evaluation
 * batch of qt_run_epoch: a non-zero return abandons the epoch at once with
 * status QT_RUN_STATUS_STOPPED (score NaN, seconds so far). The run's
 * memory is then partly trained, so it refuses further epochs and saves
 * (QT_EINVAL) as after divergence; files saved before are untouched, and
 * the caller continues from its last checkpoint (qt_run_load). NULL: never
 * stop. */
void qt_run_set_stop(qt_run_t *run, int (*should_stop)(void *user), void *user);

/* Epochs done so far. */
long qt_run_epochs_done(const qt_run_t *run);
/* Best validation score so far (NaN before the first epoch). */
double qt_run_best_score(const qt_run_t *run);
/* The model (for its weights; the run keeps ownership). */
qt_model_t *qt_run_model(qt_run_t *run);

/* Writes the run checkpoint to path (atomic). */
int qt_run_save(const qt_run_t *run, const char *path, qt_err *err);
/* Builds a run from spec and restores path into it. A file that is not a
 * valid safetensors file (e.g. truncated) is QT_EFORMAT; another format or
 * version key QT_EVERSION; a checkpoint of another spec (fingerprint),
 * missing or misshapen tensors QT_ESCHEMA. On failure nothing is returned. */
int qt_run_load(const char *path, const qt_run_spec *spec, qt_run_t **out, qt_err *err);

/* Writes the model's full weights (all tensors, timm's names) to path. */
int qt_run_save_weights(const qt_run_t *run, const char *path, qt_err *err);

/* A hook of the ViT for frozen prefixes (qt_vit.c): the backward pass
 * stops after block first_block (from 0), so blocks below it and the stem
 * (patch_embed, cls_token, pos_embed) get no gradients and cost no
 * backward work; the head, the final norm and blocks >= first_block get the
 * same gradients as without it. 0 (the default) reaches everything;
 * values are clamped to [0, depth]. */
void qt_vit_set_backward_from(qt_vit_t *vit, long first_block);

/* Head dropout, as timm's VisionTransformer(drop_rate=) (its head_drop, in
 * timm >= 0.9 the only dropout drop_rate controls): while rng is set and
 * rate > 0, every forward multiplies the normalized class tokens entering
 * the head by a mask of 0 (probability rate) or 1 / (1 - rate) drawn from
 * rng (element by element, row-major), and the backward pass applies the
 * same mask. rng NULL (or rate 0) turns it off, for evaluation; rng is
 * borrowed and must outlive its use. A rate outside [0, 1) is QT_EINVAL. */
int qt_vit_set_head_dropout(qt_vit_t *vit, double rate, qt_rng_t *rng, qt_err *err);

/* Feature hook for regularizers on the pre-head representation (BSS): the
 * features are the normalized class tokens the head sees, (batch, width)
 * row-major, before head dropout. qt_vit_set_feature_hook(vit, 1) makes
 * every forward keep a copy of them (qt_vit_features; NULL when the hook
 * is off or before a forward, batch set to the last forward's batch) and
 * zero a gradient buffer of the same shape (qt_vit_feature_grad; NULL when
 * off). What the caller adds to that buffer between qt_vit_loss and
 * qt_vit_backward is added by the backward pass to the gradient of the
 * features (after the head dropout's mask, i.e. to d/dF of the undropped
 * F), before the final norm's backward: the model's gradients then are
 * those of loss + R(F) when the buffer holds dR/dF. 0 turns it off.
 * QT_ENOMEM when the buffers cannot be allocated. */
int qt_vit_set_feature_hook(qt_vit_t *vit, int on, qt_err *err);
const float *qt_vit_features(const qt_vit_t *vit, size_t *batch);
float *qt_vit_feature_grad(qt_vit_t *vit);

/*
 * Batch Spectral Shrinkage (BSS, Chen et al. 2019, as Quick-Tune's
 * BatchSpectralShrinkage(k=1); specs/algorithms.md section 6, details in
 * docs/engine.md "BSS"): with F the (batch, width) features and s_1 >= ...
 * >= s_n its singular values (n = min(batch, width), LAPACK dgesvd in
 * double), the penalty is eta * sum of the k smallest s_i^2 (k clamped to
 * n), written to *penalty; when grad is not NULL its gradient 2 eta U_k
 * diag(s_k) V_k^T is ADDED to grad (batch, width). k >= 1, eta >= 0 finite,
 * else QT_EINVAL; a failed SVD is QT_EIO. The gradient is exact where the
 * k-th smallest singular value is simple (distinct from the (k+1)-th).
 */
int qt_bss_penalty(const float *features, size_t batch, size_t width, long k, double eta,
                   double *penalty, float *grad, qt_err *err);

/*
 * DELTA's feature-map distance (Li et al. 2019, as Quick-Tune's
 * BehavioralRegularization; specs/algorithms.md section 6, details in
 * docs/engine.md "DELTA"): over n values (the whole batch's features,
 * batch x width), *penalty = alpha * sum (f - f0)^2 (double accumulation;
 * no mean, no 1/2, f0 the frozen pretrained model's features, a constant);
 * when grad is not NULL, 2 alpha (f - f0) is ADDED to grad.
 */
void qt_delta_penalty(const float *f, const float *f0, size_t n, double alpha, double *penalty,
                      float *grad);

/*
 * Co-Tuning (You et al. 2020; specs/algorithms.md section 6, the original
 * method, not Quick-Tune's code; details in docs/engine.md "Co-Tuning").
 * The pretrained checkpoint's own classifier (the source head, n_src
 * classes, W_src (n_src, dim) and b_src (n_src)) is kept next to the new
 * target head. R (n_target, n_src), the category relationship, has row c =
 * the mean over the training samples of target class c of softmax(source
 * logits), the source logits z = F W_src^T + b_src of the PRETRAINED
 * model's features F (evaluation mode), computed once per run. Every
 * training batch then adds
 *   lambda * mean_b [ -sum_s q_b[s] log softmax(z_b)_s ],  q_b = sum_c w[b,c] R[c,:]
 * with z_b the source logits of the current features and w the batch's
 * target weights over the target classes (the one-hot label; with
 * Mixup/CutMix lambda_mix on the label and 1 - lambda_mix on the partner's).
 * R uses the spec's formula (the plain training-set mean); the paper's
 * calibrated held-out estimate is not implemented.
 */

/* z = F W^T + b into logits (batch, n_src), accumulated in double:
 * features (batch, dim), w (n_src, dim), b (n_src). */
void qt_cotuning_source_logits(const float *features, size_t batch, size_t dim, const float *w,
                               const float *b, size_t n_src, float *logits);

/* Adds softmax(logits row i) (computed in double) to sum[labels[i], :] and
 * 1 to count[labels[i]] for i < batch: sum (n_target, n_src) and count
 * (n_target) start at zero and collect the whole training set. A label
 * outside [0, n_target) or a non-finite logit is QT_EINVAL (nothing of
 * that row is added); NULL arguments or zero sizes QT_EINVAL. */
int qt_cotuning_relationship_accumulate(const float *logits, const int32_t *labels, size_t batch,
                                        size_t n_src, size_t n_target, double *sum, double *count,
                                        qt_err *err);

/* R[c, :] = sum[c, :] / count[c] into r (n_target, n_src): every row a
 * probability vector (sums to 1 up to rounding). A class without training
 * samples gets the uniform row 1 / n_src [RECON: the paper assumes every
 * class is present]. */
void qt_cotuning_relationship_finalize(const double *sum, const double *count, size_t n_target,
                                       size_t n_src, float *r);

/* The Co-Tuning penalty of one batch (see above), in double: features
 * (batch, dim), w (n_src, dim), b (n_src), r (n_target, n_src). The
 * targets: weights (batch, n_target; rows normally sum to 1) when not NULL,
 * else the hard labels (batch) (q_b = R[labels[b], :]). Writes *penalty =
 * lambda * mean_b [ -sum_s q_b[s] log p_b[s] ] and, for each of dfeat
 * (batch, dim), dw (n_src, dim), db (n_src) that is not NULL, ADDS the
 * gradient: with dz_b = lambda / batch * ((sum_s q_b[s]) p_b - q_b),
 * dfeat_b += dz_b W, dw += sum_b dz_b^T F_b, db += sum_b dz_b. lambda >= 0
 * finite; sizes >= 1; labels in [0, n_target); else QT_EINVAL. */
int qt_cotuning_penalty(const float *features, size_t batch, size_t dim, const float *w,
                        const float *b, size_t n_src, const float *r, size_t n_target,
                        const int32_t *labels, const float *weights, double lambda, double *penalty,
                        float *dfeat, float *dw, float *db, qt_err *err);
/* end of run section */

#ifdef __cplusplus
}
#endif

#endif /* QT_FINETUNE_H */

/*
 * qt_test_fake_device.h - a backend for tests that behaves like a device
 * without one: the CPU's ops (qt__ops_cpu) on memory that the host cannot
 * touch. Every block comes from mmap and stays PROT_NONE except while one
 * of the table's functions runs, so a model that reads or writes its
 * backend's memory anywhere but through the op table crashes the test at
 * that line (SIGSEGV), as host code would fault on a GPU's memory. The
 * numbers are the CPU's, bit for bit: a model on this backend must give
 * exactly what it gives on the CPU.
 *
 * Include after qt_test.h, finetune/qt_finetune.h and
 * finetune/qt_finetune_internal.h; use fake_device_ops().
 */
#ifndef QT_TEST_FAKE_DEVICE_H
#define QT_TEST_FAKE_DEVICE_H

#include <stddef.h>
#include <sys/mman.h>
#include <unistd.h>

#define FAKE_DEVICE_MAX_BLOCKS 64

typedef struct fake_block {
  void *ptr;
  size_t bytes; /* mapped, a multiple of the page size */
} fake_block;

static struct fake_device {
  fake_block blocks[FAKE_DEVICE_MAX_BLOCKS];
  long fail_after; /* allocations left before one fails; < 0: none fails */
  long uploads, downloads, op_calls;
} fake_device = {.fail_after = -1};

static inline void fake_protect(int prot) {
  for (int i = 0; i < FAKE_DEVICE_MAX_BLOCKS; i++) {
    fake_block *b = &fake_device.blocks[i];
    if (b->ptr) CU_ASSERT_FATAL(mprotect(b->ptr, b->bytes, prot) == 0);
  }
}
#define FAKE_OPEN() fake_protect(PROT_READ | PROT_WRITE)
#define FAKE_CLOSE() fake_protect(PROT_NONE)

static inline int fake_alloc(void **ptr, size_t bytes, qt_err *err) {
  *ptr = NULL;
  if (bytes == 0) return 0;
  if (fake_device.fail_after == 0)
    return qt_err_set(err, QT_ENOMEM, "fake device: out of memory for %zu bytes", bytes);
  if (fake_device.fail_after > 0) fake_device.fail_after--;
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  size_t mapped = (bytes + page - 1) / page * page;
  void *p = mmap(NULL, mapped, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CU_ASSERT_FATAL(p != MAP_FAILED);
  for (int i = 0; i < FAKE_DEVICE_MAX_BLOCKS; i++) {
    if (!fake_device.blocks[i].ptr) {
      fake_device.blocks[i] = (fake_block){p, mapped};
      *ptr = p;
      return 0;
    }
  }
  CU_FAIL_FATAL("fake device: more blocks than FAKE_DEVICE_MAX_BLOCKS");
  return QT_ENOMEM;
}

static inline void fake_release(void *ptr) {
  if (!ptr) return;
  for (int i = 0; i < FAKE_DEVICE_MAX_BLOCKS; i++) {
    fake_block *b = &fake_device.blocks[i];
    if (b->ptr == ptr) {
      munmap(b->ptr, b->bytes);
      b->ptr = NULL;
      return;
    }
  }
  CU_FAIL("fake device: release of a block it does not hold");
}

/* Blocks still held (0 after every model on the fake device is freed). */
static inline int fake_blocks_held(void) {
  int held = 0;
  for (int i = 0; i < FAKE_DEVICE_MAX_BLOCKS; i++) held += fake_device.blocks[i].ptr != NULL;
  return held;
}

/* The CPU's function `name` with the fake's memory open while it runs. */
#define FAKE_OP(counter, call)             \
  do {                                     \
    fake_device.counter++;                 \
    FAKE_OPEN();                           \
    int fake_rc_ = qt__ops_cpu()->call;    \
    FAKE_CLOSE();                          \
    return fake_rc_;                       \
  } while (0)

static inline int fake_zero(void *ptr, size_t bytes, qt_err *err) {
  FAKE_OP(op_calls, zero(ptr, bytes, err));
}
static inline int fake_copy(void *dst, const void *src, size_t bytes, qt_err *err) {
  FAKE_OP(op_calls, copy(dst, src, bytes, err));
}
static inline int fake_copy_rows(float *dst, size_t dst_stride, const float *src,
                                 size_t src_stride, size_t cols, size_t rows, qt_err *err) {
  FAKE_OP(op_calls, copy_rows(dst, dst_stride, src, src_stride, cols, rows, err));
}
static inline int fake_upload(void *dst, const void *src, size_t bytes, qt_err *err) {
  FAKE_OP(uploads, upload(dst, src, bytes, err));
}
static inline int fake_download(void *dst, const void *src, size_t bytes, qt_err *err) {
  FAKE_OP(downloads, download(dst, src, bytes, err));
}
static inline int fake_linear_forward(float *out, const float *inp, const float *weight,
                                      const float *bias, size_t n, size_t in_c, size_t out_c,
                                      qt_err *err) {
  FAKE_OP(op_calls, linear_forward(out, inp, weight, bias, n, in_c, out_c, err));
}
static inline int fake_linear_backward(float *dinp, float *dweight, float *dbias,
                                       const float *dout, const float *inp, const float *weight,
                                       size_t n, size_t in_c, size_t out_c, qt_err *err) {
  FAKE_OP(op_calls, linear_backward(dinp, dweight, dbias, dout, inp, weight, n, in_c, out_c, err));
}
static inline int fake_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                         const float *weight, const float *bias, size_t n,
                                         size_t c, float eps, qt_err *err) {
  FAKE_OP(op_calls, layernorm_forward(out, mean, rstd, inp, weight, bias, n, c, eps, err));
}
static inline int fake_layernorm_backward(float *dinp, float *dweight, float *dbias,
                                          const float *dout, const float *inp,
                                          const float *weight, const float *mean,
                                          const float *rstd, size_t n, size_t c, qt_err *err) {
  FAKE_OP(op_calls,
          layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, n, c, err));
}
static inline int fake_gelu_forward(float *out, const float *inp, size_t n, qt_err *err) {
  FAKE_OP(op_calls, gelu_forward(out, inp, n, err));
}
static inline int fake_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n,
                                     qt_err *err) {
  FAKE_OP(op_calls, gelu_backward(dinp, dout, inp, n, err));
}
/* The CUDA backend's scratch size (one matrix per head), to exercise an
 * arena laid out for a device. */
static inline size_t fake_attention_scratch_size(size_t tokens, size_t heads) {
  return heads * tokens * tokens;
}
static inline int fake_attention_forward(float *out, float *att, const float *qkv, size_t batch,
                                         size_t tokens, size_t c, size_t heads, qt_err *err) {
  FAKE_OP(op_calls, attention_forward(out, att, qkv, batch, tokens, c, heads, err));
}
static inline int fake_attention_backward(float *dqkv, float *scratch, const float *dout,
                                          const float *qkv, const float *att, size_t batch,
                                          size_t tokens, size_t c, size_t heads, qt_err *err) {
  FAKE_OP(op_calls,
          attention_backward(dqkv, scratch, dout, qkv, att, batch, tokens, c, heads, err));
}
static inline int fake_residual_forward(float *out, const float *res, const float *branch,
                                        const float *gamma, size_t n, size_t c, qt_err *err) {
  FAKE_OP(op_calls, residual_forward(out, res, branch, gamma, n, c, err));
}
static inline int fake_residual_backward(float *dres, float *dbranch, float *dgamma,
                                         const float *dout, const float *branch,
                                         const float *gamma, size_t n, size_t c, qt_err *err) {
  FAKE_OP(op_calls, residual_backward(dres, dbranch, dgamma, dout, branch, gamma, n, c, err));
}
static inline int fake_patchify(float *patches, const float *images, size_t batch,
                                size_t channels, size_t size, size_t patch, qt_err *err) {
  FAKE_OP(op_calls, patchify(patches, images, batch, channels, size, patch, err));
}
static inline int fake_tokens_forward(float *x, const float *patch_tokens, const float *cls_token,
                                      const float *pos, int class_in_pos, size_t batch,
                                      size_t patches, size_t c, qt_err *err) {
  FAKE_OP(op_calls,
          tokens_forward(x, patch_tokens, cls_token, pos, class_in_pos, batch, patches, c, err));
}
static inline int fake_tokens_backward(float *dpatch_tokens, float *dcls_token, float *dpos,
                                       const float *dx, int class_in_pos, size_t batch,
                                       size_t patches, size_t c, qt_err *err) {
  FAKE_OP(op_calls, tokens_backward(dpatch_tokens, dcls_token, dpos, dx, class_in_pos, batch,
                                    patches, c, err));
}
static inline int fake_cross_entropy_forward(float *losses, float *probs, const float *logits,
                                             const int *labels, const float *soft_targets,
                                             float smoothing, size_t batch, size_t classes,
                                             qt_err *err) {
  FAKE_OP(op_calls, cross_entropy_forward(losses, probs, logits, labels, soft_targets, smoothing,
                                          batch, classes, err));
}
static inline int fake_cross_entropy_backward(float *dlogits, const float *probs,
                                              const int *labels, const float *soft_targets,
                                              float smoothing, const float *dloss,
                                              int dloss_per_row, size_t batch, size_t classes,
                                              qt_err *err) {
  FAKE_OP(op_calls, cross_entropy_backward(dlogits, probs, labels, soft_targets, smoothing, dloss,
                                           dloss_per_row, batch, classes, err));
}
static inline int fake_adamw_step(float *params, const float *grads, float *m, float *v, size_t n,
                                  const qt_adamw_params *hp, long step, qt_err *err) {
  FAKE_OP(op_calls, adamw_step(params, grads, m, v, n, hp, step, err));
}

static inline const qt__ops *fake_device_ops(void) {
  static const qt__ops ops = {
      .name = "fake device",
      .host_memory = 0,
      .alloc = fake_alloc,
      .release = fake_release,
      .zero = fake_zero,
      .copy = fake_copy,
      .copy_rows = fake_copy_rows,
      .upload = fake_upload,
      .download = fake_download,
      .linear_forward = fake_linear_forward,
      .linear_backward = fake_linear_backward,
      .layernorm_forward = fake_layernorm_forward,
      .layernorm_backward = fake_layernorm_backward,
      .gelu_forward = fake_gelu_forward,
      .gelu_backward = fake_gelu_backward,
      .attention_scratch_size = fake_attention_scratch_size,
      .attention_forward = fake_attention_forward,
      .attention_backward = fake_attention_backward,
      .residual_forward = fake_residual_forward,
      .residual_backward = fake_residual_backward,
      .patchify = fake_patchify,
      .tokens_forward = fake_tokens_forward,
      .tokens_backward = fake_tokens_backward,
      .cross_entropy_forward = fake_cross_entropy_forward,
      .cross_entropy_backward = fake_cross_entropy_backward,
      .adamw_step = fake_adamw_step,
  };
  return &ops;
}

#endif /* QT_TEST_FAKE_DEVICE_H */

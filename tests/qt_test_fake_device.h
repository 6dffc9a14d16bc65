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

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define FAKE_DEVICE_MAX_BLOCKS 1024
#define FAKE_DEVICE_MAX_PINS 8
#define FAKE_DEVICE_MAX_PENDING 4
#define FAKE_DEVICE_MAX_KEPT 256

/* A weight that a linear forward kept (QT__BF16_KEEP_WEIGHT): its values'
 * hash then, which the backward that takes it must find again. */
typedef struct fake_kept_weight {
  const float *weight; /* NULL: a free slot */
  size_t n;
  uint64_t hash;
} fake_kept_weight;

typedef struct fake_pending_copy {
  void *dst;
  const void *src;
  size_t bytes;
} fake_pending_copy;

typedef struct fake_block {
  void *ptr;
  size_t bytes; /* mapped, a multiple of the page size */
} fake_block;

static struct fake_device {
  fake_block blocks[FAKE_DEVICE_MAX_BLOCKS];
  int high;        /* slots in use lie below it */
  long fail_after; /* allocations left before one fails; < 0: none fails */
  long uploads, downloads, op_calls;
  qt_matmul_precision precision;         /* as set through the table */
  long under_bf16;                       /* calls of the three counters above made under BF16 */
  fake_block pins[FAKE_DEVICE_MAX_PINS]; /* host arrays page-locked through the table */
  int refuse_pins;                       /* 1: pin fails, as cudaHostRegister may */
  long pinned_uploads;                   /* uploads whose source lies in a pinned array */
  int streams;                           /* streams made through the table and not destroyed */
  void *stream;                          /* the current one (stream_use); NULL: the default */
  long default_stream_calls;             /* calls of the counters above with none current */
  int refuse_streams;                    /* 1: stream_create fails, as on a device out of memory */
  /* upload_async's copies on a stream, made only at upload_wait (or when
   * the stream goes), as late as a device may make them: a model that
   * reads dst before the wait, or a caller that changes src before it,
   * gets numbers other than the CPU's. */
  fake_pending_copy pending[FAKE_DEVICE_MAX_PENDING];
  int n_pending;
  long async_uploads;       /* upload_async calls on a stream */
  long bf16_calls;          /* calls of fake_device_bf16_ops' ops with BF16 arrays */
  int bf16_qkv_off;         /* 1: its bf16_activations keeps qkv in FP32, as QT_CUDA_BF16_QKV=0 */
  int bf16_hidden_off;      /* 1: ... and fc1's output, as QT_CUDA_BF16_HIDDEN=0 */
  int bf16_hidden_grad_off; /* 1: ... and GELU's output gradient, as QT_CUDA_BF16_HIDDEN_GRAD=0 */
  int bf16_norm_grad_off;   /* 1: ... and the norms' output gradients, QT_CUDA_BF16_NORM_GRAD=0 */
  int bf16_attention_grad_off; /* 1: ... and the attention's, QT_CUDA_BF16_ATTENTION_GRAD=0 */
  int bf16_branch_off;         /* 1: ... and proj's and fc2's outputs, QT_CUDA_BF16_BRANCH=0 */
  /* The weights kept by linear forwards and not yet taken by a backward
   * (QT__BF16_KEEP_WEIGHT, QT__BF16_KEPT_WEIGHT): a backward that takes
   * one that no forward kept, or whose values changed since, fails the
   * test (a device would multiply by the stale copy). */
  fake_kept_weight kept[FAKE_DEVICE_MAX_KEPT];
  long kept_taken; /* backwards that took a kept weight */
} fake_device = {.fail_after = -1};

static inline void fake_protect(int prot) {
  for (int i = 0; i < fake_device.high; i++) {
    fake_block *b = &fake_device.blocks[i];
    if (b->ptr && mprotect(b->ptr, b->bytes, prot) != 0) {
      perror("fake device: mprotect");
      abort();
    }
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
      if (i >= fake_device.high) fake_device.high = i + 1;
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
      /* Its weights' kept copies go with it. */
      for (int k = 0; k < FAKE_DEVICE_MAX_KEPT; k++) {
        const char *w = (const char *)fake_device.kept[k].weight;
        if (w >= (const char *)b->ptr && w < (const char *)b->ptr + b->bytes)
          fake_device.kept[k].weight = NULL;
      }
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

/* Pins: recorded host ranges (the host memory itself is left alone). */
static inline int fake_pin(void *ptr, size_t bytes, qt_err *err) {
  if (fake_device.refuse_pins)
    return qt_err_set(err, QT_ENOMEM, "fake device: page-locking %zu bytes refused", bytes);
  for (int i = 0; i < FAKE_DEVICE_MAX_PINS; i++) {
    if (fake_device.pins[i].ptr == ptr) CU_FAIL("fake device: an array pinned twice");
  }
  for (int i = 0; i < FAKE_DEVICE_MAX_PINS; i++) {
    if (!fake_device.pins[i].ptr) {
      fake_device.pins[i] = (fake_block){ptr, bytes};
      return 0;
    }
  }
  CU_FAIL_FATAL("fake device: more pins than FAKE_DEVICE_MAX_PINS");
  return QT_ENOMEM;
}

static inline void fake_unpin(void *ptr) {
  for (int i = 0; i < FAKE_DEVICE_MAX_PINS; i++) {
    if (ptr && fake_device.pins[i].ptr == ptr) {
      fake_device.pins[i].ptr = NULL;
      return;
    }
  }
  CU_FAIL("fake device: unpin of an array it has not pinned");
}

static inline int fake_pins_held(void) {
  int held = 0;
  for (int i = 0; i < FAKE_DEVICE_MAX_PINS; i++) held += fake_device.pins[i].ptr != NULL;
  return held;
}

static inline int fake_pinned(const void *src, size_t bytes) {
  const char *p = (const char *)src;
  for (int i = 0; i < FAKE_DEVICE_MAX_PINS; i++) {
    const char *base = (const char *)fake_device.pins[i].ptr;
    if (base && p >= base && p + bytes <= base + fake_device.pins[i].bytes) return 1;
  }
  return 0;
}

/* Streams: tokens, the current one recorded, so that tests can tell
 * which calls a run made on its own. */
static inline int fake_stream_create(void **out, qt_err *err) {
  *out = NULL;
  if (fake_device.refuse_streams)
    return qt_err_set(err, QT_ENOMEM, "fake device: no memory for a stream");
  *out = malloc(1);
  CU_ASSERT_PTR_NOT_NULL_FATAL(*out);
  fake_device.streams++;
  return 0;
}

static inline void *fake_stream_use(void *stream) {
  void *previous = fake_device.stream;
  fake_device.stream = stream;
  return previous;
}

/* The pending copies, made now. */
static inline void fake_copies_arrive(void) {
  FAKE_OPEN();
  for (int i = 0; i < fake_device.n_pending; i++) {
    fake_pending_copy *c = &fake_device.pending[i];
    memcpy(c->dst, c->src, c->bytes);
  }
  FAKE_CLOSE();
  fake_device.n_pending = 0;
}

static inline void fake_stream_destroy(void *stream) {
  if (!stream) return;
  fake_copies_arrive(); /* destroying waits for the stream's copies */
  if (fake_device.stream == stream) fake_device.stream = NULL;
  fake_device.streams--;
  free(stream);
}

/* The CPU's function `name` with the fake's memory open while it runs. */
#define FAKE_OP(counter, call)                                             \
  do {                                                                     \
    fake_device.counter++;                                                 \
    if (fake_device.precision == QT_MATMUL_BF16) fake_device.under_bf16++; \
    if (!fake_device.stream) fake_device.default_stream_calls++;           \
    FAKE_OPEN();                                                           \
    int fake_rc_ = qt__ops_cpu()->call;                                    \
    FAKE_CLOSE();                                                          \
    return fake_rc_;                                                       \
  } while (0)

static inline int fake_zero(void *ptr, size_t bytes, qt_err *err) {
  FAKE_OP(op_calls, zero(ptr, bytes, err));
}
static inline int fake_copy(void *dst, const void *src, size_t bytes, qt_err *err) {
  FAKE_OP(op_calls, copy(dst, src, bytes, err));
}
static inline int fake_copy_rows(float *dst, size_t dst_stride, const float *src, size_t src_stride,
                                 size_t cols, size_t rows, qt_err *err) {
  FAKE_OP(op_calls, copy_rows(dst, dst_stride, src, src_stride, cols, rows, err));
}
static inline int fake_upload(void *dst, const void *src, size_t bytes, qt_err *err) {
  fake_device.pinned_uploads += fake_pinned(src, bytes);
  FAKE_OP(uploads, upload(dst, src, bytes, err));
}
static inline int fake_download(void *dst, const void *src, size_t bytes, qt_err *err) {
  FAKE_OP(downloads, download(dst, src, bytes, err));
}
/* Without a stream current, an upload; with one, a copy left pending. */
static inline int fake_upload_async(void *dst, const void *src, size_t bytes, qt_err *err) {
  if (!fake_device.stream) return fake_upload(dst, src, bytes, err);
  CU_ASSERT_FATAL(fake_device.n_pending < FAKE_DEVICE_MAX_PENDING);
  fake_device.pinned_uploads += fake_pinned(src, bytes);
  fake_device.async_uploads++;
  fake_device.pending[fake_device.n_pending++] = (fake_pending_copy){dst, src, bytes};
  return 0;
}
static inline int fake_upload_wait(qt_err *err) {
  (void)err;
  if (fake_device.stream) fake_copies_arrive();
  return 0;
}
static inline int fake_linear_forward(float *out, const float *inp, const float *weight,
                                      const float *bias, size_t n, size_t in_c, size_t out_c,
                                      qt_err *err) {
  FAKE_OP(op_calls, linear_forward(out, inp, weight, bias, n, in_c, out_c, err));
}
static inline int fake_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                       const float *inp, const float *weight, size_t n, size_t in_c,
                                       size_t out_c, int set, qt_err *err) {
  FAKE_OP(op_calls,
          linear_backward(dinp, dweight, dbias, dout, inp, weight, n, in_c, out_c, set, err));
}
static inline int fake_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                         const float *weight, const float *bias, size_t n, size_t c,
                                         float eps, qt_err *err) {
  FAKE_OP(op_calls, layernorm_forward(out, mean, rstd, inp, weight, bias, n, c, eps, err));
}
static inline int fake_layernorm_backward(float *dinp, float *dweight, float *dbias,
                                          const float *dout, const float *inp, const float *weight,
                                          const float *mean, const float *rstd, size_t n, size_t c,
                                          qt_err *err) {
  FAKE_OP(op_calls,
          layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, n, c, err));
}
static inline int fake_gelu_forward(float *out, const float *inp, size_t n, qt_err *err) {
  FAKE_OP(op_calls, gelu_forward(out, inp, n, err));
}
static inline int fake_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n,
                                     int set, qt_err *err) {
  FAKE_OP(op_calls, gelu_backward(dinp, dout, inp, n, set, err));
}
/* The CUDA backend's scratch size (one matrix per image or head), to
 * exercise an arena laid out for a device. */
static inline size_t fake_attention_scratch_size(size_t batch, size_t tokens, size_t heads) {
  return qt_cuda_attention_scratch_size(batch, tokens, heads);
}
static inline int fake_attention_forward(float *out, float *att, const float *qkv, size_t batch,
                                         size_t tokens, size_t c, size_t heads, qt_err *err) {
  FAKE_OP(op_calls, attention_forward(out, att, qkv, batch, tokens, c, heads, err));
}
/* Whether out, (batch, tokens, c) values (BF16 where `bf16`), is the
 * attention's output for qkv (FP32, device memory open): the CUDA table's
 * backward takes D from it, so a model that passes another array must
 * fail here, where the CPU's backward would not notice. */
static inline int fake_is_attention_out(const void *out, int bf16, const float *qkv, size_t batch,
                                        size_t tokens, size_t c, size_t heads) {
  size_t n = batch * tokens * c;
  float *want = malloc(n * sizeof *want),
        *att = malloc(batch * heads * tokens * tokens * sizeof *att);
  CU_ASSERT_PTR_NOT_NULL_FATAL(want);
  CU_ASSERT_PTR_NOT_NULL_FATAL(att);
  qt_cpu_attention_forward(want, att, qkv, batch, tokens, c, heads);
  int same = 1;
  for (size_t i = 0; i < n && same; i++) {
    float y = bf16 ? qt_test_bf16_float(((const uint16_t *)out)[i]) : ((const float *)out)[i];
    same = fabsf(y - want[i]) <= 1e-2f * (1.0f + fabsf(want[i]));
  }
  free(att);
  free(want);
  return same;
}
static inline int fake_attention_backward(float *dqkv, float *scratch, const float *dout,
                                          const float *qkv, const float *att, const float *out,
                                          size_t batch, size_t tokens, size_t c, size_t heads,
                                          int set, qt_err *err) {
  FAKE_OPEN();
  CU_ASSERT(fake_is_attention_out(out, 0, qkv, batch, tokens, c, heads));
  FAKE_CLOSE();
  FAKE_OP(op_calls, attention_backward(dqkv, scratch, dout, qkv, att, out, batch, tokens, c, heads,
                                       set, err));
}
static inline int fake_residual_forward(float *out, const float *res, const float *branch,
                                        const float *gamma, size_t n, size_t c, qt_err *err) {
  FAKE_OP(op_calls, residual_forward(out, res, branch, gamma, n, c, err));
}
static inline int fake_residual_backward(float *dres, float *dbranch, float *dgamma,
                                         const float *dout, const float *branch, const float *gamma,
                                         size_t n, size_t c, qt_err *err) {
  FAKE_OP(op_calls, residual_backward(dres, dbranch, dgamma, dout, branch, gamma, n, c, err));
}
static inline int fake_patchify(float *patches, const float *images, size_t batch, size_t channels,
                                size_t size, size_t patch, qt_err *err) {
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
static inline int fake_cross_entropy_backward(float *dlogits, const float *probs, const int *labels,
                                              const float *soft_targets, float smoothing,
                                              const float *dloss, int dloss_per_row, size_t batch,
                                              size_t classes, qt_err *err) {
  FAKE_OP(op_calls, cross_entropy_backward(dlogits, probs, labels, soft_targets, smoothing, dloss,
                                           dloss_per_row, batch, classes, err));
}
static inline int fake_optim_steps(const qt_optim_params *p, const qt__optim_slice *slices,
                                   size_t count, qt_err *err) {
  FAKE_OP(op_calls, optim_steps(p, slices, count, err));
}
static inline int fake_axpy(float *x, float a, const float *y, size_t n, qt_err *err) {
  FAKE_OP(op_calls, axpy(x, a, y, n, err));
}
static inline int fake_goodfit_project(float *grads, const float *delta, size_t n, double *stats,
                                       qt_err *err) {
  FAKE_OP(op_calls, goodfit_project(grads, delta, n, stats, err));
}
static inline int fake_lora_merge(float *w, const float *w0, const float *a, const float *b,
                                  size_t out, size_t in, size_t rank, double scale, qt_err *err) {
  FAKE_OP(op_calls, lora_merge(w, w0, a, b, out, in, rank, scale, err));
}
static inline int fake_lora_gradients(const float *dw, const float *a, const float *b, size_t out,
                                      size_t in, size_t rank, double scale, float *ga, float *gb,
                                      qt_err *err) {
  FAKE_OP(op_calls, lora_gradients(dw, a, b, out, in, rank, scale, ga, gb, err));
}
static inline int fake_spd_stats(const float *params, const float *grads, const float *ref,
                                 size_t n, double *stats, qt_err *err) {
  FAKE_OP(op_calls, spd_stats(params, grads, ref, n, stats, err));
}
static inline int fake_spd_project(float *params, const float *ref, size_t n, double lambda,
                                   double *stats, qt_err *err) {
  FAKE_OP(op_calls, spd_project(params, ref, n, lambda, stats, err));
}
static inline int fake_sum_squares(const float *x, size_t n, double *acc, qt_err *err) {
  FAKE_OP(op_calls, sum_squares(x, n, acc, err));
}
static inline int fake_scale(float *x, float c, size_t n, qt_err *err) {
  FAKE_OP(op_calls, scale(x, c, n, err));
}
static inline int fake_l2sp_gradient(float *grads, const float *params, const float *ref, size_t n,
                                     double c, qt_err *err) {
  FAKE_OP(op_calls, l2sp_gradient(grads, params, ref, n, c, err));
}
static inline int fake_sfa_average(float *params, const float *ref, size_t n, double beta,
                                   qt_err *err) {
  FAKE_OP(op_calls, sfa_average(params, ref, n, beta, err));
}
static inline int fake_mul(float *out, const float *a, const float *b, size_t n, qt_err *err) {
  FAKE_OP(op_calls, mul(out, a, b, n, err));
}
static inline int fake_mul_add(float *acc, const float *a, const float *b, size_t n, qt_err *err) {
  FAKE_OP(op_calls, mul_add(acc, a, b, n, err));
}

/* A device's convolution scratch size (every group's column matrix of
 * every image, as the CUDA backend's for small batches), to exercise
 * buffers laid out for a device and sized by the batch; at least the CPU
 * op's, which the fake runs. */
static inline size_t fake_conv2d_scratch_size(const qt_conv2d_shape *s) {
  size_t cpu = qt__ops_cpu()->conv2d_scratch_size(s);
  size_t device = s->batch * s->in_c * s->kernel_h * s->kernel_w * s->out_h * s->out_w;
  return cpu == 0 ? 0 : cpu > device ? cpu : device;
}
static inline int fake_conv2d_forward(float *out, float *scratch, const float *inp,
                                      const float *weight, const float *bias,
                                      const qt_conv2d_shape *shape, qt_err *err) {
  FAKE_OP(op_calls, conv2d_forward(out, scratch, inp, weight, bias, shape, err));
}
static inline int fake_conv2d_backward(float *dinp, float *dweight, float *dbias, float *scratch,
                                       const float *dout, const float *inp, const float *weight,
                                       const qt_conv2d_shape *shape, int set, qt_err *err) {
  FAKE_OP(op_calls,
          conv2d_backward(dinp, dweight, dbias, scratch, dout, inp, weight, shape, set, err));
}
static inline int fake_batchnorm_forward(float *out, float *mean, float *rstd, float *running_mean,
                                         float *running_var, const float *inp, const float *weight,
                                         const float *bias, size_t batch, size_t c, size_t hw,
                                         float eps, float momentum, qt_batchnorm_mode mode,
                                         qt_err *err) {
  FAKE_OP(op_calls, batchnorm_forward(out, mean, rstd, running_mean, running_var, inp, weight, bias,
                                      batch, c, hw, eps, momentum, mode, err));
}
static inline int fake_batchnorm_backward(float *dinp, float *dweight, float *dbias,
                                          const float *dout, const float *inp, const float *weight,
                                          const float *mean, const float *rstd, size_t batch,
                                          size_t c, size_t hw, qt_batchnorm_mode mode, int set,
                                          qt_err *err) {
  FAKE_OP(op_calls, batchnorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, batch,
                                       c, hw, mode, set, err));
}
static inline int fake_stochnorm_forward(float *out, float *mean, float *rstd, float *running_mean,
                                         float *running_var, const float *inp, const float *weight,
                                         const float *bias, const unsigned char *select,
                                         size_t batch, size_t c, size_t hw, float eps,
                                         float momentum, qt_err *err) {
  FAKE_OP(op_calls, stochnorm_forward(out, mean, rstd, running_mean, running_var, inp, weight, bias,
                                      select, batch, c, hw, eps, momentum, err));
}
static inline int fake_stochnorm_backward(float *dinp, float *dweight, float *dbias,
                                          const float *dout, const float *inp, const float *weight,
                                          const float *mean, const float *rstd,
                                          const unsigned char *select, size_t batch, size_t c,
                                          size_t hw, int set, qt_err *err) {
  FAKE_OP(op_calls, stochnorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, select,
                                       batch, c, hw, set, err));
}
/* The elementwise activations. */
#define FAKE_ACTIVATION(name)                                                                    \
  static inline int fake_##name##_forward(float *out, const float *inp, size_t n, qt_err *err) { \
    FAKE_OP(op_calls, name##_forward(out, inp, n, err));                                         \
  }                                                                                              \
  static inline int fake_##name##_backward(float *dinp, const float *dout, const float *inp,     \
                                           size_t n, int set, qt_err *err) {                     \
    FAKE_OP(op_calls, name##_backward(dinp, dout, inp, n, set, err));                            \
  }
FAKE_ACTIVATION(relu)
FAKE_ACTIVATION(relu6)
FAKE_ACTIVATION(silu)
#undef FAKE_ACTIVATION
static inline int fake_global_avgpool_forward(float *out, const float *inp, size_t batch, size_t c,
                                              size_t hw, qt_err *err) {
  FAKE_OP(op_calls, global_avgpool_forward(out, inp, batch, c, hw, err));
}
static inline int fake_global_avgpool_backward(float *dinp, const float *dout, size_t batch,
                                               size_t c, size_t hw, qt_err *err) {
  FAKE_OP(op_calls, global_avgpool_backward(dinp, dout, batch, c, hw, err));
}
static inline int fake_maxpool2d_forward(float *out, int32_t *argmax, const float *inp,
                                         const qt_conv2d_shape *shape, qt_err *err) {
  FAKE_OP(op_calls, maxpool2d_forward(out, argmax, inp, shape, err));
}
static inline int fake_maxpool2d_backward(float *dinp, const float *dout, const int32_t *argmax,
                                          const qt_conv2d_shape *shape, qt_err *err) {
  FAKE_OP(op_calls, maxpool2d_backward(dinp, dout, argmax, shape, err));
}
static inline int fake_se_forward(float *out, float *pooled, float *hidden_pre, float *hidden,
                                  float *gate, const float *inp, const float *w_reduce,
                                  const float *b_reduce, const float *w_expand,
                                  const float *b_expand, size_t batch, size_t c, size_t hw,
                                  size_t rd, qt_se_act act, qt_err *err) {
  FAKE_OP(op_calls, se_forward(out, pooled, hidden_pre, hidden, gate, inp, w_reduce, b_reduce,
                               w_expand, b_expand, batch, c, hw, rd, act, err));
}
static inline int fake_se_backward(float *dinp, float *dw_reduce, float *db_reduce,
                                   float *dw_expand, float *db_expand, float *scratch,
                                   const float *dout, const float *inp, const float *pooled,
                                   const float *hidden_pre, const float *hidden, const float *gate,
                                   const float *w_reduce, const float *w_expand, size_t batch,
                                   size_t c, size_t hw, size_t rd, qt_se_act act, qt_err *err) {
  FAKE_OP(op_calls,
          se_backward(dinp, dw_reduce, db_reduce, dw_expand, db_expand, scratch, dout, inp, pooled,
                      hidden_pre, hidden, gate, w_reduce, w_expand, batch, c, hw, rd, act, err));
}

/* Records the precision (the numbers stay the CPU's FP32 ones). */
static inline qt_matmul_precision fake_set_matmul_precision(qt_matmul_precision precision) {
  qt_matmul_precision previous = fake_device.precision;
  fake_device.precision = precision;
  return previous;
}

static inline int fake_residual_layernorm_forward(float *out, void *norm, float *mean, float *rstd,
                                                  const float *res, const void *branch,
                                                  const float *gamma, const float *weight,
                                                  const float *bias, size_t n, size_t c, float eps,
                                                  unsigned bf16, qt_err *err);

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
      .pin = fake_pin,
      .unpin = fake_unpin,
      .stream_create = fake_stream_create,
      .stream_use = fake_stream_use,
      .stream_destroy = fake_stream_destroy,
      .upload_async = fake_upload_async,
      .upload_wait = fake_upload_wait,
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
      .residual_layernorm_forward = fake_residual_layernorm_forward,
      .patchify = fake_patchify,
      .tokens_forward = fake_tokens_forward,
      .tokens_backward = fake_tokens_backward,
      .cross_entropy_forward = fake_cross_entropy_forward,
      .cross_entropy_backward = fake_cross_entropy_backward,
      .optim_steps = fake_optim_steps,
      .sum_squares = fake_sum_squares,
      .scale = fake_scale,
      .l2sp_gradient = fake_l2sp_gradient,
      .sfa_average = fake_sfa_average,
      .mul = fake_mul,
      .mul_add = fake_mul_add,
      .axpy = fake_axpy,
      .lora_merge = fake_lora_merge,
      .lora_gradients = fake_lora_gradients,
      .goodfit_project = fake_goodfit_project,
      .spd_stats = fake_spd_stats,
      .spd_project = fake_spd_project,
      .set_matmul_precision = fake_set_matmul_precision,
      .conv2d_scratch_size = fake_conv2d_scratch_size,
      .conv2d_forward = fake_conv2d_forward,
      .conv2d_backward = fake_conv2d_backward,
      .batchnorm_forward = fake_batchnorm_forward,
      .batchnorm_backward = fake_batchnorm_backward,
      .stochnorm_forward = fake_stochnorm_forward,
      .stochnorm_backward = fake_stochnorm_backward,
      .relu_forward = fake_relu_forward,
      .relu_backward = fake_relu_backward,
      .relu6_forward = fake_relu6_forward,
      .relu6_backward = fake_relu6_backward,
      .silu_forward = fake_silu_forward,
      .silu_backward = fake_silu_backward,
      .global_avgpool_forward = fake_global_avgpool_forward,
      .global_avgpool_backward = fake_global_avgpool_backward,
      .maxpool2d_forward = fake_maxpool2d_forward,
      .maxpool2d_backward = fake_maxpool2d_backward,
      .se_forward = fake_se_forward,
      .se_backward = fake_se_backward,
  };
  return &ops;
}

/* ------------------------------------------------------------------------- */
/* BF16 activations (qt__ops' bf16_activations), as the CUDA table has them   */
/* ------------------------------------------------------------------------- */

/* n floats of the CPU's result rounded into the BF16 array out, or the n
 * BF16 values of inp widened into a fresh host array (freed by the
 * caller); device memory is open around both. */
static inline void fake_store_bf16(void *out, const float *values, size_t n) {
  for (size_t i = 0; i < n; i++) ((uint16_t *)out)[i] = qt_test_bf16_bits(values[i]);
}
static inline float *fake_widen(const void *inp, size_t n) {
  float *x = malloc((n ? n : 1) * sizeof *x);
  CU_ASSERT_PTR_NOT_NULL_FATAL(x);
  for (size_t i = 0; i < n; i++) x[i] = qt_test_bf16_float(((const uint16_t *)inp)[i]);
  return x;
}

/* A _bf16 op's array for the CPU's op, with device memory open: an input
 * as it is, or (bf16) its values widened; an output as it is, or (bf16)
 * fresh host memory that fake_put rounds into it. fake_drop frees a
 * widened input. */
static inline const float *fake_in(const void *a, size_t n, unsigned bf16) {
  return bf16 ? fake_widen(a, n) : (const float *)a;
}
static inline void fake_drop(const void *a, const float *x) {
  if ((const void *)x != a) free((void *)x);
}
static inline float *fake_out(void *a, size_t n, unsigned bf16) {
  if (!bf16) return (float *)a;
  float *y = malloc((n ? n : 1) * sizeof *y);
  CU_ASSERT_PTR_NOT_NULL_FATAL(y);
  return y;
}
static inline void fake_put(void *a, float *y, size_t n, unsigned bf16) {
  if (!bf16) return;
  fake_store_bf16(a, y, n);
  free(y);
}

/* Counts a call (bf16_calls where it has BF16 arrays) and refuses, as
 * the CUDA table does, a set of BF16 arrays it does not implement
 * (`implemented` lists the sets, 0-terminated after the first) or any
 * BF16 array without BF16 products. */
static inline int fake_bf16_call(unsigned bf16, const unsigned *implemented, size_t count,
                                 const char *who, qt_err *err) {
  fake_device.op_calls++;
  if (fake_device.precision == QT_MATMUL_BF16) fake_device.under_bf16++;
  if (!bf16) return 0;
  fake_device.bf16_calls++;
  int known = 0;
  for (size_t i = 0; i < count; i++) known |= implemented[i] == bf16;
  int bf16_products =
      fake_device.precision == QT_MATMUL_BF16 || fake_device.precision == QT_MATMUL_BF16_FAST;
  if (known && bf16_products) return 0;
  CU_FAIL("fake device: a set of BF16 arrays that the CUDA table refuses");
  return qt_err_set(err, QT_EINVAL, "fake device %s: BF16 arrays 0x%x refused", who, bf16);
}
#define FAKE_BF16_CALL(bf16, who, err, ...)                                                       \
  do {                                                                                            \
    static const unsigned implemented_[] = {__VA_ARGS__};                                         \
    int rc_ =                                                                                     \
        fake_bf16_call(bf16, implemented_, sizeof implemented_ / sizeof *implemented_, who, err); \
    if (rc_ < 0) return rc_;                                                                      \
  } while (0)
/* The same where any set of the bits in `mask` is implemented. */
#define FAKE_BF16_ANY(bf16, mask, who, err)                                              \
  do {                                                                                   \
    unsigned set_ = (bf16) & (mask) ? (bf16) : 0u;                                       \
    int rc_ = fake_bf16_call(bf16, &set_, (bf16) & ~(unsigned)(mask) ? 0 : 1, who, err); \
    if (rc_ < 0) return rc_;                                                             \
  } while (0)
enum {
  FAKE_IN = QT__BF16_INP,
  FAKE_OUT = QT__BF16_OUT,
  FAKE_IN_OUT = QT__BF16_INP | QT__BF16_OUT,
  FAKE_IN_DOUT = QT__BF16_INP | QT__BF16_DOUT,
  FAKE_IN_DIN = QT__BF16_INP | QT__BF16_DINP,
};

/* FNV-1a over a weight's bytes (with device memory open). */
static inline uint64_t fake_weight_hash(const float *weight, size_t n) {
  const unsigned char *p = (const unsigned char *)weight;
  uint64_t h = 14695981039346656037u;
  for (size_t i = 0; i < n * sizeof *weight; i++) h = (h ^ p[i]) * 1099511628211u;
  return h;
}

/* A forward's QT__BF16_KEEP_WEIGHT (with device memory open). */
static inline void fake_keep_weight(const float *weight, size_t n) {
  fake_kept_weight *slot = NULL;
  for (int k = 0; k < FAKE_DEVICE_MAX_KEPT && !slot; k++)
    if (fake_device.kept[k].weight == weight) slot = &fake_device.kept[k];
  for (int k = 0; k < FAKE_DEVICE_MAX_KEPT && !slot; k++)
    if (!fake_device.kept[k].weight) slot = &fake_device.kept[k];
  CU_ASSERT_PTR_NOT_NULL_FATAL(slot);
  *slot = (fake_kept_weight){weight, n, fake_weight_hash(weight, n)};
}

/* A backward's QT__BF16_KEPT_WEIGHT (with device memory open): the copy
 * that a forward kept of these values, taken. */
static inline int fake_take_kept_weight(const float *weight, size_t n, const char *who,
                                        qt_err *err) {
  for (int k = 0; k < FAKE_DEVICE_MAX_KEPT; k++) {
    fake_kept_weight *slot = &fake_device.kept[k];
    if (slot->weight != weight || slot->n != n) continue;
    slot->weight = NULL;
    if (slot->hash != fake_weight_hash(weight, n)) {
      CU_FAIL("fake device: a kept weight changed between its forward and its backward");
      return qt_err_set(err, QT_EINVAL, "fake device %s: the kept weight changed", who);
    }
    fake_device.kept_taken++;
    return 0;
  }
  CU_FAIL("fake device: a backward takes a kept weight that no forward kept");
  return qt_err_set(err, QT_EINVAL, "fake device %s: no kept weight", who);
}

static inline unsigned fake_bf16_activations(size_t batch, size_t tokens, size_t c, size_t heads) {
  (void)batch, (void)tokens, (void)c, (void)heads;
  if (fake_device.precision != QT_MATMUL_BF16 && fake_device.precision != QT_MATMUL_BF16_FAST)
    return 0;
  return QT__KEEP_LINEAR_INPUTS | QT__KEEP_ATTENTION_OUT |
         (fake_device.bf16_qkv_off ? 0u : QT__KEEP_QKV) |
         (fake_device.bf16_hidden_off ? 0u : QT__KEEP_HIDDEN) |
         (fake_device.bf16_hidden_grad_off ? 0u : QT__KEEP_HIDDEN_GRAD) |
         (fake_device.bf16_norm_grad_off ? 0u : QT__KEEP_NORM_GRAD) |
         (fake_device.bf16_branch_off ? 0u : QT__KEEP_BRANCH) |
         (fake_device.bf16_qkv_off || fake_device.bf16_attention_grad_off
              ? 0u
              : QT__KEEP_ATTENTION_GRAD);
}

static inline int fake_layernorm_forward_bf16(void *out, float *mean, float *rstd, const float *inp,
                                              const float *weight, const float *bias, size_t n,
                                              size_t c, float eps, unsigned bf16, qt_err *err) {
  FAKE_BF16_CALL(bf16, "layernorm_forward", err, FAKE_OUT);
  FAKE_OPEN();
  float *y = fake_out(out, n * c, bf16 & QT__BF16_OUT);
  int rc = qt__ops_cpu()->layernorm_forward(y, mean, rstd, inp, weight, bias, n, c, eps, err);
  fake_put(out, y, n * c, bf16 & QT__BF16_OUT);
  FAKE_CLOSE();
  return rc;
}

static inline int fake_layernorm_backward_bf16(float *dinp, float *dweight, float *dbias,
                                               const void *dout, const float *inp,
                                               const float *weight, const float *mean,
                                               const float *rstd, size_t n, size_t c, unsigned bf16,
                                               qt_err *err) {
  FAKE_BF16_CALL(bf16, "layernorm_backward", err, QT__BF16_DOUT);
  FAKE_OPEN();
  const float *g = fake_in(dout, n * c, bf16 & QT__BF16_DOUT);
  int rc = qt__ops_cpu()->layernorm_backward(dinp, dweight, dbias, g, inp, weight, mean, rstd, n, c,
                                             err);
  fake_drop(dout, g);
  FAKE_CLOSE();
  return rc;
}

/* residual_forward, then layernorm_forward (the branch widened and the
 * norm rounded where bf16 says so): the CPU's two ops, whose results the
 * CUDA table's one kernel gives. In both fake tables, so that the backend
 * tests of a ViT take the model's fused call. */
static inline int fake_residual_layernorm_forward(float *out, void *norm, float *mean, float *rstd,
                                                  const float *res, const void *branch,
                                                  const float *gamma, const float *weight,
                                                  const float *bias, size_t n, size_t c, float eps,
                                                  unsigned bf16, qt_err *err) {
  FAKE_BF16_ANY(bf16, QT__BF16_INP | QT__BF16_OUT, "residual_layernorm_forward", err);
  const qt__ops *cpu = qt__ops_cpu();
  FAKE_OPEN();
  const float *b = fake_in(branch, n * c, bf16 & QT__BF16_INP);
  float *y = fake_out(norm, n * c, bf16 & QT__BF16_OUT);
  int rc = cpu->residual_forward(out, res, b, gamma, n, c, err);
  if (rc == 0) rc = cpu->layernorm_forward(y, mean, rstd, out, weight, bias, n, c, eps, err);
  fake_put(norm, y, n * c, bf16 & QT__BF16_OUT);
  fake_drop(branch, b);
  FAKE_CLOSE();
  return rc;
}

static inline int fake_gelu_forward_bf16(void *out, const void *inp, size_t n, unsigned bf16,
                                         qt_err *err) {
  FAKE_BF16_CALL(bf16, "gelu_forward", err, FAKE_IN, FAKE_OUT, FAKE_IN_OUT);
  FAKE_OPEN();
  const float *x = fake_in(inp, n, bf16 & QT__BF16_INP);
  float *y = fake_out(out, n, bf16 & QT__BF16_OUT);
  int rc = qt__ops_cpu()->gelu_forward(y, x, n, err);
  fake_put(out, y, n, bf16 & QT__BF16_OUT);
  fake_drop(inp, x);
  FAKE_CLOSE();
  return rc;
}

static inline int fake_linear_forward_bf16(void *out, const void *inp, const float *weight,
                                           const float *bias, size_t n, size_t in_c, size_t out_c,
                                           unsigned bf16, qt_err *err) {
  unsigned keep = bf16 & QT__BF16_KEEP_WEIGHT;
  bf16 &= ~(unsigned)QT__BF16_KEEP_WEIGHT;
  FAKE_BF16_CALL(bf16, "linear_forward", err, FAKE_IN, FAKE_OUT, FAKE_IN_OUT);
  CU_ASSERT(!keep || bf16); /* only with BF16 arrays, which the CUDA table checks */
  FAKE_OPEN();
  if (keep) fake_keep_weight(weight, in_c * out_c);
  const float *x = fake_in(inp, n * in_c, bf16 & QT__BF16_INP);
  float *y = fake_out(out, n * out_c, bf16 & QT__BF16_OUT);
  int rc = qt__ops_cpu()->linear_forward(y, x, weight, bias, n, in_c, out_c, err);
  fake_put(out, y, n * out_c, bf16 & QT__BF16_OUT);
  fake_drop(inp, x);
  FAKE_CLOSE();
  return rc;
}

static inline int fake_linear_backward_bf16(void *dinp, float *dweight, float *dbias,
                                            const void *dout, const void *inp, const float *weight,
                                            size_t n, size_t in_c, size_t out_c, int set,
                                            unsigned bf16, qt_err *err) {
  unsigned kept = bf16 & QT__BF16_KEPT_WEIGHT;
  bf16 &= ~(unsigned)QT__BF16_KEPT_WEIGHT;
  FAKE_BF16_ANY(bf16, QT__BF16_INP | QT__BF16_DOUT | QT__BF16_DINP, "linear_backward", err);
  CU_ASSERT(set || !(bf16 & QT__BF16_DINP));
  FAKE_OPEN();
  if (kept && fake_take_kept_weight(weight, in_c * out_c, "linear_backward", err) < 0) {
    FAKE_CLOSE();
    return QT_EINVAL;
  }
  const float *x = fake_in(inp, n * in_c, bf16 & QT__BF16_INP);
  const float *g = fake_in(dout, n * out_c, bf16 & QT__BF16_DOUT);
  float *dx = dinp ? fake_out(dinp, n * in_c, bf16 & QT__BF16_DINP) : NULL;
  int rc =
      qt__ops_cpu()->linear_backward(dx, dweight, dbias, g, x, weight, n, in_c, out_c, set, err);
  if (dinp) fake_put(dinp, dx, n * in_c, bf16 & QT__BF16_DINP);
  fake_drop(inp, x);
  fake_drop(dout, g);
  FAKE_CLOSE();
  return rc;
}

/* gelu_backward, then linear_backward: the CPU's ops, whose results the
 * CUDA table's one op gives. */
static inline int fake_gelu_linear_backward_bf16(void *dinp, float *dweight, float *dbias,
                                                 float *dpre, const void *dout, const void *pre,
                                                 const void *inp, const float *weight, size_t n,
                                                 size_t in_c, size_t out_c, int set, unsigned bf16,
                                                 qt_err *err) {
  unsigned kept = bf16 & QT__BF16_KEPT_WEIGHT;
  bf16 &= ~(unsigned)QT__BF16_KEPT_WEIGHT;
  FAKE_BF16_ANY(bf16, QT__BF16_INP | QT__BF16_OUT | QT__BF16_DOUT | QT__BF16_DINP,
                "gelu_linear_backward", err);
  CU_ASSERT(set || !(bf16 & QT__BF16_DINP));
  const qt__ops *cpu = qt__ops_cpu();
  FAKE_OPEN();
  if (kept && fake_take_kept_weight(weight, in_c * out_c, "gelu_linear_backward", err) < 0) {
    FAKE_CLOSE();
    return QT_EINVAL;
  }
  const float *g = fake_in(dout, n * out_c, bf16 & QT__BF16_DOUT);
  const float *p = fake_in(pre, n * out_c, bf16 & QT__BF16_OUT);
  const float *x = fake_in(inp, n * in_c, bf16 & QT__BF16_INP);
  float *dx = dinp ? fake_out(dinp, n * in_c, bf16 & QT__BF16_DINP) : NULL;
  int rc = cpu->gelu_backward(dpre, g, p, n * out_c, 1, err);
  if (rc == 0)
    rc = cpu->linear_backward(dx, dweight, dbias, dpre, x, weight, n, in_c, out_c, set, err);
  if (dinp) fake_put(dinp, dx, n * in_c, bf16 & QT__BF16_DINP);
  fake_drop(dout, g);
  fake_drop(pre, p);
  fake_drop(inp, x);
  FAKE_CLOSE();
  return rc;
}

static inline int fake_attention_forward_bf16(void *out, float *att, const void *qkv, size_t batch,
                                              size_t tokens, size_t c, size_t heads, unsigned bf16,
                                              qt_err *err) {
  FAKE_BF16_CALL(bf16, "attention_forward", err, FAKE_OUT, FAKE_IN_OUT);
  size_t n = batch * tokens * c;
  FAKE_OPEN();
  const float *x = fake_in(qkv, 3 * n, bf16 & QT__BF16_INP);
  float *y = fake_out(out, n, bf16 & QT__BF16_OUT);
  int rc = qt__ops_cpu()->attention_forward(y, att, x, batch, tokens, c, heads, err);
  fake_put(out, y, n, bf16 & QT__BF16_OUT);
  fake_drop(qkv, x);
  FAKE_CLOSE();
  return rc;
}

static inline int fake_attention_backward_bf16(void *dqkv, float *scratch, const void *dout,
                                               const void *qkv, const float *att, const void *out,
                                               size_t batch, size_t tokens, size_t c, size_t heads,
                                               int set, unsigned bf16, qt_err *err) {
  FAKE_BF16_CALL(bf16, "attention_backward", err, FAKE_OUT, FAKE_IN_OUT | QT__BF16_DINP,
                 FAKE_IN_OUT | QT__BF16_DINP | QT__BF16_DOUT);
  CU_ASSERT(set || !(bf16 & QT__BF16_DINP));
  size_t n = 3 * batch * tokens * c;
  FAKE_OPEN();
  const float *x = fake_in(qkv, n, bf16 & QT__BF16_INP);
  const float *dy = fake_in(dout, batch * tokens * c, bf16 & QT__BF16_DOUT);
  float *g = fake_out(dqkv, n, bf16 & QT__BF16_DINP);
  CU_ASSERT(fake_is_attention_out(out, bf16 & QT__BF16_OUT, x, batch, tokens, c, heads));
  int rc = qt__ops_cpu()->attention_backward(g, scratch, dy, x, att, NULL, batch, tokens, c, heads,
                                             set, err);
  fake_put(dqkv, g, n, bf16 & QT__BF16_DINP);
  fake_drop(qkv, x);
  fake_drop(dout, dy);
  FAKE_CLOSE();
  return rc;
}

/* fake_device_ops with the BF16 activations, taken under BF16 products:
 * the producers round the CPU's FP32 results into BF16 arrays and the
 * readers widen them back, so a model there gives the CPU's numbers on
 * those roundings (not the CPU's own), and a model that hands an op the
 * wrong array, or reads a BF16 array as FP32, is far off. */
static inline const qt__ops *fake_device_bf16_ops(void) {
  static qt__ops ops;
  if (!ops.name) {
    ops = *fake_device_ops();
    ops.name = "fake device (BF16 activations)";
    ops.bf16_activations = fake_bf16_activations;
    ops.layernorm_forward_bf16 = fake_layernorm_forward_bf16;
    ops.layernorm_backward_bf16 = fake_layernorm_backward_bf16;
    ops.gelu_forward_bf16 = fake_gelu_forward_bf16;
    ops.linear_forward_bf16 = fake_linear_forward_bf16;
    ops.linear_backward_bf16 = fake_linear_backward_bf16;
    ops.gelu_linear_backward_bf16 = fake_gelu_linear_backward_bf16;
    ops.attention_forward_bf16 = fake_attention_forward_bf16;
    ops.attention_backward_bf16 = fake_attention_backward_bf16;
  }
  return &ops;
}

#endif /* QT_TEST_FAKE_DEVICE_H */

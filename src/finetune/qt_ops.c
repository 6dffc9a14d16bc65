/*
 * qt_ops.c - the op tables of the backend interface (qt__ops in
 * qt_finetune_internal.h): the CPU table wraps the qt_cpu_* references in
 * the signatures of the CUDA ops, the CUDA table is the qt_cuda_* functions
 * themselves.
 */
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"

/* ------------------------------------------------------------------------- */
/* CPU: host memory                                                           */
/* ------------------------------------------------------------------------- */

static int cpu_alloc(void **ptr, size_t bytes, qt_err *err) {
  *ptr = NULL;
  if (bytes == 0) return 0;
  if (!(*ptr = malloc(bytes)))
    return qt_err_set(err, QT_ENOMEM, "out of host memory for %zu bytes", bytes);
  return 0;
}

static void cpu_release(void *ptr) {
  free(ptr);
}

static int cpu_zero(void *ptr, size_t bytes, qt_err *err) {
  (void)err;
  if (bytes) memset(ptr, 0, bytes);
  return 0;
}

/* Copies within host memory, to and from it alike. */
static int cpu_copy(void *dst, const void *src, size_t bytes, qt_err *err) {
  (void)err;
  if (bytes) memcpy(dst, src, bytes);
  return 0;
}

static int cpu_copy_rows(float *dst, size_t dst_stride, const float *src, size_t src_stride,
                         size_t cols, size_t rows, qt_err *err) {
  (void)err;
  for (size_t r = 0; r < rows; r++)
    memcpy(dst + r * dst_stride, src + r * src_stride, cols * sizeof *dst);
  return 0;
}

/* ------------------------------------------------------------------------- */
/* CPU: the layer ops                                                         */
/* ------------------------------------------------------------------------- */

static int cpu_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                              size_t n, size_t in_c, size_t out_c, qt_err *err) {
  (void)err;
  qt_cpu_linear_forward(out, inp, weight, bias, n, in_c, out_c);
  return 0;
}

static int cpu_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, size_t n, size_t in_c,
                               size_t out_c, qt_err *err) {
  (void)err;
  qt_cpu_linear_backward(dinp, dweight, dbias, dout, inp, weight, n, in_c, out_c);
  return 0;
}

static int cpu_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                                 const float *weight, const float *bias, size_t n, size_t c,
                                 float eps, qt_err *err) {
  (void)err;
  qt_cpu_layernorm_forward(out, mean, rstd, inp, weight, bias, n, c, eps);
  return 0;
}

static int cpu_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                  const float *inp, const float *weight, const float *mean,
                                  const float *rstd, size_t n, size_t c, qt_err *err) {
  (void)err;
  qt_cpu_layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, n, c);
  return 0;
}

static int cpu_gelu_forward(float *out, const float *inp, size_t n, qt_err *err) {
  (void)err;
  qt_cpu_gelu_forward(out, inp, n);
  return 0;
}

static int cpu_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n,
                             qt_err *err) {
  (void)err;
  qt_cpu_gelu_backward(dinp, dout, inp, n);
  return 0;
}

/* The CPU's attention backward reuses one score matrix for every head. */
static size_t cpu_attention_scratch_size(size_t tokens, size_t heads) {
  (void)heads;
  return tokens * tokens;
}

static int cpu_attention_forward(float *out, float *att, const float *qkv, size_t batch,
                                 size_t tokens, size_t c, size_t heads, qt_err *err) {
  (void)err;
  qt_cpu_attention_forward(out, att, qkv, batch, tokens, c, heads);
  return 0;
}

static int cpu_attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                                  const float *att, size_t batch, size_t tokens, size_t c,
                                  size_t heads, qt_err *err) {
  (void)err;
  qt_cpu_attention_backward(dqkv, scratch, dout, qkv, att, batch, tokens, c, heads);
  return 0;
}

static int cpu_residual_forward(float *out, const float *res, const float *branch,
                                const float *gamma, size_t n, size_t c, qt_err *err) {
  (void)err;
  qt_cpu_residual_forward(out, res, branch, gamma, n, c);
  return 0;
}

static int cpu_residual_backward(float *dres, float *dbranch, float *dgamma, const float *dout,
                                 const float *branch, const float *gamma, size_t n, size_t c,
                                 qt_err *err) {
  (void)err;
  qt_cpu_residual_backward(dres, dbranch, dgamma, dout, branch, gamma, n, c);
  return 0;
}

static int cpu_patchify(float *patches, const float *images, size_t batch, size_t channels,
                        size_t size, size_t patch, qt_err *err) {
  (void)err;
  qt_cpu_patchify(patches, images, batch, channels, size, patch);
  return 0;
}

static int cpu_tokens_forward(float *x, const float *patch_tokens, const float *cls_token,
                              const float *pos, int class_in_pos, size_t batch, size_t patches,
                              size_t c, qt_err *err) {
  (void)err;
  qt_cpu_tokens_forward(x, patch_tokens, cls_token, pos, class_in_pos, batch, patches, c);
  return 0;
}

static int cpu_tokens_backward(float *dpatch_tokens, float *dcls_token, float *dpos,
                               const float *dx, int class_in_pos, size_t batch, size_t patches,
                               size_t c, qt_err *err) {
  (void)err;
  qt_cpu_tokens_backward(dpatch_tokens, dcls_token, dpos, dx, class_in_pos, batch, patches, c);
  return 0;
}

static int cpu_cross_entropy_forward(float *losses, float *probs, const float *logits,
                                     const int *labels, const float *soft_targets, float smoothing,
                                     size_t batch, size_t classes, qt_err *err) {
  (void)err;
  qt_cpu_cross_entropy_forward(losses, probs, logits, labels, soft_targets, smoothing, batch,
                               classes);
  return 0;
}

static int cpu_cross_entropy_backward(float *dlogits, const float *probs, const int *labels,
                                      const float *soft_targets, float smoothing,
                                      const float *dloss, int dloss_per_row, size_t batch,
                                      size_t classes, qt_err *err) {
  (void)err;
  qt_cpu_cross_entropy_backward(dlogits, probs, labels, soft_targets, smoothing, dloss,
                                dloss_per_row, batch, classes);
  return 0;
}

/* ------------------------------------------------------------------------- */
/* The tables                                                                 */
/* ------------------------------------------------------------------------- */

static const qt__ops cpu_ops = {
    .name = "cpu",
    .host_memory = 1,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .zero = cpu_zero,
    .copy = cpu_copy,
    .copy_rows = cpu_copy_rows,
    .upload = cpu_copy,
    .download = cpu_copy,
    .linear_forward = cpu_linear_forward,
    .linear_backward = cpu_linear_backward,
    .layernorm_forward = cpu_layernorm_forward,
    .layernorm_backward = cpu_layernorm_backward,
    .gelu_forward = cpu_gelu_forward,
    .gelu_backward = cpu_gelu_backward,
    .attention_scratch_size = cpu_attention_scratch_size,
    .attention_forward = cpu_attention_forward,
    .attention_backward = cpu_attention_backward,
    .residual_forward = cpu_residual_forward,
    .residual_backward = cpu_residual_backward,
    .patchify = cpu_patchify,
    .tokens_forward = cpu_tokens_forward,
    .tokens_backward = cpu_tokens_backward,
    .cross_entropy_forward = cpu_cross_entropy_forward,
    .cross_entropy_backward = cpu_cross_entropy_backward,
    .adamw_step = qt_cpu_adamw_step,
};

static const qt__ops cuda_ops = {
    .name = "cuda",
    .host_memory = 0,
    .alloc = qt_cuda_malloc,
    .release = qt_cuda_free,
    .zero = qt_cuda_zero,
    .copy = qt_cuda_copy_on_device,
    .copy_rows = qt_cuda_copy_rows,
    .upload = qt_cuda_copy_to_device,
    .download = qt_cuda_copy_to_host,
    .linear_forward = qt_cuda_linear_forward,
    .linear_backward = qt_cuda_linear_backward,
    .layernorm_forward = qt_cuda_layernorm_forward,
    .layernorm_backward = qt_cuda_layernorm_backward,
    .gelu_forward = qt_cuda_gelu_forward,
    .gelu_backward = qt_cuda_gelu_backward,
    .attention_scratch_size = qt_cuda_attention_scratch_size,
    .attention_forward = qt_cuda_attention_forward,
    .attention_backward = qt_cuda_attention_backward,
    .residual_forward = qt_cuda_residual_forward,
    .residual_backward = qt_cuda_residual_backward,
    .patchify = qt_cuda_patchify,
    .tokens_forward = qt_cuda_tokens_forward,
    .tokens_backward = qt_cuda_tokens_backward,
    .cross_entropy_forward = qt_cuda_cross_entropy_forward,
    .cross_entropy_backward = qt_cuda_cross_entropy_backward,
    .adamw_step = qt_cuda_adamw_step,
};

const qt__ops *qt__ops_cpu(void) {
  return &cpu_ops;
}

const qt__ops *qt__ops_cuda(void) {
  return &cuda_ops;
}

const qt__ops *qt__ops_for(qt_backend_kind kind) {
  return kind == QT_BACKEND_KIND_CUDA ? &cuda_ops : &cpu_ops;
}

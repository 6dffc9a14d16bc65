/*
 * qt_ops.c - the op tables of the backend interface (qt__ops in
 * qt_finetune_internal.h): the CPU table wraps the qt_cpu_* references in
 * the signatures of the CUDA ops, the CUDA table is the qt_cuda_* functions
 * themselves.
 */
#include <stdio.h>
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

/* The CPU's backward passes add; `set` zeroes first. */
static int cpu_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, size_t n, size_t in_c,
                               size_t out_c, int set, qt_err *err) {
  (void)err;
  if (set && dinp) memset(dinp, 0, n * in_c * sizeof *dinp);
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

static int cpu_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n, int set,
                             qt_err *err) {
  (void)err;
  if (set) memset(dinp, 0, n * sizeof *dinp);
  qt_cpu_gelu_backward(dinp, dout, inp, n);
  return 0;
}

/* The CPU's attention backward reuses one score matrix for every head. */
static size_t cpu_attention_scratch_size(size_t batch, size_t tokens, size_t heads) {
  (void)batch;
  (void)heads;
  return tokens * tokens;
}

static int cpu_attention_forward(float *out, float *att, const float *qkv, size_t batch,
                                 size_t tokens, size_t c, size_t heads, qt_err *err) {
  (void)err;
  qt_cpu_attention_forward(out, att, qkv, batch, tokens, c, heads);
  return 0;
}

/* From the probabilities in att; out is not needed. */
static int cpu_attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                                  const float *att, const float *out, size_t batch, size_t tokens,
                                  size_t c, size_t heads, int set, qt_err *err) {
  (void)out, (void)err;
  if (set) memset(dqkv, 0, batch * tokens * 3 * c * sizeof *dqkv);
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
/* CPU: the convolutional layer ops                                           */
/* ------------------------------------------------------------------------- */

static int cpu_conv2d_forward(float *out, float *scratch, const float *inp, const float *weight,
                              const float *bias, const qt_conv2d_shape *shape, qt_err *err) {
  (void)err;
  qt_cpu_conv2d_forward(out, scratch, inp, weight, bias, shape);
  return 0;
}

static int cpu_conv2d_backward(float *dinp, float *dweight, float *dbias, float *scratch,
                               const float *dout, const float *inp, const float *weight,
                               const qt_conv2d_shape *shape, int set, qt_err *err) {
  (void)err;
  if (set && dinp)
    memset(dinp, 0, shape->batch * shape->in_c * shape->in_h * shape->in_w * sizeof *dinp);
  qt_cpu_conv2d_backward(dinp, dweight, dbias, scratch, dout, inp, weight, shape);
  return 0;
}

static int cpu_batchnorm_forward(float *out, float *mean, float *rstd, float *running_mean,
                                 float *running_var, const float *inp, const float *weight,
                                 const float *bias, size_t batch, size_t c, size_t hw, float eps,
                                 float momentum, qt_batchnorm_mode mode, qt_err *err) {
  (void)err;
  qt_cpu_batchnorm_forward(out, mean, rstd, running_mean, running_var, inp, weight, bias, batch, c,
                           hw, eps, momentum, mode);
  return 0;
}

static int cpu_batchnorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                  const float *inp, const float *weight, const float *mean,
                                  const float *rstd, size_t batch, size_t c, size_t hw,
                                  qt_batchnorm_mode mode, int set, qt_err *err) {
  (void)err;
  if (set && dinp) memset(dinp, 0, batch * c * hw * sizeof *dinp);
  qt_cpu_batchnorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, batch, c, hw,
                            mode);
  return 0;
}

static int cpu_stochnorm_forward(float *out, float *mean, float *rstd, float *running_mean,
                                 float *running_var, const float *inp, const float *weight,
                                 const float *bias, const unsigned char *select, size_t batch,
                                 size_t c, size_t hw, float eps, float momentum, qt_err *err) {
  (void)err;
  qt_cpu_stochnorm_forward(out, mean, rstd, running_mean, running_var, inp, weight, bias, select,
                           batch, c, hw, eps, momentum);
  return 0;
}

static int cpu_stochnorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                  const float *inp, const float *weight, const float *mean,
                                  const float *rstd, const unsigned char *select, size_t batch,
                                  size_t c, size_t hw, int set, qt_err *err) {
  (void)err;
  if (set && dinp) memset(dinp, 0, batch * c * hw * sizeof *dinp);
  qt_cpu_stochnorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, select, batch, c,
                            hw);
  return 0;
}

/* The elementwise activations: forward (out, inp, n), backward (dinp, dout,
 * inp, n, set). */
#define CPU_ACTIVATION(name)                                                                   \
  static int cpu_##name##_forward(float *out, const float *inp, size_t n, qt_err *err) {       \
    (void)err;                                                                                 \
    qt_cpu_##name##_forward(out, inp, n);                                                      \
    return 0;                                                                                  \
  }                                                                                            \
  static int cpu_##name##_backward(float *dinp, const float *dout, const float *inp, size_t n, \
                                   int set, qt_err *err) {                                     \
    (void)err;                                                                                 \
    if (set) memset(dinp, 0, n * sizeof *dinp);                                                \
    qt_cpu_##name##_backward(dinp, dout, inp, n);                                              \
    return 0;                                                                                  \
  }
CPU_ACTIVATION(relu)
CPU_ACTIVATION(relu6)
CPU_ACTIVATION(silu)
#undef CPU_ACTIVATION

static int cpu_global_avgpool_forward(float *out, const float *inp, size_t batch, size_t c,
                                      size_t hw, qt_err *err) {
  (void)err;
  qt_cpu_global_avgpool_forward(out, inp, batch, c, hw);
  return 0;
}

static int cpu_global_avgpool_backward(float *dinp, const float *dout, size_t batch, size_t c,
                                       size_t hw, qt_err *err) {
  (void)err;
  qt_cpu_global_avgpool_backward(dinp, dout, batch, c, hw);
  return 0;
}

static int cpu_maxpool2d_forward(float *out, int32_t *argmax, const float *inp,
                                 const qt_conv2d_shape *shape, qt_err *err) {
  (void)err;
  qt_cpu_maxpool2d_forward(out, argmax, inp, shape);
  return 0;
}

static int cpu_maxpool2d_backward(float *dinp, const float *dout, const int32_t *argmax,
                                  const qt_conv2d_shape *shape, qt_err *err) {
  (void)err;
  qt_cpu_maxpool2d_backward(dinp, dout, argmax, shape);
  return 0;
}

static int cpu_se_forward(float *out, float *pooled, float *hidden_pre, float *hidden, float *gate,
                          const float *inp, const float *w_reduce, const float *b_reduce,
                          const float *w_expand, const float *b_expand, size_t batch, size_t c,
                          size_t hw, size_t rd, qt_se_act act, qt_err *err) {
  (void)err;
  qt_cpu_se_forward(out, pooled, hidden_pre, hidden, gate, inp, w_reduce, b_reduce, w_expand,
                    b_expand, batch, c, hw, rd, act);
  return 0;
}

static int cpu_se_backward(float *dinp, float *dw_reduce, float *db_reduce, float *dw_expand,
                           float *db_expand, float *scratch, const float *dout, const float *inp,
                           const float *pooled, const float *hidden_pre, const float *hidden,
                           const float *gate, const float *w_reduce, const float *w_expand,
                           size_t batch, size_t c, size_t hw, size_t rd, qt_se_act act,
                           qt_err *err) {
  (void)err;
  qt_cpu_se_backward(dinp, dw_reduce, db_reduce, dw_expand, db_expand, scratch, dout, inp, pooled,
                     hidden_pre, hidden, gate, w_reduce, w_expand, batch, c, hw, rd, act);
  return 0;
}

/* ------------------------------------------------------------------------- */
/* CPU: a run's optimizer arithmetic                                          */
/* ------------------------------------------------------------------------- */

static int cpu_optim_steps(const qt_optim_params *p, const qt__optim_slice *slices, size_t count,
                           qt_err *err) {
  (void)err;
  for (size_t i = 0; i < count; i++) {
    const qt__optim_slice *s = &slices[i];
    qt_optim_tensor_step(p, s->lr, s->decay, s->step, s->params, s->grads, s->state1, s->state2,
                         s->n);
  }
  return 0;
}

/* Adds to *acc in double, element by element in order (a run's clipping
 * sums every tensor into one accumulator, backend memory, downloaded once). */
static int cpu_sum_squares(const float *x, size_t n, double *acc, qt_err *err) {
  (void)err;
  double sum = *acc;
  for (size_t i = 0; i < n; i++) sum += (double)x[i] * (double)x[i];
  *acc = sum;
  return 0;
}

static int cpu_scale(float *x, float c, size_t n, qt_err *err) {
  (void)err;
  for (size_t i = 0; i < n; i++) x[i] *= c;
  return 0;
}

static int cpu_l2sp_gradient(float *grads, const float *params, const float *ref, size_t n,
                             double c, qt_err *err) {
  (void)err;
  qt_optim_l2sp_gradient(grads, params, ref, n, c);
  return 0;
}

static int cpu_sfa_average(float *params, const float *ref, size_t n, double beta, qt_err *err) {
  (void)err;
  qt_sfa_average(params, ref, n, beta);
  return 0;
}

static int cpu_axpy(float *x, float a, const float *y, size_t n, qt_err *err) {
  (void)err;
  for (size_t i = 0; i < n; i++) x[i] += a * y[i];
  return 0;
}

static int cpu_goodfit_project(float *grads, const float *delta, size_t n, double *stats,
                               qt_err *err) {
  (void)stats;
  (void)err;
  qt_goodfit_project(grads, delta, n);
  return 0;
}

static int cpu_lora_merge(float *w, const float *w0, const float *a, const float *b, size_t out,
                          size_t in, size_t rank, double scale, qt_err *err) {
  (void)err;
  qt_lora_merge(w, w0, a, b, out, in, rank, scale);
  return 0;
}

static int cpu_lora_gradients(const float *dw, const float *a, const float *b, size_t out,
                              size_t in, size_t rank, double scale, float *ga, float *gb,
                              qt_err *err) {
  (void)err;
  qt_lora_gradients(dw, a, b, out, in, rank, scale, ga, gb);
  return 0;
}

static int cpu_spd_stats(const float *params, const float *grads, const float *ref, size_t n,
                         double *stats, qt_err *err) {
  (void)err;
  qt_optim_spd_stats(params, grads, ref, n, stats);
  return 0;
}

static int cpu_spd_project(float *params, const float *ref, size_t n, double lambda, double *stats,
                           qt_err *err) {
  (void)err;
  qt_optim_spd_project(params, ref, n, lambda, stats);
  return 0;
}

static int cpu_mul(float *out, const float *a, const float *b, size_t n, qt_err *err) {
  (void)err;
  for (size_t i = 0; i < n; i++) out[i] = a[i] * b[i];
  return 0;
}

static int cpu_mul_add(float *acc, const float *a, const float *b, size_t n, qt_err *err) {
  (void)err;
  for (size_t i = 0; i < n; i++) acc[i] += a[i] * b[i];
  return 0;
}

static qt_matmul_precision cpu_set_matmul_precision(qt_matmul_precision precision) {
  (void)precision;
  return QT_MATMUL_FP32;
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
    .optim_steps = cpu_optim_steps,
    .sum_squares = cpu_sum_squares,
    .scale = cpu_scale,
    .l2sp_gradient = cpu_l2sp_gradient,
    .sfa_average = cpu_sfa_average,
    .mul = cpu_mul,
    .mul_add = cpu_mul_add,
    .axpy = cpu_axpy,
    .lora_merge = cpu_lora_merge,
    .lora_gradients = cpu_lora_gradients,
    .goodfit_project = cpu_goodfit_project,
    .spd_stats = cpu_spd_stats,
    .spd_project = cpu_spd_project,
    .set_matmul_precision = cpu_set_matmul_precision,
    .conv2d_scratch_size = qt_cpu_conv2d_scratch_size,
    .conv2d_forward = cpu_conv2d_forward,
    .conv2d_backward = cpu_conv2d_backward,
    .batchnorm_forward = cpu_batchnorm_forward,
    .batchnorm_backward = cpu_batchnorm_backward,
    .stochnorm_forward = cpu_stochnorm_forward,
    .stochnorm_backward = cpu_stochnorm_backward,
    .relu_forward = cpu_relu_forward,
    .relu_backward = cpu_relu_backward,
    .relu6_forward = cpu_relu6_forward,
    .relu6_backward = cpu_relu6_backward,
    .silu_forward = cpu_silu_forward,
    .silu_backward = cpu_silu_backward,
    .global_avgpool_forward = cpu_global_avgpool_forward,
    .global_avgpool_backward = cpu_global_avgpool_backward,
    .maxpool2d_forward = cpu_maxpool2d_forward,
    .maxpool2d_backward = cpu_maxpool2d_backward,
    .se_forward = cpu_se_forward,
    .se_backward = cpu_se_backward,
};

/* The CUDA table's streams: qt_cuda_stream_t behind the table's void *. */
static int cuda_stream_create(void **out, qt_err *err) {
  qt_cuda_stream_t *s = NULL;
  int rc = qt_cuda_stream_create(&s, err);
  *out = s;
  return rc;
}
static void *cuda_stream_use(void *stream) {
  return qt_cuda_stream_use(stream);
}
static void cuda_stream_destroy(void *stream) {
  qt_cuda_stream_destroy(stream);
}

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
    .pin = qt_cuda_host_register,
    .unpin = qt_cuda_host_unregister,
    .stream_create = cuda_stream_create,
    .stream_use = cuda_stream_use,
    .stream_destroy = cuda_stream_destroy,
    .upload_async = qt_cuda_upload_async,
    .upload_wait = qt_cuda_upload_wait,
    .linear_forward = qt_cuda_linear_forward,
    .linear_backward = qt__cuda_linear_backward,
    .layernorm_forward = qt_cuda_layernorm_forward,
    .layernorm_backward = qt_cuda_layernorm_backward,
    .gelu_forward = qt_cuda_gelu_forward,
    .gelu_backward = qt__cuda_gelu_backward,
    .bf16_activations = qt__cuda_bf16_activations,
    .layernorm_forward_bf16 = qt__cuda_layernorm_forward_bf16,
    .layernorm_backward_bf16 = qt__cuda_layernorm_backward_bf16,
    .gelu_forward_bf16 = qt__cuda_gelu_forward_bf16,
    .linear_forward_bf16 = qt__cuda_linear_forward_bf16,
    .linear_backward_bf16 = qt__cuda_linear_backward_bf16,
    .gelu_linear_backward_bf16 = qt__cuda_gelu_linear_backward_bf16,
    .attention_forward_bf16 = qt__cuda_attention_op_forward_bf16,
    .attention_backward_bf16 = qt__cuda_attention_op_backward_bf16,
    .attention_saved_size = qt__cuda_attention_saved_size,
    .attention_scratch_size = qt_cuda_attention_scratch_size,
    .attention_forward = qt__cuda_attention_op_forward,
    .attention_backward = qt__cuda_attention_op_backward,
    .residual_forward = qt_cuda_residual_forward,
    .residual_backward = qt_cuda_residual_backward,
    .residual_layernorm_forward = qt__cuda_residual_layernorm_forward,
    .patchify = qt_cuda_patchify,
    .tokens_forward = qt_cuda_tokens_forward,
    .tokens_backward = qt_cuda_tokens_backward,
    .cross_entropy_forward = qt_cuda_cross_entropy_forward,
    .cross_entropy_backward = qt_cuda_cross_entropy_backward,
    .optim_steps = qt__cuda_optim_steps,
    .sum_squares = qt_cuda_sum_squares,
    .scale = qt_cuda_scale,
    .l2sp_gradient = qt_cuda_l2sp_gradient,
    .sfa_average = qt_cuda_sfa_average,
    .mul = qt_cuda_mul,
    .mul_add = qt_cuda_mul_add,
    .axpy = qt_cuda_axpy,
    .lora_merge = qt_cuda_lora_merge,
    .lora_gradients = qt_cuda_lora_gradients,
    .goodfit_project = qt_cuda_goodfit_project,
    .spd_stats = qt_cuda_spd_stats,
    .spd_project = qt_cuda_spd_project,
    .set_matmul_precision = qt_cuda_set_matmul_precision,
    .conv2d_scratch_size = qt_cuda_conv2d_scratch_size,
    .conv2d_forward = qt_cuda_conv2d_forward,
    .conv2d_backward = qt__cuda_conv2d_backward,
    .batchnorm_forward = qt_cuda_batchnorm_forward,
    .batchnorm_backward = qt__cuda_batchnorm_backward,
    .stochnorm_forward = qt_cuda_stochnorm_forward,
    .stochnorm_backward = qt__cuda_stochnorm_backward,
    .relu_forward = qt_cuda_relu_forward,
    .relu_backward = qt__cuda_relu_backward,
    .relu6_forward = qt_cuda_relu6_forward,
    .relu6_backward = qt__cuda_relu6_backward,
    .silu_forward = qt_cuda_silu_forward,
    .silu_backward = qt__cuda_silu_backward,
    .global_avgpool_forward = qt_cuda_global_avgpool_forward,
    .global_avgpool_backward = qt_cuda_global_avgpool_backward,
    .maxpool2d_forward = qt_cuda_maxpool2d_forward,
    .maxpool2d_backward = qt_cuda_maxpool2d_backward,
    .se_forward = qt_cuda_se_forward,
    .se_backward = qt_cuda_se_backward,
};

int qt__ops_move(const qt__ops *from, const qt__ops *to, void *dst, const void *src, void *staging,
                 size_t bytes, qt_err *err) {
  if (from->host_memory) return to->upload(dst, src, bytes, err);
  if (to->host_memory) return from->download(dst, src, bytes, err);
  int rc = from->download(staging, src, bytes, err);
  return rc < 0 ? rc : to->upload(dst, staging, bytes, err);
}

int qt__ops_move_arrays(const qt__ops *from, const qt__ops *to, void *const *dst,
                        const void *const *src, size_t count, size_t bytes, const char *family,
                        qt_err *err) {
  void *staging = NULL;
  if (!from->host_memory && !to->host_memory && bytes && !(staging = malloc(bytes)))
    return qt_err_set(err, QT_ENOMEM, "%s: out of host memory to move %zu bytes", family, bytes);
  int rc = 0;
  for (size_t k = 0; k < count && rc == 0; k++)
    rc = qt__ops_move(from, to, dst[k], src[k], staging, bytes, err);
  free(staging);
  return rc;
}

const qt__ops *qt__ops_cpu(void) {
  return &cpu_ops;
}

const qt__ops *qt__ops_cuda(void) {
  return &cuda_ops;
}

const qt__ops *qt__ops_for(qt_backend_kind kind) {
  return kind == QT_BACKEND_KIND_CUDA ? &cuda_ops : &cpu_ops;
}

void qt_cuda_describe_convolutions(qt_matmul_precision precision, char *out, size_t size) {
  int version = 0;
  char why[256];
  if (!out || size == 0) return;
  if (!QT_HAVE_CUDA)
    snprintf(out, size, "none (built without CUDA)");
  else if (!qt__cuda_cudnn_switched_on())
    snprintf(out, size, "im2col and cuBLAS (QT_CUDA_CUDNN=0)");
  else if (precision == QT_MATMUL_BF16 || precision == QT_MATMUL_BF16_FAST)
    snprintf(out, size, "im2col and cuBLAS (cuDNN is not used for BF16 products)");
  else if (!qt__cuda_cudnn_loaded(&version, why, sizeof why))
    snprintf(out, size, "im2col and cuBLAS (no cuDNN: %s)", why);
  else
    snprintf(out, size,
             "cuDNN %d.%d.%d where it takes the shape (dense and grouped, symmetric padding), "
             "im2col and cuBLAS for the rest",
             version / 10000, version / 100 % 100, version % 100);
}

/*
 * qt_cuda_stub.c - the CUDA half of the finetune module when qtune is built
 * without CUDA (QT_CUDA=OFF, or no toolkit found). Every qt_cuda_* function
 * exists so that callers and tests need no #ifdef: the device query reports
 * no device and every op returns QT_ENODEV.
 */
#include <stdio.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"

#define QT_CUDA_STUB_MESSAGE "qtune was built without CUDA (QT_CUDA=OFF or no toolkit)"

int qt_cuda_device_count(int *count, qt_err *err) {
  if (!count) return qt_err_set(err, QT_EINVAL, "qt_cuda_device_count: count is NULL");
  *count = 0;
  QT_LOG_DEBUG("no CUDA device: %s", QT_CUDA_STUB_MESSAGE);
  return 0;
}

int qt_cuda_select_device(int index, qt_err *err) {
  return qt_err_set(err, QT_ENODEV, "cuda:%d: no CUDA device: " QT_CUDA_STUB_MESSAGE, index);
}

int qt_cuda_device_info(qt_cuda_info *info, qt_err *err) {
  (void)info;
  return qt_err_set(err, QT_ENODEV, "qt_cuda_device_info: " QT_CUDA_STUB_MESSAGE);
}

int qt_cuda_adamw_step(float *params, const float *grads, float *m, float *v, size_t n,
                       const qt_adamw_params *hp, long step, qt_err *err) {
  return qt_err_set(err, QT_ENODEV, "qt_cuda_adamw_step: " QT_CUDA_STUB_MESSAGE);
}

int qt_cuda_adamw_step_host(float *params, const float *grads, float *m, float *v, size_t n,
                            const qt_adamw_params *hp, long step, qt_err *err) {
  return qt_err_set(err, QT_ENODEV, "qt_cuda_adamw_step_host: " QT_CUDA_STUB_MESSAGE);
}

/* ------------------------------------------------------------------------- */
/* Device memory and the layer ops (see "CUDA layer ops" in qt_finetune.h)    */
/* ------------------------------------------------------------------------- */

#define QT_CUDA_STUB(name) qt_err_set(err, QT_ENODEV, name ": " QT_CUDA_STUB_MESSAGE)

int qt_cuda_malloc(void **ptr, size_t bytes, qt_err *err) {
  if (ptr) *ptr = NULL;
  (void)bytes;
  return QT_CUDA_STUB("qt_cuda_malloc");
}

void qt_cuda_free(void *ptr) {
  (void)ptr;
}

int qt_cuda_copy_to_device(void *dst, const void *src, size_t bytes, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_copy_to_device");
}

int qt_cuda_copy_to_host(void *dst, const void *src, size_t bytes, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_copy_to_host");
}

int qt_cuda_zero(void *ptr, size_t bytes, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_zero");
}

int qt_cuda_copy_on_device(void *dst, const void *src, size_t bytes, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_copy_on_device");
}

int qt_cuda_copy_rows(float *dst, size_t dst_stride, const float *src, size_t src_stride,
                      size_t cols, size_t rows, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_copy_rows");
}

int qt_cuda_synchronize(qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_synchronize");
}

int qt_cuda_host_register(void *ptr, size_t bytes, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_host_register");
}

void qt_cuda_host_unregister(void *ptr) {
  (void)ptr;
}

int qt_cuda_stream_create(qt_cuda_stream_t **out, qt_err *err) {
  if (out) *out = NULL;
  return QT_CUDA_STUB("qt_cuda_stream_create");
}

void qt_cuda_stream_destroy(qt_cuda_stream_t *s) {
  (void)s;
}

qt_cuda_stream_t *qt_cuda_stream_use(qt_cuda_stream_t *s) {
  (void)s;
  return NULL;
}

int qt_cuda_upload_async(void *dst, const void *src, size_t bytes, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_upload_async");
}

int qt_cuda_upload_wait(qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_upload_wait");
}

qt_matmul_precision qt_cuda_set_matmul_precision(qt_matmul_precision precision) {
  (void)precision;
  return QT_MATMUL_FP32;
}

int qt_cuda_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                           size_t n, size_t in_c, size_t out_c, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_linear_forward");
}

int qt_cuda_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, size_t n, size_t in_c,
                            size_t out_c, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_linear_backward");
}

int qt__cuda_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                             const float *inp, const float *weight, size_t n, size_t in_c,
                             size_t out_c, int set, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_linear_backward");
}

int qt_cuda_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                              const float *weight, const float *bias, size_t n, size_t c, float eps,
                              qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_layernorm_forward");
}

int qt_cuda_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, const float *mean,
                               const float *rstd, size_t n, size_t c, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_layernorm_backward");
}

int qt_cuda_gelu_forward(float *out, const float *inp, size_t n, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_gelu_forward");
}

int qt_cuda_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_gelu_backward");
}

int qt__cuda_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n, int set,
                           qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_gelu_backward");
}

size_t qt_cuda_attention_scratch_size(size_t batch, size_t tokens, size_t heads) {
  size_t scores = (batch > heads ? batch : heads) * tokens * tokens;
  return scores > batch * heads * tokens ? scores : batch * heads * tokens;
}

int qt_cuda_attention_forward(float *out, float *att, const float *qkv, size_t batch, size_t tokens,
                              size_t c, size_t heads, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_attention_forward");
}

int qt_cuda_attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                               const float *att, size_t batch, size_t tokens, size_t c,
                               size_t heads, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_attention_backward");
}

int qt__cuda_attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                                const float *att, size_t batch, size_t tokens, size_t c,
                                size_t heads, int set, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_attention_backward");
}

int qt__cuda_residual_layernorm_forward(float *out, void *norm, float *mean, float *rstd,
                                        const float *res, const void *branch, const float *gamma,
                                        const float *weight, const float *bias, size_t n, size_t c,
                                        float eps, unsigned bf16, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_residual_layernorm_forward");
}

int qt__cuda_attention_fused_fits(size_t batch, size_t tokens, size_t c, size_t heads) {
  return 0;
}

int qt__cuda_optim_steps(const qt_optim_params *p, const qt__optim_slice *slices, size_t count,
                         qt_err *err) {
  return QT_CUDA_STUB("qt__cuda_optim_steps");
}

int qt__cuda_attention_fused_forward(float *out, float *att, const float *qkv, size_t batch,
                                     size_t tokens, size_t c, size_t heads, qt_err *err) {
  return QT_CUDA_STUB("qt__cuda_attention_fused_forward");
}

int qt__cuda_attention_fused_backward(float *dqkv, float *scratch, const float *dout,
                                      const float *qkv, const float *att, const float *out,
                                      size_t batch, size_t tokens, size_t c, size_t heads, int set,
                                      qt_err *err) {
  return QT_CUDA_STUB("qt__cuda_attention_fused_backward");
}

size_t qt__cuda_attention_saved_size(size_t batch, size_t tokens, size_t c, size_t heads) {
  return batch * heads * tokens * tokens;
}

unsigned qt__cuda_bf16_activations(size_t batch, size_t tokens, size_t c, size_t heads) {
  return 0;
}

int qt__cuda_layernorm_forward_bf16(void *out, float *mean, float *rstd, const float *inp,
                                    const float *weight, const float *bias, size_t n, size_t c,
                                    float eps, unsigned bf16, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_layernorm_forward");
}

int qt__cuda_gelu_forward_bf16(void *out, const void *inp, size_t n, unsigned bf16, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_gelu_forward");
}

int qt__cuda_linear_forward_bf16(void *out, const void *inp, const float *weight, const float *bias,
                                 size_t n, size_t in_c, size_t out_c, unsigned bf16, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_linear_forward");
}

int qt__cuda_linear_backward_bf16(void *dinp, float *dweight, float *dbias, const void *dout,
                                  const void *inp, const float *weight, size_t n, size_t in_c,
                                  size_t out_c, int set, unsigned bf16, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_linear_backward");
}

int qt__cuda_gelu_linear_backward_bf16(void *dinp, float *dweight, float *dbias, float *dpre,
                                       const void *dout, const void *pre, const void *inp,
                                       const float *weight, size_t n, size_t in_c, size_t out_c,
                                       int set, unsigned bf16, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_gelu_linear_backward");
}

int qt__cuda_attention_op_forward_bf16(void *out, float *att, const void *qkv, size_t batch,
                                       size_t tokens, size_t c, size_t heads, unsigned bf16,
                                       qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_attention_forward");
}

int qt__cuda_attention_op_backward_bf16(void *dqkv, float *scratch, const void *dout,
                                        const void *qkv, const float *att, const void *out,
                                        size_t batch, size_t tokens, size_t c, size_t heads,
                                        int set, unsigned bf16, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_attention_backward");
}

int qt__cuda_attention_fused_forward_bf16(void *out, float *att, const void *qkv, size_t batch,
                                          size_t tokens, size_t c, size_t heads, unsigned bf16,
                                          qt_err *err) {
  return QT_CUDA_STUB("qt__cuda_attention_fused_forward");
}

int qt__cuda_attention_fused_backward_bf16(void *dqkv, float *scratch, const void *dout,
                                           const void *qkv, const float *att, const void *out,
                                           size_t batch, size_t tokens, size_t c, size_t heads,
                                           int set, unsigned bf16, qt_err *err) {
  return QT_CUDA_STUB("qt__cuda_attention_fused_backward");
}

int qt__cuda_set_fa_ds(int on) {
  return 0;
}

int qt__cuda_set_fa_async(int on) {
  return 0;
}

int qt__cuda_set_fused_attention(int on) {
  return 0;
}

int qt__cuda_set_bf16_qkv(int on) {
  return 0;
}

int qt__cuda_set_bf16_hidden(int on) {
  return 0;
}

int qt__cuda_set_bf16_hidden_grad(int on) {
  return 0;
}

int qt__cuda_set_bf16_norm_grad(int on) {
  return 0;
}

int qt__cuda_set_bf16_attention_grad(int on) {
  return 0;
}

int qt__cuda_set_bf16_branch(int on) {
  return 0;
}

int qt__cuda_layernorm_backward_bf16(float *dinp, float *dweight, float *dbias, const void *dout,
                                     const float *inp, const float *weight, const float *mean,
                                     const float *rstd, size_t n, size_t c, unsigned bf16,
                                     qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_layernorm_backward");
}

int qt__cuda_set_layernorm_rows(int on) {
  return 0;
}

int qt__cuda_set_layernorm_shared_sums(int on) {
  return 0;
}

int qt__cuda_attention_op_forward(float *out, float *att, const float *qkv, size_t batch,
                                  size_t tokens, size_t c, size_t heads, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_attention_forward");
}

int qt__cuda_attention_op_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                                   const float *att, const float *out, size_t batch, size_t tokens,
                                   size_t c, size_t heads, int set, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_attention_backward");
}

int qt_cuda_residual_forward(float *out, const float *res, const float *branch, const float *gamma,
                             size_t n, size_t c, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_residual_forward");
}

int qt_cuda_residual_backward(float *dres, float *dbranch, float *dgamma, const float *dout,
                              const float *branch, const float *gamma, size_t n, size_t c,
                              qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_residual_backward");
}

int qt_cuda_patchify(float *patches, const float *images, size_t batch, size_t channels,
                     size_t size, size_t patch, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_patchify");
}

int qt_cuda_tokens_forward(float *x, const float *patch_tokens, const float *cls_token,
                           const float *pos, int class_in_pos, size_t batch, size_t patches,
                           size_t c, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_tokens_forward");
}

int qt_cuda_tokens_backward(float *dpatch_tokens, float *dcls_token, float *dpos, const float *dx,
                            int class_in_pos, size_t batch, size_t patches, size_t c, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_tokens_backward");
}

int qt_cuda_cross_entropy_forward(float *losses, float *probs, const float *logits,
                                  const int *labels, const float *soft_targets, float smoothing,
                                  size_t batch, size_t classes, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_cross_entropy_forward");
}

int qt_cuda_cross_entropy_backward(float *dlogits, const float *probs, const int *labels,
                                   const float *soft_targets, float smoothing, const float *dloss,
                                   int dloss_per_row, size_t batch, size_t classes, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_cross_entropy_backward");
}

/* ------------------------------------------------------------------------- */
/* Convolutional layer ops (see "CUDA convolutional layer ops")               */
/* ------------------------------------------------------------------------- */

size_t qt_cuda_conv2d_scratch_size(const qt_conv2d_shape *shape) {
  int pointwise = shape->kernel_h == 1 && shape->kernel_w == 1 && shape->stride_h == 1 &&
                  shape->stride_w == 1 && shape->pad_top == 0 && shape->pad_left == 0 &&
                  shape->out_h == shape->in_h && shape->out_w == shape->in_w;
  if (shape->in_c == shape->groups || pointwise) return 0;
  return shape->in_c * shape->kernel_h * shape->kernel_w * shape->out_h * shape->out_w;
}

int qt_cuda_conv2d_forward(float *out, float *scratch, const float *inp, const float *weight,
                           const float *bias, const qt_conv2d_shape *shape, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_conv2d_forward");
}

int qt_cuda_conv2d_backward(float *dinp, float *dweight, float *dbias, float *scratch,
                            const float *dout, const float *inp, const float *weight,
                            const qt_conv2d_shape *shape, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_conv2d_backward");
}

int qt_cuda_batchnorm_forward(float *out, float *mean, float *rstd, float *running_mean,
                              float *running_var, const float *inp, const float *weight,
                              const float *bias, size_t batch, size_t c, size_t hw, float eps,
                              float momentum, qt_batchnorm_mode mode, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_batchnorm_forward");
}

int qt_cuda_batchnorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, const float *mean,
                               const float *rstd, size_t batch, size_t c, size_t hw,
                               qt_batchnorm_mode mode, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_batchnorm_backward");
}

int qt_cuda_stochnorm_forward(float *out, float *mean, float *rstd, float *running_mean,
                              float *running_var, const float *inp, const float *weight,
                              const float *bias, const unsigned char *select, size_t batch,
                              size_t c, size_t hw, float eps, float momentum, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_stochnorm_forward");
}

int qt_cuda_stochnorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, const float *mean,
                               const float *rstd, const unsigned char *select, size_t batch,
                               size_t c, size_t hw, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_stochnorm_backward");
}

int qt_cuda_relu_forward(float *out, const float *inp, size_t n, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_relu_forward");
}

int qt_cuda_relu_backward(float *dinp, const float *dout, const float *inp, size_t n, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_relu_backward");
}

int qt_cuda_relu6_forward(float *out, const float *inp, size_t n, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_relu6_forward");
}

int qt_cuda_relu6_backward(float *dinp, const float *dout, const float *inp, size_t n,
                           qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_relu6_backward");
}

int qt_cuda_silu_forward(float *out, const float *inp, size_t n, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_silu_forward");
}

int qt_cuda_silu_backward(float *dinp, const float *dout, const float *inp, size_t n, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_silu_backward");
}

int qt_cuda_global_avgpool_forward(float *out, const float *inp, size_t batch, size_t c, size_t hw,
                                   qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_global_avgpool_forward");
}

int qt_cuda_global_avgpool_backward(float *dinp, const float *dout, size_t batch, size_t c,
                                    size_t hw, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_global_avgpool_backward");
}

int qt_cuda_maxpool2d_forward(float *out, int32_t *argmax, const float *inp,
                              const qt_conv2d_shape *shape, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_maxpool2d_forward");
}

int qt_cuda_maxpool2d_backward(float *dinp, const float *dout, const int32_t *argmax,
                               const qt_conv2d_shape *shape, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_maxpool2d_backward");
}

int qt_cuda_se_forward(float *out, float *pooled, float *hidden_pre, float *hidden, float *gate,
                       const float *inp, const float *w_reduce, const float *b_reduce,
                       const float *w_expand, const float *b_expand, size_t batch, size_t c,
                       size_t hw, size_t rd, qt_se_act act, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_se_forward");
}

int qt_cuda_se_backward(float *dinp, float *dw_reduce, float *db_reduce, float *dw_expand,
                        float *db_expand, float *scratch, const float *dout, const float *inp,
                        const float *pooled, const float *hidden_pre, const float *hidden,
                        const float *gate, const float *w_reduce, const float *w_expand,
                        size_t batch, size_t c, size_t hw, size_t rd, qt_se_act act, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_se_backward");
}

/* ------------------------------------------------------------------------- */
/* A run's optimizer arithmetic (see qt_cuda_optim_tensor_step)              */
/* ------------------------------------------------------------------------- */

int qt_cuda_optim_tensor_step(const qt_optim_params *p, double lr, int decay, long step,
                              float *params, const float *grads, float *state1, float *state2,
                              size_t n, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_optim_tensor_step");
}

int qt_cuda_sum_squares(const float *x, size_t n, double *acc, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_sum_squares");
}

int qt_cuda_axpy(float *x, float a, const float *y, size_t n, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_axpy");
}

int qt_cuda_goodfit_project(float *grads, const float *delta, size_t n, double *stats,
                            qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_goodfit_project");
}

int qt_cuda_lora_merge(float *w, const float *w0, const float *a, const float *b, size_t out,
                       size_t in, size_t rank, double scale, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_lora_merge");
}

int qt_cuda_lora_gradients(const float *dw, const float *a, const float *b, size_t out, size_t in,
                           size_t rank, double scale, float *ga, float *gb, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_lora_gradients");
}

int qt_cuda_spd_stats(const float *params, const float *grads, const float *ref, size_t n,
                      double *stats, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_spd_stats");
}

int qt_cuda_spd_project(float *params, const float *ref, size_t n, double lambda, double *stats,
                        qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_spd_project");
}

int qt_cuda_scale(float *x, float c, size_t n, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_scale");
}

int qt_cuda_l2sp_gradient(float *grads, const float *params, const float *ref, size_t n, double c,
                          qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_l2sp_gradient");
}

int qt_cuda_sfa_average(float *params, const float *ref, size_t n, double beta, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_sfa_average");
}

int qt_cuda_mul(float *out, const float *a, const float *b, size_t n, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_mul");
}

int qt_cuda_mul_add(float *acc, const float *a, const float *b, size_t n, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_mul_add");
}

int qt__cuda_set_lt_bias(int on) {
  return 0;
}

long qt__cuda_linear_lt_count(void) {
  return 0;
}

long qt__cuda_linear_lt_queries(void) {
  return 0;
}

int qt__cuda_set_keep_weights(int on) {
  return 0;
}

long qt__cuda_kept_weight_count(void) {
  return 0;
}

int qt__cuda_set_colsum_one_pass(int on) {
  return 0;
}

int qt__cuda_cudnn_loaded(int *version, char *why, size_t why_size) {
  if (version) *version = 0;
  if (why && why_size) snprintf(why, why_size, "built without CUDA");
  return 0;
}

int qt__cuda_cudnn_fits(const qt_conv2d_shape *shape) {
  return 0;
}

int qt__cuda_set_cudnn(int on) {
  return 0;
}

int qt__cuda_cudnn_switched_on(void) {
  return 0;
}

long qt__cuda_cudnn_count(void) {
  return 0;
}

int qt__cuda_conv2d_backward(float *dinp, float *dweight, float *dbias, float *scratch,
                             const float *dout, const float *inp, const float *weight,
                             const qt_conv2d_shape *shape, int set, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_conv2d_backward");
}

int qt__cuda_batchnorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                const float *inp, const float *weight, const float *mean,
                                const float *rstd, size_t batch, size_t c, size_t hw,
                                qt_batchnorm_mode mode, int set, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_batchnorm_backward");
}

int qt__cuda_stochnorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                const float *inp, const float *weight, const float *mean,
                                const float *rstd, const unsigned char *select, size_t batch,
                                size_t c, size_t hw, int set, qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_stochnorm_backward");
}

int qt__cuda_relu_backward(float *dinp, const float *dout, const float *inp, size_t n, int set,
                           qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_relu_backward");
}

int qt__cuda_relu6_backward(float *dinp, const float *dout, const float *inp, size_t n, int set,
                            qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_relu6_backward");
}

int qt__cuda_silu_backward(float *dinp, const float *dout, const float *inp, size_t n, int set,
                           qt_err *err) {
  return QT_CUDA_STUB("qt_cuda_silu_backward");
}

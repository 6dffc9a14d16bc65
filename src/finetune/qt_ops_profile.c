/*
 * qt_ops_profile.c - an op table that runs another table's ops and times
 * each of them (qt__ops_profile in qt_finetune_internal.h), so a benchmark
 * can say where a training step spends its time, op by op, on any backend.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"

static struct {
  const qt__ops *inner;
  int (*sync)(qt_err *err);
  qt__op_time times[QT__OPS_PROFILE_MAX]; /* in the order of first calls */
  size_t n;
} profile;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Waits for the op's work (on a device), then adds its time to its name's
 * entry. The name is a string literal, so its address identifies it. */
static int op_end(const char *name, double start, int rc, qt_err *err) {
  if (rc == 0 && profile.sync) rc = profile.sync(err);
  double seconds = now() - start;
  size_t i = 0;
  while (i < profile.n && profile.times[i].name != name) i++;
  if (i == profile.n) {
    QT_ASSERT(profile.n < QT__OPS_PROFILE_MAX);
    profile.times[profile.n++] = (qt__op_time){.name = name};
  }
  profile.times[i].calls++;
  profile.times[i].seconds += seconds;
  return rc;
}

/* One timed wrapper: `params` as in qt__ops (ending in qt_err *err), `args`
 * their names. */
#define TIMED(op, params, args)                             \
  static int timed_##op params {                            \
    double start = now();                                   \
    return op_end(#op, start, profile.inner->op args, err); \
  }

/* Memory: allocation, release and pinning pass through untimed. */
static int pass_alloc(void **ptr, size_t bytes, qt_err *err) {
  return profile.inner->alloc(ptr, bytes, err);
}
static void pass_release(void *ptr) {
  profile.inner->release(ptr);
}
static int pass_pin(void *ptr, size_t bytes, qt_err *err) {
  return profile.inner->pin(ptr, bytes, err);
}
static void pass_unpin(void *ptr) {
  profile.inner->unpin(ptr);
}
static size_t pass_attention_scratch_size(size_t batch, size_t tokens, size_t heads) {
  return profile.inner->attention_scratch_size(batch, tokens, heads);
}
static size_t pass_conv2d_scratch_size(const qt_conv2d_shape *shape) {
  return profile.inner->conv2d_scratch_size(shape);
}
static qt_matmul_precision pass_set_matmul_precision(qt_matmul_precision precision) {
  return profile.inner->set_matmul_precision(precision);
}

TIMED(zero, (void *ptr, size_t bytes, qt_err *err), (ptr, bytes, err))
TIMED(copy, (void *dst, const void *src, size_t bytes, qt_err *err), (dst, src, bytes, err))
TIMED(copy_rows,
      (float *dst, size_t dst_stride, const float *src, size_t src_stride, size_t cols, size_t rows,
       qt_err *err),
      (dst, dst_stride, src, src_stride, cols, rows, err))
TIMED(upload, (void *dst, const void *src, size_t bytes, qt_err *err), (dst, src, bytes, err))
TIMED(download, (void *dst, const void *src, size_t bytes, qt_err *err), (dst, src, bytes, err))
TIMED(linear_forward,
      (float *out, const float *inp, const float *weight, const float *bias, size_t n, size_t in_c,
       size_t out_c, qt_err *err),
      (out, inp, weight, bias, n, in_c, out_c, err))
TIMED(linear_backward,
      (float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
       const float *weight, size_t n, size_t in_c, size_t out_c, int set, qt_err *err),
      (dinp, dweight, dbias, dout, inp, weight, n, in_c, out_c, set, err))
TIMED(layernorm_forward,
      (float *out, float *mean, float *rstd, const float *inp, const float *weight,
       const float *bias, size_t n, size_t c, float eps, qt_err *err),
      (out, mean, rstd, inp, weight, bias, n, c, eps, err))
TIMED(layernorm_backward,
      (float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
       const float *weight, const float *mean, const float *rstd, size_t n, size_t c, qt_err *err),
      (dinp, dweight, dbias, dout, inp, weight, mean, rstd, n, c, err))
TIMED(gelu_forward, (float *out, const float *inp, size_t n, qt_err *err), (out, inp, n, err))
TIMED(gelu_backward,
      (float *dinp, const float *dout, const float *inp, size_t n, int set, qt_err *err),
      (dinp, dout, inp, n, set, err))
static unsigned pass_bf16_activations(size_t batch, size_t tokens, size_t c, size_t heads) {
  return profile.inner->bf16_activations(batch, tokens, c, heads);
}
/* A timed wrapper of a _bf16 op (`params` ending in unsigned bf16, qt_err
 * *err): a row per set of BF16 arrays, named after the op and the set
 * (linear_forward_bf16[inp,out]), so that qkv's product stays apart from
 * proj's. */
/* clang-format off */
#define BF16_ROWS(op)                                                                          \
  {#op,               #op "[inp]",            #op "[out]",            #op "[inp,out]",           \
   #op "[dout]",      #op "[inp,dout]",       #op "[out,dout]",       #op "[inp,out,dout]",      \
   #op "[dinp]",      #op "[inp,dinp]",       #op "[out,dinp]",       #op "[inp,out,dinp]",      \
   #op "[dout,dinp]", #op "[inp,dout,dinp]",  #op "[out,dout,dinp]",  #op "[inp,out,dout,dinp]"}
/* clang-format on */
#define TIMED_BF16(op, params, args)                                     \
  static int timed_##op params {                                         \
    static const char *const rows[16] = BF16_ROWS(op);                   \
    double start = now();                                                \
    return op_end(rows[bf16 & 15u], start, profile.inner->op args, err); \
  }
TIMED_BF16(layernorm_forward_bf16,
           (void *out, float *mean, float *rstd, const float *inp, const float *weight,
            const float *bias, size_t n, size_t c, float eps, unsigned bf16, qt_err *err),
           (out, mean, rstd, inp, weight, bias, n, c, eps, bf16, err))
TIMED_BF16(layernorm_backward_bf16,
           (float *dinp, float *dweight, float *dbias, const void *dout, const float *inp,
            const float *weight, const float *mean, const float *rstd, size_t n, size_t c,
            unsigned bf16, qt_err *err),
           (dinp, dweight, dbias, dout, inp, weight, mean, rstd, n, c, bf16, err))
TIMED_BF16(gelu_forward_bf16, (void *out, const void *inp, size_t n, unsigned bf16, qt_err *err),
           (out, inp, n, bf16, err))
TIMED_BF16(linear_forward_bf16,
           (void *out, const void *inp, const float *weight, const float *bias, size_t n,
            size_t in_c, size_t out_c, unsigned bf16, qt_err *err),
           (out, inp, weight, bias, n, in_c, out_c, bf16, err))
TIMED_BF16(linear_backward_bf16,
           (void *dinp, float *dweight, float *dbias, const void *dout, const void *inp,
            const float *weight, size_t n, size_t in_c, size_t out_c, int set, unsigned bf16,
            qt_err *err),
           (dinp, dweight, dbias, dout, inp, weight, n, in_c, out_c, set, bf16, err))
TIMED_BF16(gelu_linear_backward_bf16,
           (void *dinp, float *dweight, float *dbias, float *dpre, const void *dout,
            const void *pre, const void *inp, const float *weight, size_t n, size_t in_c,
            size_t out_c, int set, unsigned bf16, qt_err *err),
           (dinp, dweight, dbias, dpre, dout, pre, inp, weight, n, in_c, out_c, set, bf16, err))
TIMED_BF16(attention_forward_bf16,
           (void *out, float *att, const void *qkv, size_t batch, size_t tokens, size_t c,
            size_t heads, unsigned bf16, qt_err *err),
           (out, att, qkv, batch, tokens, c, heads, bf16, err))
TIMED_BF16(attention_backward_bf16,
           (void *dqkv, float *scratch, const void *dout, const void *qkv, const float *att,
            const void *out, size_t batch, size_t tokens, size_t c, size_t heads, int set,
            unsigned bf16, qt_err *err),
           (dqkv, scratch, dout, qkv, att, out, batch, tokens, c, heads, set, bf16, err))
static size_t pass_attention_saved_size(size_t batch, size_t tokens, size_t c, size_t heads) {
  return profile.inner->attention_saved_size(batch, tokens, c, heads);
}
TIMED(attention_forward,
      (float *out, float *att, const float *qkv, size_t batch, size_t tokens, size_t c,
       size_t heads, qt_err *err),
      (out, att, qkv, batch, tokens, c, heads, err))
TIMED(attention_backward,
      (float *dqkv, float *scratch, const float *dout, const float *qkv, const float *att,
       const float *out, size_t batch, size_t tokens, size_t c, size_t heads, int set, qt_err *err),
      (dqkv, scratch, dout, qkv, att, out, batch, tokens, c, heads, set, err))
TIMED(residual_forward,
      (float *out, const float *res, const float *branch, const float *gamma, size_t n, size_t c,
       qt_err *err),
      (out, res, branch, gamma, n, c, err))
TIMED(residual_backward,
      (float *dres, float *dbranch, float *dgamma, const float *dout, const float *branch,
       const float *gamma, size_t n, size_t c, qt_err *err),
      (dres, dbranch, dgamma, dout, branch, gamma, n, c, err))
TIMED_BF16(residual_layernorm_forward,
           (float *out, void *norm, float *mean, float *rstd, const float *res, const void *branch,
            const float *gamma, const float *weight, const float *bias, size_t n, size_t c,
            float eps, unsigned bf16, qt_err *err),
           (out, norm, mean, rstd, res, branch, gamma, weight, bias, n, c, eps, bf16, err))
TIMED(patchify,
      (float *patches, const float *images, size_t batch, size_t channels, size_t size,
       size_t patch, qt_err *err),
      (patches, images, batch, channels, size, patch, err))
TIMED(tokens_forward,
      (float *x, const float *patch_tokens, const float *cls_token, const float *pos,
       int class_in_pos, size_t batch, size_t patches, size_t c, qt_err *err),
      (x, patch_tokens, cls_token, pos, class_in_pos, batch, patches, c, err))
TIMED(tokens_backward,
      (float *dpatch_tokens, float *dcls_token, float *dpos, const float *dx, int class_in_pos,
       size_t batch, size_t patches, size_t c, qt_err *err),
      (dpatch_tokens, dcls_token, dpos, dx, class_in_pos, batch, patches, c, err))
TIMED(cross_entropy_forward,
      (float *losses, float *probs, const float *logits, const int *labels,
       const float *soft_targets, float smoothing, size_t batch, size_t classes, qt_err *err),
      (losses, probs, logits, labels, soft_targets, smoothing, batch, classes, err))
TIMED(cross_entropy_backward,
      (float *dlogits, const float *probs, const int *labels, const float *soft_targets,
       float smoothing, const float *dloss, int dloss_per_row, size_t batch, size_t classes,
       qt_err *err),
      (dlogits, probs, labels, soft_targets, smoothing, dloss, dloss_per_row, batch, classes, err))
TIMED(optim_steps,
      (const qt_optim_params *p, const qt__optim_slice *slices, size_t count, qt_err *err),
      (p, slices, count, err))
TIMED(sum_squares, (const float *x, size_t n, double *acc, qt_err *err), (x, n, acc, err))
TIMED(scale, (float *x, float c, size_t n, qt_err *err), (x, c, n, err))
TIMED(l2sp_gradient,
      (float *grads, const float *params, const float *ref, size_t n, double c, qt_err *err),
      (grads, params, ref, n, c, err))
TIMED(sfa_average, (float *params, const float *ref, size_t n, double beta, qt_err *err),
      (params, ref, n, beta, err))
TIMED(axpy, (float *x, float a, const float *y, size_t n, qt_err *err), (x, a, y, n, err))
TIMED(goodfit_project, (float *grads, const float *delta, size_t n, double *stats, qt_err *err),
      (grads, delta, n, stats, err))
TIMED(lora_merge,
      (float *w, const float *w0, const float *a, const float *b, size_t out, size_t in,
       size_t rank, double scale, qt_err *err),
      (w, w0, a, b, out, in, rank, scale, err))
TIMED(lora_gradients,
      (const float *dw, const float *a, const float *b, size_t out, size_t in, size_t rank,
       double scale, float *ga, float *gb, qt_err *err),
      (dw, a, b, out, in, rank, scale, ga, gb, err))
TIMED(spd_stats,
      (const float *params, const float *grads, const float *ref, size_t n, double *stats,
       qt_err *err),
      (params, grads, ref, n, stats, err))
TIMED(spd_project,
      (float *params, const float *ref, size_t n, double lambda, double *stats, qt_err *err),
      (params, ref, n, lambda, stats, err))
TIMED(mul, (float *out, const float *a, const float *b, size_t n, qt_err *err), (out, a, b, n, err))
TIMED(mul_add, (float *acc, const float *a, const float *b, size_t n, qt_err *err),
      (acc, a, b, n, err))
TIMED(conv2d_forward,
      (float *out, float *scratch, const float *inp, const float *weight, const float *bias,
       const qt_conv2d_shape *shape, qt_err *err),
      (out, scratch, inp, weight, bias, shape, err))
TIMED(conv2d_backward,
      (float *dinp, float *dweight, float *dbias, float *scratch, const float *dout,
       const float *inp, const float *weight, const qt_conv2d_shape *shape, int set, qt_err *err),
      (dinp, dweight, dbias, scratch, dout, inp, weight, shape, set, err))
TIMED(batchnorm_forward,
      (float *out, float *mean, float *rstd, float *running_mean, float *running_var,
       const float *inp, const float *weight, const float *bias, size_t batch, size_t c, size_t hw,
       float eps, float momentum, qt_batchnorm_mode mode, qt_err *err),
      (out, mean, rstd, running_mean, running_var, inp, weight, bias, batch, c, hw, eps, momentum,
       mode, err))
TIMED(batchnorm_backward,
      (float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
       const float *weight, const float *mean, const float *rstd, size_t batch, size_t c, size_t hw,
       qt_batchnorm_mode mode, int set, qt_err *err),
      (dinp, dweight, dbias, dout, inp, weight, mean, rstd, batch, c, hw, mode, set, err))
TIMED(stochnorm_forward,
      (float *out, float *mean, float *rstd, float *running_mean, float *running_var,
       const float *inp, const float *weight, const float *bias, const unsigned char *select,
       size_t batch, size_t c, size_t hw, float eps, float momentum, qt_err *err),
      (out, mean, rstd, running_mean, running_var, inp, weight, bias, select, batch, c, hw, eps,
       momentum, err))
TIMED(stochnorm_backward,
      (float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
       const float *weight, const float *mean, const float *rstd, const unsigned char *select,
       size_t batch, size_t c, size_t hw, int set, qt_err *err),
      (dinp, dweight, dbias, dout, inp, weight, mean, rstd, select, batch, c, hw, set, err))
TIMED(relu_forward, (float *out, const float *inp, size_t n, qt_err *err), (out, inp, n, err))
TIMED(relu_backward,
      (float *dinp, const float *dout, const float *inp, size_t n, int set, qt_err *err),
      (dinp, dout, inp, n, set, err))
TIMED(relu6_forward, (float *out, const float *inp, size_t n, qt_err *err), (out, inp, n, err))
TIMED(relu6_backward,
      (float *dinp, const float *dout, const float *inp, size_t n, int set, qt_err *err),
      (dinp, dout, inp, n, set, err))
TIMED(silu_forward, (float *out, const float *inp, size_t n, qt_err *err), (out, inp, n, err))
TIMED(silu_backward,
      (float *dinp, const float *dout, const float *inp, size_t n, int set, qt_err *err),
      (dinp, dout, inp, n, set, err))
TIMED(global_avgpool_forward,
      (float *out, const float *inp, size_t batch, size_t c, size_t hw, qt_err *err),
      (out, inp, batch, c, hw, err))
TIMED(global_avgpool_backward,
      (float *dinp, const float *dout, size_t batch, size_t c, size_t hw, qt_err *err),
      (dinp, dout, batch, c, hw, err))
TIMED(maxpool2d_forward,
      (float *out, int32_t *argmax, const float *inp, const qt_conv2d_shape *shape, qt_err *err),
      (out, argmax, inp, shape, err))
TIMED(maxpool2d_backward,
      (float *dinp, const float *dout, const int32_t *argmax, const qt_conv2d_shape *shape,
       qt_err *err),
      (dinp, dout, argmax, shape, err))
TIMED(se_forward,
      (float *out, float *pooled, float *hidden_pre, float *hidden, float *gate, const float *inp,
       const float *w_reduce, const float *b_reduce, const float *w_expand, const float *b_expand,
       size_t batch, size_t c, size_t hw, size_t rd, qt_se_act act, qt_err *err),
      (out, pooled, hidden_pre, hidden, gate, inp, w_reduce, b_reduce, w_expand, b_expand, batch, c,
       hw, rd, act, err))
TIMED(se_backward,
      (float *dinp, float *dw_reduce, float *db_reduce, float *dw_expand, float *db_expand,
       float *scratch, const float *dout, const float *inp, const float *pooled,
       const float *hidden_pre, const float *hidden, const float *gate, const float *w_reduce,
       const float *w_expand, size_t batch, size_t c, size_t hw, size_t rd, qt_se_act act,
       qt_err *err),
      (dinp, dw_reduce, db_reduce, dw_expand, db_expand, scratch, dout, inp, pooled, hidden_pre,
       hidden, gate, w_reduce, w_expand, batch, c, hw, rd, act, err))

static qt__ops profiled = {
    .alloc = pass_alloc,
    .release = pass_release,
    .zero = timed_zero,
    .copy = timed_copy,
    .copy_rows = timed_copy_rows,
    .upload = timed_upload,
    .download = timed_download,
    .pin = pass_pin,
    .unpin = pass_unpin,
    .linear_forward = timed_linear_forward,
    .linear_backward = timed_linear_backward,
    .layernorm_forward = timed_layernorm_forward,
    .layernorm_backward = timed_layernorm_backward,
    .gelu_forward = timed_gelu_forward,
    .gelu_backward = timed_gelu_backward,
    .attention_scratch_size = pass_attention_scratch_size,
    .attention_forward = timed_attention_forward,
    .attention_backward = timed_attention_backward,
    .residual_forward = timed_residual_forward,
    .residual_backward = timed_residual_backward,
    .patchify = timed_patchify,
    .tokens_forward = timed_tokens_forward,
    .tokens_backward = timed_tokens_backward,
    .cross_entropy_forward = timed_cross_entropy_forward,
    .cross_entropy_backward = timed_cross_entropy_backward,
    .optim_steps = timed_optim_steps,
    .sum_squares = timed_sum_squares,
    .scale = timed_scale,
    .l2sp_gradient = timed_l2sp_gradient,
    .sfa_average = timed_sfa_average,
    .axpy = timed_axpy,
    .goodfit_project = timed_goodfit_project,
    .lora_merge = timed_lora_merge,
    .lora_gradients = timed_lora_gradients,
    .spd_stats = timed_spd_stats,
    .spd_project = timed_spd_project,
    .mul = timed_mul,
    .mul_add = timed_mul_add,
    .set_matmul_precision = pass_set_matmul_precision,
    .conv2d_scratch_size = pass_conv2d_scratch_size,
    .conv2d_forward = timed_conv2d_forward,
    .conv2d_backward = timed_conv2d_backward,
    .batchnorm_forward = timed_batchnorm_forward,
    .batchnorm_backward = timed_batchnorm_backward,
    .stochnorm_forward = timed_stochnorm_forward,
    .stochnorm_backward = timed_stochnorm_backward,
    .relu_forward = timed_relu_forward,
    .relu_backward = timed_relu_backward,
    .relu6_forward = timed_relu6_forward,
    .relu6_backward = timed_relu6_backward,
    .silu_forward = timed_silu_forward,
    .silu_backward = timed_silu_backward,
    .global_avgpool_forward = timed_global_avgpool_forward,
    .global_avgpool_backward = timed_global_avgpool_backward,
    .maxpool2d_forward = timed_maxpool2d_forward,
    .maxpool2d_backward = timed_maxpool2d_backward,
    .se_forward = timed_se_forward,
    .se_backward = timed_se_backward,
};

const qt__ops *qt__ops_profile(const qt__ops *inner, int (*sync)(qt_err *err)) {
  profile.inner = inner;
  profile.sync = sync;
  profiled.name = inner->name;
  profiled.host_memory = inner->host_memory;
  profiled.stream_create = inner->stream_create;
  profiled.stream_use = inner->stream_use;
  profiled.stream_destroy = inner->stream_destroy;
  profiled.upload_async = inner->upload_async;
  profiled.upload_wait = inner->upload_wait;
  /* The optional ops: where the inner table has them. */
  profiled.bf16_activations = inner->bf16_activations ? pass_bf16_activations : NULL;
  profiled.attention_saved_size = inner->attention_saved_size ? pass_attention_saved_size : NULL;
#define PROFILED_BF16(op) profiled.op = inner->op ? timed_##op : NULL
  PROFILED_BF16(layernorm_forward_bf16);
  PROFILED_BF16(layernorm_backward_bf16);
  PROFILED_BF16(gelu_forward_bf16);
  PROFILED_BF16(linear_forward_bf16);
  PROFILED_BF16(linear_backward_bf16);
  PROFILED_BF16(gelu_linear_backward_bf16);
  PROFILED_BF16(attention_forward_bf16);
  PROFILED_BF16(attention_backward_bf16);
#undef PROFILED_BF16
  profiled.residual_layernorm_forward =
      inner->residual_layernorm_forward ? timed_residual_layernorm_forward : NULL;
  qt__ops_profile_reset();
  return &profiled;
}

void qt__ops_profile_reset(void) {
  memset(profile.times, 0, sizeof profile.times);
  profile.n = 0;
}

static int by_time(const void *a, const void *b) {
  double x = ((const qt__op_time *)a)->seconds, y = ((const qt__op_time *)b)->seconds;
  return (x < y) - (x > y);
}

size_t qt__ops_profile_read(qt__op_time *out, size_t cap) {
  qt__op_time sorted[QT__OPS_PROFILE_MAX];
  memcpy(sorted, profile.times, profile.n * sizeof *sorted);
  qsort(sorted, profile.n, sizeof *sorted, by_time);
  size_t n = profile.n < cap ? profile.n : cap;
  memcpy(out, sorted, n * sizeof *out);
  return n;
}

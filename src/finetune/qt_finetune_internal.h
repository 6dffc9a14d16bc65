/*
 * qt_finetune_internal.h - helpers shared by the CPU and CUDA halves of the
 * finetune module. Not part of the public API: nothing outside src/finetune/
 * includes this header, except the tests that install an op table of their
 * own (qt__ops). Included from C and from CUDA C++ (.cu) files.
 */
#ifndef QT_FINETUNE_INTERNAL_H
#define QT_FINETUNE_INTERNAL_H

#include <stddef.h>

#include "finetune/qt_finetune.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------- */
/* AdamW                                                                      */
/* ------------------------------------------------------------------------- */

/* The scalars of one AdamW step, computed once in double and rounded to
 * float, so that the CPU reference and the CUDA kernel multiply by exactly
 * the same numbers and differ only in per-element rounding. */
typedef struct qt__adamw_coefficients {
  float beta1;                 /* beta1 */
  float one_minus_beta1;       /* 1 - beta1 */
  float beta2;                 /* beta2 */
  float one_minus_beta2;       /* 1 - beta2 */
  float eps;                   /* eps */
  float decay;                 /* lr * weight_decay */
  float step_size;             /* lr / (1 - beta1^t) */
  float bias_correction2_sqrt; /* sqrt(1 - beta2^t) */
} qt__adamw_coefficients;

/* Checks the arguments of an AdamW step (see qt_cpu_adamw_step) and fills
 * *out. Returns 0 or QT_EINVAL naming the offending argument; `who` (the
 * public function's name) starts the message. */
int qt__adamw_prepare(const char *who, const float *params, const float *grads, const float *m,
                      const float *v, size_t n, const qt_adamw_params *hp, long step,
                      qt__adamw_coefficients *out, qt_err *err);
/* The same for a run's Adam or AdamW step (qt_optim_tensor_step and its
 * CUDA twin): p's betas and eps at lr, weight decay wd decoupled for
 * AdamW; *coupled is the decay Adam adds to the gradient (0 for AdamW). */
/* A run's optimizer parameters for the fused AdamW step's: AdamW with
 * decoupled decay toward 0, no clipping or layer decay. */
qt_optim_params qt__optim_params_adamw(const qt_adamw_params *hp);
int qt__optim_adam_prepare(const char *who, const qt_optim_params *p, double lr, double wd,
                           long step, const float *params, const float *grads, const float *m,
                           const float *v, size_t n, qt__adamw_coefficients *out, float *coupled,
                           qt_err *err);

/* One tensor (or adapter factor) of a run's optimizer step: the arrays
 * and scalars that qt_optim_tensor_step takes besides the optimizer's
 * parameters (the op table's optim_steps). */
typedef struct qt__optim_slice {
  float *params;
  const float *grads;
  float *state1, *state2;
  size_t n;
  double lr; /* this tensor's learning rate this step */
  long step; /* this tensor's steps, this one included */
  int decay; /* weight decay toward 0 applies */
} qt__optim_slice;

/* ------------------------------------------------------------------------- */
/* Head dropout and the feature hook (qt_head_hooks.c)                        */
/* ------------------------------------------------------------------------- */

/* What every model family (qt_vit.c, qt_cnn.c, qt_mlp.c) keeps for the
 * features entering its head: timm's head dropout and the gradient buffer
 * of the feature hook (see qt_vit_set_head_dropout and
 * qt_vit_set_feature_hook for the semantics). cap is max_batch * features.
 * Zero-initialized means both off. */
typedef struct qt__head_hooks {
  double drop_rate;
  qt_rng_t *drop_rng; /* borrowed */
  float *drop_mask;   /* (cap) 0 or 1 / (1 - rate); NULL until dropout was on */
  int dropped;        /* 1: the last forward applied a mask */
  float *dfeat;       /* (cap) the hook's gradient; NULL while the hook is off */
} qt__head_hooks;

/* Sets the dropout rate ([0, 1), else QT_EINVAL) and stream; `family`
 * names the model in messages. */
int qt__head_hooks_set_dropout(qt__head_hooks *h, size_t cap, double rate, qt_rng_t *rng,
                               const char *family, qt_err *err);
/* Turns the hook's gradient buffer on (calloc of cap floats) or off. */
int qt__head_hooks_set_feature_grad(qt__head_hooks *h, size_t cap, int on, const char *family,
                                    qt_err *err);
/* One forward's mask over n feature values: while dropout is on, draws it
 * element by element (row-major) into drop_mask, each value 0 or
 * 1 / (1 - rate); returns h->dropped. The model applies it on its
 * backend (out = in * mask, and the same mask in the backward). */
int qt__head_hooks_draw(qt__head_hooks *h, size_t n);
void qt__head_hooks_free(qt__head_hooks *h);

/* ------------------------------------------------------------------------- */
/* The backend interface: one op table per backend (qt_ops.c)                 */
/* ------------------------------------------------------------------------- */

/*
 * What a model's passes call, so that one piece of code composes the
 * forward, backward and optimizer step on any backend: memory (allocation,
 * zeroing, copies within the backend and across to the host) and the layer
 * ops with the signatures of qt_cuda_<op>() (device arrays, a QT_E* code,
 * qt_err last). qt__ops_cpu() wraps the CPU references, which cannot fail
 * for valid shapes, and returns 0; qt__ops_cuda() is the qt_cuda_* functions
 * (each returns QT_ENODEV in a build without CUDA). Tests install tables of
 * their own (tests/qt_test_fake_device.h).
 *
 * `host_memory` is 1 when the backend's arrays are ordinary host memory
 * that callers' arrays may stand in for (the CPU); a model then reads the
 * caller's images in place instead of uploading them.
 */
/* Which arrays of an op table's _bf16 op are BF16 (qt__ops): a set of
 * these, named after the forward's tensors. */
enum {
  QT__BF16_INP = 1u,  /* the forward's input (the backward's: as the forward read it) */
  QT__BF16_OUT = 2u,  /* the forward's output */
  QT__BF16_DOUT = 4u, /* the backward's output gradient */
  QT__BF16_DINP = 8u, /* the backward's input gradient */
  /* Not arrays: a linear layer's forward may keep its weight rounded to
   * BF16 for the backward (KEEP), and that backward may take the kept
   * copy (KEPT) instead of rounding the weight again, where the caller
   * promises that the weight has not changed since a forward with KEEP
   * (in a step: the forward, its loss, the backward). The results are the
   * same bits either way; a backend may ignore both. */
  QT__BF16_KEEP_WEIGHT = 16u, /* linear_forward_bf16 */
  QT__BF16_KEPT_WEIGHT = 32u, /* linear_backward_bf16, gelu_linear_backward_bf16 */
};

/* A transformer block's activations that a backend may keep in BF16
 * (qt__ops' bf16_activations). Every other one comes only with the
 * first, qkv only with the attention's output, and the attention's
 * output gradient only with qkv (a model drops one without the other). */
enum {
  QT__KEEP_LINEAR_INPUTS = 1u,   /* the norms' and GELU's outputs (qkv's, fc1's, fc2's input) */
  QT__KEEP_ATTENTION_OUT = 2u,   /* the attention's output (proj's input) */
  QT__KEEP_QKV = 4u,             /* qkv and its gradient */
  QT__KEEP_HIDDEN = 8u,          /* fc1's output (GELU's input) */
  QT__KEEP_HIDDEN_GRAD = 16u,    /* GELU's output gradient (fc2's input gradient) */
  QT__KEEP_NORM_GRAD = 32u,      /* the norms' output gradients (qkv's, fc1's input gradients) */
  QT__KEEP_ATTENTION_GRAD = 64u, /* the attention's output gradient (proj's input gradient) */
  QT__KEEP_BRANCH = 128u,        /* proj's and fc2's outputs, read by the residual add */
};

typedef struct qt__ops {
  const char *name; /* "cpu", "cuda", in messages */
  int host_memory;

  /* Memory. alloc stores a block of `bytes` in *ptr (NULL for 0 bytes);
   * release(NULL) is a no-op. upload copies host -> backend, download
   * backend -> host, copy within the backend; download waits for the
   * work queued before it. copy_rows: `rows` rows of `cols` floats from
   * rows src_stride floats apart to rows dst_stride floats apart. */
  int (*alloc)(void **ptr, size_t bytes, qt_err *err);
  void (*release)(void *ptr);
  int (*zero)(void *ptr, size_t bytes, qt_err *err);
  int (*copy)(void *dst, const void *src, size_t bytes, qt_err *err);
  int (*copy_rows)(float *dst, size_t dst_stride, const float *src, size_t src_stride, size_t cols,
                   size_t rows, qt_err *err);
  int (*upload)(void *dst, const void *src, size_t bytes, qt_err *err);
  int (*download)(void *dst, const void *src, size_t bytes, qt_err *err);
  /* Page-lock a host array that is uploaded at every step, and undo it
   * before the array is freed (qt_cuda_host_register); NULL for a backend
   * whose memory is the host's. Failing to pin costs only speed. */
  int (*pin)(void *ptr, size_t bytes, qt_err *err);
  void (*unpin)(void *ptr);
  /* A stream of the backend's own, for one run's work (on CUDA a
   * qt_cuda_stream_t: its CUDA stream, cuBLAS handle and scratch).
   * stream_create makes one; stream_use makes it the calling thread's for
   * the ops after it (NULL: the backend's default) and returns the
   * previous one; stream_destroy waits for its work and releases it (NULL
   * is a no-op). All three NULL for a backend without streams (the CPU). */
  int (*stream_create)(void **out, qt_err *err);
  void *(*stream_use)(void *stream);
  void (*stream_destroy)(void *stream);
  /* An upload that overlaps the thread's stream's work, and the wait for
   * it (qt_cuda_upload_async, qt_cuda_upload_wait: src unchanged and dst
   * untouched until the stream has run past the wait). NULL for a
   * backend whose memory is the host's. */
  int (*upload_async)(void *dst, const void *src, size_t bytes, qt_err *err);
  int (*upload_wait)(qt_err *err);

  /* The ViT's layer ops and AdamW, as qt_cuda_<op>(). The backward passes
   * of linear, GELU and attention take `set`: 1 writes the input gradient
   * (dinp, dqkv) instead of adding to it, as if it had been zeroed first,
   * without the zeroing pass and the read of the old values (on a GPU a
   * write and a read of the whole array saved); parameter gradients always
   * add. */
  int (*linear_forward)(float *out, const float *inp, const float *weight, const float *bias,
                        size_t n, size_t in_c, size_t out_c, qt_err *err);
  int (*linear_backward)(float *dinp, float *dweight, float *dbias, const float *dout,
                         const float *inp, const float *weight, size_t n, size_t in_c, size_t out_c,
                         int set, qt_err *err);
  int (*layernorm_forward)(float *out, float *mean, float *rstd, const float *inp,
                           const float *weight, const float *bias, size_t n, size_t c, float eps,
                           qt_err *err);
  int (*layernorm_backward)(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, const float *mean,
                            const float *rstd, size_t n, size_t c, qt_err *err);
  int (*gelu_forward)(float *out, const float *inp, size_t n, qt_err *err);
  int (*gelu_backward)(float *dinp, const float *dout, const float *inp, size_t n, int set,
                       qt_err *err);
  /* Activations in BF16 (uint16_t bits, rounded to nearest even from
   * FP32), where a backend keeps them so (NULL on the CPU). Each saves the
   * FP32 array's writes and reads by half and, where its reader rounds it
   * to BF16 anyway (a product's operand), that rounding pass too; for
   * ViT-B at batch 64, about 1.4 GB of memory traffic per block and step
   * by count (docs/cuda.md, "Mixed precision").
   *
   * bf16_activations: which of a transformer's activations (QT__KEEP_*)
   * the backend keeps in BF16 for this shape now (on CUDA: under BF16
   * products, by its switches, the attention's where the fused kernels
   * run). The _bf16 ops are the FP32 ops with the arrays that `bf16`
   * (QT__BF16_*) names in BF16 (void *; the others FP32), and with no bit
   * set the FP32 ops themselves; a set a backend does not implement is
   * QT_EINVAL. Where a BF16 result comes from FP32 values, it is those
   * values rounded (a linear layer's BF16 output may take its bias rounded
   * to BF16, as cuBLASLt's epilogue does); where a BF16 input feeds float
   * arithmetic (GELU, the bias gradient's sums), it is taken at its
   * rounded value, as PyTorch's autocast does. */
  unsigned (*bf16_activations)(size_t batch, size_t tokens, size_t c, size_t heads);
  int (*layernorm_forward_bf16)(void *out, float *mean, float *rstd, const float *inp,
                                const float *weight, const float *bias, size_t n, size_t c,
                                float eps, unsigned bf16, qt_err *err);
  int (*layernorm_backward_bf16)(float *dinp, float *dweight, float *dbias, const void *dout,
                                 const float *inp, const float *weight, const float *mean,
                                 const float *rstd, size_t n, size_t c, unsigned bf16, qt_err *err);
  int (*gelu_forward_bf16)(void *out, const void *inp, size_t n, unsigned bf16, qt_err *err);
  int (*linear_forward_bf16)(void *out, const void *inp, const float *weight, const float *bias,
                             size_t n, size_t in_c, size_t out_c, unsigned bf16, qt_err *err);
  int (*linear_backward_bf16)(void *dinp, float *dweight, float *dbias, const void *dout,
                              const void *inp, const float *weight, size_t n, size_t in_c,
                              size_t out_c, int set, unsigned bf16, qt_err *err);
  /* gelu_backward(dpre, dout, pre, n * out_c, set 1), then
   * linear_backward with dpre as its dout: the MLP's GELU and the linear
   * layer before it (pre, (n, out_c), is that layer's output: QT__BF16_OUT
   * names it, QT__BF16_INP that layer's input, QT__BF16_DOUT dout, GELU's
   * output gradient), with the same results.
   * dpre is scratch: a backend may leave it unwritten (the CUDA table
   * under BF16 products keeps that gradient only in BF16, for the two
   * products, and sums it for the bias in the same pass). */
  int (*gelu_linear_backward_bf16)(void *dinp, float *dweight, float *dbias, float *dpre,
                                   const void *dout, const void *pre, const void *inp,
                                   const float *weight, size_t n, size_t in_c, size_t out_c,
                                   int set, unsigned bf16, qt_err *err);
  /* QT__BF16_INP names qkv, QT__BF16_OUT out (the backward's: as the
   * forward wrote it), QT__BF16_DINP dqkv (written as `set`),
   * QT__BF16_DOUT the output's gradient. */
  int (*attention_forward_bf16)(void *out, float *att, const void *qkv, size_t batch, size_t tokens,
                                size_t c, size_t heads, unsigned bf16, qt_err *err);
  int (*attention_backward_bf16)(void *dqkv, float *scratch, const void *dout, const void *qkv,
                                 const float *att, const void *out, size_t batch, size_t tokens,
                                 size_t c, size_t heads, int set, unsigned bf16, qt_err *err);
  /* The floats of att that attention_forward(_bf16) writes and
   * attention_backward(_bf16) reads, for this shape now; NULL: (batch,
   * heads, tokens, tokens), the probabilities. Non-decreasing in batch. */
  size_t (*attention_saved_size)(size_t batch, size_t tokens, size_t c, size_t heads);
  size_t (*attention_scratch_size)(size_t batch, size_t tokens, size_t heads);
  int (*attention_forward)(float *out, float *att, const float *qkv, size_t batch, size_t tokens,
                           size_t c, size_t heads, qt_err *err);
  /* att and out as the forward of the same step left them (out: its
   * output; a backend may read either or both). */
  int (*attention_backward)(float *dqkv, float *scratch, const float *dout, const float *qkv,
                            const float *att, const float *out, size_t batch, size_t tokens,
                            size_t c, size_t heads, int set, qt_err *err);
  int (*residual_forward)(float *out, const float *res, const float *branch, const float *gamma,
                          size_t n, size_t c, qt_err *err);
  int (*residual_backward)(float *dres, float *dbranch, float *dgamma, const float *dout,
                           const float *branch, const float *gamma, size_t n, size_t c,
                           qt_err *err);
  /* residual_forward into out, then layernorm_forward of out into norm,
   * with the same results, in one pass where a backend has it; NULL: the
   * model calls the two in turn. A transformer block's residual add and
   * the layer norm after it. bf16 as the _bf16 ops' (a backend with
   * bf16_activations implements every set): QT__BF16_OUT names norm,
   * QT__BF16_INP the branch (res, the residual stream, and out are FP32). */
  int (*residual_layernorm_forward)(float *out, void *norm, float *mean, float *rstd,
                                    const float *res, const void *branch, const float *gamma,
                                    const float *weight, const float *bias, size_t n, size_t c,
                                    float eps, unsigned bf16, qt_err *err);
  int (*patchify)(float *patches, const float *images, size_t batch, size_t channels, size_t size,
                  size_t patch, qt_err *err);
  int (*tokens_forward)(float *x, const float *patch_tokens, const float *cls_token,
                        const float *pos, int class_in_pos, size_t batch, size_t patches, size_t c,
                        qt_err *err);
  int (*tokens_backward)(float *dpatch_tokens, float *dcls_token, float *dpos, const float *dx,
                         int class_in_pos, size_t batch, size_t patches, size_t c, qt_err *err);
  int (*cross_entropy_forward)(float *losses, float *probs, const float *logits, const int *labels,
                               const float *soft_targets, float smoothing, size_t batch,
                               size_t classes, qt_err *err);
  int (*cross_entropy_backward)(float *dlogits, const float *probs, const int *labels,
                                const float *soft_targets, float smoothing, const float *dloss,
                                int dloss_per_row, size_t batch, size_t classes, qt_err *err);

  /* A run's optimizer arithmetic, as qt_cuda_optim_tensor_step and the
   * functions after it (qt_finetune.h, "Optimizers"); optim_steps steps
   * `count` tensors, each as qt_optim_tensor_step (the CUDA table's Adam
   * and AdamW in one launch per QT_ADAM_JOBS tensors, qt__cuda_optim_steps). */
  int (*optim_steps)(const qt_optim_params *p, const qt__optim_slice *slices, size_t count,
                     qt_err *err);
  /* *acc += sum x^2, acc one double of the backend's memory. */
  int (*sum_squares)(const float *x, size_t n, double *acc, qt_err *err);
  int (*scale)(float *x, float c, size_t n, qt_err *err);
  int (*l2sp_gradient)(float *grads, const float *params, const float *ref, size_t n, double c,
                       qt_err *err);
  int (*sfa_average)(float *params, const float *ref, size_t n, double beta, qt_err *err);
  /* x += a * y (GOODFIT's reference steps and its delta), and GOODFIT's
   * projection of grads against delta (qt_goodfit_project) with stats two
   * doubles of the backend's memory as scratch, as qt_cuda_axpy and
   * qt_cuda_goodfit_project. */
  int (*axpy)(float *x, float a, const float *y, size_t n, qt_err *err);
  int (*goodfit_project)(float *grads, const float *delta, size_t n, double *stats, qt_err *err);
  /* LoRA's merge and its factors' gradients, as qt_cuda_lora_merge and
   * qt_cuda_lora_gradients (the CPU's: qt_lora_merge, qt_lora_gradients). */
  int (*lora_merge)(float *w, const float *w0, const float *a, const float *b, size_t out,
                    size_t in, size_t rank, double scale, qt_err *err);
  int (*lora_gradients)(const float *dw, const float *a, const float *b, size_t out, size_t in,
                        size_t rank, double scale, float *ga, float *gb, qt_err *err);
  /* Selective Projection Decay around optim_step, as qt_cuda_spd_stats and
   * qt_cuda_spd_project: stats is three doubles of the backend's memory. */
  int (*spd_stats)(const float *params, const float *grads, const float *ref, size_t n,
                   double *stats, qt_err *err);
  int (*spd_project)(float *params, const float *ref, size_t n, double lambda, double *stats,
                     qt_err *err);
  /* Elementwise: out = a * b (out may be a), acc += a * b; head dropout. */
  int (*mul)(float *out, const float *a, const float *b, size_t n, qt_err *err);
  int (*mul_add)(float *acc, const float *a, const float *b, size_t n, qt_err *err);
  /* The precision of the matrix products that follow, as
   * qt_cuda_set_matmul_precision (returns the previous one); the CPU's
   * computes in FP32 whatever is asked and returns QT_MATMUL_FP32. */
  qt_matmul_precision (*set_matmul_precision)(qt_matmul_precision precision);

  /* The convolutional models' layer ops, as qt_cuda_<op>() ("CUDA
   * convolutional layer ops" in qt_finetune.h). conv2d_scratch_size is the
   * backend's: the CPU's scratch holds one group's column matrix, CUDA's
   * every group's (both 0 for pointwise and depthwise convolutions). The
   * StochNorm select (unsigned char per channel) and the max-pooling argmax
   * (int32) live in backend memory like every other array. The backward
   * passes of convolution, batch norm, StochNorm and the activations take
   * `set` for dinp, as the ViT's ops above. */
  size_t (*conv2d_scratch_size)(const qt_conv2d_shape *shape);
  int (*conv2d_forward)(float *out, float *scratch, const float *inp, const float *weight,
                        const float *bias, const qt_conv2d_shape *shape, qt_err *err);
  int (*conv2d_backward)(float *dinp, float *dweight, float *dbias, float *scratch,
                         const float *dout, const float *inp, const float *weight,
                         const qt_conv2d_shape *shape, int set, qt_err *err);
  int (*batchnorm_forward)(float *out, float *mean, float *rstd, float *running_mean,
                           float *running_var, const float *inp, const float *weight,
                           const float *bias, size_t batch, size_t c, size_t hw, float eps,
                           float momentum, qt_batchnorm_mode mode, qt_err *err);
  int (*batchnorm_backward)(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, const float *mean,
                            const float *rstd, size_t batch, size_t c, size_t hw,
                            qt_batchnorm_mode mode, int set, qt_err *err);
  int (*stochnorm_forward)(float *out, float *mean, float *rstd, float *running_mean,
                           float *running_var, const float *inp, const float *weight,
                           const float *bias, const unsigned char *select, size_t batch, size_t c,
                           size_t hw, float eps, float momentum, qt_err *err);
  int (*stochnorm_backward)(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, const float *mean,
                            const float *rstd, const unsigned char *select, size_t batch, size_t c,
                            size_t hw, int set, qt_err *err);
  int (*relu_forward)(float *out, const float *inp, size_t n, qt_err *err);
  int (*relu_backward)(float *dinp, const float *dout, const float *inp, size_t n, int set,
                       qt_err *err);
  int (*relu6_forward)(float *out, const float *inp, size_t n, qt_err *err);
  int (*relu6_backward)(float *dinp, const float *dout, const float *inp, size_t n, int set,
                        qt_err *err);
  int (*silu_forward)(float *out, const float *inp, size_t n, qt_err *err);
  int (*silu_backward)(float *dinp, const float *dout, const float *inp, size_t n, int set,
                       qt_err *err);
  int (*global_avgpool_forward)(float *out, const float *inp, size_t batch, size_t c, size_t hw,
                                qt_err *err);
  int (*global_avgpool_backward)(float *dinp, const float *dout, size_t batch, size_t c, size_t hw,
                                 qt_err *err);
  int (*maxpool2d_forward)(float *out, int32_t *argmax, const float *inp,
                           const qt_conv2d_shape *shape, qt_err *err);
  int (*maxpool2d_backward)(float *dinp, const float *dout, const int32_t *argmax,
                            const qt_conv2d_shape *shape, qt_err *err);
  int (*se_forward)(float *out, float *pooled, float *hidden_pre, float *hidden, float *gate,
                    const float *inp, const float *w_reduce, const float *b_reduce,
                    const float *w_expand, const float *b_expand, size_t batch, size_t c, size_t hw,
                    size_t rd, qt_se_act act, qt_err *err);
  int (*se_backward)(float *dinp, float *dw_reduce, float *db_reduce, float *dw_expand,
                     float *db_expand, float *scratch, const float *dout, const float *inp,
                     const float *pooled, const float *hidden_pre, const float *hidden,
                     const float *gate, const float *w_reduce, const float *w_expand, size_t batch,
                     size_t c, size_t hw, size_t rd, qt_se_act act, qt_err *err);
} qt__ops;

const qt__ops *qt__ops_cpu(void);
const qt__ops *qt__ops_cuda(void);
/* The table of a backend kind (never NULL for a kind of the enum). */
const qt__ops *qt__ops_for(qt_backend_kind kind);
/* Copies `bytes` from `src` on backend `from` to `dst` on backend `to`,
 * through `staging` (host memory of `bytes`) when neither is the host. */
int qt__ops_move(const qt__ops *from, const qt__ops *to, void *dst, const void *src, void *staging,
                 size_t bytes, qt_err *err);

/* Op profiling (qt_ops_profile.c), for benchmarks: a table that runs
 * inner's ops and, for each op that computes or moves data, adds its calls
 * and wall seconds to the op's entry; with sync (qt_cuda_synchronize for a
 * device) each such op waits for its work before its time is taken, so a
 * device's time lands on the op that queued it (and the queue no longer
 * overlaps host work: a profiled step is slower than a plain one).
 * Allocation, release, pinning, the scratch sizes and the precision pass
 * through untimed. One profile per process: a new call rewires the one
 * table and resets the times; not for concurrent use. */
typedef struct qt__op_time {
  const char *name; /* the op's field name in qt__ops, e.g. "linear_forward" */
  long calls;
  double seconds;
} qt__op_time;
const qt__ops *qt__ops_profile(const qt__ops *inner, int (*sync)(qt_err *err));
void qt__ops_profile_reset(void);
/* The columns that the CPU convolutions' matrix products take at least,
 * several images' column matrices side by side where one image's plane is
 * narrower (qt_cpu_conv2d.c): QT_CPU_CONV_COLUMNS in the environment, else
 * 512; 1 puts one image in each product. Sets it (0: the default) and
 * returns the previous value; only before any scratch is sized for a
 * convolution, since qt_cpu_conv2d_scratch_size depends on it. */
size_t qt__cpu_set_conv_columns(size_t columns);

/* The most entries a profile holds: more than the table's timed ops and
 * their BF16 sets. */
#define QT__OPS_PROFILE_MAX 96
/* Up to cap entries of the ops called since the last reset, most time
 * first; returns how many. */
size_t qt__ops_profile_read(qt__op_time *out, size_t cap);

/* qt__ops_move for `count` arrays of `bytes` each (src[k] on `from` to dst[k]
 * on `to`), through one host staging buffer when neither backend is the
 * host; `family` names the model in the out-of-memory message. */
int qt__ops_move_arrays(const qt__ops *from, const qt__ops *to, void *const *dst,
                        const void *const *src, size_t count, size_t bytes, const char *family,
                        qt_err *err);

/* The CUDA op table's optim_steps: qt_cuda_optim_tensor_step on each
 * slice, Adam and AdamW as one launch per QT_ADAM_JOBS tensors
 * (qt_cuda_optim.cuh), every slice checked before the first launch.
 * QT_ENODEV in a build without CUDA. */
int qt__cuda_optim_steps(const qt_optim_params *p, const qt__optim_slice *slices, size_t count,
                         qt_err *err);

/* qt_cuda_linear_backward, qt_cuda_gelu_backward and
 * qt_cuda_attention_backward with the op table's `set`: 1 writes dinp
 * (dqkv) instead of adding to it. QT_ENODEV in a build without CUDA. */
int qt__cuda_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                             const float *inp, const float *weight, size_t n, size_t in_c,
                             size_t out_c, int set, qt_err *err);
int qt__cuda_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n, int set,
                           qt_err *err);
int qt__cuda_attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                                const float *att, size_t batch, size_t tokens, size_t c,
                                size_t heads, int set, qt_err *err);

/* Fused attention (qt_cuda_attention_fused.cu): BF16 tensor-core products
 * with the scores kept in registers, for heads of 64 features and at most
 * 256 tokens on an sm_80 or newer device. fits says whether a shape can
 * run there (0 also without CUDA). The forward writes out and, into att,
 * the (batch, heads, tokens) log-sum-exps of the scaled scores; the
 * backward reads them and out (D = rowsum(dout * out)), and its scratch
 * holds qt_cuda_attention_scratch_size floats. */
int qt__cuda_attention_fused_fits(size_t batch, size_t tokens, size_t c, size_t heads);
int qt__cuda_attention_fused_forward(float *out, float *att, const float *qkv, size_t batch,
                                     size_t tokens, size_t c, size_t heads, qt_err *err);
int qt__cuda_attention_fused_backward(float *dqkv, float *scratch, const float *dout,
                                      const float *qkv, const float *att, const float *out,
                                      size_t batch, size_t tokens, size_t c, size_t heads, int set,
                                      qt_err *err);
/* The CUDA op table's residual_layernorm_forward (qt__ops): one kernel
 * for rows of at most 1024 features while the layer norm's row kernels are
 * on (qt__cuda_set_layernorm_rows), else the two ops. */
int qt__cuda_residual_layernorm_forward(float *out, void *norm, float *mean, float *rstd,
                                        const float *res, const void *branch, const float *gamma,
                                        const float *weight, const float *bias, size_t n, size_t c,
                                        float eps, unsigned bf16, qt_err *err);

/* The CUDA op table's BF16 activations (qt__ops' bf16_activations and
 * _bf16 ops). Under BF16 products: the linear inputs (unless
 * QT_CUDA_BF16_INPUTS=0) and with them fc1's output, GELU's and the
 * layer norms' output gradients and the branch outputs (unless
 * qt__cuda_set_bf16_hidden, _hidden_grad, _norm_grad, _branch turned them
 * off); where the fused attention runs for the shape, its output, qkv
 * with its gradient, and its output gradient (unless
 * qt__cuda_set_bf16_qkv, _attention_grad turned them off). Every BF16
 * array needs BF16 products (QT_EINVAL otherwise: the values would have
 * been rounded behind the caller's back), and the attention's the fused
 * kernels for the shape now. Supported sets: any for the linear ops (a
 * BF16 dinp `set` only), GELU's forward and the residual add with the
 * layer norm; the layer norm's output (forward) and output gradient
 * (backward); the attention's output, or its output with qkv (forward),
 * its output, with qkv and dqkv (`set` only), and with the output's
 * gradient too (backward). The fused kernels round Q, K and V as they load them and the
 * products round dqkv, so BF16 qkv and dqkv change no number; the other
 * BF16 activations do (GELU, the layer norms' backward, the attention's D
 * and the residual adds at the rounded values, as under PyTorch's
 * autocast). QT_ENODEV in a build without CUDA. */
unsigned qt__cuda_bf16_activations(size_t batch, size_t tokens, size_t c, size_t heads);
int qt__cuda_layernorm_forward_bf16(void *out, float *mean, float *rstd, const float *inp,
                                    const float *weight, const float *bias, size_t n, size_t c,
                                    float eps, unsigned bf16, qt_err *err);
int qt__cuda_layernorm_backward_bf16(float *dinp, float *dweight, float *dbias, const void *dout,
                                     const float *inp, const float *weight, const float *mean,
                                     const float *rstd, size_t n, size_t c, unsigned bf16,
                                     qt_err *err);
int qt__cuda_gelu_forward_bf16(void *out, const void *inp, size_t n, unsigned bf16, qt_err *err);
int qt__cuda_linear_forward_bf16(void *out, const void *inp, const float *weight, const float *bias,
                                 size_t n, size_t in_c, size_t out_c, unsigned bf16, qt_err *err);
int qt__cuda_linear_backward_bf16(void *dinp, float *dweight, float *dbias, const void *dout,
                                  const void *inp, const float *weight, size_t n, size_t in_c,
                                  size_t out_c, int set, unsigned bf16, qt_err *err);
int qt__cuda_gelu_linear_backward_bf16(void *dinp, float *dweight, float *dbias, float *dpre,
                                       const void *dout, const void *pre, const void *inp,
                                       const float *weight, size_t n, size_t in_c, size_t out_c,
                                       int set, unsigned bf16, qt_err *err);
int qt__cuda_attention_op_forward_bf16(void *out, float *att, const void *qkv, size_t batch,
                                       size_t tokens, size_t c, size_t heads, unsigned bf16,
                                       qt_err *err);
int qt__cuda_attention_op_backward_bf16(void *dqkv, float *scratch, const void *dout,
                                        const void *qkv, const float *att, const void *out,
                                        size_t batch, size_t tokens, size_t c, size_t heads,
                                        int set, unsigned bf16, qt_err *err);
/* The fused kernels with those BF16 arrays, without the op table's
 * checks (for tests). */
int qt__cuda_attention_fused_forward_bf16(void *out, float *att, const void *qkv, size_t batch,
                                          size_t tokens, size_t c, size_t heads, unsigned bf16,
                                          qt_err *err);
int qt__cuda_attention_fused_backward_bf16(void *dqkv, float *scratch, const void *dout,
                                           const void *qkv, const float *att, const void *out,
                                           size_t batch, size_t tokens, size_t c, size_t heads,
                                           int set, unsigned bf16, qt_err *err);

/* The op table's attention_saved_size: the fused kernels' log-sum-exps
 * where they run now, else the probabilities. */
size_t qt__cuda_attention_saved_size(size_t batch, size_t tokens, size_t c, size_t heads);

/* The CUDA op table's attention: the fused kernels under BF16 products
 * where they fit, unless turned off (att then holds the log-sum-exps, read
 * with out only by the backward of the same step);
 * qt_cuda_attention_forward and qt__cuda_attention_backward otherwise. */
int qt__cuda_attention_op_forward(float *out, float *att, const float *qkv, size_t batch,
                                  size_t tokens, size_t c, size_t heads, qt_err *err);
int qt__cuda_attention_op_backward(float *dqkv, float *scratch, const float *dout, const float *qkv,
                                   const float *att, const float *out, size_t batch, size_t tokens,
                                   size_t c, size_t heads, int set, qt_err *err);

/* Turns the op table's fused attention on (1) or off (0) for the process;
 * returns the previous setting. On unless QT_CUDA_FUSED_ATTENTION=0 in the
 * environment. Set it between epochs, not between a forward and its
 * backward. */
int qt__cuda_set_fused_attention(int on);

/* Turns the fused attention's staging by asynchronous copies (cp.async,
 * in groups of 64 rows that the steps wait for as they reach them) on (1)
 * or off (0: the whole head staged before a barrier; the same values, so
 * the same results) for the process; returns the previous setting. Off
 * unless QT_CUDA_FA_ASYNC=1 in the environment, until a device measures
 * it (docs/cuda.md, "Fused attention"). */
int qt__cuda_set_fa_async(int on);

/* Turns the fused attention backward's dQ from dS on (1: the dkv kernel
 * writes dS in BF16, D comes from a kernel of its own, cuBLAS multiplies
 * dS by K for each head; a BF16 qkv only, within the BF16 bound of the
 * dq kernel's) or off (0: the dq kernel) for the process; returns the
 * previous setting. Off unless QT_CUDA_FA_DS=1 in the environment, until
 * a device measures it (docs/cuda.md, "Fused attention"). */
int qt__cuda_set_fa_ds(int on);

/* The same for qkv kept in BF16 (QT__KEEP_QKV). On unless
 * QT_CUDA_BF16_QKV=0. */
int qt__cuda_set_bf16_qkv(int on);

/* The same for the MLP's hidden pre-activation kept in BF16
 * (QT__KEEP_HIDDEN). On unless QT_CUDA_BF16_HIDDEN=0. */
int qt__cuda_set_bf16_hidden(int on);

/* The same for GELU's output gradient kept in BF16 (QT__KEEP_HIDDEN_GRAD).
 * On unless QT_CUDA_BF16_HIDDEN_GRAD=0. */
int qt__cuda_set_bf16_hidden_grad(int on);

/* The same for the layer norms' output gradients kept in BF16
 * (QT__KEEP_NORM_GRAD). On unless QT_CUDA_BF16_NORM_GRAD=0. */
int qt__cuda_set_bf16_norm_grad(int on);

/* The same for the attention's output gradient kept in BF16
 * (QT__KEEP_ATTENTION_GRAD). On unless QT_CUDA_BF16_ATTENTION_GRAD=0. */
int qt__cuda_set_bf16_attention_grad(int on);

/* The same for the branch outputs kept in BF16 (QT__KEEP_BRANCH). On
 * unless QT_CUDA_BF16_BRANCH=0. */
int qt__cuda_set_bf16_branch(int on);

/* The same for the layer norm's row kernels (qt_cuda_layernorm.cuh: a row
 * in registers, the backward's weight and bias sums in the same pass), for
 * rows of at most 1024 features. On unless QT_CUDA_LAYERNORM_ROWS=0. */
int qt__cuda_set_layernorm_rows(int on);

/* The same for the row backward's column sums kept in shared memory
 * instead of registers (rows of at most 768 features: three blocks per
 * multiprocessor instead of two). On unless QT_CUDA_LN_SHARED_SUMS=0. */
int qt__cuda_set_layernorm_shared_sums(int on);

/* The same for the convolutional models' backward passes that take `set`
 * in the op table. */
int qt__cuda_conv2d_backward(float *dinp, float *dweight, float *dbias, float *scratch,
                             const float *dout, const float *inp, const float *weight,
                             const qt_conv2d_shape *shape, int set, qt_err *err);
int qt__cuda_batchnorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                const float *inp, const float *weight, const float *mean,
                                const float *rstd, size_t batch, size_t c, size_t hw,
                                qt_batchnorm_mode mode, int set, qt_err *err);
int qt__cuda_stochnorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                const float *inp, const float *weight, const float *mean,
                                const float *rstd, const unsigned char *select, size_t batch,
                                size_t c, size_t hw, int set, qt_err *err);
int qt__cuda_relu_backward(float *dinp, const float *dout, const float *inp, size_t n, int set,
                           qt_err *err);
int qt__cuda_relu6_backward(float *dinp, const float *dout, const float *inp, size_t n, int set,
                            qt_err *err);
int qt__cuda_silu_backward(float *dinp, const float *dout, const float *inp, size_t n, int set,
                           qt_err *err);

/* Turns qt_cuda_linear_forward's bias in cuBLASLt's epilogue on (1) or
 * off (0: the bias broadcast into the output, then the product with beta
 * 1) for the process; returns the previous setting. On unless
 * QT_CUDA_LT_BIAS=0 in the environment; see docs/cuda.md. */
int qt__cuda_set_lt_bias(int on);

/* How many linear forwards added their bias in cuBLASLt's epilogue; 0 in a
 * build without CUDA. For tests. */
long qt__cuda_linear_lt_count(void);

/* Turns the CUDA table's kept weights (QT__BF16_KEEP_WEIGHT: a linear
 * forward's weight rounded to BF16 once for its backward too) on (1) or
 * off (0: the backward rounds it again) for the process; returns the
 * previous setting. On unless QT_CUDA_KEEP_WEIGHTS=0 in the environment. */
int qt__cuda_set_keep_weights(int on);
/* How many linear backwards took a kept weight; 0 in a build without
 * CUDA. For tests. */
long qt__cuda_kept_weight_count(void);

/* Turns the CUDA column sums' chunk totals in the same launch (the last
 * block of each column tile adds them) on (1) or off (0: a second kernel
 * adds them; the same sums in the same order) for the process; returns
 * the previous setting. On unless QT_CUDA_COLSUM_ONE_PASS=0 in the
 * environment. */
int qt__cuda_set_colsum_one_pass(int on);

/* cuDNN for the CUDA convolutions (qt_cuda_cudnn.cu, docs/cuda.md):
 * whether this process loaded it (dlopen of libcudnn.so.9, done here if
 * no convolution did yet), with its version (90100 for 9.1.0) in
 * *version, or 0 and why not in why (a phrase; "" when loaded). 0 in a
 * build without CUDA. */
int qt__cuda_cudnn_loaded(int *version, char *why, size_t why_size);
/* Whether cuDNN would take the convolution (FP32 or TF32 products aside):
 * neither depthwise nor pointwise, padding symmetric, element counts
 * within an int. */
int qt__cuda_cudnn_fits(const qt_conv2d_shape *shape);
/* Turns the convolutions through cuDNN on (1) or off (0: im2col and
 * cuBLAS for every one) for the process; returns the previous setting. On
 * unless QT_CUDA_CUDNN=0 in the environment. */
int qt__cuda_set_cudnn(int on);
/* That switch as it stands (reading the environment the first time); 0
 * in a build without CUDA. */
int qt__cuda_cudnn_switched_on(void);
/* How many convolution passes (forwards, input and weight gradients)
 * cuDNN ran; 0 in a build without CUDA. For tests. */
long qt__cuda_cudnn_count(void);

/* How many times the epilogue path asked cuBLASLt's heuristic for an
 * algorithm (once per shape, precision and alignments, whether it took
 * the shape or declined it); 0 in a build without CUDA. For tests. */
long qt__cuda_linear_lt_queries(void);

/* Moves a ViT's parameters, gradients, AdamW moments and step counter to
 * the backend of `ops` (see qt_vit_to_backend; tests pass their own
 * tables). */
int qt__vit_set_ops(qt_vit_t *vit, const qt__ops *ops, qt_err *err);

/* The same for any model (qt_model_to_backend), and the table its arrays
 * are on (the CPU's until moved). */
int qt__model_set_ops(qt_model_t *m, const qt__ops *ops, qt_err *err);
const qt__ops *qt__model_ops(const qt_model_t *m);

/* The forwards of images already on the model's backend (staged: a run
 * uploads the next batch with upload_async while the device works on the
 * current one), as qt_vit_forward, qt_cnn_forward and qt_model_forward
 * otherwise; an MLP's features are not staged (QT_EINVAL). */
int qt__vit_forward_staged(qt_vit_t *vit, const float *images, size_t batch, qt_err *err);
int qt__cnn_forward_staged(qt_cnn_t *m, const float *images, size_t batch, qt_batchnorm_mode mode,
                           qt_err *err);
int qt__model_forward_staged(qt_model_t *m, const float *images, size_t batch, int training,
                             qt_err *err);

/* qt_run_init and qt_run_load on the backend of ops instead of spec's
 * device (tests run them on a fake device). */
int qt__run_init_ops(const qt_run_spec *spec, const qt__ops *ops, qt_run_t **out, qt_err *err);
int qt__run_load_ops(const char *path, const qt_run_spec *spec, const qt__ops *ops, qt_run_t **out,
                     qt_err *err);

/* Moves an MLP's parameters and gradients to the backend of `ops`, with a
 * new activation arena there (see qt_mlp_to_backend). */
int qt__mlp_set_ops(qt_mlp_t *mlp, const qt__ops *ops, qt_err *err);

/* Moves a convolutional model's parameters (with the running statistics)
 * and gradients to the backend of `ops`, with a new activation arena there
 * (see qt_cnn_to_backend; tests pass their own tables). */
int qt__cnn_set_ops(qt_cnn_t *cnn, const qt__ops *ops, qt_err *err);

#ifdef __cplusplus
}
#endif

#endif /* QT_FINETUNE_INTERNAL_H */

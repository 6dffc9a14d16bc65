/*
 * qt_cuda_linear.cu - the linear layer on a CUDA device, the twin of
 * cpu/qt_cpu_linear.c: matrix products by cuBLAS (in the precision of
 * qt_cuda_set_matmul_precision), the bias added in cuBLASLt's epilogue (or
 * broadcast by a kernel) and the bias gradient by qt__cuda_column_sums
 * (under BF16 products in the same pass that rounds the output's gradient
 * for both products). See qt_finetune.h. Also the variants with BF16
 * arrays (the op table's _bf16 ops, in qt_finetune_internal.h), the
 * backward of the MLP's GELU with the linear layer before it
 * (gelu_linear_backward_bf16), and the op table's choice of the BF16
 * activations (bf16_activations).
 */
#include <limits.h>

#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "finetune/cuda/qt_cuda_internal.h"

/* out (n, out_c) = bias broadcast to every row; the index arithmetic in
 * I (unsigned where qt__cuda_int_indices allows: one division per
 * element). */
template <typename I>
static __global__ void __launch_bounds__(QT_CUDA_THREADS)
    bias_broadcast_kernel(float *__restrict__ out, const float *__restrict__ bias, I total,
                          I out_c) {
  I stride = (I)gridDim.x * blockDim.x;
  for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    out[i] = bias[i % out_c];
  }
}

/* The forward with its input in FP32 (inp) or, under BF16 products,
 * already in BF16 (inp16), and its weight rounded by the product or
 * (weight16, under BF16 products) already. */
static int forward(float *out, const float *inp, const void *inp16, const float *weight,
                   const void *weight16, const float *bias, size_t n, size_t in_c, size_t out_c,
                   const char *who, qt_err *err) {
  if (n > INT_MAX || in_c > INT_MAX || out_c > INT_MAX) {
    return qt_err_set(err, QT_EINVAL, "%s: shape (%zu, %zu) -> %zu does not fit an int", who, n,
                      in_c, out_c);
  }
  if (n == 0 || out_c == 0) return 0;
  if (!out || (in_c > 0 && ((!inp && !inp16) || !weight))) {
    return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  }
  if (bias && in_c > 0 &&
      qt__cuda_linear_bias_lt(out, 0, inp, inp16, weight, weight16, bias, n, in_c, out_c, who) == 0)
    return 0;
  if (bias) {
    if (qt__cuda_int_indices(n * out_c))
      bias_broadcast_kernel<unsigned>
          <<<qt__cuda_blocks(n * out_c), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(
              out, bias, (unsigned)(n * out_c), (unsigned)out_c);
    else
      bias_broadcast_kernel<size_t>
          <<<qt__cuda_blocks(n * out_c), QT_CUDA_THREADS, 0, qt__cuda_stream()>>>(out, bias,
                                                                                  n * out_c, out_c);
    int rc = qt__cuda_check_launch(err, who, "the bias broadcast");
    if (rc < 0) return rc;
  }
  if (in_c == 0) {
    if (!bias) {
      cudaError_t status = cudaMemsetAsync(out, 0, n * out_c * sizeof *out, qt__cuda_stream());
      if (status != cudaSuccess) return qt__cuda_error(err, status, who);
    }
    return 0;
  }
  /* out (n, out_c) = inp (n, in_c) . weight^T (+ out, which holds the bias) */
  qt__cuda_product product = {.trans_b = 1,
                              .m = n,
                              .n = out_c,
                              .k = in_c,
                              .a = inp,
                              .lda = in_c,
                              .b = weight,
                              .ldb = in_c,
                              .beta = bias ? 1.0f : 0.0f,
                              .c = out,
                              .ldc = out_c,
                              .a16 = inp16,
                              .b16 = weight16};
  return qt__cuda_gemms(&product, 1, who, err);
}

extern "C" int qt_cuda_linear_forward(float *out, const float *inp, const float *weight,
                                      const float *bias, size_t n, size_t in_c, size_t out_c,
                                      qt_err *err) {
  return forward(out, inp, NULL, weight, NULL, bias, n, in_c, out_c, "qt_cuda_linear_forward", err);
}

/* The weight's BF16 copy kept for the backward, where `bf16` asks for it
 * (QT__BF16_KEEP_WEIGHT) under BF16 products and a created stream gives
 * it; else NULL, and the product rounds the weight as it reads it. */
static const void *keep_weight(const float *weight, size_t in_c, size_t out_c, unsigned bf16) {
  if (!(bf16 & QT__BF16_KEEP_WEIGHT) || !weight || in_c == 0 ||
      qt__cuda_matmul_precision() != QT_MATMUL_BF16)
    return NULL;
  return qt__cuda_keep_weight(weight, in_c * out_c);
}

/* The op table's linear_forward_bf16 (QT__BF16_INP: inp in BF16;
 * QT__BF16_OUT: out in BF16, rounded to nearest even from the FP32 sums,
 * bias included; QT__BF16_KEEP_WEIGHT: the weight's rounding kept for the
 * backward). cuBLASLt's epilogue writes a BF16 output where it takes
 * the shape (with a bias), adding the bias rounded to BF16, as PyTorch's
 * autocast does; else the FP32 product goes into scratch and is rounded
 * from there, with the bias as it is. */
extern "C" int qt__cuda_linear_forward_bf16(void *out, const void *inp, const float *weight,
                                            const float *bias, size_t n, size_t in_c, size_t out_c,
                                            unsigned bf16, qt_err *err) {
  const char *who = "qt_cuda_linear_forward (BF16 arrays)";
  int rc = qt__cuda_check_bf16(bf16, QT__BF16_INP | QT__BF16_OUT | QT__BF16_KEEP_WEIGHT, who, err);
  if (rc < 0) return rc;
  const float *inp32 = bf16 & QT__BF16_INP ? NULL : (const float *)inp;
  const void *inp16 = bf16 & QT__BF16_INP ? inp : NULL;
  const void *weight16 = n > 0 && inp ? keep_weight(weight, in_c, out_c, bf16) : NULL;
  if (!(bf16 & QT__BF16_OUT))
    return forward((float *)out, inp32, inp16, weight, weight16, bias, n, in_c, out_c, who, err);
  if (n > INT_MAX || in_c > INT_MAX || out_c > INT_MAX) {
    return qt_err_set(err, QT_EINVAL, "%s: shape (%zu, %zu) -> %zu does not fit an int", who, n,
                      in_c, out_c);
  }
  if (n == 0 || out_c == 0) return 0;
  if (!out || (in_c > 0 && (!inp || !weight)))
    return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  if (bias && in_c > 0 &&
      qt__cuda_linear_bias_lt(out, 1, inp32, inp16, weight, weight16, bias, n, in_c, out_c, who) ==
          0)
    return 0;
  float *wide = NULL;
  rc = qt__cuda_products_scratch_lock(n * out_c, &wide, who, err);
  if (rc < 0) return rc;
  rc = forward(wide, inp32, inp16, weight, weight16, bias, n, in_c, out_c, who, err);
  if (rc == 0) rc = qt__cuda_round_bf16(out, wide, n * out_c, who, err);
  qt__cuda_products_scratch_unlock();
  return rc;
}

/* The arrays of a linear backward. dinp, dout and inp each in FP32 or
 * (the 16 twin, under BF16 products) BF16: a BF16 dinp is written (set),
 * its FP32 sums rounded; a BF16 dout goes into the products as it is and
 * its values into the bias gradient's sums. With gelu_pre, dout is the
 * gradient at the output of an exact GELU whose input was this layer's
 * output (gelu_pre, in BF16 when pre_bf16): the layer's output gradient is
 * what the GELU passes back, which goes into dpre first, or, under BF16
 * products with a bias gradient, only into the BF16 copy that the bias
 * gradient's pass writes. */
typedef struct backward_arrays {
  float *dinp;
  void *dinp16;
  float *dweight, *dbias;
  const float *dout;
  const void *dout16;
  const float *inp;
  const void *inp16;
  const float *weight;
  const void *weight16; /* the weight's BF16 copy that its forward kept, or NULL */
  const void *gelu_pre;
  int pre_bf16;
  float *dpre;
} backward_arrays;

static int backward(backward_arrays a, size_t n, size_t in_c, size_t out_c, int set,
                    const char *who, qt_err *err) {
  if (n > INT_MAX || in_c > INT_MAX || out_c > INT_MAX) {
    return qt_err_set(err, QT_EINVAL, "%s: shape (%zu, %zu) -> %zu does not fit an int", who, n,
                      in_c, out_c);
  }
  int has_dinp = a.dinp || a.dinp16;
  if (a.dinp16 && !set)
    return qt_err_set(err, QT_EINVAL, "%s: a BF16 dinp is written (set), not added to", who);
  if (set && has_dinp && n * in_c > 0 && out_c == 0) {
    /* No product to write dinp: as zeroed. */
    cudaError_t status =
        a.dinp16 ? cudaMemsetAsync(a.dinp16, 0, n * in_c * 2, qt__cuda_stream())
                 : cudaMemsetAsync(a.dinp, 0, n * in_c * sizeof(float), qt__cuda_stream());
    if (status != cudaSuccess) return qt__cuda_error(err, status, who);
  }
  if (n == 0 || out_c == 0) return 0;
  if ((!a.dout && !a.dout16) || (has_dinp && in_c > 0 && !a.weight) ||
      (a.dweight && in_c > 0 && !a.inp && !a.inp16) || (a.gelu_pre && !a.dpre)) {
    return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  }
  int precision = qt__cuda_matmul_precision();
  int products_read_dout = (has_dinp || a.dweight) && in_c > 0;
  /* Both products would round dout and the bias gradient read it again:
   * under BF16 products one pass over dout does both (and the GELU's
   * gradient before them), and the products take its copy. A BF16 dout
   * without the GELU goes into the products as it is. */
  int one_pass =
      (a.dout || a.gelu_pre) && a.dbias && products_read_dout && precision == QT_MATMUL_BF16;
  if (a.gelu_pre && !one_pass) {
    int rc =
        qt__cuda_gelu_backward_any(a.dpre, a.dout ? (const void *)a.dout : a.dout16,
                                   a.dout16 && !a.dout, a.gelu_pre, a.pre_bf16, n * out_c, 1, err);
    if (rc < 0) return rc;
    a.dout = a.dpre;
    a.dout16 = NULL;
    a.gelu_pre = NULL;
  }
  /* Both products read dout: one call rounds it once under BF16. */
  qt__cuda_product products[2];
  size_t count = 0;
  float *wide = NULL; /* a BF16 dinp's FP32 product, where its operands are not BF16 */
  if (has_dinp && in_c > 0) {
    if (a.dinp16 && !(precision == QT_MATMUL_BF16 || one_pass || a.dout16)) {
      int rc = qt__cuda_products_scratch_lock(n * in_c, &wide, who, err);
      if (rc < 0) return rc;
    }
    /* dinp (n, in_c) (+)= dout (n, out_c) . weight (out_c, in_c) */
    products[count++] = {.m = n,
                         .n = in_c,
                         .k = out_c,
                         .a = a.dout,
                         .lda = out_c,
                         .b = a.weight,
                         .ldb = in_c,
                         .beta = set ? 0.0f : 1.0f,
                         .c = wide ? wide : a.dinp,
                         .ldc = in_c,
                         .a16 = a.dout16,
                         .b16 = a.weight16,
                         .c16 = wide ? NULL : a.dinp16};
  }
  if (a.dweight && in_c > 0) {
    /* dweight (out_c, in_c) += dout^T (out_c, n) . inp (n, in_c) */
    products[count++] = {.trans_a = 1,
                         .m = out_c,
                         .n = in_c,
                         .k = n,
                         .a = a.dout,
                         .lda = out_c,
                         .b = a.inp,
                         .ldb = in_c,
                         .beta = 1.0f,
                         .c = a.dweight,
                         .ldc = in_c,
                         .a16 = a.dout16,
                         .b16 = a.inp16};
  }
  int rc = 0;
  if (one_pass) {
    void *rounded = NULL;
    rc = qt__cuda_rounded_scratch_lock(n * out_c, &rounded, who, err);
    if (rc == 0) {
      rc = a.gelu_pre ? qt__cuda_column_sums_gelu_rounding(
                            a.dbias, rounded, a.dout ? (const void *)a.dout : a.dout16,
                            a.dout16 && !a.dout, a.gelu_pre, a.pre_bf16, n, out_c, who, err)
                      : qt__cuda_column_sums_rounding(a.dbias, rounded, a.dout, n, out_c, who, err);
      for (size_t i = 0; i < count; i++) products[i].a16 = rounded;
      if (rc == 0) rc = qt__cuda_gemms(products, count, who, err);
      qt__cuda_rounded_scratch_unlock();
    }
  } else {
    rc = qt__cuda_gemms(products, count, who, err);
    if (rc == 0 && a.dbias && a.dout16)
      rc = qt__cuda_column_sums_any(QT__COLSUM_PLAIN, a.dbias, NULL, a.dout16, 1, NULL, NULL, NULL,
                                    n, out_c, who, err);
    else if (rc == 0 && a.dbias)
      rc = qt__cuda_column_sums(QT__COLSUM_PLAIN, a.dbias, NULL, a.dout, NULL, NULL, NULL, n, out_c,
                                who, err);
  }
  if (wide) {
    if (rc == 0) rc = qt__cuda_round_bf16(a.dinp16, wide, n * in_c, who, err);
    qt__cuda_products_scratch_unlock();
  }
  return rc;
}

extern "C" int qt__cuda_linear_backward(float *dinp, float *dweight, float *dbias,
                                        const float *dout, const float *inp, const float *weight,
                                        size_t n, size_t in_c, size_t out_c, int set, qt_err *err) {
  backward_arrays a = {};
  a.dinp = dinp;
  a.dweight = dweight;
  a.dbias = dbias;
  a.dout = dout;
  a.inp = inp;
  a.weight = weight;
  return backward(a, n, in_c, out_c, set, "qt_cuda_linear_backward", err);
}

/* The backward_arrays of the _bf16 ops' dinp, dout, inp and weight (its
 * kept copy where QT__BF16_KEPT_WEIGHT says the forward's still holds, and
 * under BF16 products: the same bits as the product's own rounding). */
static void set_arrays(backward_arrays *a, void *dinp, const void *dout, const void *inp,
                       const float *weight, size_t in_c, size_t out_c, unsigned bf16) {
  a->weight = weight;
  if ((bf16 & QT__BF16_KEPT_WEIGHT) && weight && dinp && in_c > 0 &&
      qt__cuda_matmul_precision() == QT_MATMUL_BF16)
    a->weight16 = qt__cuda_kept_weight(weight, in_c * out_c);
  if (bf16 & QT__BF16_DINP)
    a->dinp16 = dinp;
  else
    a->dinp = (float *)dinp;
  if (bf16 & QT__BF16_DOUT)
    a->dout16 = dout;
  else
    a->dout = (const float *)dout;
  if (bf16 & QT__BF16_INP)
    a->inp16 = inp;
  else
    a->inp = (const float *)inp;
}

/* The op table's linear_backward_bf16 (QT__BF16_INP: the forward's input
 * in BF16; QT__BF16_DOUT: the output's gradient in BF16, as the fused
 * attention writes qkv's; QT__BF16_DINP: the input's gradient written in
 * BF16: fc2's for GELU's backward, qkv's for the layer norm's) and
 * gelu_linear_backward_bf16 (QT__BF16_INP, QT__BF16_DOUT and
 * QT__BF16_DINP as there, dout being GELU's output gradient;
 * QT__BF16_OUT: pre, GELU's input, in BF16). */
extern "C" int qt__cuda_linear_backward_bf16(void *dinp, float *dweight, float *dbias,
                                             const void *dout, const void *inp, const float *weight,
                                             size_t n, size_t in_c, size_t out_c, int set,
                                             unsigned bf16, qt_err *err) {
  const char *who = "qt_cuda_linear_backward (BF16 arrays)";
  int rc = qt__cuda_check_bf16(
      bf16, QT__BF16_INP | QT__BF16_DOUT | QT__BF16_DINP | QT__BF16_KEPT_WEIGHT, who, err);
  if (rc < 0) return rc;
  backward_arrays a = {};
  set_arrays(&a, dinp, dout, inp, weight, in_c, out_c, bf16);
  a.dweight = dweight;
  a.dbias = dbias;
  return backward(a, n, in_c, out_c, set, who, err);
}

extern "C" int qt__cuda_gelu_linear_backward_bf16(void *dinp, float *dweight, float *dbias,
                                                  float *dpre, const void *dout, const void *pre,
                                                  const void *inp, const float *weight, size_t n,
                                                  size_t in_c, size_t out_c, int set, unsigned bf16,
                                                  qt_err *err) {
  const char *who = "qt_cuda_gelu_linear_backward (BF16 arrays)";
  int rc = qt__cuda_check_bf16(
      bf16, QT__BF16_INP | QT__BF16_OUT | QT__BF16_DOUT | QT__BF16_DINP | QT__BF16_KEPT_WEIGHT, who,
      err);
  if (rc < 0) return rc;
  if (!pre || !dout) return qt_err_set(err, QT_EINVAL, "%s: NULL array", who);
  backward_arrays a = {};
  set_arrays(&a, dinp, dout, inp, weight, in_c, out_c, bf16);
  a.dweight = dweight;
  a.dbias = dbias;
  a.gelu_pre = pre;
  a.pre_bf16 = (bf16 & QT__BF16_OUT) != 0;
  a.dpre = dpre;
  return backward(a, n, in_c, out_c, set, who, err);
}

extern "C" int qt_cuda_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                                       const float *inp, const float *weight, size_t n, size_t in_c,
                                       size_t out_c, qt_err *err) {
  return qt__cuda_linear_backward(dinp, dweight, dbias, dout, inp, weight, n, in_c, out_c, 0, err);
}

/* The BF16 arrays of the _bf16 ops need BF16 products: under FP32
 * products their values would have been rounded behind the caller's
 * back. */
extern "C" int qt__cuda_check_bf16(unsigned bf16, unsigned implemented, const char *who,
                                   qt_err *err) {
  if (bf16 & ~implemented)
    return qt_err_set(err, QT_EINVAL, "%s: BF16 arrays 0x%x are not implemented", who, bf16);
  if (!bf16) return 0;
  int precision = qt__cuda_matmul_precision();
  if (precision == QT_MATMUL_BF16 || precision == QT_MATMUL_BF16_FAST) return 0;
  return qt_err_set(err, QT_EINVAL, "%s: a BF16 array needs BF16 products", who);
}

/* The switches of the op table's BF16 activations, each on unless its
 * environment variable is 0 (to measure one against the other); -1 until
 * the environment has been read. */
static int bf16_inputs = -1, bf16_hidden = -1, bf16_hidden_grad = -1, bf16_norm_grad = -1;
static int bf16_qkv = -1, bf16_attention_grad = -1, bf16_branch = -1;

extern "C" int qt__cuda_set_bf16_hidden(int on) {
  return qt__cuda_set_switch("QT_CUDA_BF16_HIDDEN", &bf16_hidden, on);
}

extern "C" int qt__cuda_set_bf16_hidden_grad(int on) {
  return qt__cuda_set_switch("QT_CUDA_BF16_HIDDEN_GRAD", &bf16_hidden_grad, on);
}

extern "C" int qt__cuda_set_bf16_norm_grad(int on) {
  return qt__cuda_set_switch("QT_CUDA_BF16_NORM_GRAD", &bf16_norm_grad, on);
}

extern "C" int qt__cuda_set_bf16_branch(int on) {
  return qt__cuda_set_switch("QT_CUDA_BF16_BRANCH", &bf16_branch, on);
}

extern "C" int qt__cuda_set_bf16_attention_grad(int on) {
  return qt__cuda_set_switch("QT_CUDA_BF16_ATTENTION_GRAD", &bf16_attention_grad, on);
}

extern "C" int qt__cuda_set_bf16_qkv(int on) {
  return qt__cuda_set_switch("QT_CUDA_BF16_QKV", &bf16_qkv, on);
}

/* The op table's bf16_activations: under BF16 products (either kind), the
 * linear inputs, fc1's output, GELU's output gradient and the layer norms'
 * output gradients (fc2's, fc1's and qkv's backward write them as the
 * products that read them would have rounded them: half the writes and
 * the readers' reads), and proj's and fc2's outputs (the residual add
 * then adds their rounded values, as under PyTorch's autocast); where the fused attention runs for
 * the shape (it writes its output in BF16 directly, and rounds Q, K and V as it loads them: half
 * the product's writes and its reads of qkv), its output, qkv and dqkv, and with them its output
 * gradient (which its products round too). */
extern "C" unsigned qt__cuda_bf16_activations(size_t batch, size_t tokens, size_t c, size_t heads) {
  int precision = qt__cuda_matmul_precision();
  if ((precision != QT_MATMUL_BF16 && precision != QT_MATMUL_BF16_FAST) ||
      !qt__cuda_switch_on("QT_CUDA_BF16_INPUTS", &bf16_inputs))
    return 0;
  unsigned keep = QT__KEEP_LINEAR_INPUTS;
  if (qt__cuda_switch_on("QT_CUDA_BF16_HIDDEN", &bf16_hidden)) keep |= QT__KEEP_HIDDEN;
  if (qt__cuda_switch_on("QT_CUDA_BF16_HIDDEN_GRAD", &bf16_hidden_grad))
    keep |= QT__KEEP_HIDDEN_GRAD;
  if (qt__cuda_switch_on("QT_CUDA_BF16_NORM_GRAD", &bf16_norm_grad)) keep |= QT__KEEP_NORM_GRAD;
  if (qt__cuda_switch_on("QT_CUDA_BF16_BRANCH", &bf16_branch)) keep |= QT__KEEP_BRANCH;
  if (qt__cuda_attention_fused_now(batch, tokens, c, heads)) {
    keep |= QT__KEEP_ATTENTION_OUT;
    if (qt__cuda_switch_on("QT_CUDA_BF16_QKV", &bf16_qkv)) keep |= QT__KEEP_QKV;
    if ((keep & QT__KEEP_QKV) &&
        qt__cuda_switch_on("QT_CUDA_BF16_ATTENTION_GRAD", &bf16_attention_grad))
      keep |= QT__KEEP_ATTENTION_GRAD;
  }
  return keep;
}

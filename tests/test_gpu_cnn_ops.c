/*
 * test_gpu_cnn_ops.c - parity of the CUDA convolutional layer ops
 * (convolution, batch norm, StochNorm, ReLU / ReLU6 / SiLU, global average and max
 * pooling, squeeze-and-excitation) with their CPU references, forward and
 * backward (label `gpu`). Without a CUDA device, or in a build without
 * CUDA, the program prints why and exits 77, which CTest reports as skipped.
 *
 * The measure is tests/test_gpu_ops.c's (docs/cuda.md): each output array
 * (a forward's result, or what a backward added to a gradient) is compared
 * as a whole,
 *
 *   error = max_i |gpu_i - cpu_i| / max_i |cpu_i - init_i|
 *
 * with init the gradient's value before the backward (0 for a forward),
 * bounded by 1e-5 (FP32 everywhere). Integer outputs (max pooling's argmax)
 * must agree exactly. Gradients start from small random values, so that the
 * tests also check that the backwards accumulate (+=). The shapes are the
 * small layers of MobileNetV2, EfficientNet and ResNet: 3x3 stride-2 stems,
 * depthwise 3x3 with stride 1 and 2, 1x1 pointwise, ResNet's 7x7 stride-2
 * stem with padding 3 and its 1x1 stride-2 downsample, TensorFlow 'same'
 * padding on odd and even sizes, grouped convolutions; batches of 1 and 3;
 * channel counts that are not multiples of 32. Where the machine has
 * cuDNN, the dense and grouped convolutions go through it (each case
 * counts its passes there), and run again on the im2col kernels
 * (conv_dense_im2col); three run in TF32 (bound 1e-2).
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "qt_test.h"
#include "qt_test_gpu.h"

/* ------------------------------------------------------------------------- */
/* Convolution                                                                */
/* ------------------------------------------------------------------------- */

/* The bound of the convolutions' checks: FP32's, or TF32's in
 * test_conv_tf32. */
static double conv_tolerance = PARITY_TOLERANCE;

static void conv_check(const char *what, const float *d, const float *cpu, const float *init,
                       size_t n) {
  expect_parity_tol(what, d, cpu, init, n, conv_tolerance);
}

static void conv_grad_check(const char *what, const grad *g) {
  conv_check(what, g->dev, g->cpu, g->init, g->n);
}

/* Whether the convolutions of this process go through cuDNN where they fit
 * (the library loaded and the switch on), as the counts below expect. */
static int cudnn_now(void) {
  return qt__cuda_cudnn_switched_on() && qt__cuda_cudnn_loaded(NULL, NULL, 0);
}

/* Runs one convolution forward and backward on both sides: six passes
 * (the forward, both gradients, then each alone, then the input's set),
 * every one through cuDNN where it takes the shape, else none. */
static void conv_case(const char *name, const qt_conv2d_shape *s, int with_bias, uint64_t seed) {
  long cudnn_before = qt__cuda_cudnn_count();
  qt_rng_t *rng = make_rng(seed);
  char what[128];
  size_t n_in = s->batch * s->in_c * s->in_h * s->in_w;
  size_t n_out = s->batch * s->out_c * s->out_h * s->out_w;
  size_t n_w = s->out_c * (s->in_c / s->groups) * s->kernel_h * s->kernel_w;
  float *inp = host_random(rng, n_in, 0.0, 1.0);
  float *weight = host_random(rng, n_w, 0.0, 0.2);
  float *bias = with_bias ? host_random(rng, s->out_c, 0.0, 0.5) : NULL;
  float *dout = host_random(rng, n_out, 0.0, 1.0);
  float *d_inp = device_floats(inp, n_in), *d_weight = device_floats(weight, n_w);
  float *d_bias = with_bias ? device_floats(bias, s->out_c) : NULL;
  float *d_dout = device_floats(dout, n_out);
  size_t cpu_scratch_n = qt_cpu_conv2d_scratch_size(s);
  size_t dev_scratch_n = qt_cuda_conv2d_scratch_size(s);
  /* The device holds every group's column matrix of one image or more (at
   * most the batch); depthwise and pointwise convolutions need none. */
  int pointwise = s->kernel_h == 1 && s->kernel_w == 1 && s->stride_h == 1 && s->stride_w == 1 &&
                  s->pad_top == 0 && s->pad_left == 0 && s->out_h == s->in_h && s->out_w == s->in_w;
  size_t image_cols = s->in_c == s->groups || pointwise
                          ? 0
                          : s->in_c * s->kernel_h * s->kernel_w * s->out_h * s->out_w;
  if (image_cols == 0) {
    CU_ASSERT_EQUAL(dev_scratch_n, 0);
  } else {
    CU_ASSERT_EQUAL(dev_scratch_n % image_cols, 0);
    CU_ASSERT(dev_scratch_n >= image_cols && dev_scratch_n <= image_cols * s->batch);
  }
  float *scratch = malloc((cpu_scratch_n ? cpu_scratch_n : 1) * sizeof *scratch);
  CU_ASSERT_PTR_NOT_NULL_FATAL(scratch);
  float *d_scratch = device_alloc(dev_scratch_n);

  float *out = host_random(rng, n_out, 0.0, 1.0); /* garbage: the forward overwrites */
  float *d_out = device_floats(out, n_out);
  qt_cpu_conv2d_forward(out, scratch, inp, weight, bias, s);
  CHECK_RC(qt_cuda_conv2d_forward(d_out, d_scratch, d_inp, d_weight, d_bias, s, E));
  snprintf(what, sizeof what, "conv %s%s: out", name, with_bias ? "" : " no bias");
  conv_check(what, d_out, out, NULL, n_out);

  grad dinp = grad_make(rng, n_in), dweight = grad_make(rng, n_w);
  grad dbias = grad_make(rng, s->out_c);
  qt_cpu_conv2d_backward(dinp.cpu, dweight.cpu, dbias.cpu, scratch, dout, inp, weight, s);
  CHECK_RC(qt_cuda_conv2d_backward(dinp.dev, dweight.dev, dbias.dev, d_scratch, d_dout, d_inp,
                                   d_weight, s, E));
  snprintf(what, sizeof what, "conv %s: dinp", name);
  conv_grad_check(what, &dinp);
  snprintf(what, sizeof what, "conv %s: dweight", name);
  conv_grad_check(what, &dweight);
  snprintf(what, sizeof what, "conv %s: dbias", name);
  conv_grad_check(what, &dbias);

  /* NULL gradients are skipped: dweight alone, then dinp alone. */
  qt_cpu_conv2d_backward(NULL, dweight.cpu, NULL, scratch, dout, inp, weight, s);
  CHECK_RC(
      qt_cuda_conv2d_backward(NULL, dweight.dev, NULL, d_scratch, d_dout, d_inp, d_weight, s, E));
  snprintf(what, sizeof what, "conv %s: dweight twice", name);
  conv_grad_check(what, &dweight);
  qt_cpu_conv2d_backward(dinp.cpu, NULL, NULL, scratch, dout, inp, weight, s);
  CHECK_RC(qt_cuda_conv2d_backward(dinp.dev, NULL, NULL, d_scratch, d_dout, d_inp, d_weight, s, E));
  snprintf(what, sizeof what, "conv %s: dinp twice", name);
  conv_grad_check(what, &dinp);
  /* `set` (the op table's): dinp written, not added to. */
  grad fresh = grad_make_unset(n_in);
  qt_cpu_conv2d_backward(fresh.cpu, NULL, NULL, scratch, dout, inp, weight, s);
  CHECK_RC(
      qt__cuda_conv2d_backward(fresh.dev, NULL, NULL, d_scratch, d_dout, d_inp, d_weight, s, 1, E));
  snprintf(what, sizeof what, "conv %s: dinp set", name);
  conv_grad_check(what, &fresh);
  grad_free(&fresh);
  snprintf(what, sizeof what, "conv %s: dbias untouched", name);
  conv_grad_check(what, &dbias);

  long cudnn_ran = qt__cuda_cudnn_count() - cudnn_before;
  long cudnn_want = cudnn_now() && qt__cuda_cudnn_fits(s) ? 6 : 0;
  if (cudnn_ran != cudnn_want)
    fprintf(stderr, "\nconv %s: %ld passes through cuDNN, expected %ld\n", name, cudnn_ran,
            cudnn_want);
  CU_ASSERT_EQUAL(cudnn_ran, cudnn_want);

  grad_free(&dinp);
  grad_free(&dweight);
  grad_free(&dbias);
  free(inp);
  free(weight);
  free(bias);
  free(dout);
  free(out);
  free(scratch);
  qt_cuda_free(d_inp);
  qt_cuda_free(d_weight);
  qt_cuda_free(d_bias);
  qt_cuda_free(d_dout);
  qt_cuda_free(d_out);
  qt_cuda_free(d_scratch);
  qt_rng_free(rng);
}

/* PyTorch's symmetric padding. */
static qt_conv2d_shape conv_shape(size_t batch, size_t in_c, size_t size, size_t out_c,
                                  size_t kernel, size_t stride, size_t pad, size_t groups) {
  qt_conv2d_shape s;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(
      qt_conv2d_shape_init(&s, batch, in_c, size, size, out_c, kernel, stride, pad, groups, &err),
      0);
  return s;
}

/* TensorFlow's 'same'. */
static qt_conv2d_shape same_shape(size_t batch, size_t in_c, size_t size, size_t out_c,
                                  size_t kernel, size_t stride, size_t groups) {
  qt_conv2d_shape s;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(
      qt_conv2d_shape_init_same(&s, batch, in_c, size, size, out_c, kernel, stride, groups, &err),
      0);
  return s;
}

/* A rectangular geometry filled by hand (the shape constructors make square
 * ones): kernel kh x kw, stride sh x sw, symmetric padding ph, pw. It
 * catches a height and a width swapped in the index arithmetic. */
static qt_conv2d_shape rect_shape(size_t batch, size_t in_c, size_t in_h, size_t in_w, size_t out_c,
                                  size_t kh, size_t kw, size_t sh, size_t sw, size_t ph, size_t pw,
                                  size_t groups) {
  qt_conv2d_shape s = {.batch = batch,
                       .in_c = in_c,
                       .in_h = in_h,
                       .in_w = in_w,
                       .out_c = out_c,
                       .out_h = (in_h + 2 * ph - kh) / sh + 1,
                       .out_w = (in_w + 2 * pw - kw) / sw + 1,
                       .kernel_h = kh,
                       .kernel_w = kw,
                       .stride_h = sh,
                       .stride_w = sw,
                       .pad_top = ph,
                       .pad_left = pw,
                       .groups = groups};
  return s;
}

/* Dense and grouped convolutions (im2col and cuBLAS, or the image itself
 * for pointwise ones). */
static void test_conv_dense(void) {
  qt_conv2d_shape s;
  s = conv_shape(3, 3, 33, 24, 3, 2, 1, 1);
  conv_case("stem 3x3/2 (3, 3, 33x33) -> 24", &s, 0, 101);
  s = conv_shape(1, 3, 32, 24, 3, 2, 1, 1);
  conv_case("stem 3x3/2 (1, 3, 32x32) -> 24", &s, 1, 102);
  s = conv_shape(1, 3, 31, 20, 7, 2, 3, 1);
  conv_case("ResNet stem 7x7/2 pad 3 (1, 3, 31x31) -> 20", &s, 0, 103);
  s = conv_shape(3, 3, 20, 13, 7, 2, 3, 1);
  conv_case("ResNet stem 7x7/2 pad 3 (3, 3, 20x20) -> 13", &s, 1, 104);
  s = conv_shape(3, 24, 9, 37, 1, 1, 0, 1);
  conv_case("pointwise 1x1 (3, 24, 9x9) -> 37", &s, 1, 105);
  s = conv_shape(1, 40, 7, 19, 1, 1, 0, 1);
  conv_case("pointwise 1x1 (1, 40, 7x7) -> 19", &s, 0, 106);
  s = conv_shape(3, 16, 9, 29, 1, 2, 0, 1);
  conv_case("downsample 1x1/2 (3, 16, 9x9) -> 29", &s, 0, 107);
  s = conv_shape(3, 12, 11, 18, 3, 1, 1, 3);
  conv_case("grouped 3x3 g3 (3, 12, 11x11) -> 18", &s, 1, 108);
  s = conv_shape(1, 64, 6, 48, 3, 2, 1, 16);
  conv_case("grouped 3x3/2 g16 (1, 64, 6x6) -> 48", &s, 0, 109);
  s = conv_shape(3, 10, 5, 15, 1, 1, 0, 5);
  conv_case("grouped pointwise g5 (3, 10, 5x5) -> 15", &s, 1, 110);
  s = conv_shape(1, 5, 4, 7, 3, 1, 0, 1);
  conv_case("valid 3x3 no padding (1, 5, 4x4) -> 7", &s, 1, 111);
  /* 13M floats of columns per image: the scratch holds two images' (of
   * 2^25 floats), so the batch goes in chunks of 2 and 1. */
  s = conv_shape(3, 16, 300, 8, 3, 1, 1, 1);
  CU_ASSERT_EQUAL(qt_cuda_conv2d_scratch_size(&s), (size_t)2 * 16 * 9 * 300 * 300);
  conv_case("3x3 in chunks of images (3, 16, 300x300) -> 8", &s, 1, 117);
  /* TensorFlow 'same': 15 -> 8 pads 1 / 1; 14 -> 7 pads 0 / 1 (the extra
   * pixel at the bottom and right); stride 1 pads symmetrically. */
  s = same_shape(3, 3, 15, 21, 3, 2, 1);
  conv_case("same 3x3/2 (3, 3, 15x15) -> 21", &s, 0, 112);
  s = same_shape(1, 5, 14, 12, 3, 2, 1);
  CU_ASSERT_EQUAL(s.pad_top, 0);
  conv_case("same 3x3/2 even (1, 5, 14x14) -> 12", &s, 1, 113);
  s = same_shape(3, 7, 13, 9, 5, 1, 1);
  conv_case("same 5x5/1 (3, 7, 13x13) -> 9", &s, 1, 114);
  s = rect_shape(2, 5, 13, 9, 7, 3, 5, 2, 1, 1, 2, 1);
  conv_case("rectangular 3x5/(2,1) pad (1,2) (2, 5, 13x9) -> 7", &s, 1, 115);
  s = rect_shape(2, 6, 13, 9, 9, 3, 5, 2, 1, 1, 2, 3);
  conv_case("rectangular grouped g3 (2, 6, 13x9) -> 9", &s, 0, 116);
  /* After the convolutions: a library that loaded but could make no
   * handle says so now. */
  int version = 0;
  char why[256];
  if (qt__cuda_cudnn_loaded(&version, why, sizeof why))
    printf("\n    through cuDNN %d.%d.%d%s", version / 10000, version / 100 % 100, version % 100,
           cudnn_now() ? "" : " (switched off)");
  else
    printf("\n    no cuDNN: %s", why);
}

/* The same on the im2col kernels and cuBLAS, where cuDNN took them above
 * (QT_CUDA_CUDNN=0's path). */
static void test_conv_dense_im2col(void) {
  int was = qt__cuda_set_cudnn(0);
  test_conv_dense();
  qt__cuda_set_cudnn(was);
}

/* TF32 products: cuDNN with its default math (tensor cores), or the
 * kernels' TF32 products, within the TF32 bound of test_gpu_ops. */
static void test_conv_tf32(void) {
  CU_ASSERT_EQUAL(qt_cuda_set_matmul_precision(QT_MATMUL_TF32), QT_MATMUL_FP32);
  conv_tolerance = 1e-2;
  qt_conv2d_shape s = conv_shape(3, 16, 20, 24, 3, 1, 1, 1);
  conv_case("TF32 3x3 (3, 16, 20x20) -> 24", &s, 1, 141);
  s = conv_shape(2, 3, 31, 20, 7, 2, 3, 1);
  conv_case("TF32 ResNet stem 7x7/2 (2, 3, 31x31) -> 20", &s, 0, 142);
  s = conv_shape(3, 12, 11, 18, 3, 1, 1, 3);
  conv_case("TF32 grouped 3x3 g3 (3, 12, 11x11) -> 18", &s, 1, 143);
  conv_tolerance = PARITY_TOLERANCE;
  CU_ASSERT_EQUAL(qt_cuda_set_matmul_precision(QT_MATMUL_FP32), QT_MATMUL_TF32);
}

/* Depthwise convolutions (direct kernels). */
static void test_conv_depthwise(void) {
  qt_conv2d_shape s;
  s = conv_shape(3, 24, 17, 24, 3, 1, 1, 24);
  conv_case("depthwise 3x3/1 (3, 24, 17x17)", &s, 0, 121);
  s = conv_shape(1, 40, 17, 40, 3, 2, 1, 40);
  conv_case("depthwise 3x3/2 (1, 40, 17x17)", &s, 1, 122);
  s = conv_shape(3, 37, 8, 37, 3, 2, 1, 37);
  conv_case("depthwise 3x3/2 even (3, 37, 8x8)", &s, 0, 123);
  s = conv_shape(3, 8, 9, 16, 5, 1, 2, 8);
  conv_case("depthwise 5x5 multiplier 2 (3, 8, 9x9) -> 16", &s, 1, 124);
  s = conv_shape(1, 6, 10, 6, 7, 2, 3, 6);
  conv_case("depthwise 7x7/2 pad 3 (1, 6, 10x10)", &s, 0, 125);
  s = same_shape(3, 11, 15, 11, 5, 2, 11);
  conv_case("depthwise same 5x5/2 (3, 11, 15x15)", &s, 1, 126);
  s = same_shape(1, 13, 16, 13, 3, 2, 13);
  CU_ASSERT_EQUAL(s.pad_top, 0);
  conv_case("depthwise same 3x3/2 even (1, 13, 16x16)", &s, 0, 127);
  s = same_shape(3, 9, 7, 9, 3, 1, 9);
  conv_case("depthwise same 3x3/1 (3, 9, 7x7)", &s, 1, 128);
  s = conv_shape(1, 3, 1, 3, 1, 1, 0, 3);
  conv_case("depthwise 1x1 on 1x1 (1, 3, 1x1)", &s, 1, 129);
  s = rect_shape(3, 6, 11, 8, 12, 5, 3, 1, 2, 2, 1, 6);
  conv_case("depthwise rectangular 5x3/(1,2) x2 (3, 6, 11x8)", &s, 1, 130);
  /* The weight gradient's terms in 2 and 3 chunks. */
  s = conv_shape(2, 2, 64, 4, 5, 1, 2, 2);
  conv_case("depthwise 5x5 multiplier 2 (2, 2, 64x64) -> 4", &s, 0, 131);
  s = conv_shape(8, 3, 40, 3, 3, 1, 1, 3);
  conv_case("depthwise 3x3/1 (8, 3, 40x40)", &s, 1, 132);
}

/* ------------------------------------------------------------------------- */
/* Batch norm                                                                 */
/* ------------------------------------------------------------------------- */

static const char *mode_name(qt_batchnorm_mode mode) {
  return mode == QT_BATCHNORM_MODE_TRAIN  ? "train"
         : mode == QT_BATCHNORM_MODE_EVAL ? "eval"
                                          : "frozen";
}

static void batchnorm_case(size_t batch, size_t c, size_t hw, int affine, qt_batchnorm_mode mode,
                           uint64_t seed) {
  qt_rng_t *rng = make_rng(seed);
  char what[128], tag[80];
  const float eps = 1e-3f, momentum = 0.1f;
  size_t n = batch * c * hw;
  snprintf(tag, sizeof tag, "batchnorm (%zu, %zu, %zu) %s%s", batch, c, hw, mode_name(mode),
           affine ? "" : " no affine");
  /* A large mean tests the two-pass variance. */
  float *inp = host_random(rng, n, 3.0, 2.0);
  float *weight = affine ? host_random(rng, c, 1.0, 0.2) : NULL;
  float *bias = affine ? host_random(rng, c, 0.0, 0.2) : NULL;
  float *dout = host_random(rng, n, 0.0, 1.0);
  float *running_mean = host_random(rng, c, 3.0, 0.5);
  float *running_var = host_random(rng, c, 0.0, 1.0);
  for (size_t ch = 0; ch < c; ch++) running_var[ch] = 4.0f + fabsf(running_var[ch]);
  float *d_inp = device_floats(inp, n), *d_dout = device_floats(dout, n);
  float *d_weight = affine ? device_floats(weight, c) : NULL;
  float *d_bias = affine ? device_floats(bias, c) : NULL;
  float *d_running_mean = device_floats(running_mean, c);
  float *d_running_var = device_floats(running_var, c);
  float *running_var_before = host_copy(running_var, c);

  float *out = host_random(rng, n, 0.0, 1.0), *mean = host_random(rng, c, 0.0, 1.0);
  float *rstd = host_random(rng, c, 0.0, 1.0);
  float *d_out = device_floats(out, n), *d_mean = device_floats(mean, c);
  float *d_rstd = device_floats(rstd, c);
  qt_cpu_batchnorm_forward(out, mean, rstd, running_mean, running_var, inp, weight, bias, batch, c,
                           hw, eps, momentum, mode);
  CHECK_RC(qt_cuda_batchnorm_forward(d_out, d_mean, d_rstd, d_running_mean, d_running_var, d_inp,
                                     d_weight, d_bias, batch, c, hw, eps, momentum, mode, E));
  snprintf(what, sizeof what, "%s: out", tag);
  expect_parity(what, d_out, out, NULL, n);
  snprintf(what, sizeof what, "%s: mean", tag);
  expect_parity(what, d_mean, mean, NULL, c);
  snprintf(what, sizeof what, "%s: rstd", tag);
  expect_parity(what, d_rstd, rstd, NULL, c);
  snprintf(what, sizeof what, "%s: running_mean", tag);
  expect_parity(what, d_running_mean, running_mean, NULL, c);
  snprintf(what, sizeof what, "%s: running_var", tag);
  expect_parity(what, d_running_var, running_var, NULL, c);
  if (mode == QT_BATCHNORM_MODE_TRAIN && batch * hw == 1) {
    /* One value per channel: the running variance stays as it was. */
    float *gpu = download(d_running_var, c);
    CU_ASSERT_EQUAL(memcmp(gpu, running_var_before, c * sizeof *gpu), 0);
    free(gpu);
  }

  /* The backward reads the CPU's statistics on both sides. */
  CHECK_RC(qt_cuda_copy_to_device(d_mean, mean, c * sizeof *mean, E));
  CHECK_RC(qt_cuda_copy_to_device(d_rstd, rstd, c * sizeof *rstd, E));
  grad dinp = grad_make(rng, n), dweight = grad_make(rng, c), dbias = grad_make(rng, c);
  qt_cpu_batchnorm_backward(dinp.cpu, dweight.cpu, dbias.cpu, dout, inp, weight, mean, rstd, batch,
                            c, hw, mode);
  CHECK_RC(qt_cuda_batchnorm_backward(dinp.dev, dweight.dev, dbias.dev, d_dout, d_inp, d_weight,
                                      d_mean, d_rstd, batch, c, hw, mode, E));
  snprintf(what, sizeof what, "%s: dinp", tag);
  grad_check(what, &dinp);
  snprintf(what, sizeof what, "%s: dweight", tag);
  grad_check(what, &dweight);
  snprintf(what, sizeof what, "%s: dbias", tag);
  grad_check(what, &dbias);
  if (mode == QT_BATCHNORM_MODE_FROZEN) {
    /* Frozen: the affine gradients are left alone. */
    float *gpu = download(dweight.dev, c);
    CU_ASSERT_EQUAL(memcmp(gpu, dweight.init, c * sizeof *gpu), 0);
    free(gpu);
  }
  /* Without dinp: the affine gradients alone. */
  qt_cpu_batchnorm_backward(NULL, dweight.cpu, dbias.cpu, dout, inp, weight, mean, rstd, batch, c,
                            hw, mode);
  CHECK_RC(qt_cuda_batchnorm_backward(NULL, dweight.dev, dbias.dev, d_dout, d_inp, d_weight, d_mean,
                                      d_rstd, batch, c, hw, mode, E));
  snprintf(what, sizeof what, "%s: dweight twice", tag);
  grad_check(what, &dweight);
  /* `set`: dinp written, not added to. */
  grad fresh = grad_make_unset(n);
  qt_cpu_batchnorm_backward(fresh.cpu, NULL, NULL, dout, inp, weight, mean, rstd, batch, c, hw,
                            mode);
  CHECK_RC(qt__cuda_batchnorm_backward(fresh.dev, NULL, NULL, d_dout, d_inp, d_weight, d_mean,
                                       d_rstd, batch, c, hw, mode, 1, E));
  snprintf(what, sizeof what, "%s: dinp set", tag);
  grad_check(what, &fresh);
  grad_free(&fresh);

  grad_free(&dinp);
  grad_free(&dweight);
  grad_free(&dbias);
  free(inp);
  free(weight);
  free(bias);
  free(dout);
  free(running_mean);
  free(running_var);
  free(running_var_before);
  free(out);
  free(mean);
  free(rstd);
  qt_cuda_free(d_inp);
  qt_cuda_free(d_dout);
  qt_cuda_free(d_weight);
  qt_cuda_free(d_bias);
  qt_cuda_free(d_running_mean);
  qt_cuda_free(d_running_var);
  qt_cuda_free(d_out);
  qt_cuda_free(d_mean);
  qt_cuda_free(d_rstd);
  qt_rng_free(rng);
}

static void test_batchnorm(void) {
  static const qt_batchnorm_mode modes[] = {QT_BATCHNORM_MODE_TRAIN, QT_BATCHNORM_MODE_EVAL,
                                            QT_BATCHNORM_MODE_FROZEN};
  for (int m = 0; m < 3; m++) {
    uint64_t seed = 200 + 10 * (uint64_t)m;
    batchnorm_case(3, 13, 49, 1, modes[m], seed + 1);
    batchnorm_case(1, 24, 289, 1, modes[m], seed + 2); /* more positions than threads */
    batchnorm_case(3, 5, 7, 0, modes[m], seed + 3);
    batchnorm_case(1, 7, 1, 1, modes[m], seed + 4); /* one value per channel */
    batchnorm_case(3, 40, 1, 1, modes[m], seed + 5);
    /* A channel's values in 3 chunks whose bounds fall inside images, and
     * in 10 chunks of whole images. */
    batchnorm_case(2, 5, 4097, 1, modes[m], seed + 6);
    batchnorm_case(40, 2, 1000, 1, modes[m], seed + 7);
  }
}

/* StochNorm: the channels with select[ch] = 1 as TRAIN, the others as EVAL
 * (normalized by the running statistics from before the update), every
 * channel's running statistics updated. */
static void stochnorm_case(size_t batch, size_t c, size_t hw, uint64_t seed) {
  qt_rng_t *rng = make_rng(seed);
  char what[128], tag[80];
  const float eps = 1e-5f, momentum = 0.1f;
  size_t n = batch * c * hw;
  snprintf(tag, sizeof tag, "stochnorm (%zu, %zu, %zu)", batch, c, hw);
  float *inp = host_random(rng, n, 3.0, 2.0);
  float *weight = host_random(rng, c, 1.0, 0.2), *bias = host_random(rng, c, 0.0, 0.2);
  float *dout = host_random(rng, n, 0.0, 1.0);
  float *running_mean = host_random(rng, c, 3.0, 0.5);
  float *running_var = host_random(rng, c, 0.0, 1.0);
  for (size_t ch = 0; ch < c; ch++) running_var[ch] = 4.0f + fabsf(running_var[ch]);
  unsigned char *select = malloc(c);
  CU_ASSERT_PTR_NOT_NULL_FATAL(select);
  for (size_t ch = 0; ch < c; ch++) select[ch] = (unsigned char)(qt_rng_uniform(rng) < 0.5);
  select[0] = 1;
  if (c > 1) select[c - 1] = 0;
  float *d_inp = device_floats(inp, n), *d_dout = device_floats(dout, n);
  float *d_weight = device_floats(weight, c), *d_bias = device_floats(bias, c);
  float *d_running_mean = device_floats(running_mean, c);
  float *d_running_var = device_floats(running_var, c);
  unsigned char *d_select = device_copy(select, c, 1);
  float *out = host_random(rng, n, 0.0, 1.0), *mean = host_random(rng, c, 0.0, 1.0);
  float *rstd = host_random(rng, c, 0.0, 1.0);
  float *d_out = device_floats(out, n), *d_mean = device_floats(mean, c);
  float *d_rstd = device_floats(rstd, c);
  qt_cpu_stochnorm_forward(out, mean, rstd, running_mean, running_var, inp, weight, bias, select,
                           batch, c, hw, eps, momentum);
  CHECK_RC(qt_cuda_stochnorm_forward(d_out, d_mean, d_rstd, d_running_mean, d_running_var, d_inp,
                                     d_weight, d_bias, d_select, batch, c, hw, eps, momentum, E));
  snprintf(what, sizeof what, "%s: out", tag);
  expect_parity(what, d_out, out, NULL, n);
  snprintf(what, sizeof what, "%s: mean", tag);
  expect_parity(what, d_mean, mean, NULL, c);
  snprintf(what, sizeof what, "%s: rstd", tag);
  expect_parity(what, d_rstd, rstd, NULL, c);
  snprintf(what, sizeof what, "%s: running_mean", tag);
  expect_parity(what, d_running_mean, running_mean, NULL, c);
  snprintf(what, sizeof what, "%s: running_var", tag);
  expect_parity(what, d_running_var, running_var, NULL, c);

  CHECK_RC(qt_cuda_copy_to_device(d_mean, mean, c * sizeof *mean, E));
  CHECK_RC(qt_cuda_copy_to_device(d_rstd, rstd, c * sizeof *rstd, E));
  grad dinp = grad_make(rng, n), dweight = grad_make(rng, c), dbias = grad_make(rng, c);
  qt_cpu_stochnorm_backward(dinp.cpu, dweight.cpu, dbias.cpu, dout, inp, weight, mean, rstd, select,
                            batch, c, hw);
  CHECK_RC(qt_cuda_stochnorm_backward(dinp.dev, dweight.dev, dbias.dev, d_dout, d_inp, d_weight,
                                      d_mean, d_rstd, d_select, batch, c, hw, E));
  snprintf(what, sizeof what, "%s: dinp", tag);
  grad_check(what, &dinp);
  snprintf(what, sizeof what, "%s: dweight", tag);
  grad_check(what, &dweight);
  snprintf(what, sizeof what, "%s: dbias", tag);
  grad_check(what, &dbias);
  grad fresh = grad_make_unset(n);
  qt_cpu_stochnorm_backward(fresh.cpu, NULL, NULL, dout, inp, weight, mean, rstd, select, batch, c,
                            hw);
  CHECK_RC(qt__cuda_stochnorm_backward(fresh.dev, NULL, NULL, d_dout, d_inp, d_weight, d_mean,
                                       d_rstd, d_select, batch, c, hw, 1, E));
  snprintf(what, sizeof what, "%s: dinp set", tag);
  grad_check(what, &fresh);
  grad_free(&fresh);

  grad_free(&dinp);
  grad_free(&dweight);
  grad_free(&dbias);
  free(inp);
  free(weight);
  free(bias);
  free(dout);
  free(running_mean);
  free(running_var);
  free(select);
  free(out);
  free(mean);
  free(rstd);
  qt_cuda_free(d_inp);
  qt_cuda_free(d_dout);
  qt_cuda_free(d_weight);
  qt_cuda_free(d_bias);
  qt_cuda_free(d_running_mean);
  qt_cuda_free(d_running_var);
  qt_cuda_free(d_select);
  qt_cuda_free(d_out);
  qt_cuda_free(d_mean);
  qt_cuda_free(d_rstd);
  qt_rng_free(rng);
}

static void test_stochnorm(void) {
  stochnorm_case(3, 13, 49, 251);
  stochnorm_case(1, 24, 289, 252);
  stochnorm_case(1, 7, 1, 253);    /* one value per channel */
  stochnorm_case(2, 5, 4097, 254); /* each channel's values in 3 chunks */
}

/* ------------------------------------------------------------------------- */
/* Activations                                                                */
/* ------------------------------------------------------------------------- */

typedef void (*cpu_forward_fn)(float *, const float *, size_t);
typedef void (*cpu_backward_fn)(float *, const float *, const float *, size_t);
typedef int (*cuda_forward_fn)(float *, const float *, size_t, qt_err *);
typedef int (*cuda_backward_fn)(float *, const float *, const float *, size_t, qt_err *);
typedef int (*cuda_backward_set_fn)(float *, const float *, const float *, size_t, int, qt_err *);

static void activation_case(const char *name, cpu_forward_fn cpu_forward,
                            cpu_backward_fn cpu_backward, cuda_forward_fn cuda_forward,
                            cuda_backward_fn cuda_backward, cuda_backward_set_fn cuda_backward_set,
                            size_t n, uint64_t seed) {
  qt_rng_t *rng = make_rng(seed);
  char what[96];
  /* N(3, 4^2) reaches below 0 and above 6; a few values sit exactly on
   * ReLU6's ends, where the gradient is 0. */
  float *inp = host_random(rng, n, 3.0, 4.0), *dout = host_random(rng, n, 0.0, 1.0);
  for (size_t i = 0; i < n; i += 97) inp[i] = (i / 97) % 2 ? 6.0f : 0.0f;
  float *d_inp = device_floats(inp, n), *d_dout = device_floats(dout, n);
  float *out = host_random(rng, n, 0.0, 1.0);
  float *d_out = device_floats(out, n);
  cpu_forward(out, inp, n);
  CHECK_RC(cuda_forward(d_out, d_inp, n, E));
  snprintf(what, sizeof what, "%s (%zu): out", name, n);
  expect_parity(what, d_out, out, NULL, n);
  grad dinp = grad_make(rng, n);
  cpu_backward(dinp.cpu, dout, inp, n);
  CHECK_RC(cuda_backward(dinp.dev, d_dout, d_inp, n, E));
  snprintf(what, sizeof what, "%s (%zu): dinp", name, n);
  grad_check(what, &dinp);
  /* `set`: dinp written, 0 where the gradient does not pass. */
  grad fresh = grad_make_unset(n);
  cpu_backward(fresh.cpu, dout, inp, n);
  CHECK_RC(cuda_backward_set(fresh.dev, d_dout, d_inp, n, 1, E));
  snprintf(what, sizeof what, "%s (%zu): dinp set", name, n);
  grad_check(what, &fresh);
  grad_free(&fresh);
  /* In place: out == inp. */
  CHECK_RC(cuda_forward(d_inp, d_inp, n, E));
  snprintf(what, sizeof what, "%s (%zu) in place: out", name, n);
  expect_parity(what, d_inp, out, NULL, n);
  grad_free(&dinp);
  free(inp);
  free(dout);
  free(out);
  qt_cuda_free(d_inp);
  qt_cuda_free(d_dout);
  qt_cuda_free(d_out);
  qt_rng_free(rng);
}

static void test_activations(void) {
  static const size_t sizes[] = {1, 1000, 100003};
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    activation_case("relu", qt_cpu_relu_forward, qt_cpu_relu_backward, qt_cuda_relu_forward,
                    qt_cuda_relu_backward, qt__cuda_relu_backward, sizes[s], 300 + s);
    activation_case("relu6", qt_cpu_relu6_forward, qt_cpu_relu6_backward, qt_cuda_relu6_forward,
                    qt_cuda_relu6_backward, qt__cuda_relu6_backward, sizes[s], 310 + s);
    activation_case("silu", qt_cpu_silu_forward, qt_cpu_silu_backward, qt_cuda_silu_forward,
                    qt_cuda_silu_backward, qt__cuda_silu_backward, sizes[s], 320 + s);
  }
}

/* ------------------------------------------------------------------------- */
/* Pooling                                                                    */
/* ------------------------------------------------------------------------- */

static void avgpool_case(size_t batch, size_t c, size_t hw, uint64_t seed) {
  qt_rng_t *rng = make_rng(seed);
  char what[96];
  size_t n = batch * c * hw, rows = batch * c;
  float *inp = host_random(rng, n, 1.0, 1.0), *dout = host_random(rng, rows, 0.0, 1.0);
  float *d_inp = device_floats(inp, n), *d_dout = device_floats(dout, rows);
  float *out = host_random(rng, rows, 0.0, 1.0);
  float *d_out = device_floats(out, rows);
  qt_cpu_global_avgpool_forward(out, inp, batch, c, hw);
  CHECK_RC(qt_cuda_global_avgpool_forward(d_out, d_inp, batch, c, hw, E));
  snprintf(what, sizeof what, "avgpool (%zu, %zu, %zu): out", batch, c, hw);
  expect_parity(what, d_out, out, NULL, rows);
  grad dinp = grad_make(rng, n);
  qt_cpu_global_avgpool_backward(dinp.cpu, dout, batch, c, hw);
  CHECK_RC(qt_cuda_global_avgpool_backward(dinp.dev, d_dout, batch, c, hw, E));
  snprintf(what, sizeof what, "avgpool (%zu, %zu, %zu): dinp", batch, c, hw);
  grad_check(what, &dinp);
  grad_free(&dinp);
  free(inp);
  free(dout);
  free(out);
  qt_cuda_free(d_inp);
  qt_cuda_free(d_dout);
  qt_cuda_free(d_out);
  qt_rng_free(rng);
}

/* ties: values on a coarse grid, so that windows hold equal maxima (the
 * first in scan order must win on both sides); 2: every fifth value NaN
 * too (a NaN wins, the last of several, on both sides: the outputs must
 * match to the bit). */
static void maxpool_case(const char *name, const qt_conv2d_shape *s, int ties, uint64_t seed) {
  qt_rng_t *rng = make_rng(seed);
  char what[128];
  size_t n_in = s->batch * s->in_c * s->in_h * s->in_w;
  size_t n_out = s->batch * s->in_c * s->out_h * s->out_w;
  float *inp = host_random(rng, n_in, 0.0, 1.0), *dout = host_random(rng, n_out, 0.0, 1.0);
  if (ties) {
    for (size_t i = 0; i < n_in; i++) inp[i] = roundf(inp[i]);
  }
  if (ties == 2) {
    for (size_t i = 0; i < n_in; i += 5) inp[i] = NAN;
  }
  float *d_inp = device_floats(inp, n_in), *d_dout = device_floats(dout, n_out);
  float *out = host_random(rng, n_out, 0.0, 1.0);
  float *d_out = device_floats(out, n_out);
  int32_t *argmax = malloc(n_out * sizeof *argmax);
  CU_ASSERT_PTR_NOT_NULL_FATAL(argmax);
  for (size_t i = 0; i < n_out; i++) argmax[i] = -7;
  int32_t *d_argmax = device_copy(argmax, n_out, sizeof *argmax);
  qt_cpu_maxpool2d_forward(out, argmax, inp, s);
  CHECK_RC(qt_cuda_maxpool2d_forward(d_out, d_argmax, d_inp, s, E));
  snprintf(what, sizeof what, "maxpool %s: out", name);
  if (ties == 2) {
    float *gpu_out = download(d_out, n_out);
    size_t differ = 0, nans = 0;
    for (size_t i = 0; i < n_out; i++) {
      differ += memcmp(&gpu_out[i], &out[i], sizeof *out) != 0;
      nans += isnan(out[i]) != 0;
    }
    printf("\n    %-60s %zu of %zu differ (%zu NaN)", what, differ, n_out, nans);
    CU_ASSERT_EQUAL(differ, 0);
    CU_ASSERT(nans > 0 && nans < n_out);
    free(gpu_out);
  } else {
    expect_parity(what, d_out, out, NULL, n_out);
  }
  int32_t *gpu_argmax = download_bytes(d_argmax, n_out * sizeof *gpu_argmax);
  size_t mismatches = 0;
  for (size_t i = 0; i < n_out; i++) mismatches += gpu_argmax[i] != argmax[i];
  printf("\n    %-60s %zu mismatches", "maxpool: argmax", mismatches);
  CU_ASSERT_EQUAL(mismatches, 0);
  free(gpu_argmax);

  /* The backward routes the CPU's argmax on both sides. */
  CHECK_RC(qt_cuda_copy_to_device(d_argmax, argmax, n_out * sizeof *argmax, E));
  grad dinp = grad_make(rng, n_in);
  qt_cpu_maxpool2d_backward(dinp.cpu, dout, argmax, s);
  CHECK_RC(qt_cuda_maxpool2d_backward(dinp.dev, d_dout, d_argmax, s, E));
  snprintf(what, sizeof what, "maxpool %s: dinp", name);
  grad_check(what, &dinp);
  grad_free(&dinp);
  free(inp);
  free(dout);
  free(out);
  free(argmax);
  qt_cuda_free(d_inp);
  qt_cuda_free(d_dout);
  qt_cuda_free(d_out);
  qt_cuda_free(d_argmax);
  qt_rng_free(rng);
}

static void test_pooling(void) {
  avgpool_case(1, 1, 1, 401);
  avgpool_case(3, 37, 49, 402);
  avgpool_case(1, 1280, 49, 403);
  avgpool_case(3, 5, 1000, 404); /* rows longer than a warp's stride */
  avgpool_case(2, 13, 1, 405);
  qt_conv2d_shape s;
  s = conv_shape(3, 13, 17, 13, 3, 2, 1, 13);
  maxpool_case("3x3/2 pad 1 (3, 13, 17x17)", &s, 0, 411);
  maxpool_case("3x3/2 pad 1 ties (3, 13, 17x17)", &s, 1, 412);
  maxpool_case("3x3/2 pad 1 ties and NaN (3, 13, 17x17)", &s, 2, 417);
  s = conv_shape(1, 20, 16, 20, 3, 2, 1, 20);
  maxpool_case("3x3/2 pad 1 even (1, 20, 16x16)", &s, 1, 413);
  s = conv_shape(3, 7, 10, 7, 2, 2, 0, 7);
  maxpool_case("2x2/2 (3, 7, 10x10)", &s, 1, 414);
  s = conv_shape(1, 3, 9, 3, 3, 1, 1, 3);
  maxpool_case("3x3/1 pad 1 ties (1, 3, 9x9)", &s, 1, 415);
  s = rect_shape(2, 4, 9, 7, 4, 3, 2, 2, 1, 1, 0, 4);
  maxpool_case("rectangular 3x2/(2,1) pad (1,0) ties (2, 4, 9x7)", &s, 1, 416);
}

/* ------------------------------------------------------------------------- */
/* Squeeze-and-excitation                                                     */
/* ------------------------------------------------------------------------- */

static void se_case(size_t batch, size_t c, size_t hw, size_t rd, qt_se_act act, int with_dinp,
                    uint64_t seed) {
  qt_rng_t *rng = make_rng(seed);
  char what[128], tag[80];
  snprintf(tag, sizeof tag, "se (%zu, %zu, %zu) rd %zu %s%s", batch, c, hw, rd,
           act == QT_SE_ACT_SILU ? "silu" : "relu", with_dinp ? "" : " no dinp");
  size_t n = batch * c * hw, bc = batch * c, br = batch * rd;
  float *inp = host_random(rng, n, 0.5, 1.0), *dout = host_random(rng, n, 0.0, 1.0);
  float *w_reduce = host_random(rng, rd * c, 0.0, 0.3), *b_reduce = host_random(rng, rd, 0.0, 0.3);
  float *w_expand = host_random(rng, c * rd, 0.0, 0.3), *b_expand = host_random(rng, c, 0.0, 0.3);
  float *d_inp = device_floats(inp, n), *d_dout = device_floats(dout, n);
  float *d_w_reduce = device_floats(w_reduce, rd * c), *d_b_reduce = device_floats(b_reduce, rd);
  float *d_w_expand = device_floats(w_expand, c * rd), *d_b_expand = device_floats(b_expand, c);

  float *out = host_random(rng, n, 0.0, 1.0), *pooled = host_random(rng, bc, 0.0, 1.0);
  float *hidden_pre = host_random(rng, br, 0.0, 1.0), *hidden = host_random(rng, br, 0.0, 1.0);
  float *gate = host_random(rng, bc, 0.0, 1.0);
  float *d_out = device_floats(out, n), *d_pooled = device_floats(pooled, bc);
  float *d_hidden_pre = device_floats(hidden_pre, br), *d_hidden = device_floats(hidden, br);
  float *d_gate = device_floats(gate, bc);
  qt_cpu_se_forward(out, pooled, hidden_pre, hidden, gate, inp, w_reduce, b_reduce, w_expand,
                    b_expand, batch, c, hw, rd, act);
  CHECK_RC(qt_cuda_se_forward(d_out, d_pooled, d_hidden_pre, d_hidden, d_gate, d_inp, d_w_reduce,
                              d_b_reduce, d_w_expand, d_b_expand, batch, c, hw, rd, act, E));
  snprintf(what, sizeof what, "%s: out", tag);
  expect_parity(what, d_out, out, NULL, n);
  snprintf(what, sizeof what, "%s: pooled", tag);
  expect_parity(what, d_pooled, pooled, NULL, bc);
  snprintf(what, sizeof what, "%s: hidden_pre", tag);
  expect_parity(what, d_hidden_pre, hidden_pre, NULL, br);
  snprintf(what, sizeof what, "%s: hidden", tag);
  expect_parity(what, d_hidden, hidden, NULL, br);
  snprintf(what, sizeof what, "%s: gate", tag);
  expect_parity(what, d_gate, gate, NULL, bc);

  /* The backward reads the CPU's saved values on both sides. */
  CHECK_RC(qt_cuda_copy_to_device(d_pooled, pooled, bc * sizeof *pooled, E));
  CHECK_RC(qt_cuda_copy_to_device(d_hidden_pre, hidden_pre, br * sizeof *hidden_pre, E));
  CHECK_RC(qt_cuda_copy_to_device(d_hidden, hidden, br * sizeof *hidden, E));
  CHECK_RC(qt_cuda_copy_to_device(d_gate, gate, bc * sizeof *gate, E));
  size_t scratch_n = 2 * bc + 2 * br;
  float *scratch = host_random(rng, scratch_n, 0.0, 1.0); /* garbage: the backward clears it */
  float *d_scratch = device_floats(scratch, scratch_n);
  grad dinp = grad_make(rng, n), dw_reduce = grad_make(rng, rd * c);
  grad db_reduce = grad_make(rng, rd), dw_expand = grad_make(rng, c * rd);
  grad db_expand = grad_make(rng, c);
  qt_cpu_se_backward(with_dinp ? dinp.cpu : NULL, dw_reduce.cpu, db_reduce.cpu, dw_expand.cpu,
                     db_expand.cpu, scratch, dout, inp, pooled, hidden_pre, hidden, gate, w_reduce,
                     w_expand, batch, c, hw, rd, act);
  CHECK_RC(qt_cuda_se_backward(with_dinp ? dinp.dev : NULL, dw_reduce.dev, db_reduce.dev,
                               dw_expand.dev, db_expand.dev, d_scratch, d_dout, d_inp, d_pooled,
                               d_hidden_pre, d_hidden, d_gate, d_w_reduce, d_w_expand, batch, c, hw,
                               rd, act, E));
  snprintf(what, sizeof what, "%s: dinp", tag);
  grad_check(what, &dinp);
  snprintf(what, sizeof what, "%s: dw_reduce", tag);
  grad_check(what, &dw_reduce);
  snprintf(what, sizeof what, "%s: db_reduce", tag);
  grad_check(what, &db_reduce);
  snprintf(what, sizeof what, "%s: dw_expand", tag);
  grad_check(what, &dw_expand);
  snprintf(what, sizeof what, "%s: db_expand", tag);
  grad_check(what, &db_expand);

  grad_free(&dinp);
  grad_free(&dw_reduce);
  grad_free(&db_reduce);
  grad_free(&dw_expand);
  grad_free(&db_expand);
  free(inp);
  free(dout);
  free(w_reduce);
  free(b_reduce);
  free(w_expand);
  free(b_expand);
  free(out);
  free(pooled);
  free(hidden_pre);
  free(hidden);
  free(gate);
  free(scratch);
  qt_cuda_free(d_inp);
  qt_cuda_free(d_dout);
  qt_cuda_free(d_w_reduce);
  qt_cuda_free(d_b_reduce);
  qt_cuda_free(d_w_expand);
  qt_cuda_free(d_b_expand);
  qt_cuda_free(d_out);
  qt_cuda_free(d_pooled);
  qt_cuda_free(d_hidden_pre);
  qt_cuda_free(d_hidden);
  qt_cuda_free(d_gate);
  qt_cuda_free(d_scratch);
  qt_rng_free(rng);
}

static void test_se(void) {
  se_case(3, 24, 49, 6, QT_SE_ACT_SILU, 1, 501);
  se_case(3, 24, 49, 6, QT_SE_ACT_RELU, 1, 502);
  se_case(1, 40, 1, 10, QT_SE_ACT_SILU, 1, 503);
  se_case(3, 96, 81, 4, QT_SE_ACT_SILU, 0, 504);
  se_case(1, 13, 37, 3, QT_SE_ACT_RELU, 0, 505);
}

/* ------------------------------------------------------------------------- */
/* Arguments                                                                  */
/* ------------------------------------------------------------------------- */

/* Bad shapes, modes and NULL arrays are QT_EINVAL; empty sizes are no-ops;
 * the scratch sizes are the documented ones. */
static void test_arguments(void) {
  qt_err err;
  float *d = NULL;
  CHECK_RC(qt_cuda_malloc((void **)&d, 4096 * sizeof *d, E));
  qt_conv2d_shape s = conv_shape(1, 4, 5, 6, 3, 1, 1, 2);
  CU_ASSERT_EQUAL(qt_cuda_conv2d_scratch_size(&s), (size_t)4 * 3 * 3 * 5 * 5);
  qt_conv2d_shape three = conv_shape(3, 4, 5, 6, 3, 1, 1, 1); /* every image's columns */
  CU_ASSERT_EQUAL(qt_cuda_conv2d_scratch_size(&three), (size_t)3 * 4 * 3 * 3 * 5 * 5);
  qt_conv2d_shape grouped = conv_shape(3, 4, 5, 6, 3, 1, 1, 2); /* one image's */
  CU_ASSERT_EQUAL(qt_cuda_conv2d_scratch_size(&grouped), (size_t)4 * 3 * 3 * 5 * 5);
  CU_ASSERT_EQUAL(qt_cuda_conv2d_forward(d, NULL, d, d, NULL, &s, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_conv2d_forward(NULL, d, d, d, NULL, &s, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_conv2d_forward(d, d, d, d, NULL, NULL, &err), QT_EINVAL);
  qt_conv2d_shape bad = s;
  bad.groups = 3; /* divides neither 4 nor 6 */
  CU_ASSERT_EQUAL(qt_cuda_conv2d_forward(d, d, d, d, NULL, &bad, &err), QT_EINVAL);
  bad = s;
  bad.stride_h = 0;
  CU_ASSERT_EQUAL(qt_cuda_conv2d_backward(d, d, d, d, d, d, d, &bad, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_conv2d_backward(d, NULL, NULL, d, d, d, NULL, &s, &err), QT_EINVAL);
  /* Only the bias gradient: no scratch, input or weight needed. */
  CU_ASSERT_EQUAL(qt_cuda_conv2d_backward(NULL, NULL, d, NULL, d, NULL, NULL, &s, &err), 0);
  qt_conv2d_shape pw = conv_shape(2, 8, 5, 3, 1, 1, 0, 1);
  CU_ASSERT_EQUAL(qt_cuda_conv2d_scratch_size(&pw), 0);
  qt_conv2d_shape dw = conv_shape(2, 8, 5, 8, 3, 2, 1, 8);
  CU_ASSERT_EQUAL(qt_cuda_conv2d_scratch_size(&dw), 0);
  CU_ASSERT_EQUAL(qt_cuda_conv2d_forward(d, NULL, d, d, NULL, &dw, &err), 0);

  CU_ASSERT_EQUAL(qt_cuda_batchnorm_forward(d, d, d, d, d, d, NULL, NULL, 1, 2, 3, 1e-5f, 0.1f,
                                            (qt_batchnorm_mode)7, &err),
                  QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_batchnorm_forward(d, NULL, d, d, d, d, NULL, NULL, 1, 2, 3, 1e-5f, 0.1f,
                                            QT_BATCHNORM_MODE_TRAIN, &err),
                  QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_batchnorm_forward(d, d, d, d, d, d, NULL, NULL, 0, 2, 3, 1e-5f, 0.1f,
                                            QT_BATCHNORM_MODE_TRAIN, &err),
                  QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_batchnorm_forward(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 1, 0, 3,
                                            1e-5f, 0.1f, QT_BATCHNORM_MODE_TRAIN, &err),
                  0);
  CU_ASSERT_EQUAL(qt_cuda_batchnorm_backward(d, NULL, NULL, NULL, d, NULL, d, d, 1, 2, 3,
                                             QT_BATCHNORM_MODE_EVAL, &err),
                  QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_batchnorm_backward(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 2,
                                             3, QT_BATCHNORM_MODE_TRAIN, &err),
                  0);

  CU_ASSERT_EQUAL(
      qt_cuda_stochnorm_forward(d, d, d, d, d, d, NULL, NULL, NULL, 1, 2, 3, 1e-5f, 0.1f, &err),
      QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_stochnorm_backward(d, NULL, NULL, d, d, NULL, d, d, NULL, 1, 2, 3, &err),
                  QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_relu_forward(NULL, d, 3, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_relu6_backward(d, NULL, d, 3, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_silu_forward(d, NULL, 3, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_silu_backward(NULL, NULL, NULL, 0, &err), 0);
  CU_ASSERT_EQUAL(qt_cuda_global_avgpool_forward(d, d, 2, 3, 0, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_global_avgpool_forward(NULL, NULL, 0, 3, 5, &err), 0);
  CU_ASSERT_EQUAL(qt_cuda_global_avgpool_backward(NULL, d, 1, 3, 5, &err), QT_EINVAL);

  qt_conv2d_shape pool = conv_shape(1, 4, 8, 4, 3, 2, 1, 4);
  qt_conv2d_shape not_pool = conv_shape(1, 4, 8, 8, 3, 2, 1, 4); /* out_c != in_c */
  CU_ASSERT_EQUAL(qt_cuda_maxpool2d_forward(d, (int32_t *)d, d, &not_pool, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_maxpool2d_forward(d, NULL, d, &pool, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_maxpool2d_backward(d, d, NULL, &pool, &err), QT_EINVAL);

  CU_ASSERT_EQUAL(
      qt_cuda_se_forward(d, d, d, d, d, d, d, NULL, d, NULL, 1, 4, 3, 2, (qt_se_act)5, &err),
      QT_EINVAL);
  CU_ASSERT_EQUAL(
      qt_cuda_se_forward(d, d, d, d, NULL, d, d, NULL, d, NULL, 1, 4, 3, 2, QT_SE_ACT_RELU, &err),
      QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_se_backward(d, d, d, d, d, NULL, d, d, d, d, d, d, d, d, 1, 4, 3, 2,
                                      QT_SE_ACT_SILU, &err),
                  QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cuda_se_backward(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                                      NULL, NULL, NULL, NULL, 0, 4, 3, 2, QT_SE_ACT_SILU, &err),
                  0);
  CHECK_RC(qt_cuda_synchronize(E));
  qt_cuda_free(d);
}

static const qt_test_case cases[] = {
    {"conv_dense", test_conv_dense},
    {"conv_dense_im2col", test_conv_dense_im2col},
    {"conv_tf32", test_conv_tf32},
    {"conv_depthwise", test_conv_depthwise},
    {"batchnorm", test_batchnorm},
    {"stochnorm", test_stochnorm},
    {"activations", test_activations},
    {"pooling", test_pooling},
    {"se", test_se},
    {"arguments", test_arguments},
    {NULL, NULL},
};

QT_GPU_TEST_MAIN("gpu_cnn_ops", cases)

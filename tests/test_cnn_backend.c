/*
 * test_cnn_backend.c - the convolutional models on the backend interface,
 * checked without a GPU: on the fake device of qt_test_fake_device.h (the
 * CPU's ops on memory the host cannot touch), whole training steps of
 * MobileNetV2, ResNet and EfficientNet, moves between backends and
 * checkpoints across them give the CPU's numbers bit for bit, and every
 * access to the model's memory goes through the op table (any other would
 * crash). test_gpu_cnn_backend runs the same cases on CUDA.
 */
#include <dlfcn.h>

#include "qt_test.h"

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "qt_test_fake_device.h"
#include "qt_test_gpu.h"
#include "qt_test_cnn_backend.h"

static const cnn_tolerance exact = {0.0, 0.0, 0.0, 0.0};

static void test_training_steps_match_cpu(void) {
  long uploads = fake_device.uploads, downloads = fake_device.downloads;
  cnn_backend_cases(fake_device_ops(), &exact);
  /* Images, labels or targets and the loss gradient went up each step, the
   * logits and losses came down. */
  CU_ASSERT(fake_device.uploads - uploads > 6 * 3 * 3);
  CU_ASSERT(fake_device.downloads - downloads > 6 * 2 * 2);
  CU_ASSERT_EQUAL(fake_blocks_held(), 0);
}

static void test_save_and_resume_across_backends(void) {
  cnn_backend_save_resume(fake_device_ops(), &exact);
  CU_ASSERT_EQUAL(fake_blocks_held(), 0);
}

/* A move that runs out of device memory at any of its allocations leaves
 * the model on the CPU, whole: it trains on as its twin does. */
static void test_failed_move_changes_nothing(void) {
  cnn_case c = cnn_backend_small("after a failed move", "resnet_tiny", QT_MODEL_FAMILY_RESNET);
  c.batch = 2;
  char checkpoint[512];
  cnn_backend_checkpoint(&c, 9, checkpoint, sizeof checkpoint);
  long failures = 0;
  for (long fail_after = 0;; fail_after++) {
    qt_rng_t *data = make_rng(1);
    cnn_side m = cnn_side_init(&c, checkpoint), twin = cnn_side_init(&c, checkpoint);
    cnn_batch b = cnn_backend_batch(data, &c);
    cnn_backend_step_both(&m, &twin, &(cnn_twins){0}, &c, &b, &exact, "before the move");
    fake_device.fail_after = fail_after;
    qt_err err;
    int rc = qt__cnn_set_ops(m.model, fake_device_ops(), &err);
    fake_device.fail_after = -1;
    int moved = rc == 0;
    if (!moved) {
      CU_ASSERT_EQUAL(rc, QT_ENOMEM);
      CU_ASSERT_EQUAL(fake_blocks_held(), 0);
      failures++;
      cnn_batch next = cnn_backend_batch(data, &c);
      cnn_backend_step_both(&m, &twin, &(cnn_twins){0}, &c, &next, &exact, "after a failed move");
      cnn_batch_free(&next);
    }
    cnn_batch_free(&b);
    cnn_side_free(&m);
    cnn_side_free(&twin);
    qt_rng_free(data);
    if (moved) break;
  }
  /* Every array of the model (ResNet's: all but the SE buffers) failed
   * once. */
  printf("\n    %ld failed moves", failures);
  CU_ASSERT(failures >= 13);
  CU_ASSERT_EQUAL(fake_blocks_held(), 0);
  remove(checkpoint);
}

/* The feature hook on the device: the features read there (a host copy)
 * equal the CPU's, and the gradient written to it (with head dropout on)
 * reaches every parameter as on the CPU. */
static void test_feature_hook_on_the_device(void) {
  cnn_case c = cnn_backend_small("hooks", "mobilenetv2_tiny", QT_MODEL_FAMILY_MOBILENETV2);
  char checkpoint[512];
  cnn_backend_checkpoint(&c, 2, checkpoint, sizeof checkpoint);
  qt_rng_t *data = make_rng(3), *drop_a = make_rng(4), *drop_b = make_rng(4);
  qt_cnn_t *cpu = cnn_backend_load(&c, checkpoint), *dev = cnn_backend_load(&c, checkpoint);
  qt_cnn_t *both[2] = {cpu, dev};
  qt_rng_t *drops[2] = {drop_a, drop_b};
  for (int k = 0; k < 2; k++) {
    CHECK_RC(qt_cnn_set_feature_hook(both[k], 1, E));
    CHECK_RC(qt_cnn_set_head_dropout(both[k], 0.3, drops[k], E));
  }
  CHECK_RC(qt__cnn_set_ops(dev, fake_device_ops(), E));
  cnn_batch b = cnn_backend_batch(data, &c);
  size_t n = c.batch * qt_cnn_feature_dim(cpu), batch = 0;
  float *dfeat = host_random(data, n, 0.0, 0.1);
  double loss[2];
  for (int k = 0; k < 2; k++) {
    CHECK_RC(qt_cnn_forward(both[k], b.images, c.batch, c.mode, E));
    CHECK_RC(qt_cnn_loss(both[k], b.labels, NULL, 0.0, &loss[k], E));
    memcpy(qt_cnn_feature_grad(both[k]), dfeat, n * sizeof *dfeat);
    qt_cnn_zero_grad(both[k]);
    CHECK_RC(qt_cnn_backward(both[k], E));
  }
  CU_ASSERT(memcmp(&loss[0], &loss[1], sizeof loss[0]) == 0);
  expect_values("features", qt_cnn_features(dev, &batch), qt_cnn_features(cpu, NULL), NULL, n, 0.0);
  CU_ASSERT_EQUAL(batch, c.batch);
  cnn_backend_expect_tensors(fake_device_ops(), dev, cpu, NULL, CNN_GRADS, &exact, 0.0,
                             "with the feature hook's gradient");
  free(dfeat);
  cnn_batch_free(&b);
  qt_cnn_free(cpu);
  qt_cnn_free(dev);
  qt_rng_free(data);
  qt_rng_free(drop_a);
  qt_rng_free(drop_b);
  CU_ASSERT_EQUAL(fake_blocks_held(), 0);
  remove(checkpoint);
}

/* Without a device, asking for CUDA is QT_ENODEV and the model stays. */
static void test_cuda_without_a_device(void) {
  int count = 0;
  CHECK_RC(qt_cuda_device_count(&count, E));
  if (count > 0) return; /* test_gpu_cnn_backend covers a machine with one */
  cnn_case c = cnn_backend_small("cpu", "mobilenetv2_tiny", QT_MODEL_FAMILY_MOBILENETV2);
  char checkpoint[512];
  cnn_backend_checkpoint(&c, 4, checkpoint, sizeof checkpoint);
  qt_rng_t *rng = make_rng(4);
  qt_cnn_t *m = cnn_backend_load(&c, checkpoint);
  qt_err err;
  CU_ASSERT_EQUAL(qt_cnn_to_backend(m, QT_BACKEND_KIND_CUDA, &err), QT_ENODEV);
  CHECK_RC(qt_cnn_to_backend(m, QT_BACKEND_KIND_CPU, E));
  cnn_batch b = cnn_backend_batch(rng, &c);
  CU_ASSERT(isfinite(cnn_backend_pass(m, &c, &b)));
  cnn_batch_free(&b);
  qt_cnn_free(m);
  qt_rng_free(rng);
  remove(checkpoint);
}

/* Which convolutions the CUDA table would give cuDNN (qt_cuda_cudnn.cu):
 * dense and grouped ones with symmetric padding, not depthwise or
 * pointwise ones, nor TensorFlow 'same' with its extra row at the bottom. */
static void test_cudnn_takes_dense_convolutions(void) {
#if QT_HAVE_CUDA
  qt_conv2d_shape s;
  struct {
    const char *what;
    size_t batch, in_c, size, out_c, kernel, stride, pad, groups;
    int same, fits;
  } cases[] = {
      {"ResNet 3x3/1 pad 1", 8, 64, 56, 64, 3, 1, 1, 1, 0, 1},
      {"ResNet stem 7x7/2 pad 3", 8, 3, 224, 64, 7, 2, 3, 1, 0, 1},
      {"downsample 1x1/2", 8, 64, 56, 128, 1, 2, 0, 1, 0, 1},
      {"3x3/2 pad 1 on an even size", 8, 32, 224, 32, 3, 2, 1, 1, 0, 1},
      {"grouped 3x3 g4", 2, 32, 17, 64, 3, 1, 1, 4, 0, 1},
      {"valid 3x3", 2, 5, 9, 7, 3, 1, 0, 1, 0, 1},
      {"pointwise 1x1", 8, 64, 56, 256, 1, 1, 0, 1, 0, 0},
      {"grouped pointwise g4", 8, 64, 56, 256, 1, 1, 0, 4, 0, 0},
      {"depthwise 3x3", 8, 32, 112, 32, 3, 1, 1, 32, 0, 0},
      {"depthwise 3x3 multiplier 2", 8, 32, 112, 64, 3, 1, 1, 32, 0, 0},
      {"same 3x3/2 on 15 (pads 1 and 1)", 2, 3, 15, 8, 3, 2, 0, 1, 1, 1},
      {"same 3x3/2 on 14 (pads 0 and 1)", 2, 3, 14, 8, 3, 2, 0, 1, 1, 0},
      {"same 5x5/1 (pads 2 and 2)", 2, 3, 13, 8, 5, 1, 0, 1, 1, 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    if (cases[i].same) {
      CHECK_RC(qt_conv2d_shape_init_same(&s, cases[i].batch, cases[i].in_c, cases[i].size,
                                         cases[i].size, cases[i].out_c, cases[i].kernel,
                                         cases[i].stride, cases[i].groups, E));
    } else {
      CHECK_RC(qt_conv2d_shape_init(&s, cases[i].batch, cases[i].in_c, cases[i].size, cases[i].size,
                                    cases[i].out_c, cases[i].kernel, cases[i].stride, cases[i].pad,
                                    cases[i].groups, E));
    }
    if (qt__cuda_cudnn_fits(&s) != cases[i].fits)
      printf("  %s: cuDNN fits %d, expected %d\n", cases[i].what, !cases[i].fits, cases[i].fits);
    CU_ASSERT_EQUAL(qt__cuda_cudnn_fits(&s), cases[i].fits);
  }
  /* Beyond an int of elements: the kernels' long indices take it. */
  CHECK_RC(qt_conv2d_shape_init(&s, 1024, 64, 256, 256, 64, 3, 1, 1, 1, E));
  CU_ASSERT_EQUAL(qt__cuda_cudnn_fits(&s), 0);
  s.batch = 511;
  CU_ASSERT_EQUAL(qt__cuda_cudnn_fits(&s), 1);
#endif
}

/* Where this machine's loader finds cuDNN's library, qtune loads it with
 * every function it uses and the major version of the headers it was
 * built with; where it does not, qtune says why (and its convolutions
 * stay on im2col and cuBLAS). */
static void test_cudnn_library(void) {
  int version = -1;
  char why[256] = "unset";
  int loaded = qt__cuda_cudnn_loaded(&version, why, sizeof why);
#if QT_HAVE_CUDA
  void *lib = dlopen("libcudnn.so.9", RTLD_NOW | RTLD_LOCAL);
  printf("  cuDNN: %s%s (version %d)\n", loaded ? "loaded" : "not loaded: ", why, version);
  if (lib) {
    CU_ASSERT(loaded);
    CU_ASSERT_EQUAL(version / 10000, 9);
    CU_ASSERT_STRING_EQUAL(why, "");
    dlclose(lib);
  } else {
    CU_ASSERT(!loaded);
    CU_ASSERT_EQUAL(version, 0);
    CU_ASSERT(strlen(why) > 0 && strcmp(why, "unset") != 0);
  }
  /* The switch reads the environment, and a setter wins over it. */
  int was = qt__cuda_set_cudnn(0);
  CU_ASSERT_EQUAL(qt__cuda_set_cudnn(was), 0);
#else
  CU_ASSERT(!loaded);
  CU_ASSERT_EQUAL(version, 0);
  CU_ASSERT_STRING_EQUAL(why, "built without CUDA");
#endif
}

/* The log line of the convolutions' path says which and why, and a short
 * buffer gets a terminated prefix of it. */
static void test_describe_convolutions(void) {
  char line[512], fit[8];
  qt_cuda_describe_convolutions(QT_MATMUL_FP32, line, sizeof line);
  printf("  FP32 convolutions: %s\n", line);
#if QT_HAVE_CUDA
  int version = 0;
  char why[256];
  if (qt__cuda_cudnn_loaded(&version, why, sizeof why)) {
    char expect[32];
    snprintf(expect, sizeof expect, "cuDNN %d.%d.%d ", version / 10000, version / 100 % 100,
             version % 100);
    CU_ASSERT_EQUAL(strncmp(line, expect, strlen(expect)), 0);
  } else {
    CU_ASSERT_PTR_NOT_NULL(strstr(line, why));
    CU_ASSERT_EQUAL(strncmp(line, "im2col and cuBLAS (no cuDNN: ", 29), 0);
  }
  qt_cuda_describe_convolutions(QT_MATMUL_TF32, fit, sizeof fit);
  CU_ASSERT_EQUAL(strncmp(line, fit, sizeof fit - 1), 0);
  CU_ASSERT_EQUAL(strlen(fit), sizeof fit - 1);
  qt_cuda_describe_convolutions(QT_MATMUL_BF16, line, sizeof line);
  CU_ASSERT_STRING_EQUAL(line, "im2col and cuBLAS (cuDNN is not used for BF16 products)");
  int was = qt__cuda_set_cudnn(0);
  qt_cuda_describe_convolutions(QT_MATMUL_FP32, line, sizeof line);
  CU_ASSERT_STRING_EQUAL(line, "im2col and cuBLAS (QT_CUDA_CUDNN=0)");
  qt__cuda_set_cudnn(was);
#else
  CU_ASSERT_STRING_EQUAL(line, "none (built without CUDA)");
  qt_cuda_describe_convolutions(QT_MATMUL_BF16, fit, sizeof fit);
  CU_ASSERT_STRING_EQUAL(fit, "none (b");
#endif
}

static const qt_test_case cases[] = {
    {"training_steps_match_cpu", test_training_steps_match_cpu},
    {"save_and_resume_across_backends", test_save_and_resume_across_backends},
    {"failed_move_changes_nothing", test_failed_move_changes_nothing},
    {"feature_hook_on_the_device", test_feature_hook_on_the_device},
    {"cuda_without_a_device", test_cuda_without_a_device},
    {"cudnn_takes_dense_convolutions", test_cudnn_takes_dense_convolutions},
    {"cudnn_library", test_cudnn_library},
    {"describe_convolutions", test_describe_convolutions},
    {NULL, NULL},
};

QT_TEST_MAIN("cnn_backend", cases)

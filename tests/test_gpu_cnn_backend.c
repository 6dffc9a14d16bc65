/*
 * test_gpu_cnn_backend.c - whole training steps of the convolutional models
 * on a CUDA device against the CPU (label gpu; skips with 77 without a
 * device): the cases of qt_test_cnn_backend.h (small MobileNetV2, ResNet
 * and EfficientNet over several steps in TRAIN, EVAL and FROZEN batch norm
 * modes and with StochNorm, moved back to the CPU; checkpoints saved on the
 * GPU and resumed on the CPU and the reverse), then one step of timm's
 * mobilenetv2_100 at 224 px, and the public qt_cnn_to_backend, all in FP32;
 * then the mobilenetv2_100 step with BF16 products (amp).
 *
 * Tolerances, each step from the CPU's state (qt_test_cnn_backend.h): the
 * loss within 1e-5 relative plus what the logits' distance allows
 * (expect_loss); the logits, every gradient and the running statistics
 * within a parity error (qt_test_gpu.h) of 1e-4, 1e-3 for the full-size
 * network (each op is within 1e-5, docs/cuda.md; the GEMMs' summation order
 * compounds through the layers), or within NOISE_FACTOR times the noise
 * twin's where that is larger; trainable parameters after AdamW (from the
 * CPU's gradients): at most 0.1% of the values further than 1e-3 lr from
 * the CPU's.
 */
#include "qt_test.h"

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "qt_test_gpu.h"
#include "qt_test_cnn_backend.h"

static const cnn_tolerance small_tolerance = {1e-5, 1e-4, 1e-3, NOISE_FP32};

static void test_training_steps_match_cpu(void) {
  cnn_backend_cases(qt__ops_cuda(), &small_tolerance);
}

static void test_save_and_resume_across_backends(void) {
  cnn_backend_save_resume(qt__ops_cuda(), &small_tolerance);
}

/* timm's mobilenetv2_100 with random weights (qt_cnn_write_init), 10
 * classes, 224 px, batch 2, one step and one more back on the CPU. */
static void test_mobilenetv2_100_step(void) {
  cnn_case c =
      cnn_backend_small("mobilenetv2_100 224 px", "mobilenetv2_100", QT_MODEL_FAMILY_MOBILENETV2);
  c.image_size = 224;
  c.classes = 10;
  c.max_batch = c.batch = 2;
  c.steps = 1;
  cnn_backend_train_compare(qt__ops_cuda(), &c, &(cnn_tolerance){1e-5, 1e-3, 1e-3, NOISE_FP32});
}

/* The same step with BF16 products (amp): the convolutions' GEMMs. The
 * bounds and their reasons are those of test_gpu_vit_backend's BF16 step. */
static void test_mobilenetv2_100_step_bf16(void) {
  cnn_case c = cnn_backend_small("mobilenetv2_100 224 px, BF16", "mobilenetv2_100",
                                 QT_MODEL_FAMILY_MOBILENETV2);
  c.image_size = 224;
  c.classes = 10;
  c.max_batch = c.batch = 2;
  c.steps = 1;
  qt_matmul_precision previous = qt_cuda_set_matmul_precision(QT_MATMUL_BF16);
  cnn_backend_train_compare(qt__ops_cuda(), &c, &(cnn_tolerance){1e-2, 5e-2, 1e-3, NOISE_BF16});
  qt_cuda_set_matmul_precision(previous);
}

/* The public entry point moves a model there and back. */
static void test_to_backend(void) {
  cnn_case c = cnn_backend_small("to_backend", "mobilenetv2_tiny", QT_MODEL_FAMILY_MOBILENETV2);
  char checkpoint[512];
  cnn_backend_checkpoint(&c, 6, checkpoint, sizeof checkpoint);
  qt_rng_t *rng = make_rng(6);
  qt_cnn_t *m = cnn_backend_load(&c, checkpoint);
  CHECK_RC(qt_cnn_to_backend(m, QT_BACKEND_KIND_CUDA, E));
  cnn_batch b = cnn_backend_batch(rng, &c);
  CU_ASSERT(isfinite(cnn_backend_pass(m, &c, &b)));
  CU_ASSERT(isfinite(qt_cnn_logits(m)[0]));
  CHECK_RC(qt_cnn_to_backend(m, QT_BACKEND_KIND_CPU, E));
  CU_ASSERT(isfinite(cnn_backend_pass(m, &c, &b)));
  cnn_batch_free(&b);
  qt_cnn_free(m);
  qt_rng_free(rng);
  remove(checkpoint);
}

static const qt_test_case cases[] = {
    {"training_steps_match_cpu", test_training_steps_match_cpu},
    {"save_and_resume_across_backends", test_save_and_resume_across_backends},
    {"mobilenetv2_100_step", test_mobilenetv2_100_step},
    {"mobilenetv2_100_step_bf16", test_mobilenetv2_100_step_bf16},
    {"to_backend", test_to_backend},
    {NULL, NULL},
};

QT_GPU_TEST_MAIN("gpu_cnn_backend", cases)

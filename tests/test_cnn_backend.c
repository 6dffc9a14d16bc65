/*
 * test_cnn_backend.c - the convolutional models on the backend interface,
 * checked without a GPU: on the fake device of qt_test_fake_device.h (the
 * CPU's ops on memory the host cannot touch), whole training steps of
 * MobileNetV2, ResNet and EfficientNet, moves between backends and
 * checkpoints across them give the CPU's numbers bit for bit, and every
 * access to the model's memory goes through the op table (any other would
 * crash). test_gpu_cnn_backend runs the same cases on CUDA.
 */
#include "qt_test.h"

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "qt_test_fake_device.h"
#include "qt_test_gpu.h"
#include "qt_test_cnn_backend.h"

static const cnn_tolerance exact = {0.0, 0.0, 0.0};

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
    cnn_backend_step_both(&m, &twin, &c, &b, &exact, "before the move");
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
      cnn_backend_step_both(&m, &twin, &c, &next, &exact, "after a failed move");
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

/* The feature hook runs on the CPU only: a model with it on does not move,
 * and a moved model does not take it. Head dropout moves (its steps are
 * compared in the training cases). */
static void test_feature_hook_stays_on_the_cpu(void) {
  cnn_case c = cnn_backend_small("hooks", "mobilenetv2_tiny", QT_MODEL_FAMILY_MOBILENETV2);
  char checkpoint[512];
  cnn_backend_checkpoint(&c, 2, checkpoint, sizeof checkpoint);
  qt_rng_t *rng = make_rng(2);
  qt_cnn_t *m = cnn_backend_load(&c, checkpoint);
  qt_err err;
  CHECK_RC(qt_cnn_set_feature_hook(m, 1, E));
  CU_ASSERT_EQUAL(qt__cnn_set_ops(m, fake_device_ops(), &err), QT_ENOTIMPL);
  CU_ASSERT_PTR_NOT_NULL(strstr(qt_err_message(&err), "CPU backend only"));
  CHECK_RC(qt_cnn_set_feature_hook(m, 0, E));
  CU_ASSERT_EQUAL(fake_blocks_held(), 0);
  CHECK_RC(qt_cnn_set_head_dropout(m, 0.5, rng, E));
  CHECK_RC(qt__cnn_set_ops(m, fake_device_ops(), E));
  CU_ASSERT_EQUAL(qt_cnn_set_feature_hook(m, 1, &err), QT_ENOTIMPL);
  CHECK_RC(qt_cnn_set_feature_hook(m, 0, E));
  /* It still trains there. */
  cnn_batch b = cnn_backend_batch(rng, &c);
  CU_ASSERT(isfinite(cnn_backend_pass(m, &c, &b)));
  cnn_batch_free(&b);
  qt_cnn_free(m);
  qt_rng_free(rng);
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

static const qt_test_case cases[] = {
    {"training_steps_match_cpu", test_training_steps_match_cpu},
    {"save_and_resume_across_backends", test_save_and_resume_across_backends},
    {"failed_move_changes_nothing", test_failed_move_changes_nothing},
    {"feature_hook_stays_on_the_cpu", test_feature_hook_stays_on_the_cpu},
    {"cuda_without_a_device", test_cuda_without_a_device},
    {NULL, NULL},
};

QT_TEST_MAIN("cnn_backend", cases)

/*
 * test_gpu_vit_backend.c - whole ViT training steps on a CUDA device against
 * the CPU (label gpu; skips with 77 without a device): the cases of
 * qt_test_vit_backend.h (three small ViTs over several steps, moved back to
 * the CPU; checkpoints saved on the GPU and resumed on the CPU and the
 * reverse), then one step of a ViT-S/16 at 224 px, in FP32, then in BF16
 * (amp) with the fused attention kernels on (the default) and off.
 *
 * Tolerances, each step from the CPU's state (qt_test_vit_backend.h): the
 * loss within 1e-5 relative plus what the logits' distance allows
 * (expect_loss); the logits and every gradient within a parity error
 * (qt_test_gpu.h) of 1e-4, 1e-3 for the 12 blocks of ViT-S (each op is
 * within 1e-5, docs/cuda.md; the errors of the GEMMs' summation order
 * compound through the blocks), or within NOISE_FACTOR times the noise
 * twin's where that is larger; parameters after AdamW (from the CPU's
 * gradients): at most 0.1% of the values further than 1e-3 lr from the
 * CPU's.
 */
#include "qt_test.h"

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "qt_test_gpu.h"
#include "qt_test_vit_backend.h"

static const vit_tolerance small_tolerance = {1e-5, 1e-4, 1e-3, NOISE_FP32};

static void test_training_steps_match_cpu(void) {
  vit_backend_cases(qt__ops_cuda(), &small_tolerance);
}

static void test_save_and_resume_across_backends(void) {
  vit_backend_save_resume(qt__ops_cuda(), &small_tolerance);
}

/* timm's vit_small_patch16_224 with random weights, 10 classes, batch 2. */
static vit_case vit_small_case(const char *name) {
  vit_case c = {name, qt_vit_default_config(), 2, 2, 0, 0.1, 0, 1, 0.0};
  c.config.width = 384;
  c.config.heads = 6;
  c.config.mlp_hidden = 1536;
  c.config.num_classes = 10;
  return c;
}

static void test_vit_small_step(void) {
  vit_case c = vit_small_case("ViT-S/16 224 px");
  vit_backend_train_compare(qt__ops_cuda(), &c, &(vit_tolerance){1e-5, 1e-3, 1e-3, NOISE_FP32});
}

/* The same step with BF16 products (amp), against the FP32 CPU: the loss
 * within 1e-2 relative (plus the logits' allowance), logits and gradients
 * within a parity error of 5e-2 (each product's operands lose up to 2^-9
 * relative to the rounding, and 12 blocks compound it) or the twin's bound,
 * its weights and images perturbed by 2^-8. AdamW, from the CPU's
 * gradients, runs in FP32 as on the CPU: 0.1% as in FP32. */
static void test_vit_small_step_bf16(void) {
  vit_case c = vit_small_case("ViT-S/16 224 px, BF16");
  qt_matmul_precision previous = qt_cuda_set_matmul_precision(QT_MATMUL_BF16);
  vit_backend_train_compare(qt__ops_cuda(), &c, &(vit_tolerance){1e-2, 5e-2, 1e-3, NOISE_BF16});
  qt_cuda_set_matmul_precision(previous);
}

/* The same with the fused attention kernels turned off (on by default):
 * cuBLAS's products with the probabilities in memory, the attention's
 * output reaching proj in FP32. */
static void test_vit_small_step_bf16_unfused(void) {
  vit_case c = vit_small_case("ViT-S/16 224 px, BF16, unfused attention");
  qt_matmul_precision previous = qt_cuda_set_matmul_precision(QT_MATMUL_BF16);
  int was_fused = qt__cuda_set_fused_attention(0);
  vit_backend_train_compare(qt__ops_cuda(), &c, &(vit_tolerance){1e-2, 5e-2, 1e-3, NOISE_BF16});
  qt__cuda_set_fused_attention(was_fused);
  qt_cuda_set_matmul_precision(previous);
}

/* The same with qkv, its gradient, fc1's output and the gradients between
 * ops in FP32 (QT_CUDA_BF16_QKV=0 QT_CUDA_BF16_HIDDEN=0
 * QT_CUDA_BF16_HIDDEN_GRAD=0 QT_CUDA_BF16_NORM_GRAD=0
 * QT_CUDA_BF16_ATTENTION_GRAD=0), and the branch outputs too
 * (QT_CUDA_BF16_BRANCH=0; all BF16 by default: the fused attention
 * rounds qkv to BF16 anyway and the products its gradient, GELU, the
 * layer norms' backward, the attention's D and the residual adds then
 * take the rounded values). */
static void test_vit_small_step_bf16_fp32_qkv_hidden(void) {
  vit_case c = vit_small_case("ViT-S/16 224 px, BF16, qkv, fc1 and the gradients in FP32");
  qt_matmul_precision previous = qt_cuda_set_matmul_precision(QT_MATMUL_BF16);
  int was_bf16_qkv = qt__cuda_set_bf16_qkv(0), was_bf16_hidden = qt__cuda_set_bf16_hidden(0);
  int was_bf16_hidden_grad = qt__cuda_set_bf16_hidden_grad(0);
  int was_bf16_norm_grad = qt__cuda_set_bf16_norm_grad(0);
  int was_bf16_attention_grad = qt__cuda_set_bf16_attention_grad(0);
  int was_bf16_branch = qt__cuda_set_bf16_branch(0);
  vit_backend_train_compare(qt__ops_cuda(), &c, &(vit_tolerance){1e-2, 5e-2, 1e-3, NOISE_BF16});
  qt__cuda_set_bf16_qkv(was_bf16_qkv);
  qt__cuda_set_bf16_hidden(was_bf16_hidden);
  qt__cuda_set_bf16_hidden_grad(was_bf16_hidden_grad);
  qt__cuda_set_bf16_norm_grad(was_bf16_norm_grad);
  qt__cuda_set_bf16_attention_grad(was_bf16_attention_grad);
  qt__cuda_set_bf16_branch(was_bf16_branch);
  qt_cuda_set_matmul_precision(previous);
}

/* The public entry point moves a model there and back. */
static void test_to_backend(void) {
  qt_vit_config c = vit_backend_small_config();
  qt_rng_t *rng = make_rng(6);
  qt_vit_t *vit = NULL;
  CHECK_RC(qt_vit_init(&c, 2, rng, &vit, E));
  CHECK_RC(qt_vit_to_backend(vit, QT_BACKEND_KIND_CUDA, E));
  vit_case one = {"to_backend", c, 2, 2, 0, 0.0, 0, 1, 0.0};
  vit_batch b = vit_backend_batch(rng, &one);
  CU_ASSERT(isfinite(vit_backend_step(vit, &one, &b, 1)));
  CHECK_RC(qt_vit_to_backend(vit, QT_BACKEND_KIND_CPU, E));
  CU_ASSERT(isfinite(vit_backend_step(vit, &one, &b, 1)));
  CU_ASSERT_EQUAL(qt_vit_step(vit), 2);
  vit_batch_free(&b);
  qt_vit_free(vit);
  qt_rng_free(rng);
}

static const qt_test_case cases[] = {
    {"training_steps_match_cpu", test_training_steps_match_cpu},
    {"save_and_resume_across_backends", test_save_and_resume_across_backends},
    {"vit_small_step", test_vit_small_step},
    {"vit_small_step_bf16", test_vit_small_step_bf16},
    {"vit_small_step_bf16_unfused", test_vit_small_step_bf16_unfused},
    {"vit_small_step_bf16_fp32_qkv_hidden", test_vit_small_step_bf16_fp32_qkv_hidden},
    {"to_backend", test_to_backend},
    {NULL, NULL},
};

QT_GPU_TEST_MAIN("gpu_vit_backend", cases)

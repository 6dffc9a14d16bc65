/*
 * test_vit_backend.c - the ViT on the backend interface, checked without a
 * GPU: on the fake device of qt_test_fake_device.h (the CPU's ops on memory
 * the host cannot touch), whole training steps, moves between backends and
 * checkpoints across them give the CPU's numbers bit for bit, and every
 * access to the model's memory goes through the op table (any other would
 * crash). test_gpu_vit_backend runs the same cases on CUDA.
 */
#include "qt_test.h"

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "qt_test_fake_device.h"
#include "qt_test_gpu.h"
#include "qt_test_vit_backend.h"

static const vit_tolerance exact = {0.0, 0.0, 0.0, 0.0};

static void test_training_steps_match_cpu(void) {
  long uploads = fake_device.uploads;
  vit_backend_cases(fake_device_ops(), &exact);
  /* Images, labels or targets and the loss gradient went up each step. */
  CU_ASSERT(fake_device.uploads - uploads > 3 * 7);
  CU_ASSERT_EQUAL(fake_blocks_held(), 0);
}

static void test_save_and_resume_across_backends(void) {
  vit_backend_save_resume(fake_device_ops(), &exact);
  CU_ASSERT_EQUAL(fake_blocks_held(), 0);
}

/* A move that runs out of device memory part way leaves the model on the
 * CPU, whole: it trains on as its twin does. */
static void test_failed_move_changes_nothing(void) {
  vit_case c = {"after a failed move", vit_backend_small_config(), 2, 2, 0, 0.0, 0, 1, 0.0};
  for (long fail_after = 0; fail_after < 6; fail_after++) {
    qt_rng_t *data = make_rng(1);
    qt_vit_t *vit = NULL, *twin = NULL;
    vit_backend_pair(&c, 9, NULL, &vit, &twin);
    vit_batch b = vit_backend_batch(data, &c);
    vit_backend_step(vit, &c, &b, 1);
    vit_backend_step(twin, &c, &b, 1);
    fake_device.fail_after = fail_after;
    qt_err err;
    CU_ASSERT_EQUAL(qt__vit_set_ops(vit, fake_device_ops(), &err), QT_ENOMEM);
    fake_device.fail_after = -1;
    CU_ASSERT_EQUAL(fake_blocks_held(), 0);
    vit_backend_step_both(qt__ops_cpu(), vit, twin, &(vit_twins){0}, &c, &b, &exact,
                          "after a failed move");
    vit_batch_free(&b);
    qt_vit_free(vit);
    qt_vit_free(twin);
    qt_rng_free(data);
  }
}

/* The feature hook on the device: the features read there (a host copy)
 * equal the CPU's, and the gradient written to it (with head dropout on)
 * reaches every parameter as on the CPU. */
static void test_feature_hook_on_the_device(void) {
  vit_case c = {"feature hook", vit_backend_small_config(), 3, 3, 0, 0.0, 0, 1, 0.0};
  qt_rng_t *data = make_rng(3), *drop_a = make_rng(4), *drop_b = make_rng(4);
  qt_vit_t *cpu = NULL, *dev = NULL;
  vit_backend_pair(&c, 2, NULL, &cpu, &dev); /* dev moves after its hooks are set */
  qt_vit_t *both[2] = {cpu, dev};
  qt_rng_t *drops[2] = {drop_a, drop_b};
  for (int k = 0; k < 2; k++) {
    CHECK_RC(qt_vit_set_feature_hook(both[k], 1, E));
    CHECK_RC(qt_vit_set_head_dropout(both[k], 0.3, drops[k], E));
  }
  CHECK_RC(qt__vit_set_ops(dev, fake_device_ops(), E));
  vit_batch b = vit_backend_batch(data, &c);
  size_t n = c.batch * (size_t)c.config.width, batch = 0;
  float *dfeat = host_random(data, n, 0.0, 0.1);
  double loss[2];
  for (int k = 0; k < 2; k++) {
    CHECK_RC(qt_vit_forward(both[k], b.images, c.batch, E));
    CHECK_RC(qt_vit_loss(both[k], b.labels, NULL, 0.0, &loss[k], E));
    memcpy(qt_vit_feature_grad(both[k]), dfeat, n * sizeof *dfeat);
    qt_vit_zero_grad(both[k]);
    CHECK_RC(qt_vit_backward(both[k], E));
  }
  CU_ASSERT(memcmp(&loss[0], &loss[1], sizeof loss[0]) == 0);
  expect_values("features", qt_vit_features(dev, &batch), qt_vit_features(cpu, NULL), NULL, n, 0.0);
  CU_ASSERT_EQUAL(batch, c.batch);
  vit_backend_expect_tensors(fake_device_ops(), dev, cpu, NULL, VIT_GRADS, &exact, 0.0,
                             "with the feature hook's gradient");
  free(dfeat);
  vit_batch_free(&b);
  qt_vit_free(cpu);
  qt_vit_free(dev);
  qt_rng_free(data);
  qt_rng_free(drop_a);
  qt_rng_free(drop_b);
  CU_ASSERT_EQUAL(fake_blocks_held(), 0);
}

/* The BF16 activations (the op table's bf16_activations, as on CUDA) on
 * the fake device: under BF16 products a training step takes them for every
 * block's two layer norms, attention and GELU and their four linear
 * layers, forward and backward, and the attention's backward, which reads
 * the attention's BF16 output (13 calls per block; with the layer norms'
 * output gradients, their two backward passes), and lands within BF16's
 * error of
 * the FP32 CPU; handing a linear layer the wrong array or an FP32 array
 * read as BF16 would not. Each linear backward takes the weight's BF16
 * rounding that its forward kept. Under FP32 products the same table takes none
 * and equals the CPU bit for bit. The arena is laid out anew at each
 * change: under BF16, ln1, ln2, attn_y and gelu (and qkv and dqkv, fc1
 * with the hidden pre-activation in BF16, dgelu with GELU's output
 * gradient, dln with the layer norms' output gradients, and dattn_y with
 * the attention's, which comes with qkv) take half their FP32 room; the
 * branch outputs kept in BF16 keep theirs (the last block's is FP32). */
static void bf16_linear_inputs(int bf16_qkv, int bf16_hidden, int bf16_hidden_grad,
                               int bf16_norm_grad, int bf16_attention_grad, int bf16_branch) {
  vit_case c = {"BF16 inputs", vit_backend_small_config(), 3, 3, 0, 0.0, 0, 1, 0.0};
  const qt__ops *ops = fake_device_bf16_ops();
  fake_device.bf16_qkv_off = !bf16_qkv;
  fake_device.bf16_hidden_off = !bf16_hidden;
  fake_device.bf16_hidden_grad_off = !bf16_hidden_grad;
  fake_device.bf16_norm_grad_off = !bf16_norm_grad;
  fake_device.bf16_attention_grad_off = !bf16_attention_grad;
  fake_device.bf16_branch_off = !bf16_branch;
  qt_rng_t *data = make_rng(6);
  qt_vit_t *cpu = NULL, *dev = NULL;
  vit_backend_pair(&c, 5, ops, &cpu, &dev);
  size_t moved = qt_vit_activation_bytes(dev); /* laid out under FP32 */
  vit_batch b = vit_backend_batch(data, &c);
  qt_vit_t *both[2] = {cpu, dev};
  qt_matmul_precision precisions[2] = {QT_MATMUL_BF16, QT_MATMUL_FP32};
  size_t bytes[2];
  for (int p = 0; p < 2; p++) {
    qt_matmul_precision before = ops->set_matmul_precision(precisions[p]);
    long calls = fake_device.bf16_calls, taken = fake_device.kept_taken;
    double loss[2];
    for (int k = 0; k < 2; k++) {
      CHECK_RC(qt_vit_forward(both[k], b.images, c.batch, E));
      CHECK_RC(qt_vit_loss(both[k], b.labels, NULL, 0.0, &loss[k], E));
      qt_vit_zero_grad(both[k]);
      CHECK_RC(qt_vit_backward(both[k], E));
    }
    ops->set_matmul_precision(before);
    bytes[p] = qt_vit_activation_bytes(dev);
    int bf16 = precisions[p] == QT_MATMUL_BF16;
    CU_ASSERT_EQUAL(fake_device.bf16_calls - calls,
                    bf16 ? (13 + 2 * bf16_norm_grad) * c.config.depth : 0);
    /* Each of the four linear layers' backward takes the weight's rounding
     * that its forward kept (the fake device checks that the weight is
     * unchanged since). */
    CU_ASSERT_EQUAL(fake_device.kept_taken - taken, bf16 ? 4 * c.config.depth : 0);
    const vit_tolerance *tol = bf16 ? &(vit_tolerance){1e-2, 5e-2, 0.0, 0.0} : &exact;
    CU_ASSERT(fabs(loss[1] - loss[0]) <= tol->loss * fabs(loss[0]));
    vit_backend_expect_tensors(ops, dev, cpu, NULL, VIT_GRADS, tol, 0.0,
                               bf16 ? "BF16 linear inputs" : "FP32 products");
  }
  size_t T = 5, btc = c.max_batch * T * (size_t)c.config.width;
  size_t btm = c.max_batch * T * (size_t)c.config.mlp_hidden;
  size_t halves = 3 * (btc - (btc + 1) / 2) + (btm - (btm + 1) / 2);
  if (bf16_qkv) halves += 3 * btc - (3 * btc + 1) / 2;
  if (bf16_hidden) halves += btm - (btm + 1) / 2;
  /* and the one dqkv, dgelu, dln and dattn_y of the backward */
  size_t backward_halves = bf16_qkv ? 3 * btc - (3 * btc + 1) / 2 : 0;
  if (bf16_hidden_grad) backward_halves += btm - (btm + 1) / 2;
  if (bf16_norm_grad) backward_halves += btc - (btc + 1) / 2;
  if (bf16_qkv && bf16_attention_grad) backward_halves += btc - (btc + 1) / 2;
  CU_ASSERT_EQUAL(bytes[1] - bytes[0],
                  ((size_t)c.config.depth * halves + backward_halves) * sizeof(float));
  CU_ASSERT_EQUAL(bytes[1], moved);
  fake_device.bf16_qkv_off = fake_device.bf16_hidden_off = 0;
  fake_device.bf16_hidden_grad_off = fake_device.bf16_norm_grad_off = 0;
  fake_device.bf16_attention_grad_off = fake_device.bf16_branch_off = 0;
  vit_batch_free(&b);
  qt_vit_free(cpu);
  qt_vit_free(dev);
  qt_rng_free(data);
  CU_ASSERT_EQUAL(fake_blocks_held(), 0);
}

static void test_bf16_linear_inputs(void) {
  bf16_linear_inputs(1, 1, 1, 1, 1, 1);
}

/* The same with qkv, the hidden pre-activation and the gradients of
 * GELU's, the layer norms' and the attention's outputs in FP32
 * (QT_CUDA_BF16_QKV=0 QT_CUDA_BF16_HIDDEN=0 QT_CUDA_BF16_HIDDEN_GRAD=0
 * QT_CUDA_BF16_NORM_GRAD=0 QT_CUDA_BF16_ATTENTION_GRAD=0 on CUDA), the
 * branch outputs too (QT_CUDA_BF16_BRANCH=0), and with
 * each in BF16 alone (the attention's gradient with qkv, which it needs;
 * asked for without it, it stays FP32). */
static void test_bf16_linear_inputs_fp32_qkv_hidden(void) {
  bf16_linear_inputs(0, 0, 0, 0, 0, 0);
  bf16_linear_inputs(1, 0, 0, 0, 0, 0);
  bf16_linear_inputs(0, 1, 0, 0, 0, 0);
  bf16_linear_inputs(0, 0, 1, 0, 0, 0);
  bf16_linear_inputs(0, 0, 0, 1, 0, 0);
  bf16_linear_inputs(1, 0, 0, 0, 1, 0);
  bf16_linear_inputs(0, 0, 0, 0, 1, 0);
  bf16_linear_inputs(0, 0, 0, 0, 0, 1);
}

/* The op profile over the fake device's BF16 activations: a row per op
 * and set of BF16 arrays, with the step's calls of each where the ViT
 * makes them (every linear layer's product writes BF16 from BF16 but the
 * last block's fc2, whose output goes to the plain residual add; the
 * residual adds before a layer norm read the branch and write the norm in
 * BF16; the attention's backward reads qkv and dO in BF16
 * and writes dqkv so; qkv's backward reads dqkv and writes dln in BF16;
 * the layer norms' backward reads dln), and the step's numbers those of
 * the table it times. */
static void test_bf16_profile_rows(void) {
  vit_case c = {"BF16 profile", vit_backend_small_config(), 3, 3, 0, 0.0, 0, 1, 0.0};
  const qt__ops *ops = fake_device_bf16_ops();
  const qt__ops *profiled = qt__ops_profile(ops, NULL);
  qt_rng_t *data = make_rng(9);
  qt_vit_t *cpu[2] = {NULL, NULL}, *dev[2] = {NULL, NULL};
  vit_backend_pair(&c, 10, ops, &cpu[0], &dev[0]);
  vit_backend_pair(&c, 10, profiled, &cpu[1], &dev[1]);
  vit_batch b = vit_backend_batch(data, &c);
  qt_matmul_precision before = ops->set_matmul_precision(QT_MATMUL_BF16);
  double loss[2];
  for (int k = 0; k < 2; k++) {
    if (k == 1) qt__ops_profile_reset();
    CHECK_RC(qt_vit_forward(dev[k], b.images, c.batch, E));
    CHECK_RC(qt_vit_loss(dev[k], b.labels, NULL, 0.0, &loss[k], E));
    qt_vit_zero_grad(dev[k]);
    CHECK_RC(qt_vit_backward(dev[k], E));
  }
  ops->set_matmul_precision(before);
  CU_ASSERT_EQUAL(loss[1], loss[0]);
  long depth = c.config.depth;
  struct {
    const char *name;
    long calls;
  } want[] = {
      {"linear_forward_bf16[inp,out]", 4 * depth - 1},
      {"linear_forward_bf16[inp]", 1},
      {"residual_layernorm_forward[inp,out]", 2 * depth - 1},
      {"attention_forward_bf16[inp,out]", depth},
      {"gelu_forward_bf16[inp,out]", depth},
      {"linear_backward_bf16[inp,dinp]", 2 * depth},
      {"gelu_linear_backward_bf16[inp,out,dout,dinp]", depth},
      {"attention_backward_bf16[inp,out,dout,dinp]", depth},
      {"linear_backward_bf16[inp,dout,dinp]", depth},
      {"layernorm_backward_bf16[dout]", 2 * depth},
  };
  qt__op_time t[QT__OPS_PROFILE_MAX];
  size_t n = qt__ops_profile_read(t, QT__OPS_PROFILE_MAX);
  for (size_t w = 0; w < sizeof want / sizeof *want; w++) {
    long calls = -1;
    for (size_t i = 0; i < n; i++)
      if (strcmp(t[i].name, want[w].name) == 0) calls = t[i].calls;
    if (calls != want[w].calls)
      printf("\n    %s: %ld calls, not %ld", want[w].name, calls, want[w].calls);
    CU_ASSERT_EQUAL(calls, want[w].calls);
  }
  qt__ops_profile_reset();
  vit_batch_free(&b);
  for (int k = 0; k < 2; k++) {
    qt_vit_free(cpu[k]);
    qt_vit_free(dev[k]);
  }
  qt_rng_free(data);
  CU_ASSERT_EQUAL(fake_blocks_held(), 0);
}

/* Out of device memory when the arena is laid out anew (the first forward
 * under BF16): the forward fails with QT_ENOMEM, and the next one, with
 * memory, lays it out and trains as the CPU. */
static void test_relayout_out_of_memory(void) {
  vit_case c = {"relayout", vit_backend_small_config(), 2, 2, 0, 0.0, 0, 1, 0.0};
  const qt__ops *ops = fake_device_bf16_ops();
  qt_rng_t *data = make_rng(8);
  qt_vit_t *cpu = NULL, *dev = NULL;
  vit_backend_pair(&c, 7, ops, &cpu, &dev);
  vit_batch b = vit_backend_batch(data, &c);
  qt_matmul_precision before = ops->set_matmul_precision(QT_MATMUL_BF16);
  fake_device.fail_after = 0;
  qt_err err;
  CU_ASSERT_EQUAL(qt_vit_forward(dev, b.images, c.batch, &err), QT_ENOMEM);
  fake_device.fail_after = -1;
  double loss[2];
  qt_vit_t *both[2] = {cpu, dev};
  for (int k = 0; k < 2; k++) {
    CHECK_RC(qt_vit_forward(both[k], b.images, c.batch, E));
    CHECK_RC(qt_vit_loss(both[k], b.labels, NULL, 0.0, &loss[k], E));
  }
  ops->set_matmul_precision(before);
  CU_ASSERT(fabs(loss[1] - loss[0]) <= 1e-2 * fabs(loss[0]));
  vit_batch_free(&b);
  qt_vit_free(cpu);
  qt_vit_free(dev);
  qt_rng_free(data);
  CU_ASSERT_EQUAL(fake_blocks_held(), 0);
}

/* Without a device, asking for CUDA is QT_ENODEV and the model stays. */
static void test_cuda_without_a_device(void) {
  int count = 0;
  CHECK_RC(qt_cuda_device_count(&count, E));
  if (count > 0) return; /* test_gpu_vit_backend covers a machine with one */
  qt_vit_config c = vit_backend_small_config();
  qt_rng_t *rng = make_rng(4);
  qt_vit_t *vit = NULL;
  qt_err err;
  CHECK_RC(qt_vit_init(&c, 2, rng, &vit, E));
  CU_ASSERT_EQUAL(qt_vit_to_backend(vit, QT_BACKEND_KIND_CUDA, &err), QT_ENODEV);
  CHECK_RC(qt_vit_to_backend(vit, QT_BACKEND_KIND_CPU, E));
  vit_case one = {"cpu", c, 2, 2, 0, 0.0, 0, 1, 0.0};
  vit_batch b = vit_backend_batch(rng, &one);
  CU_ASSERT(isfinite(vit_backend_step(vit, &one, &b, 1)));
  vit_batch_free(&b);
  qt_vit_free(vit);
  qt_rng_free(rng);
}

static const qt_test_case cases[] = {
    {"training_steps_match_cpu", test_training_steps_match_cpu},
    {"save_and_resume_across_backends", test_save_and_resume_across_backends},
    {"failed_move_changes_nothing", test_failed_move_changes_nothing},
    {"feature_hook_on_the_device", test_feature_hook_on_the_device},
    {"bf16_linear_inputs", test_bf16_linear_inputs},
    {"bf16_linear_inputs_fp32_qkv_hidden", test_bf16_linear_inputs_fp32_qkv_hidden},
    {"bf16_profile_rows", test_bf16_profile_rows},
    {"relayout_out_of_memory", test_relayout_out_of_memory},
    {"cuda_without_a_device", test_cuda_without_a_device},
    {NULL, NULL},
};

QT_TEST_MAIN("vit_backend", cases)

/*
 * test_run_backend.c - whole fine-tuning runs (qt_run.c) on a device,
 * checked without a GPU: on the fake device of qt_test_fake_device.h (the
 * CPU's ops on memory the host cannot touch) epochs of a ViT, of two CNNs
 * and of an MLP on tabular data, with the optimizers, GOODFIT, L2-SP, SPD,
 * SFA, LoRA, ROSA, clipping, layer decay, freezing, linear probing, mixing,
 * head dropout, BSS, DELTA, Co-Tuning and StochNorm, give the CPU's results
 * and weights bit for bit; a checkpoint saved by a run on the device
 * resumes on the CPU and the reverse, as an uninterrupted run; a move that
 * runs out of memory changes nothing.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "qt_test.h"
#include "qt_test_fake_device.h"
#include "qt_test_patterns.h"
#include "qt_test_run_fixture.h"

#define CNN_FIXTURES QT_SOURCE_DIR "/tests/fixtures/cnn/"

static qt_run_spec vit_spec(void) {
  return run_fixture_vit_spec();
}

/* The pipelines compared: every part that trains on a device. */
static int n_specs(void) {
  return 11;
}

static qt_run_spec spec_at(int k) {
  qt_run_spec s;
  switch (k) {
    case 0: /* AdamW, L2-SP and SFA, clipping, layer decay, freezing, mixing, dropout */
      return run_fixture_vit_pipeline_spec();
    case 1: /* momentum, L2-SP as the decay, linear probing, plateau schedule */
      s = vit_spec();
      s.optim.kind = QT_OPTIM_KIND_MOMENTUM;
      s.optim.decay = QT_DECAY_KIND_L2SP;
      s.linear_probing = 1;
      s.schedule.kind = QT_SCHEDULE_KIND_PLATEAU;
      return s;
    case 2: /* a MobileNetV2 with Adam, StochNorm and dropout */
      s = run_fixture_cnn_spec(CNN_FIXTURES "mobilenetv2_tiny.safetensors",
                               QT_MODEL_FAMILY_MOBILENETV2);
      s.optim.kind = QT_OPTIM_KIND_ADAM;
      s.drop = 0.2;
      s.stoch_norm = 1;
      return s;
    case 4: /* the feature hook's methods: BSS and DELTA (its source on the CPU) */
      s = vit_spec();
      s.bss_reg = 0.01;
      s.delta_reg = 0.1;
      s.drop = 0.1;
      return s;
    case 5: /* Co-Tuning with the checkpoint's head as the source classifier */
      s = vit_spec();
      s.cotuning_reg = 0.5;
      return s;
    case 6: /* Selective Projection Decay with AdamW, clipping and SFA */
      s = vit_spec();
      s.optim.decay = QT_DECAY_KIND_SPD;
      s.optim.weight_decay = 0.5;
      s.optim.clip_grad = 0.5;
      s.sfa = 1;
      return s;
    case 7: /* GOODFIT (two reference steps per update) around momentum, with clipping */
      s = vit_spec();
      s.goodfit = 1;
      s.goodfit_main = QT_OPTIM_KIND_MOMENTUM;
      s.optim.kind = QT_OPTIM_KIND_MOMENTUM;
      s.goodfit_n_ref = 2;
      s.optim.clip_grad = 0.5;
      return s;
    case 8: /* LoRA on every linear layer, half of the blocks frozen, with SFA and clipping */
      s = vit_spec();
      s.adapter = QT_ADAPTER_KIND_LORA;
      s.adapter_rank = 2;
      s.adapter_alpha = 4.0;
      s.pct_to_freeze = 0.5;
      s.sfa = 1;
      s.optim.clip_grad = 0.5;
      return s;
    case 9: /* ROSA on the attention layers (resampled every epoch) with L2-SP and SFA */
      s = vit_spec();
      s.adapter = QT_ADAPTER_KIND_ROSA;
      s.adapter_rank = 2;
      s.adapter_attention_only = 1;
      s.optim.sp_reg = 0.01;
      s.sfa = 1;
      return s;
    case 10: /* an MLP on tabular data with AdamW, L2-SP, clipping, half of it frozen, mixing,
                dropout and BSS */
      return run_fixture_mlp_pipeline_spec();
    default: /* a ResNet with SGD, clipping, half of it frozen and BSS (the hook on a CNN) */
      s = run_fixture_cnn_spec(CNN_FIXTURES "resnet_tiny.safetensors", QT_MODEL_FAMILY_RESNET);
      s.bss_reg = 0.01;
      s.optim.kind = QT_OPTIM_KIND_SGD;
      s.optim.clip_grad = 1.0;
      s.pct_to_freeze = 0.5;
      return s;
  }
}

/* Every parameter of the run's model in one host array (downloaded from
 * its backend). */
static float *run_weights(qt_run_t *run, size_t *n) {
  qt_model_t *m = qt_run_model(run);
  const qt__ops *ops = qt__model_ops(m);
  size_t total = 0, count = qt_model_tensor_count(m);
  for (size_t i = 0; i < count; i++) {
    qt_model_tensor t;
    qt_model_tensor_at(m, i, &t);
    total += t.numel;
  }
  float *all = malloc((total ? total : 1) * sizeof *all);
  CU_ASSERT_PTR_NOT_NULL_FATAL(all);
  size_t at = 0;
  for (size_t i = 0; i < count; i++) {
    qt_model_tensor t;
    qt_model_tensor_at(m, i, &t);
    CU_ASSERT_FATAL(ops->download(all + at, t.data, t.numel * sizeof *all, NULL) == 0);
    at += t.numel;
  }
  *n = total;
  return all;
}

static void expect_same_weights(qt_run_t *a, qt_run_t *b, const char *what) {
  size_t na = 0, nb = 0;
  float *wa = run_weights(a, &na), *wb = run_weights(b, &nb);
  CU_ASSERT_FATAL(na == nb);
  int same = memcmp(wa, wb, na * sizeof *wa) == 0;
  if (!same) fprintf(stderr, "\n%s: the weights differ\n", what);
  CU_ASSERT(same);
  free(wa);
  free(wb);
}

static void expect_same_epoch(const qt_run_epoch_result *a, const qt_run_epoch_result *b,
                              const char *what) {
  int same = a->epoch == b->epoch && a->status == b->status && a->score == b->score &&
             a->train_loss == b->train_loss && a->val_loss == b->val_loss && a->lr == b->lr &&
             a->trainable == b->trainable;
  if (!same)
    fprintf(stderr, "\n%s: epoch %ld: score %.9g / %.9g, train loss %.9g / %.9g\n", what, a->epoch,
            a->score, b->score, a->train_loss, b->train_loss);
  CU_ASSERT(same);
}

static qt_run_t *start(const qt_run_spec *s, const qt__ops *ops) {
  qt_run_t *run = NULL;
  qt_err err;
  int rc = qt__run_init_ops(s, ops, &run, &err);
  if (rc) fprintf(stderr, "\nqt_run_init on %s: %s\n", ops->name, qt_err_message(&err));
  CU_ASSERT_FATAL(rc == 0);
  return run;
}

/* An epoch; on the fake device every op of it runs on the run's own
 * stream, and the thread's stream is the default again after it. */
static void epoch(qt_run_t *run, qt_run_epoch_result *r) {
  qt_err err;
  long default_calls = fake_device.default_stream_calls;
  int rc = qt_run_epoch(run, r, &err);
  if (rc) fprintf(stderr, "\nqt_run_epoch: %s\n", qt_err_message(&err));
  CU_ASSERT_FATAL(rc == 0);
  CU_ASSERT_EQUAL(r->status, QT_RUN_STATUS_OK);
  CU_ASSERT_EQUAL(fake_device.default_stream_calls, default_calls);
  CU_ASSERT_PTR_NULL(fake_device.stream);
}

static void test_epochs_match_cpu(void) {
  for (int k = 0; k < n_specs(); k++) {
    qt_run_spec s = spec_at(k);
    char what[64];
    snprintf(what, sizeof what, "pipeline %d", k);
    qt_run_t *cpu = start(&s, qt__ops_cpu()), *dev = start(&s, fake_device_ops());
    long pinned_uploads = fake_device.pinned_uploads, async_uploads = fake_device.async_uploads;
    for (int e = 0; e < 3; e++) {
      qt_run_epoch_result rc_, rd;
      epoch(cpu, &rc_);
      epoch(dev, &rd);
      expect_same_epoch(&rd, &rc_, what);
    }
    expect_same_weights(dev, cpu, what);
    /* The batches went up from the page-locked arrays of the iterators:
     * at least one upload per training and validation batch. */
    CU_ASSERT(fake_device.pinned_uploads - pinned_uploads >= 3 * 2);
    /* The image models' training batches went up while the batch before
     * trained, at least one an epoch (the fake makes such a copy only at
     * the wait: a forward before it would see the previous images); the
     * MLP's features go up in its forward. */
    long async = fake_device.async_uploads - async_uploads;
    CU_ASSERT(k == 10 ? async == 0 : async >= 3);
    qt_run_free(cpu);
    qt_run_free(dev);
    CU_ASSERT_EQUAL(fake_blocks_held(), 0);
    CU_ASSERT_EQUAL(fake_pins_held(), 0);
    CU_ASSERT_EQUAL(fake_device.streams, 0);
  }
}

/* A device that refuses to page-lock host memory trains the same: pinning
 * only speeds up the uploads. */
static void test_pin_refused(void) {
  qt_run_spec s = spec_at(0);
  fake_device.refuse_pins = 1;
  long pinned_uploads = fake_device.pinned_uploads;
  qt_run_t *cpu = start(&s, qt__ops_cpu()), *dev = start(&s, fake_device_ops());
  CU_ASSERT_EQUAL(fake_pins_held(), 0);
  qt_run_epoch_result rc_, rd;
  epoch(cpu, &rc_);
  epoch(dev, &rd);
  expect_same_epoch(&rd, &rc_, "pins refused");
  CU_ASSERT_EQUAL(fake_device.pinned_uploads, pinned_uploads);
  qt_run_free(cpu);
  qt_run_free(dev);
  fake_device.refuse_pins = 0;
  CU_ASSERT_EQUAL(fake_blocks_held(), 0);
}

/* amp: every call that a run's epochs and its test evaluation make on the
 * device comes under BF16 products, the setting before is restored after
 * each, and the CPU (which computes in FP32 regardless) gives the numbers
 * of the run without amp. */
static void test_amp(void) {
  qt_run_spec s = spec_at(0), plain = s;
  CU_ASSERT_FATAL(qt_run_spec_set(&s, "amp", "true", NULL) == 0);
  CU_ASSERT_EQUAL(s.amp, 1);
  qt_err err;
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "amp", "bf16", &err), QT_EINVAL);
  qt_run_t *cpu = start(&plain, qt__ops_cpu()), *cpu_amp = start(&s, qt__ops_cpu());
  qt_run_t *dev = start(&s, fake_device_ops());
  fake_device.precision = QT_MATMUL_TF32; /* a caller's own setting, restored after */
  for (int e = 0; e < 2; e++) {
    qt_run_epoch_result r, r_amp, rd;
    epoch(cpu, &r);
    epoch(cpu_amp, &r_amp);
    expect_same_epoch(&r_amp, &r, "amp on the CPU");
    long calls = fake_device.op_calls + fake_device.uploads + fake_device.downloads;
    long bf16 = fake_device.under_bf16;
    epoch(dev, &rd);
    expect_same_epoch(&rd, &r, "amp on the fake device");
    calls = fake_device.op_calls + fake_device.uploads + fake_device.downloads - calls;
    CU_ASSERT(calls > 0);
    CU_ASSERT_EQUAL(fake_device.under_bf16 - bf16, calls);
    CU_ASSERT_EQUAL(fake_device.precision, QT_MATMUL_TF32);
  }
  double top1, top5, loss;
  long bf16 = fake_device.under_bf16;
  CU_ASSERT_FATAL(qt_run_evaluate_test(dev, &top1, &top5, &loss, NULL) == 0);
  CU_ASSERT_EQUAL(fake_device.under_bf16, bf16); /* no test split: nothing ran */
  CU_ASSERT_EQUAL(fake_device.precision, QT_MATMUL_TF32);
  fake_device.precision = QT_MATMUL_FP32;
  expect_same_weights(cpu_amp, cpu, "amp on the CPU");
  expect_same_weights(dev, cpu, "amp on the fake device");
  qt_run_free(cpu);
  qt_run_free(cpu_amp);
  qt_run_free(dev);
  CU_ASSERT_EQUAL(fake_blocks_held(), 0);
}

/* Three epochs in one go on the CPU against one epoch on `first`, a
 * checkpoint, and two more epochs on `second` from it. */
static void check_resume_across(const qt_run_spec *s, const qt__ops *first, const qt__ops *second) {
  qt_err err;
  char path[256];
  qt_test_temp_path("run-backend.safetensors", path, sizeof path);
  qt_run_t *full = start(s, qt__ops_cpu());
  qt_run_epoch_result want[3], got;
  for (int e = 0; e < 3; e++) epoch(full, &want[e]);

  qt_run_t *part = start(s, first);
  epoch(part, &got);
  expect_same_epoch(&got, &want[0], "before the checkpoint");
  long default_calls = fake_device.default_stream_calls;
  CU_ASSERT_FATAL(qt_run_save(part, path, &err) == 0);
  CU_ASSERT_EQUAL(fake_device.default_stream_calls, default_calls); /* on the run's stream */
  qt_run_free(part);
  part = NULL;
  int rc = qt__run_load_ops(path, s, second, &part, &err);
  if (rc) fprintf(stderr, "\nqt_run_load on %s: %s\n", second->name, qt_err_message(&err));
  CU_ASSERT_FATAL(rc == 0);
  CU_ASSERT_EQUAL(qt_run_epochs_done(part), 1);
  for (int e = 1; e < 3; e++) {
    epoch(part, &got);
    expect_same_epoch(&got, &want[e], "after the checkpoint");
  }
  expect_same_weights(part, full, "resumed");
  qt_run_free(full);
  qt_run_free(part);
  CU_ASSERT_EQUAL(fake_blocks_held(), 0);
  CU_ASSERT_EQUAL(fake_device.streams, 0);
}

static void test_resume_across_backends(void) {
  for (int k = 0; k < n_specs(); k += 2) {
    qt_run_spec s = spec_at(k);
    check_resume_across(&s, fake_device_ops(), qt__ops_cpu());
    check_resume_across(&s, qt__ops_cpu(), fake_device_ops());
  }
}

/* The op profile (qt__ops_profile) over the fake device: the run's numbers
 * stay the CPU's, every timed op is counted and waited for once, and the
 * ops of a ViT's epoch are there, most time first. */
static long syncs;
static int count_sync(qt_err *err) {
  (void)err;
  syncs++;
  return 0;
}

static void test_profile(void) {
  qt_run_spec s = spec_at(0);
  syncs = 0;
  const qt__ops *profiled = qt__ops_profile(fake_device_ops(), count_sync);
  CU_ASSERT_EQUAL(profiled->host_memory, 0);
  qt_run_t *cpu = start(&s, qt__ops_cpu()), *dev = start(&s, profiled);
  qt__ops_profile_reset();
  syncs = 0;
  qt_run_epoch_result rc_, rd;
  epoch(cpu, &rc_);
  epoch(dev, &rd);
  expect_same_epoch(&rd, &rc_, "profiled");
  expect_same_weights(dev, cpu, "profiled");
  qt__op_time t[QT__OPS_PROFILE_MAX];
  size_t n = qt__ops_profile_read(t, QT__OPS_PROFILE_MAX);
  long calls = 0;
  int seen_linear = 0, seen_attention = 0, seen_step = 0;
  for (size_t i = 0; i < n; i++) {
    calls += t[i].calls;
    CU_ASSERT(t[i].calls > 0 && t[i].seconds >= 0.0);
    if (i > 0) CU_ASSERT(t[i].seconds <= t[i - 1].seconds);
    seen_linear |= strcmp(t[i].name, "linear_forward") == 0;
    seen_attention |= strcmp(t[i].name, "attention_backward") == 0;
    seen_step |= strcmp(t[i].name, "optim_steps") == 0;
  }
  CU_ASSERT(seen_linear && seen_attention && seen_step);
  /* Every timed call waited once (expect_same_weights's downloads too). */
  CU_ASSERT_EQUAL(calls, syncs);
  CU_ASSERT_EQUAL(qt__ops_profile_read(t, 2), 2);
  qt__ops_profile_reset();
  CU_ASSERT_EQUAL(qt__ops_profile_read(t, QT__OPS_PROFILE_MAX), 0);
  qt_run_free(cpu);
  qt_run_free(dev);
  CU_ASSERT_EQUAL(fake_blocks_held(), 0);
}

/* Without a device, a CUDA run is QT_ENODEV. */
static void test_cuda_without_device(void) {
  int count = 0;
  CU_ASSERT_EQUAL(qt_cuda_device_count(&count, NULL), 0);
  if (count > 0) return;
  qt_run_spec s = vit_spec();
  s.device = QT_BACKEND_KIND_CUDA;
  qt_run_t *run = NULL;
  qt_err err;
  CU_ASSERT_EQUAL(qt_run_init(&s, &run, &err), QT_ENODEV);
  CU_ASSERT_PTR_NULL(run);
}

/* Out of device memory at any allocation of the move (model, optimizer
 * state, reference weights): the run is not made, nothing is left held,
 * and the next try succeeds. */
static void check_failed_move(const qt_run_spec *spec) {
  qt_run_spec s = *spec;
  char path[256];
  qt_test_temp_path("run-move.safetensors", path, sizeof path);
  qt_run_t *run = start(&s, qt__ops_cpu());
  qt_run_epoch_result r;
  epoch(run, &r);
  CU_ASSERT_FATAL(qt_run_save(run, path, NULL) == 0);
  qt_run_free(run);
  int failures = 0;
  for (long k = 0; k < 40; k++) {
    fake_device.fail_after = k;
    qt_err err;
    run = NULL;
    int rc = qt__run_load_ops(path, &s, fake_device_ops(), &run, &err);
    fake_device.fail_after = -1;
    if (rc == 0) {
      qt_run_free(run);
      break;
    }
    failures++;
    CU_ASSERT_EQUAL(rc, QT_ENOMEM);
    CU_ASSERT_PTR_NULL(run);
    CU_ASSERT_EQUAL(fake_blocks_held(), 0);
    CU_ASSERT_EQUAL(fake_device.streams, 0);
    CU_ASSERT_PTR_NULL(fake_device.stream);
  }
  /* The loaded run holds reference weights and moments to move. */
  CU_ASSERT(failures > 10);
  CU_ASSERT_EQUAL(fake_blocks_held(), 0);
  /* A stream that cannot be made fails the move before anything is. */
  fake_device.refuse_streams = 1;
  run = NULL;
  qt_err err;
  CU_ASSERT_EQUAL(qt__run_load_ops(path, &s, fake_device_ops(), &run, &err), QT_ENOMEM);
  fake_device.refuse_streams = 0;
  CU_ASSERT_PTR_NULL(run);
  CU_ASSERT_PTR_NOT_NULL(strstr(qt_err_message(&err), "stream"));
  CU_ASSERT_EQUAL(fake_blocks_held(), 0);
  CU_ASSERT_EQUAL(fake_device.streams, 0);
}

static void test_failed_move(void) {
  qt_run_spec vit = spec_at(0), mlp = spec_at(10);
  check_failed_move(&vit);
  check_failed_move(&mlp);
}

static void test_cleanup(void) {
  run_fixture_free();
}

static const qt_test_case cases[] = {
    {"epochs_match_cpu", test_epochs_match_cpu},
    {"resume_across_backends", test_resume_across_backends},
    {"amp", test_amp},
    {"pin_refused", test_pin_refused},
    {"profile", test_profile},
    {"cuda_without_device", test_cuda_without_device},
    {"failed_move", test_failed_move},
    {"cleanup", test_cleanup},
    {NULL, NULL},
};

QT_TEST_MAIN("run_backend", cases)

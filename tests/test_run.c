/*
 * test_run.c - the optimizers, schedules and the epoch-step run API
 * (qt_optim.c, qt_schedule.c, qt_run.c): hand-computed optimizer steps and
 * learning rates, freezing, save-load-continue equal to an uninterrupted run
 * bit for bit (1 and 2 data threads), truncated checkpoints, divergence.
 *
 * The data are 8x8 RGB images of three classes (horizontal stripes,
 * vertical stripes, a checkerboard) with noise, generated here; the model
 * is a tiny random ViT written to a temporary checkpoint with qt_vit_save.
 */
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "finetune/qt_finetune.h"
#include "qt_test.h"
#include "qt_test_patterns.h"

/* ------------------------------------------------------------------------- */
/* Fixtures                                                                   */
/* ------------------------------------------------------------------------- */

static qt_data_splits splits;
static char checkpoint_path[256];

static void make_fixture(void) {
  if (splits.train) return;
  qt_dataset *all = qt_test_patterns(12, 7);
  CU_ASSERT_FATAL(qt_dataset_split(all, 0.25, 0.0, 3, &splits.train, &splits.val, NULL, NULL) == 0);
  qt_dataset_free(all);
  qt_vit_config c = qt_vit_default_config();
  c.image_size = 8;
  c.patch_size = 4;
  c.width = 8;
  c.depth = 2;
  c.heads = 2;
  c.mlp_hidden = 16;
  c.num_classes = 5; /* another head than the task's: the run draws a new one */
  qt_rng_t *rng = NULL;
  qt_rng_init(&rng, 11, NULL);
  qt_vit_t *vit = NULL;
  CU_ASSERT_FATAL(qt_vit_init(&c, 4, rng, &vit, NULL) == 0);
  qt_test_temp_path("pretrained.safetensors", checkpoint_path, sizeof checkpoint_path);
  CU_ASSERT_FATAL(qt_vit_save(vit, checkpoint_path, NULL) == 0);
  qt_vit_free(vit);
  qt_rng_free(rng);
}

static qt_run_spec base_spec(void) {
  make_fixture();
  qt_run_spec s = qt_run_default_spec();
  s.checkpoint = checkpoint_path;
  s.family = QT_MODEL_FAMILY_VIT;
  s.heads = 2;
  for (int c = 0; c < 3; c++) s.mean[c] = s.std[c] = 0.5;
  s.data = &splits;
  s.epochs = 4;
  s.batch_size = 6;
  s.seed = 5;
  s.optim.lr = 3e-3;
  return s;
}

/* ------------------------------------------------------------------------- */
/* Optimizers and schedules                                                   */
/* ------------------------------------------------------------------------- */

static void test_optim_sgd_momentum(void) {
  qt_optim_params p = qt_optim_default_params();
  p.kind = QT_OPTIM_KIND_SGD;
  p.weight_decay = 0.1;
  float x[2] = {1.0f, -2.0f}, g[2] = {0.5f, 0.25f};
  qt_optim_tensor_step(&p, 0.1, 1, 1, x, g, NULL, NULL, 2);
  /* Coupled decay: g + 0.1 x = 0.6, 0.05. */
  QT_ASSERT_CLOSE(x[0], 1.0 - 0.1 * 0.6, 1e-7);
  QT_ASSERT_CLOSE(x[1], -2.0 - 0.1 * 0.05, 1e-6);

  p.kind = QT_OPTIM_KIND_MOMENTUM;
  p.momentum = 0.9;
  p.weight_decay = 0.0;
  float y[1] = {1.0f}, h[1] = {1.0f}, buf[1] = {0.0f};
  qt_optim_tensor_step(&p, 0.1, 1, 1, y, h, buf, NULL, 1);
  QT_ASSERT_CLOSE(buf[0], 1.0, 1e-7);
  QT_ASSERT_CLOSE(y[0], 0.9, 1e-7);
  qt_optim_tensor_step(&p, 0.1, 1, 2, y, h, buf, NULL, 1);
  QT_ASSERT_CLOSE(buf[0], 1.9, 1e-6);
  QT_ASSERT_CLOSE(y[0], 0.9 - 0.19, 1e-6);
}

static void test_optim_adam_coupled_vs_adamw(void) {
  qt_optim_params p = qt_optim_default_params();
  p.weight_decay = 0.5;
  float g[1] = {0.2f};
  /* Adam: the decay enters the gradient, g' = 0.2 + 0.5 * 2 = 1.2; after
   * one step m / sqrt(v) (bias-corrected) is sign(g') = 1, so x -= lr. */
  p.kind = QT_OPTIM_KIND_ADAM;
  float x[1] = {2.0f}, m[1] = {0}, v[1] = {0};
  qt_optim_tensor_step(&p, 0.01, 1, 1, x, g, m, v, 1);
  QT_ASSERT_CLOSE(m[0], 0.1 * 1.2, 1e-6);
  QT_ASSERT_CLOSE(x[0], 2.0 - 0.01, 1e-6);
  /* AdamW: x -= lr wd x, then lr sign(g). */
  p.kind = QT_OPTIM_KIND_ADAMW;
  float xw[1] = {2.0f}, mw[1] = {0}, vw[1] = {0};
  qt_optim_tensor_step(&p, 0.01, 1, 1, xw, g, mw, vw, 1);
  QT_ASSERT_CLOSE(mw[0], 0.1 * 0.2, 1e-7);
  QT_ASSERT_CLOSE(xw[0], 2.0 - 0.01 * 0.5 * 2.0 - 0.01, 1e-6);
  /* No decay on tensors without the flag. */
  float xn[1] = {2.0f}, mn[1] = {0}, vn[1] = {0};
  qt_optim_tensor_step(&p, 0.01, 0, 1, xn, g, mn, vn, 1);
  QT_ASSERT_CLOSE(xn[0], 2.0 - 0.01, 1e-6);
}

static void test_schedules(void) {
  qt_schedule_params p = qt_schedule_default_params();
  p.epochs = 10;
  p.warmup_epochs = 2;
  p.warmup_lr = 1e-4;
  /* Warmup: 1e-4, then halfway to 1e-2. */
  QT_ASSERT_CLOSE(qt_schedule_lr(&p, 1e-2, 0, NULL), 1e-4, 1e-12);
  QT_ASSERT_CLOSE(qt_schedule_lr(&p, 1e-2, 1, NULL), 1e-4 + 0.5 * (1e-2 - 1e-4), 1e-12);
  /* Cosine at t = 5 of 10: half of lr. */
  QT_ASSERT_CLOSE(qt_schedule_lr(&p, 1e-2, 5, NULL), 0.5e-2, 1e-12);
  QT_ASSERT_CLOSE(qt_schedule_lr(&p, 1e-2, 10, NULL), 0.0, 1e-12);
  p.warmup_epochs = 0;
  p.kind = QT_SCHEDULE_KIND_STEP;
  p.decay_epochs = 3;
  p.decay_rate = 0.5;
  QT_ASSERT_CLOSE(qt_schedule_lr(&p, 1.0, 2, NULL), 1.0, 1e-12);
  QT_ASSERT_CLOSE(qt_schedule_lr(&p, 1.0, 3, NULL), 0.5, 1e-12);
  QT_ASSERT_CLOSE(qt_schedule_lr(&p, 1.0, 7, NULL), 0.25, 1e-12);
  p.kind = QT_SCHEDULE_KIND_MULTISTEP;
  p.milestones[0] = 2;
  p.milestones[1] = 5;
  p.n_milestones = 2;
  QT_ASSERT_CLOSE(qt_schedule_lr(&p, 1.0, 1, NULL), 1.0, 1e-12);
  QT_ASSERT_CLOSE(qt_schedule_lr(&p, 1.0, 4, NULL), 0.5, 1e-12);
  QT_ASSERT_CLOSE(qt_schedule_lr(&p, 1.0, 9, NULL), 0.25, 1e-12);
  p.kind = QT_SCHEDULE_KIND_CONSTANT;
  QT_ASSERT_CLOSE(qt_schedule_lr(&p, 1.0, 9, NULL), 1.0, 1e-12);

  /* Plateau, patience 1: two epochs without improvement halve lr. */
  p.kind = QT_SCHEDULE_KIND_PLATEAU;
  p.patience_epochs = 1;
  qt_schedule_plateau st;
  qt_schedule_plateau_init(&st);
  qt_schedule_plateau_update(&p, &st, 0, 0.5);
  qt_schedule_plateau_update(&p, &st, 1, 0.5);
  QT_ASSERT_CLOSE(qt_schedule_lr(&p, 1.0, 2, &st), 1.0, 1e-12);
  qt_schedule_plateau_update(&p, &st, 2, 0.4);
  QT_ASSERT_CLOSE(qt_schedule_lr(&p, 1.0, 3, &st), 0.5, 1e-12);
  qt_schedule_plateau_update(&p, &st, 3, 0.9);
  QT_ASSERT_CLOSE(st.best, 0.9, 1e-12);
  CU_ASSERT_EQUAL(st.bad, 0);
}

static void test_spec_set(void) {
  qt_run_spec s = qt_run_default_spec();
  qt_err err;
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "opt", "momentum", &err), 0);
  CU_ASSERT_EQUAL(s.optim.kind, QT_OPTIM_KIND_MOMENTUM);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "opt_betas", "[0.8, 0.99]", &err), 0);
  QT_ASSERT_CLOSE(s.optim.beta2, 0.99, 1e-15);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "decay_strength", "0.05", &err), 0);
  QT_ASSERT_CLOSE(s.optim.weight_decay, 0.05, 1e-15);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "decay", "none", &err), 0);
  QT_ASSERT_CLOSE(qt_optim_zero_decay(&s.optim), 0.0, 0.0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "sched", "None", &err), 0);
  CU_ASSERT_EQUAL(s.schedule.kind, QT_SCHEDULE_KIND_NONE);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "batch_size", "16", &err), 0);
  CU_ASSERT_EQUAL(s.batch_size, 16);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "linear_probing", "True", &err), 0);
  CU_ASSERT_EQUAL(s.linear_probing, 1);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "opt", "goodfit", &err), 0);
  CU_ASSERT_EQUAL(s.goodfit, 1);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "opt", "sgd", &err), 0);
  CU_ASSERT_EQUAL(s.goodfit, 0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "decay", "l2sp", &err), 0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "bogus", "1", &err), QT_ENOENT);
  /* Quick-Tune's space: its regularizers (sp_reg's L2-SP, BSS, Co-Tuning). */
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "sp_reg", "0.01", &err), 0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "bss_reg", "0", &err), 0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "cotuning_reg", "0.5", &err), 0);
  QT_ASSERT_CLOSE(s.cotuning_reg, 0.5, 0.0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "cotuning_reg", "much", &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "amp", "True", &err), 0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "stoch_norm", "True", &err), 0);
  CU_ASSERT_EQUAL(s.stoch_norm, 1);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "clip_grad", "None", &err), 0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "crop_scale", "0.35", &err), 0);
  QT_ASSERT_CLOSE(s.crop_scale, 0.35, 1e-15);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "hflip", "0", &err), 0);
  CU_ASSERT_EQUAL(s.hflip, 0.0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "layer_decay", "0.65", &err), 0);
  QT_ASSERT_CLOSE(s.optim.layer_decay, 0.65, 1e-15);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "opt", "adamp", &err), QT_ENOTIMPL);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "lr", "fast", &err), QT_EINVAL);
}

/* ------------------------------------------------------------------------- */
/* Runs                                                                       */
/* ------------------------------------------------------------------------- */

static int same_params(qt_run_t *a, qt_run_t *b) {
  qt_vit_t *va = qt_model_vit(qt_run_model(a)), *vb = qt_model_vit(qt_run_model(b));
  if (qt_vit_parameter_count(va) != qt_vit_parameter_count(vb)) return 0;
  for (size_t i = 0; i < qt_vit_tensor_count(va); i++) {
    qt_vit_tensor ta, tb;
    qt_vit_tensor_at(va, i, &ta);
    qt_vit_tensor_at(vb, i, &tb);
    if (memcmp(ta.data, tb.data, ta.numel * sizeof(float)) != 0) {
      fprintf(stderr, "tensor %s differs\n", ta.name);
      return 0;
    }
  }
  return 1;
}

static int same_result(const qt_run_epoch_result *a, const qt_run_epoch_result *b) {
  return a->epoch == b->epoch && a->status == b->status && a->score == b->score &&
         a->train_loss == b->train_loss && a->val_loss == b->val_loss && a->lr == b->lr &&
         a->trainable == b->trainable;
}

/* Three epochs in one go against 1 + save/load + 1 + save/load + 1. */
static void check_resume(qt_run_spec spec) {
  qt_err err;
  char path[256];
  qt_test_temp_path("run.safetensors", path, sizeof path);
  qt_run_t *full = NULL;
  CU_ASSERT_FATAL(qt_run_init(&spec, &full, &err) == 0);
  qt_run_epoch_result want[3];
  for (int e = 0; e < 3; e++) {
    CU_ASSERT_FATAL(qt_run_epoch(full, &want[e], &err) == 0);
    CU_ASSERT_EQUAL(want[e].status, QT_RUN_STATUS_OK);
    CU_ASSERT(want[e].score >= 0.0 && want[e].score <= 1.0);
    CU_ASSERT(isfinite(want[e].train_loss));
  }

  qt_run_t *part = NULL;
  CU_ASSERT_FATAL(qt_run_init(&spec, &part, &err) == 0);
  for (int e = 0; e < 3; e++) {
    qt_run_epoch_result got;
    int rc = qt_run_epoch(part, &got, &err);
    CU_ASSERT_FATAL(rc == 0);
    CU_ASSERT(same_result(&got, &want[e]));
    if (e == 2) break;
    CU_ASSERT_FATAL(qt_run_save(part, path, &err) == 0);
    qt_run_free(part);
    part = NULL;
    rc = qt_run_load(path, &spec, &part, &err);
    if (rc) fprintf(stderr, "load: %s\n", err.msg);
    CU_ASSERT_FATAL(rc == 0);
    CU_ASSERT_EQUAL(qt_run_epochs_done(part), e + 1);
  }
  CU_ASSERT(same_params(full, part));
  CU_ASSERT_EQUAL(qt_run_best_score(full), qt_run_best_score(part));
  qt_run_free(full);
  qt_run_free(part);
}

static void test_resume_adamw_freeze_probe(void) {
  qt_run_spec s = base_spec();
  s.optim.kind = QT_OPTIM_KIND_ADAMW;
  s.optim.clip_grad = 0.5;
  s.optim.layer_decay = 0.75;
  s.schedule.kind = QT_SCHEDULE_KIND_COSINE;
  s.schedule.warmup_epochs = 1;
  s.schedule.warmup_lr = 1e-5;
  s.pct_to_freeze = 0.5;
  s.linear_probing = 1; /* epochs 0, 1 head only; epoch 2 blocks.1 and norm too */
  s.mixup = 0.4;
  s.smoothing = 0.1;
  s.drop = 0.3;
  s.threads = 1;
  check_resume(s);
  s.threads = 2;
  check_resume(s);
}

static void test_resume_momentum_plateau(void) {
  qt_run_spec s = base_spec();
  s.optim.kind = QT_OPTIM_KIND_MOMENTUM;
  s.optim.lr = 0.01;
  s.optim.weight_decay = 1e-3;
  s.schedule.kind = QT_SCHEDULE_KIND_PLATEAU;
  s.schedule.patience_epochs = 0;
  s.schedule.decay_rate = 0.5;
  s.data_augmentation = QT_AUTO_AUGMENT_RAND;
  check_resume(s);
  s.optim.kind = QT_OPTIM_KIND_ADAM;
  s.schedule.kind = QT_SCHEDULE_KIND_STEP;
  s.schedule.decay_epochs = 1;
  check_resume(s);
}

/* The backward stop gives the trainable tensors the same gradients, bit for
 * bit, and the frozen ones none. */
static void test_backward_from(void) {
  qt_vit_config c = qt_vit_default_config();
  c.image_size = 8;
  c.patch_size = 4;
  c.width = 8;
  c.depth = 3;
  c.heads = 2;
  c.mlp_hidden = 16;
  c.num_classes = 3;
  qt_rng_t *rng = NULL;
  qt_rng_init(&rng, 2, NULL);
  qt_vit_t *vit = NULL;
  CU_ASSERT_FATAL(qt_vit_init(&c, 2, rng, &vit, NULL) == 0);
  float images[2 * 3 * 8 * 8];
  for (size_t i = 0; i < sizeof images / sizeof images[0]; i++)
    images[i] = (float)qt_rng_gaussian(rng, 1.0);
  const int labels[2] = {0, 2};
  size_t n = qt_vit_parameter_count(vit);
  float *full = malloc(n * sizeof *full);
  for (int pass = 0; pass < 2; pass++) {
    qt_vit_set_backward_from(vit, pass == 0 ? 0 : 2);
    CU_ASSERT_FATAL(qt_vit_forward(vit, images, 2, NULL) == 0);
    CU_ASSERT_FATAL(qt_vit_loss(vit, labels, NULL, 0.0, NULL, NULL) == 0);
    qt_vit_zero_grad(vit);
    CU_ASSERT_FATAL(qt_vit_backward(vit, NULL) == 0);
    size_t off = 0;
    for (size_t i = 0; i < qt_vit_tensor_count(vit); i++) {
      qt_vit_tensor t;
      qt_vit_tensor_at(vit, i, &t);
      if (pass == 0) {
        memcpy(full + off, t.grad, t.numel * sizeof(float));
      } else {
        int reached = strncmp(t.name, "blocks.2.", 9) == 0 || strncmp(t.name, "norm.", 5) == 0 ||
                      strncmp(t.name, "head.", 5) == 0;
        if (reached) {
          CU_ASSERT(memcmp(full + off, t.grad, t.numel * sizeof(float)) == 0);
        } else {
          int zero = 1;
          for (size_t j = 0; j < t.numel; j++) zero &= t.grad[j] == 0.0f;
          CU_ASSERT(zero);
        }
      }
      off += t.numel;
    }
  }
  free(full);
  qt_vit_free(vit);
  qt_rng_free(rng);
}

/* One SGD step over the whole training set from the same start: layer
 * decay scales each tensor's update by layer_decay^(depth + 1 - layer), and
 * clipping scales every update by one common factor. */
static void one_step_deltas(qt_run_spec s, float *delta) {
  qt_err err;
  qt_run_t *run = NULL;
  CU_ASSERT_FATAL(qt_run_init(&s, &run, &err) == 0);
  qt_vit_t *vit = qt_model_vit(qt_run_model(run));
  size_t off = 0;
  for (size_t i = 0; i < qt_vit_tensor_count(vit); i++) {
    qt_vit_tensor t;
    qt_vit_tensor_at(vit, i, &t);
    memcpy(delta + off, t.data, t.numel * sizeof(float));
    off += t.numel;
  }
  qt_run_epoch_result r;
  CU_ASSERT_FATAL(qt_run_epoch(run, &r, &err) == 0);
  QT_ASSERT_CLOSE(r.lr, s.optim.lr, 1e-15);
  off = 0;
  for (size_t i = 0; i < qt_vit_tensor_count(vit); i++) {
    qt_vit_tensor t;
    qt_vit_tensor_at(vit, i, &t);
    for (size_t j = 0; j < t.numel; j++) delta[off + j] = t.data[j] - delta[off + j];
    off += t.numel;
  }
  qt_run_free(run);
}

static double layer_exponent(const char *name) {
  /* depth 2: stem 0, blocks.i i + 1, norm and head 3. */
  if (strncmp(name, "blocks.", 7) == 0) return 3.0 - (double)(atoi(name + 7) + 1);
  if (strncmp(name, "norm.", 5) == 0 || strncmp(name, "head.", 5) == 0) return 0.0;
  return 3.0;
}

static void test_layer_decay_and_clipping(void) {
  qt_run_spec s = base_spec();
  s.optim.kind = QT_OPTIM_KIND_SGD;
  s.optim.lr = 0.05;
  s.optim.weight_decay = 0.0;
  s.schedule.kind = QT_SCHEDULE_KIND_CONSTANT;
  s.batch_size = splits.train->n; /* one step per epoch */
  s.data_augmentation = QT_AUTO_AUGMENT_NONE;
  qt_run_t *probe = NULL;
  CU_ASSERT_FATAL(qt_run_init(&s, &probe, NULL) == 0);
  qt_vit_t *vit = qt_model_vit(qt_run_model(probe));
  size_t n = qt_vit_parameter_count(vit);
  float *plain = malloc(n * sizeof *plain), *decayed = malloc(n * sizeof *decayed),
        *clipped = malloc(n * sizeof *clipped);
  one_step_deltas(s, plain);
  s.optim.layer_decay = 0.5;
  one_step_deltas(s, decayed);
  /* Clip at half the gradients' global norm: every step halves. */
  double norm = 0.0;
  for (size_t j = 0; j < n; j++) norm += ((double)plain[j] / s.optim.lr) * (plain[j] / s.optim.lr);
  norm = sqrt(norm);
  s.optim.layer_decay = 1.0;
  s.optim.clip_grad = 0.5 * norm;
  one_step_deltas(s, clipped);

  size_t off = 0;
  double ratio = NAN;
  int checked = 0;
  for (size_t i = 0; i < qt_vit_tensor_count(vit); i++) {
    qt_vit_tensor t;
    qt_vit_tensor_at(vit, i, &t);
    double scale = pow(0.5, layer_exponent(t.name));
    for (size_t j = 0; j < t.numel; j++) {
      double a = plain[off + j];
      if (fabs(a) < 1e-5) continue; /* float cancellation dominates tiny steps */
      checked++;
      double rel = decayed[off + j] / a;
      if (fabs(rel - scale) > 2e-2 * scale) {
        fprintf(stderr, "%s[%zu]: ratio %g, expected %g\n", t.name, j, rel, scale);
        CU_FAIL("layer decay ratio");
        break;
      }
      double c = clipped[off + j] / a;
      if (isnan(ratio)) ratio = c;
      CU_ASSERT(fabs(c - ratio) <= 2e-2 * ratio);
    }
    off += t.numel;
  }
  CU_ASSERT(checked > 100);
  /* The common factor is clip / (global norm + 1e-6) of the gradients. */
  QT_ASSERT_CLOSE(ratio, 0.5 * norm / (norm + 1e-6), 1e-2);
  free(plain);
  free(decayed);
  free(clipped);
  qt_run_free(probe);
}

/* Head dropout: the backward applies the forward's mask (finite
 * differences with the same mask), and rate 0 or no stream changes nothing. */
static double dropout_loss(qt_vit_t *vit, const float *images, const int *labels, double rate,
                           uint64_t seed) {
  qt_rng_t *rng = NULL;
  qt_rng_init(&rng, seed, NULL);
  qt_vit_set_head_dropout(vit, rate, rng, NULL);
  double loss = NAN;
  if (qt_vit_forward(vit, images, 2, NULL) == 0) qt_vit_loss(vit, labels, NULL, 0.0, &loss, NULL);
  qt_vit_set_head_dropout(vit, 0.0, NULL, NULL);
  qt_rng_free(rng);
  return loss;
}

static void test_head_dropout(void) {
  qt_vit_config c = qt_vit_default_config();
  c.image_size = 8;
  c.patch_size = 4;
  c.width = 8;
  c.depth = 1;
  c.heads = 2;
  c.mlp_hidden = 16;
  c.num_classes = 3;
  qt_rng_t *rng = NULL;
  qt_rng_init(&rng, 4, NULL);
  qt_vit_t *vit = NULL;
  CU_ASSERT_FATAL(qt_vit_init(&c, 2, rng, &vit, NULL) == 0);
  float images[2 * 3 * 8 * 8];
  for (size_t i = 0; i < sizeof images / sizeof images[0]; i++)
    images[i] = (float)qt_rng_gaussian(rng, 1.0);
  const int labels[2] = {1, 2};
  double plain = dropout_loss(vit, images, labels, 0.0, 1);
  CU_ASSERT_FATAL(qt_vit_forward(vit, images, 2, NULL) == 0);
  double no_stream;
  CU_ASSERT_FATAL(qt_vit_loss(vit, labels, NULL, 0.0, &no_stream, NULL) == 0);
  CU_ASSERT_EQUAL(plain, no_stream);
  double dropped = dropout_loss(vit, images, labels, 0.5, 1);
  CU_ASSERT(dropped != plain);
  CU_ASSERT_EQUAL(qt_vit_set_head_dropout(vit, 1.0, rng, NULL), QT_EINVAL);

  /* Gradient with the mask of seed 1 against central differences. */
  qt_rng_t *mask_rng = NULL;
  qt_rng_init(&mask_rng, 1, NULL);
  qt_vit_set_head_dropout(vit, 0.5, mask_rng, NULL);
  CU_ASSERT_FATAL(qt_vit_forward(vit, images, 2, NULL) == 0);
  CU_ASSERT_FATAL(qt_vit_loss(vit, labels, NULL, 0.0, NULL, NULL) == 0);
  qt_vit_zero_grad(vit);
  CU_ASSERT_FATAL(qt_vit_backward(vit, NULL) == 0);
  qt_vit_set_head_dropout(vit, 0.0, NULL, NULL);
  qt_rng_free(mask_rng);
  const char *names[] = {"head.weight", "norm.weight", "blocks.0.mlp.fc2.weight"};
  for (int k = 0; k < 3; k++) {
    qt_vit_tensor t;
    CU_ASSERT_FATAL(qt_vit_find_tensor(vit, names[k], &t) == 0);
    for (size_t j = 0; j < t.numel; j += t.numel / 5 + 1) {
      float saved = t.data[j];
      double h = 1e-2;
      t.data[j] = saved + (float)h;
      double up = dropout_loss(vit, images, labels, 0.5, 1);
      t.data[j] = saved - (float)h;
      double down = dropout_loss(vit, images, labels, 0.5, 1);
      t.data[j] = saved;
      double fd = (up - down) / (2.0 * h);
      if (fabs(fd - t.grad[j]) > 2e-3 + 2e-2 * fabs(fd)) {
        fprintf(stderr, "%s[%zu]: analytic %g, numeric %g\n", names[k], j, t.grad[j], fd);
        CU_FAIL("dropout gradient");
      }
    }
  }
  qt_vit_free(vit);
  qt_rng_free(rng);
}

static void test_freezing(void) {
  qt_run_spec s = base_spec();
  s.pct_to_freeze = 0.5; /* depth 2: blocks.0 and the stem frozen */
  qt_err err;
  qt_run_t *run = NULL;
  CU_ASSERT_FATAL(qt_run_init(&s, &run, &err) == 0);
  qt_vit_t *vit = qt_model_vit(qt_run_model(run));
  size_t n = qt_vit_parameter_count(vit);
  float *before = malloc(n * sizeof *before);
  size_t off = 0;
  for (size_t i = 0; i < qt_vit_tensor_count(vit); i++) {
    qt_vit_tensor t;
    qt_vit_tensor_at(vit, i, &t);
    memcpy(before + off, t.data, t.numel * sizeof(float));
    off += t.numel;
  }
  qt_run_epoch_result r;
  CU_ASSERT_FATAL(qt_run_epoch(run, &r, &err) == 0);
  off = 0;
  size_t trainable_tensors = 0, trainable_params = 0;
  for (size_t i = 0; i < qt_vit_tensor_count(vit); i++) {
    qt_vit_tensor t;
    qt_vit_tensor_at(vit, i, &t);
    int frozen = strncmp(t.name, "blocks.0.", 9) == 0 || strcmp(t.name, "cls_token") == 0 ||
                 strcmp(t.name, "pos_embed") == 0 || strncmp(t.name, "patch_embed", 11) == 0;
    int changed = memcmp(before + off, t.data, t.numel * sizeof(float)) != 0;
    if (frozen && changed) fprintf(stderr, "frozen tensor %s changed\n", t.name);
    CU_ASSERT(!(frozen && changed));
    if (frozen) {
      int zero = 1;
      for (size_t j = 0; j < t.numel; j++) zero &= t.grad[j] == 0.0f;
      CU_ASSERT(zero); /* no gradient for frozen tensors */
    }
    /* Biases and norms of a trained block may stay put for an epoch only
     * by accident; weights must move. */
    if (!frozen && strstr(t.name, "weight") && !strstr(t.name, "norm")) CU_ASSERT(changed);
    if (!frozen) {
      trainable_tensors++;
      trainable_params += t.numel;
    }
    off += t.numel;
  }
  CU_ASSERT_EQUAL(r.trainable, trainable_params);
  /* The checkpoint holds the trainable tensors and their two Adam moments. */
  char path[256];
  qt_test_temp_path("frozen.safetensors", path, sizeof path);
  CU_ASSERT_FATAL(qt_run_save(run, path, &err) == 0);
  qt_safetensors_t *st = NULL;
  CU_ASSERT_FATAL(qt_safetensors_open(path, &st, &err) == 0);
  CU_ASSERT_EQUAL(qt_safetensors_count(st), 3 * trainable_tensors);
  CU_ASSERT_EQUAL(qt_safetensors_find(st, "blocks.0.attn.qkv.weight", NULL), QT_ENOENT);
  CU_ASSERT_EQUAL(qt_safetensors_find(st, "head.weight", NULL), 0);
  CU_ASSERT_STRING_EQUAL(qt_safetensors_metadata_get(st, "format"), "qtune-run");
  CU_ASSERT_STRING_EQUAL(qt_safetensors_metadata_get(st, "version"), "1");
  qt_safetensors_free(st);
  free(before);
  qt_run_free(run);
}

static void test_truncated_checkpoint(void) {
  qt_run_spec s = base_spec();
  qt_err err;
  qt_run_t *run = NULL;
  CU_ASSERT_FATAL(qt_run_init(&s, &run, &err) == 0);
  qt_run_epoch_result r;
  CU_ASSERT_FATAL(qt_run_epoch(run, &r, &err) == 0);
  char path[256];
  qt_test_temp_path("truncated.safetensors", path, sizeof path);
  CU_ASSERT_FATAL(qt_run_save(run, path, &err) == 0);
  struct stat info;
  CU_ASSERT_FATAL(stat(path, &info) == 0);
  CU_ASSERT_FATAL(truncate(path, info.st_size - 5) == 0);
  qt_run_t *loaded = (qt_run_t *)&err; /* must be reset to NULL */
  CU_ASSERT_EQUAL(qt_run_load(path, &s, &loaded, &err), QT_EFORMAT);
  CU_ASSERT_PTR_NULL(loaded);
  /* Another configuration: the fingerprint does not match. */
  qt_run_spec other = s;
  CU_ASSERT_FATAL(qt_run_save(run, path, &err) == 0);
  other.optim.lr *= 2.0;
  CU_ASSERT_EQUAL(qt_run_load(path, &other, &loaded, &err), QT_ESCHEMA);
  CU_ASSERT_PTR_NULL(loaded);
  /* Not a run checkpoint: the pretrained weights. */
  CU_ASSERT_EQUAL(qt_run_load(checkpoint_path, &s, &loaded, &err), QT_EVERSION);
  qt_run_free(run);
}

static void test_divergence(void) {
  qt_run_spec s = base_spec();
  s.optim.kind = QT_OPTIM_KIND_SGD;
  s.optim.lr = 1e30;
  s.schedule.kind = QT_SCHEDULE_KIND_CONSTANT;
  qt_err err;
  qt_run_t *run = NULL;
  CU_ASSERT_FATAL(qt_run_init(&s, &run, &err) == 0);
  char path[256];
  qt_test_temp_path("diverge.safetensors", path, sizeof path);
  CU_ASSERT_FATAL(qt_run_save(run, path, &err) == 0);
  struct stat before, after;
  CU_ASSERT_FATAL(stat(path, &before) == 0);
  qt_run_epoch_result r;
  int diverged = 0;
  for (int e = 0; e < 3 && !diverged; e++) {
    CU_ASSERT_FATAL(qt_run_epoch(run, &r, &err) == 0);
    diverged = r.status == QT_RUN_STATUS_DIVERGED;
  }
  CU_ASSERT_FATAL(diverged);
  CU_ASSERT_EQUAL(qt_run_epoch(run, &r, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_run_save(run, path, &err), QT_EINVAL);
  CU_ASSERT_FATAL(stat(path, &after) == 0);
  CU_ASSERT_EQUAL(before.st_size, after.st_size);
  CU_ASSERT_EQUAL(before.st_mtime, after.st_mtime);
  qt_run_free(run);
}

static void test_learns(void) {
  /* Sanity: full fine-tuning of the random ViT separates the patterns. */
  qt_run_spec s = base_spec();
  s.optim.lr = 1e-2;
  s.epochs = 8;
  s.smoothing = 0.0;
  s.data_augmentation = QT_AUTO_AUGMENT_NONE;
  qt_err err;
  qt_run_t *run = NULL;
  CU_ASSERT_FATAL(qt_run_init(&s, &run, &err) == 0);
  qt_run_epoch_result first, r;
  CU_ASSERT_FATAL(qt_run_epoch(run, &first, &err) == 0);
  for (int e = 1; e < 8; e++) CU_ASSERT_FATAL(qt_run_epoch(run, &r, &err) == 0);
  CU_ASSERT(r.train_loss < first.train_loss);
  CU_ASSERT(isnan(r.top5)); /* 3 classes */
  /* No test split in the fixture: NaN, no error. */
  double t1, t5, tl;
  CU_ASSERT_EQUAL(qt_run_evaluate_test(run, &t1, &t5, &tl, &err), 0);
  CU_ASSERT(isnan(t1) && isnan(t5) && isnan(tl));
  qt_run_free(run);
}

/* crop_scale and hflip reach the training transform; bad values are
 * refused at init. */
static void test_transform_knobs(void) {
  qt_run_spec s = base_spec(), t = base_spec();
  t.crop_scale = 1.0;
  t.hflip = 0.0;
  qt_err err;
  qt_run_t *a = NULL, *b = NULL;
  CU_ASSERT_FATAL(qt_run_init(&s, &a, &err) == 0);
  CU_ASSERT_FATAL(qt_run_init(&t, &b, &err) == 0);
  qt_run_epoch_result ra, rb;
  CU_ASSERT_FATAL(qt_run_epoch(a, &ra, &err) == 0);
  CU_ASSERT_FATAL(qt_run_epoch(b, &rb, &err) == 0);
  CU_ASSERT(ra.train_loss != rb.train_loss);
  qt_run_free(a);
  qt_run_free(b);
  t.crop_scale = 0.0;
  CU_ASSERT_EQUAL(qt_run_init(&t, &b, &err), QT_EINVAL);
  t.crop_scale = 0.5;
  t.hflip = 1.5;
  CU_ASSERT_EQUAL(qt_run_init(&t, &b, &err), QT_EINVAL);
}

/* ------------------------------------------------------------------------- */
/* Methods toward theta0: L2-SP, SPD, SFA inside runs                          */
/* ------------------------------------------------------------------------- */

/* Save/load/continue equals an uninterrupted run with the methods on; with
 * linear probing, tensors become trainable after a resume, so theta0 must
 * come from the pretrained file (and the head's from the seed), never from
 * the checkpoint. */
static void test_resume_methods(void) {
  qt_run_spec s = base_spec();
  s.optim.kind = QT_OPTIM_KIND_ADAMW;
  s.optim.decay = QT_DECAY_KIND_L2SP;
  s.optim.weight_decay = 0.05;
  s.optim.sp_reg = 0.01;
  s.optim.clip_grad = 0.5;
  s.sfa = 1;
  s.sfa_p = 0.2; /* K = 4 of T = 20: averages inside epochs */
  s.sfa_beta = 0.3;
  s.pct_to_freeze = 0.5;
  s.linear_probing = 1;
  s.mixup = 0.4;
  check_resume(s);

  qt_run_spec spd = base_spec();
  spd.optim.kind = QT_OPTIM_KIND_ADAM;
  spd.optim.decay = QT_DECAY_KIND_SPD;
  spd.optim.weight_decay = 0.8;
  spd.linear_probing = 1;
  check_resume(spd);
  spd.optim.kind = QT_OPTIM_KIND_MOMENTUM;
  spd.optim.lr = 0.01;
  spd.sfa = 1;
  spd.linear_probing = 0;
  check_resume(spd);

  /* The checkpoint holds no copy of theta0: tensors and Adam moments only. */
  qt_err err;
  qt_run_t *run = NULL;
  spd.optim.kind = QT_OPTIM_KIND_ADAM;
  CU_ASSERT_FATAL(qt_run_init(&spd, &run, &err) == 0);
  qt_run_epoch_result r;
  CU_ASSERT_FATAL(qt_run_epoch(run, &r, &err) == 0);
  char path[256];
  qt_test_temp_path("spd.safetensors", path, sizeof path);
  CU_ASSERT_FATAL(qt_run_save(run, path, &err) == 0);
  qt_safetensors_t *st = NULL;
  CU_ASSERT_FATAL(qt_safetensors_open(path, &st, &err) == 0);
  CU_ASSERT_EQUAL(qt_safetensors_count(st),
                  3 * qt_vit_tensor_count(qt_model_vit(qt_run_model(run))));
  qt_safetensors_free(st);
  /* Another decay kind: another fingerprint. */
  qt_run_spec other = spd;
  other.optim.decay = QT_DECAY_KIND_L2SP;
  qt_run_t *loaded = NULL;
  CU_ASSERT_EQUAL(qt_run_load(path, &other, &loaded, &err), QT_ESCHEMA);
  qt_run_free(run);
}

/* L2 distance of every tensor but the head between two runs' models. */
static double backbone_distance(qt_run_t *a, qt_run_t *b) {
  qt_vit_t *va = qt_model_vit(qt_run_model(a)), *vb = qt_model_vit(qt_run_model(b));
  double sum = 0.0;
  for (size_t i = 0; i < qt_vit_tensor_count(va); i++) {
    qt_vit_tensor ta, tb;
    qt_vit_tensor_at(va, i, &ta);
    qt_vit_tensor_at(vb, i, &tb);
    if (strncmp(ta.name, "head.", 5) == 0) continue;
    for (size_t j = 0; j < ta.numel; j++) {
      double d = (double)ta.data[j] - (double)tb.data[j];
      sum += d * d;
    }
  }
  return sqrt(sum);
}

/* Runs `epochs` epochs of spec; the caller frees the run. */
static qt_run_t *run_epochs(const qt_run_spec *spec, int epochs) {
  qt_err err;
  qt_run_t *run = NULL;
  CU_ASSERT_FATAL(qt_run_init(spec, &run, &err) == 0);
  for (int e = 0; e < epochs; e++) {
    qt_run_epoch_result r;
    CU_ASSERT_FATAL(qt_run_epoch(run, &r, &err) == 0);
    CU_ASSERT_FATAL(r.status == QT_RUN_STATUS_OK);
  }
  return run;
}

static void test_decay_methods_in_run(void) {
  qt_run_spec s = base_spec();
  s.optim.kind = QT_OPTIM_KIND_SGD;
  s.optim.lr = 0.05;
  s.optim.decay = QT_DECAY_KIND_NONE;
  s.schedule.kind = QT_SCHEDULE_KIND_CONSTANT;
  qt_run_t *pre = run_epochs(&s, 0), *plain = run_epochs(&s, 2);
  /* L2-SP with 2 lr c = 0.5 pulls the backbone back by half of its
   * deviation every step: it ends much closer to the pretrained weights. */
  qt_run_spec l2 = s;
  l2.optim.decay = QT_DECAY_KIND_L2SP;
  l2.optim.weight_decay = 5.0;
  qt_run_t *pulled = run_epochs(&l2, 2);
  double d_plain = backbone_distance(plain, pre), d_l2 = backbone_distance(pulled, pre);
  CU_ASSERT(d_plain > 0.0);
  CU_ASSERT(d_l2 < 0.5 * d_plain);
  /* Quick-Tune's sp_reg is the same term. */
  qt_run_spec sp = s;
  sp.optim.sp_reg = 5.0;
  qt_run_t *sp_run = run_epochs(&sp, 2);
  CU_ASSERT(same_params(sp_run, pulled));
  /* Plain decay toward 0 is not L2-SP. */
  qt_run_spec wd = s;
  wd.optim.decay = QT_DECAY_KIND_WEIGHT_DECAY;
  wd.optim.weight_decay = 5.0;
  qt_run_t *wd_run = run_epochs(&wd, 2);
  CU_ASSERT(backbone_distance(wd_run, pulled) > 0.0);
  qt_run_free(sp_run);
  qt_run_free(wd_run);
  qt_run_free(pulled);
  qt_run_free(plain);

  /* SPD with lambda 0 is the plain optimizer without decay, bit for bit;
   * with lambda 1 it changes the run and keeps it closer to theta0. */
  s.optim.kind = QT_OPTIM_KIND_ADAM;
  s.optim.lr = 1e-2;
  qt_run_t *adam = run_epochs(&s, 2);
  qt_run_spec spd = s;
  spd.optim.decay = QT_DECAY_KIND_SPD;
  spd.optim.weight_decay = 0.0;
  qt_run_t *spd0 = run_epochs(&spd, 2);
  CU_ASSERT(same_params(spd0, adam));
  spd.optim.weight_decay = 1.0;
  qt_run_t *spd1 = run_epochs(&spd, 2);
  CU_ASSERT(backbone_distance(spd1, adam) > 0.0);
  CU_ASSERT(backbone_distance(spd1, pre) < backbone_distance(adam, pre));
  qt_run_free(spd0);
  qt_run_free(spd1);
  qt_run_free(adam);
  qt_run_free(pre);
}

/* SFA with beta 1 puts the backbone back on theta0 exactly at the steps
 * where it averages: with 5 batches per epoch (27 training images, batch
 * 6) and 4 epochs, T = 20. */
static void test_sfa_in_run(void) {
  qt_run_spec s = base_spec();
  s.sfa = 1;
  s.sfa_beta = 1.0;
  qt_run_t *pre = run_epochs(&s, 0);
  const double ps[3] = {0.25, 0.2, 1.0}; /* K = 5 (every epoch end), 4, 20 (the end only) */
  for (int k = 0; k < 3; k++) {
    s.sfa_p = ps[k];
    qt_err err;
    qt_run_t *run = NULL;
    CU_ASSERT_FATAL(qt_run_init(&s, &run, &err) == 0);
    for (int e = 1; e <= 4; e++) {
      qt_run_epoch_result r;
      CU_ASSERT_FATAL(qt_run_epoch(run, &r, &err) == 0);
      int at_theta0 = backbone_distance(run, pre) == 0.0;
      int want = k == 0 || e == 4;
      if (at_theta0 != want)
        fprintf(stderr, "sfa_p %g epoch %d: at theta0 %d\n", ps[k], e, at_theta0);
      CU_ASSERT_EQUAL(at_theta0, want);
    }
    /* The head is not averaged (it has no pretrained value). */
    qt_vit_tensor h0, h1;
    qt_vit_t *vp = qt_model_vit(qt_run_model(pre)), *vr = qt_model_vit(qt_run_model(run));
    qt_vit_tensor_at(vp, qt_vit_tensor_count(vp) - 2, &h0);
    qt_vit_tensor_at(vr, qt_vit_tensor_count(vr) - 2, &h1);
    CU_ASSERT_STRING_EQUAL(h1.name, "head.weight");
    CU_ASSERT(memcmp(h0.data, h1.data, h0.numel * sizeof(float)) != 0);
    qt_run_free(run);
  }
  /* beta 0 averages to the same values: the run equals one without SFA bit
   * for bit, so averaging touches nothing else (the optimizer state is
   * kept). */
  s.sfa_beta = 0.0;
  s.sfa_p = 0.05;
  qt_run_t *avg = run_epochs(&s, 2);
  s.sfa = 0;
  qt_run_t *none = run_epochs(&s, 2);
  CU_ASSERT(same_params(avg, none));
  qt_run_free(avg);
  qt_run_free(none);
  qt_run_free(pre);
}

/* LoRA in a run: B starts at zero (the model starts as the pretrained one),
 * only the adapters and the head train, the merged weight is W0 + (alpha /
 * r) B A with A and B as the checkpoint stores them, and save/resume is bit
 * for bit with SPD, SFA, clipping, layer decay, freezing and probing. */
static void test_lora_in_run(void) {
  qt_run_spec s = base_spec();
  s.adapter = QT_ADAPTER_KIND_LORA;
  s.adapter_rank = 2;
  s.adapter_alpha = 4.0; /* scale 2 */
  s.optim.lr = 1e-2;
  qt_run_spec plain = base_spec();
  qt_run_t *pre = run_epochs(&plain, 0);
  qt_err err;
  qt_run_t *run = NULL;
  CU_ASSERT_FATAL(qt_run_init(&s, &run, &err) == 0);
  /* Before training: the same weights as the plain model (B = 0). */
  CU_ASSERT(same_params(run, pre));
  char path[256];
  qt_test_temp_path("lora.safetensors", path, sizeof path);
  CU_ASSERT_FATAL(qt_run_save(run, path, &err) == 0);
  qt_safetensors_t *st = NULL;
  CU_ASSERT_FATAL(qt_safetensors_open(path, &st, &err) == 0);
  /* depth 2 x (qkv, proj, fc1, fc2) x (A, B) + the head's two. */
  CU_ASSERT_EQUAL(qt_safetensors_count(st), 2 * 4 * 2 + 2);
  float b0[16 * 2], a0[2 * 8];
  CU_ASSERT_EQUAL(qt_safetensors_read_f32(st, "blocks.1.mlp.fc1.lora_B.weight", b0, 32, &err), 0);
  CU_ASSERT_EQUAL(qt_safetensors_read_f32(st, "blocks.1.mlp.fc1.lora_A.weight", a0, 16, &err), 0);
  int zero = 1, a_ok = 1;
  for (int i = 0; i < 32; i++) zero &= b0[i] == 0.0f;
  for (int i = 0; i < 16; i++) a_ok &= a0[i] != 0.0f && fabsf(a0[i]) <= 1.0f / sqrtf(8.0f);
  CU_ASSERT(zero);
  CU_ASSERT(a_ok);
  CU_ASSERT_EQUAL(qt_safetensors_find(st, "blocks.1.mlp.fc1.weight", NULL), QT_ENOENT);
  qt_safetensors_free(st);

  qt_run_epoch_result r;
  CU_ASSERT_FATAL(qt_run_epoch(run, &r, &err) == 0);
  /* Trainable: r (in + out) per adapted weight, the head 3 x 8 + 3. */
  size_t per_block = 2 * (24 + 8) + 2 * (8 + 8) + 2 * (16 + 8) + 2 * (8 + 16);
  CU_ASSERT_EQUAL(r.trainable, 2 * per_block + 27);
  CU_ASSERT_FATAL(qt_run_save(run, path, &err) == 0);
  CU_ASSERT_FATAL(qt_safetensors_open(path, &st, &err) == 0);
  qt_vit_t *vr = qt_model_vit(qt_run_model(run)), *vp = qt_model_vit(qt_run_model(pre));
  size_t adapted = 0;
  for (size_t i = 0; i < qt_vit_tensor_count(vr); i++) {
    qt_vit_tensor t, t0;
    qt_vit_tensor_at(vr, i, &t);
    qt_vit_tensor_at(vp, i, &t0);
    if (strncmp(t.name, "head.", 5) == 0) continue;
    const char *tail = strrchr(t.name, '.');
    int is_adapted = strncmp(t.name, "blocks.", 7) == 0 && strcmp(tail, ".weight") == 0 &&
                     (strstr(t.name, ".qkv.") || strstr(t.name, ".proj.") ||
                      strstr(t.name, ".fc1.") || strstr(t.name, ".fc2."));
    int changed = memcmp(t.data, t0.data, t.numel * sizeof(float)) != 0;
    if (!is_adapted) {
      if (changed) fprintf(stderr, "%s changed in a LoRA run\n", t.name);
      CU_ASSERT(!changed); /* biases, norms, stem: frozen */
      continue;
    }
    CU_ASSERT(changed);
    adapted++;
    /* W = W0 + 2 B A, from the stored adapters, in double. */
    char name[256];
    size_t out = t.shape[0], in = t.shape[1];
    float *a = malloc(2 * in * sizeof *a), *b = malloc(out * 2 * sizeof *b);
    snprintf(name, sizeof name, "%.*s.lora_A.weight", (int)(strlen(t.name) - 7), t.name);
    CU_ASSERT_FATAL(qt_safetensors_read_f32(st, name, a, 2 * in, &err) == 0);
    snprintf(name, sizeof name, "%.*s.lora_B.weight", (int)(strlen(t.name) - 7), t.name);
    CU_ASSERT_FATAL(qt_safetensors_read_f32(st, name, b, out * 2, &err) == 0);
    double worst = 0.0;
    for (size_t o = 0; o < out; o++) {
      for (size_t k = 0; k < in; k++) {
        double want = (double)t0.data[o * in + k] +
                      2.0 * ((double)b[o * 2] * a[k] + (double)b[o * 2 + 1] * a[in + k]);
        double d = fabs(want - (double)t.data[o * in + k]);
        if (d > worst) worst = d;
      }
    }
    CU_ASSERT(worst < 1e-6);
    free(a);
    free(b);
  }
  CU_ASSERT_EQUAL(adapted, 8);
  qt_safetensors_free(st);
  qt_run_free(run);
  qt_run_free(pre);

  /* Resume, bit for bit, with the other methods on. */
  s.optim.kind = QT_OPTIM_KIND_ADAM;
  s.optim.decay = QT_DECAY_KIND_SPD;
  s.optim.weight_decay = 0.5;
  s.optim.clip_grad = 0.5;
  s.optim.layer_decay = 0.75;
  s.sfa = 1;
  s.sfa_p = 0.2;
  s.sfa_beta = 0.3;
  s.pct_to_freeze = 0.5;
  s.linear_probing = 1;
  check_resume(s);
  s.optim.kind = QT_OPTIM_KIND_ADAMW;
  s.optim.decay = QT_DECAY_KIND_L2SP;
  s.adapter_attention_only = 1;
  s.linear_probing = 0;
  s.pct_to_freeze = 0.0;
  check_resume(s);
}

static long head_steps(qt_run_t *run);

/* sigma_2 / sigma_1 of W - W0 for tensor `name` (double SVD). */
static double second_singular_ratio(qt_run_t *run, qt_run_t *pre, const char *name) {
  qt_vit_t *v = qt_model_vit(qt_run_model(run)), *v0 = qt_model_vit(qt_run_model(pre));
  for (size_t i = 0; i < qt_vit_tensor_count(v); i++) {
    qt_vit_tensor t, t0;
    qt_vit_tensor_at(v, i, &t);
    qt_vit_tensor_at(v0, i, &t0);
    if (strcmp(t.name, name) != 0) continue;
    size_t m = t.shape[0], n = t.shape[1], k = m < n ? m : n;
    double *d = malloc(m * n * sizeof *d), *sv = malloc(k * sizeof *sv),
           *sup = malloc(k * sizeof *sup);
    for (size_t j = 0; j < m * n; j++) d[j] = (double)t.data[j] - (double)t0.data[j];
    lapack_int info = LAPACKE_dgesvd(LAPACK_ROW_MAJOR, 'N', 'N', (lapack_int)m, (lapack_int)n, d,
                                     (lapack_int)n, sv, NULL, 1, NULL, 1, sup);
    double ratio = info == 0 && sv[0] > 0.0 ? sv[1] / sv[0] : -1.0;
    free(d);
    free(sv);
    free(sup);
    return ratio;
  }
  return -1.0;
}

/* ROSA: resampled every epoch, so after a few epochs the update of a layer
 * leaves every fixed rank-r subspace, while LoRA's stays rank r; only the
 * adapted weights and the head move; checkpoints hold the merged weights
 * and no adapter state; save/resume is bit for bit. */
static void test_rosa_in_run(void) {
  qt_run_spec s = base_spec();
  s.adapter = QT_ADAPTER_KIND_ROSA;
  s.adapter_rank = 1;
  s.optim.lr = 1e-2;
  qt_run_spec lora = s;
  lora.adapter = QT_ADAPTER_KIND_LORA;
  qt_run_spec plain = base_spec();
  qt_run_t *pre = run_epochs(&plain, 0);
  qt_run_t *rosa_run = run_epochs(&s, 3), *lora_run = run_epochs(&lora, 3);
  const char *layers[2] = {"blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight"};
  for (int k = 0; k < 2; k++) {
    double r_rosa = second_singular_ratio(rosa_run, pre, layers[k]);
    double r_lora = second_singular_ratio(lora_run, pre, layers[k]);
    if (!(r_rosa > 1e-2) || !(r_lora >= 0.0 && r_lora < 1e-3))
      fprintf(stderr, "%s: sigma2/sigma1 rosa %g lora %g\n", layers[k], r_rosa, r_lora);
    CU_ASSERT(r_rosa > 1e-2);
    CU_ASSERT(r_lora >= 0.0 && r_lora < 1e-3);
  }
  qt_vit_t *vr = qt_model_vit(qt_run_model(rosa_run)), *vp = qt_model_vit(qt_run_model(pre));
  for (size_t i = 0; i < qt_vit_tensor_count(vr); i++) {
    qt_vit_tensor t, t0;
    qt_vit_tensor_at(vr, i, &t);
    qt_vit_tensor_at(vp, i, &t0);
    int adapted =
        strncmp(t.name, "blocks.", 7) == 0 && strstr(t.name, ".weight") && !strstr(t.name, "norm");
    int changed = memcmp(t.data, t0.data, t.numel * sizeof(float)) != 0;
    int should = strncmp(t.name, "head.", 5) == 0 || adapted;
    if (changed != should) fprintf(stderr, "rosa: %s changed %d\n", t.name, changed);
    CU_ASSERT_EQUAL(changed, should);
  }
  /* The optimizer is rebuilt every epoch: 5 steps since the last resample,
   * where LoRA counts all 15. */
  CU_ASSERT_EQUAL(head_steps(rosa_run), 5);
  CU_ASSERT_EQUAL(head_steps(lora_run), 15);
  qt_err err;
  char path[256];
  qt_test_temp_path("rosa.safetensors", path, sizeof path);
  CU_ASSERT_FATAL(qt_run_save(rosa_run, path, &err) == 0);
  qt_safetensors_t *st = NULL;
  CU_ASSERT_FATAL(qt_safetensors_open(path, &st, &err) == 0);
  /* 8 merged weights + the head with its two Adam moments. */
  CU_ASSERT_EQUAL(qt_safetensors_count(st), 8 + 2 * 3);
  CU_ASSERT_EQUAL(qt_safetensors_find(st, "blocks.0.attn.qkv.weight", NULL), 0);
  CU_ASSERT_EQUAL(qt_safetensors_find(st, "blocks.0.attn.qkv.lora_A.weight", NULL), QT_ENOENT);
  CU_ASSERT_EQUAL(qt_safetensors_find(st, "optim.exp_avg.blocks.0.attn.qkv.weight", NULL),
                  QT_ENOENT);
  qt_safetensors_free(st);
  qt_run_free(rosa_run);
  qt_run_free(lora_run);
  qt_run_free(pre);

  s.adapter_rank = 2;
  s.optim.clip_grad = 0.5;
  s.sfa = 1;
  s.sfa_p = 0.2;
  s.pct_to_freeze = 0.5;
  s.linear_probing = 1;
  check_resume(s);
  s.optim.kind = QT_OPTIM_KIND_ADAM;
  s.optim.decay = QT_DECAY_KIND_SPD;
  s.optim.weight_decay = 0.5;
  s.adapter_attention_only = 1;
  s.linear_probing = 0;
  check_resume(s);
}

/* GOODFIT [RECON]. */
static int stop_after_one(void *user) {
  return (*(int *)user)++ >= 1;
}

static long head_steps(qt_run_t *run) {
  qt_err err;
  char path[256];
  qt_test_temp_path("goodfit.safetensors", path, sizeof path);
  CU_ASSERT_FATAL(qt_run_save(run, path, &err) == 0);
  qt_safetensors_t *st = NULL;
  CU_ASSERT_FATAL(qt_safetensors_open(path, &st, &err) == 0);
  const char *v = qt_safetensors_metadata_get(st, "optim.step.head.weight");
  long steps = v ? atol(v) : -1;
  qt_safetensors_free(st);
  return steps;
}

static void test_goodfit_in_run(void) {
  qt_run_spec s = base_spec();
  s.goodfit = 1;
  s.goodfit_main = QT_OPTIM_KIND_SGD;
  s.optim.decay = QT_DECAY_KIND_NONE;
  s.optim.lr = 0.05;
  s.goodfit_lr_ref_ratio = 1.0;
  /* 5 batches an epoch: cycles of n_ref + 1 batches, one update each. */
  const long n_ref[4] = {1, 2, 4, 5}, updates[4] = {2, 1, 1, 0};
  qt_run_t *pre = run_epochs(&s, 0);
  for (int k = 0; k < 4; k++) {
    s.goodfit_n_ref = n_ref[k];
    qt_run_t *run = run_epochs(&s, 1);
    CU_ASSERT_EQUAL(head_steps(run), updates[k]);
    /* No complete cycle: the reference steps are undone. */
    if (updates[k] == 0) CU_ASSERT(same_params(run, pre));
    qt_run_free(run);
  }
  qt_run_free(pre);

  /* Two batches (14 + 13 images), n_ref 1: one update per epoch. The
   * displacement delta is one plain SGD step on the first batch (a plain
   * run stopped before its second batch); the update of every tensor must
   * be orthogonal to delta where GOODFIT projected (<g, delta> < 0) and
   * have <update, delta> <= 0 where it did not. */
  s.batch_size = 14;
  s.goodfit_n_ref = 1;
  s.data_augmentation = QT_AUTO_AUGMENT_NONE;
  s.smoothing = 0.0;
  pre = run_epochs(&s, 0);
  qt_run_t *gf = run_epochs(&s, 1);
  CU_ASSERT_EQUAL(head_steps(gf), 1);
  qt_run_spec plain = s;
  plain.goodfit = 0;
  plain.optim.kind = QT_OPTIM_KIND_SGD;
  qt_err err;
  qt_run_t *ref = NULL;
  CU_ASSERT_FATAL(qt_run_init(&plain, &ref, &err) == 0);
  int calls = 0;
  qt_run_set_stop(ref, stop_after_one, &calls);
  qt_run_epoch_result r;
  CU_ASSERT_FATAL(qt_run_epoch(ref, &r, &err) == 0);
  CU_ASSERT_EQUAL(r.status, QT_RUN_STATUS_STOPPED);
  qt_vit_t *v0 = qt_model_vit(qt_run_model(pre)), *v1 = qt_model_vit(qt_run_model(gf)),
           *vd = qt_model_vit(qt_run_model(ref));
  int orthogonal = 0, against = 0, tensors = 0;
  for (size_t i = 0; i < qt_vit_tensor_count(v0); i++) {
    qt_vit_tensor t0, t1, td;
    qt_vit_tensor_at(v0, i, &t0);
    qt_vit_tensor_at(v1, i, &t1);
    qt_vit_tensor_at(vd, i, &td);
    double dot = 0.0, nu = 0.0, nd = 0.0;
    for (size_t j = 0; j < t0.numel; j++) {
      double u = (double)t1.data[j] - t0.data[j], d = (double)td.data[j] - t0.data[j];
      dot += u * d;
      nu += u * u;
      nd += d * d;
    }
    if (nu == 0.0 || nd == 0.0) continue;
    double cosine = dot / sqrt(nu * nd);
    tensors++;
    if (cosine > 1e-3) fprintf(stderr, "goodfit: %s cos %g\n", t0.name, cosine);
    CU_ASSERT(cosine <= 1e-3);
    orthogonal += fabs(cosine) <= 1e-3;
    against += cosine < -0.1;
  }
  /* Both branches occur (the projection is conditional): here the weights
   * of qkv, proj and the last fc2 are projected, most biases are not. */
  CU_ASSERT(tensors > 10);
  CU_ASSERT(orthogonal >= 3);
  CU_ASSERT(against >= 3);
  qt_run_free(ref);
  qt_run_free(gf);
  qt_run_free(pre);

  /* Resume, bit for bit, with the other methods around it. */
  qt_run_spec g = base_spec();
  g.goodfit = 1;
  g.goodfit_main = QT_OPTIM_KIND_ADAMW;
  g.goodfit_n_ref = 2; /* cycles of 3 in 5 batches: one dropped each epoch */
  g.goodfit_lr_ref_ratio = 2.0;
  g.optim.clip_grad = 0.5;
  g.optim.layer_decay = 0.75;
  g.sfa = 1;
  g.sfa_p = 0.5;
  g.linear_probing = 1;
  g.pct_to_freeze = 0.5;
  check_resume(g);
  g.goodfit_main = QT_OPTIM_KIND_ADAM;
  g.optim.decay = QT_DECAY_KIND_SPD;
  g.optim.weight_decay = 0.5;
  g.goodfit_n_ref = 1;
  check_resume(g);
  /* Not with adapters yet. */
  g.adapter = QT_ADAPTER_KIND_LORA;
  CU_ASSERT_EQUAL(qt_run_init(&g, &ref, &err), QT_ENOTIMPL);
}

static void cleanup(void) {
  qt_data_splits_free(&splits);
}

static void test_cleanup(void) {
  cleanup();
}

static const qt_test_case cases[] = {
    {"optim_sgd_momentum", test_optim_sgd_momentum},
    {"optim_adam_coupled_vs_adamw", test_optim_adam_coupled_vs_adamw},
    {"schedules", test_schedules},
    {"spec_set", test_spec_set},
    {"resume_adamw_freeze_probe", test_resume_adamw_freeze_probe},
    {"resume_momentum_plateau", test_resume_momentum_plateau},
    {"backward_from", test_backward_from},
    {"layer_decay_and_clipping", test_layer_decay_and_clipping},
    {"head_dropout", test_head_dropout},
    {"freezing", test_freezing},
    {"truncated_checkpoint", test_truncated_checkpoint},
    {"divergence", test_divergence},
    {"learns", test_learns},
    {"transform_knobs", test_transform_knobs},
    {"resume_methods", test_resume_methods},
    {"decay_methods_in_run", test_decay_methods_in_run},
    {"sfa_in_run", test_sfa_in_run},
    {"lora_in_run", test_lora_in_run},
    {"goodfit_in_run", test_goodfit_in_run},
    {"rosa_in_run", test_rosa_in_run},
    {"cleanup", test_cleanup},
    {NULL, NULL}};

QT_TEST_MAIN("run", cases)

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
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "finetune/qt_finetune.h"
#include "qt_test.h"

/* ------------------------------------------------------------------------- */
/* Fixtures                                                                   */
/* ------------------------------------------------------------------------- */

static qt_dataset *make_patterns(size_t per_class, uint64_t seed) {
  const size_t classes = 3, side = 8, ch = 3;
  qt_dataset *ds = calloc(1, sizeof *ds);
  size_t n = classes * per_class;
  ds->kind = QT_DATASET_KIND_IMAGE;
  ds->n = n;
  ds->height = ds->width = side;
  ds->channels = ch;
  ds->images = malloc(n * side * side * ch);
  ds->labels = malloc(n * sizeof *ds->labels);
  ds->n_classes = classes;
  ds->class_names = calloc(classes, sizeof *ds->class_names);
  const char *names[] = {"hstripes", "vstripes", "checker"};
  for (size_t k = 0; k < classes; k++) ds->class_names[k] = strdup(names[k]);
  ds->source = strdup("patterns");
  qt_rng_t *rng = NULL;
  qt_rng_init(&rng, seed, NULL);
  for (size_t i = 0; i < n; i++) {
    int label = (int)(i % classes);
    ds->labels[i] = label;
    uint8_t *img = ds->images + i * side * side * ch;
    for (size_t y = 0; y < side; y++) {
      for (size_t x = 0; x < side; x++) {
        int on = label == 0 ? (int)(y / 2 % 2) : label == 1 ? (int)(x / 2 % 2) : (int)((x + y) % 2);
        for (size_t c = 0; c < ch; c++) {
          double v = (on ? 200.0 : 50.0) + 40.0 * (qt_rng_uniform(rng) - 0.5);
          img[(y * side + x) * ch + c] = (uint8_t)v;
        }
      }
    }
  }
  qt_rng_free(rng);
  return ds;
}

static qt_data_splits splits;
static char checkpoint_path[256];

static void make_fixture(void) {
  if (splits.train) return;
  qt_dataset *all = make_patterns(12, 7);
  CU_ASSERT_FATAL(qt_dataset_split(all, 0.25, 0.0, 3, &splits.train, &splits.val, NULL, NULL) ==
                  0);
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
  QT_ASSERT_CLOSE(s.optim.weight_decay, 0.0, 0.0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "sched", "None", &err), 0);
  CU_ASSERT_EQUAL(s.schedule.kind, QT_SCHEDULE_KIND_NONE);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "batch_size", "16", &err), 0);
  CU_ASSERT_EQUAL(s.batch_size, 16);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "linear_probing", "True", &err), 0);
  CU_ASSERT_EQUAL(s.linear_probing, 1);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "opt", "goodfit", &err), QT_ENOTIMPL);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "decay", "l2sp", &err), QT_ENOTIMPL);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "bogus", "1", &err), QT_ENOENT);
  /* Quick-Tune's space: regularizers at 0 are fine, others not yet. */
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "sp_reg", "0", &err), 0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "sp_reg", "0.01", &err), QT_ENOTIMPL);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "amp", "True", &err), 0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "stoch_norm", "True", &err), QT_ENOTIMPL);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "clip_grad", "None", &err), 0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "layer_decay", "0.65", &err), 0);
  QT_ASSERT_CLOSE(s.optim.layer_decay, 0.65, 1e-15);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "opt", "adamp", &err), QT_ENOTIMPL);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "lr", "fast", &err), QT_EINVAL);
}

/* ------------------------------------------------------------------------- */
/* Runs                                                                       */
/* ------------------------------------------------------------------------- */

static int same_params(qt_run_t *a, qt_run_t *b) {
  qt_vit_t *va = qt_run_model(a), *vb = qt_run_model(b);
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
  qt_vit_t *vit = qt_run_model(run);
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
  qt_vit_t *vit = qt_run_model(probe);
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
  qt_vit_t *vit = qt_run_model(run);
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

static void cleanup(void) {
  qt_data_splits_free(&splits);
}

static void test_cleanup(void) { cleanup(); }

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
    {"cleanup", test_cleanup},
    {NULL, NULL}};

QT_TEST_MAIN("run", cases)

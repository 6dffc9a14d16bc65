/*
 * qt_test_vit_backend.h - whole ViT training steps on a backend against the
 * CPU: two models drawn from one seed, one moved to the backend, trained
 * side by side on the same batches (forward, loss, backward, AdamW), with
 * the losses, logits, gradients and parameters compared; and checkpoints
 * saved on one backend and resumed on the other. Shared by test_vit_backend
 * (the fake device of qt_test_fake_device.h: every number must be equal)
 * and test_gpu_vit_backend (CUDA: within the tolerances below, or within
 * NOISE_FACTOR times the CPU's own rounding noise where that is larger: a
 * few more models, the noise twins of qt_test_gpu.h). With tolerances, each
 * step starts the backend's model (and the twins) from the CPU's weights, and
 * AdamW from the CPU's gradients, as in qt_test_cnn_backend.h and for its
 * reasons; the moments are the model's own, on each side.
 *
 * Include after qt_test.h, qt_test_gpu.h (for CHECK_RC, E, make_rng,
 * host_random and parity_error), finetune/qt_finetune.h and
 * finetune/qt_finetune_internal.h.
 */
#ifndef QT_TEST_VIT_BACKEND_H
#define QT_TEST_VIT_BACKEND_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How close the backend must come to the CPU. All zero: bit for bit. */
typedef struct vit_tolerance {
  double loss;   /* |loss - cpu| / |cpu|, plus the logits' allowance (expect_loss) */
  double arrays; /* parity_error of the logits and of every gradient */
  /* Parameters after AdamW: the fraction of values further than 1e-3 * lr
   * from the CPU's (a value a few units of rounding from the CPU's is not a
   * failure, many are). */
  double params_off;
  /* > 0: the relative perturbation of the noise twins' weights and images
   * (one unit of the backend's rounding); 0: no twin, the fixed tolerances
   * alone. */
  double noise;
} vit_tolerance;

typedef struct vit_case {
  const char *name;
  qt_vit_config config;
  size_t max_batch, batch;
  int soft;           /* soft targets instead of labels */
  double smoothing;   /* with labels */
  long backward_from; /* blocks below it frozen (qt_vit_set_backward_from) */
  int steps;
  double drop; /* head dropout rate (the two models draw the same masks) */
} vit_case;

/* A small ViT: 8 px images of 4 px patches (5 tokens), width 16, 2 heads,
 * depth 2, 5 classes. */
static inline qt_vit_config vit_backend_small_config(void) {
  qt_vit_config c = qt_vit_default_config();
  c.image_size = 8;
  c.patch_size = 4;
  c.width = 16;
  c.depth = 2;
  c.heads = 2;
  c.mlp_hidden = 32;
  c.num_classes = 5;
  return c;
}

static inline qt_adamw_params vit_backend_adamw(void) {
  qt_adamw_params hp = qt_adamw_default_params();
  hp.lr = 1e-3;
  hp.weight_decay = 0.05;
  return hp;
}

static inline void vit_backend_download(const qt__ops *ops, float *host, const float *src,
                                        size_t n) {
  CHECK_RC(ops->download(host, src, n * sizeof *host, E));
}

/* What vit_backend_expect_tensors compares. */
enum { VIT_GRADS = 1, VIT_PARAMS = 2 };

/* A noise twin of qt_test_gpu.h: a CPU model with its weights perturbed by
 * `noise` (nudge_rng), run on perturbed images. */
typedef struct vit_twin {
  qt_vit_t *model;
  qt_rng_t *drop_rng, *nudge_rng;
  double noise;
} vit_twin;

/* The noise twins of a comparison: n of them (0: none). */
typedef struct vit_twins {
  vit_twin twin[NOISE_TWINS];
  size_t n;
} vit_twins;

/* The layer_scales (qt_test_gpu.h) of the CPU model's gradients. */
static inline double *vit_layer_scales(const qt_vit_t *cpu) {
  size_t n = qt_vit_tensor_count(cpu);
  const char **names = malloc((n ? n : 1) * sizeof *names);
  double *largest = malloc((n ? n : 1) * sizeof *largest);
  CU_ASSERT_FATAL(names && largest);
  for (size_t i = 0; i < n; i++) {
    qt_vit_tensor t;
    qt_vit_tensor_at(cpu, i, &t);
    names[i] = t.name;
    largest[i] = max_abs(t.grad, t.numel);
  }
  double *scales = layer_scales(names, largest, n);
  free(names);
  free(largest);
  return scales;
}

/* Compares the gradients (tol->arrays) and/or the parameters
 * (tol->params_off, with AdamW's learning rate lr) of every tensor of the
 * backend's model dev with the CPU's model cpu; the gradients against
 * their layer's scale and within the noise twins' bound where that is
 * larger (twins NULL or empty: none). */
static inline void vit_backend_expect_tensors(const qt__ops *ops, const qt_vit_t *dev,
                                              const qt_vit_t *cpu, const vit_twins *twins,
                                              int what_mask, const vit_tolerance *tol, double lr,
                                              const char *when) {
  size_t n_twins = twins ? twins->n : 0, off = 0, total = 0;
  double *scales = what_mask & VIT_GRADS ? vit_layer_scales(cpu) : NULL;
  for (size_t i = 0; i < qt_vit_tensor_count(cpu); i++) {
    qt_vit_tensor td, tc;
    qt_vit_tensor_at(dev, i, &td);
    qt_vit_tensor_at(cpu, i, &tc);
    CU_ASSERT_FATAL(td.numel == tc.numel && strcmp(td.name, tc.name) == 0);
    const float *noise_grad[NOISE_TWINS] = {0};
    for (size_t k = 0; k < n_twins; k++) {
      qt_vit_tensor tn;
      qt_vit_tensor_at(twins->twin[k].model, i, &tn);
      noise_grad[k] = tn.grad;
    }
    float *host = malloc(td.numel * sizeof *host);
    CU_ASSERT_PTR_NOT_NULL_FATAL(host);
    char what[256];
    if (what_mask & VIT_GRADS) {
      vit_backend_download(ops, host, td.grad, td.numel);
      snprintf(what, sizeof what, "%s: gradient of %s", when, td.name);
      expect_values_or_noise(what, host, tc.grad, noise_grad, n_twins, td.numel, scales[i],
                             tol->arrays);
    }
    if (!(what_mask & VIT_PARAMS)) {
      free(host);
      continue;
    }
    vit_backend_download(ops, host, td.data, td.numel);
    if (tol->params_off == 0.0) {
      snprintf(what, sizeof what, "%s: %s", when, td.name);
      expect_values(what, host, tc.data, NULL, td.numel, 0.0);
    } else {
      off += values_off(host, tc.data, td.numel, lr);
    }
    total += td.numel;
    free(host);
  }
  free(scales);
  if ((what_mask & VIT_PARAMS) && tol->params_off > 0.0) {
    double fraction = (double)off / (double)total;
    printf("\n    %s: %zu of %zu parameters off by more than 1e-3 lr", when, off, total);
    CU_ASSERT(fraction < tol->params_off);
  }
}

/* Two models of c with the same weights (drawn from seed): *cpu on the
 * CPU, and *dev moved to ops (left on the CPU when ops is NULL). */
static inline void vit_backend_pair(const vit_case *c, uint64_t seed, const qt__ops *ops,
                                    qt_vit_t **cpu, qt_vit_t **dev) {
  qt_vit_t **both[2] = {cpu, dev};
  for (int k = 0; k < 2; k++) {
    qt_rng_t *init = make_rng(seed);
    CHECK_RC(qt_vit_init(&c->config, c->max_batch, init, both[k], E));
    qt_rng_free(init);
  }
  if (ops) CHECK_RC(qt__vit_set_ops(*dev, ops, E));
}

/* A batch of the case's shape (qt_test_gpu.h). */
typedef test_batch vit_batch;

static inline vit_batch vit_backend_batch(qt_rng_t *rng, const vit_case *c) {
  return test_batch_make(rng, c->batch, (size_t)c->config.image_size,
                         (size_t)c->config.num_classes);
}

static inline void vit_batch_free(vit_batch *b) {
  test_batch_free(b);
}

/* One training step of vit on the batch; returns the loss. */
static inline double vit_backend_step(qt_vit_t *vit, const vit_case *c, const vit_batch *b,
                                      int update) {
  double loss = NAN;
  qt_adamw_params hp = vit_backend_adamw();
  CHECK_RC(qt_vit_forward(vit, b->images, c->batch, E));
  CHECK_RC(qt_vit_loss(vit, c->soft ? NULL : b->labels, c->soft ? b->soft : NULL,
                       c->soft ? 0.0 : c->smoothing, &loss, E));
  qt_vit_zero_grad(vit);
  CHECK_RC(qt_vit_backward(vit, E));
  if (update) CHECK_RC(qt_vit_adamw_step(vit, &hp, E));
  return loss;
}

/* The noise twins of c (vit_backend_sync gives them the CPU's values and
 * perturbs them), or none when tol asks for none. */
static inline vit_twins vit_noise_twins(const vit_case *c, const vit_tolerance *tol) {
  vit_twins t = {0};
  if (!(tol->noise > 0.0 && tol->loss > 0.0)) return t;
  for (t.n = 0; t.n < NOISE_TWINS; t.n++) {
    vit_twin *w = &t.twin[t.n];
    qt_rng_t *init = make_rng(7);
    CHECK_RC(qt_vit_init(&c->config, c->max_batch, init, &w->model, E));
    qt_rng_free(init);
    w->noise = tol->noise;
    w->nudge_rng = make_rng(19 + t.n);
    w->drop_rng = make_rng(13);
    qt_vit_set_backward_from(w->model, c->backward_from);
    CHECK_RC(qt_vit_set_head_dropout(w->model, c->drop, w->drop_rng, E));
  }
  return t;
}

static inline void vit_twins_free(vit_twins *t) {
  for (size_t k = 0; k < t->n; k++) {
    qt_vit_free(t->twin[k].model);
    qt_rng_free(t->twin[k].drop_rng);
    qt_rng_free(t->twin[k].nudge_rng);
  }
  t->n = 0;
}

/* Uploads the CPU model's values (grads 0) or gradients (grads 1) of every
 * tensor into the backend's model dev (on ops). */
static inline void vit_upload_from_cpu(const qt__ops *ops, qt_vit_t *dev, const qt_vit_t *cpu,
                                       int grads) {
  for (size_t i = 0; i < qt_vit_tensor_count(cpu); i++) {
    qt_vit_tensor td, tc;
    qt_vit_tensor_at(dev, i, &td);
    qt_vit_tensor_at(cpu, i, &tc);
    CHECK_RC(ops->upload(grads ? td.grad : td.data, grads ? tc.grad : tc.data,
                         tc.numel * sizeof(float), E));
  }
}

/* With tolerances (tol->loss > 0): the backend's model dev (on ops) takes
 * the CPU's values, and the twins too, then perturbed. Bit for bit,
 * nothing: the models must stay equal on their own. */
static inline void vit_backend_sync(const qt__ops *ops, qt_vit_t *dev, const qt_vit_t *cpu,
                                    vit_twins *twins, const vit_tolerance *tol) {
  if (tol->loss == 0.0) return;
  vit_upload_from_cpu(ops, dev, cpu, 0);
  for (size_t k = 0; k < twins->n; k++) {
    vit_twin *twin = &twins->twin[k];
    for (size_t i = 0; i < qt_vit_tensor_count(cpu); i++) {
      qt_vit_tensor tn, tc;
      qt_vit_tensor_at(twin->model, i, &tn);
      qt_vit_tensor_at(cpu, i, &tc);
      memcpy(tn.data, tc.data, tc.numel * sizeof *tc.data);
      host_perturb(tn.data, tn.numel, twin->noise, twin->nudge_rng);
    }
  }
}

/* vit_backend_step of the twin, on perturbed images. */
static inline double vit_twin_step(vit_twin *t, const vit_case *c, const vit_batch *b) {
  size_t n = c->batch * 3 * (size_t)c->config.image_size * (size_t)c->config.image_size;
  vit_batch nudged = *b;
  nudged.images = host_perturbed(b->images, n, t->noise, t->nudge_rng);
  double loss = vit_backend_step(t->model, c, &nudged, 0);
  free(nudged.images);
  return loss;
}

/* Runs one step of the models on the batch (from the CPU's values, with
 * tolerances: vit_backend_sync) and compares loss, logits and gradients,
 * then the parameters after the update (from the CPU's gradients, with
 * tolerances); the noise twin (model NULL: none) runs the forward and
 * backward. */
static inline void vit_backend_step_both(const qt__ops *ops, qt_vit_t *dev, qt_vit_t *cpu,
                                         vit_twins *twins, const vit_case *c, const vit_batch *b,
                                         const vit_tolerance *tol, const char *when) {
  size_t K = (size_t)c->config.num_classes;
  vit_backend_sync(ops, dev, cpu, twins, tol);
  double loss_dev = vit_backend_step(dev, c, b, 0);
  double loss_cpu = vit_backend_step(cpu, c, b, 0);
  printf("\n    %s: loss %.9g (CPU %.9g", when, loss_dev, loss_cpu);
  for (size_t k = 0; k < twins->n; k++)
    printf("%s%.9g", k ? " " : ", noise twins ", vit_twin_step(&twins->twin[k], c, b));
  printf(")");
  char what[160];
  snprintf(what, sizeof what, "%s: loss", when);
  expect_loss(what, loss_dev, loss_cpu, qt_vit_logits(dev), qt_vit_logits(cpu), c->batch * K,
              tol->loss);
  snprintf(what, sizeof what, "%s: logits", when);
  const float *noise_logits[NOISE_TWINS] = {0};
  for (size_t k = 0; k < twins->n; k++) noise_logits[k] = qt_vit_logits(twins->twin[k].model);
  expect_values_or_noise(what, qt_vit_logits(dev), qt_vit_logits(cpu), noise_logits, twins->n,
                         c->batch * K, 0.0, tol->arrays);
  vit_backend_expect_tensors(ops, dev, cpu, twins, VIT_GRADS, tol, 0.0, when);
  qt_adamw_params hp = vit_backend_adamw();
  if (tol->loss > 0.0) vit_upload_from_cpu(ops, dev, cpu, 1); /* AdamW from the CPU's gradients */
  CHECK_RC(qt_vit_adamw_step(dev, &hp, E));
  CHECK_RC(qt_vit_adamw_step(cpu, &hp, E));
  snprintf(what, sizeof what, "%s, after AdamW", when);
  vit_backend_expect_tensors(ops, dev, cpu, twins, VIT_PARAMS, tol, hp.lr, what);
}

/* c->steps steps side by side, then the backend's model comes back to the
 * CPU and one more step there must match too (the moments and the step
 * counter moved with it). */
static inline void vit_backend_train_compare(const qt__ops *ops, const vit_case *c,
                                             const vit_tolerance *tol) {
  printf("\n  case %s", c->name);
  qt_rng_t *data = make_rng(11);
  qt_vit_t *cpu = NULL, *dev = NULL;
  vit_backend_pair(c, 7, ops, &cpu, &dev);
  vit_twins twins = vit_noise_twins(c, tol);
  qt_vit_set_backward_from(cpu, c->backward_from);
  qt_vit_set_backward_from(dev, c->backward_from);
  qt_rng_t *drop_a = make_rng(13), *drop_b = make_rng(13);
  CHECK_RC(qt_vit_set_head_dropout(cpu, c->drop, drop_a, E));
  CHECK_RC(qt_vit_set_head_dropout(dev, c->drop, drop_b, E));
  char when[96];
  for (int s = 1; s <= c->steps; s++) {
    vit_batch b = vit_backend_batch(data, c);
    snprintf(when, sizeof when, "%s step %d", c->name, s);
    vit_backend_step_both(ops, dev, cpu, &twins, c, &b, tol, when);
    vit_batch_free(&b);
  }
  CHECK_RC(qt__vit_set_ops(dev, qt__ops_cpu(), E));
  CU_ASSERT_EQUAL(qt_vit_step(dev), qt_vit_step(cpu));
  vit_batch b = vit_backend_batch(data, c);
  snprintf(when, sizeof when, "%s back on the CPU", c->name);
  vit_backend_step_both(qt__ops_cpu(), dev, cpu, &twins, c, &b, tol, when);
  vit_batch_free(&b);
  qt_vit_free(cpu);
  qt_vit_free(dev);
  vit_twins_free(&twins);
  qt_rng_free(data);
  qt_rng_free(drop_a);
  qt_rng_free(drop_b);
}

/* The cases both tests run: labels with smoothing and a batch below
 * max_batch; layer scale, no class token in pos_embed, no patch or qkv
 * bias and soft targets; the first block frozen, with head dropout. */
static inline void vit_backend_cases(const qt__ops *ops, const vit_tolerance *tol) {
  vit_case plain = {"labels", vit_backend_small_config(), 4, 3, 0, 0.1, 0, 3, 0.0};
  vit_case variant = {
      "layer scale, soft targets", vit_backend_small_config(), 3, 3, 1, 0.0, 0, 2, 0.0};
  variant.config.layer_scale = 1;
  variant.config.layer_scale_init = 0.1;
  variant.config.no_embed_class = 1;
  variant.config.patch_bias = 0;
  variant.config.qkv_bias = 0;
  vit_case frozen = {
      "first block frozen, dropout", vit_backend_small_config(), 2, 2, 0, 0.0, 1, 2, 0.3};
  vit_backend_train_compare(ops, &plain, tol);
  vit_backend_train_compare(ops, &variant, tol);
  vit_backend_train_compare(ops, &frozen, tol);
}

/* Saved on the backend, resumed on the CPU, and the reverse: a checkpoint
 * written by a model on the backend after one step loads on the CPU with
 * exactly the backend's values; one written on the CPU loads, moves to the
 * backend with exactly the CPU's values and trains a step as the CPU does. */
static inline void vit_backend_save_resume(const qt__ops *ops, const vit_tolerance *tol) {
  vit_case c = {"save and resume", vit_backend_small_config(), 3, 3, 0, 0.0, 0, 1, 0.0};
  qt_rng_t *data = make_rng(5);
  qt_vit_t *cpu = NULL, *dev = NULL;
  vit_backend_pair(&c, 3, ops, &cpu, &dev);
  vit_batch b = vit_backend_batch(data, &c);
  vit_backend_step(dev, &c, &b, 1);
  vit_backend_step(cpu, &c, &b, 1);

  char from_dev[512], from_cpu[512];
  qt_test_temp_path("vit-from-backend.safetensors", from_dev, sizeof from_dev);
  qt_test_temp_path("vit-from-cpu.safetensors", from_cpu, sizeof from_cpu);
  CHECK_RC(qt_vit_save(dev, from_dev, E));
  CHECK_RC(qt_vit_save(cpu, from_cpu, E));
  qt_vit_load_params lp = qt_vit_default_load_params();
  lp.heads = c.config.heads;
  lp.max_batch = c.max_batch;

  /* Backend -> CPU: the file holds the backend's values exactly. */
  qt_vit_t *resumed_cpu = NULL;
  CHECK_RC(qt_vit_load(from_dev, &lp, &resumed_cpu, E));
  vit_backend_expect_tensors(ops, dev, resumed_cpu, NULL, VIT_PARAMS, &(vit_tolerance){0}, 0.0,
                             "saved on the backend, loaded on the CPU");

  /* CPU -> backend: the same values there, and the same next step. */
  qt_vit_t *resumed_dev = NULL, *twin = NULL;
  CHECK_RC(qt_vit_load(from_cpu, &lp, &resumed_dev, E));
  CHECK_RC(qt_vit_load(from_cpu, &lp, &twin, E));
  vit_twins noisy = vit_noise_twins(&c, tol);
  CHECK_RC(qt__vit_set_ops(resumed_dev, ops, E));
  vit_backend_expect_tensors(ops, resumed_dev, cpu, NULL, VIT_PARAMS, &(vit_tolerance){0}, 0.0,
                             "saved on the CPU, moved to the backend");
  vit_batch next = vit_backend_batch(data, &c);
  vit_backend_step_both(ops, resumed_dev, twin, &noisy, &c, &next, tol, "resumed on the backend");

  vit_batch_free(&b);
  vit_batch_free(&next);
  qt_vit_free(cpu);
  qt_vit_free(dev);
  qt_vit_free(resumed_cpu);
  qt_vit_free(resumed_dev);
  qt_vit_free(twin);
  vit_twins_free(&noisy);
  qt_rng_free(data);
}

#endif /* QT_TEST_VIT_BACKEND_H */

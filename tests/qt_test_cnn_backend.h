/*
 * qt_test_cnn_backend.h - whole training steps of the convolutional models
 * (MobileNetV2, ResNet, EfficientNet) on a backend against the CPU: two
 * models loaded from one randomly initialized checkpoint, one moved to the
 * backend, trained side by side on the same batches (forward, loss,
 * backward, AdamW through the backend's optim_steps on every trainable
 * tensor), with the losses, logits, gradients, parameters and batch norm
 * running statistics compared; and checkpoints saved on one backend and
 * resumed on the other. Shared by test_cnn_backend (the fake device of
 * qt_test_fake_device.h: every number must be equal) and
 * test_gpu_cnn_backend (CUDA: within the tolerances given, or within
 * NOISE_FACTOR times the CPU's own rounding noise where that is larger: a
 * few more models, the noise twins of qt_test_gpu.h).
 *
 * With tolerances, each stage starts from the CPU's values: every step
 * from its weights, running statistics and AdamW moments, and AdamW from
 * its gradients (once the backend's have been compared). A step of these
 * networks at random initialization amplifies a difference many times over
 * (batch norm over a few values; Adam moves a value by about lr either way
 * on a gradient that is zero but for rounding), so models left to train
 * apart would be compared through that amplification, not through the
 * backend's arithmetic. From one state, the forward and backward are within
 * the twins' noise, and AdamW, elementwise on equal inputs, within 1e-3 lr.
 *
 * The model holds no optimizer: a cnn_trainer keeps AdamW's moments in the
 * model's backend memory (one array of n_params each, the tensors' offsets
 * in table order) and moves them with the model.
 *
 * Include after qt_test.h, qt_test_gpu.h (for CHECK_RC, E, make_rng,
 * host_random and parity_error), finetune/qt_finetune.h and
 * finetune/qt_finetune_internal.h.
 */
#ifndef QT_TEST_CNN_BACKEND_H
#define QT_TEST_CNN_BACKEND_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How close the backend must come to the CPU. All zero: bit for bit. */
typedef struct cnn_tolerance {
  double loss;   /* |loss - cpu| / |cpu|, plus the logits' allowance (expect_loss) */
  double arrays; /* parity_error of the logits, every gradient and the running statistics */
  /* Trainable parameters after AdamW: the fraction of values further than
   * 1e-3 * lr from the CPU's (a value a few units of rounding from the
   * CPU's is not a failure, many are). */
  double params_off;
  /* > 0: the relative perturbation of the noise twins' weights and images
   * (one unit of the backend's rounding); 0: no twin, the fixed tolerances
   * alone. */
  double noise;
} cnn_tolerance;

typedef struct cnn_case {
  const char *name;
  const char *arch; /* qt_cnn_write_init's architecture */
  qt_model_family family;
  long image_size;
  long classes;
  size_t max_batch, batch;
  qt_batchnorm_mode mode;
  int soft;            /* soft targets instead of labels */
  double smoothing;    /* with labels */
  long trainable_from; /* qt_cnn_set_trainable_from */
  double stoch_p;      /* > 0: StochNorm with this probability */
  int steps;
  double drop; /* head dropout rate (both sides draw the same masks) */
} cnn_case;

static inline qt_adamw_params cnn_backend_adamw(void) {
  qt_adamw_params hp = qt_adamw_default_params();
  hp.lr = 1e-3;
  hp.weight_decay = 0.05;
  return hp;
}

/* ------------------------------------------------------------------------- */
/* Models and the optimizer                                                   */
/* ------------------------------------------------------------------------- */

/* Writes the case's randomly initialized checkpoint to a temporary file
 * (path of `size` bytes). */
static inline void cnn_backend_checkpoint(const cnn_case *c, uint64_t seed, char *path,
                                          size_t size) {
  char name[128];
  snprintf(name, sizeof name, "cnn-backend-%s-%llu.safetensors", c->arch, (unsigned long long)seed);
  qt_test_temp_path(name, path, size);
  CHECK_RC(qt_cnn_write_init(c->arch, c->classes, seed, path, E));
}

static inline qt_cnn_t *cnn_backend_load(const cnn_case *c, const char *path) {
  qt_cnn_load_params lp = qt_cnn_default_load_params();
  lp.family = c->family;
  lp.image_size = c->image_size;
  lp.max_batch = c->max_batch;
  qt_cnn_t *m = NULL;
  CHECK_RC(qt_cnn_load(path, &lp, &m, E));
  qt_cnn_set_trainable_from(m, c->trainable_from);
  return m;
}

static inline size_t cnn_backend_n_params(const qt_cnn_t *m) {
  size_t n = 0;
  for (size_t i = 0; i < qt_cnn_tensor_count(m); i++) {
    qt_cnn_tensor t;
    qt_cnn_tensor_at(m, i, &t);
    n += t.numel;
  }
  return n;
}

/* AdamW's state for one model: moments in the model's backend memory. */
typedef struct cnn_trainer {
  const qt__ops *ops;
  float *m, *v; /* (n_params) each, the tensors in table order */
  size_t n_params;
  long step;
} cnn_trainer;

static inline cnn_trainer cnn_trainer_init(const qt__ops *ops, const qt_cnn_t *model) {
  cnn_trainer tr = {ops, NULL, NULL, cnn_backend_n_params(model), 0};
  size_t bytes = tr.n_params * sizeof(float);
  CHECK_RC(ops->alloc((void **)&tr.m, bytes, E));
  CHECK_RC(ops->alloc((void **)&tr.v, bytes, E));
  CHECK_RC(ops->zero(tr.m, bytes, E));
  CHECK_RC(ops->zero(tr.v, bytes, E));
  return tr;
}

static inline void cnn_trainer_free(cnn_trainer *tr) {
  tr->ops->release(tr->m);
  tr->ops->release(tr->v);
  tr->m = tr->v = NULL;
}

/* Moves the moments to `to` (through the host). */
static inline void cnn_trainer_move(cnn_trainer *tr, const qt__ops *to) {
  size_t bytes = tr->n_params * sizeof(float);
  float *host = malloc(bytes);
  CU_ASSERT_PTR_NOT_NULL_FATAL(host);
  float **arrays[2] = {&tr->m, &tr->v};
  for (int k = 0; k < 2; k++) {
    float *fresh = NULL;
    CHECK_RC(tr->ops->download(host, *arrays[k], bytes, E));
    CHECK_RC(to->alloc((void **)&fresh, bytes, E));
    CHECK_RC(to->upload(fresh, host, bytes, E));
    tr->ops->release(*arrays[k]);
    *arrays[k] = fresh;
  }
  free(host);
  tr->ops = to;
}

/* One AdamW step with the backend's op, as a run's, on every trainable
 * tensor of a unit that is not frozen (decay on the tensors with
 * qt_cnn_tensor.decay). */
static inline void cnn_trainer_step(cnn_trainer *tr, qt_cnn_t *model, long trainable_from) {
  qt_adamw_params hp = cnn_backend_adamw();
  qt_optim_params p = qt__optim_params_adamw(&hp);
  tr->step++;
  size_t count = 0, offset = 0, n = qt_cnn_tensor_count(model);
  qt__optim_slice *slices = calloc(n + 1, sizeof *slices);
  CU_ASSERT_PTR_NOT_NULL_FATAL(slices);
  for (size_t i = 0; i < n; i++) {
    qt_cnn_tensor t;
    qt_cnn_tensor_at(model, i, &t);
    if (t.trainable && (t.head || t.unit >= trainable_from)) {
      slices[count++] = (qt__optim_slice){t.data,  t.grad, tr->m + offset, tr->v + offset,
                                          t.numel, hp.lr,  tr->step,       t.decay};
    }
    offset += t.numel;
  }
  CHECK_RC(tr->ops->optim_steps(&p, slices, count, E));
  free(slices);
}

/* A model, its AdamW state and, with StochNorm, its own stream; for the
 * noise twin, what perturbs it. */
typedef struct cnn_side {
  qt_cnn_t *model;
  cnn_trainer trainer;
  qt_rng_t *stoch_rng;
  qt_rng_t *drop_rng;
  double noise;        /* > 0: a noise twin, perturbed by this much */
  qt_rng_t *nudge_rng; /* its perturbations */
} cnn_side;

/* The noise twins of a comparison: n of them (0: none). */
typedef struct cnn_twins {
  cnn_side side[NOISE_TWINS];
  size_t n;
} cnn_twins;

/* ------------------------------------------------------------------------- */
/* Comparisons                                                                */
/* ------------------------------------------------------------------------- */

/* What cnn_backend_expect_tensors compares. */
enum { CNN_GRADS = 1, CNN_PARAMS = 2 };

/* The layer_scales (qt_test_gpu.h) of the CPU model's gradients (grads 1)
 * or values. */
static inline double *cnn_layer_scales(const qt_cnn_t *cpu, int grads) {
  size_t n = qt_cnn_tensor_count(cpu);
  const char **names = malloc((n ? n : 1) * sizeof *names);
  double *largest = malloc((n ? n : 1) * sizeof *largest);
  CU_ASSERT_FATAL(names && largest);
  for (size_t i = 0; i < n; i++) {
    qt_cnn_tensor t;
    qt_cnn_tensor_at(cpu, i, &t);
    names[i] = t.name;
    largest[i] = max_abs(grads ? t.grad : t.data, t.numel);
  }
  double *scales = layer_scales(names, largest, n);
  free(names);
  free(largest);
  return scales;
}

/* Compares the gradients (tol->arrays) or the values of every tensor of
 * the model dev (on backend ops) with the CPU model cpu: trainable
 * parameters with tol->params_off (lr: AdamW's), the running statistics
 * with tol->arrays; the gradients and running statistics against their
 * layer's scale and within the noise twins' bound where that is larger
 * (twins NULL or empty: none). */
static inline void cnn_backend_expect_tensors(const qt__ops *ops, const qt_cnn_t *dev,
                                              const qt_cnn_t *cpu, const cnn_twins *twins,
                                              int what_mask, const cnn_tolerance *tol, double lr,
                                              const char *when) {
  size_t n_twins = twins ? twins->n : 0, off = 0, total = 0;
  CU_ASSERT_EQUAL_FATAL(qt_cnn_tensor_count(dev), qt_cnn_tensor_count(cpu));
  double *scales = cnn_layer_scales(cpu, what_mask & CNN_GRADS);
  for (size_t i = 0; i < qt_cnn_tensor_count(cpu); i++) {
    qt_cnn_tensor td, tc;
    qt_cnn_tensor_at(dev, i, &td);
    qt_cnn_tensor_at(cpu, i, &tc);
    CU_ASSERT_FATAL(td.numel == tc.numel && strcmp(td.name, tc.name) == 0);
    const float *noise_grad[NOISE_TWINS] = {0}, *noise_data[NOISE_TWINS] = {0};
    for (size_t k = 0; k < n_twins; k++) {
      qt_cnn_tensor tn;
      qt_cnn_tensor_at(twins->side[k].model, i, &tn);
      noise_grad[k] = tn.grad;
      noise_data[k] = tn.data;
    }
    float *host = malloc(td.numel * sizeof *host);
    CU_ASSERT_PTR_NOT_NULL_FATAL(host);
    char what[200];
    if (what_mask & CNN_GRADS) {
      CHECK_RC(ops->download(host, td.grad, td.numel * sizeof *host, E));
      snprintf(what, sizeof what, "%s: gradient of %s", when, td.name);
      expect_values_or_noise(what, host, tc.grad, noise_grad, n_twins, td.numel, scales[i],
                             tol->arrays);
    }
    if (what_mask & CNN_PARAMS) {
      CHECK_RC(ops->download(host, td.data, td.numel * sizeof *host, E));
      snprintf(what, sizeof what, "%s: %s", when, td.name);
      if (tol->params_off == 0.0) {
        expect_values(what, host, tc.data, NULL, td.numel, 0.0);
      } else if (!td.trainable) {
        expect_values_or_noise(what, host, tc.data, noise_data, n_twins, td.numel, scales[i],
                               tol->arrays);
      } else {
        off += values_off(host, tc.data, td.numel, lr);
        total += td.numel;
      }
    }
    free(host);
  }
  free(scales);
  if ((what_mask & CNN_PARAMS) && tol->params_off > 0.0) {
    double fraction = (double)off / (double)(total ? total : 1);
    printf("\n    %s: %zu of %zu parameters off by more than 1e-3 lr", when, off, total);
    CU_ASSERT(fraction < tol->params_off);
  }
}

/* ------------------------------------------------------------------------- */
/* Batches and steps                                                          */
/* ------------------------------------------------------------------------- */

typedef test_batch cnn_batch;

static inline cnn_batch cnn_backend_batch(qt_rng_t *rng, const cnn_case *c) {
  return test_batch_make(rng, c->batch, (size_t)c->image_size, (size_t)c->classes);
}

static inline void cnn_batch_free(cnn_batch *b) {
  test_batch_free(b);
}

/* Forward, loss, zero_grad, backward of model on the batch; returns the
 * loss. */
static inline double cnn_backend_pass(qt_cnn_t *m, const cnn_case *c, const cnn_batch *b) {
  double loss = NAN;
  CHECK_RC(qt_cnn_forward(m, b->images, c->batch, c->mode, E));
  CHECK_RC(qt_cnn_loss(m, c->soft ? NULL : b->labels, c->soft ? b->soft : NULL,
                       c->soft ? 0.0 : c->smoothing, &loss, E));
  qt_cnn_zero_grad(m);
  CHECK_RC(qt_cnn_backward(m, E));
  return loss;
}

static inline cnn_side cnn_side_init(const cnn_case *c, const char *checkpoint) {
  cnn_side s;
  s.model = cnn_backend_load(c, checkpoint);
  s.trainer = cnn_trainer_init(qt__ops_cpu(), s.model);
  s.stoch_rng = NULL;
  if (c->stoch_p > 0.0) {
    s.stoch_rng = make_rng(13);
    CHECK_RC(qt_cnn_set_stoch_norm(s.model, c->stoch_p, s.stoch_rng, E));
  }
  s.drop_rng = make_rng(17);
  CHECK_RC(qt_cnn_set_head_dropout(s.model, c->drop, s.drop_rng, E));
  s.noise = 0.0;
  s.nudge_rng = NULL;
  return s;
}

/* Moves the model and its moments to ops. */
static inline void cnn_side_move(cnn_side *s, const qt__ops *ops) {
  CHECK_RC(qt__cnn_set_ops(s->model, ops, E));
  cnn_trainer_move(&s->trainer, ops);
}

static inline void cnn_side_free(cnn_side *s) {
  qt_cnn_free(s->model);
  cnn_trainer_free(&s->trainer);
  qt_rng_free(s->stoch_rng);
  qt_rng_free(s->drop_rng);
  qt_rng_free(s->nudge_rng);
}

/* The noise twins of c (cnn_backend_sync perturbs them), or none when the
 * tolerance asks for none. */
static inline cnn_twins cnn_noise_twins(const cnn_case *c, const char *checkpoint,
                                        const cnn_tolerance *tol) {
  cnn_twins t = {0};
  if (tol->noise > 0.0 && tol->loss > 0.0) {
    for (t.n = 0; t.n < NOISE_TWINS; t.n++) {
      t.side[t.n] = cnn_side_init(c, checkpoint);
      t.side[t.n].noise = tol->noise;
      t.side[t.n].nudge_rng = make_rng(19 + t.n);
    }
  }
  return t;
}

static inline void cnn_twins_free(cnn_twins *t) {
  for (size_t k = 0; k < t->n; k++) cnn_side_free(&t->side[k]);
  t->n = 0;
}

/* Uploads the CPU model's values (grads 0) or gradients (grads 1) of every
 * tensor into the backend's model dev. */
static inline void cnn_upload_from_cpu(cnn_side *dev, const cnn_side *cpu, int grads) {
  for (size_t i = 0; i < qt_cnn_tensor_count(cpu->model); i++) {
    qt_cnn_tensor td, tc;
    qt_cnn_tensor_at(dev->model, i, &td);
    qt_cnn_tensor_at(cpu->model, i, &tc);
    CHECK_RC(dev->trainer.ops->upload(grads ? td.grad : td.data, grads ? tc.grad : tc.data,
                                      tc.numel * sizeof(float), E));
  }
}

/* With tolerances (tol->loss > 0): the backend's model dev takes the CPU's
 * values (every tensor, running statistics included) and AdamW's moments;
 * the twins take the values, their trainable tensors then perturbed. Bit
 * for bit, nothing: the models must stay equal on their own. */
static inline void cnn_backend_sync(cnn_side *dev, const cnn_side *cpu, cnn_twins *twins,
                                    const cnn_tolerance *tol) {
  if (tol->loss == 0.0) return;
  cnn_upload_from_cpu(dev, cpu, 0);
  for (size_t k = 0; k < twins->n; k++) {
    cnn_side *twin = &twins->side[k];
    for (size_t i = 0; i < qt_cnn_tensor_count(cpu->model); i++) {
      qt_cnn_tensor tn, tc;
      qt_cnn_tensor_at(twin->model, i, &tn);
      qt_cnn_tensor_at(cpu->model, i, &tc);
      memcpy(tn.data, tc.data, tc.numel * sizeof *tc.data);
      if (tn.trainable) host_perturb(tn.data, tn.numel, twin->noise, twin->nudge_rng);
    }
  }
  size_t bytes = cpu->trainer.n_params * sizeof(float);
  CHECK_RC(dev->trainer.ops->upload(dev->trainer.m, cpu->trainer.m, bytes, E));
  CHECK_RC(dev->trainer.ops->upload(dev->trainer.v, cpu->trainer.v, bytes, E));
}

/* cnn_backend_pass of the side's model, on images perturbed when it is a
 * noise twin. */
static inline double cnn_side_pass(cnn_side *s, const cnn_case *c, const cnn_batch *b) {
  if (s->noise == 0.0) return cnn_backend_pass(s->model, c, b);
  size_t n = c->batch * 3 * (size_t)c->image_size * (size_t)c->image_size;
  cnn_batch nudged = *b;
  nudged.images = host_perturbed(b->images, n, s->noise, s->nudge_rng);
  double loss = cnn_backend_pass(s->model, c, &nudged);
  free(nudged.images);
  return loss;
}

/* One step of the sides on the batch (from the CPU's values, with
 * tolerances: cnn_backend_sync): loss, logits and gradients compared, then
 * the parameters (AdamW from the CPU's gradients, with tolerances) and the
 * running statistics; the noise twins run the forward and backward. */
static inline void cnn_backend_step_both(cnn_side *dev, cnn_side *cpu, cnn_twins *twins,
                                         const cnn_case *c, const cnn_batch *b,
                                         const cnn_tolerance *tol, const char *when) {
  const qt__ops *ops = dev->trainer.ops;
  cnn_backend_sync(dev, cpu, twins, tol);
  double loss_dev = cnn_backend_pass(dev->model, c, b);
  double loss_cpu = cnn_backend_pass(cpu->model, c, b);
  printf("\n    %s: loss %.9g (CPU %.9g", when, loss_dev, loss_cpu);
  for (size_t k = 0; k < twins->n; k++)
    printf("%s%.9g", k ? " " : ", noise twins ", cnn_side_pass(&twins->side[k], c, b));
  printf(")");
  size_t n = c->batch * (size_t)c->classes;
  char what[160];
  snprintf(what, sizeof what, "%s: loss", when);
  expect_loss(what, loss_dev, loss_cpu, qt_cnn_logits(dev->model), qt_cnn_logits(cpu->model), n,
              tol->loss);
  snprintf(what, sizeof what, "%s: logits", when);
  const float *noise_logits[NOISE_TWINS] = {0};
  for (size_t k = 0; k < twins->n; k++) noise_logits[k] = qt_cnn_logits(twins->side[k].model);
  expect_values_or_noise(what, qt_cnn_logits(dev->model), qt_cnn_logits(cpu->model), noise_logits,
                         twins->n, n, 0.0, tol->arrays);
  cnn_backend_expect_tensors(ops, dev->model, cpu->model, twins, CNN_GRADS, tol, 0.0, when);
  if (tol->loss > 0.0) cnn_upload_from_cpu(dev, cpu, 1); /* AdamW from the CPU's gradients */
  cnn_trainer_step(&dev->trainer, dev->model, c->trainable_from);
  cnn_trainer_step(&cpu->trainer, cpu->model, c->trainable_from);
  snprintf(what, sizeof what, "%s, after AdamW", when);
  cnn_backend_expect_tensors(ops, dev->model, cpu->model, twins, CNN_PARAMS, tol,
                             cnn_backend_adamw().lr, what);
}

/* c->steps steps side by side, then the backend's model comes back to the
 * CPU (with its moments) and one more step there must match too. */
static inline void cnn_backend_train_compare(const qt__ops *ops, const cnn_case *c,
                                             const cnn_tolerance *tol) {
  printf("\n  case %s", c->name);
  char checkpoint[512];
  cnn_backend_checkpoint(c, 7, checkpoint, sizeof checkpoint);
  qt_rng_t *data = make_rng(11);
  cnn_side cpu = cnn_side_init(c, checkpoint), dev = cnn_side_init(c, checkpoint);
  cnn_twins twins = cnn_noise_twins(c, checkpoint, tol);
  cnn_side_move(&dev, ops);
  char when[128];
  for (int s = 1; s <= c->steps; s++) {
    cnn_batch b = cnn_backend_batch(data, c);
    snprintf(when, sizeof when, "%s step %d", c->name, s);
    cnn_backend_step_both(&dev, &cpu, &twins, c, &b, tol, when);
    cnn_batch_free(&b);
  }
  cnn_side_move(&dev, qt__ops_cpu());
  cnn_batch b = cnn_backend_batch(data, c);
  snprintf(when, sizeof when, "%s back on the CPU", c->name);
  cnn_backend_step_both(&dev, &cpu, &twins, c, &b, tol, when);
  cnn_batch_free(&b);
  cnn_side_free(&cpu);
  cnn_side_free(&dev);
  cnn_twins_free(&twins);
  qt_rng_free(data);
  remove(checkpoint);
}

/* The small models: 32 px images, 5 classes. */
static inline cnn_case cnn_backend_small(const char *name, const char *arch,
                                         qt_model_family family) {
  cnn_case c = {name, arch, family, 32, 5, 3, 3, QT_BATCHNORM_MODE_TRAIN, 0, 0.1, 0, 0.0, 2, 0.0};
  return c;
}

/* The cases both tests run: MobileNetV2 with labels, smoothing and a batch
 * below max_batch over three steps; ResNet (max pooling, downsample) with
 * soft targets and head dropout; EfficientNet (SiLU, squeeze-and-excitation); MobileNetV2 in
 * EVAL mode; ResNet in FROZEN mode; EfficientNet with StochNorm and the
 * stem and first two blocks frozen. */
static inline void cnn_backend_cases(const qt__ops *ops, const cnn_tolerance *tol) {
  cnn_case mobilenet =
      cnn_backend_small("mobilenetv2", "mobilenetv2_tiny", QT_MODEL_FAMILY_MOBILENETV2);
  mobilenet.batch = 2;
  mobilenet.steps = 3;
  cnn_case resnet =
      cnn_backend_small("resnet, soft targets, dropout", "resnet_tiny", QT_MODEL_FAMILY_RESNET);
  resnet.soft = 1;
  resnet.drop = 0.3;
  cnn_case efficientnet =
      cnn_backend_small("efficientnet", "efficientnet_tiny", QT_MODEL_FAMILY_EFFICIENTNET);
  cnn_case eval =
      cnn_backend_small("mobilenetv2, EVAL", "mobilenetv2_tiny", QT_MODEL_FAMILY_MOBILENETV2);
  eval.mode = QT_BATCHNORM_MODE_EVAL;
  cnn_case frozen_bn = cnn_backend_small("resnet, FROZEN", "resnet_tiny", QT_MODEL_FAMILY_RESNET);
  frozen_bn.mode = QT_BATCHNORM_MODE_FROZEN;
  cnn_case stoch = cnn_backend_small("efficientnet, StochNorm, units 0-2 frozen",
                                     "efficientnet_tiny", QT_MODEL_FAMILY_EFFICIENTNET);
  stoch.stoch_p = 0.5;
  stoch.trainable_from = 3;
  cnn_backend_train_compare(ops, &mobilenet, tol);
  cnn_backend_train_compare(ops, &resnet, tol);
  cnn_backend_train_compare(ops, &efficientnet, tol);
  cnn_backend_train_compare(ops, &eval, tol);
  cnn_backend_train_compare(ops, &frozen_bn, tol);
  cnn_backend_train_compare(ops, &stoch, tol);
}

/* Saved on the backend, resumed on the CPU, and the reverse: a checkpoint
 * written by a model on the backend after one step loads on the CPU with
 * exactly the backend's values (running statistics included); one written
 * on the CPU loads, moves to the backend with exactly the CPU's values and
 * trains a step as the CPU does. */
static inline void cnn_backend_save_resume(const qt__ops *ops, const cnn_tolerance *tol) {
  cnn_case c =
      cnn_backend_small("save and resume", "mobilenetv2_tiny", QT_MODEL_FAMILY_MOBILENETV2);
  char checkpoint[512];
  cnn_backend_checkpoint(&c, 3, checkpoint, sizeof checkpoint);
  qt_rng_t *data = make_rng(5);
  cnn_side cpu = cnn_side_init(&c, checkpoint), dev = cnn_side_init(&c, checkpoint);
  cnn_twins noisy = cnn_noise_twins(&c, checkpoint, tol);
  cnn_side_move(&dev, ops);
  cnn_batch b = cnn_backend_batch(data, &c);
  cnn_backend_step_both(&dev, &cpu, &noisy, &c, &b, tol, "before saving");

  char from_dev[512], from_cpu[512];
  qt_test_temp_path("cnn-from-backend.safetensors", from_dev, sizeof from_dev);
  qt_test_temp_path("cnn-from-cpu.safetensors", from_cpu, sizeof from_cpu);
  CHECK_RC(qt_cnn_save(dev.model, from_dev, E));
  CHECK_RC(qt_cnn_save(cpu.model, from_cpu, E));
  const cnn_tolerance exact = {0, 0, 0, 0};

  /* Backend -> CPU: the file holds the backend's values exactly. */
  qt_cnn_t *resumed_cpu = cnn_backend_load(&c, from_dev);
  cnn_backend_expect_tensors(ops, dev.model, resumed_cpu, NULL, CNN_PARAMS, &exact, 0.0,
                             "saved on the backend, loaded on the CPU");
  qt_cnn_free(resumed_cpu);

  /* CPU -> backend: the same values there, and the same next step. */
  cnn_side resumed_dev = cnn_side_init(&c, from_cpu), twin = cnn_side_init(&c, from_cpu);
  cnn_twins resumed_noisy = cnn_noise_twins(&c, from_cpu, tol);
  cnn_side_move(&resumed_dev, ops);
  cnn_backend_expect_tensors(ops, resumed_dev.model, cpu.model, NULL, CNN_PARAMS, &exact, 0.0,
                             "saved on the CPU, moved to the backend");
  cnn_batch next = cnn_backend_batch(data, &c);
  cnn_backend_step_both(&resumed_dev, &twin, &resumed_noisy, &c, &next, tol,
                        "resumed on the backend");

  cnn_batch_free(&b);
  cnn_batch_free(&next);
  cnn_side_free(&cpu);
  cnn_side_free(&dev);
  cnn_side_free(&resumed_dev);
  cnn_side_free(&twin);
  cnn_twins_free(&noisy);
  cnn_twins_free(&resumed_noisy);
  qt_rng_free(data);
  remove(checkpoint);
  remove(from_dev);
  remove(from_cpu);
}

#endif /* QT_TEST_CNN_BACKEND_H */

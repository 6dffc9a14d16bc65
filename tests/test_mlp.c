/*
 * test_mlp.c - the MLP for tabular data (qt_mlp.c), its place behind
 * qt_model, its random initialization, and the per-feature standardization
 * of tabular batches.
 *
 *   - gradients: every parameter's analytic gradient (float) against central
 *     finite differences (step 1e-6) of a double-precision reference of the
 *     same network written here from its definition, within 1e-4 (1 + |g|)
 *     (as tests/test_finetune_cnn.c: the reference is exact to about 1e-9,
 *     float rounding over these few-term sums stays below 1e-5), with ReLU
 *     and GELU, with and without LayerNorm, labels with smoothing and soft
 *     targets, head dropout and the feature hook;
 *   - golden: the networks of tools/make-mlp-fixture.py run by PyTorch in
 *     double: logits, loss, every gradient, and the parameters after three
 *     AdamW steps (weight decay on 2-d weights only), each value within
 *     1e-5 + 1e-4 |want|;
 *   - freezing, save / load, a new head, qt_model's wrappers, write_init,
 *     feature statistics and standardized batches;
 *   - on a backend: on the fake device of qt_test_fake_device.h (the CPU's
 *     ops on memory the host cannot touch) the model trains as on the CPU,
 *     bit for bit, with dropout, the feature hook and freezing, moves back,
 *     saves, and a move that runs out of memory changes nothing.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "qt_test.h"
#include "qt_test_fake_device.h"

#define FORWARD_TOL 1e-5
#define BACKWARD_TOL 1e-4
#define FD_STEP 1e-6
#define GOLDEN_REL 1e-4
#define GOLDEN_ABS 1e-5

/* ------------------------------------------------------------------------- */
/* Helpers                                                                    */
/* ------------------------------------------------------------------------- */

static unsigned long long rng_state = 0x9E3779B97F4A7C15ull;

static double uniform(double lo, double hi) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  unsigned long long r = rng_state * 2685821657736338717ull;
  return lo + (hi - lo) * (double)(r >> 11) / 9007199254740992.0;
}

static const char *tmp_path(const char *name, char *buf, size_t size) {
  snprintf(buf, size, "/tmp/qt_test_mlp_%d_%s", (int)getpid(), name);
  return buf;
}

static qt_mlp_t *load(const char *path, long classes, size_t max_batch, qt_rng_t *rng) {
  qt_err err;
  qt_err_clear(&err);
  qt_mlp_load_params lp = qt_mlp_default_load_params();
  lp.num_classes = classes;
  lp.max_batch = max_batch;
  lp.rng = rng;
  qt_mlp_t *m = NULL;
  int rc = qt_mlp_load(path, &lp, &m, &err);
  if (rc) fprintf(stderr, "qt_mlp_load: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL(rc, 0);
  return m;
}

/* Writes a fresh MLP and loads it. */
static qt_mlp_t *make_model(const char *name, size_t features, size_t width, size_t depth,
                            long classes, int layer_norm, qt_mlp_activation act, size_t max_batch) {
  char path[256];
  qt_err err;
  qt_err_clear(&err);
  qt_mlp_arch a = qt_mlp_default_arch();
  a.n_features = features;
  a.width = width;
  a.depth = depth;
  a.num_classes = classes;
  a.layer_norm = layer_norm;
  a.activation = act;
  tmp_path(name, path, sizeof path);
  CU_ASSERT_EQUAL_FATAL(qt_mlp_write_init(&a, 7, path, &err), 0);
  qt_mlp_t *m = load(path, 0, max_batch, NULL);
  unlink(path);
  return m;
}

/* Every value within GOLDEN_ABS + GOLDEN_REL |want|; prints the worst. */
static void expect_close(const char *name, const float *got, const float *want, size_t n) {
  double worst = 0.0;
  size_t bad = 0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)got[i] - want[i]);
    double r = d / (GOLDEN_ABS + GOLDEN_REL * fabs(want[i]));
    if (r > worst) worst = r;
    if (r > 1.0 && bad++ < 3)
      fprintf(stderr, "%s[%zu]: got %.9g, want %.9g\n", name, i, (double)got[i], (double)want[i]);
  }
  fprintf(stderr, "  %-28s worst error / tolerance %.3f over %zu values\n", name, worst, n);
  CU_ASSERT(bad == 0);
}

static float *read_tensor(const qt_safetensors_t *st, const char *name, size_t n) {
  float *v = calloc(n ? n : 1, sizeof *v);
  qt_err err;
  qt_err_clear(&err);
  if (qt_safetensors_read_f32(st, name, v, n, &err) != 0) {
    fprintf(stderr, "%s\n", qt_err_message(&err));
    CU_FAIL("expected tensor missing");
  }
  return v;
}

/* ------------------------------------------------------------------------- */
/* The double-precision reference                                             */
/* ------------------------------------------------------------------------- */

#define MAX_DEPTH 8

/* The network of a loaded model in double, with the inputs, targets,
 * dropout mask and feature-hook weights of one check. */
typedef struct ref {
  size_t depth, in[MAX_DEPTH], out[MAX_DEPTH], classes, batch;
  int gelu;
  double *w[MAX_DEPTH], *b[MAX_DEPTH], *g[MAX_DEPTH],
      *beta[MAX_DEPTH]; /* g, beta: NULL without norm */
  double *hw, *hb;
  const double *x;    /* (batch, in[0]) */
  const int *labels;  /* (batch) or NULL: soft */
  const double *soft; /* (batch, classes) */
  double smoothing;
  const double *mask; /* (batch, width) head dropout mask or NULL */
  const double *hook; /* (batch, width): adds sum(features * hook) or NULL */
  double *logits;     /* (batch, classes) out */
} ref;

static double *to_double(const float *v, size_t n) {
  double *d = malloc(n * sizeof *d);
  for (size_t i = 0; i < n; i++) d[i] = v[i];
  return d;
}

static double *tensor_double(const qt_mlp_t *m, const char *name, size_t *numel) {
  qt_mlp_tensor t;
  if (qt_mlp_find_tensor(m, name, &t) != 0) return NULL;
  if (numel) *numel = t.numel;
  return to_double(t.data, t.numel);
}

static void ref_init(ref *r, const qt_mlp_t *m) {
  memset(r, 0, sizeof *r);
  r->depth = (size_t)qt_mlp_units(m);
  r->classes = (size_t)qt_mlp_num_classes(m);
  r->gelu = qt_mlp_get_activation(m) == QT_MLP_ACTIVATION_GELU;
  char name[64];
  for (size_t i = 0; i < r->depth; i++) {
    qt_mlp_tensor t;
    snprintf(name, sizeof name, "blocks.%zu.fc.weight", i);
    CU_ASSERT_EQUAL_FATAL(qt_mlp_find_tensor(m, name, &t), 0);
    r->out[i] = t.shape[0];
    r->in[i] = t.shape[1];
    r->w[i] = to_double(t.data, t.numel);
    snprintf(name, sizeof name, "blocks.%zu.fc.bias", i);
    r->b[i] = tensor_double(m, name, NULL);
    snprintf(name, sizeof name, "blocks.%zu.norm.weight", i);
    r->g[i] = tensor_double(m, name, NULL);
    snprintf(name, sizeof name, "blocks.%zu.norm.bias", i);
    r->beta[i] = tensor_double(m, name, NULL);
  }
  r->hw = tensor_double(m, "head.weight", NULL);
  r->hb = tensor_double(m, "head.bias", NULL);
}

static void ref_free(ref *r) {
  for (size_t i = 0; i < r->depth; i++) {
    free(r->w[i]);
    free(r->b[i]);
    free(r->g[i]);
    free(r->beta[i]);
  }
  free(r->hw);
  free(r->hb);
  free(r->logits);
}

/* The tensor of the reference with the model's tensor name. */
static double *ref_param(ref *r, const char *name) {
  if (strcmp(name, "head.weight") == 0) return r->hw;
  if (strcmp(name, "head.bias") == 0) return r->hb;
  size_t i = (size_t)atol(name + 7);
  const char *part = strchr(name + 7, '.') + 1;
  if (strcmp(part, "fc.weight") == 0) return r->w[i];
  if (strcmp(part, "fc.bias") == 0) return r->b[i];
  if (strcmp(part, "norm.weight") == 0) return r->g[i];
  return r->beta[i];
}

/* Mean cross-entropy (+ the hook term) of the reference. */
static double ref_loss(ref *r) {
  size_t width = r->out[r->depth - 1], maxw = 0;
  for (size_t i = 0; i < r->depth; i++) maxw = r->out[i] > maxw ? r->out[i] : maxw;
  if (r->in[0] > maxw) maxw = r->in[0];
  double *x = malloc(r->batch * maxw * sizeof *x), *y = malloc(r->batch * maxw * sizeof *y);
  memcpy(x, r->x, r->batch * r->in[0] * sizeof *x);
  for (size_t i = 0; i < r->depth; i++) {
    size_t in = r->in[i], out = r->out[i];
    for (size_t n = 0; n < r->batch; n++) {
      double *row = y + n * out;
      for (size_t o = 0; o < out; o++) {
        double s = r->b[i][o];
        for (size_t k = 0; k < in; k++) s += x[n * in + k] * r->w[i][o * in + k];
        row[o] = s;
      }
      if (r->g[i]) {
        double mean = 0.0, var = 0.0;
        for (size_t o = 0; o < out; o++) mean += row[o];
        mean /= (double)out;
        for (size_t o = 0; o < out; o++) var += (row[o] - mean) * (row[o] - mean);
        var /= (double)out;
        for (size_t o = 0; o < out; o++)
          row[o] = (row[o] - mean) / sqrt(var + 1e-5) * r->g[i][o] + r->beta[i][o];
      }
      for (size_t o = 0; o < out; o++)
        row[o] = r->gelu ? 0.5 * row[o] * (1.0 + erf(row[o] / sqrt(2.0)))
                         : (row[o] > 0.0 ? row[o] : 0.0);
    }
    double *swap = x;
    x = y;
    y = swap;
  }
  double extra = 0.0, total = 0.0;
  if (!r->logits) r->logits = malloc(r->batch * r->classes * sizeof *r->logits);
  for (size_t n = 0; n < r->batch; n++) {
    for (size_t k = 0; r->hook && k < width; k++)
      extra += x[n * width + k] * r->hook[n * width + k];
    double *z = r->logits + n * r->classes, mx = -INFINITY;
    for (size_t c = 0; c < r->classes; c++) {
      double s = r->hb[c];
      for (size_t k = 0; k < width; k++) {
        double f = x[n * width + k] * (r->mask ? r->mask[n * width + k] : 1.0);
        s += f * r->hw[c * width + k];
      }
      z[c] = s;
      if (s > mx) mx = s;
    }
    double lse = 0.0;
    for (size_t c = 0; c < r->classes; c++) lse += exp(z[c] - mx);
    lse = mx + log(lse);
    for (size_t c = 0; c < r->classes; c++) {
      double t = r->labels ? (c == (size_t)r->labels[n] ? 1.0 - r->smoothing : 0.0) +
                                 r->smoothing / (double)r->classes
                           : r->soft[n * r->classes + c];
      total -= t * (z[c] - lse);
    }
  }
  free(x);
  free(y);
  return total / (double)r->batch + extra;
}

/* ------------------------------------------------------------------------- */
/* Gradients by finite differences                                            */
/* ------------------------------------------------------------------------- */

typedef struct fd_case {
  const char *name;
  size_t features, width, depth;
  long classes;
  int layer_norm;
  qt_mlp_activation act;
  int soft;    /* soft targets instead of labels with smoothing 0.1 */
  double drop; /* head dropout rate */
  int hook;    /* feature hook gradient added */
} fd_case;

static void run_fd_case(const fd_case *c) {
  size_t batch = 5;
  qt_err err;
  qt_err_clear(&err);
  qt_mlp_t *m =
      make_model(c->name, c->features, c->width, c->depth, c->classes, c->layer_norm, c->act, 8);
  CU_ASSERT_PTR_NOT_NULL_FATAL(m);
  /* LayerNorm starts at (1, 0): move it so its gradients see general values. */
  for (size_t i = 0; i < qt_mlp_tensor_count(m); i++) {
    qt_mlp_tensor t;
    qt_mlp_tensor_at(m, i, &t);
    if (strstr(t.name, ".norm."))
      for (size_t k = 0; k < t.numel; k++) t.data[k] += (float)uniform(-0.3, 0.3);
  }
  size_t width = qt_mlp_feature_dim(m), classes = (size_t)c->classes;
  float *x = malloc(batch * c->features * sizeof *x);
  for (size_t i = 0; i < batch * c->features; i++) x[i] = (float)uniform(-2.0, 2.0);
  int labels[5];
  for (size_t i = 0; i < batch; i++) labels[i] = (int)(uniform(0.0, (double)classes)) % c->classes;
  float *soft = malloc(batch * classes * sizeof *soft);
  for (size_t n = 0; n < batch; n++) {
    double sum = 0.0;
    for (size_t k = 0; k < classes; k++) sum += soft[n * classes + k] = (float)uniform(0.1, 1.0);
    for (size_t k = 0; k < classes; k++) soft[n * classes + k] /= (float)sum;
  }
  /* The dropout mask the model will draw: the same stream drawn here. */
  double *mask = NULL;
  qt_rng_t *rng = NULL, *mirror = NULL;
  if (c->drop > 0.0) {
    CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, 99, &err), 0);
    CU_ASSERT_EQUAL_FATAL(qt_rng_init(&mirror, 99, &err), 0);
    CU_ASSERT_EQUAL_FATAL(qt_mlp_set_head_dropout(m, c->drop, rng, &err), 0);
    mask = malloc(batch * width * sizeof *mask);
    for (size_t k = 0; k < batch * width; k++)
      mask[k] = qt_rng_uniform(mirror) < c->drop ? 0.0 : 1.0 / (1.0 - c->drop);
  }
  double *hook = NULL;
  if (c->hook) {
    CU_ASSERT_EQUAL_FATAL(qt_mlp_set_feature_hook(m, 1, &err), 0);
    hook = malloc(batch * width * sizeof *hook);
    for (size_t k = 0; k < batch * width; k++) hook[k] = uniform(-0.5, 0.5);
  }

  qt_mlp_zero_grad(m);
  CU_ASSERT_EQUAL_FATAL(qt_mlp_forward(m, x, batch, &err), 0);
  double loss = 0.0;
  CU_ASSERT_EQUAL_FATAL(qt_mlp_loss(m, c->soft ? NULL : labels, c->soft ? soft : NULL,
                                    c->soft ? 0.0 : 0.1, &loss, &err),
                        0);
  if (c->hook) {
    float *dfeat = qt_mlp_feature_grad(m);
    size_t fb = 0;
    CU_ASSERT_PTR_NOT_NULL(qt_mlp_features(m, &fb));
    CU_ASSERT_EQUAL(fb, batch);
    for (size_t k = 0; k < batch * width; k++) dfeat[k] += (float)hook[k];
  }
  CU_ASSERT_EQUAL_FATAL(qt_mlp_backward(m, &err), 0);

  ref r;
  ref_init(&r, m);
  double *xd = to_double(x, batch * c->features), *softd = to_double(soft, batch * classes);
  r.batch = batch;
  r.x = xd;
  r.labels = c->soft ? NULL : labels;
  r.soft = softd;
  r.smoothing = c->soft ? 0.0 : 0.1;
  r.mask = mask;
  r.hook = hook;
  double want = ref_loss(&r);
  double hook_term = 0.0;
  if (hook) {
    /* The model's loss leaves the hook term out. */
    r.hook = NULL;
    hook_term = want - ref_loss(&r);
    r.hook = hook;
  }
  fprintf(stderr, "\n%s: loss %.9f, reference %.9f\n", c->name, loss, want - hook_term);
  CU_ASSERT(fabs(loss - (want - hook_term)) <= FORWARD_TOL * (1.0 + fabs(want)));
  const float *logits = qt_mlp_logits(m);
  for (size_t k = 0; k < batch * classes; k++)
    CU_ASSERT(fabs(logits[k] - r.logits[k]) <= FORWARD_TOL * (1.0 + fabs(r.logits[k])));

  for (size_t i = 0; i < qt_mlp_tensor_count(m); i++) {
    qt_mlp_tensor t;
    qt_mlp_tensor_at(m, i, &t);
    double *p = ref_param(&r, t.name);
    double worst = 0.0;
    for (size_t k = 0; k < t.numel; k++) {
      double saved = p[k];
      p[k] = saved + FD_STEP;
      double up = ref_loss(&r);
      p[k] = saved - FD_STEP;
      double down = ref_loss(&r);
      p[k] = saved;
      double numeric = (up - down) / (2.0 * FD_STEP);
      double e = fabs(t.grad[k] - numeric) / (1.0 + fabs(numeric));
      if (e > worst) worst = e;
      if (e > BACKWARD_TOL)
        fprintf(stderr, "%s[%zu]: analytic %.9g, finite differences %.9g\n", t.name, k,
                (double)t.grad[k], numeric);
    }
    fprintf(stderr, "  %-22s max scaled error %.2e over %zu values\n", t.name, worst, t.numel);
    CU_ASSERT(worst <= BACKWARD_TOL);
  }
  ref_free(&r);
  free(xd);
  free(softd);
  free(mask);
  free(hook);
  free(x);
  free(soft);
  qt_mlp_free(m);
  qt_rng_free(rng);
  qt_rng_free(mirror);
}

static void test_gradients_relu_layernorm(void) {
  fd_case c = {"relu_ln", 6, 7, 3, 4, 1, QT_MLP_ACTIVATION_RELU, 0, 0.0, 0};
  run_fd_case(&c);
}

static void test_gradients_gelu_plain(void) {
  fd_case c = {"gelu_plain", 4, 5, 2, 3, 0, QT_MLP_ACTIVATION_GELU, 0, 0.0, 0};
  run_fd_case(&c);
}

static void test_gradients_soft_targets_dropout_hook(void) {
  fd_case c = {"gelu_ln_soft_drop_hook", 5, 6, 2, 3, 1, QT_MLP_ACTIVATION_GELU, 1, 0.4, 1};
  run_fd_case(&c);
}

static void test_gradients_depth_one(void) {
  fd_case c = {"relu_depth1_drop", 3, 4, 1, 2, 1, QT_MLP_ACTIVATION_RELU, 0, 0.3, 1};
  run_fd_case(&c);
}

/* ------------------------------------------------------------------------- */
/* Golden numbers from PyTorch                                                */
/* ------------------------------------------------------------------------- */

static void run_golden_case(const char *name, size_t features, long classes, size_t depth,
                            qt_mlp_activation act) {
  char path[512], expected_path[512];
  snprintf(path, sizeof path, "%s/tests/fixtures/mlp/%s.safetensors", QT_SOURCE_DIR, name);
  snprintf(expected_path, sizeof expected_path, "%s/tests/fixtures/mlp/%s_expected.safetensors",
           QT_SOURCE_DIR, name);
  qt_err err;
  qt_err_clear(&err);
  qt_mlp_t *m = load(path, 0, 6, NULL);
  CU_ASSERT_PTR_NOT_NULL_FATAL(m);
  CU_ASSERT_EQUAL(qt_mlp_num_features(m), features);
  CU_ASSERT_EQUAL(qt_mlp_num_classes(m), classes);
  CU_ASSERT_EQUAL(qt_mlp_units(m), (long)depth);
  CU_ASSERT_EQUAL(qt_mlp_get_activation(m), act);
  qt_safetensors_t *st = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_safetensors_open(expected_path, &st, &err), 0);
  size_t batch = 6, nc = (size_t)classes;
  float *x = read_tensor(st, "inputs", batch * features);
  float *labels_f = read_tensor(st, "labels", batch);
  int labels[6];
  for (size_t i = 0; i < batch; i++) labels[i] = (int)labels_f[i];
  fprintf(stderr, "\n%s\n", name);

  qt_mlp_zero_grad(m);
  CU_ASSERT_EQUAL_FATAL(qt_mlp_forward(m, x, batch, &err), 0);
  double loss = 0.0;
  CU_ASSERT_EQUAL_FATAL(qt_mlp_loss(m, labels, NULL, 0.1, &loss, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_mlp_backward(m, &err), 0);
  float *want = read_tensor(st, "logits", batch * nc);
  expect_close("logits", qt_mlp_logits(m), want, batch * nc);
  free(want);
  want = read_tensor(st, "loss", 1);
  float got_loss = (float)loss;
  expect_close("loss", &got_loss, want, 1);
  free(want);
  char key[160];
  for (size_t i = 0; i < qt_mlp_tensor_count(m); i++) {
    qt_mlp_tensor t;
    qt_mlp_tensor_at(m, i, &t);
    snprintf(key, sizeof key, "grad.%s", t.name);
    want = read_tensor(st, key, t.numel);
    expect_close(key, t.grad, want, t.numel);
    free(want);
  }

  /* Three AdamW steps on the same batch, decay on the 2-d weights only. */
  size_t n_t = qt_mlp_tensor_count(m);
  float **mom = calloc(n_t, sizeof *mom), **vel = calloc(n_t, sizeof *vel);
  float step_losses[3];
  for (long step = 1; step <= 3; step++) {
    qt_mlp_zero_grad(m);
    CU_ASSERT_EQUAL_FATAL(qt_mlp_forward(m, x, batch, &err), 0);
    CU_ASSERT_EQUAL_FATAL(qt_mlp_loss(m, labels, NULL, 0.1, &loss, &err), 0);
    CU_ASSERT_EQUAL_FATAL(qt_mlp_backward(m, &err), 0);
    step_losses[step - 1] = (float)loss;
    for (size_t i = 0; i < n_t; i++) {
      qt_mlp_tensor t;
      qt_mlp_tensor_at(m, i, &t);
      if (!mom[i]) {
        mom[i] = calloc(t.numel, sizeof(float));
        vel[i] = calloc(t.numel, sizeof(float));
      }
      qt_adamw_params hp = qt_adamw_default_params();
      hp.lr = 1e-2;
      hp.weight_decay = t.decay ? 0.05 : 0.0;
      CU_ASSERT_EQUAL_FATAL(
          qt_cpu_adamw_step(t.data, t.grad, mom[i], vel[i], t.numel, &hp, step, &err), 0);
    }
  }
  want = read_tensor(st, "adamw_loss", 3);
  expect_close("adamw_loss", step_losses, want, 3);
  free(want);
  for (size_t i = 0; i < n_t; i++) {
    qt_mlp_tensor t;
    qt_mlp_tensor_at(m, i, &t);
    snprintf(key, sizeof key, "adamw.%s", t.name);
    want = read_tensor(st, key, t.numel);
    expect_close(key, t.data, want, t.numel);
    free(want);
    free(mom[i]);
    free(vel[i]);
  }
  free(mom);
  free(vel);
  free(x);
  free(labels_f);
  qt_safetensors_free(st);
  qt_mlp_free(m);
}

static void test_golden_relu(void) {
  run_golden_case("mlp_relu", 5, 4, 3, QT_MLP_ACTIVATION_RELU);
}

static void test_golden_gelu(void) {
  run_golden_case("mlp_gelu", 5, 3, 2, QT_MLP_ACTIVATION_GELU);
}

/* ------------------------------------------------------------------------- */
/* Freezing, save / load, new head                                            */
/* ------------------------------------------------------------------------- */

static void fill_batch(float *x, int *labels, size_t batch, size_t features, long classes) {
  for (size_t i = 0; i < batch * features; i++) x[i] = (float)uniform(-2.0, 2.0);
  for (size_t i = 0; i < batch; i++) labels[i] = (int)(i % (size_t)classes);
}

/* Every parameter (grads: every gradient) of m in one host array. */
static float *mlp_values(const qt_mlp_t *m, const qt__ops *ops, int grads, size_t *n) {
  size_t total = 0;
  for (size_t i = 0; i < qt_mlp_tensor_count(m); i++) {
    qt_mlp_tensor t;
    qt_mlp_tensor_at(m, i, &t);
    total += t.numel;
  }
  float *v = malloc(total * sizeof *v), *cursor = v;
  for (size_t i = 0; i < qt_mlp_tensor_count(m); i++) {
    qt_mlp_tensor t;
    qt_mlp_tensor_at(m, i, &t);
    CU_ASSERT_EQUAL(ops->download(cursor, grads ? t.grad : t.data, t.numel * sizeof *v, NULL), 0);
    cursor += t.numel;
  }
  *n = total;
  return v;
}

/* Gradients of one forward / backward (labels, no smoothing) into a copy. */
static float *gradients(qt_mlp_t *m, const float *x, const int *labels, size_t batch) {
  qt_err err;
  qt_err_clear(&err);
  qt_mlp_zero_grad(m);
  CU_ASSERT_EQUAL(qt_mlp_forward(m, x, batch, &err), 0);
  CU_ASSERT_EQUAL(qt_mlp_loss(m, labels, NULL, 0.0, NULL, &err), 0);
  CU_ASSERT_EQUAL(qt_mlp_backward(m, &err), 0);
  size_t n;
  return mlp_values(m, qt__ops_cpu(), 1, &n);
}

static void test_trainable_from(void) {
  qt_mlp_t *m = make_model("freeze", 4, 6, 3, 3, 1, QT_MLP_ACTIVATION_RELU, 8);
  CU_ASSERT_PTR_NOT_NULL_FATAL(m);
  float x[8 * 4];
  int labels[8];
  fill_batch(x, labels, 8, 4, 3);
  float *full = gradients(m, x, labels, 8);
  for (long from = 0; from <= 5; from++) {
    qt_mlp_set_trainable_from(m, from);
    float *g = gradients(m, x, labels, 8);
    size_t offset = 0;
    for (size_t i = 0; i < qt_mlp_tensor_count(m); i++) {
      qt_mlp_tensor t;
      qt_mlp_tensor_at(m, i, &t);
      int trains = t.head || t.unit >= from;
      double zero = 0.0, diff = 0.0;
      for (size_t k = 0; k < t.numel; k++) {
        zero += fabs(g[offset + k]);
        diff += fabs(g[offset + k] - full[offset + k]);
      }
      if (trains) {
        CU_ASSERT(diff == 0.0); /* the same arithmetic as the full backward */
        CU_ASSERT(zero > 0.0);
      } else {
        CU_ASSERT(zero == 0.0);
      }
      offset += t.numel;
    }
    free(g);
  }
  free(full);
  qt_mlp_free(m);
}

static void test_save_load_round_trip(void) {
  qt_err err;
  qt_err_clear(&err);
  qt_mlp_t *m = make_model("save_src", 5, 6, 2, 3, 1, QT_MLP_ACTIVATION_GELU, 4);
  CU_ASSERT_PTR_NOT_NULL_FATAL(m);
  /* Change the parameters so that the file is not the initial one. */
  for (size_t i = 0; i < qt_mlp_tensor_count(m); i++) {
    qt_mlp_tensor t;
    qt_mlp_tensor_at(m, i, &t);
    for (size_t k = 0; k < t.numel; k++) t.data[k] += (float)uniform(-0.1, 0.1);
  }
  char path[256];
  tmp_path("saved.safetensors", path, sizeof path);
  CU_ASSERT_EQUAL_FATAL(qt_mlp_save(m, path, &err), 0);
  qt_mlp_t *back = load(path, 0, 4, NULL);
  CU_ASSERT_PTR_NOT_NULL_FATAL(back);
  CU_ASSERT_EQUAL(qt_mlp_get_activation(back), QT_MLP_ACTIVATION_GELU);
  CU_ASSERT_EQUAL(qt_mlp_tensor_count(back), qt_mlp_tensor_count(m));
  for (size_t i = 0; i < qt_mlp_tensor_count(m); i++) {
    qt_mlp_tensor a, b;
    qt_mlp_tensor_at(m, i, &a);
    qt_mlp_tensor_at(back, i, &b);
    CU_ASSERT_STRING_EQUAL(a.name, b.name);
    CU_ASSERT_EQUAL(a.numel, b.numel);
    CU_ASSERT(memcmp(a.data, b.data, a.numel * sizeof(float)) == 0);
  }
  float x[4 * 5];
  for (size_t i = 0; i < 20; i++) x[i] = (float)uniform(-1.0, 1.0);
  CU_ASSERT_EQUAL(qt_mlp_forward(m, x, 4, &err), 0);
  CU_ASSERT_EQUAL(qt_mlp_forward(back, x, 4, &err), 0);
  CU_ASSERT(memcmp(qt_mlp_logits(m), qt_mlp_logits(back), 12 * sizeof(float)) == 0);
  /* The saved file passes the hub's layout check. */
  qt_model_summary s;
  CU_ASSERT_EQUAL(qt_model_inspect(path, QT_MODEL_FAMILY_MLP, NULL, &s, &err), 0);
  CU_ASSERT_EQUAL(s.depth, 2);
  CU_ASSERT_EQUAL(s.width, 6);
  CU_ASSERT_EQUAL(s.num_classes, 3);
  unlink(path);
  qt_mlp_free(m);
  qt_mlp_free(back);
}

static void test_new_head(void) {
  char path[512];
  snprintf(path, sizeof path, "%s/tests/fixtures/mlp/mlp_relu.safetensors", QT_SOURCE_DIR);
  qt_err err;
  qt_err_clear(&err);
  qt_mlp_load_params lp = qt_mlp_default_load_params();
  lp.num_classes = 7;
  qt_mlp_t *m = NULL;
  /* A new head needs an rng. */
  CU_ASSERT_EQUAL(qt_mlp_load(path, &lp, &m, &err), QT_EINVAL);
  CU_ASSERT_PTR_NULL(m);
  qt_rng_t *rng = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, 3, &err), 0);
  m = load(path, 7, 4, rng);
  qt_mlp_t *orig = load(path, 0, 4, NULL);
  /* The same class count keeps the checkpoint's head, without an rng. */
  qt_mlp_t *same = load(path, 4, 4, NULL);
  CU_ASSERT_PTR_NOT_NULL_FATAL(m);
  CU_ASSERT_PTR_NOT_NULL_FATAL(orig);
  CU_ASSERT_PTR_NOT_NULL_FATAL(same);
  CU_ASSERT_EQUAL(qt_mlp_num_classes(m), 7);
  CU_ASSERT_EQUAL(qt_mlp_num_classes(same), 4);
  qt_mlp_tensor hw, hb, ow, sw;
  CU_ASSERT_EQUAL_FATAL(qt_mlp_find_tensor(m, "head.weight", &hw), 0);
  CU_ASSERT_EQUAL_FATAL(qt_mlp_find_tensor(m, "head.bias", &hb), 0);
  CU_ASSERT_EQUAL_FATAL(qt_mlp_find_tensor(orig, "head.weight", &ow), 0);
  CU_ASSERT_EQUAL_FATAL(qt_mlp_find_tensor(same, "head.weight", &sw), 0);
  CU_ASSERT(memcmp(ow.data, sw.data, ow.numel * sizeof(float)) == 0);
  CU_ASSERT_EQUAL(hw.shape[0], 7);
  CU_ASSERT_EQUAL(hw.shape[1], 6);
  CU_ASSERT_EQUAL(hb.numel, 7);
  /* torch.nn.Linear: uniform(+-1/sqrt(6)), not all alike. */
  double bound = 1.0 / sqrt(6.0), lo = 1.0, hi = -1.0;
  for (size_t k = 0; k < hw.numel; k++) {
    CU_ASSERT(fabs(hw.data[k]) <= bound);
    lo = fmin(lo, hw.data[k]);
    hi = fmax(hi, hw.data[k]);
  }
  for (size_t k = 0; k < hb.numel; k++) CU_ASSERT(fabs(hb.data[k]) <= bound);
  CU_ASSERT(hi - lo > bound);
  /* The blocks are the checkpoint's. */
  for (size_t i = 0; i + 2 < qt_mlp_tensor_count(orig); i++) {
    qt_mlp_tensor a, b;
    qt_mlp_tensor_at(orig, i, &a);
    qt_mlp_tensor_at(m, i, &b);
    CU_ASSERT_STRING_EQUAL(a.name, b.name);
    CU_ASSERT(memcmp(a.data, b.data, a.numel * sizeof(float)) == 0);
  }
  qt_mlp_free(m);
  qt_mlp_free(orig);
  qt_mlp_free(same);
  qt_rng_free(rng);
}

static void test_load_errors(void) {
  qt_err err;
  qt_err_clear(&err);
  char path[256];
  tmp_path("bad.safetensors", path, sizeof path);
  size_t ws[2] = {4, 3}, bs[1] = {4}, hs[2] = {2, 4}, hbs[1] = {2};
  float v[16] = {0};
  qt_safetensors_tensor missing[3] = {{"blocks.0.fc.weight", QT_DTYPE_F32, 2, ws, v, NULL},
                                      {"head.weight", QT_DTYPE_F32, 2, hs, v, NULL},
                                      {"head.bias", QT_DTYPE_F32, 1, hbs, v, NULL}};
  CU_ASSERT_EQUAL_FATAL(qt_safetensors_write(path, missing, 3, NULL, 0, &err), 0);
  qt_mlp_load_params lp = qt_mlp_default_load_params();
  qt_mlp_t *m = NULL;
  CU_ASSERT_EQUAL(qt_mlp_load(path, &lp, &m, &err), QT_ESCHEMA);
  CU_ASSERT_PTR_NOT_NULL(strstr(qt_err_message(&err), "blocks.0.fc.bias"));
  CU_ASSERT_PTR_NULL(m);

  qt_safetensors_tensor full[4] = {{"blocks.0.fc.weight", QT_DTYPE_F32, 2, ws, v, NULL},
                                   {"blocks.0.fc.bias", QT_DTYPE_F32, 1, bs, v, NULL},
                                   {"head.weight", QT_DTYPE_F32, 2, hs, v, NULL},
                                   {"head.bias", QT_DTYPE_F32, 1, hbs, v, NULL}};
  qt_safetensors_pair meta[1] = {{"activation", "tanh"}};
  CU_ASSERT_EQUAL_FATAL(qt_safetensors_write(path, full, 4, meta, 1, &err), 0);
  CU_ASSERT_EQUAL(qt_mlp_load(path, &lp, &m, &err), QT_EFORMAT);
  CU_ASSERT_PTR_NOT_NULL(strstr(qt_err_message(&err), "tanh"));

  /* No head and no class count. */
  CU_ASSERT_EQUAL_FATAL(qt_safetensors_write(path, full, 2, NULL, 0, &err), 0);
  CU_ASSERT_EQUAL(qt_mlp_load(path, &lp, &m, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(qt_err_message(&err), "num_classes"));
  /* With one, the head is drawn: a headless backbone loads. */
  qt_rng_t *rng = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, 1, &err), 0);
  m = load(path, 5, 2, rng);
  CU_ASSERT_PTR_NOT_NULL(m);
  if (m) CU_ASSERT_EQUAL(qt_mlp_num_classes(m), 5);
  qt_mlp_free(m);
  qt_rng_free(rng);
  unlink(path);

  /* Calls out of order and bad arguments. */
  m = make_model("errors", 3, 4, 1, 2, 0, QT_MLP_ACTIVATION_RELU, 2);
  float x[9] = {0};
  int labels[3] = {0, 1, 2};
  CU_ASSERT_EQUAL(qt_mlp_loss(m, labels, NULL, 0.0, NULL, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_mlp_forward(m, x, 3, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_mlp_forward(m, x, 2, &err), 0);
  CU_ASSERT_EQUAL(qt_mlp_backward(m, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_mlp_loss(m, labels + 1, NULL, 0.0, NULL, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_mlp_loss(m, labels, NULL, 1.0, NULL, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_mlp_set_head_dropout(m, 1.0, NULL, &err), QT_EINVAL);
  qt_mlp_free(m);
}

/* ------------------------------------------------------------------------- */
/* Random initialization                                                      */
/* ------------------------------------------------------------------------- */

static void test_write_init(void) {
  qt_err err;
  qt_err_clear(&err);
  char p1[256], p2[256];
  tmp_path("init1", p1, sizeof p1);
  tmp_path("init2", p2, sizeof p2);
  qt_mlp_arch a = qt_mlp_default_arch();
  a.n_features = 20;
  a.width = 64;
  a.depth = 3;
  a.num_classes = 5;
  CU_ASSERT_EQUAL_FATAL(qt_mlp_write_init(&a, 11, p1, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_mlp_write_init(&a, 11, p2, &err), 0);
  /* Same arguments, same bytes. */
  FILE *f1 = fopen(p1, "rb"), *f2 = fopen(p2, "rb");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f1);
  CU_ASSERT_PTR_NOT_NULL_FATAL(f2);
  int same = 1, c1, c2;
  do {
    c1 = fgetc(f1);
    c2 = fgetc(f2);
    same = same && c1 == c2;
  } while (c1 != EOF && c2 != EOF);
  fclose(f1);
  fclose(f2);
  CU_ASSERT(same);
  qt_mlp_t *m = load(p1, 0, 4, NULL);
  CU_ASSERT_PTR_NOT_NULL_FATAL(m);
  CU_ASSERT_EQUAL(qt_mlp_tensor_count(m), 14);
  CU_ASSERT_EQUAL(qt_mlp_num_features(m), 20);
  CU_ASSERT_EQUAL(qt_mlp_feature_dim(m), 64);
  for (size_t i = 0; i < qt_mlp_tensor_count(m); i++) {
    qt_mlp_tensor t;
    qt_mlp_tensor_at(m, i, &t);
    if (strstr(t.name, ".norm.")) {
      float want = strstr(t.name, "weight") ? 1.0f : 0.0f;
      for (size_t k = 0; k < t.numel; k++) CU_ASSERT_EQUAL(t.data[k], want);
      CU_ASSERT_EQUAL(t.decay, 0);
      continue;
    }
    /* Linear: uniform(+-1/sqrt(fan_in)): within the bound, variance
     * bound^2 / 3 (a loose check on the 64-value bias vectors too). */
    size_t fan_in =
        strcmp(t.name, "blocks.0.fc.weight") == 0 || strcmp(t.name, "blocks.0.fc.bias") == 0 ? 20
                                                                                             : 64;
    double bound = 1.0 / sqrt((double)fan_in), var = 0.0;
    for (size_t k = 0; k < t.numel; k++) {
      CU_ASSERT(fabs(t.data[k]) <= bound);
      var += (double)t.data[k] * t.data[k];
    }
    var /= (double)t.numel;
    if (t.numel >= 60) CU_ASSERT(fabs(var / (bound * bound / 3.0) - 1.0) < 0.4);
    CU_ASSERT_EQUAL(t.decay, t.ndim == 2);
  }
  qt_mlp_free(m);
  a.depth = 0;
  CU_ASSERT_EQUAL(qt_mlp_write_init(&a, 11, p1, &err), QT_EINVAL);
  a.depth = 2;
  a.num_classes = 1;
  CU_ASSERT_EQUAL(qt_mlp_write_init(&a, 11, p1, &err), QT_EINVAL);
  unlink(p1);
  unlink(p2);
}

/* ------------------------------------------------------------------------- */
/* Behind qt_model                                                            */
/* ------------------------------------------------------------------------- */

static void test_model_wrappers(void) {
  char path[512];
  snprintf(path, sizeof path, "%s/tests/fixtures/mlp/mlp_relu.safetensors", QT_SOURCE_DIR);
  qt_err err;
  qt_err_clear(&err);
  qt_model_load_params lp = qt_model_default_load_params();
  lp.family = QT_MODEL_FAMILY_MLP;
  lp.max_batch = 6;
  qt_model_t *model = NULL;
  int rc = qt_model_load(path, &lp, &model, &err);
  if (rc) fprintf(stderr, "%s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT(qt_model_family_is_mlp(QT_MODEL_FAMILY_MLP));
  CU_ASSERT(!qt_model_family_is_mlp(QT_MODEL_FAMILY_RESNET));
  CU_ASSERT_EQUAL(qt_model_get_family(model), QT_MODEL_FAMILY_MLP);
  CU_ASSERT_PTR_NOT_NULL(qt_model_mlp(model));
  CU_ASSERT_PTR_NULL(qt_model_vit(model));
  CU_ASSERT_PTR_NULL(qt_model_cnn(model));
  CU_ASSERT_EQUAL(qt_model_units(model), 3);
  CU_ASSERT_EQUAL(qt_model_image_size(model), 0);
  CU_ASSERT_EQUAL(qt_model_num_classes(model), 4);
  CU_ASSERT_EQUAL(qt_model_feature_dim(model), 6);
  CU_ASSERT_EQUAL(qt_model_tensor_count(model), 12);
  CU_ASSERT_EQUAL(qt_model_set_stoch_norm(model, 0.5, NULL, &err), 0);

  /* Places: blocks.i is unit and layer i + 1, the head layer n + 1. */
  for (size_t i = 0; i < qt_model_tensor_count(model); i++) {
    qt_model_tensor t;
    qt_model_tensor_at(model, i, &t);
    CU_ASSERT_EQUAL(t.buffer, 0);
    CU_ASSERT_EQUAL(t.decay, t.ndim == 2);
    if (strncmp(t.name, "head.", 5) == 0) {
      CU_ASSERT_EQUAL(t.head, 1);
      CU_ASSERT_EQUAL(t.layer, 4);
    } else {
      long block = atol(t.name + 7);
      CU_ASSERT_EQUAL(t.head, 0);
      CU_ASSERT_EQUAL(t.unit, block + 1);
      CU_ASSERT_EQUAL(t.layer, block + 1);
    }
  }
  qt_model_tensor t;
  CU_ASSERT_EQUAL(qt_model_find_tensor(model, "blocks.1.norm.bias", &t), 0);
  CU_ASSERT_EQUAL(t.numel, 7);
  CU_ASSERT_EQUAL(qt_model_find_tensor(model, "blocks.2.norm.bias", &t), QT_ENOENT);

  /* The same numbers as qt_mlp itself (the golden test checks those). */
  qt_mlp_t *direct = load(path, 0, 6, NULL);
  CU_ASSERT_PTR_NOT_NULL_FATAL(direct);
  float x[6 * 5];
  int labels[6];
  fill_batch(x, labels, 6, 5, 4);
  float *want = gradients(direct, x, labels, 6);
  qt_model_zero_grad(model);
  CU_ASSERT_EQUAL_FATAL(qt_model_forward(model, x, 6, 1, &err), 0);
  CU_ASSERT(memcmp(qt_model_logits(model), qt_mlp_logits(direct), 24 * sizeof(float)) == 0);
  double loss = 0.0;
  CU_ASSERT_EQUAL_FATAL(qt_model_loss(model, labels, NULL, 0.0, &loss, &err), 0);
  CU_ASSERT(loss > 0.0);
  CU_ASSERT_EQUAL_FATAL(qt_model_backward(model, &err), 0);
  size_t offset = 0;
  for (size_t i = 0; i < qt_model_tensor_count(model); i++) {
    qt_model_tensor_at(model, i, &t);
    CU_ASSERT(memcmp(t.grad, want + offset, t.numel * sizeof(float)) == 0);
    offset += t.numel;
  }
  free(want);

  /* Freezing through the wrapper: only the head (n + 1). */
  qt_model_set_trainable_from(model, 4);
  qt_model_zero_grad(model);
  CU_ASSERT_EQUAL(qt_model_forward(model, x, 6, 1, &err), 0);
  CU_ASSERT_EQUAL(qt_model_loss(model, labels, NULL, 0.0, NULL, &err), 0);
  CU_ASSERT_EQUAL(qt_model_backward(model, &err), 0);
  for (size_t i = 0; i < qt_model_tensor_count(model); i++) {
    qt_model_tensor_at(model, i, &t);
    double sum = 0.0;
    for (size_t k = 0; k < t.numel; k++) sum += fabs(t.grad[k]);
    CU_ASSERT(t.head ? sum > 0.0 : sum == 0.0);
  }
  /* Hook and dropout through the wrapper. */
  CU_ASSERT_EQUAL(qt_model_set_feature_hook(model, 1, &err), 0);
  CU_ASSERT_EQUAL(qt_model_forward(model, x, 6, 0, &err), 0);
  size_t fb = 0;
  CU_ASSERT_PTR_NOT_NULL(qt_model_features(model, &fb));
  CU_ASSERT_EQUAL(fb, 6);
  CU_ASSERT_PTR_NOT_NULL(qt_model_feature_grad(model));
  CU_ASSERT_EQUAL(qt_model_set_head_dropout(model, 1.5, NULL, &err), QT_EINVAL);

  /* A new head through qt_model_load, and save. */
  qt_rng_t *rng = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, 5, &err), 0);
  lp.num_classes = 2;
  lp.rng = rng;
  lp.image_size = 224; /* ignored for an MLP */
  qt_model_t *other = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_model_load(path, &lp, &other, &err), 0);
  CU_ASSERT_EQUAL(qt_model_num_classes(other), 2);
  char saved[256];
  tmp_path("model_saved.safetensors", saved, sizeof saved);
  CU_ASSERT_EQUAL(qt_model_save(other, saved, &err), 0);
  qt_mlp_t *back = load(saved, 0, 2, NULL);
  CU_ASSERT_PTR_NOT_NULL(back);
  if (back) CU_ASSERT_EQUAL(qt_mlp_num_classes(back), 2);
  unlink(saved);
  qt_mlp_free(back);
  qt_model_free(other);
  qt_rng_free(rng);
  qt_mlp_free(direct);
  qt_model_free(model);
}

/* ------------------------------------------------------------------------- */
/* Standardized tabular batches                                               */
/* ------------------------------------------------------------------------- */

static void test_feature_stats_and_batches(void) {
  qt_err err;
  qt_err_clear(&err);
  char path[256];
  tmp_path("tab.csv", path, sizeof path);
  FILE *f = fopen(path, "w");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  /* a: 1, 2, 3, 6 (mean 3, population std sqrt(3.5)); b: constant 5;
   * c: -10, 10, -10, 10 (mean 0, std 10). */
  fprintf(f, "a,b,c,label\n1,5,-10,0\n2,5,10,1\n3,5,-10,0\n6,5,10,1\n");
  fclose(f);
  qt_dataset *ds = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_dataset_load_csv(path, NULL, NULL, 0, &ds, &err), 0);
  unlink(path);
  float mean[3], std[3];
  CU_ASSERT_EQUAL_FATAL(qt_dataset_feature_stats(ds, mean, std, &err), 0);
  QT_ASSERT_CLOSE(mean[0], 3.0, 1e-6);
  QT_ASSERT_CLOSE(std[0], sqrt(3.5), 1e-6);
  QT_ASSERT_CLOSE(mean[1], 5.0, 1e-6);
  QT_ASSERT_CLOSE(std[1], 1.0, 0.0); /* constant: 1, not 0 */
  QT_ASSERT_CLOSE(mean[2], 0.0, 1e-6);
  QT_ASSERT_CLOSE(std[2], 10.0, 1e-6);

  qt_preprocess_params pre = qt_preprocess_default_params();
  CU_ASSERT_PTR_NULL(pre.feature_mean);
  pre.feature_mean = mean;
  pre.feature_std = std;
  qt_batch_params bp = qt_batch_default_params();
  bp.batch_size = 4;
  bp.shuffle = 0;
  bp.augment = 0;
  qt_batch_iter_t *it = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_init(ds, &pre, NULL, &bp, &it, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_start(it, 0, 0, &err), 0);
  qt_batch b;
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_next(it, &b, &err), 1);
  CU_ASSERT_EQUAL(b.size, 4);
  CU_ASSERT_EQUAL(b.channels, 1);
  CU_ASSERT_EQUAL(b.height, 1);
  CU_ASSERT_EQUAL(b.width, 3);
  double col[3][2] = {{0.0, 0.0}, {0.0, 0.0}, {0.0, 0.0}};
  for (size_t i = 0; i < 4; i++) {
    for (size_t j = 0; j < 3; j++) {
      col[j][0] += b.inputs[i * 3 + j];
      col[j][1] += (double)b.inputs[i * 3 + j] * b.inputs[i * 3 + j];
    }
  }
  QT_ASSERT_CLOSE(b.inputs[0], (1.0 - 3.0) / sqrt(3.5), 1e-6);
  for (size_t j = 0; j < 3; j++) {
    QT_ASSERT_CLOSE(col[j][0] / 4.0, 0.0, 1e-6);
    QT_ASSERT_CLOSE(col[j][1] / 4.0, j == 1 ? 0.0 : 1.0, 1e-5);
  }
  qt_batch_iter_free(it);

  /* Without statistics the features pass as they are; a bad std is refused. */
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_init(ds, NULL, NULL, &bp, &it, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_start(it, 0, 0, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_next(it, &b, &err), 1);
  CU_ASSERT_EQUAL(b.inputs[0], 1.0f);
  CU_ASSERT_EQUAL(b.inputs[2], -10.0f);
  qt_batch_iter_free(it);
  std[2] = 0.0f;
  it = NULL;
  CU_ASSERT_EQUAL(qt_batch_iter_init(ds, &pre, NULL, &bp, &it, &err), QT_EINVAL);
  CU_ASSERT_PTR_NULL(it);
  pre.feature_std = NULL;
  CU_ASSERT_EQUAL(qt_batch_iter_init(ds, &pre, NULL, &bp, &it, &err), QT_EINVAL);
  qt_dataset_free(ds);
}

/* End to end: a synthetic XOR problem on features of scale 1000 around
 * 5000 (standardization needed), loaded from CSV, batched with the
 * training split's statistics, trained through qt_model with AdamW: the
 * MLP must fit it (a linear model cannot: at most about 0.5 accuracy). */
static void test_learns_xor_through_model(void) {
  qt_err err;
  qt_err_clear(&err);
  char csv[256], ckpt[256];
  tmp_path("xor.csv", csv, sizeof csv);
  tmp_path("xor.safetensors", ckpt, sizeof ckpt);
  FILE *f = fopen(csv, "w");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  fprintf(f, "x1,x2,noise,label\n");
  for (int i = 0; i < 256; i++) {
    double a = uniform(-1.0, 1.0), b = uniform(-1.0, 1.0);
    fprintf(f, "%.3f,%.3f,%.3f,%d\n", 5000.0 + 1000.0 * a, 5000.0 + 1000.0 * b, uniform(-3.0, 3.0),
            (a > 0.0) != (b > 0.0));
  }
  fclose(f);
  qt_dataset *ds = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_dataset_load_csv(csv, NULL, NULL, 0, &ds, &err), 0);
  unlink(csv);
  qt_mlp_arch a = qt_mlp_default_arch();
  a.n_features = 3;
  a.width = 32;
  a.depth = 2;
  a.num_classes = 2;
  CU_ASSERT_EQUAL_FATAL(qt_mlp_write_init(&a, 1, ckpt, &err), 0);
  qt_model_load_params lp = qt_model_default_load_params();
  lp.family = QT_MODEL_FAMILY_MLP;
  lp.max_batch = 32;
  qt_model_t *model = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_model_load(ckpt, &lp, &model, &err), 0);
  unlink(ckpt);

  float mean[3], std[3];
  CU_ASSERT_EQUAL_FATAL(qt_dataset_feature_stats(ds, mean, std, &err), 0);
  qt_preprocess_params pre = qt_preprocess_default_params();
  pre.feature_mean = mean;
  pre.feature_std = std;
  qt_batch_params bp = qt_batch_default_params();
  bp.batch_size = 32;
  bp.seed = 4;
  qt_batch_iter_t *it = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_init(ds, &pre, NULL, &bp, &it, &err), 0);
  size_t n_t = qt_model_tensor_count(model);
  float **mom = calloc(n_t, sizeof *mom), **vel = calloc(n_t, sizeof *vel);
  long step = 0;
  for (uint64_t epoch = 0; epoch < 40; epoch++) {
    CU_ASSERT_EQUAL_FATAL(qt_batch_iter_start(it, epoch, 0, &err), 0);
    qt_batch b;
    while (qt_batch_iter_next(it, &b, &err) == 1) {
      qt_model_zero_grad(model);
      CU_ASSERT_EQUAL_FATAL(qt_model_forward(model, b.inputs, b.size, 1, &err), 0);
      CU_ASSERT_EQUAL_FATAL(qt_model_loss(model, NULL, b.targets, 0.0, NULL, &err), 0);
      CU_ASSERT_EQUAL_FATAL(qt_model_backward(model, &err), 0);
      step++;
      for (size_t i = 0; i < n_t; i++) {
        qt_model_tensor t;
        qt_model_tensor_at(model, i, &t);
        if (!mom[i]) {
          mom[i] = calloc(t.numel, sizeof(float));
          vel[i] = calloc(t.numel, sizeof(float));
        }
        qt_adamw_params hp = qt_adamw_default_params();
        hp.lr = 1e-2;
        hp.weight_decay = t.decay ? 0.01 : 0.0;
        CU_ASSERT_EQUAL_FATAL(
            qt_cpu_adamw_step(t.data, t.grad, mom[i], vel[i], t.numel, &hp, step, &err), 0);
      }
    }
  }
  /* Accuracy on the whole set, in order. */
  bp.shuffle = 0;
  bp.augment = 0;
  qt_batch_iter_free(it);
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_init(ds, &pre, NULL, &bp, &it, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_start(it, 0, 0, &err), 0);
  qt_batch b;
  size_t right = 0, total = 0;
  while (qt_batch_iter_next(it, &b, &err) == 1) {
    CU_ASSERT_EQUAL_FATAL(qt_model_forward(model, b.inputs, b.size, 0, &err), 0);
    const float *z = qt_model_logits(model);
    for (size_t i = 0; i < b.size; i++, total++) right += (z[2 * i + 1] > z[2 * i]) == b.labels[i];
  }
  double accuracy = (double)right / (double)total;
  fprintf(stderr, "\n  XOR: %ld steps, training accuracy %.3f\n", step, accuracy);
  CU_ASSERT(accuracy >= 0.9);
  for (size_t i = 0; i < n_t; i++) {
    free(mom[i]);
    free(vel[i]);
  }
  free(mom);
  free(vel);
  qt_batch_iter_free(it);
  qt_model_free(model);
  qt_dataset_free(ds);
}

/* The run API on tabular data: an MLP run on a CSV file learns XOR,
 * resumes bit for bit, and an image family on the same data is refused. */
static void test_run_on_csv(void) {
  qt_err err;
  qt_err_clear(&err);
  char csv[256], ckpt[256], saved[256];
  tmp_path("run-xor.csv", csv, sizeof csv);
  tmp_path("run-xor.safetensors", ckpt, sizeof ckpt);
  tmp_path("run-xor-e1.safetensors", saved, sizeof saved);
  FILE *f = fopen(csv, "w");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  fprintf(f, "x1,x2,noise,label\n");
  for (int i = 0; i < 400; i++) {
    double a = uniform(-1.0, 1.0), b = uniform(-1.0, 1.0);
    fprintf(f, "%.3f,%.3f,%.3f,%d\n", 100.0 * a, b, uniform(-3.0, 3.0), (a > 0.0) != (b > 0.0));
  }
  fclose(f);
  qt_dataset *all = NULL;
  qt_data_splits splits = {0};
  CU_ASSERT_EQUAL_FATAL(qt_dataset_load_csv(csv, NULL, NULL, 0, &all, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_dataset_split(all, 0.2, 0.0, 3, &splits.train, &splits.val, NULL, &err),
                        0);
  qt_dataset_free(all);
  qt_mlp_arch a = qt_mlp_default_arch();
  a.n_features = 3;
  a.width = 32;
  a.depth = 2;
  a.num_classes = 2;
  CU_ASSERT_EQUAL_FATAL(qt_mlp_write_init(&a, 1, ckpt, &err), 0);
  qt_run_spec s = qt_run_default_spec();
  s.checkpoint = ckpt;
  s.family = QT_MODEL_FAMILY_MLP;
  for (int c = 0; c < 3; c++) {
    s.mean[c] = 0.0;
    s.std[c] = 1.0;
  }
  s.data = &splits;
  s.epochs = 30;
  s.batch_size = 32;
  s.smoothing = 0.0;
  s.optim.lr = 1e-2;
  qt_run_t *run = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_run_init(&s, &run, &err), 0);
  qt_run_epoch_result r;
  for (long e = 0; e < s.epochs; e++) CU_ASSERT_EQUAL_FATAL(qt_run_epoch(run, &r, &err), 0);
  CU_ASSERT(r.score > 0.9);
  qt_run_free(run);

  /* Resume: 2 epochs in one go equal 1 + save/load + 1. */
  s.epochs = 2;
  qt_run_t *straight = NULL, *first = NULL, *resumed = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_run_init(&s, &straight, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_run_init(&s, &first, &err), 0);
  for (int e = 0; e < 2; e++) CU_ASSERT_EQUAL_FATAL(qt_run_epoch(straight, &r, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_run_epoch(first, &r, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_run_save(first, saved, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_run_load(saved, &s, &resumed, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_run_epoch(resumed, &r, &err), 0);
  qt_model_t *ma = qt_run_model(straight), *mb = qt_run_model(resumed);
  for (size_t i = 0; i < qt_model_tensor_count(ma); i++) {
    qt_model_tensor ta, tb;
    qt_model_tensor_at(ma, i, &ta);
    qt_model_tensor_at(mb, i, &tb);
    CU_ASSERT(memcmp(ta.data, tb.data, ta.numel * sizeof(float)) == 0);
  }
  qt_run_free(straight);
  qt_run_free(first);
  qt_run_free(resumed);

  /* An image family on tabular data is refused. */
  s.family = QT_MODEL_FAMILY_RESNET;
  s.image_size = 32;
  CU_ASSERT_EQUAL(qt_run_init(&s, &run, &err), QT_EINVAL);
  qt_data_splits_free(&splits);
  unlink(csv);
  unlink(ckpt);
  unlink(saved);
}

/* ------------------------------------------------------------------------- */
/* On a backend                                                               */
/* ------------------------------------------------------------------------- */

static void expect_same_model(const qt_mlp_t *got, const qt__ops *ops, const qt_mlp_t *want,
                              int grads) {
  size_t n_got, n_want;
  float *a = mlp_values(got, ops, grads, &n_got),
        *b = mlp_values(want, qt__ops_cpu(), grads, &n_want);
  CU_ASSERT_EQUAL_FATAL(n_got, n_want);
  CU_ASSERT(memcmp(a, b, n_got * sizeof *a) == 0);
  free(a);
  free(b);
}

/* One step on both models: forward (step 0 with labels and smoothing,
 * else soft targets), the same feature gradient added, backward, and
 * p -= 0.05 g on every tensor through each model's backend; the losses,
 * logits, features and gradients must be equal. */
static void step_both(qt_mlp_t *cpu, qt_mlp_t *dev, const qt__ops *ops, int step) {
  enum { BATCH = 5, FEATURES = 4, CLASSES = 3, WIDTH = 6 };
  float x[BATCH * FEATURES], soft[BATCH * CLASSES];
  int labels[BATCH];
  fill_batch(x, labels, BATCH, FEATURES, CLASSES);
  for (size_t i = 0; i < BATCH * CLASSES; i++) soft[i] = (float)uniform(0.0, 1.0);
  qt_mlp_t *models[2] = {cpu, dev};
  double loss[2];
  for (int k = 0; k < 2; k++) {
    qt_mlp_zero_grad(models[k]);
    CU_ASSERT_EQUAL_FATAL(qt_mlp_forward(models[k], x, BATCH, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(qt_mlp_loss(models[k], step == 0 ? labels : NULL, step == 0 ? NULL : soft,
                                      step == 0 ? 0.1 : 0.0, &loss[k], NULL),
                          0);
    float *dfeat = qt_mlp_feature_grad(models[k]);
    for (size_t i = 0; i < BATCH * WIDTH; i++) dfeat[i] = 0.01f * (float)((i * 7) % 5) - 0.02f;
    CU_ASSERT_EQUAL_FATAL(qt_mlp_backward(models[k], NULL), 0);
  }
  CU_ASSERT(loss[0] == loss[1]);
  CU_ASSERT(memcmp(qt_mlp_logits(cpu), qt_mlp_logits(dev), BATCH * CLASSES * sizeof(float)) == 0);
  size_t bc, bd;
  const float *fc = qt_mlp_features(cpu, &bc), *fd = qt_mlp_features(dev, &bd);
  CU_ASSERT_FATAL(fc && fd && bc == BATCH && bd == BATCH);
  CU_ASSERT(memcmp(fc, fd, BATCH * WIDTH * sizeof(float)) == 0);
  expect_same_model(dev, ops, cpu, 1);
  for (int k = 0; k < 2; k++) {
    const qt__ops *o = k ? ops : qt__ops_cpu();
    for (size_t i = 0; i < qt_mlp_tensor_count(models[k]); i++) {
      qt_mlp_tensor t;
      qt_mlp_tensor_at(models[k], i, &t);
      CU_ASSERT_EQUAL(o->axpy(t.data, -0.05f, t.grad, t.numel, NULL), 0);
    }
  }
  expect_same_model(dev, ops, cpu, 0);
}

static void test_fake_device(void) {
  const qt__ops *fake = fake_device_ops();
  qt_mlp_t *cpu = make_model("dev-cpu", 4, 6, 3, 3, 1, QT_MLP_ACTIVATION_GELU, 8);
  qt_mlp_t *dev = make_model("dev-fake", 4, 6, 3, 3, 1, QT_MLP_ACTIVATION_GELU, 8);
  CU_ASSERT_PTR_NOT_NULL_FATAL(cpu);
  CU_ASSERT_PTR_NOT_NULL_FATAL(dev);
  /* Out of memory at each allocation of the move: the model stays on the
   * CPU, as it was, and nothing is held. */
  int failures = 0;
  for (long k = 0; k < 20; k++) {
    fake_device.fail_after = k;
    int rc = qt__mlp_set_ops(dev, fake, NULL);
    fake_device.fail_after = -1;
    if (rc == 0) break;
    failures++;
    CU_ASSERT_EQUAL(rc, QT_ENOMEM);
    CU_ASSERT_EQUAL(fake_blocks_held(), 0);
    expect_same_model(dev, qt__ops_cpu(), cpu, 0);
  }
  CU_ASSERT(failures == 10); /* the ten arrays of the passes */
  CU_ASSERT(fake_blocks_held() > 0);
  /* Dropout from two streams of one seed, the hook on, the first block
   * frozen. */
  qt_rng_t *rc_rng = NULL, *rd_rng = NULL;
  CU_ASSERT_FATAL(qt_rng_init(&rc_rng, 3, NULL) == 0 && qt_rng_init(&rd_rng, 3, NULL) == 0);
  qt_mlp_t *models[2] = {cpu, dev};
  for (int k = 0; k < 2; k++) {
    CU_ASSERT_EQUAL(qt_mlp_set_head_dropout(models[k], 0.3, k ? rd_rng : rc_rng, NULL), 0);
    CU_ASSERT_EQUAL(qt_mlp_set_feature_hook(models[k], 1, NULL), 0);
    qt_mlp_set_trainable_from(models[k], 2);
  }
  step_both(cpu, dev, fake, 0);
  step_both(cpu, dev, fake, 1);
  /* Saved from the device, the checkpoint has the CPU model's values. */
  char path[256];
  tmp_path("dev-saved.safetensors", path, sizeof path);
  CU_ASSERT_EQUAL_FATAL(qt_mlp_save(dev, path, NULL), 0);
  qt_mlp_t *saved = load(path, 0, 8, NULL);
  CU_ASSERT_PTR_NOT_NULL_FATAL(saved);
  expect_same_model(saved, qt__ops_cpu(), cpu, 0);
  qt_mlp_free(saved);
  unlink(path);
  /* Back on the CPU, it trains on as its twin. */
  CU_ASSERT_EQUAL(qt__mlp_set_ops(dev, qt__ops_cpu(), NULL), 0);
  CU_ASSERT_EQUAL(fake_blocks_held(), 0);
  step_both(cpu, dev, qt__ops_cpu(), 1);
  /* Without a GPU, a CUDA move is QT_ENODEV and leaves the model. */
  int count = 0;
  CU_ASSERT_EQUAL(qt_cuda_device_count(&count, NULL), 0);
  if (count == 0) CU_ASSERT_EQUAL(qt_mlp_to_backend(dev, QT_BACKEND_KIND_CUDA, NULL), QT_ENODEV);
  step_both(cpu, dev, qt__ops_cpu(), 1);
  qt_mlp_free(cpu);
  qt_mlp_free(dev);
  qt_rng_free(rc_rng);
  qt_rng_free(rd_rng);
}

static const qt_test_case cases[] = {
    {"gradients: ReLU, LayerNorm, labels with smoothing", test_gradients_relu_layernorm},
    {"gradients: GELU without norm", test_gradients_gelu_plain},
    {"gradients: soft targets, head dropout, feature hook",
     test_gradients_soft_targets_dropout_hook},
    {"gradients: one block", test_gradients_depth_one},
    {"golden: ReLU MLP against PyTorch (grads, 3 AdamW steps)", test_golden_relu},
    {"golden: GELU MLP against PyTorch (grads, 3 AdamW steps)", test_golden_gelu},
    {"set_trainable_from leaves frozen blocks without gradients", test_trainable_from},
    {"save / load round trip", test_save_load_round_trip},
    {"a new head for another class count", test_new_head},
    {"load errors and calls out of order", test_load_errors},
    {"write_init: torch.nn initialization, deterministic", test_write_init},
    {"qt_model wrappers for family mlp", test_model_wrappers},
    {"feature statistics and standardized batches", test_feature_stats_and_batches},
    {"learns XOR from standardized CSV features through qt_model", test_learns_xor_through_model},
    {"the run API on a CSV file: learns, resumes, refuses image families", test_run_on_csv},
    {"on a fake device: the CPU's numbers bit for bit, moves, save", test_fake_device},
    {NULL, NULL}};

QT_TEST_MAIN("mlp", cases)

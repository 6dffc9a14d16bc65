/*
 * test_methods.c - the fine-tuning methods that pull the weights toward a
 * reference theta0 (qt_optim.c): decay kinds and their names, L2-SP
 * (hand-computed penalty, gradient against finite differences), Selective
 * Projection Decay (one step against the formula of specs/algorithms.md
 * section 2 computed here in double, the properties of the issue: untouched
 * when c >= 0, lambda = 1 restores the previous radius, no projection at
 * step 1, SGD and the theta0 = 0 mode, and a golden sequence from a PyTorch
 * transcription of the official adamSPD.py made by
 * tools/make-spd-fixture.py), SFA's schedule and average, and the feature
 * regularizers BSS and DELTA (qt_methods_reg.c: hand values, finite
 * differences against double references, a tiny ViT's whole gradient
 * through the feature hook, and their runs with save/resume on a small
 * fixture of their own). The run-level
 * wiring (L2-SP, SPD and SFA inside qt_run_epoch, save/resume) is in
 * test_run.c, which has the model and data fixtures.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune.h"
#include "qt_test.h"
#include "qt_test_patterns.h"

/* ------------------------------------------------------------------------- */
/* Decay kinds and the space's names                                          */
/* ------------------------------------------------------------------------- */

static void test_decay_kinds(void) {
  qt_decay_kind k;
  qt_err err;
  const char *names[] = {"weight_decay", "none", "l2sp", "spd"};
  for (int i = 0; i < 4; i++) {
    CU_ASSERT_EQUAL(qt_decay_kind_parse(names[i], &k, &err), 0);
    CU_ASSERT_EQUAL((int)k, i);
    CU_ASSERT_STRING_EQUAL(qt_decay_kind_name(k), names[i]);
  }
  CU_ASSERT_EQUAL(qt_decay_kind_parse("None", &k, &err), 0);
  CU_ASSERT_EQUAL(k, QT_DECAY_KIND_NONE);
  CU_ASSERT_EQUAL(qt_decay_kind_parse("l2", &k, &err), QT_EINVAL);
  CU_ASSERT_STRING_EQUAL(qt_decay_kind_name((qt_decay_kind)9), "unknown");

  /* Which coefficient goes where. */
  qt_optim_params p = qt_optim_default_params();
  CU_ASSERT_EQUAL(p.decay, QT_DECAY_KIND_WEIGHT_DECAY);
  p.weight_decay = 0.3;
  p.sp_reg = 0.02;
  QT_ASSERT_CLOSE(qt_optim_zero_decay(&p), 0.3, 0.0);
  QT_ASSERT_CLOSE(qt_optim_l2sp_coefficient(&p), 0.02, 0.0);
  p.decay = QT_DECAY_KIND_L2SP;
  QT_ASSERT_CLOSE(qt_optim_zero_decay(&p), 0.0, 0.0);
  QT_ASSERT_CLOSE(qt_optim_l2sp_coefficient(&p), 0.32, 1e-15);
  p.decay = QT_DECAY_KIND_SPD;
  QT_ASSERT_CLOSE(qt_optim_zero_decay(&p), 0.0, 0.0);
  QT_ASSERT_CLOSE(qt_optim_l2sp_coefficient(&p), 0.02, 0.0);
  p.decay = QT_DECAY_KIND_NONE;
  QT_ASSERT_CLOSE(qt_optim_zero_decay(&p), 0.0, 0.0);
  CU_ASSERT_EQUAL(qt_optim_params_check(&p, &err), 0);
  p.sp_reg = -1.0;
  CU_ASSERT_EQUAL(qt_optim_params_check(&p, &err), QT_EINVAL);
  p.sp_reg = 0.0;
  p.decay = (qt_decay_kind)7;
  CU_ASSERT_EQUAL(qt_optim_params_check(&p, &err), QT_EINVAL);
}

static void test_spec_set_methods(void) {
  qt_run_spec s = qt_run_default_spec();
  qt_err err;
  /* decay and decay_strength in either order. */
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "decay_strength", "0.05", &err), 0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "decay", "l2sp", &err), 0);
  CU_ASSERT_EQUAL(s.optim.decay, QT_DECAY_KIND_L2SP);
  QT_ASSERT_CLOSE(qt_optim_l2sp_coefficient(&s.optim), 0.05, 1e-15);
  QT_ASSERT_CLOSE(qt_optim_zero_decay(&s.optim), 0.0, 0.0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "decay", "spd", &err), 0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "decay_strength", "0.5", &err), 0);
  CU_ASSERT_EQUAL(s.optim.decay, QT_DECAY_KIND_SPD);
  QT_ASSERT_CLOSE(s.optim.weight_decay, 0.5, 0.0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "decay", "weight_decay", &err), 0);
  QT_ASSERT_CLOSE(qt_optim_zero_decay(&s.optim), 0.5, 0.0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "decay", "none", &err), 0);
  QT_ASSERT_CLOSE(qt_optim_zero_decay(&s.optim), 0.0, 0.0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "decay", "l1", &err), QT_EINVAL);
  /* Quick-Tune's sp_reg: any value >= 0 (checked at init). */
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "sp_reg", "0.01", &err), 0);
  QT_ASSERT_CLOSE(s.optim.sp_reg, 0.01, 0.0);
  /* SFA. */
  CU_ASSERT_EQUAL(s.sfa, 0);
  QT_ASSERT_CLOSE(s.sfa_p, 0.25, 0.0);
  QT_ASSERT_CLOSE(s.sfa_beta, 0.5, 0.0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "sfa", "true", &err), 0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "sfa_p", "0.1", &err), 0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "sfa_beta", "0.7", &err), 0);
  CU_ASSERT_EQUAL(s.sfa, 1);
  QT_ASSERT_CLOSE(s.sfa_p, 0.1, 0.0);
  QT_ASSERT_CLOSE(s.sfa_beta, 0.7, 0.0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "sfa_beta", "half", &err), QT_EINVAL);
  /* LoRA. */
  CU_ASSERT_EQUAL(s.adapter, QT_ADAPTER_KIND_NONE);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "adapter", "lora", &err), 0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "adapter_rank", "4", &err), 0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "adapter_alpha", "16", &err), 0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "adapter_layers", "attention", &err), 0);
  CU_ASSERT_EQUAL(s.adapter, QT_ADAPTER_KIND_LORA);
  CU_ASSERT_EQUAL(s.adapter_rank, 4);
  QT_ASSERT_CLOSE(s.adapter_alpha, 16.0, 0.0);
  CU_ASSERT_EQUAL(s.adapter_attention_only, 1);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "adapter_layers", "mlp", &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "adapter", "none", &err), 0);
  CU_ASSERT_EQUAL(s.adapter, QT_ADAPTER_KIND_NONE);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "adapter", "rosa", &err), 0);
  CU_ASSERT_EQUAL(s.adapter, QT_ADAPTER_KIND_ROSA);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "adapter", "dora", &err), QT_EINVAL);
  /* Co-Tuning (runs in test_cotuning.c). */
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "cotuning_reg", "1", &err), 0);
  QT_ASSERT_CLOSE(s.cotuning_reg, 1.0, 0.0);
  s.cotuning_reg = 0.0;
  /* GOODFIT. */
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "opt", "goodfit", &err), 0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "goodfit_n_ref", "2", &err), 0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "goodfit_lr_ref_ratio", "0.5", &err), 0);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "goodfit_main", "sgd", &err), 0);
  CU_ASSERT_EQUAL(s.goodfit, 1);
  CU_ASSERT_EQUAL(s.goodfit_n_ref, 2);
  QT_ASSERT_CLOSE(s.goodfit_lr_ref_ratio, 0.5, 0.0);
  CU_ASSERT_EQUAL(s.goodfit_main, QT_OPTIM_KIND_SGD);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "goodfit_main", "goodfit", &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, "opt", "adam", &err), 0);
  CU_ASSERT_EQUAL(s.goodfit, 0);
}

/* ------------------------------------------------------------------------- */
/* L2-SP                                                                      */
/* ------------------------------------------------------------------------- */

static void test_l2sp_values(void) {
  float x[3] = {1.0f, -2.0f, 0.5f}, x0[3] = {0.5f, -1.0f, 0.5f};
  /* c ||x - x0||^2 with no 1/2: 0.1 * (0.25 + 1 + 0) = 0.125. */
  QT_ASSERT_CLOSE(qt_optim_l2sp_penalty(x, x0, 3, 0.1), 0.125, 1e-12);
  float g[3] = {1.0f, 1.0f, 1.0f};
  qt_optim_l2sp_gradient(g, x, x0, 3, 0.1);
  QT_ASSERT_CLOSE(g[0], 1.0 + 2 * 0.1 * 0.5, 1e-7);
  QT_ASSERT_CLOSE(g[1], 1.0 - 2 * 0.1 * 1.0, 1e-7);
  QT_ASSERT_CLOSE(g[2], 1.0, 0.0);
}

/* The gradient against central differences of the penalty. */
static void test_l2sp_finite_differences(void) {
  enum { N = 16 };
  float x[N], x0[N], g[N];
  qt_rng_t *rng = NULL;
  CU_ASSERT_FATAL(qt_rng_init(&rng, 3, NULL) == 0);
  for (int i = 0; i < N; i++) {
    x[i] = (float)(2.0 * qt_rng_uniform(rng) - 1.0);
    x0[i] = (float)(2.0 * qt_rng_uniform(rng) - 1.0);
    g[i] = 0.0f;
  }
  qt_rng_free(rng);
  const double c = 0.37, h = 1.0 / 64.0; /* h exact in float */
  qt_optim_l2sp_gradient(g, x, x0, N, c);
  for (int i = 0; i < N; i++) {
    float keep = x[i];
    x[i] = keep + (float)h;
    double up = qt_optim_l2sp_penalty(x, x0, N, c);
    x[i] = keep - (float)h;
    double down = qt_optim_l2sp_penalty(x, x0, N, c);
    x[i] = keep;
    double fd = (up - down) / (2.0 * h);
    QT_ASSERT_CLOSE(g[i], fd, 1e-5 * (1.0 + fabs(fd)));
  }
}

/* ------------------------------------------------------------------------- */
/* Selective Projection Decay                                                 */
/* ------------------------------------------------------------------------- */

/* The reference: specs/algorithms.md section 2.1, in double. */
static double spd_reference(double lr, double b1, double b2, double eps, double lambda, long t,
                            double *x, const double *g, const double *x0, double *m, double *v,
                            size_t n) {
  double c = 0.0, gamma = 0.0;
  for (size_t i = 0; i < n; i++) {
    c -= g[i] * (x[i] - x0[i]);
    gamma += (x[i] - x0[i]) * (x[i] - x0[i]);
  }
  gamma = sqrt(gamma);
  double bc1 = 1.0 - pow(b1, (double)t), bc2 = 1.0 - pow(b2, (double)t);
  for (size_t i = 0; i < n; i++) {
    m[i] = b1 * m[i] + (1.0 - b1) * g[i];
    v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
    double denom = sqrt(v[i]) / sqrt(bc2) + eps;
    x[i] -= lr / bc1 * m[i] / denom;
  }
  if (!(c < 0.0)) return 0.0;
  double gnew = 0.0;
  for (size_t i = 0; i < n; i++) gnew += (x[i] - x0[i]) * (x[i] - x0[i]);
  gnew = sqrt(gnew);
  double r = (gnew - gamma) / gnew;
  r = r < 0.0 ? 0.0 : (r > 1.0 ? 1.0 : r);
  for (size_t i = 0; i < n; i++) x[i] -= lambda * r * (x[i] - x0[i]);
  return r;
}

/* An Adam state whose momentum pushes the tensor outward along the
 * coordinates 2 and 3, while the new gradient (coordinate 0) points along
 * the deviation (c < 0): the step still grows the deviation, so SPD
 * projects. */
static void spd_case(float x[4], float g[4], float x0[4], float m[4], float v[4]) {
  const float xs[4] = {1.0f, 1.0f, 0.2f, -0.2f}, gs[4] = {0.3f, 0.0f, 0.01f, -0.01f};
  const float ms[4] = {0.0f, 0.0f, 2.0f, 2.0f}, vs[4] = {0.01f, 0.01f, 0.0004f, 0.0004f};
  memcpy(x, xs, sizeof xs);
  memcpy(g, gs, sizeof gs);
  memcpy(m, ms, sizeof ms);
  memcpy(v, vs, sizeof vs);
  for (int i = 0; i < 4; i++) x0[i] = 0.25f * (float)i;
}

static void test_spd_one_step(void) {
  qt_optim_params p = qt_optim_default_params();
  p.kind = QT_OPTIM_KIND_ADAM;
  p.decay = QT_DECAY_KIND_SPD;
  p.weight_decay = 0.6;
  float x[4], g[4], x0[4], m[4], v[4];
  spd_case(x, g, x0, m, v);
  double xd[4], gd[4], x0d[4], md[4], vd[4];
  for (int i = 0; i < 4; i++) {
    xd[i] = x[i];
    gd[i] = g[i];
    x0d[i] = x0[i];
    md[i] = m[i];
    vd[i] = v[i];
  }
  const long t = 5;
  double r_want = spd_reference(0.05, 0.9, 0.999, 1e-8, 0.6, t, xd, gd, x0d, md, vd, 4);
  double r = qt_optim_spd_step(&p, 0.05, t, x, g, x0, m, v, 4);
  CU_ASSERT(r_want > 0.05 && r_want < 1.0); /* the case does project */
  QT_ASSERT_CLOSE(r, r_want, 1e-6);
  for (int i = 0; i < 4; i++) {
    QT_ASSERT_CLOSE(x[i], xd[i], 1e-6);
    QT_ASSERT_CLOSE(m[i], md[i], 1e-7);
    QT_ASSERT_CLOSE(v[i], vd[i], 1e-8);
  }
  /* AdamW gives the same: SPD replaces the decoupled decay. */
  float y[4], h[4], y0[4], a[4], b[4];
  spd_case(y, h, y0, a, b);
  p.kind = QT_OPTIM_KIND_ADAMW;
  qt_optim_spd_step(&p, 0.05, t, y, h, y0, a, b, 4);
  CU_ASSERT(memcmp(x, y, sizeof x) == 0);
}

/* c >= 0 (the negative gradient points along the deviation): the result is
 * the plain optimizer step without decay, bit for bit. */
static void test_spd_untouched_when_aligned(void) {
  qt_optim_params p = qt_optim_default_params();
  p.kind = QT_OPTIM_KIND_ADAM;
  p.decay = QT_DECAY_KIND_SPD;
  p.weight_decay = 1.0;
  float x[4], g[4], x0[4], m[4], v[4];
  spd_case(x, g, x0, m, v);
  for (int i = 0; i < 4; i++) g[i] = -g[i]; /* now <g, x - x0> < 0: c > 0 */
  float y[4], m2[4], v2[4];
  memcpy(y, x, sizeof x);
  memcpy(m2, m, sizeof m);
  memcpy(v2, v, sizeof v);
  double r = qt_optim_spd_step(&p, 0.05, 5, x, g, x0, m, v, 4);
  CU_ASSERT_EQUAL(r, 0.0);
  qt_optim_params plain = p;
  plain.decay = QT_DECAY_KIND_NONE;
  qt_optim_tensor_step(&plain, 0.05, 1, 5, y, g, m2, v2, 4);
  CU_ASSERT(memcmp(x, y, sizeof x) == 0);
  CU_ASSERT(memcmp(m, m2, sizeof m) == 0);
  /* At step 1 theta = theta0, so c = 0: no projection either. */
  float z[3] = {0.5f, -0.5f, 1.0f}, z0[3] = {0.5f, -0.5f, 1.0f}, gz[3] = {1.0f, 2.0f, -1.0f};
  float mz[3] = {0}, vz[3] = {0};
  CU_ASSERT_EQUAL(qt_optim_spd_step(&p, 0.1, 1, z, gz, z0, mz, vz, 3), 0.0);
  QT_ASSERT_CLOSE(z[0], 0.5 - 0.1, 1e-6); /* Adam's first step: lr * sign(g) */
}

/* lambda = 1 ends the step on the sphere of the previous deviation. */
static void test_spd_lambda_one_restores_radius(void) {
  qt_optim_params p = qt_optim_default_params();
  p.kind = QT_OPTIM_KIND_ADAM;
  p.decay = QT_DECAY_KIND_SPD;
  p.weight_decay = 1.0;
  float x[4], g[4], x0[4], m[4], v[4];
  spd_case(x, g, x0, m, v);
  double before = 0.0;
  for (int i = 0; i < 4; i++) before += (double)(x[i] - x0[i]) * (x[i] - x0[i]);
  double r = qt_optim_spd_step(&p, 0.05, 5, x, g, x0, m, v, 4);
  CU_ASSERT(r > 0.0);
  double after = 0.0;
  for (int i = 0; i < 4; i++) after += (double)(x[i] - x0[i]) * (x[i] - x0[i]);
  QT_ASSERT_CLOSE(sqrt(after), sqrt(before), 1e-6);
}

/* SGD (hand-computed) and the theta0 = 0 mode (ref NULL). */
static void test_spd_sgd_and_zero_reference(void) {
  qt_optim_params p = qt_optim_default_params();
  p.kind = QT_OPTIM_KIND_SGD;
  p.decay = QT_DECAY_KIND_SPD;
  p.weight_decay = 0.5;
  /* theta - theta0 = (1, 0), g = (1, 10): c = -1 < 0. The step to
   * theta~ - theta0 = (0, -10) grows the radius from 1 to 10: r = 0.9,
   * theta~ -= 0.45 (theta~ - theta0) gives (0, -5.5) + theta0. */
  float x[2] = {3.0f, 2.0f}, x0[2] = {2.0f, 2.0f}, g[2] = {1.0f, 10.0f};
  double r = qt_optim_spd_step(&p, 1.0, 1, x, g, x0, NULL, NULL, 2);
  QT_ASSERT_CLOSE(r, 0.9, 1e-12);
  QT_ASSERT_CLOSE(x[0], 2.0, 1e-6);
  QT_ASSERT_CLOSE(x[1], 2.0 - 5.5, 1e-6);
  /* The same with theta0 = 0 (the adapter mode). */
  float y[2] = {1.0f, 0.0f}, h[2] = {1.0f, 10.0f};
  r = qt_optim_spd_step(&p, 1.0, 1, y, h, NULL, NULL, NULL, 2);
  QT_ASSERT_CLOSE(r, 0.9, 1e-12);
  QT_ASSERT_CLOSE(y[0], 0.0, 1e-6);
  QT_ASSERT_CLOSE(y[1], -5.5, 1e-6);
  /* A step that lands exactly on theta0 (gamma~ = 0): no 0/0. */
  float w[1] = {1.0f}, w0[1] = {0.0f}, gw[1] = {1.0f};
  r = qt_optim_spd_step(&p, 1.0, 1, w, gw, w0, NULL, NULL, 1);
  CU_ASSERT_EQUAL(r, 0.0);
  CU_ASSERT_EQUAL(w[0], 0.0f);
}

/* The golden sequence of tools/make-spd-fixture.py (PyTorch, float32):
 * eight steps of one (3, 5) tensor, two of them projected. */
static void test_spd_golden_torch(void) {
  enum { STEPS = 8, N = 15 };
  qt_err err;
  qt_safetensors_t *st = NULL;
  int rc = qt_safetensors_open("tests/fixtures/methods/spd_adam.safetensors", &st, &err);
  if (rc) fprintf(stderr, "%s\n", err.msg);
  CU_ASSERT_FATAL(rc == 0);
  float theta0[N], grads[STEPS * N], theta[STEPS * N], ratio[STEPS];
  CU_ASSERT_FATAL(qt_safetensors_read_f32(st, "theta0", theta0, N, &err) == 0);
  CU_ASSERT_FATAL(qt_safetensors_read_f32(st, "grads", grads, STEPS * N, &err) == 0);
  CU_ASSERT_FATAL(qt_safetensors_read_f32(st, "theta", theta, STEPS * N, &err) == 0);
  CU_ASSERT_FATAL(qt_safetensors_read_f32(st, "ratio", ratio, STEPS, &err) == 0);
  qt_optim_params p = qt_optim_default_params();
  p.kind = QT_OPTIM_KIND_ADAM;
  p.decay = QT_DECAY_KIND_SPD;
  p.lr = atof(qt_safetensors_metadata_get(st, "lr"));
  p.beta1 = atof(qt_safetensors_metadata_get(st, "beta1"));
  p.beta2 = atof(qt_safetensors_metadata_get(st, "beta2"));
  p.eps = atof(qt_safetensors_metadata_get(st, "eps"));
  p.weight_decay = atof(qt_safetensors_metadata_get(st, "lambda"));
  qt_safetensors_free(st);
  QT_ASSERT_CLOSE(p.weight_decay, 0.7, 1e-12);
  float x[N], m[N] = {0}, v[N] = {0};
  memcpy(x, theta0, sizeof x);
  int projected = 0;
  for (int t = 0; t < STEPS; t++) {
    double r = qt_optim_spd_step(&p, p.lr, t + 1, x, grads + t * N, theta0, m, v, N);
    QT_ASSERT_CLOSE(r, ratio[t], 1e-5);
    projected += r > 0.0;
    for (int i = 0; i < N; i++) QT_ASSERT_CLOSE(x[i], theta[t * N + i], 2e-6);
    /* Continue from torch's values, so that rounding does not accumulate. */
    memcpy(x, theta + t * N, sizeof x);
  }
  CU_ASSERT_EQUAL(projected, 2);
}

/* ------------------------------------------------------------------------- */
/* SFA                                                                        */
/* ------------------------------------------------------------------------- */

static void test_sfa_schedule(void) {
  CU_ASSERT_EQUAL(qt_sfa_interval(0.25, 20), 5);
  CU_ASSERT_EQUAL(qt_sfa_interval(0.2, 20), 4);
  CU_ASSERT_EQUAL(qt_sfa_interval(1.0, 20), 20);
  CU_ASSERT_EQUAL(qt_sfa_interval(0.05, 7), 1); /* round(0.35) = 0, at least 1 */
  CU_ASSERT_EQUAL(qt_sfa_interval(0.3, 10), 3);
  /* K = 3 of T = 10: steps 3, 6, 9 and the last. */
  int due[11] = {0};
  for (long s = 1; s <= 10; s++) due[s] = qt_sfa_due(3, 10, s);
  const int want[11] = {0, 0, 0, 1, 0, 0, 1, 0, 0, 1, 1};
  CU_ASSERT(memcmp(due, want, sizeof due) == 0);
  /* p = 1: once, at the end. */
  int count = 0;
  for (long s = 1; s <= 20; s++) count += qt_sfa_due(qt_sfa_interval(1.0, 20), 20, s);
  CU_ASSERT_EQUAL(count, 1);
  CU_ASSERT(qt_sfa_due(20, 20, 20));
  CU_ASSERT(!qt_sfa_due(3, 10, 0));
}

static void test_sfa_average(void) {
  float x[3] = {1.0f, -2.0f, 4.0f}, x0[3] = {0.0f, 2.0f, 3.0f};
  float y[3];
  memcpy(y, x, sizeof x);
  qt_sfa_average(y, x0, 3, 0.25);
  QT_ASSERT_CLOSE(y[0], 0.75, 1e-7);
  QT_ASSERT_CLOSE(y[1], -1.0, 1e-7);
  QT_ASSERT_CLOSE(y[2], 3.75, 1e-7);
  memcpy(y, x, sizeof x);
  qt_sfa_average(y, x0, 3, 1.0); /* beta 1: theta0 exactly */
  CU_ASSERT(memcmp(y, x0, sizeof y) == 0);
  memcpy(y, x, sizeof x);
  qt_sfa_average(y, x0, 3, 0.0); /* beta 0: unchanged */
  CU_ASSERT(memcmp(y, x, sizeof y) == 0);
}

/* ------------------------------------------------------------------------- */
/* GOODFIT [RECON]                                                            */
/* ------------------------------------------------------------------------- */

static void test_goodfit_project(void) {
  /* <g, delta> = -1 < 0: g - (-1 / 1) delta = (0, 2), orthogonal to delta. */
  float g[2] = {1.0f, 2.0f}, d[2] = {-1.0f, 0.0f};
  double coef = qt_goodfit_project(g, d, 2);
  QT_ASSERT_CLOSE(coef, -1.0, 1e-9);
  QT_ASSERT_CLOSE(g[0], 0.0, 1e-7);
  QT_ASSERT_CLOSE(g[1], 2.0, 0.0);
  /* <g, delta> >= 0: unchanged, bit for bit. */
  float h[2] = {1.0f, 2.0f}, e[2] = {1.0f, -0.5f};
  CU_ASSERT_EQUAL(qt_goodfit_project(h, e, 2), 0.0);
  CU_ASSERT(h[0] == 1.0f && h[1] == 2.0f);
  /* Random tensors: orthogonal afterwards whenever the condition held. */
  enum { N = 50 };
  qt_rng_t *rng = NULL;
  CU_ASSERT_FATAL(qt_rng_init(&rng, 5, NULL) == 0);
  int projected = 0;
  for (int trial = 0; trial < 20; trial++) {
    float gg[N], dd[N];
    double before = 0.0, gn = 0.0, dn = 0.0;
    for (int i = 0; i < N; i++) {
      gg[i] = (float)(2.0 * qt_rng_uniform(rng) - 1.0);
      dd[i] = (float)(2.0 * qt_rng_uniform(rng) - 1.0);
      before += (double)gg[i] * dd[i];
      dn += (double)dd[i] * dd[i];
    }
    qt_goodfit_project(gg, dd, N);
    double after = 0.0;
    for (int i = 0; i < N; i++) {
      after += (double)gg[i] * dd[i];
      gn += (double)gg[i] * gg[i];
    }
    if (before < 0.0) {
      projected++;
      CU_ASSERT(fabs(after) <= 1e-6 * sqrt(gn * dn));
    } else {
      QT_ASSERT_CLOSE(after, before, 0.0);
    }
  }
  qt_rng_free(rng);
  CU_ASSERT(projected > 0 && projected < 20);
}

/* ------------------------------------------------------------------------- */
/* LoRA                                                                       */
/* ------------------------------------------------------------------------- */

static void test_lora_merge_and_init(void) {
  QT_ASSERT_CLOSE(qt_lora_scale(16.0, 8), 2.0, 0.0);
  QT_ASSERT_CLOSE(qt_lora_scale(0.0, 8), 1.0, 0.0); /* alpha = rank */
  /* W (2, 3) = W0 + 2 B A, B (2, 1) = (1, -2), A (1, 3) = (0.5, 1, -1). */
  const float w0[6] = {1, 2, 3, 4, 5, 6}, a[3] = {0.5f, 1.0f, -1.0f}, b[2] = {1.0f, -2.0f};
  float w[6];
  qt_lora_merge(w, w0, a, b, 2, 3, 1, 2.0);
  const float want[6] = {2, 4, 1, 2, 1, 10};
  for (int i = 0; i < 6; i++) QT_ASSERT_CLOSE(w[i], want[i], 1e-6);
  /* Init: B = 0 (so the merge is W0 exactly), A within 1 / sqrt(in). */
  enum { OUT = 5, IN = 16, R = 4 };
  float aa[R * IN], bb[OUT * R], ww[OUT * IN], ww0[OUT * IN];
  for (int i = 0; i < OUT * R; i++) bb[i] = 7.0f;
  for (int i = 0; i < OUT * IN; i++) ww0[i] = 0.1f * (float)i;
  qt_rng_t *rng = NULL;
  CU_ASSERT_FATAL(qt_rng_init(&rng, 1, NULL) == 0);
  qt_lora_init(aa, bb, OUT, IN, R, rng);
  qt_rng_free(rng);
  int nonzero = 0;
  for (int i = 0; i < R * IN; i++) {
    CU_ASSERT(fabsf(aa[i]) <= 0.25f); /* 1 / sqrt(16) */
    nonzero += aa[i] != 0.0f;
  }
  CU_ASSERT_EQUAL(nonzero, R * IN);
  for (int i = 0; i < OUT * R; i++) CU_ASSERT_EQUAL(bb[i], 0.0f);
  qt_lora_merge(ww, ww0, aa, bb, OUT, IN, R, 2.0);
  CU_ASSERT(memcmp(ww, ww0, sizeof ww) == 0);
}

/* L(A, B) = sum C * (W0 + s B A) has dL/dW = C: the adapters' gradients
 * from dW against central differences of L. */
static void test_lora_gradients_finite_differences(void) {
  enum { OUT = 4, IN = 3, R = 2 };
  float c[OUT * IN], w0[OUT * IN], a[R * IN], b[OUT * R], w[OUT * IN];
  float ga[R * IN], gb[OUT * R];
  qt_rng_t *rng = NULL;
  CU_ASSERT_FATAL(qt_rng_init(&rng, 9, NULL) == 0);
  for (int i = 0; i < OUT * IN; i++) {
    c[i] = (float)(2.0 * qt_rng_uniform(rng) - 1.0);
    w0[i] = (float)(2.0 * qt_rng_uniform(rng) - 1.0);
  }
  for (int i = 0; i < R * IN; i++) a[i] = (float)(2.0 * qt_rng_uniform(rng) - 1.0);
  for (int i = 0; i < OUT * R; i++) b[i] = (float)(2.0 * qt_rng_uniform(rng) - 1.0);
  qt_rng_free(rng);
  const double scale = 1.5, h = 1.0 / 64.0;
  qt_lora_gradients(c, a, b, OUT, IN, R, scale, ga, gb);
  float *params[2] = {a, b}, *grads[2] = {ga, gb};
  int sizes[2] = {R * IN, OUT * R};
  for (int p = 0; p < 2; p++) {
    for (int i = 0; i < sizes[p]; i++) {
      float keep = params[p][i];
      double l[2];
      for (int side = 0; side < 2; side++) {
        params[p][i] = keep + (side ? -1.0f : 1.0f) * (float)h;
        qt_lora_merge(w, w0, a, b, OUT, IN, R, scale);
        l[side] = 0.0;
        for (int j = 0; j < OUT * IN; j++) l[side] += (double)c[j] * (double)w[j];
      }
      params[p][i] = keep;
      double fd = (l[0] - l[1]) / (2.0 * h);
      QT_ASSERT_CLOSE(grads[p][i], fd, 1e-4 * (1.0 + fabs(fd)));
    }
  }
}

/* ROSA's window: torch.randint(0, n - r), so never the last start. */
static void test_rosa_window(void) {
  qt_rng_t *rng = NULL;
  CU_ASSERT_FATAL(qt_rng_init(&rng, 2, NULL) == 0);
  int seen[8] = {0};
  for (int k = 0; k < 400; k++) {
    size_t start = qt_rosa_window_start(8, 2, rng);
    CU_ASSERT_FATAL(start < 8);
    seen[start]++;
  }
  for (int c = 0; c <= 5; c++) CU_ASSERT(seen[c] > 0);
  CU_ASSERT_EQUAL(seen[6], 0);
  CU_ASSERT_EQUAL(seen[7], 0);
  CU_ASSERT_EQUAL(qt_rosa_window_start(8, 7, rng), 0);
  CU_ASSERT_EQUAL(qt_rosa_window_start(8, 8, rng), 0);
  CU_ASSERT_EQUAL(qt_rosa_window_start(4, 9, rng), 0);
  qt_rng_free(rng);
}

/* The factorization: fixed + B A = W (the resample leaves the layer's
 * output unchanged), B's columns orthonormal singular vectors, A's rows
 * the window's singular values times V^T rows (descending), and fixed
 * holds the other triplets only (B^T fixed = 0). */
static void test_rosa_factorize(void) {
  enum { OUT = 6, IN = 4, R = 2 };
  float w[OUT * IN], fixed[OUT * IN], a[R * IN], b[OUT * R];
  qt_rng_t *rng = NULL;
  CU_ASSERT_FATAL(qt_rng_init(&rng, 4, NULL) == 0);
  for (int i = 0; i < OUT * IN; i++) w[i] = (float)(2.0 * qt_rng_uniform(rng) - 1.0);
  qt_rng_free(rng);
  qt_err err;
  CU_ASSERT_FATAL(qt_rosa_factorize(w, OUT, IN, R, 1, fixed, a, b, &err) == 0);
  for (int o = 0; o < OUT; o++) {
    for (int i = 0; i < IN; i++) {
      double m = fixed[o * IN + i];
      for (int k = 0; k < R; k++) m += (double)b[o * R + k] * a[k * IN + i];
      QT_ASSERT_CLOSE(m, w[o * IN + i], 1e-5);
    }
  }
  for (int j = 0; j < R; j++) {
    for (int k = 0; k < R; k++) {
      double dot = 0.0;
      for (int o = 0; o < OUT; o++) dot += (double)b[o * R + j] * b[o * R + k];
      QT_ASSERT_CLOSE(dot, j == k ? 1.0 : 0.0, 1e-5);
    }
    for (int i = 0; i < IN; i++) {
      double bf = 0.0;
      for (int o = 0; o < OUT; o++) bf += (double)b[o * R + j] * fixed[o * IN + i];
      QT_ASSERT_CLOSE(bf, 0.0, 1e-5);
    }
  }
  double n0 = 0.0, n1 = 0.0;
  for (int i = 0; i < IN; i++) {
    n0 += (double)a[i] * a[i];
    n1 += (double)a[IN + i] * a[IN + i];
  }
  CU_ASSERT(n0 >= n1 && n1 > 0.0);
  /* A rank above min(out, in) takes every triplet: fixed = 0, the extra
   * rows of A are zero. */
  float a6[6 * IN], b6[OUT * 6];
  CU_ASSERT_FATAL(qt_rosa_factorize(w, OUT, IN, 6, 0, fixed, a6, b6, &err) == 0);
  for (int i = 0; i < OUT * IN; i++) QT_ASSERT_CLOSE(fixed[i], 0.0, 1e-6);
  for (int i = 4 * IN; i < 6 * IN; i++) CU_ASSERT_EQUAL(a6[i], 0.0f);
  /* A window outside the spectrum. */
  CU_ASSERT_EQUAL(qt_rosa_factorize(w, OUT, IN, R, 3, fixed, a, b, &err), QT_EINVAL);
}

/* ------------------------------------------------------------------------- */
/* BSS (qt_methods_reg.c)                                                     */
/* ------------------------------------------------------------------------- */

/* F = [[3, 0, 0], [0, 1, 0]]: singular values 3 and 1 with u_2 = e_2,
 * v_2 = e_2, so k = 1 gives eta * 1 and the gradient 2 eta at (1, 1); k = 2
 * (or more, clamped) gives eta * 10. */
static void test_bss_values(void) {
  qt_err err;
  float f[6] = {3, 0, 0, 0, 1, 0};
  float g[6] = {0};
  double pen = -1.0;
  CU_ASSERT_FATAL(qt_bss_penalty(f, 2, 3, 1, 0.5, &pen, g, &err) == 0);
  QT_ASSERT_CLOSE(pen, 0.5, 1e-12);
  for (int i = 0; i < 6; i++) QT_ASSERT_CLOSE(g[i], i == 4 ? 1.0 : 0.0, 1e-6);
  CU_ASSERT_FATAL(qt_bss_penalty(f, 2, 3, 2, 0.5, &pen, NULL, &err) == 0);
  QT_ASSERT_CLOSE(pen, 5.0, 1e-12);
  CU_ASSERT_FATAL(qt_bss_penalty(f, 2, 3, 7, 0.5, &pen, NULL, &err) == 0);
  QT_ASSERT_CLOSE(pen, 5.0, 1e-12);
  /* The transposed shape (more rows than columns) too. */
  float ft[6] = {3, 0, 0, 1, 0, 0};
  CU_ASSERT_FATAL(qt_bss_penalty(ft, 3, 2, 1, 2.0, &pen, NULL, &err) == 0);
  QT_ASSERT_CLOSE(pen, 2.0, 1e-12);
  CU_ASSERT_EQUAL(qt_bss_penalty(f, 2, 3, 0, 0.5, &pen, NULL, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_bss_penalty(f, 2, 3, 1, -1.0, &pen, NULL, &err), QT_EINVAL);
}

/* The smallest eigenvalue of the symmetric n x n matrix a (double, row-major,
 * destroyed) by cyclic Jacobi rotations: an SVD-free reference for
 * sigma_min(F)^2 = lambda_min(F F^T). */
static double jacobi_min_eigenvalue(double *a, int n) {
  for (int sweep = 0; sweep < 100; sweep++) {
    double off = 0.0;
    for (int p = 0; p < n; p++)
      for (int q = p + 1; q < n; q++) off += a[p * n + q] * a[p * n + q];
    if (off < 1e-30) break;
    for (int p = 0; p < n; p++) {
      for (int q = p + 1; q < n; q++) {
        double apq = a[p * n + q];
        if (fabs(apq) < 1e-300) continue;
        double theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
        double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1.0));
        double c = 1.0 / sqrt(t * t + 1.0), sn = t * c;
        for (int k = 0; k < n; k++) { /* columns p, q */
          double akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = c * akp - sn * akq;
          a[k * n + q] = sn * akp + c * akq;
        }
        for (int k = 0; k < n; k++) { /* rows p, q */
          double apk = a[p * n + k], aqk = a[q * n + k];
          a[p * n + k] = c * apk - sn * aqk;
          a[q * n + k] = sn * apk + c * aqk;
        }
      }
    }
  }
  double m = a[0];
  for (int i = 1; i < n; i++) m = fmin(m, a[i * n + i]);
  return m;
}

/* eta * sigma_min(F)^2 in double through F F^T (B <= D). */
static double bss_reference(const double *f, int b, int d, double eta) {
  double g[16 * 16];
  for (int i = 0; i < b; i++)
    for (int j = 0; j < b; j++) {
      double sum = 0.0;
      for (int k = 0; k < d; k++) sum += f[i * d + k] * f[j * d + k];
      g[i * b + j] = sum;
    }
  return eta * jacobi_min_eigenvalue(g, b);
}

/* The gradient of qt_bss_penalty (k = 1) against central differences of
 * the double reference above, every coordinate. */
static void test_bss_finite_differences(void) {
  enum { B = 5, D = 7 };
  qt_err err;
  float f[B * D], g[B * D];
  double fd[B * D];
  qt_rng_t *rng = NULL;
  CU_ASSERT_FATAL(qt_rng_init(&rng, 21, NULL) == 0);
  for (int i = 0; i < B * D; i++) {
    f[i] = (float)(2.0 * qt_rng_uniform(rng) - 1.0);
    fd[i] = f[i];
    g[i] = 0.25f; /* the gradient is added to what is there */
  }
  qt_rng_free(rng);
  const double eta = 0.3, h = 1e-6;
  double pen;
  CU_ASSERT_FATAL(qt_bss_penalty(f, B, D, 1, eta, &pen, g, &err) == 0);
  QT_ASSERT_CLOSE(pen, bss_reference(fd, B, D, eta), 1e-9);
  double worst = 0.0;
  for (int i = 0; i < B * D; i++) {
    double keep = fd[i];
    fd[i] = keep + h;
    double up = bss_reference(fd, B, D, eta);
    fd[i] = keep - h;
    double down = bss_reference(fd, B, D, eta);
    fd[i] = keep;
    double num = (up - down) / (2.0 * h);
    worst = fmax(worst, fabs((g[i] - 0.25) - num));
  }
  CU_ASSERT(worst < 1e-5);
  if (worst >= 1e-5) fprintf(stderr, "\n  BSS gradient off by %g\n", worst);
}

/* A tiny ViT with BSS through the feature hook: the whole model's gradient
 * of loss + eta sigma_min(F)^2 against float central differences at a few
 * coordinates of every kind of tensor below the head, and the penalty's
 * share must matter (the gradient without it differs). */
static const float *delta_source; /* NULL: BSS, else DELTA against these features */

static double vit_total_loss(qt_vit_t *vit, const float *images, const int *labels, size_t b,
                             double eta, int with_grad) {
  qt_err err;
  double loss = NAN, pen = 0.0;
  size_t fb = 0;
  if (qt_vit_forward(vit, images, b, &err) != 0) return NAN;
  if (qt_vit_loss(vit, labels, NULL, 0.0, &loss, &err) != 0) return NAN;
  const float *feat = qt_vit_features(vit, &fb);
  CU_ASSERT_FATAL(feat != NULL && fb == b);
  size_t width = (size_t)qt_vit_get_config(vit)->width;
  if (delta_source)
    qt_delta_penalty(feat, delta_source, b * width, eta, &pen,
                     with_grad ? qt_vit_feature_grad(vit) : NULL);
  else
    CU_ASSERT_FATAL(qt_bss_penalty(feat, b, width, 1, eta, &pen,
                                   with_grad ? qt_vit_feature_grad(vit) : NULL, &err) == 0);
  return loss + pen;
}

static void check_model_gradient(int delta) {
  enum { B = 3 };
  qt_err err;
  qt_rng_t *rng = NULL;
  CU_ASSERT_FATAL(qt_rng_init(&rng, 31, NULL) == 0);
  qt_vit_config c = qt_vit_default_config();
  c.image_size = 8;
  c.patch_size = 4;
  c.width = 8;
  c.depth = 2;
  c.heads = 2;
  c.mlp_hidden = 16;
  c.num_classes = 3;
  qt_vit_t *vit = NULL;
  CU_ASSERT_FATAL(qt_vit_init(&c, B, rng, &vit, &err) == 0);
  for (size_t i = 0; i < qt_vit_tensor_count(vit); i++) {
    qt_vit_tensor t;
    qt_vit_tensor_at(vit, i, &t);
    for (size_t k = 0; k < t.numel; k++) t.data[k] += (float)qt_rng_gaussian(rng, 0.3);
  }
  float images[B * 3 * 8 * 8];
  for (int i = 0; i < B * 3 * 8 * 8; i++) images[i] = (float)(2.0 * qt_rng_uniform(rng) - 1.0);
  int labels[B] = {2, 0, 1};
  const double eta = 0.5;
  CU_ASSERT_FATAL(qt_vit_features(vit, NULL) == NULL); /* the hook is off */
  CU_ASSERT_FATAL(qt_vit_set_feature_hook(vit, 1, &err) == 0);
  /* DELTA's source features: random constants of the features' scale. */
  float source[B * 8];
  for (int i = 0; i < B * 8; i++) source[i] = (float)qt_rng_gaussian(rng, 1.0);
  delta_source = delta ? source : NULL;
  /* Without the penalty's gradient first, to see that it matters. */
  vit_total_loss(vit, images, labels, B, eta, 0);
  qt_vit_zero_grad(vit);
  CU_ASSERT_FATAL(qt_vit_backward(vit, &err) == 0);
  const char *names[] = {"patch_embed.proj.weight", "cls_token",   "blocks.0.attn.qkv.weight",
                         "blocks.1.mlp.fc1.bias",   "norm.weight", "norm.bias"};
  enum { NN = sizeof names / sizeof names[0], PER = 3 };
  size_t at[NN][PER];
  float plain[NN][PER];
  for (size_t i = 0; i < NN; i++) {
    qt_vit_tensor t;
    CU_ASSERT_FATAL(qt_vit_find_tensor(vit, names[i], &t) == 0);
    for (int j = 0; j < PER; j++) {
      at[i][j] = (size_t)(qt_rng_uniform(rng) * (double)t.numel);
      plain[i][j] = t.grad[at[i][j]];
    }
  }
  vit_total_loss(vit, images, labels, B, eta, 1);
  qt_vit_zero_grad(vit);
  CU_ASSERT_FATAL(qt_vit_backward(vit, &err) == 0);
  double worst = 0.0, moved = 0.0;
  for (size_t i = 0; i < NN; i++) {
    qt_vit_tensor t;
    CU_ASSERT_FATAL(qt_vit_find_tensor(vit, names[i], &t) == 0);
    for (int j = 0; j < PER; j++) {
      size_t k = at[i][j];
      float saved = t.data[k], h = 1e-2f, grad = t.grad[k];
      t.data[k] = saved + h;
      double plus = vit_total_loss(vit, images, labels, B, eta, 0);
      t.data[k] = saved - h;
      double minus = vit_total_loss(vit, images, labels, B, eta, 0);
      t.data[k] = saved;
      double num = (plus - minus) / (2.0 * h);
      double e = fabs(num - grad) / fmax(fabs(num), 1e-2);
      worst = fmax(worst, e);
      moved = fmax(moved, fabs(grad - plain[i][j]) / fmax(fabs(num), 1e-2));
      if (e > 2e-2) fprintf(stderr, "\n  %s[%zu]: %g vs %g", names[i], k, grad, num);
    }
  }
  CU_ASSERT(worst < 2e-2);
  CU_ASSERT(moved > 0.1);
  CU_ASSERT_FATAL(qt_vit_set_feature_hook(vit, 0, &err) == 0);
  CU_ASSERT(qt_vit_features(vit, NULL) == NULL && qt_vit_feature_grad(vit) == NULL);
  delta_source = NULL;
  qt_vit_free(vit);
  qt_rng_free(rng);
}

static void test_bss_model_gradient(void) {
  check_model_gradient(0);
}
static void test_delta_model_gradient(void) {
  check_model_gradient(1);
}

/* BSS inside a run, on a pattern data set and a tiny pretrained ViT as
 * test_run.c's fixtures: the run changes with bss_reg > 0, and three epochs
 * straight equal three epochs with a save and load after each (bit-exact
 * weights and results); another bss_reg is another fingerprint. */
static qt_data_splits reg_splits;
static char reg_checkpoint[256];

static void reg_fixture(void) {
  if (reg_splits.train) return;
  qt_dataset *ds = qt_test_patterns(12, 7);
  qt_rng_t *rng = NULL;
  CU_ASSERT_FATAL(
      qt_dataset_split(ds, 0.25, 0.0, 3, &reg_splits.train, &reg_splits.val, NULL, NULL) == 0);
  qt_dataset_free(ds);
  qt_vit_config c = qt_vit_default_config();
  c.image_size = 8;
  c.patch_size = 4;
  c.width = 8;
  c.depth = 2;
  c.heads = 2;
  c.mlp_hidden = 16;
  c.num_classes = 5;
  qt_rng_init(&rng, 11, NULL);
  qt_vit_t *vit = NULL;
  CU_ASSERT_FATAL(qt_vit_init(&c, 4, rng, &vit, NULL) == 0);
  qt_test_temp_path("reg-pretrained.safetensors", reg_checkpoint, sizeof reg_checkpoint);
  CU_ASSERT_FATAL(qt_vit_save(vit, reg_checkpoint, NULL) == 0);
  qt_vit_free(vit);
  qt_rng_free(rng);
}

static qt_run_spec reg_spec(void) {
  reg_fixture();
  qt_run_spec s = qt_run_default_spec();
  s.checkpoint = reg_checkpoint;
  s.family = QT_MODEL_FAMILY_VIT;
  s.heads = 2;
  for (int c = 0; c < 3; c++) s.mean[c] = s.std[c] = 0.5;
  s.data = &reg_splits;
  s.epochs = 4;
  s.batch_size = 6;
  s.seed = 5;
  s.optim.lr = 3e-3;
  s.drop = 0.3; /* the hook's features are taken before head dropout */
  return s;
}

static int same_weights(qt_run_t *a, qt_run_t *b) {
  qt_vit_t *va = qt_model_vit(qt_run_model(a)), *vb = qt_model_vit(qt_run_model(b));
  for (size_t i = 0; i < qt_vit_tensor_count(va); i++) {
    qt_vit_tensor ta, tb;
    qt_vit_tensor_at(va, i, &ta);
    qt_vit_tensor_at(vb, i, &tb);
    if (memcmp(ta.data, tb.data, ta.numel * sizeof(float)) != 0) return 0;
  }
  return 1;
}

static void check_reg_run(const char *name, const char *value) {
  qt_err err;
  qt_run_spec s = reg_spec();
  CU_ASSERT_EQUAL(qt_run_spec_set(&s, name, value, &err), 0);
  CU_ASSERT(s.bss_reg > 0.0 || s.delta_reg > 0.0);
  qt_run_spec plain = reg_spec();
  qt_run_t *full = NULL, *base = NULL, *part = NULL;
  CU_ASSERT_FATAL(qt_run_init(&s, &full, &err) == 0);
  CU_ASSERT_FATAL(qt_run_init(&plain, &base, &err) == 0);
  qt_run_epoch_result want[3], got, r;
  for (int e = 0; e < 3; e++) {
    CU_ASSERT_FATAL(qt_run_epoch(full, &want[e], &err) == 0);
    CU_ASSERT_EQUAL(want[e].status, QT_RUN_STATUS_OK);
    CU_ASSERT_FATAL(qt_run_epoch(base, &r, &err) == 0);
  }
  CU_ASSERT(!same_weights(full, base)); /* BSS changes the run */

  char path[256];
  qt_test_temp_path("bss-run.safetensors", path, sizeof path);
  CU_ASSERT_FATAL(qt_run_init(&s, &part, &err) == 0);
  for (int e = 0; e < 3; e++) {
    CU_ASSERT_FATAL(qt_run_epoch(part, &got, &err) == 0);
    CU_ASSERT(got.score == want[e].score && got.train_loss == want[e].train_loss &&
              got.val_loss == want[e].val_loss);
    if (e == 2) break;
    CU_ASSERT_FATAL(qt_run_save(part, path, &err) == 0);
    qt_run_free(part);
    part = NULL;
    int rc = qt_run_load(path, &s, &part, &err);
    if (rc) fprintf(stderr, "load: %s\n", err.msg);
    CU_ASSERT_FATAL(rc == 0);
  }
  CU_ASSERT(same_weights(full, part));
  /* The fingerprint covers bss_reg. */
  qt_run_t *other = NULL;
  CU_ASSERT_FATAL(qt_run_save(part, path, &err) == 0);
  CU_ASSERT_EQUAL(qt_run_load(path, &plain, &other, &err), QT_ESCHEMA);
  s.bss_reg = s.delta_reg = -1.0;
  CU_ASSERT_EQUAL(qt_run_init(&s, &other, &err), QT_EINVAL);
  qt_run_free(full);
  qt_run_free(base);
  qt_run_free(part);
  qt_dataset_free(reg_splits.train);
  qt_dataset_free(reg_splits.val);
  reg_splits.train = reg_splits.val = NULL;
  remove(path);
  remove(reg_checkpoint);
}

static void test_bss_in_run(void) {
  check_reg_run("bss_reg", "0.1");
}
static void test_delta_in_run(void) {
  check_reg_run("delta_reg", "0.1");
}

/* Squared distance between the features of two models on the same inputs. */
static double feature_distance(qt_vit_t *a, qt_vit_t *b, const float *x, size_t n) {
  qt_err err;
  size_t width = (size_t)qt_vit_get_config(a)->width, fb = 0;
  CU_ASSERT_FATAL(qt_vit_set_feature_hook(a, 1, &err) == 0);
  CU_ASSERT_FATAL(qt_vit_set_feature_hook(b, 1, &err) == 0);
  CU_ASSERT_FATAL(qt_vit_forward(a, x, n, &err) == 0);
  float *fa = malloc(n * width * sizeof *fa);
  memcpy(fa, qt_vit_features(a, &fb), n * width * sizeof *fa);
  CU_ASSERT_FATAL(qt_vit_forward(b, x, n, &err) == 0);
  const float *fbv = qt_vit_features(b, &fb);
  double d = 0.0;
  for (size_t i = 0; i < n * width; i++) d += ((double)fa[i] - fbv[i]) * ((double)fa[i] - fbv[i]);
  free(fa);
  return d;
}

/* A strong DELTA keeps the features near the pretrained model's: after
 * three epochs, much nearer than a plain run's. */
static void test_delta_keeps_features(void) {
  qt_err err;
  qt_run_spec plain = reg_spec(), delta = reg_spec();
  delta.delta_reg = 10.0;
  qt_run_t *r0 = NULL, *rp = NULL, *rd = NULL;
  CU_ASSERT_FATAL(qt_run_init(&plain, &r0, &err) == 0);
  CU_ASSERT_FATAL(qt_run_init(&plain, &rp, &err) == 0);
  CU_ASSERT_FATAL(qt_run_init(&delta, &rd, &err) == 0);
  qt_run_epoch_result r;
  for (int e = 0; e < 3; e++) {
    CU_ASSERT_FATAL(qt_run_epoch(rp, &r, &err) == 0);
    CU_ASSERT_FATAL(qt_run_epoch(rd, &r, &err) == 0);
    CU_ASSERT_EQUAL(r.status, QT_RUN_STATUS_OK);
  }
  float x[4 * 3 * 8 * 8];
  qt_rng_t *rng = NULL;
  CU_ASSERT_FATAL(qt_rng_init(&rng, 41, NULL) == 0);
  for (size_t i = 0; i < sizeof x / sizeof x[0]; i++) x[i] = (float)qt_rng_gaussian(rng, 1.0);
  qt_rng_free(rng);
  double dp =
      feature_distance(qt_model_vit(qt_run_model(r0)), qt_model_vit(qt_run_model(rp)), x, 4);
  double dd =
      feature_distance(qt_model_vit(qt_run_model(r0)), qt_model_vit(qt_run_model(rd)), x, 4);
  CU_ASSERT(dp > 0.0);
  CU_ASSERT(dd < 0.5 * dp);
  if (!(dd < 0.5 * dp)) fprintf(stderr, "\n  DELTA distance %g vs plain %g\n", dd, dp);
  qt_run_free(r0);
  qt_run_free(rp);
  qt_run_free(rd);
}

/* DELTA's penalty: hand values, and the gradient is added. */
static void test_delta_values(void) {
  float f[3] = {1.0f, -2.0f, 0.5f}, f0[3] = {0.5f, -2.0f, 1.5f}, g[3] = {1.0f, 1.0f, 1.0f};
  double pen = 0.0;
  qt_delta_penalty(f, f0, 3, 0.1, &pen, g);
  QT_ASSERT_CLOSE(pen, 0.1 * (0.25 + 0.0 + 1.0), 1e-12);
  QT_ASSERT_CLOSE(g[0], 1.0 + 0.1, 1e-7);
  QT_ASSERT_CLOSE(g[1], 1.0, 0.0);
  QT_ASSERT_CLOSE(g[2], 1.0 - 0.2, 1e-7);
  qt_delta_penalty(f, f, 3, 0.1, &pen, NULL);
  QT_ASSERT_CLOSE(pen, 0.0, 0.0);
}

static const qt_test_case cases[] = {
    {"decay_kinds", test_decay_kinds},
    {"spec_set_methods", test_spec_set_methods},
    {"l2sp_values", test_l2sp_values},
    {"l2sp_finite_differences", test_l2sp_finite_differences},
    {"spd_one_step", test_spd_one_step},
    {"spd_untouched_when_aligned", test_spd_untouched_when_aligned},
    {"spd_lambda_one_restores_radius", test_spd_lambda_one_restores_radius},
    {"spd_sgd_and_zero_reference", test_spd_sgd_and_zero_reference},
    {"spd_golden_torch", test_spd_golden_torch},
    {"sfa_schedule", test_sfa_schedule},
    {"sfa_average", test_sfa_average},
    {"goodfit_project", test_goodfit_project},
    {"lora_merge_and_init", test_lora_merge_and_init},
    {"rosa_window", test_rosa_window},
    {"rosa_factorize", test_rosa_factorize},
    {"lora_gradients_finite_differences", test_lora_gradients_finite_differences},
    {"bss_values", test_bss_values},
    {"bss_finite_differences", test_bss_finite_differences},
    {"bss_model_gradient", test_bss_model_gradient},
    {"bss_in_run", test_bss_in_run},
    {"delta_values", test_delta_values},
    {"delta_model_gradient", test_delta_model_gradient},
    {"delta_keeps_features", test_delta_keeps_features},
    {"delta_in_run", test_delta_in_run},
    {NULL, NULL}};

QT_TEST_MAIN("methods", cases)

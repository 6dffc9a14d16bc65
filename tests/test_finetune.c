/*
 * test_finetune.c - the finetune module's CPU suite: the AdamW reference
 * against hand-computed numbers and its decoupled weight decay, argument
 * checks, the backend selector, and the CUDA entry points on a machine (or a
 * build) without a device.
 */
#include <math.h>
#include <string.h>

#include "finetune/qt_finetune.h"
#include "qt_test.h"

/* Relative comparison for float results against double expectations: the
 * reference works in float, so a few units in the last place are expected. */
#define ASSERT_REL(actual, expected, tol) \
  CU_ASSERT_DOUBLE_EQUAL((double)(actual), (expected), (tol)*fabs(expected))

/* ------------------------------------------------------------------------- */
/* AdamW: hand-computed steps                                                 */
/* ------------------------------------------------------------------------- */

/* Three steps on three parameters with lr 0.01, beta1 0.9, beta2 0.999,
 * eps 1e-8, weight_decay 0.1. Step 1 can be checked by hand: the bias
 * corrections make m_hat = g and v_hat = g^2, so the Adam part is
 * lr * sign(g) (up to eps), and the decay removes lr * wd = 0.1 % of p:
 * 0.5 -> 0.5 * 0.999 - 0.01 = 0.4895. All expected values were computed in
 * double with the textbook form sqrt(v / (1 - beta2^t)) by:
 *
 *   python3 -c '
 *   import math
 *   lr,b1,b2,eps,wd=0.01,0.9,0.999,1e-8,0.1
 *   p=[0.5,-1.0,2.0]; m=[0.0]*3; v=[0.0]*3
 *   G=[[0.1,-0.2,0.3],[-0.05,0.4,0.0],[0.2,0.1,-0.3]]
 *   for t,g in enumerate(G,1):
 *     for i in range(3):
 *       m[i]=b1*m[i]+(1-b1)*g[i]; v[i]=b2*v[i]+(1-b2)*g[i]*g[i]
 *       mh=m[i]/(1-b1**t); vh=v[i]/(1-b2**t)
 *       p[i]=p[i]-lr*wd*p[i]-lr*mh/(math.sqrt(vh)+eps)
 *     print(t,["%.10g"%x for x in p],["%.10g"%x for x in m],["%.10g"%x for x in v])'
 */
static void test_adamw_hand_computed(void) {
  static const float grads[3][3] = {{0.1f, -0.2f, 0.3f}, {-0.05f, 0.4f, 0.0f}, {0.2f, 0.1f, -0.3f}};
  static const double want_p[3][3] = {{0.489500001, -0.9890000005, 1.988},
                                      {0.4863471309, -0.9916720357, 1.979311418},
                                      {0.4792796683, -0.9948368755, 1.978190784}};
  static const double want_m[3][3] = {
      {0.01, -0.02, 0.03}, {0.004, 0.022, 0.027}, {0.0236, 0.0298, -0.0057}};
  static const double want_v[3][3] = {{1e-05, 4e-05, 9e-05},
                                      {1.249e-05, 0.00019996, 8.991e-05},
                                      {5.247751e-05, 0.00020976004, 0.00017982009}};
  qt_adamw_params hp = {.lr = 0.01, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.1};
  float p[3] = {0.5f, -1.0f, 2.0f};
  float m[3] = {0};
  float v[3] = {0};
  for (int t = 1; t <= 3; t++) {
    qt_err err;
    qt_err_clear(&err);
    CU_ASSERT_EQUAL_FATAL(qt_cpu_adamw_step(p, grads[t - 1], m, v, 3, &hp, t, &err), 0);
    for (int i = 0; i < 3; i++) {
      ASSERT_REL(p[i], want_p[t - 1][i], 1e-6);
      ASSERT_REL(m[i], want_m[t - 1][i], 1e-6);
      ASSERT_REL(v[i], want_v[t - 1][i], 1e-6);
    }
  }
}

/* ------------------------------------------------------------------------- */
/* AdamW: decoupled weight decay                                              */
/* ------------------------------------------------------------------------- */

/* With zero gradients and zero moments, AdamW only decays: every parameter
 * shrinks by exactly lr * wd * p (in float, with lr * wd rounded once), and
 * the moments stay exactly zero, at every step. Coupled (L2) decay would put
 * wd * p into the gradient and make m and v nonzero. */
static void test_adamw_zero_grad_only_decays(void) {
  qt_adamw_params hp = {.lr = 0.05, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.2};
  const float decay = (float)(hp.lr * hp.weight_decay);
  float p[5] = {1.0f, -2.5f, 0.0f, 1e-20f, 3e4f};
  const float grads[5] = {0};
  float m[5] = {0};
  float v[5] = {0};
  for (int t = 1; t <= 3; t++) {
    float before[5];
    memcpy(before, p, sizeof p);
    CU_ASSERT_EQUAL_FATAL(qt_cpu_adamw_step(p, grads, m, v, 5, &hp, t, NULL), 0);
    for (int i = 0; i < 5; i++) {
      float want = before[i] - decay * before[i];
      CU_ASSERT_EQUAL(p[i], want);
      CU_ASSERT_EQUAL(m[i], 0.0f);
      CU_ASSERT_EQUAL(v[i], 0.0f);
    }
  }
  CU_ASSERT(p[0] < 1.0f && p[0] > 0.96f); /* 0.99^3 = 0.970299 */
}

/* Weight decay never reaches the moments: with the same gradients, m and v
 * are bit-identical with and without decay, and without decay the
 * parameters move by the Adam update alone. */
static void test_adamw_decay_does_not_enter_moments(void) {
  qt_adamw_params with = qt_adamw_default_params();
  with.weight_decay = 0.5;
  qt_adamw_params without = with;
  without.weight_decay = 0.0;
  float p1[4] = {1.0f, -1.0f, 0.25f, 4.0f}, p2[4];
  float m1[4] = {0}, m2[4] = {0}, v1[4] = {0}, v2[4] = {0};
  memcpy(p2, p1, sizeof p1);
  const float grads[2][4] = {{0.3f, -0.1f, 0.0f, 2.0f}, {-0.2f, 0.5f, 0.1f, 1.0f}};
  for (int t = 1; t <= 2; t++) {
    CU_ASSERT_EQUAL_FATAL(qt_cpu_adamw_step(p1, grads[t - 1], m1, v1, 4, &with, t, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(qt_cpu_adamw_step(p2, grads[t - 1], m2, v2, 4, &without, t, NULL), 0);
    CU_ASSERT_EQUAL(memcmp(m1, m2, sizeof m1), 0);
    CU_ASSERT_EQUAL(memcmp(v1, v2, sizeof v1), 0);
  }
  /* Decay pulls every nonzero parameter toward zero relative to plain Adam. */
  for (int i = 0; i < 4; i++) CU_ASSERT(fabsf(p1[i]) < fabsf(p2[i]));
}

/* ------------------------------------------------------------------------- */
/* AdamW: arguments                                                           */
/* ------------------------------------------------------------------------- */

static void test_adamw_default_params(void) {
  qt_adamw_params hp = qt_adamw_default_params();
  CU_ASSERT_EQUAL(hp.lr, 1e-3);
  CU_ASSERT_EQUAL(hp.beta1, 0.9);
  CU_ASSERT_EQUAL(hp.beta2, 0.999);
  CU_ASSERT_EQUAL(hp.eps, 1e-8);
  CU_ASSERT_EQUAL(hp.weight_decay, 0.01);
}

/* Bad arguments are QT_EINVAL with a message, and leave the arrays alone. */
static void test_adamw_rejects_bad_arguments(void) {
  const qt_adamw_params good = qt_adamw_default_params();
  float p[2] = {1.0f, 2.0f}, g[2] = {0.5f, 0.5f}, m[2] = {0}, v[2] = {0};
  qt_err err;

  struct {
    const char *name;
    qt_adamw_params hp;
    long step;
  } cases[8];
  for (int i = 0; i < 8; i++) {
    cases[i].hp = good;
    cases[i].step = 1;
  }
  cases[0].name = "step";
  cases[0].step = 0;
  cases[1].name = "beta1";
  cases[1].hp.beta1 = 1.0;
  cases[2].name = "beta2";
  cases[2].hp.beta2 = -0.1;
  cases[3].name = "eps";
  cases[3].hp.eps = 0.0;
  cases[4].name = "lr";
  cases[4].hp.lr = -1e-3;
  cases[5].name = "weight_decay";
  cases[5].hp.weight_decay = NAN;
  cases[6].name = "lr";
  cases[6].hp.lr = INFINITY;
  cases[7].name = "eps";
  cases[7].hp.eps = 1e-60; /* rounds to 0 in float */
  for (int i = 0; i < 8; i++) {
    qt_err_clear(&err);
    CU_ASSERT_EQUAL(qt_cpu_adamw_step(p, g, m, v, 2, &cases[i].hp, cases[i].step, &err), QT_EINVAL);
    CU_ASSERT_EQUAL(err.code, QT_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, cases[i].name));
  }
  CU_ASSERT_EQUAL(qt_cpu_adamw_step(p, NULL, m, v, 2, &good, 1, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_cpu_adamw_step(p, g, m, v, 2, NULL, 1, &err), QT_EINVAL);
  CU_ASSERT(p[0] == 1.0f && p[1] == 2.0f && m[0] == 0.0f && v[1] == 0.0f);

  /* An empty array is a valid no-op, even without storage. */
  CU_ASSERT_EQUAL(qt_cpu_adamw_step(NULL, NULL, NULL, NULL, 0, &good, 1, NULL), 0);
}

/* ------------------------------------------------------------------------- */
/* Backends                                                                   */
/* ------------------------------------------------------------------------- */

static void test_backend_kind_names(void) {
  qt_backend_kind kind = QT_BACKEND_KIND_CUDA;
  qt_err err;
  CU_ASSERT_EQUAL(qt_backend_kind_parse("cpu", &kind, &err), 0);
  CU_ASSERT_EQUAL(kind, QT_BACKEND_KIND_CPU);
  CU_ASSERT_EQUAL(qt_backend_kind_parse("CUDA", &kind, &err), 0);
  CU_ASSERT_EQUAL(kind, QT_BACKEND_KIND_CUDA);
  CU_ASSERT_STRING_EQUAL(qt_backend_kind_name(QT_BACKEND_KIND_CPU), "cpu");
  CU_ASSERT_STRING_EQUAL(qt_backend_kind_name(QT_BACKEND_KIND_CUDA), "cuda");
  qt_err_clear(&err);
  CU_ASSERT_EQUAL(qt_backend_kind_parse("gpu", &kind, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "'gpu'"));
  CU_ASSERT_EQUAL(qt_backend_kind_check(QT_BACKEND_KIND_CPU, NULL), 0);
}

/* The device query never fails for lack of a device; without one (or in a
 * build without CUDA) the CUDA backend and its ops say QT_ENODEV. */
static void test_cuda_without_device(void) {
  qt_err err;
  int count = -1;
  CU_ASSERT_EQUAL(qt_cuda_device_count(NULL, &err), QT_EINVAL);
  CU_ASSERT_EQUAL_FATAL(qt_cuda_device_count(&count, &err), 0);
  CU_ASSERT(count >= 0);
  if (count > 0) {
    fprintf(stderr, "note: %d CUDA device(s) present; the no-device checks are skipped\n", count);
    CU_ASSERT_EQUAL(qt_backend_kind_check(QT_BACKEND_KIND_CUDA, NULL), 0);
    return;
  }
  qt_err_clear(&err);
  CU_ASSERT_EQUAL(qt_backend_kind_check(QT_BACKEND_KIND_CUDA, &err), QT_ENODEV);
  CU_ASSERT(err.msg[0] != '\0');

  const qt_adamw_params hp = qt_adamw_default_params();
  float p[4] = {1, 2, 3, 4}, g[4] = {1, 1, 1, 1}, m[4] = {0}, v[4] = {0};
  qt_err_clear(&err);
  CU_ASSERT_EQUAL(qt_cuda_adamw_step_host(p, g, m, v, 4, &hp, 1, &err), QT_ENODEV);
  CU_ASSERT(err.msg[0] != '\0');
  CU_ASSERT(p[0] == 1.0f && m[0] == 0.0f);
}

static const qt_test_case cases[] = {
    {"adamw_hand_computed", test_adamw_hand_computed},
    {"adamw_zero_grad_only_decays", test_adamw_zero_grad_only_decays},
    {"adamw_decay_does_not_enter_moments", test_adamw_decay_does_not_enter_moments},
    {"adamw_default_params", test_adamw_default_params},
    {"adamw_rejects_bad_arguments", test_adamw_rejects_bad_arguments},
    {"backend_kind_names", test_backend_kind_names},
    {"cuda_without_device", test_cuda_without_device},
    {NULL, NULL},
};

QT_TEST_MAIN("finetune", cases)

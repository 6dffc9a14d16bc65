/*
 * test_gpu_optim.c - a run's optimizer arithmetic on a CUDA device against
 * qt_optim.c (label gpu; skips with 77 without a device): the step of
 * every optimizer kind with and without weight decay over three steps,
 * and of 45 tensors in one call of the op table's optim_steps (Adam and
 * AdamW in two launches, each tensor with its own learning rate, step and
 * decay; a bad slice refused before any tensor changes),
 * L2-SP's gradient and SFA's average (with and without a reference), the
 * scaling of a clipped gradient, head dropout's products, GOODFIT's reference
 * step: bit-identical to the CPU, since the
 * kernels use the CPU's float operations in its order; the sum of squares
 * within 1e-12 relative (double sums in another order).
 */
#include "qt_test.h"

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "qt_test_gpu.h"

static const size_t sizes[] = {1, 1000, 100003};

/* Downloads d and expects it equal to cpu bit for bit. */
static void expect_same(const char *what, const float *d, const float *cpu, size_t n) {
  float *gpu = download(d, n);
  expect_values(what, gpu, cpu, NULL, n, 0.0);
  free(gpu);
}

static void test_optimizer_steps(void) {
  qt_rng_t *rng = make_rng(1);
  const qt_optim_kind kinds[] = {QT_OPTIM_KIND_SGD, QT_OPTIM_KIND_MOMENTUM, QT_OPTIM_KIND_ADAM,
                                 QT_OPTIM_KIND_ADAMW};
  for (size_t k = 0; k < 4; k++) {
    for (int decay = 0; decay <= 1; decay++) {
      for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s];
        qt_optim_params p = qt_optim_default_params();
        p.kind = kinds[k];
        p.weight_decay = 0.05;
        float *x = host_random(rng, n, 0.0, 1.0), *s1 = host_random(rng, n, 0.0, 0.0);
        float *s2 = host_random(rng, n, 0.0, 0.0);
        float *dx = device_floats(x, n), *ds1 = device_floats(s1, n), *ds2 = device_floats(s2, n);
        for (long step = 1; step <= 3; step++) {
          float *g = host_random(rng, n, 0.0, 1e-2);
          float *dg = device_floats(g, n);
          double lr = 1e-3 * (double)step;
          qt_optim_tensor_step(&p, lr, decay, step, x, g, s1, s2, n);
          CHECK_RC(qt_cuda_optim_tensor_step(&p, lr, decay, step, dx, dg, ds1, ds2, n, E));
          qt_cuda_free(dg);
          free(g);
        }
        char what[96];
        snprintf(what, sizeof what, "%s, decay %d: parameters", qt_optim_kind_name(p.kind), decay);
        expect_same(what, dx, x, n);
        if (p.kind != QT_OPTIM_KIND_SGD) expect_same(what, ds1, s1, n);
        if (p.kind == QT_OPTIM_KIND_ADAM || p.kind == QT_OPTIM_KIND_ADAMW)
          expect_same(what, ds2, s2, n);
        qt_cuda_free(dx);
        qt_cuda_free(ds1);
        qt_cuda_free(ds2);
        free(x);
        free(s1);
        free(s2);
      }
    }
  }
  qt_rng_free(rng);
}

/* The op table's optim_steps over 45 tensors (more than a launch's 40
 * jobs) of sizes around a block's chunk of 4096 and empty ones, against
 * qt_optim_tensor_step on each, bit for bit. */
#define BATCH 45
static void test_optimizer_steps_batched(void) {
  static const size_t batch_sizes[] = {1, 1000, 4096, 4097, 100003, 0, 767};
  qt_rng_t *rng = make_rng(7);
  const qt_optim_kind kinds[] = {QT_OPTIM_KIND_ADAM, QT_OPTIM_KIND_ADAMW, QT_OPTIM_KIND_MOMENTUM};
  for (size_t k = 0; k < 3; k++) {
    qt_optim_params p = qt_optim_default_params();
    p.kind = kinds[k];
    p.weight_decay = 0.05;
    float *x[BATCH], *g[BATCH], *s1[BATCH], *s2[BATCH];
    qt__optim_slice slices[BATCH];
    for (int i = 0; i < BATCH; i++) {
      size_t n = batch_sizes[i % 7];
      x[i] = host_random(rng, n, 0.0, 1.0);
      g[i] = host_random(rng, n, 0.0, 1e-2);
      s1[i] = host_random(rng, n, 0.0, 1e-3);
      s2[i] = host_random(rng, n, 1e-4, 0.0);
      slices[i] = (qt__optim_slice){device_floats(x[i], n),
                                    device_floats(g[i], n),
                                    device_floats(s1[i], n),
                                    device_floats(s2[i], n),
                                    n,
                                    1e-3 * (1 + i % 4),
                                    1 + i % 3,
                                    i % 2};
    }
    /* A slice without its moments: refused, and no tensor changed. */
    qt__optim_slice bad = slices[BATCH - 1];
    slices[BATCH - 1].state2 = NULL;
    qt_err refused;
    if (p.kind != QT_OPTIM_KIND_MOMENTUM) {
      CU_ASSERT_EQUAL(qt__cuda_optim_steps(&p, slices, BATCH, &refused), QT_EINVAL);
      expect_same("refused batch: the first tensor", slices[0].params, x[0], slices[0].n);
    }
    slices[BATCH - 1] = bad;
    CHECK_RC(qt__cuda_optim_steps(&p, slices, BATCH, E));
    for (int i = 0; i < BATCH; i++) {
      const qt__optim_slice *q = &slices[i];
      qt_optim_tensor_step(&p, q->lr, q->decay, q->step, x[i], g[i], s1[i], s2[i], q->n);
      char what[96];
      snprintf(what, sizeof what, "%s, tensor %d of one call", qt_optim_kind_name(p.kind), i);
      expect_same(what, q->params, x[i], q->n);
      expect_same(what, q->state1, s1[i], q->n);
      if (p.kind != QT_OPTIM_KIND_MOMENTUM) expect_same(what, q->state2, s2[i], q->n);
      qt_cuda_free(q->params);
      qt_cuda_free((float *)q->grads);
      qt_cuda_free(q->state1);
      qt_cuda_free(q->state2);
      free(x[i]);
      free(g[i]);
      free(s1[i]);
      free(s2[i]);
    }
  }
  qt_rng_free(rng);
}

static void test_l2sp_sfa_scale(void) {
  qt_rng_t *rng = make_rng(2);
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    size_t n = sizes[s];
    for (int with_ref = 0; with_ref <= 1; with_ref++) {
      float *x = host_random(rng, n, 0.0, 1.0), *ref = host_random(rng, n, 0.0, 1.0);
      float *g = host_random(rng, n, 0.0, 1e-2);
      float *dx = device_floats(x, n), *dref = device_floats(ref, n), *dg = device_floats(g, n);
      qt_optim_l2sp_gradient(g, x, with_ref ? ref : NULL, n, 0.37);
      CHECK_RC(qt_cuda_l2sp_gradient(dg, dx, with_ref ? dref : NULL, n, 0.37, E));
      expect_same("L2-SP gradient", dg, g, n);
      qt_sfa_average(x, with_ref ? ref : NULL, n, 0.3);
      CHECK_RC(qt_cuda_sfa_average(dx, with_ref ? dref : NULL, n, 0.3, E));
      expect_same("SFA average", dx, x, n);
      for (size_t i = 0; i < n; i++) g[i] *= 0.61f;
      CHECK_RC(qt_cuda_scale(dg, 0.61f, n, E));
      expect_same("scaled gradient", dg, g, n);
      /* Head dropout's products (x, ref and g as they are by now). */
      for (size_t i = 0; i < n; i++) g[i] += x[i] * ref[i];
      CHECK_RC(qt_cuda_mul_add(dg, dx, dref, n, E));
      expect_same("multiply-accumulate", dg, g, n);
      for (size_t i = 0; i < n; i++) x[i] = x[i] * ref[i];
      CHECK_RC(qt_cuda_mul(dx, dx, dref, n, E));
      expect_same("product in place", dx, x, n);
      double cpu = 2.5, gpu = 2.5; /* it adds to what is there, twice here */
      for (size_t i = 0; i < n; i++) cpu += 2.0 * (double)g[i] * (double)g[i];
      double *dacc = device_copy(&gpu, 1, sizeof gpu);
      CHECK_RC(qt_cuda_sum_squares(dg, n, dacc, E));
      CHECK_RC(qt_cuda_sum_squares(dg, n, dacc, E));
      double *back = download_bytes(dacc, sizeof gpu);
      CU_ASSERT(fabs(*back - cpu) <= 1e-12 * cpu);
      free(back);
      qt_cuda_free(dacc);
      qt_cuda_free(dx);
      qt_cuda_free(dref);
      qt_cuda_free(dg);
      free(x);
      free(ref);
      free(g);
    }
  }
  qt_rng_free(rng);
}

/* Selective Projection Decay's halves on the device against
 * qt_optim_spd_step (SGD at lr 0.5, lambda 1): a gradient along the
 * deviation d = x - ref with a large orthogonal part, so that the
 * condition holds and the step still moves outward (r > 0, projected), and
 * a gradient against d (not projected). Within 1e-6 of the largest value:
 * r comes from double sums in another order. */
static void test_spd(void) {
  qt_rng_t *rng = make_rng(3);
  for (size_t s = 1; s < sizeof sizes / sizeof sizes[0]; s++) {
    for (int with_ref = 0; with_ref <= 1; with_ref++) {
      for (int projected = 0; projected <= 1; projected++) {
        size_t n = sizes[s];
        float *ref = host_random(rng, n, 0.0, 1.0), *x = host_random(rng, n, 0.0, 1.0);
        float *g = host_random(rng, n, 0.0, 3.0);
        for (size_t i = 0; i < n; i++) {
          if (with_ref) x[i] += ref[i];
          g[i] += (projected ? 1.0f : -1.0f) * (x[i] - (with_ref ? ref[i] : 0.0f));
        }
        float *dx = device_floats(x, n), *dg = device_floats(g, n), *dref = device_floats(ref, n);
        double zeros[3] = {0.0, 0.0, 0.0};
        double *dstats = device_copy(zeros, 3, sizeof(double));
        qt_optim_params p = qt_optim_default_params(), base;
        p.kind = QT_OPTIM_KIND_SGD;
        p.decay = QT_DECAY_KIND_SPD;
        p.weight_decay = 1.0;
        base = p;
        base.decay = QT_DECAY_KIND_NONE;
        base.weight_decay = 0.0;
        const float *r_cpu = with_ref ? ref : NULL, *r_dev = with_ref ? dref : NULL;
        double r = qt_optim_spd_step(&p, 0.5, 1, x, g, r_cpu, NULL, NULL, n);
        CU_ASSERT(projected ? r > 0.0 : r == 0.0);
        CHECK_RC(qt_cuda_spd_stats(dx, dg, r_dev, n, dstats, E));
        CHECK_RC(qt_cuda_optim_tensor_step(&base, 0.5, 0, 1, dx, dg, NULL, NULL, n, E));
        CHECK_RC(qt_cuda_spd_project(dx, r_dev, n, 1.0, dstats, E));
        float *got = download(dx, n);
        char what[96];
        snprintf(what, sizeof what, "SPD, n %zu, %s, %s", n, with_ref ? "ref" : "no ref",
                 projected ? "projected" : "not projected");
        expect_values(what, got, x, NULL, n, 1e-6);
        free(got);
        qt_cuda_free(dx);
        qt_cuda_free(dg);
        qt_cuda_free(dref);
        qt_cuda_free(dstats);
        free(ref);
        free(x);
        free(g);
      }
    }
  }
  qt_rng_free(rng);
}

/* GOODFIT's arithmetic: a reference step (axpy, bit for bit) and the
 * projection against delta on both sides of its condition (within 1e-6 of
 * the largest value: the coefficient comes from double sums in another
 * order). */
static void test_goodfit(void) {
  qt_rng_t *rng = make_rng(4);
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    for (int against = 0; against <= 1; against++) {
      size_t n = sizes[s];
      float *x = host_random(rng, n, 0.0, 1.0), *g = host_random(rng, n, 0.0, 1.0);
      float *delta = host_random(rng, n, 0.0, 1.0);
      /* Every term of <g, delta> has the sign of the case: negative when
       * against (projected), positive otherwise. */
      for (size_t i = 0; i < n; i++)
        g[i] = (against ? -1.0f : 1.0f) * (fabsf(g[i]) + 0.5f) * delta[i];
      float *dx = device_floats(x, n), *dg = device_floats(g, n);
      float *ddelta = device_floats(delta, n);
      for (size_t i = 0; i < n; i++) x[i] += -0.37f * g[i];
      CHECK_RC(qt_cuda_axpy(dx, -0.37f, dg, n, E));
      expect_same("axpy", dx, x, n);
      double zeros[2] = {0.0, 0.0};
      double *dstats = device_copy(zeros, 2, sizeof(double));
      double coef = qt_goodfit_project(g, delta, n);
      CU_ASSERT(against ? coef < 0.0 : coef == 0.0);
      CHECK_RC(qt_cuda_goodfit_project(dg, ddelta, n, dstats, E));
      float *got = download(dg, n);
      char what[96];
      snprintf(what, sizeof what, "GOODFIT projection, n %zu, %s", n,
               against ? "projected" : "not projected");
      expect_values(what, got, g, NULL, n, against ? 1e-6 : 0.0);
      free(got);
      qt_cuda_free(dx);
      qt_cuda_free(dg);
      qt_cuda_free(ddelta);
      qt_cuda_free(dstats);
      free(x);
      free(g);
      free(delta);
    }
  }
  qt_rng_free(rng);
}

/* LoRA's merge and its factors' gradients against qt_methods_lora.c: cuBLAS
 * and OpenBLAS add in other orders, so within the parity bound (1e-5) of
 * the ops (qt_test_gpu.h's measure). */
static void test_lora(void) {
  qt_rng_t *rng = make_rng(5);
  const size_t shapes[][3] = {{1, 1, 1}, {24, 16, 2}, {576, 192, 8}};
  for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
    size_t out = shapes[k][0], in = shapes[k][1], rank = shapes[k][2];
    float *w0 = host_random(rng, out * in, 0.0, 1.0), *a = host_random(rng, rank * in, 0.0, 1.0);
    float *b = host_random(rng, out * rank, 0.0, 1.0), *dw = host_random(rng, out * in, 0.0, 1.0);
    float *w = host_random(rng, out * in, 0.0, 1.0);
    float *ga = host_random(rng, rank * in, 0.0, 1.0), *gb = host_random(rng, out * rank, 0.0, 1.0);
    float *dw0 = device_floats(w0, out * in), *da = device_floats(a, rank * in);
    float *db = device_floats(b, out * rank), *ddw = device_floats(dw, out * in);
    float *dw_ = device_floats(w, out * in), *dga = device_floats(ga, rank * in);
    float *dgb = device_floats(gb, out * rank);
    qt_lora_merge(w, w0, a, b, out, in, rank, 0.5);
    CHECK_RC(qt_cuda_lora_merge(dw_, dw0, da, db, out, in, rank, 0.5, E));
    expect_parity("LoRA merge", dw_, w, NULL, out * in);
    qt_lora_gradients(dw, a, b, out, in, rank, 0.5, ga, gb);
    CHECK_RC(qt_cuda_lora_gradients(ddw, da, db, out, in, rank, 0.5, dga, dgb, E));
    expect_parity("LoRA gradient of A", dga, ga, NULL, rank * in);
    expect_parity("LoRA gradient of B", dgb, gb, NULL, out * rank);
    float *host[] = {w0, a, b, dw, w, ga, gb};
    for (size_t i = 0; i < sizeof host / sizeof *host; i++) free(host[i]);
    float *dev[] = {dw0, da, db, ddw, dw_, dga, dgb};
    for (size_t i = 0; i < sizeof dev / sizeof *dev; i++) qt_cuda_free(dev[i]);
  }
  qt_rng_free(rng);
}

static const qt_test_case cases[] = {
    {"optimizer_steps", test_optimizer_steps},
    {"optimizer_steps_batched", test_optimizer_steps_batched},
    {"l2sp_sfa_scale", test_l2sp_sfa_scale},
    {"spd", test_spd},
    {"goodfit", test_goodfit},
    {"lora", test_lora},
    {NULL, NULL},
};

QT_GPU_TEST_MAIN("gpu_optim", cases)

/*
 * test_step_tolerances.c - the whole-step comparisons of the GPU tests
 * (qt_test_cnn_backend.h, qt_test_vit_backend.h) with their GPU tolerances
 * and noise twins, run where CI can run them: the CPU op table stands in
 * for the device. Unchanged, it passes them; with one op's result off by a
 * relative 1e-4, or AdamW's weight decay doubled, it fails them. So the
 * tolerances that the H100 runs calibrated (docs/cuda.md, "Whole steps
 * against the CPU's own noise") still see an error of that size.
 *
 * Each comparison runs in a child process, so the failures a wrong op must
 * cause do not fail this program; the parent reads the verdict from the
 * child's exit status.
 */
#include <float.h>
#include <sys/wait.h>

#include "qt_test.h"

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "qt_test_gpu.h"
#include "qt_test_cnn_backend.h"
#include "qt_test_vit_backend.h"

/* The GPU tests' FP32 tolerances (test_gpu_cnn_backend, test_gpu_vit_backend). */
static const cnn_tolerance cnn_fp32 = {1e-5, 1e-4, 1e-3, NOISE_FP32};
static const vit_tolerance vit_fp32 = {1e-5, 1e-4, 1e-3, NOISE_FP32};

/* The stand-in device: the CPU's ops, one of them changed. */
static qt__ops stand_in;
#define OFF 1.0001 /* a wrong op's relative error */

static void scale(float *x, size_t n) {
  for (size_t i = 0; x && i < n; i++) x[i] = (float)(x[i] * OFF);
}

static int batchnorm_dinp_off(float *dinp, float *dweight, float *dbias, const float *dout,
                              const float *inp, const float *weight, const float *mean,
                              const float *rstd, size_t batch, size_t c, size_t hw,
                              qt_batchnorm_mode mode, int set, qt_err *err) {
  int rc = qt__ops_cpu()->batchnorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd,
                                             batch, c, hw, mode, set, err);
  scale(dinp, batch * c * hw);
  return rc;
}

static int batchnorm_dweight_off(float *dinp, float *dweight, float *dbias, const float *dout,
                                 const float *inp, const float *weight, const float *mean,
                                 const float *rstd, size_t batch, size_t c, size_t hw,
                                 qt_batchnorm_mode mode, int set, qt_err *err) {
  int rc = qt__ops_cpu()->batchnorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd,
                                             batch, c, hw, mode, set, err);
  scale(dweight, c);
  return rc;
}

static int conv_out_off(float *out, float *scratch, const float *inp, const float *weight,
                        const float *bias, const qt_conv2d_shape *shape, qt_err *err) {
  int rc = qt__ops_cpu()->conv2d_forward(out, scratch, inp, weight, bias, shape, err);
  scale(out, shape->batch * shape->out_c * shape->out_h * shape->out_w);
  return rc;
}

static int linear_dinp_off(float *dinp, float *dweight, float *dbias, const float *dout,
                           const float *inp, const float *weight, size_t n, size_t in_c,
                           size_t out_c, int set, qt_err *err) {
  int rc = qt__ops_cpu()->linear_backward(dinp, dweight, dbias, dout, inp, weight, n, in_c, out_c,
                                          set, err);
  scale(dinp, n * in_c);
  return rc;
}

static int layernorm_dweight_off(float *dinp, float *dweight, float *dbias, const float *dout,
                                 const float *inp, const float *weight, const float *mean,
                                 const float *rstd, size_t n, size_t c, qt_err *err) {
  int rc = qt__ops_cpu()->layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, n,
                                             c, err);
  scale(dweight, c);
  return rc;
}

static int adamw_double_decay(const qt_optim_params *p, const qt__optim_slice *slices, size_t count,
                              qt_err *err) {
  qt_optim_params doubled = *p;
  doubled.weight_decay *= 2.0;
  return qt__ops_cpu()->optim_steps(&doubled, slices, count, err);
}

static void cnn_cases(void) {
  cnn_backend_cases(&stand_in, &cnn_fp32);
}

static void vit_cases(void) {
  vit_backend_cases(&stand_in, &vit_fp32);
}

/* Runs body in a child process; 0 when all its assertions held there, 1
 * when one failed, -1 when the child did not finish. The child's failures
 * are counted in its own copy of this test's record and die with it. */
static int child_verdict(void (*body)(void)) {
  fflush(NULL);
  pid_t pid = fork();
  CU_ASSERT_FATAL(pid >= 0);
  if (pid == 0) {
    if (!freopen("/dev/null", "w", stdout) || !freopen("/dev/null", "w", stderr)) _exit(3);
    unsigned before = CU_get_number_of_failures();
    body();
    _exit(CU_get_number_of_failures() > before ? 1 : 0);
  }
  int status = 0;
  CU_ASSERT_FATAL(waitpid(pid, &status, 0) == pid);
  return WIFEXITED(status) && WEXITSTATUS(status) <= 1 ? WEXITSTATUS(status) : -1;
}

static int cnn_verdict(void) {
  return child_verdict(cnn_cases);
}

static int vit_verdict(void) {
  return child_verdict(vit_cases);
}

/* The CPU's own ops pass: the twins and the syncs do not fail a device
 * that computes what the CPU computes. */
static void test_cpu_stand_in_passes(void) {
  stand_in = *qt__ops_cpu();
  CU_ASSERT_EQUAL(cnn_verdict(), 0);
  CU_ASSERT_EQUAL(vit_verdict(), 0);
}

static void test_wrong_cnn_ops_fail(void) {
  stand_in = *qt__ops_cpu();
  stand_in.batchnorm_backward = batchnorm_dinp_off;
  CU_ASSERT_EQUAL(cnn_verdict(), 1);
  stand_in = *qt__ops_cpu();
  stand_in.batchnorm_backward = batchnorm_dweight_off;
  CU_ASSERT_EQUAL(cnn_verdict(), 1);
  stand_in = *qt__ops_cpu();
  stand_in.conv2d_forward = conv_out_off;
  CU_ASSERT_EQUAL(cnn_verdict(), 1);
  stand_in = *qt__ops_cpu();
  stand_in.optim_steps = adamw_double_decay;
  CU_ASSERT_EQUAL(cnn_verdict(), 1);
}

static void test_wrong_vit_ops_fail(void) {
  stand_in = *qt__ops_cpu();
  stand_in.linear_backward = linear_dinp_off;
  CU_ASSERT_EQUAL(vit_verdict(), 1);
  stand_in = *qt__ops_cpu();
  stand_in.layernorm_backward = layernorm_dweight_off;
  CU_ASSERT_EQUAL(vit_verdict(), 1);
  stand_in = *qt__ops_cpu();
  stand_in.optim_steps = adamw_double_decay;
  CU_ASSERT_EQUAL(vit_verdict(), 1);
}

static const qt_test_case cases[] = {
    {"cpu_stand_in_passes", test_cpu_stand_in_passes},
    {"wrong_cnn_ops_fail", test_wrong_cnn_ops_fail},
    {"wrong_vit_ops_fail", test_wrong_vit_ops_fail},
    {NULL, NULL},
};

QT_TEST_MAIN("step_tolerances", cases)

/*
 * qt_cuda_cudnn.cu - the dense and grouped convolutions through cuDNN,
 * where the machine has it (issue 8's "convolutions through cuDNN where the
 * toolkit has it"). cuDNN is not linked: its library (libcudnn.so.9) is
 * loaded with dlopen at the first convolution that could use it, so that a
 * machine without it builds, links and runs qtune as before, its
 * convolutions on qt_cuda_conv.cu's im2col kernels and cuBLAS. The build
 * needs cuDNN's headers (the toolkit's include directory) for the types;
 * without them (QT_HAVE_CUDNN_H 0) every convolution takes the kernels.
 *
 * What goes to cuDNN (qt__cuda_cudnn_fits): a convolution that is neither
 * depthwise (qt_cuda_depthwise.cuh's kernels) nor pointwise (a plain
 * product already), whose padding is symmetric (cuDNN's legacy API pads
 * both sides alike: TensorFlow 'same' with an extra row at the bottom
 * stays on the kernels), whose tensors have fewer than 2^31 elements, in
 * FP32 or TF32 products. Under BF16 products (--amp bf16) the kernels stay:
 * cuDNN's BF16 convolutions write BF16 outputs, and this engine's mixed
 * precision keeps its activations in FP32 ("Mixed precision" in
 * docs/cuda.md).
 *
 * The algorithms are cuDNN's heuristic choice (the _v7 queries, which time
 * nothing), once per shape, pass and precision, restricted to:
 *   - deterministic ones, so that a run repeats to the bit, as the kernels'
 *     (a weight gradient's atomics would not);
 *   - a workspace within the caller's scratch (qt_cuda_conv2d_scratch_size,
 *     the kernels' column matrices), so that no convolution needs more
 *     device memory than before;
 *   - in FP32 (QT_MATMUL_FP32, the default): FMA math (no TF32 tensor
 *     cores, as cuBLAS's FP32 products), and no FFT or Winograd
 *     transform, whose rounding would approach the FP32 parity bound of
 *     docs/cuda.md (1e-5); in TF32, whatever cuDNN's default math allows;
 *   - never a conversion of the FP32 operands to FP16
 *     (CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION).
 * When no algorithm qualifies, or cuDNN says that it cannot do the
 * convolution (a CUDNN_STATUS_NOT_SUPPORTED status), the kernels run it;
 * when the library cannot make a handle (for a reason other than memory,
 * which is the run's error), they run every one. cuDNN adds
 * into its output (beta 1) for the gradients, as the op table wants;
 * bias and its gradient stay in qt_cuda_conv.cu (the bias gradient summed
 * in double). QT_CUDA_CUDNN=0 (or qt__cuda_set_cudnn) keeps every
 * convolution on the kernels, to compare the two (tools/gpu-check's
 * `im2col:` rows).
 */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <cuda_runtime.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "finetune/cuda/qt_cuda_internal.h"

#ifndef QT_HAVE_CUDNN_H
#define QT_HAVE_CUDNN_H 0
#endif

#if QT_HAVE_CUDNN_H
#include <cudnn.h>
#endif

#define QT_DNN_TEXT_(x) #x
#define QT_DNN_TEXT(x) QT_DNN_TEXT_(x)

/* QT_CUDA_CUDNN; -1 until the environment is read. */
static int use_cudnn = -1;
/* The passes cuDNN ran (qt__cuda_cudnn_count). */
static long passes_run;

extern "C" int qt__cuda_set_cudnn(int on) {
  return qt__cuda_set_switch("QT_CUDA_CUDNN", &use_cudnn, on);
}

extern "C" int qt__cuda_cudnn_switched_on(void) {
  return qt__cuda_switch_on("QT_CUDA_CUDNN", &use_cudnn);
}

extern "C" long qt__cuda_cudnn_count(void) {
  return __atomic_load_n(&passes_run, __ATOMIC_RELAXED);
}

/* Symmetric padding: the output size that cuDNN's (and PyTorch's) formula
 * gives for padding `pad` on both sides, which reads no more padding at
 * the far side than the shape's implied one. */
static bool symmetric(size_t in, size_t out, size_t kernel, size_t stride, size_t pad) {
  if (in + 2 * pad < kernel) return false;
  return (in + 2 * pad - kernel) / stride + 1 == out;
}

extern "C" int qt__cuda_cudnn_fits(const qt_conv2d_shape *s) {
  if (!s || s->groups == 0 || s->in_c == s->groups) return 0;
  bool pointwise = s->kernel_h == 1 && s->kernel_w == 1 && s->stride_h == 1 && s->stride_w == 1 &&
                   s->pad_top == 0 && s->pad_left == 0 && s->out_h == s->in_h &&
                   s->out_w == s->in_w;
  if (pointwise) return 0;
  if (!symmetric(s->in_h, s->out_h, s->kernel_h, s->stride_h, s->pad_top) ||
      !symmetric(s->in_w, s->out_w, s->kernel_w, s->stride_w, s->pad_left))
    return 0;
  /* cuDNN's int sizes: every element count below 2^31 (so each size too). */
  const double big = (double)INT_MAX;
  double in = (double)s->batch * (double)s->in_c * (double)s->in_h * (double)s->in_w;
  double out = (double)s->batch * (double)s->out_c * (double)s->out_h * (double)s->out_w;
  double w =
      (double)s->out_c * (double)(s->in_c / s->groups) * (double)s->kernel_h * (double)s->kernel_w;
  return in <= big && out <= big && w <= big && (double)s->pad_top <= big &&
         (double)s->pad_left <= big && (double)s->stride_h <= big && (double)s->stride_w <= big;
}

#if !QT_HAVE_CUDNN_H

extern "C" int qt__cuda_cudnn_loaded(int *version, char *why, size_t why_size) {
  if (version) *version = 0;
  if (why && why_size) snprintf(why, why_size, "built without cuDNN's headers (cudnn.h)");
  return 0;
}

extern "C" int qt__cuda_cudnn_conv(qt__cudnn_pass pass, float *out, const float *a, const float *b,
                                   float beta, float *scratch, const qt_conv2d_shape *s,
                                   const char *who, qt_err *err) {
  (void)pass, (void)out, (void)a, (void)b, (void)beta, (void)scratch, (void)s, (void)who;
  (void)err;
  return 1;
}

extern "C" void qt__cudnn_destroy(void *handle) {
  (void)handle;
}

#else

/* ------------------------------------------------------------------------- */
/* The library                                                                */
/* ------------------------------------------------------------------------- */

/* The functions used, resolved from the library by name; their types are
 * the headers' declarations. */
#define QT_DNN_FUNCTIONS(X)                        \
  X(cudnnGetVersion)                               \
  X(cudnnGetErrorString)                           \
  X(cudnnCreate)                                   \
  X(cudnnDestroy)                                  \
  X(cudnnSetStream)                                \
  X(cudnnCreateTensorDescriptor)                   \
  X(cudnnSetTensor4dDescriptor)                    \
  X(cudnnDestroyTensorDescriptor)                  \
  X(cudnnCreateFilterDescriptor)                   \
  X(cudnnSetFilter4dDescriptor)                    \
  X(cudnnDestroyFilterDescriptor)                  \
  X(cudnnCreateConvolutionDescriptor)              \
  X(cudnnSetConvolution2dDescriptor)               \
  X(cudnnSetConvolutionGroupCount)                 \
  X(cudnnSetConvolutionMathType)                   \
  X(cudnnDestroyConvolutionDescriptor)             \
  X(cudnnGetConvolutionForwardAlgorithm_v7)        \
  X(cudnnConvolutionForward)                       \
  X(cudnnGetConvolutionBackwardDataAlgorithm_v7)   \
  X(cudnnConvolutionBackwardData)                  \
  X(cudnnGetConvolutionBackwardFilterAlgorithm_v7) \
  X(cudnnConvolutionBackwardFilter)

namespace {

struct dnn_api {
#define QT_DNN_MEMBER(name) decltype(&::name) name;
  QT_DNN_FUNCTIONS(QT_DNN_MEMBER)
#undef QT_DNN_MEMBER
};

} /* namespace */

static dnn_api api;
static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static int api_version; /* cudnnGetVersion's; 0: not loaded */
static char api_why[256];

/* The first library name that loads, with every function and a version of
 * the headers' major one (whose types and enums this file was compiled
 * with); else why not, in api_why. */
static void load(void) {
  const char *names[] = {"libcudnn.so." QT_DNN_TEXT(CUDNN_MAJOR), "libcudnn.so"};
  void *lib = dlopen(names[0], RTLD_NOW | RTLD_LOCAL);
  const char *name = names[0];
  if (!lib) {
    /* The first name's reason, the one a user would look into. */
    snprintf(api_why, sizeof api_why, "%s", dlerror());
    lib = dlopen(name = names[1], RTLD_NOW | RTLD_LOCAL);
  }
  if (!lib) return;
  dnn_api found;
#define QT_DNN_RESOLVE(function)                                          \
  if (!(found.function = (decltype(&::function))dlsym(lib, #function))) { \
    snprintf(api_why, sizeof api_why, "%s has no %s", name, #function);   \
    dlclose(lib);                                                         \
    return;                                                               \
  }
  QT_DNN_FUNCTIONS(QT_DNN_RESOLVE)
#undef QT_DNN_RESOLVE
  int version = (int)found.cudnnGetVersion();
  if (version / 10000 != CUDNN_MAJOR) {
    /* cuDNN 8 numbered its versions major * 1000 + minor * 100 + patch. */
    int major = version < 10000 ? version / 1000 : version / 10000;
    int minor = version < 10000 ? version / 100 % 10 : version / 100 % 100;
    snprintf(api_why, sizeof api_why, "cuDNN %d.%d.%d loaded, built for %d.x", major, minor,
             version % 100, CUDNN_MAJOR);
    dlclose(lib);
    return;
  }
  api = found;
  api_version = version;
}

/* Set (once, with why_unusable) when the library loaded but cannot make
 * a handle: its sublibraries, this driver or this GPU not supported. */
static int unusable;
static char why_unusable[256];
static pthread_mutex_t unusable_lock = PTHREAD_MUTEX_INITIALIZER;

static bool loaded(void) {
  pthread_once(&load_once, load);
  return api_version != 0 && !__atomic_load_n(&unusable, __ATOMIC_ACQUIRE);
}

extern "C" int qt__cuda_cudnn_loaded(int *version, char *why, size_t why_size) {
  bool ok = loaded();
  if (version) *version = ok ? api_version : 0;
  if (why && why_size) {
    pthread_mutex_lock(&unusable_lock);
    snprintf(why, why_size, "%s", ok ? "" : api_version ? why_unusable : api_why);
    pthread_mutex_unlock(&unusable_lock);
  }
  return ok;
}

static int dnn_error(qt_err *err, cudnnStatus_t status, const char *who, const char *what) {
  int category = (int)status / 1000 * 1000;
  int code = status == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED ||
                     status == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED
                 ? QT_ENOMEM
             : category == CUDNN_STATUS_BAD_PARAM ? QT_EINVAL
                                                  : QT_ENODEV;
  return qt_err_set(err, code, "%s: cuDNN's %s: %s (%d)", who, what,
                    api.cudnnGetErrorString(status), (int)status);
}

/* ------------------------------------------------------------------------- */
/* Handles                                                                    */
/* ------------------------------------------------------------------------- */

/* A handle for qt__cuda_dnn_lock, bound to `stream`. Out of memory is
 * an error (the run's); any other failure leaves cuDNN unused by this
 * process, the convolutions on the kernels, and says why
 * (qt__cuda_cudnn_loaded): 1. */
static int make_handle(void **out, cudaStream_t stream, qt_err *err) {
  cudnnHandle_t handle = NULL;
  const char *what = "cudnnCreate";
  cudnnStatus_t status = api.cudnnCreate(&handle);
  if (status == CUDNN_STATUS_SUCCESS) {
    what = "cudnnSetStream";
    status = api.cudnnSetStream(handle, stream);
    if (status != CUDNN_STATUS_SUCCESS) api.cudnnDestroy(handle);
  }
  if (status == CUDNN_STATUS_SUCCESS) {
    *out = handle;
    return 0;
  }
  if (status == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED ||
      status == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED)
    return dnn_error(err, status, "qt_cuda_conv2d", what);
  pthread_mutex_lock(&unusable_lock);
  snprintf(why_unusable, sizeof why_unusable, "cuDNN %d.%d.%d loaded, but %s: %s (%d)",
           api_version / 10000, api_version / 100 % 100, api_version % 100, what,
           api.cudnnGetErrorString(status), (int)status);
  __atomic_store_n(&unusable, 1, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&unusable_lock);
  (void)cudaGetLastError(); /* what cuDNN may have left is not the kernels' error */
  return 1;
}

extern "C" void qt__cudnn_destroy(void *handle) {
  if (handle) api.cudnnDestroy((cudnnHandle_t)handle);
}

/* ------------------------------------------------------------------------- */
/* Algorithms                                                                 */
/* ------------------------------------------------------------------------- */

namespace {

/* The algorithm chosen for a shape, pass, precision and workspace on a
 * device; algo -1: none qualified. */
struct plan {
  int device;
  qt__cudnn_pass pass;
  bool strict; /* FP32: FMA math only, no transforms */
  qt_conv2d_shape shape;
  size_t workspace;
  int algo;
  cudnnMathType_t math;
};

} /* namespace */

/* Enough for every convolution of the models in qt_cnn_arch.c, both
 * precisions; beyond, the oldest entries are asked again. */
#define QT_DNN_PLANS 256
static plan plans[QT_DNN_PLANS];
static size_t plans_made;
static pthread_mutex_t plans_lock = PTHREAD_MUTEX_INITIALIZER;

static bool same_shape(const qt_conv2d_shape &a, const qt_conv2d_shape &b) {
  return a.batch == b.batch && a.in_c == b.in_c && a.in_h == b.in_h && a.in_w == b.in_w &&
         a.out_c == b.out_c && a.out_h == b.out_h && a.out_w == b.out_w &&
         a.kernel_h == b.kernel_h && a.kernel_w == b.kernel_w && a.stride_h == b.stride_h &&
         a.stride_w == b.stride_w && a.pad_top == b.pad_top && a.pad_left == b.pad_left &&
         a.groups == b.groups;
}

static bool same_key(const plan &a, const plan &b) {
  return a.device == b.device && a.pass == b.pass && a.strict == b.strict &&
         a.workspace == b.workspace && same_shape(a.shape, b.shape);
}

/* The entry of p's key, or NULL; under plans_lock. */
static plan *entry_of(const plan &key) {
  size_t n = plans_made < QT_DNN_PLANS ? plans_made : QT_DNN_PLANS;
  for (size_t i = 0; i < n; i++)
    if (same_key(plans[i], key)) return &plans[i];
  return NULL;
}

static bool find_plan(const plan &key, plan *out) {
  pthread_mutex_lock(&plans_lock);
  const plan *p = entry_of(key);
  if (p) *out = *p;
  pthread_mutex_unlock(&plans_lock);
  return p != NULL;
}

/* Keeps p for its key, in place of what was kept for it. */
static void keep_plan(const plan &p) {
  pthread_mutex_lock(&plans_lock);
  plan *old = entry_of(p);
  if (old)
    *old = p;
  else
    plans[plans_made++ % QT_DNN_PLANS] = p;
  pthread_mutex_unlock(&plans_lock);
}

/* The transforms that strict FP32 leaves out. */
static bool transform(qt__cudnn_pass pass, int algo) {
  switch (pass) {
    case QT__CUDNN_FORWARD:
      return algo == CUDNN_CONVOLUTION_FWD_ALGO_FFT ||
             algo == CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING ||
             algo == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD ||
             algo == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED;
    case QT__CUDNN_BACKWARD_DATA:
      return algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT ||
             algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING ||
             algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD ||
             algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED;
    case QT__CUDNN_BACKWARD_FILTER:
      return algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT ||
             algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING ||
             algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD ||
             algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED;
  }
  return true;
}

/* The first of cuDNN's ranked answers (fastest first, by its heuristics)
 * that qualifies (see the file's comment): its algorithm and math in
 * *p, or algo -1. */
template <typename Perf>
static void pick(plan *p, const Perf *perf, int count) {
  p->algo = -1;
  for (int i = 0; i < count; i++) {
    const Perf &r = perf[i];
    if (r.status != CUDNN_STATUS_SUCCESS || r.determinism != CUDNN_DETERMINISTIC ||
        r.memory > p->workspace)
      continue;
    /* Conversion would take FP32 operands down to FP16 (its range). */
    if (r.mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION) continue;
    /* Strict FP32: an answer in FMA math only (the default math would
     * allow TF32, and an answer's workspace and status hold for its own
     * math), without a transform. */
    if (p->strict && (r.mathType != CUDNN_FMA_MATH || transform(p->pass, (int)r.algo))) continue;
    p->algo = (int)r.algo;
    p->math = r.mathType;
    return;
  }
}

namespace {

/* The descriptors of one convolution, made and unmade per call (host
 * structures only). */
struct descriptors {
  cudnnTensorDescriptor_t x = NULL, y = NULL;
  cudnnFilterDescriptor_t w = NULL;
  cudnnConvolutionDescriptor_t conv = NULL;

  ~descriptors() {
    if (x) api.cudnnDestroyTensorDescriptor(x);
    if (y) api.cudnnDestroyTensorDescriptor(y);
    if (w) api.cudnnDestroyFilterDescriptor(w);
    if (conv) api.cudnnDestroyConvolutionDescriptor(conv);
  }

  cudnnStatus_t make(const qt_conv2d_shape *s, cudnnMathType_t math) {
    cudnnStatus_t st = api.cudnnCreateTensorDescriptor(&x);
    if (st == CUDNN_STATUS_SUCCESS) st = api.cudnnCreateTensorDescriptor(&y);
    if (st == CUDNN_STATUS_SUCCESS) st = api.cudnnCreateFilterDescriptor(&w);
    if (st == CUDNN_STATUS_SUCCESS) st = api.cudnnCreateConvolutionDescriptor(&conv);
    if (st == CUDNN_STATUS_SUCCESS)
      st = api.cudnnSetTensor4dDescriptor(x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, (int)s->batch,
                                          (int)s->in_c, (int)s->in_h, (int)s->in_w);
    if (st == CUDNN_STATUS_SUCCESS)
      st = api.cudnnSetTensor4dDescriptor(y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, (int)s->batch,
                                          (int)s->out_c, (int)s->out_h, (int)s->out_w);
    if (st == CUDNN_STATUS_SUCCESS)
      st = api.cudnnSetFilter4dDescriptor(w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, (int)s->out_c,
                                          (int)(s->in_c / s->groups), (int)s->kernel_h,
                                          (int)s->kernel_w);
    if (st == CUDNN_STATUS_SUCCESS)
      st = api.cudnnSetConvolution2dDescriptor(conv, (int)s->pad_top, (int)s->pad_left,
                                               (int)s->stride_h, (int)s->stride_w, 1, 1,
                                               CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT);
    if (st == CUDNN_STATUS_SUCCESS) st = api.cudnnSetConvolutionGroupCount(conv, (int)s->groups);
    if (st == CUDNN_STATUS_SUCCESS) st = api.cudnnSetConvolutionMathType(conv, math);
    return st;
  }
};

} /* namespace */

/* Asks cuDNN's heuristics for the pass's ranked algorithms and picks one
 * (*p); the descriptors carry the math asked for. */
static cudnnStatus_t ask(cudnnHandle_t h, const descriptors &d, plan *p) {
  int count = 0;
  cudnnStatus_t st;
  switch (p->pass) {
    case QT__CUDNN_FORWARD: {
      cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
      st = api.cudnnGetConvolutionForwardAlgorithm_v7(
          h, d.x, d.w, d.conv, d.y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &count, perf);
      if (st == CUDNN_STATUS_SUCCESS) pick(p, perf, count);
      return st;
    }
    case QT__CUDNN_BACKWARD_DATA: {
      cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
      st = api.cudnnGetConvolutionBackwardDataAlgorithm_v7(
          h, d.w, d.y, d.conv, d.x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &count, perf);
      if (st == CUDNN_STATUS_SUCCESS) pick(p, perf, count);
      return st;
    }
    case QT__CUDNN_BACKWARD_FILTER: {
      cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
      st = api.cudnnGetConvolutionBackwardFilterAlgorithm_v7(
          h, d.x, d.y, d.conv, d.w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &count, perf);
      if (st == CUDNN_STATUS_SUCCESS) pick(p, perf, count);
      return st;
    }
  }
  return CUDNN_STATUS_BAD_PARAM;
}

/* ------------------------------------------------------------------------- */
/* The passes                                                                 */
/* ------------------------------------------------------------------------- */

static const char *pass_name(qt__cudnn_pass pass) {
  return pass == QT__CUDNN_FORWARD         ? "cudnnConvolutionForward"
         : pass == QT__CUDNN_BACKWARD_DATA ? "cudnnConvolutionBackwardData"
                                           : "cudnnConvolutionBackwardFilter";
}

/* Runs the pass with the plan's algorithm, under the handle's lock. */
static cudnnStatus_t run(cudnnHandle_t h, const descriptors &d, const plan &p, float *out,
                         const float *a, const float *b, float beta, float *scratch) {
  const float one = 1.0f;
  size_t bytes = p.workspace;
  switch (p.pass) {
    case QT__CUDNN_FORWARD: /* out = y, a = x, b = w */
      return api.cudnnConvolutionForward(h, &one, d.x, a, d.w, b, d.conv,
                                         (cudnnConvolutionFwdAlgo_t)p.algo, scratch, bytes, &beta,
                                         d.y, out);
    case QT__CUDNN_BACKWARD_DATA: /* out = dx, a = w, b = dy */
      return api.cudnnConvolutionBackwardData(h, &one, d.w, a, d.y, b, d.conv,
                                              (cudnnConvolutionBwdDataAlgo_t)p.algo, scratch, bytes,
                                              &beta, d.x, out);
    case QT__CUDNN_BACKWARD_FILTER: /* out = dw, a = x, b = dy */
      return api.cudnnConvolutionBackwardFilter(h, &one, d.x, a, d.y, b, d.conv,
                                                (cudnnConvolutionBwdFilterAlgo_t)p.algo, scratch,
                                                bytes, &beta, d.w, out);
  }
  return CUDNN_STATUS_BAD_PARAM;
}

extern "C" int qt__cuda_cudnn_conv(qt__cudnn_pass pass, float *out, const float *a, const float *b,
                                   float beta, float *scratch, const qt_conv2d_shape *s,
                                   const char *who, qt_err *err) {
  int precision = qt__cuda_matmul_precision();
  if (precision != QT_MATMUL_FP32 && precision != QT_MATMUL_TF32) return 1;
  if (!qt__cuda_cudnn_switched_on() || !qt__cuda_cudnn_fits(s) || !loaded()) return 1;
  plan key = {};
  cudaError_t status = cudaGetDevice(&key.device);
  if (status != cudaSuccess) return qt__cuda_error(err, status, who);
  key.pass = pass;
  key.strict = precision == QT_MATMUL_FP32;
  key.shape = *s;
  key.workspace = qt_cuda_conv2d_scratch_size(s) * sizeof(float);
  cudnnMathType_t asked = key.strict ? CUDNN_FMA_MATH : CUDNN_DEFAULT_MATH;

  void *handle = NULL;
  int rc = qt__cuda_dnn_lock(&handle, make_handle, who, err);
  if (rc != 0) return rc;
  cudnnHandle_t h = (cudnnHandle_t)handle;
  descriptors d;
  plan p = key;
  const char *what = "descriptors";
  cudnnStatus_t st = d.make(s, asked);
  if (st == CUDNN_STATUS_SUCCESS && !find_plan(key, &p)) {
    what = "algorithm heuristics";
    if ((st = ask(h, d, &p)) == CUDNN_STATUS_SUCCESS) keep_plan(p);
  }
  bool taken = st == CUDNN_STATUS_SUCCESS && p.algo >= 0;
  if (taken && p.math != asked) st = api.cudnnSetConvolutionMathType(d.conv, p.math);
  if (taken && st == CUDNN_STATUS_SUCCESS) {
    what = pass_name(pass);
    st = run(h, d, p, out, a, b, beta, scratch);
  }
  qt__cuda_dnn_unlock();
  if ((int)st / 1000 * 1000 == CUDNN_STATUS_NOT_SUPPORTED) {
    /* This cuDNN cannot do this convolution, its library says: the kernels
     * run the pass, now and from now on. */
    p.algo = -1;
    keep_plan(p);
    (void)cudaGetLastError();
    return 1;
  }
  if (st != CUDNN_STATUS_SUCCESS) return dnn_error(err, st, who, what);
  if (!taken) return 1;
  __atomic_add_fetch(&passes_run, 1, __ATOMIC_RELAXED);
  return qt__cuda_check_launch(err, who, what);
}

#endif /* QT_HAVE_CUDNN_H */

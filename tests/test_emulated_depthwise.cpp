/*
 * test_emulated_depthwise.cpp - the depthwise convolutions' kernel bodies
 * (src/finetune/cuda/qt_cuda_depthwise.cuh) run on the CPU through
 * qt_cuda_emulation.h, against the CPU's qt_cpu_conv2d_forward and
 * qt_cpu_conv2d_backward:
 *   - the forward and the input gradient (added, and set over NaN) at every
 *     pixel, for the unrolled 3x3 and 5x5 bodies (with strides 1 and 2
 *     known and not) and the generic one, with int and long indices: equal
 *     bit for bit, also with an infinite weight that the padding leaves out;
 *   - the weight gradient: the blocks of qt_dw::plan, then the chunks'
 *     totals, added to a gradient that starts from random values (the same
 *     terms in double in another order: within 1e-6 by the parity measure
 *     of the `gpu` tests), with int and long coordinates, and a NaN output
 *     gradient where some taps read padding leaving those taps' sums
 *     finite.
 * Shapes: those of test_gpu_cnn_ops (fewer channels for the weight
 * gradient, whose emulation takes about 20 ms a block): strides 1 and 2,
 * 3x3 to 8x8 (64 taps, the CPU's most: 8 groups of taps), a multiplier,
 * padding that leaves taps out, TensorFlow's 'same', a rectangular kernel,
 * 1x1 planes; for the weight gradient several chunks and blocks of 64 and
 * 256 threads (a thread's steps cross rows and images differently), and
 * the split alone of a shape whose chunks the blocks cap and of
 * MobileNetV2's first. `test_gpu_cnn_ops` runs the compiled kernels on a
 * device.
 */
#include "qt_cuda_emulation.h"

#include <random>

#include "finetune/cuda/qt_cuda_depthwise.cuh"
#include "finetune/qt_finetune.h"

static int failures = 0, checks = 0;

/* The emulated launches of qt_cuda_conv.cu's depthwise_weight_grad, with
 * U terms' loads at a time (wide: long coordinates, which it takes only
 * for shapes whose coordinates do not fit an int). */
template <int U>
static void run(float *dweight, const float *dout, const float *inp, const qt_conv2d_shape &s,
                int threads, bool wide = false) {
  qt_dw::shape sh = qt_dw::dims_of<long>(s);
  qt_dw::split sp = qt_dw::plan(sh);
  long weights = sh.out_c * sh.kernel_h * sh.kernel_w;
  /* NaN: a partial sum the blocks should have written and did not. */
  std::vector<double> partial(sp.chunks > 1 ? sp.chunks * weights : 1, NAN);
  qt_emu_launch((int)(sh.out_c * sp.groups * sp.chunks), threads,
                QT_DW_TAPS * (threads / 32) * sizeof(double),
                [&](unsigned char *smem, int block, int tid, int count) {
                  if (wide || !qt_dw::int_coordinates(sh))
                    qt_dw::weight_block<long, U>((double *)smem, dweight, partial.data(), dout, inp,
                                                 sh, sp, block, tid, count);
                  else
                    qt_dw::weight_block<int, U>((double *)smem, dweight, partial.data(), dout, inp,
                                                sh, sp, block, tid, count);
                });
  if (sp.chunks > 1) {
    for (long w = 0; w < weights; w++) qt_dw::total(dweight, partial.data(), weights, sp.chunks, w);
  }
}

static void depthwise_case(const char *name, qt_conv2d_shape s, int threads, long want_chunks,
                           unsigned seed, bool wide = false) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  size_t n_in = s.batch * s.in_c * s.in_h * s.in_w, n_out = s.batch * s.out_c * s.out_h * s.out_w;
  size_t n_w = s.out_c * s.kernel_h * s.kernel_w;
  std::vector<float> inp(n_in), dout(n_out), weight(n_w), init(n_w);
  for (float &v : inp) v = normal(rng);
  for (float &v : dout) v = normal(rng);
  for (float &v : weight) v = normal(rng);
  for (float &v : init) v = normal(rng);
  std::vector<float> want = init, got = init, got3 = init;
  qt_cpu_conv2d_backward(nullptr, want.data(), nullptr, nullptr, dout.data(), inp.data(),
                         weight.data(), &s);
  run<1>(got.data(), dout.data(), inp.data(), s, threads, wide);
  double e = qt_emu_parity_error(got, want, &init);
  checks++;
  if (!(e <= 1e-6)) {
    printf("FAIL %s, %d threads%s: parity error %.3g\n", name, threads,
           wide ? ", long coordinates" : "", e);
    failures++;
  }
  /* Three terms' loads in flight: the same sums in the same order. */
  run<3>(got3.data(), dout.data(), inp.data(), s, threads, wide);
  checks++;
  if (memcmp(got3.data(), got.data(), got.size() * sizeof(float)) != 0) {
    printf("FAIL %s, %d threads%s: three terms at a time differ from one\n", name, threads,
           wide ? ", long coordinates" : "");
    failures++;
  }
  /* The split the case is meant to exercise. */
  qt_dw::shape sh = qt_dw::dims_of<long>(s);
  long chunks = qt_dw::plan(sh).chunks;
  checks++;
  if (chunks != want_chunks) {
    printf("FAIL %s: %ld chunks, meant %ld\n", name, chunks, want_chunks);
    failures++;
  }
}

/* The forward and the input gradient's bodies at every pixel of every
 * plane (they use no barriers: a host loop is their grid), with the
 * kernel size K and index type I that qt_cuda_conv.cu would pick, and
 * with the generic ones: equal to the CPU's bit for bit, in place (added
 * to dinp) and set (over NaN). */
template <int K, int S, typename I>
static void pixel_case(const char *name, const qt_conv2d_shape &s, const std::vector<float> &inp,
                       const std::vector<float> &dout, const std::vector<float> &weight,
                       const std::vector<float> &bias, const std::vector<float> &want_out,
                       const std::vector<float> &dinp0, const std::vector<float> &want_dinp) {
  qt_dw::dims<I> d = qt_dw::dims_of<I>(s);
  std::vector<float> out(want_out.size(), NAN), dinp = dinp0, set(dinp0.size(), NAN);
  for (I plane = 0; plane < d.batch * d.out_c; plane++)
    for (I p = 0; p < d.out_h * d.out_w; p++)
      qt_dw::forward_at<K>(out.data(), inp.data(), weight.data(), bias.data(), d, plane, p);
  for (I plane = 0; plane < d.batch * d.in_c; plane++) {
    for (I p = 0; p < d.in_h * d.in_w; p++) {
      qt_dw::input_grad_at<K, S>(dinp.data(), dout.data(), weight.data(), d, plane, p, 0);
      qt_dw::input_grad_at<K, S>(set.data(), dout.data(), weight.data(), d, plane, p, 1);
    }
  }
  /* set: the gradient alone, which the CPU adds to zeros. */
  std::vector<float> zeros(dinp0.size(), 0.0f);
  qt_cpu_conv2d_backward(zeros.data(), nullptr, nullptr, nullptr, dout.data(), inp.data(),
                         weight.data(), &s);
  const char *what[] = {"forward", "input gradient", "input gradient, set"};
  const std::vector<float> *got[] = {&out, &dinp, &set}, *want[] = {&want_out, &want_dinp, &zeros};
  for (int k = 0; k < 3; k++) {
    checks++;
    if (memcmp(got[k]->data(), want[k]->data(), want[k]->size() * sizeof(float)) != 0) {
      printf("FAIL %s, K %d, S %d, %zu-byte indices: %s differs from the CPU's\n", name, K, S,
             sizeof(I), what[k]);
      failures++;
    }
  }
}

/* inf_tap: the first weight infinite, so that the outputs whose window
 * puts that tap in the padding stay finite only if the padding is left
 * out (as on the CPU), not added as 0 * w. */
static void pixels_case(const char *name, qt_conv2d_shape s, unsigned seed, bool inf_tap = false) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  size_t n_in = s.batch * s.in_c * s.in_h * s.in_w, n_out = s.batch * s.out_c * s.out_h * s.out_w;
  std::vector<float> inp(n_in), dout(n_out), weight(s.out_c * s.kernel_h * s.kernel_w),
      bias(s.out_c), dinp0(n_in);
  for (float &v : inp) v = normal(rng);
  for (float &v : dout) v = normal(rng);
  for (float &v : weight) v = normal(rng);
  for (float &v : bias) v = normal(rng);
  for (float &v : dinp0) v = normal(rng);
  if (inf_tap) weight[0] = INFINITY;
  std::vector<float> want_out(n_out), want_dinp = dinp0;
  qt_cpu_conv2d_forward(want_out.data(), nullptr, inp.data(), weight.data(), bias.data(), &s);
  qt_cpu_conv2d_backward(want_dinp.data(), nullptr, nullptr, nullptr, dout.data(), inp.data(),
                         weight.data(), &s);
  /* The instantiations qt_cuda_conv.cu's depthwise_dispatch would take,
   * and the generic ones. */
  size_t k = s.kernel_h == s.kernel_w ? s.kernel_h : 0;
  size_t stride = s.stride_h == s.stride_w ? s.stride_h : 0;
#define QT_PIXEL_CASE(K, S, I) \
  pixel_case<K, S, I>(name, s, inp, dout, weight, bias, want_out, dinp0, want_dinp)
  if (k == 3 && stride == 1) QT_PIXEL_CASE(3, 1, int);
  if (k == 3 && stride == 2) QT_PIXEL_CASE(3, 2, int);
  if (k == 3) QT_PIXEL_CASE(3, 0, int);
  if (k == 5 && stride == 1) QT_PIXEL_CASE(5, 1, int);
  if (k == 5 && stride == 2) QT_PIXEL_CASE(5, 2, int);
  if (k == 5) QT_PIXEL_CASE(5, 0, int);
  QT_PIXEL_CASE(0, 0, int);
  QT_PIXEL_CASE(0, 0, long);
#undef QT_PIXEL_CASE
}

static qt_conv2d_shape square(size_t batch, size_t in_c, size_t size, size_t out_c, size_t kernel,
                              size_t stride, size_t pad) {
  qt_conv2d_shape s;
  qt_err err;
  if (qt_conv2d_shape_init(&s, batch, in_c, size, size, out_c, kernel, stride, pad, in_c, &err))
    abort();
  return s;
}

/* A NaN output gradient at the image's corner: the taps whose input there
 * is padding leave it out, as the CPU does, so their weights' gradients
 * stay finite and the others' are NaN. */
static void nan_case(int threads) {
  qt_conv2d_shape s = square(2, 2, 9, 2, 3, 1, 1);
  size_t n_in = s.batch * s.in_c * s.in_h * s.in_w, n_out = s.batch * s.out_c * s.out_h * s.out_w;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> inp(n_in), dout(n_out), weight(18), want(18, 0.0f), got(18, 0.0f);
  for (float &v : inp) v = normal(rng);
  for (float &v : dout) v = normal(rng);
  for (float &v : weight) v = normal(rng);
  dout[0] = NAN; /* image 0, channel 0, output (0, 0) */
  qt_cpu_conv2d_backward(nullptr, want.data(), nullptr, nullptr, dout.data(), inp.data(),
                         weight.data(), &s);
  run<1>(got.data(), dout.data(), inp.data(), s, threads);
  std::vector<float> got3(18, 0.0f);
  run<3>(got3.data(), dout.data(), inp.data(), s, threads);
  int finite = 0, off = 0;
  for (size_t k = 0; k < want.size(); k++) {
    finite += std::isfinite(want[k]);
    if (std::isnan(got[k]) != std::isnan(want[k]) || std::isnan(got3[k]) != std::isnan(got[k]) ||
        (std::isfinite(got[k]) && got3[k] != got[k]) ||
        (std::isfinite(want[k]) && fabs(got[k] - want[k]) > 1e-6 * (1.0 + fabs(want[k]))))
      off++;
  }
  checks++;
  /* Channel 0's 4 taps inside the image at output (0, 0) are NaN. */
  if (off || finite != 14) {
    printf("FAIL NaN at the corner, %d threads: %d weights differ, %d finite (meant 14)\n", threads,
           off, finite);
    failures++;
  }
}

/* The shape's split, without running it (the emulation takes about 20 ms a
 * block of 64 threads): a capped one. */
static void split_case(const char *name, qt_conv2d_shape s, long want_chunks) {
  qt_dw::shape sh = qt_dw::dims_of<long>(s);
  qt_dw::split sp = qt_dw::plan(sh);
  long count = sh.batch * sh.out_h * sh.out_w;
  checks++;
  if (sp.chunks != want_chunks || sh.out_c * sp.groups * sp.chunks > QT_DW_MAX_BLOCKS ||
      sp.per_chunk * sp.chunks < count || sp.per_chunk * (sp.chunks - 1) >= count) {
    printf("FAIL %s: %ld chunks of %ld terms, meant %ld\n", name, sp.chunks, sp.per_chunk,
           want_chunks);
    failures++;
  }
}

int main(void) {
  unsigned seed = 1;
  /* Blocks of 64 threads; a few of 256 (the CUDA launch's). */
  depthwise_case("3x3/1 (3, 5, 17x17)", square(3, 5, 17, 5, 3, 1, 1), 64, 1, seed++);
  depthwise_case("3x3/2 (1, 7, 17x17)", square(1, 7, 17, 7, 3, 2, 1), 64, 1, seed++);
  depthwise_case("3x3/2 even (3, 6, 8x8)", square(3, 6, 8, 6, 3, 2, 1), 64, 1, seed++);
  depthwise_case("5x5 multiplier 2 (3, 3, 9x9) -> 6", square(3, 3, 9, 6, 5, 1, 2), 64, 1, seed++);
  depthwise_case("7x7/2 pad 3 (1, 2, 10x10)", square(1, 2, 10, 2, 7, 2, 3), 64, 1, seed++);
  depthwise_case("8x8/1 pad 3 (2, 2, 12x12)", square(2, 2, 12, 2, 8, 1, 3), 64, 1, seed++);
  depthwise_case("1x1 on 1x1 (1, 3, 1x1)", square(1, 3, 1, 3, 1, 1, 0), 64, 1, seed++);
  qt_conv2d_shape rect = {.batch = 3,
                          .in_c = 2,
                          .in_h = 11,
                          .in_w = 8,
                          .out_c = 4,
                          .out_h = (11 + 2 * 2 - 5) / 1 + 1,
                          .out_w = (8 + 2 * 1 - 3) / 2 + 1,
                          .kernel_h = 5,
                          .kernel_w = 3,
                          .stride_h = 1,
                          .stride_w = 2,
                          .pad_top = 2,
                          .pad_left = 1,
                          .groups = 2};
  depthwise_case("rectangular 5x3/(1,2) x2 (3, 2, 11x8)", rect, 64, 1, seed++);
  /* Several chunks: 12,800 and 16,384 terms, and 5 chunks over planes of
   * 45 x 45. */
  depthwise_case("3x3/1 (8, 3, 40x40)", square(8, 3, 40, 3, 3, 1, 1), 64, 2, seed++);
  depthwise_case("5x5 multiplier 2 (4, 1, 64x64) -> 2", square(4, 1, 64, 2, 5, 1, 2), 64, 2,
                 seed++);
  for (int threads : {64, 256}) {
    depthwise_case("3x3/1 (20, 2, 45x45)", square(20, 2, 45, 2, 3, 1, 1), threads, 5, seed++);
    depthwise_case("1x1 on 1x1 (300, 3, 1x1)", square(300, 3, 1, 3, 1, 1, 0), threads, 1, seed++);
  }
  depthwise_case("3x3/2 (2, 3, 17x17)", square(2, 3, 17, 3, 3, 2, 1), 256, 1, seed++);
  depthwise_case("7x7/2 pad 3 (1, 2, 10x10)", square(1, 2, 10, 2, 7, 2, 3), 64, 1, seed++, true);
  depthwise_case("3x3/1 (20, 2, 45x45)", square(20, 2, 45, 2, 3, 1, 1), 64, 5, seed++, true);
  nan_case(64);
  /* The forward and the input gradient. */
  pixels_case("3x3/1 (3, 24, 17x17)", square(3, 24, 17, 24, 3, 1, 1), seed++);
  pixels_case("3x3/1 (1, 2, 6x6), an infinite tap", square(1, 2, 6, 2, 3, 1, 1), seed++, true);
  pixels_case("5x5/2 (1, 2, 9x9), an infinite tap", square(1, 2, 9, 2, 5, 2, 2), seed++, true);
  pixels_case("3x3/2 (2, 40, 17x17)", square(2, 40, 17, 40, 3, 2, 1), seed++);
  pixels_case("3x3/2 even (3, 37, 8x8)", square(3, 37, 8, 37, 3, 2, 1), seed++);
  pixels_case("3x3/2 no padding (2, 5, 9x9)", square(2, 5, 9, 5, 3, 2, 0), seed++);
  pixels_case("5x5 multiplier 2 (3, 8, 9x9) -> 16", square(3, 8, 9, 16, 5, 1, 2), seed++);
  pixels_case("5x5/2 (2, 6, 15x15)", square(2, 6, 15, 6, 5, 2, 2), seed++);
  pixels_case("7x7/2 pad 3 (1, 6, 10x10)", square(1, 6, 10, 6, 7, 2, 3), seed++);
  pixels_case("8x8/1 pad 3 (2, 3, 12x12)", square(2, 3, 12, 3, 8, 1, 3), seed++);
  pixels_case("1x1 on 1x1 (4, 3, 1x1)", square(4, 3, 1, 3, 1, 1, 0), seed++);
  pixels_case("rectangular 5x3/(1,2) x2 (3, 2, 11x8)", rect, seed++);
  qt_conv2d_shape same;
  qt_err err;
  if (qt_conv2d_shape_init_same(&same, 3, 11, 15, 15, 11, 5, 2, 11, &err)) abort();
  pixels_case("same 5x5/2 (3, 11, 15x15)", same, seed++);
  if (qt_conv2d_shape_init_same(&same, 1, 13, 16, 16, 13, 3, 2, 13, &err)) abort();
  pixels_case("same 3x3/2 even (1, 13, 16x16)", same, seed++);
  /* 19,200 terms would be 3 chunks; 300 channels in 3 groups of taps allow
   * 2. MobileNetV2's first: 802,816 terms, 64 chunks of its 32 channels. */
  split_case("5x5/1 (3, 300, 80x80)", square(3, 300, 80, 300, 5, 1, 2), 2);
  split_case("3x3/1 (64, 32, 112x112)", square(64, 32, 112, 32, 3, 1, 1), 64);
  /* Which coordinates the launcher takes: int for MobileNetV2's first,
   * long where a tap's row (3 outputs 2^30 apart) passes INT_MAX. */
  qt_dw::shape wide = qt_dw::dims_of<long>(square(64, 32, 112, 32, 3, 1, 1));
  checks++;
  if (!qt_dw::int_coordinates(wide)) {
    printf("FAIL int coordinates refused for (64, 32, 112x112)\n");
    failures++;
  }
  wide.out_h = 3;
  wide.stride_h = 1L << 30;
  checks++;
  if (qt_dw::int_coordinates(wide)) {
    printf("FAIL int coordinates taken for a stride of 2^30\n");
    failures++;
  }
  printf("%d checks, %d failed\n", checks, failures);
  return failures ? 1 : 0;
}

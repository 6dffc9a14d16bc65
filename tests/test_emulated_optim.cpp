/*
 * test_emulated_optim.cpp - the Adam kernels' body
 * (src/finetune/cuda/qt_cuda_optim.cuh) run on the CPU through
 * qt_cuda_emulation.h, as qt__cuda_optim_steps packs and launches it: 95
 * tensors of 0 to 2 chunks and a few elements (so that the jobs fill a
 * launch twice and a tensor ends inside, at and past a chunk's end), each
 * with its own learning rate, step count and decay, for Adam and AdamW,
 * against qt_optim_tensor_step on each: parameters and moments bit for
 * bit, and the element past each tensor untouched. The compiled kernel and
 * its launches run on a device in test_gpu_optim.
 */
#include "qt_cuda_emulation.h"

#include <random>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"

#include "finetune/cuda/qt_cuda_optim.cuh"

static int failures = 0;

/* One tensor's four arrays, each with a guard element after it. */
struct tensor {
  size_t n;
  std::vector<float> x, g, m, v;
};

static bool same_bits(const std::vector<float> &a, const std::vector<float> &b) {
  return a.size() == b.size() && memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

/* The launches of qt__cuda_optim_steps over these jobs (jobs appended
 * until full, then launched). */
static void run_jobs(const std::vector<qt__adam_job> &all) {
  qt__adam_jobs jobs;
  jobs.count = 0;
  jobs.first_block[0] = 0;
  auto launch = [&] {
    if (jobs.count == 0) return;
    qt_emu_launch((int)jobs.first_block[jobs.count], 256, 0,
                  [&](unsigned char *, int block, int t, int threads) {
                    qt_optim::adam_jobs_block(jobs, (unsigned)block, (unsigned)t,
                                              (unsigned)threads);
                  });
    jobs.count = 0;
  };
  for (const qt__adam_job &a : all) {
    if (qt_optim::add_job(jobs, a)) continue;
    launch();
    if (!qt_optim::add_job(jobs, a)) abort();
  }
  launch();
}

static void optim_case(qt_optim_kind kind, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> chunks(0, 2), extra(0, 9);
  qt_optim_params p = qt_optim_default_params();
  p.kind = kind;
  p.weight_decay = 0.05;
  std::vector<tensor> want, got;
  std::vector<qt__optim_slice> slices;
  const int count = 95;
  for (int i = 0; i < count; i++) {
    tensor t;
    /* 0 to 2 chunks and -1 to 8 elements: empty, ending inside, at and
     * just past a chunk's end, and small ones. */
    long n = (long)chunks(rng) * QT_ADAM_CHUNK + extra(rng) - 1;
    t.n = n < 0 ? 0 : (size_t)n;
    for (std::vector<float> *a : {&t.x, &t.g, &t.m, &t.v}) {
      a->resize(t.n + 1);
      for (float &e : *a) e = normal(rng);
    }
    for (float &e : t.v) e = e * e; /* a second moment is not negative */
    want.push_back(t);
  }
  got = want;
  std::vector<qt__adam_job> jobs;
  for (int i = 0; i < count; i++) {
    tensor &w = want[i], &t = got[i];
    double lr = 1e-3 * (1 + i % 7);
    long step = 1 + i % 5;
    int decay = i % 3 != 0;
    qt_optim_tensor_step(&p, lr, decay, step, w.x.data(), w.g.data(), w.m.data(), w.v.data(), w.n);
    if (t.n == 0) continue;
    qt__adam_job a = {t.x.data(), t.g.data(), t.m.data(), t.v.data(), t.n, {}, 0.0f};
    double wd = decay ? qt_optim_zero_decay(&p) : 0.0;
    if (qt__optim_adam_prepare("test", &p, lr, wd, step, a.x, a.grad, a.m, a.v, a.n, &a.c,
                               &a.coupled, NULL) != 0)
      abort();
    jobs.push_back(a);
  }
  run_jobs(jobs);
  int off = 0;
  for (int i = 0; i < count; i++) {
    off += !same_bits(got[i].x, want[i].x) || !same_bits(got[i].m, want[i].m) ||
           !same_bits(got[i].v, want[i].v) || !same_bits(got[i].g, want[i].g);
  }
  if (off) failures++;
  printf("%s %s: %zu jobs, %d of %d tensors differ\n", off ? "FAIL" : "ok  ",
         kind == QT_OPTIM_KIND_ADAM ? "Adam" : "AdamW", jobs.size(), off, count);
}

int main(void) {
  optim_case(QT_OPTIM_KIND_ADAMW, 1);
  optim_case(QT_OPTIM_KIND_ADAM, 2);
  printf("%d of 2 checks failed\n", failures);
  return failures != 0;
}

/*
 * test_cpu_parallel.c - the CPU ops' worker threads (qt_cpu_parallel.h):
 * every item of a job runs once, in pieces on grain bounds; a job started
 * from a piece, or after a fork, still runs to its end; OpenBLAS's thread
 * count comes back after a job that calls BLAS; and the ops that split
 * their work give the same bits at 1, 2 and 3 threads (and the split
 * product within rounding of one OpenBLAS call).
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>

#include "finetune/cpu/qt_cpu_parallel.h"
#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"
#include "qt_test.h"

/* ------------------------------------------------------------------------- */
/* The pool                                                                   */
/* ------------------------------------------------------------------------- */

#define COVER_N 10007 /* a prime: the last piece is short */

typedef struct cover_job {
  atomic_int *runs;       /* (COVER_N) times each item ran */
  atomic_int bad_bounds;  /* pieces that did not start on a grain bound */
  atomic_int bad_scratch; /* workers without their scratch */
  atomic_int caller_pieces;
  size_t grain, scratch_bytes;
  pthread_t caller;
} cover_job;

static void cover_piece(void *job, size_t begin, size_t end, void *scratch) {
  cover_job *J = job;
  if (begin % J->grain != 0 || (end != COVER_N && end % J->grain != 0)) J->bad_bounds++;
  if (pthread_equal(pthread_self(), J->caller)) {
    J->caller_pieces++;
    if (scratch) J->bad_scratch++;
  } else if (J->scratch_bytes > 0) {
    if (!scratch)
      J->bad_scratch++;
    else
      memset(scratch, 0xab, J->scratch_bytes); /* the sanitizers see an overrun */
  }
  for (size_t i = begin; i < end; i++) J->runs[i]++;
}

/* Runs a covering job at `threads` threads; returns the items not run once. */
static int run_cover(int threads, size_t grain, size_t scratch_bytes, cover_job *J) {
  openblas_set_num_threads(threads);
  static atomic_int runs[COVER_N];
  for (size_t i = 0; i < COVER_N; i++) runs[i] = 0;
  memset(J, 0, sizeof *J);
  J->runs = runs;
  J->grain = grain;
  J->scratch_bytes = scratch_bytes;
  J->caller = pthread_self();
  qt__cpu_parallel_for(COVER_N, grain, scratch_bytes, 0, cover_piece, J);
  int wrong = 0;
  for (size_t i = 0; i < COVER_N; i++) wrong += runs[i] != 1;
  return wrong;
}

static void test_every_item_once(void) {
  int thread_counts[] = {1, 2, 3, 7};
  size_t grains[] = {1, 16, 1000, 20000};
  for (size_t t = 0; t < 4; t++)
    for (size_t g = 0; g < 4; g++) {
      cover_job J;
      CU_ASSERT_EQUAL(run_cover(thread_counts[t], grains[g], 4096, &J), 0);
      CU_ASSERT_EQUAL(J.bad_bounds, 0);
      CU_ASSERT_EQUAL(J.bad_scratch, 0);
    }
}

static void nested_piece(void *job, size_t begin, size_t end, void *scratch) {
  (void)scratch;
  cover_job *outer = job;
  /* Each outer item runs an inner job of 3 items on this thread. */
  for (size_t i = begin; i < end; i++) {
    cover_job inner;
    memset(&inner, 0, sizeof inner);
    static _Thread_local atomic_int inner_runs[3];
    for (size_t k = 0; k < 3; k++) inner_runs[k] = 0;
    inner.runs = inner_runs;
    inner.grain = 1;
    inner.caller = pthread_self();
    qt__cpu_parallel_for(3, 1, 0, 0, cover_piece, &inner);
    int once = inner_runs[0] == 1 && inner_runs[1] == 1 && inner_runs[2] == 1;
    if (!once || inner.caller_pieces != 1) outer->bad_bounds++;
    outer->runs[i]++;
  }
}

/* A job started from a piece runs whole, as one piece, on that thread. */
static void test_nested_job_on_its_thread(void) {
  openblas_set_num_threads(3);
  static atomic_int runs[64];
  cover_job J;
  memset(&J, 0, sizeof J);
  J.runs = runs;
  qt__cpu_parallel_for(64, 1, 0, 0, nested_piece, &J);
  CU_ASSERT_EQUAL(J.bad_bounds, 0);
  for (size_t i = 0; i < 64; i++) CU_ASSERT_EQUAL(runs[i], 1);
}

typedef struct sum_job {
  atomic_long total;
} sum_job;

static void sum_piece(void *job, size_t begin, size_t end, void *scratch) {
  (void)scratch;
  sum_job *S = job;
  long part = 0;
  for (size_t i = begin; i < end; i++) part += (long)i;
  S->total += part;
}

/* Many short jobs in a row (the workers wake, take, sleep: races would show
 * here, and under make sanitize-thread). */
static void test_many_jobs(void) {
  openblas_set_num_threads(3);
  int wrong = 0;
  for (long job = 0; job < 3000; job++) {
    size_t n = (size_t)(job % 97) + 1;
    sum_job S = {0};
    qt__cpu_parallel_for(n, 1, 0, 0, sum_piece, &S);
    wrong += S.total != (long)(n * (n - 1) / 2);
  }
  CU_ASSERT_EQUAL(wrong, 0);
}

static void blas_piece(void *job, size_t begin, size_t end, void *scratch) {
  (void)begin, (void)end, (void)scratch;
  atomic_int *one_thread = job;
  if (openblas_get_num_threads() == 1) (*one_thread)++;
}

/* OpenBLAS takes one thread while a BLAS job runs, on one thread or more,
 * and gets its count back after. */
static void test_blas_threads_restored(void) {
  for (int threads = 1; threads <= 3; threads++) {
    openblas_set_num_threads(threads);
    atomic_int one_thread = 0;
    qt__cpu_parallel_for(8, 1, 0, QT_CPU_PARALLEL_BLAS, blas_piece, &one_thread);
    CU_ASSERT(one_thread >= 1);
    CU_ASSERT_EQUAL(openblas_get_num_threads(), threads);
  }
}

/* After fork() the child has no workers; its jobs start new ones. */
static void test_job_after_fork(void) {
  cover_job J;
  CU_ASSERT_EQUAL_FATAL(run_cover(3, 16, 0, &J), 0); /* the parent's workers run */
  fflush(NULL);
  pid_t pid = fork();
  CU_ASSERT_FATAL(pid >= 0);
  if (pid == 0) {
    alarm(60); /* a hang fails the test instead of stalling it */
    int wrong = run_cover(3, 16, 1024, &J) + J.bad_scratch;
    _exit(wrong == 0 ? 0 : 1);
  }
  int status = 0;
  CU_ASSERT_EQUAL(waitpid(pid, &status, 0), pid);
  CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CU_ASSERT_EQUAL(run_cover(3, 16, 0, &J), 0); /* and the parent's still do */
}

/* ------------------------------------------------------------------------- */
/* The ops: the same bits at any thread count                                 */
/* ------------------------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static float uniform(void) {
  rng_state = rng_state * 6364136223846793005u + 1442695040888963407u;
  return (float)((rng_state >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

static float *random_array(size_t n) {
  float *x = malloc(n * sizeof *x);
  for (size_t i = 0; i < n; i++) x[i] = uniform();
  return x;
}

static float *copy_of(const float *x, size_t n) {
  float *y = malloc(n * sizeof *y);
  memcpy(y, x, n * sizeof *y);
  return y;
}

/* The shapes: each op's work splits into several pieces at 2 and 3
 * threads (the grains are QT_CPU_VALUES_GRAIN values, as many rows or
 * channels as hold them, up to QT_CPU_GEMM_BLOCKS blocks of a product, one
 * (image, head) pair). */
#define VALUES 70001
#define ROWS 301
#define COLS 200
#define BATCH 3
#define TOKENS 37
#define HEADS 4
#define WIDTH 64 /* attention features: HEADS heads of 16 */
#define IN_C 96
#define BN_BATCH 2
#define BN_C 100
#define BN_HW 300

/* Every output of every op at the current thread count, in one array. */
typedef struct outputs {
  float *values;
  size_t n;
} outputs;

static void append(outputs *o, const float *x, size_t n) {
  o->values = realloc(o->values, (o->n + n) * sizeof *o->values);
  memcpy(o->values + o->n, x, n * sizeof *x);
  o->n += n;
}

static outputs run_ops(int threads) {
  openblas_set_num_threads(threads);
  rng_state = 0x9e3779b97f4a7c15u;
  outputs o = {0};
  /* GELU, forward and backward */
  float *x = random_array(VALUES), *dy = random_array(VALUES);
  float *y = malloc(VALUES * sizeof *y), *dx = random_array(VALUES);
  qt_cpu_gelu_forward(y, x, VALUES);
  qt_cpu_gelu_backward(dx, dy, x, VALUES);
  append(&o, y, VALUES);
  append(&o, dx, VALUES);
  /* Adam (AdamW through qt_optim_tensor_step) and the fused AdamW */
  float *p = copy_of(x, VALUES), *m = random_array(VALUES), *v = random_array(VALUES);
  for (size_t i = 0; i < VALUES; i++) v[i] = fabsf(v[i]);
  float *p2 = copy_of(p, VALUES), *m2 = copy_of(m, VALUES), *v2 = copy_of(v, VALUES);
  qt_adamw_params hp = qt_adamw_default_params();
  hp.weight_decay = 0.01;
  qt_optim_params adam = qt__optim_params_adamw(&hp);
  qt_optim_tensor_step(&adam, 1e-3, 1, 3, p, dy, m, v, VALUES);
  CU_ASSERT_EQUAL(qt_cpu_adamw_step(p2, dy, m2, v2, VALUES, &hp, 3, NULL), 0);
  append(&o, p, VALUES);
  append(&o, m, VALUES);
  append(&o, v, VALUES);
  append(&o, p2, VALUES);
  free(p), free(m), free(v), free(p2), free(m2), free(v2);
  free(x), free(dy), free(y), free(dx);

  /* Layer norm and the residual, ROWS x COLS */
  size_t rc = (size_t)ROWS * COLS;
  x = random_array(rc), dy = random_array(rc), dx = random_array(rc);
  y = malloc(rc * sizeof *y);
  float *w = random_array(COLS), *b = random_array(COLS);
  float *dw = random_array(COLS), *db = random_array(COLS);
  float mean[ROWS], rstd[ROWS];
  qt_cpu_layernorm_forward(y, mean, rstd, x, w, b, ROWS, COLS, 1e-6f);
  qt_cpu_layernorm_backward(dx, dw, db, dy, x, w, mean, rstd, ROWS, COLS);
  append(&o, y, rc);
  append(&o, mean, ROWS);
  append(&o, rstd, ROWS);
  append(&o, dx, rc);
  append(&o, dw, COLS);
  append(&o, db, COLS);
  float *dbranch = random_array(rc), *dgamma = random_array(COLS);
  qt_cpu_residual_forward(y, x, dy, w, ROWS, COLS);
  qt_cpu_residual_backward(dx, dbranch, dgamma, dy, x, w, ROWS, COLS);
  append(&o, y, rc);
  append(&o, dx, rc);
  append(&o, dbranch, rc);
  append(&o, dgamma, COLS);
  free(dbranch), free(dgamma), free(w), free(b), free(dw), free(db);

  /* The linear layer, ROWS x IN_C -> COLS, and back */
  float *weight = random_array((size_t)COLS * IN_C), *bias = random_array(COLS);
  float *dweight = random_array((size_t)COLS * IN_C), *dbias = random_array(COLS);
  float *inp = random_array((size_t)ROWS * IN_C), *dinp = random_array((size_t)ROWS * IN_C);
  qt_cpu_linear_forward(y, inp, weight, bias, ROWS, IN_C, COLS);
  qt_cpu_linear_backward(dinp, dweight, dbias, dy, inp, weight, ROWS, IN_C, COLS);
  append(&o, y, rc);
  append(&o, dinp, (size_t)ROWS * IN_C);
  append(&o, dweight, (size_t)COLS * IN_C);
  append(&o, dbias, COLS);
  free(weight), free(bias), free(dweight), free(dbias), free(inp), free(dinp);
  free(x), free(dy), free(dx), free(y);

  /* ReLU6 and SiLU */
  x = random_array(VALUES), dy = random_array(VALUES), dx = random_array(VALUES);
  for (size_t i = 0; i < VALUES; i++) x[i] *= 8.0f;
  y = malloc(VALUES * sizeof *y);
  qt_cpu_relu6_forward(y, x, VALUES);
  qt_cpu_relu6_backward(dx, dy, x, VALUES);
  append(&o, y, VALUES);
  qt_cpu_silu_forward(y, x, VALUES);
  qt_cpu_silu_backward(dx, dy, x, VALUES);
  append(&o, y, VALUES);
  append(&o, dx, VALUES);
  free(x), free(dy), free(dx), free(y);

  /* Batch norm (train), BN_BATCH x BN_C x BN_HW */
  size_t bn_n = (size_t)BN_BATCH * BN_C * BN_HW;
  x = random_array(bn_n), dy = random_array(bn_n), dx = random_array(bn_n);
  y = malloc(bn_n * sizeof *y);
  float *bn_w = random_array(BN_C), *bn_b = random_array(BN_C);
  float *bn_dw = random_array(BN_C), *bn_db = random_array(BN_C);
  float *running_mean = random_array(BN_C), *running_var = random_array(BN_C);
  float bn_mean[BN_C], bn_rstd[BN_C];
  for (size_t i = 0; i < BN_C; i++) running_var[i] = fabsf(running_var[i]);
  qt_cpu_batchnorm_forward(y, bn_mean, bn_rstd, running_mean, running_var, x, bn_w, bn_b, BN_BATCH,
                           BN_C, BN_HW, 1e-5f, 0.1f, QT_BATCHNORM_MODE_TRAIN);
  qt_cpu_batchnorm_backward(dx, bn_dw, bn_db, dy, x, bn_w, bn_mean, bn_rstd, BN_BATCH, BN_C, BN_HW,
                            QT_BATCHNORM_MODE_TRAIN);
  append(&o, y, bn_n);
  append(&o, bn_mean, BN_C);
  append(&o, bn_rstd, BN_C);
  append(&o, running_mean, BN_C);
  append(&o, running_var, BN_C);
  append(&o, dx, bn_n);
  append(&o, bn_dw, BN_C);
  append(&o, bn_db, BN_C);
  free(x), free(dy), free(dx), free(y), free(bn_w), free(bn_b), free(bn_dw), free(bn_db);
  free(running_mean), free(running_var);

  /* Convolutions: 3x3 over planes narrow enough to go side by side, a
   * grouped one, a pointwise one of wide planes, a depthwise one with two
   * outputs an input channel */
  struct {
    size_t in_c, size, out_c, kernel, pad, groups;
  } convs[] = {
      {8, 20, 70, 3, 1, 1}, {8, 20, 70, 3, 1, 2}, {16, 24, 40, 1, 0, 1}, {8, 40, 16, 3, 1, 8}};
  for (size_t k = 0; k < sizeof convs / sizeof convs[0]; k++) {
    qt_conv2d_shape shape;
    CU_ASSERT_EQUAL_FATAL(
        qt_conv2d_shape_init(&shape, 2, convs[k].in_c, convs[k].size, convs[k].size, convs[k].out_c,
                             convs[k].kernel, 1, convs[k].pad, convs[k].groups, NULL),
        0);
    size_t in_n = 2 * shape.in_c * shape.in_h * shape.in_w;
    size_t out_n = 2 * shape.out_c * shape.out_h * shape.out_w;
    size_t w_n = shape.out_c * (shape.in_c / shape.groups) * shape.kernel_h * shape.kernel_w;
    size_t scratch_n = qt_cpu_conv2d_scratch_size(&shape);
    float *cin = random_array(in_n), *cdin = random_array(in_n), *cw = random_array(w_n);
    float *cdw = random_array(w_n), *cb = random_array(shape.out_c);
    float *cdb = random_array(shape.out_c), *cdout = random_array(out_n);
    float *cout = malloc(out_n * sizeof *cout);
    float *cscratch = scratch_n ? malloc(scratch_n * sizeof *cscratch) : NULL;
    qt_cpu_conv2d_forward(cout, cscratch, cin, cw, cb, &shape);
    qt_cpu_conv2d_backward(cdin, cdw, cdb, cscratch, cdout, cin, cw, &shape);
    append(&o, cout, out_n);
    append(&o, cdin, in_n);
    append(&o, cdw, w_n);
    append(&o, cdb, shape.out_c);
    free(cin), free(cdin), free(cw), free(cdw), free(cb), free(cdb), free(cdout), free(cout);
    free(cscratch);
  }

  /* The attention */
  size_t qkv_n = (size_t)BATCH * TOKENS * 3 * WIDTH, out_n = (size_t)BATCH * TOKENS * WIDTH;
  size_t att_n = (size_t)BATCH * HEADS * TOKENS * TOKENS;
  float *qkv = random_array(qkv_n), *dqkv = random_array(qkv_n), *dout = random_array(out_n);
  float *out = malloc(out_n * sizeof *out), *att = malloc(att_n * sizeof *att);
  float *scratch = malloc((size_t)TOKENS * TOKENS * sizeof *scratch);
  qt_cpu_attention_forward(out, att, qkv, BATCH, TOKENS, WIDTH, HEADS);
  qt_cpu_attention_backward(dqkv, scratch, dout, qkv, att, BATCH, TOKENS, WIDTH, HEADS);
  append(&o, out, out_n);
  append(&o, att, att_n);
  append(&o, dqkv, qkv_n);
  free(qkv), free(dqkv), free(dout), free(out), free(att), free(scratch);
  return o;
}

static void test_ops_same_bits_at_any_thread_count(void) {
  outputs one = run_ops(1);
  CU_ASSERT(one.n > 0);
  for (int threads = 2; threads <= 3; threads++) {
    outputs more = run_ops(threads);
    CU_ASSERT_EQUAL_FATAL(more.n, one.n);
    size_t differ = 0;
    for (size_t i = 0; i < one.n; i++)
      differ += memcmp(&one.values[i], &more.values[i], sizeof(float)) != 0;
    if (differ) fprintf(stderr, "\n%d threads: %zu of %zu values differ\n", threads, differ, one.n);
    CU_ASSERT_EQUAL(differ, 0);
    free(more.values);
  }
  free(one.values);
}

/* The split product: the same bits at 1, 2, 3 and 7 threads, and within
 * float rounding of one OpenBLAS call, cut by rows (m >= n) and by
 * columns (n > m), every transposition; shapes whose blocks take OpenBLAS's
 * small-matrix kernels and shapes whose blocks do not. */
static void test_split_product(void) {
  int shapes[][3] = {{301, 67, 131}, {67, 301, 131}, {3152, 192, 576},
                     {200, 200, 5},  {1, 700, 64},   {130, 1, 33}};
  int thread_counts[] = {1, 2, 3, 7};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++) {
        CBLAS_TRANSPOSE TA = ta ? CblasTrans : CblasNoTrans, TB = tb ? CblasTrans : CblasNoTrans;
        int lda = ta ? m : k, ldb = tb ? k : n;
        size_t mn = (size_t)m * n;
        float *a = random_array((size_t)m * k), *b = random_array((size_t)k * n);
        float *c0 = random_array(mn), *one_call = copy_of(c0, mn), *first = NULL;
        openblas_set_num_threads(1);
        cblas_sgemm(CblasRowMajor, TA, TB, m, n, k, 0.75f, a, lda, b, ldb, 0.5f, one_call, n);
        for (size_t t = 0; t < 4; t++) {
          float *c = copy_of(c0, mn);
          openblas_set_num_threads(thread_counts[t]);
          qt__cpu_sgemm(TA, TB, m, n, k, 0.75f, a, lda, b, ldb, 0.5f, c, n);
          if (!first) {
            first = c;
            continue;
          }
          CU_ASSERT_EQUAL(memcmp(c, first, mn * sizeof *c), 0);
          free(c);
        }
        /* Each value a sum of k products of values in [-1, 1]. */
        double worst = 0.0;
        for (size_t i = 0; i < mn; i++) {
          double d = fabs((double)first[i] - one_call[i]);
          worst = d > worst ? d : worst;
        }
        CU_ASSERT(worst <= 4.0 * k * 1.2e-7);
        free(a), free(b), free(c0), free(one_call), free(first);
      }
  }
}

static const qt_test_case cases[] = {
    {"every_item_once", test_every_item_once},
    {"nested_job_on_its_thread", test_nested_job_on_its_thread},
    {"many_jobs", test_many_jobs},
    {"blas_threads_restored", test_blas_threads_restored},
    {"job_after_fork", test_job_after_fork},
    {"ops_same_bits_at_any_thread_count", test_ops_same_bits_at_any_thread_count},
    {"split_product", test_split_product},
    {NULL, NULL},
};

QT_TEST_MAIN("cpu_parallel", cases)

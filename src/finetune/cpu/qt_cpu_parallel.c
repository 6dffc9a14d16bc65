/*
 * qt_cpu_parallel.c - the CPU ops' worker threads (qt_cpu_parallel.h).
 *
 * One job at a time: its caller posts it (a new generation), wakes the
 * workers and takes pieces itself; every thread takes the next piece under
 * the pool's lock until none is left, and the caller returns when the last
 * one has finished. A job is cut into a few pieces a thread, so that a
 * worker slow to wake leaves its pieces to the others instead of holding
 * the job up. The workers sleep on a condition variable between jobs
 * rather than spin: a spinning thread takes a processor from whatever else
 * runs, the data threads that prepare the next batch among them (OpenBLAS's
 * own threads spin so after each product they run, which is why the
 * engine's products do not go to them, QT_CPU_PARALLEL_BLAS).
 */
#include "finetune/cpu/qt_cpu_parallel.h"

#include <cblas.h>
#include <pthread.h>
#include <stdlib.h>

/* Pieces per thread: a worker that wakes late costs at most a piece. */
#define PIECES_PER_THREAD 4

typedef struct worker {
  pthread_t id;
  unsigned long seen; /* the last generation this worker looked at */
  void *scratch;      /* the worker's scratch, scratch_size bytes, kept between jobs */
  size_t scratch_size;
} worker;

/* Everything below `lock` is read and written under it. */
static struct {
  pthread_mutex_t lock;
  pthread_cond_t wake; /* a job was posted */
  pthread_cond_t done; /* the job's last piece finished */
  unsigned long generation;
  size_t started;  /* workers started (they never stop) */
  size_t enlisted; /* workers 0 .. enlisted - 1 take part in the job */
  qt__cpu_piece_fn fn;
  void *job;
  size_t n, grain, units, pieces, scratch_bytes;
  size_t next;     /* the next piece to take */
  size_t finished; /* pieces finished */
  worker workers[QT_CPU_MAX_THREADS - 1];
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER,
          .wake = PTHREAD_COND_INITIALIZER,
          .done = PTHREAD_COND_INITIALIZER};

/* Held by the caller of the job that runs; a second caller finds it taken
 * and runs its loop alone. */
static pthread_mutex_t job_lock = PTHREAD_MUTEX_INITIALIZER;

/* Set while this thread runs a piece: a job started from a piece runs on
 * this thread alone. */
static _Thread_local int in_piece;

size_t qt__cpu_parallel_threads(void) {
  if (in_piece) return 1;
  int threads = openblas_get_num_threads();
  if (threads < 1) return 1;
  return threads > QT_CPU_MAX_THREADS ? QT_CPU_MAX_THREADS : (size_t)threads;
}

/* Runs piece p of the posted job, unlocking the pool meanwhile. */
static void run_piece(size_t p, void *scratch) {
  qt__cpu_piece_fn fn = pool.fn;
  void *job = pool.job;
  size_t begin = p * pool.units / pool.pieces * pool.grain;
  size_t end = (p + 1) * pool.units / pool.pieces * pool.grain;
  if (end > pool.n) end = pool.n;
  pthread_mutex_unlock(&pool.lock);
  in_piece = 1;
  fn(job, begin, end, scratch);
  in_piece = 0;
  pthread_mutex_lock(&pool.lock);
  pool.finished++;
}

static void *worker_main(void *arg) {
  worker *self = arg;
  size_t index = (size_t)(self - pool.workers);
  pthread_mutex_lock(&pool.lock);
  for (;;) {
    while (pool.generation == self->seen) pthread_cond_wait(&pool.wake, &pool.lock);
    unsigned long generation = pool.generation;
    self->seen = generation;
    if (index >= pool.enlisted) continue;
    if (pool.scratch_bytes > self->scratch_size) {
      void *grown = realloc(self->scratch, pool.scratch_bytes);
      if (!grown) continue; /* the others take this worker's share */
      self->scratch = grown;
      self->scratch_size = pool.scratch_bytes;
    }
    /* A piece taken holds the job (and so the generation) until it
     * finishes; once the last one has, the next job may be posted. */
    while (pool.generation == generation && pool.next < pool.pieces) {
      run_piece(pool.next++, self->scratch);
      if (pool.finished == pool.pieces) pthread_cond_signal(&pool.done);
    }
  }
  return NULL;
}

/* fork() copies only the forking thread: the child starts its workers
 * anew. The pool's locks are held across the fork, so that the child's
 * copy is in a known state. */
static void before_fork(void) {
  pthread_mutex_lock(&job_lock);
  pthread_mutex_lock(&pool.lock);
}

static void after_fork_parent(void) {
  pthread_mutex_unlock(&pool.lock);
  pthread_mutex_unlock(&job_lock);
}

static void after_fork_child(void) {
  pool.started = 0;
  pthread_cond_init(&pool.wake, NULL);
  pthread_cond_init(&pool.done, NULL);
  pthread_mutex_unlock(&pool.lock);
  pthread_mutex_unlock(&job_lock);
}

static pthread_once_t fork_handlers_once = PTHREAD_ONCE_INIT;

static void register_fork_handlers(void) {
  pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

/* Starts workers, under the pool's lock, until `wanted` run or one cannot
 * be started. */
static void start_workers(size_t wanted) {
  pthread_once(&fork_handlers_once, register_fork_handlers);
  while (pool.started < wanted) {
    worker *w = &pool.workers[pool.started];
    w->seen = pool.generation;
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0) return;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&w->id, &attr, worker_main, w);
    pthread_attr_destroy(&attr);
    if (rc != 0) return;
    pool.started++;
  }
}

/* Posts the job to `enlisted` workers (the pool locked), takes pieces
 * until none is left, and waits for the workers' last. */
static void run_job(size_t n, size_t grain, size_t units, size_t pieces, size_t scratch_bytes,
                    qt__cpu_piece_fn fn, void *job) {
  pool.fn = fn;
  pool.job = job;
  pool.n = n;
  pool.grain = grain;
  pool.units = units;
  pool.pieces = pieces;
  pool.scratch_bytes = scratch_bytes;
  pool.next = 0;
  pool.finished = 0;
  pool.generation++;
  pthread_cond_broadcast(&pool.wake);
  while (pool.next < pool.pieces) run_piece(pool.next++, NULL);
  while (pool.finished < pool.pieces) pthread_cond_wait(&pool.done, &pool.lock);
}

/* The job on the calling thread alone: as one piece, or grain by grain
 * where the bounds matter. */
static void run_alone(size_t n, size_t grain, unsigned flags, qt__cpu_piece_fn fn, void *job) {
  if (!(flags & QT_CPU_PARALLEL_EXACT)) {
    fn(job, 0, n, NULL);
    return;
  }
  for (size_t begin = 0; begin < n; begin += grain)
    fn(job, begin, n - begin < grain ? n : begin + grain, NULL);
}

void qt__cpu_parallel_for(size_t n, size_t grain, size_t scratch_bytes, unsigned flags,
                          qt__cpu_piece_fn fn, void *job) {
  if (n == 0) return;
  if (grain == 0) grain = 1;
  if (in_piece || pthread_mutex_trylock(&job_lock) != 0) {
    run_alone(n, grain, flags, fn, job);
    return;
  }
  size_t units = n / grain + (n % grain != 0);
  size_t threads = qt__cpu_parallel_threads();
  if (threads > units) threads = units;
  /* OpenBLAS's thread count is changed only under job_lock, so that two
   * callers never restore each other's. */
  int blas_threads = 0;
  if (flags & QT_CPU_PARALLEL_BLAS) {
    blas_threads = openblas_get_num_threads();
    if (blas_threads > 1) openblas_set_num_threads(1);
  }
  size_t enlisted = 0;
  if (threads > 1) {
    pthread_mutex_lock(&pool.lock);
    start_workers(threads - 1);
    enlisted = pool.started < threads - 1 ? pool.started : threads - 1;
    pool.enlisted = enlisted;
    size_t pieces = (enlisted + 1) * PIECES_PER_THREAD;
    if (pieces > units || (flags & QT_CPU_PARALLEL_EXACT)) pieces = units;
    if (enlisted > 0) run_job(n, grain, units, pieces, scratch_bytes, fn, job);
    pthread_mutex_unlock(&pool.lock);
  }
  if (enlisted == 0) run_alone(n, grain, flags, fn, job);
  if (blas_threads > 1) openblas_set_num_threads(blas_threads);
  pthread_mutex_unlock(&job_lock);
}

/* ------------------------------------------------------------------------- */
/* Element-wise ops                                                           */
/* ------------------------------------------------------------------------- */

typedef struct values_job {
  qt__cpu_values_fn forward;
  qt__cpu_gradients_fn backward;
  float *out; /* forward: out; backward: dinp */
  const float *dout, *inp;
} values_job;

static void values_piece(void *job, size_t begin, size_t end, void *scratch) {
  (void)scratch;
  const values_job *V = job;
  V->forward(V->out + begin, V->inp + begin, end - begin);
}

static void gradients_piece(void *job, size_t begin, size_t end, void *scratch) {
  (void)scratch;
  const values_job *V = job;
  V->backward(V->out + begin, V->dout + begin, V->inp + begin, end - begin);
}

void qt__cpu_parallel_values(qt__cpu_values_fn fn, float *out, const float *inp, size_t n) {
  values_job job = {.forward = fn, .out = out, .inp = inp};
  qt__cpu_parallel_for(n, QT_CPU_VALUES_GRAIN, 0, 0, values_piece, &job);
}

void qt__cpu_parallel_gradients(qt__cpu_gradients_fn fn, float *dinp, const float *dout,
                                const float *inp, size_t n) {
  values_job job = {.backward = fn, .out = dinp, .dout = dout, .inp = inp};
  qt__cpu_parallel_for(n, QT_CPU_VALUES_GRAIN, 0, 0, gradients_piece, &job);
}

/* ------------------------------------------------------------------------- */
/* Matrix products                                                            */
/* ------------------------------------------------------------------------- */

typedef struct gemm_job {
  CBLAS_TRANSPOSE trans_a, trans_b;
  int m, n, k, lda, ldb, ldc;
  float alpha, beta;
  const float *a, *b;
  float *c;
  int by_columns; /* pieces are columns of C, else rows */
} gemm_job;

static void gemm_piece(void *job, size_t begin, size_t end, void *scratch) {
  (void)scratch;
  const gemm_job *G = job;
  int count = (int)(end - begin);
  const float *a = G->a, *b = G->b;
  float *c = G->c;
  if (G->by_columns) {
    /* Columns [begin, end) of op(B) and of C. */
    b += G->trans_b == CblasNoTrans ? begin : begin * (size_t)G->ldb;
    c += begin;
    cblas_sgemm(CblasRowMajor, G->trans_a, G->trans_b, G->m, count, G->k, G->alpha, a, G->lda, b,
                G->ldb, G->beta, c, G->ldc);
  } else {
    /* Rows [begin, end) of op(A) and of C. */
    a += G->trans_a == CblasNoTrans ? begin * (size_t)G->lda : begin;
    c += begin * (size_t)G->ldc;
    cblas_sgemm(CblasRowMajor, G->trans_a, G->trans_b, count, G->n, G->k, G->alpha, a, G->lda, b,
                G->ldb, G->beta, c, G->ldc);
  }
}

void qt__cpu_sgemm(CBLAS_TRANSPOSE trans_a, CBLAS_TRANSPOSE trans_b, int m, int n, int k,
                   float alpha, const float *a, int lda, const float *b, int ldb, float beta,
                   float *c, int ldc) {
  if (m <= 0 || n <= 0) return;
  gemm_job job = {.trans_a = trans_a,
                  .trans_b = trans_b,
                  .m = m,
                  .n = n,
                  .k = k,
                  .lda = lda,
                  .ldb = ldb,
                  .ldc = ldc,
                  .alpha = alpha,
                  .beta = beta,
                  .a = a,
                  .b = b,
                  .c = c,
                  .by_columns = n > m};
  /* Blocks of a multiple of 64 rows (or columns), a multiple of every
   * OpenBLAS kernel's tile, at most QT_CPU_GEMM_BLOCKS of them and at least
   * QT_CPU_GEMM_MIN_BLOCK each: each block packs the operand that all of
   * them share once more (on one thread ViT-Ti's products took about 2.5%
   * longer in blocks than in one call), and a thread's last block may wait
   * for nothing else (fewer, larger blocks balance worse). */
  size_t extent = (size_t)(job.by_columns ? n : m);
  size_t block = (extent + QT_CPU_GEMM_BLOCKS - 1) / QT_CPU_GEMM_BLOCKS;
  block = (block + 63) / 64 * 64;
  if (block < QT_CPU_GEMM_MIN_BLOCK) block = QT_CPU_GEMM_MIN_BLOCK;
  qt__cpu_parallel_for(extent, block, 0, QT_CPU_PARALLEL_BLAS | QT_CPU_PARALLEL_EXACT, gemm_piece,
                       &job);
}

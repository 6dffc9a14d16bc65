/*
 * qt_rng.c - explicit random streams on GSL's MT19937.
 *
 * Seeding. GSL seeds MT19937 from 32 bits (gsl_rng_set keeps the low 32
 * bits of its argument), so a 64-bit qtune seed is first mixed with
 * splitmix64 and folded to 32 bits: nearby seeds (1, 2, 3) give unrelated
 * streams, and two different seeds share a stream with probability 2^-32.
 * A fork's seed is a hash of the parent's seed and the stream label, never of
 * the parent's position, so forks do not depend on how many numbers the
 * parent has drawn.
 *
 * GSL's global state is left alone: gsl_rng_env_setup() is never called (the
 * environment must not change results), and GSL's error handler stays as the
 * program set it. With GSL's default handler an allocation failure inside
 * gsl_rng_alloc aborts before qt_rng_init can report QT_ENOMEM.
 */
#include "core/qt_core.h"

#include <stdlib.h>

#include <gsl/gsl_randist.h>
#include <gsl/gsl_rng.h>

struct qt_rng {
  gsl_rng *r;    /* MT19937 state, owned */
  uint64_t seed; /* the seed this stream was created from (after forking) */
};

/* Added to a fork's stream label before hashing, so that stream 0 does not
 * hash to splitmix64(0) and fork(seed, 0) differs from init(seed). */
#define QT_RNG_STREAM_SALT UINT64_C(0x9E3779B97F4A7C15)

/* ------------------------------------------------------------------------- */
/* Seeding                                                                    */
/* ------------------------------------------------------------------------- */

/* Sebastiano Vigna's splitmix64 finalizer: a bijection on 64-bit words that
 * spreads every input bit over every output bit. */
static uint64_t splitmix64(uint64_t x) {
  x += UINT64_C(0x9E3779B97F4A7C15);
  x = (x ^ (x >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
  x = (x ^ (x >> 27)) * UINT64_C(0x94D049BB133111EB);
  return x ^ (x >> 31);
}

static int rng_create(uint64_t seed, qt_rng_t **out, qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_rng: out is NULL");
  *out = NULL;
  qt_rng_t *rng = malloc(sizeof *rng);
  if (!rng) return qt_err_set(err, QT_ENOMEM, "qt_rng: out of memory");
  rng->r = gsl_rng_alloc(gsl_rng_mt19937);
  if (!rng->r) {
    free(rng);
    return qt_err_set(err, QT_ENOMEM, "qt_rng: out of memory for the GSL generator");
  }
  /* uniform_int below builds its words from 32-bit outputs. */
  QT_ASSERT(gsl_rng_min(rng->r) == 0 && gsl_rng_max(rng->r) == UINT64_C(0xFFFFFFFF));

  uint64_t mixed = splitmix64(seed);
  gsl_rng_set(rng->r, (unsigned long)((mixed ^ (mixed >> 32)) & UINT64_C(0xFFFFFFFF)));
  rng->seed = seed;
  *out = rng;
  return 0;
}

int qt_rng_init(qt_rng_t **out, uint64_t seed, qt_err *err) {
  return rng_create(seed, out, err);
}

int qt_rng_fork(const qt_rng_t *parent, uint64_t stream, qt_rng_t **out, qt_err *err) {
  if (!parent) return qt_err_set(err, QT_EINVAL, "qt_rng_fork: parent is NULL");
  uint64_t seed = splitmix64(parent->seed ^ splitmix64(stream + QT_RNG_STREAM_SALT));
  return rng_create(seed, out, err);
}

void qt_rng_free(qt_rng_t *rng) {
  if (!rng) return;
  gsl_rng_free(rng->r);
  free(rng);
}

uint64_t qt_rng_seed(const qt_rng_t *rng) {
  return rng->seed;
}

/* ------------------------------------------------------------------------- */
/* Draws                                                                      */
/* ------------------------------------------------------------------------- */

double qt_rng_uniform(qt_rng_t *rng) {
  return gsl_rng_uniform(rng->r);
}

double qt_rng_uniform_pos(qt_rng_t *rng) {
  return gsl_rng_uniform_pos(rng->r);
}

double qt_rng_gaussian(qt_rng_t *rng, double sigma) {
  return gsl_ran_gaussian(rng->r, sigma);
}

uint64_t qt_rng_uniform_int(qt_rng_t *rng, uint64_t n) {
  QT_ASSERT(n >= 1);
  if (n == 1) return 0;

  /* Rejection sampling: a uniform word x is accepted when x >= 2^bits mod n,
   * which leaves a number of accepted words that is a multiple of n, so
   * x mod n is exactly uniform. Fewer than half of the draws are rejected in
   * the worst case. gsl_rng_uniform_int is not used because it stops at n <=
   * 2^32 - 1. */
  if (n <= UINT64_C(0x100000000)) {
    uint64_t threshold = (UINT64_C(0x100000000) - n) % n; /* 2^32 mod n */
    for (;;) {
      uint64_t x = gsl_rng_get(rng->r);
      if (x >= threshold) return x % n;
    }
  }
  uint64_t threshold = (0 - n) % n; /* 2^64 mod n, in unsigned arithmetic */
  for (;;) {
    uint64_t high = gsl_rng_get(rng->r);
    uint64_t low = gsl_rng_get(rng->r);
    uint64_t x = (high << 32) | low;
    if (x >= threshold) return x % n;
  }
}

void *qt_rng_gsl(qt_rng_t *rng) {
  return rng ? rng->r : NULL;
}

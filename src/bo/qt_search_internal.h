/*
 * qt_search_internal.h - what the search loop (qt_search.c) and the
 * fine-tuning objective (qt_objective_finetune.c) share; nothing outside
 * bo/ and its tests may use it.
 *
 * The fine-tuning objective advances one trial (a pool candidate) by one
 * epoch through the engine's run API and keeps each paused trial's
 * checkpoint in the run directory:
 *
 *   trials/<id>/checkpoint-e<N>.safetensors   the trial's last ended epoch N
 *   trials/<id>/curve.csv                      written by the search loop
 *
 * At most one qt_run_t is alive: the trial stepped last. Stepping another
 * trial frees it and loads the other from its checkpoint (or initializes it
 * for epoch 1). A step saves checkpoint-e<N> before it returns; the search
 * journals epoch_end and then calls qt__finetune_commit, which deletes
 * checkpoint-e<N-1>. A process killed in between leaves one checkpoint too
 * many, which qt__finetune_cleanup removes on resume.
 */
#ifndef QT_SEARCH_INTERNAL_H
#define QT_SEARCH_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "bo/qt_bo.h"
#include "finetune/qt_finetune.h"

typedef struct qt__finetune_setup {
  const char *run_dir;
  const qt_pool *pool;               /* candidates (configurations with "model") */
  size_t model_hp;                   /* index of "model" in the pool's space */
  const qt_hub_model *const *models; /* (choices of model) the hub entry of each choice */
  const qt_data_splits *data;        /* shared by every run; must outlive the objective */
  long schedule_epochs;              /* qt_run_spec.epochs of every trial */
  uint64_t seed;                     /* the search's: trial t runs with seed + t */
  int threads;                       /* qt_run_spec.threads */
  int gpu;                           /* 1: trials train on the GPU (qt_search_device) */
} qt__finetune_setup;

/* What the last qt_objective_step of a fine-tuning objective saw beyond
 * the observation. */
typedef struct qt__finetune_step {
  qt_run_epoch_result result; /* the engine's result (zeroed when the run could not start) */
  int stopped;                /* 1: the stop hook abandoned the epoch (observation FAILED) */
  char reason[1024];          /* why a FAILED or DIVERGED step ended the trial */
} qt__finetune_step;

/* Copies setup (its pointers are borrowed). The objective's step returns
 * OK with a saved checkpoint, DIVERGED, or FAILED with the engine's message
 * (bad configuration, missing or corrupt checkpoint, out of memory, ...);
 * a negative code only when the checkpoint cannot be written (the disk). */
int qt__finetune_objective_init(const qt__finetune_setup *setup, qt_objective_t **out, qt_err *err);
const qt__finetune_step *qt__finetune_last_step(const qt_objective_t *objective);
/* The engine's stop hook for the epochs to come (qt_run_set_stop). */
void qt__finetune_set_stop(qt_objective_t *objective, int (*should_stop)(void *user), void *user);
/* After epoch `epoch` of trial was journaled: records it as the trial's
 * checkpoint and deletes the one before. */
int qt__finetune_commit(qt_objective_t *objective, size_t trial, long epoch, qt_err *err);
/* Replay: the trial's checkpoint is that of epoch `epoch` (0: none). */
void qt__finetune_set_checkpoint(qt_objective_t *objective, size_t trial, long epoch);
long qt__finetune_checkpoint_epoch(const qt_objective_t *objective, size_t trial);
/* Deletes the trial's checkpoint (--max-disk); the trial cannot continue. */
void qt__finetune_evict(qt_objective_t *objective, size_t trial);
int qt__finetune_evicted(const qt_objective_t *objective, size_t trial);
/* Bytes of the trial's checkpoint on disk (0 when none). */
size_t qt__finetune_checkpoint_bytes(const qt_objective_t *objective, size_t trial);
/* Frees the live run (before a session ends). */
void qt__finetune_release(qt_objective_t *objective);
/* Resume: removes checkpoint files of trials that are not their trial's
 * recorded checkpoint, and marks trials whose recorded checkpoint is
 * missing as evicted. */
void qt__finetune_cleanup(qt_objective_t *objective);
/* "<run_dir>/trials/<trial>/checkpoint-e<epoch>.safetensors" into buf. */
void qt__finetune_checkpoint_path(const char *run_dir, size_t trial, long epoch, char *buf,
                                  size_t size);

/* The run spec of a hub model and a configuration given as name/value
 * texts (the form of a journal's trial_created record); "model" is
 * skipped. */
int qt__search_spec_from_values(const qt_hub_model *model, const char *const *names,
                                const char *const *values, size_t n, long schedule_epochs,
                                uint64_t seed, int threads, qt_run_spec *spec, qt_err *err);

#endif /* QT_SEARCH_INTERNAL_H */

/*
 * qt_objective_finetune.c - the fine-tuning objective: advances a trial of
 * a real search one epoch at a time through the engine's run API (the only
 * place of bo/ that calls finetune/), and the mapping from a hub model plus
 * a configuration to the engine's run spec.
 *
 * See qt_search_internal.h for the checkpoint protocol. A trial t runs with
 * the seed search_seed + t, on the data split shared by all trials. Every
 * failure of the engine for one trial (a configuration it refuses, a method
 * not implemented yet, a missing or corrupt checkpoint, out of memory, an
 * unreadable image) becomes a FAILED observation carrying the message, so
 * one bad trial never stops the search; only a checkpoint that cannot be
 * written is an error of the objective itself.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bo/qt_search_internal.h"

/* ------------------------------------------------------------------------- */
/* Run specs                                                                  */
/* ------------------------------------------------------------------------- */

static int spec_base(const qt_hub_model *model, long schedule_epochs, uint64_t seed, int threads,
                     qt_run_spec *spec, qt_err *err) {
  *spec = qt_run_default_spec();
  if (qt_model_family_parse(model->family, &spec->family) != 0 ||
      !(qt_model_family_is_vit(spec->family) || qt_model_family_is_cnn(spec->family) ||
        qt_model_family_is_mlp(spec->family)))
    return qt_err_set(err, QT_ENOTIMPL, "model '%s': family '%s' cannot be fine-tuned yet",
                      model->name, model->family);
  spec->checkpoint = model->checkpoint;
  spec->heads = model->heads;
  spec->image_size = model->image_size;
  for (int c = 0; c < 3; c++) {
    spec->mean[c] = model->mean[c];
    spec->std[c] = model->std[c];
  }
  spec->epochs = schedule_epochs;
  spec->seed = seed;
  spec->threads = threads < 1 ? 1 : threads;
  return 0;
}

int qt__search_spec_from_values(const qt_hub_model *model, const char *const *names,
                                const char *const *values, size_t n, long schedule_epochs,
                                uint64_t seed, int threads, qt_run_spec *spec, qt_err *err) {
  if (!model || !spec || (n > 0 && (!names || !values)))
    return qt_err_set(err, QT_EINVAL, "run spec: NULL argument");
  int rc = spec_base(model, schedule_epochs, seed, threads, spec, err);
  for (size_t i = 0; i < n && rc == 0; i++) {
    if (strcmp(names[i], "model") == 0) continue;
    rc = qt_run_spec_set(spec, names[i], values[i], err);
  }
  return rc;
}

int qt_search_spec_from_config(const qt_hub_model *model, const qt_space_t *space,
                               const qt_config *config, long schedule_epochs, uint64_t seed,
                               int threads, struct qt_run_spec *spec, qt_err *err) {
  if (!model || !space || !config || !spec)
    return qt_err_set(err, QT_EINVAL, "qt_search_spec_from_config: NULL argument");
  if (config->space != space)
    return qt_err_set(err, QT_EINVAL, "qt_search_spec_from_config: config of another space");
  int rc = spec_base(model, schedule_epochs, seed, threads, spec, err);
  for (size_t hp = 0; hp < config->count && rc == 0; hp++) {
    if (!qt_config_is_active(config, hp)) continue;
    const char *name = qt_space_hp_name(space, hp);
    if (strcmp(name, "model") == 0) continue;
    char text[256];
    qt_config_get_string(config, hp, text, sizeof text);
    rc = qt_run_spec_set(spec, name, text, err);
  }
  /* Combinations the engine refuses only as a whole (e.g. adapters on a
   * CNN) are QT_ENOTIMPL here too, so a search drops them up front. */
  if (rc == 0) rc = qt_run_spec_supported(spec, err);
  if (rc == 0) rc = qt_run_cotuning_supported(spec, err);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* The objective                                                              */
/* ------------------------------------------------------------------------- */

typedef struct finetune_objective {
  qt_objective_t base; /* first member */
  qt__finetune_setup setup;
  char *run_dir;
  long *checkpoint;       /* (pool count) epoch of each trial's checkpoint, 0: none */
  unsigned char *evicted; /* (pool count) */
  qt_run_t *live;         /* the run of trial live_trial, or NULL */
  size_t live_trial;
  int (*should_stop)(void *user);
  void *stop_user;
  qt__finetune_step last;
} finetune_objective;

void qt__finetune_checkpoint_path(const char *run_dir, size_t trial, long epoch, char *buf,
                                  size_t size) {
  snprintf(buf, size, "%s/trials/%zu/checkpoint-e%ld.safetensors", run_dir, trial, epoch);
}

static void release_live(finetune_objective *ft) {
  qt_run_free(ft->live);
  ft->live = NULL;
}

/* Fills *out as a FAILED observation with the engine's message. */
static int step_failed(finetune_objective *ft, qt_observation *out, const qt_err *inner,
                       const char *what) {
  release_live(ft);
  out->status = QT_OBS_STATUS_FAILED;
  snprintf(ft->last.reason, sizeof ft->last.reason, "%s%s%s", what ? what : "", what ? ": " : "",
           qt_err_message(inner));
  return 0;
}

static int finetune_step(qt_objective_t *objective, size_t candidate, long epoch,
                         qt_observation *out, qt_err *err) {
  finetune_objective *ft = (finetune_objective *)objective;
  const qt__finetune_setup *s = &ft->setup;
  memset(&ft->last, 0, sizeof ft->last);
  ft->last.result.score = ft->last.result.top5 = NAN;
  ft->last.result.train_loss = ft->last.result.val_loss = NAN;
  out->status = QT_OBS_STATUS_FAILED;
  out->score = out->train_loss = out->val_loss = NAN;
  out->cost = 0.0;
  if (candidate >= s->pool->count)
    return qt_err_set(err, QT_EINVAL, "finetune objective: candidate %zu of %zu", candidate,
                      s->pool->count);
  const qt_config *config = &s->pool->configs[candidate];
  long model = qt_config_index(config, s->model_hp);
  QT_ASSERT(model >= 0);
  qt_err inner;
  qt_err_clear(&inner);
  qt_run_spec spec;
  int rc = qt_search_spec_from_config(s->models[model], s->pool->space, config, s->schedule_epochs,
                                      s->seed + (uint64_t)candidate, s->threads, &spec, &inner);
  if (rc < 0) return step_failed(ft, out, &inner, "configuration");
  spec.data = s->data;
  if (s->gpu) spec.device = QT_BACKEND_KIND_CUDA;

  /* The live run continues when it is this trial's, at the right epoch. */
  if (ft->live && (ft->live_trial != candidate || qt_run_epochs_done(ft->live) != epoch - 1))
    release_live(ft);
  if (!ft->live) {
    if (epoch == 1) {
      rc = qt_run_init(&spec, &ft->live, &inner);
      if (rc < 0) return step_failed(ft, out, &inner, NULL);
    } else {
      if (ft->evicted[candidate]) {
        out->status = QT_OBS_STATUS_FAILED;
        snprintf(ft->last.reason, sizeof ft->last.reason, "checkpoint evicted");
        return 0;
      }
      if (ft->checkpoint[candidate] != epoch - 1)
        return qt_err_set(err, QT_EINVAL,
                          "finetune objective: trial %zu has the checkpoint of epoch %ld, "
                          "epoch %ld asked",
                          candidate, ft->checkpoint[candidate], epoch);
      char path[4096];
      qt__finetune_checkpoint_path(ft->run_dir, candidate, epoch - 1, path, sizeof path);
      rc = qt_run_load(path, &spec, &ft->live, &inner);
      if (rc < 0) return step_failed(ft, out, &inner, NULL);
    }
    ft->live_trial = candidate;
  }
  qt_run_set_stop(ft->live, ft->should_stop, ft->stop_user);

  qt_run_epoch_result r;
  rc = qt_run_epoch(ft->live, &r, &inner);
  if (rc < 0) return step_failed(ft, out, &inner, NULL);
  ft->last.result = r;
  out->cost = r.seconds;
  out->train_loss = r.train_loss;
  out->val_loss = r.val_loss;
  if (r.status == QT_RUN_STATUS_STOPPED) {
    release_live(ft);
    ft->last.stopped = 1;
    out->status = QT_OBS_STATUS_FAILED;
    snprintf(ft->last.reason, sizeof ft->last.reason, "stopped");
    return 0;
  }
  if (r.status == QT_RUN_STATUS_DIVERGED) {
    release_live(ft);
    out->status = QT_OBS_STATUS_DIVERGED;
    snprintf(ft->last.reason, sizeof ft->last.reason, "diverged (training loss %g)", r.train_loss);
    return 0;
  }

  /* Keep the checkpoint before the epoch counts (see the protocol). */
  char dir[4096], path[4096];
  snprintf(dir, sizeof dir, "%s/trials/%zu", ft->run_dir, candidate);
  rc = qt_mkdir_p(dir, err);
  if (rc < 0) return rc;
  qt__finetune_checkpoint_path(ft->run_dir, candidate, epoch, path, sizeof path);
  rc = qt_run_save(ft->live, path, err);
  if (rc < 0) {
    release_live(ft);
    return qt_err_prefix(err, rc, "trial %zu", candidate);
  }
  out->status = QT_OBS_STATUS_OK;
  out->score = r.score;
  return 0;
}

static void finetune_free(qt_objective_t *objective) {
  finetune_objective *ft = (finetune_objective *)objective;
  release_live(ft);
  free(ft->checkpoint);
  free(ft->evicted);
  free(ft->run_dir);
  free(ft);
}

static const qt_objective_vtable finetune_vtable = {"finetune", finetune_step, finetune_free};

int qt__finetune_objective_init(const qt__finetune_setup *setup, qt_objective_t **out,
                                qt_err *err) {
  *out = NULL;
  finetune_objective *ft = calloc(1, sizeof *ft);
  if (!ft) return qt_err_set(err, QT_ENOMEM, "out of memory for the finetune objective");
  ft->base.vtable = &finetune_vtable;
  ft->setup = *setup;
  size_t n = setup->pool->count;
  ft->run_dir = strdup(setup->run_dir);
  ft->checkpoint = calloc(n, sizeof *ft->checkpoint);
  ft->evicted = calloc(n, 1);
  if (!ft->run_dir || !ft->checkpoint || !ft->evicted) {
    finetune_free(&ft->base);
    return qt_err_set(err, QT_ENOMEM, "out of memory for the finetune objective");
  }
  ft->setup.run_dir = ft->run_dir;
  *out = &ft->base;
  return 0;
}

const qt__finetune_step *qt__finetune_last_step(const qt_objective_t *objective) {
  return &((const finetune_objective *)objective)->last;
}

void qt__finetune_set_stop(qt_objective_t *objective, int (*should_stop)(void *user), void *user) {
  finetune_objective *ft = (finetune_objective *)objective;
  ft->should_stop = should_stop;
  ft->stop_user = user;
}

int qt__finetune_commit(qt_objective_t *objective, size_t trial, long epoch, qt_err *err) {
  finetune_objective *ft = (finetune_objective *)objective;
  (void)err;
  long previous = ft->checkpoint[trial];
  ft->checkpoint[trial] = epoch;
  if (previous > 0 && previous != epoch) {
    char path[4096];
    qt__finetune_checkpoint_path(ft->run_dir, trial, previous, path, sizeof path);
    if (unlink(path) != 0 && errno != ENOENT)
      QT_LOG_WARN("cannot delete %s: %s", path, strerror(errno));
  }
  return 0;
}

void qt__finetune_set_checkpoint(qt_objective_t *objective, size_t trial, long epoch) {
  ((finetune_objective *)objective)->checkpoint[trial] = epoch;
}

long qt__finetune_checkpoint_epoch(const qt_objective_t *objective, size_t trial) {
  return ((const finetune_objective *)objective)->checkpoint[trial];
}

void qt__finetune_evict(qt_objective_t *objective, size_t trial) {
  finetune_objective *ft = (finetune_objective *)objective;
  if (ft->live && ft->live_trial == trial) release_live(ft);
  if (ft->checkpoint[trial] > 0) {
    char path[4096];
    qt__finetune_checkpoint_path(ft->run_dir, trial, ft->checkpoint[trial], path, sizeof path);
    unlink(path);
  }
  ft->evicted[trial] = 1;
}

int qt__finetune_evicted(const qt_objective_t *objective, size_t trial) {
  return ((const finetune_objective *)objective)->evicted[trial];
}

size_t qt__finetune_checkpoint_bytes(const qt_objective_t *objective, size_t trial) {
  const finetune_objective *ft = (const finetune_objective *)objective;
  if (ft->evicted[trial] || ft->checkpoint[trial] <= 0) return 0;
  char path[4096];
  qt__finetune_checkpoint_path(ft->run_dir, trial, ft->checkpoint[trial], path, sizeof path);
  struct stat st;
  return stat(path, &st) == 0 ? (size_t)st.st_size : 0;
}

void qt__finetune_release(qt_objective_t *objective) {
  release_live((finetune_objective *)objective);
}

void qt__finetune_cleanup(qt_objective_t *objective) {
  finetune_objective *ft = (finetune_objective *)objective;
  for (size_t t = 0; t < ft->setup.pool->count; t++) {
    char path[4096];
    long keep = ft->checkpoint[t];
    /* Checkpoints of later epochs (saved, never journaled) and of the
     * epoch before (journaled, not yet deleted) are the only strays. */
    for (long e = keep - 1; e <= keep + 1; e++) {
      if (e < 1 || e == keep) continue;
      qt__finetune_checkpoint_path(ft->run_dir, t, e, path, sizeof path);
      unlink(path);
    }
    if (keep > 0) {
      qt__finetune_checkpoint_path(ft->run_dir, t, keep, path, sizeof path);
      if (access(path, R_OK) != 0) ft->evicted[t] = 1;
    }
  }
}

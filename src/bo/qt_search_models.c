/*
 * qt_search_models.c - the models of a search or a collection: the hub's
 * entries the engine's run API can fine-tune, and the search space whose
 * "model" choices are these entries (qt_bo.h, "Search models"). Shared by
 * `qtune search` (qt_search.c) and `qtune meta collect` (qt_collect.c).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bo/qt_bo.h"
#include "finetune/qt_finetune.h"

int qt_search_models_load(const char *hub_path, const qt_space_t *base_space, qt_search_models *out,
                          qt_err *err) {
  if (!hub_path || !base_space || !out)
    return qt_err_set(err, QT_EINVAL, "qt_search_models_load: NULL argument");
  memset(out, 0, sizeof *out);
  int rc = qt_hub_load_file(hub_path, &out->hub, err);
  if (rc < 0) return rc;
  size_t n = qt_hub_count(out->hub);
  out->models = calloc(n ? n : 1, sizeof *out->models);
  if (!out->models) {
    rc = qt_err_set(err, QT_ENOMEM, "out of memory");
    goto fail;
  }
  for (size_t i = 0; i < n; i++) {
    const qt_hub_model *m = qt_hub_model_at(out->hub, i);
    qt_model_family family;
    if (qt_model_family_parse(m->family, &family) != 0 ||
        !(qt_model_family_is_vit(family) || qt_model_family_is_cnn(family) ||
          qt_model_family_is_mlp(family))) {
      QT_LOG_WARN("hub model %s left out: family '%s' cannot be fine-tuned yet", m->name,
                  m->family);
      continue;
    }
    if (access(m->checkpoint, R_OK) != 0) {
      QT_LOG_WARN("hub model %s left out: checkpoint %s: %s", m->name, m->checkpoint,
                  strerror(errno));
      continue;
    }
    out->models[out->count++] = m;
  }
  if (out->count == 0) {
    rc = qt_err_set(err, QT_ENOENT,
                    "hub %s has no model the engine can fine-tune (families vit, deit, deit3 "
                    "with a checkpoint on disk); see `qtune hub list %s`",
                    hub_path, hub_path);
    goto fail;
  }
  const char **names = malloc(out->count * sizeof *names);
  if (!names) {
    rc = qt_err_set(err, QT_ENOMEM, "out of memory");
    goto fail;
  }
  for (size_t i = 0; i < out->count; i++) names[i] = out->models[i]->name;
  rc = qt_space_with_choices(base_space, "model", names, out->count, &out->space, err);
  free(names);
  if (rc < 0) goto fail;
  if ((rc = qt_space_find(out->space, "model", &out->model_hp)) < 0) {
    rc = qt_err_set(err, rc, "search space has no \"model\" hyperparameter");
    goto fail;
  }
  return 0;
fail:
  qt_search_models_free(out);
  return rc;
}

void qt_search_models_free(qt_search_models *models) {
  if (!models) return;
  free(models->models);
  qt_space_free(models->space);
  qt_hub_free(models->hub);
  memset(models, 0, sizeof *models);
}

int qt_search_config_runnable(const qt_search_models *models, const qt_config *config,
                              long schedule_epochs, char *reason, size_t size) {
  qt_run_spec spec;
  qt_err err;
  qt_err_clear(&err);
  long model = qt_config_index(config, models->model_hp);
  if (model < 0 || (size_t)model >= models->count) {
    if (size) snprintf(reason, size, "no model chosen");
    return 0;
  }
  int rc = qt_search_spec_from_config(models->models[model], models->space, config, schedule_epochs,
                                      0, 1, &spec, &err);
  if (rc == QT_ENOTIMPL) {
    if (size) snprintf(reason, size, "%s", qt_err_message(&err));
    return 0;
  }
  return 1;
}

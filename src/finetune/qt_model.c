/*
 * qt_model.c - one interface over the model families (see "Any model behind
 * one interface" in qt_finetune.h): a tagged union of a ViT, a CNN and an
 * MLP, each call forwarded to the family's function, and the tensors'
 * places for freezing and layer decay.
 */
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"

struct qt_model {
  qt_model_family family;
  qt_vit_t *vit; /* exactly one of vit, cnn and mlp is set */
  qt_cnn_t *cnn;
  qt_mlp_t *mlp;
  const qt__ops *ops; /* the backend of its arrays; NULL: the CPU */
};

int qt_model_family_is_mlp(qt_model_family family) {
  return family == QT_MODEL_FAMILY_MLP;
}

qt_model_load_params qt_model_default_load_params(void) {
  return (qt_model_load_params){.family = QT_MODEL_FAMILY_VIT,
                                .heads = 0,
                                .image_size = 0,
                                .num_classes = 0,
                                .max_batch = 32,
                                .bn_momentum = 0.1f,
                                .rng = NULL};
}

int qt_model_load(const char *checkpoint_path, const qt_model_load_params *p, qt_model_t **out,
                  qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_model_load: out is NULL");
  *out = NULL;
  if (!checkpoint_path || !p) return qt_err_set(err, QT_EINVAL, "qt_model_load: NULL argument");
  if (!qt_model_family_is_vit(p->family) && !qt_model_family_is_cnn(p->family) &&
      !qt_model_family_is_mlp(p->family))
    return qt_err_set(err, QT_ENOTIMPL, "family '%s' cannot be fine-tuned yet",
                      qt_model_family_name(p->family));
  if (qt_model_family_is_cnn(p->family) && p->image_size < 32)
    return qt_err_set(err, QT_EINVAL,
                      "family '%s' needs an image size of at least 32 pixels (got %ld): set the "
                      "hub entry's image_size",
                      qt_model_family_name(p->family), p->image_size);
  qt_model_t *m = calloc(1, sizeof *m);
  if (!m) return qt_err_set(err, QT_ENOMEM, "out of memory for a model");
  m->family = p->family;
  int rc;
  if (qt_model_family_is_cnn(p->family)) {
    qt_cnn_load_params lp = qt_cnn_default_load_params();
    lp.family = p->family;
    lp.image_size = p->image_size;
    lp.num_classes = p->num_classes;
    lp.max_batch = p->max_batch;
    lp.bn_momentum = p->bn_momentum;
    lp.rng = p->rng;
    rc = qt_cnn_load(checkpoint_path, &lp, &m->cnn, err);
  } else if (qt_model_family_is_mlp(p->family)) {
    /* The input features come from the checkpoint; image_size, heads and
     * bn_momentum do not apply. */
    qt_mlp_load_params lp = qt_mlp_default_load_params();
    lp.num_classes = p->num_classes;
    lp.max_batch = p->max_batch;
    lp.rng = p->rng;
    rc = qt_mlp_load(checkpoint_path, &lp, &m->mlp, err);
  } else {
    qt_vit_load_params lp = qt_vit_default_load_params();
    lp.family = p->family;
    lp.heads = p->heads;
    lp.image_size = p->image_size;
    lp.num_classes = p->num_classes;
    lp.max_batch = p->max_batch;
    lp.rng = p->rng;
    rc = qt_vit_load(checkpoint_path, &lp, &m->vit, err);
  }
  if (rc < 0) {
    free(m);
    return rc;
  }
  *out = m;
  return 0;
}

int qt_model_wrap_vit(qt_vit_t *vit, qt_model_family family, qt_model_t **out, qt_err *err) {
  *out = NULL;
  if (!vit || !qt_model_family_is_vit(family))
    return qt_err_set(err, QT_EINVAL, "qt_model_wrap_vit: no ViT or not a ViT family");
  qt_model_t *m = calloc(1, sizeof *m);
  if (!m) return qt_err_set(err, QT_ENOMEM, "out of memory for a model");
  m->family = family;
  m->vit = vit;
  *out = m;
  return 0;
}

void qt_model_free(qt_model_t *m) {
  if (!m) return;
  qt_vit_free(m->vit);
  qt_cnn_free(m->cnn);
  qt_mlp_free(m->mlp);
  free(m);
}

int qt__model_set_ops(qt_model_t *m, const qt__ops *ops, qt_err *err) {
  if (!m || !ops) return qt_err_set(err, QT_EINVAL, "qt_model_to_backend: NULL argument");
  int rc;
  if (m->vit)
    rc = qt__vit_set_ops(m->vit, ops, err);
  else if (m->cnn)
    rc = qt__cnn_set_ops(m->cnn, ops, err);
  else
    rc = qt__mlp_set_ops(m->mlp, ops, err);
  if (rc == 0) m->ops = ops;
  return rc;
}

const qt__ops *qt__model_ops(const qt_model_t *m) {
  return m->ops ? m->ops : qt__ops_cpu();
}

int qt_model_to_backend(qt_model_t *m, qt_backend_kind kind, qt_err *err) {
  if (!m) return qt_err_set(err, QT_EINVAL, "qt_model_to_backend: NULL model");
  int rc = qt_backend_kind_check(kind, err);
  return rc < 0 ? rc : qt__model_set_ops(m, qt__ops_for(kind), err);
}

qt_model_family qt_model_get_family(const qt_model_t *m) {
  return m->family;
}
qt_vit_t *qt_model_vit(qt_model_t *m) {
  return m ? m->vit : NULL;
}
qt_cnn_t *qt_model_cnn(qt_model_t *m) {
  return m ? m->cnn : NULL;
}
qt_mlp_t *qt_model_mlp(qt_model_t *m) {
  return m ? m->mlp : NULL;
}

size_t qt_model_tensor_count(const qt_model_t *m) {
  if (m->mlp) return qt_mlp_tensor_count(m->mlp);
  return m->vit ? qt_vit_tensor_count(m->vit) : qt_cnn_tensor_count(m->cnn);
}

long qt_model_units(const qt_model_t *m) {
  if (m->mlp) return qt_mlp_units(m->mlp);
  return m->vit ? qt_vit_get_config(m->vit)->depth : qt_cnn_units(m->cnn);
}

/* A ViT tensor's place, from its timm name: blocks.i is unit and layer
 * i + 1; the final norm unit depth, layer depth + 1; the head layer
 * depth + 1; patch_embed, cls_token and pos_embed the stem (0). */
static void vit_place(const char *name, long depth, qt_model_tensor *t) {
  t->head = strncmp(name, "head.", 5) == 0;
  if (strncmp(name, "blocks.", 7) == 0) {
    t->unit = t->layer = atol(name + 7) + 1;
  } else if (t->head || strncmp(name, "norm.", 5) == 0) {
    t->unit = depth;
    t->layer = depth + 1;
  } else {
    t->unit = t->layer = 0;
  }
}

void qt_model_tensor_at(const qt_model_t *m, size_t index, qt_model_tensor *out) {
  memset(out, 0, sizeof *out);
  if (m->vit) {
    qt_vit_tensor t;
    qt_vit_tensor_at(m->vit, index, &t);
    *out = (qt_model_tensor){.name = t.name,
                             .ndim = t.ndim,
                             .shape = t.shape,
                             .numel = t.numel,
                             .data = t.data,
                             .grad = t.grad,
                             .decay = t.decay};
    vit_place(t.name, qt_vit_get_config(m->vit)->depth, out);
    return;
  }
  if (m->mlp) {
    /* Blocks: unit and layer k; the head: layer n + 1 (no buffers). */
    qt_mlp_tensor t;
    qt_mlp_tensor_at(m->mlp, index, &t);
    *out = (qt_model_tensor){.name = t.name,
                             .ndim = t.ndim,
                             .shape = t.shape,
                             .numel = t.numel,
                             .data = t.data,
                             .grad = t.grad,
                             .decay = t.decay,
                             .unit = t.unit,
                             .layer = t.head ? qt_mlp_units(m->mlp) + 1 : t.unit,
                             .head = t.head};
    return;
  }
  qt_cnn_tensor t;
  qt_cnn_tensor_at(m->cnn, index, &t);
  long n = qt_cnn_units(m->cnn);
  *out = (qt_model_tensor){.name = t.name,
                           .ndim = t.ndim,
                           .shape = t.shape,
                           .numel = t.numel,
                           .data = t.data,
                           .grad = t.grad,
                           .decay = t.decay,
                           .buffer = !t.trainable,
                           .unit = t.unit,
                           .head = t.head};
  /* conv_head and bn2 share the last block's unit but, as a ViT's final
   * norm, the head's layer. */
  int last = !t.head && strncmp(t.name, "blocks.", 7) != 0 && strncmp(t.name, "layer", 5) != 0 &&
             t.unit == n && n > 0;
  out->layer = (t.head || last) ? n + 1 : t.unit;
}

int qt_model_find_tensor(const qt_model_t *m, const char *name, qt_model_tensor *out) {
  size_t n = qt_model_tensor_count(m);
  for (size_t i = 0; i < n; i++) {
    qt_model_tensor t;
    qt_model_tensor_at(m, i, &t);
    if (strcmp(t.name, name) == 0) {
      if (out) *out = t;
      return 0;
    }
  }
  return QT_ENOENT;
}

long qt_model_image_size(const qt_model_t *m) {
  if (m->mlp) return 0;
  return m->vit ? qt_vit_get_config(m->vit)->image_size : qt_cnn_image_size(m->cnn);
}

long qt_model_num_classes(const qt_model_t *m) {
  if (m->mlp) return qt_mlp_num_classes(m->mlp);
  return m->vit ? qt_vit_get_config(m->vit)->num_classes : qt_cnn_num_classes(m->cnn);
}

void qt_model_set_trainable_from(qt_model_t *m, long unit) {
  if (m->mlp) {
    qt_mlp_set_trainable_from(m->mlp, unit);
    return;
  }
  if (m->cnn) {
    qt_cnn_set_trainable_from(m->cnn, unit);
    return;
  }
  /* The ViT's hook counts blocks from 0: unit k >= 1 is blocks.(k - 1);
   * the head alone still needs the final norm's backward (depth). */
  long depth = qt_vit_get_config(m->vit)->depth;
  qt_vit_set_backward_from(m->vit, unit <= 0 ? 0 : unit > depth ? depth : unit - 1);
}

int qt_model_forward(qt_model_t *m, const float *images, size_t batch, int training, qt_err *err) {
  if (m->vit) return qt_vit_forward(m->vit, images, batch, err);
  if (m->mlp) return qt_mlp_forward(m->mlp, images, batch, err);
  return qt_cnn_forward(m->cnn, images, batch,
                        training ? QT_BATCHNORM_MODE_TRAIN : QT_BATCHNORM_MODE_EVAL, err);
}

int qt__model_forward_staged(qt_model_t *m, const float *images, size_t batch, int training,
                             qt_err *err) {
  if (m->vit) return qt__vit_forward_staged(m->vit, images, batch, err);
  if (m->mlp)
    return qt_err_set(err, QT_EINVAL, "qt_model_forward: an MLP's features are not staged");
  return qt__cnn_forward_staged(m->cnn, images, batch,
                                training ? QT_BATCHNORM_MODE_TRAIN : QT_BATCHNORM_MODE_EVAL, err);
}

const float *qt_model_logits(const qt_model_t *m) {
  if (m->mlp) return qt_mlp_logits(m->mlp);
  return m->vit ? qt_vit_logits(m->vit) : qt_cnn_logits(m->cnn);
}

int qt_model_loss(qt_model_t *m, const int *labels, const float *soft_targets,
                  double label_smoothing, double *loss, qt_err *err) {
  if (m->vit) return qt_vit_loss(m->vit, labels, soft_targets, label_smoothing, loss, err);
  if (m->mlp) return qt_mlp_loss(m->mlp, labels, soft_targets, label_smoothing, loss, err);
  return qt_cnn_loss(m->cnn, labels, soft_targets, label_smoothing, loss, err);
}

void qt_model_zero_grad(qt_model_t *m) {
  if (m->vit)
    qt_vit_zero_grad(m->vit);
  else if (m->mlp)
    qt_mlp_zero_grad(m->mlp);
  else
    qt_cnn_zero_grad(m->cnn);
}

int qt_model_backward(qt_model_t *m, qt_err *err) {
  if (m->mlp) return qt_mlp_backward(m->mlp, err);
  return m->vit ? qt_vit_backward(m->vit, err) : qt_cnn_backward(m->cnn, err);
}

int qt_model_set_head_dropout(qt_model_t *m, double rate, qt_rng_t *rng, qt_err *err) {
  if (m->vit) return qt_vit_set_head_dropout(m->vit, rate, rng, err);
  if (m->mlp) return qt_mlp_set_head_dropout(m->mlp, rate, rng, err);
  return qt_cnn_set_head_dropout(m->cnn, rate, rng, err);
}

int qt_model_set_feature_hook(qt_model_t *m, int on, qt_err *err) {
  if (m->vit) return qt_vit_set_feature_hook(m->vit, on, err);
  if (m->mlp) return qt_mlp_set_feature_hook(m->mlp, on, err);
  return qt_cnn_set_feature_hook(m->cnn, on, err);
}

const float *qt_model_features(const qt_model_t *m, size_t *batch) {
  if (m->mlp) return qt_mlp_features(m->mlp, batch);
  return m->vit ? qt_vit_features(m->vit, batch) : qt_cnn_features(m->cnn, batch);
}

float *qt_model_feature_grad(qt_model_t *m) {
  if (m->mlp) return qt_mlp_feature_grad(m->mlp);
  return m->vit ? qt_vit_feature_grad(m->vit) : qt_cnn_feature_grad(m->cnn);
}

size_t qt_model_feature_dim(const qt_model_t *m) {
  if (m->mlp) return qt_mlp_feature_dim(m->mlp);
  return m->vit ? (size_t)qt_vit_get_config(m->vit)->width : qt_cnn_feature_dim(m->cnn);
}

int qt_model_set_stoch_norm(qt_model_t *m, double p, qt_rng_t *rng, qt_err *err) {
  if (m->vit || m->mlp) return 0;
  return qt_cnn_set_stoch_norm(m->cnn, p, rng, err);
}

int qt_model_save(const qt_model_t *m, const char *path, qt_err *err) {
  if (m->mlp) return qt_mlp_save(m->mlp, path, err);
  return m->vit ? qt_vit_save(m->vit, path, err) : qt_cnn_save(m->cnn, path, err);
}

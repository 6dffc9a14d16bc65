/*
 * qt_mlp.c - the multilayer perceptron for tabular data (see "MLP for
 * tabular data" in qt_finetune.h): blocks of fc, optional LayerNorm and an
 * activation, then a linear head, run forward and backward by the layer ops
 * of the backend's op table (qt__ops: the CPU references or CUDA), every
 * array in that backend's memory; a model is loaded on the CPU and moved
 * with qt_mlp_to_backend.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune_internal.h"

/* ------------------------------------------------------------------------- */
/* Structures                                                                 */
/* ------------------------------------------------------------------------- */

#define LAYER_NORM_EPS 1e-5f

typedef struct tensor {
  char *name;
  size_t ndim;
  size_t shape[2];
  size_t numel;
  size_t offset; /* into params / grads */
  long unit;     /* freezing unit */
  int head;
} tensor;

/* One block's tensors (indices into tensors, -1 when absent) and its
 * activations in the arena, each (max_batch, out_f). */
typedef struct block {
  size_t in_f, out_f;
  int fc_w, fc_b, norm_w, norm_b;
  float *z, *dz;      /* fc output and its gradient */
  float *n, *dn;      /* layer norm output (NULL without norm: the
                         activation reads z) */
  float *a, *da;      /* activation output (the block's output) */
  float *mean, *rstd; /* (max_batch) layer norm statistics */
} block;

/* Everything the passes read or write, in the memory of one backend
 * (allocated together, so that a move builds a whole new set before it
 * releases the old one). */
typedef struct mlp_memory {
  float *params;    /* (n_params) */
  float *grads;     /* (n_params) */
  float *arena;     /* (arena_n) every activation (point_arena) */
  float *probs;     /* (max_batch, classes) */
  float *losses;    /* (max_batch) */
  int *labels;      /* (max_batch) labels of the last loss */
  float *soft;      /* (max_batch, classes) soft targets of the last loss */
  float *dloss;     /* (1) the loss gradient of every row, 1 / batch */
  float *drop_mask; /* (max_batch, width) head dropout's mask, off the CPU
                       only (the CPU reads the hooks' own) */
  float *feat_grad; /* (max_batch, width) the feature hook's gradient moved
                       up, off the CPU only */
  /* Host copies of what callers read, off the CPU only (else NULL). */
  float *host_logits;   /* (max_batch, classes) */
  float *host_losses;   /* (max_batch) */
  float *host_features; /* (max_batch, width) the feature hook's */
} mlp_memory;

struct qt_mlp {
  tensor *tensors; /* (n_tensors) */
  size_t n_tensors;
  block *blocks; /* (depth) */
  size_t depth;
  size_t n_features;
  long classes;
  qt_mlp_activation act;
  size_t n_params;
  int head_w, head_b;
  const qt__ops *backend; /* the backend every array of mem lives on */
  mlp_memory mem;
  size_t arena_n;          /* floats */
  float *inputs;           /* (max_batch, n_features) the last forward's inputs */
  float *drop_out, *ddrop; /* (max_batch, width) features after head dropout, gradient */
  float *logits, *dlogits; /* (max_batch, classes) */
  int labels_set;
  int soft_set;
  float smoothing;
  size_t batch, max_batch;
  long train_from;
  /* A failure of qt_mlp_zero_grad (which returns nothing) to queue its work
   * on a device, reported by the next backward; 0 when none. */
  int zero_grad_rc;
  qt_err zero_grad_err;
  qt__head_hooks hooks; /* head dropout and the feature hook's gradient */
};

/* ------------------------------------------------------------------------- */
/* Loading                                                                    */
/* ------------------------------------------------------------------------- */

qt_mlp_load_params qt_mlp_default_load_params(void) {
  return (qt_mlp_load_params){.num_classes = 0, .max_batch = 32, .rng = NULL};
}

static const char *activation_name(qt_mlp_activation act) {
  return act == QT_MLP_ACTIVATION_GELU ? "gelu" : "relu";
}

static int parse_activation(const char *text, qt_mlp_activation *act) {
  if (!text || strcmp(text, "relu") == 0) {
    *act = QT_MLP_ACTIVATION_RELU;
    return 0;
  }
  if (strcmp(text, "gelu") == 0) {
    *act = QT_MLP_ACTIVATION_GELU;
    return 0;
  }
  return QT_EINVAL;
}

/* Appends a tensor; returns its index or -1 (out of memory). */
static int add_tensor(qt_mlp_t *m, const char *name, size_t ndim, size_t d0, size_t d1, long unit,
                      int head) {
  tensor *t = &m->tensors[m->n_tensors];
  t->name = strdup(name);
  if (!t->name) return -1;
  t->ndim = ndim;
  t->shape[0] = d0;
  t->shape[1] = ndim == 2 ? d1 : 0;
  t->numel = ndim == 2 ? d0 * d1 : d0;
  t->offset = m->n_params;
  t->unit = unit;
  t->head = head;
  m->n_params += t->numel;
  return (int)m->n_tensors++;
}

/* Elements of one Linear's uniform(+-1/sqrt(fan_in)) draw, as torch.nn.Linear. */
static void linear_init(float *v, size_t n, size_t fan_in, qt_rng_t *rng) {
  double bound = 1.0 / sqrt((double)fan_in);
  for (size_t k = 0; k < n; k++) v[k] = (float)(bound * (2.0 * qt_rng_uniform(rng) - 1.0));
}

/* The next n floats of the arena. */
static float *carve(float **cursor, size_t n) {
  float *p = *cursor;
  *cursor += n;
  return p;
}

/* Points the activations into the arena of m->mem: the inputs, per block
 * z, dz, [n, dn,] a, da, mean, rstd, then the head's input after dropout
 * and its gradient, the logits and their gradient. */
static void point_arena(qt_mlp_t *m) {
  size_t mb = m->max_batch, width = qt_mlp_feature_dim(m);
  float *cursor = m->mem.arena;
  m->inputs = carve(&cursor, mb * m->n_features);
  for (size_t i = 0; i < m->depth; i++) {
    block *b = &m->blocks[i];
    size_t n = mb * b->out_f;
    b->z = carve(&cursor, n);
    b->dz = carve(&cursor, n);
    b->n = b->dn = NULL;
    if (b->norm_w >= 0) {
      b->n = carve(&cursor, n);
      b->dn = carve(&cursor, n);
    }
    b->a = carve(&cursor, n);
    b->da = carve(&cursor, n);
    b->mean = carve(&cursor, mb);
    b->rstd = carve(&cursor, mb);
  }
  m->drop_out = carve(&cursor, mb * width);
  m->ddrop = carve(&cursor, mb * width);
  m->logits = carve(&cursor, mb * (size_t)m->classes);
  m->dlogits = carve(&cursor, mb * (size_t)m->classes);
  QT_ASSERT((size_t)(cursor - m->mem.arena) == m->arena_n);
}

/* Floats of the arena that point_arena carves. */
static size_t arena_floats(const qt_mlp_t *m) {
  size_t width = qt_mlp_feature_dim(m);
  size_t per_row = m->n_features + 2 * width + 2 * (size_t)m->classes;
  for (size_t i = 0; i < m->depth; i++)
    per_row += (m->blocks[i].norm_w >= 0 ? 6 : 4) * m->blocks[i].out_f + 2;
  return m->max_batch * per_row;
}

/* Releases every array of mem (allocated on ops); NULLs are no-ops. */
static void memory_release(const qt__ops *ops, mlp_memory *mem) {
  ops->release(mem->params);
  ops->release(mem->grads);
  ops->release(mem->arena);
  ops->release(mem->probs);
  ops->release(mem->losses);
  ops->release(mem->labels);
  ops->release(mem->soft);
  ops->release(mem->dloss);
  ops->release(mem->drop_mask);
  ops->release(mem->feat_grad);
  free(mem->host_logits);
  free(mem->host_losses);
  free(mem->host_features);
  memset(mem, 0, sizeof *mem);
}

/* Allocates and zeroes (as calloc) a complete set of arrays for the model on
 * ops. On failure nothing stays allocated and *mem is all NULL. */
static int memory_alloc(const qt_mlp_t *m, const qt__ops *ops, mlp_memory *mem, qt_err *err) {
  memset(mem, 0, sizeof *mem);
  size_t mb = m->max_batch, classes = (size_t)m->classes, width = qt_mlp_feature_dim(m);
  size_t off_host = ops->host_memory ? 0 : mb * width * sizeof(float);
  struct {
    void **ptr;
    size_t bytes;
  } arrays[] = {
      {(void **)&mem->params, m->n_params * sizeof(float)},
      {(void **)&mem->grads, m->n_params * sizeof(float)},
      {(void **)&mem->arena, m->arena_n * sizeof(float)},
      {(void **)&mem->probs, mb * classes * sizeof(float)},
      {(void **)&mem->losses, mb * sizeof(float)},
      {(void **)&mem->labels, mb * sizeof(int)},
      {(void **)&mem->soft, mb * classes * sizeof(float)},
      {(void **)&mem->dloss, sizeof(float)},
      {(void **)&mem->drop_mask, off_host},
      {(void **)&mem->feat_grad, off_host},
  };
  int rc = 0;
  for (size_t k = 0; k < sizeof arrays / sizeof arrays[0] && rc == 0; k++) {
    rc = ops->alloc(arrays[k].ptr, arrays[k].bytes, err);
    if (rc == 0 && arrays[k].bytes) rc = ops->zero(*arrays[k].ptr, arrays[k].bytes, err);
  }
  if (rc == 0 && !ops->host_memory) {
    mem->host_logits = calloc(mb * classes, sizeof(float));
    mem->host_losses = calloc(mb, sizeof(float));
    mem->host_features = calloc(mb * width, sizeof(float));
    if (!mem->host_logits || !mem->host_losses || !mem->host_features)
      rc = qt_err_set(err, QT_ENOMEM, "MLP: out of host memory for the logits' copy");
  }
  if (rc < 0) memory_release(ops, mem);
  return rc;
}

int qt_mlp_load(const char *path, const qt_mlp_load_params *p, qt_mlp_t **out, qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_mlp_load: out is NULL");
  *out = NULL;
  if (!path || !p) return qt_err_set(err, QT_EINVAL, "qt_mlp_load: NULL argument");
  if (p->max_batch < 1) return qt_err_set(err, QT_EINVAL, "qt_mlp_load: max_batch must be >= 1");
  if (p->num_classes < 0)
    return qt_err_set(err, QT_EINVAL, "qt_mlp_load: num_classes %ld < 0", p->num_classes);
  qt_safetensors_t *st = NULL;
  int rc = qt_safetensors_open(path, &st, err);
  if (rc < 0) return rc;
  qt_model_summary summary;
  rc = qt_model_inspect_open(st, QT_MODEL_FAMILY_MLP, NULL, &summary, err);
  if (rc < 0) {
    qt_safetensors_free(st);
    return rc;
  }
  qt_mlp_activation act;
  const char *act_text = qt_safetensors_metadata_get(st, "activation");
  if (parse_activation(act_text, &act) != 0) {
    rc = qt_err_set(err, QT_EFORMAT, "%s: unknown activation '%s' in the metadata (relu or gelu)",
                    path, act_text);
    qt_safetensors_free(st);
    return rc;
  }
  long classes = p->num_classes ? p->num_classes : summary.num_classes;
  if (classes < 1) {
    qt_safetensors_free(st);
    return qt_err_set(err, QT_EINVAL, "%s: the checkpoint has no head: set num_classes", path);
  }
  int fresh_head = classes != summary.num_classes;
  if (fresh_head && !p->rng) {
    qt_safetensors_free(st);
    return qt_err_set(err, QT_EINVAL, "qt_mlp_load: a new head needs an rng");
  }

  qt_mlp_t *m = calloc(1, sizeof *m);
  size_t depth = (size_t)summary.depth;
  if (m) {
    m->tensors = calloc(4 * depth + 2, sizeof *m->tensors);
    m->blocks = calloc(depth, sizeof *m->blocks);
  }
  if (!m || !m->tensors || !m->blocks) {
    qt_mlp_free(m);
    qt_safetensors_free(st);
    return qt_err_set(err, QT_ENOMEM, "%s: out of memory for the model", path);
  }
  m->depth = depth;
  m->classes = classes;
  m->act = act;
  m->max_batch = p->max_batch;
  char name[96];
  qt_safetensors_info info;
  int ok = 1;
  for (size_t i = 0; i < depth && ok; i++) {
    block *b = &m->blocks[i];
    snprintf(name, sizeof name, "blocks.%zu.fc.weight", i);
    qt_safetensors_lookup(st, name, &info, NULL); /* present: inspected */
    b->out_f = info.shape[0];
    b->in_f = info.shape[1];
    if (i == 0) m->n_features = b->in_f;
    b->fc_w = add_tensor(m, name, 2, b->out_f, b->in_f, (long)i + 1, 0);
    snprintf(name, sizeof name, "blocks.%zu.fc.bias", i);
    b->fc_b = add_tensor(m, name, 1, b->out_f, 0, (long)i + 1, 0);
    b->norm_w = b->norm_b = -1;
    snprintf(name, sizeof name, "blocks.%zu.norm.weight", i);
    if (qt_safetensors_find(st, name, NULL) == 0) {
      b->norm_w = add_tensor(m, name, 1, b->out_f, 0, (long)i + 1, 0);
      snprintf(name, sizeof name, "blocks.%zu.norm.bias", i);
      b->norm_b = add_tensor(m, name, 1, b->out_f, 0, (long)i + 1, 0);
      ok = b->norm_w >= 0 && b->norm_b >= 0;
    }
    ok = ok && b->fc_w >= 0 && b->fc_b >= 0;
  }
  size_t width = m->blocks[depth - 1].out_f;
  if (ok) {
    m->head_w = add_tensor(m, "head.weight", 2, (size_t)classes, width, (long)depth, 1);
    m->head_b = add_tensor(m, "head.bias", 1, (size_t)classes, 0, (long)depth, 1);
    ok = m->head_w >= 0 && m->head_b >= 0;
  }
  m->backend = qt__ops_cpu();
  if (ok) {
    m->arena_n = arena_floats(m);
    ok = memory_alloc(m, m->backend, &m->mem, NULL) == 0;
  }
  if (!ok) {
    qt_mlp_free(m);
    qt_safetensors_free(st);
    return qt_err_set(err, QT_ENOMEM, "%s: out of memory for the model", path);
  }
  point_arena(m);

  for (size_t i = 0; i < m->n_tensors; i++) {
    tensor *t = &m->tensors[i];
    float *v = m->mem.params + t->offset;
    if (t->head && fresh_head) {
      linear_init(v, t->numel, width, p->rng);
      continue;
    }
    if ((rc = qt_safetensors_read_f32(st, t->name, v, t->numel, err)) != 0) {
      qt_mlp_free(m);
      qt_safetensors_free(st);
      return rc;
    }
  }
  qt_safetensors_free(st);
  *out = m;
  return 0;
}

void qt_mlp_free(qt_mlp_t *m) {
  if (!m) return;
  for (size_t i = 0; m->tensors && i < m->n_tensors; i++) free(m->tensors[i].name);
  free(m->tensors);
  free(m->blocks);
  if (m->backend) memory_release(m->backend, &m->mem);
  qt__head_hooks_free(&m->hooks);
  free(m);
}

/* ------------------------------------------------------------------------- */
/* Accessors                                                                  */
/* ------------------------------------------------------------------------- */

size_t qt_mlp_tensor_count(const qt_mlp_t *m) {
  return m->n_tensors;
}

void qt_mlp_tensor_at(const qt_mlp_t *m, size_t index, qt_mlp_tensor *out) {
  QT_ASSERT(index < m->n_tensors);
  const tensor *t = &m->tensors[index];
  *out = (qt_mlp_tensor){.name = t->name,
                         .ndim = t->ndim,
                         .shape = t->shape,
                         .numel = t->numel,
                         .data = m->mem.params + t->offset,
                         .grad = m->mem.grads + t->offset,
                         .trainable = 1,
                         .decay = t->ndim == 2,
                         .unit = t->unit,
                         .head = t->head};
}

int qt_mlp_find_tensor(const qt_mlp_t *m, const char *name, qt_mlp_tensor *out) {
  for (size_t i = 0; i < m->n_tensors; i++) {
    if (strcmp(m->tensors[i].name, name) == 0) {
      if (out) qt_mlp_tensor_at(m, i, out);
      return 0;
    }
  }
  return QT_ENOENT;
}

long qt_mlp_num_classes(const qt_mlp_t *m) {
  return m->classes;
}
size_t qt_mlp_num_features(const qt_mlp_t *m) {
  return m->n_features;
}
qt_mlp_activation qt_mlp_get_activation(const qt_mlp_t *m) {
  return m->act;
}
const float *qt_mlp_logits(const qt_mlp_t *m) {
  return m->mem.host_logits ? m->mem.host_logits : m->logits;
}
void qt_mlp_zero_grad(qt_mlp_t *m) {
  int rc = m->backend->zero(m->mem.grads, m->n_params * sizeof *m->mem.grads, &m->zero_grad_err);
  if (rc < 0 && m->zero_grad_rc == 0) m->zero_grad_rc = rc;
}
long qt_mlp_units(const qt_mlp_t *m) {
  return (long)m->depth;
}
void qt_mlp_set_trainable_from(qt_mlp_t *m, long unit) {
  m->train_from = unit < 0 ? 0 : unit;
}
size_t qt_mlp_feature_dim(const qt_mlp_t *m) {
  return m->blocks[m->depth - 1].out_f;
}

/* ------------------------------------------------------------------------- */
/* Forward / loss / backward                                                  */
/* ------------------------------------------------------------------------- */

/* Returns from the enclosing function when a backend call fails. */
#define MLP_TRY(call)                \
  do {                               \
    int mlp_rc_ = (call);            \
    if (mlp_rc_ < 0) return mlp_rc_; \
  } while (0)

static float *param(qt_mlp_t *m, int index) {
  return index < 0 ? NULL : m->mem.params + m->tensors[index].offset;
}

static float *grad(qt_mlp_t *m, int index) {
  return index < 0 ? NULL : m->mem.grads + m->tensors[index].offset;
}

int qt_mlp_forward(qt_mlp_t *m, const float *inputs, size_t batch, qt_err *err) {
  if (!inputs || batch == 0 || batch > m->max_batch)
    return qt_err_set(err, QT_EINVAL, "qt_mlp_forward: batch %zu outside [1, %zu]", batch,
                      m->max_batch);
  const qt__ops *ops = m->backend;
  const size_t F = sizeof(float);
  m->batch = 0;
  m->labels_set = 0;
  m->hooks.dropped = 0;
  /* The inputs are copied on every backend (the first block's backward
   * reads them after the caller may have reused its buffer). */
  MLP_TRY(ops->upload(m->inputs, inputs, batch * m->n_features * F, err));
  const float *x = m->inputs;
  for (size_t i = 0; i < m->depth; i++) {
    block *b = &m->blocks[i];
    size_t n = batch * b->out_f;
    MLP_TRY(ops->linear_forward(b->z, x, param(m, b->fc_w), param(m, b->fc_b), batch, b->in_f,
                                b->out_f, err));
    const float *pre = b->z;
    if (b->n) {
      MLP_TRY(ops->layernorm_forward(b->n, b->mean, b->rstd, b->z, param(m, b->norm_w),
                                     param(m, b->norm_b), batch, b->out_f, LAYER_NORM_EPS, err));
      pre = b->n;
    }
    if (m->act == QT_MLP_ACTIVATION_GELU)
      MLP_TRY(ops->gelu_forward(b->a, pre, n, err));
    else
      MLP_TRY(ops->relu_forward(b->a, pre, n, err));
    x = b->a;
  }
  /* Head dropout on the features, the mask drawn on the host (the same
   * draws on every backend) and applied by the backend; the features
   * before the mask are the hook's (a host copy off the CPU). */
  size_t width = qt_mlp_feature_dim(m), nf = batch * width;
  if (m->hooks.dfeat) {
    memset(m->hooks.dfeat, 0, nf * F);
    if (m->mem.host_features) MLP_TRY(ops->download(m->mem.host_features, x, nf * F, err));
  }
  if (qt__head_hooks_draw(&m->hooks, nf)) {
    const float *mask = m->hooks.drop_mask;
    if (!ops->host_memory) {
      MLP_TRY(ops->upload(m->mem.drop_mask, mask, nf * F, err));
      mask = m->mem.drop_mask;
    }
    MLP_TRY(ops->mul(m->drop_out, x, mask, nf, err));
  } else {
    MLP_TRY(ops->copy(m->drop_out, x, nf * F, err));
  }
  MLP_TRY(ops->linear_forward(m->logits, m->drop_out, param(m, m->head_w), param(m, m->head_b),
                              batch, width, (size_t)m->classes, err));
  if (m->mem.host_logits)
    MLP_TRY(ops->download(m->mem.host_logits, m->logits, batch * (size_t)m->classes * F, err));
  m->batch = batch;
  return 0;
}

int qt_mlp_loss(qt_mlp_t *m, const int *labels, const float *soft_targets, double label_smoothing,
                double *loss, qt_err *err) {
  if (m->batch == 0) return qt_err_set(err, QT_EINVAL, "qt_mlp_loss: no forward before");
  if (!labels && !soft_targets)
    return qt_err_set(err, QT_EINVAL, "qt_mlp_loss: neither labels nor soft targets");
  if (!(label_smoothing >= 0.0 && label_smoothing < 1.0))
    return qt_err_set(err, QT_EINVAL, "qt_mlp_loss: label smoothing %g outside [0, 1)",
                      label_smoothing);
  const qt__ops *ops = m->backend;
  size_t classes = (size_t)m->classes;
  m->labels_set = 0;
  if (labels) {
    for (size_t i = 0; i < m->batch; i++) {
      if (labels[i] < 0 || labels[i] >= m->classes)
        return qt_err_set(err, QT_EINVAL, "qt_mlp_loss: label %d of row %zu outside [0, %ld)",
                          labels[i], i, m->classes);
    }
    MLP_TRY(ops->upload(m->mem.labels, labels, m->batch * sizeof *labels, err));
    m->soft_set = 0;
  } else {
    MLP_TRY(ops->upload(m->mem.soft, soft_targets, m->batch * classes * sizeof *soft_targets, err));
    m->soft_set = 1;
  }
  m->smoothing = (float)label_smoothing;
  MLP_TRY(ops->cross_entropy_forward(
      m->mem.losses, m->mem.probs, m->logits, m->soft_set ? NULL : m->mem.labels,
      m->soft_set ? m->mem.soft : NULL, m->smoothing, m->batch, classes, err));
  const float *losses = m->mem.losses;
  if (m->mem.host_losses) {
    MLP_TRY(ops->download(m->mem.host_losses, m->mem.losses, m->batch * sizeof(float), err));
    losses = m->mem.host_losses;
  }
  double sum = 0.0;
  for (size_t i = 0; i < m->batch; i++) sum += losses[i];
  if (loss) *loss = sum / (double)m->batch;
  m->labels_set = 1;
  return 0;
}

/* 1 when block i (unit i + 1) is frozen (qt_mlp_set_trainable_from). */
static int frozen(const qt_mlp_t *m, size_t i) {
  return (long)i + 1 < m->train_from;
}

int qt_mlp_backward(qt_mlp_t *m, qt_err *err) {
  if (m->zero_grad_rc < 0) {
    int rc = m->zero_grad_rc;
    m->zero_grad_rc = 0;
    return qt_err_set(err, rc, "qt_mlp_zero_grad: %s", m->zero_grad_err.msg);
  }
  if (!m->labels_set)
    return qt_err_set(err, QT_EINVAL, "qt_mlp_backward: no loss since the last forward");
  const qt__ops *ops = m->backend;
  const size_t F = sizeof(float);
  size_t batch = m->batch, width = qt_mlp_feature_dim(m), classes = (size_t)m->classes;
  size_t nf = batch * width;
  m->labels_set = 0;
  MLP_TRY(ops->zero(m->dlogits, batch * classes * F, err));
  float dloss = 1.0f / (float)batch;
  MLP_TRY(ops->upload(m->mem.dloss, &dloss, sizeof dloss, err));
  MLP_TRY(ops->cross_entropy_backward(m->dlogits, m->mem.probs, m->soft_set ? NULL : m->mem.labels,
                                      m->soft_set ? m->mem.soft : NULL, m->smoothing, m->mem.dloss,
                                      0, batch, classes, err));
  /* The head always trains; its input gradient only when a block does. */
  size_t last = m->depth - 1;
  int below = !frozen(m, last);
  if (below) MLP_TRY(ops->zero(m->ddrop, nf * F, err));
  MLP_TRY(ops->linear_backward(below ? m->ddrop : NULL, grad(m, m->head_w), grad(m, m->head_b),
                               m->dlogits, m->drop_out, param(m, m->head_w), batch, width, classes,
                               0, err));
  if (!below) return 0;
  /* Back through dropout's mask, plus the hook's gradient (moved up off
   * the CPU). */
  block *top = &m->blocks[last];
  if (m->hooks.dropped) {
    const float *mask = ops->host_memory ? m->hooks.drop_mask : m->mem.drop_mask;
    MLP_TRY(ops->mul(top->da, m->ddrop, mask, nf, err));
  } else {
    MLP_TRY(ops->copy(top->da, m->ddrop, nf * F, err));
  }
  if (m->hooks.dfeat) {
    const float *dfeat = m->hooks.dfeat;
    if (!ops->host_memory) {
      MLP_TRY(ops->upload(m->mem.feat_grad, dfeat, nf * F, err));
      dfeat = m->mem.feat_grad;
    }
    MLP_TRY(ops->residual_backward(top->da, NULL, NULL, dfeat, NULL, NULL, nf, 1, err));
  }
  for (size_t i = m->depth; i-- > 0;) {
    block *b = &m->blocks[i];
    size_t n = batch * b->out_f;
    /* Through the activation, to the norm's output (or z). */
    float *dpre = b->n ? b->dn : b->dz;
    const float *pre = b->n ? b->n : b->z;
    MLP_TRY(ops->zero(dpre, n * F, err));
    if (m->act == QT_MLP_ACTIVATION_GELU)
      MLP_TRY(ops->gelu_backward(dpre, b->da, pre, n, 0, err));
    else
      MLP_TRY(ops->relu_backward(dpre, b->da, pre, n, 0, err));
    if (b->n) {
      MLP_TRY(ops->zero(b->dz, n * F, err));
      MLP_TRY(ops->layernorm_backward(b->dz, grad(m, b->norm_w), grad(m, b->norm_b), b->dn, b->z,
                                      param(m, b->norm_w), b->mean, b->rstd, batch, b->out_f, err));
    }
    /* The input gradient goes to the block below only when it trains (the
     * inputs need none). */
    int into = i > 0 && !frozen(m, i - 1);
    float *dx = into ? m->blocks[i - 1].da : NULL;
    if (into) MLP_TRY(ops->zero(dx, batch * b->in_f * F, err));
    const float *x = i > 0 ? m->blocks[i - 1].a : m->inputs;
    MLP_TRY(ops->linear_backward(dx, grad(m, b->fc_w), grad(m, b->fc_b), b->dz, x,
                                 param(m, b->fc_w), batch, b->in_f, b->out_f, 0, err));
    if (!into) break;
  }
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Run hooks: dropout, features, save                                         */
/* ------------------------------------------------------------------------- */

int qt_mlp_set_head_dropout(qt_mlp_t *m, double rate, qt_rng_t *rng, qt_err *err) {
  return qt__head_hooks_set_dropout(&m->hooks, m->max_batch * qt_mlp_feature_dim(m), rate, rng,
                                    "MLP", err);
}

int qt_mlp_set_feature_hook(qt_mlp_t *m, int on, qt_err *err) {
  return qt__head_hooks_set_feature_grad(&m->hooks, m->max_batch * qt_mlp_feature_dim(m), on, "MLP",
                                         err);
}

const float *qt_mlp_features(const qt_mlp_t *m, size_t *batch) {
  if (!m->hooks.dfeat || m->batch == 0) return NULL;
  if (batch) *batch = m->batch;
  return m->mem.host_features ? m->mem.host_features : m->blocks[m->depth - 1].a;
}

float *qt_mlp_feature_grad(qt_mlp_t *m) {
  return m->hooks.dfeat;
}

int qt_mlp_save(const qt_mlp_t *m, const char *path, qt_err *err) {
  /* Off the CPU, the values are written from a host copy. */
  float *values = m->mem.params;
  if (!m->backend->host_memory) {
    if (!(values = malloc(m->n_params * sizeof *values)))
      return qt_err_set(err, QT_ENOMEM, "qt_mlp_save: out of memory for a host copy");
    int rc = m->backend->download(values, m->mem.params, m->n_params * sizeof *values, err);
    if (rc < 0) {
      free(values);
      return rc;
    }
  }
  qt_safetensors_tensor *list = calloc(m->n_tensors, sizeof *list);
  if (!list) {
    if (values != m->mem.params) free(values);
    return qt_err_set(err, QT_ENOMEM, "qt_mlp_save: out of memory");
  }
  for (size_t i = 0; i < m->n_tensors; i++) {
    const tensor *t = &m->tensors[i];
    list[i] =
        (qt_safetensors_tensor){t->name, QT_DTYPE_F32, t->ndim, t->shape, values + t->offset, NULL};
  }
  qt_safetensors_pair meta[3] = {
      {"activation", activation_name(m->act)}, {"arch", "mlp"}, {"format", "pt"}};
  int rc = qt_safetensors_write(path, list, m->n_tensors, meta, 3, err);
  free(list);
  if (values != m->mem.params) free(values);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Moving between backends                                                    */
/* ------------------------------------------------------------------------- */

int qt__mlp_set_ops(qt_mlp_t *m, const qt__ops *ops, qt_err *err) {
  if (!m || !ops) return qt_err_set(err, QT_EINVAL, "qt_mlp_to_backend: NULL argument");
  const qt__ops *from = m->backend;
  if (ops == from) return 0;
  /* Everything is allocated and copied before anything is released, so a
   * failure (out of device memory, most likely) leaves the model as it was.
   * The parameters and gradients move; the rest is the next forward's to
   * fill. */
  size_t bytes = m->n_params * sizeof(float);
  mlp_memory fresh;
  int rc = memory_alloc(m, ops, &fresh, err);
  if (rc == 0) {
    void *const dst[2] = {fresh.params, fresh.grads};
    const void *const src[2] = {m->mem.params, m->mem.grads};
    rc = qt__ops_move_arrays(from, ops, dst, src, 2, bytes, "MLP", err);
  }
  if (rc < 0) {
    memory_release(ops, &fresh);
    return rc;
  }
  memory_release(from, &m->mem);
  m->mem = fresh;
  m->backend = ops;
  point_arena(m);
  m->batch = 0;
  m->labels_set = 0;
  return 0;
}

int qt_mlp_to_backend(qt_mlp_t *m, qt_backend_kind kind, qt_err *err) {
  if (!m) return qt_err_set(err, QT_EINVAL, "qt_mlp_to_backend: NULL model");
  int rc = qt_backend_kind_check(kind, err);
  if (rc < 0) return rc;
  return qt__mlp_set_ops(m, qt__ops_for(kind), err);
}

/* ------------------------------------------------------------------------- */
/* Random initialization                                                      */
/* ------------------------------------------------------------------------- */

qt_mlp_arch qt_mlp_default_arch(void) {
  return (qt_mlp_arch){.n_features = 0,
                       .width = 256,
                       .depth = 3,
                       .num_classes = 0,
                       .layer_norm = 1,
                       .activation = QT_MLP_ACTIVATION_RELU};
}

int qt_mlp_write_init(const qt_mlp_arch *a, uint64_t seed, const char *path, qt_err *err) {
  if (!a || !path) return qt_err_set(err, QT_EINVAL, "qt_mlp_write_init: NULL argument");
  if (a->n_features < 1 || a->width < 1 || a->depth < 1 || a->num_classes < 2)
    return qt_err_set(err, QT_EINVAL,
                      "MLP: features %zu, width %zu, depth %zu, classes %ld: features, width and "
                      "depth must be >= 1, classes >= 2",
                      a->n_features, a->width, a->depth, a->num_classes);
  if (a->depth > 1000 || a->width > (1u << 20) || a->n_features > (1u << 24))
    return qt_err_set(err, QT_EINVAL, "MLP: depth %zu, width %zu or features %zu too large",
                      a->depth, a->width, a->n_features);
  if ((unsigned)a->activation > QT_MLP_ACTIVATION_GELU)
    return qt_err_set(err, QT_EINVAL, "MLP: unknown activation %d", (int)a->activation);
  size_t n_tensors = 4 * a->depth + 2, classes = (size_t)a->num_classes;
  size_t total = a->width * a->n_features + (a->depth - 1) * a->width * a->width +
                 a->depth * 3 * a->width + classes * a->width + classes;
  qt_safetensors_tensor *list = calloc(n_tensors, sizeof *list);
  size_t(*shapes)[2] = calloc(n_tensors, sizeof *shapes);
  char(*names)[64] = calloc(n_tensors, sizeof *names);
  float *values = malloc(total * sizeof *values);
  qt_rng_t *rng = NULL;
  int rc = 0;
  if (!list || !shapes || !names || !values) rc = qt_err_set(err, QT_ENOMEM, "MLP: out of memory");
  if (rc == 0) rc = qt_rng_init(&rng, seed, err);
  size_t n = 0;
  float *cursor = values;
  /* Tensors in model order; torch draws each Linear's weight, then its
   * bias, with the same bound. */
  for (size_t i = 0; rc == 0 && i <= a->depth; i++) {
    int head = i == a->depth;
    size_t in = i == 0 ? a->n_features : a->width, out_f = head ? classes : a->width;
    snprintf(names[n], sizeof names[n], head ? "head.weight" : "blocks.%zu.fc.weight", i);
    shapes[n][0] = out_f;
    shapes[n][1] = in;
    list[n] = (qt_safetensors_tensor){names[n], QT_DTYPE_F32, 2, shapes[n], cursor, NULL};
    linear_init(cursor, out_f * in, in, rng);
    cursor += out_f * in;
    n++;
    snprintf(names[n], sizeof names[n], head ? "head.bias" : "blocks.%zu.fc.bias", i);
    shapes[n][0] = out_f;
    list[n] = (qt_safetensors_tensor){names[n], QT_DTYPE_F32, 1, shapes[n], cursor, NULL};
    linear_init(cursor, out_f, in, rng);
    cursor += out_f;
    n++;
    if (head || !a->layer_norm) continue;
    for (int k = 0; k < 2; k++) {
      snprintf(names[n], sizeof names[n], "blocks.%zu.norm.%s", i, k ? "bias" : "weight");
      shapes[n][0] = out_f;
      list[n] = (qt_safetensors_tensor){names[n], QT_DTYPE_F32, 1, shapes[n], cursor, NULL};
      for (size_t j = 0; j < out_f; j++) cursor[j] = k ? 0.0f : 1.0f;
      cursor += out_f;
      n++;
    }
  }
  if (rc == 0) {
    qt_safetensors_pair meta[3] = {
        {"activation", activation_name(a->activation)}, {"arch", "mlp"}, {"format", "pt"}};
    rc = qt_safetensors_write(path, list, n, meta, 3, err);
  }
  qt_rng_free(rng);
  free(list);
  free(shapes);
  free(names);
  free(values);
  return rc;
}

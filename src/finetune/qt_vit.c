/*
 * qt_vit.c - the ViT family (vit, deit, deit3): the model object, its
 * parameter table with timm's names, the activation arena, and the forward
 * and backward passes composed from the layer ops of the backend's op table
 * (qt__ops: the CPU references of cpu/ or the CUDA ops of cuda/; see
 * qt_finetune.h, "ViT family"). The parameters, gradients, moments and
 * activations live in the backend's memory; a model is made on the CPU and
 * moved with qt_vit_to_backend.
 *
 * Shapes used throughout: B images (batch <= max_batch), N = (image_size /
 * patch_size)^2 patches, T = N + 1 tokens (the class token first), C the
 * width, H heads, M the MLP's hidden features, K classes, P = 3 * patch^2
 * values per patch.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune.h"
#include "finetune/qt_finetune_internal.h"

#define VIT_NORM_EPS 1e-6f /* timm: partial(nn.LayerNorm, eps=1e-6) */
#define VIT_NAME_MAX 64

/* ------------------------------------------------------------------------- */
/* The model                                                                  */
/* ------------------------------------------------------------------------- */

/* Pointers to the tensors of one block, into the values or the gradients.
 * Optional tensors (qkv_b, ls1, ls2) are NULL when the model has none. */
typedef struct block_tensors {
  float *norm1_w, *norm1_b; /* (C) */
  float *qkv_w, *qkv_b;     /* (3C, C), (3C) */
  float *proj_w, *proj_b;   /* (C, C), (C) */
  float *ls1;               /* (C) */
  float *norm2_w, *norm2_b; /* (C) */
  float *fc1_w, *fc1_b;     /* (M, C), (M) */
  float *fc2_w, *fc2_b;     /* (C, M), (C) */
  float *ls2;               /* (C) */
} block_tensors;

typedef struct vit_tensors {
  float *patch_w;         /* (C, 3, p, p), read as (C, P) */
  float *patch_b;         /* (C) or NULL */
  float *cls;             /* (1, 1, C) */
  float *pos;             /* (1, T or N, C) */
  block_tensors *blocks;  /* (depth) */
  float *norm_w, *norm_b; /* (C) */
  float *head_w, *head_b; /* (K, C), (K) */
} vit_tensors;

/* One row of the parameter table. */
typedef struct tensor_entry {
  char name[VIT_NAME_MAX];
  size_t ndim;
  size_t shape[4];
  size_t numel;
  size_t offset; /* into params, grads, m and v */
  int decay;
  float **value_slot; /* where the pointer into params goes */
  float **grad_slot;  /* where the pointer into grads goes */
} tensor_entry;

/* What the arena's layout depends on besides the shapes: the activations
 * kept in BF16 (half the room of FP32) and the floats that attention
 * keeps per block, at max_batch. */
typedef struct arena_mode {
  unsigned keep; /* QT__KEEP_*: ln1, ln2, gelu; attn_y; qkv, dqkv; fc1; dgelu; dln; dattn_y */
  size_t att;
} arena_mode;

/* The activations of one block, kept from the forward for the backward. */
typedef struct block_acts {
  float *ln1;                 /* (B, T, C) norm1 output (BF16 in its first half
                                 after a forward that kept the linear inputs
                                 so, as ln2 and gelu) */
  float *ln1_mean, *ln1_rstd; /* (B, T) */
  float *qkv;                 /* (B, T, 3C) (BF16 after a forward that kept
                                 it so) */
  float *att;                 /* what attention keeps for its backward: (B, H, T, T)
                                 softmax of the scores, or the fused kernels'
                                 less (the op table's attention_saved_size) */
  float *attn_y;              /* (B, T, C) heads side by side, before proj
                                 (BF16 after a forward that kept it so) */
  float *attn_out;            /* (B, T, C) proj output (the branch; shared by every
                                 block's attn_out and mlp_out without layer scale) */
  float *resid_mid;           /* (B, T, C) after the attention residual */
  float *ln2;                 /* (B, T, C) norm2 output */
  float *ln2_mean, *ln2_rstd; /* (B, T) */
  float *fc1;                 /* (B, T, M) before GELU (BF16 after a forward
                                 that kept it so) */
  float *gelu;                /* (B, T, M) */
  float *mlp_out;             /* (B, T, C) fc2 output (the branch) */
  float *resid_out;           /* (B, T, C) the block's output */
} block_acts;

struct qt_vit {
  qt_vit_config config;
  size_t max_batch;
  size_t patches, tokens; /* N, T */
  const qt__ops *ops;     /* the backend every array below lives on */

  /* Parameters: four arrays in the order of the table, backend memory. */
  tensor_entry *entries;   /* (n_entries) */
  qt__optim_slice *slices; /* (n_entries) qt_vit_adamw_step's, for the op table's optim_steps */
  size_t n_entries;
  size_t n_params;
  float *params; /* (n_params) values */
  float *grads;  /* (n_params) gradients */
  float *m, *v;  /* (n_params) AdamW moments */
  vit_tensors p; /* pointers into params */
  vit_tensors g; /* the same tensors in grads */
  long step;

  /* Activations and backward scratch: one arena in backend memory, laid
   * out for `mode` (arena_mode_now when it was laid out). */
  float *arena;
  size_t arena_floats;
  arena_mode mode;
  float *images;     /* (B, 3, S, S) the batch's images; NULL on the CPU,
                        which reads the caller's in place */
  float *patch_in;   /* (B, N, P) patchified images */
  float *patch_emb;  /* (B, N, C) */
  float *resid0;     /* (B, T, C) tokens entering block 0 */
  block_acts *acts;  /* (depth) */
  float *cls_rows;   /* (B, C) class token leaving the last block */
  float *cls_norm;   /* (B, C) after the final norm */
  float *cls_mean;   /* (B) */
  float *cls_rstd;   /* (B) */
  float *logits;     /* (B, K) */
  float *probs;      /* (B, K) */
  float *losses;     /* (B) */
  float *targets;    /* (B, K) soft targets of the last loss */
  float *dresid;     /* (B, T, C) gradient of the residual stream */
  float *dbranch;    /* (B, T, C) */
  float *dln;        /* (B, T, C) (BF16 after a forward that kept it so) */
  float *dattn_y;    /* (B, T, C) (BF16 after a forward that kept it so) */
  float *dqkv;       /* (B, T, 3C) (BF16 after a forward that kept qkv so) */
  float *datt;       /* the attention backward's scratch (attention_scratch_size) */
  float *dfc1;       /* (B, T, M) */
  float *dgelu;      /* (B, T, M) (BF16 after a forward that kept it so) */
  unsigned keep;     /* the activations that the last forward kept in BF16
                        (QT__KEEP_*, the op table's bf16_activations), for
                        it and its backward */
  float *dcls_rows;  /* (B, C) */
  float *dcls_norm;  /* (B, C) */
  float *dlogits;    /* (B, K) */
  float *dpatch_emb; /* (B, N, C) */
  float *dloss;      /* (1) the loss gradient of every row, 1 / B */
  float *drop_mask;  /* (B, C) head dropout's mask of the last forward; NULL
                        on the CPU, which reads the hooks' own */
  float *dfeat;      /* (B, C) the feature hook's gradient moved up; NULL on
                        the CPU, which reads the hooks' own */
  int *labels;       /* (B) labels of the last loss, backend memory */
  /* Host copies of what callers read, off the CPU only (else NULL). */
  float *host_logits; /* (B, K) */
  float *host_losses; /* (B) */

  /* State of the last pass. */
  size_t batch;
  /* A failure of qt_vit_zero_grad (which returns nothing) to queue its
   * work on a device, reported by the next backward; 0 when none. */
  int zero_grad_rc;
  qt_err zero_grad_err;
  int have_forward, have_loss, soft;
  float smoothing;
  /* The lowest block the backward pass reaches (qt_vit_set_backward_from);
   * 0: every block and the stem. */
  long backward_from;
  /* Head dropout (qt_vit_set_head_dropout) and the feature hook's gradient
   * (qt_vit_set_feature_hook), over (max_batch, width) values. */
  qt__head_hooks hooks;
  /* The feature hook's copy of the normalized class tokens of the last
   * forward before dropout; NULL while off. */
  float *feat;
};

/* ------------------------------------------------------------------------- */
/* The parameter table                                                        */
/* ------------------------------------------------------------------------- */

static void add_entry(qt_vit_t *vit, float **value_slot, float **grad_slot, int decay, size_t ndim,
                      const size_t *shape, const char *fmt, ...) QT_PRINTF(7, 8);

static void add_entry(qt_vit_t *vit, float **value_slot, float **grad_slot, int decay, size_t ndim,
                      const size_t *shape, const char *fmt, ...) {
  tensor_entry *e = &vit->entries[vit->n_entries++];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->name, sizeof e->name, fmt, ap);
  va_end(ap);
  e->ndim = ndim;
  e->numel = 1;
  for (size_t d = 0; d < ndim; d++) {
    e->shape[d] = shape[d];
    e->numel *= shape[d];
  }
  e->offset = vit->n_params;
  e->decay = decay;
  e->value_slot = value_slot;
  e->grad_slot = grad_slot;
  vit->n_params += e->numel;
}

#define DIMS(...)                                                              \
  (sizeof((const size_t[]){__VA_ARGS__}) / sizeof(size_t)), (const size_t[]) { \
    __VA_ARGS__                                                                \
  }

/* Fills the table in timm's order. Weight decay follows timm's
 * param_groups_weight_decay: none for 1-d tensors, biases and the
 * no_weight_decay() set {pos_embed, cls_token}. */
static void build_table(qt_vit_t *vit) {
  const qt_vit_config *cf = &vit->config;
  size_t C = (size_t)cf->width, M = (size_t)cf->mlp_hidden, K = (size_t)cf->num_classes;
  size_t p = (size_t)cf->patch_size;
  size_t pos_rows = vit->patches + (cf->no_embed_class ? 0 : 1);
  vit_tensors *P = &vit->p, *G = &vit->g;
  vit->n_entries = 0;
  vit->n_params = 0;
  add_entry(vit, &P->patch_w, &G->patch_w, 1, DIMS(C, 3, p, p), "patch_embed.proj.weight");
  if (cf->patch_bias) add_entry(vit, &P->patch_b, &G->patch_b, 0, DIMS(C), "patch_embed.proj.bias");
  add_entry(vit, &P->cls, &G->cls, 0, DIMS(1, 1, C), "cls_token");
  add_entry(vit, &P->pos, &G->pos, 0, DIMS(1, pos_rows, C), "pos_embed");
  for (long i = 0; i < cf->depth; i++) {
    block_tensors *pb = &P->blocks[i], *gb = &G->blocks[i];
    add_entry(vit, &pb->norm1_w, &gb->norm1_w, 0, DIMS(C), "blocks.%ld.norm1.weight", i);
    add_entry(vit, &pb->norm1_b, &gb->norm1_b, 0, DIMS(C), "blocks.%ld.norm1.bias", i);
    add_entry(vit, &pb->qkv_w, &gb->qkv_w, 1, DIMS(3 * C, C), "blocks.%ld.attn.qkv.weight", i);
    if (cf->qkv_bias)
      add_entry(vit, &pb->qkv_b, &gb->qkv_b, 0, DIMS(3 * C), "blocks.%ld.attn.qkv.bias", i);
    add_entry(vit, &pb->proj_w, &gb->proj_w, 1, DIMS(C, C), "blocks.%ld.attn.proj.weight", i);
    add_entry(vit, &pb->proj_b, &gb->proj_b, 0, DIMS(C), "blocks.%ld.attn.proj.bias", i);
    if (cf->layer_scale) add_entry(vit, &pb->ls1, &gb->ls1, 0, DIMS(C), "blocks.%ld.ls1.gamma", i);
    add_entry(vit, &pb->norm2_w, &gb->norm2_w, 0, DIMS(C), "blocks.%ld.norm2.weight", i);
    add_entry(vit, &pb->norm2_b, &gb->norm2_b, 0, DIMS(C), "blocks.%ld.norm2.bias", i);
    add_entry(vit, &pb->fc1_w, &gb->fc1_w, 1, DIMS(M, C), "blocks.%ld.mlp.fc1.weight", i);
    add_entry(vit, &pb->fc1_b, &gb->fc1_b, 0, DIMS(M), "blocks.%ld.mlp.fc1.bias", i);
    add_entry(vit, &pb->fc2_w, &gb->fc2_w, 1, DIMS(C, M), "blocks.%ld.mlp.fc2.weight", i);
    add_entry(vit, &pb->fc2_b, &gb->fc2_b, 0, DIMS(C), "blocks.%ld.mlp.fc2.bias", i);
    if (cf->layer_scale) add_entry(vit, &pb->ls2, &gb->ls2, 0, DIMS(C), "blocks.%ld.ls2.gamma", i);
  }
  add_entry(vit, &P->norm_w, &G->norm_w, 0, DIMS(C), "norm.weight");
  add_entry(vit, &P->norm_b, &G->norm_b, 0, DIMS(C), "norm.bias");
  add_entry(vit, &P->head_w, &G->head_w, 1, DIMS(K, C), "head.weight");
  add_entry(vit, &P->head_b, &G->head_b, 0, DIMS(K), "head.bias");
}

/* Most entries a config can produce: 4 + 14 per block + 4. */
static size_t max_entries(long depth) {
  return 8 + 14 * (size_t)depth;
}

/* ------------------------------------------------------------------------- */
/* The activation arena                                                       */
/* ------------------------------------------------------------------------- */

/* Hands out n floats from the arena; with base NULL it only counts. */
static float *carve(float *base, size_t *used, size_t n) {
  float *at = base ? base + *used : NULL;
  *used += n;
  return at;
}

/* The activations the op table keeps in BF16 for batch B now (its
 * precision, on a CUDA device its switches and the fused attention's
 * reach), each with those its ops need beside it (QT__KEEP_*). */
static unsigned keep_now(const qt_vit_t *vit, size_t B) {
  const qt__ops *ops = vit->ops;
  size_t T = vit->tokens, C = (size_t)vit->config.width, H = (size_t)vit->config.heads;
  unsigned keep = ops->bf16_activations ? ops->bf16_activations(B, T, C, H) : 0;
  if (!(keep & QT__KEEP_LINEAR_INPUTS)) return 0;
  if (!(keep & QT__KEEP_ATTENTION_OUT)) keep &= ~QT__KEEP_QKV;
  if (!(keep & QT__KEEP_QKV)) keep &= ~QT__KEEP_ATTENTION_GRAD;
  /* The branch outputs only where the residual add's fused op reads them
   * (and no layer scale's gradient does). */
  if (!ops->residual_layernorm_forward || vit->config.layer_scale) keep &= ~QT__KEEP_BRANCH;
  return keep;
}

/* The arena_mode for the op table's settings now, at max_batch. */
static arena_mode arena_mode_now(const qt_vit_t *vit) {
  const qt__ops *ops = vit->ops;
  size_t B = vit->max_batch, T = vit->tokens;
  size_t C = (size_t)vit->config.width, H = (size_t)vit->config.heads;
  arena_mode m;
  m.keep = keep_now(vit, B);
  m.att = ops->attention_saved_size ? ops->attention_saved_size(B, T, C, H) : B * H * T * T;
  return m;
}

/* Floats for n values, in BF16 where `keep` (QT__KEEP_*) is in `mode`. */
static size_t kept_floats(size_t n, unsigned mode, unsigned keep) {
  return mode & keep ? (n + 1) / 2 : n;
}

/* Lays the activations out in base (NULL: count only) for vit->mode;
 * returns the floats used. Must visit the buffers in the same order both
 * times. */
static size_t layout_arena(qt_vit_t *vit, float *base) {
  const arena_mode *m = &vit->mode;
  const qt_vit_config *cf = &vit->config;
  size_t B = vit->max_batch, N = vit->patches, T = vit->tokens;
  size_t C = (size_t)cf->width, H = (size_t)cf->heads, M = (size_t)cf->mlp_hidden;
  size_t K = (size_t)cf->num_classes, P = 3 * (size_t)cf->patch_size * (size_t)cf->patch_size;
  size_t used = 0;
  size_t S = (size_t)cf->image_size;
  vit->images = vit->ops->host_memory ? NULL : carve(base, &used, B * 3 * S * S);
  vit->patch_in = carve(base, &used, B * N * P);
  vit->patch_emb = carve(base, &used, B * N * C);
  vit->resid0 = carve(base, &used, B * T * C);
  /* Without layer scale, a block's branch outputs (proj's and fc2's) are
   * read only by the residual add that follows each: one buffer serves
   * them all (for ViT-B/16 at batch 64, 0.9 GB less). */
  int one_branch = !cf->layer_scale;
  float *branch = one_branch ? carve(base, &used, B * T * C) : NULL;
  for (long l = 0; l < cf->depth; l++) {
    block_acts *a = &vit->acts[l];
    a->ln1 = carve(base, &used, kept_floats(B * T * C, m->keep, QT__KEEP_LINEAR_INPUTS));
    a->ln1_mean = carve(base, &used, B * T);
    a->ln1_rstd = carve(base, &used, B * T);
    a->qkv = carve(base, &used, kept_floats(B * T * 3 * C, m->keep, QT__KEEP_QKV));
    a->att = carve(base, &used, m->att);
    a->attn_y = carve(base, &used, kept_floats(B * T * C, m->keep, QT__KEEP_ATTENTION_OUT));
    a->attn_out = one_branch ? branch : carve(base, &used, B * T * C);
    a->resid_mid = carve(base, &used, B * T * C);
    a->ln2 = carve(base, &used, kept_floats(B * T * C, m->keep, QT__KEEP_LINEAR_INPUTS));
    a->ln2_mean = carve(base, &used, B * T);
    a->ln2_rstd = carve(base, &used, B * T);
    a->fc1 = carve(base, &used, kept_floats(B * T * M, m->keep, QT__KEEP_HIDDEN));
    a->gelu = carve(base, &used, kept_floats(B * T * M, m->keep, QT__KEEP_LINEAR_INPUTS));
    a->mlp_out = one_branch ? branch : carve(base, &used, B * T * C);
    a->resid_out = carve(base, &used, B * T * C);
  }
  vit->cls_rows = carve(base, &used, B * C);
  vit->cls_norm = carve(base, &used, B * C);
  vit->cls_mean = carve(base, &used, B);
  vit->cls_rstd = carve(base, &used, B);
  vit->logits = carve(base, &used, B * K);
  vit->probs = carve(base, &used, B * K);
  vit->losses = carve(base, &used, B);
  vit->targets = carve(base, &used, B * K);
  vit->dresid = carve(base, &used, B * T * C);
  vit->dbranch = carve(base, &used, B * T * C);
  vit->dln = carve(base, &used, kept_floats(B * T * C, m->keep, QT__KEEP_NORM_GRAD));
  vit->dattn_y = carve(base, &used, kept_floats(B * T * C, m->keep, QT__KEEP_ATTENTION_GRAD));
  vit->dqkv = carve(base, &used, kept_floats(B * T * 3 * C, m->keep, QT__KEEP_QKV));
  vit->datt = carve(base, &used, vit->ops->attention_scratch_size(B, T, H));
  vit->dfc1 = carve(base, &used, B * T * M);
  vit->dgelu = carve(base, &used, kept_floats(B * T * M, m->keep, QT__KEEP_HIDDEN_GRAD));
  vit->dcls_rows = carve(base, &used, B * C);
  vit->dcls_norm = carve(base, &used, B * C);
  vit->dlogits = carve(base, &used, B * K);
  vit->dpatch_emb = carve(base, &used, B * N * C);
  vit->dloss = carve(base, &used, 1);
  vit->drop_mask = vit->ops->host_memory ? NULL : carve(base, &used, B * C);
  vit->dfeat = vit->ops->host_memory ? NULL : carve(base, &used, B * C);
  return used;
}

/* ------------------------------------------------------------------------- */
/* Creation                                                                   */
/* ------------------------------------------------------------------------- */

qt_vit_config qt_vit_default_config(void) {
  qt_vit_config c;
  memset(&c, 0, sizeof c);
  c.image_size = 224;
  c.patch_size = 16;
  c.width = 192;
  c.depth = 12;
  c.heads = 3;
  c.mlp_hidden = 768;
  c.num_classes = 1000;
  c.layer_scale = 0;
  c.no_embed_class = 0;
  c.qkv_bias = 1;
  c.patch_bias = 1;
  c.layer_scale_init = 1e-6;
  return c;
}

/* Sizes beyond this many floats in one array are refused before any
 * multiplication can overflow (2^40 floats = 4 TiB). */
#define VIT_MAX_FLOATS ((double)(1ull << 40))

static int check_config(const qt_vit_config *c, size_t max_batch, qt_err *err) {
  const char *who = "ViT config";
  if (c->image_size < 1 || c->patch_size < 1 || c->width < 1 || c->depth < 1 || c->heads < 1 ||
      c->mlp_hidden < 1 || c->num_classes < 1)
    return qt_err_set(err, QT_EINVAL,
                      "%s: image_size %ld, patch_size %ld, width %ld, depth %ld, heads %ld, "
                      "mlp_hidden %ld and num_classes %ld must all be >= 1",
                      who, c->image_size, c->patch_size, c->width, c->depth, c->heads,
                      c->mlp_hidden, c->num_classes);
  if (c->image_size % c->patch_size != 0)
    return qt_err_set(err, QT_EINVAL, "%s: image_size %ld is not a multiple of patch_size %ld", who,
                      c->image_size, c->patch_size);
  if (c->width % c->heads != 0)
    return qt_err_set(err, QT_EINVAL, "%s: %ld heads do not divide the width %ld", who, c->heads,
                      c->width);
  if (max_batch < 1) return qt_err_set(err, QT_EINVAL, "%s: max_batch must be >= 1", who);
  /* The largest buffers, in double, against the limit. */
  double grid = (double)(c->image_size / c->patch_size);
  double tokens = grid * grid + 1, B = (double)max_batch;
  double biggest[] = {B * c->heads * tokens * tokens,
                      B * tokens * c->mlp_hidden,
                      B * tokens * 3.0 * c->width,
                      (double)c->mlp_hidden * c->width,
                      (double)c->num_classes * c->width,
                      B * 3.0 * c->image_size * c->image_size,
                      (double)c->depth * B * tokens * (c->heads * tokens + 2.0 * c->mlp_hidden)};
  for (size_t i = 0; i < sizeof biggest / sizeof biggest[0]; i++) {
    if (biggest[i] > VIT_MAX_FLOATS)
      return qt_err_set(err, QT_ENOMEM, "%s: a ViT of this size (batch %zu) needs over 2^40 floats",
                        who, max_batch);
  }
  return 0;
}

/* Points the tensors of the table into the parameter and gradient arrays. */
static void point_tensors(qt_vit_t *vit) {
  for (size_t i = 0; i < vit->n_entries; i++) {
    tensor_entry *e = &vit->entries[i];
    *e->value_slot = vit->params + e->offset;
    *e->grad_slot = vit->grads + e->offset;
  }
}

/* Allocates a model for a valid config on the CPU; parameters zero. */
static int vit_create(const qt_vit_config *config, size_t max_batch, qt_vit_t **out, qt_err *err) {
  *out = NULL;
  int rc = check_config(config, max_batch, err);
  if (rc < 0) return rc;
  qt_vit_t *vit = calloc(1, sizeof *vit);
  if (!vit) return qt_err_set(err, QT_ENOMEM, "ViT: out of memory");
  vit->config = *config;
  vit->max_batch = max_batch;
  vit->ops = qt__ops_cpu();
  size_t grid = (size_t)(config->image_size / config->patch_size);
  vit->patches = grid * grid;
  vit->tokens = vit->patches + 1;
  size_t depth = (size_t)config->depth;
  vit->p.blocks = calloc(depth, sizeof *vit->p.blocks);
  vit->g.blocks = calloc(depth, sizeof *vit->g.blocks);
  vit->acts = calloc(depth, sizeof *vit->acts);
  vit->entries = calloc(max_entries(config->depth), sizeof *vit->entries);
  vit->slices = calloc(max_entries(config->depth), sizeof *vit->slices);
  if (!vit->p.blocks || !vit->g.blocks || !vit->acts || !vit->entries || !vit->slices) goto oom;
  build_table(vit);
  QT_ASSERT(vit->n_entries <= max_entries(config->depth));
  vit->params = calloc(vit->n_params, sizeof *vit->params);
  vit->grads = calloc(vit->n_params, sizeof *vit->grads);
  vit->m = calloc(vit->n_params, sizeof *vit->m);
  vit->v = calloc(vit->n_params, sizeof *vit->v);
  if (!vit->params || !vit->grads || !vit->m || !vit->v) goto oom;
  point_tensors(vit);
  vit->mode = arena_mode_now(vit);
  vit->arena_floats = layout_arena(vit, NULL);
  vit->arena = malloc(vit->arena_floats * sizeof *vit->arena);
  vit->labels = malloc(max_batch * sizeof *vit->labels);
  if (!vit->arena || !vit->labels) goto oom;
  layout_arena(vit, vit->arena);
  *out = vit;
  return 0;
oom:
  qt_vit_free(vit);
  return qt_err_set(err, QT_ENOMEM, "ViT: out of memory (width %ld, depth %ld, %ld px, batch %zu)",
                    config->width, config->depth, config->image_size, max_batch);
}

void qt_vit_free(qt_vit_t *vit) {
  if (!vit) return;
  free(vit->p.blocks);
  free(vit->g.blocks);
  free(vit->acts);
  free(vit->entries);
  free(vit->slices);
  const qt__ops *ops = vit->ops;
  ops->release(vit->params);
  ops->release(vit->grads);
  ops->release(vit->m);
  ops->release(vit->v);
  ops->release(vit->arena);
  ops->release(vit->labels);
  free(vit->host_logits);
  free(vit->host_losses);
  qt__head_hooks_free(&vit->hooks);
  free(vit->feat);
  free(vit);
}

/* ------------------------------------------------------------------------- */
/* Initialization                                                             */
/* ------------------------------------------------------------------------- */

/* timm's trunc_normal_(std) with its default absolute bounds [-2, 2]. */
static void trunc_normal(float *x, size_t n, double std, qt_rng_t *rng) {
  for (size_t i = 0; i < n; i++) {
    double value;
    do {
      value = qt_rng_gaussian(rng, std);
    } while (value < -2.0 || value > 2.0);
    x[i] = (float)value;
  }
}

static void uniform(float *x, size_t n, double bound, qt_rng_t *rng) {
  for (size_t i = 0; i < n; i++) x[i] = (float)((2.0 * qt_rng_uniform(rng) - 1.0) * bound);
}

static void fill(float *x, size_t n, float value) {
  for (size_t i = 0; i < n; i++) x[i] = value;
}

/* A new classifier, as timm's init_weights_vit_timm initializes nn.Linear. */
static void init_head(qt_vit_t *vit, qt_rng_t *rng) {
  size_t C = (size_t)vit->config.width, K = (size_t)vit->config.num_classes;
  trunc_normal(vit->p.head_w, K * C, 0.02, rng);
  fill(vit->p.head_b, K, 0.0f);
}

int qt_vit_init(const qt_vit_config *config, size_t max_batch, qt_rng_t *rng, qt_vit_t **out,
                qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_vit_init: NULL argument");
  *out = NULL;
  if (!config || !rng) return qt_err_set(err, QT_EINVAL, "qt_vit_init: NULL argument");
  qt_vit_t *vit;
  int rc = vit_create(config, max_batch, &vit, err);
  if (rc < 0) return rc;
  const qt_vit_config *cf = &vit->config;
  size_t C = (size_t)cf->width, P = 3 * (size_t)cf->patch_size * (size_t)cf->patch_size;
  vit_tensors *p = &vit->p;
  /* Conv2d's default: kaiming_uniform(a = sqrt 5) gives the bound
   * 1 / sqrt(fan_in) for the weight, the same as for the bias. */
  double conv_bound = 1.0 / sqrt((double)P);
  uniform(p->patch_w, C * P, conv_bound, rng);
  if (p->patch_b) uniform(p->patch_b, C, conv_bound, rng);
  size_t pos_rows = vit->patches + (cf->no_embed_class ? 0 : 1);
  trunc_normal(p->pos, pos_rows * C, 0.02, rng);
  for (size_t j = 0; j < C; j++) p->cls[j] = (float)qt_rng_gaussian(rng, 1e-6);
  for (long l = 0; l < cf->depth; l++) {
    block_tensors *b = &p->blocks[l];
    size_t M = (size_t)cf->mlp_hidden;
    fill(b->norm1_w, C, 1.0f);
    fill(b->norm1_b, C, 0.0f);
    trunc_normal(b->qkv_w, 3 * C * C, 0.02, rng);
    if (b->qkv_b) fill(b->qkv_b, 3 * C, 0.0f);
    trunc_normal(b->proj_w, C * C, 0.02, rng);
    fill(b->proj_b, C, 0.0f);
    fill(b->norm2_w, C, 1.0f);
    fill(b->norm2_b, C, 0.0f);
    trunc_normal(b->fc1_w, M * C, 0.02, rng);
    fill(b->fc1_b, M, 0.0f);
    trunc_normal(b->fc2_w, C * M, 0.02, rng);
    fill(b->fc2_b, C, 0.0f);
    if (b->ls1) fill(b->ls1, C, (float)cf->layer_scale_init);
    if (b->ls2) fill(b->ls2, C, (float)cf->layer_scale_init);
  }
  fill(p->norm_w, C, 1.0f);
  fill(p->norm_b, C, 0.0f);
  init_head(vit, rng);
  *out = vit;
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Loading a checkpoint                                                       */
/* ------------------------------------------------------------------------- */

qt_vit_load_params qt_vit_default_load_params(void) {
  qt_vit_load_params p;
  memset(&p, 0, sizeof p);
  p.family = QT_MODEL_FAMILY_VIT;
  p.max_batch = 32;
  return p;
}

/* Reads pos_embed of the checkpoint's grid and resamples its patch rows to
 * the model's grid (class-token row, if any, copied as it is). */
static int load_pos_embed(qt_vit_t *vit, const qt_safetensors_t *st, long old_grid, qt_err *err) {
  const qt_vit_config *cf = &vit->config;
  size_t C = (size_t)cf->width, prefix = cf->no_embed_class ? 0 : 1;
  size_t old_g = (size_t)old_grid, new_g = (size_t)(cf->image_size / cf->patch_size);
  size_t old_rows = prefix + old_g * old_g;
  if (old_g == new_g)
    return qt_safetensors_read_f32(st, "pos_embed", vit->p.pos, old_rows * C, err);
  float *old = malloc((old_rows * C + old_g * new_g * C) * sizeof *old);
  if (!old) return qt_err_set(err, QT_ENOMEM, "%s: out of memory", qt_safetensors_path(st));
  int rc = qt_safetensors_read_f32(st, "pos_embed", old, old_rows * C, err);
  if (rc == 0) {
    memcpy(vit->p.pos, old, prefix * C * sizeof *old);
    qt_cpu_resample_bicubic(vit->p.pos + prefix * C, old + old_rows * C, old + prefix * C, old_g,
                            old_g, new_g, new_g, C);
  }
  free(old);
  return rc;
}

int qt_vit_load(const char *checkpoint_path, const qt_vit_load_params *params, qt_vit_t **out,
                qt_err *err) {
  if (!checkpoint_path || !params || !out)
    return qt_err_set(err, QT_EINVAL, "qt_vit_load: NULL argument");
  *out = NULL;
  if (!qt_model_family_is_vit(params->family))
    return qt_err_set(err, QT_EINVAL, "qt_vit_load: family %s is not a ViT family",
                      qt_model_family_name(params->family));
  if (params->heads < 1)
    return qt_err_set(err, QT_EINVAL,
                      "qt_vit_load: %s: the number of heads must be given (a checkpoint "
                      "cannot tell it)",
                      checkpoint_path);
  if (params->image_size < 0 || params->num_classes < 0)
    return qt_err_set(err, QT_EINVAL,
                      "qt_vit_load: image_size %ld and num_classes %ld must be >= 0",
                      params->image_size, params->num_classes);

  qt_safetensors_t *st = NULL;
  qt_err open_err;
  qt_err_clear(&open_err);
  int rc = qt_safetensors_open(checkpoint_path, &st, &open_err);
  if (rc != 0) {
    if (rc == QT_ENOENT)
      return qt_err_set(err, rc, "checkpoint %s does not exist", checkpoint_path);
    return qt_err_set(err, rc, "checkpoint %s", qt_err_message(&open_err));
  }
  qt_model_expect expect = qt_model_expect_any();
  expect.heads = params->heads;
  qt_model_summary s;
  rc = qt_model_inspect_open(st, params->family, &expect, &s, err);
  if (rc == 0 && s.distilled)
    rc = qt_err_set(err, QT_ENOTIMPL,
                    "checkpoint %s: distilled DeiT (dist_token, head_dist) is not supported by "
                    "the engine yet",
                    checkpoint_path);
  if (rc == 0 && params->num_classes == 0 && s.num_classes == 0)
    rc = qt_err_set(err, QT_EINVAL,
                    "checkpoint %s has no head: give the number of classes of the task",
                    checkpoint_path);
  long image_size = params->image_size ? params->image_size : s.image_size;
  if (rc == 0 && image_size % s.patch_size != 0)
    rc = qt_err_set(err, QT_EINVAL,
                    "checkpoint %s: image size %ld is not a multiple of its patch "
                    "size %ld",
                    checkpoint_path, image_size, s.patch_size);
  /* Resampling reads at most 64 taps per output (qt_cpu_resample_bicubic):
   * shrinking the grid more than 15 times is refused. */
  if (rc == 0 && s.image_size > 15 * image_size)
    rc = qt_err_set(err, QT_EINVAL,
                    "checkpoint %s: image size %ld is more than 15 times smaller than the "
                    "checkpoint's %ld",
                    checkpoint_path, image_size, s.image_size);
  if (rc < 0) {
    qt_safetensors_free(st);
    return rc;
  }

  qt_vit_config config = qt_vit_default_config();
  config.image_size = image_size;
  config.patch_size = s.patch_size;
  config.width = s.width;
  config.depth = s.depth;
  config.heads = params->heads;
  config.mlp_hidden = s.mlp_hidden;
  config.num_classes = params->num_classes ? params->num_classes : s.num_classes;
  config.layer_scale = s.layer_scale;
  config.no_embed_class = s.no_embed_class;
  config.qkv_bias = s.qkv_bias;
  config.patch_bias = s.patch_bias;
  int new_head = config.num_classes != s.num_classes;
  if (new_head && !params->rng) {
    qt_safetensors_free(st);
    return qt_err_set(err, QT_EINVAL,
                      "qt_vit_load: %s: a new head for %ld classes needs an rng (the checkpoint's "
                      "has %ld)",
                      checkpoint_path, config.num_classes, s.num_classes);
  }
  qt_vit_t *vit;
  rc = vit_create(&config, params->max_batch, &vit, err);
  if (rc < 0) {
    qt_safetensors_free(st);
    return rc;
  }
  for (size_t i = 0; rc == 0 && i < vit->n_entries; i++) {
    const tensor_entry *e = &vit->entries[i];
    if (strcmp(e->name, "pos_embed") == 0) {
      rc = load_pos_embed(vit, st, s.image_size / s.patch_size, err);
    } else if (new_head && strncmp(e->name, "head.", 5) == 0) {
      continue;
    } else {
      rc = qt_safetensors_read_f32(st, e->name, vit->params + e->offset, e->numel, err);
    }
  }
  qt_safetensors_free(st);
  if (rc < 0) {
    qt_vit_free(vit);
    return rc;
  }
  if (new_head) init_head(vit, params->rng);
  *out = vit;
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Accessors                                                                  */
/* ------------------------------------------------------------------------- */

const qt_vit_config *qt_vit_get_config(const qt_vit_t *vit) {
  return &vit->config;
}
size_t qt_vit_max_batch(const qt_vit_t *vit) {
  return vit->max_batch;
}
size_t qt_vit_parameter_count(const qt_vit_t *vit) {
  return vit->n_params;
}
size_t qt_vit_activation_bytes(const qt_vit_t *vit) {
  return vit->arena_floats * sizeof(float) + vit->max_batch * sizeof(int);
}
size_t qt_vit_tensor_count(const qt_vit_t *vit) {
  return vit->n_entries;
}
long qt_vit_step(const qt_vit_t *vit) {
  return vit->step;
}
void qt_vit_tensor_at(const qt_vit_t *vit, size_t index, qt_vit_tensor *out) {
  QT_ASSERT(index < vit->n_entries);
  const tensor_entry *e = &vit->entries[index];
  out->name = e->name;
  out->ndim = e->ndim;
  out->shape = e->shape;
  out->numel = e->numel;
  out->data = vit->params + e->offset;
  out->grad = vit->grads + e->offset;
  out->decay = e->decay;
}

int qt_vit_find_tensor(const qt_vit_t *vit, const char *name, qt_vit_tensor *out) {
  for (size_t i = 0; name && i < vit->n_entries; i++) {
    if (strcmp(vit->entries[i].name, name) == 0) {
      if (out) qt_vit_tensor_at(vit, i, out);
      return 0;
    }
  }
  return QT_ENOENT;
}

/* ------------------------------------------------------------------------- */
/* Forward                                                                    */
/* ------------------------------------------------------------------------- */

/* Returns from the enclosing function when a backend call fails. */
#define VIT_TRY(call)                \
  do {                               \
    int vit_rc_ = (call);            \
    if (vit_rc_ < 0) return vit_rc_; \
  } while (0)

/* The BF16 arrays (QT__BF16_*) of each call of a step, from the
 * activations that its forward keeps in BF16 (vit->keep): each activation
 * is named by the bit of the call that writes it and of those that read
 * it. */
typedef struct call_sets {
  /* forward */
  unsigned norm;          /* each layer norm: ln1, ln2 written */
  unsigned residual_norm; /* the residual add before a layer norm: the branch read too */
  unsigned qkv, attention, proj, fc1, gelu, fc2, fc2_last;
  /* backward */
  unsigned fc2_back, fc1_back, norm_back, proj_back, attention_back, qkv_back;
} call_sets;

static call_sets call_sets_of(const qt_vit_t *vit) {
  unsigned k = vit->keep;
#define BIT(keep, bit) (k & (keep) ? (unsigned)(bit) : 0u)
  unsigned linear_in = BIT(QT__KEEP_LINEAR_INPUTS, QT__BF16_INP);
  call_sets c;
  c.norm = BIT(QT__KEEP_LINEAR_INPUTS, QT__BF16_OUT);
  c.residual_norm = c.norm | BIT(QT__KEEP_BRANCH, QT__BF16_INP);
  c.qkv = linear_in | BIT(QT__KEEP_QKV, QT__BF16_OUT);
  c.attention = BIT(QT__KEEP_QKV, QT__BF16_INP) | BIT(QT__KEEP_ATTENTION_OUT, QT__BF16_OUT);
  c.proj = BIT(QT__KEEP_ATTENTION_OUT, QT__BF16_INP) | BIT(QT__KEEP_BRANCH, QT__BF16_OUT);
  c.fc1 = linear_in | BIT(QT__KEEP_HIDDEN, QT__BF16_OUT);
  c.gelu = BIT(QT__KEEP_HIDDEN, QT__BF16_INP) | BIT(QT__KEEP_LINEAR_INPUTS, QT__BF16_OUT);
  c.fc2 = linear_in | BIT(QT__KEEP_BRANCH, QT__BF16_OUT);
  c.fc2_last = linear_in; /* its output goes to the plain residual add, in FP32 */
  c.fc2_back = linear_in | BIT(QT__KEEP_HIDDEN_GRAD, QT__BF16_DINP);
  c.fc1_back = linear_in | BIT(QT__KEEP_HIDDEN, QT__BF16_OUT) |
               BIT(QT__KEEP_HIDDEN_GRAD, QT__BF16_DOUT) | BIT(QT__KEEP_NORM_GRAD, QT__BF16_DINP);
  c.norm_back = BIT(QT__KEEP_NORM_GRAD, QT__BF16_DOUT);
  c.proj_back =
      BIT(QT__KEEP_ATTENTION_OUT, QT__BF16_INP) | BIT(QT__KEEP_ATTENTION_GRAD, QT__BF16_DINP);
  c.attention_back = BIT(QT__KEEP_QKV, QT__BF16_INP | QT__BF16_DINP) |
                     BIT(QT__KEEP_ATTENTION_OUT, QT__BF16_OUT) |
                     BIT(QT__KEEP_ATTENTION_GRAD, QT__BF16_DOUT);
  c.qkv_back =
      linear_in | BIT(QT__KEEP_QKV, QT__BF16_DOUT) | BIT(QT__KEEP_NORM_GRAD, QT__BF16_DINP);
#undef BIT
  /* A linear layer whose forward takes the _bf16 op keeps its weight's
   * BF16 rounding, and a backward that takes the _bf16 op too takes it
   * where every forward it serves kept it (fc2_back serves the last
   * block's fc2_last): the backward follows the forward whose loss it
   * takes, and nothing writes the weights between (qt_vit_backward). */
  unsigned *forwards[] = {&c.qkv, &c.proj, &c.fc1, &c.fc2, &c.fc2_last};
  for (size_t i = 0; i < sizeof forwards / sizeof *forwards; i++)
    if (*forwards[i]) *forwards[i] |= QT__BF16_KEEP_WEIGHT;
  if (c.qkv && c.qkv_back) c.qkv_back |= QT__BF16_KEPT_WEIGHT;
  if (c.proj && c.proj_back) c.proj_back |= QT__BF16_KEPT_WEIGHT;
  if (c.fc1 && c.fc1_back) c.fc1_back |= QT__BF16_KEPT_WEIGHT;
  if (c.fc2 && c.fc2_last && c.fc2_back) c.fc2_back |= QT__BF16_KEPT_WEIGHT;
  return c;
}

/* The ops below: with the BF16 arrays that `bf16` names, the op table's
 * _bf16 op (there are none without bf16_activations, where keep_now
 * names none), else its FP32 op. */
static int norm_op(const qt_vit_t *vit, void *out, float *mean, float *rstd, const float *inp,
                   const float *weight, const float *bias, size_t n, size_t c, unsigned bf16,
                   qt_err *err) {
  const qt__ops *ops = vit->ops;
  return bf16 ? ops->layernorm_forward_bf16(out, mean, rstd, inp, weight, bias, n, c, VIT_NORM_EPS,
                                            bf16, err)
              : ops->layernorm_forward(out, mean, rstd, inp, weight, bias, n, c, VIT_NORM_EPS, err);
}

/* dinp += the layer norm's input gradient (dinp: the residual stream's). */
static int norm_backward_op(const qt_vit_t *vit, float *dinp, float *dweight, float *dbias,
                            const void *dout, const float *inp, const float *weight,
                            const float *mean, const float *rstd, size_t n, size_t c, unsigned bf16,
                            qt_err *err) {
  const qt__ops *ops = vit->ops;
  return bf16 ? ops->layernorm_backward_bf16(dinp, dweight, dbias, dout, inp, weight, mean, rstd, n,
                                             c, bf16, err)
              : ops->layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, n, c,
                                        err);
}

/* out = res + gamma branch, then its layer norm (as norm_op): one op where
 * the backend has it (bf16: QT__BF16_OUT for norm, QT__BF16_INP for the
 * branch, which only that op takes in BF16). A transformer block's
 * residual add and the layer norm after it. */
static int residual_then_norm(const qt_vit_t *vit, float *out, const float *res, const void *branch,
                              const float *gamma, void *norm, float *mean, float *rstd,
                              const float *weight, const float *bias, size_t n, size_t c,
                              unsigned bf16, qt_err *err) {
  const qt__ops *ops = vit->ops;
  if (ops->residual_layernorm_forward)
    return ops->residual_layernorm_forward(out, norm, mean, rstd, res, branch, gamma, weight, bias,
                                           n, c, VIT_NORM_EPS, bf16, err);
  int rc = ops->residual_forward(out, res, (const float *)branch, gamma, n, c, err);
  return rc < 0 ? rc : norm_op(vit, norm, mean, rstd, out, weight, bias, n, c, bf16, err);
}

static int gelu_op(const qt_vit_t *vit, void *out, const void *inp, size_t n, unsigned bf16,
                   qt_err *err) {
  return bf16 ? vit->ops->gelu_forward_bf16(out, inp, n, bf16, err)
              : vit->ops->gelu_forward(out, inp, n, err);
}

static int linear_op(const qt_vit_t *vit, void *out, const void *inp, const float *weight,
                     const float *bias, size_t n, size_t in_c, size_t out_c, unsigned bf16,
                     qt_err *err) {
  return bf16 ? vit->ops->linear_forward_bf16(out, inp, weight, bias, n, in_c, out_c, bf16, err)
              : vit->ops->linear_forward(out, inp, weight, bias, n, in_c, out_c, err);
}

/* The backward ops write the input gradient (set). */
static int linear_backward_op(const qt_vit_t *vit, void *dinp, float *dweight, float *dbias,
                              const void *dout, const void *inp, const float *weight, size_t n,
                              size_t in_c, size_t out_c, unsigned bf16, qt_err *err) {
  const qt__ops *ops = vit->ops;
  return bf16 ? ops->linear_backward_bf16(dinp, dweight, dbias, dout, inp, weight, n, in_c, out_c,
                                          1, bf16, err)
              : ops->linear_backward(dinp, dweight, dbias, dout, inp, weight, n, in_c, out_c, 1,
                                     err);
}

/* The MLP's GELU and fc1 before it (pre: fc1's output, inp its input);
 * dpre is scratch. */
static int gelu_linear_backward_op(const qt_vit_t *vit, void *dinp, float *dweight, float *dbias,
                                   float *dpre, const void *dout, const void *pre, const void *inp,
                                   const float *weight, size_t n, size_t in_c, size_t out_c,
                                   unsigned bf16, qt_err *err) {
  const qt__ops *ops = vit->ops;
  if (bf16)
    return ops->gelu_linear_backward_bf16(dinp, dweight, dbias, dpre, dout, pre, inp, weight, n,
                                          in_c, out_c, 1, bf16, err);
  int rc = ops->gelu_backward(dpre, (const float *)dout, pre, n * out_c, 1, err);
  return rc < 0 ? rc
                : ops->linear_backward(dinp, dweight, dbias, dpre, inp, weight, n, in_c, out_c, 1,
                                       err);
}

static int attention_op(const qt_vit_t *vit, void *out, float *att, const void *qkv, size_t B,
                        size_t T, size_t C, size_t H, unsigned bf16, qt_err *err) {
  return bf16 ? vit->ops->attention_forward_bf16(out, att, qkv, B, T, C, H, bf16, err)
              : vit->ops->attention_forward(out, att, qkv, B, T, C, H, err);
}

static int attention_backward_op(const qt_vit_t *vit, void *dqkv, float *scratch, const void *dout,
                                 const void *qkv, const float *att, const void *out, size_t B,
                                 size_t T, size_t C, size_t H, unsigned bf16, qt_err *err) {
  const qt__ops *ops = vit->ops;
  return bf16 ? ops->attention_backward_bf16(dqkv, scratch, dout, qkv, att, out, B, T, C, H, 1,
                                             bf16, err)
              : ops->attention_backward(dqkv, scratch, (const float *)dout, qkv, att,
                                        (const float *)out, B, T, C, H, 1, err);
}

/* Lays the arena out anew when the op table's settings changed since it
 * was (a run's first epoch with amp, say): nothing in it outlives a step,
 * so the old one goes first and the new one may take its memory. If the
 * new one cannot be had, the old layout comes back; if that fails too, the
 * model has no arena and every forward tries again. */
static int fit_arena(qt_vit_t *vit, qt_err *err) {
  arena_mode want = arena_mode_now(vit);
  const arena_mode *have = &vit->mode;
  if (vit->arena && want.keep == have->keep && want.att == have->att) return 0;
  const qt__ops *ops = vit->ops;
  arena_mode old = vit->mode;
  ops->release(vit->arena);
  vit->arena = NULL;
  vit->arena_floats = 0;
  vit->mode = want;
  size_t floats = layout_arena(vit, NULL);
  float *arena = NULL;
  int rc = ops->alloc((void **)&arena, floats * sizeof *arena, err);
  if (rc < 0) {
    qt_err ignored;
    vit->mode = old;
    floats = layout_arena(vit, NULL);
    if (ops->alloc((void **)&arena, floats * sizeof *arena, &ignored) < 0) return rc;
  }
  vit->arena = arena;
  vit->arena_floats = floats;
  layout_arena(vit, arena);
  return rc;
}

static int vit_forward(qt_vit_t *vit, const float *images, int staged, size_t batch, qt_err *err);

int qt_vit_forward(qt_vit_t *vit, const float *images, size_t batch, qt_err *err) {
  return vit_forward(vit, images, 0, batch, err);
}

int qt__vit_forward_staged(qt_vit_t *vit, const float *images, size_t batch, qt_err *err) {
  return vit_forward(vit, images, 1, batch, err);
}

/* The forward of images on the host, or (staged) already on the backend. */
static int vit_forward(qt_vit_t *vit, const float *images, int staged, size_t batch, qt_err *err) {
  if (!vit || !images) return qt_err_set(err, QT_EINVAL, "qt_vit_forward: NULL argument");
  if (batch < 1 || batch > vit->max_batch)
    return qt_err_set(err, QT_EINVAL, "qt_vit_forward: batch %zu is not in [1, %zu] (max_batch)",
                      batch, vit->max_batch);
  const qt__ops *ops = vit->ops;
  const qt_vit_config *cf = &vit->config;
  const vit_tensors *p = &vit->p;
  size_t B = batch, N = vit->patches, T = vit->tokens, BT = B * T;
  size_t C = (size_t)cf->width, H = (size_t)cf->heads, M = (size_t)cf->mlp_hidden;
  size_t K = (size_t)cf->num_classes, ps = (size_t)cf->patch_size, P = 3 * ps * ps;
  size_t S = (size_t)cf->image_size;
  vit->have_forward = vit->have_loss = 0;
  VIT_TRY(fit_arena(vit, err));
  /* The layout is max_batch's: a smaller batch keeps no more (the fused
   * kernels fit it wherever they fit max_batch), as this confirms. The
   * rest of the settings hold for an epoch (qt_run_epoch), as the
   * arena's. */
  vit->keep = keep_now(vit, B);
  size_t saved = ops->attention_saved_size ? ops->attention_saved_size(B, T, C, H) : B * H * T * T;
  if (saved > vit->mode.att || (vit->mode.keep & ~vit->keep) != 0)
    return qt_err_set(err, QT_EINVAL,
                      "qt_vit_forward: batch %zu takes an attention path that max_batch %zu does "
                      "not",
                      B, vit->max_batch);

  /* The images move to the backend once per batch (a staged batch is
   * there already). */
  const float *pixels = images;
  if (!ops->host_memory && !staged) {
    VIT_TRY(ops->upload(vit->images, images, B * 3 * S * S * sizeof *images, err));
    pixels = vit->images;
  }
  /* Patch embedding (a convolution with stride = kernel = patch) and the
   * token sequence. */
  VIT_TRY(ops->patchify(vit->patch_in, pixels, B, 3, S, ps, err));
  VIT_TRY(
      ops->linear_forward(vit->patch_emb, vit->patch_in, p->patch_w, p->patch_b, B * N, P, C, err));
  VIT_TRY(ops->tokens_forward(vit->resid0, vit->patch_emb, p->cls, p->pos, !cf->no_embed_class, B,
                              N, C, err));

  /* Each block's second layer norm, and the next block's first, come
   * with the residual add before them (residual_then_norm). */
  const float *x = vit->resid0;
  const call_sets sets = call_sets_of(vit);
  if (cf->depth > 0) {
    block_acts *a = &vit->acts[0];
    VIT_TRY(norm_op(vit, a->ln1, a->ln1_mean, a->ln1_rstd, x, p->blocks[0].norm1_w,
                    p->blocks[0].norm1_b, BT, C, sets.norm, err));
  }
  for (long l = 0; l < cf->depth; l++) {
    const block_tensors *w = &p->blocks[l];
    block_acts *a = &vit->acts[l];
    VIT_TRY(linear_op(vit, a->qkv, a->ln1, w->qkv_w, w->qkv_b, BT, C, 3 * C, sets.qkv, err));
    VIT_TRY(attention_op(vit, a->attn_y, a->att, a->qkv, B, T, C, H, sets.attention, err));
    VIT_TRY(linear_op(vit, a->attn_out, a->attn_y, w->proj_w, w->proj_b, BT, C, C, sets.proj, err));
    VIT_TRY(residual_then_norm(vit, a->resid_mid, x, a->attn_out, w->ls1, a->ln2, a->ln2_mean,
                               a->ln2_rstd, w->norm2_w, w->norm2_b, BT, C, sets.residual_norm,
                               err));
    VIT_TRY(linear_op(vit, a->fc1, a->ln2, w->fc1_w, w->fc1_b, BT, C, M, sets.fc1, err));
    VIT_TRY(gelu_op(vit, a->gelu, a->fc1, BT * M, sets.gelu, err));
    /* The last block's MLP output goes to the plain residual add, in FP32. */
    int last = l + 1 == cf->depth;
    VIT_TRY(linear_op(vit, a->mlp_out, a->gelu, w->fc2_w, w->fc2_b, BT, M, C,
                      last ? sets.fc2_last : sets.fc2, err));
    if (!last) {
      const block_tensors *next_w = &p->blocks[l + 1];
      block_acts *next = &vit->acts[l + 1];
      VIT_TRY(residual_then_norm(vit, a->resid_out, a->resid_mid, a->mlp_out, w->ls2, next->ln1,
                                 next->ln1_mean, next->ln1_rstd, next_w->norm1_w, next_w->norm1_b,
                                 BT, C, sets.residual_norm, err));
    } else {
      VIT_TRY(ops->residual_forward(a->resid_out, a->resid_mid, a->mlp_out, w->ls2, BT, C, err));
    }
    x = a->resid_out;
  }

  /* timm normalizes every token and pools the class token; the norm works
   * per row, so normalizing only the class tokens gives the same logits. */
  VIT_TRY(ops->copy_rows(vit->cls_rows, C, x, T * C, C, B, err));
  VIT_TRY(ops->layernorm_forward(vit->cls_norm, vit->cls_mean, vit->cls_rstd, vit->cls_rows,
                                 p->norm_w, p->norm_b, B, C, VIT_NORM_EPS, err));
  /* Head dropout: the normalized class tokens are scaled in place (the norm's
   * backward reads its input, not its output), so the head's backward sees
   * the dropped features. The mask is drawn on the host (the same draws on
   * every backend) and applied by the backend. The feature hook's features
   * are a host copy of the undropped ones. */
  if (vit->feat) VIT_TRY(ops->download(vit->feat, vit->cls_norm, B * C * sizeof *vit->feat, err));
  if (vit->hooks.dfeat) memset(vit->hooks.dfeat, 0, B * C * sizeof *vit->hooks.dfeat);
  if (qt__head_hooks_draw(&vit->hooks, B * C)) {
    const float *mask = vit->hooks.drop_mask;
    if (!ops->host_memory) {
      VIT_TRY(ops->upload(vit->drop_mask, mask, B * C * sizeof *mask, err));
      mask = vit->drop_mask;
    }
    VIT_TRY(ops->mul(vit->cls_norm, vit->cls_norm, mask, B * C, err));
  }
  VIT_TRY(ops->linear_forward(vit->logits, vit->cls_norm, p->head_w, p->head_b, B, C, K, err));
  if (vit->host_logits)
    VIT_TRY(ops->download(vit->host_logits, vit->logits, B * K * sizeof *vit->logits, err));
  vit->batch = B;
  vit->have_forward = 1;
  return 0;
}

const float *qt_vit_logits(const qt_vit_t *vit) {
  return vit->host_logits ? vit->host_logits : vit->logits;
}

/* ------------------------------------------------------------------------- */
/* Loss                                                                       */
/* ------------------------------------------------------------------------- */

int qt_vit_loss(qt_vit_t *vit, const int *labels, const float *soft_targets, double label_smoothing,
                double *loss, qt_err *err) {
  if (!vit) return qt_err_set(err, QT_EINVAL, "qt_vit_loss: NULL model");
  if (!vit->have_forward)
    return qt_err_set(err, QT_EINVAL, "qt_vit_loss: no forward pass to take the loss of");
  if (!labels && !soft_targets)
    return qt_err_set(err, QT_EINVAL, "qt_vit_loss: give labels or soft targets");
  if (!(label_smoothing >= 0.0 && label_smoothing < 1.0))
    return qt_err_set(err, QT_EINVAL, "qt_vit_loss: label smoothing %g is not in [0, 1)",
                      label_smoothing);
  const qt__ops *ops = vit->ops;
  size_t B = vit->batch, K = (size_t)vit->config.num_classes;
  if (labels) {
    for (size_t b = 0; b < B; b++) {
      if (labels[b] < 0 || (size_t)labels[b] >= K)
        return qt_err_set(err, QT_EINVAL, "qt_vit_loss: label %d of image %zu is not in [0, %zu)",
                          labels[b], b, K);
    }
    VIT_TRY(ops->upload(vit->labels, labels, B * sizeof *labels, err));
  } else {
    VIT_TRY(ops->upload(vit->targets, soft_targets, B * K * sizeof *soft_targets, err));
  }
  vit->soft = labels == NULL;
  vit->smoothing = (float)label_smoothing;
  VIT_TRY(ops->cross_entropy_forward(vit->losses, vit->probs, vit->logits,
                                     vit->soft ? NULL : vit->labels,
                                     vit->soft ? vit->targets : NULL, vit->smoothing, B, K, err));
  const float *losses = vit->losses;
  if (vit->host_losses) {
    VIT_TRY(ops->download(vit->host_losses, vit->losses, B * sizeof *vit->losses, err));
    losses = vit->host_losses;
  }
  double sum = 0.0;
  for (size_t b = 0; b < B; b++) sum += losses[b];
  if (loss) *loss = sum / (double)B;
  vit->have_loss = 1;
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Backward                                                                   */
/* ------------------------------------------------------------------------- */

void qt_vit_zero_grad(qt_vit_t *vit) {
  int rc = vit->ops->zero(vit->grads, vit->n_params * sizeof *vit->grads, &vit->zero_grad_err);
  if (rc < 0 && vit->zero_grad_rc == 0) vit->zero_grad_rc = rc;
}

/* The gradient reaching a residual branch, in *out: gamma * dout with layer
 * scale (dgamma accumulated on the way), else dout itself, without a copy. */
static int branch_grad(qt_vit_t *vit, const float *gamma, float *dgamma, const float *branch,
                       size_t n, size_t c, const float **out, qt_err *err) {
  *out = vit->dresid;
  if (!gamma) return 0;
  const qt__ops *ops = vit->ops;
  VIT_TRY(ops->zero(vit->dbranch, n * c * sizeof *vit->dbranch, err));
  VIT_TRY(
      ops->residual_backward(NULL, vit->dbranch, dgamma, vit->dresid, branch, gamma, n, c, err));
  *out = vit->dbranch;
  return 0;
}

int qt_vit_backward(qt_vit_t *vit, qt_err *err) {
  if (!vit) return qt_err_set(err, QT_EINVAL, "qt_vit_backward: NULL model");
  if (vit->zero_grad_rc < 0) {
    int rc = vit->zero_grad_rc;
    vit->zero_grad_rc = 0;
    return qt_err_set(err, rc, "qt_vit_zero_grad: %s", vit->zero_grad_err.msg);
  }
  if (!vit->have_loss)
    return qt_err_set(err, QT_EINVAL, "qt_vit_backward: no loss since the last forward pass");
  const qt__ops *ops = vit->ops;
  const qt_vit_config *cf = &vit->config;
  const vit_tensors *p = &vit->p;
  vit_tensors *g = &vit->g;
  size_t B = vit->batch, N = vit->patches, T = vit->tokens, BT = B * T;
  size_t C = (size_t)cf->width, H = (size_t)cf->heads, M = (size_t)cf->mlp_hidden;
  size_t K = (size_t)cf->num_classes, ps = (size_t)cf->patch_size, P = 3 * ps * ps;
  const size_t F = sizeof(float);

  /* The mean over the batch: every row's loss has weight 1 / B. */
  float dloss = 1.0f / (float)B;
  VIT_TRY(ops->upload(vit->dloss, &dloss, sizeof dloss, err));
  VIT_TRY(ops->zero(vit->dlogits, B * K * F, err));
  VIT_TRY(ops->cross_entropy_backward(vit->dlogits, vit->probs, vit->soft ? NULL : vit->labels,
                                      vit->soft ? vit->targets : NULL, vit->smoothing, vit->dloss,
                                      0, B, K, err));
  VIT_TRY(ops->linear_backward(vit->dcls_norm, g->head_w, g->head_b, vit->dlogits, vit->cls_norm,
                               p->head_w, B, C, K, 1, err));
  if (vit->hooks.dropped) {
    const float *mask = ops->host_memory ? vit->hooks.drop_mask : vit->drop_mask;
    VIT_TRY(ops->mul(vit->dcls_norm, vit->dcls_norm, mask, B * C, err));
  }
  /* The feature hook's gradient, on the undropped features. */
  if (vit->hooks.dfeat) {
    const float *dfeat = vit->hooks.dfeat;
    if (!ops->host_memory) {
      VIT_TRY(ops->upload(vit->dfeat, dfeat, B * C * sizeof *dfeat, err));
      dfeat = vit->dfeat;
    }
    /* dcls_norm += dfeat */
    VIT_TRY(ops->residual_backward(vit->dcls_norm, NULL, NULL, dfeat, NULL, NULL, B * C, 1, err));
  }
  VIT_TRY(ops->zero(vit->dcls_rows, B * C * F, err));
  VIT_TRY(ops->layernorm_backward(vit->dcls_rows, g->norm_w, g->norm_b, vit->dcls_norm,
                                  vit->cls_rows, p->norm_w, vit->cls_mean, vit->cls_rstd, B, C,
                                  err));
  /* Only the class tokens reach the head. */
  VIT_TRY(ops->zero(vit->dresid, BT * C * F, err));
  VIT_TRY(ops->copy_rows(vit->dresid, T * C, vit->dcls_rows, C, C, B, err));

  const call_sets sets = call_sets_of(vit);
  /* dresid holds the gradient of the residual stream: d(block output) on
   * entry to each block, d(block input) when it leaves. */
  for (long l = cf->depth - 1; l >= vit->backward_from; l--) {
    const block_tensors *w = &p->blocks[l];
    block_tensors *gw = &g->blocks[l];
    const block_acts *a = &vit->acts[l];
    const float *x_in = l > 0 ? vit->acts[l - 1].resid_out : vit->resid0;

    /* MLP branch. */
    const float *dmlp;
    VIT_TRY(branch_grad(vit, w->ls2, gw->ls2, a->mlp_out, BT, C, &dmlp, err));
    VIT_TRY(linear_backward_op(vit, vit->dgelu, gw->fc2_w, gw->fc2_b, dmlp, a->gelu, w->fc2_w, BT,
                               M, C, sets.fc2_back, err));
    VIT_TRY(gelu_linear_backward_op(vit, vit->dln, gw->fc1_w, gw->fc1_b, vit->dfc1, vit->dgelu,
                                    a->fc1, a->ln2, w->fc1_w, BT, C, M, sets.fc1_back, err));
    VIT_TRY(norm_backward_op(vit, vit->dresid, gw->norm2_w, gw->norm2_b, vit->dln, a->resid_mid,
                             w->norm2_w, a->ln2_mean, a->ln2_rstd, BT, C, sets.norm_back, err));

    /* Attention branch. */
    const float *dattn;
    VIT_TRY(branch_grad(vit, w->ls1, gw->ls1, a->attn_out, BT, C, &dattn, err));
    VIT_TRY(linear_backward_op(vit, vit->dattn_y, gw->proj_w, gw->proj_b, dattn, a->attn_y,
                               w->proj_w, BT, C, C, sets.proj_back, err));
    VIT_TRY(attention_backward_op(vit, vit->dqkv, vit->datt, vit->dattn_y, a->qkv, a->att,
                                  a->attn_y, B, T, C, H, sets.attention_back, err));
    VIT_TRY(linear_backward_op(vit, vit->dln, gw->qkv_w, gw->qkv_b, vit->dqkv, a->ln1, w->qkv_w, BT,
                               C, 3 * C, sets.qkv_back, err));
    VIT_TRY(norm_backward_op(vit, vit->dresid, gw->norm1_w, gw->norm1_b, vit->dln, x_in, w->norm1_w,
                             a->ln1_mean, a->ln1_rstd, BT, C, sets.norm_back, err));
  }

  /* Frozen blocks and stem below backward_from need no gradients. */
  if (vit->backward_from > 0) return 0;
  VIT_TRY(ops->zero(vit->dpatch_emb, B * N * C * F, err));
  VIT_TRY(ops->tokens_backward(vit->dpatch_emb, g->cls, g->pos, vit->dresid, !cf->no_embed_class, B,
                               N, C, err));
  VIT_TRY(ops->linear_backward(NULL, g->patch_w, g->patch_b, vit->dpatch_emb, vit->patch_in,
                               p->patch_w, B * N, P, C, 0, err));
  return 0;
}

int qt_vit_set_head_dropout(qt_vit_t *vit, double rate, qt_rng_t *rng, qt_err *err) {
  if (!vit) return qt_err_set(err, QT_EINVAL, "qt_vit_set_head_dropout: NULL model");
  return qt__head_hooks_set_dropout(&vit->hooks, vit->max_batch * (size_t)vit->config.width, rate,
                                    rng, "ViT", err);
}

int qt_vit_set_feature_hook(qt_vit_t *vit, int on, qt_err *err) {
  if (!vit) return qt_err_set(err, QT_EINVAL, "qt_vit_set_feature_hook: NULL model");
  size_t n = vit->max_batch * (size_t)vit->config.width;
  if (on && !vit->feat && !(vit->feat = calloc(n, sizeof *vit->feat)))
    return qt_err_set(err, QT_ENOMEM, "ViT: out of memory for the feature hook");
  int rc = qt__head_hooks_set_feature_grad(&vit->hooks, n, on, "ViT", err);
  if (!on || rc < 0) {
    free(vit->feat);
    vit->feat = NULL;
  }
  return rc;
}

const float *qt_vit_features(const qt_vit_t *vit, size_t *batch) {
  if (!vit || !vit->feat || !vit->have_forward) return NULL;
  if (batch) *batch = vit->batch;
  return vit->feat;
}

float *qt_vit_feature_grad(qt_vit_t *vit) {
  return vit ? vit->hooks.dfeat : NULL;
}

void qt_vit_set_backward_from(qt_vit_t *vit, long first_block) {
  if (!vit) return;
  if (first_block < 0) first_block = 0;
  if (first_block > vit->config.depth) first_block = vit->config.depth;
  vit->backward_from = first_block;
}

/* ------------------------------------------------------------------------- */
/* Optimizer step and saving                                                  */
/* ------------------------------------------------------------------------- */

int qt_vit_adamw_step(qt_vit_t *vit, const qt_adamw_params *hp, qt_err *err) {
  if (!vit) return qt_err_set(err, QT_EINVAL, "qt_vit_adamw_step: NULL model");
  /* Check the hyperparameters once, so that a bad value changes nothing. */
  int rc = qt__adamw_prepare("qt_vit_adamw_step", NULL, NULL, NULL, NULL, 0, hp, vit->step + 1,
                             NULL, err);
  if (rc < 0) return rc;
  long step = vit->step + 1;
  /* A run's AdamW (qt_optim_tensor_step, on the CPU the same float
   * expressions as qt_cpu_adamw_step), every tensor in one call. */
  qt_optim_params p = qt__optim_params_adamw(hp);
  for (size_t i = 0; i < vit->n_entries; i++) {
    const tensor_entry *e = &vit->entries[i];
    size_t o = e->offset;
    vit->slices[i] = (qt__optim_slice){vit->params + o, vit->grads + o, vit->m + o, vit->v + o,
                                       e->numel,        hp->lr,         step,       e->decay};
  }
  /* The arguments were checked above; a device can still fail. The step
   * counter then stays, and the run fails. */
  rc = vit->ops->optim_steps(&p, vit->slices, vit->n_entries, err);
  if (rc < 0) return rc;
  vit->step = step;
  return 0;
}

int qt_vit_save(const qt_vit_t *vit, const char *path, qt_err *err) {
  if (!vit || !path) return qt_err_set(err, QT_EINVAL, "qt_vit_save: NULL argument");
  /* Off the CPU, the values are written from a host copy. */
  float *values = vit->params;
  if (!vit->ops->host_memory) {
    if (!(values = malloc(vit->n_params * sizeof *values)))
      return qt_err_set(err, QT_ENOMEM, "qt_vit_save: out of memory for a host copy");
    int rc = vit->ops->download(values, vit->params, vit->n_params * sizeof *values, err);
    if (rc < 0) {
      free(values);
      return rc;
    }
  }
  qt_safetensors_tensor *tensors = calloc(vit->n_entries, sizeof *tensors);
  if (!tensors) {
    if (values != vit->params) free(values);
    return qt_err_set(err, QT_ENOMEM, "qt_vit_save: out of memory");
  }
  for (size_t i = 0; i < vit->n_entries; i++) {
    const tensor_entry *e = &vit->entries[i];
    tensors[i].name = e->name;
    tensors[i].dtype = QT_DTYPE_F32;
    tensors[i].ndim = e->ndim;
    tensors[i].shape = e->shape;
    tensors[i].data = values + e->offset;
  }
  const qt_safetensors_pair metadata[] = {{"format", "pt"}};
  int rc = qt_safetensors_write(path, tensors, vit->n_entries, metadata, 1, err);
  free(tensors);
  if (values != vit->params) free(values);
  return rc;
}

/* ------------------------------------------------------------------------- */
/* Moving between backends                                                    */
/* ------------------------------------------------------------------------- */

int qt__vit_set_ops(qt_vit_t *vit, const qt__ops *ops, qt_err *err) {
  if (!vit || !ops) return qt_err_set(err, QT_EINVAL, "qt_vit_to_backend: NULL argument");
  const qt__ops *from = vit->ops;
  if (ops == from) return 0;

  /* Everything is allocated and copied before anything is released, so a
   * failure (out of device memory, most likely) leaves the model as it was. */
  size_t bytes = vit->n_params * sizeof(float);
  float *const old[4] = {vit->params, vit->grads, vit->m, vit->v};
  float *fresh[4] = {NULL, NULL, NULL, NULL};
  float *arena = NULL, *host_logits = NULL, *host_losses = NULL;
  int *labels = NULL;
  const arena_mode mode = vit->mode;
  vit->ops = ops;
  vit->mode = arena_mode_now(vit);
  size_t arena_floats = layout_arena(vit, NULL);
  int rc = 0;
  for (int k = 0; k < 4 && rc == 0; k++) rc = ops->alloc((void **)&fresh[k], bytes, err);
  if (rc == 0) rc = ops->alloc((void **)&arena, arena_floats * sizeof(float), err);
  if (rc == 0) rc = ops->alloc((void **)&labels, vit->max_batch * sizeof(int), err);
  if (rc == 0 && !ops->host_memory) {
    size_t K = (size_t)vit->config.num_classes;
    host_logits = malloc(vit->max_batch * K * sizeof *host_logits);
    host_losses = malloc(vit->max_batch * sizeof *host_losses);
    if (!host_logits || !host_losses)
      rc = qt_err_set(err, QT_ENOMEM, "ViT: out of host memory for the logits' copy");
  }
  if (rc == 0)
    rc = qt__ops_move_arrays(from, ops, (void *const *)fresh, (const void *const *)old, 4, bytes,
                             "ViT", err);
  if (rc < 0) {
    for (int k = 0; k < 4; k++) ops->release(fresh[k]);
    ops->release(arena);
    ops->release(labels);
    free(host_logits);
    free(host_losses);
    vit->ops = from;
    vit->mode = mode;
    layout_arena(vit, vit->arena);
    return rc;
  }

  for (int k = 0; k < 4; k++) from->release(old[k]);
  from->release(vit->arena);
  from->release(vit->labels);
  free(vit->host_logits);
  free(vit->host_losses);
  vit->params = fresh[0];
  vit->grads = fresh[1];
  vit->m = fresh[2];
  vit->v = fresh[3];
  vit->arena = arena;
  vit->arena_floats = arena_floats;
  vit->labels = labels;
  vit->host_logits = host_logits;
  vit->host_losses = host_losses;
  point_tensors(vit);
  layout_arena(vit, arena);
  vit->have_forward = vit->have_loss = 0;
  return 0;
}

int qt_vit_to_backend(qt_vit_t *vit, qt_backend_kind kind, qt_err *err) {
  if (!vit) return qt_err_set(err, QT_EINVAL, "qt_vit_to_backend: NULL model");
  int rc = qt_backend_kind_check(kind, err);
  if (rc < 0) return rc;
  return qt__vit_set_ops(vit, qt__ops_for(kind), err);
}

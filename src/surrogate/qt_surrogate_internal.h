/*
 * qt_surrogate_internal.h - what the files of surrogate/ share, and what the
 * gradient tests reach into: the feature-extractor network (qt__net) that
 * both the deep-kernel GP and the cost predictor are built from, the Adam
 * state, and the loss-and-gradient entry points of both models with an
 * explicit dropout mask.
 *
 * The network (specs §1.3 and §1.6) reads one row of qt_rows and produces
 * one output vector:
 *
 *   encoders   0: x enters the trunk as it is (cost predictor);
 *              1: E(x) over all of x;
 *              2: E0(x[model block]) and E1(x without it) (deep-kernel GP),
 *              each E = Linear(in -> H) -> ReLU -> Linear(H -> H);
 *   meta       Linear(meta_dim -> meta_out), no activation (absent when
 *              meta_dim is 0);
 *   curve      Conv1d(1 -> 8, k 3, 'same') -> ReLU -> Conv1d(8 -> 8, k 3,
 *              'same') -> MaxPool1d(2) -> Dropout1d(p) -> flatten -> ReLU ->
 *              Linear(8 * (curve_len / 2) -> curve_out) -> ReLU;
 *   trunk      z = [encoder outputs (or x), budget, meta, curve], then the
 *              head: a short list of Linear layers, each followed by its own
 *              activation (none, ReLU or LeakyReLU with slope 0.01).
 *
 * Parameters are one flat vector of doubles (llm.c style): every weight and
 * bias is a slice at a fixed offset, listed in net->tensors in the order of
 * the vector, so that get/set, Adam and files treat them as one array, and
 * gradients are a second array with the same layout. Linear weights are
 * (out, in) row-major as in PyTorch, convolution weights (out, in, kernel).
 *
 * The workspace holds every activation of the last forward pass (backward
 * needs them) for up to `capacity` rows; it grows only when a batch is
 * larger than any before, so a training loop on batches of one size
 * allocates nothing per step.
 *
 * Dropout. A mask (rows, 8) holds, per row and channel, 0 (dropped) or
 * 1 / (1 - p) (kept). Forward passes take the mask as an argument: NULL is
 * eval mode (no dropout). Training draws a fresh mask per step into
 * net->mask; the gradient tests draw one and reuse it, so that the loss is a
 * deterministic, piecewise smooth function of the parameters.
 */
#ifndef QT_SURROGATE_INTERNAL_H
#define QT_SURROGATE_INTERNAL_H

#include "surrogate/qt_surrogate.h"

/* The curve encoder's fixed shape (Quick-Tune's ConvNet). */
#define QT__CONV_CHANNELS 8
#define QT__CONV_KERNEL 3
/* torch.nn.LeakyReLU's default negative slope, which Quick-Tune uses. */
#define QT__LEAKY_SLOPE 0.01
/* Most Linear layers in a head (the cost predictor has three). */
#define QT__MAX_HEAD 3
/* Most parameter tensors of one network (2 encoders x 2 layers x 2, meta 2,
 * convolutions 4, curve Linear 2, head 3 x 2 = 22; one more for the GP). */
#define QT__MAX_TENSORS 24
/* The cost predictor learns seconds / QT__COST_SCALE (Quick-Tune's /100). */
#define QT__COST_SCALE 100.0

typedef enum qt__activation {
  QT__ACT_NONE = 0,
  QT__ACT_RELU = 1,
  QT__ACT_LEAKY_RELU = 2
} qt__activation;

/* One named slice of the flat parameter vector. */
typedef struct qt__tensor {
  const char *name; /* "encoder0.fc1.weight", "conv2.bias", "gp.raw_hypers", ... */
  size_t offset;    /* first entry in the flat vector */
  size_t size;      /* number of entries */
} qt__tensor;

/* A Linear layer y = x W^T + b: where its W (out, in) and b (out) live. */
typedef struct qt__linear {
  size_t in, out;
  size_t weight; /* offset of W */
  size_t bias;   /* offset of b */
} qt__linear;

typedef struct qt__net_shape {
  size_t hp_dim;
  size_t encoders;               /* 0, 1 or 2 (see the top of this file) */
  size_t model_begin, model_end; /* the model block, for 2 encoders */
  size_t encoder_dim;            /* hidden and output width of each encoder */
  size_t curve_len, curve_out;
  size_t meta_dim, meta_out;
  double dropout; /* in [0, 1) */
  size_t head_count;
  size_t head_out[QT__MAX_HEAD];
  qt__activation head_act[QT__MAX_HEAD];
} qt__net_shape;

typedef struct qt__net {
  qt__net_shape shape;

  /* Layout of the parameter vector. */
  size_t encoder_in[2];     /* input widths of the encoders */
  qt__linear encoder[2][2]; /* [encoder][fc1, fc2] */
  qt__linear meta;          /* unused when meta_dim is 0 */
  size_t conv1_weight;      /* (8, 1, 3) */
  size_t conv1_bias;        /* (8) */
  size_t conv2_weight;      /* (8, 8, 3) */
  size_t conv2_bias;        /* (8) */
  size_t pooled_len;        /* P = curve_len / 2 */
  qt__linear curve_fc;      /* (curve_out, 8 P) */
  qt__linear head[QT__MAX_HEAD];
  size_t z_dim;                     /* trunk input width */
  size_t z_budget, z_meta, z_curve; /* column offsets in z */
  size_t out_dim;                   /* width of the last head layer */
  size_t param_count;
  qt__tensor tensors[QT__MAX_TENSORS];
  size_t tensor_count;

  /* Workspace for `capacity` rows. */
  size_t capacity;
  double *x_ordered;              /* (capacity, hp_dim) x with the model block first */
  double *encoder_hidden[2];      /* (capacity, encoder_dim) ReLU(fc1) of each encoder */
  double *conv1_out;              /* (capacity, 8, curve_len) ReLU(conv1) */
  double *conv2_out;              /* (capacity, 8, curve_len) conv2, no activation */
  size_t *pool_index;             /* (capacity, 8, P) position in curve_len of each maximum */
  double *mask;                   /* (capacity, 8) dropout multipliers of the last training step */
  double *flat;                   /* (capacity, 8 P) ReLU(dropout(pool)) */
  double *z;                      /* (capacity, z_dim) trunk input */
  double *head_out[QT__MAX_HEAD]; /* (capacity, head_out[l]) after each activation */
  double *grad_out;               /* (capacity, out_dim) dL/d(output), filled by the caller */
  double *grad_head_in[QT__MAX_HEAD]; /* (capacity, in of layer l); [0] is dL/dz */
  double *grad_encoder;               /* (capacity, encoder_dim) */
  double *grad_flat;                  /* (capacity, 8 P) */
  double *grad_conv2;                 /* (capacity, 8, curve_len) */
  double *grad_conv1;                 /* (capacity, 8, curve_len) */
} qt__net;

/* Lays the network out (no workspace yet). QT_EINVAL for impossible shapes. */
int qt__net_init(qt__net *net, const qt__net_shape *shape, qt_err *err);
void qt__net_free(qt__net *net);
/* Grows the workspace to n rows (never shrinks). */
int qt__net_reserve(qt__net *net, size_t n, qt_err *err);
/* PyTorch's default initialization: every weight and bias of a layer with
 * fan-in f uniform in (-1/sqrt(f), 1/sqrt(f)), drawn tensor by tensor. */
void qt__net_init_params(const qt__net *net, double *params, qt_rng_t *rng);
/* Draws a dropout mask for n rows into mask (n, 8). */
void qt__net_draw_mask(const qt__net *net, size_t n, qt_rng_t *rng, double *mask);
/* The forward pass on rows->n rows (reserved before): returns the output
 * (n, out_dim), a pointer into the workspace valid until the next pass.
 * mask (n, 8) applies dropout; NULL is eval mode. */
const double *qt__net_forward(qt__net *net, const double *params, const qt_rows *rows,
                              const double *mask);
/* The backward pass of the last forward pass (same rows, params and mask):
 * reads dL/d(output) from net->grad_out and ADDS dL/d(params) to grad. */
void qt__net_backward(qt__net *net, const double *params, const qt_rows *rows, const double *mask,
                      double *grad);

/* ------------------------------------------------------------------------- */
/* Adam (torch.optim.Adam: betas 0.9 / 0.999, eps 1e-8, no weight decay)     */
/* ------------------------------------------------------------------------- */

typedef struct qt__adam {
  size_t count;
  double *m; /* (count) first moments */
  double *v; /* (count) second moments */
  long step; /* steps taken since the last reset */
} qt__adam;

int qt__adam_init(qt__adam *adam, size_t count, qt_err *err);
void qt__adam_free(qt__adam *adam);
void qt__adam_reset(qt__adam *adam);
/* One step: params -= lr * mhat / (sqrt(vhat) + eps). Returns 0, or
 * QT_ENUMERIC (params unchanged) when the gradient is not finite. */
int qt__adam_step(qt__adam *adam, double *params, const double *grad, double lr);

/* ------------------------------------------------------------------------- */
/* Models: loss, gradient and training steps with explicit state             */
/* ------------------------------------------------------------------------- */

/* Checks that rows fit config: pointers present (y when need_y, cost when
 * need_cost, meta when meta_dim > 0) and every number finite. */
int qt__rows_check(const qt_rows *rows, const qt_dkl_config *config, int need_y, int need_cost,
                   const char *caller, qt_err *err);
/* The net shapes of the two models for a configuration. */
qt__net_shape qt__dkl_shape(const qt_dkl_config *config);
qt__net_shape qt__costnet_shape(const qt_dkl_config *config);
int qt__dkl_config_check(const qt_dkl_config *config, const char *caller, qt_err *err);

/* The deep-kernel GP's -MLL/n on rows (with y) and, when grad is not NULL,
 * its gradient (qt_dkl_param_count) at the current parameters. mask (n, 8)
 * or NULL for eval mode. */
int qt__dkl_objective(qt_dkl_t *dkl, const qt_rows *rows, const double *mask, double *loss,
                      double *grad, qt_err *err);
/* The extractor's output phi (n, output_dim) for rows; mask as above. */
int qt__dkl_features(qt_dkl_t *dkl, const qt_rows *rows, const double *mask, double *phi,
                     qt_err *err);
/* The parameter tensors of the DKL: the network's, then "gp.raw_hypers". */
const qt__tensor *qt__dkl_tensors(const qt_dkl_t *dkl, size_t *count);
/* One Adam step that continues the DKL's Adam state (qt_dkl_train resets it
 * on every call; meta-training keeps it across iterations). A fresh dropout
 * mask comes from rng. On failure the parameters are unchanged. */
int qt__dkl_train_step(qt_dkl_t *dkl, const qt_rows *rows, double lr, qt_rng_t *rng, double *loss,
                       qt_err *err);
void qt__dkl_adam_reset(qt_dkl_t *dkl);

/* The cost predictor's MSE on cost / 100 and its gradient, as above. */
int qt__costnet_objective(qt_costnet_t *net, const qt_rows *rows, const double *mask, double *loss,
                          double *grad, qt_err *err);
const qt__tensor *qt__costnet_tensors(const qt_costnet_t *net, size_t *count);
int qt__costnet_train_step(qt_costnet_t *net, const qt_rows *rows, double lr, qt_rng_t *rng,
                           double *loss, qt_err *err);
void qt__costnet_adam_reset(qt_costnet_t *net);

/* Prefixes err with context and makes its code QT_ENUMERIC: for failures
 * whose cause is the parameters (non-finite features), not the input. */
int qt__numeric_failure(qt_err *err, const char *context);

/* A view of rows [begin, begin + count) of rows. */
qt_rows qt__rows_slice(const qt_rows *rows, const qt_dkl_config *config, size_t begin,
                       size_t count);

#endif /* QT_SURROGATE_INTERNAL_H */

/*
 * qt_surrogate_net.c - the feature-extractor network of the deep-kernel GP
 * and the cost predictor (specs §1.3, §1.6): layout of the flat parameter
 * vector, PyTorch's initialization, the forward pass, the hand-written
 * backward pass, and Adam. qt_surrogate_internal.h describes the network.
 *
 * Everything is double precision and batched over rows. Linear layers run on
 * BLAS (y = x W^T + b as one dgemm); the two small convolutions, the pooling
 * and the activations are plain loops in the order of the formulas.
 */
#include "surrogate/qt_surrogate_internal.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Shape letters of the formulas and loops below (llm.c style): C channels
 * and K kernel width of the convolutions, L the curve length, P = L / 2 the
 * pooled length, H the encoders' width. */
#define C QT__CONV_CHANNELS
#define K QT__CONV_KERNEL

/* ------------------------------------------------------------------------- */
/* Layout                                                                     */
/* ------------------------------------------------------------------------- */

/* Appends a tensor of `size` entries to the layout and returns its offset. */
static size_t add_tensor(qt__net *net, const char *name, size_t size) {
  QT_ASSERT(net->tensor_count < QT__MAX_TENSORS);
  size_t offset = net->param_count;
  net->tensors[net->tensor_count].name = name;
  net->tensors[net->tensor_count].offset = offset;
  net->tensors[net->tensor_count].size = size;
  net->tensor_count++;
  net->param_count += size;
  return offset;
}

static qt__linear add_linear(qt__net *net, const char *weight_name, const char *bias_name,
                             size_t in, size_t out) {
  qt__linear layer;
  layer.in = in;
  layer.out = out;
  layer.weight = add_tensor(net, weight_name, out * in);
  layer.bias = add_tensor(net, bias_name, out);
  return layer;
}

int qt__net_init(qt__net *net, const qt__net_shape *shape, qt_err *err) {
  memset(net, 0, sizeof *net);
  net->shape = *shape;
  const qt__net_shape *s = shape;
  if (s->hp_dim == 0 || s->curve_len < 2 || s->curve_out == 0 || s->encoder_dim == 0 ||
      s->head_count == 0 || s->head_count > QT__MAX_HEAD || s->encoders > 2 ||
      (s->meta_dim > 0 && s->meta_out == 0) || !(s->dropout >= 0.0 && s->dropout < 1.0)) {
    return qt_err_set(err, QT_EINVAL,
                      "surrogate network: impossible shape (hp_dim %zu, curve_len %zu (>= 2), "
                      "curve_out %zu, meta %zu -> %zu, dropout %g in [0, 1))",
                      s->hp_dim, s->curve_len, s->curve_out, s->meta_dim, s->meta_out, s->dropout);
  }
  for (size_t l = 0; l < s->head_count; l++) {
    if (s->head_out[l] == 0)
      return qt_err_set(err, QT_EINVAL, "surrogate network: head layer %zu has width 0", l);
  }

  /* The encoders and what enters the trunk in their place. */
  size_t z = 0;
  if (s->encoders == 2) {
    if (!(s->model_begin < s->model_end && s->model_end <= s->hp_dim) ||
        s->model_end - s->model_begin == s->hp_dim) {
      return qt_err_set(err, QT_EINVAL,
                        "surrogate network: model block [%zu, %zu) must be a non-empty part of "
                        "the %zu encoded columns (an empty block means one encoder)",
                        s->model_begin, s->model_end, s->hp_dim);
    }
    net->encoder_in[0] = s->model_end - s->model_begin;
    net->encoder_in[1] = s->hp_dim - net->encoder_in[0];
  } else {
    net->encoder_in[0] = s->hp_dim;
  }
  static const char *const names[2][4] = {
      {"encoder0.fc1.weight", "encoder0.fc1.bias", "encoder0.fc2.weight", "encoder0.fc2.bias"},
      {"encoder1.fc1.weight", "encoder1.fc1.bias", "encoder1.fc2.weight", "encoder1.fc2.bias"}};
  for (size_t e = 0; e < s->encoders; e++) {
    net->encoder[e][0] =
        add_linear(net, names[e][0], names[e][1], net->encoder_in[e], s->encoder_dim);
    net->encoder[e][1] = add_linear(net, names[e][2], names[e][3], s->encoder_dim, s->encoder_dim);
    z += s->encoder_dim;
  }
  if (s->encoders == 0) z = s->hp_dim;
  net->z_budget = z;
  z += 1;

  net->z_meta = z;
  if (s->meta_dim > 0) {
    net->meta = add_linear(net, "meta.weight", "meta.bias", s->meta_dim, s->meta_out);
    z += s->meta_out;
  }

  net->pooled_len = s->curve_len / 2;
  net->conv1_weight = add_tensor(net, "conv1.weight", C * 1 * K);
  net->conv1_bias = add_tensor(net, "conv1.bias", C);
  net->conv2_weight = add_tensor(net, "conv2.weight", C * C * K);
  net->conv2_bias = add_tensor(net, "conv2.bias", C);
  net->curve_fc =
      add_linear(net, "curve_fc.weight", "curve_fc.bias", C * net->pooled_len, s->curve_out);
  net->z_curve = z;
  z += s->curve_out;
  net->z_dim = z;

  static const char *const head_names[QT__MAX_HEAD][2] = {{"head0.weight", "head0.bias"},
                                                          {"head1.weight", "head1.bias"},
                                                          {"head2.weight", "head2.bias"}};
  size_t in = net->z_dim;
  for (size_t l = 0; l < s->head_count; l++) {
    net->head[l] = add_linear(net, head_names[l][0], head_names[l][1], in, s->head_out[l]);
    in = s->head_out[l];
  }
  net->out_dim = in;
  return 0;
}

void qt__net_free(qt__net *net) {
  if (!net) return;
  free(net->x_ordered);
  for (int e = 0; e < 2; e++) free(net->encoder_hidden[e]);
  free(net->conv1_out);
  free(net->conv2_out);
  free(net->pool_index);
  free(net->mask);
  free(net->flat);
  free(net->z);
  for (int l = 0; l < QT__MAX_HEAD; l++) {
    free(net->head_out[l]);
    free(net->grad_head_in[l]);
  }
  free(net->grad_out);
  free(net->grad_encoder);
  free(net->grad_flat);
  free(net->grad_conv2);
  free(net->grad_conv1);
  net->capacity = 0;
}

/* Grows one buffer to count elements of `size` bytes; the old one stays
 * valid on failure. */
static int grow(void **buffer, size_t count, size_t size) {
  if (count == 0) count = 1;
  void *grown = realloc(*buffer, count * size);
  if (!grown) return QT_ENOMEM;
  *buffer = grown;
  return 0;
}

#define GROW(ptr, count) grow((void **)&(ptr), (count), sizeof *(ptr))

int qt__net_reserve(qt__net *net, size_t n, qt_err *err) {
  if (n <= net->capacity) return 0;
  const qt__net_shape *s = &net->shape;
  size_t cap = net->capacity + net->capacity / 4;
  if (cap < n) cap = n;
  size_t L = s->curve_len, P = net->pooled_len, H = s->encoder_dim;
  int failed = GROW(net->x_ordered, cap * s->hp_dim) || GROW(net->conv1_out, cap * C * L) ||
               GROW(net->conv2_out, cap * C * L) || GROW(net->pool_index, cap * C * P) ||
               GROW(net->mask, cap * C) || GROW(net->flat, cap * C * P) ||
               GROW(net->z, cap * net->z_dim) || GROW(net->grad_out, cap * net->out_dim) ||
               GROW(net->grad_encoder, cap * H) || GROW(net->grad_flat, cap * C * P) ||
               GROW(net->grad_conv2, cap * C * L) || GROW(net->grad_conv1, cap * C * L);
  for (size_t e = 0; !failed && e < s->encoders; e++)
    failed = GROW(net->encoder_hidden[e], cap * H);
  for (size_t l = 0; !failed && l < s->head_count; l++) {
    failed = GROW(net->head_out[l], cap * net->head[l].out) ||
             GROW(net->grad_head_in[l], cap * net->head[l].in);
  }
  if (failed)
    return qt_err_set(err, QT_ENOMEM, "surrogate network: out of memory for %zu rows", cap);
  net->capacity = cap;
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Initialization and dropout masks                                           */
/* ------------------------------------------------------------------------- */

static void fill_uniform(double *values, size_t count, double bound, qt_rng_t *rng) {
  for (size_t i = 0; i < count; i++) values[i] = bound * (2.0 * qt_rng_uniform(rng) - 1.0);
}

static void init_linear(const qt__linear *layer, double *params, qt_rng_t *rng) {
  double bound = 1.0 / sqrt((double)layer->in);
  fill_uniform(params + layer->weight, layer->out * layer->in, bound, rng);
  fill_uniform(params + layer->bias, layer->out, bound, rng);
}

void qt__net_init_params(const qt__net *net, double *params, qt_rng_t *rng) {
  for (size_t e = 0; e < net->shape.encoders; e++) {
    init_linear(&net->encoder[e][0], params, rng);
    init_linear(&net->encoder[e][1], params, rng);
  }
  if (net->shape.meta_dim > 0) init_linear(&net->meta, params, rng);
  /* Conv1d's fan-in is in_channels * kernel_size. */
  double bound1 = 1.0 / sqrt(1.0 * K), bound2 = 1.0 / sqrt((double)(C * K));
  fill_uniform(params + net->conv1_weight, C * K, bound1, rng);
  fill_uniform(params + net->conv1_bias, C, bound1, rng);
  fill_uniform(params + net->conv2_weight, C * C * K, bound2, rng);
  fill_uniform(params + net->conv2_bias, C, bound2, rng);
  init_linear(&net->curve_fc, params, rng);
  for (size_t l = 0; l < net->shape.head_count; l++) init_linear(&net->head[l], params, rng);
}

/* Dropout1d: each (row, channel) is dropped with probability p; kept ones
 * are scaled by 1 / (1 - p) so that the expected value is unchanged. */
void qt__net_draw_mask(const qt__net *net, size_t n, qt_rng_t *rng, double *mask) {
  double p = net->shape.dropout;
  double keep = 1.0 / (1.0 - p);
  for (size_t i = 0; i < n * C; i++) mask[i] = (p > 0.0 && qt_rng_uniform(rng) < p) ? 0.0 : keep;
}

/* ------------------------------------------------------------------------- */
/* Building blocks                                                            */
/* ------------------------------------------------------------------------- */

/* y (n, out; leading dimension ldy) = x (n, in; ldx) W^T + b. */
static void linear_forward(const qt__linear *layer, const double *params, const double *x,
                           size_t ldx, size_t n, double *y, size_t ldy) {
  const double *W = params + layer->weight; /* (out, in) */
  const double *b = params + layer->bias;   /* (out) */
  for (size_t i = 0; i < n; i++) memcpy(y + i * ldy, b, layer->out * sizeof *y);
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)layer->out, (int)layer->in, 1.0,
              x, (int)ldx, W, (int)layer->in, 1.0, y, (int)ldy);
}

/* Given dy (n, out; lddy): adds dW += dy^T x and db += sum of dy's rows to
 * grad, and writes dx (n, in; lddx) = dy W when dx is not NULL. */
static void linear_backward(const qt__linear *layer, const double *params, double *grad,
                            const double *x, size_t ldx, size_t n, const double *dy, size_t lddy,
                            double *dx, size_t lddx) {
  cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)layer->out, (int)layer->in, (int)n, 1.0,
              dy, (int)lddy, x, (int)ldx, 1.0, grad + layer->weight, (int)layer->in);
  double *db = grad + layer->bias;
  for (size_t i = 0; i < n; i++) {
    for (size_t o = 0; o < layer->out; o++) db[o] += dy[i * lddy + o];
  }
  if (dx) {
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)layer->in, (int)layer->out,
                1.0, dy, (int)lddy, params + layer->weight, (int)layer->in, 0.0, dx, (int)lddx);
  }
}

static double activate(qt__activation act, double x) {
  switch (act) {
    case QT__ACT_RELU:
      return x > 0.0 ? x : 0.0;
    case QT__ACT_LEAKY_RELU:
      return x > 0.0 ? x : QT__LEAKY_SLOPE * x;
    case QT__ACT_NONE:
      break;
  }
  return x;
}

/* The activation's slope, read from its output: both rectifiers keep the
 * sign of their input, so output > 0 exactly when input > 0 (at 0 the slope
 * is torch's: 0 for ReLU, the negative slope for LeakyReLU). */
static double activate_slope(qt__activation act, double y) {
  switch (act) {
    case QT__ACT_RELU:
      return y > 0.0 ? 1.0 : 0.0;
    case QT__ACT_LEAKY_RELU:
      return y > 0.0 ? 1.0 : QT__LEAKY_SLOPE;
    case QT__ACT_NONE:
      break;
  }
  return 1.0;
}

static void activate_block(qt__activation act, double *y, size_t n, size_t width, size_t ld) {
  if (act == QT__ACT_NONE) return;
  for (size_t i = 0; i < n; i++) {
    for (size_t j = 0; j < width; j++) y[i * ld + j] = activate(act, y[i * ld + j]);
  }
}

/* dy *= slope of the activation at its output y, in place. */
static void activate_backward(qt__activation act, const double *y, size_t ldy, double *dy,
                              size_t lddy, size_t n, size_t width) {
  if (act == QT__ACT_NONE) return;
  for (size_t i = 0; i < n; i++) {
    for (size_t j = 0; j < width; j++) dy[i * lddy + j] *= activate_slope(act, y[i * ldy + j]);
  }
}

/* ------------------------------------------------------------------------- */
/* Forward                                                                    */
/* ------------------------------------------------------------------------- */

/* x_ordered = x with the model block first: [x[mb:me], x[:mb], x[me:]]. */
static void order_columns(const qt__net *net, const double *x, size_t n) {
  const qt__net_shape *s = &net->shape;
  size_t d = s->hp_dim;
  for (size_t i = 0; i < n; i++) {
    const double *row = x + i * d;
    double *out = net->x_ordered + i * d;
    if (s->encoders == 2) {
      size_t width = s->model_end - s->model_begin;
      memcpy(out, row + s->model_begin, width * sizeof *out);
      memcpy(out + width, row, s->model_begin * sizeof *out);
      memcpy(out + width + s->model_begin, row + s->model_end, (d - s->model_end) * sizeof *out);
    } else {
      memcpy(out, row, d * sizeof *out);
    }
  }
}

/* out[t] += sum_k w[k] in[t + k - 1] over the 3 taps that read inside the
 * row (padding 1), each output adding its terms in tap order. */
_Static_assert(K == 3, "the curve convolutions have 3 taps and padding 1");
static inline void conv_taps(double *restrict out, const double *restrict in, const double *w,
                             size_t L) {
  out[0] += w[1] * in[0];
  out[0] += w[2] * in[1];
  for (size_t t = 1; t + 1 < L; t++) {
    double sum = out[t];
    sum += w[0] * in[t - 1];
    sum += w[1] * in[t];
    sum += w[2] * in[t + 1];
    out[t] = sum;
  }
  out[L - 1] += w[0] * in[L - 2];
  out[L - 1] += w[1] * in[L - 1];
}

/* The curve encoder up to the flattened, rectified pooling output.
 *
 * The convolutions loop over positions innermost, so that the compiler can
 * vectorize them; each output still adds its terms in the order of the
 * formula (bias, then input channel, then tap), so the result is the same
 * to the bit as a loop over one output at a time. */
static void curve_forward(qt__net *net, const double *params, const double *curve, size_t n,
                          const double *mask) {
  size_t L = net->shape.curve_len, P = net->pooled_len;
  const double *W1 = params + net->conv1_weight; /* (8, 1, 3) */
  const double *b1 = params + net->conv1_bias;
  const double *W2 = params + net->conv2_weight; /* (8, 8, 3) */
  const double *b2 = params + net->conv2_bias;
  for (size_t i = 0; i < n; i++) {
    const double *c = curve + i * L;
    double *h1 = net->conv1_out + i * C * L; /* (8, L) */
    double *h2 = net->conv2_out + i * C * L; /* (8, L) */
    /* Conv1d(1 -> 8, k 3, padding 1): h1[o][t] = b1[o] + sum_k W1[o][k] c[t + k - 1]. */
    for (size_t o = 0; o < C; o++) {
      double *out = h1 + o * L;
      for (size_t t = 0; t < L; t++) out[t] = b1[o];
      conv_taps(out, c, W1 + o * K, L);
      for (size_t t = 0; t < L; t++) out[t] = out[t] > 0.0 ? out[t] : 0.0;
    }
    /* Conv1d(8 -> 8, k 3, padding 1), no activation:
     * h2[o][t] = b2[o] + sum_ci sum_k W2[o][ci][k] h1[ci][t + k - 1]. */
    for (size_t o = 0; o < C; o++) {
      double *out = h2 + o * L;
      for (size_t t = 0; t < L; t++) out[t] = b2[o];
      for (size_t ci = 0; ci < C; ci++) conv_taps(out, h1 + ci * L, W2 + (o * C + ci) * K, L);
    }
    /* MaxPool1d(2) (the first of two equal values wins, as in torch), then
     * Dropout1d on whole channels, flatten and ReLU. */
    for (size_t o = 0; o < C; o++) {
      double scale = mask ? mask[i * C + o] : 1.0;
      for (size_t p = 0; p < P; p++) {
        size_t at = 2 * p;
        if (h2[o * L + at + 1] > h2[o * L + at]) at++;
        net->pool_index[(i * C + o) * P + p] = at;
        double v = h2[o * L + at] * scale;
        net->flat[i * C * P + o * P + p] = v > 0.0 ? v : 0.0;
      }
    }
  }
}

const double *qt__net_forward(qt__net *net, const double *params, const qt_rows *rows,
                              const double *mask) {
  const qt__net_shape *s = &net->shape;
  size_t n = rows->n, zd = net->z_dim, H = s->encoder_dim;
  QT_ASSERT(n <= net->capacity);

  /* Encoders, or x itself, into the first columns of z. */
  if (s->encoders == 0) {
    for (size_t i = 0; i < n; i++)
      memcpy(net->z + i * zd, rows->x + i * s->hp_dim, s->hp_dim * sizeof *net->z);
  } else {
    order_columns(net, rows->x, n);
    size_t column = 0;
    for (size_t e = 0; e < s->encoders; e++) {
      const double *in = net->x_ordered + (e == 0 ? 0 : net->encoder_in[0]);
      linear_forward(&net->encoder[e][0], params, in, s->hp_dim, n, net->encoder_hidden[e], H);
      activate_block(QT__ACT_RELU, net->encoder_hidden[e], n, H, H);
      linear_forward(&net->encoder[e][1], params, net->encoder_hidden[e], H, n, net->z + column,
                     zd);
      column += H;
    }
  }

  for (size_t i = 0; i < n; i++) net->z[i * zd + net->z_budget] = rows->budget[i];
  if (s->meta_dim > 0)
    linear_forward(&net->meta, params, rows->meta, s->meta_dim, n, net->z + net->z_meta, zd);

  curve_forward(net, params, rows->curve, n, mask);
  linear_forward(&net->curve_fc, params, net->flat, C * net->pooled_len, n, net->z + net->z_curve,
                 zd);
  activate_block(QT__ACT_RELU, net->z + net->z_curve, n, s->curve_out, zd);

  /* The head. */
  const double *in = net->z;
  size_t ld_in = zd;
  for (size_t l = 0; l < s->head_count; l++) {
    size_t out = net->head[l].out;
    linear_forward(&net->head[l], params, in, ld_in, n, net->head_out[l], out);
    activate_block(s->head_act[l], net->head_out[l], n, out, out);
    in = net->head_out[l];
    ld_in = out;
  }
  return net->head_out[s->head_count - 1];
}

/* ------------------------------------------------------------------------- */
/* Backward                                                                   */
/* ------------------------------------------------------------------------- */

/* From dL/d(flat) in net->grad_flat back to the convolution parameters. */
static void curve_backward(qt__net *net, const double *params, const double *curve, size_t n,
                           const double *mask, double *grad) {
  size_t L = net->shape.curve_len, P = net->pooled_len;
  const double *W2 = params + net->conv2_weight; /* (8, 8, 3) */
  double *dW1 = grad + net->conv1_weight, *db1 = grad + net->conv1_bias;
  double *dW2 = grad + net->conv2_weight, *db2 = grad + net->conv2_bias;
  for (size_t i = 0; i < n; i++) {
    const double *c = curve + i * L;
    const double *h1 = net->conv1_out + i * C * L;
    const double *f = net->flat + i * C * P;
    const double *df = net->grad_flat + i * C * P;
    double *dh2 = net->grad_conv2 + i * C * L; /* (8, L) */
    double *dh1 = net->grad_conv1 + i * C * L; /* (8, L) */

    /* ReLU, dropout and pooling: the gradient of each pooled value flows to
     * the position that won the maximum, scaled by the channel's mask. */
    memset(dh2, 0, C * L * sizeof *dh2);
    for (size_t o = 0; o < C; o++) {
      double scale = mask ? mask[i * C + o] : 1.0;
      for (size_t p = 0; p < P; p++) {
        size_t j = o * P + p;
        if (f[j] > 0.0) dh2[o * L + net->pool_index[(i * C + o) * P + p]] += df[j] * scale;
      }
    }

    /* conv2: h2[o][t] = b2[o] + sum_ci sum_k W2[o][ci][k] h1[ci][t + k - 1]. */
    memset(dh1, 0, C * L * sizeof *dh1);
    for (size_t o = 0; o < C; o++) {
      for (size_t t = 0; t < L; t++) {
        double g = dh2[o * L + t];
        if (g == 0.0) continue;
        db2[o] += g;
        for (size_t ci = 0; ci < C; ci++) {
          for (size_t k = 0; k < K; k++) {
            size_t src = t + k;
            if (src < 1 || src - 1 >= L) continue;
            dW2[(o * C + ci) * K + k] += g * h1[ci * L + src - 1];
            dh1[ci * L + src - 1] += g * W2[(o * C + ci) * K + k];
          }
        }
      }
    }

    /* ReLU after conv1, then conv1 itself. */
    for (size_t o = 0; o < C; o++) {
      for (size_t t = 0; t < L; t++) {
        if (!(h1[o * L + t] > 0.0)) continue;
        double g = dh1[o * L + t];
        db1[o] += g;
        for (size_t k = 0; k < K; k++) {
          size_t src = t + k;
          if (src >= 1 && src - 1 < L) dW1[o * K + k] += g * c[src - 1];
        }
      }
    }
  }
}

void qt__net_backward(qt__net *net, const double *params, const qt_rows *rows, const double *mask,
                      double *grad) {
  const qt__net_shape *s = &net->shape;
  size_t n = rows->n, zd = net->z_dim, H = s->encoder_dim;

  /* The head, last layer first: dy (in place) -> dW, db, and dx, which is
   * the next layer's dy (dL/dz for the first layer). */
  double *dy = net->grad_out;
  for (size_t l = s->head_count; l-- > 0;) {
    size_t out = net->head[l].out, in = net->head[l].in;
    activate_backward(s->head_act[l], net->head_out[l], out, dy, out, n, out);
    const double *x = l == 0 ? net->z : net->head_out[l - 1];
    linear_backward(&net->head[l], params, grad, x, in, n, dy, out, net->grad_head_in[l], in);
    dy = net->grad_head_in[l];
  }
  double *dz = net->grad_head_in[0]; /* (n, z_dim) */

  /* Encoders (x itself needs no gradient). */
  size_t column = 0;
  for (size_t e = 0; e < s->encoders; e++) {
    linear_backward(&net->encoder[e][1], params, grad, net->encoder_hidden[e], H, n, dz + column,
                    zd, net->grad_encoder, H);
    activate_backward(QT__ACT_RELU, net->encoder_hidden[e], H, net->grad_encoder, H, n, H);
    const double *in = net->x_ordered + (e == 0 ? 0 : net->encoder_in[0]);
    linear_backward(&net->encoder[e][0], params, grad, in, s->hp_dim, n, net->grad_encoder, H, NULL,
                    0);
    column += H;
  }

  if (s->meta_dim > 0) {
    linear_backward(&net->meta, params, grad, rows->meta, s->meta_dim, n, dz + net->z_meta, zd,
                    NULL, 0);
  }

  /* The curve encoder: its ReLU output sits in z. */
  activate_backward(QT__ACT_RELU, net->z + net->z_curve, zd, dz + net->z_curve, zd, n,
                    s->curve_out);
  linear_backward(&net->curve_fc, params, grad, net->flat, C * net->pooled_len, n,
                  dz + net->z_curve, zd, net->grad_flat, C * net->pooled_len);
  curve_backward(net, params, rows->curve, n, mask, grad);
}

/* ------------------------------------------------------------------------- */
/* Adam                                                                       */
/* ------------------------------------------------------------------------- */

#define ADAM_BETA1 0.9
#define ADAM_BETA2 0.999
#define ADAM_EPSILON 1e-8

int qt__adam_init(qt__adam *adam, size_t count, qt_err *err) {
  memset(adam, 0, sizeof *adam);
  adam->m = calloc(count ? count : 1, sizeof *adam->m);
  adam->v = calloc(count ? count : 1, sizeof *adam->v);
  if (!adam->m || !adam->v) {
    qt__adam_free(adam);
    return qt_err_set(err, QT_ENOMEM, "Adam: out of memory for %zu parameters", count);
  }
  adam->count = count;
  return 0;
}

void qt__adam_free(qt__adam *adam) {
  if (!adam) return;
  free(adam->m);
  free(adam->v);
  memset(adam, 0, sizeof *adam);
}

void qt__adam_reset(qt__adam *adam) {
  memset(adam->m, 0, adam->count * sizeof *adam->m);
  memset(adam->v, 0, adam->count * sizeof *adam->v);
  adam->step = 0;
}

int qt__adam_step(qt__adam *adam, double *params, const double *grad, double lr) {
  for (size_t i = 0; i < adam->count; i++) {
    if (!isfinite(grad[i])) return QT_ENUMERIC;
  }
  adam->step++;
  double correction1 = 1.0 - pow(ADAM_BETA1, (double)adam->step);
  double correction2 = 1.0 - pow(ADAM_BETA2, (double)adam->step);
  double step_size = lr / correction1;
  double root2 = sqrt(correction2);
  for (size_t i = 0; i < adam->count; i++) {
    adam->m[i] = ADAM_BETA1 * adam->m[i] + (1.0 - ADAM_BETA1) * grad[i];
    adam->v[i] = ADAM_BETA2 * adam->v[i] + (1.0 - ADAM_BETA2) * grad[i] * grad[i];
    params[i] -= step_size * adam->m[i] / (sqrt(adam->v[i]) / root2 + ADAM_EPSILON);
  }
  return 0;
}

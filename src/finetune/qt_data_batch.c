/*
 * qt_data_batch.c - the batch iterator: epoch order, per-sample transforms
 * (in threads), Mixup / CutMix and soft targets.
 *
 * Reproducibility. Nothing carries over from one batch to the next: the
 * epoch's permutation comes from a stream seeded by (seed, epoch), the
 * sample at position p of the epoch from one seeded by (seed, epoch, p), the
 * batch's mixing from one seeded by (seed, epoch, batch). So a run resumed at
 * (epoch, batch) sees exactly the batches an uninterrupted run sees, and the
 * thread count changes nothing. The streams are reseeded in place
 * (qt__rng_reseed), so a batch allocates nothing once the workspaces have
 * grown to their working size.
 *
 * Prefetching (qt_batch_iter_set_prefetch; a run on a device turns it on).
 * The iterator then has two slots of batch arrays: while the caller uses
 * the batch in one, a background thread builds the next batch of the epoch
 * in the other, so that preparing batches overlaps the device's step. At
 * most one build runs at a time (the caller's call waits for a running one
 * before it builds or restarts anything), and a batch is the same function
 * of (seed, epoch, batch) either way, so prefetching changes no value. A
 * build's failure is reported by the call that asks for that batch.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_data_internal.h"

/* Stream kinds, mixed into the seeds so that the three never coincide. */
#define STREAM_ORDER (UINT64_C(1) << 56)
#define STREAM_SAMPLE (UINT64_C(2) << 56)
#define STREAM_MIX (UINT64_C(3) << 56)

#define MAX_THREADS 64

/* The arrays of one batch, and the outcome of building it. */
typedef struct batch_slot {
  float *inputs;   /* (batch_size, in_c, in_h, in_w) */
  float *targets;  /* (batch_size, n_classes) */
  int32_t *labels; /* (batch_size) */
  size_t *indices; /* (batch_size) */
  size_t batch;    /* the batch of the epoch it holds */
  size_t size;     /* its samples (the last batch may be short) */
  double lambda;
  int cutmix;
  int rc; /* 0, or the build's failure, described in err */
  qt_err err;
} batch_slot;

typedef struct batch_worker {
  struct qt_batch_iter *it;
  batch_slot *slot; /* the batch being built */
  size_t index; /* this worker takes samples i with i % n_workers == index */
  qt__image_work work;
  uint8_t *crop; /* (size, size, dataset channels) the transformed image */
  size_t crop_cap;
  qt_rng_t *rng;
  int rc;
  qt_err err;
} batch_worker;

struct qt_batch_iter {
  const qt_dataset *ds; /* borrowed */
  qt_preprocess_params pre;
  qt_augment_params aug;
  qt_batch_params params;
  size_t n_batches;
  size_t *order; /* (n) dataset indices in this epoch's order */
  int started;
  uint64_t epoch;
  size_t next_batch;
  size_t in_c, in_h, in_w; /* one input: (in_c, in_h, in_w) */
  size_t sample_floats;    /* in_c * in_h * in_w */
  batch_slot slots[2];     /* the second only allocated for prefetching */
  int front;               /* the slot of the batch returned last */
  int prefetch;            /* 1: build the next batch in the background */
  int prefetching;         /* 1: prefetcher is building slots[1 - front] */
  pthread_t prefetcher;
  size_t n_workers;
  batch_worker *workers; /* (n_workers) */
  qt_rng_t *rng;         /* order and mixing */
};

/* Size of the inputs array: a whole batch, at least one float. */
static size_t inputs_bytes(const qt_batch_iter_t *it) {
  return it->params.batch_size * (it->sample_floats ? it->sample_floats : 1) * sizeof(float);
}

qt_batch_params qt_batch_default_params(void) {
  qt_batch_params p;
  memset(&p, 0, sizeof p);
  p.batch_size = 32;
  p.shuffle = 1;
  p.drop_last = 0;
  p.augment = 1;
  p.seed = 0;
  p.threads = 1;
  return p;
}

/* Waits for a background build, whose batch is then dropped. */
static void settle(qt_batch_iter_t *it) {
  if (!it->prefetching) return;
  pthread_join(it->prefetcher, NULL);
  it->prefetching = 0;
}

static void slot_free(batch_slot *slot) {
  free(slot->inputs);
  free(slot->targets);
  free(slot->labels);
  free(slot->indices);
  memset(slot, 0, sizeof *slot);
}

static int slot_alloc(const qt_batch_iter_t *it, batch_slot *slot) {
  size_t bs = it->params.batch_size;
  slot->inputs = malloc(inputs_bytes(it));
  slot->targets = malloc(bs * it->ds->n_classes * sizeof *slot->targets);
  slot->labels = malloc(bs * sizeof *slot->labels);
  slot->indices = malloc(bs * sizeof *slot->indices);
  if (slot->inputs && slot->targets && slot->labels && slot->indices) return 0;
  slot_free(slot);
  return QT_ENOMEM;
}

void qt_batch_iter_free(qt_batch_iter_t *it) {
  if (!it) return;
  settle(it);
  if (it->workers) {
    for (size_t t = 0; t < it->n_workers; t++) {
      qt__image_work_free(&it->workers[t].work);
      free(it->workers[t].crop);
      qt_rng_free(it->workers[t].rng);
    }
  }
  free(it->workers);
  qt_rng_free(it->rng);
  free(it->order);
  slot_free(&it->slots[0]);
  slot_free(&it->slots[1]);
  free(it);
}

static int check_params(const qt_dataset *ds, const qt_preprocess_params *pre,
                        const qt_augment_params *aug, const qt_batch_params *bp, qt_err *err) {
  if (bp->batch_size == 0) return qt_err_set(err, QT_EINVAL, "batch size must be >= 1");
  if (bp->threads < 0 || bp->threads > MAX_THREADS)
    return qt_err_set(err, QT_EINVAL, "threads must be 0..%d (got %d)", MAX_THREADS, bp->threads);
  if (ds->n_classes == 0) return qt_err_set(err, QT_EINVAL, "%s: no classes", ds->source);
  if (ds->kind == QT_DATASET_KIND_TABULAR) {
    if (pre && (!pre->feature_mean) != (!pre->feature_std))
      return qt_err_set(err, QT_EINVAL, "feature_mean and feature_std must be set together");
    for (size_t j = 0; pre && pre->feature_std && j < ds->n_features; j++)
      if (!(pre->feature_std[j] > 0.0f) || !isfinite(pre->feature_mean[j]))
        return qt_err_set(err, QT_EINVAL, "feature %zu: std %g must be > 0, mean %g finite", j,
                          (double)pre->feature_std[j], (double)pre->feature_mean[j]);
    return 0;
  }
  if (!pre) return qt_err_set(err, QT_EINVAL, "an image dataset needs preprocessing parameters");
  if (pre->image_size == 0 || pre->image_size > QT_IMAGE_MAX_SIDE)
    return qt_err_set(err, QT_EINVAL, "image_size %zu out of range", pre->image_size);
  if (pre->channels != 1 && pre->channels != 3)
    return qt_err_set(err, QT_EINVAL, "the model's channels must be 1 or 3 (got %zu)",
                      pre->channels);
  if ((unsigned)pre->interpolation > QT_INTERPOLATION_BICUBIC)
    return qt_err_set(err, QT_EINVAL, "unknown interpolation %d", (int)pre->interpolation);
  if (!(pre->crop_pct > 0.0 && pre->crop_pct <= 1.0))
    return qt_err_set(err, QT_EINVAL, "crop_pct must be in (0, 1] (got %g)", pre->crop_pct);
  for (size_t c = 0; c < pre->channels; c++)
    if (!(pre->std[c] > 0.0))
      return qt_err_set(err, QT_EINVAL, "std[%zu] must be > 0 (got %g)", c, pre->std[c]);
  if (!bp->augment) return 0;
  if (aug->random_resized_crop && (!(aug->scale[0] > 0.0 && aug->scale[0] <= aug->scale[1]) ||
                                   !(aug->ratio[0] > 0.0 && aug->ratio[0] <= aug->ratio[1])))
    return qt_err_set(err, QT_EINVAL, "RandomResizedCrop: scale (%g, %g), ratio (%g, %g)",
                      aug->scale[0], aug->scale[1], aug->ratio[0], aug->ratio[1]);
  if (!(aug->hflip_prob >= 0.0 && aug->hflip_prob <= 1.0))
    return qt_err_set(err, QT_EINVAL, "hflip_prob %g outside [0, 1]", aug->hflip_prob);
  if ((unsigned)aug->auto_augment > QT_AUTO_AUGMENT_RAND)
    return qt_err_set(err, QT_EINVAL, "unknown auto augmentation %d", (int)aug->auto_augment);
  if (aug->auto_augment != QT_AUTO_AUGMENT_NONE && aug->num_magnitude_bins < 1)
    return qt_err_set(err, QT_EINVAL, "num_magnitude_bins must be >= 1");
  if (aug->auto_augment == QT_AUTO_AUGMENT_RAND &&
      (aug->rand_num_ops < 0 || aug->rand_magnitude < 0 ||
       aug->rand_magnitude >= aug->num_magnitude_bins))
    return qt_err_set(err, QT_EINVAL, "RandAugment: num_ops %d, magnitude %d of %d bins",
                      aug->rand_num_ops, aug->rand_magnitude, aug->num_magnitude_bins);
  if (!(aug->mixup_alpha >= 0.0) || !(aug->cutmix_alpha >= 0.0) ||
      !(aug->mix_prob >= 0.0 && aug->mix_prob <= 1.0) ||
      !(aug->switch_prob >= 0.0 && aug->switch_prob <= 1.0))
    return qt_err_set(err, QT_EINVAL, "Mixup/CutMix parameters out of range");
  return 0;
}

int qt_batch_iter_init(const qt_dataset *ds, const qt_preprocess_params *pre,
                       const qt_augment_params *aug, const qt_batch_params *params,
                       qt_batch_iter_t **out, qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_batch_iter_init: out is NULL");
  *out = NULL;
  if (!ds) return qt_err_set(err, QT_EINVAL, "qt_batch_iter_init: dataset is NULL");
  qt_batch_params default_batch = qt_batch_default_params();
  qt_augment_params default_aug = qt_augment_default_params();
  const qt_batch_params *bp = params ? params : &default_batch;
  const qt_augment_params *ap = aug ? aug : &default_aug;
  int rc = check_params(ds, pre, ap, bp, err);
  if (rc < 0) return rc;
  if (bp->augment && !(ap->label_smoothing >= 0.0 && ap->label_smoothing < 1.0))
    return qt_err_set(err, QT_EINVAL, "label smoothing %g outside [0, 1)", ap->label_smoothing);

  qt_batch_iter_t *it = calloc(1, sizeof *it);
  if (!it) return qt_err_set(err, QT_ENOMEM, "out of memory for a batch iterator");
  it->ds = ds;
  if (pre) it->pre = *pre;
  it->aug = *ap;
  it->params = *bp;
  size_t bs = bp->batch_size;
  it->n_batches = bp->drop_last ? ds->n / bs : (ds->n + bs - 1) / bs;
  if (ds->kind == QT_DATASET_KIND_IMAGE) {
    it->in_c = pre->channels;
    it->in_h = it->in_w = pre->image_size;
  } else {
    it->in_c = it->in_h = 1;
    it->in_w = ds->n_features;
  }
  it->sample_floats = it->in_c * it->in_h * it->in_w;
  it->n_workers = bp->threads > 1 ? (size_t)bp->threads : 1;
  if (it->n_workers > bs) it->n_workers = bs;
  it->order = malloc((ds->n ? ds->n : 1) * sizeof *it->order);
  it->workers = calloc(it->n_workers, sizeof *it->workers);
  if (!it->order || !it->workers || slot_alloc(it, &it->slots[0]) < 0) {
    if (!it->workers) it->n_workers = 0;
    qt_batch_iter_free(it);
    return qt_err_set(err, QT_ENOMEM, "out of memory for batches of %zu", bs);
  }
  if ((rc = qt_rng_init(&it->rng, bp->seed, err)) < 0) goto fail;
  for (size_t t = 0; t < it->n_workers; t++) {
    batch_worker *w = &it->workers[t];
    w->it = it;
    w->index = t;
    qt__image_work_init(&w->work);
    if ((rc = qt_rng_init(&w->rng, bp->seed, err)) < 0) goto fail;
    if (ds->kind == QT_DATASET_KIND_IMAGE &&
        (rc = qt__grow((void **)&w->crop, &w->crop_cap,
                       pre->image_size * pre->image_size * ds->channels, err)) < 0)
      goto fail;
  }
  *out = it;
  return 0;
fail:
  qt_batch_iter_free(it);
  return rc;
}

size_t qt_batch_iter_count(const qt_batch_iter_t *it) {
  return it ? it->n_batches : 0;
}

float *qt_batch_iter_inputs_buffer(qt_batch_iter_t *it, int slot, size_t *bytes) {
  float *inputs = it && (slot == 0 || slot == 1) ? it->slots[slot].inputs : NULL;
  *bytes = inputs ? inputs_bytes(it) : 0;
  return inputs;
}

int qt_batch_iter_set_prefetch(qt_batch_iter_t *it, int on, qt_err *err) {
  if (!it) return qt_err_set(err, QT_EINVAL, "qt_batch_iter_set_prefetch: iterator is NULL");
  settle(it);
  if (on && !it->slots[1].inputs && slot_alloc(it, &it->slots[1]) < 0)
    return qt_err_set(err, QT_ENOMEM, "out of memory for a second batch of %zu",
                      it->params.batch_size);
  it->prefetch = on != 0;
  return 0;
}

const size_t *qt_batch_iter_order(const qt_batch_iter_t *it) {
  return it && it->started ? it->order : NULL;
}

int qt_batch_iter_start(qt_batch_iter_t *it, uint64_t epoch, size_t first_batch, qt_err *err) {
  if (!it) return qt_err_set(err, QT_EINVAL, "qt_batch_iter_start: iterator is NULL");
  if (first_batch > it->n_batches)
    return qt_err_set(err, QT_EINVAL, "batch %zu is past the end of the epoch (%zu batches)",
                      first_batch, it->n_batches);
  settle(it);
  size_t n = it->ds->n;
  for (size_t i = 0; i < n; i++) it->order[i] = i;
  if (it->params.shuffle) {
    qt__rng_reseed(it->rng, it->params.seed, epoch, STREAM_ORDER);
    for (size_t i = n; i > 1; i--) {
      size_t j = (size_t)qt_rng_uniform_int(it->rng, i);
      size_t t = it->order[i - 1];
      it->order[i - 1] = it->order[j];
      it->order[j] = t;
    }
  }
  it->epoch = epoch;
  it->next_batch = first_batch;
  it->started = 1;
  return 0;
}

/* Transforms sample i of the worker's batch into its row of inputs. */
static int transform_sample(qt_batch_iter_t *it, batch_worker *w, size_t i, qt_err *err) {
  const qt_dataset *ds = it->ds;
  const batch_slot *slot = w->slot;
  size_t index = slot->indices[i];
  float *dst = slot->inputs + i * it->sample_floats;
  if (ds->kind == QT_DATASET_KIND_TABULAR) {
    const float *src = ds->features + index * ds->n_features;
    const float *mean = it->pre.feature_mean, *std = it->pre.feature_std;
    for (size_t j = 0; j < ds->n_features; j++)
      dst[j] = mean ? (src[j] - mean[j]) / std[j] : src[j];
    return 0;
  }
  size_t image_bytes = ds->height * ds->width * ds->channels;
  const uint8_t *src = ds->images + index * image_bytes;
  size_t size = it->pre.image_size;
  int rc;
  if (it->params.augment) {
    uint64_t position = (uint64_t)(slot->batch * it->params.batch_size + i);
    qt__rng_reseed(w->rng, it->params.seed, it->epoch, STREAM_SAMPLE | position);
    if (it->aug.random_resized_crop)
      rc = qt__image_random_resized_crop(&w->work, src, ds->height, ds->width, ds->channels,
                                         it->aug.scale, it->aug.ratio, size, it->pre.interpolation,
                                         w->rng, w->crop, err);
    else
      rc = qt__image_eval_crop(&w->work, src, ds->height, ds->width, ds->channels, size,
                               it->pre.crop_pct, it->pre.interpolation, w->crop, err);
    if (rc < 0) return rc;
    /* torchvision draws torch.rand(1) < p for every image. */
    if (qt_rng_uniform(w->rng) < it->aug.hflip_prob)
      qt_image_hflip(w->crop, size, size, ds->channels);
    rc = qt__image_auto_augment(&w->work, w->crop, size, size, ds->channels, &it->aug, w->rng, err);
    if (rc < 0) return rc;
  } else {
    rc = qt__image_eval_crop(&w->work, src, ds->height, ds->width, ds->channels, size,
                             it->pre.crop_pct, it->pre.interpolation, w->crop, err);
    if (rc < 0) return rc;
  }
  return qt_image_to_float(w->crop, size, size, ds->channels, it->pre.channels, it->pre.mean,
                           it->pre.std, dst, err);
}

static void *worker_run(void *arg) {
  batch_worker *w = arg;
  qt_batch_iter_t *it = w->it;
  qt_err_clear(&w->err);
  w->rc = 0;
  for (size_t i = w->index; i < w->slot->size; i += it->n_workers) {
    w->rc = transform_sample(it, w, i, &w->err);
    if (w->rc < 0) break;
  }
  return NULL;
}

/* Builds batch `index` of the epoch into slot; the outcome goes to
 * slot->rc and slot->err. */
static void build(qt_batch_iter_t *it, batch_slot *slot, size_t index) {
  const qt_dataset *ds = it->ds;
  size_t bs = it->params.batch_size;
  size_t first = index * bs;
  size_t size = ds->n - first < bs ? ds->n - first : bs;
  slot->batch = index;
  slot->size = size;
  slot->rc = 0;
  qt_err_clear(&slot->err);
  for (size_t i = 0; i < size; i++) {
    slot->indices[i] = it->order[first + i];
    slot->labels[i] = ds->labels[slot->indices[i]];
  }

  /* Per-sample transforms: worker t takes samples t, t + T, ... */
  size_t workers = it->n_workers < size ? it->n_workers : size;
  for (size_t t = 0; t < workers; t++) it->workers[t].slot = slot;
  pthread_t ids[MAX_THREADS];
  size_t started = 1;
  for (size_t t = 1; t < workers; t++) {
    if (pthread_create(&ids[t], NULL, worker_run, &it->workers[t]) != 0) break;
    started = t + 1;
  }
  for (size_t t = started; t < workers; t++) worker_run(&it->workers[t]);
  worker_run(&it->workers[0]);
  for (size_t t = 1; t < started; t++) pthread_join(ids[t], NULL);
  for (size_t t = 0; t < workers; t++) {
    if (it->workers[t].rc < 0) {
      slot->rc = it->workers[t].rc;
      slot->err = it->workers[t].err;
      return;
    }
  }

  /* Targets: mixed (training images), smoothed (training), or one-hot. */
  slot->lambda = 1.0;
  slot->cutmix = 0;
  if (it->params.augment && ds->kind == QT_DATASET_KIND_IMAGE) {
    qt__rng_reseed(it->rng, it->params.seed, it->epoch, STREAM_MIX | index);
    slot->rc = qt_mix_batch(slot->inputs, slot->labels, size, it->in_c, it->in_h, it->in_w,
                            ds->n_classes, &it->aug, it->rng, slot->targets, &slot->lambda,
                            &slot->cutmix, &slot->err);
  } else {
    qt_targets_smooth(slot->labels, size, ds->n_classes,
                      it->params.augment ? it->aug.label_smoothing : 0.0, slot->targets);
  }
}

static void *prefetch_run(void *arg) {
  qt_batch_iter_t *it = arg;
  build(it, &it->slots[1 - it->front], it->next_batch);
  return NULL;
}

int qt_batch_iter_next(qt_batch_iter_t *it, qt_batch *batch, qt_err *err) {
  if (!it || !batch) return qt_err_set(err, QT_EINVAL, "qt_batch_iter_next: NULL argument");
  if (!it->started)
    return qt_err_set(err, QT_EINVAL, "qt_batch_iter_next: call qt_batch_iter_start first");
  if (it->next_batch >= it->n_batches) return 0;
  /* A running prefetch is building exactly this batch (start settles it). */
  if (it->prefetching) {
    settle(it);
    it->front = 1 - it->front;
  } else {
    build(it, &it->slots[it->front], it->next_batch);
  }
  const batch_slot *slot = &it->slots[it->front];
  QT_ASSERT(slot->batch == it->next_batch);
  if (slot->rc < 0) {
    if (err) *err = slot->err;
    return slot->rc;
  }

  batch->size = slot->size;
  batch->channels = it->in_c;
  batch->height = it->in_h;
  batch->width = it->in_w;
  batch->n_classes = it->ds->n_classes;
  batch->inputs = slot->inputs;
  batch->targets = slot->targets;
  batch->labels = slot->labels;
  batch->indices = slot->indices;
  batch->lambda = slot->lambda;
  batch->cutmix = slot->cutmix;
  it->next_batch++;
  /* The next batch goes to the other slot while the caller uses this one;
   * if no thread can be started, the next call builds it itself. */
  if (it->prefetch && it->next_batch < it->n_batches &&
      pthread_create(&it->prefetcher, NULL, prefetch_run, it) == 0)
    it->prefetching = 1;
  return 1;
}

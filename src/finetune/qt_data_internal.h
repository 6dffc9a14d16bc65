/*
 * qt_data_internal.h - helpers shared by the qt_data*.c files (the data
 * pipeline of the finetune module). Not part of the public API.
 *
 * The image functions here take a caller-owned workspace (qt__image_work)
 * whose buffers grow on demand and are kept, so that the batch iterator
 * allocates nothing once its buffers have reached their working size. The
 * public functions of qt_finetune.h wrap them with a temporary workspace.
 */
#ifndef QT_DATA_INTERNAL_H
#define QT_DATA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "finetune/qt_finetune.h"

/* ------------------------------------------------------------------------- */
/* Workspace                                                                  */
/* ------------------------------------------------------------------------- */

/* Scratch memory for resizing and augmenting one image at a time. */
typedef struct qt__image_work {
  uint8_t *image[2];   /* two image buffers for ping-pong between ops */
  size_t image_cap[2]; /* bytes allocated in image[i] */
  uint8_t *temp;       /* resize: the horizontally resampled rows */
  size_t temp_cap;
  int32_t *coeffs;    /* resize: fixed-point filter weights, both passes */
  size_t coeffs_cap;  /* int32 elements */
  double *weights;    /* resize: the weights in double before conversion */
  size_t weights_cap; /* double elements */
  int *bounds;        /* resize: (first input index, count) per output sample, both passes */
  size_t bounds_cap;  /* int elements */
} qt__image_work;

void qt__image_work_init(qt__image_work *w);
void qt__image_work_free(qt__image_work *w);
/* Makes *buf hold at least bytes; QT_ENOMEM when it cannot. */
int qt__grow(void **buf, size_t *cap, size_t bytes, qt_err *err);

/* ------------------------------------------------------------------------- */
/* Images                                                                     */
/* ------------------------------------------------------------------------- */

/* qt_image_resize on a window of an image: src points at the window's first
 * pixel, src_stride is the byte distance between its rows. The window is
 * treated as the whole image (filters clamp at its edges), which is the
 * crop-then-resize of torchvision. */
int qt__image_resize_window(qt__image_work *w, const uint8_t *src, size_t src_stride,
                            size_t src_height, size_t src_width, size_t channels, uint8_t *dst,
                            size_t dst_height, size_t dst_width, qt_interpolation interpolation,
                            qt_err *err);

/* Resize to cover (height, width) keeping the aspect ratio, then center
 * crop: the load-time size normalization of image folders. */
int qt__image_cover_crop(qt__image_work *w, const uint8_t *src, size_t src_height, size_t src_width,
                         size_t channels, uint8_t *dst, size_t height, size_t width,
                         qt_interpolation interpolation, qt_err *err);

/* PIL's ITU-R 601-2 luma of one RGB pixel (convert("L")). */
static inline uint8_t qt__luma(uint8_t r, uint8_t g, uint8_t b) {
  return (uint8_t)((r * 19595u + g * 38470u + b * 7471u + 0x8000u) >> 16);
}

/* Changes the channel count of an image between 1 and 3 (src != dst). */
void qt__image_convert_channels(const uint8_t *src, size_t pixels, size_t channels, uint8_t *dst,
                                size_t out_channels);

/* The eval transform's uint8 part into dst (size, size, channels). */
int qt__image_eval_crop(qt__image_work *w, const uint8_t *src, size_t height, size_t width,
                        size_t channels, size_t size, double crop_pct,
                        qt_interpolation interpolation, uint8_t *dst, qt_err *err);

/* TrivialAugment / RandAugment with the workspace's ping-pong buffers: the
 * result is written to dst, which may be src. */
int qt__image_auto_augment(qt__image_work *w, uint8_t *image, size_t height, size_t width,
                           size_t channels, const qt_augment_params *p, qt_rng_t *rng, qt_err *err);

/* qt_image_random_resized_crop with a workspace. */
int qt__image_random_resized_crop(qt__image_work *w, const uint8_t *src, size_t height,
                                  size_t width, size_t channels, const double scale[2],
                                  const double ratio[2], size_t size,
                                  qt_interpolation interpolation, qt_rng_t *rng, uint8_t *dst,
                                  qt_err *err);

/* ------------------------------------------------------------------------- */
/* Datasets                                                                   */
/* ------------------------------------------------------------------------- */

/* A zeroed dataset with a copy of source; QT_ENOMEM. */
int qt__dataset_new(qt_dataset_kind kind, const char *source, qt_dataset **out, qt_err *err);

/* Copies n names into ds->class_names (ds->n_classes = n). */
int qt__dataset_set_classes(qt_dataset *ds, const char *const *names, size_t n, qt_err *err);

/* At least 2 classes and no class without samples, else QT_ESCHEMA naming
 * ds->source and the empty class. */
int qt__dataset_check_classes(const qt_dataset *ds, qt_err *err);

/* strdup that reports QT_ENOMEM. */
int qt__strdup(const char *text, char **out, qt_err *err);

/* Python's round() of a double to the nearest integer, ties to even. */
long qt__round_half_even(double x);

/* ------------------------------------------------------------------------- */
/* Random streams                                                             */
/* ------------------------------------------------------------------------- */

/* Reseeds rng with a hash of (a, b, c), without allocating: the streams of
 * the batch iterator (one per sample) are derived this way. The rng's own
 * recorded seed (qt_rng_seed) is left unchanged; the stream is not a fork. */
void qt__rng_reseed(qt_rng_t *rng, uint64_t a, uint64_t b, uint64_t c);

#endif /* QT_DATA_INTERNAL_H */

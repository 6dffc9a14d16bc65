/*
 * qt_test_patterns.h - the pattern images of the run tests (test_run.c,
 * test_run_cnn.c, test_methods.c, test_cotuning.c): 8x8 RGB images of three
 * classes (horizontal stripes, vertical stripes, a checkerboard) with noise
 * drawn from seed. Include after qt_test.h.
 */
#ifndef QT_TEST_PATTERNS_H
#define QT_TEST_PATTERNS_H

#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune.h"

/* 3 * per_class images, labels cycling 0, 1, 2; the caller frees the
 * dataset with qt_dataset_free. */
static inline qt_dataset *qt_test_patterns(size_t per_class, uint64_t seed) {
  const size_t classes = 3, side = 8, ch = 3;
  qt_dataset *ds = calloc(1, sizeof *ds);
  size_t n = classes * per_class;
  ds->kind = QT_DATASET_KIND_IMAGE;
  ds->n = n;
  ds->height = ds->width = side;
  ds->channels = ch;
  ds->images = malloc(n * side * side * ch);
  ds->labels = malloc(n * sizeof *ds->labels);
  ds->n_classes = classes;
  ds->class_names = calloc(classes, sizeof *ds->class_names);
  const char *names[] = {"hstripes", "vstripes", "checker"};
  for (size_t k = 0; k < classes; k++) ds->class_names[k] = strdup(names[k]);
  ds->source = strdup("patterns");
  qt_rng_t *rng = NULL;
  qt_rng_init(&rng, seed, NULL);
  for (size_t i = 0; i < n; i++) {
    int label = (int)(i % classes);
    ds->labels[i] = label;
    uint8_t *img = ds->images + i * side * side * ch;
    for (size_t y = 0; y < side; y++) {
      for (size_t x = 0; x < side; x++) {
        int on = label == 0 ? (int)(y / 2 % 2) : label == 1 ? (int)(x / 2 % 2) : (int)((x + y) % 2);
        for (size_t c = 0; c < ch; c++)
          img[(y * side + x) * ch + c] =
              (uint8_t)((on ? 200.0 : 50.0) + 40.0 * (qt_rng_uniform(rng) - 0.5));
      }
    }
  }
  qt_rng_free(rng);
  return ds;
}

#endif /* QT_TEST_PATTERNS_H */

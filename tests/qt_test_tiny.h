/*
 * qt_test_tiny.h - the tiny real setup shared by the search and collect
 * tests: IDX images of three learnable patterns and a tiny ViT checkpoint,
 * so that a whole search or collection runs in seconds. Include after
 * qt_test.h.
 */
#ifndef QT_TEST_TINY_H
#define QT_TEST_TINY_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "bo/qt_bo.h"
#include "core/qt_core.h"
#include "finetune/qt_finetune.h"

static inline void qt_tiny_write_file(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  CU_ASSERT_FATAL(f != NULL);
  CU_ASSERT_FATAL(fwrite(data, 1, n, f) == n);
  fclose(f);
}

static inline void qt_tiny_be32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24);
  p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8);
  p[3] = (unsigned char)v;
}

/* dir/train-{images,labels}-idx*-ubyte: n side x side images of three
 * patterns (stripes, stripes, checkerboard) with noise drawn from seed;
 * dir is created when missing. */
static inline void qt_tiny_write_idx(const char *dir, uint32_t n, uint32_t side, uint64_t seed) {
  size_t pixels = (size_t)side * side;
  unsigned char *images = malloc(16 + n * pixels), *labels = malloc(8 + n);
  CU_ASSERT_FATAL(images && labels);
  images[0] = images[1] = 0;
  images[2] = 8;
  images[3] = 3;
  qt_tiny_be32(images + 4, n);
  qt_tiny_be32(images + 8, side);
  qt_tiny_be32(images + 12, side);
  labels[0] = labels[1] = 0;
  labels[2] = 8;
  labels[3] = 1;
  qt_tiny_be32(labels + 4, n);
  qt_rng_t *rng = NULL;
  qt_rng_init(&rng, seed, NULL);
  for (uint32_t i = 0; i < n; i++) {
    int label = (int)(i % 3);
    labels[8 + i] = (unsigned char)label;
    for (uint32_t y = 0; y < side; y++)
      for (uint32_t x = 0; x < side; x++) {
        int on = label == 0 ? (int)(y / 2 % 2) : label == 1 ? (int)(x / 2 % 2) : (int)((x + y) % 2);
        double v = (on ? 190.0 : 60.0) + 80.0 * (qt_rng_uniform(rng) - 0.5);
        images[16 + i * pixels + y * side + x] = (unsigned char)v;
      }
  }
  qt_rng_free(rng);
  char path[1024];
  CU_ASSERT_FATAL(qt_mkdir_p(dir, NULL) == 0);
  CU_ASSERT_FATAL(snprintf(path, sizeof path, "%s/train-images-idx3-ubyte", dir) <
                  (int)sizeof path);
  qt_tiny_write_file(path, images, 16 + n * pixels);
  CU_ASSERT_FATAL(snprintf(path, sizeof path, "%s/train-labels-idx1-ubyte", dir) <
                  (int)sizeof path);
  qt_tiny_write_file(path, labels, 8 + n);
  free(images);
  free(labels);
}

/* A ViT of 8 px images, patch 4, width 16, depth 1, 2 heads, 5 classes,
 * timm's init drawn from seed, saved at path. */
static inline void qt_tiny_write_vit(const char *path, uint64_t seed) {
  qt_vit_config c = qt_vit_default_config();
  c.image_size = 8;
  c.patch_size = 4;
  c.width = 16;
  c.depth = 1;
  c.heads = 2;
  c.mlp_hidden = 32;
  c.num_classes = 5;
  qt_rng_t *rng = NULL;
  qt_rng_init(&rng, seed, NULL);
  qt_vit_t *vit = NULL;
  CU_ASSERT_FATAL(qt_vit_init(&c, 4, rng, &vit, NULL) == 0);
  CU_ASSERT_FATAL(qt_vit_save(vit, path, NULL) == 0);
  qt_vit_free(vit);
  qt_rng_free(rng);
}

/* dir/a.safetensors and dir/b.safetensors, tiny ViTs of seeds 1 and 2, and
 * dir/hub.yaml listing them as tiny_a and tiny_b, then the entries in `more`
 * ("" for none); the hub's path in hub_path. */
static inline void qt_tiny_write_hub(const char *dir, const char *more, char *hub_path,
                                     size_t size) {
  char path[1024];
  CU_ASSERT_FATAL(qt_mkdir_p(dir, NULL) == 0);
  CU_ASSERT_FATAL(snprintf(path, sizeof path, "%s/a.safetensors", dir) < (int)sizeof path);
  qt_tiny_write_vit(path, 1);
  CU_ASSERT_FATAL(snprintf(path, sizeof path, "%s/b.safetensors", dir) < (int)sizeof path);
  qt_tiny_write_vit(path, 2);
  char text[4096];
  int n = snprintf(
      text, sizeof text,
      "version: 1\n"
      "name: tiny\n"
      "models:\n"
      "  - {name: tiny_a, family: vit, checkpoint: a.safetensors, image_size: 8,\n"
      "     mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5], num_classes: 5, patch_size: 4, heads: 2}\n"
      "  - {name: tiny_b, family: vit, checkpoint: b.safetensors, image_size: 8,\n"
      "     mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5], num_classes: 5, patch_size: 4, heads: 2}\n"
      "%s",
      more);
  CU_ASSERT_FATAL(n > 0 && (size_t)n < sizeof text);
  CU_ASSERT_FATAL(snprintf(hub_path, size, "%s/hub.yaml", dir) < (int)size);
  qt_tiny_write_file(hub_path, text, (size_t)n);
}

/* A search of the tiny setup into run_dir: random search, 3 epochs per
 * trial, an hour's budget, one engine thread; the caller sets the pool,
 * the seed and the rest. */
static inline qt_search_params qt_tiny_search_params(const char *run_dir, const char *data,
                                                     const char *hub, const char *space) {
  qt_search_params p = qt_search_default_params();
  p.run_dir = run_dir;
  p.data = data;
  p.hub = hub;
  p.space = space;
  p.optimizer = "random";
  p.budget_s = 3600;
  p.max_epochs = 3;
  p.threads = 1;
  return p;
}

#endif /* QT_TEST_TINY_H */

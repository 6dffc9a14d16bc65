/*
 * test_finetune_layout.c - checking checkpoints against their family's timm
 * layout (qt_model_inspect): what the shapes say about the model, and one
 * clear message per kind of mismatch.
 *
 * The positive path uses the committed fixture
 * tests/fixtures/safetensors/vit_tiny.safetensors; mismatching checkpoints
 * are written by the test with qt_safetensors_write into a temporary folder.
 * The expectations are what a hub entry would say (qt_model_expect).
 */
#include "finetune/qt_finetune.h"
#include "metadata/qt_metadata.h"
#include "qt_test.h"

#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#define COUNT_OF(array) (sizeof(array) / sizeof((array)[0]))
#define TINY_VIT QT_SOURCE_DIR "/tests/fixtures/safetensors/vit_tiny.safetensors"

/* ------------------------------------------------------------------------- */
/* Helpers                                                                    */
/* ------------------------------------------------------------------------- */


/* ------------------------------------------------------------------------- */
/* Building checkpoints                                                       */
/* ------------------------------------------------------------------------- */

#define MAX_TENSORS 160

/* A set of named tensors (all zeros) to write as a checkpoint. */
typedef struct builder {
  qt_safetensors_tensor tensors[MAX_TENSORS];
  char names[MAX_TENSORS][96];
  size_t shapes[MAX_TENSORS][4];
  size_t n;
} builder;

static float zeros[1 << 16];

static void add(builder *b, size_t ndim, size_t d0, size_t d1, size_t d2, size_t d3,
                const char *fmt, ...) QT_PRINTF(7, 8);

static void add(builder *b, size_t ndim, size_t d0, size_t d1, size_t d2, size_t d3,
                const char *fmt, ...) {
  QT_ASSERT(b->n < MAX_TENSORS);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(b->names[b->n], sizeof b->names[b->n], fmt, ap);
  va_end(ap);
  size_t dims[4] = {d0, d1, d2, d3}, numel = 1;
  for (size_t d = 0; d < ndim; d++) {
    b->shapes[b->n][d] = dims[d];
    numel *= dims[d];
  }
  QT_ASSERT(numel <= COUNT_OF(zeros));
  b->tensors[b->n] =
      (qt_safetensors_tensor){b->names[b->n], QT_DTYPE_F32, ndim, b->shapes[b->n], zeros, NULL};
  b->n++;
}

static void drop(builder *b, const char *name) {
  for (size_t i = 0; i < b->n; i++) {
    if (strcmp(b->names[i], name) != 0) continue;
    /* Move the last one here; the pointers must follow their storage. */
    b->n--;
    memcpy(b->names[i], b->names[b->n], sizeof b->names[i]);
    memcpy(b->shapes[i], b->shapes[b->n], sizeof b->shapes[i]);
    b->tensors[i] = b->tensors[b->n];
    b->tensors[i].name = b->names[i];
    b->tensors[i].shape = b->shapes[i];
    return;
  }
  QT_ASSERT(!"drop: no such tensor");
}

/* timm's VisionTransformer: width w, patch p, grid g x g, depth, MLP 4w. */
static void build_vit(builder *b, size_t w, size_t p, size_t g, size_t depth, size_t classes,
                      int tokens_in_pos, int layer_scale, int distilled) {
  memset(b, 0, sizeof *b);
  add(b, 4, w, 3, p, p, "patch_embed.proj.weight");
  add(b, 1, w, 0, 0, 0, "patch_embed.proj.bias");
  add(b, 3, 1, 1, w, 0, "cls_token");
  if (distilled) add(b, 3, 1, 1, w, 0, "dist_token");
  add(b, 3, 1, g * g + (tokens_in_pos ? 1 + (size_t)distilled : 0), w, 0, "pos_embed");
  for (size_t i = 0; i < depth; i++) {
    add(b, 1, w, 0, 0, 0, "blocks.%zu.norm1.weight", i);
    add(b, 1, w, 0, 0, 0, "blocks.%zu.norm1.bias", i);
    add(b, 2, 3 * w, w, 0, 0, "blocks.%zu.attn.qkv.weight", i);
    add(b, 1, 3 * w, 0, 0, 0, "blocks.%zu.attn.qkv.bias", i);
    add(b, 2, w, w, 0, 0, "blocks.%zu.attn.proj.weight", i);
    add(b, 1, w, 0, 0, 0, "blocks.%zu.attn.proj.bias", i);
    add(b, 1, w, 0, 0, 0, "blocks.%zu.norm2.weight", i);
    add(b, 1, w, 0, 0, 0, "blocks.%zu.norm2.bias", i);
    add(b, 2, 4 * w, w, 0, 0, "blocks.%zu.mlp.fc1.weight", i);
    add(b, 1, 4 * w, 0, 0, 0, "blocks.%zu.mlp.fc1.bias", i);
    add(b, 2, w, 4 * w, 0, 0, "blocks.%zu.mlp.fc2.weight", i);
    add(b, 1, w, 0, 0, 0, "blocks.%zu.mlp.fc2.bias", i);
    if (layer_scale) {
      add(b, 1, w, 0, 0, 0, "blocks.%zu.ls1.gamma", i);
      add(b, 1, w, 0, 0, 0, "blocks.%zu.ls2.gamma", i);
    }
  }
  add(b, 1, w, 0, 0, 0, "norm.weight");
  add(b, 1, w, 0, 0, 0, "norm.bias");
  if (classes) {
    add(b, 2, classes, w, 0, 0, "head.weight");
    add(b, 1, classes, 0, 0, 0, "head.bias");
    if (distilled) {
      add(b, 2, classes, w, 0, 0, "head_dist.weight");
      add(b, 1, classes, 0, 0, 0, "head_dist.bias");
    }
  }
}

static void add_bn(builder *b, size_t c, const char *prefix) {
  add(b, 1, c, 0, 0, 0, "%s.weight", prefix);
  add(b, 1, c, 0, 0, 0, "%s.bias", prefix);
  add(b, 1, c, 0, 0, 0, "%s.running_mean", prefix);
  add(b, 1, c, 0, 0, 0, "%s.running_var", prefix);
  b->tensors[b->n] = (qt_safetensors_tensor){NULL, QT_DTYPE_I64, 0, NULL, NULL, zeros};
  snprintf(b->names[b->n], sizeof b->names[b->n], "%s.num_batches_tracked", prefix);
  b->tensors[b->n].name = b->names[b->n];
  b->n++;
}

/* A ResNet with one basic block per stage, channels 4, 8, 8, 16. */
static void build_resnet(builder *b, size_t classes) {
  memset(b, 0, sizeof *b);
  const size_t channels[] = {4, 8, 8, 16};
  add(b, 4, 4, 3, 7, 7, "conv1.weight");
  add_bn(b, 4, "bn1");
  size_t in = 4;
  char prefix[64];
  for (int layer = 1; layer <= 4; layer++) {
    size_t out = channels[layer - 1];
    add(b, 4, out, in, 3, 3, "layer%d.0.conv1.weight", layer);
    snprintf(prefix, sizeof prefix, "layer%d.0.bn1", layer);
    add_bn(b, out, prefix);
    add(b, 4, out, out, 3, 3, "layer%d.0.conv2.weight", layer);
    snprintf(prefix, sizeof prefix, "layer%d.0.bn2", layer);
    add_bn(b, out, prefix);
    if (in != out || layer > 1) {
      add(b, 4, out, in, 1, 1, "layer%d.0.downsample.0.weight", layer);
      snprintf(prefix, sizeof prefix, "layer%d.0.downsample.1", layer);
      add_bn(b, out, prefix);
    }
    in = out;
  }
  add(b, 2, classes, 16, 0, 0, "fc.weight");
  add(b, 1, classes, 0, 0, 0, "fc.bias");
}

/* timm's EfficientNet builder: a depthwise-separable block and an inverted
 * residual one, with squeeze-and-excitation when se is set. */
static void build_efficientnet(builder *b, int se, size_t classes) {
  memset(b, 0, sizeof *b);
  add(b, 4, 4, 3, 3, 3, "conv_stem.weight");
  add_bn(b, 4, "bn1");
  add(b, 4, 4, 1, 3, 3, "blocks.0.0.conv_dw.weight");
  add_bn(b, 4, "blocks.0.0.bn1");
  if (se) {
    add(b, 4, 2, 4, 1, 1, "blocks.0.0.se.conv_reduce.weight");
    add(b, 1, 2, 0, 0, 0, "blocks.0.0.se.conv_reduce.bias");
    add(b, 4, 4, 2, 1, 1, "blocks.0.0.se.conv_expand.weight");
    add(b, 1, 4, 0, 0, 0, "blocks.0.0.se.conv_expand.bias");
  }
  add(b, 4, 6, 4, 1, 1, "blocks.0.0.conv_pw.weight");
  add_bn(b, 6, "blocks.0.0.bn2");
  add(b, 4, 12, 6, 1, 1, "blocks.1.0.conv_pw.weight");
  add_bn(b, 12, "blocks.1.0.bn1");
  add(b, 4, 12, 1, 5, 5, "blocks.1.0.conv_dw.weight");
  add_bn(b, 12, "blocks.1.0.bn2");
  add(b, 4, 8, 12, 1, 1, "blocks.1.0.conv_pwl.weight");
  add_bn(b, 8, "blocks.1.0.bn3");
  add(b, 4, 16, 8, 1, 1, "conv_head.weight");
  add_bn(b, 16, "bn2");
  add(b, 2, classes, 16, 0, 0, "classifier.weight");
  add(b, 1, classes, 0, 0, 0, "classifier.bias");
}

static void write_checkpoint(const builder *b, const char *name) {
  char path[512];
  qt_err err;
  CU_ASSERT_PTR_NOT_NULL_FATAL(qt_test_temp_path(name, path, sizeof path));
  int rc = qt_safetensors_write(path, b->tensors, b->n, NULL, 0, &err);
  if (rc != 0) fprintf(stderr, "\n  %s\n", err.msg);
  CU_ASSERT_EQUAL_FATAL(rc, 0);
}

/* What the hub entry of the tests says: a ViT for 8 px images, 3 classes. */
static qt_model_expect vit_expect(void) {
  qt_model_expect e = qt_model_expect_any();
  e.image_size = 8;
  e.num_classes = 3;
  return e;
}

/* Checks the temporary file `name` as `family` against *expect: expected
 * NULL means success, otherwise the message must contain it, and always
 * start with "checkpoint <path>". */
static void expect_check(const char *name, qt_model_family family, const qt_model_expect *expect,
                         int code, const char *expected, qt_model_summary *summary) {
  char path[512], prefix[600];
  qt_test_temp_path(name, path, sizeof path);
  snprintf(prefix, sizeof prefix, "checkpoint %s", path);
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_model_inspect(path, family, expect, summary, &err);
  CU_ASSERT_EQUAL(rc, code);
  if (rc != code) fprintf(stderr, "\n  check: %d %s\n", rc, err.msg);
  if (expected && (!strstr(err.msg, expected) || strncmp(err.msg, prefix, strlen(prefix)) != 0)) {
    fprintf(stderr, "\n  message '%s' lacks '%s'\n", err.msg, expected);
    CU_FAIL("check message");
  }
}

/* ------------------------------------------------------------------------- */
/* Families                                                                   */
/* ------------------------------------------------------------------------- */

/* The engine knows a layout for every family name the hub accepts. */
static void test_family_names(void) {
  const char *names[] = {"vit", "deit", "deit3", "mobilenetv2", "efficientnet", "resnet", "mlp"};
  for (int f = 0; f < (int)COUNT_OF(names); f++) {
    qt_model_family family;
    CU_ASSERT_STRING_EQUAL(qt_model_family_name((qt_model_family)f), names[f]);
    CU_ASSERT_EQUAL(qt_model_family_parse(names[f], &family), 0);
    CU_ASSERT_EQUAL((int)family, f);
    CU_ASSERT(qt_hub_family_known(names[f]));
    CU_ASSERT_EQUAL(qt_model_family_is_vit(family), qt_hub_family_is_vit(names[f]));
  }
  CU_ASSERT(qt_model_family_is_vit(QT_MODEL_FAMILY_DEIT3));
  CU_ASSERT(!qt_model_family_is_vit(QT_MODEL_FAMILY_MLP));
  qt_model_family family;
  CU_ASSERT_EQUAL(qt_model_family_parse("ViT", &family), QT_EINVAL);
  CU_ASSERT(!qt_hub_family_known("ViT"));
  CU_ASSERT_STRING_EQUAL(qt_model_family_name((qt_model_family)99), "unknown");
}

/* ------------------------------------------------------------------------- */
/* Checking checkpoints                                                       */
/* ------------------------------------------------------------------------- */

/* The committed checkpoint fits the tiny fixture hub's entry: 20 tensors,
 * 1355 parameters counted by hand (patch 392, tokens 48, block 872, norm 16,
 * head 27). */
static void test_tiny_fixture(void) {
  qt_model_expect e = vit_expect();
  e.patch_size = 4;
  e.heads = 2;
  e.parameters = 1355;
  e.depth = 1;
  e.width = 8;
  qt_model_summary summary;
  qt_err err;
  int rc = qt_model_inspect(TINY_VIT, QT_MODEL_FAMILY_VIT, &e, &summary, &err);
  if (rc != 0) fprintf(stderr, "\n  %s\n", err.msg);
  CU_ASSERT_EQUAL(rc, 0);
  CU_ASSERT_EQUAL(summary.tensors, 20);
  CU_ASSERT_EQUAL(summary.parameters, 1355);
  CU_ASSERT_EQUAL(summary.depth, 1);
  CU_ASSERT_EQUAL(summary.width, 8);
  CU_ASSERT_EQUAL(summary.patch_size, 4);
  CU_ASSERT_EQUAL(summary.image_size, 8);
  CU_ASSERT_EQUAL(summary.num_classes, 3);
  CU_ASSERT_EQUAL(summary.mlp_hidden, 32);
  CU_ASSERT_EQUAL(summary.layer_scale, 0);
  CU_ASSERT_EQUAL(summary.distilled, 0);
  CU_ASSERT_EQUAL(summary.no_embed_class, 0);
  CU_ASSERT_EQUAL(summary.qkv_bias, 1);
  CU_ASSERT_EQUAL(summary.patch_bias, 1);
  /* Expecting nothing (NULL or "any") infers the same. */
  qt_model_summary inferred;
  CU_ASSERT_EQUAL(qt_model_inspect(TINY_VIT, QT_MODEL_FAMILY_VIT, NULL, &inferred, &err), 0);
  CU_ASSERT_EQUAL(memcmp(&inferred, &summary, sizeof summary), 0);
  CU_ASSERT_EQUAL(qt_model_inspect(TINY_VIT, QT_MODEL_FAMILY_VIT, NULL, NULL, &err), 0);
  /* The same file opened by the caller. */
  qt_safetensors_t *st = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_safetensors_open(TINY_VIT, &st, &err), 0);
  CU_ASSERT_EQUAL(qt_model_inspect_open(st, QT_MODEL_FAMILY_VIT, &e, &inferred, &err), 0);
  CU_ASSERT_EQUAL(inferred.parameters, 1355);
  qt_safetensors_free(st);
}

static void test_check_vit_mismatches(void) {
  builder b;
  qt_model_expect e = vit_expect();
  e.patch_size = 4;
  e.depth = 2;
  e.width = 8;
  qt_model_summary summary;

  /* The layout the hub describes: two blocks. */
  build_vit(&b, 8, 4, 2, 2, 3, 1, 0, 0);
  write_checkpoint(&b, "m.safetensors");
  expect_check("m.safetensors", QT_MODEL_FAMILY_VIT, &e, 0, NULL, &summary);
  CU_ASSERT_EQUAL(summary.depth, 2);

  /* A head for 5 classes. */
  build_vit(&b, 8, 4, 2, 2, 5, 1, 0, 0);
  write_checkpoint(&b, "m.safetensors");
  expect_check("m.safetensors", QT_MODEL_FAMILY_VIT, &e, QT_ESCHEMA,
               "the head 'head.weight' has 5 classes but the hub says num_classes 3", NULL);
  /* Pretrained on 16 px images (a 4x4 grid). */
  build_vit(&b, 8, 4, 4, 2, 3, 1, 0, 0);
  write_checkpoint(&b, "m.safetensors");
  expect_check("m.safetensors", QT_MODEL_FAMILY_VIT, &e, QT_ESCHEMA,
               "pos_embed holds a 4x4 grid of 4-pixel patches (image_size 16) but "
               "the hub says image_size 8",
               &summary);
  CU_ASSERT_EQUAL(summary.image_size, 16);
  /* 2-pixel patches. */
  build_vit(&b, 8, 2, 4, 2, 3, 1, 0, 0);
  write_checkpoint(&b, "m.safetensors");
  expect_check("m.safetensors", QT_MODEL_FAMILY_VIT, &e, QT_ESCHEMA,
               "patch size 2 (patch_embed.proj.weight) but the hub says patch_size 4", NULL);
  /* One block only, against the descriptor. */
  build_vit(&b, 8, 4, 2, 1, 3, 1, 0, 0);
  write_checkpoint(&b, "m.safetensors");
  expect_check("m.safetensors", QT_MODEL_FAMILY_VIT, &e, QT_ESCHEMA,
               "depth 1 but the hub's descriptors say 2", NULL);
  /* A missing tensor, a wrong shape, an unknown tensor, a gap in blocks. */
  build_vit(&b, 8, 4, 2, 2, 3, 1, 0, 0);
  drop(&b, "blocks.1.attn.proj.weight");
  write_checkpoint(&b, "m.safetensors");
  expect_check("m.safetensors", QT_MODEL_FAMILY_VIT, &e, QT_ESCHEMA,
               "missing tensor 'blocks.1.attn.proj.weight' (family vit)", NULL);
  build_vit(&b, 8, 4, 2, 2, 3, 1, 0, 0);
  b.shapes[6][0] = 16; /* blocks.0.attn.qkv.weight: [16, 8] */
  CU_ASSERT_STRING_EQUAL(b.names[6], "blocks.0.attn.qkv.weight");
  write_checkpoint(&b, "m.safetensors");
  expect_check("m.safetensors", QT_MODEL_FAMILY_VIT, &e, QT_ESCHEMA,
               "tensor 'blocks.0.attn.qkv.weight' has shape [16, 8], expected [24, 8]", NULL);
  build_vit(&b, 8, 4, 2, 2, 3, 1, 0, 0);
  add(&b, 1, 8, 0, 0, 0, "fc_norm.weight");
  write_checkpoint(&b, "m.safetensors");
  expect_check("m.safetensors", QT_MODEL_FAMILY_VIT, &e, QT_ESCHEMA,
               "unexpected tensor 'fc_norm.weight' for family vit", NULL);
  build_vit(&b, 8, 4, 2, 2, 3, 1, 0, 0);
  add(&b, 1, 8, 0, 0, 0, "blocks.3.norm1.weight");
  write_checkpoint(&b, "m.safetensors");
  expect_check("m.safetensors", QT_MODEL_FAMILY_VIT, &e, QT_ESCHEMA,
               "tensor 'blocks.3.norm1.weight' does not follow blocks.0 .. blocks.1 "
               "without a gap",
               NULL);
  /* A qkv bias in one block only. */
  build_vit(&b, 8, 4, 2, 2, 3, 1, 0, 0);
  drop(&b, "blocks.1.attn.qkv.bias");
  write_checkpoint(&b, "m.safetensors");
  expect_check("m.safetensors", QT_MODEL_FAMILY_VIT, &e, QT_ESCHEMA,
               "the qkv bias (blocks.N.attn.qkv.bias) must be in every block or none; block 1 "
               "differs",
               NULL);
  /* Heads that do not divide the width. */
  build_vit(&b, 8, 4, 2, 2, 3, 1, 0, 0);
  write_checkpoint(&b, "m.safetensors");
  qt_model_expect heads = e;
  heads.heads = 3;
  expect_check("m.safetensors", QT_MODEL_FAMILY_VIT, &heads, QT_ESCHEMA,
               "3 heads do not divide the width 8", NULL);
  /* Without an expected image size, the grid must still be square. */
  build_vit(&b, 8, 4, 2, 2, 3, 1, 0, 0);
  for (size_t i = 0; i < b.n; i++) {
    if (strcmp(b.names[i], "pos_embed") == 0) b.shapes[i][1] = 7;
  }
  write_checkpoint(&b, "m.safetensors");
  qt_model_expect any = qt_model_expect_any();
  expect_check("m.safetensors", QT_MODEL_FAMILY_VIT, &any, QT_ESCHEMA,
               "pos_embed has 7 positions, which is no square grid (+1 tokens)", NULL);
  /* Not a safetensors file at all, and a missing one. */
  char path[512];
  FILE *f = fopen(qt_test_temp_path("m.safetensors", path, sizeof path), "wb");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  fputs("this is not a checkpoint", f);
  fclose(f);
  expect_check("m.safetensors", QT_MODEL_FAMILY_VIT, &e, QT_EFORMAT, "header length", NULL);
  unlink(path);
  expect_check("m.safetensors", QT_MODEL_FAMILY_VIT, &e, QT_ENOENT,
               "m.safetensors does not exist (not fetched yet?)", NULL);
}

static void test_check_vit_variants(void) {
  builder b;
  qt_model_summary summary;
  qt_model_expect e = vit_expect();
  /* DeiT III: layer scale, no position embedding for the class token. */
  build_vit(&b, 8, 4, 2, 2, 3, 0, 1, 0);
  write_checkpoint(&b, "deit3.safetensors");
  expect_check("deit3.safetensors", QT_MODEL_FAMILY_DEIT3, &e, 0, NULL, &summary);
  CU_ASSERT_EQUAL(summary.layer_scale, 1);
  CU_ASSERT_EQUAL(summary.image_size, 8);
  CU_ASSERT_EQUAL(summary.no_embed_class, 1);
  /* Layer scale in one block only. */
  drop(&b, "blocks.1.ls2.gamma");
  write_checkpoint(&b, "deit3.safetensors");
  expect_check("deit3.safetensors", QT_MODEL_FAMILY_DEIT3, &e, QT_ESCHEMA, "block 1 differs", NULL);
  /* deit3 requires layer scale. */
  build_vit(&b, 8, 4, 2, 2, 3, 0, 0, 0);
  write_checkpoint(&b, "deit3.safetensors");
  expect_check("deit3.safetensors", QT_MODEL_FAMILY_DEIT3, &e, QT_ESCHEMA,
               "missing tensor 'blocks.0.ls1.gamma' (deit3 blocks have layer scale)", NULL);
  /* Distilled DeiT: a second token and a second head. */
  build_vit(&b, 8, 4, 2, 1, 3, 1, 0, 1);
  write_checkpoint(&b, "deit.safetensors");
  expect_check("deit.safetensors", QT_MODEL_FAMILY_DEIT, &e, 0, NULL, &summary);
  CU_ASSERT_EQUAL(summary.distilled, 1);
  drop(&b, "head_dist.bias");
  write_checkpoint(&b, "deit.safetensors");
  expect_check("deit.safetensors", QT_MODEL_FAMILY_DEIT, &e, QT_ESCHEMA,
               "missing tensor 'head_dist.bias'", NULL);
  /* A headless checkpoint (num_classes 0) and a count of parameters. */
  build_vit(&b, 8, 4, 2, 1, 0, 1, 0, 0);
  write_checkpoint(&b, "headless.safetensors");
  qt_model_expect headless = vit_expect();
  headless.num_classes = 0;
  headless.parameters = 1328;
  expect_check("headless.safetensors", QT_MODEL_FAMILY_VIT, &headless, 0, NULL, &summary);
  CU_ASSERT_EQUAL(summary.parameters, 1328); /* 1355 - the 27 of the head */
  CU_ASSERT_EQUAL(summary.num_classes, 0);
  headless.parameters = 1500;
  expect_check("headless.safetensors", QT_MODEL_FAMILY_VIT, &headless, QT_ESCHEMA,
               "1328 parameters but the hub's descriptors say 1500 (more than 5% off)", NULL);
  /* A head where none is expected has the wrong number of classes. */
  build_vit(&b, 8, 4, 2, 1, 3, 1, 0, 0);
  write_checkpoint(&b, "m.safetensors");
  headless.parameters = 0;
  expect_check("m.safetensors", QT_MODEL_FAMILY_VIT, &headless, QT_ESCHEMA,
               "the head 'head.weight' has 3 classes but the hub says num_classes 0", NULL);
  /* The family must fit the file: a ViT checkpoint is no ResNet. */
  expect_check("m.safetensors", QT_MODEL_FAMILY_RESNET, &e, QT_ESCHEMA,
               "missing tensor 'conv1.weight' (family resnet)", NULL);
}

static void test_check_cnn_families(void) {
  builder b;
  qt_model_summary summary;
  qt_model_expect e = qt_model_expect_any();
  e.image_size = 32;
  e.num_classes = 7;
  /* ResNet: 4 stages of one basic block: depth 2 + 4 * 2 = 10. */
  build_resnet(&b, 7);
  write_checkpoint(&b, "resnet.safetensors");
  expect_check("resnet.safetensors", QT_MODEL_FAMILY_RESNET, &e, 0, NULL, &summary);
  CU_ASSERT_EQUAL(summary.depth, 10);
  CU_ASSERT_EQUAL(summary.width, 16);
  CU_ASSERT_EQUAL(summary.num_classes, 7);
  CU_ASSERT_EQUAL(summary.patch_size, 0);
  /* Batch-norm statistics are not parameters. */
  double statistics = 0;
  for (size_t i = 0; i < b.n; i++) {
    if (strstr(b.names[i], "running_") || strstr(b.names[i], "num_batches")) {
      size_t numel = 1;
      for (size_t d = 0; d < b.tensors[i].ndim; d++) numel *= b.shapes[i][d];
      statistics += (double)numel;
    }
  }
  double all = 0;
  for (size_t i = 0; i < b.n; i++) {
    size_t numel = 1;
    for (size_t d = 0; d < b.tensors[i].ndim; d++) numel *= b.shapes[i][d];
    all += (double)numel;
  }
  CU_ASSERT_EQUAL(summary.parameters, all - statistics);
  qt_model_expect ten = e;
  ten.num_classes = 10;
  expect_check("resnet.safetensors", QT_MODEL_FAMILY_RESNET, &ten, QT_ESCHEMA,
               "the head 'fc.weight' has 7 classes but the hub says num_classes 10", NULL);
  /* Channels change (8 -> 16 in layer4) without a shortcut convolution. */
  drop(&b, "layer4.0.downsample.0.weight");
  write_checkpoint(&b, "resnet.safetensors");
  expect_check("resnet.safetensors", QT_MODEL_FAMILY_RESNET, &e, QT_ESCHEMA,
               "block layer4.0 turns 8 channels into 16 but has no downsample.0.weight", NULL);
  build_resnet(&b, 7);
  drop(&b, "layer2.0.bn2.running_var");
  write_checkpoint(&b, "resnet.safetensors");
  expect_check("resnet.safetensors", QT_MODEL_FAMILY_RESNET, &e, QT_ESCHEMA,
               "missing tensor 'layer2.0.bn2.running_var'", NULL);
  /* A convolution that does not chain: layer3 fed 4 channels instead of 8. */
  build_resnet(&b, 7);
  for (size_t i = 0; i < b.n; i++) {
    if (strcmp(b.names[i], "layer3.0.conv1.weight") == 0) b.shapes[i][1] = 4;
  }
  write_checkpoint(&b, "resnet.safetensors");
  expect_check("resnet.safetensors", QT_MODEL_FAMILY_RESNET, &e, QT_ESCHEMA,
               "tensor 'layer3.0.conv1.weight' has shape [8, 4, 3, 3], expected [*, 8, *, *]",
               NULL);

  /* EfficientNet: two blocks, SE in both kinds. */
  e.num_classes = 5;
  build_efficientnet(&b, 1, 5);
  write_checkpoint(&b, "effnet.safetensors");
  expect_check("effnet.safetensors", QT_MODEL_FAMILY_EFFICIENTNET, &e, 0, NULL, &summary);
  CU_ASSERT_EQUAL(summary.depth, 2);
  CU_ASSERT_EQUAL(summary.width, 16);
  /* The same file is no MobileNetV2 (which has no SE), but without SE it is. */
  expect_check(
      "effnet.safetensors", QT_MODEL_FAMILY_MOBILENETV2, &e, QT_ESCHEMA,
      "tensor 'blocks.0.0.se.conv_reduce.weight': mobilenetv2 has no squeeze-and-excitation", NULL);
  build_efficientnet(&b, 0, 5);
  write_checkpoint(&b, "mnv2.safetensors");
  expect_check("mnv2.safetensors", QT_MODEL_FAMILY_MOBILENETV2, &e, 0, NULL, &summary);
  /* A depthwise convolution with the wrong channel count. */
  for (size_t i = 0; i < b.n; i++) {
    if (strcmp(b.names[i], "blocks.1.0.conv_dw.weight") == 0) b.shapes[i][0] = 10;
  }
  write_checkpoint(&b, "mnv2.safetensors");
  expect_check("mnv2.safetensors", QT_MODEL_FAMILY_MOBILENETV2, &e, QT_ESCHEMA,
               "tensor 'blocks.1.0.conv_dw.weight' has shape [10, 1, 5, 5], expected [12, 1, *, *]",
               NULL);
  /* An input convolution for grayscale images. */
  build_efficientnet(&b, 0, 5);
  b.shapes[0][1] = 1;
  write_checkpoint(&b, "mnv2.safetensors");
  expect_check("mnv2.safetensors", QT_MODEL_FAMILY_MOBILENETV2, &e, QT_ESCHEMA,
               "tensor 'conv_stem.weight' has shape [4, 1, 3, 3], expected [*, 3, *, *]", NULL);
}

static void test_check_mlp(void) {
  builder b;
  memset(&b, 0, sizeof b);
  add(&b, 2, 16, 5, 0, 0, "blocks.0.fc.weight");
  add(&b, 1, 16, 0, 0, 0, "blocks.0.fc.bias");
  add(&b, 1, 16, 0, 0, 0, "blocks.0.norm.weight");
  add(&b, 1, 16, 0, 0, 0, "blocks.0.norm.bias");
  add(&b, 2, 8, 16, 0, 0, "blocks.1.fc.weight");
  add(&b, 1, 8, 0, 0, 0, "blocks.1.fc.bias");
  add(&b, 2, 3, 8, 0, 0, "head.weight");
  add(&b, 1, 3, 0, 0, 0, "head.bias");
  write_checkpoint(&b, "mlp.safetensors");
  qt_model_expect e = qt_model_expect_any();
  e.num_classes = 3;
  e.depth = 2;
  e.width = 8;
  qt_model_summary summary;
  expect_check("mlp.safetensors", QT_MODEL_FAMILY_MLP, &e, 0, NULL, &summary);
  CU_ASSERT_EQUAL(summary.depth, 2);
  CU_ASSERT_EQUAL(summary.parameters, 16 * 5 + 16 + 32 + 8 * 16 + 8 + 3 * 8 + 3);
  b.shapes[4][1] = 12; /* blocks.1.fc.weight: [8, 12] does not take 16 features */
  write_checkpoint(&b, "mlp.safetensors");
  expect_check("mlp.safetensors", QT_MODEL_FAMILY_MLP, &e, QT_ESCHEMA,
               "tensor 'blocks.1.fc.weight' has shape [8, 12], expected [*, 16]", NULL);
}

static const qt_test_case cases[] = {
    {"family names agree with the hub's", test_family_names},
    {"the tiny fixture: inferred dimensions", test_tiny_fixture},
    {"ViT checkpoint mismatches", test_check_vit_mismatches},
    {"DeiT, DeiT III, headless, wrong family", test_check_vit_variants},
    {"ResNet, EfficientNet, MobileNetV2 layouts", test_check_cnn_families},
    {"MLP layout", test_check_mlp},
    {NULL, NULL}};

QT_TEST_MAIN("finetune_layout", cases)

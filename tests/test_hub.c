/*
 * test_hub.c - model hubs: loading and strict validation of hub YAML, path
 * variables, and checking checkpoints against their family's timm layout.
 *
 * The positive path uses the committed fixtures (tests/fixtures/hubs/tiny.yaml
 * and the ViT it points at); mismatching checkpoints are written by the test
 * with qt_safetensors_write into a temporary folder. Expected line:column
 * positions were counted by hand from the YAML texts below.
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
#define TINY_HUB QT_SOURCE_DIR "/tests/fixtures/hubs/tiny.yaml"

/* ------------------------------------------------------------------------- */
/* Helpers                                                                    */
/* ------------------------------------------------------------------------- */

static char temp_dir[64];

static void remove_temp_dir(void) {
  if (!temp_dir[0]) return;
  DIR *dir = opendir(temp_dir);
  struct dirent *entry;
  char path[512];
  while (dir && (entry = readdir(dir)) != NULL) {
    if (entry->d_name[0] == '.') continue;
    snprintf(path, sizeof path, "%s/%s", temp_dir, entry->d_name);
    unlink(path);
  }
  if (dir) closedir(dir);
  rmdir(temp_dir);
}

static const char *temp_path(const char *name, char *buf, size_t size) {
  if (!temp_dir[0]) {
    snprintf(temp_dir, sizeof temp_dir, "/tmp/qt_test_hub_XXXXXX");
    if (!mkdtemp(temp_dir)) {
      temp_dir[0] = '\0';
      return NULL;
    }
    atexit(remove_temp_dir);
  }
  snprintf(buf, size, "%s/%s", temp_dir, name);
  return buf;
}

/* Loads a hub from text, named as a file in the temporary folder so that
 * relative checkpoints resolve there. */
static int load(const char *text, qt_hub_t **hub, qt_err *err) {
  char name[512];
  temp_path("hub.yaml", name, sizeof name);
  qt_err_clear(err);
  return qt_hub_load_string(text, strlen(text), name, hub, err);
}

/* The hub text must fail with code and exactly "<temp>/hub.yaml:" + expected. */
static void expect_load_error(const char *text, int code, const char *expected) {
  qt_hub_t *hub = (qt_hub_t *)&hub;
  qt_err err;
  int rc = load(text, &hub, &err);
  CU_ASSERT_EQUAL(rc, code);
  CU_ASSERT_PTR_NULL(hub);
  char want[1200];
  snprintf(want, sizeof want, "%s/hub.yaml:%s", temp_dir, expected);
  if (strcmp(err.msg, want) != 0) {
    fprintf(stderr, "\n  got      %s\n  expected %s\n", err.msg, want);
    CU_FAIL("error message");
  }
}

/* A one-model hub: the header, then the model's keys (indented by the
 * caller as "    key: value\n"). */
static const char *hub_text(const char *model_keys) {
  static char text[4096];
  snprintf(text, sizeof text,
           "version: 1\n"
           "name: t\n"
           "models:\n"
           "  - name: m\n"
           "%s",
           model_keys);
  return text;
}

#define VIT_KEYS(extra)             \
  "    family: vit\n"               \
  "    checkpoint: m.safetensors\n" \
  "    image_size: 8\n"             \
  "    mean: [0.5, 0.5, 0.5]\n"     \
  "    std: [0.5, 0.5, 0.5]\n"      \
  "    num_classes: 3\n" extra

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
  CU_ASSERT_PTR_NOT_NULL_FATAL(temp_path(name, path, sizeof path));
  int rc = qt_safetensors_write(path, b->tensors, b->n, NULL, 0, &err);
  if (rc != 0) fprintf(stderr, "\n  %s\n", err.msg);
  CU_ASSERT_EQUAL_FATAL(rc, 0);
}

/* Loads the one-model hub text, checks model 0 and compares the outcome:
 * expected NULL means success, otherwise the message must contain it (and
 * always the model's name). */
static void expect_check(const char *text, int code, const char *expected,
                         qt_hub_checkpoint_summary *summary) {
  qt_hub_t *hub = NULL;
  qt_err err;
  int rc = load(text, &hub, &err);
  if (rc != 0) fprintf(stderr, "\n  load: %s\n", err.msg);
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  qt_err_clear(&err);
  rc = qt_hub_inspect_model(hub, 0, summary, &err);
  CU_ASSERT_EQUAL(rc, code);
  if (rc != code) fprintf(stderr, "\n  check: %d %s\n", rc, err.msg);
  if (expected && (!strstr(err.msg, expected) || !strstr(err.msg, "model 'm'"))) {
    fprintf(stderr, "\n  message '%s' lacks '%s'\n", err.msg, expected);
    CU_FAIL("check message");
  }
  qt_hub_free(hub);
}

/* ------------------------------------------------------------------------- */
/* Loading                                                                    */
/* ------------------------------------------------------------------------- */

static void test_family_names(void) {
  const char *names[] = {"vit", "deit", "deit3", "mobilenetv2", "efficientnet", "resnet", "mlp"};
  for (int f = 0; f < (int)COUNT_OF(names); f++) {
    qt_model_family family;
    CU_ASSERT_STRING_EQUAL(qt_model_family_name((qt_model_family)f), names[f]);
    CU_ASSERT_EQUAL(qt_model_family_parse(names[f], &family), 0);
    CU_ASSERT_EQUAL((int)family, f);
  }
  qt_model_family family;
  CU_ASSERT_EQUAL(qt_model_family_parse("ViT", &family), QT_EINVAL);
  CU_ASSERT_STRING_EQUAL(qt_model_family_name((qt_model_family)99), "unknown");
}

static void test_load_tiny_fixture(void) {
  qt_hub_t *hub = NULL;
  qt_err err;
  int rc = qt_hub_load_file(TINY_HUB, &hub, &err);
  if (rc != 0) fprintf(stderr, "\n  %s\n", err.msg);
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT_STRING_EQUAL(qt_hub_name(hub), "tiny");
  CU_ASSERT_STRING_EQUAL(qt_hub_description(hub), "test fixture");
  CU_ASSERT_STRING_EQUAL(qt_hub_source(hub), TINY_HUB);
  CU_ASSERT_EQUAL_FATAL(qt_hub_count(hub), 1);
  const qt_hub_model *m = qt_hub_model_at(hub, 0);
  CU_ASSERT_STRING_EQUAL(m->name, "vit_tiny_fixture");
  CU_ASSERT_EQUAL(m->family, QT_MODEL_FAMILY_VIT);
  CU_ASSERT_STRING_EQUAL(m->checkpoint_text, "../safetensors/vit_tiny.safetensors");
  CU_ASSERT_STRING_EQUAL(m->checkpoint,
                         QT_SOURCE_DIR "/tests/fixtures/hubs/../safetensors/vit_tiny.safetensors");
  CU_ASSERT_EQUAL(m->image_size, 8);
  CU_ASSERT_EQUAL(m->mean[2], 0.5);
  CU_ASSERT_EQUAL(m->std[0], 0.5);
  CU_ASSERT_EQUAL(m->num_classes, 3);
  CU_ASSERT_EQUAL(m->patch_size, 4);
  CU_ASSERT_EQUAL(m->heads, 2);
  CU_ASSERT_EQUAL(m->parameters, 1355);
  CU_ASSERT_EQUAL(m->depth, 1);
  CU_ASSERT_EQUAL(m->width, 8);
  CU_ASSERT(isnan(m->pretrain_top1));
  CU_ASSERT_EQUAL(m->line, 8);
  CU_ASSERT_EQUAL(m->column, 5);
  size_t index = 7;
  CU_ASSERT_EQUAL(qt_hub_find(hub, "vit_tiny_fixture", &index), 0);
  CU_ASSERT_EQUAL(index, 0);
  CU_ASSERT_EQUAL(qt_hub_find(hub, "other", &index), QT_ENOENT);

  /* The committed checkpoint fits: 20 tensors, 1355 parameters counted by
   * hand (patch 392, tokens 48, block 872, norm 16, head 27). */
  qt_hub_checkpoint_summary summary;
  rc = qt_hub_inspect_model(hub, 0, &summary, &err);
  if (rc != 0) fprintf(stderr, "\n  %s\n", err.msg);
  CU_ASSERT_EQUAL(rc, 0);
  CU_ASSERT_EQUAL(summary.tensors, 20);
  CU_ASSERT_EQUAL(summary.parameters, 1355);
  CU_ASSERT_EQUAL(summary.depth, 1);
  CU_ASSERT_EQUAL(summary.width, 8);
  CU_ASSERT_EQUAL(summary.patch_size, 4);
  CU_ASSERT_EQUAL(summary.image_size, 8);
  CU_ASSERT_EQUAL(summary.num_classes, 3);
  CU_ASSERT_EQUAL(summary.layer_scale, 0);
  CU_ASSERT_EQUAL(summary.distilled, 0);
  CU_ASSERT_EQUAL(qt_hub_check_model(hub, 0, &err), 0);
  qt_hub_free(hub);
  qt_hub_free(NULL);
}

/* The shipped hub loads; its checkpoints are not there yet. */
static void test_default_hub_not_fetched(void) {
  char models[512];
  CU_ASSERT_PTR_NOT_NULL_FATAL(temp_path("no-models-here", models, sizeof models));
  setenv("QTUNE_MODELS", models, 1);
  qt_hub_t *hub = NULL;
  qt_err err;
  int rc = qt_hub_load_file(QT_SOURCE_DIR "/configs/hubs/default.yaml", &hub, &err);
  if (rc != 0) fprintf(stderr, "\n  %s\n", err.msg);
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT(qt_hub_count(hub) >= 3);
  size_t index;
  CU_ASSERT_EQUAL(qt_hub_find(hub, "mobilenetv2_100.nsfwjs", &index), 0);
  const qt_hub_model *m = qt_hub_model_at(hub, index);
  CU_ASSERT_EQUAL(m->family, QT_MODEL_FAMILY_MOBILENETV2);
  CU_ASSERT_EQUAL(m->image_size, 224);
  CU_ASSERT(strncmp(m->checkpoint, models, strlen(models)) == 0);
  for (size_t i = 0; i < qt_hub_count(hub); i++) {
    CU_ASSERT_EQUAL(qt_hub_check_model(hub, i, &err), QT_ENOENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "does not exist (not fetched yet?)"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, qt_hub_model_at(hub, i)->name));
  }
  qt_hub_free(hub);
  unsetenv("QTUNE_MODELS");
}

static void test_checkpoint_variables(void) {
  qt_hub_t *hub = NULL;
  qt_err err;
  setenv("QT_TEST_MODELS", "/models", 1);
  setenv("QT_TEST_EMPTY", "", 1);
  unsetenv("QT_TEST_UNSET");
  const struct {
    const char *checkpoint, *expected;
  } cases[] = {
      {"${QT_TEST_MODELS}/m.safetensors", "/models/m.safetensors"},
      {"${QT_TEST_UNSET:-/cache}/m.safetensors", "/cache/m.safetensors"},
      {"${QT_TEST_EMPTY:-/cache}/m.safetensors", "/cache/m.safetensors"},
      {"${QT_TEST_UNSET:-${QT_TEST_MODELS}/sub}/m.safetensors", "/models/sub/m.safetensors"},
      {"${QT_TEST_MODELS:-${QT_TEST_UNSET}}/m", "/models/m"}, /* unused fallback: no error */
      {"/abs/$HOME/m", "/abs/$HOME/m"},                       /* only ${...} is expanded */
  };
  for (size_t i = 0; i < COUNT_OF(cases); i++) {
    char keys[512];
    snprintf(keys, sizeof keys,
             "    family: mlp\n"
             "    checkpoint: %s\n"
             "    num_classes: 2\n",
             cases[i].checkpoint);
    int rc = load(hub_text(keys), &hub, &err);
    if (rc != 0) fprintf(stderr, "\n  %s\n", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_STRING_EQUAL(qt_hub_model_at(hub, 0)->checkpoint, cases[i].expected);
    qt_hub_free(hub);
  }
  /* A relative result is taken from the hub's folder. */
  CU_ASSERT_EQUAL_FATAL(load(hub_text("    family: mlp\n"
                                      "    checkpoint: ${QT_TEST_UNSET:-sub}/m.safetensors\n"
                                      "    num_classes: 2\n"),
                             &hub, &err),
                        0);
  char want[512];
  snprintf(want, sizeof want, "%s/sub/m.safetensors", temp_dir);
  CU_ASSERT_STRING_EQUAL(qt_hub_model_at(hub, 0)->checkpoint, want);
  qt_hub_free(hub);

  expect_load_error(hub_text("    family: mlp\n"
                             "    checkpoint: ${QT_TEST_UNSET}/m\n"
                             "    num_classes: 2\n"),
                    QT_ESCHEMA,
                    "6:17: environment variable QT_TEST_UNSET is not set (set it, or "
                    "write ${QT_TEST_UNSET:-fallback})");
  expect_load_error(hub_text("    family: mlp\n"
                             "    checkpoint: ${QT_TEST_MODELS/m\n"
                             "    num_classes: 2\n"),
                    QT_ESCHEMA, "6:17: unclosed \"${\" in \"${QT_TEST_MODELS/m\"");
  expect_load_error(hub_text("    family: mlp\n"
                             "    checkpoint: ${QT TEST}/m\n"
                             "    num_classes: 2\n"),
                    QT_ESCHEMA,
                    "6:17: bad variable \"${QT TEST}\" (write ${NAME} or "
                    "${NAME:-fallback})");
  expect_load_error(hub_text("    family: mlp\n"
                             "    checkpoint: ${QT_TEST_EMPTY}\n"
                             "    num_classes: 2\n"),
                    QT_ESCHEMA,
                    "6:17: environment variable QT_TEST_EMPTY is not set (set it, or "
                    "write ${QT_TEST_EMPTY:-fallback})");
  unsetenv("QT_TEST_MODELS");
  unsetenv("QT_TEST_EMPTY");
}

static void test_top_level_errors(void) {
  expect_load_error("name: t\nmodels: []\n", QT_ESCHEMA,
                    "1:1: missing required key \"version\" (this qtune reads version 1)");
  expect_load_error("version: 2\nname: t\n", QT_EVERSION,
                    "1:10: unsupported hub version 2 (this qtune reads version 1)");
  expect_load_error("version: 1\nname: t\nmodel: []\n", QT_ESCHEMA,
                    "3:1: unknown key \"model\" (allowed: version, name, description, models)");
  expect_load_error("version: 1\nname: t\nmodels: []\n", QT_ESCHEMA,
                    "3:9: models must be a non-empty list");
  expect_load_error("version: 1\nmodels: [{}]\n", QT_ESCHEMA, "1:1: missing required key \"name\"");
  expect_load_error("- 1\n", QT_ESCHEMA,
                    "1:1: a model hub must be a mapping with version, name and models");
  expect_load_error("version: 1\nname: t\nmodels: [3]\n", QT_ESCHEMA,
                    "3:10: a model must be a mapping with name, family, checkpoint, ...");
  /* YAML syntax errors come from the parser, as QT_EPARSE. */
  qt_hub_t *hub = NULL;
  qt_err err;
  CU_ASSERT_EQUAL(load("version: 1\nname: [\n", &hub, &err), QT_EPARSE);
  CU_ASSERT_PTR_NULL(hub);
  CU_ASSERT_EQUAL(qt_hub_load_file("/nonexistent/hub.yaml", &hub, &err), QT_ENOENT);
}

static void test_model_errors(void) {
  expect_load_error(hub_text("    family: vit\n"), QT_ESCHEMA,
                    "4:5: missing required key \"checkpoint\"");
  expect_load_error(hub_text("    family: convnext\n"
                             "    checkpoint: m\n"
                             "    num_classes: 2\n"),
                    QT_ESCHEMA,
                    "5:13: unknown family \"convnext\" (expected vit, deit, deit3, "
                    "mobilenetv2, efficientnet, resnet or mlp)");
  expect_load_error(hub_text(VIT_KEYS("    colour: red\n")), QT_ESCHEMA,
                    "11:5: unknown key \"colour\" (allowed: name, family, checkpoint, image_size, "
                    "mean, std, num_classes, patch_size, heads, descriptors, description)");
  expect_load_error(
      "version: 1\nname: t\nmodels:\n  - name: a b\n    family: mlp\n    checkpoint: x\n    "
      "num_classes: 2\n",
      QT_ESCHEMA, "4:11: model name \"a b\" may hold only letters, digits, '_', '.' and '-'");
  expect_load_error(hub_text("    family: mlp\n"
                             "    checkpoint: m\n"
                             "    num_classes: 2\n"
                             "    image_size: 28\n"),
                    QT_ESCHEMA, "8:17: image_size does not apply to an mlp model (tabular input)");
  expect_load_error(hub_text("    family: vit\n"
                             "    checkpoint: m\n"
                             "    num_classes: 2\n"),
                    QT_ESCHEMA,
                    "4:5: missing required key \"image_size\" (family vit takes images)");
  expect_load_error(hub_text("    family: vit\n"
                             "    checkpoint: m\n"
                             "    image_size: 8\n"
                             "    mean: [0.5, 0.5]\n"
                             "    std: [0.5, 0.5, 0.5]\n"
                             "    num_classes: 2\n"),
                    QT_ESCHEMA, "8:11: mean must be a list of 3 numbers (red, green, blue)");
  expect_load_error(hub_text("    family: vit\n"
                             "    checkpoint: m\n"
                             "    image_size: 8\n"
                             "    mean: [0.5, 0.5, 0.5]\n"
                             "    std: [0.5, 0, 0.5]\n"
                             "    num_classes: 2\n"),
                    QT_ESCHEMA, "9:16: std values must be > 0");
  expect_load_error(hub_text("    family: vit\n"
                             "    checkpoint: m\n"
                             "    image_size: 8\n"
                             "    mean: [0.5, red, 0.5]\n"
                             "    std: [0.5, 0.5, 0.5]\n"
                             "    num_classes: 2\n"),
                    QT_ESCHEMA, "8:17: expected a finite number, got \"red\"");
  expect_load_error(hub_text("    family: mlp\n"
                             "    checkpoint: m\n"
                             "    num_classes: -1\n"),
                    QT_ESCHEMA, "7:18: num_classes must be at least 0, not -1");
  expect_load_error(hub_text("    family: resnet\n"
                             "    checkpoint: m\n"
                             "    image_size: 8\n"
                             "    mean: [0.5, 0.5, 0.5]\n"
                             "    std: [0.5, 0.5, 0.5]\n"
                             "    num_classes: 2\n"
                             "    patch_size: 4\n"),
                    QT_ESCHEMA,
                    "11:17: patch_size applies to the ViT families (vit, deit, deit3), "
                    "not resnet");
  expect_load_error(hub_text(VIT_KEYS("    patch_size: 3\n")), QT_ESCHEMA,
                    "11:17: image_size 8 is not a multiple of patch_size 3");
  expect_load_error(hub_text(VIT_KEYS("    heads: 3\n"
                                      "    descriptors: {width: 8}\n")),
                    QT_ESCHEMA, "11:12: 3 heads do not divide the width 8");
  expect_load_error(hub_text(VIT_KEYS("    descriptors:\n"
                                      "      pretrain_top1: 75.5\n")),
                    QT_ESCHEMA,
                    "12:22: pretrain_top1 is a fraction in [0, 1] (75.5% is 0.755), not "
                    "75.5");
  expect_load_error(hub_text(VIT_KEYS("    descriptors: {layers: 3}\n")), QT_ESCHEMA,
                    "11:19: unknown key \"layers\" (allowed: parameters, depth, width, "
                    "pretrain_dataset, pretrain_top1)");
  expect_load_error(hub_text(VIT_KEYS("    descriptors: {depth: 0}\n")), QT_ESCHEMA,
                    "11:26: depth must be at least 1, not 0");
  expect_load_error(hub_text(VIT_KEYS("    name: again\n")), QT_ESCHEMA,
                    "11:5: duplicate key \"name\" (first at line 4, column 5)");
  expect_load_error(
      "version: 1\nname: t\nmodels:\n"
      "  - {name: a, family: mlp, checkpoint: x, num_classes: 2}\n"
      "  - {name: a, family: mlp, checkpoint: y, num_classes: 2}\n",
      QT_ESCHEMA, "5:12: duplicate model name \"a\" (first at line 4, column 5)");
}

/* ------------------------------------------------------------------------- */
/* Checking checkpoints                                                       */
/* ------------------------------------------------------------------------- */

static void test_check_vit_mismatches(void) {
  builder b;
  const char *hub =
      hub_text(VIT_KEYS("    patch_size: 4\n"
                        "    descriptors: {depth: 2, width: 8}\n"));
  qt_hub_checkpoint_summary summary;

  /* The layout the hub describes: two blocks. */
  build_vit(&b, 8, 4, 2, 2, 3, 1, 0, 0);
  write_checkpoint(&b, "m.safetensors");
  expect_check(hub, 0, NULL, &summary);
  CU_ASSERT_EQUAL(summary.depth, 2);

  /* A head for 5 classes. */
  build_vit(&b, 8, 4, 2, 2, 5, 1, 0, 0);
  write_checkpoint(&b, "m.safetensors");
  expect_check(hub, QT_ESCHEMA,
               "the head 'head.weight' has 5 classes but the hub says num_classes 3", NULL);
  /* Pretrained on 16 px images (a 4x4 grid). */
  build_vit(&b, 8, 4, 4, 2, 3, 1, 0, 0);
  write_checkpoint(&b, "m.safetensors");
  expect_check(hub, QT_ESCHEMA,
               "pos_embed holds a 4x4 grid of 4-pixel patches (image_size 16) but "
               "the hub says image_size 8",
               &summary);
  CU_ASSERT_EQUAL(summary.image_size, 16);
  /* 2-pixel patches. */
  build_vit(&b, 8, 2, 4, 2, 3, 1, 0, 0);
  write_checkpoint(&b, "m.safetensors");
  expect_check(hub, QT_ESCHEMA,
               "patch size 2 (patch_embed.proj.weight) but the hub says patch_size 4", NULL);
  /* One block only, against the descriptor. */
  build_vit(&b, 8, 4, 2, 1, 3, 1, 0, 0);
  write_checkpoint(&b, "m.safetensors");
  expect_check(hub, QT_ESCHEMA, "depth 1 but the hub's descriptors say 2", NULL);
  /* A missing tensor, a wrong shape, an unknown tensor, a gap in blocks. */
  build_vit(&b, 8, 4, 2, 2, 3, 1, 0, 0);
  drop(&b, "blocks.1.attn.proj.weight");
  write_checkpoint(&b, "m.safetensors");
  expect_check(hub, QT_ESCHEMA, "missing tensor 'blocks.1.attn.proj.weight' (family vit)", NULL);
  build_vit(&b, 8, 4, 2, 2, 3, 1, 0, 0);
  b.shapes[6][0] = 16; /* blocks.0.attn.qkv.weight: [16, 8] */
  CU_ASSERT_STRING_EQUAL(b.names[6], "blocks.0.attn.qkv.weight");
  write_checkpoint(&b, "m.safetensors");
  expect_check(hub, QT_ESCHEMA,
               "tensor 'blocks.0.attn.qkv.weight' has shape [16, 8], expected [24, 8]", NULL);
  build_vit(&b, 8, 4, 2, 2, 3, 1, 0, 0);
  add(&b, 1, 8, 0, 0, 0, "fc_norm.weight");
  write_checkpoint(&b, "m.safetensors");
  expect_check(hub, QT_ESCHEMA, "unexpected tensor 'fc_norm.weight' for family vit", NULL);
  build_vit(&b, 8, 4, 2, 2, 3, 1, 0, 0);
  add(&b, 1, 8, 0, 0, 0, "blocks.3.norm1.weight");
  write_checkpoint(&b, "m.safetensors");
  expect_check(hub, QT_ESCHEMA,
               "tensor 'blocks.3.norm1.weight' does not follow blocks.0 .. blocks.1 "
               "without a gap",
               NULL);
  /* Not a safetensors file at all, and a missing one. */
  char path[512];
  FILE *f = fopen(temp_path("m.safetensors", path, sizeof path), "wb");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  fputs("this is not a checkpoint", f);
  fclose(f);
  expect_check(hub, QT_EFORMAT, "header length", NULL);
  unlink(path);
  expect_check(hub, QT_ENOENT, "m.safetensors does not exist (not fetched yet?)", NULL);
}

static void test_check_vit_variants(void) {
  builder b;
  qt_hub_checkpoint_summary summary;
  /* DeiT III: layer scale, no position embedding for the class token. */
  build_vit(&b, 8, 4, 2, 2, 3, 0, 1, 0);
  write_checkpoint(&b, "deit3.safetensors");
  const char *deit3 = hub_text(
      "    family: deit3\n"
      "    checkpoint: deit3.safetensors\n"
      "    image_size: 8\n"
      "    mean: [0.5, 0.5, 0.5]\n"
      "    std: [0.5, 0.5, 0.5]\n"
      "    num_classes: 3\n");
  expect_check(deit3, 0, NULL, &summary);
  CU_ASSERT_EQUAL(summary.layer_scale, 1);
  CU_ASSERT_EQUAL(summary.image_size, 8);
  /* Layer scale in one block only. */
  drop(&b, "blocks.1.ls2.gamma");
  write_checkpoint(&b, "deit3.safetensors");
  expect_check(deit3, QT_ESCHEMA, "block 1 differs", NULL);
  /* deit3 requires layer scale. */
  build_vit(&b, 8, 4, 2, 2, 3, 0, 0, 0);
  write_checkpoint(&b, "deit3.safetensors");
  expect_check(deit3, QT_ESCHEMA,
               "missing tensor 'blocks.0.ls1.gamma' (deit3 blocks have layer scale)", NULL);
  /* Distilled DeiT: a second token and a second head. */
  build_vit(&b, 8, 4, 2, 1, 3, 1, 0, 1);
  write_checkpoint(&b, "deit.safetensors");
  const char *deit = hub_text(
      "    family: deit\n"
      "    checkpoint: deit.safetensors\n"
      "    image_size: 8\n"
      "    mean: [0.5, 0.5, 0.5]\n"
      "    std: [0.5, 0.5, 0.5]\n"
      "    num_classes: 3\n");
  expect_check(deit, 0, NULL, &summary);
  CU_ASSERT_EQUAL(summary.distilled, 1);
  drop(&b, "head_dist.bias");
  write_checkpoint(&b, "deit.safetensors");
  expect_check(deit, QT_ESCHEMA, "missing tensor 'head_dist.bias'", NULL);
  /* A headless checkpoint (num_classes 0) and a count of parameters. */
  build_vit(&b, 8, 4, 2, 1, 0, 1, 0, 0);
  write_checkpoint(&b, "headless.safetensors");
  expect_check(hub_text("    family: vit\n"
                        "    checkpoint: headless.safetensors\n"
                        "    image_size: 8\n"
                        "    mean: [0.5, 0.5, 0.5]\n"
                        "    std: [0.5, 0.5, 0.5]\n"
                        "    num_classes: 0\n"
                        "    descriptors: {parameters: 1328}\n"),
               0, NULL, &summary);
  CU_ASSERT_EQUAL(summary.parameters, 1328); /* 1355 - the 27 of the head */
  expect_check(hub_text("    family: vit\n"
                        "    checkpoint: headless.safetensors\n"
                        "    image_size: 8\n"
                        "    mean: [0.5, 0.5, 0.5]\n"
                        "    std: [0.5, 0.5, 0.5]\n"
                        "    num_classes: 0\n"
                        "    descriptors: {parameters: 1500}\n"),
               QT_ESCHEMA, "1328 parameters but the hub's descriptors say 1500 (more than 5% off)",
               NULL);
  /* The family must fit the file: a ViT checkpoint is no ResNet. */
  build_vit(&b, 8, 4, 2, 1, 3, 1, 0, 0);
  write_checkpoint(&b, "m.safetensors");
  expect_check(hub_text("    family: resnet\n"
                        "    checkpoint: m.safetensors\n"
                        "    image_size: 8\n"
                        "    mean: [0.5, 0.5, 0.5]\n"
                        "    std: [0.5, 0.5, 0.5]\n"
                        "    num_classes: 3\n"),
               QT_ESCHEMA, "missing tensor 'conv1.weight' (family resnet)", NULL);
}

static const char *image_hub(const char *family, const char *checkpoint, int classes) {
  static char keys[512];
  snprintf(keys, sizeof keys,
           "    family: %s\n"
           "    checkpoint: %s\n"
           "    image_size: 32\n"
           "    mean: [0.5, 0.5, 0.5]\n"
           "    std: [0.5, 0.5, 0.5]\n"
           "    num_classes: %d\n",
           family, checkpoint, classes);
  return hub_text(keys);
}

static void test_check_cnn_families(void) {
  builder b;
  qt_hub_checkpoint_summary summary;
  /* ResNet: 4 stages of one basic block: depth 2 + 4 * 2 = 10. */
  build_resnet(&b, 7);
  write_checkpoint(&b, "resnet.safetensors");
  expect_check(image_hub("resnet", "resnet.safetensors", 7), 0, NULL, &summary);
  CU_ASSERT_EQUAL(summary.depth, 10);
  CU_ASSERT_EQUAL(summary.width, 16);
  CU_ASSERT_EQUAL(summary.num_classes, 7);
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
  expect_check(image_hub("resnet", "resnet.safetensors", 10), QT_ESCHEMA,
               "the head 'fc.weight' has 7 classes but the hub says num_classes 10", NULL);
  /* Channels change (8 -> 16 in layer4) without a shortcut convolution. */
  drop(&b, "layer4.0.downsample.0.weight");
  write_checkpoint(&b, "resnet.safetensors");
  expect_check(image_hub("resnet", "resnet.safetensors", 7), QT_ESCHEMA,
               "block layer4.0 turns 8 channels into 16 but has no downsample.0.weight", NULL);
  build_resnet(&b, 7);
  drop(&b, "layer2.0.bn2.running_var");
  write_checkpoint(&b, "resnet.safetensors");
  expect_check(image_hub("resnet", "resnet.safetensors", 7), QT_ESCHEMA,
               "missing tensor 'layer2.0.bn2.running_var'", NULL);
  /* A convolution that does not chain: layer3 fed 4 channels instead of 8. */
  build_resnet(&b, 7);
  for (size_t i = 0; i < b.n; i++) {
    if (strcmp(b.names[i], "layer3.0.conv1.weight") == 0) b.shapes[i][1] = 4;
  }
  write_checkpoint(&b, "resnet.safetensors");
  expect_check(image_hub("resnet", "resnet.safetensors", 7), QT_ESCHEMA,
               "tensor 'layer3.0.conv1.weight' has shape [8, 4, 3, 3], expected [*, 8, *, *]",
               NULL);

  /* EfficientNet: two blocks, SE in both kinds. */
  build_efficientnet(&b, 1, 5);
  write_checkpoint(&b, "effnet.safetensors");
  expect_check(image_hub("efficientnet", "effnet.safetensors", 5), 0, NULL, &summary);
  CU_ASSERT_EQUAL(summary.depth, 2);
  CU_ASSERT_EQUAL(summary.width, 16);
  /* The same file is no MobileNetV2 (which has no SE), but without SE it is. */
  expect_check(
      image_hub("mobilenetv2", "effnet.safetensors", 5), QT_ESCHEMA,
      "tensor 'blocks.0.0.se.conv_reduce.weight': mobilenetv2 has no squeeze-and-excitation", NULL);
  build_efficientnet(&b, 0, 5);
  write_checkpoint(&b, "mnv2.safetensors");
  expect_check(image_hub("mobilenetv2", "mnv2.safetensors", 5), 0, NULL, &summary);
  /* A depthwise convolution with the wrong channel count. */
  for (size_t i = 0; i < b.n; i++) {
    if (strcmp(b.names[i], "blocks.1.0.conv_dw.weight") == 0) b.shapes[i][0] = 10;
  }
  write_checkpoint(&b, "mnv2.safetensors");
  expect_check(image_hub("mobilenetv2", "mnv2.safetensors", 5), QT_ESCHEMA,
               "tensor 'blocks.1.0.conv_dw.weight' has shape [10, 1, 5, 5], expected [12, 1, *, *]",
               NULL);
  /* An input convolution for grayscale images. */
  build_efficientnet(&b, 0, 5);
  b.shapes[0][1] = 1;
  write_checkpoint(&b, "mnv2.safetensors");
  expect_check(image_hub("mobilenetv2", "mnv2.safetensors", 5), QT_ESCHEMA,
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
  const char *hub = hub_text(
      "    family: mlp\n"
      "    checkpoint: mlp.safetensors\n"
      "    num_classes: 3\n"
      "    descriptors: {depth: 2, width: 8}\n");
  qt_hub_checkpoint_summary summary;
  expect_check(hub, 0, NULL, &summary);
  CU_ASSERT_EQUAL(summary.depth, 2);
  CU_ASSERT_EQUAL(summary.parameters, 16 * 5 + 16 + 32 + 8 * 16 + 8 + 3 * 8 + 3);
  b.shapes[4][1] = 12; /* blocks.1.fc.weight: [8, 12] does not take 16 features */
  write_checkpoint(&b, "mlp.safetensors");
  expect_check(hub, QT_ESCHEMA, "tensor 'blocks.1.fc.weight' has shape [8, 12], expected [*, 16]",
               NULL);
}

static const qt_test_case cases[] = {
    {"family names", test_family_names},
    {"load and check the tiny fixture hub", test_load_tiny_fixture},
    {"the default hub loads; checkpoints not fetched yet", test_default_hub_not_fetched},
    {"checkpoint path variables", test_checkpoint_variables},
    {"top-level validation errors with line:column", test_top_level_errors},
    {"model validation errors with line:column", test_model_errors},
    {"ViT checkpoint mismatches", test_check_vit_mismatches},
    {"DeiT, DeiT III, headless, wrong family", test_check_vit_variants},
    {"ResNet, EfficientNet, MobileNetV2 layouts", test_check_cnn_families},
    {"MLP layout", test_check_mlp},
    {NULL, NULL}};

QT_TEST_MAIN("hub", cases)

/*
 * test_hub.c - model hubs: loading and strict validation of hub YAML and
 * path variables. Checking checkpoints against their family's layout is the
 * engine's (tests/test_finetune_layout.c); `qtune hub list|show`, which joins
 * the two, is tested in tests/test_cli.c.
 *
 * The positive path uses the committed fixture tests/fixtures/hubs/tiny.yaml.
 * Expected line:column positions were counted by hand from the YAML texts
 * below.
 */
#include "metadata/qt_metadata.h"
#include "qt_test.h"

#include <dirent.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#define COUNT_OF(array) (sizeof(array) / sizeof((array)[0]))
#define TINY_HUB QT_SOURCE_DIR "/tests/fixtures/hubs/tiny.yaml"

/* ------------------------------------------------------------------------- */
/* Helpers                                                                    */
/* ------------------------------------------------------------------------- */

/* Loads a hub from text, named as a file in the temporary folder so that
 * relative checkpoints resolve there. */
static int load(const char *text, qt_hub_t **hub, qt_err *err) {
  char name[512];
  qt_test_temp_path("hub.yaml", name, sizeof name);
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
  snprintf(want, sizeof want, "%s/hub.yaml:%s", qt_test_temp_dir(), expected);
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
/* Loading                                                                    */
/* ------------------------------------------------------------------------- */

static void test_family_names(void) {
  const char *names[] = {"vit", "deit", "deit3", "mobilenetv2", "efficientnet", "resnet", "mlp"};
  for (size_t f = 0; f < COUNT_OF(names); f++) {
    CU_ASSERT(qt_hub_family_known(names[f]));
    CU_ASSERT_EQUAL(qt_hub_family_is_vit(names[f]), f < 3);
  }
  CU_ASSERT(!qt_hub_family_known("ViT"));
  CU_ASSERT(!qt_hub_family_known("convnext"));
  CU_ASSERT(!qt_hub_family_known(NULL));
  CU_ASSERT(!qt_hub_family_is_vit(NULL));
  /* Each name loads, and is kept as written. */
  for (size_t f = 0; f < COUNT_OF(names); f++) {
    char keys[512];
    if (strcmp(names[f], "mlp") == 0)
      snprintf(keys, sizeof keys, "    family: mlp\n    checkpoint: m\n    num_classes: 2\n");
    else
      snprintf(keys, sizeof keys,
               "    family: %s\n    checkpoint: m\n    image_size: 8\n"
               "    mean: [0.5, 0.5, 0.5]\n    std: [0.5, 0.5, 0.5]\n    num_classes: 2\n",
               names[f]);
    qt_hub_t *hub = NULL;
    qt_err err;
    int rc = load(hub_text(keys), &hub, &err);
    if (rc != 0) fprintf(stderr, "\n  %s\n", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_STRING_EQUAL(qt_hub_model_at(hub, 0)->family, names[f]);
    qt_hub_free(hub);
  }
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
  CU_ASSERT_STRING_EQUAL(m->family, "vit");
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

  qt_hub_free(hub);
  qt_hub_free(NULL);
}

/* The shipped hub loads, its checkpoints under $QTUNE_MODELS. */
static void test_default_hub_not_fetched(void) {
  char models[512];
  CU_ASSERT_PTR_NOT_NULL_FATAL(qt_test_temp_path("no-models-here", models, sizeof models));
  setenv("QTUNE_MODELS", models, 1);
  qt_hub_t *hub = NULL;
  qt_err err;
  int rc = qt_hub_load_file(QT_SOURCE_DIR "/configs/hubs/default.yaml", &hub, &err);
  if (rc != 0) fprintf(stderr, "\n  %s\n", err.msg);
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT(qt_hub_count(hub) >= 6);
  size_t index;
  CU_ASSERT_EQUAL(qt_hub_find(hub, "mobilenetv2_100.nsfwjs", &index), 0);
  const qt_hub_model *m = qt_hub_model_at(hub, index);
  CU_ASSERT_STRING_EQUAL(m->family, "mobilenetv2");
  CU_ASSERT_EQUAL(m->image_size, 32);
  CU_ASSERT(strncmp(m->checkpoint, models, strlen(models)) == 0);
  for (size_t i = 0; i < qt_hub_count(hub); i++) {
    const char *checkpoint = qt_hub_model_at(hub, i)->checkpoint;
    CU_ASSERT(strncmp(checkpoint, models, strlen(models)) == 0);
    CU_ASSERT(qt_hub_family_known(qt_hub_model_at(hub, i)->family));
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
  snprintf(want, sizeof want, "%s/sub/m.safetensors", qt_test_temp_dir());
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

static const qt_test_case cases[] = {
    {"family names: the accepted list", test_family_names},
    {"load and check the tiny fixture hub", test_load_tiny_fixture},
    {"the default hub loads", test_default_hub_not_fetched},
    {"checkpoint path variables", test_checkpoint_variables},
    {"top-level validation errors with line:column", test_top_level_errors},
    {"model validation errors with line:column", test_model_errors},
    {NULL, NULL}};

QT_TEST_MAIN("hub", cases)

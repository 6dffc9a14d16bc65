/*
 * test_space.c - search spaces, configurations, sampling, the initial design
 * and the numeric encoding (metadata/qt_space*.c, qt_config.c).
 *
 * Expected line:column positions in the validation tests were counted from
 * the inputs (the first character of a line is column 1), not copied from the
 * library's output. Encoded values in test_encode_hand_computed were worked
 * out by hand from the definitions in qt_metadata.h.
 */
#include "metadata/qt_metadata.h"
#include "qt_test.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------------- */
/* Helpers                                                                    */
/* ------------------------------------------------------------------------- */

#define COUNT_OF(array) (sizeof(array) / sizeof((array)[0]))

static qt_space_t *load_shipped(const char *name) {
  char path[1024];
  snprintf(path, sizeof path, "%s/configs/spaces/%s", QT_SOURCE_DIR, name);
  qt_space_t *space = NULL;
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_space_load_file(path, &space, &err);
  if (rc != 0) fprintf(stderr, "loading %s: %s\n", path, qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  return space;
}

static qt_space_t *load_text(const char *text) {
  qt_space_t *space = NULL;
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_space_load_string(text, strlen(text), "t.yaml", &space, &err);
  if (rc != 0) fprintf(stderr, "loading: %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  return space;
}

static size_t hp_index(const qt_space_t *space, const char *name) {
  size_t index = 0;
  int rc = qt_space_find(space, name, &index);
  if (rc != 0) fprintf(stderr, "no hyperparameter %s\n", name);
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  return index;
}

/* The parent choices of hyperparameter `name`'s only condition, as text
 * "parent: a,b,c". */
static void condition_text(const qt_space_t *space, const char *name, char *buf, size_t size) {
  size_t hp = hp_index(space, name);
  CU_ASSERT_EQUAL_FATAL(qt_space_hp_condition_count(space, hp), 1);
  qt_space_condition c;
  qt_space_hp_condition(space, hp, 0, &c);
  size_t used = (size_t)snprintf(buf, size, "%s:", qt_space_hp_name(space, c.parent));
  for (size_t v = 0; v < c.value_count; v++) {
    used += (size_t)snprintf(buf + used, size - used, "%s%s", v ? "," : " ",
                             qt_space_hp_choice(space, c.parent, c.values[v]));
  }
}

/* Checks a property of one configuration that validation must also imply:
 * each hyperparameter is active exactly when its conditions hold. */
static int activity_matches_conditions(const qt_config *config) {
  for (size_t i = 0; i < config->count; i++) {
    if (qt_config_is_active(config, i) != qt_config_conditions_hold(config, i)) return 0;
  }
  return 1;
}

/* ------------------------------------------------------------------------- */
/* The shipped spaces                                                         */
/* ------------------------------------------------------------------------- */

static void test_load_quicktune_v1(void) {
  qt_space_t *space = load_shipped("quicktune-v1.yaml");
  CU_ASSERT_STRING_EQUAL(qt_space_name(space), "quicktune-v1");
  CU_ASSERT_EQUAL(qt_space_count(space), 32);

  const char *fidelity;
  long min, max;
  qt_space_fidelity(space, &fidelity, &min, &max);
  CU_ASSERT_STRING_EQUAL(fidelity, "epochs");
  CU_ASSERT_EQUAL(min, 1);
  CU_ASSERT_EQUAL(max, 50);
  CU_ASSERT_EQUAL(qt_space_find(space, "epochs", NULL), QT_ENOENT);

  size_t model = hp_index(space, "model");
  CU_ASSERT_EQUAL(model, 0);
  CU_ASSERT_EQUAL(qt_space_hp_type(space, model), QT_HP_TYPE_CATEGORICAL);
  CU_ASSERT_EQUAL(qt_space_hp_choice_count(space, model), 24);
  CU_ASSERT_STRING_EQUAL(qt_space_hp_choice(space, model, 0), "xcit_tiny_24_p8_384_dist");
  CU_ASSERT_STRING_EQUAL(qt_space_hp_choice(space, model, 12),
                         "swinv2_base_window12to24_192to384_22kft1k");
  CU_ASSERT_STRING_EQUAL(qt_space_hp_choice(space, model, 23), "beit_base_patch16_384");

  /* Choice counts of the table in specs/algorithms.md section 1.9. */
  static const struct {
    const char *name;
    qt_hp_type type;
    size_t choices;
  } expected[] = {
      {"pct_to_freeze", QT_HP_TYPE_ORDINAL, 6},
      {"batch_size", QT_HP_TYPE_ORDINAL, 9},
      {"amp", QT_HP_TYPE_BOOLEAN, 2},
      {"opt", QT_HP_TYPE_CATEGORICAL, 5},
      {"opt_betas", QT_HP_TYPE_CATEGORICAL, 4},
      {"momentum", QT_HP_TYPE_ORDINAL, 5},
      {"weight_decay", QT_HP_TYPE_ORDINAL, 6},
      {"clip_grad", QT_HP_TYPE_CATEGORICAL, 3},
      {"layer_decay", QT_HP_TYPE_CATEGORICAL, 3},
      {"sched", QT_HP_TYPE_CATEGORICAL, 5},
      {"lr", QT_HP_TYPE_ORDINAL, 7},
      {"warmup_lr", QT_HP_TYPE_ORDINAL, 3},
      {"warmup_epochs", QT_HP_TYPE_ORDINAL, 3},
      {"decay_rate", QT_HP_TYPE_ORDINAL, 2},
      {"decay_epochs", QT_HP_TYPE_ORDINAL, 2},
      {"patience_epochs", QT_HP_TYPE_ORDINAL, 2},
      {"linear_probing", QT_HP_TYPE_BOOLEAN, 2},
      {"stoch_norm", QT_HP_TYPE_BOOLEAN, 2},
      {"bss_reg", QT_HP_TYPE_ORDINAL, 5},
      {"sp_reg", QT_HP_TYPE_ORDINAL, 5},
      {"delta_reg", QT_HP_TYPE_ORDINAL, 5},
      {"cotuning_reg", QT_HP_TYPE_ORDINAL, 5},
      {"cutmix", QT_HP_TYPE_ORDINAL, 7},
      {"mixup", QT_HP_TYPE_ORDINAL, 7},
      {"mixup_prob", QT_HP_TYPE_ORDINAL, 5},
      {"smoothing", QT_HP_TYPE_ORDINAL, 3},
      {"drop", QT_HP_TYPE_ORDINAL, 5},
      {"data_augmentation", QT_HP_TYPE_CATEGORICAL, 4},
      {"auto_augment", QT_HP_TYPE_CATEGORICAL, 3},
      {"ra_num_ops", QT_HP_TYPE_ORDINAL, 2},
      {"ra_magnitude", QT_HP_TYPE_ORDINAL, 2},
  };
  for (size_t e = 0; e < COUNT_OF(expected); e++) {
    size_t hp = hp_index(space, expected[e].name);
    CU_ASSERT_EQUAL(qt_space_hp_type(space, hp), expected[e].type);
    CU_ASSERT_EQUAL(qt_space_hp_choice_count(space, hp), expected[e].choices);
  }
  CU_ASSERT_TRUE(qt_space_hp_log(space, hp_index(space, "lr")));
  CU_ASSERT_TRUE(qt_space_hp_log(space, hp_index(space, "batch_size")));
  CU_ASSERT_FALSE(qt_space_hp_log(space, hp_index(space, "weight_decay")));
  double lo, hi;
  qt_space_hp_range(space, hp_index(space, "lr"), &lo, &hi);
  CU_ASSERT_EQUAL(lo, 1e-5);
  CU_ASSERT_EQUAL(hi, 0.01);

  /* Conditions, exactly as in the table. */
  static const struct {
    const char *name, *condition;
  } conditions[] = {
      {"opt_betas", "opt: adam,adamw,adamp"},
      {"momentum", "opt: momentum"},
      {"decay_rate", "sched: step,multistep"},
      {"decay_epochs", "sched: step,multistep"},
      {"patience_epochs", "sched: plateau"},
      {"auto_augment", "data_augmentation: auto_augment"},
      {"ra_num_ops", "data_augmentation: random_augment"},
      {"ra_magnitude", "data_augmentation: random_augment"},
  };
  size_t conditional = 0;
  for (size_t i = 0; i < qt_space_count(space); i++) {
    conditional += qt_space_hp_condition_count(space, i) > 0;
  }
  CU_ASSERT_EQUAL(conditional, COUNT_OF(conditions));
  for (size_t c = 0; c < COUNT_OF(conditions); c++) {
    char text[256];
    condition_text(space, conditions[c].name, text, sizeof text);
    CU_ASSERT_STRING_EQUAL(text, conditions[c].condition);
  }

  /* 8 categoricals with 24+5+4+3+3+5+4+3 = 51 one-hot columns, 24 single
   * columns, and 8 active columns for the 8 conditional hyperparameters. */
  CU_ASSERT_EQUAL(qt_space_encoded_dim(space), 51 + 24 + 8);
  qt_space_free(space);
}

static void test_load_default(void) {
  qt_space_t *space = load_shipped("default.yaml");
  CU_ASSERT_STRING_EQUAL(qt_space_name(space), "default");
  CU_ASSERT_EQUAL(qt_space_count(space), 31);
  long max;
  qt_space_fidelity(space, NULL, NULL, &max);
  CU_ASSERT_EQUAL(max, 50);

  size_t opt = hp_index(space, "opt");
  CU_ASSERT_EQUAL(qt_space_hp_choice_count(space, opt), 5);
  CU_ASSERT_STRING_EQUAL(qt_space_hp_choice(space, opt, 4), "goodfit");
  CU_ASSERT_EQUAL(qt_space_hp_type(space, hp_index(space, "lr")), QT_HP_TYPE_FLOAT);
  CU_ASSERT_EQUAL(qt_space_hp_type(space, hp_index(space, "warmup_epochs")), QT_HP_TYPE_INTEGER);
  CU_ASSERT_EQUAL(qt_space_hp_type(space, hp_index(space, "sfa")), QT_HP_TYPE_BOOLEAN);

  char text[256];
  condition_text(space, "goodfit_n_ref", text, sizeof text);
  CU_ASSERT_STRING_EQUAL(text, "opt: goodfit");
  condition_text(space, "goodfit_lr_ref_ratio", text, sizeof text);
  CU_ASSERT_STRING_EQUAL(text, "opt: goodfit");
  condition_text(space, "decay_strength", text, sizeof text);
  CU_ASSERT_STRING_EQUAL(text, "decay: weight_decay,l2sp,spd");
  condition_text(space, "sfa_p", text, sizeof text);
  CU_ASSERT_STRING_EQUAL(text, "sfa: true");
  condition_text(space, "sfa_beta", text, sizeof text);
  CU_ASSERT_STRING_EQUAL(text, "sfa: true");
  condition_text(space, "adapter_rank", text, sizeof text);
  CU_ASSERT_STRING_EQUAL(text, "adapter: lora,rosa");

  condition_text(space, "goodfit_main", text, sizeof text);
  CU_ASSERT_STRING_EQUAL(text, "opt: goodfit");
  condition_text(space, "adapter_layers", text, sizeof text);
  CU_ASSERT_STRING_EQUAL(text, "adapter: lora,rosa");

  /* 8 categoricals with 3+5+3+4+3+2+3+3 = 26 columns, 23 single columns,
   * 9 active columns. */
  CU_ASSERT_EQUAL(qt_space_encoded_dim(space), 26 + 23 + 9);

  /* The default configuration uses the file's defaults. */
  qt_config config;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_config_init(&config, space, &err), 0);
  CU_ASSERT_EQUAL(qt_space_default_config(space, &config, &err), 0);
  CU_ASSERT_EQUAL(qt_config_validate(&config, &err), 0);
  char line[2048];
  CU_ASSERT_EQUAL(qt_config_format(&config, line, sizeof line), 0);
  CU_ASSERT_STRING_EQUAL(
      line,
      "model=resnet18 opt=adamw lr=0.001 decay=weight_decay "
      "decay_strength=0.01 sfa=false adapter=none bss_reg=0 delta_reg=0 cotuning_reg=0 "
      "stoch_norm=false sched=cosine warmup_epochs=0 batch_size=32 "
      "pct_to_freeze=0 linear_probing=false "
      "data_augmentation=trivial_augment mixup=0 cutmix=0 smoothing=0.1 "
      "drop=0 crop_scale=0.08 hflip=0.5");
  qt_config_free(&config);
  qt_space_free(space);
}

/* The example in docs/search-space.md loads: the documentation stays true. */
static void test_documented_example(void) {
  char path[1024];
  snprintf(path, sizeof path, "%s/docs/search-space.md", QT_SOURCE_DIR);
  char *text = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_file_read(path, &text, NULL, NULL), 0);
  char *start = strstr(text, "```yaml\n");
  CU_ASSERT_PTR_NOT_NULL_FATAL(start);
  start += strlen("```yaml\n");
  char *end = strstr(start, "```");
  CU_ASSERT_PTR_NOT_NULL_FATAL(end);
  qt_space_t *space = NULL;
  qt_err err;
  int rc = qt_space_load_string(start, (size_t)(end - start), "search-space.md", &space, &err);
  if (rc != 0) fprintf(stderr, "\n%s\n", err.msg);
  CU_ASSERT_EQUAL(rc, 0);
  if (space) {
    CU_ASSERT_EQUAL(qt_space_count(space), 9);
    CU_ASSERT_EQUAL(qt_space_hp_condition_count(space, hp_index(space, "sfa_p")), 1);
    CU_ASSERT_STRING_EQUAL(qt_space_hp_description(space, hp_index(space, "sfa_p")),
                           "averaging frequency as a fraction of the run");
  }
  qt_space_free(space);
  free(text);
}

/* ------------------------------------------------------------------------- */
/* Validation errors                                                          */
/* ------------------------------------------------------------------------- */

#define HEAD "version: 1\nname: t\nfidelity: {name: epochs, min: 1, max: 50}\nhyperparameters:\n"

typedef struct bad_space {
  const char *text;
  int code;
  const char *where;   /* "t.yaml:line:column:" */
  const char *message; /* a part of the message */
} bad_space;

static const bad_space bad_spaces[] = {
    {"name: t\nfidelity: {name: epochs, min: 1, max: 50}\nhyperparameters:\n  a: {type: boolean}\n",
     QT_ESCHEMA, "t.yaml:1:1:", "missing required key \"version\""},
    {"version: 2\nname: t\n", QT_EVERSION, "t.yaml:1:10:", "unsupported search-space version 2"},
    {"version: 1\nname: t\nfidelty: {name: epochs, min: 1, max: 50}\nhyperparameters:\n"
     "  a: {type: boolean}\n",
     QT_ESCHEMA, "t.yaml:3:1:", "unknown key \"fidelty\""},
    {"version: 1\nname: t\nhyperparameters:\n  a: {type: boolean}\n", QT_ESCHEMA,
     "t.yaml:1:1:", "missing required key \"fidelity\""},
    {"version: 1\nname: t\nfidelity: {name: epochs, min: 1, max: 50, step: 2}\nhyperparameters:\n"
     "  a: {type: boolean}\n",
     QT_ESCHEMA, "t.yaml:3:43:", "unknown key \"step\""},
    {"version: 1\nname: t\nfidelity: {name: epochs, min: 0, max: 50}\nhyperparameters:\n"
     "  a: {type: boolean}\n",
     QT_ESCHEMA, "t.yaml:3:31:", "fidelity min must be at least 1"},
    {"version: 1\nname: t\nfidelity:\n  name: epochs\n  min: 5\n  max: 3\nhyperparameters:\n"
     "  a: {type: boolean}\n",
     QT_ESCHEMA, "t.yaml:6:8:", "fidelity max 3 is below its min 5"},
    {"version: 1\nname: t\nfidelity: {name: epochs, min: 1, max: 50}\nhyperparameters: {}\n",
     QT_ESCHEMA, "t.yaml:4:1:", "hyperparameters must not be empty"},
    {HEAD "  a: {type: boolean}\n  b: {type: boolean}\n  a: {type: boolean}\n", QT_ESCHEMA,
     "t.yaml:7:3:", "duplicate key \"a\""},
    {HEAD "  2x: {type: boolean}\n", QT_ESCHEMA, "t.yaml:5:3:", "\"2x\" is not a name"},
    {HEAD "  epochs: {type: integer, range: [1, 5]}\n", QT_ESCHEMA,
     "t.yaml:5:3:", "\"epochs\" is the fidelity"},
    {HEAD "  a: {type: str, choices: [x]}\n", QT_ESCHEMA, "t.yaml:5:13:", "unknown type \"str\""},
    {HEAD "  a: {choices: [x, y]}\n", QT_ESCHEMA, "t.yaml:5:3:", "\"a\" has no type"},
    {HEAD "  a:\n    type: float\n    range: [0, 1]\n    lgo: true\n", QT_ESCHEMA,
     "t.yaml:8:5:", "unknown key \"lgo\""},
    {HEAD "  a: {type: categorical, choices: [x, y], range: [0, 1]}\n", QT_ESCHEMA,
     "t.yaml:5:43:", "unknown key \"range\""},
    {HEAD "  a: {type: categorical, choices: []}\n", QT_ESCHEMA,
     "t.yaml:5:35:", "choices of \"a\" must not be empty"},
    {HEAD "  a: {type: categorical, choices: [sgd, adam, sgd]}\n", QT_ESCHEMA,
     "t.yaml:5:47:", "duplicate choice \"sgd\""},
    {HEAD "  a: {type: ordinal, choices: [1, 2, 1.0]}\n", QT_ESCHEMA,
     "t.yaml:5:38:", "duplicate choice \"1.0\""},
    {HEAD "  a: {type: ordinal, choices: [1, two]}\n", QT_ESCHEMA,
     "t.yaml:5:35:", "expected a finite number, got \"two\""},
    {HEAD "  a: {type: float, range: [1, 1]}\n", QT_ESCHEMA,
     "t.yaml:5:27:", "range of \"a\" is empty"},
    {HEAD "  a: {type: float, range: [0, 1], log: true}\n", QT_ESCHEMA,
     "t.yaml:5:40:", "log scale needs positive values"},
    {HEAD "  a:\n    type: ordinal\n    choices: [0, 1, 10]\n    log: true\n", QT_ESCHEMA,
     "t.yaml:8:10:", "\"a\" has the choice 0"},
    {HEAD "  a: {type: integer, range: [1, 2.5]}\n", QT_ESCHEMA,
     "t.yaml:5:33:", "integer range bounds must be whole numbers, got 2.5"},
    {HEAD "  a: {type: integer, range: [1, 2, 3]}\n", QT_ESCHEMA,
     "t.yaml:5:29:", "must be a list of two numbers"},
    {HEAD "  a: {type: categorical, choices: [x, y], default: z}\n", QT_ESCHEMA,
     "t.yaml:5:52:", "default \"z\" of \"a\" is not one of the choices [x, y]"},
    {HEAD "  a: {type: integer, range: [8, 256], default: 512}\n", QT_ESCHEMA,
     "t.yaml:5:48:", "default 512 of \"a\" is outside the range [8, 256]"},
    {HEAD
     "  a: {type: categorical, choices: [x, y]}\n  b: {type: boolean, active_when: {c: [x]}}\n",
     QT_ESCHEMA, "t.yaml:6:36:", "unknown hyperparameter \"c\""},
    {HEAD "  opt: {type: categorical, choices: [sgd, adam]}\n"
          "  beta: {type: float, range: [0, 1], active_when: {opt: [adam, nesterov]}}\n",
     QT_ESCHEMA, "t.yaml:6:64:", "\"nesterov\" is not a choice of \"opt\" [sgd, adam]"},
    {HEAD "  lr: {type: float, range: [0, 1]}\n  b: {type: boolean, active_when: {lr: [0.5]}}\n",
     QT_ESCHEMA, "t.yaml:6:36:", "condition parent \"lr\" is a float hyperparameter"},
    {HEAD "  a: {type: categorical, choices: [x, y], active_when: {a: [x]}}\n", QT_ESCHEMA,
     "t.yaml:5:57:", "\"a\" cannot be conditioned on itself"},
    {HEAD "  a: {type: categorical, choices: [x, y], active_when: {b: [u]}}\n"
          "  b: {type: categorical, choices: [u, v], active_when: {a: [x]}}\n",
     QT_ESCHEMA, "t.yaml:6:57:", "conditions form a cycle: a -> b -> a"},
    {HEAD
     "  a: {type: categorical, choices: [x, y]}\n  b: {type: boolean, active_when: {a: [x, x]}}\n",
     QT_ESCHEMA, "t.yaml:6:43:", "value \"x\" of \"a\" is listed twice"},
    {HEAD "  a: {type: categorical, choices: [x, null]}\n", QT_ESCHEMA,
     "t.yaml:5:39:", "a null choice is ambiguous"},
    {HEAD "  a: {type: ordinal}\n", QT_ESCHEMA, "t.yaml:5:3:", "needs choices"},
    {HEAD "  a: {type: categorical, choices: [x, y]}\n  b: {type: boolean, active_when: {a: []}}\n",
     QT_ESCHEMA, "t.yaml:6:39:", "lists no values"},
};

static void test_validation_errors(void) {
  for (size_t c = 0; c < COUNT_OF(bad_spaces); c++) {
    const bad_space *bad = &bad_spaces[c];
    qt_space_t *space = (qt_space_t *)1;
    qt_err err;
    qt_err_clear(&err);
    int rc = qt_space_load_string(bad->text, strlen(bad->text), "t.yaml", &space, &err);
    int ok = rc == bad->code && space == NULL &&
             strncmp(err.msg, bad->where, strlen(bad->where)) == 0 &&
             strstr(err.msg, bad->message) != NULL;
    if (!ok) {
      fprintf(stderr, "\ncase %zu: got %s \"%s\"\n  expected %s \"%s ... %s\"\n", c,
              qt_strerror_name(rc), err.msg, qt_strerror_name(bad->code), bad->where, bad->message);
    }
    CU_ASSERT_TRUE(ok);
    qt_space_free(rc == 0 ? space : NULL);
  }
}

static void test_syntax_and_file_errors(void) {
  qt_space_t *space = NULL;
  qt_err err;
  const char *text = HEAD "  a: {type: boolean\n";
  CU_ASSERT_EQUAL(qt_space_load_string(text, strlen(text), "t.yaml", &space, &err), QT_EPARSE);
  CU_ASSERT_PTR_NULL(space);
  CU_ASSERT_EQUAL(qt_space_load_file("/nonexistent/space.yaml", &space, &err), QT_ENOENT);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "/nonexistent/space.yaml"));
  qt_space_free(NULL);
}

/* Conditions may name parents declared later; values may be a bare scalar,
 * and boolean and ordinal parents match by value. */
static void test_condition_forms(void) {
  qt_space_t *space =
      load_text(HEAD
                "  child: {type: float, range: [0, 1], active_when: {flag: true, "
                "size: [2.0, 8], kind: b}}\n"
                "  kind: {type: categorical, choices: [a, b]}\n"
                "  flag: {type: boolean}\n"
                "  size: {type: ordinal, choices: [2, 4, 8], active_when: {kind: b}}\n");
  size_t child = hp_index(space, "child");
  CU_ASSERT_EQUAL(qt_space_hp_condition_count(space, child), 3);
  qt_space_condition c;
  qt_space_hp_condition(space, child, 1, &c);
  CU_ASSERT_EQUAL(c.parent, hp_index(space, "size"));
  CU_ASSERT_EQUAL(c.value_count, 2);
  CU_ASSERT_EQUAL(c.values[0], 0);
  CU_ASSERT_EQUAL(c.values[1], 2);

  /* child needs kind=b (so that size is active), flag and size in {2, 8}. */
  qt_config config;
  CU_ASSERT_EQUAL_FATAL(qt_config_init(&config, space, NULL), 0);
  CU_ASSERT_EQUAL(qt_config_set_string(&config, "kind", "b", NULL), 0);
  CU_ASSERT_EQUAL(qt_config_set_string(&config, "flag", "True", NULL), 0);
  CU_ASSERT_EQUAL(qt_config_set_string(&config, "size", "8", NULL), 0);
  CU_ASSERT_EQUAL(qt_config_set_string(&config, "child", "0.5", NULL), 0);
  CU_ASSERT_EQUAL(qt_config_validate(&config, NULL), 0);

  /* kind=a drops size, and with it child, although child's own values for
   * flag and size are unchanged: a child of an inactive parent is inactive. */
  CU_ASSERT_EQUAL(qt_config_set_string(&config, "kind", "a", NULL), 0);
  qt_err err;
  CU_ASSERT_EQUAL(qt_config_validate(&config, &err), QT_ESCHEMA);
  CU_ASSERT_PTR_NOT_NULL(
      strstr(err.msg, "\"size\" has a value but is inactive: kind=a, not one of [b]"));
  qt_config_prune(&config);
  CU_ASSERT_FALSE(qt_config_is_active(&config, hp_index(space, "size")));
  CU_ASSERT_FALSE(qt_config_is_active(&config, child));
  CU_ASSERT_EQUAL(qt_config_validate(&config, NULL), 0);
  qt_config_free(&config);
  qt_space_free(space);
}

/* ------------------------------------------------------------------------- */
/* Configurations                                                             */
/* ------------------------------------------------------------------------- */

/* Sets name=text and checks the status and, on success, the value read back. */
static void check_set(qt_config *config, const char *name, const char *text, int code,
                      const char *readback) {
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_config_set_string(config, name, text, &err);
  if (rc != code) {
    fprintf(stderr, "\n%s=%s: got %s (%s), expected %s\n", name, text, qt_strerror_name(rc),
            err.msg, qt_strerror_name(code));
  }
  CU_ASSERT_EQUAL(rc, code);
  if (rc == 0 && readback) {
    char value[256];
    CU_ASSERT_EQUAL(
        qt_config_get_string(config, hp_index(config->space, name), value, sizeof value), 0);
    if (strcmp(value, readback) != 0) fprintf(stderr, "\n%s=%s reads back %s\n", name, text, value);
    CU_ASSERT_STRING_EQUAL(value, readback);
  }
}

static void test_set_string_importer_values(void) {
  qt_space_t *space = load_shipped("quicktune-v1.yaml");
  qt_config config;
  CU_ASSERT_EQUAL_FATAL(qt_config_init(&config, space, NULL), 0);

  check_set(&config, "model", "volo_d1_384", 0, "volo_d1_384");
  check_set(&config, "opt", "adamw", 0, "adamw");
  check_set(&config, "opt_betas", "[0.9, 0.999]", 0, "[0.9, 0.999]");
  check_set(&config, "opt_betas", "[0.0, 0.99]", 0, "[0.0, 0.99]");
  check_set(&config, "opt_betas", "None", QT_ERANGE, NULL);
  /* Ordinals match by value: "0.0005" is the choice written 5.0e-4. */
  check_set(&config, "lr", "0.0005", 0, "5.0e-4");
  CU_ASSERT_EQUAL(qt_config_index(&config, hp_index(space, "lr")), 3);
  QT_ASSERT_CLOSE(qt_config_number(&config, hp_index(space, "lr")), 5e-4, 1e-18);
  check_set(&config, "lr", "5e-4", 0, "5.0e-4");
  check_set(&config, "lr", "0.00050000001", 0, "5.0e-4"); /* within 1e-6 relative */
  check_set(&config, "lr", "0.0006", QT_ERANGE, NULL);
  check_set(&config, "lr", "abc", QT_EINVAL, NULL);
  check_set(&config, "weight_decay", "0.0", 0, "0");
  check_set(&config, "weight_decay", "1e-05", 0, "1.0e-5");
  check_set(&config, "batch_size", "32.0", 0, "32");
  /* Numeric-looking categorical choices match numbers too. */
  check_set(&config, "clip_grad", "10.0", 0, "10");
  check_set(&config, "clip_grad", "None", 0, "None");
  check_set(&config, "clip_grad", "5", QT_ERANGE, NULL);
  check_set(&config, "layer_decay", "0.65", 0, "0.65");
  check_set(&config, "sched", "cosine", 0, "cosine");
  check_set(&config, "sched", "Cosine", QT_ERANGE, NULL);
  check_set(&config, "amp", "1", 0, "true");
  check_set(&config, "amp", "False", 0, "false");
  check_set(&config, "amp", "maybe", QT_EINVAL, NULL);
  check_set(&config, "no_such_hp", "1", QT_ENOENT, NULL);
  CU_ASSERT_EQUAL(qt_config_index(&config, hp_index(space, "amp")), 0);
  CU_ASSERT_EQUAL(qt_config_number(&config, hp_index(space, "amp")), 0.0);
  CU_ASSERT_TRUE(isnan(qt_config_number(&config, hp_index(space, "sched"))));
  CU_ASSERT_TRUE(isnan(qt_config_number(&config, hp_index(space, "clip_grad")))); /* None */
  check_set(&config, "clip_grad", "10", 0, "10");
  CU_ASSERT_EQUAL(qt_config_number(&config, hp_index(space, "clip_grad")), 10.0);
  qt_config_free(&config);

  /* The default space: integers and floats. */
  qt_space_free(space);
  space = load_shipped("default.yaml");
  CU_ASSERT_EQUAL_FATAL(qt_config_init(&config, space, NULL), 0);
  check_set(&config, "warmup_epochs", "3", 0, "3");
  check_set(&config, "warmup_epochs", "3.0", 0, "3");
  check_set(&config, "warmup_epochs", "3.5", QT_EINVAL, NULL);
  check_set(&config, "warmup_epochs", "9", QT_ERANGE, NULL);
  check_set(&config, "lr", "0.003", 0, "0.003");
  check_set(&config, "lr", "1e-6", QT_ERANGE, NULL);
  check_set(&config, "lr", "nan", QT_EINVAL, NULL);
  check_set(&config, "sfa", "yes", 0, "true");
  check_set(&config, "adapter_rank", "16", 0, "16");
  qt_err err;
  CU_ASSERT_EQUAL(qt_config_set_index(&config, hp_index(space, "opt"), 5, &err), QT_ERANGE);
  CU_ASSERT_EQUAL(qt_config_set_index(&config, hp_index(space, "lr"), 0, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_config_set_index(&config, hp_index(space, "opt"), 4, &err), 0);
  CU_ASSERT_EQUAL(qt_config_set_number(&config, hp_index(space, "batch_size"), 64.0, &err), 0);
  CU_ASSERT_EQUAL(qt_config_index(&config, hp_index(space, "batch_size")), 3);
  CU_ASSERT_EQUAL(qt_config_set_number(&config, hp_index(space, "batch_size"), 48.0, &err),
                  QT_ERANGE);
  CU_ASSERT_EQUAL(qt_config_set_number(&config, hp_index(space, "warmup_epochs"), 2.0, &err), 0);
  CU_ASSERT_EQUAL(qt_config_number(&config, hp_index(space, "warmup_epochs")), 2.0);
  qt_config_free(&config);
  qt_space_free(space);
}

/* An importer sets every value a table row holds, including the filler
 * values Quick-Tune writes for inactive hyperparameters; prune then drops
 * them and validation checks what remains. */
static void test_prune_and_validate(void) {
  qt_space_t *space = load_shipped("quicktune-v1.yaml");
  qt_config config;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_config_init(&config, space, NULL), 0);
  static const char *const row[][2] = {
      {"model", "dla46x_c"},    {"pct_to_freeze", "0.8"},
      {"batch_size", "64"},     {"amp", "0"},
      {"opt", "adam"},          {"opt_betas", "[0.9, 0.99]"},
      {"momentum", "0.9"},      {"weight_decay", "1e-05"},
      {"clip_grad", "None"},    {"layer_decay", "0.75"},
      {"sched", "plateau"},     {"lr", "0.001"},
      {"warmup_lr", "1e-06"},   {"warmup_epochs", "5"},
      {"decay_rate", "0.1"},    {"patience_epochs", "5"},
      {"linear_probing", "1"},  {"stoch_norm", "0"},
      {"bss_reg", "0.0"},       {"sp_reg", "0.01"},
      {"delta_reg", "0.0001"},  {"cotuning_reg", "0.5"},
      {"cutmix", "0.25"},       {"mixup", "0.4"},
      {"mixup_prob", "0.75"},   {"smoothing", "0.05"},
      {"drop", "0.1"},          {"data_augmentation", "random_augment"},
      {"auto_augment", "None"}, {"ra_num_ops", "2"},
      {"ra_magnitude", "17"},
  };
  for (size_t r = 0; r < COUNT_OF(row); r++) {
    CU_ASSERT_EQUAL(qt_config_set_string(&config, row[r][0], row[r][1], &err), 0);
  }
  /* momentum (opt is adam), decay_rate (sched is plateau) and auto_augment
   * (data_augmentation is random_augment) are set but inactive. */
  CU_ASSERT_EQUAL(qt_config_validate(&config, &err), QT_ESCHEMA);
  CU_ASSERT_PTR_NOT_NULL(
      strstr(err.msg, "\"momentum\" has a value but is inactive: opt=adam, not one of [momentum]"));
  qt_config_prune(&config);
  CU_ASSERT_FALSE(qt_config_is_active(&config, hp_index(space, "momentum")));
  CU_ASSERT_FALSE(qt_config_is_active(&config, hp_index(space, "decay_rate")));
  CU_ASSERT_FALSE(qt_config_is_active(&config, hp_index(space, "auto_augment")));
  CU_ASSERT_TRUE(qt_config_is_active(&config, hp_index(space, "opt_betas")));
  CU_ASSERT_EQUAL(qt_config_validate(&config, &err), 0);

  /* Active but missing. */
  qt_config_unset(&config, hp_index(space, "lr"));
  CU_ASSERT_EQUAL(qt_config_validate(&config, &err), QT_ESCHEMA);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "\"lr\" is active but has no value"));
  qt_config_unset(&config, hp_index(space, "opt_betas"));
  CU_ASSERT_EQUAL(qt_config_set_string(&config, "lr", "1e-4", &err), 0);
  CU_ASSERT_EQUAL(qt_config_validate(&config, &err), QT_ESCHEMA);
  CU_ASSERT_PTR_NOT_NULL(
      strstr(err.msg, "\"opt_betas\" is active (its conditions hold) but has no value"));
  CU_ASSERT_EQUAL(qt_config_set_string(&config, "opt_betas", "[0.0, 0.999]", &err), 0);

  /* A slot written by hand with an impossible value. */
  config.slots[hp_index(space, "opt")].value = 7.0;
  CU_ASSERT_EQUAL(qt_config_validate(&config, &err), QT_ERANGE);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "\"opt\" holds 7, which is not a choice index (0..4)"));
  double vec[128];
  CU_ASSERT_EQUAL(qt_space_encode(space, &config, vec, &err), QT_EINVAL);
  config.slots[hp_index(space, "opt")].value = 2.0;
  CU_ASSERT_EQUAL(qt_config_validate(&config, &err), 0);
  qt_config_free(&config);
  qt_space_free(space);
}

static void test_config_lifetime_copy_equal_hash(void) {
  qt_space_t *space = load_shipped("default.yaml");
  qt_space_t *other = load_shipped("default.yaml");
  qt_config a, b, c;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_config_init(&a, space, NULL), 0);
  CU_ASSERT_EQUAL_FATAL(qt_config_init(&b, space, NULL), 0);
  CU_ASSERT_EQUAL_FATAL(qt_config_init(&c, other, NULL), 0);
  CU_ASSERT_EQUAL(qt_space_default_config(space, &a, NULL), 0);
  CU_ASSERT_FALSE(qt_config_equal(&a, &b));
  CU_ASSERT_EQUAL(qt_config_copy(&b, &a, NULL), 0);
  CU_ASSERT_TRUE(qt_config_equal(&a, &b));
  CU_ASSERT_EQUAL(qt_config_hash(&a), qt_config_hash(&b));

  /* Floats compare within a relative 1e-9 and are left out of the hash. */
  size_t lr = hp_index(space, "lr");
  b.slots[lr].value *= 1.0 + 1e-12;
  CU_ASSERT_TRUE(qt_config_equal(&a, &b));
  CU_ASSERT_EQUAL(qt_config_hash(&a), qt_config_hash(&b));
  b.slots[lr].value *= 1.001;
  CU_ASSERT_FALSE(qt_config_equal(&a, &b));
  CU_ASSERT_EQUAL(qt_config_set_string(&b, "lr", "0.001", NULL), 0);
  CU_ASSERT_EQUAL(qt_config_set_string(&b, "opt", "sgd", NULL), 0);
  CU_ASSERT_FALSE(qt_config_equal(&a, &b));
  CU_ASSERT_NOT_EQUAL(qt_config_hash(&a), qt_config_hash(&b));

  /* A configuration of another space (even one loaded from the same file)
   * is refused rather than misread. */
  CU_ASSERT_FALSE(qt_config_equal(&a, &c));
  CU_ASSERT_EQUAL(qt_config_copy(&c, &a, &err), QT_EINVAL);
  double vec[64];
  CU_ASSERT_EQUAL(qt_space_encode(space, &c, vec, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "belongs to another search space"));

  qt_config_clear(&a);
  for (size_t i = 0; i < a.count; i++) CU_ASSERT_FALSE(qt_config_is_active(&a, i));
  char text[16];
  CU_ASSERT_EQUAL(qt_config_get_string(&a, lr, text, sizeof text), 0);
  CU_ASSERT_STRING_EQUAL(text, "");
  CU_ASSERT_TRUE(isnan(qt_config_number(&a, lr)));
  CU_ASSERT_EQUAL(qt_config_index(&a, hp_index(space, "opt")), -1);
  CU_ASSERT_EQUAL(qt_config_set_string(&a, "model", "mobilenetv2_100", NULL), 0);
  CU_ASSERT_EQUAL(qt_config_get_string(&a, 0, text, 4), QT_ERANGE);

  qt_config_free(&a);
  qt_config_free(&a); /* a freed config is zeroed; freeing it again is a no-op */
  qt_config_free(NULL);
  qt_config_free(&b);
  qt_config_free(&c);
  qt_space_free(other);
  qt_space_free(space);
}

/* ------------------------------------------------------------------------- */
/* Sampling                                                                   */
/* ------------------------------------------------------------------------- */

/* Draws n configurations and checks every one; returns the number of draws
 * in which each choice was seen, per hyperparameter, through counts (a
 * (count, 64) table). */
static void sample_many(const qt_space_t *space, size_t n, uint64_t seed, size_t counts[][64]) {
  qt_rng_t *rng = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, seed, NULL), 0);
  qt_config config;
  CU_ASSERT_EQUAL_FATAL(qt_config_init(&config, space, NULL), 0);
  size_t invalid = 0, mismatched = 0;
  for (size_t s = 0; s < n; s++) {
    qt_err err;
    CU_ASSERT_EQUAL(qt_space_sample(space, rng, &config, &err), 0);
    if (qt_config_validate(&config, &err) != 0) {
      if (invalid++ == 0) fprintf(stderr, "\ninvalid sample: %s\n", err.msg);
    }
    mismatched += !activity_matches_conditions(&config);
    for (size_t i = 0; i < qt_space_count(space); i++) {
      long index = qt_config_index(&config, i);
      if (index >= 0 && index < 64) counts[i][index]++;
    }
  }
  CU_ASSERT_EQUAL(invalid, 0);
  CU_ASSERT_EQUAL(mismatched, 0);
  qt_config_free(&config);
  qt_rng_free(rng);
}

static void test_sample_valid_and_covering(void) {
  static const char *const files[] = {"quicktune-v1.yaml", "default.yaml"};
  for (size_t f = 0; f < COUNT_OF(files); f++) {
    qt_space_t *space = load_shipped(files[f]);
    static size_t counts[64][64];
    memset(counts, 0, sizeof counts);
    CU_ASSERT_FATAL(qt_space_count(space) <= 64);
    sample_many(space, 10000, 42 + f, counts);
    /* Every choice of every categorical, ordinal and boolean shows up,
     * including those of conditional hyperparameters. */
    for (size_t i = 0; i < qt_space_count(space); i++) {
      for (size_t j = 0; j < qt_space_hp_choice_count(space, i); j++) {
        if (counts[i][j] == 0) {
          fprintf(stderr, "\n%s: %s=%s never sampled\n", files[f], qt_space_hp_name(space, i),
                  qt_space_hp_choice(space, i, j));
        }
        CU_ASSERT(counts[i][j] > 0);
      }
    }
    /* Uniform over choices: 10000 draws over 24 models is about 417 each
     * (binomial sd about 20). */
    if (f == 0) {
      for (size_t j = 0; j < 24; j++)
        CU_ASSERT(counts[0][j] > 417 - 100 && counts[0][j] < 417 + 100);
    }
    qt_space_free(space);
  }
}

/* Log-uniform floats put a third of the draws in each decade of
 * [1e-5, 1e-2]; integers are uniform over their whole numbers. */
static void test_sample_scales(void) {
  qt_space_t *space = load_shipped("default.yaml");
  qt_rng_t *rng = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, 7, NULL), 0);
  qt_config config;
  CU_ASSERT_EQUAL_FATAL(qt_config_init(&config, space, NULL), 0);
  size_t lr = hp_index(space, "lr"), warmup = hp_index(space, "warmup_epochs");
  size_t low = 0, warm[6] = {0};
  double lr_min = 1.0, lr_max = 0.0;
  const size_t n = 30000;
  for (size_t s = 0; s < n; s++) {
    CU_ASSERT_EQUAL(qt_space_sample(space, rng, &config, NULL), 0);
    double x = qt_config_number(&config, lr);
    low += x < 1e-4;
    lr_min = fmin(lr_min, x);
    lr_max = fmax(lr_max, x);
    double w = qt_config_number(&config, warmup);
    CU_ASSERT(w >= 0 && w <= 5 && w == floor(w));
    if (w >= 0 && w <= 5) warm[(size_t)w]++;
  }
  QT_ASSERT_CLOSE((double)low / (double)n, 1.0 / 3.0, 0.02);
  CU_ASSERT(lr_min >= 1e-5 && lr_max <= 1e-2);
  for (size_t w = 0; w < 6; w++) QT_ASSERT_CLOSE((double)warm[w] / (double)n, 1.0 / 6.0, 0.015);

  /* The same seed gives the same configurations. */
  qt_rng_t *again = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&again, 7, NULL), 0);
  qt_config first;
  CU_ASSERT_EQUAL_FATAL(qt_config_init(&first, space, NULL), 0);
  qt_rng_free(rng);
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, 7, NULL), 0);
  for (size_t s = 0; s < 100; s++) {
    qt_space_sample(space, rng, &config, NULL);
    qt_space_sample(space, again, &first, NULL);
    CU_ASSERT_TRUE(qt_config_equal(&config, &first));
  }
  qt_config_free(&first);
  qt_rng_free(again);
  qt_config_free(&config);
  qt_rng_free(rng);
  qt_space_free(space);
}

/* ------------------------------------------------------------------------- */
/* Encoding                                                                   */
/* ------------------------------------------------------------------------- */

/* Checks the columns of one encoded configuration against the layout: one-hot
 * blocks sum to 1 when active and 0 when not, active columns agree, every
 * other value is in [0, 1] or exactly the sentinel when inactive. Returns the
 * number of violations. */
static size_t check_encoded(const qt_space_t *space, const qt_config *config, const double *vec) {
  size_t bad = 0;
  for (size_t i = 0; i < qt_space_count(space); i++) {
    size_t width, offset = qt_space_encoded_offset(space, i, &width);
    int active = qt_config_is_active(config, i);
    int conditional = qt_space_hp_condition_count(space, i) > 0;
    size_t values = width - (size_t)conditional;
    if (qt_space_hp_type(space, i) == QT_HP_TYPE_CATEGORICAL) {
      double sum = 0;
      for (size_t k = 0; k < values; k++) {
        bad += vec[offset + k] != 0.0 && vec[offset + k] != 1.0;
        sum += vec[offset + k];
      }
      bad += sum != (active ? 1.0 : 0.0);
    } else {
      CU_ASSERT_EQUAL(values, 1);
      double v = vec[offset];
      bad += active ? !(v >= 0.0 && v <= 1.0) : v != QT_SPACE_INACTIVE_VALUE;
    }
    if (conditional) bad += vec[offset + values] != (active ? 1.0 : 0.0);
  }
  return bad;
}

static void test_encode_decode_round_trip(void) {
  static const char *const files[] = {"quicktune-v1.yaml", "default.yaml"};
  for (size_t f = 0; f < COUNT_OF(files); f++) {
    qt_space_t *space = load_shipped(files[f]);
    size_t dim = qt_space_encoded_dim(space);
    double vec[256];
    CU_ASSERT_FATAL(dim <= COUNT_OF(vec));
    qt_rng_t *rng = NULL;
    CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, 99, NULL), 0);
    qt_config config, back;
    CU_ASSERT_EQUAL_FATAL(qt_config_init(&config, space, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(qt_config_init(&back, space, NULL), 0);
    size_t layout_errors = 0, mismatches = 0, invalid = 0;
    for (size_t s = 0; s < 3000; s++) {
      qt_err err;
      qt_space_sample(space, rng, &config, NULL);
      for (size_t c = 0; c < dim; c++) vec[c] = 12345.0; /* every column must be written */
      CU_ASSERT_EQUAL(qt_space_encode(space, &config, vec, &err), 0);
      layout_errors += check_encoded(space, &config, vec);
      CU_ASSERT_EQUAL(qt_space_decode(space, vec, &back, &err), 0);
      if (!qt_config_equal(&config, &back) && mismatches++ == 0) {
        char a[2048], b[2048];
        qt_config_format(&config, a, sizeof a);
        qt_config_format(&back, b, sizeof b);
        fprintf(stderr, "\nround trip changed\n  %s\ninto\n  %s\n", a, b);
      }
      /* Any vector decodes to a valid configuration. */
      for (size_t c = 0; c < dim; c++) vec[c] = -0.5 + 2.0 * qt_rng_uniform(rng);
      if (s % 100 == 0) vec[s % dim] = NAN;
      CU_ASSERT_EQUAL(qt_space_decode(space, vec, &back, &err), 0);
      invalid += qt_config_validate(&back, &err) != 0;
    }
    CU_ASSERT_EQUAL(layout_errors, 0);
    CU_ASSERT_EQUAL(mismatches, 0);
    CU_ASSERT_EQUAL(invalid, 0);
    qt_config_free(&config);
    qt_config_free(&back);
    qt_rng_free(rng);
    qt_space_free(space);
  }
}

static void test_encoded_names(void) {
  qt_space_t *space = load_shipped("quicktune-v1.yaml");
  char name[128];
  CU_ASSERT_EQUAL(qt_space_encoded_name(space, 0, name, sizeof name), 0);
  CU_ASSERT_STRING_EQUAL(name, "model=xcit_tiny_24_p8_384_dist");
  CU_ASSERT_EQUAL(qt_space_encoded_name(space, 23, name, sizeof name), 0);
  CU_ASSERT_STRING_EQUAL(name, "model=beit_base_patch16_384");
  /* model (24), pct_to_freeze, batch_size, amp, then opt's 5 columns. */
  CU_ASSERT_EQUAL(qt_space_encoded_name(space, 24, name, sizeof name), 0);
  CU_ASSERT_STRING_EQUAL(name, "pct_to_freeze");
  CU_ASSERT_EQUAL(qt_space_encoded_name(space, 30, name, sizeof name), 0);
  CU_ASSERT_STRING_EQUAL(name, "opt=adamw");
  /* opt_betas' 4 columns (32..35), then its active column. */
  CU_ASSERT_EQUAL(qt_space_encoded_name(space, 34, name, sizeof name), 0);
  CU_ASSERT_STRING_EQUAL(name, "opt_betas=[0.9, 0.99]");
  CU_ASSERT_EQUAL(qt_space_encoded_name(space, 36, name, sizeof name), 0);
  CU_ASSERT_STRING_EQUAL(name, "opt_betas:active");
  CU_ASSERT_EQUAL(qt_space_encoded_name(space, 37, name, sizeof name), 0);
  CU_ASSERT_STRING_EQUAL(name, "momentum");
  CU_ASSERT_EQUAL(qt_space_encoded_name(space, 38, name, sizeof name), 0);
  CU_ASSERT_STRING_EQUAL(name, "momentum:active");
  size_t width;
  CU_ASSERT_EQUAL(qt_space_encoded_offset(space, hp_index(space, "momentum"), &width), 37);
  CU_ASSERT_EQUAL(width, 2);
  size_t dim = qt_space_encoded_dim(space);
  CU_ASSERT_EQUAL(qt_space_encoded_name(space, dim - 1, name, sizeof name), 0);
  CU_ASSERT_STRING_EQUAL(name, "ra_magnitude:active");
  CU_ASSERT_EQUAL(qt_space_encoded_name(space, dim, name, sizeof name), QT_ERANGE);
  CU_ASSERT_EQUAL(qt_space_encoded_name(space, 0, name, 8), QT_ERANGE);
  /* Names are unique. */
  size_t duplicates = 0;
  for (size_t a = 0; a < dim; a++) {
    char first[128], second[128];
    qt_space_encoded_name(space, a, first, sizeof first);
    for (size_t b = a + 1; b < dim; b++) {
      qt_space_encoded_name(space, b, second, sizeof second);
      duplicates += strcmp(first, second) == 0;
    }
  }
  CU_ASSERT_EQUAL(duplicates, 0);
  qt_space_free(space);
}

/* Encoded values worked out by hand from the definitions. */
static void test_encode_hand_computed(void) {
  qt_space_t *space = load_shipped("default.yaml");
  qt_config config;
  CU_ASSERT_EQUAL_FATAL(qt_config_init(&config, space, NULL), 0);
  CU_ASSERT_EQUAL(qt_space_default_config(space, &config, NULL), 0);
  CU_ASSERT_EQUAL(qt_config_set_string(&config, "opt", "momentum", NULL), 0);
  CU_ASSERT_EQUAL(qt_config_set_string(&config, "momentum", "0.95", NULL), 0);
  CU_ASSERT_EQUAL(qt_config_set_string(&config, "warmup_epochs", "2", NULL), 0);
  CU_ASSERT_EQUAL(qt_config_set_string(&config, "smoothing", "0.05", NULL), 0);
  CU_ASSERT_EQUAL(qt_config_validate(&config, NULL), 0);
  double vec[64];
  CU_ASSERT_EQUAL(qt_space_encode(space, &config, vec, NULL), 0);
#define COLUMN(name) vec[qt_space_encoded_offset(space, hp_index(space, name), NULL)]
  /* model=resnet18: the one-hot block [0, 1, 0]. */
  CU_ASSERT_EQUAL(vec[0], 0.0);
  CU_ASSERT_EQUAL(vec[1], 1.0);
  CU_ASSERT_EQUAL(vec[2], 0.0);
  /* opt=momentum: [0, 1, 0, 0, 0]. */
  CU_ASSERT_EQUAL(vec[3 + 1], 1.0);
  /* lr = 1e-3 on log [1e-5, 1e-2]: (ln 1e-3 - ln 1e-5) / (ln 1e-2 - ln 1e-5) = 2/3. */
  QT_ASSERT_CLOSE(COLUMN("lr"), 2.0 / 3.0, 1e-12);
  /* momentum 0.95, the third of [0.8, 0.9, 0.95, 0.99] by rank: 2/3; active. */
  QT_ASSERT_CLOSE(COLUMN("momentum"), 2.0 / 3.0, 1e-12);
  CU_ASSERT_EQUAL((&COLUMN("momentum"))[1], 1.0);
  /* goodfit_n_ref is inactive: the sentinel and an active column of 0. */
  CU_ASSERT_EQUAL(COLUMN("goodfit_n_ref"), -1.0);
  CU_ASSERT_EQUAL((&COLUMN("goodfit_n_ref"))[1], 0.0);
  /* decay_strength 1e-2 on log [1e-5, 1]: 3/5. */
  QT_ASSERT_CLOSE(COLUMN("decay_strength"), 0.6, 1e-12);
  /* sfa false: 0 (a boolean is one column); sfa_p inactive: -1. */
  CU_ASSERT_EQUAL(COLUMN("sfa"), 0.0);
  CU_ASSERT_EQUAL(COLUMN("sfa_p"), -1.0);
  /* warmup_epochs 2 on [0, 5]: 0.4. batch_size 32 on log [8, 128]: ln 4 / ln 16 = 0.5. */
  QT_ASSERT_CLOSE(COLUMN("warmup_epochs"), 0.4, 1e-12);
  QT_ASSERT_CLOSE(COLUMN("batch_size"), 0.5, 1e-12);
  /* smoothing 0.05 on [0, 0.2]: 0.25. */
  QT_ASSERT_CLOSE(COLUMN("smoothing"), 0.25, 1e-12);
#undef COLUMN
  qt_config_free(&config);
  qt_space_free(space);

  /* Quick-Tune v1: weight_decay 1e-3 has rank 3 of 6 ([0, 1e-5, 1e-4, 1e-3,
   * 1e-2, 0.1]): 3/5; lr 5e-4 on log [1e-5, 1e-2]: ln 50 / ln 1000. */
  space = load_shipped("quicktune-v1.yaml");
  CU_ASSERT_EQUAL_FATAL(qt_config_init(&config, space, NULL), 0);
  CU_ASSERT_EQUAL(qt_space_default_config(space, &config, NULL), 0);
  CU_ASSERT_EQUAL(qt_config_set_string(&config, "weight_decay", "0.001", NULL), 0);
  CU_ASSERT_EQUAL(qt_config_set_string(&config, "lr", "0.0005", NULL), 0);
  double v1[128];
  CU_ASSERT_EQUAL(qt_space_encode(space, &config, v1, NULL), 0);
  QT_ASSERT_CLOSE(v1[qt_space_encoded_offset(space, hp_index(space, "weight_decay"), NULL)], 0.6,
                  1e-12);
  QT_ASSERT_CLOSE(v1[qt_space_encoded_offset(space, hp_index(space, "lr"), NULL)],
                  log(50.0) / log(1000.0), 1e-12);
  qt_config_free(&config);
  qt_space_free(space);
}

/* ------------------------------------------------------------------------- */
/* Initial design                                                             */
/* ------------------------------------------------------------------------- */

static void test_sobol_design(void) {
  static const char *const files[] = {"quicktune-v1.yaml", "default.yaml"};
  for (size_t f = 0; f < COUNT_OF(files); f++) {
    qt_space_t *space = load_shipped(files[f]);
    enum { N = 256 };
    static qt_config design[N], again[N + 10];
    for (size_t c = 0; c < N; c++)
      CU_ASSERT_EQUAL_FATAL(qt_config_init(&design[c], space, NULL), 0);
    for (size_t c = 0; c < N + 10; c++)
      CU_ASSERT_EQUAL_FATAL(qt_config_init(&again[c], space, NULL), 0);
    qt_err err;
    CU_ASSERT_EQUAL(qt_space_sobol(space, N, 0, design, &err), 0);

    /* Valid (in bounds, conditions respected) and not all alike. */
    size_t invalid = 0, mismatched = 0, distinct = 0;
    for (size_t c = 0; c < N; c++) {
      if (qt_config_validate(&design[c], &err) != 0 && invalid++ == 0) {
        fprintf(stderr, "\ninvalid design point %zu: %s\n", c, err.msg);
      }
      mismatched += !activity_matches_conditions(&design[c]);
      distinct += c == 0 || !qt_config_equal(&design[c], &design[c - 1]);
    }
    CU_ASSERT_EQUAL(invalid, 0);
    CU_ASSERT_EQUAL(mismatched, 0);
    CU_ASSERT_EQUAL(distinct, N);

    /* The first hyperparameter (model) is stratified: a Sobol coordinate
     * puts 256 points within 2 of 256/k in every bin of width 1/k. */
    size_t k = qt_space_hp_choice_count(space, 0), counts[64] = {0};
    for (size_t c = 0; c < N; c++) counts[qt_config_index(&design[c], 0)]++;
    for (size_t j = 0; j < k; j++) {
      double expect = (double)N / (double)k;
      CU_ASSERT(fabs((double)counts[j] - expect) <= 2.0);
    }

    /* Deterministic, and skip shifts the sequence. */
    CU_ASSERT_EQUAL(qt_space_sobol(space, N + 10, 0, again, &err), 0);
    for (size_t c = 0; c < N; c++) CU_ASSERT_TRUE(qt_config_equal(&design[c], &again[c]));
    CU_ASSERT_EQUAL(qt_space_sobol(space, N, 10, design, &err), 0);
    for (size_t c = 0; c < N; c++) CU_ASSERT_TRUE(qt_config_equal(&design[c], &again[c + 10]));

    for (size_t c = 0; c < N; c++) qt_config_free(&design[c]);
    for (size_t c = 0; c < N + 10; c++) qt_config_free(&again[c]);
    qt_space_free(space);
  }
}

/* More hyperparameters than GSL's Sobol generator has dimensions: the design
 * switches to reverse Halton and stays valid and stratified. */
static void test_sobol_many_dimensions(void) {
  char text[8192];
  size_t used = (size_t)snprintf(text, sizeof text, "%s", HEAD);
  for (int i = 0; i < 45; i++) {
    used += (size_t)snprintf(text + used, sizeof text - used,
                             "  x%d: {type: float, range: [%d, %d]}\n", i, -i, i + 1);
  }
  used +=
      (size_t)snprintf(text + used, sizeof text - used,
                       "  c: {type: categorical, choices: [p, q]}\n"
                       "  d: {type: integer, range: [1, 1000], log: true, active_when: {c: q}}\n");
  qt_space_t *space = load_text(text);
  CU_ASSERT_EQUAL(qt_space_count(space), 47);
  enum { N = 200 };
  static qt_config design[N], again[N];
  for (size_t c = 0; c < N; c++) {
    CU_ASSERT_EQUAL_FATAL(qt_config_init(&design[c], space, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(qt_config_init(&again[c], space, NULL), 0);
  }
  CU_ASSERT_EQUAL(qt_space_sobol(space, N, 3, design, NULL), 0);
  CU_ASSERT_EQUAL(qt_space_sobol(space, N, 3, again, NULL), 0);
  size_t invalid = 0, below_half = 0, active_d = 0;
  for (size_t c = 0; c < N; c++) {
    invalid += qt_config_validate(&design[c], NULL) != 0;
    CU_ASSERT_TRUE(qt_config_equal(&design[c], &again[c]));
    /* x44 spans [-44, 45]: half of the points below 0.5. */
    below_half += qt_config_number(&design[c], 44) < 0.5;
    active_d += qt_config_is_active(&design[c], 46);
  }
  CU_ASSERT_EQUAL(invalid, 0);
  CU_ASSERT(below_half >= N / 2 - 5 && below_half <= N / 2 + 5);
  CU_ASSERT(active_d >= N / 2 - 5 && active_d <= N / 2 + 5);
  for (size_t c = 0; c < N; c++) {
    qt_config_free(&design[c]);
    qt_config_free(&again[c]);
  }
  qt_space_free(space);
}

/* ------------------------------------------------------------------------- */
/* The Quick-Tune meta-dataset's columns map onto quicktune-v1.yaml           */
/* ------------------------------------------------------------------------- */

/* Every row of ../shared/benchmarks/quicktune-extended/table.csv maps onto a
 * valid configuration of quicktune-v1.yaml. The mapping rules (one-hot
 * columns, -1 as None, fillers of inactive hyperparameters) have one
 * implementation, the Quick-Tune importer; this checks the space against
 * it: an unknown column or value, or a row that does not validate, fails the
 * import. tests/test_metadataset.c checks the importer itself. */
static void test_quicktune_table_maps(void) {
  char path[1024], src[1024], space_file[1024];
  if (!qt_test_shared_path("benchmarks/quicktune-extended/table.csv", path, sizeof path)) return;
  snprintf(src, sizeof src, "%s/benchmarks/quicktune-extended", QT_SHARED_DIR);
  snprintf(space_file, sizeof space_file, "%s/configs/spaces/quicktune-v1.yaml", QT_SOURCE_DIR);
  qt_metadataset_t *md = NULL;
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_metadataset_import_quicktune(src, space_file, &md, &err);
  if (rc != 0) fprintf(stderr, "\nimport: %s\n", err.msg);
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT_EQUAL(qt_metadataset_run_count(md), 3239);
  size_t invalid = 0;
  for (size_t r = 0; r < qt_metadataset_run_count(md); r++) {
    const qt_md_run *run = qt_metadataset_run(md, r);
    if (qt_config_validate(run->config, &err) != 0 && invalid++ < 3)
      fprintf(stderr, "\nrun %s: %s\n", run->id, err.msg);
    invalid += !activity_matches_conditions(run->config);
  }
  CU_ASSERT_EQUAL(invalid, 0);
  qt_metadataset_free(md);
}

/* ------------------------------------------------------------------------- */

static const qt_test_case cases[] = {
    {"load quicktune-v1.yaml", test_load_quicktune_v1},
    {"load default.yaml", test_load_default},
    {"the documented example loads", test_documented_example},
    {"validation errors name line:column", test_validation_errors},
    {"syntax and file errors", test_syntax_and_file_errors},
    {"condition forms and nested activity", test_condition_forms},
    {"set values from importer-style text", test_set_string_importer_values},
    {"prune and validate", test_prune_and_validate},
    {"config lifetime, copy, equality, hash", test_config_lifetime_copy_equal_hash},
    {"sampling is valid and covers every choice", test_sample_valid_and_covering},
    {"sampling scales and determinism", test_sample_scales},
    {"encode/decode round trip", test_encode_decode_round_trip},
    {"encoded column names", test_encoded_names},
    {"encoded values by hand", test_encode_hand_computed},
    {"Sobol design", test_sobol_design},
    {"design beyond 40 dimensions", test_sobol_many_dimensions},
    {"Quick-Tune table columns map onto v1", test_quicktune_table_maps},
    {NULL, NULL},
};

QT_TEST_MAIN("space", cases)

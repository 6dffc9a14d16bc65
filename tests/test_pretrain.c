/*
 * test_pretrain.c - the tools that make the default hub's models and the
 * demo's tasks: build/tools/make-task (cutting a task out of IDX files)
 * and build/tools/pretrain (a ViT trained from random initialization),
 * run as programs on a tiny synthetic IDX dataset written here.
 *
 * The tools are found beside the qtune binary (QT_QTUNE_BINARY's folder,
 * then tools/), where CMake builds every tools/NAME.c as NAME.
 */
#include <stdint.h>

#include "finetune/qt_finetune.h"
#include "qt_test.h"

#define N_CLASSES 3
#define TRAIN_PER_CLASS 12
#define TEST_PER_CLASS 4
#define SIDE 28

static char tmp_root[256];
static char tools_dir[4096];

/* The folder of the tools: <folder of qtune>/tools. */
static const char *tools(void) {
  if (!tools_dir[0]) {
    snprintf(tools_dir, sizeof tools_dir, "%s", QT_QTUNE_BINARY);
    char *slash = strrchr(tools_dir, '/');
    if (slash) *slash = '\0';
    strncat(tools_dir, "/tools", sizeof tools_dir - strlen(tools_dir) - 1);
  }
  return tools_dir;
}

static void put_be32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24);
  p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8);
  p[3] = (unsigned char)v;
}

/* Writes an IDX pair of n images: image i has class i % N_CLASSES, its
 * first pixel holds i (so a test can tell which source image it is) and a
 * bright 7x7 square at a position given by the class (so the task is
 * learnable). */
static void write_split(const char *dir, const char *prefix, size_t n) {
  char path[4096];
  unsigned char header[16];
  snprintf(path, sizeof path, "%s/%s-images-idx3-ubyte", dir, prefix);
  FILE *f = fopen(path, "wb");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  put_be32(header, 0x803);
  put_be32(header + 4, (uint32_t)n);
  put_be32(header + 8, SIDE);
  put_be32(header + 12, SIDE);
  fwrite(header, 1, 16, f);
  for (size_t i = 0; i < n; i++) {
    unsigned char img[SIDE * SIDE];
    memset(img, 0, sizeof img);
    size_t c = i % N_CLASSES;
    for (size_t y = 0; y < 7; y++)
      for (size_t x = 0; x < 7; x++)
        img[(7 + y) * SIDE + 7 * c + 3 + x] = 255;
    img[0] = (unsigned char)i;
    fwrite(img, 1, sizeof img, f);
  }
  fclose(f);
  snprintf(path, sizeof path, "%s/%s-labels-idx1-ubyte", dir, prefix);
  f = fopen(path, "wb");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  put_be32(header, 0x801);
  put_be32(header + 4, (uint32_t)n);
  fwrite(header, 1, 8, f);
  for (size_t i = 0; i < n; i++)
    fputc((int)(i % N_CLASSES), f);
  fclose(f);
}

/* A fresh temporary folder with the synthetic source dataset in src/. */
static const char *setup(void) {
  if (!tmp_root[0]) {
    snprintf(tmp_root, sizeof tmp_root, "/tmp/qt_test_pretrain_XXXXXX");
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(tmp_root));
    char src[512];
    snprintf(src, sizeof src, "%s/src", tmp_root);
    CU_ASSERT_EQUAL_FATAL(mkdir(src, 0777), 0);
    write_split(src, "train", N_CLASSES * TRAIN_PER_CLASS);
    write_split(src, "t10k", N_CLASSES * TEST_PER_CLASS);
  }
  return tmp_root;
}

/* Runs a tool with arguments; returns its exit status (-1 when it did not
 * exit normally). Output goes to the test log. */
static int run_tool(const char *tool, const char *args) {
  char command[8192];
  snprintf(command, sizeof command, "'%s/%s' %s > /dev/null", tools(), tool, args);
  int status = system(command);
  if (status == -1 || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

static int have_tools(void) {
  char path[4200];
  snprintf(path, sizeof path, "%s/pretrain", tools());
  if (access(path, X_OK) != 0) {
    fprintf(stderr, "FAIL: %s is not built (cmake --build builds every tools/*.c)\n", path);
    return 0;
  }
  snprintf(path, sizeof path, "%s/make-task", tools());
  return access(path, X_OK) == 0;
}

/* The bytes of a file (malloc'ed) and its size. */
static unsigned char *slurp(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *buf = malloc(n > 0 ? (size_t)n : 1);
  *size = fread(buf, 1, (size_t)n, f);
  fclose(f);
  return buf;
}

static int same_file(const char *a, const char *b) {
  size_t na = 0, nb = 0;
  unsigned char *x = slurp(a, &na), *y = slurp(b, &nb);
  int same = x && y && na == nb && memcmp(x, y, na) == 0;
  free(x);
  free(y);
  return same;
}

/* ------------------------------------------------------------------------- */

static void test_make_task_subsets_and_relabels(void) {
  const char *root = setup();
  CU_ASSERT_TRUE_FATAL(have_tools());
  char args[4096], path[4096], labels[4096];
  snprintf(args, sizeof args,
           "--data %s/src --per-class 3 --classes 2,0 --test-per-class 2 --seed 5 --out %s/task",
           root, root);
  CU_ASSERT_EQUAL_FATAL(run_tool("make-task", args), 0);

  qt_dataset *ds = NULL;
  qt_err err;
  snprintf(path, sizeof path, "%s/task/train-images-idx3-ubyte", root);
  snprintf(labels, sizeof labels, "%s/task/train-labels-idx1-ubyte", root);
  CU_ASSERT_EQUAL_FATAL(qt_dataset_load_idx(path, labels, NULL, 0, &ds, &err), 0);
  CU_ASSERT_EQUAL(ds->n, 6);
  CU_ASSERT_EQUAL(ds->n_classes, 2);
  size_t counts[2] = {0, 0};
  for (size_t i = 0; i < ds->n; i++) {
    int label = ds->labels[i];
    counts[label]++;
    /* Task label 0 is source class 2, task label 1 source class 0. */
    size_t source_index = ds->images[i * SIDE * SIDE];
    CU_ASSERT_EQUAL((int)(source_index % N_CLASSES), label == 0 ? 2 : 0);
    /* Kept in source order. */
    if (i > 0) CU_ASSERT_TRUE(ds->images[i * SIDE * SIDE] > ds->images[(i - 1) * SIDE * SIDE]);
  }
  CU_ASSERT_EQUAL(counts[0], 3);
  CU_ASSERT_EQUAL(counts[1], 3);
  qt_dataset_free(ds);

  snprintf(path, sizeof path, "%s/task/t10k-images-idx3-ubyte", root);
  snprintf(labels, sizeof labels, "%s/task/t10k-labels-idx1-ubyte", root);
  CU_ASSERT_EQUAL_FATAL(qt_dataset_load_idx(path, labels, NULL, 0, &ds, &err), 0);
  CU_ASSERT_EQUAL(ds->n, 4);
  qt_dataset_free(ds);

  /* qt_data_load reads the folder: train, test, validation carved. */
  qt_data_splits splits = {0};
  qt_data_params dp = qt_data_default_params();
  dp.val_fraction = 0.34;
  snprintf(path, sizeof path, "%s/task", root);
  CU_ASSERT_EQUAL(qt_data_load(path, &dp, &splits, &err), 0);
  if (splits.train) {
    CU_ASSERT_EQUAL(splits.train->n + splits.val->n, 6);
    CU_ASSERT_EQUAL(splits.test->n, 4);
  }
  qt_data_splits_free(&splits);

  /* The same command gives the same bytes; another seed another draw. */
  snprintf(args, sizeof args,
           "--data %s/src --per-class 3 --classes 2,0 --test-per-class 2 --seed 5 --out %s/again",
           root, root);
  CU_ASSERT_EQUAL(run_tool("make-task", args), 0);
  snprintf(args, sizeof args,
           "--data %s/src --per-class 3 --classes 2,0 --test-per-class 2 --seed 6 --out %s/other",
           root, root);
  CU_ASSERT_EQUAL(run_tool("make-task", args), 0);
  char a[4096], b[4096];
  snprintf(a, sizeof a, "%s/task/train-images-idx3-ubyte", root);
  snprintf(b, sizeof b, "%s/again/train-images-idx3-ubyte", root);
  CU_ASSERT_TRUE(same_file(a, b));
  snprintf(b, sizeof b, "%s/other/train-images-idx3-ubyte", root);
  CU_ASSERT_FALSE(same_file(a, b));
}

static void test_make_task_rejects_bad_input(void) {
  const char *root = setup();
  CU_ASSERT_TRUE_FATAL(have_tools());
  char args[4096];
  /* A class the source does not have. */
  snprintf(args, sizeof args, "--data %s/src --per-class 3 --classes 0,7 --out %s/bad", root,
           root);
  CU_ASSERT_EQUAL(run_tool("make-task", args), 3);
  /* No IDX files there. */
  snprintf(args, sizeof args, "--data %s/nothing --per-class 3 --out %s/bad", root, root);
  CU_ASSERT_EQUAL(run_tool("make-task", args), 3);
  /* A missing --per-class is a usage error. */
  snprintf(args, sizeof args, "--data %s/src --out %s/bad 2>/dev/null", root, root);
  CU_ASSERT_EQUAL(run_tool("make-task", args), 1);
}

/* Reads every tensor of a checkpoint into one array (malloc'ed). */
static float *read_all(const char *path, size_t *total) {
  qt_safetensors_t *st = NULL;
  qt_err err;
  if (qt_safetensors_open(path, &st, &err) != 0) return NULL;
  size_t n = 0;
  for (size_t i = 0; i < qt_safetensors_count(st); i++) {
    qt_safetensors_info info;
    qt_safetensors_info_at(st, i, &info);
    n += info.numel;
  }
  float *all = malloc(n * sizeof *all);
  size_t at = 0;
  for (size_t i = 0; i < qt_safetensors_count(st); i++) {
    qt_safetensors_info info;
    qt_safetensors_info_at(st, i, &info);
    qt_safetensors_read_f32(st, info.name, all + at, info.numel, &err);
    at += info.numel;
  }
  qt_safetensors_free(st);
  *total = n;
  return all;
}

static void test_pretrain_writes_a_loadable_trained_checkpoint(void) {
  const char *root = setup();
  CU_ASSERT_TRUE_FATAL(have_tools());
  const char *arch = "--patch 7 --width 16 --depth 1 --heads 2 --val-per-class 2 "
                     "--batch-size 8 --seed 3";
  char args[8192], trained[512], trained2[512], init[512];
  snprintf(trained, sizeof trained, "%s/vit.safetensors", root);
  snprintf(trained2, sizeof trained2, "%s/vit2.safetensors", root);
  snprintf(init, sizeof init, "%s/vit0.safetensors", root);
  snprintf(args, sizeof args, "--data %s/src %s --epochs 1 --threads 1 --out %s", root, arch,
           trained);
  CU_ASSERT_EQUAL_FATAL(run_tool("pretrain", args), 0);
  snprintf(args, sizeof args, "--data %s/src %s --epochs 1 --threads 2 --out %s", root, arch,
           trained2);
  CU_ASSERT_EQUAL_FATAL(run_tool("pretrain", args), 0);
  snprintf(args, sizeof args, "--data %s/src %s --epochs 0 --out %s", root, arch, init);
  CU_ASSERT_EQUAL_FATAL(run_tool("pretrain", args), 0);

  /* The hub's check of the layout passes with the architecture given. */
  qt_err err;
  qt_model_expect expect = qt_model_expect_any();
  expect.image_size = 28;
  expect.patch_size = 7;
  expect.width = 16;
  expect.depth = 1;
  expect.heads = 2;
  expect.num_classes = N_CLASSES;
  qt_model_summary summary;
  CU_ASSERT_EQUAL(qt_model_inspect(trained, QT_MODEL_FAMILY_VIT, &expect, &summary, &err), 0);
  CU_ASSERT_EQUAL(qt_model_inspect(init, QT_MODEL_FAMILY_VIT, &expect, &summary, &err), 0);

  /* The engine loads it for fine-tuning. */
  qt_vit_load_params lp = qt_vit_default_load_params();
  lp.heads = 2;
  qt_vit_t *vit = NULL;
  CU_ASSERT_EQUAL(qt_vit_load(trained, &lp, &vit, &err), 0);
  qt_vit_free(vit);

  /* The test top-1 is in the metadata, a fraction. */
  qt_safetensors_t *st = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_safetensors_open(trained, &st, &err), 0);
  const char *top1 = qt_safetensors_metadata_get(st, "qtune.test_top1");
  CU_ASSERT_PTR_NOT_NULL(top1);
  if (top1) {
    double v = atof(top1);
    CU_ASSERT_TRUE(v >= 0.0 && v <= 1.0);
  }
  CU_ASSERT_STRING_EQUAL(qt_safetensors_metadata_get(st, "format"), "pt");
  qt_safetensors_free(st);

  /* Same seed, other thread count: the same weights; training changed
   * them away from the initialization. */
  size_t n1 = 0, n2 = 0, n0 = 0;
  float *w1 = read_all(trained, &n1), *w2 = read_all(trained2, &n2), *w0 = read_all(init, &n0);
  CU_ASSERT_PTR_NOT_NULL_FATAL(w1);
  CU_ASSERT_PTR_NOT_NULL_FATAL(w2);
  CU_ASSERT_PTR_NOT_NULL_FATAL(w0);
  CU_ASSERT_EQUAL(n1, n2);
  CU_ASSERT_EQUAL(n1, n0);
  if (n1 == n2) CU_ASSERT_EQUAL(memcmp(w1, w2, n1 * sizeof *w1), 0);
  if (n1 == n0) CU_ASSERT_NOT_EQUAL(memcmp(w1, w0, n1 * sizeof *w1), 0);
  free(w0);
  free(w1);
  free(w2);
}

static void test_pretrain_rejects_bad_architecture(void) {
  const char *root = setup();
  CU_ASSERT_TRUE_FATAL(have_tools());
  char args[4096];
  /* 5 does not divide 28. */
  snprintf(args, sizeof args, "--data %s/src --patch 5 --epochs 0 --out %s/x.safetensors 2>/dev/null",
           root, root);
  CU_ASSERT_EQUAL(run_tool("pretrain", args), 1);
  snprintf(args, sizeof args, "--data %s/src --arch vit_huge --out %s/x.safetensors 2>/dev/null",
           root, root);
  CU_ASSERT_EQUAL(run_tool("pretrain", args), 1);
}

static void test_cleanup(void) {
  if (tmp_root[0]) {
    char command[512];
    snprintf(command, sizeof command, "rm -rf '%s'", tmp_root);
    CU_ASSERT_EQUAL(system(command), 0);
  }
}

static const qt_test_case cases[] = {
    {"make-task subsets, relabels and is deterministic", test_make_task_subsets_and_relabels},
    {"make-task rejects bad input", test_make_task_rejects_bad_input},
    {"pretrain writes a loadable trained checkpoint",
     test_pretrain_writes_a_loadable_trained_checkpoint},
    {"pretrain rejects a bad architecture", test_pretrain_rejects_bad_architecture},
    {"cleanup", test_cleanup},
    {NULL, NULL}};

QT_TEST_MAIN("pretrain", cases)

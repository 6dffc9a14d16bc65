/*
 * make-cnn - writes a randomly initialized convolutional network
 * (qt_cnn_write_init: timm's layout, names and initialization) as an F32
 * safetensors checkpoint that qt_cnn_load, `qtune finetune` and the hub
 * read like a pretrained one.
 *
 *   make-cnn --arch NAME --classes N [--seed S] --out FILE
 *
 * NAME is one of the presets of src/finetune/qt_cnn_arch.c
 * (mobilenetv2_100, mobilenetv2_050, efficientnet_b0, resnet18, resnet34,
 * resnet50, mobilenetv2_tiny, efficientnet_tiny, resnet_tiny); the seed
 * defaults to 0, and the same arguments give the same bytes. It prints the
 * architecture, its family and the parameter count (batch norm running
 * statistics excluded), read back from the written file.
 *
 * Exit codes: 0 done, 1 bad usage, 3 a failure.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/qt_finetune.h"

#define EXIT_USAGE 1
#define EXIT_FAIL 3

static void usage(FILE *f) {
  fprintf(f,
          "usage: make-cnn --arch NAME --classes N [--seed S] --out FILE\n"
          "  NAME: mobilenetv2_100, mobilenetv2_050, efficientnet_b0, resnet18, resnet34,\n"
          "        resnet50, mobilenetv2_tiny, efficientnet_tiny, resnet_tiny\n");
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

int main(int argc, char **argv) {
  const char *arch = NULL, *out = NULL;
  long classes = 0;
  unsigned long long seed = 0;
  for (int i = 1; i < argc; i++) {
    const char *flag = argv[i];
    if (!strcmp(flag, "--help") || !strcmp(flag, "-h")) {
      usage(stdout);
      return 0;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "make-cnn: %s needs a value\n", flag);
      usage(stderr);
      return EXIT_USAGE;
    }
    const char *value = argv[++i];
    char *end = NULL;
    if (!strcmp(flag, "--arch")) {
      arch = value;
    } else if (!strcmp(flag, "--out")) {
      out = value;
    } else if (!strcmp(flag, "--classes")) {
      classes = strtol(value, &end, 10);
      if (end == value || *end || classes < 1) {
        fprintf(stderr, "make-cnn: --classes expects an integer >= 1, got '%s'\n", value);
        return EXIT_USAGE;
      }
    } else if (!strcmp(flag, "--seed")) {
      seed = strtoull(value, &end, 10);
      if (end == value || *end || value[0] == '-') {
        fprintf(stderr, "make-cnn: --seed expects an integer >= 0, got '%s'\n", value);
        return EXIT_USAGE;
      }
    } else {
      fprintf(stderr, "make-cnn: unknown flag '%s'\n", flag);
      usage(stderr);
      return EXIT_USAGE;
    }
  }
  if (!arch || !out || classes < 1) {
    fprintf(stderr, "make-cnn: --arch, --classes and --out are required\n");
    usage(stderr);
    return EXIT_USAGE;
  }
  qt_err err;
  qt_err_clear(&err);
  qt_model_family family;
  if (qt_cnn_arch_family(arch, &family, &err) != 0) {
    fprintf(stderr, "make-cnn: %s\n", qt_err_message(&err));
    return EXIT_USAGE;
  }
  if (qt_cnn_write_init(arch, classes, (uint64_t)seed, out, &err) != 0) {
    fprintf(stderr, "make-cnn: %s\n", qt_err_message(&err));
    return EXIT_FAIL;
  }
  /* The count from the file itself: every tensor but the running
   * statistics. */
  qt_safetensors_t *st = NULL;
  if (qt_safetensors_open(out, &st, &err) != 0) {
    fprintf(stderr, "make-cnn: %s\n", qt_err_message(&err));
    return EXIT_FAIL;
  }
  size_t params = 0, tensors = qt_safetensors_count(st);
  for (size_t i = 0; i < tensors; i++) {
    qt_safetensors_info info;
    qt_safetensors_info_at(st, i, &info);
    if (!ends_with(info.name, ".running_mean") && !ends_with(info.name, ".running_var"))
      params += info.numel;
  }
  qt_safetensors_free(st);
  printf("%s (family %s, %ld classes, seed %llu): %zu parameters, %zu tensors -> %s\n", arch,
         qt_model_family_name(family), classes, seed, params, tensors, out);
  return 0;
}

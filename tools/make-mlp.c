/*
 * make-mlp - writes a randomly initialized MLP for tabular data
 * (qt_mlp_write_init: qtune's MLP layout, torch.nn's initialization) as an
 * F32 safetensors checkpoint that qt_mlp_load, qt_model_load (family mlp)
 * and the hub read like a pretrained one.
 *
 *   make-mlp --features F --classes C --width W --depth D [--seed S]
 *            [--no-norm] [--activation relu|gelu] --out FILE
 *
 * Every block is fc -> LayerNorm (unless --no-norm) -> activation (ReLU by
 * default), W outputs each; the seed defaults to 0, and the same arguments
 * give the same bytes. It prints the shape and the parameter count, read
 * back from the written file.
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
          "usage: make-mlp --features F --classes C --width W --depth D [--seed S]\n"
          "                [--no-norm] [--activation relu|gelu] --out FILE\n");
}

/* Parses an integer >= min into *out; 0 or EXIT_USAGE. */
static int parse_count(const char *flag, const char *value, long long min, long long *out) {
  char *end = NULL;
  long long v = strtoll(value, &end, 10);
  if (end == value || *end || v < min) {
    fprintf(stderr, "make-mlp: %s expects an integer >= %lld, got '%s'\n", flag, min, value);
    return EXIT_USAGE;
  }
  *out = v;
  return 0;
}

int main(int argc, char **argv) {
  const char *out = NULL;
  long long features = 0, classes = 0, width = 0, depth = 0, seed = 0;
  qt_mlp_arch arch = qt_mlp_default_arch();
  for (int i = 1; i < argc; i++) {
    const char *flag = argv[i];
    if (!strcmp(flag, "--help") || !strcmp(flag, "-h")) {
      usage(stdout);
      return 0;
    }
    if (!strcmp(flag, "--no-norm")) {
      arch.layer_norm = 0;
      continue;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "make-mlp: %s needs a value\n", flag);
      usage(stderr);
      return EXIT_USAGE;
    }
    const char *value = argv[++i];
    int rc = 0;
    if (!strcmp(flag, "--out")) {
      out = value;
    } else if (!strcmp(flag, "--features")) {
      rc = parse_count(flag, value, 1, &features);
    } else if (!strcmp(flag, "--classes")) {
      rc = parse_count(flag, value, 2, &classes);
    } else if (!strcmp(flag, "--width")) {
      rc = parse_count(flag, value, 1, &width);
    } else if (!strcmp(flag, "--depth")) {
      rc = parse_count(flag, value, 1, &depth);
    } else if (!strcmp(flag, "--seed")) {
      rc = parse_count(flag, value, 0, &seed);
    } else if (!strcmp(flag, "--activation")) {
      if (!strcmp(value, "relu")) {
        arch.activation = QT_MLP_ACTIVATION_RELU;
      } else if (!strcmp(value, "gelu")) {
        arch.activation = QT_MLP_ACTIVATION_GELU;
      } else {
        fprintf(stderr, "make-mlp: --activation expects relu or gelu, got '%s'\n", value);
        return EXIT_USAGE;
      }
    } else {
      fprintf(stderr, "make-mlp: unknown flag '%s'\n", flag);
      usage(stderr);
      return EXIT_USAGE;
    }
    if (rc) return rc;
  }
  if (!out || !features || !classes || !width || !depth) {
    fprintf(stderr, "make-mlp: --features, --classes, --width, --depth and --out are required\n");
    usage(stderr);
    return EXIT_USAGE;
  }
  arch.n_features = (size_t)features;
  arch.num_classes = (long)classes;
  arch.width = (size_t)width;
  arch.depth = (size_t)depth;
  qt_err err;
  qt_err_clear(&err);
  if (qt_mlp_write_init(&arch, (uint64_t)seed, out, &err) != 0) {
    fprintf(stderr, "make-mlp: %s\n", qt_err_message(&err));
    return EXIT_FAIL;
  }
  qt_model_summary summary;
  if (qt_model_inspect(out, QT_MODEL_FAMILY_MLP, NULL, &summary, &err) != 0) {
    fprintf(stderr, "make-mlp: %s\n", qt_err_message(&err));
    return EXIT_FAIL;
  }
  printf(
      "mlp (%lld features, width %lld, depth %lld, %s%s, %lld classes, seed %lld): %.0f "
      "parameters, %zu tensors -> %s\n",
      features, width, depth, arch.layer_norm ? "LayerNorm, " : "",
      arch.activation == QT_MLP_ACTIVATION_GELU ? "GELU" : "ReLU", classes, seed,
      summary.parameters, summary.tensors, out);
  return 0;
}

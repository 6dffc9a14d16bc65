/*
 * test_cli.c - the qtune binary's exit codes and help, run as a user would.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/qt_core.h"
#include "qt_test.h"

/* Runs qtune with the given arguments; returns its exit code and keeps what
 * it printed (stdout and stderr together) in `output`. */
static int run_qtune(char *output, size_t size, const char *args) {
  char command[2048];
  snprintf(command, sizeof command, "'%s' %s 2>&1", QT_QTUNE_BINARY, args);
  FILE *pipe = popen(command, "r");
  if (!pipe) return -1;
  size_t used = fread(output, 1, size - 1, pipe);
  output[used] = '\0';
  int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static char out[1 << 16];

static void test_no_arguments_is_usage(void) {
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, ""), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "usage: qtune <command>"));
}

static void test_help_and_version(void) {
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "--help"), 0);
  const char *commands[] = {"search", "status", "export", "meta", "bench", "finetune", "hub", NULL};
  for (int i = 0; commands[i]; i++) CU_ASSERT_PTR_NOT_NULL(strstr(out, commands[i]));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "--version"), 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "qtune " QT_VERSION_STRING));
}

static void test_unknown_command_and_flag(void) {
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "frobnicate"), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "unknown command 'frobnicate'"));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "search --no-such-flag"), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "unknown flag '--no-such-flag'"));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "meta frobnicate"), 1);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "search --budget"), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "needs a value"));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "status"), 1);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "missing argument"));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "status a b"), 1);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "search -x"), 1);
}

/* Every declared command prints real help (its usage line and its flags)
 * and exits 0 with --help. */
static void test_every_command_has_help(void) {
  const struct {
    const char *path, *expect;
  } cases[] = {
      {"search", "--budget DURATION"},   {"status", "--format F"},
      {"export", "RUN_DIR"},             {"finetune", "--config FILE"},
      {"bench", "--optimizers LIST"},    {"meta", "import"},
      {"meta import", "--format NAME"},  {"meta train", "--exclude-datasets LIST"},
      {"meta collect", "--runs-per-task N"}, {"hub", "list"},
      {"hub list", "usage: qtune hub list"}, {"hub show", "MODEL"},
      {"space sample", "--sobol"},       {NULL, NULL}};
  for (int i = 0; cases[i].path; i++) {
    char args[256];
    snprintf(args, sizeof args, "%s --help", cases[i].path);
    int code = run_qtune(out, sizeof out, args);
    CU_ASSERT_EQUAL(code, 0);
    if (!strstr(out, cases[i].expect)) {
      fprintf(stderr, "qtune %s: help lacks '%s':\n%s\n", args, cases[i].expect, out);
      CU_FAIL("help text");
    }
  }
}

/* Declared but unbuilt commands say so in a sentence and exit 2. */
static void test_unimplemented_commands_exit_2(void) {
  const char *cases[] = {"search --budget 4h", "status runs/x", "export runs/x", "bench",
                         "finetune", "meta import --format quicktune src --out dst",
                         "meta train", "meta collect", "hub list", "hub show m", NULL};
  for (int i = 0; cases[i]; i++) {
    int code = run_qtune(out, sizeof out, cases[i]);
    CU_ASSERT_EQUAL(code, 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "not implemented yet"));
  }
}

static void test_space_commands(void) {
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "space check configs/spaces/quicktune-v1.yaml "
                                             "configs/spaces/default.yaml"), 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "quicktune-v1"));
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "space check no/such/space.yaml"), 3);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "no/such/space.yaml"));

  /* Same seed, same configurations; another seed, others. */
  static char first[sizeof out];
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "space sample configs/spaces/default.yaml --n 4 --seed 7"), 0);
  memcpy(first, out, sizeof out);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "space sample configs/spaces/default.yaml --n 4 --seed 7"), 0);
  CU_ASSERT_STRING_EQUAL(first, out);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "space sample configs/spaces/default.yaml --n 4 --seed 8"), 0);
  CU_ASSERT_STRING_NOT_EQUAL(first, out);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "space sample configs/spaces/default.yaml --n zero"), 1);
  CU_ASSERT_EQUAL(run_qtune(out, sizeof out, "space encode configs/spaces/quicktune-v1.yaml --n 3"), 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(out, "round trip ok"));
}

static const qt_test_case cases[] = {
    {"no arguments is a usage error", test_no_arguments_is_usage},
    {"--help and --version", test_help_and_version},
    {"unknown command or flag exits 1", test_unknown_command_and_flag},
    {"every command has real help", test_every_command_has_help},
    {"unimplemented commands exit 2", test_unimplemented_commands_exit_2},
    {"space check, sample, encode", test_space_commands},
    {NULL, NULL}};

QT_TEST_MAIN("cli", cases)

/*
 * qt_cli.h - the pieces shared by the qtune subcommands.
 *
 * Every subcommand is described by a qt_cli_command: its name, a one-line
 * summary, its usage line, a paragraph of help, its flags and a handler. The
 * flag parser in cli_args.c reads `--name value`, `--name=value` and boolean
 * `--name`, collects positional arguments, and answers --help itself, so that
 * every command's help is generated from the same table that parses it.
 *
 * Exit codes (documented in README.md):
 *   0  success
 *   1  usage error: unknown command or flag, missing or malformed argument
 *   2  the command is not implemented yet
 *   3  the command ran and failed: bad input file, failed run, ...
 */
#ifndef QT_CLI_H
#define QT_CLI_H

#include <stddef.h>

#include "core/qt_core.h"

enum {
  QT_CLI_EXIT_OK = 0,
  QT_CLI_EXIT_USAGE = 1,
  QT_CLI_EXIT_NOT_IMPLEMENTED = 2,
  QT_CLI_EXIT_FAILURE = 3
};

#define QT_CLI_MAX_FLAGS 32
#define QT_CLI_MAX_POSITIONAL 16

typedef struct qt_cli_flag {
  const char *name;    /* long name without the dashes; NULL ends a table */
  const char *metavar; /* NULL for a boolean flag */
  const char *help;
} qt_cli_flag;

/* The parsed command line of one subcommand. */
typedef struct qt_cli_args {
  const struct qt_cli_command *command;
  const char *values[QT_CLI_MAX_FLAGS]; /* by flag index; "1" for a set boolean */
  const char *positional[QT_CLI_MAX_POSITIONAL];
  int n_positional;
} qt_cli_args;

typedef struct qt_cli_command {
  const char *name;     /* "import" for `qtune meta import` */
  const char *path;     /* "meta import": the words typed after `qtune` */
  const char *summary;  /* one line for the command list */
  const char *usage;    /* arguments after the path, e.g. "--format quicktune SRC --out DIR" */
  const char *help;     /* paragraphs shown by --help */
  const qt_cli_flag *flags;
  int min_positional, max_positional;
  /* NULL: the command is declared but not implemented yet (exit code 2). */
  int (*run)(const qt_cli_args *args);
  const struct qt_cli_command *subcommands; /* for `meta`, `hub`; ends with name NULL */
} qt_cli_command;

/* Parses argv (the words after the command path) for `command`. Returns
 * QT_CLI_EXIT_OK when the handler should run, or -1 when --help was printed
 * (the caller exits 0), or QT_CLI_EXIT_USAGE after printing the problem. */
int qt_cli_parse(const qt_cli_command *command, int argc, char **argv, qt_cli_args *args);

/* The value of flag `name`, or NULL when it was not given. */
const char *qt_cli_get(const qt_cli_args *args, const char *name);

void qt_cli_print_help(const qt_cli_command *command);
/* "qtune <path>: <message>" on stderr, then a hint to --help; returns 1. */
int qt_cli_usage_error(const qt_cli_command *command, const char *fmt, ...) QT_PRINTF(2, 3);
/* Prints "qtune <path>: <err message>" and returns QT_CLI_EXIT_FAILURE. */
int qt_cli_fail(const qt_cli_command *command, const qt_err *err);

/* --device of finetune and search: auto (also when not given), cpu, cuda
 * (= cuda:0) or cuda:N. */
typedef struct qt_cli_device {
  int is_auto; /* auto: the GPU when there is one */
  int cuda;    /* cuda or cuda:N given */
  int index;   /* N of cuda:N, else 0 */
} qt_cli_device;
/* Parses text into *out; for cuda:N with N > 0 also makes device N the
 * process's (qt_cuda_select_device: the runs train on this thread). 0, or
 * an exit status after printing the problem (a usage error for a name
 * that is none of these, a failure for a device the machine lacks). */
int qt_cli_device_option(const qt_cli_command *command, const char *text, qt_cli_device *out);

/* --model-encoding, --descriptors and --hub (meta train, bench): the codec
 * for the models of md's runs (cmd_meta.c). 0, or an exit status after
 * printing the problem. */
struct qt_metadataset;
struct qt_model_codec;
int qt_cli_model_codec(const qt_cli_args *args, const struct qt_metadataset *md,
                       struct qt_model_codec **out);

/* Handlers of the commands that exist, one file each (cmd_*.c). */
int qt_cli_space_check(const qt_cli_args *args);
int qt_cli_space_sample(const qt_cli_args *args);
int qt_cli_space_encode(const qt_cli_args *args);
int qt_cli_hub_list(const qt_cli_args *args);
int qt_cli_hub_show(const qt_cli_args *args);
int qt_cli_meta_import(const qt_cli_args *args);
int qt_cli_meta_train(const qt_cli_args *args);
int qt_cli_meta_collect(const qt_cli_args *args);
int qt_cli_bench(const qt_cli_args *args);
int qt_cli_finetune(const qt_cli_args *args);
int qt_cli_search(const qt_cli_args *args);
int qt_cli_status(const qt_cli_args *args);
int qt_cli_export(const qt_cli_args *args);

#endif /* QT_CLI_H */

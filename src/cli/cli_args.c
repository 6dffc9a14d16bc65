/*
 * cli_args.c - flag parsing and help output shared by every subcommand.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/qt_cli.h"
#include "finetune/qt_finetune.h"

static int flag_index(const qt_cli_command *command, const char *name, size_t length) {
  if (!command->flags) return -1;
  for (int i = 0; command->flags[i].name; i++) {
    if (strlen(command->flags[i].name) == length && strncmp(command->flags[i].name, name, length) == 0)
      return i;
  }
  return -1;
}

int qt_cli_usage_error(const qt_cli_command *command, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "qtune %s: ", command->path);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\nusage: qtune %s %s\nRun 'qtune %s --help' for details.\n", command->path,
          command->usage, command->path);
  return QT_CLI_EXIT_USAGE;
}

int qt_cli_fail(const qt_cli_command *command, const qt_err *err) {
  fprintf(stderr, "qtune %s: %s\n", command->path, qt_err_message(err));
  return QT_CLI_EXIT_FAILURE;
}

int qt_cli_device_option(const qt_cli_command *command, const char *text, qt_cli_device *out) {
  memset(out, 0, sizeof *out);
  if (!text || strcmp(text, "auto") == 0) {
    out->is_auto = 1;
    return 0;
  }
  if (strcmp(text, "cpu") == 0) return 0;
  out->cuda = 1;
  if (strcmp(text, "cuda") == 0) return 0;
  char *end = NULL;
  long index = strncmp(text, "cuda:", 5) == 0 ? strtol(text + 5, &end, 10) : -1;
  if (index < 0 || index > 1023 || end == text + 5 || *end != '\0')
    return qt_cli_usage_error(command, "--device: '%s' is not auto, cpu, cuda or cuda:N", text);
  out->index = (int)index;
  if (index == 0) return 0;
  qt_err err;
  if (qt_cuda_select_device(out->index, &err) != 0) return qt_cli_fail(command, &err);
  return 0;
}

void qt_cli_print_help(const qt_cli_command *command) {
  printf("usage: qtune %s %s\n\n%s\n", command->path, command->usage, command->summary);
  if (command->help) printf("\n%s", command->help);
  if (command->subcommands) {
    printf("\ncommands:\n");
    for (const qt_cli_command *sub = command->subcommands; sub->name; sub++)
      printf("  %-10s %s%s\n", sub->name, sub->summary, sub->run ? "" : " (not implemented yet)");
  }
  if (command->flags && command->flags[0].name) {
    printf("\nflags:\n");
    for (int i = 0; command->flags[i].name; i++) {
      const qt_cli_flag *flag = &command->flags[i];
      char left[64];
      if (flag->metavar)
        snprintf(left, sizeof left, "--%s %s", flag->name, flag->metavar);
      else
        snprintf(left, sizeof left, "--%s", flag->name);
      printf("  %-26s %s\n", left, flag->help);
    }
  }
  printf("  %-26s %s\n", "-h, --help", "show this help and exit");
  if (!command->run && !command->subcommands)
    printf("\nThis command is not implemented yet: it exits with code 2.\n");
}

int qt_cli_parse(const qt_cli_command *command, int argc, char **argv, qt_cli_args *args) {
  memset(args, 0, sizeof *args);
  args->command = command;
  int only_positional = 0;
  for (int i = 0; i < argc; i++) {
    const char *word = argv[i];
    if (!only_positional && strcmp(word, "--") == 0) {
      only_positional = 1;
      continue;
    }
    if (!only_positional && (strcmp(word, "-h") == 0 || strcmp(word, "--help") == 0)) {
      qt_cli_print_help(command);
      return -1;
    }
    if (!only_positional && word[0] == '-' && word[1] != '\0') {
      if (word[1] != '-')
        return qt_cli_usage_error(command, "unknown flag '%s' (flags are long: --name)", word);
      const char *name = word + 2;
      const char *equals = strchr(name, '=');
      size_t length = equals ? (size_t)(equals - name) : strlen(name);
      int index = flag_index(command, name, length);
      if (index < 0) return qt_cli_usage_error(command, "unknown flag '--%.*s'", (int)length, name);
      const qt_cli_flag *flag = &command->flags[index];
      if (!flag->metavar) {
        if (equals) return qt_cli_usage_error(command, "flag '--%s' takes no value", flag->name);
        args->values[index] = "1";
      } else if (equals) {
        args->values[index] = equals + 1;
      } else {
        if (i + 1 >= argc)
          return qt_cli_usage_error(command, "flag '--%s' needs a value (%s)", flag->name, flag->metavar);
        args->values[index] = argv[++i];
      }
      continue;
    }
    if (args->n_positional >= QT_CLI_MAX_POSITIONAL || args->n_positional >= command->max_positional)
      return qt_cli_usage_error(command, "unexpected argument '%s'", word);
    args->positional[args->n_positional++] = word;
  }
  if (args->n_positional < command->min_positional)
    return qt_cli_usage_error(command, "missing argument");
  return QT_CLI_EXIT_OK;
}

const char *qt_cli_get(const qt_cli_args *args, const char *name) {
  int index = flag_index(args->command, name, strlen(name));
  return index < 0 ? NULL : args->values[index];
}

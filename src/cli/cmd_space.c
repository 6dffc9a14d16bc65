/*
 * cmd_space.c - `qtune space check|sample|encode`: search spaces from the
 * command line.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/qt_cli.h"
#include "metadata/qt_metadata.h"

/* ------------------------------------------------------------------------- */
/* Shared flag handling                                                       */
/* ------------------------------------------------------------------------- */

typedef struct sample_options {
  long n;
  long seed;
  int sobol;
  int csv;
} sample_options;

static int parse_count(const qt_cli_args *args, const char *flag, long fallback, long min, long *out) {
  const char *text = qt_cli_get(args, flag);
  *out = fallback;
  if (!text) return 0;
  if (qt_parse_long(text, out) != 0 || *out < min)
    return qt_cli_usage_error(args->command, "--%s wants a whole number >= %ld, not '%s'", flag, min,
                              text);
  return 0;
}

static int parse_sample_options(const qt_cli_args *args, sample_options *options) {
  if (parse_count(args, "n", 5, 1, &options->n) || parse_count(args, "seed", 0, 0, &options->seed))
    return QT_CLI_EXIT_USAGE;
  options->sobol = qt_cli_get(args, "sobol") != NULL;
  const char *format = qt_cli_get(args, "format");
  if (format && strcmp(format, "csv") != 0 && strcmp(format, "yaml") != 0)
    return qt_cli_usage_error(args->command, "--format is yaml or csv, not '%s'", format);
  options->csv = format && strcmp(format, "csv") == 0;
  return 0;
}

/* Draws options->n configurations (initialized here; the caller frees them
 * with free_configs). */
static int draw_configs(const qt_space_t *space, const sample_options *options, qt_config **out,
                        qt_err *err) {
  qt_config *configs = calloc((size_t)options->n, sizeof *configs);
  qt_rng_t *rng = NULL;
  int rc = configs ? 0 : qt_err_set(err, QT_ENOMEM, "out of memory");
  for (long i = 0; rc == 0 && i < options->n; i++) rc = qt_config_init(&configs[i], space, err);
  if (rc == 0 && options->sobol) rc = qt_space_sobol(space, (size_t)options->n, 0, configs, err);
  if (rc == 0 && !options->sobol) rc = qt_rng_init(&rng, (uint64_t)options->seed, err);
  for (long i = 0; rc == 0 && !options->sobol && i < options->n; i++)
    rc = qt_space_sample(space, rng, &configs[i], err);
  qt_rng_free(rng);
  *out = configs;
  return rc;
}

static void free_configs(qt_config *configs, long n) {
  for (long i = 0; configs && i < n; i++) qt_config_free(&configs[i]);
  free(configs);
}

/* ------------------------------------------------------------------------- */
/* space check                                                                */
/* ------------------------------------------------------------------------- */

static void print_domain(const qt_space_t *space, size_t hp) {
  qt_hp_type type = qt_space_hp_type(space, hp);
  if (type == QT_HP_TYPE_INTEGER || type == QT_HP_TYPE_FLOAT) {
    double min, max;
    qt_space_hp_range(space, hp, &min, &max);
    printf("[%g, %g]", min, max);
  } else {
    size_t count = qt_space_hp_choice_count(space, hp);
    printf("{");
    for (size_t c = 0; c < count; c++)
      printf("%s%s", c ? ", " : "", qt_space_hp_choice(space, hp, c));
    printf("}");
  }
  if (qt_space_hp_log(space, hp)) printf(" log");
}

static void print_conditions(const qt_space_t *space, size_t hp) {
  size_t count = qt_space_hp_condition_count(space, hp);
  for (size_t k = 0; k < count; k++) {
    qt_space_condition condition;
    qt_space_hp_condition(space, hp, k, &condition);
    printf("%s%s in {", k ? " and " : "  when ", qt_space_hp_name(space, condition.parent));
    for (size_t v = 0; v < condition.value_count; v++)
      printf("%s%s", v ? ", " : "", qt_space_hp_choice(space, condition.parent, condition.values[v]));
    printf("}");
  }
}

int qt_cli_space_check(const qt_cli_args *args) {
  int status = QT_CLI_EXIT_OK;
  for (int f = 0; f < args->n_positional; f++) {
    qt_err err;
    qt_space_t *space = NULL;
    if (qt_space_load_file(args->positional[f], &space, &err) != 0) {
      status = qt_cli_fail(args->command, &err);
      continue;
    }
    const char *fidelity;
    long min, max;
    qt_space_fidelity(space, &fidelity, &min, &max);
    printf("%s: space '%s', %zu hyperparameters, fidelity %s %ld..%ld, %zu encoded columns\n",
           args->positional[f], qt_space_name(space), qt_space_count(space), fidelity, min, max,
           qt_space_encoded_dim(space));
    for (size_t hp = 0; hp < qt_space_count(space); hp++) {
      printf("  %-22s %-11s ", qt_space_hp_name(space, hp),
             qt_hp_type_name(qt_space_hp_type(space, hp)));
      print_domain(space, hp);
      print_conditions(space, hp);
      printf("\n");
    }
    qt_space_free(space);
  }
  return status;
}

/* ------------------------------------------------------------------------- */
/* space sample                                                               */
/* ------------------------------------------------------------------------- */

static void print_yaml(const qt_space_t *space, const qt_config *configs, long n) {
  char value[256];
  for (long i = 0; i < n; i++) {
    printf("- # configuration %ld\n", i + 1);
    for (size_t hp = 0; hp < qt_space_count(space); hp++) {
      if (!qt_config_is_active(&configs[i], hp)) continue;
      qt_config_get_string(&configs[i], hp, value, sizeof value);
      /* Quote values YAML would read as something else ("None", "[0.9, 0.99]"). */
      int quote = qt_space_hp_type(space, hp) == QT_HP_TYPE_CATEGORICAL &&
                  strpbrk(value, "[]{},:#'\" ") != NULL;
      printf(quote ? "  %s: \"%s\"\n" : "  %s: %s\n", qt_space_hp_name(space, hp), value);
    }
  }
}

static void print_csv(const qt_space_t *space, const qt_config *configs, long n) {
  char value[256];
  for (size_t hp = 0; hp < qt_space_count(space); hp++)
    printf("%s%s", hp ? "," : "", qt_space_hp_name(space, hp));
  printf("\n");
  for (long i = 0; i < n; i++) {
    for (size_t hp = 0; hp < qt_space_count(space); hp++) {
      qt_config_get_string(&configs[i], hp, value, sizeof value);
      printf(strpbrk(value, ",\"") ? "%s\"%s\"" : "%s%s", hp ? "," : "", value);
    }
    printf("\n");
  }
}

int qt_cli_space_sample(const qt_cli_args *args) {
  sample_options options;
  int status = parse_sample_options(args, &options);
  if (status != 0) return status;
  qt_err err;
  qt_space_t *space = NULL;
  qt_config *configs = NULL;
  if (qt_space_load_file(args->positional[0], &space, &err) != 0 ||
      draw_configs(space, &options, &configs, &err) != 0) {
    status = qt_cli_fail(args->command, &err);
  } else if (options.csv) {
    print_csv(space, configs, options.n);
  } else {
    print_yaml(space, configs, options.n);
  }
  free_configs(configs, options.n);
  qt_space_free(space);
  return status;
}

/* ------------------------------------------------------------------------- */
/* space encode                                                               */
/* ------------------------------------------------------------------------- */

static int encode_and_check(const qt_space_t *space, const qt_config *config, long index,
                            double *vec, qt_config *decoded, qt_err *err) {
  char text[4096], name[256];
  qt_config_format(config, text, sizeof text);
  printf("configuration %ld: %s\n", index + 1, text);
  int rc = qt_space_encode(space, config, vec, err);
  if (rc != 0) return rc;
  size_t dim = qt_space_encoded_dim(space);
  for (size_t column = 0; column < dim; column++) {
    qt_space_encoded_name(space, column, name, sizeof name);
    printf("  [%3zu] %-40s %8.4f\n", column, name, vec[column]);
  }
  rc = qt_space_decode(space, vec, decoded, err);
  if (rc != 0) return rc;
  if (!qt_config_equal(config, decoded)) {
    qt_config_format(decoded, text, sizeof text);
    return qt_err_set(err, QT_ENUMERIC, "decoding configuration %ld gave a different one: %s",
                      index + 1, text);
  }
  printf("  decode(encode(x)) == x: round trip ok\n");
  return 0;
}

int qt_cli_space_encode(const qt_cli_args *args) {
  sample_options options;
  int status = parse_sample_options(args, &options);
  if (status != 0) return status;
  qt_err err;
  qt_space_t *space = NULL;
  qt_config *configs = NULL;
  qt_config decoded = {0};
  double *vec = NULL;
  int rc = qt_space_load_file(args->positional[0], &space, &err);
  if (rc == 0) rc = draw_configs(space, &options, &configs, &err);
  if (rc == 0) rc = qt_config_init(&decoded, space, &err);
  if (rc == 0) {
    vec = malloc(qt_space_encoded_dim(space) * sizeof *vec);
    if (!vec) rc = qt_err_set(&err, QT_ENOMEM, "out of memory");
  }
  for (long i = 0; rc == 0 && i < options.n; i++)
    rc = encode_and_check(space, &configs[i], i, vec, &decoded, &err);
  if (rc != 0) status = qt_cli_fail(args->command, &err);
  free(vec);
  qt_config_free(&decoded);
  free_configs(configs, options.n);
  qt_space_free(space);
  return status;
}

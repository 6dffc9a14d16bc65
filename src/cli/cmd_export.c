/*
 * cmd_export.c - `qtune export RUN_DIR [--out DIR] [--no-plots]`: the best
 * configuration, the CSVs and the plots of a search (qt_search_export_to),
 * then the incumbent's full weights (qt_search_export_weights).
 *
 * Like status, it reads only the journal (and, for the weights, the
 * incumbent checkpoint), so it may run while the search goes on.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "bo/qt_bo.h"
#include "cli/qt_cli.h"

int qt_cli_export(const qt_cli_args *args) {
  const char *run_dir = args->positional[0];
  const char *out = qt_cli_get(args, "out");
  int plots = qt_cli_get(args, "no-plots") == NULL;
  char summary_dir[4096];
  if ((size_t)snprintf(summary_dir, sizeof summary_dir, "%s/summary", run_dir) >=
      sizeof summary_dir)
    return qt_cli_usage_error(args->command, "RUN_DIR is too long");
  if (!out) out = summary_dir;
  qt_err err;
  qt_err_clear(&err);
  if (qt_search_export_to(run_dir, out, plots, &err) != 0) return qt_cli_fail(args->command, &err);
  /* The weights need the incumbent's checkpoint, which a search writes
   * with its journal; a journal alone (copied elsewhere, or written by
   * hand) still gets the other files. */
  char weights[4200], incumbent[4200];
  snprintf(weights, sizeof weights, "%s/best.safetensors", out);
  snprintf(incumbent, sizeof incumbent, "%s/incumbent.safetensors", run_dir);
  int have_weights = access(incumbent, R_OK) == 0;
  if (have_weights && qt_search_export_weights(run_dir, weights, &err) != 0)
    return qt_cli_fail(args->command, &err);
  if (!have_weights)
    fprintf(stderr, "qtune export: %s is absent: the weights are not exported\n", incumbent);
  printf("qtune export: wrote %s/best_config.yaml, incumbent.csv, trials.csv%s", out,
         have_weights ? ", best.safetensors" : "");
  if (plots) {
    char png[4200];
    snprintf(png, sizeof png, "%s/curves.png", out);
    FILE *f = fopen(png, "rb");
    if (f) {
      fclose(f);
      printf(", incumbent.png|svg, curves.png|svg");
    }
  }
  printf("\n");
  return QT_CLI_EXIT_OK;
}

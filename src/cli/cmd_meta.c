/*
 * cmd_meta.c - `qtune meta ...`: meta-datasets from the command line. So far
 * `meta import`, which converts Quick-Tune's layout to the native folder.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/qt_cli.h"
#include "metadata/qt_metadata.h"

/* ------------------------------------------------------------------------- */
/* meta import                                                                */
/* ------------------------------------------------------------------------- */

#define QT_DEFAULT_IMPORT_SPACE "configs/spaces/quicktune-v1.yaml"

/* The space Quick-Tune's runs were sampled from: the shipped file, found
 * from the working directory (a clone) or else from the source tree this
 * binary was built from. */
static const char *default_space(char *buf, size_t size) {
  if (access(QT_DEFAULT_IMPORT_SPACE, R_OK) == 0) return QT_DEFAULT_IMPORT_SPACE;
  snprintf(buf, size, "%s/%s", QT_SOURCE_DIR, QT_DEFAULT_IMPORT_SPACE);
  return buf;
}

int qt_cli_meta_import(const qt_cli_args *args) {
  const qt_cli_command *command = args->command;
  const char *format = qt_cli_get(args, "format");
  const char *out_dir = qt_cli_get(args, "out");
  const char *space = qt_cli_get(args, "space");
  const char *src = args->positional[0];
  if (!format) return qt_cli_usage_error(command, "--format is required (quicktune)");
  if (strcmp(format, "quicktune") != 0)
    return qt_cli_usage_error(command, "unknown --format '%s' (known: quicktune)", format);
  if (!out_dir) return qt_cli_usage_error(command, "--out DIR is required");
  char space_buf[4096];
  if (!space) space = default_space(space_buf, sizeof space_buf);

  qt_err err;
  qt_err_clear(&err);
  qt_metadataset_t *md = NULL, *reloaded = NULL;
  int status = QT_CLI_EXIT_OK;
  if (qt_metadataset_import_quicktune(src, space, &md, &err) < 0) return qt_cli_fail(command, &err);
  printf("imported %s (Quick-Tune layout) as \"%s\", search space \"%s\"\n", src,
         qt_metadataset_name(md), qt_space_name(qt_metadataset_space(md)));
  printf("  %zu datasets, %zu runs, %zu points; every configuration is valid for the space\n",
         qt_metadataset_dataset_count(md), qt_metadataset_run_count(md),
         qt_metadataset_point_count(md));

  /* The written folder is read back and compared, so that a successful
   * import guarantees a folder that loads with the same content. */
  if (qt_metadataset_save(md, out_dir, &err) < 0 ||
      qt_metadataset_load(out_dir, &reloaded, &err) < 0 ||
      qt_metadataset_compare(md, reloaded, &err) < 0) {
    status = qt_cli_fail(command, &err);
  } else {
    printf(
        "wrote %s (metadataset.yaml, space.yaml, datasets.csv, runs.csv, curves.csv); it "
        "loads back identical\n",
        out_dir);
  }
  qt_metadataset_free(reloaded);
  qt_metadataset_free(md);
  return status;
}

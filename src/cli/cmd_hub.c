/*
 * cmd_hub.c - `qtune hub list|show`: the models of a hub and whether their
 * checkpoints are in place and match. The hub file is read by metadata/
 * (qt_hub_load_file); each checkpoint is checked by the engine's layout check
 * (qt_model_inspect), which takes the entry's plain fields.
 *
 * Exit codes: 0 when every listed checkpoint checks out, 3 when the hub file
 * is bad or some checkpoint is missing or does not match (the table is still
 * printed), 1 for usage errors (from the parser).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cli/qt_cli.h"
#include "finetune/qt_finetune.h"
#include "metadata/qt_metadata.h"

#define QT_DEFAULT_HUB "configs/hubs/default.yaml"

/* ------------------------------------------------------------------------- */
/* Helpers                                                                    */
/* ------------------------------------------------------------------------- */

/* "1355", "22.1K", "5.7M", "86.6M"; "-" when unknown (0). */
static void format_count(double count, char *buf, size_t size) {
  if (!(count > 0))
    snprintf(buf, size, "-");
  else if (count < 1e4)
    snprintf(buf, size, "%.0f", count);
  else if (count < 1e6)
    snprintf(buf, size, "%.1fK", count / 1e3);
  else if (count < 1e9)
    snprintf(buf, size, "%.1fM", count / 1e6);
  else
    snprintf(buf, size, "%.2fG", count / 1e9);
}

typedef enum model_status { STATUS_OK, STATUS_MISSING, STATUS_INVALID } model_status;

/* Checks model i's checkpoint against its entry; a problem's message starts
 * with where the entry is: "hub:line:column: model 'name': checkpoint ...". */
static model_status check(const qt_hub_t *hub, size_t index, qt_model_summary *summary,
                          qt_err *err) {
  const qt_hub_model *m = qt_hub_model_at(hub, index);
  qt_model_expect expect = {.image_size = m->image_size,
                            .num_classes = m->num_classes,
                            .patch_size = m->patch_size,
                            .heads = m->heads,
                            .depth = m->depth,
                            .width = m->width,
                            .parameters = m->parameters};
  qt_model_family family = QT_MODEL_FAMILY_VIT;
  qt_err inner;
  qt_err_clear(&inner);
  int rc =
      qt_model_family_parse(m->family, &family) == 0
          ? qt_model_inspect(m->checkpoint, family, &expect, summary, &inner)
          : qt_err_set(&inner, QT_ESCHEMA, "family '%s' has no layout in this qtune", m->family);
  if (rc == 0) return STATUS_OK;
  qt_err_set(err, rc, "%s:%d:%d: model '%s': %s", qt_hub_source(hub), m->line, m->column, m->name,
             qt_err_message(&inner));
  return rc == QT_ENOENT ? STATUS_MISSING : STATUS_INVALID;
}

static int load_hub(const qt_cli_args *args, const char *path, qt_hub_t **hub) {
  qt_err err;
  if (qt_hub_load_file(path, hub, &err) != 0) return qt_cli_fail(args->command, &err);
  return QT_CLI_EXIT_OK;
}

/* ------------------------------------------------------------------------- */
/* hub list                                                                   */
/* ------------------------------------------------------------------------- */

int qt_cli_hub_list(const qt_cli_args *args) {
  const char *path = args->n_positional > 0 ? args->positional[0] : QT_DEFAULT_HUB;
  qt_hub_t *hub = NULL;
  int status = load_hub(args, path, &hub);
  if (status != QT_CLI_EXIT_OK) return status;

  size_t count = qt_hub_count(hub), ok = 0, missing = 0, invalid = 0;
  printf("%s: hub '%s', %zu model%s\n", path, qt_hub_name(hub), count, count == 1 ? "" : "s");
  printf("  %-30s %-13s %8s %6s %8s  %s\n", "name", "family", "params", "image", "classes",
         "checkpoint");
  for (size_t i = 0; i < count; i++) {
    const qt_hub_model *m = qt_hub_model_at(hub, i);
    qt_model_summary summary;
    qt_err err;
    model_status s = check(hub, i, &summary, &err);
    char params[32], image[32];
    /* The hub's descriptor, else what a valid checkpoint holds. */
    format_count(m->parameters > 0 ? m->parameters : (s == STATUS_OK ? summary.parameters : 0),
                 params, sizeof params);
    if (m->image_size > 0)
      snprintf(image, sizeof image, "%ld", m->image_size);
    else
      snprintf(image, sizeof image, "-");
    printf("  %-30s %-13s %8s %6s %8ld  ", m->name, m->family, params, image, m->num_classes);
    switch (s) {
      case STATUS_OK:
        printf("ok\n");
        ok++;
        break;
      case STATUS_MISSING:
        printf("not fetched yet (%s)\n", m->checkpoint);
        missing++;
        break;
      case STATUS_INVALID:
        printf("invalid: %s\n", qt_err_message(&err));
        invalid++;
        break;
    }
  }
  printf("%zu ok, %zu not fetched yet, %zu invalid\n", ok, missing, invalid);
  qt_hub_free(hub);
  return ok == count ? QT_CLI_EXIT_OK : QT_CLI_EXIT_FAILURE;
}

/* ------------------------------------------------------------------------- */
/* hub show                                                                   */
/* ------------------------------------------------------------------------- */

static void print_triple(const char *label, const double *values) {
  printf("  %-16s %g %g %g\n", label, values[0], values[1], values[2]);
}

int qt_cli_hub_show(const qt_cli_args *args) {
  const char *name = args->positional[0];
  const char *path = args->n_positional > 1 ? args->positional[1] : QT_DEFAULT_HUB;
  qt_hub_t *hub = NULL;
  int status = load_hub(args, path, &hub);
  if (status != QT_CLI_EXIT_OK) return status;

  size_t index;
  if (qt_hub_find(hub, name, &index) != 0) {
    fprintf(stderr, "qtune %s: no model '%s' in %s; it has:", args->command->path, name, path);
    for (size_t i = 0; i < qt_hub_count(hub); i++)
      fprintf(stderr, "%s %s", i ? "," : "", qt_hub_model_at(hub, i)->name);
    fprintf(stderr, "\n");
    qt_hub_free(hub);
    return QT_CLI_EXIT_FAILURE;
  }
  const qt_hub_model *m = qt_hub_model_at(hub, index);
  char count[32];
  printf("%s\n", m->name);
  printf("  %-16s %s:%d:%d (hub '%s')\n", "defined at", path, m->line, m->column, qt_hub_name(hub));
  printf("  %-16s %s\n", "family", m->family);
  printf("  %-16s %s\n", "checkpoint", m->checkpoint_text);
  if (strcmp(m->checkpoint, m->checkpoint_text) != 0)
    printf("  %-16s %s\n", "resolved", m->checkpoint);
  if (m->image_size > 0) {
    printf("  %-16s %ld px\n", "image size", m->image_size);
    print_triple("mean", m->mean);
    print_triple("std", m->std);
  }
  printf("  %-16s %ld%s\n", "classes", m->num_classes, m->num_classes ? "" : " (no head)");
  if (m->patch_size) printf("  %-16s %ld px\n", "patch size", m->patch_size);
  if (m->heads) printf("  %-16s %ld\n", "heads", m->heads);
  format_count(m->parameters, count, sizeof count);
  printf("  %-16s %s\n", "parameters", count);
  if (m->depth) printf("  %-16s %ld\n", "depth", m->depth);
  if (m->width) printf("  %-16s %ld\n", "width", m->width);
  if (m->pretrain_dataset[0]) printf("  %-16s %s\n", "pretrained on", m->pretrain_dataset);
  if (!isnan(m->pretrain_top1)) printf("  %-16s %.4g\n", "pretrain top-1", m->pretrain_top1);
  if (m->description[0]) printf("  %-16s %s\n", "description", m->description);

  qt_model_summary summary;
  qt_err err;
  model_status s = check(hub, index, &summary, &err);
  if (s == STATUS_OK) {
    format_count(summary.parameters, count, sizeof count);
    printf("  %-16s ok: %zu tensors, %s parameters, depth %ld, width %ld, %ld classes", "status",
           summary.tensors, count, summary.depth, summary.width, summary.num_classes);
    if (summary.patch_size)
      printf(", patch %ld, %ld px%s%s", summary.patch_size, summary.image_size,
             summary.layer_scale ? ", layer scale" : "", summary.distilled ? ", distilled" : "");
    printf("\n");
  } else if (s == STATUS_MISSING) {
    printf("  %-16s not fetched yet (%s)\n", "status", m->checkpoint);
  } else {
    printf("  %-16s invalid: %s\n", "status", qt_err_message(&err));
  }
  qt_hub_free(hub);
  return s == STATUS_OK ? QT_CLI_EXIT_OK : QT_CLI_EXIT_FAILURE;
}

/*
 * main.c - the qtune command line: the command table and dispatch.
 *
 * Commands that are declared but not built yet have a NULL handler: their
 * --help describes the interface they will have, and running them prints one
 * sentence saying they are not implemented and exits with code 2.
 */
#include <stdio.h>
#include <string.h>

#include "cli/qt_cli.h"

/* ------------------------------------------------------------------------- */
/* Flags shared by several commands                                           */
/* ------------------------------------------------------------------------- */

#define QT_FLAG_SEED \
  { "seed", "N", "random seed (default 0); the same seed gives the same numbers" }
#define QT_FLAG_DEVICE \
  { "device", "D", "auto, cpu, cuda (= cuda:0) or cuda:N (default auto: the first GPU when one is present, for the pipelines that train there)" }
#define QT_FLAG_LOG \
  { "log-level", "L", "debug, info, warn, error or silent (default info)" }

/* ------------------------------------------------------------------------- */
/* search, status, export, finetune, bench                                    */
/* ------------------------------------------------------------------------- */

static const qt_cli_flag search_flags[] = {
    {"data", "DIR", "training data: an image folder (root/<class>/*.png|jpg), IDX files or a CSV"},
    {"hub", "FILE", "model hub YAML (default configs/hubs/default.yaml)"},
    {"space", "FILE", "search-space YAML (default configs/spaces/default.yaml)"},
    {"budget", "DURATION", "total wall-clock budget, e.g. 90s, 45m, 4h, 1h30m, 1d or HH:MM:SS"},
    {"run-dir", "DIR", "where the journal, checkpoints and exports go (default runs/<timestamp>)"},
    {"surrogate", "FILE",
     "meta-trained surrogate (qtune meta train) for quicktune (default "
     "meta-dataset/surrogate.qts when it fits the space and hub; none: no "
     "surrogate, and the optimizer defaults to quicktune-MC)"},
    {"max-trials", "N", "stop after N configurations"},
    {"max-epochs-total", "N", "stop after N epochs over all configurations"},
    {"target", "SCORE", "stop as soon as a validation score reaches SCORE (in [0, 1])"},
    {"max-disk", "SIZE", "cap on checkpoint storage; checkpoints of abandoned trials are evicted"},
    {"extend", "DURATION", "add DURATION to the budget of an existing run directory"},
    {"overwrite", NULL, "start over in an existing run directory instead of resuming it"},
    {"optimizer", "NAME",
     "quicktune (default with --surrogate), quicktune-MC (default without), "
     "quicktune-M, quicktune-C, random, sh, hyperband, asha, bohb"},
    {"max-epochs", "N", "epochs per configuration at most (default: the space's fidelity max)"},
    {"pool", "N", "candidate configurations sampled from the space (default 128)"},
    {"threads", "N", "data preprocessing threads (default: the cores, at most 8)"},
    QT_FLAG_DEVICE,
    QT_FLAG_SEED,
    QT_FLAG_LOG,
    {NULL, NULL, NULL}};

static const qt_cli_flag status_flags[] = {
    {"format", "F", "table, json or yaml (default table)"},
    {"watch", "SECONDS", "redraw every SECONDS until the run ends"},
    {NULL, NULL, NULL}};

static const qt_cli_flag export_flags[] = {
    {"out", "DIR", "where to write the summary (default RUN_DIR/summary)"},
    {"no-plots", NULL, "skip the gnuplot plots"},
    {NULL, NULL, NULL}};

static const qt_cli_flag finetune_flags[] = {
    {"hub", "FILE", "model hub YAML"},
    {"model", "NAME", "model of the hub to fine-tune"},
    {"data", "DIR", "training data (as for search)"},
    {"config", "FILE", "pipeline configuration YAML, e.g. summary/best_config.yaml of a search"},
    {"epochs", "N", "number of epochs"},
    {"out", "DIR", "where curve.csv and final.safetensors go (default: none written)"},
    {"space", "FILE",
     "search space the config is checked against "
     "(default configs/spaces/default.yaml)"},
    QT_FLAG_DEVICE,
    QT_FLAG_SEED,
    {NULL, NULL, NULL}};

static const qt_cli_flag bench_flags[] = {
    {"meta-dataset", "DIR", "meta-dataset folder whose learning curves are replayed"},
    {"optimizers", "LIST",
     "comma-separated: random, sh, hyperband, asha, bohb, quicktune, "
     "quicktune-M, quicktune-C, quicktune-MC"},
    {"budget", "DURATION", "simulated wall-clock budget per run"},
    {"seeds", "RANGE", "seeds to run, e.g. 0-4 or 0,3,7"},
    {"datasets", "LIST", "comma-separated subset of the meta-dataset's datasets (default all)"},
    {"meta-train-folds", "K",
     "meta-train surrogates on K-1 folds of datasets, test on the held-out fold"},
    {"surrogate", "FILE", "test a surrogate meta-trained elsewhere"},
    {"out", "DIR", "trajectories, regret CSVs and plots"},
    {"threads", "N", "parallel runs (default: the number of cores)"},
    {"overhead", "RULE",
     "measured (default: the optimizer's wall-clock seconds advance the "
     "clock), cpu (its thread's CPU seconds) or ignore (replayed costs only: "
     "reproducible bit for bit)"},
    {"max-train-rows", "N",
     "quicktune: cap on the surrogate's training rows (default 0: all, "
     "as Quick-Tune)"},
    {"refit-steps", "R,F",
     "quicktune: Adam steps of a surrogate refit that starts over (R) and of one "
     "warm-started (F) (default 1000,50, as Quick-Tune)"},
    {"meta-train-iterations", "N", "with --meta-train-folds: iterations per fold (default 10000)"},
    {"model-encoding", "MODE",
     "with --meta-train-folds: onehot (default) or descriptors (see meta train)"},
    {"descriptors", "FILE", "model descriptors YAML (with --model-encoding descriptors)"},
    {"hub", "FILE", "hub whose models' descriptors are used (with --model-encoding descriptors)"},
    {"resume", NULL,
     "continue in --out: read back the runs and folds an earlier run finished "
     "with the same parameters"},
    {NULL, NULL, NULL}};

/* ------------------------------------------------------------------------- */
/* meta, hub, space                                                           */
/* ------------------------------------------------------------------------- */

static const qt_cli_flag meta_import_flags[] = {
    {"format", "NAME",
     "layout of SRC: quicktune (perf.json, cost.json, table.csv, descriptors.json)"},
    {"out", "DIR", "native meta-dataset folder to write"},
    {"space", "FILE",
     "search space the configurations belong to "
     "(default configs/spaces/quicktune-v1.yaml)"},
    {NULL, NULL, NULL}};

static const qt_cli_flag meta_train_flags[] = {
    {"meta-dataset", "DIR", "native meta-dataset folder"},
    {"exclude-datasets", "LIST", "comma-separated datasets to leave out of meta-training"},
    {"iterations", "N", "meta-training iterations (default 10000)"},
    {"learning-rate", "LR", "Adam learning rate of the GP and extractor (default 1e-4)"},
    {"out", "FILE", "surrogate file to write"},
    {"model-encoding", "MODE",
     "onehot (default: the model one-hot) or descriptors (model "
     "family, size, input size, depth, width, pretraining top-1)"},
    {"descriptors", "FILE", "model descriptor YAML (configs/model-descriptors/) for descriptors"},
    {"hub", "FILE", "model hub YAML whose descriptors fill in models --descriptors lacks"},
    QT_FLAG_SEED,
    {NULL, NULL, NULL}};

static const qt_cli_flag meta_collect_flags[] = {
    {"hub", "FILE", "model hub YAML (default configs/hubs/default.yaml)"},
    {"space", "FILE", "search-space YAML (default configs/spaces/default.yaml)"},
    {"tasks", "DIR|FILES", "folder of task YAML files (configs/tasks), or comma-separated files"},
    {"runs-per-task", "N", "sampled configurations per task"},
    {"max-epochs", "N", "epochs per run"},
    {"out", "DIR", "native meta-dataset folder to write (resumed when it exists)"},
    {"jobs", "J", "worker processes (default 1)"},
    {"threads", "N", "engine threads per run (default 1)"},
    {"name", "NAME", "meta-dataset name (default qtune-collect)"},
    {"assemble-only", NULL,
     "run nothing: write the meta-dataset from the runs already collected (e.g. a "
     "collection stopped in the middle)"},
    {"device", "D",
     "cpu (default), cuda, cuda:N or auto: where every run trains; its seconds are the costs, "
     "so a collection keeps one device (with CUDA: --jobs 1)"},
    QT_FLAG_SEED,
    {NULL, NULL, NULL}};

static const qt_cli_command meta_subcommands[] = {
    {"import", "meta import", "convert a meta-dataset from another layout to the native one",
     "--format quicktune SRC --out DIR [--space FILE]",
     "Reads Quick-Tune's layout (perf.json, cost.json, table.csv, descriptors.json), maps the\n"
     "one-hot columns back to values of the search space, scales accuracy to [0, 1] and keeps\n"
     "the per-epoch costs, writes the native folder DIR and checks that it loads back\n"
     "identical. Prints the number of datasets, runs and curve points.\n",
     meta_import_flags, 1, 1, qt_cli_meta_import, NULL},
    {"train", "meta train", "meta-train the surrogates (performance and cost) on a meta-dataset",
     "--meta-dataset DIR --out FILE [--exclude-datasets LIST] [--iterations N] "
     "[--model-encoding onehot|descriptors [--descriptors FILE] [--hub FILE]]",
     "Trains the deep-kernel GP and the cost predictor on the meta-dataset's learning curves\n"
     "and writes one surrogate file, tied to the search space and encoding it was trained for.\n",
     meta_train_flags, 0, 0, qt_cli_meta_train, NULL},
    {"collect", "meta collect", "build a meta-dataset by fine-tuning sampled configurations",
     "--tasks DIR|FILES --runs-per-task N --max-epochs N --out DIR [--hub FILE] [--space FILE] "
     "[--jobs J]",
     "Samples configurations, runs them on every task with the fine-tuning engine and writes\n"
     "the learning curves, per-epoch costs and dataset meta-features. Each finished run is kept\n"
     "in DIR/parts/<task>/<run>.csv, so running the same command again continues an\n"
     "interrupted collection. A task's data are its YAML's data: folder, else\n"
     "$QTUNE_DATA/tasks/<name> (tools/make-tasks builds them).\n",
     meta_collect_flags, 0, 0, qt_cli_meta_collect, NULL},
    {NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, NULL, NULL}};

static const qt_cli_command hub_subcommands[] = {
    {"list", "hub list", "list the models of a hub and check their checkpoints", "[FILE]",
     "Prints one line per model: name, family, parameters, image size, classes and the state\n"
     "of its checkpoint (ok, not fetched yet, or invalid with the reason). FILE defaults to\n"
     "configs/hubs/default.yaml. Exits 3 when a checkpoint is missing or does not match.\n",
     NULL, 0, 1, qt_cli_hub_list, NULL},
    {"show", "hub show", "show one model of a hub in full", "MODEL [FILE]",
     "Prints the hub entry of MODEL and checks that its checkpoint exists and matches its\n"
     "family's layout (what the checkpoint holds: depth, width, patch and image size, classes).\n"
     "FILE defaults to configs/hubs/default.yaml. Exits 3 when the checkpoint is not usable.\n",
     NULL, 1, 2, qt_cli_hub_show, NULL},
    {NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, NULL, NULL}};

static const qt_cli_flag space_sample_flags[] = {
    {"n", "N", "number of configurations (default 5)"},
    {"sobol", NULL, "draw a Sobol design instead of uniform samples"},
    {"format", "F", "yaml or csv (default yaml)"},
    QT_FLAG_SEED,
    {NULL, NULL, NULL}};

static const qt_cli_command space_subcommands[] = {
    {"check", "space check", "validate search-space files and summarize them", "FILE...",
     "Loads each file with strict validation; errors name file:line:column. Prints the\n"
     "hyperparameters, their domains and conditions, and the encoded dimension.\n",
     NULL, 1, QT_CLI_MAX_POSITIONAL, qt_cli_space_check, NULL},
    {"sample", "space sample", "draw configurations from a search space", "FILE [--n N] [--sobol]",
     "Draws configurations uniformly (log-uniform on log scales) or from a Sobol design;\n"
     "inactive conditional hyperparameters are absent. Same seed, same configurations.\n",
     space_sample_flags, 1, 1, qt_cli_space_sample, NULL},
    {"encode", "space encode", "show the numeric encoding the surrogates see", "FILE [--n N]",
     "Samples configurations and prints each with its encoded vector, column by column,\n"
     "then checks that decoding gives the configuration back.\n",
     space_sample_flags, 1, 1, qt_cli_space_encode, NULL},
    {NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, NULL, NULL}};

/* ------------------------------------------------------------------------- */
/* The top-level table                                                        */
/* ------------------------------------------------------------------------- */

static const qt_cli_command commands[] = {
    {"search", "search", "find the best model and fine-tuning pipeline within a budget",
     "--data DIR --budget DURATION [--hub FILE] [--space FILE] [--run-dir DIR]",
     "Runs cost-aware gray-box Bayesian optimization (Quick-Tune): a meta-trained deep-kernel\n"
     "GP predicts each configuration's next-epoch score, a cost model its seconds, and the\n"
     "configuration with the best expected improvement per second is trained one more epoch.\n"
     "The run directory holds a journal: running the same command again resumes it\n"
     "(--extend adds budget; --overwrite starts over). Ctrl-C stops at a clean point.\n"
     "Prints one line per epoch (or a table on a terminal) and a final line with the\n"
     "budget, time used and overshoot. Exit codes: 0 ended, 1 usage, 3 failure,\n"
     "130 interrupted.\n",
     search_flags, 0, 0, qt_cli_search, NULL},
    {"status", "status", "show the progress of a search from its journal",
     "RUN_DIR [--format F] [--watch SECONDS]",
     "Prints the budget used, the trials, the incumbent and one row per trial (best first)\n"
     "from RUN_DIR/journal.jsonl. Reads only the journal and never takes the run's lock, so it\n"
     "is safe while the search runs. --watch S redraws every S seconds until the run ends.\n",
     status_flags, 1, 1, qt_cli_status, NULL},
    {"export", "export", "export the best configuration, weights, CSVs and plots of a search",
     "RUN_DIR [--out DIR] [--no-plots]",
     "Writes summary/best_config.yaml, incumbent.csv, trials.csv, the best fine-tuned weights\n"
     "(safetensors, adapters merged) and gnuplot plots (incumbent over time, learning curves).\n"
     "Reads the journal, so it may run while the search goes on. CSV columns: README.md.\n",
     export_flags, 1, 1, qt_cli_export, NULL},
    {"finetune", "finetune", "fine-tune one model with one pipeline configuration",
     "--hub FILE --model NAME --data DIR --config FILE --epochs N [--out DIR] [--device D] "
     "[--seed S]",
     "Prints one line per epoch (train loss, validation top-1, seconds, images/s) and writes\n"
     "DIR/curve.csv (epoch,train_loss,val_loss,val_top1,seconds,images_per_s) and\n"
     "DIR/final.safetensors (all weights, timm's names). The config is a YAML mapping of\n"
     "hyperparameter values of the space (e.g. opt: adamw, lr: 0.001); the rest take the\n"
     "space's defaults. --device auto (the default) trains on the first GPU when one is\n"
     "present. See docs/engine.md and docs/cuda.md.\n",
     finetune_flags, 0, 0, qt_cli_finetune, NULL},
    {"meta", "meta", "meta-datasets of learning curves: import, meta-train surrogates, collect",
     "<command> [flags]", NULL, NULL, 0, 0, NULL, meta_subcommands},
    {"bench", "bench", "compare optimizers on a meta-dataset by replaying its learning curves",
     "--meta-dataset DIR --optimizers LIST --budget DURATION [--seeds RANGE] --out DIR",
     "Simulated wall clock = replayed epoch costs + the optimizer's measured overhead. Writes\n"
     "trajectories, normalized regret over time with 95% intervals and ranks as CSV; draw\n"
     "them with tools/plot-regret DIR.\n",
     bench_flags, 0, 0, qt_cli_bench, NULL},
    {"hub", "hub", "model hubs: list and inspect pretrained models", "<command> [flags]", NULL,
     NULL, 0, 0, NULL, hub_subcommands},
    {"space", "space", "search spaces: validate, sample, show the encoding", "<command> [flags]",
     NULL, NULL, 0, 0, NULL, space_subcommands},
    {NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, NULL, NULL}};

static void print_main_help(FILE *out) {
  fprintf(out,
          "usage: qtune <command> [flags]\n\n"
          "qtune picks the pretrained model and fine-tuning pipeline for your data within a\n"
          "time budget (cost-aware gray-box Bayesian optimization, as in Quick-Tune), then\n"
          "fine-tunes it.\n\ncommands:\n");
  for (const qt_cli_command *c = commands; c->name; c++) {
    int implemented = c->run != NULL;
    for (const qt_cli_command *s = c->subcommands; s && s->name; s++) implemented |= s->run != NULL;
    fprintf(out, "  %-10s %s%s\n", c->name, c->summary,
            implemented ? "" : " (not implemented yet)");
  }
  fprintf(out,
          "\nRun 'qtune <command> --help' for the flags of a command.\n"
          "  --version   print the version and build configuration\n"
          "  -h, --help  show this help\n");
}

static int run_command(const qt_cli_command *command, int argc, char **argv) {
  if (command->subcommands) {
    if (argc < 1) {
      qt_cli_print_help(command);
      return QT_CLI_EXIT_USAGE;
    }
    if (strcmp(argv[0], "-h") == 0 || strcmp(argv[0], "--help") == 0) {
      qt_cli_print_help(command);
      return QT_CLI_EXIT_OK;
    }
    for (const qt_cli_command *sub = command->subcommands; sub->name; sub++) {
      if (strcmp(sub->name, argv[0]) == 0) return run_command(sub, argc - 1, argv + 1);
    }
    return qt_cli_usage_error(command, "unknown command '%s'", argv[0]);
  }
  qt_cli_args args;
  int status = qt_cli_parse(command, argc, argv, &args);
  if (status < 0) return QT_CLI_EXIT_OK; /* --help was printed */
  if (status != QT_CLI_EXIT_OK) return status;
  if (!command->run) {
    fprintf(stderr, "qtune %s: this command is not implemented yet.\n", command->path);
    return QT_CLI_EXIT_NOT_IMPLEMENTED;
  }
  const char *level_text = qt_cli_get(&args, "log-level");
  if (level_text) {
    qt_log_level level;
    qt_err err;
    if (qt_log_level_parse(level_text, &level, &err) != 0)
      return qt_cli_usage_error(command, "%s", qt_err_message(&err));
    qt_log_set_level(level);
  }
  return command->run(&args);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    print_main_help(stderr);
    return QT_CLI_EXIT_USAGE;
  }
  if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
      strcmp(argv[1], "help") == 0) {
    print_main_help(stdout);
    return QT_CLI_EXIT_OK;
  }
  if (strcmp(argv[1], "--version") == 0) {
    printf("qtune %s (CUDA backend: %s)\n", QT_VERSION_STRING,
           QT_HAVE_CUDA ? "built" : "not built");
    return QT_CLI_EXIT_OK;
  }
  for (const qt_cli_command *c = commands; c->name; c++) {
    if (strcmp(c->name, argv[1]) == 0) return run_command(c, argc - 2, argv + 2);
  }
  fprintf(stderr, "qtune: unknown command '%s'\n\n", argv[1]);
  print_main_help(stderr);
  return QT_CLI_EXIT_USAGE;
}

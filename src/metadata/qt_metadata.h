/*
 * qt_metadata.h - everything qtune knows about a search before it trains:
 * the search space, configurations and their numeric encoding (later also
 * the model hub, dataset meta-features and the meta-dataset store).
 *
 * What this module implements (so far):
 *   - search spaces read from versioned YAML files (`version: 1`, see
 *     docs/search-space.md for the full schema), validated strictly: every
 *     problem is reported as "file:line:column: what is wrong";
 *   - configurations (qt_config): one value slot per hyperparameter, with
 *     inactive conditional hyperparameters absent;
 *   - uniform random sampling and a quasi-random (Sobol) initial design;
 *   - a deterministic fixed-length numeric encoding of a configuration for
 *     the surrogates, and its inverse.
 *   - the meta-dataset store: recorded learning curves in a native folder
 *     (meta-dataset/README.md), built in memory, saved, loaded with strict
 *     "file:line" validation, synthesized for tests and benchmarks, and
 *     imported from Quick-Tune's layout.
 *
 * Memory ownership:
 *   - qt_space_t is opaque. qt_space_load_file/load_string return a space owned
 *     by the caller, released with qt_space_free(). Every string or array an
 *     accessor returns belongs to the space and stays valid until it is freed.
 *   - qt_config is a small caller-owned struct (it may live on the stack or
 *     in an array of a candidate pool). qt_config_init() allocates its slots,
 *     qt_config_free() releases them. A configuration remembers its space by
 *     pointer and does not own it: the space must outlive its configurations.
 *   - qt_metadataset_t is opaque and owns everything it returns (its space,
 *     names, curves, configurations) until qt_metadataset_free().
 *
 * Units and shapes:
 *   - The fidelity (usually "epochs") is counted in whole units from 1.
 *   - Hyperparameters are addressed by their 0-based index in declaration
 *     order (the order of the YAML file); qt_space_find() maps a name to it.
 *   - Encoded vectors are double arrays of qt_space_encoded_dim() entries.
 *
 * Errors follow core/: functions return 0 or a negative QT_E* code and fill
 * the optional qt_err. An index out of range is a programming error and stops
 * the program through QT_ASSERT; bad files and bad values never do.
 */
#ifndef QT_METADATA_H
#define QT_METADATA_H

#include <stddef.h>
#include <stdint.h>

#include "core/qt_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ========================================================================= */
/* Search space                                                               */
/* ========================================================================= */

/*
 * Search-space YAML, version 1 (docs/search-space.md has a full example):
 *
 *   version: 1                          required; other versions are refused
 *   name: default                       required, non-empty
 *   description: free text              optional
 *   fidelity: {name: epochs, min: 1, max: 50}
 *                                       required; whole numbers, 1 <= min <= max;
 *                                       the fidelity is not a hyperparameter
 *   hyperparameters:                    required, non-empty mapping name -> spec
 *     <name>:                           [A-Za-z_][A-Za-z0-9_]*, unique
 *       type: categorical | ordinal | integer | float | boolean
 *       choices: [...]                  categorical: non-empty distinct strings
 *                                       (numbers are kept as their spelling);
 *                                       ordinal: non-empty distinct numbers
 *       range: [min, max]               integer, float: min < max
 *                                       (integer bounds are whole numbers)
 *       log: true|false                 ordinal, integer, float; needs values > 0
 *       default: value                  optional; must be a choice / in range
 *       active_when: {parent: [v, ...]} optional; see "Conditions" below
 *       description: text               optional
 *
 * Keys not listed for a type are errors (a `range` on a categorical, a `log`
 * on a boolean), as are unknown keys at every level.
 *
 * Types:
 *   categorical  unordered choices; a value is a choice index. Choices are
 *                strings; a choice that reads as a number (clip_grad's "10")
 *                also matches numerically when set from text ("10.0").
 *   ordinal      ordered numeric choices, listed in any order; the order is
 *                the numeric one. A value is a choice index (into the list as
 *                written). Ordered strings are not an ordinal: use categorical.
 *   integer      whole numbers in [min, max].
 *   float        real numbers in [min, max].
 *   boolean      false or true (choice indices 0 and 1, spelled "false" and
 *                "true"; from text also yes/no/on/off/1/0, any case).
 *
 * Conditions: `active_when: {opt: [adam, adamw], sched: [step]}` makes the
 * hyperparameter active exactly when every named parent is active AND holds
 * one of the listed values (Quick-Tune's `only_active_with`). A single value
 * may be written without brackets. Parents must be categorical, ordinal or
 * boolean hyperparameters of the same space; a hyperparameter cannot depend on
 * itself, and conditions cannot form a cycle. Declaration order is free: the
 * space keeps a topological order (parents first) internally.
 */

#define QT_SPACE_VERSION 1

/* The encoded value of an inactive ordinal, integer, float or boolean
 * hyperparameter (Quick-Tune also imputes -1 for inactive numbers). */
#define QT_SPACE_INACTIVE_VALUE (-1.0)

/* Search spaces with more hyperparameters than this use reverse-Halton
 * points instead of Sobol points in qt_space_sobol() (GSL's Sobol generator
 * stops at 40 dimensions). */
#define QT_SPACE_SOBOL_MAX_DIM 40

typedef struct qt_space qt_space_t;

typedef enum qt_hp_type {
  QT_HP_TYPE_CATEGORICAL = 0,
  QT_HP_TYPE_ORDINAL = 1,
  QT_HP_TYPE_INTEGER = 2,
  QT_HP_TYPE_FLOAT = 3,
  QT_HP_TYPE_BOOLEAN = 4
} qt_hp_type;

/* One condition of a hyperparameter: it is active only when hyperparameter
 * `parent` is active and its choice index is one of `values`. */
typedef struct qt_space_condition {
  size_t parent;        /* index of the parent hyperparameter */
  size_t value_count;   /* number of accepted parent choices, >= 1 */
  const size_t *values; /* (value_count) parent choice indices, owned by the space */
} qt_space_condition;

/* Loading. `name` (load_string) is used in messages only. Errors:
 * QT_EPARSE for YAML syntax, QT_EVERSION for a version other than 1,
 * QT_ESCHEMA for everything else, each with "name:line:column: ..." in err. */
int qt_space_load_file(const char *path, qt_space_t **out, qt_err *err);
int qt_space_load_string(const char *text, size_t length, const char *name, qt_space_t **out,
                         qt_err *err);
void qt_space_free(qt_space_t *space);

/* The space's `name`, its `description` ("" when absent) and the path or
 * name it was loaded from. */
const char *qt_space_name(const qt_space_t *space);
const char *qt_space_description(const qt_space_t *space);
const char *qt_space_source(const qt_space_t *space);

/* The fidelity: its name ("epochs") and the inclusive range [min, max]. Any
 * out-pointer may be NULL. */
void qt_space_fidelity(const qt_space_t *space, const char **name, long *min, long *max);

/* Number of hyperparameters (>= 1). */
size_t qt_space_count(const qt_space_t *space);

/* Finds a hyperparameter by name (a linear scan; spaces are small).
 * Returns 0 and sets *index, or QT_ENOENT. */
int qt_space_find(const qt_space_t *space, const char *name, size_t *index);

/* Per-hyperparameter accessors; `hp` must be < qt_space_count(). */
const char *qt_space_hp_name(const qt_space_t *space, size_t hp);
const char *qt_space_hp_description(const qt_space_t *space, size_t hp); /* "" when absent */
qt_hp_type qt_space_hp_type(const qt_space_t *space, size_t hp);
/* 1 when the hyperparameter is on a log scale (ordinal, integer, float). */
int qt_space_hp_log(const qt_space_t *space, size_t hp);
/* Number of choices: categorical and ordinal as declared, boolean 2,
 * integer and float 0. */
size_t qt_space_hp_choice_count(const qt_space_t *space, size_t hp);
/* The spelling of a choice as written in the file ("adamw", "1e-5"); boolean
 * choices are "false" and "true". */
const char *qt_space_hp_choice(const qt_space_t *space, size_t hp, size_t choice);
/* The number a choice stands for: the value of an ordinal choice, 0 or 1 for
 * a boolean, the parsed number of a numeric-looking categorical choice, NaN
 * otherwise. */
double qt_space_hp_choice_number(const qt_space_t *space, size_t hp, size_t choice);
/* The declared range of an integer or float; the smallest and largest value
 * of an ordinal; 0 and choices-1 for categorical and boolean. */
void qt_space_hp_range(const qt_space_t *space, size_t hp, double *min, double *max);
/* 1 and the default value when the file gave `default:`, else 0. The value
 * is in slot form (see qt_config_slot). */
int qt_space_hp_default(const qt_space_t *space, size_t hp, double *value);
/* Conditions of a hyperparameter (0 for an unconditional one). */
size_t qt_space_hp_condition_count(const qt_space_t *space, size_t hp);
void qt_space_hp_condition(const qt_space_t *space, size_t hp, size_t k, qt_space_condition *out);

/* "categorical", "ordinal", "integer", "float", "boolean". */
const char *qt_hp_type_name(qt_hp_type type);

/* ========================================================================= */
/* Configurations                                                             */
/* ========================================================================= */

/* The value of one hyperparameter in a configuration. */
typedef struct qt_config_slot {
  int active;   /* 1 when the hyperparameter has a value; 0 when absent (inactive) */
  double value; /* categorical, ordinal, boolean: the choice index (a whole
                   number); integer: the value (a whole number); float: the value */
} qt_config_slot;

/*
 * A configuration: one slot per hyperparameter of its space, in declaration
 * order. The struct is caller-owned and its fields may be read directly;
 * write values through the qt_config_set_* functions (which check them), or
 * call qt_config_validate() after writing slots by hand.
 *
 * A configuration is *valid* for its space when every hyperparameter is
 * active exactly when its conditions hold, and every active value is a choice
 * or lies in the range. Setting values does not check conditions (importers
 * set whatever a table holds); qt_config_prune() then drops the values of
 * hyperparameters whose conditions do not hold, and qt_config_validate()
 * reports what is still wrong.
 */
typedef struct qt_config {
  const qt_space_t *space; /* not owned; must outlive the configuration */
  size_t count;            /* qt_space_count(space) */
  qt_config_slot *slots;   /* (count) one slot per hyperparameter */
} qt_config;

/* Allocates the slots, all inactive. qt_config_free() releases them and
 * leaves a zeroed struct; it accepts NULL and a zeroed struct. */
int qt_config_init(qt_config *config, const qt_space_t *space, qt_err *err);
void qt_config_free(qt_config *config);
/* Copies the values of src into dst; both must be initialized for the same
 * space (QT_EINVAL otherwise). */
int qt_config_copy(qt_config *dst, const qt_config *src, qt_err *err);
/* Makes every hyperparameter inactive. */
void qt_config_clear(qt_config *config);

/* Sets a hyperparameter from text, the form importers and users write:
 *   categorical  the choice's spelling ("adamw", "None", "[0.9, 0.999]"), or a
 *                number equal to a numeric-looking choice ("10.0" for "10");
 *   ordinal      a number matching one choice within a relative tolerance of
 *                1e-6 ("0.001" for "1e-3", "32.0" for "32");
 *   integer      a whole number in range ("32", "32.0");
 *   float        a number in range;
 *   boolean      true/false/yes/no/on/off/1/0 (any case).
 * The hyperparameter becomes active. QT_ENOENT for an unknown name,
 * QT_ERANGE for a value outside the choices or range, QT_EINVAL for text
 * that is not a value of the type. */
int qt_config_set_string(qt_config *config, const char *name, const char *text, qt_err *err);
/* Sets a categorical, ordinal or boolean hyperparameter to choice `choice`. */
int qt_config_set_index(qt_config *config, size_t hp, size_t choice, qt_err *err);
/* Sets a hyperparameter from a number: integer (whole numbers only), float,
 * ordinal (the matching choice, relative tolerance 1e-6), boolean (0 or 1),
 * categorical (the numeric-looking choice equal to it). */
int qt_config_set_number(qt_config *config, size_t hp, double value, qt_err *err);
/* Makes one hyperparameter inactive. */
void qt_config_unset(qt_config *config, size_t hp);

int qt_config_is_active(const qt_config *config, size_t hp);
/* The choice index of an active categorical, ordinal or boolean
 * hyperparameter; -1 when inactive or for integer and float. */
long qt_config_index(const qt_config *config, size_t hp);
/* The numeric value: integer and float values, the ordinal choice's number,
 * 0/1 for booleans, the number of a numeric-looking categorical choice; NaN
 * when inactive or not numeric. */
double qt_config_number(const qt_config *config, size_t hp);
/* Writes the value as text: the choice's spelling, "false"/"true", the
 * integer, or the shortest text that reads back as the same float. Writes ""
 * for an inactive hyperparameter. Returns QT_ERANGE when buf is too small
 * (the text is truncated). */
int qt_config_get_string(const qt_config *config, size_t hp, char *buf, size_t size);
/* Writes "name=value name=value ..." for the active hyperparameters, for
 * logs and messages. Returns QT_ERANGE when truncated. */
int qt_config_format(const qt_config *config, char *buf, size_t size);

/* 1 when every condition of hyperparameter hp holds in config (always 1 for
 * an unconditional one). Uses the parents' slots as they are. */
int qt_config_conditions_hold(const qt_config *config, size_t hp);
/* Makes inactive every hyperparameter whose conditions do not hold, parents
 * first, so that a child of a dropped parent is dropped too. */
void qt_config_prune(qt_config *config);
/* 0 when config is valid for its space; otherwise QT_ESCHEMA (activity does
 * not match the conditions) or QT_ERANGE (a value outside the choices or the
 * range), naming the hyperparameter in err. */
int qt_config_validate(const qt_config *config, qt_err *err);

/* 1 when a and b belong to the same space, have the same active set, equal
 * choices and integers, and floats within a relative 1e-9 of each other. */
int qt_config_equal(const qt_config *a, const qt_config *b);
/* A hash consistent with qt_config_equal: it covers the active set, choices
 * and integers but not float values, so near-equal floats hash alike. */
uint64_t qt_config_hash(const qt_config *config);

/* ========================================================================= */
/* Defaults, sampling and initial designs                                     */
/* ========================================================================= */

/* Fills config (initialized for space) with the default configuration: each
 * hyperparameter takes its `default:`, else the first choice (categorical,
 * ordinal), false (boolean), or the midpoint of the range on its scale
 * (geometric mean when log; rounded for integers). Inactive ones are absent. */
int qt_space_default_config(const qt_space_t *space, qt_config *config, qt_err *err);

/* A copy of space in which the categorical hyperparameter `name` has the n
 * given choices instead of its own (a search over a hub puts the hub's
 * model names into the space's placeholder "model"). The default stays
 * when it is among the new choices, else it becomes the first; conditions
 * of other hyperparameters on `name` that name removed choices keep only
 * the remaining ones. The copy's source is the original's with
 * "+<name>" appended, and its encoding is that of a space written with
 * these choices. QT_ENOENT without such a hyperparameter, QT_EINVAL when
 * it is not categorical, n is 0 or a choice repeats. */
int qt_space_with_choices(const qt_space_t *space, const char *name, const char *const *choices,
                          size_t n, qt_space_t **out, qt_err *err);

/* Draws one configuration uniformly: categorical, ordinal and boolean
 * uniformly over their choices, integer and float uniformly on their declared
 * scale (log-uniform when log; an integer x is then drawn with probability
 * proportional to log((x+1)/x)). One uniform number is drawn per
 * hyperparameter in declaration order, active or not, so the stream advances
 * by qt_space_count() draws per call. Inactive hyperparameters are absent. */
int qt_space_sample(const qt_space_t *space, qt_rng_t *rng, qt_config *config, qt_err *err);

/* Writes an initial design of n configurations into configs[0..n-1] (each
 * initialized for space): the points skip .. skip+n-1 of a low-discrepancy
 * sequence with one dimension per hyperparameter (declaration order), each
 * coordinate u in [0, 1) mapped to the domain as qt_space_sample maps its
 * uniform draws. The values of inactive hyperparameters are dropped. The
 * design is deterministic: the same space, n and skip give the same
 * configurations.
 *
 * The sequence is GSL's Sobol sequence for up to QT_SPACE_SOBOL_MAX_DIM (40)
 * hyperparameters. Larger spaces use GSL's reverse-Halton sequence (up to
 * 1229 dimensions) for all dimensions: unlike plain Halton, its digit
 * permutation keeps high dimensions from correlating in the first few hundred
 * points, and unlike gluing two different sequences together it stays one
 * low-discrepancy sequence. More than 1229 hyperparameters is QT_ERANGE. */
int qt_space_sobol(const qt_space_t *space, size_t n, size_t skip, qt_config *configs, qt_err *err);

/* ========================================================================= */
/* Numeric encoding for surrogates                                            */
/* ========================================================================= */

/*
 * The encoding is qtune's own (Quick-Tune's 69-column z-scored layout is
 * rebuilt by the importer, not here). Hyperparameters are laid out in
 * declaration order, each as one contiguous block:
 *
 *   categorical, k choices   k columns, one-hot ("opt=adamw"); all zeros when
 *                            inactive.
 *   boolean                  1 column ("amp"): 0 or 1; -1 when inactive.
 *   ordinal, k choices       1 column ("lr"): the choice's position in [0, 1].
 *                            log: (ln v - ln v_min) / (ln v_max - ln v_min);
 *                            otherwise its rank in numeric order / (k - 1).
 *                            A single choice is 0. -1 when inactive.
 *   integer, float           1 column ("batch_size"): (x - min) / (max - min),
 *                            with ln x, ln min, ln max when log. -1 when
 *                            inactive.
 *
 * Every hyperparameter that has a condition adds one more column right after
 * its block, named "<name>:active": 1 when active, 0 when inactive. It lets a
 * surrogate tell "inactive" from "the lowest value" without relying on the -1
 * sentinel alone.
 *
 * So every column lies in [0, 1], except the -1 sentinel of inactive
 * non-categorical hyperparameters.
 *
 * Decoding accepts any vector (an optimizer's proposal, say): it takes the
 * argmax of each one-hot block (the first on ties; NaN never wins), clamps
 * the other columns to [0, 1] (NaN reads as 0), reads a boolean as true from
 * 0.5, takes the nearest position for an ordinal (the first listed on ties),
 * inverts the scaling for integers and floats (integers rounded to the
 * nearest whole number), ignores the active columns and recomputes activity
 * from the conditions. Encoding then decoding a valid configuration returns
 * the same configuration (floats within rounding, see qt_config_equal).
 */

/* Number of columns of an encoded configuration. */
size_t qt_space_encoded_dim(const qt_space_t *space);
/* First column of hyperparameter hp's block, and its width (value columns
 * plus the active column, if any); width may be NULL. */
size_t qt_space_encoded_offset(const qt_space_t *space, size_t hp, size_t *width);
/* The name of a column ("opt=adamw", "lr", "momentum:active"). Returns
 * QT_ERANGE when column >= qt_space_encoded_dim or buf is too small. */
int qt_space_encoded_name(const qt_space_t *space, size_t column, char *buf, size_t size);
/* Encodes a valid configuration of space into vec (qt_space_encoded_dim
 * doubles). Returns QT_EINVAL when config belongs to another space or a slot
 * holds an impossible value. */
int qt_space_encode(const qt_space_t *space, const qt_config *config, double *vec, qt_err *err);
/* Decodes vec into config (initialized for space); the result is valid. */
int qt_space_decode(const qt_space_t *space, const double *vec, qt_config *config, qt_err *err);

/* ========================================================================= */
/* Meta-dataset store                                                         */
/* ========================================================================= */

/*
 * A meta-dataset is a set of recorded learning curves: runs of sampled
 * configurations on several datasets, with the score and the cost in seconds
 * of every epoch. The native format is a folder (meta-dataset/README.md):
 *
 *   metadataset.yaml   version: 1, name, metric, higher_is_better,
 *                      score_scale, max_epochs, space (a search-space file
 *                      path, relative to the folder; importers copy the space
 *                      in as space.yaml so the folder is self-contained),
 *                      provenance (free text)
 *   datasets.csv       dataset,<feature>,<feature>,...  one row per dataset:
 *                      its name and its meta-features (n_samples, n_classes,
 *                      image_size, channels, ...), numbers
 *   runs.csv           run,dataset,<hp>,<hp>,...  one row per run: its id, its
 *                      dataset, and one column per hyperparameter of the space
 *                      by name (raw values; empty when inactive)
 *   curves.csv         run,epoch,score,cost_s[,train_loss][,val_loss]  one row
 *                      per (run, epoch); scores in [0, 1] after score_scale is
 *                      applied; cost_s is the seconds of that epoch alone
 *
 * Loading validates everything and names file:line for each problem: an
 * unknown dataset or run, duplicate ids, epochs that are not 1..n in order,
 * a negative or non-finite cost, a score out of range, a configuration that
 * is not valid for the space.
 *
 * In memory, runs are grouped by dataset (the runs of dataset d are the
 * indices first_run .. first_run + run_count - 1) and each curve is stored as
 * contiguous float arrays owned by the meta-dataset.
 */

#define QT_METADATASET_VERSION 1

typedef struct qt_metadataset qt_metadataset_t;

typedef struct qt_md_dataset {
  const char *name;
  const double *features; /* (qt_metadataset_feature_count) meta-features */
  size_t first_run;       /* index of the dataset's first run */
  size_t run_count;       /* number of runs of this dataset */
} qt_md_dataset;

typedef struct qt_md_run {
  const char *id;
  size_t dataset;           /* index into the datasets */
  const qt_config *config;  /* valid for qt_metadataset_space() */
  size_t epochs;            /* recorded epochs 1..epochs (a run's maximum budget) */
  const float *score;       /* (epochs) score of epoch e at [e-1], in [0, 1], higher is better */
  const float *cost;        /* (epochs) seconds of epoch e alone (train + eval) */
  const float *train_loss;  /* (epochs) or NULL when not recorded; NaN where missing */
  const float *val_loss;    /* (epochs) or NULL when not recorded; NaN where missing */
} qt_md_run;

/* Loads and validates a native meta-dataset folder. */
int qt_metadataset_load(const char *dir, qt_metadataset_t **out, qt_err *err);
void qt_metadataset_free(qt_metadataset_t *md);

const char *qt_metadataset_name(const qt_metadataset_t *md);
const char *qt_metadataset_metric(const qt_metadataset_t *md);
const char *qt_metadataset_provenance(const qt_metadataset_t *md);
long qt_metadataset_max_epochs(const qt_metadataset_t *md);
/* The search space the configurations belong to (owned by md). */
const qt_space_t *qt_metadataset_space(const qt_metadataset_t *md);

size_t qt_metadataset_feature_count(const qt_metadataset_t *md);
const char *qt_metadataset_feature_name(const qt_metadataset_t *md, size_t feature);
size_t qt_metadataset_dataset_count(const qt_metadataset_t *md);
const qt_md_dataset *qt_metadataset_dataset(const qt_metadataset_t *md, size_t dataset);
/* Index of the dataset called name; QT_ENOENT when there is none. */
int qt_metadataset_find_dataset(const qt_metadataset_t *md, const char *name, size_t *dataset);
size_t qt_metadataset_run_count(const qt_metadataset_t *md);
const qt_md_run *qt_metadataset_run(const qt_metadataset_t *md, size_t run);
/* Total number of (run, epoch) points. */
size_t qt_metadataset_point_count(const qt_metadataset_t *md);
/* Index (in the grouped order of qt_metadataset_run) of the run called id;
 * QT_ENOENT when there is none. Constant time (a hash map). */
int qt_metadataset_find_run(const qt_metadataset_t *md, const char *id, size_t *run);

/*
 * File details (meta-dataset/README.md is the full description):
 *   - metadataset.yaml keys: version (required, 1), name (required),
 *     metric (required), max_epochs (required, 1 .. the space's fidelity
 *     max), space (required), higher_is_better (default true), score_scale
 *     (default 1, > 0), provenance (default ""). Unknown keys are errors at
 *     their line:column. A stored score s becomes s * score_scale, and
 *     1 - s * score_scale when higher_is_better is false; scores within 1e-6
 *     of [0, 1] are clamped, anything further out is an error.
 *   - The CSV files have a header row; columns are found by name, in any
 *     order. runs.csv needs run, dataset and one column per hyperparameter;
 *     curves.csv needs run, epoch, score, cost_s and may add train_loss and
 *     val_loss (an empty cell is a missing value, NaN in memory). Unknown
 *     columns are errors.
 *   - The rows of one run in curves.csv are contiguous, epochs 1, 2, ..., n
 *     in order, n <= max_epochs, and every run of runs.csv has rows there.
 *   - Configuration cells hold the text qt_config_get_string writes (set
 *     back with qt_config_set_string); the configuration must validate.
 * Loading errors are QT_ENOENT or QT_EIO (a missing or unreadable file),
 * QT_EPARSE (YAML or CSV syntax), QT_EVERSION (a version other than 1) and
 * QT_ESCHEMA for everything else, with "path:line: ..." ("path:line:column:"
 * for metadataset.yaml) in err.
 */

/* ------------------------------------------------------------------------- */
/* Building, saving and comparing meta-datasets                               */
/* ------------------------------------------------------------------------- */

/*
 * Importers, collectors and tests build a meta-dataset in memory, then save
 * it as a native folder:
 *
 *   qt_metadataset_params params = qt_metadataset_default_params();
 *   params.name = "my-curves";
 *   params.feature_count = 2;  params.feature_names = names;
 *   qt_metadataset_create("configs/spaces/default.yaml", &params, &md, &err);
 *   qt_metadataset_add_dataset(md, "cifar10", features, &d, &err);
 *   qt_md_run run = {.id = "r1", .dataset = d, .config = &config,
 *                    .epochs = 3, .score = score, .cost = cost};
 *   qt_metadataset_add_run(md, &run, &err);   (copies everything)
 *   qt_metadataset_save(md, "meta-dataset/mine", &err);
 *
 * Every add checks what the loader checks, so a built meta-dataset saves to a
 * folder that loads back identical (qt_metadataset_compare). Runs may be
 * added in any dataset order: they are kept grouped by dataset, in the order
 * they were added within a dataset.
 */

typedef struct qt_metadataset_params {
  const char *name;                 /* required, non-empty */
  const char *metric;               /* what the score measures ("top1"); default "score" */
  long max_epochs;                  /* longest curve allowed; 0 (default): the space's fidelity max */
  const char *provenance;           /* free text: where the curves come from; default "" */
  size_t feature_count;             /* number of dataset meta-features (default 0) */
  const char *const *feature_names; /* (feature_count) distinct, non-empty, not "dataset" */
} qt_metadataset_params;

qt_metadataset_params qt_metadataset_default_params(void);

/* An empty meta-dataset over the search space in space_path (loaded and
 * validated here; its text is kept, and qt_metadataset_save writes it as
 * space.yaml). params is copied. QT_EINVAL for bad params, or the space's
 * loading errors. */
int qt_metadataset_create(const char *space_path, const qt_metadataset_params *params,
                          qt_metadataset_t **out, qt_err *err);
/* Adds a dataset with qt_metadataset_feature_count() finite features
 * (features may be NULL when there are none); *index (may be NULL) receives
 * its index. QT_EEXIST for a duplicate name, QT_EINVAL for an empty name or a
 * non-finite feature. */
int qt_metadataset_add_dataset(qt_metadataset_t *md, const char *name, const double *features,
                               size_t *index, qt_err *err);
/* Adds a copy of run: its id (unique, non-empty), dataset (an index from
 * add_dataset), config (initialized for qt_metadataset_space(md) and valid),
 * epochs (1 .. max_epochs), score[epochs] in [0, 1], cost[epochs] finite and
 * >= 0, and optional train_loss/val_loss (NULL, or epochs values where a
 * non-finite value is stored as missing; a curve with no finite value is
 * stored as NULL). QT_EEXIST for a duplicate id, QT_EINVAL or QT_ERANGE for
 * the rest, naming the run and epoch. */
int qt_metadataset_add_run(qt_metadataset_t *md, const qt_md_run *run, qt_err *err);

/* Writes the native folder dir (created when missing, with its parents):
 * metadataset.yaml (score_scale 1, higher_is_better true, space: space.yaml),
 * space.yaml, datasets.csv, runs.csv and curves.csv. Each file is written to
 * a temporary name and renamed into place, so a crash never leaves half a
 * file under the real name. Floats are written with 9 significant digits and
 * doubles with 17, so loading gives back the same numbers. */
int qt_metadataset_save(const qt_metadataset_t *md, const char *dir, qt_err *err);

/* 0 when a and b hold the same content: name, metric, provenance,
 * max_epochs, the same search-space text, feature names, datasets (names and
 * features) and runs in the same order (ids, datasets, configurations, curves
 * bit for bit, NaN equal to NaN). Otherwise QT_ESCHEMA with the first
 * difference in err. */
int qt_metadataset_compare(const qt_metadataset_t *a, const qt_metadataset_t *b, qt_err *err);

/* ------------------------------------------------------------------------- */
/* Synthetic meta-datasets (tests and benchmarks)                             */
/* ------------------------------------------------------------------------- */

typedef struct qt_metadataset_synth_params {
  size_t n_datasets;       /* default 4 */
  size_t runs_per_dataset; /* default 16 */
  size_t min_epochs;       /* curve lengths are uniform in [min_epochs, max_epochs]; default 1 */
  size_t max_epochs;       /* default 10; at most the space's fidelity max */
  int with_losses;         /* 1 (default): record losses (every third run has none) */
  uint64_t seed;           /* default 0 */
} qt_metadataset_synth_params;

qt_metadataset_synth_params qt_metadataset_synth_default_params(void);

/* Builds a meta-dataset of plausible learning curves over the space in
 * space_path: configurations sampled uniformly, saturating score curves with
 * noise, per-epoch costs around a per-run base, and meta-features n_samples,
 * n_classes, image_size, channels. Same params, same content. */
int qt_metadataset_synthesize(const char *space_path, const qt_metadataset_synth_params *params,
                              qt_metadataset_t **out, qt_err *err);

/* ------------------------------------------------------------------------- */
/* Importers                                                                  */
/* ------------------------------------------------------------------------- */

/*
 * Quick-Tune's layout (the folder src/quicktune/data/.mtlbm/<version>/ of the
 * Quick-Tune code): perf.json {dataset: {run: [top-1 % per epoch]}, "info"},
 * cost.json {dataset: {run: [seconds per epoch]}}, table.csv (one row per
 * run: the run id, one-hot columns `cat:<hp>:<value>` and numeric columns)
 * and descriptors.json {dataset: [n_samples, n_classes, image_size,
 * channels]}. The rules that map table.csv to a configuration of space_path
 * (configs/spaces/quicktune-v1.yaml documents them) are:
 *   - a one-hot column `cat:<hp>:<value>` set to 1 sets <hp> to <value>; at
 *     most one column of a group may be 1. A value that is not a choice is
 *     accepted only for a conditional hyperparameter (Quick-Tune's filler
 *     for an inactive one, e.g. cat:opt_betas:None);
 *   - a numeric column sets its hyperparameter by value; -1 in a categorical
 *     with a "None" choice (clip_grad, layer_decay) means None;
 *   - a group with no column set means None when the hyperparameter has a
 *     "None" choice that has no column of its own (sched);
 *   - a value that is not a choice of a conditional hyperparameter is a
 *     filler and is dropped, as are the values of every hyperparameter whose
 *     conditions do not hold (qt_config_prune); the result must validate.
 * Scores are perf / 100, costs are kept per epoch. A curve entry that is null
 * or NaN (Python's json writes NaN, Infinity and -Infinity; they are read
 * too) marks a diverged run: the curve ends before its first such entry, and
 * a run without one finite first epoch is left out with a warning. Errors
 * name the file and the dataset, run and epoch (table.csv: line).
 */
int qt_metadataset_import_quicktune(const char *src_dir, const char *space_path,
                                    qt_metadataset_t **out, qt_err *err);

/* ========================================================================= */
/* Model hub                                                                  */
/* ========================================================================= */

/*
 * A model hub lists the pretrained models a search may fine-tune
 * (YAML files in configs/hubs/, loaded by qt_hub.c):
 *
 *   version: 1                          required; other versions are refused
 *   name: default                       required, non-empty
 *   description: free text              optional
 *   models:                             required, a non-empty list of:
 *     - name: vit_tiny_patch16_224      required, unique; letters, digits, _ . -
 *       family: vit                     required: vit, deit, deit3, mobilenetv2,
 *                                       efficientnet, resnet or mlp
 *       checkpoint: ${QTUNE_MODELS}/vit.safetensors
 *                                       required: a safetensors file with timm's
 *                                       parameter names. ${NAME} is replaced by
 *                                       the environment variable NAME (an
 *                                       unset one is an error), ${NAME:-text}
 *                                       by text when NAME is unset or empty
 *                                       (text may hold ${...} itself). A path
 *                                       that is still relative is taken from
 *                                       the folder of the hub file.
 *       image_size: 224                 image families: required, pixels (square)
 *       mean: [0.485, 0.456, 0.406]     image families: required, RGB, for
 *       std: [0.229, 0.224, 0.225]      pixels scaled to [0, 1]; std > 0
 *       num_classes: 1000               required: classes of the checkpoint's
 *                                       head, 0 for a checkpoint without one
 *       patch_size: 16                  ViT families, optional: checked
 *       heads: 3                        ViT families, optional: must divide the
 *                                       width (the checkpoint cannot tell)
 *       descriptors:                    optional, each key optional: what the
 *         parameters: 5.7e6             surrogate may know about the model;
 *         depth: 12                     parameters (a count), depth (ViT: blocks;
 *         width: 192                    ResNet: 18/34/50; EfficientNet family:
 *         pretrain_dataset: imagenet-1k blocks; MLP: hidden layers), width (the
 *         pretrain_top1: 0.755          features entering the head),
 *                                       pretrain_top1 as a fraction in [0, 1]
 *       description: free text          optional
 *
 * Unknown keys, duplicates, wrong types and out-of-range values are
 * QT_ESCHEMA with "file:line:column: ..."; MLP models take no image_size,
 * mean or std, only ViT families take patch_size and heads.
 *
 * This module reads the hub file only. Whether a checkpoint exists and
 * fits its family's timm layout is the engine's knowledge: `qtune hub
 * list|show` passes each entry's plain fields to qt_model_inspect()
 * (finetune/qt_finetune.h), which documents the layouts and the checks.
 *
 * Memory: qt_hub_t is opaque; the qt_hub_model records and their strings
 * belong to the hub until qt_hub_free().
 */

#define QT_HUB_VERSION 1

/* The family names the hub accepts: vit, deit, deit3, mobilenetv2,
 * efficientnet, resnet, mlp (the families whose layouts the engine knows). */
int qt_hub_family_known(const char *family);
/* 1 for vit, deit and deit3 (the families that take patch_size and heads). */
int qt_hub_family_is_vit(const char *family);

/* One model of a hub. Unknown descriptors are 0 (counts), NaN
 * (pretrain_top1) or "" (strings). */
typedef struct qt_hub_model {
  const char *name;
  const char *family;          /* one of the names above */
  const char *checkpoint;      /* the path to open: variables expanded, made
                                  relative to the hub file's folder */
  const char *checkpoint_text; /* as written in the hub */
  long image_size;             /* pixels per side; 0 for mlp */
  double mean[3], std[3];      /* per RGB channel on [0, 1] pixels; 0 and 1 for mlp */
  long num_classes;            /* classes of the checkpoint's head; 0: no head */
  long patch_size;             /* ViT families; 0 when not given */
  long heads;                  /* ViT families; 0 when not given */
  double parameters;           /* descriptors */
  long depth;
  long width;
  const char *pretrain_dataset;
  double pretrain_top1; /* fraction in [0, 1] */
  const char *description;
  int line, column; /* where the entry starts in the hub file */
} qt_hub_model;

typedef struct qt_hub qt_hub_t;

/* Loading. QT_EPARSE for YAML syntax, QT_EVERSION for a version other than
 * 1, QT_ESCHEMA for everything else (an unset variable in a checkpoint path
 * included), each "name:line:column: ...". load_string resolves relative
 * checkpoint paths against the folder of `name`, as for a file. */
int qt_hub_load_file(const char *path, qt_hub_t **out, qt_err *err);
int qt_hub_load_string(const char *text, size_t length, const char *name, qt_hub_t **out,
                       qt_err *err);
void qt_hub_free(qt_hub_t *hub);

const char *qt_hub_name(const qt_hub_t *hub);
const char *qt_hub_description(const qt_hub_t *hub); /* "" when absent */
const char *qt_hub_source(const qt_hub_t *hub);      /* the path or name it was loaded from */
size_t qt_hub_count(const qt_hub_t *hub);
/* Model i in file order; i must be < qt_hub_count() (asserted). */
const qt_hub_model *qt_hub_model_at(const qt_hub_t *hub, size_t index);
/* Finds a model by name. Returns 0 and sets *index, or QT_ENOENT. */
int qt_hub_find(const qt_hub_t *hub, const char *name, size_t *index);

#ifdef __cplusplus
}
#endif

#endif /* QT_METADATA_H */

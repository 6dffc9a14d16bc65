/*
 * qt_space_internal.h - the layout of qt_space_t, shared by the files of the
 * search-space part of metadata/ (qt_space.c loads and describes a space,
 * qt_config.c handles configurations, qt_space_design.c samples, builds
 * initial designs and encodes). Not a public header.
 */
#ifndef QT_SPACE_INTERNAL_H
#define QT_SPACE_INTERNAL_H

#include "metadata/qt_metadata.h"

/* Relative tolerance for matching a number to an ordinal or numeric-looking
 * categorical choice ("0.001" against "1e-3"). */
#define QT__CHOICE_RTOL 1e-6

typedef struct qt__condition {
  size_t parent; /* index of the parent hyperparameter */
  size_t value_count;
  size_t *values; /* (value_count) accepted parent choice indices */
} qt__condition;

typedef struct qt__hp {
  char *name;
  char *description; /* "" when absent */
  qt_hp_type type;
  size_t choice_count; /* categorical, ordinal: as declared; boolean: 2; else 0 */
  char **choices;      /* (choice_count) spellings */
  double *numbers;     /* (choice_count) number of each choice, NaN when not numeric */
  double *positions;   /* (choice_count) ordinal: encoded position in [0, 1]; else NULL */
  double min, max;     /* integer, float: declared range; ordinal: value extremes */
  int log;             /* 1 for a log scale */
  int has_default;
  double default_value; /* slot form */
  size_t condition_count;
  qt__condition *conditions; /* (condition_count) */
  size_t encoded_offset;     /* first column of the block */
  size_t encoded_values;     /* value columns: choice_count for categorical, else 1 */
  int has_active_column;     /* 1 when condition_count > 0 */
} qt__hp;

struct qt_space {
  char *name;
  char *description;
  char *source; /* path or name given at load time */
  char *fidelity_name;
  long fidelity_min, fidelity_max;
  size_t count;
  qt__hp *hps;   /* (count) in declaration order */
  size_t *order; /* (count) topological order: parents before children */
  size_t encoded_dim;
};

/* Matches text against the choices of a categorical, ordinal or boolean
 * hyperparameter (the rules of qt_config_set_string). Returns 0 and the
 * index, QT_ERANGE when the text is a value of the type but not a choice, or
 * QT_EINVAL when it is not a value of the type (an ordinal given "abc"). */
int qt__hp_match_text(const qt__hp *hp, const char *text, size_t *index);
/* The same for a number (ordinal, boolean, numeric-looking categorical). */
int qt__hp_match_number(const qt__hp *hp, double value, size_t *index);
/* 1 when a and b are equal within a relative tolerance rtol. */
int qt__close(double a, double b, double rtol);
/* Writes the shortest "%.Ng" text that reads back as exactly x. */
void qt__format_double(double x, char *buf, size_t size);
/* Parses a boolean word (true/false/yes/no/on/off/1/0, any case). */
int qt__parse_bool(const char *text, int *out);
/* Checks that slot value v is a possible value of hp (a choice index, a
 * whole number in range, a float in range). */
int qt__hp_value_ok(const qt__hp *hp, double v);
/* Writes "[a, b, c]" listing the choices of hp, shortened when long. */
void qt__format_choices(const qt__hp *hp, char *buf, size_t size);

/* Checks that config is initialized for space (used by the functions that
 * take both); QT_EINVAL naming `who` otherwise. */
int qt__config_check(const qt_space_t *space, const qt_config *config, const char *who,
                     qt_err *err);

#endif /* QT_SPACE_INTERNAL_H */

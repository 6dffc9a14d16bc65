/*
 * qt_metadataset_internal.h - the layout of qt_metadataset_t and the small
 * containers it is built from, shared by the meta-dataset files of metadata/
 * (qt_metadataset.c: building, accessors, saving, comparing;
 * qt_metadataset_load.c: the native loader; qt_metadataset_synth.c;
 * qt_import_quicktune.c). Not a public header.
 *
 * Memory layout. A meta-dataset is a handful of growable arrays, never one
 * allocation per run or per point:
 *   - a string pool holds every dataset name and run id, addressed by offset;
 *   - the float arenas hold the curves: the points of run i are
 *     score[points .. points + epochs - 1] (likewise cost and the losses);
 *   - the configuration slots of run i are slots[i * hp_count ..].
 * Arrays are addressed by offsets while they grow; the public pointers in
 * qt_md_dataset and qt_md_run are (re)computed from the offsets by
 * qt__metadataset_link() whenever an array has moved.
 */
#ifndef QT_METADATASET_INTERNAL_H
#define QT_METADATASET_INTERNAL_H

#include "metadata/qt_metadata.h"

#include <stdint.h>

/* ------------------------------------------------------------------------- */
/* String pool                                                                */
/* ------------------------------------------------------------------------- */

/* NUL-terminated strings appended to one buffer and addressed by offset, so
 * that growing the buffer never invalidates a reference. */
typedef struct qt__pool {
  char *data;      /* (capacity) bytes */
  size_t used;     /* bytes in use */
  size_t capacity; /* bytes allocated */
} qt__pool;

void qt__pool_free(qt__pool *pool);
/* Appends length bytes of text plus a NUL; *offset receives where it starts.
 * QT_ENOMEM when the pool cannot grow. */
int qt__pool_add(qt__pool *pool, const char *text, size_t length, size_t *offset);

/* ------------------------------------------------------------------------- */
/* String hash map                                                            */
/* ------------------------------------------------------------------------- */

/* An open-addressing hash map (linear probing, power-of-two capacity, load
 * at most 1/2) from strings of a pool to size_t values. Keys are pool
 * offsets, so the map stays valid while the pool grows; the full 64-bit
 * hash is stored beside each key so that probing compares strings only on a
 * hash match. There is no removal: meta-datasets only grow. */
typedef struct qt__strmap_entry {
  uint64_t hash; /* FNV-1a of the key */
  size_t key;    /* offset of the key in the pool; SIZE_MAX marks an empty entry */
  size_t value;
} qt__strmap_entry;

typedef struct qt__strmap {
  qt__strmap_entry *entries; /* (capacity) */
  size_t capacity;           /* 0 or a power of two */
  size_t count;
} qt__strmap;

void qt__strmap_free(qt__strmap *map);
uint64_t qt__strmap_hash(const char *key);
/* The value stored for key, or SIZE_MAX when key is absent. */
size_t qt__strmap_find(const qt__strmap *map, const qt__pool *pool, const char *key);
/* Inserts (pool string at key_offset -> value). When the key is already
 * present nothing changes and *existing (may be NULL) receives its value:
 * the call returns 1. Returns 0 after inserting, QT_ENOMEM on failure. */
int qt__strmap_insert(qt__strmap *map, const qt__pool *pool, size_t key_offset, size_t value,
                      size_t *existing);

/* ------------------------------------------------------------------------- */
/* The meta-dataset                                                           */
/* ------------------------------------------------------------------------- */

/* What a run keeps by offset (its public qt_md_run holds the pointers). */
typedef struct qt__md_record {
  size_t id;          /* offset of the id in the pool */
  size_t points;      /* offset of epoch 1 in the float arenas */
  int has_train_loss; /* 1 when the run recorded a train loss */
  int has_val_loss;   /* 1 when the run recorded a validation loss */
  int line;           /* line of the run in runs.csv when loaded, else 0 */
} qt__md_record;

struct qt_metadataset {
  char *name;
  char *metric;
  char *provenance;
  long max_epochs;
  qt_space_t *space;
  char *space_text; /* the search-space file as read, written back as space.yaml */
  size_t space_length;

  size_t feature_count;
  char **feature_names; /* (feature_count) */

  qt__pool strings; /* dataset names and run ids */

  size_t dataset_count, dataset_capacity;
  qt_md_dataset *datasets; /* (dataset_capacity) public view */
  size_t *dataset_names;   /* (dataset_capacity) pool offsets of the names */
  double *features;        /* (dataset_capacity, feature_count) row-major */
  qt__strmap dataset_map;  /* name -> dataset index */

  /* Runs are stored in the order they were added (insertion index i);
   * order[] lists them grouped by dataset, which is the order of the public
   * accessors (grouped index g), and position[] is its inverse. */
  size_t run_count, run_capacity;
  qt_md_run *runs;        /* (run_capacity) public view, by insertion index */
  qt__md_record *records; /* (run_capacity) by insertion index */
  qt_config *configs;     /* (run_capacity) views whose slots live in `slots` */
  qt_config_slot *slots;  /* (run_capacity, hp_count) row-major */
  size_t *order;          /* (run_capacity) grouped index -> insertion index */
  size_t *position;       /* (run_capacity) insertion index -> grouped index */
  qt__strmap run_map;     /* id -> insertion index */

  size_t point_count, point_capacity;
  float *score;      /* (point_capacity) */
  float *cost;       /* (point_capacity) */
  float *train_loss; /* (point_capacity) or NULL while no run has a train loss */
  float *val_loss;   /* (point_capacity) or NULL while no run has a validation loss */
};

/* An empty meta-dataset that owns space and space_text (both taken over,
 * also on failure) and copies the strings of params. */
int qt__metadataset_new(qt_space_t *space, char *space_text, size_t space_length,
                        const qt_metadataset_params *params, qt_metadataset_t **out, qt_err *err);
/* Makes room for `datasets` datasets, `runs` runs and `points` points in
 * total (not additional). */
int qt__metadataset_reserve(qt_metadataset_t *md, size_t datasets, size_t runs, size_t points,
                            qt_err *err);
/* Allocates the train and/or validation loss arena when missing (values of
 * runs without that loss are never read). */
int qt__metadataset_enable_losses(qt_metadataset_t *md, int train, int val, qt_err *err);
/* Recomputes every public pointer from the offsets. */
void qt__metadataset_link(qt_metadataset_t *md);
/* Sorts the runs by dataset (stable) into order[] and position[] and sets
 * the datasets' first_run and run_count. */
void qt__metadataset_group(qt_metadataset_t *md);

#endif /* QT_METADATASET_INTERNAL_H */

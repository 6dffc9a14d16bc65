/*
 * qt_strmap.c - the string pool and the open-addressing string hash map that
 * index meta-datasets (run ids, dataset names, Quick-Tune table rows).
 *
 * A meta-dataset of a million curve points has tens of thousands of runs,
 * and the loader looks a run id up for every curve row: a hash map keeps that
 * constant-time, and storing keys as pool offsets keeps the map free of
 * per-key allocations.
 */
#include "metadata/qt_metadataset_internal.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------- */
/* String pool                                                                */
/* ------------------------------------------------------------------------- */

void qt__pool_free(qt__pool *pool) {
  if (!pool) return;
  free(pool->data);
  memset(pool, 0, sizeof *pool);
}

int qt__pool_add(qt__pool *pool, const char *text, size_t length, size_t *offset) {
  if (length + 1 > pool->capacity - pool->used || !pool->data) {
    size_t capacity = pool->capacity ? pool->capacity : 4096;
    while (capacity - pool->used < length + 1) {
      if (capacity > SIZE_MAX / 2) return QT_ENOMEM;
      capacity *= 2;
    }
    char *grown = realloc(pool->data, capacity);
    if (!grown) return QT_ENOMEM;
    pool->data = grown;
    pool->capacity = capacity;
  }
  memcpy(pool->data + pool->used, text, length);
  pool->data[pool->used + length] = '\0';
  *offset = pool->used;
  pool->used += length + 1;
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Hash map                                                                   */
/* ------------------------------------------------------------------------- */

void qt__strmap_free(qt__strmap *map) {
  if (!map) return;
  free(map->entries);
  memset(map, 0, sizeof *map);
}

uint64_t qt__strmap_hash(const char *key) {
  /* FNV-1a: short keys, no attacker, and good enough spread for linear
   * probing once the top bits are mixed in below. */
  uint64_t h = UINT64_C(14695981039346656037);
  for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
    h ^= *p;
    h *= UINT64_C(1099511628211);
  }
  return h ^ (h >> 29);
}

size_t qt__strmap_find(const qt__strmap *map, const qt__pool *pool, const char *key) {
  if (map->capacity == 0) return SIZE_MAX;
  uint64_t hash = qt__strmap_hash(key);
  size_t mask = map->capacity - 1;
  for (size_t i = (size_t)hash & mask;; i = (i + 1) & mask) {
    const qt__strmap_entry *e = &map->entries[i];
    if (e->key == SIZE_MAX) return SIZE_MAX;
    if (e->hash == hash && strcmp(pool->data + e->key, key) == 0) return e->value;
  }
}

/* Puts an entry known to be absent into a table with room for it. */
static void place(qt__strmap_entry *entries, size_t capacity, const qt__strmap_entry *entry) {
  size_t mask = capacity - 1;
  size_t i = (size_t)entry->hash & mask;
  while (entries[i].key != SIZE_MAX) i = (i + 1) & mask;
  entries[i] = *entry;
}

/* Doubles the table (or creates it) so that one more entry keeps the load at
 * most 1/2. */
static int grow(qt__strmap *map) {
  size_t capacity = map->capacity ? map->capacity * 2 : 64;
  if (capacity > SIZE_MAX / sizeof(qt__strmap_entry)) return QT_ENOMEM;
  qt__strmap_entry *entries = malloc(capacity * sizeof *entries);
  if (!entries) return QT_ENOMEM;
  for (size_t i = 0; i < capacity; i++) entries[i].key = SIZE_MAX;
  for (size_t i = 0; i < map->capacity; i++) {
    if (map->entries[i].key != SIZE_MAX) place(entries, capacity, &map->entries[i]);
  }
  free(map->entries);
  map->entries = entries;
  map->capacity = capacity;
  return 0;
}

int qt__strmap_insert(qt__strmap *map, const qt__pool *pool, size_t key_offset, size_t value,
                      size_t *existing) {
  const char *key = pool->data + key_offset;
  size_t found = qt__strmap_find(map, pool, key);
  if (found != SIZE_MAX) {
    if (existing) *existing = found;
    return 1;
  }
  if (2 * (map->count + 1) > map->capacity) {
    int rc = grow(map);
    if (rc < 0) return rc;
  }
  qt__strmap_entry entry = {qt__strmap_hash(key), key_offset, value};
  place(map->entries, map->capacity, &entry);
  map->count++;
  return 0;
}

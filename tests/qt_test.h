/*
 * qt_test.h - the small harness shared by the CUnit suites.
 *
 * Each test program defines its tests and a NULL-terminated qt_test_case
 * array, then calls QT_TEST_MAIN("suite", cases). The program exits 0 when
 * every test passed, 1 when one failed, and 77 (CTest's "skipped") when the
 * suite called qt_test_skip_suite() before running, e.g. without a GPU.
 */
#ifndef QT_TEST_H
#define QT_TEST_H

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/qt_core.h"

typedef struct qt_test_case {
  const char *name;
  void (*fn)(void);
} qt_test_case;

#define QT_TEST_SKIP_CODE 77

/* Whether `name` is one of the space-separated words of `list`. */
static inline int qt_test_listed(const char *list, const char *name) {
  size_t len = strlen(name);
  for (const char *p = list; (p = strstr(p, name)) != NULL; p += len) {
    if ((p == list || p[-1] == ' ') && (p[len] == '\0' || p[len] == ' ')) return 1;
  }
  return 0;
}

/* Runs the cases; with QT_TEST_ONLY="NAME ..." in the environment only
 * those (a device session that checks one change runs its cases alone). */
static inline int qt_test_run(const char *suite_name, const qt_test_case *cases) {
  if (CU_initialize_registry() != CUE_SUCCESS) return 1;
  CU_pSuite suite = CU_add_suite(suite_name, NULL, NULL);
  if (!suite) return 1;
  const char *only = getenv("QT_TEST_ONLY");
  for (const qt_test_case *c = cases; c->name; c++) {
    if (only && *only && !qt_test_listed(only, c->name)) continue;
    if (!CU_add_test(suite, c->name, c->fn)) return 1;
  }
  CU_basic_set_mode(CU_BRM_VERBOSE);
  CU_basic_run_tests();
  unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
  unsigned run = CU_get_number_of_tests_run();
  CU_cleanup_registry();
  return (failed == 0 && run > 0) ? 0 : 1;
}

#define QT_TEST_MAIN(suite_name, cases)                                        \
  int main(void) { return qt_test_run(suite_name, cases); }

/* Checks two doubles within an absolute tolerance, printing both on failure. */
#define QT_ASSERT_CLOSE(actual, expected, tol) CU_ASSERT_DOUBLE_EQUAL(actual, expected, tol)

/* The bits of x rounded to BF16 (to nearest even, as the device's
 * __float2bfloat16_rn; infinities and NaN keep their top bits), and a
 * BF16 value widened back to float. */
static inline uint16_t qt_test_bf16_bits(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  if ((u & 0x7f800000u) != 0x7f800000u) u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
static inline float qt_test_bf16_float(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
}

/* Path of a file of the shared folder (../shared), or NULL with a message
 * when the folder is absent (then the caller returns early: that test is a
 * no-op outside the project's machines, and says so). */
static inline const char *qt_test_shared_path(const char *relative, char *buf, size_t size) {
  snprintf(buf, size, "%s/%s", QT_SHARED_DIR, relative);
  FILE *f = fopen(buf, "rb");
  if (!f) {
    fprintf(stderr, "note: %s is absent; this check needs ../shared and is skipped\n", buf);
    return NULL;
  }
  fclose(f);
  return buf;
}

/* ------------------------------------------------------------------------- */
/* Temporary files                                                            */
/* ------------------------------------------------------------------------- */

static char qt_test_temp_dir_buf[64];

/* rm -r of a folder this program wrote (links are removed, not followed). */
static inline void qt_test_remove_tree(const char *path) { qt_remove_tree(path); }

static inline void qt_test_remove_temp_dir(void) {
  if (qt_test_temp_dir_buf[0]) qt_test_remove_tree(qt_test_temp_dir_buf);
}

/* The program's private temporary folder, made on first use and removed with
 * everything in it when the program exits. */
static inline const char *qt_test_temp_dir(void) {
  if (!qt_test_temp_dir_buf[0]) {
    snprintf(qt_test_temp_dir_buf, sizeof qt_test_temp_dir_buf, "/tmp/qt-test-XXXXXX");
    if (!mkdtemp(qt_test_temp_dir_buf)) {
      perror("mkdtemp");
      exit(1);
    }
    atexit(qt_test_remove_temp_dir);
  }
  return qt_test_temp_dir_buf;
}

/* buf = "<temporary folder>/<name>"; returns buf. */
static inline const char *qt_test_temp_path(const char *name, char *buf, size_t size) {
  snprintf(buf, size, "%s/%s", qt_test_temp_dir(), name);
  return buf;
}

#endif /* QT_TEST_H */

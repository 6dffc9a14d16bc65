/*
 * test_core.c - the core module: errors, logging, random streams, durations,
 * YAML, JSON, CSV and the file/number helpers.
 *
 * Expected line:column positions were counted by hand from the inputs (the
 * first character of a line is column 1), not copied from the library.
 */
#include "core/qt_core.h"
#include "qt_test.h"

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------- */
/* Helpers                                                                    */
/* ------------------------------------------------------------------------- */

#define COUNT_OF(array) (sizeof(array) / sizeof((array)[0]))

/* A private temporary directory, made on first use and removed at exit. */

static int write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  size_t length = strlen(text);
  int ok = fwrite(text, 1, length, f) == length;
  return (fclose(f) == 0 && ok) ? 0 : -1;
}

/* Loads YAML from a C string and returns the status; err receives the detail. */
static int load_yaml(const char *text, qt_yaml_doc_t **doc, qt_err *err) {
  qt_err_clear(err);
  return qt_yaml_load_string(text, strlen(text), "c.yaml", doc, err);
}

/* Checks that a YAML text fails with exactly this code and message. */
static void check_yaml_error(const char *text, int code, const char *expected) {
  qt_yaml_doc_t *doc = NULL;
  qt_err err;
  int status = load_yaml(text, &doc, &err);
  CU_ASSERT_EQUAL(status, code);
  CU_ASSERT_EQUAL(err.code, code);
  CU_ASSERT_PTR_NULL(doc);
  CU_ASSERT_STRING_EQUAL(err.msg, expected);
  if (strcmp(err.msg, expected) != 0) {
    fprintf(stderr, "\n  got      %s\n  expected %s\n", err.msg, expected);
  }
  qt_yaml_free(doc);
}

static void check_json_error(const char *text, const char *expected) {
  json_t *root = NULL;
  qt_err err;
  qt_err_clear(&err);
  CU_ASSERT_EQUAL(qt_json_load_string(text, strlen(text), "c.json", &root, &err), QT_EPARSE);
  CU_ASSERT_PTR_NULL(root);
  CU_ASSERT_STRING_EQUAL(err.msg, expected);
  if (strcmp(err.msg, expected) != 0) {
    fprintf(stderr, "\n  got      %s\n  expected %s\n", err.msg, expected);
  }
  json_decref(root);
}

static qt_csv_t *open_csv(const char *text) {
  qt_csv_t *csv = NULL;
  qt_err err;
  CU_ASSERT_EQUAL(qt_csv_open_string(text, strlen(text), "t.csv", &csv, &err), 0);
  return csv;
}

/* Reads the next record and checks its line and fields (NULL-terminated). */
static void expect_record(qt_csv_t *csv, int line, const char *const *fields) {
  qt_err err;
  qt_err_clear(&err);
  int status = qt_csv_next(csv, &err);
  CU_ASSERT_EQUAL(status, 1);
  if (status != 1) {
    fprintf(stderr, "\n  qt_csv_next: %d %s\n", status, err.msg);
    return;
  }
  CU_ASSERT_EQUAL(qt_csv_line(csv), line);
  size_t count = 0;
  while (fields[count]) count++;
  CU_ASSERT_EQUAL(qt_csv_field_count(csv), count);
  for (size_t i = 0; i < count && i < qt_csv_field_count(csv); i++) {
    CU_ASSERT_STRING_EQUAL(qt_csv_field(csv, i), fields[i]);
  }
  CU_ASSERT_PTR_NULL(qt_csv_field(csv, count));
}

static void expect_end(qt_csv_t *csv) {
  qt_err err;
  CU_ASSERT_EQUAL(qt_csv_next(csv, &err), 0);
  CU_ASSERT_EQUAL(qt_csv_field_count(csv), 0);
  CU_ASSERT_EQUAL(qt_csv_next(csv, &err), 0); /* end stays the end */
}

/* ------------------------------------------------------------------------- */
/* Errors                                                                     */
/* ------------------------------------------------------------------------- */

static void test_error_table(void) {
  static const struct {
    int code;
    const char *name;
  } table[] = {
#define ROW(name, value, message) {value, #name},
      QT_ERROR_TABLE(ROW)
#undef ROW
  };
  for (size_t i = 0; i < COUNT_OF(table); i++) {
    const char *message = qt_strerror(table[i].code);
    CU_ASSERT_TRUE(table[i].code < 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(message);
    CU_ASSERT_TRUE(message[0] != '\0');
    CU_ASSERT_STRING_NOT_EQUAL(message, "unknown error");
    CU_ASSERT_STRING_EQUAL(qt_strerror_name(table[i].code), table[i].name);
    for (size_t j = 0; j < i; j++) {
      CU_ASSERT_NOT_EQUAL(table[i].code, table[j].code);
      CU_ASSERT_STRING_NOT_EQUAL(message, qt_strerror(table[j].code));
      CU_ASSERT_STRING_NOT_EQUAL(qt_strerror_name(table[i].code), qt_strerror_name(table[j].code));
    }
  }
  CU_ASSERT_STRING_EQUAL(qt_strerror(QT_EPARSE), "syntax error");
  CU_ASSERT_STRING_EQUAL(qt_strerror(0), "success");
  CU_ASSERT_STRING_EQUAL(qt_strerror_name(0), "QT_OK");
  CU_ASSERT_STRING_EQUAL(qt_strerror(-9999), "unknown error");
  CU_ASSERT_STRING_EQUAL(qt_strerror(7), "unknown error");
  CU_ASSERT_STRING_EQUAL(qt_strerror_name(-9999), "QT_UNKNOWN");
}

static void test_error_detail(void) {
  qt_err err;
  qt_err_clear(&err);
  CU_ASSERT_EQUAL(err.code, 0);
  CU_ASSERT_STRING_EQUAL(qt_err_message(&err), "success");

  CU_ASSERT_EQUAL(qt_err_set(&err, QT_EPARSE, "%s:%d:%d: bad value %g", "a.yaml", 3, 7, 1.5),
                  QT_EPARSE);
  CU_ASSERT_EQUAL(err.code, QT_EPARSE);
  CU_ASSERT_STRING_EQUAL(err.msg, "a.yaml:3:7: bad value 1.5");
  CU_ASSERT_STRING_EQUAL(qt_err_message(&err), "a.yaml:3:7: bad value 1.5");

  CU_ASSERT_EQUAL(qt_err_prefix(&err, QT_EINVAL, "loading %s", "hub"), QT_EPARSE);
  CU_ASSERT_EQUAL(err.code, QT_EPARSE); /* the original code wins */
  CU_ASSERT_STRING_EQUAL(err.msg, "loading hub: a.yaml:3:7: bad value 1.5");

  /* A code without a message is prefixed onto its sentence. */
  qt_err_clear(&err);
  err.code = QT_ENOMEM;
  CU_ASSERT_STRING_EQUAL(qt_err_message(&err), "out of memory");
  qt_err_prefix(&err, QT_EINVAL, "trial %d", 4);
  CU_ASSERT_STRING_EQUAL(err.msg, "trial 4: out of memory");

  /* A cleared err takes the prefix's code, so it never reads as success. */
  qt_err_clear(&err);
  CU_ASSERT_EQUAL(qt_err_prefix(&err, QT_EIO, "saving"), QT_EIO);
  CU_ASSERT_STRING_EQUAL(err.msg, "saving: input/output error");

  /* NULL err is allowed everywhere and the code still flows through. */
  qt_err_clear(NULL);
  CU_ASSERT_EQUAL(qt_err_set(NULL, QT_ERANGE, "x"), QT_ERANGE);
  CU_ASSERT_EQUAL(qt_err_prefix(NULL, QT_ERANGE, "x"), QT_ERANGE);

  /* Over-long messages are cut, never overflow. */
  char long_text[3000];
  memset(long_text, 'x', sizeof long_text - 1);
  long_text[sizeof long_text - 1] = '\0';
  qt_err_set(&err, QT_EINVAL, "%s", long_text);
  CU_ASSERT_EQUAL(strlen(err.msg), sizeof err.msg - 1);
  qt_err_prefix(&err, QT_EINVAL, "context");
  CU_ASSERT_EQUAL(strlen(err.msg), sizeof err.msg - 1);
  CU_ASSERT_EQUAL(strncmp(err.msg, "context: xxx", 12), 0);
}

/* ------------------------------------------------------------------------- */
/* Logging                                                                    */
/* ------------------------------------------------------------------------- */

typedef struct log_capture {
  int calls;
  qt_log_level level;
  char message[4096];
} log_capture;

static void capture_log(qt_log_level level, const char *message, void *user) {
  log_capture *capture = user;
  capture->calls++;
  capture->level = level;
  snprintf(capture->message, sizeof capture->message, "%s", message);
}

static void test_log(void) {
  log_capture capture = {0};
  qt_log_level saved = qt_log_get_level();
  qt_log_set_callback(capture_log, &capture);
  qt_log_set_level(QT_LOG_LEVEL_WARN);
  CU_ASSERT_EQUAL(qt_log_get_level(), QT_LOG_LEVEL_WARN);

  QT_LOG_INFO("dropped %d", 1);
  CU_ASSERT_EQUAL(capture.calls, 0);
  QT_LOG_WARN("trial %d diverged (loss %.1f)", 7, 12.5);
  CU_ASSERT_EQUAL(capture.calls, 1);
  CU_ASSERT_EQUAL(capture.level, QT_LOG_LEVEL_WARN);
  CU_ASSERT_STRING_EQUAL(capture.message, "trial 7 diverged (loss 12.5)");
  QT_LOG_ERROR("e");
  CU_ASSERT_EQUAL(capture.calls, 2);
  qt_log(QT_LOG_LEVEL_SILENT, "never");
  CU_ASSERT_EQUAL(capture.calls, 2);

  /* Messages longer than the logger's stack buffer arrive whole. */
  char long_text[3000];
  memset(long_text, 'y', sizeof long_text - 1);
  long_text[sizeof long_text - 1] = '\0';
  QT_LOG_ERROR("%s!", long_text);
  CU_ASSERT_EQUAL(strlen(capture.message), sizeof long_text);
  CU_ASSERT_EQUAL(capture.message[sizeof long_text - 1], '!');

  qt_log_set_level(QT_LOG_LEVEL_SILENT);
  QT_LOG_ERROR("silenced");
  CU_ASSERT_EQUAL(capture.calls, 3);

  qt_log_set_callback(NULL, NULL); /* back to the default */
  qt_log_set_level(saved);

  qt_log_level level;
  qt_err err;
  CU_ASSERT_EQUAL(qt_log_level_parse("debug", &level, &err), 0);
  CU_ASSERT_EQUAL(level, QT_LOG_LEVEL_DEBUG);
  CU_ASSERT_EQUAL(qt_log_level_parse("WARN", &level, &err), 0);
  CU_ASSERT_EQUAL(level, QT_LOG_LEVEL_WARN);
  CU_ASSERT_EQUAL(qt_log_level_parse("silent", &level, &err), 0);
  CU_ASSERT_EQUAL(level, QT_LOG_LEVEL_SILENT);
  CU_ASSERT_EQUAL(qt_log_level_parse("loud", &level, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "\"loud\""));
}

/* ------------------------------------------------------------------------- */
/* Random streams                                                             */
/* ------------------------------------------------------------------------- */

static void test_rng_reproducible(void) {
  qt_rng_t *a, *b, *c;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&a, 42, NULL), 0);
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&b, 42, NULL), 0);
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&c, 43, NULL), 0);
  CU_ASSERT_EQUAL(qt_rng_seed(a), 42);
  CU_ASSERT_PTR_NOT_NULL(qt_rng_gsl(a));

  int same_as_other_seed = 0;
  for (int i = 0; i < 1000; i++) {
    double x = qt_rng_uniform(a);
    CU_ASSERT_EQUAL(x, qt_rng_uniform(b));
    CU_ASSERT_TRUE(x >= 0.0 && x < 1.0);
    same_as_other_seed += x == qt_rng_uniform(c);
    double y = qt_rng_uniform_pos(a);
    CU_ASSERT_EQUAL(y, qt_rng_uniform_pos(b));
    CU_ASSERT_TRUE(y > 0.0 && y < 1.0);
    CU_ASSERT_EQUAL(qt_rng_gaussian(a, 2.0), qt_rng_gaussian(b, 2.0));
    CU_ASSERT_EQUAL(qt_rng_uniform_int(a, 1000), qt_rng_uniform_int(b, 1000));
    (void)qt_rng_uniform_pos(c);
    (void)qt_rng_gaussian(c, 2.0);
    (void)qt_rng_uniform_int(c, 1000);
  }
  CU_ASSERT_EQUAL(same_as_other_seed, 0);
  qt_rng_free(a);
  qt_rng_free(b);
  qt_rng_free(c);
  qt_rng_free(NULL);
}

static void test_rng_fork(void) {
  qt_rng_t *parent, *fork1, *fork1_again, *fork2, *reference;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&parent, 7, NULL), 0);
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&reference, 7, NULL), 0);
  CU_ASSERT_EQUAL_FATAL(qt_rng_fork(parent, 1, &fork1, NULL), 0);
  /* Drawing from the parent must not change later forks ... */
  for (int i = 0; i < 100; i++) (void)qt_rng_uniform(parent);
  CU_ASSERT_EQUAL_FATAL(qt_rng_fork(parent, 1, &fork1_again, NULL), 0);
  CU_ASSERT_EQUAL_FATAL(qt_rng_fork(parent, 2, &fork2, NULL), 0);
  CU_ASSERT_EQUAL(qt_rng_seed(fork1), qt_rng_seed(fork1_again));
  CU_ASSERT_NOT_EQUAL(qt_rng_seed(fork1), qt_rng_seed(parent));
  CU_ASSERT_NOT_EQUAL(qt_rng_seed(fork1), qt_rng_seed(fork2));

  /* ... and forking must not advance the parent. */
  for (int i = 0; i < 100; i++) (void)qt_rng_uniform(reference);
  CU_ASSERT_EQUAL(qt_rng_uniform(parent), qt_rng_uniform(reference));

  int equal_to_parent = 0, equal_to_sibling = 0;
  for (int i = 0; i < 1000; i++) {
    double x = qt_rng_uniform(fork1);
    CU_ASSERT_EQUAL(x, qt_rng_uniform(fork1_again));
    equal_to_parent += x == qt_rng_uniform(parent);
    equal_to_sibling += x == qt_rng_uniform(fork2);
  }
  CU_ASSERT_EQUAL(equal_to_parent, 0);
  CU_ASSERT_EQUAL(equal_to_sibling, 0);

  /* Stream 0 of seed s is not the stream of seed s itself. */
  qt_rng_t *fork0;
  CU_ASSERT_EQUAL_FATAL(qt_rng_fork(reference, 0, &fork0, NULL), 0);
  CU_ASSERT_NOT_EQUAL(qt_rng_seed(fork0), 7);
  qt_rng_free(fork0);

  qt_rng_free(parent);
  qt_rng_free(reference);
  qt_rng_free(fork1);
  qt_rng_free(fork1_again);
  qt_rng_free(fork2);
}

static void test_rng_uniform_int(void) {
  qt_rng_t *rng;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, 2024, NULL), 0);

  /* Chi-square over 10 bins, 9 degrees of freedom: P(chi2 > 33.7) = 1e-4
   * for a fair generator, while a skewed one (an off-by-one range, a bin
   * never reached) lands in the thousands. */
  enum { BINS = 10, DRAWS = 100000 };
  long counts[BINS] = {0};
  for (int i = 0; i < DRAWS; i++) {
    uint64_t x = qt_rng_uniform_int(rng, BINS);
    CU_ASSERT_TRUE_FATAL(x < BINS);
    counts[x]++;
  }
  double expected = (double)DRAWS / BINS, chi2 = 0.0;
  for (int b = 0; b < BINS; b++) chi2 += (counts[b] - expected) * (counts[b] - expected) / expected;
  CU_ASSERT_TRUE(chi2 < 33.7);

  CU_ASSERT_EQUAL(qt_rng_uniform_int(rng, 1), 0);

  /* Beyond 2^32 the result needs two 32-bit draws: check the range, the
   * mean, and that the top third of the range is reached as often as it
   * should be (one draw alone would never get there). */
  const uint64_t large[] = {UINT64_C(0x100000000), UINT64_C(0x100000001), UINT64_C(3) << 40,
                            UINT64_C(0x8000000000000001), UINT64_MAX};
  for (size_t k = 0; k < COUNT_OF(large); k++) {
    uint64_t n = large[k];
    double sum = 0.0;
    long top_third = 0;
    for (int i = 0; i < DRAWS; i++) {
      uint64_t x = qt_rng_uniform_int(rng, n);
      CU_ASSERT_TRUE_FATAL(x < n);
      sum += (double)x / (double)n;
      top_third += x >= n / 3 * 2;
    }
    /* The mean of U(0,1) over 1e5 draws has standard deviation 0.0009. */
    QT_ASSERT_CLOSE(sum / DRAWS, 0.5, 0.01);
    QT_ASSERT_CLOSE((double)top_third / DRAWS, 1.0 / 3.0, 0.01);
  }

  /* Gaussian moments: sd of the mean is 3/316, of the variance ~0.04. */
  double sum = 0.0, sum_sq = 0.0;
  for (int i = 0; i < DRAWS; i++) {
    double g = qt_rng_gaussian(rng, 3.0);
    sum += g;
    sum_sq += g * g;
  }
  QT_ASSERT_CLOSE(sum / DRAWS, 0.0, 0.05);
  QT_ASSERT_CLOSE(sum_sq / DRAWS, 9.0, 0.2);
  qt_rng_free(rng);
}

/* ------------------------------------------------------------------------- */
/* Durations                                                                  */
/* ------------------------------------------------------------------------- */

static void test_duration_parse(void) {
  static const struct {
    const char *text;
    double seconds;
  } valid[] = {
      {"90", 90.0},
      {"2.5", 2.5},
      {"0", 0.0},
      {".5", 0.5},
      {"90s", 90.0},
      {"45m", 2700.0},
      {"4h", 14400.0},
      {"1d", 86400.0},
      {"1h30m", 5400.0},
      {"1.5h", 5400.0},
      {"0.25d", 21600.0},
      {"1d2h3m4s", 93784.0},
      {"2d12h", 216000.0},
      {"30m15s", 1815.0},
      {"1h0.5m", 3630.0},
      {" 10m ", 600.0},
      {"\t2h\n", 7200.0},
      {"1:30:00", 5400.0},
      {"01:02:03", 3723.0},
      {"90:05", 5405.0},
      {"0:59", 59.0},
      {"100:00:00", 360000.0},
      {"1:00:30.5", 3630.5},
      {" 2:00 ", 120.0},
  };
  for (size_t i = 0; i < COUNT_OF(valid); i++) {
    double seconds = -1.0;
    qt_err err;
    qt_err_clear(&err);
    int status = qt_duration_parse(valid[i].text, &seconds, &err);
    CU_ASSERT_EQUAL(status, 0);
    CU_ASSERT_EQUAL(seconds, valid[i].seconds);
    if (status != 0 || seconds != valid[i].seconds) {
      fprintf(stderr, "\n  \"%s\": status %d, %g s, %s\n", valid[i].text, status, seconds, err.msg);
    }
  }

  char huge[400];
  memset(huge, '9', sizeof huge - 1);
  huge[sizeof huge - 1] = '\0';
  const char *invalid[] = {"",     "   ",    "abc",    "-5",   "+5",    "5x",    "1h1h",
                           "1m1h", "1s1d",   "nan",    "inf",  "1e400", "1e3",   "1:60:00",
                           "1::2", ":30",    "1:5",    "1:61", "1:30:", "5:",    "1:2:3:4",
                           "1h30", "1 h",    "1h 30m", "h",    ".",     "1.2.3", "1,5h",
                           "1H",   "1:30.x", "1.5:30", huge};
  for (size_t i = 0; i < COUNT_OF(invalid); i++) {
    double seconds = 123.0;
    qt_err err;
    qt_err_clear(&err);
    int status = qt_duration_parse(invalid[i], &seconds, &err);
    CU_ASSERT_EQUAL(status, QT_EPARSE);
    CU_ASSERT_EQUAL(err.code, QT_EPARSE);
    CU_ASSERT_EQUAL(seconds, 123.0); /* untouched on failure */
    char quoted[512];
    snprintf(quoted, sizeof quoted, "\"%.100s", invalid[i]);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, quoted));
    if (status != QT_EPARSE)
      fprintf(stderr, "\n  \"%s\" was accepted as %g s\n", invalid[i], seconds);
  }

  qt_err err;
  qt_duration_parse("5x", NULL, &err);
  CU_ASSERT_EQUAL(strncmp(err.msg, "invalid duration \"5x\": unknown unit", 35), 0);
  CU_ASSERT_EQUAL(qt_duration_parse(NULL, NULL, &err), QT_EINVAL);
}

static void test_duration_format(void) {
  static const struct {
    double seconds;
    const char *text;
  } cases[] = {
      {0.0, "0s"},      {0.04, "0s"},       {5.0, "5s"},           {12.34, "12.3s"},
      {59.94, "59.9s"}, {59.96, "1m"},      {60.0, "1m"},          {90.0, "1m30s"},
      {2700.0, "45m"},  {3601.0, "1h1s"},   {5400.0, "1h30m"},     {5400.4, "1h30m"},
      {86400.0, "1d"},  {187200.0, "2d4h"}, {93784.0, "1d2h3m4s"}, {-90.0, "-1m30s"},
  };
  char buf[64];
  for (size_t i = 0; i < COUNT_OF(cases); i++) {
    qt_duration_format(cases[i].seconds, buf, sizeof buf);
    CU_ASSERT_STRING_EQUAL(buf, cases[i].text);
    if (strcmp(buf, cases[i].text) != 0) {
      fprintf(stderr, "\n  %g s: got %s, expected %s\n", cases[i].seconds, buf, cases[i].text);
    }
  }

  /* Whatever is printed parses back to the printed value. */
  const double samples[] = {0.5, 7.0, 61.0, 3599.0, 3600.0, 86399.0, 90061.0, 1e7};
  for (size_t i = 0; i < COUNT_OF(samples); i++) {
    double back;
    qt_duration_format(samples[i], buf, sizeof buf);
    CU_ASSERT_EQUAL(qt_duration_parse(buf, &back, NULL), 0);
    CU_ASSERT_EQUAL(back, samples[i]);
  }

  /* A small buffer is cut, not overrun. */
  char tiny[4] = {'z', 'z', 'z', 'z'};
  qt_duration_format(93784.0, tiny, 3);
  CU_ASSERT_EQUAL(tiny[3], 'z');
  CU_ASSERT_EQUAL(strlen(tiny), 2);

  double t0 = qt_time_now();
  double t1 = qt_time_now();
  CU_ASSERT_TRUE(t0 > 0.0);
  CU_ASSERT_TRUE(t1 >= t0);
}

/* ------------------------------------------------------------------------- */
/* YAML                                                                       */
/* ------------------------------------------------------------------------- */

static void test_yaml_syntax_errors(void) {
  /* " b" is indented under the scalar "1": its ':' (2:3) cannot start a value. */
  check_yaml_error("a: 1\n b: 2\n", QT_EPARSE,
                   "c.yaml:2:3: mapping values are not allowed in this context");
  /* The second ':' of the line, at column 11. */
  check_yaml_error("key: value: other\n", QT_EPARSE,
                   "c.yaml:1:11: mapping values are not allowed in this context");
  /* Unclosed bracket: the sequence opens at 1:4; the plain scalar "2 b"
   * continues onto line 2, and its ':' at 2:2 is where the scan fails. */
  check_yaml_error("a: [1, 2\nb: 3\n", QT_EPARSE,
                   "c.yaml:2:2: did not find expected ',' or ']' "
                   "(while parsing a flow sequence at line 1, column 4)");
  check_yaml_error("a: 1\nb: {x: 1\n", QT_EPARSE,
                   "c.yaml:3:1: did not find expected ',' or '}' "
                   "(while parsing a flow mapping at line 2, column 4)");
  /* Unclosed quotes run to the end of the input (line 3 or 2, column 1). */
  check_yaml_error("a: \"abc\nb: 3\n", QT_EPARSE,
                   "c.yaml:3:1: found unexpected end of stream "
                   "(while scanning a quoted scalar at line 1, column 4)");
  check_yaml_error("x: 1\na: 'abc\n", QT_EPARSE,
                   "c.yaml:3:1: found unexpected end of stream "
                   "(while scanning a quoted scalar at line 2, column 4)");
  /* A tab used for indentation is the first character of line 2. */
  check_yaml_error("a:\n\tb: 1\n", QT_EPARSE,
                   "c.yaml:2:1: found character that cannot start any token "
                   "(while scanning for the next token)");
  check_yaml_error("- a\nb: 1\n", QT_EPARSE,
                   "c.yaml:2:1: did not find expected '-' indicator "
                   "(while parsing a block collection at line 1, column 1)");
  check_yaml_error("a: *nope\n", QT_EPARSE, "c.yaml:1:4: found undefined alias");
  /* Invalid UTF-8 is reported by byte offset; it is turned into 2:4. */
  check_yaml_error("x: 1\na: \xff\n", QT_EPARSE,
                   "c.yaml:2:4: invalid leading UTF-8 octet (byte 0xFF)");

  check_yaml_error("", QT_ESCHEMA, "c.yaml: empty document");
  check_yaml_error("# only a comment\n", QT_ESCHEMA, "c.yaml: empty document");
  check_yaml_error("a: 1\n---\nb: 2\n", QT_ESCHEMA,
                   "c.yaml:2:1: a second YAML document; expected one per file");
  /* A syntax error after the first document is still an error: the bracket
   * opened at 3:4 is still open at the end of the input, 4:1. */
  check_yaml_error("a: 1\n---\nb: [\n", QT_EPARSE,
                   "c.yaml:4:1: did not find expected node content (while parsing a flow node)");
}

static const char *const config_text =
    "name: test\n"          /* line 1 */
    "params:\n"             /* line 2 */
    "  lr: 0.001\n"         /* line 3: key at 3:3, value at 3:7 */
    "  layers: [1, 2, 3]\n" /* line 4: '[' at 4:11, "2" at 4:15 */
    "  opt: {kind: adam}\n" /* line 5: '{' at 5:8 */
    "  label: \"0.5\"\n"    /* line 6: quoted at 6:10 */
    "  empty:\n"            /* line 7 */
    "base: &b {x: 1}\n"     /* line 8 */
    "other: *b\n";          /* line 9 */

static void test_yaml_navigation(void) {
  qt_yaml_doc_t *doc;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(load_yaml(config_text, &doc, &err), 0);
  CU_ASSERT_STRING_EQUAL(qt_yaml_name(doc), "c.yaml");

  qt_yaml_node root = qt_yaml_root(doc);
  int line, column;
  CU_ASSERT_EQUAL(qt_yaml_kind_of(doc, root), QT_YAML_KIND_MAPPING);
  CU_ASSERT_EQUAL(qt_yaml_length(doc, root), 4);
  CU_ASSERT_STRING_EQUAL(qt_yaml_scalar(doc, qt_yaml_pair_key(doc, root, 1)), "params");
  CU_ASSERT_STRING_EQUAL(qt_yaml_scalar(doc, qt_yaml_get(doc, root, "name")), "test");

  qt_yaml_node params = qt_yaml_get(doc, root, "params");
  CU_ASSERT_EQUAL(qt_yaml_kind_of(doc, params), QT_YAML_KIND_MAPPING);
  CU_ASSERT_EQUAL(qt_yaml_length(doc, params), 5);
  qt_yaml_mark(doc, qt_yaml_pair_key(doc, params, 0), &line, &column);
  CU_ASSERT(line == 3 && column == 3);
  qt_yaml_node lr = qt_yaml_get(doc, params, "lr");
  qt_yaml_mark(doc, lr, &line, &column);
  CU_ASSERT(line == 3 && column == 7);

  qt_yaml_node layers = qt_yaml_get(doc, params, "layers");
  CU_ASSERT_EQUAL(qt_yaml_kind_of(doc, layers), QT_YAML_KIND_SEQUENCE);
  CU_ASSERT_EQUAL(qt_yaml_length(doc, layers), 3);
  qt_yaml_mark(doc, layers, &line, &column);
  CU_ASSERT(line == 4 && column == 11);
  qt_yaml_node second = qt_yaml_item(doc, layers, 1);
  CU_ASSERT_STRING_EQUAL(qt_yaml_scalar(doc, second), "2");
  qt_yaml_mark(doc, second, &line, &column);
  CU_ASSERT(line == 4 && column == 15);
  CU_ASSERT_EQUAL(qt_yaml_item(doc, layers, 3), 0);

  qt_yaml_node opt = qt_yaml_get(doc, params, "opt");
  qt_yaml_mark(doc, opt, &line, &column);
  CU_ASSERT(line == 5 && column == 8);
  CU_ASSERT_STRING_EQUAL(qt_yaml_scalar(doc, qt_yaml_get(doc, opt, "kind")), "adam");

  qt_yaml_node label = qt_yaml_get(doc, params, "label");
  CU_ASSERT_TRUE(qt_yaml_scalar_is_quoted(doc, label));
  CU_ASSERT_FALSE(qt_yaml_scalar_is_quoted(doc, lr));
  qt_yaml_mark(doc, label, &line, &column);
  CU_ASSERT(line == 6 && column == 10);

  /* An alias resolves to the anchored node itself. */
  qt_yaml_node other = qt_yaml_get(doc, root, "other");
  CU_ASSERT_EQUAL(other, qt_yaml_get(doc, root, "base"));
  CU_ASSERT_STRING_EQUAL(qt_yaml_scalar(doc, qt_yaml_get(doc, other, "x")), "1");

  /* Missing and invalid handles answer "nothing" instead of crashing. */
  const qt_yaml_node nothing[] = {0, -3, 9999, qt_yaml_get(doc, root, "missing")};
  for (size_t i = 0; i < COUNT_OF(nothing); i++) {
    CU_ASSERT_EQUAL(qt_yaml_kind_of(doc, nothing[i]), QT_YAML_KIND_NONE);
    CU_ASSERT_PTR_NULL(qt_yaml_scalar(doc, nothing[i]));
    CU_ASSERT_EQUAL(qt_yaml_length(doc, nothing[i]), 0);
    CU_ASSERT_EQUAL(qt_yaml_get(doc, nothing[i], "x"), 0);
    CU_ASSERT_EQUAL(qt_yaml_pair_key(doc, nothing[i], 0), 0);
    qt_yaml_mark(doc, nothing[i], &line, &column);
    CU_ASSERT(line == 0 && column == 0);
  }
  CU_ASSERT_EQUAL(qt_yaml_item(doc, root, 0), 0); /* a mapping is not a sequence */
  CU_ASSERT_EQUAL(qt_yaml_pair_key(doc, layers, 0), 0);
  CU_ASSERT_PTR_NULL(qt_yaml_scalar(doc, params));

  CU_ASSERT_EQUAL(qt_yaml_error(&err, QT_ESCHEMA, doc, layers, "expected %d items", 4), QT_ESCHEMA);
  CU_ASSERT_STRING_EQUAL(err.msg, "c.yaml:4:11: expected 4 items");
  qt_yaml_error(&err, QT_ESCHEMA, doc, 0, "missing key \"%s\"", "epochs");
  CU_ASSERT_STRING_EQUAL(err.msg, "c.yaml: missing key \"epochs\"");
  qt_yaml_free(doc);
  qt_yaml_free(NULL);
}

static void test_yaml_typed_reads(void) {
  const char *text =
      "f: 0.001\n"                  /* 1 */
      "e: -1.5e-4\n"                /* 2 */
      "i: 42\n"                     /* 3 */
      "n: -7\n"                     /* 4 */
      "half: 1.5\n"                 /* 5: value at 5:7 */
      "word: abc\n"                 /* 6: value at 6:7 */
      "q: \"2.5\"\n"                /* 7: value at 7:4 */
      "inf: .inf\n"                 /* 8 */
      "nan: .nan\n"                 /* 9 */
      "big: 99999999999999999999\n" /* 10: value at 10:6 */
      "t: True\n"                   /* 11 */
      "y: yes\n"                    /* 12 */
      "off: OFF\n"                  /* 13 */
      "no: No\n"                    /* 14 */
      "maybe: maybe\n"              /* 15: value at 15:8 */
      "tilde: ~\n"                  /* 16 */
      "null: null\n"                /* 17 */
      "blank:\n"                    /* 18 */
      "qempty: \"\"\n"              /* 19 */
      "seq: [1]\n"                  /* 20: value at 20:6 */
      "hexa: 0x10\n";               /* 21 */
  qt_yaml_doc_t *doc;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(load_yaml(text, &doc, &err), 0);
  qt_yaml_node root = qt_yaml_root(doc);
#define NODE(key) qt_yaml_get(doc, root, key)

  double d;
  CU_ASSERT_EQUAL(qt_yaml_to_double(doc, NODE("f"), &d, &err), 0);
  CU_ASSERT_EQUAL(d, 0.001);
  CU_ASSERT_EQUAL(qt_yaml_to_double(doc, NODE("e"), &d, &err), 0);
  CU_ASSERT_EQUAL(d, -1.5e-4);
  CU_ASSERT_EQUAL(qt_yaml_to_double(doc, NODE("i"), &d, &err), 0);
  CU_ASSERT_EQUAL(d, 42.0);
  CU_ASSERT_EQUAL(qt_yaml_to_double(doc, NODE("word"), &d, &err), QT_ESCHEMA);
  CU_ASSERT_STRING_EQUAL(err.msg, "c.yaml:6:7: expected a finite number, got \"abc\"");
  CU_ASSERT_EQUAL(qt_yaml_to_double(doc, NODE("q"), &d, &err), QT_ESCHEMA);
  CU_ASSERT_STRING_EQUAL(err.msg,
                         "c.yaml:7:4: expected a number, got the string \"2.5\" "
                         "(quoted values are strings)");
  CU_ASSERT_EQUAL(qt_yaml_to_double(doc, NODE("inf"), &d, &err), QT_ESCHEMA);
  CU_ASSERT_EQUAL(qt_yaml_to_double(doc, NODE("nan"), &d, &err), QT_ESCHEMA);
  CU_ASSERT_EQUAL(qt_yaml_to_double(doc, NODE("hexa"), &d, &err), QT_ESCHEMA);
  CU_ASSERT_EQUAL(qt_yaml_to_double(doc, NODE("seq"), &d, &err), QT_ESCHEMA);
  CU_ASSERT_STRING_EQUAL(err.msg, "c.yaml:20:6: expected a number, got a sequence");
  CU_ASSERT_EQUAL(qt_yaml_to_double(doc, NODE("absent"), &d, &err), QT_ESCHEMA);
  CU_ASSERT_STRING_EQUAL(err.msg, "c.yaml: expected a number, got nothing");

  long l;
  CU_ASSERT_EQUAL(qt_yaml_to_int(doc, NODE("i"), &l, &err), 0);
  CU_ASSERT_EQUAL(l, 42);
  CU_ASSERT_EQUAL(qt_yaml_to_int(doc, NODE("n"), &l, &err), 0);
  CU_ASSERT_EQUAL(l, -7);
  CU_ASSERT_EQUAL(qt_yaml_to_int(doc, NODE("half"), &l, &err), QT_ESCHEMA);
  CU_ASSERT_STRING_EQUAL(err.msg, "c.yaml:5:7: expected an integer, got \"1.5\"");
  CU_ASSERT_EQUAL(qt_yaml_to_int(doc, NODE("e"), &l, &err), QT_ESCHEMA);
  CU_ASSERT_EQUAL(qt_yaml_to_int(doc, NODE("big"), &l, &err), QT_ESCHEMA);
  CU_ASSERT_STRING_EQUAL(err.msg, "c.yaml:10:6: integer 99999999999999999999 is out of range");

  int b = -1;
  CU_ASSERT_EQUAL(qt_yaml_to_bool(doc, NODE("t"), &b, &err), 0);
  CU_ASSERT_EQUAL(b, 1);
  CU_ASSERT_EQUAL(qt_yaml_to_bool(doc, NODE("y"), &b, &err), 0);
  CU_ASSERT_EQUAL(b, 1);
  CU_ASSERT_EQUAL(qt_yaml_to_bool(doc, NODE("off"), &b, &err), 0);
  CU_ASSERT_EQUAL(b, 0);
  b = -1;
  CU_ASSERT_EQUAL(qt_yaml_to_bool(doc, NODE("no"), &b, &err), 0);
  CU_ASSERT_EQUAL(b, 0);
  CU_ASSERT_EQUAL(qt_yaml_to_bool(doc, NODE("i"), &b, &err), QT_ESCHEMA);
  CU_ASSERT_EQUAL(qt_yaml_to_bool(doc, NODE("maybe"), &b, &err), QT_ESCHEMA);
  CU_ASSERT_STRING_EQUAL(err.msg,
                         "c.yaml:15:8: expected a boolean (true/false, yes/no, on/off), "
                         "got \"maybe\"");

  CU_ASSERT_TRUE(qt_yaml_is_null(doc, NODE("tilde")));
  CU_ASSERT_TRUE(qt_yaml_is_null(doc, NODE("null")));
  CU_ASSERT_TRUE(qt_yaml_is_null(doc, NODE("blank")));
  CU_ASSERT_FALSE(qt_yaml_is_null(doc, NODE("qempty")));
  CU_ASSERT_FALSE(qt_yaml_is_null(doc, NODE("word")));
  CU_ASSERT_FALSE(qt_yaml_is_null(doc, NODE("seq")));
  CU_ASSERT_FALSE(qt_yaml_is_null(doc, 0));
#undef NODE
  qt_yaml_free(doc);
}

static void test_yaml_check_keys(void) {
  static const char *const allowed[] = {"name", "lr", "epochs", NULL};
  qt_yaml_doc_t *doc;
  qt_err err;

  CU_ASSERT_EQUAL_FATAL(load_yaml("name: a\nlr: 0.1\n", &doc, &err), 0);
  CU_ASSERT_EQUAL(qt_yaml_check_keys(doc, qt_yaml_root(doc), allowed, &err), 0);
  qt_yaml_free(doc);

  /* The unknown key is the first character of line 3. */
  CU_ASSERT_EQUAL_FATAL(load_yaml("name: a\nlr: 0.1\nlrr: 2\n", &doc, &err), 0);
  CU_ASSERT_EQUAL(qt_yaml_check_keys(doc, qt_yaml_root(doc), allowed, &err), QT_ESCHEMA);
  CU_ASSERT_STRING_EQUAL(err.msg, "c.yaml:3:1: unknown key \"lrr\" (allowed: name, lr, epochs)");
  qt_yaml_free(doc);

  /* Nested mapping: the key sits at column 3. */
  CU_ASSERT_EQUAL_FATAL(load_yaml("outer:\n  epochs: 1\n  lr: 1\n  epochs: 2\n", &doc, &err), 0);
  qt_yaml_node outer = qt_yaml_get(doc, qt_yaml_root(doc), "outer");
  CU_ASSERT_EQUAL(qt_yaml_check_keys(doc, outer, allowed, &err), QT_ESCHEMA);
  CU_ASSERT_STRING_EQUAL(err.msg,
                         "c.yaml:4:3: duplicate key \"epochs\" (first at line 2, column 3)");
  CU_ASSERT_EQUAL(qt_yaml_check_keys(doc, outer, NULL, &err), QT_ESCHEMA);
  CU_ASSERT_EQUAL(qt_yaml_check_keys(doc, qt_yaml_root(doc), NULL, &err), 0);
  qt_yaml_free(doc);

  CU_ASSERT_EQUAL_FATAL(load_yaml("- 1\n- 2\n", &doc, &err), 0);
  CU_ASSERT_EQUAL(qt_yaml_check_keys(doc, qt_yaml_root(doc), allowed, &err), QT_ESCHEMA);
  CU_ASSERT_STRING_EQUAL(err.msg, "c.yaml:1:1: expected a mapping, got a sequence");
  qt_yaml_free(doc);

  CU_ASSERT_EQUAL_FATAL(load_yaml("? [a]\n: 1\n", &doc, &err), 0);
  CU_ASSERT_EQUAL(qt_yaml_check_keys(doc, qt_yaml_root(doc), allowed, &err), QT_ESCHEMA);
  CU_ASSERT_STRING_EQUAL(err.msg, "c.yaml:1:3: expected a key, got a sequence");
  qt_yaml_free(doc);
}

static void test_yaml_files(void) {
  char path[256];
  qt_yaml_doc_t *doc = NULL;
  qt_err err;
  CU_ASSERT_PTR_NOT_NULL_FATAL(qt_test_temp_path("missing.yaml", path, sizeof path));
  CU_ASSERT_EQUAL(qt_yaml_load_file(path, &doc, &err), QT_ENOENT);
  CU_ASSERT_PTR_NULL(doc);
  char expected[512];
  snprintf(expected, sizeof expected, "%s: No such file or directory", path);
  CU_ASSERT_STRING_EQUAL(err.msg, expected);

  /* Errors in a file name the file. */
  CU_ASSERT_EQUAL_FATAL(write_file(path, "a: 1\nb: [\n"), 0);
  CU_ASSERT_EQUAL(qt_yaml_load_file(path, &doc, &err), QT_EPARSE);
  snprintf(expected, sizeof expected, "%s:3:1: ", path);
  CU_ASSERT_EQUAL(strncmp(err.msg, expected, strlen(expected)), 0);

  CU_ASSERT_EQUAL_FATAL(write_file(path, "a: 1\n"), 0);
  CU_ASSERT_EQUAL_FATAL(qt_yaml_load_file(path, &doc, &err), 0);
  CU_ASSERT_STRING_EQUAL(qt_yaml_name(doc), path);
  CU_ASSERT_STRING_EQUAL(qt_yaml_scalar(doc, qt_yaml_get(doc, qt_yaml_root(doc), "a")), "1");
  qt_yaml_free(doc);
  unlink(path);
}

/* ------------------------------------------------------------------------- */
/* JSON                                                                       */
/* ------------------------------------------------------------------------- */

static void test_json(void) {
  const char *text = "{\"lr\": 0.5, \"layers\": [1, 2]}";
  json_t *root = NULL;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_json_load_string(text, strlen(text), "c.json", &root, &err), 0);
  CU_ASSERT_EQUAL(json_real_value(json_object_get(root, "lr")), 0.5);
  CU_ASSERT_EQUAL(json_array_size(json_object_get(root, "layers")), 2);
  json_decref(root);

  /* jansson's column is that of the last character it read. */
  check_json_error("{\"a\": 1,}", "c.json:1:9: string or '}' expected near '}'");
  check_json_error("{\"a\": 1,\n \"b\": }", "c.json:2:7: unexpected token near '}'");
  check_json_error("{\"a\": 1, \"a\": 2}", "c.json:1:12: duplicate object key near '\"a\"'");
  check_json_error("[1, 2", "c.json:1:5: ']' expected near end of file");
  check_json_error("{\"a\": 1} x", "c.json:1:10: end of file expected near 'x'");
  check_json_error("", "c.json:1:1: '[' or '{' expected near end of file");

  char path[256];
  CU_ASSERT_PTR_NOT_NULL_FATAL(qt_test_temp_path("c.json", path, sizeof path));
  CU_ASSERT_EQUAL(qt_json_load_file(path, &root, &err), QT_ENOENT);
  CU_ASSERT_PTR_NULL(root);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, path));
  CU_ASSERT_EQUAL_FATAL(write_file(path, "{\"x\": [true]}"), 0);
  CU_ASSERT_EQUAL_FATAL(qt_json_load_file(path, &root, &err), 0);
  CU_ASSERT_TRUE(json_is_true(json_array_get(json_object_get(root, "x"), 0)));
  json_decref(root);
  CU_ASSERT_EQUAL_FATAL(write_file(path, "{\"x\":\n  [true,]}"), 0);
  CU_ASSERT_EQUAL(qt_json_load_file(path, &root, &err), QT_EPARSE);
  char expected[512];
  snprintf(expected, sizeof expected, "%s:2:9: ", path);
  CU_ASSERT_EQUAL(strncmp(err.msg, expected, strlen(expected)), 0);
  unlink(path);
}

/* ------------------------------------------------------------------------- */
/* CSV                                                                        */
/* ------------------------------------------------------------------------- */

static void test_csv_records(void) {
  qt_csv_t *csv = open_csv("a,b,c\n1,2,3\n");
  CU_ASSERT_STRING_EQUAL(qt_csv_name(csv), "t.csv");
  expect_record(csv, 1, (const char *[]){"a", "b", "c", NULL});
  expect_record(csv, 2, (const char *[]){"1", "2", "3", NULL});
  expect_end(csv);
  qt_csv_free(csv);

  /* No trailing newline. */
  csv = open_csv("a,b\n1,2");
  expect_record(csv, 1, (const char *[]){"a", "b", NULL});
  expect_record(csv, 2, (const char *[]){"1", "2", NULL});
  expect_end(csv);
  qt_csv_free(csv);

  /* Empty fields anywhere, including a trailing one at the end of input. */
  csv = open_csv(",,\na,,b\n\"\",x\nlast,");
  expect_record(csv, 1, (const char *[]){"", "", "", NULL});
  expect_record(csv, 2, (const char *[]){"a", "", "b", NULL});
  expect_record(csv, 3, (const char *[]){"", "x", NULL});
  expect_record(csv, 4, (const char *[]){"last", "", NULL});
  expect_end(csv);
  qt_csv_free(csv);

  /* Empty lines (LF and CRLF) are skipped but still counted. */
  csv = open_csv("\n\na\n\r\n\nb\r\n\r\n");
  expect_record(csv, 3, (const char *[]){"a", NULL});
  expect_record(csv, 6, (const char *[]){"b", NULL});
  expect_end(csv);
  qt_csv_free(csv);

  csv = open_csv("");
  expect_end(csv);
  qt_csv_free(csv);
  qt_csv_free(NULL);

  /* A byte-order mark does not become part of the first field. */
  csv = open_csv("\xEF\xBB\xBFid,x\n");
  expect_record(csv, 1, (const char *[]){"id", "x", NULL});
  qt_csv_free(csv);
}

static void test_csv_quoting(void) {
  qt_csv_t *csv = open_csv(
      "name,desc\n"                       /* 1 */
      "x,\"a, b\"\n"                      /* 2 */
      "\"he said \"\"hi\"\"\",\"\"\"\"\n" /* 3 */
      "1,\"line one\nline two\n\",end\n"  /* 4-6 */
      "2,plain\n"                         /* 7 */
      "\"a\"\"\",\"\",\"\"\n"             /* 8 */
      "q\"uote,3\n");                     /* 9: a quote inside an unquoted field */
  expect_record(csv, 1, (const char *[]){"name", "desc", NULL});
  expect_record(csv, 2, (const char *[]){"x", "a, b", NULL});
  expect_record(csv, 3, (const char *[]){"he said \"hi\"", "\"", NULL});
  expect_record(csv, 4, (const char *[]){"1", "line one\nline two\n", "end", NULL});
  expect_record(csv, 7, (const char *[]){"2", "plain", NULL});
  expect_record(csv, 8, (const char *[]){"a\"", "", "", NULL});
  expect_record(csv, 9, (const char *[]){"q\"uote", "3", NULL});
  expect_end(csv);
  qt_csv_free(csv);

  /* CRLF line ends; a CRLF inside quotes is data. */
  csv = open_csv("a,b\r\n\"x\r\ny\",2\r\n3,\"\"\r\n");
  expect_record(csv, 1, (const char *[]){"a", "b", NULL});
  expect_record(csv, 2, (const char *[]){"x\r\ny", "2", NULL});
  expect_record(csv, 4, (const char *[]){"3", "", NULL});
  expect_end(csv);
  qt_csv_free(csv);
}

static void test_csv_errors(void) {
  qt_err err;
  qt_csv_t *csv = open_csv("a,b\n1,\"oops\n2,3\n");
  expect_record(csv, 1, (const char *[]){"a", "b", NULL});
  CU_ASSERT_EQUAL(qt_csv_next(csv, &err), QT_EPARSE);
  CU_ASSERT_STRING_EQUAL(err.msg, "t.csv:2:3: unterminated quoted field");
  /* The reader stays stopped at the error. */
  qt_err_clear(&err);
  CU_ASSERT_EQUAL(qt_csv_next(csv, &err), QT_EPARSE);
  CU_ASSERT_STRING_EQUAL(err.msg, "t.csv:2:3: unterminated quoted field");
  CU_ASSERT_EQUAL(qt_csv_field_count(csv), 0);
  qt_csv_free(csv);

  const char *after_quote =
      "unexpected text after a closing quote (a quote inside a quoted field must be doubled)";
  char expected[256];
  csv = open_csv("a,\"b\"c,d\n");
  CU_ASSERT_EQUAL(qt_csv_next(csv, &err), QT_EPARSE);
  snprintf(expected, sizeof expected, "t.csv:1:6: %s", after_quote);
  CU_ASSERT_STRING_EQUAL(err.msg, expected);
  qt_csv_free(csv);

  /* After a multi-line field, line and column are those of the junk. */
  csv = open_csv("x\n\"a\nb\"z\n");
  expect_record(csv, 1, (const char *[]){"x", NULL});
  CU_ASSERT_EQUAL(qt_csv_next(csv, &err), QT_EPARSE);
  snprintf(expected, sizeof expected, "t.csv:3:3: %s", after_quote);
  CU_ASSERT_STRING_EQUAL(err.msg, expected);
  qt_csv_free(csv);

  /* A quote opened on line 2 after CRLF lines, never closed. */
  csv = open_csv("h\r\n x,\"\r\n\r\n");
  CU_ASSERT_EQUAL(qt_csv_next(csv, NULL), 1);
  CU_ASSERT_EQUAL(qt_csv_next(csv, &err), QT_EPARSE);
  CU_ASSERT_STRING_EQUAL(err.msg, "t.csv:2:4: unterminated quoted field");
  qt_csv_free(csv);
}

static void test_csv_wide_and_long(void) {
  /* 100 fields per record forces the field array past its first size; the
   * checksum proves every record's fields point at the right text. */
  enum { ROWS = 2000, COLUMNS = 100 };
  size_t size = (size_t)ROWS * COLUMNS * 8 + 1;
  char *text = malloc(size);
  CU_ASSERT_PTR_NOT_NULL_FATAL(text);
  size_t used = 0;
  long expected_sum = 0;
  for (int r = 0; r < ROWS; r++) {
    for (int c = 0; c < COLUMNS; c++) {
      int value = r * 7 + c;
      expected_sum += value;
      /* Every tenth field is quoted, to mix both paths. */
      const char *quote = c % 10 == 0 ? "\"" : "";
      used += (size_t)snprintf(text + used, size - used, "%s%d%s%s", quote, value, quote,
                               c + 1 < COLUMNS ? "," : "\n");
    }
  }
  qt_csv_t *csv;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_csv_open_string(text, used, "wide.csv", &csv, &err), 0);
  free(text); /* the reader keeps its own copy */
  long sum = 0;
  int rows = 0, status;
  while ((status = qt_csv_next(csv, &err)) == 1) {
    CU_ASSERT_EQUAL(qt_csv_field_count(csv), COLUMNS);
    CU_ASSERT_EQUAL(qt_csv_line(csv), rows + 1);
    for (size_t c = 0; c < qt_csv_field_count(csv); c++) {
      long value = 0;
      CU_ASSERT_EQUAL(qt_parse_long(qt_csv_field(csv, c), &value), 0);
      sum += value;
    }
    rows++;
  }
  CU_ASSERT_EQUAL(status, 0);
  CU_ASSERT_EQUAL(rows, ROWS);
  CU_ASSERT_EQUAL(sum, expected_sum);
  qt_csv_free(csv);
}

static void test_csv_files(void) {
  char path[256];
  qt_csv_t *csv = NULL;
  qt_err err;
  CU_ASSERT_PTR_NOT_NULL_FATAL(qt_test_temp_path("t.csv", path, sizeof path));
  CU_ASSERT_EQUAL(qt_csv_open(path, &csv, &err), QT_ENOENT);
  CU_ASSERT_PTR_NULL(csv);
  char expected[512];
  snprintf(expected, sizeof expected, "%s: No such file or directory", path);
  CU_ASSERT_STRING_EQUAL(err.msg, expected);

  CU_ASSERT_EQUAL_FATAL(write_file(path, "k,v\n\"a\nb\",\"c\"x\n"), 0);
  CU_ASSERT_EQUAL_FATAL(qt_csv_open(path, &csv, &err), 0);
  CU_ASSERT_STRING_EQUAL(qt_csv_name(csv), path);
  expect_record(csv, 1, (const char *[]){"k", "v", NULL});
  CU_ASSERT_EQUAL(qt_csv_next(csv, &err), QT_EPARSE);
  snprintf(expected, sizeof expected, "%s:3:7: ", path); /* b","c"x: the x */
  CU_ASSERT_EQUAL(strncmp(err.msg, expected, strlen(expected)), 0);
  qt_csv_free(csv);
  unlink(path);
}

/* ------------------------------------------------------------------------- */
/* Files and numbers                                                          */
/* ------------------------------------------------------------------------- */

static void test_file_read(void) {
  char path[256];
  char *data = NULL;
  size_t length = 0;
  qt_err err;
  CU_ASSERT_PTR_NOT_NULL_FATAL(qt_test_temp_path("data.bin", path, sizeof path));
  CU_ASSERT_EQUAL(qt_file_read(path, &data, &length, &err), QT_ENOENT);
  CU_ASSERT_PTR_NULL(data);

  FILE *f = fopen(path, "wb");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  fwrite("ab\0cd", 1, 5, f);
  fclose(f);
  CU_ASSERT_EQUAL_FATAL(qt_file_read(path, &data, &length, &err), 0);
  CU_ASSERT_EQUAL(length, 5);
  CU_ASSERT_EQUAL(memcmp(data, "ab\0cd", 6), 0); /* including the added NUL */
  free(data);
  CU_ASSERT_EQUAL_FATAL(write_file(path, ""), 0);
  CU_ASSERT_EQUAL_FATAL(qt_file_read(path, &data, NULL, &err), 0);
  CU_ASSERT_STRING_EQUAL(data, "");
  free(data);
  unlink(path);

  /* A directory opens but cannot be read: an I/O error, not "missing". */
  CU_ASSERT_EQUAL(qt_file_read(qt_test_temp_dir(), &data, &length, &err), QT_EIO);
  char expected[512];
  snprintf(expected, sizeof expected, "%s: Is a directory", qt_test_temp_dir());
  CU_ASSERT_STRING_EQUAL(err.msg, expected);

  /* A path through a regular file is "missing" (ENOTDIR). */
  CU_ASSERT_EQUAL(qt_file_read("/dev/null/x", &data, &length, &err), QT_ENOENT);
}

static void test_parse_numbers(void) {
  static const struct {
    const char *text;
    double value;
  } doubles[] = {{"1.5", 1.5}, {" 2e3 ", 2000.0}, {"-0.25", -0.25}, {".5", 0.5},
                 {"+7", 7.0},  {"1e-400", 0.0},   {"\t3\n", 3.0}};
  for (size_t i = 0; i < COUNT_OF(doubles); i++) {
    double value = -1.0;
    CU_ASSERT_EQUAL(qt_parse_double(doubles[i].text, &value), 0);
    CU_ASSERT_EQUAL(value, doubles[i].value);
  }
  const char *bad_doubles[] = {"",         " ",    "abc",   "1.5x", "nan", "NaN", "inf", "-inf",
                               "infinity", "0x10", "1e400", "1,5",  "--1", "1 2", "e5",  NULL};
  for (size_t i = 0; bad_doubles[i]; i++) {
    double value = -1.0;
    CU_ASSERT_EQUAL(qt_parse_double(bad_doubles[i], &value), QT_EPARSE);
    CU_ASSERT_EQUAL(value, -1.0);
  }
  CU_ASSERT_EQUAL(qt_parse_double(NULL, NULL), QT_EPARSE);

  long value = 0;
  CU_ASSERT_EQUAL(qt_parse_long("42", &value), 0);
  CU_ASSERT_EQUAL(value, 42);
  CU_ASSERT_EQUAL(qt_parse_long(" -7 ", &value), 0);
  CU_ASSERT_EQUAL(value, -7);
  CU_ASSERT_EQUAL(qt_parse_long("+3", &value), 0);
  CU_ASSERT_EQUAL(value, 3);
  const char *bad_longs[] = {"", "1.5", "1e3", "x", "- 1", "0x10", "12a", NULL};
  for (size_t i = 0; bad_longs[i]; i++) {
    CU_ASSERT_EQUAL(qt_parse_long(bad_longs[i], &value), QT_EPARSE);
  }
  CU_ASSERT_EQUAL(qt_parse_long("99999999999999999999", &value), QT_ERANGE);
  CU_ASSERT_EQUAL(qt_parse_long("-99999999999999999999", &value), QT_ERANGE);
}

/* The shortest of 15-17 digits reads back exactly; NaN and infinities are
 * empty; a short buffer is not overrun. */
static void test_format_double(void) {
  const double values[] = {0.1, 1.0 / 3.0, 2.5e-300, -123456.789, 0.0, 1e21, 0.30000000000000004};
  char buf[40];
  for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
    qt_format_double(values[i], buf, sizeof buf);
    CU_ASSERT_EQUAL(strtod(buf, NULL), values[i]);
  }
  qt_format_double(0.1, buf, sizeof buf);
  CU_ASSERT_STRING_EQUAL(buf, "0.1");
  qt_format_double(NAN, buf, sizeof buf);
  CU_ASSERT_STRING_EQUAL(buf, "");
  qt_format_double(-INFINITY, buf, sizeof buf);
  CU_ASSERT_STRING_EQUAL(buf, "");
  char small[4] = "xyz";
  qt_format_double(1.0 / 3.0, small, sizeof small);
  CU_ASSERT_EQUAL(strlen(small), 3);
}

/* Fields that need it are quoted, quotes doubled, and the CSV reader gets
 * the same text back. */
static void test_csv_write_field(void) {
  const char *fields[] = {"plain", "a,b", "say \"hi\"", "two\nlines", "", "cr\r"};
  size_t n = sizeof fields / sizeof fields[0];
  char path[256];
  qt_test_temp_path("fields.csv", path, sizeof path);
  FILE *f = fopen(path, "w");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  for (size_t i = 0; i < n; i++) {
    if (i) fputc(',', f);
    qt_csv_write_field(f, fields[i]);
  }
  fputc('\n', f);
  fclose(f);
  char *text = NULL;
  size_t length = 0;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_file_read(path, &text, &length, &err), 0);
  CU_ASSERT_PTR_NOT_NULL(strstr(text, "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",,\"cr\r\""));
  free(text);
}

/* qt_remove_tree removes nested folders and files, and a link without
 * following it. */
static void test_remove_tree(void) {
  char root[256], path[512], outside[256];
  qt_test_temp_path("tree", root, sizeof root);
  qt_test_temp_path("outside", outside, sizeof outside);
  qt_err err;
  snprintf(path, sizeof path, "%s/a/b/c", root);
  CU_ASSERT_EQUAL_FATAL(qt_mkdir_p(path, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_mkdir_p(outside, &err), 0);
  snprintf(path, sizeof path, "%s/a/b/file", root);
  FILE *f = fopen(path, "w");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  fclose(f);
  snprintf(path, sizeof path, "%s/a/link", root);
  CU_ASSERT_EQUAL(symlink(outside, path), 0);
  qt_remove_tree(root);
  struct stat info;
  CU_ASSERT_NOT_EQUAL(lstat(root, &info), 0);
  CU_ASSERT_EQUAL(stat(outside, &info), 0);
  qt_remove_tree(root); /* gone already: a no-op */
}

/* ------------------------------------------------------------------------- */

static const qt_test_case cases[] = {
    {"error table", test_error_table},
    {"error detail: set, prefix, truncation", test_error_detail},
    {"log: callback, threshold, long messages", test_log},
    {"rng: same seed, same numbers", test_rng_reproducible},
    {"rng: forks are stable and independent", test_rng_fork},
    {"rng: uniform_int range, chi-square, large n", test_rng_uniform_int},
    {"duration: every form parses or is rejected", test_duration_parse},
    {"duration: format", test_duration_format},
    {"yaml: syntax errors at line:column", test_yaml_syntax_errors},
    {"yaml: navigation and marks", test_yaml_navigation},
    {"yaml: typed reads", test_yaml_typed_reads},
    {"yaml: check_keys", test_yaml_check_keys},
    {"yaml: files", test_yaml_files},
    {"json: load and errors", test_json},
    {"csv: records, empty fields and lines", test_csv_records},
    {"csv: quoting, embedded newlines, CRLF", test_csv_quoting},
    {"csv: errors", test_csv_errors},
    {"csv: wide and long input", test_csv_wide_and_long},
    {"csv: files", test_csv_files},
    {"file read", test_file_read},
    {"parse numbers", test_parse_numbers},
    {"format double: shortest exact text", test_format_double},
    {"csv: writing fields", test_csv_write_field},
    {"remove tree", test_remove_tree},
    {NULL, NULL},
};

QT_TEST_MAIN("core", cases)

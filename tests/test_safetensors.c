/*
 * test_safetensors.c - safetensors reading and writing, and the float16 /
 * bfloat16 conversions.
 *
 * Golden data: tests/fixtures/safetensors/tiny.safetensors, written by
 * tools/make-safetensors-fixture.py in the reference implementation's layout
 * (its F16/BF16 bytes checked against PyTorch when the script ran), and byte
 * strings from the reference implementation's own unit tests
 * (safetensors/src/tensor.rs: test_serialization, test_empty,
 * test_serialization_forced_alignement). Every corrupted file below is built
 * in a temporary folder from a header text or by patching valid bytes.
 */
#include "finetune/qt_finetune.h"
#include "qt_test.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define COUNT_OF(array) (sizeof(array) / sizeof((array)[0]))
#define FIXTURE_DIR QT_SOURCE_DIR "/tests/fixtures/safetensors"

/* ------------------------------------------------------------------------- */
/* Helpers                                                                    */
/* ------------------------------------------------------------------------- */


static int write_bytes(const char *path, const void *data, size_t size) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  int ok = fwrite(data, 1, size, f) == size;
  return (fclose(f) == 0 && ok) ? 0 : -1;
}

/* Reads a whole file into a malloc'ed buffer (NULL on failure). */
static unsigned char *read_bytes(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long length = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *data = malloc(length > 0 ? (size_t)length : 1);
  if (data && fread(data, 1, (size_t)length, f) != (size_t)length) {
    free(data);
    data = NULL;
  }
  fclose(f);
  *size = (size_t)length;
  return data;
}

/* Writes a safetensors file from a header text (padded with spaces to a
 * multiple of 8, as the reference does) and `data_size` data bytes. */
static const char *make_file(const char *name, const char *header, size_t data_size) {
  static char path[512];
  if (!qt_test_temp_path(name, path, sizeof path)) return NULL;
  size_t length = strlen(header);
  size_t padded = (length + 7) / 8 * 8;
  size_t total = 8 + padded + data_size;
  unsigned char *bytes = calloc(1, total);
  for (int i = 0; i < 8; i++) bytes[i] = (unsigned char)((uint64_t)padded >> (8 * i));
  memcpy(bytes + 8, header, length);
  memset(bytes + 8 + length, ' ', padded - length);
  for (size_t i = 0; i < data_size; i++) bytes[8 + padded + i] = (unsigned char)i;
  int rc = write_bytes(path, bytes, total);
  free(bytes);
  return rc == 0 ? path : NULL;
}

/* Opening path must fail with `code` and a message holding every one of the
 * NULL-terminated fragments (the path is always checked). */
static void expect_open_error(const char *path, int code, const char *fragment,
                              const char *fragment2) {
  CU_ASSERT_PTR_NOT_NULL_FATAL(path);
  qt_safetensors_t *st = (qt_safetensors_t *)&st; /* must be reset to NULL */
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_safetensors_open(path, &st, &err);
  CU_ASSERT_EQUAL(rc, code);
  CU_ASSERT_EQUAL(err.code, code);
  CU_ASSERT_PTR_NULL(st);
  const char *fragments[] = {path, fragment, fragment2};
  for (size_t i = 0; i < COUNT_OF(fragments); i++) {
    if (fragments[i] && !strstr(err.msg, fragments[i])) {
      fprintf(stderr, "\n  message '%s' lacks '%s'\n", err.msg, fragments[i]);
      CU_FAIL("error message");
    }
  }
}

/* Expects a corrupted header to be refused with QT_EFORMAT. */
static void expect_bad_header(const char *header, size_t data_size, const char *fragment,
                              const char *fragment2) {
  expect_open_error(make_file("bad.safetensors", header, data_size), QT_EFORMAT, fragment,
                    fragment2);
}

static qt_safetensors_t *open_fixture(const char *name) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", FIXTURE_DIR, name);
  qt_safetensors_t *st = NULL;
  qt_err err;
  int rc = qt_safetensors_open(path, &st, &err);
  if (rc != 0) fprintf(stderr, "\n  %s\n", qt_err_message(&err));
  CU_ASSERT_EQUAL(rc, 0);
  return st;
}

static uint32_t bits_of(float x) {
  uint32_t b;
  memcpy(&b, &x, sizeof b);
  return b;
}

static float float_of(uint32_t b) {
  float x;
  memcpy(&x, &b, sizeof x);
  return x;
}

/* Same float, bit for bit (so -0 differs from 0; NaNs are compared as NaN). */
static int same_float(float a, float b) {
  if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
  return bits_of(a) == bits_of(b);
}

/* ------------------------------------------------------------------------- */
/* Element types and conversions                                              */
/* ------------------------------------------------------------------------- */

static void test_dtype_table(void) {
  const struct {
    const char *name;
    size_t size;
  } expected[] = {{"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
                  {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
                  {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8}};
  CU_ASSERT_EQUAL(COUNT_OF(expected), QT_DTYPE_COUNT);
  for (int d = 0; d < QT_DTYPE_COUNT; d++) {
    qt_dtype parsed;
    CU_ASSERT_STRING_EQUAL(qt_dtype_name((qt_dtype)d), expected[d].name);
    CU_ASSERT_EQUAL(qt_dtype_size((qt_dtype)d), expected[d].size);
    CU_ASSERT_EQUAL(qt_dtype_parse(expected[d].name, &parsed), 0);
    CU_ASSERT_EQUAL((int)parsed, d);
  }
  qt_dtype parsed;
  CU_ASSERT_EQUAL(qt_dtype_parse("f32", &parsed), QT_EINVAL); /* names are case-sensitive */
  CU_ASSERT_EQUAL(qt_dtype_parse("F4", &parsed), QT_EINVAL);
  CU_ASSERT_STRING_EQUAL(qt_dtype_name(QT_DTYPE_COUNT), "unknown");
  CU_ASSERT_EQUAL(qt_dtype_size(QT_DTYPE_COUNT), 0);
}

/* Hand-checked values: 1.0 = 0x3c00, the largest half 65504 = 0x7bff, the
 * smallest subnormal 2^-24 = 0x0001, the smallest normal 2^-14 = 0x0400. */
static void test_f16_known_values(void) {
  const struct {
    uint16_t bits;
    float value;
  } cases[] = {{0x3c00, 1.0f},
               {0xc000, -2.0f},
               {0x7bff, 65504.0f},
               {0x0001, 0x1p-24f},
               {0x03ff, 1023 * 0x1p-24f},
               {0x0400, 0x1p-14f},
               {0x3555, 0.333251953125f},
               {0x8000, -0.0f},
               {0x7c00, INFINITY},
               {0xfc00, -INFINITY}};
  for (size_t i = 0; i < COUNT_OF(cases); i++) {
    CU_ASSERT(same_float(qt_f16_to_f32(cases[i].bits), cases[i].value));
    CU_ASSERT_EQUAL(qt_f32_to_f16(cases[i].value), cases[i].bits);
  }
  CU_ASSERT(isnan(qt_f16_to_f32(0x7e00)));
  CU_ASSERT_EQUAL(qt_f32_to_f16(NAN), 0x7e00);
  CU_ASSERT_EQUAL(qt_f32_to_f16(-NAN) & 0x8000, 0x8000); /* sign kept */
  /* A signalling NaN with only low payload bits stays a NaN. */
  CU_ASSERT(isnan(qt_f16_to_f32(qt_f32_to_f16(float_of(0x7f800001u)))));
  /* Overflow: 65519.99 rounds down to 65504, 65520 (the midpoint to 2^16) up
   * to infinity, 1e10 to infinity; underflow: 2^-26 to zero. */
  CU_ASSERT_EQUAL(qt_f32_to_f16(65519.99f), 0x7bff);
  CU_ASSERT_EQUAL(qt_f32_to_f16(65520.0f), 0x7c00);
  CU_ASSERT_EQUAL(qt_f32_to_f16(-1e10f), 0xfc00);
  CU_ASSERT_EQUAL(qt_f32_to_f16(0x1p-26f), 0x0000);
  CU_ASSERT_EQUAL(qt_f32_to_f16(-0x1p-26f), 0x8000);
  CU_ASSERT_EQUAL(qt_f32_to_f16(float_of(1)), 0x0000); /* float32 subnormal */
}

/* Every one of the 65536 half values: converting to float32 and back gives
 * the same bits, and the float32 midpoint between two neighbouring halves
 * rounds to the even one, while one float32 ulp either side of it rounds to
 * the nearer one. This covers subnormals, the normal range and overflow. */
static void test_f16_exhaustive_rounding(void) {
  int failures = 0;
  for (uint32_t h = 0; h < 0x10000; h++) {
    uint16_t bits = (uint16_t)h;
    float value = qt_f16_to_f32(bits);
    if ((bits & 0x7fff) > 0x7c00) {
      failures += !isnan(value) || (qt_f32_to_f16(value) & 0x7fff) <= 0x7c00;
      continue;
    }
    failures += qt_f32_to_f16(value) != bits;
    if ((bits & 0x7fff) >= 0x7bff) continue; /* no finite neighbour above */
    uint16_t next = (uint16_t)(bits + 1);    /* next magnitude, same sign */
    float upper = qt_f16_to_f32(next);
    /* The midpoint is exact in float32: halves have 11 significant bits. */
    float middle = (float)(((double)value + (double)upper) / 2.0);
    uint16_t even = (bits & 1) ? next : bits;
    failures += qt_f32_to_f16(middle) != even;
    failures += qt_f32_to_f16(nextafterf(middle, 0.0f)) != bits;
    failures +=
        qt_f32_to_f16(nextafterf(middle, value > 0 || upper > 0 ? INFINITY : -INFINITY)) != next;
  }
  /* The largest half and infinity: 65520 ties away from 65504 (odd) to
   * infinity; just below stays finite. */
  failures += qt_f32_to_f16(nextafterf(65520.0f, 0.0f)) != 0x7bff;
  CU_ASSERT_EQUAL(failures, 0);
}

static void test_bf16_rounding(void) {
  /* Known values: truncation when the dropped half is below 0x8000, up
   * above, ties to even. */
  CU_ASSERT_EQUAL(qt_f32_to_bf16(1.0f), 0x3f80);
  CU_ASSERT_EQUAL(qt_f32_to_bf16(3.14159265f), 0x4049);           /* pi = 0x40490fdb */
  CU_ASSERT_EQUAL(qt_f32_to_bf16(float_of(0x3f808000u)), 0x3f80); /* tie, even below */
  CU_ASSERT_EQUAL(qt_f32_to_bf16(float_of(0x3f818000u)), 0x3f82); /* tie, even above */
  CU_ASSERT_EQUAL(qt_f32_to_bf16(float_of(0x3f808001u)), 0x3f81);
  CU_ASSERT_EQUAL(qt_f32_to_bf16(float_of(0x7f7fffffu)), 0x7f80); /* FLT_MAX overflows */
  CU_ASSERT_EQUAL(qt_f32_to_bf16(-INFINITY), 0xff80);
  CU_ASSERT_EQUAL(qt_f32_to_bf16(-0.0f), 0x8000);
  CU_ASSERT(isnan(qt_bf16_to_f32(qt_f32_to_bf16(NAN))));
  /* A NaN whose payload lies in the dropped bits must not become infinity. */
  CU_ASSERT_EQUAL(qt_f32_to_bf16(float_of(0x7f800001u)), 0x7fc0);
  CU_ASSERT_EQUAL(qt_f32_to_bf16(float_of(0xff800001u)), 0xffc0);

  /* Every bfloat16: exact round trip, and midpoint rounding as for F16. */
  int failures = 0;
  for (uint32_t h = 0; h < 0x10000; h++) {
    uint16_t bits = (uint16_t)h;
    float value = qt_bf16_to_f32(bits);
    if ((bits & 0x7fff) > 0x7f80) {
      failures += !isnan(value);
      continue;
    }
    failures += qt_f32_to_bf16(value) != bits;
    if ((bits & 0x7fff) >= 0x7f7f) continue;
    uint16_t next = (uint16_t)(bits + 1);
    uint32_t middle = ((uint32_t)bits << 16) | 0x8000u; /* exactly halfway */
    uint16_t even = (bits & 1) ? next : bits;
    failures += qt_f32_to_bf16(float_of(middle)) != even;
    failures += qt_f32_to_bf16(float_of(middle - 1)) != bits;
    failures += qt_f32_to_bf16(float_of(middle + 1)) != next;
  }
  CU_ASSERT_EQUAL(failures, 0);
}

/* ------------------------------------------------------------------------- */
/* Reading the golden fixture                                                 */
/* ------------------------------------------------------------------------- */

static void expect_values(const qt_safetensors_t *st, const char *name, const float *expected,
                          size_t n) {
  float got[16];
  qt_err err;
  CU_ASSERT_FATAL(n <= COUNT_OF(got));
  CU_ASSERT_EQUAL_FATAL(qt_safetensors_read_f32(st, name, got, n, &err), 0);
  for (size_t i = 0; i < n; i++) {
    if (!same_float(got[i], expected[i])) {
      fprintf(stderr, "\n  %s[%zu] = %.9g (0x%08x), expected %.9g\n", name, i, got[i],
              (unsigned)bits_of(got[i]), expected[i]);
      CU_FAIL("tensor value");
    }
  }
}

static void test_read_fixture(void) {
  qt_safetensors_t *st = open_fixture("tiny.safetensors");
  CU_ASSERT_PTR_NOT_NULL_FATAL(st);

  /* Names come in byte order. */
  const char *names[] = {"bf16.values", "empty",      "f16.ties", "f16.values",
                         "f32.scalar",  "f32.values", "i64.step", "u8.mask"};
  CU_ASSERT_EQUAL_FATAL(qt_safetensors_count(st), COUNT_OF(names));
  for (size_t i = 0; i < COUNT_OF(names); i++) {
    CU_ASSERT_STRING_EQUAL(qt_safetensors_name(st, i), names[i]);
    size_t index = 99;
    CU_ASSERT_EQUAL(qt_safetensors_find(st, names[i], &index), 0);
    CU_ASSERT_EQUAL(index, i);
  }
  CU_ASSERT_EQUAL(qt_safetensors_find(st, "missing", NULL), QT_ENOENT);

  /* Shapes, types and where the reference layout put the bytes (I64 first,
   * then F32 by name, BF16, F16, U8). */
  qt_safetensors_info info;
  qt_err err;
  CU_ASSERT_EQUAL(qt_safetensors_lookup(st, "f32.values", &info, &err), 0);
  CU_ASSERT_EQUAL(info.dtype, QT_DTYPE_F32);
  CU_ASSERT_EQUAL(info.ndim, 2);
  CU_ASSERT_EQUAL(info.shape[0], 2);
  CU_ASSERT_EQUAL(info.shape[1], 3);
  CU_ASSERT_EQUAL(info.numel, 6);
  CU_ASSERT_EQUAL(info.offset, 12);
  CU_ASSERT_EQUAL(info.nbytes, 24);
  CU_ASSERT_EQUAL(qt_safetensors_lookup(st, "f32.scalar", &info, &err), 0);
  CU_ASSERT_EQUAL(info.ndim, 0);
  CU_ASSERT_EQUAL(info.numel, 1);
  CU_ASSERT_EQUAL(qt_safetensors_lookup(st, "empty", &info, &err), 0);
  CU_ASSERT_EQUAL(info.numel, 0);
  CU_ASSERT_EQUAL(info.shape[0], 0);
  CU_ASSERT_EQUAL(info.shape[1], 4);
  CU_ASSERT_EQUAL(qt_safetensors_lookup(st, "i64.step", &info, &err), 0);
  CU_ASSERT_EQUAL(info.dtype, QT_DTYPE_I64);
  CU_ASSERT_EQUAL(info.offset, 0);
  CU_ASSERT_EQUAL(qt_safetensors_lookup(st, "nope", &info, &err), QT_ENOENT);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "no tensor 'nope'"));

  /* Values as the script wrote them. */
  const float f32_values[] = {0.0f, 1.0f, -2.5f, 3.25f, 0.1f, 1e30f};
  expect_values(st, "f32.values", f32_values, 6);
  const float scalar[] = {42.0f};
  expect_values(st, "f32.scalar", scalar, 1);
  expect_values(st, "empty", NULL, 0);
  /* F16 bits from CPython's struct 'e': 1/3 is 0x3555, 0.1 is 0x2e66. */
  const float f16_values[] = {
      1.0f,     -2.0f,     65504.0f, 0x1p-24f, 1023 * 0x1p-24f, 0x1p-14f,
      INFINITY, -INFINITY, NAN,      -0.0f,    0.333251953125f, 0.0999755859375f};
  expect_values(st, "f16.values", f16_values, 12);
  /* Ties to even: 1+2^-11 -> 1, 1+3*2^-11 -> 1+2^-9, 2^-25 -> 0, 3*2^-25 -> 2^-23. */
  const float f16_ties[] = {1.0f, 1.001953125f, 0.0f, 0x1p-23f};
  expect_values(st, "f16.ties", f16_ties, 4);
  /* BF16: 1+2^-8 ties to 1, 1+3*2^-8 to 1+2^-6, pi truncates to 3.140625,
   * 1e-40 (a float32 subnormal) becomes 2^-133 (bits 0x0001). */
  const float bf16_values[] = {1.0f, -3.0f, 1.0f, 1.015625f, 3.140625f, 0x1p-133f, INFINITY, NAN};
  expect_values(st, "bf16.values", bf16_values, 8);
  const float mask[] = {0.0f, 7.0f, 255.0f};
  expect_values(st, "u8.mask", mask, 3);

  int64_t step = 0;
  CU_ASSERT_EQUAL(qt_safetensors_read_raw(st, "i64.step", &step, sizeof step, &err), 0);
  CU_ASSERT_EQUAL(step, 123456789012LL);
  float step_f32;
  CU_ASSERT_EQUAL(qt_safetensors_read_f32(st, "i64.step", &step_f32, 1, &err), 0);
  CU_ASSERT_EQUAL(step_f32, (float)123456789012LL);

  /* The caller's size must match the file's. */
  float small[2];
  CU_ASSERT_EQUAL(qt_safetensors_read_f32(st, "f32.values", small, 2, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "has 6 elements, the destination 2"));
  CU_ASSERT_EQUAL(qt_safetensors_read_raw(st, "i64.step", small, 4, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_safetensors_read_f32(st, "nope", small, 2, &err), QT_ENOENT);

  /* Metadata, in key order. */
  CU_ASSERT_EQUAL(qt_safetensors_metadata_count(st), 2);
  const char *key, *value;
  qt_safetensors_metadata_at(st, 0, &key, &value);
  CU_ASSERT_STRING_EQUAL(key, "format");
  CU_ASSERT_STRING_EQUAL(value, "pt");
  CU_ASSERT_STRING_EQUAL(qt_safetensors_metadata_get(st, "producer"),
                         "tools/make-safetensors-fixture.py");
  CU_ASSERT_PTR_NULL(qt_safetensors_metadata_get(st, "absent"));
  qt_safetensors_free(st);
  qt_safetensors_free(NULL);
}

static void test_read_vit_fixture(void) {
  qt_safetensors_t *st = open_fixture("vit_tiny.safetensors");
  CU_ASSERT_PTR_NOT_NULL_FATAL(st);
  CU_ASSERT_EQUAL(qt_safetensors_count(st), 20);
  qt_safetensors_info info;
  CU_ASSERT_EQUAL(qt_safetensors_lookup(st, "patch_embed.proj.weight", &info, NULL), 0);
  CU_ASSERT_EQUAL(info.ndim, 4);
  CU_ASSERT_EQUAL(info.shape[0], 8);
  CU_ASSERT_EQUAL(info.shape[1], 3);
  CU_ASSERT_EQUAL(info.shape[3], 4);
  float norm[8];
  CU_ASSERT_EQUAL(qt_safetensors_read_f32(st, "blocks.0.norm1.weight", norm, 8, NULL), 0);
  for (int i = 0; i < 8; i++) CU_ASSERT_EQUAL(norm[i], 1.0f);
  qt_safetensors_free(st);
}

/* ------------------------------------------------------------------------- */
/* Writing                                                                    */
/* ------------------------------------------------------------------------- */

static void expect_file_bytes(const char *path, const void *expected, size_t size) {
  size_t got_size = 0;
  unsigned char *got = read_bytes(path, &got_size);
  CU_ASSERT_PTR_NOT_NULL_FATAL(got);
  CU_ASSERT_EQUAL(got_size, size);
  if (got_size == size) CU_ASSERT_EQUAL(memcmp(got, expected, size), 0);
  if (got_size != size || memcmp(got, expected, size) != 0)
    fprintf(stderr, "\n  %s: %zu bytes: %.*s\n", path, got_size, (int)got_size, (const char *)got);
  free(got);
}

/* The reference implementation's unit tests pin these byte strings. */
static void test_write_matches_reference_bytes(void) {
  char path[512];
  qt_err err;
  const float data[] = {0, 1, 2, 3, 4, 5};
  /* A float array as the reference writes it: little-endian float32. */
  const unsigned char data_bytes[] = {0, 0, 0,  0,  0, 0, 128, 63, 0, 0, 0,   64,
                                      0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64};

  /* test_serialization: "attn.0", F32 [1, 2, 3]; the header is 64 bytes,
   * already aligned. */
  const size_t shape3[] = {1, 2, 3};
  qt_safetensors_tensor attn = {"attn.0", QT_DTYPE_F32, 3, shape3, data, NULL};
  CU_ASSERT_PTR_NOT_NULL_FATAL(qt_test_temp_path("ref1.safetensors", path, sizeof path));
  CU_ASSERT_EQUAL(qt_safetensors_write(path, &attn, 1, NULL, 0, &err), 0);
  const char header1[] =
      "@\0\0\0\0\0\0\0"
      "{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],\"data_offsets\":[0,24]}}";
  unsigned char expected[256];
  memcpy(expected, header1, sizeof header1 - 1);
  memcpy(expected + sizeof header1 - 1, data_bytes, sizeof data_bytes);
  expect_file_bytes(path, expected, sizeof header1 - 1 + sizeof data_bytes);

  /* test_serialization_forced_alignement: "attn0", F32 [1, 1, 2, 3]; the
   * 65-byte header gets 7 spaces. */
  const size_t shape4[] = {1, 1, 2, 3};
  qt_safetensors_tensor attn0 = {"attn0", QT_DTYPE_F32, 4, shape4, data, NULL};
  CU_ASSERT_EQUAL(qt_safetensors_write(path, &attn0, 1, NULL, 0, &err), 0);
  const char header2[] =
      "H\0\0\0\0\0\0\0"
      "{\"attn0\":{\"dtype\":\"F32\",\"shape\":[1,1,2,3],\"data_offsets\":[0,24]}}"
      "       ";
  memcpy(expected, header2, sizeof header2 - 1);
  memcpy(expected + sizeof header2 - 1, data_bytes, sizeof data_bytes);
  expect_file_bytes(path, expected, sizeof header2 - 1 + sizeof data_bytes);

  /* test_empty: no tensors, without and with metadata. */
  CU_ASSERT_EQUAL(qt_safetensors_write(path, NULL, 0, NULL, 0, &err), 0);
  expect_file_bytes(path, "\x08\0\0\0\0\0\0\0{}      ", 16);
  const qt_safetensors_pair framework = {"framework", "pt"};
  CU_ASSERT_EQUAL(qt_safetensors_write(path, NULL, 0, &framework, 1, &err), 0);
  expect_file_bytes(path, "(\0\0\0\0\0\0\0{\"__metadata__\":{\"framework\":\"pt\"}}     ", 48);
  qt_safetensors_t *st = NULL;
  CU_ASSERT_EQUAL(qt_safetensors_open(path, &st, &err), 0);
  CU_ASSERT_EQUAL(qt_safetensors_count(st), 0);
  CU_ASSERT_STRING_EQUAL(qt_safetensors_metadata_get(st, "framework"), "pt");
  qt_safetensors_free(st);
}

/* Reading the fixture and writing its tensors back (same dtypes, same
 * metadata) reproduces the fixture byte for byte: qtune's writer and the
 * reference layout agree on order, offsets, JSON, padding and conversions. */
static void test_rewrite_fixture_is_identical(void) {
  qt_safetensors_t *st = open_fixture("tiny.safetensors");
  CU_ASSERT_PTR_NOT_NULL_FATAL(st);
  size_t n = qt_safetensors_count(st);
  qt_safetensors_tensor tensors[16];
  float values[16][16];
  unsigned char raw[16][64];
  qt_err err;
  for (size_t i = 0; i < n; i++) {
    qt_safetensors_info info;
    qt_safetensors_info_at(st, i, &info);
    tensors[i] = (qt_safetensors_tensor){info.name, info.dtype, info.ndim, info.shape, NULL, NULL};
    if (info.dtype == QT_DTYPE_F32 || info.dtype == QT_DTYPE_F16 || info.dtype == QT_DTYPE_BF16) {
      CU_ASSERT_EQUAL(qt_safetensors_read_f32(st, info.name, values[i], info.numel, &err), 0);
      tensors[i].data = values[i];
    } else {
      CU_ASSERT_EQUAL(qt_safetensors_read_raw(st, info.name, raw[i], info.nbytes, &err), 0);
      tensors[i].raw = raw[i];
    }
  }
  qt_safetensors_pair metadata[4];
  size_t n_metadata = qt_safetensors_metadata_count(st);
  /* Given in reverse: the writer sorts the keys. */
  for (size_t i = 0; i < n_metadata; i++)
    qt_safetensors_metadata_at(st, n_metadata - 1 - i, &metadata[i].key, &metadata[i].value);

  char path[512];
  CU_ASSERT_PTR_NOT_NULL_FATAL(qt_test_temp_path("rewrite.safetensors", path, sizeof path));
  int rc = qt_safetensors_write(path, tensors, n, metadata, n_metadata, &err);
  if (rc != 0) fprintf(stderr, "\n  %s\n", err.msg);
  CU_ASSERT_EQUAL(rc, 0);
  size_t size = 0;
  unsigned char *golden = read_bytes(FIXTURE_DIR "/tiny.safetensors", &size);
  CU_ASSERT_PTR_NOT_NULL_FATAL(golden);
  expect_file_bytes(path, golden, size);
  free(golden);
  qt_safetensors_free(st);
}

/* Larger than the conversion chunk, in every float target type. */
static void test_write_read_round_trip(void) {
  enum { N = 7 * 1429 }; /* 10003: more than two conversion chunks */
  static float data[N], back[N];
  for (size_t i = 0; i < N; i++) data[i] = (float)sin((double)i * 0.37) * (float)(1 + i % 97);
  const size_t shape[] = {7, 1429, 1};
  const size_t scalar_shape[] = {0};
  qt_safetensors_tensor tensors[] = {
      {"weights.bf16", QT_DTYPE_BF16, 3, shape, data, NULL},
      {"weights.f16", QT_DTYPE_F16, 3, shape, data, NULL},
      {"weights.f32", QT_DTYPE_F32, 3, shape, data, NULL},
      {"weights.f64", QT_DTYPE_F64, 1, (const size_t[]){N}, data, NULL},
      {"zero", QT_DTYPE_F32, 1, scalar_shape, NULL, NULL},
  };
  const qt_safetensors_pair metadata[] = {{"epoch", "3"}, {"note", "caf\xc3\xa9 \"quoted\"\n"}};
  char path[512];
  qt_err err;
  CU_ASSERT_PTR_NOT_NULL_FATAL(qt_test_temp_path("round.safetensors", path, sizeof path));
  CU_ASSERT_EQUAL_FATAL(qt_safetensors_write(path, tensors, COUNT_OF(tensors), metadata, 2, &err),
                        0);

  qt_safetensors_t *st = NULL;
  CU_ASSERT_EQUAL_FATAL(qt_safetensors_open(path, &st, &err), 0);
  CU_ASSERT_EQUAL(qt_safetensors_count(st), COUNT_OF(tensors));
  CU_ASSERT_STRING_EQUAL(qt_safetensors_metadata_get(st, "note"), "caf\xc3\xa9 \"quoted\"\n");
  int mismatches = 0;
  CU_ASSERT_EQUAL(qt_safetensors_read_f32(st, "weights.f32", back, N, &err), 0);
  for (size_t i = 0; i < N; i++) mismatches += !same_float(back[i], data[i]);
  CU_ASSERT_EQUAL(qt_safetensors_read_f32(st, "weights.f64", back, N, &err), 0);
  for (size_t i = 0; i < N; i++) mismatches += !same_float(back[i], data[i]);
  CU_ASSERT_EQUAL(qt_safetensors_read_f32(st, "weights.bf16", back, N, &err), 0);
  for (size_t i = 0; i < N; i++)
    mismatches += !same_float(back[i], qt_bf16_to_f32(qt_f32_to_bf16(data[i])));
  CU_ASSERT_EQUAL(qt_safetensors_read_f32(st, "weights.f16", back, N, &err), 0);
  for (size_t i = 0; i < N; i++) {
    mismatches += !same_float(back[i], qt_f16_to_f32(qt_f32_to_f16(data[i])));
    /* Half precision keeps 11 significant bits: relative error <= 2^-11. */
    mismatches += fabsf(back[i] - data[i]) > fabsf(data[i]) * 0x1p-11f;
  }
  CU_ASSERT_EQUAL(mismatches, 0);
  qt_safetensors_info info;
  CU_ASSERT_EQUAL(qt_safetensors_lookup(st, "weights.f16", &info, &err), 0);
  CU_ASSERT_EQUAL(info.shape[1], 1429);
  CU_ASSERT_EQUAL(info.nbytes, 2 * N);
  qt_safetensors_free(st);
}

static void test_write_argument_errors(void) {
  char path[512];
  qt_err err;
  float one = 1.0f;
  const size_t shape[] = {1};
  const size_t huge[] = {1u << 21, 1u << 21};
  CU_ASSERT_PTR_NOT_NULL_FATAL(qt_test_temp_path("never.safetensors", path, sizeof path));
  const struct {
    qt_safetensors_tensor tensors[2];
    size_t n;
    const char *message;
  } cases[] = {
      {{{"a", QT_DTYPE_F32, 1, shape, &one, NULL}, {"a", QT_DTYPE_F16, 1, shape, &one, NULL}},
       2,
       "tensor name 'a' is given twice"},
      {{{"", QT_DTYPE_F32, 1, shape, &one, NULL}}, 1, "non-empty"},
      {{{"__metadata__", QT_DTYPE_F32, 1, shape, &one, NULL}}, 1, "__metadata__"},
      {{{"step", QT_DTYPE_I64, 1, shape, &one, NULL}}, 1, "not I64 (pass raw bytes instead)"},
      {{{"a", QT_DTYPE_F32, 1, shape, NULL, NULL}}, 1, "tensor 'a': no data"},
      {{{"a", QT_DTYPE_F32, 2, huge, &one, NULL}}, 1, "more than 2^40 elements"},
      {{{"a", QT_DTYPE_F32, QT_SAFETENSORS_MAX_DIMS + 1, shape, &one, NULL}}, 1, "dimensions"},
  };
  for (size_t i = 0; i < COUNT_OF(cases); i++) {
    qt_err_clear(&err);
    CU_ASSERT_EQUAL(qt_safetensors_write(path, cases[i].tensors, cases[i].n, NULL, 0, &err),
                    QT_EINVAL);
    if (!strstr(err.msg, cases[i].message)) {
      fprintf(stderr, "\n  case %zu: '%s' lacks '%s'\n", i, err.msg, cases[i].message);
      CU_FAIL("message");
    }
    CU_ASSERT_EQUAL(access(path, F_OK), -1); /* nothing written */
  }
  const qt_safetensors_pair twice[] = {{"k", "1"}, {"k", "2"}};
  CU_ASSERT_EQUAL(qt_safetensors_write(path, NULL, 0, twice, 2, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "metadata key 'k' is given twice"));
  CU_ASSERT_EQUAL(access(path, F_OK), -1);
}

/* Counts the entries of the temporary folder whose name contains `part`. */
static int count_files_with(const char *part) {
  DIR *dir = opendir(qt_test_temp_dir());
  struct dirent *entry;
  int count = 0;
  while (dir && (entry = readdir(dir)) != NULL) count += strstr(entry->d_name, part) != NULL;
  if (dir) closedir(dir);
  return count;
}

/* A write that fails half-way leaves the previous file untouched and no
 * temporary file behind. The failure is real: a child process limits the
 * size of files it may write (RLIMIT_FSIZE), so write() fails with EFBIG
 * after the first kilobytes, as it would on a full disk. */
static void test_failed_write_keeps_old_file(void) {
  char path[512];
  qt_err err;
  CU_ASSERT_PTR_NOT_NULL_FATAL(qt_test_temp_path("keep.safetensors", path, sizeof path));
  float small[4] = {1, 2, 3, 4};
  const size_t shape[] = {4};
  qt_safetensors_tensor old_tensor = {"old", QT_DTYPE_F32, 1, shape, small, NULL};
  CU_ASSERT_EQUAL_FATAL(qt_safetensors_write(path, &old_tensor, 1, NULL, 0, &err), 0);
  size_t old_size = 0;
  unsigned char *old_bytes = read_bytes(path, &old_size);
  CU_ASSERT_PTR_NOT_NULL_FATAL(old_bytes);

  fflush(NULL);
  pid_t child = fork();
  CU_ASSERT_FATAL(child >= 0);
  if (child == 0) {
    enum { N = 1 << 18 };
    static float big[N];
    const size_t big_shape[] = {N};
    qt_safetensors_tensor tensor = {"new", QT_DTYPE_F32, 1, big_shape, big, NULL};
    struct rlimit limit = {8192, 8192};
    signal(SIGXFSZ, SIG_IGN);
    if (setrlimit(RLIMIT_FSIZE, &limit) != 0) _exit(2);
    qt_err child_err;
    int rc = qt_safetensors_write(path, &tensor, 1, NULL, 0, &child_err);
    int ok =
        rc == QT_EIO && strstr(child_err.msg, path) && strstr(child_err.msg, "was not changed");
    if (!ok) fprintf(stderr, "\n  child: rc %d: %s\n", rc, child_err.msg);
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  CU_ASSERT_EQUAL(waitpid(child, &status, 0), child);
  CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  expect_file_bytes(path, old_bytes, old_size);
  CU_ASSERT_EQUAL(count_files_with(".tmp."), 0);
  free(old_bytes);

  /* The rename itself failing (the destination is a folder) also cleans up. */
  char folder[512];
  CU_ASSERT_PTR_NOT_NULL_FATAL(qt_test_temp_path("a-folder", folder, sizeof folder));
  CU_ASSERT_EQUAL_FATAL(mkdir(folder, 0700), 0);
  CU_ASSERT_EQUAL(qt_safetensors_write(folder, &old_tensor, 1, NULL, 0, &err), QT_EIO);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "cannot rename"));
  CU_ASSERT_EQUAL(count_files_with(".tmp."), 0);
  /* A folder that does not exist. */
  CU_ASSERT_EQUAL(
      qt_safetensors_write("/nonexistent-qtune-dir/x.safetensors", &old_tensor, 1, NULL, 0, &err),
      QT_ENOENT);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "/nonexistent-qtune-dir/x.safetensors"));
}

/* A full disk is QT_ENOSPC: /dev/full fails every write with ENOSPC. */
static void test_disk_full_is_enospc(void) {
  int fd = open("/dev/full", O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    fprintf(stderr, "note: /dev/full is absent; the ENOSPC check is skipped\n");
    return;
  }
  float data[4] = {1, 2, 3, 4};
  const size_t shape[] = {4};
  qt_safetensors_tensor tensor = {"w", QT_DTYPE_BF16, 1, shape, data, NULL};
  qt_err err;
  CU_ASSERT_EQUAL(qt_safetensors_write_fd(fd, "/dev/full", &tensor, 1, NULL, 0, &err), QT_ENOSPC);
  CU_ASSERT_EQUAL(err.code, QT_ENOSPC);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "/dev/full"));
  close(fd);
}

/* ------------------------------------------------------------------------- */
/* Corrupted files                                                            */
/* ------------------------------------------------------------------------- */

#define T24 "{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}"

static void test_bad_prefix_and_header(void) {
  char path[512];
  /* Shorter than the 8-byte length. */
  CU_ASSERT_PTR_NOT_NULL_FATAL(qt_test_temp_path("short.safetensors", path, sizeof path));
  CU_ASSERT_EQUAL(write_bytes(path, "\x02\0\0", 3), 0);
  expect_open_error(path, QT_EFORMAT, "too short", NULL);
  /* A header length larger than the file, and one over 100 MB. */
  CU_ASSERT_EQUAL(write_bytes(path, "\x40\0\0\0\0\0\0\0{}", 10), 0);
  expect_open_error(path, QT_EFORMAT, "header length 64 is larger than the 2 bytes", NULL);
  CU_ASSERT_EQUAL(write_bytes(path, "\x00\xe1\xf5\x05\x01\0\0\0{}", 10), 0);
  expect_open_error(path, QT_EFORMAT, "over the 100 MB limit", NULL);
  CU_ASSERT_EQUAL(write_bytes(path, "\xff\xff\xff\xff\xff\xff\xff\xff{}", 10), 0);
  expect_open_error(path, QT_EFORMAT, "over the 100 MB limit", NULL);
  /* Not JSON, not an object, invalid UTF-8, trailing garbage. */
  expect_bad_header("{\"w\":", 0, "header is not valid JSON", NULL);
  expect_bad_header("[1, 2]", 0, "header is not a JSON object", NULL);
  expect_bad_header("{\"w\xff\":" T24 "}", 24, "not valid JSON", NULL);
  expect_bad_header("{} x", 0, "not valid JSON", NULL);
  /* A name given twice (JSON_REJECT_DUPLICATES). */
  expect_bad_header("{\"w\":" T24 ",\"w\":" T24 "}", 24, "duplicate", NULL);
  /* Missing files. */
  expect_open_error("/nonexistent/none.safetensors", QT_ENOENT, NULL, NULL);
  expect_open_error(qt_test_temp_dir(), QT_EIO, "not a regular file", NULL);
}

static void test_bad_tensor_entries(void) {
  expect_bad_header("{\"w\":[1]}", 0, "tensor 'w'", "not an object");
  expect_bad_header("{\"w\":{\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24, "tensor 'w'",
                    "missing key 'dtype'");
  expect_bad_header("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,24]}}", 24, "tensor 'w'",
                    "missing key 'shape'");
  expect_bad_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3]}}", 24, "tensor 'w'",
                    "missing key 'data_offsets'");
  expect_bad_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24],\"x\":1}}",
                    24, "tensor 'w'", "unknown key 'x'");
  expect_bad_header("{\"w\":{\"dtype\":\"F31\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24,
                    "tensor 'w'", "unknown dtype 'F31'");
  expect_bad_header("{\"w\":{\"dtype\":3,\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24,
                    "tensor 'w'", "dtype is not a string");
  /* Shapes: negative, fractional, not a list, too many elements (the
   * product would also overflow 64 bits), too many dimensions. */
  expect_bad_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[-2,3],\"data_offsets\":[0,24]}}", 24,
                    "tensor 'w'", "shape[0] is not a whole number");
  expect_bad_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3.0],\"data_offsets\":[0,24]}}", 24,
                    "tensor 'w'", "shape[1] is not a whole number");
  expect_bad_header("{\"w\":{\"dtype\":\"F32\",\"shape\":6,\"data_offsets\":[0,24]}}", 24,
                    "tensor 'w'", "shape is not a list");
  expect_bad_header(
      "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
      "\"data_offsets\":[0,24]}}",
      24, "tensor 'w'", "more than 2^40 elements");
  expect_bad_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[1099511627777],\"data_offsets\":[0,24]}}",
                    24, "tensor 'w'", "more than 2^40 elements");
  expect_bad_header(
      "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"
      "\"data_offsets\":[0,4]}}",
      4, "tensor 'w'", "17 dimensions");
  /* Offsets: not two whole numbers, end before begin, past the end, a size
   * that does not match the shape. */
  expect_bad_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0]}}", 24,
                    "tensor 'w'", "not a list of two whole numbers");
  expect_bad_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[-8,16]}}", 24,
                    "tensor 'w'", "not a list of two whole numbers");
  expect_bad_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[24,0]}}", 24,
                    "tensor 'w'", "end before they begin");
  expect_bad_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,1000]}}", 24,
                    "tensor 'w'", "reach past the end of the data (24 bytes");
  expect_bad_header("{\"w\":{\"dtype\":\"F16\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24,
                    "tensor 'w'", "span 24 bytes but 6 elements of F16 take 12");
  /* Metadata must be an object of strings. */
  expect_bad_header("{\"__metadata__\":{\"epoch\":3},\"w\":" T24 "}", 24,
                    "\"__metadata__\" value of "
                    "'epoch' is not a string",
                    NULL);
  expect_bad_header("{\"__metadata__\":[\"a\"]}", 0, "\"__metadata__\" must be an object", NULL);
}

static void test_bad_layout(void) {
  /* Overlap: b starts inside a. */
  expect_bad_header(
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
      "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
      24, "tensor 'b'", "overlap tensor 'a'");
  /* Two tensors on the same bytes. */
  expect_bad_header(
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
      8, "overlap tensor", NULL);
  /* A gap between two tensors, and a gap at the start. */
  expect_bad_header(
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[16,24]}}",
      24, "tensor 'b'", "bytes [8, 16) before it belong to no tensor");
  expect_bad_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16,
                    "tensor 'a'", "bytes [0, 8) before it belong to no tensor");
  /* Bytes after the last tensor. */
  expect_bad_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12,
                    "the last 4 bytes of the data belong to no tensor", NULL);
  /* Zero-size tensors may sit anywhere in the sequence. */
  const char *path = make_file("zero.safetensors",
                               "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                               "\"z\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[8,8]},"
                               "\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[8,11]}}",
                               11);
  qt_safetensors_t *st = NULL;
  qt_err err;
  CU_ASSERT_EQUAL(qt_safetensors_open(path, &st, &err), 0);
  CU_ASSERT_EQUAL(qt_safetensors_count(st), 3);
  qt_safetensors_free(st);
}

/* The golden file cut short, and a byte of its header changed. */
static void test_truncated_and_patched_fixture(void) {
  size_t size = 0;
  unsigned char *bytes = read_bytes(FIXTURE_DIR "/tiny.safetensors", &size);
  CU_ASSERT_PTR_NOT_NULL_FATAL(bytes);
  char path[512];
  CU_ASSERT_PTR_NOT_NULL_FATAL(qt_test_temp_path("cut.safetensors", path, sizeof path));
  /* Losing the last 3 bytes cuts into the U8 tensor, the last in the file. */
  CU_ASSERT_EQUAL(write_bytes(path, bytes, size - 3), 0);
  expect_open_error(path, QT_EFORMAT, "tensor 'u8.mask'", "is the file truncated?");
  /* Cut inside the header. */
  CU_ASSERT_EQUAL(write_bytes(path, bytes, 100), 0);
  expect_open_error(path, QT_EFORMAT, "larger than the 92 bytes that follow it", NULL);

  /* "F16" -> "F15" in the header. */
  unsigned char *copy = malloc(size);
  memcpy(copy, bytes, size);
  unsigned char *dtype = (unsigned char *)strstr((char *)copy + 8, "\"F16\"");
  CU_ASSERT_PTR_NOT_NULL_FATAL(dtype);
  dtype[3] = '5';
  CU_ASSERT_EQUAL(write_bytes(path, copy, size), 0);
  expect_open_error(path, QT_EFORMAT, "tensor 'f16.ties'", "unknown dtype 'F15'");
  /* A byte of the header length changed: the JSON is cut mid-way. */
  memcpy(copy, bytes, size);
  copy[0] = (unsigned char)(copy[0] - 8);
  CU_ASSERT_EQUAL(write_bytes(path, copy, size), 0);
  expect_open_error(path, QT_EFORMAT, "not valid JSON", NULL);
  free(copy);
  free(bytes);
}

static const qt_test_case cases[] = {
    {"dtype names and sizes", test_dtype_table},
    {"float16 known values, NaN, overflow", test_f16_known_values},
    {"float16: every value round-trips, midpoints tie to even", test_f16_exhaustive_rounding},
    {"bfloat16: round to nearest even, NaN kept", test_bf16_rounding},
    {"read the golden fixture", test_read_fixture},
    {"read the tiny ViT fixture", test_read_vit_fixture},
    {"writer matches the reference's unit-test bytes", test_write_matches_reference_bytes},
    {"rewriting the fixture reproduces it byte for byte", test_rewrite_fixture_is_identical},
    {"write then read: F32, F64, F16, BF16, chunked", test_write_read_round_trip},
    {"bad write arguments write nothing", test_write_argument_errors},
    {"a failed write keeps the old file, no temp left", test_failed_write_keeps_old_file},
    {"a full disk is QT_ENOSPC", test_disk_full_is_enospc},
    {"bad prefix and header JSON", test_bad_prefix_and_header},
    {"bad tensor entries", test_bad_tensor_entries},
    {"overlaps, gaps and uncovered bytes", test_bad_layout},
    {"truncated and patched fixture", test_truncated_and_patched_fixture},
    {NULL, NULL}};

QT_TEST_MAIN("safetensors", cases)

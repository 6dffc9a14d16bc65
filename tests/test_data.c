/*
 * test_data.c - the data pipeline of the finetune module: IDX, image folder
 * and CSV loading, splits and layouts, preprocessing, augmentation, Mixup /
 * CutMix and the batch iterator.
 *
 * Every input file is written by this program into a temporary folder:
 * IDX files (plain and gzip, through zlib), PNG files of every color type
 * (libpng), JPEG files (libjpeg), CSV text, and corrupted variants of each.
 * So no fixture files and no fixture script are needed. Expected values are
 * computed by hand in the comments (resampling weights, equalization tables,
 * point maps of the geometric ops), following Pillow's and torchvision's
 * definitions. Fashion-MNIST from Debian's dataset-fashion-mnist package
 * (tools/fetch-data) is checked only when it is installed.
 */
#include "finetune/qt_finetune.h"
#include "qt_test.h"

#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h>
#include <png.h>
#include <zlib.h>

#define COUNT_OF(array) (sizeof(array) / sizeof((array)[0]))
#define FASHION_DIR "/usr/share/datasets/fashion-mnist"

/* ------------------------------------------------------------------------- */
/* Temporary files                                                            */
/* ------------------------------------------------------------------------- */

/* A path inside the temporary folder (a ring of buffers). */
static const char *tmp_path(const char *name) {
  static char bufs[8][512];
  static int next;
  char *b = bufs[next++ % 8];
  return qt_test_temp_path(name, b, sizeof bufs[0]);
}

/* mkdir -p of a path inside the temporary folder. */
static void make_dirs(const char *name) {
  char path[512];
  snprintf(path, sizeof path, "%s", tmp_path(name));
  for (char *p = path + strlen(qt_test_temp_dir()) + 1; *p; p++) {
    if (*p == '/') {
      *p = '\0';
      mkdir(path, 0777);
      *p = '/';
    }
  }
  mkdir(path, 0777);
}

static void write_bytes(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  CU_ASSERT_EQUAL(fwrite(data, 1, n, f), n);
  fclose(f);
}

static void write_gz(const char *path, const void *data, size_t n) {
  gzFile f = gzopen(path, "wb");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  CU_ASSERT_EQUAL(gzwrite(f, data, (unsigned)n), (int)n);
  gzclose(f);
}

static unsigned char *read_bytes(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *data = malloc((size_t)size + 1);
  *n = fread(data, 1, (size_t)size, f);
  fclose(f);
  return data;
}

/* ------------------------------------------------------------------------- */
/* Image writers (libpng, libjpeg)                                            */
/* ------------------------------------------------------------------------- */

/* Writes a PNG; rows are given packed for the color type and bit depth
 * (16-bit samples big-endian). palette may be NULL. */
static void write_png(const char *path, size_t width, size_t height, int color_type, int bit_depth,
                      const uint8_t *data, const png_color *palette, int n_palette) {
  FILE *f = fopen(path, "wb");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    CU_FAIL("libpng write error");
    png_destroy_write_struct(&png, &info);
    fclose(f);
    return;
  }
  png_init_io(png, f);
  png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, bit_depth, color_type,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (palette) png_set_PLTE(png, info, palette, n_palette);
  png_write_info(png, info);
  size_t rowbytes = png_get_rowbytes(png, info);
  for (size_t y = 0; y < height; y++) png_write_row(png, data + y * rowbytes);
  png_write_end(png, NULL);
  png_destroy_write_struct(&png, &info);
  fclose(f);
}

static void write_jpeg(const char *path, size_t width, size_t height, int components,
                       const uint8_t *data) {
  FILE *f = fopen(path, "wb");
  CU_ASSERT_PTR_NOT_NULL_FATAL(f);
  struct jpeg_compress_struct cinfo;
  struct jpeg_error_mgr jerr;
  cinfo.err = jpeg_std_error(&jerr);
  jpeg_create_compress(&cinfo);
  jpeg_stdio_dest(&cinfo, f);
  cinfo.image_width = (JDIMENSION)width;
  cinfo.image_height = (JDIMENSION)height;
  cinfo.input_components = components;
  cinfo.in_color_space = components == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, 100, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = (JSAMPROW)(data + cinfo.next_scanline * width * (size_t)components);
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  fclose(f);
}

/* A solid-color RGB image (height, width, 3). */
static uint8_t *solid_rgb(size_t height, size_t width, uint8_t r, uint8_t g, uint8_t b) {
  uint8_t *p = malloc(height * width * 3);
  for (size_t i = 0; i < height * width; i++) {
    p[3 * i] = r;
    p[3 * i + 1] = g;
    p[3 * i + 2] = b;
  }
  return p;
}

/* ------------------------------------------------------------------------- */
/* Log capture                                                                */
/* ------------------------------------------------------------------------- */

static int warnings_seen;
static int skip_warnings_seen;
static char last_warning[1024];

static void capture_log(qt_log_level level, const char *message, void *user) {
  (void)user;
  if (level != QT_LOG_LEVEL_WARN) return;
  warnings_seen++;
  if (strncmp(message, "skipping ", 9) == 0) skip_warnings_seen++;
  snprintf(last_warning, sizeof last_warning, "%s", message);
}

static void capture_start(void) {
  warnings_seen = skip_warnings_seen = 0;
  last_warning[0] = '\0';
  qt_log_set_callback(capture_log, NULL);
}

static void capture_stop(void) {
  qt_log_set_callback(NULL, NULL);
}

/* ------------------------------------------------------------------------- */
/* IDX                                                                        */
/* ------------------------------------------------------------------------- */

/* An IDX image file body of n images (h, w): pixel (i, y, x) = 7i + 3y + x. */
static size_t idx_images(unsigned char *buf, uint32_t n, uint32_t h, uint32_t w) {
  unsigned char header[16] = {0, 0, 8, 3};
  uint32_t dims[3] = {n, h, w};
  for (int d = 0; d < 3; d++)
    for (int b = 0; b < 4; b++) header[4 + 4 * d + b] = (unsigned char)(dims[d] >> (24 - 8 * b));
  memcpy(buf, header, 16);
  size_t k = 16;
  for (uint32_t i = 0; i < n; i++)
    for (uint32_t y = 0; y < h; y++)
      for (uint32_t x = 0; x < w; x++) buf[k++] = (unsigned char)(7 * i + 3 * y + x);
  return k;
}

static size_t idx_labels(unsigned char *buf, const unsigned char *labels, uint32_t n) {
  unsigned char header[8] = {0,
                             0,
                             8,
                             1,
                             (unsigned char)(n >> 24),
                             (unsigned char)(n >> 16),
                             (unsigned char)(n >> 8),
                             (unsigned char)n};
  memcpy(buf, header, 8);
  memcpy(buf + 8, labels, n);
  return 8 + n;
}

static void test_idx_round_trip(void) {
  /* Loaders report each folder at info level; keep the test output short. */
  qt_log_set_level(QT_LOG_LEVEL_WARN);
  unsigned char images[16 + 5 * 3 * 4], labels[8 + 5];
  const unsigned char y[5] = {0, 1, 2, 1, 0};
  size_t ni = idx_images(images, 5, 3, 4), nl = idx_labels(labels, y, 5);
  /* Plain images with gzip labels, then the other way round. */
  for (int variant = 0; variant < 2; variant++) {
    const char *ip = tmp_path(variant ? "rt-images.gz" : "rt-images");
    const char *lp = tmp_path(variant ? "rt-labels" : "rt-labels.gz");
    if (variant) {
      write_gz(ip, images, ni);
      write_bytes(lp, labels, nl);
    } else {
      write_bytes(ip, images, ni);
      write_gz(lp, labels, nl);
    }
    qt_dataset *ds = NULL;
    qt_err err;
    CU_ASSERT_EQUAL_FATAL(qt_dataset_load_idx(ip, lp, NULL, 0, &ds, &err), 0);
    CU_ASSERT_EQUAL(ds->kind, QT_DATASET_KIND_IMAGE);
    CU_ASSERT_EQUAL(ds->n, 5);
    CU_ASSERT_EQUAL(ds->height, 3);
    CU_ASSERT_EQUAL(ds->width, 4);
    CU_ASSERT_EQUAL(ds->channels, 1);
    CU_ASSERT_EQUAL(ds->n_classes, 3);
    CU_ASSERT_STRING_EQUAL(ds->class_names[0], "0");
    CU_ASSERT_STRING_EQUAL(ds->class_names[2], "2");
    int pixels_ok = 1;
    for (size_t i = 0; i < 5; i++) {
      CU_ASSERT_EQUAL(ds->labels[i], y[i]);
      for (size_t r = 0; r < 3; r++)
        for (size_t x = 0; x < 4; x++)
          pixels_ok &= ds->images[(i * 3 + r) * 4 + x] == 7 * i + 3 * r + x;
    }
    CU_ASSERT_TRUE(pixels_ok);
    qt_dataset_free(ds);
  }
  /* Given class names are copied and bound the labels. */
  const char *names[3] = {"zero", "one", "two"};
  qt_dataset *ds = NULL;
  CU_ASSERT_EQUAL_FATAL(
      qt_dataset_load_idx(tmp_path("rt-images"), tmp_path("rt-labels.gz"), names, 3, &ds, NULL), 0);
  CU_ASSERT_STRING_EQUAL(ds->class_names[1], "one");
  qt_dataset_free(ds);
}

/* Loads (images, labels) and checks the code and that the message names
 * `who` and contains `phrase`. */
static void expect_idx_error(const char *images, const char *labels, int code, const char *who,
                             const char *phrase) {
  qt_dataset *ds = (qt_dataset *)1;
  qt_err err;
  qt_err_clear(&err);
  int rc = qt_dataset_load_idx(images, labels, NULL, 0, &ds, &err);
  CU_ASSERT_EQUAL(rc, code);
  CU_ASSERT_PTR_NULL(ds);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, who));
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, phrase));
  if (rc != code || !strstr(err.msg, phrase) || !strstr(err.msg, who))
    fprintf(stderr, "\n  got %d: %s (expected %d, '%s')\n", rc, err.msg, code, phrase);
}

static void test_idx_corruptions(void) {
  unsigned char images[16 + 4 * 2 * 2], labels[8 + 4], bad[64];
  const unsigned char y[4] = {0, 1, 1, 0};
  size_t ni = idx_images(images, 4, 2, 2), nl = idx_labels(labels, y, 4);
  const char *good_i = tmp_path("c-images"), *good_l = tmp_path("c-labels");
  write_bytes(good_i, images, ni);
  write_bytes(good_l, labels, nl);
  qt_dataset *ok = NULL;
  CU_ASSERT_EQUAL(qt_dataset_load_idx(good_i, good_l, NULL, 0, &ok, NULL), 0);
  qt_dataset_free(ok);

  const char *p = tmp_path("c-bad");
  /* Missing file. */
  expect_idx_error(tmp_path("c-missing"), good_l, QT_ENOENT, "c-missing", "");
  /* Shorter than the magic number. */
  write_bytes(p, images, 3);
  expect_idx_error(p, good_l, QT_EFORMAT, p, "shorter than an IDX header");
  /* Not IDX: nonzero leading bytes. */
  memcpy(bad, images, ni);
  bad[0] = 0x1F;
  write_bytes(p, bad, ni);
  expect_idx_error(p, good_l, QT_EFORMAT, p, "not an IDX file");
  /* Element type float (0x0D). */
  memcpy(bad, images, ni);
  bad[2] = 0x0D;
  write_bytes(p, bad, ni);
  expect_idx_error(p, good_l, QT_EFORMAT, p, "element type 0x0d");
  /* Labels given as the image file: wrong number of dimensions. */
  expect_idx_error(good_l, good_l, QT_EFORMAT, good_l, "1 dimension, expected 3");
  expect_idx_error(good_i, good_i, QT_EFORMAT, good_i, "3 dimensions, expected 1");
  /* Header cut inside the dimensions. */
  write_bytes(p, images, 10);
  expect_idx_error(p, good_l, QT_EFORMAT, p, "truncated in the header");
  /* A zero dimension. */
  memcpy(bad, images, ni);
  bad[8] = bad[9] = bad[10] = bad[11] = 0;
  write_bytes(p, bad, ni);
  expect_idx_error(p, good_l, QT_EFORMAT, p, "dimension 1 is 0");
  /* Truncated body, plain and gzip. */
  write_bytes(p, images, ni - 3);
  expect_idx_error(p, good_l, QT_EFORMAT, p, "truncated: expected 16 bytes of data, got 13");
  const char *pgz = tmp_path("c-bad.gz");
  write_gz(pgz, images, ni);
  size_t gz_n = 0;
  unsigned char *gz = read_bytes(pgz, &gz_n);
  CU_ASSERT_PTR_NOT_NULL_FATAL(gz);
  write_bytes(pgz, gz, gz_n - 12); /* the deflate stream ends early */
  expect_idx_error(pgz, good_l, QT_EFORMAT, pgz, "");
  qt_err err;
  qt_dataset *ds = NULL;
  CU_ASSERT_EQUAL(qt_dataset_load_idx(pgz, good_l, NULL, 0, &ds, &err), QT_EFORMAT);
  CU_ASSERT_TRUE(strstr(err.msg, "truncated") != NULL || strstr(err.msg, "corrupt") != NULL);
  /* Corrupt deflate data: the CRC or the stream fails. */
  gz[gz_n / 2] ^= 0xFF;
  gz[gz_n / 2 + 1] ^= 0x55;
  write_bytes(pgz, gz, gz_n);
  CU_ASSERT_EQUAL(qt_dataset_load_idx(pgz, good_l, NULL, 0, &ds, &err), QT_EFORMAT);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, pgz));
  free(gz);
  /* Trailing bytes. */
  memcpy(bad, images, ni);
  bad[ni] = 9;
  write_bytes(p, bad, ni + 1);
  expect_idx_error(p, good_l, QT_EFORMAT, p, "trailing bytes");
  /* Counts that disagree. */
  unsigned char labels5[8 + 5];
  const unsigned char y5[5] = {0, 1, 1, 0, 1};
  write_bytes(p, labels5, idx_labels(labels5, y5, 5));
  expect_idx_error(good_i, p, QT_ESCHEMA, good_i, "has 4 images but");
  /* One class only, and a class without samples. */
  const unsigned char one[4] = {1, 1, 1, 1};
  write_bytes(p, bad, idx_labels(bad, one, 4));
  expect_idx_error(good_i, p, QT_ESCHEMA, "", "class '0' (label 0) has no samples");
  const unsigned char zero[4] = {0, 0, 0, 0};
  write_bytes(p, bad, idx_labels(bad, zero, 4));
  expect_idx_error(good_i, p, QT_ESCHEMA, "", "1 class; a classification dataset needs at least 2");
  const unsigned char gap[4] = {0, 2, 2, 0};
  write_bytes(p, bad, idx_labels(bad, gap, 4));
  expect_idx_error(good_i, p, QT_ESCHEMA, "", "class '1' (label 1) has no samples");
  /* A label beyond the given class names. */
  const char *names[2] = {"a", "b"};
  const unsigned char big[4] = {0, 1, 5, 0};
  write_bytes(p, bad, idx_labels(bad, big, 4));
  CU_ASSERT_EQUAL(qt_dataset_load_idx(good_i, p, names, 2, &ds, &err), QT_ESCHEMA);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "label 5 of sample 2 is out of range"));
}

static void test_idx_fashion_mnist(void) {
  char images[512], labels[512];
  snprintf(images, sizeof images, "%s/train-images-idx3-ubyte.gz", FASHION_DIR);
  snprintf(labels, sizeof labels, "%s/train-labels-idx1-ubyte.gz", FASHION_DIR);
  if (access(images, R_OK) != 0 || access(labels, R_OK) != 0) {
    fprintf(stderr,
            "\n  note: %s is absent (Debian package dataset-fashion-mnist, "
            "tools/fetch-data); this check is skipped\n",
            FASHION_DIR);
    return;
  }
  qt_dataset *ds = NULL;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(
      qt_dataset_load_idx(images, labels, qt_data_fashion_mnist_class_names(), 10, &ds, &err), 0);
  CU_ASSERT_EQUAL(ds->n, 60000);
  CU_ASSERT_EQUAL(ds->height, 28);
  CU_ASSERT_EQUAL(ds->width, 28);
  CU_ASSERT_EQUAL(ds->n_classes, 10);
  size_t counts[10];
  qt_dataset_class_counts(ds, counts);
  for (int k = 0; k < 10; k++) CU_ASSERT_EQUAL(counts[k], 6000);
  CU_ASSERT_STRING_EQUAL(ds->class_names[9], "Ankle boot");
  qt_dataset_free(ds);

  /* The folder as a layout: train, t10k as test, validation carved. */
  qt_data_params p = qt_data_default_params();
  p.val_fraction = 0.1;
  qt_data_splits s;
  CU_ASSERT_EQUAL_FATAL(qt_data_load(FASHION_DIR, &p, &s, &err), 0);
  CU_ASSERT_EQUAL(s.given, QT_DATA_SPLIT_TRAIN | QT_DATA_SPLIT_TEST);
  CU_ASSERT_EQUAL(s.test->n, 10000);
  CU_ASSERT_EQUAL(s.val->n, 6000);
  CU_ASSERT_EQUAL(s.train->n, 54000);
  CU_ASSERT_STRING_EQUAL(s.train->class_names[0], "T-shirt/top");
  CU_ASSERT_STRING_EQUAL(s.test->class_names[0], "T-shirt/top");
  qt_data_splits_free(&s);
}

/* ------------------------------------------------------------------------- */
/* Image folders                                                              */
/* ------------------------------------------------------------------------- */

/* The pixels of the 4x4 fixtures: RGB value at (y, x). */
static void fixture_rgb(size_t y, size_t x, uint8_t out[3]) {
  out[0] = (uint8_t)(16 * y + x);
  out[1] = (uint8_t)(200 - 10 * x);
  out[2] = (uint8_t)(40 * y);
}

static const png_color fixture_palette[4] = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {10, 20, 30}};

/* root/cat: RGB, gray, RGBA, palette, 16-bit gray PNGs and a JPEG in a
 * subfolder; root/dog: an RGB JPEG, a gray JPEG, a corrupt PNG, a truncated
 * JPEG, a text file and a hidden PNG (both ignored). */
static const char *make_folder(const char *name) {
  char d[256];
  snprintf(d, sizeof d, "%s/cat/sub", name);
  make_dirs(d);
  snprintf(d, sizeof d, "%s/dog", name);
  make_dirs(d);
  char path[512];
  uint8_t rgb[4 * 4 * 3], gray[16], rgba[4 * 4 * 4], pal[16], g16[16 * 2];
  for (size_t y = 0; y < 4; y++)
    for (size_t x = 0; x < 4; x++) {
      size_t i = y * 4 + x;
      fixture_rgb(y, x, rgb + 3 * i);
      gray[i] = (uint8_t)(15 * i);
      memcpy(rgba + 4 * i, rgb + 3 * i, 3);
      rgba[4 * i + 3] = (uint8_t)(i * 17); /* alpha, dropped on load */
      pal[i] = (uint8_t)(i % 4);
      uint16_t v = (uint16_t)(gray[i] * 257); /* scales back to exactly gray[i] */
      g16[2 * i] = (uint8_t)(v >> 8);
      g16[2 * i + 1] = (uint8_t)v;
    }
  snprintf(path, sizeof path, "%s/%s/cat/a_rgb.png", qt_test_temp_dir(), name);
  write_png(path, 4, 4, PNG_COLOR_TYPE_RGB, 8, rgb, NULL, 0);
  snprintf(path, sizeof path, "%s/%s/cat/b_gray.png", qt_test_temp_dir(), name);
  write_png(path, 4, 4, PNG_COLOR_TYPE_GRAY, 8, gray, NULL, 0);
  snprintf(path, sizeof path, "%s/%s/cat/c_rgba.png", qt_test_temp_dir(), name);
  write_png(path, 4, 4, PNG_COLOR_TYPE_RGBA, 8, rgba, NULL, 0);
  snprintf(path, sizeof path, "%s/%s/cat/d_palette.PNG", qt_test_temp_dir(), name);
  /* 8-bit palette indices, one byte each. */
  write_png(path, 4, 4, PNG_COLOR_TYPE_PALETTE, 8, pal, fixture_palette, 4);
  snprintf(path, sizeof path, "%s/%s/cat/e_gray16.png", qt_test_temp_dir(), name);
  write_png(path, 4, 4, PNG_COLOR_TYPE_GRAY, 16, g16, NULL, 0);
  uint8_t *solid = solid_rgb(4, 4, 200, 40, 90);
  snprintf(path, sizeof path, "%s/%s/cat/sub/f.jpg", qt_test_temp_dir(), name);
  write_jpeg(path, 4, 4, 3, solid);
  free(solid);
  solid = solid_rgb(4, 4, 30, 160, 220);
  snprintf(path, sizeof path, "%s/%s/dog/a.jpeg", qt_test_temp_dir(), name);
  write_jpeg(path, 4, 4, 3, solid);
  uint8_t flat[16];
  memset(flat, 77, sizeof flat);
  snprintf(path, sizeof path, "%s/%s/dog/b_gray.jpg", qt_test_temp_dir(), name);
  write_jpeg(path, 4, 4, 1, flat);
  /* Truncated JPEG: the first half of a valid one. */
  uint8_t *big = solid_rgb(8, 8, 1, 2, 3);
  snprintf(path, sizeof path, "%s/%s/dog/c_truncated.jpg", qt_test_temp_dir(), name);
  write_jpeg(path, 8, 8, 3, big);
  free(big);
  size_t n = 0;
  unsigned char *bytes = read_bytes(path, &n);
  write_bytes(path, bytes, n / 2);
  free(bytes);
  /* Corrupt PNG: a valid signature and header, then garbage. */
  snprintf(path, sizeof path, "%s/%s/dog/d_corrupt.png", qt_test_temp_dir(), name);
  unsigned char garbage[64] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n',
                               0,    0,   0,   13,  'I',  'H',  'D',  'R'};
  for (size_t i = 16; i < sizeof garbage; i++) garbage[i] = (unsigned char)(i * 37);
  write_bytes(path, garbage, sizeof garbage);
  snprintf(path, sizeof path, "%s/%s/dog/notes.txt", qt_test_temp_dir(), name);
  write_bytes(path, "not an image", 12);
  snprintf(path, sizeof path, "%s/%s/dog/.hidden.png", qt_test_temp_dir(), name);
  write_bytes(path, "junk", 4);
  free(solid);
  return tmp_path(name);
}

static int near(int a, int b, int tol) {
  return abs(a - b) <= tol;
}

static void test_image_folder_decode(void) {
  const char *root = make_folder("folder");
  qt_image_folder_params p = qt_image_folder_default_params();
  p.threads = 3;
  qt_dataset *ds = NULL;
  qt_err err;
  capture_start();
  int rc = qt_dataset_load_image_folder(root, &p, &ds, &err);
  capture_stop();
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  /* Two files fail to decode: one warning each, then the summary. */
  CU_ASSERT_EQUAL(skip_warnings_seen, 2);
  CU_ASSERT_EQUAL(warnings_seen, 3);
  CU_ASSERT_PTR_NOT_NULL(strstr(last_warning, "2 files skipped"));
  CU_ASSERT_EQUAL(ds->n_skipped, 2);
  CU_ASSERT_EQUAL(ds->n, 8);
  CU_ASSERT_EQUAL(ds->n_classes, 2);
  CU_ASSERT_STRING_EQUAL(ds->class_names[0], "cat");
  CU_ASSERT_STRING_EQUAL(ds->class_names[1], "dog");
  CU_ASSERT_EQUAL(ds->height, 4);
  CU_ASSERT_EQUAL(ds->width, 4);
  CU_ASSERT_EQUAL(ds->channels, 3); /* auto: some files are in color */
  const int32_t expect_labels[8] = {0, 0, 0, 0, 0, 0, 1, 1};
  for (size_t i = 0; i < 8; i++) CU_ASSERT_EQUAL(ds->labels[i], expect_labels[i]);
  /* Sample order: cat/a_rgb, b_gray, c_rgba, d_palette, e_gray16, sub/f,
   * dog/a, dog/b_gray. */
  const uint8_t *img = ds->images;
  int exact = 1;
  for (size_t y = 0; y < 4; y++)
    for (size_t x = 0; x < 4; x++) {
      size_t i = y * 4 + x;
      uint8_t rgb[3];
      fixture_rgb(y, x, rgb);
      exact &= memcmp(img + 0 * 48 + 3 * i, rgb, 3) == 0;                     /* RGB */
      for (int c = 0; c < 3; c++) exact &= img[1 * 48 + 3 * i + c] == 15 * i; /* gray */
      exact &= memcmp(img + 2 * 48 + 3 * i, rgb, 3) == 0; /* RGBA, alpha dropped */
      const png_color *pc = &fixture_palette[i % 4];
      exact &= img[3 * 48 + 3 * i] == pc->red && img[3 * 48 + 3 * i + 1] == pc->green &&
               img[3 * 48 + 3 * i + 2] == pc->blue;                           /* palette */
      for (int c = 0; c < 3; c++) exact &= img[4 * 48 + 3 * i + c] == 15 * i; /* 16-bit */
    }
  CU_ASSERT_TRUE(exact);
  /* JPEG is lossy: solid colors come back within a few levels. */
  int close = 1;
  for (size_t i = 0; i < 16; i++) {
    close &= near(img[5 * 48 + 3 * i], 200, 3) && near(img[5 * 48 + 3 * i + 1], 40, 3) &&
             near(img[5 * 48 + 3 * i + 2], 90, 3);
    close &= near(img[6 * 48 + 3 * i], 30, 3) && near(img[6 * 48 + 3 * i + 1], 160, 3) &&
             near(img[6 * 48 + 3 * i + 2], 220, 3);
    for (int c = 0; c < 3; c++) close &= near(img[7 * 48 + 3 * i + c], 77, 1);
  }
  CU_ASSERT_TRUE(close);
  qt_dataset_free(ds);

  /* Asking for gray: PIL's luma of the RGB fixture, exactly. */
  p.channels = 1;
  p.threads = 1;
  capture_start();
  rc = qt_dataset_load_image_folder(root, &p, &ds, &err);
  capture_stop();
  CU_ASSERT_EQUAL_FATAL(rc, 0);
  CU_ASSERT_EQUAL(ds->channels, 1);
  exact = 1;
  for (size_t y = 0; y < 4; y++)
    for (size_t x = 0; x < 4; x++) {
      uint8_t rgb[3];
      fixture_rgb(y, x, rgb);
      unsigned luma = (rgb[0] * 19595u + rgb[1] * 38470u + rgb[2] * 7471u + 0x8000u) >> 16;
      exact &= ds->images[y * 4 + x] == luma;
      exact &= ds->images[16 + y * 4 + x] == 15 * (y * 4 + x);
    }
  CU_ASSERT_TRUE(exact);
  qt_dataset_free(ds);
}

static void test_image_load_errors(void) {
  make_folder("folder-e");
  qt_err err;
  uint8_t *pixels = NULL;
  size_t h, w, c;
  char path[512];
  snprintf(path, sizeof path, "%s/folder-e/dog/d_corrupt.png", qt_test_temp_dir());
  CU_ASSERT_EQUAL(qt_image_load(path, 0, &pixels, &h, &w, &c, &err), QT_EFORMAT);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, path));
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "PNG"));
  CU_ASSERT_PTR_NULL(pixels);
  snprintf(path, sizeof path, "%s/folder-e/dog/c_truncated.jpg", qt_test_temp_dir());
  CU_ASSERT_EQUAL(qt_image_load(path, 0, &pixels, &h, &w, &c, &err), QT_EFORMAT);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "truncated"));
  snprintf(path, sizeof path, "%s/folder-e/dog/notes.txt", qt_test_temp_dir());
  CU_ASSERT_EQUAL(qt_image_load(path, 0, &pixels, &h, &w, &c, &err), QT_EFORMAT);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "not a PNG or JPEG"));
  snprintf(path, sizeof path, "%s/folder-e/dog/none.png", qt_test_temp_dir());
  CU_ASSERT_EQUAL(qt_image_load(path, 0, &pixels, &h, &w, &c, &err), QT_ENOENT);
  /* The file's own channels: gray PNG gives 1, RGB 3. */
  snprintf(path, sizeof path, "%s/folder-e/cat/b_gray.png", qt_test_temp_dir());
  CU_ASSERT_EQUAL_FATAL(qt_image_load(path, 0, &pixels, &h, &w, &c, &err), 0);
  CU_ASSERT_EQUAL(c, 1);
  CU_ASSERT_EQUAL(pixels[5], 75);
  free(pixels);
  snprintf(path, sizeof path, "%s/folder-e/cat/a_rgb.png", qt_test_temp_dir());
  CU_ASSERT_EQUAL_FATAL(qt_image_load(path, 0, &pixels, &h, &w, &c, &err), 0);
  CU_ASSERT_EQUAL(c, 3);
  CU_ASSERT_EQUAL(h, 4);
  CU_ASSERT_EQUAL(w, 4);
  free(pixels);
}

static void test_image_folder_errors(void) {
  qt_dataset *ds = NULL;
  qt_err err;
  qt_image_folder_params p = qt_image_folder_default_params();
  CU_ASSERT_EQUAL(qt_dataset_load_image_folder(tmp_path("no-such"), &p, &ds, &err), QT_ENOENT);
  /* One class only. */
  make_dirs("one/only");
  uint8_t *img = solid_rgb(4, 4, 1, 2, 3);
  write_png(tmp_path("one/only/x.png"), 4, 4, PNG_COLOR_TYPE_RGB, 8, img, NULL, 0);
  CU_ASSERT_EQUAL(qt_dataset_load_image_folder(tmp_path("one"), &p, &ds, &err), QT_ESCHEMA);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "1 class folder"));
  CU_ASSERT_PTR_NULL(ds);
  /* An empty class. */
  make_dirs("empty/a");
  make_dirs("empty/b");
  write_png(tmp_path("empty/a/x.png"), 4, 4, PNG_COLOR_TYPE_RGB, 8, img, NULL, 0);
  write_bytes(tmp_path("empty/b/readme.txt"), "x", 1);
  CU_ASSERT_EQUAL(qt_dataset_load_image_folder(tmp_path("empty"), &p, &ds, &err), QT_ESCHEMA);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "class 'b' has no images"));
  /* A class whose only file is corrupt. */
  write_bytes(tmp_path("empty/b/bad.png"), "\x89PNG\r\n\x1a\nxx", 10);
  capture_start();
  CU_ASSERT_EQUAL(qt_dataset_load_image_folder(tmp_path("empty"), &p, &ds, &err), QT_ESCHEMA);
  capture_stop();
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "class 'b' has no decodable images"));
  CU_ASSERT_EQUAL(skip_warnings_seen, 1);
  /* A fixed class list rejects unknown folders. */
  const char *names[2] = {"a", "c"};
  p.class_names = names;
  p.n_class_names = 2;
  CU_ASSERT_EQUAL(qt_dataset_load_image_folder(tmp_path("empty"), &p, &ds, &err), QT_ESCHEMA);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "'b' is not a class"));
  free(img);
}

/* A folder so deep that a name inside it makes a path longer than the
 * loader's 4095 bytes: an error that says so, not a cut path (which would
 * name another file, or none). The levels are made relative to their
 * parents, as mkdir takes no path that long. */
static void test_image_folder_long_path(void) {
  make_dirs("long/a");
  make_dirs("long/b");
  uint8_t *img = solid_rgb(4, 4, 1, 2, 3);
  write_png(tmp_path("long/a/x.png"), 4, 4, PNG_COLOR_TYPE_RGB, 8, img, NULL, 0);
  free(img);
  char name[251];
  memset(name, 'x', 250);
  name[250] = '\0';
  size_t len = strlen(tmp_path("long/b"));
  int parent = -1, fd = open(tmp_path("long/b"), O_RDONLY | O_DIRECTORY);
  CU_ASSERT_FATAL(fd >= 0);
  while (len < 4096) {
    CU_ASSERT_EQUAL_FATAL(mkdirat(fd, name, 0777), 0);
    if (parent >= 0) close(parent);
    parent = fd;
    fd = openat(parent, name, O_RDONLY | O_DIRECTORY);
    CU_ASSERT_FATAL(fd >= 0);
    len += 1 + strlen(name);
  }
  close(fd);
  qt_dataset *ds = NULL;
  qt_err err;
  qt_image_folder_params p = qt_image_folder_default_params();
  CU_ASSERT_EQUAL(qt_dataset_load_image_folder(tmp_path("long"), &p, &ds, &err), QT_EINVAL);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "path too long (over 4095 bytes)"));
  CU_ASSERT_PTR_NULL(ds);
  /* The deepest level, which the temporary folder's removal cannot name. */
  CU_ASSERT_EQUAL(unlinkat(parent, name, AT_REMOVEDIR), 0);
  close(parent);
}

static void test_image_folder_sizes(void) {
  /* Three 4x4 images and one 8x6 (height 8, width 6): the common size is
   * the most frequent, 4x4; the 8x6 one is scaled by max(4/8, 4/6) to 5x4
   * and center-cropped (top round(0.5) = 0). A solid color stays exact. */
  make_dirs("sizes/a");
  make_dirs("sizes/b");
  uint8_t *small = solid_rgb(4, 4, 9, 99, 199), *tall = solid_rgb(8, 6, 50, 60, 70);
  write_png(tmp_path("sizes/a/1.png"), 4, 4, PNG_COLOR_TYPE_RGB, 8, small, NULL, 0);
  write_png(tmp_path("sizes/a/2.png"), 4, 4, PNG_COLOR_TYPE_RGB, 8, small, NULL, 0);
  write_png(tmp_path("sizes/b/1.png"), 4, 4, PNG_COLOR_TYPE_RGB, 8, small, NULL, 0);
  write_png(tmp_path("sizes/b/2.png"), 6, 8, PNG_COLOR_TYPE_RGB, 8, tall, NULL, 0);
  qt_dataset *ds = NULL;
  qt_err err;
  qt_image_folder_params p = qt_image_folder_default_params();
  CU_ASSERT_EQUAL_FATAL(qt_dataset_load_image_folder(tmp_path("sizes"), &p, &ds, &err), 0);
  CU_ASSERT_EQUAL(ds->height, 4);
  CU_ASSERT_EQUAL(ds->width, 4);
  CU_ASSERT_EQUAL(ds->n, 4);
  const uint8_t *last = ds->images + 3 * 48;
  int solid = 1;
  for (size_t i = 0; i < 16; i++)
    solid &= last[3 * i] == 50 && last[3 * i + 1] == 60 && last[3 * i + 2] == 70;
  CU_ASSERT_TRUE(solid);
  qt_dataset_free(ds);
  /* An explicit size applies to all. */
  p.height = 2;
  p.width = 3;
  CU_ASSERT_EQUAL_FATAL(qt_dataset_load_image_folder(tmp_path("sizes"), &p, &ds, &err), 0);
  CU_ASSERT_EQUAL(ds->height, 2);
  CU_ASSERT_EQUAL(ds->width, 3);
  CU_ASSERT_EQUAL(ds->images[0], 9);
  CU_ASSERT_EQUAL(ds->images[3 * 18 + 2], 70);
  qt_dataset_free(ds);
  free(small);
  free(tall);
}

/* ------------------------------------------------------------------------- */
/* Layouts and CSV                                                            */
/* ------------------------------------------------------------------------- */

static void put_png(const char *name, uint8_t value) {
  uint8_t px[4];
  memset(px, value, sizeof px);
  write_png(tmp_path(name), 2, 2, PNG_COLOR_TYPE_GRAY, 8, px, NULL, 0);
}

static void test_split_layout(void) {
  make_dirs("layout/train/ant");
  make_dirs("layout/train/bee");
  make_dirs("layout/val/ant");
  make_dirs("layout/val/bee");
  make_dirs("layout/test/bee");
  for (int i = 0; i < 4; i++) {
    char name[64];
    snprintf(name, sizeof name, "layout/train/ant/%d.png", i);
    put_png(name, 10);
    snprintf(name, sizeof name, "layout/train/bee/%d.png", i);
    put_png(name, 20);
  }
  put_png("layout/val/ant/0.png", 11);
  put_png("layout/val/bee/0.png", 21);
  put_png("layout/test/bee/0.png", 22);
  qt_data_splits s;
  qt_err err;
  qt_data_params p = qt_data_default_params();
  CU_ASSERT_EQUAL_FATAL(qt_data_load(tmp_path("layout"), &p, &s, &err), 0);
  CU_ASSERT_EQUAL(s.given, QT_DATA_SPLIT_TRAIN | QT_DATA_SPLIT_VAL | QT_DATA_SPLIT_TEST);
  CU_ASSERT_EQUAL(s.train->n, 8);
  CU_ASSERT_EQUAL(s.val->n, 2);
  CU_ASSERT_EQUAL(s.test->n, 1);
  /* test has only bee, which keeps train's label 1. */
  CU_ASSERT_EQUAL(s.test->n_classes, 2);
  CU_ASSERT_EQUAL(s.test->labels[0], 1);
  CU_ASSERT_EQUAL(s.test->images[0], 22);
  CU_ASSERT_EQUAL(s.val->labels[1], 1);
  CU_ASSERT_EQUAL(s.val->images[4], 21);
  qt_data_splits_free(&s);
  /* Without test/, the test split is carved from train (fraction 0.25: 1 of
   * 4 per class). */
  make_dirs("layout2/train/ant");
  make_dirs("layout2/train/bee");
  make_dirs("layout2/validation/ant");
  for (int i = 0; i < 4; i++) {
    char name[64];
    snprintf(name, sizeof name, "layout2/train/ant/%d.png", i);
    put_png(name, 10);
    snprintf(name, sizeof name, "layout2/train/bee/%d.png", i);
    put_png(name, 20);
  }
  put_png("layout2/validation/ant/0.png", 11);
  p.test_fraction = 0.25;
  CU_ASSERT_EQUAL_FATAL(qt_data_load(tmp_path("layout2"), &p, &s, &err), 0);
  CU_ASSERT_EQUAL(s.given, QT_DATA_SPLIT_TRAIN | QT_DATA_SPLIT_VAL);
  CU_ASSERT_EQUAL(s.train->n, 6);
  CU_ASSERT_EQUAL(s.val->n, 1);
  CU_ASSERT_EQUAL(s.test->n, 2);
  qt_data_splits_free(&s);
  /* A class in val unknown to train is an error. */
  make_dirs("layout2/validation/wasp");
  put_png("layout2/validation/wasp/0.png", 1);
  CU_ASSERT_EQUAL(qt_data_load(tmp_path("layout2"), &p, &s, &err), QT_ESCHEMA);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "'wasp' is not a class"));
  CU_ASSERT_PTR_NULL(s.train);
  /* A plain class folder: everything carved. */
  p.val_fraction = 0.25;
  p.test_fraction = 0.25;
  CU_ASSERT_EQUAL_FATAL(qt_data_load(tmp_path("layout2/train"), &p, &s, &err), 0);
  CU_ASSERT_EQUAL(s.given, QT_DATA_SPLIT_TRAIN);
  CU_ASSERT_EQUAL(s.train->n, 4);
  CU_ASSERT_EQUAL(s.val->n, 2);
  CU_ASSERT_EQUAL(s.test->n, 2);
  qt_data_splits_free(&s);
}

static void test_csv(void) {
  const char *path = tmp_path("iris.csv");
  const char *text =
      "sepal,species,petal\n"
      "1.5,setosa,0.25\n"
      "2,virginica,-1e2\n"
      "\"3.25\",setosa,7\n"
      "4,versicolor,8\n";
  write_bytes(path, text, strlen(text));
  qt_dataset *ds = NULL;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_dataset_load_csv(path, "species", NULL, 0, &ds, &err), 0);
  CU_ASSERT_EQUAL(ds->kind, QT_DATASET_KIND_TABULAR);
  CU_ASSERT_EQUAL(ds->n, 4);
  CU_ASSERT_EQUAL(ds->n_features, 2);
  CU_ASSERT_STRING_EQUAL(ds->feature_names[0], "sepal");
  CU_ASSERT_STRING_EQUAL(ds->feature_names[1], "petal");
  CU_ASSERT_EQUAL(ds->n_classes, 3);
  CU_ASSERT_STRING_EQUAL(ds->class_names[0], "setosa");
  CU_ASSERT_STRING_EQUAL(ds->class_names[1], "versicolor");
  CU_ASSERT_STRING_EQUAL(ds->class_names[2], "virginica");
  const int32_t labels[4] = {0, 2, 0, 1};
  const float features[8] = {1.5f, 0.25f, 2.0f, -100.0f, 3.25f, 7.0f, 4.0f, 8.0f};
  for (int i = 0; i < 4; i++) CU_ASSERT_EQUAL(ds->labels[i], labels[i]);
  for (int i = 0; i < 8; i++) CU_ASSERT_EQUAL(ds->features[i], features[i]);
  qt_dataset_free(ds);

  /* Integer labels sort numerically: 1, 2, 10. */
  const char *num = "x,label\n0,10\n1,2\n2,1\n3,2\n";
  write_bytes(path, num, strlen(num));
  CU_ASSERT_EQUAL_FATAL(qt_dataset_load_csv(path, NULL, NULL, 0, &ds, &err), 0);
  CU_ASSERT_STRING_EQUAL(ds->class_names[0], "1");
  CU_ASSERT_STRING_EQUAL(ds->class_names[2], "10");
  CU_ASSERT_EQUAL(ds->labels[0], 2);
  CU_ASSERT_EQUAL(ds->labels[2], 0);
  qt_dataset_free(ds);

  struct {
    const char *text, *phrase;
  } bad[] = {
      {"a,b\n1,2\n", "no label column 'label' (columns: 'a', 'b')"},
      {"a,label\n1,x\nfoo,y\n", ":3: column 'a': 'foo' is not a number"},
      {"a,label\n1,x\n,y\n", "missing values are not supported"},
      {"a,label\n1,x\n2\n", ":3: 1 fields, the header has 2"},
      {"a,label\n1,x\n2,x\n", "1 class"},
      {"label\nx\ny\n", "no feature column"},
      {"a,label\n1,x\n2,\n", "empty label"},
      {"a,a,label\n1,2,x\n", "column 'a' appears twice"},
  };
  for (size_t i = 0; i < COUNT_OF(bad); i++) {
    write_bytes(path, bad[i].text, strlen(bad[i].text));
    int rc = qt_dataset_load_csv(path, NULL, NULL, 0, &ds, &err);
    CU_ASSERT_EQUAL(rc, QT_ESCHEMA);
    CU_ASSERT_PTR_NULL(ds);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, bad[i].phrase));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, path));
    if (!strstr(err.msg, bad[i].phrase)) fprintf(stderr, "\n  case %zu: %s\n", i, err.msg);
  }

  /* A CSV layout: train.csv and test.csv; validation carved. */
  make_dirs("csvdir");
  char train[2048] = "f,label\n", row[64];
  for (int i = 0; i < 20; i++) {
    snprintf(row, sizeof row, "%d,%s\n", i, i % 2 ? "odd" : "even");
    strcat(train, row);
  }
  write_bytes(tmp_path("csvdir/train.csv"), train, strlen(train));
  const char *test = "f,label\n100,odd\n";
  write_bytes(tmp_path("csvdir/test.csv"), test, strlen(test));
  qt_data_splits s;
  qt_data_params p = qt_data_default_params();
  p.val_fraction = 0.2;
  CU_ASSERT_EQUAL_FATAL(qt_data_load(tmp_path("csvdir"), &p, &s, &err), 0);
  CU_ASSERT_EQUAL(s.given, QT_DATA_SPLIT_TRAIN | QT_DATA_SPLIT_TEST);
  CU_ASSERT_EQUAL(s.train->n, 16);
  CU_ASSERT_EQUAL(s.val->n, 4);
  CU_ASSERT_EQUAL(s.test->n, 1);
  CU_ASSERT_EQUAL(s.test->labels[0], 1); /* "odd" is class 1 of train */
  qt_data_splits_free(&s);
  const char *wrong = "g,label\n1,odd\n";
  write_bytes(tmp_path("csvdir/test.csv"), wrong, strlen(wrong));
  CU_ASSERT_EQUAL(qt_data_load(tmp_path("csvdir"), &p, &s, &err), QT_ESCHEMA);
  CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "feature columns differ"));
}

/* ------------------------------------------------------------------------- */
/* Stratified split                                                           */
/* ------------------------------------------------------------------------- */

/* A tabular dataset whose feature is the sample index; class sizes given. */
static qt_dataset *make_tabular(const size_t *class_sizes, size_t n_classes) {
  size_t n = 0;
  for (size_t k = 0; k < n_classes; k++) n += class_sizes[k];
  char text[65536];
  size_t used = (size_t)snprintf(text, sizeof text, "index,label\n");
  size_t i = 0;
  /* Interleave the classes so that dataset order is not class order. */
  size_t left[16];
  memcpy(left, class_sizes, n_classes * sizeof *left);
  while (i < n) {
    for (size_t k = 0; k < n_classes; k++) {
      if (!left[k]) continue;
      left[k]--;
      used += (size_t)snprintf(text + used, sizeof text - used, "%zu,c%02zu\n", i++, k);
    }
  }
  const char *path = tmp_path("tabular.csv");
  write_bytes(path, text, used);
  qt_dataset *ds = NULL;
  qt_err err;
  if (qt_dataset_load_csv(path, NULL, NULL, 0, &ds, &err) != 0) {
    fprintf(stderr, "make_tabular: %s\n", err.msg);
    return NULL;
  }
  return ds;
}

static void test_split_stratified(void) {
  const size_t sizes[3] = {50, 30, 20};
  qt_dataset *ds = make_tabular(sizes, 3);
  CU_ASSERT_PTR_NOT_NULL_FATAL(ds);
  qt_dataset *tr, *va, *te;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_dataset_split(ds, 0.2, 0.1, 7, &tr, &va, &te, &err), 0);
  size_t ctr[3], cva[3], cte[3];
  qt_dataset_class_counts(tr, ctr);
  qt_dataset_class_counts(va, cva);
  qt_dataset_class_counts(te, cte);
  /* Per class: validation round(0.2 m), test round(0.1 m), train the rest. */
  const size_t expect_va[3] = {10, 6, 4}, expect_te[3] = {5, 3, 2}, expect_tr[3] = {35, 21, 14};
  for (int k = 0; k < 3; k++) {
    CU_ASSERT_EQUAL(cva[k], expect_va[k]);
    CU_ASSERT_EQUAL(cte[k], expect_te[k]);
    CU_ASSERT_EQUAL(ctr[k], expect_tr[k]);
  }
  /* Disjoint, complete, in dataset order, labels kept. */
  int seen[100] = {0}, ordered = 1, labels_kept = 1;
  qt_dataset *parts[3] = {tr, va, te};
  for (int s = 0; s < 3; s++)
    for (size_t i = 0; i < parts[s]->n; i++) {
      size_t index = (size_t)parts[s]->features[i];
      seen[index]++;
      if (i > 0 && parts[s]->features[i] <= parts[s]->features[i - 1]) ordered = 0;
      if (parts[s]->labels[i] != ds->labels[index]) labels_kept = 0;
    }
  int once = 1;
  for (int i = 0; i < 100; i++) once &= seen[i] == 1;
  CU_ASSERT_TRUE(once);
  CU_ASSERT_TRUE(ordered);
  CU_ASSERT_TRUE(labels_kept);

  /* Same seed, same split; another seed, another validation set. */
  qt_dataset *tr2, *va2, *te2;
  CU_ASSERT_EQUAL_FATAL(qt_dataset_split(ds, 0.2, 0.1, 7, &tr2, &va2, &te2, &err), 0);
  CU_ASSERT_EQUAL(memcmp(va->features, va2->features, va->n * sizeof(float)), 0);
  CU_ASSERT_EQUAL(memcmp(te->features, te2->features, te->n * sizeof(float)), 0);
  qt_dataset_free(tr2);
  qt_dataset_free(va2);
  qt_dataset_free(te2);
  CU_ASSERT_EQUAL_FATAL(qt_dataset_split(ds, 0.2, 0.1, 8, &tr2, &va2, &te2, &err), 0);
  CU_ASSERT_NOT_EQUAL(memcmp(va->features, va2->features, va->n * sizeof(float)), 0);
  qt_dataset_free(tr2);
  qt_dataset_free(va2);
  qt_dataset_free(te2);
  qt_dataset_free(tr);
  qt_dataset_free(va);
  qt_dataset_free(te);

  /* Bad fractions. */
  CU_ASSERT_EQUAL(qt_dataset_split(ds, 0.6, 0.4, 0, &tr, &va, &te, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_dataset_split(ds, -0.1, 0.0, 0, &tr, &va, &te, &err), QT_EINVAL);
  CU_ASSERT_EQUAL(qt_dataset_split(ds, NAN, 0.0, 0, &tr, &va, &te, &err), QT_EINVAL);
  qt_dataset_free(ds);

  /* Tiny classes keep a training sample: m = 2 with 0.3 + 0.3 gives one
   * validation sample and no test sample; m = 1 stays in train. */
  const size_t tiny[2] = {2, 1};
  ds = make_tabular(tiny, 2);
  CU_ASSERT_PTR_NOT_NULL_FATAL(ds);
  CU_ASSERT_EQUAL_FATAL(qt_dataset_split(ds, 0.3, 0.3, 1, &tr, &va, &te, &err), 0);
  qt_dataset_class_counts(tr, ctr);
  qt_dataset_class_counts(va, cva);
  qt_dataset_class_counts(te, cte);
  CU_ASSERT_EQUAL(ctr[0], 1);
  CU_ASSERT_EQUAL(cva[0], 1);
  CU_ASSERT_EQUAL(cte[0], 0);
  CU_ASSERT_EQUAL(ctr[1], 1);
  CU_ASSERT_EQUAL(cva[1] + cte[1], 0);
  qt_dataset_free(tr);
  qt_dataset_free(va);
  qt_dataset_free(te);
  qt_dataset_free(ds);
}

/* ------------------------------------------------------------------------- */
/* Resize, crop, normalize                                                    */
/* ------------------------------------------------------------------------- */

static void test_resize_exact(void) {
  qt_err err;
  /* Downscale 1x4 -> 1x2 (scale 2, support 2): output 0 has center 1.0,
   * inputs 0..2 at distances 0.5, 0.5, 1.5 -> triangle(d / 2) = 0.75, 0.75,
   * 0.25, normalized 3/7, 3/7, 1/7: (0*3 + 70*3 + 140) / 7 = 50; output 1:
   * inputs 1..3 with 1/7, 3/7, 3/7: (70 + 140*3 + 210*3) / 7 = 160. */
  const uint8_t row[4] = {0, 70, 140, 210};
  uint8_t out[4];
  CU_ASSERT_EQUAL(qt_image_resize(row, 1, 4, 1, out, 1, 2, QT_INTERPOLATION_BILINEAR, &err), 0);
  CU_ASSERT_EQUAL(out[0], 50);
  CU_ASSERT_EQUAL(out[1], 160);
  /* The same along the vertical axis. */
  CU_ASSERT_EQUAL(qt_image_resize(row, 4, 1, 1, out, 2, 1, QT_INTERPOLATION_BILINEAR, &err), 0);
  CU_ASSERT_EQUAL(out[0], 50);
  CU_ASSERT_EQUAL(out[1], 160);
  /* Upscale 1x2 -> 1x4: centers 0.25, 0.75, 1.25, 1.75 in input pixels;
   * weights (0.75, 0.25) between the inputs give 0, 25, 75, 100 (the
   * fixed-point sums 25.5 and 75.5 minus half a unit floor to 25 and 75;
   * the edges clamp to the single input). */
  const uint8_t two[2] = {0, 100};
  CU_ASSERT_EQUAL(qt_image_resize(two, 1, 2, 1, out, 1, 4, QT_INTERPOLATION_BILINEAR, &err), 0);
  CU_ASSERT_EQUAL(out[0], 0);
  CU_ASSERT_EQUAL(out[1], 25);
  CU_ASSERT_EQUAL(out[2], 75);
  CU_ASSERT_EQUAL(out[3], 100);
  /* Channels are independent: an RGB row of (v, 255 - v, 7). */
  uint8_t rgb[12], rgb_out[6];
  for (int i = 0; i < 4; i++) {
    rgb[3 * i] = row[i];
    rgb[3 * i + 1] = (uint8_t)(255 - row[i]);
    rgb[3 * i + 2] = 7;
  }
  CU_ASSERT_EQUAL(qt_image_resize(rgb, 1, 4, 3, rgb_out, 1, 2, QT_INTERPOLATION_BILINEAR, &err), 0);
  CU_ASSERT_EQUAL(rgb_out[0], 50);
  CU_ASSERT_EQUAL(rgb_out[1], 205);
  CU_ASSERT_EQUAL(rgb_out[2], 7);
  CU_ASSERT_EQUAL(rgb_out[3], 160);
  CU_ASSERT_EQUAL(rgb_out[4], 95);
  /* Bicubic (a = -0.5) downscale 1x4 -> 1x2: support 2 * 2 = 4; output 0
   * (center 1.0) sees inputs 0..3 at scaled distances 0.25, 0.25, 0.75,
   * 1.25 with weights 0.8671875, 0.8671875, 0.2265625, -0.0703125 (sum
   * 1.890625): (70 * 0.8671875 + 140 * 0.2265625 - 210 * 0.0703125) /
   * 1.890625 = 41.07 -> 41; output 1 mirrors them: (70 * 0.2265625 +
   * 140 * 0.8671875 + 210 * 0.8671875) / 1.890625 = 168.93 -> 169. */
  CU_ASSERT_EQUAL(qt_image_resize(row, 1, 4, 1, out, 1, 2, QT_INTERPOLATION_BICUBIC, &err), 0);
  CU_ASSERT_EQUAL(out[0], 41);
  CU_ASSERT_EQUAL(out[1], 169);
  /* Overlap is refused. */
  uint8_t buf[8] = {0};
  CU_ASSERT_EQUAL(qt_image_resize(buf, 1, 4, 1, buf + 2, 1, 2, QT_INTERPOLATION_BILINEAR, &err),
                  QT_EINVAL);
}

static void test_crop_and_sizes(void) {
  long top, left;
  /* round((5 - 2) / 2) = round(1.5) = 2, round((7 - 2) / 2) = round(2.5) = 2. */
  qt_image_center_crop_box(5, 7, 2, 2, &top, &left);
  CU_ASSERT_EQUAL(top, 2);
  CU_ASSERT_EQUAL(left, 2);
  qt_image_center_crop_box(4, 4, 1, 3, &top, &left);
  CU_ASSERT_EQUAL(top, 2);  /* round(1.5) */
  CU_ASSERT_EQUAL(left, 0); /* round(0.5) */
  /* A crop larger than the image pads: 3 -> 6 puts the image at offset 1. */
  qt_image_center_crop_box(3, 3, 6, 3, &top, &left);
  CU_ASSERT_EQUAL(top, -1);
  CU_ASSERT_EQUAL(left, 0);
  const uint8_t img[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  uint8_t out[18];
  qt_image_center_crop(img, 3, 3, 1, out, 6, 3);
  const uint8_t expect[18] = {0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0, 0, 0, 0};
  CU_ASSERT_EQUAL(memcmp(out, expect, 18), 0);
  qt_image_crop(img, 3, 3, 1, 1, -1, out, 2, 3);
  const uint8_t expect2[6] = {0, 4, 5, 0, 7, 8};
  CU_ASSERT_EQUAL(memcmp(out, expect2, 6), 0);
  /* Resize(224) of 300x400: shorter side 224, longer floor(224 * 400 / 300) = 298. */
  size_t h, w;
  qt_image_resize_shorter_size(300, 400, 224, &h, &w);
  CU_ASSERT_EQUAL(h, 224);
  CU_ASSERT_EQUAL(w, 298);
  qt_image_resize_shorter_size(500, 375, 256, &h, &w);
  CU_ASSERT_EQUAL(w, 256);
  CU_ASSERT_EQUAL(h, 341);
}

static void test_normalize(void) {
  qt_err err;
  /* One RGB pixel (0, 255, 51) with mean 0.5 and std 0.25: (0 - 0.5) / 0.25
   * = -2, (1 - 0.5) / 0.25 = 2, (0.2 - 0.5) / 0.25 = -1.2. */
  const uint8_t px[3] = {0, 255, 51};
  const double mean[3] = {0.5, 0.5, 0.5}, std[3] = {0.25, 0.25, 0.25};
  float out[3];
  CU_ASSERT_EQUAL(qt_image_to_float(px, 1, 1, 3, 3, mean, std, out, &err), 0);
  CU_ASSERT_EQUAL(out[0], -2.0f);
  CU_ASSERT_EQUAL(out[1], 2.0f);
  QT_ASSERT_CLOSE(out[2], -1.2, 1e-6);
  /* Gray to 3 channels: a 1x2 gray image, each channel with its own mean
   * and std; CHW layout. */
  const uint8_t gray[2] = {0, 255};
  const double m3[3] = {0.0, 0.5, 1.0}, s3[3] = {1.0, 0.5, 2.0};
  float chw[6];
  CU_ASSERT_EQUAL(qt_image_to_float(gray, 1, 2, 1, 3, m3, s3, chw, &err), 0);
  const float expect[6] = {0.0f, 1.0f, -1.0f, 1.0f, -0.5f, 0.0f};
  for (int i = 0; i < 6; i++) CU_ASSERT_EQUAL(chw[i], expect[i]);
  /* torchvision's numbers in float32: ((v / 255) - mean) / std. */
  const uint8_t v[1] = {128};
  const double im[3] = {0.485, 0.456, 0.406}, is[3] = {0.229, 0.224, 0.225};
  CU_ASSERT_EQUAL(qt_image_to_float(v, 1, 1, 1, 3, im, is, chw, &err), 0);
  CU_ASSERT_EQUAL(chw[0], (128.0f / 255.0f - 0.485f) / 0.229f);
  /* Bad std. */
  const double zero[3] = {0, 0, 0};
  CU_ASSERT_EQUAL(qt_image_to_float(v, 1, 1, 1, 3, im, zero, chw, &err), QT_EINVAL);

  /* The eval transform: an 8x8 gray ramp, image size 4. crop_pct 0.5:
   * floor(4 / 0.5) = 8, no resize, then the center 4x4 (top, left 2). */
  uint8_t ramp[64];
  for (int i = 0; i < 64; i++) ramp[i] = (uint8_t)(i * 3);
  qt_preprocess_params p = qt_preprocess_default_params();
  p.image_size = 4;
  p.channels = 1;
  p.mean[0] = 0.0;
  p.std[0] = 1.0;
  p.crop_pct = 0.5;
  float res[16];
  CU_ASSERT_EQUAL(qt_image_eval_transform(&p, ramp, 8, 8, 1, res, &err), 0);
  int ok = 1;
  for (int y = 0; y < 4; y++)
    for (int x = 0; x < 4; x++) ok &= res[y * 4 + x] == (float)ramp[(y + 2) * 8 + x + 2] / 255.0f;
  CU_ASSERT_TRUE(ok);
  /* crop_pct 1: resize 8 -> 4, each output the mean of a 2x2 block plus
   * its neighbours' share: for a linear ramp, the value at the block center
   * (bilinear on a linear function is exact up to rounding). */
  p.crop_pct = 1.0;
  CU_ASSERT_EQUAL(qt_image_eval_transform(&p, ramp, 8, 8, 1, res, &err), 0);
  /* Center of output (1, 1) is input (2.5, 2.5) -> 3 * (2.5 * 8 + 2.5) = 67.5. */
  CU_ASSERT_TRUE(fabsf(res[5] * 255.0f - 67.5f) <= 1.0f);
}

/* ------------------------------------------------------------------------- */
/* Augmentation ops                                                           */
/* ------------------------------------------------------------------------- */

static void apply(qt_augment_op op, double magnitude, const uint8_t *src, uint8_t *dst, size_t h,
                  size_t w, size_t c) {
  qt_err err;
  int rc = qt_augment_apply_op(src, dst, h, w, c, op, magnitude, &err);
  CU_ASSERT_EQUAL(rc, 0);
  if (rc) fprintf(stderr, "\n  %s: %s\n", qt_augment_op_name(op), err.msg);
}

static void test_augment_pixel_ops(void) {
  uint8_t out[64];
  /* Flip of a 1x3 RGB row. */
  uint8_t row[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  qt_image_hflip(row, 1, 3, 3);
  const uint8_t flipped[9] = {7, 8, 9, 4, 5, 6, 1, 2, 3};
  CU_ASSERT_EQUAL(memcmp(row, flipped, 9), 0);
  /* Posterize 2 bits: & 0xC0. */
  const uint8_t v[5] = {0, 63, 64, 200, 255};
  apply(QT_AUGMENT_OP_POSTERIZE, 2, v, out, 1, 5, 1);
  const uint8_t post[5] = {0, 0, 64, 192, 192};
  CU_ASSERT_EQUAL(memcmp(out, post, 5), 0);
  apply(QT_AUGMENT_OP_POSTERIZE, 8, v, out, 1, 5, 1);
  CU_ASSERT_EQUAL(memcmp(out, v, 5), 0);
  apply(QT_AUGMENT_OP_POSTERIZE, 0, v, out, 1, 5, 1);
  CU_ASSERT_EQUAL(out[4], 0);
  qt_err err;
  CU_ASSERT_EQUAL(qt_augment_apply_op(v, out, 1, 5, 1, QT_AUGMENT_OP_POSTERIZE, 9, &err),
                  QT_EINVAL);
  /* Solarize at 128: values >= 128 inverted. */
  const uint8_t s[4] = {0, 127, 128, 255};
  apply(QT_AUGMENT_OP_SOLARIZE, 128, s, out, 1, 4, 1);
  const uint8_t sol[4] = {0, 127, 127, 0};
  CU_ASSERT_EQUAL(memcmp(out, sol, 4), 0);
  /* Solarize at 255 (bin 0) only inverts 255. */
  apply(QT_AUGMENT_OP_SOLARIZE, 255, s, out, 1, 4, 1);
  CU_ASSERT_EQUAL(out[3], 0);
  CU_ASSERT_EQUAL(out[2], 128);
  /* AutoContrast: channel 0 spans [50, 150] -> (x - 50) * 2.55, truncated;
   * channel 1 is flat and kept. */
  const uint8_t ac3[9] = {50, 9, 0, 100, 9, 1, 150, 9, 2};
  apply(QT_AUGMENT_OP_AUTOCONTRAST, 0, ac3, out, 1, 3, 3);
  const uint8_t acx[9] = {0, 9, 0, 127, 9, 127, 255, 9, 255};
  CU_ASSERT_EQUAL(memcmp(out, acx, 9), 0);
  /* Equalize: 300 pixels of 10, 300 of 200, 10 of 250. step = (300 + 300)
   * // 255 = 2; lut[v] = (1 + count below v) // 2: 10 -> 0, 200 -> 150,
   * 250 -> 300 -> 255. */
  uint8_t *eq = malloc(610), *eq_out = malloc(610);
  for (int i = 0; i < 610; i++) eq[i] = (uint8_t)(i < 300 ? 10 : (i < 600 ? 200 : 250));
  apply(QT_AUGMENT_OP_EQUALIZE, 0, eq, eq_out, 1, 610, 1);
  CU_ASSERT_EQUAL(eq_out[0], 0);
  CU_ASSERT_EQUAL(eq_out[300], 150);
  CU_ASSERT_EQUAL(eq_out[605], 255);
  /* Too few pixels below the top value: step 0, unchanged. */
  apply(QT_AUGMENT_OP_EQUALIZE, 0, v, out, 1, 5, 1);
  CU_ASSERT_EQUAL(memcmp(out, v, 5), 0);
  free(eq);
  free(eq_out);
  /* Brightness: factor 1.5 and 0.5 (101 * 0.5 = 50.5 truncates to 50). */
  const uint8_t b[4] = {0, 100, 200, 101};
  apply(QT_AUGMENT_OP_BRIGHTNESS, 0.5, b, out, 1, 4, 1);
  CU_ASSERT_EQUAL(out[1], 150);
  CU_ASSERT_EQUAL(out[2], 255);
  apply(QT_AUGMENT_OP_BRIGHTNESS, -0.5, b, out, 1, 4, 1);
  CU_ASSERT_EQUAL(out[3], 50);
  /* Color: gray of (255, 0, 0) is trunc(0.2989 * 255) = 76; factor 0 gives
   * the gray image, factor 2 pushes away from it (2 * 255 - 76 -> 255,
   * 2 * 0 - 76 -> 0). A gray image is unchanged. */
  const uint8_t red[3] = {255, 0, 0};
  apply(QT_AUGMENT_OP_COLOR, -1.0, red, out, 1, 1, 3);
  CU_ASSERT_EQUAL(out[0], 76);
  CU_ASSERT_EQUAL(out[1], 76);
  CU_ASSERT_EQUAL(out[2], 76);
  apply(QT_AUGMENT_OP_COLOR, 1.0, red, out, 1, 1, 3);
  CU_ASSERT_EQUAL(memcmp(out, red, 3), 0);
  apply(QT_AUGMENT_OP_COLOR, -1.0, v, out, 1, 5, 1);
  CU_ASSERT_EQUAL(memcmp(out, v, 5), 0);
  /* Contrast on gray [0, 100]: mean 50; factor 0 -> 50, 50; factor 2 ->
   * 2x - 50 -> 0, 150. */
  const uint8_t c2[2] = {0, 100};
  apply(QT_AUGMENT_OP_CONTRAST, -1.0, c2, out, 1, 2, 1);
  CU_ASSERT_EQUAL(out[0], 50);
  CU_ASSERT_EQUAL(out[1], 50);
  apply(QT_AUGMENT_OP_CONTRAST, 1.0, c2, out, 1, 2, 1);
  CU_ASSERT_EQUAL(out[0], 0);
  CU_ASSERT_EQUAL(out[1], 150);
  /* Sharpness on a 3x3 with a 130 center: the smoothed center is
   * round(5 * 130 / 13) = 50; factor 0 gives it, factor 2 gives
   * 2 * 130 - 50 = 210; the border is kept. */
  uint8_t dot[9] = {0};
  dot[4] = 130;
  apply(QT_AUGMENT_OP_SHARPNESS, -1.0, dot, out, 3, 3, 1);
  CU_ASSERT_EQUAL(out[4], 50);
  CU_ASSERT_EQUAL(out[0], 0);
  apply(QT_AUGMENT_OP_SHARPNESS, 1.0, dot, out, 3, 3, 1);
  CU_ASSERT_EQUAL(out[4], 210);
  /* Identity copies. */
  apply(QT_AUGMENT_OP_IDENTITY, 0, v, out, 1, 5, 1);
  CU_ASSERT_EQUAL(memcmp(out, v, 5), 0);
}

static void test_augment_geometric_ops(void) {
  uint8_t out[16];
  /* TranslateX +1: output x takes input x - 1; zeros enter on the left.
   * int(magnitude) truncates: 1.9 is 1, -1.7 is -1. */
  const uint8_t row[3] = {1, 2, 3};
  apply(QT_AUGMENT_OP_TRANSLATE_X, 1.9, row, out, 1, 3, 1);
  const uint8_t right[3] = {0, 1, 2};
  CU_ASSERT_EQUAL(memcmp(out, right, 3), 0);
  apply(QT_AUGMENT_OP_TRANSLATE_X, -1.7, row, out, 1, 3, 1);
  const uint8_t left[3] = {2, 3, 0};
  CU_ASSERT_EQUAL(memcmp(out, left, 3), 0);
  /* TranslateY -1 on a column. */
  apply(QT_AUGMENT_OP_TRANSLATE_Y, -1, row, out, 3, 1, 1);
  CU_ASSERT_EQUAL(memcmp(out, left, 3), 0);
  /* Rotate 90 degrees counter-clockwise: [[1, 2], [3, 4]] -> [[2, 4],
   * [1, 3]] (torch.rot90); -90 the other way. */
  const uint8_t sq[4] = {1, 2, 3, 4};
  apply(QT_AUGMENT_OP_ROTATE, 90, sq, out, 2, 2, 1);
  const uint8_t ccw[4] = {2, 4, 1, 3};
  CU_ASSERT_EQUAL(memcmp(out, ccw, 4), 0);
  apply(QT_AUGMENT_OP_ROTATE, -90, sq, out, 2, 2, 1);
  const uint8_t cw[4] = {3, 1, 4, 2};
  CU_ASSERT_EQUAL(memcmp(out, cw, 4), 0);
  apply(QT_AUGMENT_OP_ROTATE, 180, sq, out, 2, 2, 1);
  const uint8_t half[4] = {4, 3, 2, 1};
  CU_ASSERT_EQUAL(memcmp(out, half, 4), 0);
  /* ShearX 0.5 about the top-left corner: output (x, y) samples input
   * x + 0.5 (y + 0.5): row 0 at +0.25 (itself), row 1 at +0.75 (the next
   * pixel), so row 1 moves left by one and its last pixel is fill. */
  const uint8_t grid[6] = {1, 2, 3, 4, 5, 6};
  apply(QT_AUGMENT_OP_SHEAR_X, 0.5, grid, out, 2, 3, 1);
  const uint8_t sheared[6] = {1, 2, 3, 5, 6, 0};
  CU_ASSERT_EQUAL(memcmp(out, sheared, 6), 0);
  /* ShearY 0.5 on the transposed grid: column 1 moves up by one. */
  const uint8_t grid_t[6] = {1, 4, 2, 5, 3, 6};
  apply(QT_AUGMENT_OP_SHEAR_Y, 0.5, grid_t, out, 3, 2, 1);
  const uint8_t sheared_t[6] = {1, 5, 2, 6, 3, 0};
  CU_ASSERT_EQUAL(memcmp(out, sheared_t, 6), 0);
  /* RGB pixels move whole. */
  const uint8_t rgb[6] = {10, 20, 30, 40, 50, 60};
  apply(QT_AUGMENT_OP_TRANSLATE_X, 1, rgb, out, 1, 2, 3);
  const uint8_t moved[6] = {0, 0, 0, 10, 20, 30};
  CU_ASSERT_EQUAL(memcmp(out, moved, 6), 0);
}

static void test_augment_magnitudes(void) {
  /* TrivialAugmentWide, 31 bins. */
  QT_ASSERT_CLOSE(
      qt_augment_op_magnitude(QT_AUTO_AUGMENT_TRIVIAL, QT_AUGMENT_OP_SHEAR_X, 30, 31, 8, 8), 0.99,
      1e-6);
  QT_ASSERT_CLOSE(
      qt_augment_op_magnitude(QT_AUTO_AUGMENT_TRIVIAL, QT_AUGMENT_OP_TRANSLATE_Y, 15, 31, 8, 8),
      16.0, 1e-5);
  QT_ASSERT_CLOSE(
      qt_augment_op_magnitude(QT_AUTO_AUGMENT_TRIVIAL, QT_AUGMENT_OP_ROTATE, 30, 31, 8, 8), 135.0,
      1e-5);
  CU_ASSERT_EQUAL(
      qt_augment_op_magnitude(QT_AUTO_AUGMENT_TRIVIAL, QT_AUGMENT_OP_POSTERIZE, 0, 31, 8, 8), 8.0);
  CU_ASSERT_EQUAL(
      qt_augment_op_magnitude(QT_AUTO_AUGMENT_TRIVIAL, QT_AUGMENT_OP_POSTERIZE, 5, 31, 8, 8), 7.0);
  CU_ASSERT_EQUAL(
      qt_augment_op_magnitude(QT_AUTO_AUGMENT_TRIVIAL, QT_AUGMENT_OP_POSTERIZE, 30, 31, 8, 8), 2.0);
  CU_ASSERT_EQUAL(
      qt_augment_op_magnitude(QT_AUTO_AUGMENT_TRIVIAL, QT_AUGMENT_OP_SOLARIZE, 0, 31, 8, 8), 255.0);
  CU_ASSERT_EQUAL(
      qt_augment_op_magnitude(QT_AUTO_AUGMENT_TRIVIAL, QT_AUGMENT_OP_SOLARIZE, 2, 31, 8, 8), 238.0);
  CU_ASSERT_EQUAL(
      qt_augment_op_magnitude(QT_AUTO_AUGMENT_TRIVIAL, QT_AUGMENT_OP_SOLARIZE, 30, 31, 8, 8), 0.0);
  CU_ASSERT_EQUAL(
      qt_augment_op_magnitude(QT_AUTO_AUGMENT_TRIVIAL, QT_AUGMENT_OP_EQUALIZE, 3, 31, 8, 8), 0.0);
  /* RandAugment, magnitude 9 of 31: shear 0.09, rotate 9, enhance 0.27,
   * posterize 8 - round(9 / 7.5) = 7, translate 150/331 of the side. */
  QT_ASSERT_CLOSE(qt_augment_op_magnitude(QT_AUTO_AUGMENT_RAND, QT_AUGMENT_OP_SHEAR_Y, 9, 31, 8, 8),
                  0.09, 1e-6);
  QT_ASSERT_CLOSE(qt_augment_op_magnitude(QT_AUTO_AUGMENT_RAND, QT_AUGMENT_OP_ROTATE, 9, 31, 8, 8),
                  9.0, 1e-5);
  QT_ASSERT_CLOSE(
      qt_augment_op_magnitude(QT_AUTO_AUGMENT_RAND, QT_AUGMENT_OP_CONTRAST, 9, 31, 8, 8), 0.27,
      1e-6);
  CU_ASSERT_EQUAL(
      qt_augment_op_magnitude(QT_AUTO_AUGMENT_RAND, QT_AUGMENT_OP_POSTERIZE, 9, 31, 8, 8), 7.0);
  CU_ASSERT_EQUAL(
      qt_augment_op_magnitude(QT_AUTO_AUGMENT_RAND, QT_AUGMENT_OP_POSTERIZE, 30, 31, 8, 8), 4.0);
  QT_ASSERT_CLOSE(
      qt_augment_op_magnitude(QT_AUTO_AUGMENT_RAND, QT_AUGMENT_OP_TRANSLATE_X, 30, 31, 100, 331),
      150.0, 1e-4);
  QT_ASSERT_CLOSE(
      qt_augment_op_magnitude(QT_AUTO_AUGMENT_RAND, QT_AUGMENT_OP_TRANSLATE_Y, 30, 31, 662, 10),
      300.0, 1e-3);
  CU_ASSERT_TRUE(qt_augment_op_signed(QT_AUGMENT_OP_ROTATE));
  CU_ASSERT_FALSE(qt_augment_op_signed(QT_AUGMENT_OP_SOLARIZE));
  CU_ASSERT_STRING_EQUAL(qt_augment_op_name(QT_AUGMENT_OP_AUTOCONTRAST), "AutoContrast");
  qt_auto_augment a;
  CU_ASSERT_EQUAL(qt_auto_augment_parse("trivial_augment", &a, NULL), 0);
  CU_ASSERT_EQUAL(a, QT_AUTO_AUGMENT_TRIVIAL);
  CU_ASSERT_EQUAL(qt_auto_augment_parse("None", &a, NULL), 0);
  CU_ASSERT_EQUAL(a, QT_AUTO_AUGMENT_NONE);
  CU_ASSERT_EQUAL(qt_auto_augment_parse("auto_augment", &a, NULL), QT_ENOTIMPL);
  CU_ASSERT_EQUAL(qt_auto_augment_parse("mixup", &a, NULL), QT_EINVAL);
}

/* An 8x8 RGB test image with structure in every channel. */
static void pattern(uint8_t *img, size_t h, size_t w) {
  for (size_t y = 0; y < h; y++)
    for (size_t x = 0; x < w; x++) {
      img[(y * w + x) * 3] = (uint8_t)(30 * x + 5 * y);
      img[(y * w + x) * 3 + 1] = (uint8_t)(200 - 20 * y);
      img[(y * w + x) * 3 + 2] = (uint8_t)((x * y * 13) & 0xFF);
    }
}

static void test_augment_policies_deterministic(void) {
  uint8_t img[8 * 8 * 3], a[8 * 8 * 3], b[8 * 8 * 3];
  pattern(img, 8, 8);
  qt_rng_t *r1, *r2;
  int differs = 0;
  for (uint64_t seed = 0; seed < 20; seed++) {
    CU_ASSERT_EQUAL_FATAL(qt_rng_init(&r1, seed, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(qt_rng_init(&r2, seed, NULL), 0);
    CU_ASSERT_EQUAL(qt_image_trivial_augment(img, a, 8, 8, 3, 31, r1, NULL), 0);
    CU_ASSERT_EQUAL(qt_image_trivial_augment(img, b, 8, 8, 3, 31, r2, NULL), 0);
    CU_ASSERT_EQUAL(memcmp(a, b, sizeof a), 0);
    differs += memcmp(a, img, sizeof a) != 0;
    CU_ASSERT_EQUAL(qt_image_rand_augment(img, a, 8, 8, 3, 2, 9, 31, r1, NULL), 0);
    CU_ASSERT_EQUAL(qt_image_rand_augment(img, b, 8, 8, 3, 2, 9, 31, r2, NULL), 0);
    CU_ASSERT_EQUAL(memcmp(a, b, sizeof a), 0);
    qt_rng_free(r1);
    qt_rng_free(r2);
  }
  /* Most draws change the image (identity, and ops that do nothing to this
   * image, are a few of the 14). */
  CU_ASSERT_TRUE(differs >= 10);
  /* RandAugment with a bad magnitude bin. */
  qt_rng_init(&r1, 0, NULL);
  CU_ASSERT_EQUAL(qt_image_rand_augment(img, a, 8, 8, 3, 2, 31, 31, r1, NULL), QT_EINVAL);
  qt_rng_free(r1);
}

static void test_random_resized_crop(void) {
  qt_rng_t *rng;
  CU_ASSERT_EQUAL_FATAL(qt_rng_init(&rng, 3, NULL), 0);
  const double scale[2] = {0.08, 1.0}, ratio[2] = {3.0 / 4.0, 4.0 / 3.0};
  /* Every box lies inside the image, with area and ratio in range (up to
   * the rounding of the sides). */
  int inside = 1, in_range = 1;
  for (int i = 0; i < 500; i++) {
    size_t top, left, h, w;
    qt_random_resized_crop_box(40, 60, scale, ratio, rng, &top, &left, &h, &w);
    inside &= h >= 1 && w >= 1 && top + h <= 40 && left + w <= 60;
    double area = (double)(h * w) / 2400.0;
    in_range &= area >= 0.06 && area <= 1.0;
  }
  CU_ASSERT_TRUE(inside);
  CU_ASSERT_TRUE(in_range);
  /* The fallback: an area fraction that never fits gives the centered crop
   * of the whole image clamped to the ratio: 10x20 has ratio 2 > 4/3, so
   * h = 10, w = round(10 * 4/3) = 13, left = (20 - 13) // 2 = 3. */
  const double never[2] = {2.0, 3.0};
  size_t top, left, h, w;
  qt_random_resized_crop_box(10, 20, never, ratio, rng, &top, &left, &h, &w);
  CU_ASSERT_EQUAL(h, 10);
  CU_ASSERT_EQUAL(w, 13);
  CU_ASSERT_EQUAL(top, 0);
  CU_ASSERT_EQUAL(left, 3);
  /* 20x10 (ratio 0.5 < 3/4): w = 10, h = round(10 / 0.75) = 13, top 3. */
  qt_random_resized_crop_box(20, 10, never, ratio, rng, &top, &left, &h, &w);
  CU_ASSERT_EQUAL(w, 10);
  CU_ASSERT_EQUAL(h, 13);
  CU_ASSERT_EQUAL(top, 3);
  /* Scale and ratio pinned to 1 on a square: the whole image, resized. */
  const double one[2] = {1.0, 1.0};
  uint8_t img[8 * 8 * 3], out[4 * 4 * 3], ref[4 * 4 * 3];
  pattern(img, 8, 8);
  CU_ASSERT_EQUAL(qt_image_random_resized_crop(img, 8, 8, 3, one, one, 4, QT_INTERPOLATION_BILINEAR,
                                               rng, out, NULL),
                  0);
  CU_ASSERT_EQUAL(qt_image_resize(img, 8, 8, 3, ref, 4, 4, QT_INTERPOLATION_BILINEAR, NULL), 0);
  CU_ASSERT_EQUAL(memcmp(out, ref, sizeof out), 0);
  /* Same seed, same crop. */
  qt_rng_t *a, *b;
  qt_rng_init(&a, 11, NULL);
  qt_rng_init(&b, 11, NULL);
  uint8_t o1[16 * 3], o2[16 * 3];
  qt_image_random_resized_crop(img, 8, 8, 3, scale, ratio, 4, QT_INTERPOLATION_BILINEAR, a, o1,
                               NULL);
  qt_image_random_resized_crop(img, 8, 8, 3, scale, ratio, 4, QT_INTERPOLATION_BILINEAR, b, o2,
                               NULL);
  CU_ASSERT_EQUAL(memcmp(o1, o2, sizeof o1), 0);
  qt_rng_free(a);
  qt_rng_free(b);
  qt_rng_free(rng);
}

/* ------------------------------------------------------------------------- */
/* Mixup, CutMix, smoothing                                                   */
/* ------------------------------------------------------------------------- */

enum { MB = 4, MC = 2, MH = 5, MW = 6, MK = 3 };

/* Sample i is constant i + 1 in every pixel. */
static void fill_batch(float *x) {
  for (int i = 0; i < MB; i++)
    for (int k = 0; k < MC * MH * MW; k++) x[i * MC * MH * MW + k] = (float)(i + 1);
}

static void test_mixup_cutmix(void) {
  const int32_t labels[MB] = {0, 1, 2, 1};
  float x[MB * MC * MH * MW], t[MB * MK];
  qt_augment_params p = qt_augment_default_params();
  qt_rng_t *rng;
  qt_rng_init(&rng, 5, NULL);
  double lambda;
  int cutmix;
  qt_err err;

  /* Smoothing only (no mixing): off = 0.1 / 3, on = 0.9 + 0.1 / 3. */
  p.label_smoothing = 0.1;
  fill_batch(x);
  CU_ASSERT_EQUAL(qt_mix_batch(x, labels, MB, MC, MH, MW, MK, &p, rng, t, &lambda, &cutmix, &err),
                  0);
  CU_ASSERT_EQUAL(lambda, 1.0);
  CU_ASSERT_EQUAL(cutmix, 0);
  QT_ASSERT_CLOSE(t[0], 0.9 + 0.1 / 3, 1e-7);
  QT_ASSERT_CLOSE(t[1], 0.1 / 3, 1e-7);
  CU_ASSERT_EQUAL(x[0], 1.0f);
  float expect_t[MK];
  qt_targets_smooth(labels, 1, MK, 0.1, expect_t);
  CU_ASSERT_EQUAL(memcmp(expect_t, t, sizeof expect_t), 0);

  /* Mixup: x_i = lam x_i + (1 - lam) x_{n-1-i}; targets likewise. */
  p.mixup_alpha = 1.0;
  p.label_smoothing = 0.0;
  for (int trial = 0; trial < 5; trial++) {
    fill_batch(x);
    CU_ASSERT_EQUAL(qt_mix_batch(x, labels, MB, MC, MH, MW, MK, &p, rng, t, &lambda, &cutmix, &err),
                    0);
    CU_ASSERT_EQUAL(cutmix, 0);
    CU_ASSERT_TRUE(lambda > 0.0 && lambda < 1.0);
    for (int i = 0; i < MB; i++) {
      double expect = lambda * (i + 1) + (1.0 - lambda) * (MB - i);
      QT_ASSERT_CLOSE(x[i * MC * MH * MW + 7], expect, 1e-5);
      double sum = 0.0;
      for (int k = 0; k < MK; k++) sum += t[i * MK + k];
      QT_ASSERT_CLOSE(sum, 1.0, 1e-6);
    }
    /* Sample 0 (label 0) mixed with sample 3 (label 1). */
    QT_ASSERT_CLOSE(t[0], lambda, 1e-6);
    QT_ASSERT_CLOSE(t[1], 1.0 - lambda, 1e-6);
  }

  /* CutMix: the pixels taken from the partner are exactly the box, and
   * lambda = 1 - box area / image area. */
  p.mixup_alpha = 0.0;
  p.cutmix_alpha = 1.0;
  p.label_smoothing = 0.1;
  int boxes = 0;
  for (int trial = 0; trial < 20; trial++) {
    fill_batch(x);
    CU_ASSERT_EQUAL(qt_mix_batch(x, labels, MB, MC, MH, MW, MK, &p, rng, t, &lambda, &cutmix, &err),
                    0);
    for (int i = 0; i < MB; i++) {
      int from_partner = 0;
      for (int k = 0; k < MC * MH * MW; k++)
        from_partner += x[i * MC * MH * MW + k] == (float)(MB - i);
      /* Per channel plane; both channels have the same box. */
      double area = (double)from_partner / MC / (MH * MW);
      QT_ASSERT_CLOSE(area, 1.0 - lambda, 1e-9);
      double sum = 0.0;
      for (int k = 0; k < MK; k++) sum += t[i * MK + k];
      QT_ASSERT_CLOSE(sum, 1.0, 1e-6);
    }
    if (lambda < 1.0) {
      boxes++;
      CU_ASSERT_EQUAL(cutmix, 1);
      /* Sample 0: label 0 with weight lambda, label 1 (partner) 1 - lambda,
       * smoothed. */
      double off = 0.1 / MK, on = 0.9 + off;
      QT_ASSERT_CLOSE(t[0], lambda * on + (1 - lambda) * off, 1e-6);
      QT_ASSERT_CLOSE(t[1], lambda * off + (1 - lambda) * on, 1e-6);
    }
  }
  CU_ASSERT_TRUE(boxes > 10);

  /* Both on: switch_prob 1 is always CutMix; mix_prob 0 never mixes. */
  p.mixup_alpha = 1.0;
  p.switch_prob = 1.0;
  int always = 1;
  for (int trial = 0; trial < 10; trial++) {
    fill_batch(x);
    qt_mix_batch(x, labels, MB, MC, MH, MW, MK, &p, rng, t, &lambda, &cutmix, &err);
    int fractional = 0;
    for (int k = 0; k < MB * MC * MH * MW; k++) fractional |= x[k] != floorf(x[k]);
    always &= !fractional;
  }
  CU_ASSERT_TRUE(always);
  p.mix_prob = 0.0;
  fill_batch(x);
  qt_mix_batch(x, labels, MB, MC, MH, MW, MK, &p, rng, t, &lambda, &cutmix, &err);
  CU_ASSERT_EQUAL(lambda, 1.0);

  /* An odd batch: the middle sample mixes with itself. */
  p.mix_prob = 1.0;
  p.switch_prob = 0.0;
  const int32_t odd_labels[3] = {0, 2, 1};
  float xo[3 * 4], to[3 * MK];
  for (int i = 0; i < 12; i++) xo[i] = (float)(i / 4);
  qt_mix_batch(xo, odd_labels, 3, 1, 2, 2, MK, &p, rng, to, &lambda, &cutmix, &err);
  CU_ASSERT_EQUAL(xo[4], 1.0f);
  QT_ASSERT_CLOSE(to[MK + 2], 1.0 - 0.1 + 0.1 / MK, 1e-6);
  qt_rng_free(rng);
}

/* ------------------------------------------------------------------------- */
/* Batch iterator                                                             */
/* ------------------------------------------------------------------------- */

static void test_batches_cover_epoch(void) {
  const size_t sizes[2] = {6, 4};
  qt_dataset *ds = make_tabular(sizes, 2);
  CU_ASSERT_PTR_NOT_NULL_FATAL(ds);
  qt_batch_params bp = qt_batch_default_params();
  bp.batch_size = 3;
  bp.seed = 42;
  qt_batch_iter_t *it;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_init(ds, NULL, NULL, &bp, &it, &err), 0);
  CU_ASSERT_EQUAL(qt_batch_iter_count(it), 4);
  CU_ASSERT_PTR_NULL(qt_batch_iter_order(it));
  qt_batch batch;
  CU_ASSERT_EQUAL(qt_batch_iter_next(it, &batch, &err), QT_EINVAL);
  size_t first_orders[3][10];
  for (uint64_t epoch = 0; epoch < 3; epoch++) {
    CU_ASSERT_EQUAL_FATAL(qt_batch_iter_start(it, epoch, 0, &err), 0);
    int seen[10] = {0}, sizes_ok = 1, consistent = 1;
    size_t batches = 0, pos = 0;
    int rc;
    while ((rc = qt_batch_iter_next(it, &batch, &err)) == 1) {
      sizes_ok &= batch.size == (batches < 3 ? 3u : 1u);
      CU_ASSERT_EQUAL(batch.width, 1);
      for (size_t i = 0; i < batch.size; i++) {
        size_t index = batch.indices[i];
        seen[index]++;
        consistent &= batch.inputs[i] == (float)index && batch.labels[i] == ds->labels[index];
        consistent &= batch.targets[i * 2 + (size_t)batch.labels[i]] == 1.0f;
        first_orders[epoch][pos++] = index;
      }
      batches++;
    }
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_EQUAL(batches, 4);
    CU_ASSERT_TRUE(sizes_ok);
    CU_ASSERT_TRUE(consistent);
    int once = 1;
    for (int i = 0; i < 10; i++) once &= seen[i] == 1;
    CU_ASSERT_TRUE(once);
    CU_ASSERT_EQUAL(memcmp(qt_batch_iter_order(it), first_orders[epoch], sizeof first_orders[0]),
                    0);
  }
  /* Epochs differ from one another. */
  CU_ASSERT_NOT_EQUAL(memcmp(first_orders[0], first_orders[1], sizeof first_orders[0]), 0);
  CU_ASSERT_NOT_EQUAL(memcmp(first_orders[1], first_orders[2], sizeof first_orders[0]), 0);
  /* A new iterator with the same seed replays epoch 1; another seed does not. */
  qt_batch_iter_t *again;
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_init(ds, NULL, NULL, &bp, &again, &err), 0);
  qt_batch_iter_start(again, 1, 0, &err);
  CU_ASSERT_EQUAL(memcmp(qt_batch_iter_order(again), first_orders[1], sizeof first_orders[1]), 0);
  qt_batch_iter_free(again);
  bp.seed = 43;
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_init(ds, NULL, NULL, &bp, &again, &err), 0);
  qt_batch_iter_start(again, 1, 0, &err);
  CU_ASSERT_NOT_EQUAL(memcmp(qt_batch_iter_order(again), first_orders[1], sizeof first_orders[1]),
                      0);
  qt_batch_iter_free(again);
  /* drop_last: 3 batches of 3; no shuffle: dataset order. */
  bp.drop_last = 1;
  bp.shuffle = 0;
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_init(ds, NULL, NULL, &bp, &again, &err), 0);
  CU_ASSERT_EQUAL(qt_batch_iter_count(again), 3);
  qt_batch_iter_start(again, 5, 0, &err);
  for (size_t i = 0; i < 10; i++) CU_ASSERT_EQUAL(qt_batch_iter_order(again)[i], i);
  size_t total = 0;
  while (qt_batch_iter_next(again, &batch, &err) == 1) total += batch.size;
  CU_ASSERT_EQUAL(total, 9);
  CU_ASSERT_EQUAL(qt_batch_iter_start(again, 0, 4, &err), QT_EINVAL);
  qt_batch_iter_free(again);
  qt_batch_iter_free(it);
  qt_dataset_free(ds);
}

/* An image dataset of n 8x8 RGB images (pattern shifted by i), labels i % 3. */
static qt_dataset *make_images(size_t n) {
  make_dirs("imgs/c0");
  make_dirs("imgs/c1");
  make_dirs("imgs/c2");
  for (size_t i = 0; i < n; i++) {
    uint8_t img[8 * 8 * 3];
    pattern(img, 8, 8);
    for (size_t k = 0; k < sizeof img; k++) img[k] = (uint8_t)(img[k] + 17 * i);
    char name[64];
    snprintf(name, sizeof name, "imgs/c%zu/%02zu.png", i % 3, i);
    write_png(tmp_path(name), 8, 8, PNG_COLOR_TYPE_RGB, 8, img, NULL, 0);
  }
  qt_dataset *ds = NULL;
  qt_err err;
  qt_image_folder_params p = qt_image_folder_default_params();
  if (qt_dataset_load_image_folder(tmp_path("imgs"), &p, &ds, &err) != 0) {
    fprintf(stderr, "make_images: %s\n", err.msg);
    return NULL;
  }
  return ds;
}

/* Copies of every batch of an epoch (inputs and targets), from first_batch. */
static size_t run_epoch(qt_batch_iter_t *it, uint64_t epoch, size_t first_batch, float *inputs,
                        float *targets, size_t input_floats, size_t target_floats) {
  qt_err err;
  qt_batch batch;
  size_t count = 0;
  if (qt_batch_iter_start(it, epoch, first_batch, &err) != 0) return 0;
  while (qt_batch_iter_next(it, &batch, &err) == 1) {
    memcpy(inputs + count * input_floats, batch.inputs,
           batch.size * batch.channels * batch.height * batch.width * sizeof(float));
    memcpy(targets + count * target_floats, batch.targets,
           batch.size * batch.n_classes * sizeof(float));
    count++;
  }
  return count;
}

static void test_batches_images_reproducible(void) {
  qt_dataset *ds = make_images(9);
  CU_ASSERT_PTR_NOT_NULL_FATAL(ds);
  qt_preprocess_params pre = qt_preprocess_default_params();
  pre.image_size = 6;
  qt_augment_params aug = qt_augment_default_params();
  aug.auto_augment = QT_AUTO_AUGMENT_RAND;
  aug.mixup_alpha = 0.8;
  aug.cutmix_alpha = 1.0;
  aug.label_smoothing = 0.1;
  qt_batch_params bp = qt_batch_default_params();
  bp.batch_size = 4;
  bp.seed = 99;
  enum { IN = 4 * 3 * 6 * 6, TG = 4 * 3 };
  float in1[3 * IN], tg1[3 * TG], in2[3 * IN], tg2[3 * TG];
  qt_batch_iter_t *one, *three;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_init(ds, &pre, &aug, &bp, &one, &err), 0);
  bp.threads = 3;
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_init(ds, &pre, &aug, &bp, &three, &err), 0);
  memset(in1, 0, sizeof in1);
  memset(in2, 0, sizeof in2);
  memset(tg1, 0, sizeof tg1);
  memset(tg2, 0, sizeof tg2);
  CU_ASSERT_EQUAL(run_epoch(one, 2, 0, in1, tg1, IN, TG), 3);
  CU_ASSERT_EQUAL(run_epoch(three, 2, 0, in2, tg2, IN, TG), 3);
  /* Threads change nothing. */
  CU_ASSERT_EQUAL(memcmp(in1, in2, sizeof in1), 0);
  CU_ASSERT_EQUAL(memcmp(tg1, tg2, sizeof tg1), 0);
  /* Resuming at batch 1 reproduces batches 1 and 2. */
  float in3[3 * IN], tg3[3 * TG];
  memset(in3, 0, sizeof in3);
  memset(tg3, 0, sizeof tg3);
  CU_ASSERT_EQUAL(run_epoch(one, 2, 1, in3, tg3, IN, TG), 2);
  CU_ASSERT_EQUAL(memcmp(in3, in1 + IN, 2 * IN * sizeof(float)), 0);
  CU_ASSERT_EQUAL(memcmp(tg3, tg1 + TG, 2 * TG * sizeof(float)), 0);
  /* Another epoch gives other inputs. */
  CU_ASSERT_EQUAL(run_epoch(one, 3, 0, in3, tg3, IN, TG), 3);
  CU_ASSERT_NOT_EQUAL(memcmp(in3, in1, sizeof in3), 0);
  /* Targets are distributions. */
  int sums = 1;
  for (int r = 0; r < 9; r++) {
    double s = 0.0;
    for (int k = 0; k < 3; k++) s += tg1[r * 3 + k];
    sums &= fabs(s - 1.0) < 1e-6;
  }
  CU_ASSERT_TRUE(sums);
  qt_batch_iter_free(one);
  qt_batch_iter_free(three);

  /* Evaluation: no augmentation, the eval transform, one-hot targets. */
  bp.augment = 0;
  bp.shuffle = 0;
  bp.threads = 1;
  pre.image_size = 8;
  pre.crop_pct = 1.0;
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_init(ds, &pre, &aug, &bp, &one, &err), 0);
  qt_batch batch;
  qt_batch_iter_start(one, 0, 0, &err);
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_next(one, &batch, &err), 1);
  float expect[3 * 8 * 8];
  CU_ASSERT_EQUAL(qt_image_to_float(ds->images, 8, 8, 3, 3, pre.mean, pre.std, expect, &err), 0);
  CU_ASSERT_EQUAL(memcmp(batch.inputs, expect, sizeof expect), 0);
  CU_ASSERT_EQUAL(batch.targets[0], 1.0f);
  CU_ASSERT_EQUAL(batch.targets[1], 0.0f);
  CU_ASSERT_EQUAL(batch.lambda, 1.0);
  qt_batch_iter_free(one);

  /* A gray dataset for an RGB model: the plane is repeated. */
  qt_dataset *gray = NULL;
  unsigned char images[16 + 2 * 4 * 4], labels[8 + 2];
  const unsigned char y[2] = {0, 1};
  size_t ni = idx_images(images, 2, 4, 4), nl = idx_labels(labels, y, 2);
  write_bytes(tmp_path("g-images"), images, ni);
  write_bytes(tmp_path("g-labels"), labels, nl);
  CU_ASSERT_EQUAL_FATAL(
      qt_dataset_load_idx(tmp_path("g-images"), tmp_path("g-labels"), NULL, 0, &gray, &err), 0);
  pre.image_size = 4;
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_init(gray, &pre, NULL, &bp, &one, &err), 0);
  qt_batch_iter_start(one, 0, 0, &err);
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_next(one, &batch, &err), 1);
  CU_ASSERT_EQUAL(batch.channels, 3);
  /* Pixel (0, 0, 1) is 1: channel c gives (1/255 - mean[c]) / std[c]. */
  for (int c = 0; c < 3; c++)
    CU_ASSERT_EQUAL(batch.inputs[c * 16 + 1],
                    (1.0f / 255.0f - (float)pre.mean[c]) / (float)pre.std[c]);
  qt_batch_iter_free(one);
  qt_dataset_free(gray);
  qt_dataset_free(ds);
}

/* Prefetching (the next batch built in the background while the caller
 * holds the current one) gives the batches of an iterator without it: a
 * whole epoch, a resumed one, and an epoch abandoned with a build in
 * flight; consecutive batches come from the two slots in turn. */
static void test_batches_prefetch(void) {
  qt_dataset *ds = make_images(11);
  CU_ASSERT_PTR_NOT_NULL_FATAL(ds);
  qt_preprocess_params pre = qt_preprocess_default_params();
  pre.image_size = 6;
  qt_augment_params aug = qt_augment_default_params();
  aug.auto_augment = QT_AUTO_AUGMENT_RAND;
  aug.mixup_alpha = 0.8;
  aug.cutmix_alpha = 1.0;
  qt_batch_params bp = qt_batch_default_params();
  bp.batch_size = 3;
  bp.seed = 5;
  enum { B = 4, IN = 3 * 3 * 6 * 6, TG = 3 * 3 };
  float in1[B * IN] = {0}, tg1[B * TG] = {0}, in2[B * IN] = {0}, tg2[B * TG] = {0};
  qt_batch_iter_t *plain, *ahead;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_init(ds, &pre, &aug, &bp, &plain, &err), 0);
  bp.threads = 2;
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_init(ds, &pre, &aug, &bp, &ahead, &err), 0);
  size_t bytes = 0;
  CU_ASSERT_PTR_NULL(qt_batch_iter_inputs_buffer(ahead, 1, &bytes));
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_set_prefetch(ahead, 1, &err), 0);
  float *slot0 = qt_batch_iter_inputs_buffer(ahead, 0, &bytes);
  float *slot1 = qt_batch_iter_inputs_buffer(ahead, 1, &bytes);
  CU_ASSERT_PTR_NOT_NULL_FATAL(slot1);
  CU_ASSERT_EQUAL(bytes, (size_t)IN * sizeof(float));

  for (uint64_t epoch = 1; epoch <= 2; epoch++) {
    CU_ASSERT_EQUAL(run_epoch(plain, epoch, 0, in1, tg1, IN, TG), B);
    CU_ASSERT_EQUAL(run_epoch(ahead, epoch, 0, in2, tg2, IN, TG), B);
    CU_ASSERT_EQUAL(memcmp(in1, in2, sizeof in1), 0);
    CU_ASSERT_EQUAL(memcmp(tg1, tg2, sizeof tg1), 0);
  }
  /* Resumed at batch 2 of epoch 2: batches 2 and 3. */
  memset(in2, 0, sizeof in2);
  memset(tg2, 0, sizeof tg2);
  CU_ASSERT_EQUAL(run_epoch(ahead, 2, 2, in2, tg2, IN, TG), 2);
  CU_ASSERT_EQUAL(memcmp(in2, in1 + 2 * IN, 2 * IN * sizeof(float)), 0);
  CU_ASSERT_EQUAL(memcmp(tg2, tg1 + 2 * TG, 2 * TG * sizeof(float)), 0);

  /* One batch of epoch 7 (batch 1 is then being built), then epoch 2 again;
   * the slots alternate. */
  qt_batch batch;
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_start(ahead, 7, 0, &err), 0);
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_next(ahead, &batch, &err), 1);
  float *first = batch.inputs;
  CU_ASSERT(first == slot0 || first == slot1);
  memset(in2, 0, sizeof in2);
  CU_ASSERT_EQUAL(run_epoch(ahead, 2, 0, in2, tg2, IN, TG), B);
  CU_ASSERT_EQUAL(memcmp(in1, in2, sizeof in1), 0);
  CU_ASSERT_EQUAL_FATAL(qt_batch_iter_start(ahead, 2, 0, &err), 0);
  float *seen[B];
  for (int b = 0; b < B; b++) {
    CU_ASSERT_EQUAL_FATAL(qt_batch_iter_next(ahead, &batch, &err), 1);
    seen[b] = batch.inputs;
    CU_ASSERT_EQUAL(memcmp(batch.inputs, in1 + b * IN, batch.size * IN / 3 * sizeof(float)), 0);
  }
  CU_ASSERT(seen[0] != seen[1] && seen[0] == seen[2] && seen[1] == seen[3]);
  CU_ASSERT_EQUAL(qt_batch_iter_next(ahead, &batch, &err), 0);

  /* Turned off again: one slot, the same batches. */
  CU_ASSERT_EQUAL(qt_batch_iter_set_prefetch(ahead, 0, &err), 0);
  memset(in2, 0, sizeof in2);
  CU_ASSERT_EQUAL(run_epoch(ahead, 1, 0, in2, tg2, IN, TG), B);
  CU_ASSERT_EQUAL(run_epoch(plain, 1, 0, in1, tg1, IN, TG), B);
  CU_ASSERT_EQUAL(memcmp(in1, in2, sizeof in1), 0);
  qt_batch_iter_free(plain);
  qt_batch_iter_free(ahead);
  qt_dataset_free(ds);
}

/* ------------------------------------------------------------------------- */
/* Golden numbers from torchvision and Pillow                                 */
/* ------------------------------------------------------------------------- */

#define GOLDEN_PATH QT_SOURCE_DIR "/tests/fixtures/data/torchvision-golden.json"

/* The source images of tools/make-data-golden.py. */
static void golden_source(const char *name, uint8_t *img, size_t *h, size_t *w, size_t *c) {
  int big = strcmp(name, "big") == 0, gray = strcmp(name, "gray") == 0;
  *h = big ? 18 : 10;
  *w = big ? 16 : 12;
  *c = gray ? 1 : 3;
  for (size_t y = 0; y < *h; y++)
    for (size_t x = 0; x < *w; x++) {
      uint8_t px[3] = {(uint8_t)((37 * y + 11 * x * x) % 256),
                       (uint8_t)((200 + 256 * 4 - 13 * x + 7 * y) % 256),
                       (uint8_t)((29 * x * y + 5) % 256)};
      memcpy(img + (y * *w + x) * *c, px, *c);
    }
}

static size_t unhex(const char *hex, uint8_t *out, size_t cap) {
  size_t n = strlen(hex) / 2;
  if (n > cap) return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned v;
    if (sscanf(hex + 2 * i, "%2x", &v) != 1) return 0;
    out[i] = (uint8_t)v;
  }
  return n;
}

static qt_augment_op op_by_name(const char *name) {
  for (int op = 0; op < QT_AUGMENT_OP_COUNT; op++)
    if (strcmp(qt_augment_op_name((qt_augment_op)op), name) == 0) return (qt_augment_op)op;
  return QT_AUGMENT_OP_COUNT;
}

static void read_triple(json_t *array, double out[3]) {
  for (size_t i = 0; i < 3; i++) out[i] = json_real_value(json_array_get(array, i));
}

static void test_golden_torchvision(void) {
  json_t *doc = NULL;
  qt_err err;
  CU_ASSERT_EQUAL_FATAL(qt_json_load_file(GOLDEN_PATH, &doc, &err), 0);
  CU_ASSERT_EQUAL(json_integer_value(json_object_get(doc, "version")), 1);
  json_t *cases = json_object_get(doc, "cases");
  CU_ASSERT_TRUE_FATAL(json_is_array(cases) && json_array_size(cases) > 50);
  static uint8_t src[18 * 16 * 3], expect[8192], got[8192];
  static float got_f[2048];
  size_t checked = 0, failed = 0;
  for (size_t k = 0; k < json_array_size(cases); k++) {
    json_t *c = json_array_get(cases, k);
    const char *kind = json_string_value(json_object_get(c, "kind"));
    size_t h, w, ch;
    golden_source(json_string_value(json_object_get(c, "src")), src, &h, &w, &ch);
    size_t n = unhex(json_string_value(json_object_get(c, "out")), expect, sizeof expect);
    CU_ASSERT_TRUE_FATAL(n > 0);
    char what[128];
    int rc = -1;
    size_t produced = 0;
    int floats = 0;
    if (strcmp(kind, "resize") == 0) {
      size_t oh = (size_t)json_integer_value(json_object_get(c, "height"));
      size_t ow = (size_t)json_integer_value(json_object_get(c, "width"));
      const char *interp = json_string_value(json_object_get(c, "interpolation"));
      snprintf(what, sizeof what, "resize %zux%zux%zu -> %zux%zu %s", h, w, ch, oh, ow, interp);
      rc = qt_image_resize(
          src, h, w, ch, got, oh, ow,
          strcmp(interp, "bicubic") == 0 ? QT_INTERPOLATION_BICUBIC : QT_INTERPOLATION_BILINEAR,
          &err);
      produced = oh * ow * ch;
    } else if (strcmp(kind, "op") == 0) {
      const char *name = json_string_value(json_object_get(c, "op"));
      double magnitude = json_real_value(json_object_get(c, "magnitude"));
      snprintf(what, sizeof what, "%s(%g) on %s", name, magnitude,
               json_string_value(json_object_get(c, "src")));
      rc = qt_augment_apply_op(src, got, h, w, ch, op_by_name(name), magnitude, &err);
      produced = h * w * ch;
    } else if (strcmp(kind, "normalize") == 0) {
      double mean[3], std[3];
      read_triple(json_object_get(c, "mean"), mean);
      read_triple(json_object_get(c, "std"), std);
      snprintf(what, sizeof what, "ToTensor + Normalize");
      rc = qt_image_to_float(src, h, w, ch, 3, mean, std, got_f, &err);
      produced = h * w * 3 * sizeof(float);
      floats = 1;
    } else if (strcmp(kind, "eval") == 0) {
      qt_preprocess_params p = qt_preprocess_default_params();
      p.image_size = (size_t)json_integer_value(json_object_get(c, "size"));
      p.crop_pct = json_real_value(json_object_get(c, "crop_pct"));
      p.interpolation =
          strcmp(json_string_value(json_object_get(c, "interpolation")), "bicubic") == 0
              ? QT_INTERPOLATION_BICUBIC
              : QT_INTERPOLATION_BILINEAR;
      read_triple(json_object_get(c, "mean"), p.mean);
      read_triple(json_object_get(c, "std"), p.std);
      snprintf(what, sizeof what, "eval transform size %zu crop_pct %g", p.image_size, p.crop_pct);
      rc = qt_image_eval_transform(&p, src, h, w, ch, got_f, &err);
      produced = 3 * p.image_size * p.image_size * sizeof(float);
      floats = 1;
    } else {
      CU_FAIL("unknown golden case kind");
      continue;
    }
    checked++;
    const uint8_t *mine = floats ? (const uint8_t *)got_f : got;
    if (rc != 0 || produced != n || memcmp(mine, expect, n) != 0) {
      failed++;
      size_t diffs = 0, first = 0;
      for (size_t i = 0; i < n && i < produced; i++)
        if (mine[i] != expect[i] && diffs++ == 0) first = i;
      fprintf(stderr,
              "\n  golden mismatch: %s: rc %d, %zu of %zu bytes differ (first at %zu: %u vs %u)",
              what, rc, diffs, n, first, mine[first], expect[first]);
    }
  }
  fprintf(stderr, "\n  %zu golden cases checked, %zu mismatched", checked, failed);
  CU_ASSERT_EQUAL(failed, 0);

  /* The magnitude bins of TrivialAugmentWide and RandAugment, every op, as
   * torchvision's _augmentation_space has them (float32). torch.linspace's
   * vectorized CPU kernel computes some values differently from its scalar
   * formula (which qtune follows), by the CPU's vector width, so values may
   * differ in the last bits; what the ops consume must agree exactly: the
   * truncated pixel count of translations and the bits of Posterize. */
  json_t *tables = json_object_get(doc, "magnitudes");
  CU_ASSERT_TRUE_FATAL(json_is_array(tables) && json_array_size(tables) >= 28);
  size_t values = 0, wrong = 0;
  for (size_t k = 0; k < json_array_size(tables); k++) {
    json_t *t = json_array_get(tables, k);
    qt_auto_augment policy = strcmp(json_string_value(json_object_get(t, "policy")), "trivial") == 0
                                 ? QT_AUTO_AUGMENT_TRIVIAL
                                 : QT_AUTO_AUGMENT_RAND;
    int bins = (int)json_integer_value(json_object_get(t, "num_bins"));
    size_t h = (size_t)json_integer_value(json_object_get(t, "height"));
    size_t w = (size_t)json_integer_value(json_object_get(t, "width"));
    const char *name = json_string_value(json_object_get(t, "op"));
    qt_augment_op op = op_by_name(name);
    CU_ASSERT_TRUE_FATAL(op < QT_AUGMENT_OP_COUNT);
    CU_ASSERT_EQUAL(qt_augment_op_signed(op), json_is_true(json_object_get(t, "signed")));
    json_t *list = json_object_get(t, "values");
    for (size_t b = 0; b < json_array_size(list); b++) {
      float expect_v = (float)json_number_value(json_array_get(list, b));
      float mine = (float)qt_augment_op_magnitude(policy, op, (int)b, bins, h, w);
      float lo = nextafterf(nextafterf(expect_v, -INFINITY), -INFINITY);
      float hi = nextafterf(nextafterf(expect_v, INFINITY), INFINITY);
      int integral = op == QT_AUGMENT_OP_TRANSLATE_X || op == QT_AUGMENT_OP_TRANSLATE_Y ||
                     op == QT_AUGMENT_OP_POSTERIZE;
      values++;
      if (mine < lo || mine > hi || (integral && truncf(mine) != truncf(expect_v))) {
        wrong++;
        fprintf(stderr, "\n  magnitude mismatch: %s bin %zu of %d: %.9g vs %.9g", name, b, bins,
                (double)mine, (double)expect_v);
      }
    }
  }
  fprintf(stderr, "\n  %zu magnitude values checked, %zu mismatched\n", values, wrong);
  CU_ASSERT_EQUAL(wrong, 0);
  json_decref(doc);
}

static const qt_test_case cases[] = {
    {"idx round trip, plain and gzip", test_idx_round_trip},
    {"idx corruptions are clear errors", test_idx_corruptions},
    {"idx Fashion-MNIST when installed", test_idx_fashion_mnist},
    {"image folder decodes every PNG/JPEG kind, skips failures", test_image_folder_decode},
    {"image load errors", test_image_load_errors},
    {"image folder errors: classes", test_image_folder_errors},
    {"image folder errors: a path too long", test_image_folder_long_path},
    {"image folder common size", test_image_folder_sizes},
    {"train/val/test layouts", test_split_layout},
    {"csv tabular data", test_csv},
    {"stratified split", test_split_stratified},
    {"resize exact values (PIL)", test_resize_exact},
    {"center crop and resize sizes", test_crop_and_sizes},
    {"normalize and eval transform", test_normalize},
    {"augment pixel ops", test_augment_pixel_ops},
    {"augment geometric ops", test_augment_geometric_ops},
    {"augment magnitude bins", test_augment_magnitudes},
    {"trivial/rand augment deterministic", test_augment_policies_deterministic},
    {"random resized crop", test_random_resized_crop},
    {"golden numbers from torchvision and Pillow", test_golden_torchvision},
    {"mixup, cutmix, smoothing", test_mixup_cutmix},
    {"batches cover each epoch once", test_batches_cover_epoch},
    {"image batches reproducible (threads, resume)", test_batches_images_reproducible},
    {"prefetched batches are the same (epochs, resume, abandoned epoch)", test_batches_prefetch},
    {NULL, NULL}};

QT_TEST_MAIN("data", cases)

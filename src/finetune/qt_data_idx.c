/*
 * qt_data_idx.c - MNIST-style IDX files (Yann LeCun's format, also used by
 * Fashion-MNIST), gzip-compressed or not.
 *
 * Layout: a 4-byte magic number (two zero bytes, an element type code, the
 * number of dimensions), one big-endian uint32 per dimension, then the
 * elements in row-major order. Only unsigned bytes (type 0x08) are read:
 * images with 3 dimensions (n, height, width), labels with 1 (n).
 *
 * zlib's gzread reads plain files as they are, so one path serves both; a
 * file is read in one streaming pass into its final array, and the body size
 * is checked against the header before anything proportional to it is
 * allocated beyond the limits below.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "finetune/qt_data_internal.h"

/* Largest image side and sample count accepted (the format allows 2^32 - 1). */
#define IDX_MAX_SIDE 65535u
#define IDX_MAX_COUNT 100000000u
#define IDX_MAX_BYTES (1ull << 34)

/* Reads up to n bytes; returns the count read, or -1 with the gzip error in
 * err. gzread takes an unsigned count, so large reads go in chunks. */
static long long read_all(gzFile f, void *dst, size_t n, const char *path, qt_err *err) {
  size_t got = 0;
  while (got < n) {
    size_t chunk = n - got;
    if (chunk > (1u << 30)) chunk = 1u << 30;
    int r = gzread(f, (char *)dst + got, (unsigned)chunk);
    if (r < 0) {
      int code = 0;
      const char *msg = gzerror(f, &code);
      qt_err_set(err, QT_EFORMAT, "%s: corrupt compressed data (%s)", path,
                 msg && *msg ? msg : "zlib error");
      return -1;
    }
    if (r == 0) break;
    got += (size_t)r;
  }
  return (long long)got;
}

static uint32_t be32(const unsigned char *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Opens an IDX file, checks its header and reads its body into a malloc'ed
 * array; dims gets ndim sizes. */
static int read_idx(const char *path, unsigned expect_dims, uint32_t *dims, uint8_t **body,
                    size_t *body_size, qt_err *err) {
  *body = NULL;
  errno = 0;
  gzFile f = gzopen(path, "rb");
  if (!f) {
    int e = errno;
    return qt_err_set(err, e == ENOENT ? QT_ENOENT : QT_EIO, "%s: %s", path,
                      e ? strerror(e) : "cannot open");
  }
  gzbuffer(f, 1u << 17);
  int rc = 0;
  unsigned char header[4 + 4 * 3];
  uint8_t *data = NULL;
  long long got = read_all(f, header, 4, path, err);
  if (got < 0) {
    rc = QT_EFORMAT;
    goto done;
  }
  if (got < 4) {
    rc = qt_err_set(err, QT_EFORMAT, "%s: truncated: %lld bytes, shorter than an IDX header", path,
                    got);
    goto done;
  }
  if (header[0] != 0 || header[1] != 0) {
    rc = qt_err_set(err, QT_EFORMAT,
                    "%s: not an IDX file (magic number 0x%02x%02x%02x%02x, expected 0x0000080%u)",
                    path, header[0], header[1], header[2], header[3], expect_dims);
    goto done;
  }
  if (header[2] != 0x08) {
    rc = qt_err_set(err, QT_EFORMAT,
                    "%s: IDX element type 0x%02x is not supported (only unsigned bytes, 0x08)",
                    path, header[2]);
    goto done;
  }
  if (header[3] != expect_dims) {
    rc = qt_err_set(err, QT_EFORMAT, "%s: IDX file with %u dimension%s, expected %u (%s)", path,
                    header[3], header[3] == 1 ? "" : "s", expect_dims,
                    expect_dims == 3 ? "images: count, height, width" : "labels: count");
    goto done;
  }
  got = read_all(f, header + 4, 4 * expect_dims, path, err);
  if (got < 0) {
    rc = QT_EFORMAT;
    goto done;
  }
  if (got < (long long)(4 * expect_dims)) {
    rc = qt_err_set(err, QT_EFORMAT, "%s: truncated in the header (%lld of %u dimension bytes)",
                    path, got, 4 * expect_dims);
    goto done;
  }
  unsigned long long total = 1;
  for (unsigned d = 0; d < expect_dims; d++) {
    dims[d] = be32(header + 4 + 4 * d);
    unsigned long long limit = d == 0 ? IDX_MAX_COUNT : IDX_MAX_SIDE;
    if (dims[d] == 0 || dims[d] > limit) {
      rc = qt_err_set(err, QT_EFORMAT, "%s: dimension %u is %u (must be 1..%llu)", path, d, dims[d],
                      limit);
      goto done;
    }
    total *= dims[d];
  }
  if (total > IDX_MAX_BYTES) {
    rc = qt_err_set(err, QT_EFORMAT, "%s: %llu bytes of data is over the limit of %llu", path,
                    total, (unsigned long long)IDX_MAX_BYTES);
    goto done;
  }
  data = malloc((size_t)total);
  if (!data) {
    rc = qt_err_set(err, QT_ENOMEM, "%s: out of memory for %llu bytes", path, total);
    goto done;
  }
  got = read_all(f, data, (size_t)total, path, err);
  if (got < 0) {
    rc = QT_EFORMAT;
    goto done;
  }
  if ((unsigned long long)got < total) {
    rc = qt_err_set(err, QT_EFORMAT, "%s: truncated: expected %llu bytes of data, got %lld", path,
                    total, got);
    goto done;
  }
  unsigned char extra;
  got = read_all(f, &extra, 1, path, err);
  if (got < 0) {
    rc = QT_EFORMAT;
    goto done;
  }
  if (got > 0) {
    rc =
        qt_err_set(err, QT_EFORMAT, "%s: trailing bytes after the %llu bytes of data", path, total);
    goto done;
  }
  *body = data;
  *body_size = (size_t)total;
  data = NULL;
done:
  free(data);
  gzclose(f);
  return rc;
}

int qt_dataset_load_idx(const char *images_path, const char *labels_path,
                        const char *const *class_names, size_t n_class_names, qt_dataset **out,
                        qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_dataset_load_idx: out is NULL");
  *out = NULL;
  if (!images_path || !labels_path)
    return qt_err_set(err, QT_EINVAL, "qt_dataset_load_idx: NULL path");
  if (class_names && n_class_names < 2)
    return qt_err_set(err, QT_EINVAL, "qt_dataset_load_idx: %zu class names (at least 2)",
                      n_class_names);

  uint32_t idims[3], ldims[1];
  uint8_t *pixels = NULL, *labels = NULL;
  size_t pixel_bytes = 0, label_bytes = 0;
  qt_dataset *ds = NULL;
  int rc = read_idx(images_path, 3, idims, &pixels, &pixel_bytes, err);
  if (rc < 0) return rc;
  if ((rc = read_idx(labels_path, 1, ldims, &labels, &label_bytes, err)) < 0) goto fail;
  if (ldims[0] != idims[0]) {
    rc = qt_err_set(err, QT_ESCHEMA, "%s has %u images but %s has %u labels", images_path, idims[0],
                    labels_path, ldims[0]);
    goto fail;
  }
  size_t n = idims[0];
  unsigned max_label = 0;
  for (size_t i = 0; i < n; i++)
    if (labels[i] > max_label) max_label = labels[i];
  if (class_names && max_label >= n_class_names) {
    size_t i = 0;
    while (labels[i] < n_class_names) i++;
    rc = qt_err_set(err, QT_ESCHEMA, "%s: label %u of sample %zu is out of range (%zu classes)",
                    labels_path, labels[i], i, n_class_names);
    goto fail;
  }

  if ((rc = qt__dataset_new(QT_DATASET_KIND_IMAGE, images_path, &ds, err)) < 0) goto fail;
  if (class_names) {
    rc = qt__dataset_set_classes(ds, class_names, n_class_names, err);
  } else {
    char names[256][4];
    const char *ptrs[256];
    for (unsigned k = 0; k <= max_label; k++) {
      snprintf(names[k], sizeof names[k], "%u", k);
      ptrs[k] = names[k];
    }
    rc = qt__dataset_set_classes(ds, ptrs, (size_t)max_label + 1, err);
  }
  if (rc < 0) goto fail;
  ds->labels = malloc(n * sizeof *ds->labels);
  if (!ds->labels) {
    rc = qt_err_set(err, QT_ENOMEM, "%s: out of memory for %zu labels", labels_path, n);
    goto fail;
  }
  for (size_t i = 0; i < n; i++) ds->labels[i] = labels[i];
  ds->n = n;
  ds->height = idims[1];
  ds->width = idims[2];
  ds->channels = 1;
  ds->images = pixels; /* the body is already (n, height, width), 1 channel */
  pixels = NULL;
  free(labels);
  labels = NULL;
  if ((rc = qt__dataset_check_classes(ds, err)) < 0) goto fail;
  *out = ds;
  return 0;
fail:
  free(pixels);
  free(labels);
  qt_dataset_free(ds);
  return rc;
}

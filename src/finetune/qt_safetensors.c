/*
 * qt_safetensors.c - reading and writing safetensors files, and the float16 /
 * bfloat16 conversions they need. The format, the checks and the guarantees
 * are documented in qt_finetune.h ("safetensors").
 *
 * Reading keeps the file open and the parsed JSON header alive: tensor names
 * and metadata strings point into the jansson objects, so opening a file with
 * thousands of tensors allocates only the header text, its JSON tree, one
 * tensor table and one array of dimensions. Tensor bytes are read with
 * pread() on demand, which is safe from several threads at once.
 *
 * Writing builds the header with jansson in the reference implementation's
 * order, writes the bytes to a temporary file beside the destination, and
 * renames it into place after fsync.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "finetune/qt_finetune.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define QT__HOST_LITTLE_ENDIAN 1
#else
#define QT__HOST_LITTLE_ENDIAN 0
#endif

/* Elements converted per chunk when reading or writing through a buffer. */
#define CHUNK_ELEMENTS 4096

/* ------------------------------------------------------------------------- */
/* Element types                                                              */
/* ------------------------------------------------------------------------- */

static const struct {
  const char *name;
  size_t size;
} dtype_table[QT_DTYPE_COUNT] = {
    [QT_DTYPE_BOOL] = {"BOOL", 1},       [QT_DTYPE_U8] = {"U8", 1},
    [QT_DTYPE_I8] = {"I8", 1},           [QT_DTYPE_F8_E5M2] = {"F8_E5M2", 1},
    [QT_DTYPE_F8_E4M3] = {"F8_E4M3", 1}, [QT_DTYPE_I16] = {"I16", 2},
    [QT_DTYPE_U16] = {"U16", 2},         [QT_DTYPE_F16] = {"F16", 2},
    [QT_DTYPE_BF16] = {"BF16", 2},       [QT_DTYPE_I32] = {"I32", 4},
    [QT_DTYPE_U32] = {"U32", 4},         [QT_DTYPE_F32] = {"F32", 4},
    [QT_DTYPE_F64] = {"F64", 8},         [QT_DTYPE_I64] = {"I64", 8},
    [QT_DTYPE_U64] = {"U64", 8},
};

const char *qt_dtype_name(qt_dtype dtype) {
  return (unsigned)dtype < QT_DTYPE_COUNT ? dtype_table[dtype].name : "unknown";
}

size_t qt_dtype_size(qt_dtype dtype) {
  return (unsigned)dtype < QT_DTYPE_COUNT ? dtype_table[dtype].size : 0;
}

int qt_dtype_parse(const char *text, qt_dtype *out) {
  if (!text || !out) return QT_EINVAL;
  for (int d = 0; d < QT_DTYPE_COUNT; d++) {
    if (strcmp(text, dtype_table[d].name) == 0) {
      *out = (qt_dtype)d;
      return 0;
    }
  }
  return QT_EINVAL;
}

/* ------------------------------------------------------------------------- */
/* Scalar conversions                                                         */
/* ------------------------------------------------------------------------- */

static uint32_t f32_bits(float value) {
  uint32_t bits;
  memcpy(&bits, &value, sizeof bits);
  return bits;
}

static float f32_from_bits(uint32_t bits) {
  float value;
  memcpy(&value, &bits, sizeof value);
  return value;
}

float qt_bf16_to_f32(uint16_t bits) {
  return f32_from_bits((uint32_t)bits << 16);
}

uint16_t qt_f32_to_bf16(float value) {
  uint32_t bits = f32_bits(value);
  /* NaN: truncation could clear every payload bit and make an infinity, so
   * keep the sign and the top payload bits and force the quiet bit. */
  if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x0040u);
  /* Round to nearest, ties to even: add just under half an ulp of the
   * result, plus one when the kept part is odd. A carry out of the mantissa
   * bumps the exponent, which is exactly right (up to infinity). */
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return (uint16_t)((bits + rounding) >> 16);
}

float qt_f16_to_f32(uint16_t bits) {
  uint32_t sign = (uint32_t)(bits & 0x8000u) << 16;
  uint32_t exponent = (bits >> 10) & 0x1fu;
  uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0x1f) return f32_from_bits(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0) return f32_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  /* Zero or subnormal: mantissa * 2^-24, exact in float32. */
  float magnitude = ldexpf((float)mantissa, -24);
  return sign ? -magnitude : magnitude;
}

uint16_t qt_f32_to_f16(float value) {
  uint32_t bits = f32_bits(value);
  uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
  uint32_t magnitude = bits & 0x7fffffffu;
  uint32_t exponent = magnitude >> 23; /* float32's biased exponent */
  uint32_t mantissa = magnitude & 0x7fffffu;

  if (exponent == 0xff) {
    if (mantissa == 0) return sign | 0x7c00u;
    /* NaN: quiet, with the top payload bits kept. */
    return (uint16_t)(sign | 0x7e00u | (mantissa >> 13));
  }
  /* 2^16 and above is beyond the largest half (65504) even before rounding. */
  if (exponent >= 143) return sign | 0x7c00u;
  if (exponent >= 113) {
    /* A normal half: rebias the exponent (127 -> 15) and round the 23-bit
     * mantissa to 10 bits. A carry may turn 65504 + 16 into infinity, as it
     * should. */
    uint32_t half = ((exponent - 112u) << 10) | (mantissa >> 13);
    uint32_t rest = mantissa & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) half++;
    return (uint16_t)(sign | half);
  }
  /* Below 2^-25 everything rounds to zero (exactly 2^-25 is a tie that goes
   * to the even zero); float32 subnormals are far below that. */
  if (exponent < 102) return sign;
  /* A half subnormal: the value in units of 2^-24 is the full 24-bit
   * mantissa shifted right by 126 - exponent (14..24 places). A carry out of
   * the subnormal range gives the smallest normal, 0x0400, as it should. */
  uint32_t full = mantissa | 0x800000u;
  uint32_t shift = 126u - exponent;
  uint32_t half = full >> shift;
  uint32_t rest = full & ((1u << shift) - 1u);
  uint32_t halfway = 1u << (shift - 1u);
  if (rest > halfway || (rest == halfway && (half & 1u))) half++;
  return (uint16_t)(sign | half);
}

/* F8_E4M3 ("fn" variant): bias 7, no infinities, S.1111.111 is NaN. */
static float f8_e4m3_to_f32(uint8_t bits) {
  float sign = (bits & 0x80u) ? -1.0f : 1.0f;
  unsigned exponent = (bits >> 3) & 0xfu;
  unsigned mantissa = bits & 0x7u;
  if (exponent == 0xf && mantissa == 0x7) return sign * NAN;
  if (exponent == 0) return sign * ldexpf((float)mantissa, -9);
  return sign * ldexpf((float)(8u + mantissa), (int)exponent - 10);
}

/* ------------------------------------------------------------------------- */
/* Little-endian element access                                              */
/* ------------------------------------------------------------------------- */

static uint16_t load_u16(const uint8_t *p) {
  return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t load_u32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t load_u64(const uint8_t *p) {
  return (uint64_t)load_u32(p) | ((uint64_t)load_u32(p + 4) << 32);
}

static void store_u16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

static void store_u32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void store_u64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Converts count stored elements of dtype at src to float32. */
static void decode_f32(qt_dtype dtype, const uint8_t *src, float *dst, size_t count) {
  for (size_t i = 0; i < count; i++) {
    const uint8_t *p = src + i * dtype_table[dtype].size;
    float v = 0.0f;
    switch (dtype) {
      case QT_DTYPE_BOOL:
        v = p[0] ? 1.0f : 0.0f;
        break;
      case QT_DTYPE_U8:
        v = (float)p[0];
        break;
      case QT_DTYPE_I8:
        v = (float)(int8_t)p[0];
        break;
      case QT_DTYPE_F8_E5M2:
        v = qt_f16_to_f32((uint16_t)(p[0] << 8));
        break;
      case QT_DTYPE_F8_E4M3:
        v = f8_e4m3_to_f32(p[0]);
        break;
      case QT_DTYPE_I16:
        v = (float)(int16_t)load_u16(p);
        break;
      case QT_DTYPE_U16:
        v = (float)load_u16(p);
        break;
      case QT_DTYPE_F16:
        v = qt_f16_to_f32(load_u16(p));
        break;
      case QT_DTYPE_BF16:
        v = qt_bf16_to_f32(load_u16(p));
        break;
      case QT_DTYPE_I32:
        v = (float)(int32_t)load_u32(p);
        break;
      case QT_DTYPE_U32:
        v = (float)load_u32(p);
        break;
      case QT_DTYPE_F32:
        v = f32_from_bits(load_u32(p));
        break;
      case QT_DTYPE_F64: {
        uint64_t bits = load_u64(p);
        double d;
        memcpy(&d, &bits, sizeof d);
        v = (float)d;
        break;
      }
      case QT_DTYPE_I64:
        v = (float)(int64_t)load_u64(p);
        break;
      case QT_DTYPE_U64:
        v = (float)load_u64(p);
        break;
      case QT_DTYPE_COUNT:
        break;
    }
    dst[i] = v;
  }
}

/* Converts count float32 values to dtype (F32, F16, BF16 or F64) at dst. */
static void encode_f32(qt_dtype dtype, const float *src, uint8_t *dst, size_t count) {
  for (size_t i = 0; i < count; i++) {
    switch (dtype) {
      case QT_DTYPE_F16:
        store_u16(dst + 2 * i, qt_f32_to_f16(src[i]));
        break;
      case QT_DTYPE_BF16:
        store_u16(dst + 2 * i, qt_f32_to_bf16(src[i]));
        break;
      case QT_DTYPE_F32:
        store_u32(dst + 4 * i, f32_bits(src[i]));
        break;
      case QT_DTYPE_F64: {
        double d = (double)src[i];
        uint64_t bits;
        memcpy(&bits, &d, sizeof bits);
        store_u64(dst + 8 * i, bits);
        break;
      }
      default:
        QT_ASSERT(!"encode_f32: unsupported dtype");
    }
  }
}

/* ------------------------------------------------------------------------- */
/* The open file                                                              */
/* ------------------------------------------------------------------------- */

typedef struct st_tensor {
  const char *name; /* owned by the JSON header */
  qt_dtype dtype;
  size_t ndim;
  size_t *shape; /* points into qt_safetensors.dims */
  size_t numel;
  uint64_t begin, end; /* byte range in the data buffer */
} st_tensor;

typedef struct st_pair {
  const char *key, *value; /* owned by the JSON header */
} st_pair;

struct qt_safetensors {
  char *path;
  int fd;
  uint64_t data_start; /* 8 + header length: file offset of the data buffer */
  uint64_t data_size;  /* bytes of the data buffer */
  json_t *header;      /* the parsed header; owns every string below */
  st_tensor *tensors;  /* (count) in name order */
  size_t count;
  size_t *dims;      /* all shapes, one after another */
  st_pair *metadata; /* (metadata_count) in key order */
  size_t metadata_count;
};

void qt_safetensors_free(qt_safetensors_t *st) {
  if (!st) return;
  if (st->fd >= 0) close(st->fd);
  json_decref(st->header);
  free(st->tensors);
  free(st->dims);
  free(st->metadata);
  free(st->path);
  free(st);
}

const char *qt_safetensors_path(const qt_safetensors_t *st) {
  return st->path;
}
size_t qt_safetensors_count(const qt_safetensors_t *st) {
  return st->count;
}

const char *qt_safetensors_name(const qt_safetensors_t *st, size_t index) {
  QT_ASSERT(index < st->count);
  return st->tensors[index].name;
}

void qt_safetensors_info_at(const qt_safetensors_t *st, size_t index, qt_safetensors_info *info) {
  QT_ASSERT(index < st->count && info);
  const st_tensor *t = &st->tensors[index];
  info->name = t->name;
  info->dtype = t->dtype;
  info->ndim = t->ndim;
  info->shape = t->shape;
  info->numel = t->numel;
  info->offset = t->begin;
  info->nbytes = t->end - t->begin;
}

int qt_safetensors_find(const qt_safetensors_t *st, const char *name, size_t *index) {
  if (!st || !name) return QT_EINVAL;
  size_t lo = 0, hi = st->count;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int order = strcmp(st->tensors[mid].name, name);
    if (order == 0) {
      if (index) *index = mid;
      return 0;
    }
    if (order < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return QT_ENOENT;
}

int qt_safetensors_lookup(const qt_safetensors_t *st, const char *name, qt_safetensors_info *info,
                          qt_err *err) {
  size_t index;
  if (!st || !name || !info)
    return qt_err_set(err, QT_EINVAL, "qt_safetensors_lookup: NULL argument");
  if (qt_safetensors_find(st, name, &index) != 0)
    return qt_err_set(err, QT_ENOENT, "%s: no tensor '%s'", st->path, name);
  qt_safetensors_info_at(st, index, info);
  return 0;
}

size_t qt_safetensors_metadata_count(const qt_safetensors_t *st) {
  return st->metadata_count;
}

void qt_safetensors_metadata_at(const qt_safetensors_t *st, size_t index, const char **key,
                                const char **value) {
  QT_ASSERT(index < st->metadata_count);
  if (key) *key = st->metadata[index].key;
  if (value) *value = st->metadata[index].value;
}

const char *qt_safetensors_metadata_get(const qt_safetensors_t *st, const char *key) {
  if (!st || !key) return NULL;
  for (size_t i = 0; i < st->metadata_count; i++) {
    if (strcmp(st->metadata[i].key, key) == 0) return st->metadata[i].value;
  }
  return NULL;
}

/* ------------------------------------------------------------------------- */
/* Opening: reading and validating the header                                */
/* ------------------------------------------------------------------------- */

/* Reads exactly size bytes at offset; QT_EIO on failure or end of file. */
static int read_at(const qt_safetensors_t *st, void *dst, size_t size, uint64_t offset,
                   qt_err *err) {
  uint8_t *p = dst;
  while (size > 0) {
    ssize_t n = pread(st->fd, p, size, (off_t)offset);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return qt_err_set(err, QT_EIO, "%s: %s", st->path, strerror(errno));
    if (n == 0)
      return qt_err_set(err, QT_EIO,
                        "%s: unexpected end of file at byte %" PRIu64
                        " (did the file change after it was opened?)",
                        st->path, offset);
    p += n;
    size -= (size_t)n;
    offset += (uint64_t)n;
  }
  return 0;
}

static int format_error(qt_err *err, const qt_safetensors_t *st, const char *tensor,
                        const char *fmt, ...) QT_PRINTF(4, 5);

/* Records "path: tensor 'name': <message>" (or "path: <message>") as
 * QT_EFORMAT. */
static int format_error(qt_err *err, const qt_safetensors_t *st, const char *tensor,
                        const char *fmt, ...) {
  char message[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  if (tensor)
    return qt_err_set(err, QT_EFORMAT, "%s: tensor '%.200s': %s", st->path, tensor, message);
  return qt_err_set(err, QT_EFORMAT, "%s: %s", st->path, message);
}

/* A JSON integer >= 0, as uint64_t. */
static int json_whole(const json_t *value, uint64_t *out) {
  if (!json_is_integer(value) || json_integer_value(value) < 0) return -1;
  *out = (uint64_t)json_integer_value(value);
  return 0;
}

static int parse_metadata(qt_safetensors_t *st, json_t *object, qt_err *err) {
  if (!json_is_object(object))
    return format_error(err, st, NULL, "\"__metadata__\" must be an object of strings");
  size_t n = json_object_size(object);
  st->metadata = n ? calloc(n, sizeof *st->metadata) : NULL;
  if (n && !st->metadata) return qt_err_set(err, QT_ENOMEM, "%s: out of memory", st->path);
  const char *key;
  json_t *value;
  json_object_foreach(object, key, value) {
    if (!json_is_string(value))
      return format_error(err, st, NULL, "\"__metadata__\" value of '%.200s' is not a string", key);
    st->metadata[st->metadata_count].key = key;
    st->metadata[st->metadata_count].value = json_string_value(value);
    st->metadata_count++;
  }
  return 0;
}

static int parse_tensor(qt_safetensors_t *st, const char *name, json_t *entry, st_tensor *t,
                        size_t *dims_used, qt_err *err) {
  t->name = name;
  if (!json_is_object(entry))
    return format_error(err, st, name, "entry is not an object {dtype, shape, data_offsets}");
  static const char *const keys[] = {"dtype", "shape", "data_offsets"};
  const char *key;
  json_t *value;
  json_object_foreach(entry, key, value) {
    int known = 0;
    for (size_t k = 0; k < 3; k++) known |= strcmp(key, keys[k]) == 0;
    if (!known)
      return format_error(err, st, name,
                          "unknown key '%.100s' (expected dtype, shape, data_offsets)", key);
  }
  for (size_t k = 0; k < 3; k++) {
    if (!json_object_get(entry, keys[k]))
      return format_error(err, st, name, "missing key '%s'", keys[k]);
  }

  json_t *dtype = json_object_get(entry, "dtype");
  if (!json_is_string(dtype)) return format_error(err, st, name, "dtype is not a string");
  if (qt_dtype_parse(json_string_value(dtype), &t->dtype) != 0)
    return format_error(err, st, name,
                        "unknown dtype '%.40s' (expected F64, F32, F16, BF16, "
                        "F8_E5M2, F8_E4M3, I64, I32, I16, I8, U64, U32, U16, U8 or BOOL)",
                        json_string_value(dtype));

  json_t *shape = json_object_get(entry, "shape");
  if (!json_is_array(shape)) return format_error(err, st, name, "shape is not a list");
  t->ndim = json_array_size(shape);
  if (t->ndim > QT_SAFETENSORS_MAX_DIMS)
    return format_error(err, st, name, "shape has %zu dimensions (at most %d are supported)",
                        t->ndim, QT_SAFETENSORS_MAX_DIMS);
  t->shape = st->dims + *dims_used;
  *dims_used += t->ndim;
  uint64_t numel = 1;
  for (size_t d = 0; d < t->ndim; d++) {
    uint64_t size;
    if (json_whole(json_array_get(shape, d), &size) != 0)
      return format_error(err, st, name, "shape[%zu] is not a whole number >= 0", d);
    /* Each factor is checked before multiplying, so the product never
     * overflows: both stay below 2^40 when it is accepted. */
    if (size > QT_SAFETENSORS_MAX_ELEMENTS ||
        (size > 0 && numel > QT_SAFETENSORS_MAX_ELEMENTS / size))
      return format_error(err, st, name, "shape has more than 2^40 elements");
    numel *= size;
    t->shape[d] = (size_t)size;
  }
  if (numel > SIZE_MAX / 8)
    return format_error(err, st, name, "shape is too large for this machine");
  t->numel = (size_t)numel;

  json_t *offsets = json_object_get(entry, "data_offsets");
  if (!json_is_array(offsets) || json_array_size(offsets) != 2 ||
      json_whole(json_array_get(offsets, 0), &t->begin) != 0 ||
      json_whole(json_array_get(offsets, 1), &t->end) != 0)
    return format_error(err, st, name, "data_offsets is not a list of two whole numbers >= 0");
  if (t->end < t->begin)
    return format_error(err, st, name,
                        "data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin", t->begin,
                        t->end);
  if (t->end > st->data_size)
    return format_error(err, st, name,
                        "data_offsets [%" PRIu64 ", %" PRIu64
                        "] reach past the end "
                        "of the data (%" PRIu64 " bytes after the header): is the file truncated?",
                        t->begin, t->end, st->data_size);
  uint64_t nbytes = numel * qt_dtype_size(t->dtype);
  if (t->end - t->begin != nbytes)
    return format_error(err, st, name,
                        "data_offsets [%" PRIu64 ", %" PRIu64 "] span %" PRIu64
                        " bytes but %" PRIu64 " elements of %s take %" PRIu64,
                        t->begin, t->end, t->end - t->begin, numel, qt_dtype_name(t->dtype),
                        nbytes);
  return 0;
}

static int compare_by_offsets(const void *a, const void *b) {
  const st_tensor *x = a, *y = b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end) return x->end < y->end ? -1 : 1;
  return 0;
}

static int compare_by_name(const void *a, const void *b) {
  return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int compare_pairs(const void *a, const void *b) {
  return strcmp(((const st_pair *)a)->key, ((const st_pair *)b)->key);
}

/* The tensors must tile the data buffer: sorted by offset, each begins
 * where the previous one ended, the first at 0 and the last at the end. */
static int check_coverage(qt_safetensors_t *st, qt_err *err) {
  qsort(st->tensors, st->count, sizeof *st->tensors, compare_by_offsets);
  uint64_t expected = 0;
  for (size_t i = 0; i < st->count; i++) {
    const st_tensor *t = &st->tensors[i];
    if (t->begin < expected)
      return format_error(err, st, t->name,
                          "bytes [%" PRIu64 ", %" PRIu64 ") overlap tensor '%.200s'", t->begin,
                          t->end, st->tensors[i - 1].name);
    if (t->begin > expected)
      return format_error(err, st, t->name,
                          "bytes [%" PRIu64 ", %" PRIu64
                          ") before it belong to "
                          "no tensor (the tensors must cover the data without gaps)",
                          expected, t->begin);
    expected = t->end;
  }
  if (expected != st->data_size)
    return format_error(err, st, NULL,
                        "the last %" PRIu64
                        " bytes of the data belong to no tensor "
                        "(the tensors must cover the data up to the end of the file)",
                        st->data_size - expected);
  return 0;
}

static int open_file(qt_safetensors_t *st, qt_err *err) {
  st->fd = open(st->path, O_RDONLY | O_CLOEXEC);
  if (st->fd < 0) {
    int code = (errno == ENOENT || errno == ENOTDIR) ? QT_ENOENT : QT_EIO;
    return qt_err_set(err, code, "%s: %s", st->path, strerror(errno));
  }
  struct stat info;
  if (fstat(st->fd, &info) != 0)
    return qt_err_set(err, QT_EIO, "%s: %s", st->path, strerror(errno));
  if (!S_ISREG(info.st_mode)) return qt_err_set(err, QT_EIO, "%s: not a regular file", st->path);

  uint64_t file_size = (uint64_t)info.st_size;
  if (file_size < 8)
    return format_error(err, st, NULL,
                        "file of %" PRIu64
                        " bytes is too short for a safetensors "
                        "file (8-byte header length first)",
                        file_size);
  uint8_t prefix[8];
  int rc = read_at(st, prefix, sizeof prefix, 0, err);
  if (rc != 0) return rc;
  uint64_t header_length = load_u64(prefix);
  if (header_length > QT_SAFETENSORS_MAX_HEADER)
    return format_error(err, st, NULL,
                        "header length %" PRIu64
                        " is over the 100 MB limit "
                        "(not a safetensors file?)",
                        header_length);
  if (header_length > file_size - 8)
    return format_error(err, st, NULL,
                        "header length %" PRIu64 " is larger than the %" PRIu64
                        " bytes that follow it (truncated, or not a safetensors file?)",
                        header_length, file_size - 8);
  st->data_start = 8 + header_length;
  st->data_size = file_size - st->data_start;

  char *text = malloc((size_t)header_length + 1);
  if (!text) return qt_err_set(err, QT_ENOMEM, "%s: out of memory", st->path);
  rc = read_at(st, text, (size_t)header_length, 8, err);
  if (rc == 0) {
    text[header_length] = '\0';
    json_error_t error;
    st->header = json_loadb(text, (size_t)header_length, JSON_REJECT_DUPLICATES, &error);
    if (!st->header)
      rc = format_error(err, st, NULL, "header is not valid JSON (byte %d of the header: %s)",
                        error.position, error.text);
    else if (!json_is_object(st->header))
      rc = format_error(err, st, NULL, "header is not a JSON object");
  }
  free(text);
  return rc;
}

static int parse_header(qt_safetensors_t *st, qt_err *err) {
  json_t *root = st->header;
  size_t entries = json_object_size(root);
  size_t total_dims = 0;
  const char *key;
  json_t *value;
  /* A first pass sizes the tables, so that they are allocated once. */
  json_object_foreach(root, key, value) {
    if (strcmp(key, "__metadata__") == 0) continue;
    json_t *shape = json_is_object(value) ? json_object_get(value, "shape") : NULL;
    if (json_is_array(shape) && json_array_size(shape) <= QT_SAFETENSORS_MAX_DIMS)
      total_dims += json_array_size(shape);
  }
  st->tensors = entries ? calloc(entries, sizeof *st->tensors) : NULL;
  st->dims = total_dims ? calloc(total_dims, sizeof *st->dims) : NULL;
  if ((entries && !st->tensors) || (total_dims && !st->dims))
    return qt_err_set(err, QT_ENOMEM, "%s: out of memory", st->path);

  size_t dims_used = 0;
  json_object_foreach(root, key, value) {
    int rc;
    if (strcmp(key, "__metadata__") == 0) {
      rc = parse_metadata(st, value, err);
    } else {
      rc = parse_tensor(st, key, value, &st->tensors[st->count], &dims_used, err);
      st->count++;
    }
    if (rc != 0) return rc;
  }
  int rc = check_coverage(st, err);
  if (rc != 0) return rc;
  qsort(st->tensors, st->count, sizeof *st->tensors, compare_by_name);
  if (st->metadata_count)
    qsort(st->metadata, st->metadata_count, sizeof *st->metadata, compare_pairs);
  return 0;
}

int qt_safetensors_open(const char *path, qt_safetensors_t **out, qt_err *err) {
  if (!path || !out) return qt_err_set(err, QT_EINVAL, "qt_safetensors_open: NULL argument");
  *out = NULL;
  qt_safetensors_t *st = calloc(1, sizeof *st);
  if (st) st->fd = -1;
  if (st) st->path = strdup(path);
  if (!st || !st->path) {
    qt_safetensors_free(st);
    return qt_err_set(err, QT_ENOMEM, "%s: out of memory", path);
  }
  int rc = open_file(st, err);
  if (rc == 0) rc = parse_header(st, err);
  if (rc != 0) {
    qt_safetensors_free(st);
    return rc;
  }
  *out = st;
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Reading tensor data                                                        */
/* ------------------------------------------------------------------------- */

static int find_for_read(const qt_safetensors_t *st, const char *name, const st_tensor **t,
                         qt_err *err) {
  size_t index;
  if (!st || !name) return qt_err_set(err, QT_EINVAL, "safetensors read: NULL argument");
  if (qt_safetensors_find(st, name, &index) != 0)
    return qt_err_set(err, QT_ENOENT, "%s: no tensor '%s'", st->path, name);
  *t = &st->tensors[index];
  return 0;
}

int qt_safetensors_read_raw(const qt_safetensors_t *st, const char *name, void *dst, size_t nbytes,
                            qt_err *err) {
  const st_tensor *t = NULL;
  int rc = find_for_read(st, name, &t, err);
  if (rc != 0) return rc;
  if (nbytes != t->end - t->begin)
    return qt_err_set(err, QT_EINVAL, "%s: tensor '%s' holds %" PRIu64 " bytes, not %zu", st->path,
                      name, t->end - t->begin, nbytes);
  if (nbytes > 0 && !dst) return qt_err_set(err, QT_EINVAL, "qt_safetensors_read_raw: dst is NULL");
  return read_at(st, dst, nbytes, st->data_start + t->begin, err);
}

int qt_safetensors_read_f32(const qt_safetensors_t *st, const char *name, float *dst, size_t n,
                            qt_err *err) {
  const st_tensor *t = NULL;
  int rc = find_for_read(st, name, &t, err);
  if (rc != 0) return rc;
  if (n != t->numel)
    return qt_err_set(err, QT_EINVAL, "%s: tensor '%s' has %zu elements, the destination %zu",
                      st->path, name, t->numel, n);
  if (n > 0 && !dst) return qt_err_set(err, QT_EINVAL, "qt_safetensors_read_f32: dst is NULL");
  uint64_t offset = st->data_start + t->begin;
  if (t->dtype == QT_DTYPE_F32 && QT__HOST_LITTLE_ENDIAN)
    return read_at(st, dst, n * sizeof(float), offset, err);

  /* Other types go through a small buffer, one chunk at a time. */
  uint8_t chunk[CHUNK_ELEMENTS * 8];
  size_t size = qt_dtype_size(t->dtype);
  for (size_t done = 0; done < n;) {
    size_t count = n - done < CHUNK_ELEMENTS ? n - done : CHUNK_ELEMENTS;
    rc = read_at(st, chunk, count * size, offset + done * size, err);
    if (rc != 0) return rc;
    decode_f32(t->dtype, chunk, dst + done, count);
    done += count;
  }
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Writing                                                                    */
/* ------------------------------------------------------------------------- */

static int is_float_target(qt_dtype dtype) {
  return dtype == QT_DTYPE_F32 || dtype == QT_DTYPE_F16 || dtype == QT_DTYPE_BF16 ||
         dtype == QT_DTYPE_F64;
}

/* Element count of a tensor to write, or an error for a bad shape. */
static int tensor_numel(const qt_safetensors_tensor *t, size_t *numel, qt_err *err) {
  if (t->ndim > QT_SAFETENSORS_MAX_DIMS)
    return qt_err_set(err, QT_EINVAL, "tensor '%s': %zu dimensions (at most %d)", t->name, t->ndim,
                      QT_SAFETENSORS_MAX_DIMS);
  if (t->ndim > 0 && !t->shape)
    return qt_err_set(err, QT_EINVAL, "tensor '%s': shape is NULL", t->name);
  uint64_t count = 1;
  for (size_t d = 0; d < t->ndim; d++) {
    uint64_t size = t->shape[d];
    if (size > QT_SAFETENSORS_MAX_ELEMENTS ||
        (size > 0 && count > QT_SAFETENSORS_MAX_ELEMENTS / size))
      return qt_err_set(err, QT_EINVAL, "tensor '%s': more than 2^40 elements", t->name);
    count *= size;
  }
  *numel = (size_t)count;
  return 0;
}

/* Orders tensor indices as the reference writer does: descending dtype
 * (its enum order is increasing alignment), then name. */
typedef struct write_order {
  const qt_safetensors_tensor *tensors;
  size_t index;
} write_order;

static int compare_write_order(const void *a, const void *b) {
  const write_order *x = a, *y = b;
  const qt_safetensors_tensor *tx = &x->tensors[x->index], *ty = &y->tensors[y->index];
  if (tx->dtype != ty->dtype) return tx->dtype > ty->dtype ? -1 : 1;
  return strcmp(tx->name, ty->name);
}

static int compare_strings(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Checks the arguments and computes the write order (order[k] is the
 * index of the k-th tensor in the file) and the element counts. */
static int check_write_arguments(const qt_safetensors_tensor *tensors, size_t n,
                                 const qt_safetensors_pair *metadata, size_t n_metadata,
                                 write_order *order, size_t *numel, qt_err *err) {
  if (n > 0 && !tensors) return qt_err_set(err, QT_EINVAL, "safetensors write: tensors is NULL");
  if (n_metadata > 0 && !metadata)
    return qt_err_set(err, QT_EINVAL, "safetensors write: metadata is NULL");
  for (size_t i = 0; i < n; i++) {
    const qt_safetensors_tensor *t = &tensors[i];
    if (!t->name || !t->name[0] || strcmp(t->name, "__metadata__") == 0)
      return qt_err_set(err, QT_EINVAL,
                        "tensor %zu: the name must be non-empty and not "
                        "\"__metadata__\"",
                        i);
    if ((unsigned)t->dtype >= QT_DTYPE_COUNT)
      return qt_err_set(err, QT_EINVAL, "tensor '%s': unknown dtype %d", t->name, (int)t->dtype);
    int rc = tensor_numel(t, &numel[i], err);
    if (rc != 0) return rc;
    if (t->data && !is_float_target(t->dtype))
      return qt_err_set(err, QT_EINVAL,
                        "tensor '%s': float32 data can be written as F32, F16, BF16 "
                        "or F64, not %s (pass raw bytes instead)",
                        t->name, qt_dtype_name(t->dtype));
    if (numel[i] > 0 && !t->data && !t->raw)
      return qt_err_set(err, QT_EINVAL, "tensor '%s': no data", t->name);
    order[i].tensors = tensors;
    order[i].index = i;
  }
  if (n) qsort(order, n, sizeof *order, compare_write_order);

  /* Duplicate names: sort the names once more, by name only. */
  const char **names = n ? malloc(n * sizeof *names) : NULL;
  if (n && !names) return qt_err_set(err, QT_ENOMEM, "out of memory");
  for (size_t i = 0; i < n; i++) names[i] = tensors[i].name;
  if (n) qsort(names, n, sizeof *names, compare_strings);
  int rc = 0;
  for (size_t i = 1; i < n && rc == 0; i++) {
    if (strcmp(names[i - 1], names[i]) == 0)
      rc = qt_err_set(err, QT_EINVAL, "tensor name '%s' is given twice", names[i]);
  }
  free(names);
  for (size_t i = 0; i < n_metadata && rc == 0; i++) {
    if (!metadata[i].key || !metadata[i].value)
      rc = qt_err_set(err, QT_EINVAL, "metadata pair %zu: NULL key or value", i);
    for (size_t j = 0; j < i && rc == 0; j++) {
      if (strcmp(metadata[i].key, metadata[j].key) == 0)
        rc = qt_err_set(err, QT_EINVAL, "metadata key '%s' is given twice", metadata[i].key);
    }
  }
  return rc;
}

/* The header text, padded with spaces to a multiple of 8 (caller frees). */
static int build_header(const qt_safetensors_tensor *tensors, size_t n, const write_order *order,
                        const size_t *numel, const qt_safetensors_pair *metadata, size_t n_metadata,
                        char **text, size_t *length, qt_err *err) {
  json_t *root = json_object();
  int ok = root != NULL;
  if (ok && n_metadata > 0) {
    /* The reference keeps metadata in a hash map (unspecified order); sorted
     * keys make our files reproducible. */
    const char **keys = malloc(n_metadata * sizeof *keys);
    json_t *object = json_object();
    ok = keys && object && json_object_set_new(root, "__metadata__", object) == 0;
    if (!ok && object && !keys) json_decref(object);
    for (size_t i = 0; ok && i < n_metadata; i++) keys[i] = metadata[i].key;
    if (ok) qsort(keys, n_metadata, sizeof *keys, compare_strings);
    for (size_t i = 0; ok && i < n_metadata; i++) {
      for (size_t j = 0; j < n_metadata; j++) {
        if (metadata[j].key == keys[i])
          ok = json_object_set_new(object, keys[i], json_string(metadata[j].value)) == 0;
      }
    }
    free(keys);
  }
  uint64_t offset = 0;
  for (size_t k = 0; ok && k < n; k++) {
    const qt_safetensors_tensor *t = &tensors[order[k].index];
    uint64_t nbytes = (uint64_t)numel[order[k].index] * qt_dtype_size(t->dtype);
    json_t *entry = json_object(), *shape = json_array(), *offsets = json_array();
    ok = entry && shape && offsets;
    for (size_t d = 0; ok && d < t->ndim; d++)
      ok = json_array_append_new(shape, json_integer((json_int_t)t->shape[d])) == 0;
    ok = ok && json_array_append_new(offsets, json_integer((json_int_t)offset)) == 0 &&
         json_array_append_new(offsets, json_integer((json_int_t)(offset + nbytes))) == 0;
    ok = ok && json_object_set_new(entry, "dtype", json_string(qt_dtype_name(t->dtype))) == 0;
    ok = ok && json_object_set(entry, "shape", shape) == 0 &&
         json_object_set(entry, "data_offsets", offsets) == 0;
    json_decref(shape);
    json_decref(offsets);
    ok = ok && json_object_set(root, t->name, entry) == 0;
    json_decref(entry);
    offset += nbytes;
  }
  /* Compact separators and insertion order, as serde_json writes the
   * reference's header. (Control characters in names are escaped as
   * \u00XX with upper-case hex here and lower-case there.) */
  char *json = ok ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(root);
  if (!json) return qt_err_set(err, QT_ENOMEM, "safetensors write: cannot build the header");
  size_t raw_length = strlen(json);
  size_t padded = (raw_length + 7) / 8 * 8;
  char *buffer = malloc(padded + 1);
  if (!buffer) {
    free(json);
    return qt_err_set(err, QT_ENOMEM, "out of memory");
  }
  memcpy(buffer, json, raw_length);
  memset(buffer + raw_length, ' ', padded - raw_length);
  buffer[padded] = '\0';
  free(json);
  *text = buffer;
  *length = padded;
  return 0;
}

static int is_disk_full(int error_number) {
#ifdef EDQUOT
  if (error_number == EDQUOT) return 1;
#endif
  return error_number == ENOSPC;
}

static int write_error(const char *name, int error_number, qt_err *err) {
  if (is_disk_full(error_number))
    return qt_err_set(err, QT_ENOSPC, "%s: %s", name, strerror(error_number));
  return qt_err_set(err, QT_EIO, "%s: %s", name, strerror(error_number));
}

static int write_all(int fd, const void *data, size_t size, const char *name, qt_err *err) {
  const uint8_t *p = data;
  while (size > 0) {
    /* Large tensors go in pieces of at most 1 GiB (Linux caps one write). */
    size_t piece = size < (1u << 30) ? size : (1u << 30);
    ssize_t n = write(fd, p, piece);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return write_error(name, errno, err);
    if (n == 0) return write_error(name, EIO, err);
    p += n;
    size -= (size_t)n;
  }
  return 0;
}

/* Writes the file's bytes to fd. */
static int write_stream(int fd, const char *name, const qt_safetensors_tensor *tensors, size_t n,
                        const write_order *order, const size_t *numel, const char *header,
                        size_t header_length, qt_err *err) {
  uint8_t prefix[8];
  store_u64(prefix, (uint64_t)header_length);
  int rc = write_all(fd, prefix, sizeof prefix, name, err);
  if (rc == 0) rc = write_all(fd, header, header_length, name, err);
  uint8_t chunk[CHUNK_ELEMENTS * 8];
  for (size_t k = 0; rc == 0 && k < n; k++) {
    const qt_safetensors_tensor *t = &tensors[order[k].index];
    size_t count = numel[order[k].index], size = qt_dtype_size(t->dtype);
    if (count == 0) continue;
    if (!t->data) {
      rc = write_all(fd, t->raw, count * size, name, err);
    } else if (t->dtype == QT_DTYPE_F32 && QT__HOST_LITTLE_ENDIAN) {
      rc = write_all(fd, t->data, count * sizeof(float), name, err);
    } else {
      for (size_t done = 0; rc == 0 && done < count;) {
        size_t step = count - done < CHUNK_ELEMENTS ? count - done : CHUNK_ELEMENTS;
        encode_f32(t->dtype, t->data + done, chunk, step);
        rc = write_all(fd, chunk, step * size, name, err);
        done += step;
      }
    }
  }
  return rc;
}

/* Everything both writers share: checks, order, header; then `body` writes. */
typedef struct write_plan {
  write_order *order;
  size_t *numel;
  char *header;
  size_t header_length;
} write_plan;

static void plan_free(write_plan *plan) {
  free(plan->order);
  free(plan->numel);
  free(plan->header);
}

static int plan_write(const qt_safetensors_tensor *tensors, size_t n,
                      const qt_safetensors_pair *metadata, size_t n_metadata, write_plan *plan,
                      qt_err *err) {
  memset(plan, 0, sizeof *plan);
  plan->order = calloc(n ? n : 1, sizeof *plan->order);
  plan->numel = calloc(n ? n : 1, sizeof *plan->numel);
  if (!plan->order || !plan->numel) return qt_err_set(err, QT_ENOMEM, "out of memory");
  int rc = check_write_arguments(tensors, n, metadata, n_metadata, plan->order, plan->numel, err);
  if (rc == 0)
    rc = build_header(tensors, n, plan->order, plan->numel, metadata, n_metadata, &plan->header,
                      &plan->header_length, err);
  return rc;
}

int qt_safetensors_write_fd(int fd, const char *name, const qt_safetensors_tensor *tensors,
                            size_t n, const qt_safetensors_pair *metadata, size_t n_metadata,
                            qt_err *err) {
  if (!name) name = "<stream>";
  write_plan plan;
  int rc = plan_write(tensors, n, metadata, n_metadata, &plan, err);
  if (rc == 0)
    rc = write_stream(fd, name, tensors, n, plan.order, plan.numel, plan.header, plan.header_length,
                      err);
  if (rc != 0 && err) qt_err_prefix(err, rc, "writing safetensors");
  plan_free(&plan);
  return rc;
}

/* Makes the rename durable: fsync the folder that holds path. Filesystems
 * that cannot sync a folder (EINVAL) are not an error. */
static int sync_parent(const char *path, qt_err *err) {
  const char *slash = strrchr(path, '/');
  char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
  if (!dir) return qt_err_set(err, QT_ENOMEM, "out of memory");
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int rc = 0;
  if (fd >= 0) {
    if (fsync(fd) != 0 && errno != EINVAL) rc = write_error(dir, errno, err);
    close(fd);
  }
  free(dir);
  return rc;
}

int qt_safetensors_write(const char *path, const qt_safetensors_tensor *tensors, size_t n,
                         const qt_safetensors_pair *metadata, size_t n_metadata, qt_err *err) {
  if (!path || !path[0]) return qt_err_set(err, QT_EINVAL, "qt_safetensors_write: no path");
  write_plan plan;
  int rc = plan_write(tensors, n, metadata, n_metadata, &plan, err);
  if (rc != 0) {
    plan_free(&plan);
    return qt_err_prefix(err, rc, "%s", path);
  }

  /* A temporary name beside the destination (same filesystem, so rename is
   * atomic), created exclusively with the usual permissions. */
  size_t temp_size = strlen(path) + 64;
  char *temp = malloc(temp_size);
  int fd = -1;
  if (!temp) rc = qt_err_set(err, QT_ENOMEM, "out of memory");
  for (unsigned attempt = 0; rc == 0 && fd < 0; attempt++) {
    snprintf(temp, temp_size, "%s.tmp.%ld.%u", path, (long)getpid(), attempt);
    fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && (errno != EEXIST || attempt >= 1000)) {
      int saved = errno;
      rc = is_disk_full(saved)
               ? write_error(path, saved, err)
               : qt_err_set(err, saved == ENOENT || saved == ENOTDIR ? QT_ENOENT : QT_EIO,
                            "%s: cannot create a file beside it: %s", path, strerror(saved));
    }
  }
  if (rc == 0)
    rc = write_stream(fd, path, tensors, n, plan.order, plan.numel, plan.header, plan.header_length,
                      err);
  if (rc == 0 && fsync(fd) != 0) rc = write_error(path, errno, err);
  if (fd >= 0 && close(fd) != 0 && rc == 0) rc = write_error(path, errno, err);
  if (rc == 0 && rename(temp, path) != 0)
    rc =
        qt_err_set(err, QT_EIO, "%s: cannot rename %s into place: %s", path, temp, strerror(errno));
  if (rc != 0 && fd >= 0) {
    /* The temporary file goes; whatever was at path before stays. */
    unlink(temp);
    if (err) {
      size_t used = strlen(err->msg);
      snprintf(err->msg + used, sizeof err->msg - used, " (%s was not changed)", path);
    }
  }
  if (rc == 0) rc = sync_parent(path, err);
  free(temp);
  plan_free(&plan);
  return rc;
}

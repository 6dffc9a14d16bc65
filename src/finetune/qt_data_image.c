/*
 * qt_data_image.c - PNG and JPEG decoding (libpng, libjpeg) and the
 * ImageFolder loader.
 *
 * Both libraries report fatal errors by calling a function that must not
 * return; each decoder here installs its own that records the message and
 * longjmp()s back to the decoder, which then releases what it allocated and
 * reports a failed decode. All state touched after setjmp() lives in a job
 * struct reached through a pointer, so nothing the error path reads can be a
 * clobbered local.
 *
 * The folder loader makes two passes: the first reads only the headers
 * (size, gray or color) to fix the common size and the channel count before
 * anything large is allocated; the second decodes every file into its slot
 * of the dataset, in threads. Messages of failed files are collected and
 * logged in file order, so the log does not depend on the thread count.
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

#include "finetune/qt_data_internal.h"

/* What the first pass learns of a file. */
typedef struct image_info {
  size_t height, width;
  int gray; /* 1 when the file stores one gray channel (palette counts as color) */
} image_info;

enum { FORMAT_UNKNOWN = 0, FORMAT_PNG, FORMAT_JPEG };

/* ------------------------------------------------------------------------- */
/* PNG                                                                        */
/* ------------------------------------------------------------------------- */

typedef struct png_job {
  FILE *file;
  png_structp png;
  png_infop info;
  uint8_t *pixels; /* (height, width, channels) */
  png_bytep *rows; /* (height) pointers into pixels */
  size_t channels;
  char *msg;
  size_t msg_size;
} png_job;

static void png_on_error(png_structp png, png_const_charp text) {
  png_job *job = png_get_error_ptr(png);
  snprintf(job->msg, job->msg_size, "PNG: %s", text);
  png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp text) {
  (void)png;
  QT_LOG_DEBUG("libpng: %s", text);
}

/* Returns 0 or -1 (message in job->msg). */
static int png_run(png_job *job, int header_only, image_info *info) {
  job->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, job, png_on_error, png_on_warning);
  if (!job->png) {
    snprintf(job->msg, job->msg_size, "PNG: out of memory");
    return -1;
  }
  job->info = png_create_info_struct(job->png);
  if (!job->info) {
    snprintf(job->msg, job->msg_size, "PNG: out of memory");
    return -1;
  }
  if (setjmp(png_jmpbuf(job->png))) return -1;

  png_set_user_limits(job->png, QT_IMAGE_MAX_SIDE, QT_IMAGE_MAX_SIDE);
  png_init_io(job->png, job->file);
  png_read_info(job->png, job->info);
  info->width = png_get_image_width(job->png, job->info);
  info->height = png_get_image_height(job->png, job->info);
  int color_type = png_get_color_type(job->png, job->info);
  int bit_depth = png_get_bit_depth(job->png, job->info);
  info->gray = (color_type & PNG_COLOR_MASK_COLOR) == 0;
  if ((unsigned long long)info->width * info->height > QT_IMAGE_MAX_PIXELS) {
    snprintf(job->msg, job->msg_size, "PNG: %zux%zu pixels is over the limit", info->width,
             info->height);
    return -1;
  }
  if (header_only) return 0;

  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(job->png);
  if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(job->png);
  if (bit_depth == 16) png_set_scale_16(job->png);
  if (color_type & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(job->png);
  png_set_interlace_handling(job->png);
  png_read_update_info(job->png, job->info);
  job->channels = png_get_channels(job->png, job->info);
  if ((job->channels != 1 && job->channels != 3) ||
      png_get_rowbytes(job->png, job->info) != info->width * job->channels) {
    snprintf(job->msg, job->msg_size, "PNG: unexpected layout after conversion (%zu channels)",
             job->channels);
    return -1;
  }
  job->pixels = malloc(info->height * info->width * job->channels);
  job->rows = malloc(info->height * sizeof *job->rows);
  if (!job->pixels || !job->rows) {
    snprintf(job->msg, job->msg_size, "PNG: out of memory");
    return -1;
  }
  for (size_t y = 0; y < info->height; y++)
    job->rows[y] = job->pixels + y * info->width * job->channels;
  png_read_image(job->png, job->rows);
  return 0;
}

/* ------------------------------------------------------------------------- */
/* JPEG                                                                       */
/* ------------------------------------------------------------------------- */

typedef struct jpeg_job {
  struct jpeg_error_mgr pub; /* first: libjpeg's err pointer is cast back to the job */
  jmp_buf jump;
  struct jpeg_decompress_struct cinfo;
  int created;   /* jpeg_create_decompress was called */
  int truncated; /* libjpeg warned of a premature end of the data */
  FILE *file;
  const char *path;
  uint8_t *pixels; /* (height, width, channels) */
  uint8_t *row;    /* (width * 4) one CMYK row */
  size_t channels;
  char *msg;
  size_t msg_size;
} jpeg_job;

static void jpeg_on_error_exit(j_common_ptr cinfo) {
  jpeg_job *job = (jpeg_job *)cinfo->err;
  char text[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, text);
  snprintf(job->msg, job->msg_size, "JPEG: %s", text);
  longjmp(job->jump, 1);
}

static void jpeg_on_emit(j_common_ptr cinfo, int level) {
  if (level >= 0) return; /* trace messages */
  jpeg_job *job = (jpeg_job *)cinfo->err;
  if (cinfo->err->msg_code == JWRN_JPEG_EOF) {
    job->truncated = 1;
  } else if (qt_log_get_level() <= QT_LOG_LEVEL_DEBUG) {
    char text[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, text);
    QT_LOG_DEBUG("libjpeg: %s: %s", job->path, text);
  }
  cinfo->err->num_warnings++;
}

static void jpeg_on_output(j_common_ptr cinfo) {
  (void)cinfo;
}

/* (a * b) / 255 rounded, as Pillow's MULDIV255. */
static inline int muldiv255(int a, int b) {
  int t = a * b + 128;
  return ((t >> 8) + t) >> 8;
}

static int jpeg_run(jpeg_job *job, int header_only, image_info *info) {
  job->cinfo.err = jpeg_std_error(&job->pub);
  job->pub.error_exit = jpeg_on_error_exit;
  job->pub.emit_message = jpeg_on_emit;
  job->pub.output_message = jpeg_on_output;
  if (setjmp(job->jump)) return -1;

  jpeg_create_decompress(&job->cinfo);
  job->created = 1;
  jpeg_stdio_src(&job->cinfo, job->file);
  jpeg_read_header(&job->cinfo, TRUE);
  info->width = job->cinfo.image_width;
  info->height = job->cinfo.image_height;
  info->gray = job->cinfo.jpeg_color_space == JCS_GRAYSCALE;
  if (info->width > QT_IMAGE_MAX_SIDE || info->height > QT_IMAGE_MAX_SIDE ||
      (unsigned long long)info->width * info->height > QT_IMAGE_MAX_PIXELS) {
    snprintf(job->msg, job->msg_size, "JPEG: %zux%zu pixels is over the limit", info->width,
             info->height);
    return -1;
  }
  if (header_only) return 0;

  int cmyk = job->cinfo.jpeg_color_space == JCS_CMYK || job->cinfo.jpeg_color_space == JCS_YCCK;
  job->cinfo.out_color_space = info->gray ? JCS_GRAYSCALE : (cmyk ? JCS_CMYK : JCS_RGB);
  jpeg_start_decompress(&job->cinfo);
  size_t w = job->cinfo.output_width, h = job->cinfo.output_height;
  size_t comps = (size_t)job->cinfo.output_components;
  if (w != info->width || h != info->height || comps != (info->gray ? 1u : (cmyk ? 4u : 3u))) {
    snprintf(job->msg, job->msg_size, "JPEG: unexpected output layout");
    return -1;
  }
  job->channels = info->gray ? 1 : 3;
  job->pixels = malloc(h * w * job->channels);
  job->row = cmyk ? malloc(w * 4) : NULL;
  if (!job->pixels || (cmyk && !job->row)) {
    snprintf(job->msg, job->msg_size, "JPEG: out of memory");
    return -1;
  }
  int inverted = cmyk && job->cinfo.saw_Adobe_marker;
  while (job->cinfo.output_scanline < h) {
    size_t y = job->cinfo.output_scanline;
    JSAMPROW row = cmyk ? job->row : job->pixels + y * w * job->channels;
    if (jpeg_read_scanlines(&job->cinfo, &row, 1) != 1) {
      snprintf(job->msg, job->msg_size, "JPEG: no scanline read");
      return -1;
    }
    if (cmyk) {
      /* Pillow: Adobe files store inverted CMYK ("CMYK;I"), then cmyk2rgb. */
      uint8_t *out = job->pixels + y * w * 3;
      for (size_t x = 0; x < w; x++) {
        int c = row[4 * x], m = row[4 * x + 1], yy = row[4 * x + 2], k = row[4 * x + 3];
        if (inverted) {
          c = 255 - c;
          m = 255 - m;
          yy = 255 - yy;
          k = 255 - k;
        }
        int nk = 255 - k;
        int r = nk - muldiv255(c, nk), g = nk - muldiv255(m, nk), b = nk - muldiv255(yy, nk);
        out[3 * x] = (uint8_t)(r < 0 ? 0 : r);
        out[3 * x + 1] = (uint8_t)(g < 0 ? 0 : g);
        out[3 * x + 2] = (uint8_t)(b < 0 ? 0 : b);
      }
    }
    if (job->truncated) break;
  }
  if (job->truncated) {
    snprintf(job->msg, job->msg_size, "JPEG: truncated file (premature end of data)");
    return -1;
  }
  jpeg_finish_decompress(&job->cinfo);
  if (job->truncated) {
    snprintf(job->msg, job->msg_size, "JPEG: truncated file (premature end of data)");
    return -1;
  }
  return 0;
}

/* ------------------------------------------------------------------------- */
/* One file                                                                   */
/* ------------------------------------------------------------------------- */

/* Decodes path: header only, or the pixels in the file's own channels
 * (*pixels malloc'ed, *channels 1 or 3). Returns 0, or -1 with msg set, or
 * -2 when the file cannot be opened (msg set; -3 when it does not exist). */
static int decode_file(const char *path, int header_only, image_info *info, uint8_t **pixels,
                       size_t *channels, char *msg, size_t msg_size) {
  msg[0] = '\0';
  if (pixels) *pixels = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) {
    int e = errno;
    snprintf(msg, msg_size, "%s", strerror(e));
    return e == ENOENT ? -3 : -2;
  }
  unsigned char magic[8];
  size_t got = fread(magic, 1, sizeof magic, f);
  int format = FORMAT_UNKNOWN;
  if (got == 8 && png_sig_cmp(magic, 0, 8) == 0)
    format = FORMAT_PNG;
  else if (got >= 3 && magic[0] == 0xFF && magic[1] == 0xD8 && magic[2] == 0xFF)
    format = FORMAT_JPEG;
  int rc = -1;
  if (format == FORMAT_UNKNOWN) {
    snprintf(msg, msg_size, "not a PNG or JPEG file (%zu bytes read)", got);
  } else if (fseek(f, 0, SEEK_SET) != 0) {
    snprintf(msg, msg_size, "cannot seek: %s", strerror(errno));
  } else if (format == FORMAT_PNG) {
    png_job job;
    memset(&job, 0, sizeof job);
    job.file = f;
    job.msg = msg;
    job.msg_size = msg_size;
    rc = png_run(&job, header_only, info);
    png_destroy_read_struct(job.png ? &job.png : NULL, job.info ? &job.info : NULL, NULL);
    free(job.rows);
    if (rc == 0 && !header_only) {
      *pixels = job.pixels;
      *channels = job.channels;
    } else {
      free(job.pixels);
    }
  } else {
    jpeg_job *job = calloc(1, sizeof *job);
    if (!job) {
      snprintf(msg, msg_size, "out of memory");
    } else {
      job->file = f;
      job->path = path;
      job->msg = msg;
      job->msg_size = msg_size;
      rc = jpeg_run(job, header_only, info);
      if (job->created) jpeg_destroy_decompress(&job->cinfo);
      free(job->row);
      if (rc == 0 && !header_only) {
        *pixels = job->pixels;
        *channels = job->channels;
      } else {
        free(job->pixels);
      }
      free(job);
    }
  }
  fclose(f);
  return rc;
}

void qt__image_convert_channels(const uint8_t *src, size_t pixels, size_t channels, uint8_t *dst,
                                size_t out_channels) {
  if (channels == out_channels) {
    memcpy(dst, src, pixels * channels);
  } else if (channels == 1) {
    for (size_t i = 0; i < pixels; i++) dst[3 * i] = dst[3 * i + 1] = dst[3 * i + 2] = src[i];
  } else {
    for (size_t i = 0; i < pixels; i++)
      dst[i] = qt__luma(src[3 * i], src[3 * i + 1], src[3 * i + 2]);
  }
}

int qt_image_load(const char *path, size_t channels, uint8_t **pixels, size_t *height,
                  size_t *width, size_t *channels_out, qt_err *err) {
  if (!path || !pixels || !height || !width)
    return qt_err_set(err, QT_EINVAL, "qt_image_load: NULL argument");
  *pixels = NULL;
  if (channels != 0 && channels != 1 && channels != 3)
    return qt_err_set(err, QT_EINVAL, "qt_image_load: channels must be 0, 1 or 3 (got %zu)",
                      channels);
  char msg[512];
  image_info info;
  uint8_t *native = NULL;
  size_t native_channels = 0;
  int rc = decode_file(path, 0, &info, &native, &native_channels, msg, sizeof msg);
  if (rc == -3) return qt_err_set(err, QT_ENOENT, "%s: %s", path, msg);
  if (rc == -2) return qt_err_set(err, QT_EIO, "%s: %s", path, msg);
  if (rc < 0) return qt_err_set(err, QT_EFORMAT, "%s: %s", path, msg);
  size_t want = channels ? channels : native_channels;
  if (want != native_channels) {
    uint8_t *converted = malloc(info.height * info.width * want);
    if (!converted) {
      free(native);
      return qt_err_set(err, QT_ENOMEM, "%s: out of memory", path);
    }
    qt__image_convert_channels(native, info.height * info.width, native_channels, converted, want);
    free(native);
    native = converted;
  }
  *pixels = native;
  *height = info.height;
  *width = info.width;
  if (channels_out) *channels_out = want;
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Folder walking                                                             */
/* ------------------------------------------------------------------------- */

typedef struct file_entry {
  char *dir;  /* folder holding the file (sort key, as torchvision's sorted(os.walk)) */
  char *path; /* full path */
  int32_t label;
} file_entry;

typedef struct file_list {
  file_entry *items;
  size_t n, cap;
} file_list;

static void file_list_free(file_list *list) {
  for (size_t i = 0; i < list->n; i++) {
    free(list->items[i].dir);
    free(list->items[i].path);
  }
  free(list->items);
  memset(list, 0, sizeof *list);
}

static int has_image_extension(const char *name) {
  const char *dot = strrchr(name, '.');
  if (!dot) return 0;
  return strcasecmp(dot, ".png") == 0 || strcasecmp(dot, ".jpg") == 0 ||
         strcasecmp(dot, ".jpeg") == 0;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* path = "dir/name", or QT_EINVAL when that does not fit in size bytes (a
 * cut path would name another file, or none). */
static int join_path(char *path, size_t size, const char *dir, const char *name, qt_err *err) {
  int n = snprintf(path, size, "%s/%s", dir, name);
  if (n < 0 || (size_t)n >= size)
    return qt_err_set(err, QT_EINVAL, "path too long (over %zu bytes): %s/%s", size - 1, dir, name);
  return 0;
}

/* Sorted names of the entries of dir that are folders (want_dirs) or image
 * files, skipping names that start with '.'. */
static int list_dir(const char *dir, int want_dirs, char ***names, size_t *count, qt_err *err) {
  *names = NULL;
  *count = 0;
  DIR *d = opendir(dir);
  if (!d)
    return qt_err_set(err, errno == ENOENT || errno == ENOTDIR ? QT_ENOENT : QT_EIO, "%s: %s", dir,
                      strerror(errno));
  char **list = NULL;
  size_t n = 0, cap = 0;
  int rc = 0;
  struct dirent *e;
  char path[4096];
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    if ((rc = join_path(path, sizeof path, dir, e->d_name, err)) < 0) break;
    struct stat st;
    if (stat(path, &st) != 0) continue; /* a dangling link */
    if (want_dirs ? !S_ISDIR(st.st_mode) : !(S_ISREG(st.st_mode) && has_image_extension(e->d_name)))
      continue;
    if (n == cap) {
      size_t new_cap = cap ? 2 * cap : 64;
      char **grown = realloc(list, new_cap * sizeof *grown);
      if (!grown) {
        rc = qt_err_set(err, QT_ENOMEM, "out of memory listing %s", dir);
        break;
      }
      list = grown;
      cap = new_cap;
    }
    if ((rc = qt__strdup(e->d_name, &list[n], err)) < 0) break;
    n++;
  }
  closedir(d);
  if (rc < 0) {
    for (size_t i = 0; i < n; i++) free(list[i]);
    free(list);
    return rc;
  }
  if (n > 1) qsort(list, n, sizeof *list, cmp_str);
  *names = list;
  *count = n;
  return 0;
}

static void free_list(char **names, size_t n) {
  for (size_t i = 0; i < n; i++) free(names[i]);
  free(names);
}

/* Adds the image files under dir (recursively, following links, at most
 * 32 levels deep) with label. */
static int walk(const char *dir, int32_t label, int depth, file_list *out, qt_err *err) {
  if (depth > 32)
    return qt_err_set(err, QT_EINVAL, "%s: folders nested too deep (a link loop?)", dir);
  char **files, **dirs;
  size_t n_files, n_dirs;
  int rc = list_dir(dir, 0, &files, &n_files, err);
  if (rc < 0) return rc;
  char path[4096];
  for (size_t i = 0; i < n_files && rc == 0; i++) {
    if (out->n == out->cap) {
      size_t new_cap = out->cap ? 2 * out->cap : 256;
      file_entry *grown = realloc(out->items, new_cap * sizeof *grown);
      if (!grown) {
        rc = qt_err_set(err, QT_ENOMEM, "out of memory listing %s", dir);
        break;
      }
      out->items = grown;
      out->cap = new_cap;
    }
    if ((rc = join_path(path, sizeof path, dir, files[i], err)) < 0) break;
    file_entry *e = &out->items[out->n];
    e->label = label;
    e->dir = NULL;
    if ((rc = qt__strdup(dir, &e->dir, err)) < 0) break;
    if ((rc = qt__strdup(path, &e->path, err)) < 0) {
      free(e->dir);
      break;
    }
    out->n++;
  }
  free_list(files, n_files);
  if (rc < 0) return rc;
  if ((rc = list_dir(dir, 1, &dirs, &n_dirs, err)) < 0) return rc;
  for (size_t i = 0; i < n_dirs && rc == 0; i++) {
    if ((rc = join_path(path, sizeof path, dir, dirs[i], err)) == 0)
      rc = walk(path, label, depth + 1, out, err);
  }
  free_list(dirs, n_dirs);
  return rc;
}

/* torchvision's order: classes in order, then folders by path (its
 * sorted(os.walk)), then files by name. */
static int cmp_entry(const void *a, const void *b) {
  const file_entry *x = a, *y = b;
  if (x->label != y->label) return x->label < y->label ? -1 : 1;
  int c = strcmp(x->dir, y->dir);
  return c ? c : strcmp(x->path, y->path);
}

/* ------------------------------------------------------------------------- */
/* ImageFolder                                                                */
/* ------------------------------------------------------------------------- */

qt_image_folder_params qt_image_folder_default_params(void) {
  qt_image_folder_params p;
  memset(&p, 0, sizeof p);
  p.interpolation = QT_INTERPOLATION_BILINEAR;
  return p;
}

typedef struct size_count {
  size_t height, width, count;
} size_count;

static int cmp_size_pair(const void *a, const void *b) {
  const size_count *x = a, *y = b;
  if (x->height != y->height) return x->height < y->height ? -1 : 1;
  if (x->width != y->width) return x->width < y->width ? -1 : 1;
  return 0;
}

/* The shared state of the decoding threads. */
typedef struct decode_shared {
  const file_list *files;
  const size_t *slot; /* (files->n) dataset slot of each file, or SIZE_MAX when failed */
  char **messages;    /* (files->n) failure message, malloc'ed, or NULL */
  uint8_t *images;    /* (slots, height, width, channels) */
  size_t height, width, channels;
  qt_interpolation interpolation;
  size_t threads;
} decode_shared;

typedef struct decode_worker {
  decode_shared *shared;
  size_t index;
  int failed_alloc;
} decode_worker;

static void *decode_thread(void *arg) {
  decode_worker *wk = arg;
  decode_shared *sh = wk->shared;
  qt__image_work work;
  qt__image_work_init(&work);
  size_t image_bytes = sh->height * sh->width * sh->channels;
  char msg[512];
  for (size_t i = wk->index; i < sh->files->n; i += sh->threads) {
    if (sh->slot[i] == SIZE_MAX) continue;
    image_info info;
    uint8_t *native = NULL;
    size_t native_channels = 0;
    int rc =
        decode_file(sh->files->items[i].path, 0, &info, &native, &native_channels, msg, sizeof msg);
    uint8_t *dst = sh->images + sh->slot[i] * image_bytes;
    if (rc == 0) {
      const uint8_t *src = native;
      if (native_channels != sh->channels) {
        qt_err e;
        qt_err_clear(&e);
        if (qt__grow((void **)&work.image[0], &work.image_cap[0],
                     info.height * info.width * sh->channels, &e) < 0) {
          snprintf(msg, sizeof msg, "out of memory");
          rc = -1;
        } else {
          qt__image_convert_channels(native, info.height * info.width, native_channels,
                                     work.image[0], sh->channels);
          src = work.image[0];
        }
      }
      if (rc == 0) {
        if (info.height == sh->height && info.width == sh->width) {
          memcpy(dst, src, image_bytes);
        } else {
          qt_err e;
          qt_err_clear(&e);
          if (qt__image_cover_crop(&work, src, info.height, info.width, sh->channels, dst,
                                   sh->height, sh->width, sh->interpolation, &e) < 0) {
            snprintf(msg, sizeof msg, "resizing: %s", qt_err_message(&e));
            rc = -1;
          }
        }
      }
    }
    free(native);
    if (rc < 0) {
      sh->messages[i] = strdup(msg[0] ? msg : "decoding failed");
      if (!sh->messages[i]) wk->failed_alloc = 1;
    }
  }
  qt__image_work_free(&work);
  return NULL;
}

static size_t default_threads(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 1) n = 1;
  if (n > 16) n = 16;
  return (size_t)n;
}

/* Runs the second pass in threads (one when threads <= 1 or few files). */
static int decode_all(decode_shared *sh, qt_err *err) {
  size_t threads = sh->threads;
  if (threads > sh->files->n) threads = sh->files->n ? sh->files->n : 1;
  sh->threads = threads;
  decode_worker workers[16];
  pthread_t ids[16];
  for (size_t t = 0; t < threads; t++) {
    workers[t].shared = sh;
    workers[t].index = t;
    workers[t].failed_alloc = 0;
  }
  /* Worker t decodes the files i with i % threads == t, whoever runs it:
   * when a thread cannot be started, this thread does its share. */
  size_t started = 1;
  for (size_t t = 1; t < threads; t++) {
    if (pthread_create(&ids[t], NULL, decode_thread, &workers[t]) != 0) break;
    started = t + 1;
  }
  for (size_t t = started; t < threads; t++) decode_thread(&workers[t]);
  decode_thread(&workers[0]);
  for (size_t t = 1; t < started; t++) pthread_join(ids[t], NULL);
  for (size_t t = 0; t < threads; t++)
    if (workers[t].failed_alloc) return qt_err_set(err, QT_ENOMEM, "out of memory decoding images");
  return 0;
}

int qt_dataset_load_image_folder(const char *root, const qt_image_folder_params *params,
                                 qt_dataset **out, qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_dataset_load_image_folder: out is NULL");
  *out = NULL;
  if (!root) return qt_err_set(err, QT_EINVAL, "qt_dataset_load_image_folder: root is NULL");
  qt_image_folder_params defaults = qt_image_folder_default_params();
  const qt_image_folder_params *p = params ? params : &defaults;
  if (p->channels != 0 && p->channels != 1 && p->channels != 3)
    return qt_err_set(err, QT_EINVAL, "image folder: channels must be 0, 1 or 3 (got %zu)",
                      p->channels);
  if ((p->height == 0) != (p->width == 0))
    return qt_err_set(err, QT_EINVAL, "image folder: height and width must both be 0 or both set");
  if (p->height > QT_IMAGE_MAX_SIDE || p->width > QT_IMAGE_MAX_SIDE)
    return qt_err_set(err, QT_EINVAL, "image folder: size %zux%zu is over the limit", p->height,
                      p->width);
  struct stat st;
  if (stat(root, &st) != 0)
    return qt_err_set(err, errno == ENOENT ? QT_ENOENT : QT_EIO, "%s: %s", root, strerror(errno));
  if (!S_ISDIR(st.st_mode)) return qt_err_set(err, QT_ENOENT, "%s: not a folder", root);

  char **class_dirs = NULL;
  size_t n_dirs = 0;
  file_list files = {0};
  image_info *infos = NULL;
  size_t *slot = NULL;
  char **messages = NULL;
  size_t *counts = NULL;
  qt_dataset *ds = NULL;
  int rc = list_dir(root, 1, &class_dirs, &n_dirs, err);
  if (rc < 0) return rc;

  if ((rc = qt__dataset_new(QT_DATASET_KIND_IMAGE, root, &ds, err)) < 0) goto done;
  if (p->class_names) {
    rc = qt__dataset_set_classes(ds, p->class_names, p->n_class_names, err);
  } else {
    rc = qt__dataset_set_classes(ds, (const char *const *)class_dirs, n_dirs, err);
  }
  if (rc < 0) goto done;
  if (!p->class_names && n_dirs < 2) {
    rc = qt_err_set(err, QT_ESCHEMA,
                    "%s: %zu class folder%s; an image folder needs at least 2 (root/<class>/*.png)",
                    root, n_dirs, n_dirs == 1 ? "" : "s");
    goto done;
  }
  char path[4096];
  for (size_t c = 0; c < n_dirs; c++) {
    size_t label = c;
    if (p->class_names) {
      for (label = 0; label < p->n_class_names; label++)
        if (strcmp(p->class_names[label], class_dirs[c]) == 0) break;
      if (label == p->n_class_names) {
        rc = qt_err_set(err, QT_ESCHEMA, "%s: class folder '%s' is not a class of the training set",
                        root, class_dirs[c]);
        goto done;
      }
    }
    snprintf(path, sizeof path, "%s/%s", root, class_dirs[c]);
    if ((rc = walk(path, (int32_t)label, 0, &files, err)) < 0) goto done;
  }
  if (files.n > 1) qsort(files.items, files.n, sizeof *files.items, cmp_entry);

  infos = calloc(files.n ? files.n : 1, sizeof *infos);
  slot = malloc((files.n ? files.n : 1) * sizeof *slot);
  messages = calloc(files.n ? files.n : 1, sizeof *messages);
  if (!infos || !slot || !messages) {
    rc = qt_err_set(err, QT_ENOMEM, "%s: out of memory for %zu files", root, files.n);
    goto done;
  }

  /* Pass 1: headers. */
  char msg[512];
  size_t n_ok = 0, all_gray = 1;
  for (size_t i = 0; i < files.n; i++) {
    int r = decode_file(files.items[i].path, 1, &infos[i], NULL, NULL, msg, sizeof msg);
    if (r < 0) {
      slot[i] = SIZE_MAX;
      messages[i] = strdup(msg);
      if (!messages[i]) {
        rc = qt_err_set(err, QT_ENOMEM, "out of memory");
        goto done;
      }
    } else {
      slot[i] = n_ok++;
      if (!infos[i].gray) all_gray = 0;
    }
  }

  size_t height = p->height, width = p->width;
  if (height == 0 && n_ok > 0) {
    size_count *sizes = malloc(n_ok * sizeof *sizes);
    if (!sizes) {
      rc = qt_err_set(err, QT_ENOMEM, "out of memory");
      goto done;
    }
    size_t m = 0;
    for (size_t i = 0; i < files.n; i++)
      if (slot[i] != SIZE_MAX) sizes[m++] = (size_count){infos[i].height, infos[i].width, 1};
    qsort(sizes, m, sizeof *sizes, cmp_size_pair);
    size_t best_count = 0;
    for (size_t i = 0; i < m;) {
      size_t j = i;
      while (j < m && cmp_size_pair(&sizes[i], &sizes[j]) == 0) j++;
      size_t count = j - i;
      /* Runs come in increasing (height, width): >= prefers the larger area
       * among equally frequent sizes only when it is larger; compare areas. */
      if (count > best_count ||
          (count == best_count && sizes[i].height * sizes[i].width > height * width) ||
          (count == best_count && sizes[i].height * sizes[i].width == height * width &&
           sizes[i].height > height)) {
        best_count = count;
        height = sizes[i].height;
        width = sizes[i].width;
      }
      i = j;
    }
    free(sizes);
  }
  size_t channels = p->channels ? p->channels : (all_gray ? 1 : 3);
  if (height == 0) height = width = 1; /* no decodable file: the class check reports it */
  ds->height = height;
  ds->width = width;
  ds->channels = channels;

  /* Pass 2: pixels. */
  size_t image_bytes = height * width * channels;
  if (n_ok > 0) {
    if (image_bytes > 0 && n_ok > SIZE_MAX / image_bytes) {
      rc = qt_err_set(err, QT_ENOMEM, "%s: %zu images of %zux%zu do not fit in memory", root, n_ok,
                      height, width);
      goto done;
    }
    ds->images = malloc(n_ok * image_bytes);
    if (!ds->images) {
      rc = qt_err_set(err, QT_ENOMEM, "%s: out of memory for %zu images of %zux%zux%zu", root, n_ok,
                      height, width, channels);
      goto done;
    }
    decode_shared sh = {&files,
                        slot,
                        messages,
                        ds->images,
                        height,
                        width,
                        channels,
                        p->interpolation,
                        p->threads ? p->threads : default_threads()};
    if (sh.threads > 16) sh.threads = 16;
    if ((rc = decode_all(&sh, err)) < 0) goto done;
  }

  /* Compact the slots of files that failed in pass 2, then set labels. */
  ds->labels = malloc((n_ok ? n_ok : 1) * sizeof *ds->labels);
  if (!ds->labels) {
    rc = qt_err_set(err, QT_ENOMEM, "out of memory");
    goto done;
  }
  size_t n = 0, skipped = 0;
  for (size_t i = 0; i < files.n; i++) {
    if (messages[i]) {
      QT_LOG_WARN("skipping %s: %s", files.items[i].path, messages[i]);
      skipped++;
      continue;
    }
    if (slot[i] != n)
      memmove(ds->images + n * image_bytes, ds->images + slot[i] * image_bytes, image_bytes);
    ds->labels[n++] = files.items[i].label;
  }
  ds->n = n;
  ds->n_skipped = skipped;
  if (skipped > 0)
    QT_LOG_WARN("%s: %zu images in %zu classes loaded, %zu file%s skipped (failed to decode)", root,
                n, ds->n_classes, skipped, skipped == 1 ? "" : "s");
  else
    QT_LOG_INFO("%s: %zu images in %zu classes loaded (%zux%zu, %zu channel%s)", root, n,
                ds->n_classes, height, width, channels, channels == 1 ? "" : "s");
  if (n == 0 && p->class_names) {
    /* An empty split of a layout is allowed. */
  } else if (!p->class_names) {
    counts = calloc(ds->n_classes, sizeof *counts);
    if (!counts) {
      rc = qt_err_set(err, QT_ENOMEM, "out of memory");
      goto done;
    }
    qt_dataset_class_counts(ds, counts);
    for (size_t k = 0; k < ds->n_classes; k++) {
      if (counts[k] == 0) {
        rc = qt_err_set(err, QT_ESCHEMA, "%s/%s: class '%s' has no %simages", root,
                        ds->class_names[k], ds->class_names[k], skipped ? "decodable " : "");
        goto done;
      }
    }
  }
  if (n == 0) {
    free(ds->images);
    ds->images = NULL;
  }

done:
  if (rc < 0) {
    qt_dataset_free(ds);
    ds = NULL;
  }
  *out = ds;
  free_list(class_dirs, n_dirs);
  if (messages)
    for (size_t i = 0; i < files.n; i++) free(messages[i]);
  free(messages);
  free(slot);
  free(infos);
  free(counts);
  file_list_free(&files);
  return rc;
}

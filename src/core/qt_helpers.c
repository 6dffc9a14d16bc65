/*
 * qt_helpers.c - reading whole files, strict number parsing, exact number
 * text, CSV fields and removing a tree.
 *
 * qt_file_read is the one place where qtune's loaders open files, so that
 * "cannot open" reads the same everywhere: QT_ENOENT when the path does not
 * exist, QT_EIO for everything else, always with the path and strerror().
 *
 * Number parsing uses the C library (correct rounding) but accepts only plain
 * decimal text: no hexadecimal, no "inf"/"nan", no trailing junk. strtod
 * follows the C locale's decimal point; qtune never calls setlocale().
 */
#include "core/qt_core.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------- */
/* Files                                                                      */
/* ------------------------------------------------------------------------- */

static int open_error(const char *path, int error_number, qt_err *err) {
  int code = (error_number == ENOENT || error_number == ENOTDIR) ? QT_ENOENT : QT_EIO;
  return qt_err_set(err, code, "%s: %s", path, strerror(error_number));
}

int qt_file_read(const char *path, char **data, size_t *length, qt_err *err) {
  if (!path || !data) return qt_err_set(err, QT_EINVAL, "qt_file_read: NULL argument");
  *data = NULL;
  if (length) *length = 0;

  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return open_error(path, errno, err);

  struct stat info;
  if (fstat(fd, &info) != 0) {
    int saved = errno;
    close(fd);
    return open_error(path, saved, err);
  }
  if (S_ISDIR(info.st_mode)) {
    close(fd);
    return open_error(path, EISDIR, err);
  }

  /* A regular file is read into one buffer of its size plus room for the
   * terminating NUL and for the final zero-length read, so large files are
   * never copied; pipes and files that grow while read fall back to
   * doubling. */
  size_t capacity = S_ISREG(info.st_mode) ? (size_t)info.st_size + 2 : 65536;
  char *buffer = malloc(capacity);
  size_t used = 0;
  int status = 0;
  while (buffer) {
    if (capacity - used < 2) {
      char *grown = capacity <= SIZE_MAX / 2 ? realloc(buffer, capacity * 2) : NULL;
      if (!grown) {
        free(buffer);
        buffer = NULL;
        break;
      }
      buffer = grown;
      capacity *= 2;
    }
    ssize_t n = read(fd, buffer + used, capacity - 1 - used);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      status = qt_err_set(err, QT_EIO, "%s: %s", path, strerror(errno));
      break;
    }
    if (n == 0) break;
    used += (size_t)n;
  }
  close(fd);

  if (!buffer) return qt_err_set(err, QT_ENOMEM, "%s: out of memory reading the file", path);
  if (status < 0) {
    free(buffer);
    return status;
  }
  buffer[used] = '\0';
  *data = buffer;
  if (length) *length = used;
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Numbers                                                                    */
/* ------------------------------------------------------------------------- */

/* Whether the rest of text is only whitespace. */
static int only_space(const char *text) {
  while (isspace((unsigned char)*text)) text++;
  return *text == '\0';
}

int qt_parse_double(const char *text, double *out) {
  if (!text) return QT_EPARSE;
  const char *start = text;
  while (isspace((unsigned char)*start)) start++;

  /* strtod also reads "inf", "nan(...)" and hexadecimal; a plain decimal
   * number starts with a digit or a point after its optional sign. */
  const char *body = start + (*start == '+' || *start == '-');
  if (!isdigit((unsigned char)body[0]) && body[0] != '.') return QT_EPARSE;
  if (body[0] == '0' && (body[1] == 'x' || body[1] == 'X')) return QT_EPARSE;

  char *end;
  double value = strtod(start, &end);
  if (end == start || !only_space(end) || !isfinite(value)) return QT_EPARSE;
  /* Underflow (ERANGE with a tiny result) is accepted: the nearest double is
   * the right answer for "1e-400". */
  if (out) *out = value;
  return 0;
}

int qt_parse_long(const char *text, long *out) {
  if (!text) return QT_EPARSE;
  const char *start = text;
  while (isspace((unsigned char)*start)) start++;
  const char *body = start + (*start == '+' || *start == '-');
  if (!isdigit((unsigned char)body[0])) return QT_EPARSE;

  char *end;
  errno = 0;
  long value = strtol(start, &end, 10);
  if (!only_space(end)) return QT_EPARSE;
  if (errno == ERANGE) return QT_ERANGE;
  if (out) *out = value;
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Directories                                                                */
/* ------------------------------------------------------------------------- */

int qt_mkdir_p(const char *path, qt_err *err) {
  char buf[4096];
  size_t length = strlen(path);
  if (length == 0 || length >= sizeof buf)
    return qt_err_set(err, QT_EINVAL, "qt_mkdir_p: bad path length %zu", length);
  memcpy(buf, path, length + 1);
  /* Create each prefix that ends at a '/', then the whole path. */
  for (size_t i = 1; i <= length; i++) {
    if (buf[i] != '/' && buf[i] != '\0') continue;
    char saved = buf[i];
    buf[i] = '\0';
    if (mkdir(buf, 0777) != 0 && errno != EEXIST) {
      int saved_errno = errno;
      buf[i] = saved;
      return qt_err_set(err, QT_EIO, "%s: %s", path, strerror(saved_errno));
    }
    buf[i] = saved;
  }
  struct stat info;
  if (stat(path, &info) != 0 || !S_ISDIR(info.st_mode))
    return qt_err_set(err, QT_EIO, "%s: not a directory", path);
  return 0;
}

void qt_remove_tree(const char *path) {
  struct stat info;
  if (lstat(path, &info) != 0) return;
  if (!S_ISDIR(info.st_mode)) {
    unlink(path);
    return;
  }
  DIR *dir = opendir(path);
  struct dirent *entry;
  char child[4096];
  while (dir && (entry = readdir(dir)) != NULL) {
    if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0) continue;
    if ((size_t)snprintf(child, sizeof child, "%s/%s", path, entry->d_name) >= sizeof child)
      continue;
    qt_remove_tree(child);
  }
  if (dir) closedir(dir);
  rmdir(path);
}

void qt_format_double(double value, char *buf, size_t size) {
  if (size == 0) return;
  buf[0] = '\0';
  if (!isfinite(value)) return;
  for (int digits = 15; digits <= 17; digits++) {
    snprintf(buf, size, "%.*g", digits, value);
    if (strtod(buf, NULL) == value) return;
  }
}

void qt_csv_write_field(FILE *file, const char *text) {
  if (!strpbrk(text, ",\"\r\n")) {
    fputs(text, file);
    return;
  }
  fputc('"', file);
  for (const char *p = text; *p; p++) {
    if (*p == '"') fputc('"', file);
    fputc(*p, file);
  }
  fputc('"', file);
}

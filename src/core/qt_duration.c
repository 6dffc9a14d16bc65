/*
 * qt_duration.c - parsing and printing durations, and the monotonic clock.
 *
 * Grammar (after surrounding whitespace is removed):
 *
 *   duration := number                       bare seconds: "90", "2.5"
 *             | part+                        "1h30m", "1.5h", "1d2h3m4s"
 *             | digits ":" two ":" two-frac  "1:30:00" (hours)
 *             | digits ":" two-frac          "90:05"   (minutes)
 *   part     := number unit                  units d h m s, each at most once,
 *                                            in that order
 *   number   := digits ["." digits*] | "." digits
 *   two      := two digits, value < 60;  two-frac := two ["." digits*]
 *
 * Signs, exponents, "inf" and "nan" are not numbers here: a duration is a
 * count of time a person typed, and anything else is far likelier a mistake.
 */
#include "core/qt_core.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------------- */
/* Parsing                                                                    */
/* ------------------------------------------------------------------------- */

/* Scans `number` at *cursor (within [*cursor, end)), converts it with strtod
 * (correct rounding) and advances the cursor. Returns 0, or -1 when there is
 * no number there. */
static int scan_number(const char **cursor, const char *end, double *value) {
  const char *p = *cursor;
  const char *start = p;
  size_t digits = 0;
  while (p < end && isdigit((unsigned char)*p)) p++, digits++;
  if (p < end && *p == '.') {
    p++;
    while (p < end && isdigit((unsigned char)*p)) p++, digits++;
  }
  if (digits == 0) return -1;

  /* The token is copied so that strtod cannot read past it (the input is
   * not cut at `end`). Durations are short; longer tokens are still valid
   * numbers, so they get a heap copy rather than a refusal. */
  size_t length = (size_t)(p - start);
  char small[64];
  char *token = length < sizeof small ? small : malloc(length + 1);
  if (!token) return -1;
  memcpy(token, start, length);
  token[length] = '\0';
  *value = strtod(token, NULL);
  if (token != small) free(token);
  *cursor = p;
  return 0;
}

/* Scans exactly two digits forming a value below 60 ("minutes or seconds
 * after the leading field"). */
static int scan_sexagesimal(const char **cursor, const char *end, double *value) {
  const char *p = *cursor;
  if (end - p < 2 || !isdigit((unsigned char)p[0]) || !isdigit((unsigned char)p[1])) return -1;
  int v = (p[0] - '0') * 10 + (p[1] - '0');
  if (v >= 60) return -1;
  *value = v;
  *cursor = p + 2;
  return 0;
}

/* "H:MM:SS" or "M:SS"; the last field may carry a fraction. */
static const char *parse_clock(const char *p, const char *end, double *seconds) {
  double fields[3];
  int count = 0;

  const char *lead = p;
  while (p < end && isdigit((unsigned char)*p)) p++;
  if (p == lead) return "a clock time must start with a number";
  if (scan_number(&lead, p, &fields[count++]) < 0) return "invalid number";

  while (p < end) {
    if (*p != ':') return "unexpected character in a clock time";
    p++;
    if (count == 3) return "a clock time has at most three fields (H:MM:SS)";
    if (scan_sexagesimal(&p, end, &fields[count]) < 0) {
      return "minutes and seconds must be two digits below 60";
    }
    count++;
    if (p < end && *p == '.') {
      /* Only the seconds field may have a fraction. */
      const char *fraction = p;
      double part;
      p++;
      while (p < end && isdigit((unsigned char)*p)) p++;
      if (p != end) return "only the seconds may have a fraction";
      if (scan_number(&fraction, end, &part) < 0) return "a fraction needs digits";
      fields[count - 1] += part;
    }
  }
  if (count < 2) return "a clock time needs at least two fields (MM:SS)";

  *seconds =
      count == 3 ? fields[0] * 3600.0 + fields[1] * 60.0 + fields[2] : fields[0] * 60.0 + fields[1];
  return NULL;
}

/* Bare seconds or a sequence of number-unit parts. */
static const char *parse_units(const char *p, const char *end, double *seconds) {
  static const char units[] = "dhms";
  static const double unit_seconds[] = {86400.0, 3600.0, 60.0, 1.0};
  double total = 0.0;
  int next_unit = 0; /* index into units of the smallest unit still allowed */
  int parts = 0;

  while (p < end) {
    double value;
    if (scan_number(&p, end, &value) < 0) {
      return parts ? "expected a number after the unit" : "expected a number";
    }
    if (p == end) {
      /* A number without a unit is bare seconds, but only on its own:
       * "1h30" is more likely a typo than 1 hour and 30 seconds. */
      if (parts) return "the last number has no unit";
      *seconds = value;
      return NULL;
    }
    const char *unit = strchr(units, *p);
    if (*p == '\0' || !unit) return "unknown unit (expected d, h, m or s)";
    int index = (int)(unit - units);
    if (index < next_unit) return "units must appear at most once, in the order d, h, m, s";
    total += value * unit_seconds[index];
    next_unit = index + 1;
    parts++;
    p++;
  }
  *seconds = total;
  return NULL;
}

int qt_duration_parse(const char *text, double *seconds, qt_err *err) {
  if (!text) return qt_err_set(err, QT_EINVAL, "invalid duration: NULL");
  const char *start = text;
  const char *end = text + strlen(text);
  while (start < end && isspace((unsigned char)*start)) start++;
  while (end > start && isspace((unsigned char)end[-1])) end--;

  double value = 0.0;
  const char *problem;
  if (start == end) {
    problem = "empty";
  } else if (memchr(start, ':', (size_t)(end - start))) {
    problem = parse_clock(start, end, &value);
  } else {
    problem = parse_units(start, end, &value);
  }
  if (!problem && !isfinite(value)) problem = "too large";
  if (problem) {
    return qt_err_set(err, QT_EPARSE,
                      "invalid duration \"%s\": %s (examples: 90, 90s, 45m, 1h30m, 1d, 1:30:00)",
                      text, problem);
  }
  if (seconds) *seconds = value;
  return 0;
}

/* ------------------------------------------------------------------------- */
/* Formatting                                                                 */
/* ------------------------------------------------------------------------- */

void qt_duration_format(double seconds, char *buf, size_t size) {
  if (!buf || size == 0) return;
  if (isnan(seconds)) {
    snprintf(buf, size, "nan");
    return;
  }
  if (seconds < 0) {
    /* Negative durations appear only as differences; print them honestly. */
    if (size < 2) {
      buf[0] = '\0';
      return;
    }
    buf[0] = '-';
    qt_duration_format(-seconds, buf + 1, size - 1);
    return;
  }
  if (isinf(seconds) || seconds >= 1e15) {
    snprintf(buf, size, "%gs", seconds);
    return;
  }

  /* Below a minute, tenths matter ("12.3s"); rounding happens first so that
   * 59.96 s prints as "1m", not "60s". */
  double tenths = round(seconds * 10.0);
  if (tenths < 600.0) {
    if (fmod(tenths, 10.0) == 0.0) {
      snprintf(buf, size, "%.0fs", tenths / 10.0);
    } else {
      snprintf(buf, size, "%.1fs", tenths / 10.0);
    }
    return;
  }

  long long total = llround(seconds);
  long long days = total / 86400;
  int hours = (int)(total / 3600 % 24);
  int minutes = (int)(total / 60 % 60);
  int secs = (int)(total % 60);

  size_t used = 0;
  buf[0] = '\0';
  if (days && used < size) used += (size_t)snprintf(buf + used, size - used, "%lldd", days);
  if (hours && used < size) used += (size_t)snprintf(buf + used, size - used, "%dh", hours);
  if (minutes && used < size) used += (size_t)snprintf(buf + used, size - used, "%dm", minutes);
  if (secs && used < size) snprintf(buf + used, size - used, "%ds", secs);
}

/* ------------------------------------------------------------------------- */
/* Clock                                                                      */
/* ------------------------------------------------------------------------- */

double qt_time_now(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

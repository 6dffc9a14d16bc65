/*
 * qt_yaml.c - a parsed YAML document on libyaml's document API.
 *
 * libyaml builds the whole node graph (aliases resolved to shared nodes, so
 * "billion laughs" inputs stay small) and keeps a start mark on every node.
 * This file adds what qtune's loaders need on top: errors that name
 * file:line:column, typed scalar reads, and key checking for mappings.
 *
 * Node handles are libyaml node ids (1-based); 0 means "no node". Every
 * accessor accepts 0 or an out-of-range handle and answers "nothing" (kind
 * NONE, NULL text, length 0), so lookups can be chained without checks.
 *
 * libyaml does not resolve tags or merge keys ("<<"): a merge key is an
 * ordinary key here, and typed reads decide a scalar's type from its text and
 * style alone (a quoted or block scalar is always a string).
 */
#include "core/qt_core.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

struct qt_yaml_doc {
  yaml_document_t document; /* owns every node and scalar text */
  char *name;               /* file path or caller-given name, for messages */
};

/* ------------------------------------------------------------------------- */
/* Loading                                                                    */
/* ------------------------------------------------------------------------- */

/* libyaml's reader reports byte offsets, not marks, for encoding errors;
 * this turns an offset into the 1-based line and column used everywhere. */
static void offset_to_position(const char *text, size_t length, size_t offset, int *line,
                               int *column) {
  if (offset > length) offset = length;
  *line = 1;
  size_t line_start = 0;
  for (size_t i = 0; i < offset; i++) {
    if (text[i] == '\n') {
      (*line)++;
      line_start = i + 1;
    }
  }
  *column = (int)(offset - line_start) + 1;
}

/* Records the parser's error in err as "name:line:col: problem (context)". */
static int parser_error(const yaml_parser_t *parser, const char *text, size_t length,
                        const char *name, qt_err *err) {
  const char *problem = parser->problem ? parser->problem : "unknown problem";
  switch (parser->error) {
    case YAML_MEMORY_ERROR:
      return qt_err_set(err, QT_ENOMEM, "%s: out of memory while parsing YAML", name);
    case YAML_READER_ERROR: {
      int line, column;
      offset_to_position(text, length, parser->problem_offset, &line, &column);
      if (parser->problem_value != -1) {
        return qt_err_set(err, QT_EPARSE, "%s:%d:%d: %s (byte 0x%02X)", name, line, column, problem,
                          (unsigned)parser->problem_value);
      }
      return qt_err_set(err, QT_EPARSE, "%s:%d:%d: %s", name, line, column, problem);
    }
    default:
      break;
  }

  int line = (int)parser->problem_mark.line + 1;
  int column = (int)parser->problem_mark.column + 1;
  if (!parser->context) {
    return qt_err_set(err, QT_EPARSE, "%s:%d:%d: %s", name, line, column, problem);
  }
  /* The context mark is where the construct that failed began: for an
   * unclosed quote or bracket the problem is found at the end of the input,
   * and the opening position is what the reader needs to fix it. */
  int context_line = (int)parser->context_mark.line + 1;
  int context_column = (int)parser->context_mark.column + 1;
  if (context_line == line && context_column == column) {
    return qt_err_set(err, QT_EPARSE, "%s:%d:%d: %s (%s)", name, line, column, problem,
                      parser->context);
  }
  return qt_err_set(err, QT_EPARSE, "%s:%d:%d: %s (%s at line %d, column %d)", name, line, column,
                    problem, parser->context, context_line, context_column);
}

/* qtune reads one document per file; a second one is most likely a stray
 * "---" or a concatenation mistake, and silently ignoring it would hide
 * settings from the user. Syntax errors after the first document surface
 * here too. */
static int check_no_second_document(yaml_parser_t *parser, const char *text, size_t length,
                                    const char *name, qt_err *err) {
  yaml_document_t extra;
  if (!yaml_parser_load(parser, &extra)) return parser_error(parser, text, length, name, err);
  int status = 0;
  if (yaml_document_get_root_node(&extra)) {
    status = qt_err_set(err, QT_ESCHEMA, "%s:%d:%d: a second YAML document; expected one per file",
                        name, (int)extra.start_mark.line + 1, (int)extra.start_mark.column + 1);
  }
  yaml_document_delete(&extra);
  return status;
}

int qt_yaml_load_string(const char *text, size_t length, const char *name, qt_yaml_doc_t **out,
                        qt_err *err) {
  if (!out) return qt_err_set(err, QT_EINVAL, "qt_yaml_load_string: out is NULL");
  *out = NULL;
  if (!name) name = "<string>";
  if (!text && length > 0) return qt_err_set(err, QT_EINVAL, "%s: text is NULL", name);

  qt_yaml_doc_t *doc = calloc(1, sizeof *doc);
  if (!doc) return qt_err_set(err, QT_ENOMEM, "%s: out of memory", name);
  doc->name = strdup(name);
  if (!doc->name) {
    free(doc);
    return qt_err_set(err, QT_ENOMEM, "%s: out of memory", name);
  }

  yaml_parser_t parser;
  if (!yaml_parser_initialize(&parser)) {
    free(doc->name);
    free(doc);
    return qt_err_set(err, QT_ENOMEM, "%s: out of memory while parsing YAML", name);
  }
  yaml_parser_set_input_string(&parser, (const unsigned char *)(text ? text : ""), length);

  int status = 0;
  int loaded = 0; /* whether doc->document must be deleted */
  if (!yaml_parser_load(&parser, &doc->document)) {
    status = parser_error(&parser, text, length, name, err);
  } else {
    loaded = 1;
    if (!yaml_document_get_root_node(&doc->document)) {
      status = qt_err_set(err, QT_ESCHEMA, "%s: empty document", name);
    } else {
      status = check_no_second_document(&parser, text, length, name, err);
    }
  }
  yaml_parser_delete(&parser);

  if (status < 0) {
    if (loaded) yaml_document_delete(&doc->document);
    free(doc->name);
    free(doc);
    return status;
  }
  *out = doc;
  return 0;
}

int qt_yaml_load_file(const char *path, qt_yaml_doc_t **out, qt_err *err) {
  if (!out || !path) return qt_err_set(err, QT_EINVAL, "qt_yaml_load_file: NULL argument");
  *out = NULL;
  /* Reading the file whole keeps one place for open/read errors and lets
   * encoding errors be turned into line:column like every other error. */
  char *text;
  size_t length;
  int status = qt_file_read(path, &text, &length, err);
  if (status < 0) return status;
  status = qt_yaml_load_string(text, length, path, out, err);
  free(text);
  return status;
}

void qt_yaml_free(qt_yaml_doc_t *doc) {
  if (!doc) return;
  yaml_document_delete(&doc->document);
  free(doc->name);
  free(doc);
}

/* ------------------------------------------------------------------------- */
/* Navigation                                                                 */
/* ------------------------------------------------------------------------- */

/* The node behind a handle, or NULL for 0 and out-of-range handles
 * (yaml_document_get_node checks the range). */
static yaml_node_t *node_at(const qt_yaml_doc_t *doc, qt_yaml_node node) {
  if (!doc || node <= 0) return NULL;
  return yaml_document_get_node((yaml_document_t *)&doc->document, node);
}

const char *qt_yaml_name(const qt_yaml_doc_t *doc) {
  return doc ? doc->name : "";
}

qt_yaml_node qt_yaml_root(const qt_yaml_doc_t *doc) {
  /* libyaml numbers nodes in creation order, so the root (created first)
   * is node 1 whenever the document is not empty. */
  return node_at(doc, 1) ? 1 : 0;
}

qt_yaml_kind qt_yaml_kind_of(const qt_yaml_doc_t *doc, qt_yaml_node node) {
  const yaml_node_t *n = node_at(doc, node);
  if (!n) return QT_YAML_KIND_NONE;
  switch (n->type) {
    case YAML_SCALAR_NODE:
      return QT_YAML_KIND_SCALAR;
    case YAML_SEQUENCE_NODE:
      return QT_YAML_KIND_SEQUENCE;
    case YAML_MAPPING_NODE:
      return QT_YAML_KIND_MAPPING;
    default:
      return QT_YAML_KIND_NONE;
  }
}

const char *qt_yaml_scalar(const qt_yaml_doc_t *doc, qt_yaml_node node) {
  const yaml_node_t *n = node_at(doc, node);
  if (!n || n->type != YAML_SCALAR_NODE) return NULL;
  return (const char *)n->data.scalar.value;
}

int qt_yaml_scalar_is_quoted(const qt_yaml_doc_t *doc, qt_yaml_node node) {
  const yaml_node_t *n = node_at(doc, node);
  if (!n || n->type != YAML_SCALAR_NODE) return 0;
  return n->data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
         n->data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE;
}

size_t qt_yaml_length(const qt_yaml_doc_t *doc, qt_yaml_node node) {
  const yaml_node_t *n = node_at(doc, node);
  if (!n) return 0;
  if (n->type == YAML_SEQUENCE_NODE) {
    return (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
  }
  if (n->type == YAML_MAPPING_NODE) {
    return (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
  }
  return 0;
}

qt_yaml_node qt_yaml_item(const qt_yaml_doc_t *doc, qt_yaml_node seq, size_t index) {
  const yaml_node_t *n = node_at(doc, seq);
  if (!n || n->type != YAML_SEQUENCE_NODE || index >= qt_yaml_length(doc, seq)) return 0;
  return n->data.sequence.items.start[index];
}

/* The pair at index of a mapping, or NULL. */
static const yaml_node_pair_t *pair_at(const qt_yaml_doc_t *doc, qt_yaml_node map, size_t index) {
  const yaml_node_t *n = node_at(doc, map);
  if (!n || n->type != YAML_MAPPING_NODE || index >= qt_yaml_length(doc, map)) return NULL;
  return &n->data.mapping.pairs.start[index];
}

qt_yaml_node qt_yaml_pair_key(const qt_yaml_doc_t *doc, qt_yaml_node map, size_t index) {
  const yaml_node_pair_t *pair = pair_at(doc, map, index);
  return pair ? pair->key : 0;
}

qt_yaml_node qt_yaml_pair_value(const qt_yaml_doc_t *doc, qt_yaml_node map, size_t index) {
  const yaml_node_pair_t *pair = pair_at(doc, map, index);
  return pair ? pair->value : 0;
}

qt_yaml_node qt_yaml_get(const qt_yaml_doc_t *doc, qt_yaml_node map, const char *key) {
  if (!key) return 0;
  size_t count = qt_yaml_length(doc, map);
  for (size_t i = 0; i < count; i++) {
    const yaml_node_pair_t *pair = pair_at(doc, map, i);
    if (!pair) return 0; /* not a mapping */
    const char *text = qt_yaml_scalar(doc, pair->key);
    if (text && strcmp(text, key) == 0) return pair->value;
  }
  return 0;
}

void qt_yaml_mark(const qt_yaml_doc_t *doc, qt_yaml_node node, int *line, int *column) {
  const yaml_node_t *n = node_at(doc, node);
  int l = n ? (int)n->start_mark.line + 1 : 0;
  int c = n ? (int)n->start_mark.column + 1 : 0;
  if (line) *line = l;
  if (column) *column = c;
}

/* ------------------------------------------------------------------------- */
/* Errors at a node                                                           */
/* ------------------------------------------------------------------------- */

int qt_yaml_error(qt_err *err, int code, const qt_yaml_doc_t *doc, qt_yaml_node node,
                  const char *fmt, ...) {
  if (!err) return code;
  char message[sizeof err->msg];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);

  const char *name = qt_yaml_name(doc);
  if (!node_at(doc, node)) return qt_err_set(err, code, "%s: %s", name, message);
  int line, column;
  qt_yaml_mark(doc, node, &line, &column);
  return qt_err_set(err, code, "%s:%d:%d: %s", name, line, column, message);
}

/* "a mapping", "the string \"x\"", ... for "expected X, got Y" messages. */
static const char *kind_phrase(const qt_yaml_doc_t *doc, qt_yaml_node node) {
  switch (qt_yaml_kind_of(doc, node)) {
    case QT_YAML_KIND_SEQUENCE:
      return "a sequence";
    case QT_YAML_KIND_MAPPING:
      return "a mapping";
    case QT_YAML_KIND_SCALAR:
      return "a scalar";
    default:
      return "nothing";
  }
}

/* The text of a plain (unquoted, non-block) scalar, or NULL after recording
 * "expected <what>, got ..." in err. Quoted scalars are strings by YAML's
 * rules, so "3" never silently becomes a number. */
static const char *plain_scalar(const qt_yaml_doc_t *doc, qt_yaml_node node, const char *what,
                                qt_err *err) {
  const yaml_node_t *n = node_at(doc, node);
  if (!n || n->type != YAML_SCALAR_NODE) {
    qt_yaml_error(err, QT_ESCHEMA, doc, node, "expected %s, got %s", what, kind_phrase(doc, node));
    return NULL;
  }
  const char *text = (const char *)n->data.scalar.value;
  if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) {
    qt_yaml_error(err, QT_ESCHEMA, doc, node,
                  "expected %s, got the string \"%s\" (quoted values are strings)", what, text);
    return NULL;
  }
  return text;
}

/* ------------------------------------------------------------------------- */
/* Typed reads                                                                */
/* ------------------------------------------------------------------------- */

int qt_yaml_to_double(const qt_yaml_doc_t *doc, qt_yaml_node node, double *out, qt_err *err) {
  const char *text = plain_scalar(doc, node, "a number", err);
  if (!text) return QT_ESCHEMA;
  double value;
  if (qt_parse_double(text, &value) < 0) {
    return qt_yaml_error(err, QT_ESCHEMA, doc, node, "expected a finite number, got \"%s\"", text);
  }
  if (out) *out = value;
  return 0;
}

int qt_yaml_to_int(const qt_yaml_doc_t *doc, qt_yaml_node node, long *out, qt_err *err) {
  const char *text = plain_scalar(doc, node, "an integer", err);
  if (!text) return QT_ESCHEMA;
  long value;
  int status = qt_parse_long(text, &value);
  if (status == QT_ERANGE) {
    return qt_yaml_error(err, QT_ESCHEMA, doc, node, "integer %s is out of range", text);
  }
  if (status < 0) {
    return qt_yaml_error(err, QT_ESCHEMA, doc, node, "expected an integer, got \"%s\"", text);
  }
  if (out) *out = value;
  return 0;
}

int qt_yaml_to_bool(const qt_yaml_doc_t *doc, qt_yaml_node node, int *out, qt_err *err) {
  static const char *const truths[] = {"true", "yes", "on"};
  static const char *const falsehoods[] = {"false", "no", "off"};
  const char *text = plain_scalar(doc, node, "a boolean", err);
  if (!text) return QT_ESCHEMA;
  for (size_t i = 0; i < sizeof truths / sizeof truths[0]; i++) {
    if (strcasecmp(text, truths[i]) == 0) {
      if (out) *out = 1;
      return 0;
    }
    if (strcasecmp(text, falsehoods[i]) == 0) {
      if (out) *out = 0;
      return 0;
    }
  }
  return qt_yaml_error(err, QT_ESCHEMA, doc, node,
                       "expected a boolean (true/false, yes/no, on/off), got \"%s\"", text);
}

int qt_yaml_is_null(const qt_yaml_doc_t *doc, qt_yaml_node node) {
  const yaml_node_t *n = node_at(doc, node);
  if (!n || n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) {
    return 0;
  }
  const char *text = (const char *)n->data.scalar.value;
  return text[0] == '\0' || strcmp(text, "~") == 0 || strcasecmp(text, "null") == 0;
}

/* ------------------------------------------------------------------------- */
/* Key checking                                                               */
/* ------------------------------------------------------------------------- */

/* Writes "a, b, c" into buf for the "allowed: ..." part of a message. */
static void join_names(const char *const *names, char *buf, size_t size) {
  size_t used = 0;
  buf[0] = '\0';
  for (size_t i = 0; names[i] && used < size; i++) {
    int n = snprintf(buf + used, size - used, "%s%s", i ? ", " : "", names[i]);
    if (n < 0) break;
    used += (size_t)n;
  }
}

int qt_yaml_check_keys(const qt_yaml_doc_t *doc, qt_yaml_node map, const char *const *allowed,
                       qt_err *err) {
  if (qt_yaml_kind_of(doc, map) != QT_YAML_KIND_MAPPING) {
    return qt_yaml_error(err, QT_ESCHEMA, doc, map, "expected a mapping, got %s",
                         kind_phrase(doc, map));
  }
  size_t count = qt_yaml_length(doc, map);
  for (size_t i = 0; i < count; i++) {
    qt_yaml_node key = qt_yaml_pair_key(doc, map, i);
    const char *name = qt_yaml_scalar(doc, key);
    if (!name) {
      return qt_yaml_error(err, QT_ESCHEMA, doc, key, "expected a key, got %s",
                           kind_phrase(doc, key));
    }

    if (allowed) {
      int known = 0;
      for (size_t a = 0; allowed[a] && !known; a++) known = strcmp(allowed[a], name) == 0;
      if (!known) {
        char list[768];
        join_names(allowed, list, sizeof list);
        return qt_yaml_error(err, QT_ESCHEMA, doc, key, "unknown key \"%s\" (allowed: %s)", name,
                             list);
      }
    }

    /* Quadratic, but mappings in configuration files have a handful of keys,
     * and this way the error can point at both occurrences. */
    for (size_t j = 0; j < i; j++) {
      qt_yaml_node earlier = qt_yaml_pair_key(doc, map, j);
      const char *earlier_name = qt_yaml_scalar(doc, earlier);
      if (earlier_name && strcmp(earlier_name, name) == 0) {
        int line, column;
        qt_yaml_mark(doc, earlier, &line, &column);
        return qt_yaml_error(err, QT_ESCHEMA, doc, key,
                             "duplicate key \"%s\" (first at line %d, column %d)", name, line,
                             column);
      }
    }
  }
  return 0;
}

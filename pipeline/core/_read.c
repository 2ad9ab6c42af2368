/* The worker's per-event inputs read in C: a fetched Kafka record batch's records
 * (agents/batching.py), a log line's flat JSON object, the usual nginx text line, a
 * client address and the client behind trusted proxies (pipeline.core.formats.detect,
 * .nginx_text, .values, pipeline.core.extract.client_ip).
 *
 * The Python code is the definition, as for _wire.c's writers: detect.py reads a JSON
 * line with orjson.loads, nginx_text.py a text line with its regexes,
 * and unescape, values.ipv4_value an address with inet_pton. This module
 * answers only the usual case and answers it exactly as they do; for anything else it
 * returns None (-1 for addresses) and the caller takes the Python path, which also
 * reports every error. The tests hold the two to each other on any input (property
 * tests against orjson, the regexes and inet_pton).
 *
 * flat_json is what orjson.loads does for an access-log line, without the dict: the
 * keys come back as one tuple shared by every line with the same keys in the same
 * order (what detect.py's shape memo is keyed by), the values as a tuple beside it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_bytes.h"

/* ---- a flat JSON object ----------------------------------------------------------- */

/* Keys of one object read here; an object with more goes to orjson (detect.py's
 * MAX_JSON_KEYS is larger and applies either way). */
#define FLAT_MAX_KEYS 256
/* Key tuples kept (distinct log formats in one stream), and the key bytes kept for one. */
#define KEYSETS 8
#define KEYSET_MAX_BYTES 8192
/* A float's text read here (longer: orjson). */
#define FLOAT_MAX_CHARS 40

typedef struct {
    const char *p;
    Py_ssize_t n;
} span;

typedef struct {
    Py_ssize_t count;
    Py_ssize_t lengths[FLAT_MAX_KEYS];
    char *bytes;      /* the keys' raw bytes, one after another */
    PyObject *keys;   /* the tuple of key strs; NULL: an empty slot */
    int duplicated;   /* a key occurs twice: orjson's dict is smaller than the pairs */
} keyset;

static keyset keysets[KEYSETS];
static int keyset_next;

static inline int is_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static inline const char *skip_space(const char *p, const char *end) {
    while (p < end && is_space((unsigned char)*p)) p++;
    return p;
}

/* A str of ASCII bytes. */
static PyObject *ascii_text(const char *s, Py_ssize_t n) {
    PyObject *o = PyUnicode_New(n, 127);
    if (o != NULL) memcpy(PyUnicode_1BYTE_DATA(o), s, (size_t)n);
    return o;
}

/* A str of UTF-8 bytes: NULL (no error set) when they are not valid UTF-8. */
static PyObject *text_of(const char *s, Py_ssize_t n, int ascii) {
    if (ascii) return ascii_text(s, n);
    PyObject *o = PyUnicode_DecodeUTF8(s, n, NULL);
    if (o == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) PyErr_Clear();
    return o;
}

static int hex4(const char *p, const char *end) {
    if (end - p < 4) return -1;
    int v = 0;
    for (int i = 0; i < 4; i++) {
        int d = hex_digit((unsigned char)p[i]);
        if (d < 0) return -1;
        v = v << 4 | d;
    }
    return v;
}

/* The rest of a string holding escapes, from ``p`` (at a backslash; ``start`` its
 * opening quote + 1; ``ascii``: whether the bytes before ``p`` are): unescaped into a
 * buffer. Surrogate escapes (pairs included) go to orjson, which knows what it
 * accepts of them. */
static PyObject *escaped_text(const char *start, const char *p, const char *end, int ascii,
                              const char **after) {
    char *buf = PyMem_Malloc((size_t)(end - start) + 1);
    if (buf == NULL) return PyErr_NoMemory();
    size_t n = (size_t)(p - start);
    memcpy(buf, start, n);
    PyObject *result = NULL;
    while (p < end) {
        /* A plain run, eight bytes at a time (an envelope's line is mostly plain). */
        while (end - p >= 8) {
            uint64_t word;
            memcpy(&word, p, 8);
            if (json_word_stops(word)) break;
            if (word & WORD_HIGHS) ascii = 0;
            memcpy(buf + n, p, 8);
            n += 8;
            p += 8;
        }
        if (p >= end) break;
        unsigned char c = (unsigned char)*p;
        if (c == '"') {
            *after = p + 1;
            result = text_of(buf, (Py_ssize_t)n, ascii);
            break;
        }
        if (c < 0x20) break;
        if (c != '\\') {
            if (c >= 0x80) ascii = 0;
            buf[n++] = (char)c;
            p++;
            continue;
        }
        if (p + 1 >= end) break;
        char e = p[1];
        p += 2;
        switch (e) {
            case '"': buf[n++] = '"'; continue;
            case '\\': buf[n++] = '\\'; continue;
            case '/': buf[n++] = '/'; continue;
            case 'b': buf[n++] = '\b'; continue;
            case 'f': buf[n++] = '\f'; continue;
            case 'n': buf[n++] = '\n'; continue;
            case 'r': buf[n++] = '\r'; continue;
            case 't': buf[n++] = '\t'; continue;
            case 'u': break;
            default: goto out;
        }
        int code = hex4(p, end);
        if (code < 0 || (code >= 0xD800 && code <= 0xDFFF)) goto out;
        p += 4;
        if (code < 0x80) {
            buf[n++] = (char)code;
        } else if (code < 0x800) {
            ascii = 0;
            buf[n++] = (char)(0xC0 | code >> 6);
            buf[n++] = (char)(0x80 | (code & 0x3F));
        } else {
            ascii = 0;
            buf[n++] = (char)(0xE0 | code >> 12);
            buf[n++] = (char)(0x80 | (code >> 6 & 0x3F));
            buf[n++] = (char)(0x80 | (code & 0x3F));
        }
    }
out:
    PyMem_Free(buf);
    return result;
}

/* A string from ``p`` (just past its opening quote) -> a str; ``*after`` past its
 * closing quote. NULL with no error set: not the usual string (orjson decides). */
static PyObject *string_at(const char *p, const char *end, const char **after) {
    const char *start = p;
    uint64_t high = 0;
    while (end - p >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        if (json_word_stops(word)) break;
        high |= word;
        p += 8;
    }
    for (; p < end; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') {
            *after = p + 1;
            return text_of(start, p - start, (high & WORD_HIGHS) == 0);
        }
        if (c == '\\') return escaped_text(start, p, end, (high & WORD_HIGHS) == 0, after);
        if (c < 0x20) return NULL;
        high |= (uint64_t)c;
    }
    return NULL;
}

/* A number from ``p``: an int (int64, at most 18 digits) or a float without an
 * exponent, as orjson reads them; NULL (no error set) for any other. */
static PyObject *number_at(const char *p, const char *end, const char **after) {
    const char *start = p;
    if (p < end && *p == '-') p++;
    const char *digits = p;
    while (p < end && *p >= '0' && *p <= '9') p++;
    Py_ssize_t int_digits = p - digits;
    if (int_digits == 0 || (int_digits > 1 && *digits == '0')) return NULL;
    if (p < end && (*p == 'e' || *p == 'E')) return NULL;
    if (p < end && *p == '.') {
        const char *fraction = ++p;
        while (p < end && *p >= '0' && *p <= '9') p++;
        if (p == fraction || (p < end && (*p == 'e' || *p == 'E'))) return NULL;
        if (p - start > FLOAT_MAX_CHARS) return NULL;
        char text[FLOAT_MAX_CHARS + 1];
        memcpy(text, start, (size_t)(p - start));
        text[p - start] = '\0';
        char *stop;
        double v = PyOS_string_to_double(text, &stop, NULL);
        if (v == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return NULL;
        }
        if (stop != text + (p - start)) return NULL;
        *after = p;
        return PyFloat_FromDouble(v);
    }
    if (int_digits > 18) return NULL;
    long long v = 0;
    for (const char *q = digits; q < p; q++) v = v * 10 + (*q - '0');
    *after = p;
    return PyLong_FromLongLong(*start == '-' ? -v : v);
}

static PyObject *value_at(const char *p, const char *end, const char **after) {
    if (p >= end) return NULL;
    switch (*p) {
        case '"': return string_at(p + 1, end, after);
        case 't':
            if (end - p >= 4 && memcmp(p, "true", 4) == 0) {
                *after = p + 4;
                Py_RETURN_TRUE;
            }
            return NULL;
        case 'f':
            if (end - p >= 5 && memcmp(p, "false", 5) == 0) {
                *after = p + 5;
                Py_RETURN_FALSE;
            }
            return NULL;
        case 'n':
            if (end - p >= 4 && memcmp(p, "null", 4) == 0) {
                *after = p + 4;
                Py_RETURN_NONE;
            }
            return NULL;
        default:
            if (*p == '-' || (*p >= '0' && *p <= '9')) return number_at(p, end, after);
            return NULL; /* objects, arrays: orjson */
    }
}

/* A kept set whose first key is this one (the most recently made first), or NULL. */
static const keyset *starting_with(const char *key, Py_ssize_t n) {
    for (int k = 1; k <= KEYSETS; k++) {
        const keyset *set = &keysets[(keyset_next - k + KEYSETS) % KEYSETS];
        if (set->keys != NULL && set->count > 0 && set->lengths[0] == n &&
            memcmp(set->bytes, key, (size_t)n) == 0)
            return set;
    }
    return NULL;
}

static int same_keys(const keyset *set, const span *keys, Py_ssize_t count) {
    if (set->keys == NULL || set->count != count) return 0;
    const char *stored = set->bytes;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (set->lengths[i] != keys[i].n || memcmp(stored, keys[i].p, (size_t)keys[i].n) != 0)
            return 0;
        stored += keys[i].n;
    }
    return 1;
}

/* The tuple of these keys (a new reference; the same object for the same keys while
 * they are kept), and whether one occurs twice. NULL: an error, or (none set) a key
 * that is not valid UTF-8. */
static PyObject *key_tuple(const span *keys, Py_ssize_t count, int *duplicated) {
    for (int i = 0; i < KEYSETS; i++) {
        if (same_keys(&keysets[i], keys, count)) {
            *duplicated = keysets[i].duplicated;
            Py_INCREF(keysets[i].keys);
            return keysets[i].keys;
        }
    }
    PyObject *tuple = PyTuple_New(count);
    if (tuple == NULL) return NULL;
    size_t total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        int ascii = 1;
        for (Py_ssize_t k = 0; k < keys[i].n; k++)
            if ((unsigned char)keys[i].p[k] >= 0x80) ascii = 0;
        PyObject *key = text_of(keys[i].p, keys[i].n, ascii);
        if (key == NULL) {
            Py_DECREF(tuple);
            return NULL;
        }
        PyTuple_SET_ITEM(tuple, i, key);
        total += (size_t)keys[i].n;
    }
    /* Raw bytes equal <=> strs equal: keys here hold no escapes, and strict UTF-8 has
     * one spelling per text. */
    int twice = 0;
    for (Py_ssize_t i = 0; i < count && !twice; i++)
        for (Py_ssize_t j = i + 1; j < count; j++)
            if (keys[i].n == keys[j].n && memcmp(keys[i].p, keys[j].p, (size_t)keys[i].n) == 0) {
                twice = 1;
                break;
            }
    *duplicated = twice;
    if (total <= KEYSET_MAX_BYTES) {
        char *bytes = PyMem_Malloc(total + 1);
        if (bytes != NULL) {
            keyset *set = &keysets[keyset_next];
            keyset_next = (keyset_next + 1) % KEYSETS;
            Py_CLEAR(set->keys);
            PyMem_Free(set->bytes);
            char *q = bytes;
            for (Py_ssize_t i = 0; i < count; i++) {
                memcpy(q, keys[i].p, (size_t)keys[i].n);
                q += keys[i].n;
                set->lengths[i] = keys[i].n;
            }
            set->bytes = bytes;
            set->count = count;
            set->duplicated = twice;
            Py_INCREF(tuple);
            set->keys = tuple;
        }
    }
    return tuple;
}

/* flat_json(data) -> (keys, values) | None: a JSON object (bytes or str) whose values
 * are all strings, numbers, booleans or null, with no key twice, as orjson.loads reads
 * it: keys == tuple(d), values == tuple(d.values()) of its dict d. None: anything
 * else (nested values, exponents, big ints, surrogate escapes, invalid JSON or UTF-8,
 * more than FLAT_MAX_KEYS keys); orjson then reads it, or says what is wrong. */
static PyObject *flat_json(PyObject *self, PyObject *arg) {
    (void)self;
    const char *s;
    Py_ssize_t n;
    if (PyBytes_CheckExact(arg)) {
        s = PyBytes_AS_STRING(arg);
        n = PyBytes_GET_SIZE(arg);
    } else if (PyUnicode_CheckExact(arg)) {
        s = PyUnicode_AsUTF8AndSize(arg, &n);
        if (s == NULL) {
            PyErr_Clear(); /* lone surrogates: orjson's error */
            Py_RETURN_NONE;
        }
    } else {
        Py_RETURN_NONE;
    }
    const char *p = s, *end = s + n;
    span keys[FLAT_MAX_KEYS];
    PyObject *values[FLAT_MAX_KEYS];
    Py_ssize_t count = 0;
    PyObject *result = NULL;
    /* The keys are expected to be those of a kept set that starts with the same key
     * (one format logs the same keys in the same order): each is compared with the
     * set's instead of scanned for its end, and the set is known without a lookup
     * when all match. */
    const keyset *expected = NULL;
    const char *expected_key = NULL;
    p = skip_space(p, end);
    if (p >= end || *p != '{') goto other;
    p = skip_space(p + 1, end);
    if (p < end && *p == '}') {
        p++;
    } else {
        for (;;) {
            if (p >= end || *p != '"' || count == FLAT_MAX_KEYS) goto other;
            const char *key = ++p;
            if (expected != NULL && count > 0) {
                Py_ssize_t length = count < expected->count ? expected->lengths[count] : -1;
                if (length >= 0 && end - p > length && p[length] == '"' &&
                    memcmp(p, expected_key, (size_t)length) == 0) {
                    expected_key += length;
                    p += length;
                } else {
                    expected = NULL;
                }
            }
            if (expected == NULL)
                while (p < end && *p != '"' && *p != '\\' && (unsigned char)*p >= 0x20) p++;
            if (p >= end || *p != '"') goto other;
            keys[count].p = key;
            keys[count].n = p - key;
            if (count == 0) {
                expected = starting_with(key, p - key);
                if (expected != NULL) expected_key = expected->bytes + expected->lengths[0];
            }
            p = skip_space(p + 1, end);
            if (p >= end || *p != ':') goto other;
            p = skip_space(p + 1, end);
            const char *after = p;
            PyObject *value = value_at(p, end, &after);
            if (value == NULL) goto other;
            values[count++] = value;
            p = skip_space(after, end);
            if (p < end && *p == ',') {
                p = skip_space(p + 1, end);
                continue;
            }
            if (p < end && *p == '}') {
                p++;
                break;
            }
            goto other;
        }
    }
    if (skip_space(p, end) != end) goto other;
    int duplicated = 0;
    PyObject *key_names;
    if (expected != NULL && expected->count == count) {
        duplicated = expected->duplicated;
        key_names = expected->keys;
        Py_INCREF(key_names);
    } else {
        key_names = key_tuple(keys, count, &duplicated);
    }
    if (key_names == NULL) goto other;
    if (duplicated) {
        Py_DECREF(key_names);
        goto other;
    }
    PyObject *value_tuple = PyTuple_New(count);
    if (value_tuple == NULL) {
        Py_DECREF(key_names);
        goto other;
    }
    for (Py_ssize_t i = 0; i < count; i++) PyTuple_SET_ITEM(value_tuple, i, values[i]);
    count = 0; /* the tuple owns them */
    result = PyTuple_New(2);
    if (result == NULL) {
        Py_DECREF(key_names);
        Py_DECREF(value_tuple);
        goto other;
    }
    PyTuple_SET_ITEM(result, 0, key_names);
    PyTuple_SET_ITEM(result, 1, value_tuple);
    return result;
other:
    for (Py_ssize_t i = 0; i < count; i++) Py_DECREF(values[i]);
    if (PyErr_Occurred()) {
        /* Out of memory is the one error that stays an error. */
        if (PyErr_ExceptionMatches(PyExc_MemoryError)) return NULL;
        PyErr_Clear();
    }
    Py_RETURN_NONE;
}

/* ---- nginx text lines ------------------------------------------------------------- */

/* Whether a str is what the nginx readers here take: printable ASCII (0x20-0x7e), in
 * which a regex's \S is "not a space", \d is "0-9" and "." takes any byte. Then
 * ``*start``/``*end`` bound its bytes and ``*escaped`` says whether it holds a
 * backslash (nginx's escapes, \xXX and \"). */
static int printable_ascii(PyObject *o, const char **start, const char **end, int *escaped) {
    if (!PyUnicode_CheckExact(o) || !PyUnicode_IS_ASCII(o)) return 0;
    const char *s = (const char *)PyUnicode_1BYTE_DATA(o);
    Py_ssize_t n = PyUnicode_GET_LENGTH(o);
    int backslash = 0;
    Py_ssize_t i = 0;
    /* Eight bytes at a time (all below 0x80: ASCII): DEL is the one byte that 0x01
     * added to sets the top bit of. */
    for (; i + 8 <= n; i += 8) {
        uint64_t x;
        memcpy(&x, s + i, 8);
        if (word_has_below(x, 0x20) | ((x + WORD_ONES) & WORD_HIGHS)) return 0;
        backslash |= word_has_byte(x, '\\') != 0;
    }
    for (; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c > 0x7e) return 0;
        backslash |= c == '\\';
    }
    *start = s;
    *end = s + n;
    *escaped = backslash;
    return 1;
}

/* The closing quote of a quoted field from ``p`` (past its opening quote), or NULL:
 * nginx_text._QUOTED, '"([^"\\]*+(?:\\.[^"\\]*+)*+)"': a backslash takes the next
 * character whatever it is. Without backslashes in the line, the next quote
 * (_PLAIN_QUOTED, which reads such lines as _QUOTED does). */
static const char *closing_quote(const char *p, const char *end, int escaped) {
    if (!escaped) return memchr(p, '"', (size_t)(end - p));
    while (p < end) {
        if (*p == '"') return p;
        p += *p == '\\' ? 2 : 1;
    }
    return NULL;
}

static inline const char *non_spaces(const char *p, const char *end) {
    while (p < end && *p != ' ') p++;
    return p;
}

static inline const char *digits_from(const char *p, const char *end) {
    while (p < end && *p >= '0' && *p <= '9') p++;
    return p;
}

static inline const char *until(const char *p, const char *end, char stop) {
    const char *q = memchr(p, stop, (size_t)(end - p));
    return q != NULL ? q : end;
}

/* A group's text (ASCII), or None for a group that took no part. */
static PyObject *group(const char *p, const char *q) {
    if (p == NULL) Py_RETURN_NONE;
    return ascii_text(p, q - p);
}

static PyObject *groups_of(const char *const *at, int n) {
    PyObject *tuple = PyTuple_New(n);
    if (tuple == NULL) return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *o = group(at[2 * i], at[2 * i + 1]);
        if (o == NULL) {
            Py_DECREF(tuple);
            return NULL;
        }
        PyTuple_SET_ITEM(tuple, i, o);
    }
    return tuple;
}

/* nginx_combined(line) -> the ten groups of nginx_text.COMBINED.match(line)
 * (remote, user, time, request, status, bytes, rt, referer, ua, rest), or None: no
 * match, or a line outside what is read here (printable_ascii), which the regex reads.
 * A line with backslashes gets nginx_text.COMBINED's groups (quoted fields may hold
 * escaped quotes); without, the two patterns read it alike. */
static PyObject *nginx_combined(PyObject *self, PyObject *arg) {
    (void)self;
    const char *p, *end, *q;
    int escaped;
    if (!printable_ascii(arg, &p, &end, &escaped)) Py_RETURN_NONE;
    const char *at[20] = {NULL};
    /* (?P<remote>\S+) \S+ (?P<user>\S+) \[ */
    q = non_spaces(p, end);
    if (q == p || q >= end) Py_RETURN_NONE;
    at[0] = p, at[1] = q;
    p = q + 1;
    q = non_spaces(p, end);
    if (q == p || q >= end) Py_RETURN_NONE;
    p = q + 1;
    q = non_spaces(p, end);
    if (q == p || end - q < 2 || q[1] != '[') Py_RETURN_NONE;
    at[2] = p, at[3] = q;
    /* (?P<time>[^\]]+)\] " */
    p = q + 2;
    q = until(p, end, ']');
    if (q == p || end - q < 3 || q[1] != ' ' || q[2] != '"') Py_RETURN_NONE;
    at[4] = p, at[5] = q;
    /* (?P<request>[^"]*+)" */
    p = q + 3;
    q = closing_quote(p, end, escaped);
    if (q == NULL) Py_RETURN_NONE;
    at[6] = p, at[7] = q;
    /* ' ' (?P<status>\d{3}|-) ' ' */
    p = q + 1;
    if (p >= end || *p != ' ') Py_RETURN_NONE;
    p++;
    if (end - p >= 3 && digits_from(p, p + 3) == p + 3) q = p + 3;
    else if (p < end && *p == '-') q = p + 1;
    else Py_RETURN_NONE;
    if (q >= end || *q != ' ') Py_RETURN_NONE;
    at[8] = p, at[9] = q;
    /* (?P<bytes>\d+|-) */
    p = q + 1;
    q = digits_from(p, end);
    if (q == p) {
        if (p < end && *p == '-') q = p + 1;
        else Py_RETURN_NONE;
    }
    at[10] = p, at[11] = q;
    p = q;
    /* (?: (?P<rt>\d+\.\d+))? */
    if (end - p >= 2 && *p == ' ') {
        const char *r = p + 1, *dot = digits_from(r, end);
        if (dot > r && dot < end && *dot == '.') {
            const char *e = digits_from(dot + 1, end);
            if (e > dot + 1) {
                at[12] = r, at[13] = e;
                p = e;
            }
        }
    }
    /* (?: "(?P<referer>[^"]*+)" "(?P<ua>[^"]*+)")? */
    if (end - p >= 2 && p[0] == ' ' && p[1] == '"') {
        const char *r = p + 2, *r_end = closing_quote(r, end, escaped);
        if (r_end != NULL && end - r_end >= 3 && r_end[1] == ' ' && r_end[2] == '"') {
            const char *u = r_end + 3, *u_end = closing_quote(u, end, escaped);
            if (u_end != NULL) {
                at[14] = r, at[15] = r_end;
                at[16] = u, at[17] = u_end;
                p = u_end + 1;
            }
        }
    }
    /* (?P<rest>.*) */
    at[18] = p, at[19] = end;
    return groups_of(at, 10);
}

/* nginx_structured(rest) -> the three groups of nginx_text._STRUCTURED.fullmatch
 * (request_uri, version, region): ' (/\S*) \S+ version="(...)" region="(...)"\s*' with
 * quoted fields as in nginx_combined; None: no match, or text outside what is read
 * here (the regex then decides). */
static PyObject *nginx_structured(PyObject *self, PyObject *arg) {
    (void)self;
    const char *p, *end, *q;
    int escaped;
    if (!printable_ascii(arg, &p, &end, &escaped)) Py_RETURN_NONE;
    const char *at[6];
    if (end - p < 2 || p[0] != ' ' || p[1] != '/') Py_RETURN_NONE;
    p++;
    q = non_spaces(p, end);
    if (q >= end) Py_RETURN_NONE;
    at[0] = p, at[1] = q;
    p = q + 1;
    q = non_spaces(p, end);
    static const char version[] = " version=\"", region[] = "\" region=\"";
    if (q == p || (size_t)(end - q) < sizeof version - 1 ||
        memcmp(q, version, sizeof version - 1) != 0)
        Py_RETURN_NONE;
    p = q + sizeof version - 1;
    q = closing_quote(p, end, escaped);
    if (q == NULL || (size_t)(end - q) < sizeof region - 1 ||
        memcmp(q, region, sizeof region - 1) != 0)
        Py_RETURN_NONE;
    at[2] = p, at[3] = q;
    p = q + sizeof region - 1;
    q = closing_quote(p, end, escaped);
    if (q == NULL) Py_RETURN_NONE;
    at[4] = p, at[5] = q;
    for (p = q + 1; p < end; p++)
        if (*p != ' ') Py_RETURN_NONE;
    return groups_of(at, 3);
}

/* nginx_unescape(value) -> nginx_text.unescape(value) for an ASCII str, else None (the
 * Python function reads it): \xHH becomes the byte, \" and \\ the character, any
 * other backslash stays; the bytes are decoded as UTF-8 with U+FFFD for what is not
 * UTF-8 (CPython's own "replace", as the Python function's bytes.decode). */
static PyObject *nginx_unescape(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyUnicode_CheckExact(arg) || !PyUnicode_IS_ASCII(arg)) Py_RETURN_NONE;
    Py_ssize_t n = PyUnicode_GET_LENGTH(arg);
    const char *s = (const char *)PyUnicode_1BYTE_DATA(arg);
    if (memchr(s, '\\', (size_t)n) == NULL) {
        Py_INCREF(arg);
        return arg;
    }
    char *buf = PyMem_Malloc((size_t)n);
    if (buf == NULL) return PyErr_NoMemory();
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < n;) {
        if (s[i] == '\\') {
            int high, low;
            if (n - i >= 4 && s[i + 1] == 'x' && (high = hex_digit((unsigned char)s[i + 2])) >= 0 &&
                (low = hex_digit((unsigned char)s[i + 3])) >= 0) {
                buf[k++] = (char)(high << 4 | low);
                i += 4;
                continue;
            }
            if (n - i >= 2 && (s[i + 1] == '"' || s[i + 1] == '\\')) {
                buf[k++] = s[i + 1];
                i += 2;
                continue;
            }
        }
        buf[k++] = s[i++];
    }
    PyObject *result = PyUnicode_DecodeUTF8(buf, k, "replace");
    PyMem_Free(buf);
    return result;
}

/* ---- client addresses ------------------------------------------------------------- */

/* The 32-bit value of the canonical dotted quad s[0..n), else -1 (what ipv4 and
 * client_ip_v4 read). */
static int64_t quad_value(const unsigned char *s, Py_ssize_t n) {
    if (n < 7 || n > 15) return -1;
    uint32_t value = 0;
    Py_ssize_t i = 0;
    for (int part = 0; part < 4; part++) {
        if (part > 0) {
            if (i >= n || s[i] != '.') return -1;
            i++;
        }
        Py_ssize_t start = i;
        unsigned octet = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9' && i - start < 3) {
            octet = octet * 10 + (unsigned)(s[i] - '0');
            i++;
        }
        Py_ssize_t digits = i - start;
        if (digits == 0 || octet > 255 || (digits > 1 && s[start] == '0')) return -1;
        value = value << 8 | octet;
    }
    return i == n ? (int64_t)value : -1;
}

/* ipv4(text) -> the 32-bit value of a canonical dotted quad, else -1: exactly what
 * inet_pton(AF_INET) accepts (four decimal parts 0-255, no leading zeros, nothing
 * else), as values.ipv4_value defines it. Per address the enrichment has not seen
 * before, this replaces three strip calls, two inet_pton calls and int.from_bytes. */
static PyObject *ipv4(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyUnicode_CheckExact(arg) || !PyUnicode_IS_ASCII(arg)) return PyLong_FromLong(-1);
    return PyLong_FromLongLong(quad_value(PyUnicode_1BYTE_DATA(arg), PyUnicode_GET_LENGTH(arg)));
}

/* ---- the client address behind trusted proxies ------------------------------------ */

/* What str.strip() strips of ASCII text: \t \n \v \f \r, \x1c-\x1f and the space. */
static inline int py_ascii_space(unsigned char c) {
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

/* One address of a peer or an X-Forwarded-For entry, s[0..n): a dotted quad with
 * surrounding whitespace or none. Its value (and where the quad is), else -1. */
static int64_t entry_quad(const unsigned char *s, Py_ssize_t n, Py_ssize_t *start,
                          Py_ssize_t *length) {
    Py_ssize_t a = 0, b = n;
    while (a < b && py_ascii_space(s[a])) a++;
    while (b > a && py_ascii_space(s[b - 1])) b--;
    *start = a;
    *length = b - a;
    return quad_value(s + a, b - a);
}

static inline int trusted_v4(uint32_t value, const uint32_t *nets, Py_ssize_t count) {
    for (Py_ssize_t i = 0; i < count; i++)
        if ((value & nets[2 * i + 1]) == nets[2 * i]) return 1;
    return 0;
}

/* The quad of whole (an ASCII str) at s[start..start+length): whole itself when it is
 * all of it, else a new str. */
static PyObject *quad_text(PyObject *whole, Py_ssize_t start, Py_ssize_t length) {
    if (start == 0 && length == PyUnicode_GET_LENGTH(whole)) return Py_NewRef(whole);
    PyObject *text = PyUnicode_New(length, 127);
    if (text != NULL) memcpy(PyUnicode_1BYTE_DATA(text), PyUnicode_1BYTE_DATA(whole) + start,
                             (size_t)length);
    return text;
}

/* client_ip_v4(peer, forwarded_for, nets, max_hops): TrustedProxies.walk (client_ip.py,
 * the definition) where every address it reads is a dotted quad, with whitespace
 * around it or none: the peer (when logged), then X-Forwarded-For from the right,
 * at most max_hops entries. nets: the trusted IPv4 networks as native uint32 pairs
 * (network, mask). Returns the client address or None as walk does; "" when an
 * address is anything else (a port, brackets, quotes, IPv6, garbage, non-ASCII, an
 * empty entry): the Python path's, which memoises those. Without a memo here: a dict
 * of every address seen, consulted per event, missed the cache more than parsing a
 * quad costs. */
static PyObject *client_ip_v4(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 4 || !PyBytes_CheckExact(args[2]) || !PyLong_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "client_ip_v4(peer, forwarded_for, nets, max_hops)");
        return NULL;
    }
    PyObject *peer = args[0], *forwarded = args[1];
    const uint32_t *nets = (const uint32_t *)PyBytes_AS_STRING(args[2]);
    Py_ssize_t net_count = PyBytes_GET_SIZE(args[2]) / 8;
    Py_ssize_t max_hops = PyLong_AsSsize_t(args[3]);
    if (max_hops < 1) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "max_hops must be >= 1");
        return NULL;
    }
    Py_ssize_t start, length;
    PyObject *peer_text = NULL;  /* the peer, when it is a trusted address (borrowed) */
    Py_ssize_t peer_start = 0, peer_length = 0;
    if (peer != Py_None) {
        if (!PyUnicode_CheckExact(peer) || !PyUnicode_IS_ASCII(peer)) goto python;
        Py_ssize_t n = PyUnicode_GET_LENGTH(peer);
        if (n > 0) {
            int64_t value = entry_quad(PyUnicode_1BYTE_DATA(peer), n, &peer_start, &peer_length);
            if (value < 0) goto python;
            if (!trusted_v4((uint32_t)value, nets, net_count))
                return quad_text(peer, peer_start, peer_length);
            peer_text = peer;
        }
    }
    if (forwarded == Py_None) goto peer_only;
    if (!PyUnicode_CheckExact(forwarded) || !PyUnicode_IS_ASCII(forwarded)) goto python;
    const unsigned char *s = PyUnicode_1BYTE_DATA(forwarded);
    Py_ssize_t end = PyUnicode_GET_LENGTH(forwarded);
    if (end == 0) goto peer_only;
    /* Right to left; the first untrusted entry is the client; else the left-most read.
     * At most max_hops entries: what lies left of them is rsplit's unsplit rest. */
    Py_ssize_t left_start = -1, left_length = 0;
    for (Py_ssize_t hop = 0; hop < max_hops && end >= 0; hop++) {
        Py_ssize_t comma = end - 1;
        while (comma >= 0 && s[comma] != ',') comma--;
        int64_t value = entry_quad(s + comma + 1, end - comma - 1, &start, &length);
        if (value < 0) goto python;
        start += comma + 1;
        if (!trusted_v4((uint32_t)value, nets, net_count))
            return quad_text(forwarded, start, length);
        left_start = start;
        left_length = length;
        end = comma;  /* -1 when this was the first entry */
    }
    return quad_text(forwarded, left_start, left_length);
peer_only:
    if (peer_text == NULL) Py_RETURN_NONE;
    return quad_text(peer_text, peer_start, peer_length);
python:
    return PyUnicode_New(0, 0);
}

/* ---- nginx's seconds ---------------------------------------------------------------- */

/* seconds_ns(text): values.seconds_to_ns of nginx's usual form, digits with an optional
 * fraction ("0.004", "12"), at most 15 digits, below 10^9 seconds: round(float(text) *
 * 10^9) exactly as Python computes it; -1 for anything else (the Python path). The
 * digits as an integer below 2^53 divided by an exact power of ten is the correctly
 * rounded double float() reads (Clinger's fast path), without strtod's locale; the
 * product is the same double multiplication, rounded half to even as round() does. */
static PyObject *seconds_ns(PyObject *self, PyObject *arg) {
    (void)self;
    static const double powers[16] = {1e0, 1e1, 1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                      1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15};
    if (!PyUnicode_CheckExact(arg) || !PyUnicode_IS_COMPACT_ASCII(arg)) return PyLong_FromLong(-1);
    const char *p = (const char *)PyUnicode_DATA(arg), *end = p + PyUnicode_GET_LENGTH(arg);
    uint64_t mantissa = 0;
    int digits = 0, fraction = 0, dot = 0;
    for (; p < end; p++) {
        if (*p >= '0' && *p <= '9') {
            mantissa = mantissa * 10 + (uint64_t)(*p - '0');
            digits++;
            fraction += dot;
        } else if (*p == '.' && !dot && digits > 0) {
            dot = 1;
        } else {
            return PyLong_FromLong(-1);
        }
    }
    if (digits == 0 || digits > 15 || (dot && fraction == 0)) return PyLong_FromLong(-1);
    double seconds = (double)mantissa / powers[fraction];
    if (!(seconds < 1e9)) return PyLong_FromLong(-1);
    /* volatile: the product rounded to a double, as Python has it (never fused into
     * the subtraction below by a compiler allowed to contract into an FMA). */
    volatile double product = seconds * 1e9;
    double ns = product;
    long long whole = (long long)ns; /* ns >= 0: truncation is floor */
    double rest = ns - (double)whole;
    if (rest > 0.5 || (rest == 0.5 && (whole & 1))) whole++;
    return PyLong_FromLongLong(whole);
}

/* ---- trace ids ------------------------------------------------------------------------ */

/* Lower-case hex of ``n`` bytes of ``s`` into ``out`` (A-F lowered, as str.lower() does);
 * 0 when one is not a hex digit. ``*nonzero`` says whether any digit is not '0'. */
static int lower_hex(const char *s, Py_ssize_t n, char *out, int *nonzero) {
    int any = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int v = hex_digit((unsigned char)s[i]);
        if (v < 0) return 0;
        any |= v;
        out[i] = "0123456789abcdef"[v];
    }
    *nonzero = any;
    return 1;
}

/* The ASCII text of a str without whitespace (or any control byte) at either end, whose
 * strip() is itself; NULL for anything else. */
static const char *unstripped_ascii(PyObject *o, Py_ssize_t *n) {
    if (!PyUnicode_CheckExact(o) || !PyUnicode_IS_COMPACT_ASCII(o)) return NULL;
    const char *s = (const char *)PyUnicode_DATA(o);
    *n = PyUnicode_GET_LENGTH(o);
    if (*n == 0 || (unsigned char)s[0] <= 0x20 || (unsigned char)s[*n - 1] <= 0x20) return NULL;
    return s;
}

/* traceparent(value): extract.trace._traceparent's (trace id, span id) of a well-formed
 * W3C traceparent ("00-<32 hex>-<16 hex>-<2 hex>", later versions with more parts), its
 * hex lowered; None for anything else, which the regex then reads (the definition). */
static PyObject *traceparent(PyObject *self, PyObject *arg) {
    (void)self;
    Py_ssize_t n;
    const char *s = unstripped_ascii(arg, &n);
    if (s == NULL || n < 55 || s[2] != '-' || s[35] != '-' || s[52] != '-') Py_RETURN_NONE;
    if (n > 55 && s[55] != '-') Py_RETURN_NONE;
    char version[2], trace[32], span[16], flags[2];
    int version_nonzero, trace_nonzero, span_nonzero, flags_nonzero;
    if (!lower_hex(s, 2, version, &version_nonzero) ||
        !lower_hex(s + 3, 32, trace, &trace_nonzero) ||
        !lower_hex(s + 36, 16, span, &span_nonzero) || !lower_hex(s + 53, 2, flags, &flags_nonzero))
        Py_RETURN_NONE;
    if ((version[0] == 'f' && version[1] == 'f') || (!version_nonzero && n > 55) ||
        !trace_nonzero || !span_nonzero)
        Py_RETURN_NONE;
    PyObject *trace_id = ascii_text(trace, 32);
    if (trace_id == NULL) return NULL;
    PyObject *span_id = ascii_text(span, 16);
    if (span_id == NULL) {
        Py_DECREF(trace_id);
        return NULL;
    }
    PyObject *pair = PyTuple_Pack(2, trace_id, span_id);
    Py_DECREF(trace_id);
    Py_DECREF(span_id);
    return pair;
}

/* hex_id(value, width): extract.trace.trace_id_of (width 32: 16 or 32 hex digits, the
 * 16 left-padded with zeros) or span_id_of (width 16) of a plain id, lowered; None for
 * anything else (the definition's to read: it may still be an id, or not). */
static PyObject *hex_id(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2 || !PyLong_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "hex_id(value, 16 or 32)");
        return NULL;
    }
    long width = PyLong_AsLong(args[1]);
    if (width != 16 && width != 32) {
        PyErr_SetString(PyExc_ValueError, "hex_id's width is 16 or 32");
        return NULL;
    }
    Py_ssize_t n;
    const char *s = unstripped_ascii(args[0], &n);
    if (s == NULL || !(n == width || (width == 32 && n == 16))) Py_RETURN_NONE;
    char id[32];
    int nonzero;
    Py_ssize_t pad = width - n;
    memset(id, '0', (size_t)pad);
    if (!lower_hex(s, n, id + pad, &nonzero) || !nonzero) Py_RETURN_NONE;
    return ascii_text(id, width);
}

/* ---- a fetched record's coordinates --------------------------------------------------- */

/* The tuple subclass ``cls``'s instance of the three ``fields`` (borrowed), as
 * tuple.__new__ makes it. */
static PyObject *new_coordinates(PyTypeObject *cls, PyObject *const *fields) {
    PyObject *out = cls->tp_alloc(cls, 3);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < 3; i++) {
        Py_INCREF(fields[i]);
        PyTuple_SET_ITEM(out, i, fields[i]);
    }
    return out;
}

/* coordinates(cls, topic, partition, offset): the named tuple ``cls`` (model.KafkaCoordinates)
 * of the three, made as tuple.__new__ makes a tuple subclass's instance, without the
 * named tuple's Python-level __new__ (~200 ns of the ~560 ns a fetched record took to
 * become a message; bench/README.md, "Session 22"). */
static PyObject *coordinates(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 4 || !PyType_Check(args[0]) ||
        !PyType_IsSubtype((PyTypeObject *)args[0], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "coordinates(tuple subclass, topic, partition, offset)");
        return NULL;
    }
    return new_coordinates((PyTypeObject *)args[0], args + 1);
}

/* ---- a fetched Kafka record batch ---------------------------------------------------- */

/* kafka_batch reads one record batch (message format v2) of a partition's fetched
 * records into the handler's messages, as aiokafka's fetcher does with its
 * DefaultRecordBatch and the compiled core's model.fetched_message (the definition,
 * with aiokafka's reader: agents/batching.py takes that path for anything this one
 * leaves). It answers only a complete batch whose CRC checks (when asked) and whose
 * records are well formed, uncompressed or decompressed by the caller's decompress; for
 * anything else (the end of the data, a truncated batch, an older format, a codec the
 * caller leaves, a bad CRC, a malformed record) it
 * returns None, and aiokafka reads the data from that batch on, raising what it raises.
 *
 * Why: aiokafka's reader made a record object of each record, checked the CRC a byte
 * at a time (~390 ns for a 600-byte record) and handed the records out through two
 * interpreted generators, all in Faust's consumer thread, holding the interpreter lock
 * the batch handler needs (bench/README.md, "Session 23"). */

/* Byte offsets in a record batch's header (Kafka's DefaultRecordBatch). */
#define KB_LENGTH 8
#define KB_MAGIC 16
#define KB_CRC 17
#define KB_ATTRIBUTES 21
#define KB_LAST_OFFSET_DELTA 23
#define KB_FIRST_TIMESTAMP 27
#define KB_MAX_TIMESTAMP 35
#define KB_RECORD_COUNT 57
#define KB_HEADER 61
#define KB_LOG_OVERHEAD 12 /* base offset and length, before what the length counts */
#define KB_COMPRESSION 0x07
#define KB_LOG_APPEND_TIME 0x08
#define KB_CONTROL 0x20

/* a + b as aiokafka's reader adds two int64s (wrapping; its C arithmetic). */
static inline int64_t wrapping_sum(int64_t a, int64_t b) { return (int64_t)((uint64_t)a + (uint64_t)b); }

static inline uint64_t be64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}

static inline uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* CRC-32C (Castagnoli, reflected 0x82F63B78), as Kafka checks a batch. */
static uint32_t crc32c_table[256];

static uint32_t crc32c_portable(uint32_t crc, const unsigned char *p, size_t n) {
    crc = ~crc;
    while (n--) crc = crc32c_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__) && defined(__GNUC__)
/* SSE4.2's crc32 instruction, eight bytes at a time. */
__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc,
                                                                const unsigned char *p, size_t n) {
    uint64_t c = ~crc & 0xffffffffu;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}
#endif

/* The CRC in use: SSE4.2 where the CPU has it (chosen at import), else portable. */
static uint32_t (*crc32c)(uint32_t, const unsigned char *, size_t) = crc32c_portable;

static void choose_crc32c(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc32c_table[i] = c;
    }
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2")) crc32c = crc32c_sse42;
#endif
}

/* A zigzag varint (Kafka's varint and varlong: aiokafka reads both alike, up to 64
 * bits); 0 when it runs past ``end`` or past ten bytes. */
static inline int varint_at(const unsigned char **pp, const unsigned char *end, int64_t *out) {
    const unsigned char *p = *pp;
    uint64_t raw = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (p >= end) return 0;
        unsigned char b = *p++;
        raw |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = (int64_t)(raw >> 1) ^ -(int64_t)(raw & 1);
            *pp = p;
            return 1;
        }
    }
    return 0;
}

/* Nullable bytes (length, then the bytes; -1: none). 0: past ``end``. */
static inline int bytes_at(const unsigned char **pp, const unsigned char *end,
                           const unsigned char **start, int64_t *n) {
    if (!varint_at(pp, end, n)) return 0;
    if (*n < 0) return 1;
    if (*n > end - *pp) return 0;
    *start = *pp;
    *pp += *n;
    return 1;
}

static PyObject *bytes_or_none(const unsigned char *start, int64_t n) {
    if (n < 0) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)start, (Py_ssize_t)n);
}

/* A record's timestamp in milliseconds as model.fetched_message keeps it: nanoseconds,
 * or None when unknown (none or not positive). */
static PyObject *timestamp_ns_of(int64_t ms) {
    if (ms <= 0) Py_RETURN_NONE;
    if (ms <= INT64_MAX / 1000000) return PyLong_FromLongLong(ms * 1000000);
    PyObject *big = PyLong_FromLongLong(ms);
    if (big == NULL) return NULL;
    PyObject *million = PyLong_FromLong(1000000);
    PyObject *out = million == NULL ? NULL : PyNumber_Multiply(big, million);
    Py_DECREF(big);
    Py_XDECREF(million);
    return out;
}

/* The records of a batch whose header has been checked, read from p to end (after the
 * header, or a compressed batch's records decompressed): 1 and the messages appended to
 * ``out``; 0 when a record is malformed (``out`` then holds some: the caller drops it);
 * -1 with an exception set. */
static int batch_records(const unsigned char *batch, const unsigned char *p,
                         const unsigned char *end, int64_t first, PyObject *const *args,
                         PyObject *out) {
    PyObject *make_message = args[4], *coords_cls = args[5], *topic = args[6], *partition = args[7];
    int64_t base_offset = (int64_t)be64(batch);
    int64_t count = (int32_t)be32(batch + KB_RECORD_COUNT);
    int log_append = (batch[KB_ATTRIBUTES + 1] & KB_LOG_APPEND_TIME) != 0;
    int64_t first_timestamp = (int64_t)be64(batch + KB_FIRST_TIMESTAMP);
    int64_t max_timestamp = (int64_t)be64(batch + KB_MAX_TIMESTAMP);
    int passed_last = 0;
    if (count < 0) return 0;
    for (int64_t i = 0; i < count; i++) {
        int64_t length, attributes, ts_delta, offset_delta, key_n, value_n, header_count;
        const unsigned char *key = NULL, *value = NULL;
        if (!varint_at(&p, end, &length)) return 0;
        const unsigned char *record = p;
        if (!varint_at(&p, end, &attributes) || !varint_at(&p, end, &ts_delta) ||
            !varint_at(&p, end, &offset_delta) || !bytes_at(&p, end, &key, &key_n) ||
            !bytes_at(&p, end, &value, &value_n) || !varint_at(&p, end, &header_count) ||
            header_count < 0)
            return 0;
        for (int64_t h = 0; h < header_count; h++) {
            const unsigned char *h_key = NULL, *h_value = NULL;
            int64_t h_key_n, h_value_n;
            if (!bytes_at(&p, end, &h_key, &h_key_n) || h_key_n < 0) return 0;
            /* aiokafka decodes a header's key as UTF-8 (and fails on bad UTF-8). */
            PyObject *decoded = PyUnicode_DecodeUTF8((const char *)h_key, (Py_ssize_t)h_key_n, NULL);
            if (decoded == NULL) {
                PyErr_Clear();
                return 0;
            }
            Py_DECREF(decoded);
            if (!bytes_at(&p, end, &h_value, &h_value_n)) return 0;
        }
        if (p - record != length) return 0;
        int64_t offset = wrapping_sum(base_offset, offset_delta);
        /* Before the fetch position, or not after the record handed out last: aiokafka
         * compares each record's offset with its position, moved past each one. */
        if (offset < first || passed_last) continue;
        if (offset == INT64_MAX)
            passed_last = 1;
        else
            first = offset + 1;
        int64_t timestamp = log_append ? max_timestamp : wrapping_sum(first_timestamp, ts_delta);
        PyObject *fields[4] = {NULL, NULL, NULL, NULL};
        PyObject *where[3] = {topic, partition, PyLong_FromLongLong(offset)};
        if (where[2] == NULL) return -1;
        PyObject *coords = new_coordinates((PyTypeObject *)coords_cls, where);
        Py_DECREF(where[2]);
        if (coords == NULL) return -1;
        fields[0] = bytes_or_none(value, value_n);
        fields[1] = bytes_or_none(key, key_n);
        fields[2] = coords;
        fields[3] = timestamp_ns_of(timestamp);
        PyObject *message = NULL;
        if (fields[0] != NULL && fields[1] != NULL && fields[3] != NULL)
            message = PyObject_Vectorcall(make_message, fields, 4, NULL);
        for (int k = 0; k < 4; k++) Py_XDECREF(fields[k]);
        if (message == NULL) return -1;
        int appended = PyList_Append(out, message);
        Py_DECREF(message);
        if (appended < 0) return -1;
    }
    return p == end; /* aiokafka refuses bytes after the last record */
}

/* The records of a compressed batch, decompressed by decompress(codec, payload) (a
 * memoryview of data[first:last], the bytes after the header) into a new bytes object;
 * NULL when it answers anything else or raises (then aiokafka's reader reads the batch
 * and raises what it raises: a codec missing, corrupt data). */
static PyObject *decompressed(PyObject *decompress, unsigned codec, PyObject *data,
                              Py_ssize_t first, Py_ssize_t last) {
    PyObject *whole = PyMemoryView_FromObject(data);
    if (whole == NULL) return NULL;
    PyObject *payload = PySequence_GetSlice(whole, first, last); /* holds data alive */
    Py_DECREF(whole);
    if (payload == NULL) return NULL;
    PyObject *call[2] = {PyLong_FromUnsignedLong(codec), payload};
    PyObject *out = call[0] == NULL ? NULL : PyObject_Vectorcall(decompress, call, 2, NULL);
    Py_XDECREF(call[0]);
    Py_DECREF(payload);
    if (out != NULL && !PyBytes_CheckExact(out)) Py_CLEAR(out);
    return out;
}

/* kafka_batch(data, position, first_offset, check_crc, make_message, coordinates_cls,
 * topic, partition, decompress) -> (messages, next offset, position after the batch) |
 * None. make_message(value, key, coordinates, timestamp_ns) is model.input_message;
 * decompress(codec, payload) -> bytes makes a compressed batch's records as aiokafka
 * decompresses them; passed as None, compressed batches are aiokafka's to read. */
static PyObject *kafka_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 9 || !PyBytes_Check(args[0]) || !PyLong_Check(args[1]) ||
        !PyLong_Check(args[2]) || !PyType_Check(args[5]) ||
        !PyType_IsSubtype((PyTypeObject *)args[5], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError,
                        "kafka_batch(bytes, position, first offset, check crc, make_message, "
                        "coordinates type, topic, partition, decompress)");
        return NULL;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t position = PyLong_AsSsize_t(args[1]);
    int overflow = 0;
    int64_t first = PyLong_AsLongLongAndOverflow(args[2], &overflow);
    int check_crc = PyObject_IsTrue(args[3]);
    if (PyErr_Occurred() || check_crc < 0) return NULL;
    if (overflow) Py_RETURN_NONE; /* a position past int64: only corrupt data makes one */
    if (position < 0 || position > size) Py_RETURN_NONE;
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    const unsigned char *batch = data + position;
    Py_ssize_t rest = size - position;
    if (rest < KB_HEADER) Py_RETURN_NONE;
    int64_t length = (int32_t)be32(batch + KB_LENGTH);
    if (length < KB_HEADER - KB_LOG_OVERHEAD || length > rest - KB_LOG_OVERHEAD) Py_RETURN_NONE;
    const unsigned char *end = batch + KB_LOG_OVERHEAD + length;
    unsigned attributes = (batch[KB_ATTRIBUTES] << 8) | batch[KB_ATTRIBUTES + 1];
    unsigned codec = attributes & KB_COMPRESSION;
    if (batch[KB_MAGIC] != 2 || (codec && args[8] == Py_None)) Py_RETURN_NONE;
    if (check_crc && crc32c(0, batch + KB_ATTRIBUTES, (size_t)(end - batch - KB_ATTRIBUTES)) !=
                         be32(batch + KB_CRC))
        Py_RETURN_NONE;
    PyObject *messages = PyList_New(0);
    if (messages == NULL) return NULL;
    /* A control batch (a transaction's marker) holds no messages: aiokafka skips it. */
    if (!(attributes & KB_CONTROL)) {
        PyObject *records = NULL;
        if (codec) {
            records = decompressed(args[8], codec, args[0], batch - data + KB_HEADER, end - data);
            if (records == NULL) {
                PyErr_Clear();
                Py_DECREF(messages);
                Py_RETURN_NONE;
            }
        }
        const unsigned char *start =
            records ? (const unsigned char *)PyBytes_AS_STRING(records) : batch + KB_HEADER;
        const unsigned char *stop = records ? start + PyBytes_GET_SIZE(records) : end;
        int read = batch_records(batch, start, stop, first, args, messages);
        Py_XDECREF(records);
        if (read <= 0) {
            Py_DECREF(messages);
            if (read < 0) return NULL;
            Py_RETURN_NONE;
        }
    }
    int64_t next_offset =
        wrapping_sum(wrapping_sum((int64_t)be64(batch), (int32_t)be32(batch + KB_LAST_OFFSET_DELTA)), 1);
    return Py_BuildValue("(NLn)", messages, (long long)next_offset, (Py_ssize_t)(end - data));
}

/* crc32c(data, portable): the CRC-32C of the bytes, by the compression asked for (tests). */
static PyObject *crc32c_of(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    Py_buffer view;
    if (nargs != 2 || PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "crc32c(data, portable)");
        return NULL;
    }
    int portable = PyObject_IsTrue(args[1]);
    uint32_t crc = portable ? crc32c_portable(0, view.buf, (size_t)view.len)
                            : crc32c(0, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(crc);
}

static PyObject *crc32c_kind(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyUnicode_FromString(crc32c == crc32c_portable ? "portable" : "sse4.2");
}

static PyMethodDef methods[] = {
    {"flat_json", flat_json, METH_O,
     "A flat JSON object as (keys, values), as orjson reads it; None: orjson's to read."},
    {"nginx_combined", nginx_combined, METH_O,
     "nginx_text.COMBINED's groups of a printable ASCII line, or None."},
    {"nginx_structured", nginx_structured, METH_O,
     "nginx_text._STRUCTURED's groups of a printable ASCII rest of a line, or None."},
    {"nginx_unescape", nginx_unescape, METH_O,
     "nginx_text.unescape of an ASCII str, or None."},
    {"ipv4", ipv4, METH_O, "A canonical dotted quad's 32-bit value, else -1 (values.ipv4_value)."},
    {"client_ip_v4", (PyCFunction)(void (*)(void))client_ip_v4, METH_FASTCALL,
     "TrustedProxies.walk where every address read is a dotted quad; \"\": the Python path."},
    {"seconds_ns", seconds_ns, METH_O,
     "values.seconds_to_ns of nginx's usual seconds (digits[.digits]); -1: the Python path."},
    {"traceparent", traceparent, METH_O,
     "A well-formed W3C traceparent's (trace id, span id), lowered; None: the regex's to read."},
    {"hex_id", (PyCFunction)(void (*)(void))hex_id, METH_FASTCALL,
     "trace_id_of (width 32) or span_id_of (width 16) of a plain id; None: the Python path."},
    {"coordinates", (PyCFunction)(void (*)(void))coordinates, METH_FASTCALL,
     "A tuple subclass's instance of (topic, partition, offset), without its __new__."},
    {"kafka_batch", (PyCFunction)(void (*)(void))kafka_batch, METH_FASTCALL,
     "A fetched Kafka record batch's messages, next offset and end; None: aiokafka's to read."},
    {"crc32c", (PyCFunction)(void (*)(void))crc32c_of, METH_FASTCALL,
     "CRC-32C of the bytes (portable: the table, else the compression in use)."},
    {"crc32c_kind", crc32c_kind, METH_NOARGS, "The CRC-32C in use: sse4.2 or portable."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "pipeline.core._read",
                                    "A fetched Kafka record batch, a log line and a client address, read in C.",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__read(void) {
    choose_crc32c();
    return PyModule_Create(&module);
}

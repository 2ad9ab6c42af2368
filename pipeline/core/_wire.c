/* The two per-event outputs of the worker written in C: a request's OTLP span as wire
 * bytes, and its ECS document as JSON (pipeline.core.otlp, pipeline.core.document).
 *
 * The Python code is the definition. pipeline/core/otlp.py's encode_request_span
 * builds the same span bytes from pipeline/core/span.py's rules and
 * pipeline/core/otlp_wire.py's pieces, and pipeline/core/document.py's document_source
 * the same JSON (orjson over the document's dicts); the tests hold these to the
 * protobuf reference and to orjson for the synthetic stream and for any request
 * (property tests). This module writes the usual request in one pass into one buffer:
 * no dicts, no memo lookups, no list of parts, no BLAKE2b objects, no material string.
 * Whatever is not usual (a time outside 1..2^63, an id that is not plain hex, text
 * that is not valid UTF-8, an int beyond int64, a value not of its field's kind,
 * truncation tags) returns b"" and the caller takes the Python path, which handles
 * it: this file never needs to know those rules.
 *
 * The span's attribute keys come from schemas/span_attributes.json and its method
 * rules from span.py, both through configure(); the wire tags are trace.proto's (the same constants as otlp_wire.py);
 * the document's keys are document.py's (tests hold both to schemas/access_fields.json).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_bytes.h"

/* ---- BLAKE2b (RFC 7693), unkeyed, for the span and trace ids -------------------- */

typedef struct {
    uint64_t h[8];
    uint64_t t;  /* bytes compressed so far (inputs here are far below 2^64) */
    uint8_t buf[128];
    size_t used;
    size_t outlen;
} blake2b_state;

static const uint64_t blake2b_iv[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL,
    0xa54ff53a5f1d36f1ULL, 0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL,
    0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL};

static const uint8_t blake2b_sigma[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};

static inline uint64_t rotr64(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

static inline uint64_t load64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

#define B2B_G(a, b, c, d, x, y)          \
    do {                                 \
        v[a] = v[a] + v[b] + (x);        \
        v[d] = rotr64(v[d] ^ v[a], 32);  \
        v[c] = v[c] + v[d];              \
        v[b] = rotr64(v[b] ^ v[c], 24);  \
        v[a] = v[a] + v[b] + (y);        \
        v[d] = rotr64(v[d] ^ v[a], 16);  \
        v[c] = v[c] + v[d];              \
        v[b] = rotr64(v[b] ^ v[c], 63);  \
    } while (0)

static void blake2b_compress_portable(blake2b_state *s, int last) {
    uint64_t v[16], m[16];
    for (int i = 0; i < 8; i++) {
        v[i] = s->h[i];
        v[i + 8] = blake2b_iv[i];
    }
    v[12] ^= s->t;
    if (last) v[14] = ~v[14];
    for (int i = 0; i < 16; i++) m[i] = load64(s->buf + 8 * i);
    /* Unrolled, the message schedule's indexes are constants (measured ~2x faster). */
#pragma GCC unroll 12
    for (int r = 0; r < 12; r++) {
        const uint8_t *z = blake2b_sigma[r];
        B2B_G(0, 4, 8, 12, m[z[0]], m[z[1]]);
        B2B_G(1, 5, 9, 13, m[z[2]], m[z[3]]);
        B2B_G(2, 6, 10, 14, m[z[4]], m[z[5]]);
        B2B_G(3, 7, 11, 15, m[z[6]], m[z[7]]);
        B2B_G(0, 5, 10, 15, m[z[8]], m[z[9]]);
        B2B_G(1, 6, 11, 12, m[z[10]], m[z[11]]);
        B2B_G(2, 7, 8, 13, m[z[12]], m[z[13]]);
        B2B_G(3, 4, 9, 14, m[z[14]], m[z[15]]);
    }
    for (int i = 0; i < 8; i++) s->h[i] ^= v[i] ^ v[i + 8];
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define B2B_AVX2 __attribute__((target("avx2")))

/* The same compression with the state's four rows in four AVX2 registers (BLAKE2's
 * own vectorised form: a round is G on the four columns at once, then on the four
 * diagonals after rotating rows b, c and d by one, two and three lanes). About half
 * the instructions of the portable one (bench/README.md, "Session 22"); the tests hold
 * both to hashlib's BLAKE2b. Used where the CPU has AVX2 (checked once, at import). */
static B2B_AVX2 inline __m256i b2b_rotr24(__m256i x) {
    const __m256i rot = _mm256_setr_epi8(3, 4, 5, 6, 7, 0, 1, 2, 11, 12, 13, 14, 15, 8, 9, 10,
                                         3, 4, 5, 6, 7, 0, 1, 2, 11, 12, 13, 14, 15, 8, 9, 10);
    return _mm256_shuffle_epi8(x, rot);
}

static B2B_AVX2 inline __m256i b2b_rotr16(__m256i x) {
    const __m256i rot = _mm256_setr_epi8(2, 3, 4, 5, 6, 7, 0, 1, 10, 11, 12, 13, 14, 15, 8, 9,
                                         2, 3, 4, 5, 6, 7, 0, 1, 10, 11, 12, 13, 14, 15, 8, 9);
    return _mm256_shuffle_epi8(x, rot);
}

#define B2B_G4(a, b, c, d, x, y)                                              \
    do {                                                                      \
        a = _mm256_add_epi64(_mm256_add_epi64(a, b), x);                      \
        d = _mm256_shuffle_epi32(_mm256_xor_si256(d, a), _MM_SHUFFLE(2, 3, 0, 1)); \
        c = _mm256_add_epi64(c, d);                                           \
        b = b2b_rotr24(_mm256_xor_si256(b, c));                               \
        a = _mm256_add_epi64(_mm256_add_epi64(a, b), y);                      \
        d = b2b_rotr16(_mm256_xor_si256(d, a));                               \
        c = _mm256_add_epi64(c, d);                                           \
        b = _mm256_xor_si256(b, c);                                           \
        b = _mm256_or_si256(_mm256_srli_epi64(b, 63), _mm256_add_epi64(b, b)); \
    } while (0)

static B2B_AVX2 void blake2b_compress_avx2(blake2b_state *s, int last) {
    uint64_t m[16];
    for (int i = 0; i < 16; i++) m[i] = load64(s->buf + 8 * i);
    __m256i a = _mm256_loadu_si256((const __m256i *)&s->h[0]);
    __m256i b = _mm256_loadu_si256((const __m256i *)&s->h[4]);
    __m256i c = _mm256_loadu_si256((const __m256i *)&blake2b_iv[0]);
    __m256i d = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)&blake2b_iv[4]),
                                 _mm256_set_epi64x(0, last ? -1LL : 0, 0, (long long)s->t));
    const __m256i a0 = a, b0 = b;
#pragma GCC unroll 12
    for (int r = 0; r < 12; r++) {
        const uint8_t *z = blake2b_sigma[r];
        __m256i x = _mm256_set_epi64x((long long)m[z[6]], (long long)m[z[4]], (long long)m[z[2]],
                                      (long long)m[z[0]]);
        __m256i y = _mm256_set_epi64x((long long)m[z[7]], (long long)m[z[5]], (long long)m[z[3]],
                                      (long long)m[z[1]]);
        B2B_G4(a, b, c, d, x, y);
        /* Diagonals into columns: row b left by one lane, c by two, d by three. */
        b = _mm256_permute4x64_epi64(b, _MM_SHUFFLE(0, 3, 2, 1));
        c = _mm256_permute4x64_epi64(c, _MM_SHUFFLE(1, 0, 3, 2));
        d = _mm256_permute4x64_epi64(d, _MM_SHUFFLE(2, 1, 0, 3));
        x = _mm256_set_epi64x((long long)m[z[14]], (long long)m[z[12]], (long long)m[z[10]],
                              (long long)m[z[8]]);
        y = _mm256_set_epi64x((long long)m[z[15]], (long long)m[z[13]], (long long)m[z[11]],
                              (long long)m[z[9]]);
        B2B_G4(a, b, c, d, x, y);
        b = _mm256_permute4x64_epi64(b, _MM_SHUFFLE(2, 1, 0, 3));
        c = _mm256_permute4x64_epi64(c, _MM_SHUFFLE(1, 0, 3, 2));
        d = _mm256_permute4x64_epi64(d, _MM_SHUFFLE(0, 3, 2, 1));
    }
    _mm256_storeu_si256((__m256i *)&s->h[0], _mm256_xor_si256(a0, _mm256_xor_si256(a, c)));
    _mm256_storeu_si256((__m256i *)&s->h[4], _mm256_xor_si256(b0, _mm256_xor_si256(b, d)));
}
#endif

/* The compression in use: AVX2 where the CPU has it (chosen at import), else portable. */
static void (*blake2b_compress)(blake2b_state *, int) = blake2b_compress_portable;

static void choose_blake2b(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) blake2b_compress = blake2b_compress_avx2;
#endif
}

static void blake2b_init(blake2b_state *s, size_t outlen) {
    for (int i = 0; i < 8; i++) s->h[i] = blake2b_iv[i];
    s->h[0] ^= 0x01010000ULL ^ (uint64_t)outlen;
    s->t = 0;
    s->used = 0;
    s->outlen = outlen;
}

static void blake2b_update(blake2b_state *s, const uint8_t *in, size_t n) {
    while (n > 0) {
        if (s->used == 128) {  /* only compressed once more input follows */
            s->t += 128;
            blake2b_compress(s, 0);
            s->used = 0;
        }
        size_t take = 128 - s->used;
        if (take > n) take = n;
        memcpy(s->buf + s->used, in, take);
        s->used += take;
        in += take;
        n -= take;
    }
}

static void blake2b_final(blake2b_state *s, uint8_t *out) {
    s->t += s->used;
    memset(s->buf + s->used, 0, 128 - s->used);
    blake2b_compress(s, 1);
    for (size_t i = 0; i < s->outlen; i++) out[i] = (uint8_t)(s->h[i / 8] >> (8 * (i % 8)));
    /* All-zero ids are invalid in OTLP (span.py's _digest): the last byte becomes 1. */
    for (size_t i = 0; i < s->outlen; i++)
        if (out[i]) return;
    out[s->outlen - 1] = 1;
}

/* Small helpers whose key literals and lengths should reach memcpy as constants. */
#define ALWAYS_INLINE inline __attribute__((always_inline))

/* ---- an output buffer ----------------------------------------------------------- */

typedef struct {
    uint8_t *p;
    size_t len, cap;
    uint8_t stack[1024];
} wbuf;

static int wb_reserve(wbuf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap * 2;
    while (cap < b->len + extra) cap *= 2;
    uint8_t *p = (b->p == b->stack) ? PyMem_Malloc(cap) : PyMem_Realloc(b->p, cap);
    if (p == NULL) return -1;
    if (b->p == b->stack) memcpy(p, b->stack, b->len);
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline void wb_byte(wbuf *b, uint8_t c) { b->p[b->len++] = c; }

static inline void wb_bytes(wbuf *b, const void *src, size_t n) {
    memcpy(b->p + b->len, src, n);
    b->len += n;
}

/* An unsigned base-128 varint at ``p``; the byte after it. */
static inline uint8_t *put_varint(uint8_t *p, uint64_t n) {
    while (n > 0x7F) {
        *p++ = (uint8_t)((n & 0x7F) | 0x80);
        n >>= 7;
    }
    *p++ = (uint8_t)n;
    return p;
}

static inline void wb_varint(wbuf *b, uint64_t n) {
    b->len = (size_t)(put_varint(b->p + b->len, n) - b->p);
}

static inline void wb_fixed64(wbuf *b, uint64_t n) {
    for (int i = 0; i < 8; i++) b->p[b->len++] = (uint8_t)(n >> (8 * i));
}

static inline size_t varint_size(uint64_t n) {
    size_t k = 1;
    while (n > 0x7F) {
        n >>= 7;
        k++;
    }
    return k;
}

/* ---- inputs ----------------------------------------------------------------------- */

/* A str's UTF-8 (NULL with no error set for anything else, or for text that has no
 * UTF-8: lone surrogates; the caller then returns b"" for the Python path). */
static inline const char *utf8_of(PyObject *o, Py_ssize_t *n) {
    if (!PyUnicode_CheckExact(o)) return NULL;
    if (PyUnicode_IS_COMPACT_ASCII(o)) {
        /* ASCII text is its own UTF-8, right after the object: no call. */
        *n = PyUnicode_GET_LENGTH(o);
        return (const char *)PyUnicode_DATA(o);
    }
    const char *s = PyUnicode_AsUTF8AndSize(o, n);
    if (s == NULL) PyErr_Clear();
    return s;
}

/* An int in int64 (0 on success; -1 for anything else, no error set). */
static inline int int64_of(PyObject *o, long long *out) {
    if (!PyLong_CheckExact(o)) return -1;
#if PY_VERSION_HEX < 0x030C0000
    /* 3.11's int of at most one 30-bit digit (statuses, sizes, most durations) is
     * its sign times ob_digit[0]: no call. 3.12 changed the layout: the call below. */
    Py_ssize_t size = Py_SIZE(o);
    if (size >= -1 && size <= 1) {
        *out = size == 0 ? 0 : (long long)size * (long long)((PyLongObject *)o)->ob_digit[0];
        return 0;
    }
#endif
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return -1;
    }
    *out = v;
    return 0;
}

#define DIGITS 24 /* an int64 in decimal, with its sign */

/* ``v`` in decimal (what str(int) writes), backwards into the end of ``digits``;
 * returns where it starts and its length in ``*n`` (snprintf cost ~70 ns a call). */
static const char *decimal(long long v, char digits[DIGITS], size_t *n) {
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    char *end = digits + DIGITS, *p = end;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) *--p = '-';
    *n = (size_t)(end - p);
    return p;
}

enum { ID_ABSENT = 0, ID_OK = 1, ID_ODD = -1 };

/* span.py's _parse_id: absent (None, "", another length, all zeros), the id, or odd
 * (the right length but not plain hex: bytes.fromhex's rules are the Python path's). */
static int parse_id(PyObject *o, uint8_t *out, Py_ssize_t size) {
    if (o == Py_None) return ID_ABSENT;
    if (!PyUnicode_CheckExact(o)) return ID_ODD;
    if (PyUnicode_GET_LENGTH(o) != 2 * size) return ID_ABSENT;
    if (PyUnicode_KIND(o) != PyUnicode_1BYTE_KIND) return ID_ODD;
    const Py_UCS1 *s = PyUnicode_1BYTE_DATA(o);
    int nonzero = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        int hi = hex_digit(s[2 * i]), lo = hex_digit(s[2 * i + 1]);
        if (hi < 0 || lo < 0) return ID_ODD;
        out[i] = (uint8_t)(hi << 4 | lo);
        nonzero |= out[i];
    }
    return nonzero ? ID_OK : ID_ABSENT;
}

static int truthy_text(PyObject *o) { return o != Py_None && PyUnicode_CheckExact(o) && PyUnicode_GET_LENGTH(o) > 0; }

/* ---- configuration: the request attributes' key fields, from the schema ---------- */

#define REQUEST_ATTRIBUTES 10
/* The int attribute (http.response.status_code) among them; the others are strings. */
#define STATUS_ATTRIBUTE 7

static uint8_t key_field[REQUEST_ATTRIBUTES][130];
static size_t key_field_len[REQUEST_ATTRIBUTES];
static int configured = 0;

/* span.py's KNOWN_METHODS, OTHER_METHOD and UNKNOWN_VERB, given to configure(). */
#define MAX_METHODS 32
#define MAX_METHOD_BYTES 24
static char known_methods[MAX_METHODS][MAX_METHOD_BYTES + 1];
static size_t known_method_len[MAX_METHODS];
static size_t known_method_count = 0;
static char other_method[MAX_METHOD_BYTES + 1];
static char unknown_verb[MAX_METHOD_BYTES + 1];

/* A configured name into a fixed buffer: 1..MAX_METHOD_BYTES bytes, no NUL; -1: error set. */
static int copy_name(PyObject *name, char *out, size_t *out_len) {
    Py_ssize_t n;
    const char *s = PyUnicode_Check(name) ? PyUnicode_AsUTF8AndSize(name, &n) : NULL;
    if (s == NULL || n == 0 || n > MAX_METHOD_BYTES || memchr(s, 0, (size_t)n) != NULL) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "method names are strings of 1..24 bytes");
        return -1;
    }
    memcpy(out, s, (size_t)n);
    out[n] = 0;
    if (out_len != NULL) *out_len = (size_t)n;
    return 0;
}

/* configure(keys, methods, other_method, unknown_verb): the request attributes' keys
   (the schema's first 10), then span.py's method rules; nothing is written before it. */
static PyObject *configure(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *keys, *methods, *other, *verb;
    if (!PyArg_ParseTuple(args, "O!O!UU:configure", &PyTuple_Type, &keys, &PyTuple_Type,
                          &methods, &other, &verb))
        return NULL;
    if (PyTuple_GET_SIZE(keys) != REQUEST_ATTRIBUTES) {
        PyErr_SetString(PyExc_ValueError, "configure() takes the 10 request attribute keys");
        return NULL;
    }
    if (PyTuple_GET_SIZE(methods) > MAX_METHODS) {
        PyErr_SetString(PyExc_ValueError, "at most 32 known methods");
        return NULL;
    }
    configured = 0;
    for (int i = 0; i < REQUEST_ATTRIBUTES; i++) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(keys, i), &n);
        if (s == NULL) return NULL;
        if (n == 0 || n > 127) {
            PyErr_SetString(PyExc_ValueError, "attribute keys are 1..127 bytes");
            return NULL;
        }
        key_field[i][0] = 0x0A; /* KeyValue.key */
        key_field[i][1] = (uint8_t)n;
        memcpy(key_field[i] + 2, s, (size_t)n);
        key_field_len[i] = (size_t)n + 2;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(methods);
    for (Py_ssize_t i = 0; i < count; i++)
        if (copy_name(PyTuple_GET_ITEM(methods, i), known_methods[i], &known_method_len[i]) < 0)
            return NULL;
    if (copy_name(other, other_method, NULL) < 0 || copy_name(verb, unknown_verb, NULL) < 0)
        return NULL;
    known_method_count = (size_t)count;
    configured = 1;
    Py_RETURN_NONE;
}

/* ---- the span ---------------------------------------------------------------------- */

enum {
    A_TIMESTAMP, A_DURATION, A_METHOD, A_STATUS, A_REQUEST_ID, A_DATASET, A_URI,
    A_PEER, A_CLUSTER, A_AUTHORITY, A_USER_AGENT, A_TRACE_ID, A_SPAN_ID, A_ROUTE,
    A_PATH_GROUP, A_GRAY_ID, A_STAGE, A_VERSION, A_URL_PATH, A_CLIENT_IP, A_GEO_FIELDS,
    A_FALLBACK_KEY, N_ARGS
};

/* span.py's http_method: NULL for none, OTHER_METHOD for a non-standard one; -1: odd. */
static int span_method(PyObject *o, const char **out, Py_ssize_t *n) {
    *out = NULL;
    *n = 0;
    if (o == Py_None) return 0;
    if (!PyUnicode_CheckExact(o)) return -1;
    if (PyUnicode_GET_LENGTH(o) == 0) return 0;
    Py_ssize_t len;
    const char *s = utf8_of(o, &len);
    if (s == NULL) return -1;
    for (size_t i = 0; i < known_method_count; i++) {
        if ((size_t)len == known_method_len[i] && memcmp(s, known_methods[i], (size_t)len) == 0) {
            *out = known_methods[i];
            *n = len;
            return 0;
        }
    }
    *out = other_method;
    *n = (Py_ssize_t)strlen(other_method);
    return 0;
}

/* Text for the span id's material: "" for None/"" (the f-string's `or ''`). */
static int material_text(blake2b_state *h, PyObject *o) {
    if (o == Py_None) return 0;
    Py_ssize_t n;
    const char *s = utf8_of(o, &n);
    if (s == NULL) return -1;
    blake2b_update(h, (const uint8_t *)s, (size_t)n);
    return 0;
}

/* An int or None as the f-string writes it ("None" or its decimal). */
static int material_int(blake2b_state *h, PyObject *o) {
    char digits[DIGITS];
    if (o == Py_None) {
        blake2b_update(h, (const uint8_t *)"None", 4);
        return 0;
    }
    long long v;
    if (int64_of(o, &v) < 0) return -1;
    size_t n;
    const char *text = decimal(v, digits, &n);
    blake2b_update(h, (const uint8_t *)text, n);
    return 0;
}

static const uint8_t SEP = 0x1F;

/* One string attribute: Span.attributes { key, value { string_value } }; "" is left
 * out (proto3). -2: no memory. */
static int text_attribute(wbuf *b, int index, const char *s, size_t n) {
    if (n == 0) return 0;
    size_t any = 1 + varint_size(n) + n;
    size_t kv = key_field_len[index] + 1 + varint_size(any) + any;
    if (wb_reserve(b, 1 + 10 + kv) < 0) return -2;
    wb_byte(b, 0x4A); /* Span.attributes */
    wb_varint(b, kv);
    wb_bytes(b, key_field[index], key_field_len[index]);
    wb_byte(b, 0x12); /* KeyValue.value */
    wb_varint(b, any);
    wb_byte(b, 0x0A); /* AnyValue.string_value */
    wb_varint(b, n);
    wb_bytes(b, s, n);
    return 0;
}

/* A str (or None) attribute; -1: odd (the Python path). */
static int string_attribute(wbuf *b, int index, PyObject *o) {
    if (o == Py_None) return 0;
    Py_ssize_t n;
    const char *s = utf8_of(o, &n);
    if (s == NULL) return -1;
    return text_attribute(b, index, s, (size_t)n);
}

static PyObject *empty_bytes;

/* encode_span(timestamp_ns, duration_ns, method, status, request_id, dataset, uri,
 *             peer_addr, upstream_cluster, authority, user_agent, trace_id, span_id,
 *             route, path_group, gray_id, stage, version, url_path, client_ip,
 *             geo_fields, fallback_key) -> bytes | None
 * None: no span (no time, no identity); b"": take the Python path. */
static PyObject *encode_span(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != N_ARGS) {
        PyErr_Format(PyExc_TypeError, "encode_span() takes %d arguments", N_ARGS);
        return NULL;
    }
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
#define ODD() do { result = empty_bytes; Py_INCREF(result); goto done; } while (0)
    PyObject *result = NULL;
    wbuf b;
    b.p = b.stack;
    b.len = 0;
    b.cap = sizeof b.stack;

    if (args[A_TIMESTAMP] == Py_None) Py_RETURN_NONE;
    long long start, duration = 0;
    if (int64_of(args[A_TIMESTAMP], &start) < 0 || start <= 0) ODD();
    if (args[A_DURATION] != Py_None) {
        long long d;
        if (int64_of(args[A_DURATION], &d) < 0) ODD();
        if (d > 0) duration = d;
    }
    if (duration > INT64_MAX - start) ODD();
    long long end = start + duration;

    /* Identity (span.py's span_identity). */
    uint8_t trace_id[16], parent[8], span_id[8];
    int has_parent = 0;
    int got = parse_id(args[A_TRACE_ID], trace_id, 16);
    if (got == ID_ODD) ODD();
    if (got == ID_OK) {
        int p = parse_id(args[A_SPAN_ID], parent, 8);
        if (p == ID_ODD) ODD();
        has_parent = p == ID_OK;
    } else {
        PyObject *material = NULL;
        const uint8_t *prefix = NULL;
        if (args[A_REQUEST_ID] != Py_None) {
            if (!PyUnicode_CheckExact(args[A_REQUEST_ID])) ODD();
            if (PyUnicode_GET_LENGTH(args[A_REQUEST_ID]) > 0) {
                material = args[A_REQUEST_ID];
                prefix = (const uint8_t *)"r";
            }
        }
        if (material == NULL && args[A_FALLBACK_KEY] != Py_None) {
            if (!PyUnicode_CheckExact(args[A_FALLBACK_KEY])) ODD();
            if (PyUnicode_GET_LENGTH(args[A_FALLBACK_KEY]) > 0) {
                material = args[A_FALLBACK_KEY];
                prefix = (const uint8_t *)"k";
            }
        }
        if (material == NULL) Py_RETURN_NONE;
        Py_ssize_t n;
        const char *s = utf8_of(material, &n);
        if (s == NULL) ODD();
        blake2b_state h;
        blake2b_init(&h, 16);
        blake2b_update(&h, prefix, 1);
        blake2b_update(&h, (const uint8_t *)"\0", 1);
        blake2b_update(&h, (const uint8_t *)s, (size_t)n);
        blake2b_final(&h, trace_id);
    }

    const char *method;
    Py_ssize_t method_len;
    if (span_method(args[A_METHOD], &method, &method_len) < 0) ODD();
    long long status = 0;
    int has_status = args[A_STATUS] != Py_None;
    if (has_status && int64_of(args[A_STATUS], &status) < 0) ODD();

    /* The span id: a hash of what tells this proxy's line apart (span.py's span_id). */
    {
        blake2b_state h;
        blake2b_init(&h, 8);
        blake2b_update(&h, (const uint8_t *)"s\0", 2);
        blake2b_update(&h, trace_id, 16);
        if (has_parent) blake2b_update(&h, parent, 8);
        PyObject *dataset = args[A_DATASET];
        if (!PyUnicode_CheckExact(dataset) || material_text(&h, dataset) < 0) ODD();
        blake2b_update(&h, &SEP, 1);
        /* request_id or fallback_key or '' */
        PyObject *who = truthy_text(args[A_REQUEST_ID]) ? args[A_REQUEST_ID] : args[A_FALLBACK_KEY];
        if (who != Py_None && !PyUnicode_CheckExact(who)) ODD();
        if (!truthy_text(who)) who = Py_None;
        if (material_text(&h, who) < 0) ODD();
        blake2b_update(&h, &SEP, 1);
        if (material_int(&h, args[A_TIMESTAMP]) < 0) ODD();
        blake2b_update(&h, &SEP, 1);
        if (material_int(&h, args[A_DURATION]) < 0) ODD();
        static const int texts1[] = {A_METHOD, A_URI};
        for (int i = 0; i < 2; i++) {
            blake2b_update(&h, &SEP, 1);
            if (material_text(&h, args[texts1[i]]) < 0) ODD();
        }
        blake2b_update(&h, &SEP, 1);
        if (material_int(&h, args[A_STATUS]) < 0) ODD();
        static const int texts2[] = {A_PEER, A_CLUSTER, A_AUTHORITY};
        for (int i = 0; i < 3; i++) {
            blake2b_update(&h, &SEP, 1);
            if (material_text(&h, args[texts2[i]]) < 0) ODD();
        }
        blake2b_final(&h, span_id);
    }

    /* Head: ids, name, kind, times (otlp_wire.span_head's usual span). */
    if (wb_reserve(&b, 2 + 16 + 2 + 8 + 2 + 8) < 0) goto nomem;
    wb_byte(&b, 0x0A); wb_byte(&b, 16); wb_bytes(&b, trace_id, 16);
    wb_byte(&b, 0x12); wb_byte(&b, 8); wb_bytes(&b, span_id, 8);
    if (has_parent) { wb_byte(&b, 0x22); wb_byte(&b, 8); wb_bytes(&b, parent, 8); }
    {
        /* span_name: "{method} {route or path group}", UNKNOWN_VERB for unknown methods. */
        PyObject *target = truthy_text(args[A_ROUTE]) ? args[A_ROUTE] : args[A_PATH_GROUP];
        const char *verb = (method != NULL && method != other_method) ? method : unknown_verb;
        size_t verb_len = strlen(verb);
        const char *t = NULL;
        Py_ssize_t tn = 0;
        if (target != Py_None) {
            if (!PyUnicode_CheckExact(target)) ODD();
            if (PyUnicode_GET_LENGTH(target) > 0 && (t = utf8_of(target, &tn)) == NULL) ODD();
        }
        size_t name_len = verb_len + (t != NULL ? 1 + (size_t)tn : 0);
        if (wb_reserve(&b, 1 + 10 + name_len + 2 + 9 + 9) < 0) goto nomem;
        wb_byte(&b, 0x2A); /* Span.name */
        wb_varint(&b, name_len);
        wb_bytes(&b, verb, verb_len);
        if (t != NULL) { wb_byte(&b, ' '); wb_bytes(&b, t, (size_t)tn); }
    }
    wb_byte(&b, 0x30); wb_byte(&b, 2);          /* kind: SERVER */
    wb_byte(&b, 0x39); wb_fixed64(&b, (uint64_t)start);
    wb_byte(&b, 0x41); wb_fixed64(&b, (uint64_t)end);

    /* Request attributes, in the schema's order. */
    {
        PyObject *strings[REQUEST_ATTRIBUTES] = {
            args[A_GRAY_ID], args[A_STAGE], args[A_VERSION], args[A_PATH_GROUP], NULL,
            args[A_URL_PATH], args[A_ROUTE], NULL, args[A_CLIENT_IP], args[A_USER_AGENT]};
        for (int i = 0; i < REQUEST_ATTRIBUTES; i++) {
            int rc = 0;
            if (i == 4) {
                if (method != NULL) rc = text_attribute(&b, i, method, (size_t)method_len);
            } else if (i == STATUS_ATTRIBUTE) {
                if (has_status) {
                    uint64_t u = (uint64_t)status;
                    size_t any = 1 + varint_size(u);
                    size_t kv = key_field_len[i] + 2 + any;
                    if (wb_reserve(&b, 2 + kv) < 0) goto nomem;
                    wb_byte(&b, 0x4A);
                    wb_varint(&b, kv);
                    wb_bytes(&b, key_field[i], key_field_len[i]);
                    wb_byte(&b, 0x12);
                    wb_varint(&b, any);
                    wb_byte(&b, 0x18); /* AnyValue.int_value */
                    wb_varint(&b, u);
                }
            } else {
                rc = string_attribute(&b, i, strings[i]);
            }
            if (rc == -1) ODD();
            if (rc == -2) goto nomem;
        }
    }
    /* Geo attributes: encoded once per GeoInfo by the caller. */
    {
        PyObject *geo = args[A_GEO_FIELDS];
        if (!PyBytes_CheckExact(geo)) ODD();
        Py_ssize_t n = PyBytes_GET_SIZE(geo);
        if (wb_reserve(&b, (size_t)n + 32) < 0) goto nomem;
        wb_bytes(&b, PyBytes_AS_STRING(geo), (size_t)n);
    }
    /* Tail: the error status (5xx) and the flags. */
    if (has_status && status >= 500 && status <= 599) {
        char message[16];
        int k = snprintf(message, sizeof message, "HTTP %lld", status);
        wb_byte(&b, 0x7A); /* Span.status */
        wb_byte(&b, (uint8_t)(2 + k + 2));
        wb_byte(&b, 0x12); /* Status.message */
        wb_byte(&b, (uint8_t)k);
        wb_bytes(&b, message, (size_t)k);
        wb_byte(&b, 0x18); wb_byte(&b, 2); /* Status.code: ERROR */
    }
    wb_byte(&b, 0x85); wb_byte(&b, 0x01); /* Span.flags (fixed32) */
    {
        uint32_t flags = has_parent ? 0x301 : 0x101;
        for (int i = 0; i < 4; i++) wb_byte(&b, (uint8_t)(flags >> (8 * i)));
    }
    result = PyBytes_FromStringAndSize((const char *)b.p, (Py_ssize_t)b.len);
    goto done;
nomem:
    PyErr_NoMemory();
    result = NULL;
done:
    if (b.p != b.stack) PyMem_Free(b.p);
    return result;
#undef ODD
}

/* blake2b(data, digest_size, portable=False): for the tests, against hashlib (no
 * all-zero rule here would be visible: it applies to astronomically rare digests), with
 * the compression in use or the portable one (nothing in between can release the
 * interpreter lock). */
static PyObject *blake2b_digest(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer data;
    int size, portable = 0;
    if (!PyArg_ParseTuple(args, "y*i|p", &data, &size, &portable)) return NULL;
    if (size < 1 || size > 64) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "digest size 1..64");
        return NULL;
    }
    void (*in_use)(blake2b_state *, int) = blake2b_compress;
    if (portable) blake2b_compress = blake2b_compress_portable;
    blake2b_state h;
    uint8_t out[64];
    blake2b_init(&h, (size_t)size);
    blake2b_update(&h, data.buf, (size_t)data.len);
    blake2b_final(&h, out);
    blake2b_compress = in_use;
    PyBuffer_Release(&data);
    return PyBytes_FromStringAndSize((const char *)out, size);
}

/* Which BLAKE2b compression the span ids use here: "avx2" or "portable". */
static PyObject *blake2b_kind(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
#if defined(__x86_64__) && defined(__GNUC__)
    if (blake2b_compress == blake2b_compress_avx2) return PyUnicode_FromString("avx2");
#endif
    return PyUnicode_FromString("portable");
}

/* ---- the ECS document as JSON (document.py's _document, serialised as orjson does) -- */

/* A JSON string as orjson writes it: UTF-8 as is; '"', '\\' and control characters
 * escaped (\b \t \n \f \r, else \u00xx in lowercase hex). Eight bytes at a time
 * while none needs escaping (measured: the byte loop was ~60 % of the document). */
static int json_text(wbuf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    if (wb_reserve(b, 2 + 6 * n) < 0) return -2;
    wb_byte(b, '"');
    size_t run = 0, i = 0;
    while (i < n) {
        if (i + 8 <= n) {
            uint64_t word;
            memcpy(&word, s + i, 8);
            if (!json_word_stops(word)) {
                i += 8;
                continue;
            }
        }
        size_t stop = i + 8 < n ? i + 8 : n;
        for (; i < stop; i++) {
            uint8_t c = (uint8_t)s[i];
            if (!json_byte_stops(c)) continue;
            wb_bytes(b, s + run, i - run);
            run = i + 1;
            wb_byte(b, '\\');
            switch (c) {
                case '"': wb_byte(b, '"'); break;
                case '\\': wb_byte(b, '\\'); break;
                case '\b': wb_byte(b, 'b'); break;
                case '\t': wb_byte(b, 't'); break;
                case '\n': wb_byte(b, 'n'); break;
                case '\f': wb_byte(b, 'f'); break;
                case '\r': wb_byte(b, 'r'); break;
                default:
                    wb_bytes(b, "u00", 3);
                    wb_byte(b, (uint8_t)hex[c >> 4]);
                    wb_byte(b, (uint8_t)hex[c & 15]);
            }
        }
    }
    wb_bytes(b, s + run, n - run);
    wb_byte(b, '"');
    return 0;
}

/* Writes `"key":` (key: a C literal, plain ASCII), with a comma before all but the
 * first member of the object. */
static ALWAYS_INLINE int json_key(wbuf *b, int *first, const char *key, size_t n) {
    if (wb_reserve(b, n + 4) < 0) return -2;
    if (!*first) wb_byte(b, ',');
    *first = 0;
    wb_byte(b, '"');
    wb_bytes(b, key, n);
    wb_byte(b, '"');
    wb_byte(b, ':');
    return 0;
}

/* A value of a str field: -1 odd (not a str, or no UTF-8). */
static ALWAYS_INLINE int json_string_value(wbuf *b, PyObject *o) {
    Py_ssize_t n;
    const char *s = utf8_of(o, &n);
    if (s == NULL) return -1;
    return json_text(b, s, (size_t)n);
}

/* A value of an int field (int64; orjson's u64 beyond it is the Python path's). */
static ALWAYS_INLINE int json_int_value(wbuf *b, PyObject *o) {
    long long v;
    if (int64_of(o, &v) < 0) return -1;
    if (wb_reserve(b, DIGITS) < 0) return -2;
    char digits[DIGITS];
    size_t n;
    const char *text = decimal(v, digits, &n);
    wb_bytes(b, text, n);
    return 0;
}

/* "@timestamp" as values.ns_to_iso writes it: epoch ns -> "2026-11-20T12:00:00.001Z"
 * (milliseconds, UTC), for 1970-01-01 up to the end of year 9999; -1 for anything else
 * (the Python path). Days to a civil date: Howard Hinnant's days_from_civil inverse. */
static int json_timestamp(wbuf *b, PyObject *o) {
    long long ns;
    if (int64_of(o, &ns) < 0 || ns < 0) return -1;
    long long seconds = ns / 1000000000LL;
    if (seconds >= 253402300800LL) return -1; /* year 10000 */
    int millis = (int)(ns % 1000000000LL / 1000000LL);
    long long days = seconds / 86400, second_of_day = seconds % 86400;
    long long z = days + 719468;
    long long era = z / 146097;
    long long day_of_era = z - era * 146097;
    long long year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146096) / 365;
    long long day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    long long mp = (5 * day_of_year + 2) / 153;
    int day = (int)(day_of_year - (153 * mp + 2) / 5 + 1);
    int month = (int)(mp < 10 ? mp + 3 : mp - 9);
    int year = (int)(year_of_era + era * 400 + (month <= 2));
    /* "YYYY-MM-DDTHH:MM:SS.mmmZ" with its quotes: 26 bytes, digits by hand (no snprintf). */
    if (wb_reserve(b, 26) < 0) return -2;
    char *p = (char *)b->p + b->len;
    const int fields[7] = {year, month, day, (int)(second_of_day / 3600),
                           (int)(second_of_day / 60 % 60), (int)(second_of_day % 60), millis};
    static const char separators[7] = {'-', '-', 'T', ':', ':', '.', 'Z'};
    static const int widths[7] = {4, 2, 2, 2, 2, 2, 3};
    *p++ = '"';
    for (int f = 0; f < 7; f++) {
        int v = fields[f];
        for (int k = widths[f] - 1; k >= 0; k--) {
            p[k] = (char)('0' + v % 10);
            v /= 10;
        }
        p += widths[f];
        *p++ = separators[f];
    }
    *p++ = '"';
    b->len += 26;
    return 0;
}

enum { KIND_STR, KIND_INT, KIND_JSON, KIND_STR_OR_NULL, KIND_TIMESTAMP };

/* One member `"key":value` unless the value is None (absent values are left out;
 * KIND_STR_OR_NULL writes null). KIND_JSON: bytes already JSON (a shared object). */
static ALWAYS_INLINE int json_member(wbuf *b, int *first, const char *key, size_t key_len, PyObject *o,
                       int kind) {
    if (o == Py_None && kind != KIND_STR_OR_NULL) return 0;
    int rc = json_key(b, first, key, key_len);
    if (rc < 0) return rc;
    if (o == Py_None) {
        if (wb_reserve(b, 4) < 0) return -2;
        wb_bytes(b, "null", 4);
        return 0;
    }
    switch (kind) {
        case KIND_INT: return json_int_value(b, o);
        case KIND_TIMESTAMP: return json_timestamp(b, o);
        case KIND_JSON:
            if (!PyBytes_CheckExact(o)) return -1;
            if (wb_reserve(b, (size_t)PyBytes_GET_SIZE(o)) < 0) return -2;
            wb_bytes(b, PyBytes_AS_STRING(o), (size_t)PyBytes_GET_SIZE(o));
            return 0;
        default: return json_string_value(b, o);
    }
}

static ALWAYS_INLINE int json_open(wbuf *b, int *first, const char *key, size_t key_len, int *inner) {
    int rc = json_key(b, first, key, key_len);
    if (rc < 0) return rc;
    if (wb_reserve(b, 1) < 0) return -2;
    wb_byte(b, '{');
    *inner = 1;
    return 0;
}

static ALWAYS_INLINE int json_close(wbuf *b) {
    if (wb_reserve(b, 1) < 0) return -2;
    wb_byte(b, '}');
    return 0;
}

/* `"object":{"key":value}` when the value is there (user_agent.original, source.ip,
 * trace.id, span.id, service.name). */
static ALWAYS_INLINE int json_wrapped(wbuf *b, int *first, const char *object, size_t object_len,
                        const char *key, size_t key_len, PyObject *o) {
    if (o == Py_None) return 0;
    int inner, rc;
    if ((rc = json_open(b, first, object, object_len, &inner)) < 0) return rc;
    if ((rc = json_member(b, &inner, key, key_len, o, KIND_STR)) < 0) return rc;
    return json_close(b);
}

/* One member of an object: its key, which argument, what kind of value. */
typedef struct {
    const char *key;
    size_t key_len;
    int arg;
    int kind;
} member_spec;

enum { WHEN_FIRST, WHEN_ANY }; /* an object is written when its first / any member is there */

/* `"key":{members}` (the members that are there), when its first or any member is. */
static int json_object(wbuf *b, int *first, const char *key, size_t key_len,
                       PyObject *const *args, const member_spec *members, int n, int when) {
    int wanted = args[members[0].arg] != Py_None;
    for (int i = 1; when == WHEN_ANY && i < n && !wanted; i++) wanted = args[members[i].arg] != Py_None;
    if (!wanted) return 0;
    int inner, rc;
    if ((rc = json_open(b, first, key, key_len, &inner)) < 0) return rc;
    for (int i = 0; i < n; i++)
        if ((rc = json_member(b, &inner, members[i].key, members[i].key_len, args[members[i].arg],
                              members[i].kind)) < 0)
            return rc;
    return json_close(b);
}

enum {
    D_TIMESTAMP, D_DATASET, D_DURATION, D_ORIGINAL, D_METHOD, D_REQUEST_ID, D_REFERRER,
    D_STATUS, D_BODY_BYTES, D_HTTP_VERSION, D_ROUTE, D_URI, D_URL_PATH, D_URL_QUERY,
    D_USER_AGENT, D_PEER, D_CLIENT_IP, D_GEO_JSON, D_AS_JSON, D_TRACE_ID, D_SPAN_ID,
    D_SERVICE, D_UPSTREAM_CLUSTER, D_UPSTREAM_ADDRESS, D_UPSTREAM_STATUS,
    D_UPSTREAM_DURATION, D_STAGE, D_GRAY_ID, D_GRAY_ID_SOURCE, D_VERSION, D_PATH_GROUP,
    N_DOCUMENT_ARGS
};

/* A key literal and its length (no strlen per member). */
#define KEY(literal) literal, sizeof(literal) - 1

static int present(PyObject *const *args, int i) { return args[i] != Py_None; }

/* document_json(the 31 values above, in that order) -> bytes; b"": the Python path.
 * The members and their order are document.py's _document (its comments say why). */
static PyObject *document_json(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != N_DOCUMENT_ARGS) {
        PyErr_Format(PyExc_TypeError, "document_json() takes %d arguments", N_DOCUMENT_ARGS);
        return NULL;
    }
    wbuf b;
    b.p = b.stack;
    b.len = 0;
    b.cap = sizeof b.stack;
    int rc = 0, top = 1, inner, innermost;
#define DO(call) do { if ((rc = (call)) < 0) goto out; } while (0)
    wb_byte(&b, '{');
    DO(json_member(&b, &top, KEY("@timestamp"), args[D_TIMESTAMP], KIND_TIMESTAMP));
    DO(json_open(&b, &top, KEY("event"), &inner));
    DO(json_member(&b, &inner, KEY("dataset"), args[D_DATASET], KIND_STR_OR_NULL));
    DO(json_member(&b, &inner, KEY("duration"), args[D_DURATION], KIND_INT));
    DO(json_member(&b, &inner, KEY("original"), args[D_ORIGINAL], KIND_STR));
    DO(json_close(&b));

    if (present(args, D_METHOD) || present(args, D_REQUEST_ID) || present(args, D_REFERRER) ||
        present(args, D_STATUS) || present(args, D_BODY_BYTES) || present(args, D_HTTP_VERSION) ||
        present(args, D_ROUTE)) {
        DO(json_open(&b, &top, KEY("http"), &inner));
        static const member_spec request[] = {{KEY("method"), D_METHOD, KIND_STR},
                                               {KEY("id"), D_REQUEST_ID, KIND_STR},
                                               {KEY("referrer"), D_REFERRER, KIND_STR}};
        DO(json_object(&b, &inner, KEY("request"), args, request, 3, WHEN_ANY));
        if (present(args, D_STATUS) || present(args, D_BODY_BYTES)) {
            DO(json_open(&b, &inner, KEY("response"), &innermost));
            DO(json_member(&b, &innermost, KEY("status_code"), args[D_STATUS], KIND_INT));
            if (present(args, D_BODY_BYTES)) {
                int body;
                DO(json_open(&b, &innermost, KEY("body"), &body));
                DO(json_member(&b, &body, KEY("bytes"), args[D_BODY_BYTES], KIND_INT));
                DO(json_close(&b));
            }
            DO(json_close(&b));
        }
        DO(json_member(&b, &inner, KEY("version"), args[D_HTTP_VERSION], KIND_STR));
        DO(json_member(&b, &inner, KEY("route"), args[D_ROUTE], KIND_STR));
        DO(json_close(&b));
    }
    static const member_spec url[] = {{KEY("original"), D_URI, KIND_STR},
                                       {KEY("path"), D_URL_PATH, KIND_STR},
                                       {KEY("query"), D_URL_QUERY, KIND_STR}};
    DO(json_object(&b, &top, KEY("url"), args, url, 3, WHEN_FIRST));
    DO(json_wrapped(&b, &top, KEY("user_agent"), KEY("original"), args[D_USER_AGENT]));
    DO(json_wrapped(&b, &top, KEY("source"), KEY("ip"), args[D_PEER]));
    static const member_spec client[] = {{KEY("ip"), D_CLIENT_IP, KIND_STR},
                                          {KEY("geo"), D_GEO_JSON, KIND_JSON},
                                          {KEY("as"), D_AS_JSON, KIND_JSON}};
    DO(json_object(&b, &top, KEY("client"), args, client, 3, WHEN_FIRST));
    DO(json_wrapped(&b, &top, KEY("trace"), KEY("id"), args[D_TRACE_ID]));
    DO(json_wrapped(&b, &top, KEY("span"), KEY("id"), args[D_SPAN_ID]));
    DO(json_wrapped(&b, &top, KEY("service"), KEY("name"), args[D_SERVICE]));
    static const member_spec upstream[] = {{KEY("cluster"), D_UPSTREAM_CLUSTER, KIND_STR},
                                            {KEY("address"), D_UPSTREAM_ADDRESS, KIND_STR},
                                            {KEY("status_code"), D_UPSTREAM_STATUS, KIND_INT},
                                            {KEY("duration"), D_UPSTREAM_DURATION, KIND_INT}};
    DO(json_object(&b, &top, KEY("upstream"), args, upstream, 4, WHEN_ANY));
    DO(json_open(&b, &top, KEY("gray"), &inner));
    DO(json_member(&b, &inner, KEY("stage"), args[D_STAGE], KIND_STR_OR_NULL));
    if (present(args, D_GRAY_ID)) {
        DO(json_member(&b, &inner, KEY("id"), args[D_GRAY_ID], KIND_STR));
        DO(json_member(&b, &inner, KEY("id_source"), args[D_GRAY_ID_SOURCE], KIND_STR_OR_NULL));
    }
    DO(json_member(&b, &inner, KEY("version"), args[D_VERSION], KIND_STR));
    DO(json_member(&b, &inner, KEY("path_group"), args[D_PATH_GROUP], KIND_STR));
    DO(json_close(&b));
    DO(json_close(&b));
#undef DO
    PyObject *result;
out:
    if (rc == -2) {
        PyErr_NoMemory();
        result = NULL;
    } else if (rc < 0) {
        result = empty_bytes;
        Py_INCREF(result);
    } else {
        result = PyBytes_FromStringAndSize((const char *)b.p, (Py_ssize_t)b.len);
    }
    if (b.p != b.stack) PyMem_Free(b.p);
    return result;
}

/* ---- the bulk item's _id ------------------------------------------------------------ */

/* model.document_id of a KafkaCoordinates: "topic-partition-offset" as a str, exactly
 * the f-string's, for an ASCII topic and int64 partition and offset; None for anything
 * else (the f-string then). A str of known length written once, instead of two int
 * conversions and a join. */
static PyObject *document_id(PyObject *self, PyObject *coords) {
    (void)self;
    if (!PyTuple_Check(coords) || PyTuple_GET_SIZE(coords) != 3) Py_RETURN_NONE;
    PyObject *topic = PyTuple_GET_ITEM(coords, 0);
    long long partition, offset;
    if (!PyUnicode_CheckExact(topic) || !PyUnicode_IS_COMPACT_ASCII(topic) ||
        int64_of(PyTuple_GET_ITEM(coords, 1), &partition) < 0 ||
        int64_of(PyTuple_GET_ITEM(coords, 2), &offset) < 0)
        Py_RETURN_NONE;
    char partition_digits[DIGITS], offset_digits[DIGITS];
    size_t pn, on;
    const char *ps = decimal(partition, partition_digits, &pn);
    const char *os = decimal(offset, offset_digits, &on);
    Py_ssize_t tn = PyUnicode_GET_LENGTH(topic);
    PyObject *out = PyUnicode_New(tn + 2 + (Py_ssize_t)(pn + on), 127);
    if (out == NULL) return NULL;
    char *d = (char *)PyUnicode_DATA(out);
    memcpy(d, PyUnicode_DATA(topic), (size_t)tn);
    d += tn;
    *d++ = '-';
    memcpy(d, ps, pn);
    d += pn;
    *d++ = '-';
    memcpy(d, os, on);
    return out;
}

/* bulk.escaped_id's usual case: an ASCII str that JSON holds as it is (no '"', '\\'
 * or control character) as bytes; None for anything else (orjson escapes it then). */
static PyObject *plain_json_text(PyObject *self, PyObject *text) {
    (void)self;
    if (!PyUnicode_CheckExact(text) || !PyUnicode_IS_COMPACT_ASCII(text)) Py_RETURN_NONE;
    const uint8_t *s = (const uint8_t *)PyUnicode_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text), i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t word;
        memcpy(&word, s + i, 8);
        if (json_word_stops(word)) Py_RETURN_NONE;
    }
    for (; i < n; i++)
        if (json_byte_stops(s[i])) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)s, n);
}

/* ---- an export request of encoded spans ------------------------------------------- */

/* Services one request's spans are grouped by here (more: otlp_wire.frame_request's). */
#define FRAME_MAX_GROUPS 32

/* frame_request(spans, resource_of, tags, scope_field): otlp_wire.frame_request (the
 * definition) of a list of (service name, Span bytes) tuples, in one pass over the
 * spans and one copy of each: the ExportTraceServiceRequest grouping them by service,
 * services in order of first appearance. resource_of(service) is a ResourceSpans'
 * encoded resource field; tags the three one-byte tags of
 * ExportTraceServiceRequest.resource_spans, ResourceSpans.scope_spans and
 * ScopeSpans.spans; scope_field the ScopeSpans' encoded scope. None: more services than
 * FRAME_MAX_GROUPS, or anything unusual (the Python path). Measured: ~1,540
 * instructions a span compiled from otlp_wire.py (dict lookups, two list appends), ~350
 * here, the span's copy included (bench/README.md, "Session 23"). */
static PyObject *frame_request(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 4 || !PyList_Check(args[0]) || !PyBytes_Check(args[2]) ||
        PyBytes_GET_SIZE(args[2]) != 3 || !PyBytes_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "frame_request(list, resource_of, tags, scope_field)");
        return NULL;
    }
    PyObject *spans = args[0];
    const uint8_t *tags = (const uint8_t *)PyBytes_AS_STRING(args[2]);
    Py_ssize_t scope_n = PyBytes_GET_SIZE(args[3]);
    Py_ssize_t n = PyList_GET_SIZE(spans);
    PyObject *services[FRAME_MAX_GROUPS];
    size_t group_spans_size[FRAME_MAX_GROUPS];
    Py_ssize_t first[FRAME_MAX_GROUPS], last[FRAME_MAX_GROUPS];
    int groups = 0;
    Py_ssize_t *next = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(n > 0 ? n : 1));
    if (next == NULL) return PyErr_NoMemory();
    PyObject *resources[FRAME_MAX_GROUPS] = {NULL};
    PyObject *out = NULL;
    /* Each span's group, linked in order (next[]), and each group's spans' size. */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *span = PyList_GET_ITEM(spans, i);
        if (!PyTuple_CheckExact(span) || PyTuple_GET_SIZE(span) != 2 ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(span, 1)) ||
            !PyUnicode_CheckExact(PyTuple_GET_ITEM(span, 0)))
            goto python_path;
        PyObject *service = PyTuple_GET_ITEM(span, 0);
        int g = 0;
        while (g < groups && services[g] != service && PyUnicode_Compare(services[g], service) != 0)
            g++;
        if (g == groups) {
            if (groups == FRAME_MAX_GROUPS) goto python_path;
            services[g] = service;
            group_spans_size[g] = 0;
            first[g] = i;
            groups++;
        } else {
            next[last[g]] = i;
        }
        last[g] = i;
        next[i] = -1;
        size_t body_n = (size_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(span, 1));
        group_spans_size[g] += 1 + varint_size(body_n) + body_n;
    }
    /* The request's size, then the request. */
    size_t total = 0;
    size_t scope_spans_n[FRAME_MAX_GROUPS], resource_spans_n[FRAME_MAX_GROUPS];
    for (int g = 0; g < groups; g++) {
        resources[g] = PyObject_CallOneArg(args[1], services[g]);
        if (resources[g] == NULL) goto done;
        if (!PyBytes_Check(resources[g])) {
            PyErr_SetString(PyExc_TypeError, "resource_of must return bytes");
            goto done;
        }
        scope_spans_n[g] = (size_t)scope_n + group_spans_size[g];
        resource_spans_n[g] = (size_t)PyBytes_GET_SIZE(resources[g]) + 1 +
                              varint_size(scope_spans_n[g]) + scope_spans_n[g];
        total += 1 + varint_size(resource_spans_n[g]) + resource_spans_n[g];
    }
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (out == NULL) goto done;
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
    for (int g = 0; g < groups; g++) {
        *p++ = tags[0];
        p = put_varint(p, resource_spans_n[g]);
        memcpy(p, PyBytes_AS_STRING(resources[g]), (size_t)PyBytes_GET_SIZE(resources[g]));
        p += PyBytes_GET_SIZE(resources[g]);
        *p++ = tags[1];
        p = put_varint(p, scope_spans_n[g]);
        memcpy(p, PyBytes_AS_STRING(args[3]), (size_t)scope_n);
        p += scope_n;
        for (Py_ssize_t i = first[g]; i >= 0; i = next[i]) {
            PyObject *body = PyTuple_GET_ITEM(PyList_GET_ITEM(spans, i), 1);
            size_t body_n = (size_t)PyBytes_GET_SIZE(body);
            *p++ = tags[2];
            p = put_varint(p, body_n);
            memcpy(p, PyBytes_AS_STRING(body), body_n);
            p += body_n;
        }
    }
    goto done;
python_path:
    out = Py_None;
    Py_INCREF(out);
done:
    for (int g = 0; g < groups; g++) Py_XDECREF(resources[g]);
    PyMem_Free(next);
    return out;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS,
     "Set the request attributes' keys (the schema's first 10) and span.py's method rules."},
    {"encode_span", (PyCFunction)(void (*)(void))encode_span, METH_FASTCALL,
     "A request's span as wire bytes; None: no span; b\"\": take the Python path."},
    {"document_json", (PyCFunction)(void (*)(void))document_json, METH_FASTCALL,
     "A request's document as JSON; b\"\": take the Python path."},
    {"document_id", document_id, METH_O, "model.document_id's usual case; None: the Python path."},
    {"plain_json_text", plain_json_text, METH_O,
     "ASCII text JSON holds as it is, as bytes; None: the Python path."},
    {"blake2b", blake2b_digest, METH_VARARGS, "BLAKE2b digest (tests)."},
    {"blake2b_kind", blake2b_kind, METH_NOARGS, "The BLAKE2b compression in use: avx2 or portable."},
    {"frame_request", (PyCFunction)(void (*)(void))frame_request, METH_FASTCALL,
     "otlp_wire.frame_request of a list of encoded spans; None: the Python path."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "pipeline.core._wire",
                                    "A request's span and document, written in C.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__wire(void) {
    choose_blake2b();
    empty_bytes = PyBytes_FromStringAndSize("", 0);
    if (empty_bytes == NULL) return NULL;
    return PyModule_Create(&module);
}

/* What the C modules (_wire.c, _read.c) share about the bytes of text. */
#ifndef GRAYSCOPE_BYTES_H
#define GRAYSCOPE_BYTES_H

#include <stdint.h>

/* Eight bytes at a time, the bit tricks of "Bit Twiddling Hacks" (hasless, haszero),
 * exact as a yes/no: nonzero when any of the 8 bytes of ``x`` is below ``n`` (n <= 128)
 * / is ``c``. */
#define WORD_ONES 0x0101010101010101ULL
#define WORD_HIGHS 0x8080808080808080ULL

static inline uint64_t word_has_below(uint64_t x, unsigned char n) {
    return (x - WORD_ONES * n) & ~x & WORD_HIGHS;
}

static inline uint64_t word_has_byte(uint64_t x, unsigned char c) {
    uint64_t y = x ^ (WORD_ONES * c);
    return (y - WORD_ONES) & ~y & WORD_HIGHS;
}

/* Whether a byte is one a JSON string cannot hold as it is: '"', '\\' or a control
 * character (< 0x20). Writing, those are escaped; reading, they end a plain run. */
static inline int json_byte_stops(unsigned char c) { return c < 0x20 || c == '"' || c == '\\'; }

/* json_byte_stops of any of 8 bytes. */
static inline int json_word_stops(uint64_t x) {
    return (word_has_below(x, 0x20) | word_has_byte(x, '"') | word_has_byte(x, '\\')) != 0;
}

/* A hex digit's value, -1 for any other byte (ids, JSON's \uXXXX, nginx's \xXX). */
static inline int hex_digit(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

#endif

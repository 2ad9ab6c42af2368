/* What the C modules (_wire.c, _read.c) share about the bytes of text. */
#ifndef GRAYSCOPE_BYTES_H
#define GRAYSCOPE_BYTES_H

#include <stdint.h>

/* Whether any of 8 bytes is one a JSON string cannot hold as it is: '"', '\\' or a
 * control character (< 0x20). Writing, those are escaped; reading, they end a plain
 * run. The bit tricks of "Bit Twiddling Hacks" (hasless, haszero), exact as a yes/no. */
static inline int json_word_stops(uint64_t x) {
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    uint64_t control = (x - ones * 0x20) & ~x & highs;
    uint64_t quote = x ^ (ones * 0x22);
    uint64_t backslash = x ^ (ones * 0x5C);
    quote = (quote - ones) & ~quote & highs;
    backslash = (backslash - ones) & ~backslash & highs;
    return (control | quote | backslash) != 0;
}

/* A hex digit's value, -1 for any other byte (ids, JSON's \uXXXX, nginx's \xXX). */
static inline int hex_digit(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

#endif

"""nginx text access logs: combined and the gray-release structured format."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.formats.nginx_text import (
    _STRUCTURED,
    _STRUCTURED_PLAIN,
    COMBINED_GROUPS,
    COMBINED_PLAIN,
    HEADED,
    HEADED_PLAIN,
    STRUCTURED_GROUPS,
    UNESCAPE_ASCII,
    looks_like_text_log,
    parse_nginx_text,
    python_unescape,
    unescape,
)
from pipeline.core.formats.nginx_text import COMBINED as COMBINED_PATTERN
from pipeline.core.model import Reason
from pipeline.errors import RejectedInput
from tests.unit.conftest import T0_NS, compiled_core_in_use, fixture_lines, sample_lines

COMBINED = (
    '10.0.0.9 - - [20/Nov/2026:12:00:03 +0000] "GET /godoc/pkg/io?v=1.22 HTTP/1.1" 200 900 '
    '"https://go.dev/" "curl/8.5.0"'
)


def test_structured_sample() -> None:
    rec = parse_nginx_text(sample_lines("nginx-structured.log")[0].decode())
    assert rec.dataset == "nginx.access"
    assert rec.timestamp_ns == T0_NS + 3_000_000_000
    assert (rec.method, rec.uri, rec.protocol) == ("GET", "/godoc/pkg/io?v=1.22", "HTTP/1.1")
    assert (rec.status, rec.bytes_sent) == (200, 900)
    assert rec.user_agent == "curl/8.5.0"
    assert rec.peer_addr == "10.0.0.9"
    assert rec.version_field == "1.22"
    assert rec.forwarded_for == "192.0.2.45"


def test_combined() -> None:
    rec = parse_nginx_text(COMBINED)
    assert rec.uri == "/godoc/pkg/io?v=1.22"
    assert rec.headers == {"referer": "https://go.dev/"}
    assert rec.version_field is None
    assert rec.forwarded_for is None


def test_combined_without_referer_and_agent() -> None:
    rec = parse_nginx_text('1.2.3.4 - - [20/Nov/2026:12:00:03 +0000] "GET / HTTP/1.0" 304 -')
    assert (rec.status, rec.bytes_sent, rec.user_agent) == (304, None, None)


def test_dashes_are_missing() -> None:
    rec = parse_nginx_text('1.2.3.4 - - [20/Nov/2026:12:00:03 +0000] "-" - - "-" "-"')
    assert (rec.method, rec.uri, rec.status, rec.bytes_sent) == (None, None, None, None)
    assert rec.user_agent is None
    assert rec.headers == {}


def test_nginx_hex_escapes_in_user_agent() -> None:
    line = (
        '10.0.0.9 - - [20/Nov/2026:12:00:04 +0000] "GET / HTTP/1.1" 200 5 "-" '
        '"Mozilla/5.0 \\x22quoted\\x22 \\x5C back \\xE4\\xB8\\xAD"'
    )
    assert parse_nginx_text(line).user_agent == 'Mozilla/5.0 "quoted" \\ back 中'


def test_backslash_escaped_quote_inside_a_field() -> None:
    line = '10.0.0.9 - - [20/Nov/2026:12:00:04 +0000] "GET / HTTP/1.1" 200 5 "-" "a \\"b\\" c"'
    assert parse_nginx_text(line).user_agent == 'a "b" c'


def test_unescape() -> None:
    assert unescape("plain") == "plain"
    assert unescape("\\x22x\\x22") == '"x"'
    assert unescape("\\xE4\\xB8\\xAD") == "中"
    assert unescape("\\xFF") == "\ufffd"  # not UTF-8: replaced, never an error
    assert unescape('\\"q\\" \\\\') == '"q" \\'


def test_structured_request_uri_wins_over_the_request_line() -> None:
    """After an internal redirect $request shows the rewritten target; $request_uri the original."""
    line = (
        '10.0.0.9 - - [20/Nov/2026:12:00:04 +0000] "GET /index.html HTTP/1.1" 200 5 "-" "-" '
        '/godoc/pkg/net/http?v=1.23&abt=exp9 - version="-" region="73.15.200.7, 10.0.1.2"'
    )
    rec = parse_nginx_text(line)
    assert rec.uri == "/godoc/pkg/net/http?v=1.23&abt=exp9"
    assert rec.version_field is None  # "-": the URI's ?v= decides (see the gray tests)
    assert rec.forwarded_for == "73.15.200.7, 10.0.1.2"


def test_structured_args_are_not_read_as_log_fields() -> None:
    """$args is client data: `?gray_id=...&rt=9` must not become the log's gray_id or rt."""
    line = (
        '10.0.0.9 - - [20/Nov/2026:12:00:04 +0000] "GET /x?gray_id=evil00001 HTTP/1.1" 200 5 '
        '"-" "-" /x?gray_id=evil00001 gray_id=evil00001 version="-" region="-"'
    )
    rec = parse_nginx_text(line)
    assert rec.headers == {}
    assert rec.duration_ns is None


def test_structured_empty_version_and_region() -> None:
    line = (
        '10.0.0.9 - - [20/Nov/2026:12:00:08 +0000] "GET / HTTP/1.1" 200 1 "-" "-" '
        '/ - version="" region="-"'
    )
    rec = parse_nginx_text(line)
    assert rec.version_field is None
    assert rec.forwarded_for is None


def test_extension_pairs() -> None:
    line = (
        '192.168.1.10 - - [20/Nov/2026:12:00:07 +0000] "GET /dl/x HTTP/1.1" 206 10 "-" "Wget" '
        'rt=1.250 urt="0.010, 0.020" request_id=abc123 gray_id=feature01 trace_id=' + "ab" * 16
    )
    rec = parse_nginx_text(line)
    assert rec.duration_ns == 1_250_000_000
    assert rec.upstream_duration_ns == 30_000_000
    assert rec.request_id == "abc123"
    assert rec.headers == {"x-gray-id": "feature01"}
    assert rec.trace_id == "ab" * 16
    assert rec.timestamp_ns == T0_NS + 7_000_000_000 - 1_250_000_000


def test_ipv6_client_and_time_zone() -> None:
    line = (
        '2001:db8::9 - alice [20/Nov/2026:04:00:05 -0800] "POST /play/share HTTP/2.0" 201 15 '
        '"-" "Go"'
    )
    rec = parse_nginx_text(line)
    assert rec.peer_addr == "2001:db8::9"
    assert rec.timestamp_ns == T0_NS + 5_000_000_000


def test_tls_handshake_bytes_as_the_request() -> None:
    line = (
        '10.0.0.9 - - [20/Nov/2026:12:00:06 +0000] "\\x16\\x03\\x01\\x02\\x00\\x01" 400 157 "-" "-"'
    )
    rec = parse_nginx_text(line)
    assert (rec.method, rec.uri, rec.status) == (None, None, 400)


def test_non_ip_remote_is_dropped() -> None:
    line = 'unix: - - [20/Nov/2026:12:00:06 +0000] "GET / HTTP/1.1" 200 1 "-" "-"'
    assert parse_nginx_text(line).peer_addr is None


@pytest.mark.parametrize(
    "line",
    [
        "hello world",
        "10.0.0.9 - - [20/Nov/2026:12:00:03 +0000]",
        '10.0.0.9 - - [20/Nov/2026:12:00:03 +0000] "GET / HTTP/1.1" 2000 5',
        '10.0.0.9 - - [20/Nov/2026:12:00:03 +0000] "GET / HTTP/1.1 200 5',  # unterminated quote
    ],
)
def test_not_a_text_log(line: str) -> None:
    assert not looks_like_text_log(line)
    with pytest.raises(RejectedInput) as info:
        parse_nginx_text(line)
    assert info.value.reason is Reason.UNKNOWN_FORMAT


def test_every_fixture_line_parses() -> None:
    for line in fixture_lines("nginx-text.log"):
        assert parse_nginx_text(line.decode()).dataset == "nginx.access"


# --- without backslashes the plain patterns match exactly like the escaping ones ----

_PIECES = (" ", " ", '"', '"', "[", "]", "-", "0", "200", "a", "/", "=", "\t", "\u00e9", "\u0663",
           ' version="', ' region="', "\n", ".", " 0.5", "\x7f", "\\", '\\"', "\\x22")  # fmt: skip
_REAL = (
    '10.4.0.9 - - [20/Nov/2026:12:00:00 +0000] "GET /doc/x?v=1.22 HTTP/1.1" 200 10838 '
    '"https://go.dev/" "curl/8.5.0" /doc/x?v=1.22 v=1.22 version="1.22" region="24.6.10.44"'
)


def _c_reads_as_the_patterns(line: str) -> None:
    """The C readers (pipeline/core/_read.c) give the escaping patterns' groups for any
    printable ASCII line (backslashes too), and leave every other line to them."""
    if COMBINED_GROUPS is None or STRUCTURED_GROUPS is None:
        return
    ours = line.isascii() and line.isprintable()
    for read, expected in (
        (COMBINED_GROUPS, COMBINED_PATTERN.match(line)),
        (STRUCTURED_GROUPS, _STRUCTURED.fullmatch(line)),
    ):
        if ours:
            assert read(line) == (expected and expected.groups()), line
        else:
            assert read(line) is None, line


def _same_matches(line: str) -> None:
    _c_reads_as_the_patterns(line)
    if "\\" in line:
        return
    for escaping, plain in (
        (COMBINED_PATTERN, COMBINED_PLAIN),
        (HEADED, HEADED_PLAIN),
        (_STRUCTURED, _STRUCTURED_PLAIN),
    ):
        expected, got = escaping.match(line), plain.match(line)
        assert (got and got.groups()) == (expected and expected.groups()), line
        expected, got = escaping.fullmatch(line), plain.fullmatch(line)
        assert (got and got.groups()) == (expected and expected.groups()), line


@given(st.lists(st.sampled_from(_PIECES), max_size=40).map("".join))
@settings(max_examples=2000, deadline=None)
def test_plain_patterns_agree_on_generated_lines(line: str) -> None:
    _same_matches(line)


def _mutated(base: str, max_edits: int) -> st.SearchStrategy[str]:
    """``base`` after up to ``max_edits`` edits, each cutting up to three characters at
    a position and putting one of ``_PIECES`` there."""

    def edited(edits: list[tuple[int, int, str]]) -> str:
        text = base
        for at, cut, piece in edits:
            text = text[:at] + piece + text[at + cut :]
        return text

    edit = st.tuples(st.integers(0, len(base)), st.integers(0, 3), st.sampled_from(_PIECES))
    return st.lists(edit, max_size=max_edits).map(edited)


@given(_mutated(_REAL, 4))
@settings(max_examples=2000, deadline=None)
def test_plain_patterns_agree_on_mutated_lines(line: str) -> None:
    _same_matches(line)


_TAIL = ' /doc/x?v=1.22 v=1.22 version="1.22" region="24.6.10.44, 10.0.0.3"  '


@given(_mutated(_TAIL, 3))
@settings(max_examples=2000, deadline=None)
def test_plain_patterns_agree_on_mutated_structured_tails(tail: str) -> None:
    _same_matches(tail)


def test_the_c_readers_are_used_where_the_core_is_compiled() -> None:
    assert (COMBINED_GROUPS is not None) == compiled_core_in_use()
    assert (STRUCTURED_GROUPS is not None) == compiled_core_in_use()
    lines = [COMBINED, _REAL, _TAIL, *(raw.decode() for raw in fixture_lines("nginx-text.log"))]
    for line in lines:
        _c_reads_as_the_patterns(line)
    if COMBINED_GROUPS is not None and STRUCTURED_GROUPS is not None:
        assert COMBINED_GROUPS(_REAL) is not None  # the usual line is read in C
        assert STRUCTURED_GROUPS(_TAIL) is not None


_ESCAPED = _REAL.replace("curl/8.5.0", 'curl \\"8.5\\" \\x22x\\x22 \\\\').replace(
    'version="1.22"', 'version="1.\\"22"'
)


@given(_mutated(_ESCAPED, 4))
@settings(max_examples=2000, deadline=None)
def test_the_c_readers_agree_on_mutated_escaped_lines(line: str) -> None:
    _c_reads_as_the_patterns(line)
    _c_reads_as_the_patterns(line[line.find(" /doc") :])


def test_the_c_readers_take_escaped_lines() -> None:
    if COMBINED_GROUPS is None or STRUCTURED_GROUPS is None:
        return
    groups = COMBINED_GROUPS(_ESCAPED)
    assert groups is not None and groups[8] == 'curl \\"8.5\\" \\x22x\\x22 \\\\'
    assert STRUCTURED_GROUPS(groups[9]) is not None


@given(
    st.one_of(
        st.lists(
            st.sampled_from(
                ["\\", "x", "\\x", "\\x4", "41", "e4", "B8", "AD", "g", '"', "a", "ff", "C3"]
            ),
            max_size=20,
        ).map("".join),
        st.text(max_size=20),
    )
)
@settings(max_examples=2000, deadline=None)
def test_the_c_unescape_is_the_python_one(value: str) -> None:
    """``_read.nginx_unescape`` (where the core is compiled) undoes nginx's escapes as
    ``python_unescape`` does for ASCII text, invalid UTF-8 included, and leaves other
    text to it; ``unescape`` agrees either way."""
    assert unescape(value) == python_unescape(value)
    if UNESCAPE_ASCII is not None:
        expected = python_unescape(value) if value.isascii() else None
        assert UNESCAPE_ASCII(value) == expected
    else:
        assert not compiled_core_in_use()

"""Every regular expression of the parsers runs in linear time on hostile lines.

Each pattern is applied the way its parser applies it (match, fullmatch, search,
finditer, sub, split) to crafted lines: a prefix that walks the pattern into its
deepest part (an nginx head, an Envoy head, an upstreaminfo tail, an open quote),
then one short unit repeated up to the size (quotes, backslashes, escapes,
brackets, digits, separators, key=value), with and without a character at the
end that makes the match fail late. A backtracking blow-up is superlinear, so
the budget is a RATIO, not an absolute time: the time per MB of a pattern on a
crafted line against the whole parser on a plain valid line of the same size
(timings on a shared box vary; their ratio does not, by orders of magnitude).

All combinations are screened at 4 KiB (a quadratic pattern is already
~1000x over budget there, and finishes); the slowest per pattern are then
checked at 64 KiB and at the message size limit (1 MiB), where the whole
parser (``parse_message``) must stay within the budget too.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from pipeline.core.extract import client_ip, gray, path_group, trace, url
from pipeline.core.formats import detect, envoy, envoy_text, nginx_json, nginx_text, values
from pipeline.core.formats.detect import parse_message
from pipeline.core.formats.values import MAX_TAIL_FIELDS
from pipeline.core.model import RejectedInput

MODULES: tuple[ModuleType, ...] = (
    values,
    envoy,
    envoy_text,
    nginx_json,
    nginx_text,
    detect,
    url,
    gray,
    path_group,
    client_ip,
    trace,
)
# (module, name) -> how the parser applies the pattern.
USES: dict[tuple[str, str], str] = {
    ("nginx_text", "COMBINED"): "match",
    ("nginx_text", "COMBINED_PLAIN"): "match",
    ("nginx_text", "HEADED"): "match",
    ("nginx_text", "HEADED_PLAIN"): "match",
    ("nginx_text", "_REST_TOKEN"): "finditer",
    ("nginx_text", "_STRUCTURED"): "fullmatch",
    ("nginx_text", "_STRUCTURED_PLAIN"): "fullmatch",
    ("nginx_text", "_UPSTREAMINFO"): "fullmatch",
    ("nginx_text", "_VHOST"): "fullmatch",
    ("nginx_text", "_ESCAPE"): "sub",
    ("envoy_text", "_HEAD"): "match",
    ("envoy_text", "_HEADERS"): "match",
    ("envoy_text", "_TAIL_TOKEN"): "finditer",
    ("envoy_text", "_TRACEPARENT"): "fullmatch",
    ("envoy_text", "_B3_TRACE_ID"): "fullmatch",
    ("values", "_UPSTREAM_SEPARATORS"): "split",
    ("values", "_ASCII_DIGITS"): "match",
    ("trace", "_TRACEPARENT"): "fullmatch",
}
# The gray rules' default patterns (configurable; applied to header/arg values).
RULE_USES = {
    "id_header_pattern": "fullmatch",
    "id_query_pattern": "fullmatch",
    "version_subset_pattern": "match",
}
#: Crafted line time per MB over plain-line parse time per MB, for one pattern
#: applied as its parser applies it. Linear patterns measured up to ~1200 here:
#: sub/split make a Python object (or call) per token, on a line of 2-byte tokens
#: that is ~0.5 µs per 2 bytes against the plain line's ~1 ns per byte; and a
#: scan over a line that no longer fits the CPU cache. A quadratic pattern
#: measures ~10^4-10^5 at 4 KiB already.
PATTERN_RATIO_BUDGET = 3000.0
#: The same for the whole parser (``parse_message``), which bounds the fields
#: it reads (README, "Limits"): what it does per MB stays near the plain line's.
PARSER_RATIO_BUDGET = 200.0
KIB = 1024
SCREEN_SIZE = 4 * KIB
LIMIT = 1_048_576

PREFIXES = (
    "",
    # A valid line with an escaped (non-ASCII) user agent that fills the size.
    '10.0.0.9 - - [20/Nov/2026:12:00:03 +0000] "GET / HTTP/1.1" 200 5 "-" "\\xE4\\xB8\\xAD',
    '10.0.0.9 - - [20/Nov/2026:12:00:03 +0000] "GET / HTTP/1.1" 200 5 ',
    '10.0.0.9 - - [20/Nov/2026:12:00:03 +0000] "GET / HTTP/1.1" 200 5 "-" "ua"',
    'a.example 10.0.0.9, 10.0.0.8 - - [20/Nov/2026:12:00:03 +0000] "',
    '[2026-11-20T12:00:00.000Z] "GET / HTTP/1.1" 200 - 0 1 2 3 "-" "',
    " 462 0.050 [u] [] ",
    "00-" + "a" * 32 + "-",
)
UNITS = (
    " ", "a", "a ", '"', '" ', '"a" ', '" "', "\\", '\\"', "\\x", "\\x4", "\\x41", "[", "[a] ",
    "] ", "- ", "1", "1 ", "1.0 ", "1, ", ", ", " : ", ":", "=", "a=", 'a="', "a=b ", "0-",
    "f", "%", "\t", "é",
)  # fmt: skip
ENDINGS = ("", "\x01")


def plain_line(size: int) -> str:
    """A valid combined line of ``size`` characters (a long user agent)."""
    head = '10.0.0.9 - - [20/Nov/2026:12:00:03 +0000] "GET /godoc/pkg/fmt HTTP/1.1" 200 5 "-" "'
    return head + "M" * (size - len(head) - 1) + '"'


def crafted(prefix: str, unit: str, ending: str, size: int) -> str:
    body = size - len(prefix) - len(ending)
    return prefix + (unit * (body // len(unit) + 1))[:body] + ending


def _apply(pattern: re.Pattern[Any], use: str) -> Callable[[str], Any]:
    def run(line: str) -> Any:
        subject: Any = line
        if isinstance(pattern.pattern, bytes):
            subject = line.encode("utf-8", "surrogatepass")
        if use == "finditer":  # the parsers read at most MAX_TAIL_FIELDS tokens
            return list(itertools.islice(pattern.finditer(subject), MAX_TAIL_FIELDS + 1))
        if use == "sub":
            return pattern.sub(lambda m: m.group(0)[:1], subject)
        return getattr(pattern, use)(subject)

    return run


def _seconds(run: Callable[[str], Any], line: str, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run(line)
        best = min(best, time.perf_counter() - start)
    return best


def _parse(line: str) -> None:
    with contextlib.suppress(RejectedInput):
        parse_message(line.encode("utf-8", "surrogatepass"), LIMIT)


_PLAIN_SECONDS: dict[int, float] = {}


def plain_seconds(size: int) -> float:
    if size not in _PLAIN_SECONDS:
        _PLAIN_SECONDS[size] = _seconds(_parse, plain_line(size), repeat=5)
    return _PLAIN_SECONDS[size]


def patterns() -> dict[str, tuple[re.Pattern[Any], str]]:
    out: dict[str, tuple[re.Pattern[Any], str]] = {}
    for module in MODULES:
        short = module.__name__.rsplit(".", 1)[1]
        for name, value in vars(module).items():
            if isinstance(value, re.Pattern):
                out[f"{short}.{name}"] = (value, USES.get((short, name), "?"))
    rules = gray.GrayRules()
    for name, use in RULE_USES.items():
        out[f"GrayRules.{name}"] = (getattr(rules, name), use)
    return out


def test_every_parser_pattern_is_listed() -> None:
    """A new pattern must say how it is applied, so this test checks it."""
    unlisted = [name for name, (_, use) in patterns().items() if use == "?"]
    assert unlisted == []
    listed = {f"{module}.{name}" for module, name in USES}
    assert listed <= set(patterns()), "USES names a pattern that is gone"


@pytest.mark.parametrize("name", sorted(patterns()))
def test_pattern_is_linear_on_crafted_lines(name: str) -> None:
    pattern, use = patterns()[name]
    run = _apply(pattern, use)
    screened = []
    base = plain_seconds(SCREEN_SIZE)
    for prefix in PREFIXES:
        for unit in UNITS:
            for ending in ENDINGS:
                line = crafted(prefix, unit, ending, SCREEN_SIZE)
                ratio = _seconds(run, line) / base
                assert ratio < PATTERN_RATIO_BUDGET, (name, prefix, unit, ending, ratio)
                screened.append((ratio, prefix, unit, ending))
    # The slowest ones again, up to the message size limit: linear means the
    # ratio stays put as the line grows; superlinear means it grows with it.
    screened.sort(reverse=True)
    for _, prefix, unit, ending in screened[:3]:
        for size in (64 * KIB, LIMIT):
            line = crafted(prefix, unit, ending, size)
            ratio = _seconds(run, line, repeat=2) / plain_seconds(size)
            assert ratio < PATTERN_RATIO_BUDGET, (name, size, prefix, unit, ending, ratio)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_the_whole_parser_is_linear_at_the_size_limit(prefix: str) -> None:
    base = plain_seconds(LIMIT)
    worst = 0.0
    for unit in UNITS:
        for ending in ENDINGS:
            ratio = _seconds(_parse, crafted(prefix, unit, ending, LIMIT), repeat=1) / base
            worst = max(worst, ratio)
            if ratio >= PARSER_RATIO_BUDGET:  # measure again before failing: a busy box
                ratio = _seconds(_parse, crafted(prefix, unit, ending, LIMIT), repeat=3) / base
            assert ratio < PARSER_RATIO_BUDGET, (prefix, unit, ending, ratio)

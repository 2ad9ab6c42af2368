"""Trace context: W3C traceparent, B3 (multi and single header), Envoy %TRACE_ID%."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.extract import trace
from pipeline.core.extract.trace import span_id_of, trace_context, trace_id_of
from pipeline.core.model import AccessRecord
from tests.unit.conftest import compiled_core_in_use

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def context(headers: dict[str, str], trace_id: str | None = None) -> tuple[str | None, str | None]:
    return trace_context(AccessRecord(dataset="envoy.access", headers=headers, trace_id=trace_id))


@pytest.mark.parametrize(
    ("traceparent", "expected"),
    [
        (f"00-{TRACE}-{SPAN}-01", (TRACE, SPAN)),
        (f"00-{TRACE}-{SPAN}-00", (TRACE, SPAN)),  # not sampled: still the trace
        (f"00-{TRACE.upper()}-{SPAN.upper()}-01", (TRACE, SPAN)),  # lower-cased
        (f" 00-{TRACE}-{SPAN}-01 ", (TRACE, SPAN)),
        (f"01-{TRACE}-{SPAN}-01-future", (TRACE, SPAN)),  # later versions may add parts
        (f"00-{TRACE}-{SPAN}-01-extra", None),  # version 00 has exactly four
        (f"ff-{TRACE}-{SPAN}-01", None),  # version ff is invalid
        (f"zz-{TRACE}-{SPAN}-01", None),
        (f"0-{TRACE}-{SPAN}-01", None),
        (f"00-{'0' * 32}-{SPAN}-01", None),  # all-zero trace id
        (f"00-{TRACE}-{'0' * 16}-01", None),  # all-zero parent id
        (f"00-{TRACE[:-1]}-{SPAN}-01", None),
        (f"00-{TRACE}g-{SPAN}-01", None),
        (f"00-{TRACE}-{SPAN}-1", None),
        (f"00-{TRACE}-{SPAN}-zz", None),
        (f"00-{TRACE}-{SPAN}", None),
        ("garbage", None),
        ("", None),
    ],
)
def test_traceparent(traceparent: str, expected: tuple[str, str] | None) -> None:
    assert context({"traceparent": traceparent}) == (expected or (None, None))


def test_invalid_traceparent_falls_through_to_b3() -> None:
    headers = {"traceparent": f"ff-{TRACE}-{SPAN}-01", "x-b3-traceid": TRACE}
    assert context(headers) == (TRACE, None)


def test_b3_multi_header() -> None:
    assert context({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN}) == (TRACE, SPAN)
    assert context({"x-b3-traceid": TRACE, "x-b3-spanid": "bad"}) == (TRACE, None)


def test_b3_64_bit_ids_are_left_padded() -> None:
    assert context({"x-b3-traceid": "a3ce929d0e0e4736"}) == ("0" * 16 + "a3ce929d0e0e4736", None)


def test_b3_single_header() -> None:
    assert context({"b3": f"{TRACE}-{SPAN}-1-{SPAN}"}) == (TRACE, SPAN)
    assert context({"b3": f"a3ce929d0e0e4736-{SPAN}"}) == ("0" * 16 + "a3ce929d0e0e4736", SPAN)
    assert context({"b3": "0"}) == (None, None)  # "deny": no ids
    assert context({"b3": f"nothex-{SPAN}"}) == (None, None)


def test_envoy_trace_id() -> None:
    assert context({}, trace_id=TRACE) == (TRACE, None)
    assert context({}, trace_id=TRACE.upper()) == (TRACE, None)
    assert context({}, trace_id="a3ce929d0e0e4736") == ("0" * 16 + "a3ce929d0e0e4736", None)
    assert context({}, trace_id="not-a-trace") == (None, None)


def test_precedence_traceparent_b3_single_envoy() -> None:
    other = "1" * 32
    assert context({"traceparent": f"00-{TRACE}-{SPAN}-01", "x-b3-traceid": other}) == (TRACE, SPAN)
    assert context({"x-b3-traceid": TRACE, "b3": f"{other}-{SPAN}"}, other) == (TRACE, None)
    assert context({"b3": f"{TRACE}-{SPAN}"}, other) == (TRACE, SPAN)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (TRACE, TRACE),
        ("a3ce929d0e0e4736", "0" * 16 + "a3ce929d0e0e4736"),
        ("0" * 32, None),
        ("0" * 16, None),
        ("abc", None),
        ("ａ" * 32, None),  # noqa: RUF001 - fullwidth letters are no hex
        ("", None),
        (None, None),
    ],
)
def test_trace_id_of(value: str | None, expected: str | None) -> None:
    assert trace_id_of(value) == expected


def test_span_id_of() -> None:
    assert span_id_of(SPAN.upper()) == SPAN
    assert span_id_of("0" * 16) is None
    assert span_id_of(SPAN + "0") is None
    assert span_id_of(None) is None


# --- C reads the usual ids (pipeline/core/_read.c); the Python code is the definition ---

_HEXISH = st.text(st.sampled_from("0123456789abcdefABCDEFgx- \t\n\x1f"), max_size=60)
_PARENTS = st.one_of(
    st.builds(
        "{}-{}-{}-{}{}".format,
        st.sampled_from(["00", "01", "ff", "FF", "0a", "g0"]),
        st.text(st.sampled_from("0123456789abcdefABCDEF"), min_size=31, max_size=33),
        st.text(st.sampled_from("0123456789abcdefABCDEF0"), min_size=15, max_size=17),
        st.sampled_from(["01", "00", "0F", "x1"]),
        st.sampled_from(["", "-", "-rest", "-\n", " ", "\t", "x", "-é"]),
    ),
    st.builds("{}-{}-{}-01".format, st.just("00"), st.just("0" * 32), st.just("1" * 16)),
    st.builds("{}-{}-{}-01".format, st.just("00"), st.just("a" * 32), st.just("0" * 16)),
    _HEXISH,
)


def _traceparent_definition(value: str) -> tuple[str, str] | None:
    match = trace._TRACEPARENT.fullmatch(value.strip().lower())
    if match is None:
        return None
    version, trace_id, span_id, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return trace_id, span_id


def _id_definition(value: str | None, width: int) -> str | None:
    if not value:
        return None
    value = value.strip().lower()
    if width == 32 and len(value) == 16:
        value = "0" * 16 + value
    ok = len(value) == width and not value.strip("0123456789abcdef") and value != "0" * width
    return value if ok else None


@settings(max_examples=2000, deadline=None)
@given(st.one_of(_PARENTS, st.text(max_size=70)))
def test_traceparents_are_read_as_the_regex_reads_them(value: str) -> None:
    assert trace._traceparent(value) == _traceparent_definition(value)


_IDS = st.one_of(
    st.text(st.sampled_from("0123456789abcdefABCDEF"), min_size=15, max_size=33),
    st.builds(
        "{}{}{}".format,
        st.sampled_from(["", " ", "\t"]),
        st.text("0aF", min_size=16, max_size=16),
        st.sampled_from(["", " ", "\n"]),
    ),
    st.sampled_from(["0" * 16, "0" * 32, "é" * 16]),
    _HEXISH,
    st.none(),
)


@settings(max_examples=2000, deadline=None)
@given(_IDS)
def test_hex_ids_are_read_as_defined(value: str | None) -> None:
    assert trace_id_of(value) == _id_definition(value, 32)
    assert span_id_of(value) == _id_definition(value, 16)


def test_the_compiled_core_reads_trace_ids_in_c() -> None:
    if not compiled_core_in_use():
        assert trace._NATIVE_TRACEPARENT is None and trace._NATIVE_HEX_ID is None
        return
    from pipeline.core import _read

    assert trace._NATIVE_TRACEPARENT is _read.traceparent
    assert trace._NATIVE_HEX_ID is _read.hex_id
    parent = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"
    assert _read.traceparent(parent) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    assert _read.traceparent(" " + parent) is None  # stripped by the definition
    assert _read.hex_id("00F067AA0BA902B7", 32) == "000000000000000000f067aa0ba902b7"
    assert _read.hex_id("00F067AA0BA902B7", 16) == "00f067aa0ba902b7"
    with pytest.raises(ValueError):
        _read.hex_id("ab", 8)

"""Trace context: W3C traceparent, B3 (multi and single header), Envoy %TRACE_ID%."""

from __future__ import annotations

import pytest

from pipeline.core.extract.trace import span_id_of, trace_context, trace_id_of
from pipeline.core.model import AccessRecord

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

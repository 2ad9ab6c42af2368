"""SpanData -> OTLP bytes -> parsed back: nothing lost.

``encode_request`` writes the wire format itself; ``encode_spans`` builds the
same request from protobuf objects and is the reference it is held to: the
same bytes, for any SpanData (property test), including text protobuf cannot
encode as given (lone surrogates) and the int64/uint64 limits.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

import schemas
from pipeline.core.model import AccessRecord, Enrichment, GeoInfo
from pipeline.core.otlp_wire import SCOPE_NAME
from tests.oracles import otlp_reference as reference_module
from tests.oracles.otlp_reference import (
    SpanData,
    build_span,
    encode_request,
    encode_spans,
    request_to_dicts,
    to_bytes,
)


def span(n: int, service: str = "godoc", **overrides: Any) -> SpanData:
    values: dict[str, Any] = {
        "trace_id": bytes([n + 1]) * 16,
        "span_id": bytes([n + 1]) * 8,
        "parent_span_id": None,
        "name": f"GET /route/{n}",
        "start_ns": 1_700_000_000_000_000_000 + n,
        "end_ns": 1_700_000_000_010_000_000 + n,
        "error": False,
        "status_message": "",
        "service_name": service,
        "attributes": {
            "gray.id": f"exp{n}",
            "http.response.status_code": 200,
            "geo.location.lat": 52.52,
            "flag": True,
        },
    }
    values.update(overrides)
    return SpanData(**values)


def parse(data: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.ParseFromString(data)
    return request


def test_round_trip() -> None:
    spans = [
        span(0),
        span(1, parent_span_id=b"\xaa" * 8, error=True, status_message="HTTP 503"),
        span(2, service="checkout"),
        span(3),
    ]
    decoded = request_to_dicts(parse(to_bytes(spans)))
    by_id = {d["span_id"]: d for d in decoded}
    assert len(decoded) == len(spans)
    for original in spans:
        got = by_id[original.span_id.hex()]
        assert got["trace_id"] == original.trace_id.hex()
        assert got["parent_span_id"] == (
            original.parent_span_id.hex() if original.parent_span_id else None
        )
        assert got["name"] == original.name
        assert got["kind"] == "SPAN_KIND_SERVER"
        assert got["start_ns"] == original.start_ns
        assert got["end_ns"] == original.end_ns
        status = "STATUS_CODE_ERROR" if original.error else "STATUS_CODE_UNSET"
        assert got["status_code"] == status
        assert got["status_message"] == original.status_message
        assert got["attributes"] == original.attributes
        assert got["resource"] == {"service.name": original.service_name}
        assert got["scope"] == SCOPE_NAME


def test_attribute_kinds_survive() -> None:
    decoded = request_to_dicts(parse(to_bytes([span(0)])))[0]["attributes"]
    assert type(decoded["gray.id"]) is str
    assert type(decoded["http.response.status_code"]) is int
    assert type(decoded["geo.location.lat"]) is float
    assert type(decoded["flag"]) is bool


def test_grouped_by_service_in_first_seen_order() -> None:
    request = encode_spans([span(0, "a"), span(1, "b"), span(2, "a"), span(3, "c"), span(4, "b")])
    services = [rs.resource.attributes[0].value.string_value for rs in request.resource_spans]
    assert services == ["a", "b", "c"]
    names = {
        rs.resource.attributes[0].value.string_value: [s.name for s in rs.scope_spans[0].spans]
        for rs in request.resource_spans
    }
    assert names == {
        "a": ["GET /route/0", "GET /route/2"],
        "b": ["GET /route/1", "GET /route/4"],
        "c": ["GET /route/3"],
    }
    for rs in request.resource_spans:
        assert len(rs.scope_spans) == 1
        assert rs.scope_spans[0].scope.name == SCOPE_NAME


def test_flags_mark_a_remote_parent() -> None:
    request = encode_spans([span(0), span(1, parent_span_id=b"\x01" * 8)])
    root, child = request.resource_spans[0].scope_spans[0].spans
    assert root.kind == Span.SpanKind.SPAN_KIND_SERVER
    assert root.flags & 0x100 and not root.flags & 0x200
    assert child.flags & 0x100 and child.flags & 0x200
    assert root.flags & 0x01 and child.flags & 0x01  # sampled


def test_empty_batch() -> None:
    assert to_bytes([]) == b""
    assert request_to_dicts(encode_spans([])) == []


def test_invalid_utf8_text_does_not_fail_the_batch() -> None:
    bad = span(0, name="GET /\ud800", attributes={"user_agent.original": "x\udcff"})
    decoded = request_to_dicts(parse(to_bytes([bad, span(1)])))
    assert len(decoded) == 2
    assert decoded[0]["name"].startswith("GET /")
    assert decoded[0]["attributes"]["user_agent.original"].startswith("x")


# --- the direct encoder against the protobuf-object reference ------------------------


def reference(spans: list[SpanData]) -> bytes:
    return encode_spans(spans).SerializeToString()


def assert_same_as_reference(spans: list[SpanData]) -> None:
    data = encode_request(spans)
    expected = encode_spans(spans)
    assert ExportTraceServiceRequest.FromString(data) == expected
    # Field order and left-out defaults as protobuf writes them: the very same bytes.
    assert data == expected.SerializeToString()


def test_to_bytes_is_the_direct_encoder() -> None:
    spans = [span(0), span(1, parent_span_id=b"\xaa" * 8, error=True, status_message="HTTP 503")]
    assert to_bytes(spans) == encode_request(spans)
    assert_same_as_reference(spans)


def test_grouped_by_service_like_the_reference() -> None:
    spans = [span(0, "a"), span(1, "b"), span(2, "a"), span(3, "c"), span(4, "b")]
    assert_same_as_reference(spans)
    request = parse(encode_request(spans))
    assert [rs.resource.attributes[0].value.string_value for rs in request.resource_spans] == [
        "a",
        "b",
        "c",
    ]


def test_built_spans_encode_like_the_reference() -> None:
    spans = []
    for i in range(40):
        record = AccessRecord(
            dataset="envoy.access",
            timestamp_ns=1_700_000_000_000_000_000 + i,
            method="GET",
            uri=f"/p/{i}",
            status=(200, 503, 404)[i % 3],
            duration_ns=i * 1000,
            user_agent="curl/8" if i % 4 else None,
            request_id=f"req-{i}",
        )
        enr = Enrichment(
            url_path=f"/p/{i}",
            gray_id="exp1" if i % 2 else None,
            route="/p/{id}",
            client_ip=f"203.0.113.{i}",
            service_name=("a", "b", None)[i % 3],
            geo=GeoInfo(country_iso_code="DE", lat=52.5, lon=13 if i % 5 else -0.0),
            trace_id=f"{i + 1:032x}" if i % 2 else None,
            span_id=f"{i + 1:016x}",
        )
        built = build_span(record, enr)
        assert built is not None
        spans.append(built)
    assert_same_as_reference(spans)
    # Again: now most attributes come from the memo.
    assert_same_as_reference(spans)


def test_the_memo_gives_each_type_its_own_encoding() -> None:
    # Equal values of different types (True == 1 == 1.0, 0.0 == -0.0) must not share
    # an entry, whatever came first.
    values: list[Any] = [1, True, 1.0, 0, False, 0.0, -0.0, 200, 200.0, 0.5, "1", 2**40]
    for order in (values, values[::-1]):
        spans = [
            span(i, attributes={"k": v, "http.response.status_code": v, "geo.location.lat": v})
            for i, v in enumerate(order)
        ]
        assert_same_as_reference(spans)


def test_text_protobuf_cannot_take_as_given_is_replaced() -> None:
    bad = span(
        0,
        "svc\udc80",
        name="GET /\ud800x",
        status_message="HTTP 5\udfff",
        error=True,
        attributes={"user_agent.original": "x\udcff", "url.path": "\ud83d", "other": "\udc00"},
    )
    assert_same_as_reference([bad, span(1)])
    decoded = request_to_dicts(parse(encode_request([bad])))[0]
    assert decoded["name"] == "GET /?x"
    assert decoded["attributes"]["user_agent.original"] == "x?"
    assert decoded["resource"] == {"service.name": "svc?"}


def test_int64_limits() -> None:
    edges = {"min": -(2**63), "max": 2**63 - 1, "minus_one": -1, "status": -200}
    assert_same_as_reference([span(0, attributes=edges)])
    decoded = request_to_dicts(parse(encode_request([span(0, attributes=edges)])))[0]
    assert decoded["attributes"] == edges
    for too_big in (2**63, -(2**63) - 1, 10**30):
        with pytest.raises(ValueError):
            encode_spans([span(0, attributes={"n": too_big})])
        with pytest.raises(ValueError):
            encode_request([span(0, attributes={"n": too_big})])


def test_timestamps_outside_uint64_are_refused_like_the_reference() -> None:
    for start, end in ((-1, 5), (5, 2**64), (2**64, 2**64 + 1)):
        odd = span(0, start_ns=start, end_ns=end)
        with pytest.raises(ValueError):
            encode_spans([odd])
        with pytest.raises(ValueError):
            encode_request([odd])
    assert_same_as_reference([span(0, start_ns=2**64 - 1, end_ns=2**64 - 1)])


def test_zero_and_odd_fields_are_left_out_like_the_reference() -> None:
    spans = [
        span(0, start_ns=0, end_ns=0, name=""),
        span(1, start_ns=0),
        span(2, end_ns=0),
        span(3, trace_id=b"", span_id=b"", parent_span_id=b""),
        span(4, trace_id=b"\x01" * 3, span_id=b"\x02" * 200, parent_span_id=b"\x03" * 9),
        span(5, error=True, status_message=""),
        span(6, attributes={}),
        span(7, attributes={"": "empty key", "empty value": "", "f": False, "z": 0, "d": 0.0}),
        span(8, name="n" * 300, attributes={"long": "v" * 20_000}),
        span(9, service_name=""),
    ]
    assert_same_as_reference(spans)


def test_unhashable_and_other_values_are_written_as_text() -> None:
    odd = span(0, attributes={"list": [1, 2], "none": None, "bytes": b"\x00", "ok": "x"})
    assert_same_as_reference([odd])
    assert request_to_dicts(parse(encode_request([odd])))[0]["attributes"] == {
        "list": "[1, 2]",
        "none": "None",
        "bytes": "b'\\x00'",
        "ok": "x",
    }


def test_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reference_module, "_ATTRIBUTES", reference_module._AttributeCache(8))
    spans = [span(i, attributes={"client.address": f"192.0.2.{i}", "n": i}) for i in range(50)]
    assert_same_as_reference(spans)
    assert len(reference_module._ATTRIBUTES) <= 8


def test_a_large_batch() -> None:
    spans = [span(i % 200, service=f"svc{i % 3}") for i in range(2000)]
    assert_same_as_reference(spans)


# Text with everything protobuf meets: non-ASCII, astral, NUL, lone surrogates.
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
key_text = st.text(st.characters(codec="utf-8"), max_size=20)  # protobuf refuses bad keys
schema_names = st.sampled_from(sorted(schemas.span_attributes()))
int64 = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([-(2**63), 2**63 - 1, -1, 0, 1, 127, 128, 200, 503, -503]),
)
attribute_value = st.one_of(
    any_text,
    int64,
    st.floats(allow_nan=False),
    st.booleans(),
    st.sampled_from(["GET", "canary", "stable", "US", "/godoc/pkg/{name}"]),  # memo hits
)
uint64 = st.one_of(
    st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**64 - 1, 1_700_000_000_000_000_000])
)


@st.composite
def span_data(draw: st.DrawFn) -> SpanData:
    ids = st.one_of(st.binary(min_size=16, max_size=16), st.binary(max_size=20))
    return SpanData(
        trace_id=draw(ids),
        span_id=draw(st.one_of(st.binary(min_size=8, max_size=8), st.binary(max_size=10))),
        parent_span_id=draw(
            st.one_of(st.none(), st.binary(min_size=8, max_size=8), st.binary(max_size=10))
        ),
        name=draw(any_text),
        start_ns=draw(uint64),
        end_ns=draw(uint64),
        error=draw(st.booleans()),
        status_message=draw(any_text),
        service_name=draw(st.one_of(st.sampled_from(["godoc", "go.dev", ""]), any_text)),
        attributes=draw(
            st.dictionaries(st.one_of(schema_names, key_text), attribute_value, max_size=16)
        ),
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(span_data(), max_size=8))
def test_any_spans_encode_like_the_reference(spans: list[SpanData]) -> None:
    assert_same_as_reference(spans)


@settings(max_examples=100, deadline=None)
@given(st.lists(span_data(), min_size=1, max_size=4), st.floats(allow_infinity=False))
def test_nan_and_infinities_are_doubles_too(spans: list[SpanData], value: float) -> None:
    # NaN != NaN: compared as bytes only (the reference writes the same bit pattern).
    for extra in (math.nan, math.inf, -math.inf, value):
        spans[0].attributes["geo.location.lat"] = extra
        assert encode_request(spans) == reference(spans)


def test_the_cores_enum_numbers_are_protobufs() -> None:
    # The core writes these as numbers so that it imports no protobuf module.
    from opentelemetry.proto.trace.v1.trace_pb2 import SpanFlags, Status

    from pipeline.core import otlp_wire as encode

    assert encode.SPAN_KIND_SERVER == Span.SpanKind.SPAN_KIND_SERVER
    assert encode.STATUS_CODE_ERROR == Status.StatusCode.STATUS_CODE_ERROR
    assert encode.FLAG_CONTEXT_HAS_IS_REMOTE == SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
    assert encode.FLAG_CONTEXT_IS_REMOTE == SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
    assert encode.FLAG_SAMPLED == SpanFlags.SPAN_FLAGS_TRACE_FLAGS_MASK & 0x01

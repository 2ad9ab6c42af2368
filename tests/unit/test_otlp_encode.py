"""SpanData -> ExportTraceServiceRequest -> bytes -> parsed back: nothing lost."""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from pipeline.model import SpanData
from pipeline.sinks.otlp.encode import SCOPE_NAME, encode_spans, request_to_dicts, to_bytes


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

"""Jaeger's v1 JSON (``GET /api/traces``) read back into the span dicts the demo shows."""

from __future__ import annotations

from typing import Any

from pipeline.dev.stack.jaeger import spans_from_v1

# One trace as Jaeger 1.75 answers a tag search (abridged to the fields it always writes).
V1_TRACE: dict[str, Any] = {
    "traceID": "5b8aa5a2d2c872e8321cf37308d69df2",
    "spans": [
        {
            "traceID": "5b8aa5a2d2c872e8321cf37308d69df2",
            "spanID": "051581bf3cb55c13",
            "operationName": "GET /play/share/{id}",
            "references": [
                {
                    "refType": "CHILD_OF",
                    "traceID": "5b8aa5a2d2c872e8321cf37308d69df2",
                    "spanID": "00f067aa0ba902b7",
                }
            ],
            "startTime": 1_764_970_000_123_456,  # µs
            "duration": 512_000,  # µs
            "tags": [
                {"key": "otel.scope.name", "type": "string", "value": "grayscope"},
                {"key": "span.kind", "type": "string", "value": "server"},
                {"key": "gray.id", "type": "string", "value": "exp00001"},
                {"key": "http.response.status_code", "type": "int64", "value": 503},
                {"key": "geo.location.lat", "type": "float64", "value": 52.52},
                {"key": "gray.canary", "type": "bool", "value": True},
                {"key": "error", "type": "bool", "value": True},
                {"key": "otel.status_code", "type": "string", "value": "ERROR"},
                {"key": "otel.status_description", "type": "string", "value": "HTTP 503"},
            ],
            "processID": "p1",
            "warnings": None,
        },
        {
            # A 64-bit trace id: v1 writes it without the high half's zeros.
            "traceID": "8d69df2",
            "spanID": "51581bf3cb55c13",
            "operationName": "GET /",
            "references": [],
            "startTime": 1_764_970_001_000_000,
            "duration": 3,
            "tags": [{"key": "span.kind", "type": "string", "value": "client"}],
            "processID": "p1",
        },
    ],
    "processes": {
        "p1": {
            "serviceName": "godoc",
            "tags": [{"key": "telemetry.sdk.name", "type": "string", "value": "grayscope"}],
        }
    },
}


def test_v1_spans_become_the_received_span_shape() -> None:
    error, plain = spans_from_v1([V1_TRACE])
    assert error == {
        "trace_id": "5b8aa5a2d2c872e8321cf37308d69df2",
        "span_id": "051581bf3cb55c13",
        "parent_span_id": "00f067aa0ba902b7",
        "name": "GET /play/share/{id}",
        "kind": "SPAN_KIND_SERVER",
        "start_ns": 1_764_970_000_123_456_000,
        "end_ns": 1_764_970_000_635_456_000,
        "status_code": "STATUS_CODE_ERROR",
        "status_message": "HTTP 503",
        "attributes": {
            "gray.id": "exp00001",
            "http.response.status_code": 503,
            "geo.location.lat": 52.52,
            "gray.canary": True,
        },
        "resource": {"telemetry.sdk.name": "grayscope", "service.name": "godoc"},
        "scope": "grayscope",
    }
    assert plain["trace_id"] == "0" * 25 + "8d69df2"
    assert plain["span_id"] == "051581bf3cb55c13"
    assert plain["parent_span_id"] is None
    assert plain["kind"] == "SPAN_KIND_CLIENT"
    assert plain["status_code"] == "STATUS_CODE_UNSET"
    assert plain["end_ns"] - plain["start_ns"] == 3_000
    assert plain["attributes"] == {}


def test_no_traces_no_spans() -> None:
    assert spans_from_v1([]) == []
    assert spans_from_v1([{"traceID": "1", "spans": [], "processes": {}}]) == []

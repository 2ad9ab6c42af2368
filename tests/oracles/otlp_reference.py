"""Reference span builders and encoders: the oracles the worker's encoder is held to.

The worker writes each span straight in the OTLP wire format
(``pipeline.core.otlp.encode_request_span``). These are the readable
references, kept in the tests only:

- ``build_span``: a request's span as ``SpanData`` (plain attributes dict);
- ``encode_span`` / ``encode_request``: SpanData -> wire bytes through the
  core's wire helpers, attribute by attribute;
- ``encode_spans``: the same request built from protobuf objects (what
  protobuf itself writes), and ``request_to_dicts`` its plain-dict view.

``encode_request_span(r, e, k) == encode_span(build_span(r, e, fallback_key=k))``
and ``encode_request(spans) == encode_spans(spans).SerializeToString()`` are
property-tested (tests/unit/test_otlp_direct.py, test_otlp_encode.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span

import schemas
from pipeline.core.model import AccessRecord, Enrichment, GeoInfo
from pipeline.core.otlp_wire import (
    _FLAGS_REMOTE_PARENT,
    _FLAGS_ROOT,
    SCOPE_NAME,
    SCOPE_VERSION,
    SERVICE_NAME_KEY,
    SPAN_KIND_SERVER,
    STATUS_CODE_ERROR,
    EncodedSpan,
    _key_value,
    _remember,
    attribute_field,
    frame_request,
    name_field,
    span_head,
    span_tail,
)
from pipeline.core.span import (
    KIND_TYPES,
    UNKNOWN_SERVICE,
    span_coordinates,
    span_id,
    span_name,
    span_skeleton,
    span_status,
)
from pipeline.dev.otlp_decode import request_to_dicts

__all__ = [
    "SpanData",
    "build_span",
    "check_attributes_match_schema",
    "encode_request",
    "encode_span",
    "encode_spans",
    "numbered_spans",
    "request_to_dicts",
    "to_bytes",
]

AttrValue = str | int | float | bool


@dataclass(slots=True)
class SpanData:
    """One OTLP SERVER span as plain data; the reference encoders' input."""

    trace_id: bytes  # 16 bytes
    span_id: bytes  # 8 bytes
    parent_span_id: bytes | None
    name: str
    start_ns: int
    end_ns: int
    error: bool
    status_message: str
    service_name: str
    attributes: dict[str, str | int | float | bool]


def numbered_spans(n: int, gray_id: str = "exp1") -> list[SpanData]:
    """``n`` small spans told apart by their ids (trace i, span i + 1 for i = 1..n), all
    with ``gray.id`` ``gray_id``: test traffic for exporters and receivers."""
    return [
        SpanData(
            trace_id=i.to_bytes(16, "big"),
            span_id=(i + 1).to_bytes(8, "big"),
            parent_span_id=None,
            name="GET /x",
            start_ns=1,
            end_ns=2,
            error=False,
            status_message="",
            service_name="svc",
            attributes={"gray.id": gray_id},
        )
        for i in range(1, n + 1)
    ]


def recent_spans(n: int, service: str, attributes: dict[str, Any]) -> list[SpanData]:
    """``n`` spans of ``service`` with random ids, a millisecond apart from two seconds
    ago, each with ``attributes``: test traffic a real Jaeger's search finds."""
    now = time.time_ns()
    return [
        SpanData(
            trace_id=uuid.uuid4().bytes,
            span_id=uuid.uuid4().bytes[:8],
            parent_span_id=None,
            name="GET /godoc/pkg",
            start_ns=now - 2_000_000_000 + i * 1_000_000,
            end_ns=now - 2_000_000_000 + i * 1_000_000 + 500_000,
            error=False,
            status_message="",
            service_name=service,
            attributes=dict(attributes),
        )
        for i in range(n)
    ]


_NO_GEO = GeoInfo()
_MAX_ATTRIBUTES = 16_384
_MAX_INTS = 1024


def build_span(
    record: AccessRecord, enr: Enrichment, *, fallback_key: str | None = None
) -> SpanData | None:
    """The SERVER span of one request, or None when it has no time or no identity."""
    skeleton = span_skeleton(record, enr, fallback_key)
    if skeleton is None:
        return None
    trace_id, parent, method, start, end = skeleton
    geo = enr.geo or _NO_GEO
    status = span_status(record.status)
    lat, lon = span_coordinates(geo)
    error = status is not None and 500 <= status <= 599
    values: dict[str, AttrValue | None] = {
        "gray.id": enr.gray_id,
        "gray.stage": enr.stage,
        "gray.version": enr.version,
        "gray.path_group": enr.path_group,
        "http.request.method": method,
        "url.path": enr.url_path,
        "http.route": enr.route,
        "http.response.status_code": status,
        "client.address": enr.client_ip,
        "user_agent.original": record.user_agent,
        "geo.country.iso_code": geo.country_iso_code,
        "geo.locality.name": geo.city_name,
        "geo.location.lat": lat,
        "geo.location.lon": lon,
    }
    # In the schema's order (checked at import, see below); unknown values are left out.
    attributes = {
        name: value for name, value in values.items() if value is not None and value != ""
    }
    return SpanData(
        trace_id=trace_id,
        span_id=span_id(record, trace_id, parent, fallback_key),
        parent_span_id=parent,
        name=span_name(method, enr.route or enr.path_group),
        start_ns=start,
        end_ns=end,
        error=error,
        status_message=f"HTTP {status}" if error else "",
        service_name=enr.service_name or UNKNOWN_SERVICE,
        attributes=attributes,
    )


class _AttributeCache(dict[tuple[str, object], bytes]):
    """(name, value) item -> encoded ``attributes`` field; a lookup encodes what is missing.

    Looked up with the very tuples ``dict.items()`` yields, so the hits of a whole
    attribute dict take one C-level ``map``. Only values that equal nothing of another
    type are kept: str, and floats with a fraction (True == 1 == 1.0 and 0.0 == -0.0
    would share an entry and get one encoding). Ints, the status code, are memoised
    apart, looked up only once the type is known.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.ints: dict[tuple[str, object], bytes] = {}

    def __missing__(self, item: tuple[str, object]) -> bytes:
        key, value = item
        cls = value.__class__
        if cls is int:
            encoded = self.ints.get(item)
            if encoded is None:
                encoded = _remember(self.ints, item, _key_value(key, value), _MAX_INTS)
            return encoded
        if cls is str:
            return _remember(self, item, attribute_field(key, value), self.limit)
        encoded = _key_value(key, value)
        if cls is float and not value.is_integer():  # type: ignore[attr-defined]
            _remember(self, item, encoded, self.limit)
        return encoded


_ATTRIBUTES = _AttributeCache(_MAX_ATTRIBUTES)


def _span(data: SpanData) -> bytes:
    """The encoded Span message (without its tag and length)."""
    parent = data.parent_span_id
    parts = span_head(
        data.trace_id, data.span_id, parent, name_field(data.name), data.start_ns, data.end_ns
    )
    fixed = len(parts)
    # Read as values of any type: the compiled core (pipeline.native) would
    # otherwise check each against AttrValue and raise for what str() can write.
    attributes: Mapping[str, object] = data.attributes
    try:
        parts.extend(map(_ATTRIBUTES.__getitem__, attributes.items()))
    except TypeError:  # an unhashable value: no memo for it (written as its str())
        del parts[fixed:]
        parts.extend(_key_value(key, value) for key, value in attributes.items())
    parts.append(span_tail(data.error, data.status_message, parent))
    return b"".join(parts)


def encode_span(data: SpanData) -> EncodedSpan:
    return data.service_name, _span(data)


def encode_request(spans: Sequence[SpanData]) -> bytes:
    """The serialized export request holding ``spans``, grouped by service."""
    return frame_request([encode_span(data) for data in spans])


def to_bytes(spans: Sequence[SpanData]) -> bytes:
    """The serialized export request (the OTLP/HTTP protobuf body); ``encode_request``."""
    return encode_request(spans)


# --- protobuf objects: the reference encoding, and the decoding side ------------


def encode_spans(spans: Sequence[SpanData]) -> ExportTraceServiceRequest:
    """One export request holding ``spans``, grouped by service, as protobuf objects.

    Fills the messages in place through ``add()`` (several times faster than
    building sub-messages and copying them in), but still several times slower
    than ``encode_request``, which the exporter uses.
    """
    request = ExportTraceServiceRequest()
    by_service: dict[str, ScopeSpans] = {}
    for data in spans:
        scope_spans = by_service.get(data.service_name)
        if scope_spans is None:
            scope_spans = _new_scope_spans(request, data.service_name)
            by_service[data.service_name] = scope_spans
        _fill_span(scope_spans.spans.add(), data)
    return request


def _new_scope_spans(request: ExportTraceServiceRequest, service_name: str) -> ScopeSpans:
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key=SERVICE_NAME_KEY).value.string_value = _valid_utf8(
        service_name
    )
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = SCOPE_NAME
    if SCOPE_VERSION:
        scope_spans.scope.version = SCOPE_VERSION
    return scope_spans


def _fill_span(span: Span, data: SpanData) -> None:
    span.trace_id = data.trace_id
    span.span_id = data.span_id
    if data.parent_span_id:
        span.parent_span_id = data.parent_span_id
        span.flags = _FLAGS_REMOTE_PARENT
    else:
        span.flags = _FLAGS_ROOT
    try:
        span.name = data.name
    except UnicodeEncodeError:
        span.name = _valid_utf8(data.name)
    span.kind = SPAN_KIND_SERVER
    span.start_time_unix_nano = data.start_ns
    span.end_time_unix_nano = data.end_ns
    if data.error:
        span.status.code = STATUS_CODE_ERROR
        span.status.message = _valid_utf8(data.status_message)
    attributes = span.attributes
    values: Mapping[str, object] = data.attributes  # any type: see _span
    for key, value in values.items():
        _set_value(attributes.add(key=key).value, value)


def _set_value(target: AnyValue, value: object) -> None:
    if isinstance(value, str):
        try:
            target.string_value = value
        except UnicodeEncodeError:
            # One lone surrogate must not cost the whole batch.
            target.string_value = _valid_utf8(value)
    elif isinstance(value, bool):  # before int: bool is an int subclass
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    else:
        target.string_value = str(value)


def _valid_utf8(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def check_attributes_match_schema() -> None:
    """Raises when build_span's attributes (names, order, kinds) drift from the schema."""
    # Every field is set, so every attribute the builder knows shows up, in its order.
    record = AccessRecord(
        dataset="envoy.access",
        timestamp_ns=1,
        method="GET",
        status=200,
        user_agent="ua",
        request_id="r",
    )
    enr = Enrichment(
        gray_id="g",
        stage="s",
        version="v",
        path_group="/p",
        route="/p/{x}",
        url_path="/p/1",
        client_ip="192.0.2.1",
        geo=GeoInfo(country_iso_code="DE", city_name="c", lat=1, lon=2),
    )
    span = build_span(record, enr)
    built = [(name, type(value)) for name, value in (span.attributes if span else {}).items()]
    listed = [(name, KIND_TYPES[kind]) for name, kind in schemas.span_attributes().items()]
    if built != listed:
        raise RuntimeError(f"span attributes differ from schema: built={built} listed={listed}")

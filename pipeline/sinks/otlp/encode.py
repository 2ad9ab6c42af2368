"""SpanData <-> OTLP protobuf (pure: no I/O).

``encode_spans`` groups spans by ``service.name`` into one ResourceSpans each
(first-seen order), with one ScopeSpans named "grayscope". It fills the
messages in place through ``add()``, which is several times faster than
building sub-messages and copying them in (this runs for every batch).
``request_to_dicts`` is the inverse view used by the embedded receiver and
the tests: plain dicts, ids as lower hex.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span, SpanFlags, Status

from pipeline.model import SpanData

SCOPE_NAME = "grayscope"
SERVICE_NAME_KEY = "service.name"

_SERVER = Span.SpanKind.SPAN_KIND_SERVER
_ERROR = Status.StatusCode.STATUS_CODE_ERROR
# W3C "sampled" (we export every span) + "we know whether the parent is remote";
# a parent always is remote here: it is the caller's span from the request headers.
_FLAGS_ROOT = 0x01 | SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_FLAGS_REMOTE_PARENT = _FLAGS_ROOT | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK


def _scope_version() -> str:
    try:
        return metadata.version("grayscope")
    except metadata.PackageNotFoundError:
        return ""


SCOPE_VERSION = _scope_version()


def encode_spans(spans: Sequence[SpanData]) -> ExportTraceServiceRequest:
    """One export request holding ``spans``, grouped by service."""
    request = ExportTraceServiceRequest()
    by_service: dict[str, ScopeSpans] = {}
    for data in spans:
        scope_spans = by_service.get(data.service_name)
        if scope_spans is None:
            scope_spans = _new_scope_spans(request, data.service_name)
            by_service[data.service_name] = scope_spans
        _fill_span(scope_spans.spans.add(), data)
    return request


def to_bytes(spans: Sequence[SpanData]) -> bytes:
    """The serialized export request (the OTLP/HTTP protobuf body)."""
    return encode_spans(spans).SerializeToString()


def _new_scope_spans(request: ExportTraceServiceRequest, service_name: str) -> ScopeSpans:
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key=SERVICE_NAME_KEY).value.string_value = (
        _valid_utf8(service_name)
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
    span.kind = _SERVER
    span.start_time_unix_nano = data.start_ns
    span.end_time_unix_nano = data.end_ns
    if data.error:
        span.status.code = _ERROR
        span.status.message = _valid_utf8(data.status_message)
    attributes = span.attributes
    for key, value in data.attributes.items():
        _set_value(attributes.add(key=key).value, value)


def _set_value(target: AnyValue, value: str | int | float | bool) -> None:
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


def any_value(value: AnyValue) -> Any:
    """The Python value of an AnyValue (arrays and maps included)."""
    field = value.WhichOneof("value")
    if field is None:
        return None
    if field == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if field == "kvlist_value":
        return attributes_dict(value.kvlist_value.values)
    return getattr(value, field)


def attributes_dict(attributes: Sequence[KeyValue]) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in attributes}


def _enum_name(enum: Any, number: int) -> str:
    # A newer sender may use values this protobuf module does not know yet.
    try:
        return str(enum.Name(number))
    except ValueError:
        return str(number)


def request_to_dicts(request: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    """Every span of ``request`` as a plain dict (ids lower hex, enums by name)."""
    out: list[dict[str, Any]] = []
    for resource_spans in request.resource_spans:
        resource = attributes_dict(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    {
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex() or None,
                        "name": span.name,
                        "kind": _enum_name(Span.SpanKind, span.kind),
                        "start_ns": span.start_time_unix_nano,
                        "end_ns": span.end_time_unix_nano,
                        "flags": span.flags,
                        "status_code": _enum_name(Status.StatusCode, span.status.code),
                        "status_message": span.status.message,
                        "attributes": attributes_dict(span.attributes),
                        "resource": resource,
                        "scope": scope_spans.scope.name,
                    }
                )
    return out

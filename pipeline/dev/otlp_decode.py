"""OTLP export requests as plain dicts (the embedded receiver's and the tests' view).

Ids as lower hex, enums by name, attribute values as Python values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status


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

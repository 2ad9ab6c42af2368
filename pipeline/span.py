"""Build the one OTLP SERVER span of a request (pure: no I/O, no clock).

Identity
    The trace id is the one the log carried (``enr.trace_id``: W3C, B3 or
    Envoy ``%TRACE_ID%``, already normalised to 32 lower-hex). Without one it
    is derived from the request id, else from ``fallback_key`` (the caller
    passes the Kafka coordinates, ``KafkaCoordinates.doc_id``). With none of
    the three there is nothing stable to hang the span on: hashing the other
    fields would merge look-alike requests (same second, same client, same
    URL) into one trace with one span id, so no span is built. The span id is
    a hash of the identifying fields of the line, so a replay of the same line
    produces the same span (the backend overwrites instead of duplicating),
    while the several proxies that log one request (gateway, sidecars) — same
    trace and request id, different timestamps/clusters — get distinct spans.
    The parent is the caller's span id from ``traceparent``/B3, and only when
    the trace id came from the log too.

Timing
    ``AccessRecord.timestamp_ns`` is the request *start* (Envoy's
    ``start_time``; the nginx parsers subtract ``request_time`` from
    ``time_iso8601``/``msec``, which nginx writes at the end of the request).
    The end is start + duration; an unknown duration gives a zero-length span.
    Without a timestamp there is no span (a span in 1970 helps nobody).

Attributes
    Exactly the names of ``schemas/span_attributes.json``, each only when its
    value is known, coerced to the kind listed there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import schemas
from pipeline.model import AccessRecord, Enrichment, SpanData

UNKNOWN_SERVICE = "grayscope-unknown"

# OpenTelemetry semantic conventions: other methods become "_OTHER" and the span
# name uses "HTTP", so a scanner's junk methods cannot explode the operation list.
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
OTHER_METHOD = "_OTHER"

AttrValue = str | int | float | bool
_Getter = Callable[[AccessRecord, Enrichment, str | None], object]

# Attribute name -> where its value comes from (the method is passed normalised).
_SOURCES: dict[str, _Getter] = {
    "gray.id": lambda r, e, m: e.gray_id,
    "gray.stage": lambda r, e, m: e.stage,
    "gray.version": lambda r, e, m: e.version,
    "gray.path_group": lambda r, e, m: e.path_group,
    "http.request.method": lambda r, e, m: m,
    "url.path": lambda r, e, m: e.url_path,
    "http.route": lambda r, e, m: e.route,
    "http.response.status_code": lambda r, e, m: r.status,
    "client.address": lambda r, e, m: e.client_ip,
    "user_agent.original": lambda r, e, m: r.user_agent,
    "geo.country.iso_code": lambda r, e, m: e.geo.country_iso_code if e.geo else None,
    "geo.locality.name": lambda r, e, m: e.geo.city_name if e.geo else None,
    "geo.location.lat": lambda r, e, m: e.geo.lat if e.geo else None,
    "geo.location.lon": lambda r, e, m: e.geo.lon if e.geo else None,
}

_COERCE: dict[str, Callable[[Any], AttrValue]] = {
    "string": str,
    "int": int,
    "double": float,
    "bool": bool,
}


def _compile_attributes() -> tuple[tuple[str, _Getter, Callable[[Any], AttrValue]], ...]:
    # The schema is the contract: fail at import if builder and schema drift apart.
    listed = schemas.span_attributes()
    if set(listed) != set(_SOURCES):
        missing = sorted(set(listed) - set(_SOURCES))
        extra = sorted(set(_SOURCES) - set(listed))
        raise RuntimeError(f"span attributes differ from schema: missing={missing} extra={extra}")
    return tuple((name, _SOURCES[name], _COERCE[kind]) for name, kind in listed.items())


_ATTRIBUTES = _compile_attributes()


def build_span(
    record: AccessRecord, enr: Enrichment, *, fallback_key: str | None = None
) -> SpanData | None:
    """The SERVER span of one request, or None when it has no time or no identity."""
    start = record.timestamp_ns
    if start is None:
        return None
    trace_id, from_log = _trace_id(enr.trace_id, record.request_id, fallback_key)
    if trace_id is None:
        return None
    parent = _parse_id(enr.span_id, 8) if from_log else None

    method = _method(record.method)
    duration = record.duration_ns if record.duration_ns and record.duration_ns > 0 else 0
    status = record.status
    error = status is not None and 500 <= status <= 599

    attributes: dict[str, AttrValue] = {}
    for name, getter, coerce in _ATTRIBUTES:
        value = getter(record, enr, method)
        if value is None or value == "":
            continue
        attributes[name] = coerce(value)

    return SpanData(
        trace_id=trace_id,
        span_id=_span_id(record, trace_id, parent, fallback_key),
        parent_span_id=parent,
        name=span_name(method, enr.route or enr.path_group),
        start_ns=start,
        end_ns=start + duration,
        error=error,
        status_message=f"HTTP {status}" if error else "",
        service_name=enr.service_name or UNKNOWN_SERVICE,
        attributes=attributes,
    )


def span_name(method: str | None, target: str | None) -> str:
    """``{method} {target}`` per the HTTP semantic conventions, "HTTP" for unknown methods."""
    verb = method if method and method != OTHER_METHOD else "HTTP"
    return f"{verb} {target}" if target else verb


def _method(raw: str | None) -> str | None:
    if not raw:
        return None
    return raw if raw in KNOWN_METHODS else OTHER_METHOD


def _trace_id(
    logged: str | None, request_id: str | None, fallback_key: str | None
) -> tuple[bytes | None, bool]:
    parsed = _parse_id(logged, 16)
    if parsed is not None:
        return parsed, True
    # Distinct prefixes keep a request id and a Kafka key that happen to be equal apart.
    if request_id:
        return _digest(b"r\x00" + request_id.encode("utf-8", "surrogatepass"), 16), False
    if fallback_key:
        return _digest(b"k\x00" + fallback_key.encode("utf-8", "surrogatepass"), 16), False
    return None, False


def _span_id(
    record: AccessRecord, trace_id: bytes, parent: bytes | None, fallback_key: str | None
) -> bytes:
    # Everything that tells one proxy's line apart from another's for the same request;
    # the Kafka key only when the line has no request id (it differs between duplicates).
    parts = (
        record.dataset,
        record.request_id or fallback_key or "",
        str(record.timestamp_ns),
        str(record.duration_ns),
        record.method or "",
        record.uri or "",
        str(record.status),
        record.peer_addr or "",
        record.upstream_cluster or "",
        record.authority or "",
    )
    material = trace_id + (parent or b"") + "\x1f".join(parts).encode("utf-8", "surrogatepass")
    return _digest(b"s\x00" + material, 8)


def _digest(material: bytes, size: int) -> bytes:
    out = hashlib.blake2b(material, digest_size=size).digest()
    # All-zero ids are invalid in OTLP; astronomically unlikely, but cheap to rule out.
    return out if any(out) else out[:-1] + b"\x01"


def _parse_id(text: str | None, size: int) -> bytes | None:
    """Hex id of ``size`` bytes, or None when absent, malformed or all zeros."""
    if not text or len(text) != size * 2:
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return raw if any(raw) else None

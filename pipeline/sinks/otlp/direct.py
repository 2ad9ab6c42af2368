"""A request's span straight to OTLP wire bytes: ``build_span`` and the encoder in one pass.

``pipeline.core.span.build_span`` (SpanData) and ``encode.encode_span`` are the
readable reference; this is what the worker runs for every event. It writes
the same bytes — ``encode_request_span(record, enr, key)`` equals
``encode_span(build_span(record, enr, fallback_key=key))``, checked at import
on a fully populated request and property-tested — without the SpanData,
the attribute dict and its (name, value) tuples: each attribute is one
lookup in a memo of that attribute's encoded fields, keyed by the value
alone, all of them in one C-level ``map``; the four geo attributes (last in
the schema) are encoded once per ``GeoInfo`` and kept on it, since the GeoIP
cache shares one GeoInfo between all the clients of a network. Identity,
method and name rules are ``pipeline.core.span``'s own functions.

Memos are bounded (cleared when full, like encode's): most values repeat
(stage, method, route, status, country, coordinates); per-request ones
(client address, URL path) are bounded by the limit.
"""

from __future__ import annotations

import schemas
from pipeline.core.model import AccessRecord, Enrichment, GeoInfo
from pipeline.core.otlp_wire import (
    EncodedSpan,
    attribute_field,
    encode_span,
    name_field,
    span_head,
    span_tail,
)
from pipeline.core.span import (
    KIND_TYPES,
    UNKNOWN_SERVICE,
    build_span,
    span_coordinates,
    span_id,
    span_name,
    span_skeleton,
    span_status,
)

# Entries per attribute memo; the client address and URL path see per-request values.
MEMO_LIMITS = {"client.address": 16_384, "url.path": 8192, "user_agent.original": 8192}
DEFAULT_MEMO_LIMIT = 2048


class _AttributeMemo(dict[object, bytes]):
    """value -> the encoded ``attributes`` field of one attribute name.

    Absent values (None, and "" for strings: proto3 and build_span leave them out)
    map to b"", so a span's attributes are one ``map`` over the memos with no test.
    Only values of the attribute's own kind are kept — a bool would find the entry of
    1, and 0.0 that of -0.0 — so whole floats are encoded every time.
    """

    def __init__(self, name: str, kind: str, limit: int) -> None:
        super().__init__()
        self.name = name
        self.kept = KIND_TYPES[kind]
        self.limit = limit
        self._seed()

    def _seed(self) -> None:
        self[None] = b""
        if self.kept is str:
            self[""] = b""

    def __missing__(self, value: object) -> bytes:
        encoded = attribute_field(self.name, value)
        cls = value.__class__
        if cls is self.kept and not (cls is float and value.is_integer()):  # type: ignore[attr-defined]
            if len(self) >= self.limit:
                self.clear()
                self._seed()
            self[value] = encoded
        return encoded


# One memo per attribute, in the schema's order (the order of the values below).
_MEMOS = tuple(
    _AttributeMemo(name, kind, MEMO_LIMITS.get(name, DEFAULT_MEMO_LIMIT))
    for name, kind in schemas.span_attributes().items()
)
_lookup = dict.__getitem__
# The geo attributes come last in the schema: encoded once per GeoInfo (the GeoIP
# cache shares one GeoInfo between all the clients of a network), the others per request.
_GEO_ATTRIBUTES = 4
_REQUEST_MEMOS = _MEMOS[:-_GEO_ATTRIBUTES]
_GEO_MEMOS = _MEMOS[-_GEO_ATTRIBUTES:]


def _geo_fields(geo: GeoInfo) -> bytes:
    """The geo attributes' fields, kept on the GeoInfo (b"" too: a GeoInfo with
    nothing to show is then encoded again each time, cheaply)."""
    lat, lon = span_coordinates(geo)
    fields = b"".join(map(_lookup, _GEO_MEMOS, (geo.country_iso_code, geo.city_name, lat, lon)))
    geo.span_fields = fields
    return fields


def encode_request_span(
    record: AccessRecord, enr: Enrichment, fallback_key: str | None = None
) -> EncodedSpan | None:
    """The encoded SERVER span of one request, or None when it has no time or no identity.

    Also None where the reference encoder raises (a time outside uint64, an int
    beyond int64): that request gets no span, the others of the batch do.
    """
    skeleton = span_skeleton(record, enr, fallback_key)
    if skeleton is None:
        return None
    trace_id, parent, method, start, end = skeleton
    status = record.status
    if status is not None and status.__class__ is not int:  # the call only when needed
        status = span_status(status)
    geo = enr.geo
    geo_fields = b"" if geo is None else geo.span_fields or _geo_fields(geo)

    try:
        parts = span_head(
            trace_id,
            span_id(record, trace_id, parent, fallback_key),
            parent,
            name_field(span_name(method, enr.route or enr.path_group)),
            start,
            end,
        )
    except ValueError:  # a time outside uint64 (a line dated after 2554): no span
        return None
    # In the order of schemas/span_attributes.json (checked at import, see below).
    values = (
        enr.gray_id,
        enr.stage,
        enr.version,
        enr.path_group,
        method,
        enr.url_path,
        enr.route,
        status,
        enr.client_ip,
        record.user_agent,
    )
    try:
        parts.extend(map(_lookup, _REQUEST_MEMOS, values))
    except ValueError:  # a status code beyond int64
        return None
    parts.append(geo_fields)
    if status is not None and 500 <= status <= 599:
        parts.append(span_tail(True, f"HTTP {status}", parent))
    else:
        parts.append(span_tail(False, "", parent))
    return enr.service_name or UNKNOWN_SERVICE, b"".join(parts)


def _check_against_reference() -> None:
    # Fail at import when this and build_span + encode_span drift apart: every attribute
    # set, an error status, a parent.
    record = AccessRecord(
        dataset="envoy.access", timestamp_ns=1_700_000_000_000_000_000, method="PATCH",
        status=503, user_agent="ua", request_id="r", duration_ns=5_000_000,
    )
    enr = Enrichment(
        gray_id="g", stage="canary", version="v2", path_group="/p", route="/p/{x}",
        url_path="/p/1", client_ip="192.0.2.1", trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        span_id="00f067aa0ba902b7", service_name="svc",
        geo=GeoInfo(country_iso_code="DE", city_name="c", lat=1.5, lon=2),
    )
    reference = build_span(record, enr, fallback_key="k")
    if reference is None or encode_request_span(record, enr, "k") != encode_span(reference):
        raise RuntimeError("encode_request_span differs from encode_span(build_span(...))")
    if len(_MEMOS) != len(reference.attributes):
        raise RuntimeError("encode_request_span's attributes differ from the schema's")


_check_against_reference()

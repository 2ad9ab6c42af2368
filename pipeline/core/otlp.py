"""A request's span straight to OTLP wire bytes, in one pass.

This is what the worker runs for every event. The readable reference —
``build_span`` (a SpanData) encoded attribute by attribute — lives in the tests
(tests/oracles/otlp_reference.py): ``encode_request_span(record, enr, key)``
equals ``encode_span(build_span(record, enr, fallback_key=key))`` for a fully
populated request and for any request (property test), written without the SpanData,
the attribute dict and its (name, value) tuples: each attribute is one
lookup in a memo of that attribute's encoded fields, keyed by the value
alone, all of them in one C-level ``map``; the four geo attributes (last in
the schema) are encoded once per ``GeoInfo`` and kept on it, since the GeoIP
cache shares one GeoInfo between all the clients of a network. Identity,
method and name rules are ``pipeline.core.span``'s own functions.

Memos are bounded (cleared when full, like encode's): most values repeat
(stage, method, route, status, country, coordinates); per-request ones
(client address, URL path) are bounded by the limit.

Where the core is compiled, the usual span is written by C instead
(``pipeline/core/_wire.c``, built with the compiled core): the same bytes in
one pass into one buffer, with its own BLAKE2b, without the memo lookups, the list
of parts and the hash objects (bench/README.md, "Session 19"). Anything unusual
(text that is not valid UTF-8, an id that is not plain hex, a time or int out of
range) it hands back to the Python path below, so the rules for those have one copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, cast

import schemas
from pipeline.core import wire_module
from pipeline.core.model import (
    AccessRecord,
    DeadLetter,
    Enrichment,
    GeoInfo,
    InputMessage,
    document_id,
)
from pipeline.core.otlp_wire import (
    EncodedSpan,
    attribute_field,
    name_field,
    span_head,
    span_tail,
)
from pipeline.core.process import Enriched
from pipeline.core.span import (
    KIND_TYPES,
    KNOWN_METHODS,
    OTHER_METHOD,
    UNKNOWN_SERVICE,
    UNKNOWN_VERB,
    span_coordinates,
    span_id,
    span_name,
    span_skeleton,
    span_status,
)

# Entries per attribute memo; the client address and URL path see per-request values.
MEMO_LIMITS: Final = {"client.address": 16_384, "url.path": 8192, "user_agent.original": 8192}
DEFAULT_MEMO_LIMIT: Final = 2048


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
_MEMOS: Final = tuple(
    _AttributeMemo(name, kind, MEMO_LIMITS.get(name, DEFAULT_MEMO_LIMIT))
    for name, kind in schemas.span_attributes().items()
)
_lookup = dict.__getitem__
# The geo attributes come last in the schema: encoded once per GeoInfo (the GeoIP
# cache shares one GeoInfo between all the clients of a network), the others per request.
_GEO_ATTRIBUTES: Final = 4
_REQUEST_MEMOS: Final = _MEMOS[:-_GEO_ATTRIBUTES]
_GEO_MEMOS: Final = _MEMOS[-_GEO_ATTRIBUTES:]


def _geo_fields(geo: GeoInfo) -> bytes:
    """The geo attributes' fields, kept on the GeoInfo (b"" too: a GeoInfo with
    nothing to show is then encoded again each time, cheaply)."""
    lat, lon = span_coordinates(geo)
    fields = b"".join(map(_lookup, _GEO_MEMOS, (geo.country_iso_code, geo.city_name, lat, lon)))
    geo.span_fields = fields
    return fields


# The schema's request attributes (all but the geo ones) as the C encoder writes them:
# strings, but the status code, an int.
_NATIVE_KINDS: Final = ("string",) * 7 + ("int",) + ("string",) * 2


def _native_encoder() -> Callable[..., bytes | None] | None:
    """The C encoder, given the schema's attribute keys; None where it is not built (or
    the plain-Python core is in use: pipeline.native.prefer_sources)."""
    wire = wire_module()
    if wire is None:
        return None
    attributes = list(schemas.span_attributes().items())[:-_GEO_ATTRIBUTES]
    if tuple(kind for _, kind in attributes) != _NATIVE_KINDS:
        return None  # the schema moved on; tests/unit/test_otlp_direct.py says so
    wire.configure(
        tuple(name for name, _ in attributes),
        tuple(sorted(KNOWN_METHODS)),
        OTHER_METHOD,
        UNKNOWN_VERB,
    )
    return cast(Callable[..., bytes | None], wire.encode_span)


_NATIVE_ENCODE: Final = _native_encoder()


def encode_request_span(
    record: AccessRecord, enr: Enrichment, fallback_key: str | None = None
) -> EncodedSpan | None:
    """The encoded SERVER span of one request, or None when it has no time or no identity.

    Also None where the reference encoder raises (a time outside uint64, an int
    beyond int64): that request gets no span, the others of the batch do.
    """
    encode = _NATIVE_ENCODE
    if encode is not None:
        geo = enr.geo
        body = encode(
            record.timestamp_ns,
            record.duration_ns,
            record.method,
            record.status,
            record.request_id,
            record.dataset,
            record.uri,
            record.peer_addr,
            record.upstream_cluster,
            record.authority,
            record.user_agent,
            enr.trace_id,
            enr.span_id,
            enr.route,
            enr.path_group,
            enr.gray_id,
            enr.stage,
            enr.version,
            enr.url_path,
            enr.client_ip,
            b"" if geo is None else geo.span_fields or _geo_fields(geo),
            fallback_key,
        )
        if body is None:
            return None
        if body:
            return enr.service_name or UNKNOWN_SERVICE, body
        # b"": something unusual, for the rules below
    return _encode_in_python(record, enr, fallback_key)


def _encode_in_python(
    record: AccessRecord, enr: Enrichment, fallback_key: str | None
) -> EncodedSpan | None:
    """``encode_request_span`` in Python: every request (the C encoder's usual ones too)."""
    skeleton = span_skeleton(record, enr, fallback_key)
    if skeleton is None:
        return None
    trace_id, parent, method, start, end = skeleton
    status = span_status(record.status)
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
    # In the order of schemas/span_attributes.json (tests/unit/test_otlp_direct.py holds it).
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


def encode_spans(
    messages: Sequence[InputMessage], results: Sequence[Enriched | DeadLetter]
) -> list[EncodedSpan]:
    """The encoded span of every enriched request of a batch that has one, in order.

    A request without its own trace or request id is identified by its
    document ``_id`` (the Kafka coordinates), so a replay gives the same span.
    """
    spans: list[EncodedSpan] = []
    for msg, result in zip(messages, results, strict=True):
        if isinstance(result, Enriched):
            record = result.record
            # The key identifies a span only when the line has no request id.
            key = None if record.request_id else document_id(msg.coords)
            span = encode_request_span(record, result.enrichment, key)
            if span is not None:
                spans.append(span)
    return spans

"""OTLP protobuf wire format for spans (pure: no I/O, no protobuf module).

The worker writes each request's span straight in the wire format
(``pipeline.core.otlp.encode_request_span`` builds a span's bytes from these
pieces) and ``frame_request`` joins encoded spans into the serialized
ExportTraceServiceRequest (the OTLP/HTTP body, and the gRPC request message):
building protobuf objects only to serialize them cost several times more.
Spans are grouped by ``service.name`` into one ResourceSpans each (first-seen
order), with one ScopeSpans named "grayscope". Fields go in field-number order
and proto3 defaults are left out, so the bytes are the ones protobuf itself
writes for the same request (tests/oracles/otlp_reference.py builds them with
protobuf objects; the tests hold this module to it). Tags, and the key
prefixes of the schema's attribute names by value length, are computed once;
span names are memoised in a bounded cache.

Text that is not valid UTF-8 (lone surrogates from lenient JSON) is written
with "?" for each bad code point: one bad string must not cost the batch.
Ints outside int64 and timestamps outside uint64 raise ValueError, like
protobuf.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, Final

import schemas
from pipeline.core import wire_function

SCOPE_NAME: Final = "grayscope"
SERVICE_NAME_KEY: Final = "service.name"

# Enum values of opentelemetry-proto's trace.proto, written as numbers so the core
# imports no protobuf module (tests/unit/test_otlp_encode.py holds them to protobuf's).
SPAN_KIND_SERVER: Final = 2
STATUS_CODE_ERROR: Final = 2
FLAG_SAMPLED: Final = 0x01
FLAG_CONTEXT_HAS_IS_REMOTE: Final = 0x100
FLAG_CONTEXT_IS_REMOTE: Final = 0x200
_SERVER: Final = SPAN_KIND_SERVER
_ERROR: Final = STATUS_CODE_ERROR
# W3C "sampled" (we export every span) + "we know whether the parent is remote";
# a parent always is remote here: it is the caller's span from the request headers.
FLAGS_ROOT: Final = FLAG_SAMPLED | FLAG_CONTEXT_HAS_IS_REMOTE
FLAGS_REMOTE_PARENT: Final = FLAGS_ROOT | FLAG_CONTEXT_IS_REMOTE
_FLAGS_ROOT: Final = FLAGS_ROOT
_FLAGS_REMOTE_PARENT: Final = FLAGS_REMOTE_PARENT


def _scope_version() -> str:
    try:
        return metadata.version("grayscope")
    except metadata.PackageNotFoundError:
        return ""


SCOPE_VERSION: Final = _scope_version()


# --- wire format ---------------------------------------------------------------

# Cache size (entries; a full cache is cleared: values drift, e.g. over a day).
_MAX_NAMES: Final = 4096
_UINT64: Final = 1 << 64
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1

_pack_double = struct.Struct("<d").pack
_pack_fixed32 = struct.Struct("<I").pack
# start (7, fixed64), end tag (8, fixed64), end: one call for both timestamps.
_pack_times = struct.Struct("<QBQ").pack
_pack_fixed64 = struct.Struct("<Q").pack

_BYTE: Final = tuple(bytes((i,)) for i in range(256))


def _varint(n: int) -> bytes:
    """Unsigned base-128 varint (callers map negative int64 to two's complement)."""
    if n < 0x80:
        return _BYTE[n]
    if n < 0x4000:  # a span's length, usually
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    n = len(payload)
    return tag + (_BYTE[n] if n < 0x80 else _varint(n)) + payload


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


# Tags, named message.field (wire type 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32).
_REQUEST_RESOURCE_SPANS: Final = _tag(1, 2)
_RESOURCE_SPANS_RESOURCE: Final = _tag(1, 2)
_RESOURCE_SPANS_SCOPE_SPANS: Final = _tag(2, 2)
_RESOURCE_ATTRIBUTES: Final = _tag(1, 2)
_SCOPE_SPANS_SCOPE: Final = _tag(1, 2)
_SCOPE_SPANS_SPANS: Final = _tag(2, 2)
_SCOPE_NAME: Final = _tag(1, 2)
_SCOPE_VERSION: Final = _tag(2, 2)
_SPAN_TRACE_ID: Final = _tag(1, 2)
_SPAN_SPAN_ID: Final = _tag(2, 2)
_SPAN_PARENT_SPAN_ID: Final = _tag(4, 2)
_SPAN_NAME: Final = _tag(5, 2)
_SPAN_KIND: Final = _tag(6, 0)
_SPAN_START: Final = _tag(7, 1)
_SPAN_END: Final = _tag(8, 1)
_SPAN_ATTRIBUTES: Final = _tag(9, 2)
_SPAN_STATUS: Final = _tag(15, 2)
_SPAN_FLAGS: Final = _tag(16, 5)
_STATUS_MESSAGE: Final = _tag(2, 2)
_STATUS_CODE: Final = _tag(3, 0)
_KV_KEY: Final = _tag(1, 2)
_KV_VALUE: Final = _tag(2, 2)
_ANY_STRING: Final = _tag(1, 2)
_ANY_BOOL: Final = _tag(2, 0)
_ANY_INT: Final = _tag(3, 0)
_ANY_DOUBLE: Final = _tag(4, 1)

_TRACE_ID_16: Final = _SPAN_TRACE_ID + _BYTE[16]
_SPAN_ID_8: Final = _SPAN_SPAN_ID + _BYTE[8]
_PARENT_ID_8: Final = _SPAN_PARENT_SPAN_ID + _BYTE[8]
_KIND_SERVER_START: Final = _SPAN_KIND + _varint(_SERVER) + _SPAN_START
_KIND_SERVER: Final = _SPAN_KIND + _varint(_SERVER)
_END_TAG: Final = _SPAN_END[0]
_STATUS_CODE_ERROR: Final = _STATUS_CODE + _varint(_ERROR)
_FLAGS_ROOT_FIELD: Final = _SPAN_FLAGS + _pack_fixed32(_FLAGS_ROOT)
_FLAGS_REMOTE_PARENT_FIELD: Final = _SPAN_FLAGS + _pack_fixed32(_FLAGS_REMOTE_PARENT)
_SCOPE_FIELD: Final = _field(
    _SCOPE_SPANS_SCOPE,
    _field(_SCOPE_NAME, _utf8(SCOPE_NAME))
    + (_field(_SCOPE_VERSION, _utf8(SCOPE_VERSION)) if SCOPE_VERSION else b""),
)


def _any_value(value: object) -> bytes:
    """The encoded AnyValue of an attribute value (the reference's type order)."""
    if isinstance(value, str):
        return _field(_ANY_STRING, _utf8(value))
    if isinstance(value, bool):  # before int: bool is an int subclass
        return _ANY_BOOL + _BYTE[value]
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"attribute value out of int64 range: {value}")
        return _ANY_INT + _varint(value % _UINT64)
    if isinstance(value, float):
        return _ANY_DOUBLE + _pack_double(value)
    return _field(_ANY_STRING, _utf8(str(value)))


def _key_field(key: str) -> bytes:
    encoded = _utf8(key)
    return _field(_KV_KEY, encoded) if encoded else b""  # proto3 leaves out ""


# The key fields of the schema's attribute names, written once.
_KEY_FIELDS: Final = {name: _key_field(name) for name in schemas.span_attributes()}


def _key_value(key: str, value: object) -> bytes:
    """One attribute as an encoded ``attributes`` field of a Span."""
    key_field = _KEY_FIELDS.get(key) or _key_field(key)
    return _field(_SPAN_ATTRIBUTES, key_field + _field(_KV_VALUE, _any_value(value)))


def _string_heads(key: str) -> tuple[bytes, ...]:
    # Everything of a string attribute in front of its value, by the value's length.
    return tuple(_key_value(key, "x" * n)[: -n or None] for n in range(_HEAD_LENGTHS))


_HEAD_LENGTHS: Final = 256
_STRING_HEADS: Final = {
    name: _string_heads(name)
    for name, kind in schemas.span_attributes().items()
    if kind == "string"
}


def attribute_field(key: str, value: object) -> bytes:
    """One attribute as an encoded ``attributes`` field of a Span."""
    if isinstance(value, str):
        heads = _STRING_HEADS.get(key)
        encoded = _utf8(value)  # type: ignore[arg-type]
        if heads is not None and len(encoded) < _HEAD_LENGTHS:
            return heads[len(encoded)] + encoded
    return _key_value(key, value)


_NAMES: Final[dict[str, bytes]] = {}
# Span length -> the ScopeSpans.spans tag and length in front of it.
_SPAN_PREFIXES: Final[dict[int, bytes]] = {}


def _remember(cache: dict[Any, bytes], key: object, encoded: bytes, limit: int) -> bytes:
    if len(cache) >= limit:
        cache.clear()
    cache[key] = encoded
    return encoded


def _span_prefix(n: int) -> bytes:
    prefix = _SCOPE_SPANS_SPANS + _varint(n)
    if n < 0x4000:  # at most 16384 entries
        _SPAN_PREFIXES[n] = prefix
    return prefix


def _name_field(name: str) -> bytes:
    encoded = _utf8(name)
    return _remember(_NAMES, name, _field(_SPAN_NAME, encoded) if encoded else b"", _MAX_NAMES)


def _times(start: int, end: int) -> bytes:
    """Kind, start and end fields (proto3 leaves out zero timestamps)."""
    try:
        return (
            _KIND_SERVER
            + (_SPAN_START + _pack_fixed64(start) if start else b"")
            + (_SPAN_END + _pack_fixed64(end) if end else b"")
        )
    except struct.error as exc:
        raise ValueError(f"span time out of uint64 range: {start}, {end}") from exc


def _ids(trace_id: bytes, span_id: bytes, parent: bytes | None) -> bytes:
    return (
        (_field(_SPAN_TRACE_ID, trace_id) if trace_id else b"")
        + (_field(_SPAN_SPAN_ID, span_id) if span_id else b"")
        + (_field(_SPAN_PARENT_SPAN_ID, parent) if parent else b"")
    )


def span_head(
    trace_id: bytes, span_id: bytes, parent: bytes | None, name: bytes, start: int, end: int
) -> list[bytes]:
    """The fields in front of a span's attributes, as pieces to join (``name``: its field)."""
    # The usual span gets a list of ready-made pieces; anything odd the general path.
    if len(trace_id) == 16 and len(span_id) == 8 and 0 < start < _UINT64 and 0 < end < _UINT64:
        if not parent:
            return [
                _TRACE_ID_16,
                trace_id,
                _SPAN_ID_8,
                span_id,
                name,
                _KIND_SERVER_START,
                _pack_times(start, _END_TAG, end),
            ]
        if len(parent) == 8:
            return [
                _TRACE_ID_16,
                trace_id,
                _SPAN_ID_8,
                span_id,
                _PARENT_ID_8,
                parent,
                name,
                _KIND_SERVER_START,
                _pack_times(start, _END_TAG, end),
            ]
    return [_ids(trace_id, span_id, parent), name, _times(start, end)]


def span_tail(error: bool, status_message: str, parent: bytes | None) -> bytes:
    """The fields after a span's attributes: status (errors only) and flags."""
    flags = _FLAGS_REMOTE_PARENT_FIELD if parent else _FLAGS_ROOT_FIELD
    if not error:
        return flags
    message = _utf8(status_message)
    status = (_field(_STATUS_MESSAGE, message) if message else b"") + _STATUS_CODE_ERROR
    return _field(_SPAN_STATUS, status) + flags


def name_field(name: str) -> bytes:
    """The encoded ``name`` field of a span (memoised)."""
    encoded = _NAMES.get(name)
    return _name_field(name) if encoded is None else encoded


# A span ready for a request: its service name and its encoded Span message.
EncodedSpan = tuple[str, bytes]


def _resource_field(service_name: str) -> bytes:
    attribute = _field(
        _RESOURCE_ATTRIBUTES,
        _key_field(SERVICE_NAME_KEY) + _field(_KV_VALUE, _field(_ANY_STRING, _utf8(service_name))),
    )
    return _field(_RESOURCE_SPANS_RESOURCE, attribute)


# What framing adds to a request beyond the spans' bodies, at most (varints of up to
# 5 bytes): for a bound on a request's size before it is framed (the exporter's
# max_request_bytes).
SPAN_FRAMING: Final = 1 + 5  # the ScopeSpans.spans tag and length in front of each span


def group_framing(service_name: str) -> int:
    """Bytes a service's ResourceSpans adds to a request beyond its spans, at most."""
    return 2 * (1 + 5) + len(_resource_field(service_name)) + len(_SCOPE_FIELD)


# C's frame_request (pipeline/core/_wire.c); None where the compiled core is not built.
_NATIVE_FRAME_REQUEST: Final[Callable[..., bytes | None] | None] = wire_function("frame_request")
# The tags C writes: ExportTraceServiceRequest.resource_spans, ResourceSpans.scope_spans,
# ScopeSpans.spans.
_FRAME_TAGS: Final = _REQUEST_RESOURCE_SPANS + _RESOURCE_SPANS_SCOPE_SPANS + _SCOPE_SPANS_SPANS


def frame_request(spans: Sequence[EncodedSpan]) -> bytes:
    """The serialized export request holding these encoded spans, grouped by service
    (services in order of first appearance, each one's spans in order).

    C writes it where it can (a list; up to 32 services): one pass and one copy of each
    span, ~1,540 -> ~350 instructions a span (bench/README.md, "Session 23");
    ``framed_request`` is the definition."""
    native = _NATIVE_FRAME_REQUEST
    if native is not None and type(spans) is list:
        framed = native(spans, _resource_field, _FRAME_TAGS, _SCOPE_FIELD)
        if framed is not None:
            return framed
    return framed_request(spans)


def framed_request(spans: Sequence[EncodedSpan]) -> bytes:
    """``frame_request`` in Python (the definition)."""
    groups: dict[str, list[bytes]] = {}
    for service_name, body in spans:
        group = groups.get(service_name)
        if group is None:
            group = groups[service_name] = []
        n = len(body)
        group.append(_SPAN_PREFIXES.get(n) or _span_prefix(n))
        group.append(body)
    # The enclosing messages' lengths are added up instead of joining each level: one
    # copy of the spans into the request (at batch size a level is hundreds of kB).
    out: list[bytes] = []
    for service_name, group in groups.items():
        resource = _resource_field(service_name)
        scope_spans_length = len(_SCOPE_FIELD) + sum(map(len, group))
        scope_spans = _RESOURCE_SPANS_SCOPE_SPANS + _varint(scope_spans_length)
        resource_spans_length = len(resource) + len(scope_spans) + scope_spans_length
        out.append(_REQUEST_RESOURCE_SPANS + _varint(resource_spans_length))
        out.append(resource)
        out.append(scope_spans)
        out.append(_SCOPE_FIELD)
        out.extend(group)
    return b"".join(out)

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
    value is known, coerced to the kind listed there, in the schema's order.

Cost
    The worker runs ``pipeline.core.otlp.encode_request_span``, which writes a
    span's wire bytes in one pass from the functions below (identity, method,
    name, ids, the numbers' kinds), so the rules have one copy; the readable
    reference ``build_span`` (tests/oracles/otlp_reference.py) uses them too and
    the tests hold both to each other and to the schema. The hashes start from
    BLAKE2b states that already hold their domain prefix. Ids are the same as
    they have always been for the same line (same material, same hash), so
    replays across an upgrade still overwrite instead of duplicating.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from pipeline.core.model import AccessRecord, Enrichment, GeoInfo

UNKNOWN_SERVICE: Final = "grayscope-unknown"

# OpenTelemetry semantic conventions: other methods become "_OTHER" and the span
# name uses "HTTP", so a scanner's junk methods cannot explode the operation list.
KNOWN_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
OTHER_METHOD: Final = "_OTHER"
#: The span name's verb when the method is unknown or non-standard.
UNKNOWN_VERB: Final = "HTTP"


# The schema's attribute kinds as Python types.
KIND_TYPES: Final[dict[str, type]] = {"string": str, "int": int, "double": float, "bool": bool}

# BLAKE2b states with the domain prefix already absorbed: copying one is cheaper than
# setting up a new hash, and the digests are those of blake2b(prefix + material).
# Distinct prefixes keep a request id and a Kafka key that happen to be equal apart.
_FROM_REQUEST_ID: Final = hashlib.blake2b(b"r\x00", digest_size=16)
_FROM_KEY: Final = hashlib.blake2b(b"k\x00", digest_size=16)
_SPAN: Final = hashlib.blake2b(b"s\x00", digest_size=8)


def span_status(status: int | None) -> int | None:
    """The status code as the schema's kind (int)."""
    return None if status is None else int(status)


def span_coordinates(geo: GeoInfo) -> tuple[float | None, float | None]:
    """(lat, lon) as the schema's kind (double): a GeoIP database may hold whole
    numbers as ints."""
    # Any, not float: compiled (pipeline.native), a float-typed value is trusted
    # to be a float, and an int that reached it would stay an int.
    lat: Any = geo.lat
    lon: Any = geo.lon
    return (None if lat is None else float(lat)), (None if lon is None else float(lon))


def span_skeleton(
    record: AccessRecord, enr: Enrichment, fallback_key: str | None
) -> tuple[bytes, bytes | None, str | None, int, int] | None:
    """(trace id, parent span id, method, start, end) of a request's span, or None when
    it has no time or no identity. An unknown duration gives a zero-length span."""
    start = record.timestamp_ns
    if start is None:
        return None
    identity = span_identity(record, enr, fallback_key)
    if identity is None:
        return None
    duration = record.duration_ns
    if not duration or duration < 0:
        duration = 0
    return identity[0], identity[1], http_method(record.method), start, start + duration


def span_identity(
    record: AccessRecord, enr: Enrichment, fallback_key: str | None
) -> tuple[bytes, bytes | None] | None:
    """(trace id, parent span id) of a request's span, or None when nothing identifies it."""
    trace_id = _parse_id(enr.trace_id, 16)
    if trace_id is not None:
        return trace_id, _parse_id(enr.span_id, 8)
    # A parent span id without the trace it belongs to means nothing.
    if record.request_id:
        return _digest(_FROM_REQUEST_ID, _utf8(record.request_id)), None
    if fallback_key:
        return _digest(_FROM_KEY, _utf8(fallback_key)), None
    return None


def http_method(method: str | None) -> str | None:
    """The span's method: None when unknown, "_OTHER" for non-standard ones."""
    if not method:
        return None
    return method if method in KNOWN_METHODS else OTHER_METHOD


def span_name(method: str | None, target: str | None) -> str:
    """``{method} {target}`` per the HTTP semantic conventions, UNKNOWN_VERB for unknown methods."""
    verb = method if method and method != OTHER_METHOD else UNKNOWN_VERB
    return f"{verb} {target}" if target else verb


def span_id(
    record: AccessRecord, trace_id: bytes, parent: bytes | None, fallback_key: str | None
) -> bytes:
    """The span id: a hash of what tells this proxy's line for the request apart."""
    # Everything that tells one proxy's line apart from another's for the same request;
    # the Kafka key only when the line has no request id (it differs between duplicates).
    # One f-string (0x1f between the fields): the same bytes as before, so replays keep
    # producing the span ids already exported.
    material = (
        f"{record.dataset}\x1f{record.request_id or fallback_key or ''}\x1f"
        f"{record.timestamp_ns}\x1f{record.duration_ns}\x1f{record.method or ''}\x1f"
        f"{record.uri or ''}\x1f{record.status}\x1f{record.peer_addr or ''}\x1f"
        f"{record.upstream_cluster or ''}\x1f{record.authority or ''}"
    )
    return _digest(_SPAN, trace_id + (parent or b"") + _utf8(material))


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        # Lone surrogates (from lenient JSON) still name one request: keep them apart.
        return text.encode("utf-8", "surrogatepass")


def _digest(base: hashlib.blake2b, material: bytes) -> bytes:
    hasher = base.copy()
    hasher.update(material)
    out = hasher.digest()
    # All-zero ids are invalid in OTLP; astronomically unlikely, but cheap to rule out.
    return out if out.lstrip(b"\x00") else out[:-1] + b"\x01"


def _parse_id(text: str | None, size: int) -> bytes | None:
    """Hex id of ``size`` bytes, or None when absent, malformed or all zeros."""
    if not text or len(text) != size * 2:
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return raw if raw.lstrip(b"\x00") else None

"""Plain data passed between the pure stages of the pipeline.

``AccessRecord`` is one access-log line normalised across formats (what was
logged, nothing inferred); ``Enrichment`` is what the enrichment chain works
out from it; ``DeadLetter`` is a rejected input with a reason from a bounded
set. Slots keep the per-event allocation small.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, NamedTuple

from pipeline.core import ReadOnlyDict, read_function, wire_function


class Reason(StrEnum):
    """Bounded set of dead-letter reasons (also a metric label)."""

    INVALID_ENCODING = "invalid_encoding"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_FORMAT = "unknown_format"
    TOO_LARGE = "too_large"
    EMPTY = "empty"
    INVALID_FIELD = "invalid_field"
    MAPPING_REJECTED = "mapping_rejected"
    INTERNAL_ERROR = "internal_error"


@dataclass(slots=True)
class DeadLetter:
    """A rejected input: never dropped, always explained."""

    reason: Reason
    detail: str
    raw: bytes

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason.value,
            "detail": self.detail,
            "raw": self.raw.decode("utf-8", "backslashreplace"),
        }


class KafkaCoordinates(NamedTuple):
    """Where a message came from; the document ``_id`` is derived from it.

    A named tuple, not a frozen dataclass: one is made per consumed message,
    and a frozen dataclass's ``__init__`` costs twice as much.
    """

    topic: str
    partition: int
    offset: int

    @property
    def doc_id(self) -> str:
        return document_id(self)


# The C writer of the usual ``_id`` (pipeline/core/_wire.c); None where it is not built
# (or the plain-Python core is in use: pipeline.native.prefer_sources).
_NATIVE_DOCUMENT_ID: Final[Callable[[KafkaCoordinates], str | None] | None] = wire_function(
    "document_id"
)


def document_id(coords: KafkaCoordinates) -> str:
    """A message's document ``_id`` (and span fallback key): readable and unique per
    message, so a replay of the same offset overwrites. A function, not only the
    property: compiled (pipeline.native), calling it is native, the property is not.

    The f-string below is the definition. Where the core is compiled, C writes the
    usual id (an ASCII topic) in one go: the two int conversions and the join cost
    ~1k instructions a call, and every event takes one or two (bench/README.md,
    "Session 22")."""
    native = _NATIVE_DOCUMENT_ID
    if native is not None:
        doc_id = native(coords)
        if doc_id is not None:
            return doc_id
    topic, partition, offset = coords
    return f"{topic}-{partition}-{offset}"


#: The shared empty headers/cookies/args/query (read-only).
EMPTY: Final[dict[str, str]] = ReadOnlyDict()


# Not ``@mypyc_attr(acyclic=True)`` (session 25 tried it on the per-event classes here,
# in process.py and bulk.py): mypyc 2.4 still wraps such a class's dealloc in CPython's
# trashcan, which, at a nesting of 50 deallocations, parks the object by writing a GC
# header it does not have into the memory before it. That corrupted the heap (a
# segmentation fault in CI); tests/unit/test_model.py holds the classes to it.
@dataclass(slots=True, init=False)
class AccessRecord:
    """One request as logged, normalised across Envoy/Istio and nginx formats.

    Missing values are ``None`` (Envoy's ``"-"``, nginx's ``""`` and JSON
    ``null`` all become ``None``). Header, cookie and query-arg names are
    lower-case; header names use ``-`` (``x-abtest-id``).
    """

    dataset: str  # "envoy.access" | "nginx.access"
    timestamp_ns: int | None = None  # epoch nanoseconds
    method: str | None = None
    uri: str | None = None  # request target as logged: path[?query]
    protocol: str | None = None  # "HTTP/1.1"
    status: int | None = None
    bytes_sent: int | None = None  # response body bytes
    bytes_received: int | None = None
    duration_ns: int | None = None
    upstream_duration_ns: int | None = None
    peer_addr: str | None = None  # direct peer IP, port stripped
    forwarded_for: str | None = None  # raw X-Forwarded-For
    user_agent: str | None = None
    request_id: str | None = None
    authority: str | None = None
    upstream_cluster: str | None = None
    upstream_host: str | None = None
    trace_id: str | None = None  # Envoy %TRACE_ID% as logged
    version_field: str | None = None  # nginx structured `version="..."`
    # Read-only once built (the defaults are the shared EMPTY).
    headers: dict[str, str] = field(default=EMPTY)
    cookies: dict[str, str] = field(default=EMPTY)
    args: dict[str, str] = field(default=EMPTY)  # nginx $arg_<name>
    original: str | None = None  # the line itself (for event.original)
    upstream_status: int | None = None  # the last upstream's status (ingress-nginx)
    # Fields cut at their limit by the parser (``cookies``): the document's ``tags`` say so.
    truncated: tuple[str, ...] = ()

    # A written-out __init__ (same signature as the dataclass's): compiled
    # (pipeline.native) it is native code, where the generated one stays an
    # interpreted function. Kept because it pays: with dataclass-generated __init__s
    # the handler's per-event stages run 6.3 % more instructions (275.8k -> 293.1k
    # per event; bench/instructions.py, bench/README.md "Session 7").
    # tests/unit/test_model.py holds it to the fields.
    def __init__(
        self,
        dataset: str,
        timestamp_ns: int | None = None,
        method: str | None = None,
        uri: str | None = None,
        protocol: str | None = None,
        status: int | None = None,
        bytes_sent: int | None = None,
        bytes_received: int | None = None,
        duration_ns: int | None = None,
        upstream_duration_ns: int | None = None,
        peer_addr: str | None = None,
        forwarded_for: str | None = None,
        user_agent: str | None = None,
        request_id: str | None = None,
        authority: str | None = None,
        upstream_cluster: str | None = None,
        upstream_host: str | None = None,
        trace_id: str | None = None,
        version_field: str | None = None,
        headers: dict[str, str] = EMPTY,
        cookies: dict[str, str] = EMPTY,
        args: dict[str, str] = EMPTY,
        original: str | None = None,
        upstream_status: int | None = None,
        truncated: tuple[str, ...] = (),
    ) -> None:
        self.dataset = dataset
        self.timestamp_ns = timestamp_ns
        self.method = method
        self.uri = uri
        self.protocol = protocol
        self.status = status
        self.bytes_sent = bytes_sent
        self.bytes_received = bytes_received
        self.duration_ns = duration_ns
        self.upstream_duration_ns = upstream_duration_ns
        self.peer_addr = peer_addr
        self.forwarded_for = forwarded_for
        self.user_agent = user_agent
        self.request_id = request_id
        self.authority = authority
        self.upstream_cluster = upstream_cluster
        self.upstream_host = upstream_host
        self.trace_id = trace_id
        self.version_field = version_field
        self.headers = headers
        self.cookies = cookies
        self.args = args
        self.original = original
        self.upstream_status = upstream_status
        self.truncated = truncated


@dataclass(slots=True)
class GeoInfo:
    country_iso_code: str | None = None
    country_name: str | None = None
    continent_code: str | None = None
    continent_name: str | None = None
    region_iso_code: str | None = None  # "US-CA"
    region_name: str | None = None
    city_name: str | None = None
    lat: float | None = None
    lon: float | None = None
    # ``client.geo`` as a document object, built once per GeoInfo by
    # pipeline.core.document: the GeoIP cache shares one GeoInfo between every event
    # of a client, so their documents share this (read-only) dict too.
    document: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    # The same object as JSON (None when the object is empty), built with ``document``:
    # copied into every serialised document of the client instead of walking the same
    # nine fields and two floats again for every event.
    document_json: bytes | None = field(default=None, compare=False, repr=False)
    # The span's geo attributes as OTLP wire bytes, built once per GeoInfo by
    # pipeline.core.otlp (shared the same way).
    span_fields: bytes | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class AsnInfo:
    number: int | None = None
    organization: str | None = None
    # ``client.as`` as a document object and as JSON, built once (see GeoInfo.document).
    document: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    document_json: bytes | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True, init=False)
class Enrichment:
    """What the enrichment chain derived from an AccessRecord."""

    url_path: str | None = None
    url_query: str | None = None
    query: dict[str, str] = field(default=EMPTY)  # first value per arg (read-only)
    gray_id: str | None = None
    gray_id_source: str | None = None  # "header" | "query"
    stage: str = "stable"
    version: str | None = None
    path_group: str | None = None
    route: str | None = None
    client_ip: str | None = None
    geo: GeoInfo | None = None
    asn: AsnInfo | None = None
    trace_id: str | None = None  # 32 lower-hex
    span_id: str | None = None  # 16 lower-hex (parent span from the caller)
    service_name: str | None = None
    # Fields cut at their limit by a step (``query_args``, ``forwarded_for``).
    truncated: tuple[str, ...] = ()

    # Written out for the compiled core, as AccessRecord's (measured there).
    def __init__(
        self,
        url_path: str | None = None,
        url_query: str | None = None,
        query: dict[str, str] = EMPTY,
        gray_id: str | None = None,
        gray_id_source: str | None = None,
        stage: str = "stable",
        version: str | None = None,
        path_group: str | None = None,
        route: str | None = None,
        client_ip: str | None = None,
        geo: GeoInfo | None = None,
        asn: AsnInfo | None = None,
        trace_id: str | None = None,
        span_id: str | None = None,
        service_name: str | None = None,
        truncated: tuple[str, ...] = (),
    ) -> None:
        self.url_path = url_path
        self.url_query = url_query
        self.query = query
        self.gray_id = gray_id
        self.gray_id_source = gray_id_source
        self.stage = stage
        self.version = version
        self.path_group = path_group
        self.route = route
        self.client_ip = client_ip
        self.geo = geo
        self.asn = asn
        self.trace_id = trace_id
        self.span_id = span_id
        self.service_name = service_name
        self.truncated = truncated


@dataclass(slots=True, init=False)
class InputMessage:
    """One Kafka record as the worker hands it to the core: value, key, coordinates."""

    value: bytes | None
    key: bytes | None
    coords: KafkaCoordinates
    timestamp_ns: int | None = None  # the Kafka record timestamp

    # Written out for the compiled core (measured: see AccessRecord).
    def __init__(
        self,
        value: bytes | None,
        key: bytes | None,
        coords: KafkaCoordinates,
        timestamp_ns: int | None = None,
    ) -> None:
        self.value = value
        self.key = key
        self.coords = coords
        self.timestamp_ns = timestamp_ns


def input_message(
    value: bytes | None, key: bytes | None, coords: KafkaCoordinates, timestamp_ns: int | None
) -> InputMessage:
    """``InputMessage(value, key, coords, timestamp_ns)``, for C (``_read.kafka_batch``):
    compiled, a call of this makes the message without the class call's argument
    parsing (~1,500 -> ~860 instructions a message; bench/README.md, "Session 23")."""
    return InputMessage(value, key, coords, timestamp_ns)


def message_values(messages: Sequence[InputMessage]) -> list[bytes]:
    """The values of a batch's messages, ``b""`` for none: what ``process_batch`` takes.

    Compiled, each value is a field read; the handler's interpreted list comprehension
    read them through the attribute protocol (~0.3 µs an event under perf;
    bench/README.md, "Session 27")."""
    return [message.value or b"" for message in messages]


# C's maker of a KafkaCoordinates (pipeline/core/_read.c); None as for the above.
_NATIVE_COORDINATES: Final[Callable[..., KafkaCoordinates] | None] = read_function("coordinates")


def fetched_message(tp: Any, record: Any) -> InputMessage:
    """A record the Kafka client fetched from partition ``tp`` (``.topic``,
    ``.partition``) as the handler's message: its value, key, offset, and its timestamp
    (milliseconds; none or negative: unknown).

    The worker's consumer thread makes one per fetched record (agents/batching.py),
    holding the interpreter lock: compiled, and with C making the coordinates without
    the named tuple's Python-level ``__new__``, ~560 → ~280 ns a record
    (bench/README.md, "Session 22")."""
    timestamp: Any = record.timestamp
    make = _NATIVE_COORDINATES
    coords = (
        KafkaCoordinates(tp.topic, tp.partition, record.offset)
        if make is None
        else make(KafkaCoordinates, tp.topic, tp.partition, record.offset)
    )
    return InputMessage(
        record.value,
        record.key,
        coords,
        timestamp * 1_000_000 if timestamp and timestamp > 0 else None,
    )

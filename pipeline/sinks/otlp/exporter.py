"""Best-effort OTLP span export: a bounded queue drained by one background task.

The protocol follows the endpoint: a URL whose path ends in ``/v1/traces`` is
OTLP/HTTP (protobuf body, aiohttp); a URL without a path is OTLP/gRPC
(``TraceService/Export`` over ``grpc.aio``; ``https`` = TLS). Either way the
request is the bytes of ``encode.frame_request``: no protobuf objects are built
(the gRPC call takes the bytes as they are, only the response is parsed).

``submit`` never awaits: spans go into a queue bounded by ``queue_size``;
what does not fit is dropped and counted (``when_full=drop_newest``, the
default). With ``when_full=block`` the caller uses ``submit_blocking`` instead,
which waits for room (see its doc): Vector's buffer ``when_full: block``, for
users who want complete traces more than throughput. The background task exports
batches of ``batch_size``, up to ``max_concurrent`` requests at once (like the
OTel Collector's ``sending_queue.num_consumers``: one request at a time could
not keep up with a worker that enriches 20k+ events/s, and spans were dropped
as ``queue_full`` behind a single round trip), each with at most
``max_retries`` retries (exponential backoff, only for retriable failures),
then drops the batch and counts it.
Spans arrive encoded (``encode.EncodedSpan``: the batch handler writes each
span's wire bytes straight from the request, ``direct.encode_request_span``);
the task frames them into one request per batch (retries resend the same
bytes).
So in drop_newest mode a collector outage costs spans, never indexing
throughput or memory; in block mode it slows the caller down to the pace at
which exports succeed, or fail for good and drop their batch (after
``max_retries``), which frees room: a dead collector never stops the caller.
Header values may hold API keys: they are never logged.

Counters (``OtlpExporter.stats``; label values are bounded enums):
``spans_exported_total``, ``spans_dropped_total{reason}``,
``export_requests_total{outcome}``, ``span_queue_blocked_seconds_total`` (time
during which the ``submit_blocking`` caller whose turn it is waited for room,
counted while the wait lasts; callers queued behind it wait on the same room and
are not counted again, so the rate is the share of wall time spent held up),
plus the ``spans_queued`` gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from enum import StrEnum
from itertools import islice
from operator import itemgetter
from typing import TYPE_CHECKING, Protocol, TypeAlias
from urllib.parse import unquote, urlsplit

import aiohttp
import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from pipeline.config import WhenFull
from pipeline.core.otlp_wire import SPAN_FRAMING, EncodedSpan, frame_request, group_framing
from pipeline.errors import ConfigError, ExportError, ExportRequestFailed
from pipeline.retry import Backoff
from pipeline.sinks.otlp.grpc_status import retry_delay

if TYPE_CHECKING:
    from pipeline.config import OtlpSettings

    _ExportCall: TypeAlias = grpc.aio.UnaryUnaryMultiCallable[bytes, ExportTraceServiceResponse]

log = logging.getLogger(__name__)

HTTP_PATH_SUFFIX = "/v1/traces"
DEFAULT_GRPC_PORT = 4317
GRPC_EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
# OTLP/HTTP spec: only these are worth another try (plus connection errors).
RETRIABLE_HTTP_STATUS = frozenset({429, 502, 503, 504})
# OTLP/gRPC spec's retryable codes; RESOURCE_EXHAUSTED only with the server's RetryInfo
# (``grpc_retriable``).
RETRIABLE_GRPC_CODES = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def grpc_retriable(code: grpc.StatusCode, server_delay: float | None) -> bool:
    """Whether an export that failed with ``code`` is worth another try (OTLP/gRPC spec).

    ``server_delay``: the failure's RetryInfo delay (``grpc_status.retry_delay``), None
    without one. RESOURCE_EXHAUSTED is retried only when the server says it may recover
    (a RetryInfo, e.g. from a collector's memory limiter): a request over the receiver's
    message size limit gets none, and would be refused again.
    """
    if code is not grpc.StatusCode.RESOURCE_EXHAUSTED:
        return code in RETRIABLE_GRPC_CODES
    return server_delay is not None


# gRPC's default reconnect backoff grows to 120 s; a restarted collector should be
# used again within seconds, not minutes.
GRPC_RECONNECT_BACKOFF_MS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5000),
)
USER_AGENT = "grayscope-otlp-exporter"


class DropReason(StrEnum):
    # Submitted while the queue was full: drop_newest, or block while waits are released.
    QUEUE_FULL = "queue_full"
    EXPORT_FAILED = "export_failed"  # permanent error, or retries exhausted
    REJECTED = "rejected"  # the collector accepted the request but refused these spans
    SHUTDOWN = "shutdown"  # still queued (or submitted) when the exporter stopped


class Outcome(StrEnum):
    SUCCESS = "success"
    RETRIABLE_ERROR = "retriable_error"
    PERMANENT_ERROR = "permanent_error"


@dataclass(slots=True)
class OtlpStats:
    """Plain counters; the worker exposes them to Prometheus."""

    spans_exported_total: int = 0
    spans_dropped_total: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys((r.value for r in DropReason), 0)
    )
    export_requests_total: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys((o.value for o in Outcome), 0)
    )
    span_queue_blocked_seconds_total: float = 0.0  # submit_blocking's waits for room
    spans_queued: int = 0  # gauge

    @property
    def spans_dropped(self) -> int:
        return sum(self.spans_dropped_total.values())


class Transport(Protocol):
    """Sends one export request; returns how many spans the collector rejected.

    ``body`` is a serialized ExportTraceServiceRequest (``frame_request``).
    Raises ``ExportError`` (``retriable`` set) for every delivery failure.
    """

    async def export(self, body: bytes, timeout: float) -> int: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Endpoint:
    protocol: str  # "grpc" | "http"
    url: str  # the HTTP URL as configured, or the gRPC target host:port
    secure: bool
    display: str = field(default="", compare=False)  # safe to log: no userinfo, no query


def parse_endpoint(endpoint: str) -> Endpoint:
    """Pick the protocol from the URL (see the module doc); ConfigError when unusable."""
    setting = "GRAYSCOPE_OTLP_ENDPOINT"
    text = endpoint.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # No guessing TLS from a bare host:port: plaintext to a TLS collector would
        # put the auth headers on the wire in the clear.
        raise ConfigError(setting, "must be http(s)://host:port or http(s)://host:port/v1/traces")
    secure = parts.scheme == "https"
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(setting, "invalid port") from exc
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    path = parts.path.rstrip("/")
    netloc = f"{host}:{port}" if port else host
    if path.endswith(HTTP_PATH_SUFFIX):
        display = f"{parts.scheme}://{netloc}{parts.path}"
        return Endpoint("http", text, secure, display)
    if path:
        raise ConfigError(
            setting, f"path must end in {HTTP_PATH_SUFFIX} (OTLP/HTTP) or be empty (OTLP/gRPC)"
        )
    target = f"{host}:{port or DEFAULT_GRPC_PORT}"
    return Endpoint("grpc", target, secure, f"grpc+{parts.scheme}://{target}")


def parse_headers(spec: str) -> dict[str, str]:
    """``k=v,k2=v2`` (values percent-decoded, like OTEL_EXPORTER_OTLP_HEADERS)."""
    headers: dict[str, str] = {}
    for index, entry in enumerate(spec.split(","), start=1):
        if not entry.strip():
            continue
        key, sep, value = entry.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            # The entry itself may be a secret: name its position only.
            raise ConfigError("GRAYSCOPE_OTLP_HEADERS", f"entry {index} is not key=value")
        headers[key] = unquote(value.strip())
    return headers


class HttpTransport:
    """OTLP/HTTP with a protobuf body."""

    def __init__(self, endpoint: Endpoint, headers: Mapping[str, str]) -> None:
        self._url = endpoint.url
        self._display = endpoint.display
        self._headers = {
            "User-Agent": USER_AGENT,
            **headers,
            "Content-Type": "application/x-protobuf",
        }
        self._session: aiohttp.ClientSession | None = None

    async def export(self, body: bytes, timeout: float) -> int:
        if self._session is None:
            # Created lazily: a ClientSession belongs to the loop it was made in.
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                self._url,
                data=body,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                payload = await response.read()
                status = response.status
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ExportRequestFailed(
                f"{self._display}: {type(exc).__name__}", retriable=True
            ) from exc
        if 200 <= status < 300:
            return _rejected_spans(payload)
        raise ExportRequestFailed(
            f"{self._display}: HTTP {status}",
            retriable=status in RETRIABLE_HTTP_STATUS,
            retry_after=retry_after,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def grpc_channel_options(connect_timeout: float) -> tuple[tuple[str, int], ...]:
    """The export channel's options: reconnects within seconds (``GRPC_RECONNECT_BACKOFF_MS``)
    and ``connect_timeout`` seconds for every connection attempt.

    ``grpc.min_reconnect_backoff_ms`` is no backoff: it is gRPC's minimum connect
    timeout (MIN_CONNECT_TIMEOUT of its connection-backoff protocol), how long one
    attempt may take, the HTTP/2 handshake included, before the channel gives it up,
    turns TRANSIENT_FAILURE and fails every request waiting for it with UNAVAILABLE. At
    200 ms (it was set with the backoff) a collector that accepts the TCP connection and
    does not answer yet (stopped, overloaded, starting: the kernel completes the
    connection) failed each try at once, where a request on an established connection
    waits its whole timeout; a worker started while its collector hung so used up its
    retries in seconds and dropped every batch as ``export_failed``, though the
    collector, once answering, would have taken them. An attempt now lasts as long as
    an export try may: the try that opened it waits for it as for an answer. A refused
    connection still fails at once.
    """
    return (
        *GRPC_RECONNECT_BACKOFF_MS,
        ("grpc.min_reconnect_backoff_ms", max(1, math.ceil(connect_timeout * 1000))),
    )


class GrpcTransport:
    """OTLP/gRPC: ``TraceService/Export`` on a ``grpc.aio`` channel.

    A generic unary call without a request serializer: the already serialized
    request goes out as it is. ``connect_timeout``: seconds a connection attempt
    may take (``grpc_channel_options``), the exporter's per-try timeout.
    """

    def __init__(
        self, endpoint: Endpoint, headers: Mapping[str, str], *, connect_timeout: float
    ) -> None:
        self._endpoint = endpoint
        # gRPC metadata keys must be lower case.
        self._metadata = tuple((k.lower(), v) for k, v in headers.items())
        self._options = grpc_channel_options(connect_timeout)
        self._channel: grpc.aio.Channel | None = None
        self._export: _ExportCall | None = None

    def _connect(self) -> _ExportCall:
        if self._endpoint.secure:
            channel = grpc.aio.secure_channel(
                self._endpoint.url, grpc.ssl_channel_credentials(), options=self._options
            )
        else:
            channel = grpc.aio.insecure_channel(self._endpoint.url, options=self._options)
        self._channel = channel
        self._export = channel.unary_unary(
            GRPC_EXPORT_METHOD,
            request_serializer=None,  # the request is bytes already
            response_deserializer=ExportTraceServiceResponse.FromString,
        )
        return self._export

    async def export(self, body: bytes, timeout: float) -> int:
        call = self._export or self._connect()
        try:
            response = await call(body, timeout=timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            # The server's RetryInfo, as HTTP's Retry-After: wait at least that long.
            server_delay = retry_delay(exc.trailing_metadata())
            raise ExportRequestFailed(
                f"{self._endpoint.display}: gRPC {code.name}",
                retriable=grpc_retriable(code, server_delay),
                retry_after=server_delay,
            ) from exc
        return int(response.partial_success.rejected_spans)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._export = None


def make_transport(endpoint: Endpoint, headers: Mapping[str, str], timeout: float) -> Transport:
    """The endpoint's transport for exports of ``timeout`` seconds a try."""
    if endpoint.protocol == "http":
        return HttpTransport(endpoint, headers)
    return GrpcTransport(endpoint, headers, connect_timeout=timeout)


class OtlpExporter:
    """Queue spans with ``submit`` (or ``submit_blocking``); a background task exports them.

    See the module doc. ``when_full`` tells callers which of the two to use (the batch
    handler reads it); both work in either mode. ``submit``, ``submit_blocking``,
    ``start``, ``stop`` and ``flush`` must be called on the event loop the
    exporter runs on.
    """

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str] | None = None,
        queue_size: int = 20_000,
        batch_size: int = 512,
        max_retries: int = 3,
        timeout: float = 5.0,
        *,
        max_concurrent: int = 4,
        flush_interval: float = 1.0,
        retry_initial: float = 0.5,
        retry_max: float = 5.0,
        transport: Transport | None = None,
        when_full: WhenFull = WhenFull.DROP_NEWEST,
        blocked_report_interval: float = 1.0,
        max_request_bytes: int = 4_000_000,
    ) -> None:
        if queue_size < 1 or batch_size < 1 or max_retries < 0 or timeout <= 0:
            raise ValueError("queue_size/batch_size >= 1, max_retries >= 0, timeout > 0")
        if max_concurrent < 1 or blocked_report_interval <= 0 or max_request_bytes < 1:
            raise ValueError(
                "max_concurrent >= 1, blocked_report_interval > 0, max_request_bytes >= 1"
            )
        self.endpoint = parse_endpoint(endpoint)
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.max_request_bytes = max_request_bytes
        self.max_retries = max_retries
        self.timeout = timeout
        self.max_concurrent = max_concurrent
        self.flush_interval = flush_interval
        self.when_full = WhenFull(when_full)
        # How often a wait for room is added to span_queue_blocked_seconds_total while
        # it lasts: finer than any scrape interval, and one timer a second is nothing.
        self.blocked_report_interval = blocked_report_interval
        self.backoff = Backoff(retry_initial, retry_max)
        self.stats = OtlpStats()
        self._transport = transport or make_transport(self.endpoint, headers or {}, timeout)
        self._queue: deque[EncodedSpan] = deque()
        self._inflight = 0  # spans of the batches being exported
        self._exports: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._flush_requested = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._failing = False  # log the first failure of an outage loudly, the rest quietly
        self._queue_full_logged = False  # likewise for a full queue, until an export succeeds
        # submit_blocking: one caller fills the queue at a time, the others queue up behind
        # it in arrival order (asyncio.Lock is FIFO), so a batch's spans stay together and a
        # big batch is never starved by small ones. ``_room`` is set whenever room appears.
        self._fill_lock = asyncio.Lock()
        self._room = asyncio.Event()
        self._waits_released = 0  # > 0: submit_blocking drops instead of waiting

    @classmethod
    def from_settings(cls, otlp: OtlpSettings) -> OtlpExporter | None:
        """The configured exporter, or None when the endpoint is empty (export off)."""
        if not otlp.endpoint.strip():
            return None
        return cls(
            otlp.endpoint,
            parse_headers(otlp.headers),
            queue_size=otlp.queue_size,
            batch_size=otlp.batch_size,
            max_retries=otlp.max_retries,
            timeout=otlp.timeout,
            max_concurrent=otlp.concurrent_exports,
            when_full=otlp.when_full,
            max_request_bytes=otlp.max_request_bytes,
        )

    # --- producer side (never awaits) ------------------------------------
    def submit(self, spans: Iterable[EncodedSpan]) -> int:
        """Queue ``spans``; returns how many were accepted (the rest are counted dropped)."""
        queue = self._queue
        offered = spans if isinstance(spans, Sequence) else list(spans)
        if self._stopping:
            self.stats.spans_dropped_total[DropReason.SHUTDOWN] += len(offered)
            return 0
        accepted = max(0, min(self.queue_size - len(queue), len(offered)))
        dropped = len(offered) - accepted
        # Whole batches at a time (deque.extend): no interpreted step per span.
        queue.extend(offered if not dropped else islice(offered, accepted))
        if dropped:
            self.stats.spans_dropped_total[DropReason.QUEUE_FULL] += dropped
            if not self._queue_full_logged:
                self._queue_full_logged = True
                log.warning("OTLP queue full (%d spans): dropping new spans", self.queue_size)
        if accepted:
            self._queued()
        return accepted

    # --- producer side, block mode ------------------------------------------
    async def submit_blocking(self, spans: Sequence[EncodedSpan]) -> int:
        """Queue every one of ``spans``, waiting for room as needed; how many were queued.

        Callers wait their turn (first come, first served); the one whose turn it is
        puts as many spans as there is room for, then waits until the exporter takes
        the next export batch off the queue. So a batch bigger than the whole queue
        still goes in, a chunk at a time, and the call returns as soon as its last
        span is queued. Room always comes back: a batch leaves the queue when an
        export slot frees, and every export ends (success, or dropped after
        ``max_retries``, each try bounded by the timeout). Spans not queued when the
        exporter stops (or its task ended) are counted as ``shutdown`` drops; while
        ``waits_released`` is in force, those that do not fit are ``queue_full``
        drops, as in ``submit``. Before ``start`` nothing leaves the queue: a caller
        that finds it full waits for the start.
        """
        if not spans:
            return 0
        accepted = 0
        async with self._fill_lock:
            queue = self._queue
            total = len(spans)
            while accepted < total:
                if self._stopping or (self._task is not None and self._task.done()):
                    self.stats.spans_dropped_total[DropReason.SHUTDOWN] += total - accepted
                    break
                room = self.queue_size - len(queue)
                if room <= 0:
                    if self._waits_released:
                        self.stats.spans_dropped_total[DropReason.QUEUE_FULL] += total - accepted
                        break
                    await self._wait_for_room()
                    continue
                take = min(room, total - accepted)
                queue.extend(spans[accepted : accepted + take])
                accepted += take
                self._queued()
        return accepted

    def _queued(self) -> None:
        """After spans went into the queue: not idle, the task woken for a full batch."""
        self._idle.clear()
        if len(self._queue) >= self.batch_size:
            self._wake.set()
        self.stats.spans_queued = len(self._queue)

    async def _wait_for_room(self) -> None:
        """Until the queue has room again, the exporter stops, or waits are released.

        The wait is added to ``span_queue_blocked_seconds_total`` while it lasts (every
        ``blocked_report_interval`` seconds), not only once it ends: with a hung
        collector one wait lasts as long as the exports in flight (up to
        ``timeout`` x (``max_retries`` + 1) each), and a scrape meanwhile must see the
        worker blocked, not a counter that stands still.
        """
        # Cleared right before waiting, with no await since the caller saw the queue
        # full: a wake-up cannot be lost in between (and the event stays set across
        # the slices below, so none is lost there either).
        self._room.clear()
        stats = self.stats
        credited = time.perf_counter()
        try:
            while not await _wait(self._room, self.blocked_report_interval):
                now = time.perf_counter()
                stats.span_queue_blocked_seconds_total += now - credited
                credited = now
        finally:
            stats.span_queue_blocked_seconds_total += time.perf_counter() - credited

    @contextlib.contextmanager
    def waits_released(self) -> Iterator[None]:
        """While inside: ``submit_blocking`` stops waiting; what does not fit is dropped.

        For a rebalance: the worker waits for its batches in flight before it gives
        up their partitions, and a batch waiting for span room (minutes while the
        collector is down) would hold that past the group's rebalance timeout. In the
        batch consumer mode those batches are not acked anyway: the partitions' next
        owner reads them again, spans included; the stock stream mode withholds the acks
        of a batch that could not queue all its spans (``waits_are_released``) for the
        same reason (agents/app.py).
        """
        self._waits_released += 1
        self._room.set()
        try:
            yield
        finally:
            self._waits_released -= 1

    @property
    def waits_are_released(self) -> bool:
        """True inside ``waits_released``: a ``submit_blocking`` that returned short
        dropped the rest because a rebalance released its wait (unless stopping)."""
        return self._waits_released > 0

    # --- lifecycle --------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="grayscope-otlp-exporter"
            )
            log.info(
                "OTLP export to %s (queue %d, batch %d, %d requests at once, retries %d)",
                self.endpoint.display,
                self.queue_size,
                self.batch_size,
                self.max_concurrent,
                self.max_retries,
            )

    async def flush(self, timeout: float) -> bool:
        """Export what is queued now; True when the queue drained within ``timeout``."""
        if self._task is None:
            return not self._queue
        self._flush_requested = True
        self._wake.set()
        return await _wait(self._idle, timeout)

    async def stop(self, flush_timeout: float = 5.0) -> None:
        """Export what is queued for up to ``flush_timeout`` s, drop the rest, close.

        Callers waiting in ``submit_blocking`` are released at once (their spans not
        yet queued count as ``shutdown`` drops, like a ``submit`` from now on).
        """
        self._stopping = True
        self._room.set()
        task, self._task = self._task, None
        if task is not None:
            self._wake.set()
            done, _ = await asyncio.wait({task}, timeout=flush_timeout)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        leftover = len(self._queue) + self._inflight
        if leftover:
            self.stats.spans_dropped_total[DropReason.SHUTDOWN] += leftover
            log.warning("OTLP exporter stopped with %d spans not exported", leftover)
        self._queue.clear()
        self._inflight = 0
        self.stats.spans_queued = 0
        self._idle.set()
        await self._transport.close()

    async def __aenter__(self) -> OtlpExporter:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- background task --------------------------------------------------
    async def _run(self) -> None:
        queue = self._queue
        exports = self._exports
        timed_out = False
        try:
            while True:
                if len(exports) >= self.max_concurrent:
                    await self._wait_wake(None)  # a finishing export wakes us
                    continue
                if queue and (
                    timed_out
                    or len(queue) >= self.batch_size
                    or self._stopping
                    or self._flush_requested
                ):
                    timed_out = False
                    self._start_export(self._take_batch())
                    continue
                if not queue and not exports:
                    self._flush_requested = False
                    self._idle.set()
                    if self._stopping:
                        return
                # A partial batch goes out once flush_interval passes without news.
                timed_out = not await self._wait_wake(self.flush_interval)
        finally:
            # However this task ends, nobody may wait for room it will never make.
            self._room.set()
            # Cancelled by stop(): the batches in flight stay counted in _inflight.
            for task in exports:
                task.cancel()
            if exports:
                await asyncio.gather(*exports, return_exceptions=True)

    async def _wait_wake(self, timeout: float | None) -> bool:
        """Sleep until submit (a full batch), flush, stop or a finished export; False on timeout.

        Callers check their conditions first, then call this without yielding in
        between, so clearing the event loses no wake-up.
        """
        self._wake.clear()
        return await _wait(self._wake, timeout)

    def _take_batch(self) -> list[EncodedSpan]:
        """The next request's spans off the queue: up to ``batch_size`` of them and, framed,
        at most ``max_request_bytes`` (the first span always: one bigger than that goes
        alone, and a receiver that refuses it costs that span only)."""
        queue = self._queue
        limit = self.max_request_bytes
        count = min(self.batch_size, len(queue))
        batch = list(islice(queue, count))
        # Most batches fit whole: measured without a step per span (C-level map and sum).
        framed = (
            count * SPAN_FRAMING
            + sum(map(len, map(itemgetter(1), batch)))
            + sum(map(group_framing, set(map(itemgetter(0), batch))))
        )
        if framed <= limit:
            for _ in range(count):
                queue.popleft()
            return batch
        batch = []
        size = 0
        services: set[str] = set()
        for _ in range(count):
            service_name, body = queue[0]
            grown = size + len(body) + SPAN_FRAMING
            if service_name not in services:
                grown += group_framing(service_name)
            if batch and grown > limit:
                break
            services.add(service_name)
            size = grown
            batch.append(queue.popleft())
        return batch

    def _start_export(self, batch: list[EncodedSpan]) -> None:
        self.stats.spans_queued = len(self._queue)
        self._room.set()  # the batch left the queue: a submit_blocking caller may go on
        self._inflight += len(batch)
        task = asyncio.get_running_loop().create_task(self._export_one(batch))
        self._exports.add(task)
        task.add_done_callback(self._export_done)

    def _export_done(self, task: asyncio.Task[None]) -> None:
        self._exports.discard(task)
        self._wake.set()

    async def _export_one(self, batch: list[EncodedSpan]) -> None:
        try:
            await self._export_batch(batch)
        except Exception:
            # A bug here must not end span export for the life of the worker.
            log.exception("OTLP export of %d spans failed unexpectedly", len(batch))
            self.stats.spans_dropped_total[DropReason.EXPORT_FAILED] += len(batch)
        # Not reached when cancelled at stop(): stop() counts those spans dropped.
        self._inflight -= len(batch)

    async def _export_batch(self, batch: list[EncodedSpan]) -> None:
        body = frame_request(batch)
        attempt = 0
        while True:
            try:
                async with asyncio.timeout(self.timeout * 2):  # in case a transport hangs
                    rejected = await self._transport.export(body, self.timeout)
            except TimeoutError as exc:
                error: ExportError = ExportRequestFailed(
                    f"{self.endpoint.display}: timed out", retriable=True
                )
                error.__cause__ = exc
            except ExportError as exc:
                error = exc
            else:
                self._record_success(len(batch), rejected)
                return
            outcome = Outcome.RETRIABLE_ERROR if error.retriable else Outcome.PERMANENT_ERROR
            self.stats.export_requests_total[outcome] += 1
            if error.retriable and attempt < self.max_retries:
                await self.backoff.wait(attempt, getattr(error, "retry_after", None))
                attempt += 1
                continue
            self._record_failure(len(batch), error, attempt)
            return

    def _record_success(self, sent: int, rejected: int) -> None:
        rejected = max(0, min(rejected, sent))
        self.stats.export_requests_total[Outcome.SUCCESS] += 1
        self.stats.spans_exported_total += sent - rejected
        if rejected:
            self.stats.spans_dropped_total[DropReason.REJECTED] += rejected
            log.warning("OTLP collector rejected %d of %d spans", rejected, sent)
        self._queue_full_logged = False
        if self._failing:
            self._failing = False
            log.info("OTLP export to %s recovered", self.endpoint.display)

    def _record_failure(self, dropped: int, error: ExportError, retries: int) -> None:
        self.stats.spans_dropped_total[DropReason.EXPORT_FAILED] += dropped
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        log.log(
            level,
            "OTLP export failed after %d retries, %d spans dropped: %s",
            retries,
            dropped,
            error,
        )


async def _wait(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait for ``event`` up to ``timeout`` seconds (None: forever); False on timeout."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """An HTTP ``Retry-After`` as seconds from ``now`` (epoch seconds; the wall clock when
    None): delta-seconds or an HTTP date (RFC 9110); None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is read as such
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, seconds)
    return seconds if seconds >= 0 and math.isfinite(seconds) else None


def _rejected_spans(payload: bytes) -> int:
    if not payload:
        return 0
    response = ExportTraceServiceResponse()
    try:
        response.ParseFromString(payload)
    except Exception:  # a 2xx with an odd body is still a delivery
        return 0
    return int(response.partial_success.rejected_spans)

"""The OTLP/gRPC transport's connections, against a real gRPC server on loopback.

A collector that accepts the TCP connection but answers nothing yet (stopped with
SIGSTOP, overloaded, starting: the kernel completes the connection from its backlog)
must hold a fresh connection's request for the export timeout, as it would on an
established connection, and take it once it answers. The proxy in front of the
test receiver (``HeldCollector``) accepts connections and passes no byte on until
released.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest

from pipeline.core.otlp_wire import frame_request
from pipeline.dev.embedded.otlp_receiver import HOST, OtlpReceiver
from pipeline.errors import ExportRequestFailed
from pipeline.sinks.otlp.exporter import (
    GRPC_RECONNECT_BACKOFF_MS,
    GrpcTransport,
    grpc_channel_options,
    parse_endpoint,
)
from tests.oracles.otlp_reference import encode_span, numbered_spans

pytestmark = [pytest.mark.integration, pytest.mark.expected_seconds(3)]

# Far longer than the test waits while the collector is held: no try ends on its own.
EXPORT_TIMEOUT_S = 60.0
# How long the held collector is watched: longer than the 200 ms a connection attempt
# used to get (then every request waiting for it failed with UNAVAILABLE).
HELD_S = 1.0


class HeldCollector:
    """A TCP proxy to ``upstream`` (host, port) that accepts connections at once and
    relays nothing, in either direction, until ``release()``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.accepted = asyncio.Event()
        self._released = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"http://{HOST}:{self._server.sockets[0].getsockname()[1]}"

    def release(self) -> None:
        self._released.set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[HeldCollector]:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        try:
            yield self
        finally:
            self._server.close()
            for pipe in self._pipes:
                pipe.cancel()
            await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.set()
        await self._released.wait()
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pipe = asyncio.create_task(_pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    finally:
        sink.close()


def request(gray_id: str, n: int) -> bytes:
    return frame_request([encode_span(data) for data in numbered_spans(n, gray_id)])


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver.start() as running:
        yield running


async def test_a_fresh_connection_waits_for_a_collector_that_does_not_answer_yet(
    receiver: OtlpReceiver,
) -> None:
    port = int(receiver.grpc_endpoint.rsplit(":", 1)[1])
    async with HeldCollector((HOST, port)).running() as held:
        transport = GrpcTransport(
            parse_endpoint(held.endpoint), {}, connect_timeout=EXPORT_TIMEOUT_S
        )
        try:
            export = asyncio.create_task(transport.export(request("held0001", 3), EXPORT_TIMEOUT_S))
            await asyncio.wait_for(held.accepted.wait(), timeout=30)
            await asyncio.sleep(HELD_S)
            # Connected, unanswered: the request waits (it used to fail with UNAVAILABLE
            # when gRPC gave up the connection attempt after 200 ms).
            assert not export.done(), export.exception()
            held.release()
            assert await asyncio.wait_for(export, timeout=30) == 0  # none rejected
        finally:
            await transport.close()
    assert len(receiver.find("gray.id", "held0001")) == 3


async def test_a_refused_connection_still_fails_at_once(receiver: OtlpReceiver) -> None:
    endpoint = receiver.grpc_endpoint
    receiver.down()
    transport = GrpcTransport(parse_endpoint(endpoint), {}, connect_timeout=EXPORT_TIMEOUT_S)
    try:
        with pytest.raises(ExportRequestFailed, match="UNAVAILABLE") as info:
            # Bounded far below the connect timeout: no wait for an answer that cannot come.
            await asyncio.wait_for(
                transport.export(request("refused1", 1), EXPORT_TIMEOUT_S), timeout=30
            )
        assert info.value.retriable
    finally:
        await transport.close()


def test_connection_attempts_last_as_long_as_an_export_try() -> None:
    options = dict(grpc_channel_options(2.5))
    # gRPC's minimum connect timeout (not a backoff, despite its name).
    assert options["grpc.min_reconnect_backoff_ms"] == 2500
    # Reconnecting after a failed attempt stays quick.
    assert set(GRPC_RECONNECT_BACKOFF_MS) <= set(options.items())
    assert options["grpc.max_reconnect_backoff_ms"] <= 5000

"""The exporter's queue, batching and retry policy, against a fake transport."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from pipeline.config import load_settings
from pipeline.core.otlp_wire import EncodedSpan
from pipeline.errors import ConfigError, ExportRequestFailed
from pipeline.sinks.otlp.exporter import (
    Endpoint,
    OtlpExporter,
    grpc_retriable,
    parse_endpoint,
    parse_headers,
    retry_after_seconds,
)
from pipeline.sinks.otlp.grpc_status import retry_delay, status_with_retry_info
from tests.oracles.otlp_reference import (
    SpanData,
    encode_span,
    encode_spans,
    numbered_spans,
    request_to_dicts,
)

Outcome = BaseException | int | None  # raise it / rejected spans / plain success


class FakeTransport:
    """Follows ``script`` (then ``default``) per request; blocks while ``gate`` is closed."""

    def __init__(self, *script: Outcome, default: Outcome = None) -> None:
        self.script = list(script)
        self.default = default
        self.requests: list[bytes] = []
        self.gate: asyncio.Event | None = None
        self.closed = False

    async def export(self, body: bytes, timeout: float) -> int:
        self.requests.append(body)
        if self.gate is not None:
            await self.gate.wait()
        outcome = self.script.pop(0) if self.script else self.default
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome or 0

    async def close(self) -> None:
        self.closed = True

    def parsed(self) -> list[ExportTraceServiceRequest]:
        return [ExportTraceServiceRequest.FromString(body) for body in self.requests]

    def batch_sizes(self) -> list[int]:
        return [
            sum(len(ss.spans) for rs in r.resource_spans for ss in rs.scope_spans)
            for r in self.parsed()
        ]


def spans(n: int) -> list[EncodedSpan]:
    """What the batch handler submits: encoded spans."""
    return [encode_span(data) for data in numbered_spans(n)]


def exporter(transport: FakeTransport, **kwargs: Any) -> OtlpExporter:
    options: dict[str, Any] = {
        "queue_size": 100,
        "batch_size": 10,
        "max_retries": 3,
        "timeout": 5.0,
        "flush_interval": 0.01,
        "retry_initial": 0.001,
        "retry_max": 0.002,
    }
    options.update(kwargs)
    return OtlpExporter("http://collector:4317", {}, transport=transport, **options)


def retriable() -> ExportRequestFailed:
    return ExportRequestFailed("collector down", retriable=True)


def permanent() -> ExportRequestFailed:
    return ExportRequestFailed("bad request", retriable=False)


def test_submit_is_a_plain_call_and_the_queue_is_bounded() -> None:
    assert not inspect.iscoroutinefunction(OtlpExporter.submit)
    ex = exporter(FakeTransport(), queue_size=5)
    assert ex.submit(spans(3)) == 3
    assert ex.submit(spans(5)) == 2
    assert ex.stats.spans_queued == 5
    assert ex.stats.spans_dropped_total["queue_full"] == 3
    assert ex.stats.spans_dropped == 3


async def test_a_stuck_collector_never_blocks_submit() -> None:
    transport = FakeTransport()
    transport.gate = asyncio.Event()  # never opened: the export hangs
    ex = exporter(transport, queue_size=10, batch_size=4, timeout=60.0)
    ex.start()
    ex.submit(spans(4))
    for _ in range(100):
        if transport.requests:
            break
        await asyncio.sleep(0)
    assert len(transport.requests) == 1  # that batch is now stuck in flight
    assert ex.submit(spans(15)) == 10
    assert ex.stats.spans_dropped_total["queue_full"] == 5
    await ex.stop(flush_timeout=0.01)
    assert ex.stats.spans_dropped_total["shutdown"] == 14  # 10 queued + 4 in flight
    assert ex.stats.spans_exported_total == 0
    assert transport.closed


async def settle(transport: FakeTransport, requests: int) -> None:
    for _ in range(200):
        if len(transport.requests) >= requests:
            break
        await asyncio.sleep(0)
    for _ in range(20):  # and let anything beyond that show up
        await asyncio.sleep(0)


@pytest.mark.parametrize("max_concurrent", [1, 3])
async def test_up_to_max_concurrent_requests_are_in_flight(max_concurrent: int) -> None:
    transport = FakeTransport()
    transport.gate = asyncio.Event()
    ex = exporter(transport, batch_size=2, max_concurrent=max_concurrent)
    ex.start()
    ex.submit(spans(10))
    await settle(transport, max_concurrent)
    assert len(transport.requests) == max_concurrent  # the rest wait for a free slot
    assert ex.stats.spans_queued == 10 - 2 * max_concurrent
    transport.gate.set()
    assert await ex.flush(timeout=10)
    assert transport.batch_sizes() == [2] * 5
    assert ex.stats.spans_exported_total == 10
    await ex.stop()


async def test_stop_counts_every_batch_in_flight_as_dropped() -> None:
    transport = FakeTransport()
    transport.gate = asyncio.Event()  # never opened
    ex = exporter(transport, batch_size=2, max_concurrent=3, timeout=60.0)
    ex.start()
    ex.submit(spans(9))
    await settle(transport, 3)
    await ex.stop(flush_timeout=0.01)
    assert ex.stats.spans_dropped_total["shutdown"] == 9  # 3 queued + 3 batches of 2 in flight
    assert ex.stats.spans_exported_total == 0


async def test_flush_waits_for_every_request_in_flight() -> None:
    transport = FakeTransport()
    transport.gate = asyncio.Event()
    ex = exporter(transport, batch_size=2, max_concurrent=4)
    ex.start()
    ex.submit(spans(6))
    await settle(transport, 3)
    assert not await ex.flush(timeout=0.05)  # the queue is empty, the requests are not done
    transport.gate.set()
    assert await ex.flush(timeout=10)
    assert ex.stats.spans_exported_total == 6
    await ex.stop()


def test_max_concurrent_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        exporter(FakeTransport(), max_concurrent=0)


async def test_batches_of_batch_size() -> None:
    transport = FakeTransport()
    ex = exporter(transport, batch_size=3)
    ex.submit(spans(7))
    ex.start()
    assert await ex.flush(timeout=10)
    assert transport.batch_sizes() == [3, 3, 1]
    assert ex.stats.spans_exported_total == 7
    assert ex.stats.export_requests_total == {
        "success": 3,
        "retriable_error": 0,
        "permanent_error": 0,
    }
    await ex.stop()


async def test_requests_are_the_encoded_spans_in_submit_order() -> None:
    transport = FakeTransport()
    ex = exporter(transport, batch_size=3)
    submitted = numbered_spans(5)
    ex.submit([encode_span(data) for data in submitted])
    ex.start()
    assert await ex.flush(timeout=10)
    await ex.stop()
    assert transport.parsed() == [encode_spans(submitted[:3]), encode_spans(submitted[3:])]
    exported = [d for r in transport.parsed() for d in request_to_dicts(r)]
    assert [d["span_id"] for d in exported] == [s.span_id.hex() for s in submitted]


async def test_retries_are_bounded_then_the_batch_is_dropped() -> None:
    transport = FakeTransport(default=retriable())
    ex = exporter(transport, max_retries=3)
    ex.start()
    ex.submit(spans(5))
    assert await ex.flush(timeout=10)
    assert len(transport.requests) == 4  # the first try + 3 retries
    assert ex.stats.export_requests_total["retriable_error"] == 4
    assert ex.stats.spans_dropped_total["export_failed"] == 5
    assert ex.stats.spans_exported_total == 0
    await ex.stop()


async def test_permanent_errors_are_not_retried() -> None:
    transport = FakeTransport(default=permanent())
    ex = exporter(transport, max_retries=3)
    ex.start()
    ex.submit(spans(5))
    assert await ex.flush(timeout=10)
    assert len(transport.requests) == 1
    assert ex.stats.export_requests_total["permanent_error"] == 1
    assert ex.stats.spans_dropped_total["export_failed"] == 5
    await ex.stop()


async def test_zero_retries() -> None:
    transport = FakeTransport(default=retriable())
    ex = exporter(transport, max_retries=0)
    ex.start()
    ex.submit(spans(2))
    assert await ex.flush(timeout=10)
    assert len(transport.requests) == 1
    await ex.stop()


async def test_a_retry_that_succeeds_exports_the_batch() -> None:
    transport = FakeTransport(retriable(), retriable(), None)
    ex = exporter(transport)
    ex.start()
    ex.submit(spans(5))
    assert await ex.flush(timeout=10)
    assert ex.stats.spans_exported_total == 5
    assert ex.stats.export_requests_total == {
        "success": 1,
        "retriable_error": 2,
        "permanent_error": 0,
    }
    assert ex.stats.spans_dropped == 0
    # The retried request is the same batch, not a re-encoding of other spans.
    assert transport.requests[0] == transport.requests[2]
    await ex.stop()


async def test_partially_rejected_spans_are_counted() -> None:
    transport = FakeTransport(2)
    ex = exporter(transport)
    ex.start()
    ex.submit(spans(5))
    assert await ex.flush(timeout=10)
    assert ex.stats.spans_exported_total == 3
    assert ex.stats.spans_dropped_total["rejected"] == 2
    await ex.stop()


async def test_a_hanging_transport_is_cut_off() -> None:
    transport = FakeTransport()
    transport.gate = asyncio.Event()
    ex = exporter(transport, timeout=0.01, max_retries=1)
    ex.start()
    ex.submit(spans(3))
    assert await ex.flush(timeout=30)
    assert len(transport.requests) == 2
    assert ex.stats.export_requests_total["retriable_error"] == 2
    assert ex.stats.spans_dropped_total["export_failed"] == 3
    await ex.stop()


async def test_an_unexpected_error_costs_one_batch_only() -> None:
    transport = FakeTransport(RuntimeError("bug"), None)
    ex = exporter(transport, batch_size=2)
    ex.submit(spans(4))
    ex.start()
    assert await ex.flush(timeout=10)
    assert ex.stats.spans_dropped_total["export_failed"] == 2
    assert ex.stats.spans_exported_total == 2
    await ex.stop()


async def test_stop_flushes_then_refuses_new_spans() -> None:
    transport = FakeTransport()
    ex = exporter(transport, flush_interval=60.0)  # only stop() can trigger this export
    ex.start()
    ex.submit(spans(5))
    await ex.stop(flush_timeout=10)
    assert ex.stats.spans_exported_total == 5
    assert transport.closed
    assert ex.submit(spans(2)) == 0
    assert ex.stats.spans_dropped_total["shutdown"] == 2


async def test_partial_batches_go_out_after_the_flush_interval() -> None:
    transport = FakeTransport()
    ex = exporter(transport, batch_size=100, flush_interval=0.01)
    ex.start()
    ex.submit(spans(3))
    for _ in range(10_000):
        if transport.requests:
            break
        await asyncio.sleep(0.001)
    assert transport.batch_sizes() == [3]
    await ex.stop()


async def test_context_manager_starts_and_stops() -> None:
    transport = FakeTransport()
    async with exporter(transport) as ex:
        ex.submit(spans(1))
    assert ex.stats.spans_exported_total == 1
    assert transport.closed


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://localhost:4317", Endpoint("grpc", "localhost:4317", False)),
        ("https://otel.example.com", Endpoint("grpc", "otel.example.com:4317", True)),
        ("http://collector:4317/", Endpoint("grpc", "collector:4317", False)),
        ("http://[::1]:4317", Endpoint("grpc", "[::1]:4317", False)),
        (
            "http://localhost:4318/v1/traces",
            Endpoint("http", "http://localhost:4318/v1/traces", False),
        ),
        (
            " https://api.example.com/otlp/v1/traces ",
            Endpoint("http", "https://api.example.com/otlp/v1/traces", True),
        ),
    ],
)
def test_protocol_follows_the_endpoint(url: str, expected: Endpoint) -> None:
    assert parse_endpoint(url) == expected


@pytest.mark.parametrize(
    "url", ["localhost:4317", "grpc://collector:4317", "http://collector:4318/v1/logs", "http://"]
)
def test_unusable_endpoints_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="GRAYSCOPE_OTLP_ENDPOINT"):
        parse_endpoint(url)


def test_credentials_in_the_url_are_not_in_the_display_form() -> None:
    endpoint = parse_endpoint("https://user:s3cret@collector:4318/v1/traces?key=s3cret")
    assert endpoint.display == "https://collector:4318/v1/traces"
    assert endpoint.url == "https://user:s3cret@collector:4318/v1/traces?key=s3cret"
    assert parse_endpoint("http://u:s3cret@collector:4317").display == "grpc+http://collector:4317"


def test_headers_are_parsed_and_percent_decoded() -> None:
    assert parse_headers("") == {}
    assert parse_headers("Authorization=Basic%20abc%3D, x-team = gray ,") == {
        "authorization": "Basic abc=",
        "x-team": "gray",
    }


def test_a_bad_header_entry_does_not_echo_its_value() -> None:
    with pytest.raises(ConfigError) as info:
        parse_headers("a=b,apikey-s3cret")
    assert "s3cret" not in str(info.value)
    assert "entry 2" in str(info.value)


def test_from_settings() -> None:
    assert OtlpExporter.from_settings(load_settings(otlp_endpoint="").otlp) is None
    ex = OtlpExporter.from_settings(
        load_settings(
            otlp_endpoint="http://collector:4318/v1/traces",
            otlp_headers="x-api-key=k",
            otlp_queue_size=7,
            otlp_batch_size=3,
            otlp_max_retries=1,
            otlp_timeout=2.5,
            otlp_concurrent_exports=2,
            otlp_when_full="block",
            otlp_max_request_bytes=100_000,
        ).otlp
    )
    assert ex is not None
    assert ex.max_concurrent == 2
    assert ex.max_request_bytes == 100_000
    assert ex.when_full == "block"
    assert ex.endpoint.protocol == "http"
    assert (ex.queue_size, ex.batch_size, ex.max_retries, ex.timeout) == (7, 3, 1, 2.5)


# --- when_full=block: submit_blocking ---------------------------------------------


async def until(condition: Callable[[], bool], rounds: int = 500) -> None:
    """Let the loop run until ``condition`` holds (fails after ``rounds`` passes)."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def exported_span_ids(transport: FakeTransport) -> list[str]:
    return [d["span_id"] for r in transport.parsed() for d in request_to_dicts(r)]


def span_ids(data: list[SpanData]) -> list[str]:
    return [s.span_id.hex() for s in data]


async def test_block_waits_for_room_and_resumes_when_exports_succeed() -> None:
    transport = FakeTransport()
    transport.gate = asyncio.Event()  # the collector is slow until the gate opens
    ex = exporter(transport, queue_size=10, batch_size=5, max_concurrent=1, when_full="block")
    ex.start()
    assert await ex.submit_blocking(spans(10)) == 10  # room: no wait at all
    await until(lambda: len(transport.requests) == 1)  # 5 in flight (stuck), 5 queued
    waiting = asyncio.create_task(ex.submit_blocking(spans(8)))
    await settle(transport, 1)
    assert not waiting.done()  # 5 of the 8 went in; the worker waits for the rest
    assert ex.stats.spans_queued == 10
    assert ex.stats.spans_dropped == 0
    transport.gate.set()
    assert await asyncio.wait_for(waiting, timeout=10) == 8
    assert await ex.flush(timeout=10)
    assert ex.stats.spans_exported_total == 18
    assert ex.stats.spans_dropped == 0
    assert ex.stats.span_queue_blocked_seconds_total > 0
    await ex.stop()


async def test_block_counts_the_wait_while_it_lasts() -> None:
    # A hung collector holds one wait for as long as its exports take (minutes, with a
    # long timeout): a scrape meanwhile must see the time blocked grow, not only once
    # the wait ends (found by the worker's end-to-end test against a paused Jaeger).
    transport = FakeTransport()
    transport.gate = asyncio.Event()  # hung until opened
    ex = exporter(
        transport,
        queue_size=5,
        batch_size=5,
        max_concurrent=1,
        when_full="block",
        blocked_report_interval=0.01,
    )
    ex.start()
    assert await ex.submit_blocking(spans(10)) == 10  # 5 in flight (stuck), 5 queued
    waiting = asyncio.create_task(ex.submit_blocking(spans(3)))
    for _ in range(1000):  # up to 10 s: a loaded box may be slow, never fast enough to fail
        if ex.stats.span_queue_blocked_seconds_total >= 0.05:
            break
        await asyncio.sleep(0.01)
    assert ex.stats.span_queue_blocked_seconds_total >= 0.05
    assert not waiting.done()  # still waiting, yet counted
    during = ex.stats.span_queue_blocked_seconds_total
    transport.gate.set()
    assert await asyncio.wait_for(waiting, timeout=10) == 3
    assert ex.stats.span_queue_blocked_seconds_total >= during  # the rest of the wait added
    assert await ex.flush(timeout=10)
    assert ex.stats.spans_dropped == 0
    await ex.stop()


def test_blocked_report_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="blocked_report_interval"):
        exporter(FakeTransport(), blocked_report_interval=0)


async def test_block_drops_nothing_for_a_full_queue_and_keeps_arrival_order() -> None:
    # Three batches at once (batch_concurrency) into a queue that holds less than one:
    # each waits its turn, none is dropped, the spans leave in the order they came.
    transport = FakeTransport()
    ex = exporter(transport, queue_size=6, batch_size=4, max_concurrent=2, when_full="block")
    data = numbered_spans(45)
    batches = [data[:20], data[20:25], data[25:]]
    ex.start()
    results = await asyncio.wait_for(
        asyncio.gather(*(ex.submit_blocking([encode_span(d) for d in b]) for b in batches)),
        timeout=10,
    )
    assert results == [20, 5, 20]
    assert await ex.flush(timeout=10)
    assert ex.stats.spans_dropped_total["queue_full"] == 0
    assert ex.stats.spans_exported_total == 45
    assert exported_span_ids(transport) == span_ids(data)
    await ex.stop()


async def test_a_batch_bigger_than_the_whole_queue_goes_in_a_chunk_at_a_time() -> None:
    class Sampling(FakeTransport):
        """Records the queue's fill at every request: it never exceeds the bound."""

        queued: list[int]

        async def export(self, body: bytes, timeout: float) -> int:
            self.queued.append(ex.stats.spans_queued)
            return await super().export(body, timeout)

    transport = Sampling()
    transport.queued = []
    ex = exporter(transport, queue_size=5, batch_size=2, max_concurrent=1, when_full="block")
    data = numbered_spans(23)
    ex.start()
    assert await asyncio.wait_for(ex.submit_blocking([encode_span(d) for d in data]), 10) == 23
    assert await ex.flush(timeout=10)
    assert exported_span_ids(transport) == span_ids(data)
    assert ex.stats.spans_dropped == 0
    assert max(transport.queued) <= 5
    await ex.stop()


async def test_block_never_deadlocks_on_a_failing_collector() -> None:
    # Every export fails: each batch is dropped after its retries, which frees room,
    # so the waiting caller still gets through (its spans then count as export_failed).
    transport = FakeTransport(default=retriable())
    ex = exporter(
        transport, queue_size=4, batch_size=2, max_retries=2, max_concurrent=1, when_full="block"
    )
    ex.start()
    assert await asyncio.wait_for(ex.submit_blocking(spans(20)), timeout=10) == 20
    assert await ex.flush(timeout=10)
    assert ex.stats.spans_dropped_total["export_failed"] == 20
    assert ex.stats.spans_dropped_total["queue_full"] == 0
    assert len(transport.requests) == 10 * 3  # every batch: the first try + 2 retries
    await ex.stop()


async def test_stop_releases_the_waiting_callers() -> None:
    transport = FakeTransport()
    transport.gate = asyncio.Event()  # never opened: nothing ever leaves
    ex = exporter(
        transport, queue_size=4, batch_size=2, max_concurrent=1, timeout=60.0, when_full="block"
    )
    ex.start()
    assert await ex.submit_blocking(spans(6)) == 6  # 2 in flight, 4 queued
    await until(lambda: len(transport.requests) == 1)
    first = asyncio.create_task(ex.submit_blocking(spans(3)))
    second = asyncio.create_task(ex.submit_blocking(spans(2)))
    await settle(transport, 1)
    assert not first.done() and not second.done()
    await ex.stop(flush_timeout=0.01)
    assert await asyncio.wait_for(asyncio.gather(first, second), timeout=10) == [0, 0]
    # 4 queued + 2 in flight + the 5 never queued
    assert ex.stats.spans_dropped_total["shutdown"] == 11
    assert ex.stats.spans_dropped_total["queue_full"] == 0
    assert await ex.submit_blocking(spans(2)) == 0  # stopped: no wait at all
    assert ex.stats.spans_dropped_total["shutdown"] == 13


async def test_a_cancelled_waiter_lets_the_next_one_in() -> None:
    transport = FakeTransport()
    transport.gate = asyncio.Event()
    ex = exporter(transport, queue_size=4, batch_size=2, max_concurrent=1, when_full="block")
    ex.start()
    await ex.submit_blocking(spans(6))
    await until(lambda: len(transport.requests) == 1)
    cancelled = asyncio.create_task(ex.submit_blocking(spans(3)))
    behind = asyncio.create_task(ex.submit_blocking(spans(1)))
    await settle(transport, 1)
    cancelled.cancel()  # e.g. the worker abandons the batch at shutdown
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    transport.gate.set()
    assert await asyncio.wait_for(behind, timeout=10) == 1
    assert await ex.flush(timeout=10)
    assert ex.stats.spans_exported_total == 7
    await ex.stop()


async def test_released_waits_drop_what_does_not_fit_then_waiting_resumes() -> None:
    transport = FakeTransport()
    transport.gate = asyncio.Event()
    ex = exporter(transport, queue_size=4, batch_size=2, max_concurrent=1, when_full="block")
    ex.start()
    await ex.submit_blocking(spans(6))
    await until(lambda: len(transport.requests) == 1)
    waiting = asyncio.create_task(ex.submit_blocking(spans(3)))
    await settle(transport, 1)
    with ex.waits_released():  # a rebalance: batches in flight must not wait
        assert await asyncio.wait_for(waiting, timeout=10) == 0
        assert await ex.submit_blocking(spans(2)) == 0
    assert ex.stats.spans_dropped_total["queue_full"] == 5
    later = asyncio.create_task(ex.submit_blocking(spans(2)))
    await settle(transport, 1)
    assert not later.done()  # released no more: it waits again
    transport.gate.set()
    assert await asyncio.wait_for(later, timeout=10) == 2
    assert await ex.flush(timeout=10)
    assert ex.stats.spans_exported_total == 8
    await ex.stop()


def test_drop_newest_is_the_default_and_submit_still_never_waits() -> None:
    ex = exporter(FakeTransport(), queue_size=5)
    assert ex.when_full == "drop_newest"
    assert not inspect.iscoroutinefunction(OtlpExporter.submit)
    assert ex.submit(spans(8)) == 5
    assert ex.stats.spans_dropped_total["queue_full"] == 3
    assert ex.stats.span_queue_blocked_seconds_total == 0


def _long_spans(n: int, services: tuple[str, ...] = ("svc",), pad: int = 900) -> list[EncodedSpan]:
    """Encoded spans of about ``pad`` bytes each, round-robin over ``services``."""
    out = []
    for i, data in enumerate(numbered_spans(n)):
        data.attributes["user_agent.original"] = "u" * pad
        data.service_name = services[i % len(services)]
        out.append(encode_span(data))
    return out


@pytest.mark.parametrize("services", [("svc",), ("svc-a", "svc-b", "a-much-longer-service-name")])
async def test_requests_stay_within_max_request_bytes(services: tuple[str, ...]) -> None:
    """A batch whose framed request would pass max_request_bytes (gRPC receivers refuse
    messages over 4 MiB by default) goes out in several requests, none over the limit,
    every span once and in order."""
    transport = FakeTransport()
    limit = 10_000
    submitted = _long_spans(40, services)
    ex = exporter(transport, batch_size=30, queue_size=100, max_request_bytes=limit)
    ex.submit(submitted)
    ex.start()
    assert await ex.flush(timeout=10)
    await ex.stop()
    assert len(transport.requests) > 2
    assert all(len(body) <= limit for body in transport.requests)
    # As full as the limit allows: the next span would not have fitted.
    largest = max(len(body) for _, body in submitted)
    assert all(len(body) > limit - 2 * largest for body in transport.requests[:-1])
    exported = [d["span_id"] for r in transport.parsed() for d in request_to_dicts(r)]
    span_ids = [(i + 1).to_bytes(8, "big").hex() for i in range(1, len(submitted) + 1)]
    assert sorted(exported) == span_ids  # each once
    if len(services) == 1:  # one group per request: submit order throughout
        assert exported == span_ids
    assert ex.stats.spans_exported_total == 40


async def test_a_span_bigger_than_max_request_bytes_goes_alone() -> None:
    transport = FakeTransport()
    ex = exporter(transport, batch_size=10, max_request_bytes=2048)
    ex.submit(_long_spans(1, pad=5000) + spans(2))
    ex.start()
    assert await ex.flush(timeout=10)
    await ex.stop()
    assert transport.batch_sizes() == [1, 2]
    assert len(transport.requests[0]) > 2048


def test_max_request_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_request_bytes"):
        exporter(FakeTransport(), max_request_bytes=0)


@pytest.mark.parametrize(
    ("code", "trailers", "retriable"),
    [
        (grpc.StatusCode.UNAVAILABLE, None, True),
        (grpc.StatusCode.INVALID_ARGUMENT, None, False),
        # Over the receiver's message size: no RetryInfo, the same request fails again.
        (grpc.StatusCode.RESOURCE_EXHAUSTED, None, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, (("x-other", "v"),), False),
        # A memory limiter that may recover says so with a RetryInfo in the details.
        (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            (
                (
                    "grpc-status-details-bin",
                    status_with_retry_info(
                        grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "memory limiter", 1
                    ),
                ),
            ),
            True,
        ),
    ],
)
def test_grpc_retriable_follows_the_otlp_spec(
    code: grpc.StatusCode, trailers: Any, retriable: bool
) -> None:
    assert grpc_retriable(code, retry_delay(trailers)) is retriable


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        ("0.5", 0.5),
        ("-1", None),
        ("nan", None),
        ("soon", None),
        # RFC 9110's preferred form, and the obsolete ones it still asks clients to read.
        ("Sun, 06 Dec 2026 17:00:30 GMT", 30.0),
        ("Sunday, 06-Dec-26 17:00:30 GMT", 30.0),
        ("Sun Dec  6 17:00:30 2026", 30.0),
        ("Sun, 06 Dec 2026 16:59:00 GMT", 0.0),  # past: retry now
    ],
)
def test_retry_after_reads_seconds_and_http_dates(
    header: str | None, seconds: float | None
) -> None:
    now = datetime(2026, 12, 6, 17, 0, 0, tzinfo=UTC).timestamp()
    assert retry_after_seconds(header, now) == (None if seconds is None else pytest.approx(seconds))

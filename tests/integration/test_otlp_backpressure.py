"""``GRAYSCOPE_OTLP_WHEN_FULL`` against a real Jaeger that falls behind.

Jaeger (the suite's session instance) is paused with SIGSTOP while a batch of
spans, several times the exporter's small queue, is handed over; then resumed
with SIGCONT. In ``block`` mode the caller waits meanwhile and every span
reaches Jaeger (found by its tag search); in ``drop_newest`` mode the caller
goes on at once and what did not fit is dropped as ``queue_full``. The export
timeout is longer than the pause: the request in flight completes on SIGCONT,
so no batch is dropped as ``export_failed`` either.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pipeline.dev.stack.jaeger import JaegerQuery, JaegerServer
from pipeline.sinks.otlp.exporter import OtlpExporter
from tests.integration.jaeger_fixtures import found_in_jaeger, paused, unique_span_names
from tests.oracles.otlp_reference import SpanData, encode_span, recent_spans

pytestmark = pytest.mark.integration

SPANS = 60
QUEUE = 10
PAUSE_S = 1.5


def spans_for(service: str, gray_id: str) -> list[SpanData]:
    return recent_spans(SPANS, service, {"gray.id": gray_id})


def make_exporter(jaeger: JaegerServer, when_full: str) -> OtlpExporter:
    options: dict[str, Any] = {
        "queue_size": QUEUE,
        "batch_size": 5,
        "max_concurrent": 1,
        "timeout": 10.0,  # longer than the pause: the request in flight is not given up
        "max_retries": 3,
        "flush_interval": 0.01,
        "when_full": when_full,
    }
    return OtlpExporter(jaeger.otlp_grpc_endpoint, **options)


async def connected(exporter: OtlpExporter, service: str) -> None:
    """One span exported first, so the pause hits an established gRPC connection."""
    warm_up = spans_for(service, "warmup01")[0]
    assert exporter.submit([encode_span(warm_up)]) == 1
    assert await exporter.flush(timeout=30)
    assert exporter.stats.spans_exported_total == 1


async def test_block_mode_waits_for_a_paused_jaeger_and_loses_no_span(
    jaeger: JaegerServer, jaeger_query: JaegerQuery
) -> None:
    service, gray_id = unique_span_names("blk")
    data = spans_for(service, gray_id)
    async with make_exporter(jaeger, "block") as exporter:
        await connected(exporter, service)
        with paused(jaeger):
            handing_over = asyncio.create_task(
                exporter.submit_blocking([encode_span(s) for s in data])
            )
            await asyncio.sleep(PAUSE_S)
            # The queue (10) and one request in flight (5) hold all there is room for:
            # the caller (the worker's batch) waits instead of dropping the rest.
            assert not handing_over.done()
            assert exporter.stats.spans_queued == QUEUE
            assert exporter.stats.spans_dropped == 0
        assert await asyncio.wait_for(handing_over, timeout=60) == SPANS
        assert await exporter.flush(timeout=60)
        stats = exporter.stats
    assert stats.spans_dropped == 0, stats.spans_dropped_total
    assert stats.spans_exported_total == 1 + SPANS
    assert stats.span_queue_blocked_seconds_total >= PAUSE_S * 0.9
    found = await asyncio.to_thread(found_in_jaeger, jaeger_query, service, gray_id, data, SPANS)
    assert found == {s.span_id.hex() for s in data}


async def test_drop_newest_mode_drops_what_a_paused_jaeger_leaves_no_room_for(
    jaeger: JaegerServer, jaeger_query: JaegerQuery
) -> None:
    service, gray_id = unique_span_names("drp")
    data = spans_for(service, gray_id)
    async with make_exporter(jaeger, "drop_newest") as exporter:
        await connected(exporter, service)
        with paused(jaeger):
            # Never waits: what does not fit the queue is dropped there and then.
            assert exporter.submit([encode_span(s) for s in data]) == QUEUE
            assert exporter.stats.spans_dropped_total["queue_full"] == SPANS - QUEUE
            await asyncio.sleep(0.2)
        assert await exporter.flush(timeout=60)
        stats = exporter.stats
    assert stats.spans_exported_total == 1 + QUEUE
    assert stats.span_queue_blocked_seconds_total == 0
    found = await asyncio.to_thread(found_in_jaeger, jaeger_query, service, gray_id, data, QUEUE)
    assert found == {s.span_id.hex() for s in data[:QUEUE]}

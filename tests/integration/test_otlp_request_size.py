"""Export requests against a real Jaeger's gRPC receive limit (4 MiB by default).

A batch of spans whose request would be larger than the receiver takes is refused
whole (``RESOURCE_EXHAUSTED``: every span of it dropped as ``export_failed``).
``max_request_bytes`` (``GRAYSCOPE_OTLP_MAX_REQUEST_BYTES``, 4,000,000 by default)
cuts such a batch into requests the receiver takes: the same spans, all exported.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from pipeline.dev.stack.jaeger import JaegerQuery, JaegerServer
from pipeline.sinks.otlp.exporter import OtlpExporter
from tests.integration.jaeger_fixtures import found_in_jaeger, unique_span_names
from tests.oracles.otlp_reference import SpanData, encode_span, recent_spans

pytestmark = [pytest.mark.integration, pytest.mark.expected_seconds(10)]

SPANS = 3000
PAD = 2000  # bytes of user agent a span: ~6.5 MB of spans, more than 4 MiB


def long_spans(service: str, gray_id: str) -> list[SpanData]:
    return recent_spans(SPANS, service, {"gray.id": gray_id, "user_agent.original": "u" * PAD})


async def export_all(jaeger: JaegerServer, data: list[SpanData], **options: int) -> OtlpExporter:
    exporter = OtlpExporter(
        jaeger.otlp_grpc_endpoint,
        queue_size=SPANS,
        batch_size=SPANS,  # one batch, as far as the count goes
        max_retries=3,
        timeout=30.0,
        retry_initial=0.001,
        **options,
    )
    async with exporter:
        assert exporter.submit([encode_span(s) for s in data]) == SPANS
        assert await exporter.flush(timeout=60)
    return exporter


async def test_a_batch_over_the_receivers_limit_goes_in_requests_it_takes(
    jaeger: JaegerServer, jaeger_query: JaegerQuery
) -> None:
    service, gray_id = unique_span_names("sz")
    data = long_spans(service, gray_id)
    exporter = await export_all(jaeger, data)  # the default max_request_bytes
    stats = exporter.stats
    assert stats.spans_dropped == 0, stats.spans_dropped_total
    assert stats.spans_exported_total == SPANS
    assert stats.export_requests_total["success"] >= 2
    # Jaeger has them all (its tag search).
    found = await asyncio.to_thread(found_in_jaeger, jaeger_query, service, gray_id, data, SPANS)
    assert found == {s.span_id.hex() for s in data}


async def test_without_the_cap_the_receiver_refuses_the_request(jaeger: JaegerServer) -> None:
    """The limit is the receiver's, not ours: one request of all the spans is refused,
    and not retried (RESOURCE_EXHAUSTED without RetryInfo: the OTLP spec's permanent case)."""
    data = long_spans(f"size-{uuid.uuid4().hex[:8]}.test", "szover01")
    exporter = await export_all(jaeger, data, max_request_bytes=64_000_000)
    stats = exporter.stats
    assert stats.spans_exported_total == 0
    assert stats.spans_dropped_total["export_failed"] == SPANS
    assert stats.export_requests_total["permanent_error"] == 1

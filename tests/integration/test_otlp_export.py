"""Spans built from access records, exported over gRPC and HTTP to a real OTLP receiver."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import aiohttp
import grpc
import orjson
import pytest

from pipeline.core.model import AccessRecord, Enrichment, GeoInfo
from pipeline.core.otlp_wire import EncodedSpan
from pipeline.dev.embedded.otlp_receiver import OtlpReceiver
from pipeline.retry import Backoff
from pipeline.sinks.otlp.exporter import OtlpExporter
from tests.oracles.otlp_reference import SpanData, build_span, encode_span

pytestmark = pytest.mark.integration

START = 1_700_000_000_000_000_000


def make_exporter(url: str, headers: dict[str, str] | None = None, **options: Any) -> OtlpExporter:
    # Fast retries: these tests count requests, they do not time them.
    options = {"flush_interval": 0.01, "retry_initial": 0.01, "retry_max": 0.05, **options}
    return OtlpExporter(url, headers, **options)


@pytest.fixture(scope="module")
def shared_receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver.start() as receiver:
        yield receiver


@pytest.fixture
def receiver(shared_receiver: OtlpReceiver) -> OtlpReceiver:
    shared_receiver.fail()
    shared_receiver.clear()
    return shared_receiver


@pytest.fixture(params=["grpc", "http"])
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def endpoint(receiver: OtlpReceiver, protocol: str) -> str:
    return receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint


def make_spans(n: int, gray_id: str, first: int = 0) -> list[SpanData]:
    out = []
    for i in range(first, first + n):
        record = AccessRecord(
            dataset="envoy.access",
            timestamp_ns=START + i * 1_000_000,
            method="GET",
            uri=f"/godoc/pkg/p{i}?abt={gray_id}",
            status=503 if i % 3 == 0 else 200,
            duration_ns=7_000_000,
            user_agent="curl/8.5.0",
            request_id=f"req-{gray_id}-{i}",
        )
        enr = Enrichment(
            url_path=f"/godoc/pkg/p{i}",
            gray_id=gray_id,
            gray_id_source="query",
            stage="canary",
            version="v2",
            path_group="/godoc/pkg",
            route="/godoc/pkg/{name}",
            client_ip="203.0.113.9",
            geo=GeoInfo(country_iso_code="DE", city_name="Berlin", lat=52.52, lon=13.405),
            # Every other request carries a W3C trace context from its caller.
            trace_id=f"{i + 1:032x}" if i % 2 else None,
            span_id=f"{i + 1:016x}" if i % 2 else None,
            service_name="godoc" if i % 2 else None,
        )
        span = build_span(record, enr)
        assert span is not None
        out.append(span)
    return out


def encoded(spans: list[SpanData]) -> list[EncodedSpan]:
    return [encode_span(data) for data in spans]


async def test_spans_arrive_intact(receiver: OtlpReceiver, protocol: str) -> None:
    spans = make_spans(5, "intact01")
    exporter = make_exporter(endpoint(receiver, protocol), {"x-api-key": "k1"}, batch_size=2)
    async with exporter:
        assert exporter.submit(encoded(spans)) == 5
        assert await exporter.flush(timeout=30)
    received = {s["span_id"]: s for s in receiver.wait_for(5, timeout=10)}
    assert len(received) == 5
    for span in spans:
        got = received[span.span_id.hex()]
        assert got["trace_id"] == span.trace_id.hex()
        assert got["parent_span_id"] == (span.parent_span_id.hex() if span.parent_span_id else None)
        assert got["name"] == "GET /godoc/pkg/{name}"
        assert got["kind"] == "SPAN_KIND_SERVER"
        assert (got["start_ns"], got["end_ns"]) == (span.start_ns, span.end_ns)
        assert got["status_code"] == ("STATUS_CODE_ERROR" if span.error else "STATUS_CODE_UNSET")
        assert got["status_message"] == span.status_message
        assert got["attributes"] == span.attributes
        assert got["resource"] == {"service.name": span.service_name}
    assert {s["resource"]["service.name"] for s in received.values()} == {
        "godoc",
        "grayscope-unknown",
    }
    assert len(receiver.find("gray.id", "intact01")) == 5
    assert receiver.find("gray.id", "other") == []
    assert receiver.last_headers(protocol)["x-api-key"] == "k1"
    if protocol == "http":
        assert receiver.last_headers("http")["content-type"] == "application/x-protobuf"
    assert exporter.stats.spans_exported_total == 5
    assert exporter.stats.export_requests_total["success"] == 3
    assert exporter.stats.spans_dropped == 0


@pytest.mark.parametrize("keep", [0, 3])
async def test_receiver_keeps_only_the_newest_spans_but_counts_all(
    protocol: str, keep: int
) -> None:
    with OtlpReceiver.start(keep=keep) as bounded:
        spans = make_spans(8, "bounded1")
        # One request at a time: "newest" is arrival order, which concurrent requests shuffle.
        async with make_exporter(
            endpoint(bounded, protocol), batch_size=2, max_concurrent=1
        ) as exporter:
            exporter.submit(encoded(spans))
            assert await exporter.flush(timeout=30)
        kept = bounded.wait_for(8, timeout=10)
        assert bounded.received == 8
        newest = spans[len(spans) - keep :] if keep else []
        assert [s["span_id"] for s in kept] == [s.span_id.hex() for s in newest]


async def test_outage_drops_spans_and_export_resumes(protocol: str) -> None:
    with OtlpReceiver.start() as receiver:
        exporter = make_exporter(
            endpoint(receiver, protocol), queue_size=20, batch_size=5, max_retries=2
        )
        async with exporter:
            exporter.submit(encoded(make_spans(1, "before01")))
            assert await exporter.flush(timeout=30)
            assert exporter.stats.spans_exported_total == 1  # connected before the outage

            receiver.down()
            # submit is a plain call: it cannot wait on the network.
            assert exporter.submit(encoded(make_spans(30, "outage01"))) == 20
            assert exporter.stats.spans_dropped_total["queue_full"] == 10
            assert await exporter.flush(timeout=60)
            assert exporter.stats.spans_dropped_total["export_failed"] == 20
            assert exporter.stats.export_requests_total["retriable_error"] == 4 * 3
            assert exporter.stats.spans_exported_total == 1

            receiver.up()
            # gRPC reconnects with backoff: offer one span at a time until one gets through.
            for attempt in range(300):
                exporter.submit(encoded(make_spans(1, "back0001", first=attempt)))
                assert await exporter.flush(timeout=30)
                if exporter.stats.spans_exported_total == 2:
                    break
                await asyncio.sleep(0.1)
            assert exporter.stats.spans_exported_total == 2
        assert len(receiver.find("gray.id", "back0001")) == 1
        assert receiver.find("gray.id", "outage01") == []


@pytest.mark.parametrize(
    ("http_status", "grpc_code", "retry_delay", "requests"),
    [
        (503, grpc.StatusCode.UNAVAILABLE, None, {"http": 3, "grpc": 3}),
        # Throttled: HTTP 429 is retried; gRPC RESOURCE_EXHAUSTED only with the server's
        # RetryInfo (OTLP spec: without it, e.g. a message over the size limit, the same
        # request would be refused again).
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED, 1, {"http": 3, "grpc": 3}),
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED, None, {"http": 3, "grpc": 1}),
        (400, grpc.StatusCode.INVALID_ARGUMENT, None, {"http": 1, "grpc": 1}),
        (401, grpc.StatusCode.UNAUTHENTICATED, None, {"http": 1, "grpc": 1}),
    ],
)
async def test_only_retriable_failures_are_retried(
    receiver: OtlpReceiver,
    protocol: str,
    http_status: int,
    grpc_code: grpc.StatusCode,
    retry_delay: int | None,
    requests: dict[str, int],
) -> None:
    receiver.fail(http_status=http_status, grpc_code=grpc_code, retry_delay=retry_delay)
    exporter = make_exporter(endpoint(receiver, protocol), max_retries=2)
    async with exporter:
        exporter.submit(encoded(make_spans(4, "failing1")))
        assert await exporter.flush(timeout=30)
    assert receiver.request_count(protocol) == requests[protocol]
    assert exporter.stats.spans_dropped_total["export_failed"] == 4
    assert receiver.spans() == []


async def test_the_servers_retry_delay_is_waited(receiver: OtlpReceiver, protocol: str) -> None:
    """A throttling server's delay (gRPC RetryInfo, HTTP Retry-After) is the least
    the exporter waits before trying again, whatever its own backoff says."""
    receiver.fail(http_status=429, grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED, retry_delay=0.4)
    exporter = make_exporter(endpoint(receiver, protocol), max_retries=2, retry_max=5.0)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    exporter.backoff = Backoff(0.01, 5.0, sleep=sleep)
    async with exporter:
        exporter.submit(encoded(make_spans(2, "slowdown")))
        assert await exporter.flush(timeout=30)
    assert receiver.request_count(protocol) == 3
    assert slept == [0.4, 0.4]  # the backoff alone would have waited 5-20 ms


async def test_header_values_are_never_logged(
    receiver: OtlpReceiver, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver.fail(http_status=503, grpc_code=grpc.StatusCode.UNAVAILABLE)
    exporter = make_exporter(
        endpoint(receiver, protocol), {"authorization": "Bearer s3cr3t-t0ken"}, max_retries=1
    )
    async with exporter:
        exporter.submit(encoded(make_spans(2, "secret01")))
        assert await exporter.flush(timeout=30)
    assert receiver.last_headers(protocol)["authorization"] == "Bearer s3cr3t-t0ken"
    assert "OTLP export failed" in caplog.text
    assert "s3cr3t" not in caplog.text


async def test_json_requests_are_understood(receiver: OtlpReceiver) -> None:
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "js"}}]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "manual"},
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "parentSpanId": "eee19b7ec3c1b173",
                                "name": "GET /",
                                "kind": 2,
                                "startTimeUnixNano": "1544712660000000000",
                                "endTimeUnixNano": "1544712661000000000",
                                "attributes": [
                                    {"key": "gray.id", "value": {"stringValue": "jsonexp1"}}
                                ],
                                "status": {"code": 2},
                            }
                        ],
                    }
                ],
            }
        ]
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(receiver.http_endpoint, json=body) as response:
            assert response.status == 200
        protobuf = {"content-type": "application/x-protobuf"}
        url = receiver.http_endpoint
        async with session.post(url, data=b"\xff\xff", headers=protobuf) as response:
            assert response.status == 400
        async with session.post(receiver.http_endpoint, data=b"x") as response:
            assert response.status == 415
    [span] = receiver.find("gray.id", "jsonexp1")
    assert span["trace_id"] == "5b8efff798038103d269b633813fc60c"
    assert span["span_id"] == "eee19b7ec3c1b174"
    assert span["parent_span_id"] == "eee19b7ec3c1b173"
    assert span["status_code"] == "STATUS_CODE_ERROR"
    assert span["resource"] == {"service.name": "js"}


async def test_receiver_in_another_process() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.dev.embedded.otlp_receiver"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        endpoints = orjson.loads(process.stdout.readline())
        exporter = make_exporter(endpoints["http_endpoint"])
        async with exporter:
            exporter.submit(encoded(make_spans(3, "xproc001")))
            assert await exporter.flush(timeout=30)
        assert exporter.stats.spans_exported_total == 3
        search = endpoints["http_endpoint"].replace("/v1/traces", "/api/spans")
        async with aiohttp.ClientSession() as session:
            async with session.get(search, params={"tag": "gray.id:xproc001"}) as response:
                found = orjson.loads(await response.read())
            async with session.get(search, params={"tag": "gray.id:nothing"}) as response:
                assert orjson.loads(await response.read()) == []
        assert len(found) == 3
        assert {s["attributes"]["gray.id"] for s in found} == {"xproc001"}
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0

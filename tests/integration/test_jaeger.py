"""Jaeger finds grayscope's spans by ``gray.id``: a real Jaeger v2, directly and behind a relay.

Access-log lines go through the enrichment core and the worker's span encoder,
then grayscope's OTLP exporter (gRPC and HTTP/protobuf) sends them to Jaeger's
own receivers or to a relay collector (a second Jaeger binary, OTLP → OTLP).
Jaeger's query API must then find each request's span with the tag search a
user types into the UI (``gray.id=<id>``), with the trace id of the log, the
span name, kind, status and every attribute of ``schemas/span_attributes.json``.
The expectations are written out per line, not computed by the code under test.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

import schemas
from pipeline.config import enrich_context as context_from_settings
from pipeline.config import load_settings
from pipeline.core.enrich import EnrichContext
from pipeline.core.otlp import encode_request_span
from pipeline.core.process import Enriched, process
from pipeline.dev.stack.jaeger import JAEGER_GOGC, JaegerQuery, JaegerServer
from pipeline.geoip import GeoIPResolver
from pipeline.sinks.otlp.exporter import OtlpExporter
from tests.geoip_data import EXPECTED_GEO, write_test_dbs
from tests.integration.conftest import unique_name
from tests.integration.worker_proc import WorkerProcess
from tests.oracles.otlp_reference import build_span

pytestmark = pytest.mark.integration

PARIS = "192.0.2.44"  # documentation range, in the generated GeoIP database
BERLIN = "198.51.100.7"


@dataclass(frozen=True)
class Case:
    """One access-log line and what Jaeger must show for it."""

    line: dict[str, Any]
    gray_id: str
    trace_id: str  # 32 hex, as grayscope exports it
    name: str
    status: int
    stage: str
    version: str | None
    path_group: str
    url_path: str
    client: str


def nginx_line(host: str, ended: float, **fields: str) -> dict[str, Any]:
    """An nginx ``escape=json`` line (unset variables are "")."""
    base = {
        "time_iso8601": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(ended)),
        "msec": f"{ended:.3f}",
        "remote_addr": "10.0.0.9",
        "request_method": "GET",
        "status": "200",
        "body_bytes_sent": "512",
        "request_time": "0.042",
        "http_host": host,
        "http_user_agent": "Mozilla/5.0 (jaeger test)",
        "http_x_forwarded_for": "",
        "http_x_gray_id": "",
        "http_x_abtest_id": "",
        "http_cookie": "",
        "http_traceparent": "",
        "http_x_b3_traceid": "",
        "http_x_b3_spanid": "",
        "request_id": uuid.uuid4().hex,
    }
    return base | fields


def make_cases(host: str) -> list[Case]:
    tag = uuid.uuid4().hex[:6]
    now = time.time()
    w3c_trace = uuid.uuid4().hex
    b3_trace = uuid.uuid4().hex[:16]
    return [
        # W3C trace context; the client spoofs a left-most XFF entry: the address
        # before the trusted proxy (10.0.0.2) is the client. Canary by cookie.
        Case(
            nginx_line(
                host, now - 3,
                request_uri="/godoc/pkg/net/http?v=1.22",
                http_x_forwarded_for=f"6.6.6.6, {PARIS}, 10.0.0.2",
                http_x_gray_id=f"gray{tag}",
                http_cookie="session=abc; go_canary=1",
                http_traceparent=f"00-{w3c_trace}-00f067aa0ba902b7-01",
            ),
            gray_id=f"gray{tag}", trace_id=w3c_trace, name="GET /godoc/pkg", status=200,
            stage="canary", version="1.22", path_group="/godoc/pkg",
            url_path="/godoc/pkg/net/http", client=PARIS,
        ),
        # A 16-hex B3 trace id (left-padded to 32); X-Abtest-Id wins over X-Gray-Id;
        # a 5xx is an ERROR span.
        Case(
            nginx_line(
                host, now - 2,
                request_method="POST",
                request_uri="/blog/go1.22?v=1.23",
                status="503",
                http_x_forwarded_for=f"{BERLIN}, 172.16.0.4",
                http_x_abtest_id=f"abt{tag}",
                http_x_gray_id=f"gray{tag}x",
                http_x_b3_traceid=b3_trace,
                http_x_b3_spanid="a2fb4a1d1a96d312",
            ),
            gray_id=f"abt{tag}", trace_id=b3_trace.rjust(32, "0"), name="POST /blog/go1.22",
            status=503, stage="stable", version="1.23", path_group="/blog/go1.22",
            url_path="/blog/go1.22", client=BERLIN,
        ),
        # No trace context: the trace id is derived from nginx's $request_id; the gray
        # id comes from the query; an untrusted direct peer is the client itself.
        Case(
            nginx_line(
                host, now - 1,
                request_uri=f"/dl/go1.22.linux-amd64.tar.gz?abt=q{tag}",
                remote_addr=PARIS,
                http_x_forwarded_for="203.0.113.77",
            ),
            gray_id=f"q{tag}", trace_id="", name="GET /dl/go1.22.linux-amd64.tar.gz",
            status=200, stage="stable", version=None,
            path_group="/dl/go1.22.linux-amd64.tar.gz",
            url_path="/dl/go1.22.linux-amd64.tar.gz", client=PARIS,
        ),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def enrich_context(tmp_path_factory: pytest.TempPathFactory) -> EnrichContext:
    city, asn = write_test_dbs(tmp_path_factory.mktemp("geoip"))
    settings = load_settings(geoip_city_db=str(city), geoip_asn_db=str(asn))
    return context_from_settings(settings, GeoIPResolver.from_settings(settings.geoip))


def enrich_lines(cases: list[Case], ctx: EnrichContext) -> list[Enriched]:
    out = []
    for case in cases:
        result = process(orjson.dumps(case.line), ctx)
        assert isinstance(result, Enriched), result
        out.append(result)
    return out


async def export(endpoint: str, enriched: list[Enriched]) -> None:
    spans = [encode_request_span(e.record, e.enrichment) for e in enriched]
    exporter = OtlpExporter(endpoint, flush_interval=0.01)
    async with exporter:
        assert exporter.submit([s for s in spans if s is not None]) == len(enriched)
        assert await exporter.flush(timeout=30)
    assert exporter.stats.spans_exported_total == len(enriched), exporter.stats


def search_until_found(
    query: JaegerQuery, service: str, gray_id: str, start_ns: int, end_ns: int
) -> list[dict[str, Any]]:
    """Jaeger's tag search, repeated until it answers (batching and relays take a moment)."""
    deadline = time.monotonic() + 30
    while True:
        traces = query.find_traces(service, {"gray.id": gray_id}, start_ns=start_ns, end_ns=end_ns)
        if traces or time.monotonic() > deadline:
            return traces
        time.sleep(0.2)


def v1_tags(span: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    return {tag["key"]: (tag["type"], tag["value"]) for tag in span["tags"]}


def otlp_attributes(attributes: list[dict[str, Any]]) -> dict[str, Any]:
    """OTLP JSON attributes as {key: (kind, value)}; int64 values are JSON strings."""
    out = {}
    for attribute in attributes:
        [(kind, value)] = attribute["value"].items()
        out[attribute["key"]] = (kind, int(value) if kind == "intValue" else value)
    return out


def expected_attributes(case: Case) -> dict[str, Any]:
    geo = EXPECTED_GEO[case.client]
    values = {
        "gray.id": case.gray_id,
        "gray.stage": case.stage,
        "gray.version": case.version,
        "gray.path_group": case.path_group,
        "http.request.method": case.line["request_method"],
        "url.path": case.url_path,
        "http.route": None,  # no route rules configured
        "http.response.status_code": case.status,
        "client.address": case.client,
        "user_agent.original": case.line["http_user_agent"],
        "geo.country.iso_code": geo.country_iso_code,
        "geo.locality.name": geo.city_name,
        "geo.location.lat": geo.lat,
        "geo.location.lon": geo.lon,
    }
    assert list(values) == list(schemas.span_attributes())  # every schema name, in order
    return {name: value for name, value in values.items() if value is not None}


OTLP_KIND = {"string": "stringValue", "int": "intValue", "double": "doubleValue"}
V1_KIND = {"string": "string", "int": "int64", "double": "float64"}


def assert_found_in_jaeger(
    query: JaegerQuery, service: str, cases: list[Case], enriched: list[Enriched]
) -> None:
    kinds = schemas.span_attributes()
    start_ns = min(e.record.timestamp_ns or 0 for e in enriched) - 1_000_000_000
    end_ns = max(e.record.timestamp_ns or 0 for e in enriched) + 1_000_000_000
    for case, item in zip(cases, enriched, strict=True):
        trace_id = case.trace_id
        if not trace_id:
            # Derived from nginx's $request_id (pipeline.core.span): the reference builder's.
            reference = build_span(item.record, item.enrichment)
            assert reference is not None
            trace_id = reference.trace_id.hex()
        traces = search_until_found(query, service, case.gray_id, start_ns, end_ns)
        assert len(traces) == 1, (case.gray_id, traces)
        [trace] = traces
        [span_v1] = trace["spans"]
        # The v1 JSON model prints a trace id whose high half is zero in 16 hex digits.
        assert trace["traceID"] == (trace_id[16:] if trace_id.startswith("0" * 16) else trace_id)
        assert span_v1["operationName"] == case.name
        assert trace["processes"][span_v1["processID"]]["serviceName"] == service
        tags = v1_tags(span_v1)
        assert tags["span.kind"] == ("string", "server")
        attributes = expected_attributes(case)
        for name, value in attributes.items():
            assert tags[name] == (V1_KIND[kinds[name]], value), name
        if case.status >= 500:
            assert tags["error"] == ("bool", True)
            assert tags["otel.status_code"] == ("string", "ERROR")
        else:
            assert "error" not in tags
        # The same trace from the v3 API: OTLP as stored, 32-hex ids, typed values.
        full_id = trace_id
        otlp = query.get_trace_otlp(full_id)
        assert otlp is not None
        [resource_spans] = otlp["resourceSpans"]
        resource = otlp_attributes(resource_spans["resource"]["attributes"])
        assert resource["service.name"] == ("stringValue", service)
        [scope] = resource_spans["scopeSpans"]
        [span] = scope["spans"]
        assert span["traceId"] == full_id
        assert span["spanId"] == span_v1["spanID"]
        assert span["kind"] == 2  # SPAN_KIND_SERVER
        assert span["name"] == case.name
        assert int(span["endTimeUnixNano"]) - int(span["startTimeUnixNano"]) == 42_000_000
        if case.status >= 500:
            assert span["status"] == {"code": 2, "message": f"HTTP {case.status}"}
        else:
            assert span.get("status", {}).get("code", 0) == 0
        got = otlp_attributes(span["attributes"])
        assert got == {name: (OTLP_KIND[kinds[name]], value) for name, value in attributes.items()}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("path", ["direct", "relay"])
async def test_jaeger_finds_spans_by_gray_id(
    protocol: str,
    path: str,
    jaeger: JaegerServer,
    jaeger_relay: JaegerServer,
    jaeger_query: JaegerQuery,
    enrich_context: EnrichContext,
) -> None:
    receiver = jaeger if path == "direct" else jaeger_relay
    endpoint = receiver.otlp_grpc_endpoint if protocol == "grpc" else receiver.otlp_http_endpoint
    service = f"go-{uuid.uuid4().hex[:8]}.test"
    cases = make_cases(service)
    enriched = enrich_lines(cases, enrich_context)
    assert {e.enrichment.service_name for e in enriched} == {service}
    await export(endpoint, enriched)
    await asyncio.to_thread(assert_found_in_jaeger, jaeger_query, service, cases, enriched)
    # Another gray id finds nothing; the service is listed for the UI's drop-down.
    assert (
        jaeger_query.find_traces(
            service, {"gray.id": "nosuchid1"}, start_ns=0, end_ns=time.time_ns()
        )
        == []
    )
    assert service in jaeger_query.services()


def test_jaeger_listens_on_loopback_ports_only(jaeger: JaegerServer) -> None:
    config = orjson.loads(jaeger.config_path.read_bytes())
    endpoints = [
        config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"],
        config["receivers"]["otlp"]["protocols"]["http"]["endpoint"],
        config["extensions"]["jaeger_query"]["http"]["endpoint"],
        config["extensions"]["jaeger_query"]["grpc"]["endpoint"],
    ]
    defaults = {4317, 4318, 16685, 16686, 8888, 13133}
    for endpoint in endpoints:
        host, port = endpoint.rsplit(":", 1)
        assert host == "127.0.0.1"
        assert int(port) not in defaults
    # Jaeger's own metrics are served on the configured port, not 8888 (the receiver's
    # counters appear only once a span came in: this test may run first).
    with urllib.request.urlopen(jaeger.metrics_url, timeout=10) as response:
        assert b'target_info{service_instance_id="' in (body := response.read())
        assert b'service_name="jaeger"' in body


def test_the_all_in_one_jaeger_runs_with_a_higher_gc_target(jaeger: JaegerServer) -> None:
    """Its in-memory store is marked on every GC cycle: GOGC=JAEGER_GOGC, not Go's 100
    (bench/README.md, "Session 14"), whatever the caller's environment says."""
    assert jaeger.pid is not None
    environ = Path(f"/proc/{jaeger.pid}/environ").read_bytes().split(b"\0")
    assert f"GOGC={JAEGER_GOGC}".encode() in environ


@pytest.mark.parametrize("path", ["direct-grpc", "relay-http"])
async def test_worker_spans_reach_jaeger(
    path: str,
    jaeger: JaegerServer,
    jaeger_relay: JaegerServer,
    jaeger_query: JaegerQuery,
    enrich_context: EnrichContext,
    bootstrap: str,
    topic_factory: Any,
    produce_lines: Any,
    tmp_path: Path,
) -> None:
    """The full worker path: Kafka → ``grayscope worker`` → OTLP → (relay →) Jaeger."""
    topic = await topic_factory(partitions=2)
    dlq = await topic_factory(partitions=1, prefix="dlq")
    city, asn = write_test_dbs(tmp_path)
    endpoint = (
        jaeger.otlp_grpc_endpoint if path == "direct-grpc" else jaeger_relay.otlp_http_endpoint
    )
    env = {
        "GRAYSCOPE_KAFKA_BROKERS": bootstrap,
        "GRAYSCOPE_INPUT_TOPICS": topic,
        "GRAYSCOPE_DLQ_TOPIC": dlq,
        "GRAYSCOPE_CONSUMER_GROUP": unique_name("grayscope"),
        "GRAYSCOPE_ES_URL": "",  # spans only: the store has tests of its own
        "GRAYSCOPE_OTLP_ENDPOINT": endpoint,
        "GRAYSCOPE_GEOIP_CITY_DB": str(city),
        "GRAYSCOPE_GEOIP_ASN_DB": str(asn),
    }
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        service = f"go-{uuid.uuid4().hex[:8]}.test"
        cases = make_cases(service)
        lines = [orjson.dumps(case.line) for case in cases]
        await produce_lines(topic, lines)
        # The same lines through the core give the records the expectations are checked on.
        enriched = enrich_lines(cases, enrich_context)
        await asyncio.to_thread(assert_found_in_jaeger, jaeger_query, service, cases, enriched)
        assert worker.metric("grayscope_spans_exported_total") >= len(cases)
    finally:
        worker.kill()

"""Real producers end to end: nginx → librdkafka shippers → Kafka → worker → OpenSearch + Jaeger.

A real nginx (Debian's) serves a go.dev-like site behind an edge proxy and logs
every request in the gray-release ``structured`` text format and in an
``escape=json`` format. The test makes real HTTP requests (X-Forwarded-For
chains through trusted proxies with a spoofed left-most entry, ``X-Gray-Id`` /
``X-Abtest-Id``, ``go_canary`` cookies, ``X-Go-Stage``, ``?v=``, trace
headers). rsyslogd (imfile → omkafka) ships the text log and kcat the JSON log,
both librdkafka, onto real Kafka; ``grayscope worker`` indexes into the store
and exports spans through a relay collector to Jaeger. Each request's two
documents and its spans must say what the request said: client IP, gray id,
stage, version, path group, geo (from a generated GeoIP database), trace id.

The text format carries no request headers or cookies (only the query, the
user agent and X-Forwarded-For): its documents have the query's gray id and
the stable stage, which is what the format can tell.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.span import UNKNOWN_SERVICE
from pipeline.dev.stack.jaeger import JaegerQuery, JaegerServer
from pipeline.dev.synth import generate
from tests.geoip_data import EXPECTED_GEO, write_test_dbs
from tests.integration.conftest import unique_name
from tests.integration.ledger import stored_count, wait_until
from tests.integration.producers import NginxSite, RsyslogShipper, kcat_produce
from tests.integration.test_jaeger import search_until_found, v1_tags
from tests.integration.worker_proc import WorkerProcess

pytestmark = pytest.mark.integration

DOCUMENTS = "logs-grayscope.access-*,grayscope-access-*"


@dataclass(frozen=True)
class Expect:
    """What one format's document and span must carry."""

    gray_id: str | None
    gray_id_source: str | None
    stage: str


@dataclass(frozen=True)
class Request:
    """One HTTP request the test makes, and what grayscope must make of it."""

    via: str  # "edge" (behind the proxy) or "site" (direct)
    method: str
    target: str
    headers: dict[str, str]
    status: int
    version: str | None
    path_group: str
    client: str
    json: Expect
    text: Expect
    trace_id: str | None = None  # 32 hex, from the request's trace headers
    user_agent: str = field(default_factory=lambda: f"grayscope-test/{uuid.uuid4().hex[:10]}")


def make_requests(tag: str, host: str) -> list[Request]:
    w3c = uuid.uuid4().hex
    b3 = uuid.uuid4().hex[:16]
    common = {"Host": host}
    return [
        # A CDN/LB chain: the client spoofs 6.6.6.6; the load balancer (10.0.0.2,
        # trusted) and the edge proxy (127.0.0.1, trusted) appended theirs.
        Request(
            "edge", "GET", "/godoc/pkg/net/http?v=1.22",
            common | {
                "X-Forwarded-For": "6.6.6.6, 192.0.2.44, 10.0.0.2",
                "X-Gray-Id": f"g{tag}01",
                "Cookie": "session=x1; go_canary=1",
                "traceparent": f"00-{w3c}-00f067aa0ba902b7-01",
            },
            200, "1.22", "/godoc/pkg", "192.0.2.44",
            json=Expect(f"g{tag}01", "header", "canary"),
            text=Expect(None, None, "stable"),
            trace_id=w3c,
        ),
        # X-Abtest-Id wins over X-Gray-Id; the text format only sees the query's abt.
        Request(
            "edge", "POST", f"/blog/go1.22?abt=t{tag}&v=1.23",
            common | {
                "X-Forwarded-For": "198.51.100.7",
                "X-Abtest-Id": f"a{tag}42",
                "X-Gray-Id": f"g{tag}99",
                "X-B3-TraceId": b3,
                "X-B3-SpanId": "a2fb4a1d1a96d312",
            },
            200, "1.23", "/blog/go1.22", "198.51.100.7",
            json=Expect(f"a{tag}42", "header", "stable"),
            text=Expect(f"t{tag}", "query", "stable"),
            trace_id=b3.rjust(32, "0"),
        ),
        # Canary by header, a 5xx from the site.
        Request(
            "edge", "GET", f"/play/compile?v=1.24&abt=p{tag}",
            common | {"X-Forwarded-For": "8.8.8.8", "X-Go-Stage": "canary"},
            503, "1.24", "/play/compile", "8.8.8.8",
            json=Expect(f"p{tag}", "query", "canary"),
            text=Expect(f"p{tag}", "query", "stable"),
        ),
        # Straight to the site: the direct peer (loopback) is trusted, so the chain
        # is walked; the spoofed 203.0.113.5 before the untrusted client is not believed.
        Request(
            "site", "GET", f"/doc/install?abt=d{tag}",
            common | {"X-Forwarded-For": "203.0.113.5, 81.2.69.142"},
            200, None, "/doc/install", "81.2.69.142",
            json=Expect(f"d{tag}", "query", "stable"),
            text=Expect(f"d{tag}", "query", "stable"),
        ),
        # An invalid header gray id is ignored (not lower-cased into validity), an
        # empty ?v= is no version, and with only trusted hops the left-most is the client.
        Request(
            "edge", "GET", "/dl/?v=",
            common | {"X-Gray-Id": "UPPERCASE1"},
            200, None, "/dl", "127.0.0.1",
            json=Expect(None, None, "stable"),
            text=Expect(None, None, "stable"),
        ),
    ]  # fmt: skip


def send(site: NginxSite, request: Request) -> int:
    base = site.edge_url if request.via == "edge" else site.site_url
    data = b"q=1" if request.method == "POST" else None
    http_request = urllib.request.Request(
        base + request.target,
        data=data,
        method=request.method,
        headers=request.headers | {"User-Agent": request.user_agent},
    )
    try:
        with urllib.request.urlopen(http_request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def es(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url.rstrip("/") + path, data=data, method=method,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def stored_documents(url: str) -> list[dict[str, Any]]:
    try:
        es(url, "POST", f"/{DOCUMENTS}/_refresh")
        body = es(url, "POST", f"/{DOCUMENTS}/_search", {"size": 1000})
    except urllib.error.URLError:
        return []
    return [hit["_source"] for hit in body["hits"]["hits"]]


def wait_for_lines(path: Path, count: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_bytes().splitlines()) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"nginx wrote fewer than {count} lines to {path}")


def assert_document(doc: dict[str, Any], request: Request, expect: Expect, dataset: str) -> None:
    assert doc["event"]["dataset"] == dataset
    assert doc["http"]["request"]["method"] == request.method
    assert doc["http"]["response"]["status_code"] == request.status
    assert doc["client"]["ip"] == request.client
    assert doc["source"]["ip"] == "127.0.0.1"  # nginx's direct peer
    gray = doc["gray"]
    assert gray.get("id") == expect.gray_id
    assert gray.get("id_source") == expect.gray_id_source
    assert gray["stage"] == expect.stage
    assert gray.get("version") == request.version
    assert gray["path_group"] == request.path_group
    geo = EXPECTED_GEO.get(request.client)
    if geo is None:
        assert "geo" not in doc["client"]
    else:
        got = doc["client"]["geo"]
        assert got["country_iso_code"] == geo.country_iso_code
        assert got["city_name"] == geo.city_name
        assert got["location"] == {"lat": geo.lat, "lon": geo.lon}


def assert_span(
    query: JaegerQuery, service: str, request: Request, expect: Expect, json_format: bool
) -> None:
    assert expect.gray_id is not None
    start_ns = time.time_ns() - 600 * 10**9
    traces = search_until_found(query, service, expect.gray_id, start_ns, time.time_ns())
    spans = [
        span
        for trace in traces
        for span in trace["spans"]
        if v1_tags(span).get("user_agent.original") == ("string", request.user_agent)
    ]
    assert len(spans) == 1, (service, expect, traces)
    [span] = spans
    tags = v1_tags(span)
    assert span["operationName"] == f"{request.method} {request.path_group}"
    assert tags["span.kind"] == ("string", "server")
    assert tags["gray.id"] == ("string", expect.gray_id)
    assert tags["gray.stage"] == ("string", expect.stage)
    assert tags["gray.path_group"] == ("string", request.path_group)
    assert tags["client.address"] == ("string", request.client)
    assert tags["http.response.status_code"] == ("int64", request.status)
    if request.version is not None:
        assert tags["gray.version"] == ("string", request.version)
    geo = EXPECTED_GEO.get(request.client)
    if geo is not None:
        assert tags["geo.country.iso_code"] == ("string", geo.country_iso_code)
        assert tags["geo.locality.name"] == ("string", geo.city_name)
    assert (tags.get("error") == ("bool", True)) == (request.status >= 500)
    if json_format and request.trace_id is not None:
        expected = request.trace_id
        assert span["traceID"] == (expected[16:] if expected.startswith("0" * 16) else expected)


async def test_nginx_through_rsyslog_and_kcat_to_store_and_jaeger(
    bootstrap: str,
    topic_factory: Any,
    store: Any,
    jaeger_relay: JaegerServer,
    jaeger_query: JaegerQuery,
    tmp_path: Path,
) -> None:
    tag = uuid.uuid4().hex[:6]
    host = f"go-{tag}.test"
    requests = make_requests(tag, host)
    text_topic = await topic_factory(partitions=2, prefix="nginx-text")
    json_topic = await topic_factory(partitions=2, prefix="nginx-json")
    dlq = await topic_factory(partitions=1, prefix="dlq")

    with NginxSite(tmp_path / "nginx").start() as site:
        for request in requests:
            assert await asyncio.to_thread(send, site, request) == request.status
        wait_for_lines(site.structured_log, len(requests))
        wait_for_lines(site.json_log, len(requests))

    # rsyslog tails the text log into Kafka; kcat sends the JSON log.
    shipper = RsyslogShipper(tmp_path / "rsyslog", site.structured_log, bootstrap, text_topic)
    await asyncio.to_thread(kcat_produce, bootstrap, json_topic, site.json_log)

    city, asn = write_test_dbs(tmp_path)
    env = {
        "GRAYSCOPE_KAFKA_BROKERS": bootstrap,
        "GRAYSCOPE_INPUT_TOPICS": f"{text_topic},{json_topic}",
        "GRAYSCOPE_DLQ_TOPIC": dlq,
        "GRAYSCOPE_CONSUMER_GROUP": unique_name("grayscope"),
        "GRAYSCOPE_ES_URL": store.url,
        "GRAYSCOPE_OTLP_ENDPOINT": jaeger_relay.otlp_http_endpoint,
        "GRAYSCOPE_GEOIP_CITY_DB": str(city),
        "GRAYSCOPE_GEOIP_ASN_DB": str(asn),
    }
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    with shipper.start():
        try:
            worker.wait_ready()
            deadline = time.monotonic() + 90
            docs: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                docs = [
                    d for d in await asyncio.to_thread(stored_documents, store.url)
                    if d.get("user_agent", {}).get("original", "").startswith("grayscope-test/")
                ]  # fmt: skip
                if len(docs) >= 2 * len(requests):
                    break
                await asyncio.sleep(0.5)
            assert len(docs) == 2 * len(requests), (len(docs), worker.tail())
            for request in requests:
                mine = [d for d in docs if d["user_agent"]["original"] == request.user_agent]
                # Only the JSON format logs nginx's $request_id.
                by_format = {"json" if "id" in d["http"]["request"] else "text": d for d in mine}
                assert len(mine) == 2 and set(by_format) == {"json", "text"}, mine
                assert_document(by_format["json"], request, request.json, "nginx.access")
                assert_document(by_format["text"], request, request.text, "nginx.access")
                assert by_format["json"]["service"]["name"] == host
                if request.trace_id is not None:
                    assert by_format["json"]["trace"]["id"] == request.trace_id
            for request in requests:
                if request.json.gray_id is not None:
                    await asyncio.to_thread(
                        assert_span, jaeger_query, host, request, request.json, True
                    )
                if request.text.gray_id is not None:
                    await asyncio.to_thread(
                        assert_span, jaeger_query, UNKNOWN_SERVICE, request, request.text, False
                    )
        finally:
            worker.kill()


async def test_batches_librdkafka_compressed_with_every_codec_are_all_stored(
    bootstrap: str, topic_factory: Any, store: Any, tmp_path: Path
) -> None:
    """Shippers built on librdkafka (kcat here; Vector, Fluent Bit, rsyslog's omkafka)
    compress batches with gzip, snappy, lz4 or zstd: the worker reads every one."""
    codecs = ("gzip", "snappy", "lz4", "zstd")
    lines = list(generate(400, seed=24))
    log = tmp_path / "lines.log"
    log.write_bytes(b"\n".join(lines) + b"\n")
    topics = {codec: await topic_factory(partitions=2, prefix=f"z-{codec}") for codec in codecs}
    for codec, topic in topics.items():
        await asyncio.to_thread(kcat_produce, bootstrap, topic, log, codec)
    env = {
        "GRAYSCOPE_KAFKA_BROKERS": bootstrap,
        "GRAYSCOPE_INPUT_TOPICS": ",".join(topics.values()),
        "GRAYSCOPE_DLQ_TOPIC": await topic_factory(partitions=1, prefix="dlq"),
        "GRAYSCOPE_CONSUMER_GROUP": unique_name("grayscope"),
        "GRAYSCOPE_ES_URL": store.url,
        "GRAYSCOPE_OTLP_ENDPOINT": "",
    }

    def counts() -> dict[str, int]:
        return {codec: stored_count(store.url, topic) for codec, topic in topics.items()}

    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        try:
            await wait_until(
                lambda: all(n >= len(lines) for n in counts().values()), 90, "every codec's lines"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {counts()}\n{worker.tail()}") from None
        assert counts() == dict.fromkeys(codecs, len(lines)), (counts(), worker.tail())
        assert worker.proc is not None and worker.proc.poll() is None
    finally:
        worker.kill()

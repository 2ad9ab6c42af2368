"""The Elasticsearch sink against real OpenSearch 2.19 (daily indices and data
streams) and against a small fake Elasticsearch 8/9 that records what it is sent
(no Elasticsearch server is available to the tests: the request-level tests keep
its media types, auth headers and status mapping)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from pipeline.core.bulk import BulkItem, build_bulk_body
from pipeline.dev.stack.opensearch import OpenSearchNode
from pipeline.dev.stack.process import free_port
from pipeline.errors import StoreRejected, StoreUnavailable
from pipeline.sinks.elasticsearch.classify import AllItemsDone
from pipeline.sinks.elasticsearch.service import ELASTICSEARCH, OPENSEARCH, ElasticsearchService
from pipeline.sinks.elasticsearch.sink import ElasticsearchSink
from schemas import DATA_STREAM_NAME, VERDICTS_INDEX, component_templates, index_templates

pytestmark = [pytest.mark.integration, pytest.mark.expected_seconds(40)]


@pytest.fixture
async def service(store: OpenSearchNode) -> AsyncIterator[ElasticsearchService]:
    svc = ElasticsearchService([store.url], request_timeout=10)
    yield svc
    await svc.close()


def access_doc(n: int, day: str, client_ip: str = "203.0.113.7", version: str = "v2") -> dict:
    return {
        "@timestamp": f"{day}T10:{n % 60:02d}:00.123Z",
        "event": {"dataset": "envoy.access", "duration": 12_000_000 + n},
        "http": {
            "request": {"method": "GET", "id": f"9f1c2b7e-{n:04d}"},
            "response": {"status_code": 200 if n % 7 else 503, "body": {"bytes": 512 + n}},
            "version": "1.1",
            "route": "/godoc/pkg/{name}",
        },
        "url": {
            "original": f"/godoc/pkg/net/http?v={version}&abt=ab12cd34",
            "path": "/godoc/pkg/net/http",
            "query": f"v={version}&abt=ab12cd34",
        },
        "user_agent": {"original": "Mozilla/5.0 (X11; Linux x86_64) Firefox/126.0"},
        "source": {"ip": "10.0.0.5"},
        "client": {
            "ip": client_ip,
            "geo": {
                "country_iso_code": "US",
                "country_name": "United States",
                "continent_code": "NA",
                "region_iso_code": "US-CA",
                "city_name": "Mountain View",
                "location": {"lat": 37.386, "lon": -122.0838},
            },
            "as": {"number": 15169, "organization": {"name": "GOOGLE"}},
        },
        "trace": {"id": "4bf92f3577b34da6a3ce929d0e0e4736"},
        "service": {"name": "godoc"},
        "upstream": {"cluster": "outbound|8080|canary|godoc.default.svc.cluster.local"},
        "gray": {
            "id": "ab12cd34",
            "id_source": "query",
            "stage": "canary",
            "version": version,
            "path_group": "/godoc/pkg",
        },
    }


def index_sink(svc: ElasticsearchService, **kwargs: Any) -> ElasticsearchSink:
    return ElasticsearchSink(
        svc, "index", kwargs.pop("retry_initial", 0.05), kwargs.pop("retry_max", 0.5), **kwargs
    )


def items_for(sink: ElasticsearchSink, docs: list[dict], prefix: str) -> list[BulkItem]:
    return [sink.item(doc, f"{prefix}-{n}", ref=n) for n, doc in enumerate(docs)]


def count(server: OpenSearchNode, index: str) -> int:
    server.request("POST", f"/{index}/_refresh")
    result: int = server.request("GET", f"/{index}/_count")["count"]
    return result


async def test_flavour_is_opensearch(service: ElasticsearchService) -> None:
    info = await service.connect()
    assert info.distribution == OPENSEARCH
    assert info.major >= 2
    assert "opensearch" in repr(service)
    assert await service.ping()


async def test_templates_install_idempotently(
    service: ElasticsearchService, store: OpenSearchNode
) -> None:
    await service.install_templates()
    await service.install_templates()
    listed = store.request("GET", "/_index_template")["index_templates"]
    names = {t["name"] for t in listed}
    assert set(index_templates()) <= names
    daily = next(t for t in listed if t["name"] == "grayscope-access-daily")["index_template"]
    assert daily["index_patterns"] == ["grayscope-access-*"]
    assert daily["composed_of"] == ["grayscope-access-settings", "grayscope-access-mappings"]
    for name in component_templates():
        assert store.request("GET", f"/_component_template/{name}")["component_templates"]


async def test_index_mode_documents_land(
    service: ElasticsearchService, store: OpenSearchNode
) -> None:
    await service.install_templates()
    sink = index_sink(service)
    docs = [access_doc(n, "2024-05-02") for n in range(30)]
    # 23:30 at -02:00 is 01:30 UTC the next day.
    docs += [
        {**access_doc(n, "2024-05-02"), "@timestamp": "2024-05-02T23:30:00-02:00"}
        for n in range(30, 35)
    ]
    assert await sink.deliver(items_for(sink, docs, "land")) == []
    assert count(store, "grayscope-access-2024.05.02") == 30
    assert count(store, "grayscope-access-2024.05.03") == 5
    assert sink.stats.documents_indexed_total == 35
    mapping = store.request("GET", "/grayscope-access-2024.05.02/_mapping")
    props = mapping["grayscope-access-2024.05.02"]["mappings"]["properties"]
    assert props["client"]["properties"]["ip"]["type"] == "ip"
    assert props["client"]["properties"]["geo"]["properties"]["location"]["type"] == "geo_point"


async def test_a_batch_over_the_size_limit_lands_in_several_requests(
    service: ElasticsearchService, store: OpenSearchNode
) -> None:
    await service.install_templates()
    docs = [access_doc(n, "2024-05-04") for n in range(40)]
    whole = index_sink(service)
    one_request = len(build_bulk_body(items_for(whole, docs, "cut")))
    sink = index_sink(service, max_bytes=one_request // 4)
    assert await sink.deliver(items_for(sink, docs, "cut")) == []
    assert count(store, "grayscope-access-2024.05.04") == 40
    assert sink.stats.bulk_requests_total["ok"] >= 4
    assert sink.stats.bulk_requests_total["too_large"] == 0


async def test_bad_client_ip_is_rejected_the_rest_lands(
    service: ElasticsearchService, store: OpenSearchNode
) -> None:
    await service.install_templates()
    sink = index_sink(service)
    docs = [access_doc(n, "2024-05-04") for n in range(6)]
    docs[3] = access_doc(3, "2024-05-04", client_ip="not-an-ip")
    items = items_for(sink, docs, "badip")
    rejected = await sink.deliver(items)
    assert [item.ref for item, _ in rejected] == [3]
    detail = rejected[0][1]
    assert "mapper_parsing_exception" in detail
    assert "client.ip" in detail
    assert count(store, "grayscope-access-2024.05.04") == 5
    assert sink.stats.documents_rejected_total == 1


async def test_replay_overwrites(service: ElasticsearchService, store: OpenSearchNode) -> None:
    await service.install_templates()
    sink = index_sink(service)
    first = [access_doc(n, "2024-05-05", version="v1") for n in range(10)]
    assert await sink.deliver(items_for(sink, first, "replay")) == []
    again = [access_doc(n, "2024-05-05", version="v3") for n in range(10)]
    assert await sink.deliver(items_for(sink, again, "replay")) == []
    assert count(store, "grayscope-access-2024.05.05") == 10
    doc = store.request("GET", "/grayscope-access-2024.05.05/_doc/replay-4")
    assert doc["_source"]["gray"]["version"] == "v3"


def data_stream_sink(svc: ElasticsearchService) -> ElasticsearchSink:
    return ElasticsearchSink(svc, "data_stream", 0.05, 0.5)


def data_stream_ids(store: OpenSearchNode) -> list[tuple[str, str]]:
    """(backing index, _id) of every document in the data stream."""
    store.request("POST", f"/{DATA_STREAM_NAME}/_refresh")
    body = store.request("POST", f"/{DATA_STREAM_NAME}/_search", {"size": 10_000, "_source": False})
    return sorted((hit["_index"], hit["_id"]) for hit in body["hits"]["hits"])


async def test_the_stores_all_done_answers_are_counted_not_decoded(
    service: ElasticsearchService, store: OpenSearchNode
) -> None:
    """OpenSearch's answer to the sink's bulk requests, when every item succeeded, is
    the compact form ``read_all_done`` recognises: created (index and data stream),
    and created and updated mixed (a replay in index mode)."""
    await service.install_templates()
    index = index_sink(service)
    stream = data_stream_sink(service)
    first = items_for(index, [access_doc(n, "2024-05-07") for n in range(6)], "answer")
    assert await service.bulk(build_bulk_body(first)) == (200, AllItemsDone(6))
    # answer-3 to -5 updated (200), answer-6 to -8 created (201).
    mixed = [index.item(access_doc(n, "2024-05-07"), f"answer-{n}") for n in range(3, 9)]
    assert await service.bulk(build_bulk_body(mixed)) == (200, AllItemsDone(6))
    created = items_for(stream, [access_doc(n, "2024-05-07") for n in range(5)], "answer")
    assert await service.bulk(build_bulk_body(created)) == (200, AllItemsDone(5))
    # A replayed create (409) is an error in the answer: decoded, item by item.
    status, again = await service.bulk(build_bulk_body(created[:2]))
    assert status == 200
    assert isinstance(again, dict)
    assert [item["create"]["status"] for item in again["items"]] == [409, 409]
    assert count(store, "grayscope-access-2024.05.07") == 9


async def test_data_stream_documents_land_with_create(
    service: ElasticsearchService, store: OpenSearchNode
) -> None:
    await service.install_templates()
    sink = data_stream_sink(service)
    docs = [access_doc(n, "2024-05-06") for n in range(20)]
    assert await sink.deliver(items_for(sink, docs, "ds")) == []
    streams = store.request("GET", f"/_data_stream/{DATA_STREAM_NAME}")["data_streams"]
    assert [s["name"] for s in streams] == [DATA_STREAM_NAME]
    assert streams[0]["template"] == "grayscope-access-data-stream"
    assert streams[0]["timestamp_field"]["name"] == "@timestamp"
    placed = data_stream_ids(store)
    assert sorted(doc_id for _, doc_id in placed) == sorted(f"ds-{n}" for n in range(20))
    assert {index for index, _ in placed} == {f".ds-{DATA_STREAM_NAME}-000001"}
    mapping = store.request("GET", f"/{DATA_STREAM_NAME}/_mapping")
    props = mapping[f".ds-{DATA_STREAM_NAME}-000001"]["mappings"]["properties"]
    assert props["client"]["properties"]["geo"]["properties"]["location"]["type"] == "geo_point"
    assert sink.stats.documents_indexed_total == 20


async def test_data_stream_replay_answers_409_and_counts_as_stored(
    service: ElasticsearchService, store: OpenSearchNode
) -> None:
    await service.install_templates()
    sink = data_stream_sink(service)
    first = [access_doc(n, "2024-05-06", version="v1") for n in range(10)]
    assert await sink.deliver(items_for(sink, first, "replay")) == []
    # A replay (the worker restarted before its commit): the same _ids again.
    raw = await service.bulk(
        b"".join(
            orjson.dumps({"create": {"_index": DATA_STREAM_NAME, "_id": f"replay-{n}"}})
            + b"\n"
            + orjson.dumps(doc)
            + b"\n"
            for n, doc in enumerate(first)
        )
    )
    assert {item["create"]["status"] for item in raw[1]["items"]} == {409}
    again = [access_doc(n, "2024-05-06", version="v3") for n in range(10)]
    assert await sink.deliver(items_for(sink, again, "replay")) == []
    assert sink.stats.documents_rejected_total == 0
    assert sink.stats.documents_retried_total == 0
    placed = data_stream_ids(store)
    assert len(placed) == 10  # no duplicates; the first write stays (create never overwrites)
    doc = store.request("GET", f"/{DATA_STREAM_NAME}/_search?q=_id:replay-4")["hits"]["hits"]
    assert doc[0]["_source"]["gray"]["version"] == "v1"


async def test_rollover_mid_stream_loses_and_duplicates_nothing(
    service: ElasticsearchService, store: OpenSearchNode
) -> None:
    await service.install_templates()
    sink = data_stream_sink(service)
    docs = [access_doc(n, "2024-05-06") for n in range(60)]
    items = items_for(sink, docs, "roll")
    assert await sink.deliver(items[:20]) == []
    # The rollover races a delivery in flight, then more deliveries follow.
    delivery = asyncio.create_task(sink.deliver(items[20:40]))
    rolled = await asyncio.to_thread(store.request, "POST", f"/{DATA_STREAM_NAME}/_rollover")
    assert rolled["rolled_over"] is True
    assert await delivery == []
    assert await sink.deliver(items[40:]) == []
    placed = data_stream_ids(store)
    assert sorted(doc_id for _, doc_id in placed) == sorted(f"roll-{n}" for n in range(60))
    assert f".ds-{DATA_STREAM_NAME}-000002" in {index for index, _ in placed}


async def test_replay_across_a_rollover_duplicates_documents(
    service: ElasticsearchService, store: OpenSearchNode
) -> None:
    """What is true on OpenSearch (and Elasticsearch): ``create`` checks an ``_id``
    only in the data stream's current write index. A batch written before a
    rollover and replayed after it is written again into the new backing index,
    so DESIGN's "a replay overwrites instead of duplicating" holds within one
    backing index only (README: Delivery, data streams)."""
    await service.install_templates()
    sink = data_stream_sink(service)
    items = items_for(sink, [access_doc(n, "2024-05-06") for n in range(5)], "across")
    assert await sink.deliver(items) == []
    store.request("POST", f"/{DATA_STREAM_NAME}/_rollover")
    assert await sink.deliver(items) == []  # 201 each: nothing answers 409
    placed = data_stream_ids(store)
    assert len(placed) == 10
    assert {index for index, _ in placed} == {
        f".ds-{DATA_STREAM_NAME}-000001",
        f".ds-{DATA_STREAM_NAME}-000002",
    }


async def test_one_node_with_the_stores_default_replica_is_green(
    store_factory: Callable[..., OpenSearchNode],
) -> None:
    """What grayscope creates is green on a single node that keeps the store's default
    of one replica per index (a real single-node cluster): the templates ask for
    ``auto_expand_replicas: 0-1``, so no replica waits for a second node. The session
    store sets ``cluster.default_number_of_replicas: 0`` and would be green anyway:
    this node keeps OpenSearch's default, and a plain index on it shows the yellow
    that the backing index would otherwise be. Also README's remedy for indices made
    before, and a count the user pins with a template of their own."""
    node = store_factory(extra_settings={"cluster.default_number_of_replicas": "1"})
    node.request("PUT", "/plain")
    assert (
        node.request("GET", "/plain/_settings")["plain"]["settings"]["index"]["number_of_replicas"]
        == "1"
    )
    assert node.request("GET", "/_cluster/health/plain")["status"] == "yellow"
    # README's remedy for an index made before the templates had the setting:
    node.request("PUT", "/plain/_settings", {"index.auto_expand_replicas": "0-1"})
    health = node.request("GET", "/_cluster/health/plain?wait_for_status=green&timeout=30s")
    assert health["status"] == "green", health
    node.request("DELETE", "/plain")

    svc = ElasticsearchService([node.url], request_timeout=10)
    try:
        await svc.connect()
        await svc.install_templates()  # what `grayscope setup` and the worker do
        stream = data_stream_sink(svc)
        docs = [access_doc(n, "2024-05-08") for n in range(5)]
        assert await stream.deliver(items_for(stream, docs, "green")) == []
        daily = index_sink(svc)
        assert await daily.deliver(items_for(daily, docs, "green")) == []
    finally:
        await svc.close()
    node.request("PUT", f"/{VERDICTS_INDEX}/_doc/v1", {"@timestamp": "2024-05-08T10:00:00Z"})

    health = node.request(
        "GET", f"/_cluster/health/{DATA_STREAM_NAME}?wait_for_status=green&timeout=30s"
    )
    assert health["status"] == "green", health
    assert health["unassigned_shards"] == 0
    streams = node.request("GET", f"/_data_stream/{DATA_STREAM_NAME}")["data_streams"]
    assert streams[0]["status"] == "GREEN"
    backing = f".ds-{DATA_STREAM_NAME}-000001"
    created = [backing, "grayscope-access-2024.05.08", VERDICTS_INDEX]
    for index in created:
        assert node.request("GET", f"/_cluster/health/{index}")["status"] == "green", index
        # Green because of the template's setting, not a default of this node's:
        settings = node.request("GET", f"/{index}/_settings")[index]["settings"]["index"]
        assert settings.get("auto_expand_replicas") == "0-1", (index, settings)
        assert settings["number_of_replicas"] == "0", index  # expanded to the one node
    assert node.request("GET", "/_cluster/health")["status"] == "green"
    # ... which also takes the data stream's name (all of its backing indices).
    answer = node.request(
        "PUT", f"/{DATA_STREAM_NAME}/_settings", {"index.auto_expand_replicas": "0-1"}
    )
    assert answer == {"acknowledged": True}

    # A count of the user's own (README, "Replicas"): their template over the same pattern
    # at a higher priority, composed of grayscope's components, pins it; the data
    # stream's next backing index takes it, and installing grayscope's again keeps it.
    node.request(
        "PUT",
        "/_index_template/my-grayscope-access",
        {
            "index_patterns": ["logs-grayscope.access-*"],
            "data_stream": {},
            "priority": 300,
            "composed_of": ["grayscope-access-settings", "grayscope-access-mappings"],
            "template": {
                "settings": {"index.auto_expand_replicas": False, "index.number_of_replicas": 1}
            },
        },
    )
    svc = ElasticsearchService([node.url], request_timeout=10)
    try:
        await svc.connect()
        await svc.install_templates()
    finally:
        await svc.close()
    node.request("POST", f"/{DATA_STREAM_NAME}/_rollover")
    pinned = f".ds-{DATA_STREAM_NAME}-000002"
    settings = node.request("GET", f"/{pinned}/_settings")[pinned]["settings"]["index"]
    assert settings["auto_expand_replicas"] == "false"
    assert settings["number_of_replicas"] == "1"


async def test_store_down_at_start_then_up(
    store_factory: Callable[..., OpenSearchNode],
) -> None:
    node = store_factory(start=False)
    svc = ElasticsearchService([node.url], request_timeout=5)
    sink = index_sink(svc, retry_initial=0.05, retry_max=0.2)
    docs = [access_doc(n, "2024-05-07") for n in range(8)]
    task = asyncio.create_task(sink.deliver(items_for(sink, docs, "late")))
    try:
        for _ in range(600):  # wait for a couple of failed attempts (bounded, not timed)
            if sink.stats.bulk_requests_total["unavailable"] >= 2:
                break
            await asyncio.sleep(0.05)
        assert not task.done()
        assert sink.stats.bulk_requests_total["unavailable"] >= 2
        node.spawn()  # from this (the main) thread: the node dies with the thread that started it
        await asyncio.to_thread(node.wait_ready)
        rejected = await asyncio.wait_for(task, 120)
        assert rejected == []
        assert count(node, "grayscope-access-2024.05.07") == 8
        assert sink.stats.documents_indexed_total == 8
        assert svc.server is not None and svc.server.distribution == OPENSEARCH
    finally:
        task.cancel()
        await svc.close()


async def test_connect_to_nothing_is_unavailable() -> None:
    svc = ElasticsearchService([f"http://127.0.0.1:{free_port()}"], request_timeout=5)
    try:
        with pytest.raises(StoreUnavailable, match="cannot connect"):
            await svc.connect()
        assert not await svc.ping()
    finally:
        await svc.close()


async def test_secrets_stay_out_of_logs(
    store: OpenSearchNode, caplog: pytest.LogCaptureFixture
) -> None:
    api_key, password = "grayscope-api-key-5ecret", "grayscope-pa55word"
    services = [
        ElasticsearchService([store.url], api_key=api_key),
        ElasticsearchService([store.url], username="grayscope", password=password),
    ]
    # The transport's wire log (headers and bodies) does not propagate: listen to it directly.
    wire = logging.getLogger("elastic_transport.node")
    wire.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, wire.name):
            for svc in services:
                await svc.connect()
                await svc.install_templates()
                sink = index_sink(svc)
                await sink.deliver(items_for(sink, [access_doc(0, "2024-05-08")], "secret"))
                logging.getLogger("test").info("service %r", svc)
                await svc.close()
    finally:
        wire.removeHandler(caplog.handler)
    assert "grayscope-access-settings" in caplog.text  # the requests were logged at all
    assert "> Authorization: ApiKey <hidden>" in caplog.text
    assert "> Authorization: Basic <hidden>" in caplog.text
    assert api_key not in caplog.text
    assert password not in caplog.text


# --- a fake Elasticsearch 8/9, to see the media types and status mapping -----------------


@dataclass
class FakeElasticsearch:
    url: str = ""
    root: tuple[int, str, bytes] = (200, "application/json", b"")
    bulk: tuple[int, str, bytes] = (200, "application/json", b"")
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def answer_root(self, number: str) -> None:
        body = {
            "name": "es01",
            "cluster_name": "docker-cluster",
            "cluster_uuid": "nC1Zd9fQRGuYyWkl3Z7VIw",
            "version": {
                "number": number,
                "build_flavor": "default",
                "build_type": "docker",
                "lucene_version": "9.12.0",
                "minimum_wire_compatibility_version": "7.17.0",
                "minimum_index_compatibility_version": "7.0.0",
            },
            "tagline": "You Know, for Search",
        }
        self.root = (200, "application/json", orjson.dumps(body))

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path_qs, dict(request.headers)))
        await request.read()
        if request.path == "/":
            status, ctype, body = self.root
        elif request.path == "/_bulk":
            status, ctype, body = self.bulk
        else:
            status, ctype, body = 200, "application/json", b'{"acknowledged":true}'
        return web.Response(
            status=status,
            body=body,
            headers={"Content-Type": ctype, "X-elastic-product": "Elasticsearch"},
        )


@pytest.fixture
async def fake_es() -> AsyncIterator[FakeElasticsearch]:
    fake = FakeElasticsearch()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}"
    yield fake
    await runner.cleanup()


BULK_OK = orjson.dumps({"errors": False, "took": 2, "items": [{"index": {"status": 201}}]})


@pytest.mark.parametrize("major", ["8.15.3", "9.1.2"])
async def test_elasticsearch_gets_its_compatible_media_types(
    fake_es: FakeElasticsearch, major: str
) -> None:
    fake_es.answer_root(major)
    fake_es.bulk = (200, "application/vnd.elasticsearch+json;compatible-with=9", BULK_OK)
    svc = ElasticsearchService([fake_es.url], api_key="id1:key1")
    try:
        info = await svc.connect()
        assert info.distribution == ELASTICSEARCH
        sink = index_sink(svc)
        assert await sink.deliver(items_for(sink, [access_doc(0, "2024-05-09")], "es")) == []
        await svc.install_templates()
    finally:
        await svc.close()
    m = major.partition(".")[0]
    _, target, headers = next(s for s in fake_es.seen if s[0] == "POST")
    assert target.startswith("/_bulk?filter_path=")
    assert headers["Content-Type"] == f"application/vnd.elasticsearch+x-ndjson; compatible-with={m}"
    assert headers["Accept"] == f"application/vnd.elasticsearch+json; compatible-with={m}"
    assert headers["Authorization"] == "ApiKey aWQxOmtleTE="
    put = next(s for s in fake_es.seen if s[0] == "PUT")
    assert put[2]["Content-Type"] == f"application/vnd.elasticsearch+json; compatible-with={m}"


async def test_forbidden_root_falls_back_to_plain_json(fake_es: FakeElasticsearch) -> None:
    fake_es.root = (
        403,
        "application/json",
        orjson.dumps(
            {
                "error": {
                    "type": "security_exception",
                    "reason": "action [cluster:monitor/main] is unauthorized for API key id [k1]",
                },
                "status": 403,
            }
        ),
    )
    fake_es.bulk = (200, "application/json", BULK_OK)
    svc = ElasticsearchService([fake_es.url], api_key="writer-only")
    try:
        info = await svc.connect()
        assert (info.distribution, info.major) == (ELASTICSEARCH, 0)
        assert await svc.ping()
        status, _ = await svc.bulk(b'{"index":{"_index":"i"}}\n{}\n')
        assert status == 200
    finally:
        await svc.close()
    assert fake_es.seen[-1][2]["Content-Type"] == "application/x-ndjson"


@pytest.mark.parametrize(
    ("answer", "error", "match"),
    [
        (
            (
                401,
                "application/json",
                orjson.dumps(
                    {
                        "error": {
                            "type": "security_exception",
                            "reason": "unable to authenticate with provided credentials",
                        },
                        "status": 401,
                    }
                ),
            ),
            StoreRejected,
            "401 security_exception",
        ),
        (
            (
                429,
                "application/json",
                orjson.dumps(
                    {
                        "error": {
                            "type": "es_rejected_execution_exception",
                            "reason": "queue full",
                        },
                        "status": 429,
                    }
                ),
            ),
            StoreUnavailable,
            "429 es_rejected_execution_exception",
        ),
        (
            (
                503,
                "application/json",
                orjson.dumps(
                    {
                        "error": {
                            "type": "cluster_block_exception",
                            "reason": "blocked by: [SERVICE_UNAVAILABLE/1/state not recovered]",
                        },
                        "status": 503,
                    }
                ),
            ),
            StoreUnavailable,
            "503",
        ),
        (
            (502, "text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
            StoreUnavailable,
            "502 <html>",
        ),
        ((504, "", b""), StoreUnavailable, "504"),
        (
            (404, "application/json", b'{"error":"no handler found for uri","status":404}'),
            StoreRejected,
            "404",
        ),
    ],
)
async def test_bulk_failures_are_mapped(
    fake_es: FakeElasticsearch, answer: tuple[int, str, bytes], error: type, match: str
) -> None:
    fake_es.answer_root("8.15.3")
    fake_es.bulk = answer
    svc = ElasticsearchService([fake_es.url])
    try:
        with pytest.raises(error, match=match):
            await svc.bulk(b'{"index":{"_index":"i"}}\n{}\n')
    finally:
        await svc.close()


async def test_too_large_is_returned_not_raised(fake_es: FakeElasticsearch) -> None:
    fake_es.answer_root("8.15.3")
    fake_es.bulk = (413, "text/html", b"<html><head><title>413 Request Entity Too Large</title>")
    svc = ElasticsearchService([fake_es.url])
    try:
        status, body = await svc.bulk(b'{"index":{"_index":"i"}}\n{}\n')
    finally:
        await svc.close()
    assert status == 413
    assert body == {"error": "<html><head><title>413 Request Entity Too Large</title>"}


async def test_not_a_search_server_is_rejected(fake_es: FakeElasticsearch) -> None:
    fake_es.root = (200, "text/html", b"<!doctype html><title>Kibana</title>")
    svc = ElasticsearchService([fake_es.url])
    try:
        with pytest.raises(StoreRejected, match="not Elasticsearch or OpenSearch"):
            await svc.connect()
    finally:
        await svc.close()

"""The delivery loop against a fake bulk service; the service's pure helpers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from pipeline.config import EsMode, load_settings
from pipeline.core.bulk import BulkItem, build_bulk_body
from pipeline.credentials import authorization, redact_url
from pipeline.errors import ConfigError, StoreRejected, StoreUnavailable
from pipeline.sinks.elasticsearch.service import (
    ELASTICSEARCH,
    OPENSEARCH,
    PLAIN_MEDIA_TYPES,
    ElasticsearchService,
    ServerInfo,
    detect_server,
    media_types_for,
)
from pipeline.sinks.elasticsearch.sink import ElasticsearchSink, EsSinkStats

Doc = dict[str, Any]
Handler = Callable[[list[tuple[str, Doc]]], tuple[int, dict[str, Any]]]


def parse_bulk(body: bytes) -> list[tuple[str, Doc]]:
    lines = body.split(b"\n")[:-1]
    out = []
    for action, source in zip(lines[::2], lines[1::2], strict=True):
        (meta,) = orjson.loads(action).values()
        out.append((meta["_id"], orjson.loads(source)))
    return out


class FakeService:
    """Answers each bulk with the next scripted handler (the last one repeats).

    A handler gets the request's ``(_id, document)`` pairs and returns
    ``(status, response)`` or raises like the real service does.
    """

    def __init__(self, *handlers: Handler) -> None:
        self.handlers = list(handlers)
        self.requests: list[list[str]] = []

    async def bulk(self, body: bytes) -> tuple[int, dict[str, Any]]:
        docs = parse_bulk(body)
        self.requests.append([doc_id for doc_id, _ in docs])
        handler = self.handlers.pop(0) if len(self.handlers) > 1 else self.handlers[0]
        return handler(docs)


class FakeSleep:
    def __init__(self, clock: FakeClock | None = None) -> None:
        self.delays: list[float] = []
        self.clock = clock

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.clock is not None:
            self.clock.now += delay


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ok_item(status: int = 201) -> dict[str, Any]:
    return {"index": {"status": status}}


def error_item(status: int, kind: str, reason: str = "why") -> dict[str, Any]:
    return {"index": {"status": status, "error": {"type": kind, "reason": reason}}}


def all_ok(docs: list[tuple[str, Doc]]) -> tuple[int, dict[str, Any]]:
    return 200, {"errors": False, "items": [ok_item() for _ in docs]}


def down(docs: list[tuple[str, Doc]]) -> tuple[int, dict[str, Any]]:
    raise StoreUnavailable("POST /_bulk: cannot connect: connection refused")


def per_doc(rule: Callable[[str, Doc], dict[str, Any]]) -> Handler:
    def handler(docs: list[tuple[str, Doc]]) -> tuple[int, dict[str, Any]]:
        entries = [rule(doc_id, doc) for doc_id, doc in docs]
        errors = any("error" in next(iter(e.values())) for e in entries)
        return 200, {"errors": errors, "items": entries}

    return handler


def make_items(n: int, **extra: Any) -> list[BulkItem]:
    return [
        BulkItem(
            f"t-0-{i}",
            "grayscope-access-2024.05.01",
            "index",
            orjson.dumps({"n": i, **extra}),
            ref=f"event-{i}",
        )
        for i in range(n)
    ]


def make_sink(service: FakeService, **kwargs: Any) -> tuple[ElasticsearchSink, FakeSleep]:
    sleep = kwargs.pop("sleep", None) or FakeSleep()
    sink = ElasticsearchSink(
        service, "index", 0.1, 1.0, sleep=sleep, rng=kwargs.pop("rng", lambda: 1.0), **kwargs
    )
    return sink, sleep


async def test_all_delivered_in_one_request() -> None:
    service = FakeService(all_ok)
    latencies: list[float] = []
    sink, sleep = make_sink(service, observe_latency=latencies.append)
    assert await sink.deliver(make_items(5)) == []
    assert service.requests == [[f"t-0-{i}" for i in range(5)]]
    assert sleep.delays == []
    assert len(latencies) == 1
    assert sink.stats == EsSinkStats(
        documents_indexed_total=5,
        bulk_requests_total={
            "ok": 1,
            "item_errors": 0,
            "unavailable": 0,
            "too_large": 0,
            "bad_request": 0,
            "fatal": 0,
        },
    )


async def test_nothing_to_deliver_sends_nothing() -> None:
    service = FakeService(all_ok)
    sink, _ = make_sink(service)
    assert await sink.deliver([]) == []
    assert service.requests == []


async def test_store_down_then_up_delivers_everything() -> None:
    service = FakeService(down, down, down, down, all_ok)
    latencies: list[float] = []
    sink, sleep = make_sink(service, observe_latency=latencies.append)
    items = make_items(3)
    assert await sink.deliver(items) == []
    assert len(service.requests) == 5
    assert all(ids == ["t-0-0", "t-0-1", "t-0-2"] for ids in service.requests)
    assert sleep.delays == [0.1, 0.2, 0.4, 0.8]
    assert sink.stats.documents_indexed_total == 3
    assert sink.stats.bulk_requests_total["unavailable"] == 4
    assert sink.stats.bulk_requests_total["ok"] == 1
    assert sink.stats.bulk_retries_total == 4
    assert sink.stats.documents_retried_total == 12
    assert len(latencies) == 5


async def test_retries_only_the_failed_items() -> None:
    throttled = {"t-0-1", "t-0-3"}

    def first(doc_id: str, doc: Doc) -> dict[str, Any]:
        if doc_id in throttled:
            return error_item(429, "es_rejected_execution_exception", "queue full")
        return ok_item()

    service = FakeService(per_doc(first), all_ok)
    sink, sleep = make_sink(service)
    assert await sink.deliver(make_items(5)) == []
    assert service.requests == [[f"t-0-{i}" for i in range(5)], ["t-0-1", "t-0-3"]]
    assert sleep.delays == [0.1]
    assert sink.stats.documents_indexed_total == 5
    assert sink.stats.documents_retried_total == 2
    assert sink.stats.bulk_requests_total["item_errors"] == 1
    assert sink.stats.bulk_requests_total["ok"] == 1


async def test_mixed_batch_returns_the_rejected_with_their_reason() -> None:
    def rule(doc_id: str, doc: Doc) -> dict[str, Any]:
        if doc["n"] in (1, 4):
            return error_item(
                400, "mapper_parsing_exception", "failed to parse field [client.ip] of type [ip]"
            )
        if doc["n"] == 2:
            return error_item(503, "unavailable_shards_exception", "primary shard is not active")
        return ok_item()

    def second(doc_id: str, doc: Doc) -> dict[str, Any]:
        return ok_item()

    service = FakeService(per_doc(rule), per_doc(second))
    sink, _ = make_sink(service)
    items = make_items(5)
    rejected = await sink.deliver(items)
    assert [(item.ref, detail) for item, detail in rejected] == [
        ("event-1", "400 mapper_parsing_exception: failed to parse field [client.ip] of type [ip]"),
        ("event-4", "400 mapper_parsing_exception: failed to parse field [client.ip] of type [ip]"),
    ]
    assert rejected[0][0] is items[1]
    assert service.requests[1] == ["t-0-2"]
    assert sink.stats.documents_indexed_total == 3
    assert sink.stats.documents_rejected_total == 2


async def test_conflict_on_replay_is_done() -> None:
    def rule(doc_id: str, doc: Doc) -> dict[str, Any]:
        return {
            "create": {
                "status": 409,
                "error": {
                    "type": "version_conflict_engine_exception",
                    "reason": f"[{doc_id}]: version conflict, document already exists "
                    "(current version [1])",
                },
            }
        }

    service = FakeService(per_doc(rule))
    sink, sleep = make_sink(service)
    assert await sink.deliver(make_items(3)) == []
    assert len(service.requests) == 1
    assert sleep.delays == []
    assert sink.stats.documents_indexed_total == 3


async def test_too_large_splits_until_it_fits() -> None:
    accepted: list[str] = []

    def limit(docs: list[tuple[str, Doc]]) -> tuple[int, dict[str, Any]]:
        if len(docs) > 2 or any(doc.get("huge") for _, doc in docs):
            return 413, {"error": "request body is larger than 104857600 bytes", "status": 413}
        accepted.extend(doc_id for doc_id, _ in docs)
        return all_ok(docs)

    service = FakeService(limit)
    sink, sleep = make_sink(service)
    items = make_items(5)
    items[3] = BulkItem("t-0-3", items[3].index, "index", b'{"n":3,"huge":true}', ref="event-3")
    rejected = await sink.deliver(items)
    assert [(item.doc_id, detail) for item, detail in rejected] == [
        ("t-0-3", "bulk request rejected: 413 request body is larger than 104857600 bytes")
    ]
    assert sorted(accepted) == ["t-0-0", "t-0-1", "t-0-2", "t-0-4"]
    assert sleep.delays == []  # splitting is not a retry of the same thing
    assert sink.stats.documents_indexed_total == 4
    assert sink.stats.documents_rejected_total == 1
    assert sink.stats.bulk_requests_total["too_large"] >= 2


async def test_a_batch_over_the_size_limit_goes_as_several_requests() -> None:
    service = FakeService(all_ok)
    items = make_items(10, pad="x" * 100)
    one = len(build_bulk_body(items[:1]))
    sink, sleep = make_sink(service, max_bytes=3 * one)
    assert await sink.deliver(items) == []
    assert service.requests == [
        [f"t-0-{i}" for i in range(s, min(s + 3, 10))] for s in (0, 3, 6, 9)
    ]
    assert sleep.delays == []
    assert sink.stats.documents_indexed_total == 10
    assert sink.stats.bulk_requests_total["ok"] == 4
    assert sink.stats.bulk_requests_total["too_large"] == 0


async def test_a_batch_exactly_at_the_size_limit_goes_whole() -> None:
    service = FakeService(all_ok)
    items = make_items(5, pad="x" * 100)
    sink, _ = make_sink(service, max_bytes=len(build_bulk_body(items)))
    assert await sink.deliver(items) == []
    assert service.requests == [[f"t-0-{i}" for i in range(5)]]
    short, _ = make_sink(FakeService(all_ok), max_bytes=len(build_bulk_body(items)) - 1)
    assert await short.deliver(items) == []
    assert short.stats.bulk_requests_total["ok"] == 2


def test_the_size_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        make_sink(FakeService(all_ok), max_bytes=0)


async def test_unreadable_request_isolates_the_poison_document() -> None:
    def parser(docs: list[tuple[str, Doc]]) -> tuple[int, dict[str, Any]]:
        if any(doc.get("poison") for _, doc in docs):
            error = {"type": "json_parse_exception", "reason": "Unexpected character"}
            return 400, {"error": error, "status": 400}
        return all_ok(docs)

    service = FakeService(parser)
    sink, _ = make_sink(service)
    items = make_items(4)
    items[2] = BulkItem("t-0-2", items[2].index, "index", b'{"n":2,"poison":true}', ref="event-2")
    rejected = await sink.deliver(items)
    assert [(item.ref, detail) for item, detail in rejected] == [
        ("event-2", "bulk request rejected: 400 json_parse_exception: Unexpected character")
    ]
    assert sink.stats.documents_indexed_total == 3
    assert sink.stats.bulk_requests_total["bad_request"] == 3  # 4 -> 2 -> 1


async def test_unauthorized_stops_delivery() -> None:
    def unauthorized(docs: list[tuple[str, Doc]]) -> tuple[int, dict[str, Any]]:
        raise StoreRejected("POST /_bulk: 401 security_exception: unable to authenticate")

    service = FakeService(down, unauthorized)
    sink, _ = make_sink(service)
    with pytest.raises(StoreRejected, match="401"):
        await sink.deliver(make_items(2))
    assert sink.stats.bulk_requests_total["fatal"] == 1
    assert sink.stats.documents_rejected_total == 0


async def test_item_that_cannot_be_written_anywhere_stops_delivery() -> None:
    def rule(doc_id: str, doc: Doc) -> dict[str, Any]:
        return error_item(
            403, "security_exception", "action [indices:data/write/bulk[s]] is unauthorized"
        )

    service = FakeService(per_doc(rule))
    sink, _ = make_sink(service)
    with pytest.raises(StoreRejected, match=r"access-2024\.05\.01: 403 security_exception"):
        await sink.deliver(make_items(2))
    assert sink.stats.documents_rejected_total == 0


async def test_backoff_is_capped_and_jittered() -> None:
    draws = iter([0.5, 1.0, 0.25, 1.0, 1.0, 1.0, 0.0, 1.0])
    service = FakeService(*([down] * 8), all_ok)
    sink, sleep = make_sink(service, rng=lambda: next(draws))
    await sink.deliver(make_items(1))
    # Bounds double from 0.1 up to the 1.0 cap; each delay is bound * (1 + draw) / 2.
    assert sleep.delays == pytest.approx([0.075, 0.2, 0.25, 0.8, 1.0, 1.0, 0.5, 1.0])


async def test_outage_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    service = FakeService(*([down] * 40), all_ok)
    sleep = FakeSleep(clock)
    sink = ElasticsearchSink(service, "index", 1.0, 5.0, sleep=sleep, rng=lambda: 1.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="pipeline.sinks.elasticsearch.sink"):
        await sink.deliver(make_items(1))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # 40 failures over ~190 s of backoff: the first, then one per 30 s.
    assert warnings[0].startswith("Elasticsearch unavailable, retrying until it is back")
    assert all(w.startswith("Elasticsearch still unavailable after") for w in warnings[1:])
    assert 4 <= len(warnings) <= 8
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == [infos[0]] and infos[0].startswith("Elasticsearch is back after")


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="mode"):
        ElasticsearchSink(FakeService(all_ok), "daily", 0.1, 1.0)


def test_sink_takes_the_settings_enum() -> None:
    sink = ElasticsearchSink(FakeService(all_ok), EsMode.INDEX, 0.1, 1.0)
    assert sink.mode == "index"
    assert sink.item({"@timestamp": "2024-05-01T10:00:00Z"}, "x").index == (
        "grayscope-access-2024.05.01"
    )


def test_sink_builds_items_in_its_mode() -> None:
    sink = ElasticsearchSink(FakeService(all_ok), "data_stream", 0.1, 1.0)
    item = sink.item({"@timestamp": "2024-05-01T10:00:00Z"}, "t-0-1", ref="e")
    assert (item.index, item.op, item.doc_id, item.ref) == (
        "logs-grayscope.access-default",
        "create",
        "t-0-1",
        "e",
    )


# --- service: pure helpers, construction without I/O --------------------------------------


def test_detect_opensearch() -> None:
    body = {
        "name": "node-1",
        "cluster_name": "docker-cluster",
        "version": {"distribution": "opensearch", "number": "2.15.0", "lucene_version": "9.10.0"},
        "tagline": "The OpenSearch Project: https://opensearch.org/",
    }
    assert detect_server(body) == ServerInfo(OPENSEARCH, "2.15.0", 2)
    # compatibility.override_main_response_version fakes the number, not the tagline.
    body = {
        "version": {"number": "7.10.2"},
        "tagline": "The OpenSearch Project: https://opensearch.org/",
    }
    assert detect_server(body).distribution == OPENSEARCH


@pytest.mark.parametrize(("number", "major"), [("8.15.3", 8), ("9.1.0", 9), ("7.17.22", 7)])
def test_detect_elasticsearch(number: str, major: int) -> None:
    body = {
        "name": "es01",
        "cluster_name": "docker-cluster",
        "version": {
            "number": number,
            "build_flavor": "default",
            "build_type": "docker",
            "lucene_version": "9.11.1",
        },
        "tagline": "You Know, for Search",
    }
    assert detect_server(body) == ServerInfo(ELASTICSEARCH, number, major)


@pytest.mark.parametrize("body", [None, b"<html>", {"status": "green"}, {"version": "8.1"}])
def test_detect_neither(body: Any) -> None:
    with pytest.raises(ValueError):
        detect_server(body)


def test_media_types() -> None:
    assert media_types_for(ServerInfo(OPENSEARCH, "2.15.0", 2)) == PLAIN_MEDIA_TYPES
    assert media_types_for(ServerInfo(ELASTICSEARCH, "7.17.0", 7)) == PLAIN_MEDIA_TYPES
    assert media_types_for(ServerInfo(ELASTICSEARCH, "", 0)) == PLAIN_MEDIA_TYPES
    es9 = media_types_for(ServerInfo(ELASTICSEARCH, "9.0.0", 9))
    assert es9.accept == es9.json == "application/vnd.elasticsearch+json; compatible-with=9"
    assert es9.ndjson == "application/vnd.elasticsearch+x-ndjson; compatible-with=9"
    es8 = media_types_for(ServerInfo(ELASTICSEARCH, "8.15.0", 8))
    assert es8.ndjson == "application/vnd.elasticsearch+x-ndjson; compatible-with=8"


def auth_header(api_key: str = "", username: str = "", password: str = "") -> str | None:
    service = ElasticsearchService(
        ["http://127.0.0.1:9"], api_key=api_key, username=username, password=password
    )
    assert service._auth == authorization(api_key=api_key, username=username, password=password)
    return service._auth


def test_auth_header() -> None:
    assert auth_header() is None
    assert auth_header(api_key="VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==") == (
        "ApiKey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
    )
    # Beats-style id:key is encoded for you.
    assert auth_header(api_key="VuaCfGcBCdbkQm-e5aOx:ui2lp2axTNmsyakw9tvNnw") == (
        "ApiKey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
    )
    assert auth_header(username="elastic", password="changeme") == "Basic ZWxhc3RpYzpjaGFuZ2VtZQ=="
    with pytest.raises(ConfigError, match="GRAYSCOPE_ES_API_KEY"):
        auth_header(api_key="k", username="u", password="p")


def test_redact_url() -> None:
    assert redact_url("https://elastic:s3cret@es.example:9200/prefix") == (
        "https://es.example:9200/prefix"
    )
    assert redact_url("http://localhost:9200") == "http://localhost:9200"


def test_bad_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="GRAYSCOPE_ES_URL"):
        ElasticsearchService(["localhost:9200"])
    with pytest.raises(ConfigError, match="GRAYSCOPE_ES_URL"):
        ElasticsearchService([])


def test_bad_ca_bundle_is_a_config_error(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="GRAYSCOPE_ES_CA_CERTS"):
        ElasticsearchService(["https://localhost:9200"], ca_certs=str(tmp_path / "missing.pem"))


async def test_no_secret_in_reprs() -> None:
    secrets = ("s3cr3t-api-key-value", "hunter2-password", "urlpass")
    settings = load_settings(es_api_key=secrets[0], es_password=secrets[1])
    text = repr(settings) + str(settings) + str(settings.redacted())
    with_key = ElasticsearchService.from_settings(
        load_settings(es_url="https://user:urlpass@es.example:9200", es_api_key=secrets[0]).store
    )
    with_password = ElasticsearchService(
        ["https://user:urlpass@es.example:9200"], username="grayscope", password=secrets[1]
    )
    text += repr(with_key) + str(with_key) + repr(with_password) + str(with_password.hosts)
    for secret in secrets:
        assert secret not in text
    assert "auth=api_key" in repr(with_key)
    assert "https://es.example:9200" in repr(with_password)
    await with_key.close()
    await with_password.close()

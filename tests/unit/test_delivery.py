"""BatchHandler with fake sinks: what is stored where, dead-lettered, and exported."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson

from agents.handler import BatchHandler, InputMessage
from pipeline.core.bulk import BulkItem
from pipeline.core.enrich import EnrichContext
from pipeline.core.model import KafkaCoordinates
from pipeline.core.otlp_wire import EncodedSpan
from pipeline.core.process import Enriched, process_batch
from pipeline.sinks.dlq import DeadLetterSink

DAY1 = "2024-05-01T23:59:59.999Z"
DAY2 = "2024-05-02T00:00:00.000Z"
KAFKA_TIME_NS = 1_714_608_000_000_000_000  # 2024-05-02T00:00:00Z


def envoy_line(start_time: str | None, path: str = "/godoc/pkg/fmt") -> bytes:
    line: dict[str, Any] = {
        "method": "GET",
        "path": path,
        "response_code": "200",
        "duration": "12",
        "downstream_remote_address": "203.0.113.7:40000",
        "request_id": f"rid-{path}-{start_time}",
        "upstream_cluster": "outbound|8080|v1|godoc.default.svc.cluster.local",
    }
    if start_time is not None:
        line["start_time"] = start_time
    return orjson.dumps(line)


class FakeStore:
    def __init__(self, reject: set[str] | None = None) -> None:
        self.items: list[BulkItem] = []
        self._reject = reject or set()

    async def deliver(self, items: list[BulkItem]) -> list[tuple[BulkItem, str]]:
        self.items.extend(items)
        return [(item, "mapper_parsing_exception") for item in items if item.doc_id in self._reject]


class FakeProducer:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes, Any]] = []

    async def send_batch(self, topic: str, records: Sequence[Any]) -> None:
        self.records.extend(records)


class FakeSpans:
    def __init__(self) -> None:
        self.spans: list[EncodedSpan] = []

    def submit(self, spans: Sequence[EncodedSpan]) -> int:
        self.spans.extend(spans)
        return len(spans)


def messages(values: Sequence[bytes], kafka_time_ns: int | None = None) -> list[InputMessage]:
    return [
        InputMessage(value, None, KafkaCoordinates("access-logs", 0, offset), kafka_time_ns)
        for offset, value in enumerate(values)
    ]


def handler(
    store: FakeStore, producer: FakeProducer, spans: FakeSpans | None = None, mode: str = "index"
) -> BatchHandler:
    return BatchHandler(
        EnrichContext(), store, DeadLetterSink(producer, "dlq"), spans, es_mode=mode
    )


def test_documents_go_to_the_daily_index_of_their_own_day() -> None:
    store, producer = FakeStore(), FakeProducer()
    batch = messages([envoy_line(DAY1), envoy_line(DAY2), envoy_line(DAY1, "/blog")])
    outcome = asyncio.run(handler(store, producer).handle(batch))
    assert outcome.stored == 3
    assert [(i.index, i.op) for i in store.items] == [
        ("grayscope-access-2024.05.01", "index"),
        ("grayscope-access-2024.05.02", "index"),
        ("grayscope-access-2024.05.01", "index"),
    ]
    assert [i.doc_id for i in store.items] == [f"access-logs-0-{n}" for n in range(3)]


def test_data_streams_take_create() -> None:
    store, producer = FakeStore(), FakeProducer()
    asyncio.run(handler(store, producer, mode="data_stream").handle(messages([envoy_line(DAY1)])))
    assert [(i.index, i.op) for i in store.items] == [("logs-grayscope.access-default", "create")]


def test_kafka_time_stands_in_for_a_missing_timestamp() -> None:
    store, producer = FakeStore(), FakeProducer()
    batch = messages([envoy_line(None)], kafka_time_ns=KAFKA_TIME_NS)
    asyncio.run(handler(store, producer).handle(batch))
    assert orjson.loads(store.items[0].source)["@timestamp"] == "2024-05-02T00:00:00.000Z"
    assert store.items[0].index == "grayscope-access-2024.05.02"
    # Added last, as it always was (to the document's dict, before serialising).
    (result,) = process_batch([envoy_line(None)], EnrichContext())
    assert isinstance(result, Enriched)
    expected = {**result.document, "@timestamp": "2024-05-02T00:00:00.000Z"}
    assert store.items[0].source == orjson.dumps(expected)


def test_no_time_at_all_is_a_dead_letter_in_index_mode() -> None:
    store, producer = FakeStore(), FakeProducer()
    outcome = asyncio.run(handler(store, producer).handle(messages([envoy_line(None)])))
    assert (outcome.stored, outcome.dead_lettered) == (0, 1)
    assert store.items == []
    ((_key, value, headers),) = producer.records
    assert value == envoy_line(None)
    assert dict(headers)["grayscope.reason"] == b"invalid_field"
    assert dict(headers)["grayscope.detail"].startswith(b"no target for the document: ")


def test_store_rejections_are_dead_lettered_and_spans_follow_delivery() -> None:
    store, producer, spans = FakeStore(reject={"access-logs-0-1"}), FakeProducer(), FakeSpans()
    batch = messages([envoy_line(DAY1), envoy_line(DAY1, "/blog"), b"not a log line"])
    outcome = asyncio.run(handler(store, producer, spans).handle(batch))
    assert (outcome.stored, outcome.dead_lettered, outcome.spans) == (1, 2, 2)
    reasons = sorted(dict(headers)["grayscope.reason"] for _, _, headers in producer.records)
    assert reasons == [b"mapping_rejected", b"unknown_format"]
    assert len(spans.spans) == 2


def test_a_span_that_cannot_be_encoded_is_left_out_and_the_batch_goes_on() -> None:
    # Year 9999: past OTLP's uint64 nanoseconds (until 2554); the document is fine. (Such
    # a span once made the exporter drop its whole request of 512 spans.)
    store, producer, spans = FakeStore(), FakeProducer(), FakeSpans()
    batch = messages([envoy_line("9999-12-31T23:59:59.000Z"), envoy_line(DAY1)])
    outcome = asyncio.run(handler(store, producer, spans).handle(batch))
    assert (outcome.stored, outcome.dead_lettered, outcome.spans) == (2, 0, 1)
    assert store.items[0].index == "grayscope-access-9999.12.31"
    assert [service for service, _ in spans.spans] == ["godoc"]

"""BatchHandler with fake sinks: what is stored where, dead-lettered, and exported."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from agents.app import handle_stream_batch
from agents.handler import BatchHandler, InputMessage, SpanSink
from pipeline.config import WhenFull
from pipeline.core.bulk import BulkItem
from pipeline.core.enrich import EnrichContext
from pipeline.core.model import KafkaCoordinates
from pipeline.core.otlp_wire import EncodedSpan
from pipeline.core.process import Enriched, process_batch
from pipeline.errors import ShutdownInterrupted
from pipeline.metrics.requests import RequestMetrics
from pipeline.sinks.dlq import DeadLetterSink
from tests.unit.test_otlp_exporter import FakeTransport, settle
from tests.unit.test_otlp_exporter import exporter as otlp_exporter

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
    when_full = WhenFull.DROP_NEWEST

    def __init__(self) -> None:
        self.spans: list[EncodedSpan] = []

    def submit(self, spans: Sequence[EncodedSpan]) -> int:
        self.spans.extend(spans)
        return len(spans)

    async def submit_blocking(self, spans: Sequence[EncodedSpan]) -> int:
        raise AssertionError("drop_newest mode never waits for span room")

    waits_are_released = False


def messages(values: Sequence[bytes], kafka_time_ns: int | None = None) -> list[InputMessage]:
    return [
        InputMessage(value, None, KafkaCoordinates("access-logs", 0, offset), kafka_time_ns)
        for offset, value in enumerate(values)
    ]


def handler(
    store: FakeStore,
    producer: FakeProducer,
    spans: SpanSink | None = None,
    mode: str = "index",
) -> BatchHandler:
    return BatchHandler(
        EnrichContext(),
        store,
        DeadLetterSink(producer, "dlq"),
        spans,
        es_mode=mode,
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


# --- GRAYSCOPE_OTLP_WHEN_FULL=block: the batch waits for span room -----------------


class GatedStore(FakeStore):
    """Stores only once ``gate`` opens; ``stored`` is set when it did."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.stored = asyncio.Event()

    async def deliver(self, items: list[BulkItem]) -> list[tuple[BulkItem, str]]:
        await self.gate.wait()
        rejected = await super().deliver(items)
        self.stored.set()
        return rejected


def lines(n: int, tag: str) -> list[InputMessage]:
    return messages([envoy_line(DAY1, f"/{tag}/{i}") for i in range(n)])


async def test_block_mode_waits_for_span_room_after_the_documents_are_stored() -> None:
    transport = FakeTransport()
    transport.gate = asyncio.Event()  # the trace backend is slow until the gate opens
    spans = otlp_exporter(
        transport, queue_size=3, batch_size=2, max_concurrent=1, when_full="block"
    )
    spans.start()
    store = GatedStore()
    batches = handler(store, FakeProducer(), spans)
    handled = asyncio.create_task(batches.handle(lines(8, "a")))
    await settle(transport, 0)
    assert store.items == [] and spans.stats.spans_queued == 0  # documents first
    store.gate.set()
    await store.stored.wait()
    await settle(transport, 1)
    assert len(store.items) == 8  # stored, while the batch still waits for span room
    assert not handled.done()  # so it is not acked and the next batch does not start
    assert spans.stats.spans_queued == 3
    transport.gate.set()
    outcome = await asyncio.wait_for(handled, timeout=10)
    assert (outcome.stored, outcome.spans) == (8, 8)
    assert await spans.flush(timeout=10)
    assert spans.stats.spans_exported_total == 8
    assert spans.stats.spans_dropped == 0
    await spans.stop()


async def test_drop_newest_mode_hands_spans_over_without_waiting() -> None:
    transport = FakeTransport()
    transport.gate = asyncio.Event()  # never opened
    spans = otlp_exporter(transport, queue_size=3, batch_size=2, max_concurrent=1, timeout=60.0)
    spans.start()
    batches = handler(FakeStore(), FakeProducer(), spans)
    outcome = await asyncio.wait_for(batches.handle(lines(8, "b")), timeout=10)
    assert (outcome.stored, outcome.spans) == (8, 8)
    assert spans.stats.spans_dropped_total["queue_full"] == 5
    await spans.stop(flush_timeout=0.01)


async def test_a_batch_waiting_for_span_room_is_abandoned_at_shutdown() -> None:
    transport = FakeTransport()
    transport.gate = asyncio.Event()  # never opened
    spans = otlp_exporter(
        transport, queue_size=2, batch_size=2, max_concurrent=1, timeout=60.0, when_full="block"
    )
    spans.start()
    store = FakeStore()
    batches = handler(store, FakeProducer(), spans)
    handled = asyncio.create_task(batches.handle(lines(8, "c")))
    await settle(transport, 1)
    assert len(store.items) == 8 and not handled.done()
    # The shutdown grace covers the span wait too; past it the batch is abandoned, unacked.
    assert await batches.interrupt(grace=0.05)
    with pytest.raises(ShutdownInterrupted):
        await handled
    await spans.stop(flush_timeout=0.01)


async def test_block_mode_records_the_delivery_latency_before_the_span_wait() -> None:
    transport = FakeTransport()
    transport.gate = asyncio.Event()
    spans = otlp_exporter(
        transport, queue_size=2, batch_size=2, max_concurrent=1, when_full="block"
    )
    spans.start()
    latencies: list[list[float]] = []
    batches = BatchHandler(
        EnrichContext(),
        FakeStore(),
        DeadLetterSink(FakeProducer(), "dlq"),
        spans,
        es_mode="index",
        observe_latency=latencies.append,
    )
    handled = asyncio.create_task(batches.handle(lines(6, "d")))
    await settle(transport, 1)
    assert not handled.done()
    # The documents' latency (Kafka record -> stored), not theirs plus the span wait.
    assert len(latencies) == 1
    transport.gate.set()
    await asyncio.wait_for(handled, timeout=10)
    await spans.stop()


async def test_a_wait_released_by_a_rebalance_reports_the_spans_it_dropped() -> None:
    transport = FakeTransport()
    transport.gate = asyncio.Event()  # the trace backend hangs
    spans = otlp_exporter(
        transport, queue_size=2, batch_size=2, max_concurrent=1, timeout=60.0, when_full="block"
    )
    spans.start()
    store = FakeStore()
    batches = handler(store, FakeProducer(), spans)
    handled = asyncio.create_task(batches.handle(lines(8, "e")))
    await settle(transport, 1)
    assert len(store.items) == 8 and not handled.done()  # 2 in flight, 2 queued, 4 waiting
    with spans.waits_released():  # a revocation: the wait ends, the rest is dropped
        outcome = await asyncio.wait_for(handled, timeout=10)
    assert (outcome.stored, outcome.spans, outcome.spans_released) == (8, 8, 4)
    assert spans.stats.spans_dropped_total["queue_full"] == 4
    # A batch whose spans fit, released or not, has nothing to report.
    transport.gate.set()
    assert await spans.flush(timeout=10)
    with spans.waits_released():
        outcome = await asyncio.wait_for(batches.handle(lines(2, "f")), timeout=10)
    assert (outcome.spans, outcome.spans_released) == (2, 0)
    await spans.stop()


def stream_events(values: list[InputMessage]) -> list[Any]:
    """Faust events as ``handle_stream_batch`` reads them (``event.message``)."""
    return [
        SimpleNamespace(
            message=SimpleNamespace(
                value=m.value,
                key=m.key,
                topic=m.coords.topic,
                partition=m.coords.partition,
                offset=m.coords.offset,
                timestamp=None,
                acked=False,
            )
        )
        for m in values
    ]


async def test_the_stream_path_withholds_the_acks_of_a_batch_a_rebalance_released() -> None:
    # Acked, Faust's revocation would commit the batch and the spans it dropped would be
    # lost; withheld, the partition's next owner reads it again, as in the batch mode.
    transport = FakeTransport()
    transport.gate = asyncio.Event()
    spans = otlp_exporter(
        transport, queue_size=2, batch_size=2, max_concurrent=1, timeout=60.0, when_full="block"
    )
    spans.start()
    batches = handler(FakeStore(), FakeProducer(), spans)
    released = stream_events(lines(8, "g"))
    handled = asyncio.create_task(handle_stream_batch(batches, released))
    await settle(transport, 1)
    assert not handled.done()
    with spans.waits_released():
        await asyncio.wait_for(handled, timeout=10)
    assert all(event.message.acked for event in released)  # take_events' ack: a no-op
    # A batch that queued every span is left for take_events to ack, as always.
    transport.gate.set()
    assert await spans.flush(timeout=10)
    fitted = stream_events(lines(2, "h"))
    with spans.waits_released():
        await asyncio.wait_for(handle_stream_batch(batches, fitted), timeout=10)
    assert not any(event.message.acked for event in fitted)
    await spans.stop()


def test_a_batch_is_processed_in_chunks_with_the_same_outcome_as_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Steps 1-3 run over ``STAGE_CHUNK`` events at a time (for the CPU caches): the
    documents, dead letters, spans and counts of a batch are those of one pass over it,
    in the same order, whatever the chunk size and wherever the bad lines fall."""
    import agents.handler as handler_module
    from pipeline.dev.synth import generate

    values = list(generate(3 * handler_module.STAGE_CHUNK + 7, seed=11))
    for bad in (0, handler_module.STAGE_CHUNK - 1, handler_module.STAGE_CHUNK, len(values) - 1):
        values[bad] = b"not a log line %d" % bad
    batch = messages(values, kafka_time_ns=KAFKA_TIME_NS)

    def run(chunk: int) -> tuple[Any, ...]:
        monkeypatch.setattr(handler_module, "STAGE_CHUNK", chunk)
        store, producer, spans = FakeStore(), FakeProducer(), FakeSpans()
        metrics = RequestMetrics(clock=lambda: 0.0)
        batches = BatchHandler(
            EnrichContext(),
            store,
            DeadLetterSink(producer, "dlq"),
            spans,
            es_mode="index",
            request_metrics=metrics,
        )
        outcome = asyncio.run(batches.handle(batch))
        return (
            outcome,
            [(item.doc_id, item.index, item.source) for item in store.items],
            producer.records,
            spans.spans,
            batches.stats.events_enriched_total,
            metrics.requests,
            {series: list(h.cumulative()) for series, h in metrics.durations.items()},
        )

    whole = run(len(batch))
    assert whole[0].dead_lettered == 4 and whole[0].stored == len(values) - 4
    assert sum(whole[5].values()) == len(values) - 4
    for chunk in (1, 5, handler_module.STAGE_CHUNK):
        assert run(chunk) == whole


async def test_processing_a_big_batch_gives_the_event_loop_turns() -> None:
    """The exporter's requests finish and start while a batch is processed: the loop
    gets a turn every EVENTS_PER_LOOP_TURN events, before the documents are delivered."""
    import agents.handler as handler_module
    from pipeline.dev.synth import generate

    turns = 0
    turns_at_delivery: list[int] = []

    async def other_work() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    class CountingStore(FakeStore):
        async def deliver(self, items: list[BulkItem]) -> list[tuple[BulkItem, str]]:
            turns_at_delivery.append(turns)
            return await super().deliver(items)

    size = 3 * max(handler_module.EVENTS_PER_LOOP_TURN, handler_module.STAGE_CHUNK) + 1
    batch = messages(list(generate(size, seed=3)), kafka_time_ns=KAFKA_TIME_NS)
    batches = handler(CountingStore(), FakeProducer(), FakeSpans())
    ticker = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    started = turns
    outcome = await batches.handle(batch)
    ticker.cancel()
    assert outcome.stored + outcome.dead_lettered == size
    assert turns_at_delivery[0] - started >= 3  # one turn per EVENTS_PER_LOOP_TURN events

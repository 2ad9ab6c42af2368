"""BatchPump releases acks in fetch order, whatever order deliveries finish in."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import ConsumerRecord
from faust.types import TP
from intervaltree import IntervalTree

from agents import batching
from agents.batching import (
    BatchingConsumer,
    BatchPathApp,
    BatchPump,
    BatchTopicKeys,
    FetchedBatch,
    MessagePartitionRecords,
    input_messages,
)
from agents.handler import InputMessage
from pipeline.core.model import KafkaCoordinates


class FakeConsumer:
    def __init__(self) -> None:
        self.acked: list[list[int]] = []
        self.pump_epoch = 0

    def ack_offsets(self, offsets: dict[Any, list[int]]) -> int:
        self.acked.append(offsets["tp"])
        return len(offsets["tp"])

    def forget_handed_out(self) -> None:
        self.forgot = True


def batch(sequence: int, first: int, n: int, epoch: int = 0) -> FetchedBatch:
    offsets = list(range(first, first + n))
    messages = [InputMessage(b"x", None, KafkaCoordinates("t", 0, o)) for o in offsets]
    return FetchedBatch(epoch, sequence, messages, {"tp": offsets})


async def test_acks_follow_fetch_order_when_deliveries_finish_out_of_order() -> None:
    consumer = FakeConsumer()
    gates = {0: asyncio.Event(), 10: asyncio.Event()}

    async def handle(messages: list[InputMessage]) -> None:
        await gates[messages[0].coords.offset].wait()

    pump = BatchPump(lambda: consumer, handle, batch_size=100, concurrency=2)  # type: ignore[arg-type]
    pump.start()
    await pump.queue.put(batch(1, 0, 10))
    await pump.queue.put(batch(2, 10, 10))
    await asyncio.sleep(0.01)
    gates[10].set()  # the later batch finishes first...
    await asyncio.sleep(0.01)
    assert consumer.acked == []  # ...but is not acked before the earlier one
    gates[0].set()
    await asyncio.sleep(0.01)
    assert consumer.acked == [list(range(0, 10)), list(range(10, 20))]
    await pump.stop()


async def test_batches_from_before_a_revocation_are_never_acked() -> None:
    consumer = FakeConsumer()
    handled: list[int] = []

    async def handle(messages: list[InputMessage]) -> None:
        handled.append(messages[0].coords.offset)

    pump = BatchPump(lambda: consumer, handle, batch_size=100, concurrency=1)  # type: ignore[arg-type]
    pump.new_epoch()  # a revocation happened after batch 1 was fetched
    assert consumer.pump_epoch == 1
    pump.start()
    await pump.queue.put(batch(1, 0, 10, epoch=0))
    await pump.queue.put(batch(2, 0, 10, epoch=1))  # re-read after the seek
    await asyncio.sleep(0.02)
    assert handled == [0]  # only the current epoch's batch was delivered
    assert consumer.acked == [list(range(0, 10))]
    await pump.stop()


async def test_a_batch_in_flight_during_a_revocation_is_delivered_but_never_acked() -> None:
    # Faust forgets the partition's acks and committed offset before its revocation
    # hook runs; an ack landing after that could let a later commit pass the batch
    # dropped before it (two, then four messages lost in the three-workers fault test).
    consumer = FakeConsumer()
    gate = asyncio.Event()
    handled: list[int] = []

    async def handle(messages: list[InputMessage]) -> None:
        handled.append(messages[0].coords.offset)
        if messages[0].coords.offset == 10:
            await gate.wait()

    pump = BatchPump(lambda: consumer, handle, batch_size=100, concurrency=2)  # type: ignore[arg-type]
    pump.start()
    await pump.queue.put(batch(1, 0, 10))
    await asyncio.sleep(0.01)
    await pump.queue.put(batch(2, 10, 10))  # in flight when the revocation comes
    await asyncio.sleep(0.01)
    assert consumer.acked == [list(range(0, 10))]
    revoking = asyncio.create_task(pump.revoke())
    await asyncio.sleep(0.01)
    assert not revoking.done()  # waits for the batch in flight...
    gate.set()
    assert await revoking == 0
    assert handled == [0, 10]  # ...which is delivered...
    assert consumer.acked == [list(range(0, 10))]  # ...but not acked
    assert consumer.pump_epoch == 1 and consumer.forgot
    await pump.stop()


async def test_dropped_batches_release_the_ones_behind_them_without_acking() -> None:
    consumer = FakeConsumer()

    async def handle(messages: list[InputMessage]) -> None:
        return None

    pump = BatchPump(lambda: consumer, handle, batch_size=100, concurrency=1)  # type: ignore[arg-type]
    await pump.queue.put(batch(1, 0, 10))
    assert pump.drop_queued() == 10
    pump.start()
    await pump.queue.put(batch(2, 10, 10))
    await asyncio.sleep(0.02)
    assert consumer.acked == [list(range(10, 20))]
    await pump.stop()


# --- BatchingConsumer's commit bookkeeping against Faust's own -----------------------


def bare_consumer(
    acked: list[int], committed: int | None, gaps: list[tuple[int, int]]
) -> BatchingConsumer:
    """The acking state Faust keeps per partition, without an app or a connection."""
    consumer = object.__new__(BatchingConsumer)
    consumer._acked = defaultdict(list, {TP_A: list(acked)})
    consumer._acked_index = defaultdict(set, {TP_A: set(acked)})
    consumer._committed_offset = defaultdict(lambda: None, {TP_A: committed})
    tree = IntervalTree()
    for start, length in gaps:
        tree.addi(start, start + length)
    consumer._gap = defaultdict(IntervalTree, {TP_A: tree})
    consumer._read_offset = defaultdict(lambda: None)
    return consumer


TP_A = TP("t", 0)


def test_new_offset_when_a_duplicate_fills_the_span_of_a_hole() -> None:
    consumer = bare_consumer([9, 9, 7], committed=None, gaps=[])
    assert consumer._new_offset(TP_A) == 8  # 8 is missing: the run is [7]


def test_new_offset_of_one_run_of_acks() -> None:
    consumer = bare_consumer([12, 10, 11, 13], committed=10, gaps=[])
    assert consumer._new_offset(TP_A) == 14
    assert consumer._acked[TP_A] == [] and consumer._acked_index[TP_A] == set()
    waiting = bare_consumer([12, 13], committed=10, gaps=[])  # 10 and 11 not acked yet
    assert waiting._new_offset(TP_A) is None
    assert waiting._acked[TP_A] == [12, 13]


def test_ack_offsets_skips_what_is_acked_or_committed_already() -> None:
    consumer = bare_consumer([5], committed=3, gaps=[])
    consumer.assignment = lambda: {TP_A}  # type: ignore[method-assign]
    consumer._waiting_for_ack = None
    assert consumer.ack_offsets({TP_A: [2, 3, 4, 5, 6]}) == 3  # 2: committed; 5: acked
    assert sorted(consumer._acked[TP_A]) == [3, 4, 5, 6]
    assert consumer.ack_offsets({TP_A: [7, 8], TP("gone", 0): [1]}) == 2  # fast path
    assert consumer._acked[TP_A][-2:] == [7, 8] and {7, 8} <= consumer._acked_index[TP_A]
    assert consumer._new_offset(TP_A) == 9


# --- records the batch path drops are read again ------------------------------------


class SeekRecordingConsumer(BatchingConsumer):
    """A bare BatchingConsumer that records seeks instead of talking to a broker."""

    def __init__(self, flow_active: bool) -> None:  # no app, no thread
        self.flow_active = flow_active
        self.seeks: list[tuple[TP, int] | str] = []
        self._read_offset = defaultdict(lambda: None)
        self._buffered_partitions = set()
        self._committed_offset = defaultdict(lambda: None)
        self._gap = defaultdict(IntervalTree)
        self.pump_epoch = 0
        self._fetch_sequence = 0

    async def perform_seek(self) -> None:
        self.seeks.append("committed")

    async def seek(self, partition: TP, offset: int) -> None:
        self.seeks.append((partition, offset))
        self._read_offset[partition] = offset


def fetched(tp: TP, first: int, n: int) -> list[InputMessage]:
    """A batch topic's fetched records, as MessagePartitionRecords makes them."""
    return [
        InputMessage(b"v", None, KafkaCoordinates(tp.topic, tp.partition, o), 1_000_000)
        for o in range(first, first + n)
    ]


def fetched_as_consumer_records(tp: TP, first: int, n: int) -> list[ConsumerRecord[bytes, bytes]]:
    """The same as aiokafka's own ConsumerRecords (fetched before the batch topics were set)."""
    return [
        ConsumerRecord(tp.topic, tp.partition, o, 1, 0, None, b"v", None, 0, 1, ())
        for o in range(first, first + n)
    ]


async def test_records_fetched_while_flow_is_stopped_are_sought_back_to_the_commit() -> None:
    # The position has moved past them: without a seek the next fetch starts after them,
    # the jump looks like a compacted hole, and the commit passes offsets never stored.
    consumer = SeekRecordingConsumer(flow_active=False)
    assert await consumer._to_batch({TP_A: fetched(TP_A, 512, 2)}, {TP_A}) is None
    assert consumer.seeks == ["committed"]


async def test_records_of_a_partition_paused_meanwhile_are_sought_back() -> None:
    paused, active = TP("t", 1), TP_A
    consumer = SeekRecordingConsumer(flow_active=True)

    class Monitor:
        def track_tp_end_offset(self, tp: TP, offset: int | None) -> None:
            return None

    consumer.app = type("App", (), {"monitor": Monitor()})()  # type: ignore[assignment]
    consumer.highwater = lambda tp: 0  # type: ignore[method-assign]
    batch = await consumer._to_batch(
        {paused: fetched(paused, 40, 3), active: fetched(active, 7, 2)}, {active}
    )
    assert batch is not None and batch.offsets == {active: [7, 8]}
    assert consumer.seeks == [(paused, 40)]


class Monitor:
    def track_tp_end_offset(self, tp: TP, offset: int | None) -> None:
        return None


def fetching_consumer() -> SeekRecordingConsumer:
    consumer = SeekRecordingConsumer(flow_active=True)
    consumer.app = type("App", (), {"monitor": Monitor()})()  # type: ignore[assignment]
    consumer.highwater = lambda tp: 0  # type: ignore[method-assign]
    return consumer


async def test_a_read_offset_set_back_below_what_was_handed_out_makes_no_gap() -> None:
    # After a broker restart Faust's seek to the committed offset (686) landed after a
    # fetch it raced with (686..1042 handed out and acked); the next fetch went on at
    # 1043. Taken as a compacted hole, the gap filled in 687..1043 over acked offsets:
    # Faust's acked list held them twice and the commit crawled one offset a second.
    consumer = fetching_consumer()
    gaps: list[tuple[int, int]] = []

    async def add_gap(tp: TP, start: int, end: int) -> None:
        gaps.append((start, end))

    consumer._add_gap = add_gap  # type: ignore[method-assign]
    first = await consumer._to_batch({TP_A: fetched(TP_A, 686, 357)}, {TP_A})
    assert first is not None and first.offsets[TP_A][-1] == 1042
    consumer._read_offset[TP_A] = 686  # the racing seek
    after = await consumer._to_batch({TP_A: fetched(TP_A, 1043, 5)}, {TP_A})
    assert after is not None and after.offsets == {TP_A: [1043, 1044, 1045, 1046, 1047]}
    consumer._read_offset[TP_A] = 686  # and a re-read from the commit: nothing twice
    again = await consumer._to_batch({TP_A: fetched(TP_A, 686, 370)}, {TP_A})
    assert again is not None and again.offsets == {TP_A: list(range(1048, 1056))}
    assert gaps == []
    # A real jump past everything handed out is still a hole the commit may skip.
    await consumer._to_batch({TP_A: fetched(TP_A, 1100, 2)}, {TP_A})
    assert gaps == [(1056, 1100)]
    consumer.forget_handed_out()  # a revocation: the next generation starts afresh
    consumer._read_offset[TP_A] = 686
    fresh = await consumer._to_batch({TP_A: fetched(TP_A, 686, 3)}, {TP_A})
    assert fresh is not None and fresh.offsets == {TP_A: [686, 687, 688]}


async def test_the_revocation_scope_covers_ours_and_fausts_revocation() -> None:
    # The worker's scope lets batches in flight stop waiting for span room
    # (OtlpExporter.waits_released) for as long as either part of a revocation waits.
    seen: list[tuple[str, bool]] = []
    inside = False

    class FaustSide:
        async def _on_partitions_revoked(self, revoked: set[Any]) -> None:
            seen.append(("faust", inside))

    class App(BatchPathApp, FaustSide):
        async def on_revoked(self) -> None:
            seen.append(("ours", inside))

        @contextlib.contextmanager
        def revocation_scope(self) -> Iterator[None]:
            nonlocal inside
            inside = True
            try:
                yield
            finally:
                inside = False

    await App()._on_partitions_revoked(set())
    assert seen == [("ours", True), ("faust", True)]
    assert not inside


async def test_consumer_records_fetched_before_the_batch_topics_were_set_make_the_same_batch() -> (
    None
):
    as_messages = await fetching_consumer()._to_batch({TP_A: fetched(TP_A, 3, 4)}, {TP_A})
    as_records = await fetching_consumer()._to_batch(
        {TP_A: fetched_as_consumer_records(TP_A, 3, 4)}, {TP_A}
    )
    assert as_messages is not None and as_records is not None
    assert as_records.offsets == as_messages.offsets == {TP_A: [3, 4, 5, 6]}
    assert [(m.value, m.key, m.coords, m.timestamp_ns) for m in as_records.messages] == [
        (m.value, m.key, m.coords, m.timestamp_ns) for m in as_messages.messages
    ]


def record_bytes(records: list[tuple[int, int, bytes | None, bytes]]) -> bytes:
    """A Kafka record batch (message format v2) of (offset delta, timestamp, key, value)."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for offset, timestamp, key, value in records:
        builder.append(offset, timestamp=timestamp, key=key, value=value, headers=[])
    return bytes(builder.build())


def unpacked(topic: str, key_deserializer: Any) -> list[Any]:
    """What aiokafka's fetcher gets of one fetched partition through MessagePartitionRecords."""
    data = record_bytes([(0, 1_700_000_000_123, None, b"a"), (1, -1, b"k", b"b"), (2, 0, b"", b"")])
    records = MessagePartitionRecords(
        TP(topic, 2), MemoryRecords(data), [], 0, key_deserializer, None, True, 0
    )
    return list(records)


def test_a_batch_topics_records_come_out_as_input_messages() -> None:
    consumer = SeekRecordingConsumer(flow_active=True)
    consumer.batch_topics = frozenset({"logs"})
    messages = unpacked("logs", BatchTopicKeys(consumer))
    assert [(m.value, m.key, m.coords, m.timestamp_ns) for m in messages] == [
        (b"a", None, KafkaCoordinates("logs", 2, 0), 1_700_000_000_123_000_000),
        (b"b", b"k", KafkaCoordinates("logs", 2, 1), None),  # no record time
        (b"", b"", KafkaCoordinates("logs", 2, 2), None),
    ]
    assert all(isinstance(m, InputMessage) for m in messages)
    # What input_messages made of aiokafka's own records, field for field.
    stock = unpacked("logs", None)
    assert all(isinstance(r, ConsumerRecord) for r in stock)
    assert [(m.value, m.key, m.coords, m.timestamp_ns) for m in messages] == [
        (m.value, m.key, m.coords, m.timestamp_ns) for m in input_messages(stock, "logs", 2)
    ]


def test_other_topics_and_other_consumers_get_aiokafkas_records() -> None:
    consumer = SeekRecordingConsumer(flow_active=True)
    consumer.batch_topics = frozenset({"logs"})
    # Not a batch topic (a changelog): aiokafka's records, as without the subclass.
    stock = unpacked("changelog", None)
    assert all(isinstance(r, ConsumerRecord) for r in stock)
    assert unpacked("changelog", BatchTopicKeys(consumer)) == stock
    # Another consumer (no BatchTopicKeys): aiokafka's records for every topic.
    assert all(isinstance(r, ConsumerRecord) for r in unpacked("logs", None))


def test_the_worker_consumer_reads_a_fetch_response_without_pausing() -> None:
    from aiokafka import conn

    saved = conn.READER_LIMIT
    try:
        conn.READER_LIMIT = 2**16  # aiokafka's own
        batching.use_large_reads()
        # Above a few partitions' fetch responses (Faust's consumer_max_fetch_size each).
        assert conn.READER_LIMIT == batching.READER_LIMIT >= 8 * 1024 * 1024
        batching.use_large_reads()  # never lowered
        assert conn.READER_LIMIT == batching.READER_LIMIT
    finally:
        conn.READER_LIMIT = saved

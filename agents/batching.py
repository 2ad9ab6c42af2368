"""Whole-batch delivery inside Faust's own consumer.

Stock Faust hands every message to the agent one at a time: per message a
``wait_first(callback(message), suspend_flow.wait())`` (two tasks), a queue
hand-off per stream, an Event per message — ~10k events/s on this hardware
whatever the agent does. For the input topics grayscope needs none of that:
the batch handler wants lists.

``BatchingConsumer`` is Faust's aiokafka consumer with one change: records of
the *batch topics* are taken out of each fetched record map (before Faust
turns them into per-message events) and put, as one list per fetch, on a
bounded queue. ``BatchPump`` tasks take them off, call the BatchHandler and
then ack the offsets **through Faust's own acking structures**, so Faust's
gap-aware commit, rebalancing, tables, other agents and the web server work
unchanged. Everything else (table changelogs, other agents' topics) still
flows through Faust's per-message path.

Semantics kept: an offset is acked only after its batch was delivered, and
acks are released in fetch order (Faust commits the first run of consecutive
acked offsets, so an ack that overtook an undelivered batch could be
committed past it); a batch interrupted by shutdown is not acked; on
revocation queued batches are dropped (never acked: the next owner reads them
again), the batches in flight finish first, as Faust's ``wait_empty`` does for
streams, and anything fetched before the revocation is never acked.

This module is the one fence around faust-streaming's and aiokafka's
private names: nothing else in the project touches them (the app's private
overrides are the ``BatchPathApp`` mixin below; consumer lag, unacked
messages and a consumer-group error aiokafka keeps are read through
``consumer_lag``, ``unacked_messages`` and ``consumer_group_error``). Every
private name it uses is listed in ``FAUST_PRIVATE_NAMES`` and
``AIOKAFKA_PRIVATE_NAMES``; tests/unit/test_batching_fence.py fails when the
module uses one that is not listed, or when the installed libraries lack one.
Both versions are pinned in pyproject.toml (``TESTED_VERSIONS``); at start-up
``batch_path_problem`` tells the worker when it runs on other versions, and the
worker then falls back to Faust's stock stream path with a warning.
tests/integration cover acks, commits, rebalances with two workers, store
outage and SIGKILL with this path on.

Both paths' consumers are ``SeekFencedConsumer``s (the stock stream path's,
``GRAYSCOPE_CONSUMER_MODE=stream``, too): Faust's consumer with its fetches fenced by
seeks, so that a seek racing a fetch around a rebalance cannot make a jump Faust's
commit passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

from aiokafka import codec as aiokafka_codec
from aiokafka import conn as aiokafka_conn
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.record import memory_records as aiokafka_memory_records
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from agents.handler import InputMessage
from pipeline.core import read_function
from pipeline.core.model import KafkaCoordinates, fetched_message, input_message
from pipeline.errors import ShutdownInterrupted

log = logging.getLogger(__name__)

#: The versions this module was written and tested against (pyproject.toml pins them).
TESTED_VERSIONS = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}

#: faust-streaming's private names this module uses: (class, name). Overridden
#: methods are called through ``super()``; attributes are read and changed in place.
FAUST_PRIVATE_NAMES: frozenset[tuple[str, str]] = frozenset(
    {
        ("faust.App", "_new_transport"),
        ("faust.App", "_on_partitions_revoked"),
        ("faust.App", "_consumer"),
        ("faust.transport.consumer.Consumer", "_wait_next_records"),
        ("faust.transport.consumer.Consumer", "_read_offset"),
        ("faust.transport.consumer.Consumer", "_buffered_partitions"),
        ("faust.transport.consumer.Consumer", "_add_gap"),
        ("faust.transport.consumer.Consumer", "_committed_offset"),
        ("faust.transport.consumer.Consumer", "_acked_index"),
        ("faust.transport.consumer.Consumer", "_acked"),
        ("faust.transport.consumer.Consumer", "_waiting_for_ack"),
        ("faust.transport.consumer.Consumer", "_unacked_messages"),
        ("faust.transport.drivers.aiokafka.Consumer", "_new_consumer_thread"),
        ("faust.transport.drivers.aiokafka.Consumer", "_thread"),
        ("faust.transport.drivers.aiokafka.AIOKafkaConsumerThread", "_create_worker_consumer"),
        ("faust.transport.drivers.aiokafka.AIOKafkaConsumerThread", "_consumer"),
    }
)

#: aiokafka's private names this module uses: (class, name).
AIOKAFKA_PRIVATE_NAMES: frozenset[tuple[str, str]] = frozenset(
    {
        ("aiokafka.AIOKafkaConsumer", "_fetch_max_wait_ms"),
        ("aiokafka.AIOKafkaConsumer", "_key_deserializer"),
        ("aiokafka.consumer.fetcher.PartitionRecords", "_consumer_record"),
        ("aiokafka.consumer.fetcher.PartitionRecords", "_tp"),
        ("aiokafka.consumer.fetcher.PartitionRecords", "_records"),
        ("aiokafka.consumer.fetcher.PartitionRecords", "_records_iterator"),
        ("aiokafka.consumer.fetcher.PartitionRecords", "_unpack_records"),
        ("aiokafka.consumer.fetcher.PartitionRecords", "_check_crcs"),
        ("aiokafka.consumer.fetcher.FetchResult", "_partition_records"),
        ("aiokafka.consumer.fetcher.FetchResult", "_topic_partition"),
        ("aiokafka.consumer.fetcher.FetchResult", "_update_position"),
        ("aiokafka.AIOKafkaConsumer", "_coordinator"),
        ("aiokafka.consumer.group_coordinator.GroupCoordinator", "_pending_exception"),
        ("aiokafka.consumer.group_coordinator.GroupCoordinator", "_coordination_task"),
    }
)


def batch_path_problem(installed: dict[str, str] | None = None) -> str | None:
    """Why the batch path must not run here (other library versions), or None."""
    from importlib import metadata

    if installed is None:
        installed = {}
        for name in TESTED_VERSIONS:
            try:
                installed[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                installed[name] = "not installed"
    wrong = [
        f"{name} {installed.get(name)} (tested: {version})"
        for name, version in TESTED_VERSIONS.items()
        if installed.get(name) != version
    ]
    return ", ".join(wrong) or None


def unacked_messages(consumer: Any) -> list[Any]:
    """The consumer's started-but-unacked messages (Faust's ``_unacked_messages``)."""
    return list(getattr(consumer, "_unacked_messages", ()))


def consumer_lag(app: Any) -> dict[tuple[str, int], int] | None:
    """(topic, partition) -> high watermark - committed offset, for the app's consumer.

    Table changelogs are left out: they are read, never committed, and would
    show their whole length as a lag that never goes down. None before the
    consumer exists.
    """
    consumer = getattr(app, "_consumer", None) if app is not None else None
    if consumer is None:
        return None
    committed = getattr(consumer, "_committed_offset", {})
    tables = getattr(app, "tables", None)
    changelogs = set(tables.changelog_topics) if tables is not None else set()
    lag: dict[tuple[str, int], int] = {}
    for tp in consumer.assignment():
        if tp.topic in changelogs:
            continue
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        lag[(tp.topic, tp.partition)] = max(0, highwater - (committed.get(tp) or 0))
    return lag


def consumer_group_error(app: Any) -> BaseException | None:
    """The error aiokafka's group coordinator gave up on for the app's consumer, or None.

    aiokafka keeps a fatal JoinGroup or heartbeat error (InvalidSessionTimeout,
    GroupAuthorizationFailed, ...) for the consumer's next ``getmany``, through
    ``check_errors``, and meanwhile tries the join again, which fails the same way.
    Faust never calls ``getmany``: its fetcher reads the fetcher's records directly,
    and starts only once partitions are assigned, which a refused join never does.
    So the error would never surface (the worker waits for ever, ``/healthz`` at
    503). Read without consuming it (the coordinator lives on the consumer thread's
    loop; these are plain attribute reads); also a coordination task that died.
    Retriable errors are aiokafka's to retry. None before the consumer exists, and
    on library versions without these names (the stock path's fallback).
    """
    thread = getattr(getattr(app, "_consumer", None), "_thread", None)
    client = getattr(thread, "_consumer", None)
    coordinator = getattr(client, "_coordinator", None)
    if coordinator is None:
        return None
    pending = getattr(coordinator, "_pending_exception", None)
    if isinstance(pending, BaseException) and not getattr(pending, "retriable", False):
        return pending
    task = getattr(coordinator, "_coordination_task", None)
    if isinstance(task, asyncio.Future) and task.done() and not task.cancelled():
        return task.exception()
    return None


def input_messages(records: list[Any], topic: str, partition: int) -> list[InputMessage]:
    """One partition's fetched aiokafka ConsumerRecords as the handler's messages. Only
    for records fetched before the batch topics were known: ``MessagePartitionRecords``
    makes the rest."""
    tp = TP(topic, partition)
    return [fetched_message(tp, record) for record in records]


class BatchTopicKeys:
    """The key deserializer of the worker's aiokafka consumer: keys stay bytes.

    It also names the Faust consumer (``BatchingConsumer``) the aiokafka consumer
    fetches for, so that ``MessagePartitionRecords`` knows its batch topics: aiokafka
    hands each fetched partition's deserializers, and nothing else of the consumer,
    to the records it unpacks.
    """

    __slots__ = ("consumer",)

    def __init__(self, consumer: BatchingConsumer) -> None:
        self.consumer = consumer

    def __call__(self, key: bytes | None) -> bytes | None:
        return key


# C's reader of a fetched record batch (pipeline/core/_read.c); None: aiokafka's reader.
KAFKA_BATCH: Callable[..., tuple[list[InputMessage], int, int] | None] | None = read_function(
    "kafka_batch"
)


# A record batch's codec (its attributes' low three bits): gzip's decoder gets the
# payload as a memoryview, the others' as bytes, as aiokafka's DefaultRecordBatch calls them.
GZIP_CODEC = 1
CODEC_DECODERS: dict[int, Callable[[bytes], bytes]] = {
    2: aiokafka_codec.snappy_decode,
    3: aiokafka_codec.lz4_decode,
    4: aiokafka_codec.zstd_decode,
}


def decompressed_records(codec: int, payload: memoryview) -> bytes:
    """A compressed record batch's records, for C's reader (``KAFKA_BATCH``): decompressed
    as aiokafka's ``DefaultRecordBatch`` decompresses them, by its codec functions
    (cramjam's for snappy, lz4 and zstd). What raises (a codec's library missing, corrupt
    data, an unknown codec) leaves the batch to aiokafka's reader, which raises its own
    error."""
    if codec == GZIP_CODEC:
        return aiokafka_codec.gzip_decode(payload)
    return CODEC_DECODERS[codec](payload.tobytes())


class RawMemoryRecords:
    """aiokafka's ``MemoryRecords`` of a fetched partition's record set, keeping its bytes
    for C's reader (``MessagePartitionRecords``): aiokafka's own keep none a reader can
    get at. aiokafka's fetcher makes a partition's records through the module's name."""

    __slots__ = ("raw", "records")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.records = aiokafka_memory_records.MemoryRecords(raw)

    def has_next(self) -> bool:
        return bool(self.records.has_next())

    def next_batch(self) -> Any:
        return self.records.next_batch()

    def size_in_bytes(self) -> int:
        return int(self.records.size_in_bytes())


class MessagePartitionRecords(aiokafka_fetcher.PartitionRecords):  # type: ignore[misc]
    """aiokafka's records of one fetched partition. Those of a batch topic fetched by
    the worker's consumer (its key deserializer a ``BatchTopicKeys``) come out as the
    handler's InputMessages, made in Faust's consumer thread.

    Before, aiokafka made a ConsumerRecord of each (an 11-field dataclass, ~290 ns a
    record) and ``_to_batch`` an InputMessage of that (~320 ns; bench/README.md,
    "Session 17"). Since session 22 the compiled core's ``fetched_message`` makes it
    (~280 ns; this class's interpreted method took ~560). Since session 23 C reads a
    record batch whole (``KAFKA_BATCH``: message format v2, read uncommitted; since
    session 24 a compressed one too, decompressed by ``decompressed_records``), checking
    its CRC with the CPU's instruction, and ``MessageFetchResult``
    hands the messages out a slice at a time: ~9,200 -> ~3,200 instructions a record,
    which aiokafka's reader spent holding the interpreter lock the batch handler needs
    (bench/README.md, "Session 23"). From the first batch C leaves (a codec whose
    library is missing, an older format, a bad CRC, anything malformed) aiokafka's own
    reader reads the rest, raising
    what it raises. Every other partition's records, and every other consumer's, are
    aiokafka's own ConsumerRecords as before.
    """

    _records_iterator: Iterator[Any]  # aiokafka's (its unpacking generator)

    def __init__(
        self,
        tp: Any,
        records: Any,
        aborted_transactions: Any,
        fetch_offset: int,
        key_deserializer: Any,
        value_deserializer: Any,
        check_crcs: bool,
        isolation_level: Any,
    ) -> None:
        super().__init__(
            tp,
            records,
            aborted_transactions,
            fetch_offset,
            key_deserializer,
            value_deserializer,
            check_crcs,
            isolation_level,
        )
        # C's reading: the bytes (None once aiokafka reads the rest), where the next batch
        # starts, the messages of the batch read last, how many of them are handed out,
        # and that batch's next offset (aiokafka's position after it).
        self.reads_batches = False
        self.raw: bytes | None = None
        self.position = 0
        self.ready: list[InputMessage] = []
        self.taken = 0
        self.batch_next_offset: int | None = None
        if (
            isinstance(key_deserializer, BatchTopicKeys)
            and value_deserializer is None
            and tp.topic in key_deserializer.consumer.batch_topics
        ):
            # An instance attribute: aiokafka's unpacking loop calls it for each record.
            self._consumer_record = fetched_message
            raw = getattr(records, "raw", None)
            if (
                KAFKA_BATCH is not None
                and type(raw) is bytes
                and isolation_level == aiokafka_fetcher.READ_UNCOMMITTED
            ):
                self.reads_batches = True
                self.raw = raw

    def __next__(self) -> Any:
        if not self.reads_batches:
            return super().__next__()
        taken = self.take(1)
        if not taken:
            raise StopIteration
        return taken[0]

    def take(self, limit: int | None) -> list[InputMessage]:
        """The next messages, up to ``limit`` (None: all), moving ``next_fetch_offset`` as
        aiokafka's unpacking does: past each message handed out, and to a batch's next
        offset once the messages after that batch are asked for. Fewer than ``limit``:
        there are no more."""
        out: list[InputMessage] = []
        while limit is None or len(out) < limit:
            ready = self.ready
            at = self.taken
            if at < len(ready):
                end = len(ready) if limit is None else min(len(ready), at + limit - len(out))
                out += ready[at:end]
                self.taken = end
                self.next_fetch_offset = ready[end - 1].coords.offset + 1
                continue
            if self.batch_next_offset is not None:
                self.next_fetch_offset = self.batch_next_offset
                self.batch_next_offset = None
            raw = self.raw
            if raw is None:
                message = next(self._records_iterator, None)
                if message is None:
                    break
                out.append(message)
                continue
            tp = self._tp
            read = cast(Callable[..., Any], KAFKA_BATCH)(
                raw,
                self.position,
                self.next_fetch_offset,
                self._check_crcs,
                input_message,
                KafkaCoordinates,
                tp.topic,
                tp.partition,
                decompressed_records,
            )
            if read is None:
                # aiokafka's reader takes the rest (nothing, at the end of the data).
                self._records = aiokafka_memory_records.MemoryRecords(raw[self.position :])
                self._records_iterator = self._unpack_records()
                self.raw = None
                continue
            self.ready, self.batch_next_offset, self.position = read
            self.taken = 0
        return out


class MessageFetchResult(aiokafka_fetcher.FetchResult):  # type: ignore[misc]
    """aiokafka's fetched partition as the consumer drains it, taking a
    ``MessagePartitionRecords``' messages a slice at a time (``take``) where aiokafka's
    ``getall`` takes a record at a time through two generators; the same messages and
    the same positions."""

    _partition_records: Any  # aiokafka's

    def getall(self, max_records: int | None = None) -> list[Any]:
        records = self._partition_records
        if not isinstance(records, MessagePartitionRecords) or not records.reads_batches:
            return cast(list[Any], super().getall(max_records))
        if not self.check_assignment(self._topic_partition):
            return []
        taken = records.take(max_records)
        self._update_position()
        if max_records is None or len(taken) < max_records:
            self._partition_records = None  # all handed out
        return taken


@dataclass(slots=True)
class FetchedBatch:
    epoch: int  # the pump's assignment epoch when fetched
    sequence: int  # fetch order: acks are released in this order
    messages: list[InputMessage]
    offsets: dict[TP, list[int]]


# Faust hard-codes fetch_max_wait_ms=1500. One fetch request covers every
# partition that needs data, so while the table changelogs and the canary
# topic are idle the broker may hold the request that would refill the busy
# input partitions for up to that long: the pipeline starves in between.
FETCH_MAX_WAIT_MS = 50


async def seek_back_to_committed(consumer: faust_aiokafka.Consumer) -> None:
    """Every assigned partition back to its committed offset (what was fetched past it
    and not handled is read again)."""
    try:
        await consumer.perform_seek()
    except Exception as exc:  # Faust's getmany goes on the same way
        log.warning("could not seek back to the committed offsets: %s", exc)


async def seek_back(consumer: faust_aiokafka.Consumer, tp: TP, offset: int) -> None:
    """One partition back to ``offset`` (its records from there are read again)."""
    try:
        await consumer.seek(tp, offset)
    except Exception as exc:  # revoked meanwhile: its next owner reads it
        log.warning("could not seek %s back to %d: %s", tp, offset, exc)


# aiokafka reads every broker response through an asyncio.StreamReader limited to
# 64 KiB (aiokafka.conn.READER_LIMIT): a fetch response of a few MiB then pauses and
# resumes the socket's reading every 128 KiB, two epoll_ctl calls and the asyncio
# Python around them each time: ~9 % of the consumer thread's samples, holding the
# interpreter lock the batch handler needs (py-spy; bench/README.md, "Session 22"). Above
# a fetch response (1 MiB a partition, Faust's consumer_max_fetch_size, a few
# partitions a response) a response is read without a pause.
READER_LIMIT = 16 * 1024 * 1024


def use_large_reads() -> None:
    """aiokafka's connections made from now on read a response without pausing
    (``READER_LIMIT``; a connection's buffer holds at most twice that)."""
    if aiokafka_conn.READER_LIMIT < READER_LIMIT:
        aiokafka_conn.READER_LIMIT = READER_LIMIT


class ShortWaitConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        use_large_reads()  # before the consumer connects
        # Batch topics' records as InputMessages (MessagePartitionRecords): aiokafka's
        # fetcher, made when the consumer starts, takes this deserializer, and makes its
        # PartitionRecords through the module's name.
        consumer._key_deserializer = BatchTopicKeys(cast(BatchingConsumer, self.consumer))
        aiokafka_fetcher.PartitionRecords = MessagePartitionRecords
        aiokafka_fetcher.FetchResult = MessageFetchResult
        aiokafka_fetcher.MemoryRecords = RawMemoryRecords
        return consumer


class SeekFencedConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with its fetches fenced by seeks: no record an input
    partition skips reaches the commit unhandled. The stock stream path's consumer, and
    the base of the batch path's (``BatchingConsumer``: the topics it leaves to Faust's
    per-message path, such as the canary aggregates, go through this ``getmany``).

    Faust's per-message drain (``Consumer._drain_messages``) takes a jump from a
    partition's read offset to the next record it is handed for a hole in the log
    (compaction, aborted transactions): ``_add_gap`` lets the commit pass the missing
    offsets (and Faust's commit passes one missing offset at the head anyway). Around
    a rebalance such jumps happen without a hole:

    - A seek to the committed offsets (Faust's recovery, after resuming the input
      partitions) moves aiokafka's position back, but Faust sets the read offsets back
      only when the seek's answer reaches its thread. A fetch delivered in between is
      dropped as read already; a fetch made before it and delivered after it goes on
      from the old position. Either way the next record jumps from the committed
      offset. In CI the stream mode lost 30 messages of a partition (35..64, commit
      at 35) across a rebalance; the unit test's stock run gives exactly that gap,
      36..65: the partition's first fetch after the rebalance, handed to the stream
      queues that the flow's resume then cleared, fetched again during the seek and
      dropped as read.
    - ``getmany`` drops the rest of a fetch when the flow stops or the generation
      changes, and a paused partition's records, without moving aiokafka's position
      back; the drain drops the message in hand when the flow stops.

    Here an input record fetched before a seek that moved its partition is not handed
    out, and when anything of a fetch was held back, left out, or handed out while a
    seek was in progress (or its partition was sought while its last record was being
    handed out: the drain then sets the read offset to that record, above the sought
    position), every partition goes back to its committed offset (one with none to its
    first record not handed out) and is read again. Records a stream had queued
    already are then handled twice (documents overwritten by ``_id``), as after any
    rebalance. tests/unit/test_stream_fetch_fence.py runs Faust's own ``getmany``
    and seeks over a fake log, with both consumers; the stock consumer fails it. The
    batch topics keep their own bookkeeping (``BatchingConsumer._to_batch``: what a
    generation handed out is read, and a re-read skips it); table changelogs, whose
    acks are off, are left to Faust.
    """

    #: Seeks so far (``seek_to_committed`` and ``seek``), the seeks in progress, and per
    #: partition the count at the seek that last moved it.
    seek_count: int = 0
    seeks_in_progress: int = 0
    sought_at: dict[TP, int] | None = None
    #: The partitions the last seek to the committed offsets moved (committed > 0:
    #: aiokafka leaves the others where they are).
    moved_to_committed: frozenset[TP] = frozenset()
    #: The record map of the fetch being delivered.
    fetched: Mapping[TP, list[Any]] | None = None

    def note_sought(self, partitions: Iterable[TP]) -> None:
        if self.sought_at is None:
            self.sought_at = {}
        self.seek_count += 1
        count = self.seek_count
        for tp in partitions:
            self.sought_at[tp] = count

    def sought_since(self, tp: TP, seek_count: int) -> bool:
        """Whether a seek after the ``seek_count``-th moved ``tp``."""
        sought_at = self.sought_at
        return sought_at is not None and sought_at.get(tp, 0) > seek_count

    async def seek_to_committed(self) -> Mapping[TP, int]:
        self.seeks_in_progress += 1
        try:
            offsets = await super().seek_to_committed()
        finally:
            self.seeks_in_progress -= 1
        # No await from here to Faust's ``perform_seek`` setting the read offsets back.
        self.moved_to_committed = frozenset(
            tp for tp, offset in offsets.items() if offset is not None and offset > 0
        )
        self.note_sought(self.moved_to_committed)
        return offsets

    async def seek(self, partition: TP, offset: int) -> None:
        self.seeks_in_progress += 1
        try:
            await super().seek(partition, offset)
        finally:
            self.seeks_in_progress -= 1
        self.note_sought((partition,))

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        records, active = await super()._wait_next_records(timeout)
        self.fetched = records
        return records, active

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        """Faust's ``getmany``; an input record fetched before a seek that moved its
        partition is held back, and when anything of the fetch was held back, left out,
        or handled by the drain while a seek was in progress or moved its partition,
        the partitions are sought back to be read again."""
        seeks_before = self.seek_count
        self.fetched = None
        acks_enabled_for = self.app.topics.acks_enabled_for
        delivered: dict[TP, int] = {}
        read_again = False
        last: tuple[TP, int] | None = None
        async for tp, message in super().getmany(timeout):
            fenced = acks_enabled_for(tp.topic)
            if fenced and self.sought_since(tp, seeks_before):
                read_again = True  # fetched from where the seek moved it away
                continue
            delivered[tp] = message.offset
            last = tp, message.offset
            yield tp, message
            # A seek in progress, or one that moved it, while the drain handled it: the
            # drain set the read offset to this record after the seek had set it back.
            if fenced and (self.seeks_in_progress or self.sought_since(tp, seeks_before)):
                read_again = True
        undelivered = self.undelivered(delivered, acks_enabled_for)
        if last is not None and not self.flow_active:
            tp, offset = last  # the drain may have dropped it as the flow stopped
            if acks_enabled_for(tp.topic):
                undelivered[tp] = min(undelivered.get(tp, offset), offset)
        if read_again or undelivered:
            await seek_back_to_committed(self)
            for tp, offset in undelivered.items():
                if tp not in self.moved_to_committed:  # none committed: not moved back
                    await seek_back(self, tp, offset)

    def undelivered(
        self, delivered: dict[TP, int], acks_enabled_for: Callable[[str], bool]
    ) -> dict[TP, int]:
        """Per input partition of the fetch, its first record ``getmany`` did not deliver."""
        undelivered: dict[TP, int] = {}
        for tp, records in (self.fetched or {}).items():
            if not records or not acks_enabled_for(tp.topic):
                continue
            last = delivered.get(tp)
            if last is None:
                undelivered[tp] = records[0].offset
            elif last < records[-1].offset:
                undelivered[tp] = last + 1
        return undelivered


class BatchingConsumer(SeekFencedConsumer):
    """Faust's aiokafka consumer that diverts batch topics to a queue."""

    def _new_consumer_thread(self) -> Any:
        return ShortWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)

    batch_topics: frozenset[str] = frozenset()
    handoff: asyncio.Queue[FetchedBatch] | None = None
    pump_epoch: int = 0
    _fetch_sequence: int = 0
    #: Per partition, the highest offset handed to the pump since the last revocation
    #: (made on first use: one dict per consumer).
    handed_out: dict[TP, int] | None = None

    def forget_handed_out(self) -> None:
        """On a revocation: the next generation reads from its committed offsets."""
        self.handed_out = {}

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        records, active = await super()._wait_next_records(timeout)
        handoff = self.handoff
        if records and handoff is not None:
            batch_topics = self.batch_topics
            mine = [tp for tp in records if tp.topic in batch_topics]
            if mine:
                # aiokafka hands us a fresh dict per fetch: taking entries out is safe.
                fetched = cast(dict[TP, list[Any]], records)
                batch = await self._to_batch({tp: fetched.pop(tp) for tp in mine}, active)
                if batch is not None:
                    # Blocks when the pumps are behind: fetching stops, memory stays bounded.
                    await handoff.put(batch)
        return records, active

    async def _to_batch(self, records: dict[TP, list[Any]], active: Any) -> FetchedBatch | None:
        if not self.flow_active:
            # Dropped, so aiokafka's position must go back or they are never read again:
            # the next fetch would start past them, ``_add_gap`` would take the missing
            # offsets for a compacted hole and the commit would pass them (Faust's
            # ``getmany`` seeks back here too). A rebalance usually seeks afterwards
            # anyway, but flow can stop after that seek and resume without another.
            await seek_back_to_committed(self)
            return None
        messages: list[InputMessage] = []
        offsets: dict[TP, list[int]] = {}
        read_offset = self._read_offset
        buffered = self._buffered_partitions
        handed_out = self.handed_out
        if handed_out is None:
            handed_out = self.handed_out = {}
        for tp, recs in records.items():
            if recs and not isinstance(recs[0], InputMessage):
                # Unpacked before ``batch_topics`` named this topic (a partition's records
                # come from one MessagePartitionRecords: all alike).
                recs = input_messages(recs, tp.topic, tp.partition)
            if active is not None and tp not in active and tp not in buffered:
                if recs:  # paused meanwhile: read these again when it resumes
                    await seek_back(self, tp, recs[0].coords.offset)
                continue
            previous = read_offset[tp]
            # What this generation handed out is read, whatever the read offset says: a
            # seek to the committed offsets (Faust's recovery, ours after a stopped flow)
            # can land after a fetch it raced with, setting the read offset back below
            # records already delivered. Taken at its word, the next fetch's jump would be
            # a compacted hole: the gap filled in over offsets already acked puts them in
            # Faust's acked list twice, which splits its first run and makes the commit
            # crawl one offset a commit (seen after a broker restart).
            handed = handed_out.get(tp)
            if handed is not None and (previous is None or previous < handed):
                previous = handed
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            if not recs:
                continue
            first, last = recs[0].coords.offset, recs[-1].coords.offset
            if (
                last - first == len(recs) - 1  # consecutive (aiokafka yields them in order)
                and (previous is None or first >= previous)
                and not (previous and first - previous > 1)
                and (handed is None or first > handed)
            ):
                kept = recs  # the usual fetch: nothing to skip, no gap
            else:
                kept = []
                for record in recs:
                    offset = record.coords.offset
                    if handed is not None and offset <= handed:
                        continue  # handed out already in this generation
                    if previous is not None and offset < previous:
                        continue  # already read in this generation (Faust drops these too)
                    if previous and offset - previous > 1:
                        # Compacted topics / transaction markers: let the commit skip the hole.
                        await self._add_gap(tp, previous + 1, offset)
                    previous = offset
                    kept.append(record)
                if not kept:
                    continue
            messages.extend(kept)
            read_offset[tp] = handed_out[tp] = kept[-1].coords.offset
            offsets[tp] = [message.coords.offset for message in kept]
        if not messages:
            return None
        self._fetch_sequence += 1
        return FetchedBatch(self.pump_epoch, self._fetch_sequence, messages, offsets)

    def ack_offsets(self, offsets: dict[TP, list[int]]) -> int:
        """Faust's ``ack`` for plain offsets: marks them committable, gap-aware."""
        assigned = self.assignment()
        acked_total = 0
        with ack_lock:
            for tp, tp_offsets in offsets.items():
                if tp not in assigned:
                    continue  # revoked meanwhile: the new owner reads these again
                committed = self._committed_offset[tp]
                acked_index = self._acked_index[tp]
                acked = self._acked[tp]
                # The usual case, in C: none committed or acked yet (offsets ascend, distinct).
                if (committed is None or tp_offsets[0] >= committed) and acked_index.isdisjoint(
                    tp_offsets
                ):
                    acked_index.update(tp_offsets)
                    acked.extend(tp_offsets)
                    acked_total += len(tp_offsets)
                    continue
                for offset in tp_offsets:
                    if (committed is None or offset >= committed) and offset not in acked_index:
                        acked_index.add(offset)
                        acked.append(offset)
                        acked_total += 1
            # Not counted in ``_n_acked``: that count makes Faust's per-message drain loop
            # commit (and flush the producer) inline every ``broker_commit_every`` acks,
            # i.e. after every batch here. Batches are committed by the periodic
            # ``broker_commit_interval`` commit instead.
            notify(self._waiting_for_ack)
        return acked_total


class BatchingTransport(faust_aiokafka.Transport):
    Consumer = BatchingConsumer


class StreamTransport(faust_aiokafka.Transport):
    Consumer = SeekFencedConsumer


class BatchPathApp:
    """The private overrides a ``faust.App`` needs for the batch path (a mixin).

    ``batch_path`` says whether this app consumes through ``BatchingConsumer``;
    ``on_revoked`` runs before Faust's own revocation handling (like Faust
    waiting for its streams: queued batches are dropped, unacked, so the next
    owner reads them again, and the batch in flight finishes); ``revocation_scope``
    is held around both (the worker's lets a batch in flight stop waiting for span
    queue room, which could outlast the group's rebalance timeout).
    """

    batch_path: bool = False
    #: Whether the stream path's consumer is a ``SeekFencedConsumer`` (on the tested versions).
    stream_fence: bool = False

    async def on_revoked(self) -> None:
        return None

    def revocation_scope(self) -> contextlib.AbstractContextManager[None]:
        """Entered for the whole revocation: ``on_revoked`` and Faust's own handling."""
        return contextlib.nullcontext()

    def _new_transport(self) -> Any:
        conf: Any = self.conf  # type: ignore[attr-defined]
        if self.batch_path:
            return BatchingTransport(conf.broker_consumer, self)
        if self.stream_fence:
            return StreamTransport(conf.broker_consumer, self)
        return super()._new_transport()  # type: ignore[misc]

    async def _on_partitions_revoked(self, revoked: set[Any]) -> None:
        with self.revocation_scope():
            await self.on_revoked()
            await super()._on_partitions_revoked(revoked)  # type: ignore[misc]


class BatchPump:
    """Takes fetched batches off the queue, delivers them, acks them."""

    def __init__(
        self,
        consumer_getter: Callable[[], BatchingConsumer],
        handle: Callable[[list[InputMessage]], Awaitable[Any]],
        batch_size: int,
        concurrency: int,
    ) -> None:
        self.queue: asyncio.Queue[FetchedBatch] = asyncio.Queue(maxsize=max(2, concurrency * 2))
        self._consumer_of = consumer_getter
        self._handle = handle
        self._batch_size = batch_size
        self._concurrency = concurrency
        self._tasks: list[asyncio.Task[None]] = []
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.epoch = 0
        # Faust commits the first run of consecutive acked offsets and tolerates a
        # one-offset hole before it: acks must therefore reach it in fetch order.
        self._next_to_release = 1
        self._finished: dict[int, FetchedBatch | None] = {}

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(), name=f"grayscope-batch-pump-{i}")
            for i in range(self._concurrency)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        self.drop_queued()

    def drop_queued(self) -> int:
        """Forget fetched-but-unstarted batches; never acked, so they are read again."""
        dropped = 0
        while True:
            try:
                batch = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                return dropped
            dropped += len(batch.messages)
            self._finish(batch.sequence, None)

    def new_epoch(self) -> None:
        """After a revocation: batches fetched before it will never be acked."""
        self.epoch += 1
        self._consumer_of().pump_epoch = self.epoch

    async def revoke(self) -> int:
        """On a revocation, before Faust's own: no batch fetched so far is ever acked.

        The epoch moves first: Faust has already forgotten the partitions' acks and
        committed offsets when its revocation hook runs, so an ack of a batch still in
        flight would land in fresh bookkeeping whose committed offset is unknown (None),
        where Faust's commit skips its "earlier offset not acked yet" guard: a later
        commit could then pass the offsets of a dropped batch before it (messages
        lost; seen in the three-workers fault test). The batch in flight finishes (its
        documents are stored) and is read again by the partition's next owner.
        Returns the number of queued messages dropped.
        """
        self.new_epoch()
        self._consumer_of().forget_handed_out()
        dropped = self.drop_queued()
        await self.wait_idle()
        return dropped

    def _finish(self, sequence: int, delivered: FetchedBatch | None) -> None:
        """Record a batch as done (delivered, or dropped: None); release acks in order.

        Only batches of the current epoch are acked (see ``revoke``).
        """
        self._finished[sequence] = delivered
        if sequence < self._next_to_release:
            return
        consumer = self._consumer_of()
        while self._next_to_release in self._finished:
            batch = self._finished.pop(self._next_to_release)
            if batch is not None and batch.epoch == self.epoch:
                consumer.ack_offsets(batch.offsets)
            self._next_to_release += 1

    async def wait_idle(self) -> None:
        """Until no batch is being delivered (queued ones are not waited for)."""
        await self._idle.wait()

    async def _run(self) -> None:
        queue = self.queue
        while True:
            batch = await queue.get()
            if batch.epoch != self.epoch:
                self._finish(batch.sequence, None)  # fetched before a revocation
                continue
            self._busy += 1
            self._idle.clear()
            try:
                await self._deliver(batch)
                self._finish(batch.sequence, batch)
            except ShutdownInterrupted:
                log.warning(
                    "stopping: abandoned a batch of %d, to be consumed again", len(batch.messages)
                )
                return
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                # What escapes the handler is fatal (credentials, a bug): stop the worker
                # so its successor resumes at the last commit.
                log.critical("fatal error, stopping the worker: %s", exc)
                consumer = self._consumer_of()
                await consumer.app.crash(exc)
                return
            finally:
                self._busy -= 1
                if self._busy == 0:
                    self._idle.set()

    async def _deliver(self, batch: FetchedBatch) -> None:
        messages = batch.messages
        size = self._batch_size
        for start in range(0, len(messages), size):
            await self._handle(messages[start : start + size])

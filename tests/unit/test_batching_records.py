"""A batch topic's fetched records as the worker's consumer drains them: C's reader of a
record batch (``_read.kafka_batch``, through ``MessagePartitionRecords.take`` and
``MessageFetchResult.getall``) held to aiokafka's own reader and ``fetched_message``
(the definition), message for message and position for position, on any record set:
several batches, gaps and compacted tails, fetch positions inside a batch, keys,
values and headers or none, log-append time, control batches, compressed batches,
truncated and corrupted data, and any way of draining it (getall with and without a
limit, getone)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.record._crc32c import crc as crc32c_reference
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from faust.types import TP
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agents import batching
from agents.batching import (
    BatchTopicKeys,
    MessageFetchResult,
    MessagePartitionRecords,
    RawMemoryRecords,
    input_messages,
)
from pipeline.core.model import InputMessage, KafkaCoordinates, input_message
from tests.unit.conftest import compiled_core_in_use

TOPIC = "logs"
PARTITION = 3
TP_LOGS = TP(TOPIC, PARTITION)
GZIP, SNAPPY, LZ4, ZSTD = 1, 2, 3, 4  # a batch's codecs
LOG_APPEND_TIME = 0x08
CONTROL = 0x20


# --- record sets ------------------------------------------------------------------------


@dataclass
class Batch:
    """One record batch: its records (offset delta, timestamp, key, value, headers)."""

    base_offset: int
    records: list[tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]]
    compression: int = 0
    log_append_time: bool = False
    control: bool = False
    extra_last_delta: int = 0  # a compacted tail: the last offset beyond the last record
    flags: dict[str, Any] = field(default_factory=dict)


def batch_bytes(batch: Batch) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=batch.compression,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 22,
    )
    for delta, timestamp, key, value, headers in batch.records:
        builder.append(delta, timestamp=timestamp, key=key, value=value, headers=headers)
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, batch.base_offset)
    attributes = struct.unpack_from(">h", data, 21)[0]
    attributes |= (LOG_APPEND_TIME if batch.log_append_time else 0) | (
        CONTROL if batch.control else 0
    )
    struct.pack_into(">h", data, 21, attributes)
    if batch.extra_last_delta:
        last = struct.unpack_from(">i", data, 23)[0]
        struct.pack_into(">i", data, 23, last + batch.extra_last_delta)
    struct.pack_into(">I", data, 17, crc32c_reference(bytes(data[21:])))
    return bytes(data)


_bytes = st.none() | st.binary(max_size=40)
_headers = st.lists(st.tuples(st.text(max_size=5), st.none() | st.binary(max_size=5)), max_size=2)
_timestamps = st.sampled_from([1_700_000_000_123, 0, -1, 9_300_000_000_000, 1])


@st.composite
def batches(draw: st.DrawFn, base_offset: int) -> Batch:
    count = draw(st.integers(0, 6))
    deltas = sorted(draw(st.sets(st.integers(0, 12), min_size=count, max_size=count)))
    records = [
        (delta, draw(_timestamps), draw(_bytes), draw(_bytes), draw(_headers)) for delta in deltas
    ]
    return Batch(
        base_offset,
        records,
        compression=draw(st.sampled_from([0, 0, 0, GZIP, SNAPPY, LZ4, ZSTD])),
        log_append_time=draw(st.booleans()),
        control=draw(st.integers(0, 9)) == 0,
        extra_last_delta=draw(st.sampled_from([0, 0, 3])),
    )


@st.composite
def record_sets(draw: st.DrawFn) -> tuple[bytes, int]:
    """A fetched partition's bytes, and the fetch offset."""
    out = bytearray()
    offset = draw(st.integers(0, 2**40) | st.sampled_from([2**63 - 40, 2**31 - 3]))
    first = offset
    for _ in range(draw(st.integers(1, 4))):
        if offset > 2**63 - 1 - 20:
            break  # Kafka's offsets are int64s
        batch = draw(batches(offset))
        if not batch.records:
            # DefaultRecordBatchBuilder refuses no records; the broker never sends them.
            continue
        out += batch_bytes(batch)
        offset = batch.base_offset + batch.records[-1][0] + batch.extra_last_delta + 1
    data = bytes(out)
    damage = draw(st.sampled_from(["none", "none", "none", "truncate", "flip"]))
    if data and damage == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif data and damage == "flip":
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1 :]
    fetch_offset = first + draw(st.sampled_from([0, 0, 1, 4]))
    return data, fetch_offset


# --- draining ---------------------------------------------------------------------------


class PartitionState:
    """aiokafka's TopicPartitionState, as FetchResult reads and moves it."""

    def __init__(self, position: int) -> None:
        self.paused = False
        self.position = position

    def consumed_to(self, position: int) -> None:
        self.position = position


class Assignment:
    def __init__(self, position: int) -> None:
        self.active = True
        self.state = PartitionState(position)

    def state_value(self, tp: Any) -> PartitionState:
        return self.state


class Consumer:
    batch_topics = frozenset({TOPIC})


Step = tuple[str, int | None]  # ("getall", limit) or ("getone", None)
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("getall"), st.none() | st.integers(1, 7)),
        st.tuples(st.just("getone"), st.none()),
    ),
    min_size=1,
    max_size=8,
)


def drained(
    data: bytes, fetch_offset: int, steps: list[Step], *, stock: bool, check_crcs: bool = True
) -> list[Any]:
    """What each step hands out (messages as tuples) and the position after it; an
    exception ends the steps."""
    assignment = Assignment(fetch_offset)
    if stock:
        records: Any = aiokafka_fetcher.PartitionRecords(
            TP_LOGS, MemoryRecords(data), [], fetch_offset, None, None, check_crcs, 0
        )
        result: Any = aiokafka_fetcher.FetchResult(
            TP_LOGS, assignment=assignment, partition_records=records, backoff=0
        )
    else:
        records = MessagePartitionRecords(
            TP_LOGS,
            RawMemoryRecords(data),
            [],
            fetch_offset,
            BatchTopicKeys(Consumer()),  # type: ignore[arg-type]
            None,
            check_crcs,
            0,
        )
        result = MessageFetchResult(
            TP_LOGS, assignment=assignment, partition_records=records, backoff=0
        )
    out: list[Any] = []
    for kind, limit in steps:
        if not result.has_more():
            break  # aiokafka's fetcher drops the result
        try:
            if kind == "getall":
                got = result.getall(limit)
            else:
                one = result.getone()
                got = [] if one is None else [one]
        except Exception as exc:  # CorruptRecordException; a codec's error, unchecked
            out.append(("raised", type(exc).__name__))
            break
        if stock:
            got = input_messages(got, TOPIC, PARTITION)
        out.append(
            (
                [(m.value, m.key, tuple(m.coords), m.timestamp_ns) for m in got],
                assignment.state.position,
                result.has_more(),
            )
        )
    return out


@given(record_sets(), _steps, st.booleans())
@settings(max_examples=400, deadline=None)
def test_the_messages_and_positions_are_aiokafkas(
    fetched: tuple[bytes, int], steps: list[Step], check_crcs: bool
) -> None:
    data, fetch_offset = fetched
    assume(MemoryRecords(data).has_next())  # else aiokafka's fetcher makes no records
    expected = drained(data, fetch_offset, steps, stock=True, check_crcs=check_crcs)
    assert drained(data, fetch_offset, steps, stock=False, check_crcs=check_crcs) == expected


def test_c_reads_batches_and_leaves_the_rest_to_aiokafka() -> None:
    """Compiled, C reads plain batches, and compressed ones through the decompressor it
    is given; without one, from a compressed batch on, aiokafka reads."""
    if not compiled_core_in_use():
        assert batching.KAFKA_BATCH is None
        return
    from pipeline.core import _read

    assert batching.KAFKA_BATCH is _read.kafka_batch
    plain = batch_bytes(Batch(10, [(0, 5, None, b"a", []), (2, 6, b"k", b"b", [("h", b"v")])]))
    packed = batch_bytes(Batch(13, [(0, 7, None, b"c", [])], compression=GZIP))
    data = plain + packed + plain
    args = (True, input_message, KafkaCoordinates, TOPIC, 3)
    decompress = batching.decompressed_records
    read = _read.kafka_batch(data, 0, 10, *args, decompress)
    assert read is not None
    messages, next_offset, position = read
    assert [(m.value, m.key, m.coords, m.timestamp_ns) for m in messages] == [
        (b"a", None, KafkaCoordinates(TOPIC, 3, 10), 5_000_000),
        (b"b", b"k", KafkaCoordinates(TOPIC, 3, 12), 6_000_000),
    ]
    assert all(type(m) is InputMessage for m in messages)
    assert (next_offset, position) == (13, len(plain))
    # The compressed batch: C's with the decompressor, aiokafka's without one.
    read = _read.kafka_batch(data, len(plain), 13, *args, decompress)
    assert read is not None
    assert [(m.value, m.coords.offset) for m in read[0]] == [(b"c", 13)]
    assert read[1:] == (14, len(plain) + len(packed))
    assert _read.kafka_batch(data, len(plain), 13, *args, None) is None

    # A decompressor that raises or answers other than bytes: aiokafka's (which raises).
    def broken(codec: int, payload: memoryview) -> bytes:
        raise OSError("corrupt")

    assert _read.kafka_batch(data, len(plain), 13, *args, broken) is None
    assert _read.kafka_batch(data, len(plain), 13, *args, lambda c, p: bytearray(p)) is None
    # The end of the data: aiokafka's.
    assert _read.kafka_batch(data, len(data), 14, *args, decompress) is None
    assert _read.kafka_batch(data, len(data) + 1, 14, *args, decompress) is None
    # A fetch position inside the batch: the records before it are left out.
    later = _read.kafka_batch(data, 0, 11, *args, decompress)
    assert later is not None and [m.coords.offset for m in later[0]] == [12]
    # A bad CRC: aiokafka's (which raises), unless CRCs are not checked.
    bad = bytearray(plain)
    bad[-1] ^= 1
    assert _read.kafka_batch(bytes(bad), 0, 10, *args, decompress) is None
    unchecked = _read.kafka_batch(bytes(bad), 0, 10, False, *args[1:], decompress)
    assert unchecked is not None and unchecked[0][-1].value == b"b"  # the header's byte
    with pytest.raises(TypeError):
        _read.kafka_batch(bytearray(data), 0, 10, *args, decompress)


@pytest.mark.parametrize("codec", [GZIP, SNAPPY, LZ4, ZSTD])
def test_c_reads_every_codecs_batch_as_aiokafka_does(codec: int) -> None:
    if not compiled_core_in_use():
        return
    from pipeline.core import _read

    records = [(i, i, None, b"line %d " % i * 20, []) for i in range(50)]
    data = batch_bytes(Batch(0, records, compression=codec))
    stock = MemoryRecords(data).next_batch()
    assert stock.compression_type == codec
    expected = [(r.offset, r.value) for r in stock]
    args = (True, input_message, KafkaCoordinates, TOPIC, 0, batching.decompressed_records)
    read = _read.kafka_batch(data, 0, 0, *args)
    assert read is not None
    assert [(m.coords.offset, m.value) for m in read[0]] == expected


def test_the_reader_takes_no_other_consumers_records() -> None:
    """Not a batch topic, or not the worker's consumer, or read-committed: aiokafka's."""
    data = batch_bytes(Batch(0, [(0, 5, None, b"a", [])]))
    keys = BatchTopicKeys(Consumer())  # type: ignore[arg-type]
    for topic, deserializer, isolation in (
        ("changelog", keys, 0),
        (TOPIC, None, 0),
        (TOPIC, keys, aiokafka_fetcher.READ_COMMITTED),
    ):
        records = MessagePartitionRecords(
            TP(topic, 0), RawMemoryRecords(data), [], 0, deserializer, None, True, isolation
        )
        assert not records.reads_batches
    assert MessagePartitionRecords(
        TP(TOPIC, 0), RawMemoryRecords(data), [], 0, keys, None, True, 0
    ).reads_batches == (batching.KAFKA_BATCH is not None)
    # aiokafka's own MemoryRecords (no bytes kept): aiokafka's reader.
    assert not MessagePartitionRecords(
        TP(TOPIC, 0), MemoryRecords(data), [], 0, keys, None, True, 0
    ).reads_batches


def test_raw_memory_records_are_aiokafkas_memory_records() -> None:
    data = batch_bytes(Batch(0, [(0, 5, None, b"a", [])])) * 2
    mine, theirs = RawMemoryRecords(data), MemoryRecords(data)
    assert mine.raw is data
    assert mine.size_in_bytes() == theirs.size_in_bytes()
    while theirs.has_next():
        assert mine.has_next()
        assert mine.next_batch().base_offset == theirs.next_batch().base_offset
    assert not mine.has_next() and mine.next_batch() is None


def test_the_crc_is_castagnolis_in_both_ways() -> None:
    if not compiled_core_in_use():
        return
    from pipeline.core import _read

    assert _read.crc32c_kind() in ("sse4.2", "portable")
    assert _read.crc32c(b"123456789", True) == _read.crc32c(b"123456789", False) == 0xE3069283
    for n in range(0, 80):
        data = bytes(range(n)) * 3
        assert _read.crc32c(data, True) == _read.crc32c(data, False) == crc32c_reference(data)


@given(st.binary(max_size=300))
def test_the_crc_is_aiokafkas_on_any_bytes(data: bytes) -> None:
    if not compiled_core_in_use():
        return
    from pipeline.core import _read

    assert _read.crc32c(data, False) == _read.crc32c(data, True) == crc32c_reference(data)

"""Both paths' consumers fence their fetches by seeks (agents/batching.py ``SeekFencedConsumer``).

Faust's drain (``Consumer._drain_messages``) takes a jump from a partition's read offset
to the next record it is handed for a hole in the log and lets the commit pass it. A seek
to the committed offsets racing a fetch (Faust's recovery after a rebalance) sets the
read offset back under records being delivered, and the stream queues those records
went to are cleared when the flow resumes: the stream mode once lost 30 messages of a
partition that way in CI. Here Faust's real ``getmany``, ``perform_seek`` and ``seek``
run over a fake log (aiokafka's positions), and ``drain`` is Faust's read-offset rule:
after the seek, every record from the committed offset on must be handed out again and
no gap recorded. A stock Faust consumer fails these tests (checked when written).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from faust.transport.utils import DefaultSchedulingStrategy
from faust.types import TP

from agents.batching import BatchingConsumer, SeekFencedConsumer

INPUT = TP("in", 0)
FETCH = 30  # records per fetch


@dataclass(frozen=True)
class Record:
    offset: int


class FakeLogThread:
    """aiokafka behind Faust's consumer thread: one partition's log and its position."""

    def __init__(self, end: int, committed: int | None, position: int) -> None:
        self.end = end
        self.committed = committed
        self.position = position
        self.seek_lands = asyncio.Event()  # a seek to the committed offsets answers
        self.seek_lands.set()

    async def getmany(self, active: Any, timeout: float) -> dict[TP, list[Record]]:
        await asyncio.sleep(0)
        first = self.position
        records = [Record(o) for o in range(first, min(first + FETCH, self.end))]
        self.position = first + len(records)
        return {INPUT: records} if records else {}

    async def seek_to_committed(self) -> Mapping[TP, int | None]:
        if self.committed:  # aiokafka seeks only partitions with a commit above 0
            self.position = self.committed
        await self.seek_lands.wait()  # the answer reaches Faust's thread later
        return {INPUT: self.committed}

    def seek(self, tp: TP, offset: int) -> None:
        self.position = offset

    def highwater(self, tp: TP) -> int:
        return self.end

    def assignment(self) -> set[TP]:
        return {INPUT}


class Topics:
    def acks_enabled_for(self, topic: str) -> bool:
        return topic == INPUT.topic


class Monitor:
    def track_tp_end_offset(self, tp: TP, offset: int | None) -> None:
        return None


class App:
    client_only = False
    consumer_generation_id = 1
    topics = Topics()
    monitor = Monitor()


class QuietLog:
    def dev(self, *args: Any, **kwargs: Any) -> None:
        return None


class FakeLogConsumer(SeekFencedConsumer):
    """A bare SeekFencedConsumer, the stream path's (no app, no thread), over a FakeLogThread."""

    def __init__(self, thread: FakeLogThread) -> None:
        self._thread = thread  # type: ignore[assignment]
        self.app = App()  # type: ignore[assignment]
        self.flow_active = True
        self.can_resume_flow = asyncio.Event()
        self.can_resume_flow.set()
        self.not_waiting_next_records = asyncio.Event()
        self.scheduler = DefaultSchedulingStrategy()  # type: ignore[abstract]
        self._active_partitions = {INPUT}
        self._paused_partitions = set()
        self._buffered_partitions = set()
        self._read_offset = defaultdict(lambda: None)
        self._committed_offset = defaultdict(lambda: None)
        self._committed_offset[INPUT] = thread.committed
        self._stopped = asyncio.Event()  # type: ignore[assignment]  # never stopping
        self._crashed = asyncio.Event()  # type: ignore[assignment]
        self.log = QuietLog()  # type: ignore[assignment]

    def _to_message(self, tp: TP, record: Any) -> Any:
        return record


class FakeLogBatchingConsumer(FakeLogConsumer, BatchingConsumer):
    """The batch path's consumer: what it leaves to Faust's path (here every topic: no
    batch topics) goes through the same fence."""


@pytest.fixture(params=[FakeLogConsumer, FakeLogBatchingConsumer], ids=["stream", "batch"])
def consumer_class(request: pytest.FixtureRequest) -> type[FakeLogConsumer]:
    cls: type[FakeLogConsumer] = request.param
    return cls


@dataclass
class Drained:
    """What Faust's drain did with the records ``getmany`` handed it."""

    handed: list[int]
    gaps: list[tuple[int, int]]
    dropped: list[int]


async def drain(
    consumer: FakeLogConsumer, fetches: int, on_handed: Any = None, out: Drained | None = None
) -> Drained:
    """Faust's ``_drain_messages`` rule: a record at or past the read offset is handed
    to the streams (a jump of more than one from a read offset is a gap the commit may
    pass), and the read offset set to it after its callback; one below it was read
    already and is dropped."""
    out = out or Drained([], [], [])
    for _ in range(fetches):
        async for tp, message in consumer.getmany(timeout=1.0):
            offset = message.offset
            read = consumer._read_offset[tp]
            if read is None or offset >= read:
                if read and offset - read > 1:
                    out.gaps.append((read + 1, offset))
                out.handed.append(offset)
                if on_handed is not None:
                    await on_handed(offset)
                consumer._read_offset[tp] = offset
            else:
                out.dropped.append(offset)
    return out


@pytest.mark.parametrize("seek_lands_at", [50, 64], ids=["mid-fetch", "last-record"])
async def test_a_seek_landing_as_a_fetch_is_handed_out_reads_the_partition_again(
    consumer_class: type[FakeLogConsumer], seek_lands_at: int
) -> None:
    # After a rebalance: the fetch made as recovery resumes the partition hands out its
    # first records (35..64), the seek to the commit (35) lands while one of them is
    # handed to the streams, and the flow's resume then clears what they had queued.
    # Mid-fetch, the rest of the fetch would jump from 35 (a gap); at its last record,
    # the drain sets the read offset to 64 after the seek set it to 35, so the re-read
    # (35..63) would be dropped as read and the commit would stay at 35 for ever.
    thread = FakeLogThread(end=100, committed=35, position=35)
    consumer = consumer_class(thread)
    drained = Drained([], [], [])
    cleared_up_to: list[int] = []

    async def seek(offset: int) -> None:
        if offset == seek_lands_at and not cleared_up_to:
            await consumer.perform_seek()
            cleared_up_to.append(len(drained.handed))

    await drain(consumer, fetches=8, on_handed=seek, out=drained)
    assert drained.gaps == [] and drained.dropped == []
    # Everything handed out up to the seek was cleared: all of 35.. again after it.
    assert drained.handed[cleared_up_to[0] :] == list(range(35, 100))


async def test_records_delivered_while_a_seek_is_in_progress_are_read_again(
    consumer_class: type[FakeLogConsumer],
) -> None:
    # The seek has moved aiokafka's position back (35) but its answer, and so Faust's
    # read offset going back, comes later: a fetch from 35 meanwhile is dropped as read
    # already (the read offset is 64), and the next jump from 35 would be a gap. The
    # stock consumer records the gap 36..65 here: with the commit at 35 (one missing
    # offset at the head passes) the commit passes 35..64, the 30 messages CI lost
    # (test_worker_span_backpressure.py's stream-mode rebalance, 2026-12-06).
    thread = FakeLogThread(end=100, committed=35, position=35)
    consumer = consumer_class(thread)
    first = await drain(consumer, fetches=1)  # 35..64 handed out (then cleared)
    assert first.handed == list(range(35, 65))
    thread.seek_lands.clear()
    seek = asyncio.create_task(consumer.perform_seek())
    await asyncio.sleep(0)
    fetch = asyncio.create_task(drain(consumer, fetches=1))
    await asyncio.sleep(0.05)
    thread.seek_lands.set()
    await seek
    during = await fetch
    assert during.dropped == list(range(35, 64))  # below the read offset (64): read already
    after = await drain(consumer, fetches=4)
    assert after.gaps == []
    assert after.handed == list(range(35, 100))


async def test_the_rest_of_a_fetch_dropped_as_the_flow_stops_is_read_again(
    consumer_class: type[FakeLogConsumer],
) -> None:
    thread = FakeLogThread(end=100, committed=35, position=35)
    consumer = consumer_class(thread)

    async def stop_at_40(offset: int) -> None:
        if offset == 40:
            consumer.flow_active = False  # a rebalance starts

    stopped = await drain(consumer, fetches=1, on_handed=stop_at_40)
    assert stopped.handed == list(range(35, 41))
    consumer.flow_active = True  # resumed without another seek
    after = await drain(consumer, fetches=4)
    assert after.gaps == []
    assert after.handed[0] == 35 and after.handed == list(range(35, 100))


async def test_a_partition_without_a_commit_goes_back_to_its_first_record_not_handed_out(
    consumer_class: type[FakeLogConsumer],
) -> None:
    # aiokafka's seek to the committed offsets leaves such a partition where it is.
    thread = FakeLogThread(end=100, committed=None, position=0)
    consumer = consumer_class(thread)

    async def stop_at_10(offset: int) -> None:
        if offset == 10:
            consumer.flow_active = False

    stopped = await drain(consumer, fetches=1, on_handed=stop_at_10)
    assert stopped.handed == list(range(0, 11))
    consumer.flow_active = True
    after = await drain(consumer, fetches=4)
    # The message in hand as the flow stopped (10) may have been dropped: read again.
    assert after.handed == list(range(10, 100))
    assert after.gaps == []


async def test_fetches_without_seeks_are_handed_out_untouched(
    consumer_class: type[FakeLogConsumer],
) -> None:
    thread = FakeLogThread(end=100, committed=35, position=35)
    consumer = consumer_class(thread)
    drained = await drain(consumer, fetches=3)
    assert drained.handed == list(range(35, 100))
    assert drained.gaps == [] and drained.dropped == []
    assert consumer.seek_count == 0

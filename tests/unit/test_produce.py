"""``grayscope produce``: rate schedule, line splitting, progress text, and the batching
sender against a fake aiokafka producer."""

from __future__ import annotations

import argparse
import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pipeline.commands.produce import (
    KafkaSender,
    LineSplitter,
    ProduceStats,
    RateSchedule,
    StatusLine,
    add_produce_arguments,
    check_compression,
    chunked,
    format_count,
    format_duration,
    format_rate,
    iterate,
    progress_line,
    run_produce,
    summary_line,
    synthetic_chunk_size,
    synthetic_values,
)
from pipeline.config import load_settings
from pipeline.errors import ConfigError, ProduceError

# --- rate schedule ------------------------------------------------------------------


def test_schedule_spaces_messages_by_the_interval() -> None:
    schedule = RateSchedule(100, start=10.0)
    # Asked at the start time each time: every message waits one interval more.
    waits = [schedule.reserve(10.0) for _ in range(4)]
    assert waits == pytest.approx([0.0, 0.01, 0.02, 0.03])


def test_schedule_is_absolute_so_late_wakeups_do_not_lower_the_rate() -> None:
    schedule = RateSchedule(10, start=0.0)
    assert schedule.reserve(0.0) == 0.0
    # Woke up late for message 2 (due at 0.1): it goes at once, message 3 is still due at 0.2.
    assert schedule.reserve(0.15) == 0.0
    assert schedule.reserve(0.15) == pytest.approx(0.05)


def test_schedule_over_a_long_run_matches_the_rate_exactly() -> None:
    schedule = RateSchedule(1000, start=0.0)
    now = 0.0
    for _ in range(10_000):
        now += schedule.reserve(now)
    # The 10,000th message is due at 9.999 s: no drift from rounding.
    assert now == pytest.approx(9.999)


def test_schedule_catch_up_after_a_stall_is_bounded_by_the_burst() -> None:
    schedule = RateSchedule(100, start=0.0, burst_seconds=0.5)
    schedule.reserve(0.0)
    # Stalled for 10 s: only 0.5 s worth (50 messages) may go at once, not 1,000.
    immediate = 0
    while schedule.reserve(10.0) == 0.0:
        immediate += 1
    assert immediate == 51  # the due one plus 50 of catch-up


def test_schedule_reserves_several_messages_at_once() -> None:
    schedule = RateSchedule(10, start=0.0)
    assert schedule.reserve(0.0, n=5) == 0.0
    assert schedule.reserve(0.0) == pytest.approx(0.5)


def test_schedule_rebase_forgets_debt() -> None:
    schedule = RateSchedule(10, start=0.0)
    schedule.reserve(0.0, n=100)
    schedule.rebase(3.0)
    assert schedule.reserve(3.0) == 0.0


def test_schedule_rejects_a_zero_rate() -> None:
    with pytest.raises(ValueError):
        RateSchedule(0, start=0.0)


# --- lines ----------------------------------------------------------------------------


def test_splitter_handles_lines_across_reads_crlf_and_blank_lines() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"one\r\ntw") == [b"one"]
    assert splitter.feed(b"o\n\n  \nthr") == [b"two", b"  "]
    assert splitter.feed(b"") == []
    assert splitter.finish() == [b"thr"]
    assert splitter.finish() == []


def test_splitter_keeps_bytes_as_they_are() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b'{"a":"\xff\xfe"}\n') == [b'{"a":"\xff\xfe"}']


def test_chunked() -> None:
    assert list(chunked([b"a", b"b", b"c"], 2)) == [[b"a", b"b"], [b"c"]]
    assert list(chunked([], 2)) == []


def test_synthetic_chunks_cover_about_20_ms_of_traffic() -> None:
    assert synthetic_chunk_size(0) == 512
    assert synthetic_chunk_size(1000) == 20
    assert synthetic_chunk_size(10) == 1
    assert synthetic_chunk_size(10_000_000) == 512


def test_synthetic_values_use_the_given_clock_and_versions() -> None:
    stamps = iter(range(1_795_176_000_000_000_000, 1_795_176_100_000_000_000, 1_000_000))
    values = list(
        synthetic_values(
            50, 3, 1.0, "/play/share", clock=lambda: next(stamps), versions=("9", "10")
        )
    )
    assert len(values) == 50
    assert any(b"v=10" in v for v in values)
    assert not any(b"v=9&" in v or b"v=9 " in v for v in values)


# --- progress text -----------------------------------------------------------------------


def test_number_formats() -> None:
    assert format_count(1234567) == "1,234,567"
    assert format_rate(950.4) == "950/s"
    assert format_rate(12_345) == "12.3k/s"
    assert format_rate(1_200_000) == "1.20M/s"
    assert format_duration(75.4) == "1:15"
    assert format_duration(3725) == "1:02:05"
    assert format_duration(-1) == "0:00"


def test_progress_line_with_a_total_has_a_bar() -> None:
    line = progress_line(sent=500, errors=0, elapsed=2.0, current_rate=300, total=1000, width=10)
    assert line.startswith("[#####-----]  50.0%")
    assert "sent 500/1,000" in line
    assert "rate 300/s (avg 250/s)" in line
    assert "errors 0" in line


def test_progress_line_without_a_total() -> None:
    line = progress_line(sent=12_000, errors=3, elapsed=0.0, current_rate=15_000)
    assert line.startswith("sent 12,000  rate 15.0k/s (avg 0/s)  errors 3")


def test_summary_line_mentions_failures_and_interruption() -> None:
    stats = ProduceStats(
        messages_acked_total=1000,
        messages_failed_total=5,
        messages_skipped_total=1,
        bytes_acked_total=2 * 1_048_576,
    )
    text = summary_line(stats, 2.0, "access-logs", interrupted=True)
    assert text == (
        "interrupted: 1,000 messages (2.0 MiB) sent to access-logs in 2.0 s (500/s), "
        "5 failed, 1 skipped (too large)"
    )
    assert stats.errors == 6


def test_status_line_on_a_terminal_rewrites_in_place() -> None:
    out = io.StringIO()
    status = StatusLine(out, tty=True, interval=1.0)
    status.update("long line", now=0.0)
    status.update("ignored: too soon", now=0.5)
    status.update("short", now=1.0)
    status.message("done")
    status.update("again", now=2.0)
    status.clear()
    # A message replaces the progress line; clear() keeps it and moves on.
    assert out.getvalue() == "\rlong line\rshort    \rdone \n\ragain\n"


def test_status_line_elsewhere_writes_periodic_lines() -> None:
    out = io.StringIO()
    status = StatusLine(out, tty=False, log_interval=5.0)
    status.update("a", now=0.0)
    status.update("b", now=4.0)
    status.update("c", now=5.0)
    status.update("d", now=5.1, force=True)
    status.clear()
    assert out.getvalue() == "a\nc\nd\n"


def test_status_line_disabled_still_prints_messages() -> None:
    out = io.StringIO()
    status = StatusLine(out, tty=True, enabled=False)
    status.update("progress", now=0.0)
    status.message("summary")
    assert out.getvalue() == "summary\n"


# --- settings, arguments ----------------------------------------------------------------


def test_compression_choices() -> None:
    assert check_compression("none") is None
    assert check_compression("gzip") == "gzip"
    with pytest.raises(ConfigError):
        check_compression("brotli")


def test_compression_that_needs_cramjam_says_so_or_works() -> None:
    try:
        import cramjam  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="cramjam"):
            check_compression("zstd")
    else:
        assert check_compression("zstd") == "zstd"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_produce_arguments(parser)
    return parser.parse_args(argv)


def test_arguments_need_exactly_one_source() -> None:
    with pytest.raises(SystemExit):
        parse()
    with pytest.raises(SystemExit):
        parse("--file", "x", "--synthetic")
    args = parse("--synthetic", "--count", "5", "--rate", "100", "--regression", "/blog")
    assert (args.synthetic, args.count, args.rate, args.regression) == (True, 5, 100.0, "/blog")


@pytest.mark.parametrize(
    "argv",
    [
        ("--synthetic", "--rate", "-1"),
        ("--synthetic", "--count", "-1"),
        ("--synthetic", "--canary-share", "1.5"),
        ("--file", "x.log", "--count", "3"),
        ("--synthetic", "--regression", "/nowhere"),
        ("--file", "/nonexistent/grayscope/input.log"),
    ],
)
def test_invalid_arguments_are_config_errors(argv: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError):
        run_produce(parse(*argv), load_settings())


# --- the sender, against a fake producer ---------------------------------------------------


class FakeBatch:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.values: list[bytes] = []
        self.closed = False

    def append(self, *, key: Any, value: bytes, timestamp: Any) -> object | None:
        if self.closed or len(self.values) >= self.capacity:
            self.closed = True
            return None
        self.values.append(value)
        return object()

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """Records batches per partition; batches whose first value is in ``fail`` fail."""

    def __init__(
        self,
        capacity: int = 3,
        partitions: tuple[int, ...] = (0, 1, 2),
        fail: frozenset[bytes] = frozenset(),
        unreachable: bool = False,
        **options: Any,
    ) -> None:
        self.capacity = capacity
        self.partitions = partitions
        self.fail = fail
        self.unreachable = unreachable
        self.options = options
        self.sent: list[tuple[int, list[bytes]]] = []
        self.started = self.stopped = False

    async def start(self) -> None:
        if self.unreachable:
            from aiokafka.errors import KafkaConnectionError

            raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 1)]")
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def partitions_for(self, topic: str) -> set[int]:
        return set(self.partitions)

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        self.sent.append((partition, list(batch.values)))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if batch.values and batch.values[0] in self.fail:
            future.set_exception(RuntimeError("broker said no"))
        else:
            future.set_result(None)
        return future

    def values(self, partition: int | None = None) -> list[bytes]:
        return [v for p, vs in self.sent if partition in (None, p) for v in vs]


def sender_with(fake: FakeProducer, **kwargs: Any) -> KafkaSender:
    def factory(**options: Any) -> FakeProducer:
        fake.options = options
        return fake

    return KafkaSender("t", {"bootstrap_servers": "fake:9092"}, producer_factory=factory, **kwargs)


def values(n: int) -> list[bytes]:
    return [f"m{i:03d}".encode() for i in range(n)]


async def test_sender_fills_batches_and_rotates_partitions_in_order() -> None:
    fake = FakeProducer(capacity=3)
    sender = sender_with(fake)
    await sender.start()
    assert await sender.send(iterate(chunked(values(10), 4))) is True
    await sender.close()
    assert [len(vs) for _, vs in fake.sent] == [3, 3, 3, 1]
    assert [p for p, _ in fake.sent] == [0, 1, 2, 0]
    assert fake.values() == values(10)
    assert sender.stats.messages_acked_total == 10
    assert sender.stats.bytes_acked_total == 40
    assert sender.stats.batches_total == 4
    assert fake.options["acks"] == "all"
    assert fake.stopped


async def test_sender_keeps_a_fixed_partition() -> None:
    fake = FakeProducer(capacity=2)
    sender = sender_with(fake, partition=2)
    await sender.start()
    await sender.send(iterate([values(5)]))
    await sender.close()
    assert {p for p, _ in fake.sent} == {2}
    assert fake.values(2) == values(5)


async def test_sender_rejects_a_partition_the_topic_lacks() -> None:
    sender = sender_with(FakeProducer(), partition=7)
    with pytest.raises(ConfigError, match="--partition"):
        await sender.start()


async def test_failed_batches_and_oversized_values_are_counted() -> None:
    fake = FakeProducer(capacity=2, fail=frozenset({b"m002"}))
    sender = sender_with(fake, max_message_bytes=4)
    await sender.start()
    await sender.send(iterate([[*values(6), b"too large"]]))
    await sender.close()
    stats = sender.stats
    assert stats.messages_acked_total == 4
    assert stats.messages_failed_total == 2
    assert stats.messages_skipped_total == 1
    assert sender.first_error is not None and "4-byte limit" in sender.first_error


async def test_unreachable_broker_is_a_produce_error() -> None:
    sender = sender_with(FakeProducer(unreachable=True))
    with pytest.raises(ProduceError, match="cannot reach Kafka at fake:9092"):
        await sender.start()


async def test_a_stop_request_ends_sending_and_flushes_what_was_read() -> None:
    fake = FakeProducer(capacity=100)
    sender = sender_with(fake)
    await sender.start()
    yielded: list[bytes] = []

    async def endless() -> AsyncIterator[list[bytes]]:
        while True:
            if len(yielded) == 25:
                sender.request_stop()
            yielded.append(f"x{len(yielded)}".encode())
            yield [yielded[-1]]

    assert await sender.send(endless()) is False
    await sender.close()
    # Nothing read is lost, nothing more is read.
    assert fake.values() == yielded
    assert len(yielded) == 26
    assert sender.stats.messages_acked_total == 26


async def test_a_second_stop_request_forces_the_flush_to_end() -> None:
    sender = sender_with(FakeProducer())
    sender.request_stop()
    assert not sender.force_requested.is_set()
    sender.request_stop()
    assert sender.force_requested.is_set()


async def test_deadline_ends_a_rate_limited_send() -> None:
    fake = FakeProducer(capacity=1000)
    now = [0.0]
    sender = sender_with(fake, rate=8, clock=lambda: now[0])
    await sender.start()

    async def ticking() -> AsyncIterator[list[bytes]]:
        for value in values(100):
            yield [value]
            now[0] += 0.125  # the fake clock runs exactly at the rate

    # Due times 0, 1/8, ...: a message due at the deadline (1.0) is not sent.
    assert await sender.send(ticking(), deadline=1.0) is False
    await sender.close()
    assert fake.values() == values(8)


class SlowHandOffProducer(FakeProducer):
    """``send_batch`` blocks until released, as aiokafka's does when its buffer is full."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.release = asyncio.Event()
        self.handing_over = asyncio.Event()

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        self.handing_over.set()
        await self.release.wait()
        return await super().send_batch(batch, topic, partition=partition)


async def test_a_batch_the_linger_loop_is_handing_over_at_close_is_sent_and_counted() -> None:
    # Found on real Kafka: close() cancelled the linger loop inside send_batch, and the
    # batch it was handing over was neither sent nor counted (1,161 of 1,500 reported).
    fake = SlowHandOffProducer(capacity=100)
    sender = sender_with(fake, linger_ms=10)
    await sender.start()
    await sender.send(iterate([values(5)]))
    await asyncio.wait_for(fake.handing_over.wait(), 5)  # the linger loop is in send_batch
    closing = asyncio.ensure_future(sender.close())
    await asyncio.sleep(0.05)
    fake.release.set()
    await asyncio.wait_for(closing, 5)
    assert fake.values() == values(5)
    assert sender.stats.messages_acked_total == 5

"""``grayscope produce``: send a file, stdin or synthetic traffic to Kafka.

Messages go to the first of ``GRAYSCOPE_INPUT_TOPICS`` (one message per input
line, blank lines skipped) at ``--rate`` events/s (0 = as fast as possible),
with ``acks=all``. Progress goes to stderr: one ``\\r``-updated line on a
terminal, a line every few seconds otherwise.

Throughput: the records are appended to aiokafka ``BatchBuilder``\\ s directly
(``create_batch`` / ``send_batch``) instead of one ``send()`` per message; on
loopback that is about four times faster (~200k vs ~55k messages/s), because
it skips a future and a partitioner call per message. Batches go to the
topic's partitions in turn ("sticky" partitioning, like the Java client); a
partially filled batch leaves after ``--linger-ms``. aiokafka keeps at most
one batch per partition queued behind the one in flight, which is the
backpressure; per-partition order is the input order.

Exit status: 0 when every message was acknowledged, 1 when some failed or
Kafka is unreachable, 130 when interrupted (Ctrl-C / SIGTERM) after flushing
what was already read.

The pure parts (:class:`RateSchedule`, :class:`LineSplitter`, the progress
formatting) have no I/O; :class:`KafkaSender` and :func:`run_produce` are the
shell around them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TextIO

from pipeline.errors import ConfigError, GrayscopeError, ProduceError
from pipeline.kafka_options import check_login, client_options

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.dev.synth import FunnelTraffic

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

COMPRESSIONS = ("none", "gzip", "lz4", "zstd", "snappy")
# aiokafka's default max_request_size; a bigger record would fail its whole batch.
DEFAULT_MAX_MESSAGE_BYTES = 1_048_576
DEFAULT_BATCH_BYTES = 256 * 1024
DEFAULT_LINGER_MS = 20.0
# Below this the schedule lets debt accumulate instead of sleeping: timer
# resolution makes shorter sleeps overshoot, and the schedule is absolute, so
# nothing is lost by sending a few messages early.
MIN_SLEEP = 0.002
READ_CHUNK_BYTES = 64 * 1024
SOURCE_CHUNK = 512


# --- pure parts -----------------------------------------------------------------


class RateSchedule:
    """When each message may leave, for a steady ``rate`` per second.

    Message *i* is due at ``start + i / rate`` (virtual scheduling, the GCRA
    form of a token bucket): the average rate stays exact however the sleeps
    jitter. After a stall the sender may catch up, but by at most
    ``burst_seconds`` worth of messages, so a paused producer does not flood
    the broker when it resumes.
    """

    def __init__(self, rate: float, start: float, burst_seconds: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive (use no schedule for 'as fast as possible')")
        self.rate = rate
        self.interval = 1.0 / rate
        self.burst = max(burst_seconds, self.interval)
        self._next = start

    def reserve(self, now: float, n: int = 1) -> float:
        """Book ``n`` messages; seconds to wait before sending them (0 = now)."""
        if self._next < now - self.burst:
            self._next = now - self.burst
        due = self._next
        self._next += n * self.interval
        return max(0.0, due - now)

    def rebase(self, now: float) -> None:
        """Forget any credit or debt: the next message is due at ``now``."""
        self._next = now


class LineSplitter:
    """Bytes in, complete lines out; ``\\n`` and ``\\r\\n`` endings, blank lines dropped."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[bytes]:
        if not data:
            return []
        parts = (self._rest + data).split(b"\n")
        self._rest = parts.pop()
        return [line for line in (p.rstrip(b"\r") for p in parts) if line]

    def finish(self) -> list[bytes]:
        """The last line when the input did not end with a newline."""
        rest, self._rest = self._rest.rstrip(b"\r"), b""
        return [rest] if rest else []


@dataclass(slots=True)
class ProduceStats:
    """Counters of one produce run (acknowledged = written to all in-sync replicas)."""

    messages_acked_total: int = 0
    messages_failed_total: int = 0
    messages_skipped_total: int = 0  # larger than the record size limit
    bytes_acked_total: int = 0
    batches_total: int = 0

    @property
    def errors(self) -> int:
        return self.messages_failed_total + self.messages_skipped_total


def format_count(n: float) -> str:
    """``1234567`` -> ``1,234,567``."""
    return f"{round(n):,}"


def format_rate(per_second: float) -> str:
    """A short rate: ``950/s``, ``12.3k/s``, ``1.20M/s``."""
    if per_second < 10_000:
        return f"{per_second:,.0f}/s"
    if per_second < 1_000_000:
        return f"{per_second / 1000:.1f}k/s"
    return f"{per_second / 1_000_000:.2f}M/s"


def format_duration(seconds: float) -> str:
    """``75.4`` -> ``1:15``; ``3725`` -> ``1:02:05``."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_line(
    sent: int,
    errors: int,
    elapsed: float,
    current_rate: float,
    total: int | None = None,
    width: int = 20,
) -> str:
    """One progress line: a bar when the total is known, counts, rates, errors."""
    average = sent / elapsed if elapsed > 0 else 0.0
    parts = []
    if total:
        done = min(1.0, (sent + errors) / total)
        filled = int(done * width)
        bar = "#" * filled + "-" * (width - filled)
        parts.append(f"[{bar}] {done * 100:5.1f}%")
        parts.append(f"sent {format_count(sent)}/{format_count(total)}")
    else:
        parts.append(f"sent {format_count(sent)}")
    parts.append(f"rate {format_rate(current_rate)} (avg {format_rate(average)})")
    parts.append(f"errors {format_count(errors)}")
    parts.append(format_duration(elapsed))
    return "  ".join(parts)


def summary_line(stats: ProduceStats, elapsed: float, topic: str, interrupted: bool) -> str:
    average = stats.messages_acked_total / elapsed if elapsed > 0 else 0.0
    outcome = "interrupted: " if interrupted else ""
    text = (
        f"{outcome}{format_count(stats.messages_acked_total)} messages "
        f"({stats.bytes_acked_total / 1_048_576:,.1f} MiB) sent to {topic} "
        f"in {elapsed:.1f} s ({format_rate(average)})"
    )
    if stats.messages_failed_total:
        text += f", {format_count(stats.messages_failed_total)} failed"
    if stats.messages_skipped_total:
        text += f", {format_count(stats.messages_skipped_total)} skipped (too large)"
    return text


class StatusLine:
    """A status line on a stream: rewritten in place on a terminal, periodic lines otherwise.

    ``update`` is cheap to call often; it writes at most every ``interval``
    seconds (terminal) or ``log_interval`` seconds (pipe/file).
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        tty: bool,
        interval: float = 0.2,
        log_interval: float = 5.0,
        enabled: bool = True,
    ) -> None:
        self.stream = stream
        self.tty = tty
        self.interval = interval if tty else log_interval
        self.enabled = enabled
        self._last_write = float("-inf")
        self._width = 0

    def due(self, now: float) -> bool:
        return self.enabled and now - self._last_write >= self.interval

    def update(self, text: str, now: float, *, force: bool = False) -> None:
        if not self.enabled or not (force or self.due(now)):
            return
        self._last_write = now
        if self.tty:
            pad = max(0, self._width - len(text))
            self._width = len(text)
            self.stream.write("\r" + text + " " * pad)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """End the in-place line so other output starts on a fresh line."""
        if self.enabled and self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0

    def message(self, text: str) -> None:
        """A line that stays (even when progress is disabled); it replaces the progress line."""
        if self.enabled and self.tty and self._width:
            text = "\r" + text.ljust(self._width)
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()


def chunked(values: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    iterator = iter(values)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


# --- sources ---------------------------------------------------------------------


async def file_chunks(path: Path, chunk_size: int = SOURCE_CHUNK) -> AsyncIterator[list[bytes]]:
    """Lines of a regular file; reads are fast enough to do on the event loop."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise ConfigError("--file", f"cannot open {path}: {exc.strerror or exc}") from exc
    with handle:
        splitter = LineSplitter()
        while data := handle.read(READ_CHUNK_BYTES):
            lines = splitter.feed(data)
            for start in range(0, len(lines), chunk_size):
                yield lines[start : start + chunk_size]
        if last := splitter.finish():
            yield last


async def stream_chunks(fd: int, stop: asyncio.Event) -> AsyncIterator[list[bytes]]:
    """Lines of a pipe/terminal/file descriptor, read by a daemon thread; ends early on ``stop``.

    ``os.read`` returns whatever is available, so lines typed or piped in
    slowly are sent without waiting for a full buffer; the bounded queue keeps
    the reader from racing ahead of the producer.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[list[bytes] | OSError | None] = asyncio.Queue(maxsize=64)

    def put(item: list[bytes] | OSError | None) -> bool:
        try:
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
        except Exception:  # the loop is gone: the run ended
            return False
        return True

    def reader() -> None:
        splitter = LineSplitter()
        try:
            while data := os.read(fd, READ_CHUNK_BYTES):
                lines = splitter.feed(data)
                if lines and not put(lines):
                    return
        except OSError as exc:
            put(exc)
            return
        if put(splitter.finish()):
            put(None)

    # A daemon: a reader blocked on a silent terminal must not keep us alive.
    threading.Thread(target=reader, name="produce-input", daemon=True).start()
    stopped = asyncio.ensure_future(stop.wait())
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                return
            item = getter.result()
            if item is None:
                return
            if isinstance(item, OSError):
                raise ProduceError(f"cannot read the input: {item}") from item
            if item:
                yield item
    finally:
        stopped.cancel()


async def iterate(chunks: Iterable[list[bytes]]) -> AsyncGenerator[list[bytes], None]:
    """A synchronous chunk source as an async one."""
    for chunk in chunks:
        yield chunk


def synthetic_values(
    count: int | None,
    seed: int,
    canary_share: float,
    regression_path_group: str | None,
    clock: Callable[[], int] = time.time_ns,
    versions: tuple[str, str] | None = None,
    funnel: FunnelTraffic | None = None,
) -> Iterator[bytes]:
    """Synthetic gray-release traffic stamped with the real time of generation.

    ``versions``: (stable, canary); default: the generator's. ``funnel``: users
    walking the playground funnel too.
    """
    from pipeline.dev.synth import CANARY_VERSION, STABLE_VERSION, Regression, generate

    regression = Regression(path_group=regression_path_group) if regression_path_group else None
    stable_version, canary_version = versions or (STABLE_VERSION, CANARY_VERSION)
    return generate(
        count,
        seed,
        canary_share=canary_share,
        regression=regression,
        clock=clock,
        stable_version=stable_version,
        canary_version=canary_version,
        funnel=funnel,
    )


def synthetic_chunk_size(rate: float) -> int:
    """Chunks of about 20 ms of traffic: timestamps stay close to the send time."""
    if rate <= 0:
        return SOURCE_CHUNK
    return max(1, min(SOURCE_CHUNK, int(rate / 50)))


# --- the Kafka side ----------------------------------------------------------------


def check_compression(name: str) -> str | None:
    """aiokafka's compression_type for ``name``; ConfigError when it needs a missing package."""
    if name not in COMPRESSIONS:
        raise ConfigError("--compression", f"must be one of {', '.join(COMPRESSIONS)}")
    if name == "none":
        return None
    if name != "gzip":
        from aiokafka import codec

        if not getattr(codec, f"has_{name}")():
            raise ConfigError(
                "--compression",
                f"{name} needs the cramjam package (pip install cramjam); gzip needs nothing",
            )
    return name


class KafkaSender:
    """Rate-limited, batched sending of raw values to one topic; see the module doc.

    ``await start()``, then ``await send(chunks)`` any number of times (the
    rate schedule carries over), then ``await close()``. ``stats`` is live.
    """

    def __init__(
        self,
        topic: str,
        client_options: dict[str, Any],
        *,
        rate: float = 0.0,
        compression: str | None = None,
        partition: int | None = None,
        linger_ms: float = DEFAULT_LINGER_MS,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        request_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        producer_factory: Callable[..., Any] | None = None,
    ) -> None:
        self.topic = topic
        self.client_options = client_options
        self.rate = rate
        self.compression = compression
        self.fixed_partition = partition
        self.linger = linger_ms / 1000
        self.batch_bytes = batch_bytes
        self.max_message_bytes = max_message_bytes
        self.request_timeout = request_timeout
        self.clock = clock
        self.producer_factory = producer_factory
        self.stats = ProduceStats()
        self.stop_requested = asyncio.Event()
        self.force_requested = asyncio.Event()
        self._schedule: RateSchedule | None = None
        self._producer: Any = None
        self._partitions: Iterator[int] = iter(())
        self._batch: Any = None
        self._batch_count = 0
        self._batch_bytes = 0
        self._opened_at = 0.0
        self._send_lock = asyncio.Lock()
        self._in_flight: set[asyncio.Future[Any]] = set()
        self._linger_task: asyncio.Task[None] | None = None
        self._first_error: str | None = None

    @property
    def bootstrap(self) -> str:
        return str(self.client_options.get("bootstrap_servers", ""))

    @property
    def first_error(self) -> str | None:
        return self._first_error

    async def start(self) -> None:
        """Connect and look up the topic's partitions; ProduceError when Kafka is unreachable."""
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError

        producer = (self.producer_factory or AIOKafkaProducer)(
            **self.client_options,
            acks="all",
            compression_type=self.compression,
            max_batch_size=self.batch_bytes,
            max_request_size=max(self.max_message_bytes + 1024, self.batch_bytes),
            linger_ms=int(self.linger * 1000),
            request_timeout_ms=int(self.request_timeout * 1000),
        )
        try:
            await producer.start()
            # Producing to a missing topic creates it where the broker allows that.
            partitions = sorted(await producer.partitions_for(self.topic))
        except KafkaError as exc:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise ProduceError(
                f"cannot reach Kafka at {self.bootstrap} (GRAYSCOPE_KAFKA_BROKERS) "
                f"for topic {self.topic!r}: {exc}"
            ) from exc
        if not partitions:
            await producer.stop()
            raise ProduceError(f"topic {self.topic!r} has no partitions on {self.bootstrap}")
        if self.fixed_partition is not None:
            if self.fixed_partition not in partitions:
                await producer.stop()
                raise ConfigError(
                    "--partition",
                    f"topic {self.topic!r} has partitions {partitions[0]}..{partitions[-1]}",
                )
            partitions = [self.fixed_partition]
        self._producer = producer
        self._partitions = itertools.cycle(partitions)
        self._linger_task = asyncio.create_task(self._linger_loop(), name="produce-linger")

    async def send(self, chunks: AsyncIterator[list[bytes]], deadline: float | None = None) -> bool:
        """Send every value of ``chunks``; False when stopped early (stop or deadline)."""
        stop = self.stop_requested
        clock = self.clock
        if self.rate > 0 and self._schedule is None:
            self._schedule = RateSchedule(self.rate, clock())
        schedule = self._schedule
        add = self._add
        async for chunk in chunks:
            for value in chunk:
                if schedule is not None:
                    now = clock()
                    wait = schedule.reserve(now)
                    if deadline is not None and now + wait >= deadline:
                        return False
                    if wait >= MIN_SLEEP and not await self._pause(wait, deadline):
                        return False
                await add(value)
            if stop.is_set() or (deadline is not None and clock() >= deadline):
                return False
            # Let the sender, the linger timer and progress reporting run.
            await asyncio.sleep(0)
        return True

    async def _pause(self, seconds: float, deadline: float | None) -> bool:
        """Sleep (in slices, to notice a stop); False when stopped or past the deadline."""
        clock = self.clock
        until = clock() + seconds
        while True:
            now = clock()
            if self.stop_requested.is_set() or (deadline is not None and now >= deadline):
                return False
            left = until - now
            if left <= 0:
                return True
            if self._batch_count and now + left - self._opened_at >= self.linger:
                # Nothing else will fill this batch before its linger time is up.
                await self._send_open()
                continue
            await asyncio.sleep(min(left, 0.1))

    async def _add(self, value: bytes) -> None:
        if len(value) > self.max_message_bytes:
            self.stats.messages_skipped_total += 1
            if self._first_error is None:
                self._first_error = (
                    f"a {len(value):,}-byte line exceeds the {self.max_message_bytes:,}-byte limit"
                )
            return
        batch = self._batch
        if batch is None:
            batch = self._open()
        elif batch.append(key=None, value=value, timestamp=None) is not None:
            self._batch_count += 1
            self._batch_bytes += len(value)
            return
        else:
            await self._send_open()
            batch = self._open()
        batch.append(key=None, value=value, timestamp=None)  # a fresh batch takes any record
        self._batch_count += 1
        self._batch_bytes += len(value)

    def _open(self) -> Any:
        self._batch = self._producer.create_batch()
        self._batch_count = self._batch_bytes = 0
        self._opened_at = self.clock()
        return self._batch

    async def _send_open(self) -> None:
        batch, count, size = self._batch, self._batch_count, self._batch_bytes
        if batch is None or not count:
            return
        self._batch = None
        self._batch_count = self._batch_bytes = 0
        batch.close()
        # FIFO lock: batches reach one partition's queue in the order they were filled.
        async with self._send_lock:
            partition = next(self._partitions)
            try:
                future = await self._producer.send_batch(batch, self.topic, partition=partition)
            except Exception as exc:  # aiokafka errors: KafkaError, ProducerClosed, ...
                self._failed(count, exc)
                return
        self.stats.batches_total += 1
        self._in_flight.add(future)
        future.add_done_callback(lambda f: self._delivered(f, count, size))

    def _delivered(self, future: asyncio.Future[Any], count: int, size: int) -> None:
        self._in_flight.discard(future)
        if future.cancelled():
            self._failed(count, asyncio.CancelledError())
            return
        exc = future.exception()
        if exc is not None:
            self._failed(count, exc)
            return
        self.stats.messages_acked_total += count
        self.stats.bytes_acked_total += size

    def _failed(self, count: int, exc: BaseException) -> None:
        self.stats.messages_failed_total += count
        if self._first_error is None:
            self._first_error = f"{type(exc).__name__}: {exc}"
            log.warning("producing to %s failed: %s", self.topic, self._first_error)

    async def _linger_loop(self) -> None:
        while True:
            await asyncio.sleep(self.linger)
            if self._batch_count and self.clock() - self._opened_at >= self.linger:
                # Shielded: close() cancels this loop, and a batch it was handing to the
                # producer must still be sent and counted, never lost uncounted.
                await asyncio.shield(self._send_open())

    def request_stop(self) -> None:
        """Stop reading input; a second request also abandons the final flush."""
        if self.stop_requested.is_set():
            self.force_requested.set()
        self.stop_requested.set()

    async def flush(self, timeout: float) -> None:
        """Send the open batch and wait for every acknowledgement, up to ``timeout`` s.

        Returns early when a forced stop is requested.
        """
        await self._send_open()
        async with self._send_lock:
            pass  # a batch the linger loop was still handing over is in flight now
        deadline = self.clock() + timeout
        forced = asyncio.ensure_future(self.force_requested.wait())
        try:
            while self._in_flight and not forced.done():
                left = deadline - self.clock()
                if left <= 0:
                    return
                await asyncio.wait(
                    {*self._in_flight, forced}, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            forced.cancel()

    async def close(self, timeout: float = 30.0) -> None:
        """Flush (see :meth:`flush`) and disconnect; unacknowledged messages count as failed."""
        if self._linger_task is not None:
            self._linger_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._linger_task
            self._linger_task = None
        if self._producer is None:
            return
        try:
            await self.flush(timeout)
        finally:
            producer, self._producer = self._producer, None
            # stop() would wait for every queued batch again: only when nothing is left.
            if self._in_flight:
                for future in list(self._in_flight):
                    future.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), timeout=5.0)


# --- the command ------------------------------------------------------------------------


def add_produce_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--file",
        metavar="PATH",
        help="send this file, one message per line ('-' = stdin); blank lines are skipped",
    )
    source.add_argument(
        "--synthetic", action="store_true", help="send synthetic gray-release traffic"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        metavar="N",
        help="events per second (default 0 = as fast as possible)",
    )
    parser.add_argument(
        "--count",
        type=int,
        default=None,
        metavar="N",
        help="with --synthetic: number of events (default: until interrupted)",
    )
    parser.add_argument("--seed", type=int, default=1, help="with --synthetic: random seed")
    parser.add_argument(
        "--canary-share",
        type=float,
        default=0.1,
        metavar="FRACTION",
        help="with --synthetic: share of canary requests, 0..1 (default 0.1)",
    )
    parser.add_argument(
        "--regression",
        metavar="PATH_GROUP",
        default=None,
        help="with --synthetic: make this path group of the canary slow and error-prone "
        "(e.g. /play/share)",
    )
    parser.add_argument(
        "--funnel",
        action="store_true",
        help="with --synthetic: users also walk /play -> /play/compile -> /play/share "
        "(keyed by client address; the demo's GRAYSCOPE_CANARY_FUNNELS judges it)",
    )
    parser.add_argument(
        "--conversion-drop",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="with --funnel: the canary's users go on to the next step this much less often "
        "(0..1, default 0)",
    )
    parser.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        default="none",
        help="batch compression (lz4, zstd and snappy use cramjam, a dependency)",
    )
    parser.add_argument(
        "--partition",
        type=int,
        default=None,
        help="send everything to this partition (default: batches rotate over all partitions)",
    )
    parser.add_argument(
        "--linger-ms",
        type=float,
        default=DEFAULT_LINGER_MS,
        help=f"longest wait for a batch to fill (default {DEFAULT_LINGER_MS:g})",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress line, only the final summary"
    )


def _validate(args: argparse.Namespace) -> None:
    if args.rate < 0:
        raise ConfigError("--rate", "must be >= 0")
    if args.count is not None and args.count < 0:
        raise ConfigError("--count", "must be >= 0")
    if not 0.0 <= args.canary_share <= 1.0:
        raise ConfigError("--canary-share", "must be within 0..1")
    if args.linger_ms < 0:
        raise ConfigError("--linger-ms", "must be >= 0")
    if not args.synthetic and (args.count is not None or args.regression):
        raise ConfigError("--count/--regression", "only apply to --synthetic")
    if args.regression:
        check_path_group(args.regression)
    if not 0.0 <= args.conversion_drop <= 1.0:
        raise ConfigError("--conversion-drop", "must be within 0..1")
    if (args.funnel or args.conversion_drop) and not args.synthetic:
        raise ConfigError("--funnel/--conversion-drop", "only apply to --synthetic")


def check_path_group(path_group: str) -> None:
    """ConfigError unless the synthetic traffic has this path group."""
    from pipeline.dev.synth import PATH_GROUPS

    if path_group not in PATH_GROUPS:
        raise ConfigError("--regression", f"must be one of {', '.join(PATH_GROUPS)}")


def _source(args: argparse.Namespace, stop: asyncio.Event) -> AsyncIterator[list[bytes]]:
    if args.synthetic:
        funnel = None
        if args.funnel or args.conversion_drop:
            from pipeline.dev.synth import FunnelTraffic

            funnel = FunnelTraffic(canary_drop=args.conversion_drop)
        values = synthetic_values(
            args.count, args.seed, args.canary_share, args.regression, funnel=funnel
        )
        return iterate(chunked(values, synthetic_chunk_size(args.rate)))
    if args.file == "-":
        return stream_chunks(sys.stdin.fileno(), stop)
    path = Path(args.file)
    if path.is_file():
        return file_chunks(path)
    # FIFOs, /dev/stdin and the like block: read them on a thread.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise ConfigError("--file", f"cannot open {path}: {exc.strerror or exc}") from exc
    return stream_chunks(fd, stop)


def run_produce(args: argparse.Namespace, settings: Settings) -> int:
    """``grayscope produce``; see the module doc for the exit status."""
    _validate(args)
    compression = check_compression(args.compression)
    if not settings.input_topics:
        raise ConfigError("GRAYSCOPE_INPUT_TOPICS", "no input topic configured")
    options = client_options(settings.kafka)  # ConfigError before any connection
    asyncio.run(check_login(settings.kafka))
    sender = KafkaSender(
        settings.input_topics[0],
        options,
        rate=args.rate,
        compression=compression,
        partition=args.partition,
        linger_ms=args.linger_ms,
    )
    status = StatusLine(sys.stderr, tty=sys.stderr.isatty(), enabled=not args.no_progress)
    total = args.count if args.synthetic else None
    return asyncio.run(_produce(sender, _source(args, sender.stop_requested), status, total))


async def _produce(
    sender: KafkaSender,
    chunks: AsyncIterator[list[bytes]],
    status: StatusLine,
    total: int | None,
) -> int:
    loop = asyncio.get_running_loop()
    signals = _install_stop_handlers(loop, sender)
    reporter: asyncio.Task[None] | None = None
    completed = False
    try:
        await sender.start()
        started = time.monotonic()
        reporter = asyncio.create_task(_report(sender, status, started, total))
        completed = await sender.send(chunks)
    except BaseException:
        status.clear()  # the error message starts on a line of its own
        raise
    finally:
        try:
            await sender.close()
        finally:
            if reporter is not None:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
            for signum in signals:
                loop.remove_signal_handler(signum)
    stats = sender.stats
    elapsed = time.monotonic() - started
    interrupted = not completed
    status.message(summary_line(stats, elapsed, sender.topic, interrupted))
    if stats.errors and sender.first_error:
        status.message(f"first error: {sender.first_error}")
    if stats.errors:
        return EXIT_FAILED
    return EXIT_INTERRUPTED if interrupted else EXIT_OK


def _install_stop_handlers(loop: asyncio.AbstractEventLoop, sender: KafkaSender) -> list[int]:
    installed: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, sender.request_stop)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            continue
        installed.append(signum)
    return installed


async def _report(
    sender: KafkaSender, status: StatusLine, started: float, total: int | None
) -> None:
    last_time, last_sent = started, 0
    while True:
        await asyncio.sleep(min(status.interval, 0.5))
        now = time.monotonic()
        if not status.due(now):
            continue
        stats = sender.stats
        sent = stats.messages_acked_total
        current = (sent - last_sent) / (now - last_time) if now > last_time else 0.0
        last_time, last_sent = now, sent
        status.update(progress_line(sent, stats.errors, now - started, current, total), now)


def main(argv: Sequence[str] | None = None, stderr: IO[str] | None = None) -> int:
    """``python -m pipeline.commands.produce``: the command without the ``grayscope`` wrapper."""
    from pipeline.config import add_settings_arguments, settings_from_args

    parser = argparse.ArgumentParser(
        prog="grayscope produce", description="Send a file, stdin or synthetic traffic to Kafka."
    )
    add_produce_arguments(parser)
    add_settings_arguments(parser)
    args = parser.parse_args(argv)
    err = stderr or sys.stderr
    try:
        return run_produce(args, settings_from_args(args))
    except ConfigError as exc:
        print(f"grayscope: configuration error: {exc}", file=err)
        return 2
    except GrayscopeError as exc:
        print(f"grayscope: {exc}", file=err)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

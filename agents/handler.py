"""One batch of Kafka messages -> documents, dead letters and spans, delivered.

The worker's path for a batch, one named step each (``BatchHandler.handle``):

1. ``process_batch`` (pipeline/core/process.py): parse, enrich, build and
   serialise documents;
2. ``build_bulk_items`` (pipeline/core/bulk.py): the serialised documents with
   their ``_id`` and target, and the dead letters;
3. ``encode_spans`` (pipeline/core/otlp.py): one OTLP span per request;
4. ``_deliver``: the store's bulk requests (pipeline/sinks/elasticsearch/),
   then every dead letter to the dead-letter topic (pipeline/sinks/dlq.py);
5. ``_after_delivery``: spans to the exporter's bounded queue (never holding up
   the batch; with ``GRAYSCOPE_OTLP_WHEN_FULL=block`` see below), the canary
   observer, latency and stats. (The request metrics, ``pipeline/metrics/``,
   count each batch once it is processed.)
6. block mode only: the spans into the exporter's queue, waiting for room
   (``OtlpExporter.submit_blocking``).

``handle`` returns only when every message of the batch is stored or
dead-lettered: the caller (agents/batching.py, or the stock Faust stream in
agents/app.py) may then let the offsets be committed. In block mode it also
waits until the batch's spans are queued: that wait is the backpressure (the
caller's slot takes no next batch meanwhile; once every batch in flight waits,
consumption pauses until the exporter makes room, instead of dropping spans).
It comes after the documents are stored, never before (a slow trace backend
delays the ack, not indexing or the delivery latency), and is guarded like the
delivery, so ``interrupt`` bounds it at shutdown. Faust-agnostic on
purpose. The per-event work of steps 1-3 runs in the compiled core, a stage at
a time (bench/README.md, "Session 5") over ``STAGE_CHUNK`` events at a time
("Session 16"): the batch's lists are those of one pass over it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from pipeline.canary.observer import CanaryObserver, new_tallies
from pipeline.config import WhenFull
from pipeline.core.bulk import BulkItem, Rejection, build_bulk_items
from pipeline.core.enrich import EnrichContext
from pipeline.core.model import DeadLetter, InputMessage, Reason, message_values
from pipeline.core.otlp import encode_spans
from pipeline.core.otlp_wire import EncodedSpan
from pipeline.core.process import (
    FunnelInput,
    RequestGroups,
    SecondTallies,
    count_datasets,
    funnel_inputs,
    process_batch,
    record_ages,
    request_groups,
    tally_results,
)
from pipeline.errors import ShutdownInterrupted
from pipeline.metrics.requests import RequestMetrics
from pipeline.sinks.dlq import DeadLetterSink

log = logging.getLogger(__name__)

T = TypeVar("T")

# Events taken through steps 1-3 together. A fetched batch is thousands of events
# (GRAYSCOPE_BATCH_SIZE): each stage over all of them leaves their records,
# enrichments and documents (a few kB an event) out of the CPU caches by the time
# the next stage reads them. A chunk of this many keeps them cached through every
# stage and is still long enough for each stage's code and memos to stay hot
# (measured: -3.3 to -4.0 µs per event in these steps against a whole 5,000-event
# batch; bench/README.md, "Session 16").
STAGE_CHUNK = 128

# Events processed between two turns of the event loop. Processing a fetched batch is
# ~0.1 s of CPU (5,000 events): without a turn in between, everything else on the loop
# waited for it, the OTLP exporter's requests included, and a worker fed without pause
# (session 23's consumer thread) dropped spans as queue_full. An export takes about four
# turns from one request's answer to the next request (the answer, its task's end, the
# exporter's wake-up, the new request), so at 4 requests of 512 spans in flight the
# exporter ships ~512 spans a turn: a turn every 1,024 events still dropped spans, one
# every 128 keeps it ahead 4 to 1, for ~10 µs a turn (bench/README.md, "Session 23").
EVENTS_PER_LOOP_TURN = 128


class StoreSink(Protocol):
    async def deliver(self, items: list[BulkItem]) -> list[tuple[BulkItem, str]]: ...


class SpanSink(Protocol):
    #: Which of the two the handler uses: ``submit`` (drop_newest) or ``submit_blocking``.
    when_full: WhenFull

    def submit(self, spans: Sequence[EncodedSpan]) -> int:
        """Queue encoded spans without waiting; returns how many were accepted."""

    async def submit_blocking(self, spans: Sequence[EncodedSpan]) -> int:
        """Queue encoded spans, waiting for room; returns how many were queued."""

    @property
    def waits_are_released(self) -> bool:
        """True while a rebalance releases ``submit_blocking``'s waits (it then drops
        what does not fit)."""


@dataclass(slots=True)
class BatchStats:
    messages_consumed_total: int = 0
    batches_total: int = 0
    events_enriched_total: dict[str, int] = field(default_factory=dict)  # by dataset
    documents_stored_total: int = 0
    last_batch_seconds: float = 0.0


@dataclass(slots=True)
class BatchOutcome:
    stored: int
    dead_lettered: int
    spans: int
    # Block mode: spans not queued because a rebalance released the batch's wait for
    # room (dropped as queue_full). The caller must not ack such a batch, so that the
    # partition's next owner reads it again, spans included.
    spans_released: int = 0


class BatchHandler:
    def __init__(
        self,
        ctx: EnrichContext,
        store: StoreSink | None,
        dead_letters: DeadLetterSink,
        spans: SpanSink | None,
        es_mode: str = "data_stream",
        observe_latency: Callable[[list[float]], None] | None = None,
        observer: CanaryObserver | None = None,
        request_metrics: RequestMetrics | None = None,
    ) -> None:
        self._ctx = ctx
        self._store = store
        self._dead_letters = dead_letters
        self._spans = spans
        self._es_mode = es_mode
        self._observe_latency = observe_latency
        self._observer = observer
        self._request_metrics = request_metrics
        # Decided once, by the span sink's mode: the drop_newest path stays exactly as it
        # was (no await per batch).
        self._block_on_spans = spans is not None and spans.when_full is WhenFull.BLOCK
        self.stats = BatchStats()
        self._delivering: set[asyncio.Future[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._interrupted = False

    async def interrupt(self, grace: float) -> bool:
        """For shutdown: let the batches in flight finish for ``grace`` seconds, then abandon them.

        A batch stuck behind an unreachable store would otherwise hold the
        worker forever; abandoned batches raise ShutdownInterrupted so the caller
        leaves their offsets uncommitted. True when something was abandoned.
        """
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            pending = [task for task in self._delivering if not task.done()]
            if pending:
                self._interrupted = True
                for task in pending:
                    task.cancel()
                return True
        return False

    async def handle(self, messages: Sequence[InputMessage]) -> BatchOutcome:
        started = time.perf_counter()
        items: list[BulkItem] = []
        letters: list[Rejection] = []
        spans: list[EncodedSpan] = []
        observed = new_tallies() if self._observer is not None else None
        funnel_seen: list[FunnelInput] = []
        requests: RequestGroups = {}
        turned = 0
        for start in range(0, len(messages), STAGE_CHUNK):
            if start - turned >= EVENTS_PER_LOOP_TURN:
                await asyncio.sleep(0)  # a turn of the loop for the exporter's requests
                turned = start
            chunk = messages[start : start + STAGE_CHUNK]
            self._process_chunk(chunk, items, letters, spans, observed, funnel_seen, requests)
        if self._request_metrics is not None:
            # Counted once processed, before delivery (pipeline/metrics/requests.py).
            self._request_metrics.add_groups(requests)
        if self._block_on_spans:
            delivery = self._deliver_then_queue_spans(
                items, letters, messages, spans, observed, funnel_seen
            )
            stored, released = await self._guarded(delivery)
        else:
            stored = await self._guarded(self._deliver(items, letters))
            self._after_delivery(messages, spans, observed, funnel_seen)
            released = 0
        stats = self.stats
        stats.messages_consumed_total += len(messages)
        stats.batches_total += 1
        stats.documents_stored_total += stored
        stats.last_batch_seconds = time.perf_counter() - started
        return BatchOutcome(stored, len(letters), len(spans), released)

    def _process_chunk(
        self,
        messages: Sequence[InputMessage],
        items: list[BulkItem],
        letters: list[Rejection],
        spans: list[EncodedSpan],
        observed: SecondTallies | None,
        funnel_seen: list[FunnelInput],
        requests: RequestGroups,
    ) -> None:
        """Steps 1-3 (and what the observer and the statistics take) for part of a
        batch, added to the batch's lists and counts."""
        results = process_batch(message_values(messages), self._ctx)
        mode = self._es_mode if self._store is not None else None
        chunk_items, chunk_letters = build_bulk_items(messages, results, mode)
        items += chunk_items
        letters += chunk_letters
        if self._spans is not None:
            spans += encode_spans(messages, results)
        observer = self._observer
        if observer is not None and observed is not None:
            tally_results(messages, results, observed)
            if observer.funnel_keys:
                funnel_seen += funnel_inputs(messages, results, observer.funnel_keys)
        count_datasets(results, self.stats.events_enriched_total)
        if self._request_metrics is not None:
            request_groups(results, requests)
        # Serialised and encoded: the records and documents are freed now, while they
        # are still in the CPU caches, and long before the delivery wait.
        del results

    async def _guarded(self, work: Coroutine[Any, Any, T]) -> T:
        """``work`` (the delivery; in block mode also the span wait) as a task
        ``interrupt`` can abandon at shutdown."""
        if self._interrupted:
            work.close()  # never started
            raise ShutdownInterrupted("worker is stopping")
        self._idle.clear()
        delivering = asyncio.ensure_future(work)
        self._delivering.add(delivering)
        try:
            return await delivering
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._interrupted and not (current is not None and current.cancelling()):
                raise ShutdownInterrupted("batch abandoned at shutdown") from None
            raise
        finally:
            self._delivering.discard(delivering)
            if not self._delivering:
                self._idle.set()

    async def _deliver_then_queue_spans(
        self,
        items: list[BulkItem],
        letters: list[Rejection],
        messages: Sequence[InputMessage],
        spans: list[EncodedSpan],
        observed: SecondTallies | None,
        funnel_seen: list[FunnelInput],
    ) -> tuple[int, int]:
        """Block mode: deliver, then queue the spans, waiting for room (see the module doc).

        One guarded task for both, so ``interrupt`` never sees the batch idle in
        between. What follows delivery (latency, observer) is recorded before the
        wait: the delivery latency is the documents', not the spans'. Returns the
        documents stored and the spans a released wait dropped (``BatchOutcome``).
        """
        stored = await self._deliver(items, letters)
        self._after_delivery(messages, [], observed, funnel_seen)
        released = 0
        sink = self._spans
        if spans and sink is not None:
            # Best effort still: the exporter drops what it cannot export after its
            # retries, which frees room, so this ends even while the collector is down.
            queued = await sink.submit_blocking(spans)
            # Short only when stopping (shutdown drops: the worker exits anyway) or when a
            # rebalance released the wait; read with no await since, so it is that wait's.
            if queued < len(spans) and sink.waits_are_released:
                released = len(spans) - queued
        return stored, released

    def _after_delivery(
        self,
        messages: Sequence[InputMessage],
        spans: list[EncodedSpan],
        observed: SecondTallies | None,
        funnel_seen: list[FunnelInput] | None = None,
    ) -> None:
        """What follows a delivered batch; none of it can fail or hold up the batch."""
        if spans and self._spans is not None:
            self._spans.submit(spans)
        if observed is not None and observed.seen and self._observer is not None:
            self._observer.observe_tallies(observed)  # never raises
        if funnel_seen and self._observer is not None:
            self._observer.observe_funnels(funnel_seen)  # never raises
        if self._observe_latency is not None:
            self._observe_latency(record_ages(messages, time.time_ns()))

    async def _deliver(
        self,
        items: list[BulkItem],
        letters: list[Rejection],
    ) -> int:
        """Store the documents, dead-letter what the store rejects; the number stored."""
        stored = 0
        if items and self._store is not None:
            rejected = await self._store.deliver(items)
            stored = len(items) - len(rejected)
            for item, detail in rejected:
                msg = item.ref
                assert isinstance(msg, InputMessage)
                letter = DeadLetter(Reason.MAPPING_REJECTED, detail, msg.value or b"")
                letters.append((letter, msg.coords, msg.key))
        await self._dead_letters.send(letters)
        return stored

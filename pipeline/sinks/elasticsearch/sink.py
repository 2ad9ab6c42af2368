"""The delivery loop: send a batch, resend what failed, return what was rejected.

``deliver()`` returns only when every item is indexed (or already there) or
rejected for good. While the store is down or throttling it waits with
capped exponential backoff and full jitter, without limit: the partition
waits, nothing is dropped. Only the items that failed retriably are resent.
A 413 (or a 400 for the whole request) halves the batch until the culprit
stands alone; see ``classify`` for every decision.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.core.bulk import MODES, BulkItem, build_bulk_body, build_item, split_by_bytes
from pipeline.errors import SinkError, StoreRejected
from pipeline.retry import Backoff
from pipeline.sinks.elasticsearch.classify import (
    AllItemsDone,
    RequestOutcome,
    classify_bulk,
    classify_status,
    error_detail,
)

logger = logging.getLogger(__name__)

# At most one "still down" warning per this many seconds.
WARN_INTERVAL = 30.0

BULK_OUTCOMES = ("ok", "item_errors", "unavailable", "too_large", "bad_request", "fatal")


class BulkService(Protocol):
    async def bulk(self, body: bytes) -> tuple[int, dict[str, Any] | AllItemsDone]: ...


@dataclass(slots=True)
class EsSinkStats:
    """Counters the worker exposes to Prometheus (label values are bounded)."""

    documents_indexed_total: int = 0
    documents_rejected_total: int = 0
    documents_retried_total: int = 0
    bulk_retries_total: int = 0
    bulk_requests_total: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(BULK_OUTCOMES, 0)
    )


class _Throttled:
    """A warning that is logged at most once per interval while a condition lasts."""

    def __init__(self, clock: Callable[[], float], interval: float = WARN_INTERVAL) -> None:
        self._clock = clock
        self._interval = interval
        self.since: float | None = None
        self._last = 0.0
        self.count = 0

    def warn(self, first: str, again: str, detail: str) -> None:
        now = self._clock()
        self.count += 1
        if self.since is None:
            self.since, self._last = now, now
            logger.warning(first, detail)
        elif now - self._last >= self._interval:
            self._last = now
            logger.warning(again, now - self.since, self.count, detail)

    def clear(self, message: str) -> None:
        if self.since is not None:
            logger.info(message, self._clock() - self.since, self.count)
        self.since = None
        self.count = 0


class ElasticsearchSink:
    """Delivers bulk items through a ``BulkService`` (see the module doc)."""

    def __init__(
        self,
        service: BulkService,
        mode: str,
        retry_initial: float,
        retry_max: float,
        *,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        observe_latency: Callable[[float], None] | None = None,
        stats: EsSinkStats | None = None,
        max_bytes: int | None = None,
    ) -> None:
        if str(mode) not in MODES:
            raise ValueError(f"unknown Elasticsearch mode {mode!r} (data_stream or index)")
        self.service = service
        self.mode = str(mode)
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be positive (or None: no limit)")
        self.backoff = Backoff(retry_initial, retry_max, rng=rng, sleep=sleep)
        # A bulk body's size limit (GRAYSCOPE_ES_BULK_MAX_BYTES): a batch over it goes as
        # several requests, one after the other.
        self.max_bytes = max_bytes
        self.stats = stats if stats is not None else EsSinkStats()
        self._clock = clock
        self._observe_latency = observe_latency
        self._down = _Throttled(clock)
        self._throttled = _Throttled(clock)

    def item(self, document: Mapping[str, Any], doc_id: str | None, ref: object = None) -> BulkItem:
        """A bulk item for this document in the sink's mode.

        ``ValueError`` when index mode finds no usable ``@timestamp``.
        """
        return build_item(document, doc_id=doc_id, mode=self.mode, ref=ref)

    async def deliver(self, items: list[BulkItem]) -> list[tuple[BulkItem, str]]:
        """Deliver every item; return the rejected ones with the store's reason.

        Raises ``StoreRejected`` when the store refuses to write at all
        (credentials, privileges, closed or missing target): the caller must
        stop rather than dead-letter good documents.
        """
        rejected: list[tuple[BulkItem, str]] = []
        # A stack of chunks, first on top: a chunk over the size limit is cut to it; a
        # split (413) pushes both halves, first half on top.
        work = [items] if items else []
        while work:
            batch = work.pop()
            # The body is built first and the batch cut only when it is too long: most
            # batches fit, and measuring every item beforehand cost as much as a quarter
            # of building the body (bench/README.md, "Session 26").
            body = build_bulk_body(batch)
            if self.max_bytes is not None and len(body) > self.max_bytes and len(batch) > 1:
                work += split_by_bytes(batch, self.max_bytes)[::-1]
                continue
            await self._deliver_chunk(batch, body, work, rejected)
        return rejected

    async def _deliver_chunk(
        self,
        batch: list[BulkItem],
        body: bytes,
        work: list[list[BulkItem]],
        rejected: list[tuple[BulkItem, str]],
    ) -> None:
        """Send ``batch`` (its ``body`` built already) until every item is done, rejected
        or pushed back onto ``work`` by a split."""
        stats = self.stats
        attempt = 0
        while batch:
            started = self._clock()
            try:
                status, response = await self.service.bulk(body)
            except SinkError as exc:
                self._observe(started)
                if not exc.retriable:  # refused for good (auth, bad request): the caller stops
                    stats.bulk_requests_total["fatal"] += 1
                    raise
                stats.bulk_requests_total["unavailable"] += 1
                self._down.warn(
                    "Elasticsearch unavailable, retrying until it is back: %s",
                    "Elasticsearch still unavailable after %.0f s (%d attempts): %s",
                    str(exc),
                )
                await self._backoff(attempt, len(batch))
                attempt += 1
                continue
            self._observe(started)
            self._down.clear("Elasticsearch is back after %.0f s (%d failed attempts)")

            if classify_status(status) is RequestOutcome.SPLIT:
                stats.bulk_requests_total["too_large" if status == 413 else "bad_request"] += 1
                if len(batch) == 1:
                    detail = f"bulk request rejected: {error_detail(status, response)}"
                    rejected.append((batch[0], detail))
                    stats.documents_rejected_total += 1
                    return
                half = len(batch) // 2
                work.append(batch[half:])
                work.append(batch[:half])
                return

            result = classify_bulk(batch, response)
            stats.documents_indexed_total += result.done
            if result.fatal:
                stats.bulk_requests_total["fatal"] += 1
                position, detail = result.fatal[0]
                raise StoreRejected(
                    f"Elasticsearch refuses to write to {batch[position].index}: {detail}"
                )
            if result.rejected:
                stats.documents_rejected_total += len(result.rejected)
                rejected.extend((batch[position], detail) for position, detail in result.rejected)
            if not result.retry:
                stats.bulk_requests_total["ok" if not result.rejected else "item_errors"] += 1
                self._throttled.clear("Elasticsearch accepts documents again after %.0f s (%d)")
                return
            stats.bulk_requests_total["item_errors"] += 1
            self._throttled.warn(
                "Elasticsearch refused documents for now, retrying them: %s",
                "Elasticsearch still refusing documents after %.0f s (%d retries): %s",
                f"{len(result.retry)} of {len(batch)}: {result.retry_detail}",
            )
            batch = [batch[position] for position in result.retry]
            await self._backoff(attempt, len(batch))
            # Built after the wait, not held through it.
            body = build_bulk_body(batch)
            attempt += 1

    async def _backoff(self, attempt: int, documents: int) -> None:
        self.stats.bulk_retries_total += 1
        self.stats.documents_retried_total += documents
        await self.backoff.wait(attempt)

    def _observe(self, started: float) -> None:
        if self._observe_latency is not None:
            self._observe_latency(self._clock() - started)

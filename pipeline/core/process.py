"""The core entry points: raw message values in, documents or dead letters out.

``process`` takes one message; ``process_batch`` many, with the same result
for each. Neither raises for bad input: every failure becomes a DeadLetter
with a reason from the bounded set in :class:`pipeline.core.model.Reason`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.core.buckets import bucket_float, nonnegative_ms
from pipeline.core.document import document_source
from pipeline.core.enrich import DEFAULT_CHAIN, EnrichContext, Step, enrich
from pipeline.core.formats.detect import parse_message, resolve_message
from pipeline.core.formats.values import NS_PER_MS, NS_PER_S
from pipeline.core.model import (
    AccessRecord,
    DeadLetter,
    Enrichment,
    InputMessage,
    Reason,
)
from pipeline.errors import RejectedInput

log = logging.getLogger(__name__)


@dataclass(slots=True, init=False)
class Enriched:
    record: AccessRecord
    enrichment: Enrichment
    # The document as JSON (``pipeline.core.document.document_source``): what the
    # store gets; ``document`` reads it back as a dict.
    source: bytes

    # Written out for the compiled core (measured: see pipeline.core.model.AccessRecord).
    def __init__(self, record: AccessRecord, enrichment: Enrichment, source: bytes) -> None:
        self.record = record
        self.enrichment = enrichment
        self.source = source

    @property
    def document(self) -> dict[str, Any]:
        """The document as a dict (a new one each time)."""
        document: dict[str, Any] = orjson.loads(self.source)
        return document


def process(
    raw: bytes, ctx: EnrichContext, chain: tuple[Step, ...] = DEFAULT_CHAIN
) -> Enriched | DeadLetter:
    try:
        record = parse_message(raw, ctx.max_message_bytes)
        if ctx.include_original:
            record.original = _original(raw)
        enrichment = enrich(record, ctx, chain)
        return Enriched(
            record, enrichment, document_source(record, enrichment, ctx.include_original)
        )
    except orjson.JSONEncodeError as exc:
        return _unserialisable(exc, raw)
    except Exception as exc:
        return _dead_letter(exc, raw)


def process_batch(
    raws: Sequence[bytes], ctx: EnrichContext, chain: tuple[Step, ...] = DEFAULT_CHAIN
) -> list[Enriched | DeadLetter]:
    """``process`` of every message, in order, computed one stage at a time.

    Every message's format is detected, then each format's parser runs over all
    of its lines, then each enrichment step over every record, then every
    document is built. Message by message, each stage evicts the
    previous one's code, memos and objects from the CPU caches, so the next
    message finds them cold again; a stage at a time keeps them hot (measured:
    ~25 % less CPU per event in the batch handler; bench/README.md, "Session 5").
    The steps are pure functions of the record and the context, so the order
    changes no result; a message that fails a stage is dead-lettered there and
    skips the rest, as in ``process``.
    """
    out: list[Enriched | DeadLetter | None] = [None] * len(raws)
    max_bytes = ctx.max_message_bytes
    include_original = ctx.include_original
    # Format by format: detection first, then each format's parser over all its lines.
    jobs: dict[Callable[..., AccessRecord], list[tuple[int, tuple[Any, ...]]]] = {}
    for i, raw in enumerate(raws):
        try:
            parse, args = resolve_message(raw, max_bytes)
        except Exception as exc:
            out[i] = _dead_letter(exc, raw)
            continue
        group = jobs.get(parse)
        if group is None:
            group = jobs[parse] = []
        group.append((i, args))
    pending: list[tuple[int, AccessRecord, Enrichment]] = []
    for parse, group in jobs.items():
        for i, args in group:
            try:
                record = parse(*args)
                if include_original:
                    record.original = _original(raws[i])
            except Exception as exc:
                out[i] = _dead_letter(exc, raws[i])
                continue
            pending.append((i, record, Enrichment()))
    for step in chain:
        failed = False
        for i, record, enrichment in pending:
            try:
                step(record, enrichment, ctx)
            except Exception as exc:
                out[i] = _dead_letter(exc, raws[i])
                failed = True
        if failed:
            pending = [entry for entry in pending if out[entry[0]] is None]
    for i, record, enrichment in pending:
        try:
            source = document_source(record, enrichment, include_original)
        except orjson.JSONEncodeError as exc:
            out[i] = _unserialisable(exc, raws[i])
            continue
        except Exception as exc:
            out[i] = _dead_letter(exc, raws[i])
            continue
        out[i] = Enriched(record, enrichment, source)
    return out  # type: ignore[return-value]  # every slot is filled by one of the stages


def _original(raw: bytes) -> str:
    """``event.original``: the raw line as text, without its line ending."""
    return raw.decode("utf-8", "replace").rstrip("\r\n")


def _unserialisable(exc: Exception, raw: bytes) -> DeadLetter:
    """A document JSON cannot hold (a lone surrogate from lenient JSON, an int beyond
    64 bits: orjson's refusal) is an invalid field, not a bug."""
    return DeadLetter(Reason.INVALID_FIELD, f"document not serialisable: {exc}"[:500], raw)


def _dead_letter(exc: Exception, raw: bytes) -> DeadLetter:
    if isinstance(exc, RejectedInput):
        return DeadLetter(exc.reason, exc.detail, raw)
    # A bug must not stop the stream: dead-letter and say so.
    log.exception("internal error while enriching a message")
    return DeadLetter(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:500], raw)


# What per-request statistics (the canary analysis, the request metrics) need of one
# request: (path group, event time in epoch ns — the log's, else the Kafka record's —,
# stage, version, status, duration in ns). A few fields instead of the record and
# enrichment, so that those can be freed as soon as the batch's documents and spans
# are written (measured: ~1 µs per event less in the batch handler, from a smaller
# working set; bench/README.md, "Session 4").
Observation = tuple[str | None, int | None, str, str | None, int | None, int | None]


def record_ages(messages: Sequence[InputMessage], now_ns: int) -> list[float]:
    """Seconds from each message's Kafka record time to ``now_ns`` (the delivery latency;
    messages without a record time are left out)."""
    return [(now_ns - m.timestamp_ns) / 1e9 for m in messages if m.timestamp_ns]


def observations(
    messages: Sequence[InputMessage], results: Sequence[Enriched | DeadLetter]
) -> list[Observation]:
    """The Observation of every enriched request of a batch, in order."""
    out: list[Observation] = []
    for msg, result in zip(messages, results, strict=True):
        if isinstance(result, Enriched):
            record = result.record
            enrichment = result.enrichment
            out.append(
                (
                    enrichment.path_group,
                    record.timestamp_ns or msg.timestamp_ns,
                    enrichment.stage,
                    enrichment.version,
                    record.status,
                    record.duration_ns,
                )
            )
    return out


class SecondTally:
    """What the canary analysis counts of the requests of one (path group, epoch second
    of the event time, stage, version) of a batch: ``pipeline.canary.records.WindowCounts``'
    fields, as ``WindowCounts.add`` of each request makes them."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors_5xx = 0
        self.errors_4xx = 0
        self.latency: dict[int, int] = {}  # bucket index -> count
        self.min_ms: float | None = None  # fastest and slowest timed request
        self.max_ms: float | None = None


# (path group, epoch second, stage, version) of a SecondTally.
SecondKey = tuple[str, int, str, str | None]


class SecondTallies:
    """A batch's requests counted for the canary analysis (pipeline/canary/observer.py)
    by (path group, epoch second, stage, version), in first-seen order; the analysis
    puts each second in its window.

    The per-request part of the canary fold, compiled, without a list per group or a
    tuple per request (bench/README.md, "Session 17"). ``bounds_ms`` are the latency
    histogram's bucket bounds (``pipeline.canary.histogram.BOUNDS_MS``).
    """

    def __init__(self, bounds_ms: tuple[float, ...]) -> None:
        self.bounds_ms = bounds_ms
        self.groups: dict[SecondKey, SecondTally] = {}
        self.seen = 0  # requests counted, and of those:
        self.unrouted = 0  # without a path group (left out)
        self.untimed = 0  # without an event time (left out)

    def add(
        self,
        path_group: str | None,
        timestamp_ns: int | None,
        stage: str,
        version: str | None,
        status: int | None,
        duration_ns: int | None,
    ) -> None:
        self.seen += 1
        if not path_group:
            self.unrouted += 1
            return
        if not timestamp_ns:
            self.untimed += 1
            return
        key = (path_group, timestamp_ns // NS_PER_S, stage, version)
        tally = self.groups.get(key)
        if tally is None:
            tally = self.groups[key] = SecondTally()
        tally.requests += 1
        if status is not None:
            if 500 <= status <= 599:
                tally.errors_5xx += 1
            elif 400 <= status <= 499:
                tally.errors_4xx += 1
        if duration_ns is not None:
            duration_ms = nonnegative_ms(duration_ns / NS_PER_MS)
            latency = tally.latency
            index = bucket_float(self.bounds_ms, duration_ms)
            latency[index] = latency.get(index, 0) + 1
            low = tally.min_ms
            if low is None or duration_ms < low:
                tally.min_ms = duration_ms
            high = tally.max_ms
            if high is None or duration_ms > high:
                tally.max_ms = duration_ms


def tally_results(
    messages: Sequence[InputMessage],
    results: Sequence[Enriched | DeadLetter],
    into: SecondTallies,
) -> None:
    """Count the enriched requests of (part of) a batch into ``into``: what
    ``tally_observations`` of their ``observations`` counts."""
    for msg, result in zip(messages, results, strict=True):
        if isinstance(result, Enriched):
            record = result.record
            enrichment = result.enrichment
            into.add(
                enrichment.path_group,
                record.timestamp_ns or msg.timestamp_ns,
                enrichment.stage,
                enrichment.version,
                record.status,
                record.duration_ns,
            )


def tally_observations(events: Iterable[Observation], into: SecondTallies) -> None:
    """Count requests given as Observations into ``into``."""
    for path_group, timestamp_ns, stage, version, status, duration_ns in events:
        into.add(path_group, timestamp_ns, stage, version, status, duration_ns)


# What a conversion funnel needs of one request: (URL path, route, path group, method,
# status, event time in epoch ns, stage, the requested user keys' values). Built only
# when funnels are configured; the key values never leave the batch unhashed
# (pipeline/canary/funnel.py hashes them).
FunnelInput = tuple[
    str | None, str | None, str | None, str | None, int | None, int | None, str, tuple[str, ...]
]


def funnel_inputs(
    messages: Sequence[InputMessage],
    results: Sequence[Enriched | DeadLetter],
    keys: Sequence[tuple[str, str]],
) -> list[FunnelInput]:
    """The FunnelInput of every enriched request of a batch, in order.

    ``keys``: (kind, name) per user key: ("cookie", name), ("header", name) or
    ("client_ip", ""); a missing value is "".
    """
    out: list[FunnelInput] = []
    for msg, result in zip(messages, results, strict=True):
        if isinstance(result, Enriched):
            record = result.record
            enrichment = result.enrichment
            values: list[str] = []
            for kind, name in keys:
                if kind == "cookie":
                    values.append(record.cookies.get(name) or "")
                elif kind == "header":
                    values.append(record.headers.get(name) or "")
                else:
                    values.append(enrichment.client_ip or "")
            out.append(
                (
                    enrichment.url_path,
                    enrichment.route,
                    enrichment.path_group,
                    record.method,
                    record.status,
                    record.timestamp_ns or msg.timestamp_ns,
                    enrichment.stage,
                    tuple(values),
                )
            )
    return out


# What the request metrics count of a batch (pipeline/metrics/requests.py): (path group,
# stage, version, status or 0) -> the durations in ns of those requests (None: untimed).
RequestGroups = dict[tuple[str | None, str, str | None, int], list[int | None]]


def request_groups(
    results: Sequence[Enriched | DeadLetter], into: RequestGroups | None = None
) -> RequestGroups:
    """The enriched requests of a batch grouped for the request metrics, in first-seen
    order; added to ``into`` when given (a batch processed in parts)."""
    groups: RequestGroups = {} if into is None else into
    for result in results:
        if isinstance(result, Enriched):
            record = result.record
            enrichment = result.enrichment
            status = record.status
            key = (
                enrichment.path_group,
                enrichment.stage,
                enrichment.version,
                status if status is not None else 0,
            )
            durations = groups.get(key)
            if durations is None:
                groups[key] = [record.duration_ns]
            else:
                durations.append(record.duration_ns)
    return groups


def count_datasets(results: Sequence[Enriched | DeadLetter], into: dict[str, int]) -> None:
    """Add the batch's enriched events to ``into``, by dataset (``event.dataset``)."""
    for result in results:
        if isinstance(result, Enriched):
            dataset = result.record.dataset
            into[dataset] = into.get(dataset, 0) + 1

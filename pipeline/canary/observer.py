"""The batch handler's hook: enriched events -> per-batch canary aggregates (pure core).

``BatchHandler`` hands each delivered batch's enriched events to
``CanaryObserver.observe_batch``; the observer folds them into one
``CanaryAggregate`` per (path group, window) and passes those to
``publish``, which the Faust side binds to the aggregates topic. Only the
aggregates leave the worker: a few records per batch instead of one per
request, keyed by path group so that one table partition holds both arms
(and every version) of a path group.

The observer never raises into the batch handler: the canary analysis must
never hold up or fail the delivery of documents.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from pipeline.canary import funnel as funnels_mod
from pipeline.canary import histogram
from pipeline.canary.counters import CanaryStats
from pipeline.canary.records import NO_VERSION, CanaryAggregate, WindowCounts
from pipeline.canary.windows import window_start
from pipeline.core.formats.values import NS_PER_S
from pipeline.core.process import Observation, SecondTallies, tally_observations

log = logging.getLogger(__name__)

# One request as the analysis sees it: pipeline.core.process.observations makes them.
ObservedEvent = Observation


Publish = Callable[[Sequence[CanaryAggregate]], None]
#: Publishes one funnel's hits to the funnel's table owner: (funnel name, hits, the
#: path groups of the requests that made them with their request counts -- at most
#: ``funnel.MAX_CARRIERS`` --, the requests whose path group that cap left out).
PublishFunnel = Callable[[str, Sequence[funnels_mod.Hit], Mapping[str, int], int], None]


def aggregate(
    events: Iterable[ObservedEvent],
    window_seconds: int,
    stats: CanaryStats,
    into: dict[tuple[str, int], CanaryAggregate] | None = None,
) -> list[CanaryAggregate]:
    """Fold events into one aggregate per (path group, window), in first-seen order.

    Event time is the log's own time; the Kafka record time stands in when
    the log has none (as it does for the document's ``@timestamp``; see ``observed``).
    """
    tallies = new_tallies()
    tally_observations(events, tallies)
    return aggregate_tallies(tallies, window_seconds, stats, into)


def new_tallies() -> SecondTallies:
    """An empty count of a batch's requests (``tally_results`` fills it)."""
    return SecondTallies(histogram.BOUNDS_MS)


def aggregate_tallies(
    tallies: SecondTallies,
    window_seconds: int,
    stats: CanaryStats,
    into: dict[tuple[str, int], CanaryAggregate] | None = None,
) -> list[CanaryAggregate]:
    """``aggregate`` of requests already counted by (path group, second, stage, version)
    in the compiled core (``tally_results``: the batch handler's); each second is put
    in its window here -- a batch has a few dozen of them."""
    stats.canary_events_observed_total += tallies.seen
    stats.canary_events_unrouted_total += tallies.unrouted
    stats.canary_events_untimed_total += tallies.untimed
    windows: dict[tuple[str, int, str, str], WindowCounts] = {}
    starts: dict[int, int] = {}  # epoch second -> its window's start
    for (path_group, second, stage, version), tally in tallies.groups.items():
        start = starts.get(second)
        if start is None:
            start = starts[second] = window_start(second * NS_PER_S, window_seconds)
        counts = WindowCounts(
            tally.requests,
            tally.errors_5xx,
            tally.errors_4xx,
            tally.latency,
            tally.min_ms,
            tally.max_ms,
        )
        key = (path_group, start, stage, version or NO_VERSION)
        known = windows.get(key)
        if known is None:
            windows[key] = counts
        else:
            known.merge(counts)

    out: dict[tuple[str, int], CanaryAggregate] = {} if into is None else into
    for (path_group, start, stage, version), tally_counts in windows.items():
        agg = out.get((path_group, start))
        if agg is None:
            agg = out[(path_group, start)] = CanaryAggregate(path_group, start)
        for table, name in ((agg.by_stage, stage), (agg.by_version, version)):
            held = table.get(name)
            if held is None:
                table[name] = tally_counts.copy()
            else:
                held.merge(tally_counts)
    return list(out.values())


class CanaryObserver:
    """Folds delivered batches into per-(path group, window) aggregates and publishes them.

    With ``flush_interval`` > 0, batches are coalesced and published at most
    once per interval (and by :meth:`flush`, from a timer): at tens of
    thousands of events/s that is one aggregate per path group and window
    per interval instead of one per batch, which keeps the table agent's
    per-message path (and its changelog writes) off the indexing path.
    """

    def __init__(
        self,
        window_seconds: int,
        publish: Publish,
        stats: CanaryStats | None = None,
        *,
        flush_interval: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        funnels: Sequence[funnels_mod.FunnelSpec] = (),
        publish_funnel: PublishFunnel | None = None,
    ) -> None:
        if window_seconds < 1:
            raise ValueError("the canary window must be at least one second")
        self.window_seconds = window_seconds
        self._publish = publish
        self.stats = stats if stats is not None else CanaryStats()
        self._flush_interval = flush_interval
        self._clock = clock
        self._pending: dict[tuple[str, int], CanaryAggregate] = {}
        self._last_flush = clock()
        self.funnels = tuple(funnels) if publish_funnel is not None else ()
        #: The user keys the core extracts per request (empty: no funnels, no cost).
        self.funnel_keys = funnels_mod.user_keys(self.funnels)
        self._publish_funnel = publish_funnel
        self._pending_hits: dict[str, list[funnels_mod.Hit]] = {}
        #: Per funnel, the path groups of the hits pending (capped) and what the cap left out.
        self._pending_carriers: dict[str, dict[str, int]] = {}
        self._pending_left_out: dict[str, int] = {}

    def observe_funnels(self, inputs: Sequence[tuple[object, ...]]) -> int:
        """Match a delivered batch against the funnels; returns the hits buffered.

        Only hashed user keys are buffered (``funnel.user_hash``).
        """
        try:
            seen: dict[str, dict[str, int]] = {}
            hits, keyless = funnels_mod.hits_of(self.funnels, inputs, self.funnel_keys, seen)
            self.stats.canary_funnel_hits_keyless_total += keyless
            count = 0
            for name, found in hits.items():
                self._pending_hits.setdefault(name, []).extend(found)
                count += len(found)
            for name, groups in seen.items():
                pending = self._pending_carriers.setdefault(name, {})
                left_out = funnels_mod.merge_carriers(pending, groups)
                if left_out:
                    self._pending_left_out[name] = self._pending_left_out.get(name, 0) + left_out
            self.stats.canary_funnel_hits_total += count
            return count
        except Exception:  # a bug must not fail the batch
            self.stats.canary_observer_errors_total += 1
            self._pending_hits.clear()
            self._pending_carriers.clear()
            self._pending_left_out.clear()
            log.exception("funnel observer failed; this batch is missing from the funnels")
            return 0

    def observe_batch(self, events: Iterable[ObservedEvent]) -> int:
        """Aggregate one delivered batch; returns the number of aggregates published now."""
        tallies = new_tallies()
        try:
            tally_observations(events, tallies)
        except Exception:
            return self._failed()
        return self.observe_tallies(tallies)

    def observe_tallies(self, tallies: SecondTallies) -> int:
        """``observe_batch`` of a delivered batch's requests counted by ``tally_results``
        (the batch handler's way: no Observation per request)."""
        try:
            aggregate_tallies(tallies, self.window_seconds, self.stats, into=self._pending)
            if self._clock() - self._last_flush >= self._flush_interval:
                return self.flush()
            return 0
        except Exception:  # a bug or a full producer must not fail the batch
            return self._failed()

    def _failed(self) -> int:
        self.stats.canary_observer_errors_total += 1
        self._pending.clear()
        log.exception("canary observer failed; this batch is missing from the analysis")
        return 0

    def flush(self) -> int:
        """Publish what is pending; returns the number of aggregates."""
        self._last_flush = self._clock()
        if self._pending_hits and self._publish_funnel is not None:
            pending_hits, self._pending_hits = self._pending_hits, {}
            carriers, self._pending_carriers = self._pending_carriers, {}
            left_out, self._pending_left_out = self._pending_left_out, {}
            for name, found in pending_hits.items():
                self._publish_funnel(name, found, carriers.get(name, {}), left_out.get(name, 0))
        if not self._pending:
            return 0
        aggregates = list(self._pending.values())
        self._pending = {}
        self._publish(aggregates)
        self.stats.canary_aggregates_published_total += len(aggregates)
        return len(aggregates)

"""Request metrics from the access logs: counted per batch, bounded labels.

The batch handler hands each processed batch to ``RequestMetrics.add_batch``;
the worker's ``/metrics`` renders the totals (``pipeline.telemetry``):

- ``grayscope_http_requests_total{path_group,stage,version,status_class}``
- ``grayscope_http_request_duration_seconds{path_group,stage,version}`` (histogram)
- ``grayscope_canary_verdict{path_group,decision}`` (1 for the current decision)

Cardinality is bounded whatever the input: the first ``max_path_groups`` path
groups and ``max_versions`` versions seen get their own label value, later
ones are counted as ``other`` (or take the place of one idle for
``label_idle_seconds``) (a value that does not look like a version —
too long, odd characters, an IP address — is ``other`` from the start), stage
is ``canary``/``stable``, status class ``1xx``..``5xx`` or ``other``. Labels
carry no client address, gray id or raw path. Counters are plain per-worker
totals, so the workers of a group add up (``sum by (...)``).

Counting happens when a batch has been processed, before its delivery: a batch
re-consumed after a crash is counted again (as its spans are exported again).
Pure counting over plain data: no I/O, no locks (one event loop); the clock
(one read per batch, for idle labels) is injected.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from pipeline.config import MetricsSettings
from pipeline.core.buckets import count_ns
from pipeline.core.model import DeadLetter
from pipeline.core.process import Enriched, RequestGroups, request_groups

OTHER = "other"
#: A request without a path group / version (nothing to route by).
NONE = "none"
STAGES = frozenset({"canary", "stable"})
STATUS_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")
DECISIONS = ("promote", "hold", "rollback", "insufficient_data")
# Several path groups folded into `other` show the most severe of their decisions.
SEVERITY = {"rollback": 3, "hold": 2, "insufficient_data": 1, "promote": 0}

#: Histogram upper bounds in seconds: 5 ms .. 10 s, dense around the 200 ms
#: canary threshold (histogram_quantile interpolates inside a bucket, so the
#: p95 delta is resolved to tens of milliseconds between 50 ms and 1 s).
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
    0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
)  # fmt: skip
_BOUNDS_NS = tuple(round(b * 1e9) for b in DURATION_BUCKETS)

# What a version label may look like: "v2", "1.4.0-rc.1", "canary_2024-05".
VERSION_SHAPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,39}")
MAX_PATH_GROUP_CHARS = 100

RequestKey = tuple[str, str, str, str]  # path_group, stage, version, status_class
SeriesKey = tuple[str, str, str]  # path_group, stage, version


def status_class(status: int | None) -> str:
    if status is None or not 100 <= status <= 599:
        return OTHER
    return STATUS_CLASSES[status // 100]


def looks_like_version(value: str) -> bool:
    if VERSION_SHAPE.fullmatch(value) is None:
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return True
    return False  # an address is never a label


def looks_like_path_group(value: str) -> bool:
    return 0 < len(value) <= MAX_PATH_GROUP_CHARS and value.isprintable() and '"' not in value


class LabelCap:
    """At most ``limit`` distinct values keep their name; the rest are ``other``.

    First come, first labelled. With ``idle_seconds``, a value not seen for that
    long gives its place to the next new one when the cap is full (``on_evict``
    drops its series), so a long-lived worker follows new versions instead of
    counting every release after the twentieth as ``other``. Refused values
    (over the limit or misshapen) are not remembered: the memory is bounded too,
    and asking again costs a dict lookup and a comparison.
    """

    def __init__(
        self,
        limit: int,
        admissible: Callable[[str], bool] | None = None,
        idle_seconds: float = 0.0,
        on_evict: Callable[[str], None] | None = None,
    ) -> None:
        self.limit = limit
        self.idle_seconds = idle_seconds
        self._admissible = admissible
        self._on_evict = on_evict
        self._last_seen: dict[str, float] = {}
        # While full: no entry can be idle before this time (skips the scan for one).
        self._no_idle_until = 0.0

    def label(self, value: str | None, now: float = 0.0) -> str:
        if value is None or value == "":
            return NONE
        last_seen = self._last_seen
        if value in last_seen:
            last_seen[value] = now
            return value
        check = self._admissible
        if check is not None and not check(value):
            return OTHER
        if len(last_seen) >= self.limit and not self._evict_one(now):
            return OTHER
        last_seen[value] = now
        return value

    def _evict_one(self, now: float) -> bool:
        if self.idle_seconds <= 0 or now < self._no_idle_until:
            return False
        last_seen = self._last_seen
        oldest = min(last_seen, key=last_seen.__getitem__)
        if now - last_seen[oldest] < self.idle_seconds:
            self._no_idle_until = last_seen[oldest] + self.idle_seconds
            return False
        del last_seen[oldest]
        if self._on_evict is not None:
            self._on_evict(oldest)
        return True

    def __contains__(self, value: object) -> bool:
        return value in self._last_seen

    def __len__(self) -> int:
        return len(self._last_seen)


class DurationHistogram:
    """Per-bucket (not cumulative) counts; cumulated at scrape time."""

    __slots__ = ("count", "counts", "sum_seconds")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BOUNDS_NS) + 1)
        self.sum_seconds = 0.0
        self.count = 0

    def observe_ns(self, durations_ns: Iterable[int | None]) -> int:
        """Count the durations of at least 0 ns (None: untimed, left out); how many."""
        counted, total = count_ns(durations_ns, _BOUNDS_NS, self.counts)
        self.sum_seconds += total / 1e9
        self.count += counted
        return counted

    def cumulative(self) -> Iterator[tuple[str, int]]:
        running = 0
        for bound, count in zip(DURATION_BUCKETS, self.counts, strict=False):
            running += count
            yield repr(bound), running
        yield "+Inf", self.count


class RequestMetrics:
    """Request counters and duration histograms of one worker."""

    def __init__(
        self,
        max_path_groups: int = 50,
        max_versions: int = 20,
        label_idle_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path_groups = LabelCap(
            max_path_groups,
            looks_like_path_group,
            label_idle_seconds,
            lambda value: self._forget(0, value),
        )
        self.versions = LabelCap(
            max_versions,
            looks_like_version,
            label_idle_seconds,
            lambda value: self._forget(2, value),
        )
        self.requests: dict[RequestKey, int] = {}
        self.durations: dict[SeriesKey, DurationHistogram] = {}
        self._clock = clock

    @classmethod
    def from_settings(cls, metrics: MetricsSettings) -> RequestMetrics:
        return cls(metrics.max_path_groups, metrics.max_versions, metrics.label_idle_seconds)

    def _forget(self, position: int, value: str) -> None:
        """Drop the series of an evicted label value (Prometheus sees them go stale)."""
        for key in [k for k in self.requests if k[position] == value]:
            del self.requests[key]
        for series in [k for k in self.durations if k[position] == value]:
            del self.durations[series]

    def add_batch(self, results: Sequence[Enriched | DeadLetter]) -> None:
        """Count the enriched requests of one processed batch (dead letters are skipped)."""
        self.add_groups(request_groups(results))

    def add_groups(self, groups: RequestGroups) -> None:
        """Count a batch's requests grouped by their raw values (``request_groups``: one
        dict lookup per request, in the compiled core); each distinct group is mapped to
        its labels once per batch. The worker groups the parts of a batch as it processes
        them and counts the whole batch once (the mapping costs per group, not per request)."""
        if groups:
            self._fold(groups)

    def _fold(self, groups: RequestGroups) -> None:
        requests, histograms = self.requests, self.durations
        now = self._clock()
        for (path_group, stage, version, status), durations in groups.items():
            series: SeriesKey = (
                self.path_groups.label(path_group, now),
                stage if stage in STAGES else OTHER,
                self.versions.label(version, now),
            )
            key: RequestKey = (*series, status_class(status))
            requests[key] = requests.get(key, 0) + len(durations)
            histogram = histograms.get(series)
            if histogram is not None:
                histogram.observe_ns(durations)
            else:
                histogram = DurationHistogram()
                if histogram.observe_ns(durations):  # a series only once it has a duration
                    histograms[series] = histogram

    def verdict_series(self, verdicts: Iterable[tuple[str, str]]) -> list[tuple[str, str, int]]:
        """``(path group, decision)`` pairs -> ``(path_group, decision, 0|1)`` for every decision.

        Every path group gets all four decisions (1 for its current one), so an
        alert can test ``== 1`` and a board can show the change. Path groups share
        the request metrics' cap; several folded into ``other`` show the most
        severe decision among them.
        """
        current: dict[str, str] = {}
        now = self._clock()
        for path_group, decision in verdicts:
            label = self.path_groups.label(path_group, now)
            if decision not in SEVERITY:
                continue
            seen = current.get(label)
            if seen is None or SEVERITY[decision] > SEVERITY[seen]:
                current[label] = decision
        return [
            (label, decision, int(decision == chosen))
            for label, chosen in sorted(current.items())
            for decision in DECISIONS
        ]

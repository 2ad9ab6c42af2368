"""The batch handler's hook: events folded into per-(path group, window) aggregates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.canary.counters import CanaryStats
from pipeline.canary.observer import CanaryObserver, ObservedEvent, aggregate, new_tallies
from pipeline.canary.records import NO_VERSION, CanaryAggregate, WindowCounts
from pipeline.canary.windows import window_start
from pipeline.core.model import (
    AccessRecord,
    DeadLetter,
    Enrichment,
    InputMessage,
    KafkaCoordinates,
    Reason,
)
from pipeline.core.process import Enriched, observations, tally_results
from tests.unit.conftest import observed

NS = 1_000_000_000
T0 = 1_764_000_000


def event(
    path_group: str | None = "/api/orders",
    stage: str = "stable",
    version: str | None = "v1",
    *,
    at: float | None = T0 + 1,
    status: int | None = 200,
    duration_ms: float | None = 25.0,
    kafka_at: float | None = None,
) -> ObservedEvent:
    record = AccessRecord(
        dataset="envoy.access",
        timestamp_ns=None if at is None else int(at * NS),
        status=status,
        duration_ns=None if duration_ms is None else int(duration_ms * 1_000_000),
    )
    enrichment = Enrichment(stage=stage, version=version, path_group=path_group)
    return observed(record, enrichment, None if kafka_at is None else int(kafka_at * NS))


class Published:
    def __init__(self) -> None:
        self.batches: list[list[CanaryAggregate]] = []

    def __call__(self, aggregates: Sequence[CanaryAggregate]) -> None:
        self.batches.append(list(aggregates))


def test_events_fold_into_one_aggregate_per_path_group_and_window() -> None:
    stats = CanaryStats()
    events = [
        event(stage="canary", version="v2", status=503, duration_ms=400),
        event(stage="canary", version="v2", status=200, duration_ms=300),
        event(stage="stable", version="v1", status=404),
        event(stage="stable", version=None, at=T0 + 59.999),
        event(stage="stable", at=T0 + 60),  # the next window
        event(path_group="/blog/posts", stage="canary"),
    ]
    out = aggregate(events, 60, stats)
    assert [(a.path_group, a.window_start) for a in out] == [
        ("/api/orders", T0),
        ("/api/orders", T0 + 60),
        ("/blog/posts", T0),
    ]
    orders = out[0]
    assert orders.requests == 4
    canary, stable = orders.by_stage["canary"], orders.by_stage["stable"]
    assert (canary.requests, canary.errors_5xx, canary.timed) == (2, 1, 2)
    assert (canary.min_ms, canary.max_ms) == (300.0, 400.0)
    assert (stable.requests, stable.errors_4xx) == (2, 1)
    assert {k: v.requests for k, v in orders.by_version.items()} == {
        "v2": 2,
        "v1": 1,
        NO_VERSION: 1,
    }
    assert stats.canary_events_observed_total == 6


def test_events_without_path_group_or_time_are_counted_not_aggregated() -> None:
    stats = CanaryStats()
    events = [
        event(path_group=None),
        event(path_group=""),
        event(at=None),
        event(at=None, kafka_at=T0 + 61),  # Kafka time stands in for a missing log time
        event(status=None, duration_ms=None),
    ]
    out = aggregate(events, 60, stats)
    assert stats.canary_events_unrouted_total == 2
    assert stats.canary_events_untimed_total == 1
    assert [(a.window_start, a.requests) for a in out] == [(T0 + 60, 1), (T0, 1)]
    untimed = out[1].by_stage["stable"]
    assert (untimed.requests, untimed.timed, untimed.errors_5xx) == (1, 0, 0)


def test_observer_publishes_once_per_batch() -> None:
    published = Published()
    observer = CanaryObserver(60, published)
    assert observer.observe_batch([event(), event(stage="canary")]) == 1
    assert observer.observe_batch([]) == 0
    assert observer.observe_batch([event(path_group=None)]) == 0
    assert len(published.batches) == 1
    assert observer.stats.canary_aggregates_published_total == 1


def test_observer_never_raises_into_the_batch() -> None:
    def broken(aggregates: Sequence[CanaryAggregate]) -> None:
        raise RuntimeError("producer buffer full")

    observer = CanaryObserver(60, broken)
    assert observer.observe_batch([event()]) == 0
    assert observer.stats.canary_observer_errors_total == 1
    assert observer.stats.canary_aggregates_published_total == 0


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        CanaryObserver(0, Published())


def _one_by_one(events: Sequence[ObservedEvent], window_seconds: int) -> dict[Any, Any]:
    """The reference: every event added to both of its arms with WindowCounts.add."""
    out: dict[tuple[str, int], CanaryAggregate] = {}
    for path_group, timestamp_ns, stage, version, status, duration_ns in events:
        if not path_group or not timestamp_ns:
            continue
        start = window_start(timestamp_ns, window_seconds)
        agg = out.setdefault((path_group, start), CanaryAggregate(path_group, start))
        duration = None if duration_ns is None else duration_ns / 1_000_000
        for table, name in ((agg.by_stage, stage), (agg.by_version, version or NO_VERSION)):
            table.setdefault(name, WindowCounts()).add(status, duration)
    return {key: (agg.by_stage, agg.by_version) for key, agg in out.items()}


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["/a", "/b", None]),
            st.sampled_from(["stable", "canary"]),
            st.sampled_from(["v1", "v2", None, ""]),  # None and "" are both no version
            st.one_of(st.none(), st.floats(T0, T0 + 200)),
            st.one_of(st.none(), st.integers(100, 599)),
            st.one_of(st.none(), st.floats(0, 70_000), st.just(-5.0)),
        ),
        max_size=60,
    ),
    st.sampled_from([1, 10, 60]),
)
@settings(max_examples=300, deadline=None)
def test_aggregates_equal_adding_every_event_to_both_arms(
    specs: list[tuple[Any, ...]], window_seconds: int
) -> None:
    events = [
        event(pg, stage, version, at=at, status=status, duration_ms=ms, kafka_at=T0 + 3)
        for pg, stage, version, at, status, ms in specs
    ]
    stats = CanaryStats()
    out = aggregate(events, window_seconds, stats)
    assert {(a.path_group, a.window_start): (a.by_stage, a.by_version) for a in out} == (
        _one_by_one(events, window_seconds)
    )
    assert stats.canary_events_observed_total == len(events)
    assert stats.canary_events_unrouted_total == sum(1 for s in specs if s[0] is None)


@given(
    st.lists(
        st.one_of(
            st.none(),  # a dead letter: not counted
            st.tuples(
                st.sampled_from(["/a", "/b", None, ""]),
                st.sampled_from(["stable", "canary"]),
                st.sampled_from(["v1", "v2", None, ""]),
                st.one_of(st.none(), st.just(0), st.integers(T0 * NS, (T0 + 200) * NS)),
                st.one_of(st.none(), st.integers(100, 599)),
                st.one_of(st.none(), st.integers(-(10**9), 10**11)),
                st.one_of(st.none(), st.just(0), st.integers(T0 * NS, (T0 + 200) * NS)),
            ),
        ),
        max_size=60,
    ),
    st.sampled_from([1, 10, 60]),
)
@settings(max_examples=300, deadline=None)
def test_the_handlers_tallies_aggregate_as_the_observations_do(
    specs: list[tuple[Any, ...] | None], window_seconds: int
) -> None:
    """``tally_results`` (the batch handler, per chunk) then ``observe_tallies`` gives the
    aggregates and counters that ``observe_batch`` of the batch's Observations gives."""
    messages: list[InputMessage] = []
    results: list[Enriched | DeadLetter] = []
    for i, spec in enumerate(specs):
        if spec is None:
            messages.append(InputMessage(b"x", None, KafkaCoordinates("t", 0, i), None))
            results.append(DeadLetter(Reason.INVALID_JSON, "", b"x"))
            continue
        path_group, stage, version, timestamp_ns, status, duration_ns, kafka_ns = spec
        record = AccessRecord("nginx.access", timestamp_ns, status=status)
        record.duration_ns = duration_ns
        enrichment = Enrichment(stage=stage, version=version, path_group=path_group)
        messages.append(InputMessage(b"x", None, KafkaCoordinates("t", 0, i), kafka_ns))
        results.append(Enriched(record, enrichment, b"{}"))
    by_observations, by_tallies = Published(), Published()
    reference = CanaryObserver(window_seconds, by_observations)
    reference.observe_batch(observations(messages, results))
    observer = CanaryObserver(window_seconds, by_tallies)
    tallies = new_tallies()
    for start in range(0, len(messages), 7):  # in chunks, as the handler adds them
        tally_results(messages[start : start + 7], results[start : start + 7], tallies)
    observer.observe_tallies(tallies)
    assert by_tallies.batches == by_observations.batches
    assert observer.stats == reference.stats

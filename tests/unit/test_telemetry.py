"""The worker's Prometheus exposition: consumer lag, and the one reader of it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import NamedTuple

from agents.batching import consumer_lag
from pipeline.telemetry import Telemetry, parse_samples, sample_sums


class TP(NamedTuple):
    topic: str
    partition: int


class FakeConsumer:
    """What the lag gauge reads of Faust's consumer."""

    def __init__(self, highwaters: dict[TP, int | None], committed: dict[TP, int | None]) -> None:
        self._highwaters = highwaters
        self._committed_offset = committed

    def assignment(self) -> set[TP]:
        return set(self._highwaters)

    def highwater(self, tp: TP) -> int | None:
        return self._highwaters[tp]


def telemetry_for(consumer: FakeConsumer, changelogs: set[str]) -> Telemetry:
    app = SimpleNamespace(_consumer=consumer, tables=SimpleNamespace(changelog_topics=changelogs))
    return Telemetry(SimpleNamespace(app=app, consumer_lag=lambda: consumer_lag(app)))


def test_lag_is_high_watermark_minus_committed_for_consumed_topics() -> None:
    consumer = FakeConsumer(
        {TP("access-logs", 0): 120, TP("access-logs", 1): 50, TP("access-logs", 2): None},
        {TP("access-logs", 0): 100, TP("access-logs", 1): None},
    )
    lag = telemetry_for(consumer, set()).consumer_lag()
    assert lag == {("access-logs", 0): 20, ("access-logs", 1): 50}


def test_table_changelogs_are_not_lag() -> None:
    """Changelogs are read at recovery and never committed: their length is no backlog."""
    changelog = "grayscope-canary-by_stage-changelog"
    consumer = FakeConsumer(
        {TP("access-logs", 0): 10, TP(changelog, 0): 5000},
        {TP("access-logs", 0): 10},
    )
    telemetry = telemetry_for(consumer, {changelog})
    assert telemetry.consumer_lag() == {("access-logs", 0): 0}
    body, _ = asyncio.run(telemetry.render())
    text = body.decode()
    assert 'grayscope_consumer_lag{partition="0",topic="access-logs"} 0.0' in text
    assert changelog not in text


def test_no_consumer_no_gauge() -> None:
    assert Telemetry(SimpleNamespace(app=None)).consumer_lag() is None
    runtime = SimpleNamespace(consumer_lag=lambda: consumer_lag(None))
    assert Telemetry(runtime).consumer_lag() is None


def test_exposition_parser_reads_names_labels_and_values() -> None:
    text = "\n".join(
        [
            "# HELP grayscope_dead_lettered_total dead letters",
            "grayscope_messages_consumed_total 1695.0",
            'grayscope_dead_lettered_total{reason="invalid_json"} 2.0',
            'grayscope_dead_lettered_total{reason="unknown format"} 3.0',
            "garbage line",
            "",
        ]
    )
    assert parse_samples(text) == [
        ("grayscope_messages_consumed_total", "", 1695.0),
        ("grayscope_dead_lettered_total", '{reason="invalid_json"}', 2.0),
        ("grayscope_dead_lettered_total", '{reason="unknown format"}', 3.0),
    ]
    sums = sample_sums(text)
    assert sums["grayscope_dead_lettered_total"] == 5.0
    assert sums['grayscope_dead_lettered_total{reason="invalid_json"}'] == 2.0
    assert "garbage" not in sums


def test_worker_metrics_sum_labelled_samples() -> None:
    text = "\n".join(
        [
            "# HELP grayscope_messages_consumed_total batches: messages consumed total",
            "# TYPE grayscope_messages_consumed_total counter",
            "grayscope_messages_consumed_total 1695.0",
            'grayscope_dead_lettered_total{reason="invalid_json"} 2.0',
            'grayscope_dead_lettered_total{reason="unknown_format"} 3.0',
            'grayscope_bulk_request_duration_seconds_bucket{le="0.005"} 1.0',
            "garbage line",
            "",
        ]
    )
    metrics = sample_sums(text)
    assert metrics["grayscope_messages_consumed_total"] == 1695.0
    assert metrics["grayscope_dead_lettered_total"] == 5.0
    assert "garbage" not in metrics

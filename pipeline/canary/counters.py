"""Counters of the canary analysis (plain ints; the worker exports them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class CanaryStats:
    # Batch side (every worker): enriched events turned into aggregates.
    canary_events_observed_total: int = 0
    canary_events_unrouted_total: int = 0  # no path group: nothing to compare
    canary_events_untimed_total: int = 0  # neither @timestamp nor a Kafka timestamp
    canary_aggregates_published_total: int = 0
    canary_observer_errors_total: int = 0
    # Table side (owner of the aggregates partition).
    canary_aggregates_applied_total: int = 0
    canary_aggregates_invalid_total: int = 0
    canary_late_events_total: int = 0  # requests in aggregates for expired windows
    canary_future_events_total: int = 0  # requests timestamped more than a window ahead
    canary_windows_expired_total: int = 0  # stale table windows deleted
    # Verdicts.
    canary_evaluations_total: int = 0
    canary_verdicts_total: dict[str, int] = field(default_factory=dict)  # by decision
    canary_verdict_publish_errors_total: dict[str, int] = field(default_factory=dict)  # by sink

    def count_error(self, sink: str) -> None:
        errors = self.canary_verdict_publish_errors_total
        errors[sink] = errors.get(sink, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

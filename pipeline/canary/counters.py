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
    canary_funnel_hits_total: int = 0  # requests matching a funnel step (with a user key)
    canary_funnel_hits_keyless_total: int = 0  # matching a step, but without the user key
    # Table side (owner of the aggregates partition).
    canary_aggregates_applied_total: int = 0
    canary_aggregates_invalid_total: int = 0
    canary_late_events_total: int = 0  # requests in aggregates for expired windows
    canary_future_events_total: int = 0  # requests timestamped more than a window ahead
    canary_windows_expired_total: int = 0  # stale table windows deleted
    canary_funnel_hits_applied_total: int = 0  # hits a funnel's owner applied to its state
    canary_funnel_users: int = 0  # users held in the funnel tables (this worker's partitions)
    canary_funnel_users_expired_total: int = 0  # past their window (retention)
    canary_funnel_users_evicted_total: int = 0  # dropped by the cap while still in their window
    canary_funnel_late_conversions_total: int = 0  # conversions of already judged strata
    canary_funnel_late_entries_total: int = 0  # entries into already judged strata (left out)
    canary_folds_stale_total: int = 0  # folds not applied: made on another state, or lost
    canary_funnel_resolves_unchanged_total: int = 0  # judged already, or another rollout's
    # Funnel rollbacks marked on carriers' states (owner of the carrier's partition).
    canary_funnel_carriers_marked_total: int = 0  # marks that made a state roll back
    canary_funnel_carrier_marks_unchanged_total: int = 0  # already marked, or stale: ignored
    # Verdicts.
    canary_evaluations_total: int = 0
    canary_folds_total: int = 0  # folds sent to the agent (a group's increments per evaluation)
    canary_funnel_carrier_marks_sent_total: int = 0  # marks sent to carriers' owners
    canary_funnel_resolves_sent_total: int = 0  # requests to judge a funnel at the stream clock
    canary_verdicts_total: dict[str, int] = field(default_factory=dict)  # by decision
    canary_verdict_publish_errors_total: dict[str, int] = field(default_factory=dict)  # by sink

    def count_error(self, sink: str) -> None:
        errors = self.canary_verdict_publish_errors_total
        errors[sink] = errors.get(sink, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

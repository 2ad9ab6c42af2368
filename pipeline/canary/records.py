"""Plain record types of the canary analysis and their JSON forms (pure).

- ``WindowCounts``: what one window knows about one arm (a stage or a
  version of a path group): requests, 5xx, 4xx, a sparse latency histogram.
  It is the value of the Faust tables and travels inside aggregates.
- ``CanaryAggregate``: what one worker batch saw of one path group in one
  window, per stage and per version; the record on the aggregates topic.
- ``ArmSummary`` / ``Verdict``: the result of comparing canary with stable.
  ``Verdict.to_document()`` is the ``grayscope-verdicts`` document (only the
  fields mapped in ``schemas/verdict_fields.json``); ``to_json()`` adds the
  per-version breakdown for ``/canary`` and the verdict topic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pipeline.canary import histogram

AGGREGATE_VERSION = 1
NO_VERSION = "-"  # version table key for requests without a version


class Decision(StrEnum):
    PROMOTE = "promote"
    HOLD = "hold"
    ROLLBACK = "rollback"
    INSUFFICIENT_DATA = "insufficient_data"


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value


@dataclass(slots=True)
class WindowCounts:
    requests: int = 0
    errors_5xx: int = 0
    errors_4xx: int = 0
    latency: dict[int, int] = field(default_factory=dict)  # bucket index -> count
    min_ms: float | None = None  # fastest and slowest timed request
    max_ms: float | None = None

    def add(self, status: int | None, duration_ms: float | None) -> None:
        self.requests += 1
        if status is not None:
            if 500 <= status <= 599:
                self.errors_5xx += 1
            elif 400 <= status <= 499:
                self.errors_4xx += 1
        if duration_ms is not None:
            duration_ms = max(duration_ms, 0.0)
            histogram.add(self.latency, duration_ms)
            self._extremes(duration_ms, duration_ms)

    def add_requests(self, statuses: Sequence[int | None], durations_ms: Sequence[float]) -> None:
        """``add`` for many requests at once: every request's status, and the
        durations of those that logged one (same counts, one call per tally)."""
        self.requests += len(statuses)
        for status in statuses:
            if status is not None and 400 <= status <= 599:
                if status >= 500:
                    self.errors_5xx += 1
                else:
                    self.errors_4xx += 1
        if durations_ms:
            histogram.add_all(self.latency, durations_ms)  # negatives count as 0 ms there
            self._extremes(max(min(durations_ms), 0.0), max(max(durations_ms), 0.0))

    def _extremes(self, low: float | None, high: float | None) -> None:
        if low is not None and (self.min_ms is None or low < self.min_ms):
            self.min_ms = low
        if high is not None and (self.max_ms is None or high > self.max_ms):
            self.max_ms = high

    def merge(self, other: WindowCounts) -> None:
        self.requests += other.requests
        self.errors_5xx += other.errors_5xx
        self.errors_4xx += other.errors_4xx
        histogram.merge(self.latency, other.latency)
        self._extremes(other.min_ms, other.max_ms)

    def minus(self, earlier: WindowCounts) -> WindowCounts | None:
        """What these counts gained since ``earlier`` (a past state of them); None if
        any count fell. The extremes are these counts' own (an envelope)."""
        requests = self.requests - earlier.requests
        errors_5xx = self.errors_5xx - earlier.errors_5xx
        errors_4xx = self.errors_4xx - earlier.errors_4xx
        if requests < 0 or errors_5xx < 0 or errors_4xx < 0:
            return None
        latency: dict[int, int] = {}
        for index, count in self.latency.items():
            gained = count - earlier.latency.get(index, 0)
            if gained < 0:
                return None
            if gained:
                latency[index] = gained
        if any(count > 0 and index not in self.latency for index, count in earlier.latency.items()):
            return None
        return WindowCounts(requests, errors_5xx, errors_4xx, latency, self.min_ms, self.max_ms)

    def copy(self) -> WindowCounts:
        return WindowCounts(
            self.requests,
            self.errors_5xx,
            self.errors_4xx,
            dict(self.latency),
            self.min_ms,
            self.max_ms,
        )

    def percentile(self, q: float) -> float | None:
        """Latency quantile in ms (see ``histogram.percentile``); None without timed requests."""
        return histogram.percentile(self.latency, q, self.min_ms, self.max_ms)

    @property
    def timed(self) -> int:
        """Requests with a logged duration (the histogram's total)."""
        return histogram.total(self.latency)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n": self.requests,
            "5xx": self.errors_5xx,
            "4xx": self.errors_4xx,
            "h": {str(index): count for index, count in sorted(self.latency.items())},
        }
        if self.min_ms is not None and self.max_ms is not None:
            out["min"] = self.min_ms
            out["max"] = self.max_ms
        return out

    @classmethod
    def from_json(cls, data: Any) -> WindowCounts:
        """Inverse of ``to_json``; ``ValueError`` on anything malformed."""
        if not isinstance(data, Mapping):
            raise ValueError("window counts must be an object")
        raw_histogram = data.get("h", {})
        if not isinstance(raw_histogram, Mapping):
            raise ValueError("latency histogram must be an object")
        latency: dict[int, int] = {}
        for key, count in raw_histogram.items():
            index = int(key)
            if not 0 <= index < histogram.BUCKETS:
                raise ValueError(f"latency bucket {index} out of range")
            if _count(count):
                latency[index] = count
        requests, errors_5xx, errors_4xx = (_count(data.get(k, 0)) for k in ("n", "5xx", "4xx"))
        low, high = _opt_float(data.get("min")), _opt_float(data.get("max"))
        if (low is None) != (high is None) or (low is not None and high is not None and low > high):
            raise ValueError("latency extremes must come as a pair, min <= max")
        counts = cls(requests, errors_5xx, errors_4xx, latency, low, high)
        if counts.errors_5xx + counts.errors_4xx > counts.requests:
            raise ValueError("more errors than requests")
        return counts


@dataclass(slots=True)
class CanaryAggregate:
    """One batch's counts for one path group in one window (event time)."""

    path_group: str
    window_start: int  # epoch seconds, a multiple of the window size
    by_stage: dict[str, WindowCounts] = field(default_factory=dict)
    by_version: dict[str, WindowCounts] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return sum(c.requests for c in self.by_stage.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "v": AGGREGATE_VERSION,
            "path_group": self.path_group,
            "window_start": self.window_start,
            "stages": {k: c.to_json() for k, c in sorted(self.by_stage.items())},
            "versions": {k: c.to_json() for k, c in sorted(self.by_version.items())},
        }

    @classmethod
    def from_json(cls, data: Any) -> CanaryAggregate:
        if not isinstance(data, Mapping) or data.get("v") != AGGREGATE_VERSION:
            raise ValueError("not a canary aggregate (version 1)")
        path_group = data.get("path_group")
        window_start = data.get("window_start")
        if not isinstance(path_group, str) or not path_group:
            raise ValueError("aggregate without a path group")
        if isinstance(window_start, bool) or not isinstance(window_start, int):
            raise ValueError("aggregate without an integer window start")
        stages = data.get("stages", {})
        versions = data.get("versions", {})
        if not isinstance(stages, Mapping) or not isinstance(versions, Mapping):
            raise ValueError("stages and versions must be objects")
        return cls(
            path_group,
            window_start,
            {str(k): WindowCounts.from_json(v) for k, v in stages.items()},
            {str(k): WindowCounts.from_json(v) for k, v in versions.items()},
        )


@dataclass(slots=True, frozen=True)
class ArmSummary:
    """One arm of a comparison as reported: counts, 5xx share, latency percentiles."""

    requests: int = 0
    errors_5xx: int = 0
    errors_4xx: int = 0
    timed: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None

    @property
    def error_rate(self) -> float | None:
        return self.errors_5xx / self.requests if self.requests else None

    @classmethod
    def of(cls, counts: WindowCounts) -> ArmSummary:
        return cls(
            counts.requests,
            counts.errors_5xx,
            counts.errors_4xx,
            counts.timed,
            counts.percentile(0.50),
            counts.percentile(0.95),
            counts.percentile(0.99),
        )

    def to_json(self) -> dict[str, Any]:
        latency = {
            k: round(v, 3)
            for k, v in (("p50_ms", self.p50_ms), ("p95_ms", self.p95_ms), ("p99_ms", self.p99_ms))
            if v is not None
        }
        out: dict[str, Any] = {
            "requests": self.requests,
            "errors_5xx": self.errors_5xx,
            "errors_4xx": self.errors_4xx,
            "timed": self.timed,
        }
        if self.error_rate is not None:
            out["error_rate"] = self.error_rate
        if latency:
            out["latency"] = latency
        return out

    @classmethod
    def from_json(cls, data: Any) -> ArmSummary:
        if not isinstance(data, Mapping):
            return cls()
        latency = data.get("latency") or {}
        return cls(
            int(data.get("requests", 0)),
            int(data.get("errors_5xx", 0)),
            int(data.get("errors_4xx", 0)),
            int(data.get("timed", 0)),
            _opt_float(latency.get("p50_ms")),
            _opt_float(latency.get("p95_ms")),
            _opt_float(latency.get("p99_ms")),
        )


ANALYSIS_CAP = 1e300  # e-values beyond this are stored as this (JSON has no infinity)


@dataclass(slots=True, frozen=True)
class Analysis:
    """The anytime-valid analysis behind a verdict (``pipeline/canary/engine.py``).

    Rollout-wide: cumulative counts since the rollout of the path group began,
    the e-values (evidence) against the threshold ``1/alpha``, the effects with
    their confidence sequences, and the rule that decided.
    """

    rule: str
    weight: float  # the group's share of the rollout's evidence
    e_value: float  # the group's (5xx and latency averaged; latency gated)
    error_e_value: float
    latency_e_value: float
    latency_counted: bool  # the p95 increase estimate reached the threshold
    rollout_e_value: float
    threshold: float  # 1 / alpha
    rate_ratio: float | None = None
    rate_ratio_lower: float | None = None
    rate_ratio_upper: float | None = None
    error_increase_upper: float | None = None  # canary - stable 5xx rate, upper bound
    #: The rollout's path groups together (the promote rule's 5xx scale): the upper bounds
    #: of the 5xx rate ratio and of the canary's 5xx rate.
    rollout_rate_ratio_upper: float | None = None
    rollout_canary_error_rate_upper: float | None = None
    p95_delta_ms: float | None = None
    p95_delta_lower_ms: float | None = None
    p95_delta_upper_ms: float | None = None
    more_canary_requests: int | None = None
    windows: int = 0
    canary_requests: int = 0
    canary_errors_5xx: int = 0
    stable_requests: int = 0
    stable_errors_5xx: int = 0

    def to_json(self) -> dict[str, Any]:
        def finite(value: float | None) -> float | None:
            if value is None or math.isnan(value) or math.isinf(value):
                return None
            return min(value, ANALYSIS_CAP)

        def pruned(values: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in values.items() if v is not None}

        return {
            "rule": self.rule,
            "evidence": pruned(
                {
                    "e_value": finite(self.e_value),
                    "error_e_value": finite(self.error_e_value),
                    "latency_e_value": finite(self.latency_e_value),
                    "latency_counted": self.latency_counted,
                    "rollout_e_value": finite(self.rollout_e_value),
                    "threshold": self.threshold,
                    "weight": self.weight,
                }
            ),
            "effect": pruned(
                {
                    "rate_ratio": finite(self.rate_ratio),
                    "rate_ratio_lower": finite(self.rate_ratio_lower),
                    "rate_ratio_upper": finite(self.rate_ratio_upper),
                    "error_increase_upper": finite(self.error_increase_upper),
                    "rollout_rate_ratio_upper": finite(self.rollout_rate_ratio_upper),
                    "rollout_canary_error_rate_upper": finite(self.rollout_canary_error_rate_upper),
                    "p95_delta_ms": _round(finite(self.p95_delta_ms)),
                    "p95_delta_lower_ms": _round(finite(self.p95_delta_lower_ms)),
                    "p95_delta_upper_ms": _round(finite(self.p95_delta_upper_ms)),
                }
            ),
            "rollout": pruned(
                {
                    "windows": self.windows,
                    "canary_requests": self.canary_requests,
                    "canary_errors_5xx": self.canary_errors_5xx,
                    "stable_requests": self.stable_requests,
                    "stable_errors_5xx": self.stable_errors_5xx,
                    "more_canary_requests": self.more_canary_requests,
                }
            ),
        }

    @classmethod
    def from_json(cls, data: Any) -> Analysis | None:
        if not isinstance(data, Mapping) or "rule" not in data:
            return None
        ev = data.get("evidence") or {}
        effect = data.get("effect") or {}
        rollout = data.get("rollout") or {}
        more = rollout.get("more_canary_requests")
        return cls(
            rule=str(data["rule"]),
            weight=float(ev.get("weight", 0.0)),
            e_value=float(ev.get("e_value", 0.0)),
            error_e_value=float(ev.get("error_e_value", 0.0)),
            latency_e_value=float(ev.get("latency_e_value", 0.0)),
            latency_counted=bool(ev.get("latency_counted", False)),
            rollout_e_value=float(ev.get("rollout_e_value", 0.0)),
            threshold=float(ev.get("threshold", 0.0)),
            rate_ratio=_opt_float(effect.get("rate_ratio")),
            rate_ratio_lower=_opt_float(effect.get("rate_ratio_lower")),
            rate_ratio_upper=_opt_float(effect.get("rate_ratio_upper")),
            error_increase_upper=_opt_float(effect.get("error_increase_upper")),
            rollout_rate_ratio_upper=_opt_float(effect.get("rollout_rate_ratio_upper")),
            rollout_canary_error_rate_upper=_opt_float(
                effect.get("rollout_canary_error_rate_upper")
            ),
            p95_delta_ms=_opt_float(effect.get("p95_delta_ms")),
            p95_delta_lower_ms=_opt_float(effect.get("p95_delta_lower_ms")),
            p95_delta_upper_ms=_opt_float(effect.get("p95_delta_upper_ms")),
            more_canary_requests=None if more is None else int(more),
            windows=int(rollout.get("windows", 0)),
            canary_requests=int(rollout.get("canary_requests", 0)),
            canary_errors_5xx=int(rollout.get("canary_errors_5xx", 0)),
            stable_requests=int(rollout.get("stable_requests", 0)),
            stable_errors_5xx=int(rollout.get("stable_errors_5xx", 0)),
        )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass(slots=True, frozen=True)
class Verdict:
    path_group: str
    window_start: int  # epoch seconds
    window_seconds: int
    complete: bool  # the window has ended (wall clock); False: still filling
    decision: Decision
    reasons: tuple[str, ...]
    canary: ArmSummary
    stable: ArmSummary
    z: float | None
    p_value: float | None  # one-sided, H1: canary 5xx rate > stable 5xx rate
    alpha: float
    min_samples: int
    p95_delta_ms: float | None
    latency_threshold_ms: float
    evaluated_at: float  # epoch seconds
    versions: tuple[tuple[str, ArmSummary], ...] = ()
    analysis: Analysis | None = None

    @property
    def window_end(self) -> int:
        return self.window_start + self.window_seconds

    @property
    def doc_id(self) -> str:
        # One document per path group and window: re-evaluations overwrite it.
        return f"{self.path_group}@{self.window_start}"

    def to_document(self) -> dict[str, Any]:
        """The ``grayscope-verdicts`` document: mapped fields only, no nulls."""
        verdict: dict[str, Any] = {
            "decision": self.decision.value,
            "reasons": list(self.reasons),
            "complete": self.complete,
            "evaluated_at": epoch_to_iso(self.evaluated_at),
            "window": {
                "start": epoch_to_iso(self.window_start),
                "end": epoch_to_iso(self.window_end),
                "seconds": self.window_seconds,
            },
            "alpha": self.alpha,
            "min_samples": self.min_samples,
            "latency": {"threshold_ms": self.latency_threshold_ms},
            "canary": self.canary.to_json(),
            "stable": self.stable.to_json(),
            "versions": [name for name, _ in self.versions],
        }
        if self.z is not None:
            verdict["z"] = round(self.z, 6)
        if self.p_value is not None:
            verdict["p_value"] = self.p_value
        if self.p95_delta_ms is not None:
            verdict["latency"]["p95_delta_ms"] = round(self.p95_delta_ms, 3)
        if self.analysis is not None:
            verdict.update(self.analysis.to_json())
        return {
            "@timestamp": epoch_to_iso(self.window_start),
            "gray": {"path_group": self.path_group},
            "verdict": verdict,
        }

    def to_json(self) -> dict[str, Any]:
        """The document plus the per-version breakdown (``/canary``, the verdict topic)."""
        doc = self.to_document()
        doc["verdict"]["by_version"] = [
            {"version": name, **summary.to_json()} for name, summary in self.versions
        ]
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> Verdict:
        """Read a ``to_json``/``to_document`` dict back (for clients of ``/canary``)."""
        try:
            verdict = doc["verdict"]
            window = verdict["window"]
            latency = verdict.get("latency") or {}
            versions = tuple(
                (str(item["version"]), ArmSummary.from_json(item))
                for item in verdict.get("by_version") or ()
            )
            return cls(
                path_group=str(doc["gray"]["path_group"]),
                window_start=int(iso_to_epoch(window["start"])),
                window_seconds=int(window["seconds"]),
                complete=bool(verdict.get("complete", False)),
                decision=Decision(verdict["decision"]),
                reasons=tuple(str(r) for r in verdict.get("reasons") or ()),
                canary=ArmSummary.from_json(verdict.get("canary")),
                stable=ArmSummary.from_json(verdict.get("stable")),
                z=_opt_float(verdict.get("z")),
                p_value=_opt_float(verdict.get("p_value")),
                alpha=float(verdict.get("alpha", 0.0)),
                min_samples=int(verdict.get("min_samples", 0)),
                p95_delta_ms=_opt_float(latency.get("p95_delta_ms")),
                latency_threshold_ms=float(latency.get("threshold_ms", 0.0)),
                evaluated_at=iso_to_epoch(verdict["evaluated_at"]),
                versions=versions,
                analysis=Analysis.from_json(verdict),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a verdict document: {exc}") from exc


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def epoch_to_iso(seconds: float) -> str:
    """``2026-11-20T12:00:00.000Z`` (UTC, milliseconds)."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def iso_to_epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

"""Canary against stable, per path group and window: the decision rules (pure).

For the window being judged (see ``windows.pick_window``), with the canary
arm ``c`` and the stable arm ``s`` of one path group:

1. ``insufficient_data`` when either arm has fewer than ``min_samples``
   requests. No other rule applies; z and p are still reported when both
   arms have traffic.
2. ``rollback`` when the canary's 5xx rate is *significantly higher*
   (two-proportion Z-test, one-sided, ``p < alpha``) **or** its p95 latency
   exceeds stable's by more than ``latency_threshold_ms``. Latency is only
   compared when both arms have at least ``min_samples`` requests with a
   logged duration.
3. ``hold`` when nothing calls for a rollback but the canary is not shown to
   be as good: its 5xx rate is higher (not significantly), or latency could
   not be compared (too few timed requests, e.g. a log format without
   durations).
4. ``promote`` otherwise: enough samples, 5xx rate not higher than stable's,
   p95 within the threshold.

Every verdict carries the reasons (human-readable strings) for its decision.
4xx responses are reported but never judged: they are mostly the client's doing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from pipeline.canary import windows
from pipeline.canary.records import ArmSummary, Decision, Verdict, WindowCounts
from pipeline.canary.ztest import ZTest, two_proportion_ztest

CANARY = "canary"
STABLE = "stable"

K = TypeVar("K")
Row = tuple[str, str, int, WindowCounts]  # (path group, stage or version, window start, counts)


@dataclass(slots=True, frozen=True)
class VerdictConfig:
    alpha: float = 0.05
    min_samples: int = 100
    latency_threshold_ms: float = 200.0

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError("alpha must lie strictly between 0 and 1")
        if self.min_samples < 1:
            raise ValueError("min_samples must be at least 1")
        if self.latency_threshold_ms < 0:
            raise ValueError("latency_threshold_ms must not be negative")


@dataclass(slots=True, frozen=True)
class Judgement:
    decision: Decision
    reasons: tuple[str, ...]
    test: ZTest | None
    p95_delta_ms: float | None


def _pct(rate: float) -> str:
    return f"{rate * 100:.2f}%"


def _ms(value: float) -> str:
    return f"{value:.1f} ms"


def judge(canary: WindowCounts, stable: WindowCounts, config: VerdictConfig) -> Judgement:
    """Apply the decision rules of this module to one window's two arms."""
    test = (
        two_proportion_ztest(canary.errors_5xx, canary.requests, stable.errors_5xx, stable.requests)
        if canary.requests and stable.requests
        else None
    )
    minimum = config.min_samples
    short = [
        f"{name}: {arm.requests} requests, fewer than the minimum of {minimum}"
        for name, arm in ((CANARY, canary), (STABLE, stable))
        if arm.requests < minimum
    ]
    if short or test is None:
        return Judgement(Decision.INSUFFICIENT_DATA, tuple(short), test, None)

    canary_rate = canary.errors_5xx / canary.requests
    stable_rate = stable.errors_5xx / stable.requests
    rates = f"5xx rate: canary {_pct(canary_rate)} vs stable {_pct(stable_rate)}"
    p_text = f"z={test.z:.2f}, p={test.p_value:.3g}"

    delta: float | None = None
    untimed = [
        f"p95 latency not compared: {name} has {arm.timed} timed requests, fewer than {minimum}"
        for name, arm in ((CANARY, canary), (STABLE, stable))
        if arm.timed < minimum
    ]
    latency_text = ""
    if not untimed:
        canary_p95 = canary.percentile(0.95)
        stable_p95 = stable.percentile(0.95)
        assert canary_p95 is not None and stable_p95 is not None  # both arms are timed
        delta = canary_p95 - stable_p95
        latency_text = (
            f"p95 latency: canary {_ms(canary_p95)} vs stable {_ms(stable_p95)}, {delta:+.1f} ms"
        )
    threshold = config.latency_threshold_ms

    failures = []
    if test.p_value < config.alpha:
        failures.append(f"{rates}, significantly higher ({p_text} < alpha={config.alpha:g})")
    if delta is not None and delta > threshold:
        failures.append(f"{latency_text} exceeds the {threshold:g} ms threshold")
    if failures:
        return Judgement(Decision.ROLLBACK, tuple(failures), test, delta)

    doubts = []
    if canary_rate > stable_rate:
        doubts.append(f"{rates}, higher but not significantly ({p_text} >= alpha={config.alpha:g})")
    doubts += untimed
    if doubts:
        return Judgement(Decision.HOLD, tuple(doubts), test, delta)

    return Judgement(
        Decision.PROMOTE,
        (
            f"{rates}, not higher ({p_text})",
            f"{latency_text} within the {threshold:g} ms threshold",
        ),
        test,
        delta,
    )


@dataclass(slots=True)
class _PathGroup:
    canary: dict[int, WindowCounts] = field(default_factory=dict)
    stable: dict[int, WindowCounts] = field(default_factory=dict)
    versions: dict[int, dict[str, WindowCounts]] = field(default_factory=dict)


def _merge_into(target: dict[K, WindowCounts], key: K, counts: WindowCounts) -> None:
    existing = target.get(key)
    if existing is None:
        target[key] = counts.copy()
    else:
        existing.merge(counts)


def _enough(group: _PathGroup, start: int, config: VerdictConfig) -> bool:
    stable = group.stable.get(start)
    return (
        group.canary[start].requests >= config.min_samples
        and stable is not None
        and stable.requests >= config.min_samples
    )


def evaluate(
    stages: Iterable[Row],
    versions: Iterable[Row],
    config: VerdictConfig,
    *,
    window_seconds: int,
    expires_seconds: float,
    now: float,
) -> list[Verdict]:
    """One verdict per path group with canary traffic in a live window, by path group.

    ``stages`` / ``versions`` are the rows of the per-stage and per-version
    tables; stale windows (past their expiry) are ignored.
    """
    groups: dict[str, _PathGroup] = defaultdict(_PathGroup)
    for path_group, stage, start, counts in stages:
        if windows.is_stale(start, window_seconds, expires_seconds, now):
            continue
        group = groups[path_group]
        if stage == CANARY:
            _merge_into(group.canary, start, counts)
        elif stage == STABLE:
            _merge_into(group.stable, start, counts)
    for path_group, version, start, counts in versions:
        if path_group in groups and not windows.is_stale(
            start, window_seconds, expires_seconds, now
        ):
            per_version = groups[path_group].versions.setdefault(start, {})
            _merge_into(per_version, version, counts)

    verdicts = []
    for path_group in sorted(groups):
        group = groups[path_group]
        candidates = [start for start, counts in group.canary.items() if counts.requests > 0]
        picked = windows.pick_window(candidates, window_seconds, now)
        if picked is None:
            continue
        start, complete = picked
        note: tuple[str, ...] = ()
        if complete and not _enough(group, start, config):
            # A quiet trailing window must not erase what a busy one showed (a rollback
            # would vanish when traffic drops): judge the latest window with enough data.
            for earlier in sorted(candidates, reverse=True):
                if earlier < start and _enough(group, earlier, config):
                    note = (
                        f"latest window ({start}) has fewer than {config.min_samples} requests "
                        f"per arm; judged the latest window with enough ({earlier})",
                    )
                    start = earlier
                    break
        canary = group.canary[start]
        stable = group.stable.get(start, WindowCounts())
        result = judge(canary, stable, config)
        breakdown = sorted(
            group.versions.get(start, {}).items(), key=lambda item: (-item[1].requests, item[0])
        )
        verdicts.append(
            Verdict(
                path_group=path_group,
                window_start=start,
                window_seconds=window_seconds,
                complete=complete,
                decision=result.decision,
                reasons=result.reasons + note,
                canary=ArmSummary.of(canary),
                stable=ArmSummary.of(stable),
                z=result.test.z if result.test else None,
                p_value=result.test.p_value if result.test else None,
                alpha=config.alpha,
                min_samples=config.min_samples,
                p95_delta_ms=result.p95_delta_ms,
                latency_threshold_ms=config.latency_threshold_ms,
                evaluated_at=now,
                versions=tuple((name, ArmSummary.of(counts)) for name, counts in breakdown),
            )
        )
    return verdicts

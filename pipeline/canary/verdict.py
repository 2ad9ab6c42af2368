"""Canary against stable per path group: the verdicts (pure).

``evaluate`` is the live decision: the rows of the window tables plus each
path group's persisted rollout state (``engine.GroupState``) -> one verdict
per path group with canary traffic in a live window. What the live windows
gained since the state was folded is folded in (the caller persists those
folds, so every evaluation looks at one process), the data-quality checks (a missing
window, a sample-ratio mismatch) are computed from the live windows, and
``engine.assess`` decides with the anytime-valid evidence of the whole
rollout. The window shown in a verdict (its counts, z, p, p95 delta) is the
latest complete one, described, not judged on its own.

``judge`` is the previous rule, kept as the baseline the simulator compares
with (``grayscope canary simulate``: "per-window Z-test"): per window, a
one-sided two-proportion Z-test at ``alpha`` or a p95 difference over the
threshold means rollback. Repeated every window and path group its false
rollbacks add up (issue 17); it is not used for live verdicts any more.
4xx responses are reported but never judged: they are mostly the client's doing.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from pipeline.canary import engine, windows
from pipeline.canary.engine import Fold, FunnelDecision, GroupState, VerdictConfig, WindowCheck
from pipeline.canary.funnel import FunnelFacts
from pipeline.canary.records import ArmSummary, Decision, Verdict, WindowCounts
from pipeline.canary.ztest import ZTest, two_proportion_ztest

CANARY = "canary"
STABLE = "stable"

K = TypeVar("K")
Row = tuple[str, str, int, WindowCounts]  # (path group, stage or version, window start, counts)


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


def provisional_states(
    groups: dict[str, _PathGroup],
    states: dict[str, GroupState],
    *,
    window_seconds: int,
    expires_seconds: float,
    now: float,
    psi0: float,
    weight_scale: float = 1.0,
    folds: dict[str, Fold] | None = None,
) -> dict[str, GroupState]:
    """Copies of the persisted states with what the live windows gained since folded in.

    ``folds``, when given, receives per group the fold to persist (its increments,
    and the weight of a group that started in it): the worker's agent applies
    exactly these, so the next evaluation starts from the state judged now.
    """
    close_through = int(windows.stale_before(now, window_seconds, expires_seconds)) - window_seconds
    out: dict[str, GroupState] = {}
    found: dict[str, tuple[int, tuple[engine.Increment, ...]]] = {}
    for path_group in sorted(set(groups) | set(states)):
        state = states.get(path_group)
        state = GroupState(path_group) if state is None else state.copy()
        base = state.folds
        group = groups.get(path_group)
        increments: list[engine.Increment] = []
        if group is not None:
            increments = engine.advance(
                state, group.canary, group.stable, window_seconds, close_through, psi0
            )
        if state.first_window >= 0 or state.rolled_back:
            out[path_group] = state
            found[path_group] = (base, tuple(increments))
    unweighted = {name for name, state in out.items() if state.weight < 0.0}
    engine.assign_weights(out, weight_scale)
    if folds is not None:
        for path_group, (base, gained) in found.items():
            started = path_group in unweighted and out[path_group].weight >= 0.0
            if gained or started:
                folds[path_group] = Fold(
                    path_group,
                    base,
                    close_through,
                    out[path_group].weight if started else -1.0,
                    gained,
                )
    return out


def window_checks(
    groups: dict[str, _PathGroup],
    states: dict[str, GroupState],
    config: VerdictConfig,
    *,
    window_seconds: int,
    now: float,
) -> dict[str, WindowCheck]:
    """Missing windows and sample-ratio mismatches, from the complete live windows."""
    with_canary = {name for name, g in groups.items() if any(c.requests for c in g.canary.values())}
    # Per window, each group's canary share: a group is compared with the median of the
    # others (one broken group must not shift what the others are held to).
    shares: dict[int, dict[str, float]] = defaultdict(dict)
    for name in with_canary:
        g = groups[name]
        for start in set(g.canary) | set(g.stable):
            if start + window_seconds > now:
                continue
            c = g.canary.get(start, WindowCounts()).requests
            n = c + g.stable.get(start, WindowCounts()).requests
            if n > 0:
                shares[start][name] = c / n
    out: dict[str, WindowCheck] = {}
    for name, state in states.items():
        found = groups.get(name)
        if found is None or state.first_window < 0:
            continue
        g = found
        # A hole: a complete window without one arm between windows with both. An
        # empty trailing window is traffic stopping (or still in flight), not a hole.
        missing = None
        complete = sorted(
            start for start in set(g.canary) | set(g.stable) if start + window_seconds <= now
        )
        both = [
            start
            for start in complete
            if g.canary.get(start, WindowCounts()).requests
            and g.stable.get(start, WindowCounts()).requests
        ]
        if both:
            for start in range(max(state.first_window, both[0]), both[-1], window_seconds):
                if not g.canary.get(start, WindowCounts()).requests:
                    missing = CANARY
                elif not g.stable.get(start, WindowCounts()).requests:
                    missing = STABLE
        srm_z = srm_share = None
        if name in with_canary:
            x = n = 0
            expected = variance = 0.0
            for start in set(g.canary) | set(g.stable):
                if start + window_seconds > now:
                    continue
                c = g.canary.get(start, WindowCounts()).requests
                total = c + g.stable.get(start, WindowCounts()).requests
                others = [v for k, v in shares[start].items() if k != name]
                if not others or total <= 0:
                    continue
                share = statistics.median(others)
                x += c
                n += total
                expected += total * share
                variance += total * share * (1.0 - share)
            if n > 0 and variance > 0:
                z = (x - expected) / math.sqrt(variance)
                observed_share, expected_share = x / n, expected / n
                if abs(z) >= config.srm_z and abs(observed_share - expected_share) >= (
                    config.srm_relative * expected_share
                ):
                    srm_z, srm_share = z, (observed_share, expected_share)
        if missing is not None or srm_z is not None:
            out[name] = WindowCheck(missing, srm_z, srm_share)
    return out


def evaluate(
    stages: Iterable[Row],
    versions: Iterable[Row],
    config: VerdictConfig,
    *,
    window_seconds: int,
    expires_seconds: float,
    now: float,
    states: Mapping[str, GroupState] | None = None,
    weight_scale: float = 1.0,
    judged_states: dict[str, GroupState] | None = None,
    funnels: Mapping[str, FunnelFacts] | None = None,
    funnel_decisions: dict[str, FunnelDecision] | None = None,
    folds: dict[str, Fold] | None = None,
) -> list[Verdict]:
    """One verdict per path group with canary traffic in a live window, by path group.

    ``stages`` / ``versions`` are the rows of the per-stage and per-version
    tables (stale windows, past their expiry, are ignored); ``states`` the
    persisted rollout states by path group; ``weight_scale`` the share of all
    canary partitions this worker judges (see ``engine.weights``).
    ``judged_states``, when given, receives the states the verdicts were judged
    on (the persisted ones plus what the live windows gained since); ``folds`` the
    folds that turn the persisted states into those (see ``provisional_states``).
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

    current = provisional_states(
        dict(groups),
        dict(states or {}),
        window_seconds=window_seconds,
        expires_seconds=expires_seconds,
        now=now,
        psi0=config.psi0,
        weight_scale=weight_scale,
        folds=folds,
    )
    if judged_states is not None:
        judged_states.update(current)
    checks = window_checks(dict(groups), current, config, window_seconds=window_seconds, now=now)
    assessments = engine.assess(
        current,
        config,
        window_seconds=window_seconds,
        checks=checks,
        weight_scale=weight_scale,
        funnels=funnels,
        funnel_decisions=funnel_decisions,
        now=now,
    )

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
            # A quiet trailing window is not the one to show: the latest with enough data is.
            for earlier in sorted(candidates, reverse=True):
                if earlier < start and _enough(group, earlier, config):
                    note = (
                        f"latest window ({start}) has fewer than {config.min_samples} requests "
                        f"per arm; shown: the latest window with enough ({earlier})",
                    )
                    start = earlier
                    break
        canary = group.canary[start]
        stable = group.stable.get(start, WindowCounts())
        described = judge(canary, stable, config)
        assessment = assessments.get(path_group)
        if assessment is None:
            decision = Decision.HOLD
            reasons: tuple[str, ...] = (
                "warm-up: no complete window with both canary and stable requests yet",
            )
            analysis = None
        else:
            decision, reasons, analysis = (
                assessment.decision,
                assessment.reasons,
                assessment.analysis,
            )
        breakdown = sorted(
            group.versions.get(start, {}).items(), key=lambda item: (-item[1].requests, item[0])
        )
        verdicts.append(
            Verdict(
                path_group=path_group,
                window_start=start,
                window_seconds=window_seconds,
                complete=complete,
                decision=decision,
                reasons=reasons + note,
                canary=ArmSummary.of(canary),
                stable=ArmSummary.of(stable),
                z=described.test.z if described.test else None,
                p_value=described.test.p_value if described.test else None,
                alpha=config.alpha,
                min_samples=config.min_samples,
                p95_delta_ms=_window_p95_delta(canary, stable),
                latency_threshold_ms=config.latency_threshold_ms,
                evaluated_at=now,
                versions=tuple((name, ArmSummary.of(counts)) for name, counts in breakdown),
                analysis=analysis,
            )
        )
    return verdicts


def _window_p95_delta(canary: WindowCounts, stable: WindowCounts) -> float | None:
    canary_p95, stable_p95 = canary.percentile(0.95), stable.percentile(0.95)
    if canary_p95 is None or stable_p95 is None:
        return None
    return canary_p95 - stable_p95

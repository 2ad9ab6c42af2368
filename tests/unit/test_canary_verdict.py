"""The decision rules as pure functions: table-driven judgements, then whole evaluations."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from pipeline.canary.records import Decision, WindowCounts
from pipeline.canary.verdict import VerdictConfig, evaluate, judge

T0 = 1_764_000_000  # a multiple of 60


def arm(requests: int, errors: int, latency_ms: list[float] | None = (100.0,)) -> WindowCounts:  # type: ignore[assignment]
    """``requests`` requests, the first ``errors`` of them 503, durations cycling ``latency_ms``."""
    counts = WindowCounts()
    for i in range(requests):
        duration = None if not latency_ms else latency_ms[i % len(latency_ms)]
        counts.add(503 if i < errors else 200, duration)
    return counts


SPREAD = [80.0 + 2 * i for i in range(50)]  # 80..178 ms
SLOWER = [ms + 300 for ms in SPREAD]


@dataclass
class Case:
    name: str
    canary: WindowCounts
    stable: WindowCounts
    decision: Decision
    reasons: tuple[str, ...]  # substrings, one per expected reason, in order
    config: VerdictConfig = field(default_factory=VerdictConfig)


CASES = [
    Case(
        "too few canary requests",
        arm(50, 40),
        arm(500, 0),
        Decision.INSUFFICIENT_DATA,
        ("canary: 50 requests, fewer than the minimum of 100",),
    ),
    Case(
        "no stable traffic at all",
        arm(500, 0),
        WindowCounts(),
        Decision.INSUFFICIENT_DATA,
        ("stable: 0 requests",),
    ),
    Case(
        "both arms short",
        arm(10, 0),
        arm(20, 0),
        Decision.INSUFFICIENT_DATA,
        ("canary: 10 requests", "stable: 20 requests"),
    ),
    Case(
        "5xx rate significantly higher",
        arm(200, 30, SPREAD),
        arm(400, 4, SPREAD),
        Decision.ROLLBACK,
        ("5xx rate: canary 15.00% vs stable 1.00%, significantly higher",),
    ),
    Case(
        "p95 latency over the threshold",
        arm(400, 2, SLOWER),
        arm(400, 2, SPREAD),
        Decision.ROLLBACK,
        ("exceeds the 200 ms threshold",),
    ),
    Case(
        "both regressions",
        arm(400, 60, SLOWER),
        arm(400, 2, SPREAD),
        Decision.ROLLBACK,
        ("significantly higher", "exceeds the 200 ms threshold"),
    ),
    Case(
        "slightly more errors, not significant",
        arm(1000, 12, SPREAD),
        arm(1000, 10, SPREAD),
        Decision.HOLD,
        ("higher but not significantly",),
    ),
    Case(
        "no durations logged",
        arm(500, 0, None),
        arm(500, 1, None),
        Decision.HOLD,
        (
            "p95 latency not compared: canary has 0 timed requests",
            "p95 latency not compared: stable has 0 timed requests",
        ),
    ),
    Case(
        "healthy canary",
        arm(500, 1, [ms + 50 for ms in SPREAD]),
        arm(500, 3, SPREAD),
        Decision.PROMOTE,
        ("not higher", "within the 200 ms threshold"),
    ),
    Case(
        "equal error rates are not worse",
        arm(300, 3, SPREAD),
        arm(300, 3, SPREAD),
        Decision.PROMOTE,
        ("5xx rate: canary 1.00% vs stable 1.00%, not higher", "+0.0 ms"),
    ),
    Case(
        "a delta of exactly the threshold passes",
        arm(300, 0, [300.0]),
        arm(300, 0, [100.0]),
        Decision.PROMOTE,
        ("not higher", "p95 latency: canary 300.0 ms vs stable 100.0 ms, +200.0 ms within"),
    ),
    Case(
        "p = 0.032 rolls back at alpha 0.05",
        arm(300, 45, SPREAD),
        arm(300, 30, SPREAD),
        Decision.ROLLBACK,
        ("z=1.85, p=0.032 < alpha=0.05",),
    ),
    Case(
        "... and holds at alpha 0.01",
        arm(300, 45, SPREAD),
        arm(300, 30, SPREAD),
        Decision.HOLD,
        ("z=1.85, p=0.032 >= alpha=0.01",),
        VerdictConfig(alpha=0.01),
    ),
    Case(
        "a lower threshold catches a smaller slowdown",
        arm(300, 0, [ms + 50 for ms in SPREAD]),
        arm(300, 0, SPREAD),
        Decision.ROLLBACK,
        ("exceeds the 20 ms threshold",),
        VerdictConfig(latency_threshold_ms=20),
    ),
    Case(
        "a smaller minimum sample size allows a verdict",
        arm(50, 0, SPREAD),
        arm(50, 0, SPREAD),
        Decision.PROMOTE,
        ("not higher", "within"),
        VerdictConfig(min_samples=20),
    ),
    Case(
        "latency on too few timed requests is not compared",
        arm(300, 0, None),
        arm(300, 0, SPREAD),
        Decision.HOLD,
        ("canary has 0 timed requests, fewer than 100",),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_judge(case: Case) -> None:
    result = judge(case.canary, case.stable, case.config)
    assert result.decision is case.decision, result.reasons
    assert len(result.reasons) == len(case.reasons), result.reasons
    for reason, expected in zip(result.reasons, case.reasons, strict=True):
        assert expected in reason
    if case.canary.requests and case.stable.requests:
        assert result.test is not None
    else:
        assert result.test is None


def test_judge_reports_the_statistics() -> None:
    result = judge(arm(300, 45, SPREAD), arm(300, 30, SPREAD), VerdictConfig())
    assert result.test is not None
    assert result.test.z == pytest.approx(1.85164, abs=1e-5)
    assert result.test.p_value == pytest.approx(0.03204, abs=1e-5)
    assert result.p95_delta_ms == pytest.approx(0.0)


@pytest.mark.parametrize(
    "kwargs", [{"alpha": 0.0}, {"alpha": 1.0}, {"min_samples": 0}, {"latency_threshold_ms": -1}]
)
def test_config_is_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        VerdictConfig(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# evaluate: rows of the tables + rollout states -> one verdict per path group
# --------------------------------------------------------------------------

CONFIG = VerdictConfig(min_samples=10)


def test_evaluate_shows_the_latest_complete_window_and_judges_the_rollout() -> None:
    now = T0 + 130.0  # T0 and T0+60 complete, T0+120 filling
    stages = [
        ("/api/orders", "canary", T0, arm(100, 50)),
        ("/api/orders", "stable", T0, arm(100, 0)),
        ("/api/orders", "canary", T0 + 60, arm(100, 0)),
        ("/api/orders", "stable", T0 + 60, arm(100, 0)),
        ("/api/orders", "canary", T0 + 120, arm(5, 5)),
        ("/api/orders", "stable", T0 + 120, arm(5, 0)),
        ("/blog/posts", "canary", T0 + 120, arm(40, 20)),
        ("/blog/posts", "stable", T0 + 120, arm(40, 0)),
        ("/static/css", "stable", T0 + 60, arm(100, 0)),  # no canary here: no verdict
    ]
    versions = [
        ("/api/orders", "v1", T0 + 60, arm(100, 0)),
        ("/api/orders", "v2", T0 + 60, arm(60, 0)),
        ("/api/orders", "v3", T0 + 60, arm(40, 0)),
        ("/api/orders", "v2", T0, arm(200, 50)),
        ("/nowhere", "v9", T0 + 60, arm(1, 0)),  # a path group without stage rows
    ]
    verdicts = evaluate(stages, versions, CONFIG, window_seconds=60, expires_seconds=600, now=now)
    assert [v.path_group for v in verdicts] == ["/api/orders", "/blog/posts"]
    orders, blog = verdicts
    assert (orders.window_start, orders.complete) == (T0 + 60, True)
    # The window shown is clean, but the rollout's first window was not: rollback.
    assert orders.decision is Decision.ROLLBACK
    # The evidence has everything in the tables, the filling window's requests too.
    assert orders.analysis is not None and orders.analysis.windows == 3
    assert orders.analysis.canary_errors_5xx == 55 and orders.analysis.canary_requests == 205
    assert orders.analysis.rule.startswith("rollback")
    assert (orders.canary.requests, orders.stable.requests) == (100, 100)
    assert [name for name, _ in orders.versions] == ["v1", "v2", "v3"]
    assert [s.requests for _, s in orders.versions] == [100, 60, 40]
    assert orders.window_end == T0 + 120 and orders.evaluated_at == now
    assert (orders.alpha, orders.min_samples, orders.latency_threshold_ms) == (0.05, 10, 200.0)
    # Before any of its windows ended, a path group is shown its current one, and judged
    # on it: half its canary requests failed, none of stable's.
    assert (blog.window_start, blog.complete) == (T0 + 120, False)
    assert blog.decision is Decision.ROLLBACK and blog.analysis is not None
    # Alone in its first window with a clean canary, it holds for warm-up instead.
    fine = [
        ("/blog/posts", "canary", T0 + 120, arm(40, 0)),
        ("/blog/posts", "stable", T0 + 120, arm(40, 0)),
    ]
    (held,) = evaluate(fine, [], CONFIG, window_seconds=60, expires_seconds=600, now=now)
    assert held.decision is Decision.HOLD and "warm-up: 0 of 1 windows complete" in held.reasons[0]


def test_evaluate_ignores_expired_windows_and_merges_duplicate_rows() -> None:
    now = T0 + 30.0
    stages = [
        ("/api", "canary", T0 - 3600, arm(100, 100)),  # long expired
        ("/api", "stable", T0 - 3600, arm(100, 0)),
        ("/api", "canary", T0, arm(10, 0)),
        ("/api", "canary", T0, arm(10, 0)),  # e.g. a standby copy: merged, not replaced
        ("/api", "stable", T0, arm(20, 0)),
        ("/api", "other-stage", T0, arm(999, 999)),  # unknown stages are ignored
    ]
    (verdict,) = evaluate(stages, [], CONFIG, window_seconds=60, expires_seconds=600, now=now)
    assert verdict.window_start == T0
    assert verdict.canary.requests == 20 and verdict.stable.requests == 20
    assert verdict.decision is Decision.HOLD  # the expired regression is not in the rollout
    assert evaluate(stages[:2], [], CONFIG, window_seconds=60, expires_seconds=600, now=now) == []


def test_evaluate_of_nothing_is_nothing() -> None:
    assert evaluate([], [], CONFIG, window_seconds=60, expires_seconds=600, now=T0) == []


def test_a_quiet_trailing_window_does_not_erase_a_busy_windows_verdict() -> None:
    now = T0 + 130.0  # T0 and T0+60 complete
    stages = [
        ("/api/orders", "canary", T0, arm(100, 50)),  # the regression, plenty of data
        ("/api/orders", "stable", T0, arm(100, 0)),
        ("/api/orders", "canary", T0 + 60, arm(3, 1)),  # traffic stopped: too little
        ("/api/orders", "stable", T0 + 60, arm(4, 0)),
    ]
    (verdict,) = evaluate(stages, [], CONFIG, window_seconds=60, expires_seconds=600, now=now)
    assert (verdict.window_start, verdict.complete) == (T0, True)
    assert verdict.decision is Decision.ROLLBACK
    assert any("latest window" in reason for reason in verdict.reasons)


def test_below_the_minimum_exposure_the_verdict_is_insufficient() -> None:
    now = T0 + 130.0
    stages = [
        ("/api/orders", "canary", T0, arm(3, 1)),
        ("/api/orders", "stable", T0, arm(4, 0)),
        ("/api/orders", "canary", T0 + 60, arm(2, 0)),
        ("/api/orders", "stable", T0 + 60, arm(2, 0)),
    ]
    (verdict,) = evaluate(stages, [], CONFIG, window_seconds=60, expires_seconds=600, now=now)
    assert verdict.window_start == T0 + 60
    assert verdict.decision is Decision.INSUFFICIENT_DATA
    assert "fewer than the minimum of 10" in verdict.reasons[0]

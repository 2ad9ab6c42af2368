"""The rollout engine: folding windows, the decision rules and their explanations."""

from __future__ import annotations

import random

import pytest

from pipeline.canary import engine
from pipeline.canary.engine import GroupState, VerdictConfig, WindowCheck, assess, fold, weights
from pipeline.canary.records import Decision, WindowCounts
from pipeline.canary.verdict import evaluate

T0 = 1_764_000_000
W = 60


def arm(requests: int, errors: int, latency_ms: float = 100.0, spread: int = 40) -> WindowCounts:
    counts = WindowCounts()
    for i in range(requests):
        counts.add(503 if i < errors else 200, latency_ms + i % spread)
    return counts


def rollout(
    windows: int,
    canary: tuple[int, float, float] = (1000, 0.01, 100.0),
    stable: tuple[int, float, float] = (9000, 0.01, 100.0),
    *,
    seed: int = 1,
    name: str = "/api",
) -> GroupState:
    """A state after ``windows`` windows: (requests, 5xx rate, latency) per arm."""
    rng = random.Random(seed)
    state = GroupState(name)
    for w in range(windows):
        arms = []
        for n, rate, latency in (canary, stable):
            errors = sum(rng.random() < rate for _ in range(n))
            counts = WindowCounts()
            counts.add_requests(
                [503] * errors + [200] * (n - errors),
                [latency * (0.5 + rng.expovariate(2.0)) for _ in range(n)],
            )
            arms.append(counts)
        fold(state, T0 + w * W, W, arms[0], arms[1])
    return state


def test_fold_accumulates_in_order_and_ignores_old_windows() -> None:
    state = GroupState("/api")
    fold(state, T0, W, arm(100, 0), WindowCounts())  # no stable: the rollout has not begun
    assert state.first_window == -1 and state.windows == 0
    fold(state, T0 + W, W, arm(100, 5), arm(200, 2))
    fold(state, T0 + 2 * W, W, arm(100, 5), arm(200, 2))
    fold(state, T0 + W, W, arm(999, 999), arm(999, 0))  # already folded: ignored
    assert (state.first_window, state.last_window, state.windows) == (T0 + W, T0 + 2 * W, 2)
    assert (state.canary.requests, state.canary.errors_5xx) == (200, 10)
    assert state.first_stable == 200 and len(state.history) == 2


def test_state_json_round_trip() -> None:
    state = rollout(3)
    state.rolled_back, state.rollback_reasons = True, ("because",)
    back = GroupState.from_json(state.to_json())
    assert back == state
    with pytest.raises(ValueError):
        GroupState.from_json({"v": 1, "path_group": "/x"})
    with pytest.raises(ValueError):
        GroupState.from_json({**state.to_json(), "error_loglik": [0.0]})


def test_identical_arms_promote_after_enough_exposure() -> None:
    state = rollout(30)
    (result,) = assess({"/api": state}, VerdictConfig(), window_seconds=W).values()
    assert result.decision is Decision.PROMOTE, result.reasons
    assert result.analysis.rule.startswith("promote")
    assert result.analysis.rate_ratio_lower is not None and result.analysis.rate_ratio_lower < 1.0
    assert result.analysis.p95_delta_upper_ms is not None
    assert result.analysis.p95_delta_upper_ms <= 200.0
    assert any("5xx increase at most" in r for r in result.reasons)


def test_a_doubled_error_rate_rolls_back_and_explains_itself() -> None:
    state = rollout(20, canary=(1000, 0.02, 100.0))
    (result,) = assess({"/api": state}, VerdictConfig(), window_seconds=W).values()
    assert result.decision is Decision.ROLLBACK
    a = result.analysis
    assert a.rollout_e_value >= a.threshold == 20.0
    assert a.rate_ratio_lower is not None and a.rate_ratio_upper is not None
    assert a.rate_ratio_lower <= 2.0 <= a.rate_ratio_upper
    assert any("significantly higher" in r for r in result.reasons)
    assert any("rollout evidence" in r and "1/alpha = 20" in r for r in result.reasons)


def test_latency_needs_evidence_and_an_increase_over_the_threshold() -> None:
    slower = rollout(20, canary=(1000, 0.01, 150.0))  # clearly slower, p95 up ~75 ms
    (result,) = assess({"/api": slower}, VerdictConfig(), window_seconds=W).values()
    assert result.analysis.latency_e_value > 1e6  # overwhelming evidence of slowness ...
    assert not result.analysis.latency_counted  # ... below the 200 ms that matter
    assert result.decision is not Decision.ROLLBACK
    (strict,) = assess(
        {"/api": slower}, VerdictConfig(latency_threshold_ms=50.0), window_seconds=W
    ).values()
    assert strict.decision is Decision.ROLLBACK and strict.analysis.latency_counted
    assert any("exceeds the 50 ms threshold" in r for r in strict.reasons)


def test_rollback_is_sticky() -> None:
    state = rollout(30)
    state.rolled_back, state.rollback_reasons = True, ("5xx earlier",)
    (result,) = assess({"/api": state}, VerdictConfig(), window_seconds=W).values()
    assert result.decision is Decision.ROLLBACK and "5xx earlier" in result.reasons


def test_only_the_regressed_group_is_named() -> None:
    states = {
        "/bad": rollout(20, canary=(1000, 0.03, 100.0), name="/bad", seed=2),
        "/good": rollout(20, name="/good", seed=3),
        "/also-good": rollout(20, name="/also-good", seed=4),
    }
    results = assess(states, VerdictConfig(), window_seconds=W)
    assert results["/bad"].decision is Decision.ROLLBACK
    assert results["/good"].decision is not Decision.ROLLBACK
    assert any("rolled back because of /bad" in r for r in results["/good"].reasons)


def test_weights_follow_the_first_windows_traffic_with_a_reserve() -> None:
    a = rollout(2, stable=(3000, 0.01, 100.0), name="/a")
    b = rollout(2, stable=(1000, 0.01, 100.0), name="/b")
    late = GroupState("/late", first_window=T0 + W, first_stable=10)
    got = weights({"/a": a, "/b": b, "/late": late})
    assert got["/a"] == pytest.approx(0.9 * 0.75, rel=0.05)
    assert got["/b"] == pytest.approx(0.9 * 0.25, rel=0.15)
    assert got["/late"] == pytest.approx(0.05)
    assert sum(got.values()) <= 1.0
    assert sum(weights({"/a": a}, scale=0.5).values()) == pytest.approx(0.45)


def test_data_quality_holds() -> None:
    state = rollout(30)
    config = VerdictConfig()
    for check, rule in (
        (WindowCheck(missing_arm="stable"), "hold: missing window"),
        (WindowCheck(srm_z=8.0, srm_share=(0.3, 0.1)), "hold: sample-ratio mismatch"),
    ):
        (result,) = assess(
            {"/api": state}, config, window_seconds=W, checks={"/api": check}
        ).values()
        assert (result.decision, result.analysis.rule) == (Decision.HOLD, rule)
    (warm,) = assess({"/api": state}, VerdictConfig(warmup_windows=40), window_seconds=W).values()
    assert warm.analysis.rule == "hold: warm-up"


def test_insufficient_data_when_a_decision_is_beyond_the_horizon() -> None:
    state = rollout(3, canary=(30, 0.0, 100.0))  # 90 canary requests in three minutes
    config = VerdictConfig(min_samples=50, horizon_seconds=600)
    (result,) = assess({"/api": state}, config, window_seconds=W).values()
    assert result.decision is Decision.INSUFFICIENT_DATA
    assert result.analysis.more_canary_requests is not None
    assert result.analysis.more_canary_requests > 300  # at 0.5 requests/s: > 600 s


def test_evaluate_holds_a_group_whose_canary_share_is_off() -> None:
    now = T0 + 5 * W + 1
    stages = []
    for w in range(5):
        start = T0 + w * W
        for name, canary in (("/a", 100), ("/b", 100), ("/c", 100), ("/skewed", 600)):
            stages.append((name, "canary", start, arm(canary, 0)))
            stages.append((name, "stable", start, arm(900, 0)))
    verdicts = {
        v.path_group: v
        for v in evaluate(
            stages, [], VerdictConfig(), window_seconds=W, expires_seconds=600, now=now
        )
    }
    assert verdicts["/skewed"].analysis is not None
    assert verdicts["/skewed"].analysis.rule == "hold: sample-ratio mismatch"
    assert verdicts["/a"].analysis is not None
    assert verdicts["/a"].analysis.rule != "hold: sample-ratio mismatch"


def test_advance_folds_only_complete_new_windows() -> None:
    state = GroupState("/api")
    canary = {T0: arm(10, 0), T0 + W: arm(10, 0), T0 + 2 * W: arm(10, 0)}
    stable = {T0: arm(10, 0), T0 + W: arm(10, 0), T0 + 2 * W: arm(10, 0)}
    assert engine.advance(state, canary, stable, W, up_to=T0 + 2 * W + 5) == 2
    assert engine.advance(state, canary, stable, W, up_to=T0 + 3 * W) == 1
    assert engine.advance(state, canary, stable, W, up_to=T0 + 9 * W) == 0


def test_evaluate_holds_on_a_hole_but_not_on_an_empty_trailing_window() -> None:
    def rows(stable_gap: bool, trailing_empty: bool) -> list[tuple[str, str, int, WindowCounts]]:
        out = []
        for w in range(40):
            start = T0 + w * W
            out.append(("/api", "canary", start, arm(200, 2)))
            if not (stable_gap and w == 37):
                out.append(("/api", "stable", start, arm(1800, 18)))
        if trailing_empty:
            out.append(("/api", "canary", T0 + 40 * W, arm(1, 0)))
        return out

    now = T0 + 41 * W + 1
    config = VerdictConfig()
    (hole,) = evaluate(
        rows(True, False), [], config, window_seconds=W, expires_seconds=3600, now=now
    )
    assert hole.analysis is not None and hole.analysis.rule == "hold: missing window"
    assert "no stable requests" in hole.reasons[0]
    (tail,) = evaluate(
        rows(False, True), [], config, window_seconds=W, expires_seconds=3600, now=now
    )
    assert tail.analysis is not None and tail.analysis.rule != "hold: missing window"

"""The rollout engine: folding windows, the decision rules and their explanations."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.canary import engine, evidence
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


def test_fold_adds_each_increment_as_a_stratum() -> None:
    state = GroupState("/api")
    fold(state, T0, W, arm(100, 0), WindowCounts())  # no stable: the rollout has not begun
    assert state.first_window == -1 and state.windows == 0
    fold(state, T0 + W, W, arm(100, 5), arm(200, 2))
    fold(state, T0 + 2 * W, W, arm(100, 5), arm(200, 2))
    # A later increment of an earlier window is one more stratum (which requests are
    # new is ``increments``' business): counted, without making the window count again.
    fold(state, T0 + W, W, arm(50, 1), arm(100, 1))
    assert (state.first_window, state.last_window, state.windows) == (T0 + W, T0 + 2 * W, 2)
    assert (state.canary.requests, state.canary.errors_5xx) == (250, 11)
    assert state.first_stable == 200
    fold(state, T0 + 2 * W, W, arm(10, 0), arm(20, 0))
    # One report point per window: the latest increment's replaces the window's last.
    assert [point[0] for point in state.history] == [T0 + W, T0 + 2 * W, T0 + W, T0 + 2 * W]


def test_advance_folds_what_the_windows_gained_once() -> None:
    state = GroupState("/api")
    canary, stable = {T0: arm(10, 0)}, {T0: arm(90, 1)}
    assert [start for start, _, _ in engine.advance(state, canary, stable, W, -1)] == [T0]
    assert state.folds == 1 and state.canary.requests == 10
    assert engine.advance(state, canary, stable, W, -1) == []  # nothing new: no fold
    assert state.folds == 1
    canary[T0].merge(arm(5, 1))  # the window goes on; the next one begins
    canary[T0 + W], stable[T0 + W] = arm(7, 0), arm(70, 0)
    gained = engine.advance(state, canary, stable, W, -1)
    # T0's canary gained alone: it waits for stable (alone it says nothing about the arms).
    assert [(start, c.requests, s.requests) for start, c, s in gained] == [(T0 + W, 7, 70)]
    stable[T0].merge(arm(30, 0))
    gained = engine.advance(state, canary, stable, W, -1)
    assert [(start, c.requests, s.requests) for start, c, s in gained] == [(T0, 5, 30)]
    assert (state.canary.requests, state.canary.errors_5xx, state.stable.requests) == (22, 1, 190)
    assert (state.folds, state.windows, state.last_window) == (3, 2, T0 + W)
    shrunk = {T0: arm(3, 0), T0 + W: canary[T0 + W]}  # a table rebuilt short: wait, never refold
    assert engine.advance(state, shrunk, stable, W, -1) == []
    # Windows at or before close_through are done: forgotten, never folded again.
    assert engine.advance(state, canary, stable, W, close_through=T0) == []
    assert sorted(state.folded) == [T0 + W] and state.closed_through == T0
    canary[T0].merge(arm(100, 100))
    assert engine.advance(state, canary, stable, W, close_through=T0) == []


def test_a_fold_record_persists_exactly_what_was_judged() -> None:
    stored = rollout(3)
    judged = stored.copy()
    canary = {T0 + 3 * W: arm(300, 9)}
    stable = {T0 + 3 * W: arm(2700, 27)}
    gained = engine.advance(judged, canary, stable, W, close_through=T0 + W)
    record = engine.Fold("/api", stored.folds, T0 + W, -1.0, tuple(gained))
    back = engine.Fold.from_json(record.to_json())
    assert back.apply(stored, W, 1.1)
    assert stored == judged
    assert not back.apply(stored, W, 1.1)  # made on another state: ignored
    assert stored == judged
    with pytest.raises(ValueError):
        engine.Fold.from_json({"path_group": "/api"})


def test_a_version_1_state_goes_on_after_its_last_whole_window() -> None:
    state = rollout(3)
    old = state.to_json()
    for key in ("folds", "folded", "closed_through", "weight"):
        del old[key]
    old["v"] = 1
    back = GroupState.from_json(old)
    assert back.closed_through == T0 + 2 * W and back.folds == 0 and back.weight < 0
    windows = {T0 + w * W: arm(100, 1) for w in range(4)}
    gained = engine.advance(back, windows, windows, W, -1)
    assert [start for start, _, _ in gained] == [T0 + 3 * W]  # whole windows stay folded


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


def test_a_groups_weight_never_changes_once_given() -> None:
    # A weighted average of e-processes stays one only with weights fixed before the
    # evidence moves: a group starting later takes from what is left, never from others.
    a = rollout(2, stable=(3000, 0.01, 100.0), name="/a")
    states = {"/a": a}
    engine.assign_weights(states)
    assert a.weight == pytest.approx(0.9)
    b = rollout(2, stable=(1000, 0.01, 100.0), name="/b")  # same first window, started later
    c = rollout(1, name="/c")
    states.update({"/b": b, "/c": c})
    engine.assign_weights(states)
    assert a.weight == pytest.approx(0.9)
    assert (b.weight, c.weight) == (pytest.approx(0.05), pytest.approx(0.025))
    assert weights(states) == {"/a": a.weight, "/b": b.weight, "/c": c.weight}


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


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 30), st.integers(0, 30), st.integers(0, 5)),
        min_size=1,
        max_size=25,
    )
)
def test_increments_fold_every_request_once(steps: list[tuple[int, int, int, int]]) -> None:
    # Tables grow in any order (windows, arms, errors); after every evaluation the
    # state's cumulative counts plus what is still pending are exactly the tables.
    state = GroupState("/api")
    canary: dict[int, WindowCounts] = {}
    stable: dict[int, WindowCounts] = {}
    for window, n_canary, n_stable, errors in steps:
        start = T0 + window * W
        canary.setdefault(start, WindowCounts()).merge(arm(n_canary, min(errors, n_canary)))
        stable.setdefault(start, WindowCounts()).merge(arm(n_stable, 0))
        engine.advance(state, canary, stable, W, -1)
        folded_canary = sum(arms[0].requests for arms in state.folded.values())
        folded_stable = sum(arms[1].requests for arms in state.folded.values())
        if state.first_window >= 0:
            assert state.canary.requests == folded_canary
            assert state.stable.requests == folded_stable
        for start, arms in state.folded.items():
            assert arms[0].minus(arms[0]) is not None
            assert canary[start].minus(arms[0]) is not None  # never more than the table
            assert stable[start].minus(arms[1]) is not None
        assert engine.increments(state, canary, stable) == []  # nothing left to fold


def test_a_low_base_regression_is_not_promoted_on_the_absolute_margin() -> None:
    # 5xx 1.5x stable's on a 0.1 % base: an increase of 0.05 points, well inside the
    # absolute margin, but the rate ratio is what the rollback tests (and will roll back).
    state = rollout(30, canary=(1000, 0.0015, 100.0), stable=(9000, 0.001, 100.0), seed=5)
    (result,) = assess({"/api": state}, VerdictConfig(), window_seconds=W).values()
    a = result.analysis
    assert a.error_increase_upper is not None and a.error_increase_upper <= 0.005
    assert a.rollout_rate_ratio_upper is not None and a.rollout_rate_ratio_upper > 1.5
    # at a ratio near the promote ratio, a promote is far off: beyond the horizon here
    assert result.decision is Decision.INSUFFICIENT_DATA, result.reasons
    assert a.more_canary_requests is not None and a.more_canary_requests > 10**6
    patient = VerdictConfig(horizon_seconds=10**6)
    (held,) = assess({"/api": state}, patient, window_seconds=W).values()
    assert held.decision is Decision.HOLD
    doubt = "rollout's 5xx rate ratio (1 path group pooled) could be up to"
    assert any(doubt in r for r in held.reasons)


def test_promote_pools_the_groups_that_are_not_rolled_back() -> None:
    good = {f"/g{i}": rollout(30, name=f"/g{i}", seed=10 + i) for i in range(3)}
    results = assess(good, VerdictConfig(), window_seconds=W)
    assert all(r.decision is Decision.PROMOTE for r in results.values())
    assert any("(3 path groups pooled) at most" in r for r in results["/g0"].reasons)
    # one group far worse: rolled back, and it does not hold the others
    states = {**good, "/bad": rollout(20, canary=(1000, 0.05, 100.0), name="/bad", seed=2)}
    results = assess(states, VerdictConfig(), window_seconds=W)
    assert results["/bad"].decision is Decision.ROLLBACK
    assert results["/g0"].decision is Decision.PROMOTE, results["/g0"].reasons


def test_without_errors_the_canary_rate_floor_promotes() -> None:
    state = rollout(30, canary=(2000, 0.0, 100.0), stable=(2000, 0.0, 100.0))
    (result,) = assess({"/api": state}, VerdictConfig(), window_seconds=W).values()
    assert result.decision is Decision.PROMOTE, result.reasons
    assert result.analysis.rollout_rate_ratio_upper == float("inf")  # no 5xx: no ratio
    assert any("too few errors for a ratio" in r for r in result.reasons)
    short = rollout(5, canary=(2000, 0.0, 100.0), stable=(2000, 0.0, 100.0))
    (held,) = assess({"/api": short}, VerdictConfig(), window_seconds=W).values()
    assert held.decision is Decision.HOLD
    assert any("could be up to inf" in r and "floor 0.010%" in r for r in held.reasons)


def test_promote_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="promote_ratio"):
        VerdictConfig(promote_ratio=1.0)
    with pytest.raises(ValueError, match="promote_error_floor"):
        VerdictConfig(promote_error_floor=0.01)  # above the margin
    VerdictConfig(promote_error_floor=0.0)
    with pytest.raises(ValueError, match="promote_error_evidence"):
        VerdictConfig(promote_error_evidence=0.5)  # a group without 5xx (e = 1) could not pass


def test_leans_to_regression_is_the_groups_own_evidence_above_the_setting() -> None:
    config = VerdictConfig()
    assert config.promote_error_evidence == 1.0
    assert not engine.leans_to_regression(1.0, config)  # no 5xx yet: e stays at 1
    assert not engine.leans_to_regression(0.2, config)  # a healthy group's drifts down
    assert engine.leans_to_regression(1.5, config)
    assert not engine.leans_to_regression(1.5, VerdictConfig(promote_error_evidence=2.0))
    # an e-process with no stratum carrying a 5xx is exactly 1
    state = rollout(10, canary=(500, 0.0, 100.0), stable=(500, 0.0, 100.0))
    log_e = evidence.log_e_value(state.error_loglik, evidence.grid_index(1.1))
    assert not engine.leans_to_regression(math.exp(log_e), config)


def test_a_regression_of_one_group_under_the_margin_is_held_by_its_own_evidence() -> None:
    # x3 on a 0.1 % base (an increase of 0.2 points, under the 0.5-point margin) in one
    # group beside three healthy 1 % groups: the pooled ratio is bounded below 1.5, the
    # rollout's evidence is short of 1/alpha, but the group's own 5xx evidence leans
    # towards a regression -- promote waits.
    good = {f"/g{i}": rollout(30, name=f"/g{i}", seed=10 + i) for i in range(3)}
    low = rollout(10, canary=(1000, 0.003, 100.0), stable=(9000, 0.001, 100.0), seed=3, name="/low")
    states = {**good, "/low": low}
    results = assess(states, VerdictConfig(), window_seconds=W)
    a = results["/low"].analysis
    assert a.error_increase_upper is not None and a.error_increase_upper <= 0.005
    assert a.rollout_rate_ratio_upper is not None and a.rollout_rate_ratio_upper <= 1.5
    assert a.rollout_e_value < 20.0 and a.error_e_value > 1.0
    assert results["/low"].decision is Decision.HOLD
    assert any("leans towards a regression" in r for r in results["/low"].reasons)
    assert all(results[n].decision is Decision.PROMOTE for n in good)
    assert any("no lean towards a regression" in r for r in results["/g0"].reasons)
    # before: the bounds alone promoted it
    lax = assess(states, VerdictConfig(promote_error_evidence=1e12), window_seconds=W)
    assert lax["/low"].decision is Decision.PROMOTE


@settings(max_examples=40, deadline=None)
@given(
    canary_rate=st.sampled_from([0.0, 0.001, 0.01, 0.03]),
    stable_rate=st.sampled_from([0.0, 0.001, 0.01]),
    windows=st.integers(2, 12),
    seed=st.integers(0, 1000),
)
def test_promote_only_inside_every_bound(
    canary_rate: float, stable_rate: float, windows: int, seed: int
) -> None:
    config = VerdictConfig()
    state = rollout(
        windows, canary=(400, canary_rate, 100.0), stable=(800, stable_rate, 100.0), seed=seed
    )
    (result,) = assess({"/api": state}, config, window_seconds=W).values()
    if result.decision is Decision.PROMOTE:
        a = result.analysis
        assert a.error_increase_upper is not None
        assert a.error_increase_upper <= config.promote_error_margin
        ratio_ok = (
            a.rollout_rate_ratio_upper is not None
            and a.rollout_rate_ratio_upper <= config.promote_ratio
        )
        floor_ok = (
            a.rollout_canary_error_rate_upper is not None
            and a.rollout_canary_error_rate_upper <= config.promote_error_floor
        )
        assert ratio_ok or floor_ok
        # and the group's own 5xx evidence does not lean towards a regression
        assert a.error_e_value <= config.promote_error_evidence * (1 + 1e-12)

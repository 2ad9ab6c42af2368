"""The simulator: its vectorised engine equals the live engine's pieces; the JSON contract."""

from __future__ import annotations

import argparse
import io
import math

import numpy as np
import orjson
import pytest

from pipeline.canary import engine, evidence, simulate
from pipeline.canary.config import CanaryConfig
from pipeline.canary.engine import GroupState
from pipeline.commands.canary import run_canary_simulate
from pipeline.config import Settings

KEYS = {
    "aa_rollouts",
    "aa_false_rollbacks",
    "aa_false_rollback_upper95",
    "ab_detected_fraction",
    "ab_median_delay_ratio",
}


def test_vectorised_window_likelihood_equals_the_engines() -> None:
    rng = np.random.default_rng(2)
    n1 = rng.integers(0, 500, (4, 6))
    n0 = rng.integers(0, 5000, (4, 6))
    x = rng.binomial(n1, 0.05)
    y = rng.binomial(n0, 0.04)
    for null in (evidence.grid_index(1.1), evidence.CENTRE):
        columns = simulate._columns(null)
        loglik = np.zeros((4, 6, columns.size))
        simulate._accumulate(loglik, x, x + y, n1, n0, columns)
        log_e = simulate._log_e(loglik)
        for i in range(4):
            for j in range(6):
                total = evidence.zero_loglik()
                evidence.accumulate(
                    total,
                    evidence.window_loglik(
                        int(x[i, j]), int(x[i, j] + y[i, j]), int(n1[i, j]), int(n0[i, j])
                    ),
                )
                assert log_e[i, j] == pytest.approx(evidence.log_e_value(total, null), abs=1e-9)


def test_vectorised_weights_equal_the_engines() -> None:
    first_window = np.array([[0, 0, 3, -1, 2]])
    first_stable = np.array([[300.0, 100.0, 50.0, -1.0, 20.0]])
    got = simulate._weights(first_window, first_stable)[0]
    states = {
        f"g{i}": GroupState(f"g{i}", first_window=int(w), first_stable=int(s))
        for i, (w, s) in enumerate(zip(first_window[0], first_stable[0], strict=True))
    }
    expected = engine.weights(states)
    for i in range(5):
        assert got[i] == pytest.approx(expected.get(f"g{i}", 0.0))


def test_normal_tail_and_quantile_helpers() -> None:
    z = np.array([-3.0, -1.0, 0.0, 1.644854, 4.0])
    expected = [0.5 * math.erfc(v / math.sqrt(2)) for v in z]
    assert simulate._norm_sf(z) == pytest.approx(expected, abs=2e-7)
    assert simulate._norm_ppf(0.95) == pytest.approx(1.644853627, abs=1e-8)
    values = np.array([[1.0, np.nan, 3.0, 2.0], [np.nan, np.nan, np.nan, np.nan]])
    q = simulate._nan_quantile(values, 0.5)
    assert q[0, 0] == pytest.approx(2.0) and math.isnan(q[1, 0])


def test_kayenta_flags_a_clear_shift_and_passes_identical_series() -> None:
    rng = np.random.default_rng(4)
    control = rng.normal(100, 5, (1, 2, 30))
    canary = control + np.array([0.0, 40.0])[None, :, None] + rng.normal(0, 1, (1, 2, 30))
    high = simulate._kayenta_high(canary, control)
    assert high.tolist() == [[False, True]]


def test_simulate_reports_every_engine_with_the_design_keys() -> None:
    result = simulate.simulate(rollouts=8, seed=3, ab_rollouts=4)
    assert set(result) == set(simulate.ENGINES)
    for name in simulate.ENGINES:
        figures = result[name]
        assert set(figures) >= KEYS
        assert figures["aa_rollouts"] == 8
        assert 0 <= figures["aa_false_rollbacks"] <= 8
        assert figures["aa_false_rollback_upper95"] >= figures["aa_false_rollbacks"] / 8
    assert result["grayscope"]["ab_by_scenario"]["5xx odds x5"]["rollback_fraction"] == 1.0
    assert "| grayscope |" in simulate.format_table(result)


def test_the_command_prints_json() -> None:
    out = io.StringIO()
    args = argparse.Namespace(
        json=True, rollouts=4, ab_rollouts=2, seed=5, alpha=0.05, one_group=True
    )
    assert run_canary_simulate(args, Settings(), out) == 0
    data = orjson.loads(out.getvalue())
    assert set(data["grayscope"]) >= KEYS
    one_group = data["grayscope"]["one_group"]  # --one-group: the one-group scenarios
    assert one_group["rollouts_per_scenario"] == 2
    assert set(one_group["by_scenario"]) == {s.name for s in simulate.one_group_scenarios()}
    funnels = data["grayscope"]["funnels"]
    assert funnels["aa_rollouts"] == 4
    assert set(funnels["ab_by_scenario"]) == {
        "conversion -10%",
        "conversion -20%",
        "conversion -30%",
    }


def test_funnel_simulation_keeps_the_null_and_finds_drops() -> None:
    """Small but telling: A/A rollouts rarely cross at the full 1/alpha (Ville), a 30 % drop
    in the canary's go-on rates is found in nearly every rollout."""
    result = simulate.simulate_funnels(rollouts=60, seed=2, ab_rollouts=20)
    assert result["aa_false_rollbacks_full_alpha"] <= 9  # 5 % of 60 is 3; 9: p < 0.01
    assert result["aa_false_rollbacks"] <= result["aa_false_rollbacks_full_alpha"]
    assert result["ab_by_scenario"]["conversion -30%"]["detected_fraction"] >= 0.9
    table = simulate.format_funnel_table(result)
    assert "| A/A (funnel alone at 1/alpha) |" in table and "| conversion -30% |" in table
    assert "| A/A (at its share of the evidence) |" in table
    assert "| conversion drops pooled |" in table
    assert 0.0 <= result["ab_detected_within_3x_oracle"] <= 1.0


def test_vectorised_fisher_likelihood_equals_the_engines() -> None:
    from pipeline.canary import funnel

    cols = simulate._columns(evidence.CENTRE)
    lf = simulate._log_factorials(500)
    x, m, n1, n0 = (np.array(v) for v in ([3, 0, 40], [10, 5, 90], [12, 4, 100], [30, 50, 120]))
    out = simulate._fisher_columns(x, m, n1, n0, cols, lf)
    for row in range(3):
        exact = funnel.fisher_loglik(int(x[row]), int(m[row]), int(n1[row]), int(n0[row]))
        assert exact is not None
        indices = [evidence.CENTRE] + [evidence.CENTRE + o for o in evidence.OFFSETS]
        assert out[row] == pytest.approx([exact[i] for i in indices], abs=1e-9)
    # and on the funnel prior's columns, which the simulated funnels use
    drop_cols = simulate._funnel_columns()
    out = simulate._fisher_columns(x, m, n1, n0, drop_cols, lf)
    for row in range(3):
        exact = funnel.fisher_loglik(int(x[row]), int(m[row]), int(n1[row]), int(n0[row]))
        assert exact is not None
        indices = [evidence.CENTRE] + [evidence.CENTRE + o for o in funnel.DROP_OFFSETS]
        assert out[row] == pytest.approx([exact[i] for i in indices], abs=1e-9)


@pytest.mark.parametrize("min_drop", [0.0, 0.05])
@pytest.mark.parametrize("transitions", [1, 2, 3])
def test_vectorised_funnel_e_value_equals_the_engines(min_drop: float, transitions: int) -> None:
    """The simulator decides as the worker does: ``_funnel_log_e`` on random resolved strata
    (some arms empty, drops of either sign) equals ``funnel.funnel_log_e``."""
    from pipeline.canary import funnel

    rng = np.random.default_rng(transitions)
    rollouts, strata = 40, 3
    text = orjson.dumps(
        [
            {
                "name": "f",
                "steps": [{"path_group": f"/s{k}"} for k in range(transitions + 1)],
                "min_drop": min_drop,
            }
        ]
    ).decode()
    (spec,) = funnel.parse_funnels(text)
    cols = simulate._funnel_columns()
    lf = simulate._log_factorials(400)
    loglik = np.zeros((rollouts, transitions, cols.size))
    totals = np.zeros((rollouts, transitions, 4))
    states = [funnel.FunnelState("f", transitions + 1) for _ in range(rollouts)]
    seen: set[bool] = set()  # both a counted and a gated-off funnel were compared
    for k in range(strata):
        for t in range(transitions):
            n1 = rng.integers(0, 30, rollouts) * (rng.random(rollouts) > 0.1)
            n0 = rng.integers(0, 60, rollouts)
            k1 = rng.binomial(n1, rng.uniform(0.1, 0.9, rollouts))
            k0 = rng.binomial(n0, rng.uniform(0.1, 0.9, rollouts))
            x, m = n1 - k1, (n1 - k1) + (n0 - k0)
            loglik[:, t, :] += simulate._fisher_columns(x, m, n1, n0, cols, lf)
            totals[:, t, :] += np.stack([n1, k1, n0, k0], axis=1)
            for i, state in enumerate(states):
                state.pending[f"{t}:{k * 10}"] = [int(n1[i]), int(k1[i]), int(n0[i]), int(k0[i])]
        for state in states:
            state.watermark = 1e6
            funnel.resolve(spec, state, 10)
        vectorised = simulate._funnel_log_e(loglik, totals, min_drop)
        for i, state in enumerate(states):
            live = funnel.funnel_log_e(spec, state)
            seen.add(live == -math.inf)
            if live == -math.inf:
                assert vectorised[i] == -math.inf
            else:
                assert vectorised[i] == pytest.approx(live, abs=1e-9)
    assert seen == {True, False}


def test_vectorised_rate_bounds_equal_the_engines() -> None:
    successes = np.array([0.0, 0.0, 3.0, 40.0, 500.0, 7.0])
    n = np.array([0.0, 200.0, 1000.0, 900.0, 500.0, 7.0])
    lower, upper = simulate._rate_bounds(successes, n, 0.05)
    for i in range(successes.size):
        low, high = evidence.rate_bounds(float(successes[i]), float(n[i]), 0.05)
        assert lower[i] == pytest.approx(low, rel=1e-6, abs=1e-12)
        assert upper[i] == pytest.approx(high, rel=1e-6, abs=1e-12)


def test_vectorised_quantile_bounds_equal_the_engines() -> None:
    rng = np.random.default_rng(7)
    mu = np.log(np.array([[40.0, 120.0, 300.0]]))
    sigma = np.array([[0.5, 0.8, 1.0]])
    for size in (30, 400, 20_000):
        cells = rng.multinomial(np.full((1, 3), size), simulate._cells(mu, sigma)).astype(float)
        lower, upper = simulate._quantile_bounds(cells, 0.95, 0.025)
        for j in range(3):
            # the sim's cells as live buckets: cell k <= HIST_BOUNDS[k] is bucket HIST_FIRST + k
            counts = {simulate.HIST_FIRST + k: float(c) for k, c in enumerate(cells[0, j]) if c > 0}
            low, high = evidence.quantile_bounds(counts, 0.95, 0.025)
            if counts.get(simulate.HIST_FIRST, 0.0) == 0:  # nothing lumped below 10 ms
                assert (math.isnan(lower[0, j]) and low is None) or lower[0, j] == low
            assert (math.isnan(upper[0, j]) and high is None) or upper[0, j] == high


def _facts(
    canary_errors: np.ndarray, stable_errors: np.ndarray, requests: float
) -> simulate.PromoteFacts:
    """Promote facts for (rollouts, groups) of one stratum each, identical latency."""
    rng = np.random.default_rng(8)
    shape = canary_errors.shape
    mu = np.log(np.full(shape, 100.0))
    sigma = np.full(shape, 0.5)
    hist = rng.multinomial(np.full(shape, int(requests)), simulate._cells(mu, sigma))
    n = np.full(shape, requests)
    err_full = np.zeros((*shape, evidence.GRID_SIZE))
    simulate._accumulate(
        err_full, canary_errors, canary_errors + stable_errors, n, n, np.array(evidence.GRID)
    )
    columns = simulate._columns(evidence.grid_index(simulate.Knobs().psi0))
    err_ll = np.zeros((*shape, columns.size))
    simulate._accumulate(err_ll, canary_errors, canary_errors + stable_errors, n, n, columns)
    return simulate._promote_facts(
        n,
        canary_errors,
        hist.astype(float),
        n,
        stable_errors,
        hist.astype(float),
        err_full,
        0.05,
        error_log_e=simulate._log_e(err_ll),
    )


def test_promote_needs_the_pooled_ratio_and_the_groups_increase_bounded() -> None:
    # rollout 0: identical arms in both groups; rollout 1: group 1's canary 3 points worse
    canary = np.array([[300.0, 300.0], [300.0, 3300.0]])
    stable = np.full((2, 2), 300.0)
    facts = _facts(canary, stable, 100_000.0)
    assert facts.pooled_ratio_upper[0, 0] <= simulate.PROMOTE_RATIO
    assert facts.pooled_ratio_upper[1, 0] > simulate.PROMOTE_RATIO  # the build is worse
    # the vectorised bounds are the engine's
    group = evidence.zero_loglik()
    evidence.accumulate(group, evidence.window_loglik(300, 600, 100_000, 100_000))
    assert facts.ratio_upper[0, 0] == pytest.approx(evidence.ratio_interval(group, 0.05)[2])
    promotes = simulate.engine_promote_rule(facts)
    # group 0 of rollout 1 is fine on its own, but the rollout's 5xx rate is 6x stable's
    assert promotes.tolist() == [[True, True], [False, False]]
    # before the change: the absolute margin alone promoted group 0 of rollout 1
    assert (facts.increase_upper <= simulate.PROMOTE_ERROR_MARGIN).tolist()[1] == [True, False]


def test_promote_waits_while_the_groups_own_evidence_leans_towards_a_regression() -> None:
    # group 1: x2 on a 0.1 % base (0.1 points, inside the margin) beside a busy healthy
    # group 0 at 1 %: the pooled ratio is bounded below 1.5, but group 1's own e-value is
    # above 1
    canary = np.array([[1000.0, 200.0]])
    stable = np.array([[1000.0, 100.0]])
    facts = _facts(canary, stable, 100_000.0)
    assert facts.pooled_ratio_upper[0, 0] <= simulate.PROMOTE_RATIO
    assert (facts.increase_upper <= simulate.PROMOTE_ERROR_MARGIN).all()
    assert facts.group_error_log_e is not None
    assert facts.group_error_log_e[0, 1] > 0.0 >= facts.group_error_log_e[0, 0]
    assert simulate.engine_promote_rule(facts).tolist() == [[True, False]]
    # the vectorised e-value is the engine's
    group = evidence.zero_loglik()
    evidence.accumulate(group, evidence.window_loglik(200, 300, 100_000, 100_000))
    live = evidence.log_e_value(group, evidence.grid_index(simulate.Knobs().psi0))
    assert facts.group_error_log_e[0, 1] == pytest.approx(live)


def test_without_errors_the_canary_rate_floor_promotes() -> None:
    none = np.zeros((1, 2))
    facts = _facts(none, none, 100_000.0)
    assert np.isinf(facts.pooled_ratio_upper).all()  # no 5xx: no ratio to bound
    assert (facts.pooled_canary_rate_upper <= simulate.PROMOTE_ERROR_FLOOR).all()
    assert simulate.engine_promote_rule(facts).all()
    few = _facts(none, none, 2_000.0)  # too few requests to bound even that
    assert not simulate.engine_promote_rule(few).any()


def test_ratio_upper_is_the_engines_confidence_sequence() -> None:
    rng = np.random.default_rng(5)
    rows = []
    for _ in range(40):
        loglik = evidence.zero_loglik()
        for _ in range(int(rng.integers(1, 12))):
            n1, n0 = int(rng.integers(10, 3000)), int(rng.integers(10, 3000))
            x1 = int(rng.binomial(n1, 0.004 * rng.choice([1.0, 2.0, 5.0])))
            x0 = int(rng.binomial(n0, 0.004))
            evidence.accumulate(loglik, evidence.window_loglik(x1, x1 + x0, n1, n0))
        rows.append(loglik)
    got = simulate._ratio_upper(np.array(rows), 0.05)
    assert got.tolist() == pytest.approx([evidence.ratio_interval(row, 0.05)[2] for row in rows])


def test_the_simulated_engine_defaults_are_the_live_engines() -> None:
    knobs = simulate.Knobs()
    assert knobs.psi0 == engine.VerdictConfig().psi0
    assert knobs.pooled_share == engine.POOLED_SHARE
    assert knobs.offsets == evidence.OFFSETS
    assert knobs.error_weight == 0.5 and knobs.latency_gate
    assert knobs.funnel_share == 0.0  # simulate's rollouts configure no funnel
    # The worker's evaluations per window, each folding an increment.
    live = CanaryConfig()
    assert knobs.slices == live.window_seconds / live.interval_seconds
    verdict = engine.VerdictConfig()
    assert verdict.promote_error_margin == simulate.PROMOTE_ERROR_MARGIN
    assert verdict.promote_ratio == simulate.PROMOTE_RATIO
    assert verdict.promote_error_floor == simulate.PROMOTE_ERROR_FLOOR


def test_wrong_promotions_are_reported_with_their_upper_bound() -> None:
    result = simulate.simulate(rollouts=6, seed=4, ab_rollouts=4)
    for name in simulate.ENGINES:
        figures = result[name]
        wrong, total = figures["ab_wrong_promotions"], figures["ab_rollouts"]
        assert 0 <= wrong <= total
        assert figures["ab_wrong_promotion_upper95"] >= wrong / total
        assert 0 <= figures["aa_promotions"] <= 6
        assert all("promote_fraction" in s for s in figures["ab_by_scenario"].values())
    for name in ("kayenta", "argo_rollouts", "flagger"):  # promote = finished without failing
        assert result[name]["aa_promotions"] == 6 - result[name]["aa_false_rollbacks"]
    # a x5 regression of the 5xx rate is never promoted by grayscope before it is rolled back
    assert result["grayscope"]["ab_by_scenario"]["5xx odds x5"]["promote_fraction"] == 0.0


def test_ebh_named_is_the_engines_ebh_with_its_fallback() -> None:
    rng = np.random.default_rng(11)
    for _ in range(200):
        groups = int(rng.integers(1, 8))
        scores = np.exp(rng.normal(2.0, 3.0, (1, groups)))
        started = rng.random((1, groups)) < 0.8
        started[0, 0] = True
        got = simulate._ebh_named(scores, started, 0.05)[0]
        live = {str(j): float(scores[0, j]) for j in range(groups) if started[0, j]}
        expected = evidence.ebh(live, 0.05) or [max(live, key=lambda n: live[n])]
        assert {str(j) for j in range(groups) if got[j]} == set(expected)


def test_one_group_scenarios_regress_one_group_at_its_pinned_base_rate() -> None:
    scenarios = simulate.one_group_scenarios()
    assert [(s.group, s.psi) for s in scenarios] == [
        (group, psi) for group in simulate.ONE_GROUP_GROUPS for psi in simulate.ERROR_PSIS
    ]
    assert all(s.is_regression and s.group_base == simulate.ONE_GROUP_BASE for s in scenarios)
    assert simulate.scenarios()[1] == [  # the all-groups scenarios are unchanged
        *(simulate.Scenario(f"5xx odds x{psi:g}", psi=psi) for psi in simulate.ERROR_PSIS),
        *(
            simulate.Scenario(f"p95 +{shift:g} ms", p95_shift_ms=shift)
            for shift in simulate.LATENCY_SHIFTS_MS
        ),
    ]
    knobs = simulate.Knobs(baselines=False)
    # psi = 1 in the chosen group, its base rate not pinned: the A/A rollouts, draw for draw
    aa = simulate.run_scenario(simulate.Scenario("A/A"), 3, np.random.default_rng(2), 0.05, knobs)
    same = simulate.run_scenario(
        simulate.Scenario("one", psi=1.0, group=4), 3, np.random.default_rng(2), 0.05, knobs
    )
    for rule in aa.group_promote:
        assert np.array_equal(aa.group_promote[rule], same.group_promote[rule])
    assert np.array_equal(aa.rollback_window["grayscope"], same.rollback_window["grayscope"])
    assert aa.group_named is None and same.group_named is not None


def test_a_large_regression_of_the_busiest_group_alone_is_rolled_back_and_named() -> None:
    scenario = simulate.Scenario("one", psi=5.0, group=0, group_base=simulate.ONE_GROUP_BASE)
    out = simulate._chunked(
        scenario, 4, np.random.default_rng(3), 0.05, simulate.Knobs(baselines=False)
    )
    figures = simulate.one_group_figures(scenario, out)
    assert figures["rollback_named_fraction"] == 1.0
    assert figures["wrong_promotions"] == 0
    assert figures["wrong_promotion_upper95"] >= 0.5  # 0 of 4
    assert figures["group_traffic_share"] == pytest.approx(simulate.traffic_shares()[0], abs=1e-4)
    table = simulate.format_one_group_table(
        {"by_scenario": {scenario.name: figures}, "wrong_promotions": 0}
    )
    assert "| one | 31.3 % | 0/4 (0.0 %" in table

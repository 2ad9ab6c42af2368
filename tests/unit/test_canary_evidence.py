"""The anytime-valid statistics against scipy, exact expectations and simulated nulls."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from pipeline.canary import evidence, histogram

ALPHA = 0.05


def test_grid_is_symmetric_and_snaps_the_null() -> None:
    assert evidence.GRID[evidence.CENTRE] == 0.0
    assert evidence.GRID[0] == -3.5 and evidence.GRID[-1] == 3.5
    assert evidence.grid_index(1.0) == evidence.CENTRE
    assert evidence.grid_psi(evidence.grid_index(1.1)) == pytest.approx(math.exp(0.1))
    assert evidence.grid_index(1e9) == evidence.GRID_SIZE - 1


@pytest.mark.parametrize(
    ("x", "m", "n1", "n0"), [(3, 10, 100, 900), (0, 5, 50, 50), (7, 7, 10, 1000)]
)
def test_window_likelihood_ratios_match_scipy_binomial(x: int, m: int, n1: int, n0: int) -> None:
    loglik = evidence.window_loglik(x, m, n1, n0)
    assert loglik is not None
    share = n1 / (n1 + n0)
    for j in (0, 30, evidence.CENTRE, 75, evidence.GRID_SIZE - 1):
        psi = evidence.grid_psi(j)
        theta = share * psi / (share * psi + 1 - share)
        expected = stats.binom.logpmf(x, m, theta) - stats.binom.logpmf(x, m, share)
        assert loglik[j] - loglik[evidence.CENTRE] == pytest.approx(expected, abs=1e-9)


def test_a_window_without_events_leaves_the_evidence_unchanged() -> None:
    assert evidence.window_loglik(0, 0, 100, 100) is None
    assert evidence.window_loglik(0, 0, 0, 100) is None
    total = evidence.zero_loglik()
    evidence.accumulate(total, None)
    assert total == evidence.zero_loglik()
    assert evidence.log_e_value(total, evidence.grid_index(1.1)) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("n1", "n0", "m"), [(10, 990, 5), (100, 100, 30), (500, 500, 900), (3, 7, 6)]
)
def test_each_component_has_expectation_at_most_one_under_the_exact_hypergeometric_null(
    n1: int, n0: int, m: int
) -> None:
    """Identical arms: x is hypergeometric; every likelihood ratio of the mixture (and so the
    mixture) keeps E <= 1 exactly (Hoeffding's convex order), whatever the margins."""
    support = range(max(0, m - n0), min(n1, m) + 1)
    pmf = stats.hypergeom(n1 + n0, n1, m).pmf
    for null in (evidence.CENTRE, evidence.grid_index(1.1)):
        expectation = 0.0
        for x in support:
            loglik = evidence.window_loglik(x, m, n1, n0)
            assert loglik is not None
            expectation += pmf(x) * math.exp(evidence.log_e_value(loglik, null))
        assert expectation <= 1.0 + 1e-9


def test_the_composite_null_below_psi0_keeps_expectation_below_one() -> None:
    """Under the conditional binomial model with psi in (1, psi0] the e-value for psi <= psi0
    still has E <= 1 (exponential family, alternatives above the null)."""
    n1, n0, m = 200, 800, 40
    share = n1 / (n1 + n0)
    null = evidence.grid_index(1.1)
    for psi in (0.5, 1.0, 1.05, evidence.grid_psi(null)):
        theta = share * psi / (share * psi + 1 - share)
        expectation = sum(
            stats.binom.pmf(x, m, theta)
            * math.exp(evidence.log_e_value(evidence.window_loglik(x, m, n1, n0) or [], null))
            for x in range(m + 1)
        )
        assert expectation <= 1.0 + 1e-9


def test_simulated_null_e_process_keeps_expectation_below_one_and_rarely_crosses() -> None:
    """Identical arms, drifting shares and base rates, incidents on both arms: the e-process
    averaged over rollouts stays <= 1 at every window, and crosses 1/alpha at most alpha."""
    rng = np.random.default_rng(7)
    rollouts, windows = 400, 60
    null = evidence.grid_index(1.1)
    crossed = 0
    means = np.zeros(windows)
    for _ in range(rollouts):
        total = evidence.zero_loglik()
        hit = False
        for w in range(windows):
            share = (0.01, 0.05, 0.25, 0.5)[min(3, w // 15)]
            requests = int(rng.integers(200, 3000))
            n1 = int(rng.binomial(requests, share))
            n0 = requests - n1
            rate = 0.002 * (1 + math.sin(w / 9)) + (0.05 if rng.random() < 0.03 else 0.0)
            x = int(rng.binomial(n1, rate))
            y = int(rng.binomial(n0, rate))
            evidence.accumulate(total, evidence.window_loglik(x, x + y, n1, n0))
            value = math.exp(evidence.log_e_value(total, null))
            means[w] += value / rollouts
            hit = hit or value >= 1 / ALPHA
        crossed += hit
    assert means.max() <= 1.0 + 0.1  # Monte Carlo noise; the exact check is above
    upper = stats.beta.ppf(0.975, crossed + 1, rollouts - crossed)
    assert crossed / rollouts <= ALPHA and upper < 2 * ALPHA


def test_the_e_process_finds_a_doubled_error_rate() -> None:
    rng = np.random.default_rng(3)
    total = evidence.zero_loglik()
    null = evidence.grid_index(1.1)
    windows = 0
    while evidence.log_e_value(total, null) < math.log(1 / ALPHA) and windows < 200:
        windows += 1
        n1, n0 = 500, 4500
        x, y = int(rng.binomial(n1, 0.02)), int(rng.binomial(n0, 0.01))
        evidence.accumulate(total, evidence.window_loglik(x, x + y, n1, n0))
    assert windows < 60
    estimate, lower, upper = evidence.ratio_interval(total, ALPHA)
    assert lower <= 2.0 <= upper and 1.2 < estimate < 3.5


def test_ratio_interval_covers_the_true_ratio_and_shrinks() -> None:
    rng = np.random.default_rng(11)
    total = evidence.zero_loglik()
    widths = []
    for _ in range(300):
        n1 = n0 = 2000
        x, y = int(rng.binomial(n1, 0.015)), int(rng.binomial(n0, 0.01))
        evidence.accumulate(total, evidence.window_loglik(x, x + y, n1, n0))
        _, lower, upper = evidence.ratio_interval(total, ALPHA)
        assert lower <= 1.5 <= upper
        widths.append(math.log(upper / lower))
    assert widths[-1] < widths[10] / 3


@given(
    successes=st.integers(0, 400),
    extra=st.integers(0, 400),
)
@settings(max_examples=60, deadline=None)
def test_rate_bounds_contain_the_fixed_sample_clopper_pearson_interval(
    successes: int, extra: int
) -> None:
    n = successes + extra
    if n == 0:
        return
    lower, upper = evidence.rate_bounds(successes, n, ALPHA)
    cp_low = stats.beta.ppf(ALPHA / 2, successes, n - successes + 1) if successes else 0.0
    cp_high = stats.beta.ppf(1 - ALPHA / 2, successes + 1, n - successes) if extra else 1.0
    assert lower <= cp_low + 1e-9
    assert upper >= cp_high - 1e-9
    assert 0.0 <= lower <= successes / n <= upper <= 1.0


@pytest.mark.parametrize(("x", "n"), [(0, 10), (0, 1000), (3, 1000), (30, 500), (999, 1000)])
def test_clopper_pearson_upper_matches_scipy(x: int, n: int) -> None:
    expected = 1.0 if x == n else float(stats.beta.ppf(0.975, x + 1, n - x))
    assert evidence.clopper_pearson_upper(x, n) == pytest.approx(expected, abs=1e-9)


@given(st.integers(0, 60), st.integers(1, 60), st.floats(0.001, 0.999))
@settings(max_examples=60, deadline=None)
def test_binomial_cdf_matches_scipy(k: int, n: int, p: float) -> None:
    assert evidence.binomial_cdf(k, n, p) == pytest.approx(
        float(stats.binom.cdf(k, n, p)), abs=1e-9
    )


def test_quantile_bounds_cover_the_true_p95_and_tighten() -> None:
    rng = np.random.default_rng(5)
    truth = float(stats.lognorm(s=0.6, scale=120).ppf(0.95))
    counts: dict[int, int] = {}
    for step in range(40):
        histogram.add_all(counts, rng.lognormal(math.log(120), 0.6, 500).tolist())
        lower, upper = evidence.quantile_bounds(counts, 0.95, ALPHA)
        assert lower is None or lower <= truth * 1.0001
        assert upper is None or upper >= truth * 0.9999
        if step == 3:
            early = (lower, upper)
    assert lower is not None and upper is not None
    assert early[0] is not None and early[1] is not None
    assert upper - lower < early[1] - early[0]
    assert upper / lower < 1.4


def test_quantile_bounds_of_nothing_and_of_few() -> None:
    assert evidence.quantile_bounds({}, 0.95, ALPHA) == (None, None)
    counts: dict[int, int] = {}
    histogram.add_all(counts, [100.0] * 120)
    lower, upper = evidence.quantile_bounds(counts, 0.95, ALPHA)
    index = histogram.bucket_index(100.0)
    assert lower == pytest.approx(histogram.BOUNDS_MS[index - 1])
    assert upper == pytest.approx(histogram.BOUNDS_MS[histogram.bucket_index(100.0)])


def test_ebh_rejects_by_the_step_up_rule() -> None:
    assert evidence.ebh({"a": 100.0, "b": 30.0, "c": 1.0}, 0.05) == ["a", "b"]
    assert evidence.ebh({"a": 59.0, "b": 1.0, "c": 1.0}, 0.05) == []
    assert evidence.ebh({"a": 20.0, "b": 20.0}, 0.05) == ["a", "b"]
    assert evidence.ebh({}, 0.05) == []

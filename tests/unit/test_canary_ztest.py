"""The two-proportion Z-test against scipy and hand computations."""

from __future__ import annotations

import math

import pytest
from scipy.stats import norm

from pipeline.canary.ztest import normal_sf, two_proportion_ztest


@pytest.mark.parametrize("z", [-6.0, -1.96, -0.5, 0.0, 0.3, 1.2816, 1.645, 1.96, 3.0, 8.0, 20.0])
def test_normal_tail_matches_scipy(z: float) -> None:
    assert normal_sf(z) == pytest.approx(float(norm.sf(z)), rel=1e-12, abs=1e-300)


def _by_hand(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """statsmodels' proportions_ztest(alternative='larger') with the pooled variance."""
    p1, p2 = x1 / n1, x2 / n2
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = (p1 - p2) / se
    return z, float(norm.sf(z))


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2"),
    [
        (30, 200, 4, 400),  # a clear regression
        (12, 1000, 10, 1000),  # noise
        (5, 100, 9, 100),  # canary better
        (1, 50, 0, 60),
        (480, 500, 470, 500),
        (2, 100_000, 1, 100_000),
    ],
)
def test_z_and_p_match_scipy_by_hand(x1: int, n1: int, x2: int, n2: int) -> None:
    result = two_proportion_ztest(x1, n1, x2, n2)
    z, p = _by_hand(x1, n1, x2, n2)
    assert result.z == pytest.approx(z, rel=1e-12)
    assert result.p_value == pytest.approx(p, rel=1e-9)
    assert result.p_value_two_sided == pytest.approx(float(2 * norm.sf(abs(z))), rel=1e-9)


def test_known_textbook_value() -> None:
    # 45/300 vs 30/300: pooled 0.125, se = sqrt(0.125 * 0.875 * 2/300) = 0.0270031,
    # z = 0.05 / 0.0270031 = 1.85164, one-sided p = 0.03204.
    result = two_proportion_ztest(45, 300, 30, 300)
    assert result.z == pytest.approx(1.85164, abs=1e-5)
    assert result.p_value == pytest.approx(0.03204, abs=1e-5)


def test_critical_values_at_alpha_005() -> None:
    # One-sided alpha 0.05 <=> z > 1.6449.
    assert normal_sf(1.6449) == pytest.approx(0.05, abs=1e-5)


@pytest.mark.parametrize(("x", "n"), [(0, 100), (100, 100)])
def test_no_variance_means_no_evidence(x: int, n: int) -> None:
    result = two_proportion_ztest(x, n, x * 2, n * 2)
    assert (result.z, result.p_value, result.p_value_two_sided) == (0.0, 0.5, 1.0)


@pytest.mark.parametrize(("x1", "n1", "x2", "n2"), [(0, 0, 1, 10), (1, 10, 0, 0), (11, 10, 0, 10)])
def test_invalid_counts_are_refused(x1: int, n1: int, x2: int, n2: int) -> None:
    with pytest.raises(ValueError):
        two_proportion_ztest(x1, n1, x2, n2)

"""Latency buckets: layout, placement, and percentiles read back by interpolation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pipeline.canary import histogram
from pipeline.canary.histogram import BOUNDS_MS, OVERFLOW, bucket_index, percentile


def test_bounds_are_log_spaced_from_a_tenth_of_a_millisecond_to_100_seconds() -> None:
    assert BOUNDS_MS[0] == 0.1 and BOUNDS_MS[-1] == 100_000.0
    assert list(BOUNDS_MS) == sorted(set(BOUNDS_MS))
    ratios = [b / a for a, b in itertools.pairwise(BOUNDS_MS)]
    assert all(math.isclose(r, 10 ** (1 / 20), rel_tol=1e-4) for r in ratios)
    assert len(BOUNDS_MS) + 1 == histogram.BUCKETS


@pytest.mark.parametrize(
    ("duration_ms", "index"),
    [
        (-5.0, 0),
        (0.0, 0),
        (0.1, 0),  # upper bounds are inclusive
        (0.1000001, 1),
        (100.0, BOUNDS_MS.index(100.0)),
        (100.01, BOUNDS_MS.index(100.0) + 1),
        (100_000.0, OVERFLOW - 1),
        (100_000.5, OVERFLOW),
        (1e12, OVERFLOW),
    ],
)
def test_bucket_index(duration_ms: float, index: int) -> None:
    assert bucket_index(duration_ms) == index
    lower, upper = histogram.bucket_range(index)
    if index < OVERFLOW:
        assert lower <= max(duration_ms, 0.0) <= upper


def test_percentile_of_nothing_is_none_and_q_is_checked() -> None:
    assert percentile({}, 0.95) is None
    assert percentile({3: 0}, 0.5) is None
    with pytest.raises(ValueError):
        percentile({3: 1}, 1.5)


def test_percentile_interpolates_linearly_inside_the_bucket() -> None:
    index = BOUNDS_MS.index(100.0)
    lower, upper = BOUNDS_MS[index - 1], BOUNDS_MS[index]
    hist = {index: 100}
    assert percentile(hist, 0.0) == pytest.approx(lower)
    assert percentile(hist, 0.5) == pytest.approx(lower + (upper - lower) / 2)
    assert percentile(hist, 1.0) == pytest.approx(upper)
    # Two buckets: the median falls at the end of the first one.
    hist = {index: 50, index + 1: 50}
    assert percentile(hist, 0.5) == pytest.approx(upper)


def test_overflow_reads_as_the_top_bound() -> None:
    assert percentile({OVERFLOW: 10}, 0.99) == BOUNDS_MS[-1]


def _hist(samples: np.ndarray) -> dict[int, int]:
    hist: dict[int, int] = {}
    for value in samples:
        histogram.add(hist, float(value))
    return hist


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("lognormal around 120 ms", lambda rng: rng.lognormal(math.log(120), 0.6, 20_000)),
        ("lognormal around 3 ms", lambda rng: rng.lognormal(math.log(3), 0.4, 20_000)),
        ("uniform 50-950 ms", lambda rng: rng.uniform(50, 950, 20_000)),
        ("exponential mean 250 ms", lambda rng: rng.exponential(250, 20_000)),
        (
            "bimodal: fast cache hits, slow misses",
            lambda rng: np.concatenate(
                [rng.normal(20, 3, 16_000).clip(1), rng.normal(800, 120, 4_000).clip(1)]
            ),
        ),
    ],
)
def test_percentiles_are_within_a_few_percent_of_the_exact_ones(name: str, make: object) -> None:
    rng = np.random.default_rng(7)
    samples = make(rng)  # type: ignore[operator]
    hist = _hist(samples)
    low, high = float(samples.min()), float(samples.max())
    for q in (0.50, 0.95, 0.99):
        exact = float(np.percentile(samples, q * 100))
        estimate = percentile(hist, q, low, high)
        assert estimate is not None
        # A bucket is 12.2 % wide; interpolation inside it does much better.
        assert abs(estimate - exact) / exact < 0.03, (name, q, estimate, exact)
        # Without the extremes a sharp edge may cost up to one bucket width.
        rough = percentile(hist, q)
        assert rough is not None
        assert abs(rough - exact) / exact < 0.122, (name, q, rough, exact)


def test_extremes_make_a_point_mass_exact() -> None:
    hist = _hist(np.full(500, 300.0))
    assert percentile(hist, 0.95, 300.0, 300.0) == pytest.approx(300.0)
    rough = percentile(hist, 0.95)
    assert rough is not None and 300.0 < rough <= BOUNDS_MS[bucket_index(300.0)]
    # Beyond the last bound the maximum is the only upper edge there is.
    assert percentile({OVERFLOW: 4}, 1.0, 150_000.0, 200_000.0) == pytest.approx(200_000.0)


def test_percentiles_are_monotonic_in_q() -> None:
    rng = np.random.default_rng(1)
    hist = _hist(rng.lognormal(5, 1, 5000))
    values = [percentile(hist, q / 100) for q in range(101)]
    assert values == sorted(values)  # type: ignore[type-var]


def test_merge_is_addition() -> None:
    a = {1: 2, 5: 1}
    histogram.merge(a, {5: 3, 9: 1})
    assert a == {1: 2, 5: 4, 9: 1}
    assert histogram.total(a) == 7

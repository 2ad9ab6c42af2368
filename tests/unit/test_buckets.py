"""The compiled bucket counting (pipeline/core/buckets.py) against ``bisect_left``."""

from __future__ import annotations

from bisect import bisect_left

from hypothesis import given
from hypothesis import strategies as st

from pipeline.canary.histogram import BOUNDS_MS
from pipeline.core.buckets import count_floats, count_ms, count_ns
from pipeline.metrics.requests import _BOUNDS_NS
from pipeline.telemetry import LAG_BUCKETS

durations_ns = st.lists(
    st.none()
    | st.integers(min_value=-(10**12), max_value=10**12)
    | st.sampled_from([*_BOUNDS_NS, 0, 2**63 - 1, 2**70, -(2**70)])
)
durations_ms = st.lists(
    st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([*BOUNDS_MS, 0.0, -0.0])
)


@given(durations_ns)
def test_count_ns_is_bisect_left_of_the_timed_durations(values: list[int | None]) -> None:
    counts = [0] * (len(_BOUNDS_NS) + 1)
    counted, total = count_ns(values, _BOUNDS_NS, counts)
    timed = [v for v in values if v is not None and v >= 0]
    expected = [0] * (len(_BOUNDS_NS) + 1)
    for value in timed:
        expected[bisect_left(_BOUNDS_NS, value)] += 1
    assert counts == expected
    assert (counted, total) == (len(timed), sum(timed))


@given(durations_ms, st.dictionaries(st.integers(0, len(BOUNDS_MS)), st.integers(1, 5)))
def test_count_ms_is_bisect_left_with_negatives_as_zero(
    values: list[float], start: dict[int, int]
) -> None:
    histogram = dict(start)
    count_ms(values, BOUNDS_MS, histogram)
    expected = dict(start)
    for value in values:
        index = bisect_left(BOUNDS_MS, value if value > 0 else 0.0)
        expected[index] = expected.get(index, 0) + 1
    assert histogram == expected


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)))
def test_count_floats_is_bisect_left_of_each_value(values: list[float]) -> None:
    counts = [0] * (len(LAG_BUCKETS) + 1)
    counted, total = count_floats(values, LAG_BUCKETS, counts)
    expected = [0] * (len(LAG_BUCKETS) + 1)
    for value in values:
        expected[bisect_left(LAG_BUCKETS, value)] += 1
    assert counts == expected
    assert counted == len(values)
    assert total == sum(values) or abs(total - sum(values)) <= 1e-9 * max(1.0, *map(abs, values))

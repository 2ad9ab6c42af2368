"""Fixed, log-spaced latency buckets and percentiles read back from them (pure).

Bucket ``i`` counts durations in ``(BOUNDS_MS[i-1], BOUNDS_MS[i]]`` (bucket 0
starts at 0); the last bucket, ``OVERFLOW``, counts everything above
``BOUNDS_MS[-1]``. Twenty buckets per decade from 0.1 ms to 100 s keep each
bucket 12 % wide, so a percentile read back by linear interpolation inside
its bucket (as Prometheus' ``histogram_quantile`` does) is within a few per
cent of the exact value for realistic latency distributions, while a window's
histogram stays a small sparse mapping.

When the smallest and largest observed values are known, they narrow the
first and last occupied buckets, so distributions with a sharp edge (or all
requests equally fast) read back exactly at that edge.

The bounds are a persistent contract: table changelogs store bucket indices,
so changing them needs new table names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from pipeline.core.buckets import bucket_float, count_ms, nonnegative_ms

PER_DECADE: Final = 20
# 10 ** (k / 20) for k in -20..100: 0.1 ms .. 100 000 ms. Rounded so that every
# process computes bit-identical bounds.
BOUNDS_MS: Final[tuple[float, ...]] = tuple(
    round(10 ** (k / PER_DECADE), 6) for k in range(-PER_DECADE, 5 * PER_DECADE + 1)
)
OVERFLOW: Final = len(BOUNDS_MS)
BUCKETS: Final = OVERFLOW + 1


def bucket_index(duration_ms: float) -> int:
    """The bucket a duration falls into (negative durations count as 0)."""
    return bucket_float(BOUNDS_MS, nonnegative_ms(duration_ms))


def bucket_range(index: int) -> tuple[float, float]:
    """``(lower, upper)`` in ms; the overflow bucket is reported as zero-width at the top."""
    if index >= OVERFLOW:
        return BOUNDS_MS[-1], BOUNDS_MS[-1]
    return (BOUNDS_MS[index - 1] if index > 0 else 0.0), BOUNDS_MS[index]


def add(histogram: dict[int, int], duration_ms: float, count: int = 1) -> None:
    index = bucket_index(duration_ms)
    histogram[index] = histogram.get(index, 0) + count


def add_all(histogram: dict[int, int], durations_ms: Iterable[float]) -> None:
    """``add`` for each of many durations (one call instead of one per request; the loop
    is compiled: pipeline/core/buckets.py)."""
    count_ms(durations_ms, BOUNDS_MS, histogram)


def merge(into: dict[int, int], other: Mapping[int, int]) -> None:
    for index, count in other.items():
        into[index] = into.get(index, 0) + count


def total(histogram: Mapping[int, int]) -> int:
    return sum(histogram.values())


def percentile(
    histogram: Mapping[int, float],
    q: float,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float | None:
    """The ``q``-quantile (0 <= q <= 1) in ms by linear interpolation; None when empty.

    ``minimum`` / ``maximum`` (the observed extremes, optional) clamp the
    interpolation range. Without them, values in the overflow bucket read as
    the top bound: "at least 100 s".
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is not in [0, 1]")
    count = sum(histogram.values())  # counts may be weights (a reweighted histogram)
    if count <= 0:
        return None
    rank = q * count
    seen = 0.0
    last = 0
    for index in sorted(histogram):
        in_bucket = histogram[index]
        if in_bucket <= 0:
            continue
        last = index
        if seen + in_bucket >= rank:
            lower, upper = bucket_range(index)
            if index >= OVERFLOW and maximum is not None:
                upper = max(upper, maximum)
            if minimum is not None and lower < minimum <= upper:
                lower = minimum
            if maximum is not None and lower <= maximum < upper:
                upper = maximum
            return lower + (upper - lower) * ((rank - seen) / in_bucket)
        seen += in_bucket
    return bucket_range(last)[1]  # only reachable through float rounding of rank

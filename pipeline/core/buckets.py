"""Durations counted into fixed histogram buckets: the per-request part of the request
metrics' duration histograms (pipeline/metrics/requests.py), of the canary windows'
latency histograms (pipeline/canary/histogram.py) and of the delivery latency
(pipeline/telemetry.py), compiled with the core.

A duration goes into the first bucket whose bound is at least it (``bisect.bisect_left``
of the bounds), the last bucket (index ``len(bounds)``) above the top bound. Interpreted,
a ``bisect_left`` call and a counter update per request cost ~0.1 µs per request each
for the two histograms (bench/README.md, "Session 17").
"""

from __future__ import annotations

from collections.abc import Iterable


def count_ns(
    durations_ns: Iterable[int | None], bounds_ns: tuple[int, ...], counts: list[int]
) -> tuple[int, int]:
    """Each duration of at least 0 ns added to ``counts`` (one slot per bucket);
    (how many, their sum). None (untimed) and negative ones are left out."""
    counted = total = 0
    for value in durations_ns:
        if value is None or value < 0:
            continue
        counts[bucket_int(bounds_ns, value)] += 1
        counted += 1
        total += value
    return counted, total


def nonnegative_ms(duration_ms: float) -> float:
    """A duration as the latency histograms count it: negative ones (a clock step
    between two hosts' log lines) and NaN count as 0 ms."""
    return duration_ms if duration_ms > 0 else 0.0


def count_ms(
    durations_ms: Iterable[float], bounds_ms: tuple[float, ...], histogram: dict[int, int]
) -> None:
    """Each duration added to the sparse ``histogram`` (bucket index -> count), as
    ``nonnegative_ms``."""
    for duration_ms in durations_ms:
        index = bucket_float(bounds_ms, nonnegative_ms(duration_ms))
        histogram[index] = histogram.get(index, 0) + 1


def count_floats(
    values: Iterable[float], bounds: tuple[float, ...], counts: list[int]
) -> tuple[int, float]:
    """Each value added to ``counts`` (one slot per bucket); (how many, their sum)."""
    counted = 0
    total = 0.0
    for value in values:
        counts[bucket_float(bounds, value)] += 1
        counted += 1
        total += value
    return counted, total


# The same search twice, for int and for float bounds: compiled, each compares native
# values; one generic function would compare boxed objects.
def bucket_int(bounds: tuple[int, ...], value: int) -> int:
    """``bisect_left(bounds, value)``."""
    low, high = 0, len(bounds)
    while low < high:
        middle = (low + high) // 2
        if bounds[middle] < value:
            low = middle + 1
        else:
            high = middle
    return low


def bucket_float(bounds: tuple[float, ...], value: float) -> int:
    """``bisect_left(bounds, value)``."""
    low, high = 0, len(bounds)
    while low < high:
        middle = (low + high) // 2
        if bounds[middle] < value:
            low = middle + 1
        else:
            high = middle
    return low

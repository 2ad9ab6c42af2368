"""Tumbling event-time windows: placement, lateness, which window to judge (pure).

Windows are ``[start, start + size)`` in event time (the request's
``@timestamp``), ``start`` a multiple of ``size`` seconds since the epoch, so
every worker places an event in the same window without coordination.

Lateness follows Faust's own expiry rule for windowed tables, so that an
aggregate is accepted exactly when its window would still be kept: Faust
drops a window once its end lies before the start of the window containing
``now - expires`` (wall clock). Aggregates for such windows are *late*:
counted and ignored. Windows starting more than one window after ``now``
come from skewed clocks and are rejected as *future*.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from pipeline.core.formats.values import NS_PER_S

# Faust's WindowRange ends 0.1 s before the next window starts.
FAUST_RANGE_END_OFFSET = 0.1


class Placement(StrEnum):
    ACCEPTED = "accepted"
    LATE = "late"
    FUTURE = "future"


def window_start_ns(timestamp_ns: int, size_s: int) -> int:
    """Start (epoch ns) of the window holding ``timestamp_ns``."""
    size_ns = size_s * NS_PER_S
    return timestamp_ns - timestamp_ns % size_ns


def window_start(timestamp_ns: int, size_s: int) -> int:
    """Start (epoch seconds) of the window holding ``timestamp_ns``."""
    return window_start_ns(timestamp_ns, size_s) // NS_PER_S


def stale_before(now: float, size_s: int, expires_s: float) -> float:
    """Windows ending at or before this moment are gone (Faust's ``Window.stale``)."""
    moment = now - expires_s
    return (moment // size_s) * size_s


def is_stale(start: int, size_s: int, expires_s: float, now: float) -> bool:
    return start + size_s - FAUST_RANGE_END_OFFSET <= stale_before(now, size_s, expires_s)


def place(start: int, size_s: int, expires_s: float, now: float) -> Placement:
    if is_stale(start, size_s, expires_s, now):
        return Placement.LATE
    if start > now + size_s:
        return Placement.FUTURE
    return Placement.ACCEPTED


def pick_window(starts: Iterable[int], size_s: int, now: float) -> tuple[int, bool] | None:
    """The window to judge and whether it is complete; None without candidates.

    The latest window that has ended (``start + size <= now``) is judged;
    before any window with data has ended, the current one is judged as
    incomplete, so a regression shows up during the first window already.
    """
    latest_complete: int | None = None
    latest: int | None = None
    for start in starts:
        if latest is None or start > latest:
            latest = start
        if start + size_s <= now and (latest_complete is None or start > latest_complete):
            latest_complete = start
    if latest_complete is not None:
        return latest_complete, True
    if latest is not None:
        return latest, False
    return None

"""Event-time tumbling windows: placement, Faust's expiry rule, the window judged."""

from __future__ import annotations

import pytest
from faust.windows import TumblingWindow

from pipeline.canary import windows
from pipeline.canary.windows import Placement, is_stale, pick_window, place, window_start

NS = 1_000_000_000
T0 = 1_764_000_000  # a multiple of 60


@pytest.mark.parametrize(
    ("timestamp_ns", "size", "start"),
    [
        (T0 * NS, 60, T0),
        (T0 * NS + 59 * NS + 999_999_999, 60, T0),
        ((T0 + 60) * NS, 60, T0 + 60),
        (T0 * NS - 1, 60, T0 - 60),
        ((T0 + 7) * NS, 5, T0 + 5),
        ((T0 + 7) * NS + 123, 1, T0 + 7),
    ],
)
def test_window_start(timestamp_ns: int, size: int, start: int) -> None:
    assert window_start(timestamp_ns, size) == start
    assert windows.window_start_ns(timestamp_ns, size) == start * NS


@pytest.mark.parametrize("size", [1, 10, 60, 300])
@pytest.mark.parametrize("expires", [60.0, 600.0, 3600.0])
def test_staleness_agrees_with_faust(size: int, expires: float) -> None:
    """A window is late exactly when Faust would already have dropped it."""
    faust_window = TumblingWindow(size, expires=expires)
    now = T0 + 12.3
    for offset in range(-int(expires) - 3 * size, size * 3, max(1, size // 3)):
        start = (T0 + offset) // size * size
        (faust_start, faust_end) = faust_window.current(start)
        assert faust_start == start
        expected = faust_window.stale(faust_end, now)
        assert is_stale(start, size, expires, now) is expected, (start, now)


def test_placement() -> None:
    now = T0 + 30.0
    assert place(T0, 60, 600, now) is Placement.ACCEPTED
    assert place(T0 - 540, 60, 600, now) is Placement.ACCEPTED  # within expiry
    assert place(T0 - 660, 60, 600, now) is Placement.LATE
    assert place(T0 - 7200, 60, 600, now) is Placement.LATE
    assert place(T0 + 60, 60, 600, now) is Placement.ACCEPTED  # next window: clock skew
    assert place(T0 + 120, 60, 600, now) is Placement.FUTURE


def test_pick_window_prefers_the_latest_complete_one() -> None:
    now = T0 + 130.0
    # T0 and T0+60 have ended; T0+120 is still filling.
    assert pick_window([T0, T0 + 60, T0 + 120], 60, now) == (T0 + 60, True)
    assert pick_window([T0 + 60, T0], 60, now) == (T0 + 60, True)
    assert pick_window([T0 + 120], 60, now) == (T0 + 120, False)
    assert pick_window([], 60, now) is None
    # A window ends exactly at start + size.
    assert pick_window([T0 + 120], 60, T0 + 180.0) == (T0 + 120, True)

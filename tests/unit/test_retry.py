"""The one retry policy (pipeline.retry.Backoff)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.retry import Backoff


def test_bounds_double_up_to_the_cap_without_overflow() -> None:
    top = Backoff(0.2, 30.0, rng=lambda: 1.0)
    assert top.delay(0) == pytest.approx(0.2)
    assert top.delay(3) == pytest.approx(1.6)
    assert top.delay(10_000) == 30.0
    assert Backoff(0.2, 30.0, rng=lambda: 0.0).delay(5) == pytest.approx(3.2)  # half the bound


def test_retry_after_raises_the_wait_up_to_the_cap() -> None:
    policy = Backoff(0.5, 5.0, rng=lambda: 1.0)
    assert policy.delay(0, retry_after=3.0) == pytest.approx(3.0)
    assert policy.delay(0, retry_after=60.0) == pytest.approx(5.0)
    assert policy.delay(4, retry_after=0.1) == pytest.approx(5.0)


def test_retry_after_is_a_floor_the_jitter_never_halves() -> None:
    low = Backoff(0.5, 5.0, rng=lambda: 0.0)
    assert low.delay(0, retry_after=3.0) == pytest.approx(3.0)
    assert low.delay(0, retry_after=0.0) == pytest.approx(0.25)  # RetryInfo without a delay
    assert low.delay(3, retry_after=1.0) == pytest.approx(2.0)  # the backoff is longer


async def test_wait_sleeps_the_delay() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    policy = Backoff(0.1, 1.0, rng=lambda: 0.5, sleep=sleep)
    assert await policy.wait(1) == pytest.approx(0.15)
    assert slept == [pytest.approx(0.15)]


@given(
    st.integers(0, 200),
    st.floats(0.001, 10),
    st.floats(0.001, 100),
    st.floats(0, 1, exclude_max=True),
)
def test_every_delay_is_within_half_and_all_of_its_bound(
    attempt: int, initial: float, cap: float, draw: float
) -> None:
    bound = min(cap, initial * 2 ** min(attempt, 62))
    delay = Backoff(initial, cap, rng=lambda: draw).delay(attempt)
    assert bound / 2 <= delay <= bound


@given(
    st.integers(0, 200),
    st.floats(0.001, 10),
    st.floats(0.001, 100),
    st.floats(0, 1, exclude_max=True),
    st.floats(0, 1000),
)
def test_a_server_delay_is_waited_up_to_the_cap_and_never_shortened(
    attempt: int, initial: float, cap: float, draw: float, retry_after: float
) -> None:
    bound = min(cap, initial * 2 ** min(attempt, 62))
    floor = min(retry_after, cap)
    delay = Backoff(initial, cap, rng=lambda: draw).delay(attempt, retry_after)
    assert floor <= delay <= max(bound, floor)
    assert delay >= bound / 2

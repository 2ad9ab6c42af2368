"""The one retry policy: capped exponential backoff with jitter.

Every component that waits and tries the same thing again uses it: the store
sink (bulk requests and throttled documents), the dead-letter sink, the
worker's start-up connection to the store, and the OTLP exporter. Attempt
``n`` (from 0) waits a uniform time in ``[d/2, d)`` with
``d = min(cap, initial * 2**n)``, and never less than a server's ``Retry-After``
or gRPC RetryInfo delay when it names one (up to the cap): the OTel Collector's
rule, the larger of its backoff and the server's throttle delay. The jitter
keeps many workers from retrying a recovering service in lock step; its lower
half keeps a retry loop from spinning when the random draw is small.
Randomness and sleep are injectable, so tests run the schedule without waiting.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

# 2**62 seconds is forever: beyond it the exponent only risks an overflow.
_MAX_EXPONENT = 62


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before retry ``attempt`` (0, 1, 2, ...)."""

    initial: float
    cap: float
    rng: Callable[[], float] = field(default=random.random, compare=False)
    sleep: Callable[[float], Awaitable[Any]] = field(default=asyncio.sleep, compare=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        ceiling = min(self.cap, self.initial * 2 ** min(attempt, _MAX_EXPONENT))
        jittered = ceiling * (0.5 + self.rng() / 2)
        if retry_after is None:
            return jittered
        # The server's delay is a floor, not a bound for the jitter to halve.
        return max(jittered, min(retry_after, self.cap))

    async def wait(self, attempt: int, retry_after: float | None = None) -> float:
        """Sleep before retry ``attempt``; returns the time slept."""
        seconds = self.delay(attempt, retry_after)
        await self.sleep(seconds)
        return seconds

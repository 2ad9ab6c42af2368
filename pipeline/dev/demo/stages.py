"""The staged rollout of the demo: canary share per stage and when each stage runs.

Pure: plain numbers in, plain numbers out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# (canary share, fraction of the duration): a typical gray release that
# widens the canary once the smaller share looked healthy.
DEFAULT_ROLLOUT: tuple[tuple[float, float], ...] = ((0.01, 0.2), (0.05, 0.3), (0.5, 0.5))


@dataclass(frozen=True, slots=True)
class Stage:
    """One rollout stage: ``seconds`` of traffic with ``canary_share`` of it on the canary."""

    index: int  # 0-based
    canary_share: float
    start: float  # seconds after the traffic started
    seconds: float

    @property
    def end(self) -> float:
        return self.start + self.seconds

    @property
    def label(self) -> str:
        return share_label(self.canary_share)


def share_label(share: float) -> str:
    """``0.01`` -> ``1%``, ``0.5`` -> ``50%``, ``0.025`` -> ``2.5%``."""
    percent = share * 100
    return f"{percent:.0f}%" if abs(percent - round(percent)) < 1e-9 else f"{percent:.3g}%"


def plan_stages(
    duration: float, rollout: Sequence[tuple[float, float]] = DEFAULT_ROLLOUT
) -> list[Stage]:
    """Split ``duration`` seconds over the rollout's stages, in order, without gaps."""
    if duration <= 0:
        raise ValueError("duration must be positive")
    if not rollout:
        raise ValueError("a rollout needs at least one stage")
    total = sum(fraction for _, fraction in rollout)
    if total <= 0 or any(fraction <= 0 for _, fraction in rollout):
        raise ValueError("stage fractions must be positive")
    if any(not 0.0 <= share <= 1.0 for share, _ in rollout):
        raise ValueError("canary shares must be within [0, 1]")
    stages = []
    start = 0.0
    for index, (share, fraction) in enumerate(rollout):
        # The last stage ends exactly at the duration, whatever the rounding.
        end = duration if index == len(rollout) - 1 else start + duration * fraction / total
        stages.append(Stage(index, share, start, end - start))
        start = end
    return stages


def stage_at(stages: Sequence[Stage], elapsed: float) -> Stage | None:
    """The stage running ``elapsed`` seconds after the start; None before or after all."""
    for stage in stages:
        if stage.start <= elapsed < stage.end:
            return stage
    return None

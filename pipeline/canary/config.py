"""The canary analysis settings, from the typed ``settings.canary`` section (pure).

``Settings`` validates each value's range; this adds what spans settings
(expiry vs window, the verdict's statistics) and parses the funnels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.canary.funnel import FunnelSpec
from pipeline.canary.verdict import VerdictConfig
from pipeline.config import CanarySettings, load_funnels
from pipeline.errors import ConfigError

DEFAULT_VERDICT_TOPIC = "grayscope-canary-verdicts"
EXPIRES_IN_WINDOWS = 10


@dataclass(slots=True, frozen=True)
class CanaryConfig:
    enabled: bool = True
    window_seconds: int = 60
    expires_seconds: float = 600.0
    interval_seconds: float = 10.0
    partitions: int = 1
    verdict_topic: str = DEFAULT_VERDICT_TOPIC
    verdict: VerdictConfig = field(default_factory=VerdictConfig)
    rollout_idle_seconds: float = 1800.0
    funnels: tuple[FunnelSpec, ...] = ()

    @classmethod
    def from_settings(cls, section: CanarySettings) -> CanaryConfig:
        window = _number(section.window, "canary_window", minimum=1)
        if window != int(window):
            raise ConfigError("GRAYSCOPE_CANARY_WINDOW", "must be a whole number of seconds")
        expires = _number(section.expires, "canary_expires", minimum=0)
        if expires == 0:
            expires = float(window * EXPIRES_IN_WINDOWS)
        elif expires < window:
            raise ConfigError("GRAYSCOPE_CANARY_EXPIRES", "must be at least one window")
        interval = _number(section.interval, "canary_interval", minimum=0.05)
        partitions = _number(section.partitions, "canary_partitions", minimum=1)
        try:
            verdict = VerdictConfig(
                alpha=float(section.alpha),
                min_samples=int(section.min_samples),
                latency_threshold_ms=float(section.latency_threshold_ms),
                psi0=float(section.psi0),
                promote_error_margin=float(section.promote_error_margin),
                promote_ratio=float(section.promote_ratio),
                promote_error_floor=float(section.promote_error_floor),
                promote_error_evidence=float(section.promote_error_evidence),
                warmup_windows=int(section.warmup_windows),
                horizon_seconds=float(section.horizon_seconds),
            )
        except ValueError as exc:
            raise ConfigError("GRAYSCOPE_CANARY_*", str(exc)) from exc
        topic = str(section.topic).strip()
        if not topic:
            raise ConfigError("GRAYSCOPE_CANARY_TOPIC", "must not be empty")
        try:
            funnels = load_funnels(str(section.funnels))
        except ValueError as exc:
            raise ConfigError("GRAYSCOPE_CANARY_FUNNELS", str(exc)) from exc
        return cls(
            enabled=bool(section.enabled),
            window_seconds=int(window),
            expires_seconds=float(expires),
            interval_seconds=float(interval),
            partitions=int(partitions),
            verdict_topic=topic,
            verdict=verdict,
            rollout_idle_seconds=_number(
                section.rollout_idle_seconds, "canary_rollout_idle_seconds", minimum=1
            ),
            funnels=funnels,
        )


def _number(value: object, name: str, *, minimum: float) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"GRAYSCOPE_{name.upper()}", f"not a number: {value!r}") from exc
    if number < minimum:
        raise ConfigError(f"GRAYSCOPE_{name.upper()}", f"must be at least {minimum:g}")
    return number

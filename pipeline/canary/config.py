"""The canary analysis settings, read from ``Settings`` with defaults (pure).

``getattr`` with a default keeps this working with a ``Settings`` that does
not declare the canary settings yet, and with any object that has them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.canary.verdict import VerdictConfig
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

    @classmethod
    def from_settings(cls, settings: Any) -> CanaryConfig:
        def get(name: str, default: Any) -> Any:
            value = getattr(settings, name, None)
            return default if value is None else value

        window = _number(get("canary_window", 60), "canary_window", minimum=1)
        if window != int(window):
            raise ConfigError("GRAYSCOPE_CANARY_WINDOW", "must be a whole number of seconds")
        expires = _number(get("canary_expires", 0), "canary_expires", minimum=0)
        if expires == 0:
            expires = float(window * EXPIRES_IN_WINDOWS)
        elif expires < window:
            raise ConfigError("GRAYSCOPE_CANARY_EXPIRES", "must be at least one window")
        interval = _number(get("canary_interval", 10.0), "canary_interval", minimum=0.05)
        partitions = _number(get("canary_partitions", 1), "canary_partitions", minimum=1)
        try:
            verdict = VerdictConfig(
                alpha=float(get("canary_alpha", 0.05)),
                min_samples=int(get("canary_min_samples", 100)),
                latency_threshold_ms=float(get("canary_latency_threshold_ms", 200.0)),
                psi0=float(get("canary_psi0", 1.1)),
                promote_error_margin=float(get("canary_promote_error_margin", 0.005)),
                warmup_windows=int(get("canary_warmup_windows", 1)),
                horizon_seconds=float(get("canary_horizon_seconds", 3600.0)),
            )
        except ValueError as exc:
            raise ConfigError("GRAYSCOPE_CANARY_*", str(exc)) from exc
        topic = str(get("canary_topic", DEFAULT_VERDICT_TOPIC)).strip()
        if not topic:
            raise ConfigError("GRAYSCOPE_CANARY_TOPIC", "must not be empty")
        return cls(
            enabled=bool(get("canary_enabled", True)),
            window_seconds=int(window),
            expires_seconds=float(expires),
            interval_seconds=float(interval),
            partitions=int(partitions),
            verdict_topic=topic,
            verdict=verdict,
            rollout_idle_seconds=_number(
                get("canary_rollout_idle_seconds", 1800.0), "canary_rollout_idle_seconds", minimum=1
            ),
        )


def _number(value: Any, name: str, *, minimum: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"GRAYSCOPE_{name.upper()}", f"not a number: {value!r}") from exc
    if number < minimum:
        raise ConfigError(f"GRAYSCOPE_{name.upper()}", f"must be at least {minimum:g}")
    return number

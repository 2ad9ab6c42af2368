"""Canary settings: defaults without the Settings fields, overrides, validation."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipeline.canary.config import CanaryConfig
from pipeline.config import load_settings
from pipeline.errors import ConfigError


def test_defaults_work_with_settings_that_lack_the_canary_fields() -> None:
    config = CanaryConfig.from_settings(load_settings().canary)
    assert config == CanaryConfig()
    assert (config.window_seconds, config.expires_seconds, config.partitions) == (60, 600.0, 1)
    assert config.verdict_topic == "grayscope-canary-verdicts"
    assert (config.verdict.alpha, config.verdict.min_samples) == (0.05, 100)
    assert config.verdict.latency_threshold_ms == 200.0


def test_overrides() -> None:
    settings = load_settings(
        canary_enabled=False,
        canary_window=10,
        canary_expires=0,
        canary_interval=0.5,
        canary_partitions=4,
        canary_alpha=0.01,
        canary_min_samples=30,
        canary_latency_threshold_ms=150,
        canary_topic="verdicts",
    )
    assert settings.canary.window == 10
    config = CanaryConfig.from_settings(settings.canary)
    assert not config.enabled
    assert (config.window_seconds, config.expires_seconds, config.interval_seconds) == (
        10,
        100,
        0.5,
    )
    assert config.partitions == 4 and config.verdict_topic == "verdicts"
    assert (config.verdict.alpha, config.verdict.min_samples) == (0.01, 30)
    assert config.verdict.latency_threshold_ms == 150.0


@pytest.mark.parametrize(
    ("name", "value", "setting"),
    [
        ("canary_window", 0, "GRAYSCOPE_CANARY_WINDOW"),
        ("canary_window", 1.5, "GRAYSCOPE_CANARY_WINDOW"),
        ("canary_window", "soon", "GRAYSCOPE_CANARY_WINDOW"),
        ("canary_expires", 30, "GRAYSCOPE_CANARY_EXPIRES"),
        ("canary_partitions", 0, "GRAYSCOPE_CANARY_PARTITIONS"),
        ("canary_interval", 0, "GRAYSCOPE_CANARY_INTERVAL"),
        ("canary_alpha", 1.5, "GRAYSCOPE_CANARY_*"),
        ("canary_min_samples", 0, "GRAYSCOPE_CANARY_*"),
        ("canary_topic", " ", "GRAYSCOPE_CANARY_TOPIC"),
    ],
)
def test_invalid_values_name_the_setting(name: str, value: object, setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        section = load_settings().canary
        CanaryConfig.from_settings(replace(section, **{name.removeprefix("canary_"): value}))
    assert info.value.setting == setting

"""pipeline/dev/stack/prometheus.py: durations, the compressed-time rule variant, configs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from pipeline.dev.stack.prometheus import (
    RULES,
    Alertmanager,
    Prometheus,
    format_duration,
    parse_duration,
    scaled_rules,
)
from tests.promql import promtool


def test_durations() -> None:
    assert parse_duration("5m") == 300
    assert parse_duration("1h30m") == 5400
    assert parse_duration("500ms") == 0.5
    for bad in ("", "5", "m5", "5m ", "1.5m"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert format_duration(5) == "5s" and format_duration(0.25) == "250ms"


@given(st.integers(1, 10**7))
def test_formatted_durations_parse_back(millis: int) -> None:
    assert parse_duration(format_duration(millis / 1000)) == pytest.approx(millis / 1000)


def test_scaled_rules_divide_every_window_and_for_and_nothing_else() -> None:
    text = RULES.read_text()
    scaled = scaled_rules(text, 1 / 60)
    original = [r for g in yaml.safe_load(text)["groups"] for r in g["rules"]]
    compressed = [r for g in yaml.safe_load(scaled)["groups"] for r in g["rules"]]
    assert len(original) == len(compressed)
    for before, after in zip(original, compressed, strict=True):
        assert after.get("record") == before.get("record")
        assert after.get("alert") == before.get("alert")
        assert after.get("labels") == before.get("labels")
        if "for" in before:
            assert parse_duration(after["for"]) == parse_duration(before["for"]) / 60
        assert after["expr"].replace("[5s]", "[5m]").replace("[10s]", "[10m]") == before["expr"]
    # Every duration in an expression is a range selector the scaler rewrote.
    assert "m]" not in "".join(r["expr"] for r in compressed)


def test_scaled_rules_pass_promtool(tmp_path: Path) -> None:
    path = tmp_path / "scaled.yml"
    path.write_text(scaled_rules(RULES.read_text(), 1 / 60))
    done = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_subquery_steps_are_scaled_too() -> None:
    assert scaled_rules("max_over_time(x[10m:1m])", 0.5) == "max_over_time(x[300s:30s])"


def test_generated_configs(tmp_path: Path) -> None:
    prometheus = Prometheus(
        tmp_path,
        scrape_targets=["127.0.0.1:6066"],
        rule_files=[RULES],
        alertmanager_url="http://127.0.0.1:9999",
        scrape_interval="1s",
    )
    config = prometheus.config()
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:6066"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "127.0.0.1:9999"
    ]
    assert config["rule_files"] == [str(RULES)]
    alertmanager = Alertmanager(tmp_path, webhook_url="http://127.0.0.1:1/hook")
    receivers = alertmanager.config()["receivers"]
    assert receivers[0]["webhook_configs"][0]["url"] == "http://127.0.0.1:1/hook"

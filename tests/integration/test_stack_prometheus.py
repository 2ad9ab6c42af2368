"""`grayscope stack` with its Prometheus and Alertmanager (Debian's), detached."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from pipeline.config import StackSettings
from pipeline.dev.stack import stack as stack_module
from pipeline.dev.stack.process import http_ok, pid_alive, wait_for
from pipeline.dev.stack.prometheus import RULES, WORKER_TARGET


def test_stack_up_runs_prometheus_with_the_rules_and_alertmanager(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the monitoring services of the registry (Kafka and OpenSearch have their own tests).
    monitoring = [s for s in stack_module.SERVICES if s.name in ("alertmanager", "prometheus")]
    assert [s.name for s in monitoring] == ["alertmanager", "prometheus"]
    monkeypatch.setattr(stack_module, "SERVICES", monitoring)
    stack = stack_module.Stack(StackSettings(stack_dir=str(tmp_path)), tmp_path)
    try:
        stack.up(report=lambda line: None)
        env = stack.env()
        prometheus, alertmanager = (
            env["GRAYSCOPE_PROMETHEUS_URL"],
            env["GRAYSCOPE_ALERTMANAGER_URL"],
        )
        assert prometheus.startswith("http://127.0.0.1:") and http_ok(f"{prometheus}/-/ready")
        assert alertmanager.startswith("http://127.0.0.1:") and http_ok(f"{alertmanager}/-/ready")
        assert [s.state for s in stack.status()] == ["running", "running"]
        with urllib.request.urlopen(f"{prometheus}/api/v1/rules", timeout=5) as response:
            groups = json.loads(response.read())["data"]["groups"]
        assert {g["file"] for g in groups} == {str(RULES)}

        def alertmanagers() -> list[str]:
            with urllib.request.urlopen(f"{prometheus}/api/v1/alertmanagers", timeout=5) as resp:
                active = json.loads(resp.read())["data"]["activeAlertmanagers"]
            return [a["url"].split("/api/")[0] for a in active]

        wait_for(lambda: alertmanagers() == [alertmanager], timeout=30, what="alertmanager")
        targets = json.loads((tmp_path / "prometheus" / "targets.json").read_text())
        assert targets == [{"targets": [WORKER_TARGET]}]
        pids = [
            json.loads((tmp_path / n / "state.json").read_text())["pid"]
            for n in ("alertmanager", "prometheus")
        ]
    finally:
        stack.down(report=lambda line: None)
    assert not any(pid_alive(pid) for pid in pids)
    assert [s.state for s in stack.status()] == ["stopped", "stopped"]

"""`grayscope canary status`: arguments, rendering of a /canary payload."""

from __future__ import annotations

import argparse
import io
from typing import Any

import orjson
import pytest

import pipeline.commands.canary as canary_cli
from pipeline.canary.client import canary_url, verdicts_from_payload
from pipeline.canary.records import ArmSummary, Decision, Verdict
from pipeline.config import load_settings, settings_from_args
from pipeline.errors import CanaryUnavailable

T0 = 1_764_000_000


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="grayscope")
    sub = top.add_subparsers(dest="command", required=True)
    canary_cli.configure_parser(sub.add_parser("canary"))
    return top


def payload(owned: list[int]) -> dict[str, Any]:
    verdict = Verdict(
        path_group="/api/orders",
        window_start=T0,
        window_seconds=60,
        complete=True,
        decision=Decision.ROLLBACK,
        reasons=("5xx rate: canary 15.00% vs stable 1.00%, significantly higher",),
        canary=ArmSummary(200, 30),
        stable=ArmSummary(400, 4),
        z=7.2,
        p_value=1e-12,
        alpha=0.05,
        min_samples=100,
        p95_delta_ms=None,
        latency_threshold_ms=200.0,
        evaluated_at=T0 + 61,
    )
    return orjson.loads(
        orjson.dumps(
            {
                "enabled": True,
                "window_seconds": 60,
                "alpha": 0.05,
                "min_samples": 100,
                "latency_threshold_ms": 200.0,
                "partitions": 1,
                "owned_partitions": owned,
                "evaluated_at": "2025-11-24T16:01:01.000Z",
                "verdicts": [verdict.to_json()],
            }
        )
    )


def test_arguments_and_default_url() -> None:
    args = parser().parse_args(["canary", "status"])
    settings = settings_from_args(args)
    assert args.handler is canary_cli.run_canary_status
    assert canary_cli.worker_url(args, settings) == "http://localhost:6066"
    args = parser().parse_args(["canary", "status", "--web-port", "7000"])
    assert canary_cli.worker_url(args, settings_from_args(args)) == "http://localhost:7000"
    args = parser().parse_args(["canary", "status", "--url", "http://w1:6066", "--json"])
    assert canary_cli.worker_url(args, load_settings()) == "http://w1:6066" and args.json


def test_status_prints_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def fake_fetch(url: str, timeout: float = 5.0) -> dict[str, Any]:
        seen.append(url)
        return payload([0])

    monkeypatch.setattr(canary_cli, "fetch_canary", fake_fetch)
    out = io.StringIO()
    args = parser().parse_args(["canary", "status", "--url", "http://w1:6066"])
    assert canary_cli.run_canary_status(args, load_settings(), out) == 0
    text = out.getvalue()
    assert seen == ["http://w1:6066"]
    assert "partitions owned [0] of 1" in text
    assert "/api/orders  rollback" in text
    assert "    - 5xx rate: canary 15.00%" in text


def test_status_json_and_unowned_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(canary_cli, "fetch_canary", lambda url, timeout=5.0: payload([]))
    out = io.StringIO()
    args = parser().parse_args(["canary", "status", "--json"])
    canary_cli.run_canary_status(args, load_settings(), out)
    assert orjson.loads(out.getvalue())["verdicts"][0]["gray"]["path_group"] == "/api/orders"
    assert "owns no canary partition" in canary_cli.render_status(payload([]), "http://x")


def test_client_helpers() -> None:
    assert canary_url("http://w:6066/") == "http://w:6066/canary"
    assert canary_url("http://w:6066/canary") == "http://w:6066/canary"
    (verdict,) = verdicts_from_payload(payload([0]))
    assert verdict.decision is Decision.ROLLBACK and verdict.canary.errors_5xx == 30
    assert verdicts_from_payload({}) == []
    with pytest.raises(CanaryUnavailable):
        verdicts_from_payload({"verdicts": [{"nope": 1}]})


def test_report_writes_the_html_page(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setattr(canary_cli, "fetch_canary", lambda url, timeout=5.0: payload([0]))
    target = tmp_path / "report.html"
    args = parser().parse_args(["canary", "report", "--html", str(target), "--url", "http://w"])
    out = io.StringIO()
    assert canary_cli.run_canary_report(args, load_settings(), out) == 0
    page = target.read_text()
    assert page.startswith("<!DOCTYPE html>") and 'data-path-group="/api/orders"' in page
    assert "wrote" in out.getvalue()


def test_simulate_arguments() -> None:
    args = parser().parse_args(["canary", "simulate", "--json", "--rollouts", "7", "--seed", "3"])
    assert (args.json, args.rollouts, args.seed) == (True, 7, 3)
    assert args.handler is canary_cli.run_canary_simulate


def test_status_lists_the_funnels() -> None:
    from tests.unit.test_canary_report import funnel_payload

    data = payload([0])
    data["funnels"] = [funnel_payload()]
    text = canary_cli.render_status(data, "http://x")
    assert "funnel checkout: rollback" in text
    assert "  funnel checkout /cart -> POST /api/<orders>" not in text  # methods: '*' if none
    assert "funnel checkout * /cart -> POST /api/<orders>: canary 25.0% (60/240" in text

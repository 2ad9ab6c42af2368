"""deploy/grafana: every panel query parses (promtool) and names only metrics the
worker exports; the variables and the data source are the board's own."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.promql import check_expressions, exported_metric_names, metric_names

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
VARIABLES = {"datasource", "path_group", "stage", "version"}
# Grafana's built-in interval variables, as a Prometheus duration for parsing.
INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        yield item
        yield from panels(item.get("panels", []))


def substituted(expr: str) -> str:
    """The expression Prometheus would get: variables replaced by sample values."""
    for name, duration in INTERVALS.items():
        expr = expr.replace(name, duration)
    # Multi-value variables go into regex matchers (`=~"$var"`); `All` is `.*`.
    return re.sub(r"\$\{?(\w+)(?::\w+)?\}?", ".*", expr)


def queries(dashboard: dict[str, Any]) -> dict[str, str]:
    out = {}
    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            out[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    return out


def variable_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    """label_values(<selector>, label) -> the selector (a PromQL expression of its own)."""
    out = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
        assert match, variable["query"]
        out[f"variable {variable['name']}"] = match.group(1)
    return out


@pytest.fixture(params=DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(request.param.read_text())
    return data


def test_there_is_a_board() -> None:
    assert DASHBOARDS


def test_every_query_parses(dashboard: dict[str, Any], tmp_path: Path) -> None:
    exprs = {**queries(dashboard), **variable_queries(dashboard)}
    assert len(exprs) > 10
    check_expressions({where: substituted(expr) for where, expr in exprs.items()}, tmp_path)


def test_every_metric_named_is_exported_by_the_worker(dashboard: dict[str, Any]) -> None:
    exported = exported_metric_names()
    named: set[str] = set()
    for where, expr in {**queries(dashboard), **variable_queries(dashboard)}.items():
        names = metric_names(substituted(expr))
        assert names, where
        assert names <= exported, f"{where}: {names - exported}"
        named |= names
    # The board covers the request metrics, the verdicts and the pipeline's health.
    for required in (
        "grayscope_http_requests_total",
        "grayscope_http_request_duration_seconds_bucket",
        "grayscope_canary_verdict",
        "grayscope_dead_lettered_total",
        "grayscope_consumer_lag",
        "grayscope_bulk_requests_total",
        "grayscope_spans_dropped_total",
    ):
        assert required in named, required


def test_data_source_and_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) >= VARIABLES
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    # The request panels follow the path group / stage / version selection.
    for where, expr in queries(dashboard).items():
        if "grayscope_http_request" in expr:
            assert '$path_group"' in expr, where


def test_latency_quantiles_show_canary_and_stable_side_by_side(dashboard: dict[str, Any]) -> None:
    for quantile in ("0.5", "0.95", "0.99"):
        side_by_side = [
            expr
            for expr in queries(dashboard).values()
            if expr.startswith(f"histogram_quantile({quantile}, sum by (path_group, stage, le)")
        ]
        assert side_by_side, quantile


def test_substitution() -> None:
    assert (
        substituted('rate(x{a=~"$path_group",b=~"${stage:regex}"}[$__rate_interval])')
        == 'rate(x{a=~".*",b=~".*"}[5m])'
    )

"""deploy/prometheus: the rules pass promtool's check and unit tests and name only
metrics the worker exports (or rules of the same file)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.promql import check_expressions, exported_metric_names, metric_names, promtool

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = RULES_DIR / "grayscope-rules.yml"
RULE_TESTS = RULES_DIR / "grayscope-rules.test.yml"


def rules() -> list[dict[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_check_rules() -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_rule_unit_tests_fire_and_stay_silent() -> None:
    done = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_name_only_exported_metrics_or_recorded_ones() -> None:
    exported = exported_metric_names()
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    for rule in rules():
        unknown = metric_names(rule["expr"]) - exported - recorded
        assert not unknown, f"{rule.get('record') or rule.get('alert')}: {unknown}"


def test_every_alert_has_a_unit_test_that_fires_and_one_that_stays_silent() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    fired: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    assert alerts <= fired and alerts <= silent, (alerts - fired, alerts - silent)


def test_the_metric_name_reader() -> None:
    expr = (
        'sum by (job, le) (rate(grayscope_x_bucket{a="b{c}"}[5m])) / on (path_group) '
        "histogram_quantile(0.95, foo:bar:rate5m) > bool 0.2 and up offset 5m"
    )
    assert metric_names(expr) == {"grayscope_x_bucket", "foo:bar:rate5m", "up"}


def test_the_expression_checker_rejects_what_promtool_cannot_parse(tmp_path: Path) -> None:
    check_expressions({"fine": "sum(rate(grayscope_http_requests_total[5m]))"}, tmp_path)
    with pytest.raises(AssertionError, match="broken"):
        check_expressions({"broken": "sum(rate(grayscope_http_requests_total[5m])"}, tmp_path)


def test_the_compose_prometheus_and_alertmanager_configs_pass_their_checkers(
    tmp_path: Path,
) -> None:
    config = yaml.safe_load((RULES_DIR / "prometheus.yml").read_text())
    # The container path of the rules -> the file in the repo.
    config["rule_files"] = [str(RULES)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [promtool(), "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool not installed (Debian package `prometheus-alertmanager`)")
    done = subprocess.run(
        [amtool, "check-config", str(RULES_DIR / "alertmanager.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr

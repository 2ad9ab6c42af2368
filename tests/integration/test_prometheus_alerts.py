"""The request metrics and deploy/prometheus rules on real Prometheus and Alertmanager.

A real worker consumes synthetic gray-release traffic; Debian's Prometheus
scrapes its /metrics and evaluates the rules; Debian's Alertmanager delivers
to a webhook receiver inside the test. A canary regression on /play/share
(400 ms more latency, 30 % 5xx) must bring the latency and rollback alerts to
the webhook; the same traffic without it must bring nothing.

Time is compressed: the rules run as ``scaled_rules(RULES, 1/20)`` (every
window and ``for:`` 20 times shorter: 5 minutes -> 15 s; see
pipeline/dev/stack/prometheus.py), with 1 s scrape and evaluation intervals.
Shorter still and a busy machine's stalls (a worker batch taking seconds) empty
whole windows, which resets a pending alert. The canary analysis runs on 10 s
windows, evaluated every second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.dev.embedded.store import EmbeddedStore
from pipeline.dev.stack.process import LOOPBACK
from pipeline.dev.stack.prometheus import RULES, Alertmanager, Prometheus, scaled_rules
from pipeline.dev.synth import PATH_RULES
from tests.integration.worker_proc import WorkerProcess

pytestmark = [pytest.mark.timeout(400), pytest.mark.expected_seconds(120)]

TIME_SCALE = 1 / 20
# messages/s: ~360 canary requests on /play/share per (scaled) 5 minutes, where the
# latency alert wants 100; low enough that a slow worker builds no lag.
RATE = 400
TRAFFIC_SECONDS = 45
REGRESSED = "/play/share"


class Webhook:
    """Alertmanager's webhook receiver: every notification's alerts, as posted."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        received = self.alerts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.extend(json.loads(body).get("alerts", []))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.server.server_address[1]}/alerts"

    def firing(self) -> set[tuple[str, str]]:
        return {
            (a["labels"].get("alertname", ""), a["labels"].get("path_group", ""))
            for a in self.alerts
            if a.get("status") == "firing"
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Run:
    def __init__(
        self, worker: WorkerProcess, prometheus: Prometheus, webhook: Webhook, log_dir: Path
    ) -> None:
        self.worker = worker
        self.prometheus = prometheus
        self.webhook = webhook
        self.log_dir = log_dir

    def context(self) -> str:
        logs = "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.log_dir.rglob("*.log"))
        )
        views = []
        for expr in (
            "path_group:grayscope_canary_p95_excess_seconds:5m",
            "sum by (path_group) "
            '(increase(grayscope_http_request_duration_seconds_count{stage="canary"}[15s]))',
            "sum(grayscope_consumer_lag)",
            "sum(rate(grayscope_messages_consumed_total[15s]))",
        ):
            try:
                views.append(f"{expr}: {self.prometheus.query(expr)}")
            except (OSError, ValueError) as exc:
                views.append(f"{expr}: {exc}")
        try:
            views.append(f"prometheus alerts: {self.prometheus.alerts()}")
        except (OSError, ValueError) as exc:
            views.append(f"prometheus alerts: {exc}")
        prometheus = "\n".join(views)
        return f"alerts at the webhook: {self.webhook.alerts}\n{prometheus}\n{logs}"


@pytest.fixture
def monitored(
    tmp_path: Path, bootstrap: str, unique_topic: str, store: EmbeddedStore
) -> Iterator[Run]:
    webhook = Webhook()
    worker = WorkerProcess(
        {
            "GRAYSCOPE_KAFKA_BROKERS": bootstrap,
            "GRAYSCOPE_INPUT_TOPICS": unique_topic,
            "GRAYSCOPE_CONSUMER_GROUP": f"grayscope-{unique_topic}",
            "GRAYSCOPE_ES_URL": store.url,
            "GRAYSCOPE_PATH_RULES": orjson.dumps(list(PATH_RULES)).decode(),
            "GRAYSCOPE_CANARY_WINDOW": "10",
            "GRAYSCOPE_CANARY_INTERVAL": "1",
            "GRAYSCOPE_CANARY_ALPHA": "0.001",
            "GRAYSCOPE_CANARY_MIN_SAMPLES": "40",
            "GRAYSCOPE_CANARY_TOPIC": f"{unique_topic}-verdicts",
        },
        tmp_path / "worker.log",
    ).start()
    rules = tmp_path / "grayscope-rules.scaled.yml"
    rules.write_text(scaled_rules(RULES.read_text(), TIME_SCALE))
    alertmanager = Alertmanager(tmp_path / "alertmanager", webhook_url=webhook.url)
    prometheus = Prometheus(
        tmp_path / "prometheus",
        scrape_targets=[f"{LOOPBACK}:{worker.web_port}"],
        rule_files=[rules],
        scrape_interval="1s",
        evaluation_interval="1s",
    )
    try:
        worker.wait_ready()
        alertmanager.start()
        prometheus.alertmanager_url = alertmanager.url
        prometheus.start()
        yield Run(worker, prometheus, webhook, tmp_path)
    finally:
        prometheus.stop()
        alertmanager.stop()
        worker.kill()
        webhook.close()


def produce_traffic(run: Run, bootstrap: str, topic: str, regression: str | None) -> None:
    argv = [
        sys.executable, "-m", "pipeline.commands.main", "produce", "--synthetic",
        "--rate", str(RATE), "--count", str(RATE * TRAFFIC_SECONDS),
        "--seed", "7", "--canary-share", "0.5",
    ]  # fmt: skip
    if regression:
        argv += ["--regression", regression]
    env = {"GRAYSCOPE_KAFKA_BROKERS": bootstrap, "GRAYSCOPE_INPUT_TOPICS": topic}
    done = subprocess.run(
        argv,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=TRAFFIC_SECONDS * 4,
        check=False,
    )
    assert done.returncode == 0, done.stderr + run.context()


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return bool(predicate())


def test_a_canary_regression_reaches_the_webhook(
    monitored: Run, bootstrap: str, unique_topic: str
) -> None:
    run = monitored
    produce_traffic(run, bootstrap, unique_topic, REGRESSED)
    assert run.prometheus.targets_up(), run.context()
    expected = {
        ("GrayscopeCanaryLatencyRegression", REGRESSED),
        ("GrayscopeCanaryRollback", REGRESSED),
    }
    wait_for(lambda: expected <= run.webhook.firing(), timeout=90)
    assert expected <= run.webhook.firing(), run.context()
    # Only the regressed path group is flagged, and the pipeline itself is healthy.
    assert {group for _, group in run.webhook.firing()} == {REGRESSED}, run.context()
    # What Prometheus saw: canary p95 well above stable's on the regressed group.
    excess = run.prometheus.query(
        f'max_over_time(path_group:grayscope_canary_p95_excess_seconds:5m{{path_group="{REGRESSED}"}}[1m])'
    )
    assert excess and float(excess[0]["value"][1]) > 0.2, excess


def test_a_healthy_rollout_sends_nothing(monitored: Run, bootstrap: str, unique_topic: str) -> None:
    run = monitored
    produce_traffic(run, bootstrap, unique_topic, None)
    assert run.prometheus.targets_up(), run.context()
    # The rules saw the traffic (both arms of every path group)...
    rates = run.prometheus.query(
        "max_over_time(path_group_stage:grayscope_http_requests:rate5m[1m]) > 0"
    )
    assert {(r["metric"]["path_group"], r["metric"]["stage"]) for r in rates} >= {
        (REGRESSED, "canary"),
        (REGRESSED, "stable"),
    }, rates
    verdicts = run.prometheus.query("grayscope_canary_verdict == 1")
    assert verdicts, run.context()
    # ...and a little longer than the longest `for:` of the canary alerts later (15 s,
    # while the pipeline alerts' ran during the traffic), nothing was sent.
    time.sleep(20)
    assert run.webhook.alerts == [], run.context()
    firing = [a for a in run.prometheus.alerts() if a.get("state") == "firing"]
    assert firing == [], firing

"""Debian's Prometheus and Alertmanager as plain processes on free loopback ports.

The binaries come from the Debian packages ``prometheus`` (``/usr/bin/prometheus``,
``promtool``) and ``prometheus-alertmanager`` (``/usr/bin/prometheus-alertmanager``);
``make debian-packages`` installs them (deploy/debian-packages.txt). Configs are
generated into the data folder; nothing listens on a default port (9090, 9093,
Alertmanager's cluster port 9094 is switched off)::

    alertmanager = Alertmanager(data_dir / "alertmanager", webhook_url="http://127.0.0.1:8000/")
    alertmanager.start()
    prometheus = Prometheus(
        data_dir / "prometheus",
        scrape_targets=["127.0.0.1:6066"],           # workers' /metrics
        rule_files=[RULES],                          # deploy/prometheus/grayscope-rules.yml
        alertmanager_url=alertmanager.url,
    )
    prometheus.start()
    prometheus.query('sum(rate(grayscope_http_requests_total[1m]))')
    prometheus.alerts()                              # /api/v1/alerts
    alertmanager.alerts()                            # /api/v2/alerts

Compressed time for tests: :func:`scaled_rules` rewrites a rule file with
every duration (range selectors and ``for:``) divided by one factor. The rule
file's thresholds are ratios, per-second rates and counts per window, so the
rules mean the same, only faster (deploy/prometheus/grayscope-rules.yml says so
in its header and keeps to it).

Configs are written as JSON, which is YAML: no YAML library at run time.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from pipeline.dev.stack.process import LOOPBACK, ManagedProcess, free_port, http_ok
from pipeline.errors import ServiceError

log = logging.getLogger(__name__)

ROOT: Final = Path(__file__).resolve().parents[3]
#: The rules users load (README "Prometheus, Alertmanager and Grafana").
RULES: Final = ROOT / "deploy" / "prometheus" / "grayscope-rules.yml"
#: What the stack's Prometheus scrapes until its targets.json says otherwise: a worker
#: on this machine with the default web port (Settings.web_port).
WORKER_TARGET: Final = f"{LOOPBACK}:6066"
PROMETHEUS_BINARY: Final = "prometheus"
ALERTMANAGER_BINARY: Final = "prometheus-alertmanager"  # Debian's name for alertmanager
#: Starts that lose the race for a free port are retried on another one.
PORT_ATTEMPTS: Final = 3

_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS: Final = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 604800,
    "y": 31536000,
}
_RANGE = re.compile(r"\[((?:\d+(?:ms|s|m|h|d|w|y))+)(:(?:(?:\d+(?:ms|s|m|h|d|w|y))+)?)?\]")
_FOR = re.compile(r"^(\s*for:\s*)((?:\d+(?:ms|s|m|h|d|w|y))+)\s*$", re.MULTILINE)


def parse_duration(text: str) -> float:
    """A Prometheus duration (``1h30m``, ``15s``, ``500ms``) in seconds."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """Seconds as a Prometheus duration: whole seconds when exact, else milliseconds."""
    millis = max(1, round(seconds * 1000))
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def scaled_rules(text: str, factor: float) -> str:
    """The rule file with every range selector and ``for:`` duration times ``factor``."""
    if factor <= 0:
        raise ValueError("factor must be positive")

    def scale(duration: str) -> str:
        return format_duration(parse_duration(duration) * factor)

    def scale_range(match: re.Match[str]) -> str:
        step = match.group(2)
        if step and len(step) > 1:
            step = ":" + scale(step[1:])
        return f"[{scale(match.group(1))}{step or ''}]"

    text = _RANGE.sub(scale_range, text)
    return _FOR.sub(lambda m: m.group(1) + scale(m.group(2)), text)


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ServiceError(
            f"{name} not found: install the Debian packages in deploy/debian-packages.txt "
            "(make debian-packages)"
        )
    return path


def _get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


class _Service:
    """A Debian service binary on a free loopback port with a generated config."""

    name = "service"

    def __init__(self, data_dir: Path, *, port: int = 0, detached: bool = False) -> None:
        self.data_dir = data_dir
        self.detached = detached
        self.port = port  # 0: a free one
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / f"{self.name}.json.yml"

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> _Service:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2) + "\n")
        last: ServiceError | None = None
        wanted = self.port
        for attempt in range(PORT_ATTEMPTS):
            self.port = wanted if wanted and attempt == 0 else free_port()
            self.process = ManagedProcess(
                self.name,
                self.argv(),
                log_path=self.data_dir / f"{self.name}.log",
                ready=lambda: http_ok(f"{self.url}/-/ready", timeout=1.0),
                cwd=self.data_dir,
                startup_timeout=60.0,
                stop_grace=10.0,
                detached=self.detached,
            )
            try:
                self.process.start()
                return self
            except ServiceError as exc:
                if "address already in use" not in str(exc).lower():
                    raise
                last = exc
        assert last is not None
        raise last

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> _Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Alertmanager(_Service):
    """Alertmanager sending every alert to one webhook, at once (group_wait 0 s or as set)."""

    name = "alertmanager"

    def __init__(
        self,
        data_dir: Path,
        *,
        webhook_url: str | None = None,
        group_wait: str = "1s",
        group_interval: str = "1s",
        repeat_interval: str = "1h",
        port: int = 0,
        detached: bool = False,
    ) -> None:
        super().__init__(data_dir, port=port, detached=detached)
        self.webhook_url = webhook_url
        self.group_wait = group_wait
        self.group_interval = group_interval
        self.repeat_interval = repeat_interval

    def config(self) -> dict[str, Any]:
        receiver: dict[str, Any] = {"name": "grayscope"}
        if self.webhook_url:
            receiver["webhook_configs"] = [{"url": self.webhook_url, "send_resolved": True}]
        return {
            "route": {
                "receiver": "grayscope",
                "group_by": ["alertname", "path_group"],
                "group_wait": self.group_wait,
                "group_interval": self.group_interval,
                "repeat_interval": self.repeat_interval,
            },
            "receivers": [receiver],
        }

    def argv(self) -> list[str]:
        return [
            binary(ALERTMANAGER_BINARY),
            f"--config.file={self.config_path}",
            f"--storage.path={self.data_dir / 'data'}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            # No gossip: its default port (9094) is shared by everyone on this host.
            "--cluster.listen-address=",
        ]

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = _get_json(f"{self.url}/api/v2/alerts")
        return alerts


class Prometheus(_Service):
    """Prometheus scraping static targets, with rule files and an optional Alertmanager."""

    name = "prometheus"

    def __init__(
        self,
        data_dir: Path,
        *,
        scrape_targets: Sequence[str] = (),
        rule_files: Sequence[Path] = (),
        alertmanager_url: str | None = None,
        scrape_interval: str = "15s",
        evaluation_interval: str = "15s",
        job: str = "grayscope",
        targets_file: Path | None = None,
        port: int = 0,
        detached: bool = False,
    ) -> None:
        super().__init__(data_dir, port=port, detached=detached)
        self.scrape_targets = list(scrape_targets)
        #: With a targets file, the scrape targets are read from it (file_sd: edit it to
        #: add workers, no restart); ``scrape_targets`` only seed it when it is missing.
        self.targets_file = targets_file
        self.rule_files = [Path(p) for p in rule_files]
        self.alertmanager_url = alertmanager_url
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.job = job

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "rule_files": [str(p.resolve()) for p in self.rule_files],
            "scrape_configs": [
                {"job_name": self.job, "file_sd_configs": [{"files": [str(self.targets_file)]}]}
                if self.targets_file is not None
                else {"job_name": self.job, "static_configs": [{"targets": self.scrape_targets}]}
            ],
        }
        if self.alertmanager_url:
            target = urllib.parse.urlsplit(self.alertmanager_url).netloc
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [target]}]}]}
        return config

    def start(self) -> Prometheus:
        if self.targets_file is not None and not self.targets_file.exists():
            self.targets_file.parent.mkdir(parents=True, exist_ok=True)
            self.targets_file.write_text(json.dumps([{"targets": self.scrape_targets}]) + "\n")
        super().start()
        return self

    def argv(self) -> list[str]:
        return [
            binary(PROMETHEUS_BINARY),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir / 'data'}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--storage.tsdb.retention.time=2d",
        ]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (``[{"metric": {...}, "value": [t, "v"]}]``)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        body = _get_json(url)
        if body.get("status") != "success":
            raise ServiceError(f"query {expr!r} failed: {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts (``/api/v1/alerts``)."""
        alerts: list[dict[str, Any]] = _get_json(f"{self.url}/api/v1/alerts")["data"]["alerts"]
        return alerts

    def targets_up(self) -> bool:
        """Whether every scrape target was scraped successfully last time."""
        active = _get_json(f"{self.url}/api/v1/targets")["data"]["activeTargets"]
        return bool(active) and all(t.get("health") == "up" for t in active)

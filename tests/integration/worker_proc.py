"""Run ``grayscope worker`` as a real subprocess for integration tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pipeline.dev.stack.process import free_port
from pipeline.telemetry import parse_samples


class WorkerProcess:
    """One worker; ``env`` are GRAYSCOPE_* settings on top of test defaults."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.web_port = free_port()
        self.log_path = log_path
        self.env = {
            **os.environ,
            "GRAYSCOPE_WEB_PORT": str(self.web_port),
            "GRAYSCOPE_WEB_HOST": "127.0.0.1",
            "GRAYSCOPE_ES_MODE": "index",
            "GRAYSCOPE_GEOIP_CITY_DB": "",
            # Kafka's smallest allowed session (group.min.session.timeout.ms): a killed
            # worker's partitions move to the others after 6 s.
            "GRAYSCOPE_KAFKA_SESSION_TIMEOUT": "6",
            "GRAYSCOPE_KAFKA_REBALANCE_TIMEOUT": "10",
            "GRAYSCOPE_BATCH_TIMEOUT": "0.2",
            "GRAYSCOPE_ES_RETRY_MAX": "1",
            "GRAYSCOPE_LOG_LEVEL": "info",
            # The worker removes its temporary Faust data dir at exit, but a SIGKILLed
            # one (the fault tests, teardown) cannot: leave it in the test's directory.
            "TMPDIR": str(log_path.parent),
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.commands.main", "worker"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def health(self) -> dict[str, Any] | None:
        try:
            _, body = self.get("/healthz")
        except OSError:
            return None
        return dict(json.loads(body))

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}):\n{self.tail()}")
            health = self.health()
            if health and health.get("started"):
                return
            time.sleep(0.2)
        raise AssertionError(f"worker not ready in {timeout}s:\n{self.tail()}")

    def metric(self, name: str, labels: str = "") -> float:
        """Sum of samples named ``name`` (optionally with a label fragment)."""
        _, body = self.get("/metrics")
        return sum(
            value
            for sample, label_block, value in parse_samples(body.decode())
            if sample == name and labels in label_block
        )

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

"""The local stack's process helper and ``grayscope stack up|env|status|down``."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.dev.stack import process as process_module
from pipeline.dev.stack.process import (
    LOOPBACK,
    ManagedProcess,
    free_port,
    http_ok,
    pid_alive,
    port_accepts,
)
from pipeline.errors import ServiceError

pytestmark = pytest.mark.expected_seconds(45)

STACK_TIMEOUT = 600


def http_server(tmp_path: Path, port: int, **kwargs: object) -> ManagedProcess:
    return ManagedProcess(
        "http.server",
        [sys.executable, "-m", "http.server", "--bind", LOOPBACK, str(port)],
        log_path=tmp_path / "server.log",
        ready=lambda: http_ok(f"http://{LOOPBACK}:{port}/"),
        cwd=tmp_path,
        startup_timeout=30,
        stop_grace=5,
        **kwargs,  # type: ignore[arg-type]
    )


def test_managed_process_start_kill_restart_stop(tmp_path: Path) -> None:
    port = free_port()
    server = http_server(tmp_path, port)
    server.start()
    assert server.running and port_accepts(LOOPBACK, port)
    first_pid = server.pid
    server.kill()
    assert not server.running and server.returncode == -9
    assert not port_accepts(LOOPBACK, port)
    server.restart()  # the same command: the same port
    assert server.running and server.pid != first_pid
    assert port_accepts(LOOPBACK, port)
    assert server.stop() == -15  # SIGTERM was enough
    assert server.stop() == -15  # idempotent
    assert "starting" in (tmp_path / "server.log").read_text()


def test_managed_process_that_never_answers_fails_with_its_log(tmp_path: Path) -> None:
    quiet = ManagedProcess(
        "sleeper",
        [sys.executable, "-c", "print('no listener', flush=True); import time; time.sleep(60)"],
        log_path=tmp_path / "sleeper.log",
        ready=lambda: False,
        startup_timeout=1.5,
        stop_grace=2,
    )
    with pytest.raises(ServiceError, match="not ready within") as info:
        quiet.start()
    assert "no listener" in str(info.value)
    assert not quiet.running  # killed, not left behind


def test_managed_process_that_exits_fails_at_once(tmp_path: Path) -> None:
    broken = ManagedProcess(
        "broken",
        [sys.executable, "-c", "import sys; print('bad config line 3'); sys.exit(3)"],
        log_path=tmp_path / "broken.log",
        ready=lambda: False,
        startup_timeout=60,
    )
    with pytest.raises(ServiceError, match="exited with code 3") as info:
        broken.start()
    assert "bad config line 3" in str(info.value)


def test_a_failure_names_the_first_error_lines_not_only_the_shutdown_tail(
    tmp_path: Path,
) -> None:
    # A JVM that fails to bind logs the reason once, then pages of shutdown hooks.
    script = (
        "print('ERROR Unable to start acceptor: Address already in use'); "
        "print('Caused by: java.net.BindException: Address already in use'); "
        "[print(f'INFO shutdown hook {i}: stopped ' + 'x' * 80) for i in range(200)]; "
        "raise SystemExit(1)"
    )
    dying = ManagedProcess(
        "dying",
        [sys.executable, "-c", script],
        log_path=tmp_path / "dying.log",
        ready=lambda: False,
        startup_timeout=60,
    )
    with pytest.raises(ServiceError, match="exited with code 1") as info:
        dying.start()
    message = str(info.value)
    assert "Caused by: java.net.BindException" in message
    assert "shutdown hook 199" in message  # and still the tail


def test_free_port_is_below_the_ephemeral_range_and_reserved_across_processes() -> None:
    floor = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ours = {free_port() for _ in range(50)}
    assert len(ours) == 50
    if floor - process_module._PORT_RANGE_START >= 1000:  # else the kernel's picks
        assert max(ours) < floor
    # Another process can reserve none of them (the reservation free_port draws through).
    check = (
        "import json, sys; from pipeline.dev.stack.process import _reserve_port; "
        "print(json.dumps([_reserve_port(p) for p in json.loads(sys.argv[1])]))"
    )
    taken = subprocess.run(
        [sys.executable, "-c", check, json.dumps(sorted(ours))],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert json.loads(taken) == [False] * 50


def grayscope(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GRAYSCOPE_")}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.commands.main", *args],
        capture_output=True,
        text=True,
        timeout=STACK_TIMEOUT,
        env={**clean, **(env or {})},
        check=False,
    )


def test_stack_up_env_status_down(tmp_path: Path) -> None:
    folder = tmp_path / "stack"
    try:
        up = grayscope("stack", "up", "--dir", str(folder))
        assert up.returncode == 0, up.stderr
        assert up.stdout == ""  # progress goes to stderr

        env_out = grayscope("stack", "env", "--dir", str(folder))
        assert env_out.returncode == 0, env_out.stderr
        exported = dict(
            shlex.split(line.removeprefix("export "))[0].split("=", 1)
            for line in env_out.stdout.splitlines()
        )
        assert set(exported) == {
            "GRAYSCOPE_KAFKA_BROKERS",
            "GRAYSCOPE_ES_URL",
            "GRAYSCOPE_OTLP_ENDPOINT",
            "GRAYSCOPE_JAEGER_URL",
            "GRAYSCOPE_PROMETHEUS_URL",
            "GRAYSCOPE_ALERTMANAGER_URL",
        }
        assert exported["GRAYSCOPE_KAFKA_BROKERS"].startswith("127.0.0.1:")
        assert exported["GRAYSCOPE_ES_URL"].startswith("http://127.0.0.1:")

        status = grayscope("stack", "status", "--dir", str(folder))
        assert status.returncode == 0, status.stdout
        assert "kafka: running" in status.stdout and "opensearch: running" in status.stdout
        assert "jaeger: running" in status.stdout

        again = grayscope("stack", "up", "--dir", str(folder))
        assert again.returncode == 0 and "already running" in again.stderr

        # What `eval "$(grayscope stack env)"` gives a worker: setup reaches both.
        setup = grayscope("setup", env=exported)
        assert setup.returncode == 0, setup.stdout + setup.stderr
        assert "opensearch" in setup.stdout.lower()
        assert "OTLP endpoint" in setup.stdout and "reachable" in setup.stdout
        assert http_ok(exported["GRAYSCOPE_JAEGER_URL"] + "/api/services")
    finally:
        down = grayscope("stack", "down", "--dir", str(folder))
    assert down.returncode == 0, down.stderr
    stopped = grayscope("stack", "status", "--dir", str(folder))
    assert stopped.returncode == 3
    assert "kafka: stopped" in stopped.stdout and "opensearch: stopped" in stopped.stdout
    assert grayscope("stack", "env", "--dir", str(folder)).stdout == ""
    for line in up.stderr.splitlines():
        if "up (pid " in line:
            pid = int(line.split("up (pid ")[1].split(")")[0])
            assert not pid_alive(pid)

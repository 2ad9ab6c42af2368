"""``grayscope demo --real-stack`` as a subprocess: a short run end to end, and an
interrupted one, on Apache Kafka, OpenSearch and Jaeger (the embedded stand-ins,
the demo's default, are no longer part of the suite).

Both check that every process the demo started (broker, store, Jaeger, worker)
is gone when it exits, by watching its descendants in /proc while it runs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.dev.demo.report import WORSE_MARK

pytestmark = [
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc"),
    pytest.mark.expected_seconds(90),
]

# Kafka and OpenSearch start in 20-60 s on a busy two-core machine.
RUN_TIMEOUT = 400


def demo_argv(*args: str) -> list[str]:
    """The command as users run it once it is wired into the CLI, else its module."""
    from pipeline.commands.main import COMMANDS

    if "demo" in COMMANDS:
        return [sys.executable, "-m", "pipeline.commands.main", "demo", *args]
    return [sys.executable, "-m", "pipeline.dev.demo", *args]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GRAYSCOPE_")}


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a process, None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie is dead, only not reaped yet
        return None
    return int(fields[1]), fields[19]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


class DescendantWatcher:
    """Records every descendant of ``root`` seen while it runs: pid -> (start time, command)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.seen: dict[int, tuple[str, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DescendantWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.scan()
            self._stop.wait(0.1)

    def scan(self) -> None:
        parents: dict[int, tuple[int, str]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (stat := _stat(int(entry))) is not None:
                parents[int(entry)] = stat
        family = {self.root}
        grew = True
        while grew:
            grew = False
            for pid, (ppid, _) in parents.items():
                if ppid in family and pid not in family:
                    family.add(pid)
                    grew = True
        for pid in family - {self.root}:
            started = parents[pid][1]
            known = self.seen.get(pid)
            if known is None or known[0] == started:
                # Seen again: keep its latest command line. A child seen between fork
                # and exec still shows its parent's (the demo's) command line.
                command = _cmdline(pid)
                self.seen[pid] = (started, command or (known[1] if known else ""))

    def commands(self) -> list[str]:
        return [command for _, command in self.seen.values()]

    def leftovers(self) -> list[str]:
        """Descendants still alive (same pid and start time: not a reused pid)."""
        left = []
        for pid, (started, command) in self.seen.items():
            stat = _stat(pid)
            if stat is not None and stat[1] == started:
                left.append(f"{pid}: {command}")
        return left


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "demo-logs"


def start_demo(log_dir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        demo_argv("--real-stack", "--log-dir", str(log_dir), *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )


def logs(log_dir: Path) -> str:
    out = []
    for path in sorted(log_dir.glob("*.log")):
        tail = path.read_text(errors="replace").splitlines()[-15:]
        out.append(f"--- {path.name}\n" + "\n".join(tail))
    return "\n".join(out)


@pytest.fixture
def reaper() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_short_demo_finds_the_regression_and_the_spans(
    log_dir: Path, reaper: list[subprocess.Popen[str]]
) -> None:
    proc = start_demo(log_dir, "--duration", "16", "--rate", "600", "--canary-min-samples", "40")
    reaper.append(proc)
    with DescendantWatcher(proc.pid) as watcher:
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT)
    context = f"stderr:\n{stderr}\nstdout:\n{stdout}\nlogs:\n{logs(log_dir)}"

    assert proc.returncode == 0, context
    assert "stage 3/3: canary share 50%" in stderr, context

    # Everything produced was indexed (the synthetic traffic has no bad lines), and the
    # worker exported a span for each to Jaeger.
    head = re.search(
        r"([\d,]+) requests indexed .*\(([\d,]+) produced, 0 dead-lettered, "
        r"([\d,]+) spans exported to Jaeger\)",
        stdout,
    )
    assert head is not None, context
    indexed, produced, exported = (int(g.replace(",", "")) for g in head.groups())
    assert indexed == produced == exported > 0

    # The regressed path group: canary 5xx rate above stable's, flagged.
    table = stdout[stdout.index("By path group") :]
    row = next(line for line in table.splitlines() if line.strip().startswith("/play/share"))
    stable_rate, canary_rate = (float(p) for p in re.findall(r"([\d.]+)%", row))
    assert canary_rate > stable_rate, row
    assert row.endswith(WORSE_MARK), row
    healthy = next(line for line in table.splitlines() if line.strip().startswith("/godoc/pkg"))
    assert WORSE_MARK not in healthy

    # Spans of one gray id, found by Jaeger's tag search (GET /api/traces?tags=...): one
    # per request the store has for that gray id.
    spans = re.search(
        r"Spans for gray\.id=(\w+) \(found by Jaeger [\d.]+'s tag search\)\n"
        r"(?:\s+GET /api/traces\?service=\S+&tags=%7B%22gray\.id%22%3A%22\1%22%7D\n)+"
        r"\s+([\d,]+) spans in ([\d,]+) traces",
        stdout,
    )
    assert spans is not None, context
    gray_id, found = spans.group(1), int(spans.group(2).replace(",", ""))
    busiest = stdout[stdout.index("Busiest gray ids") :].splitlines()
    row = next(line.split() for line in busiest if line.strip().startswith(gray_id + " "))
    assert found == int(row[2].replace(",", "")) > 0, row
    assert found == int(spans.group(3).replace(",", ""))  # one request, one trace
    for title in ("By rollout stage", "By version", "By country", "Busiest gray ids"):
        assert title in stdout

    # The live canary verdict: rollback for the regressed path group, and only for it.
    verdicts = stdout[stdout.index("Canary verdicts") :].splitlines()
    rows = {line.split()[0]: line.split()[1] for line in verdicts[2:] if line.startswith("  /")}
    assert rows.get("/play/share") == "rollback", context
    assert [group for group, decision in rows.items() if decision == "rollback"] == ["/play/share"]

    commands = " | ".join(watcher.commands())
    assert "services: Kafka: Apache Kafka" in stdout
    assert "store: OpenSearch" in stdout
    assert "traces: Jaeger" in stdout
    assert "stand-in" not in stdout
    for expected in (
        "kafka.Kafka",
        "GrayscopeOpenSearch",
        "jaeger --config",
        "pipeline.commands.main worker",
    ):
        assert expected in commands, commands
    assert watcher.leftovers() == []


def test_interrupted_demo_stops_everything(
    log_dir: Path, reaper: list[subprocess.Popen[str]]
) -> None:
    proc = start_demo(log_dir, "--duration", "60", "--rate", "200")
    reaper.append(proc)
    assert proc.stderr is not None
    lines: list[str] = []
    with DescendantWatcher(proc.pid) as watcher:
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("stage 1/3"):
                break
        assert any(line.startswith("stage 1/3") for line in lines), "".join(lines)
        proc.send_signal(signal.SIGINT)
        stdout, rest = proc.communicate(timeout=RUN_TIMEOUT)
    stderr = "".join(lines) + rest

    assert proc.returncode == 130, stderr
    assert "interrupted: stopping" in stderr
    assert "stopping the worker and the services" in stderr
    assert "drill-down" not in stdout
    assert len(watcher.seen) >= 4, watcher.commands()
    assert watcher.leftovers() == []

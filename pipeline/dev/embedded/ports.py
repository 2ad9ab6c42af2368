"""Ports and child processes shared by the embedded broker and store.

The embedded services run for the integration tests and for ``grayscope demo``:
they must never outlive the Python process that started them, must not race
for ports, and must leave a log behind when something goes wrong.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from pipeline.dev.stack.process import (  # one copy, shared with the real stack
    _death_signal_preexec,
)
from pipeline.errors import EmbeddedServiceError

log = logging.getLogger(__name__)


def default_log_path(name: str) -> Path:
    """A fresh file in the temp directory, kept after stop for post-mortems."""
    fd, path = tempfile.mkstemp(prefix=f"grayscope-{name}-", suffix=".log")
    os.close(fd)
    return Path(path)


class ChildProcess:
    """One run of a service binary: output appended to a log, killed with us.

    The child gets its own session so a terminal Ctrl-C does not reach it: the
    parent stops its services in order instead of racing them. Any child still
    running at interpreter exit is stopped by an atexit hook; with death_signal
    PR_SET_PDEATHSIG covers the parent being killed outright. That signal fires
    when the *thread* that started the child exits: start from a long-lived
    thread (the main thread), never from a short-lived executor thread.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str],
        stdin_pipe: bool = False,
        death_signal: bool = True,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        with log_path.open("ab") as log_file:
            # Restarts append to the same log; remember where this run starts.
            self.log_offset = log_file.tell()
            log_file.write(f"--- grayscope: starting {' '.join(self.argv)}\n".encode())
            log_file.flush()
            try:
                self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=dict(env),
                    start_new_session=True,
                    preexec_fn=_death_signal_preexec(os.getpid()) if death_signal else None,
                    close_fds=True,
                )
            except OSError as exc:
                raise EmbeddedServiceError(f"cannot start {self.argv[0]}: {exc}") from exc
        _live.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        """What this run has written so far."""
        try:
            with self.log_path.open("rb") as log_file:
                log_file.seek(self.log_offset)
                return log_file.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def describe_failure(self, what: str) -> str:
        tail = self.output()[-2000:].strip()
        return f"{what}; log {self.log_path}:\n{tail}"

    def address_in_use(self) -> bool:
        """Whether a failed start looks like a lost race for the port."""
        # Go says "address already in use", Rust "Address in use".
        text = self.output().lower()
        return "address already in use" in text or "address in use" in text

    def wait_until(self, ready: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Poll ready() until true; fail fast if the process exits first."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            if not self.running():
                raise EmbeddedServiceError(
                    self.describe_failure(
                        f"{what} exited with code {self.proc.returncode} during startup"
                    )
                )
            if ready():
                return
            if time.monotonic() >= deadline:
                raise EmbeddedServiceError(
                    self.describe_failure(f"{what} not ready within {timeout:.1f} s")
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def stop(self, grace: float) -> int | None:
        """Close stdin, SIGTERM, SIGKILL after grace; always reaps the child."""
        proc = self.proc
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.warning("pid %d ignored SIGTERM for %.1f s, killing it", proc.pid, grace)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        _live.discard(self)
        return proc.returncode


_live: set[ChildProcess] = set()


@atexit.register
def _stop_leftovers() -> None:
    for child in list(_live):
        child.stop(grace=2.0)


class EmbeddedService:
    """Lifecycle shared by the embedded processes: stop, start again, restart.

    Subclasses set ``kind`` and ``address``, fill the attributes below in
    ``__init__`` and implement ``_spawn`` (start ``self._child`` on
    ``self._requested_port`` or a free port, and set ``self.port``).
    """

    kind = "service"
    host: str
    log_path: Path
    stop_grace: float
    port: int
    _requested_port: int | None
    _child: ChildProcess | None

    @property
    def address(self) -> str:
        raise NotImplementedError

    def _spawn(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.running()

    def stop(self) -> None:
        """Stop the process (SIGTERM, SIGKILL after the grace period). Idempotent."""
        if self._child is None:
            return
        child, self._child = self._child, None
        child.stop(self.stop_grace)
        log.info("embedded %s on %s stopped", self.kind, self.address)

    def start_again(self) -> None:
        """Start a fresh, empty instance on the port of the previous run (after stop)."""
        if self.running:
            raise EmbeddedServiceError(f"{self.kind} on {self.address} is still running")
        self._child = None
        self._spawn()

    def restart(self, *, new_port: bool = False) -> None:
        """Stop and start an empty instance; on the same port unless new_port."""
        self.stop()
        if new_port:
            self._requested_port = None
        self._spawn()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"{type(self).__name__}({self.address}, {state}, log={self.log_path})"

"""Managed service processes: the one helper every real service of the stack uses.

``grayscope stack`` and the integration tests run Apache Kafka, OpenSearch,
Jaeger and Prometheus as plain processes on free loopback ports. Each of them
is a :class:`ManagedProcess`::

    proc = ManagedProcess(
        "kafka",
        ["java", "-cp", "lib/*", "kafka.Kafka", "server.properties"],
        log_path=data_dir / "kafka.log",
        ready=lambda: port_accepts(LOOPBACK, port),   # any callable -> bool
        cwd=data_dir,
        env={"JAVA_HOME": ...},                       # added to os.environ
        startup_timeout=60.0,
        stop_grace=15.0,
        detached=False,
    )
    proc.start()      # spawn, then poll ready() until True; raises ServiceError
                      # with the log's first error lines and its tail if the process
                      # exits or the timeout passes
    proc.spawn(); other.spawn(); proc.wait_ready(); other.wait_ready()
                      # the same, several services starting at once
    proc.pid, proc.running
    proc.stop()       # SIGTERM, SIGKILL after stop_grace; idempotent; returns the exit code
    proc.kill()       # SIGKILL at once (fault tests: a crash, no clean shutdown)
    proc.restart()    # stop (or after kill) and start the same argv again: the same
                      # data dir and ports, so a service comes back with its state
    proc.log_tail()   # the last lines of this process's log, for error messages

``ready`` may raise ``OSError`` (refused connection, reset, timeout): that
counts as "not yet". It is called from the thread that called :meth:`start`.

Lifetime: by default (``detached=False``) the process dies with the Python
process that started it: the kernel kills it when the starting *thread* exits
(``PR_SET_PDEATHSIG``: start from a long-lived thread) and an ``atexit`` hook
stops whatever is still running. ``detached=True`` is for ``grayscope stack
up``, whose services outlive the command: record :attr:`pid` (and
:func:`process_start_time`) and stop it later with :func:`stop_pid`.
Every process gets its own session, so a terminal's Ctrl-C reaches only the
parent, which stops its services in order.

Also here: :func:`free_port` (a port reserved for this process, below the
kernel's ephemeral range), :func:`port_accepts`, :func:`http_ok`,
:func:`wait_for` (poll a condition with a deadline), :func:`pid_alive`.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import fcntl
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from pipeline.errors import ServiceError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

_PR_SET_PDEATHSIG = 1
_LOG_TAIL_CHARS = 3000
_LOG_ERROR_LINES = 8  # a failure names the log's first lines that say why
_LOG_ERROR_MARKERS = ("ERROR", "FATAL", "Exception", "Caused by", "panic:", "error:")

# free_port: ports drawn from here up to the ephemeral range; reservations (fd per port).
_PORT_RANGE_START = 10_000
_PORT_RESERVATIONS = Path(tempfile.gettempdir()) / "grayscope-ports"
_reserved_ports: dict[int, int] = {}
_port_draw = random.SystemRandom()  # not the global one, which tests seed alike in every worker


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (e.g. one build of a service at a time,
    across processes: test workers, ``stack fetch``)."""
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(
    binary: Path, what: str, tool: str, build: Callable[[str], None], *, needs: str = "Go"
) -> Path:
    """``binary`` from the service cache; else ``build(tool_path)`` makes it there, once
    across processes (under the cache entry's build lock; another process may have
    built it while this one waited). ``tool``: the compiler (``go``, a ``javac``) on
    PATH or as a path; ``needs`` names it in the error when it is missing."""
    if binary.exists():
        return binary
    tool_path = shutil.which(tool)
    if tool_path is None:
        raise ServiceError(f"no `{tool}` on PATH: building {what} needs {needs}")
    binary.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(binary.parent / ".build.lock"):
        if not binary.exists():
            build(tool_path)
    return binary


def _ephemeral_port_floor() -> int:
    """The lowest port the kernel hands out as a connection's source port."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _reserve_port(port: int) -> bool:
    """Take ``port`` for this process's lifetime, across processes on this machine: an
    ``flock`` on ``<tmp>/grayscope-ports/<port>``, held open until the process exits
    (the kernel drops it then, so a crash leaves nothing behind)."""
    if port in _reserved_ports:
        return False
    try:
        _PORT_RESERVATIONS.mkdir(parents=True, exist_ok=True)
        fd = os.open(_PORT_RESERVATIONS / str(port), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # another user's folder: reserve within this process only
        _reserved_ports[port] = -1
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _reserved_ports[port] = fd
    return True


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = LOOPBACK) -> int:
    """A loopback port that is free now and stays free for whoever binds it next.

    A port the kernel picks (``bind(0)``) is free only "a moment ago": the kernel may
    hand the same one to a connection as its source port, or to another process's
    ``bind(0)``, before a JVM seconds later binds it (a Kafka node then dies with
    ``BindException``). So the port is drawn below the ephemeral range, where no
    connection's source port comes from, and reserved for this process's lifetime
    (:func:`_reserve_port`), so no other caller of this function on the machine
    (a parallel test worker, a second ``grayscope stack``) draws it; a service
    restarted on its old ports finds them still its own. Only when that range is
    too small does it fall back to the kernel's pick."""
    floor = _ephemeral_port_floor()
    if floor - _PORT_RANGE_START >= 1000:
        for _ in range(500):
            port = _port_draw.randrange(_PORT_RANGE_START, floor)
            # A port in use by something that does not reserve stays reserved: no later
            # draw in this process tries it again.
            if _reserve_port(port) and _bindable(host, port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        picked: int = sock.getsockname()[1]
        return picked


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on host:port right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether GET url answers 2xx now (a readiness probe for HTTP services)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= int(response.status) < 300
    except (OSError, urllib.error.URLError, ValueError):
        return False


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll condition() (OSError = not yet) until true; ServiceError after timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            if condition():
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise ServiceError(f"{what}: not within {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of pid (clock ticks since boot); None if unknown.

    Stored next to a pid in a pid file, it tells a live service from an unrelated
    process that got the same pid after a reboot or a crash.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def stop_pid(pid: int, *, grace: float, start_time: int | None = None) -> bool:
    """SIGTERM a process we do not hold a handle on, SIGKILL after grace.

    With start_time, a pid that now belongs to another process is left alone.
    Returns whether the process was ours and running.
    """
    if not pid_alive(pid):
        return False
    if start_time is not None and process_start_time(pid) != start_time:
        log.info("pid %d is no longer the service that was started; leaving it", pid)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        log.warning("pid %d ignored SIGTERM for %.0f s, killing it", pid, grace)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while pid_alive(pid):
            time.sleep(0.05)
    return True


def _death_signal_preexec(parent_pid: int) -> Callable[[], None] | None:
    """A preexec_fn making the kernel kill the child when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    # Loaded here, in the parent: between fork and exec the child must not
    # import or allocate more than necessary.
    libc = ctypes.CDLL(libc_name, use_errno=True)
    prctl = libc.prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody would
        # ever send the signal.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


class ManagedProcess:
    """One service process: argv, log file, readiness probe, stop/kill/restart."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        ready: Callable[[], bool],
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 60.0,
        stop_grace: float = 15.0,
        detached: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.ready = ready
        self.cwd = cwd
        self.env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self.detached = detached
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._spawned_at = 0.0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    def start(self) -> Self:
        """Spawn the process and wait until ready() holds; ServiceError otherwise."""
        self.spawn()
        return self.wait_ready()

    def spawn(self) -> Self:
        """Start the process without waiting (start several, then wait_ready each)."""
        if self.running:
            raise ServiceError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with self.log_path.open("ab") as log_file:
            # Restarts append to the same log; remember where this run starts.
            self._log_offset = log_file.tell()
            log_file.write(f"--- grayscope: starting {' '.join(self.argv)}\n".encode())
            log_file.flush()
            try:
                self._proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=self.cwd,
                    env={**os.environ, **self.env},
                    start_new_session=True,
                    preexec_fn=None if self.detached else _death_signal_preexec(os.getpid()),
                    close_fds=True,
                )
            except OSError as exc:
                raise ServiceError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from exc
        if not self.detached:
            _live.add(self)
        self._spawned_at = started
        return self

    def wait_ready(self) -> Self:
        """Poll ready() until true; on failure or timeout kill the process, ServiceError."""
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        log.info(
            "%s ready in %.1f s (pid %d, log %s)",
            self.name,
            time.monotonic() - self._spawned_at,
            self.pid,
            self.log_path,
        )
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.05
        while True:
            if not self.running:
                raise ServiceError(
                    self._failure(f"{self.name} exited with code {self.returncode} during startup")
                )
            try:
                if self.ready():
                    return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise ServiceError(
                    self._failure(f"{self.name} not ready within {self.startup_timeout:.0f} s")
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def output(self) -> str:
        """What this run has written to its log so far."""
        try:
            with self.log_path.open("rb") as log_file:
                log_file.seek(self._log_offset)
                return log_file.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        return self.output()[-chars:].strip()

    def error_lines(self, limit: int = _LOG_ERROR_LINES) -> list[str]:
        """The first lines of this run's log that look like the reason it failed (a JVM's
        ``ERROR``/``Caused by``, a Go ``panic:``): the tail of a dying JVM is only its
        shutdown hooks."""
        found = [
            line.strip()
            for line in self.output().splitlines()
            if any(marker in line for marker in _LOG_ERROR_MARKERS)
        ]
        return found[:limit]

    def _failure(self, what: str) -> str:
        errors = self.error_lines()
        first = "first errors in it:\n" + "\n".join(errors) + "\nlast lines:\n" if errors else ""
        return f"{what}; log {self.log_path}; {first}{self.log_tail()}"

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after stop_grace; reaps the process. Idempotent."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=self.stop_grace)
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s (pid %d) ignored SIGTERM for %.0f s, killing it",
                    self.name,
                    proc.pid,
                    self.stop_grace,
                )
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        _live.discard(self)
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL now (a crash: no clean shutdown); reaps the process."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        _live.discard(self)
        return proc.returncode

    def restart(self) -> Self:
        """Stop (if running) and start the same command again: same data, same ports."""
        self.stop()
        return self.start()

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
        return f"ManagedProcess({self.name}, {state}, log={self.log_path})"


class ProcessService:
    """A service that runs as one :class:`ManagedProcess` (a Kafka node, an OpenSearch node).

    Subclasses set ``self.process`` and write their configuration in ``prepare``
    (called before every spawn, so a restart picks up changes);
    ``failure_detail`` adds what the service's own logs say when it never got ready.
    """

    process: ManagedProcess

    def prepare(self) -> None:
        """Write configuration files before the process starts."""

    def failure_detail(self) -> str:
        return ""

    def start(self) -> Self:
        return self.spawn().wait_ready()

    def spawn(self) -> Self:
        """Prepare and start the process without waiting for it."""
        self.prepare()
        self.process.spawn()
        return self

    def wait_ready(self) -> Self:
        try:
            self.process.wait_ready()
        except ServiceError as exc:
            detail = self.failure_detail()
            if not detail:
                raise
            raise ServiceError(f"{exc}\n{detail}") from exc
        log.info("%s ready", self.process.name)
        return self

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()

    def restart(self) -> None:
        """Stop and start again on the same data directory and ports."""
        self.process.stop()
        self.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()


_live: set[ManagedProcess] = set()


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(_live):
        proc.stop()

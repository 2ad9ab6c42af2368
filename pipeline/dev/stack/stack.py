"""``grayscope stack``: the real local services as detached processes under one folder.

Layout of a stack folder (``--dir``, default ``GRAYSCOPE_STACK_DIR``)::

    <dir>/<service>/            the service's data and config (kept by `down`)
    <dir>/<service>/*.log       its log
    <dir>/<service>/state.json  pid, process start time, ports, exported endpoints
                                (kept after `down`: the next `up` reuses the ports)

**Registration point for more services.** :data:`SERVICES` lists one
:class:`ServiceSpec` per service, in start order. A module adds its service
by defining a spec (a ``fetch`` that resolves/builds it into the cache and a
``start`` that starts it detached and says what it exports) and appending it
there: ``up``/``env``/``status``/``down`` and ``make services`` then handle it
with no other change. ``env`` prints only the services that run.
"""

from __future__ import annotations

import json
import logging
import shlex
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import StackSettings
from pipeline.dev.stack.jaeger import JaegerServer, build_jaeger
from pipeline.dev.stack.kafka import KafkaNode, kafka_lib
from pipeline.dev.stack.opensearch import OpenSearchNode, opensearch_lib
from pipeline.dev.stack.otelcol import build_otelcol
from pipeline.dev.stack.process import (
    LOOPBACK,
    ManagedProcess,
    pid_alive,
    port_accepts,
    process_start_time,
    stop_pid,
)
from pipeline.dev.stack.prometheus import (
    ALERTMANAGER_BINARY,
    PROMETHEUS_BINARY,
    RULES,
    WORKER_TARGET,
    Alertmanager,
    Prometheus,
    binary,
)

log = logging.getLogger(__name__)

STATE_FILE = "state.json"


@dataclass(frozen=True)
class Started:
    """What a running service leaves in its state file."""

    pid: int
    start_time: int | None
    #: ``GRAYSCOPE_*`` variables that point a worker at it (``stack env``).
    env: dict[str, str]
    #: Named ports, reused by the next ``up`` when still free (clients keep their config).
    ports: dict[str, int] = field(default_factory=dict)
    #: The port that must accept connections for ``status`` to call it up.
    probe_port: int = 0
    log_path: str = ""
    stop_grace: float = 30.0


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    #: Resolve or build the service into the cache (no-op when warm).
    fetch: Callable[[StackSettings], None]
    #: Start it detached in its folder (ports of the previous run, when still free).
    start: Callable[[StackSettings, Path, Mapping[str, int]], Started]
    #: Services that must answer before this one starts (the others start at once).
    needs: tuple[str, ...] = ()


def _reusable(ports: Mapping[str, int], name: str) -> int:
    port = int(ports.get(name, 0))
    return port if port and not port_accepts(LOOPBACK, port) else 0


def _java_home(settings: StackSettings) -> str | None:
    return settings.java_home or None


def _fetch_kafka(settings: StackSettings) -> None:
    kafka_lib(Path(settings.cache_dir))


def _start_kafka(settings: StackSettings, folder: Path, ports: Mapping[str, int]) -> Started:
    node = KafkaNode(
        data_dir=folder,
        lib=kafka_lib(Path(settings.cache_dir)),
        port=_reusable(ports, "broker"),
        controller_port=_reusable(ports, "controller"),
        java_home=_java_home(settings),
        detached=True,
    )
    node.start()
    return _started(
        node.process,
        {"GRAYSCOPE_KAFKA_BROKERS": node.bootstrap},
        {"broker": node.port, "controller": node.controller_port},
        probe_port=node.port,
    )


def _fetch_opensearch(settings: StackSettings) -> None:
    opensearch_lib(Path(settings.cache_dir))


def _start_opensearch(settings: StackSettings, folder: Path, ports: Mapping[str, int]) -> Started:
    node = OpenSearchNode(
        data_dir=folder,
        lib=opensearch_lib(Path(settings.cache_dir)),
        http_port=_reusable(ports, "http"),
        transport_port=_reusable(ports, "transport"),
        java_home=_java_home(settings),
        detached=True,
    )
    node.start()
    return _started(
        node.process,
        {"GRAYSCOPE_ES_URL": node.url},
        {"http": node.http_port, "transport": node.transport_port},
        probe_port=node.http_port,
    )


def _fetch_jaeger(settings: StackSettings) -> None:
    build_jaeger(Path(settings.cache_dir))


def _start_jaeger(settings: StackSettings, folder: Path, ports: Mapping[str, int]) -> Started:
    wanted = {name: _reusable(ports, name) for name in ports}
    server = JaegerServer(
        build_jaeger(Path(settings.cache_dir)), folder, ports=wanted, detached=True
    ).start()
    assert server.process is not None and server.ports is not None
    return _started(
        server.process,
        {
            "GRAYSCOPE_OTLP_ENDPOINT": server.otlp_grpc_endpoint,
            "GRAYSCOPE_JAEGER_URL": server.query_url,
        },
        server.ports.as_dict(),
        probe_port=server.ports.query_http,
    )


def _fetch_monitoring(settings: StackSettings) -> None:
    binary(PROMETHEUS_BINARY)  # Debian packages (make debian-packages): nothing to fetch
    binary(ALERTMANAGER_BINARY)


def _started(
    process: ManagedProcess, env: dict[str, str], ports: dict[str, int], *, probe_port: int
) -> Started:
    """The state file of a service just started as ``process``."""
    pid = process.pid
    assert pid is not None
    return Started(
        pid=pid,
        start_time=process_start_time(pid),
        env=env,
        ports=ports,
        probe_port=probe_port,
        log_path=str(process.log_path),
        stop_grace=process.stop_grace,
    )


def _start_alertmanager(settings: StackSettings, folder: Path, ports: Mapping[str, int]) -> Started:
    alertmanager = Alertmanager(
        folder, port=_reusable(ports, "http"), group_wait="10s", detached=True
    )
    alertmanager.start()
    assert alertmanager.process is not None
    return _started(
        alertmanager.process,
        {"GRAYSCOPE_ALERTMANAGER_URL": alertmanager.url},
        {"http": alertmanager.port},
        probe_port=alertmanager.port,
    )


def _start_prometheus(settings: StackSettings, folder: Path, ports: Mapping[str, int]) -> Started:
    # The alertmanager started just before (its state file names its port).
    try:
        alertmanager = json.loads((folder.parent / "alertmanager" / STATE_FILE).read_text())
        alertmanager_url: str | None = alertmanager["env"]["GRAYSCOPE_ALERTMANAGER_URL"]
    except (OSError, ValueError, KeyError):
        alertmanager_url = None
    prometheus = Prometheus(
        folder,
        scrape_targets=[WORKER_TARGET],
        targets_file=folder / "targets.json",  # add workers here; read without a restart
        rule_files=[RULES],
        alertmanager_url=alertmanager_url,
        port=_reusable(ports, "http"),
        detached=True,
    )
    prometheus.start()
    assert prometheus.process is not None
    return _started(
        prometheus.process,
        {"GRAYSCOPE_PROMETHEUS_URL": prometheus.url},
        {"http": prometheus.port},
        probe_port=prometheus.port,
    )


#: The stack's services in start order. Jaeger (GRAYSCOPE_OTLP_ENDPOINT,
#: GRAYSCOPE_JAEGER_URL) and Prometheus (GRAYSCOPE_PROMETHEUS_URL) append
#: their specs here.
SERVICES: list[ServiceSpec] = [
    ServiceSpec("kafka", _fetch_kafka, _start_kafka),
    ServiceSpec("opensearch", _fetch_opensearch, _start_opensearch),
    ServiceSpec("jaeger", _fetch_jaeger, _start_jaeger),
    ServiceSpec("alertmanager", _fetch_monitoring, _start_alertmanager),
    ServiceSpec("prometheus", _fetch_monitoring, _start_prometheus, needs=("alertmanager",)),
]


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: str  # "running", "not answering", "stopped"
    started: Started | None


class Stack:
    """The services of one stack folder."""

    def __init__(self, settings: StackSettings, folder: Path | None = None) -> None:
        self.settings = settings
        self.folder = (folder or Path(settings.stack_dir)).expanduser().resolve()

    def _state_path(self, name: str) -> Path:
        return self.folder / name / STATE_FILE

    def _load(self, name: str) -> Started | None:
        try:
            data: dict[str, Any] = json.loads(self._state_path(name).read_text())
            return Started(**data)
        except (OSError, ValueError, TypeError):
            return None

    def _alive(self, started: Started | None) -> bool:
        if started is None or not pid_alive(started.pid):
            return False
        return started.start_time is None or process_start_time(started.pid) == started.start_time

    def fetch(self) -> None:
        """Resolve every service into the cache (what `make services` runs); with
        ``GRAYSCOPE_STACK_OTELCOL`` the benchmark's OpenTelemetry Collector too."""
        for spec in SERVICES:
            spec.fetch(self.settings)
        if self.settings.stack_otelcol:
            # Not a service of the stack: the benchmark's peer, started by bench/otelcol.py.
            build_otelcol(Path(self.settings.cache_dir))

    def up(self, report: Callable[[str], None] = print) -> None:
        """Start every service that is not running; return once all answer.

        Fetches run one after another (Maven shares its local repository), then the
        services start at the same time (the JVMs' 20-60 s overlap), each after the
        ones it ``needs``. The processes are detached, so starting them from pool
        threads is safe."""
        started_now: list[tuple[ServiceSpec, Started]] = []
        lock = threading.Lock()
        to_start: list[tuple[ServiceSpec, Started | None]] = []
        for spec in SERVICES:
            previous = self._load(spec.name)
            if self._alive(previous):
                report(f"{spec.name}: already running (pid {previous.pid})")  # type: ignore[union-attr]
            else:
                spec.fetch(self.settings)
                to_start.append((spec, previous))

        def start(spec: ServiceSpec, previous: Started | None, needs: list[Future[None]]) -> None:
            for need in needs:
                need.result()  # raises when what this one needs failed
            folder = self.folder / spec.name
            folder.mkdir(parents=True, exist_ok=True)
            report(f"{spec.name}: starting (data and log in {folder})")
            started = spec.start(
                self.settings, folder, previous.ports if previous is not None else {}
            )
            self._state_path(spec.name).write_text(json.dumps(asdict(started), indent=2))
            with lock:
                started_now.append((spec, started))
            endpoints = " ".join(f"{k}={v}" for k, v in started.env.items())
            report(f"{spec.name}: up (pid {started.pid}) {endpoints}")

        pool = ThreadPoolExecutor(max(1, len(to_start)), thread_name_prefix="stack-up")
        try:
            futures: dict[str, Future[None]] = {}
            for spec, previous in to_start:  # SERVICES lists what a service needs first
                needs = [futures[name] for name in spec.needs if name in futures]
                futures[spec.name] = pool.submit(start, spec, previous, needs)
            for future in futures.values():
                future.result()
        except BaseException:
            # All or nothing for this call: what it started goes down again, once the
            # starts under way have ended (each is bounded by its startup timeout).
            pool.shutdown(wait=True, cancel_futures=True)
            for spec, started in reversed(started_now):
                stop_pid(started.pid, grace=started.stop_grace, start_time=started.start_time)
                self._state_path(spec.name).unlink(missing_ok=True)
            raise
        finally:
            pool.shutdown(wait=True)

    def env(self) -> dict[str, str]:
        """The endpoint variables of the services that run."""
        out: dict[str, str] = {}
        for spec in SERVICES:
            started = self._load(spec.name)
            if self._alive(started):
                out.update(started.env)  # type: ignore[union-attr]
        return out

    def status(self) -> list[ServiceStatus]:
        out = []
        for spec in SERVICES:
            started = self._load(spec.name)
            if not self._alive(started):
                out.append(ServiceStatus(spec.name, "stopped", started))
            elif (
                started is not None
                and started.probe_port
                and not port_accepts(LOOPBACK, started.probe_port)
            ):
                out.append(ServiceStatus(spec.name, "not answering", started))
            else:
                out.append(ServiceStatus(spec.name, "running", started))
        return out

    def down(self, report: Callable[[str], None] = print) -> None:
        """Stop every service this folder started (reverse order); data stays."""
        for spec in reversed(SERVICES):
            started = self._load(spec.name)
            if started is None:
                continue
            if self._alive(started):
                report(f"{spec.name}: stopping (pid {started.pid})")
                stop_pid(started.pid, grace=started.stop_grace, start_time=started.start_time)
            # The state file stays: the next `up` takes the same ports again, so
            # clients keep their configuration.


def export_lines(env: Mapping[str, str]) -> str:
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())

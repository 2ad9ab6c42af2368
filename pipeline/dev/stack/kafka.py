"""Apache Kafka 4.x in KRaft mode as a plain process (no Docker, no distribution tarball).

The jars come from Maven Central (``recipes/kafka/pom.xml``: ``kafka_2.13`` plus
slf4j-simple, since the artifact ships no logging backend) into
``<cache>/kafka-<version>/lib`` (:mod:`pipeline.dev.stack.fetch`). A node is
formatted once with ``kafka.tools.StorageTool format`` and runs as
``java -Xmx512m -cp 'lib/*' kafka.Kafka server.properties``::

    node = KafkaNode(data_dir=Path("/tmp/k1"), lib=kafka_lib(cache_dir))
    node.start()              # formats on first start, waits until the broker is
    node.bootstrap            # registered and unfenced; "127.0.0.1:<port>"
    node.process.kill()       # a crash (see pipeline.dev.stack.process)
    node.start()              # back on the same ports and log dir
    node.stop()

Parameters for clusters and security (the broker-fault and SASL tests):
``node_id``, ``port``/``controller_port`` (0 = a free port, kept across
restarts), ``voters`` (``"1@127.0.0.1:9093,2@…"``; default: this node alone),
``cluster_id`` (all nodes of one cluster share it), ``extra_properties``
(override or add any ``server.properties`` line, e.g. ``listeners``,
``listener.security.protocol.map``, ``sasl.enabled.mechanisms``),
``jvm_options`` (e.g. ``-Djava.security.auth.login.config=…``),
``format_options`` (more ``StorageTool format`` arguments, e.g. ``--add-scram
SCRAM-SHA-512=[name=u,password=p]`` for SCRAM users at bootstrap) and ``ready``
(a probe to use instead of the PLAINTEXT Metadata probe, for a node without a
PLAINTEXT listener).

Defaults are a single combined broker+controller for development: replication
factors 1, ``group.initial.rebalance.delay.ms=0`` (a lone consumer joins at
once), a small ``__consumer_offsets`` (5 partitions: created on the first
group, which waits for it).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from pipeline.dev.stack.fetch import java_binary, pom_property, resolve_jars
from pipeline.dev.stack.process import LOOPBACK, ManagedProcess, ProcessService, free_port
from pipeline.errors import ServiceError

log = logging.getLogger(__name__)

SERVICE: Final = "kafka"
HEAP: Final = "512m"

_METADATA_API_KEY: Final = 3
_METADATA_VERSION: Final = 4  # Kafka 4 dropped v0-v3 (KIP-896)
_PROBE_CORRELATION_ID: Final = 0x6772


def kafka_version() -> str:
    return pom_property(SERVICE, "kafka.version")


def kafka_lib(cache_dir: Path) -> Path:
    """The folder of Kafka's jars in the cache; fetched with Maven the first time."""
    return resolve_jars(SERVICE, kafka_version(), cache_dir)


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, base64url without padding (Kafka's Uuid)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka refuses ids that read like an option
            return text


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        buf += chunk
    return bytes(buf)


def metadata_brokers(host: str, port: int, timeout: float = 1.0) -> list[tuple[int, str, int]]:
    """A raw Metadata v4 request (no topics): the (node id, host, port) of each live broker.

    A broker lists itself only once the controller has registered and unfenced
    it, so this is the readiness check; raw, it is synchronous and free of any
    client library's retries.
    """
    client_id = b"grayscope-probe"
    header = struct.pack(
        f">hhih{len(client_id)}s",
        _METADATA_API_KEY,
        _METADATA_VERSION,
        _PROBE_CORRELATION_ID,
        len(client_id),
        client_id,
    )
    body = struct.pack(">ib", 0, 0)  # no topics, allow_auto_topic_creation=false
    request = header + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _read_exactly(sock, 4))
        payload = _read_exactly(sock, size)
    correlation_id, _throttle, count = struct.unpack_from(">iii", payload, 0)
    if correlation_id != _PROBE_CORRELATION_ID:
        raise ConnectionError(f"unexpected correlation id {correlation_id}")
    brokers: list[tuple[int, str, int]] = []
    pos = 12
    for _ in range(count):
        node_id, host_len = struct.unpack_from(">ih", payload, pos)
        pos += 6
        broker_host = payload[pos : pos + host_len].decode()
        pos += host_len
        broker_port, rack_len = struct.unpack_from(">ih", payload, pos)
        pos += 6 + max(rack_len, 0)
        brokers.append((node_id, broker_host, broker_port))
    return brokers


class KafkaNode(ProcessService):
    """One KRaft node (combined broker+controller by default) on loopback."""

    def __init__(
        self,
        *,
        data_dir: Path,
        lib: Path,
        node_id: int = 1,
        port: int = 0,
        controller_port: int = 0,
        voters: str | None = None,
        cluster_id: str | None = None,
        extra_properties: Mapping[str, str] | None = None,
        jvm_options: Sequence[str] = (),
        format_options: Sequence[str] = (),
        heap: str = HEAP,
        ready: Callable[[], bool] | None = None,
        java_home: str | None = None,
        startup_timeout: float = 90.0,
        stop_grace: float = 20.0,
        detached: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.lib = lib
        self.node_id = node_id
        self.host = LOOPBACK
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self.voters = voters or f"{node_id}@{self.host}:{self.controller_port}"
        self.extra_properties = dict(extra_properties or {})
        self.jvm_options = list(jvm_options)
        self.format_options = list(format_options)
        self.heap = heap
        self.java = java_binary(java_home)
        self._cluster_id = cluster_id
        self.process = ManagedProcess(
            f"kafka node {node_id}",
            self._argv(),
            log_path=data_dir / "kafka.log",
            ready=ready or self.registered,
            cwd=data_dir,
            startup_timeout=startup_timeout,
            stop_grace=stop_grace,
            detached=detached,
        )

    @property
    def bootstrap(self) -> str:
        """Bootstrap servers for clients (the PLAINTEXT listener)."""
        return f"{self.host}:{self.port}"

    @property
    def properties_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "kraft-logs"

    @property
    def cluster_id(self) -> str:
        """Kept in the data dir: a restart (or a second process) finds the same cluster."""
        stored = self.data_dir / "cluster.id"
        if self._cluster_id is None:
            self._cluster_id = stored.read_text().strip() if stored.exists() else new_cluster_id()
        return self._cluster_id

    def properties(self) -> dict[str, str]:
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters,
            "listeners": (
                f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.log_dir),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "5",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
        }
        props.update(self.extra_properties)
        return props

    def _argv(self) -> list[str]:
        return [
            self.java,
            f"-Xmx{self.heap}",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            *self.jvm_options,
            "-cp",
            f"{self.lib}/*",
            "kafka.Kafka",
            str(self.properties_path),
        ]

    def write_properties(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"{key}={value}" for key, value in self.properties().items()]
        self.properties_path.write_text("\n".join(lines) + "\n")

    def format_storage(self) -> None:
        """StorageTool format, once per log dir (``--ignore-formatted`` makes it idempotent)."""
        if (self.log_dir / "meta.properties").exists():
            return
        argv = [
            self.java,
            "-Xmx256m",
            *self.jvm_options,
            "-cp",
            f"{self.lib}/*",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            self.cluster_id,
            "-c",
            str(self.properties_path),
            "--ignore-formatted",
            *self.format_options,
        ]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ServiceError(
                f"kafka storage format failed: {(result.stdout + result.stderr)[-2000:]}"
            )
        (self.data_dir / "cluster.id").write_text(self.cluster_id + "\n")

    def registered(self) -> bool:
        """Readiness: the broker answers Metadata and lists itself (registered, unfenced)."""
        try:
            brokers = metadata_brokers(self.host, self.port)
        except (OSError, struct.error):
            return False
        return any(node_id == self.node_id for node_id, _, _ in brokers)

    def prepare(self) -> None:
        """Write the config and format storage the first time."""
        self.write_properties()
        self.format_storage()


# --- client helpers (tests, demo, benches) ---------------------------------------

_TOPIC_ALREADY_EXISTS: Final = 36


async def create_topics(
    bootstrap: str,
    names: Sequence[str],
    partitions: int = 1,
    *,
    replication_factor: int = 1,
    configs: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> None:
    """Create topics (existing ones are left as they are) and wait for their leaders.

    CreateTopics answers before every partition has an elected leader; a
    producer that comes right after would see NotLeaderForPartition.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        await admin.start()
        response = await admin.create_topics(
            [
                NewTopic(name, partitions, replication_factor, topic_configs=dict(configs or {}))
                for name in names
            ],
            timeout_ms=int(timeout * 1000),
        )
    except KafkaError as exc:
        raise ServiceError(f"cannot create topics {list(names)}: {exc}") from exc
    finally:
        await admin.close()
    failed = [
        f"{topic}: {code} {message}"
        for topic, code, message in response.topic_errors
        if code not in (0, _TOPIC_ALREADY_EXISTS)
    ]
    if failed:
        raise ServiceError(f"cannot create topics: {'; '.join(failed)}")
    await wait_for_leaders(bootstrap, names, timeout=timeout)


async def wait_for_leaders(bootstrap: str, names: Sequence[str], *, timeout: float = 30.0) -> None:
    """Wait until every partition of the topics has a leader."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    deadline = time.monotonic() + timeout
    try:
        await consumer.start()
        cluster = consumer._client.cluster
        while True:
            await consumer._client.force_metadata_update()
            missing = [
                name
                for name in names
                if not cluster.partitions_for_topic(name)
                or any(
                    cluster.leader_for_partition(TopicPartition(name, p)) in (None, -1)
                    for p in cluster.partitions_for_topic(name) or ()
                )
            ]
            if not missing:
                return
            if time.monotonic() >= deadline:
                raise ServiceError(f"topics without leaders after {timeout:.0f} s: {missing}")
            await asyncio.sleep(0.1)
    except KafkaError as exc:
        raise ServiceError(f"cannot read metadata of {list(names)}: {exc}") from exc
    finally:
        await consumer.stop()


async def wait_for_group_coordinator(
    bootstrap: str, *, group: str = "grayscope-warm-up", timeout: float = 60.0
) -> None:
    """Wait until groups have a coordinator.

    A fresh cluster creates ``__consumer_offsets`` on the first FindCoordinator
    and answers COORDINATOR_NOT_AVAILABLE until its partitions have leaders; a
    first consumer group (a worker, a test) would spend that time in retries.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    deadline = time.monotonic() + timeout
    try:
        await admin.start()
        while True:
            try:
                await admin.find_coordinator(group)
                return
            except KafkaError as exc:
                if time.monotonic() >= deadline:
                    raise ServiceError(
                        f"no group coordinator after {timeout:.0f} s: {exc}"
                    ) from exc
                await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def topic_names(bootstrap: str, *, timeout: float = 10.0) -> set[str]:
    """Names of the topics the cluster has now."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        await admin.start()
        return set(await admin.list_topics())
    except KafkaError as exc:
        raise ServiceError(f"cannot list topics: {exc}") from exc
    finally:
        await admin.close()


async def topic_partitions(bootstrap: str, topic: str) -> set[int]:
    """The partition numbers of a topic (empty if it does not exist; never auto-creates it).

    From a full metadata fetch: ``AIOKafkaConsumer.topics()`` fetches one but does
    not update the consumer's own view, so ``partitions_for_topic`` right after it
    may still answer None.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        await consumer.start()
        cluster = await consumer._client.fetch_all_metadata()
        return set(cluster.partitions_for_topic(topic) or ())
    except KafkaError as exc:
        raise ServiceError(f"cannot read the metadata of {topic}: {exc}") from exc
    finally:
        await consumer.stop()


async def produce_values(
    bootstrap: str,
    topic: str,
    values: Iterable[bytes | str],
    *,
    partition: int | None = None,
    key: bytes | None = None,
    acks: int | str = "all",
) -> list[tuple[int, int]]:
    """Send values in order and wait for each ack; returns (partition, offset) per value."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=acks)
    placed: list[tuple[int, int]] = []
    try:
        await producer.start()
        for value in values:
            raw = value.encode() if isinstance(value, str) else value
            meta = await producer.send_and_wait(topic, raw, key=key, partition=partition)
            placed.append((meta.partition, meta.offset))
    except KafkaError as exc:
        raise ServiceError(f"cannot produce to {topic}: {exc}") from exc
    finally:
        await producer.stop()
    return placed


async def read_topic(
    bootstrap: str, topic: str, *, timeout: float = 20.0
) -> list[ConsumerRecord[Any, Any]]:
    """Every record currently in the topic, all partitions, without a consumer group.

    Records are ordered by (partition, offset); a topic that does not exist
    reads as empty (and is not auto-created).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    records: list[ConsumerRecord[Any, Any]] = []
    try:
        await consumer.start()
        # A full metadata fetch, not the topic's own: that would auto-create it.
        if topic not in await consumer.topics():
            return []
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            # Listed before its partitions' metadata arrived (a topic just made).
            await wait_for_leaders(bootstrap, [topic], timeout=timeout)
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        pending = {tp for tp in assigned if ends[tp] > 0}
        async with asyncio.timeout(timeout):
            while pending:
                batch = await consumer.getmany(*pending, timeout_ms=200)
                for recs in batch.values():
                    records.extend(recs)
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
    except KafkaError as exc:
        raise ServiceError(f"cannot read {topic}: {exc}") from exc
    except TimeoutError as exc:
        raise ServiceError(f"reading {topic} took longer than {timeout} s") from exc
    finally:
        await consumer.stop()
    records.sort(key=lambda r: (r.partition, r.offset))
    return records

"""Fixtures for integration tests: real Apache Kafka (KRaft) and OpenSearch processes.

Both come from ``pipeline.dev.stack`` (jars fetched into the grayscope cache by
``make services``; a warm cache fetches nothing) and run on free loopback ports.

- ``kafka`` / ``bootstrap`` (session): one broker for the whole run, started
  together with ``opensearch``; tests isolate themselves with ``unique_topic`` /
  ``topic_factory`` and unique group ids (``unique_name``). Never stop it in a
  test: use ``kafka_factory`` for a broker a test may kill or restart.
- ``opensearch`` (session): one node for the whole run. ``store`` (function) is
  that node, wiped before the test (every data stream, index and template
  deleted: tests run one at a time, so each sees an empty cluster). Tests that
  stop the store use ``store_factory`` (a dedicated node, on its own data dir:
  ``stop()`` / ``start()`` bring it back on the same URL with its data).
- ``produce_lines`` / ``read_records``: aiokafka helpers bound to ``bootstrap``.
- ``faust_settings``: the Faust ``App`` keyword settings a test app needs.

Every test under this directory is marked ``integration``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from agents.app import METADATA_MAX_AGE_MS
from pipeline.config import StackSettings
from pipeline.dev.stack.kafka import (
    KafkaNode,
    create_topics,
    kafka_lib,
    produce_values,
    read_topic,
    wait_for_group_coordinator,
)
from pipeline.dev.stack.opensearch import SLIM_MODULES, OpenSearchNode, opensearch_lib
from tests.integration.jaeger_fixtures import (  # noqa: F401 - fixtures, registered here
    jaeger,
    jaeger_binary,
    jaeger_query,
    jaeger_relay,
)
from tests.integration.worker_proc import WorkerProcess

log = logging.getLogger(__name__)

_HERE = Path(__file__).parent
DEFAULT_PARTITIONS = 3

#: Session and heartbeat for consumers in tests: Kafka's smallest allowed session
#: (group.min.session.timeout.ms, 6 s) so a killed member's partitions move fast.
SESSION_TIMEOUT_S = 6.0

TopicFactory = Callable[..., Awaitable[str]]
ProduceLines = Callable[..., Awaitable[list[tuple[int, int]]]]
ReadRecords = Callable[[str], Awaitable[list[ConsumerRecord[Any, Any]]]]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "partitions(n): number of partitions of the unique_topic fixture"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # This hook sees every collected item, not only this directory's.
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def stack_settings() -> StackSettings:
    return StackSettings.model_validate({})


@pytest.fixture(scope="session")
def kafka_jars(stack_settings: StackSettings) -> Path:
    return kafka_lib(Path(stack_settings.cache_dir))


@pytest.fixture(scope="session")
def opensearch_jars(stack_settings: StackSettings) -> Path:
    return opensearch_lib(Path(stack_settings.cache_dir))


#: JVM options of every Kafka and OpenSearch node the tests start: the client
#: compiler only (C1). A test node indexes thousands of documents, not millions,
#: and the suite starts about thirty JVMs: C2's optimising compilation is most of
#: a node's start. Measured (one node each, start to ready): Kafka 5.4 -> 3.2 CPU
#: seconds (11.1 -> 6.4 s), OpenSearch 10.4 -> 5.5 (14.6 -> 8.8 s). `make bench` and
#: `grayscope stack up` keep the JVM's defaults.
TEST_JVM_OPTIONS = ("-XX:TieredStopAtLevel=1",)


def new_opensearch(data_dir: Path, lib: Path, **kwargs: Any) -> OpenSearchNode:
    kwargs.setdefault("jvm_options", TEST_JVM_OPTIONS)
    return OpenSearchNode(data_dir=data_dir, lib=lib, modules=SLIM_MODULES, **kwargs)


def new_kafka(data_dir: Path, lib: Path, **kwargs: Any) -> KafkaNode:
    kwargs.setdefault("jvm_options", TEST_JVM_OPTIONS)
    return KafkaNode(data_dir=data_dir, lib=lib, **kwargs)


@pytest.fixture(scope="session")
def _services(
    tmp_path_factory: pytest.TempPathFactory, kafka_jars: Path, opensearch_jars: Path
) -> Iterator[tuple[KafkaNode, OpenSearchNode]]:
    """The session's broker and store, started at the same time (from the main thread)."""
    kafka = new_kafka(tmp_path_factory.mktemp("kafka"), kafka_jars)
    store = new_opensearch(tmp_path_factory.mktemp("opensearch"), opensearch_jars)
    started = time.monotonic()
    try:
        kafka.spawn()
        store.spawn()
        kafka.wait_ready()
        # While OpenSearch starts: the first consumer group of a fresh cluster would
        # otherwise wait for __consumer_offsets inside whichever test comes first.
        asyncio.run(wait_for_group_coordinator(kafka.bootstrap))
        store.wait_ready()
        log.warning(
            "session services ready in %.1f s: kafka %s, opensearch %s",
            time.monotonic() - started,
            kafka.bootstrap,
            store.url,
        )
        yield kafka, store
    finally:
        store.stop()
        kafka.stop()


@pytest.fixture(scope="session")
def kafka(_services: tuple[KafkaNode, OpenSearchNode]) -> KafkaNode:
    return _services[0]


@pytest.fixture(scope="session")
def opensearch(_services: tuple[KafkaNode, OpenSearchNode]) -> OpenSearchNode:
    return _services[1]


@pytest.fixture(scope="session")
def bootstrap(kafka: KafkaNode) -> str:
    return kafka.bootstrap


@pytest.fixture
def store(opensearch: OpenSearchNode) -> OpenSearchNode:
    """The session's OpenSearch node, emptied for this test. Do not stop it."""
    opensearch.wipe()
    return opensearch


class SpareStores:
    """Dedicated OpenSearch nodes for tests that stop a store or need odd settings,
    spawned together when a module starts (``specs``: name -> OpenSearchNode keyword
    arguments) so their 20-60 s of startup overlap the other tests' work; a test
    takes one with :meth:`take` (waiting for it if needed). Spawn and stop from the main thread."""

    def __init__(self, base: Path, lib: Path, specs: Mapping[str, Mapping[str, Any]]) -> None:
        self.base, self.lib, self.specs = base, lib, dict(specs)
        self.nodes = {name: new_opensearch(base / name, lib, **kw) for name, kw in specs.items()}
        self.taken: set[str] = set()

    def __enter__(self) -> SpareStores:
        for node in self.nodes.values():
            node.spawn()
        return self

    def __exit__(self, *exc: object) -> None:
        for node in self.nodes.values():
            node.kill()  # throwaway nodes: a graceful OpenSearch shutdown costs seconds each

    def take(self, name: str) -> OpenSearchNode:
        """The node ``name``, once ready; a name taken before (a rerun) or unknown gets
        a new node of the same spec, started now."""
        if name in self.taken or name not in self.nodes:
            fresh = f"{name}-extra-{len(self.nodes)}"
            self.nodes[fresh] = new_opensearch(
                self.base / fresh, self.lib, **self.specs.get(name, {})
            )
            self.nodes[fresh].spawn()
            name = fresh
        self.taken.add(name)
        return self.nodes[name].wait_ready()

    def take_next(self, prefix: str) -> OpenSearchNode:
        """The first node whose name starts with ``prefix`` not taken yet."""
        free = [n for n in self.nodes if n.startswith(prefix) and n not in self.taken]
        return self.take(free[0] if free else prefix)


@pytest.fixture
def store_factory(tmp_path: Path, opensearch_jars: Path) -> Iterator[Callable[..., OpenSearchNode]]:
    """Dedicated OpenSearch nodes a test may stop and start; all killed at teardown.

    ``store_factory(**kwargs)`` starts one (keyword arguments of OpenSearchNode,
    e.g. ``write_queue_size``); ``store_factory(start=False)`` only prepares it.
    """
    nodes: list[OpenSearchNode] = []

    def make(*, start: bool = True, **kwargs: Any) -> OpenSearchNode:
        node = new_opensearch(tmp_path / f"opensearch-{len(nodes)}", opensearch_jars, **kwargs)
        nodes.append(node)
        return node.start() if start else node

    yield make
    for node in nodes:
        node.kill()  # throwaway nodes: their data goes with the test


@pytest.fixture
def kafka_factory(tmp_path: Path, kafka_jars: Path) -> Iterator[Callable[..., KafkaNode]]:
    """Dedicated Kafka nodes a test may kill and restart; all killed at teardown.

    Keyword arguments go to KafkaNode (node_id, voters, cluster_id,
    extra_properties, ...); ``start=False`` only prepares the node.
    """
    nodes: list[KafkaNode] = []

    def make(*, start: bool = True, **kwargs: Any) -> KafkaNode:
        data_dir = kwargs.pop("data_dir", tmp_path / f"kafka-{len(nodes)}")
        node = new_kafka(data_dir, kafka_jars, **kwargs)
        nodes.append(node)
        return node.start() if start else node

    yield make
    for node in nodes:
        node.kill()  # throwaway nodes: a controlled Kafka shutdown costs seconds


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], WorkerProcess]]:
    """``workers(env)`` starts ``grayscope worker`` as a subprocess with ``env`` added
    to the environment (its log in the test's tmp dir); all killed at teardown."""
    started: list[WorkerProcess] = []

    def start(env: dict[str, str]) -> WorkerProcess:
        started.append(WorkerProcess(env, tmp_path / f"worker-{len(started)}.log").start())
        return started[-1]

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture
def topic_factory(bootstrap: str) -> TopicFactory:
    """``await topic_factory(partitions=3, prefix="t")`` creates a uniquely named topic."""

    async def make(partitions: int = DEFAULT_PARTITIONS, prefix: str = "t") -> str:
        name = unique_name(prefix)
        await create_topics(bootstrap, [name], partitions)
        return name

    return make


@pytest.fixture
async def unique_topic(request: pytest.FixtureRequest, topic_factory: TopicFactory) -> str:
    """A new topic; ``@pytest.mark.partitions(n)`` sets its partition count."""
    marker = request.node.get_closest_marker("partitions")
    partitions = int(marker.args[0]) if marker else DEFAULT_PARTITIONS
    return await topic_factory(partitions=partitions)


@pytest.fixture
def produce_lines(bootstrap: str) -> ProduceLines:
    """``await produce_lines(topic, lines, partition=None, key=None)`` -> [(partition, offset)]."""

    async def produce(
        topic: str,
        lines: Iterable[bytes | str],
        *,
        partition: int | None = None,
        key: bytes | None = None,
    ) -> list[tuple[int, int]]:
        return await produce_values(bootstrap, topic, lines, partition=partition, key=key)

    return produce


@pytest.fixture
def read_records(bootstrap: str) -> ReadRecords:
    """``await read_records(topic)`` -> every record, ordered by (partition, offset)."""

    async def read(topic: str) -> list[ConsumerRecord[Any, Any]]:
        return await read_topic(bootstrap, topic)

    return read


@pytest.fixture
def faust_settings(tmp_path: Path) -> dict[str, Any]:
    """Keyword settings for a test ``faust.App`` against the session broker.

    ``datadir`` is per test: Faust's default is a directory in the working
    directory, which would litter the checkout.
    """
    return {
        "broker_session_timeout": SESSION_TIMEOUT_S,
        "broker_heartbeat_interval": SESSION_TIMEOUT_S / 4,
        "broker_rebalance_timeout": 10.0,
        "datadir": str(tmp_path / "faust-data"),
        "web_enabled": False,
        "store": "memory://",
        "consumer_auto_offset_reset": "earliest",
        "consumer_metadata_max_age_ms": METADATA_MAX_AGE_MS,  # as the worker's app
    }

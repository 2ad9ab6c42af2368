"""Fixtures for integration tests: real tansu broker and osmem store processes.

- ``broker`` (session): one embedded broker for the whole run; tests isolate
  themselves with ``unique_topic`` / ``topic_factory`` and unique group ids.
  Never stop or restart it in a test: use ``broker_factory`` for outages.
- ``store`` (function): a fresh, empty store per test (starting one takes
  ~30 ms); ``store_factory`` starts more, e.g. to stop one and start it again
  on the same port.
- ``produce_lines`` / ``read_records``: aiokafka helpers bound to ``broker``.
- ``faust_settings``: the Faust ``App`` keyword settings a test app needs
  against the embedded broker (see ``pipeline.dev.embedded.broker``).

Every test under this directory is marked ``integration``.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from pipeline.dev.embedded.broker import (
    FAUST_EMBEDDED_SETTINGS,
    EmbeddedBroker,
    create_topics,
    produce_values,
    read_topic,
)
from pipeline.dev.embedded.store import EmbeddedStore

_HERE = Path(__file__).parent
DEFAULT_PARTITIONS = 3

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
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker.start(log_path=log_path) as running:
        yield running


@pytest.fixture(scope="session")
def bootstrap(broker: EmbeddedBroker) -> str:
    return broker.bootstrap


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., EmbeddedBroker]]:
    """Dedicated brokers a test may stop and restart; all stopped at teardown."""
    started: list[EmbeddedBroker] = []

    def start(port: int | None = None) -> EmbeddedBroker:
        log_path = tmp_path / f"tansu-{len(started)}.log"
        started.append(EmbeddedBroker.start(port=port, log_path=log_path))
        return started[-1]

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def store_factory(tmp_path: Path) -> Iterator[Callable[..., EmbeddedStore]]:
    """Fresh stores; all stopped at teardown."""
    started: list[EmbeddedStore] = []

    def start(port: int | None = None) -> EmbeddedStore:
        log_path = tmp_path / f"osmem-{len(started)}.log"
        started.append(EmbeddedStore.start(port=port, log_path=log_path))
        return started[-1]

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def store(store_factory: Callable[..., EmbeddedStore]) -> EmbeddedStore:
    return store_factory()


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
    """Keyword settings for a test ``faust.App`` against the embedded broker.

    ``datadir`` is per test: Faust's default is a directory in the working
    directory, which would litter the checkout.
    """
    return {
        **FAUST_EMBEDDED_SETTINGS,
        "datadir": str(tmp_path / "faust-data"),
        "web_enabled": False,
        "store": "memory://",
        "consumer_auto_offset_reset": "earliest",
    }

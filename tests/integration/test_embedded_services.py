"""Smoke tests for the embedded broker and store the other integration tests rely on."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.dev.embedded.broker import (
    AIOKAFKA_EMBEDDED_GROUP_SETTINGS,
    EmbeddedBroker,
    create_topics,
    produce_values,
    read_topic,
    topic_names,
)
from pipeline.dev.embedded.ports import EmbeddedServiceError, port_accepts
from pipeline.dev.embedded.store import EmbeddedStore, StoreHTTPError
from tests.integration.conftest import ProduceLines, ReadRecords, TopicFactory, unique_name

# Guards against hangs, never asserted on: generous for a loaded 2-core box.
GUARD = 60.0


def _gone(pid: int) -> bool:
    """Whether pid has exited (a zombie awaiting a reaper counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + GUARD
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _group_consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **AIOKAFKA_EMBEDDED_GROUP_SETTINGS,
    )


async def _consume(consumer: AIOKafkaConsumer, count: int) -> list[Any]:
    got: list[Any] = []
    async with asyncio.timeout(GUARD):
        while len(got) < count:
            batch = await consumer.getmany(timeout_ms=200, max_records=count - len(got))
            for records in batch.values():
                got.extend(records)
    return got


# --- broker -----------------------------------------------------------------


async def test_produce_and_read_back(
    unique_topic: str, produce_lines: ProduceLines, read_records: ReadRecords
) -> None:
    placed = await produce_lines(unique_topic, ["a", "b", "c"], partition=0)

    records = await read_records(unique_topic)

    assert placed == [(0, 0), (0, 1), (0, 2)]
    assert [r.value for r in records] == [b"a", b"b", b"c"]


@pytest.mark.partitions(4)
async def test_multiple_partitions(
    unique_topic: str, produce_lines: ProduceLines, read_records: ReadRecords
) -> None:
    for partition in range(4):
        await produce_lines(
            unique_topic, [f"p{partition}-{i}" for i in range(3)], partition=partition
        )

    records = await read_records(unique_topic)

    assert {r.partition for r in records} == {0, 1, 2, 3}
    assert [(r.partition, r.offset, r.value) for r in records] == [
        (p, i, f"p{p}-{i}".encode()) for p in range(4) for i in range(3)
    ]


async def test_reading_a_missing_topic_is_empty_and_does_not_create_it(bootstrap: str) -> None:
    name = unique_name("missing")

    assert await read_topic(bootstrap, name) == []
    assert name not in await topic_names(bootstrap)


async def test_create_topics_is_idempotent(bootstrap: str, read_records: ReadRecords) -> None:
    name = unique_name("twice")
    await create_topics(bootstrap, [name], 2)
    await produce_values(bootstrap, name, ["kept"], partition=1)

    await create_topics(bootstrap, [name], 2)

    assert [r.value for r in await read_records(name)] == [b"kept"]


async def test_consumer_group_resumes_from_committed_offsets(
    bootstrap: str, unique_topic: str, produce_lines: ProduceLines
) -> None:
    group = unique_name("g")
    for partition in range(3):
        await produce_lines(
            unique_topic, [f"{partition}-{i}" for i in range(4)], partition=partition
        )
    first = _group_consumer(bootstrap, unique_topic, group)
    await first.start()
    try:
        seen = await _consume(first, 5)
        committed = {}
        for record in seen:
            committed[TopicPartition(record.topic, record.partition)] = record.offset + 1
        await first.commit(committed)
    finally:
        await first.stop()

    second = _group_consumer(bootstrap, unique_topic, group)
    await second.start()
    try:
        rest = await _consume(second, 12 - len(seen))
    finally:
        await second.stop()

    values = sorted(r.value for r in seen + rest)
    assert values == sorted(f"{p}-{i}".encode() for p in range(3) for i in range(4))


async def test_faust_agent_round_trip_commits_and_resumes(
    bootstrap: str,
    topic_factory: TopicFactory,
    produce_lines: ProduceLines,
    read_records: ReadRecords,
    faust_settings: dict[str, Any],
) -> None:
    source = await topic_factory(partitions=2, prefix="faust-in")
    sink = await topic_factory(partitions=1, prefix="faust-out")
    app_id = unique_name("faust-app")
    await produce_lines(source, [f"m{i}" for i in range(6)])

    first = await _run_faust_until(bootstrap, app_id, source, sink, faust_settings, expect=6)
    await produce_lines(source, [f"m{i}" for i in range(6, 9)])
    second = await _run_faust_until(bootstrap, app_id, source, sink, faust_settings, expect=3)

    assert sorted(first) == [f"m{i}".encode() for i in range(6)]
    # Committed on stop: the restarted app (same group) sees only new records.
    assert sorted(second) == [b"m6", b"m7", b"m8"]
    assert sorted(r.value for r in await read_records(sink)) == [
        f"out:m{i}".encode() for i in range(9)
    ]


async def _run_faust_until(
    bootstrap: str,
    app_id: str,
    source: str,
    sink: str,
    settings: dict[str, Any],
    *,
    expect: int,
) -> list[bytes]:
    app = faust.App(app_id, broker=f"kafka://{bootstrap}", **settings)
    source_topic = app.topic(source, value_type=bytes, value_serializer="raw")
    sink_topic = app.topic(sink, value_type=bytes, value_serializer="raw")
    seen: list[bytes] = []
    done = asyncio.Event()

    @app.agent(source_topic)
    async def forward(stream: Any) -> None:
        async for value in stream:
            await sink_topic.send(value=b"out:" + value)
            seen.append(value)
            if len(seen) >= expect:
                done.set()

    await app.start()
    try:
        async with asyncio.timeout(GUARD):
            await done.wait()
        # A short settle: anything beyond `expect` would show up here.
        await asyncio.sleep(0.5)
    finally:
        await app.stop()
    return seen


def test_broker_restart_on_same_port_is_empty(
    broker_factory: Callable[..., EmbeddedBroker],
) -> None:
    dedicated = broker_factory()
    port, old_pid = dedicated.port, dedicated.pid
    name = unique_name("lost")
    asyncio.run(produce_values(dedicated.bootstrap, name, ["x"]))

    dedicated.restart()

    assert dedicated.running and dedicated.port == port and dedicated.pid != old_pid
    assert old_pid is not None and _gone(old_pid)
    # Memory storage: the restarted broker has forgotten the topic.
    assert asyncio.run(read_topic(dedicated.bootstrap, name)) == []
    asyncio.run(produce_values(dedicated.bootstrap, name, ["y"]))
    assert [r.value for r in asyncio.run(read_topic(dedicated.bootstrap, name))] == [b"y"]


def test_broker_refuses_a_taken_port(broker: EmbeddedBroker, tmp_path: Path) -> None:
    with pytest.raises(EmbeddedServiceError, match="already in use"):
        EmbeddedBroker.start(port=broker.port, log_path=tmp_path / "b.log")


def test_broker_startup_failure_names_the_log(tmp_path: Path) -> None:
    fake = tmp_path / "fake-tansu"
    fake.write_text("#!/bin/sh\necho 'boom: cannot start' >&2\nexit 3\n")
    fake.chmod(0o755)

    with pytest.raises(EmbeddedServiceError, match="boom: cannot start") as caught:
        EmbeddedBroker.start(binary=str(fake), log_path=tmp_path / "fake.log")

    assert str(tmp_path / "fake.log") in str(caught.value)


# --- store ------------------------------------------------------------------


def test_store_bulk_and_search(store: EmbeddedStore) -> None:
    info = store.request("GET", "/")
    result = store.request(
        "POST",
        "/_bulk?refresh=true",
        ndjson=[
            {"index": {"_index": "smoke", "_id": "1"}},
            {"gray": {"id": "abc12345"}, "n": 1},
            {"index": {"_index": "smoke", "_id": "2"}},
            {"gray": {"id": "zzz99999"}, "n": 2},
        ],
    )
    hits = store.request("POST", "/smoke/_search", {"query": {"term": {"gray.id": "abc12345"}}})[
        "hits"
    ]

    assert info["version"]["distribution"] == "opensearch"
    assert result["errors"] is False
    assert [h["_id"] for h in hits["hits"]] == ["1"]


def test_store_outage_and_return_on_same_port(store: EmbeddedStore) -> None:
    url, old_pid = store.url, store.pid
    store.request("PUT", "/before/_doc/1?refresh=true", {"n": 1})

    store.stop()
    with pytest.raises(EmbeddedServiceError):
        store.request("GET", "/", timeout=2.0)
    store.start_again()

    assert store.url == url and store.pid != old_pid
    assert old_pid is not None and _gone(old_pid)
    with pytest.raises(StoreHTTPError) as missing:
        store.request("GET", "/before/_doc/1")
    assert missing.value.status == 404
    store.request("PUT", "/after/_doc/1?refresh=true", {"n": 2})
    assert store.request("GET", "/after/_doc/1")["_source"] == {"n": 2}


def test_store_restart_keeps_the_url(store: EmbeddedStore) -> None:
    url = store.url

    store.restart()

    assert store.url == url
    assert store.request("GET", "/")["version"]["distribution"] == "opensearch"


def test_store_refuses_a_taken_port(store: EmbeddedStore, tmp_path: Path) -> None:
    with pytest.raises(EmbeddedServiceError, match="already in use"):
        EmbeddedStore.start(port=store.port, log_path=tmp_path / "s.log")


# --- process hygiene ----------------------------------------------------------


def test_stop_leaves_no_process_and_frees_the_port(
    broker_factory: Callable[..., EmbeddedBroker],
    store_factory: Callable[..., EmbeddedStore],
) -> None:
    dedicated_broker, dedicated_store = broker_factory(), store_factory()
    pids = [dedicated_broker.pid, dedicated_store.pid]

    dedicated_broker.stop()
    dedicated_store.stop()
    dedicated_broker.stop()  # idempotent

    assert all(pid is not None and _gone(pid) for pid in pids)
    assert not port_accepts(dedicated_broker.host, dedicated_broker.port)
    assert not port_accepts(dedicated_store.host, dedicated_store.port)
    assert not dedicated_broker.running and not dedicated_store.running


def test_services_die_with_a_killed_parent(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from pipeline.dev.embedded.broker import EmbeddedBroker
        from pipeline.dev.embedded.store import EmbeddedStore
        b = EmbeddedBroker.start(log_path={str(tmp_path / "b.log")!r})
        s = EmbeddedStore.start(log_path={str(tmp_path / "s.log")!r})
        print(b.pid, s.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()

    assert len(pids) == 2
    assert all(_wait_gone(pid) for pid in pids)

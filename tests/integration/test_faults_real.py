"""Faults on the real services: Apache Kafka (KRaft) and OpenSearch as plain processes.

Every test ends with the same ledger: each produced message is stored (by its
``_id``, ``<topic>-<partition>-<offset>``) or dead-lettered, exactly once, and
no committed offset is past a message that is neither (read with a consumer
that never joins the group).

- a three-node KRaft cluster (``default.replication.factor=3``,
  ``min.insync.replicas=2``): ``grayscope setup`` creates the topics with the
  cluster's replication factor; a broker SIGKILLed mid-stream and restarted on
  its log dir; three workers on six partitions, one SIGKILLed and one added;
- a lone broker SIGKILLed mid-stream (a full Kafka outage) and restarted on its log dir;
- OpenSearch stopped mid-stream and restarted on its data;
- real bulk rejections (429 ``es_rejected_execution_exception``) from a node
  with one write thread and a write queue of one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.dev.stack.kafka import KafkaNode, create_topics, produce_values, read_topic
from pipeline.dev.stack.opensearch import OpenSearchNode, request_json
from pipeline.dev.synth import generate
from tests.integration.conftest import SpareStores, unique_name
from tests.integration.worker_proc import WorkerProcess

INDEX = "grayscope-access-*"
KAFKA_MIN_SESSION_S = 6  # Kafka's group.min.session.timeout.ms
# Upper bounds only (nothing is timed): generous, a shared 2-core box runs these at load 30.
SLOW = 180.0
BAD_LINES = [b"garbage that is no log", b'{"no": "access log keys"}']
MAX_HITS = 10_000  # OpenSearch's default max_result_window: tests stay below it


# --- services ----------------------------------------------------------------------


class KafkaCluster:
    """Three combined KRaft nodes on loopback sharing one cluster id."""

    def __init__(self, base: Path, lib: Path, size: int = 3) -> None:
        probe = [KafkaNode(data_dir=base / f"node-{i}", lib=lib, node_id=i) for i in (1, 2, 3)]
        voters = ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in probe[:size])
        cluster_id = probe[0].cluster_id
        replicated = {
            "default.replication.factor": "3",
            "min.insync.replicas": "2",
            "offsets.topic.replication.factor": "3",
            "transaction.state.log.replication.factor": "3",
            "transaction.state.log.min.isr": "2",
            "share.coordinator.state.topic.replication.factor": "3",
            "share.coordinator.state.topic.min.isr": "2",
            "auto.create.topics.enable": "false",
        }
        self.nodes = [
            KafkaNode(
                data_dir=n.data_dir,
                lib=lib,
                node_id=n.node_id,
                port=n.port,
                controller_port=n.controller_port,
                voters=voters,
                cluster_id=cluster_id,
                extra_properties=replicated,
            )
            for n in probe[:size]
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def start(self) -> KafkaCluster:
        # A node registers only once a quorum of controllers runs: start all, then wait.
        for node in self.nodes:
            node.write_properties()
        # StorageTool is a JVM run of seconds per node: the three at once.
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(KafkaNode.format_storage, self.nodes))
        for node in self.nodes:  # from this thread: the nodes die with the test process
            node.process.spawn()
        for node in self.nodes:
            node.process.wait_ready()
        return self

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


@pytest.fixture(scope="module")
def kafka3(tmp_path_factory: pytest.TempPathFactory, kafka_jars: Path) -> Iterator[KafkaCluster]:
    cluster = KafkaCluster(tmp_path_factory.mktemp("kafka3"), kafka_jars)
    try:
        yield cluster.start()
    finally:
        cluster.kill()  # a throwaway cluster: three controlled shutdowns cost seconds each


@pytest.fixture(scope="module", autouse=True)
def spare_stores(
    tmp_path_factory: pytest.TempPathFactory, opensearch_jars: Path
) -> Iterator[SpareStores]:
    """The dedicated nodes two tests need: one stopped mid-stream, one with a single
    write thread and a write queue of one."""
    busy = {
        "write_queue_size": 1,
        "extra_settings": {"thread_pool.write.size": "1"},
        "heap": "512m",
    }
    specs = {"outage": {}, "busy": busy}
    with SpareStores(tmp_path_factory.mktemp("spare-stores"), opensearch_jars, specs) as stores:
        yield stores


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(env: dict[str, str]) -> WorkerProcess:
        started.append(WorkerProcess(env, tmp_path / f"worker-{len(started)}.log").start())
        return started[-1]

    yield start
    for worker in started:
        worker.kill()


def worker_env(bootstrap: str, topic: str, dlq: str, store_url: str) -> dict[str, str]:
    return {
        "GRAYSCOPE_KAFKA_BROKERS": bootstrap,
        "GRAYSCOPE_INPUT_TOPICS": topic,
        "GRAYSCOPE_DLQ_TOPIC": dlq,
        "GRAYSCOPE_CONSUMER_GROUP": unique_name("grayscope"),
        "GRAYSCOPE_ES_URL": store_url,
        "GRAYSCOPE_KAFKA_SESSION_TIMEOUT": str(KAFKA_MIN_SESSION_S),
        "GRAYSCOPE_BATCH_SIZE": "200",
    }


# --- the ledger --------------------------------------------------------------------


def stored_ids(store_url: str, topic: str) -> list[str]:
    """Every stored ``_id`` of the topic's messages, with repetitions (one per document)."""
    status, _ = request_json("POST", f"{store_url}/{INDEX}/_refresh")
    if status == 404:
        return []
    status, body = request_json(
        "POST", f"{store_url}/{INDEX}/_search", {"size": MAX_HITS, "_source": False}, timeout=30
    )
    assert status == 200, body
    assert body["hits"]["total"]["value"] < MAX_HITS
    return [hit["_id"] for hit in body["hits"]["hits"] if hit["_id"].startswith(f"{topic}-")]


def stored_count(store_url: str, topic: str) -> int:
    try:
        return len(stored_ids(store_url, topic))
    except OSError:
        return 0


def coordinates(doc_id: str) -> tuple[int, int]:
    partition, offset = doc_id.rsplit("-", 2)[1:]
    return int(partition), int(offset)


async def dead_lettered(bootstrap: str, dlq: str) -> list[tuple[int, int]]:
    records = await read_topic(bootstrap, dlq)
    out = []
    for record in records:
        headers = {k: v.decode() for k, v in record.headers}
        out.append(
            (int(headers["grayscope.source.partition"]), int(headers["grayscope.source.offset"]))
        )
    return out


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets (OffsetFetch through an admin client, never joining)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


def assert_committed_within(committed: dict[int, int], accounted: set[tuple[int, int]]) -> None:
    """Every offset below a committed one is stored or dead-lettered."""
    for partition, offset in committed.items():
        missing = [o for o in range(offset) if (partition, o) not in accounted]
        assert not missing, f"partition {partition} committed {offset}; unstored {missing[:10]}"


async def assert_ledger(
    bootstrap: str,
    store_url: str,
    env: dict[str, str],
    placed: list[tuple[int, int]],
    expected_dead: int,
    timeout: float = 2 * SLOW,
) -> None:
    """Wait for every message to be accounted for, then check exactly-once and the commits."""
    topic, dlq = env["GRAYSCOPE_INPUT_TOPICS"], env["GRAYSCOPE_DLQ_TOPIC"]
    expected = set(placed)
    deadline = time.monotonic() + timeout
    while True:
        ids = stored_ids(store_url, topic)
        dead = await dead_lettered(bootstrap, dlq)
        accounted = {coordinates(i) for i in ids} | set(dead)
        if accounted >= expected or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    if accounted != expected:
        missing = sorted(expected - accounted)
        committed = await committed_offsets(bootstrap, env["GRAYSCOPE_CONSUMER_GROUP"], topic)
        records = {(r.partition, r.offset): r.value for r in await read_topic(bootstrap, topic)}
        raise AssertionError(
            f"{len(missing)} messages neither stored nor dead-lettered: "
            f"{[(m, records.get(m, b'?')[:60]) for m in missing[:5]]}; committed {committed}"
        )
    assert max(Counter(ids).values(), default=1) == 1, "a document stored twice"
    # Exactly once by id, as the issue asks: the store by `_id`, the dead-letter topic by
    # the source coordinates each dead letter carries. The dead-letter topic is a Kafka
    # topic written at least once (DESIGN "Delivery"): a batch re-consumed after a
    # crash, or a producer retry across a broker restart, writes its dead letters again
    # (seen on this box under load); by their id they are one dead letter each.
    dead_ids = set(dead)
    assert not {coordinates(i) for i in ids} & dead_ids, "stored and dead-lettered"
    assert len(dead_ids) == expected_dead
    # The group commits within a second or two of the last batch.
    group = env["GRAYSCOPE_CONSUMER_GROUP"]
    ends: dict[int, int] = {}
    for partition, offset in placed:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    deadline = time.monotonic() + SLOW
    while True:
        committed = await committed_offsets(bootstrap, group, topic)
        assert_committed_within(committed, accounted)
        if all(committed.get(p, 0) >= end for p, end in ends.items()):
            break
        assert time.monotonic() < deadline, f"offsets not committed to the end: {committed}"
        await asyncio.sleep(1)


async def wait_for_bulks_done(store_url: str, timeout: float = SLOW) -> None:
    """Until the store runs no bulk request (twice in a row): after the worker is frozen,
    a bulk it sent just before may still be indexing, and a snapshot of the stored ids
    taken then misses documents the worker is about to see acknowledged."""
    path = "/_tasks?actions=indices:data/write/bulk*"
    quiet = 0
    deadline = time.monotonic() + timeout
    while quiet < 2:
        status, body = request_json("GET", f"{store_url}{path}")
        busy = status != 200 or any(n.get("tasks") for n in body.get("nodes", {}).values())
        quiet = 0 if busy else quiet + 1
        assert time.monotonic() < deadline, f"bulks still running: {body}"
        await asyncio.sleep(0.2)


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.25)


def lines(count: int, seed: int) -> list[bytes]:
    return list(generate(count, seed=seed))


# --- the tests ---------------------------------------------------------------------


@pytest.mark.timeout(900)  # a cluster, OpenSearch and workers on a shared 2-core box
async def test_setup_takes_the_clusters_replication_and_a_killed_broker_loses_nothing(
    kafka3: KafkaCluster,
    store: OpenSearchNode,
    workers: Callable[[dict[str, str]], WorkerProcess],
) -> None:
    topic, dlq = unique_name("rf3"), unique_name("rf3-dlq")
    env = worker_env(kafka3.bootstrap, topic, dlq, store.url)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.commands.main", "setup", "--partitions", "3"],
        env={**os.environ, **env, "GRAYSCOPE_ES_URL": "", "GRAYSCOPE_OTLP_ENDPOINT": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "with 3 partitions x 3 replicas" in result.stdout
    assert await replica_counts(kafka3.bootstrap, topic) == [3, 3, 3]
    assert await replica_counts(kafka3.bootstrap, dlq) == [3, 3, 3]

    worker = workers(env)
    worker.wait_ready(SLOW)
    # Topics the worker declares itself are replicated as the cluster says, not Faust's 1.
    changelog = f"{env['GRAYSCOPE_CONSUMER_GROUP']}-canary-by-stage-changelog"
    assert set(await replica_counts(kafka3.bootstrap, changelog)) == {3}
    placed = await produce_values(kafka3.bootstrap, topic, lines(1500, seed=3) + BAD_LINES)
    await wait_until(lambda: stored_count(store.url, topic) >= 300, SLOW, "first documents")

    victim = kafka3.nodes[1]
    victim.kill()  # SIGKILL mid-stream: leaders move, acks=all still has 2 in-sync replicas
    placed += await produce_values(kafka3.bootstrap, topic, lines(1500, seed=4))
    await wait_until(lambda: stored_count(store.url, topic) >= 2500, SLOW, "documents")
    victim.start()  # back on the same log dir; catches up as a follower
    placed += await produce_values(kafka3.bootstrap, topic, lines(1000, seed=5))
    await assert_ledger(kafka3.bootstrap, store.url, env, placed, expected_dead=2)
    assert worker.proc is not None and worker.proc.poll() is None
    assert worker.terminate() == 0


async def replica_counts(bootstrap: str, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (description,) = await admin.describe_topics([topic])
        return sorted(len(p["replicas"]) for p in description["partitions"])
    finally:
        await admin.close()


@pytest.mark.timeout(900)  # a cluster, OpenSearch and workers on a shared 2-core box
async def test_three_workers_on_six_partitions_one_killed_one_added(
    kafka3: KafkaCluster,
    store: OpenSearchNode,
    workers: Callable[[dict[str, str]], WorkerProcess],
) -> None:
    topic, dlq = unique_name("six"), unique_name("six-dlq")
    await create_topics(kafka3.bootstrap, [topic], 6, replication_factor=3)
    await create_topics(kafka3.bootstrap, [dlq], 1, replication_factor=3)
    env = worker_env(kafka3.bootstrap, topic, dlq, store.url)
    started = [workers(env) for _ in range(3)]
    for worker in started:
        worker.wait_ready(SLOW)
    placed = await produce_values(kafka3.bootstrap, topic, lines(2000, seed=21) + BAD_LINES)
    await wait_until(lambda: stored_count(store.url, topic) >= 500, SLOW, "first documents")
    started[0].kill()  # SIGKILL: its partitions move after the session timeout
    placed += await produce_values(kafka3.bootstrap, topic, lines(2000, seed=22))
    added = workers(env)
    added.wait_ready(SLOW)
    placed += await produce_values(kafka3.bootstrap, topic, lines(2000, seed=23))
    await assert_ledger(kafka3.bootstrap, store.url, env, placed, expected_dead=2)
    for worker in [*started[1:], added]:
        assert worker.terminate() == 0


@pytest.mark.timeout(900)  # a cluster, OpenSearch and workers on a shared 2-core box
async def test_opensearch_stopped_and_restarted_mid_stream(
    kafka3: KafkaCluster,
    spare_stores: SpareStores,
    workers: Callable[[dict[str, str]], WorkerProcess],
) -> None:
    store = spare_stores.take("outage")  # its own node: the session's is never stopped
    topic, dlq = unique_name("osdown"), unique_name("osdown-dlq")
    await create_topics(kafka3.bootstrap, [topic], 3, replication_factor=3)
    await create_topics(kafka3.bootstrap, [dlq], 1, replication_factor=3)
    env = worker_env(kafka3.bootstrap, topic, dlq, store.url)
    worker = workers(env)
    worker.wait_ready(SLOW)
    placed = await produce_values(kafka3.bootstrap, topic, lines(1500, seed=31))
    await wait_until(lambda: stored_count(store.url, topic) >= 300, SLOW, "first documents")
    # Freeze the worker so no bulk completes between the snapshot and the outage.
    assert worker.proc is not None
    os.killpg(worker.proc.pid, signal.SIGSTOP)
    await asyncio.sleep(0.5)  # a bulk in the socket buffer reaches the store
    await wait_for_bulks_done(store.url)
    before = {coordinates(i) for i in stored_ids(store.url, topic)}
    store.stop()
    os.killpg(worker.proc.pid, signal.SIGCONT)
    try:
        placed += await produce_values(kafka3.bootstrap, topic, lines(1500, seed=32))
        await wait_until(
            lambda: worker.metric("grayscope_bulk_retries_total") >= 2, SLOW, "bulk retries"
        )
        # While the store is down nothing past what it acknowledged is committed.
        committed = await committed_offsets(
            kafka3.bootstrap, env["GRAYSCOPE_CONSUMER_GROUP"], topic
        )
        assert_committed_within(committed, before)
    finally:
        store.start()  # the same data dir: what was stored is still there
    placed += await produce_values(kafka3.bootstrap, topic, lines(1000, seed=33))
    await assert_ledger(kafka3.bootstrap, store.url, env, placed, expected_dead=0)
    assert worker.terminate() == 0


@pytest.mark.timeout(900)  # a cluster, OpenSearch and workers on a shared 2-core box
async def test_a_lone_broker_sigkilled_and_restarted_on_its_log_dir(
    kafka_factory: Callable[..., KafkaNode],
    store: OpenSearchNode,
    workers: Callable[[dict[str, str]], WorkerProcess],
) -> None:
    node = kafka_factory()
    topic, dlq = unique_name("crash"), unique_name("crash-dlq")
    await create_topics(node.bootstrap, [topic], 3)
    await create_topics(node.bootstrap, [dlq], 1)
    env = worker_env(node.bootstrap, topic, dlq, store.url)
    worker = workers(env)
    worker.wait_ready(SLOW)
    placed = await produce_values(node.bootstrap, topic, lines(3000, seed=41) + BAD_LINES)
    await wait_until(lambda: stored_count(store.url, topic) >= 300, SLOW, "documents")
    node.kill()  # the whole cluster gone mid-stream, no clean shutdown
    await asyncio.sleep(KAFKA_MIN_SESSION_S)  # the worker keeps retrying meanwhile
    node.start()  # same ports, same log dir
    placed += await produce_values(node.bootstrap, topic, lines(1000, seed=42))
    await assert_ledger(node.bootstrap, store.url, env, placed, expected_dead=2)
    assert worker.proc is not None and worker.proc.poll() is None
    assert worker.terminate() == 0


def bulk_hammer(url: str, stop: threading.Event, rejections: list[int]) -> None:
    """Concurrent bulks into another index, so the one write thread has company."""
    body = "".join(f'{{"index":{{}}}}\n{{"n": {i}}}\n' for i in range(200))
    while not stop.is_set():
        status, response = request_json_ndjson(f"{url}/hammer/_bulk", body)
        if status == 429 or (isinstance(response, dict) and "rejected_execution" in str(response)):
            rejections.append(status)


def request_json_ndjson(url: str, body: str) -> tuple[int, Any]:
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body.encode(), method="POST")
    req.add_header("Content-Type", "application/x-ndjson")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except OSError:
        return 0, None


@pytest.mark.timeout(900)  # a cluster, OpenSearch and workers on a shared 2-core box
async def test_real_bulk_rejections_are_retried_until_stored(
    spare_stores: SpareStores,
    kafka3: KafkaCluster,
    workers: Callable[[dict[str, str]], WorkerProcess],
) -> None:
    node = spare_stores.take("busy")  # one write thread, a write queue of one
    topic, dlq = unique_name("busy"), unique_name("busy-dlq")
    await create_topics(kafka3.bootstrap, [topic], 6, replication_factor=3)
    await create_topics(kafka3.bootstrap, [dlq], 1, replication_factor=3)
    env = worker_env(kafka3.bootstrap, topic, dlq, node.url) | {
        "GRAYSCOPE_BATCH_CONCURRENCY": "4",
        "GRAYSCOPE_BATCH_SIZE": "100",
        "GRAYSCOPE_ES_RETRY_INITIAL": "0.05",
    }
    stop, rejections = threading.Event(), []
    hammers = [
        threading.Thread(target=bulk_hammer, args=(node.url, stop, rejections), daemon=True)
        for _ in range(3)
    ]
    for hammer in hammers:
        hammer.start()
    try:
        worker = workers(env)
        worker.wait_ready(SLOW)
        placed = await produce_values(kafka3.bootstrap, topic, lines(4000, seed=51))
        await assert_ledger(kafka3.bootstrap, node.url, env, placed, expected_dead=0)
        retried = worker.metric("grayscope_documents_retried_total") + worker.metric(
            "grayscope_bulk_retries_total"
        )
    finally:
        stop.set()
        for hammer in hammers:
            hammer.join(35)
    assert rejections, "the node never rejected a bulk: the fault was not provoked"
    assert retried > 0, "the worker never met a rejection"
    assert worker.metric("grayscope_dead_lettered_total") == 0
    assert worker.terminate() == 0

"""Kafka faults on real Apache Kafka (KRaft) processes, each ending with the ledger
(``ledger.py``): every produced message stored or dead-lettered exactly once, no
offset committed past one that is neither.

- a three-node KRaft cluster (``default.replication.factor=3``,
  ``min.insync.replicas=2``): ``grayscope setup`` creates the topics with the
  cluster's replication factor; a broker SIGKILLed mid-stream and restarted on
  its log dir; three workers on six partitions, one SIGKILLed and one added;
- a lone broker SIGKILLed mid-stream (a full Kafka outage) and restarted on its log dir.

The store faults are in ``test_faults_store.py`` (a file each, so that parallel test
workers can take them at the same time).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.dev.stack.kafka import KafkaNode, create_topics, produce_values
from pipeline.dev.stack.opensearch import OpenSearchNode
from tests.integration.conftest import new_kafka, unique_name
from tests.integration.ledger import (
    BAD_LINES,
    KAFKA_MIN_SESSION_S,
    SLOW,
    assert_ledger,
    lines,
    stored_count,
    wait_until,
    worker_env,
)
from tests.integration.worker_proc import WorkerProcess

pytestmark = pytest.mark.expected_seconds(200)


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
            new_kafka(
                n.data_dir,
                lib,
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

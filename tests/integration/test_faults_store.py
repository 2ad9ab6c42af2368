"""Store faults on real OpenSearch processes, each ending with the ledger
(``ledger.py``): every produced message stored or dead-lettered exactly once, no
offset committed past one that is neither.

- OpenSearch stopped mid-stream and restarted on its data;
- real bulk rejections (429 ``es_rejected_execution_exception``) from a node
  with one write thread and a write queue of one.

The Kafka faults are in ``test_faults_kafka.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.dev.stack.kafka import create_topics, produce_values
from tests.integration.conftest import SpareStores, unique_name
from tests.integration.ledger import (
    SLOW,
    assert_committed_within,
    assert_ledger,
    committed_offsets,
    coordinates,
    lines,
    stored_count,
    stored_ids,
    wait_for_bulks_done,
    wait_until,
    worker_env,
)
from tests.integration.worker_proc import WorkerProcess

pytestmark = pytest.mark.expected_seconds(80)


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


# --- the tests ---------------------------------------------------------------------


@pytest.mark.timeout(900)  # OpenSearch nodes and a worker on a shared 2-core box
async def test_opensearch_stopped_and_restarted_mid_stream(
    bootstrap: str,
    spare_stores: SpareStores,
    workers: Callable[[dict[str, str]], WorkerProcess],
) -> None:
    store = spare_stores.take("outage")  # its own node: the session's is never stopped
    topic, dlq = unique_name("osdown"), unique_name("osdown-dlq")
    await create_topics(bootstrap, [topic], 3)
    await create_topics(bootstrap, [dlq], 1)
    env = worker_env(bootstrap, topic, dlq, store.url)
    worker = workers(env)
    worker.wait_ready(SLOW)
    placed = await produce_values(bootstrap, topic, lines(1500, seed=31))
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
        placed += await produce_values(bootstrap, topic, lines(1500, seed=32))
        await wait_until(
            lambda: worker.metric("grayscope_bulk_retries_total") >= 2, SLOW, "bulk retries"
        )
        # While the store is down nothing past what it acknowledged is committed.
        committed = await committed_offsets(bootstrap, env["GRAYSCOPE_CONSUMER_GROUP"], topic)
        assert_committed_within(committed, before)
    finally:
        store.start()  # the same data dir: what was stored is still there
    placed += await produce_values(bootstrap, topic, lines(1000, seed=33))
    await assert_ledger(bootstrap, store.url, env, placed, expected_dead=0)
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


@pytest.mark.timeout(900)  # OpenSearch nodes and a worker on a shared 2-core box
async def test_real_bulk_rejections_are_retried_until_stored(
    spare_stores: SpareStores,
    bootstrap: str,
    workers: Callable[[dict[str, str]], WorkerProcess],
) -> None:
    node = spare_stores.take("busy")  # one write thread, a write queue of one
    topic, dlq = unique_name("busy"), unique_name("busy-dlq")
    await create_topics(bootstrap, [topic], 6)
    await create_topics(bootstrap, [dlq], 1)
    env = worker_env(bootstrap, topic, dlq, node.url) | {
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
        placed = await produce_values(bootstrap, topic, lines(4000, seed=51))
        await assert_ledger(bootstrap, node.url, env, placed, expected_dead=0)
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

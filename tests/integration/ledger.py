"""The ledger every fault test on the real services ends with, and its helpers.

Each produced message is stored (by its ``_id``, ``<topic>-<partition>-<offset>``)
or dead-lettered, exactly once, and no committed offset is past a message that is
neither (read with a consumer that never joins the group). Used by
``test_faults_kafka.py``, ``test_faults_store.py``, ``test_worker.py`` and
``test_kafka_security.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

from aiokafka.admin import AIOKafkaAdminClient

from pipeline.dev.stack.kafka import read_topic
from pipeline.dev.stack.opensearch import request_json
from pipeline.dev.synth import generate
from tests.integration.conftest import unique_name

INDEX = "grayscope-access-*"
KAFKA_MIN_SESSION_S = 6  # Kafka's group.min.session.timeout.ms
# Upper bounds only (nothing is timed): generous, a shared 2-core box runs these at load 30.
SLOW = 180.0
BAD_LINES = [b"garbage that is no log", b'{"no": "access log keys"}']
MAX_HITS = 10_000  # OpenSearch's default max_result_window: tests stay below it


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

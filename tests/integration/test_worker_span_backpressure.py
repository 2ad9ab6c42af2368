"""``GRAYSCOPE_OTLP_WHEN_FULL`` end to end: the real worker, Kafka, OpenSearch and a Jaeger
that stops answering.

``test_otlp_backpressure.py`` shows the exporter alone waiting for (or dropping at) a
SIGSTOPped Jaeger; here ``grayscope worker`` itself consumes a topic into OpenSearch
with its spans going to a Jaeger of this module's own, which is paused (SIGSTOP)
while a few hundred lines are produced, then resumed (SIGCONT). The OTLP queue is
small (``QUEUE`` spans) and the export timeout much longer than the pause, so the
requests in flight complete on SIGCONT and nothing is dropped as ``export_failed``.

- ``block``: while Jaeger is paused the worker stores documents, then its batches
  wait for span room: the queue sits at its bound, no span is dropped, the waiting
  batches' documents are stored but their offsets are not committed, and the topic
  is not consumed to its end. After SIGCONT every document is stored exactly once,
  every span is found in Jaeger (by its ``gray.id`` and ``url.path``), nothing is
  dropped for any reason and the group's offsets reach the end of the topic.
- ``drop_newest`` (the contrast): with Jaeger still paused every document is stored
  and every offset committed; the spans that did not fit are dropped as
  ``queue_full``, and Jaeger later holds exactly the ones that were exported.

Nothing is timed: each state is polled for with a generous deadline, and the
"holds back" checks are bounded by what the queue and the batches in flight can
hold, far less than what is produced.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.dev.stack.jaeger import JaegerQuery, JaegerServer
from pipeline.dev.stack.opensearch import OpenSearchNode
from tests.integration.conftest import TopicFactory
from tests.integration.ledger import (
    assert_ledger,
    committed_offsets,
    coordinates,
    stored_ids,
    worker_env,
)
from tests.integration.worker_proc import WorkerProcess

pytestmark = pytest.mark.expected_seconds(40)

QUEUE = 50  # GRAYSCOPE_OTLP_QUEUE_SIZE
OTLP_BATCH = 10  # spans per export request
OTLP_CONCURRENT = 2  # export requests in flight at once
KAFKA_BATCH = 50  # GRAYSCOPE_BATCH_SIZE
BATCH_CONCURRENCY = 2
WARM_UP = 5  # lines whose spans are exported before the pause (connects the channel)
LINES = 600  # produced while Jaeger is paused
# Spans the worker can take while Jaeger answers nothing: the queue and the requests
# in flight. Each batch in flight also holds its documents stored (block mode).
SPANS_HELD = QUEUE + OTLP_CONCURRENT * OTLP_BATCH
MOST_STORED_WHILE_BLOCKED = WARM_UP + SPANS_HELD + BATCH_CONCURRENCY * KAFKA_BATCH
assert MOST_STORED_WHILE_BLOCKED < (WARM_UP + LINES) // 2  # "held back" is unambiguous
HOLD_S = 3.0  # how long the blocked state is watched (longer than the 1 s commit interval)
OTLP_TIMEOUT_S = 120  # per export try: far longer than any pause, on a loaded box too
DEADLINE_S = 120.0  # upper bound for every poll; nothing here is timed


@pytest.fixture(scope="module")
def own_jaeger(
    jaeger_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JaegerServer]:
    """A Jaeger of this module's own: these tests stop it, and a worker with a span
    queue full of requests Jaeger has not answered must not slow other tests' Jaeger."""
    server = JaegerServer(jaeger_binary, tmp_path_factory.mktemp("jaeger-paused"))
    with server.start():
        yield server


@contextmanager
def paused(jaeger: JaegerServer) -> Iterator[None]:
    """Jaeger stopped (SIGSTOP): its sockets accept bytes, it answers nothing, until resumed."""
    pid = jaeger.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)  # always: the module's next test uses it too


def access_lines(service: str, gray_id: str, n: int) -> list[bytes]:
    """nginx JSON lines, one request each: ``?abt=`` gives the gray id, ``url.path``
    tells the requests (and so their spans) apart, ``Host`` is the span's service."""
    now = time.time()
    return [
        orjson.dumps(
            {
                "msec": f"{now:.3f}",
                "remote_addr": "10.0.0.9",
                "request_method": "GET",
                "request_uri": f"/godoc/pkg/p{i}?abt={gray_id}",
                "status": "200",
                "body_bytes_sent": "512",
                "request_time": "0.004",
                "http_host": service,
                "http_user_agent": "curl/8.5.0",
                "request_id": uuid.uuid4().hex,
            }
        )
        for i in range(n)
    ]


def paths(n: int) -> set[str]:
    return {f"/godoc/pkg/p{i}" for i in range(n)}


def span_paths(query: JaegerQuery, service: str, gray_id: str, expected: int) -> list[str]:
    """``url.path`` of every span Jaeger's tag search finds (with repeats, if Jaeger kept
    any span twice), polled until ``expected`` show up or the deadline passes."""
    end_ns = time.time_ns() + 600 * 10**9
    start_ns = end_ns - 1200 * 10**9
    deadline = time.monotonic() + DEADLINE_S
    while True:
        spans = query.find_spans(
            service, {"gray.id": gray_id}, start_ns=start_ns, end_ns=end_ns, limit=4 * LINES
        )
        found = [str(span["attributes"]["url.path"]) for span in spans]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


async def poll(what: str, check: Callable[[], Any], worker: WorkerProcess) -> Any:
    """``check()`` until it returns something truthy (then that), or fail at the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: not within {DEADLINE_S:.0f} s\n{span_metrics(worker)}\n{worker.tail()}"
            )
        await asyncio.sleep(0.3)


def span_metrics(worker: WorkerProcess) -> str:
    """The worker's span and batch metrics, for failure messages."""
    try:
        body = worker.get("/metrics")[1].decode()
    except OSError as exc:
        return f"(no metrics: {exc})"
    wanted = ("grayscope_span", "grayscope_messages_consumed", "grayscope_documents")
    return "\n".join(line for line in body.splitlines() if line.startswith(wanted))


def topic_ends(placed: list[tuple[int, int]]) -> dict[int, int]:
    ends: dict[int, int] = {}
    for partition, offset in placed:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return ends


def dropped(worker: WorkerProcess, reason: str = "") -> float:
    """``grayscope_spans_dropped_total``: one reason, or (``""``) all of them summed."""
    labels = f'reason="{reason}"' if reason else ""
    return worker.metric("grayscope_spans_dropped_total", labels)


async def start_worker(
    when_full: str,
    bootstrap: str,
    topic_factory: TopicFactory,
    store: OpenSearchNode,
    jaeger: JaegerServer,
    workers: Callable[[dict[str, str]], WorkerProcess],
) -> tuple[WorkerProcess, dict[str, str]]:
    topic = await topic_factory(partitions=3)
    dlq = await topic_factory(partitions=1, prefix="dlq")
    env = {
        **worker_env(bootstrap, topic, dlq, store.url),
        "GRAYSCOPE_BATCH_SIZE": str(KAFKA_BATCH),
        "GRAYSCOPE_BATCH_CONCURRENCY": str(BATCH_CONCURRENCY),
        "GRAYSCOPE_OTLP_ENDPOINT": jaeger.otlp_grpc_endpoint,
        "GRAYSCOPE_OTLP_WHEN_FULL": when_full,
        "GRAYSCOPE_OTLP_QUEUE_SIZE": str(QUEUE),
        "GRAYSCOPE_OTLP_BATCH_SIZE": str(OTLP_BATCH),
        "GRAYSCOPE_OTLP_CONCURRENT_EXPORTS": str(OTLP_CONCURRENT),
        "GRAYSCOPE_OTLP_TIMEOUT": str(OTLP_TIMEOUT_S),
    }
    worker = workers(env)
    await asyncio.to_thread(worker.wait_ready)
    return worker, env


async def warm_up(
    worker: WorkerProcess, produce_lines: Any, topic: str, service: str
) -> list[tuple[int, int]]:
    """A few lines through to Jaeger first: the pause then hits an established gRPC
    connection (and a worker that has joined its group), as in production."""
    placed: list[tuple[int, int]] = await produce_lines(
        topic, access_lines(service, f"wrm{uuid.uuid4().hex[:8]}", WARM_UP)
    )
    await poll(
        "warm-up spans exported",
        lambda: worker.metric("grayscope_spans_exported_total") >= WARM_UP,
        worker,
    )
    return placed


async def test_block_mode_holds_the_worker_back_and_loses_no_span(
    bootstrap: str,
    topic_factory: TopicFactory,
    store: OpenSearchNode,
    own_jaeger: JaegerServer,
    produce_lines: Any,
    workers: Callable[[dict[str, str]], WorkerProcess],
) -> None:
    worker, env = await start_worker("block", bootstrap, topic_factory, store, own_jaeger, workers)
    topic, group = env["GRAYSCOPE_INPUT_TOPICS"], env["GRAYSCOPE_CONSUMER_GROUP"]
    service = f"blk-{uuid.uuid4().hex[:8]}.test"
    gray_id = f"blk{uuid.uuid4().hex[:8]}"
    placed = await warm_up(worker, produce_lines, topic, service)
    total = WARM_UP + LINES

    with paused(own_jaeger):
        placed += await produce_lines(topic, access_lines(service, gray_id, LINES))
        ends = topic_ends(placed)
        # A batch waits for room: the queue is at its bound (the requests in flight hold
        # the rest of what the exporter took) and the wait is counted while it lasts.
        await poll(
            "span queue full, a batch waiting",
            lambda: (
                worker.metric("grayscope_spans_queued") == QUEUE
                and worker.metric("grayscope_span_queue_blocked_seconds_total") > 0
            ),
            worker,
        )
        blocked_at = worker.metric("grayscope_span_queue_blocked_seconds_total")
        await asyncio.sleep(HOLD_S)  # the worker gets every chance to run ahead

        stored = {coordinates(i) for i in await asyncio.to_thread(stored_ids, store.url, topic)}
        committed = await committed_offsets(bootstrap, group, topic)
        # Documents first: the waiting batches' documents are stored, though none of
        # their spans has left the worker and their offsets are not committed.
        assert worker.metric("grayscope_spans_exported_total") == WARM_UP
        uncommitted = {(p, o) for p, o in stored if o >= committed.get(p, 0)}
        assert uncommitted, (committed, sorted(stored)[-10:])
        # Consumption holds back: the worker stored and acked only what the queue, the
        # requests in flight and the waiting batches hold, far from the end of the topic.
        assert len(stored) <= MOST_STORED_WHILE_BLOCKED, len(stored)
        assert sum(committed.values()) < total, (committed, ends)
        # Still waiting, nothing dropped; the wait counter grew during the pause.
        assert worker.metric("grayscope_spans_queued") == QUEUE
        assert dropped(worker) == 0, worker.get("/metrics")[1].decode()
        assert worker.metric("grayscope_span_queue_blocked_seconds_total") > blocked_at

    # Resumed: the requests in flight complete (the timeout is far longer than the pause),
    # the waiting batches queue their spans and are acked, consumption runs to the end.
    await assert_ledger(bootstrap, store.url, env, placed, expected_dead=0, timeout=DEADLINE_S)
    await poll(
        "every span exported",
        lambda: worker.metric("grayscope_spans_exported_total") >= total,
        worker,
    )
    found = await asyncio.to_thread(span_paths, JaegerQuery(own_jaeger.query_url), service,
                                    gray_id, LINES)  # fmt: skip
    assert sorted(found) == sorted(paths(LINES))  # each request's span, once
    assert worker.metric("grayscope_spans_exported_total") == total
    for reason in ("queue_full", "export_failed", "rejected", "shutdown"):
        assert dropped(worker, reason) == 0, reason
    assert dropped(worker) == 0
    assert worker.metric("grayscope_spans_queued") == 0


async def test_drop_newest_mode_keeps_consuming_and_drops_spans(
    bootstrap: str,
    topic_factory: TopicFactory,
    store: OpenSearchNode,
    own_jaeger: JaegerServer,
    produce_lines: Any,
    workers: Callable[[dict[str, str]], WorkerProcess],
) -> None:
    worker, env = await start_worker(
        "drop_newest", bootstrap, topic_factory, store, own_jaeger, workers
    )
    topic = env["GRAYSCOPE_INPUT_TOPICS"]
    service = f"drp-{uuid.uuid4().hex[:8]}.test"
    gray_id = f"drp{uuid.uuid4().hex[:8]}"
    placed = await warm_up(worker, produce_lines, topic, service)
    total = WARM_UP + LINES

    with paused(own_jaeger):
        placed += await produce_lines(topic, access_lines(service, gray_id, LINES))
        # Jaeger answers nothing, yet every document is stored exactly once and every
        # offset committed to the end of the topic: nothing waits for the spans.
        await assert_ledger(bootstrap, store.url, env, placed, expected_dead=0, timeout=DEADLINE_S)
        # What did not fit the queue (and the requests in flight) is gone.
        assert dropped(worker, "queue_full") >= total - WARM_UP - SPANS_HELD
        assert worker.metric("grayscope_spans_exported_total") == WARM_UP
        assert worker.metric("grayscope_span_queue_blocked_seconds_total") == 0

    # Resumed: what was queued or in flight is exported, and only that (no export failed:
    # the timeout outlasts the pause); every span is exported or dropped as queue_full.
    def settled() -> bool:
        exported = worker.metric("grayscope_spans_exported_total")
        return exported + dropped(worker, "queue_full") >= total

    await poll("queued spans exported", settled, worker)
    exported = int(worker.metric("grayscope_spans_exported_total"))
    assert exported + dropped(worker, "queue_full") == total
    assert WARM_UP < exported <= WARM_UP + SPANS_HELD
    assert dropped(worker) == dropped(worker, "queue_full")  # no other reason
    found = await asyncio.to_thread(span_paths, JaegerQuery(own_jaeger.query_url), service,
                                    gray_id, exported - WARM_UP)  # fmt: skip
    assert len(found) == len(set(found)) == exported - WARM_UP
    assert set(found) < paths(LINES)

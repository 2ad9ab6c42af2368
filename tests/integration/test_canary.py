"""Canary analysis against the real broker and store: a small Faust app with
``register_canary`` (the worker's wiring, minus the enrich agent), fed through
the observer exactly as the batch handler feeds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import orjson
import pytest

from agents.canary import CanaryAnalysis, register_canary
from pipeline.canary import CanaryObserver, Decision, Verdict, fetch_verdicts, format_verdicts
from pipeline.canary.observer import ObservedEvent
from pipeline.config import Settings, load_settings
from pipeline.core.model import AccessRecord, Enrichment
from pipeline.dev.stack.kafka import topic_partitions
from pipeline.dev.stack.opensearch import OpenSearchNode
from pipeline.dev.stack.process import free_port
from pipeline.errors import ServiceError
from pipeline.sinks.elasticsearch.service import ElasticsearchService
from schemas import VERDICTS_INDEX
from tests.integration.conftest import ReadRecords, unique_name
from tests.unit.conftest import observed

pytestmark = pytest.mark.expected_seconds(20)

# Guards against hangs, never asserted on.
GUARD = 120.0  # the shared 2-core CI box can be far slower than a laptop
NS = 1_000_000_000
WINDOW = 60


def canary_settings(app_id: str, **changes: Any) -> Settings:
    values = {
        "canary_window": WINDOW,
        "canary_interval": 0.3,
        "canary_min_samples": 50,
        # A few hundred requests bound a 5xx increase only to a few points: promote here
        # needs a margin that wide (the default, 0.5 points, needs thousands).
        "canary_promote_error_margin": 0.1,
        # ... and, with errors too few to bound the rate ratio of all path groups
        # together, the canary's 5xx rate over them within the same.
        "canary_promote_error_floor": 0.1,
        "canary_partitions": 1,
        "canary_topic": f"{app_id}-verdicts",
    }
    values.update(changes)
    return load_settings(**values)


def requests(
    path_group: str,
    stage: str,
    count: int,
    *,
    errors: int = 0,
    latency_ms: float = 100.0,
    at: float,
    version: str = "v1",
) -> list[ObservedEvent]:
    """``count`` requests at event time ``at``; the first ``errors`` answered 503."""
    out: list[ObservedEvent] = []
    for i in range(count):
        record = AccessRecord(
            dataset="envoy.access",
            timestamp_ns=int(at * NS) + i,
            status=503 if i < errors else 200,
            duration_ns=int((latency_ms + i % 40) * 1_000_000),  # a 40 ms spread
        )
        enrichment = Enrichment(stage=stage, version=version, path_group=path_group)
        out.append(observed(record, enrichment, None))
    return out


@contextlib.asynccontextmanager
async def canary_app(
    bootstrap: str,
    app_id: str,
    settings: Settings,
    faust_settings: dict[str, Any],
    datadir: Path,
    es_service: ElasticsearchService | None = None,
) -> AsyncIterator[tuple[CanaryAnalysis, CanaryObserver, str]]:
    port = free_port("127.0.0.1")
    web = {"web_enabled": True, "web_port": port, "web_host": "127.0.0.1"}
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        # A data directory per app: two apps of one test must not share one.
        **{**faust_settings, **web, "datadir": str(datadir)},
        table_cleanup_interval=3600,  # Faust's own expiry must not race ours in the tests
        topic_disable_leader=True,
    )
    observer = register_canary(app, settings, SimpleNamespace(es_service=es_service))
    assert observer is not None
    await app.start()
    try:
        yield app.grayscope_canary, observer, f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    finally:
        await app.stop()


async def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + GUARD
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def by_path_group(verdicts: list[Verdict]) -> dict[str, Verdict]:
    return {v.path_group: v for v in verdicts}


def previous_window() -> float:
    """Start of the last complete window: the one a verdict is about."""
    return (time.time() // WINDOW - 1) * WINDOW


def stored_verdicts(store: OpenSearchNode) -> int:
    try:
        store.request("POST", f"/{VERDICTS_INDEX}/_refresh")
        return int(store.request("GET", f"/{VERDICTS_INDEX}/_count")["count"])
    except ServiceError:  # no index yet
        return 0


async def partition_count(bootstrap: str, topic: str) -> int:
    return len(await topic_partitions(bootstrap, topic))


async def test_verdicts_reach_the_web_page_the_topic_and_the_store(
    bootstrap: str,
    store: OpenSearchNode,
    read_records: ReadRecords,
    faust_settings: dict[str, Any],
    tmp_path: Path,
) -> None:
    app_id = unique_name("canary")
    settings = canary_settings(app_id)
    service = ElasticsearchService([store.url])
    await service.install_templates()
    start = previous_window()
    batch = (
        requests("/api/orders", "canary", 200, errors=60, latency_ms=400, at=start, version="v2")
        + requests("/api/orders", "stable", 400, errors=4, latency_ms=100, at=start + 1)
        + requests("/blog/posts", "canary", 120, errors=0, latency_ms=90, at=start, version="v2")
        + requests("/blog/posts", "stable", 300, errors=3, latency_ms=100, at=start)
        + requests("/static/css", "stable", 100, at=start)  # no canary: no verdict
        + requests("/api/orders", "canary", 7, errors=7, at=time.time() - 7200)  # late
        + requests("/api/orders", "canary", 5, errors=5, at=time.time() + 600)  # future
    )
    try:
        async with canary_app(bootstrap, app_id, settings, faust_settings, tmp_path, service) as (
            canary,
            observer,
            url,
        ):
            assert observer.observe_batch(batch) == 5
            await wait_for(
                lambda: (
                    {"/api/orders", "/blog/posts"} <= set(by_path_group(canary.verdicts))
                    and canary.stats.canary_late_events_total == 7
                ),
                "verdicts for both path groups",
            )
            over_http = by_path_group(await asyncio.to_thread(fetch_verdicts, url))
            # Publishing follows the evaluation; a real store takes a moment to make
            # the index on its first write.
            await wait_for(lambda: stored_verdicts(store) >= 2, "verdicts in the store")
    finally:
        await service.close()

    assert set(over_http) == {"/api/orders", "/blog/posts"}
    orders, blog = over_http["/api/orders"], over_http["/blog/posts"]
    assert orders.decision is Decision.ROLLBACK
    assert (orders.canary.requests, orders.canary.errors_5xx) == (200, 60)
    assert (orders.stable.requests, orders.stable.errors_5xx) == (400, 4)
    assert (orders.window_start, orders.complete) == (int(start), True)
    assert any("significantly higher" in r for r in orders.reasons)
    assert any("exceeds the 200 ms threshold" in r for r in orders.reasons)
    assert orders.p95_delta_ms is not None and 280 < orders.p95_delta_ms < 320
    assert [name for name, _ in orders.versions] == ["v1", "v2"]
    assert blog.decision is Decision.PROMOTE
    stats = canary.stats
    assert stats.canary_late_events_total == 7 and stats.canary_future_events_total == 5
    assert "/api/orders  rollback" in format_verdicts([orders, blog])

    # The verdict topic: one record per change, keyed by path group.
    records = await read_records(settings.canary_topic)
    published = {r.key.decode(): orjson.loads(r.value) for r in records}
    assert published["/api/orders"]["verdict"]["decision"] == "rollback"
    assert published["/blog/posts"]["verdict"]["decision"] == "promote"

    # The store: one document per path group and window, mapped by the template.
    store.request("POST", f"/{VERDICTS_INDEX}/_refresh")
    doc_id = urllib.parse.quote(orders.doc_id, safe="")
    source = store.request("GET", f"/{VERDICTS_INDEX}/_doc/{doc_id}")["_source"]
    assert source["verdict"]["decision"] == "rollback"
    assert source["verdict"]["canary"]["errors_5xx"] == 60
    assert source["gray"]["path_group"] == "/api/orders"
    mapping = store.request("GET", f"/{VERDICTS_INDEX}/_mapping")
    properties = mapping[VERDICTS_INDEX]["mappings"]["properties"]
    assert properties["verdict"]["properties"]["p_value"]["type"] == "double"


async def test_tables_recover_after_a_restart_and_keep_counting(
    bootstrap: str, faust_settings: dict[str, Any], tmp_path: Path
) -> None:
    app_id = unique_name("canary")
    # Two partitions: source topic and changelogs must agree, and both arms of
    # a path group still meet on one of them.
    settings = canary_settings(app_id, canary_partitions=2)
    start = previous_window()

    def orders(canary: CanaryAnalysis) -> Verdict | None:
        return by_path_group(canary.verdicts).get("/api/orders")

    async with canary_app(bootstrap, app_id, settings, faust_settings, tmp_path) as (
        canary,
        observer,
        _,
    ):
        observer.observe_batch(
            requests("/api/orders", "canary", 200, errors=2, at=start, version="v2")
            + requests("/api/orders", "stable", 300, errors=3, at=start)
        )
        await wait_for(lambda: orders(canary) is not None, "a first verdict")
        first = orders(canary)
        # The agent persists the fold the verdict was judged on (a control record).
        await wait_for(lambda: canary._state("/api/orders") is not None, "the evidence stored")
    assert first is not None and first.decision is Decision.PROMOTE
    for table in ("canary-by-stage", "canary-by-version"):
        assert await partition_count(bootstrap, f"{app_id}-{table}-changelog") == 2
    assert await partition_count(bootstrap, f"{app_id}-canary-aggregates") == 2

    # A new process of the same app: nothing new is fed, the tables come back
    # from their changelogs.
    async with canary_app(bootstrap, app_id, settings, faust_settings, tmp_path) as (
        canary,
        observer,
        _,
    ):
        await wait_for(lambda: orders(canary) is not None, "the recovered verdict")
        recovered = orders(canary)
        assert recovered is not None
        assert (recovered.canary, recovered.stable) == (first.canary, first.stable)
        assert recovered.versions == first.versions
        assert canary.stats.canary_aggregates_applied_total == 0

        # The rollout's evidence came back too: what the first process judged was persisted.
        evidence = canary._state("/api/orders")
        assert evidence is not None and evidence.folds >= 1
        assert (evidence.canary.requests, evidence.stable.requests) == (200, 300)
        # New requests for the same window add to the recovered counts, and their gain
        # is judged on top of the recovered evidence.
        observer.observe_batch(
            requests("/api/orders", "canary", 100, errors=100, at=start + 30, version="v2")
            + requests("/api/orders", "stable", 100, errors=1, at=start + 30)
        )
        await wait_for(
            lambda: (v := orders(canary)) is not None and v.canary.requests == 300,
            "the merged counts",
        )
        merged = orders(canary)
    assert merged is not None
    assert (merged.canary.errors_5xx, merged.stable.requests) == (102, 400)
    assert merged.decision is Decision.ROLLBACK


async def test_expired_windows_leave_the_tables_and_the_verdicts(
    bootstrap: str, faust_settings: dict[str, Any], tmp_path: Path
) -> None:
    app_id = unique_name("canary")
    settings = canary_settings(
        app_id, canary_window=1, canary_expires=2, canary_interval=0.2, canary_min_samples=5
    )

    def path_groups(canary: CanaryAnalysis) -> set[str]:
        return {key[0][0] for key in canary.by_stage}

    async with canary_app(bootstrap, app_id, settings, faust_settings, tmp_path) as (
        canary,
        observer,
        _,
    ):
        now = time.time()
        observer.observe_batch(
            requests("/old", "canary", 10, at=now) + requests("/old", "stable", 10, at=now)
        )
        await wait_for(lambda: "/old" in by_path_group(canary.verdicts), "a verdict for /old")
        # Three seconds on, /old's window is past its expiry: it leaves the
        # verdicts, and the next aggregate on its partition deletes it.
        await asyncio.sleep(3.2)
        await wait_for(lambda: "/old" not in by_path_group(canary.verdicts), "/old to expire")
        observer.observe_batch(requests("/new", "canary", 10, at=time.time()))
        await wait_for(lambda: "/new" in path_groups(canary), "/new in the table")
        await wait_for(lambda: "/old" not in path_groups(canary), "/old deleted")
    assert canary.stats.canary_windows_expired_total == 3  # canary, stable, version v1

"""The worker end to end against real processes: Apache Kafka, OpenSearch, an
OTLP receiver, and ``grayscope worker`` itself as a subprocess.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.dev.embedded.otlp_receiver import OtlpReceiver
from pipeline.dev.stack.opensearch import OpenSearchNode
from pipeline.dev.synth import generate
from pipeline.errors import ServiceError
from schemas import DATA_STREAM_NAME
from tests.geoip_data import EXPECTED_GEO, write_test_dbs
from tests.integration.conftest import SpareStores, unique_name
from tests.integration.ledger import INDEX, committed_offsets, wait_for_bulks_done, wait_until
from tests.integration.worker_proc import WorkerProcess
from tests.unit.conftest import SAMPLES

pytestmark = pytest.mark.expected_seconds(150)

# batch: the fast path inside Faust's consumer (default); stream: stock Faust agent.
CONSUMER_MODES = ["batch", "stream"]


def sample_lines() -> list[bytes]:
    """Every line of the shared samples, from the repository's copy (equal to them:
    test_formats_detect.py); ``../shared`` beside the clone is not beside a worktree."""
    lines: list[bytes] = []
    for path in sorted(SAMPLES.glob("*.log")) + sorted(SAMPLES.glob("*.json")):
        lines += [line for line in path.read_bytes().splitlines() if line.strip()]
    return lines


BAD_LINES = [b"garbage that is no log", b'{"no": "access log keys"}', b"[1, 2]", b"\xff\xfe\xfd"]


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver.start() as running:
        yield running


@pytest.fixture(scope="module", autouse=True)
def spare_stores(
    tmp_path_factory: pytest.TempPathFactory, opensearch_jars: Path
) -> Iterator[SpareStores]:
    """One dedicated node for each test that stops the store, spawned as the module starts."""
    specs: dict[str, dict[str, Any]] = {"outage-1": {}, "outage-2": {}}
    with SpareStores(tmp_path_factory.mktemp("spare-stores"), opensearch_jars, specs) as stores:
        yield stores


@pytest.fixture
def outage_store(spare_stores: SpareStores) -> OpenSearchNode:
    """A dedicated node: these tests stop the store and start it again (same data)."""
    return spare_stores.take_next("outage")


def store_ids(store: OpenSearchNode) -> set[str]:
    store.request("POST", f"/{INDEX}/_refresh")
    body = store.request("POST", f"/{INDEX}/_search", {"size": 10_000, "_source": False})
    return {hit["_id"] for hit in body["hits"]["hits"]}


def store_count(store: OpenSearchNode) -> int:
    try:
        store.request("POST", f"/{INDEX}/_refresh")
        return int(store.request("GET", f"/{INDEX}/_count")["count"])
    except Exception:
        return 0


async def assert_nothing_committed_past(
    bootstrap: str, env: dict[str, str], topic: str, stored_ids: set[str]
) -> None:
    """No committed offset may be past the last document the store acknowledged."""
    stored_max: dict[int, int] = {}
    for doc_id in stored_ids:
        partition, offset = (int(x) for x in doc_id.rsplit("-", 2)[1:])
        stored_max[partition] = max(stored_max.get(partition, -1), offset)
    committed = await committed_offsets(bootstrap, env["GRAYSCOPE_CONSUMER_GROUP"], topic)
    for partition, offset in committed.items():
        assert offset <= stored_max.get(partition, -1) + 1, (partition, offset, stored_max)


def base_env(
    bootstrap: str, topic: str, dlq: str, store: OpenSearchNode | None, mode: str = "batch"
) -> dict[str, str]:
    return {
        "GRAYSCOPE_CONSUMER_MODE": mode,
        "GRAYSCOPE_KAFKA_BROKERS": bootstrap,
        "GRAYSCOPE_INPUT_TOPICS": topic,
        "GRAYSCOPE_DLQ_TOPIC": dlq,
        "GRAYSCOPE_CONSUMER_GROUP": unique_name("grayscope"),
        "GRAYSCOPE_ES_URL": store.url if store is not None else "",
    }


@pytest.mark.parametrize("mode", CONSUMER_MODES)
async def test_end_to_end_documents_spans_and_dead_letters(
    mode: str,
    bootstrap: str,
    unique_topic: str,
    topic_factory: Any,
    store: OpenSearchNode,
    receiver: OtlpReceiver,
    produce_lines: Any,
    read_records: Any,
    workers: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    dlq = await topic_factory(partitions=1, prefix="dlq")
    city, asn = write_test_dbs(tmp_path)
    env = base_env(bootstrap, unique_topic, dlq, store, mode)
    env |= {
        "GRAYSCOPE_OTLP_ENDPOINT": receiver.grpc_endpoint,
        "GRAYSCOPE_GEOIP_CITY_DB": str(city),
        "GRAYSCOPE_GEOIP_ASN_DB": str(asn),
    }
    worker = workers(env)
    worker.wait_ready()

    good = sample_lines()
    geo_ip = next(ip for ip in EXPECTED_GEO if ":" not in ip)
    geo_line = (
        '{"time_iso8601":"2026-11-20T12:00:05+00:00","remote_addr":"10.0.0.9",'
        '"request_method":"GET","request_uri":"/blog/go1.22?abt=ab12cd","status":"503",'
        '"request_time":"0.250","http_x_forwarded_for":"' + geo_ip + ', 10.0.0.2",'
        '"http_x_go_stage":"canary","request_id":"req-geo-1"}'
    ).encode()
    placed = await produce_lines(unique_topic, [*good, geo_line, *BAD_LINES])
    good_count = len(good) + 1

    await wait_until(lambda: store_count(store) >= good_count, 60, "documents indexed")
    dead = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(dead) < len(BAD_LINES):
        dead = await read_records(dlq)
        await asyncio.sleep(0.25)
    assert store_count(store) == good_count

    # _id comes from the Kafka coordinates; the geo line is the one before the bad lines.
    partition, offset = placed[len(good)]
    doc = store.request(
        "GET", f"/{INDEX.replace('*', '2026.11.20')}/_doc/{unique_topic}-{partition}-{offset}"
    )
    source = doc["_source"]
    assert source["client"]["ip"] == geo_ip
    expected = EXPECTED_GEO[geo_ip]
    assert source["client"]["geo"]["country_iso_code"] == expected.country_iso_code
    assert source["gray"] == {
        "id": "ab12cd",
        "id_source": "query",
        "stage": "canary",
        "path_group": "/blog/go1.22",
    }
    assert source["http"]["response"]["status_code"] == 503

    # Dead letters: original bytes, reason and source coordinates as headers.
    assert sorted(r.value for r in dead) == sorted(BAD_LINES)
    for record in dead:
        headers = {k: v.decode() for k, v in record.headers}
        assert headers["grayscope.reason"] in {
            "unknown_format",
            "not_an_object",
            "invalid_encoding",
        }
        assert headers["grayscope.source.topic"] == unique_topic
        coords = (
            int(headers["grayscope.source.partition"]),
            int(headers["grayscope.source.offset"]),
        )
        assert placed[[*good, geo_line, *BAD_LINES].index(record.value)] == coords

    # Spans: the Envoy seed line's trace id, and Jaeger-style search by gray.id.
    # Every stored request has its span (the spans of one batch may come in more than one
    # export request: waiting for all but one let the search below run before the last).
    await wait_until(lambda: len(receiver.spans()) >= good_count, 30, "spans exported")
    by_gray = receiver.find("gray.id", "exp00001")
    assert by_gray and by_gray[0]["trace_id"] == "5759e988bd862e3fe1be46a994272793"
    feature = receiver.find("gray.id", "feature01")
    assert feature and feature[0]["attributes"]["gray.version"] == "1.21"
    error_spans = receiver.find("gray.id", "ab12cd")
    assert error_spans and error_spans[0]["status_code"] == "STATUS_CODE_ERROR"
    assert error_spans[0]["attributes"]["geo.country.iso_code"] == expected.country_iso_code

    # Offsets are committed for everything (stored or dead-lettered).
    deadline = time.monotonic() + 15
    want = {}
    for p, o in placed:
        want[p] = max(want.get(p, 0), o + 1)
    while time.monotonic() < deadline:
        got = await committed_offsets(bootstrap, env["GRAYSCOPE_CONSUMER_GROUP"], unique_topic)
        if all(got.get(p, -1) >= o for p, o in want.items()):
            break
        await asyncio.sleep(0.5)
    assert all(got.get(p, -1) >= o for p, o in want.items()), (got, want)

    assert worker.metric("grayscope_dead_lettered_total") == len(BAD_LINES)
    assert worker.metric("grayscope_documents_indexed_total") == good_count
    assert worker.terminate() == 0


@pytest.mark.parametrize("mode", CONSUMER_MODES)
async def test_store_outage_holds_the_partition_and_loses_nothing(
    mode: str,
    bootstrap: str,
    unique_topic: str,
    topic_factory: Any,
    outage_store: OpenSearchNode,
    produce_lines: Any,
    workers: Callable[..., WorkerProcess],
) -> None:
    store = outage_store
    dlq = await topic_factory(partitions=1, prefix="dlq")
    env = base_env(bootstrap, unique_topic, dlq, store, mode)
    worker = workers(env)
    worker.wait_ready()
    lines = list(generate(3000, seed=7))
    first, during, after = lines[:1000], lines[1000:2000], lines[2000:]

    placed = await produce_lines(unique_topic, first)
    await wait_until(lambda: store_count(store) >= 500, 60, "first documents")
    # Freeze the worker so no bulk completes between our snapshot and the outage.
    assert worker.proc is not None
    os.killpg(worker.proc.pid, signal.SIGSTOP)
    await asyncio.sleep(0.5)  # a bulk in the socket buffer reaches the store
    await wait_for_bulks_done(store.url)
    before_outage = store_ids(store)
    store.stop()
    os.killpg(worker.proc.pid, signal.SIGCONT)

    placed += await produce_lines(unique_topic, during)
    await wait_until(lambda: worker.metric("grayscope_bulk_retries_total") >= 2, 30, "bulk retries")
    # Nothing past what the old store acknowledged may be committed.
    await assert_nothing_committed_past(bootstrap, env, unique_topic, before_outage)

    store.start()  # back on the same URL, with what it had stored
    placed += await produce_lines(unique_topic, after)
    expected = {f"{unique_topic}-{p}-{o}" for p, o in placed}
    await wait_until(
        lambda: before_outage | store_ids(store) >= expected, 90, "all documents after recovery"
    )
    after_outage = store_ids(store)
    assert before_outage | after_outage == expected
    assert store_count(store) == len(after_outage)  # one document per _id
    assert worker.metric("grayscope_dead_lettered_total") == 0


@pytest.mark.parametrize("mode", CONSUMER_MODES)
async def test_worker_sigkill_and_restart_loses_and_duplicates_nothing(
    mode: str,
    bootstrap: str,
    unique_topic: str,
    topic_factory: Any,
    store: OpenSearchNode,
    produce_lines: Any,
    workers: Callable[..., WorkerProcess],
) -> None:
    dlq = await topic_factory(partitions=1, prefix="dlq")
    env = base_env(bootstrap, unique_topic, dlq, store, mode) | {"GRAYSCOPE_BATCH_SIZE": "200"}
    lines = list(generate(6000, seed=11))
    placed = await produce_lines(unique_topic, lines)
    worker = workers(env)
    worker.wait_ready()
    await wait_until(lambda: store_count(store) >= 1000, 60, "some documents")
    worker.kill()
    partial = store_count(store)
    assert partial < len(lines), "worker finished before it was killed; produce more"

    replacement = workers(env)
    replacement.wait_ready()
    expected = {f"{unique_topic}-{p}-{o}" for p, o in placed}
    await wait_until(lambda: store_count(store) >= len(expected), 120, "all documents")
    assert store_ids(store) == expected
    assert store_count(store) == len(expected)
    assert replacement.terminate() == 0


async def test_mapping_rejection_dead_letters_only_that_message(
    bootstrap: str,
    unique_topic: str,
    topic_factory: Any,
    store: OpenSearchNode,
    produce_lines: Any,
    read_records: Any,
    workers: Callable[..., WorkerProcess],
) -> None:
    # A user's cluster where gray.version is numeric: "1.22" can't be indexed, "5" can.
    store.request(
        "PUT",
        "/_index_template/conflicting-version",
        {
            "index_patterns": ["grayscope-access-*"],
            "priority": 900,
            "template": {
                "mappings": {"properties": {"gray": {"properties": {"version": {"type": "long"}}}}}
            },
        },
    )
    dlq = await topic_factory(partitions=1, prefix="dlq")
    env = base_env(bootstrap, unique_topic, dlq, store)
    line = (
        '{"time_iso8601":"2026-11-20T12:00:02+00:00","remote_addr":"10.0.0.9",'
        '"request_method":"GET","request_uri":"/doc/x?v=VERSION","status":"200"}'
    )
    good = [line.replace("VERSION", str(n)).encode() for n in range(1, 8)]
    bad = line.replace("VERSION", "1.22rc1").encode()
    placed = await produce_lines(unique_topic, [*good[:3], bad, *good[3:]], partition=0)
    worker = workers(env)
    worker.wait_ready()

    await wait_until(lambda: store_count(store) >= len(good), 60, "good documents")
    dead: list[Any] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not dead:
        dead = await read_records(dlq)
        await asyncio.sleep(0.25)
    assert [r.value for r in dead] == [bad]
    headers = {k: v.decode() for k, v in dead[0].headers}
    assert headers["grayscope.reason"] == "mapping_rejected"
    assert "version" in headers["grayscope.detail"]
    assert int(headers["grayscope.source.offset"]) == placed[3][1]
    assert store_count(store) == len(good)

    last = max(o for _, o in placed)
    deadline = time.monotonic() + 15
    committed: dict[int, int] = {}
    while time.monotonic() < deadline:
        committed = await committed_offsets(
            bootstrap, env["GRAYSCOPE_CONSUMER_GROUP"], unique_topic
        )
        if committed.get(0, -1) >= last + 1:
            break
        await asyncio.sleep(0.5)
    assert committed.get(0) == last + 1


async def test_otlp_outage_never_stops_indexing(
    bootstrap: str,
    unique_topic: str,
    topic_factory: Any,
    store: OpenSearchNode,
    receiver: OtlpReceiver,
    produce_lines: Any,
    workers: Callable[..., WorkerProcess],
) -> None:
    receiver.down()
    dlq = await topic_factory(partitions=1, prefix="dlq")
    env = base_env(bootstrap, unique_topic, dlq, store) | {
        "GRAYSCOPE_OTLP_ENDPOINT": receiver.http_endpoint,
        "GRAYSCOPE_OTLP_MAX_RETRIES": "1",
        "GRAYSCOPE_OTLP_TIMEOUT": "1",
        "GRAYSCOPE_OTLP_QUEUE_SIZE": "500",
    }
    worker = workers(env)
    worker.wait_ready()
    lines = list(generate(3000, seed=5))
    await produce_lines(unique_topic, lines)
    await wait_until(
        lambda: store_count(store) >= len(lines), 60, "all documents despite OTLP down"
    )
    await wait_until(
        lambda: worker.metric("grayscope_spans_dropped_total") > 0, 30, "spans counted as dropped"
    )
    assert worker.metric("grayscope_spans_exported_total") == 0
    receiver.up()
    await produce_lines(unique_topic, lines[:50])
    await wait_until(
        lambda: len(receiver.spans()) > 0, 30, "export resumes when the receiver is back"
    )


async def test_sigterm_during_store_outage_exits_without_committing_unstored(
    bootstrap: str,
    unique_topic: str,
    topic_factory: Any,
    outage_store: OpenSearchNode,
    produce_lines: Any,
    workers: Callable[..., WorkerProcess],
) -> None:
    store = outage_store
    dlq = await topic_factory(partitions=1, prefix="dlq")
    env = base_env(bootstrap, unique_topic, dlq, store) | {"GRAYSCOPE_SHUTDOWN_GRACE": "3"}
    worker = workers(env)
    worker.wait_ready()
    lines = list(generate(2000, seed=3))
    await produce_lines(unique_topic, lines[:500])
    await wait_until(lambda: store_count(store) >= 500, 60, "first documents")
    stored = store_ids(store)
    store.stop()
    await produce_lines(unique_topic, lines[500:])
    await wait_until(lambda: worker.metric("grayscope_bulk_retries_total") >= 1, 30, "bulk retries")
    started = time.monotonic()
    code = worker.terminate(timeout=60)
    assert time.monotonic() - started < 30, "SIGTERM must stop the worker in bounded time"
    assert code is not None
    await assert_nothing_committed_past(bootstrap, env, unique_topic, stored)


async def test_the_workers_temporary_data_dir_is_removed_when_it_exits(
    bootstrap: str,
    unique_topic: str,
    topic_factory: Any,
    workers: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    """Without GRAYSCOPE_DATA_DIR the worker makes one temporary Faust data directory
    and removes it as it exits on SIGTERM: restarts must not pile them up."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    dlq = await topic_factory(partitions=1, prefix="dlq")
    worker = workers(base_env(bootstrap, unique_topic, dlq, None) | {"TMPDIR": str(tmp)})
    worker.wait_ready()
    assert [p.name.startswith("grayscope-faust-") for p in tmp.iterdir()] == [True]
    assert worker.terminate() == 0
    assert list(tmp.iterdir()) == []


@pytest.mark.partitions(4)
async def test_two_workers_share_the_group_through_rebalances(
    bootstrap: str,
    unique_topic: str,
    topic_factory: Any,
    store: OpenSearchNode,
    produce_lines: Any,
    workers: Callable[..., WorkerProcess],
) -> None:
    dlq = await topic_factory(partitions=1, prefix="dlq")
    env = base_env(bootstrap, unique_topic, dlq, store) | {"GRAYSCOPE_BATCH_SIZE": "100"}
    lines = list(generate(6000, seed=13))
    first = workers(env)
    first.wait_ready()
    placed = await produce_lines(unique_topic, lines[:2000])
    second = workers(env)  # joins the group: partitions are split between the two
    second.wait_ready()
    await wait_until(lambda: store_count(store) >= 2000, 60, "first part")
    placed += await produce_lines(unique_topic, lines[2000:4000])
    await wait_until(
        lambda: second.metric("grayscope_documents_indexed_total") > 0, 60, "second worker indexing"
    )
    assert first.terminate() == 0  # leaves the group: the second takes every partition
    placed += await produce_lines(unique_topic, lines[4000:])
    expected = {f"{unique_topic}-{p}-{o}" for p, o in placed}
    try:
        await wait_until(lambda: store_count(store) >= len(expected), 90, "all documents")
    except AssertionError as exc:
        missing = sorted(expected - store_ids(store))
        raise AssertionError(
            f"{exc}: {len(missing)} missing, e.g. {missing[:5]}\n"
            f"second worker:\n{second.tail(80)}\nfirst worker:\n{first.tail(40)}"
        ) from None
    assert store_ids(store) == expected
    assert second.terminate() == 0


def data_stream_ids(store: OpenSearchNode) -> list[str]:
    try:
        store.request("POST", f"/{DATA_STREAM_NAME}/_refresh")
        body = store.request(
            "POST", f"/{DATA_STREAM_NAME}/_search", {"size": 10_000, "_source": False}
        )
    except ServiceError:  # not created yet
        return []
    return [hit["_id"] for hit in body["hits"]["hits"]]


async def test_default_data_stream_mode_stores_once_and_a_replay_answers_409(
    bootstrap: str,
    unique_topic: str,
    topic_factory: Any,
    store: OpenSearchNode,
    produce_lines: Any,
    workers: Callable[..., WorkerProcess],
) -> None:
    dlq = await topic_factory(partitions=1, prefix="dlq")
    env = base_env(bootstrap, unique_topic, dlq, store) | {"GRAYSCOPE_ES_MODE": "data_stream"}
    placed = await produce_lines(unique_topic, list(generate(600, seed=17)))
    expected = sorted(f"{unique_topic}-{p}-{o}" for p, o in placed)
    worker = workers(env)
    worker.wait_ready()
    await wait_until(lambda: len(data_stream_ids(store)) >= len(expected), 60, "documents")
    assert worker.terminate() == 0
    # The worker installed the templates; the data stream was made by the first `create`.
    template = store.request("GET", "/_index_template/grayscope-access-data-stream")
    assert template["index_templates"][0]["index_template"]["data_stream"] is not None
    streams = store.request("GET", f"/_data_stream/{DATA_STREAM_NAME}")["data_streams"]
    assert [s["name"] for s in streams] == [DATA_STREAM_NAME]

    # A replay of every offset (a new group from the start): each `create` answers 409,
    # counts as stored, and the offsets are committed; nothing is duplicated.
    replay_env = env | {"GRAYSCOPE_CONSUMER_GROUP": unique_name("replay")}
    replay = workers(replay_env)
    replay.wait_ready()
    await wait_until(
        lambda: replay.metric("grayscope_documents_indexed_total") >= len(expected),
        60,
        "the replay acknowledged",
    )
    assert sorted(data_stream_ids(store)) == expected
    assert replay.metric("grayscope_dead_lettered_total") == 0
    assert replay.terminate() == 0

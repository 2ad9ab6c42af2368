"""pipeline.dev.synth: deterministic, realistic, every line accepted by the core."""

from __future__ import annotations

import collections
import itertools
import statistics
from typing import Any

import orjson
import pytest

from pipeline.core.process import Enriched, process
from pipeline.core.enrich import EnrichContext
from pipeline.core.extract.path_group import PathRules
from pipeline.dev.synth import (
    CLIENT_BLOCKS_V4,
    CLIENT_BLOCKS_V6,
    DEFAULT_START_NS,
    PATH_RULES,
    Regression,
    generate,
    synthetic_clock,
)
from tests.unit.conftest import mapping_problems

N = 3000


def context() -> EnrichContext:
    return EnrichContext(path_rules=PathRules.from_config([dict(r) for r in PATH_RULES], 2))


def documents(lines: list[bytes]) -> list[dict[str, Any]]:
    ctx = context()
    out = []
    for line in lines:
        result = process(line, ctx)
        assert isinstance(result, Enriched), (line, result)
        out.append(result.document)
    return out


@pytest.fixture(scope="module")
def stream() -> list[bytes]:
    return list(generate(N, seed=1))


@pytest.fixture(scope="module")
def stream_docs(stream: list[bytes]) -> list[dict[str, Any]]:
    return documents(stream)


def test_deterministic_per_seed(stream: list[bytes]) -> None:
    assert list(generate(200, seed=1)) == stream[:200]
    assert list(generate(200, seed=2)) != stream[:200]


def test_unbounded_when_n_is_none() -> None:
    assert len(list(itertools.islice(generate(None, seed=3), 50))) == 50


def test_every_line_is_accepted_and_mapped(stream_docs: list[dict[str, Any]]) -> None:
    for document in stream_docs:
        assert mapping_problems(document) == []


def test_realistic_line_length(stream: list[bytes]) -> None:
    assert 450 <= statistics.mean(map(len, stream)) <= 750


def test_a_mix_of_all_formats_and_envelopes(stream: list[bytes]) -> None:
    kinds: collections.Counter[str] = collections.Counter()
    for line in stream:
        if not line.startswith(b"{"):
            kinds["text"] += 1
            continue
        obj = orjson.loads(line)
        if "source_type" in obj:
            kinds["vector"] += 1
        elif "@metadata" in obj:
            kinds["filebeat"] += 1
        elif "log" in obj:
            kinds["fluent_bit"] += 1
        elif "route_name" in obj:
            kinds["istio"] += 1
        elif "time" in obj:
            kinds["envoy_typed"] += 1
        else:
            kinds["nginx_json"] += 1
    for kind in ("text", "vector", "filebeat", "fluent_bit", "istio", "envoy_typed", "nginx_json"):
        assert kinds[kind] > N * 0.03, kinds


def test_datasets_stages_versions_and_gray_ids(stream_docs: list[dict[str, Any]]) -> None:
    datasets = collections.Counter(d["event"]["dataset"] for d in stream_docs)
    stages = collections.Counter(d["gray"]["stage"] for d in stream_docs)
    versions = collections.Counter(d["gray"].get("version") for d in stream_docs)
    sources = collections.Counter(d["gray"].get("id_source") for d in stream_docs)
    assert datasets["envoy.access"] > N * 0.2 and datasets["nginx.access"] > N * 0.4
    assert 0.07 < stages["canary"] / N < 0.13  # canary_share=0.1
    assert versions["1.22"] > versions["1.23"] > 0
    assert sources["header"] > 0 and sources["query"] > 0


def test_path_groups_with_the_synth_rules(stream_docs: list[dict[str, Any]]) -> None:
    groups = collections.Counter(d["gray"].get("path_group") for d in stream_docs)
    assert set(groups) == {
        "/godoc/pkg",
        "/blog",
        "/doc/tutorial",
        "/play/share",
        "/dl",
        "/search",
        "/static",
    }


def test_clients_are_public_and_behind_trusted_proxies(stream_docs: list[dict[str, Any]]) -> None:
    v4_blocks = tuple(prefix + "." for _, prefix, _ in CLIENT_BLOCKS_V4)
    v6_blocks = tuple(prefix + ":" for _, prefix in CLIENT_BLOCKS_V6)
    behind_proxy = 0
    for document in stream_docs:
        client = document["client"]["ip"]
        if client.startswith(v4_blocks) or client.startswith(v6_blocks):
            behind_proxy += document["source"]["ip"] != client
        else:
            # only nginx combined lines log no X-Forwarded-For: the peer is the client
            assert client == document["source"]["ip"]
    assert behind_proxy > N * 0.9
    assert any(":" in d["client"]["ip"] for d in stream_docs)


def test_statuses_and_latencies_look_real(stream_docs: list[dict[str, Any]]) -> None:
    statuses = collections.Counter(d["http"]["response"]["status_code"] for d in stream_docs)
    assert statuses[200] > N * 0.8
    assert 0 < sum(n for s, n in statuses.items() if s >= 500) < N * 0.02
    durations = [d["event"]["duration"] for d in stream_docs if "duration" in d["event"]]
    assert 5_000_000 < statistics.median(durations) < 60_000_000


def error_rate(docs: list[dict[str, Any]], group: str, stage: str) -> float:
    chosen = [
        d for d in docs if d["gray"].get("path_group") == group and d["gray"]["stage"] == stage
    ]
    return sum(d["http"]["response"]["status_code"] >= 500 for d in chosen) / len(chosen)


def test_the_regression_knob_hurts_only_its_canary_path_group() -> None:
    regression = Regression(path_group="/play/share", error_rate=0.5, extra_latency_ms=500)
    docs = documents(list(generate(6000, seed=5, canary_share=0.3, regression=regression)))
    assert error_rate(docs, "/play/share", "canary") > 0.3
    assert error_rate(docs, "/play/share", "stable") < 0.05
    assert error_rate(docs, "/godoc/pkg", "canary") < 0.05


def test_canary_share_knob() -> None:
    docs = documents(list(generate(2000, seed=6, canary_share=0.5)))
    canary = sum(d["gray"]["stage"] == "canary" for d in docs) / len(docs)
    assert 0.4 < canary < 0.6
    with pytest.raises(ValueError):
        next(generate(1, canary_share=1.5))


def test_timestamps_come_from_the_clock() -> None:
    clock = synthetic_clock(DEFAULT_START_NS, events_per_second=10)
    docs = documents(list(generate(20, seed=7, clock=clock)))
    stamps = sorted(d["@timestamp"] for d in docs)
    # nginx's time_iso8601 has whole seconds: a start can come out up to ~1 s early.
    assert stamps[0] >= "2026-11-20T11:59:59"
    assert stamps[-1] < "2026-11-20T12:00:03"
    fixed = documents(list(generate(5, seed=7, clock=lambda: DEFAULT_START_NS)))
    assert all(d["@timestamp"].startswith("2026-11-20T1") for d in fixed)


def test_client_blocks_resolve_in_the_bundled_geolite2_database() -> None:
    """Every synthetic client address has a country, region, city and location."""
    geolite2 = pytest.importorskip("geolite2")
    maxminddb = pytest.importorskip("maxminddb")
    reader = maxminddb.open_database(str(geolite2.geolite2_database()))
    try:
        for country, prefix, _ in CLIENT_BLOCKS_V4:
            for last in (1, 127, 254):
                record = reader.get(f"{prefix}.{last}")
                assert record["country"]["iso_code"] == country, prefix
                assert record["city"]["names"]["en"]
                assert record["subdivisions"][0]["iso_code"]
                assert "latitude" in record["location"]
        for country, prefix in CLIENT_BLOCKS_V6:
            record = reader.get(f"{prefix}:1234:5678::9")
            assert record["country"]["iso_code"] == country, prefix
            assert record["city"]["names"]["en"]
    finally:
        reader.close()

"""The benchmark's OpenTelemetry Collector on real Kafka and OpenSearch (bench/otelcol.py).

The collector is a Go build of minutes, so ``make test`` does not build it: the
test runs when the binary is in the service cache (``python -m
pipeline.dev.stack.otelcol build``, or ``grayscope stack fetch`` with
``GRAYSCOPE_STACK_OTELCOL=1``) and is skipped, saying so, when it is not. With
``GRAYSCOPE_STACK_OTELCOL=1`` it builds the binary instead of skipping.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.otelcol import (
    collector_documents,
    field_agreement,
    grayscope_documents,
    run_otelcol,
)
from pipeline.config import StackSettings, bundled_city_db
from pipeline.dev.stack.kafka import produce_values
from pipeline.dev.stack.opensearch import OpenSearchNode
from pipeline.dev.stack.otelcol import build_otelcol, otelcol_binary_path
from pipeline.dev.synth import generate
from tests.integration.conftest import TopicFactory

# Enough lines that the run spans several of the bench's metric polls (0.1 s apart): a run
# over between two polls would measure no CPU.
EVENTS = 2000

#: Fields the collector configuration derives like grayscope does (bench/README.md's
#: table says "yes"): on the synthetic mix they must agree on every matched document.
SAME_FIELDS = (
    "event.dataset",
    "http.request.method",
    "http.response.status_code",
    "http.response.body.bytes",
    "url.original",
    "url.query",
    "user_agent.original",
    "source.ip",
    "client.ip",
    "client.geo.country_iso_code",
    "client.geo.city_name",
    "trace.id",
    "gray.id",
    "gray.id_source",
    "gray.version",
)


# Session scope, first argument: it is set up (or skips) before the services start.
@pytest.fixture(scope="session")
def otelcol_binary(stack_settings: StackSettings) -> Path:
    cache = Path(stack_settings.cache_dir)
    binary = otelcol_binary_path(cache)
    if binary.exists():
        return binary
    if not stack_settings.stack_otelcol:
        pytest.skip(
            f"the OpenTelemetry Collector is not built ({binary} is missing) and "
            "GRAYSCOPE_STACK_OTELCOL is off: build it with `python -m pipeline.dev.stack.otelcol "
            "build` (a Go build of minutes) or set GRAYSCOPE_STACK_OTELCOL=1"
        )
    return build_otelcol(cache)


async def test_collector_indexes_every_line_with_grayscope_fields(
    otelcol_binary: Path,
    bootstrap: str,
    topic_factory: TopicFactory,
    store: OpenSearchNode,
    stack_settings: StackSettings,
    tmp_path: Path,
) -> None:
    geoip_db = bundled_city_db()
    if not geoip_db:
        pytest.skip("no GeoLite2-City database (maxminddb-geolite2 is not installed)")
    values = list(generate(EVENTS, seed=7))
    topic = await topic_factory(partitions=4, prefix="otelcol")
    await produce_values(bootstrap, topic, values, acks=1)

    # Blocking on purpose: the test has nothing else to run meanwhile.
    result = run_otelcol(
        bootstrap,
        topic,
        EVENTS,
        store.url,
        "",
        geoip_db,
        tmp_path,
        timeout=180.0,
        cache_dir=Path(stack_settings.cache_dir),
    )

    assert result["sent"] == EVENTS and result["send_failed"] == 0
    assert result["docs_indexed"] == EVENTS
    assert result["events_per_s"] > 0 and result["cpu_us_per_event"] > 0
    agreement = field_agreement(
        grayscope_documents(values, geoip_db),
        collector_documents(store.url, result["index"], EVENTS),
    )
    assert agreement["http.request.id"]["same"] > EVENTS // 3  # the JSON formats
    for name in SAME_FIELDS:
        counts = agreement[name]
        assert counts["same"] == counts["grayscope"] == counts["collector"], (name, counts)

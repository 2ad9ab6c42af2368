"""Prometheus exposition of the worker's counters.

Components keep plain counters on small stats dataclasses (no per-event cost
beyond an integer add); this collector reads them at scrape time. Counters
end in ``_total``; dict-valued counters get one bounded label (reason,
outcome, dataset) — never a client address.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.utils import floatToGoString

from pipeline.core.buckets import count_floats
from pipeline.metrics.requests import RequestMetrics

PREFIX = "grayscope_"
LABEL_FOR = {
    "dead_lettered_total": "reason",
    "spans_dropped_total": "reason",
    "export_requests_total": "outcome",
    "bulk_requests_total": "outcome",
    "events_enriched_total": "dataset",
    "canary_verdicts_total": "decision",
    "canary_verdict_publish_errors_total": "sink",
}
# Bulk requests take from ~1 ms (loopback) to the request timeout.
BULK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def stats_metrics(component: str, stats: Any) -> Iterator[Metric]:
    """Metric families for one stats dataclass (or object with ``snapshot()``)."""
    if dataclasses.is_dataclass(stats):
        values = {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}
    else:
        values = dict(stats.snapshot())
    for name, value in values.items():
        full = name if name.startswith(PREFIX) else PREFIX + name
        doc = f"{component}: {name.replace('_', ' ')}"
        if isinstance(value, dict):
            label = LABEL_FOR.get(name, "kind")
            family: Metric = (
                CounterMetricFamily(full.removesuffix("_total"), doc, labels=[label])
                if name.endswith("_total")
                else GaugeMetricFamily(full, doc, labels=[label])
            )
            for key, count in sorted(value.items()):
                family.add_metric([str(key)], count)  # type: ignore[attr-defined]
            yield family
        elif isinstance(value, bool):
            continue
        elif isinstance(value, (int, float)):
            if name.endswith("_total"):
                yield CounterMetricFamily(full.removesuffix("_total"), doc, value=value)
            else:
                yield GaugeMetricFamily(full, doc, value=value)


# Kafka record time -> stored/dead-lettered: 1 ms .. ~60 s, ~12% apart (p99 within a bucket).
LAG_BUCKETS = tuple(round(0.001 * 1.12**i, 6) for i in range(98))


class LatencyHistogram:
    """Cumulative histogram fed a batch at a time (counted in the compiled core, no locks,
    no labels)."""

    def __init__(self, bounds: tuple[float, ...] = LAG_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.n = 0

    def observe_many(self, values: list[float]) -> None:
        counted, total = count_floats(values, self.bounds, self.counts)
        self.total += total
        self.n += counted

    def quantile(self, q: float) -> float | None:
        """Linear interpolation inside the bucket holding the q-th value."""
        if self.n == 0:
            return None
        rank = q * self.n
        seen = 0
        lower = 0.0
        for i, count in enumerate(self.counts):
            if count and seen + count >= rank:
                upper = self.bounds[i] if i < len(self.bounds) else lower * 1.12
                return lower + (upper - lower) * ((rank - seen) / count)
            seen += count
            lower = self.bounds[i] if i < len(self.bounds) else lower
        return lower

    def metric(self, name: str, doc: str) -> Metric:
        cumulative = 0
        buckets = []
        for bound, count in zip(self.bounds, self.counts, strict=False):
            cumulative += count
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", self.n))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.total)


class _StatsCollector:
    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

    def collect(self) -> Iterator[Metric]:
        for component, stats in self._telemetry.sources():
            yield from stats_metrics(component, stats)
        yield self._telemetry.delivery_latency.metric(
            PREFIX + "delivery_latency_seconds",
            "Kafka record timestamp to stored or dead-lettered (end-to-end latency)",
        )
        lag = self._telemetry.consumer_lag()
        if lag is not None:
            family = GaugeMetricFamily(
                PREFIX + "consumer_lag",
                "messages behind the high watermark",
                labels=["topic", "partition"],
            )
            for (topic, partition), value in sorted(lag.items()):
                family.add_metric([topic, str(partition)], value)
            yield family


# Help texts of the request metrics' families (``request_metrics_text``; the tests'
# reference families read them too).
HTTP_REQUESTS_HELP = "requests in the access logs, by path group, stage, version and status class"
HTTP_REQUEST_DURATION_HELP = (
    "request duration as logged by the proxy, by path group, stage and version"
)
CANARY_VERDICT_HELP = (
    "current canary verdict per path group: 1 for the current decision, 0 for the others"
)


def _label_value(value: str) -> str:
    """A label value as the text format writes it: backslash, newline and quote escaped."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _family_header(name: str, doc: str, kind: str) -> str:
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


def request_metrics_text(requests: RequestMetrics, verdicts: list[tuple[str, str]]) -> str:
    """The access logs' request metrics (pipeline/metrics/requests.py) in the text format.

    Written directly instead of as metric families for ``generate_latest``: these
    are most of the page (a histogram of 21 buckets per path group, stage and
    version), and prometheus_client builds a sample with a label dict for every
    line, then sorts, validates and escapes every label again (~4 µs a line: 8.5 of
    the 11.5 ms of a 2,400-sample page, bench/metrics_render.py). Here each
    series' label block is escaped once and every line is one f-string. The text
    is the one ``generate_latest`` writes for the same families, byte for byte:
    labels in name order, values as ``floatToGoString``
    (tests/unit/test_request_metrics.py compares them).
    """
    out = []
    name = PREFIX + "http_requests_total"
    out.append(
        _family_header(
            name,
            HTTP_REQUESTS_HELP,
            "counter",
        )
    )
    for (path_group, stage, version, status), count in sorted(requests.requests.items()):
        labels = (
            f'path_group="{_label_value(path_group)}",stage="{_label_value(stage)}",'
            f'status_class="{_label_value(status)}",version="{_label_value(version)}"'
        )
        out.append(f"{name}{{{labels}}} {floatToGoString(count)}\n")
    name = PREFIX + "http_request_duration_seconds"
    out.append(
        _family_header(
            name,
            HTTP_REQUEST_DURATION_HELP,
            "histogram",
        )
    )
    for (path_group, stage, version), durations in sorted(requests.durations.items()):
        labels = (
            f'path_group="{_label_value(path_group)}",stage="{_label_value(stage)}",'
            f'version="{_label_value(version)}"'
        )
        out.extend(
            f'{name}_bucket{{le="{le}",{labels}}} {floatToGoString(value)}\n'
            for le, value in durations.cumulative()
        )
        out.append(f"{name}_count{{{labels}}} {floatToGoString(durations.count)}\n")
        out.append(f"{name}_sum{{{labels}}} {floatToGoString(durations.sum_seconds)}\n")
    name = PREFIX + "canary_verdict"
    out.append(
        _family_header(
            name,
            CANARY_VERDICT_HELP,
            "gauge",
        )
    )
    for path_group, decision, value in requests.verdict_series(verdicts):
        labels = f'decision="{_label_value(decision)}",path_group="{_label_value(path_group)}"'
        out.append(f"{name}{{{labels}}} {floatToGoString(value)}\n")
    return "".join(out)


class Telemetry:
    """Registry + histogram for one worker; ``runtime`` supplies the stats sources."""

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime
        self.registry = CollectorRegistry(auto_describe=False)
        self.bulk_latency = Histogram(
            PREFIX + "bulk_request_duration_seconds",
            "Elasticsearch bulk request latency",
            buckets=BULK_BUCKETS,
            registry=self.registry,
        )
        self.delivery_latency = LatencyHistogram()
        self.registry.register(_StatsCollector(self))  # type: ignore[arg-type]

    def sources(self) -> Iterator[tuple[str, Any]]:
        rt = self._runtime
        for component, attr_path in (
            ("batches", ("_handler", "stats")),
            ("dead letters", ("dead_letters", "stats")),
            ("store", ("store", "stats")),
            ("otlp", ("exporter", "stats")),
            ("geoip", ("geoip", "stats")),
            ("canary", ("canary_observer", "stats")),
        ):
            obj: Any = rt
            for attr in attr_path:
                obj = getattr(obj, attr, None)
                if obj is None:
                    break
            if obj is not None:
                yield component, obj

    def request_metrics(self) -> RequestMetrics | None:
        metrics = getattr(self._runtime, "request_metrics", None)
        return metrics if isinstance(metrics, RequestMetrics) else None

    def current_verdicts(self) -> list[tuple[str, str]]:
        """``(path group, decision)`` of the canary verdicts this worker evaluated last.

        The only interface to the verdict engine: the app's ``grayscope_canary``
        (agents/canary.py) holds ``verdicts``, each with a ``path_group`` and a
        ``decision`` (a string enum). Absent (canary analysis off): none.
        """
        canary = getattr(getattr(self._runtime, "app", None), "grayscope_canary", None)
        out = []
        for verdict in getattr(canary, "verdicts", None) or ():
            decision = getattr(verdict, "decision", None)
            path_group = getattr(verdict, "path_group", None)
            if isinstance(path_group, str) and decision is not None:
                out.append((path_group, str(getattr(decision, "value", decision))))
        return out

    def consumer_lag(self) -> dict[tuple[str, int], int] | None:
        """(topic, partition) -> high watermark - committed offset; None when unknown."""
        lag = getattr(self._runtime, "consumer_lag", None)
        try:
            return lag() if lag is not None else None
        except Exception:  # lag is best effort: never break a scrape
            return None

    async def render(self) -> tuple[bytes, str]:
        body = generate_latest(self.registry)
        requests = self.request_metrics()
        if requests is not None:
            # After the registry's families, where they were when a collector yielded them.
            body += request_metrics_text(requests, self.current_verdicts()).encode()
        return body, CONTENT_TYPE_LATEST


def parse_samples(text: str) -> list[tuple[str, str, float]]:
    """Prometheus text exposition -> ``(name, label block as written or "", value)``.

    Comments, blank and unreadable lines are skipped. The one reader of
    ``/metrics`` text for the demo, the benchmarks and the tests.
    """
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name, brace, labels = series.partition("{")
        try:
            samples.append((name.strip(), brace + labels if brace else "", float(value)))
        except ValueError:
            continue
    return samples


def sample_sums(text: str) -> dict[str, float]:
    """Sample name -> value summed over its label sets; also ``name{labels}`` -> value."""
    out: dict[str, float] = {}
    for name, labels, value in parse_samples(text):
        if not name:
            continue
        out[name] = out.get(name, 0.0) + value
        if labels:
            out[name + labels] = value
    return out

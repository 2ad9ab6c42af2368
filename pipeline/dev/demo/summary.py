"""The demo's drill-down as aggregation queries, and their responses as plain rows.

One ``_search`` (size 0) over the daily indices answers every table: the
``terms``, ``filter``, ``range`` and ``percentiles`` aggregations a Kibana
Lens panel would send. Pure: :func:`summary_query` builds the body,
:func:`parse_summary` reads the response; the HTTP call lives elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

INDEX_PATTERN = "grayscope-access-*"
STAGE_FIELD = "gray.stage"
DURATION_FIELD = "event.duration"  # nanoseconds
SERVER_ERRORS = {"range": {"http.response.status_code": {"gte": 500}}}
MISSING = "(none)"
TOP_GROUPS = 20
TOP_VERSIONS = 10
TOP_COUNTRIES = 10
TOP_GRAY_IDS = 5


@dataclass(frozen=True, slots=True)
class Cell:
    """Requests, server errors (5xx) and p95 latency of one bucket."""

    requests: int = 0
    errors: int = 0
    p95_ms: float | None = None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass(frozen=True, slots=True)
class Window:
    """When one rollout stage ran, wall clock (epoch ns); the end is exclusive."""

    label: str
    canary_share: float
    start_ns: int
    end_ns: int


@dataclass(frozen=True, slots=True)
class StageRow:
    window: Window
    total: Cell
    by_stage: dict[str, Cell]

    @property
    def observed_canary_share(self) -> float | None:
        canary = self.by_stage.get("canary")
        if not self.total.requests:
            return None
        return (canary.requests if canary else 0) / self.total.requests


@dataclass(frozen=True, slots=True)
class GroupRow:
    key: str
    total: Cell
    by_stage: dict[str, Cell]


@dataclass(frozen=True, slots=True)
class CountryRow:
    code: str
    name: str
    total: Cell
    canary_requests: int


@dataclass(frozen=True, slots=True)
class GrayIdRow:
    gray_id: str
    stage: str
    total: Cell


@dataclass(slots=True)
class Summary:
    total: Cell = field(default_factory=Cell)
    countries: int = 0
    rollout: list[StageRow] = field(default_factory=list)
    path_groups: list[GroupRow] = field(default_factory=list)
    versions: list[GroupRow] = field(default_factory=list)
    countries_top: list[CountryRow] = field(default_factory=list)
    gray_ids: list[GrayIdRow] = field(default_factory=list)


def iso_ms(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rest // 1_000_000:03d}Z"


def _metrics() -> dict[str, Any]:
    return {
        "errors": {"filter": SERVER_ERRORS},
        "latency": {"percentiles": {"field": DURATION_FIELD, "percents": [95]}},
    }


def _by_stage() -> dict[str, Any]:
    return {"by_stage": {"terms": {"field": STAGE_FIELD, "size": 5}, "aggs": _metrics()}}


def summary_query(windows: Sequence[Window]) -> dict[str, Any]:
    """The ``_search`` body behind every table of the summary."""
    ranges: list[dict[str, Any]] = []
    for position, window in enumerate(windows):
        bucket: dict[str, Any] = {"key": window.label}
        # The first and last windows stay open: an nginx line is stamped at the
        # end of its request, which can fall just after the traffic stopped.
        if position > 0:
            bucket["from"] = iso_ms(window.start_ns)
        if position < len(windows) - 1:
            bucket["to"] = iso_ms(window.end_ns)
        ranges.append(bucket)
    aggs: dict[str, Any] = {
        **_metrics(),
        "countries": {"cardinality": {"field": "client.geo.country_iso_code"}},
        # osmem's aggregations cost time per document and node: only what the tables show.
        "by_path_group": {
            "terms": {"field": "gray.path_group", "size": TOP_GROUPS, "missing": MISSING},
            "aggs": _by_stage(),
        },
        "by_version": {
            "terms": {"field": "gray.version", "size": TOP_VERSIONS, "missing": MISSING},
            "aggs": {
                **_metrics(),
                "by_stage": {"terms": {"field": STAGE_FIELD, "size": 5}},
            },
        },
        "by_country": {
            "terms": {
                "field": "client.geo.country_iso_code",
                "size": TOP_COUNTRIES,
                "missing": MISSING,
            },
            "aggs": {
                **_metrics(),
                "name": {"terms": {"field": "client.geo.country_name", "size": 1}},
                "canary": {"filter": {"term": {STAGE_FIELD: "canary"}}},
            },
        },
        "by_gray_id": {
            "terms": {"field": "gray.id", "size": TOP_GRAY_IDS},
            "aggs": {**_metrics(), "stage": {"terms": {"field": STAGE_FIELD, "size": 1}}},
        },
    }
    if ranges:
        aggs["by_rollout_stage"] = {
            "range": {"field": "@timestamp", "ranges": ranges, "keyed": False},
            "aggs": _by_stage(),
        }
    return {"size": 0, "track_total_hits": True, "aggs": aggs}


def _p95_ms(agg: Mapping[str, Any] | None) -> float | None:
    values = (agg or {}).get("values")
    raw: Any = None
    if isinstance(values, Mapping):
        raw = next((v for k, v in values.items() if float(k) == 95.0), None)
    elif isinstance(values, list):  # keyed: false
        raw = next((v.get("value") for v in values if float(v.get("key", 0)) == 95.0), None)
    if raw is None:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value / 1_000_000


def parse_cell(bucket: Mapping[str, Any]) -> Cell:
    errors = bucket.get("errors") or {}
    return Cell(
        requests=int(bucket.get("doc_count", 0)),
        errors=int(errors.get("doc_count", 0)),
        p95_ms=_p95_ms(bucket.get("latency")),
    )


def _stage_cells(bucket: Mapping[str, Any]) -> dict[str, Cell]:
    stages = (bucket.get("by_stage") or {}).get("buckets") or []
    return {str(b["key"]): parse_cell(b) for b in stages}


def _buckets(aggs: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    buckets = (aggs.get(name) or {}).get("buckets") or []
    if isinstance(buckets, Mapping):  # keyed: true
        return [{"key": key, **value} for key, value in buckets.items()]
    return list(buckets)


def parse_summary(response: Mapping[str, Any], windows: Sequence[Window] = ()) -> Summary:
    """The summary's rows from a :func:`summary_query` response."""
    aggs: Mapping[str, Any] = response.get("aggregations") or {}
    total_hits = (response.get("hits") or {}).get("total") or {}
    requests = total_hits.get("value", 0) if isinstance(total_hits, Mapping) else total_hits
    summary = Summary(
        total=parse_cell({"doc_count": requests, **aggs}),
        countries=int((aggs.get("countries") or {}).get("value") or 0),
    )
    by_label = {w.label: w for w in windows}
    for bucket in _buckets(aggs, "by_rollout_stage"):
        window = by_label.get(str(bucket.get("key")))
        if window is not None:
            summary.rollout.append(StageRow(window, parse_cell(bucket), _stage_cells(bucket)))
    for name, rows in (("by_path_group", summary.path_groups), ("by_version", summary.versions)):
        for bucket in _buckets(aggs, name):
            rows.append(GroupRow(str(bucket["key"]), parse_cell(bucket), _stage_cells(bucket)))
    for bucket in _buckets(aggs, "by_country"):
        names = (bucket.get("name") or {}).get("buckets") or []
        summary.countries_top.append(
            CountryRow(
                code=str(bucket["key"]),
                name=str(names[0]["key"]) if names else "",
                total=parse_cell(bucket),
                canary_requests=int((bucket.get("canary") or {}).get("doc_count", 0)),
            )
        )
    for bucket in _buckets(aggs, "by_gray_id"):
        stages = (bucket.get("stage") or {}).get("buckets") or []
        summary.gray_ids.append(
            GrayIdRow(
                gray_id=str(bucket["key"]),
                stage=str(stages[0]["key"]) if stages else "",
                total=parse_cell(bucket),
            )
        )
    return summary


def canary_worse(stable: Cell | None, canary: Cell | None, min_requests: int = 20) -> bool:
    """Whether the canary looks clearly worse than stable (a highlight, not a verdict).

    Worse means at least ``min_requests`` canary requests and either twice the
    stable 5xx rate plus two points, or twice the stable p95 latency.
    """
    if stable is None or canary is None or canary.requests < min_requests:
        return False
    stable_rate = stable.error_rate or 0.0
    canary_rate = canary.error_rate or 0.0
    if canary_rate >= 2 * stable_rate + 0.02:
        return True
    return (
        stable.p95_ms is not None
        and canary.p95_ms is not None
        and stable.p95_ms > 0
        and canary.p95_ms >= 2 * stable.p95_ms
    )


def spotlight_gray_id(summary: Summary) -> str | None:
    """The gray id to look up in the traces: the busiest canary one, else the busiest."""
    for row in summary.gray_ids:
        if row.stage == "canary":
            return row.gray_id
    return summary.gray_ids[0].gray_id if summary.gray_ids else None

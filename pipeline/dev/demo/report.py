"""Plain-text rendering of the demo's summary: tables and sections. Pure."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.commands.produce import format_count
from pipeline.dev.demo.summary import (
    INDEX_PATTERN,
    Cell,
    Summary,
    canary_worse,
)

WORSE_MARK = "<< canary worse"
MAX_SPAN_ROWS = 8


@dataclass(frozen=True, slots=True)
class Section:
    """A titled block of the summary; extra sections (e.g. a canary verdict) use it too."""

    title: str
    lines: list[str] = field(default_factory=list)


def render_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None
) -> list[str]:
    """Columns padded to their widest cell; ``right`` marks right-aligned columns."""
    aligns = list(right) if right is not None else [False] * len(headers)
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            if i < len(widths):
                widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            if i >= len(widths):
                out.append(cell)  # trailing notes are not a column
            elif aligns[i]:
                out.append(cell.rjust(widths[i]))
            else:
                out.append(cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def percent(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def millis(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _cell_columns(cell: Cell | None) -> list[str]:
    if cell is None or not cell.requests:
        return ["0", "-", "-"]
    return [format_count(cell.requests), percent(cell.error_rate), millis(cell.p95_ms)]


def _clock(ns: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%H:%M:%S")


def headline(
    summary: Summary, produced: int, dead_lettered: int, spans: int, spans_went: str = "received"
) -> list[str]:
    """``spans_went``: what happened to the spans counted, e.g. "exported to Jaeger"."""
    total = summary.total
    return [
        f"{format_count(total.requests)} requests indexed from {summary.countries} countries "
        f"({format_count(produced)} produced, {format_count(dead_lettered)} dead-lettered, "
        f"{format_count(spans)} spans {spans_went})",
        f"overall: 5xx {percent(total.error_rate)}, p95 {millis(total.p95_ms)}",
    ]


def rollout_section(summary: Summary) -> Section:
    rows = []
    for row in summary.rollout:
        canary = row.by_stage.get("canary")
        stable = row.by_stage.get("stable")
        rows.append(
            [
                row.window.label,
                f"{_clock(row.window.start_ns)}-{_clock(row.window.end_ns)}",
                format_count(row.total.requests),
                percent(row.observed_canary_share),
                percent(stable.error_rate if stable else None),
                percent(canary.error_rate if canary else None),
                millis(stable.p95_ms if stable else None),
                millis(canary.p95_ms if canary else None),
            ]
        )
    table = render_table(
        [
            "canary share",
            "window (UTC)",
            "requests",
            "observed",
            "stable 5xx",
            "canary 5xx",
            "stable p95",
            "canary p95",
        ],
        rows,
        [False, False, True, True, True, True, True, True],
    )
    return Section("By rollout stage (@timestamp range x gray.stage)", table)


def path_group_section(summary: Summary) -> Section:
    rows = []
    for row in summary.path_groups:
        stable = row.by_stage.get("stable")
        canary = row.by_stage.get("canary")
        mark = [WORSE_MARK] if canary_worse(stable, canary) else []
        rows.append([row.key, *_cell_columns(stable), *_cell_columns(canary), *mark])
    table = render_table(
        ["path group", "stable req", "5xx", "p95", "canary req", "5xx", "p95"],
        rows,
        [False, True, True, True, True, True, True],
    )
    return Section("By path group (gray.path_group x gray.stage)", table)


def version_section(summary: Summary) -> Section:
    rows = []
    for row in summary.versions:
        stages = ", ".join(sorted(row.by_stage)) or "-"
        rows.append([row.key, stages, *_cell_columns(row.total)])
    table = render_table(
        ["version", "stages", "requests", "5xx", "p95"], rows, [False, False, True, True, True]
    )
    return Section("By version (gray.version)", table)


def country_section(summary: Summary) -> Section:
    rows = []
    for row in summary.countries_top:
        share = row.canary_requests / row.total.requests if row.total.requests else None
        rows.append([row.code, row.name, *_cell_columns(row.total), percent(share)])
    table = render_table(
        ["country", "name", "requests", "5xx", "p95", "canary"],
        rows,
        [False, False, True, True, True, True],
    )
    return Section("By country (client.geo.country_iso_code, top 10)", table)


def gray_id_section(summary: Summary) -> Section:
    rows = [[r.gray_id, r.stage, *_cell_columns(r.total)] for r in summary.gray_ids]
    table = render_table(
        ["gray id", "stage", "requests", "5xx", "p95"], rows, [False, False, True, True, True]
    )
    return Section("Busiest gray ids (gray.id)", table)


def _span_sort_key(span: Mapping[str, Any]) -> tuple[int, int]:
    error = str(span.get("status_code", "")).endswith("ERROR")
    return (0 if error else 1, -int(span.get("start_ns") or 0))


def jaeger_search_path(service: str, gray_id: str) -> str:
    """The query API's tag search (``GET`` it on Jaeger's query URL)."""
    tags = urllib.parse.quote(f'{{"gray.id":"{gray_id}"}}', safe="")
    return f"/api/traces?service={urllib.parse.quote(service, safe='')}&tags={tags}"


def jaeger_ui_path(service: str, gray_id: str) -> str:
    """The same search in Jaeger's UI."""
    return "/search" + jaeger_search_path(service, gray_id).removeprefix("/api/traces")


def span_services(spans: Sequence[Mapping[str, Any]]) -> list[str]:
    """The spans' ``service.name`` values, sorted (Jaeger searches one service at a time)."""
    names = {str((s.get("resource") or {}).get("service.name", "")) for s in spans}
    return sorted(name for name in names if name)


def span_section(
    gray_id: str | None, spans: Sequence[Mapping[str, Any]], jaeger_version: str | None = None
) -> Section:
    """What Jaeger's search ``gray.id=<id>`` lists: errors first, then the latest.

    ``jaeger_version``: the spans came from that Jaeger's tag search; None: from
    grayscope's own OTLP receiver (the embedded stand-in), searched the same way."""
    if gray_id is None:
        return Section(
            "Spans by gray id", ["no gray id was indexed, so there is nothing to search"]
        )
    if jaeger_version is None:
        title = (
            f"Spans for gray.id={gray_id} (grayscope's OTLP receiver, a stand-in for Jaeger; "
            f"in Jaeger: Tags gray.id={gray_id})"
        )
    else:
        title = f"Spans for gray.id={gray_id} (found by Jaeger {jaeger_version}'s tag search)"
    if not spans:
        return Section(title, ["no spans found"])
    errors = sum(1 for s in spans if str(s.get("status_code", "")).endswith("ERROR"))
    traces = len({s.get("trace_id") for s in spans})
    lines = [
        f"{format_count(len(spans))} spans in {format_count(traces)} traces, "
        f"{format_count(errors)} with status ERROR; showing {min(MAX_SPAN_ROWS, len(spans))}:"
    ]
    if jaeger_version is not None:
        lines[:0] = [f"GET {jaeger_search_path(name, gray_id)}" for name in span_services(spans)]
    rows = []
    for span in sorted(spans, key=_span_sort_key)[:MAX_SPAN_ROWS]:
        attrs: Mapping[str, Any] = span.get("attributes") or {}
        duration_ms = (int(span.get("end_ns") or 0) - int(span.get("start_ns") or 0)) / 1e6
        rows.append(
            [
                str(span.get("trace_id", "")),
                str(span.get("name", "")),
                str(attrs.get("http.response.status_code", "")),
                millis(duration_ms),
                str(attrs.get("gray.stage", "")),
                str(attrs.get("gray.version", "")),
                str(attrs.get("geo.country.iso_code", "")),
                str(attrs.get("geo.locality.name", "")),
            ]
        )
    lines += render_table(
        ["trace id", "span", "status", "duration", "stage", "version", "country", "city"],
        rows,
        [False, False, True, True, False, False, False, False],
    )
    return Section(title, lines)


def summary_sections(
    summary: Summary,
    gray_id: str | None,
    spans: Sequence[Mapping[str, Any]],
    jaeger_version: str | None = None,
) -> list[Section]:
    return [
        rollout_section(summary),
        path_group_section(summary),
        version_section(summary),
        country_section(summary),
        gray_id_section(summary),
        span_section(gray_id, spans, jaeger_version),
    ]


def render_report(intro: Sequence[str], sections: Sequence[Section], rule_width: int = 78) -> str:
    title = f"== grayscope demo: drill-down ({INDEX_PATTERN}) "
    out = [title + "=" * max(0, rule_width - len(title)), *intro]
    for section in sections:
        out += ["", section.title, *("  " + line for line in section.lines)]
    out.append("=" * rule_width)
    return "\n".join(out) + "\n"


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the demo's services listen (for ``--keep-running``)."""

    bootstrap: str
    topic: str
    dlq_topic: str
    store_url: str
    otlp_grpc: str
    otlp_http: str  # .../v1/traces
    worker_url: str
    log_dir: str
    #: Jaeger's query URL (UI and API) when the spans go to Jaeger, else "" (the receiver).
    jaeger_url: str = ""
    #: A service.name the example search names (Jaeger searches one service at a time).
    span_service: str = ""


def endpoints_section(endpoints: Endpoints, gray_id: str | None) -> Section:
    e = endpoints
    receiver_base = e.otlp_http.removesuffix("/v1/traces")
    example_id = gray_id or "exp00001"
    query = '{"size":0,"aggs":{"by_group":{"terms":{"field":"gray.path_group"}}}}'
    lines = [
        f"Kafka bootstrap     {e.bootstrap}  (topic {e.topic}, dead letters {e.dlq_topic})",
        f"  .venv/bin/grayscope produce --kafka-brokers {e.bootstrap} --input-topics {e.topic} "
        "--synthetic --rate 200 --regression /play/share",
        f"Store (ES API)      {e.store_url}",
        f"  curl -s '{e.store_url}/{INDEX_PATTERN}/_count'",
        f"  curl -s -H 'Content-Type: application/json' '{e.store_url}/{INDEX_PATTERN}/_search' "
        f"-d '{query}'",
    ]
    if e.jaeger_url:
        service = e.span_service or "go.dev"
        lines += [
            f"Jaeger OTLP         gRPC {e.otlp_grpc}   HTTP {e.otlp_http}",
            f"Jaeger UI           {e.jaeger_url}{jaeger_ui_path(service, example_id)}",
            f"  curl -s '{e.jaeger_url}{jaeger_search_path(service, example_id)}' | head -c 1000",
        ]
    else:
        lines += [
            f"OTLP receiver       gRPC {e.otlp_grpc}   HTTP {e.otlp_http}  (stand-in for Jaeger)",
            f"  curl -s '{receiver_base}/api/spans?tag=gray.id:{example_id}' | head -c 1000",
        ]
    # The real stack's services log in their data folders.
    logs = (
        "kafka/kafka,opensearch/opensearch,jaeger/jaeger,worker"
        if e.jaeger_url
        else "broker,store,worker"
    )
    lines += [
        f"Worker              {e.worker_url}/metrics   {e.worker_url}/healthz",
        f"  curl -s {e.worker_url}/metrics | grep '^grayscope_'",
        f"  curl -s {e.worker_url}/healthz",
        f"Logs                {e.log_dir}/{{{logs}}}.log",
    ]
    return Section("Everything keeps running until Ctrl-C:", lines)

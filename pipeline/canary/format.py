"""Verdicts as a plain-text table for terminals, funnels as lines (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pipeline.canary.records import ArmSummary, Verdict

COLUMNS = (
    "PATH GROUP",
    "VERDICT",
    "WINDOW (UTC)",
    "CANARY N",
    "5XX %",
    "P95 MS",
    "STABLE N",
    "5XX %",
    "P95 MS",
    "DP95 MS",
    "Z",
    "P",
    "EVIDENCE",
    "RATE RATIO [CS]",
)
NUMERIC_FROM = 3  # right-align the columns from here on


def _opt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _arm(arm: ArmSummary) -> list[str]:
    rate = arm.error_rate
    percent = None if rate is None else rate * 100
    return [str(arm.requests), _opt(percent, ".2f"), _opt(arm.p95_ms, ".1f")]


def _window(verdict: Verdict) -> str:
    start = datetime.fromtimestamp(verdict.window_start, UTC).strftime("%Y-%m-%d %H:%M:%S")
    partial = "" if verdict.complete else " partial"
    return f"{start} {verdict.window_seconds}s{partial}"


def _analysis(verdict: Verdict) -> list[str]:
    """The group's evidence against 1/alpha and the rate ratio's confidence sequence."""
    a = verdict.analysis
    if a is None:
        return ["-", "-"]
    ratio = "-"
    if a.rate_ratio is not None:
        low = "0" if not a.rate_ratio_lower else f"{a.rate_ratio_lower:.2f}"
        high = "inf" if a.rate_ratio_upper is None else f"{a.rate_ratio_upper:.2f}"
        ratio = f"{a.rate_ratio:.2f}[{low},{high}]"
    return [f"{a.e_value:.3g}/{a.threshold:g}", ratio]


def format_verdicts(verdicts: Sequence[Verdict]) -> str:
    """One row per verdict, its reasons indented below it; ends with a newline."""
    if not verdicts:
        return "no canary verdicts (no canary traffic in a live window)\n"
    rows = [list(COLUMNS)]
    for verdict in verdicts:
        rows.append(
            [
                verdict.path_group,
                verdict.decision.value,
                _window(verdict),
                *_arm(verdict.canary),
                *_arm(verdict.stable),
                _opt(verdict.p95_delta_ms, "+.1f"),
                _opt(verdict.z, ".2f"),
                _opt(verdict.p_value, ".3g"),
                *_analysis(verdict),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]

    def line(row: list[str]) -> str:
        cells = [
            cell.rjust(width) if i >= NUMERIC_FROM else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    out = [line(rows[0])]
    for verdict, row in zip(verdicts, rows[1:], strict=True):
        out.append(line(row))
        if verdict.analysis is not None:
            out.append(f"    rule: {verdict.analysis.rule}")
        out.extend(f"    - {reason}" for reason in verdict.reasons)
    return "\n".join(out) + "\n"


def format_funnels(funnels: Sequence[Mapping[str, Any]]) -> str:
    """The ``funnels`` of a ``/canary`` payload: decision and one line per step, or ''."""
    lines = []
    for f in funnels:
        lines.append(f"funnel {f.get('name')}: {f.get('decision', '-')}")
        reasons = [str(r) for r in f.get("reasons") or ()]
        lines.extend(f"  {reason}" for reason in reasons)
    return "\n".join(lines) + "\n" if lines else ""

"""The canary report: one self-contained HTML page with inline SVG (pure).

``render_html(payload)`` draws a worker's ``/canary`` payload (the verdicts,
the rollout series under ``rollouts`` and the decision ``timeline``): per
path group, the evidence against the 1/alpha line over time, the rate
ratio's confidence sequence, canary vs stable latency distributions, the
funnel steps per arm (each funnel that has a step on the path group) and the
verdict timeline; then one section per conversion funnel (``funnels``): its
steps per arm with the drop's confidence bounds, its evidence over time and
its decision. No script,
no external resource: the page opens from a file or the worker's ``/canary``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pipeline.canary import histogram

WIDTH, HEIGHT = 560, 200
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 56, 16, 16, 32
COLOURS = {
    "error": "#c0392b",
    "latency": "#2c7fb8",
    "canary": "#e67e22",
    "stable": "#34495e",
    "threshold": "#7f8c8d",
}
DECISION_COLOURS = {
    "promote": "#27ae60",
    "hold": "#f1c40f",
    "rollback": "#c0392b",
    "insufficient_data": "#95a5a6",
}
Point = tuple[float, float]


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _scale(value: float, low: float, high: float, out_low: float, out_high: float) -> float:
    if high <= low:
        return (out_low + out_high) / 2.0
    return out_low + (value - low) * (out_high - out_low) / (high - low)


def _time_label(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S")


def _chart(
    kind: str,
    series: Sequence[tuple[str, str, Sequence[Point]]],
    *,
    y_label: str,
    hline: tuple[float, str] | None = None,
    bands: Sequence[tuple[str, str, Sequence[tuple[float, float, float]]]] = (),
    x_is_time: bool = True,
    y_range: tuple[float, float] | None = None,
) -> str:
    """A line chart as an ``<svg class="chart {kind}">``."""
    xs = [x for _, _, pts in series for x, _ in pts] + [x for _, _, b in bands for x, _, _ in b]
    ys = [y for _, _, pts in series for _, y in pts]
    ys += [v for _, _, b in bands for _, lo, hi in b for v in (lo, hi)]
    if hline is not None:
        ys.append(hline[0])
    out = [
        f'<svg class="chart {kind}" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{_esc(y_label)}">'
    ]
    left, right = PAD_LEFT, WIDTH - PAD_RIGHT
    top, bottom = PAD_TOP, HEIGHT - PAD_BOTTOM
    out.append(
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
        'fill="#fbfbfb" stroke="#ddd"/>'
    )
    if not xs or not ys:
        out.append(f'<text class="empty" x="{left + 10}" y="{top + 20}">no data yet</text></svg>')
        return "".join(out)
    x_low, x_high = min(xs), max(xs)
    y_low, y_high = y_range if y_range is not None else (min(ys), max(ys))
    if y_high <= y_low:
        y_low, y_high = y_low - 1.0, y_high + 1.0

    def px(x: float) -> float:
        return _scale(x, x_low, x_high, left, right)

    def py(y: float) -> float:
        return _scale(min(max(y, y_low), y_high), y_low, y_high, bottom, top)

    for name, colour, band in bands:
        if not band:
            continue
        upper = " ".join(f"{px(x):.1f},{py(hi):.1f}" for x, _, hi in band)
        lower = " ".join(f"{px(x):.1f},{py(lo):.1f}" for x, lo, _ in reversed(band))
        out.append(
            f'<polygon class="band {_esc(name)}" points="{upper} {lower}" '
            f'fill="{colour}" fill-opacity="0.2" stroke="none"/>'
        )
    if hline is not None:
        y = py(hline[0])
        out.append(
            f'<line class="threshold" x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" '
            f'stroke="{COLOURS["threshold"]}" stroke-dasharray="6 4"/>'
            f'<text x="{right - 4}" y="{y - 4:.1f}" text-anchor="end" font-size="11">'
            f"{_esc(hline[1])}</text>"
        )
    for name, colour, points in series:
        if not points:
            continue
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        out.append(
            f'<polyline class="series {_esc(name)}" points="{path}" fill="none" '
            f'stroke="{colour}" stroke-width="2"/>'
        )
    for value in (y_low, (y_low + y_high) / 2.0, y_high):
        out.append(
            f'<text x="{left - 6}" y="{py(value) + 4:.1f}" text-anchor="end" font-size="11">'
            f"{value:.3g}</text>"
        )
    for value in (x_low, x_high):
        label = _time_label(value) if x_is_time else f"{value:.3g}"
        out.append(
            f'<text x="{px(value):.1f}" y="{bottom + 16}" text-anchor="middle" font-size="11">'
            f"{_esc(label)}</text>"
        )
    out.append(
        f'<text x="12" y="{(top + bottom) / 2:.0f}" font-size="11" '
        f'transform="rotate(-90 12 {(top + bottom) / 2:.0f})" text-anchor="middle">'
        f"{_esc(y_label)}</text>"
    )
    legend_x = left + 8
    for name, colour, _ in list(series) + [(n, c, ()) for n, c, _ in bands]:
        out.append(
            f'<text x="{legend_x}" y="{top + 14}" font-size="11" fill="{colour}">'
            f"{_esc(name)}</text>"
        )
        legend_x += 9 * len(name) + 16
    out.append("</svg>")
    return "".join(out)


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) or math.isinf(number) else number


def _evidence_chart(history: Sequence[Sequence[float]], alpha: float) -> str:
    def series(index: int) -> list[Point]:
        return [
            (p[0], v / math.log(10.0))
            for p in history
            if len(p) > index and (v := _finite(p[index])) is not None
        ]

    threshold = math.log10(1.0 / alpha)
    return _chart(
        "evidence",
        [("5xx", COLOURS["error"], series(1)), ("latency", COLOURS["latency"], series(2))],
        y_label="log10 e-value",
        hline=(threshold, f"1/alpha = {1 / alpha:g}"),
    )


def _ratio_chart(history: Sequence[Sequence[float]]) -> str:
    points: list[Point] = []
    band: list[tuple[float, float, float]] = []
    for p in history:
        if len(p) < 6:
            continue
        estimate, lower, upper = _finite(p[3]), _finite(p[4]), _finite(p[5])
        if estimate is None:
            continue
        points.append((p[0], math.log2(max(estimate, 1e-3))))
        low = math.log2(lower) if lower and lower > 0 else -5.0
        high = math.log2(upper) if upper and upper > 0 else 5.0
        band.append((p[0], low, high))
    return _chart(
        "effect",
        [("rate ratio (log2)", COLOURS["error"], points)],
        y_label="log2 canary/stable 5xx",
        hline=(0.0, "no difference"),
        bands=[("95% confidence sequence", COLOURS["error"], band)],
        y_range=(-5.0, 5.0),
    )


def _cdf(counts: Mapping[str, Any]) -> list[Point]:
    parsed = sorted((int(k), float(v)) for k, v in counts.items())
    total = sum(v for _, v in parsed)
    if total <= 0:
        return []
    seen = 0.0
    points: list[Point] = []
    for index, count in parsed:
        seen += count
        upper = histogram.bucket_range(index)[1]
        points.append((math.log10(max(upper, 0.1)), seen / total))
    return points


def _latency_chart(rollout: Mapping[str, Any]) -> str:
    return _chart(
        "latency",
        [
            ("canary", COLOURS["canary"], _cdf(rollout.get("canary_latency") or {})),
            ("stable", COLOURS["stable"], _cdf(rollout.get("stable_latency") or {})),
        ],
        y_label="share of requests <= x (x: log10 ms)",
        hline=(0.95, "p95"),
        x_is_time=False,
        y_range=(0.0, 1.0),
    )


def _timeline(entries: Sequence[Sequence[Any]]) -> str:
    if not entries:
        return '<svg class="chart timeline" width="560" height="28"></svg>'
    start = float(entries[0][0])
    end = max(float(entries[-1][0]), start + 1.0)
    out = [
        f'<svg class="chart timeline" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
        f'height="40" viewBox="0 0 {WIDTH} 40">'
    ]
    for i, entry in enumerate(entries):
        at, decision = float(entry[0]), str(entry[1])
        until = float(entries[i + 1][0]) if i + 1 < len(entries) else end
        x1 = _scale(at, start, end, PAD_LEFT, WIDTH - PAD_RIGHT)
        x2 = max(_scale(until, start, end, PAD_LEFT, WIDTH - PAD_RIGHT), x1 + 3.0)
        colour = DECISION_COLOURS.get(decision, "#bbb")
        out.append(
            f'<rect class="decision {_esc(decision)}" x="{x1:.1f}" y="4" width="{x2 - x1:.1f}" '
            f'height="18" fill="{colour}"><title>{_esc(_time_label(at))} {_esc(decision)}'
            "</title></rect>"
        )
    out.append(
        f'<text x="{PAD_LEFT}" y="36" font-size="11">{_esc(_time_label(start))}</text>'
        f'<text x="{WIDTH - PAD_RIGHT}" y="36" font-size="11" text-anchor="end">'
        f"{_esc(_time_label(end))}</text></svg>"
    )
    return "".join(out)


def _verdict_block(verdict: Mapping[str, Any]) -> str:
    v = verdict.get("verdict") or {}
    canary, stable = v.get("canary") or {}, v.get("stable") or {}
    evidence = v.get("evidence") or {}
    effect = v.get("effect") or {}
    rows = [
        ("decision", v.get("decision")),
        ("rule", v.get("rule", "-")),
        (
            "canary (window)",
            f"{canary.get('requests', 0)} requests, {canary.get('errors_5xx', 0)} 5xx",
        ),
        (
            "stable (window)",
            f"{stable.get('requests', 0)} requests, {stable.get('errors_5xx', 0)} 5xx",
        ),
        (
            "evidence",
            f"{evidence.get('e_value', '-')} (threshold {evidence.get('threshold', '-')})",
        ),
        (
            "rate ratio",
            f"{effect.get('rate_ratio', '-')} "
            f"[{effect.get('rate_ratio_lower', '0')}, {effect.get('rate_ratio_upper', 'inf')}]",
        ),
        (
            "p95 delta (ms)",
            f"{effect.get('p95_delta_ms', '-')} "
            f"[{effect.get('p95_delta_lower_ms', '-inf')}, "
            f"{effect.get('p95_delta_upper_ms', '+inf')}]",
        ),
    ]
    table = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(val)}</td></tr>" for k, val in rows)
    reasons = "".join(f"<li>{_esc(r)}</li>" for r in v.get("reasons") or ())
    return f'<table class="verdict">{table}</table><ul class="reasons">{reasons}</ul>'


def _funnel_chart(funnel: Mapping[str, Any]) -> str:
    """Conversion per transition, canary next to stable, as an ``<svg class="chart funnel">``."""
    steps = list(funnel.get("steps") or ())
    left, top, bottom = PAD_LEFT, PAD_TOP, HEIGHT - PAD_BOTTOM
    out = [
        f'<svg class="chart funnel" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="conversion per step, canary vs stable">',
        f'<rect x="{left}" y="{top}" width="{WIDTH - PAD_RIGHT - left}" '
        f'height="{bottom - top}" fill="#fbfbfb" stroke="#ddd"/>',
    ]
    for tick in (0.0, 0.5, 1.0):
        y = _scale(tick, 0.0, 1.0, bottom, top)
        out.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
            f"{tick:.0%}</text>"
        )
    slot = (WIDTH - PAD_RIGHT - left) / max(len(steps), 1)
    for i, step in enumerate(steps):
        x0 = left + i * slot
        for j, arm in enumerate(("canary", "stable")):
            share = _finite((step.get(arm) or {}).get("conversion"))
            counts = step.get(arm) or {}
            label = f"{arm}: {counts.get('converted', 0)}/{counts.get('reached', 0)}"
            if share is None:
                continue
            height = share * (bottom - top)
            x = x0 + slot * (0.15 + 0.35 * j)
            out.append(
                f'<rect class="bar {arm}" x="{x:.1f}" y="{bottom - height:.1f}" '
                f'width="{slot * 0.3:.1f}" height="{height:.1f}" fill="{COLOURS[arm]}">'
                f"<title>{_esc(label)}</title></rect>"
            )
            out.append(
                f'<text x="{x + slot * 0.15:.1f}" y="{bottom - height - 3:.1f}" font-size="10" '
                f'text-anchor="middle">{share:.0%}</text>'
            )
        out.append(
            f'<text x="{x0 + slot / 2:.1f}" y="{bottom + 14}" font-size="10" '
            f'text-anchor="middle">{_esc(str(step.get("step", ""))[:60])}</text>'
        )
    legend_x = left + 8
    for arm in ("canary", "stable"):
        out.append(
            f'<rect x="{legend_x}" y="{top + 4}" width="10" height="10" fill="{COLOURS[arm]}"/>'
            f'<text x="{legend_x + 14}" y="{top + 13}" font-size="11">{arm}</text>'
        )
        legend_x += 70
    out.append("</svg>")
    return "".join(out)


def _funnel_evidence_chart(funnel: Mapping[str, Any], alpha: float) -> str:
    points = [
        (float(p[0]), v / math.log(10.0))
        for p in funnel.get("history") or ()
        if len(p) >= 2 and (v := _finite(p[1])) is not None
    ]
    return _chart(
        "funnel-evidence",
        [("conversion", COLOURS["canary"], points)],
        y_label="log10 e-value",
        hline=(math.log10(1.0 / alpha), f"1/alpha = {1 / alpha:g}"),
    )


def _funnel_section(funnel: Mapping[str, Any], alpha: float) -> str:
    name = str(funnel.get("name", ""))
    decision = str(funnel.get("decision", "-"))
    reasons = "".join(f"<li>{_esc(r)}</li>" for r in funnel.get("reasons") or ())
    rows = "".join(
        "<tr>"
        f"<td>{_esc(step.get('step'))}</td>"
        + "".join(
            f"<td>{_esc((step.get(arm) or {}).get('converted', 0))}"
            f"/{_esc((step.get(arm) or {}).get('reached', 0))}"
            f" (+{_esc((step.get(arm) or {}).get('pending', 0))} pending)</td>"
            for arm in ("canary", "stable")
        )
        + f"<td>{_drop_text(step)}</td><td>{_esc(step.get('e_value'))}</td></tr>"
        for step in funnel.get("steps") or ()
    )
    return (
        f'<section class="funnel" data-funnel="{_esc(name)}">'
        f'<h2>funnel {_esc(name)} <span class="badge {_esc(decision)}">{_esc(decision)}</span></h2>'
        '<table class="funnel-steps"><tr><th>step</th><th>canary converted/reached</th>'
        f"<th>stable converted/reached</th><th>drop [bounds]</th><th>evidence</th></tr>{rows}"
        f'</table><ul class="reasons">{reasons}</ul><div class="charts">'
        + _figure("Funnel steps per arm", _funnel_chart(funnel))
        + _figure("Conversion evidence against 1/alpha", _funnel_evidence_chart(funnel, alpha))
        + "</div></section>"
    )


def _drop_text(step: Mapping[str, Any]) -> str:
    drop = _finite(step.get("drop"))
    if drop is None:
        return "-"
    low, high = _finite(step.get("drop_lower")), _finite(step.get("drop_upper"))
    bounds = (
        f" [{'-' if low is None else f'{low * 100:+.1f}'}, "
        f"{'-' if high is None else f'{high * 100:+.1f}'}]"
    )
    return _esc(f"{drop * 100:+.1f} pp{bounds}")


def _group_funnels(group: str, funnels: Sequence[Mapping[str, Any]]) -> str:
    charts = [_funnel_chart(f) for f in funnels if group in (f.get("path_groups") or ())]
    return "".join(charts) or '<p class="funnel">no conversion funnel configured</p>'


def _figure(caption: str, content: str) -> str:
    return f"<figure><figcaption>{_esc(caption)}</figcaption>{content}</figure>"


def render_html(payload: Mapping[str, Any]) -> str:
    """The report page for one ``/canary`` payload."""
    alpha = float(payload.get("alpha") or 0.05)
    verdicts = {
        str((doc.get("gray") or {}).get("path_group")): doc for doc in payload.get("verdicts") or ()
    }
    rollouts: Mapping[str, Any] = payload.get("rollouts") or {}
    timeline: Mapping[str, Any] = payload.get("timeline") or {}
    groups = sorted(set(verdicts) | set(rollouts))
    funnels: Sequence[Mapping[str, Any]] = payload.get("funnels") or ()
    sections = []
    for group in groups:
        rollout = rollouts.get(group) or {}
        history = rollout.get("history") or []
        decision = ((verdicts.get(group) or {}).get("verdict") or {}).get("decision", "-")
        sections.append(
            f'<section class="group" data-path-group="{_esc(group)}">'
            f'<h2>{_esc(group)} <span class="badge {_esc(decision)}">{_esc(decision)}</span></h2>'
            + (_verdict_block(verdicts[group]) if group in verdicts else "")
            + '<div class="charts">'
            + _figure("Evidence against 1/alpha", _evidence_chart(history, alpha))
            + _figure("Rate ratio and its confidence sequence", _ratio_chart(history))
            + _figure("Latency, canary vs stable (rollout)", _latency_chart(rollout))
            + _figure("Funnel steps per arm", _group_funnels(group, funnels))
            + _figure("Verdict timeline", _timeline(timeline.get(group) or []))
            + "</div></section>"
        )
    sections.extend(_funnel_section(f, alpha) for f in funnels)
    body = "".join(sections) or '<p class="empty">no canary traffic in a live window</p>'
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>grayscope canary report</title><style>"
        "body{font-family:system-ui,sans-serif;margin:24px;color:#222}"
        "section.group,section.funnel{border-top:1px solid #ccc;padding:12px 0}"
        ".charts{display:flex;flex-wrap:wrap;gap:12px}"
        "figure{margin:0}figcaption{font-size:13px;color:#555}"
        "table.verdict th{text-align:left;padding-right:12px;font-weight:600}"
        ".badge{font-size:14px;padding:2px 8px;border-radius:4px;background:#eee}"
        ".badge.rollback{background:#f5b7b1}.badge.promote{background:#abebc6}"
        ".badge.hold{background:#f9e79f}"
        "</style></head><body>"
        f'<h1>grayscope canary report</h1><p class="meta">evaluated '
        f"{_esc(payload.get('evaluated_at') or 'not yet')}, alpha {alpha:g}, "
        f"window {_esc(payload.get('window_seconds'))} s, p95 threshold "
        f"{_esc(payload.get('latency_threshold_ms'))} ms</p>"
        f"{body}</body></html>"
    )


def rollout_series(states: Mapping[str, Any]) -> dict[str, Any]:
    """What the report needs of each rollout state (``/canary``'s ``rollouts``)."""
    out: dict[str, Any] = {}
    for name, state in states.items():
        out[name] = {
            "history": [
                [
                    None if isinstance(v, float) and (math.isnan(v) or math.isinf(v)) else v
                    for v in p
                ]
                for p in state.history
            ],
            "canary_latency": {str(k): v for k, v in sorted(state.canary.latency.items())},
            "stable_latency": {str(k): v for k, v in sorted(state.stable.latency.items())},
            "rolled_back": state.rolled_back,
            "windows": state.windows,
        }
    return out

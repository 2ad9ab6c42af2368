"""The HTML report: self-contained, one section per path group, the five drawings."""

from __future__ import annotations

import re

from pipeline.canary import funnel
from pipeline.canary.engine import FunnelDecision, GroupState, fold
from pipeline.canary.records import Decision, WindowCounts
from pipeline.canary.report import render_html, rollout_series

T0 = 1_764_000_000


def arm(n: int, errors: int, latency_ms: float) -> WindowCounts:
    counts = WindowCounts()
    for i in range(n):
        counts.add(503 if i < errors else 200, latency_ms + i % 50)
    return counts


def funnel_payload() -> dict[str, object]:
    """A checkout funnel over /api/<orders> whose canary converts less."""
    (spec,) = funnel.parse_funnels(
        '[{"name": "checkout", "steps": [{"path_group": "/cart"},'
        ' {"path_group": "/api/<orders>", "method": "POST"}, {"route": "/thanks"}]}]'
    )
    state = funnel.FunnelState("checkout", 3)
    for k in range(6):
        state.pending[f"0:{T0 + 60 * k}"] = [40, 10, 400, 200]
        state.pending[f"1:{T0 + 60 * k}"] = [10, 8, 200, 160]
        state.watermark = T0 + 60 * k + 10_000
        funnel.resolve(spec, state, 60)
    facts = funnel.facts(spec, state, 0.05)
    return FunnelDecision(
        "checkout", Decision.ROLLBACK, ("funnel <b>", *funnel.explain(facts)), facts, 0.25
    ).to_json()


def payload() -> dict[str, object]:
    states = {}
    for name, errors, slow in (("/api/<orders>", 30, 300.0), ("/blog", 1, 0.0)):
        state = GroupState(name)
        for w in range(12):
            fold(state, T0 + 60 * w, 60, arm(200, errors, 100 + slow), arm(1800, 18, 100))
        states[name] = state
    verdict = {
        "gray": {"path_group": "/api/<orders>"},
        "verdict": {
            "decision": "rollback",
            "rule": "rollback: rollout evidence reached 1/alpha (sticky)",
            "reasons": ["5xx rate <script>: significantly higher"],
            "canary": {"requests": 200, "errors_5xx": 30},
            "stable": {"requests": 1800, "errors_5xx": 18},
            "evidence": {"e_value": 1e9, "threshold": 20.0},
            "effect": {"rate_ratio": 15.0, "rate_ratio_lower": 9.0},
        },
    }
    return {
        "alpha": 0.05,
        "window_seconds": 60,
        "latency_threshold_ms": 200.0,
        "evaluated_at": "2025-11-24T16:12:00.000Z",
        "verdicts": [verdict],
        "rollouts": rollout_series(states),
        "timeline": {"/api/<orders>": [[T0 + 60, "hold"], [T0 + 300, "rollback"]]},
        "funnels": [funnel_payload()],
    }


def test_one_section_per_group_with_every_drawing() -> None:
    page = render_html(payload())
    assert page.startswith("<!DOCTYPE html>")
    sections = re.findall(r'<section class="group" data-path-group="([^"]+)"', page)
    assert sections == ["/api/&lt;orders&gt;", "/blog"]
    for kind in ("evidence", "effect", "latency", "timeline"):
        assert page.count(f'class="chart {kind}"') == 2
    assert page.count('class="threshold"') >= 2 and "1/alpha = 20" in page
    assert page.count('class="series 5xx"') == 2
    assert 'class="decision rollback"' in page and 'class="band ' in page
    assert "no conversion funnel configured" in page  # /blog has no funnel step


def test_funnel_steps_per_arm_on_their_path_groups_and_a_section_per_funnel() -> None:
    page = render_html(payload())
    # the orders group shows the funnel's bars; the funnel has its own section too
    assert page.count('class="chart funnel"') == 2
    assert re.findall(r'<section class="funnel" data-funnel="([^"]+)"', page) == ["checkout"]
    assert page.count('class="bar canary"') == 4 and page.count('class="bar stable"') == 4
    assert "canary: 60/240" in page and "stable: 1200/2400" in page
    assert "funnel &lt;b&gt;" in page
    assert '<table class="funnel-steps">' in page and "+25.0 pp" in page
    assert page.count('class="chart funnel-evidence"') == 1
    assert page.count('class="series conversion"') == 1


def test_the_page_is_self_contained_and_escaped() -> None:
    page = render_html(payload())
    assert "<script" not in page  # the reason's <script> is text, escaped
    assert "&lt;script&gt;" in page
    assert not re.search(r'(src|href)="(https?:)?//', page)


def test_an_empty_payload_says_so() -> None:
    assert "no canary traffic" in render_html({})

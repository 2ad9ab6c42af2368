"""The verdict table printed by `grayscope canary status` and the demo."""

from __future__ import annotations

from pipeline.canary.format import format_verdicts
from pipeline.canary.records import Analysis, ArmSummary, Decision, Verdict

T0 = 1_764_000_000


def verdict(path_group: str, decision: Decision, **changes: object) -> Verdict:
    values: dict[str, object] = {
        "path_group": path_group,
        "window_start": T0,
        "window_seconds": 60,
        "complete": True,
        "decision": decision,
        "reasons": ("first reason", "second reason"),
        "canary": ArmSummary(200, 30, 0, 200, 90.0, 310.25, 400.0),
        "stable": ArmSummary(400, 4, 0, 400, 80.0, 120.0, 150.0),
        "z": 7.2512,
        "p_value": 2.1e-13,
        "alpha": 0.05,
        "min_samples": 100,
        "p95_delta_ms": 190.25,
        "latency_threshold_ms": 200.0,
        "evaluated_at": T0 + 70.0,
    }
    values.update(changes)
    return Verdict(**values)  # type: ignore[arg-type]


def test_no_verdicts() -> None:
    assert "no canary verdicts" in format_verdicts([])


def test_rows_columns_and_reasons() -> None:
    text = format_verdicts(
        [
            verdict("/api/orders", Decision.ROLLBACK),
            verdict(
                "/blog",
                Decision.INSUFFICIENT_DATA,
                complete=False,
                reasons=("canary: 3 requests",),
                canary=ArmSummary(3),
                stable=ArmSummary(),
                z=None,
                p_value=None,
                p95_delta_ms=None,
            ),
        ]
    )
    lines = text.splitlines()
    assert text.endswith("\n")
    assert lines[0].split()[:3] == ["PATH", "GROUP", "VERDICT"]
    orders = lines[1].split()
    assert orders[:2] == ["/api/orders", "rollback"]
    assert orders[2:5] == ["2025-11-24", "16:00:00", "60s"]
    assert orders[5:] == [
        "200",
        "15.00",
        "310.2",
        "400",
        "1.00",
        "120.0",
        "+190.2",
        "7.25",
        "2.1e-13",
        "-",
        "-",
    ]
    assert lines[2:4] == ["    - first reason", "    - second reason"]
    blog = lines[4].split()
    assert blog[:6] == ["/blog", "insufficient_data", "2025-11-24", "16:00:00", "60s", "partial"]
    assert blog[6:] == ["3", "0.00", "-", "0", "-", "-", "-", "-", "-", "-", "-"]
    assert lines[5] == "    - canary: 3 requests"
    # Columns line up: every numeric column ends where its header ends.
    assert len({len(line) for line in (lines[0], lines[1])}) == 1


def test_the_analysis_columns_and_the_deciding_rule() -> None:
    analysis = Analysis(
        rule="rollback: rollout evidence reached 1/alpha (sticky)",
        weight=0.5,
        e_value=1234.5,
        error_e_value=2469.0,
        latency_e_value=0.5,
        latency_counted=False,
        rollout_e_value=617.0,
        threshold=20.0,
        rate_ratio=7.4,
        rate_ratio_lower=3.3,
        rate_ratio_upper=None,
    )
    lines = format_verdicts([verdict("/api", Decision.ROLLBACK, analysis=analysis)]).splitlines()
    assert lines[0].split()[-4:] == ["EVIDENCE", "RATE", "RATIO", "[CS]"]
    assert lines[1].split()[-2:] == ["1.23e+03/20", "7.40[3.30,inf]"]
    assert lines[2] == "    rule: rollback: rollout evidence reached 1/alpha (sticky)"

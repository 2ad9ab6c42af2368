"""Record types: JSON round trips, malformed input, and the verdict document's mapping."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from pipeline.canary.records import (
    Analysis,
    ArmSummary,
    CanaryAggregate,
    Decision,
    Verdict,
    WindowCounts,
    epoch_to_iso,
    iso_to_epoch,
)

T0 = 1_764_000_000


def counts(requests: int, e5: int = 0, e4: int = 0, ms: float | None = 100.0) -> WindowCounts:
    out = WindowCounts()
    for i in range(requests):
        status = 502 if i < e5 else 404 if i < e5 + e4 else 200
        out.add(status, None if ms is None else ms + i)
    return out


def test_window_counts_count_by_status_class() -> None:
    c = WindowCounts()
    for status in (200, 204, 301, 404, 429, 499, 500, 503, 599, None, 600):
        c.add(status, 10.0)
    assert (c.requests, c.errors_5xx, c.errors_4xx, c.timed) == (11, 3, 3, 11)
    c.add(200, None)
    assert (c.requests, c.timed) == (12, 11)
    c.add(200, -3.0)  # clock steps: counted as 0 ms
    assert c.min_ms == 0.0 and c.max_ms == 10.0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.none() | st.integers(0, 700),
            st.none() | st.floats(-5.0, 2e6, allow_nan=False),
        ),
        max_size=30,
    )
)
def test_add_requests_counts_as_add_does(requests: list[tuple[int | None, float | None]]) -> None:
    one_by_one, at_once = WindowCounts(), WindowCounts()
    for status, duration_ms in requests:
        one_by_one.add(status, duration_ms)
    at_once.add_requests(
        [status for status, _ in requests], [ms for _, ms in requests if ms is not None]
    )
    assert at_once == one_by_one


def test_window_counts_merge_and_copy() -> None:
    a, b = counts(10, 2, 1, 50.0), counts(5, 1, 0, 500.0)
    copy = a.copy()
    a.merge(b)
    assert (a.requests, a.errors_5xx, a.errors_4xx, a.timed) == (15, 3, 1, 15)
    assert (a.min_ms, a.max_ms) == (50.0, 504.0)
    assert copy.requests == 10 and copy.latency is not a.latency
    empty = WindowCounts()
    empty.merge(WindowCounts())
    assert empty == WindowCounts()


def test_window_counts_json_round_trip() -> None:
    c = counts(40, 3, 2, 12.5)
    data = orjson.loads(orjson.dumps(c.to_json()))
    assert WindowCounts.from_json(data) == c
    assert WindowCounts.from_json(WindowCounts().to_json()) == WindowCounts()
    assert "min" not in WindowCounts().to_json()


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"n": -1},
        {"n": 1.5},
        {"n": True},
        {"n": 1, "5xx": 2},
        {"n": 1, "h": []},
        {"n": 1, "h": {"999": 1}},
        {"n": 1, "h": {"x": 1}},
        {"n": 1, "h": {"3": -1}},
        {"n": 1, "min": 1.0},
        {"n": 1, "min": 5.0, "max": 1.0},
    ],
)
def test_window_counts_reject_malformed_json(data: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        WindowCounts.from_json(data)


def test_aggregate_round_trip_and_total() -> None:
    agg = CanaryAggregate(
        "/api/orders",
        T0,
        {"canary": counts(3, 1), "stable": counts(7)},
        {"v2": counts(3, 1), "-": counts(7)},
    )
    assert agg.requests == 10
    assert CanaryAggregate.from_json(orjson.loads(orjson.dumps(agg.to_json()))) == agg


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"v": 2, "path_group": "/a", "window_start": T0},
        {"v": 1, "path_group": "", "window_start": T0},
        {"v": 1, "path_group": "/a", "window_start": 1.5},
        {"v": 1, "path_group": "/a", "window_start": T0, "stages": []},
        {"v": 1, "path_group": "/a", "window_start": T0, "stages": {"canary": {"n": -2}}},
    ],
)
def test_aggregate_rejects_malformed_json(data: Any) -> None:
    with pytest.raises(ValueError):
        CanaryAggregate.from_json(data)


FULL_ANALYSIS = Analysis(
    rule="rollback: rollout evidence reached 1/alpha (sticky)",
    weight=0.5,
    e_value=1234.5,
    error_e_value=2469.0,
    latency_e_value=0.5,
    latency_counted=False,
    rollout_e_value=617.25,
    threshold=20.0,
    rate_ratio=7.4,
    rate_ratio_lower=3.3,
    rate_ratio_upper=16.4,
    error_increase_upper=0.21,
    rollout_rate_ratio_upper=5.2,
    rollout_canary_error_rate_upper=0.12,
    p95_delta_ms=12.5,
    p95_delta_lower_ms=-20.0,
    p95_delta_upper_ms=41.0,
    more_canary_requests=0,
    windows=3,
    canary_requests=600,
    canary_errors_5xx=90,
    stable_requests=1200,
    stable_errors_5xx=12,
)


def full_verdict(**changes: Any) -> Verdict:
    values: dict[str, Any] = {
        "path_group": "/api/orders",
        "window_start": T0,
        "window_seconds": 60,
        "complete": True,
        "decision": Decision.ROLLBACK,
        "reasons": ("5xx rate: canary 15.00% vs stable 1.00%, significantly higher",),
        "canary": ArmSummary.of(counts(200, 30, 4)),
        "stable": ArmSummary.of(counts(400, 4, 8)),
        "z": 7.25,
        "p_value": 2.1e-13,
        "alpha": 0.05,
        "min_samples": 100,
        "p95_delta_ms": 12.5,
        "latency_threshold_ms": 200.0,
        "evaluated_at": T0 + 75.25,
        "versions": (("v2", ArmSummary.of(counts(200, 30))), ("v1", ArmSummary.of(counts(400)))),
        "analysis": FULL_ANALYSIS,
    }
    values.update(changes)
    return Verdict(**values)


def _flatten(document: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in document.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


def _valid(kind: str, value: Any) -> bool:
    if isinstance(value, list):
        return all(_valid(kind, v) for v in value)
    return {
        "keyword": lambda v: isinstance(v, str),
        "long": lambda v: type(v) is int,
        "double": lambda v: type(v) in (int, float),
        "boolean": lambda v: type(v) is bool,
        "date": lambda v: isinstance(v, str) and _ISO.fullmatch(v) is not None,
    }[kind](value)


def test_the_full_verdict_document_uses_exactly_the_mapped_fields() -> None:
    fields = schemas.verdict_fields()
    document = full_verdict().to_document()
    produced = dict(_flatten(document))
    assert set(produced) == set(fields)
    for name, value in produced.items():
        assert _valid(fields[name]["type"], value), (name, value)


def test_a_sparse_verdict_omits_what_it_does_not_know() -> None:
    verdict = full_verdict(
        decision=Decision.INSUFFICIENT_DATA,
        canary=ArmSummary(),
        stable=ArmSummary(),
        z=None,
        p_value=None,
        p95_delta_ms=None,
        versions=(),
    )
    produced = dict(_flatten(verdict.to_document()))
    assert set(produced) <= set(schemas.verdict_fields())
    assert "verdict.z" not in produced and "verdict.canary.error_rate" not in produced
    assert None not in produced.values()


def test_the_document_shape() -> None:
    verdict = full_verdict()
    doc = verdict.to_document()
    assert doc["@timestamp"] == "2025-11-24T16:00:00.000Z"
    assert doc["gray"] == {"path_group": "/api/orders"}
    assert doc["verdict"]["window"] == {
        "start": "2025-11-24T16:00:00.000Z",
        "end": "2025-11-24T16:01:00.000Z",
        "seconds": 60,
    }
    assert doc["verdict"]["evaluated_at"] == "2025-11-24T16:01:15.250Z"
    assert doc["verdict"]["canary"]["error_rate"] == pytest.approx(0.15)
    assert doc["verdict"]["versions"] == ["v2", "v1"]
    assert verdict.doc_id == f"/api/orders@{T0}"


def test_verdict_json_round_trip() -> None:
    verdict = full_verdict()
    data = orjson.loads(orjson.dumps(verdict.to_json()))
    assert data["verdict"]["by_version"][0]["version"] == "v2"
    back = Verdict.from_json(data)
    assert back.decision is verdict.decision and back.reasons == verdict.reasons
    assert back.canary.requests == 200 and back.canary.errors_5xx == 30
    assert back.canary.p95_ms == pytest.approx(verdict.canary.p95_ms, abs=1e-3)
    assert [name for name, _ in back.versions] == ["v2", "v1"]
    assert back.window_start == T0 and back.evaluated_at == pytest.approx(T0 + 75.25)
    assert Verdict.from_json(verdict.to_document()).versions == ()
    assert back.analysis == FULL_ANALYSIS


def test_an_unbounded_effect_is_left_out_of_the_document() -> None:
    from dataclasses import replace

    analysis = replace(FULL_ANALYSIS, rate_ratio_upper=float("inf"), p95_delta_upper_ms=None)
    doc = full_verdict(analysis=analysis).to_document()
    assert "rate_ratio_upper" not in doc["verdict"]["effect"]
    assert "p95_delta_upper_ms" not in doc["verdict"]["effect"]
    assert Verdict.from_json(doc).analysis == replace(analysis, rate_ratio_upper=None)


@pytest.mark.parametrize("doc", [{}, {"verdict": {}}, {"gray": {}, "verdict": {"decision": "x"}}])
def test_verdict_from_json_rejects_other_things(doc: Any) -> None:
    with pytest.raises(ValueError):
        Verdict.from_json(doc)


def test_iso_helpers() -> None:
    assert epoch_to_iso(T0 + 0.5) == "2025-11-24T16:00:00.500Z"
    assert iso_to_epoch("2025-11-24T16:00:00.500Z") == T0 + 0.5

"""The demo's aggregation query and the parsing of canned responses (osmem's shapes)."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.dev.demo.summary import (
    INDEX_PATTERN,
    MISSING,
    Cell,
    Window,
    canary_worse,
    iso_ms,
    parse_cell,
    parse_summary,
    spotlight_gray_id,
    summary_query,
)

T0 = 1_795_567_658_000_000_000  # 2026-11-25T00:47:38Z
WINDOWS = [
    Window("1%", 0.01, T0, T0 + 12 * 10**9),
    Window("5%", 0.05, T0 + 12 * 10**9, T0 + 30 * 10**9),
    Window("50%", 0.5, T0 + 30 * 10**9, T0 + 60 * 10**9),
]


def metrics(count: int, errors: int, p95_ns: float | None) -> dict[str, Any]:
    return {
        "doc_count": count,
        "errors": {"doc_count": errors},
        "latency": {"values": {"95.0": p95_ns}},
    }


def by_stage(**cells: tuple[int, int, float]) -> dict[str, Any]:
    return {
        "by_stage": {
            "buckets": [{"key": k, **metrics(*v)} for k, v in cells.items()],
            "doc_count_error_upper_bound": 0,
            "sum_other_doc_count": 0,
        }
    }


CANNED: dict[str, Any] = {
    "took": 812,
    "timed_out": False,
    "hits": {"total": {"value": 10_000, "relation": "eq"}, "max_score": None, "hits": []},
    "aggregations": {
        "errors": {"doc_count": 150},
        "latency": {"values": {"95.0": 250_000_000.0}},
        "countries": {"value": 24},
        "by_rollout_stage": {
            "buckets": [
                {
                    "key": "1%",
                    "to": 1795567670000.0,
                    **metrics(2000, 12, 100e6),
                    **by_stage(stable=(1980, 10, 99e6), canary=(20, 2, 560e6)),
                },
                {
                    "key": "5%",
                    "from": 1795567670000.0,
                    "to": 1795567688000.0,
                    **metrics(3000, 20, 110e6),
                    **by_stage(stable=(2850, 12, 100e6), canary=(150, 8, 480e6)),
                },
                {
                    "key": "50%",
                    "from": 1795567688000.0,
                    **metrics(5000, 118, 300e6),
                    **by_stage(stable=(2500, 10, 101e6), canary=(2500, 108, 500e6)),
                },
            ]
        },
        "by_path_group": {
            "buckets": [
                {
                    "key": "/godoc/pkg",
                    **metrics(3400, 15, 47e6),
                    **by_stage(stable=(2700, 10, 47e6), canary=(700, 5, 48e6)),
                },
                {
                    "key": "/play/share",
                    **metrics(1200, 110, 600e6),
                    **by_stage(stable=(900, 5, 120e6), canary=(300, 105, 640e6)),
                },
            ],
            "sum_other_doc_count": 5400,
        },
        "by_version": {
            "buckets": [
                {"key": "1.22", **metrics(6000, 24, 70e6), **by_stage(stable=(6000, 24, 70e6))},
                {
                    "key": MISSING,
                    **metrics(2500, 20, 240e6),
                    **by_stage(stable=(2000, 10, 200e6), canary=(500, 10, 400e6)),
                },
                {"key": "1.23", **metrics(1500, 106, 510e6), **by_stage(canary=(1500, 106, 510e6))},
            ]
        },
        "by_country": {
            "buckets": [
                {
                    "key": "US",
                    **metrics(2400, 30, 240e6),
                    "name": {"buckets": [{"key": "United States", "doc_count": 2400}]},
                    "canary": {"doc_count": 600},
                },
                {"key": MISSING, **metrics(10, 0, None), "name": {"buckets": []}, "canary": {}},
            ]
        },
        "by_gray_id": {
            "buckets": [
                {
                    "key": "ctrl0001",
                    **metrics(900, 2, 90e6),
                    "stage": {"buckets": [{"key": "stable", "doc_count": 900}]},
                },
                {
                    "key": "checkout7a",
                    **metrics(800, 30, 500e6),
                    "stage": {"buckets": [{"key": "canary", "doc_count": 800}]},
                },
            ]
        },
    },
}


# --- the query ----------------------------------------------------------------------


def test_query_is_aggregations_only() -> None:
    body = summary_query(WINDOWS)
    assert body["size"] == 0
    aggs = body["aggs"]
    assert set(aggs) == {
        "errors",
        "latency",
        "countries",
        "by_path_group",
        "by_version",
        "by_country",
        "by_gray_id",
        "by_rollout_stage",
    }
    assert aggs["errors"] == {"filter": {"range": {"http.response.status_code": {"gte": 500}}}}
    assert aggs["latency"]["percentiles"] == {"field": "event.duration", "percents": [95]}
    group = aggs["by_path_group"]
    assert group["terms"]["field"] == "gray.path_group"
    assert group["aggs"]["by_stage"]["terms"]["field"] == "gray.stage"
    assert set(group["aggs"]["by_stage"]["aggs"]) == {"errors", "latency"}
    assert aggs["by_version"]["terms"]["missing"] == MISSING
    assert aggs["by_country"]["aggs"]["canary"] == {"filter": {"term": {"gray.stage": "canary"}}}


def test_rollout_windows_become_date_ranges_open_at_both_ends() -> None:
    ranges = summary_query(WINDOWS)["aggs"]["by_rollout_stage"]["range"]
    assert ranges["field"] == "@timestamp"
    assert ranges["ranges"] == [
        {"key": "1%", "to": "2026-11-25T00:47:50.000Z"},
        {"key": "5%", "from": "2026-11-25T00:47:50.000Z", "to": "2026-11-25T00:48:08.000Z"},
        {"key": "50%", "from": "2026-11-25T00:48:08.000Z"},
    ]


def test_no_windows_no_rollout_aggregation() -> None:
    assert "by_rollout_stage" not in summary_query([])["aggs"]


def test_iso_ms() -> None:
    assert iso_ms(T0 + 123_456_789) == "2026-11-25T00:47:38.123Z"
    assert INDEX_PATTERN == "grayscope-access-*"


# --- parsing ----------------------------------------------------------------------------


def test_parse_cell_converts_nanoseconds_to_milliseconds() -> None:
    cell = parse_cell(metrics(200, 10, 123_400_000.0))
    assert (cell.requests, cell.errors) == (200, 10)
    assert cell.p95_ms == pytest.approx(123.4)
    assert cell.error_rate == 0.05


@pytest.mark.parametrize(
    "latency",
    [
        {"values": {"95.0": None}},
        {"values": {"95.0": "NaN"}},
        {"values": {}},
        {},
        None,
    ],
)
def test_missing_percentiles_are_none(latency: Any) -> None:
    assert parse_cell({"doc_count": 0, "latency": latency}).p95_ms is None


def test_percentiles_keyed_false_and_integer_keys() -> None:
    listed = {"doc_count": 1, "latency": {"values": [{"key": 95.0, "value": 2e6}]}}
    assert parse_cell(listed).p95_ms == 2.0
    assert parse_cell({"doc_count": 1, "latency": {"values": {"95": 3e6}}}).p95_ms == 3.0


def test_empty_cell_has_no_error_rate() -> None:
    assert Cell().error_rate is None


def test_parse_summary() -> None:
    summary = parse_summary(CANNED, WINDOWS)
    assert summary.total == Cell(10_000, 150, 250.0)
    assert summary.countries == 24

    assert [r.window.label for r in summary.rollout] == ["1%", "5%", "50%"]
    last = summary.rollout[2]
    assert last.total.requests == 5000
    assert last.by_stage["canary"] == Cell(2500, 108, 500.0)
    assert last.observed_canary_share == 0.5

    groups = {r.key: r for r in summary.path_groups}
    assert list(groups) == ["/godoc/pkg", "/play/share"]
    share = groups["/play/share"]
    assert share.by_stage["stable"] == Cell(900, 5, 120.0)
    assert share.by_stage["canary"] == Cell(300, 105, 640.0)

    assert [(r.key, sorted(r.by_stage)) for r in summary.versions] == [
        ("1.22", ["stable"]),
        (MISSING, ["canary", "stable"]),
        ("1.23", ["canary"]),
    ]

    us, unknown = summary.countries_top
    assert (us.code, us.name, us.total.requests, us.canary_requests) == (
        "US",
        "United States",
        2400,
        600,
    )
    assert (unknown.code, unknown.name, unknown.canary_requests) == (MISSING, "", 0)
    assert unknown.total.p95_ms is None

    assert [(r.gray_id, r.stage, r.total.requests) for r in summary.gray_ids] == [
        ("ctrl0001", "stable", 900),
        ("checkout7a", "canary", 800),
    ]


def test_rollout_buckets_keyed_true_are_read_too() -> None:
    keyed = {
        "aggregations": {
            "by_rollout_stage": {
                "buckets": {"1%": metrics(10, 1, 1e6), "other": metrics(5, 0, 1e6)}
            }
        }
    }
    summary = parse_summary(keyed, WINDOWS)
    assert [(r.window.label, r.total.requests) for r in summary.rollout] == [("1%", 10)]
    assert summary.rollout[0].observed_canary_share == 0.0


def test_empty_response() -> None:
    summary = parse_summary({"hits": {"total": {"value": 0}}, "aggregations": {}})
    assert summary.total == Cell(0, 0, None)
    assert summary.path_groups == [] and summary.gray_ids == []
    assert spotlight_gray_id(summary) is None


def test_spotlight_prefers_the_busiest_canary_gray_id() -> None:
    summary = parse_summary(CANNED, WINDOWS)
    assert spotlight_gray_id(summary) == "checkout7a"
    summary.gray_ids.pop()
    assert spotlight_gray_id(summary) == "ctrl0001"


# --- the highlight -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stable", "canary", "worse"),
    [
        (Cell(900, 5, 120.0), Cell(300, 105, 640.0), True),  # errors and latency
        (Cell(900, 5, 120.0), Cell(300, 3, 130.0), False),  # same
        (Cell(900, 0, 100.0), Cell(300, 9, 100.0), True),  # 3% vs 0%
        (Cell(900, 0, 100.0), Cell(300, 3, 100.0), False),  # 1% vs 0%: noise
        (Cell(900, 90, 100.0), Cell(300, 40, 100.0), False),  # 13% vs 10%: under 2x + 2 pts
        (Cell(900, 1, 100.0), Cell(300, 0, 250.0), True),  # latency only
        (Cell(900, 5, 120.0), Cell(10, 10, 900.0), False),  # too few canary requests
        (None, Cell(300, 105, 640.0), False),
        (Cell(900, 5, None), Cell(300, 0, 640.0), False),
    ],
)
def test_canary_worse(stable: Cell | None, canary: Cell | None, worse: bool) -> None:
    assert canary_worse(stable, canary) is worse

"""Request metrics from the access logs: counts, buckets and bounded labels."""

from __future__ import annotations

import asyncio
import ipaddress
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest

from pipeline.core.model import AccessRecord, DeadLetter, Enrichment, Reason
from pipeline.core.process import Enriched
from pipeline.metrics.requests import (
    DURATION_BUCKETS,
    OTHER,
    RequestMetrics,
    looks_like_version,
    status_class,
)
from pipeline.telemetry import (
    CANARY_VERDICT_HELP,
    HTTP_REQUEST_DURATION_HELP,
    HTTP_REQUESTS_HELP,
    Telemetry,
    parse_samples,
    request_metrics_text,
)

MS = 1_000_000


def request(
    path_group: str | None = "/api/cart",
    stage: str = "stable",
    version: str | None = "v1",
    status: int | None = 200,
    duration_ms: float | None = 12.0,
    client_ip: str = "203.0.113.7",
    gray_id: str = "abcdef123456",
) -> Enriched:
    record = AccessRecord(
        "envoy.access",
        status=status,
        duration_ns=None if duration_ms is None else int(duration_ms * MS),
        uri=f"{path_group}/item/42?user=alice",
        peer_addr=client_ip,
    )
    enrichment = Enrichment(
        url_path=f"{path_group}/item/42",
        gray_id=gray_id,
        stage=stage,
        version=version,
        path_group=path_group,
        client_ip=client_ip,
    )
    return Enriched(record, enrichment, b"{}")


def test_requests_are_counted_per_path_group_stage_version_and_status_class() -> None:
    metrics = RequestMetrics()
    metrics.add_batch(
        [
            request(status=200),
            request(status=204),
            request(status=503, stage="canary", version="v2"),
            request(status=None),
            DeadLetter(Reason.UNKNOWN_FORMAT, "no format", b"x"),
        ]
    )
    metrics.add_batch([request(status=404)])
    assert metrics.requests == {
        ("/api/cart", "stable", "v1", "2xx"): 2,
        ("/api/cart", "canary", "v2", "5xx"): 1,
        ("/api/cart", "stable", "v1", "other"): 1,
        ("/api/cart", "stable", "v1", "4xx"): 1,
    }


def test_status_classes() -> None:
    assert [status_class(s) for s in (None, 0, 99, 100, 200, 302, 499, 599, 600)] == [
        OTHER, OTHER, OTHER, "1xx", "2xx", "3xx", "4xx", "5xx", OTHER,
    ]  # fmt: skip


def test_durations_fill_cumulative_buckets_from_5ms_to_10s() -> None:
    assert DURATION_BUCKETS[0] == 0.005 and DURATION_BUCKETS[-1] == 10.0
    assert list(DURATION_BUCKETS) == sorted(set(DURATION_BUCKETS))
    metrics = RequestMetrics()
    metrics.add_batch(
        [request(duration_ms=ms) for ms in (1, 5, 180, 220, 20_000)] + [request(duration_ms=None)]
    )
    histogram = metrics.durations[("/api/cart", "stable", "v1")]
    buckets = dict(histogram.cumulative())
    assert buckets["0.005"] == 2  # le is inclusive: 5 ms is in the 5 ms bucket
    assert buckets["0.2"] == 3 and buckets["0.25"] == 4
    assert buckets["10.0"] == 4 and buckets["+Inf"] == 5  # the untimed request is not observed
    assert abs(histogram.sum_seconds - 20.406) < 1e-9
    # ...but it is counted as a request.
    assert metrics.requests[("/api/cart", "stable", "v1", "2xx")] == 6


def test_missing_values_and_odd_stages_have_fixed_labels() -> None:
    metrics = RequestMetrics()
    metrics.add_batch([request(path_group=None, version=None, stage="blue")])
    assert list(metrics.requests) == [("none", OTHER, "none", "2xx")]


def test_caps_fold_late_path_groups_and_versions_into_other() -> None:
    metrics = RequestMetrics(max_path_groups=2, max_versions=1)
    metrics.add_batch([request(path_group=f"/g{n}", version=f"v{n}") for n in range(4)])
    assert sorted(metrics.requests) == [
        ("/g0", "stable", "v0", "2xx"),
        ("/g1", "stable", OTHER, "2xx"),
        (OTHER, "stable", OTHER, "2xx"),
    ]
    assert metrics.requests[(OTHER, "stable", OTHER, "2xx")] == 2
    # Admitted values keep their label afterwards.
    metrics.add_batch([request(path_group="/g1", version="v0")])
    assert metrics.requests[("/g1", "stable", "v0", "2xx")] == 1


def test_versions_that_are_not_version_shaped_are_other() -> None:
    assert looks_like_version("v2") and looks_like_version("1.4.0-rc.1")
    for value in ("203.0.113.7", "2001:db8::1", "a" * 41, "v1 OR 1=1", '"}', "-v1", "v1\n"):
        assert not looks_like_version(value), value


def test_a_hundred_thousand_distinct_values_stay_within_the_bound() -> None:
    """10^5 distinct versions, path groups, client IPs and gray ids: the label sets stay
    bounded by the caps, and no label carries an address, a gray id or a raw path."""
    max_groups, max_versions = 20, 5
    metrics = RequestMetrics(max_path_groups=max_groups, max_versions=max_versions)
    n = 100_000
    for start in range(0, n, 1000):
        metrics.add_batch(
            [
                request(
                    path_group=f"/p{i}",
                    version=f"v{i}" if i % 3 else str(ipaddress.IPv4Address(167772160 + i)),
                    stage="canary" if i % 2 else "stable",
                    status=100 + i % 600,
                    duration_ms=i % 20_000,
                    client_ip=str(ipaddress.IPv4Address(3405803776 + i)),
                    gray_id=f"{i:012x}",
                )
                for i in range(start, start + 1000)
            ]
        )
    assert sum(metrics.requests.values()) == n
    groups = {key[0] for key in metrics.requests}
    versions = {key[2] for key in metrics.requests}
    assert len(groups) <= max_groups + 1 and OTHER in groups
    assert len(versions) <= max_versions + 1 and OTHER in versions
    bound = (max_groups + 1) * 3 * (max_versions + 2) * 6  # +1 other, +1 none; 3 stages
    assert len(metrics.requests) <= bound
    assert len(metrics.durations) <= bound // 6
    # The label caps remember only what they admitted (bounded memory too).
    assert len(metrics.path_groups) == max_groups and len(metrics.versions) == max_versions
    labels = {value for key in metrics.requests for value in key}
    for value in labels:
        assert not value.startswith(("10.", "203.")), value
        assert "/item/" not in value and "?" not in value
        assert not (len(value) == 12 and value.isalnum() and not value.startswith("v")), value


@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.text(max_size=30)),
            st.sampled_from(["canary", "stable", "x"]),
            st.one_of(st.none(), st.text(max_size=50)),
            st.one_of(st.none(), st.integers(-5, 1000)),
            st.one_of(st.none(), st.floats(0, 1e6)),
        ),
        max_size=60,
    ),
    st.integers(1, 5),
    st.integers(1, 5),
)
def test_any_input_counts_every_request_once_within_the_caps(
    rows: list[tuple[str | None, str, str | None, int | None, float | None]],
    max_groups: int,
    max_versions: int,
) -> None:
    metrics = RequestMetrics(max_path_groups=max_groups, max_versions=max_versions)
    metrics.add_batch([request(*row) for row in rows])
    assert sum(metrics.requests.values()) == len(rows)
    timed = sum(1 for row in rows if row[4] is not None)
    assert sum(h.count for h in metrics.durations.values()) == timed
    assert len({k[0] for k in metrics.requests} - {OTHER, "none"}) <= max_groups
    assert len({k[2] for k in metrics.requests} - {OTHER, "none"}) <= max_versions
    for histogram in metrics.durations.values():
        cumulative = [count for _, count in histogram.cumulative()]
        assert cumulative == sorted(cumulative) and cumulative[-1] == histogram.count


def test_verdicts_give_every_decision_with_one_current() -> None:
    metrics = RequestMetrics(max_path_groups=1)
    series = metrics.verdict_series(
        [("/api/cart", "hold"), ("/a", "promote"), ("/b", "rollback"), ("/c", "bogus")]
    )
    assert series == [
        ("/api/cart", "promote", 0),
        ("/api/cart", "hold", 1),
        ("/api/cart", "rollback", 0),
        ("/api/cart", "insufficient_data", 0),
        # /a and /b beyond the cap: `other` shows the most severe of their decisions.
        (OTHER, "promote", 0),
        (OTHER, "hold", 0),
        (OTHER, "rollback", 1),
        (OTHER, "insufficient_data", 0),
    ]


def test_the_worker_exposes_them_with_the_verdicts_of_its_canary_analysis() -> None:
    metrics = RequestMetrics()
    metrics.add_batch([request(status=200), request(stage="canary", version="v2", status=500)])
    verdict = SimpleNamespace(path_group="/api/cart", decision=SimpleNamespace(value="rollback"))
    app = SimpleNamespace(grayscope_canary=SimpleNamespace(verdicts=[verdict]))
    telemetry = Telemetry(SimpleNamespace(app=app, request_metrics=metrics))
    body, _ = asyncio.run(telemetry.render())
    samples = {(name, labels): value for name, labels, value in parse_samples(body.decode())}
    assert (
        samples[
            (
                "grayscope_http_requests_total",
                '{path_group="/api/cart",stage="canary",status_class="5xx",version="v2"}',
            )
        ]
        == 1.0
    )
    assert (
        samples[
            (
                "grayscope_http_request_duration_seconds_bucket",
                '{le="0.025",path_group="/api/cart",stage="stable",version="v1"}',
            )
        ]
        == 1.0
    )
    assert (
        samples[("grayscope_canary_verdict", '{decision="rollback",path_group="/api/cart"}')] == 1.0
    )
    assert samples[("grayscope_canary_verdict", '{decision="hold",path_group="/api/cart"}')] == 0.0


class ReferenceFamilies:
    """The request metrics as prometheus_client metric families (how /metrics built them
    before ``request_metrics_text`` wrote them itself): the oracle for its text."""

    def __init__(self, metrics: RequestMetrics, verdicts: list[tuple[str, str]]) -> None:
        self.metrics = metrics
        self.verdicts = verdicts

    def collect(self) -> list[object]:
        counter = CounterMetricFamily(
            "grayscope_http_requests",
            HTTP_REQUESTS_HELP,
            labels=["path_group", "stage", "version", "status_class"],
        )
        for key, count in sorted(self.metrics.requests.items()):
            counter.add_metric(list(key), count)
        histogram = HistogramMetricFamily(
            "grayscope_http_request_duration_seconds",
            HTTP_REQUEST_DURATION_HELP,
            labels=["path_group", "stage", "version"],
        )
        for series, durations in sorted(self.metrics.durations.items()):
            histogram.add_metric(
                list(series), list(durations.cumulative()), sum_value=durations.sum_seconds
            )
        gauge = GaugeMetricFamily(
            "grayscope_canary_verdict",
            CANARY_VERDICT_HELP,
            labels=["path_group", "decision"],
        )
        for path_group, decision, value in self.metrics.verdict_series(self.verdicts):
            gauge.add_metric([path_group, decision], value)
        return [counter, histogram, gauge]


def test_the_text_is_prometheus_clients_for_the_same_families_byte_for_byte() -> None:
    metrics = RequestMetrics(max_path_groups=3)
    metrics.add_batch(
        [
            request(status=200, duration_ms=0.5),
            request(status=404, duration_ms=180.0),
            request(stage="canary", version="v2", status=503, duration_ms=25_000.0),
            request(path_group="/odd\\path", version="1.4.0-rc.1", duration_ms=None),
            request(path_group=None, version=None, status=None),
            request(path_group="/a"),
            request(path_group="/b", stage="blue", version="10.0.0.1"),
        ]
    )
    # Counts past a million print in Go's exponent form ("1.2345678e+07").
    metrics.requests["/api/cart", "stable", "v1", "2xx"] = 12_345_678
    verdicts = [("/api/cart", "rollback"), ("/odd\\path", "promote"), ("/b", "hold")]
    expected = generate_latest(ReferenceFamilies(metrics, verdicts))  # type: ignore[arg-type]
    assert request_metrics_text(metrics, verdicts).encode() == expected
    empty = RequestMetrics()
    assert request_metrics_text(empty, []).encode() == generate_latest(
        ReferenceFamilies(empty, [])  # type: ignore[arg-type]
    )


def test_no_request_metrics_no_families() -> None:
    body, _ = asyncio.run(Telemetry(SimpleNamespace(app=None)).render())
    assert b"grayscope_http_requests_total" not in body


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_idle_version_gives_its_place_and_its_series_to_a_new_one() -> None:
    clock = FakeClock()
    metrics = RequestMetrics(max_path_groups=5, max_versions=2, label_idle_seconds=60, clock=clock)
    metrics.add_batch([request(version="v1"), request(version="v2")])
    clock.now = 30.0
    metrics.add_batch([request(version="v2"), request(version="v3")])  # full, nothing idle
    assert {k[2] for k in metrics.requests} == {"v1", "v2", OTHER}
    clock.now = 61.0  # v1 last seen at 0: idle; v2 seen at 30: not
    metrics.add_batch([request(version="v3")])
    assert {k[2] for k in metrics.requests} == {"v2", "v3", OTHER}
    assert "v1" not in metrics.versions and ("/api/cart", "stable", "v1") not in metrics.durations
    # v1 again, nothing idle: other.
    metrics.add_batch([request(version="v1")])
    assert metrics.requests[("/api/cart", "stable", OTHER, "2xx")] == 2


def test_without_idle_eviction_the_first_values_stay() -> None:
    clock = FakeClock()
    metrics = RequestMetrics(max_versions=1, label_idle_seconds=0, clock=clock)
    metrics.add_batch([request(version="v1")])
    clock.now = 1e9
    metrics.add_batch([request(version="v2")])
    assert {k[2] for k in metrics.requests} == {"v1", OTHER}


def test_eviction_under_adversarial_input_stays_bounded() -> None:
    clock = FakeClock()
    metrics = RequestMetrics(max_path_groups=10, max_versions=3, label_idle_seconds=1, clock=clock)
    for batch in range(200):
        clock.now = float(batch)
        metrics.add_batch(
            [request(path_group=f"/p{batch}-{i}", version=f"v{batch}-{i}") for i in range(50)]
        )
        assert len(metrics.path_groups) <= 10 and len(metrics.versions) <= 3
        assert len({k[0] for k in metrics.requests}) <= 11
        assert len({k[2] for k in metrics.requests}) <= 4

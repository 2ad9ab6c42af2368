"""The span builder: names, deterministic ids, status, and the schema's attributes only."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import schemas
from pipeline.core.model import AccessRecord, Enrichment, GeoInfo
from pipeline.core.span import UNKNOWN_SERVICE
from tests.oracles.otlp_reference import build_span, check_attributes_match_schema

START = 1_700_000_000_123_456_789
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
KIND_TYPES: dict[str, type] = {"string": str, "int": int, "double": float, "bool": bool}


def record(**overrides: Any) -> AccessRecord:
    values: dict[str, Any] = {
        "dataset": "envoy.access",
        "timestamp_ns": START,
        "method": "GET",
        "uri": "/godoc/pkg/net/http?v=v2&abt=exp1",
        "protocol": "HTTP/1.1",
        "status": 200,
        "duration_ns": 12_000_000,
        "peer_addr": "10.0.0.7",
        "user_agent": "Mozilla/5.0",
        "request_id": "7c9a2c6e-1d7b-4f0e-9a51-0c1e2f3a4b5c",
        "upstream_cluster": "outbound|80|canary|godoc.default.svc.cluster.local",
    }
    values.update(overrides)
    return AccessRecord(**values)


def enrichment(**overrides: Any) -> Enrichment:
    values: dict[str, Any] = {
        "url_path": "/godoc/pkg/net/http",
        "url_query": "v=v2&abt=exp1",
        "gray_id": "exp1",
        "gray_id_source": "query",
        "stage": "canary",
        "version": "v2",
        "path_group": "/godoc/pkg",
        "route": "/godoc/pkg/{name}",
        "client_ip": "203.0.113.9",
        "geo": GeoInfo(country_iso_code="US", city_name="Mountain View", lat=37.386, lon=-122.0838),
        "trace_id": TRACE,
        "span_id": PARENT,
        "service_name": "godoc",
    }
    values.update(overrides)
    return Enrichment(**values)


def test_full_span() -> None:
    span = build_span(record(), enrichment())
    assert span is not None
    assert span.name == "GET /godoc/pkg/{name}"
    assert span.trace_id == bytes.fromhex(TRACE)
    assert span.parent_span_id == bytes.fromhex(PARENT)
    assert len(span.span_id) == 8 and any(span.span_id)
    assert span.span_id != span.parent_span_id
    assert span.start_ns == START
    assert span.end_ns == START + 12_000_000
    assert not span.error and span.status_message == ""
    assert span.service_name == "godoc"
    assert span.attributes == {
        "gray.id": "exp1",
        "gray.stage": "canary",
        "gray.version": "v2",
        "gray.path_group": "/godoc/pkg",
        "http.request.method": "GET",
        "url.path": "/godoc/pkg/net/http",
        "http.route": "/godoc/pkg/{name}",
        "http.response.status_code": 200,
        "client.address": "203.0.113.9",
        "user_agent.original": "Mozilla/5.0",
        "geo.country.iso_code": "US",
        "geo.locality.name": "Mountain View",
        "geo.location.lat": 37.386,
        "geo.location.lon": -122.0838,
    }


def test_every_attribute_is_listed_in_the_schema_with_its_kind() -> None:
    listed = schemas.span_attributes()
    span = build_span(record(), enrichment())
    assert span is not None
    # The full record exercises every listed attribute, so none is dead in the schema.
    assert set(span.attributes) == set(listed)
    for name, value in span.attributes.items():
        assert type(value) is KIND_TYPES[listed[name]], name
    assert set(schemas.span_resource_attributes()) == {"service.name"}


def test_name_falls_back_to_path_group_then_method_then_http() -> None:
    def name(rec: AccessRecord, enr: Enrichment) -> str:
        span = build_span(rec, enr)
        assert span is not None
        return span.name

    assert name(record(), enrichment(route=None)) == "GET /godoc/pkg"
    assert name(record(method="POST"), enrichment(route=None, path_group=None)) == "POST"
    assert name(record(method=None), enrichment(route=None, path_group=None)) == "HTTP"
    assert name(record(method=None), enrichment()) == "HTTP /godoc/pkg/{name}"


def test_unknown_methods_are_bounded() -> None:
    span = build_span(record(method="XYZZY"), enrichment())
    assert span is not None
    assert span.name == "HTTP /godoc/pkg/{name}"
    assert span.attributes["http.request.method"] == "_OTHER"


def test_ids_are_deterministic() -> None:
    first = build_span(record(), enrichment())
    again = build_span(record(), enrichment())
    assert first == again


def test_proxies_logging_the_same_request_get_distinct_spans() -> None:
    gateway = build_span(record(upstream_cluster="outbound|80||godoc"), enrichment())
    sidecar = build_span(record(timestamp_ns=START + 1_000_000), enrichment())
    assert gateway is not None and sidecar is not None
    assert gateway.trace_id == sidecar.trace_id
    assert gateway.span_id != sidecar.span_id


def test_trace_id_derived_from_request_id_without_a_trace_in_the_log() -> None:
    span = build_span(record(), enrichment(trace_id=None))
    assert span is not None
    assert len(span.trace_id) == 16 and any(span.trace_id)
    assert span.trace_id != bytes.fromhex(TRACE)
    # A parent span id without the trace it belongs to means nothing.
    assert span.parent_span_id is None
    same = build_span(record(timestamp_ns=START + 5), enrichment(trace_id=None, span_id=None))
    other = build_span(record(request_id="another"), enrichment(trace_id=None))
    assert same is not None and other is not None
    assert same.trace_id == span.trace_id
    assert other.trace_id != span.trace_id


def test_fallback_key_when_neither_trace_nor_request_id() -> None:
    rec = record(request_id=None)
    enr = enrichment(trace_id=None, span_id=None)
    assert build_span(rec, enr) is None
    span = build_span(rec, enr, fallback_key="access-logs-0-42")
    again = build_span(rec, enr, fallback_key="access-logs-0-42")
    other = build_span(rec, enr, fallback_key="access-logs-0-43")
    assert span is not None and again is not None and other is not None
    assert span == again
    assert span.trace_id != other.trace_id
    assert span.span_id != other.span_id


def test_request_id_wins_over_fallback_key() -> None:
    with_key = build_span(record(), enrichment(trace_id=None), fallback_key="access-logs-0-42")
    without = build_span(record(), enrichment(trace_id=None))
    assert with_key == without


def test_malformed_logged_trace_id_falls_back_to_request_id() -> None:
    derived = build_span(record(), enrichment(trace_id=None))
    for bad in ("xyz", "0" * 32, TRACE[:16], TRACE + "00", "g" * 32):
        span = build_span(record(), enrichment(trace_id=bad))
        assert span is not None and derived is not None
        assert span.trace_id == derived.trace_id, bad
        assert span.parent_span_id is None


def test_padded_b3_trace_id_is_used_as_given() -> None:
    padded = "0" * 16 + "a3ce929d0e0e4736"
    span = build_span(record(), enrichment(trace_id=padded, span_id=None))
    assert span is not None
    assert span.trace_id.hex() == padded
    assert span.parent_span_id is None


def test_invalid_parent_span_id_is_ignored() -> None:
    for bad in ("0" * 16, "xyz", PARENT + "00"):
        span = build_span(record(), enrichment(span_id=bad))
        assert span is not None and span.parent_span_id is None


def test_no_timestamp_no_span() -> None:
    assert build_span(record(timestamp_ns=None), enrichment()) is None


def test_unknown_duration_gives_zero_length_span() -> None:
    for duration in (None, 0, -5):
        span = build_span(record(duration_ns=duration), enrichment())
        assert span is not None and span.end_ns == span.start_ns


def test_status_error_only_for_5xx() -> None:
    for status, error in (
        (500, True),
        (503, True),
        (599, True),
        (499, False),
        (404, False),
        (200, False),
        (600, False),
        (None, False),
    ):
        span = build_span(record(status=status), enrichment())
        assert span is not None
        assert span.error is error, status
        assert span.status_message == (f"HTTP {status}" if error else "")


def test_missing_and_empty_values_are_omitted() -> None:
    rec = record(method=None, status=None, user_agent="")
    enr = Enrichment(trace_id=TRACE, url_path="", geo=GeoInfo(country_iso_code="DE"))
    span = build_span(rec, enr)
    assert span is not None
    assert span.attributes == {"gray.stage": "stable", "geo.country.iso_code": "DE"}
    assert span.service_name == UNKNOWN_SERVICE


def test_geo_coordinates_are_doubles() -> None:
    span = build_span(record(), enrichment(geo=GeoInfo(lat=0, lon=13)))  # ints from a DB
    assert span is not None
    assert span.attributes["geo.location.lat"] == 0.0
    assert type(span.attributes["geo.location.lat"]) is float
    assert type(span.attributes["geo.location.lon"]) is float


def test_span_id_is_not_a_plain_hash_of_the_request_id() -> None:
    # Guards the design: two log lines of one request must not share a span id.
    span = build_span(record(), enrichment())
    assert span is not None
    rid = record().request_id or ""
    assert span.span_id != hashlib.blake2b(rid.encode(), digest_size=8).digest()


optional_text = st.one_of(st.none(), st.just(""), st.text(max_size=20))
hex_id = st.one_of(st.none(), st.text("0123456789abcdef", min_size=0, max_size=34))


@given(
    method=optional_text,
    status=st.one_of(st.none(), st.integers(0, 999)),
    duration=st.one_of(st.none(), st.integers(-10, 10**12)),
    request_id=optional_text,
    user_agent=optional_text,
    trace_id=hex_id,
    span_id=hex_id,
    gray_id=optional_text,
    route=optional_text,
    path_group=optional_text,
    lat=st.one_of(st.none(), st.floats(-90, 90), st.integers(-90, 90)),
    service=optional_text,
)
def test_any_input_gives_a_valid_span_within_the_schema(
    method: str | None,
    status: int | None,
    duration: int | None,
    request_id: str | None,
    user_agent: str | None,
    trace_id: str | None,
    span_id: str | None,
    gray_id: str | None,
    route: str | None,
    path_group: str | None,
    lat: float | None,
    service: str | None,
) -> None:
    rec = record(
        method=method,
        status=status,
        duration_ns=duration,
        request_id=request_id,
        user_agent=user_agent,
    )
    enr = enrichment(
        trace_id=trace_id,
        span_id=span_id,
        gray_id=gray_id,
        route=route,
        path_group=path_group,
        geo=GeoInfo(lat=lat),
        service_name=service,
    )
    span = build_span(rec, enr, fallback_key="topic-0-1")
    assert span is not None
    assert len(span.trace_id) == 16 and any(span.trace_id)
    assert len(span.span_id) == 8 and any(span.span_id)
    assert span.parent_span_id is None or len(span.parent_span_id) == 8
    assert span.end_ns >= span.start_ns
    assert span.name and span.service_name
    listed = schemas.span_attributes()
    for name, value in span.attributes.items():
        assert type(value) is KIND_TYPES[listed[name]], name
        assert value != ""
    assert (
        build_span(dataclasses.replace(rec), dataclasses.replace(enr), fallback_key="topic-0-1")
        == span
    )


def test_lone_surrogates_in_ids_do_not_crash() -> None:
    rec = record(request_id="abc\ud800", uri="/x\udcff")
    span = build_span(rec, enrichment(trace_id=None))
    assert span is not None and len(span.trace_id) == 16


@pytest.mark.parametrize(
    ("rec", "enr", "key", "trace_id", "span_id"),
    [
        (record(), enrichment(), None, "4bf92f3577b34da6a3ce929d0e0e4736", "657a46b32c6f58a6"),
        (
            record(),
            enrichment(trace_id=None),
            None,
            "fb404dc0c80253bcebcb2b0ac89568bb",
            "1e6eab01407e81bc",
        ),
        (
            record(request_id=None),
            enrichment(trace_id=None, span_id=None),
            "access-logs-0-42",
            "6c23506b8a83d14f712729618909a2d7",
            "d3d89b5624fa8dbc",
        ),
        (
            record(request_id="abc\ud800", uri="/x\udcff"),
            enrichment(trace_id=None),
            None,
            "efe9a02ad5cfc7b6149f5893e9406a21",
            "14a9ed109c76e950",
        ),
    ],
)
def test_ids_are_those_exported_before(
    rec: AccessRecord, enr: Enrichment, key: str | None, trace_id: str, span_id: str
) -> None:
    # Pinned: a replay after an upgrade must overwrite the spans already in the backend,
    # so a faster builder may not change what the ids are derived from, or how.
    span = build_span(rec, enr, fallback_key=key)
    assert span is not None
    assert (span.trace_id.hex(), span.span_id.hex()) == (trace_id, span_id)


def test_attributes_come_in_the_schema_order() -> None:
    span = build_span(record(), enrichment())
    assert span is not None
    assert list(span.attributes) == list(schemas.span_attributes())
    partial = build_span(record(user_agent=None), enrichment(gray_id=None, geo=GeoInfo(lat=1.5)))
    assert partial is not None
    assert list(partial.attributes) == [
        name
        for name in schemas.span_attributes()
        if name
        not in (
            "gray.id",
            "user_agent.original",
            "geo.country.iso_code",
            "geo.locality.name",
            "geo.location.lon",
        )
    ]


def test_builder_and_schema_drifting_apart_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    check_attributes_match_schema()
    listed = dict(schemas.span_attributes())
    for drifted in (
        {**listed, "http.request.body.size": "int"},  # added to the schema only
        {k: v for k, v in listed.items() if k != "gray.id"},  # removed from the schema only
        {**listed, "http.response.status_code": "string"},  # another kind
        dict(reversed(listed.items())),  # another order
    ):
        monkeypatch.setattr(schemas, "span_attributes", lambda d=drifted: d)
        with pytest.raises(RuntimeError, match="differ from schema"):
            check_attributes_match_schema()

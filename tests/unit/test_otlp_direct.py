"""The direct span encoder writes exactly encode_span(build_span(...)) for any request."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from pipeline.core import otlp as direct
from pipeline.core import otlp_wire
from pipeline.core.enrich import EnrichContext
from pipeline.core.model import AccessRecord, Enrichment, GeoInfo
from pipeline.core.otlp import encode_request_span
from pipeline.core.otlp_wire import frame_request
from pipeline.core.process import Enriched, process
from pipeline.dev.synth import generate
from tests.oracles.otlp_reference import build_span, encode_span, request_to_dicts
from tests.unit.conftest import compiled_core_in_use

START = 1_700_000_000_123_456_789


def reference(record: AccessRecord, enr: Enrichment, key: str | None) -> Any:
    span = build_span(record, enr, fallback_key=key)
    return None if span is None else encode_span(span)


def test_full_request_with_error_and_parent() -> None:
    record = AccessRecord(
        dataset="envoy.access",
        timestamp_ns=START,
        method="GET",
        status=503,
        duration_ns=12_000_000,
        user_agent="Mozilla/5.0",
        request_id="r-1",
    )
    enr = Enrichment(
        url_path="/godoc/pkg/net/http",
        gray_id="exp1",
        stage="canary",
        version="v2",
        path_group="/godoc/pkg",
        route="/godoc/pkg/{name}",
        client_ip="203.0.113.9",
        geo=GeoInfo(country_iso_code="US", city_name="Mountain View", lat=37.386, lon=-122.08),
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        span_id="00f067aa0ba902b7",
        service_name="godoc",
    )
    got = encode_request_span(record, enr, "topic-0-1")
    assert got is not None and got == reference(record, enr, "topic-0-1")
    decoded = request_to_dicts(ExportTraceServiceRequest.FromString(frame_request([got])))[0]
    assert decoded["status_code"] == "STATUS_CODE_ERROR"
    assert decoded["status_message"] == "HTTP 503"
    assert decoded["parent_span_id"] == "00f067aa0ba902b7"
    assert decoded["attributes"]["gray.id"] == "exp1"


def test_no_time_or_no_identity_no_span() -> None:
    assert encode_request_span(AccessRecord(dataset="envoy.access"), Enrichment(), "k") is None
    untraceable = AccessRecord(dataset="envoy.access", timestamp_ns=START)
    assert encode_request_span(untraceable, Enrichment(), None) is None
    assert encode_request_span(untraceable, Enrichment(), "k") == reference(
        untraceable, Enrichment(), "k"
    )


def test_the_synth_stream_encodes_as_the_reference() -> None:
    ctx = EnrichContext()
    for offset, line in enumerate(generate(3000, seed=7)):
        result = process(line, ctx)
        if isinstance(result, Enriched):
            key = f"access-logs-0-{offset}"
            assert encode_request_span(result.record, result.enrichment, key) == reference(
                result.record, result.enrichment, key
            )


def test_memos_stay_bounded_and_correct_after_clearing(monkeypatch: pytest.MonkeyPatch) -> None:
    memo = next(m for m in direct._MEMOS if m.name == "client.address")
    monkeypatch.setattr(memo, "limit", 8)
    memo.clear()
    memo._seed()
    for i in range(50):
        record = AccessRecord(dataset="envoy.access", timestamp_ns=START + i, request_id=f"r{i}")
        enr = Enrichment(client_ip=f"192.0.2.{i}", stage="")
        assert encode_request_span(record, enr) == reference(record, enr, None)
        assert len(memo) <= 8 + 2  # the limit, plus the seeded absent values
    assert memo[None] == b"" and memo[""] == b""


def test_what_cannot_be_encoded_gets_no_span_instead_of_an_error() -> None:
    before_1970 = AccessRecord(dataset="envoy.access", timestamp_ns=-5, request_id="r")
    assert encode_request_span(before_1970, Enrichment()) is None
    huge_status = AccessRecord(
        dataset="envoy.access", timestamp_ns=START, request_id="r", status=10**20
    )
    assert encode_request_span(huge_status, Enrichment()) is None


def test_whole_floats_and_negative_zero_are_not_shared_in_the_memo() -> None:
    spans = []
    for lat in (0.0, -0.0, 1.0, 1, 2.5, 2.5):
        record = AccessRecord(dataset="envoy.access", timestamp_ns=START, request_id="r")
        enr = Enrichment(geo=GeoInfo(lat=lat, lon=-0.0))
        got = encode_request_span(record, enr)
        assert got == reference(record, enr, None)
        spans.append(got)
    assert spans[0] != spans[1]  # 0.0 and -0.0 differ on the wire


optional_text = st.one_of(st.none(), st.just(""), st.text(max_size=300))
hex_id = st.one_of(
    st.none(), st.text("0123456789abcdef", max_size=34), st.sampled_from(["0" * 32, "0" * 16])
)
number = st.one_of(st.none(), st.floats(allow_nan=False), st.integers(-(2**40), 2**40))


@settings(max_examples=400, deadline=None)
@given(
    start=st.one_of(st.none(), st.integers(-(2**63), 2**64 - 1)),
    duration=st.one_of(st.none(), st.integers(-10, 10**12)),
    method=st.one_of(optional_text, st.sampled_from(["GET", "POST", "PATCH", "BREW"])),
    status=st.one_of(st.none(), st.integers(0, 999)),
    request_id=optional_text,
    user_agent=optional_text,
    texts=st.lists(optional_text, min_size=8, max_size=8),
    # what else the span id hashes: URL, peer, upstream cluster, authority, dataset
    material=st.lists(optional_text, min_size=4, max_size=4),
    dataset=st.sampled_from(["nginx.access", "envoy.access", "", "é\ud800"]),
    stage=st.one_of(st.just("canary"), st.just("stable"), st.just("")),
    trace_id=hex_id,
    parent=hex_id,
    lat=number,
    lon=number,
    key=st.one_of(st.none(), st.just(""), st.text(max_size=30)),
)
def test_any_request_encodes_as_the_reference(
    start: int | None,
    duration: int | None,
    method: str | None,
    status: int | None,
    request_id: str | None,
    user_agent: str | None,
    texts: list[str | None],
    stage: str,
    trace_id: str | None,
    parent: str | None,
    lat: float | None,
    lon: float | None,
    key: str | None,
    material: list[str | None],
    dataset: str,
) -> None:
    uri, peer_addr, upstream_cluster, authority = material
    record = AccessRecord(
        dataset=dataset,
        uri=uri,
        peer_addr=peer_addr,
        upstream_cluster=upstream_cluster,
        authority=authority,
        timestamp_ns=start,
        method=method,
        status=status,
        duration_ns=duration,
        user_agent=user_agent,
        request_id=request_id,
    )
    gray_id, version, path_group, route, url_path, client_ip, country, city = texts
    enr = Enrichment(
        gray_id=gray_id,
        stage=stage,
        version=version,
        path_group=path_group,
        route=route,
        url_path=url_path,
        client_ip=client_ip,
        trace_id=trace_id,
        span_id=parent,
        geo=GeoInfo(country_iso_code=country, city_name=city, lat=lat, lon=lon),
        service_name=city,
    )
    try:
        expected = reference(record, enr, key)
    except ValueError:  # times outside uint64: no span (the reference refuses to encode)
        assert encode_request_span(record, enr, key) is None
        return
    assert encode_request_span(record, enr, key) == expected


def test_the_c_encoder_is_used_where_the_core_is_compiled() -> None:
    """Compiled (``make test``'s first pass) the C encoder writes the usual span, and
    hands what is unusual back; under tests/pure.py there is none."""
    if not compiled_core_in_use():
        assert direct._NATIVE_ENCODE is None
        return
    from pipeline.core import _wire

    assert direct._NATIVE_ENCODE is _wire.encode_span
    values: list[object] = [None] * 22
    # timestamp, request id, dataset, stage, geo fields; the rest None
    values[0], values[4], values[5] = START, "r-1", "envoy.access"
    values[16], values[20] = "stable", b""
    record = AccessRecord(dataset="envoy.access", timestamp_ns=START, request_id="r-1")
    expected = direct._encode_in_python(record, Enrichment(), None)
    assert expected is not None and _wire.encode_span(*values) == expected[1]
    values[11] = "4bf92f3577b34da6a3ce929d0e0e47 6"  # not plain hex: bytes.fromhex's rules
    assert _wire.encode_span(*values) == b""


def test_the_c_encoders_blake2b_is_hashlibs() -> None:
    import hashlib

    if not compiled_core_in_use():
        pytest.skip("plain Python: no C module")
    from pipeline.core import _wire

    # The compression in use (AVX2 where the CPU has it) and the portable one.
    assert _wire.blake2b_kind() in ("avx2", "portable")
    data = bytes(range(256)) * 3
    for n in [*range(0, 300), 383, 384, 385, 768]:  # around every 128-byte block edge
        for size in (8, 16, 64):
            expected = hashlib.blake2b(data[:n], digest_size=size).digest()
            assert _wire.blake2b(data[:n], size) == expected
            assert _wire.blake2b(data[:n], size, True) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=700), st.sampled_from([8, 16, 32, 64]))
def test_the_c_encoders_blake2b_is_hashlibs_for_any_bytes(data: bytes, size: int) -> None:
    import hashlib

    if not compiled_core_in_use():
        pytest.skip("plain Python: no C module")
    from pipeline.core import _wire

    expected = hashlib.blake2b(data, digest_size=size).digest()
    assert _wire.blake2b(data, size) == expected
    assert _wire.blake2b(data, size, True) == expected


# --- the export request ----------------------------------------------------------------

_services = st.sampled_from(["checkout", "web", "wéb", "", "api-" + "x" * 200])
# Span messages (a name field) of lengths around the varint edges (127/128, 16383/16384).
_bodies = st.builds(
    lambda n: Span(name="n" * n).SerializeToString(),
    st.integers(0, 40) | st.sampled_from([124, 125, 126, 16379, 16380, 16381]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_services, _bodies), max_size=60))
def test_the_c_request_is_the_definitions(spans: list[tuple[str, bytes]]) -> None:
    """C's frame_request (compiled) writes what framed_request does, for any spans."""
    framed = otlp_wire.framed_request(spans)
    assert otlp_wire.frame_request(spans) == framed
    assert otlp_wire.frame_request(tuple(spans)) == framed  # not a list: Python's
    request = ExportTraceServiceRequest.FromString(framed)
    assert [
        (resource.resource.attributes[0].value.string_value, len(resource.scope_spans[0].spans))
        for resource in request.resource_spans
    ] == [(name, sum(s == name for s, _ in spans)) for name in dict.fromkeys(s for s, _ in spans)]


def test_the_c_request_takes_up_to_32_services() -> None:
    if not compiled_core_in_use():
        assert otlp_wire._NATIVE_FRAME_REQUEST is None
        return
    from pipeline.core import _wire

    assert otlp_wire._NATIVE_FRAME_REQUEST is _wire.frame_request
    args = (otlp_wire._resource_field, otlp_wire._FRAME_TAGS, otlp_wire._SCOPE_FIELD)
    many = [(f"service-{i}", b"span") for i in range(33)]
    assert _wire.frame_request(many[:32], *args) == otlp_wire.framed_request(many[:32])
    assert _wire.frame_request(many, *args) is None
    assert otlp_wire.frame_request(many) == otlp_wire.framed_request(many)
    for odd in ([("s", "not bytes")], [("s", b"x", 1)], [(b"s", b"x")], [["s", b"x"]]):
        assert _wire.frame_request(odd, *args) is None
    with pytest.raises(TypeError):
        _wire.frame_request(tuple(many), *args)
    with pytest.raises(TypeError):
        _wire.frame_request([("s", b"x")], lambda service: "not bytes", *args[1:])

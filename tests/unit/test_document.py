"""The ECS document builder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.document import build_document, document_source, geo_document, http_version
from pipeline.core.enrich import EnrichContext
from pipeline.core.model import AccessRecord, AsnInfo, Enrichment, GeoInfo
from pipeline.core.process import Enriched, process
from pipeline.dev.synth import generate
from tests.unit.conftest import FULL_ASN, FULL_GEO, T0_NS, compiled_core_in_use


def full_record() -> AccessRecord:
    """An AccessRecord with every field the document reads set."""
    return AccessRecord(
        dataset="envoy.access",
        timestamp_ns=T0_NS + 1_000_000,
        method="GET",
        uri="/godoc/pkg/fmt?v=1.22",
        protocol="HTTP/2",
        status=200,
        bytes_sent=5120,
        bytes_received=10,
        duration_ns=18_000_000,
        upstream_duration_ns=16_000_000,
        peer_addr="10.4.0.1",
        forwarded_for="73.15.200.7",
        user_agent="curl/8.5.0",
        request_id="rid-1",
        authority="go.dev",
        upstream_cluster="outbound|8080|canary|godoc.default.svc.cluster.local",
        upstream_host="10.4.0.12:8080",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        version_field="1.22",
        headers={"referer": "https://go.dev/"},
        original='{"the": "line"}',
        upstream_status=200,
        truncated=("cookies",),
    )


def full_enrichment() -> Enrichment:
    """An Enrichment with every optional value set."""
    return Enrichment(
        url_path="/godoc/pkg/fmt",
        url_query="v=1.22",
        query={"v": "1.22"},
        gray_id="exp00001",
        gray_id_source="header",
        stage="canary",
        version="1.22",
        path_group="/godoc/pkg",
        route="/godoc/pkg/{name}",
        client_ip="73.15.200.7",
        geo=FULL_GEO,
        asn=FULL_ASN,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        span_id="00f067aa0ba902b7",
        service_name="godoc",
        truncated=("forwarded_for",),
    )


def full_document() -> dict[str, Any]:
    return build_document(full_record(), full_enrichment(), include_original=True)


def test_every_field() -> None:
    assert full_document() == {
        "@timestamp": "2026-11-20T12:00:00.001Z",
        "event": {"dataset": "envoy.access", "duration": 18_000_000, "original": '{"the": "line"}'},
        "http": {
            "request": {"method": "GET", "id": "rid-1", "referrer": "https://go.dev/"},
            "response": {"status_code": 200, "body": {"bytes": 5120}},
            "version": "2",
            "route": "/godoc/pkg/{name}",
        },
        "url": {"original": "/godoc/pkg/fmt?v=1.22", "path": "/godoc/pkg/fmt", "query": "v=1.22"},
        "user_agent": {"original": "curl/8.5.0"},
        "source": {"ip": "10.4.0.1"},
        "client": {
            "ip": "73.15.200.7",
            "geo": {
                "country_iso_code": "US",
                "country_name": "United States",
                "continent_code": "NA",
                "continent_name": "North America",
                "region_iso_code": "US-CA",
                "region_name": "California",
                "city_name": "San Jose",
                "location": {"lat": 37.3388, "lon": -121.8916},
            },
            "as": {"number": 7922, "organization": {"name": "Comcast Cable Communications, LLC"}},
        },
        "trace": {"id": "4bf92f3577b34da6a3ce929d0e0e4736"},
        "span": {"id": "00f067aa0ba902b7"},
        "service": {"name": "godoc"},
        "upstream": {
            "cluster": "outbound|8080|canary|godoc.default.svc.cluster.local",
            "address": "10.4.0.12:8080",
            "status_code": 200,
            "duration": 16_000_000,
        },
        "tags": ["truncated_cookies", "truncated_forwarded_for"],
        "gray": {
            "stage": "canary",
            "id": "exp00001",
            "id_source": "header",
            "version": "1.22",
            "path_group": "/godoc/pkg",
        },
    }


def test_nothing_known_means_a_minimal_document() -> None:
    document = build_document(AccessRecord(dataset="nginx.access"), Enrichment())
    assert document == {"event": {"dataset": "nginx.access"}, "gray": {"stage": "stable"}}


def test_none_is_never_written() -> None:
    def leaves(value: Any) -> list[Any]:
        if isinstance(value, dict):
            return [leaf for v in value.values() for leaf in leaves(v)]
        return [value]

    document = build_document(
        AccessRecord(dataset="nginx.access", method="GET"),
        Enrichment(client_ip="192.0.2.1", geo=GeoInfo(country_iso_code="US"), asn=AsnInfo()),
    )
    assert None not in leaves(document)


def test_original_only_when_asked() -> None:
    assert "original" not in build_document(full_record(), full_enrichment())["event"]


@pytest.mark.parametrize(
    ("record", "http"),
    [
        (AccessRecord(dataset="x", request_id="r"), {"request": {"id": "r"}}),
        (AccessRecord(dataset="x", bytes_sent=0), {"response": {"body": {"bytes": 0}}}),
        (AccessRecord(dataset="x", status=404), {"response": {"status_code": 404}}),
        (AccessRecord(dataset="x", protocol="HTTP/1.0"), {"version": "1.0"}),
        (AccessRecord(dataset="x", protocol="h2c"), None),
        (
            AccessRecord(dataset="x", headers={"referer": "https://a/"}),
            {"request": {"referrer": "https://a/"}},
        ),
    ],
)
def test_partial_http(record: AccessRecord, http: dict[str, Any] | None) -> None:
    assert build_document(record, Enrichment()).get("http") == http


@pytest.mark.parametrize(
    ("protocol", "version"),
    [
        ("HTTP/1.0", "1.0"),
        ("HTTP/1.1", "1.1"),
        ("HTTP/2", "2"),
        ("HTTP/2.0", "2"),
        ("HTTP/3", "3"),
        ("http/1.1", "1.1"),
        ("HTTP/9.9", "9.9"),
        ("SPDY", None),
        (None, None),
    ],
)
def test_http_version(protocol: str | None, version: str | None) -> None:
    assert http_version(protocol) == version


def test_geo_location_needs_both_coordinates() -> None:
    assert "location" not in geo_document(GeoInfo(country_iso_code="US", lat=1.0))
    assert geo_document(GeoInfo(lat=0.0, lon=0.0)) == {"location": {"lat": 0.0, "lon": 0.0}}


def test_empty_geo_and_asn_are_left_out() -> None:
    document = build_document(
        AccessRecord(dataset="x"), Enrichment(client_ip="192.0.2.1", geo=GeoInfo(), asn=AsnInfo())
    )
    assert document["client"] == {"ip": "192.0.2.1"}


@pytest.mark.parametrize(
    ("asn", "expected"),
    [
        (AsnInfo(number=1), {"number": 1}),
        (AsnInfo(organization="Org"), {"organization": {"name": "Org"}}),
    ],
)
def test_partial_asn(asn: AsnInfo, expected: dict[str, Any]) -> None:
    document = build_document(AccessRecord(dataset="x"), Enrichment(client_ip="1.1.1.1", asn=asn))
    assert document["client"]["as"] == expected


def test_geo_without_a_client_ip_is_not_written() -> None:
    document = build_document(AccessRecord(dataset="x"), Enrichment(geo=FULL_GEO))
    assert "client" not in document


def test_gray_id_source_comes_with_the_id() -> None:
    document = build_document(
        AccessRecord(dataset="x"), Enrichment(gray_id="abcd", gray_id_source="query")
    )
    assert document["gray"] == {"stage": "stable", "id": "abcd", "id_source": "query"}


def test_documents_of_one_client_share_its_geo_and_as_objects() -> None:
    """The GeoIP cache hands out one GeoInfo per client; its fragments are built once."""
    asn = AsnInfo(number=7)
    geo = GeoInfo(country_iso_code="SE", city_name="Linköping", lat=58.4, lon=15.6)
    first = build_document(full_record(), Enrichment(client_ip="192.0.2.1", geo=geo, asn=asn))
    second = build_document(full_record(), Enrichment(client_ip="192.0.2.9", geo=geo, asn=asn))
    assert first["client"]["geo"] is second["client"]["geo"]
    assert first["client"]["as"] is second["client"]["as"]
    assert first["client"]["geo"] == geo_document(geo)
    # The memo is no part of the value.
    assert geo == GeoInfo(country_iso_code="SE", city_name="Linköping", lat=58.4, lon=15.6)
    assert "document" not in repr(geo)


@pytest.mark.parametrize("first_call", ["source", "dict"])
@pytest.mark.parametrize(
    ("geo", "asn"),
    [
        (GeoInfo(country_iso_code="SE", city_name="Linköping", lat=58.4, lon=-1e-7), AsnInfo(7)),
        (GeoInfo(), AsnInfo()),  # empty: left out in both forms
        (GeoInfo(city_name='a "quoted"\\ city\x01'), AsnInfo(organization="Org\u2028")),
    ],
)
def test_serialised_document_copies_the_shared_json(
    geo: GeoInfo, asn: AsnInfo, first_call: str
) -> None:
    """``document_source`` splices client.geo/client.as in as JSON built once per
    GeoInfo/AsnInfo: the bytes are exactly those of serialising the dict, whichever
    form is built first, for every document of the client."""
    enrichments = [Enrichment(client_ip=ip, geo=geo, asn=asn) for ip in ("192.0.2.1", "::1")]
    if first_call == "dict":
        build_document(full_record(), enrichments[0])
    for enrichment in enrichments:
        source = document_source(full_record(), enrichment)
        assert source == orjson.dumps(build_document(full_record(), enrichment))
        assert orjson.loads(source) == build_document(full_record(), enrichment)
    assert "document_json" not in repr(geo)


def test_a_geo_object_json_cannot_hold_is_not_left_half_built() -> None:
    """If the shared object cannot be serialised, neither memo is set: the next
    document of that client fails the same way instead of writing ``"geo": null``."""
    geo = GeoInfo(city_name="\ud800")  # a lone surrogate (lenient JSON input)
    enrichment = Enrichment(client_ip="192.0.2.1", geo=geo)
    for _ in range(2):
        with pytest.raises(orjson.JSONEncodeError):
            document_source(full_record(), enrichment)
    assert geo.document is None and geo.document_json is None


# --- the C writer (pipeline/core/_wire.c) writes exactly what orjson writes -------------

# Text as logs bring it: any code point (control characters, quotes, backslashes,
# non-ASCII) and lone surrogates (lenient JSON), which JSON cannot hold.
any_text = st.one_of(
    st.none(),
    st.just(""),
    st.text(max_size=40),
    st.text(st.characters(max_codepoint=0x7F), max_size=40),
    st.sampled_from(['"\\\x00\x1f\x7f', "\u2028é😀", "\ud800", "a\udfffb"]),
)
# Ints in and beyond int64 and uint64 (orjson refuses beyond 64 bits), and around one
# 30-bit digit (the C reader's shortcut for CPython's one-digit ints).
any_int = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(2**31), 2**31),
    st.sampled_from([0, -1, 1, 2**30 - 1, 2**30, -(2**30) + 1, -(2**30)]),
    st.sampled_from([2**63, 2**64 - 1, 2**64, -(2**63) - 1, True]),
)


def _outcome(write: Callable[[], bytes]) -> bytes | str:
    try:
        return write()
    except orjson.JSONEncodeError:
        return "refused"


@settings(max_examples=500, deadline=None)
@given(
    texts=st.lists(any_text, min_size=19, max_size=19),
    ints=st.lists(any_int, min_size=5, max_size=5),
    # before 1970 (the Python path), up to the last ns of year 9999 (ns_to_iso's range)
    timestamp_ns=st.one_of(
        st.none(),
        st.integers(-(10**18), 253_402_300_799_999_999_999),
        st.sampled_from([0, 951_782_400 * 10**9, 253_402_300_799_999_999_999]),  # 2000-02-29
    ),
    stage=st.one_of(st.just("canary"), st.just(""), st.text(max_size=20), st.just("\ud800")),
    geo=st.one_of(st.none(), st.builds(GeoInfo, city_name=any_text, lat=st.floats(-90, 90))),
    asn=st.one_of(st.none(), st.builds(AsnInfo, number=st.integers(0, 2**32))),
    truncated=st.sampled_from([(), ("user_agent",)]),
    include_original=st.booleans(),
)
def test_any_document_is_written_as_orjson_writes_its_dict(
    texts: list[str | None],
    ints: list[int | None],
    timestamp_ns: int | None,
    stage: str,
    geo: GeoInfo | None,
    asn: AsnInfo | None,
    truncated: tuple[str, ...],
    include_original: bool,
) -> None:
    """Whichever writer runs (C where the core is compiled, orjson over the dicts under
    tests/pure.py), the bytes are orjson's of ``build_document``'s dict, or both refuse."""
    (dataset, method, request_id, referer, protocol, route, uri, url_path, url_query) = texts[:9]
    (user_agent, peer, client_ip, trace_id, span_id, service, cluster, host, gray_id) = texts[9:18]
    original = texts[18]
    status, bytes_sent, duration, upstream_status, upstream_duration = ints
    record = AccessRecord(
        dataset=dataset or "envoy.access",
        timestamp_ns=timestamp_ns,
        method=method,
        uri=uri,
        protocol=protocol,
        status=status,
        bytes_sent=bytes_sent,
        duration_ns=duration,
        upstream_duration_ns=upstream_duration,
        upstream_status=upstream_status,
        peer_addr=peer,
        user_agent=user_agent,
        request_id=request_id,
        upstream_cluster=cluster,
        upstream_host=host,
        headers={"referer": referer} if referer is not None else {},
        truncated=truncated,
    )
    record.original = original
    enrichment = Enrichment(
        url_path=url_path,
        url_query=url_query,
        gray_id=gray_id,
        gray_id_source="header" if gray_id else None,
        stage=stage,
        version=service,
        path_group=route,
        route=route,
        client_ip=client_ip,
        geo=geo,
        asn=asn,
        trace_id=trace_id,
        span_id=span_id,
        service_name=service,
    )
    expected = _outcome(lambda: orjson.dumps(build_document(record, enrichment, include_original)))
    assert _outcome(lambda: document_source(record, enrichment, include_original)) == expected


def test_the_synth_stream_is_written_as_orjson_writes_its_dicts() -> None:
    ctx = EnrichContext()
    written = 0
    for raw in generate(3000, seed=11):
        result = process(raw, ctx)
        if isinstance(result, Enriched):
            assert result.source == orjson.dumps(build_document(result.record, result.enrichment))
            written += 1
    assert written > 2500


def test_the_c_writer_is_used_where_the_core_is_compiled() -> None:
    """Compiled (``make test``'s first pass) the C writer takes the usual document;
    under tests/pure.py there is none."""
    from pipeline.core import document

    if not compiled_core_in_use():
        assert document._NATIVE_DOCUMENT is None
        return
    from pipeline.core import _wire

    assert document._NATIVE_DOCUMENT is _wire.document_json
    values: list[object] = [None] * 31
    values[1], values[26] = "envoy.access", "canary"  # event.dataset, gray.stage
    assert (
        _wire.document_json(*values)
        == b'{"event":{"dataset":"envoy.access"},"gray":{"stage":"canary"}}'
    )
    values[7] = 2**64  # an int orjson refuses: the Python path says so
    assert _wire.document_json(*values) == b""

"""process(): one raw message value in, a document or a dead letter out — never an exception."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from pipeline.core.process import Enriched, process
from pipeline.core.enrich import DEFAULT_CHAIN, EnrichContext
from pipeline.core.model import AccessRecord, DeadLetter, Enrichment, Reason
from tests.unit.conftest import (
    FULL_ASN,
    FULL_GEO,
    FakeGeo,
    corpus_lines,
    dead,
    doc,
    mapping_problems,
    sample_lines,
)

# --- the shared samples, document by document ----------------------------------

ISTIO_DOC: dict[str, Any] = {
    "@timestamp": "2026-11-20T12:00:00.001Z",
    "event": {"dataset": "envoy.access", "duration": 18_000_000},
    "http": {
        "request": {"method": "GET", "id": "5b1f1f3e-8c1e-4f7a-9a55-1c2d3e4f5a6b"},
        "response": {"status_code": 200, "body": {"bytes": 5120}},
        "version": "1.1",
    },
    "url": {"original": "/godoc/pkg/fmt?v=1.20", "path": "/godoc/pkg/fmt", "query": "v=1.20"},
    "user_agent": {"original": "Mozilla/5.0"},
    "source": {"ip": "10.4.0.1"},
    "client": {"ip": "192.0.2.10"},
    "service": {"name": "godoc"},
    "upstream": {"cluster": "outbound|8080|v1|godoc.default.svc.cluster.local"},
    "gray": {"stage": "stable", "version": "1.20", "path_group": "/godoc/pkg"},
}

NGINX_JSON_DOC: dict[str, Any] = {
    "@timestamp": "2026-11-20T12:00:01.996Z",
    "event": {"dataset": "nginx.access", "duration": 4_000_000},
    "http": {
        "request": {"method": "GET", "id": "0123456789abcdef0123456789abcdef"},
        "response": {"status_code": 200, "body": {"bytes": 2048}},
    },
    "url": {"original": "/godoc/pkg/sort?v=1.21", "path": "/godoc/pkg/sort", "query": "v=1.21"},
    "user_agent": {"original": "curl/8.5.0"},
    "source": {"ip": "10.0.0.9"},
    "client": {"ip": "192.0.2.44"},
    "gray": {
        "stage": "stable",
        "id": "feature01",
        "id_source": "header",
        "version": "1.21",
        "path_group": "/godoc/pkg",
    },
}

STRUCTURED_DOC: dict[str, Any] = {
    "@timestamp": "2026-11-20T12:00:03.000Z",
    "event": {"dataset": "nginx.access"},
    "http": {
        "request": {"method": "GET"},
        "response": {"status_code": 200, "body": {"bytes": 900}},
        "version": "1.1",
    },
    "url": {"original": "/godoc/pkg/io?v=1.22", "path": "/godoc/pkg/io", "query": "v=1.22"},
    "user_agent": {"original": "curl/8.5.0"},
    "source": {"ip": "10.0.0.9"},
    "client": {"ip": "192.0.2.45"},
    "gray": {"stage": "stable", "version": "1.22", "path_group": "/godoc/pkg"},
}

SEED_DOC: dict[str, Any] = {
    "@timestamp": "2026-11-20T12:00:01.000Z",
    "event": {"dataset": "envoy.access"},
    "trace": {"id": "5759e988bd862e3fe1be46a994272793"},
    "service": {"name": "godoc"},
    "upstream": {"cluster": "outbound|80|canary|godoc.default.svc.cluster.local"},
    "gray": {"stage": "canary", "id": "exp00001", "id_source": "header"},
}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("istio-default.json.log", ISTIO_DOC),
        ("fluent-bit-envelope.json", ISTIO_DOC),
        ("nginx.json.log", NGINX_JSON_DOC),
        ("filebeat-envelope.json", NGINX_JSON_DOC),
        ("nginx-structured.log", STRUCTURED_DOC),
        ("vector-envelope.json", STRUCTURED_DOC),
        ("envoy-seed-format.json.log", SEED_DOC),
    ],
)
def test_sample_documents(name: str, expected: dict[str, Any]) -> None:
    (line,) = sample_lines(name)
    assert doc(line) == expected


def test_every_corpus_line_gives_a_mapped_document() -> None:
    ctx = EnrichContext()
    for line in corpus_lines():
        result = process(line, ctx)
        assert isinstance(result, Enriched), (line, result)
        assert mapping_problems(result.document) == []
        orjson.dumps(result.document)


def test_enriched_carries_record_enrichment_and_document() -> None:
    (line,) = sample_lines("istio-default.json.log")
    result = process(line, EnrichContext())
    assert isinstance(result, Enriched)
    assert isinstance(result.record, AccessRecord)
    assert isinstance(result.enrichment, Enrichment)
    assert result.enrichment.client_ip == result.document["client"]["ip"]


def test_geo_in_the_document() -> None:
    (line,) = sample_lines("istio-default.json.log")
    ctx = EnrichContext(geoip=FakeGeo({"192.0.2.10": (FULL_GEO, FULL_ASN)}))
    client = doc(line, ctx)["client"]
    assert client["geo"]["region_iso_code"] == "US-CA"
    assert client["geo"]["location"] == {"lat": 37.3388, "lon": -121.8916}
    assert client["as"] == {"number": 7922, "organization": {"name": FULL_ASN.organization}}


def test_include_original() -> None:
    (line,) = sample_lines("nginx-structured.log")
    ctx = EnrichContext(include_original=True)
    assert doc(line + b"\r\n", ctx)["event"]["original"] == line.decode()
    assert "original" not in doc(line)["event"]


# --- the traps from the issue ----------------------------------------------------


def test_unset_nginx_variables_are_empty_strings() -> None:
    line = (
        '{"time_iso8601":"2026-11-20T12:00:02+00:00","remote_addr":"10.0.0.9",'
        '"request_method":"GET","request_uri":"/","status":"200","body_bytes_sent":"0",'
        '"request_time":"","upstream_response_time":"","http_user_agent":"",'
        '"http_x_forwarded_for":"","http_x_abtest_id":"","http_x_gray_id":"","arg_v":"",'
        '"request_id":""}'
    )
    document = doc(line)
    assert document["@timestamp"] == "2026-11-20T12:00:02.000Z"
    assert "duration" not in document["event"]
    assert "user_agent" not in document
    assert document["client"] == {"ip": "10.0.0.9"}
    assert document["gray"] == {"stage": "stable", "path_group": "/"}
    assert document["http"]["request"] == {"method": "GET"}


@pytest.mark.parametrize("upstream", ["0.010, 0.020", "0.010 : 0.020", "-", "0.010, -"])
def test_upstream_response_time_lists_are_accepted(upstream: str) -> None:
    line = orjson.dumps({"request_uri": "/", "status": "502", "upstream_response_time": upstream})
    assert doc(line)["http"]["response"]["status_code"] == 502


@pytest.mark.parametrize(
    ("xff", "client"),
    [
        ("2001:db8::7", "2001:db8::7"),
        ("[2001:db8::7]:443, 10.0.0.2", "2001:db8::7"),
        ("2001:DB8:0::7, fd00::1", "2001:db8::7"),
    ],
)
def test_ipv6_clients(xff: str, client: str) -> None:
    line = orjson.dumps(
        {"request_uri": "/", "remote_addr": "10.0.0.9", "http_x_forwarded_for": xff}
    )
    assert doc(line)["client"]["ip"] == client


def test_ipv6_peer_in_every_format() -> None:
    envoy = orjson.dumps(
        {"response_code": "200", "downstream_remote_address": "[2001:db8::5]:4000"}
    )
    nginx = orjson.dumps({"status": "200", "remote_addr": "2001:db8::5"})
    text = b'2001:db8::5 - - [20/Nov/2026:12:00:03 +0000] "GET / HTTP/1.1" 200 1 "-" "-"'
    for line in (envoy, nginx, text):
        assert doc(line)["source"] == {"ip": "2001:db8::5"}


def test_percent_encoded_and_non_ascii_paths() -> None:
    document = doc('{"request_uri": "/blog/caf%C3%A9/%E4%B8%AD?q=%E6%B5%8B", "status": "200"}')
    assert document["url"]["original"] == "/blog/caf%C3%A9/%E4%B8%AD?q=%E6%B5%8B"
    assert document["url"]["path"] == "/blog/café/中"
    assert document["url"]["query"] == "q=%E6%B5%8B"
    raw_utf8 = doc('{"request_uri": "/blog/café", "status": "200"}'.encode())
    assert raw_utf8["url"]["path"] == "/blog/café"
    broken = doc('{"request_uri": "/a%ZZ/%FF", "status": "200"}')
    assert broken["url"]["path"] == "/a%ZZ/\ufffd"


def test_duplicate_query_args() -> None:
    document = doc('{"request_uri": "/x?v=1&v=2&abt=exp9&abt=abcd", "status": "200"}')
    assert document["gray"]["version"] == "1"
    assert document["gray"]["id"] == "exp9"


def test_quotes_and_backslashes_in_user_agents() -> None:
    json_escaped = rb'{"request_uri": "/", "http_user_agent": "a \"b\" \\c"}'
    nginx_escaped = (
        b'10.0.0.9 - - [20/Nov/2026:12:00:03 +0000] "GET / HTTP/1.1" 200 1 "-" '
        b'"a \\x22b\\x22 \\x5Cc"'
    )
    assert doc(json_escaped)["user_agent"]["original"] == 'a "b" \\c'
    assert doc(nginx_escaped)["user_agent"]["original"] == 'a "b" \\c'


def test_missing_fields_still_give_a_document() -> None:
    assert doc('{"status": "200"}') == {
        "event": {"dataset": "nginx.access"},
        "http": {"response": {"status_code": 200}},
        "gray": {"stage": "stable"},
    }
    assert doc('{"response_flags": "-"}') == {
        "event": {"dataset": "envoy.access"},
        "gray": {"stage": "stable"},
    }


def test_huge_messages_are_too_large() -> None:
    ctx = EnrichContext(max_message_bytes=1024)
    letter = dead(b'{"request_uri": "/' + b"a" * 2000 + b'"}', ctx)
    assert letter.reason is Reason.TOO_LARGE


def test_a_long_but_allowed_message_is_fine() -> None:
    line = orjson.dumps({"request_uri": "/" + "a" * 100_000, "http_user_agent": "u" * 50_000})
    assert doc(line)["url"]["path"] == "/" + "a" * 100_000


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", Reason.EMPTY),
        (b"\n", Reason.EMPTY),
        (b"\xff\xfe\xfd", Reason.INVALID_ENCODING),
        (b'{"request_uri": "/\xc3\x28"}', Reason.INVALID_ENCODING),
        (b"\xef\xbb\xbf\xff", Reason.INVALID_ENCODING),
        (b"{not json", Reason.INVALID_JSON),
        (b"[]", Reason.NOT_AN_OBJECT),
        (b'{"x": 1}', Reason.UNKNOWN_FORMAT),
        (b"GET / HTTP/1.1", Reason.UNKNOWN_FORMAT),
        (b'{"status": "abc"}', Reason.INVALID_FIELD),
        (b'{"status": "1e999"}', Reason.INVALID_FIELD),
        (b'{"status": 99999999999999999999}', Reason.INVALID_FIELD),
    ],
)
def test_dead_letters_keep_the_raw_bytes(raw: bytes, reason: Reason) -> None:
    letter = dead(raw)
    assert letter.reason is reason
    assert letter.raw == raw
    assert letter.detail
    record = letter.to_json_dict()
    assert record["reason"] == reason.value
    orjson.dumps(record)  # invalid UTF-8 is backslash-escaped, never a crash


@pytest.mark.parametrize(
    "line",
    [
        b'{"request_time": "nan", "request_uri": "/"}',
        b'{"request_time": "1e300", "request_uri": "/"}',
        b'{"msec": "1e300", "request_uri": "/"}',
        b'{"time_iso8601": "0001-01-01T00:00:00+00:00", "request_time": "5", "request_uri": "/"}',
        b'{"start_time": "12345678901234567890123", "method": "GET"}',
        b'{"start_time": "2026-11-20T12:00:00.001Z", "duration": "nan"}',
        b'1.2.3.4 - - [31/Dec/9999:23:59:59 -2359] "GET / HTTP/1.1" 200 1 "-" "-"',
    ],
)
def test_out_of_range_numbers_are_unreadable_not_internal_errors(line: bytes) -> None:
    document = doc(line)
    assert mapping_problems(document) == []


def test_a_bug_in_a_step_is_an_internal_error_dead_letter(caplog: pytest.LogCaptureFixture) -> None:
    def broken(rec: AccessRecord, enr: Enrichment, ctx: EnrichContext) -> None:
        raise KeyError("boom")

    (line,) = sample_lines("istio-default.json.log")
    with caplog.at_level(logging.ERROR, logger="pipeline.core.process"):
        result = process(line, EnrichContext(), (*DEFAULT_CHAIN, broken))
    assert isinstance(result, DeadLetter)
    assert result.reason is Reason.INTERNAL_ERROR
    assert "KeyError" in result.detail
    assert result.raw == line
    assert "internal error" in caplog.text


def test_the_same_line_twice_gives_equal_documents() -> None:
    ctx = EnrichContext()
    for line in corpus_lines():
        first = process(line, ctx)
        second = process(line, ctx)
        assert isinstance(first, Enriched) and isinstance(second, Enriched)
        assert first.document == second.document

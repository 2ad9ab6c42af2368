"""Envoy's default TEXT access log and Istio's TEXT encoding."""

from __future__ import annotations

import pytest

from pipeline.core.formats.detect import parse_message
from pipeline.core.formats.envoy_text import looks_like_envoy_text, parse_envoy_text
from pipeline.core.model import Reason, RejectedInput
from tests.unit.conftest import T0_NS, doc, fixture_lines

START = "[2026-11-20T12:00:00.123Z]"
ENVOY = (
    START + ' "GET /godoc/pkg/net/http?v=1.22 HTTP/1.1" 200 - 0 24576 21 19 '
    '"73.15.200.7, 10.0.1.2" "Mozilla/5.0 (X11)" "7c5b7a5e-2c4e" "go.dev" "10.4.1.20:8080"'
)
ISTIO = (
    START + ' "GET /godoc/pkg/fmt HTTP/1.1" 200 - via_upstream - "-" 0 1024 12 10 '
    '"73.15.200.7" "curl/8.5.0" "1a2b" "godoc.default.svc.cluster.local:8080" "10.4.1.20:8080" '
    "outbound|8080|canary|godoc.default.svc.cluster.local 10.4.0.3:41000 10.4.1.20:8080 "
    "10.4.0.1:33000 - default"
)


def unknown(line: str) -> str:
    with pytest.raises(RejectedInput) as info:
        parse_envoy_text(line)
    assert info.value.reason is Reason.UNKNOWN_FORMAT
    return info.value.detail


def test_every_fixture_line_parses() -> None:
    for line in fixture_lines("envoy-text.log"):
        assert parse_message(line).dataset == "envoy.access"


def test_envoy_default_format() -> None:
    rec = parse_envoy_text(ENVOY)
    assert rec.dataset == "envoy.access"
    assert rec.timestamp_ns == T0_NS + 123_000_000  # %START_TIME% is the start already
    assert (rec.method, rec.uri, rec.protocol) == ("GET", "/godoc/pkg/net/http?v=1.22", "HTTP/1.1")
    assert (rec.status, rec.bytes_received, rec.bytes_sent) == (200, 0, 24576)
    assert (rec.duration_ns, rec.upstream_duration_ns) == (21_000_000, 19_000_000)
    assert rec.forwarded_for == "73.15.200.7, 10.0.1.2"
    assert rec.user_agent == "Mozilla/5.0 (X11)"
    assert rec.request_id == "7c5b7a5e-2c4e"
    assert rec.authority == "go.dev"
    assert rec.upstream_host == "10.4.1.20:8080"
    assert rec.peer_addr is None  # not in the default format
    document = doc(ENVOY)
    assert document["client"]["ip"] == "73.15.200.7"
    assert document["gray"]["version"] == "1.22"


def test_istio_text_format_reads_the_subset_and_the_peer() -> None:
    rec = parse_envoy_text(ISTIO)
    assert rec.upstream_cluster == "outbound|8080|canary|godoc.default.svc.cluster.local"
    assert rec.peer_addr == "10.4.0.1"
    document = doc(ISTIO)
    assert document["gray"]["stage"] == "canary"
    assert document["source"]["ip"] == "10.4.0.1"
    assert document["client"]["ip"] == "73.15.200.7"
    assert document["service"]["name"] == "godoc"


def test_istio_version_from_the_subset() -> None:
    line = ISTIO.replace("|canary|", "|v2|")
    assert doc(line)["gray"] == {"stage": "stable", "version": "v2", "path_group": "/godoc/pkg"}


def test_istio_pre_1_8_middle_fields() -> None:
    # 1.5-1.7: %RESPONSE_FLAGS% "%DYNAMIC_METADATA(istio.mixer:status)%"
    # "%UPSTREAM_TRANSPORT_FAILURE_REASON%"
    line = ISTIO.replace('via_upstream - "-"', '"-" "delayed connect error: 111"')
    rec = parse_envoy_text(line)
    assert (rec.status, rec.bytes_sent, rec.user_agent) == (200, 1024, "curl/8.5.0")


def test_unset_values_are_dashes() -> None:
    line = START + ' "- - -" 0 - 0 0 0 - "-" "-" "-" "-" "-"'
    rec = parse_envoy_text(line)
    assert (rec.method, rec.uri, rec.protocol, rec.status) == (None, None, None, None)
    assert (rec.upstream_duration_ns, rec.forwarded_for, rec.user_agent) == (None, None, None)
    assert (rec.request_id, rec.authority, rec.upstream_host) == (None, None, None)


def test_response_flags_and_ipv6_peer() -> None:
    line = ISTIO.replace("200 - via_upstream", "503 UF,URX upstream_reset").replace(
        "10.4.0.1:33000", "[2001:db8::5]:51000"
    )
    rec = parse_envoy_text(line)
    assert (rec.status, rec.peer_addr) == (503, "2001:db8::5")


def test_user_agent_with_raw_quotes_and_backslashes() -> None:
    # Envoy does not escape values: the user agent ends where the last four fields fit.
    line = ENVOY.replace('"Mozilla/5.0 (X11)"', '"ua "quoted" \\back" "slash"')
    rec = parse_envoy_text(line)
    assert rec.user_agent == 'ua "quoted" \\back" "slash'
    assert (rec.request_id, rec.authority) == ("7c5b7a5e-2c4e", "go.dev")


def test_non_ascii_path_and_authority() -> None:
    line = ENVOY.replace("/godoc/pkg/net/http?v=1.22", "/café/中")
    line = line.replace('"go.dev"', '"bücher.example"')
    rec = parse_envoy_text(line)
    assert (rec.uri, rec.authority) == ("/café/中", "bücher.example")
    assert doc(line)["url"]["path"] == "/café/中"


@pytest.mark.parametrize(
    ("extra", "header"),
    [
        ('"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"', "traceparent"),
        ('"4bf92f3577b34da6a3ce929d0e0e4736"', "x-b3-traceid"),
        ('"a3ce929d0e0e4736"', "x-b3-traceid"),
    ],
)
def test_trace_headers_where_present(extra: str, header: str) -> None:
    rec = parse_envoy_text(ISTIO + " " + extra)
    assert header in rec.headers
    assert doc(ISTIO + " " + extra)["trace"]["id"].endswith("a3ce929d0e0e4736")


def test_no_trace_header_is_guessed_from_other_fields() -> None:
    assert parse_envoy_text(ISTIO + ' "not-a-trace"').headers == {}


@pytest.mark.parametrize(
    "line",
    [
        START + " hello",
        START + ' "GET / HTTP/1.1" 200',
        START + ' "GET / HTTP/1.1" 200 - 0 1 2',  # no byte counts + headers
        START + ' "GET / HTTP/1.1" 200 - 0 1 2 3 "-" "-" "-"',  # three of five headers
        START + ' "GET / HTTP/1.1" 200 - 0 1 2 3 "-" "-" "-" "-" "-"x',
        START + ' "GET / HTTP/1.1" abc - 0 1 2 3 "-" "-" "-" "-" "-"',
    ],
)
def test_other_lines_are_unknown(line: str) -> None:
    unknown(line)
    assert parse_message_reason(line) is Reason.UNKNOWN_FORMAT


def parse_message_reason(line: str) -> Reason:
    with pytest.raises(RejectedInput) as info:
        parse_message(line.encode())
    return info.value.reason


def test_looks_like_envoy_text() -> None:
    assert looks_like_envoy_text(ENVOY)
    assert not looks_like_envoy_text('10.0.0.9 - - [20/Nov/2026:12:00:03 +0000] "GET /"')
    assert not looks_like_envoy_text('["a", "b"]')


def test_out_of_range_numbers_are_dead_letters_or_unset() -> None:
    big = "9" * 30
    with pytest.raises(RejectedInput) as info:
        parse_envoy_text(ENVOY.replace("24576", big))
    assert info.value.reason is Reason.INVALID_FIELD
    assert parse_envoy_text(ENVOY.replace(" 21 19 ", f" {big} 19 ")).duration_ns is None

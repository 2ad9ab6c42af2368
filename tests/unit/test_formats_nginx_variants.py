"""nginx text variants: virtual host, address lists, `main`, ingress-nginx
`upstreaminfo`, request time before the referrer, request targets with spaces."""

from __future__ import annotations

import pytest

from pipeline.core.formats.nginx_text import parse_nginx_text, split_request
from pipeline.core.model import Reason
from pipeline.errors import RejectedInput
from tests.unit.conftest import T0_NS, dead, doc, fixture_lines

TIME = "[20/Nov/2026:12:00:03 +0000]"
T3 = T0_NS + 3_000_000_000
REQ = '"GET /godoc/pkg/fmt?v=1.22 HTTP/1.1"'
INGRESS = (
    f'10.0.0.9 - - {TIME} {REQ} 200 12312 "https://go.dev/" "Mozilla/5.0" '
    "462 0.050 [default-godoc-8080] [] {upstream} 752178adb17130b291aefd8c386279e7"
)


def unknown(line: str) -> str:
    with pytest.raises(RejectedInput) as info:
        parse_nginx_text(line)
    assert info.value.reason is Reason.UNKNOWN_FORMAT
    return info.value.detail


def test_every_variant_fixture_line_parses() -> None:
    for line in fixture_lines("nginx-variants.log"):
        assert parse_nginx_text(line.decode()).dataset == "nginx.access"


# --- virtual host ------------------------------------------------------------


@pytest.mark.parametrize(
    ("vhost", "remote"),
    [
        ("shop.example.org", "203.0.113.7"),
        ("shop.example.org:8443", "203.0.113.7"),
        ("10.0.0.1", "203.0.113.7"),
        ("shop.example.org", "2001:db8::7"),
    ],
)
def test_leading_virtual_host(vhost: str, remote: str) -> None:
    rec = parse_nginx_text(f'{vhost} {remote} - - {TIME} {REQ} 206 4096 "-" "curl"')
    assert rec.authority == vhost
    assert rec.peer_addr == remote
    assert rec.forwarded_for is None
    assert (rec.method, rec.uri, rec.status, rec.user_agent) == (
        "GET",
        "/godoc/pkg/fmt?v=1.22",
        206,
        "curl",
    )


@pytest.mark.parametrize(
    "head",
    [
        "shop.example.org -",  # a vhost and no address
        "shop.example.org unix:",  # no address
        "a/b 203.0.113.7",  # no host name
        "one two 203.0.113.7",  # three fields
        "10.0.0.1, 203.0.113.7,",  # the list does not end
        "[2001:db8::1] 203.0.113.7",  # $host of an IPv6 literal: `[` opens the time
    ],
)
def test_heads_we_do_not_know_are_unknown(head: str) -> None:
    unknown(f'{head} - - {TIME} {REQ} 200 1 "-" "curl"')


# --- address list as the first field ------------------------------------------


def test_address_list_is_the_forwarding_chain() -> None:
    line = f'73.15.200.7, 10.0.1.2, 127.0.0.1 - - {TIME} {REQ} 200 571 "-" "Mozilla/5.0"'
    rec = parse_nginx_text(line)
    assert rec.peer_addr == "127.0.0.1"
    assert rec.forwarded_for == "73.15.200.7, 10.0.1.2"
    document = doc(line)
    assert document["source"]["ip"] == "127.0.0.1"
    assert document["client"]["ip"] == "73.15.200.7"


def test_address_list_client_is_not_believed_past_an_untrusted_hop() -> None:
    # 198.51.100.9 is untrusted: the left entry is whatever a client wrote.
    line = f'1.1.1.1, 198.51.100.9, 10.0.0.2 - - {TIME} {REQ} 200 5 "-" "-"'
    assert doc(line)["client"]["ip"] == "198.51.100.9"


def test_quoted_address_list_and_ipv6() -> None:
    rec = parse_nginx_text(f'"2001:db8::1, 10.0.0.2" - - {TIME} {REQ} 200 5 "-" "-"')
    assert (rec.peer_addr, rec.forwarded_for) == ("10.0.0.2", "2001:db8::1")


def test_address_list_then_remote_addr() -> None:
    rec = parse_nginx_text(f'73.15.200.7, 10.0.1.2 10.0.0.9 - - {TIME} {REQ} 200 5 "-" "-"')
    assert (rec.peer_addr, rec.forwarded_for) == ("10.0.0.9", "73.15.200.7, 10.0.1.2")


def test_all_trusted_chain_gives_the_left_most() -> None:
    line = f'10.0.0.2, 10.0.0.1, 127.0.0.1 - - {TIME} {REQ} 200 5 "-" "-"'
    assert doc(line)["client"]["ip"] == "10.0.0.2"


# --- main: combined + "$http_x_forwarded_for" ----------------------------------


@pytest.mark.parametrize(
    ("tail", "forwarded", "client"),
    [
        (' "73.15.200.7, 10.10.1.1"', "73.15.200.7, 10.10.1.1", "73.15.200.7"),
        (' "73.15.200.7"', "73.15.200.7", "73.15.200.7"),
        (' "-"', None, "10.0.0.9"),
        (' ""', None, "10.0.0.9"),
        (" -", None, "10.0.0.9"),  # unquoted
        (' "2001:db8::5, 10.0.0.3"', "2001:db8::5, 10.0.0.3", "2001:db8::5"),
        (' "garbage, 10.0.0.3"', "garbage, 10.0.0.3", "10.0.0.3"),
        (' "2.75"', "2.75", "10.0.0.9"),  # not an address ($gzip_ratio): the peer
    ],
)
def test_main_forwarded_for_is_used_for_the_client(
    tail: str, forwarded: str | None, client: str
) -> None:
    line = f'10.0.0.9 - - {TIME} {REQ} 200 615 "-" "curl/8.11.1"{tail}'
    assert parse_nginx_text(line).forwarded_for == forwarded
    assert doc(line)["client"]["ip"] == client


# --- ingress-nginx upstreaminfo -----------------------------------------------


def test_upstreaminfo() -> None:
    rec = parse_nginx_text(INGRESS.format(upstream="10.4.1.20:8080 19437 0.049 200"))
    assert rec.duration_ns == 50_000_000
    assert rec.timestamp_ns == T3 - 50_000_000  # the request start
    assert rec.bytes_received == 462
    assert rec.upstream_cluster == "default-godoc-8080"
    assert rec.upstream_host == "10.4.1.20:8080"
    assert rec.upstream_duration_ns == 49_000_000
    assert rec.upstream_status == 200
    assert rec.request_id == "752178adb17130b291aefd8c386279e7"
    assert rec.user_agent == "Mozilla/5.0"
    assert rec.headers == {"referer": "https://go.dev/"}


def test_upstreaminfo_document() -> None:
    document = doc(INGRESS.format(upstream="10.4.1.20:8080 19437 0.049 200"))
    assert document["@timestamp"] == "2026-11-20T12:00:02.950Z"
    assert document["event"]["duration"] == 50_000_000
    assert document["upstream"] == {
        "cluster": "default-godoc-8080",
        "address": "10.4.1.20:8080",
        "status_code": 200,
        "duration": 49_000_000,
    }
    assert document["http"]["request"]["id"] == "752178adb17130b291aefd8c386279e7"


@pytest.mark.parametrize(
    ("upstream", "host", "upstream_ns", "status"),
    [
        ("- - - -", None, None, None),  # no upstream (served by nginx itself)
        (
            "10.4.1.21:80, 10.4.1.22:80 0, 150 1.000, 1.003 502, 502",
            "10.4.1.22:80",
            2_003_000_000,
            502,
        ),
        (
            "10.4.1.20:8080 : 10.4.1.23:8080 4 : 9 0.004 : 0.006 404 : 200",
            "10.4.1.23:8080",
            10_000_000,
            200,
        ),
        ("10.4.1.21:80, 10.4.1.22:80 -, 150 -, 0.010 -, 200", "10.4.1.22:80", 10_000_000, 200),
        ("[2001:db8::1]:80 10 0.001 200", "[2001:db8::1]:80", 1_000_000, 200),
        ("unix:/run/app.sock 10 0.001 200", "unix:/run/app.sock", 1_000_000, 200),
    ],
)
def test_upstreaminfo_lists_and_dashes(
    upstream: str, host: str | None, upstream_ns: int | None, status: int | None
) -> None:
    rec = parse_nginx_text(INGRESS.format(upstream=upstream))
    assert (rec.upstream_host, rec.upstream_duration_ns, rec.upstream_status) == (
        host,
        upstream_ns,
        status,
    )
    assert rec.duration_ns == 50_000_000


def test_upstreaminfo_unset_request_time_and_empty_upstream_name() -> None:
    line = INGRESS.format(upstream="- - - -").replace("0.050 [default-godoc-8080]", "- []")
    rec = parse_nginx_text(line)
    assert (rec.duration_ns, rec.upstream_cluster) == (None, None)
    assert rec.timestamp_ns == T3


@pytest.mark.parametrize(
    "upstream",
    ["10.4.1.20:8080 19437 0.049", "10.4.1.20:8080 19437 0.049 200 extra", "a, 1 2 3"],
)
def test_upstreaminfo_with_the_wrong_number_of_fields_is_unknown(upstream: str) -> None:
    assert "upstreaminfo" in unknown(INGRESS.format(upstream=upstream))


# --- request time between bytes and referrer ------------------------------------


def test_request_time_between_bytes_and_referrer() -> None:
    line = f'203.0.113.9 - - {TIME} {REQ} 206 33973115 0.202 "-" "Mozilla/5.0 (X11)"'
    rec = parse_nginx_text(line)
    assert rec.duration_ns == 202_000_000
    assert rec.timestamp_ns == T3 - 202_000_000
    assert rec.user_agent == "Mozilla/5.0 (X11)"
    assert (rec.status, rec.bytes_sent) == (206, 33973115)


@pytest.mark.parametrize(
    "after_bytes",
    [
        ' 0.202 "-"',  # a referrer without a user agent
        " abc",
        ' "-"',  # one quoted field only
        " 0.202 0.101",
    ],
)
def test_unknown_text_after_the_byte_count_is_not_half_parsed(after_bytes: str) -> None:
    detail = unknown(f"203.0.113.9 - - {TIME} {REQ} 206 3397{after_bytes}")
    assert "byte count" in detail


# --- request targets with spaces --------------------------------------------------


@pytest.mark.parametrize(
    ("request_line", "parts"),
    [
        ("GET /a[ ]b HTTP/1.1", ("GET", "/a[ ]b", "HTTP/1.1")),
        ("GET /a b c HTTP/2.0", ("GET", "/a b c", "HTTP/2.0")),
        ("GET /", ("GET", "/", None)),
        ("GET /a b", ("GET", "/a b", None)),
        ("GET  HTTP/1.1", ("GET", None, "HTTP/1.1")),
        ("garbage", (None, None, None)),
        ("", (None, None, None)),
        (" / HTTP/1.1", (None, None, None)),
    ],
)
def test_split_request(request_line: str, parts: tuple[str | None, ...]) -> None:
    assert split_request(request_line) == parts


def test_target_with_spaces_in_the_document() -> None:
    document = doc(f'10.0.0.9 - - {TIME} "GET /a[ ]b HTTP/1.1" 200 7 "-" "Opera/12.0"')
    assert document["url"]["original"] == "/a[ ]b"
    assert document["http"]["version"] == "1.1"


# --- escapes, non-ASCII ----------------------------------------------------------------


def test_escaped_quotes_backslashes_and_non_ascii_everywhere() -> None:
    line = (
        f'shop.example.org 10.0.0.9 - - {TIME} "GET /caf\\xC3\\xA9 HTTP/1.1" 200 7 '
        '"https://go.dev/\\x22q\\x22" "ua \\x5C\\x22x\\x22 \\xE4\\xB8\\xAD" "73.15.200.7"'
    )
    rec = parse_nginx_text(line)
    assert rec.uri == "/café"
    assert rec.headers == {"referer": 'https://go.dev/"q"'}
    assert rec.user_agent == 'ua \\"x" 中'
    assert rec.forwarded_for == "73.15.200.7"
    assert rec.authority == "shop.example.org"


def test_non_ascii_virtual_host_is_unknown_not_misread() -> None:
    unknown(f'bücher.example 10.0.0.9 - - {TIME} {REQ} 200 7 "-" "-"')


def test_error_log_lines_are_dead_letters() -> None:
    line = (
        "2021/04/01 13:02:31 [error] 31#31: *1 open() failed, client: 172.17.0.1, "
        'server: localhost, request: "POST /not-found HTTP/1.1", host: "localhost:8081"'
    )
    assert dead(line).reason is Reason.UNKNOWN_FORMAT

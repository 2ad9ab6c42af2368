"""nginx JSON access logs (escape=json): variable-named keys, unset variables as ""."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.core.formats.nginx_json import nginx_shape, parse_nginx_json
from pipeline.core.model import AccessRecord, Reason
from pipeline.errors import RejectedInput
from tests.unit.conftest import T0_NS, fixture_lines, sample_lines

NGINX_SAMPLE = orjson.loads(sample_lines("nginx.json.log")[0])


def parse(obj: dict[str, Any]) -> AccessRecord:
    return parse_nginx_json(obj)


def test_nginx_json_sample() -> None:
    rec = parse(NGINX_SAMPLE)
    assert rec.dataset == "nginx.access"
    # nginx logs at the end of the request: the record starts request_time earlier.
    assert rec.timestamp_ns == T0_NS + 2_000_000_000 - 4_000_000
    assert rec.method == "GET"
    assert rec.uri == "/godoc/pkg/sort?v=1.21"
    assert rec.status == 200
    assert rec.bytes_sent == 2048
    assert rec.duration_ns == 4_000_000
    assert rec.upstream_duration_ns == 3_000_000
    assert rec.peer_addr == "10.0.0.9"
    assert rec.forwarded_for == "192.0.2.44, 10.0.0.2"
    assert rec.user_agent == "curl/8.5.0"
    assert rec.request_id == "0123456789abcdef0123456789abcdef"
    assert rec.headers == {
        "user-agent": "curl/8.5.0",
        "x-forwarded-for": "192.0.2.44, 10.0.0.2",
        "x-abtest-id": "feature01",
    }


def test_unset_variables_are_empty_strings() -> None:
    obj = dict.fromkeys(NGINX_SAMPLE, "")
    rec = parse(obj)
    assert rec.headers == {}
    for name in ("timestamp_ns", "method", "uri", "status", "bytes_sent", "duration_ns",
                 "upstream_duration_ns", "peer_addr", "forwarded_for", "user_agent",
                 "request_id"):  # fmt: skip
        assert getattr(rec, name) is None, name


def test_generic_http_cookie_arg_keys() -> None:
    rec = parse(
        {
            "request_uri": "/x",
            "http_x_abtest_id": "feature01",
            "http_x_go_stage": "canary",
            "http_some_custom_header": "v",
            "http_empty": "",
            "cookie_go_canary": "1",
            "cookie_session": "",
            "arg_v": "1.22",
            "arg_abt": "",
        }
    )
    assert rec.headers == {
        "x-abtest-id": "feature01",
        "x-go-stage": "canary",
        "some-custom-header": "v",
    }
    assert rec.cookies == {"go_canary": "1"}
    assert rec.args == {"v": "1.22"}


def test_cookie_header_fills_missing_cookies_only() -> None:
    rec = parse({"request_uri": "/", "cookie_go_canary": "0", "http_cookie": "go_canary=1; a=2"})
    assert rec.cookies == {"go_canary": "0", "a": "2"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.010, 0.020", 30_000_000),
        ("0.010 : 0.020", 30_000_000),
        ("-", None),
        ("", None),
        ("0.003", 3_000_000),
    ],
)
def test_upstream_response_time_lists(value: str, expected: int | None) -> None:
    assert (
        parse({"request_uri": "/", "upstream_response_time": value}).upstream_duration_ns
        == expected
    )


def test_request_line_when_request_uri_is_missing() -> None:
    rec = parse({"request": "POST /play/share?x=1 HTTP/2.0", "status": "201"})
    assert (rec.method, rec.uri, rec.protocol) == ("POST", "/play/share?x=1", "HTTP/2.0")


def test_uri_and_args_when_request_uri_is_missing() -> None:
    assert parse({"uri": "/search", "args": "q=go", "status": "200"}).uri == "/search?q=go"
    assert parse({"uri": "/search", "args": "", "status": "200"}).uri == "/search"


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"msec": "1795176002.004", "time_iso8601": "2026-11-20T12:00:09+00:00"}, 2_004_000_000),
        ({"time_iso8601": "2026-11-20T12:00:02+00:00"}, 2_000_000_000),
        ({"time_local": "20/Nov/2026:13:00:02 +0100"}, 2_000_000_000),
        ({"@timestamp": "2026-11-20T12:00:02.000Z"}, 2_000_000_000),
        ({"msec": "-", "time_iso8601": "2026-11-20T12:00:02+00:00"}, 2_000_000_000),
    ],
)
def test_timestamp_sources_in_precedence(obj: dict[str, str], expected: int) -> None:
    assert parse({"request_uri": "/", **obj}).timestamp_ns == T0_NS + expected


def test_start_before_1970_is_unreadable() -> None:
    rec = parse({"request_uri": "/", "msec": "1.000", "request_time": "5.000"})
    assert rec.timestamp_ns is None
    assert rec.duration_ns == 5_000_000_000


def test_ipv6_and_bracketed_remote_addr() -> None:
    assert parse({"remote_addr": "2001:db8::1", "status": "200"}).peer_addr == "2001:db8::1"
    assert parse({"remote_addr": "[2001:db8::1]:80", "status": "200"}).peer_addr == "2001:db8::1"
    assert parse({"remote_addr": "unix:", "status": "200"}).peer_addr is None


def test_json_escaped_quotes_and_backslashes_in_user_agent() -> None:
    line = rb'{"request_uri": "/", "http_user_agent": "Mozilla/5.0 \"quoted\" \\ back"}'
    assert parse(orjson.loads(line)).user_agent == 'Mozilla/5.0 "quoted" \\ back'


def test_host_and_request_id_fallbacks() -> None:
    rec = parse({"request_uri": "/", "server_name": "go.dev", "http_x_request_id": "rid"})
    assert rec.authority == "go.dev"
    assert rec.request_id == "rid"
    assert parse({"request_uri": "/", "http_host": "h:8080", "host": "x"}).authority == "h:8080"


def test_trace_id_keys() -> None:
    assert parse({"request_uri": "/", "opentelemetry_trace_id": "ab" * 16}).trace_id == "ab" * 16


def test_garbage_status_is_a_dead_letter() -> None:
    with pytest.raises(RejectedInput) as info:
        parse({"request_uri": "/", "status": "two hundred"})
    assert info.value.reason is Reason.INVALID_FIELD


def test_shape_is_worked_out_from_the_keys() -> None:
    shape = nginx_shape(["status", "http_x_a_b", "cookie_c", "arg_v", "http_user_agent"])
    # (position among the keys, name)
    assert shape.headers == ((1, "x-a-b"), (4, "user-agent"))
    assert shape.cookies == ((2, "c"),)
    assert shape.args == ((3, "v"),)


def test_shape_and_no_shape_agree() -> None:
    for line in fixture_lines("nginx-json.log") + sample_lines("nginx.json.log"):
        obj = orjson.loads(line)
        assert parse_nginx_json(obj) == parse_nginx_json(obj, nginx_shape(obj))

"""Envoy/Istio JSON access logs: json_format (strings, "-") and typed_json_format."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.core.formats.envoy import envoy_shape, parse_cookie_header, parse_envoy
from pipeline.core.model import Reason
from pipeline.errors import RejectedInput
from tests.unit.conftest import T0_NS, fixture_lines, sample_lines

ISTIO_SAMPLE = orjson.loads(sample_lines("istio-default.json.log")[0])


def parse(obj: dict[str, Any]) -> Any:
    return parse_envoy(obj)


def test_istio_default_sample() -> None:
    rec = parse(ISTIO_SAMPLE)
    assert rec.dataset == "envoy.access"
    assert rec.timestamp_ns == T0_NS + 1_000_000  # start_time, .001
    assert rec.method == "GET"
    assert rec.uri == "/godoc/pkg/fmt?v=1.20"
    assert rec.protocol == "HTTP/1.1"
    assert rec.status == 200
    assert rec.bytes_sent == 5120
    assert rec.bytes_received == 0
    assert rec.duration_ns == 18_000_000
    assert rec.upstream_duration_ns == 16_000_000
    assert rec.peer_addr == "10.4.0.1"  # port cut off
    assert rec.forwarded_for == "192.0.2.10"
    assert rec.user_agent == "Mozilla/5.0"
    assert rec.request_id == "5b1f1f3e-8c1e-4f7a-9a55-1c2d3e4f5a6b"
    assert rec.authority == "go.dev"
    assert rec.upstream_cluster == "outbound|8080|v1|godoc.default.svc.cluster.local"
    assert rec.upstream_host == "10.4.0.12:8080"
    assert rec.trace_id is None
    assert rec.headers == {}  # x_forwarded_for is a field, not a header


def test_dash_means_missing_in_json_format() -> None:
    obj = dict.fromkeys(ISTIO_SAMPLE, "-")
    rec = parse(obj)
    for name in (
        "timestamp_ns",
        "method",
        "uri",
        "protocol",
        "status",
        "bytes_sent",
        "bytes_received",
        "duration_ns",
        "upstream_duration_ns",
        "peer_addr",
        "forwarded_for",
        "user_agent",
        "request_id",
        "authority",
        "upstream_cluster",
        "upstream_host",
    ):
        assert getattr(rec, name) is None, name


def test_typed_json_format_numbers_and_null() -> None:
    rec = parse(
        {
            "start_time": "2026-11-20T12:00:00.000Z",
            "response_code": 503,
            "bytes_sent": 91,
            "bytes_received": None,
            "duration": 412,
            "upstream_service_time": None,
            "user_agent": None,
            "downstream_remote_address": "[2001:db8::5]:40000",
        }
    )
    assert rec.status == 503
    assert rec.bytes_sent == 91
    assert rec.bytes_received is None
    assert rec.duration_ns == 412_000_000
    assert rec.upstream_duration_ns is None
    assert rec.user_agent is None
    assert rec.peer_addr == "2001:db8::5"


def test_fractional_millis_from_typed_format() -> None:
    assert parse({"response_code": 200, "duration": 1234.5}).duration_ns == 1_234_500_000


def test_response_code_zero_means_no_response() -> None:
    assert parse({"response_code": "0", "start_time": "-"}).status is None
    assert parse({"response_code": 0, "start_time": "-"}).status is None


def test_garbage_status_is_a_dead_letter() -> None:
    with pytest.raises(RejectedInput) as info:
        parse({"response_code": "OK"})
    assert info.value.reason is Reason.INVALID_FIELD


def test_seed_format_custom_keys() -> None:
    rec = parse(
        {
            "time": "2026-11-20T12:00:01.000Z",
            "trace_id": "5759e988bd862e3fe1be46a994272793",
            "gray_id": "exp00001",
            "cluster": "outbound|80|canary|godoc.default.svc.cluster.local",
        }
    )
    assert rec.timestamp_ns == T0_NS + 1_000_000_000
    assert rec.trace_id == "5759e988bd862e3fe1be46a994272793"
    assert rec.headers == {"x-gray-id": "exp00001"}
    assert rec.upstream_cluster == "outbound|80|canary|godoc.default.svc.cluster.local"


def test_x_keys_are_request_headers() -> None:
    rec = parse(
        {
            "response_code": "200",
            "x_abtest_id": "feature01",
            "x_gray_id": "exp00001",
            "x_b3_traceid": "a3ce929d0e0e4736",
            "x_b3_spanid": "-",
            "x_go_stage": "canary",
            "x_request_id": "rid-1",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "b3": "a3ce929d0e0e4736-00f067aa0ba902b7-1",
        }
    )
    assert rec.headers == {
        "x-abtest-id": "feature01",
        "x-gray-id": "exp00001",
        "x-b3-traceid": "a3ce929d0e0e4736",
        "x-go-stage": "canary",
        "x-request-id": "rid-1",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "b3": "a3ce929d0e0e4736-00f067aa0ba902b7-1",
    }
    assert rec.request_id == "rid-1"  # x_request_id when request_id is absent


@pytest.mark.parametrize(
    "obj",
    [
        {"x_gray_id": "fromheader", "gray_id": "fromalias"},
        {"gray_id": "fromalias", "x_gray_id": "fromheader"},
    ],
)
def test_x_gray_id_wins_over_the_gray_id_alias_in_any_order(obj: dict[str, str]) -> None:
    assert parse(obj).headers["x-gray-id"] == "fromheader"


def test_gray_id_alias_used_when_x_gray_id_is_missing() -> None:
    assert parse({"x_gray_id": "-", "gray_id": "fromalias"}).headers["x-gray-id"] == "fromalias"


def test_dash_in_first_key_does_not_hide_the_second() -> None:
    rec = parse(
        {
            "start_time": "-",
            "time": "2026-11-20T12:00:00.000Z",
            "request_id": "-",
            "x_request_id": "rid",
            "upstream_cluster": "-",
            "cluster": "outbound|80|v3|svc",
        }
    )
    assert rec.timestamp_ns == T0_NS
    assert rec.request_id == "rid"
    assert rec.upstream_cluster == "outbound|80|v3|svc"


def test_cookie_key_is_parsed() -> None:
    rec = parse({"response_code": "200", "cookie": 'go_canary=1; a="quoted"; go_canary=2'})
    assert rec.cookies == {"go_canary": "1", "a": "quoted"}


def test_parse_cookie_header() -> None:
    assert parse_cookie_header("a=1; b=2;; c; =x; d==3") == {"a": "1", "b": "2", "d": "=3"}


def test_unparsable_peer_is_dropped() -> None:
    assert parse({"downstream_remote_address": "unix://@envoy"}).peer_addr is None


def test_non_string_values_never_crash() -> None:
    rec = parse(
        {
            "method": ["GET"],
            "path": {"a": 1},
            "protocol": 2,
            "user_agent": True,
            "x_forwarded_for": 1.5,
            "x_abtest_id": {"nested": "x"},
            "downstream_remote_address": 7,
        }
    )
    assert rec.method is None
    assert rec.uri is None
    assert rec.protocol == "2"
    assert rec.user_agent == "true"
    assert rec.forwarded_for == "1.5"
    assert "x-abtest-id" not in rec.headers
    assert rec.peer_addr is None


def test_shape_is_worked_out_from_the_keys() -> None:
    shape = envoy_shape(["start_time", "x_forwarded_for", "x_abtest_id", "gray_id", "b3"])
    assert shape.headers == ((2, "x-abtest-id"),)  # (position among the keys, header)
    assert shape.aliases == ((3, "x-gray-id"), (4, "b3"))


def test_shape_and_no_shape_agree() -> None:
    for line in fixture_lines("envoy-json-format.log") + fixture_lines("envoy-typed.log"):
        obj = orjson.loads(line)
        assert parse_envoy(obj) == parse_envoy(obj, envoy_shape(obj))

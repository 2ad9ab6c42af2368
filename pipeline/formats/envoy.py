"""Envoy/Istio JSON access logs (``json_format`` and ``typed_json_format``)."""

from __future__ import annotations

from typing import Any

from pipeline.formats.values import (
    integer,
    millis_to_ns,
    strip_port,
    text,
    timestamp_to_ns,
)
from pipeline.model import AccessRecord

# Keys that say "this object is an Envoy access log" (Istio defaults + common custom keys).
SIGNATURE_KEYS = frozenset(
    (
        "start_time",
        "response_code",
        "response_flags",
        "response_code_details",
        "upstream_cluster",
        "upstream_host",
        "upstream_service_time",
        "downstream_remote_address",
        "downstream_local_address",
        "x_forwarded_for",
        "authority",
        "bytes_received",
        "route_name",
        "cluster",
        "gray_id",
        "x_gray_id",
        "x_abtest_id",
        "trace_id",
        "x_b3_traceid",
        "traceparent",
    )
)

# Custom keys logged from request headers under a name without the ``x_`` prefix.
_HEADER_ALIASES = {"gray_id": "x-gray-id", "traceparent": "traceparent", "b3": "b3"}
# Keys consumed into AccessRecord fields; every other ``x_*`` key is a header.
_FIELD_KEYS = frozenset(("x_forwarded_for",))


def parse_envoy(obj: dict[str, Any]) -> AccessRecord:
    rec = AccessRecord(dataset="envoy.access")
    get = obj.get
    rec.timestamp_ns = timestamp_to_ns(get("start_time") or get("time") or get("timestamp"))
    rec.method = text(get("method"))
    rec.uri = text(get("path"))
    rec.protocol = text(get("protocol"))
    rec.status = integer(get("response_code"), "response_code") or None
    rec.bytes_sent = integer(get("bytes_sent"), "bytes_sent")
    rec.bytes_received = integer(get("bytes_received"), "bytes_received")
    rec.duration_ns = millis_to_ns(get("duration"))
    rec.upstream_duration_ns = millis_to_ns(get("upstream_service_time"))
    rec.peer_addr = strip_port(text(get("downstream_remote_address")))
    rec.forwarded_for = text(get("x_forwarded_for"))
    rec.user_agent = text(get("user_agent"))
    rec.request_id = text(get("request_id") or get("x_request_id"))
    rec.authority = text(get("authority"))
    rec.upstream_cluster = text(get("upstream_cluster") or get("cluster"))
    rec.upstream_host = text(get("upstream_host"))
    rec.trace_id = text(get("trace_id"))
    headers = rec.headers
    for key, value in obj.items():
        if key.startswith("x_") and key not in _FIELD_KEYS:
            header = text(value)
            if header is not None:
                headers[key.replace("_", "-")] = header
        elif key in _HEADER_ALIASES:
            header = text(value)
            if header is not None:
                headers.setdefault(_HEADER_ALIASES[key], header)
    cookie = text(get("cookie"))
    if cookie is not None:
        rec.cookies.update(parse_cookie_header(cookie))
    return rec


def parse_cookie_header(value: str) -> dict[str, str]:
    """``a=1; b=2`` -> {"a": "1", "b": "2"}; first occurrence wins, like browsers send."""
    cookies: dict[str, str] = {}
    for part in value.split(";"):
        name, sep, val = part.strip().partition("=")
        if sep and name and name not in cookies:
            cookies[name] = val.strip('"')
    return cookies

"""nginx JSON access logs (``escape=json``; unset variables are ``""``).

Keys named after nginx variables are understood generically:
``http_<name>`` is request header ``<name>``, ``cookie_<name>`` a cookie,
``arg_<name>`` a query arg.
"""

from __future__ import annotations

from typing import Any

from pipeline.formats.envoy import parse_cookie_header
from pipeline.formats.values import (
    clf_to_ns,
    integer,
    seconds_to_ns,
    strip_port,
    text,
    timestamp_to_ns,
    upstream_seconds_to_ns,
)
from pipeline.model import AccessRecord

SIGNATURE_KEYS = frozenset(
    (
        "remote_addr",
        "request_uri",
        "request_method",
        "status",
        "body_bytes_sent",
        "bytes_sent",
        "request_time",
        "upstream_response_time",
        "time_iso8601",
        "time_local",
        "msec",
        "request",
        "server_protocol",
        "http_user_agent",
        "http_x_forwarded_for",
    )
)


def parse_nginx_json(obj: dict[str, Any]) -> AccessRecord:
    rec = AccessRecord(dataset="nginx.access")
    get = obj.get
    method = text(get("request_method"))
    uri = text(get("request_uri"))
    protocol = text(get("server_protocol"))
    if method is None or uri is None:
        # `$request` is the request line: "GET /path?x=1 HTTP/1.1".
        request = text(get("request"))
        if request is not None:
            parts = request.split(" ")
            if len(parts) >= 2:
                method = method or parts[0]
                uri = uri or parts[1]
                if len(parts) >= 3:
                    protocol = protocol or parts[2]
    if uri is None:
        path = text(get("uri"))
        if path is not None:
            args = text(get("args"))
            uri = f"{path}?{args}" if args else path
    rec.method = method
    rec.uri = uri
    rec.protocol = protocol
    rec.status = integer(get("status"), "status") or None
    rec.bytes_sent = integer(get("body_bytes_sent"), "body_bytes_sent")
    rec.bytes_received = integer(get("request_length"), "request_length")
    rec.duration_ns = seconds_to_ns(get("request_time"))
    rec.upstream_duration_ns = upstream_seconds_to_ns(text(get("upstream_response_time")))
    rec.peer_addr = strip_port(text(get("remote_addr")))
    rec.request_id = text(get("request_id"))
    rec.upstream_host = text(get("upstream_addr"))
    # nginx logs when the response is done; the record wants the request start.
    end_ns = timestamp_to_ns(get("msec")) or timestamp_to_ns(get("time_iso8601"))
    if end_ns is None:
        end_ns = timestamp_to_ns(get("@timestamp") or get("timestamp") or get("time"))
    if end_ns is None:
        local = text(get("time_local"))
        if local is not None:
            end_ns = clf_to_ns(local)
    if end_ns is not None and rec.duration_ns is not None:
        end_ns -= rec.duration_ns
    rec.timestamp_ns = end_ns
    headers, cookies, args = rec.headers, rec.cookies, rec.args
    for key, value in obj.items():
        if key.startswith("http_"):
            header = text(value)
            if header is not None:
                headers[key[5:].replace("_", "-")] = header
        elif key.startswith("cookie_"):
            cookie = text(value)
            if cookie is not None:
                cookies[key[7:]] = cookie
        elif key.startswith("arg_"):
            arg = text(value)
            if arg is not None:
                args[key[4:]] = arg
    rec.forwarded_for = headers.get("x-forwarded-for")
    rec.user_agent = headers.get("user-agent")
    rec.authority = headers.get("host") or text(get("host")) or text(get("server_name"))
    rec.trace_id = text(get("trace_id")) or text(get("opentelemetry_trace_id"))
    if rec.request_id is None:
        rec.request_id = headers.get("x-request-id")
    if "cookie" in headers:
        for name, val in parse_cookie_header(headers["cookie"]).items():
            cookies.setdefault(name, val)
    return rec

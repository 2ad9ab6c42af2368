"""nginx JSON access logs (``escape=json``; unset variables are ``""``).

Keys named after nginx variables are understood generically:
``http_<name>`` is request header ``<name>``, ``cookie_<name>`` a cookie,
``arg_<name>`` a query arg.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from pipeline.core.formats.envoy import cookies_truncated, parse_cookie_header
from pipeline.core.formats.values import (
    clf_to_ns,
    integer,
    peer_ip,
    seconds_to_ns,
    start_from_end,
    text,
    timestamp_to_ns,
    upstream_seconds_to_ns,
)
from pipeline.core.model import AccessRecord

SIGNATURE_KEYS: Final = frozenset(
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


@dataclass(frozen=True, slots=True)
class NginxShape:
    """Which keys of one log format are headers, cookies and query args.

    Worked out once per key set (see :mod:`pipeline.core.formats.detect`), not once per line.
    """

    headers: tuple[tuple[str, str], ...] = ()  # (key, header name): ``http_x_y`` -> ``x-y``
    cookies: tuple[tuple[str, str], ...] = ()  # (key, cookie name)
    args: tuple[tuple[str, str], ...] = ()  # (key, arg name)


def nginx_shape(keys: Iterable[str]) -> NginxShape:
    headers = []
    cookies = []
    args = []
    for key in keys:
        if key.startswith("http_"):
            headers.append((key, key[5:].replace("_", "-")))
        elif key.startswith("cookie_"):
            cookies.append((key, key[7:]))
        elif key.startswith("arg_"):
            args.append((key, key[4:]))
    return NginxShape(tuple(headers), tuple(cookies), tuple(args))


def parse_nginx_json(obj: dict[str, Any], shape: NginxShape | None = None) -> AccessRecord:
    if shape is None:
        shape = nginx_shape(obj)
    # text(obj.get(k)) per field, as in parse_envoy.
    method = text(obj.get("request_method"))
    uri = text(obj.get("request_uri"))
    protocol = text(obj.get("server_protocol"))
    if method is None or uri is None:
        # `$request` is the request line: "GET /path?x=1 HTTP/1.1".
        request = text(obj.get("request"))
        if request is not None:
            parts = request.split(" ")
            if len(parts) >= 2:
                method = method or parts[0]
                uri = uri or parts[1]
                if len(parts) >= 3:
                    protocol = protocol or parts[2]
    if uri is None:
        path = text(obj.get("uri"))
        if path is not None:
            query = text(obj.get("args"))
            uri = f"{path}?{query}" if query else path
    peer = text(obj.get("remote_addr"))
    duration_ns = seconds_to_ns(obj.get("request_time"))
    # nginx logs when the response is done; the record wants the request start.
    end_ns = timestamp_to_ns(obj.get("msec")) or timestamp_to_ns(obj.get("time_iso8601"))
    if end_ns is None:
        end_ns = timestamp_to_ns(obj.get("@timestamp") or obj.get("timestamp") or obj.get("time"))
    if end_ns is None:
        local = text(obj.get("time_local"))
        if local is not None:
            end_ns = clf_to_ns(local)
    headers: dict[str, str] = {}
    for key, name in shape.headers:
        header = text(obj[key])
        if header is not None:
            headers[name] = header
    rec = AccessRecord(
        dataset="nginx.access",
        timestamp_ns=start_from_end(end_ns, duration_ns),
        method=method,
        uri=uri,
        protocol=protocol,
        status=integer(obj.get("status"), "status") or None,
        bytes_sent=integer(obj.get("body_bytes_sent"), "body_bytes_sent"),
        bytes_received=integer(obj.get("request_length"), "request_length"),
        duration_ns=duration_ns,
        upstream_duration_ns=upstream_seconds_to_ns(obj.get("upstream_response_time")),
        peer_addr=peer_ip(peer) if peer is not None else None,
        forwarded_for=headers.get("x-forwarded-for"),
        user_agent=headers.get("user-agent"),
        request_id=(text(obj.get("request_id"))) or headers.get("x-request-id"),
        authority=headers.get("host") or text(obj.get("host")) or text(obj.get("server_name")),
        upstream_host=text(obj.get("upstream_addr")),
        trace_id=text(obj.get("trace_id")) or text(obj.get("opentelemetry_trace_id")),
        headers=headers,
    )
    if shape.cookies or "cookie" in headers:
        cookies: dict[str, str] = {}
        for key, name in shape.cookies:
            cookie = text(obj[key])
            if cookie is not None:
                cookies[name] = cookie
        if "cookie" in headers:
            for name, val in parse_cookie_header(headers["cookie"]).items():
                cookies.setdefault(name, val)
            if cookies_truncated(headers["cookie"]):
                rec.truncated = ("cookies",)
        if cookies:
            rec.cookies = cookies
    if shape.args:
        args: dict[str, str] = {}
        for key, name in shape.args:
            arg = text(obj[key])
            if arg is not None:
                args[name] = arg
        if args:
            rec.args = args
    return rec

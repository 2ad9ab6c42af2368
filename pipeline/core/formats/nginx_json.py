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
    field_positions,
    field_values,
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


# The fields parse_nginx_json reads, in the order of NginxShape.fields.
FIELD_KEYS: Final = (
    "request_method",
    "request_uri",
    "server_protocol",
    "request",
    "uri",
    "args",
    "remote_addr",
    "request_time",
    "msec",
    "time_iso8601",
    "@timestamp",
    "timestamp",
    "time",
    "time_local",
    "status",
    "body_bytes_sent",
    "request_length",
    "upstream_response_time",
    "request_id",
    "host",
    "server_name",
    "upstream_addr",
    "trace_id",
    "opentelemetry_trace_id",
)


@dataclass(frozen=True, slots=True)
class NginxShape:
    """Where one log format puts its fields; which keys are headers, cookies and query args.

    Worked out once per key tuple (see :mod:`pipeline.core.formats.detect`), not once
    per line (``fields`` as in :class:`pipeline.core.formats.envoy.EnvoyShape`).
    """

    # (position among the keys, header name): ``http_x_y`` -> ``x-y``
    headers: tuple[tuple[int, str], ...] = ()
    cookies: tuple[tuple[int, str], ...] = ()  # (position, cookie name)
    args: tuple[tuple[int, str], ...] = ()  # (position, arg name)
    # Per FIELD_KEYS, its position among the keys (-1: not logged); ``size``: the key count.
    fields: tuple[int, ...] = (-1,) * len(FIELD_KEYS)
    size: int = 0


def nginx_shape(keys: Iterable[str]) -> NginxShape:
    """The shape of objects with exactly these keys, in this order."""
    ordered = tuple(keys)
    headers = []
    cookies = []
    args = []
    for position, key in enumerate(ordered):
        if key.startswith("http_"):
            headers.append((position, key[5:].replace("_", "-")))
        elif key.startswith("cookie_"):
            cookies.append((position, key[7:]))
        elif key.startswith("arg_"):
            args.append((position, key[4:]))
    fields = field_positions(ordered, FIELD_KEYS)
    return NginxShape(tuple(headers), tuple(cookies), tuple(args), fields, len(ordered))


def parse_nginx_json(obj: dict[str, Any], shape: NginxShape | None = None) -> AccessRecord:
    """One nginx JSON access-log object; ``shape`` is ``nginx_shape`` of its keys."""
    if shape is None or shape.size != len(obj):
        shape = nginx_shape(obj)
    return parse_nginx_json_values(tuple(obj.values()), shape)


def parse_nginx_json_values(values: tuple[Any, ...], shape: NginxShape) -> AccessRecord:
    """An nginx JSON object as its values in key order, ``shape`` ``nginx_shape`` of its
    keys: what format detection hands over (``parse_envoy_values`` says from where)."""
    (
        request_method,
        request_uri,
        server_protocol,
        request_line,
        uri_path,
        uri_args,
        remote_addr,
        request_time,
        msec,
        time_iso8601,
        at_timestamp,
        timestamp,
        time,
        time_local,
        status,
        body_bytes_sent,
        request_length,
        upstream_response_time,
        request_id,
        host,
        server_name,
        upstream_addr,
        trace_id,
        otel_trace_id,
    ) = field_values(values, shape.fields)
    method = text(request_method)
    uri = text(request_uri)
    protocol = text(server_protocol)
    if method is None or uri is None:
        # `$request` is the request line: "GET /path?x=1 HTTP/1.1".
        request = text(request_line)
        if request is not None:
            parts = request.split(" ")
            if len(parts) >= 2:
                method = method or parts[0]
                uri = uri or parts[1]
                if len(parts) >= 3:
                    protocol = protocol or parts[2]
    if uri is None:
        path = text(uri_path)
        if path is not None:
            query = text(uri_args)
            uri = f"{path}?{query}" if query else path
    peer = text(remote_addr)
    duration_ns = seconds_to_ns(request_time)
    # nginx logs when the response is done; the record wants the request start.
    end_ns = timestamp_to_ns(msec) or timestamp_to_ns(time_iso8601)
    if end_ns is None:
        end_ns = timestamp_to_ns(at_timestamp or timestamp or time)
    if end_ns is None:
        local = text(time_local)
        if local is not None:
            end_ns = clf_to_ns(local)
    headers: dict[str, str] = {}
    for position, name in shape.headers:
        header = text(values[position])
        if header is not None:
            headers[name] = header
    rec = AccessRecord(
        dataset="nginx.access",
        timestamp_ns=start_from_end(end_ns, duration_ns),
        method=method,
        uri=uri,
        protocol=protocol,
        status=integer(status, "status") or None,
        bytes_sent=integer(body_bytes_sent, "body_bytes_sent"),
        bytes_received=integer(request_length, "request_length"),
        duration_ns=duration_ns,
        upstream_duration_ns=upstream_seconds_to_ns(upstream_response_time),
        peer_addr=peer_ip(peer) if peer is not None else None,
        forwarded_for=headers.get("x-forwarded-for"),
        user_agent=headers.get("user-agent"),
        request_id=text(request_id) or headers.get("x-request-id"),
        authority=headers.get("host") or text(host) or text(server_name),
        upstream_host=text(upstream_addr),
        trace_id=text(trace_id) or text(otel_trace_id),
        headers=headers,
    )
    if shape.cookies or "cookie" in headers:
        cookies: dict[str, str] = {}
        for position, name in shape.cookies:
            cookie = text(values[position])
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
        for position, name in shape.args:
            arg = text(values[position])
            if arg is not None:
                args[name] = arg
        if args:
            rec.args = args
    return rec

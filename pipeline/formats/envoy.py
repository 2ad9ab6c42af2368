"""Envoy/Istio JSON access logs (``json_format`` and ``typed_json_format``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pipeline.formats.values import (
    MISSING,
    integer,
    millis_to_ns,
    peer_ip,
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


@dataclass(frozen=True, slots=True)
class EnvoyShape:
    """Which keys of one log format carry request headers.

    A deployment logs thousands of lines with the same keys: working this out
    once per key set (see :mod:`pipeline.formats.detect`) instead of once per
    line saves a Python-level pass over every key.
    """

    headers: tuple[tuple[str, str], ...] = ()  # (key, header): ``x_*`` keys, later wins
    aliases: tuple[tuple[str, str], ...] = ()  # (key, header): only if not set by ``x_*``


def envoy_shape(keys: Iterable[str]) -> EnvoyShape:
    headers = []
    aliases = []
    for key in keys:
        if key.startswith("x_") and key not in _FIELD_KEYS:
            headers.append((key, key.replace("_", "-")))
        elif key in _HEADER_ALIASES:
            aliases.append((key, _HEADER_ALIASES[key]))
    return EnvoyShape(tuple(headers), tuple(aliases))


def parse_envoy(obj: dict[str, Any], shape: EnvoyShape | None = None) -> AccessRecord:
    if shape is None:
        shape = envoy_shape(obj)
    get = obj.get
    missing = MISSING
    # `(None if v in missing else v) if (v := get(k)).__class__ is str else text(v)`
    # is text(get(k)) with the string case (a value or a missing marker) inlined:
    # half the cost per field, and this runs for ~15 fields on every line.
    timestamp_ns = timestamp_to_ns(get("start_time"))
    if timestamp_ns is None:
        timestamp_ns = timestamp_to_ns(get("time")) or timestamp_to_ns(get("timestamp"))
    peer = v if (v := get("downstream_remote_address")).__class__ is str else text(v)
    request_id = (
        (None if v in missing else v) if (v := get("request_id")).__class__ is str else text(v)
    )
    cluster = v if (v := get("upstream_cluster")).__class__ is str else text(v)
    if cluster in missing:
        cluster = None
    headers: dict[str, str] = {}
    # Positional, in RECORD_FIELDS order (see pipeline.formats.values).
    rec = AccessRecord(
        "envoy.access",
        timestamp_ns,
        (None if v in missing else v) if (v := get("method")).__class__ is str else text(v),
        (None if v in missing else v) if (v := get("path")).__class__ is str else text(v),
        (None if v in missing else v) if (v := get("protocol")).__class__ is str else text(v),
        integer(get("response_code"), "response_code") or None,
        integer(get("bytes_sent"), "bytes_sent"),
        integer(get("bytes_received"), "bytes_received"),
        millis_to_ns(get("duration")),
        millis_to_ns(get("upstream_service_time")),
        peer_ip(peer) if peer else None,
        (None if v in missing else v)
        if (v := get("x_forwarded_for")).__class__ is str
        else text(v),
        (None if v in missing else v) if (v := get("user_agent")).__class__ is str else text(v),
        # A "-" in the first key must not hide a value in the second.
        request_id or text(get("x_request_id")),
        (None if v in missing else v) if (v := get("authority")).__class__ is str else text(v),
        cluster or text(get("cluster")),
        (None if v in missing else v) if (v := get("upstream_host")).__class__ is str else text(v),
        (None if v in missing else v) if (v := get("trace_id")).__class__ is str else text(v),
        None,
        headers,
    )
    for key, name in shape.headers:
        header = (None if v in missing else v) if (v := obj[key]).__class__ is str else text(v)
        if header is not None:
            headers[name] = header
    for key, name in shape.aliases:
        header = (None if v in missing else v) if (v := obj[key]).__class__ is str else text(v)
        if header is not None and name not in headers:
            headers[name] = header
    cookie = None if (v := get("cookie")) is None else text(v)
    if cookie is not None:
        rec.cookies = parse_cookie_header(cookie)
    return rec


def parse_cookie_header(value: str) -> dict[str, str]:
    """``a=1; b=2`` -> {"a": "1", "b": "2"}; first occurrence wins, like browsers send."""
    cookies: dict[str, str] = {}
    for part in value.split(";"):
        name, sep, val = part.strip().partition("=")
        if sep and name and name not in cookies:
            cookies[name] = val.strip('"')
    return cookies

"""Envoy/Istio JSON access logs (``json_format`` and ``typed_json_format``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from pipeline.core.formats.values import (
    MAX_COOKIES,
    field_positions,
    field_values,
    integer,
    millis_to_ns,
    peer_ip,
    text,
    timestamp_to_ns,
)
from pipeline.core.model import AccessRecord

# Keys that say "this object is an Envoy access log" (Istio defaults + common custom keys).
SIGNATURE_KEYS: Final = frozenset(
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
_HEADER_ALIASES: Final = {"gray_id": "x-gray-id", "traceparent": "traceparent", "b3": "b3"}
# Keys consumed into AccessRecord fields; every other ``x_*`` key is a header.
_FIELD_KEYS: Final = frozenset(("x_forwarded_for",))


# The fields parse_envoy reads, in the order of EnvoyShape.fields.
FIELD_KEYS: Final = (
    "start_time",
    "time",
    "timestamp",
    "downstream_remote_address",
    "request_id",
    "upstream_cluster",
    "method",
    "path",
    "protocol",
    "response_code",
    "bytes_sent",
    "bytes_received",
    "duration",
    "upstream_service_time",
    "x_forwarded_for",
    "user_agent",
    "x_request_id",
    "authority",
    "cluster",
    "upstream_host",
    "trace_id",
    "cookie",
)


@dataclass(frozen=True, slots=True)
class EnvoyShape:
    """Where one log format puts its fields, and which of its keys carry request headers.

    A deployment logs thousands of lines with the same keys in the same order:
    working this out once per key tuple (see :mod:`pipeline.core.formats.detect`)
    instead of once per line saves a Python-level pass over every key, and a dict
    lookup per field (``fields``: a tuple index instead).
    """

    # (position among the keys, header): ``x_*`` keys, later wins
    headers: tuple[tuple[int, str], ...] = ()
    # (position, header): only if not set by ``x_*``
    aliases: tuple[tuple[int, str], ...] = ()
    # Per FIELD_KEYS, its position among the keys (-1: not logged); ``size``: the key count.
    fields: tuple[int, ...] = (-1,) * len(FIELD_KEYS)
    size: int = 0


def envoy_shape(keys: Iterable[str]) -> EnvoyShape:
    """The shape of objects with exactly these keys, in this order."""
    ordered = tuple(keys)
    headers = []
    aliases = []
    for position, key in enumerate(ordered):
        if key.startswith("x_") and key not in _FIELD_KEYS:
            headers.append((position, key.replace("_", "-")))
        elif key in _HEADER_ALIASES:
            aliases.append((position, _HEADER_ALIASES[key]))
    fields = field_positions(ordered, FIELD_KEYS)
    return EnvoyShape(tuple(headers), tuple(aliases), fields, len(ordered))


def parse_envoy(obj: dict[str, Any], shape: EnvoyShape | None = None) -> AccessRecord:
    """One Envoy/Istio JSON access-log object; ``shape`` is ``envoy_shape`` of its keys."""
    if shape is None or shape.size != len(obj):
        shape = envoy_shape(obj)
    return parse_envoy_values(tuple(obj.values()), shape)


def parse_envoy_values(values: tuple[Any, ...], shape: EnvoyShape) -> AccessRecord:
    """An Envoy/Istio JSON object as its values in key order, ``shape`` ``envoy_shape``
    of its keys: what format detection hands over (from orjson's dict, or from
    ``_read.flat_json`` with no dict at all)."""
    (
        start_time,
        time,
        timestamp,
        remote_address,
        request_id,
        upstream_cluster,
        method,
        path,
        protocol,
        response_code,
        bytes_sent,
        bytes_received,
        duration,
        upstream_service_time,
        forwarded_for,
        user_agent,
        x_request_id,
        authority,
        cluster,
        upstream_host,
        trace_id,
        cookie_header,
    ) = field_values(values, shape.fields)
    timestamp_ns = timestamp_to_ns(start_time)
    if timestamp_ns is None:
        timestamp_ns = timestamp_to_ns(time) or timestamp_to_ns(timestamp)
    peer = text(remote_address)
    request_id_text = text(request_id)
    cluster_text = text(upstream_cluster)
    headers: dict[str, str] = {}
    rec = AccessRecord(
        dataset="envoy.access",
        timestamp_ns=timestamp_ns,
        method=text(method),
        uri=text(path),
        protocol=text(protocol),
        status=integer(response_code, "response_code") or None,
        bytes_sent=integer(bytes_sent, "bytes_sent"),
        bytes_received=integer(bytes_received, "bytes_received"),
        duration_ns=millis_to_ns(duration),
        upstream_duration_ns=millis_to_ns(upstream_service_time),
        peer_addr=peer_ip(peer) if peer else None,
        forwarded_for=text(forwarded_for),
        user_agent=text(user_agent),
        # A "-" in the first key must not hide a value in the second.
        request_id=request_id_text or text(x_request_id),
        authority=text(authority),
        upstream_cluster=cluster_text or text(cluster),
        upstream_host=text(upstream_host),
        trace_id=text(trace_id),
        headers=headers,
    )
    for position, name in shape.headers:
        header = text(values[position])
        if header is not None:
            headers[name] = header
    for position, name in shape.aliases:
        header = text(values[position])
        if header is not None and name not in headers:
            headers[name] = header
    cookie = text(cookie_header)
    if cookie is not None:
        rec.cookies = parse_cookie_header(cookie)
        if cookies_truncated(cookie):
            rec.truncated = ("cookies",)
    return rec


def parse_cookie_header(value: str) -> dict[str, str]:
    """``a=1; b=2`` -> {"a": "1", "b": "2"}; first occurrence wins, like browsers send.

    At most ``MAX_COOKIES`` are read (see :func:`cookies_truncated`)."""
    cookies: dict[str, str] = {}
    for part in value.split(";", MAX_COOKIES)[:MAX_COOKIES]:
        name, sep, val = part.strip().partition("=")
        if sep and name and name not in cookies:
            cookies[name] = val.strip('"')
    return cookies


def cookies_truncated(value: str) -> bool:
    """Whether :func:`parse_cookie_header` left cookies of this header unread."""
    return value.count(";", 0, len(value) - 1) >= MAX_COOKIES

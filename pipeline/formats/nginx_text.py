"""nginx text access logs: ``combined`` and the gray-release ``structured`` format.

structured = combined + `` $request_uri $args version="$arg_v" region="$http_x_forwarded_for"``.
Anything after combined is read generically: bare tokens by position
(``$request_uri``, ``$args``), then ``key="value"`` or ``key=value`` pairs.
nginx's default escaping writes ``"``, ``\\`` and non-ASCII bytes as ``\\xXX``.
"""

from __future__ import annotations

import re

from pipeline.core.formats.values import (
    canonical_ip,
    clf_to_ns,
    integer,
    seconds_to_ns,
    start_from_end,
    text,
    upstream_seconds_to_ns,
)
from pipeline.core.model import AccessRecord, Reason, RejectedInput

# A quoted field with backslash escapes, as an unrolled loop: the textbook
# ``"((?:[^"\\]|\\.)*)"`` takes one alternation step per character and made
# the combined pattern ~5x slower (9 µs vs 1.7 µs on a 300-byte line).
_QUOTED = r'"([^"\\]*(?:\\.[^"\\]*)*)"'
# Without a backslash in the line a quoted field is just ``"[^"]*"``: the same
# matches, and SRE scans a one-character negated class with a tight loop instead
# of a class test per character (the fields are ~200 of a line's ~300 characters).
_PLAIN_QUOTED = r'"([^"]*)"'


def _combined(quoted: str) -> re.Pattern[str]:
    return re.compile(
        r"(?P<remote>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "
        + quoted.replace("(", "(?P<request>", 1)
        + r" (?P<status>\d{3}|-) (?P<bytes>\d+|-)"
        + r"(?: "
        + quoted.replace("(", "(?P<referer>", 1)
        + " "
        + quoted.replace("(", "(?P<ua>", 1)
        + r")?(?P<rest>.*)"
    )


COMBINED = _combined(_QUOTED)
COMBINED_PLAIN = _combined(_PLAIN_QUOTED)  # only for lines without a backslash
_REST_TOKEN = re.compile(
    r"\s*(?:(?P<key>[A-Za-z_][\w.-]*)=(?:" + _QUOTED + r"|(\S*))|(?P<bare>\S+))"
)
# `` $request_uri $args version="$arg_v" region="$http_x_forwarded_for"``
_STRUCTURED = re.compile(r" (/\S*) \S+ version=" + _QUOTED + " region=" + _QUOTED + r"\s*")
_STRUCTURED_PLAIN = re.compile(
    r" (/\S*) \S+ version=" + _PLAIN_QUOTED + " region=" + _PLAIN_QUOTED + r"\s*"
)
_HEX_ESCAPE = re.compile(rb"\\x([0-9A-Fa-f]{2})")

# Extension keys seen in the wild (``log_format main_ext``) -> what they mean.
_REQUEST_TIME_KEYS = ("request_time", "rt")
_UPSTREAM_TIME_KEYS = ("upstream_response_time", "urt")


def looks_like_text_log(line: str) -> bool:
    return COMBINED.match(line) is not None


def unescape(value: str) -> str:
    """Undo nginx's ``\\xXX`` escaping (bytes, so UTF-8 sequences come back whole)."""
    if "\\" not in value:
        return value
    raw = value.encode("utf-8", "surrogateescape")
    raw = _HEX_ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), raw)
    raw = raw.replace(b'\\"', b'"').replace(b"\\\\", b"\\")
    return raw.decode("utf-8", "replace")


def parse_nginx_text(line: str) -> AccessRecord:
    plain = "\\" not in line
    match = (COMBINED_PLAIN if plain else COMBINED).match(line)
    if match is None:
        raise RejectedInput(Reason.UNKNOWN_FORMAT, "not a JSON object nor an nginx combined line")
    remote, _user, time_local, request, status, body_bytes, referer, ua, rest = match.groups()
    method = uri = protocol = None
    parts = (unescape(request) if "\\" in request else request).split(" ")
    if len(parts) >= 2:
        method, uri = parts[0], parts[1]
        if len(parts) >= 3:
            protocol = parts[2]
    # Positional, in RECORD_FIELDS order (see pipeline.core.formats.values).
    rec = AccessRecord(
        "nginx.access",
        None,
        method,
        uri,
        protocol,
        integer(status, "status") or None,
        integer(body_bytes, "body_bytes_sent"),
        None,
        None,
        None,
        canonical_ip(remote),
        None,
        None if ua is None else text(unescape(ua) if "\\" in ua else ua),
    )
    if referer is not None and text(referer) is not None:
        rec.headers = {"referer": unescape(referer)}
    if rest and not rest.isspace():
        structured = (_STRUCTURED_PLAIN if plain else _STRUCTURED).fullmatch(rest)
        if structured is not None:
            # The gray-release `structured` tail; $args is not read (the URI has them).
            request_uri, version, region = structured.groups()
            # $request_uri is the original target; $request may differ after rewrites.
            rec.uri = unescape(request_uri) if "\\" in request_uri else request_uri
            rec.version_field = text(unescape(version) if "\\" in version else version)
            rec.forwarded_for = text(unescape(region) if "\\" in region else region)
        else:
            _read_extensions(rec, rest)
    rec.timestamp_ns = start_from_end(clf_to_ns(time_local), rec.duration_ns)
    return rec


def _read_extensions(rec: AccessRecord, rest: str) -> None:
    bare: list[str] = []
    pairs: dict[str, str] = {}
    for token in _REST_TOKEN.finditer(rest):
        key = token["key"]
        if key is not None:
            quoted, plain = token.group(2), token.group(3)
            pairs[key] = unescape(quoted) if quoted is not None else plain
        elif token["bare"] is not None:
            bare.append(token["bare"])
    if bare:
        request_uri = text(bare[0])
        if request_uri is not None and request_uri.startswith("/"):
            # $request_uri is the original target; $request may differ after rewrites.
            rec.uri = unescape(request_uri)
    version = text(pairs.get("version"))
    if version is not None:
        rec.version_field = version
    region = text(pairs.get("region")) or text(pairs.get("xff"))
    if region is not None:
        rec.forwarded_for = region
    for key in _REQUEST_TIME_KEYS:
        if key in pairs:
            rec.duration_ns = seconds_to_ns(pairs[key])
            break
    for key in _UPSTREAM_TIME_KEYS:
        if key in pairs:
            rec.upstream_duration_ns = upstream_seconds_to_ns(pairs[key])
            break
    for key in ("request_id", "gray_id", "trace_id"):
        value = text(pairs.get(key))
        if value is not None:
            if key == "request_id":
                rec.request_id = value
            elif key == "trace_id":
                rec.trace_id = value
            else:
                if "x-gray-id" not in rec.headers:
                    rec.headers = {**rec.headers, "x-gray-id": value}

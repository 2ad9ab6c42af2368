"""nginx text access logs: ``combined`` and the gray-release ``structured`` format.

structured = combined + `` $request_uri $args version="$arg_v" region="$http_x_forwarded_for"``.
Anything after combined is read generically: bare tokens by position
(``$request_uri``, ``$args``), then ``key="value"`` or ``key=value`` pairs.
nginx's default escaping writes ``"``, ``\\`` and non-ASCII bytes as ``\\xXX``.
"""

from __future__ import annotations

import re

from pipeline.formats.values import clf_to_ns, integer, seconds_to_ns, text, upstream_seconds_to_ns
from pipeline.model import AccessRecord, Reason, RejectedInput

_QUOTED = r'"((?:[^"\\]|\\.)*)"'
COMBINED = re.compile(
    r"(?P<remote>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "
    + _QUOTED.replace("(", "(?P<request>", 1)
    + r" (?P<status>\d{3}|-) (?P<bytes>\d+|-)"
    + r"(?: "
    + _QUOTED.replace("(", "(?P<referer>", 1)
    + " "
    + _QUOTED.replace("(", "(?P<ua>", 1)
    + r")?(?P<rest>.*)"
)
_REST_TOKEN = re.compile(
    r'\s*(?:(?P<key>[A-Za-z_][\w.-]*)=(?:"((?:[^"\\]|\\.)*)"|(\S*))|(?P<bare>\S+))'
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
    match = COMBINED.match(line)
    if match is None:
        raise RejectedInput(Reason.UNKNOWN_FORMAT, "not a JSON object nor an nginx combined line")
    rec = AccessRecord(dataset="nginx.access")
    rec.peer_addr = text(match["remote"])
    request = unescape(match["request"])
    parts = request.split(" ")
    if len(parts) >= 2:
        rec.method, rec.uri = parts[0], parts[1]
        if len(parts) >= 3:
            rec.protocol = parts[2]
    rec.status = integer(match["status"], "status")
    rec.bytes_sent = integer(match["bytes"], "body_bytes_sent")
    ua = match["ua"]
    if ua is not None:
        rec.user_agent = text(unescape(ua))
    referer = match["referer"]
    if referer is not None and text(referer) is not None:
        rec.headers["referer"] = unescape(referer)
    end_ns = clf_to_ns(match["time"])
    rest = match["rest"]
    if rest and rest.strip():
        _read_extensions(rec, rest)
    if end_ns is not None and rec.duration_ns is not None:
        end_ns -= rec.duration_ns
    rec.timestamp_ns = end_ns
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
                rec.headers.setdefault("x-gray-id", value)

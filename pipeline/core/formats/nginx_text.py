"""nginx text access logs: ``combined`` and its common variants.

One pattern reads what every variant shares: ``[$host ]$remote_addr - $remote_user
[$time_local] "$request" $status $body_bytes_sent[ $request_time] "$http_referer"
"$http_user_agent"``. The first field may also be an address list (the
forwarding chain, logged instead of ``$remote_addr``) and may follow a virtual host.
What comes after the user agent says which variant it is:

- nothing: ``combined``;
- `` $request_uri $args version="$arg_v" region="$http_x_forwarded_for"``: the
  gray-release ``structured`` format;
- ingress-nginx's ``upstreaminfo``: `` $request_length $request_time
  [$proxy_upstream_name] [$proxy_alternative_upstream_name] $upstream_addr
  $upstream_response_length $upstream_response_time $upstream_status $req_id``;
- one more (quoted) field: ``main``'s ``"$http_x_forwarded_for"``;
- else read generically: bare tokens by position (``$request_uri``), then
  ``key="value"`` or ``key=value`` pairs (``log_format main_ext``).

A line that is none of these is ``unknown_format``, never half-parsed. nginx's
default escaping writes ``"``, ``\\`` and non-ASCII bytes as ``\\xXX``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

from pipeline.core import read_function
from pipeline.core.formats.values import (
    MAX_TAIL_FIELDS,
    canonical_ip,
    clf_to_ns,
    integer,
    seconds_to_ns,
    start_from_end,
    text,
    upstream_seconds_to_ns,
)
from pipeline.core.model import AccessRecord, Reason
from pipeline.errors import RejectedInput

# A quoted field with backslash escapes, as an unrolled loop: the textbook
# ``"((?:[^"\\]|\\.)*)"`` takes one alternation step per character and made
# the combined pattern ~5x slower (9 µs vs 1.7 µs on a 300-byte line).
# Possessive (``*+``): giving characters back can never help this deterministic
# loop, and without it an unterminated field of ``\\\\…`` left a backtracking
# point per character (superlinear: 15 -> 390 ns per character from 16 KiB to
# 1 MiB; possessive 9 ns flat; tests/unit/test_regex_linear.py).
_QUOTED: Final = r'"([^"\\]*+(?:\\.[^"\\]*+)*+)"'
# Without a backslash in the line a quoted field is just ``"[^"]*"``: the same
# matches, and SRE scans a one-character negated class with a tight loop instead
# of a class test per character (the fields are ~200 of a line's ~300 characters).
_PLAIN_QUOTED: Final = r'"([^"]*+)"'

# ``$remote_addr``: one token (the fast path, tried first).
_ONE_FIELD: Final = r"(?P<remote>\S+)"
# A virtual host and/or an address list before ``- $remote_user [``: anything up to
# the first ``[`` (lazy; it cannot pass a ``[``, so it ends at one place: linear),
# at most MAX_HEAD characters (nginx's default header buffers hold 8 KiB).
MAX_HEAD: Final = 16_384
_LONG_HEAD: Final = rf"(?P<remote>[^\[]{{1,{MAX_HEAD}}}?)"


def _combined(quoted: str, head: str) -> re.Pattern[str]:
    return re.compile(
        head
        + r" \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "
        + quoted.replace("(", "(?P<request>", 1)
        + r" (?P<status>\d{3}|-) (?P<bytes>\d+|-)"
        # `$body_bytes_sent $request_time "$http_referer"` (a common variant).
        + r"(?: (?P<rt>\d+\.\d+))?"
        + r"(?: "
        + quoted.replace("(", "(?P<referer>", 1)
        + " "
        + quoted.replace("(", "(?P<ua>", 1)
        + r")?(?P<rest>.*)"
    )


COMBINED: Final = _combined(_QUOTED, _ONE_FIELD)
COMBINED_PLAIN: Final = _combined(_PLAIN_QUOTED, _ONE_FIELD)  # only for lines without a backslash
HEADED: Final = _combined(_QUOTED, _LONG_HEAD)
HEADED_PLAIN: Final = _combined(_PLAIN_QUOTED, _LONG_HEAD)
# Tokens are found by finditer's search; no leading ``\s*``: a run of blanks
# that ends the line would be re-scanned from every position (quadratic).
_REST_TOKEN: Final = re.compile(
    r"(?:(?P<key>[A-Za-z_][\w.-]*)=(?:"
    + _QUOTED.replace("(", "(?P<value>", 1)
    + r"|(?P<plain>\S*))|"
    + _QUOTED.replace("(", "(?P<quoted>", 1)
    + r"|(?P<bare>\S+))"
)
# `` $request_uri $args version="$arg_v" region="$http_x_forwarded_for"``
_STRUCTURED: Final = re.compile(r" (/\S*) \S+ version=" + _QUOTED + " region=" + _QUOTED + r"\s*")
_STRUCTURED_PLAIN: Final = re.compile(
    r" (/\S*) \S+ version=" + _PLAIN_QUOTED + " region=" + _PLAIN_QUOTED + r"\s*"
)
# ingress-nginx ``upstreaminfo`` after the user agent: request length, request
# time, [upstream], [alternative upstream], then the upstream lists and $req_id.
_UPSTREAMINFO: Final = re.compile(r" (\d+|-) (\d+\.\d+|-) \[([^\]\s]*)\] \[([^\]\s]*)\] (\S.*)")
# A virtual host: a DNS name or an IP, maybe with a port.
_VHOST: Final = re.compile(r"[A-Za-z0-9_.-]+(?::\d{1,5})?")
# nginx's escapes: ``\xXX`` (quotes, backslashes, non-ASCII); ``\"`` and ``\\``
# (``escape=default`` of older versions and hand-written formats).
# A run of ``\xXX`` is decoded in one call (a non-ASCII user agent is one run).
_ESCAPE: Final = re.compile(rb'(?:\\x[0-9A-Fa-f]{2})+|\\(["\\])')

# Extension keys seen in the wild (``log_format main_ext``) -> what they mean.
_REQUEST_TIME_KEYS: Final = ("request_time", "rt")
_UPSTREAM_TIME_KEYS: Final = ("upstream_response_time", "urt")
_UNKNOWN: Final = "not a JSON object, nor an nginx or Envoy access-log line"


# The C readers of the usual line (pipeline/core/_read.c), where the core is compiled:
# COMBINED's and _STRUCTURED's groups without the regex engine, for printable ASCII;
# None from them means the regexes read the line, as they define it (bench/README.md,
# "Session 21").
_Groups = tuple[str | Any, ...]  # as re.Match.groups() is typed


COMBINED_GROUPS: Final[Callable[[str], _Groups | None] | None] = read_function("nginx_combined")
STRUCTURED_GROUPS: Final[Callable[[str], _Groups | None] | None] = read_function("nginx_structured")
UNESCAPE_ASCII: Final[Callable[[str], str | None] | None] = read_function("nginx_unescape")


def looks_like_text_log(line: str) -> bool:
    return COMBINED.match(line) is not None or HEADED.match(line) is not None


def unescape(value: str) -> str:
    """Undo nginx's ``\\xXX`` escaping (bytes, so UTF-8 sequences come back whole).

    In C for ASCII text where the core is compiled (``_read.nginx_unescape``: a regex
    substitution with a Python callback per match cost ~7 µs a user agent);
    ``python_unescape`` is the definition."""
    if "\\" not in value:
        return value
    if UNESCAPE_ASCII is not None:
        unescaped = UNESCAPE_ASCII(value)
        if unescaped is not None:
            return unescaped
    return python_unescape(value)


def python_unescape(value: str) -> str:
    """``unescape`` in Python: the definition of the C reader's."""
    if "\\" not in value:
        return value
    raw = value.encode("utf-8", "surrogateescape")
    # One pass: ``\x5C\x22`` is a backslash and a quote, not an escaped quote.
    raw = _ESCAPE.sub(_unescaped, raw)
    return raw.decode("utf-8", "replace")


def _unescaped(match: re.Match[bytes]) -> bytes:
    quote_or_backslash = match.group(1)
    if quote_or_backslash is not None:
        return quote_or_backslash
    return bytes.fromhex(match.group(0).replace(b"\\x", b"").decode("ascii"))


def split_request(request: str) -> tuple[str | None, str | None, str | None]:
    """``$request`` -> (method, target, protocol): the method is the first token, the
    protocol the last when it is ``HTTP/…``, the target all between (it may hold spaces)."""
    parts = request.split(" ")
    count = len(parts)
    if count == 3 and parts[2].startswith("HTTP/") and parts[0] and parts[1]:
        return parts[0], parts[1], parts[2]  # the usual case
    if count < 2 or not parts[0]:
        return None, None, None
    if count == 2:
        return parts[0], parts[1] or None, None
    if parts[-1].startswith("HTTP/"):
        return parts[0], " ".join(parts[1:-1]) or None, parts[-1]
    return parts[0], " ".join(parts[1:]), None


def _line_groups(line: str, plain: bool) -> _Groups:
    """The line's groups by the first pattern that matches it (``COMBINED``, else the
    ``HEADED`` one; their ``_PLAIN`` forms when it holds no backslash)."""
    if COMBINED_GROUPS is not None:
        groups = COMBINED_GROUPS(line)
        if groups is not None:
            return groups
    match = (COMBINED_PLAIN if plain else COMBINED).match(line)
    if match is None:
        # Only a head of more than one field before `- $remote_user [` can match
        # where combined did not (and a second full scan of garbage is not free).
        time_at = line.find(" [", 0, MAX_HEAD)
        if time_at < 0 or line.count(" ", 0, time_at) <= 2:
            raise RejectedInput(Reason.UNKNOWN_FORMAT, _UNKNOWN)
        match = (HEADED_PLAIN if plain else HEADED).match(line)
        if match is None:
            raise RejectedInput(Reason.UNKNOWN_FORMAT, _UNKNOWN)
    return match.groups()


def _structured_groups(rest: str, plain: bool) -> _Groups | None:
    """``_STRUCTURED``'s (``_STRUCTURED_PLAIN``'s) groups of what follows the user
    agent, or None when it is not the structured format's."""
    if STRUCTURED_GROUPS is not None:
        groups = STRUCTURED_GROUPS(rest)
        if groups is not None:
            return groups
    match = (_STRUCTURED_PLAIN if plain else _STRUCTURED).fullmatch(rest)
    return None if match is None else match.groups()


def parse_nginx_text(line: str) -> AccessRecord:
    plain = "\\" not in line
    # The groups' types as COMBINED has them (the optional ones may be None): typed, the
    # compiled core tests them once here and uses its str operations below instead of
    # generic ones (measured: ~500 instructions a line; bench/README.md, "Session 22").
    remote: str
    time_local: str
    request: str
    status: str
    body_bytes: str
    request_time: str | None
    referer: str | None
    ua: str | None
    rest: str
    remote, _user, time_local, request, status, body_bytes, request_time, referer, ua, rest = (
        _line_groups(line, plain)
    )
    if referer is None and rest and not rest.isspace():
        # `combined` without referrer and user agent is the common log format; text
        # after the byte count that is no referrer/user agent pair is a format we do
        # not know: reading on would misplace every later field.
        raise RejectedInput(
            Reason.UNKNOWN_FORMAT,
            "nginx text line: after the byte count neither a request time nor"
            ' "$http_referer" "$http_user_agent"',
        )
    method, uri, protocol = split_request(unescape(request) if "\\" in request else request)
    duration_ns = seconds_to_ns(request_time) if request_time is not None else None
    rec = AccessRecord(
        dataset="nginx.access",
        method=method,
        uri=uri,
        protocol=protocol,
        status=integer(status, "status") or None,
        bytes_sent=integer(body_bytes, "body_bytes_sent"),
        duration_ns=duration_ns,
        user_agent=None if ua is None else text(unescape(ua) if "\\" in ua else ua),
    )
    if " " in remote or "," in remote or '"' in remote:
        _read_head(rec, remote)
    else:
        rec.peer_addr = canonical_ip(remote)
    if referer is not None and text(referer) is not None:
        rec.headers = {"referer": unescape(referer)}
    if rest and not rest.isspace():
        structured = _structured_groups(rest, plain)
        if structured is not None:
            # The gray-release `structured` tail; $args is not read (the URI has them).
            request_uri: str
            version: str
            region: str
            request_uri, version, region = structured
            # $request_uri is the original target; $request may differ after rewrites.
            rec.uri = unescape(request_uri) if "\\" in request_uri else request_uri
            rec.version_field = text(unescape(version) if "\\" in version else version)
            rec.forwarded_for = text(unescape(region) if "\\" in region else region)
        else:
            upstream = _UPSTREAMINFO.fullmatch(rest.rstrip())
            if upstream is not None:
                _read_upstreaminfo(rec, upstream)
            else:
                _read_extensions(rec, rest)
    rec.timestamp_ns = start_from_end(clf_to_ns(time_local), rec.duration_ns)
    return rec


def _read_head(rec: AccessRecord, head: str) -> None:
    """``[$host ]$remote_addr`` where the address may be a list (right-most = peer).

    The list is what ``$proxy_add_x_forwarded_for`` (or ``$http_x_forwarded_for``)
    logs: the forwarding chain, its right-most entry the direct peer; the client
    is then picked from it under the trusted-proxy rules, like any X-Forwarded-For.
    """
    groups: list[str] = []
    joining = False
    for token in head.replace('"', " ").split(" "):
        if not token:
            continue
        if joining:
            groups[-1] += " " + token
        else:
            groups.append(token)
        joining = token.endswith(",")
    if not groups or len(groups) > 2 or joining:
        raise RejectedInput(Reason.UNKNOWN_FORMAT, f"nginx text line: first fields {head[:64]!r}")
    forwarded: list[str] = []
    if len(groups) == 2:
        first = groups[0]
        if "," in first:
            forwarded = [entry.strip() for entry in first.split(",")]  # XFF, then the peer
        elif _VHOST.fullmatch(first) is not None:
            rec.authority = first
        else:
            raise RejectedInput(
                Reason.UNKNOWN_FORMAT, f"nginx text line: no virtual host {first[:64]!r}"
            )
    chain = [entry.strip() for entry in groups[-1].split(",")]
    peer = canonical_ip(chain[-1])
    if peer is None:
        raise RejectedInput(
            Reason.UNKNOWN_FORMAT, f"nginx text line: no client address in {head[:64]!r}"
        )
    rec.peer_addr = peer
    forwarded += chain[:-1]
    if forwarded:
        rec.forwarded_for = ", ".join(forwarded)


def _read_upstreaminfo(rec: AccessRecord, match: re.Match[str]) -> None:
    request_length, request_time, upstream, _alternative, lists = match.groups()
    tokens = lists.split(" ")
    request_id = tokens.pop()
    # $upstream_addr, $upstream_response_length, $upstream_response_time,
    # $upstream_status: lists when nginx tried several servers (``a, b``) or
    # passed an internal redirect (``a : b``); each may hold spaces.
    fields: list[list[str]] = []
    joining = False
    for token in tokens:
        if token == ":" and fields:
            joining = True
            continue
        item = token[:-1] if token.endswith(",") else token
        if joining:
            fields[-1].append(item)
        else:
            fields.append([item])
        joining = token.endswith(",")
    if len(fields) != 4 or joining:
        raise RejectedInput(
            Reason.UNKNOWN_FORMAT,
            "ingress-nginx upstreaminfo: expected $upstream_addr $upstream_response_length"
            " $upstream_response_time $upstream_status $req_id",
        )
    addresses, _lengths, times, statuses = fields
    rec.bytes_received = integer(request_length, "request_length")
    rec.duration_ns = seconds_to_ns(request_time)
    rec.upstream_cluster = text(upstream)
    rec.upstream_host = text(addresses[-1])
    rec.upstream_duration_ns = upstream_seconds_to_ns(",".join(times))
    last_status = statuses[-1]
    if last_status.isdigit() and last_status.isascii() and len(last_status) == 3:
        rec.upstream_status = int(last_status)
    rec.request_id = text(request_id)


def _read_extensions(rec: AccessRecord, rest: str) -> None:
    bare: list[str] = []
    pairs: dict[str, str] = {}
    for count, token in enumerate(_REST_TOKEN.finditer(rest)):
        if count == MAX_TAIL_FIELDS:
            raise RejectedInput(
                Reason.UNKNOWN_FORMAT,
                f"nginx text line: more than {MAX_TAIL_FIELDS} fields after the user agent",
            )
        key = token["key"]
        if key is not None:
            quoted, plain = token["value"], token["plain"]
            pairs[key] = unescape(quoted) if quoted is not None else plain
        elif token["quoted"] is not None:
            bare.append(unescape(token["quoted"]))
        elif token["bare"] is not None:
            bare.append(token["bare"])
    if len(bare) == 1 and not pairs and not bare[0].startswith("/"):
        # `main`: combined + "$http_x_forwarded_for" (also unquoted).
        if rec.forwarded_for is None:
            rec.forwarded_for = text(bare[0])
        return
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

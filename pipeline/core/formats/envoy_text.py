"""Envoy's default TEXT access log and Istio's TEXT encoding.

Envoy's default format::

    [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"
    %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
    %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
    "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"

Istio's (``accessLogEncoding: TEXT``) adds fields between the flags and the byte
counts (1.8+: ``%RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS%
"%UPSTREAM_TRANSPORT_FAILURE_REASON%"``) and after the upstream host
(``%UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS%
%DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%``). So the line
is read as: the head, Istio's middle fields (either version), the four numbers,
the five quoted headers, then Istio's tail by position; a quoted tail field that is a W3C
``traceparent`` or a B3 trace id (a custom format's ``"%REQ(TRACEPARENT)%"``)
is read as that header. Envoy does not escape quotes in values: the user agent
may hold ``"`` (it is the one quoted field that ends where the last four fit).
"""

from __future__ import annotations

import re
from typing import Final

from pipeline.core.formats.nginx_text import split_request
from pipeline.core.formats.values import (
    MAX_TAIL_FIELDS,
    integer,
    millis_to_ns,
    peer_ip,
    text,
    timestamp_to_ns,
)
from pipeline.core.model import AccessRecord, Reason
from pipeline.errors import RejectedInput

# [%START_TIME%] "request" %RESPONSE_CODE% %RESPONSE_FLAGS% then Istio's middle
# fields, if any: 1.8+ `%RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS%
# "%UPSTREAM_TRANSPORT_FAILURE_REASON%"`, 1.5-1.7 `"%DYNAMIC_METADATA(istio.mixer:status)%"
# "%UPSTREAM_TRANSPORT_FAILURE_REASON%"`; then %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
# %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%. Anchored: no search over the line.
_HEAD: Final = re.compile(
    r'\[([^\]]*)\] "([^"]*)" (\d+|-) \S+ (?:[^\s"]+ [^\s"]+ "[^"]*" |"[^"]*" "[^"]*" )?'
    r"(\d+|-) (\d+|-) (\d+|-) (\d+|-) "
)
# The user agent is greedy: it ends at the last place where the other four fit,
# so quotes inside it (Envoy writes them raw) stay in it.
_HEADERS: Final = re.compile(r'"([^"]*)" "(.*)" "([^"]*)" "([^"]*)" "([^"]*)"(?= |$)')
# Found by finditer's search (no leading ` *`: trailing blanks would be re-scanned
# from every position).
_TAIL_TOKEN: Final = re.compile(r'"([^"]*)"|(\S+)')
_TRACEPARENT: Final = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_B3_TRACE_ID: Final = re.compile(r"[0-9a-f]{16}(?:[0-9a-f]{16})?")


def looks_like_envoy_text(line: str) -> bool:
    """A line that starts like Envoy's TEXT format (``[time] "request"``)."""
    return line.startswith("[") and '] "' in line[:80]


def parse_envoy_text(line: str) -> AccessRecord:
    head = _HEAD.match(line)
    if head is None:
        raise RejectedInput(
            Reason.UNKNOWN_FORMAT,
            'Envoy TEXT line: no [%START_TIME%] "request" status flags, byte counts and durations',
        )
    headers = _HEADERS.match(line, head.end())
    if headers is None:
        raise RejectedInput(
            Reason.UNKNOWN_FORMAT,
            'Envoy TEXT line: no "X-FORWARDED-FOR" "USER-AGENT" "X-REQUEST-ID" ":AUTHORITY"'
            ' "UPSTREAM_HOST" fields',
        )
    start_time, request, status, bytes_received, bytes_sent, duration, upstream_time = head.groups()
    forwarded_for, user_agent, request_id, authority, upstream_host = headers.groups()
    parts = request.split(" ")
    if len(parts) == 3:
        method, uri, protocol = text(parts[0]), text(parts[1]), text(parts[2])
    else:
        method, uri, protocol = split_request(request)
    rec = AccessRecord(
        dataset="envoy.access",
        timestamp_ns=timestamp_to_ns(start_time),
        method=method,
        uri=uri,
        protocol=protocol,
        status=integer(status, "response_code") or None,
        bytes_sent=integer(bytes_sent, "bytes_sent"),
        bytes_received=integer(bytes_received, "bytes_received"),
        duration_ns=millis_to_ns(duration),
        upstream_duration_ns=millis_to_ns(upstream_time),
        forwarded_for=text(forwarded_for),
        user_agent=text(user_agent),
        request_id=text(request_id),
        authority=text(authority),
        upstream_host=text(upstream_host),
    )
    tail = line[headers.end() :]
    if tail and not tail.isspace():
        _read_tail(rec, tail)
    return rec


def _read_tail(rec: AccessRecord, tail: str) -> None:
    """Istio's fields by position; trace headers by their form."""
    bare: list[str] = []
    trace_headers: dict[str, str] = {}
    for count, token in enumerate(_TAIL_TOKEN.finditer(tail)):
        if count == MAX_TAIL_FIELDS:
            raise RejectedInput(
                Reason.UNKNOWN_FORMAT,
                f"Envoy TEXT line: more than {MAX_TAIL_FIELDS} fields after the upstream host",
            )
        quoted, plain = token.groups()
        if plain is not None:
            bare.append(plain)
        elif quoted is not None:
            if _TRACEPARENT.fullmatch(quoted) is not None:
                trace_headers["traceparent"] = quoted
            elif _B3_TRACE_ID.fullmatch(quoted) is not None:
                trace_headers["x-b3-traceid"] = quoted
    if len(bare) >= 4:
        # %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS%
        # %DOWNSTREAM_REMOTE_ADDRESS% ...
        rec.upstream_cluster = text(bare[0])
        remote = text(bare[3])
        if remote is not None:
            rec.peer_addr = peer_ip(remote)
    if trace_headers:
        rec.headers = trace_headers

"""Trace context from the log: W3C traceparent, B3, Envoy ``%TRACE_ID%``."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from pipeline.core import read_function
from pipeline.core.model import AccessRecord

_ZERO32: Final = "0" * 32
_ZERO16: Final = "0" * 16


def trace_context(rec: AccessRecord) -> tuple[str | None, str | None]:
    """(trace id: 32 lower hex, caller span id: 16 lower hex) or Nones."""
    headers = rec.headers
    parent = headers.get("traceparent")
    if parent is not None:
        found = _traceparent(parent)
        if found is not None:
            return found
    b3_trace = headers.get("x-b3-traceid")
    if b3_trace is not None:
        trace_id = trace_id_of(b3_trace)
        if trace_id is not None:
            return trace_id, span_id_of(headers.get("x-b3-spanid"))
    single = headers.get("b3")
    if single is not None:
        parts = single.split("-")
        if len(parts) >= 2:
            trace_id = trace_id_of(parts[0])
            if trace_id is not None:
                return trace_id, span_id_of(parts[1])
    if rec.trace_id is not None:
        return trace_id_of(rec.trace_id), None
    return None, None


# Where the core is compiled, C reads the usual ids (pipeline/core/_read.c): the regex
# and the strip/lower/strip calls took ~6k and ~4k instructions a value (bench/README.md,
# "Session 22"). What C does not answer (None) the functions below read, as they define
# it. None where C is not built (or the plain-Python core is in use).
_NATIVE_TRACEPARENT: Final[Callable[[str], tuple[str, str] | None] | None] = read_function(
    "traceparent"
)
_NATIVE_HEX_ID: Final[Callable[[str, int], str | None] | None] = read_function("hex_id")


def _traceparent(value: str) -> tuple[str, str] | None:
    """W3C ``version-traceid-parentid-flags``; None unless every part is well formed.

    Version ``ff`` is invalid; version ``00`` has exactly four parts, later
    versions may append more. All-zero trace or span ids are invalid.
    """
    read = _NATIVE_TRACEPARENT
    if read is not None:
        found = read(value)
        if found is not None:
            return found
    # One regex instead of a split and eight Python-level checks (~0.35 vs ~1 µs).
    match = _TRACEPARENT.fullmatch(value.strip().lower())
    if match is None:
        return None
    version, trace_id, span_id, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO32 or span_id == _ZERO16:
        return None
    return trace_id, span_id


_TRACEPARENT: Final = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.S
)


def _is_hex(value: str) -> bool:
    """Only lower-case hex digits (and not empty): ``strip`` removes them all."""
    return bool(value) and not value.strip(_HEX_DIGITS)


_HEX_DIGITS: Final = "0123456789abcdef"


def trace_id_of(value: str | None) -> str | None:
    """A 16- or 32-hex id -> 32 lower hex (16-hex B3 ids are left-padded)."""
    if not value:
        return None
    read = _NATIVE_HEX_ID
    if read is not None:
        found = read(value, 32)
        if found is not None:
            return found
    value = value.strip().lower()
    if len(value) == 16:
        value = _ZERO16 + value
    if len(value) == 32 and _is_hex(value) and value != _ZERO32:
        return value
    return None


def span_id_of(value: str | None) -> str | None:
    if not value:
        return None
    read = _NATIVE_HEX_ID
    if read is not None:
        found = read(value, 16)
        if found is not None:
            return found
    value = value.strip().lower()
    return value if len(value) == 16 and _is_hex(value) and value != _ZERO16 else None

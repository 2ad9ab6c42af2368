"""Coercion of logged values: missing markers, numbers, durations, timestamps.

Envoy's ``json_format`` logs every value as a string with ``"-"`` for
missing; ``typed_json_format`` logs numbers and ``null``; nginx logs ``""``
for unset variables in JSON and ``"-"`` in text. All become ``None`` here.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from pipeline.model import Reason, RejectedInput

_MISSING = frozenset(("", "-", "null", "None"))
_NS_PER_S = 1_000_000_000
_NS_PER_MS = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def text(value: Any) -> str | None:
    """A present string value, or None for the formats' missing markers."""
    if value is None:
        return None
    if isinstance(value, str):
        return None if value in _MISSING else value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return None


def integer(value: Any, field: str) -> int | None:
    """An integer field (status, bytes); garbage is a dead letter, not a guess."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str):
        if value in _MISSING:
            return None
        try:
            return int(value)
        except ValueError:
            try:
                return int(float(value))
            except ValueError:
                raise RejectedInput(
                    Reason.INVALID_FIELD, f"{field}: not a number: {value[:64]!r}"
                ) from None
    raise RejectedInput(Reason.INVALID_FIELD, f"{field}: not a number")


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        if value in _MISSING:
            return None
        try:
            return float(value)
        except ValueError:
            return None
    return None


def millis_to_ns(value: Any) -> int | None:
    """Envoy durations are integer milliseconds."""
    number = _number(value)
    return None if number is None or number < 0 else int(number * _NS_PER_MS)


def seconds_to_ns(value: Any) -> int | None:
    """nginx times are seconds with millisecond resolution (``0.004``)."""
    number = _number(value)
    return None if number is None or number < 0 else round(number * _NS_PER_S)


def upstream_seconds_to_ns(value: Any) -> int | None:
    """nginx ``$upstream_response_time``: ``0.010, 0.020`` (retries) or
    ``0.010 : 0.020`` (internal redirect) — the total of the known parts."""
    if value is None:
        return None
    if not isinstance(value, str):
        return seconds_to_ns(value)
    if "," not in value and ":" not in value:
        return seconds_to_ns(value)
    total = 0
    seen = False
    for part in re.split(r"[,:]", value):
        ns = seconds_to_ns(part.strip())
        if ns is not None:
            total += ns
            seen = True
    return total if seen else None


def _dt_to_ns(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * _NS_PER_S + delta.microseconds * 1000


@lru_cache(maxsize=4096)
def _iso_second_ns(prefix: str) -> int:
    return _dt_to_ns(datetime.fromisoformat(prefix))


def iso_to_ns(value: str) -> int | None:
    """ISO 8601 (``2026-11-20T12:00:00.001Z``, ``...+00:00``) to epoch ns.

    The whole-second part is cached: consecutive log lines share it.
    """
    try:
        if len(value) >= 20 and value[19] == ".":
            # Split the fraction off so the cached part repeats across lines.
            end = 20
            while end < len(value) and value[end].isdigit():
                end += 1
            fraction = value[20:end]
            base = _iso_second_ns(value[:19] + value[end:])
            return base + int(fraction.ljust(9, "0")[:9]) if fraction else base
        return _iso_second_ns(value)
    except (ValueError, OverflowError):
        return None


def epoch_to_ns(number: float) -> int | None:
    """Epoch seconds, milliseconds, microseconds or nanoseconds, by magnitude."""
    if number <= 0:
        return None
    if number < 1e11:
        return round(number * _NS_PER_S)
    if number < 1e14:
        return round(number * _NS_PER_MS)
    if number < 1e17:
        return round(number * 1000)
    return int(number)


def timestamp_to_ns(value: Any) -> int | None:
    """Any logged timestamp form to epoch ns; None when absent or unreadable."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return epoch_to_ns(float(value))
    if isinstance(value, str):
        if value in _MISSING:
            return None
        if value[0].isdigit() and "-" not in value[:5]:
            try:
                return epoch_to_ns(float(value))
            except ValueError:
                return None
        return iso_to_ns(value)
    return None


_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    )
}


@lru_cache(maxsize=4096)
def clf_to_ns(value: str) -> int | None:
    """nginx ``$time_local`` (``20/Nov/2026:12:00:03 +0000``) to epoch ns."""
    try:
        day, month, rest = value.split("/", 2)
        year, hh, mm, ss_tz = rest.split(":", 3)
        ss, tz = ss_tz.split(" ", 1)
        sign = -1 if tz[0] == "-" else 1
        offset_min = sign * (int(tz[1:3]) * 60 + int(tz[3:5]))
        dt = datetime(int(year), _MONTHS[month], int(day), int(hh), int(mm), int(ss), tzinfo=UTC)
        return _dt_to_ns(dt) - offset_min * 60 * _NS_PER_S
    except (ValueError, KeyError, IndexError):
        return None


def ns_to_iso(ns: int) -> str:
    """Epoch ns to ``2026-11-20T12:00:00.001Z`` (millisecond precision, UTC)."""
    seconds, rest = divmod(ns, _NS_PER_S)
    return _iso_second(seconds) + f".{rest // _NS_PER_MS:03d}Z"


@lru_cache(maxsize=4096)
def _iso_second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def strip_port(address: str | None) -> str | None:
    """``10.4.0.1:33000`` -> ``10.4.0.1``; ``[::1]:80`` -> ``::1``; bare IPv6 kept."""
    if not address:
        return None
    address = address.strip()
    if address.startswith("["):
        end = address.find("]")
        return address[1:end] if end > 0 else None
    if address.count(":") == 1:
        return address.split(":", 1)[0] or None
    return address or None

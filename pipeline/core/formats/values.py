"""Coercion of logged values: missing markers, numbers, durations, timestamps, IPs.

Envoy's ``json_format`` logs every value as a string with ``"-"`` for
missing; ``typed_json_format`` logs numbers and ``null``; nginx logs ``""``
for unset variables in JSON and ``"-"`` in text. All become ``None`` here.

Everything produced here fits the document mapping: integers fit a ``long``,
timestamps lie in 1970..9999 (what ``@timestamp`` can render), durations are
finite. Out-of-range durations and timestamps count as unreadable (``None``);
an out-of-range status or byte count is a dead letter, like any other
non-number there.
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final

from pipeline.core import read_function
from pipeline.core.model import Reason
from pipeline.errors import RejectedInput

#: Strings that mean "not logged".
MISSING: Final = frozenset(("", "-", "null", "None"))
_MISSING: Final = MISSING
_MISSING_MAX_CHARS: Final = max(map(len, MISSING))
NS_PER_S: Final = 1_000_000_000
NS_PER_MS: Final = 1_000_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
#: Elasticsearch ``long`` range: larger integers are rejected by the mapping.
MIN_LONG: Final = -(2**63)
MAX_LONG: Final = 2**63 - 1
#: Timestamps are readable in [1970-01-01, 10000-01-01): ``ns_to_iso`` renders those.
MAX_TIMESTAMP_NS: Final = 253_402_300_800 * NS_PER_S

# Per-field limits (README, "Limits"). A message is bounded by the size limit;
# these bound what one field of it may cost and keep. Client-controlled lists
# (cookies, query args, X-Forwarded-For) are cut, never dead-lettered: a client
# must not be able to hide its requests from the canary analysis by sending many.
# A cut is named in the document's ``tags`` (``truncated_<field>``).
#: Keys of one JSON object (header/cookie/arg keys among them): more is ``too_large``.
MAX_JSON_KEYS: Final = 512
#: Cookies read from one Cookie header (the first ones are kept).
MAX_COOKIES: Final = 64
#: Distinct query args read from one request target (the first ones are kept).
MAX_QUERY_ARGS: Final = 128
#: X-Forwarded-For entries walked, from the right (the hops nearest to us).
MAX_FORWARDED_HOPS: Final = 32
#: Fields after the known part of a text line (nginx extension pairs, Istio's
#: tail): more is ``unknown_format`` (no format logs that many).
MAX_TAIL_FIELDS: Final = 64


def text(value: Any) -> str | None:
    """A present string value, or None for the formats' missing markers."""
    if value is None:
        return None
    if isinstance(value, str):
        # Only a short string can be a marker: a long one (a user agent, a header) is
        # not hashed for the set lookup (orjson's fresh strings carry no hash yet).
        return None if len(value) <= _MISSING_MAX_CHARS and value in _MISSING else value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return None


def integer(value: Any, field: str) -> int | None:
    """An integer field (status, bytes); garbage is a dead letter, not a guess.

    Fractions are truncated (``200.0`` -> 200); non-finite numbers and values
    outside a ``long`` are garbage too.
    """
    if isinstance(value, str):
        if value.isdigit() and len(value) < 19:
            # The usual case, surely within a long. Not ``isascii()`` first (a method
            # call for mypyc): the digits int() cannot read (``²``) raise, and take
            # the general path below, as before; the ones it reads it reads the same.
            try:
                return int(value)
            except ValueError:
                pass
        if value in _MISSING:
            return None
        try:
            number = int(value)
        except ValueError:
            number = _float_to_int(_float_or_none(value), field, value)
    elif value is None or isinstance(value, bool):
        return None
    elif isinstance(value, int):
        number = int(value)
    elif isinstance(value, float):
        number = _float_to_int(value, field, value)
    else:
        raise RejectedInput(Reason.INVALID_FIELD, f"{field}: not a number")
    if MIN_LONG <= number <= MAX_LONG:
        return number
    raise RejectedInput(Reason.INVALID_FIELD, f"{field}: out of range: {str(value)[:64]!r}")


def _float_or_none(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _float_to_int(number: float | None, field: str, raw: Any) -> int:
    if number is None or not math.isfinite(number):
        raise RejectedInput(Reason.INVALID_FIELD, f"{field}: not a number: {str(raw)[:64]!r}")
    return int(number)


def _number(value: Any) -> float | None:
    """A finite number, or None for missing markers, garbage, NaN and infinities."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        if value in _MISSING:
            return None
        number = _float_or_none(value)
    elif isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an int beyond float range
            return None
    else:
        return None
    return number if number is not None and math.isfinite(number) else None


def _duration(number: float | None, scale: int) -> int | None:
    if number is None or number < 0 or number * scale >= MAX_LONG:
        return None
    return round(number * scale)


_MAX_MILLIS: Final = MAX_LONG // NS_PER_MS
_MAX_SECONDS: Final = MAX_LONG / NS_PER_S


def millis_to_ns(value: Any) -> int | None:
    """Envoy durations are integer milliseconds."""
    # Fast paths for what Envoy logs (a digit string, or an int when typed).
    if isinstance(value, str):
        if value.isdigit() and value.isascii() and len(value) < 13:
            return int(value) * NS_PER_MS  # < 10^12 ms: the ns fit a long
    elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_MILLIS:
        return int(value) * NS_PER_MS
    return _duration(_number(value), NS_PER_MS)


# C's reader of nginx's usual seconds (pipeline/core/_read.c); None where it is not built
# (or the plain-Python core is in use: pipeline.native.prefer_sources).
_NATIVE_SECONDS: Final[Callable[[str], int] | None] = read_function("seconds_ns")


def seconds_to_ns(value: Any) -> int | None:
    """nginx times are seconds with millisecond resolution (``0.004``).

    Where the core is compiled, C reads the usual ``digits.digits`` to the same int
    (~1.7k → ~0.2k instructions a value: ``float()``, the multiplication and ``round``
    on Python objects; bench/README.md, "Session 22"); the code below is the definition."""
    if isinstance(value, str):
        read = _NATIVE_SECONDS
        if read is not None:
            ns = read(value)
            if ns >= 0:
                return ns
        if value in _MISSING:
            return None
        try:
            number = float(value)
        except ValueError:
            return None
        # Also false for NaN and infinities.
        return round(number * NS_PER_S) if 0 <= number < _MAX_SECONDS else None
    return _duration(_number(value), NS_PER_S)


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
    for part in _UPSTREAM_SEPARATORS.split(value):
        ns = seconds_to_ns(part.strip())
        if ns is not None:
            total += ns
            seen = True
    return total if seen and total <= MAX_LONG else None


_UPSTREAM_SEPARATORS: Final = re.compile(r"[,:]")


def in_range(ns: int | None) -> int | None:
    """A timestamp inside the readable range, else None."""
    return ns if ns is not None and 0 <= ns < MAX_TIMESTAMP_NS else None


def start_from_end(end_ns: int | None, duration_ns: int | None) -> int | None:
    """nginx logs when the response is done: the request started ``duration`` earlier."""
    if end_ns is None or duration_ns is None:
        return end_ns
    return in_range(end_ns - duration_ns)


def _dt_to_ns(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * NS_PER_S + delta.microseconds * 1000


# Timestamps' whole seconds -> epoch ns (``_iso_second_ns``, ``clf_to_ns``; -1: not a
# time). Plain dicts, not functools.lru_cache: compiled, a hit is one dict lookup
# instead of a Python-level call into the cache's wrapper.
_SECONDS_MEMO_MAX: Final = 4096
_ISO_SECONDS: Final[dict[str, int]] = {}
_CLF_TIMES: Final[dict[str, int]] = {}


def _iso_second_ns(prefix: str) -> int:
    """``datetime.fromisoformat(prefix)`` in epoch ns, memoised (what it raises is not)."""
    ns = _ISO_SECONDS.get(prefix)
    if ns is None:
        ns = _dt_to_ns(datetime.fromisoformat(prefix))
        if len(prefix) <= MEMO_KEY_MAX:
            remember(_ISO_SECONDS, prefix, ns, _SECONDS_MEMO_MAX)
    return ns


def iso_to_ns(value: str) -> int | None:
    """ISO 8601 (``2026-11-20T12:00:00.001Z``, ``...+00:00``) to epoch ns.

    The whole-second part is cached: consecutive log lines share it. Envoy's
    ``%START_TIME%`` form has a shortcut in :func:`timestamp_to_ns`, the caller.
    """
    try:
        if len(value) >= 20 and value[19] == ".":
            # Split the fraction off so the cached part repeats across lines.
            digits = _ASCII_DIGITS.match(value, 20)  # always matches, maybe empty
            end = digits.end() if digits else 20
            fraction = value[20:end]
            base = _iso_second_ns(value[:19] + value[end:])
            return in_range(base + int(fraction[:9].ljust(9, "0")) if fraction else base)
        return in_range(_iso_second_ns(value))
    except (ValueError, OverflowError):
        return None


_DIGITS: Final = frozenset("0123456789")
_ASCII_DIGITS: Final = re.compile("[0-9]*")


def epoch_to_ns(number: float) -> int | None:
    """Epoch seconds, milliseconds, microseconds or nanoseconds, by magnitude."""
    if not number > 0 or not math.isfinite(number):  # also NaN
        return None
    if number < 1e11:
        return in_range(round(number * NS_PER_S))
    if number < 1e14:
        return in_range(round(number * NS_PER_MS))
    if number < 1e17:
        return in_range(round(number * 1000))
    return in_range(int(number))


def timestamp_to_ns(value: Any) -> int | None:
    """Any logged timestamp form to epoch ns; None when absent or unreadable."""
    if isinstance(value, str):
        if len(value) == 24 and value[23] == "Z" and value[19] == ".":
            # Envoy's %START_TIME% (milliseconds, UTC; naive means UTC in
            # _iso_second_ns), the most common form: two calls less than iso_to_ns.
            millis = value[20:23]
            if millis.isdigit() and millis.isascii():
                try:
                    ns = _iso_second_ns(value[:19]) + int(millis) * NS_PER_MS
                except (ValueError, OverflowError):
                    return None
                return ns if 0 <= ns < MAX_TIMESTAMP_NS else None
        if value in _MISSING:
            return None
        if value[0] in _DIGITS and "-" not in value[:5]:
            number = _float_or_none(value)
            return None if number is None else epoch_to_ns(number)
        return iso_to_ns(value)
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return epoch_to_ns(float(value))
        except OverflowError:  # an int beyond float range
            return None
    if isinstance(value, str):  # a str subclass
        return timestamp_to_ns(str(value))
    return None


_MONTHS: Final = {
    m: i + 1
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    )
}


def clf_to_ns(value: str) -> int | None:
    """nginx ``$time_local`` (``20/Nov/2026:12:00:03 +0000``) to epoch ns."""
    # 26 characters when valid; longer garbage is not memoised (bounded memory).
    if len(value) > MEMO_KEY_MAX:
        return None
    ns = _CLF_TIMES.get(value)
    if ns is None:
        read = _clf_to_ns(value)
        ns = -1 if read is None else read
        remember(_CLF_TIMES, value, ns, _SECONDS_MEMO_MAX)
    return None if ns < 0 else ns


def _clf_to_ns(value: str) -> int | None:
    try:
        day, month, rest = value.split("/", 2)
        year, hh, mm, ss_tz = rest.split(":", 3)
        ss, tz = ss_tz.split(" ", 1)
        sign = -1 if tz[0] == "-" else 1
        offset_min = sign * (int(tz[1:3]) * 60 + int(tz[3:5]))
        dt = datetime(int(year), _MONTHS[month], int(day), int(hh), int(mm), int(ss), tzinfo=UTC)
        return in_range(_dt_to_ns(dt) - offset_min * 60 * NS_PER_S)
    except (ValueError, KeyError, IndexError, OverflowError):  # Overflow: absurd years
        return None


def ns_to_iso(ns: int) -> str:
    """Epoch ns to ``2026-11-20T12:00:00.001Z`` (millisecond precision, UTC).

    ``ns`` must be in the readable range (see :func:`in_range`).
    """
    seconds, rest = divmod(ns, NS_PER_S)
    return _iso_second(seconds) + _MILLIS_SUFFIX[rest // NS_PER_MS]


_MILLIS_SUFFIX: Final = tuple(f".{ms:03d}Z" for ms in range(1000))


@lru_cache(maxsize=4096)
def _iso_second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


#: Memos only keep keys up to this length: a stream of huge garbage values must
#: not pin megabytes per entry (valid IPs, timestamps, clusters are short).
MEMO_KEY_MAX: Final = 256
_IP_MEMO: dict[str, str | None] = {}
_IP_MEMO_MAX = 65_536


def canonical_ip(value: str) -> str | None:
    """An address as logged -> canonical IP text, or None when it is no IP address.

    Accepts ``1.2.3.4``, ``1.2.3.4:80``, ``[2001:db8::1]:443``, ``2001:DB8::1``,
    surrounding whitespace and quotes, IPv6 zone ids (dropped) and IPv4-mapped
    IPv6 (returned as IPv4). Strict otherwise: no leading zeros, no hostnames.
    Memoised: peers and proxies repeat.
    """
    # "" is never a canonical IP: the memo's miss, without raising KeyError (a compiled
    # miss of ``_IP_MEMO[value]`` builds and catches an exception object).
    ip = _IP_MEMO.get(value, "")
    if ip != "":
        return ip
    ip = _canonical_ip(value)
    if len(value) <= MEMO_KEY_MAX:
        remember(_IP_MEMO, value, ip, _IP_MEMO_MAX)
    return ip


def peer_ip(address: str) -> str | None:
    """A logged peer address (``10.4.0.1:33000``, ``[::1]:80``, ``::1``) -> canonical IP.

    The port is cut off before the memo lookup: ports are ephemeral, so
    ``ip:port`` strings almost never repeat while the IPs do.
    """
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and (host[:1] == "[" or ":" not in host):
        return canonical_ip(host)
    return canonical_ip(address)


def field_positions(keys: tuple[str, ...], wanted: tuple[str, ...]) -> tuple[int, ...]:
    """Per wanted key, its position in ``keys`` (-1: absent): a JSON format's shape."""
    where = {key: i for i, key in enumerate(keys)}
    return tuple(where.get(key, -1) for key in wanted)


def field_values(values: tuple[Any, ...], positions: tuple[int, ...]) -> tuple[Any, ...]:
    """The values at ``positions`` (``field_positions`` of the object's keys; ``values``
    in key order), None for -1.

    A tuple index per field instead of a dict lookup per field (a miss probes, a hit
    compares orjson's key string with ours): with
    ``integer()``'s fast path, 93,125 -> 92,346 instructions per event on the
    synthetic stream (bench/README.md, "Session 20").
    """
    return tuple(values[i] if i >= 0 else None for i in positions)


def remember(memo: dict[Any, Any], key: Any, value: Any, maxsize: int) -> None:
    """Store in a bounded memo; a full memo starts over.

    Clearing is O(1) amortised. Evicting the oldest entry of a plain dict with
    ``del d[next(iter(d))]`` is not: the iterator walks the deleted slots at
    the front, measured at ~34 µs per insert on a full 64k-entry dict.
    """
    if len(memo) >= maxsize:
        memo.clear()
    memo[key] = value


def ipv4_value(text: str) -> int:
    """The 32-bit value of a canonical dotted quad (``1.2.3.4``: exactly what
    ``inet_pton(AF_INET)`` accepts), else -1. The definition of ``_wire.ipv4``."""
    try:
        packed = socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):  # ValueError: embedded NUL
        return -1
    return int.from_bytes(packed, "big")


# ``ipv4_value`` in C where it is built (pipeline/core/_read.c): a new client address
# costs one call instead of strips, two ``inet_pton`` and ``int.from_bytes``
# (bench/README.md, "Session 21").
IPV4_VALUE: Final[Callable[[str], int]] = read_function("ipv4") or ipv4_value


def _canonical_ip(entry: str) -> str | None:
    if IPV4_VALUE(entry) >= 0:
        return entry  # the usual address, already canonical
    value = entry.strip().strip('"').strip()
    if not value:
        return None
    if value[0] == "[":
        end = value.find("]")
        if end < 0:
            return None
        value = value[1:end]
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    if ":" not in value:
        try:
            socket.inet_pton(socket.AF_INET, value)
        except (OSError, ValueError):  # ValueError: embedded NUL
            return None
        return value  # inet_pton accepts only the canonical dotted quad
    pct = value.find("%")  # IPv6 zone id
    if pct > 0:
        value = value[:pct]
    try:
        packed = socket.inet_pton(socket.AF_INET6, value)
    except (OSError, ValueError):
        return None
    if packed[:12] == _V4_MAPPED_PREFIX:
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    text_ip = socket.inet_ntop(socket.AF_INET6, packed)
    if "." in text_ip:
        # libc writes IPv4-compatible addresses as ``::1.2.3.4``; keep the
        # ``ipaddress`` (RFC 5952 hex) spelling everywhere.
        return str(ipaddress.IPv6Address(packed))
    return text_ip


_V4_MAPPED_PREFIX: Final = bytes(10) + b"\xff\xff"

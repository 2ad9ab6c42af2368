"""Auto-detection: one raw Kafka message value -> AccessRecord, or RejectedInput.

Shipper envelopes are unwrapped first (Fluent Bit ``log``, Filebeat
``message`` + ``@metadata``, Vector ``message`` + ``source_type``), then the
payload is recognised by its keys (Envoy/Istio vs nginx JSON) or as a text
line: Envoy/Istio TEXT (``[%START_TIME%] "..."``) or nginx. A text line is never
``invalid_json``: only what opens like a JSON object and is none is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson

from pipeline.core import read_function
from pipeline.core.formats.envoy import SIGNATURE_KEYS as ENVOY_KEYS
from pipeline.core.formats.envoy import envoy_shape, parse_envoy_values
from pipeline.core.formats.envoy_text import looks_like_envoy_text, parse_envoy_text
from pipeline.core.formats.nginx_json import SIGNATURE_KEYS as NGINX_KEYS
from pipeline.core.formats.nginx_json import nginx_shape, parse_nginx_json_values
from pipeline.core.formats.nginx_text import parse_nginx_text
from pipeline.core.formats.values import MAX_JSON_KEYS, remember
from pipeline.core.model import AccessRecord, Reason
from pipeline.errors import RejectedInput

# An envelope inside an envelope (rsyslog -> Fluent Bit -> Kafka) is real; deeper is not.
MAX_ENVELOPE_DEPTH: Final = 3
_ENVELOPE_MARKERS: Final = ("@metadata", "source_type", "agent", "ecs", "input", "fluentbit")
_ENVELOPE_MARKER_SET: Final = frozenset(_ENVELOPE_MARKERS)

_JSON_OPENERS: Final = frozenset(b"{[")
# (parser, the shape it takes): a tuple called positionally, not a
# functools.partial with a keyword (half the call cost, on every JSON line). The
# parser takes the object's values in key order.
_Parser = tuple[Callable[[tuple[Any, ...], Any], AccessRecord], Any]
# Key tuple -> the parser for that key set and its shape, or None (not an access
# log: maybe an envelope). One format config logs the same keys in the same
# order on every line, so this turns per-line key scans into one dict lookup.
_SHAPES: dict[tuple[str, ...], _Parser | None] = {}
_SHAPES_MAX = 1024
# Only plausible log formats are kept: a stream of huge random objects must not
# pin megabytes per memo entry.
_SHAPE_KEYS_MAX: Final = 200
_SHAPE_CHARS_MAX: Final = 8192


# What parsing a message comes down to: (the format's parser, its arguments).
ParseJob = tuple[Callable[..., AccessRecord], tuple[Any, ...]]

# A JSON object as (its keys, its values), both in order.
FlatObject = tuple[tuple[str, ...], tuple[Any, ...]]


# ``_read.flat_json`` where the core is compiled (pipeline/core/_read.c): a JSON line
# whose values are all scalars read as orjson reads it, without the dict (bench/README.md,
# "Session 21"); None returned means orjson's to read. None here: orjson reads every line.
FLAT_JSON: Final[Callable[[bytes | str], FlatObject | None] | None] = read_function("flat_json")


def parse_message(raw: bytes, max_bytes: int = 1_048_576) -> AccessRecord:
    """Parse one message value. Raises RejectedInput with a bounded reason."""
    parse, args = resolve_message(raw, max_bytes)
    return parse(*args)


def resolve_message(raw: bytes, max_bytes: int = 1_048_576) -> ParseJob:
    """Everything of ``parse_message`` but the last call: which parser, with what.

    Decoding, envelopes and format detection happen here (RejectedInput for what
    none of them accepts); the returned parser may still reject the line. A batch
    can so run each format's parser over all of its lines in a row (``process_batch``).
    """
    if len(raw) > max_bytes:
        raise RejectedInput(Reason.TOO_LARGE, f"{len(raw)} bytes > limit {max_bytes}")
    stripped = raw.strip()
    if not stripped:
        raise RejectedInput(Reason.EMPTY, "empty message")
    if stripped[0] in _JSON_OPENERS and not (stripped[0] == _ARRAY and b'] "' in stripped[:80]):
        flat = FLAT_JSON(stripped) if FLAT_JSON is not None else None
        if flat is not None:
            return _resolve_object(flat[0], flat[1], None, 0)
        try:
            value = orjson.loads(stripped)
        except orjson.JSONDecodeError as exc:
            if "utf-8" in str(exc).lower():
                raise RejectedInput(Reason.INVALID_ENCODING, "not valid UTF-8") from None
            if stripped[0] == _ARRAY:
                # `[` also opens Envoy's TEXT lines (and custom text formats).
                raise RejectedInput(
                    Reason.UNKNOWN_FORMAT,
                    'neither a JSON object nor an Envoy TEXT line ([%START_TIME%] "...")',
                ) from None
            raise RejectedInput(Reason.INVALID_JSON, str(exc)[:200]) from None
        return _resolve_value(value, 0)
    try:
        line = stripped.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RejectedInput(
            Reason.INVALID_ENCODING, f"not valid UTF-8 at byte {exc.start}"
        ) from None
    return _text_job(line)


_ARRAY: Final = ord("[")


def _text_job(line: str) -> ParseJob:
    """The parser for a text line: Envoy/Istio TEXT when it opens like one, else nginx."""
    if line[0] == "[" and looks_like_envoy_text(line):
        return parse_envoy_text, (line,)
    return parse_nginx_text, (line,)


def _resolve_value(value: Any, depth: int) -> ParseJob:
    """What orjson read: an object goes on as its keys and values."""
    if not isinstance(value, dict):
        raise RejectedInput(Reason.NOT_AN_OBJECT, f"JSON {type(value).__name__}, not an object")
    return _resolve_object(tuple(value), tuple(value.values()), value, depth)


def _resolve_object(
    keys: tuple[str, ...], values: tuple[Any, ...], obj: dict[str, Any] | None, depth: int
) -> ParseJob:
    """A JSON object (its keys and values in order; ``obj``: its dict, if one was made)
    -> the parser of its format, or of the line an envelope of it carries."""
    if len(keys) > MAX_JSON_KEYS:
        raise RejectedInput(
            Reason.TOO_LARGE, f"JSON object with {len(keys)} keys > limit {MAX_JSON_KEYS}"
        )
    try:
        parser = _SHAPES[keys]
    except KeyError:
        parser = _classify(keys)
        if len(keys) <= _SHAPE_KEYS_MAX and sum(map(len, keys)) <= _SHAPE_CHARS_MAX:
            remember(_SHAPES, keys, parser, _SHAPES_MAX)
    if parser is not None:
        parse, shape = parser
        return parse, (values, shape)
    inner = _envelope_payload(obj if obj is not None else dict(zip(keys, values, strict=True)))
    if inner is None:
        raise RejectedInput(Reason.UNKNOWN_FORMAT, "JSON object with no access-log keys")
    if depth >= MAX_ENVELOPE_DEPTH:
        raise RejectedInput(Reason.UNKNOWN_FORMAT, "envelopes nested too deep")
    return _resolve_payload(inner, depth + 1)


def _classify(keys: tuple[str, ...]) -> _Parser | None:
    """The parser for objects with these keys: the format whose keys dominate."""
    envoy_score = nginx_score = 0
    for key in keys:
        if key in ENVOY_KEYS:
            envoy_score += 1
        elif key in NGINX_KEYS or key.startswith(("http_", "arg_", "cookie_")):
            nginx_score += 1
    if not envoy_score and not nginx_score:
        return None
    if envoy_score > nginx_score:
        return parse_envoy_values, envoy_shape(keys)
    return parse_nginx_json_values, nginx_shape(keys)


def _envelope_payload(obj: dict[str, Any]) -> str | dict[str, Any] | None:
    """The line a shipper wrapped, or None when this is no envelope we know."""
    log = obj.get("log")
    message = obj.get("message")
    if isinstance(log, (str, dict)) and not isinstance(message, str):
        return log  # Fluent Bit (tail/forward inputs put the line in `log`)
    if isinstance(message, (str, dict)) and (
        len(obj) <= 8 or not _ENVELOPE_MARKER_SET.isdisjoint(obj)
    ):
        return message  # Filebeat (@metadata) / Vector (source_type) / syslog-ish
    return None


def _resolve_payload(inner: str | dict[str, Any], depth: int) -> ParseJob:
    if isinstance(inner, dict):
        return _resolve_value(inner, depth)
    payload = inner.strip()
    if not payload:
        raise RejectedInput(Reason.EMPTY, "envelope carries an empty line")
    if payload[0] in "{[" and not looks_like_envoy_text(payload):
        flat = FLAT_JSON(payload) if FLAT_JSON is not None else None
        if flat is not None:
            return _resolve_object(flat[0], flat[1], None, depth)
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            if payload[0] == "[":
                raise RejectedInput(
                    Reason.UNKNOWN_FORMAT,
                    "in envelope: neither a JSON object nor an Envoy TEXT line",
                ) from None
            raise RejectedInput(Reason.INVALID_JSON, f"in envelope: {str(exc)[:200]}") from None
        return _resolve_value(value, depth)
    return _text_job(payload)

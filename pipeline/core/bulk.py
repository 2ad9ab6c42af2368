"""Bulk request building: where a document goes and the NDJSON body (pure).

Documents arrive already serialised (orjson bytes), so building a bulk body
is only joining byte strings: the action line prefix per (op, index) is
cached and the per-item cost is the ``_id`` encoding.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any, Final, Literal

import orjson

from pipeline.core import wire_function
from pipeline.core.formats.values import NS_PER_S, ns_to_iso
from pipeline.core.model import DeadLetter, InputMessage, KafkaCoordinates, Reason, document_id
from pipeline.core.process import Enriched
from schemas import DAILY_INDEX_PREFIX, DATA_STREAM_NAME

Op = Literal["create", "index"]
MODES: Final = ("data_stream", "index")

_DAY: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
NS_PER_DAY: Final = 86_400 * NS_PER_S


@dataclass(slots=True, init=False)
class BulkItem:
    """One document of a bulk request.

    ``source`` is the orjson-serialised document (one line, no newline);
    ``ref`` is whatever the caller needs back (e.g. the Kafka event) when the
    item is rejected.
    """

    doc_id: str | None
    index: str
    op: Op
    source: bytes
    ref: Any = None  # Any, not object: mypyc (pipeline.native) cannot resolve builtins here
    # The _id as its action line holds it (JSON-escaped, no quotes), made once: both
    # split_by_bytes (its length) and build_bulk_body read it.
    id_json: bytes | None = field(init=False, default=None, repr=False, compare=False)

    # Written out for the compiled core (measured: see pipeline.core.model.AccessRecord).
    def __init__(
        self, doc_id: str | None, index: str, op: Op, source: bytes, ref: Any = None
    ) -> None:
        self.doc_id = doc_id
        self.index = index
        self.op = op
        self.source = source
        self.ref = ref
        self.id_json = None if doc_id is None else escaped_id(doc_id)


def target_for(timestamp: str | int | float | None, mode: str) -> tuple[str, Op]:
    """``(index, op)`` for a document with this ``@timestamp`` in this mode.

    Data streams only accept ``create`` (a replayed ``_id`` answers 409, which
    means "already there"); daily indices take ``index`` so a replay
    overwrites. Raises ``ValueError`` for an unknown mode or, in index mode, a
    timestamp that names no day.
    """
    if mode == "data_stream":
        return DATA_STREAM_NAME, "create"
    if mode == "index":
        return daily_index(timestamp), "index"
    raise ValueError(f"unknown Elasticsearch mode {mode!r} (data_stream or index)")


def daily_index(timestamp: str | int | float | None) -> str:
    """``grayscope-access-YYYY.MM.DD`` of the UTC day of an ISO 8601 / epoch-millis timestamp."""
    if isinstance(timestamp, str):
        # "YYYY-MM-DDTHH:MM:SS" is 19 chars; an offset, if any, follows. UTC and
        # offset-less timestamps (ES reads those as UTC) take the cached fast path.
        tail = timestamp[19:]
        if ("+" not in tail and "-" not in tail) or tail.endswith(("+00:00", "-00:00", "+0000")):
            return _index_for_day(timestamp[:10])
        return _index_for_day(_utc_day(timestamp))
    if isinstance(timestamp, int | float) and not isinstance(timestamp, bool):
        try:
            day = datetime.fromtimestamp(timestamp / 1000, UTC).strftime("%Y-%m-%d")
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"@timestamp {timestamp!r} is out of range") from exc
        return _index_for_day(day)
    raise ValueError(f"@timestamp {timestamp!r} names no day")


@lru_cache(maxsize=1024)
def _index_for_day(day: str) -> str:
    try:
        if not _DAY.fullmatch(day):
            raise ValueError("not YYYY-MM-DD")
        date.fromisoformat(day)
    except ValueError as exc:
        raise ValueError(f"@timestamp day {day!r} is not a YYYY-MM-DD date") from exc
    return DAILY_INDEX_PREFIX + day.replace("-", ".")


def _utc_day(timestamp: str) -> str:
    try:
        parsed = datetime.fromisoformat(timestamp)
    except ValueError as exc:
        raise ValueError(f"@timestamp {timestamp!r} is not ISO 8601") from exc
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC)
    return parsed.strftime("%Y-%m-%d")


def build_item(
    document: Mapping[str, Any], *, doc_id: str | None, mode: str, ref: object = None
) -> BulkItem:
    """Serialise one document and work out its target (see ``target_for``)."""
    index, op = target_for(document.get("@timestamp"), mode)
    return BulkItem(doc_id, index, op, orjson.dumps(document), ref)


# What follows the _id string's contents in an action line (``_action_prefix`` before it).
_ACTION_END: Final = b'"}}\n'


@lru_cache(maxsize=1024)
def _action_prefix(op: str, index: str) -> bytes:
    # Everything of the action line up to the _id string's contents.
    return b'{"' + op.encode() + b'":{"_index":' + orjson.dumps(index) + b',"_id":"'


@lru_cache(maxsize=1024)
def _action_line_without_id(op: str, index: str) -> bytes:
    return orjson.dumps({op: {"_index": index}}) + b"\n"


def build_bulk_body(items: Iterable[BulkItem]) -> bytes:
    """The NDJSON ``_bulk`` body for these items, in order."""
    parts: list[bytes] = []
    # Consecutive items mostly share their action prefix (same op, same daily index):
    # look it up again only when the target changes.
    target: tuple[str, str] | None = None
    prefix = b""
    for item in items:
        id_json = item.id_json
        if id_json is None:
            parts.append(_action_line_without_id(item.op, item.index))
        else:
            if target is None or target[0] != item.op or target[1] != item.index:
                target = (item.op, item.index)
                prefix = _action_prefix(item.op, item.index)
            parts.append(prefix)
            parts.append(id_json)
            parts.append(_ACTION_END)
        parts.append(item.source)
        parts.append(b"\n")
    return b"".join(parts)


# C's test of plain ASCII text (pipeline/core/_wire.c); None where it is not built (or
# the plain-Python core is in use: pipeline.native.prefer_sources).
_NATIVE_PLAIN_TEXT: Final[Callable[[str], bytes | None] | None] = wire_function("plain_json_text")


def escaped_id(doc_id: str) -> bytes:
    """An ``_id`` as a JSON string's contents (the action line's ``"_id":"…"``).

    Where the core is compiled, C answers the usual id in one call instead of the four
    str methods below (``isascii`` is not even a compiled primitive); the methods and
    orjson stay the definition."""
    plain = _NATIVE_PLAIN_TEXT
    if plain is not None:
        encoded = plain(doc_id)
        if encoded is not None:
            return encoded
    if doc_id.isascii() and doc_id.isprintable() and '"' not in doc_id and "\\" not in doc_id:
        # Kafka-derived ids are plain: encoding them directly is ~20x cheaper than a
        # small orjson.dumps (and four str methods beat one regex call).
        return doc_id.encode()
    return orjson.dumps(doc_id)[1:-1]


def split_by_bytes(items: Sequence[BulkItem], max_bytes: int) -> list[list[BulkItem]]:
    """``items`` in order, cut into runs whose ``build_bulk_body`` is at most ``max_bytes``
    long (an item longer than that alone): a batch of big documents goes to the store as
    several requests instead of one it refuses (HTTP 413)."""
    runs: list[list[BulkItem]] = []
    run: list[BulkItem] = []
    size = 0
    target: tuple[str, str] | None = None
    prefix = 0
    for item in items:
        id_json = item.id_json
        if id_json is None:
            line = len(_action_line_without_id(item.op, item.index))
        else:
            if target is None or target[0] != item.op or target[1] != item.index:
                target = (item.op, item.index)
                prefix = len(_action_prefix(item.op, item.index))
            line = prefix + len(id_json) + len(_ACTION_END)
        line += len(item.source) + 1
        if run and size + line > max_bytes:
            runs.append(run)
            run = []
            size = 0
        run.append(item)
        size += line
    if run:
        runs.append(run)
    return runs


# A message for the dead-letter topic: the letter, and the record it came from.
Rejection = tuple[DeadLetter, KafkaCoordinates | None, bytes | None]


def build_bulk_items(
    messages: Sequence[InputMessage],
    results: Sequence[Enriched | DeadLetter],
    mode: str | None,
) -> tuple[list[BulkItem], list[Rejection]]:
    """A batch's bulk items (``_id`` from the Kafka coordinates) and its dead letters.

    ``mode`` is the store's (``target_for``); None when there is no store: then
    only the dead letters. A document without a target (no day for a daily index)
    is dead-lettered with ``invalid_field``. Documents without ``@timestamp`` get
    the Kafka record time: data streams require one.
    """
    items: list[BulkItem] = []
    letters: list[Rejection] = []
    targets: dict[int, tuple[str, Op]] = {}
    for msg, result in zip(messages, results, strict=True):
        if not isinstance(result, Enriched):
            letters.append((result, msg.coords, msg.key))
            continue
        if mode is None:
            continue
        source = result.source
        timestamp_ns = result.record.timestamp_ns  # the document's own @timestamp
        if timestamp_ns is None and msg.timestamp_ns:
            timestamp_ns = msg.timestamp_ns
            # Added last, as a dict would have it: before the document's closing brace.
            source = source[:-1] + b',"@timestamp":"' + ns_to_iso(timestamp_ns).encode() + b'"}'
        try:
            if timestamp_ns is None:
                target = target_for(None, mode)
            else:
                # One target_for per (UTC) day and batch, not per document.
                day = timestamp_ns // NS_PER_DAY
                known = targets.get(day)
                if known is None:
                    known = targets[day] = target_for(ns_to_iso(timestamp_ns), mode)
                target = known
        except (ValueError, TypeError) as exc:  # e.g. no day to name a daily index after
            # (the document itself was serialised as it was built: pipeline/core/process.py)
            detail = f"no target for the document: {exc}"[:500]
            letters.append(
                (DeadLetter(Reason.INVALID_FIELD, detail, msg.value or b""), msg.coords, msg.key)
            )
            continue
        items.append(BulkItem(document_id(msg.coords), target[0], target[1], source, msg))
    return items, letters

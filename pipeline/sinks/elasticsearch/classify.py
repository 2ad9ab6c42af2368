"""What to do with each bulk item and with the bulk request as a whole (pure).

Per item (``classify_item``), in this order:

- ``DONE``: 2xx, and 409 (a replayed ``create`` whose ``_id`` is already there).
- ``RETRY``: error types that say "not now" whatever their status (thread
  pool rejections, circuit breakers, unavailable shards, timeouts, cluster
  blocks such as the disk flood-stage one), then 408, 429 and 5xx.
- ``FATAL``: the store refuses to write *anywhere* for reasons no document can
  fix: 401/403 (privileges), 404 (missing index and auto-create off), closed
  index, unsupported operation (e.g. data streams on a store without them).
  Dead-lettering would throw good data away, so the worker must stop and say why.
- ``REJECT``: the document itself is wrong (mapping/parse errors, any other
  4xx): it goes to the dead-letter topic with the detail.
- Anything unreadable is retried: at-least-once beats guessing.

A response that says every item succeeded needs nothing but its item count, so
``read_all_done`` recognises it in its bytes and the service hands it over as
``AllItemsDone`` instead of decoding thousands of one-key objects (see there).

Whole request (``classify_status``): 2xx ``OK``; 408/429/5xx ``RETRY`` (as
are connection errors and timeouts, which have no status); 413 ``SPLIT``
(halve the batch; a single document that is still too large is rejected);
401/403 and every other 4xx ``FATAL`` (credentials, URL, proxy). A 400 for
the whole request means the NDJSON body was unreadable — grayscope builds it
from orjson output, so the likely cause is one bad pre-serialised source: it
is ``SPLIT`` too, which isolates the poison document (rejected alone) while
the rest is delivered, instead of dead-lettering or blocking the whole batch.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

MAX_DETAIL = 1000


class Outcome(Enum):
    DONE = "done"
    RETRY = "retry"
    REJECT = "reject"
    FATAL = "fatal"


class RequestOutcome(Enum):
    OK = "ok"
    RETRY = "retry"
    SPLIT = "split"
    FATAL = "fatal"


_RETRY_TYPES = frozenset(
    {
        "es_rejected_execution_exception",
        "rejected_execution_exception",
        "opensearch_rejected_execution_exception",
        "circuit_breaking_exception",
        "unavailable_shards_exception",
        "no_shard_available_action_exception",
        "primary_missing_action_exception",
        "cluster_block_exception",
        "node_not_connected_exception",
        "node_disconnected_exception",
        "node_closed_exception",
        "connect_transport_exception",
        "send_request_transport_exception",
        "master_not_discovered_exception",
        "cluster_manager_not_discovered_exception",
        "no_node_available_exception",
        "shard_not_in_primary_mode_exception",
        "retry_on_primary_exception",
        "retry_on_replica_exception",
        "shard_not_found_exception",
        "illegal_index_shard_state_exception",
        "index_shard_closed_exception",
    }
)

_FATAL_TYPES = frozenset(
    {
        "security_exception",
        "authentication_exception",
        "authorization_exception",
        "index_closed_exception",
        "index_not_found_exception",
        "unsupported_operation_exception",
    }
)

_REJECT_TYPES = frozenset(
    {
        "mapper_parsing_exception",
        "document_parsing_exception",
        "strict_dynamic_mapping_exception",
        "mapper_exception",
        "illegal_argument_exception",
        "json_parse_exception",
        "x_content_parse_exception",
        "parse_exception",
        "invalid_index_name_exception",
        "action_request_validation_exception",
    }
)


@dataclass(slots=True)
class BulkResult:
    """Positions (into the request's items) by outcome; ``done`` is a count."""

    done: int = 0
    retry: list[int] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    fatal: list[tuple[int, str]] = field(default_factory=list)
    # Why the first retried item failed, for the (rate-limited) log line.
    retry_detail: str = ""


@dataclass(frozen=True, slots=True)
class AllItemsDone:
    """A bulk response read without decoding its items (``read_all_done``): the store
    answered ``errors: false`` for ``items`` documents."""

    items: int


# One item of the answer OpenSearch and Elasticsearch give to the sink's bulk requests
# (the service's filter_path keeps each item's status and error) when it succeeded.
_DONE_ITEM = rb'\{"(?:index|create|update|delete)":\{"status":[1-5][0-9]{2}\}\}'
_DONE_ITEM_RE = re.compile(_DONE_ITEM)
_ALL_DONE_HEAD = b'{"errors":false,"items":['
_ALL_DONE_TAIL = b"]}"
# The whole answer when every item succeeded, byte for byte as the stores write it.
_ALL_DONE_RE = re.compile(
    re.escape(_ALL_DONE_HEAD)
    + rb"(?:%s(?:,%s)*)?" % (_DONE_ITEM, _DONE_ITEM)
    + re.escape(_ALL_DONE_TAIL)
)


def read_all_done(data: bytes) -> AllItemsDone | None:
    """``data`` as ``AllItemsDone`` when it is a bulk answer whose items all succeeded,
    in the compact form the stores write (``_ALL_DONE_RE``); None for any other body,
    which is then decoded as JSON and classified item by item.

    Why: decoding it built two dicts per document only for ``classify_bulk`` to
    count them (~1.5 µs of the worker's CPU per event; bench/README.md, "Session 26").
    Usually every item is the same bytes (all created): that is checked with one
    join and one comparison; mixed items (created and updated) take the regular
    expression. Whatever this accepts, ``orjson.loads`` reads as ``errors: false``
    with as many items (a property test holds it to that)."""
    if not (data.startswith(_ALL_DONE_HEAD) and data.endswith(_ALL_DONE_TAIL)):
        return None
    items = data[len(_ALL_DONE_HEAD) : -len(_ALL_DONE_TAIL)]
    if not items:
        return AllItemsDone(0)
    first = items[: items.find(b"}}") + 2]
    count = (len(items) + 1) // (len(first) + 1)
    if _DONE_ITEM_RE.fullmatch(first) and b",".join(itertools.repeat(first, count)) == items:
        return AllItemsDone(count)
    if _ALL_DONE_RE.fullmatch(data) is None:
        return None
    return AllItemsDone(items.count(b'"status"'))


def classify_status(status: int) -> RequestOutcome:
    """What to do with a whole bulk request that answered ``status``."""
    if 200 <= status < 300:
        return RequestOutcome.OK
    if status in (408, 429) or status >= 500:
        return RequestOutcome.RETRY
    if status in (400, 413):
        return RequestOutcome.SPLIT
    return RequestOutcome.FATAL


def classify_bulk(items: Sequence[object], response: Any) -> BulkResult:
    """Classify every item of a 2xx bulk response (see the module doc)."""
    n = len(items)
    if isinstance(response, AllItemsDone):
        if response.items != n:
            return _retry_all(n, f"bulk response has {response.items} items for {n} documents")
        return BulkResult(done=n)
    if not isinstance(response, Mapping):
        return _retry_all(n, "bulk response is not a JSON object")
    entries = response.get("items")
    if not isinstance(entries, list) or len(entries) != n:
        count = len(entries) if isinstance(entries, list) else "no"
        return _retry_all(n, f"bulk response has {count} items for {n} documents")
    if response.get("errors") is False:
        return BulkResult(done=n)
    result = BulkResult()
    for position, entry in enumerate(entries):
        outcome, detail = classify_item(entry)
        if outcome is Outcome.DONE:
            result.done += 1
        elif outcome is Outcome.RETRY:
            if not result.retry:
                result.retry_detail = detail
            result.retry.append(position)
        elif outcome is Outcome.REJECT:
            result.rejected.append((position, detail))
        else:
            result.fatal.append((position, detail))
    return result


def classify_item(entry: Any) -> tuple[Outcome, str]:
    """Outcome and detail (empty when done) of one ``items[]`` entry."""
    result = _item_result(entry)
    if result is None:
        return Outcome.RETRY, "malformed bulk item"
    status = result.get("status")
    if not isinstance(status, int):
        return Outcome.RETRY, "bulk item without a status"
    if 200 <= status < 300 or status == 409:
        return Outcome.DONE, ""
    error = result.get("error")
    kind = _error_type(error)
    detail = _describe(status, error)
    if kind in _RETRY_TYPES or "timeout" in kind or "rejected_execution" in kind:
        return Outcome.RETRY, detail
    if kind in _FATAL_TYPES:
        return Outcome.FATAL, detail
    if kind in _REJECT_TYPES:
        return Outcome.REJECT, detail
    if status in (408, 429) or status >= 500:
        return Outcome.RETRY, detail
    if status in (401, 403, 404):
        return Outcome.FATAL, detail
    if 400 <= status < 500:
        return Outcome.REJECT, detail
    return Outcome.RETRY, detail


def error_detail(status: int, body: Any) -> str:
    """One line about a failed request: ``"413 http error: request body is too large"``."""
    if isinstance(body, Mapping) and "error" in body:
        return _describe(status, body["error"])
    return _clip(f"{status} {response_text(body)}".rstrip())


def response_text(body: Any) -> str:
    """A non-JSON response body (a proxy's error page) squeezed onto one clipped line."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    return _clip(" ".join(str(body).split())) if body else ""


def _item_result(entry: Any) -> Mapping[str, Any] | None:
    # {"index": {...}} / {"create": {...}}: one key, the op name.
    if not isinstance(entry, Mapping) or len(entry) != 1:
        return None
    result = next(iter(entry.values()))
    return result if isinstance(result, Mapping) else None


def _error_type(error: Any) -> str:
    if isinstance(error, Mapping):
        kind = error.get("type")
        if isinstance(kind, str):
            return kind
    return ""


def _describe(status: int, error: Any) -> str:
    if isinstance(error, Mapping):
        text = f"{status} {error.get('type', 'error')}: {error.get('reason', '')}"
        cause = error.get("caused_by")
        if isinstance(cause, Mapping):
            text += f" (caused by {cause.get('type', 'error')}: {cause.get('reason', '')})"
    elif error:
        text = f"{status} {error}"
    else:
        text = f"{status} error"
    return _clip(text)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


def _retry_all(n: int, detail: str) -> BulkResult:
    return BulkResult(retry=list(range(n)), retry_detail=detail)

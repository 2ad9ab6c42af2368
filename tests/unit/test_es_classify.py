"""Bulk result classification against canned Elasticsearch 8 / OpenSearch bodies."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.sinks.elasticsearch.classify import (
    MAX_DETAIL,
    AllItemsDone,
    BulkResult,
    Outcome,
    RequestOutcome,
    classify_bulk,
    classify_item,
    classify_status,
    error_detail,
    read_all_done,
)
from pipeline.sinks.elasticsearch.service import _SERIALIZER

ES8_ALL_CREATED: dict[str, Any] = {
    "errors": False,
    "took": 4,
    "items": [
        {
            "create": {
                "_index": ".ds-logs-grayscope.access-default-2024.05.01-000001",
                "_id": f"access-logs-0-{n}",
                "_version": 1,
                "result": "created",
                "_shards": {"total": 2, "successful": 1, "failed": 0},
                "_seq_no": n,
                "_primary_term": 1,
                "status": 201,
            }
        }
        for n in range(3)
    ],
}

# Elasticsearch 8.x: a replayed create, a mapping error, a throttled and an
# unavailable-shard item, and one that went in.
ES8_MIXED: dict[str, Any] = {
    "errors": True,
    "took": 30,
    "items": [
        {
            "create": {
                "_index": ".ds-logs-grayscope.access-default-2024.05.01-000001",
                "_id": "access-logs-0-1",
                "status": 409,
                "error": {
                    "type": "version_conflict_engine_exception",
                    "reason": "[access-logs-0-1]: version conflict, document already exists "
                    "(current version [1])",
                    "index_uuid": "xJ2tKkQAQ0mB2HkdWl3nkA",
                    "shard": "0",
                    "index": ".ds-logs-grayscope.access-default-2024.05.01-000001",
                },
            }
        },
        {
            "create": {
                "_index": ".ds-logs-grayscope.access-default-2024.05.01-000001",
                "_id": "access-logs-0-2",
                "status": 400,
                "error": {
                    "type": "document_parsing_exception",
                    "reason": "[1:312] failed to parse field [client.ip] of type [ip] in document "
                    "with id 'access-logs-0-2'. Preview of field's value: 'unknown'",
                    "caused_by": {
                        "type": "illegal_argument_exception",
                        "reason": "'unknown' is not an IP string literal.",
                    },
                },
            }
        },
        {
            "create": {
                "_index": ".ds-logs-grayscope.access-default-2024.05.01-000001",
                "_id": "access-logs-0-3",
                "status": 429,
                "error": {
                    "type": "es_rejected_execution_exception",
                    "reason": "rejected execution of coordinating operation "
                    "[coordinating_and_primary_bytes=107374182, replica_bytes=0, "
                    "all_bytes=107374182, coordinating_operation_bytes=2048, "
                    "max_coordinating_and_primary_bytes=107374182]",
                },
            }
        },
        {
            "create": {
                "_index": ".ds-logs-grayscope.access-default-2024.05.01-000001",
                "_id": "access-logs-0-4",
                "status": 503,
                "error": {
                    "type": "unavailable_shards_exception",
                    "reason": "[.ds-logs-grayscope.access-default-2024.05.01-000001][0] primary "
                    "shard is not active Timeout: [1m], request: [BulkShardRequest "
                    "[[.ds-logs-grayscope.access-default-2024.05.01-000001][0]] containing "
                    "[4] requests]",
                },
            }
        },
        {
            "create": {
                "_index": ".ds-logs-grayscope.access-default-2024.05.01-000001",
                "_id": "access-logs-0-5",
                "_version": 1,
                "result": "created",
                "_shards": {"total": 2, "successful": 1, "failed": 0},
                "_seq_no": 7,
                "_primary_term": 1,
                "status": 201,
            }
        },
    ],
}

# OpenSearch (osmem 3.8) with filter_path=errors,items.*.status,items.*.error.
OPENSEARCH_MIXED: dict[str, Any] = {
    "errors": True,
    "items": [
        {"index": {"status": 201}},
        {
            "index": {
                "error": {
                    "caused_by": {
                        "reason": "'not-an-ip' is not an IP string literal.",
                        "type": "illegal_argument_exception",
                    },
                    "reason": "failed to parse field [client.ip] of type [ip] in document with "
                    "id '1'. Preview of field's value: 'not-an-ip'",
                    "type": "mapper_parsing_exception",
                },
                "status": 400,
            }
        },
        {"index": {"status": 200}},
        {
            "index": {
                "error": {
                    "type": "rejected_execution_exception",
                    "reason": "rejected execution of primary operation [shard_detail=[idx][0]"
                    "[node], shard_primary_operation_bytes=..., max_primary_bytes=...]",
                },
                "status": 429,
            }
        },
    ],
}


def item(status: int, error: dict[str, Any] | None = None, op: str = "index") -> dict[str, Any]:
    body: dict[str, Any] = {"_index": "grayscope-access-2024.05.01", "_id": "x", "status": status}
    if error is not None:
        body["error"] = error
    return {op: body}


def response(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"errors": True, "took": 1, "items": list(entries)}


def test_errors_false_is_all_done() -> None:
    result = classify_bulk([object()] * 3, ES8_ALL_CREATED)
    assert result == BulkResult(done=3)


def test_errors_false_skips_item_inspection() -> None:
    # Garbage entries would be "retry" if they were looked at.
    result = classify_bulk([1, 2], {"errors": False, "items": [None, {"bad": "shape", "x": 1}]})
    assert result == BulkResult(done=2)


def test_es8_mixed_response() -> None:
    result = classify_bulk(list(range(5)), ES8_MIXED)
    assert result.done == 2  # the 409 and the 201
    assert result.retry == [2, 3]
    assert "es_rejected_execution_exception" in result.retry_detail
    assert [pos for pos, _ in result.rejected] == [1]
    assert result.rejected[0][1] == (
        "400 document_parsing_exception: [1:312] failed to parse field [client.ip] of type [ip] "
        "in document with id 'access-logs-0-2'. Preview of field's value: 'unknown' "
        "(caused by illegal_argument_exception: 'unknown' is not an IP string literal.)"
    )
    assert result.fatal == []


def test_opensearch_mixed_response() -> None:
    result = classify_bulk(list(range(4)), OPENSEARCH_MIXED)
    assert result.done == 2
    assert result.retry == [3]
    assert len(result.rejected) == 1
    pos, detail = result.rejected[0]
    assert pos == 1
    assert detail.startswith("400 mapper_parsing_exception: failed to parse field [client.ip]")


@pytest.mark.parametrize(
    ("entry", "outcome"),
    [
        (item(201), Outcome.DONE),
        (item(200), Outcome.DONE),
        (
            item(409, {"type": "version_conflict_engine_exception", "reason": "exists"}, "create"),
            Outcome.DONE,
        ),
        (
            item(429, {"type": "es_rejected_execution_exception", "reason": "queue full"}),
            Outcome.RETRY,
        ),
        (
            item(429, {"type": "circuit_breaking_exception", "reason": "[parent] Data too large"}),
            Outcome.RETRY,
        ),
        (
            item(503, {"type": "unavailable_shards_exception", "reason": "primary not active"}),
            Outcome.RETRY,
        ),
        (item(500, {"type": "null_pointer_exception", "reason": None}), Outcome.RETRY),
        (item(504, None), Outcome.RETRY),
        (
            item(408, {"type": "process_cluster_event_timeout_exception", "reason": "t"}),
            Outcome.RETRY,
        ),
        # Disk flood stage: new ES answers 429, old ES 403; either way it passes.
        (
            item(
                429,
                {
                    "type": "cluster_block_exception",
                    "reason": "index [x] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded "
                    "flood-stage watermark, index has read-only-allow-delete block];",
                },
            ),
            Outcome.RETRY,
        ),
        (
            item(
                403,
                {
                    "type": "cluster_block_exception",
                    "reason": "index [x] blocked by: [FORBIDDEN/12/index read-only / allow "
                    "delete (api)];",
                },
            ),
            Outcome.RETRY,
        ),
        (
            item(400, {"type": "mapper_parsing_exception", "reason": "failed to parse"}),
            Outcome.REJECT,
        ),
        (
            item(400, {"type": "document_parsing_exception", "reason": "failed to parse"}),
            Outcome.REJECT,
        ),
        (
            item(
                400,
                {
                    "type": "strict_dynamic_mapping_exception",
                    "reason": "[1:2] mapping set to strict, dynamic introduction of [foo] "
                    "within [_doc] is not allowed",
                },
            ),
            Outcome.REJECT,
        ),
        (
            item(
                400,
                {
                    "type": "illegal_argument_exception",
                    "reason": "Limit of total fields [1000] has been exceeded",
                },
            ),
            Outcome.REJECT,
        ),
        (item(413, {"type": "illegal_argument_exception", "reason": "too large"}), Outcome.REJECT),
        (item(413, None), Outcome.REJECT),
        (item(400, {"type": "something_new_exception", "reason": "?"}), Outcome.REJECT),
        # The store will not write anywhere: stop, do not dead-letter.
        (
            item(
                403,
                {
                    "type": "security_exception",
                    "reason": "action [indices:data/write/bulk[s]] is unauthorized for API key "
                    "id [k1] of user [grayscope] on indices "
                    "[grayscope-access-2024.05.01]",
                },
            ),
            Outcome.FATAL,
        ),
        (
            item(404, {"type": "index_not_found_exception", "reason": "no such index [x]"}),
            Outcome.FATAL,
        ),
        (item(400, {"type": "index_closed_exception", "reason": "closed"}), Outcome.FATAL),
        # osmem has no data streams.
        (
            item(
                400,
                {
                    "type": "unsupported_operation_exception",
                    "reason": "data streams are not supported by osmem",
                },
                "create",
            ),
            Outcome.FATAL,
        ),
        # Unreadable entries are retried: at-least-once beats guessing.
        ({"index": {"_id": "x"}}, Outcome.RETRY),
        ({"index": "nope"}, Outcome.RETRY),
        ({}, Outcome.RETRY),
        (None, Outcome.RETRY),
    ],
)
def test_classify_item(entry: Any, outcome: Outcome) -> None:
    got, detail = classify_item(entry)
    assert got is outcome
    assert (detail == "") is (outcome is Outcome.DONE)


def test_item_count_mismatch_retries_everything() -> None:
    result = classify_bulk([1, 2, 3], response(item(201), item(201)))
    assert result.retry == [0, 1, 2]
    assert result.done == 0
    assert "2 items for 3 documents" in result.retry_detail


@pytest.mark.parametrize("body", [None, [], b"<html>502</html>", {"errors": True}])
def test_unreadable_response_retries_everything(body: Any) -> None:
    result = classify_bulk([1, 2], body)
    assert result.retry == [0, 1]


def test_fatal_items_are_reported() -> None:
    result = classify_bulk(
        [1, 2],
        response(item(201), item(403, {"type": "security_exception", "reason": "unauthorized"})),
    )
    assert result.done == 1
    assert result.fatal == [(1, "403 security_exception: unauthorized")]


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, RequestOutcome.OK),
        (201, RequestOutcome.OK),
        (408, RequestOutcome.RETRY),
        (429, RequestOutcome.RETRY),
        (500, RequestOutcome.RETRY),
        (502, RequestOutcome.RETRY),
        (503, RequestOutcome.RETRY),
        (504, RequestOutcome.RETRY),
        (413, RequestOutcome.SPLIT),
        (400, RequestOutcome.SPLIT),
        (401, RequestOutcome.FATAL),
        (403, RequestOutcome.FATAL),
        (404, RequestOutcome.FATAL),
        (406, RequestOutcome.FATAL),
        (415, RequestOutcome.FATAL),
    ],
)
def test_classify_status(status: int, outcome: RequestOutcome) -> None:
    assert classify_status(status) is outcome


def test_error_detail_shapes() -> None:
    # osmem's 413 carries a plain string error.
    assert (
        error_detail(413, {"error": "request body is larger than 104857600 bytes", "status": 413})
        == "413 request body is larger than 104857600 bytes"
    )
    # Elasticsearch 401.
    assert error_detail(
        401,
        {
            "error": {
                "root_cause": [{"type": "security_exception", "reason": "unable to authenticate"}],
                "type": "security_exception",
                "reason": "unable to authenticate with provided credentials and anonymous access "
                "is not allowed for this request",
                "header": {"WWW-Authenticate": ['Basic realm="security" charset="UTF-8"']},
            },
            "status": 401,
        },
    ).startswith("401 security_exception: unable to authenticate with provided credentials")
    # A proxy's HTML page, squeezed onto one line.
    assert error_detail(502, b"<html>\r\n<head><title>502 Bad Gateway</title></head>\n</html>") == (
        "502 <html> <head><title>502 Bad Gateway</title></head> </html>"
    )
    assert error_detail(503, None) == "503"


def test_details_are_clipped() -> None:
    _, detail = classify_item(item(400, {"type": "mapper_parsing_exception", "reason": "x" * 5000}))
    assert len(detail) == MAX_DETAIL
    assert detail.endswith("...")


# --- bulk answers read without decoding their items (read_all_done) ---

ACTIONS = ("index", "create", "update", "delete")


def compact(errors: bool, items: list[tuple[str, int]]) -> bytes:
    """A bulk answer as OpenSearch writes it for the sink's filter_path."""
    return orjson.dumps({"errors": errors, "items": [{op: {"status": s}} for op, s in items]})


done_items = st.lists(
    st.tuples(st.sampled_from(ACTIONS), st.sampled_from([200, 201, 201, 201])), max_size=40
)


@given(done_items)
def test_an_all_done_answer_is_counted_not_decoded(items: list[tuple[str, int]]) -> None:
    data = compact(False, items)
    assert read_all_done(data) == AllItemsDone(len(items))
    assert _SERIALIZER.loads(data) == AllItemsDone(len(items))
    # The same outcome as classifying the decoded answer.
    assert classify_bulk([0] * len(items), AllItemsDone(len(items))) == classify_bulk(
        [0] * len(items), orjson.loads(data)
    )


@settings(max_examples=1000)  # 30,000 found a status with a leading zero (now refused)
@given(done_items, st.data())
def test_whatever_is_counted_decodes_to_the_same_all_done_answer(
    items: list[tuple[str, int]], data: st.DataObject
) -> None:
    """Any change of bytes (dropped, repeated, replaced, inserted): either the answer
    is no longer recognised, or it still decodes to ``errors: false`` with as many
    items as it was counted."""
    body = bytearray(compact(False, items))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(body)))
        kind = data.draw(st.sampled_from(["drop", "repeat", "replace", "insert"]))
        if kind == "drop" and at < len(body):
            del body[at]
        elif kind == "repeat" and at < len(body):
            end = data.draw(st.integers(at, len(body)))
            body[at:at] = body[at:end]
        elif kind in ("replace", "insert"):
            byte = data.draw(st.sampled_from(list(b'{}[],:" 0129etsuxfal\\n')))
            body[at : at + (kind == "replace")] = bytes([byte])
    read = read_all_done(bytes(body))
    if read is not None:
        decoded = orjson.loads(bytes(body))
        assert decoded["errors"] is False
        assert len(decoded["items"]) == read.items


@pytest.mark.parametrize(
    "data",
    [
        compact(True, [("create", 201), ("create", 409)]),
        b'{"errors": false, "items": [{"index": {"status": 201}}]}',  # not compact
        b'{"took":3,"errors":false,"items":[{"index":{"status":201}}]}',  # no filter_path
        b'{"errors":false,"items":[{"index":{"status":201}},]}',
        b'{"errors":false,"items":[{"index":{"status":201}}{"index":{"status":201}}]}',
        b'{"errors":false,"items":[{"index":{"status":201,"error":{"type":"x"}}}]}',
        b'{"errors":false,"items":[{"index":{"status":201}}]}\n',
        b'{"errors":false,"items":[{"index":{"status":048}}]}',  # a leading zero: not JSON
        b'{"errors":false,"items":[{"index":{"status":999}}]}',  # no HTTP status
        b'{"acknowledged":true}',
        b"<html>bad gateway</html>",
    ],
)
def test_other_answers_are_left_to_the_json_decoder(data: bytes) -> None:
    assert read_all_done(data) is None


def test_an_all_done_answer_with_the_wrong_count_retries_everything() -> None:
    result = classify_bulk([0, 1, 2], AllItemsDone(2))
    assert result.retry == [0, 1, 2]
    assert result.retry_detail == "bulk response has 2 items for 3 documents"

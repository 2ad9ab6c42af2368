"""Bulk targets and NDJSON bodies (pipeline.core.bulk)."""

from __future__ import annotations

from itertools import pairwise

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.bulk import (
    BulkItem,
    build_bulk_body,
    build_item,
    daily_index,
    escaped_id,
    split_by_bytes,
    target_for,
)
from schemas import DAILY_INDEX_PREFIX, DATA_STREAM_NAME
from tests.unit.conftest import compiled_core_in_use


def parse_body(body: bytes) -> list[tuple[dict, dict]]:
    assert body.endswith(b"\n")
    lines = body.split(b"\n")[:-1]
    assert len(lines) % 2 == 0
    pairs = zip(lines[::2], lines[1::2], strict=True)
    return [(orjson.loads(action), orjson.loads(source)) for action, source in pairs]


def test_data_stream_mode_creates_in_the_data_stream() -> None:
    assert target_for("2024-05-01T10:00:00Z", "data_stream") == (DATA_STREAM_NAME, "create")
    # The data stream routes by @timestamp itself: no day needed.
    assert target_for(None, "data_stream") == ("logs-grayscope.access-default", "create")


def test_index_mode_indexes_into_the_daily_index() -> None:
    assert target_for("2024-05-01T10:00:00.123Z", "index") == (
        "grayscope-access-2024.05.01",
        "index",
    )
    assert DAILY_INDEX_PREFIX == "grayscope-access-"


def test_unknown_mode_is_an_error() -> None:
    with pytest.raises(ValueError, match="mode"):
        target_for("2024-05-01T10:00:00Z", "daily")


@pytest.mark.parametrize(
    ("timestamp", "index"),
    [
        ("2024-05-01T23:59:59.999999Z", "grayscope-access-2024.05.01"),
        ("2024-05-01T23:59:59+00:00", "grayscope-access-2024.05.01"),
        ("2024-05-01T23:59:59.5-00:00", "grayscope-access-2024.05.01"),
        ("2024-05-01T23:59:59", "grayscope-access-2024.05.01"),  # no offset: ES reads UTC
        ("2024-05-01", "grayscope-access-2024.05.01"),
        # Offsets move the UTC day, both ways.
        ("2024-05-02T01:30:00+02:00", "grayscope-access-2024.05.01"),
        ("2024-05-01T20:30:00.250-07:00", "grayscope-access-2024.05.02"),
        ("2024-12-31T23:30:00-01:00", "grayscope-access-2025.01.01"),
        # epoch_millis, as the mapping allows.
        (1714607999999, "grayscope-access-2024.05.01"),
        (1714608000000.0, "grayscope-access-2024.05.02"),
    ],
)
def test_daily_index_is_the_utc_day(timestamp: str | int | float, index: str) -> None:
    assert daily_index(timestamp) == index


@pytest.mark.parametrize(
    "timestamp", [None, "", "yesterday", "2024-13-01T00:00:00Z", "2024/05/01", True, 10**20]
)
def test_daily_index_needs_a_day(timestamp: object) -> None:
    with pytest.raises(ValueError, match="@timestamp"):
        daily_index(timestamp)  # type: ignore[arg-type]


def test_build_item_serialises_and_targets() -> None:
    doc = {"@timestamp": "2024-05-01T10:00:00Z", "client": {"ip": "1.2.3.4"}}
    ref = object()
    item = build_item(doc, doc_id="access-logs-0-42", mode="index", ref=ref)
    assert item == BulkItem(
        "access-logs-0-42", "grayscope-access-2024.05.01", "index", orjson.dumps(doc), ref
    )
    assert item.ref is ref


def test_bulk_body_is_ndjson_in_order() -> None:
    items = [
        BulkItem("t-0-1", "grayscope-access-2024.05.01", "index", b'{"a":1}'),
        BulkItem('we"ird\\id\n', "logs-grayscope.access-default", "create", b'{"b":"\xc3\xa9"}'),
        BulkItem(None, "logs-grayscope.access-default", "create", b"{}"),
    ]
    body = build_bulk_body(items)
    assert body.startswith(
        b'{"index":{"_index":"grayscope-access-2024.05.01","_id":"t-0-1"}}\n{"a":1}\n'
    )
    assert parse_body(body) == [
        ({"index": {"_index": "grayscope-access-2024.05.01", "_id": "t-0-1"}}, {"a": 1}),
        (
            {"create": {"_index": "logs-grayscope.access-default", "_id": 'we"ird\\id\n'}},
            {"b": "é"},
        ),
        ({"create": {"_index": "logs-grayscope.access-default"}}, {}),
    ]


def test_empty_bulk_body() -> None:
    assert build_bulk_body([]) == b""


@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.text(max_size=20)),
            st.sampled_from(["data_stream", "index"]),
            st.dictionaries(
                st.text(max_size=5), st.one_of(st.integers(-5, 5), st.text(max_size=5))
            ),
        ),
        max_size=8,
    )
)
def test_bulk_body_round_trips(specs: list[tuple[str | None, str, dict]]) -> None:
    items = [
        build_item({"@timestamp": "2024-05-01T10:00:00Z", **doc}, doc_id=doc_id, mode=mode)
        for doc_id, mode, doc in specs
    ]
    parsed = parse_body(build_bulk_body(items)) if items else []
    assert len(parsed) == len(items)
    for item, (action, source) in zip(items, parsed, strict=True):
        expected: dict = {"_index": item.index}
        if item.doc_id is not None:
            expected["_id"] = item.doc_id
        assert action == {item.op: expected}
        assert source == orjson.loads(item.source)


@pytest.mark.parametrize(
    "doc_id", ["access-logs-0-1", "ünï-cödé", "tab\there", "del\x7f", 'q"uote', "back\\slash", ""]
)
def test_ids_are_json_escaped(doc_id: str) -> None:
    item = BulkItem(doc_id, "i", "index", b"{}")
    # Escaped once, when the item is made (split_by_bytes and the body both read it).
    assert item.id_json == orjson.dumps(doc_id)[1:-1]
    body = build_bulk_body([item])
    assert parse_body(body) == [({"index": {"_index": "i", "_id": doc_id}}, {})]


@given(
    st.one_of(st.text(), st.text(st.characters(max_codepoint=0x7F)), st.text('"\\ab\x00\x1f\x7f'))
)
def test_any_id_is_escaped_as_orjson_escapes_it(doc_id: str) -> None:
    assert escaped_id(doc_id) == orjson.dumps(doc_id)[1:-1]


def test_the_c_test_of_plain_ids_is_used_where_the_core_is_compiled() -> None:
    from pipeline.core import bulk

    if not compiled_core_in_use():
        assert bulk._NATIVE_PLAIN_TEXT is None
        return
    from pipeline.core import _wire

    assert bulk._NATIVE_PLAIN_TEXT is _wire.plain_json_text
    assert _wire.plain_json_text("access-logs-0-17\x7f") == b"access-logs-0-17\x7f"
    assert _wire.plain_json_text("") == b""
    for odd in ("ünï", 'q"uote-longer-than-eight', "back\\slash", "tab\there", "x" * 9 + "\n"):
        assert _wire.plain_json_text(odd) is None


def test_an_item_without_an_id_has_no_escaped_id() -> None:
    assert BulkItem(None, "i", "create", b"{}").id_json is None


_item_specs = st.lists(
    st.tuples(
        st.one_of(st.none(), st.text(max_size=12)),
        st.sampled_from(["data_stream", "index"]),
        st.sampled_from(["2024-05-01T10:00:00Z", "2024-05-02T10:00:00Z"]),
        st.text(max_size=300),
    ),
    max_size=12,
)


@given(_item_specs, st.integers(1, 2000))
def test_split_by_bytes_keeps_every_body_within_the_limit(
    specs: list[tuple[str | None, str, str, str]], max_bytes: int
) -> None:
    items = [
        build_item({"@timestamp": day, "m": text}, doc_id=doc_id, mode=mode)
        for doc_id, mode, day, text in specs
    ]
    runs = split_by_bytes(items, max_bytes)
    assert [item for run in runs for item in run] == items  # all of them, in order, once
    assert all(run for run in runs)
    for run in runs:
        assert len(build_bulk_body(run)) <= max_bytes or len(run) == 1
    for run, following in pairwise(runs):
        # Cut only where the next item would not have fitted: no more requests than needed.
        assert len(build_bulk_body([*run, following[0]])) > max_bytes


def test_split_by_bytes_leaves_a_batch_within_the_limit_whole() -> None:
    items = [BulkItem(f"t-0-{i}", "i", "create", b'{"n":1}') for i in range(100)]
    body = build_bulk_body(items)
    assert split_by_bytes(items, len(body)) == [items]
    assert [len(run) for run in split_by_bytes(items, len(body) - 1)] == [99, 1]
    assert split_by_bytes([], 10) == []

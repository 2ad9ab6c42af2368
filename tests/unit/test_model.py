"""Plain data: the shared read-only maps, the written-out ``__init__``s, the document ``_id``."""

from __future__ import annotations

import copy
import dataclasses
import gc
import inspect
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.enrich import EnrichContext
from pipeline.core.model import (
    EMPTY,
    AccessRecord,
    Enrichment,
    InputMessage,
    KafkaCoordinates,
    ReadOnlyDict,
    document_id,
    fetched_message,
    message_values,
)
from pipeline.core.process import Enriched, process
from pipeline.native import loaded_native
from tests.unit.conftest import all_sample_lines, compiled_core_in_use, corpus_lines


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.__setitem__("k", "v"),
        lambda d: d.__delitem__("k"),
        lambda d: d.update(k="v"),
        lambda d: d.setdefault("k", "v"),
        lambda d: d.pop("k"),
        lambda d: d.popitem(),
        lambda d: d.clear(),
    ],
)
def test_read_only_dict_refuses_every_change(change: object) -> None:
    shared = ReadOnlyDict({"k": "1"})
    with pytest.raises(TypeError):
        change(shared)  # type: ignore[operator]
    assert shared == {"k": "1"}


def test_read_only_dict_reads_like_a_dict() -> None:
    shared = ReadOnlyDict({"v": "1.22"})
    assert shared.get("v") == "1.22" and shared["v"] == "1.22" and "v" in shared
    assert shared == {"v": "1.22"} and EMPTY == {} and not EMPTY
    for duplicate in (copy.copy, copy.deepcopy, lambda d: pickle.loads(pickle.dumps(d))):
        assert duplicate(EMPTY) == {}
        again = duplicate(shared)
        assert again == shared and type(again) is ReadOnlyDict
    merged = {**shared, "abt": "x"}  # how code adds entries: a new dict
    assert merged == {"v": "1.22", "abt": "x"} and shared == {"v": "1.22"}


def test_records_and_enrichments_share_the_empty_default() -> None:
    assert AccessRecord(dataset="x").headers is EMPTY
    assert AccessRecord(dataset="x").cookies is EMPTY
    assert AccessRecord(dataset="x").args is EMPTY
    assert Enrichment().query is EMPTY


def test_processing_every_sample_leaves_the_shared_default_empty() -> None:
    ctx = EnrichContext()
    lines = [*all_sample_lines(), *corpus_lines()]
    results = [process(line, ctx) for line in lines]
    assert any(isinstance(r, Enriched) for r in results)
    assert EMPTY == {} and len(EMPTY) == 0


# The per-event dataclasses write their __init__ out (native code when compiled,
# pipeline.native); it must stay the dataclass's: same names, order and defaults.
def _written_out() -> list[type]:
    from agents.handler import InputMessage
    from pipeline.core.bulk import BulkItem
    from pipeline.core.process import Enriched

    return [AccessRecord, Enrichment, Enriched, InputMessage, BulkItem]


# The same classes are ordinary collector-tracked objects where compiled, never
# ``@mypyc_attr(acyclic=True)``: mypyc 2.4 keeps CPython's trashcan in such a class's
# dealloc, and freed 50 deallocations deep the trashcan writes a GC header the object
# does not have into the memory before it (pipeline/core/model.py, above AccessRecord).
def _one_of(cls: type) -> object:
    from agents.handler import InputMessage
    from pipeline.core.bulk import BulkItem

    coords = KafkaCoordinates("t", 0, 1)
    record = AccessRecord("nginx.access")
    message = InputMessage(b"x", None, coords)
    made: dict[type, object] = {
        AccessRecord: record,
        Enrichment: Enrichment(),
        Enriched: Enriched(record, Enrichment(), b"{}"),
        InputMessage: message,
        BulkItem: BulkItem("t-0-1", "i", "create", b"{}", message),
    }
    return made[cls]


@pytest.mark.parametrize("cls", _written_out(), ids=lambda cls: cls.__name__)
def test_per_event_objects_are_tracked_by_the_cycle_collector(cls: type) -> None:
    assert gc.is_tracked(_one_of(cls))


# Each class's instances freed at every nesting depth around the trashcan's limit (50),
# in a process whose allocator checks the bytes around every block.
_DEEP_DEALLOC = """
import gc
from tests.unit.test_model import _one_of, _written_out
for cls in _written_out():
    for depth in range(40, 70):
        nests = []
        for _ in range(10):
            nested = _one_of(cls)
            for _ in range(depth):
                nested = [nested]
            nests.append(nested)
        del nested
        nests.clear()
gc.collect()
print("ok")
"""


def test_per_event_objects_freed_deep_in_a_deallocation_leave_the_heap_intact() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", _DEEP_DEALLOC],
        env={**os.environ, "PYTHONMALLOC": "debug"},
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        timeout=120,
        check=False,
    )
    assert "Debug memory block" not in done.stderr, done.stderr[:2000]
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("cls", _written_out(), ids=lambda cls: cls.__name__)
def test_written_out_inits_match_the_fields(cls: type) -> None:
    if loaded_native([cls.__module__]):
        pytest.skip("a compiled __init__ has no signature; make test's plain-Python pass checks")
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    # A field the dataclass would not take (init=False) is derived in the __init__.
    fields = [fld for fld in dataclasses.fields(cls) if fld.init]
    assert [p.name for p in params] == [f.name for f in fields]
    for param, fld in zip(params, fields, strict=True):
        if fld.default is not dataclasses.MISSING:
            assert param.default is fld.default, fld.name
        else:
            assert fld.default_factory is dataclasses.MISSING, fld.name
            assert param.default is inspect.Parameter.empty, fld.name


def test_written_out_inits_set_every_field() -> None:
    record = AccessRecord("envoy.access", status=200, original="line")
    assert record == AccessRecord(
        "envoy.access", None, None, None, None, 200, *([None] * 13), EMPTY, EMPTY, EMPTY, "line"
    )
    assert record.headers is EMPTY and record.cookies is EMPTY and record.args is EMPTY
    enrichment = Enrichment(stage="canary", service_name="svc")
    assert enrichment.stage == "canary" and enrichment.service_name == "svc"
    assert enrichment.query is EMPTY and enrichment.geo is None and Enrichment().stage == "stable"


# --- the document _id: C writes the usual one (pipeline/core/_wire.c) ------------------

# Kafka topic names are ASCII ([a-zA-Z0-9._-]); any text still gets the f-string's id.
_topics = st.one_of(
    st.text(st.sampled_from("abcxyzABC019._-"), min_size=1, max_size=40),
    st.text(max_size=20),
)
_ints = st.one_of(
    st.integers(0, 2**31 - 1),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 2**30 - 1, 2**30, -(2**30), 2**63 - 1, 2**63, -(2**63)]),
)


def test_message_values_are_the_values_in_order_and_empty_for_none() -> None:
    coords = KafkaCoordinates("logs", 0, 7)
    messages = [InputMessage(v, None, coords) for v in (b"a", None, b"", b"b")]
    assert message_values(messages) == [b"a", b"", b"", b"b"]
    assert message_values([]) == []


@given(_topics, _ints, _ints)
def test_a_document_id_is_the_coordinates_joined(topic: str, partition: int, offset: int) -> None:
    coords = KafkaCoordinates(topic, partition, offset)
    assert document_id(coords) == f"{topic}-{partition}-{offset}"
    assert coords.doc_id == document_id(coords)


def test_the_c_document_id_takes_the_usual_coordinates() -> None:
    """Compiled, C writes the usual id and leaves anything else to the f-string."""
    from pipeline.core import model

    if not compiled_core_in_use():
        assert model._NATIVE_DOCUMENT_ID is None
        return
    from pipeline.core import _wire

    assert model._NATIVE_DOCUMENT_ID is _wire.document_id
    assert _wire.document_id(KafkaCoordinates("access-logs", 3, 1234567)) == "access-logs-3-1234567"
    assert _wire.document_id(("t", -5, 0)) == "t--5-0"
    for odd in (("tö", 0, 1), ("t", 2**63, 1), ("t", True, 1), ("t", 0), ("t", 0, 1.0), "t-0-1"):
        assert _wire.document_id(odd) is None


# --- a fetched record as the handler's message -----------------------------------------


@dataclasses.dataclass
class _Fetched:
    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes | None


@pytest.mark.parametrize(
    ("timestamp", "timestamp_ns"),
    [(1_700_000_000_123, 1_700_000_000_123_000_000), (None, None), (0, None), (-1, None)],
)
def test_a_fetched_record_becomes_a_message(
    timestamp: int | None, timestamp_ns: int | None
) -> None:
    from aiokafka.structs import TopicPartition

    message = fetched_message(TopicPartition("logs", 2), _Fetched(17, timestamp, b"k", b"v"))
    assert (message.value, message.key, message.timestamp_ns) == (b"v", b"k", timestamp_ns)
    coords = message.coords
    # A real KafkaCoordinates, however it was made (C makes it where compiled).
    assert type(coords) is KafkaCoordinates
    assert coords == KafkaCoordinates("logs", 2, 17) == ("logs", 2, 17)
    assert (coords.topic, coords.partition, coords.offset) == ("logs", 2, 17)
    assert hash(coords) == hash(("logs", 2, 17))
    assert coords.doc_id == "logs-2-17"
    assert pickle.loads(pickle.dumps(coords)) == coords


def test_the_c_coordinates_refuse_anything_but_a_tuple_type_and_three_values() -> None:
    from pipeline.core import model

    if not compiled_core_in_use():
        assert model._NATIVE_COORDINATES is None
        return
    from pipeline.core import _read

    assert model._NATIVE_COORDINATES is _read.coordinates
    for args in (
        (list, "t", 0, 1),
        (KafkaCoordinates, "t", 0),
        (KafkaCoordinates(" ", 0, 0), 1, 2, 3),
    ):
        with pytest.raises(TypeError):
            _read.coordinates(*args)

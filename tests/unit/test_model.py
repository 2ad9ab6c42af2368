"""Plain data: the shared read-only maps."""

from __future__ import annotations

import copy
import pickle

import pytest

from pipeline.core import Enriched, process
from pipeline.enrich import EnrichContext
from pipeline.model import EMPTY, AccessRecord, Enrichment, ReadOnlyDict
from tests.unit.conftest import all_sample_lines, corpus_lines


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

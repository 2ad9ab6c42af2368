"""Plain data: the shared read-only maps."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle

import pytest

from pipeline.core.enrich import EnrichContext
from pipeline.core.model import EMPTY, AccessRecord, Enrichment, ReadOnlyDict
from pipeline.core.process import Enriched, process
from pipeline.native import loaded_native
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


# The per-event dataclasses write their __init__ out (native code when compiled,
# pipeline.native); it must stay the dataclass's: same names, order and defaults.
def _written_out() -> list[type]:
    from agents.handler import InputMessage
    from pipeline.core.bulk import BulkItem
    from pipeline.core.process import Enriched

    return [AccessRecord, Enrichment, Enriched, InputMessage, BulkItem]


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

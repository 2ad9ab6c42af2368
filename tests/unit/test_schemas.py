"""The schema is the single source: templates are current, the builder emits only mapped fields."""

from __future__ import annotations

import json

import pytest

import schemas
from pipeline.core.process import Enriched, process
from pipeline.core.enrich import EnrichContext
from tests.unit.conftest import (
    FULL_ASN,
    FULL_GEO,
    FakeGeo,
    corpus_lines,
    flatten,
    mapping_problems,
)
from tests.unit.test_document import full_document


@pytest.mark.parametrize("name", sorted(schemas.build_templates()))
def test_committed_templates_are_generated_from_access_fields(name: str) -> None:
    committed = schemas.TEMPLATES_DIR / name
    body = schemas.build_templates()[name]
    assert json.loads(committed.read_text()) == body
    # Byte for byte what `python -m schemas` writes, so a regenerate is a no-op.
    assert committed.read_text() == json.dumps(body, indent=2, sort_keys=True) + "\n"


def test_no_stray_template_files() -> None:
    on_disk = {p.name for p in schemas.TEMPLATES_DIR.glob("*.json")}
    assert on_disk == set(schemas.build_templates())


def test_every_field_the_builder_can_produce_is_mapped_with_a_compatible_type() -> None:
    document = full_document()
    assert mapping_problems(document) == []


def test_the_full_document_uses_every_mapped_field() -> None:
    """No dead mappings: each field in access_fields.json is something the builder writes."""
    produced = {name for name, _ in flatten(full_document())}
    assert produced == set(schemas.access_fields())


def test_templates_map_every_field_nested() -> None:
    mappings = schemas.component_templates()["grayscope-access-mappings"]["template"]["mappings"]
    assert mappings["dynamic"] is False
    for dotted, mapping in schemas.access_fields().items():
        node = mappings
        for part in dotted.split("."):
            node = node["properties"][part]
        assert node == mapping


def test_documents_from_every_corpus_line_are_mapped() -> None:
    geo = FakeGeo({ip: (FULL_GEO, FULL_ASN) for ip in ("73.15.200.7", "192.0.2.44", "2001:db8::7")})
    ctx = EnrichContext(geoip=geo, include_original=True)
    lines = corpus_lines()
    for line in lines:
        result = process(line, ctx)
        assert isinstance(result, Enriched), (line, result)
        assert mapping_problems(result.document) == [], line
    assert geo.looked_up  # geo fields were exercised

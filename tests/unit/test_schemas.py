"""The schema is the single source: templates are current, the builder emits only mapped fields."""

from __future__ import annotations

import json

import pytest

import schemas
from pipeline.core.enrich import EnrichContext
from pipeline.core.process import Enriched, process
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


def resolved_index_settings(template_name: str) -> dict[str, object]:
    """The ``index`` settings an index template gives a new index: its components' in
    order, then its own (Elasticsearch's and OpenSearch's composition order)."""
    template = schemas.index_templates()[template_name]
    components = schemas.component_templates()
    resolved: dict[str, object] = {}
    for name in template.get("composed_of", []):
        resolved.update(components[name].get("template", {}).get("settings", {}).get("index", {}))
    resolved.update(template.get("template", {}).get("settings", {}).get("index", {}))
    return resolved


@pytest.mark.parametrize("template_name", sorted(schemas.index_templates()))
def test_every_index_grayscope_creates_expands_replicas_zero_to_one(template_name: str) -> None:
    """Green on one node (no replica to wait for), one replica on two or more: as
    Elasticsearch's own data-stream templates; the store's default (one replica)
    would leave a single node yellow for ever. A fixed ``number_of_replicas`` next
    to it would be overridden by the expansion: none is set."""
    settings = resolved_index_settings(template_name)
    assert settings["auto_expand_replicas"] == "0-1"
    assert "number_of_replicas" not in settings


def test_the_data_stream_takes_its_replicas_from_the_shared_settings_component() -> None:
    settings = schemas.component_templates()[schemas.SETTINGS_COMPONENT]["template"]["settings"]
    assert settings == {
        "index": {
            "auto_expand_replicas": "0-1",
            "codec": "best_compression",
            "refresh_interval": "5s",
        }
    }
    data_stream = schemas.index_templates()[schemas.DATA_STREAM_TEMPLATE]
    assert schemas.SETTINGS_COMPONENT in data_stream["composed_of"]
    assert "template" not in data_stream  # nothing of its own that could override it

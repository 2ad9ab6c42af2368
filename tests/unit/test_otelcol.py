"""The OpenTelemetry Collector's build manifest and the benchmark's collector config (text only)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.otelcol import CONFIG, collector_env, config_env_names, field_agreement
from pipeline.dev.stack import otelcol
from pipeline.dev.stack.otelcol import (
    COMPONENTS,
    CORE_STABLE,
    PRODUCT_MARKER,
    PRODUCT_MARKER_MODULE,
    RECIPE,
    RELEASE,
    build_otelcol,
    builder_manifest,
    otelcol_binary_path,
)

_CORE_V1 = {"confmap/provider/envprovider", "confmap/provider/fileprovider"}
_TYPE_SUFFIXES = ("receiver", "processor", "exporter", "extension")


def _manifest() -> dict:
    return yaml.safe_load(builder_manifest(Path("/cache/dist"), Path("/cache/marker")))


def _component_type(module: str) -> str:
    """The component type a contrib/core module registers (``.../kafkareceiver`` -> kafka)."""
    name = module.rsplit("/", 1)[1]
    for suffix in _TYPE_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def test_manifest_lists_every_component_once_under_its_kind() -> None:
    manifest = _manifest()
    assert manifest["dist"]["output_path"] == "/cache/dist"
    for component in COMPONENTS:
        entries = [entry["gomod"] for entry in manifest[component.kind]]
        assert entries.count(f"{component.module} v{component.version}") == 1


def test_every_collector_module_is_at_one_release() -> None:
    for entry in (e for kind in ("receivers", "processors", "exporters", "providers")
                  for e in _manifest()[kind]):  # fmt: skip
        module, version = entry["gomod"].split()
        if any(module.endswith(path) for path in _CORE_V1):
            assert version == f"v{CORE_STABLE}", module
        else:
            assert version == f"v{RELEASE}", module
    assert RELEASE.startswith("0.") and CORE_STABLE.startswith("1.")


def test_the_local_product_marker_is_a_replaced_extension() -> None:
    (entry,) = _manifest()["extensions"]
    assert entry == {"gomod": f"{PRODUCT_MARKER_MODULE} v0.0.0", "path": "/cache/marker"}
    go_mod = (RECIPE / PRODUCT_MARKER / "go.mod").read_text()
    assert go_mod.startswith(f"module {PRODUCT_MARKER_MODULE}\n")
    # Its collector dependencies are the build's release, or the build would not resolve.
    for required in re.findall(r"go\.opentelemetry\.io/collector/\S+ (v\S+)", go_mod):
        assert required in {f"v{CORE_STABLE}", f"v{RELEASE}"}


def test_binary_lives_in_the_release_folder_of_the_cache() -> None:
    path = otelcol_binary_path(Path("/c"))
    assert path == Path(f"/c/otelcol-{RELEASE}/otelcol-grayscope")


def test_a_cached_binary_is_returned_without_go(tmp_path: Path) -> None:
    binary = otelcol_binary_path(tmp_path)
    binary.parent.mkdir(parents=True)
    binary.write_bytes(b"")
    assert build_otelcol(tmp_path, go="no-such-go-on-path") == binary


def test_a_cold_build_without_go_says_so(tmp_path: Path) -> None:
    with pytest.raises(otelcol.ServiceError, match="needs Go"):
        build_otelcol(tmp_path, go="no-such-go-on-path")


def test_config_uses_only_components_the_build_has() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    built = {_component_type(c.module) for c in COMPONENTS} | {PRODUCT_MARKER}
    for section in ("receivers", "processors", "exporters", "extensions"):
        for name in config.get(section) or {}:
            assert name.split("/", 1)[0] in built, name
    pipeline = config["service"]["pipelines"]["logs"]
    assert pipeline["receivers"] == ["kafka"]
    assert pipeline["processors"][:3] == ["transform/parse", "geoip", "transform/document"]
    assert pipeline["exporters"] == ["elasticsearch"]
    assert config["service"]["extensions"] == [PRODUCT_MARKER]
    assert config["exporters"]["elasticsearch"]["auth"]["authenticator"] == PRODUCT_MARKER


def test_config_environment_is_exactly_what_the_bench_sets() -> None:
    env = collector_env(
        bootstrap="127.0.0.1:1",
        topic="t",
        group="g",
        opensearch_url="http://127.0.0.1:2",
        index="i",
        geoip_db="/x.mmdb",
        metrics_port=3,
    )
    assert config_env_names(CONFIG.read_text()) == set(env)


def test_document_fields_the_config_writes_are_grayscope_fields() -> None:
    from schemas import access_fields

    written = set(re.findall(r'body\["([^"]+)"\]', CONFIG.read_text()))
    assert written, "the config writes no document field"
    assert written <= set(access_fields()), written - set(access_fields())


def test_field_agreement_matches_documents_by_request_id() -> None:
    ours: list[dict[str, Any]] = [
        {"http": {"request": {"id": "a", "method": "GET"}}, "gray": {"stage": "canary"}},
        {"http": {"request": {"id": "b", "method": "GET"}}, "gray": {"stage": "stable"}},
        {"http": {"request": {"id": "only-ours", "method": "PUT"}}},
    ]
    theirs = [
        {"http.request.id": "a", "http.request.method": "GET", "gray.stage": "stable"},
        {"http.request.id": "b", "http.request.method": "GET"},
    ]
    agreement = field_agreement(ours, theirs)
    assert agreement["http.request.method"] == {"grayscope": 2, "collector": 2, "same": 2}
    assert agreement["gray.stage"] == {"grayscope": 2, "collector": 1, "same": 0}


def test_field_agreement_compares_instants_and_locations_by_value() -> None:
    ours = [
        {
            "@timestamp": "2026-11-20T12:00:00.000Z",
            "http": {"request": {"id": "a"}},
            "client": {"geo": {"location": {"lat": 1.5, "lon": 2.0}}},
        }
    ]
    theirs = [
        {
            "@timestamp": "2026-11-20T12:00:00+00:00",
            "http.request.id": "a",
            "client.geo.location": {"lat": 1.5, "lon": 2},
        }
    ]
    agreement = field_agreement(ours, theirs)
    assert agreement["@timestamp"]["same"] == 1
    assert agreement["client.geo.location"]["same"] == 1

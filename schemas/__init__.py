"""The single source of field names: documents, templates, spans.

``access_fields.json`` lists every document field with its Elasticsearch
mapping; the component/index templates under ``templates/`` are generated
from it (``python -m schemas`` rewrites them, a test proves they are current).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
TEMPLATES_DIR = HERE / "templates"

DATA_STREAM_NAME = "logs-grayscope.access-default"
DAILY_INDEX_PREFIX = "grayscope-access-"
MAPPINGS_COMPONENT = "grayscope-access-mappings"
SETTINGS_COMPONENT = "grayscope-access-settings"
DATA_STREAM_TEMPLATE = "grayscope-access-data-stream"
DAILY_INDEX_TEMPLATE = "grayscope-access-daily"

#: Replicas of every index grayscope's templates create (the data stream's backing
#: indices, the daily indices, the verdicts): none on one data node, one on two or more,
#: as Elasticsearch's own data-stream templates (ilm-history, ...) do. With the
#: store's default of one replica, a single node could never place it and the index
#: would stay yellow for ever. Elasticsearch 8 and OpenSearch 2 both take it; a fixed
#: count needs ``auto_expand_replicas: false`` next to it (README, "Replicas").
AUTO_EXPAND_REPLICAS = "0-1"


@cache
def access_fields() -> dict[str, dict[str, Any]]:
    """Dotted field name -> Elasticsearch mapping of that leaf."""
    data = json.loads((HERE / "access_fields.json").read_text())
    fields: dict[str, dict[str, Any]] = data["fields"]
    return fields


@cache
def span_attributes() -> dict[str, str]:
    """Span attribute name -> OTLP value kind (string/int/double/bool)."""
    attrs: dict[str, str] = json.loads((HERE / "span_attributes.json").read_text())["attributes"]
    return attrs


@cache
def span_resource_attributes() -> dict[str, str]:
    attrs: dict[str, str] = json.loads((HERE / "span_attributes.json").read_text())["resource"]
    return attrs


def nested_properties(fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Turn dotted leaves into nested ``properties`` objects."""
    root: dict[str, Any] = {}
    for dotted, mapping in fields.items():
        node = root
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {"properties": {}})["properties"]
        node[parts[-1]] = dict(mapping)
    return root


def build_templates() -> dict[str, dict[str, Any]]:
    """File name -> template body, for every template grayscope installs."""
    mappings = {
        "template": {
            "mappings": {
                # Unknown fields are a bug in grayscope, not data: keep them out of the mapping.
                "dynamic": False,
                "date_detection": False,
                "properties": nested_properties(access_fields()),
            }
        },
        "_meta": {"managed_by": "grayscope", "description": "grayscope enriched access documents"},
    }
    settings = {
        "template": {
            "settings": {
                "index": {
                    "refresh_interval": "5s",
                    "codec": "best_compression",
                    "auto_expand_replicas": AUTO_EXPAND_REPLICAS,
                }
            }
        },
        "_meta": {"managed_by": "grayscope"},
    }
    composed = [SETTINGS_COMPONENT, MAPPINGS_COMPONENT]
    data_stream = {
        "index_patterns": ["logs-grayscope.access-*"],
        "data_stream": {},
        # Above the built-in logs-*-* template (priority 100).
        "priority": 200,
        "composed_of": composed,
        "_meta": {"managed_by": "grayscope"},
    }
    daily = {
        "index_patterns": [f"{DAILY_INDEX_PREFIX}*"],
        "priority": 200,
        "composed_of": composed,
        "_meta": {"managed_by": "grayscope"},
    }
    return {
        f"component-{SETTINGS_COMPONENT}.json": settings,
        f"component-{MAPPINGS_COMPONENT}.json": mappings,
        f"index-{DATA_STREAM_TEMPLATE}.json": data_stream,
        f"index-{DAILY_INDEX_TEMPLATE}.json": daily,
        **verdict_templates(),
    }


def component_templates() -> dict[str, dict[str, Any]]:
    """Component template name -> body."""
    return {
        name.removeprefix("component-").removesuffix(".json"): body
        for name, body in build_templates().items()
        if name.startswith("component-")
    }


def index_templates() -> dict[str, dict[str, Any]]:
    """Index template name -> body."""
    return {
        name.removeprefix("index-").removesuffix(".json"): body
        for name, body in build_templates().items()
        if name.startswith("index-")
    }


def write_templates() -> None:
    TEMPLATES_DIR.mkdir(exist_ok=True)
    for name, body in build_templates().items():
        (TEMPLATES_DIR / name).write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")


# --- canary verdicts (grayscope-verdicts) ------------------------------------

VERDICTS_INDEX = "grayscope-verdicts"
VERDICTS_TEMPLATE = "grayscope-verdicts"


@cache
def verdict_fields() -> dict[str, dict[str, Any]]:
    """Dotted field name -> Elasticsearch mapping of a ``grayscope-verdicts`` document."""
    data = json.loads((HERE / "verdict_fields.json").read_text())
    fields: dict[str, dict[str, Any]] = data["fields"]
    return fields


def verdict_templates() -> dict[str, dict[str, Any]]:
    """File name -> body of the verdicts index template (part of ``build_templates``)."""
    template = {
        "index_patterns": [VERDICTS_INDEX],
        "priority": 200,
        "template": {
            # A few documents per path group and window: one shard is plenty.
            "settings": {
                "index": {
                    "number_of_shards": 1,
                    "refresh_interval": "5s",
                    "auto_expand_replicas": AUTO_EXPAND_REPLICAS,
                }
            },
            "mappings": {
                "dynamic": False,
                "date_detection": False,
                "properties": nested_properties(verdict_fields()),
            },
        },
        "_meta": {"managed_by": "grayscope", "description": "grayscope canary verdicts"},
    }
    return {f"index-{VERDICTS_TEMPLATE}.json": template}

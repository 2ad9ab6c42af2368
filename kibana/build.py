"""Generate ``kibana/grayscope.ndjson``: data view, Lens visualizations, map, dashboard.

Run ``python kibana/build.py`` after changing anything here; a unit test fails
while the committed NDJSON differs from what this script renders.

Why a generator instead of a Kibana export: the ids, the layer/column ids and
the references between objects must agree exactly, and every field name must
come from ``schemas/access_fields.json``. Ids are fixed strings or uuid5s of
fixed names, so the output is byte-for-byte reproducible.

Target: Kibana 8.9 or later. Every object carries ``coreMigrationVersion`` and
``typeMigrationVersion`` matching the shape written here (Lens ``formBased``
datasource, by-reference dashboard panels, options-list control group), so on
import Kibana only runs the migrations that came after it, never the legacy ones.

Lens formulas are stored the way the Lens editor stores them: the formula
column plus its hidden helper columns (``<id>X0``, ``<id>X1`` ... with a
tinymath AST in the ``math`` column). Lens renders from the helper columns, so
a formula column without them would show nothing.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

from schemas import (
    DAILY_INDEX_PREFIX,
    DATA_STREAM_NAME,
    VERDICTS_INDEX,
    access_fields,
    verdict_fields,
)

OUT = Path(__file__).with_name("grayscope.ndjson")

CORE_MIGRATION_VERSION = "8.8.0"
TYPE_MIGRATION_VERSION = {
    "index-pattern": "7.11.0",
    "lens": "8.9.0",
    "map": "8.1.0",
    "dashboard": "8.9.0",
}
PANEL_VERSION = "8.9.0"

NAMESPACE = uuid.UUID("6f1d8a52-3c55-4f0b-9a41-8d7f3e2b9c10")
RECORDS = "___records___"  # Lens' pseudo field for count()

DATA_VIEW_ID = "grayscope-access"
# The data stream (logs-grayscope.access-default) and the daily indices.
DATA_VIEW_PATTERN = f"{DATA_STREAM_NAME.rsplit('-', 1)[0]}-*,{DAILY_INDEX_PREFIX}*"
TIME_FIELD = "@timestamp"

ERROR_KQL = "http.response.status_code >= 500"
DURATION = "event.duration"  # nanoseconds (ECS)
NS_PER_MS = 1_000_000

KUERY_EMPTY = {"query": "", "language": "kuery"}


def uid(*parts: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "/".join(parts)))


def field(name: str) -> str:
    """A document field; fails the build if the schema does not have it."""
    if name not in access_fields():
        raise SystemExit(f"kibana/build.py: {name!r} is not in schemas/access_fields.json")
    return name


def dumps(value: Any) -> str:
    """JSON text for the ``*JSON`` string attributes Kibana stores."""
    return json.dumps(value, separators=(",", ":"), sort_keys=False)


# --------------------------------------------------------------------------
# Lens columns
# --------------------------------------------------------------------------


class Layer:
    """One formBased Lens layer: columns keyed by id, in insertion order."""

    def __init__(self, vis_id: str) -> None:
        self.id = uid(vis_id, "layer")
        self.columns: dict[str, dict[str, Any]] = {}

    def col_id(self, key: str) -> str:
        return uid(self.id, key)

    def put(self, col_id: str, column: dict[str, Any]) -> str:
        self.columns[col_id] = column
        return col_id

    def state(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "columnOrder": list(self.columns),
            "incompleteColumns": {},
        }

    def reference(self) -> dict[str, str]:
        return {
            "type": "index-pattern",
            "id": DATA_VIEW_ID,
            "name": f"indexpattern-datasource-layer-{self.id}",
        }

    # -- bucket columns ------------------------------------------------------

    def date_histogram(self) -> str:
        return self.put(
            self.col_id("date"),
            {
                "label": TIME_FIELD,
                "dataType": "date",
                "operationType": "date_histogram",
                "sourceField": field(TIME_FIELD),
                "isBucketed": True,
                "scale": "interval",
                "params": {"interval": "auto", "includeEmptyRows": True, "dropPartials": False},
            },
        )

    def terms(
        self, name: str, *, size: int, order_by: str | None, label: str, other: bool = True
    ) -> str:
        order: dict[str, Any] = (
            {"type": "column", "columnId": order_by}
            if order_by
            else {"type": "alphabetical", "fallback": False}
        )
        return self.put(
            self.col_id(f"terms:{name}"),
            {
                "label": label,
                "customLabel": True,
                "dataType": "string",
                "operationType": "terms",
                "sourceField": field(name),
                "isBucketed": True,
                "scale": "ordinal",
                "params": {
                    "size": size,
                    "orderBy": order,
                    "orderDirection": "desc" if order_by else "asc",
                    "otherBucket": other,
                    "missingBucket": False,
                    "parentFormat": {"id": "terms"},
                    "include": [],
                    "exclude": [],
                    "includeIsRegex": False,
                    "excludeIsRegex": False,
                },
            },
        )

    # -- metric columns -----------------------------------------------------

    def count(self, key: str = "count", label: str = "Requests") -> str:
        return self.put(self.col_id(key), _count_column(label, kql=None))

    def unique_count(self, name: str, label: str) -> str:
        return self.put(
            self.col_id(f"unique:{name}"),
            {
                "label": label,
                "customLabel": True,
                "dataType": "number",
                "operationType": "unique_count",
                "sourceField": field(name),
                "isBucketed": False,
                "scale": "ratio",
                "params": {"emptyAsNull": True},
            },
        )

    def error_rate(self, key: str = "error_rate", label: str = "5xx share") -> str:
        """``count(kql='status >= 500') / count()`` as a Lens formula."""
        text = f"count(kql='{ERROR_KQL}') / count()"
        base = self.col_id(key)
        part = f"Part of {label}"
        x0 = self.put(f"{base}X0", _count_column(part, kql=ERROR_KQL))
        x1 = self.put(f"{base}X1", _count_column(part, kql=None))
        x2 = self.put(f"{base}X2", _math_column(part, _divide(x0, x1, text), [x0, x1]))
        return self.put(
            base,
            _formula_column(label, text, x2, {"id": "percent", "params": {"decimals": 2}}),
        )

    def percentile_ms(self, percentile: int) -> str:
        """``percentile(event.duration, percentile=N) / 1000000``: nanoseconds shown as ms."""
        label = f"p{percentile} (ms)"
        text = f"percentile({DURATION}, percentile={percentile}) / {NS_PER_MS}"
        base = self.col_id(f"p{percentile}")
        part = f"Part of {label}"
        x0 = self.put(
            f"{base}X0",
            {
                "label": part,
                "customLabel": True,
                "dataType": "number",
                "operationType": "percentile",
                "sourceField": field(DURATION),
                "isBucketed": False,
                "scale": "ratio",
                "params": {"percentile": percentile},
            },
        )
        x1 = self.put(f"{base}X1", _math_column(part, _divide(x0, NS_PER_MS, text), [x0]))
        return self.put(
            base,
            _formula_column(
                label, text, x1, {"id": "number", "params": {"decimals": 1, "suffix": " ms"}}
            ),
        )


def _count_column(label: str, *, kql: str | None) -> dict[str, Any]:
    column: dict[str, Any] = {
        "label": label,
        "customLabel": True,
        "dataType": "number",
        "operationType": "count",
        "sourceField": RECORDS,
        "isBucketed": False,
        "scale": "ratio",
        "params": {"emptyAsNull": False},
    }
    if kql is not None:
        column["filter"] = {"query": kql, "language": "kuery"}
    return column


def _divide(left: str, right: str | int, text: str) -> dict[str, Any]:
    return {
        "type": "function",
        "name": "divide",
        "args": [left, right],
        "location": {"min": 0, "max": len(text)},
        "text": text,
    }


def _math_column(label: str, ast: dict[str, Any], refs: list[str]) -> dict[str, Any]:
    return {
        "label": label,
        "customLabel": True,
        "dataType": "number",
        "operationType": "math",
        "isBucketed": False,
        "scale": "ratio",
        "params": {"tinymathAst": ast},
        "references": refs,
    }


def _formula_column(label: str, text: str, math_ref: str, fmt: dict[str, Any]) -> dict[str, Any]:
    return {
        "label": label,
        "customLabel": True,
        "dataType": "number",
        "operationType": "formula",
        "isBucketed": False,
        "scale": "ratio",
        "params": {"formula": text, "isFormulaBroken": False, "format": fmt},
        "references": [math_ref],
    }


# --------------------------------------------------------------------------
# Lens visualizations
# --------------------------------------------------------------------------

_AXES = {"x": True, "yLeft": True, "yRight": True}


def _xy(
    layer: Layer,
    *,
    series: str,
    x: str,
    accessors: list[str],
    split: str | None = None,
    y_title: str | None = None,
    legend: str = "right",
) -> dict[str, Any]:
    data_layer: dict[str, Any] = {
        "layerId": layer.id,
        "layerType": "data",
        "seriesType": series,
        "xAccessor": x,
        "accessors": accessors,
    }
    if split:
        data_layer["splitAccessor"] = split
    state: dict[str, Any] = {
        "legend": {"isVisible": True, "position": legend},
        "valueLabels": "hide",
        "fittingFunction": "None",
        "preferredSeriesType": series,
        "axisTitlesVisibilitySettings": dict(_AXES),
        "tickLabelsVisibilitySettings": dict(_AXES),
        "gridlinesVisibilitySettings": dict(_AXES),
        "labelsOrientation": {"x": 0, "yLeft": 0, "yRight": 0},
        "yLeftExtent": {"mode": "full"},
        "yRightExtent": {"mode": "full"},
        "layers": [data_layer],
    }
    if y_title:
        state["yTitle"] = y_title
    return state


def _lens(
    vis_id: str, title: str, description: str, vis_type: str, layer: Layer, state: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": vis_id,
        "type": "lens",
        "attributes": {
            "title": title,
            "description": description,
            "visualizationType": vis_type,
            "state": {
                "datasourceStates": {"formBased": {"layers": {layer.id: layer.state()}}},
                "visualization": state,
                "query": dict(KUERY_EMPTY),
                "filters": [],
                "internalReferences": [],
                "adHocDataViews": {},
            },
        },
        "references": [layer.reference()],
    }


def lens_metric(vis_id: str, title: str, description: str, make: str) -> dict[str, Any]:
    layer = Layer(vis_id)
    metric = getattr(layer, make)()
    state = {"layerId": layer.id, "layerType": "data", "metricAccessor": metric}
    return _lens(vis_id, title, description, "lnsMetric", layer, state)


def lens_metric_unique_gray_ids(vis_id: str) -> dict[str, Any]:
    layer = Layer(vis_id)
    metric = layer.unique_count("gray.id", "Active gray ids")
    state = {"layerId": layer.id, "layerType": "data", "metricAccessor": metric}
    return _lens(
        vis_id, "Active gray ids", "Distinct gray.id values seen", "lnsMetric", layer, state
    )


def lens_p95_metric(vis_id: str) -> dict[str, Any]:
    layer = Layer(vis_id)
    metric = layer.percentile_ms(95)
    state = {"layerId": layer.id, "layerType": "data", "metricAccessor": metric}
    return _lens(
        vis_id, "Latency p95", "95th percentile of event.duration", "lnsMetric", layer, state
    )


def lens_requests_by_path_group(vis_id: str) -> dict[str, Any]:
    layer = Layer(vis_id)
    date = layer.date_histogram()
    count = layer.count()
    split = layer.terms("gray.path_group", size=10, order_by=count, label="Path group")
    # Keep bucket columns first, metrics after, as the Lens editor does.
    layer.columns = {k: layer.columns[k] for k in (date, split, count)}
    state = _xy(layer, series="bar_stacked", x=date, accessors=[count], split=split)
    return _lens(
        vis_id,
        "Requests over time by path group",
        "Request count per gray.path_group",
        "lnsXY",
        layer,
        state,
    )


def lens_error_rate_by(vis_id: str, name: str, label: str) -> dict[str, Any]:
    layer = Layer(vis_id)
    date = layer.date_histogram()
    split = layer.terms(name, size=10, order_by=None, label=label, other=False)
    rate = layer.error_rate()
    state = _xy(layer, series="line", x=date, accessors=[rate], split=split, y_title="5xx share")
    return _lens(
        vis_id,
        f"Error rate (5xx share) by {label.lower()}",
        f"count(5xx) / count() per {name}",
        "lnsXY",
        layer,
        state,
    )


def lens_latency_by_stage(vis_id: str) -> dict[str, Any]:
    layer = Layer(vis_id)
    date = layer.date_histogram()
    split = layer.terms("gray.stage", size=5, order_by=None, label="Stage", other=False)
    accessors = [layer.percentile_ms(p) for p in (50, 95, 99)]
    state = _xy(layer, series="line", x=date, accessors=accessors, split=split, y_title="ms")
    return _lens(
        vis_id,
        "Latency p50 / p95 / p99 by stage",
        "Percentiles of event.duration (nanoseconds) shown in milliseconds",
        "lnsXY",
        layer,
        state,
    )


def lens_countries(vis_id: str) -> dict[str, Any]:
    layer = Layer(vis_id)
    count = layer.count()
    country = layer.terms("client.geo.country_name", size=15, order_by=count, label="Country")
    layer.columns = {k: layer.columns[k] for k in (country, count)}
    state = _xy(layer, series="bar_horizontal", x=country, accessors=[count], legend="bottom")
    state["legend"]["isVisible"] = False
    return _lens(
        vis_id,
        "Requests by client country",
        "Top client.geo.country_name values",
        "lnsXY",
        layer,
        state,
    )


def lens_top_gray_ids(vis_id: str) -> dict[str, Any]:
    layer = Layer(vis_id)
    count = layer.count()
    gray = layer.terms("gray.id", size=20, order_by=count, label="Gray id", other=False)
    rate = layer.error_rate()
    p95 = layer.percentile_ms(95)
    first = [gray, count]
    layer.columns = {
        **{k: layer.columns[k] for k in first},
        **{k: v for k, v in layer.columns.items() if k not in first},
    }
    state = {
        "layerId": layer.id,
        "layerType": "data",
        "columns": [{"columnId": c, "isTransposed": False} for c in (gray, count, rate, p95)],
        "sorting": {"columnId": count, "direction": "desc"},
        "rowHeight": "single",
        "rowHeightLines": 1,
    }
    return _lens(
        vis_id,
        "Top gray ids",
        "Busiest experiments with their 5xx share and p95 latency",
        "lnsDatatable",
        layer,
        state,
    )


# --------------------------------------------------------------------------
# Canary verdicts (their own index and data view)
# --------------------------------------------------------------------------

VERDICTS_DATA_VIEW_ID = "grayscope-verdicts"


def verdict_field(name: str) -> str:
    """A verdict document field; fails the build if the verdict schema does not have it."""
    if name not in verdict_fields():
        raise SystemExit(f"kibana/build.py: {name!r} is not in schemas/verdict_fields.json")
    return name


class VerdictLayer(Layer):
    """A Lens layer over the ``grayscope-verdicts`` data view."""

    def reference(self) -> dict[str, str]:
        return {**super().reference(), "id": VERDICTS_DATA_VIEW_ID}

    def path_groups(self, size: int) -> str:
        return self.put(
            self.col_id("terms:gray.path_group"),
            {
                "label": "Path group",
                "customLabel": True,
                "dataType": "string",
                "operationType": "terms",
                "sourceField": verdict_field("gray.path_group"),
                "isBucketed": True,
                "scale": "ordinal",
                "params": {
                    "size": size,
                    "orderBy": {"type": "alphabetical", "fallback": False},
                    "orderDirection": "asc",
                    "otherBucket": False,
                    "missingBucket": False,
                    "parentFormat": {"id": "terms"},
                    "include": [],
                    "exclude": [],
                    "includeIsRegex": False,
                    "excludeIsRegex": False,
                },
            },
        )

    def last_value(
        self, name: str, label: str, *, number: dict[str, Any] | None = None, arrays: bool = False
    ) -> str:
        """The value of the newest verdict (by ``@timestamp``, i.e. its window) in the bucket."""
        params: dict[str, Any] = {
            "sortField": verdict_field(TIME_FIELD),
            "showArrayValues": arrays,
        }
        if number is not None:
            params["format"] = number
        return self.put(
            self.col_id(f"last:{name}"),
            {
                "label": label,
                "customLabel": True,
                "dataType": "number" if number is not None else "string",
                "operationType": "last_value",
                "sourceField": verdict_field(name),
                "isBucketed": False,
                "scale": "ratio" if number is not None else "ordinal",
                # Only verdicts that have the value, so a sparse one does not blank it.
                "filter": {"query": f"{name}: *", "language": "kuery"},
                "params": params,
            },
        )


PERCENT = {"id": "percent", "params": {"decimals": 2}}


def lens_canary_verdicts(vis_id: str) -> dict[str, Any]:
    layer = VerdictLayer(vis_id)
    group = layer.path_groups(size=50)
    columns = [
        group,
        layer.last_value("verdict.decision", "Verdict"),
        layer.last_value("verdict.canary.requests", "Canary requests", number=_NUMBER0),
        layer.last_value("verdict.canary.error_rate", "Canary 5xx", number=PERCENT),
        layer.last_value("verdict.stable.error_rate", "Stable 5xx", number=PERCENT),
        layer.last_value("verdict.rule", "Rule"),
        layer.last_value("verdict.evidence.rollout_e_value", "Rollout evidence", number=_NUMBER4),
        layer.last_value("verdict.evidence.threshold", "1/alpha", number=_NUMBER0),
        layer.last_value("verdict.effect.rate_ratio", "5xx rate ratio", number=_NUMBER4),
        layer.last_value("verdict.effect.rate_ratio_upper", "ratio upper", number=_NUMBER4),
        layer.last_value("verdict.effect.p95_delta_ms", "p95 delta (ms)", number=_MS),
        layer.last_value("verdict.effect.p95_delta_upper_ms", "p95 delta upper", number=_MS),
        layer.last_value(
            "verdict.rollout.more_canary_requests", "More canary requests", number=_NUMBER0
        ),
        layer.last_value("verdict.reasons", "Reasons", arrays=True),
    ]
    state = {
        "layerId": layer.id,
        "layerType": "data",
        "columns": [{"columnId": c, "isTransposed": False} for c in columns],
        "sorting": {"columnId": group, "direction": "asc"},
        "rowHeight": "auto",
        "rowHeightLines": 3,
    }
    return _lens(
        vis_id,
        "Canary verdicts (latest per path group)",
        "promote / hold / rollback / insufficient_data from the canary analysis: "
        "two-proportion Z-test on the 5xx rate and the p95 latency delta",
        "lnsDatatable",
        layer,
        state,
    )


_NUMBER0 = {"id": "number", "params": {"decimals": 0}}
_NUMBER4 = {"id": "number", "params": {"decimals": 4}}
_MS = {"id": "number", "params": {"decimals": 1, "suffix": " ms"}}


def verdicts_data_view() -> dict[str, Any]:
    formats = {
        verdict_field("verdict.canary.error_rate"): PERCENT,
        verdict_field("verdict.stable.error_rate"): PERCENT,
    }
    return {
        "id": VERDICTS_DATA_VIEW_ID,
        "type": "index-pattern",
        "attributes": {
            "title": VERDICTS_INDEX,
            "name": "grayscope canary verdicts",
            "timeFieldName": verdict_field(TIME_FIELD),
            "fieldFormatMap": dumps(formats),
            "fields": "[]",
            "fieldAttrs": "{}",
            "runtimeFieldMap": "{}",
            "sourceFilters": "[]",
            "typeMeta": "{}",
            "allowNoIndex": True,
        },
        "references": [],
    }


# --------------------------------------------------------------------------
# Data view, map, dashboard
# --------------------------------------------------------------------------


def data_view() -> dict[str, Any]:
    formats = {
        field(DURATION): {
            "id": "duration",
            "params": {
                "inputFormat": "nanoseconds",
                "outputFormat": "asMilliseconds",
                "outputPrecision": 1,
            },
        }
    }
    return {
        "id": DATA_VIEW_ID,
        "type": "index-pattern",
        "attributes": {
            "title": DATA_VIEW_PATTERN,
            "name": "grayscope access",
            "timeFieldName": field(TIME_FIELD),
            "fieldFormatMap": dumps(formats),
            "fields": "[]",
            "fieldAttrs": "{}",
            "runtimeFieldMap": "{}",
            "sourceFilters": "[]",
            "typeMeta": "{}",
            "allowNoIndex": True,
        },
        "references": [],
    }


def map_object(map_id: str) -> dict[str, Any]:
    """Countries shaded by request count (ISO code join) + clustered client locations."""
    join_source = uid(map_id, "country-join")
    grid_source = uid(map_id, "client-grid")
    basemap = {
        "id": uid(map_id, "basemap"),
        "type": "EMS_VECTOR_TILE",
        "label": None,
        "minZoom": 0,
        "maxZoom": 24,
        "alpha": 1,
        "visible": True,
        "includeInFitToBounds": True,
        "sourceDescriptor": {
            "type": "EMS_TMS",
            "isAutoSelect": True,
            "lightModeDefault": "road_map_desaturated",
        },
        "style": {"type": "EMS_VECTOR_TILE", "color": ""},
    }
    countries = {
        "id": uid(map_id, "countries"),
        "type": "GEOJSON_VECTOR",
        "label": "Requests by country",
        "minZoom": 0,
        "maxZoom": 24,
        "alpha": 0.6,
        "visible": True,
        "includeInFitToBounds": True,
        "sourceDescriptor": {
            "type": "EMS_FILE",
            "id": "world_countries",
            "tooltipProperties": ["name", "iso2"],
        },
        "joins": [
            {
                "leftField": "iso2",
                "right": {
                    "type": "ES_TERM_SOURCE",
                    "id": join_source,
                    "term": field("client.geo.country_iso_code"),
                    "metrics": [{"type": "count"}],
                    "applyGlobalQuery": True,
                    "applyGlobalTime": True,
                    "applyForceRefresh": True,
                    # extracted into references[] as layer_1_join_0_index_pattern
                    "indexPatternRefName": "layer_1_join_0_index_pattern",
                },
            }
        ],
        "style": {
            "type": "VECTOR",
            "isTimeAware": True,
            "properties": {
                "fillColor": {
                    "type": "DYNAMIC",
                    "options": {
                        "color": "Blues",
                        "colorCategory": "palette_0",
                        "field": {"name": f"__kbnjoin__count__{join_source}", "origin": "join"},
                        "fieldMetaOptions": {"isEnabled": True, "sigma": 3},
                        "type": "ORDINAL",
                    },
                },
                "lineColor": {"type": "STATIC", "options": {"color": "#3d3d3d"}},
                "lineWidth": {"type": "STATIC", "options": {"size": 1}},
            },
        },
    }
    clients = {
        "id": uid(map_id, "clients"),
        "type": "GEOJSON_VECTOR",
        "label": "Client locations",
        "minZoom": 0,
        "maxZoom": 24,
        "alpha": 0.8,
        "visible": True,
        "includeInFitToBounds": True,
        "sourceDescriptor": {
            "type": "ES_GEO_GRID",
            "id": grid_source,
            "geoField": field("client.geo.location"),
            "requestType": "point",
            "resolution": "COARSE",
            "metrics": [{"type": "count"}],
            "applyGlobalQuery": True,
            "applyGlobalTime": True,
            "applyForceRefresh": True,
            "indexPatternRefName": "layer_2_source_index_pattern",
        },
        "style": {
            "type": "VECTOR",
            "isTimeAware": True,
            "properties": {
                "icon": {"type": "STATIC", "options": {"value": "marker"}},
                "symbolizeAs": {"options": {"value": "circle"}},
                "fillColor": {
                    "type": "DYNAMIC",
                    "options": {
                        "color": "Yellow to Red",
                        "colorCategory": "palette_0",
                        "field": {"name": "doc_count", "origin": "source"},
                        "fieldMetaOptions": {"isEnabled": True, "sigma": 3},
                        "type": "ORDINAL",
                    },
                },
                "lineColor": {"type": "STATIC", "options": {"color": "#FFFFFF"}},
                "lineWidth": {"type": "STATIC", "options": {"size": 0}},
                "iconSize": {
                    "type": "DYNAMIC",
                    "options": {
                        "minSize": 6,
                        "maxSize": 30,
                        "field": {"name": "doc_count", "origin": "source"},
                        "fieldMetaOptions": {"isEnabled": True, "sigma": 3},
                    },
                },
            },
        },
    }
    map_state = {
        "zoom": 1.4,
        "center": {"lon": 0, "lat": 20},
        "timeFilters": {"from": "now-1h", "to": "now"},
        "refreshConfig": {"isPaused": True, "interval": 0},
        "query": dict(KUERY_EMPTY),
        "filters": [],
        "settings": {"autoFitToDataBounds": False},
    }
    return {
        "id": map_id,
        "type": "map",
        "attributes": {
            "title": "Client locations",
            "description": "Requests by client country (ISO code) and client.geo.location",
            "mapStateJSON": dumps(map_state),
            "layerListJSON": dumps([basemap, countries, clients]),
            "uiStateJSON": dumps({"isLayerTOCOpen": True, "openTOCDetails": []}),
        },
        "references": [
            {"type": "index-pattern", "id": DATA_VIEW_ID, "name": "layer_1_join_0_index_pattern"},
            {"type": "index-pattern", "id": DATA_VIEW_ID, "name": "layer_2_source_index_pattern"},
        ],
    }


CONTROLS = (
    ("gray.path_group", "Path group"),
    ("gray.version", "Version"),
    ("gray.stage", "Stage"),
    ("client.geo.country_name", "Country"),
)


def dashboard(dash_id: str, panels: list[tuple[dict[str, Any], dict[str, int]]]) -> dict[str, Any]:
    panel_list = []
    references = []
    for obj, grid in panels:
        index = obj["id"]
        config: dict[str, Any] = {"enhancements": {}}
        if obj["type"] == "map":
            config.update(
                {
                    "isLayerTOCOpen": False,
                    "hiddenLayers": [],
                    "mapCenter": {"lat": 20, "lon": 0, "zoom": 1.4},
                    "openTOCDetails": [],
                }
            )
        panel_list.append(
            {
                "version": PANEL_VERSION,
                "type": obj["type"],
                "gridData": {**grid, "i": index},
                "panelIndex": index,
                "embeddableConfig": config,
                "panelRefName": f"panel_{index}",
            }
        )
        references.append({"type": obj["type"], "id": obj["id"], "name": f"{index}:panel_{index}"})

    controls = {}
    for order, (name, title) in enumerate(CONTROLS):
        control_id = uid(dash_id, "control", name)
        controls[control_id] = {
            "order": order,
            "width": "medium",
            "grow": True,
            "type": "optionsListControl",
            "explicitInput": {
                "id": control_id,
                "dataViewId": DATA_VIEW_ID,
                "fieldName": field(name),
                "title": title,
                "selectedOptions": [],
                "searchTechnique": "prefix",
                "sort": {"by": "_count", "direction": "desc"},
                "enhancements": {},
            },
        }
        references.append(
            {
                "type": "index-pattern",
                "id": DATA_VIEW_ID,
                "name": f"controlGroup_{control_id}:optionsListDataView",
            }
        )

    return {
        "id": dash_id,
        "type": "dashboard",
        "attributes": {
            "title": "grayscope: gray release overview",
            "description": "Traffic, errors and latency per gray id, version, stage and region",
            "timeRestore": True,
            "timeFrom": "now-1h",
            "timeTo": "now",
            "refreshInterval": {"pause": False, "value": 30_000},
            "optionsJSON": dumps(
                {
                    "useMargins": True,
                    "syncColors": True,
                    "syncCursor": True,
                    "syncTooltips": False,
                    "hidePanelTitles": False,
                }
            ),
            "panelsJSON": dumps(panel_list),
            "controlGroupInput": {
                "controlStyle": "oneLine",
                "chainingSystem": "HIERARCHICAL",
                "ignoreParentSettingsJSON": dumps(
                    {
                        "ignoreFilters": False,
                        "ignoreQuery": False,
                        "ignoreTimerange": False,
                        "ignoreValidations": False,
                    }
                ),
                "panelsJSON": dumps(controls),
            },
            "kibanaSavedObjectMeta": {
                "searchSourceJSON": dumps({"query": dict(KUERY_EMPTY), "filter": []})
            },
        },
        "references": references,
    }


def build_objects() -> list[dict[str, Any]]:
    """Every saved object, dependencies first (Kibana resolves references within a file)."""
    requests = lens_metric("grayscope-requests-total", "Requests", "All requests", "count")
    errors = lens_metric("grayscope-error-share", "5xx share", "count(5xx) / count()", "error_rate")
    p95 = lens_p95_metric("grayscope-latency-p95")
    gray_ids = lens_metric_unique_gray_ids("grayscope-active-gray-ids")
    by_path = lens_requests_by_path_group("grayscope-requests-by-path-group")
    err_stage = lens_error_rate_by("grayscope-error-rate-by-stage", "gray.stage", "Stage")
    err_version = lens_error_rate_by("grayscope-error-rate-by-version", "gray.version", "Version")
    latency = lens_latency_by_stage("grayscope-latency-by-stage")
    geo = map_object("grayscope-client-map")
    countries = lens_countries("grayscope-requests-by-country")
    top_ids = lens_top_gray_ids("grayscope-top-gray-ids")
    verdicts = lens_canary_verdicts("grayscope-canary-verdicts")

    layout = [
        (requests, {"x": 0, "y": 0, "w": 12, "h": 6}),
        (errors, {"x": 12, "y": 0, "w": 12, "h": 6}),
        (p95, {"x": 24, "y": 0, "w": 12, "h": 6}),
        (gray_ids, {"x": 36, "y": 0, "w": 12, "h": 6}),
        (by_path, {"x": 0, "y": 6, "w": 48, "h": 12}),
        (err_stage, {"x": 0, "y": 18, "w": 24, "h": 12}),
        (err_version, {"x": 24, "y": 18, "w": 24, "h": 12}),
        (latency, {"x": 0, "y": 30, "w": 48, "h": 13}),
        (geo, {"x": 0, "y": 43, "w": 28, "h": 16}),
        (countries, {"x": 28, "y": 43, "w": 20, "h": 16}),
        (top_ids, {"x": 0, "y": 59, "w": 48, "h": 14}),
        (verdicts, {"x": 0, "y": 73, "w": 48, "h": 14}),
    ]
    objects = [data_view(), verdicts_data_view(), *(obj for obj, _ in layout)]
    objects.append(dashboard("grayscope-overview", layout))
    for obj in objects:
        obj["coreMigrationVersion"] = CORE_MIGRATION_VERSION
        obj["typeMigrationVersion"] = TYPE_MIGRATION_VERSION[obj["type"]]
    return objects


def render() -> str:
    return "".join(json.dumps(obj, sort_keys=True) + "\n" for obj in build_objects())


def main() -> int:
    OUT.write_text(render())
    print(f"wrote {OUT} ({len(build_objects())} objects)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

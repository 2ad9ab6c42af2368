"""The enriched ECS document: a pure function of a record and its enrichment.

Field names are the contract in ``schemas/access_fields.json``; a test proves
this builder emits nothing that file does not map.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson

from pipeline.core import wire_function
from pipeline.core.formats.values import ns_to_iso
from pipeline.core.model import AccessRecord, AsnInfo, Enrichment, GeoInfo

_HTTP_VERSIONS: Final = {
    "HTTP/1.0": "1.0",
    "HTTP/1.1": "1.1",
    "HTTP/2": "2",
    "HTTP/2.0": "2",
    "HTTP/3": "3",
}


def http_version(protocol: str | None) -> str | None:
    if protocol is None:
        return None
    known = _HTTP_VERSIONS.get(protocol)
    if known is not None:
        return known
    return protocol[5:] if protocol.upper().startswith("HTTP/") else None


def build_document(
    rec: AccessRecord, enr: Enrichment, include_original: bool = False
) -> dict[str, Any]:
    """One ECS document; absent values are left out, never written as null.

    Documents may share sub-objects (``client.geo``, ``client.as``) with other
    documents: serialise them, never modify them.
    """
    return _document(rec, enr, include_original, False)


def _document(
    rec: AccessRecord, enr: Enrichment, include_original: bool, serialised: bool
) -> dict[str, Any]:
    """``build_document``; with ``serialised``, ``client.geo`` and ``client.as`` are
    the shared objects' JSON (``orjson.Fragment``): only for ``orjson.dumps``."""
    # Written for speed (it runs once per event): direct attribute reads into
    # locals, dict displays for the parts that are always there, and the
    # sub-objects only when they have something in them.
    event: dict[str, Any] = {"dataset": rec.dataset}
    value: Any = rec.duration_ns
    if value is not None:
        event["duration"] = value
    if include_original and rec.original is not None:
        event["original"] = rec.original
    timestamp_ns = rec.timestamp_ns
    doc: dict[str, Any] = (
        {"@timestamp": ns_to_iso(timestamp_ns), "event": event}
        if timestamp_ns is not None
        else {"event": event}
    )

    http: dict[str, Any] = {}
    method = rec.method
    request_id = rec.request_id
    if method is not None:
        http["request"] = (
            {"method": method} if request_id is None else {"method": method, "id": request_id}
        )
    elif request_id is not None:
        http["request"] = {"id": request_id}
    headers = rec.headers
    if headers:
        value = headers.get("referer")
        if value is not None:
            request = http.get("request")
            if request is None:
                http["request"] = {"referrer": value}
            else:
                request["referrer"] = value
    status = rec.status
    body_bytes = rec.bytes_sent
    if status is not None:
        http["response"] = (
            {"status_code": status}
            if body_bytes is None
            else {"status_code": status, "body": {"bytes": body_bytes}}
        )
    elif body_bytes is not None:
        http["response"] = {"body": {"bytes": body_bytes}}
    protocol = rec.protocol
    if protocol is not None:
        value = _HTTP_VERSIONS.get(protocol) or http_version(protocol)
        if value is not None:
            http["version"] = value
    value = enr.route
    if value is not None:
        http["route"] = value
    if http:
        doc["http"] = http

    uri = rec.uri
    if uri is not None:
        url: dict[str, Any] = {"original": uri}
        value = enr.url_path
        if value is not None:
            url["path"] = value
        value = enr.url_query
        if value is not None:
            url["query"] = value
        doc["url"] = url
    value = rec.user_agent
    if value is not None:
        doc["user_agent"] = {"original": value}
    value = rec.peer_addr
    if value is not None:
        doc["source"] = {"ip": value}

    client_ip = enr.client_ip
    if client_ip is not None:
        client: dict[str, Any] = {"ip": client_ip}
        geo = enr.geo
        if geo is not None:
            # Built once per GeoInfo (they come shared from the GeoIP cache), then
            # shared by every document of that client: documents are read-only.
            geo_json = _geo_json(geo)
            if geo_json is not None:
                client["geo"] = orjson.Fragment(geo_json) if serialised else geo.document
        asn = enr.asn
        if asn is not None:
            as_json = _as_json(asn)
            if as_json is not None:
                client["as"] = orjson.Fragment(as_json) if serialised else asn.document
        doc["client"] = client

    value = enr.trace_id
    if value is not None:
        doc["trace"] = {"id": value}
    value = enr.span_id
    if value is not None:
        doc["span"] = {"id": value}
    value = enr.service_name
    if value is not None:
        doc["service"] = {"name": value}
    upstream: dict[str, Any] = {}
    value = rec.upstream_cluster
    if value is not None:
        upstream["cluster"] = value
    value = rec.upstream_host
    if value is not None:
        upstream["address"] = value
    value = rec.upstream_status
    if value is not None:
        upstream["status_code"] = value
    value = rec.upstream_duration_ns
    if value is not None:
        upstream["duration"] = value
    if upstream:
        doc["upstream"] = upstream
    if rec.truncated or enr.truncated:
        # Which fields were cut at their limit (README, "Limits").
        doc["tags"] = [f"truncated_{name}" for name in (*rec.truncated, *enr.truncated)]

    gray_doc: dict[str, Any] = {"stage": enr.stage}
    value = enr.gray_id
    if value is not None:
        gray_doc["id"] = value
        gray_doc["id_source"] = enr.gray_id_source
    value = enr.version
    if value is not None:
        gray_doc["version"] = value
    value = enr.path_group
    if value is not None:
        gray_doc["path_group"] = value
    doc["gray"] = gray_doc
    return doc


# The C writer (pipeline/core/_wire.c); None where it is not built (or the plain-Python
# core is in use: pipeline.native.prefer_sources).
_NATIVE_DOCUMENT: Final[Callable[..., bytes] | None] = wire_function("document_json")


def document_source(rec: AccessRecord, enr: Enrichment, include_original: bool = False) -> bytes:
    """``build_document`` serialised (what the store gets), as soon as it is built.

    The worker keeps only these bytes: the dozen dicts of a document are walked by
    orjson while they are still in the CPU caches from being built, and freed right
    away, instead of all of a batch's documents being built, then serialised and
    freed a stage later, when they have left the caches (bench/README.md,
    "Session 10"). Raises orjson's error for what JSON cannot hold (an int beyond
    64 bits, a lone surrogate).

    Where the core is compiled, C writes the same bytes without the dicts
    (``pipeline/core/_wire.c``; bench/README.md, "Session 19"); what it does not
    take (truncation tags, anything unusual) it leaves to the dicts and orjson.
    """
    write = _NATIVE_DOCUMENT
    if write is not None and not rec.truncated and not enr.truncated:
        headers = rec.headers
        protocol = rec.protocol
        geo = enr.geo
        asn = enr.asn
        client_ip = enr.client_ip
        source = write(
            rec.timestamp_ns,  # written as ns_to_iso writes it
            rec.dataset,
            rec.duration_ns,
            rec.original if include_original else None,
            rec.method,
            rec.request_id,
            headers.get("referer") if headers else None,
            rec.status,
            rec.bytes_sent,
            None if protocol is None else _HTTP_VERSIONS.get(protocol) or http_version(protocol),
            enr.route,
            rec.uri,
            enr.url_path,
            enr.url_query,
            rec.user_agent,
            rec.peer_addr,
            client_ip,
            None if geo is None or client_ip is None else _geo_json(geo),
            None if asn is None or client_ip is None else _as_json(asn),
            enr.trace_id,
            enr.span_id,
            enr.service_name,
            rec.upstream_cluster,
            rec.upstream_host,
            rec.upstream_status,
            rec.upstream_duration_ns,
            enr.stage,
            enr.gray_id,
            enr.gray_id_source,
            enr.version,
            enr.path_group,
        )
        if source:
            return source
    return orjson.dumps(_document(rec, enr, include_original, True))


def _geo_json(geo: GeoInfo) -> bytes | None:
    """``client.geo`` as JSON, None when empty: built once per GeoInfo with its dict
    (measured: ~180 ns less per event with client.geo and client.as; bench/README.md,
    "Session 14")."""
    if geo.document is None:
        part = geo_document(geo)
        geo.document_json = orjson.dumps(part) if part else None  # first: it may raise
        geo.document = part
    return geo.document_json


def _as_json(asn: AsnInfo) -> bytes | None:
    """``client.as`` as JSON, None when empty (as ``_geo_json``)."""
    if asn.document is None:
        part = as_document(asn)
        asn.document_json = orjson.dumps(part) if part else None  # first: it may raise
        asn.document = part
    return asn.document_json


def geo_document(geo: GeoInfo) -> dict[str, Any]:
    """``client.geo``: the ECS geo fields that are known; location only when complete."""
    out: dict[str, Any] = {}
    if geo.country_iso_code is not None:
        out["country_iso_code"] = geo.country_iso_code
    if geo.country_name is not None:
        out["country_name"] = geo.country_name
    if geo.continent_code is not None:
        out["continent_code"] = geo.continent_code
    if geo.continent_name is not None:
        out["continent_name"] = geo.continent_name
    if geo.region_iso_code is not None:
        out["region_iso_code"] = geo.region_iso_code
    if geo.region_name is not None:
        out["region_name"] = geo.region_name
    if geo.city_name is not None:
        out["city_name"] = geo.city_name
    if geo.lat is not None and geo.lon is not None:
        out["location"] = {"lat": geo.lat, "lon": geo.lon}
    return out


def as_document(asn: AsnInfo) -> dict[str, Any]:
    """``client.as``: number and organization name, those that are known."""
    number, organization = asn.number, asn.organization
    out: dict[str, Any] = {}
    if number is not None:
        out["number"] = number
    if organization is not None:
        out["organization"] = {"name": organization}
    return out

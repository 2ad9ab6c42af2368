"""The enriched ECS document: a pure function of a record and its enrichment.

Field names are the contract in ``schemas/access_fields.json``; a test proves
this builder emits nothing that file does not map.
"""

from __future__ import annotations

from typing import Any

from pipeline.formats.values import ns_to_iso
from pipeline.model import AccessRecord, Enrichment

_HTTP_VERSIONS = {
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
    doc: dict[str, Any] = {}
    if rec.timestamp_ns is not None:
        doc["@timestamp"] = ns_to_iso(rec.timestamp_ns)
    event: dict[str, Any] = {"dataset": rec.dataset}
    if rec.duration_ns is not None:
        event["duration"] = rec.duration_ns
    if include_original and rec.original is not None:
        event["original"] = rec.original
    doc["event"] = event

    http: dict[str, Any] = {}
    request: dict[str, Any] = {}
    if rec.method is not None:
        request["method"] = rec.method
    if rec.request_id is not None:
        request["id"] = rec.request_id
    if request:
        http["request"] = request
    response: dict[str, Any] = {}
    if rec.status is not None:
        response["status_code"] = rec.status
    if rec.bytes_sent is not None:
        response["body"] = {"bytes": rec.bytes_sent}
    if response:
        http["response"] = response
    version = http_version(rec.protocol)
    if version is not None:
        http["version"] = version
    if enr.route is not None:
        http["route"] = enr.route
    if http:
        doc["http"] = http

    if rec.uri is not None:
        url: dict[str, Any] = {"original": rec.uri}
        if enr.url_path is not None:
            url["path"] = enr.url_path
        if enr.url_query is not None:
            url["query"] = enr.url_query
        doc["url"] = url
    if rec.user_agent is not None:
        doc["user_agent"] = {"original": rec.user_agent}
    if rec.peer_addr is not None:
        doc["source"] = {"ip": rec.peer_addr}

    if enr.client_ip is not None:
        client: dict[str, Any] = {"ip": enr.client_ip}
        geo = enr.geo
        if geo is not None:
            geo_doc: dict[str, Any] = {}
            if geo.country_iso_code is not None:
                geo_doc["country_iso_code"] = geo.country_iso_code
            if geo.country_name is not None:
                geo_doc["country_name"] = geo.country_name
            if geo.continent_code is not None:
                geo_doc["continent_code"] = geo.continent_code
            if geo.continent_name is not None:
                geo_doc["continent_name"] = geo.continent_name
            if geo.region_iso_code is not None:
                geo_doc["region_iso_code"] = geo.region_iso_code
            if geo.region_name is not None:
                geo_doc["region_name"] = geo.region_name
            if geo.city_name is not None:
                geo_doc["city_name"] = geo.city_name
            if geo.lat is not None and geo.lon is not None:
                geo_doc["location"] = {"lat": geo.lat, "lon": geo.lon}
            if geo_doc:
                client["geo"] = geo_doc
        asn = enr.asn
        if asn is not None and (asn.number is not None or asn.organization is not None):
            as_doc: dict[str, Any] = {}
            if asn.number is not None:
                as_doc["number"] = asn.number
            if asn.organization is not None:
                as_doc["organization"] = {"name": asn.organization}
            client["as"] = as_doc
        doc["client"] = client

    if enr.trace_id is not None:
        doc["trace"] = {"id": enr.trace_id}
    if enr.span_id is not None:
        doc["span"] = {"id": enr.span_id}
    if enr.service_name is not None:
        doc["service"] = {"name": enr.service_name}
    if rec.upstream_cluster is not None:
        doc["upstream"] = {"cluster": rec.upstream_cluster}

    gray_doc: dict[str, Any] = {"stage": enr.stage}
    if enr.gray_id is not None:
        gray_doc["id"] = enr.gray_id
        gray_doc["id_source"] = enr.gray_id_source
    if enr.version is not None:
        gray_doc["version"] = enr.version
    if enr.path_group is not None:
        gray_doc["path_group"] = enr.path_group
    doc["gray"] = gray_doc
    return doc

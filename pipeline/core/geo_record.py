"""A GeoIP database record as the model's ``GeoInfo``/``AsnInfo`` (pure; compiled).

``pipeline.geoip`` reads MaxMind-format records (plain dicts from ``maxminddb``'s C
reader) and maps each one here on every cache miss; on a stream of mostly new client
addresses that is nearly every event. Compiled with the rest of the core: a cache miss
of the resolver 12.53 -> 12.14 us with the GeoLite2-City database, of which decoding
the record in ``maxminddb`` is ~7.4 (bench/README.md, "Session 27").
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from pipeline.core.model import AsnInfo, GeoInfo

_NO_MAP: Final[Mapping[str, Any]] = MappingProxyType({})


def _coordinate(value: Any) -> float | None:
    if type(value) is float:
        return value
    if type(value) is int:  # not bool: bool is a subclass, not the same type
        return float(value)
    return None


def geo_from_record(record: Any) -> GeoInfo | None:
    """Map a GeoIP2/GeoLite2 City (or Country) record to ``GeoInfo``; None if it says nothing.

    Region is the first (least specific) subdivision, as Elasticsearch's and
    Logstash's geoip processors do: ``US-CA``, ``GB-ENG``. Values of the wrong
    type (a hand-made database) become None rather than a document the store
    rejects. Written flat, without helpers: it runs on every cache miss.
    """
    if not record:
        return None
    try:
        country = record.get("country") or _NO_MAP
        continent = record.get("continent") or _NO_MAP
        location = record.get("location") or _NO_MAP
        city = record.get("city") or _NO_MAP
        subdivisions = record.get("subdivisions")
        country_iso = country.get("iso_code")
        if type(country_iso) is not str:
            country_iso = None
        country_name = country.get("names", _NO_MAP).get("en")
        if type(country_name) is not str:
            country_name = None
        continent_code = continent.get("code")
        if type(continent_code) is not str:
            continent_code = None
        continent_name = continent.get("names", _NO_MAP).get("en")
        if type(continent_name) is not str:
            continent_name = None
        city_name = city.get("names", _NO_MAP).get("en")
        if type(city_name) is not str:
            city_name = None
        region_iso = region_name = None
        if subdivisions:
            first = subdivisions[0]
            sub_iso = first.get("iso_code")
            if country_iso and type(sub_iso) is str:
                region_iso = f"{country_iso}-{sub_iso}"
            region_name = first.get("names", _NO_MAP).get("en")
            if type(region_name) is not str:
                region_name = None
        lat = _coordinate(location.get("latitude"))
        lon = _coordinate(location.get("longitude"))
    except (AttributeError, TypeError, LookupError):
        return None  # not shaped like a MaxMind City record at all
    if lat is None or lon is None:
        lat = lon = None  # half a geo_point is rejected by the store
    if (
        country_iso is None
        and country_name is None
        and continent_code is None
        and continent_name is None
        and region_name is None
        and city_name is None
        and lat is None
    ):
        return None
    return GeoInfo(
        country_iso_code=country_iso,
        country_name=country_name,
        continent_code=continent_code,
        continent_name=continent_name,
        region_iso_code=region_iso,
        region_name=region_name,
        city_name=city_name,
        lat=lat,
        lon=lon,
    )


def asn_from_record(record: Any) -> AsnInfo | None:
    """Map a GeoLite2-ASN (or GeoIP2-ISP) record to ``AsnInfo``; None if it says nothing."""
    if not isinstance(record, dict):
        return None
    number = record.get("autonomous_system_number")
    if type(number) is not int:
        number = None
    organization = record.get("autonomous_system_organization")
    if type(organization) is not str:
        organization = None
    if number is None and organization is None:
        return None
    return AsnInfo(number=number, organization=organization)

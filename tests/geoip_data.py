"""Small GeoLite2-City / GeoLite2-ASN look-alike databases for tests.

The records have MaxMind's structure (``city.names.en``, ``continent.code``,
``country.iso_code``, ``location.latitude``, ``subdivisions[0].iso_code``, ...,
``autonomous_system_number``/``autonomous_system_organization``), the trees are
IPv6 with IPv4 under ``::/96`` (as in MaxMind's files), so both families work.

Most networks are real public blocks, with plausible but not authoritative
values. The documentation ranges 192.0.2.0/24 and 198.51.100.0/24 are in too,
because the sample logs and demos use them as public clients (see
``pipeline.geoip``). Use ``EXPECTED_GEO``/``EXPECTED_ASN`` (sample address ->
expected model value) in assertions.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

from pipeline.core.model import AsnInfo, GeoInfo

_LANGUAGES = ["de", "en", "fr"]

_CONTINENTS = {
    "AF": (6255146, "Africa", "Afrika", "Afrique"),
    "AS": (6255147, "Asia", "Asien", "Asie"),
    "EU": (6255148, "Europe", "Europa", "Europe"),
    "NA": (6255149, "North America", "Nordamerika", "Amérique du Nord"),
    "OC": (6255151, "Oceania", "Ozeanien", "Océanie"),
    "SA": (6255150, "South America", "Südamerika", "Amérique du Sud"),
}


@dataclass(frozen=True)
class CityEntry:
    network: str  # CIDR
    sample_ip: str  # an address inside it, for assertions
    continent: str
    country_iso: str
    country_name: str
    lat: float
    lon: float
    subdivision_iso: str | None = None
    subdivision_name: str | None = None
    city: str | None = None
    second_subdivision: tuple[str, str] | None = None  # (iso, name): must not win

    def record(self) -> dict[str, Any]:
        """The record as MaxMind writes it (extra fields included on purpose)."""
        geoname, cont_en, cont_de, cont_fr = _CONTINENTS[self.continent]
        country = {
            "geoname_id": _fake_id(self.country_iso),
            "iso_code": self.country_iso,
            "names": {"en": self.country_name, "de": self.country_name},
        }
        record: dict[str, Any] = {
            "continent": {
                "code": self.continent,
                "geoname_id": geoname,
                "names": {"de": cont_de, "en": cont_en, "fr": cont_fr},
            },
            "country": country,
            "registered_country": dict(country),
            "location": {
                "accuracy_radius": 50,
                "latitude": self.lat,
                "longitude": self.lon,
                "time_zone": "UTC",
            },
        }
        if self.city:
            record["city"] = {"geoname_id": _fake_id(self.city), "names": {"en": self.city}}
            record["postal"] = {"code": "00000"}
        if self.subdivision_iso:
            subdivisions = [
                {
                    "geoname_id": _fake_id(self.subdivision_iso),
                    "iso_code": self.subdivision_iso,
                    "names": {"en": self.subdivision_name or self.subdivision_iso},
                }
            ]
            if self.second_subdivision:
                iso, name = self.second_subdivision
                subdivisions.append(
                    {"geoname_id": _fake_id(iso), "iso_code": iso, "names": {"en": name}}
                )
            record["subdivisions"] = subdivisions
        return record

    def expected(self) -> GeoInfo:
        return GeoInfo(
            country_iso_code=self.country_iso,
            country_name=self.country_name,
            continent_code=self.continent,
            continent_name=_CONTINENTS[self.continent][1],
            region_iso_code=(
                f"{self.country_iso}-{self.subdivision_iso}" if self.subdivision_iso else None
            ),
            region_name=self.subdivision_name,
            city_name=self.city,
            lat=self.lat,
            lon=self.lon,
        )


@dataclass(frozen=True)
class AsnEntry:
    network: str
    sample_ip: str
    number: int
    organization: str

    def record(self) -> dict[str, Any]:
        return {
            "autonomous_system_number": self.number,
            "autonomous_system_organization": self.organization,
        }

    def expected(self) -> AsnInfo:
        return AsnInfo(number=self.number, organization=self.organization)


def _fake_id(text: str) -> int:
    # Stable across runs (unlike hash()); only needs to look like a geoname id.
    return 1_000_000 + sum(ord(c) * 31**i for i, c in enumerate(text)) % 8_000_000


DEFAULT_CITY_ENTRIES: tuple[CityEntry, ...] = (
    CityEntry("8.8.8.0/24", "8.8.8.8", "NA", "US", "United States", 37.386, -122.0838,
              "CA", "California", "Mountain View"),
    CityEntry("81.2.69.0/24", "81.2.69.142", "EU", "GB", "United Kingdom", 51.5142, -0.0931,
              "ENG", "England", "London", second_subdivision=("WBK", "West Berkshire")),
    CityEntry("89.160.20.0/24", "89.160.20.112", "EU", "SE", "Sweden", 58.4167, 15.6167,
              "E", "Östergötland County", "Linköping"),
    CityEntry("175.16.199.0/24", "175.16.199.7", "AS", "CN", "China", 43.88, 125.3228,
              "JL", "Jilin Sheng", "Changchun"),
    CityEntry("1.0.16.0/20", "1.0.16.1", "AS", "JP", "Japan", 35.6895, 139.6917,
              "13", "Tokyo", "Tokyo"),
    CityEntry("200.160.0.0/20", "200.160.2.3", "SA", "BR", "Brazil", -23.5475, -46.6361,
              "SP", "São Paulo", "São Paulo"),
    CityEntry("41.0.0.0/16", "41.0.33.1", "AF", "ZA", "South Africa", -26.2023, 28.0436,
              "GP", "Gauteng", "Johannesburg"),
    CityEntry("139.130.4.0/24", "139.130.4.5", "OC", "AU", "Australia", -33.8688, 151.2093,
              "NSW", "New South Wales", "Sydney"),
    # Country-level only: no subdivision, no city.
    CityEntry("67.43.156.0/24", "67.43.156.10", "AS", "BT", "Bhutan", 27.5, 90.5),
    # IPv6 blocks.
    CityEntry("2a01:4f8::/29", "2a01:4f8:c17:b8f::2", "EU", "DE", "Germany", 49.4478, 11.0683,
              "BY", "Bavaria", "Nuremberg"),
    CityEntry("2001:4860::/32", "2001:4860:4860::8888", "NA", "US", "United States",
              37.386, -122.0838, "CA", "California", "Mountain View"),
    # Documentation ranges used by the samples and the demo.
    CityEntry("192.0.2.0/24", "192.0.2.44", "EU", "FR", "France", 48.8566, 2.3522,
              "IDF", "Île-de-France", "Paris"),
    CityEntry("198.51.100.0/24", "198.51.100.7", "EU", "DE", "Germany", 52.52, 13.405,
              "BE", "Berlin", "Berlin"),
)  # fmt: skip

DEFAULT_ASN_ENTRIES: tuple[AsnEntry, ...] = (
    AsnEntry("8.8.8.0/24", "8.8.8.8", 15169, "Google LLC"),
    AsnEntry("81.2.69.0/24", "81.2.69.142", 20712, "Andrews & Arnold Ltd"),
    AsnEntry("89.160.20.0/24", "89.160.20.112", 29518, "Bredband2 AB"),
    AsnEntry("1.0.16.0/20", "1.0.16.1", 2519, "ARTERIA Networks Corporation"),
    AsnEntry("2a01:4f8::/29", "2a01:4f8:c17:b8f::2", 24940, "Hetzner Online GmbH"),
    AsnEntry("2001:4860::/32", "2001:4860:4860::8888", 15169, "Google LLC"),
    AsnEntry("192.0.2.0/24", "192.0.2.44", 64496, "Example Documentation Network"),
    AsnEntry("198.51.100.0/24", "198.51.100.7", 64497, "Example Transit"),
)

#: sample address -> what a City lookup must return.
EXPECTED_GEO: dict[str, GeoInfo] = {e.sample_ip: e.expected() for e in DEFAULT_CITY_ENTRIES}
#: sample address -> what an ASN lookup must return.
EXPECTED_ASN: dict[str, AsnInfo] = {e.sample_ip: e.expected() for e in DEFAULT_ASN_ENTRIES}

#: Public addresses in neither database.
NOT_FOUND_IPS: tuple[str, ...] = ("9.9.9.9", "2a00:1450:4001::1")


def _write(writer: MMDBWriter, path: str | os.PathLike[str]) -> Path:
    # Atomic like geoipupdate: a reader never sees a half-written file.
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer.to_db_file(tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 is not what a database download looks like
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _writer(database_type: str, description: str) -> MMDBWriter:
    return MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type=database_type,
        languages=_LANGUAGES,
        description=description,
    )


def write_city_db(
    path: str | os.PathLike[str],
    entries: Iterable[CityEntry] = DEFAULT_CITY_ENTRIES,
    database_type: str = "GeoLite2-City",
) -> Path:
    """Write a City database to ``path`` (atomically) and return the path."""
    writer = _writer(database_type, "grayscope test City database")
    for entry in entries:
        writer.insert_network(IPSet([entry.network]), entry.record())
    return _write(writer, path)


def write_asn_db(
    path: str | os.PathLike[str],
    entries: Iterable[AsnEntry] = DEFAULT_ASN_ENTRIES,
    database_type: str = "GeoLite2-ASN",
) -> Path:
    """Write an ASN database to ``path`` (atomically) and return the path."""
    writer = _writer(database_type, "grayscope test ASN database")
    for entry in entries:
        writer.insert_network(IPSet([entry.network]), entry.record())
    return _write(writer, path)


def write_test_dbs(directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write the default City and ASN databases into ``directory``: (city, asn)."""
    root = Path(directory)
    return (
        write_city_db(root / "GeoLite2-City.mmdb"),
        write_asn_db(root / "GeoLite2-ASN.mmdb"),
    )

"""GeoIPResolver against small generated City/ASN databases."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import maxminddb
import pytest

from pipeline.config import load_settings
from pipeline.core.enrich import EnrichContext, geo_step
from pipeline.core.model import AccessRecord, AsnInfo, Enrichment, GeoInfo
from pipeline.errors import ConfigError, GeoIPDatabaseError
from pipeline.geoip import (
    ASN_SETTING,
    CITY_SETTING,
    GeoIPResolver,
    asn_from_record,
    geo_from_record,
)
from tests.geoip_data import (
    DEFAULT_ASN_ENTRIES,
    DEFAULT_CITY_ENTRIES,
    EXPECTED_ASN,
    EXPECTED_GEO,
    NOT_FOUND_IPS,
    AsnEntry,
    CityEntry,
    write_asn_db,
    write_city_db,
    write_test_dbs,
)

INTERVAL = 10.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def shared_dbs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_test_dbs(tmp_path_factory.mktemp("geoip"))


@pytest.fixture
def dbs(tmp_path: Path) -> tuple[Path, Path]:
    """Per-test copies, for tests that replace the files."""
    return write_test_dbs(tmp_path)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def resolver(shared_dbs: tuple[Path, Path]) -> Iterator[GeoIPResolver]:
    city, asn = shared_dbs
    with GeoIPResolver(str(city), str(asn), cache_size=100, reload_interval=0) as r:
        yield r


def make(
    city: Path | str, asn: Path | str, clock: FakeClock, cache_size: int = 100
) -> GeoIPResolver:
    return GeoIPResolver(
        str(city), str(asn), cache_size=cache_size, reload_interval=INTERVAL, clock=clock
    )


def replace_with_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --- lookups -----------------------------------------------------------------


def test_uses_the_c_extension_over_mmap(resolver: GeoIPResolver) -> None:
    assert resolver.reader_mode == maxminddb.MODE_MMAP_EXT
    assert resolver.uses_c_extension
    assert resolver.database_types() == {"city": "GeoLite2-City", "asn": "GeoLite2-ASN"}


@pytest.mark.parametrize("ip", sorted(EXPECTED_GEO))
def test_city_lookup_v4_and_v6(resolver: GeoIPResolver, ip: str) -> None:
    geo, asn = resolver.lookup(ip)
    assert geo == EXPECTED_GEO[ip]
    assert asn == EXPECTED_ASN.get(ip)


def test_ipv6_lookup_fills_every_field(resolver: GeoIPResolver) -> None:
    geo, asn = resolver.lookup("2a01:4f8:c17:b8f::2")
    assert geo == GeoInfo(
        country_iso_code="DE",
        country_name="Germany",
        continent_code="EU",
        continent_name="Europe",
        region_iso_code="DE-BY",
        region_name="Bavaria",
        city_name="Nuremberg",
        lat=49.4478,
        lon=11.0683,
    )
    assert asn == AsnInfo(number=24940, organization="Hetzner Online GmbH")


def test_region_is_the_first_subdivision(resolver: GeoIPResolver) -> None:
    geo, _ = resolver.lookup("81.2.69.142")
    assert geo is not None
    assert (geo.region_iso_code, geo.region_name) == ("GB-ENG", "England")


def test_country_only_entry_has_no_region_or_city(resolver: GeoIPResolver) -> None:
    geo, asn = resolver.lookup("67.43.156.10")
    assert geo is not None
    assert geo.country_iso_code == "BT"
    assert geo.region_iso_code is geo.region_name is geo.city_name is None
    assert asn is None  # not in the ASN database


def test_ipv4_mapped_ipv6_is_looked_up_as_ipv4(resolver: GeoIPResolver) -> None:
    assert resolver.lookup("::ffff:8.8.8.8") == (EXPECTED_GEO["8.8.8.8"], EXPECTED_ASN["8.8.8.8"])


@pytest.mark.parametrize("ip", NOT_FOUND_IPS)
def test_not_found_is_none_and_cached(resolver: GeoIPResolver, ip: str) -> None:
    assert resolver.lookup(ip) == (None, None)
    assert resolver.lookup(ip) == (None, None)
    assert resolver.stats.geoip_cache_misses_total == 1
    assert resolver.stats.geoip_cache_hits_total == 1


@pytest.mark.parametrize(
    "ip",
    [
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "127.0.0.1",
        "169.254.10.20",
        "100.64.0.1",
        "100.127.255.254",
        "224.0.0.251",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "0.0.0.0",
        "::",
        "::1",
        "fd12:3456::1",
        "fc00::1",
        "fe80::1",
        "ff02::1",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
    ],
)
def test_private_and_reserved_are_skipped_without_lookup(resolver: GeoIPResolver, ip: str) -> None:
    assert resolver.lookup(ip) == (None, None)
    assert resolver.lookup(ip) == (None, None)  # again, from the cache
    stats = resolver.stats
    assert stats.geoip_lookups_skipped_total == 2
    assert stats.geoip_cache_misses_total == 0  # misses are database lookups
    assert stats.geoip_cache_hits_total == 0
    assert stats.geoip_invalid_addresses_total == 0


@pytest.mark.parametrize(
    "ip", ["100.63.255.255", "100.128.0.1", "172.15.255.255", "172.32.0.1", "223.255.255.255"]
)
def test_addresses_next_to_skipped_ranges_are_looked_up(resolver: GeoIPResolver, ip: str) -> None:
    resolver.lookup(ip)
    assert resolver.stats.geoip_cache_misses_total == 1
    assert resolver.stats.geoip_lookups_skipped_total == 0


@pytest.mark.parametrize("ip", ["192.0.2.44", "198.51.100.7", "203.0.113.9", "2001:db8::1"])
def test_documentation_ranges_are_looked_up(resolver: GeoIPResolver, ip: str) -> None:
    geo, _ = resolver.lookup(ip)
    assert geo == EXPECTED_GEO.get(ip)
    assert resolver.stats.geoip_cache_misses_total == 1
    assert resolver.stats.geoip_lookups_skipped_total == 0


@pytest.mark.parametrize(
    "ip",
    [
        "",
        "garbage",
        "-",
        "1.2.3",
        "1.2.3.4.5",
        "256.1.1.1",
        "01.2.3.4",
        " 8.8.8.8",
        "8.8.8.8 ",
        "8.8.8.8:443",
        "[2001:4860::1]",
        "fe80::1%eth0",
        "1:2:3:4:5:6:7:8:9",
        "::ffff:999.1.1.1",
        "8.8.8.8\x00",
        "\uff18.\uff18.\uff18.\uff18",  # full-width digits
    ],
)
def test_invalid_addresses_are_counted_and_never_raise(resolver: GeoIPResolver, ip: str) -> None:
    assert resolver.lookup(ip) == (None, None)
    assert resolver.lookup(ip) == (None, None)
    assert resolver.stats.geoip_invalid_addresses_total == 2
    assert resolver.stats.geoip_cache_misses_total == 0
    assert resolver.cache_len == 0  # garbage does not evict real entries


def test_non_string_input_does_not_raise(resolver: GeoIPResolver) -> None:
    assert resolver.lookup(None) == (None, None)  # type: ignore[arg-type]
    assert resolver.lookup(b"8.8.8.8") == (None, None)  # type: ignore[arg-type]
    assert resolver.stats.geoip_invalid_addresses_total == 2


# --- cache -------------------------------------------------------------------


def test_hits_and_misses_are_counted(resolver: GeoIPResolver) -> None:
    first = resolver.lookup("8.8.8.8")
    second = resolver.lookup("8.8.8.8")
    resolver.lookup("81.2.69.142")
    assert first == second
    assert resolver.stats.geoip_cache_misses_total == 2
    assert resolver.stats.geoip_cache_hits_total == 1


def test_another_spelling_of_a_cached_address_is_a_network_hit(resolver: GeoIPResolver) -> None:
    resolver.lookup("2001:4860:4860::8888")
    resolver.lookup("2001:4860:4860:0:0:0:0:8888")  # a new string, the same /48
    assert resolver.stats.geoip_cache_misses_total == 1
    assert resolver.stats.geoip_cache_hits_total == 1
    assert resolver.lookup("2001:4860:4860:0:0:0:0:8888")[0] == EXPECTED_GEO["2001:4860:4860::8888"]


# --- network answers -----------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("8.8.8.8", "8.8.8.200"),  # a /24 in both databases
        ("1.0.16.1", "1.0.16.77"),  # a /20: the /24 inside it shares the answer
        ("2a01:4f8:c17:b8f::2", "2a01:4f8:c17:ffff::9"),  # a /29: the /48 inside it
        ("9.9.9.9", "9.9.9.10"),  # in neither database: "nothing" holds for the network
        ("::ffff:8.8.8.8", "8.8.8.9"),  # IPv4-mapped shares the IPv4 network
    ],
)
def test_a_new_address_in_a_network_answered_as_a_whole_costs_no_lookup(
    resolver: GeoIPResolver, first: str, second: str
) -> None:
    expected = resolver.lookup(first)
    assert resolver.lookup(second) == expected
    assert resolver.stats.geoip_cache_misses_total == 1
    assert resolver.stats.geoip_cache_hits_total == 1


def test_networks_smaller_than_a_slash_24_are_looked_up_per_address(tmp_path: Path) -> None:
    small = (
        CityEntry("203.0.113.0/28", "203.0.113.1", "EU", "FR", "France", 48.85, 2.35),
        CityEntry("203.0.113.16/28", "203.0.113.17", "EU", "DE", "Germany", 52.52, 13.4),
    )
    city = write_city_db(tmp_path / "city.mmdb", small)
    with GeoIPResolver(str(city), "", cache_size=100, reload_interval=0) as r:
        first, _ = r.lookup("203.0.113.1")
        second, _ = r.lookup("203.0.113.17")
        assert (first, second) == (small[0].expected(), small[1].expected())
        assert r.stats.geoip_cache_misses_total == 2
        assert r.lookup("203.0.113.2")[0] == small[0].expected()  # a third lookup
        assert r.stats.geoip_cache_misses_total == 3


def test_network_answer_needs_both_databases_to_hold_it(tmp_path: Path) -> None:
    """A /24 in the City database but a /28 in the ASN one: per address."""
    city = write_city_db(tmp_path / "city.mmdb")
    asn = write_asn_db(
        tmp_path / "asn.mmdb",
        (
            AsnEntry("8.8.8.0/28", "8.8.8.8", 15169, "Google LLC"),
            AsnEntry("8.8.8.16/28", "8.8.8.20", 64500, "Someone Else"),
        ),
    )
    with GeoIPResolver(str(city), str(asn), cache_size=100, reload_interval=0) as r:
        assert r.lookup("8.8.8.8")[1] == AsnInfo(15169, "Google LLC")
        assert r.lookup("8.8.8.20")[1] == AsnInfo(64500, "Someone Else")
        assert r.stats.geoip_cache_misses_total == 2


SMALL_NETWORKS = tuple(
    CityEntry(f"203.0.113.{16 * i}/28", f"203.0.113.{16 * i + 1}", "EU", iso, iso, 50.0, 10.0)
    for i, iso in enumerate(("FR", "DE", "NL"))
)  # /28s: answers are remembered per address only


def test_lru_is_bounded_and_evicts_least_recently_used(tmp_path: Path) -> None:
    city = write_city_db(tmp_path / "city.mmdb", SMALL_NETWORKS)
    a, b, c = (entry.sample_ip for entry in SMALL_NETWORKS)
    r = GeoIPResolver(str(city), "", cache_size=2, reload_interval=0)
    r.lookup(a)  # miss
    r.lookup(b)  # miss
    r.lookup(a)  # hit: b is now the least recently used
    r.lookup(c)  # miss: evicts b
    assert r.cache_len == 2
    assert (r.stats.geoip_cache_hits_total, r.stats.geoip_cache_misses_total) == (1, 3)
    r.lookup(a)  # still cached
    assert (r.stats.geoip_cache_hits_total, r.stats.geoip_cache_misses_total) == (2, 3)
    assert r.lookup(b)[0] == SMALL_NETWORKS[1].expected()  # evicted: looked up again
    assert (r.stats.geoip_cache_hits_total, r.stats.geoip_cache_misses_total) == (2, 4)
    assert r.cache_len == 2
    r.close()


def test_network_entries_share_the_lru_bound(shared_dbs: tuple[Path, Path]) -> None:
    city, asn = shared_dbs
    r = GeoIPResolver(str(city), str(asn), cache_size=3, reload_interval=0)
    r.lookup("8.8.8.8")  # miss: the address and its /24
    r.lookup("81.2.69.142")  # miss: evicts the oldest (8.8.8.8 itself)
    assert r.cache_len == 3
    r.lookup("8.8.8.9")  # its /24 is still cached
    assert (r.stats.geoip_cache_hits_total, r.stats.geoip_cache_misses_total) == (1, 2)
    assert r.cache_len == 3
    r.close()


def test_many_addresses_never_grow_the_cache_past_its_size(
    shared_dbs: tuple[Path, Path],
) -> None:
    city, asn = shared_dbs
    r = GeoIPResolver(str(city), str(asn), cache_size=16, reload_interval=0)
    for i in range(200):
        r.lookup(f"8.8.{i}.1")
        assert r.cache_len <= 16
    assert r.cache_len == 16
    r.close()


def test_cache_size_zero_disables_the_cache(shared_dbs: tuple[Path, Path]) -> None:
    city, asn = shared_dbs
    r = GeoIPResolver(str(city), str(asn), cache_size=0, reload_interval=0)
    assert r.lookup("8.8.8.8")[0] == EXPECTED_GEO["8.8.8.8"]
    assert r.lookup("8.8.8.8")[0] == EXPECTED_GEO["8.8.8.8"]
    assert r.lookup("10.0.0.1") == (None, None)
    assert r.lookup("10.0.0.1") == (None, None)
    assert r.cache_len == 0
    assert r.stats.geoip_cache_misses_total == 2
    assert r.stats.geoip_cache_hits_total == 0
    assert r.stats.geoip_lookups_skipped_total == 2
    r.close()


def test_negative_cache_size_is_rejected(shared_dbs: tuple[Path, Path]) -> None:
    city, asn = shared_dbs
    with pytest.raises(ValueError):
        GeoIPResolver(str(city), str(asn), cache_size=-1, reload_interval=0)


def test_stats_snapshot_uses_metric_names(resolver: GeoIPResolver) -> None:
    resolver.lookup("8.8.8.8")
    snapshot = resolver.stats.snapshot()
    assert snapshot["geoip_cache_misses_total"] == 1
    assert all(name.startswith("geoip_") and name.endswith("_total") for name in snapshot)
    assert {
        "geoip_cache_hits_total",
        "geoip_lookups_skipped_total",
        "geoip_invalid_addresses_total",
        "geoip_reloads_total",
        "geoip_reload_errors_total",
    } <= snapshot.keys()


# --- hot reload ----------------------------------------------------------------

MOVED = tuple(
    dataclasses.replace(e, city="Ashburn", subdivision_iso="VA", subdivision_name="Virginia")
    if e.network == "8.8.8.0/24"
    else e
    for e in DEFAULT_CITY_ENTRIES
)
MOVED_GEO = dataclasses.replace(
    EXPECTED_GEO["8.8.8.8"], city_name="Ashburn", region_iso_code="US-VA", region_name="Virginia"
)


def test_replaced_city_db_is_picked_up_after_the_interval(
    dbs: tuple[Path, Path], clock: FakeClock
) -> None:
    city, asn = dbs
    r = make(city, asn, clock)
    old_reader = r._city_reader
    assert r.lookup("8.8.8.8")[0] == EXPECTED_GEO["8.8.8.8"]

    write_city_db(city, MOVED)  # temp file + os.replace
    # Right after the swap on disk, before the interval: old answers, no failures.
    assert r.lookup("8.8.8.8")[0] == EXPECTED_GEO["8.8.8.8"]
    assert r.lookup("81.2.69.142")[0] == EXPECTED_GEO["81.2.69.142"]
    clock.advance(INTERVAL - 0.5)
    assert r.lookup("8.8.8.8")[0] == EXPECTED_GEO["8.8.8.8"]
    assert r.stats.geoip_reloads_total == 0

    clock.advance(0.5)
    geo, asn_info = r.lookup("8.8.8.8")
    assert geo == MOVED_GEO
    assert asn_info == EXPECTED_ASN["8.8.8.8"]  # the ASN database was not touched
    assert r.lookup("81.2.69.142")[0] == EXPECTED_GEO["81.2.69.142"]
    assert r.stats.geoip_reloads_total == 1
    assert r.stats.geoip_reload_errors_total == 0
    assert old_reader is not None and old_reader.closed  # closed only after the swap
    r.close()


def test_reload_clears_the_cache(dbs: tuple[Path, Path], clock: FakeClock) -> None:
    city, asn = dbs
    r = make(city, asn, clock)
    r.lookup("8.8.8.8")
    r.lookup("9.9.9.9")
    assert r.cache_len == 4  # two addresses and their /24s
    write_city_db(city, MOVED)
    assert r.check_reload()
    assert r.cache_len == 0
    assert r.lookup("8.8.8.8")[0] == MOVED_GEO
    r.close()


def test_replaced_asn_db_is_picked_up(dbs: tuple[Path, Path], clock: FakeClock) -> None:
    city, asn = dbs
    r = make(city, asn, clock)
    assert r.lookup("8.8.8.8")[1] == EXPECTED_ASN["8.8.8.8"]
    write_asn_db(asn, [AsnEntry("8.8.8.0/24", "8.8.8.8", 64500, "Renamed Org")])
    clock.advance(INTERVAL)
    assert r.lookup("8.8.8.8")[1] == AsnInfo(number=64500, organization="Renamed Org")
    assert r.lookup("81.2.69.142")[1] is None
    assert r.stats.geoip_reloads_total == 1
    r.close()


def test_check_reload_reports_whether_anything_changed(
    dbs: tuple[Path, Path], clock: FakeClock
) -> None:
    city, asn = dbs
    r = make(city, asn, clock)
    assert r.check_reload() is False
    write_city_db(city, MOVED)
    write_asn_db(asn)
    assert r.check_reload() is True
    assert r.stats.geoip_reloads_total == 2
    assert r.check_reload() is False
    assert r.stats.geoip_reloads_total == 2
    r.close()


def test_zero_interval_never_checks_from_lookups(dbs: tuple[Path, Path], clock: FakeClock) -> None:
    city, asn = dbs
    r = GeoIPResolver(str(city), str(asn), cache_size=0, reload_interval=0, clock=clock)
    write_city_db(city, MOVED)
    clock.advance(10_000)
    assert r.lookup("8.8.8.8")[0] == EXPECTED_GEO["8.8.8.8"]
    assert r.check_reload() is True  # the explicit check still works
    assert r.lookup("8.8.8.8")[0] == MOVED_GEO
    r.close()


@pytest.mark.parametrize(
    "replacement",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not a maxmind database" * 100, id="garbage"),
    ],
)
def test_corrupt_replacement_keeps_the_old_reader(
    dbs: tuple[Path, Path], clock: FakeClock, replacement: bytes
) -> None:
    city, asn = dbs
    r = make(city, asn, clock)
    assert r.lookup("8.8.8.8")[0] == EXPECTED_GEO["8.8.8.8"]
    replace_with_bytes(city, replacement)
    clock.advance(INTERVAL)
    assert r.lookup("8.8.8.8")[0] == EXPECTED_GEO["8.8.8.8"]
    assert r.lookup("81.2.69.142")[0] == EXPECTED_GEO["81.2.69.142"]  # a real lookup, not cached
    assert r.stats.geoip_reload_errors_total == 1
    assert r.stats.geoip_reloads_total == 0

    # The same bad file is not retried (and not re-counted) on every check ...
    clock.advance(INTERVAL)
    r.lookup("8.8.8.8")
    assert r.check_reload() is False
    assert r.stats.geoip_reload_errors_total == 1

    # ... but a good replacement is loaded.
    write_city_db(city, MOVED)
    assert r.check_reload() is True
    assert r.lookup("8.8.8.8")[0] == MOVED_GEO
    r.close()


def test_truncated_replacement_keeps_the_old_reader(
    dbs: tuple[Path, Path], clock: FakeClock
) -> None:
    city, asn = dbs
    r = make(city, asn, clock)
    replace_with_bytes(city, city.read_bytes()[:-200])
    assert r.check_reload() is False
    assert r.stats.geoip_reload_errors_total == 1
    assert r.lookup("8.8.8.8")[0] == EXPECTED_GEO["8.8.8.8"]
    r.close()


def test_wrong_type_replacement_keeps_the_old_reader(
    dbs: tuple[Path, Path], clock: FakeClock
) -> None:
    city, asn = dbs
    r = make(city, asn, clock)
    write_asn_db(city)  # an ASN database at the City path
    assert r.check_reload() is False
    assert r.stats.geoip_reload_errors_total == 1
    assert r.lookup("8.8.8.8")[0] == EXPECTED_GEO["8.8.8.8"]
    r.close()


def test_deleted_database_keeps_serving_and_comes_back(
    dbs: tuple[Path, Path], clock: FakeClock
) -> None:
    city, asn = dbs
    r = make(city, asn, clock)
    city.unlink()
    assert r.check_reload() is False
    assert r.check_reload() is False
    assert r.stats.geoip_reload_errors_total == 1
    assert r.lookup("8.8.8.8")[0] == EXPECTED_GEO["8.8.8.8"]
    write_city_db(city, MOVED)
    assert r.check_reload() is True
    assert r.lookup("8.8.8.8")[0] == MOVED_GEO
    r.close()


def test_unexpected_reload_failure_does_not_break_lookups(
    dbs: tuple[Path, Path], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    city, asn = dbs
    r = make(city, asn, clock)

    def broken_open(*_: object) -> None:
        raise RuntimeError("unexpected")

    monkeypatch.setattr("pipeline.geoip._open_reader", broken_open)
    write_city_db(city, MOVED)
    clock.advance(INTERVAL)
    assert r.lookup("8.8.8.8")[0] == EXPECTED_GEO["8.8.8.8"]
    assert r.stats.geoip_reload_errors_total == 1
    with pytest.raises(RuntimeError):
        r.check_reload()  # the explicit call reports it to its caller
    r.close()


def test_record_that_fails_to_decode_is_counted_not_raised(dbs: tuple[Path, Path]) -> None:
    city, asn = dbs
    data = bytearray(city.read_bytes())
    # Turn the string header in front of "Mountain View" into an invalid type.
    data[data.index(b"Mountain View") - 1] = 0
    replace_with_bytes(city, bytes(data))
    with GeoIPResolver(str(city), str(asn), cache_size=10, reload_interval=0) as r:
        assert r.lookup("8.8.8.8") == (None, EXPECTED_ASN["8.8.8.8"])
        assert r.lookup("81.2.69.142")[0] == EXPECTED_GEO["81.2.69.142"]
        assert r.stats.geoip_lookup_errors_total == 1


# --- configuration errors --------------------------------------------------------


def test_missing_city_db_names_the_setting(tmp_path: Path, shared_dbs: tuple[Path, Path]) -> None:
    missing = tmp_path / "nope.mmdb"
    with pytest.raises(GeoIPDatabaseError) as info:
        GeoIPResolver(str(missing), str(shared_dbs[1]), cache_size=10, reload_interval=0)
    assert info.value.setting == CITY_SETTING == "GRAYSCOPE_GEOIP_CITY_DB"
    assert str(missing) in str(info.value)
    assert str(info.value).startswith("GRAYSCOPE_GEOIP_CITY_DB: ")
    assert isinstance(info.value, ConfigError)
    assert not info.value.retriable


def test_missing_asn_db_names_the_setting(tmp_path: Path, shared_dbs: tuple[Path, Path]) -> None:
    with pytest.raises(GeoIPDatabaseError) as info:
        GeoIPResolver(
            str(shared_dbs[0]), str(tmp_path / "asn.mmdb"), cache_size=10, reload_interval=0
        )
    assert info.value.setting == ASN_SETTING == "GRAYSCOPE_GEOIP_ASN_DB"


def test_directory_is_not_a_database(tmp_path: Path) -> None:
    with pytest.raises(GeoIPDatabaseError) as info:
        GeoIPResolver(str(tmp_path), "", cache_size=10, reload_interval=0)
    assert info.value.setting == CITY_SETTING


def test_garbage_file_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"\x00" * 4096)
    with pytest.raises(GeoIPDatabaseError, match="not a valid MaxMind DB"):
        GeoIPResolver("", str(bad), cache_size=10, reload_interval=0)


def test_asn_db_given_as_city_is_rejected(shared_dbs: tuple[Path, Path]) -> None:
    _, asn = shared_dbs
    with pytest.raises(GeoIPDatabaseError) as info:
        GeoIPResolver(str(asn), str(asn), cache_size=10, reload_interval=0)
    assert info.value.setting == CITY_SETTING
    assert "GeoLite2-ASN" in str(info.value)


def test_city_db_given_as_asn_is_rejected(shared_dbs: tuple[Path, Path]) -> None:
    city, _ = shared_dbs
    with pytest.raises(GeoIPDatabaseError) as info:
        GeoIPResolver(str(city), str(city), cache_size=10, reload_interval=0)
    assert info.value.setting == ASN_SETTING


def test_other_vendors_city_type_is_accepted(tmp_path: Path) -> None:
    path = write_city_db(tmp_path / "dbip.mmdb", database_type="DBIP-City-Lite")
    with GeoIPResolver(str(path), "", cache_size=10, reload_interval=0) as r:
        assert r.lookup("8.8.8.8")[0] == EXPECTED_GEO["8.8.8.8"]


# --- disabled databases ----------------------------------------------------------


def test_empty_city_path_disables_geo_only(shared_dbs: tuple[Path, Path]) -> None:
    _, asn = shared_dbs
    with GeoIPResolver("", str(asn), cache_size=10, reload_interval=0) as r:
        assert r.enabled
        assert r.lookup("8.8.8.8") == (None, EXPECTED_ASN["8.8.8.8"])
        assert r.database_types() == {"asn": "GeoLite2-ASN"}


def test_empty_asn_path_disables_asn_only(shared_dbs: tuple[Path, Path]) -> None:
    city, _ = shared_dbs
    with GeoIPResolver(str(city), "  ", cache_size=10, reload_interval=0) as r:
        assert r.lookup("8.8.8.8") == (EXPECTED_GEO["8.8.8.8"], None)
        assert r.check_reload() is False


def test_both_empty_disables_everything() -> None:
    with GeoIPResolver("", "", cache_size=10, reload_interval=1.0) as r:
        assert not r.enabled
        assert r.lookup("8.8.8.8") == (None, None)
        assert r.lookup("garbage") == (None, None)
        assert r.check_reload() is False
        assert r.stats.geoip_cache_misses_total == 0


def test_from_settings(shared_dbs: tuple[Path, Path]) -> None:
    city, asn = shared_dbs
    settings = load_settings(
        geoip_city_db=str(city), geoip_asn_db=str(asn), geoip_cache_size=5, geoip_reload_interval=0
    )
    with GeoIPResolver.from_settings(settings.geoip) as r:
        assert r.lookup("192.0.2.44") == (EXPECTED_GEO["192.0.2.44"], EXPECTED_ASN["192.0.2.44"])


def test_lookups_after_close_return_nothing(shared_dbs: tuple[Path, Path]) -> None:
    city, asn = shared_dbs
    r = GeoIPResolver(str(city), str(asn), cache_size=10, reload_interval=0)
    r.lookup("8.8.8.8")
    r.close()
    r.close()
    assert r.lookup("8.8.8.8") == (None, None)


# --- record mapping (pure) ----------------------------------------------------------


def test_record_mapping_of_a_full_record() -> None:
    entry = DEFAULT_CITY_ENTRIES[0]
    assert geo_from_record(entry.record()) == entry.expected()
    asn_entry = DEFAULT_ASN_ENTRIES[0]
    assert asn_from_record(asn_entry.record()) == asn_entry.expected()


@pytest.mark.parametrize(
    "record",
    [
        None,
        {},
        "not a dict",
        {"registered_country": {"iso_code": "US"}},
        {"country": "US", "location": []},
    ],
)
def test_records_without_geo_map_to_none(record: object) -> None:
    assert geo_from_record(record) is None


def test_half_a_location_is_dropped() -> None:
    geo = geo_from_record({"country": {"iso_code": "US"}, "location": {"latitude": 1.5}})
    assert geo == GeoInfo(country_iso_code="US")


def test_integer_coordinates_become_floats() -> None:
    geo = geo_from_record({"location": {"latitude": 10, "longitude": -20}})
    assert geo is not None and (geo.lat, geo.lon) == (10.0, -20.0)
    assert isinstance(geo.lat, float)


def test_subdivision_without_country_has_no_region_code() -> None:
    geo = geo_from_record({"subdivisions": [{"iso_code": "CA", "names": {"en": "California"}}]})
    assert geo == GeoInfo(region_name="California")


def test_non_english_only_names_are_none() -> None:
    geo = geo_from_record({"country": {"iso_code": "DE", "names": {"de": "Deutschland"}}})
    assert geo == GeoInfo(country_iso_code="DE")


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"autonomous_system_number": 64500}, AsnInfo(number=64500)),
        ({"autonomous_system_organization": "Org"}, AsnInfo(organization="Org")),
        ({"autonomous_system_number": "64500"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_asn_record_mapping(record: object, expected: AsnInfo | None) -> None:
    assert asn_from_record(record) == expected


def test_test_data_has_a_dozen_networks_in_several_countries() -> None:
    assert len(DEFAULT_CITY_ENTRIES) >= 12
    assert len({e.country_iso for e in DEFAULT_CITY_ENTRIES}) >= 8
    assert any(":" in e.network for e in DEFAULT_CITY_ENTRIES)
    assert isinstance(DEFAULT_CITY_ENTRIES[0], CityEntry)


# --- the worker's path: geo_step takes cached answers without calling lookup ---------


def geo_of(ctx: EnrichContext, ip: str) -> tuple[GeoInfo | None, AsnInfo | None]:
    """What the enrichment chain's GeoIP step gives a request from ``ip``."""
    enr = Enrichment()
    enr.client_ip = ip
    geo_step(AccessRecord(dataset="test"), enr, ctx)
    return enr.geo, enr.asn


def test_geo_step_answers_and_counts_as_lookup_does(shared_dbs: tuple[Path, Path]) -> None:
    city, asn = shared_dbs
    addresses = ("8.8.8.8", "8.8.8.8", "8.8.8.9", "10.0.0.1", "10.0.0.1", "81.2.69.142")
    addresses += (*NOT_FOUND_IPS, "not an address", "8.8.8.9", "8.8.8.8", *NOT_FOUND_IPS)
    with (
        GeoIPResolver(str(city), str(asn), cache_size=100, reload_interval=0) as stepped,
        GeoIPResolver(str(city), str(asn), cache_size=100, reload_interval=0) as called,
    ):
        ctx = EnrichContext(geoip=stepped)
        assert ctx.geo_answers is stepped.cached_answers
        for ip in addresses:
            assert geo_of(ctx, ip) == called.lookup(ip), ip
        assert stepped.stats.snapshot() == called.stats.snapshot()
        assert stepped.stats.geoip_cache_hits_total >= 4
        assert stepped.cached_answers.hits == stepped.stats.geoip_cache_hits_total


def test_geo_step_hits_keep_an_address_recently_used(tmp_path: Path) -> None:
    city = write_city_db(tmp_path / "city.mmdb", SMALL_NETWORKS)
    a, b, c = (entry.sample_ip for entry in SMALL_NETWORKS)
    r = GeoIPResolver(str(city), "", cache_size=2, reload_interval=0)
    ctx = EnrichContext(geoip=r)
    geo_of(ctx, a)  # miss
    geo_of(ctx, b)  # miss
    geo_of(ctx, a)  # hit, taken in geo_step: b is now the least recently used
    geo_of(ctx, c)  # miss: evicts b
    assert (r.stats.geoip_cache_hits_total, r.stats.geoip_cache_misses_total) == (1, 3)
    geo_of(ctx, a)
    assert (r.stats.geoip_cache_hits_total, r.stats.geoip_cache_misses_total) == (2, 3)
    r.close()


def test_geo_step_leaves_a_due_reload_check_to_lookup(
    dbs: tuple[Path, Path], clock: FakeClock
) -> None:
    city, asn = dbs
    r = make(city, asn, clock)
    ctx = EnrichContext(geoip=r)
    assert geo_of(ctx, "8.8.8.8")[0] == EXPECTED_GEO["8.8.8.8"]
    write_city_db(city, MOVED)
    clock.advance(INTERVAL - 0.5)
    assert geo_of(ctx, "8.8.8.8")[0] == EXPECTED_GEO["8.8.8.8"]  # cached, not due yet
    assert r.stats.geoip_reloads_total == 0
    clock.advance(0.5)
    assert geo_of(ctx, "8.8.8.8")[0] == MOVED_GEO  # due: lookup checked and reloaded
    assert r.stats.geoip_reloads_total == 1
    clock.advance(INTERVAL - 0.5)
    assert geo_of(ctx, "8.8.8.8")[0] == MOVED_GEO
    assert r.stats.geoip_reloads_total == 1
    r.close()

"""Coercion of logged values: missing markers, numbers, durations, timestamps, IPs."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.formats import values
from pipeline.core.formats.values import (
    MAX_LONG,
    MAX_TIMESTAMP_NS,
    canonical_ip,
    clf_to_ns,
    epoch_to_ns,
    integer,
    ipv4_value,
    iso_to_ns,
    millis_to_ns,
    ns_to_iso,
    peer_ip,
    remember,
    seconds_to_ns,
    start_from_end,
    text,
    timestamp_to_ns,
    upstream_seconds_to_ns,
)
from pipeline.core.model import Reason
from pipeline.errors import RejectedInput
from tests.unit.conftest import compiled_core_in_use

T0 = 1_795_176_000_000_000_000  # 2026-11-20T12:00:00Z


@pytest.mark.parametrize("missing", [None, "", "-", "null", "None", {"a": 1}, [1]])
def test_text_missing_markers_are_none(missing: object) -> None:
    assert text(missing) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("GET", "GET"), (" x ", " x "), (200, "200"), (0.5, "0.5"), (True, "true"), (False, "false")],
)
def test_text_present_values(value: object, expected: str) -> None:
    assert text(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("200", 200),
        (200, 200),
        (200.0, 200),
        (200.9, 200),  # truncated, like int()
        ("200.0", 200),
        (" 200 ", 200),
        ("1e3", 1000),
        (None, None),
        ("-", None),
        ("", None),
        (True, None),
        (str(MAX_LONG), MAX_LONG),
        (str(-MAX_LONG - 1), -MAX_LONG - 1),
    ],
)
def test_integer(value: object, expected: int | None) -> None:
    assert integer(value, "f") == expected


@pytest.mark.parametrize(
    "garbage",
    [
        "abc",
        "20O",
        "nan",
        "inf",
        "1e400",
        "9" * 5000,  # beyond int()'s digit limit
        str(MAX_LONG + 1),
        18446744073709551615,
        float("nan"),
        float("inf"),
        {"a": 1},
        [200],
        "²",  # a unicode digit: isdigit() but not a number nginx writes
    ],
)
def test_integer_garbage_is_an_invalid_field(garbage: object) -> None:
    with pytest.raises(RejectedInput) as info:
        integer(garbage, "status")
    assert info.value.reason is Reason.INVALID_FIELD
    assert info.value.detail.startswith("status: ")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("18", 18_000_000),
        (18, 18_000_000),
        ("0", 0),
        (0, 0),
        ("18.5", 18_500_000),
        (1234.5, 1_234_500_000),
        ("-", None),
        (None, None),
        ("-1", None),
        (-1, None),
        ("nan", None),
        ("inf", None),
        ("1e300", None),
        ("9223372036855", None),  # found by hypothesis: ns beyond a long
        ("999999999999", 999_999_999_999_000_000),
        (10**30, None),
        (True, None),
        ("abc", None),
    ],
)
def test_millis_to_ns(value: object, expected: int | None) -> None:
    assert millis_to_ns(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.004", 4_000_000),
        ("0.000", 0),
        (0.004, 4_000_000),
        ("1", 1_000_000_000),
        ("", None),
        ("-", None),
        ("nan", None),
        ("inf", None),
        ("-0.001", None),
        ("1e300", None),
        ("0.010, 0.020", None),  # lists are upstream_seconds_to_ns's business
    ],
)
def test_seconds_to_ns(value: object, expected: int | None) -> None:
    assert seconds_to_ns(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.010", 10_000_000),
        ("0.010, 0.020", 30_000_000),  # retries: the total
        ("0.010 : 0.020", 30_000_000),  # internal redirect
        ("0.010, - : 0.005", 15_000_000),  # unknown parts are skipped
        ("-", None),
        ("-, -", None),
        ("", None),
        (None, None),
        (0.5, 500_000_000),
        ("1e300, 1e300", None),
    ],
)
def test_upstream_seconds_to_ns(value: object, expected: int | None) -> None:
    assert upstream_seconds_to_ns(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-20T12:00:00.001Z", T0 + 1_000_000),
        ("2026-11-20T12:00:00.001+00:00", T0 + 1_000_000),
        ("2026-11-20T12:00:00Z", T0),
        ("2026-11-20T12:00:00+00:00", T0),
        ("2026-11-20T13:00:00+01:00", T0),
        ("2026-11-20T12:00:00", T0),  # naive: UTC
        ("2026-11-20T12:00:00.123456789Z", T0 + 123_456_789),
        ("2026-11-20T12:00:00.1234567891234Z", T0 + 123_456_789),  # beyond ns: cut
        ("2026-11-20T12:00:00.5", T0 + 500_000_000),
        ("2026-13-40T00:00:00Z", None),
        ("yesterday", None),
        ("2026-11-20T12:00:00.00١Z", None),  # noqa: RUF001 - a non-ASCII digit
        ("1969-12-31T23:59:59Z", None),  # before the readable range
    ],
)
def test_iso_to_ns(value: str, expected: int | None) -> None:
    assert iso_to_ns(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_795_176_000, T0),  # seconds
        (1_795_176_000.5, T0 + 500_000_000),
        (1_795_176_000_000, T0),  # milliseconds
        (1_795_176_000_000_000, T0),  # microseconds
        (T0, T0),  # nanoseconds
        (0, None),
        (-5, None),
        (float("nan"), None),
        (float("inf"), None),
    ],
)
def test_epoch_to_ns(value: float, expected: int | None) -> None:
    assert epoch_to_ns(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-20T12:00:00.001Z", T0 + 1_000_000),
        ("1795176000.004", T0 + 4_000_000),  # nginx $msec
        (1795176000.5, T0 + 500_000_000),  # Fluent Bit's float @timestamp
        (1795176000, T0),
        ("-", None),
        ("", None),
        (None, None),
        (True, None),
        ({"a": 1}, None),
        ("12345678901234567890123", None),  # beyond year 9999
        (10**400, None),  # beyond float range
        ("1e999", None),
    ],
)
def test_timestamp_to_ns(value: object, expected: int | None) -> None:
    assert timestamp_to_ns(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20/Nov/2026:12:00:03 +0000", T0 + 3_000_000_000),
        ("20/Nov/2026:13:00:03 +0100", T0 + 3_000_000_000),
        ("20/Nov/2026:04:00:03 -0800", T0 + 3_000_000_000),
        ("20/Foo/2026:12:00:03 +0000", None),
        ("garbage", None),
        ("31/Dec/9999:23:59:59 -2359", None),  # past year 9999 in UTC
        ("20/Nov/20000000026:12:00:06 +0000", None),  # found by hypothesis: OverflowError
    ],
)
def test_clf_to_ns(value: str, expected: int | None) -> None:
    assert clf_to_ns(value) == expected


def test_ns_to_iso_is_utc_with_milliseconds() -> None:
    assert ns_to_iso(T0) == "2026-11-20T12:00:00.000Z"
    assert ns_to_iso(T0 + 1_999_999) == "2026-11-20T12:00:00.001Z"
    assert ns_to_iso(0) == "1970-01-01T00:00:00.000Z"
    assert ns_to_iso(MAX_TIMESTAMP_NS - 1) == "9999-12-31T23:59:59.999Z"


def test_start_from_end() -> None:
    assert start_from_end(T0, 4_000_000) == T0 - 4_000_000
    assert start_from_end(T0, None) == T0
    assert start_from_end(None, 5) is None
    assert start_from_end(1000, 5000) is None  # would be before 1970


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        (" 1.2.3.4 ", "1.2.3.4"),
        ('"1.2.3.4"', "1.2.3.4"),
        ("1.2.3.4:8080", "1.2.3.4"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("::ffff:1.2.3.4", "1.2.3.4"),  # IPv4-mapped: as IPv4
        ("::1.2.3.4", "::102:304"),  # IPv4-compatible: ipaddress's spelling
        ("::", "::"),
        ("1::1:0:0:1", "1::1:0:0:1"),
        ("01.2.3.4", None),  # leading zeros are ambiguous (octal?)
        ("1.2.3", None),
        ("256.1.1.1", None),
        ("unknown", None),
        ("unix:", None),
        ("", None),
        ("-", None),
        ("[2001:db8::1", None),
        ("1.2.3.4\x00", None),
        ("go.dev:443", None),
    ],
)
def test_canonical_ip(entry: str, expected: str | None) -> None:
    assert canonical_ip(entry) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", 0x01020304),
        ("0.0.0.0", 0),
        ("255.255.255.255", 2**32 - 1),
        ("10.0.0.1", 0x0A000001),
        ("01.2.3.4", -1),  # what inet_pton refuses: leading zeros,
        ("1.2.3.04", -1),
        ("1.2.3", -1),  # three or five parts,
        ("1.2.3.4.5", -1),
        ("256.1.1.1", -1),  # an octet beyond 255,
        ("1234.1.1.1", -1),
        ("1..2.3", -1),
        (" 1.2.3.4", -1),  # anything around it,
        ("1.2.3.4:80", -1),
        ("1.2.3.4\x00", -1),
        ("\u0663.1.1.1", -1),  # digits of other scripts,
        ("::1", -1),  # IPv6
        ("", -1),
    ],
)
def test_ipv4_value(text: str, expected: int) -> None:
    assert ipv4_value(text) == expected
    assert values.IPV4_VALUE(text) == expected  # C where the core is compiled


def test_the_compiled_core_reads_addresses_in_c() -> None:
    if not compiled_core_in_use():
        assert values.IPV4_VALUE is ipv4_value
        return
    from pipeline.core import _read

    assert values.IPV4_VALUE is _read.ipv4


_OCTETS = st.one_of(
    st.integers(0, 300).map(str),
    st.sampled_from(["00", "01", "007", "", "1a", "\u0661", " 1", "2 ", "+1", "-1", "0x1"]),
)


@settings(max_examples=1000, deadline=None)
@given(
    text=st.one_of(
        st.lists(_OCTETS, min_size=1, max_size=6).map(".".join),
        st.text(st.sampled_from("0123456789.:x \x00"), max_size=20),
        st.text(max_size=20),
    )
)
def test_the_c_ipv4_reader_is_inet_pton(text: str) -> None:
    """``_read.ipv4`` (what the compiled core uses) reads exactly what ``inet_pton`` does."""
    assert values.IPV4_VALUE(text) == ipv4_value(text)


@pytest.mark.parametrize(
    "address", ["10.4.0.1", "255.255.255.255", "2001:db8::ff", "::1", "2400:4050:1:2:3:4:5:6"]
)
def test_canonical_ip_agrees_with_ipaddress(address: str) -> None:
    assert canonical_ip(address) == str(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.4.0.1:33000", "10.4.0.1"),
        ("[fd00::1]:40000", "fd00::1"),
        ("2001:db8::1", "2001:db8::1"),  # bare IPv6: the last group is no port
        ("10.4.0.1", "10.4.0.1"),
        ("host:80", None),
    ],
)
def test_peer_ip(address: str, expected: str | None) -> None:
    assert peer_ip(address) == expected


def test_remember_starts_over_when_full() -> None:
    memo: dict[str, int] = {}
    for i in range(5):
        remember(memo, str(i), i, 3)
    assert memo == {"3": 3, "4": 4}


def test_ip_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(values, "_IP_MEMO", {})
    monkeypatch.setattr(values, "_IP_MEMO_MAX", 10)
    for i in range(100):
        assert canonical_ip(f"10.0.0.{i}") == f"10.0.0.{i}"
    assert len(values._IP_MEMO) <= 10


def test_huge_values_are_not_memoised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(values, "_IP_MEMO", {})
    huge = " " * 100_000 + "1.2.3.4"
    assert canonical_ip(huge) == "1.2.3.4"
    assert huge not in values._IP_MEMO
    assert clf_to_ns("20/Nov/2026:12:00:03 +0000" + " " * 100_000) is None


# --- nginx's seconds: C reads the usual "digits.digits" (pipeline/core/_read.c) ---------


def _seconds_definition(text: str) -> int | None:
    """What seconds_to_ns of a str is, by its definition (float, multiply, round)."""
    if text in values._MISSING:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return round(number * 1_000_000_000) if 0 <= number < (2**63 - 1) / 1e9 else None


_SECONDS = st.one_of(
    st.builds(
        "{}.{}".format,
        st.integers(0, 10**10).map(str),
        st.text(st.sampled_from("0123456789"), min_size=1, max_size=12),
    ),
    st.integers(0, 10**16).map(str),
    st.decimals(0, 10**6, places=3).map(str),
    st.floats(0, 1e12).map(repr),
    st.text(st.sampled_from("0123456789._ -e+"), max_size=20),
    st.sampled_from(["0.5", "0.0000000005", "0.0000000015", "0.0000000025", "12.", ".5", "-"]),
)


@settings(max_examples=2000, deadline=None)
@given(_SECONDS)
def test_seconds_are_read_as_float_then_rounded(text: str) -> None:
    assert seconds_to_ns(text) == _seconds_definition(text)


def test_the_compiled_core_reads_nginx_seconds_in_c() -> None:
    if not compiled_core_in_use():
        assert values._NATIVE_SECONDS is None
        return
    from pipeline.core import _read

    assert values._NATIVE_SECONDS is _read.seconds_ns
    assert _read.seconds_ns("0.004") == 4_000_000
    assert _read.seconds_ns("0.0000000025") == 2  # half to even, as round()
    assert _read.seconds_ns("0.0000000035") == 4
    for other in ("", "-", "12.", ".5", "1_0", " 1", "1e3", "1234567890123456", "1000000000", "٣"):
        assert _read.seconds_ns(other) == -1

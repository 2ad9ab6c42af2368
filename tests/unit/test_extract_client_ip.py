"""Client IP behind trusted proxies (nginx real_ip_recursive on)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.extract import client_ip as client_ip_module
from pipeline.core.extract.client_ip import (
    CLIENT_IP_V4,
    DEFAULT_TRUSTED_PROXIES,
    TrustedProxies,
    parse_ip,
)
from pipeline.core.formats.values import MAX_FORWARDED_HOPS
from tests.unit.conftest import compiled_core_in_use

PROXIES = TrustedProxies.from_cidrs(DEFAULT_TRUSTED_PROXIES.split(","))


@pytest.mark.parametrize(
    ("peer", "xff", "client"),
    [
        # untrusted direct peer: the peer, whatever X-Forwarded-For claims
        ("203.0.113.7", "1.1.1.1", "203.0.113.7"),
        ("2001:db8::7", "1.1.1.1", "2001:db8::7"),
        # trusted peer: right to left, first untrusted
        ("10.0.0.1", "192.0.2.44", "192.0.2.44"),
        ("10.0.0.1", "192.0.2.44, 10.0.0.2", "192.0.2.44"),
        ("10.0.0.1", "192.0.2.44,10.0.0.2,172.16.0.1", "192.0.2.44"),
        # a client-supplied left-most entry is never believed past an untrusted hop
        ("10.0.0.1", "1.2.3.4, 192.0.2.44, 10.0.0.2", "192.0.2.44"),
        ("10.0.0.1", "127.0.0.1, 192.0.2.44", "192.0.2.44"),
        # all trusted: the left-most
        ("10.0.0.1", "10.9.9.9, 192.168.0.1", "10.9.9.9"),
        ("10.0.0.1", "unknown, 172.16.3.4, 192.168.1.1", "172.16.3.4"),
        # unparsable entries are skipped
        ("10.0.0.1", "192.0.2.44, garbage, 10.0.0.2", "192.0.2.44"),
        ("10.0.0.1", "01.2.3.4, 10.0.0.2", "10.0.0.2"),
        ("10.0.0.1", "garbage", "10.0.0.1"),
        ("10.0.0.1", ", ,", "10.0.0.1"),
        # ports, brackets, quotes, IPv6
        ("10.0.0.1", "192.0.2.44:5555, 10.0.0.2:80", "192.0.2.44"),
        ("10.0.0.1", "[2001:db8::7]:443, 10.0.0.2", "2001:db8::7"),
        ("10.0.0.1", "2001:DB8::7", "2001:db8::7"),
        ("10.0.0.1", '"192.0.2.44"', "192.0.2.44"),
        ("10.0.0.1", "::ffff:192.0.2.44", "192.0.2.44"),
        ("fd00::1", "2400:4050::1, fd00::2", "2400:4050::1"),
        ("::1", "192.0.2.44, fe80::1%eth0", "192.0.2.44"),
        # no peer logged: the chain alone
        (None, "192.0.2.44, 10.0.0.2", "192.0.2.44"),
        ("", "192.0.2.44", "192.0.2.44"),
        ("garbage", "192.0.2.44", "192.0.2.44"),
        # no chain
        ("10.0.0.1", None, "10.0.0.1"),
        ("10.0.0.1", "", "10.0.0.1"),
        (None, None, None),
        (None, "garbage", None),
    ],
)
def test_client_ip(peer: str | None, xff: str | None, client: str | None) -> None:
    assert PROXIES.client_ip(peer, xff) == client


def test_custom_trusted_networks() -> None:
    proxies = TrustedProxies.from_cidrs(["203.0.113.0/24", "2001:db8:1::/48"])
    assert proxies.client_ip("203.0.113.9", "192.0.2.44, 203.0.113.1") == "192.0.2.44"
    # 10/8 is not trusted here: the RFC 1918 hop is the client
    assert proxies.client_ip("203.0.113.9", "192.0.2.44, 10.0.0.2") == "10.0.0.2"
    assert proxies.client_ip("2001:db8:1::5", "2001:db8:2::1") == "2001:db8:2::1"


def test_no_trusted_networks_means_the_peer() -> None:
    proxies = TrustedProxies.from_cidrs([])
    assert proxies.client_ip("10.0.0.1", "192.0.2.44") == "10.0.0.1"


def test_is_trusted_ipv4_and_ipv6() -> None:
    assert PROXIES.is_trusted("10.1.2.3")
    assert PROXIES.is_trusted("172.31.255.255")
    assert not PROXIES.is_trusted("172.32.0.0")
    assert PROXIES.is_trusted("::1")
    assert PROXIES.is_trusted("fd12::1")
    assert PROXIES.is_trusted("fe80::1")
    assert not PROXIES.is_trusted("2001:db8::1")
    assert not PROXIES.is_trusted("192.0.2.44")


def test_parse_ip() -> None:
    assert parse_ip(" [2001:DB8::1]:443 ") == "2001:db8::1"
    assert parse_ip("nope") is None
    assert PROXIES.parse("192.0.2.44:80") == "192.0.2.44"


def test_the_memo_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_ip_module, "_MEMO_MAX", 16)
    proxies = TrustedProxies.from_cidrs(["10.0.0.0/8"])
    for i in range(200):
        # walk: the definition, which memoises (client_ip reads these quads in C).
        assert proxies.walk("10.0.0.1", f"192.0.2.{i % 250}, 10.0.0.{i % 250}") == (
            f"192.0.2.{i % 250}"
        )
    assert len(proxies._memo) <= 16


def test_the_compiled_core_walks_dotted_quads_in_c() -> None:
    if not compiled_core_in_use():
        assert CLIENT_IP_V4 is None
        return
    assert CLIENT_IP_V4 is not None
    packed = PROXIES._v4_packed
    assert CLIENT_IP_V4("10.0.0.1", " 192.0.2.44 , 10.0.0.2", packed, 32) == "192.0.2.44"
    assert CLIENT_IP_V4("10.0.0.1", None, packed, 32) == "10.0.0.1"
    assert CLIENT_IP_V4(None, None, packed, 32) is None
    # Anything but a dotted quad is the Python path's ("").
    for peer, chain in [("10.0.0.1", "[::1]:80"), ("10.0.0.1", "a, 10.0.0.2"), ("x", None)]:
        assert CLIENT_IP_V4(peer, chain, packed, 32) == ""


def test_at_most_max_forwarded_hops_entries_are_read() -> None:
    trusted = ", ".join(["10.0.0.9"] * (MAX_FORWARDED_HOPS - 1))
    # The client-supplied entry just past the limit is never read: the left-most read wins.
    chain = f"192.0.2.1, 10.0.0.8, {trusted}"
    assert PROXIES.client_ip("10.0.0.1", chain) == "10.0.0.8" == PROXIES.walk("10.0.0.1", chain)
    chain = f"192.0.2.1, {trusted}"
    assert PROXIES.client_ip("10.0.0.1", chain) == "192.0.2.1" == PROXIES.walk("10.0.0.1", chain)


_SPACE = st.sampled_from(["", " ", "  ", "\t", "\x1c", "\x1f", "\r\n", "\x0b"])
_QUAD = st.one_of(
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda q: ".".join(map(str, q))),
    st.sampled_from(
        ["10.0.0.1", "10.9.8.7", "172.16.0.1", "172.32.0.1", "192.168.1.1", "127.0.0.1",
         "169.254.0.1", "192.0.2.44", "0.0.0.0", "255.255.255.255"]
    ),
)  # fmt: skip
_OTHER = st.sampled_from(
    ["", "unknown", "01.2.3.4", "256.1.1.1", "1.2.3", "1.2.3.4:80", "[::1]:443", "::1",
     "fd00::1", "2001:db8::7", '"192.0.2.44"', "::ffff:10.0.0.1", "1.2.3.4\x00", "\u0661.1.1.1",
     "1.2.3.4 5", "\xa01.2.3.4"]
)  # fmt: skip
_ENTRY = st.builds(
    lambda before, address, after: before + address + after,
    _SPACE,
    st.one_of(_QUAD, _QUAD, _QUAD, _OTHER),
    _SPACE,
)
_NETWORKS = st.sampled_from(
    [DEFAULT_TRUSTED_PROXIES.split(","), [], ["0.0.0.0/0"], ["10.0.0.0/8", "192.0.2.44/32"],
     ["203.0.113.0/24", "2001:db8::/32"], ["::ffff:10.0.0.0/104"]]
)  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(
    networks=_NETWORKS,
    peer=st.one_of(st.none(), _ENTRY),
    chain=st.one_of(
        st.none(),
        st.lists(_ENTRY, max_size=MAX_FORWARDED_HOPS + 3).map(",".join),
        st.text(st.sampled_from("0123456789.,: \t"), max_size=40),
    ),
)
def test_client_ip_is_its_definition_on_any_chain(
    networks: list[str], peer: str | None, chain: str | None
) -> None:
    """client_ip (C where every address read is a dotted quad) answers as walk does."""
    proxies = TrustedProxies.from_cidrs(networks)
    assert proxies.client_ip(peer, chain) == TrustedProxies.from_cidrs(networks).walk(peer, chain)

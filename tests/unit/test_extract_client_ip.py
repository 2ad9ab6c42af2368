"""Client IP behind trusted proxies (nginx real_ip_recursive on)."""

from __future__ import annotations

import pytest

from pipeline.config import DEFAULT_TRUSTED_PROXIES
from pipeline.core.extract import client_ip as client_ip_module
from pipeline.core.extract.client_ip import TrustedProxies, parse_ip

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
        assert proxies.client_ip("10.0.0.1", f"192.0.2.{i % 250}, 10.0.0.{i % 250}") == (
            f"192.0.2.{i % 250}"
        )
    assert len(proxies._memo) <= 16

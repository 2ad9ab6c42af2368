"""Client IP behind trusted proxies, like nginx ``real_ip_recursive on``.

If the direct peer is trusted (or not logged), walk X-Forwarded-For right to
left, skipping trusted and unparsable entries; the first untrusted address is
the client; if every entry is trusted, the left-most valid one. A left-most
entry the client wrote itself is never believed past an untrusted hop.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from pipeline.core import read_function
from pipeline.core.formats.values import (
    IPV4_VALUE,
    MAX_FORWARDED_HOPS,
    MEMO_KEY_MAX,
    canonical_ip,
    remember,
)

_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# An XFF entry -> (canonical IP or None, trusted?)
_Entry = tuple[str | None, bool]
_MEMO_MAX = 65_536

# TrustedProxies.walk in C where every address it reads is a dotted quad (pipeline/core/
# _read.c); "" for anything else. A quad parsed again costs less than the memo's lookup
# in a dict of every address seen, which misses the cache (bench/README.md, "Session 24").
CLIENT_IP_V4: Final[Callable[[str | None, str | None, bytes, int], str | None] | None] = (
    read_function("client_ip_v4")
)

# The default trusted proxies (``GRAYSCOPE_TRUSTED_PROXIES``): peers whose
# X-Forwarded-For entries are believed.
DEFAULT_TRUSTED_PROXIES: Final = (
    "127.0.0.0/8,::1/128,"  # loopback
    "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,"  # RFC 1918
    "fc00::/7,"  # RFC 4193
    "169.254.0.0/16,fe80::/10"  # link-local
)


def parse_ip(entry: str) -> str | None:
    """One XFF entry or peer address -> canonical IP text, or None if unparsable.

    Accepts ``1.2.3.4``, ``1.2.3.4:80``, ``[2001:db8::1]:443``, ``2001:DB8::1``,
    quoted values and IPv4-mapped IPv6 (returned as IPv4).
    """
    return canonical_ip(entry)


@dataclass(slots=True)
class TrustedProxies:
    networks: tuple[_IPNetwork, ...]
    # Addresses and XFF entries repeat (proxies, returning clients): one memo
    # answers "which IP is this and do we trust it" with a single dict lookup.
    _memo: dict[str, _Entry] = field(init=False, default_factory=dict)
    _v4: tuple[tuple[int, int], ...] = field(init=False, default=())
    _v6: tuple[tuple[int, int], ...] = field(init=False, default=())
    # _v4 as native uint32 pairs, what _read.client_ip_v4 reads.
    _v4_packed: bytes = field(init=False, default=b"")

    def __post_init__(self) -> None:
        self._v4 = tuple(
            (int(n.network_address), int(n.netmask)) for n in self.networks if n.version == 4
        )
        self._v6 = tuple(
            (int(n.network_address), int(n.netmask)) for n in self.networks if n.version == 6
        )
        self._v4_packed = b"".join([struct.pack("=II", net, mask) for net, mask in self._v4])

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str]) -> TrustedProxies:
        return cls(tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs))

    def _entry(self, raw: str) -> _Entry:
        memo = self._memo
        entry = memo.get(raw)  # no KeyError on a miss (see canonical_ip)
        if entry is not None:
            return entry
        value = IPV4_VALUE(raw)
        if value >= 0:  # the usual address, already canonical: no strips, no inet_pton
            entry = (raw, self._trusted_v4(value))
        else:
            ip = canonical_ip(raw)
            entry = (ip, ip is not None and self.is_trusted(ip))
        if len(raw) <= MEMO_KEY_MAX:
            remember(memo, raw, entry, _MEMO_MAX)
        return entry

    def parse(self, entry: str) -> str | None:
        return self._entry(entry)[0]

    def is_trusted(self, ip: str) -> bool:
        """``ip`` must be canonical (from :meth:`parse`)."""
        # inet_pton + integer masks: ~10x cheaper than ipaddress objects.
        if ":" in ip:
            value = int.from_bytes(socket.inet_pton(socket.AF_INET6, ip), "big")
            for net, mask in self._v6:  # noqa: SIM110 - a plain loop is cheaper than any()
                if value & mask == net:
                    return True
            return False
        return self._trusted_v4(IPV4_VALUE(ip))

    def _trusted_v4(self, value: int) -> bool:
        """Whether the IPv4 address of this 32-bit value is in a trusted network."""
        for net, mask in self._v4:  # noqa: SIM110 - a plain loop is cheaper than any(<genexpr>)
            if value & mask == net:
                return True
        return False

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client's address (the module doc): :meth:`walk`, in C where every
        address it reads is a dotted quad."""
        if CLIENT_IP_V4 is not None:
            found = CLIENT_IP_V4(peer, forwarded_for, self._v4_packed, MAX_FORWARDED_HOPS)
            if found is None or found:
                return found
        return self.walk(peer, forwarded_for)

    def walk(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The definition of :meth:`client_ip`: the peer, then X-Forwarded-For right to
        left, each address parsed once per memo entry."""
        # `memo.get(x) or self._entry(x)`: the memo hit without a method call
        # (entries are non-empty tuples, so always truthy).
        memo = self._memo
        peer_ip = None
        if peer:
            peer_ip, trusted = memo.get(peer) or self._entry(peer)
            if peer_ip is not None and not trusted:
                return peer_ip
        if not forwarded_for:
            return peer_ip
        if "," not in forwarded_for:
            # One entry: the client whether or not it is trusted (then it is the left-most).
            ip = (memo.get(forwarded_for) or self._entry(forwarded_for))[0]
            return ip if ip is not None else peer_ip
        leftmost: str | None = None
        # The right-most MAX_FORWARDED_HOPS entries: the hops nearest to us, which
        # the trusted-proxy walk reads first (the left ones are client-supplied).
        hops = forwarded_for.rsplit(",", MAX_FORWARDED_HOPS)
        if len(hops) > MAX_FORWARDED_HOPS:
            del hops[0]
        for raw in reversed(hops):
            ip, trusted = memo.get(raw) or self._entry(raw)
            if ip is None:
                continue
            if not trusted:
                return ip
            leftmost = ip
        return leftmost if leftmost is not None else peer_ip


def forwarded_truncated(forwarded_for: str) -> bool:
    """Whether the walk left entries of this X-Forwarded-For unread (more than
    ``MAX_FORWARDED_HOPS``)."""
    return forwarded_for.count(",") >= MAX_FORWARDED_HOPS

"""Client IP behind trusted proxies, like nginx ``real_ip_recursive on``.

If the direct peer is trusted (or not logged), walk X-Forwarded-For right to
left, skipping trusted and unparsable entries; the first untrusted address is
the client; if every entry is trusted, the left-most valid one. A left-most
entry the client wrote itself is never believed past an untrusted hop.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.cache import BoundedCache

_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(entry: str) -> str | None:
    """One XFF entry or peer address -> canonical IP text, or None if unparsable.

    Accepts ``1.2.3.4``, ``1.2.3.4:80``, ``[2001:db8::1]:443``, ``2001:DB8::1``,
    quoted values and IPv4-mapped IPv6 (returned as IPv4).
    """
    value = entry.strip().strip('"').strip()
    if not value:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        value = value[1:end]
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    pct = value.find("%")  # IPv6 zone id
    if pct > 0:
        value = value[:pct]
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@dataclass(slots=True)
class TrustedProxies:
    networks: tuple[_IPNetwork, ...]
    _parsed: BoundedCache[str, str | None] = field(init=False)
    _trusted: BoundedCache[str, bool] = field(init=False)

    def __post_init__(self) -> None:
        self._parsed = BoundedCache(parse_ip)
        self._trusted = BoundedCache(self._is_trusted)

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str]) -> TrustedProxies:
        return cls(tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs))

    def _is_trusted(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return any(addr.version == net.version and addr in net for net in self.networks)

    def parse(self, entry: str) -> str | None:
        return self._parsed.get(entry)

    def is_trusted(self, ip: str) -> bool:
        """``ip`` must be canonical (from :meth:`parse`)."""
        return self._trusted.get(ip)

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str | None:
        peer_ip = self.parse(peer) if peer else None
        if peer_ip is not None and not self.is_trusted(peer_ip):
            return peer_ip
        if not forwarded_for:
            return peer_ip
        leftmost: str | None = None
        for entry in reversed(forwarded_for.split(",")):
            ip = self.parse(entry)
            if ip is None:
                continue
            if not self.is_trusted(ip):
                return ip
            leftmost = ip
        return leftmost if leftmost is not None else peer_ip

"""Who the client is behind a trusted reverse proxy: RFC 7239 ``Forwarded``
or ``X-Forwarded-For``/``X-Forwarded-Proto``, believed only from the peers
``Config.forwarded_allow_ips`` names.

Each proxy appends the address it received the request from, so the list is
read from the right: hops that are trusted proxies themselves are passed over,
and the first one that is not is the client (anything left of it was written
by the client and proves nothing). From any other peer the headers are
ignored. Pure: a peer and headers in, an address out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from wsnet._http import Request

__all__ = ["Forwarded", "TrustedProxies"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Forwarded:
    """The client as the trusted proxies saw it."""

    ip: str
    port: int
    scheme: str | None  # "http"/"https" if a proxy said, else None


class TrustedProxies:
    """The networks whose ``Forwarded`` headers are believed."""

    __slots__ = ("_networks",)

    def __init__(self, specs: Iterable[str]) -> None:
        """``specs``: addresses and CIDRs (``10.0.0.0/8``, ``::1``); ValueError
        names a bad one."""
        networks = []
        for spec in specs:
            try:
                networks.append(ipaddress.ip_network(spec.strip(), strict=False))
            except ValueError:
                raise ValueError(f"not an address or CIDR: {spec!r}") from None
        self._networks: tuple[Network, ...] = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:10.0.0.2 is 10.0.0.2
        return any(address in network for network in self._networks)

    def client(self, peer: tuple[str, int], request: Request) -> Forwarded | None:
        """The client behind ``peer``, or None if ``peer`` is not trusted or
        said nothing usable (then the peer is the client)."""
        if not self._networks or not self.trusts(peer[0]):
            return None
        forwarded = request.header_values("forwarded")
        if forwarded:
            hops = [_rfc7239(element) for value in forwarded for element in value.split(",")]
        else:
            hops = [(_node(h), None) for value in request.header_values("x-forwarded-for")
                    for h in value.split(",")]
        proto = (request.header("x-forwarded-proto") or "").split(",")[-1].strip().lower()
        chosen: Forwarded | None = None
        if not hops and proto in ("http", "https"):
            chosen = Forwarded(peer[0], peer[1], None)  # no hops: only the scheme is news
        for node, scheme in reversed(hops):
            if node is None:
                return None  # unparsable or obfuscated: trust nothing behind it
            chosen = Forwarded(node[0], node[1], scheme)
            if not self.trusts(node[0]):
                break
        if chosen is not None and chosen.scheme is None and proto in ("http", "https"):
            chosen = Forwarded(chosen.ip, chosen.port, proto)
        return chosen


def _node(text: str) -> tuple[str, int] | None:
    """``1.2.3.4``, ``1.2.3.4:5678``, ``[2001:db8::1]:80``, ``2001:db8::1`` ->
    (address, port or 0); None for ``unknown``, ``_hidden`` or junk."""
    text = text.strip().strip('"')
    port = 0
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, digits = text.partition(":")
        port = int(digits) if digits.isdigit() else 0
    else:
        host = text
    try:
        return str(ipaddress.ip_address(host)), port if port <= 65535 else 0
    except ValueError:
        return None


def _rfc7239(element: str) -> tuple[tuple[str, int] | None, str | None]:
    """One ``Forwarded`` element (``for=...;proto=https;by=...``)."""
    node: tuple[str, int] | None = None
    scheme = None
    for pair in element.split(";"):
        key, _, value = pair.partition("=")
        key = key.strip().lower()
        if key == "for":
            node = _node(value)
        elif key == "proto" and value.strip().strip('"').lower() in ("http", "https"):
            scheme = value.strip().strip('"').lower()
    return node, scheme

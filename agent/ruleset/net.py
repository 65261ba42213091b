"""IP addresses and networks as the rules and lists use them."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Union

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]  # a runtime alias: `|` on types needs 3.10
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def parse_ip(addr: str) -> IPAddress | None:
    """The address in ``addr``, or None when it is not an IP address."""
    try:
        return ipaddress.ip_address(addr)
    except ValueError:
        return None


def in_networks(ip: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    """True when ``ip`` is in one of ``networks``; an IPv4-mapped IPv6 address is also tried as IPv4."""
    # A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d; it is the same host.
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return any(ip in net or (mapped is not None and mapped in net) for net in networks)


def check_network(text: str) -> str | None:
    """Why ``text`` is not a network in CIDR notation (a bare address is a /32 or /128), or None."""
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        return f"{exc}"
    return None

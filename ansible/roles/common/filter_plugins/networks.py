"""Jinja filters of the common role: address arithmetic without the netaddr library."""

from __future__ import annotations

import ipaddress


def in_networks(address: str, cidrs: list[str]) -> bool:
    """Whether `address` lies in one of `cidrs` (False for an address that does not parse)."""
    try:
        ip = ipaddress.ip_address(str(address).strip())
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(str(cidr), strict=False) for cidr in cidrs)


class FilterModule:
    def filters(self):
        return {"in_networks": in_networks}

"""The host's network as the kernel reports it."""

from __future__ import annotations


def default_route(
    route_file: str = "/proc/net/route", ipv6_file: str = "/proc/net/ipv6_route"
) -> bool:
    """Whether the kernel has an IPv4 or IPv6 default route."""
    try:
        with open(route_file, encoding="ascii") as fh:
            next(fh, None)
            if any(line.split()[1:2] == ["00000000"] for line in fh):
                return True
    except OSError:
        pass
    try:
        with open(ipv6_file, encoding="ascii") as fh:
            return any(
                line.split()[:2] == ["0" * 32, "00"] and line.split()[-1] != "lo" for line in fh
            )
    except OSError:
        return False

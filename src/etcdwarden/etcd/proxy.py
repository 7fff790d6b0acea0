"""HTTP CONNECT proxy selection for gRPC channels, from the usual environment variables.

gRPC users expect ``grpc_proxy``/``HTTPS_PROXY``/``HTTP_PROXY`` to route connections through a proxy
and ``NO_PROXY`` (or ``no_grpc_proxy``) to exempt hosts. We resolve the variables ourselves, per
endpoint, and pass the result to the channel explicitly (``grpc.http_proxy`` or
``grpc.enable_http_proxy=0``), so the behaviour does not depend on the grpc core version.

``NO_PROXY`` entries: ``*``; a host name (matches itself and its subdomains; a leading dot is
allowed); an IP address; a CIDR block; any of these with ``:port``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping


def _get(env: Mapping[str, str], *names: str) -> str | None:
    for n in names:
        for variant in (n.lower(), n.upper()):
            v = env.get(variant)
            if v:
                return v
    return None


def _matches(host: str, port: int, entry: str) -> bool:
    entry = entry.strip().lower()
    if not entry:
        return False
    if entry == "*":
        return True
    h = host.strip("[]").lower()
    # optional :port on the entry (not for bare IPv6)
    if entry.count(":") == 1 and not entry.startswith("["):
        name, _, p = entry.partition(":")
        if p.isdigit():
            if int(p) != port:
                return False
            entry = name
    entry = entry.strip("[]")
    try:
        addr = ipaddress.ip_address(h)
    except ValueError:
        addr = None
    if "/" in entry:
        try:
            net = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return False
        return addr is not None and addr in net
    if addr is not None:
        try:
            return addr == ipaddress.ip_address(entry)
        except ValueError:
            return False
    entry = entry.lstrip(".")
    return h == entry or h.endswith("." + entry)


def proxy_for(host: str, port: int, env: Mapping[str, str]) -> str | None:
    """The proxy URL to use for ``host:port``, or None for a direct connection."""
    proxy = _get(env, "grpc_proxy", "https_proxy", "http_proxy")
    if not proxy:
        return None
    no_proxy = _get(env, "no_grpc_proxy", "no_proxy") or ""
    if any(_matches(host, port, e) for e in no_proxy.split(",")):
        return None
    return proxy


def channel_proxy_options(host: str, port: int, env: Mapping[str, str]) -> list[tuple[str, str | int]]:
    proxy = proxy_for(host, port, env)
    if proxy is None:
        return [("grpc.enable_http_proxy", 0)]
    return [("grpc.enable_http_proxy", 1), ("grpc.http_proxy", proxy)]

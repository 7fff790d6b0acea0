"""Endpoint strings as etcdctl accepts them: ``host:port``, ``http://host:port``, ``https://host:port``.

Host names, IPv4 and bracketed IPv6 addresses are accepted; anything else is a usage error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from etcdwarden.errors import UsageError

_HOST_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9]([A-Za-z0-9\-.]*[A-Za-z0-9])?)$")


@dataclass(frozen=True)
class Endpoint:
    """One etcd client endpoint. ``secure`` is None for a bare ``host:port`` (decided by TLS flags)."""

    host: str
    port: int
    secure: bool | None
    raw: str

    @property
    def target(self) -> str:
        """The gRPC target (``host:port``)."""
        return f"{self.host}:{self.port}"

    def url(self, tls: bool) -> str:
        scheme = "https" if (self.secure if self.secure is not None else tls) else "http"
        return f"{scheme}://{self.target}"

    def uses_tls(self, tls_configured: bool) -> bool:
        return self.secure if self.secure is not None else tls_configured


def parse_endpoint(text: str) -> Endpoint:
    raw = text.strip()
    if not raw:
        raise UsageError("empty endpoint; use host:port or http(s)://host:port")
    rest = raw
    secure: bool | None = None
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        scheme = scheme.lower()
        if scheme in ("http", "unix"):
            secure = False
        elif scheme in ("https", "unixs"):
            secure = True
        else:
            raise UsageError(f"endpoint {raw!r}: unsupported scheme {scheme!r}; use http:// or https://")
        if scheme.startswith("unix"):
            raise UsageError(f"endpoint {raw!r}: unix sockets are not supported; use host:port")
    rest = rest.rstrip("/")
    if "/" in rest:
        raise UsageError(f"endpoint {raw!r}: a path is not allowed; use host:port or http(s)://host:port")
    if rest.startswith("["):
        host, sep, port_s = rest.rpartition(":")
        if not host.endswith("]"):
            raise UsageError(f"endpoint {raw!r}: expected [ipv6]:port")
    else:
        host, sep, port_s = rest.rpartition(":")
    if not sep or not host:
        raise UsageError(f"endpoint {raw!r}: missing port; use host:port (e.g. 127.0.0.1:2379)")
    if not _HOST_RE.match(host):
        raise UsageError(f"endpoint {raw!r}: {host!r} is not a valid host name or IP address")
    try:
        port = int(port_s)
    except ValueError:
        raise UsageError(f"endpoint {raw!r}: port {port_s!r} is not a number") from None
    if not 0 < port < 65536:
        raise UsageError(f"endpoint {raw!r}: port {port} is out of range")
    return Endpoint(host=host, port=port, secure=secure, raw=raw)


def parse_endpoints(text: str | list[str]) -> list[Endpoint]:
    """Parse a comma-separated list (or a list of such strings); duplicates are dropped."""
    items = text if isinstance(text, list) else [text]
    out: list[Endpoint] = []
    seen: set[str] = set()
    for item in items:
        for part in item.split(","):
            if not part.strip():
                continue
            ep = parse_endpoint(part)
            if ep.raw not in seen:
                seen.add(ep.raw)
                out.append(ep)
    if not out:
        raise UsageError("no endpoints given; use --endpoints host:port[,host:port...]")
    return out

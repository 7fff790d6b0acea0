"""How to reach an etcd cluster: endpoints, TLS, credentials, timeouts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from etcdwarden.etcd.endpoints import Endpoint, parse_endpoints


@dataclass(frozen=True)
class ClientConfig:
    endpoints: tuple[Endpoint, ...]
    cacert: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure_skip_tls_verify: bool = False
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    dial_timeout: float = 2.0
    command_timeout: float = 5.0
    # proxy settings resolved from the environment by the caller (see etcd.proxy)
    env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_strings(cls, endpoints: str | list[str], **kw: object) -> ClientConfig:
        return cls(endpoints=tuple(parse_endpoints(endpoints)), **kw)  # type: ignore[arg-type]

    @property
    def tls_configured(self) -> bool:
        return bool(self.cacert or self.cert or self.key or self.insecure_skip_tls_verify)

    def with_endpoints(self, endpoints: list[Endpoint]) -> ClientConfig:
        from dataclasses import replace

        return replace(self, endpoints=tuple(endpoints))

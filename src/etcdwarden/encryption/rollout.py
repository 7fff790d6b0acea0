"""Deploying a configuration phase to the kube-apiservers and waiting until every one has loaded it.

encryption.md §3.1: a value written with a new key is only safe once *every* apiserver has the key
in its loaded configuration. A :class:`Rollout` writes each phase (0600, atomically) to the files
the apiservers read (``--encryption-provider-config``) and, for the apiservers whose ``/metrics``
endpoint is given, polls ``apiserver_encryption_config_controller_last_config_info{hash=...}``
(§2.1: ``hash = "sha256:" + sha256(file bytes)``, reported at start-up and on every automatic
reload) until it reports the phase's hash. An apiserver that does not within the timeout is a
:class:`RolloutError` naming it; the caller then stops before the next phase (nothing is migrated).

Bearer tokens are read from a file, sent only in the ``Authorization`` header and never logged or
put in messages.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from etcdwarden.encryption.config import EncryptionConfiguration, config_hash
from etcdwarden.encryption.keys import write_private_file
from etcdwarden.errors import EtcdwardenError, UsageError

METRIC_NAMES = (
    "apiserver_encryption_config_controller_last_config_info",
    "apiserver_encryption_config_controller_automatic_reload_last_config_info",
)
HASH_LABEL = "hash"
_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(.*)\})?\s+\S+(?:\s+\S+)?\s*$")
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


class RolloutError(EtcdwardenError):
    """An apiserver did not load a configuration phase in time (or its config file could not be written)."""


def loaded_hashes(text: str) -> list[str]:
    """The ``hash`` labels of the encryption-config info metric in a Prometheus text exposition."""
    out: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if m is None or m.group(1) not in METRIC_NAMES or not m.group(2):
            continue
        labels = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL_RE.findall(m.group(2))}
        if HASH_LABEL in labels:
            out.append(labels[HASH_LABEL])
    return out


def describe_url(url: str) -> str:
    """A URL for messages, without user info or query string."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", r"\1", url).split("?", 1)[0]


@dataclass
class Rollout:
    """Where the apiservers read their configuration, and where they report what they loaded."""

    configs: Sequence[Path] = ()
    metrics: Sequence[str] = ()
    timeout: float = 300.0
    interval: float = 1.0
    cacert: Path | None = None
    token_file: Path | None = None
    request_timeout: float = 10.0
    _token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for url in self.metrics:
            if not url.startswith(("http://", "https://")):
                raise UsageError(f"apiserver metrics URL {describe_url(url)!r} must start with http:// or https://")
        if self.timeout <= 0:
            raise UsageError("the rollout timeout must be positive")

    @property
    def active(self) -> bool:
        return bool(self.configs or self.metrics)

    def deploy(self, cfg: EncryptionConfiguration) -> str:
        """Write ``cfg`` to every apiserver config file; return its hash (the same bytes everywhere)."""
        cfg.validate()
        data = cfg.dump().encode()
        for path in self.configs:
            try:
                write_private_file(Path(path), data)
            except OSError as e:
                raise RolloutError(f"cannot write the apiserver configuration {path}: {e.strerror or e}") from None
        return config_hash(data)

    def _context(self) -> ssl.SSLContext | None:
        if self.cacert is None:
            return None
        try:
            return ssl.create_default_context(cafile=str(self.cacert))
        except (OSError, ssl.SSLError) as e:
            raise UsageError(f"--apiserver-cacert {self.cacert}: cannot load ({e})") from None

    def _bearer(self) -> str | None:
        if self.token_file is None:
            return None
        if self._token is None:
            try:
                self._token = Path(self.token_file).read_text().strip()
            except OSError as e:
                raise UsageError(f"--apiserver-token-file {self.token_file}: {e.strerror}") from None
        return self._token

    def _scrape(self, url: str, ctx: ssl.SSLContext | None, timeout: float) -> str:
        # http(s) only: checked in __post_init__
        req = urllib.request.Request(url, headers={"Accept": "text/plain"})  # noqa: S310
        token = self._bearer()
        if token:
            req.add_unredirected_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:  # noqa: S310
            body: bytes = resp.read()
        return body.decode("utf-8", errors="replace")

    async def _check(self, url: str, digest: str, ctx: ssl.SSLContext | None, timeout: float) -> str | None:
        """None when the apiserver at ``url`` reports ``digest``; otherwise why not."""
        try:
            text = await asyncio.to_thread(self._scrape, url, ctx, timeout)
        except urllib.error.HTTPError as e:
            return f"its metrics answered HTTP {e.code}"
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", None) or e
            return f"its metrics could not be read ({reason})"
        hashes = loaded_hashes(text)
        if not hashes:
            return f"it reports no {METRIC_NAMES[0]} metric (is the apiserver recent enough?)"
        if all(h == digest for h in hashes):
            return None
        return f"it reports {', '.join(sorted(set(hashes)))}"

    async def wait(self, digest: str, phase: str, notify: Callable[[str], None] = lambda _m: None,
                   consequence: str = "stopped before the next step, nothing was migrated") -> None:
        """Poll every metrics URL until each reports ``digest``; RolloutError naming the laggards."""
        if not self.metrics:
            return
        ctx = self._context()
        deadline = time.monotonic() + self.timeout
        pending = {url: "not checked yet" for url in self.metrics}
        while True:
            left = deadline - time.monotonic()
            timeout = max(0.5, min(self.request_timeout, left))
            results = await asyncio.gather(*(self._check(u, digest, ctx, timeout) for u in pending))
            for url, why in zip(list(pending), results, strict=True):
                if why is None:
                    notify(f"{phase}: apiserver {describe_url(url)} loaded {digest}")
                    del pending[url]
                else:
                    pending[url] = why
            if not pending:
                return
            if time.monotonic() >= deadline:
                lag = "; ".join(f"apiserver {describe_url(u)}: {why}" for u, why in pending.items())
                raise RolloutError(
                    f"{phase}: not every apiserver loaded the configuration {digest} within {self.timeout:g}s "
                    f"({lag}); {consequence}. Check that the apiserver reads "
                    "the file (--encryption-provider-config, --encryption-provider-config-automatic-reload=true) "
                    "and rerun")
            await asyncio.sleep(min(self.interval, max(0.0, deadline - time.monotonic())))

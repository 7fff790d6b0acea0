"""TLS and bearer-token protection of the agent's HTTP endpoint (``agent.tls``, ``agent.auth``).

* TLS: the certificate and key files are loaded into a fresh :class:`ssl.SSLContext`; the listening
  context hands every new connection the *current* one (through its SNI callback, which OpenSSL calls
  for every ClientHello, with or without a server name), so new files take effect without closing the
  listening socket. Connections already open keep the certificate they were made with.
* Token: ``Authorization: Bearer <token>`` is required for ``/api/*`` and, with ``protectMetrics``, for
  ``/metrics``; ``/healthz`` and ``/readyz`` stay open for probes. Both sides are hashed before
  :func:`hmac.compare_digest`, so the comparison takes the same time whatever the token's length or
  content. A refusal is a 401 with a JSON body; the token is never logged (it is handed to the log
  formatter's mask as soon as it is read) and neither is what a client presented.
* Reload: :meth:`HttpSecurity.prepare` reads and checks every file into new objects and raises a
  :class:`~etcdwarden.errors.UsageError` naming the file; only :meth:`HttpSecurity.commit` swaps them
  in. A failed reload (SIGHUP, or the files changed) therefore keeps the certificate and token in use.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from etcdwarden.daemon import logs
from etcdwarden.daemon.config import AgentSection, HttpAuth, HttpTLS
from etcdwarden.daemon.http import Request, Response
from etcdwarden.errors import UsageError

log = logging.getLogger(__name__)

Stamp = tuple[int, int, int]  # (inode, mtime_ns, size)
_MIN_TOKEN = 16


def _stamp(path: str) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def load_tls(tls: HttpTLS) -> ssl.SSLContext:
    """A server context with ``tls.certFile`` and ``tls.keyFile`` (TLS 1.2 or later)."""
    for what, path in (("certFile", tls.cert_file), ("keyFile", tls.key_file)):
        if not Path(path).is_file():
            reason = "no such file" if not Path(path).exists() else "not a regular file"
            raise UsageError(f"agent.tls.{what} {path}: {reason}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except PermissionError as e:
        raise UsageError(f"agent.tls: cannot read {e.filename or tls.key_file}: permission denied") from None
    except (ssl.SSLError, OSError) as e:
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)
        raise UsageError(f"agent.tls: cannot use certificate {tls.cert_file} with key {tls.key_file}: {reason} "
                         "(PEM files expected; the key must match the certificate and not be encrypted)") from None
    return ctx


def load_token(auth: HttpAuth) -> bytes:
    path = Path(auth.token_file)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"agent.auth.tokenFile {path}: no such file") from None
    except OSError as e:
        raise UsageError(f"agent.auth.tokenFile {path}: {e.strerror or e}") from None
    token = raw.strip()
    if not token:
        raise UsageError(f"agent.auth.tokenFile {path} is empty")
    if b"\n" in token or b" " in token:
        raise UsageError(f"agent.auth.tokenFile {path}: the token must be one line without spaces")
    try:
        text = token.decode("ascii")
    except UnicodeDecodeError:
        raise UsageError(f"agent.auth.tokenFile {path}: the token must be printable ASCII") from None
    logs.add_secret(text)  # from now on masked in every log line
    if len(token) < _MIN_TOKEN:
        log.warning("agent.auth.tokenFile %s holds a short token (%d characters); use at least %d random ones",
                    path, len(token), _MIN_TOKEN)
    try:
        mode = path.stat().st_mode
    except OSError as e:  # removed or replaced between the read and here (a non-atomic rotation)
        raise UsageError(f"agent.auth.tokenFile {path}: {e.strerror}") from None
    if mode & 0o004:
        log.warning("agent.auth.tokenFile %s is readable by every user (mode %o); chmod 0600 it", path, mode & 0o777)
    return token


@dataclass
class Material:
    """What :meth:`HttpSecurity.prepare` read: a TLS context, a token digest and the files' stamps."""

    tls: ssl.SSLContext | None = None
    token_digest: bytes | None = None
    protect_metrics: bool = False
    stamps: dict[str, Stamp | None] = field(default_factory=dict)


class HttpSecurity:
    """The agent's TLS context and bearer token, reloadable while the server runs."""

    def __init__(self) -> None:
        self.current = Material()
        self.tls_enabled = False  # fixed at start: switching TLS on or off needs a restart
        self._failed_stamps: dict[str, Stamp | None] | None = None

    # -- loading ---------------------------------------------------------------------------------
    def prepare(self, agent: AgentSection) -> Material:
        """Read every file ``agent`` names; raise UsageError (naming the file) if one is unusable."""
        m = Material(protect_metrics=bool(agent.auth and agent.auth.protect_metrics))
        if agent.tls is not None:
            m.stamps = {p: _stamp(p) for p in (agent.tls.cert_file, agent.tls.key_file)}
            m.tls = load_tls(agent.tls)
        if agent.auth is not None:
            m.stamps[agent.auth.token_file] = _stamp(agent.auth.token_file)
            m.token_digest = _digest(load_token(agent.auth))
        return m

    def commit(self, material: Material) -> None:
        if self.tls_enabled and material.tls is None:
            material.tls = self.current.tls  # TLS cannot be switched off while listening: keep the old files
        self.current = material
        self._failed_stamps = None

    def start(self, agent: AgentSection) -> ssl.SSLContext | None:
        """Load at start (UsageError if a file is unusable); the context to listen with, if TLS is on."""
        self.commit(self.prepare(agent))
        if self.current.tls is None:
            return None
        self.tls_enabled = True
        ctx = self.current.tls  # the listening context: its callback hands each connection the current one
        ctx.sni_callback = self._pick_context
        return ctx

    def _pick_context(self, sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> int | None:
        if self.current.tls is not None:
            sslobj.context = self.current.tls
        return None

    def changed(self, agent: AgentSection) -> bool:
        """Whether a file changed since it was loaded (and since the last failed attempt to reload it)."""
        paths: list[str] = []
        if agent.tls is not None and self.tls_enabled:
            paths += [agent.tls.cert_file, agent.tls.key_file]
        if agent.auth is not None:
            paths.append(agent.auth.token_file)
        now = {p: _stamp(p) for p in paths}
        if now == {p: self.current.stamps.get(p) for p in paths}:
            return False
        return now != self._failed_stamps

    def failed(self, agent: AgentSection) -> None:
        """Remember the stamps of files that failed to load, so they are retried only once they change."""
        paths = [*(([agent.tls.cert_file, agent.tls.key_file]) if agent.tls else []),
                 *([agent.auth.token_file] if agent.auth else [])]
        self._failed_stamps = {p: _stamp(p) for p in paths}

    # -- requests --------------------------------------------------------------------------------
    def protects(self, path: str) -> bool:
        if self.current.token_digest is None:
            return False
        return path.startswith("/api/") or path == "/api" or (path == "/metrics" and self.current.protect_metrics)

    def guard(self, request: Request) -> Response | None:
        """None to go on; a 401 response without a valid bearer token on a protected path."""
        expected = self.current.token_digest
        if expected is None or not self.protects(request.path):
            return None
        scheme, _, presented = request.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(_digest(presented.strip().encode()), expected):
            return None
        reason = "no bearer token" if scheme.lower() != "bearer" else "a wrong bearer token"
        log.warning("HTTP %s %s from %s refused (401): %s", request.method, request.path, request.peer or "?", reason,
                    extra={"event": "http_unauthorized", "path": request.path})
        return Response.json(401, {"error": f"unauthorized: {request.path} needs the agent's bearer token "
                                            "(Authorization: Bearer <token>)"},
                             headers={"WWW-Authenticate": 'Bearer realm="etcdwarden"'})

"""Start, stop and supervise a local etcd cluster on loopback.

Every member is an ``etcd`` process bound to 127.0.0.1 on free ports, with its data dir under a base
directory. Processes are tracked and stopped by PID (SIGTERM, then SIGKILL after a grace period).
This is the embedded cluster behind ``etcdwarden demo`` and the test suite; nothing else in
etcdwarden imports it (an etcd of our own for checks is
:class:`etcdwarden.restore.scratch_member.ScratchMember`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from etcdwarden.binaries import find_binary
from etcdwarden.errors import EtcdwardenError
from etcdwarden.processes import free_ports, pid_alive, spawn, stop_pid

__all__ = ["LocalCluster", "LocalMember", "TLSFiles", "pid_alive", "stop_pid"]  # pid_alive, stop_pid: for the tests


@dataclass(frozen=True)
class TLSFiles:
    """Certificates for a TLS cluster: server cert/key (also used for peers), CA, and a client pair."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@dataclass
class LocalMember:
    name: str
    data_dir: Path
    client_port: int
    peer_port: int
    scheme: str = "http"
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class LocalCluster:
    """A local etcd cluster of ``size`` members under ``base_dir``."""

    base_dir: Path
    size: int = 3
    tls: TLSFiles | None = None
    token: str = "etcdwarden-local"  # noqa: S105 - the initial-cluster-token, not a secret
    etcd_binary: Path | None = None
    extra_args: tuple[str, ...] = ()
    members: list[LocalMember] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.members:
            ports = free_ports(2 * self.size)
            scheme = "https" if self.tls else "http"
            for i in range(self.size):
                name = f"m{i + 1}"
                self.members.append(
                    LocalMember(
                        name=name,
                        data_dir=self.base_dir / f"{name}.etcd",
                        client_port=ports[2 * i],
                        peer_port=ports[2 * i + 1],
                        scheme=scheme,
                    )
                )
        if self.etcd_binary is None:
            self.etcd_binary = find_binary("etcd")

    # -- addresses -------------------------------------------------------------------------
    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def new_member(self, name: str) -> LocalMember:
        """Allocate ports and a data dir for a member to be added later (``member add``)."""
        client_port, peer_port = free_ports(2)
        m = LocalMember(name=name, data_dir=self.base_dir / f"{name}.etcd", client_port=client_port,
                        peer_port=peer_port, scheme="https" if self.tls else "http")
        self.members.append(m)
        return m

    def member(self, name: str) -> LocalMember:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)

    # -- processes -------------------------------------------------------------------------
    def command(self, m: LocalMember, state: str = "new", initial_cluster: str | None = None) -> list[str]:
        args = [
            str(self.etcd_binary),
            "--name", m.name,
            "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.client_url,
            "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url,
            "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", initial_cluster or self.initial_cluster,
            "--initial-cluster-state", state,
            "--initial-cluster-token", self.token,
            "--log-level", "warn",
        ]
        if self.tls:
            t = self.tls
            args += [
                "--cert-file", str(t.server_cert), "--key-file", str(t.server_key),
                "--trusted-ca-file", str(t.ca), "--client-cert-auth",
                "--peer-cert-file", str(t.server_cert), "--peer-key-file", str(t.server_key),
                "--peer-trusted-ca-file", str(t.ca), "--peer-client-cert-auth",
            ]
        return args + list(self.extra_args)

    def start_member(self, name: str, state: str = "new", initial_cluster: str | None = None) -> LocalMember:
        m = self.member(name)
        if m.is_running():
            return m
        self.base_dir.mkdir(parents=True, exist_ok=True)
        m.log_path = self.base_dir / f"{m.name}.log"
        m.process = spawn(self.command(m, state, initial_cluster), m.log_path)
        return m

    def start(self, timeout: float = 30.0) -> None:
        for m in self.members:
            self.start_member(m.name)
        self.wait_healthy(timeout=timeout)

    def stop_member(self, name: str, grace: float = 10.0, kill: bool = False) -> None:
        m = self.member(name)
        p = m.process
        if p is None:
            return
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=grace)
        m.process = None

    def stop(self) -> None:
        for m in self.members:
            self.stop_member(m.name)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- health ----------------------------------------------------------------------------
    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=str(self.tls.ca))
        ctx.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        return ctx

    def member_healthy(self, m: LocalMember) -> bool:
        try:
            with urllib.request.urlopen(  # noqa: S310 - our own loopback URL
                f"{m.client_url}/health", timeout=2, context=self._ssl_context()
            ) as r:
                body = json.loads(r.read() or b"{}")
                return str(body.get("health")) == "true"
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def wait_healthy(self, timeout: float = 30.0, members: list[LocalMember] | None = None) -> None:
        targets = members if members is not None else [m for m in self.members if m.process is not None]
        deadline = time.monotonic() + timeout
        while True:
            dead = [m for m in targets if m.process is not None and m.process.poll() is not None]
            if dead:
                d = dead[0]
                code = d.process.poll() if d.process else "?"
                raise EtcdwardenError(f"etcd member {d.name} exited with code {code}; see {d.log_path}")
            if all(self.member_healthy(m) for m in targets):
                return
            if time.monotonic() > deadline:
                bad = [m.name for m in targets if not self.member_healthy(m)]
                raise EtcdwardenError(f"etcd members {', '.join(bad)} not healthy after {timeout:.0f}s")
            time.sleep(0.2)

    def logs(self) -> str:
        out = []
        for m in self.members:
            if m.log_path and m.log_path.exists():
                text = m.log_path.read_text(errors="replace")
                out.append(f"--- {m.name} ({m.log_path}) ---\n{text[-4000:]}")
        return "\n".join(out)

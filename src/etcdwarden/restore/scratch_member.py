"""A throwaway etcd member on loopback: the one way etcdwarden starts an etcd of its own to look at data.

``ScratchMember`` starts a single etcd on a data directory the caller owns (a copy, never a member's
own directory), alone (``--force-new-cluster`` by default, so the copy's membership is its own
business), on free 127.0.0.1 ports; waits until it serves; gives its client URL; stops it by PID. Its
output goes to a log file, whose tail is quoted when it does not come up. Used by ``restore member
--verify-start``; meant for restore drills and the replay of revisions as well.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from types import TracebackType

from etcdwarden.binaries import find_binary
from etcdwarden.errors import EtcdwardenError
from etcdwarden.processes import free_ports, spawn, stop_pid
from etcdwarden.restore.scratch_tls import ScratchTLS


@dataclass
class ScratchMember:
    data_dir: Path
    log_path: Path
    name: str = "scratch"
    etcd: Path | None = None  # the etcd binary (default: the one etcdwarden finds)
    force_new_cluster: bool = True
    extra_args: tuple[str, ...] = ()
    nice: int = 0  # niceness of the etcd process (restore drills run within a CPU/IO budget)
    tls: ScratchTLS | None = None  # serve clients over TLS, to holders of its client certificate only
    client_port: int = 0  # chosen by start()
    peer_port: int = 0
    _proc: Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def argv(self) -> list[str]:
        args = [str(find_binary("etcd", self.etcd)), "--name", self.name, "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", f"{self.name}={self.peer_url}", "--initial-cluster-state", "new",
                "--log-level", "warn"]
        if self.force_new_cluster:
            args.append("--force-new-cluster")
        if self.tls is not None:
            args += self.tls.member_args()
        return args + list(self.extra_args)

    def start(self, timeout: float = 60.0) -> str:
        """Start the member and wait until it serves; its client URL. On failure it is stopped again."""
        if self._proc is not None:
            raise EtcdwardenError(f"the scratch member on {self.data_dir} is already started (PID {self.pid})")
        if not self.data_dir.is_dir():
            raise EtcdwardenError(f"{self.data_dir} is not a directory: nothing to start a scratch member on")
        self.client_port, self.peer_port = free_ports(2)
        self._proc = spawn(self.argv(), self.log_path)
        if self.nice:  # at once, before etcd opens its database (its I/O priority follows on Linux)
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, self._proc.pid, self.nice)
        try:
            self._wait_serving(timeout)
        except BaseException:
            self.stop()
            raise
        return self.client_url

    def _wait_serving(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while not self.serves():
            code = self._proc.poll()
            if code is not None:
                raise EtcdwardenError(f"etcd on {self.data_dir} exited with code {code}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise EtcdwardenError(f"etcd on {self.data_dir} does not serve {self.client_url} after "
                                      f"{timeout:.0f}s: {self.log_tail()}")
            time.sleep(0.2)

    def serves(self) -> bool:
        """Whether the member answers healthy on its client URL (it has a leader: itself)."""
        if self._proc is None:
            return False
        context = self.tls.ssl_context() if self.tls is not None else None
        try:
            with urllib.request.urlopen(f"{self.client_url}/health", timeout=2,  # noqa: S310 - loopback
                                        context=context) as r:
                return str(json.loads(r.read() or b"{}").get("health")) == "true"
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stop(self, grace: float = 10.0) -> None:
        """Stop the member by PID (SIGTERM, SIGKILL after ``grace`` seconds); nothing if it is not running."""
        p, self._proc = self._proc, None
        if p is None:
            return
        if p.poll() is None:  # still our unreaped child: its PID cannot have been reused
            stop_pid(p.pid, grace)
            p.poll()

    def log_tail(self, limit: int = 1500) -> str:
        """The end of the member's log (a Go panic cut before its goroutine dump: the cause is above it)."""
        try:
            text = self.log_path.read_text(errors="replace").split("\ngoroutine ", 1)[0].strip()
        except OSError:
            return "(no log)"
        return f"log {self.log_path}: {text[-limit:]}" if text else f"log {self.log_path} is empty"

    def __enter__(self) -> ScratchMember:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

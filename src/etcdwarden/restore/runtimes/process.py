"""``process``: etcdwarden starts the member's etcd itself and keeps its PID in a pid file.

The pid file (default ``<data_dir>.pid``, beside the data directory) lets a later invocation stop the
member by PID; a PID is only trusted while ``/proc/PID/cmdline`` still names the member's data dir, so a
recycled PID is never signalled. Output goes to ``<data_dir>.log``. Local members only.

A restore marks the processes it starts (``ETCDWARDEN_RESTORE=<tag>`` in their environment). A run killed
between starting an etcd and writing its pid file leaves an orphan that holds the member's ports; the
rerun finds it by that mark and adopts it (same command line) or stops it by PID (another one), and
never starts a second etcd over a port something else holds. A PID is reported as serving only once the
process is alive, owns the member's sockets and answers on its client URL.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from etcdwarden.binaries import find_binary
from etcdwarden.errors import BinaryNotFound, EtcdwardenError
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.fsutil import atomic_write
from etcdwarden.processes import pid_alive, spawn, stop_pid
from etcdwarden.restore import procs
from etcdwarden.restore.runtimes.base import Host, Launch, Runtime
from etcdwarden.restore.serving import answering_id, port_problems
from etcdwarden.restore.spec import MemberSpec

MARKER_ENV = "ETCDWARDEN_RESTORE"


class ProcessRuntime(Runtime):
    kind = "process"
    supports_join = True

    def __init__(self, member: MemberSpec, host: Host) -> None:
        super().__init__(member, host)
        # test hook: called with the PID of a freshly spawned etcd before its pid file is written
        self.after_spawn: Callable[[int], None] | None = None

    def etcd(self) -> Path:
        return find_binary("etcd", self.member.etcd)

    def argv(self, launch: Launch) -> list[str]:
        m = self.member
        clients = ",".join(m.client_urls)
        return [str(self.etcd()), "--name", m.name, "--data-dir", m.data_dir,
                "--listen-client-urls", clients, "--advertise-client-urls", clients,
                "--listen-peer-urls", m.peer, "--initial-advertise-peer-urls", m.peer,
                "--initial-cluster", launch.initial_cluster, "--initial-cluster-state", launch.state,
                "--initial-cluster-token", launch.token, *m.extra_args, *launch.extra_args]

    def _pid(self) -> int | None:
        try:
            text = self.member.pid_path.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def _ours(self, pid: int) -> bool:
        return pid_alive(pid) and pid in procs.running_on(self.member.data_path)

    def managed_pids(self) -> set[int]:
        pid = self._pid()
        return {pid} if pid is not None and self._ours(pid) else set()

    async def is_running(self) -> bool:
        return bool(self.managed_pids())

    async def stop(self) -> None:
        for pid in self.managed_pids():
            await asyncio.to_thread(stop_pid, pid, 15.0)
        self.member.pid_path.unlink(missing_ok=True)

    def _record(self, pid: int) -> None:
        atomic_write(self.member.pid_path, f"{pid}\n".encode(), mode=0o644)

    async def _leftovers(self, launch: Launch) -> bool:
        """Adopt (True) or stop the etcd an interrupted run of this restore left on the data dir; refuse others."""
        m = self.member
        for pid in procs.running_on(m.data_path):
            if launch.marker is None or not procs.has_env(pid, MARKER_ENV, launch.marker):
                raise EtcdwardenError(f"member {m.name}: {procs.describe(pid)} runs on {m.data_dir} but was not "
                                      "started by this restore nor recorded in the pid file "
                                      f"{m.pid_path}: stop it, then rerun")
            if procs.cmdline(pid) == self.argv(launch):
                self._record(pid)
                self.notes.append(f"member {m.name}: adopted {procs.describe(pid)}, started by an interrupted run "
                                  "of this restore")
                return True
            await asyncio.to_thread(stop_pid, pid, 15.0)
            self.notes.append(f"member {m.name}: stopped PID {pid}, started by an interrupted run of this restore "
                              "with another command line")
        return False

    def _ports_free(self) -> None:
        m = self.member
        for url in (*m.client_urls, *m.peer_urls):
            u = urlsplit(url)
            if u.port is None:
                continue
            listening, owners = procs.port_owners(u.port, u.hostname)
            if listening:
                who = ", ".join(procs.describe(p) for p in sorted(owners)) or "a process we cannot see"
                raise EtcdwardenError(f"member {m.name}: {url} is already in use by {who}: an etcd started now "
                                      "would die on 'address already in use'; stop it, then rerun")

    async def start(self, launch: Launch) -> None:
        if await self.is_running():
            return
        if await self._leftovers(launch):
            return
        self._ports_free()
        env = dict(os.environ)
        if launch.marker is not None:
            env[MARKER_ENV] = launch.marker
        p = spawn(self.argv(launch), self.member.log_path, env)
        if self.after_spawn is not None:
            self.after_spawn(p.pid)
        self._record(p.pid)

    def _log_tail(self) -> str:
        try:
            lines = self.member.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(ln.strip()[-300:] for ln in lines[-3:])

    async def wait_serving(self, client: ClientConfig, timeout: float = 120.0) -> int | None:
        """Wait until the recorded PID is alive, answers on the client URL and owns the member's sockets."""
        m = self.member
        deadline = time.monotonic() + timeout
        while True:
            pid = self._pid()
            if pid is None or not self._ours(pid):
                if pid is not None:
                    self.member.pid_path.unlink(missing_ok=True)  # never keep a dead PID on record
                raise EtcdwardenError(f"member {m.name}: its etcd (PID {pid}) is not running; log {m.log_path}: "
                                      f"{self._log_tail()}")
            mid, why = await answering_id(client, m.client_urls[0])
            if mid is not None:
                problems = port_problems(m, pid)
                if not problems:
                    return pid
                why = "; ".join(problems)
            if time.monotonic() > deadline:
                raise EtcdwardenError(f"member {m.name}: its etcd (PID {pid}) does not serve {m.client_urls[0]} "
                                      f"after {timeout:.0f}s: {why}")
            await asyncio.sleep(0.5)

    async def check(self) -> list[str]:
        problems: list[str] = []
        try:
            self.etcd()
        except BinaryNotFound as e:
            problems.append(f"member {self.member.name}: {e}")
        parent = self.member.pid_path.parent
        if not parent.is_dir():
            problems.append(f"member {self.member.name}: the pid file's directory {parent} does not exist")
        return problems

    def commands(self, action: str, launch: Launch | None = None) -> list[str]:
        pid = self.member.pid_path
        if action == "stop":
            return [f"kill -TERM $(cat {pid})   # etcd of {self.member.data_dir}, SIGKILL after 15s"]
        assert launch is not None
        return [f"{shlex.join(self.argv(launch))} >>{self.member.log_path} 2>&1 &   # PID -> {pid}"]

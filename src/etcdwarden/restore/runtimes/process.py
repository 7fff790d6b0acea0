"""``process``: etcdwarden starts the member's etcd itself and keeps its PID in a pid file.

The pid file (default ``<data_dir>.pid``, beside the data directory) lets a later invocation stop the
member by PID; a PID is only trusted while ``/proc/PID/cmdline`` still names the member's data dir, so a
recycled PID is never signalled. Output goes to ``<data_dir>.log``. Local members only.
"""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path

from etcdwarden.binaries import find_binary
from etcdwarden.errors import BinaryNotFound
from etcdwarden.fsutil import atomic_write
from etcdwarden.local.cluster import pid_alive, spawn_etcd, stop_pid
from etcdwarden.restore.checks import etcd_pids_using
from etcdwarden.restore.runtimes.base import Launch, Runtime


class ProcessRuntime(Runtime):
    kind = "process"
    supports_join = True

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
        return pid_alive(pid) and pid in etcd_pids_using(self.member.data_path)

    def managed_pids(self) -> set[int]:
        pid = self._pid()
        return {pid} if pid is not None and self._ours(pid) else set()

    async def is_running(self) -> bool:
        return bool(self.managed_pids())

    async def stop(self) -> None:
        for pid in self.managed_pids():
            await asyncio.to_thread(stop_pid, pid, 15.0)
        self.member.pid_path.unlink(missing_ok=True)

    async def start(self, launch: Launch) -> None:
        if await self.is_running():
            return
        p = spawn_etcd(self.argv(launch), self.member.log_path)
        atomic_write(self.member.pid_path, f"{p.pid}\n".encode(), mode=0o644)

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

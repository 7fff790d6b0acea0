"""The member runtime interface (stop, start, is-running, wait) and the hosts runtimes act on.

A :class:`Host` runs commands and moves files on the machine of a member: :class:`LocalHost` here,
:class:`~etcdwarden.restore.runtimes.ssh.SSHHost` over SSH. A :class:`Runtime` stops and starts one
member's etcd on its host; :meth:`Runtime.commands` lists what it would run, for ``--dry-run``.
"""

from __future__ import annotations

import abc
import asyncio
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from etcdwarden.errors import EtcdwardenError
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.fsutil import fsync_dir
from etcdwarden.restore.datadir import RESTORING
from etcdwarden.restore.spec import MemberSpec


@dataclass
class CommandResult:
    argv: list[str]
    code: int
    stdout: str
    stderr: str

    def check(self) -> CommandResult:
        if self.code != 0:
            tail = (self.stderr or self.stdout).strip()[-500:]
            raise EtcdwardenError(f"`{shlex.join(self.argv)}` failed (exit {self.code}): {tail}")
        return self


class Host(abc.ABC):
    """Where a member lives: run commands, inspect and move its files."""

    name: str = "localhost"
    is_local: ClassVar[bool] = True

    @abc.abstractmethod
    async def run(self, argv: list[str], timeout: float = 120.0) -> CommandResult: ...

    @abc.abstractmethod
    async def exists(self, path: str) -> bool: ...

    @abc.abstractmethod
    async def rename(self, src: str, dst: str) -> None: ...

    @abc.abstractmethod
    async def remove_restoring(self, path: str) -> None:
        """Remove one of our own half-written ``.restoring-`` directories (never anything else)."""

    @abc.abstractmethod
    async def owner(self, path: str) -> str | None:
        """``uid:gid`` of ``path``, ``None`` if it does not exist."""

    @abc.abstractmethod
    async def give(self, path: str, owner: str | None, mode: int) -> None:
        """chmod ``path`` to ``mode`` and chown it recursively to ``uid:gid``."""

    @abc.abstractmethod
    async def upload(self, local: Path, remote: str) -> None: ...

    async def close(self) -> None:
        return None

    def describe(self, argv: list[str]) -> str:
        return shlex.join(argv)


class LocalHost(Host):
    name = "localhost"
    is_local = True

    async def run(self, argv: list[str], timeout: float = 120.0) -> CommandResult:
        def go() -> CommandResult:
            try:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
            except FileNotFoundError:
                return CommandResult(argv, 127, "", f"{argv[0]}: command not found")
            except subprocess.TimeoutExpired:
                return CommandResult(argv, 124, "", f"timed out after {timeout:.0f}s")
            return CommandResult(argv, r.returncode, r.stdout, r.stderr)

        return await asyncio.to_thread(go)

    async def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    async def rename(self, src: str, dst: str) -> None:
        if os.path.lexists(dst):
            raise EtcdwardenError(f"cannot move {src} to {dst}: {dst} exists")
        os.rename(src, dst)
        fsync_dir(Path(dst).parent)

    async def remove_restoring(self, path: str) -> None:
        if RESTORING not in Path(path).name:
            raise EtcdwardenError(f"refusing to remove {path}: not a .restoring- directory")
        await asyncio.to_thread(shutil.rmtree, path, True)

    async def owner(self, path: str) -> str | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return f"{st.st_uid}:{st.st_gid}"

    async def give(self, path: str, owner: str | None, mode: int) -> None:
        from etcdwarden.restore.checks import Owner, chown_tree

        os.chmod(path, mode)
        if owner:
            uid, _, gid = owner.partition(":")
            await asyncio.to_thread(chown_tree, Path(path), Owner(int(uid), int(gid)))

    async def upload(self, local: Path, remote: str) -> None:
        raise EtcdwardenError("upload is for remote hosts")  # local members read the snapshot in place


@dataclass
class Launch:
    """How a member is to be started (the process runtime uses all of it; others their own config)."""

    initial_cluster: str
    state: str = "new"  # "new" or "existing"
    token: str = "etcd-cluster"  # noqa: S105 - the initial-cluster-token, not a secret
    extra_args: list[str] = field(default_factory=list)
    # set in the environment of a process the runtime starts (the restore's tag), so that a rerun after a
    # crash recognises the processes an interrupted run started (process runtime)
    marker: str | None = None


class Runtime(abc.ABC):
    """Stops and starts one member's etcd."""

    kind: ClassVar[str] = ""
    supports_join: ClassVar[bool] = False  # can start a member with initial-cluster-state existing

    def __init__(self, member: MemberSpec, host: Host) -> None:
        self.member = member
        self.host = host
        self.notes: list[str] = []  # what start() did besides starting (adopted or stopped a leftover)

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    async def start(self, launch: Launch) -> None: ...

    @abc.abstractmethod
    async def is_running(self) -> bool: ...

    @abc.abstractmethod
    async def check(self) -> list[str]:
        """Problems that prevent this runtime from controlling the member (empty when it can)."""

    @abc.abstractmethod
    def commands(self, action: str, launch: Launch | None = None) -> list[str]:
        """What ``stop``/``start`` run, as shell lines (for ``--dry-run``)."""

    def managed_pids(self) -> set[int]:
        """PIDs this runtime knows it runs (process runtime); others cannot tell."""
        return set()

    async def wait(self, running: bool, timeout: float = 120.0, interval: float = 0.5) -> None:
        """Wait until :meth:`is_running` equals ``running``."""
        deadline = time.monotonic() + timeout
        while await self.is_running() != running:
            if time.monotonic() > deadline:
                state = "start" if running else "stop"
                raise EtcdwardenError(f"member {self.member.name} ({self.kind}) did not {state} within {timeout:.0f}s")
            await asyncio.sleep(interval)

    async def wait_serving(self, client: ClientConfig, timeout: float = 120.0) -> int | None:
        """Wait until the member runs and serves; the PID serving it where the runtime knows it."""
        await self.wait(True, timeout)
        return None

    def __repr__(self) -> str:
        return f"{self.kind}({self.member.name}@{self.host.name})"

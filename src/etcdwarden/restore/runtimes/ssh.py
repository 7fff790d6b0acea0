"""Members on other hosts: a :class:`Host` that runs commands and moves files over SSH (asyncssh).

Commands are sent as one shell-quoted line (``sudo -n`` in front when the spec asks for it); files are
uploaded with SFTP. Host keys are checked against ``known_hosts`` (the user's by default; ``none``
disables the check, for tests on 127.0.0.1 only).
"""

from __future__ import annotations

import shlex
from pathlib import Path, PurePosixPath
from typing import Any

from etcdwarden.errors import EtcdwardenError, Unreachable
from etcdwarden.restore.datadir import RESTORING
from etcdwarden.restore.runtimes.base import CommandResult, Host
from etcdwarden.restore.spec import SSHSpec


def parse_target(text: str, default_user: str | None, default_port: int) -> tuple[str | None, str, int]:
    """``[user@]host[:port]`` (IPv6 in brackets) -> (user, host, port)."""
    user, _, rest = text.rpartition("@")
    host, port = rest, default_port
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        if tail.startswith(":"):
            port = int(tail[1:])
    elif rest.count(":") == 1:
        host, p = rest.split(":")
        port = int(p)
    return (user or default_user), host, port


class SSHHost(Host):
    is_local = False

    def __init__(self, target: str, ssh: SSHSpec) -> None:
        self.user, self.address, self.port = parse_target(target, ssh.user, ssh.port)
        self.name = target
        self.ssh = ssh
        self._conn: Any = None

    async def _connection(self) -> Any:
        if self._conn is None:
            import asyncssh

            kw: dict[str, Any] = {"port": self.port, "username": self.user}
            if self.ssh.key:
                kw["client_keys"] = [self.ssh.key]
            if self.ssh.known_hosts == "none":
                kw["known_hosts"] = None
            elif self.ssh.known_hosts:
                kw["known_hosts"] = self.ssh.known_hosts
            try:
                self._conn = await asyncssh.connect(self.address, **kw)
            except (OSError, asyncssh.Error) as e:
                raise Unreachable(f"SSH connection to {self.name} failed: {e}") from None
        return self._conn

    def _line(self, argv: list[str]) -> str:
        return ("sudo -n " if self.ssh.sudo else "") + shlex.join(argv)

    async def run(self, argv: list[str], timeout: float = 120.0) -> CommandResult:
        import asyncssh

        conn = await self._connection()
        try:
            r = await conn.run(self._line(argv), check=False, timeout=timeout)
        except asyncssh.TimeoutError:
            return CommandResult(argv, 124, "", f"timed out after {timeout:.0f}s on {self.name}")
        code = r.exit_status if r.exit_status is not None else 255
        return CommandResult(argv, int(code), str(r.stdout or ""), str(r.stderr or ""))

    async def exists(self, path: str) -> bool:
        r = await self.run(["test", "-e", path])
        if r.code not in (0, 1):
            raise EtcdwardenError(f"cannot inspect {path} on {self.name}: {r.stderr.strip()}")
        if r.code == 1:
            return (await self.run(["test", "-L", path])).code == 0
        return True

    async def rename(self, src: str, dst: str) -> None:
        if await self.exists(dst):
            raise EtcdwardenError(f"cannot move {src} to {dst} on {self.name}: {dst} exists")
        (await self.run(["mv", "-T", "--", src, dst])).check()
        (await self.run(["sync", "--file-system", str(PurePosixPath(dst).parent)])).check()

    async def remove_restoring(self, path: str) -> None:
        if RESTORING not in PurePosixPath(path).name:
            raise EtcdwardenError(f"refusing to remove {path}: not a .restoring- directory")
        (await self.run(["rm", "-rf", "--", path])).check()

    async def owner(self, path: str) -> str | None:
        r = await self.run(["stat", "-c", "%u:%g", "--", path])
        return r.stdout.strip() if r.code == 0 else None

    async def give(self, path: str, owner: str | None, mode: int) -> None:
        (await self.run(["chmod", f"{mode:o}", "--", path])).check()
        if owner:
            (await self.run(["chown", "-R", owner, "--", path])).check()

    async def upload(self, local: Path, remote: str) -> None:
        import asyncssh

        conn = await self._connection()
        try:
            async with conn.start_sftp_client() as sftp:
                await sftp.put(str(local), remote)
                await sftp.chmod(remote, 0o600)
        except (OSError, asyncssh.Error) as e:
            raise EtcdwardenError(f"uploading the snapshot to {self.name}:{remote} failed: {e}") from None

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            await self._conn.wait_closed()
            self._conn = None

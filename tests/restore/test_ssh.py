"""SSHHost (remote members) against an in-process asyncssh server on 127.0.0.1.

The server below executes each command line with ``/bin/sh -c`` and serves SFTP from the local file
system, which is what the host operations rely on. The same operations, and a ``restore cluster`` with
a member behind SSH, run against Debian's real OpenSSH sshd in test_ssh_real.py.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncssh
import pytest

from etcdwarden.local.ports import free_port
from etcdwarden.restore.runtimes.ssh import SSHHost, parse_target
from etcdwarden.restore.spec import SSHSpec

pytestmark = pytest.mark.unit


class _NoAuth(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # no authentication: loopback test server only


async def _handle(process: asyncssh.SSHServerProcess[str]) -> None:
    proc = await asyncio.create_subprocess_shell(str(process.command), stdout=asyncio.subprocess.PIPE,
                                                 stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    process.stdout.write(out.decode())
    process.stderr.write(err.decode())
    process.exit(proc.returncode or 0)


def test_ssh_host_operations(tmp_path: Path) -> None:
    assert parse_target("core@10.0.0.1:2222", None, 22) == ("core", "10.0.0.1", 2222)
    assert parse_target("[::1]:2200", "root", 22) == ("root", "::1", 2200)

    async def go() -> None:
        port = free_port()
        key = asyncssh.generate_private_key("ssh-ed25519")
        server = await asyncssh.create_server(_NoAuth, "127.0.0.1", port, server_host_keys=[key],
                                              process_factory=_handle, sftp_factory=True)
        host = SSHHost(f"root@127.0.0.1:{port}", SSHSpec(known_hosts="none"))
        try:
            d = tmp_path / "etcd"
            d.mkdir()
            (d / "f").write_text("x")
            assert await host.exists(str(d)) and not await host.exists(str(tmp_path / "none"))
            assert await host.owner(str(d)) == f"{os.getuid()}:{os.getgid()}"
            await host.rename(str(d), str(tmp_path / "etcd.pre-restore-t"))
            assert (tmp_path / "etcd.pre-restore-t" / "f").read_text() == "x"
            src = tmp_path / "snap.db"
            src.write_bytes(b"snapshot" * 1000)
            await host.upload(src, str(tmp_path / "uploaded.db"))
            assert (tmp_path / "uploaded.db").read_bytes() == src.read_bytes()
            r = tmp_path / "etcd.restoring-t"
            r.mkdir()
            await host.give(str(r), "65534:65534", 0o700)
            assert r.stat().st_uid == 65534 and (r.stat().st_mode & 0o777) == 0o700
            await host.remove_restoring(str(r))
            assert not r.exists()
            res = await host.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
            assert (res.code, res.stdout.strip(), res.stderr.strip()) == (3, "out", "err")
        finally:
            await host.close()
            server.close()
            await server.wait_closed()

    asyncio.run(go())

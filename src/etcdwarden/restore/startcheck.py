"""``--verify-start``: prove a restored data directory starts and serves what the backup held.

The directory is copied to a scratch directory and a single etcd is started on that copy with
``--force-new-cluster`` on free 127.0.0.1 ports (the restored directory itself is never started, so
its membership is untouched). Its revision and live key count are compared with the backup's, then
the process is stopped by PID and the scratch copy (ours, never a real data directory) removed.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etcdwarden.errors import EtcdwardenError
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.restore.scratch_member import ScratchMember
from etcdwarden.restore.scratch_tls import ScratchTLS, create_scratch_tls


@dataclass
class StartCheck:
    revision: int
    keys: int
    expected_revision: int | None
    expected_keys: int | None
    seconds: float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "revision": self.revision, "keys": self.keys,
                "expected_revision": self.expected_revision, "expected_keys": self.expected_keys,
                "seconds": round(self.seconds, 3), "problems": self.problems}


async def _measure(url: str, tls: ScratchTLS) -> tuple[int, int]:
    async with EtcdClient(tls.client_config(url, command_timeout=30.0)) as c:
        ep = c.endpoint(url)
        st = await c.status(ep)
        r = await c.range_on(ep, pb.RangeRequest(key=b"\x00", range_end=b"\x00", count_only=True,
                                                 serializable=True))
        return int(st.header.revision), int(r.count)


def start_check(data_dir: Path, name: str, work: Path, etcd: Path | None, expected_revision: int | None,
                expected_keys: int | None, timeout: float = 60.0) -> StartCheck:
    """Start a copy of ``data_dir`` alone under ``work`` (created here, removed after) and measure it."""
    if work.exists():
        raise EtcdwardenError(f"{work} already exists; remove this leftover scratch directory first")
    begin = time.monotonic()
    work.mkdir(mode=0o700, parents=True)
    try:
        scratch = work / "data"
        shutil.copytree(data_dir, scratch, symlinks=True)
        tls = create_scratch_tls(work)  # no other reader of the copy; authentication enabled needs no password
        member = ScratchMember(scratch, work / f"{name}.log", name=name, etcd=etcd, tls=tls)
        try:
            try:
                url = member.start(timeout=timeout)
            except EtcdwardenError as e:
                raise EtcdwardenError(f"the restored data directory does not start: {e}") from None
            revision, keys = asyncio.run(_measure(url, tls))
        finally:
            member.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    check = StartCheck(revision, keys, expected_revision, expected_keys, time.monotonic() - begin)
    if expected_revision is not None and revision != expected_revision:
        check.problems.append(f"revision {revision}, the backup's is {expected_revision}")
    if expected_keys is not None and keys != expected_keys:
        check.problems.append(f"{keys} keys, the backup holds {expected_keys}")
    return check

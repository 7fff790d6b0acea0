"""Shared pieces of the bench scripts: a big local cluster, timing a command with its peak RSS."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster


@dataclass
class Run:
    wall: float
    max_rss_mib: float
    code: int


def timed(cmd: list[str], env: dict[str, str] | None = None) -> Run:
    """Run ``cmd``; wall time and the child's own peak RSS (os.wait4, not the sum of all children)."""
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _pid, status, usage = os.wait4(p.pid, 0)
    wall = time.monotonic() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and p.stderr is not None:
        print(p.stderr.read().decode(errors="replace")[-2000:])
    return Run(wall, usage.ru_maxrss / 1024, code)


def big_cluster(base: Path, size: int = 3) -> LocalCluster:
    c = LocalCluster(base, size=size, extra_args=("--quota-backend-bytes", str(8 * 1024**3)))
    c.start()
    return c


async def _fill_bytes(endpoints: list[str], total: int, value_size: int) -> None:
    async with EtcdClient(ClientConfig.from_strings(endpoints, command_timeout=60)) as c:
        per_txn = max(1, (1024 * 1024) // value_size)
        n = 0
        written = 0
        while written < total:
            ops = []
            for _ in range(per_txn):
                ops.append(pb.RequestOp(request_put=pb.PutRequest(key=f"/registry/bench/{n:09d}".encode(),
                                                                  value=os.urandom(value_size))))
                n += 1
                written += value_size
            await c.txn(pb.TxnRequest(success=ops))


def fill_bytes(cluster: LocalCluster, total: int, value_size: int = 64 * 1024) -> None:
    """Write about ``total`` bytes of incompressible values (so zstd is measured honestly, worst case)."""
    asyncio.run(_fill_bytes(cluster.endpoints, total, value_size))

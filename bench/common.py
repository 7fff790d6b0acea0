"""Shared pieces of the bench scripts: a big local cluster, timing a command with its peak RSS."""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster


@dataclass
class Run:
    wall: float
    max_rss_mib: float
    code: int
    cpu: float = 0.0  # the child's own user + system CPU seconds
    others: dict[str, float] = field(default_factory=dict)  # CPU seconds of watched processes meanwhile


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a running process has used so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(cmd: list[str], env: dict[str, str] | None = None, cpus: set[int] | None = None,
          watch: dict[str, int] | None = None, stdout: IO[bytes] | None = None) -> Run:
    """Run ``cmd``: wall time, and the command's own peak RSS and CPU time.

    The command is started through GNU time when it is installed: a child forked straight from this
    (large) bench process would count the pages it shares with its parent before ``exec`` in its peak
    RSS, so every small command would report this process's size. ``cpus`` pins the command to those
    CPUs; ``watch`` names other processes (label → PID) whose CPU time meanwhile goes to :attr:`Run.others`;
    the command's output goes to ``stdout`` (default: nowhere). Peak RSS is that of the command's largest
    process (its children's included: GNU time and ``wait4`` report the maximum), CPU time that of all.
    """
    watch = watch or {}
    before = {k: cpu_seconds(pid) for k, pid in watch.items()}
    if cpus:  # taskset execs the command: it is still the process measured
        cmd = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *cmd]
    gnu_time = Path("/usr/bin/time")
    with tempfile.NamedTemporaryFile("r", prefix="bench-time-") as report:
        if gnu_time.exists():
            cmd = [str(gnu_time), "-q", "-f", "%M %U %S", "-o", report.name, *cmd]
        start = time.monotonic()
        p = subprocess.Popen(cmd, stdout=stdout or subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        _pid, status, usage = os.wait4(p.pid, 0)
        wall = time.monotonic() - start
        rss, cpu = usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime
        fields = report.read().split()
        if gnu_time.exists() and len(fields) >= 3:
            rss, cpu = int(fields[-3]) / 1024, float(fields[-2]) + float(fields[-1])
    others = {k: cpu_seconds(pid) - before[k] for k, pid in watch.items()}
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and p.stderr is not None:
        print(p.stderr.read().decode(errors="replace")[-2000:])
    return Run(wall, rss, code, cpu, others)


def big_cluster(base: Path, size: int = 3) -> LocalCluster:
    c = LocalCluster(base, size=size, extra_args=("--quota-backend-bytes", str(8 * 1024**3)))
    c.start()
    return c


async def _fill_bytes(endpoints: list[str], total: int, value_size: int) -> None:
    async with EtcdClient(ClientConfig.from_strings(endpoints, command_timeout=60)) as c:
        per_txn = max(1, min(128, (1024 * 1024) // value_size))  # etcd refuses more than 128 operations
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

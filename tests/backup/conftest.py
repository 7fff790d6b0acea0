"""Fixtures for backup tests: a cluster holding data, the real etcdutl and age, a restore helper."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from etcdwarden.binaries import find_binary
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.local.sample import fill

REPO = Path(__file__).resolve().parents[2]


def load(cluster: LocalCluster, count: int = 400, value_size: int = 1024, **kw: object) -> int:
    async def go() -> int:
        async with EtcdClient(ClientConfig.from_strings(cluster.endpoints, **kw)) as c:
            return await fill(c, count, value_size=value_size)

    return asyncio.run(go())


def dump(endpoints: list[str], **kw: object) -> dict[bytes, bytes]:
    async def go() -> dict[bytes, bytes]:
        async with EtcdClient(ClientConfig.from_strings(endpoints, **kw)) as c:
            r = await c.range(pb.RangeRequest(key=b"\x00", range_end=b"\x00"))
            return {kv.key: kv.value for kv in r.kvs}

    return asyncio.run(go())


def etcdutl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(find_binary("etcdutl")), *args], capture_output=True, text=True, timeout=120,
                          check=False)


def age_binary() -> Path:
    """Debian's age CLI, fetched by the project's own script (the test fails if it cannot)."""
    out = subprocess.run([str(REPO / "scripts" / "fetch-age.sh")], capture_output=True, text=True, timeout=300,
                         check=True).stdout.strip().splitlines()[-1]
    return Path(out) / "age"


def restore_and_dump(snapshot: Path, workdir: Path) -> dict[bytes, bytes]:
    """Restore with the real etcdutl, start a real etcd on it, return every key and value."""
    data = workdir / "restored.etcd"
    c = LocalCluster(workdir, size=1)
    m = c.members[0]
    m.data_dir = data
    res = etcdutl("snapshot", "restore", str(snapshot), "--data-dir", str(data), "--name", m.name,
                  "--initial-cluster", c.initial_cluster, "--initial-advertise-peer-urls", m.peer_url,
                  "--initial-cluster-token", c.token)
    assert res.returncode == 0, res.stderr
    try:
        c.start()
        return dump(c.endpoints)
    finally:
        c.stop()

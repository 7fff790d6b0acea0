"""Helpers for cluster restore tests: a cluster spec for a LocalCluster, pid files, cleanup by PID."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml

from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster, stop_pid
from tests.backup.conftest import dump


def write_spec(cluster: LocalCluster, path: Path, pid_files: bool = True, **member_extra: Any) -> Path:
    """A cluster.yaml for ``cluster`` (process runtime); pid files for its running members."""
    members = []
    for m in cluster.members:
        pid = m.data_dir.with_name(f"{m.data_dir.name}.pid")
        if pid_files and m.pid is not None:
            pid.write_text(f"{m.pid}\n")
        members.append({"name": m.name, "peer_urls": [m.peer_url], "client_urls": [m.client_url],
                        "data_dir": str(m.data_dir), "runtime": "process", "pid_file": str(pid), **member_extra})
    path.write_text(yaml.safe_dump({"members": members}))
    return path


def stop_all(cluster: LocalCluster) -> None:
    """Stop, by PID, every etcd a runtime started for ``cluster`` (from the pid files) and the cluster's own."""
    for m in cluster.members:
        pid = m.data_dir.with_name(f"{m.data_dir.name}.pid")
        if pid.exists():
            text = pid.read_text().strip()
            if text.isdigit():
                stop_pid(int(text))
    cluster.stop()


def member_dumps(cluster: LocalCluster) -> list[dict[bytes, bytes]]:
    return [dump([m.client_url]) for m in cluster.members]


def statuses(cluster: LocalCluster) -> list[pb.StatusResponse]:
    async def go() -> list[pb.StatusResponse]:
        async with EtcdClient(ClientConfig.from_strings(cluster.endpoints)) as c:
            return [await c.status(c.endpoint(u)) for u in cluster.endpoints]

    return asyncio.run(go())


def hashkvs(cluster: LocalCluster, revision: int) -> list[int]:
    async def go() -> list[int]:
        async with EtcdClient(ClientConfig.from_strings(cluster.endpoints)) as c:
            return [int((await c.hashkv(c.endpoint(u), revision)).hash) for u in cluster.endpoints]

    return asyncio.run(go())


def put(cluster: LocalCluster, key: bytes, value: bytes, within: float = 30.0) -> int:
    """Put, retrying while the cluster elects a new leader (a member was just killed)."""
    import time

    from etcdwarden.errors import EtcdError

    async def go() -> int:
        deadline = time.monotonic() + within
        while True:
            async with EtcdClient(ClientConfig.from_strings(cluster.endpoints, dial_timeout=1.0,
                                                            command_timeout=5.0)) as c:
                try:
                    return int((await c.put(key, value)).header.revision)
                except EtcdError:
                    if time.monotonic() > deadline:
                        raise
            await asyncio.sleep(0.5)

    return asyncio.run(go())


def load_prefix(cluster: LocalCluster, count: int, prefix: str, value_size: int = 64) -> int:
    from etcdwarden.local.sample import fill

    async def go() -> int:
        async with EtcdClient(ClientConfig.from_strings(cluster.endpoints)) as c:
            return await fill(c, count, value_size=value_size, prefix=prefix, seed=7)

    return asyncio.run(go())

"""Helpers for the snapshot tests: real clusters, real snapshots, the real etcdutl as oracle."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from etcdwarden.binaries import find_binary
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.config import ClientConfig
from etcdwarden.local.cluster import LocalCluster
from tests.conftest import ROOT_PASSWORD, enable_auth, etcdctl


def etcdutl_status(path: Path) -> dict[str, int]:
    """The real ``etcdutl 3.5.1 snapshot status -w json``."""
    res = subprocess.run([str(find_binary("etcdutl")), "snapshot", "status", "-w", "json", str(path)],
                         capture_output=True, text=True, timeout=120, check=True)
    out: dict[str, int] = json.loads(res.stdout)
    return out


def save(cluster: LocalCluster, path: Path, user: str | None = None) -> Path:
    """``etcdctl snapshot save`` (the real one) from the first member."""
    cmd = [str(find_binary("etcdctl")), f"--endpoints={cluster.endpoints[0]}"]
    if user:
        cmd.append(f"--user={user}")
    subprocess.run([*cmd, "snapshot", "save", str(path)], capture_output=True, timeout=120, check=True)
    return path


def bulk_put(cluster: LocalCluster, items: list[tuple[bytes, bytes]], batch: int = 128) -> None:
    """Put many keys fast: transactions of ``batch`` puts through the Python client."""

    async def go() -> None:
        async with EtcdClient(ClientConfig.from_strings(cluster.endpoints, command_timeout=30.0)) as c:
            for i in range(0, len(items), batch):
                ops = [pb.RequestOp(request_put=pb.PutRequest(key=k, value=v)) for k, v in items[i : i + batch]]
                await c.txn(pb.TxnRequest(success=ops))

    asyncio.run(go())


def fill_mixed(cluster: LocalCluster) -> None:
    """Puts, overwrites, deletes (plain, prefix, in a txn), leases, 12 KB and 200 KB values, compaction."""
    for i in range(40):
        etcdctl(cluster, "put", f"/k/{i:02d}", f"value-{i}")
    for i in range(0, 40, 3):
        etcdctl(cluster, "put", f"/k/{i:02d}", f"updated-{i}")
    etcdctl(cluster, "del", "/k/05")
    etcdctl(cluster, "del", "--prefix", "/k/3")
    lease = etcdctl(cluster, "lease", "grant", "600").split()[1]
    etcdctl(cluster, "put", "--lease", lease, "/leased/a", "with-lease")
    etcdctl(cluster, "put", "/big/12k", "x" * 12_000)
    # too long for a command-line argument: etcdctl reads the value from stdin
    subprocess.run([str(find_binary("etcdctl")), f"--endpoints={cluster.endpoints[0]}", "put", "/big/200k"],
                   input="y" * 200_000, capture_output=True, text=True, timeout=60, check=True)
    bulk_put(cluster, [(b"/txn/a", b"1"), (b"/txn/b", b"2")])
    txn = 'value("/txn/a") = "1"\n\nput /txn/c 3\ndel /txn/b\nput /txn/a 11\n\n\n'
    res = subprocess.run([str(find_binary("etcdctl")), f"--endpoints={cluster.endpoints[0]}", "txn"],
                         input=txn, capture_output=True, text=True, timeout=60, check=True)
    assert "SUCCESS" in res.stdout, res.stdout + res.stderr
    etcdctl(cluster, "compact", "30")
    etcdctl(cluster, "put", "/k/00", "after-compaction")


def make_snapshots(cluster: LocalCluster, out: Path, many: int = 20_000) -> dict[str, Path]:
    """Real snapshots of a real cluster in several states (auth is enabled last)."""
    out.mkdir(parents=True, exist_ok=True)
    snaps = {"empty": save(cluster, out / "empty.db")}
    fill_mixed(cluster)
    snaps["mixed"] = save(cluster, out / "mixed.db")
    bulk_put(cluster, [(f"/many/{i:06d}".encode(), f"v{i}-".encode() * 4) for i in range(many)])
    snaps["many"] = save(cluster, out / "many.db")
    enable_auth(cluster)
    etcdctl(cluster, "put", "/after-auth", "1", user=f"root:{ROOT_PASSWORD}")
    snaps["auth"] = save(cluster, out / "auth.db", user=f"root:{ROOT_PASSWORD}")
    return snaps


def start_cluster(base: Path) -> LocalCluster:
    cluster = LocalCluster(base, size=1)
    try:
        cluster.start()
    except Exception:
        cluster.stop()
        raise
    return cluster

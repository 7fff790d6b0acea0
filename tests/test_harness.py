"""The harness itself: real clusters start, are healthy, and are stopped by PID."""

from __future__ import annotations

import os

from etcdwarden.local.cluster import LocalCluster
from tests.conftest import ROOT_PASSWORD, etcdctl


def test_three_members_start_and_stop(etcd3: LocalCluster) -> None:
    pids = [m.pid for m in etcd3.members]
    assert all(pids)
    out = etcdctl(etcd3, "member", "list")
    assert out.count("started") == 3
    etcd3.stop()
    for pid in pids:
        assert pid is not None
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        assert not alive, f"etcd pid {pid} still running"


def test_tls_cluster_serves_with_client_cert(etcd_tls: LocalCluster) -> None:
    assert etcd_tls.endpoints[0].startswith("https://")
    etcdctl(etcd_tls, "put", "/k", "v")
    assert etcdctl(etcd_tls, "get", "/k", "--print-value-only").strip() == "v"


def test_auth_cluster_requires_root(etcd_auth: LocalCluster) -> None:
    etcdctl(etcd_auth, "put", "/k", "v", user=f"root:{ROOT_PASSWORD}")
    assert "v" in etcdctl(etcd_auth, "get", "/k", user=f"root:{ROOT_PASSWORD}")

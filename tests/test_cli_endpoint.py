"""``endpoint status|health``, manifest discovery, proxy and bad input, against real etcd."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from etcdwarden.local.cluster import LocalCluster
from etcdwarden.local.ports import free_port
from tests.cli_helpers import cli
from tests.conftest import ROOT_PASSWORD, etcdctl


def _rows(table: str) -> list[list[str]]:
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def test_status_table_matches_etcdctl(etcd3: LocalCluster) -> None:
    eps = ",".join(etcd3.endpoints)
    ours = cli("endpoint", "status", "--endpoints", eps)
    assert ours.code == 0, ours.err
    theirs = etcdctl(etcd3, "endpoint", "status", "-w", "table")
    our_rows, their_rows = _rows(ours.out), _rows(theirs)
    assert our_rows[0] == their_rows[0]  # identical header row
    # same endpoint, ID, version, leader flag, learner flag for every member
    ours_by_ep = {r[0]: r[1:6:1] for r in our_rows[1:]}
    theirs_by_ep = {r[0]: r[1:6:1] for r in their_rows[1:]}
    for ep, row in theirs_by_ep.items():
        mine = ours_by_ep[ep]
        assert mine[0] == row[0]  # ID
        assert mine[1] == row[1]  # VERSION
        assert mine[3] == row[3]  # IS LEADER
        assert mine[4] == row[4]  # IS LEARNER
    assert sum(r[4] == "true" for r in our_rows[1:]) == 1


def test_status_cluster_discovers_members_and_json(etcd3: LocalCluster) -> None:
    r = cli("endpoint", "status", "--cluster", "-w", "json", "--endpoints", etcd3.endpoints[0])
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert sorted(d["Endpoint"] for d in data) == sorted(etcd3.endpoints)
    for d in data:
        st = d["Status"]
        assert st["version"].startswith("3.5")
        assert st["dbSizeInUse"] <= st["dbSize"]
        assert 0.0 <= d["fragmentation"] <= 1.0
    assert len({d["Status"]["header"]["cluster_id"] for d in data}) == 1


def test_status_dead_member_is_an_error_row(etcd3: LocalCluster) -> None:
    etcd3.stop_member("m3")
    r = cli("endpoint", "status", "--endpoints", ",".join(etcd3.endpoints), "--dial-timeout", "1s")
    assert r.code == 1
    rows = {row[0]: row for row in _rows(r.out)[1:]}
    dead = rows[etcd3.member("m3").client_url]
    assert dead[1] == "" and "refused" in dead[-1]
    assert rows[etcd3.member("m1").client_url][1] != ""
    assert "Traceback" not in r.err


def test_health_and_quorum(etcd3: LocalCluster) -> None:
    r = cli("endpoint", "health", "--cluster", "--endpoints", etcd3.endpoints[0])
    assert r.code == 0, r.err + r.out
    assert r.out.count("true") == 3
    assert "quorum: yes (3 of 3" in r.out

    etcd3.stop_member("m3")
    eps = ",".join(etcd3.endpoints)
    r = cli("endpoint", "health", "--endpoints", eps, "--dial-timeout", "1s", "-w", "json")
    assert r.code == 1
    data = json.loads(r.out)
    assert [e["health"] for e in data["endpoints"]].count(False) == 1
    assert data["quorum"]["has_quorum"] is True

    etcd3.stop_member("m2")
    r = cli("endpoint", "health", "--endpoints", eps, "--dial-timeout", "1s", "--command-timeout", "2s")
    assert r.code == 1
    assert "quorum: NO" in r.out or "quorum: unknown" in r.out
    assert "unhealthy cluster" in r.err


@pytest.mark.unit
def test_malformed_endpoint_exit_2() -> None:
    r = cli("endpoint", "status", "--endpoints", "http://127.0.0.1")
    assert r.code == 2
    assert "missing port" in r.err


@pytest.mark.unit
def test_unreachable_subprocess_no_traceback() -> None:
    port = free_port()
    res = subprocess.run(
        [sys.executable, "-m", "etcdwarden", "member", "list", "--endpoints", f"127.0.0.1:{port}",
         "--dial-timeout", "1s"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert res.returncode == 1
    assert "connection refused" in res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1


@pytest.mark.unit
def test_version_flag() -> None:
    res = subprocess.run([sys.executable, "-m", "etcdwarden", "--version"], capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0 and re.match(r"etcdwarden \d+\.\d+", res.stdout)


def test_etcdctl_env_vars(etcd1: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCDCTL_ENDPOINTS", etcd1.endpoints[0])
    monkeypatch.setenv("ETCDCTL_WRITE_OUT", "json")
    r = cli("member", "list")
    assert r.code == 0, r.err
    assert json.loads(r.out)["members"][0]["name"] == "m1"


def test_tls_and_auth_status(etcd_tls_auth: LocalCluster) -> None:
    t = etcd_tls_auth.tls
    assert t
    base = ["--endpoints", etcd_tls_auth.endpoints[0], "--cacert", str(t.ca), "--cert", str(t.client_cert),
            "--key", str(t.client_key)]
    r = cli("endpoint", "health", *base, "--user", f"root:{ROOT_PASSWORD}")
    assert r.code == 0, r.err
    r = cli("member", "list", *base, "--user", "root", "--password", "nope")
    assert r.code == 1
    assert "authentication failed" in r.err


def test_missing_cert_file_is_usage_error(etcd_tls: LocalCluster, tmp_path: Path) -> None:
    r = cli("endpoint", "status", "--endpoints", etcd_tls.endpoints[0], "--cacert", str(tmp_path / "nope.crt"))
    assert r.code == 2
    assert str(tmp_path / "nope.crt") in r.err


MANIFEST = """\
apiVersion: v1
kind: Pod
metadata:
  name: etcd
  namespace: kube-system
spec:
  containers:
  - name: etcd
    image: registry.k8s.io/etcd:3.5.1-0
    command:
    - etcd
    - --advertise-client-urls={url}
    - --cert-file={cert}
    - --key-file={key}
    - --trusted-ca-file={ca}
    - --data-dir=/var/lib/etcd
    - --peer-cert-file=/etc/kubernetes/pki/etcd/peer.crt
"""


def test_finds_cluster_from_static_pod_manifest(etcd_tls: LocalCluster, tmp_path: Path) -> None:
    t = etcd_tls.tls
    assert t
    manifest = tmp_path / "manifests" / "etcd.yaml"
    manifest.parent.mkdir()
    # kubeadm's etcd client certificate is the server certificate (client auth usage)
    manifest.write_text(MANIFEST.format(url=etcd_tls.endpoints[0], cert=t.client_cert, key=t.client_key, ca=t.ca))
    r = cli("endpoint", "status", "--from-manifest", str(manifest))
    assert r.code == 0, r.err
    assert etcd_tls.endpoints[0] in r.out
    assert f"etcd manifest {manifest}" in r.err


@pytest.mark.unit
def test_manifest_not_etcd(tmp_path: Path) -> None:
    bad = tmp_path / "x.yaml"
    bad.write_text("apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: x\n    command: [sleep]\n")
    r = cli("endpoint", "status", "--from-manifest", str(bad))
    assert r.code == 2
    assert "advertise-client-urls" in r.err


def test_no_proxy_bypasses_dead_proxy(etcd1: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HTTPS_PROXY", dead_proxy)
    monkeypatch.setenv("HTTP_PROXY", dead_proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    r = cli("member", "list", "--endpoints", etcd1.endpoints[0], "--dial-timeout", "1s")
    assert r.code == 1, "the dead proxy must be used when NO_PROXY does not list the endpoint"
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    r = cli("member", "list", "--endpoints", etcd1.endpoints[0], "--dial-timeout", "1s")
    assert r.code == 0, r.err

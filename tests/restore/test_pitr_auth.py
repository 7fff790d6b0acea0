"""Point-in-time restore of a cluster with authentication enabled, with no password given: the replay's scratch
member serves over TLS to etcdwarden's client certificate alone (common name ``root``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from etcdwarden.binaries import find_binary
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.repository.base import open_repository
from etcdwarden.restore.scratch_member import ScratchMember
from etcdwarden.restore.scratch_tls import create_scratch_tls
from tests.backup.receiving import running, stop, wait_receiving
from tests.cli_helpers import cli
from tests.conftest import ROOT_PASSWORD, etcdctl

ROOT = f"root:{ROOT_PASSWORD}"


def kvs(endpoint: str, revision: int, *tls: str) -> list[dict[str, object]]:
    res = subprocess.run([str(find_binary("etcdctl")), f"--endpoints={endpoint}", f"--user={ROOT}", *tls, "get", "",
                          "--prefix", "--rev", str(revision), "-w", "json"],
                         capture_output=True, text=True, timeout=60, check=True)
    return list(json.loads(res.stdout).get("kvs", []))


def test_restore_to_a_revision_of_a_cluster_with_auth_enabled(etcd_auth: LocalCluster, tmp_path: Path) -> None:
    ep = etcd_auth.endpoints[0]
    for i in range(5):
        etcdctl(etcd_auth, "put", f"/before/{i}", f"v{i}", user=ROOT)
    repo_dir = tmp_path / "repo"
    with running([sys.executable, "-m", "etcdwarden", "--endpoints", ep, "--user", ROOT, "receive",
                  str(repo_dir), "--segment-seconds", "0.3"]) as proc:
        repo = open_repository(repo_dir)
        wait_receiving(repo, proc)
        for i in range(6):
            etcdctl(etcd_auth, "put", f"/after/{i}", f"w{i}", user=ROOT)
        etcdctl(etcd_auth, "del", "/before/1", user=ROOT)
        got = json.loads(etcdctl(etcd_auth, "get", "/after/3", "-w", "json", user=ROOT))
        point = int(got["kvs"][0]["mod_revision"])  # after /after/3, before /after/4 and the delete
        last = int(got["header"]["revision"])
        wait_receiving(repo, proc, last)
        code, err = stop(proc)
    assert code == 143, err
    data = tmp_path / "restored.etcd"
    r = cli("restore", "member", str(repo_dir), "--data-dir", str(data), "--name", "m0",
            "--initial-cluster", "m0=http://127.0.0.1:2380", "--to-revision", str(point))
    assert r.code == 0, r.err
    assert f"to revision {point}" in r.err and "revisions from 1 segment" in r.err, r.err
    # the restored member (authentication still enabled) serves the source's keys at that revision
    with ScratchMember(data, tmp_path / "check.log") as m:
        assert kvs(m.client_url, point) == kvs(ep, point)
    assert [k for k in kvs(ep, point) if k["key"] == "L2FmdGVyLzQ="] == []  # (/after/4 came later)


def test_a_scratch_member_with_tls_serves_its_certificate_holder_only(etcd_auth: LocalCluster,
                                                                       tmp_path: Path) -> None:
    snap = tmp_path / "s.db"
    subprocess.run([str(find_binary("etcdctl")), f"--endpoints={etcd_auth.endpoints[0]}", f"--user={ROOT}",
                    "snapshot", "save", str(snap)], capture_output=True, timeout=60, check=True)
    data = tmp_path / "copy.etcd"
    subprocess.run([str(find_binary("etcdutl")), "snapshot", "restore", str(snap), "--data-dir", str(data)],
                   capture_output=True, timeout=60, check=True)
    certs = tmp_path / "certs"
    certs.mkdir(mode=0o700)
    tls = create_scratch_tls(certs)
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in certs.iterdir())
    with ScratchMember(data, tmp_path / "m.log", tls=tls) as m:
        assert m.client_url.startswith("https://127.0.0.1:")
        mine = ["--cacert", str(tls.ca), "--cert", str(tls.client_cert), "--key", str(tls.client_key)]
        # no password: the certificate's common name is the user (root)
        res = subprocess.run([str(find_binary("etcdctl")), f"--endpoints={m.client_url}", *mine, "user", "list"],
                             capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == 0 and "root" in res.stdout, res.stderr
        # without the client certificate: refused, password or not
        res = subprocess.run([str(find_binary("etcdctl")), f"--endpoints={m.client_url}", "--cacert", str(tls.ca),
                              f"--user={ROOT}", "--dial-timeout", "2s", "--command-timeout", "4s", "get", "x"],
                             capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode != 0
    shutil.rmtree(certs)


@pytest.mark.unit
def test_the_scratch_certificates_name_loopback_and_root(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    tls = create_scratch_tls(tmp_path)
    server = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
    client = x509.load_pem_x509_certificate(tls.client_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(tls.ca.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "root"
    usages = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert server.issuer == client.issuer == ca.subject


def test_verify_start_of_a_backup_with_auth_enabled(etcd_auth: LocalCluster, tmp_path: Path) -> None:
    """``restore member --verify-start`` counts the keys of the started copy: with authentication enabled that
    needs a user, and the copy's own client certificate is one (no password asked)."""
    for i in range(7):
        etcdctl(etcd_auth, "put", f"/k/{i}", "v", user=ROOT)
    r = cli("--user", ROOT, "backup", str(tmp_path / "repo"), "--endpoints", etcd_auth.endpoints[0])
    assert r.code == 0, r.err
    r = cli("restore", "member", str(tmp_path / "repo"), "--data-dir", str(tmp_path / "d.etcd"), "--name", "m0",
            "--initial-cluster", "m0=http://127.0.0.1:2380", "--verify-start", "-w", "json")
    assert r.code == 0, r.err
    check = json.loads(r.out)["verify_start"]
    assert check["ok"] and check["keys"] == check["expected_keys"] >= 7, check

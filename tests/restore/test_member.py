"""``restore member`` with the real etcdutl 3.5.1 and a real etcd start of the result."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import zstandard

from etcdwarden.local.cluster import LocalCluster
from tests.backup.conftest import dump
from tests.cli_helpers import Result, cli
from tests.restore.conftest import SavedBackup, backup_of, tree
from tests.restore.helpers import put


def _restore(backup: Path | str, cluster: LocalCluster, data_dir: Path, *extra: str) -> Result:
    m = cluster.members[0]
    return cli("restore", "member", str(backup), "--data-dir", str(data_dir), "--name", m.name,
               "--initial-cluster", cluster.initial_cluster, *extra)


def _serve(cluster: LocalCluster, data_dir: Path) -> dict[bytes, bytes]:
    cluster.members[0].data_dir = data_dir
    cluster.start()
    try:
        return dump(cluster.endpoints)
    finally:
        cluster.stop()


def test_restore_into_existing_dir_moves_it_aside(saved: dict[str, SavedBackup], tmp_path: Path) -> None:
    b = saved["plain"]
    d = tmp_path / "etcd"
    d.mkdir(mode=0o755)
    (d / "old-file").write_text("previous data")
    os.chown(d, 65534, 65534)
    c = LocalCluster(tmp_path / "run", size=1)
    r = _restore(b.directory, c, d, "--verify-start", "-w", "json")
    assert r.code == 0, r.err
    out = json.loads(r.out)
    aside = Path(out["moved_aside"])
    assert aside.name.startswith("etcd.pre-restore-") and (aside / "old-file").read_text() == "previous data"
    assert out["verify_start"]["ok"] and out["verify_start"]["revision"] == b.revision
    assert out["verify_start"]["keys"] == len(b.data)
    st = d.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700 and (st.st_uid, st.st_gid) == (65534, 65534)
    assert all(p.stat().st_uid == 65534 for p in d.rglob("*"))
    assert "kube-apiserver" in r.err  # k8s keys, no bump with etcdutl 3.5.1
    assert not [p for p in tmp_path.iterdir() if ".restoring-" in p.name or ".verify" in p.name]
    assert _serve(c, d) == b.data


def test_zstd_backup_new_dir_and_owner_flag(saved: dict[str, SavedBackup], tmp_path: Path) -> None:
    b = saved["zst"]
    d = tmp_path / "new" / "etcd"
    c = LocalCluster(tmp_path / "run", size=1)
    nobody = pwd.getpwuid(65534).pw_name
    r = _restore(b.snapshot, c, d, "--owner", f"{nobody}:{65534}")
    assert r.code == 0, r.err
    assert "moved" not in r.out
    assert d.stat().st_uid == 65534
    assert _serve(c, d) == b.data


def test_dry_run_changes_nothing(saved: dict[str, SavedBackup], tmp_path: Path) -> None:
    d = tmp_path / "etcd"
    d.mkdir()
    (d / "x").write_text("x")
    before = tree(tmp_path)
    c = LocalCluster(tmp_path / "run", size=1)
    r = _restore(saved["plain"].manifest, c, d, "--dry-run")
    assert r.code == 0, r.err
    assert "snapshot restore" in r.out and "etcdutl" in r.out
    assert "pre-restore" in r.out and "--initial-cluster-token etcdwarden-restore-" in r.out
    assert tree(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["etcd"]


def test_failure_leaves_data_dir_untouched(saved: dict[str, SavedBackup], tmp_path: Path) -> None:
    b = saved["plain"].copy(tmp_path / "bk")
    with open(b.snapshot, "r+b") as f:  # flip one byte inside the database
        f.seek(8192 + 100)
        byte = f.read(1)
        f.seek(8192 + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    d = tmp_path / "etcd"
    d.mkdir()
    (d / "keep").write_text("keep")
    before = tree(d)
    c = LocalCluster(tmp_path / "run", size=1)
    r = _restore(b.directory, c, d)
    assert r.code == 1 and "sha256" in r.err, r.err
    assert tree(d) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bk", "etcd"]


def test_refusals(saved: dict[str, SavedBackup], tmp_path: Path) -> None:
    c = LocalCluster(tmp_path / "run", size=1)
    d = tmp_path / "etcd"
    # a different minor version recorded in the manifest
    b = saved["plain"].copy(tmp_path / "v")
    b.edit_manifest(etcd__server_version="3.4.23")
    r = _restore(b.directory, c, d)
    assert r.code == 3 and "3.4.23" in r.err and "--force=version" in r.err, r.err
    assert not d.exists()
    r = _restore(b.directory, c, d, "--force=version", "--dry-run")
    assert r.code == 0, r.err
    # another release
    b = saved["plain"].copy(tmp_path / "rel")
    b.edit_manifest(release="4.15.2")
    r = _restore(b.directory, c, d, "--release", "4.15.3")
    assert r.code == 3 and "--force=release" in r.err
    assert _restore(b.directory, c, d, "--release", "4.15.2", "--dry-run").code == 0
    # the resources bundle is missing
    b = saved["plain"].copy(tmp_path / "res")
    next(b.directory.glob("static_kuberesources_*")).unlink()
    r = _restore(b.manifest, c, d)
    assert r.code == 3 and "resources bundle" in r.err and "--force=resources" in r.err, r.err
    assert not d.exists()
    r = _restore(b.manifest, c, d, "--force=resources")
    assert r.code == 0 and "missing" in r.err, r.err
    assert d.is_dir()
    d = tmp_path / "etcd2"
    # bump flags need both, and etcdutl 3.5.1 cannot bump: refused, or restored without with --force=bump
    # (the bump itself, with Debian's etcdutl 3.5.16, is in test_bump_revision.py)
    assert _restore(saved["plain"].directory, c, d, "--bump-revision", "1000").code == 2
    r = _restore(saved["plain"].directory, c, d, "--bump-revision", "1000", "--mark-compacted", "--dry-run")
    assert r.code == 3 and "does not support these flags" in r.err and "--force=bump" in r.err, r.err
    r = _restore(saved["plain"].directory, c, d, "--bump-revision", "1000", "--mark-compacted", "--dry-run",
                 "--force=bump")
    assert r.code == 0 and "WITHOUT a revision bump" in r.err and "kube-apiserver" in r.err, r.err
    # unknown --force name
    assert _restore(saved["plain"].directory, c, d, "--force=bogus").code == 2


def test_snapshot_without_trailer_refused_unless_skip_hash_check(saved: dict[str, SavedBackup],
                                                                 tmp_path: Path) -> None:
    """Issue 11 item 12: no sha256 trailer -> exit 1 naming --skip-hash-check; with it etcdutl gets the flag."""
    b = saved["plain"]
    cut = tmp_path / "cut.db"
    cut.write_bytes(b.snapshot.read_bytes()[:-32])
    zst = tmp_path / "cut.db.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(cut.read_bytes()))
    c = LocalCluster(tmp_path / "run", size=1)
    d = tmp_path / "etcd"
    d.mkdir()
    (d / "keep").write_text("keep")
    before = tree(d)
    for f in (cut, zst):
        for extra in ((), ("--dry-run",)):
            r = _restore(f, c, d, *extra)
            assert r.code == 1 and "no sha256 trailer" in r.err and "--skip-hash-check" in r.err, r.err
            assert tree(d) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.db", "cut.db.zst", "etcd"]
    r = _restore(cut, c, d, "--skip-hash-check", "--dry-run")
    assert r.code == 0 and "--skip-hash-check" in r.out, r.err
    r = _restore(zst, c, d, "--skip-hash-check", "-w", "json")
    assert r.code == 0, r.err
    assert _serve(c, d) == b.data


def test_refuses_data_dir_of_running_etcd(etcd1: LocalCluster, tmp_path: Path) -> None:
    """Issue 11 item 2: restoring under a running etcd would be lost: exit 3 naming the PID, --force=in-use."""
    b = backup_of(etcd1, tmp_path / "bk")
    m = etcd1.members[0]
    d = m.data_dir

    def restore(target: Path, *extra: str) -> Result:
        return cli("restore", "member", str(b.directory), "--data-dir", str(target), "--name", m.name,
                   "--initial-cluster", etcd1.initial_cluster, *extra)

    def leftovers(target: Path) -> list[str]:
        return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f"{target.name}."))

    before = leftovers(d)
    for extra in ((), ("--dry-run",)):
        r = restore(d, *extra)
        assert r.code == 3 and f"PID {m.pid} (etcd" in r.err and "--force=in-use" in r.err, r.err
        assert "has " in r.err and str(d / "member") in r.err
    assert leftovers(d) == before and m.is_running()
    put(etcd1, b"/after/refusal", b"kept")
    assert dump(etcd1.endpoints)[b"/after/refusal"] == b"kept"
    # a directory whose etcd we cannot see (a container, another path to it): its recorded member answers
    etcd1.stop()
    copy = tmp_path / "seen-elsewhere.etcd"
    shutil.copytree(d, copy)
    etcd1.start()
    r = restore(copy)
    assert r.code == 3 and "answers on" in r.err and f"PID {m.pid}" in r.err and "--force=in-use" in r.err, r.err
    assert leftovers(copy) == []
    r = restore(copy, "--force=in-use")
    assert r.code == 0 and "(--force=in-use)" in r.err, r.err
    assert [n for n in leftovers(copy) if ".pre-restore-" in n]
    # once the etcd is stopped the directory is free
    etcd1.stop()
    r = restore(d)
    assert r.code == 0, r.err


def test_a_caller_naming_the_data_dir_is_no_etcd_on_it(etcd1: LocalCluster, tmp_path: Path) -> None:
    """``sudo etcdwarden restore member --data-dir D`` (or ``time``, ``sh -c``): the processes the restore runs
    under name D in their command lines too; they are not an etcd on it. Any other process that names D as its
    ``--data-dir`` still is."""
    b = backup_of(etcd1, tmp_path / "bk")
    m = etcd1.members[0]
    d = tmp_path / "member.etcd"
    args = ["restore", "member", str(b.directory), "--data-dir", str(d), "--name", m.name,
            "--initial-cluster", etcd1.initial_cluster]
    assert cli(*args).code == 0  # D exists now: the next restore asks who uses it
    wrapped = ["sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-m", "etcdwarden", *args]
    res = subprocess.run(wrapped, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert "is in use" not in res.stderr
    other = subprocess.Popen(["sh", "-c", "sleep 60", "sh", "--data-dir", str(d)])
    try:
        r = cli(*args)
        assert r.code == 3 and f"PID {other.pid} (sh" in r.err and f"runs with --data-dir {d}" in r.err, r.err
    finally:
        other.kill()
        other.wait()

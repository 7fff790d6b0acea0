"""``restore cluster`` on a real 3-member cluster with the process runtime."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdwarden.local.cluster import LocalCluster
from tests.backup.conftest import load
from tests.cli_helpers import cli
from tests.restore.conftest import SavedBackup, backup_of
from tests.restore.helpers import hashkvs, load_prefix, member_dumps, put, statuses, stop_all, write_spec


@pytest.fixture
def c3(etcd3: LocalCluster) -> Iterator[LocalCluster]:
    yield etcd3
    stop_all(etcd3)


def _restored_ok(c: LocalCluster, data: dict[bytes, bytes], revision: int) -> None:
    dumps = member_dumps(c)
    assert all(d == data for d in dumps)
    assert {int(s.header.revision) for s in statuses(c)} == {revision}
    assert len(set(hashkvs(c, revision))) == 1
    assert put(c, b"/after/restore", b"ok") == revision + 1
    assert all(d.get(b"/after/restore") == b"ok" for d in member_dumps(c))


@pytest.mark.parametrize("mode", ["all-members", "single-then-join"])
def test_restore_cluster(c3: LocalCluster, tmp_path: Path, mode: str) -> None:
    load(c3, 200, value_size=128)
    b = backup_of(c3, tmp_path / "backups")
    load_prefix(c3, 50, "/later")
    put(c3, b"/registry/secrets/ns-0/obj-00000000", b"changed")
    spec = write_spec(c3, tmp_path / "cluster.yaml")
    def listing() -> list[str]:
        return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "member" not in p.parts)

    before = listing()
    dry = cli("restore", "cluster", str(b.directory), "--spec", str(spec), "--mode", mode, "--dry-run")
    assert dry.code == 0, dry.err
    assert "snapshot restore" in dry.out and "etcdutl" in dry.out
    assert listing() == before and all(m.is_running() for m in c3.members)
    r = cli("restore", "cluster", str(b.directory), "--spec", str(spec), "--mode", mode, "-w", "json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["verify"]["ok"] and report["verify"]["expected_revision"] == b.revision
    for m in c3.members:
        aside = Path(next(x["moved_aside"] for x in report["members"] if x["name"] == m.name))
        assert aside.name.startswith(f"{m.data_dir.name}.pre-restore-") and (aside / "member" / "snap" / "db").exists()
    _restored_ok(c3, b.data, b.revision)


def test_refuses_data_dir_the_runtime_cannot_stop(c3: LocalCluster, tmp_path: Path) -> None:
    b = backup_of(c3, tmp_path / "backups")
    spec = write_spec(c3, tmp_path / "cluster.yaml", pid_files=False)
    r = cli("restore", "cluster", str(b.directory), "--spec", str(spec))
    assert r.code == 3 and "--force=in-use" in r.err and "does not manage" in r.err, r.err
    assert all(m.is_running() for m in c3.members)
    assert all(m.data_dir.is_dir() for m in c3.members)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["all-members", "single-then-join"])
def test_crash_after_each_step_then_rerun(c3: LocalCluster, tmp_path: Path, mode: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from etcdwarden.restore.cluster import STEPS

    load(c3, 100, value_size=64)
    b = backup_of(c3, tmp_path / "backups")
    spec = write_spec(c3, tmp_path / "cluster.yaml")
    state = tmp_path / "cluster.restore-state.json"
    steps = STEPS[mode][:-1]
    if mode == "single-then-join":
        steps = ["start", "join"]
    for n, step in enumerate(steps, 1):
        put(c3, b"/between/runs", str(n).encode())
        monkeypatch.setenv("ETCDWARDEN_RESTORE_CRASH_AFTER", step)
        r = cli("restore", "cluster", str(b.directory), "--spec", str(spec), "--mode", mode)
        assert r.code == 1 and f"injected crash after step {step}" in r.err, (step, r.err)
        assert not json.loads(state.read_text())["finished"]
        monkeypatch.delenv("ETCDWARDEN_RESTORE_CRASH_AFTER")
        r = cli("restore", "cluster", str(b.directory), "--spec", str(spec), "--mode", mode)
        assert r.code == 0, (step, r.err)
        assert "continuing the restore" in r.err
        assert json.loads(state.read_text())["finished"]
        assert all(d == b.data for d in member_dumps(c3)), step
    for m in c3.members:
        # every run moved the previous data dir aside: one per run, nothing deleted
        assert len(list(m.data_dir.parent.glob(f"{m.data_dir.name}.pre-restore-*"))) == len(steps)


def test_cluster_refusals_and_foreign_cluster(c3: LocalCluster, tmp_path: Path,
                                               saved: dict[str, SavedBackup]) -> None:
    res = tmp_path / "res"
    res.mkdir()
    (res / "kube-apiserver-pod.yaml").write_text("kind: Pod\n")
    b = backup_of(c3, tmp_path / "backups", resources=[res])
    spec = write_spec(c3, tmp_path / "cluster.yaml")

    def untouched() -> None:
        assert all(m.is_running() for m in c3.members)
        assert not list(tmp_path.glob("etcd3/*.pre-restore-*"))
        assert not (tmp_path / "cluster.restore-state.json").exists()

    bad = b.copy(tmp_path / "corrupt")
    with open(bad.snapshot, "r+b") as f:
        f.seek(4096 * 3 + 50)
        f.write(b"\xff\xff\xff")
    r = cli("restore", "cluster", str(bad.directory), "--spec", str(spec))
    assert r.code == 1 and "sha256" in r.err, r.err
    untouched()
    old = b.copy(tmp_path / "old")
    old.edit_manifest(etcd__server_version="3.4.23")
    r = cli("restore", "cluster", str(old.directory), "--spec", str(spec))
    assert r.code == 3 and "--force=version" in r.err, r.err
    untouched()
    nores = b.copy(tmp_path / "nores")
    next(nores.directory.glob("static_kuberesources_*")).unlink()
    r = cli("restore", "cluster", str(nores.directory), "--spec", str(spec))
    assert r.code == 3 and "--force=resources" in r.err, r.err
    untouched()
    # a backup of another cluster: warned, then restored
    other = saved["plain"]
    r = cli("restore", "cluster", str(other.directory), "--spec", str(spec))
    assert r.code == 0, r.err
    assert "comes from cluster" in r.err
    assert all(d == other.data for d in member_dumps(c3))


def test_cluster_refuses_snapshot_without_trailer(etcd1: LocalCluster, tmp_path: Path) -> None:
    """Issue 11 item 12: restore cluster refuses a trailer-less snapshot before touching anything."""
    b = backup_of(etcd1, tmp_path / "backups")
    cut = tmp_path / "cut.db"
    cut.write_bytes(b.snapshot.read_bytes()[:-32])
    spec = write_spec(etcd1, tmp_path / "cluster.yaml")
    try:
        for extra in ((), ("--dry-run",)):
            r = cli("restore", "cluster", str(cut), "--spec", str(spec), *extra)
            assert r.code == 1 and "no sha256 trailer" in r.err and "--skip-hash-check" in r.err, r.err
            assert etcd1.members[0].is_running()
            assert not (tmp_path / "cluster.restore-state.json").exists()
        r = cli("restore", "cluster", str(cut), "--spec", str(spec), "--skip-hash-check", "--dry-run")
        assert r.code == 0 and "--skip-hash-check" in r.out, r.err
    finally:
        stop_all(etcd1)

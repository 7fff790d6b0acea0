"""``restore member`` and the ``snapshot`` commands from any repository URL (real SeaweedFS and Azurite), and a
version-1 backup written by etcdwarden before format 2 still restores (issue 12)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from etcdwarden.cli.restore_cmd import CRASH_ENV
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.repository.base import Repository, open_repository
from etcdwarden.repository.local import LocalRepository
from etcdwarden.repository.transfer import copy_backups
from tests.backup.conftest import dump
from tests.cli_helpers import Result, cli
from tests.repository.azurite import Azurite
from tests.repository.conftest import azurite, seaweed  # noqa: F401  (the session's object stores)
from tests.repository.seaweed import SeaweedS3
from tests.restore.conftest import SavedBackup, tree
from tests.restore.helpers import member_dumps, stop_all, write_spec

FIXTURES = Path(__file__).resolve().parents[1] / "format" / "fixtures"
V1_KEYS = {f"/fixture/key{i:02d}".encode(): f"value-{i}".encode() for i in range(19)}
V1_KEYS[b"/registry/configmaps/default/cm1"] = b'{"kind":"ConfigMap"}'


@pytest.fixture
def s3_env(seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:  # noqa: F811
    for k, v in seaweed.env().items():
        monkeypatch.setenv(k, v)
    return seaweed


@pytest.fixture
def az_env(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> Azurite:  # noqa: F811
    for k in list(os.environ):
        if k.startswith(("AZURE_", "AZURITE_")):
            monkeypatch.delenv(k)
    for k, v in azurite.env().items():
        monkeypatch.setenv(k, v)
    return azurite


def upload(src: Path, repo: Repository) -> list[str]:
    return copy_backups(LocalRepository(src), repo).copied


def restore(backup: str, cluster: LocalCluster, data_dir: Path, *extra: str) -> Result:
    m = cluster.members[0]
    return cli("restore", "member", backup, "--data-dir", str(data_dir), "--name", m.name,
               "--initial-cluster", cluster.initial_cluster, *extra)


def serve(cluster: LocalCluster, data_dir: Path) -> dict[bytes, bytes]:
    cluster.members[0].data_dir = data_dir
    cluster.start()
    try:
        return dump(cluster.endpoints)
    finally:
        cluster.stop()


def staging_left(where: Path) -> list[str]:
    return [p.name for p in where.iterdir() if p.name.startswith(".etcdwarden-tmp-")]


def test_restore_member_from_s3(saved: dict[str, SavedBackup], s3_env: SeaweedS3, tmp_path: Path) -> None:
    """``restore member s3://bucket/prefix``: the newest complete backup, fetched beside the data dir (sha256
    checked on the way), restored, the staging directory removed; a damaged object is refused before D changes."""
    s3 = s3_env
    b = saved["plain"]
    url = s3.url("restore-member")
    repo = open_repository(url, s3.options())
    try:
        assert upload(b.directory, repo) == [b.manifest.name[len("backup_"):-len(".json")]]
    finally:
        repo.close()
    ep = ("--s3-endpoint", s3.endpoint)
    c = LocalCluster(tmp_path / "run", size=1)
    parent = tmp_path / "hosts"
    parent.mkdir()
    d = parent / "etcd"
    r = restore(url, c, d, *ep, "--dry-run")
    assert r.code == 0, r.err
    assert f"fetch {url}/snapshot_" in r.out and "sha256 checked" in r.out
    assert sorted(p.name for p in parent.iterdir()) == []  # a dry run changes nothing, leaves nothing
    r = restore(url, c, d, *ep, "-w", "json")
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert out["backup"]["snapshot"].startswith(f"{url}/snapshot_") and out["backup"]["manifest"].startswith(url)
    assert staging_left(parent) == [] and sorted(p.name for p in parent.iterdir()) == ["etcd"]
    assert serve(c, d) == b.data
    # the snapshot object damaged in the store (same size): refused, D untouched, nothing left behind
    ts = b.manifest.name[len("backup_"):-len(".json")]
    repo = open_repository(url, s3.options())
    try:
        name = next(n for n in (o.name for o in repo.list()) if n.startswith("snapshot_"))
        data = bytearray(repo.read_bytes(name))
        data[9000] ^= 0xFF
        repo.write_bytes(name, bytes(data))
    finally:
        repo.close()
    before = tree(parent)
    r = restore(url, c, d, *ep)
    assert r.code == 1 and "sha256" in r.err and "Traceback" not in r.err, r.err
    assert tree(parent) == before and staging_left(parent) == []
    r = restore(f"{url}/backup_{ts}.json", c, d, *ep)  # a manifest object URL: the same backup
    assert r.code == 1 and "sha256" in r.err, r.err
    assert restore(url, c, d, *ep, "--id", "2020-01-01_000000").code == 2


def test_restore_member_from_azure(saved: dict[str, SavedBackup], az_env: Azurite, tmp_path: Path) -> None:
    az = az_env
    b = saved["zst"]
    where = az.url("restore-member")
    repo = open_repository(where, az.options())
    try:
        (ts,) = upload(b.directory, repo)
    finally:
        repo.close()
    url = f"{where}?endpoint={az.endpoint}"
    c = LocalCluster(tmp_path / "run", size=1)
    d = tmp_path / "etcd"
    r = restore(url, c, d, "--id", ts)
    assert r.code == 0, r.err
    assert staging_left(tmp_path) == []
    assert serve(c, d) == b.data


@pytest.mark.etcd
def test_version1_backup_written_before_format_2_restores(s3_env: SeaweedS3, tmp_path: Path) -> None:
    """The backup ``etcdwarden backup`` wrote before the typed format (tests/format/fixtures) restores from a
    directory and from S3, with its recorded release checked."""
    s3 = s3_env
    src = tmp_path / "v1"
    shutil.copytree(FIXTURES / "v1-plain", src)
    (manifest,) = src.glob("backup_*.json")
    assert json.loads(manifest.read_text())["format"] == 1
    c = LocalCluster(tmp_path / "run", size=1)
    d = tmp_path / "etcd"
    r = restore(str(src), c, d, "--release", "4.14.3", "-w", "json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["backup"]["release"] == "4.14.3"
    assert serve(c, d) == V1_KEYS
    url = s3.url("v1")
    repo = open_repository(url, s3.options())
    try:
        upload(src, repo)
    finally:
        repo.close()
    d2 = tmp_path / "etcd2"
    r = restore(url, c, d2, "--s3-endpoint", s3.endpoint, "--release", "4.14.2")
    assert r.code == 3 and "--force=release" in r.err and not d2.exists()  # the v1 manifest's release is honoured
    r = restore(url, c, d2, "--s3-endpoint", s3.endpoint, "--release", "4.14.3")
    assert r.code == 0, r.err
    assert serve(c, d2) == V1_KEYS
    assert staging_left(tmp_path) == []


def test_snapshot_commands_on_urls(saved: dict[str, SavedBackup], s3_env: SeaweedS3, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = s3_env
    b = saved["plain"]
    url = s3.url("snapshot-cmds")
    repo = open_repository(url, s3.options())
    try:
        (ts,) = upload(b.directory, repo)
        upload(FIXTURES / "v1-zstd", repo)
    finally:
        repo.close()
    ep = ("--s3-endpoint", s3.endpoint)
    local = cli("snapshot", "status", "-w", "json", str(b.snapshot))
    assert local.code == 0
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # the default place for a fetched backup: the current directory
    r = cli("snapshot", "status", "-w", "json", url, *ep, "--id", ts)
    assert r.code == 0 and r.out == local.out, r.err
    r = cli("snapshot", "inspect", "-w", "json", "--keys-only", f"{url}/backup_{ts}.json", *ep)
    assert r.code == 0, r.err
    assert len(json.loads(r.out)["kvs"]) == len(b.data)
    r = cli("snapshot", "verify", url, *ep, "-w", "json")  # every backup in the repository, v1 included
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert sorted(x["timestamp"] for x in doc["backups"]) == sorted([ts, "2026-12-02_135421"])
    assert {x["format"] for x in doc["backups"]} == {1, 2}
    temp = tmp_path / "elsewhere"
    temp.mkdir()
    r = cli("snapshot", "verify", url, *ep, "--id", ts, "--temp-dir", str(temp))
    assert r.code == 0 and f"backup {ts}: ok" in r.out, r.err
    assert os.listdir(work) == [] and os.listdir(temp) == []
    # without --id: the newest complete backup
    r = cli("snapshot", "status", url, *ep)
    assert r.code == 0 and f"backup {max(ts, '2026-12-02_135421')}:" in r.err, r.err


def test_restore_cluster_from_s3(etcd1: LocalCluster, saved: dict[str, SavedBackup], s3_env: SeaweedS3,
                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``restore cluster s3://...``: staged beside the data directories and removed on every exit; the state file
    names the snapshot by its URL, so a run interrupted after a step fetches it again and continues."""
    s3 = s3_env
    b = saved["plain"]
    url = s3.url("restore-cluster")
    repo = open_repository(url, s3.options())
    try:
        upload(b.directory, repo)
    finally:
        repo.close()
    spec = write_spec(etcd1, tmp_path / "cluster.yaml")
    parent = etcd1.members[0].data_dir.parent
    ep = ("--s3-endpoint", s3.endpoint)
    try:
        dry = cli("restore", "cluster", url, "--spec", str(spec), *ep, "--dry-run")
        assert dry.code == 0, dry.err
        assert staging_left(parent) == [] and etcd1.members[0].is_running()
        monkeypatch.setenv(CRASH_ENV, "move-aside")
        r = cli("restore", "cluster", url, "--spec", str(spec), *ep)
        assert r.code == 1 and "injected crash after step move-aside" in r.err, r.err
        assert staging_left(parent) == []
        state = json.loads((tmp_path / "cluster.restore-state.json").read_text())
        assert state["snapshot"].startswith(f"{url}/snapshot_") and not state.get("finished")
        monkeypatch.delenv(CRASH_ENV)
        r = cli("restore", "cluster", url, "--spec", str(spec), *ep, "-w", "json")
        assert r.code == 0, r.err
        report = json.loads(r.out)
        assert report["verify"]["ok"] and report["resumed_at"] == "restore"
        assert staging_left(parent) == []
        assert all(d == b.data for d in member_dumps(etcd1))
    finally:
        stop_all(etcd1)

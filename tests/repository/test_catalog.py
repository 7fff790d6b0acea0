"""The catalog from manifests, and the `backups` commands on local and S3 repositories."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import pytest

from etcdwarden.errors import UsageError
from etcdwarden.repository.base import Repository
from etcdwarden.repository.catalog import BackupUnusable, NoBackup, classify, delete_backup, load_catalog
from etcdwarden.repository.local import LocalRepository
from tests.cli_helpers import cli
from tests.repository.fake import put_backup
from tests.repository.seaweed import SeaweedS3

IDS = ["2026-01-01_000000", "2026-01-01_010000", "2026-01-01_020000", "2026-01-01_030000"]


@pytest.mark.unit
def test_classify() -> None:
    assert classify("backup_2026-01-01_000000.json") == ("manifest", IDS[0])
    assert classify("snapshot_2026-01-01_000000.db.zst.age") == ("data", IDS[0])
    assert classify("static_kuberesources_2026-01-01_000000.tar.gz") == ("data", IDS[0])
    assert classify("snapshot_2026-01-01_000000.db.part") == ("temp", IDS[0])
    assert classify(".snapshot_2026-01-01_000000.db.verify.part") == ("temp", IDS[0])
    assert classify(".backup_2026-01-01_000000.json.tmp-123") == ("temp", IDS[0])
    # reserved for continuous backup and restore drills: filed under the backup they belong to
    assert classify("segment_2026-01-01_000000_0000000000000000042.zst") == ("segment", IDS[0])
    assert classify("segment_2026-01-01_000000_0000000000000000042.json") == ("segment-manifest", IDS[0])
    assert classify("drill_2026-01-01_000000.json") == ("drill", IDS[0])
    for other in ("snapshot_2026-01-01_000000.db.orig", "notes.txt", "lost+found", ".etcdwarden.lock",
                  "snapshot_2026-01-01.db", "backup_2026-01-01_000000.json.bak"):
        assert classify(other) is None, other


def test_states(any_repo: Repository) -> None:
    put_backup(any_repo, IDS[0])
    put_backup(any_repo, IDS[1], manifest=False)  # failed: files without a manifest
    put_backup(any_repo, IDS[2], verified=False)
    put_backup(any_repo, IDS[3])
    any_repo.write_bytes("backup_2026-01-02_000000.json", b"{not json")
    any_repo.write_bytes("README", b"someone else's file")
    any_repo.write_bytes("backup_2026-13-01_000000.json", b"{}")  # month 13: not one of ours
    any_repo.delete(f"static_kuberesources_{IDS[3]}.tar.gz")  # a listed file vanished
    cat = load_catalog(any_repo)
    states = {e.id: e.state for e in cat.entries}
    assert states == {IDS[0]: "complete", IDS[1]: "incomplete", IDS[2]: "unverified", IDS[3]: "incomplete",
                      "2026-01-02_000000": "unreadable"}
    assert cat.unknown == ["README", "backup_2026-13-01_000000.json"]
    e = cat.get(IDS[0])
    assert e.revision == 42 and e.member == "m2" and e.key_names == ["key1"] and e.verified
    assert e.size == sum(o.size for o in e.objects) and len(e.objects) == 3
    assert cat.newest_good() is e


@pytest.mark.unit
def test_cli_list_show_delete_prune_local(tmp_path: Path) -> None:
    repo = LocalRepository(tmp_path / "r")
    for i in IDS:
        put_backup(repo, i, size=1000)
    put_backup(repo, "2026-01-01_040000", manifest=False)
    (tmp_path / "r" / "lost+found").mkdir()
    (tmp_path / "r" / "keep.me").write_text("x")
    r = cli("backups", "list", str(tmp_path / "r"), "-w", "json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert [b["id"] for b in doc["backups"]] == ["2026-01-01_040000", *reversed(IDS)]
    first = doc["backups"][1]
    assert first["state"] == "complete" and first["revision"] == 42 and first["member"] == "m2"
    assert first["verified"] and first["encryption_keys"] == ["key1"]
    assert first["where"] == f"file://{tmp_path / 'r'}/backup_{IDS[3]}.json"
    assert doc["unknown_objects"] == ["keep.me"]
    r = cli("backups", "list", str(tmp_path / "r"))
    assert r.code == 0 and "incomplete" in r.out and IDS[0] in r.out and "incomplete" in r.err
    r = cli("backups", "show", str(tmp_path / "r"), IDS[3], "-w", "json")
    assert r.code == 0 and json.loads(r.out)["newest_verified"] is True
    assert json.loads(r.out)["manifest"]["timestamp"] == IDS[3]
    r = cli("backups", "show", str(tmp_path / "r"), IDS[3])
    assert r.code == 0 and "newest_verified: True" in r.out
    assert cli("backups", "show", str(tmp_path / "r"), "2020-01-01_000000").code == 2
    assert cli("backups", "show", str(tmp_path / "r"), "nonsense").code == 2
    # delete: the newest verified one needs --force (exit 3); --dry-run deletes nothing
    r = cli("backups", "delete", str(tmp_path / "r"), IDS[3])
    assert r.code == 3 and "--force" in r.err
    r = cli("backups", "delete", str(tmp_path / "r"), IDS[0], "--dry-run")
    assert r.code == 0 and (tmp_path / "r" / f"backup_{IDS[0]}.json").exists()
    r = cli("backups", "delete", str(tmp_path / "r"), IDS[0])
    assert r.code == 0 and not any(IDS[0] in n for n in os.listdir(tmp_path / "r"))
    # prune: dry run, then for real; the failed one is within its grace period
    r = cli("backups", "prune", str(tmp_path / "r"), "--max-number", "1", "--dry-run", "-w", "json")
    assert r.code == 0, r.err
    plan = json.loads(r.out)
    assert [d["id"] for d in plan["delete"]] == IDS[1:3] and plan["deleted"] == []
    # nothing gone (+ lost+found, keep.me, the lock, the hash cache of the re-proven backup kept)
    assert len(os.listdir(tmp_path / "r")) == 3 * 3 + 2 + 4
    r = cli("backups", "prune", str(tmp_path / "r"), "--max-number", "1", "--incomplete-grace", "0s")
    assert r.code == 0, r.err
    assert sorted(os.listdir(tmp_path / "r")) == sorted(
        ["lost+found", "keep.me", ".etcdwarden.lock", ".etcdwarden-hashes.json", f"backup_{IDS[3]}.json",
         f"snapshot_{IDS[3]}.db",
         f"static_kuberesources_{IDS[3]}.tar.gz"])
    assert cli("backups", "delete", str(tmp_path / "r"), IDS[3], "--force").code == 0
    assert cli("backups", "prune", str(tmp_path / "r"), "--max-number", "0").code == 2
    assert cli("backups", "prune", str(tmp_path / "r"), "--keep-within", "soon").code == 2


@pytest.mark.unit
def test_prune_size_cap_reports_alert(tmp_path: Path) -> None:
    repo = LocalRepository(tmp_path)
    put_backup(repo, IDS[0], size=2000)
    put_backup(repo, IDS[1], size=3000)
    r = cli("backups", "prune", str(tmp_path), "--max-size-gib", "0.000001", "-w", "json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["deleted"] == [IDS[0]] and doc["alerts"] and "over the size cap" in r.err
    assert load_catalog(repo).newest_good() is not None


def test_cli_on_s3_and_copy_both_ways(seaweed: SeaweedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in seaweed.env().items():
        monkeypatch.setenv(k, v)
    local = LocalRepository(tmp_path / "src")
    for i in IDS[:3]:
        put_backup(local, i, size=6 * 1024 * 1024 + 3)  # a multipart upload each
    put_backup(local, IDS[3], manifest=False)
    url = seaweed.url("cli-copy")
    ep = ["--s3-endpoint", seaweed.endpoint]
    r = cli("backups", "copy", str(tmp_path / "src"), url, *ep, "--dry-run")
    assert r.code == 0 and r.out.count("would copy") == 3
    assert json.loads(cli("backups", "list", url, *ep, "-w", "json").out)["backups"] == []
    r = cli("backups", "copy", str(tmp_path / "src"), url, *ep, "-w", "json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["copied"] == IDS[:3]
    r = cli("backups", "copy", str(tmp_path / "src"), url, *ep, "-w", "json")  # idempotent
    assert json.loads(r.out)["copied"] == [] and len(json.loads(r.out)["skipped"]) == 3
    doc = json.loads(cli("backups", "list", url, *ep, "-w", "json").out)
    assert [(b["id"], b["state"]) for b in doc["backups"]] == [(i, "complete") for i in reversed(IDS[:3])]
    assert doc["backups"][0]["where"] == f"{url}/backup_{IDS[2]}.json"
    r = cli("backups", "delete", url, IDS[2], *ep)
    assert r.code == 3
    r = cli("backups", "prune", url, *ep, "--max-number", "2")
    assert r.code == 0, r.err
    doc = json.loads(cli("backups", "list", url, *ep, "-w", "json").out)
    assert [b["id"] for b in doc["backups"]] == [IDS[2], IDS[1]]
    # S3 -> local, one backup, byte for byte
    r = cli("backups", "copy", url, str(tmp_path / "back"), *ep, "--id", IDS[1])
    assert r.code == 0, r.err
    for name in os.listdir(tmp_path / "back"):
        assert (tmp_path / "back" / name).read_bytes() == (tmp_path / "src" / name).read_bytes()
    assert sorted(os.listdir(tmp_path / "back")) == sorted(n for n in os.listdir(tmp_path / "src") if IDS[1] in n)
    # a failed backup cannot be copied; a config file works instead of flags; secrets stay out of output
    assert cli("backups", "copy", str(tmp_path / "src"), url, *ep, "--id", IDS[3]).code == 2
    cfg = tmp_path / "repo.yaml"
    cfg.write_text(f"repository:\n  endpoint: {seaweed.endpoint}\n  region: us-east-1\n"
                   f"  access_key_id: {seaweed.access_key}\n  secret_access_key: {seaweed.secret_key}\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    r = cli("backups", "list", url, "--repository-config", str(cfg))
    assert r.code == 0 and IDS[2] in r.out and seaweed.secret_key not in r.out + r.err
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text().replace(seaweed.secret_key, "NotTheSecret999"))
    r = cli("backups", "list", url, "--repository-config", str(bad))
    assert r.code == 1 and "NotTheSecret999" not in r.err and seaweed.access_key not in r.err


@pytest.mark.unit
def test_copy_refuses_corrupted_source(tmp_path: Path) -> None:
    src = LocalRepository(tmp_path / "a")
    put_backup(src, IDS[0], size=5000)
    p = tmp_path / "a" / f"snapshot_{IDS[0]}.db"
    data = bytearray(p.read_bytes())
    data[100] ^= 1
    p.write_bytes(bytes(data))
    r = cli("backups", "copy", str(tmp_path / "a"), str(tmp_path / "b"))
    assert r.code == 1 and "sha256" in r.err
    assert not (tmp_path / "b").exists() or os.listdir(tmp_path / "b") == []


@pytest.mark.unit
def test_since_and_age_of_incomplete(tmp_path: Path) -> None:
    repo = LocalRepository(tmp_path)
    put_backup(repo, IDS[0], manifest=False)
    old = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
    for n in os.listdir(tmp_path):
        os.utime(tmp_path / n, (old, old))
    r = cli("backups", "prune", str(tmp_path), "-w", "json")  # default: number 15, grace 24h
    doc = json.loads(r.out)
    assert [d["id"] for d in doc["delete"]] == [IDS[0]] and os.listdir(tmp_path) == [".etcdwarden.lock"]


FIXTURES = Path(__file__).resolve().parents[1] / "format" / "fixtures"


@pytest.mark.unit
def test_version1_backup_written_before_format_2_is_complete(tmp_path: Path) -> None:
    """A backup written by etcdwarden before the typed format reads as complete, its manifest typed."""
    for d in sorted(FIXTURES.glob("v1-*")):
        shutil.copytree(d, tmp_path / "repo", dirs_exist_ok=True)
    repo = LocalRepository(tmp_path / "repo")
    cat = load_catalog(repo)
    assert [e.state for e in cat.entries] == ["complete", "complete"] and cat.unknown == []
    e = cat.newest_good()
    assert e is not None and e.manifest is not None and e.manifest.source_format == 1
    assert e.as_json(repo)["format"] == 1 and e.revision == 23 and e.member == "m1" and e.verified
    r = cli("backups", "show", str(tmp_path / "repo"), cat.entries[0].id, "-w", "json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["state"] == "complete" and doc["manifest"]["encryption_at_rest"]["key_names"] == ["key1"]


@pytest.mark.unit
def test_unusable_manifests_and_reserved_kinds(tmp_path: Path) -> None:
    repo = LocalRepository(tmp_path / "r")
    doc = put_backup(repo, IDS[0])
    newer = dict(doc, format=99)
    repo.write_bytes(f"backup_{IDS[0]}.json", json.dumps(newer).encode())
    put_backup(repo, IDS[1])
    wrong = dict(put_backup(repo, IDS[2]), revision="42")
    repo.write_bytes(f"backup_{IDS[2]}.json", json.dumps(wrong).encode())
    repo.write_bytes(f"drill_{IDS[1]}.json", b"{}")
    repo.write_bytes(f"segment_{IDS[1]}_0000000000000000043.zst", b"events")
    cat = load_catalog(repo)
    states = {e.id: (e.state, e.problem) for e in cat.entries}
    assert states[IDS[0]][0] == "unreadable" and "newer etcdwarden" in str(states[IDS[0]][1])
    assert "upgrade" in str(states[IDS[0]][1])
    assert states[IDS[1]] == ("complete", None)
    assert states[IDS[2]][0] == "unreadable" and str(states[IDS[2]][1]).startswith("revision:")
    e = cat.get(IDS[1])
    assert f"drill_{IDS[1]}.json" in [o.name for o in e.objects] and cat.unknown == []
    # deleting a backup deletes its segments and drill record with it (manifest first)
    deleted = delete_backup(repo, e)
    assert deleted[0] == f"backup_{IDS[1]}.json" and f"segment_{IDS[1]}_0000000000000000043.zst" in deleted
    assert not [n for n in os.listdir(tmp_path / "r") if IDS[1] in n]


@pytest.mark.unit
def test_select(tmp_path: Path) -> None:
    """Without an ID: the newest backup with a manifest; failed runs (no manifest) are passed over with a note,
    a damaged newest backup never silently (its error names the newest complete one)."""
    repo = LocalRepository(tmp_path / "r")
    with pytest.raises(NoBackup):
        load_catalog(repo).select()
    put_backup(repo, IDS[0], manifest=False)
    with pytest.raises(NoBackup):
        load_catalog(repo).select()
    put_backup(repo, IDS[1])
    put_backup(repo, IDS[2], manifest=False)
    cat = load_catalog(repo)
    e, notes = cat.select()
    assert e.id == IDS[1] and len(notes) == 1 and IDS[2] in notes[0] and "incomplete" in notes[0]
    put_backup(repo, IDS[3], verified=False)  # unverified: chosen, with a note (the reader proves it)
    e, notes = load_catalog(repo).select()
    assert e.id == IDS[3] and "unverified" in notes[-1]
    repo.delete(f"static_kuberesources_{IDS[3]}.tar.gz")  # only the bundle missing: chosen (restore may force)
    e, notes = load_catalog(repo).select()
    assert e.id == IDS[3] and e.absent == [f"static_kuberesources_{IDS[3]}.tar.gz"]
    repo.delete(f"snapshot_{IDS[3]}.db")  # the snapshot missing: refused, naming the newest complete one
    with pytest.raises(BackupUnusable, match=f"the newest backup, {IDS[3]}, is incomplete.*--id {IDS[1]}"):
        load_catalog(repo).select()
    repo.write_bytes(f"backup_{IDS[3]}.json", b"{")
    with pytest.raises(BackupUnusable, match="unreadable"):
        load_catalog(repo).select()
    cat = load_catalog(repo)
    e, notes = cat.select(IDS[1])
    assert e.id == IDS[1] and notes == []
    with pytest.raises(BackupUnusable, match="no manifest"):
        cat.select(IDS[2])
    with pytest.raises(BackupUnusable, match="unreadable"):
        cat.select(IDS[3])
    with pytest.raises(UsageError, match="no backup"):
        cat.select("2027-01-01_000000")

"""Issue 11 item 1: retention never deletes a backup on the strength of one it has not re-proven.

Real etcd backups; one byte flipped in the newest snapshot (same size, mtime put back). Whatever the
hash cache says (absent, or recording a hash older than --reverify-after for the very same
fingerprint), prune re-hashes the backup it would keep, finds it corrupt, keeps the good older one,
deletes nothing it should not, and exits 1.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest

from etcdwarden.local.cluster import LocalCluster
from etcdwarden.repository.base import Repository, open_repository
from etcdwarden.repository.catalog import load_catalog
from etcdwarden.repository.local import LocalRepository
from etcdwarden.repository.reverify import CACHE_NAME, HashCache, Verifier, VerifyPolicy
from tests.backup.conftest import load
from tests.cli_helpers import cli
from tests.repository.fake import put_backup
from tests.repository.seaweed import SeaweedS3


def two_backups(etcd: LocalCluster, directory: Path) -> list[str]:
    """Two real, verified backups of ``etcd`` in ``directory``; their IDs, oldest first."""
    for i in range(2):
        load(etcd, 50 + i)
        r = cli("backup", str(directory), "--endpoints", etcd.endpoints[0])
        assert r.code == 0, r.err
    found = sorted(p.name[len("backup_"):-len(".json")] for p in directory.glob("backup_*.json"))
    assert len(found) == 2
    return found


def flip_byte(path: Path, keep_mtime: bool = True) -> None:
    """Bit rot: one byte changed in the middle, same size, the modification time put back."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size


def forge_cache(repo: Repository, name: str, sha256: str, size: int, hashed_at: dt.datetime) -> None:
    """A cache that vouches for ``name`` with its *current* fingerprint: the metadata gives nothing away."""
    fp = repo.fingerprint(name)
    assert fp is not None
    cache = HashCache({name: {"sha256": sha256, "size": size, "fingerprint": fp,
                              "hashed_at": hashed_at.isoformat()}}, dirty=True)
    assert cache.save(repo, [name]) is None


@pytest.mark.parametrize("cache", ["absent", "older-than-reverify-after"])
def test_prune_keeps_the_good_backup_when_the_newest_is_corrupt(etcd1: LocalCluster, tmp_path: Path,
                                                                  cache: str) -> None:
    repo_dir = tmp_path / "repo"
    old, new = two_backups(etcd1, repo_dir)
    snap = repo_dir / f"snapshot_{new}.db"
    manifest = json.loads((repo_dir / f"backup_{new}.json").read_text())
    flip_byte(snap)
    repo = LocalRepository(repo_dir)
    if cache != "absent":
        rec = manifest["files"][snap.name]
        forge_cache(repo, snap.name, rec["sha256"], rec["size"],
                    dt.datetime.now(dt.UTC) - dt.timedelta(days=7, minutes=1))
    # a plain listing cannot know yet; it still never claims more than "complete"
    r = cli("backups", "prune", str(repo_dir), "--max-number", "1")
    assert r.code == 1, r.err
    assert f"backup {new} is corrupt" in r.err and "sha256" in r.err and "Traceback" not in r.err
    assert (repo_dir / f"backup_{old}.json").exists() and (repo_dir / f"snapshot_{old}.db").exists()
    assert (repo_dir / f"backup_{new}.json").exists() and snap.exists()  # evidence: never deleted automatically
    # the good older backup is the one kept and counted
    cat = load_catalog(repo)
    assert cat.newest_good() is not None
    # now every listing knows (the finding is recorded against the file's fingerprint)
    doc = json.loads(cli("backups", "list", str(repo_dir), "-w", "json").out)
    states = {b["id"]: (b["state"], b["verified"]) for b in doc["backups"]}
    assert states == {new: ("corrupt", False), old: ("complete", True)}
    r = cli("backups", "show", str(repo_dir), new)
    assert "state:           corrupt" in r.out and "verified:        False" in r.out
    # a second prune still keeps the old one and still says the newest is corrupt
    r = cli("backups", "prune", str(repo_dir), "--max-number", "1", "-w", "json")
    assert r.code == 1 and json.loads(r.out)["deleted"] == [] and new in r.err


def test_list_verify_rehashes_and_show_never_says_verified_for_failed(etcd1: LocalCluster, tmp_path: Path) -> None:
    repo_dir = tmp_path / "repo"
    old, new = two_backups(etcd1, repo_dir)
    doc = json.loads(cli("backups", "list", str(repo_dir), "--verify", "-w", "json").out)
    assert all(b["rehashed"] and b["state"] == "complete" for b in doc["backups"])
    # a hash recorded and then the byte flipped with every stat field the same but ctime: list --verify
    # reads everything whatever the cache says
    rec = json.loads((repo_dir / f"backup_{new}.json").read_text())["files"][f"snapshot_{new}.db"]
    flip_byte(repo_dir / f"snapshot_{new}.db")
    forge_cache(LocalRepository(repo_dir), f"snapshot_{new}.db", rec["sha256"], rec["size"], dt.datetime.now(dt.UTC))
    r = cli("backups", "list", str(repo_dir), "--verify")
    assert r.code == 1 and f"backup {new} is corrupt" in r.err
    line = next(ln for ln in r.out.splitlines() if f"| {new} |" in ln)
    assert "corrupt" in line and " yes " not in line
    # an incomplete backup is not "verified: yes"
    (repo_dir / f"snapshot_{old}.db").unlink()
    doc = json.loads(cli("backups", "list", str(repo_dir), "-w", "json").out)
    assert {b["id"]: b["verified"] for b in doc["backups"]} == {new: False, old: False}
    assert "verified:        False" in cli("backups", "show", str(repo_dir), old).out


@pytest.mark.unit
def test_cache_skips_unchanged_files_within_reverify_after(tmp_path: Path) -> None:
    """The optimisation itself: a file unchanged since it was hashed is not read again within the window,
    is read again after it, and any change of the fingerprint (here: a rewrite) means a new read."""
    repo = LocalRepository(tmp_path)
    put_backup(repo, "2026-01-01_000000", size=3000)
    t0 = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    e = load_catalog(repo).entries[0]
    v = Verifier(repo, VerifyPolicy(), now=t0)
    c = v.check(e)
    assert c.ok and len(c.hashed) == 2 and v.bytes_read == e.size - repo.stat(e.manifest_name or "").size  # type: ignore[union-attr]
    v.save(o.name for o in e.objects)
    assert (tmp_path / CACHE_NAME).exists()
    assert load_catalog(repo).unknown == []  # the cache is not an unknown object (nor a backup)
    v2 = Verifier(repo, VerifyPolicy(), now=t0 + dt.timedelta(days=6))
    c2 = v2.check(load_catalog(repo).entries[0])
    assert c2.ok and c2.hashed == [] and len(c2.cached) == 2 and v2.bytes_read == 0
    v3 = Verifier(repo, VerifyPolicy(), now=t0 + dt.timedelta(days=7))
    assert len(v3.check(load_catalog(repo).entries[0]).hashed) == 2
    v4 = Verifier(repo, VerifyPolicy(reverify_after=dt.timedelta(0)), now=t0 + dt.timedelta(hours=1))
    assert len(v4.check(load_catalog(repo).entries[0]).hashed) == 2
    snap = tmp_path / "snapshot_2026-01-01_000000.db"
    snap.write_bytes(snap.read_bytes())  # same bytes, new ctime/mtime: hashed again (and still fine)
    v5 = Verifier(repo, VerifyPolicy(), now=t0 + dt.timedelta(hours=1))
    c5 = v5.check(load_catalog(repo).entries[0])
    assert c5.ok and c5.hashed == [snap.name]
    # a cache that is garbage is only a note: everything is hashed
    (tmp_path / CACHE_NAME).write_text("[1, 2")
    v6 = Verifier(repo, VerifyPolicy(), now=t0 + dt.timedelta(hours=1))
    assert len(v6.check(load_catalog(repo).entries[0]).hashed) == 2 and v6.notes


@pytest.mark.unit
def test_a_cache_record_without_a_time_zone_is_not_trusted(tmp_path: Path) -> None:
    """A hand-edited cache whose ``hashed_at`` has no zone (it cannot be compared with now) is hashed again,
    never a traceback (it was a TypeError in every prune and ``list --verify``)."""
    repo = LocalRepository(tmp_path)
    put_backup(repo, "2026-01-01_000000", size=3000)
    t0 = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    e = load_catalog(repo).entries[0]
    v = Verifier(repo, VerifyPolicy(), now=t0)
    assert v.check(e).ok
    v.save(o.name for o in e.objects)
    doc = json.loads((tmp_path / CACHE_NAME).read_text())
    for rec in doc["files"].values():
        rec["hashed_at"] = dt.datetime.fromisoformat(rec["hashed_at"]).replace(tzinfo=None).isoformat()
    (tmp_path / CACHE_NAME).write_text(json.dumps(doc))
    v2 = Verifier(repo, VerifyPolicy(), now=t0 + dt.timedelta(hours=1))
    c = v2.check(load_catalog(repo).entries[0])
    assert c.ok and len(c.hashed) == 2 and c.cached == {}


@pytest.mark.unit
def test_corrupt_keepers_fall_back_to_older_good_ones(tmp_path: Path) -> None:
    """With --max-number 2 and the two newest corrupt, the two newest good ones are kept (and none deleted
    that is needed); the corrupt ones are left alone and reported."""
    repo = LocalRepository(tmp_path)
    ids = [f"2026-01-0{d}_000000" for d in range(1, 6)]
    for i in ids:
        put_backup(repo, i, size=2000)
    for i in ids[-2:]:
        flip_byte(tmp_path / f"snapshot_{i}.db")
    r = cli("backups", "prune", str(tmp_path), "--max-number", "2", "-w", "json")
    assert r.code == 1, r.err
    doc = json.loads(r.out)
    assert doc["deleted"] == [ids[0]]
    assert [k["id"] for k in doc["keep"]] == [ids[2], ids[1]]
    assert sorted(c["id"] for c in doc["corrupt"]) == ids[-2:]
    assert {x["id"] for x in doc["proven"]} == {ids[1], ids[2]}
    # delete without --force re-proves "the newest verified" too: ids[2] is now the newest good one
    r = cli("backups", "delete", str(tmp_path), ids[2])
    assert r.code == 3 and "newest verified" in r.err


@pytest.mark.unit
def test_prune_with_nothing_to_delete_reads_nothing(tmp_path: Path) -> None:
    repo = LocalRepository(tmp_path)
    put_backup(repo, "2026-01-01_000000")
    flip_byte(tmp_path / "snapshot_2026-01-01_000000.db")
    r = cli("backups", "prune", str(tmp_path), "--max-number", "3", "-w", "json")
    assert r.code == 0 and json.loads(r.out)["proven"] == [] and not (tmp_path / CACHE_NAME).exists()


def test_s3_prune_keeps_the_good_backup_when_the_newest_is_corrupt(etcd1: LocalCluster, seaweed: SeaweedS3,
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in seaweed.env().items():
        monkeypatch.setenv(k, v)
    local = tmp_path / "local"
    old, new = two_backups(etcd1, local)
    url = seaweed.url("reverify-corrupt")
    ep = ["--s3-endpoint", seaweed.endpoint]
    assert cli("backups", "copy", str(local), url, *ep).code == 0
    # a cache made by list --verify (both good at that point) ...
    r = cli("backups", "list", url, *ep, "--verify", "-w", "json")
    assert r.code == 0 and all(b["rehashed"] for b in json.loads(r.out)["backups"])
    s3: Repository = open_repository(url, seaweed.options())
    assert s3.stat(CACHE_NAME) is not None
    # ... then the object is replaced by one of the same size with one byte flipped
    name = f"snapshot_{new}.db"
    data = bytearray(s3.read_bytes(name))
    data[len(data) // 2] ^= 0x40
    s3.write_bytes(name, bytes(data))
    # a budget too small to re-prove the newest: nothing is deleted, exit 3, the flag is named
    r = cli("backups", "prune", url, *ep, "--max-number", "1", "--max-verify-bytes", "1000")
    assert r.code == 3 and "--max-verify-bytes" in r.err and "Nothing was deleted" in r.err
    assert {e.id for e in load_catalog(s3).entries} == {old, new}
    r = cli("backups", "prune", url, *ep, "--max-number", "1", "-w", "json")
    assert r.code == 1, r.err
    doc = json.loads(r.out)
    assert doc["deleted"] == [] and [c["id"] for c in doc["corrupt"]] == [new]
    assert f"backup {new} is corrupt" in r.err
    cat = load_catalog(s3)
    assert {e.id for e in cat.entries} == {old, new}
    doc = json.loads(cli("backups", "list", url, *ep, "-w", "json").out)
    assert {b["id"]: b["state"] for b in doc["backups"]} == {new: "corrupt", old: "complete"}
    assert doc["unknown_objects"] == []
    s3.close()

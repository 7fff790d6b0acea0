"""``snapshot verify`` on real snapshots: good ones pass, every damaged copy fails cleanly."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyrage
import pytest
import zstandard

from etcdwarden.binaries import find_binary
from etcdwarden.local.cluster import LocalCluster
from etcdwarden.restore.source import verify_location
from etcdwarden.snapshot import SnapshotCorrupt
from etcdwarden.snapshot.bbolt import BoltFile
from etcdwarden.snapshot.scratch import process_start
from etcdwarden.snapshot.status import db_status
from etcdwarden.snapshot.verify import (
    NO_TRAILER_NOTE,
    BackupReport,
    SnapshotReport,
    verify_db,
    verify_path,
)
from tests.cli_helpers import cli
from tests.snapshot import bulk_put, etcdutl_status, fill_mixed, save, start_cluster
from tests.tiers import starts

TS = "2024-05-01_120000"


def etcdutl_binary() -> Path:
    return find_binary("etcdutl")


@pytest.fixture(scope="module")
@starts("etcd")
def snap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("verify")
    cluster = start_cluster(base / "cluster")
    try:
        fill_mixed(cluster)
        bulk_put(cluster, [(f"/multi/{i:05d}".encode(), b"v" * (i % 50)) for i in range(1500)])
        yield save(cluster, base / "snap.db")
    finally:
        cluster.stop()


def _check_damaged(path: Path, expect_fail: bool, skip_hash_check: bool = False) -> str:
    """Verify a damaged file: only SnapshotCorrupt may come out, fast; return 'ok' or 'corrupt'."""
    t0 = time.monotonic()
    try:
        report = verify_db(path, skip_hash_check=skip_hash_check)
    except SnapshotCorrupt as e:
        assert "\n" not in str(e)
        outcome = "corrupt"
    else:
        assert not expect_fail, f"false ok for {path}"
        assert report.sha256 == "absent" and NO_TRAILER_NOTE in report.notes
        outcome = "ok"
    assert time.monotonic() - t0 < 5, "verify took too long on a damaged file"
    return outcome


def test_good_snapshot(snap: Path) -> None:
    report = verify_path(snap)
    assert isinstance(report, SnapshotReport)
    assert report.sha256 == "ok" and report.notes == []
    assert report.status.as_json() == etcdutl_status(snap)
    assert report.key_entries > 1500
    r = cli("snapshot", "verify", str(snap))
    assert r.code == 0 and ": ok (sha256 ok" in r.out
    r = cli("snapshot", "verify", "-w", "json", str(snap))
    assert r.code == 0 and json.loads(r.out)["ok"] is True


def test_no_trailer_fails_unless_skip_hash_check(snap: Path, tmp_path: Path, etcd1: LocalCluster) -> None:
    """Issue 11 item 12: a snapshot without its sha256 trailer is not "ok" (etcdutl refuses it too)."""
    cut = tmp_path / "cut.db"  # a snapshot cut by exactly 32 bytes
    cut.write_bytes(snap.read_bytes()[:-32])
    etcd1.stop()  # a raw member/snap/db copy of a (stopped) member
    raw = tmp_path / "db"
    raw.write_bytes((etcd1.members[0].data_dir / "member" / "snap" / "db").read_bytes())
    zst = tmp_path / "cut.db.zst"  # the same, compressed: detected once decoded
    zst.write_bytes(zstandard.ZstdCompressor().compress(cut.read_bytes()))
    for f in (cut, raw, zst):
        # etcdutl's own detection agrees: "snapshot missing hash but --skip-hash-check=false"
        etcdutl_cmd = [str(etcdutl_binary()), "snapshot", "restore", str(cut if f == zst else f),
                       "--data-dir", str(tmp_path / f"restored-{f.name}")]
        e = subprocess.run(etcdutl_cmd, capture_output=True, text=True, check=False)
        assert e.returncode != 0 and "missing hash" in e.stderr, e.stderr
        r = cli("snapshot", "verify", str(f))
        assert r.code == 1 and r.out == "" and "no sha256 trailer" in r.err and "--skip-hash-check" in r.err, r
        assert r.err.count("\n") == 1
        with pytest.raises(SnapshotCorrupt, match="no sha256 trailer"):
            verify_path(f)
        r = cli("snapshot", "verify", "--skip-hash-check", str(f))
        assert r.code == 0 and NO_TRAILER_NOTE in r.out, r.err
        report = verify_path(f, skip_hash_check=True)
        assert isinstance(report, SnapshotReport) and report.sha256 == "absent"
    # a trailer that is present is checked even with --skip-hash-check
    bad = tmp_path / "bad.db"
    buf = bytearray(snap.read_bytes())
    buf[-1] ^= 1
    bad.write_bytes(buf)
    r = cli("snapshot", "verify", "--skip-hash-check", str(bad))
    assert r.code == 1 and "sha256 mismatch" in r.err
    r = cli("snapshot", "verify", "--skip-hash-check", str(snap))
    assert r.code == 0 and ": ok (sha256 ok" in r.out
    # a backup directory whose snapshot has no trailer: refused the same way
    d = tmp_path / "bk"
    d.mkdir()
    (d / f"snapshot_{TS}.db").write_bytes(cut.read_bytes())
    _backup(d, cut)
    _fails(d, "no sha256 trailer")
    assert cli("snapshot", "verify", "--skip-hash-check", str(d)).code == 0


def _meta_and_stride_offsets(size: int, page_size: int, stride: int) -> list[int]:
    offs = set(range(0, size, stride))
    offs.update(range(0, 80))
    offs.update(range(page_size, page_size + 80))
    return sorted(o for o in offs if o < size)


def test_byte_flips_never_pass(snap: Path, tmp_path: Path) -> None:
    data = snap.read_bytes()
    with BoltFile(snap) as db:
        ps = db.page_size
    bad = tmp_path / "flip.db"
    offsets = _meta_and_stride_offsets(len(data), ps, 97)
    assert len(offsets) > 1000
    for off in offsets:
        buf = bytearray(data)
        buf[off] ^= 0xFF if off % 2 else 0x01
        bad.write_bytes(buf)
        _check_damaged(bad, expect_fail=True)
    # a few through the CLI: exit 1, one "Error:" line, never a traceback
    for off in offsets[:: max(1, len(offsets) // 15)]:
        buf = bytearray(data)
        buf[off] ^= 0x10
        bad.write_bytes(buf)
        r = cli("snapshot", "verify", str(bad))
        assert r.code == 1 and r.out == "" and r.err.count("\n") == 1 and r.err.startswith("Error: ")


def test_byte_flips_without_trailer_are_handled(snap: Path, tmp_path: Path) -> None:
    """No trailer: only structure can be checked, but nothing may crash or hang, and status too."""
    data = snap.read_bytes()[:-32]
    with BoltFile(snap) as db:
        ps = db.page_size
    bad = tmp_path / "flip.db"
    outcomes = {"ok": 0, "corrupt": 0}
    for off in _meta_and_stride_offsets(len(data), ps, 389):
        buf = bytearray(data)
        buf[off] ^= 0xFF
        bad.write_bytes(buf)
        outcomes[_check_damaged(bad, expect_fail=False, skip_hash_check=True)] += 1
        with contextlib.suppress(SnapshotCorrupt):
            db_status(bad)
    # every meta byte that is checksummed or checked is detected; many data flips are too
    assert outcomes["corrupt"] > 160


def test_truncations_fail_cleanly(snap: Path, tmp_path: Path) -> None:
    data = snap.read_bytes()
    with BoltFile(snap) as db:
        ps = db.page_size
    lengths = set(range(0, len(data), 1531))
    for k in range(1, len(data) // ps + 1):
        lengths.update({k * ps - 1, k * ps, k * ps + 1, k * ps + 32})
    lengths.update({len(data) - 1, len(data) - 31, len(data) - 33, len(data) - 544})
    bad = tmp_path / "trunc.db"
    for n in sorted(x for x in lengths if 0 <= x < len(data) and x != len(data) - 32):
        bad.write_bytes(data[:n])
        _check_damaged(bad, expect_fail=True)
        if n < len(data) - 32:
            with pytest.raises(SnapshotCorrupt, match=r"truncated|too small|meta"):
                db_status(bad)
        else:  # the database is whole, only the trailer is cut: etcdutl reads it too
            assert db_status(bad).as_json() == etcdutl_status(bad)
    bad.write_bytes(data[: len(data) // 2])
    for cmd in ("status", "verify", "inspect"):
        r = cli("snapshot", cmd, str(bad))
        assert r.code == 1 and "truncated" in r.err and "Traceback" not in r.err


# --- backup directories --------------------------------------------------------------------------

def _entry(p: Path) -> dict[str, object]:
    return {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}


def _bundle(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("static-pod-resources/etcd-pod.yaml")
        payload = b"apiVersion: v1\n"
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    return path


def _backup(d: Path, snap: Path, ts: str = TS, snap_name: str | None = None,
            bundle_ts: str | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    s = d / (snap_name or f"snapshot_{ts}.db")
    if not s.exists():
        s.write_bytes(snap.read_bytes())
    b = _bundle(d / f"static_kuberesources_{bundle_ts or ts}.tar.gz")
    # a hand-made version-1 manifest: no "format", fields a reader does not know (kept, ignored)
    manifest = {"version": 1, "tool": {"name": "etcdwarden", "version": "0.1.0"}, "timestamp": ts, "revision": 1,
                "files": {s.name: _entry(s), b.name: _entry(b)}, "future_field": {"x": [1]}}
    m = d / f"backup_{ts}.json"
    m.write_text(json.dumps(manifest))
    return m


def _fails(path: Path, fragment: str, *extra: str) -> None:
    r = cli("snapshot", "verify", *extra, str(path))
    assert r.code == 1, r.out
    assert fragment in r.err and "Traceback" not in r.err


def test_backup_dir_ok(snap: Path, tmp_path: Path) -> None:
    m = _backup(tmp_path / "b", snap)
    report = verify_location(tmp_path / "b")
    assert isinstance(report, BackupReport) and len(report.snapshots) == 1
    r = cli("snapshot", "verify", str(tmp_path / "b"))
    assert r.code == 0 and f"backup {TS}: ok" in r.out
    r = cli("snapshot", "verify", "-w", "json", str(m))
    assert r.code == 0 and json.loads(r.out)["backups"][0]["timestamp"] == TS
    # status and inspect take the backup directory too (its newest backup), as their help says
    r = cli("snapshot", "status", "-w", "json", str(tmp_path / "b"))
    assert r.code == 0 and json.loads(r.out) == etcdutl_status(snap), r.err
    r = cli("snapshot", "inspect", "--keys-only", str(tmp_path / "b"))
    assert r.code == 0 and "/multi/00001" in r.out, r.err


def test_backup_dir_problems(snap: Path, tmp_path: Path) -> None:
    d = tmp_path / "nomanifest"
    d.mkdir()
    (d / f"snapshot_{TS}.db").write_bytes(snap.read_bytes())
    _fails(d, "no backup manifest")

    m = _backup(tmp_path / "missing", snap)
    (m.parent / f"static_kuberesources_{TS}.tar.gz").unlink()
    _fails(m.parent, "listed but missing")

    m = _backup(tmp_path / "wrongts", snap, bundle_ts="2024-05-01_130000")
    _fails(m.parent, "not from the backup's timestamp")

    m = _backup(tmp_path / "hash", snap)
    s = m.parent / f"snapshot_{TS}.db"
    s.write_bytes(s.read_bytes()[:-1] + b"\x00")
    _fails(m.parent, "sha256")

    m = _backup(tmp_path / "orphan", snap)
    (m.parent / "snapshot_2024-05-02_000000.db").write_bytes(snap.read_bytes())
    _fails(m.parent, "snapshot without a manifest")

    m = _backup(tmp_path / "badjson", snap)
    m.write_text("{not json")
    _fails(m.parent, "not valid JSON")

    # manifest hashes consistent but the snapshot inside is damaged: the deep check catches it
    d = tmp_path / "inner"
    d.mkdir()
    buf = bytearray(snap.read_bytes())
    buf[5000] ^= 1
    (d / f"snapshot_{TS}.db").write_bytes(buf)
    _backup(d, snap)
    _fails(d, "sha256 mismatch")


def test_backup_dir_encrypted(snap: Path, tmp_path: Path) -> None:
    ident = pyrage.x25519.Identity.generate()
    idfile = tmp_path / "id.txt"
    idfile.write_text(f"{ident}\n")
    d = tmp_path / "enc"
    d.mkdir()
    name = f"snapshot_{TS}.db.zst.age"
    enc = pyrage.encrypt(zstandard.ZstdCompressor().compress(snap.read_bytes()), [ident.to_public()])
    (d / name).write_bytes(enc)
    _backup(d, snap, snap_name=name)
    r = cli("snapshot", "verify", str(d))
    assert r.code == 0 and "contents not" in r.out
    r = cli("snapshot", "verify", "--identity", str(idfile), "-w", "json", str(d))
    assert r.code == 0, r.err
    assert json.loads(r.out)["snapshots"][0]["hash"] == etcdutl_status(snap)["hash"]


def _each_damage_is_named(data: bytes, cases: dict[str, tuple[int, bytes]], tmp_path: Path,
                          status: bool = True) -> None:
    """Each patch of a raw database (no trailer) makes the file walk (verify and, with ``status``, status) and
    the stream check fail, saying ``fragment``."""
    from etcdwarden.snapshot.streamcheck import StreamCheck

    bad = tmp_path / "db"
    for fragment, (off, patch) in cases.items():
        buf = bytearray(data)
        buf[off : off + len(patch)] = patch
        bad.write_bytes(buf)
        with pytest.raises(SnapshotCorrupt, match=fragment):
            verify_db(bad, skip_hash_check=True)
        if status:
            with pytest.raises(SnapshotCorrupt, match=fragment):
                db_status(bad)
        check = StreamCheck(tmp_path / "summaries")
        try:
            check.feed(bytes(buf) + bytes(32))
            with pytest.raises(SnapshotCorrupt, match=fragment):
                check.finish()
        finally:
            check.close()


def test_targeted_structure_damage_is_named(snap: Path, tmp_path: Path) -> None:
    """Damage a raw db (no trailer, so only the page walk can notice) in specific ways."""
    data = snap.read_bytes()[:-32]
    with BoltFile(snap) as db:
        ps = db.page_size
        w = db.walk()
        key_root = next(b for b in w.buckets() if b.name == b"key").root
        high = db.meta.pgid
    assert key_root and data[key_root * ps + 8] == 0x01  # the key bucket's root is a branch page
    elem0 = key_root * ps + 16
    cases = {
        "reachable twice": (elem0 + 8, key_root.to_bytes(8, "little")),  # child 0 -> the branch itself
        "outside the database": (elem0 + 8, (high + 5).to_bytes(8, "little")),
        "has id": (key_root * ps, (key_root + 1).to_bytes(8, "little")),
        "flags 0x10": (key_root * ps + 8, (0x10).to_bytes(2, "little")),
        "points outside the page": (elem0, (ps * 2).to_bytes(4, "little")),
    }
    _each_damage_is_named(data, cases, tmp_path)
    # a broken meta page 0 is reported even though bbolt could fall back to meta page 1
    buf = bytearray(data)
    buf[40] ^= 1  # inside meta 0's checksummed area (root)
    bad = tmp_path / "db"
    bad.write_bytes(buf)
    with pytest.raises(SnapshotCorrupt, match="meta page 0 is invalid: checksum mismatch"):
        verify_db(bad, skip_hash_check=True)
    assert db_status(bad).as_json() == etcdutl_status(bad)  # status falls back to meta 1, like etcdutl
    _each_damage_is_named(data, {"meta page 0 is invalid: checksum mismatch": (40, bytes([data[40] ^ 1]))},
                          tmp_path, status=False)  # (status falls back, as just seen)


def test_leaf_damage_is_named(snap: Path, tmp_path: Path) -> None:
    """The walk's fast path (pages without overflow) checks leaves as the slow path does: a leaf's header, the
    order of its keys, and its first key against its branch key (raised above it, still below the leaf's
    second key and the next branch key)."""
    import struct

    data = snap.read_bytes()[:-32]
    with BoltFile(snap) as db:
        ps = db.page_size
        key_root = next(b for b in db.walk().buckets() if b.name == b"key").root

    def keys(leaf: int) -> list[int]:  # the absolute offset of each key of a leaf page
        off = leaf * ps
        out = []
        for i in range(struct.unpack_from("<H", data, off + 10)[0]):
            e = off + 16 + 16 * i
            out.append(e + struct.unpack_from("<I", data, e + 4)[0])
        return out

    # down the leftmost branch to the key bucket's lowest branch page and its first two leaves
    branch = key_root
    while True:
        off = branch * ps
        children = [struct.unpack_from("<IIQ", data, off + 16 + 16 * i)[2]
                    for i in range(struct.unpack_from("<H", data, off + 10)[0])]
        if data[children[0] * ps + 8] == 0x02:
            break
        branch = children[0]
    leaf1 = children[1]
    k1 = keys(leaf1)  # leaf 1's keys: 17-byte revision keys
    first = data[k1[0] : k1[0] + 17]
    e1 = branch * ps + 16 + 16  # the branch element of leaf 1: its key := leaf 1's first key + 1
    raised = first[:16] + bytes([first[16] + 1])
    assert first[16] < 0xFF and raised < data[k1[1] : k1[1] + 17]
    cases = {
        "has id": (leaf1 * ps, (leaf1 + 1).to_bytes(8, "little")),
        "flags 0x10": (leaf1 * ps + 8, (0x10).to_bytes(2, "little")),
        "empty key": (leaf1 * ps + 16 + 8, (0).to_bytes(4, "little")),
        "keys out of order": (k1[1], data[k1[0] : k1[0] + 17]),  # key 1 := key 0
        "below its branch key": (e1 + struct.unpack_from("<I", data, e1)[0], raised),
    }
    _each_damage_is_named(data, cases, tmp_path)


def test_verify_decodes_beside_the_file_and_removes_dead_runs_copies(snap: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11 item 5: the decoded copy is never in the system temp dir; a killed run's copy is removed."""
    import tempfile

    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    ident = pyrage.x25519.Identity.generate()
    idfile = tmp_path / "id.txt"
    idfile.write_text(f"{ident}\n")
    d = tmp_path / "in"
    d.mkdir()
    enc = d / "snap.db.zst.age"
    enc.write_bytes(pyrage.encrypt(zstandard.ZstdCompressor().compress(snap.read_bytes()), [ident.to_public()]))
    gone = subprocess.Popen(["true"])
    gone.wait()
    leftover = d / f".etcdwarden-tmp-{gone.pid}-12345-0badc0de"
    leftover.mkdir(mode=0o700)
    (leftover / "snapshot.db").write_bytes(b"plaintext")
    alive = d / f".etcdwarden-tmp-{os.getpid()}-{process_start(os.getpid())}-0badc0de"  # a live run's: kept
    alive.mkdir(mode=0o700)
    r = cli("snapshot", "verify", "--identity", str(idfile), str(enc))
    assert r.code == 0 and ": ok (sha256 ok" in r.out, r.err
    assert f"removed {leftover}" in r.out and f"PID {gone.pid}, gone" in r.out
    assert sorted(p.name for p in d.iterdir()) == [alive.name, enc.name]
    assert list(systmp.iterdir()) == []
